//! Publishing to workload platforms over HTTP (issue 10): the OSMO
//! credential API (../shared/remotes/osmo.md), the access-token exchange,
//! the pass that sends what is due, drift, and the background loop. What is
//! due and what it looks like is decided by [`crate::engine::publish`].
//!
//! - The access token lives encrypted in the vault; the JWT it is exchanged
//!   for lives in memory only, is renewed before it runs out (a fifth of its
//!   life ahead, at most 30 s), and is exchanged by one caller at a time:
//!   whoever needs it while an exchange is under way waits for that one.
//! - One pass at a time per remote. A pass sends due publications in order
//!   and stops at the first retryable failure (network, 5xx), so nothing is
//!   sent out of order; a 4xx is the platform refusing that credential: it
//!   is kept with the platform's message and the pass goes on.
//! - After a failure the remote backs off: 2 s doubling up to
//!   `publish.retry` (5 min).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use tokio::sync::Notify;
use tracing::{info, warn};
use vault_protocol::message::{
    PublicationInfo, PublishState, RemoteCredential, RemoteInfo, RemoteKind, RemoteReport,
};
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{ErrorCode, Response, SecretValue, WireError};

use super::Shared;
use super::http::{Http, Issued, JwtCache, describe, read_capped};
use crate::engine::Engine;
use crate::engine::publish::{Job, JobOp};
use crate::store::{Presence, RemoteRow};

/// First retry delay after a failure; doubles up to `publish.retry`.
const BACKOFF: Duration = Duration::from_secs(2);
/// With nothing to retry, look for due publications this often (changes
/// also wake the loop at once).
const PERIOD: Duration = Duration::from_secs(60);
/// Wait this long after a change before publishing (changes come in
/// bursts).
const DEBOUNCE: Duration = Duration::from_millis(300);
/// The shortest wait of the background loop between passes.
const MIN_WAIT: Duration = Duration::from_millis(100);
/// Exchange each remote's access token at least this often, to hear from
/// the platform when it nears expiry.
const TOKEN_CHECK: Duration = Duration::from_secs(6 * 3600);
/// How long `vault publish` waits for the first push before answering
/// "queued".
const INLINE: Duration = Duration::from_secs(10);
/// Most bytes of one answer of a platform (its credential list included);
/// more is a broken or hostile platform, not read on.
const MAX_ANSWER: usize = 16 << 20;
/// The header OSMO answers with base64 warnings (`WARNING: …` lines), and
/// only when the request says which client version it is.
const WARNING_HEADER: &str = "x-osmo-warning";
/// The client version header. OSMO checks an access token's expiry (and
/// warns within 7 days of it) only on calls that carry it; a value that is
/// not `major.minor.revision` is answered 500, and one older than the
/// platform's current client is told to update (or refused, when the
/// platform sets a minimum). Vault is not OSMO's client, so it sends the
/// version the platform itself names as current (`GET /client/version`):
/// then the platform says nothing about versions, and does check the
/// token. See docs/publish.md.
const VERSION_HEADER: &str = "x-osmo-client-version";
/// Longest platform warning kept.
const WARNING_MAX: usize = 600;

#[derive(Debug, Default)]
struct RemoteState {
    last_error: Option<String>,
    failures: u32,
    retry_at: Option<Instant>,
    token_warning: Option<String>,
    token_expired: bool,
    /// The last successful token exchange.
    checked: Option<Instant>,
    /// The client version the platform names as current (sent as
    /// [`VERSION_HEADER`]); asked for again at the next exchange when
    /// unknown or outdated.
    client_version: Option<String>,
    /// The platform's other warnings last seen, logged once each.
    other_warnings: Vec<String>,
}

/// One remote's in-memory state.
#[derive(Debug, Default)]
struct Remote {
    /// The JWT for the remote's token.
    jwt: JwtCache,
    /// One pass at a time.
    pass: tokio::sync::Mutex<()>,
    state: Mutex<RemoteState>,
}

impl Remote {
    fn state(&self) -> MutexGuard<'_, RemoteState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Publishing state shared by requests and the background loop.
#[derive(Debug)]
pub struct Publisher {
    remotes: Mutex<BTreeMap<String, Arc<Remote>>>,
    kick: Notify,
    /// Remotes of an unknown kind already logged: `vault status` asks on
    /// every call, the log says it once.
    unknown: Mutex<std::collections::BTreeSet<String>>,
}

impl Default for Publisher {
    fn default() -> Self {
        Self {
            remotes: Mutex::default(),
            kick: Notify::new(),
            unknown: Mutex::default(),
        }
    }
}

impl Publisher {
    fn remote(&self, name: &str) -> Arc<Remote> {
        let mut map = self.remotes.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(name.to_owned()).or_default())
    }

    /// Forgets the JWT and state of a remote (new token, or removed). The
    /// entry itself stays, so a pass under way keeps holding that remote's
    /// one pass lock.
    async fn reset(&self, name: &str) {
        let remote = self.remote(name);
        remote.jwt.forget().await;
        *remote.state() = RemoteState::default();
    }

    /// Records a failure: backoff, and what `status` shows.
    fn failed(&self, name: &str, f: &Fail, retry_max: Duration) {
        let remote = self.remote(name);
        let mut st = remote.state();
        st.failures = st.failures.saturating_add(1);
        let backoff = crate::remote::syncer::doubling(BACKOFF, st.failures, retry_max);
        st.retry_at = Some(Instant::now() + backoff);
        if let Fail::Token(_, expired) = f {
            st.token_expired = *expired;
        }
        st.last_error = Some(f.text());
    }

    /// Records a success.
    fn succeeded(&self, name: &str) {
        let remote = self.remote(name);
        let mut st = remote.state();
        st.failures = 0;
        st.retry_at = None;
        st.last_error = None;
    }

    /// Something changed locally: publish what is due soon.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Every remote as `vault status` shows it.
    pub fn infos(&self, engine: &Engine) -> Vec<RemoteInfo> {
        let Ok(remotes) = engine.remotes() else {
            return Vec::new();
        };
        remotes
            .into_iter()
            .filter_map(|r| {
                let Some(kind) = RemoteKind::parse(&r.kind) else {
                    let mut logged = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
                    if logged.insert(format!("{}\0{}", r.name, r.kind)) {
                        warn!(remote = %r.name, kind = %r.kind, "a remote of an unknown kind is not shown");
                    }
                    return None;
                };
                let pubs = engine.publications(Some(&r.name)).unwrap_or_default();
                Some(self.info(&r.name, kind, &r.url, pubs))
            })
            .collect()
    }

    fn info(
        &self,
        name: &str,
        kind: RemoteKind,
        url: &str,
        pubs: Vec<PublicationInfo>,
    ) -> RemoteInfo {
        let remote = self.remote(name);
        let st = remote.state();
        let count = |f: fn(PublishState) -> bool| pubs.iter().filter(|p| f(p.state)).count() as u64;
        RemoteInfo {
            name: name.to_owned(),
            kind,
            url: url.to_owned(),
            published: count(|s| s != PublishState::Unpublishing),
            queued: count(|s| {
                matches!(
                    s,
                    PublishState::Pending | PublishState::Missing | PublishState::Unpublishing
                )
            }),
            failed: count(|s| s == PublishState::Failed),
            last_error: st.last_error.clone(),
            token_warning: st.token_warning.clone(),
            token_expired: st.token_expired,
            attention: pubs
                .into_iter()
                .filter(|p| p.state != PublishState::Published)
                .collect(),
        }
    }
}

/// A failed call.
#[derive(Debug)]
enum Fail {
    /// Worth retrying: not sent (no connection, or the token exchange
    /// answered 5xx).
    Retry(String),
    /// Sent, and the answer lost (timeout, connection dropped) or a 5xx:
    /// the platform may have done it. Retried too.
    Lost(String),
    /// The platform refused the request (4xx): permanent for this value.
    Refused(u16, String),
    /// The access token does not work (expired when `true`).
    Token(String, bool),
}

impl Fail {
    fn text(&self) -> String {
        match self {
            Fail::Retry(m) | Fail::Lost(m) | Fail::Token(m, _) => m.clone(),
            Fail::Refused(status, m) => format!("the platform refused it ({status}): {m}"),
        }
    }
}

/// The platform's error text: `{"message"}`, or a 422's `{"detail": [...]}`.
fn platform_message(status: u16, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Body {
        message: Option<String>,
        detail: Option<serde_json::Value>,
    }
    let parsed = serde_json::from_slice::<Body>(body).ok();
    let text = match parsed {
        Some(Body {
            message: Some(m), ..
        }) => m,
        Some(Body {
            detail: Some(serde_json::Value::Array(items)),
            ..
        }) => items
            .iter()
            .map(|i| {
                let loc = i
                    .get("loc")
                    .and_then(|l| l.as_array())
                    .map(|l| {
                        l.iter()
                            .map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_owned))
                            .collect::<Vec<_>>()
                            .join(".")
                    })
                    .unwrap_or_default();
                let msg = i.get("msg").and_then(|m| m.as_str()).unwrap_or("invalid");
                format!("{loc}: {msg}")
            })
            .collect::<Vec<_>>()
            .join("; "),
        Some(Body {
            detail: Some(d), ..
        }) => d.to_string(),
        _ => format!("HTTP {status}"),
    };
    // One line, bounded: it is shown in tables.
    let text: String = text.chars().filter(|c| !c.is_control()).take(300).collect();
    text
}

/// Whether `v` is a version the platform takes:
/// `major.minor.revision[.hash]` (its own check, else a 500).
fn is_version(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    (3..=4).contains(&parts.len())
        && parts[..3].iter().all(|p| digits(p))
        && parts[3..]
            .iter()
            .all(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Whether a refusal says the access token has expired.
fn token_expired(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("access token") && m.contains("expired")
}

/// What an `x-osmo-warning` says, sorted: each warning starts with a
/// `WARNING:` line, and the lines after it (up to the next) belong to it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Warnings {
    /// The access token's expiry, without the `WARNING:` prefix; several
    /// keep their line breaks.
    token: Option<String>,
    /// "New client … available": about OSMO's own client, never shown.
    new_client: bool,
    /// Anything else, for the log.
    other: Vec<String>,
}

impl Warnings {
    fn parse(text: &str) -> Self {
        let mut groups: Vec<Vec<&str>> = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            match groups.last_mut() {
                Some(g) if !line.starts_with("WARNING:") => g.push(line),
                _ => groups.push(vec![line]),
            }
        }
        let mut out = Self::default();
        let mut token = Vec::new();
        for g in groups {
            let first = g[0].strip_prefix("WARNING:").unwrap_or(g[0]).trim();
            let body = std::iter::once(first)
                .chain(g[1..].iter().copied())
                .collect::<Vec<_>>()
                .join("\n");
            let lower = first.to_ascii_lowercase();
            if lower.starts_with("new client") {
                out.new_client = true;
            } else if lower.contains("access token") && lower.contains("expir") {
                token.push(body);
            } else {
                out.other.push(body);
            }
        }
        if !token.is_empty() {
            token.dedup();
            let text: String = token
                .join("\n")
                .chars()
                .filter(|c| *c == '\n' || !c.is_control())
                .take(WARNING_MAX)
                .collect();
            out.token = Some(text);
        }
        out
    }
}

/// A talk with one platform.
struct Osmo<'a> {
    http: &'a Http,
    remote: &'a Remote,
    url: &'a str,
    token: &'a SecretValue,
}

impl Osmo<'_> {
    /// Learns from the warnings of an answer to a call that carried the
    /// client version and went through to the platform (the gateway's
    /// user headers set): the token's expiry warning, or that there is
    /// none (any more). A version warning is never taken for an expiry
    /// one: it only makes the next exchange ask for the version again.
    fn note_warnings(&self, resp: &reqwest::Response) {
        let text = resp
            .headers()
            .get(WARNING_HEADER)
            .and_then(|v| {
                base64::engine::general_purpose::STANDARD
                    .decode(v.as_bytes().trim_ascii())
                    .ok()
            })
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let w = Warnings::parse(&text);
        let mut st = self.remote.state();
        if w.new_client {
            st.client_version = None;
        }
        if st.other_warnings != w.other {
            for other in &w.other {
                info!(remote_url = %self.url, warning = %other, "the platform warns");
            }
            st.other_warnings = w.other;
        }
        st.token_warning = w.token;
    }

    /// The platform's current client version, asked for when not known
    /// (no login needed). `None` when it does not say: calls then go
    /// without the header, and work, but hear nothing of the token's
    /// expiry.
    async fn client_version(&self) -> Option<String> {
        if let Some(v) = self.remote.state().client_version.clone() {
            return Some(v);
        }
        let req = self
            .http
            .get(&format!("{}/client/version", self.url))
            .header("accept", "text/plain");
        let v = match self.send(req).await {
            Ok((200, body)) => String::from_utf8_lossy(&body).trim().to_owned(),
            Ok((status, _)) => {
                warn!(status, "the platform does not say its client version");
                return None;
            }
            Err(_) => return None,
        };
        if !is_version(&v) {
            warn!("the platform's client version is not major.minor.revision");
            return None;
        }
        self.remote.state().client_version = Some(v.clone());
        Some(v)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<(u16, Vec<u8>), Fail> {
        self.send_noting(req, false).await
    }

    /// Sends `req`; `versioned` when it carries the client version, so
    /// its warnings are noted.
    async fn send_noting(
        &self,
        req: reqwest::RequestBuilder,
        versioned: bool,
    ) -> Result<(u16, Vec<u8>), Fail> {
        let resp = req.send().await.map_err(|e| {
            // The URL names a credential: never in a message or log.
            let text = format!("cannot reach {}: {}", self.url, describe(&e));
            if e.is_connect() {
                Fail::Retry(text)
            } else {
                Fail::Lost(text)
            }
        })?;
        let status = resp.status().as_u16();
        // A 401 is the gateway's (the JWT), before the platform looked; a
        // 5xx may be a proxy's.
        if versioned && status != 401 && status < 500 {
            self.note_warnings(&resp);
        }
        let body = read_capped(resp, MAX_ANSWER)
            .await
            .map_err(|e| Fail::Lost(format!("{}: {e}", self.url)))?;
        Ok((status, body))
    }

    /// A JWT with time left, exchanging the access token when needed; one
    /// exchange at a time. `refused` is one the platform just refused.
    async fn jwt(&self, refused: Option<&SecretValue>) -> Result<SecretValue, Fail> {
        self.remote
            .jwt
            .get(self.url, self.token, refused, || self.exchange())
            .await
    }

    /// Exchanges the access token for a JWT.
    async fn exchange(&self) -> Result<Issued, Fail> {
        #[derive(Deserialize)]
        struct Exchanged {
            token: SecretValue,
            expires_at: i64,
        }
        // Learnt with each exchange, so a platform that moved on is
        // followed within one JWT's life.
        self.client_version().await;
        let body = serde_json::json!({ "token": self.token.expose_secret() }).to_string();
        let (status, bytes) = self
            .send(
                self.http
                    .post(&format!("{}/api/auth/jwt/access_token", self.url))
                    .header("content-type", "application/json")
                    .body(body),
            )
            .await?;
        if status >= 500 {
            return Err(Fail::Retry(format!(
                "{} answered {status}: {}",
                self.url,
                platform_message(status, &bytes)
            )));
        }
        if status != 200 {
            let message = platform_message(status, &bytes);
            let expired = message.to_ascii_lowercase().contains("expired");
            let what = if expired {
                "the platform says the access token has expired"
            } else {
                "the platform refused the access token"
            };
            return Err(Fail::Token(
                format!(
                    "{what} ({status}: {message}): create a new one and run 'vault remote add NAME --kind osmo URL --token-file FILE --replace'"
                ),
                expired,
            ));
        }
        let got: Exchanged = serde_json::from_slice(&bytes).map_err(|e| {
            Fail::Retry(format!(
                "{} answered the exchange with something this vault cannot read: {e}",
                self.url
            ))
        })?;
        {
            let mut st = self.remote.state();
            st.token_expired = false;
            st.checked = Some(Instant::now());
        }
        Ok(Issued {
            jwt: got.token,
            expires_at: got.expires_at,
        })
    }

    /// One API call with the JWT; a 401 renews it and tries once more.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&SecretValue>,
    ) -> Result<Vec<u8>, Fail> {
        let mut stale = None;
        for _ in 0..2 {
            let jwt = self.jwt(stale.as_ref()).await?;
            let mut req = self
                .http
                .request(method.clone(), &format!("{}{path}", self.url))
                .bearer_auth(jwt.expose_secret());
            // Known after the first exchange; asked for again after a
            // "New client" warning.
            let version = self.client_version().await;
            if let Some(v) = &version {
                req = req.header(VERSION_HEADER, v);
            }
            if let Some(b) = body {
                req = req
                    .header("content-type", "application/json")
                    .body(b.expose_secret().to_owned());
            }
            let (status, bytes) = self.send_noting(req, version.is_some()).await?;
            match status {
                200..=299 => return Ok(bytes),
                401 => stale = Some(jwt),
                // The platform checks the token's expiry on each call
                // that carries the client version: "Access token NAME
                // has expired." Not a refusal of the credential.
                400 if token_expired(&platform_message(status, &bytes)) => {
                    return Err(Fail::Token(
                        format!(
                            "the platform says the access token has expired ({}): create a new \
                             one and run 'vault remote add NAME --kind osmo URL --token-file \
                             FILE --replace'",
                            platform_message(status, &bytes)
                        ),
                        true,
                    ));
                }
                // A 5xx (from a proxy, say) may come after the platform
                // did it: the outcome is unknown.
                500.. => {
                    return Err(Fail::Lost(format!(
                        "{} answered {status}: {}",
                        self.url,
                        platform_message(status, &bytes)
                    )));
                }
                _ => return Err(Fail::Refused(status, platform_message(status, &bytes))),
            }
        }
        Err(Fail::Token(
            "the platform refuses the JWT it issued for the access token: run 'vault remote add \
             NAME --kind osmo URL --token-file FILE --replace' with a new token"
                .into(),
            false,
        ))
    }

    fn path(name: &str) -> String {
        // Names are checked against the platform's pattern: no escaping.
        format!("/api/credentials/{name}")
    }

    /// Deletes `name`; a 400 (it does not exist) is what was wanted.
    async fn delete(&self, name: &str) -> Result<(), Fail> {
        match self
            .call(reqwest::Method::DELETE, &Self::path(name), None)
            .await
        {
            Ok(_) | Err(Fail::Refused(400 | 404, _)) => Ok(()),
            // Any other refusal is the remote's error, retried with
            // backoff: an unpublish is never dropped.
            Err(Fail::Refused(status, m)) => Err(Fail::Retry(format!(
                "the platform refused to delete '{name}' ({status}): {m}"
            ))),
            Err(e) => Err(e),
        }
    }

    async fn list(&self) -> Result<Vec<RemoteCredential>, Fail> {
        #[derive(Deserialize)]
        struct Listed {
            credentials: Vec<Entry>,
        }
        #[derive(Deserialize)]
        struct Entry {
            cred_name: String,
            #[serde(default)]
            cred_type: String,
            #[serde(default)]
            profile: Option<String>,
        }
        let bytes = self
            .call(reqwest::Method::GET, "/api/credentials", None)
            .await?;
        let listed: Listed = serde_json::from_slice(&bytes).map_err(|e| {
            Fail::Retry(format!(
                "{} answered the credential list with something this vault cannot read: {e}",
                self.url
            ))
        })?;
        Ok(listed
            .credentials
            .into_iter()
            .map(|e| RemoteCredential {
                name: e.cred_name,
                cred_type: e.cred_type,
                profile: e.profile.unwrap_or_default(),
            })
            .collect())
    }
}

/// A stored remote with its access token, ready to talk to.
struct Stored {
    remote: Arc<Remote>,
    row: RemoteRow,
    kind: RemoteKind,
    token: SecretValue,
}

impl Stored {
    /// Remote `name` and its token, decrypted (needs the vault unlocked).
    fn load(d: &Shared, engine: &Engine, name: &str) -> Result<Self, WireError> {
        let (row, kind) = engine.remote(name)?;
        let token = engine.remote_token(&row)?;
        Ok(Self {
            remote: d.publisher.remote(name),
            row,
            kind,
            token,
        })
    }

    fn osmo<'a>(&'a self, http: &'a Http) -> Osmo<'a> {
        Osmo {
            http,
            remote: &self.remote,
            url: &self.row.url,
            token: &self.token,
        }
    }
}

/// Checks a platform URL: HTTPS, or plain HTTP on loopback; no trailing `/`.
fn check_url(url: &str) -> Result<String, WireError> {
    crate::remote::syncer::check_url(url).map_err(|_| {
        WireError::new(
            ErrorCode::Usage,
            format!(
                "the platform URL '{}' must be https://… (plain http:// only on 127.0.0.1 or \
                 localhost)",
                url.trim_end_matches('/')
            ),
        )
    })
}

fn fail_wire(remote: &str, f: Fail) -> WireError {
    let code = match f {
        Fail::Retry(_) | Fail::Lost(_) => ErrorCode::Unreachable,
        _ => ErrorCode::Failed,
    };
    WireError::new(code, format!("remote '{remote}': {}", f.text()))
}

/// `vault remote add`: checks the token with an exchange, then keeps it.
pub async fn add(
    d: &Arc<Shared>,
    name: &str,
    kind: RemoteKind,
    url: &str,
    token: SecretValue,
    replace: bool,
) -> Result<Response, WireError> {
    let url = check_url(url)?;
    if token.is_empty() {
        return Err(WireError::new(
            ErrorCode::Usage,
            "the access token is empty",
        ));
    }
    d.engine().check_new_remote(name, replace)?;
    let probe = Remote::default();
    let osmo = Osmo {
        http: &d.http,
        remote: &probe,
        url: &url,
        token: &token,
    };
    // An unreachable platform does not stop the setup (offline first): the
    // token is tried at the first push. A refused token does.
    let offline = match osmo.jwt(None).await {
        Ok(_) => None,
        Err(Fail::Retry(why)) => Some(why),
        Err(f) => return Err(fail_wire(name, f)),
    };
    // The exchange never warns of the token's expiry: only calls the
    // gateway has set the user's headers on do.
    if offline.is_none() {
        match osmo.list().await {
            Ok(_) => {}
            Err(f @ Fail::Token(..)) => return Err(fail_wire(name, f)),
            Err(f) => {
                warn!(remote = %name, error = %f.text(), "cannot list the platform's credentials")
            }
        }
    }
    // No pass to this remote meanwhile: one under way would record what
    // the old URL holds against the new one.
    let pass_lock = d.publisher.remote(name);
    let _one = pass_lock.pass.lock().await;
    let row = d
        .engine()
        .save_remote(name, kind, &url, &token, Timestamp::now())?;
    d.publisher.reset(name).await;
    // Keep what the check learnt: the JWT and any token warning.
    let remote = d.publisher.remote(name);
    remote.jwt.adopt(&probe.jwt).await;
    {
        let mut st = remote.state();
        let probed = probe.state();
        st.token_warning = probed.token_warning.clone();
        st.checked = probed.checked;
        st.client_version = probed.client_version.clone();
        st.last_error = offline;
    }
    d.publisher.kick();
    info!(remote = %name, "remote added");
    Ok(Response::Remotes {
        remotes: vec![d.publisher.info(&row.name, kind, &row.url, Vec::new())],
    })
}

/// `vault remote rm`.
pub async fn remove(d: &Arc<Shared>, name: &str, force: bool) -> Result<Response, WireError> {
    let (row, pubs) = {
        let mut engine = d.engine();
        let pubs = engine.publications(Some(name)).unwrap_or_default();
        (engine.remove_remote(name, force)?, pubs)
    };
    // A remote of a kind this build does not know is forgotten all the
    // same; there is no info to show for it.
    let info =
        RemoteKind::parse(&row.kind).map(|kind| d.publisher.info(&row.name, kind, &row.url, pubs));
    d.publisher.reset(name).await;
    Ok(Response::Remotes {
        remotes: info.into_iter().collect(),
    })
}

/// Sends what is due to `name`, in order. Fails (and backs off) at the
/// first retryable failure.
pub async fn pass(d: &Arc<Shared>, name: &str) -> Result<(), WireError> {
    let remote = d.publisher.remote(name);
    let _one = remote.pass.lock().await;
    let retry_max = d.engine().config().publish_retry;
    let planned = {
        let mut e = d.engine();
        Stored::load(d, &e, name).and_then(|stored| Ok((stored, e.plan(name)?)))
    };
    let (stored, jobs) = match planned {
        Ok(p) => p,
        Err(e) => {
            // Backs off too: a failure before any request must not make
            // the background loop spin.
            d.publisher
                .failed(name, &Fail::Retry(e.message.clone()), retry_max);
            return Err(e);
        }
    };
    let osmo = stored.osmo(&d.http);
    for job in &jobs {
        if let Err(f) = run(d, &osmo, name, job).await {
            d.publisher.failed(name, &f, retry_max);
            return Err(fail_wire(name, f));
        }
    }
    d.publisher.succeeded(name);
    Ok(())
}

/// A pass that runs to its end even when the caller stops waiting (a
/// request cut short must not leave a push half recorded).
fn spawn_pass(d: &Arc<Shared>, name: &str) -> tokio::task::JoinHandle<Result<(), WireError>> {
    let (d, name) = (Arc::clone(d), name.to_owned());
    tokio::spawn(async move { pass(&d, &name).await })
}

/// Whether a refusal says the name exists already.
fn duplicate(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("exist") || m.contains("duplicate")
}

/// Runs one job and records its outcome. A refusal (4xx) is recorded here
/// and is not a failure of the pass.
///
/// What the platform holds under the name is recorded at each step, so that
/// an unpublish never skips a DELETE for a copy that may be there, and never
/// deletes a name someone else holds.
async fn run(d: &Arc<Shared>, osmo: &Osmo<'_>, remote: &str, job: &Job) -> Result<(), Fail> {
    let key = &job.key;
    let name = key.remote_name.as_str();
    let presence = |p: Presence| record(d.engine().publish_presence(key, p));
    let (revision, body, delete_first, ours, before, profile) = match &job.op {
        JobOp::Delete => {
            osmo.delete(name).await?;
            record(d.engine().publish_deleted(key));
            info!(remote = %remote, "unpublished");
            return Ok(());
        }
        JobOp::Put {
            revision,
            body,
            delete_first,
            ours,
            present,
            profile,
        } => (
            *revision,
            body,
            *delete_first,
            *ours,
            *present,
            profile.as_deref(),
        ),
    };
    // The platform keeps one credential per registry scope or endpoint,
    // and a create for one that another name holds replaces that one (and
    // renames it). So look first, and never send a create that would
    // replace a credential this vault did not put there.
    if let Some(profile) = profile {
        let listed = osmo.list().await?;
        let other = listed
            .iter()
            .find(|c| c.profile == profile && (c.name != name || !ours));
        if let Some(other) = other {
            let text = held_on_platform(d, remote, job, other, profile);
            warn!(remote = %remote, "a publication would replace a credential on the platform");
            record(d.engine().publish_refused(key, before, revision, &text));
            return Ok(());
        }
    }
    // Deletes the platform's copy; the name is absent after it, unknown
    // when the answer was lost, and as it was when nothing was sent.
    let delete = |now: Presence| async move {
        match osmo.delete(name).await {
            Ok(()) => {
                presence(Presence::Absent);
                Ok(Presence::Absent)
            }
            Err(f @ Fail::Lost(_)) => {
                presence(Presence::Unknown);
                Err(f)
            }
            Err(f) => {
                presence(now);
                Err(f)
            }
        }
    };
    let mut now = before;
    if delete_first {
        now = delete(now).await?;
    }
    let path = Osmo::path(name);
    // Whatever happens to the create from here, the platform may hold it.
    presence(Presence::Unknown);
    let mut sent = osmo.call(reqwest::Method::POST, &path, Some(body)).await;
    if let Err(Fail::Refused(400, m)) = &sent
        && ours
        && !delete_first
        && duplicate(m)
    {
        // This vault's own copy, left by an answer lost before: replace it.
        now = delete(Presence::Present).await?;
        presence(Presence::Unknown);
        sent = osmo.call(reqwest::Method::POST, &path, Some(body)).await;
    }
    created(d, remote, job, revision, ours, now, sent)
}

/// Records how a create ended: published, refused (the platform holds
/// what it held before, `now`), or unknown (sent, the answer lost).
fn created(
    d: &Arc<Shared>,
    remote: &str,
    job: &Job,
    revision: u64,
    ours: bool,
    now: Presence,
    sent: Result<Vec<u8>, Fail>,
) -> Result<(), Fail> {
    let key = &job.key;
    match sent {
        Ok(_) => {
            let mut engine = d.engine();
            record(engine.publish_done(key, revision));
            // The value left this machine: a hand-out by the daemon itself
            // (the client that asked, if one did, has its own `publish`).
            if let Some(name) = engine.name_of(&key.record_id) {
                engine.audit(&[name], "publish_sent", &crate::peer::Peer::daemon());
            }
            drop(engine);
            info!(remote = %remote, revision, "published");
            Ok(())
        }
        Err(Fail::Refused(status, message)) => {
            // Refused: the platform holds what it held before the create.
            warn!(remote = %remote, status, "the platform refused a publication");
            let mut text = format!("the platform refused it ({status}): {message}");
            if status == 400 && !ours && duplicate(&message) {
                text.push_str(
                    "; the platform has a credential of that name this vault did not publish: \
                     delete it there, or publish under another name with --as",
                );
            }
            record(d.engine().publish_refused(key, now, revision, &text));
            Ok(())
        }
        // Sent, outcome unknown: stays unknown (recorded above).
        Err(f @ Fail::Lost(_)) => Err(f),
        // Not sent (no connection, or the token): as it was.
        Err(f) => {
            record(d.engine().publish_presence(key, now));
            Err(f)
        }
    }
}

/// Why a create was not sent: `other` holds its registry scope or
/// endpoint on the platform.
fn held_on_platform(
    d: &Arc<Shared>,
    remote: &str,
    job: &Job,
    other: &RemoteCredential,
    profile: &str,
) -> String {
    let what = if profile.contains("://") {
        "endpoint"
    } else {
        "registry"
    };
    let (local, holder) = {
        let e = d.engine();
        let holder = match e.publication_row(remote, &other.name) {
            Ok(Some(p)) if p.record_id != job.key.record_id => {
                Some(e.name_of(&p.record_id).unwrap_or_else(|| "?".into()))
            }
            _ => None,
        };
        let local = e
            .name_of(&job.key.record_id)
            .unwrap_or_else(|| job.key.remote_name.clone());
        (local, holder)
    };
    let whose = match holder {
        Some(from) => format!("published from {from} by this vault"),
        None => "not published by this vault".to_owned(),
    };
    format!(
        "not sent: the platform's credential '{}' ({}) holds {what} {profile} ({whose}), and the \
         platform would replace it with this one. Delete '{}' on the platform ('osmo \
         credential delete {}') and run 'vault publish --repair --to {remote}', or give {local} \
         another {what}, or 'vault unpublish {local} --from {remote}'",
        other.name, other.cred_type, other.name, other.name
    )
}

fn record(r: Result<(), WireError>) {
    if let Err(e) = r {
        warn!(error = %e.message, "cannot record a publication's state");
    }
}

/// `vault publish NAME --to REMOTE`: binds, then tries to push at once.
pub async fn publish(
    d: &Arc<Shared>,
    name: &str,
    remote: &str,
    remote_name: Option<&str>,
) -> Result<Response, WireError> {
    let row = d.engine().publish(name, remote, remote_name)?;
    // Only this pass's own error explains a "queued" answer.
    let failed = match tokio::time::timeout(INLINE, spawn_pass(d, remote)).await {
        Ok(Ok(Err(e))) => Some(e.message),
        _ => None,
    };
    // The inline pass may have sent it: describe the row as stored now.
    let mut publications = {
        let e = d.engine();
        let now = e.publication_row(&row.remote, &row.remote_name)?;
        e.describe(vec![now.unwrap_or(row)])?
    };
    if let (Some(p), Some(err)) = (publications.first_mut(), failed)
        && p.state != PublishState::Published
        && p.error.is_none()
    {
        p.error = Some(err);
    }
    Ok(Response::Publications { publications })
}

/// After a change of `name` (`vault rotate`): pushes it now to every
/// remote it is published to (each pass waits at most as long as `vault
/// publish` does), and returns its publications as they stand then. A
/// push that did not go through stays queued, as after any change.
pub async fn push_now(d: &Arc<Shared>, name: &str) -> Vec<PublicationInfo> {
    let mine = |d: &Arc<Shared>| -> Vec<PublicationInfo> {
        d.engine()
            .publications(None)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.name.as_deref() == Some(name))
            .collect()
    };
    let mut remotes: Vec<String> = mine(d).into_iter().map(|p| p.remote).collect();
    remotes.sort_unstable();
    remotes.dedup();
    for r in &remotes {
        let failed = match tokio::time::timeout(INLINE, spawn_pass(d, r)).await {
            Ok(Ok(Err(e))) => Some(e.message),
            _ => None,
        };
        if let Some(why) = failed {
            warn!(remote = %r, error = %why, "a push after a rotation did not go through");
        }
    }
    let mut now = mine(d);
    for p in &mut now {
        if p.state != PublishState::Published && p.error.is_none() {
            p.error = remote_error(d, &p.remote);
        }
    }
    now
}

fn remote_error(d: &Arc<Shared>, remote: &str) -> Option<String> {
    d.publisher.remote(remote).state().last_error.clone()
}

/// `vault unpublish NAME [--from REMOTE]`.
pub async fn unpublish(
    d: &Arc<Shared>,
    name: &str,
    remote: Option<&str>,
) -> Result<Response, WireError> {
    let rows = d.engine().unpublish(name, remote)?;
    let mut remotes: Vec<&str> = rows.iter().map(|r| r.remote.as_str()).collect();
    remotes.sort_unstable();
    remotes.dedup();
    for r in &remotes {
        let _ = tokio::time::timeout(INLINE, spawn_pass(d, r)).await;
    }
    let mut publications = Vec::new();
    for row in rows {
        let now = d.engine().publication_row(&row.remote, &row.remote_name)?;
        match now {
            Some(still) => {
                let mut info = d.engine().describe(vec![still])?;
                if let Some(p) = info.first_mut() {
                    p.error = remote_error(d, &p.remote);
                }
                publications.extend(info);
            }
            None => publications.push(PublicationInfo {
                remote: row.remote,
                remote_name: row.remote_name,
                name: Some(name.to_owned()),
                cred_type: row.cred_type,
                state: PublishState::Unpublishing,
                error: None,
                pushed_revision: None,
            }),
        }
    }
    Ok(Response::Publications { publications })
}

/// `vault remote status REMOTE` (and `publish --repair`): the platform's
/// list against the publications.
pub async fn status(d: &Arc<Shared>, name: &str, repair: bool) -> Result<Response, WireError> {
    let stored = Stored::load(d, &d.engine(), name)?;
    let row = &stored.row;
    let osmo = stored.osmo(&d.http);
    let mut listed = listed_by(d, &osmo, name).await?;
    let mut repaired = Vec::new();
    if repair {
        let expected = d.engine().publications(Some(name))?;
        repaired = expected
            .iter()
            .filter(|p| p.state != PublishState::Unpublishing)
            .filter(|p| !listed.iter().any(|c| c.name == p.remote_name))
            .map(|p| p.remote_name.clone())
            .collect();
        d.engine().publish_again(name, &repaired)?;
        pass(d, name).await?;
        listed = listed_by(d, &osmo, name).await?;
    }
    let publications = d.engine().publications(Some(name))?;
    let missing = publications
        .iter()
        .filter(|p| p.state != PublishState::Unpublishing)
        .filter(|p| !listed.iter().any(|c| c.name == p.remote_name))
        .map(|p| p.remote_name.clone())
        .collect();
    let unknown = listed
        .into_iter()
        .filter(|c| !publications.iter().any(|p| p.remote_name == c.name))
        .collect();
    let info = d
        .publisher
        .info(name, stored.kind, &row.url, publications.clone());
    Ok(Response::RemoteReport(RemoteReport {
        remote: info,
        publications,
        missing,
        unknown,
        repaired,
    }))
}

/// The platform's credentials; a refused token is kept for `status`.
async fn listed_by(
    d: &Arc<Shared>,
    osmo: &Osmo<'_>,
    name: &str,
) -> Result<Vec<RemoteCredential>, WireError> {
    osmo.list().await.map_err(|f| {
        if matches!(f, Fail::Token(..)) {
            let retry_max = d.engine().config().publish_retry;
            d.publisher.failed(name, &f, retry_max);
        }
        fail_wire(name, f)
    })
}

/// Publishes what is due whenever something changes, retries with
/// backoff, and checks each remote's access token every [`TOKEN_CHECK`] (so
/// its expiry shows in `status` even when nothing is published for a
/// while). Runs for the daemon's life.
pub async fn background(d: Arc<Shared>) {
    loop {
        let remotes: Option<Vec<String>> = {
            let e = d.engine();
            (!e.is_locked()).then(|| {
                e.remotes()
                    .map(|rs| rs.into_iter().map(|r| r.name).collect())
                    .unwrap_or_default()
            })
        };
        let wait = match remotes {
            // Nothing can be sent; the unlock kicks.
            None => PERIOD,
            // The earliest retry among the remotes that exist.
            Some(names) => {
                let now = Instant::now();
                names
                    .iter()
                    .filter_map(|n| d.publisher.remote(n).state().retry_at)
                    .map(|t| t.saturating_duration_since(now))
                    .min()
                    .unwrap_or(PERIOD)
                    .clamp(MIN_WAIT, PERIOD)
            }
        };
        tokio::select! {
            _ = d.publisher.kick.notified() => tokio::time::sleep(DEBOUNCE).await,
            _ = tokio::time::sleep(wait) => {}
        }
        let names: Vec<String> = {
            let e = d.engine();
            if e.is_locked() {
                continue;
            }
            e.remotes()
                .map(|rs| rs.into_iter().map(|r| r.name).collect())
                .unwrap_or_default()
        };
        for name in names {
            let (due, check) = {
                let remote = d.publisher.remote(&name);
                let st = remote.state();
                let now = Instant::now();
                (
                    st.retry_at.is_none_or(|t| t <= now),
                    st.checked
                        .is_none_or(|t| now.saturating_duration_since(t) >= TOKEN_CHECK),
                )
            };
            if !due {
                continue;
            }
            if check && let Err(e) = check_token(&d, &name).await {
                warn!(remote = %name, error = %e.message, "the access token check failed");
                continue;
            }
            if let Err(e) = pass(&d, &name).await {
                warn!(remote = %name, error = %e.message, "publishing failed; will retry");
            }
        }
    }
}

/// Exchanges the access token (learning of its expiry from the platform).
async fn check_token(d: &Arc<Shared>, name: &str) -> Result<(), WireError> {
    let (stored, retry_max) = {
        let e = d.engine();
        (Stored::load(d, &e, name)?, e.config().publish_retry)
    };
    let osmo = stored.osmo(&d.http);
    // The exchange proves the token works; a call with the user's headers
    // hears of its expiry.
    let checked = match osmo.jwt(None).await {
        Ok(_) => osmo.list().await.map(|_| ()),
        Err(f) => Err(f),
    };
    match checked {
        Ok(()) => Ok(()),
        Err(f) => {
            d.publisher.failed(name, &f, retry_max);
            Err(fail_wire(name, f))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_client_warning_is_never_a_token_warning() {
        // As OSMO 6.4 sends them (seen against the service).
        let nag = "WARNING: New client 6.4.0 available.\nCurrent version: 0.1.0.\nPlease update \
                   by running the install command in the documentation.";
        let expiry = "WARNING: Access token t3 is expiring on 2026-12-06 at 12AM UTC.";
        let w = Warnings::parse(nag);
        assert_eq!(
            w,
            Warnings {
                token: None,
                new_client: true,
                other: vec![]
            }
        );
        let w = Warnings::parse(&format!("{nag}\n{expiry}"));
        assert!(w.new_client);
        assert_eq!(
            w.token.as_deref(),
            Some("Access token t3 is expiring on 2026-12-06 at 12AM UTC.")
        );
        assert_eq!(Warnings::parse(""), Warnings::default());
        // Line breaks kept between warnings; other warnings apart.
        let two = Warnings::parse(&format!(
            "{expiry}\nWARNING: Access token t4 is expiring on 2026-12-07 at 12AM UTC.\nWARNING: \
             Maintenance tonight.\nBack at 6."
        ));
        assert_eq!(two.token.unwrap().lines().count(), 2);
        assert_eq!(
            two.other,
            vec!["Maintenance tonight.\nBack at 6.".to_owned()]
        );
    }

    #[test]
    fn versions_the_platform_takes() {
        for ok in ["6.4.0", "0.1.0", "10.20.30.abc1"] {
            assert!(is_version(ok), "{ok}");
        }
        for bad in [
            "vault/0.1.0",
            "6.4",
            "6.4.0.",
            "6.4.0.a.b",
            "",
            "6.x.0",
            "6.4.0-rc1",
        ] {
            assert!(!is_version(bad), "{bad}");
        }
        assert!(token_expired("Access token vault-test has expired."));
        assert!(token_expired("Access Token has expired"));
        assert!(!token_expired("Credential x already exists"));
    }
}
