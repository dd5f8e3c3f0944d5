//! OAuth2 access tokens from a `gcp` credential (docs/gcp.md): for a
//! service-account key, a JWT-bearer grant (RFC 7523) to the key's
//! `token_uri`, the assertion signed RS256 by `ring`; for a user's login
//! (`authorized_user`, gcloud's ADC file), a refresh-token grant (RFC 6749
//! §6) with its client; both the way google-auth does them. Tokens are kept in
//! the daemon's memory per key revision and scopes, served until 5 minutes
//! before they expire, and minted once however many clients ask at the
//! same time. The token endpoint is Google's unless `config.toml` lists
//! another (`[gcp] token_uris`): a key that arrived from another device
//! never chooses where its assertion goes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::Deserialize;
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{ErrorCode, SecretValue, WireError};
use zeroize::Zeroizing;

use super::http::{Http, describe, read_capped};

/// The scope when none is asked for (what gcloud asks).
pub const DEFAULT_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Google's token endpoints, always allowed.
pub const GOOGLE_TOKEN_URIS: [&str; 2] = [
    "https://oauth2.googleapis.com/token",
    "https://accounts.google.com/o/oauth2/token",
];
/// A cached token is served while it has more than this left.
pub const AHEAD: Duration = Duration::from_secs(5 * 60);
/// The assertion's life (Google accepts at most an hour).
const ASSERTION_LIFE: i64 = 3600;
/// Most bytes of a token endpoint's answer.
const MAX_ANSWER: usize = 64 * 1024;

/// What minting needs from a key file.
pub struct Key {
    /// Whose tokens these are, for messages: the service account's email,
    /// or for a user login its `account` (else "the user login of client
    /// ID").
    pub client_email: String,
    pub token_uri: String,
    pub grant: Grant,
}

/// How a token is asked for.
pub enum Grant {
    /// A service-account key: a signed JWT assertion.
    Assertion {
        private_key_id: Option<String>,
        /// PKCS#8 DER; wiped on drop.
        pkcs8: Zeroizing<Vec<u8>>,
    },
    /// A user's login (`authorized_user`): its refresh token and the OAuth
    /// client it was issued to.
    Refresh {
        client_id: String,
        client_secret: SecretValue,
        refresh_token: SecretValue,
    },
    /// An issuer credential: a subject token it signs, exchanged at
    /// Google's STS (RFC 8693) for a federated token.
    Exchange(Box<super::wif::Issuer>),
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Grant::Assertion { .. } => "Assertion([redacted])",
            Grant::Refresh { .. } => "Refresh([redacted])",
            Grant::Exchange(_) => "Exchange([redacted])",
        })
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key_id: Option<String>,
    private_key: Option<SecretValue>,
    token_uri: Option<String>,
    client_id: Option<String>,
    client_secret: Option<SecretValue>,
    refresh_token: Option<SecretValue>,
    account: Option<String>,
}

impl Key {
    /// The account its tokens are minted for: `impersonate`, else the one
    /// an issuer's file names, else its own.
    pub fn acts_as(&self, impersonate: Option<String>) -> Option<String> {
        match &self.grant {
            Grant::Exchange(issuer) => impersonate.or_else(|| issuer.acts_as.clone()),
            _ => impersonate,
        }
    }
}

/// How gcp credential `name` mints: as an issuer when it has `issuer` and
/// `issuer_key`, else from its key file's JSON.
pub fn key_of(name: &str, json: &str, issuer: Option<(&str, &SecretValue)>) -> Result<Key, String> {
    let Some((issuer, key)) = issuer else {
        return parse_key(json, name);
    };
    let issuer = super::wif::Issuer::new(name, Some(json), issuer, key)?;
    Ok(Key {
        client_email: format!("the workload identity of '{name}'"),
        token_uri: issuer.token_url.clone(),
        grant: Grant::Exchange(Box::new(issuer)),
    })
}

/// Reads a key file's JSON; `name` is the credential, for the messages
/// (which never carry a key).
pub fn parse_key(json: &str, name: &str) -> Result<Key, String> {
    let file: KeyFile = serde_json::from_str(json)
        .map_err(|_| format!("the json of '{name}' is not a key file (JSON object)"))?;
    let token_uri = file
        .token_uri
        .clone()
        .unwrap_or_else(|| GOOGLE_TOKEN_URIS[0].to_owned());
    match file.kind.as_deref() {
        Some("service_account") => {}
        Some("authorized_user") => {
            let missing = |f: &str| format!("the user login of '{name}' has no {f}");
            let client_id = file.client_id.ok_or_else(|| missing("client_id"))?;
            return Ok(Key {
                client_email: file.account.filter(|a| !a.is_empty()).unwrap_or_else(|| {
                    format!("the user login of client {}", client_id.escape_debug())
                }),
                token_uri,
                grant: Grant::Refresh {
                    client_id,
                    client_secret: file.client_secret.ok_or_else(|| missing("client_secret"))?,
                    refresh_token: file.refresh_token.ok_or_else(|| missing("refresh_token"))?,
                },
            });
        }
        other => {
            return Err(format!(
                "'{name}' is a {} file: tokens are minted here from a service_account key or \
                 an authorized_user login",
                other.unwrap_or("typeless")
            ));
        }
    }
    let missing = |f: &str| format!("the service-account key of '{name}' has no {f}");
    let pem = file.private_key.ok_or_else(|| missing("private_key"))?;
    let (label, der) = pem_rfc7468::decode_vec(pem.expose_secret().as_bytes())
        .map_err(|_| format!("the private_key of '{name}' is not PEM"))?;
    let der = Zeroizing::new(der);
    if label != "PRIVATE KEY" {
        return Err(format!(
            "the private_key of '{name}' is a {label}, not a PKCS#8 PRIVATE KEY"
        ));
    }
    Ok(Key {
        client_email: file.client_email.ok_or_else(|| missing("client_email"))?,
        token_uri,
        grant: Grant::Assertion {
            private_key_id: file.private_key_id,
            pkcs8: der,
        },
    })
}

/// Whether the key may send its assertion to its `token_uri`: Google's,
/// or one this machine's `config.toml` lists.
pub fn check_token_uri(key: &Key, allowed: &[String], name: &str) -> Result<(), String> {
    let uri = key.token_uri.as_str();
    let google = match key.grant {
        Grant::Exchange(_) => uri == vault_protocol::credential::GCP_STS_TOKEN_URL,
        _ => GOOGLE_TOKEN_URIS.contains(&uri),
    };
    if google || allowed.iter().any(|a| a == uri) {
        return Ok(());
    }
    Err(format!(
        "the key of '{name}' names the token endpoint {uri}, which is not Google's: list it \
         in config.toml ([gcp] token_uris = [\"{uri}\"]) on this machine to use it"
    ))
}

/// The signed JWT assertion of `email`'s key for `scopes`, issued at
/// `now`.
fn assertion(
    email: &str,
    kid: Option<&str>,
    pkcs8: &[u8],
    scopes: &[String],
    now: i64,
) -> Result<Zeroizing<String>, String> {
    let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = kid.into();
    }
    let claims = serde_json::json!({
        "iss": email,
        "scope": scopes.join(" "),
        // google-auth's audience whatever the token_uri: Google's token
        // endpoint checks for it (tests/tests/gcp.rs pins this).
        "aud": GOOGLE_TOKEN_URIS[0],
        "iat": now,
        "exp": now + ASSERTION_LIFE,
    });
    let signing_input = format!(
        "{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims.to_string())
    );
    let pair = ring::signature::RsaKeyPair::from_pkcs8(pkcs8)
        .map_err(|e| format!("the private key is not an RSA key ring accepts ({e})"))?;
    let mut sig = vec![0; pair.public().modulus_len()];
    pair.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut sig,
    )
    .map_err(|_| "signing the assertion failed".to_owned())?;
    Ok(Zeroizing::new(format!(
        "{signing_input}.{}",
        B64URL.encode(sig)
    )))
}

#[derive(Deserialize)]
struct Answer {
    access_token: Option<SecretValue>,
    expires_in: Option<i64>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: Option<String>,
    error_description: Option<String>,
}

/// The form body that asks the key's `token_uri` for a token.
fn grant_form(key: &Key, scopes: &[String], now: i64) -> Result<Zeroizing<String>, String> {
    match &key.grant {
        Grant::Assertion {
            private_key_id,
            pkcs8,
        } => {
            let jwt = assertion(
                &key.client_email,
                private_key_id.as_deref(),
                pkcs8,
                scopes,
                now,
            )?;
            Ok(Zeroizing::new(format!(
                "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={}",
                jwt.as_str()
            )))
        }
        Grant::Refresh {
            client_id,
            client_secret,
            refresh_token,
        } => {
            let mut form = Zeroizing::new(String::from("grant_type=refresh_token"));
            for (k, v) in [
                ("client_id", client_id.as_str()),
                ("client_secret", client_secret.expose_secret()),
                ("refresh_token", refresh_token.expose_secret()),
            ] {
                form.push_str(&format!("&{k}="));
                super::sigv4::push_form_encoded(&mut form, v);
            }
            // A login keeps the scopes it was granted; narrower ones are
            // asked by name, the default by leaving scope out (as
            // google-auth does for an ADC login without scopes).
            if scopes != [DEFAULT_SCOPE] {
                form.push_str("&scope=");
                super::sigv4::push_form_encoded(&mut form, &scopes.join(" "));
            }
            Ok(form)
        }
        Grant::Exchange(issuer) => {
            let (subject, _) = issuer.sign(now)?;
            let mut form = Zeroizing::new(String::from(
                "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange\
                 &requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token\
                 &subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&audience=",
            ));
            super::sigv4::push_form_encoded(&mut form, &issuer.audience);
            form.push_str("&scope=");
            super::sigv4::push_form_encoded(&mut form, &scopes.join(" "));
            form.push_str("&subject_token=");
            form.push_str(&subject);
            Ok(form)
        }
    }
}

/// Asks the key's `token_uri` for a token: the assertion of a
/// service-account key, or a login's refresh token.
pub async fn mint(
    http: &Http,
    key: &Key,
    scopes: &[String],
    timeout: Duration,
    name: &str,
) -> Result<(SecretValue, Timestamp), WireError> {
    let now = Timestamp::now();
    let form = grant_form(key, scopes, now.unix()).map_err(|e| failed(name, &e))?;
    let sent = http
        .post(&key.token_uri)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form.as_bytes().to_vec())
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| {
            WireError::new(
                ErrorCode::Failed,
                format!(
                    "cannot reach {} for a token for '{name}': {}",
                    key.token_uri,
                    describe(&e)
                ),
            )
        })?;
    let status = sent.status().as_u16();
    let body = read_capped(sent, MAX_ANSWER)
        .await
        .map_err(|e| failed(name, &format!("{}: {e}", key.token_uri)))?;
    if status != 200 {
        let mut refusal = refused(name, status, &body);
        if matches!(key.grant, Grant::Exchange(_)) {
            refusal.message.push_str(&format!(
                " — the workload identity provider refused the vault's subject token: upload \
                 'vault gcp jwks {name}' to it, and check that its issuer URI is 'vault get \
                 {name} --field issuer' and its audience the json's"
            ));
        }
        return Err(refusal);
    }
    let answer: Answer = serde_json::from_slice(&body).map_err(|_| {
        failed(
            name,
            &format!("{} answered 200 with no token JSON", key.token_uri),
        )
    })?;
    let (Some(token), Some(expires_in)) = (answer.access_token, answer.expires_in) else {
        return Err(failed(
            name,
            &format!(
                "{}'s answer has no access_token or expires_in",
                key.token_uri
            ),
        ));
    };
    // A token is used for at most a day, whatever the endpoint claims.
    if token.is_empty() || !(1..=86_400).contains(&expires_in) {
        return Err(failed(
            name,
            &format!(
                "{}'s answer has an empty token or an expiry out of range",
                key.token_uri
            ),
        ));
    }
    Ok((token, Timestamp(now.unix() + expires_in)))
}

/// IAM Credentials, where a key asks for another service account's token.
pub use crate::engine::GCP_IAM_ENDPOINT as IAM_ENDPOINT;
/// The lifetime asked of an impersonated token (IAM's default and most,
/// without an org policy raising it).
const IMPERSONATED_LIFETIME: &str = "3600s";

/// One `generateAccessToken` call.
#[derive(Debug)]
pub struct Impersonation<'a> {
    /// IAM Credentials' base URL.
    pub endpoint: &'a str,
    /// The service account acted as.
    pub target: &'a str,
    /// The key's own account (for messages).
    pub by: &'a str,
    /// The scopes of the token asked.
    pub scopes: &'a [String],
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImpersonatedAnswer {
    access_token: Option<SecretValue>,
    expire_time: Option<String>,
}

#[derive(Deserialize)]
struct GoogleError {
    error: Option<GoogleErrorBody>,
}

#[derive(Deserialize)]
struct GoogleErrorBody {
    message: Option<String>,
}

/// A token of `asked.target`, asked of IAM Credentials with the key's own
/// token `own` (`generateAccessToken`, as google-auth's impersonated
/// credentials ask it).
pub async fn impersonate(
    http: &Http,
    asked: &Impersonation<'_>,
    own: &SecretValue,
    timeout: Duration,
    name: &str,
) -> Result<(SecretValue, Timestamp), WireError> {
    let target = asked.target;
    if !vault_protocol::credential::is_service_account(target) {
        return Err(failed(
            name,
            &format!(
                "'{}' is not a service account to act as",
                target.escape_debug()
            ),
        ));
    }
    let url = format!(
        "{}/v1/projects/-/serviceAccounts/{target}:generateAccessToken",
        asked.endpoint
    );
    let body = serde_json::json!({"scope": asked.scopes, "lifetime": IMPERSONATED_LIFETIME});
    let bearer = Zeroizing::new(format!("Bearer {}", own.expose_secret()));
    let sent = http
        .post(&url)
        .header("Authorization", bearer.as_str())
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| {
            failed(
                name,
                &format!(
                    "cannot reach {} to act as {target}: {}",
                    asked.endpoint,
                    describe(&e)
                ),
            )
        })?;
    let status = sent.status().as_u16();
    let body = read_capped(sent, MAX_ANSWER)
        .await
        .map_err(|e| failed(name, &format!("{}: {e}", asked.endpoint)))?;
    if status != 200 {
        let said = serde_json::from_slice::<GoogleError>(&body)
            .ok()
            .and_then(|e| e.error?.message)
            .map(|m| {
                m.chars()
                    .filter(|c| !c.is_control())
                    .take(200)
                    .collect::<String>()
            })
            .unwrap_or_else(|| "no reason given".to_owned());
        return Err(failed(
            name,
            &format!(
                "IAM Credentials refused to let {} act as {target} ({status} {said}): it needs \
                 roles/iam.serviceAccountTokenCreator on {target}",
                asked.by
            ),
        ));
    }
    let answer: ImpersonatedAnswer = serde_json::from_slice(&body)
        .map_err(|_| failed(name, "IAM Credentials answered 200 with no token JSON"))?;
    let now = Timestamp::now();
    let (Some(token), Some(expires)) = (answer.access_token, answer.expire_time) else {
        return Err(failed(
            name,
            "IAM Credentials' answer has no accessToken or expireTime",
        ));
    };
    let expires_at = Timestamp::parse(&expires)
        .ok()
        .filter(|t| t.unix() > now.unix() && t.unix() <= now.unix() + 86_400);
    let printable = token.expose_secret().bytes().all(|b| b.is_ascii_graphic());
    let (Some(expires_at), true, false) = (expires_at, printable, token.is_empty()) else {
        return Err(failed(
            name,
            "IAM Credentials' answer has an empty token or an expiry out of range",
        ));
    };
    Ok((token, expires_at))
}

fn failed(name: &str, why: &str) -> WireError {
    WireError::new(ErrorCode::Failed, format!("no token for '{name}': {why}"))
}

/// A refusal by the token endpoint, told as the user can act on it: a key
/// deleted or disabled in IAM, a clock out of step, a scope refused.
fn refused(name: &str, status: u16, body: &[u8]) -> WireError {
    let e: ErrorAnswer = serde_json::from_slice(body).unwrap_or(ErrorAnswer {
        error: None,
        error_description: None,
    });
    let clean = |s: Option<String>| {
        s.map(|s| {
            s.chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect::<String>()
        })
    };
    let (error, description) = (clean(e.error), clean(e.error_description));
    let said = match (&error, &description) {
        (Some(e), Some(d)) => format!("{e}: {d}"),
        (Some(e), None) => e.clone(),
        _ => "no reason given".to_owned(),
    };
    let hint = match description.as_deref().unwrap_or_default() {
        d if d.contains("Invalid JWT Signature") || d.contains("account not found") => {
            " — the key was deleted or disabled in IAM (or the account was): create a new key \
             and 'vault set NAME json=@key.json'"
        }
        d if d.contains("expired or revoked") => {
            " — the login was signed out, revoked or has expired: sign in again (gcloud auth \
             application-default login), 'vault set NAME json=@FILE' with the file it wrote, and \
             delete that file"
        }
        _ if error.as_deref() == Some("invalid_client") => {
            " — the login's client_id or client_secret is not accepted: sign in again and \
             replace the json with 'vault set NAME json=@FILE'"
        }
        d if d.contains("iat") || d.contains("exp") || d.contains("timeframe") => {
            " — the token endpoint rejects the assertion's time: check this machine's clock \
             (vault doctor)"
        }
        _ => "",
    };
    WireError::new(
        ErrorCode::Failed,
        format!("no token for '{name}': the token endpoint refused it ({status} {said}){hint}")
            .replace("NAME", name),
    )
}

/// `vault gcp token NAME`: a token for the gcp credential `name`, from
/// the cache or minted now. The key is read under the engine's lock; the
/// call to the token endpoint is made without it.
pub async fn token(
    d: &std::sync::Arc<super::Shared>,
    name: &str,
    scopes: Vec<String>,
) -> Result<vault_protocol::Response, WireError> {
    let scopes = if scopes.is_empty() {
        vec![DEFAULT_SCOPE.to_owned()]
    } else {
        scopes
    };
    if let Some(bad) = scopes
        .iter()
        .find(|s| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(WireError::new(
            ErrorCode::Usage,
            format!(
                "'{}' is not a scope: give one URL per --scope",
                bad.escape_debug()
            ),
        ));
    }
    let (got, key, allowed, iam, timeout) = {
        let engine = d.engine();
        let got = engine.gcp_key(name, Timestamp::now())?;
        let issuer = got.issuer.as_ref().map(|(i, k)| (i.as_str(), k));
        let key = key_of(name, got.json.expose_secret(), issuer)
            .map_err(|e| WireError::new(ErrorCode::Failed, e))?;
        let config = engine.config();
        (
            got,
            key,
            config.gcp_token_uris.clone(),
            config
                .gcp_iam_endpoint
                .clone()
                .unwrap_or_else(|| IAM_ENDPOINT.to_owned()),
            config.refresh_timeout,
        )
    };
    check_token_uri(&key, &allowed, name).map_err(|e| WireError::new(ErrorCode::Failed, e))?;
    let acts_as = key.acts_as(got.impersonate.clone());
    let minted = async {
        match &acts_as {
            None => mint(&d.http, &key, &scopes, timeout, name).await,
            Some(target) => {
                // The key's own token (cloud-platform) asks IAM Credentials
                // for one of the target's, with the scopes asked.
                let base = [DEFAULT_SCOPE.to_owned()];
                let (own, _) = mint(&d.http, &key, &base, timeout, name).await?;
                let asked = Impersonation {
                    endpoint: &iam,
                    target,
                    by: &key.client_email,
                    scopes: &scopes,
                };
                impersonate(&d.http, &asked, &own, timeout, name).await
            }
        }
    };
    let (token, expires_at, stale) = d
        .gcp_tokens
        .get(&got.id, got.revision, &scopes, minted)
        .await?;
    if let Some(why) = stale {
        tracing::warn!(error = %why, "serving the cached token: minting a new one failed");
    }
    if d.engine().is_locked() {
        // Locked while the endpoint answered: nothing stays in memory.
        d.gcp_tokens.clear();
        return Err(WireError::new(
            ErrorCode::Locked,
            "the vault was locked: unlock it and ask again",
        ));
    }
    Ok(vault_protocol::Response::AccessToken { token, expires_at })
}

/// Tokens minted, per key revision and scopes, and the flight of each.
#[derive(Debug, Default)]
pub struct Tokens {
    slots: Mutex<HashMap<CacheKey, Arc<tokio::sync::Mutex<Option<Cached>>>>>,
}

/// A record id, its revision, and the scopes.
type CacheKey = (String, u64, String);

#[derive(Debug)]
struct Cached {
    token: SecretValue,
    expires_at: Timestamp,
}

impl Tokens {
    fn slot(&self, key: CacheKey) -> Arc<tokio::sync::Mutex<Option<Cached>>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        // A new revision of a key makes its old tokens unreachable: drop
        // them so a rotated key's tokens do not linger.
        slots.retain(|(id, rev, _), _| id != &key.0 || *rev >= key.1);
        Arc::clone(slots.entry(key).or_default())
    }

    /// Drops every token (the vault locked).
    pub fn clear(&self) {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// A token for record `id` at `revision`: the cached one while it has
    /// more than [`AHEAD`] left, else a new one (one mint at a time per
    /// slot). When minting fails, a cached token that still works is
    /// served, with the failure as the second value.
    pub async fn get(
        &self,
        id: &str,
        revision: u64,
        scopes: &[String],
        mint: impl std::future::Future<Output = Result<(SecretValue, Timestamp), WireError>>,
    ) -> Result<(SecretValue, Timestamp, Option<String>), WireError> {
        let slot = self.slot((id.to_owned(), revision, scopes.join(" ")));
        let mut cached = slot.lock().await;
        let now = Timestamp::now();
        if let Some(c) = cached.as_ref()
            && c.expires_at.unix() - now.unix() > AHEAD.as_secs() as i64
        {
            return Ok((c.token.duplicate(), c.expires_at, None));
        }
        match mint.await {
            Ok((token, expires_at)) => {
                *cached = Some(Cached {
                    token: token.duplicate(),
                    expires_at,
                });
                Ok((token, expires_at, None))
            }
            Err(e) => match cached.as_ref().filter(|c| c.expires_at > now) {
                Some(c) => Ok((c.token.duplicate(), c.expires_at, Some(e.message))),
                None => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_that_cannot_mint_say_why_without_the_key() {
        let e = parse_key(
            r#"{"type":"authorized_user","refresh_token":"SECRET"}"#,
            "me",
        )
        .unwrap_err();
        assert!(e.contains("client_id") && !e.contains("SECRET"), "{e}");
        let e = parse_key(r#"{"type":"external_account","audience":"SECRET"}"#, "ext").unwrap_err();
        assert!(
            e.contains("external_account") && !e.contains("SECRET"),
            "{e}"
        );
        let e = parse_key(
            r#"{"type":"service_account","client_email":"a@b","private_key":"SECRET"}"#,
            "sa",
        )
        .unwrap_err();
        assert!(e.contains("not PEM") && !e.contains("SECRET"), "{e}");
        let e = parse_key("SECRET", "x").unwrap_err();
        assert!(!e.contains("SECRET"), "{e}");
    }

    #[test]
    fn only_googles_endpoints_or_listed_ones_get_the_assertion() {
        let key = |uri: &str| Key {
            client_email: "a@b".into(),
            token_uri: uri.into(),
            grant: Grant::Assertion {
                private_key_id: None,
                pkcs8: Zeroizing::new(vec![]),
            },
        };
        assert!(check_token_uri(&key(GOOGLE_TOKEN_URIS[0]), &[], "k").is_ok());
        let other = "https://evil.example/token";
        let e = check_token_uri(&key(other), &[], "k").unwrap_err();
        assert!(e.contains("[gcp] token_uris"), "{e}");
        assert!(check_token_uri(&key(other), &[other.to_owned()], "k").is_ok());
    }

    #[test]
    fn a_login_asks_with_its_refresh_token_and_only_narrower_scopes_by_name() {
        let key = parse_key(
            r#"{"type":"authorized_user","client_id":"c.apps","client_secret":"s+/=",
                "refresh_token":"1//r t","account":"me@example.com"}"#,
            "me",
        )
        .unwrap();
        assert_eq!(key.client_email, "me@example.com");
        assert_eq!(key.token_uri, GOOGLE_TOKEN_URIS[0]);
        let form = grant_form(&key, &[DEFAULT_SCOPE.to_owned()], 0).unwrap();
        assert_eq!(
            form.as_str(),
            "grant_type=refresh_token&client_id=c.apps&client_secret=s%2B%2F%3D&refresh_token=1%2F%2Fr%20t"
        );
        let narrow = ["https://www.googleapis.com/auth/devstorage.read_only".to_owned()];
        let form = grant_form(&key, &narrow, 0).unwrap();
        assert!(
            form.ends_with("&scope=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fdevstorage.read_only")
        );
        assert!(!format!("{key:?}").contains("1//r"));
    }

    #[test]
    fn refusals_are_explained() {
        let e = refused(
            "sa",
            400,
            br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
        );
        assert!(e.message.contains("deleted or disabled") && e.message.contains("vault set sa"));
        let e = refused(
            "sa",
            400,
            br#"{"error":"invalid_grant","error_description":"Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim."}"#,
        );
        assert!(e.message.contains("clock"), "{}", e.message);
        let e = refused(
            "me",
            400,
            br#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
        );
        assert!(e.message.contains("sign in again"), "{}", e.message);
    }
}
