//! The HTTP server under both `vault exec --server` endpoints (AWS
//! container credentials, GCE metadata): a free port on 127.0.0.1, stopped
//! when dropped, with the child. Our own small HTTP/1.1 (one GET per
//! connection, `Connection: close`) rather than tiny_http's, because the
//! port is reachable by every user of the machine: tiny_http starts a
//! thread per connection without bound or read timeout and stops serving
//! for good at the first accept error, so another uid holding ~1,000 idle
//! connections (the fd limit) ended the endpoint (review, 2026-12-05).
//!
//! Here every connection is mapped to the uid that owns its socket at
//! accept (`/proc/net/tcp`, `tcp6`). Our uid's connections get up to
//! [`MAX_IN_FLIGHT`] threads and 5 s to send their request; any other
//! uid's share [`MAX_STRANGERS`] threads and 1 s, so strangers can never
//! take our slots. An accept error (fds exhausted) waits and goes on.
//! Each request is answered on its own thread, so a token being minted
//! does not hold up google-auth's 3-second ping.

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use zeroize::Zeroizing;

/// Requests of our uid answered at once; more get the busy reply.
pub const MAX_IN_FLIGHT: usize = 16;
/// Connections of other uids handled at once; more are closed unread.
pub const MAX_STRANGERS: usize = 4;
/// The most bytes of a request line and headers.
const MAX_HEAD: usize = 16 * 1024;

/// One answer: status, headers, body (wiped once sent).
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, &'static str)>,
    pub body: Zeroizing<String>,
}

/// A request as read: its method, target, headers, and who sent it.
#[derive(Debug)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    owner: Option<u32>,
}

impl Request {
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The request target (`/path?query`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A header's value, its name matched without case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The uid that owns the client's socket, when it could be told.
    pub fn owner(&self) -> Option<u32> {
        self.owner
    }
}

/// What answers a request, given the server's own address.
pub type Handler = dyn Fn(&Request, SocketAddrV4) -> Reply + Send + Sync;

/// A running endpoint; stopped on drop.
pub struct Loopback {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The address it listens on.
    pub addr: SocketAddrV4,
}

impl Loopback {
    /// Listens on a free 127.0.0.1 port and answers with `handler`;
    /// `busy` is the reply when [`MAX_IN_FLIGHT`] requests are in hand.
    pub fn start(handler: Arc<Handler>, busy: fn() -> Reply) -> Result<Self, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| format!("cannot listen on 127.0.0.1 for --server: {e}"))?;
        let addr = match listener.local_addr() {
            Ok(SocketAddr::V4(a)) => a,
            _ => return Err("the --server endpoint has no IPv4 TCP port".into()),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || serve(&listener, addr, &handler, busy, &stop))
        };
        Ok(Self {
            stop,
            thread: Some(thread),
            addr,
        })
    }
}

fn serve(
    listener: &TcpListener,
    addr: SocketAddrV4,
    handler: &Arc<Handler>,
    busy: fn() -> Reply,
    stop: &AtomicBool,
) {
    let uid = rustix::process::geteuid().as_raw();
    let ours = Arc::new(AtomicUsize::new(0));
    let strangers = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Acquire) {
        let (stream, peer) = match listener.accept() {
            Ok(conn) => conn,
            Err(_) => {
                // Out of fds, or a connection reset before accept: wait
                // and serve on.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if stop.load(Ordering::Acquire) {
            break;
        }
        let owner = match peer {
            SocketAddr::V4(p) => super::metadata::loopback_owner(p, addr),
            SocketAddr::V6(_) => None,
        };
        let mine = owner == Some(uid);
        let (slots, cap, wait) = if mine {
            (&ours, MAX_IN_FLIGHT, Duration::from_secs(5))
        } else {
            (&strangers, MAX_STRANGERS, Duration::from_secs(1))
        };
        if slots.fetch_add(1, Ordering::AcqRel) >= cap {
            slots.fetch_sub(1, Ordering::AcqRel);
            if mine {
                let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                respond(stream, busy());
            }
            continue;
        }
        let (handler, done) = (Arc::clone(handler), Arc::clone(slots));
        let spawned = std::thread::Builder::new().spawn(move || {
            let _ = stream.set_read_timeout(Some(wait));
            let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
            if let Some(request) = read_request(&stream, owner) {
                let reply = handler(&request, addr);
                respond(stream, reply);
            }
            done.fetch_sub(1, Ordering::AcqRel);
        });
        if spawned.is_err() {
            slots.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The request line and headers; `None` when the client sent none in
/// time, too much, or not HTTP.
fn read_request(mut stream: &TcpStream, owner: Option<u32>) -> Option<Request> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).ok().filter(|&n| n > 0)?;
        head.extend_from_slice(&chunk[..n]);
        if head.len() > MAX_HEAD {
            return None;
        }
    }
    let text = std::str::from_utf8(&head).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, url, version) = (first.next()?, first.next()?, first.next()?);
    if !version.starts_with("HTTP/1.") || first.next().is_some() {
        return None;
    }
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    Some(Request {
        method: method.to_owned(),
        url: url.to_owned(),
        headers,
        owner,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Sends `reply` and closes; the body is written from its own wiped
/// buffer (no copy of a token stays behind).
fn respond(mut stream: TcpStream, reply: Reply) {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reason(reply.status),
        reply.body.len()
    );
    for (field, value) in &reply.headers {
        head.push_str(&format!("{field}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(reply.body.as_bytes()))
        .and_then(|()| stream.flush());
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // Let the client read the answer before the socket goes (closing with
    // unread input would reset it).
    let mut rest = [0u8; 256];
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    while matches!(stream.read(&mut rest), Ok(n) if n > 0) {}
}

impl Drop for Loopback {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept.
        let _ = TcpStream::connect_timeout(&SocketAddr::V4(self.addr), Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::Mutex;
    use std::sync::mpsc;

    fn get(addr: SocketAddrV4, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type", "text/plain")],
            body: Zeroizing::new(body.into()),
        }
    }

    /// A server whose `/slow` answers wait for a message on the channel;
    /// the counter tells how many of them have begun.
    fn held_at_slow() -> (Loopback, mpsc::Sender<()>, Arc<AtomicUsize>) {
        let (release, held) = mpsc::channel::<()>();
        let held = Arc::new(Mutex::new(held));
        let begun = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&begun);
        let handler = move |r: &Request, _: SocketAddrV4| {
            if r.url() == "/slow" {
                counter.fetch_add(1, Ordering::AcqRel);
                let _ = held.lock().unwrap().recv();
            }
            text(200, r.url())
        };
        let server = Loopback::start(Arc::new(handler), || text(503, "busy")).unwrap();
        (server, release, begun)
    }

    fn wait_for(begun: &AtomicUsize, n: usize) {
        for _ in 0..1000 {
            if begun.load(Ordering::Acquire) >= n {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("{n} slow requests never began");
    }

    #[test]
    fn a_slow_answer_holds_up_no_other_and_too_many_at_once_get_busy() {
        let (server, release, begun) = held_at_slow();
        let addr = server.addr;
        // One at a time (tiny_http's connection pool may queue connections
        // that arrive together behind busy ones), each until it is in hand.
        let slow: Vec<_> = (1..=MAX_IN_FLIGHT)
            .map(|n| {
                let t = std::thread::spawn(move || get(addr, "/slow"));
                wait_for(&begun, n);
                t
            })
            .collect();
        let busy = get(addr, "/fast");
        assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
        assert!(busy.ends_with("busy"));
        for _ in 0..MAX_IN_FLIGHT {
            release.send(()).unwrap();
        }
        for t in slow {
            assert!(t.join().unwrap().ends_with("/slow"));
        }
        let fast = get(addr, "/fast");
        assert!(
            fast.starts_with("HTTP/1.1 200") && fast.ends_with("/fast"),
            "{fast}"
        );
    }

    #[test]
    fn a_request_is_answered_while_another_is_still_being_answered() {
        let (server, release, begun) = held_at_slow();
        let addr = server.addr;
        let slow = std::thread::spawn(move || get(addr, "/slow"));
        wait_for(&begun, 1);
        let fast = get(addr, "/fast");
        assert!(fast.ends_with("/fast"), "{fast}");
        release.send(()).unwrap();
        assert!(slow.join().unwrap().ends_with("/slow"));
    }
}
