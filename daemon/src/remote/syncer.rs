//! Sync with `vault-server` (docs/sync.md): login, joining a vault from a new
//! device, push and pull, and the background loop. The engine decides what
//! to push and how pulled entries apply ([`crate::engine::sync`]); this
//! module only talks HTTP and keeps the state `vault status` shows.
//!
//! One sync at a time. The access token lives encrypted in the vault; the
//! JWT it is exchanged for lives in memory only and is renewed a minute
//! before it expires, or at once when the server answers 401.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tracing::{info, warn};
use vault_protocol::message::{SyncProgress, SyncReport, SyncStatus};
use vault_protocol::server_api::{
    self, ErrorBody, HeadsResponse, JwtResponse, LogRecord, NewVault, PullRequest, PullResponse,
    PushRecord, PushRequest, PushResponse, VaultInfo,
};
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{ErrorCode, Response, SecretValue, WireError};

use super::Shared;
use super::http::{Http, Issued, JwtCache, ReadError, describe, read_capped};
use super::server_sso::SsoLogin;
use crate::engine::sync::{Joined, Pulled, Target};

/// The longest backoff after failures.
pub const PERIOD: Duration = Duration::from_secs(300);
/// Wait this long after a change before syncing (changes come in bursts).
const DEBOUNCE: Duration = Duration::from_millis(500);
/// First retry delay after a failure; doubles up to [`PERIOD`].
const BACKOFF: Duration = Duration::from_secs(2);
/// Push at most this many bytes of ciphertext per request (the server
/// takes 8 MiB of records, base64 makes them a third bigger).
const PUSH_BYTES: usize = 6 << 20;
/// Most bytes of one answer of the server: a pull page holds at most
/// `MAX_PULL_BYTES` (8 MiB) of ciphertext plus one record (1 MiB), base64
/// in JSON. A server that sends more is not believed, and not read on.
const MAX_ANSWER: usize = 32 << 20;

#[derive(Debug, Default)]
struct State {
    last_sync: Option<Timestamp>,
    last_error: Option<String>,
    failures: u32,
    retry_at: Option<Instant>,
    /// A login made before this device has a vault (for `Join`).
    pending: Option<(String, SecretValue)>,
    /// A pull under way.
    progress: Option<SyncProgress>,
    /// What the last sync found wrong with the server's answer (withheld
    /// or rolled-back logs, gaps); refused entries are kept in the vault.
    warnings: Vec<String>,
}

/// Sync state shared by requests and the background loop.
#[derive(Debug)]
pub struct Syncer {
    state: Mutex<State>,
    gate: tokio::sync::Mutex<()>,
    kick: Notify,
    /// The JWT for the server logged in to.
    jwt: JwtCache,
    /// Sign-ins through the server's identity provider (`vault login --sso`).
    pub(super) sso: super::server_sso::SsoState,
}

impl Default for Syncer {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            gate: tokio::sync::Mutex::new(()),
            kick: Notify::new(),
            jwt: JwtCache::default(),
            sso: super::server_sso::SsoState::default(),
        }
    }
}

impl Syncer {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets sign-ins through the identity provider in progress, and the
    /// live copy of the login (the vault locked).
    pub fn forget_sign_ins(&self) {
        self.sso.clear();
    }

    /// Something changed locally: sync soon.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// For `vault status`: `refused` are the pulled entries the vault keeps
    /// refusing ([`crate::engine::Engine::refusals`]).
    pub fn status(&self, server: Option<String>, queued: u64, refused: Vec<String>) -> SyncStatus {
        let st = self.state();
        let mut problems = refused;
        problems.extend(st.warnings.iter().cloned());
        SyncStatus {
            server,
            last_sync: st.last_sync,
            queued,
            last_error: st.last_error.clone(),
            progress: st.progress,
            problems,
        }
    }
}

/// A failed call, already phrased for the user.
#[derive(Debug)]
pub(super) enum CallError {
    /// No answer (network, timeout, TLS).
    Unreachable(String),
    /// An error answer.
    Api(u16, server_api::ApiError),
    /// The login through the identity provider ended (why).
    SignInAgain(String),
}

impl CallError {
    pub(super) fn wire(self, url: &str) -> WireError {
        match self {
            CallError::SignInAgain(why) => WireError::new(
                ErrorCode::Failed,
                format!(
                    "{why}: sign in again with 'vault login {url} --sso'; changes stay queued \
                     and sync once you have"
                ),
            ),
            CallError::Unreachable(why) => WireError::new(
                ErrorCode::Unreachable,
                format!("cannot reach {url}: {why}; changes stay queued and sync when it is back"),
            ),
            CallError::Api(401, _) => WireError::new(
                ErrorCode::Failed,
                format!(
                    "{url} refused the access token (expired or revoked?): run 'vault login {url} \
                     --token-file FILE' with a new one"
                ),
            ),
            CallError::Api(403, e) => WireError::new(
                ErrorCode::Failed,
                format!(
                    "{url} denied it: {} (ask its admin for that role)",
                    e.message
                ),
            ),
            CallError::Api(status, e) => WireError::new(
                ErrorCode::Failed,
                format!("{url} answered {status}: {}", e.message),
            ),
        }
    }
}

/// Checks a server URL: HTTPS, or plain HTTP on loopback; no trailing `/`.
pub fn check_url(url: &str) -> Result<String, WireError> {
    let url = url.trim_end_matches('/');
    vault_protocol::credential::check_sts_endpoint(url).map_err(|_| {
        WireError::new(
            ErrorCode::Usage,
            format!(
                "the server URL '{url}' must be https://… (plain http:// only on 127.0.0.1 or \
                 localhost)"
            ),
        )
    })?;
    Ok(url.to_owned())
}

pub(super) async fn call<T: DeserializeOwned>(
    http: &Http,
    method: reqwest::Method,
    url: &str,
    bearer: &SecretValue,
    body: Option<&impl Serialize>,
) -> Result<T, CallError> {
    let mut req = http
        .request(method, url)
        .bearer_auth(bearer.expose_secret());
    if let Some(body) = body {
        let json = serde_json::to_vec(body)
            .map_err(|e| CallError::Unreachable(format!("cannot encode the request: {e}")))?;
        req = req.header("content-type", "application/json").body(json);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| CallError::Unreachable(describe(&e)))?;
    let status = resp.status().as_u16();
    let bytes = read_capped(resp, MAX_ANSWER).await.map_err(|e| match e {
        ReadError::Broken(_) => CallError::Unreachable(e.to_string()),
        ReadError::TooLong(_) => CallError::Api(
            status,
            api_error(format!("{e}, more than any honest answer; not read")),
        ),
    })?;
    if (200..300).contains(&status) {
        return serde_json::from_slice(&bytes).map_err(|e| {
            CallError::Api(
                status,
                api_error(format!("an answer this vault cannot read: {e}")),
            )
        });
    }
    let error = serde_json::from_slice::<ErrorBody>(&bytes)
        .map(|b| b.error)
        .unwrap_or_else(|_| api_error(format!("HTTP {status}")));
    Err(CallError::Api(status, error))
}

fn api_error(message: String) -> server_api::ApiError {
    server_api::ApiError {
        code: server_api::ApiErrorCode::Unknown,
        message,
        action: None,
        resource: None,
        expected_index: None,
    }
}

/// An authenticated session with one server.
struct Session<'a> {
    d: &'a Shared,
    http: &'a Http,
    syncer: &'a Syncer,
    url: &'a str,
    token: &'a SecretValue,
    /// The login through the identity provider `token` holds, if it does.
    login: Option<SsoLogin>,
    /// What the JWT cache keys on: the access token, or the login's id
    /// (its refresh token rotates).
    key: SecretValue,
}

impl<'a> Session<'a> {
    fn new(d: &'a Shared, url: &'a str, token: &'a SecretValue) -> Self {
        let login = SsoLogin::parse(token);
        let key = match &login {
            Some(login) => login.cache_key(),
            None => token.duplicate(),
        };
        Self {
            d,
            http: &d.http,
            syncer: &d.syncer,
            url,
            token,
            login,
            key,
        }
    }

    fn api(&self, path: &str) -> String {
        format!("{}{}{path}", self.url, server_api::API_PREFIX)
    }

    /// Exchanges the access token (or the identity provider's ID token) for
    /// a JWT.
    async fn exchange(&self) -> Result<Issued, CallError> {
        if let Some(login) = &self.login {
            return super::server_sso::exchange(self.d, self.url, login).await;
        }
        if SsoLogin::is_one(self.token) {
            return Err(CallError::SignInAgain(
                "the sign-in kept in this vault cannot be read by this version of vault".to_owned(),
            ));
        }
        let answer: JwtResponse = call(
            self.http,
            reqwest::Method::POST,
            &self.api("/auth/token"),
            self.token,
            None::<&()>,
        )
        .await?;
        Ok(Issued {
            jwt: answer.jwt,
            expires_at: answer.expires_at.unix(),
        })
    }

    /// A new JWT: checks that the server takes the token now.
    async fn check_token(&self) -> Result<SecretValue, CallError> {
        let cache = &self.syncer.jwt;
        cache.fresh(self.url, &self.key, || self.exchange()).await
    }

    /// One API call with the JWT, renewed once on a 401.
    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, CallError> {
        let cache = &self.syncer.jwt;
        let mut refused = None;
        loop {
            let jwt = cache
                .get(self.url, &self.key, refused.as_ref(), || self.exchange())
                .await?;
            match call(self.http, method.clone(), &self.api(path), &jwt, body).await {
                Err(CallError::Api(401, _)) if refused.is_none() => refused = Some(jwt),
                other => return other,
            }
        }
    }

    /// Every device's last index in the vault's logs.
    async fn heads(&self, vault_id: &str) -> Result<BTreeMap<String, u64>, WireError> {
        let answer: HeadsResponse = self
            .call(
                reqwest::Method::GET,
                &format!("/vaults/{vault_id}/heads"),
                None::<&()>,
            )
            .await
            .map_err(|e| e.wire(self.url))?;
        Ok(answer.heads)
    }

    /// The vault on the server; created from this device when missing.
    /// Refuses a vault whose key is not this one's.
    async fn ensure_vault(&self, t: &Target) -> Result<(), WireError> {
        let path = format!("/vaults/{}", t.vault_id);
        let info: VaultInfo = match self.call(reqwest::Method::GET, &path, None::<&()>).await {
            Ok(info) => info,
            Err(CallError::Api(404, _)) => {
                let identity = crate::fsutil::read_private(&t.identity).map_err(|e| {
                    WireError::new(
                        ErrorCode::Failed,
                        format!("cannot read {}: {e}", t.identity.display()),
                    )
                })?;
                let new = NewVault {
                    id: t.vault_id.clone(),
                    key_id: t.key_id.clone(),
                    identity: base64::engine::general_purpose::STANDARD.encode(identity),
                };
                let created: Result<VaultInfo, _> = self
                    .call(reqwest::Method::POST, "/vaults", Some(&new))
                    .await;
                match created {
                    Ok(info) => {
                        info!(vault_id = %t.vault_id, "vault created on the server");
                        info
                    }
                    Err(CallError::Api(409, _)) => self
                        .call(reqwest::Method::GET, &path, None::<&()>)
                        .await
                        .map_err(|e| e.wire(self.url))?,
                    Err(e) => return Err(e.wire(self.url)),
                }
            }
            Err(e) => return Err(e.wire(self.url)),
        };
        if info.key_id != t.key_id {
            return Err(key_mismatch(self.url, &t.vault_id));
        }
        Ok(())
    }
}

/// Whether the server's entries `after + 1 ..= upto` of this device's log
/// (the first page of them) are the very entries this device has there.
async fn holds_ours(
    session: &Session<'_>,
    d: &Arc<Shared>,
    t: &Target,
    after: u64,
    upto: u64,
) -> Result<bool, WireError> {
    let mut since = session.heads(&t.vault_id).await?;
    since.insert(t.device.clone(), after);
    let n = (upto - after).min(u64::from(server_api::MAX_PULL_LIMIT));
    let req = PullRequest {
        since,
        limit: Some(n as u32),
    };
    let page: PullResponse = session
        .call(
            reqwest::Method::POST,
            &format!("/vaults/{}/pull", t.vault_id),
            Some(&req),
        )
        .await
        .map_err(|e| e.wire(&t.url))?;
    let theirs: Vec<Pulled> = page
        .records
        .into_iter()
        .filter(|r| r.device_id == t.device)
        .map(to_pulled)
        .collect();
    let ours = blocking(d, move |e| e.log_after(after, n as usize)).await?;
    Ok(!theirs.is_empty()
        && theirs.len() == ours.len()
        && theirs
            .iter()
            .zip(&ours)
            .all(|(a, b)| a.index == b.index && a.data == b.body))
}

fn log_ahead(url: &str, server_head: u64, local: u64) -> WireError {
    WireError::new(
        ErrorCode::Conflict,
        format!(
            "{url} holds {server_head} entries of this device's log and vault.db has {local} \
             that differ from them: vault.db was restored from a backup or copied from another \
             machine. Nothing was pushed. Move this VAULT_HOME aside and join the vault afresh ('vault login', then \
             'vault init --join'); the changes in the moved vault stay readable there"
        ),
    )
}

fn overclaim(url: &str, after: u64, n: u64, head: u64) -> WireError {
    WireError::new(
        ErrorCode::Failed,
        format!(
            "{url} answered a push of entries {}..={} with head {head}, entries this device \
             never sent: the server, or something between it and this machine, is faulty. \
             Nothing of this batch was marked as stored and its changes stay queued; check \
             the server ('vault sync verify') and try again",
            after + 1,
            after + n
        ),
    )
}

fn not_logged_in() -> WireError {
    WireError::new(
        ErrorCode::Usage,
        "this vault is not synced: run 'vault login URL --token-file FILE' first",
    )
}

fn key_mismatch(url: &str, vault_id: &str) -> WireError {
    WireError::new(
        ErrorCode::Conflict,
        format!(
            "vault {vault_id} on {url} is encrypted to another key than this vault's: nothing \
             was uploaded. This vault is not that one; join it on a fresh VAULT_HOME with \
             'vault init --join {vault_id}'"
        ),
    )
}

/// `vault login URL`: checks the token, then keeps it (in the vault, or in
/// memory until `Join` on a device without a vault).
pub async fn login(d: &Arc<Shared>, url: &str, token: SecretValue) -> Result<Response, WireError> {
    let url = check_url(url)?;
    if token.is_empty() {
        return Err(WireError::new(
            ErrorCode::Usage,
            "the access token is empty",
        ));
    }
    let (initialized, locked) = {
        let e = d.engine();
        (e.is_initialized(), e.is_locked())
    };
    if initialized && locked {
        return Err(WireError::new(
            ErrorCode::Locked,
            "vault is locked: run 'vault unlock'",
        ));
    }
    let session = Session::new(d, &url, &token);
    session.check_token().await.map_err(|e| e.wire(&url))?;
    // A sign-in through the IdP may have renewed (and rotated) already.
    let kept = match super::server_sso::live_copy(d, &token).await {
        Some(live) => live,
        None => token.duplicate(),
    };
    if !initialized {
        d.syncer.state().pending = Some((url.clone(), kept));
        info!("logged in; waiting for 'vault init --join'");
        return Ok(Response::LoggedIn {
            server: url,
            vault_id: None,
        });
    }
    let target = {
        let mut e = d.engine();
        e.save_login(&url, &kept)?;
        e.sync_target()?
    };
    let Some(target) = target else {
        return Err(WireError::new(
            ErrorCode::Internal,
            "the login was not kept",
        ));
    };
    if let Err(e) = session.ensure_vault(&target).await {
        // Keep nothing that points at the wrong vault.
        let _ = d.engine().forget_login();
        return Err(e);
    }
    info!("logged in");
    d.syncer.kick();
    Ok(Response::LoggedIn {
        server: url,
        vault_id: Some(target.vault_id),
    })
}

/// Keeps a renewed login (a rotated refresh token): in the vault, or with
/// the login waiting for `vault init --join`.
pub(super) fn keep_login(d: &Shared, url: &str, token: SecretValue) -> Result<(), WireError> {
    let session = SsoLogin::parse(&token).map(|l| l.session().to_owned());
    let same =
        |stored: &SecretValue| SsoLogin::parse(stored).map(|l| l.session().to_owned()) == session;
    let mut e = d.engine();
    if e.is_initialized() {
        // Only over the same login: a renewal that ends after the user
        // logged in again (elsewhere, or afresh) must not undo that.
        return match e.sync_target()? {
            Some(t) if t.url == url && same(&t.token) => e.save_login(url, &token),
            _ => Ok(()),
        };
    }
    drop(e);
    if let Some((u, t)) = d.syncer.state().pending.as_mut()
        && u == url
        && same(t)
    {
        *t = token;
    }
    Ok(())
}

/// `vault init --join VAULT_ID`.
pub async fn join(
    d: &Arc<Shared>,
    vault_id: &str,
    passphrase: SecretValue,
) -> Result<Response, WireError> {
    server_api::validate_id("vault id", vault_id)
        .map_err(|e| WireError::new(ErrorCode::Usage, e))?;
    let Some((url, token)) = d
        .syncer
        .state()
        .pending
        .as_ref()
        .map(|(u, t)| (u.clone(), SecretValue::from(t.expose_secret())))
    else {
        return Err(WireError::new(
            ErrorCode::Usage,
            "log in first: 'vault login URL --token-file FILE', then 'vault init --join VAULT_ID'",
        ));
    };
    if d.engine().is_initialized() {
        return Err(WireError::new(
            ErrorCode::AlreadyExists,
            "this device already has a vault: join from a new VAULT_HOME",
        ));
    }
    let session = Session::new(d, &url, &token);
    let info: VaultInfo = session
        .call(
            reqwest::Method::GET,
            &format!("/vaults/{vault_id}"),
            None::<&()>,
        )
        .await
        .map_err(|e| match e {
            CallError::Api(404, _) => WireError::new(
                ErrorCode::NotFound,
                format!(
                    "{url} has no vault {vault_id}: check the id ('vault status' on a device \
                     that has the vault shows it)"
                ),
            ),
            e => e.wire(&url),
        })?;
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(&info.identity)
        .map_err(|_| WireError::new(ErrorCode::Failed, "the server sent an unreadable identity"))?;
    let key = {
        let sealed = sealed.clone();
        tokio::task::spawn_blocking(move || {
            crate::crypto::VaultKey::open(&sealed, passphrase.expose_secret())
        })
        .await
        .map_err(|_| WireError::new(ErrorCode::Internal, "join failed; see vaultd.log"))?
        .map_err(|e| match e {
            crate::crypto::KeyError::BadPassphrase => WireError::new(
                ErrorCode::BadPassphrase,
                "wrong passphrase for that vault: nothing was written; try again",
            ),
            crate::crypto::KeyError::Damaged(why) => WireError::new(
                ErrorCode::Failed,
                format!("the vault's identity on the server is damaged: {why}"),
            ),
        })?
    };
    if key.key_id() != info.key_id {
        return Err(key_mismatch(&url, vault_id));
    }
    let recipient = d.engine().join(
        Joined {
            key,
            sealed,
            vault_id: vault_id.to_owned(),
            url,
            token,
        },
        Timestamp::now(),
    )?;
    d.syncer.state().pending = None;
    info!(vault_id, "joined");
    if let Err(e) = sync_now(d).await {
        warn!(error = %e.message, "first sync after join failed");
    }
    Ok(Response::Initialized {
        vault_id: vault_id.to_owned(),
        recipient,
    })
}

/// Push, then pull, now. One at a time.
pub async fn sync_now(d: &Arc<Shared>) -> Result<SyncReport, WireError> {
    let _one = d.syncer.gate.lock().await;
    let target = blocking(d, |e| {
        e.enroll(Timestamp::now())?;
        e.sync_target()
    })
    .await?;
    let target = target.ok_or_else(not_logged_in)?;
    let result = run(d, target).await;
    let mut st = d.syncer.state();
    st.progress = None;
    match &result {
        Ok(report) => {
            if report.pulled > 0 {
                // Pulled changes to published credentials go out too.
                d.publisher.kick();
            }
            st.last_sync = Some(Timestamp::now());
            st.last_error = report.refused.first().map(|r| {
                format!(
                    "{} problem(s) with what the server sent ('vault sync status' lists them): {r}",
                    report.refused.len()
                )
            });
            st.failures = 0;
            st.retry_at = None;
        }
        Err(e) => {
            st.last_error = Some(e.message.clone());
            st.failures = st.failures.saturating_add(1);
            st.retry_at = Some(Instant::now() + backoff(st.failures));
        }
    }
    result
}

/// The delay before retry `failures`: doubling from [`BACKOFF`] up to
/// [`PERIOD`], less up to a quarter at random so devices spread out.
fn backoff(failures: u32) -> Duration {
    let full = doubling(BACKOFF, failures, PERIOD);
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let jitter = full.mul_f64(f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX) / 4.0);
    full - jitter
}

/// `first` doubled for each failure after the first, at most `max`.
pub(crate) fn doubling(first: Duration, failures: u32, max: Duration) -> Duration {
    first
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(max)
}

pub(crate) async fn blocking<T: Send + 'static>(
    d: &Arc<Shared>,
    f: impl FnOnce(&mut crate::engine::Engine) -> Result<T, WireError> + Send + 'static,
) -> Result<T, WireError> {
    let d = Arc::clone(d);
    tokio::task::spawn_blocking(move || f(&mut d.engine()))
        .await
        .map_err(|_| WireError::new(ErrorCode::Internal, "sync failed; see vaultd.log"))?
}

/// Pushes this device's log from `from`, where the server's copy is
/// believed to end. Returns how far the server holds it.
async fn push(
    d: &Arc<Shared>,
    session: &Session<'_>,
    t: &Target,
    from: u64,
    report: &mut SyncReport,
) -> Result<u64, WireError> {
    let mut pushed = from;
    let mut conflicts_seen = 0;
    loop {
        let after = pushed;
        let entries = blocking(d, move |e| {
            e.log_after(after, server_api::MAX_BATCH_RECORDS)
        })
        .await?;
        if entries.is_empty() {
            break;
        }
        let mut records = Vec::new();
        let mut bytes = 0;
        for entry in entries {
            bytes += entry.body.len();
            if bytes > PUSH_BYTES && !records.is_empty() {
                break;
            }
            records.push(PushRecord {
                index: entry.index,
                key_id: t.key_id.clone(),
                data: base64::engine::general_purpose::STANDARD.encode(&entry.body),
            });
        }
        let n = records.len() as u64;
        let req = PushRequest {
            device_id: t.device.clone(),
            records,
        };
        let path = format!("/vaults/{}/push", t.vault_id);
        match session
            .call::<PushResponse>(reqwest::Method::POST, &path, Some(&req))
            .await
        {
            // An answer past what was sent claims entries this device never
            // pushed (a push beyond the server's head is a 409, never a 200):
            // believing it would mark local changes stored that are not.
            Ok(resp) if resp.head > after + n => {
                return Err(overclaim(&t.url, after, n, resp.head));
            }
            Ok(resp) if resp.head > after => {
                report.pushed += resp.head - after;
                pushed = resp.head;
            }
            Ok(resp) => {
                return Err(WireError::new(
                    ErrorCode::Failed,
                    format!(
                        "{} accepted a push but its log did not grow (head {}): nothing is lost; \
                         try again later",
                        t.url, resp.head
                    ),
                ));
            }
            // The server's log ends elsewhere: an earlier push landed but
            // its answer was lost, or the server lost entries. Go on from
            // where it is.
            Err(CallError::Api(409, e)) if e.expected_index.is_some() && conflicts_seen < 3 => {
                conflicts_seen += 1;
                let server_head = e.expected_index.unwrap_or(1).saturating_sub(1);
                let local = blocking(d, |e| Ok(e.log_last())).await?;
                // Going on would skip local changes the server never got,
                // unless what it holds past `after` is ours, byte for byte.
                if server_head > local
                    || (server_head > after
                        && !holds_ours(session, d, t, after, server_head).await?)
                {
                    return Err(log_ahead(&t.url, server_head, local));
                }
                if server_head < after {
                    report.notes.push(lost_entries(&t.url, server_head, after));
                }
                pushed = server_head;
                info!(
                    head = pushed,
                    "the server's copy of this log ends elsewhere; resuming"
                );
            }
            Err(CallError::Api(422, _)) => return Err(key_mismatch(&t.url, &t.vault_id)),
            Err(e) => return Err(e.wire(&t.url)),
        }
        blocking(d, move |e| e.set_pushed(pushed)).await?;
    }

    Ok(pushed)
}

/// Pulls every other device's entries past what was applied, page by page.
/// Returns the server's heads and the logs that stopped at a gap or a held
/// entry.
async fn pull(
    d: &Arc<Shared>,
    session: &Session<'_>,
    t: &Target,
    pushed: u64,
    report: &mut SyncReport,
) -> Result<(BTreeMap<String, u64>, std::collections::BTreeSet<String>), WireError> {
    let mut since: BTreeMap<String, u64> = t.seen.clone();
    since.insert(t.device.clone(), pushed);
    let path = format!("/vaults/{}/pull", t.vault_id);
    // Logs that stopped at a gap or a held entry: the rest of this sync
    // asks for nothing more of them, so every other log goes on.
    let mut stopped: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let heads = loop {
        let req = PullRequest {
            since: since.clone(),
            limit: None,
        };
        let page: PullResponse = session
            .call(reqwest::Method::POST, &path, Some(&req))
            .await
            .map_err(|e| e.wire(&t.url))?;
        if d.syncer.state().progress.is_none() {
            let total = page
                .heads
                .iter()
                .filter(|(dev, _)| **dev != t.device)
                .map(|(dev, h)| h.saturating_sub(since.get(dev).copied().unwrap_or(0)))
                .sum();
            d.syncer.state().progress = Some(SyncProgress { done: 0, total });
        }
        let pulled: Vec<Pulled> = page.records.into_iter().map(to_pulled).collect();
        // On an error, sync_now clears the progress with the outcome.
        let applied = blocking(d, move |e| e.apply(pulled, Timestamp::now())).await?;
        report.pulled += applied.applied;
        if let Some(p) = &mut d.syncer.state().progress {
            p.done += applied.applied;
        }
        stopped.extend(applied.stopped);
        report.refused.extend(applied.refused);
        let before = std::mem::take(&mut since);
        since = blocking(d, |e| e.seen()).await?;
        since.insert(t.device.clone(), pushed);
        for device in &stopped {
            let head = page.heads.get(device).copied().unwrap_or(0);
            let mark = since.entry(device.clone()).or_default();
            *mark = (*mark).max(head);
        }
        if !page.more {
            break page.heads;
        }
        if since == before {
            return Err(WireError::new(
                ErrorCode::Failed,
                format!(
                    "{} keeps answering with entries that apply nothing; stopped (nothing is \
                     lost); 'vault sync verify' shows the logs",
                    t.url
                ),
            ));
        }
    };
    d.syncer.state().progress = None;
    Ok((heads, stopped))
}

/// Whatever the heads say exists must have arrived, and what this device
/// already knows the server's answer must not hide.
async fn check_pulled(
    d: &Arc<Shared>,
    t: &Target,
    heads: BTreeMap<String, u64>,
    stopped: std::collections::BTreeSet<String>,
    report: &mut SyncReport,
) -> Result<(), WireError> {
    let applied = blocking(d, |e| e.seen()).await?;
    for (device, head) in &heads {
        let have = applied.get(device).copied().unwrap_or(0);
        if *device != t.device && *head > have && !stopped.contains(device) {
            report.refused.push(format!(
                "the server lists entries {}..{head} of device {device} but did not send them; \
                 they are fetched again on the next sync",
                have + 1
            ));
        }
    }
    // What this device already knows the server's answer must not hide.
    let warnings = blocking(d, move |e| e.check_heads(&heads, &stopped)).await?;
    for w in &warnings {
        warn!(problem = %w, "the server's answer hides entries");
    }
    report.refused.extend(warnings.iter().cloned());
    d.syncer.state().warnings = warnings;
    Ok(())
}

/// Says, and logs, that the server lost entries `held+1..=pushed` of this
/// device's log, which are pushed again.
fn lost_entries(url: &str, held: u64, pushed: u64) -> String {
    let note = format!(
        "{url} had lost entries {}..{pushed} of this device's log (restored from a backup?); \
         they are pushed again",
        held + 1
    );
    warn!(held, pushed, "{note}");
    note
}

async fn run(d: &Arc<Shared>, t: Target) -> Result<SyncReport, WireError> {
    let session = Session::new(d, &t.url, &t.token);
    let started = Instant::now();
    session.ensure_vault(&t).await?;
    let checked = started.elapsed();
    let mut report = SyncReport::default();
    let pushed = push(d, &session, &t, t.pushed, &mut report).await?;
    let pushed_in = started.elapsed();
    let (heads, stopped) = pull(d, &session, &t, pushed, &mut report).await?;
    // The server may hold less of this device's log than it once took (a
    // restored backup): with nothing new to push, only its heads tell.
    // Push the lost entries again, now, from this device's own log.
    let held = heads.get(&t.device).copied().unwrap_or(0);
    if held < pushed {
        report.notes.push(lost_entries(&t.url, held, pushed));
        blocking(d, move |e| e.set_pushed(held)).await?;
        push(d, &session, &t, held, &mut report).await?;
    }
    check_pulled(d, &t, heads, stopped, &mut report).await?;
    if let Err(e) = share_audit(d, &session, &t, &mut report).await {
        warn!(error = %e.message, "the audit log was not synced");
        report
            .notes
            .push(format!("the audit log was not synced: {}", e.message));
    }
    let pulled_in = started.elapsed();
    report.conflicts = blocking(d, |e| e.conflict_count()).await?;
    if report.pushed + report.pulled > 0 {
        info!(
            pushed = report.pushed,
            pulled = report.pulled,
            conflicts = report.conflicts,
            check_ms = checked.as_secs_f64() * 1e3,
            push_ms = (pushed_in - checked).as_secs_f64() * 1e3,
            pull_ms = (pulled_in - pushed_in).as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "synced"
        );
    }
    Ok(report)
}

/// With `[audit] sync` on: pushes this device's new audit entries as
/// sealed segments, then pulls and keeps the other devices' (checked by
/// [`crate::engine::Engine::accept_audit_segments`]). Its failures never
/// fail the sync of records: the caller notes them.
async fn share_audit(
    d: &Arc<Shared>,
    session: &Session<'_>,
    t: &Target,
    report: &mut SyncReport,
) -> Result<(), WireError> {
    if !blocking(d, |e| Ok(e.audit_sync_on())).await? {
        return Ok(());
    }
    push_audit(d, session, t).await?;
    pull_audit(d, session, t, report).await
}

/// An older server has no audit routes (404).
fn no_audit_routes(url: &str) -> WireError {
    WireError::new(
        ErrorCode::Failed,
        format!(
            "{url} keeps no audit logs (a vault-server older than this vault); entries stay on \
             this device. Upgrade the server, or set [audit] sync = false"
        ),
    )
}

/// Pushes this device's segments not on the server yet.
async fn push_audit(d: &Arc<Shared>, session: &Session<'_>, t: &Target) -> Result<(), WireError> {
    let path = format!("/vaults/{}/audit/push", t.vault_id);
    let mut conflicts_seen = 0;
    loop {
        let out = blocking(d, |e| e.audit_outgoing()).await?;
        let (Some(first), Some(last)) = (out.first(), out.last()) else {
            return Ok(());
        };
        let (first, last_index, last_seq) = (first.index, last.index, last.last_seq);
        let req = PushRequest {
            device_id: t.device.clone(),
            records: out
                .iter()
                .map(|o| PushRecord {
                    index: o.index,
                    key_id: t.key_id.clone(),
                    data: base64::engine::general_purpose::STANDARD.encode(&o.data),
                })
                .collect(),
        };
        match session
            .call::<PushResponse>(reqwest::Method::POST, &path, Some(&req))
            .await
        {
            Ok(resp) if resp.head == last_index => {
                blocking(d, move |e| e.audit_pushed(last_index, last_seq)).await?;
            }
            Ok(resp) => {
                return Err(WireError::new(
                    ErrorCode::Failed,
                    format!(
                        "{} answered head {} to audit segments {first}..={last_index}; nothing \
                         is marked sent, they go again on the next sync",
                        t.url, resp.head
                    ),
                ));
            }
            // Its copy ends past this device's mark (a vault.db restored
            // from a backup): number the next segments after it. Never
            // below the mark: a number is sealed once, so a server cannot
            // make this device seal other entries under a number it holds.
            Err(CallError::Api(409, e)) if e.expected_index.is_some() && conflicts_seen < 3 => {
                conflicts_seen += 1;
                let head = e.expected_index.unwrap_or(1).saturating_sub(1);
                let mine = first - 1;
                if head < mine || head > i64::MAX as u64 {
                    return Err(WireError::new(
                        ErrorCode::Failed,
                        format!(
                            "{} holds this device's audit segments only through {head}, but took \
                             them through {mine} (restored from a backup, or gone bad): they are \
                             not numbered again; entries stay on this device",
                            t.url
                        ),
                    ));
                }
                blocking(d, move |e| e.audit_resume_at(head)).await?;
            }
            Err(CallError::Api(404, _)) => return Err(no_audit_routes(&t.url)),
            Err(e) => return Err(e.wire(&t.url)),
        }
    }
}

/// Most devices a problem line is written for in one sync.
const SHOWN_DEVICES: usize = 20;

/// Pulls the other devices' segments past the unbroken run kept of each.
/// Only devices the first page lists count, up to the head it lists, and
/// each page must move past what was seen: a server cannot keep it going.
async fn pull_audit(
    d: &Arc<Shared>,
    session: &Session<'_>,
    t: &Target,
    report: &mut SyncReport,
) -> Result<(), WireError> {
    let path = format!("/vaults/{}/audit/pull", t.vault_id);
    let mut since = blocking(d, |e| e.audit_kept()).await?;
    let mine = blocking(d, |e| e.audit_segment_mark()).await?;
    since.insert(t.device.clone(), mine);
    let mut listed: Option<BTreeMap<String, u64>> = None;
    let mut first = true;
    loop {
        let req = PullRequest {
            since: since.clone(),
            limit: None,
        };
        let page: PullResponse = match session.call(reqwest::Method::POST, &path, Some(&req)).await
        {
            Ok(page) => page,
            Err(CallError::Api(404, _)) => return Err(no_audit_routes(&t.url)),
            Err(e) => return Err(e.wire(&t.url)),
        };
        let listed = listed.get_or_insert_with(|| {
            let valid: BTreeMap<String, u64> = page
                .heads
                .iter()
                .filter(|(dev, _)| server_api::validate_id("device id", dev).is_ok())
                .map(|(dev, h)| (dev.clone(), *h))
                .collect();
            if valid.len() < page.heads.len() {
                report.refused.push(format!(
                    "{} listed {} audit log(s) under invalid device ids; ignored",
                    t.url,
                    page.heads.len() - valid.len()
                ));
            }
            valid
        });
        if std::mem::take(&mut first) && !page.pruned.is_empty() {
            let (pruned, heads) = (page.pruned.clone(), listed.clone());
            let notes = blocking(d, move |e| e.audit_server_pruned(&pruned, &heads)).await?;
            report.notes.extend(notes.into_iter().take(SHOWN_DEVICES));
        }
        let mut moved = false;
        let mut pulled = Vec::new();
        for r in page.records {
            let cap = listed.get(&r.device_id).copied().unwrap_or(0);
            if r.device_id == t.device || r.index > cap {
                continue;
            }
            let mark = since.entry(r.device_id.clone()).or_default();
            if r.index > *mark {
                *mark = r.index;
                moved = true;
            }
            pulled.push(to_pulled(r));
        }
        let refused = blocking(d, move |e| e.accept_audit_segments(pulled)).await?;
        report.refused.extend(refused);
        if !page.more {
            break;
        }
        if !moved {
            return Err(WireError::new(
                ErrorCode::Failed,
                format!(
                    "{} keeps answering with audit segments already seen; stopped (nothing is \
                     lost)",
                    t.url
                ),
            ));
        }
    }
    let kept = blocking(d, |e| e.audit_kept()).await?;
    let behind: Vec<String> = listed
        .unwrap_or_default()
        .into_iter()
        .filter(|(device, head)| {
            *device != t.device && *head > kept.get(device).copied().unwrap_or(0)
        })
        .map(|(device, head)| {
            let have = kept.get(&device).copied().unwrap_or(0);
            format!(
                "the server lists audit segments {}..={head} of device {device} but they were \
                 not all kept here (withheld, or refused above); asked again on the next sync",
                have + 1
            )
        })
        .collect();
    let more = behind.len().saturating_sub(SHOWN_DEVICES);
    report
        .refused
        .extend(behind.into_iter().take(SHOWN_DEVICES));
    if more > 0 {
        report
            .refused
            .push(format!("… and the audit segments of {more} more device(s)"));
    }
    Ok(())
}

fn to_pulled(r: LogRecord) -> Pulled {
    Pulled {
        data: base64::engine::general_purpose::STANDARD
            .decode(&r.data)
            .unwrap_or_default(),
        device: r.device_id,
        index: r.index,
        key_id: r.key_id,
    }
}

/// `vault sync verify [--repair]`: compares every log with the server's
/// heads; with `repair`, lowers the marks and syncs, then compares again.
pub async fn verify(d: &Arc<Shared>, repair: bool) -> Result<Response, WireError> {
    let target = blocking(d, |e| e.sync_target())
        .await?
        .ok_or_else(not_logged_in)?;
    let session = Session::new(d, &target.url, &target.token);
    session.ensure_vault(&target).await?;
    let heads = session.heads(&target.vault_id).await?;
    let logs = blocking(d, move |e| e.verify_logs(&heads)).await?;
    // Refused entries are fetched again by a repair too (the server may
    // now send the real ones).
    let refused = blocking(d, |e| Ok(!e.refusals().is_empty())).await?;
    let holes = refused
        || logs
            .iter()
            .any(|l| !l.missing_here.is_empty() || !l.missing_there.is_empty());
    if !(repair && holes) {
        return Ok(Response::Verified {
            logs,
            repaired: false,
        });
    }
    warn!("repairing sync logs");
    blocking(d, move |e| e.prepare_repair(&logs)).await?;
    sync_now(d).await?;
    let heads = session.heads(&target.vault_id).await?;
    let logs = blocking(d, move |e| e.verify_logs(&heads)).await?;
    Ok(Response::Verified {
        logs,
        repaired: true,
    })
}

/// `vault sync unshare-audit`: removes this device's shared audit segments
/// from the server. Refused while `[audit] sync` is on (the next sync would
/// share new entries again). The server keeps the device's numbering, so
/// a segment number is never sealed twice; the other devices keep the
/// copies they fetched until their `[audit] keep` drops them.
pub async fn unshare_audit(d: &Arc<Shared>) -> Result<Response, WireError> {
    if blocking(d, |e| Ok(e.audit_sync_on())).await? {
        return Err(WireError::new(
            ErrorCode::Usage,
            "[audit] sync is on in config.toml: set it to false and restart vaultd first, or \
             the next sync shares this device's new entries again",
        ));
    }
    let target = blocking(d, |e| e.sync_target())
        .await?
        .ok_or_else(not_logged_in)?;
    let _one = d.syncer.gate.lock().await;
    let session = Session::new(d, &target.url, &target.token);
    session.ensure_vault(&target).await?;
    let path = format!(
        "/vaults/{}/audit/devices/{}",
        target.vault_id, target.device
    );
    let removed: server_api::AuditRemoved = match session
        .call(reqwest::Method::DELETE, &path, None::<&()>)
        .await
    {
        Ok(r) => r,
        Err(CallError::Api(404 | 405, _)) => {
            return Err(WireError::new(
                ErrorCode::Failed,
                format!(
                    "{} cannot remove audit logs (a vault-server older than this vault): \
                     upgrade it and run this again; nothing was removed",
                    target.url
                ),
            ));
        }
        Err(e) => return Err(e.wire(&target.url)),
    };
    if removed.device_id != target.device
        || removed.pruned >= i64::MAX as u64
        || removed.removed > removed.pruned
    {
        return Err(WireError::new(
            ErrorCode::Failed,
            format!(
                "{} answered what cannot be (another device, or {} removed through {}); \
                 nothing is known removed, this device's numbering is unchanged",
                target.url, removed.removed, removed.pruned
            ),
        ));
    }
    let through = removed.pruned;
    blocking(d, move |e| e.audit_unshared(through)).await?;
    Ok(Response::AuditUnshared {
        server: target.url,
        removed: removed.removed,
        through,
    })
}

/// Syncs after local changes (debounced), every `sync.interval`, and after
/// a failure with backoff; only while logged in and unlocked, and not at all
/// with `sync.auto = false`.
pub async fn background(d: Arc<Shared>) {
    let (interval, auto) = {
        let e = d.engine();
        (e.config().sync_interval, e.config().sync_auto)
    };
    if !auto {
        info!("background sync is off (sync.auto = false)");
        return;
    }
    loop {
        let now = Instant::now();
        let wait = match d.syncer.state().retry_at {
            Some(t) if t > now => t - now,
            _ => interval,
        };
        tokio::select! {
            _ = d.syncer.kick.notified() => {
                tokio::time::sleep(DEBOUNCE).await;
                // A kick while backing off waits for the retry time.
                let retry_at = d.syncer.state().retry_at;
                if let Some(t) = retry_at {
                    tokio::time::sleep_until(t.into()).await;
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
        let ready = {
            let e = d.engine();
            !e.is_locked() && e.sync_server().is_some()
        };
        if !ready {
            // Nothing to retry until unlocked (or logged in) again; the
            // unlock kicks a sync.
            d.syncer.state().retry_at = None;
        } else if let Err(e) = sync_now(&d).await {
            warn!(error = %e.message, "background sync failed");
        }
    }
}
