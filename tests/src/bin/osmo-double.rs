//! Test double of the OSMO credential API, written from the facts in
//! ../shared/remotes/osmo.md; not OSMO's code.
//!
//! It lets the end-to-end tests drive the daemon's OSMO publisher against
//! something that enforces the documented rules, so a wrong request fails a
//! test instead of passing silently. Its own contract is tested by
//! `tests/tests/osmo_double.rs`.
//!
//! ```text
//! osmo-double --listen 127.0.0.1:PORT [--token PAT]... [--token-expires YYYY-MM-DD]
//!             [--jwt-ttl SECS] [--exchange-delay-ms MS] [--state FILE]
//!             [--client-version X.Y.Z]
//! ```
//!
//! Since issue 19 it also keeps what was observed of the real service
//! (`../shared/osmo/run.sh`, docs/publish.md), and `tests/tests/osmo_contract.rs`
//! sends the same requests to both and compares the answers:
//!
//! - `GET /client/version` (no login): the current client version,
//!   `--client-version` (default 6.4.0); text with `Accept: text/plain`,
//!   else `{"major", "minor", "revision", "hash"}`.
//! - `x-osmo-client-version` that is not `major.minor.revision[.hash]`: 500
//!   on every call, the exchange included. One older than the current
//!   client: a "New client" warning (and `x-osmo-service-version`).
//! - The token's expiry is checked only on calls past the JWT check that
//!   carry the client version: 400 "Access token NAME has expired.", or a
//!   "WARNING: Access token NAME is expiring on DATE at 12AM UTC." within
//!   7 days. Warnings are `WARNING:` lines, base64 in `x-osmo-warning`.
//! - An unknown or malformed access token is a 400 on the exchange.
//! - Registry scopes are normalised as the platform does (scheme, trailing
//!   `/`, `:443`, `docker.io`); one credential per scope or endpoint,
//!   whatever its type or name: setting one replaces it and renames it.
//! - GENERIC keys are any strings (the platform does not check them).
//!
//! - `--listen`: port 0 picks a free port. The first line on stdout is
//!   `listening on 127.0.0.1:PORT`; then it serves until killed, logging one
//!   line per request to stderr (method, path, status; never bodies or
//!   tokens).
//! - `--token PAT` (repeatable): an access token it accepts.
//!   `--token-expires`: the tokens stop working at 00:00 UTC of that date
//!   (default: never).
//! - `--jwt-ttl` (default 300): lifetime of issued JWTs in seconds.
//! - `--exchange-delay-ms` (default 0): sleep inside each exchange.
//! - `--state FILE`: load the credentials (and issued JWTs and rejected
//!   registry auths) from FILE at start if it exists, save after every
//!   change. The file holds the stored secret values, as OSMO's database
//!   would. Counters, injected failures and the request log do not persist.
//!
//! The OSMO API (`/api/...`) is described in osmo.md; the rules are commented
//! where they are enforced below. The control API for tests (no auth):
//!
//! - `GET /_double/state` → `{"exchanges", "max_concurrent_exchanges",
//!   "credentials": {NAME: {"cred_type", "profile", "body"}}, "log":
//!   [{"method", "path", "status"}]}`. `exchanges` counts exchange requests
//!   with a well-formed body (not injected failures); `log` holds every
//!   request outside `/_double/`, in the order they were answered.
//! - `POST /_double/fail` `{"method", "path", "status", "times"}`: the next
//!   `times` (default 1) requests with that method (`*`: any) and exact path
//!   (`*`: any) get `status` with `{"message":"injected failure"}` before any
//!   other processing, auth included.
//! - `DELETE /_double/fail`: drops every injected failure not yet taken.
//! - `POST /_double/reject-auth` `{"auth"}`: a registry `auth` value whose
//!   login check fails from now on.
//! - `DELETE /_double/credentials/NAME`: remove a credential behind the
//!   client's back (404 if missing).
//! - `POST /_double/credentials/NAME` with an envelope: create or replace one
//!   behind the client's back. The envelope goes through the same schema,
//!   name and uniqueness rules as the API, but no login check.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use tiny_http::{Header, Request, Response, Server};

const USAGE: &str = "usage: osmo-double --listen 127.0.0.1:PORT [--token PAT]... \
                     [--token-expires YYYY-MM-DD] [--jwt-ttl SECS] [--exchange-delay-ms MS] \
                     [--state FILE] [--client-version X.Y.Z]";
/// The access token's name, as the platform names it in its messages.
const TOKEN_NAME: &str = "vault-test";

const MS_PER_DAY: i64 = 86_400_000;

/// The command line.
#[derive(Debug)]
struct Config {
    listen: String,
    tokens: Vec<String>,
    /// `--token-expires` as days since 1970-01-01.
    token_expires: Option<i64>,
    jwt_ttl_secs: u64,
    exchange_delay: Duration,
    state_file: Option<PathBuf>,
    /// The platform's current client version.
    client_version: [u64; 3],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CredType {
    Registry,
    Data,
    Generic,
}

impl CredType {
    fn as_str(self) -> &'static str {
        match self {
            CredType::Registry => "REGISTRY",
            CredType::Data => "DATA",
            CredType::Generic => "GENERIC",
        }
    }

    fn parse(s: &str) -> Option<CredType> {
        match s {
            "REGISTRY" => Some(CredType::Registry),
            "DATA" => Some(CredType::Data),
            "GENERIC" => Some(CredType::Generic),
            _ => None,
        }
    }
}

/// One stored credential.
#[derive(Debug, Clone)]
struct Credential {
    cred_type: CredType,
    /// Registry scope, DATA endpoint, or "" for GENERIC.
    profile: String,
    /// The inner envelope object as sent.
    body: Value,
}

/// A failure injected by `POST /_double/fail`.
#[derive(Debug)]
struct Failure {
    method: String,
    path: String,
    status: u16,
    times: u64,
}

#[derive(Debug, Default)]
struct State {
    credentials: BTreeMap<String, Credential>,
    /// Issued JWT → expiry in Unix milliseconds.
    jwts: HashMap<String, i64>,
    /// Registry `auth` values whose login check fails.
    rejected_auth: BTreeSet<String>,
    failures: Vec<Failure>,
    exchanges: u64,
    exchanges_in_flight: u64,
    max_concurrent_exchanges: u64,
    log: Vec<Value>,
}

#[derive(Debug)]
struct Double {
    config: Config,
    state: Mutex<State>,
}

/// An answer before it becomes an HTTP response.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: Value,
    /// A text body instead of JSON.
    text: Option<String>,
    /// Extra headers (the platform's warnings).
    headers: Vec<(&'static str, String)>,
}

impl Reply {
    fn new(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body,
            text: None,
            headers: Vec::new(),
        }
    }

    /// osmo.md, Errors: `{"message": str, "error_code": ..., "workflow_id":
    /// null}` (the last seen on the platform).
    fn error(status: u16, code: &str, message: impl Into<String>) -> Reply {
        Reply::new(
            status,
            json!({"message": message.into(), "error_code": code, "workflow_id": null}),
        )
    }

    /// An error without `error_code` (404, 500, injected failures, control API).
    fn message(status: u16, message: impl Into<String>) -> Reply {
        Reply::new(status, json!({"message": message.into()}))
    }

    /// A 422 schema error (osmo.md, Errors: `{"detail": [...]}`).
    fn unprocessable(detail: Vec<Value>) -> Reply {
        Reply::new(422, json!({ "detail": detail }))
    }

    fn not_found() -> Reply {
        Reply::message(404, "not found")
    }

    fn method_not_allowed() -> Reply {
        Reply::new(405, json!({"detail": "Method Not Allowed"}))
    }
}

/// One item of a 422 `detail` list.
fn detail(loc: &[&str], msg: &str, kind: &str) -> Value {
    let mut full = vec![Value::from("body")];
    full.extend(loc.iter().map(|s| Value::from(*s)));
    json!({"loc": full, "msg": msg, "type": kind})
}

fn main() -> ExitCode {
    let config = match parse_args(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("osmo-double: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut state = State::default();
    if let Some(file) = &config.state_file
        && file.exists()
        && let Err(e) = load_state(file, &mut state)
    {
        eprintln!("osmo-double: cannot load {}: {e}", file.display());
        return ExitCode::FAILURE;
    }
    let server = match Server::http(config.listen.as_str()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("osmo-double: cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    let Some(addr) = server.server_addr().to_ip() else {
        eprintln!("osmo-double: not listening on an IP address");
        return ExitCode::FAILURE;
    };
    let mut out = std::io::stdout();
    if writeln!(out, "listening on {addr}")
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    let double = Arc::new(Double {
        config,
        state: Mutex::new(state),
    });
    for request in server.incoming_requests() {
        let double = Arc::clone(&double);
        thread::spawn(move || handle(&double, request));
    }
    ExitCode::SUCCESS
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Config, String> {
    let mut config = Config {
        listen: String::new(),
        tokens: Vec::new(),
        token_expires: None,
        jwt_ttl_secs: 300,
        exchange_delay: Duration::ZERO,
        state_file: None,
        client_version: [6, 4, 0],
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => config.listen = value()?,
            "--token" => config.tokens.push(value()?),
            "--token-expires" => {
                let v = value()?;
                let days = parse_date(&v).ok_or_else(|| format!("bad date {v:?}"))?;
                config.token_expires = Some(days);
            }
            "--jwt-ttl" => {
                let v = value()?;
                config.jwt_ttl_secs = v.parse().map_err(|_| format!("bad --jwt-ttl {v:?}"))?;
            }
            "--exchange-delay-ms" => {
                let v = value()?;
                let ms = v
                    .parse()
                    .map_err(|_| format!("bad --exchange-delay-ms {v:?}"))?;
                config.exchange_delay = Duration::from_millis(ms);
            }
            "--state" => config.state_file = Some(PathBuf::from(value()?)),
            "--client-version" => {
                let v = value()?;
                config.client_version =
                    parse_version(&v).ok_or_else(|| format!("bad --client-version {v:?}"))?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if config.listen.is_empty() {
        return Err("--listen is required".into());
    }
    Ok(config)
}

// ---------------------------------------------------------------------------
// Dates and time (by hand: the crate has no date library).

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `days` after 1970-01-01 (`civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `YYYY-MM-DD` → days since 1970-01-01; `None` unless a real date.
fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = &s[r];
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&m) || d < 1 {
        return None;
    }
    let days = days_from_civil(y, m, d);
    // Round-trip to refuse 2026-02-30 and friends.
    (civil_from_days(days) == (y, m, d)).then_some(days)
}

fn format_date(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

// ---------------------------------------------------------------------------
// Request handling.

fn handle(double: &Double, mut request: Request) {
    let method = request.method().as_str().to_owned();
    let path = request.url().split('?').next().unwrap_or("").to_owned();
    let authorization = header(&request, "Authorization").map(str::to_owned);
    let client_version = header(&request, "x-osmo-client-version").map(str::to_owned);
    let plain = header(&request, "Accept").is_some_and(|a| a.contains("text/plain"));
    let mut body = Vec::new();
    let read = request.as_reader().read_to_end(&mut body);

    let control = path == "/_double" || path.starts_with("/_double/");
    let reply = match read {
        Err(e) => Reply::message(400, format!("cannot read the body: {e}")),
        Ok(_) if control => control_api(double, &method, &path, &body),
        Ok(_) if path == "/client/version" => client_version_reply(double, plain),
        Ok(_) => {
            let call = Call {
                method: &method,
                path: &path,
                authorization: authorization.as_deref(),
                version: client_version.as_deref(),
            };
            api(double, &call, &body)
        }
    };
    if !control {
        double
            .lock()
            .log
            .push(json!({"method": method, "path": path, "status": reply.status}));
    }
    // Never bodies or tokens: the path holds at most a credential name.
    eprintln!("osmo-double: {method} {path} {}", reply.status);

    let (data, kind) = match &reply.text {
        Some(t) => (t.clone().into_bytes(), "text/plain; charset=utf-8"),
        None => (
            serde_json::to_vec(&reply.body).unwrap_or_default(),
            "application/json",
        ),
    };
    let mut response = Response::from_data(data).with_status_code(reply.status);
    if let Ok(h) = Header::from_bytes("Content-Type", kind) {
        response = response.with_header(h);
    }
    for (k, v) in &reply.headers {
        if let Ok(h) = Header::from_bytes(*k, v.as_bytes()) {
            response = response.with_header(h);
        }
    }
    if let Err(e) = request.respond(response) {
        eprintln!("osmo-double: {method} {path}: cannot answer: {e}");
    }
}

fn header<'a>(request: &'a Request, name: &'static str) -> Option<&'a str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

impl Double {
    /// The state; a panicked handler thread must not take the double down.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The platform's check of the token on a call past the JWT check
    /// that carries the client version: a 400 once expired, a warning
    /// within 7 days (the platform counts whole days, UTC).
    fn token_check(&self) -> Result<Option<String>, Reply> {
        let Some(days) = self.config.token_expires else {
            return Ok(None);
        };
        let today = now_ms().div_euclid(MS_PER_DAY);
        if days <= today {
            return Err(Reply::error(
                400,
                "USER",
                format!("Access token {TOKEN_NAME} has expired."),
            ));
        }
        Ok((days - today <= 7).then(|| {
            format!(
                "WARNING: Access token {TOKEN_NAME} is expiring on {} at 12AM UTC.",
                format_date(days)
            )
        }))
    }

    /// The current client version, as the platform writes it.
    fn current_version(&self) -> String {
        let [a, b, c] = self.config.client_version;
        format!("{a}.{b}.{c}")
    }

    /// Takes one injected failure matching the request, if any.
    fn take_failure(&self, method: &str, path: &str) -> Option<u16> {
        let mut state = self.lock();
        let i = state.failures.iter().position(|f| {
            f.times > 0
                && (f.method == "*" || f.method.eq_ignore_ascii_case(method))
                && (f.path == "*" || f.path == path)
        })?;
        let failure = &mut state.failures[i];
        failure.times -= 1;
        let status = failure.status;
        if failure.times == 0 {
            state.failures.remove(i);
        }
        Some(status)
    }

    /// Checks `Authorization: Bearer <JWT>` (osmo.md, Auth: every call but
    /// the exchange).
    fn check_jwt(&self, authorization: Option<&str>) -> Result<(), Reply> {
        let unauthorized = |m: &str| Reply::error(401, "USER", m);
        let Some(value) = authorization else {
            return Err(unauthorized("Missing Authorization header"));
        };
        let jwt = match value.split_once(' ') {
            Some((scheme, jwt)) if scheme.eq_ignore_ascii_case("bearer") => jwt.trim(),
            _ => return Err(unauthorized("Authorization is not a Bearer token")),
        };
        match self.lock().jwts.get(jwt) {
            None => Err(unauthorized("Invalid token")),
            Some(&expires) if now_ms() >= expires => Err(unauthorized("Token has expired")),
            Some(_) => Ok(()),
        }
    }
}

/// `major.minor.revision[.hash]`, as the platform parses a version.
fn parse_version(v: &str) -> Option<[u64; 3]> {
    let parts: Vec<&str> = v.split('.').collect();
    if !(3..=4).contains(&parts.len())
        || parts[3..]
            .iter()
            .any(|h| h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric()))
    {
        return None;
    }
    let mut out = [0; 3];
    for (slot, p) in out.iter_mut().zip(&parts[..3]) {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *slot = p.parse().ok()?;
    }
    Some(out)
}

/// `GET /client/version`: no login, no version check.
fn client_version_reply(double: &Double, plain: bool) -> Reply {
    let [a, b, c] = double.config.client_version;
    let mut r = Reply::new(
        200,
        json!({"major": a.to_string(), "minor": b.to_string(), "revision": c.to_string(), "hash": ""}),
    );
    if plain {
        r.text = Some(double.current_version());
    }
    r
}

/// One request to the API, as the handler sees it.
struct Call<'a> {
    method: &'a str,
    path: &'a str,
    authorization: Option<&'a str>,
    /// `x-osmo-client-version`.
    version: Option<&'a str>,
}

/// The OSMO API: everything outside `/_double/`. The client version is
/// checked as the platform's middleware does, around the handler.
fn api(double: &Double, call: &Call<'_>, body: &[u8]) -> Reply {
    if let Some(status) = double.take_failure(call.method, call.path) {
        return Reply::message(status, "injected failure");
    }
    // The gateway checks the JWT before the platform sees the call.
    let authed = call.path != "/api/auth/jwt/access_token";
    if authed && let Err(r) = double.check_jwt(call.authorization) {
        return r;
    }
    let Some(version) = call.version else {
        return handle_api(double, call, body);
    };
    let Some(parsed) = parse_version(version) else {
        return Reply::message(
            500,
            "Internal server error: Version should be of the format major.minor.revision",
        );
    };
    let mut warnings = Vec::new();
    if authed {
        match double.token_check() {
            Err(r) => return r,
            Ok(w) => warnings.extend(w),
        }
    }
    let mut reply = handle_api(double, call, body);
    if parsed < double.config.client_version {
        let current = double.current_version();
        warnings.insert(
            0,
            format!(
                "WARNING: New client {current} available.\nCurrent version: {version}.\nPlease \
                 update by running the install command in the documentation."
            ),
        );
        reply.headers.push(("x-osmo-service-version", current));
    }
    if !warnings.is_empty() {
        reply
            .headers
            .push(("x-osmo-warning", base64_encode(&warnings.join("\n"))));
    }
    reply
}

/// The handlers, after the JWT and version checks.
fn handle_api(double: &Double, call: &Call<'_>, body: &[u8]) -> Reply {
    let (method, path) = (call.method, call.path);
    if path == "/api/auth/jwt/access_token" {
        return match method {
            "POST" => exchange(double, body),
            _ => Reply::method_not_allowed(),
        };
    }
    if path == "/api/credentials" {
        if method != "GET" {
            return Reply::method_not_allowed();
        }
        return Reply::new(200, list(&double.lock()));
    }
    let Some(name) = path
        .strip_prefix("/api/credentials/")
        .filter(|n| !n.is_empty() && !n.contains('/'))
        .map(percent_decode)
    else {
        return Reply::not_found();
    };
    if method != "POST" && method != "DELETE" {
        return Reply::method_not_allowed();
    }
    if method == "POST" {
        set_credential(double, &name, body, true)
    } else {
        delete_credential(double, &name)
    }
}

/// `POST /api/auth/jwt/access_token` `{"token": "<PAT>"}` →
/// `{"token": "<JWT>", "expires_at": <unix seconds>}` (osmo.md, Auth).
fn exchange(double: &Double, body: &[u8]) -> Reply {
    let pat = match parse_object(body) {
        Err(r) => return r,
        Ok(obj) => {
            let mut errors = Vec::new();
            check_fields(&obj, &[], &[("token", true, Kind::Str)], &mut errors);
            if !errors.is_empty() {
                return Reply::unprocessable(errors);
            }
            obj.get("token")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        }
    };
    {
        let mut state = double.lock();
        state.exchanges += 1;
        state.exchanges_in_flight += 1;
        state.max_concurrent_exchanges = state
            .max_concurrent_exchanges
            .max(state.exchanges_in_flight);
    }
    thread::sleep(double.config.exchange_delay);
    let reply = issue_jwt(double, &pat);
    double.lock().exchanges_in_flight -= 1;
    reply
}

fn issue_jwt(double: &Double, pat: &str) -> Reply {
    // Seen on the platform: a malformed or unknown token is a 400.
    if pat.len() != 43 && !double.config.tokens.iter().any(|t| t == pat) {
        return Reply::error(
            400,
            "USER",
            format!("Access token has invalid length {}", pat.len()),
        );
    }
    if !double.config.tokens.iter().any(|t| t == pat) {
        return Reply::error(400, "USER", "Access Token is invalid");
    }
    // A token stops working at 00:00 UTC of its expiry date.
    let now = now_ms();
    if let Some(days) = double.config.token_expires
        && now >= days * MS_PER_DAY
    {
        return Reply::error(400, "USER", "Access Token has expired");
    }
    let jwt = match random_hex(16) {
        Ok(hex) => format!("jwt.{hex}"),
        Err(e) => return Reply::message(500, format!("double: no randomness: {e}")),
    };
    let expires_ms = now + double.config.jwt_ttl_secs as i64 * 1000;
    let mut state = double.lock();
    state.jwts.retain(|_, &mut e| e > now);
    state.jwts.insert(jwt.clone(), expires_ms);
    if let Err(r) = save(double, &state) {
        return r;
    }
    // Rounded down, so a client never trusts the JWT longer than it lives.
    Reply::new(200, json!({"token": jwt, "expires_at": expires_ms / 1000}))
}

fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// A credential's `profile` as listed: `null` for GENERIC (seen on the
/// platform).
fn profile_json(c: &Credential) -> Value {
    if c.cred_type == CredType::Generic {
        Value::Null
    } else {
        Value::from(c.profile.as_str())
    }
}

/// `GET /api/credentials`: names, types and profiles sorted by name, never
/// the values (osmo.md, Credentials).
fn list(state: &State) -> Value {
    let credentials: Vec<Value> = state
        .credentials
        .iter()
        .map(|(name, c)| {
            json!({"cred_name": name, "cred_type": c.cred_type.as_str(), "profile": profile_json(c)})
        })
        .collect();
    json!({ "credentials": credentials })
}

/// `DELETE /api/credentials/{name}` → what was deleted; 400 if missing.
fn delete_credential(double: &Double, name: &str) -> Reply {
    let mut state = double.lock();
    // The platform's message, spelling included.
    let Some(gone) = state.credentials.remove(name) else {
        return Reply::error(400, "USER", format!("Credential {name} does not exits"));
    };
    if let Err(r) = save(double, &state) {
        return r;
    }
    // Seen on the platform: the answer lists what was deleted.
    Reply::new(
        200,
        json!({"credentials": [{"cred_name": name, "cred_type": gone.cred_type.as_str(), "profile": profile_json(&gone)}]}),
    )
}

/// `POST /api/credentials/{name}` (and the control API's create, without
/// the login check). Order: schema (422), then name and field rules (400),
/// the registry login check (400 CREDENTIAL), uniqueness (400).
fn set_credential(double: &Double, name: &str, body: &[u8], login_check: bool) -> Reply {
    let (cred_type, inner) = match parse_envelope(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !valid_name(name) {
        return Reply::error(
            400,
            "USER",
            format!(
                "Invalid credential name {name:?}: must match ^[a-zA-Z]([a-zA-Z0-9_-]*[a-zA-Z0-9])?$"
            ),
        );
    }
    let profile = match profile_of(cred_type, &inner) {
        Ok(p) => p,
        Err(message) => return Reply::error(400, "USER", message),
    };
    // osmo.md: "The server validates on set: it logs in to the registry".
    if login_check && cred_type == CredType::Registry {
        let auth = inner
            .get("auth")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if double.lock().rejected_auth.contains(auth) {
            let host = profile.split('/').next().unwrap_or_default();
            return Reply::error(
                400,
                "CREDENTIAL",
                format!("Registry login to {host} failed: unauthorized"),
            );
        }
    }
    let mut state = double.lock();
    // As the platform's table keeps them: the name is the key, and the
    // profile (scope or endpoint, none for GENERIC) is unique too; a set
    // whose profile is held updates that row, renaming it.
    let duplicate = || {
        Reply::error(
            400,
            "USER",
            format!(
                " duplicate key value violates unique constraint \"credential_pkey\"\nDETAIL:  \
                 Key (user_name, cred_name)=(vault-user, {name}) already exists.\n"
            ),
        )
    };
    let holder = (cred_type != CredType::Generic)
        .then(|| {
            state
                .credentials
                .iter()
                .find(|(_, c)| c.cred_type != CredType::Generic && c.profile == profile)
                .map(|(n, _)| n.clone())
        })
        .flatten();
    if holder.is_none() && state.credentials.contains_key(name) {
        return duplicate();
    }
    if let Some(holder) = holder {
        if holder != name && state.credentials.contains_key(name) {
            return duplicate();
        }
        state.credentials.remove(&holder);
    }
    state.credentials.insert(
        name.to_owned(),
        Credential {
            cred_type,
            profile,
            body: inner,
        },
    );
    if let Err(r) = save(double, &state) {
        return r;
    }
    Reply::new(200, Value::Null)
}

/// Credential names: `^[a-zA-Z]([a-zA-Z0-9_-]*[a-zA-Z0-9])?$` (osmo.md).
fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    let (Some(first), Some(last)) = (b.first(), b.last()) else {
        return false;
    };
    first.is_ascii_alphabetic()
        && last.is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

/// The profile of a schema-valid inner object, or the 400 message.
fn profile_of(cred_type: CredType, inner: &Value) -> Result<String, String> {
    let field = |k: &str| inner.get(k).and_then(Value::as_str);
    match cred_type {
        // `registry`: host or host/path scope; empty means registry-1.docker.io.
        // Normalised as the platform does (seen in its code): trailing `/`
        // and a scheme dropped, `docker.io` is Docker Hub, `:443` dropped.
        CredType::Registry => {
            let scope = field("registry").unwrap_or_default().trim();
            let scope = scope.trim_end_matches('/');
            let rest = scope.split_once("://").map_or(scope, |(_, r)| r);
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            let host = match host {
                "" | "docker.io" => "registry-1.docker.io",
                h => h,
            };
            let host = host.strip_suffix(":443").unwrap_or(host);
            let path = path.trim_matches('/');
            Ok(if path.is_empty() {
                host.to_owned()
            } else {
                format!("{host}/{path}")
            })
        }
        // `endpoint`: s3://, gs://, azure://, tos:// or swift://, trailing `/`
        // stripped; http(s) endpoints are refused (use `override_url`).
        CredType::Data => {
            let endpoint = field("endpoint").unwrap_or_default();
            let lower = endpoint.to_ascii_lowercase();
            if lower.starts_with("http://") || lower.starts_with("https://") {
                return Err(format!(
                    "Invalid endpoint {endpoint:?}: http(s) endpoints are not supported; \
                     use a storage URL (s3://, gs://, azure://, tos://, swift://) and put \
                     the HTTP address in override_url"
                ));
            }
            let schemes = ["s3://", "gs://", "azure://", "tos://", "swift://"];
            let Some(scheme) = schemes.iter().find(|s| endpoint.starts_with(*s)) else {
                return Err(format!(
                    "Invalid endpoint {endpoint:?}: must start with s3://, gs://, azure://, \
                     tos:// or swift://"
                ));
            };
            let stripped = endpoint.trim_end_matches('/');
            if stripped.len() <= scheme.len() {
                return Err(format!("Invalid endpoint {endpoint:?}: no bucket"));
            }
            Ok(stripped.to_owned())
        }
        CredType::Generic => {
            let map = inner
                .get("credential")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            if map.is_empty() {
                return Err("Generic credential must have at least one key".into());
            }
            // The platform takes any string key (workloads may not: the
            // vault checks them before it sends).
            Ok(String::new())
        }
    }
}

/// The request body as a JSON object, or a 422.
fn parse_object(body: &[u8]) -> Result<Map<String, Value>, Reply> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err(Reply::unprocessable(vec![detail(
            &[],
            "Input should be a valid dictionary or object",
            "model_attributes_type",
        )])),
        Err(_) => Err(Reply::unprocessable(vec![detail(
            &[],
            "JSON decode error",
            "json_invalid",
        )])),
    }
}

/// What a field's value must be.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    /// An object of string keys and string values (GENERIC `credential`).
    StrMap,
}

/// Checks an object's keys: unknown keys, missing required ones and values
/// of the wrong kind each add a 422 item. `fields`: (key, required, kind).
fn check_fields(
    obj: &Map<String, Value>,
    loc: &[&str],
    fields: &[(&str, bool, Kind)],
    errors: &mut Vec<Value>,
) {
    let at = |keys: &[&str]| -> Vec<String> {
        loc.iter().chain(keys).map(|s| (*s).to_owned()).collect()
    };
    let push = |errors: &mut Vec<Value>, loc: Vec<String>, msg: &str, kind: &str| {
        let loc: Vec<&str> = loc.iter().map(String::as_str).collect();
        errors.push(detail(&loc, msg, kind));
    };
    for key in obj.keys() {
        if !fields.iter().any(|(k, _, _)| k == key) {
            let msg = "Extra inputs are not permitted";
            push(errors, at(&[key]), msg, "extra_forbidden");
        }
    }
    for &(key, required, kind) in fields {
        match (obj.get(key), kind) {
            (None, _) if required => push(errors, at(&[key]), "Field required", "missing"),
            (None, _) | (Some(Value::String(_)), Kind::Str) => {}
            (Some(Value::Object(map)), Kind::StrMap) => {
                for k in map.iter().filter(|(_, v)| !v.is_string()).map(|(k, _)| k) {
                    let msg = "Input should be a valid string";
                    push(errors, at(&[key, k]), msg, "string_type");
                }
            }
            (Some(_), Kind::Str) => {
                let msg = "Input should be a valid string";
                push(errors, at(&[key]), msg, "string_type");
            }
            (Some(_), Kind::StrMap) => {
                let msg = "Input should be a valid dictionary";
                push(errors, at(&[key]), msg, "dict_type");
            }
        }
    }
}

/// The set body: exactly one of the three envelopes, each with only its
/// documented keys (osmo.md: unknown keys → 422). Returns the type and the
/// inner object as sent.
fn parse_envelope(body: &[u8]) -> Result<(CredType, Value), Reply> {
    let obj = parse_object(body)?;
    // Seen on the platform: its check that one envelope is set comes
    // before the schema, counts every key with a value (unknown ones too),
    // and is a 400.
    if obj.values().filter(|v| !v.is_null()).count() != 1 {
        return Err(Reply::error(
            400,
            "USER",
            "Exactly one of the following must be set dict_keys(['registry_credential', \
             'data_credential', 'generic_credential'])",
        ));
    }
    let envelopes = [
        ("registry_credential", CredType::Registry),
        ("data_credential", CredType::Data),
        ("generic_credential", CredType::Generic),
    ];
    let mut errors = Vec::new();
    let mut found = Vec::new();
    for (key, value) in &obj {
        let Some(&(_, cred_type)) = envelopes.iter().find(|(k, _)| k == key) else {
            let msg = "Extra inputs are not permitted";
            errors.push(detail(&[key], msg, "extra_forbidden"));
            continue;
        };
        let Some(inner) = value.as_object() else {
            let msg = "Input should be a valid dictionary or object";
            errors.push(detail(&[key], msg, "model_attributes_type"));
            continue;
        };
        check_fields(inner, &[key], envelope_fields(cred_type), &mut errors);
        // DATA `addressing_style`: virtual, path or auto.
        if let Some(Value::String(style)) = inner.get("addressing_style")
            && !matches!(style.as_str(), "virtual" | "path" | "auto")
        {
            let msg = "Input should be 'virtual', 'path' or 'auto'";
            errors.push(detail(&[key, "addressing_style"], msg, "enum"));
        }
        found.push((cred_type, value.clone()));
    }
    let present = obj
        .keys()
        .filter(|k| envelopes.iter().any(|(e, _)| e == k))
        .count();
    if present != 1 {
        let msg = "Exactly one of registry_credential, data_credential, generic_credential \
                   is required";
        errors.push(detail(&[], msg, "value_error"));
    }
    match found.pop() {
        Some(one) if errors.is_empty() => Ok(one),
        _ => Err(Reply::unprocessable(errors)),
    }
}

/// The keys of each envelope (osmo.md, Envelopes): (key, required, kind).
fn envelope_fields(cred_type: CredType) -> &'static [(&'static str, bool, Kind)] {
    match cred_type {
        // REGISTRY: `auth` required; `registry`, `username` optional.
        CredType::Registry => &[
            ("registry", false, Kind::Str),
            ("username", false, Kind::Str),
            ("auth", true, Kind::Str),
        ],
        // DATA: `endpoint`, `access_key_id`, `access_key` required;
        // `region`, `override_url`, `addressing_style` optional.
        CredType::Data => &[
            ("endpoint", true, Kind::Str),
            ("region", false, Kind::Str),
            ("access_key_id", true, Kind::Str),
            ("access_key", true, Kind::Str),
            ("override_url", false, Kind::Str),
            ("addressing_style", false, Kind::Str),
        ],
        // GENERIC: `credential`, string keys and string values.
        CredType::Generic => &[("credential", true, Kind::StrMap)],
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------
// The control API.

fn control_api(double: &Double, method: &str, path: &str, body: &[u8]) -> Reply {
    match (method, path) {
        ("GET", "/_double/state") => Reply::new(200, state_json(&double.lock())),
        ("POST", "/_double/fail") => add_failure(double, body),
        ("DELETE", "/_double/fail") => {
            double.lock().failures.clear();
            Reply::new(200, Value::Null)
        }
        ("POST", "/_double/reject-auth") => {
            let auth = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("auth").and_then(Value::as_str).map(str::to_owned));
            let Some(auth) = auth else {
                return Reply::message(400, "body must be {\"auth\": \"...\"}");
            };
            let mut state = double.lock();
            state.rejected_auth.insert(auth);
            match save(double, &state) {
                Ok(()) => Reply::new(200, Value::Null),
                Err(r) => r,
            }
        }
        _ => {
            let Some(name) = path
                .strip_prefix("/_double/credentials/")
                .filter(|n| !n.is_empty() && !n.contains('/'))
                .map(percent_decode)
            else {
                return Reply::not_found();
            };
            match method {
                "POST" => set_credential(double, &name, body, false),
                "DELETE" => {
                    let mut state = double.lock();
                    if state.credentials.remove(&name).is_none() {
                        return Reply::not_found();
                    }
                    match save(double, &state) {
                        Ok(()) => Reply::new(200, Value::Null),
                        Err(r) => r,
                    }
                }
                _ => Reply::method_not_allowed(),
            }
        }
    }
}

fn add_failure(double: &Double, body: &[u8]) -> Reply {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let method = v.get("method").and_then(Value::as_str);
    let path = v.get("path").and_then(Value::as_str);
    let status = v
        .get("status")
        .and_then(Value::as_u64)
        .filter(|s| (100..=599).contains(s));
    let times = v.get("times").map_or(Some(1), Value::as_u64);
    let (Some(method), Some(path), Some(status), Some(times)) = (method, path, status, times)
    else {
        return Reply::message(
            400,
            "body must be {\"method\", \"path\", \"status\" (100-599), \"times\" (optional)}",
        );
    };
    double.lock().failures.push(Failure {
        method: method.to_owned(),
        path: path.to_owned(),
        status: status as u16,
        times,
    });
    Reply::new(200, Value::Null)
}

fn credentials_json(state: &State) -> Value {
    let map: Map<String, Value> = state
        .credentials
        .iter()
        .map(|(name, c)| {
            let v = json!({
                "cred_type": c.cred_type.as_str(),
                "profile": c.profile,
                "body": c.body,
            });
            (name.clone(), v)
        })
        .collect();
    Value::Object(map)
}

fn state_json(state: &State) -> Value {
    json!({
        "exchanges": state.exchanges,
        "max_concurrent_exchanges": state.max_concurrent_exchanges,
        "credentials": credentials_json(state),
        "log": state.log,
    })
}

// ---------------------------------------------------------------------------
// `--state FILE`.

/// Saves the persistent part of the state, if `--state` was given. Called
/// with the lock held, so saves happen in the order of the changes.
fn save(double: &Double, state: &State) -> Result<(), Reply> {
    let Some(file) = &double.config.state_file else {
        return Ok(());
    };
    let doc = json!({
        "credentials": credentials_json(state),
        "jwts": state.jwts,
        "rejected_auth": state.rejected_auth,
    });
    let tmp = file.with_extension("tmp");
    let written = serde_json::to_vec_pretty(&doc)
        .map_err(std::io::Error::other)
        .and_then(|data| std::fs::write(&tmp, data))
        .and_then(|()| std::fs::rename(&tmp, file));
    written.map_err(|e| {
        eprintln!("osmo-double: cannot save {}: {e}", file.display());
        Reply::message(500, format!("double: cannot save state: {e}"))
    })
}

fn load_state(file: &std::path::Path, state: &mut State) -> Result<(), String> {
    let data = std::fs::read(file).map_err(|e| e.to_string())?;
    let doc: Value = serde_json::from_slice(&data).map_err(|e| e.to_string())?;
    let bad = |what: &str| format!("bad {what}");
    if let Some(creds) = doc.get("credentials") {
        for (name, c) in creds.as_object().ok_or_else(|| bad("credentials"))? {
            let cred_type = c
                .get("cred_type")
                .and_then(Value::as_str)
                .and_then(CredType::parse)
                .ok_or_else(|| bad("cred_type"))?;
            let profile = c
                .get("profile")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("profile"))?;
            let body = c.get("body").cloned().ok_or_else(|| bad("body"))?;
            state.credentials.insert(
                name.clone(),
                Credential {
                    cred_type,
                    profile: profile.to_owned(),
                    body,
                },
            );
        }
    }
    if let Some(jwts) = doc.get("jwts") {
        for (jwt, expires) in jwts.as_object().ok_or_else(|| bad("jwts"))? {
            let expires = expires.as_i64().ok_or_else(|| bad("jwt expiry"))?;
            state.jwts.insert(jwt.clone(), expires);
        }
    }
    if let Some(rejected) = doc.get("rejected_auth") {
        for auth in rejected.as_array().ok_or_else(|| bad("rejected_auth"))? {
            let auth = auth.as_str().ok_or_else(|| bad("rejected_auth"))?;
            state.rejected_auth.insert(auth.to_owned());
        }
    }
    Ok(())
}
