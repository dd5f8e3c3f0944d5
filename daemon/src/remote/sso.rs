//! AWS IAM Identity Center (SSO), docs/sso.md: signing in with a device
//! code (SSO OIDC `RegisterClient`, `StartDeviceAuthorization`, then
//! `CreateToken` polled until the user approves in a browser), keeping the
//! session in the record, renewing its access token with the refresh
//! token, and minting the record's role credentials (`GetRoleCredentials`)
//! through the refresh path, as any minted `aws` credential.
//!
//! The endpoints come from the record's `sso_region` (a region name, so
//! always AWS's hosts) or this machine's `config.toml`; the tokens go
//! nowhere else. Every answer is bounded and checked before it is kept.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{CredentialType, ErrorCode, Response, SecretValue, WireError};

use super::Shared;
use super::http::{Http, describe, read_capped};
use super::syncer::blocking;
use crate::engine::refresh::{Minted, SsoPlan, Unminted};

/// Each call's limit.
const CALL: Duration = Duration::from_secs(15);
/// The longest answer read.
const MAX_ANSWER: usize = 64 * 1024;
/// The client's name, as the portal's list of sessions shows it.
const CLIENT_NAME: &str = "vault";
/// The scope that gets a refresh token (as `aws sso login` asks for an
/// `sso-session`).
const SCOPE: &str = "sso:account:access";
/// An access token with less than this left is renewed first.
const TOKEN_MARGIN: Duration = Duration::from_secs(5 * 60);
/// A registered client is used while it has at least this long left.
const CLIENT_MARGIN: Duration = Duration::from_secs(24 * 3600);
/// The longest a sign-in is waited for, whatever the code's life.
const MAX_WAIT: Duration = Duration::from_secs(15 * 60);
/// The grant of a device code (RFC 8628).
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

fn failed(msg: String) -> WireError {
    WireError::new(ErrorCode::Failed, msg)
}

/// What to run when the session is gone.
fn sign_in_again(name: &str) -> String {
    format!(
        "the SSO session of '{name}' has expired: run 'vault sso login {name}' to sign in again"
    )
}

/// An answer of IAM Identity Center.
enum Answer {
    Ok(Map<String, Value>),
    /// Refused: the HTTP status and the error's name (`authorization_pending`,
    /// `UnauthorizedException`), printable and short.
    Refused(u16, String),
}

/// Sends `req` and reads its answer, bounded.
async fn call(req: reqwest::RequestBuilder, what: &str, endpoint: &str) -> Result<Answer, String> {
    let response = req.timeout(CALL).send().await.map_err(|e| {
        format!(
            "cannot reach IAM Identity Center at {endpoint} ({what}): {}; try again when it \
             answers",
            describe(&e)
        )
    })?;
    let status = response.status();
    let kind = response
        .headers()
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(':').next().unwrap_or_default().to_owned());
    let body = read_capped(response, MAX_ANSWER)
        .await
        .map_err(|e| format!("cannot read IAM Identity Center's answer to {what}: {e}"))?;
    let doc = serde_json::from_slice::<Map<String, Value>>(&body).ok();
    if status.is_success() {
        return doc
            .map(Answer::Ok)
            .ok_or_else(|| format!("IAM Identity Center's answer to {what} is not a JSON object"));
    }
    let named = doc
        .as_ref()
        .and_then(|d| d.get("error").or_else(|| d.get("__type")))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or(kind)
        .unwrap_or_default();
    let clean: String = named
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "_.-#".contains(*c))
        .take(64)
        .collect();
    Ok(Answer::Refused(status.as_u16(), clean))
}

/// A POST of `body` as JSON. The body holds a secret (the client secret, a
/// code or a token); reqwest keeps its own copy until the request is sent,
/// as for every secret the daemon sends.
fn post_json(http: &Http, url: &str, body: &Value) -> reqwest::RequestBuilder {
    let text = zeroize::Zeroizing::new(body.to_string());
    http.post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(text.as_bytes().to_vec())
}

/// A string field of an answer: printable, at most `max` bytes.
fn text(doc: &Map<String, Value>, key: &str, max: usize, what: &str) -> Result<String, String> {
    match doc.get(key).and_then(Value::as_str) {
        Some(v) if (1..=max).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(v.to_owned())
        }
        _ => Err(format!(
            "IAM Identity Center's answer to {what} has no usable {key}"
        )),
    }
}

/// A number field of an answer, within `range`.
fn number(
    doc: &Map<String, Value>,
    key: &str,
    range: std::ops::RangeInclusive<i64>,
    what: &str,
) -> Result<i64, String> {
    doc.get(key)
        .and_then(Value::as_i64)
        .filter(|n| range.contains(n))
        .ok_or_else(|| format!("IAM Identity Center's answer to {what} has no usable {key}"))
}

/// A registered OIDC client.
struct Client {
    id: String,
    secret: SecretValue,
    expires_at: Timestamp,
}

async fn register(http: &Http, oidc: &str) -> Result<Client, String> {
    let what = "RegisterClient";
    let body = json!({
        "clientName": CLIENT_NAME,
        "clientType": "public",
        "scopes": [SCOPE],
    });
    let req = post_json(http, &format!("{oidc}/client/register"), &body);
    match call(req, what, oidc).await? {
        Answer::Ok(doc) => Ok(Client {
            id: text(&doc, "clientId", 1024, what)?,
            secret: SecretValue::new(text(&doc, "clientSecret", 16 * 1024, what)?),
            expires_at: Timestamp(number(
                &doc,
                "clientSecretExpiresAt",
                0..=i64::MAX / 2,
                what,
            )?),
        }),
        Answer::Refused(status, error) => Err(format!(
            "IAM Identity Center refused to register a client ({status} {error})"
        )),
    }
}

/// A started device authorization.
struct Device {
    code: SecretValue,
    user_code: String,
    uri: String,
    uri_complete: Option<String>,
    expires_at: Timestamp,
    interval: u64,
}

/// A page the user is sent to: https, printable, bounded.
fn page(doc: &Map<String, Value>, key: &str, what: &str) -> Result<Option<String>, String> {
    if doc.get(key).is_none() {
        return Ok(None);
    }
    let url = text(doc, key, 2048, what)?;
    if !url.starts_with("https://") {
        return Err(format!(
            "IAM Identity Center's answer to {what} sends the user to a page that is not https"
        ));
    }
    Ok(Some(url))
}

async fn start(
    http: &Http,
    oidc: &str,
    client: &Client,
    start_url: &str,
    now: Timestamp,
) -> Result<Device, String> {
    let what = "StartDeviceAuthorization";
    let body = json!({
        "clientId": client.id,
        "clientSecret": client.secret.expose_secret(),
        "startUrl": start_url,
    });
    let req = post_json(http, &format!("{oidc}/device_authorization"), &body);
    match call(req, what, oidc).await? {
        Answer::Ok(doc) => {
            let uri = page(&doc, "verificationUri", what)?
                .ok_or_else(|| format!("IAM Identity Center's answer to {what} has no page"))?;
            let life = number(&doc, "expiresIn", 1..=3600, what)?;
            Ok(Device {
                code: SecretValue::new(text(&doc, "deviceCode", 16 * 1024, what)?),
                user_code: text(&doc, "userCode", 64, what)?,
                uri,
                uri_complete: page(&doc, "verificationUriComplete", what)?,
                expires_at: now.plus(Duration::from_secs(life as u64)),
                interval: doc
                    .get("interval")
                    .and_then(Value::as_u64)
                    .unwrap_or(5)
                    .clamp(1, 60),
            })
        }
        Answer::Refused(400, e) if e.contains("InvalidRequest") || e == "invalid_request" => {
            Err(format!(
                "IAM Identity Center does not know this sso_start_url ({e}): check it in the AWS \
                 access portal's address"
            ))
        }
        Answer::Refused(status, error) => Err(format!(
            "IAM Identity Center refused to start a sign-in ({status} {error})"
        )),
    }
}

/// A session's tokens.
struct Tokens {
    access: SecretValue,
    expires_at: Timestamp,
    refresh: Option<SecretValue>,
}

/// How `CreateToken` ended.
enum TokenError {
    /// Not approved yet.
    Pending,
    /// Poll less often.
    SlowDown,
    /// The code or the refresh token expired.
    Expired,
    /// The user denied the sign-in.
    Denied,
    /// The grant was refused for another reason (a revoked refresh token,
    /// a client that expired).
    Invalid(String),
    /// No answer, or a broken one.
    Other(String),
}

async fn create_token(
    http: &Http,
    oidc: &str,
    client: &Client,
    grant: (&str, &str, &SecretValue),
    now: Timestamp,
) -> Result<Tokens, TokenError> {
    let what = "CreateToken";
    let (grant_type, key, value) = grant;
    let mut body = json!({
        "clientId": client.id,
        "clientSecret": client.secret.expose_secret(),
        "grantType": grant_type,
    });
    body[key] = Value::String(value.expose_secret().to_owned());
    let req = post_json(http, &format!("{oidc}/token"), &body);
    let doc = match call(req, what, oidc).await.map_err(TokenError::Other)? {
        Answer::Ok(doc) => doc,
        Answer::Refused(_, e) => {
            let e_low = e.to_ascii_lowercase();
            return Err(
                if e_low.contains("authorization_pending") || e_low.contains("authorizationpending")
                {
                    TokenError::Pending
                } else if e_low.contains("slow_down") || e_low.contains("slowdown") {
                    TokenError::SlowDown
                } else if e_low.contains("expired") {
                    TokenError::Expired
                } else if e_low.contains("access_denied") || e_low.contains("accessdenied") {
                    TokenError::Denied
                } else {
                    TokenError::Invalid(e)
                },
            );
        }
    };
    let access = text(&doc, "accessToken", 16 * 1024, what).map_err(TokenError::Other)?;
    let life = number(&doc, "expiresIn", 60..=7 * 24 * 3600, what).map_err(TokenError::Other)?;
    let refresh = match doc.get("refreshToken") {
        None | Some(Value::Null) => None,
        Some(_) => Some(SecretValue::new(
            text(&doc, "refreshToken", 16 * 1024, what).map_err(TokenError::Other)?,
        )),
    };
    Ok(Tokens {
        access: SecretValue::new(access),
        expires_at: now.plus(Duration::from_secs(life as u64)),
        refresh,
    })
}

/// The session's fields as the record keeps them.
fn session_fields(tokens: Tokens, client: Option<&Client>) -> BTreeMap<String, SecretValue> {
    let mut f = BTreeMap::new();
    f.insert("sso_access_token".to_owned(), tokens.access);
    f.insert(
        "sso_token_expires".to_owned(),
        SecretValue::new(tokens.expires_at.to_rfc3339()),
    );
    if let Some(r) = tokens.refresh {
        f.insert("sso_refresh_token".to_owned(), r);
    }
    if let Some(c) = client {
        f.insert("sso_client_id".to_owned(), SecretValue::from(c.id.as_str()));
        f.insert("sso_client_secret".to_owned(), c.secret.duplicate());
        f.insert(
            "sso_client_expires".to_owned(),
            SecretValue::new(c.expires_at.to_rfc3339()),
        );
    }
    f
}

/// Mints the role credentials of an SSO credential: its access token
/// (renewed with the refresh token when it is about to expire, or once
/// when refused), then `GetRoleCredentials`. A credential with a session
/// of its own gets the renewed tokens back with the keys (and kept alone
/// when the keys fail); one sharing a session record renews and keeps them
/// there, once for all.
pub async fn mint(d: &Arc<Shared>, plan: &SsoPlan) -> Result<Minted, Unminted> {
    if plan.shared {
        return Ok(mint_shared(d, plan).await?);
    }
    let now = Timestamp::now();
    let mut fields = BTreeMap::new();
    let fresh = plan
        .access_token
        .as_ref()
        .filter(|(_, expires)| expires.unix() > now.plus(TOKEN_MARGIN).unix());
    let mut access = match fresh {
        Some((token, _)) => token.duplicate(),
        None => renew(&d.http, plan, &mut fields, now).await?,
    };
    let mut renewed = fresh.is_none();
    let failed = loop {
        match role_credentials(&d.http, plan, &access, now).await {
            Ok((keys, expires_at)) => {
                fields.extend(keys);
                return Ok(Minted {
                    fields,
                    expires_at: Some(expires_at),
                });
            }
            // A token refused before its time (signed out, revoked): one
            // renewal, then the user signs in again.
            Err(None) if !renewed => {
                renewed = true;
                match renew(&d.http, plan, &mut fields, now).await {
                    Ok(a) => access = a,
                    Err(why) => break why,
                }
            }
            Err(None) => break sign_in_again(&plan.session),
            Err(Some(why)) => break why,
        }
    };
    // Renewed, but no keys: the new tokens are kept all the same (a
    // refresh token may be good for one use only).
    let mut kept = None;
    if !fields.is_empty() {
        let (session, id) = (plan.session.clone(), plan.session_id.clone());
        // Off the async workers: the commit rewrites the record's emitted
        // files, under their locks.
        let keep = blocking(d, move |e| {
            e.keep_sso_session(&session, &id, fields, false, Timestamp::now())
        })
        .await;
        match keep {
            Ok(summary) => kept = Some(summary.revision),
            Err(e) => {
                tracing::warn!(record = %plan.session_id, error = %e.message, "renewed SSO tokens not kept");
            }
        }
    }
    Err(Unminted { why: failed, kept })
}

/// Mints a credential that shares a session record's sign-in.
async fn mint_shared(d: &Arc<Shared>, plan: &SsoPlan) -> Result<Minted, String> {
    let mut refused = None;
    loop {
        let access = session_access(
            d,
            &plan.session,
            &plan.session_id,
            refused.as_ref(),
            TOKEN_MARGIN,
        )
        .await
        .map_err(|e| e.message)?;
        match role_credentials(&d.http, plan, &access, Timestamp::now()).await {
            Ok((fields, expires_at)) => {
                return Ok(Minted {
                    fields,
                    expires_at: Some(expires_at),
                });
            }
            Err(None) if refused.is_none() => refused = Some(access),
            Err(None) => return Err(sign_in_again(&plan.session)),
            Err(Some(why)) => return Err(why),
        }
    }
}

/// An access token of the session held by record `session` (id `id`):
/// the kept one while it has more than `ahead` left and is not the one
/// just `refused`, else a renewed one, kept in that record. One renewal at
/// a time per session: the credentials sharing it wait, then find the
/// renewed token.
async fn session_access(
    d: &Arc<Shared>,
    session: &str,
    id: &str,
    refused: Option<&SecretValue>,
    ahead: Duration,
) -> Result<SecretValue, WireError> {
    let flight = d.refresher.flight(id);
    let _renewing = flight.lock().await;
    let plan = d.engine().sso_session(session)?;
    if plan.session_id != id {
        return Err(WireError::new(
            ErrorCode::Conflict,
            format!("'{session}' changed meanwhile: try again"),
        ));
    }
    let now = Timestamp::now();
    if let Some((token, expires)) = &plan.access_token
        && expires.unix() > now.plus(ahead).unix()
        && refused.is_none_or(|r| r.expose_secret() != token.expose_secret())
    {
        return Ok(token.duplicate());
    }
    let mut fields = BTreeMap::new();
    let access = renew(&d.http, &plan, &mut fields, now)
        .await
        .map_err(failed)?;
    let (session, id) = (session.to_owned(), id.to_owned());
    blocking(d, move |e| {
        e.keep_sso_session(&session, &id, fields, false, Timestamp::now())
    })
    .await?;
    Ok(access)
}

/// How long before its access token expires a session whose token file
/// the aws CLI reads is renewed: botocore's own refresh window.
const FILE_AHEAD: Duration = Duration::from_secs(15 * 60);
/// A failed renewal of such a session is tried again after this.
const FILE_RETRY: Duration = Duration::from_secs(60);

/// Sessions whose token file is being renewed or failed to be, by record
/// id: when to try again.
#[derive(Debug, Default)]
pub struct Renewals(std::sync::Mutex<HashMap<String, Timestamp>>);

impl Renewals {
    /// Whether a renewal of `id` may start now (none under way, none failed
    /// within [`FILE_RETRY`]); marks it under way.
    fn start(&self, id: &str, now: Timestamp) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if m.get(id).is_some_and(|at| *at > now) {
            return false;
        }
        m.insert(id.to_owned(), now.plus(FILE_RETRY));
        true
    }

    fn done(&self, id: &str, ok: bool) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if ok {
            m.remove(id);
        }
    }
}

/// Called by the daemon's ticker: renews, in the background, the access
/// token of every session whose token file is bound (`vault emit aws
/// --sso`) and has less than [`FILE_AHEAD`] left; the renewed token
/// rewrites the file. A session that cannot be renewed (signed out) keeps
/// its file until the token expires, when it goes.
pub fn renew_bound(d: &Arc<Shared>) {
    let now = Timestamp::now();
    let due = d.engine().sso_tokens_due(FILE_AHEAD, now);
    for (holder, id) in due {
        if !d.sso_renewals.start(&id, now) {
            continue;
        }
        let d = Arc::clone(d);
        tokio::spawn(async move {
            let renewed = session_access(&d, &holder, &id, None, FILE_AHEAD).await;
            if let Err(e) = &renewed {
                tracing::warn!(record = %id, error = %e.message, "cannot renew an SSO session whose token file is emitted");
            }
            d.sso_renewals.done(&id, renewed.is_ok());
        });
    }
}

/// A new access token from the refresh token, its fields added to
/// `fields`; when there is none or it is refused, what to run.
async fn renew(
    http: &Http,
    plan: &SsoPlan,
    fields: &mut BTreeMap<String, SecretValue>,
    now: Timestamp,
) -> Result<SecretValue, String> {
    let (Some((id, secret)), Some(refresh)) = (&plan.client, &plan.refresh_token) else {
        return Err(if plan.access_token.is_none() {
            format!(
                "'{0}' is not signed in to IAM Identity Center: run 'vault sso login {0}'",
                plan.session
            )
        } else {
            sign_in_again(&plan.session)
        });
    };
    let client = Client {
        id: id.clone(),
        secret: secret.duplicate(),
        expires_at: now,
    };
    let grant = ("refresh_token", "refreshToken", refresh);
    let tokens = create_token(http, &plan.oidc, &client, grant, now)
        .await
        .map_err(|e| match e {
            TokenError::Other(m) => m,
            _ => sign_in_again(&plan.session),
        })?;
    let access = tokens.access.duplicate();
    fields.extend(session_fields(tokens, None));
    Ok(access)
}

/// `GetRoleCredentials`: the keys and their expiry; `Err(None)` when the
/// token was refused (401).
async fn role_credentials(
    http: &Http,
    plan: &SsoPlan,
    access: &SecretValue,
    now: Timestamp,
) -> Result<(BTreeMap<String, SecretValue>, Timestamp), Option<String>> {
    let what = "GetRoleCredentials";
    let url = format!(
        "{}/federation/credentials?account_id={}&role_name={}",
        plan.portal,
        super::sigv4::form_encode(&plan.account_id),
        super::sigv4::form_encode(&plan.role_name)
    );
    let req = http
        .get(&url)
        .header("x-amz-sso_bearer_token", access.expose_secret());
    let doc = match call(req, what, &plan.portal).await.map_err(Some)? {
        Answer::Ok(doc) => doc,
        Answer::Refused(401, _) => return Err(None),
        Answer::Refused(status @ (403 | 404), e) => {
            return Err(Some(format!(
                "IAM Identity Center refused role {} in account {} ({status} {e}): this sign-in \
                 may not use it; check the account and role in the AWS access portal, and fix \
                 them with 'vault set {} sso_account_id=… sso_role_name=…'",
                plan.role_name, plan.account_id, plan.name
            )));
        }
        Answer::Refused(status, e) => {
            return Err(Some(format!(
                "IAM Identity Center refused {what} ({status} {e})"
            )));
        }
    };
    role_keys(&doc, now).map_err(Some)
}

/// The longest role session IAM Identity Center gives.
const MAX_ROLE_SESSION: Duration = Duration::from_secs(12 * 3600);

/// The keys and expiry of a `GetRoleCredentials` answer, checked: keys of
/// AWS's shape, an expiry (milliseconds) after now and within 12 hours.
fn role_keys(
    doc: &Map<String, Value>,
    now: Timestamp,
) -> Result<(BTreeMap<String, SecretValue>, Timestamp), String> {
    let what = "GetRoleCredentials";
    let creds = doc
        .get("roleCredentials")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("IAM Identity Center's answer to {what} has no roleCredentials"))?;
    let key = |k: &str, max: usize| text(creds, k, max, what).map(SecretValue::new);
    let (id, secret, token) = (
        key("accessKeyId", 128)?,
        key("secretAccessKey", 256)?,
        key("sessionToken", 8192)?,
    );
    if !super::sts::keys_look_real(&id, &secret, &token) {
        return Err(format!(
            "IAM Identity Center's answer to {what} holds keys that cannot be ones"
        ));
    }
    let expires_at = Timestamp(number(creds, "expiration", 0..=i64::MAX / 2, what)? / 1000);
    super::sts::check_expiry(
        expires_at,
        now,
        MAX_ROLE_SESSION,
        "IAM Identity Center",
        what,
    )?;
    let mut fields = BTreeMap::new();
    fields.insert("access_key_id".to_owned(), id);
    fields.insert("secret_access_key".to_owned(), secret);
    fields.insert("session_token".to_owned(), token);
    Ok((fields, expires_at))
}

/// Most pages read of one listing, and most roles listed.
const MAX_PAGES: usize = 20;
const MAX_ROLES: usize = 1000;

/// Every page of a portal listing (`path` with its query), the items of
/// `key` in each; `Err(None)` when the token was refused (401).
async fn list_all(
    http: &Http,
    portal: &str,
    access: &SecretValue,
    path: &str,
    key: &str,
) -> Result<Vec<Map<String, Value>>, Option<String>> {
    let what = if key == "accountList" {
        "ListAccounts"
    } else {
        "ListAccountRoles"
    };
    let mut items = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let join = if path.contains('?') { '&' } else { '?' };
        let mut url = format!("{portal}{path}{join}max_result=100");
        if let Some(t) = &next {
            url.push_str(&format!("&next_token={}", super::sigv4::form_encode(t)));
        }
        let req = http
            .get(&url)
            .header("x-amz-sso_bearer_token", access.expose_secret());
        let doc = match call(req, what, portal).await.map_err(Some)? {
            Answer::Ok(doc) => doc,
            Answer::Refused(401, _) => return Err(None),
            Answer::Refused(status, e) => {
                return Err(Some(format!(
                    "IAM Identity Center refused {what} ({status} {e})"
                )));
            }
        };
        for item in doc.get(key).and_then(Value::as_array).into_iter().flatten() {
            if let Some(o) = item.as_object() {
                items.push(o.clone());
            }
        }
        if items.len() > MAX_ROLES {
            return Err(Some(format!(
                "IAM Identity Center listed more than {MAX_ROLES} items ({what})"
            )));
        }
        next = doc
            .get("nextToken")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty() && t.len() <= 4096)
            .map(str::to_owned);
        if next.is_none() {
            return Ok(items);
        }
    }
    Err(Some(format!(
        "IAM Identity Center's {what} did not end within {MAX_PAGES} pages"
    )))
}

/// The longest `vault sso roles` takes, every page of every account.
const ROLES_DEADLINE: Duration = Duration::from_secs(120);

/// Whether `s` is a name to print: no control, zero-width or
/// direction-changing characters.
fn printable(s: &str) -> bool {
    !s.chars().any(|c| {
        c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
    })
}

/// `vault sso roles NAME`: the accounts and roles its session may use. The
/// access token is renewed first when it is about to expire, or once when
/// refused, and the renewed tokens are kept.
pub async fn roles(d: &Arc<Shared>, name: &str) -> Result<Response, WireError> {
    let deadline = tokio::time::Instant::now() + ROLES_DEADLINE;
    let plan = d.engine().sso_session(name)?;
    let (session, id) = (plan.session.as_str(), plan.session_id.as_str());
    let mut refused = None;
    loop {
        let access = session_access(d, session, id, refused.as_ref(), TOKEN_MARGIN).await?;
        let listed = tokio::time::timeout_at(deadline, list_roles(&d.http, &plan.portal, &access))
            .await
            .map_err(|_| {
                failed(format!(
                    "IAM Identity Center did not list every role within {} s; try again",
                    ROLES_DEADLINE.as_secs()
                ))
            })?;
        match listed {
            Ok(mut out) => {
                out.sort_by(|a, b| {
                    (&a.account_id, &a.role_name).cmp(&(&b.account_id, &b.role_name))
                });
                return Ok(Response::SsoRoles { roles: out });
            }
            Err(None) if refused.is_none() => refused = Some(access),
            Err(None) => return Err(failed(sign_in_again(session))),
            Err(Some(why)) => return Err(failed(why)),
        }
    }
}

/// Every account and its roles; `Err(None)` when the token was refused.
async fn list_roles(
    http: &Http,
    portal: &str,
    access: &SecretValue,
) -> Result<Vec<vault_protocol::message::SsoRole>, Option<String>> {
    let sane = |v: Option<&Value>, max: usize| {
        v.and_then(Value::as_str)
            .filter(|s| (1..=max).contains(&s.len()) && printable(s))
            .map(str::to_owned)
    };
    let accounts = list_all(http, portal, access, "/assignment/accounts", "accountList").await?;
    let mut out = Vec::new();
    for a in accounts {
        let Some(id) = sane(a.get("accountId"), 12)
            .filter(|i| i.len() == 12 && i.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let account_name = sane(a.get("accountName"), 256).unwrap_or_default();
        let path = format!("/assignment/roles?account_id={id}");
        for r in list_all(http, portal, access, &path, "roleList").await? {
            if let Some(role_name) = sane(r.get("roleName"), 64) {
                out.push(vault_protocol::message::SsoRole {
                    account_id: id.clone(),
                    account_name: account_name.clone(),
                    role_name,
                });
            }
            if out.len() > MAX_ROLES {
                return Err(Some(format!(
                    "IAM Identity Center listed more than {MAX_ROLES} roles"
                )));
            }
        }
    }
    Ok(out)
}

/// A sign-in waiting for the user, by record name.
#[derive(Default)]
pub struct Logins(std::sync::Mutex<HashMap<String, Pending>>);

impl std::fmt::Debug for Logins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logins").finish_non_exhaustive()
    }
}

struct Pending {
    /// The record's id, so a sign-in never lands in a record renamed or
    /// replaced meanwhile.
    id: String,
    client: Client,
    /// Whether the client is new (then kept with the session).
    new_client: bool,
    device: Device,
    oidc: String,
}

impl Logins {
    /// Forgets every sign-in (the vault locked).
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn put(&self, name: &str, p: Pending) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, p| p.device.expires_at.unix() > Timestamp::now().unix());
        m.insert(name.to_owned(), p);
    }

    /// The sign-in of `name` whose code is `user_code`: a second
    /// `vault sso login` of the same name never waits on the first one's.
    fn take(&self, name: &str, user_code: &str) -> Option<Pending> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if m.get(name)?.device.user_code != user_code {
            return None;
        }
        m.remove(name)
    }
}

/// `vault sso login NAME`, first half: a client (the record's while it
/// lasts, else a new one) and a device authorization; the page and code
/// go to the user. A credential sharing an SSO session signs that session
/// in.
pub async fn login_start(d: &Arc<Shared>, name: &str) -> Result<Response, WireError> {
    let now = Timestamp::now();
    let (holder, id, start_url, oidc, client) = {
        let e = d.engine();
        let (holder, id, kind, fields) = e.sso_record(name)?;
        let field = |f: &str| {
            fields
                .get(f)
                .map(|v| v.expose_secret().to_owned())
                .filter(|v| !v.is_empty())
        };
        let Some(start_url) = field(vault_protocol::credential::SSO_START_URL)
            .filter(|_| kind == CredentialType::Aws)
        else {
            return Err(WireError::new(
                ErrorCode::Usage,
                format!(
                    "'{name}' is not an SSO credential: add one with 'vault add NAME --type aws \
                     sso_start_url=https://…/start sso_region=… sso_account_id=… sso_role_name=…'"
                ),
            ));
        };
        let (oidc, _) = e
            .sso_endpoints(&field("sso_region").unwrap_or_default())
            .map_err(failed)?;
        let expires = field("sso_client_expires").and_then(|t| Timestamp::parse(&t).ok());
        let client = match (
            field("sso_client_id"),
            fields.get("sso_client_secret"),
            expires,
        ) {
            (Some(id), Some(secret), Some(at)) if at.unix() > now.plus(CLIENT_MARGIN).unix() => {
                Some(Client {
                    id,
                    secret: secret.duplicate(),
                    expires_at: at,
                })
            }
            _ => None,
        };
        (holder, id, start_url, oidc, client)
    };
    let (mut client, mut new_client) = match client {
        Some(c) => (c, false),
        None => (register(&d.http, &oidc).await.map_err(failed)?, true),
    };
    let device = match start(&d.http, &oidc, &client, &start_url, now).await {
        Ok(device) => device,
        // The kept client was refused (another region or instance since,
        // or revoked): a new one, once.
        Err(e) if !new_client && (e.contains("InvalidClient") || e.contains("invalid_client")) => {
            client = register(&d.http, &oidc).await.map_err(failed)?;
            new_client = true;
            start(&d.http, &oidc, &client, &start_url, now)
                .await
                .map_err(failed)?
        }
        Err(e) => return Err(failed(e)),
    };
    let answer = Response::SsoDevice {
        verification_uri: device.uri.clone(),
        verification_uri_complete: device.uri_complete.clone(),
        user_code: device.user_code.clone(),
        expires_at: device.expires_at,
        issuer: None,
    };
    d.sso_logins.put(
        &holder,
        Pending {
            id,
            client,
            new_client,
            device,
            oidc,
        },
    );
    Ok(answer)
}

/// `vault sso login NAME`, second half: polls `CreateToken` at the
/// interval asked (slower when told) until the user approves, denies or
/// the code expires; keeps the session and mints the role credentials.
pub async fn login_wait(
    d: &Arc<Shared>,
    name: &str,
    user_code: &str,
) -> Result<Response, WireError> {
    let (holder, ..) = d.engine().sso_record(name)?;
    let Some(p) = d.sso_logins.take(&holder, user_code) else {
        return Err(WireError::new(
            ErrorCode::Usage,
            format!(
                "no sign-in of '{name}' with that code is waiting (another 'vault sso login \
                 {name}' started since, or the vault locked): run 'vault sso login {name}'"
            ),
        ));
    };
    let deadline = std::time::Instant::now()
        + MAX_WAIT.min(Duration::from_secs(
            (p.device.expires_at.unix() - Timestamp::now().unix()).max(0) as u64,
        ));
    let mut interval = p.device.interval;
    let tokens = loop {
        tokio::time::sleep(Duration::from_secs(interval)).await;
        if std::time::Instant::now() >= deadline {
            return Err(failed(format!(
                "the sign-in code expired before it was approved: run 'vault sso login {name}' \
                 again and approve it in the browser"
            )));
        }
        let grant = (DEVICE_GRANT, "deviceCode", &p.device.code);
        match create_token(&d.http, &p.oidc, &p.client, grant, Timestamp::now()).await {
            Ok(t) => break t,
            Err(TokenError::Pending) => {}
            Err(TokenError::SlowDown) => interval = (interval + 5).min(60),
            Err(TokenError::Expired) => {
                return Err(failed(format!(
                    "the sign-in code expired before it was approved: run 'vault sso login \
                     {name}' again and approve it in the browser"
                )));
            }
            Err(TokenError::Denied) => {
                return Err(failed(format!(
                    "the sign-in of '{name}' was denied in the browser: run 'vault sso login \
                     {name}' again and allow it"
                )));
            }
            Err(TokenError::Invalid(e)) => {
                return Err(failed(format!(
                    "IAM Identity Center refused the sign-in ({e}): run 'vault sso login {name}' \
                     again"
                )));
            }
            Err(TokenError::Other(m)) => return Err(failed(m)),
        }
    };
    let fields = session_fields(tokens, p.new_client.then_some(&p.client));
    // Not while a renewal of the old session is under way: its tokens
    // would land over these.
    let flight = d.refresher.flight(&p.id);
    let renewing = flight.lock().await;
    let now = Timestamp::now();
    let (h, hid) = (holder.clone(), p.id.clone());
    let (summary, minted) = blocking(d, move |e| {
        let holder = h;
        e.keep_sso_session(&holder, &hid, fields, true, now)?;
        // What the session mints: the credential itself, or every one
        // sharing this session record, whose keys of the old session go
        // (as the credential's own do), so each is minted from this one.
        let minted = if e.sso_session(&holder)?.role_name.is_empty() {
            let sharing = e.sso_sharing(&holder);
            for (name, id) in &sharing {
                e.drop_sso_keys(name, id, now)?;
            }
            sharing
        } else {
            vec![(holder.clone(), hid)]
        };
        Ok((e.summary_of(&holder, now)?, minted))
    })
    .await?;
    drop(renewing);
    // The role credentials now, so that a role the session may not use is
    // said here, not at the first use; a failure of the old session is
    // forgotten first.
    for (_, id) in &minted {
        d.refresher.succeeded(id);
    }
    let names: Vec<String> = minted.iter().map(|(n, _)| n.clone()).collect();
    crate::remote::refresher::ensure_fresh(d, &names).await;
    for (minted, id) in &minted {
        if let Some(why) = d.refresher.error_of(id) {
            return Err(failed(format!(
                "signed in, but no role credentials for '{minted}': {why}"
            )));
        }
    }
    Ok(Response::Changed(summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn hostile_role_credentials_are_refused() {
        let now = Timestamp(1_800_000_000);
        let answer = |id: &str, exp: i64| {
            doc(
                json!({"roleCredentials": {"accessKeyId": id, "secretAccessKey": "s",
                "sessionToken": "t", "expiration": exp}}),
            )
        };
        let ms = |secs: i64| (now.unix() + secs) * 1000;
        let (fields, at) = role_keys(&answer("ASIAX", ms(3600)), now).unwrap();
        assert_eq!(at, Timestamp(now.unix() + 3600));
        assert_eq!(fields["access_key_id"].expose_secret(), "ASIAX");
        // Out of range: already over, or beyond a role session's 12 hours.
        for exp in [ms(0), ms(-60), ms(13 * 3600), -1, i64::MAX] {
            let e = role_keys(&answer("ASIAX", exp), now).unwrap_err();
            assert!(e.contains("GetRoleCredentials"), "{e}");
        }
        // Forged: keys that cannot be AWS's (a newline, too long).
        for id in ["ASIA\nX", &"A".repeat(129), ""] {
            assert!(role_keys(&answer(id, ms(3600)), now).is_err(), "{id:?}");
        }
        // Withheld: no roleCredentials, a field missing or not a string.
        assert!(role_keys(&doc(json!({})), now).is_err());
        let partial = doc(json!({"roleCredentials": {"accessKeyId": "ASIAX",
            "secretAccessKey": "s", "expiration": ms(3600)}}));
        assert!(
            role_keys(&partial, now)
                .unwrap_err()
                .contains("sessionToken")
        );
        let typed = doc(
            json!({"roleCredentials": {"accessKeyId": 7, "secretAccessKey": "s",
            "sessionToken": "t", "expiration": ms(3600)}}),
        );
        assert!(role_keys(&typed, now).is_err());
    }

    #[test]
    fn the_page_a_user_is_sent_to_must_be_https() {
        let what = "StartDeviceAuthorization";
        let ok = doc(json!({"verificationUri": "https://device.sso.eu-west-1.amazonaws.com/"}));
        assert!(page(&ok, "verificationUri", what).unwrap().is_some());
        assert_eq!(
            page(&doc(json!({})), "verificationUri", what).unwrap(),
            None
        );
        for bad in [
            "http://device.example/",
            "javascript:alert(1)",
            "https://x/\u{7}",
            "",
        ] {
            let d = doc(json!({ "verificationUri": bad }));
            assert!(page(&d, "verificationUri", what).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn session_fields_hold_what_a_later_mint_reads() {
        let now = Timestamp(1_800_000_000);
        let client = Client {
            id: "cid".into(),
            secret: SecretValue::from("csecret"),
            expires_at: now.plus(Duration::from_secs(90 * 86400)),
        };
        let t = Tokens {
            access: SecretValue::from("at"),
            expires_at: now.plus(Duration::from_secs(3600)),
            refresh: Some(SecretValue::from("rt")),
        };
        let f = session_fields(t, Some(&client));
        let mut fields: BTreeMap<String, SecretValue> =
            f.iter().map(|(k, v)| (k.clone(), v.duplicate())).collect();
        fields.insert(
            "sso_start_url".into(),
            SecretValue::from("https://d-1.awsapps.com/start"),
        );
        fields.insert("sso_region".into(), SecretValue::from("eu-west-1"));
        fields.insert("sso_account_id".into(), SecretValue::from("111122223333"));
        fields.insert("sso_role_name".into(), SecretValue::from("Admin"));
        vault_protocol::credential::validate_fields(CredentialType::Aws, &fields).unwrap();
        assert_eq!(
            Timestamp::parse(f["sso_token_expires"].expose_secret()).unwrap(),
            now.plus(Duration::from_secs(3600))
        );
        assert!(!format!("{:?}", f["sso_access_token"]).contains("at\""));
    }
}
