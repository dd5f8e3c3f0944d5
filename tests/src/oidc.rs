//! A real OpenID provider on loopback for the OIDC sign-in tests: panva's
//! `oidc-provider` (npm, pinned in `tests/oidc/package-lock.json`) run by
//! Node from `tests/oidc/provider.mjs`, with the public client `vault-cli`
//! (device flow + refresh tokens), accounts `alice` (groups
//! `LDAP_ML_TEAM`), `bob` (none) and `carol` (`LDAP_ML_TEAM`, `LDAP_OPS`),
//! and test-only endpoints under `/__test/` that the helpers here call:
//! sign in through the real device flow, approve a code someone else
//! started, rotate the signing key, disable an account, change its groups,
//! and sign forged tokens with the provider's own key.
//!
//! ```sh
//! npm ci --prefix tests/oidc     # once; needs Node 20 or later
//! ```
//!
//! Without Node or that install a test says `SKIP …` and passes, unless
//! `VAULT_TEST_REQUIRE_OIDC=1` (set by `.ci/run`), which makes it fail.
//! `VAULT_TEST_NODE` names the `node` to use (default: the one on PATH).
//!
//! The HTTP client is a minimal HTTP/1.1 one (plain HTTP to 127.0.0.1,
//! one request per connection), so the tests lean on no HTTP crate.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::{which, workspace_root};

/// Set to `1` to fail, not skip, when Node or the provider is missing.
pub const REQUIRE_ENV: &str = "VAULT_TEST_REQUIRE_OIDC";
/// The `node` to run (default: `node` on PATH).
pub const NODE_ENV: &str = "VAULT_TEST_NODE";
/// The provider's only client: public, device flow and refresh tokens.
pub const CLIENT_ID: &str = "vault-cli";
/// Every scope the provider knows; what [`OidcProvider::login`] asks for.
pub const DEFAULT_SCOPE: &str = "openid offline_access profile email groups";
/// The device flow's grant type (RFC 8628).
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// How long one start of the provider may take to print its ready line
/// (it takes under 2 s, even on a loaded 2-core machine).
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How many times to start it before failing the test. Node 20 with this
/// oidc-provider, very rarely (2 of ~600 starts with 3 in parallel), stops
/// before listening and never goes on; a fresh process does not.
const START_ATTEMPTS: usize = 3;

/// `tests/oidc`: the provider script and its npm install.
pub fn oidc_dir() -> PathBuf {
    workspace_root().join("tests").join("oidc")
}

/// `node` and the provider script, or `None` after a `SKIP` line saying
/// how to install them; panics instead when `VAULT_TEST_REQUIRE_OIDC=1`.
fn find_node(test: &str) -> Option<(PathBuf, PathBuf)> {
    let dir = oidc_dir();
    let named = std::env::var_os(NODE_ENV).filter(|n| !n.is_empty());
    let node = match &named {
        Some(n) => Some(PathBuf::from(n)).filter(|p| p.is_file()),
        None => which("node"),
    };
    let installed = dir
        .join("node_modules")
        .join("oidc-provider")
        .join("package.json")
        .is_file();
    let why = match (&node, installed) {
        (Some(node), true) => return Some((node.clone(), dir.join("provider.mjs"))),
        (None, _) if named.is_some() => format!("{NODE_ENV}={named:?} is not a file"),
        (None, _) => "no node on PATH; apt install nodejs npm".to_owned(),
        (Some(_), false) => format!(
            "oidc-provider is not installed in {}",
            dir.join("node_modules").display()
        ),
    };
    let how = "run 'npm ci --prefix tests/oidc' in the workspace (Node 20 or later; \
               bash .ci/run does it)";
    assert!(
        std::env::var(REQUIRE_ENV).as_deref() != Ok("1"),
        "{test}: the OIDC provider is required ({REQUIRE_ENV}=1): {why}; {how}"
    );
    eprintln!("SKIP {test}: no OIDC provider: {why}; {how}");
    None
}

/// The provider process, killed on drop (or by [`OidcProvider::stop`]).
/// Its stderr goes to a log file, shown when it fails to start and kept
/// for the leak scan.
#[derive(Debug)]
pub struct OidcProvider {
    child: Option<Child>,
    issuer: String,
    addr: String,
    alg: String,
    kid: Mutex<String>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl OidcProvider {
    /// Starts one on a free port with the default settings (RS256, ID
    /// tokens for 300 s); `None` when Node or the npm install is missing.
    pub fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    /// Starts one with extra environment, e.g. `("SIGN_ALG", "ES256")`,
    /// `("OIDC_ID_TOKEN_TTL", "5")`, `OIDC_ACCESS_TOKEN_TTL`,
    /// `OIDC_REFRESH_TOKEN_TTL`, `OIDC_DEVICE_CODE_TTL` (seconds).
    pub fn start_with(env: &[(&str, &str)]) -> Option<Self> {
        let thread = std::thread::current();
        let test = thread.name().unwrap_or("test");
        let (node, script) = find_node(test)?;
        let dir = tempfile::Builder::new()
            .prefix("vault-oidc-")
            .tempdir()
            .unwrap();
        let log = dir.path().join("oidc-provider.log");
        let mut failures = Vec::new();
        let (child, ready) = loop {
            match spawn_provider(&node, &script, env, &log) {
                Ok(started) => break started,
                Err(why) if failures.len() + 1 < START_ATTEMPTS => {
                    eprintln!("{test}: the OIDC provider did not start, starting it again: {why}");
                    failures.push(why);
                }
                Err(why) => {
                    failures.push(why);
                    panic!(
                        "the OIDC provider did not start in {START_ATTEMPTS} attempts:\n{}",
                        failures.join("\n")
                    );
                }
            }
        };
        let issuer = ready["issuer"].as_str().unwrap_or_default();
        let issuer = issuer.to_owned();
        Some(Self {
            addr: issuer.trim_start_matches("http://").to_owned(),
            issuer,
            alg: ready["alg"].as_str().unwrap_or("RS256").to_owned(),
            kid: Mutex::new(ready["kid"].as_str().unwrap_or_default().to_owned()),
            child: Some(child),
            log,
            _dir: dir,
        })
    }

    /// `http://127.0.0.1:PORT`, exactly as the tokens' `iss`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The issuer's URL for `path` (`/jwks`, `/token`, …).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// The signing algorithm (`SIGN_ALG`): RS256, ES256 or EdDSA.
    pub fn alg(&self) -> &str {
        &self.alg
    }

    /// The `kid` of the key that signs now (changes with [`Self::rotate`]).
    pub fn kid(&self) -> String {
        self.kid.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What the provider wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills it (the IdP is down); every later call to it panics.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    // --- the provider's own endpoints ---------------------------------------

    /// The discovery document (`/.well-known/openid-configuration`).
    pub fn discovery(&self) -> Value {
        self.get_json("/.well-known/openid-configuration")
    }

    /// The public keys, read from the discovery document's `jwks_uri`.
    pub fn jwks(&self) -> Value {
        let uri = self.discovery()["jwks_uri"].as_str().unwrap().to_owned();
        let path = uri
            .strip_prefix(&self.issuer)
            .unwrap_or_else(|| panic!("jwks_uri {uri} is not under {}", self.issuer));
        self.get_json(path)
    }

    /// `POST /device/auth` for `vault-cli`: `device_code`, `user_code`,
    /// `verification_uri`… (no `interval`: poll right after approving).
    pub fn device_authorization(&self, scope: &str) -> Value {
        let (status, body) = self.form_post(
            "/device/auth",
            &[("client_id", CLIENT_ID), ("scope", scope)],
        );
        assert_eq!(status, 200, "device authorization: {body}");
        body
    }

    /// `POST /token`, form-encoded, as `vault-cli` would send it
    /// (`client_id` is added when missing): the status and the JSON answer.
    pub fn token_request(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let mut form = form.to_vec();
        if !form.iter().any(|(k, _)| *k == "client_id") {
            form.push(("client_id", CLIENT_ID));
        }
        self.form_post("/token", &form)
    }

    /// Redeems `refresh_token`: the status and the answer (a new
    /// `id_token` and `refresh_token`; the old one is then spent).
    pub fn refresh(&self, refresh_token: &str) -> (u16, Value) {
        self.token_request(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ])
    }

    // --- /__test/ -------------------------------------------------------------

    /// Signs `account` in through the whole device flow (device
    /// authorization, the HTML login and consent pages, the token
    /// request), asking for [`DEFAULT_SCOPE`]: the token endpoint's answer
    /// (`id_token`, `refresh_token`, `access_token`, `expires_in`, …) plus
    /// the spent `device_code`.
    pub fn login(&self, account: &str) -> Value {
        self.login_with_scope(account, DEFAULT_SCOPE)
    }

    /// [`Self::login`] with another `scope`.
    pub fn login_with_scope(&self, account: &str, scope: &str) -> Value {
        let (status, body) = self.post_json(
            "/__test/login",
            &json!({ "account": account, "scope": scope }),
        );
        assert_eq!(status, 200, "login of {account}: {body}");
        body
    }

    /// Approves a device code someone else started, as `account`, through
    /// the provider's HTML pages; panics when the provider refuses.
    pub fn approve(&self, user_code: &str, account: &str) {
        let (status, body) = self.try_approve(user_code, account);
        assert!(
            status == 200 && body["approved"] == true,
            "approval of {user_code} as {account}: {status} {body}"
        );
    }

    /// [`Self::approve`] that returns the answer (`{"approved":true}`, or
    /// 400 `{"approved":false,"error":…}` for an unknown or used code).
    pub fn try_approve(&self, user_code: &str, account: &str) -> (u16, Value) {
        self.post_json(
            "/__test/approve",
            &json!({ "user_code": user_code, "account": account }),
        )
    }

    /// A new signing key (a new `kid`); the old one stays in the JWKS and
    /// every grant and refresh token stays valid. The new `kid`.
    pub fn rotate(&self) -> String {
        self.rotate_at("/__test/rotate")
    }

    /// [`Self::rotate`], dropping the old keys from the JWKS.
    pub fn rotate_drop_old(&self) -> String {
        self.rotate_at("/__test/rotate?drop_old=1")
    }

    fn rotate_at(&self, path: &str) -> String {
        let body = self.test_post(path, &json!({}));
        let kid = body["kid"].as_str().unwrap().to_owned();
        *self.kid.lock().unwrap_or_else(|p| p.into_inner()) = kid.clone();
        kid
    }

    /// Disables `account`: its refresh tokens then get `invalid_grant`.
    pub fn disable(&self, account: &str) {
        self.test_post(&format!("/__test/accounts/{account}/disable"), &json!({}));
    }

    /// Enables `account` again.
    pub fn enable(&self, account: &str) {
        self.test_post(&format!("/__test/accounts/{account}/enable"), &json!({}));
    }

    /// Replaces `account`'s groups; the next ID token (a refresh, a new
    /// login) carries them.
    pub fn set_groups(&self, account: &str, groups: &[&str]) {
        self.test_post(
            &format!("/__test/accounts/{account}/groups"),
            &json!({ "groups": groups }),
        );
    }

    /// A compact JWT of `claims` (exactly as given) signed with the
    /// provider's current private key; `header` is merged over `{alg, kid,
    /// typ: "JWT"}`. `"alg": "none"` gives an unsigned token and `"alg":
    /// "HS256"` one keyed with [`Self::public_pem`]'s text (the
    /// algorithm-confusion forgery).
    pub fn sign(&self, header: Value, claims: Value) -> String {
        let body = self.test_post(
            "/__test/sign",
            &json!({ "header": header, "claims": claims }),
        );
        body["token"].as_str().unwrap().to_owned()
    }

    /// The current public signing key as SPKI PEM (`-----BEGIN PUBLIC
    /// KEY-----…`, with its final newline).
    pub fn public_pem(&self) -> String {
        let body = self.get_json("/__test/public-pem");
        body["pem"].as_str().unwrap().to_owned()
    }

    // --- HTTP -------------------------------------------------------------------

    /// `GET path`; panics unless it answers 200 with JSON.
    pub fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.request("GET", path, None, "");
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// `POST path` with a JSON body: the status and the answer.
    pub fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.request("POST", path, Some("application/json"), &body.to_string())
    }

    /// `POST path` form-encoded: the status and the answer.
    pub fn form_post(&self, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.request(
            "POST",
            path,
            Some("application/x-www-form-urlencoded"),
            &body,
        )
    }

    fn test_post(&self, path: &str, body: &Value) -> Value {
        let (status, answer) = self.post_json(path, body);
        assert_eq!(status, 200, "POST {path}: {answer}");
        answer
    }

    /// One request; the answer as JSON (a JSON string when it is not).
    fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &str,
    ) -> (u16, Value) {
        let (status, text) =
            http(&self.addr, method, path, content_type, body).unwrap_or_else(|e| {
                panic!(
                    "the OIDC provider at {} did not answer {method} {path}: {e}; its log:\n{}",
                    self.issuer,
                    self.log()
                )
            });
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.stop();
        crate::leak::keep_log("oidc-provider", &self.log());
    }
}

/// A minimal HTTP/1.1 exchange over plain TCP (`Connection: close`): the
/// status and the body.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    if let Some(ct) = content_type {
        req.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let rest = &raw[split + 4..];
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = s.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&s[..eol]);
        let size =
            usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        let data = &s[eol + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        s = data.get(size + 2..).unwrap_or_default();
    }
    out
}

/// `application/x-www-form-urlencoded` escaping of one key or value.
pub fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Base64url (no padding) decoding, as in JWTs.
pub fn b64url_decode(s: &str) -> Vec<u8> {
    let standard: String = s
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    crate::base64_decode(&standard)
}

/// A JWT's header and payload, decoded (the signature is not checked).
pub fn jwt_parts(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut next = |what: &str| -> Value {
        let part = parts
            .next()
            .unwrap_or_else(|| panic!("no {what} in JWT {token:?}"));
        serde_json::from_slice(&b64url_decode(part))
            .unwrap_or_else(|e| panic!("the JWT's {what} is not JSON ({e}): {token:?}"))
    };
    let header = next("header");
    (header, next("payload"))
}

/// Starts the provider once and waits for its ready line: the child and
/// that line (`issuer`, `alg`, `kid`), or why not (the child killed) with
/// what it wrote to `log`, which each attempt starts afresh.
fn spawn_provider(
    node: &std::path::Path,
    script: &std::path::Path,
    env: &[(&str, &str)],
    log: &std::path::Path,
) -> Result<(Child, Value), String> {
    let mut child = Command::new(node)
        .arg(script)
        .arg("0")
        .current_dir(oidc_dir())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", node.display()));
    // The first stdout line is the ready line; the rest is drained.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let _ = tx.send(line);
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
    });
    let line = rx.recv_timeout(READY_TIMEOUT).unwrap_or_default();
    let ready: Value = serde_json::from_str(line.trim()).unwrap_or(Value::Null);
    if ready["issuer"].is_string() && ready["ready"] == true {
        return Ok((child, ready));
    }
    let _ = child.kill();
    let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
    Err(format!(
        "no ready line within {READY_TIMEOUT:?} (stdout {line:?}, {status}); its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    ))
}
