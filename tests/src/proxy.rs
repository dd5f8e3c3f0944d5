//! A man in the middle for the sync tests: an HTTP/1.1 proxy on loopback in
//! front of a [`crate::RemoteServer`] that can rewrite the server's answers,
//! playing a faulty or hostile server whose requests still reach the real one.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Rewrites one answer: gets the request line (`POST /api/v1/… HTTP/1.1`),
/// the status and the body; returns the body to send instead, or `None` to
/// pass it through.
pub type Rewrite = dyn Fn(&str, u16, &[u8]) -> Option<Vec<u8>> + Send + Sync;

/// Forwards each request to `upstream` (one request per connection) and
/// answers with what the rewrite makes of the answer while it is armed.
pub struct RewritingProxy {
    addr: std::net::SocketAddr,
    armed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    rewritten: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for RewritingProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RewritingProxy")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl RewritingProxy {
    /// Starts one in front of `upstream` (`http://HOST:PORT`), armed.
    pub fn start(upstream: &str, rewrite: Box<Rewrite>) -> Self {
        let upstream = upstream
            .strip_prefix("http://")
            .expect("the proxy speaks plain HTTP")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let armed = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let rewritten = Arc::new(Mutex::new(Vec::new()));
        let rewrite: Arc<Rewrite> = Arc::from(rewrite);
        let (a, s, r) = (armed.clone(), stop.clone(), rewritten.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (upstream, rewrite, a, r) =
                    (upstream.clone(), rewrite.clone(), a.clone(), r.clone());
                std::thread::spawn(move || {
                    // A client that went away is not the test's failure.
                    let _ = relay(conn, &upstream, &*rewrite, &a, &r);
                });
            }
        });
        Self {
            addr,
            armed,
            stop,
            rewritten,
        }
    }

    /// `http://ADDR`, what `vault login` takes.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Turns the rewriting on or off; off, the proxy passes answers through.
    pub fn arm(&self, on: bool) {
        self.armed.store(on, Ordering::SeqCst);
    }

    /// The request lines whose answers were rewritten so far.
    pub fn rewritten(&self) -> Vec<String> {
        self.rewritten.lock().unwrap().clone()
    }
}

impl Drop for RewritingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Reads one HTTP/1.1 message head (up to the blank line) and its
/// Content-Length body; returns (head lines, body).
fn read_message(r: &mut impl BufRead) -> std::io::Result<(Vec<String>, Vec<u8>)> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    let len = lines
        .iter()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok((lines, body))
}

/// Writes a message with `connection: close` and a Content-Length of `body`
/// in place of the ones it had.
fn write_message(w: &mut impl Write, lines: &[String], body: &[u8]) -> std::io::Result<()> {
    let mut out = format!("{}\r\n", lines[0]);
    for l in &lines[1..] {
        let name = l.split(':').next().unwrap_or("").to_ascii_lowercase();
        if name != "content-length" && name != "connection" && name != "transfer-encoding" {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    w.write_all(out.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

fn relay(
    client: TcpStream,
    upstream: &str,
    rewrite: &Rewrite,
    armed: &AtomicBool,
    rewritten: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut from_client = BufReader::new(client.try_clone()?);
    let (req, req_body) = read_message(&mut from_client)?;
    let server = TcpStream::connect(upstream)?;
    server.set_read_timeout(Some(Duration::from_secs(30)))?;
    write_message(&mut &server, &req, &req_body)?;
    let (resp, mut body) = read_message(&mut BufReader::new(&server))?;
    let status: u16 = resp[0]
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if armed.load(Ordering::SeqCst)
        && let Some(new) = rewrite(&req[0], status, &body)
    {
        body = new;
        rewritten.lock().unwrap().push(req[0].clone());
    }
    write_message(&mut &client, &resp, &body)
}
