//! The HTTP server under both `vault exec --server` endpoints (AWS
//! container credentials, GCE metadata): a free port on 127.0.0.1, each
//! request answered on its own thread (a token being minted must not hold
//! up google-auth's 3-second ping), at most [`MAX_IN_FLIGHT`] at once, and
//! stopped when dropped, with the child.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tiny_http::{Header, Response as HttpResponse, Server};
use zeroize::Zeroizing;

/// Requests answered at once; more get 503 at once (a flood from another
/// uid cannot make us spawn threads without end).
pub const MAX_IN_FLIGHT: usize = 16;

/// One answer: status, headers, body (wiped once sent).
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, &'static str)>,
    pub body: Zeroizing<String>,
}

/// What answers a request, given the server's own address.
pub type Handler = dyn Fn(&tiny_http::Request, SocketAddrV4) -> Reply + Send + Sync;

/// A running endpoint; stopped on drop.
pub struct Loopback {
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
    /// The address it listens on.
    pub addr: SocketAddrV4,
}

impl Loopback {
    /// Listens on a free 127.0.0.1 port and answers with `handler`;
    /// `busy` is the reply when [`MAX_IN_FLIGHT`] requests are in hand.
    pub fn start(handler: Arc<Handler>, busy: fn() -> Reply) -> Result<Self, String> {
        let server = Server::http("127.0.0.1:0")
            .map_err(|e| format!("cannot listen on 127.0.0.1 for --server: {e}"))?;
        let addr = match server.server_addr().to_ip() {
            Some(SocketAddr::V4(a)) => a,
            _ => return Err("the --server endpoint has no IPv4 TCP port".into()),
        };
        let server = Arc::new(server);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let thread = {
            let server = Arc::clone(&server);
            std::thread::spawn(move || {
                for request in server.incoming_requests() {
                    if in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
                        in_flight.fetch_sub(1, Ordering::AcqRel);
                        respond(request, busy());
                        continue;
                    }
                    let (handler, done) = (Arc::clone(&handler), Arc::clone(&in_flight));
                    let spawned = std::thread::Builder::new().spawn(move || {
                        let reply = handler(&request, addr);
                        respond(request, reply);
                        done.fetch_sub(1, Ordering::AcqRel);
                    });
                    if spawned.is_err() {
                        // The request went with the closure; its client
                        // sees the connection close.
                        in_flight.fetch_sub(1, Ordering::AcqRel);
                    }
                }
            })
        };
        Ok(Self {
            server,
            thread: Some(thread),
            addr,
        })
    }
}

/// Sends `reply`; its body moves into a reader that is wiped when the
/// response is dropped (no unwiped copy of a token stays behind).
fn respond(request: tiny_http::Request, mut reply: Reply) {
    let body = Zeroizing::new(std::mem::take(&mut *reply.body).into_bytes());
    let len = body.len();
    let headers = reply
        .headers
        .into_iter()
        .filter_map(|(field, value)| Header::from_bytes(field, value).ok())
        .collect();
    let response = HttpResponse::new(
        reply.status.into(),
        headers,
        std::io::Cursor::new(body),
        Some(len),
        None,
    );
    let _ = request.respond(response);
}

impl Drop for Loopback {
    fn drop(&mut self) {
        self.server.unblock();
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
        let handler = move |r: &tiny_http::Request, _: SocketAddrV4| {
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
