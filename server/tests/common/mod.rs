//! Shared by the API tests: start the real `vault-server` binary on
//! 127.0.0.1 port 0, read the address it announces on stdout, keep its log
//! (stderr) for the secret scan, and talk to it with reqwest. On drop the
//! log is also written where the workspace's secret-leak scan reads it
//! (`vault_e2e::leak::keep_log`), as are the stderr of `fail()` and `cli()`.
//! The load bench (benches/load.rs) includes it for `fresh_postgres_schema`.

#![allow(clippy::unwrap_used, dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_vault-server");

/// A default-admin password of the required length, with the passphrase
/// marker the leak scan looks for.
pub const ADMIN_PASSWORD: &str = "correct-horse-battery-staple-PASSMARK-0123456789";

/// A running server; killed on drop.
pub struct Server {
    child: Child,
    pub addr: String,
    pub base: String,
    /// `metrics on ADDR`, with `--metrics-listen`.
    pub metrics_addr: Option<String>,
    pub database: String,
    log: Arc<Mutex<String>>,
    log_reader: Option<std::thread::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The pipe closed with the process: the reader has all of the log.
        if let Some(reader) = self.log_reader.take() {
            let _ = reader.join();
        }
        vault_e2e::leak::keep_log("vault-server", &self.log());
    }
}

/// A fresh temp SQLite database URL; keep the TempDir alive.
pub fn temp_sqlite() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("vault.db").display());
    (dir, url)
}

pub struct ServerBuilder {
    database: Option<String>,
    dir: Option<tempfile::TempDir>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    scheme: &'static str,
}

pub fn server() -> ServerBuilder {
    ServerBuilder {
        database: None,
        dir: None,
        args: vec!["--listen".into(), "127.0.0.1:0".into()],
        env: Vec::new(),
        scheme: "http",
    }
}

impl ServerBuilder {
    pub fn database(mut self, url: &str) -> Self {
        self.database = Some(url.to_owned());
        self
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn listen(mut self, addr: &str) -> Self {
        self.args[1] = addr.to_owned();
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn tls(mut self) -> Self {
        self.scheme = "https";
        self
    }

    /// With `--default-admin admin` and the standard password in the env.
    pub fn admin(self) -> Self {
        self.arg("--default-admin")
            .arg("admin")
            .env("VAULT_SERVER_ADMIN_PASSWORD", ADMIN_PASSWORD)
    }

    fn command(&mut self) -> Command {
        if self.database.is_none() {
            let (dir, url) = temp_sqlite();
            self.dir = Some(dir);
            self.database = Some(url);
        }
        let mut cmd = Command::new(BIN);
        cmd.arg("--database")
            .arg(self.database.as_ref().unwrap())
            .args(&self.args)
            .env_remove("VAULT_SERVER_ADMIN_PASSWORD")
            .env_remove("VAULT_SERVER_DATABASE")
            .env("VAULT_SERVER_LOG", "debug");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs the server expecting it to fail at start; returns its output.
    pub fn fail(mut self) -> Output {
        let out = self
            .command()
            .stdin(Stdio::null())
            .output()
            .expect("run vault-server");
        vault_e2e::leak::keep_log("vault-server", &stderr(&out));
        assert!(
            !out.status.success(),
            "vault-server should have refused to start"
        );
        out
    }

    pub fn start(mut self) -> Server {
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vault-server");
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        let log_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        // `--metrics-listen` announces its address first.
        let metrics_addr = line.trim().strip_prefix("metrics on ").map(str::to_owned);
        if metrics_addr.is_some() {
            line.clear();
            stdout.read_line(&mut line).unwrap();
        }
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "vault-server did not announce its address (stdout {line:?}); log:\n{}",
                log.lock().unwrap()
            );
        };
        let addr = addr.to_owned();
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = stdout.read_to_end(&mut sink);
        });
        let base = format!("{}://{addr}/api/v1", self.scheme);
        Server {
            child,
            base,
            addr,
            metrics_addr,
            database: self.database.take().unwrap(),
            log,
            log_reader: Some(log_reader),
            _dir: self.dir.take(),
        }
    }
}

impl Server {
    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn client(&self) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: self.base.clone(),
        }
    }

    /// Stops the server (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A thin JSON client: every call returns (status, body as JSON).
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
}

impl Api {
    pub fn with_http(http: reqwest::Client, base: &str) -> Api {
        Api {
            http,
            base: base.to_owned(),
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("non-JSON answer ({status}): {e}: {text}"))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str, jwt: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(jwt), None).await
    }

    pub async fn post(&self, path: &str, jwt: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(jwt), Some(&body)).await
    }

    pub async fn delete(&self, path: &str, jwt: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(jwt), None).await
    }

    /// POST /auth/token with `credential`; (status, body).
    pub async fn exchange(&self, credential: &str) -> (StatusCode, Value) {
        self.call(Method::POST, "/auth/token", Some(credential), None)
            .await
    }

    /// A JWT for `credential`, asserting success.
    pub async fn jwt(&self, credential: &str) -> String {
        let (status, body) = self.exchange(credential).await;
        assert_eq!(status, StatusCode::OK, "exchange failed: {body}");
        body["jwt"].as_str().unwrap().to_owned()
    }

    /// Creates a role via the API.
    pub async fn role(&self, admin: &str, name: &str, policies: Value) {
        let (s, b) = self
            .post(
                "/roles",
                admin,
                json!({"name": name, "description": "", "policies": policies}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }

    /// Creates a user via the API.
    pub async fn user(&self, admin: &str, name: &str, roles: &[&str]) {
        let (s, b) = self
            .post("/users", admin, json!({"name": name, "roles": roles}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }

    /// Creates an access token for the caller behind `jwt`; returns the secret.
    pub async fn token(&self, jwt: &str, body: Value) -> String {
        let (s, b) = self.post("/tokens", jwt, body).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        b["token"].as_str().unwrap().to_owned()
    }
}

/// Asserts an error answer: status, code, and returns the error object.
pub fn assert_error(got: &(StatusCode, Value), status: u16, code: &str) -> Value {
    assert_eq!(got.0.as_u16(), status, "unexpected answer: {}", got.1);
    assert_eq!(got.1["error"]["code"], code, "unexpected answer: {}", got.1);
    assert!(
        got.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error without a message: {}",
        got.1
    );
    got.1["error"].clone()
}

pub fn b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

pub fn unb64(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// Creates vault `id` with key id `key` as `admin`.
pub async fn create_vault_with(api: &Api, admin: &str, id: &str, key: &str) {
    let (s, b) = api
        .post(
            "/vaults",
            admin,
            json!({"id": id, "key_id": key, "identity": b64(b"identity")}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
}

/// A push body of records `from..from+n` for `device`.
pub fn push_body(device: &str, key_id: &str, from: u64, n: u64) -> Value {
    let records: Vec<Value> = (from..from + n)
        .map(|i| json!({"index": i, "key_id": key_id, "data": b64(format!("{device}#{i}").as_bytes())}))
        .collect();
    json!({"device_id": device, "records": records})
}

/// One device pushing records `1..=records` (as [`push_body`] writes them)
/// to `vault`, `batch` at a time, as a device does under faults: a push
/// that gets no answer (its replica died) is sent again through the next of
/// `apis` (with only one, the server itself must stay up); a 409 says where
/// the log really ends, and is allowed only after a push that may have
/// landed (no answer, or 500 "outcome unknown"); a 503 must carry
/// Retry-After, and nothing it answered may have landed.
pub struct DevicePush {
    pub apis: Vec<Api>,
    pub jwt: String,
    pub vault: &'static str,
    pub device: String,
    pub key: &'static str,
    pub records: u64,
    pub batch: u64,
    /// Each push's own time limit.
    pub timeout: Duration,
    /// Counts the pushes answered 200, for the test to watch.
    pub acknowledged: Arc<AtomicU64>,
}

/// What one device saw while pushing.
#[derive(Debug, Default)]
pub struct Pushed {
    /// Pushes without an answer, sent again through the next replica.
    pub failovers: u32,
    /// Pushes answered 500 (outcome unknown).
    pub unknown: u32,
    /// Pushes answered 503, and the longest one took to be answered.
    pub unavailable: u32,
    pub slowest_503: Duration,
}

impl DevicePush {
    /// Pushes until the device's log is whole; panics on an answer a device
    /// must never get, or on no progress in 120 s.
    pub async fn push_all(self) -> Pushed {
        let DevicePush {
            apis,
            jwt,
            vault,
            device,
            key,
            records,
            batch,
            timeout,
            acknowledged,
        } = self;
        let mut seen = Pushed::default();
        let mut next = 1;
        let mut via = 0;
        // Whether the last failed push may have landed: one without an
        // answer or answered 500 may; one answered 503 may not.
        let mut maybe_applied = false;
        let deadline = Instant::now() + Duration::from_secs(120);
        while next <= records {
            assert!(Instant::now() < deadline, "{device}: no progress in 120s");
            let started = Instant::now();
            let resp = apis[via]
                .http
                .post(format!("{}/vaults/{vault}/push", apis[via].base))
                .bearer_auth(&jwt)
                .json(&push_body(&device, key, next, batch))
                .timeout(timeout)
                .send()
                .await;
            let resp = match resp {
                Ok(r) => r,
                Err(_) if apis.len() > 1 => {
                    via = (via + 1) % apis.len();
                    seen.failovers += 1;
                    maybe_applied = true;
                    continue;
                }
                Err(e) => panic!("{device}: the server itself stays up: {e}"),
            };
            let status = resp.status();
            let retry_after = resp.headers().get("retry-after").is_some();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            match status {
                StatusCode::OK => {
                    next = body["head"].as_u64().unwrap() + 1;
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                    maybe_applied = false;
                }
                StatusCode::CONFLICT => {
                    assert!(
                        maybe_applied,
                        "{device}: a push answered 503 had been applied: {body}"
                    );
                    next = body["error"]["expected_index"].as_u64().unwrap();
                    maybe_applied = false;
                }
                StatusCode::INTERNAL_SERVER_ERROR => {
                    seen.unknown += 1;
                    maybe_applied = true;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert!(retry_after, "{device}: a 503 without Retry-After: {body}");
                    seen.unavailable += 1;
                    seen.slowest_503 = seen.slowest_503.max(started.elapsed());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => panic!("{device}: push answered {other}: {body}"),
            }
        }
        seen
    }
}

/// Pulls every record of `vault`, page by page, and checks that each
/// device's log is whole: indexes `1..=head`, each once and in order, each
/// record with the bytes [`push_body`] gave it, and `head` the one the pull
/// reports. Returns each device's head.
pub async fn whole_logs(api: &Api, jwt: &str, vault: &str) -> BTreeMap<String, u64> {
    let mut since = json!({});
    let mut logs: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    let heads = loop {
        let (s, page) = api
            .post(
                &format!("/vaults/{vault}/pull"),
                jwt,
                json!({"since": since}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{page}");
        for r in page["records"].as_array().expect("records") {
            let device = r["device_id"].as_str().expect("device_id");
            let index = r["index"].as_u64().expect("index");
            let data = String::from_utf8(unb64(r["data"].as_str().expect("data"))).expect("text");
            logs.entry(device.to_owned())
                .or_default()
                .push((index, data));
            since[device] = json!(index);
        }
        if page["more"] != true {
            break page["heads"].clone();
        }
    };
    let heads: BTreeMap<String, u64> = serde_json::from_value(heads).expect("heads");
    for (device, &head) in &heads {
        let want: Vec<(u64, String)> = (1..=head).map(|i| (i, format!("{device}#{i}"))).collect();
        assert_eq!(
            logs.remove(device).unwrap_or_default(),
            want,
            "{device}'s log"
        );
    }
    assert!(
        logs.is_empty(),
        "records of devices without a head: {logs:?}"
    );
    heads
}

/// Runs `vault-server ARGS` (admin CLI) on `database`.
/// Its stderr is kept for the leak scan; its stdout prints the tokens it was
/// asked to create, so it is not.
pub fn cli(database: &str, args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .arg("--database")
        .arg(database)
        .args(args)
        .env_remove("VAULT_SERVER_ADMIN_PASSWORD")
        .stdin(Stdio::null())
        .output()
        .expect("run vault-server");
    vault_e2e::leak::keep_log("vault-server", &stderr(&out));
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn temp_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

/// Creates a uniquely named schema and returns `base` with its
/// `search_path` set to it.
pub async fn fresh_postgres_schema(base: &str, tag: &str) -> String {
    let (client, conn) = tokio_postgres::connect(base, tokio_postgres::NoTls)
        .await
        .expect("connect to VAULT_TEST_POSTGRES_URL");
    tokio::spawn(conn);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let schema = format!("vt_{tag}_{}_{nanos}", std::process::id());
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-csearch_path%3D{schema}")
}
