//! A bearer-checking HTTPS endpoint for the tests (a team's token
//! endpoint for `vault check`, a Kubernetes API server for kubectl).

/// The HTTPS token endpoint of a team, under its own CA: serves `/v1/me`,
/// 200 for `Bearer TOKEN` and 401 otherwise (Python's http.server with
/// `ssl`, the certificate made here). Returns its URL and the CA's PEM
/// file; the server stops with the test.
#[derive(Debug)]
pub struct HttpsEndpoint {
    child: std::process::Child,
    /// `https://localhost:PORT/v1/me`.
    pub url: String,
    /// The CA certificate (PEM) that signed the server's.
    pub ca: std::path::PathBuf,
}

impl Drop for HttpsEndpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const HTTPS_SERVER: &str = r#"
import http.server, ssl, sys
token = sys.stdin.readline().strip()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.headers.get("Authorization") == "Bearer " + token
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

pub fn https_endpoint(
    python: &std::path::Path,
    dir: &std::path::Path,
    good: &str,
) -> HttpsEndpoint {
    use std::io::{BufRead as _, Write as _};
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (ca, key) = (dir.join("ca.pem"), dir.join("key.pem"));
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    std::fs::write(&key, cert.key_pair.serialize_pem()).unwrap();
    let mut child = std::process::Command::new(python)
        .args(["-c", HTTPS_SERVER])
        .arg(&ca)
        .arg(&key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The token on stdin, never in argv.
    writeln!(child.stdin.take().unwrap(), "{good}").unwrap();
    let mut port = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let url = format!("https://localhost:{}/v1/me", port.trim());
    HttpsEndpoint { child, url, ca }
}
