//! The OSMO test double (`src/bin/osmo-double.rs`) as the end-to-end tests
//! use it: started on a port (or not yet: a platform that is down), its
//! state read through its control API, and a minimal HTTP/1.1 client.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

/// One HTTP answer.
#[derive(Debug)]
pub struct Resp {
    /// The status code.
    pub status: u16,
    /// The headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub text: String,
}

impl Resp {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[track_caller]
    /// Asserts the status.
    pub fn expect(&self, status: u16) -> &Resp {
        assert_eq!(self.status, status, "answer: {}", self.text);
        self
    }
}

/// A minimal HTTP/1.1 client: one request per connection.
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    Resp {
        status: status.parse().unwrap(),
        headers,
        text: if chunked {
            dechunk(rest)
        } else {
            rest.to_owned()
        },
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        s = &rest[size + 2..];
    }
}

/// Today (UTC) plus `n` days, as `YYYY-MM-DD`.
pub fn date_in_days(n: i64) -> String {
    let now = vault_protocol::timefmt::Timestamp::now().unix();
    let day = vault_protocol::timefmt::Timestamp(now.div_euclid(86_400) * 86_400 + n * 86_400);
    day.to_string()[..10].to_owned()
}

/// The arguments of `vault remote add osmo URL` with the access token in
/// `token_file`.
pub fn remote_add_args(url: &str, token_file: &str) -> Vec<String> {
    let args = [
        "remote",
        "add",
        "osmo",
        url,
        "--kind",
        "osmo",
        "--token-file",
    ];
    args.iter()
        .copied()
        .chain([token_file])
        .map(str::to_owned)
        .collect()
}

/// A free loopback address (`127.0.0.1:PORT`) for a double started later.
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// A running double, killed on drop. Its stderr (one line per request,
/// never a body or a token) goes to the leak scan.
#[derive(Debug)]
pub struct OsmoDouble {
    server: crate::Listening,
    args: Vec<String>,
}

impl OsmoDouble {
    /// Starts one on `addr` (`127.0.0.1:0` for any port) with `args`.
    pub fn start_on(addr: &str, args: &[&str]) -> Self {
        let mut d = Self {
            server: crate::Listening::new(addr, "osmo-double"),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        d.resume();
        d
    }

    /// The URL `vault remote add` takes.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Kills it (an outage).
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Starts it again on the same address and arguments.
    pub fn resume(&mut self) {
        let program = crate::binaries().vault.with_file_name("osmo-double");
        self.server.start(&program, |cmd| {
            cmd.args(&self.args);
        });
    }

    /// Stops it and starts it again on the same address with `extra`
    /// arguments added (a platform upgraded).
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.stop();
        self.args.extend(extra.iter().map(|a| a.to_string()));
        self.resume();
    }

    /// `GET /_double/state`: exchanges, credentials with their values, the
    /// request log.
    pub fn state(&self) -> Value {
        let r = http(self.server.addr(), "GET", "/_double/state", &[], "");
        r.expect(200);
        r.json()
    }

    /// A control call (`/_double/...`).
    pub fn control(&self, method: &str, path: &str, body: &Value) -> Resp {
        http(self.server.addr(), method, path, &[], &body.to_string())
    }

    /// Polls the state until `ok` holds; panics with the last state after
    /// `timeout`.
    pub fn wait_for(&self, timeout: Duration, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.state();
            if ok(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: not within {timeout:?}; the double's log: {}",
                    s["log"]
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
