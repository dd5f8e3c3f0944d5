//! `vault login URL --sso` (issue 27, docs/sync.md): signing in to a
//! `vault-server` through the identity provider it trusts, and keeping the
//! session alive for sync.
//!
//! The server names its IdP (`GET /api/v1/auth/oidc`); the login shows it
//! and pins it: the issuer, client id and token endpoint found at login are
//! the only IdP addresses this device ever talks to for that login, whatever
//! the server says later. The device authorization grant (RFC 8628) gives an
//! ID token and a refresh token; the ID token is exchanged at the server
//! (`POST /api/v1/auth/oidc`) for its JWT. The login kept in the vault (sealed
//! with the vault key, like an access token) is [`SsoLogin`]; each time the
//! JWT runs out, the refresh token gets a new ID token from the IdP (so the
//! IdP re-evaluates the user's groups, and a user disabled there stops
//! here), and a rotated refresh token replaces the old one at once. When the
//! IdP refuses the refresh token, sync says "sign in again" and changes stay
//! queued.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{info, warn};
use vault_protocol::server_api::{self, JwtResponse, OidcInfo};
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{ErrorCode, Response, SecretValue, WireError};

use super::Shared;
use super::http::{Issued, ReadError, describe, read_capped};
use super::syncer::{CallError, check_url};

/// Most bytes read from the IdP or the server's `/auth/oidc` answer.
const MAX_ANSWER: usize = 256 << 10;
/// Longest wait for the user's approval.
const MAX_WAIT: Duration = Duration::from_secs(15 * 60);
/// An ID token with less life than this is refreshed rather than sent.
const ID_TOKEN_MARGIN: i64 = 60;
/// How a stored login is told from an access token: its JSON starts so.
const MARKER: &str = "{\"sso_login\":";

/// A login through the identity provider, as kept (sealed) in the vault.
#[derive(Serialize, Deserialize)]
pub struct SsoLogin {
    /// Format version, first so that [`MARKER`] finds it.
    sso_login: u32,
    /// A random id of this login: the JWT cache and the live copy key on
    /// it, so a rotated refresh token is not a new login.
    session: String,
    /// The IdP (pinned at login).
    issuer: String,
    /// The OAuth client id (a public client).
    client_id: String,
    /// The IdP's token endpoint (pinned at login).
    token_endpoint: String,
    /// The refresh token.
    refresh_token: SecretValue,
    /// An ID token not yet exchanged (only right after the sign-in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id_token: Option<SecretValue>,
}

impl std::fmt::Debug for SsoLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SsoLogin")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl SsoLogin {
    /// The login a stored credential holds, if it is one (else it is an
    /// access token).
    pub fn parse(stored: &SecretValue) -> Option<Self> {
        let text = stored.expose_secret();
        if !text.starts_with(MARKER) {
            return None;
        }
        serde_json::from_str(text).ok()
    }

    /// True when `stored` is a login of this kind, readable or not (one
    /// this build cannot read is never sent anywhere as a token).
    pub fn is_one(stored: &SecretValue) -> bool {
        stored.expose_secret().starts_with(MARKER)
    }

    /// The session id, to tell two logins apart.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// A copy (the secrets copied too), for the live copy.
    fn duplicate(&self) -> Self {
        Self {
            sso_login: self.sso_login,
            session: self.session.clone(),
            issuer: self.issuer.clone(),
            client_id: self.client_id.clone(),
            token_endpoint: self.token_endpoint.clone(),
            refresh_token: self.refresh_token.duplicate(),
            id_token: self.id_token.as_ref().map(SecretValue::duplicate),
        }
    }

    fn to_secret(&self) -> SecretValue {
        SecretValue::new(serde_json::to_string(self).unwrap_or_default())
    }

    /// What the JWT cache keys on: the same for the whole login.
    pub fn cache_key(&self) -> SecretValue {
        SecretValue::new(format!("sso-login {}", self.session))
    }
}

/// A sign-in waiting for the user's approval.
struct Pending {
    url: String,
    user_code: String,
    device_code: SecretValue,
    interval: u64,
    expires_at: Timestamp,
    idp: Idp,
}

/// The IdP as found at login.
#[derive(Clone)]
struct Idp {
    issuer: String,
    client_id: String,
    token_endpoint: String,
}

/// Sign-ins waiting, and the live copy of the login in use.
#[derive(Default)]
pub struct SsoState {
    pending: std::sync::Mutex<Option<Pending>>,
    /// The newest refresh token (kept here too, in case the vault cannot
    /// be written when it rotates). Never held across an await.
    live: std::sync::Mutex<Live>,
    /// One renewal at a time (held across the IdP call), so two never
    /// spend the same refresh token.
    renewing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Live {
    /// How many times [`SsoState::clear`] ran: a renewal that began before
    /// a clear keeps nothing of what it renewed.
    cleared: u64,
    login: Option<SsoLogin>,
}

impl std::fmt::Debug for SsoState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SsoState").finish_non_exhaustive()
    }
}

impl SsoState {
    /// Forgets sign-ins in progress and the live login (the vault locked).
    pub fn clear(&self) {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let mut live = self.live();
        live.cleared += 1;
        live.login = None;
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live copy for `stored`'s session (else a copy of `stored`), and
    /// the clear count to hand back to [`SsoState::keep`].
    fn checkout(&self, stored: &SsoLogin) -> (SsoLogin, u64) {
        let live = self.live();
        let login = match &live.login {
            Some(l) if l.session == stored.session => l.duplicate(),
            _ => stored.duplicate(),
        };
        (login, live.cleared)
    }

    /// Keeps `login` as the live copy, unless a clear ran since `checkout`
    /// (the vault locked: keep no refresh token in memory).
    fn keep(&self, login: SsoLogin, cleared: u64) {
        let mut live = self.live();
        if live.cleared == cleared {
            live.login = Some(login);
        }
    }
}

fn failed(msg: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::Failed, msg)
}

/// GET `url` as JSON, at most [`MAX_ANSWER`] bytes; `what` names it in errors.
async fn get_json(d: &Shared, url: &str, what: &str) -> Result<(u16, Value), WireError> {
    let resp = d
        .http
        .request(reqwest::Method::GET, url)
        .send()
        .await
        .map_err(|e| {
            WireError::new(
                ErrorCode::Unreachable,
                format!("cannot reach {what} at {url}: {}", describe(&e)),
            )
        })?;
    answer(resp, what).await
}

async fn answer(resp: reqwest::Response, what: &str) -> Result<(u16, Value), WireError> {
    let status = resp.status().as_u16();
    let body = read_capped(resp, MAX_ANSWER).await.map_err(|e| match e {
        ReadError::Broken(why) => WireError::new(ErrorCode::Unreachable, format!("{what}: {why}")),
        ReadError::TooLong(_) => failed(format!("{what} answered more than any honest answer")),
    })?;
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Ok((status, json))
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// An IdP address from a document: https, or plain http on loopback (tests).
fn check_endpoint(what: &str, url: &str) -> Result<(), WireError> {
    vault_protocol::credential::check_sts_endpoint(url).map_err(|_| {
        failed(format!(
            "the identity provider's {what} '{}' is not https://: refusing to sign in through it",
            url.escape_debug()
        ))
    })
}

/// `vault login URL --sso`, first half: which IdP the server trusts, its
/// endpoints, and a device authorization; the page and code go to the user.
pub async fn start(d: &Shared, url: &str) -> Result<Response, WireError> {
    let url = check_url(url)?;
    {
        let e = d.engine();
        if e.is_initialized() && e.is_locked() {
            return Err(WireError::new(
                ErrorCode::Locked,
                "vault is locked: run 'vault unlock', then sign in",
            ));
        }
    }
    let (status, info) = get_json(
        d,
        &format!("{url}{}/auth/oidc", server_api::API_PREFIX),
        "the server",
    )
    .await?;
    if status == 404 {
        return Err(WireError::new(
            ErrorCode::Usage,
            format!(
                "{url} does not offer sign-in through an identity provider: log in with an \
                 access token ('vault login {url} --token-file FILE')"
            ),
        ));
    }
    let info: OidcInfo = serde_json::from_value(info)
        .ok()
        .filter(|_| status == 200)
        .ok_or_else(|| failed(format!("{url} answered {status} to GET /api/v1/auth/oidc")))?;
    check_endpoint("issuer", &info.issuer)?;
    let discovery = format!(
        "{}/.well-known/openid-configuration",
        info.issuer.trim_end_matches('/')
    );
    let (status, doc) = get_json(d, &discovery, "the identity provider").await?;
    if status != 200 || text(&doc, "issuer") != Some(info.issuer.as_str()) {
        return Err(failed(format!(
            "{discovery} answered {status} and does not name the issuer {} that {url} trusts: \
             ask the server's admin to check --oidc-issuer",
            info.issuer
        )));
    }
    let device_endpoint = text(&doc, "device_authorization_endpoint").ok_or_else(|| {
        failed(format!(
            "the identity provider {} does not offer the device authorization grant \
             (no device_authorization_endpoint): ask its admin to enable it for client {}",
            info.issuer, info.client_id
        ))
    })?;
    let token_endpoint = text(&doc, "token_endpoint")
        .ok_or_else(|| failed(format!("{discovery} names no token_endpoint")))?;
    check_endpoint("device authorization endpoint", device_endpoint)?;
    check_endpoint("token endpoint", token_endpoint)?;
    let scope = info.scopes.join(" ");
    let resp = d
        .http
        .post(device_endpoint)
        .form(&[("client_id", info.client_id.as_str()), ("scope", &scope)])
        .send()
        .await
        .map_err(|e| {
            WireError::new(
                ErrorCode::Unreachable,
                format!("cannot reach the identity provider: {}", describe(&e)),
            )
        })?;
    let (status, grant) = answer(resp, "the identity provider").await?;
    if status != 200 {
        return Err(failed(format!(
            "the identity provider refused to start a sign-in ({}): ask its admin whether \
             client {} may use the device flow",
            idp_error(status, &grant),
            info.client_id
        )));
    }
    let (Some(device_code), Some(user_code), Some(page)) = (
        text(&grant, "device_code"),
        text(&grant, "user_code"),
        // Google names it verification_url.
        text(&grant, "verification_uri").or_else(|| text(&grant, "verification_url")),
    ) else {
        return Err(failed(
            "the identity provider's device authorization answer lacks a code or a page",
        ));
    };
    check_endpoint("verification page", page)?;
    let complete = text(&grant, "verification_uri_complete")
        .filter(|p| check_endpoint("verification page", p).is_ok())
        .map(str::to_owned);
    let lifetime = grant
        .get("expires_in")
        .and_then(Value::as_u64)
        .unwrap_or(600)
        .clamp(30, MAX_WAIT.as_secs());
    let expires_at = Timestamp::now().plus(Duration::from_secs(lifetime));
    let answer = Response::SsoDevice {
        verification_uri: page.to_owned(),
        verification_uri_complete: complete,
        user_code: user_code.to_owned(),
        expires_at,
        issuer: Some(info.issuer.clone()),
    };
    *d.syncer
        .sso
        .pending
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(Pending {
        url,
        user_code: user_code.to_owned(),
        device_code: SecretValue::new(device_code.to_owned()),
        interval: grant
            .get("interval")
            .and_then(Value::as_u64)
            .unwrap_or(5)
            .clamp(1, 60),
        expires_at,
        idp: Idp {
            issuer: info.issuer,
            client_id: info.client_id,
            token_endpoint: token_endpoint.to_owned(),
        },
    });
    Ok(answer)
}

/// "error: description" of an OAuth error answer, bounded.
fn idp_error(status: u16, v: &Value) -> String {
    let code = text(v, "error").unwrap_or("");
    let what = text(v, "error_description").unwrap_or("");
    let s = match (code, what) {
        ("", "") => format!("HTTP {status}"),
        (c, "") => c.to_owned(),
        (c, w) => format!("{c}: {w}"),
    };
    s.chars()
        .take(200)
        .collect::<String>()
        .escape_debug()
        .to_string()
}

/// `vault login URL --sso`, second half: polls the token endpoint until the
/// user approves (or denies, or the code expires), then logs in with the
/// tokens as `vault login` does with an access token.
pub async fn wait(
    d: &std::sync::Arc<Shared>,
    url: &str,
    user_code: &str,
) -> Result<Response, WireError> {
    let url = check_url(url)?;
    let p = {
        let mut slot = d
            .syncer
            .sso
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match slot.take() {
            Some(p) if p.url == url && p.user_code == user_code => p,
            other => {
                *slot = other;
                return Err(WireError::new(
                    ErrorCode::Usage,
                    format!(
                        "no sign-in to {url} with that code is waiting (another 'vault login \
                         --sso' started since, or the vault locked): run 'vault login {url} --sso'"
                    ),
                ));
            }
        }
    };
    let left = (p.expires_at.unix() - Timestamp::now().unix()).max(0) as u64;
    let deadline = Instant::now() + MAX_WAIT.min(Duration::from_secs(left));
    let again = format!("run 'vault login {url} --sso' again");
    let mut interval = p.interval;
    let tokens = loop {
        tokio::time::sleep(Duration::from_secs(interval)).await;
        if Instant::now() >= deadline {
            return Err(failed(format!(
                "the sign-in code expired before it was approved: {again}"
            )));
        }
        let (status, v) = token_call(
            d,
            &p.idp,
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", p.device_code.expose_secret()),
            ],
        )
        .await
        .map_err(|e| e.wire(&p.idp.issuer))?;
        if status == 200 {
            break v;
        }
        match text(&v, "error") {
            Some("authorization_pending") => {}
            Some("slow_down") => interval = (interval + 5).min(60),
            Some("expired_token") => {
                return Err(failed(format!(
                    "the sign-in code expired before it was approved: {again}"
                )));
            }
            Some("access_denied") => {
                return Err(failed(format!("the sign-in was denied: {again}")));
            }
            _ => {
                return Err(failed(format!(
                    "the identity provider refused the sign-in ({}): {again}",
                    idp_error(status, &v)
                )));
            }
        }
    };
    let login = login_from(&p.idp, &tokens, None)?;
    info!(issuer = %p.idp.issuer, "signed in through the identity provider");
    super::syncer::login(d, &url, login.to_secret()).await
}

/// The login the token endpoint's answer makes (a refresh answer may leave
/// the refresh token out: then `previous` stays).
fn login_from(
    idp: &Idp,
    tokens: &Value,
    previous: Option<&SsoLogin>,
) -> Result<SsoLogin, WireError> {
    let id_token = text(tokens, "id_token").ok_or_else(|| {
        failed(
            "the identity provider answered without an ID token: ask the server's admin to \
             include the 'openid' scope",
        )
    })?;
    let refresh = match (text(tokens, "refresh_token"), previous) {
        (Some(r), _) => SecretValue::new(r.to_owned()),
        (None, Some(p)) => p.refresh_token.duplicate(),
        (None, None) => {
            return Err(failed(
                "the identity provider gave no refresh token, so sync would stop within the \
                 hour: ask the server's admin to include the 'offline_access' scope",
            ));
        }
    };
    let session = match previous {
        Some(p) => p.session.clone(),
        None => {
            let mut id = [0u8; 12];
            getrandom::fill(&mut id)
                .map_err(|e| WireError::new(ErrorCode::Internal, format!("no randomness: {e}")))?;
            hex::encode(id)
        }
    };
    Ok(SsoLogin {
        sso_login: 1,
        session,
        issuer: idp.issuer.clone(),
        client_id: idp.client_id.clone(),
        token_endpoint: idp.token_endpoint.clone(),
        refresh_token: refresh,
        id_token: Some(SecretValue::new(id_token.to_owned())),
    })
}

async fn token_call(
    d: &Shared,
    idp: &Idp,
    form: &[(&str, &str)],
) -> Result<(u16, Value), CallError> {
    let mut form = form.to_vec();
    form.push(("client_id", &idp.client_id));
    let resp = d
        .http
        .post(&idp.token_endpoint)
        .form(&form)
        .send()
        .await
        .map_err(|e| {
            CallError::Unreachable(format!(
                "the identity provider {}: {}",
                idp.issuer,
                describe(&e)
            ))
        })?;
    answer(resp, &format!("the identity provider {}", idp.issuer))
        .await
        .map_err(|e| CallError::Unreachable(e.message))
}

/// The live copy of the login `stored` names (its refresh token may have
/// rotated since `stored` was made), for keeping in the vault.
pub(super) async fn live_copy(d: &Shared, stored: &SecretValue) -> Option<SecretValue> {
    let session = SsoLogin::parse(stored)?.session;
    let live = d.syncer.sso.live();
    live.login
        .as_ref()
        .filter(|l| l.session == session)
        .map(SsoLogin::to_secret)
}

/// Seconds since the epoch at which `jwt` expires (unverified: only to
/// decide whether to refresh; the server checks it).
fn expiry(jwt: &str) -> Option<i64> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_i64()
}

/// A new ID token for `cred` from the IdP; `cred` takes the renewed login
/// (a rotated refresh token), which is also kept in the vault at once.
async fn renew(d: &Shared, url: &str, cred: &mut SsoLogin) -> Result<SecretValue, CallError> {
    let idp = Idp {
        issuer: cred.issuer.clone(),
        client_id: cred.client_id.clone(),
        token_endpoint: cred.token_endpoint.clone(),
    };
    let (status, v) = token_call(
        d,
        &idp,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", cred.refresh_token.expose_secret()),
        ],
    )
    .await?;
    let ended = matches!(
        text(&v, "error"),
        Some("invalid_grant" | "invalid_client" | "unauthorized_client")
    );
    if status != 200 && !ended {
        // A passing fault (5xx, 429, a proxy): like a server down.
        return Err(CallError::Unreachable(format!(
            "the identity provider {} answered {}",
            idp.issuer,
            idp_error(status, &v)
        )));
    }
    if status != 200 {
        warn!(issuer = %idp.issuer, error = %idp_error(status, &v), "the identity provider refused the refresh token");
        return Err(CallError::SignInAgain(format!(
            "the identity provider {} ended this device's session ({})",
            idp.issuer,
            idp_error(status, &v)
        )));
    }
    let mut renewed =
        login_from(&idp, &v, Some(cred)).map_err(|e| CallError::SignInAgain(e.message))?;
    let Some(id_token) = renewed.id_token.take() else {
        return Err(CallError::SignInAgain("no ID token".to_owned()));
    };
    *cred = renewed;
    if let Err(e) = super::syncer::keep_login(d, url, cred.to_secret()) {
        warn!(error = %e.message, "cannot keep the renewed sign-in in the vault; it lives in memory until the vault locks or the daemon stops");
    }
    Ok(id_token)
}

/// A JWT of the server for the login `stored` (the one this sync round
/// read from the vault): an ID token fresh from the sign-in, else a new one
/// from the IdP for the refresh token — kept in the vault at once, as the
/// IdP may have rotated it — exchanged at the server.
pub(super) async fn exchange(
    d: &Shared,
    url: &str,
    stored: &SsoLogin,
) -> Result<Issued, CallError> {
    let sso = &d.syncer.sso;
    let turn = sso.renewing.lock().await;
    let (mut cred, cleared) = sso.checkout(stored);
    let now = Timestamp::now().unix();
    let id_token = match cred.id_token.take() {
        Some(t) if expiry(t.expose_secret()).is_some_and(|e| e > now + ID_TOKEN_MARGIN) => Ok(t),
        _ => renew(d, url, &mut cred).await,
    };
    // Kept whatever the outcome (the ID token taken out either way); not
    // after a clear.
    sso.keep(cred, cleared);
    drop(turn);
    let id_token = id_token?;
    let answer: JwtResponse = super::syncer::call(
        &d.http,
        reqwest::Method::POST,
        &format!("{url}{}/auth/oidc", server_api::API_PREFIX),
        &id_token,
        None::<&()>,
    )
    .await
    .map_err(|e| match e {
        CallError::Api(401, e) => {
            CallError::SignInAgain(format!("{url} refused the sign-in: {}", e.message))
        }
        other => other,
    })?;
    Ok(Issued {
        jwt: answer.jwt,
        expires_at: answer.expires_at.unix(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn idp() -> Idp {
        Idp {
            issuer: "https://idp.example.test".into(),
            client_id: "vault-cli".into(),
            token_endpoint: "https://idp.example.test/token".into(),
        }
    }

    #[test]
    fn a_login_is_told_from_an_access_token_and_shows_no_secret() {
        let tokens = json!({"id_token": "h.p.s", "refresh_token": "rt-SECRET"});
        let login = login_from(&idp(), &tokens, None).unwrap();
        let stored = login.to_secret();
        assert!(stored.expose_secret().starts_with(MARKER));
        let back = SsoLogin::parse(&stored).unwrap();
        assert_eq!(back.refresh_token.expose_secret(), "rt-SECRET");
        assert_eq!(
            back.cache_key().expose_secret(),
            login.cache_key().expose_secret()
        );
        let shown = format!("{back:?}");
        assert!(
            !shown.contains("rt-SECRET") && !shown.contains("h.p.s"),
            "{shown}"
        );
        assert!(SsoLogin::parse(&SecretValue::from("vlt_abc")).is_none());
        assert!(SsoLogin::parse(&SecretValue::from("{\"sso_login\":1}")).is_none());
    }

    #[test]
    fn a_clear_during_a_renewal_leaves_no_login_in_memory() {
        let state = SsoState::default();
        let stored = login_from(
            &idp(),
            &json!({"id_token": "h.p.s", "refresh_token": "rt"}),
            None,
        )
        .unwrap();
        let (first, cleared) = state.checkout(&stored);
        state.keep(first, cleared);
        assert!(state.live().login.is_some());
        state.clear();
        assert!(state.live().login.is_none());
        // A renewal checked out its login, then the vault locked: what it
        // renewed is not kept, whether it succeeded or failed.
        let (renewing, cleared) = state.checkout(&stored);
        state.clear();
        state.keep(renewing, cleared);
        assert!(state.live().login.is_none());
        // No clear since: the renewed login is the live copy, and the next
        // checkout of that session gets it (the rotated refresh token).
        let (mut renewing, cleared) = state.checkout(&stored);
        renewing.refresh_token = SecretValue::from("rt-2");
        state.keep(renewing, cleared);
        let (next, _) = state.checkout(&stored);
        assert_eq!(next.refresh_token.expose_secret(), "rt-2");
    }

    #[test]
    fn a_refresh_keeps_the_session_and_the_old_refresh_token_unless_rotated() {
        let first = login_from(
            &idp(),
            &json!({"id_token": "a.b.c", "refresh_token": "r1"}),
            None,
        )
        .unwrap();
        let kept = login_from(&idp(), &json!({"id_token": "d.e.f"}), Some(&first)).unwrap();
        assert_eq!(kept.session, first.session);
        assert_eq!(kept.refresh_token.expose_secret(), "r1");
        let rotated = login_from(
            &idp(),
            &json!({"id_token": "g.h.i", "refresh_token": "r2"}),
            Some(&first),
        )
        .unwrap();
        assert_eq!(rotated.refresh_token.expose_secret(), "r2");
        // No ID token, or no refresh token at the first sign-in: said why.
        let e = login_from(&idp(), &json!({"refresh_token": "r"}), None).unwrap_err();
        assert!(e.message.contains("'openid'"), "{}", e.message);
        let e = login_from(&idp(), &json!({"id_token": "a.b.c"}), None).unwrap_err();
        assert!(e.message.contains("offline_access"), "{}", e.message);
    }

    #[test]
    fn what_the_idp_sends_is_bounded_and_checked() {
        // Endpoints: https, or http on loopback only.
        assert!(check_endpoint("token endpoint", "https://idp.example.test/t").is_ok());
        assert!(check_endpoint("token endpoint", "http://127.0.0.1:9/t").is_ok());
        for bad in [
            "http://idp.example.test/t",
            "file:///etc/passwd",
            "ftp://x",
            "",
        ] {
            assert!(check_endpoint("token endpoint", bad).is_err(), "{bad}");
        }
        // Error texts: escaped and cut short.
        let long = "x".repeat(1000);
        let said = idp_error(
            400,
            &json!({"error": "invalid_grant", "error_description": long}),
        );
        assert!(
            said.starts_with("invalid_grant: ") && said.len() < 260,
            "{said}"
        );
        let said = idp_error(400, &json!({"error": "bad\u{1b}[31m"}));
        assert!(!said.contains('\u{1b}'), "{said}");
        assert_eq!(idp_error(502, &Value::Null), "HTTP 502");
        // Expiry read only to decide on a refresh.
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"exp":123}"#);
        assert_eq!(expiry(&format!("h.{payload}.s")), Some(123));
        assert_eq!(expiry("garbage"), None);
        assert_eq!(expiry("a.!!!.c"), None);
    }
}
