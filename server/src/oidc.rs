//! Sign-in through the organisation's identity provider (OpenID Connect).
//!
//! A device gets an ID token from the IdP (device authorization grant,
//! RFC 8628) and sends it to `POST /api/v1/auth/oidc`; this module decides
//! whether to believe it. Discovery (`/.well-known/openid-configuration`)
//! names the JWKS; keys are cached and fetched again when a token names an
//! unknown `kid` (at most once per [`REFETCH_COOLDOWN`]), so a key rotated
//! at the IdP works without a restart.
//!
//! Checks, in order, each refusal naming the check and never the token:
//! size and shape, `alg` on the allow-list (RS256, ES256, EdDSA — never
//! `none`, never HMAC: an HMAC "keyed" with the IdP's public key is the
//! classic forgery), a `kid` the IdP publishes whose key type matches the
//! alg, the signature, `iss` (exact), `aud` (one of the configured
//! audiences), `exp`/`nbf`/`iat` with [`CLOCK_SKEW`] seconds of skew, and the
//! user-name claim. Everything in the discovery document and the JWKS is
//! hostile input: sizes are bounded, the JWKS address must be https (or
//! loopback http when the issuer is), and unusable keys are skipped.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::Value;
use vault_protocol::server_api::validate_id;

/// Seconds of clock difference allowed between the IdP and this server on
/// `exp`, `nbf` and `iat`.
pub const CLOCK_SKEW: i64 = 60;
/// Largest ID token accepted.
pub const MAX_ID_TOKEN_BYTES: usize = 16 << 10;
/// Largest discovery document or JWKS read from the IdP.
const MAX_DOC_BYTES: usize = 256 << 10;
/// Most keys kept from one JWKS.
const MAX_KEYS: usize = 64;
/// Shortest time between two JWKS fetches caused by unknown `kid`s: a
/// stream of forged kids cannot make this server hammer the IdP.
pub const REFETCH_COOLDOWN: Duration = Duration::from_secs(10);
/// Keys older than this are fetched again before use, so a key the IdP
/// withdrew stops working within the hour.
const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);
/// Bound of one request to the IdP.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Algorithms accepted on ID tokens.
pub const ALLOWED_ALGS: [&str; 3] = ["RS256", "ES256", "EdDSA"];

/// How this server trusts an identity provider (`--oidc-*` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// The issuer, exactly as the IdP's discovery document and tokens name it.
    pub issuer: String,
    /// OAuth client ids devices use; the first is announced to devices.
    pub client_ids: Vec<String>,
    /// Accepted `aud` values (default: the client ids).
    pub audiences: Vec<String>,
    /// The claim that names the vault-server user.
    pub username_claim: String,
    /// Dotted path of the claim that carries groups or roles.
    pub groups_claim: String,
    /// Claim value → vault-server role (a value may map to several roles).
    pub role_map: Vec<(String, String)>,
    /// Scopes devices ask for.
    pub scopes: Vec<String>,
    /// Create a user at its first sign-in.
    pub create_users: bool,
    /// How long roles mapped at a sign-in count for the user's access
    /// tokens without another sign-in.
    pub role_ttl: Duration,
}

impl OidcConfig {
    /// Checks the settings: an https issuer (http only on loopback), at least
    /// one client id, valid role names in the mapping.
    pub fn validate(&self) -> Result<(), String> {
        check_url("--oidc-issuer", &self.issuer, None)?;
        if self.client_ids.is_empty() {
            return Err("--oidc-issuer needs at least one --oidc-client-id".to_owned());
        }
        if self
            .client_ids
            .iter()
            .chain(&self.audiences)
            .any(|c| c.is_empty() || c.len() > 512)
        {
            return Err("an --oidc-client-id or --oidc-audience is empty or too long".to_owned());
        }
        for (value, role) in &self.role_map {
            if value.is_empty() {
                return Err(format!(
                    "--oidc-role-map '={role}': the claim value is empty"
                ));
            }
            validate_id("role in --oidc-role-map", role)?;
        }
        if self.username_claim.is_empty() || self.groups_claim.is_empty() {
            return Err(
                "--oidc-username-claim and --oidc-groups-claim must not be empty".to_owned(),
            );
        }
        Ok(())
    }

    /// The accepted audiences: `--oidc-audience`, else the client ids.
    fn accepted_audiences(&self) -> &[String] {
        if self.audiences.is_empty() {
            &self.client_ids
        } else {
            &self.audiences
        }
    }

    /// The roles the mapping gives to these claim values, sorted, once each.
    pub fn mapped_roles(&self, groups: &[String]) -> Vec<String> {
        let mut roles: Vec<String> = self
            .role_map
            .iter()
            .filter(|(value, _)| groups.contains(value))
            .map(|(_, role)| role.clone())
            .collect();
        roles.sort();
        roles.dedup();
        roles
    }
}

/// Parses `VALUE=ROLE` (the last `=` splits: claim values may hold `=`).
pub fn parse_role_map(s: &str) -> Result<(String, String), String> {
    let (value, role) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("--oidc-role-map {s:?}: expected CLAIM_VALUE=ROLE"))?;
    Ok((value.to_owned(), role.to_owned()))
}

/// `url` is https, or http on a loopback host; `issuer_http` (when given)
/// says whether the issuer itself was loopback http, the only case where
/// a document it serves may name another http address.
fn check_url(what: &str, url: &str, issuer_http: Option<bool>) -> Result<(), String> {
    vault_protocol::credential::check_endpoint_url(what, url)?;
    if url.len() > 2048 {
        return Err(format!("{what} is longer than 2048 bytes"));
    }
    if issuer_http == Some(false) && url.starts_with("http://") {
        return Err(format!(
            "{what} '{}' must be https, as the issuer is",
            url.escape_debug()
        ));
    }
    Ok(())
}

/// A `sub` this server binds users to: 1..=255 bytes, no control
/// characters (it is shown to admins in the bind command, and logged).
fn check_sub(sub: &str) -> Result<(), &'static str> {
    if sub.is_empty() || sub.len() > 255 {
        return Err("the ID token has no subject ('sub')");
    }
    if sub.chars().any(char::is_control) {
        return Err("the ID token's subject ('sub') holds control characters");
    }
    Ok(())
}

/// An identity-provider account as this server binds it, `ISSUER SUB`
/// (what `vault-server user bind` takes): the issuer a URL `--oidc-issuer`
/// would take, the subject one an ID token may carry.
pub fn check_account(account: &str) -> Result<(), String> {
    let (issuer, sub) = account
        .split_once(' ')
        .ok_or("no space between ISSUER and SUB")?;
    check_url("the issuer", issuer, None)?;
    check_sub(sub).map_err(str::to_owned)
}

/// Who an accepted ID token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `ISSUER SUB`: the IdP's stable id of the person, bound to one user.
    pub subject: String,
    /// The vault-server user name (the username claim).
    pub user: String,
    /// Values of the groups claim.
    pub groups: Vec<String>,
    /// The token's `exp`.
    pub expires_at: i64,
}

/// Why an ID token was refused, or why it could not be checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OidcError {
    /// The token failed a check; the message names which (answered 401).
    Refused(String),
    /// The IdP could not be asked for its keys (answered 503).
    IdpUnavailable(String),
    /// The token names a key not among those fetched less than
    /// [`REFETCH_COOLDOWN`] ago: maybe rotated since, maybe forged
    /// (answered 503 "try again", counted as a failed login).
    KeyNotYetFetched(String),
}

impl std::fmt::Display for OidcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OidcError::Refused(m)
            | OidcError::IdpUnavailable(m)
            | OidcError::KeyNotYetFetched(m) => f.write_str(m),
        }
    }
}

fn refused(msg: impl Into<String>) -> OidcError {
    OidcError::Refused(msg.into())
}

/// A claim value shown in an error: escaped and cut short (it came from a
/// token nobody has verified yet).
fn shown(s: &str) -> String {
    let cut: String = s.chars().take(80).collect();
    let more = if cut.len() < s.len() { "…" } else { "" };
    format!("'{}{more}'", cut.escape_debug())
}

/// A verification key from the JWKS.
#[derive(Clone)]
enum Key {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    P256(Vec<u8>),
    Ed25519(Vec<u8>),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.alg())
    }
}

impl Key {
    /// The one algorithm this key verifies.
    fn alg(&self) -> &'static str {
        match self {
            Key::Rsa { .. } => "RS256",
            Key::P256(_) => "ES256",
            Key::Ed25519(_) => "EdDSA",
        }
    }

    fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        match self {
            Key::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig)
                .is_ok(),
            Key::P256(point) => UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(message, sig)
                .is_ok(),
            Key::Ed25519(x) => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(message, sig)
                .is_ok(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

fn b64(s: Option<&String>) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s?.trim_end_matches('=')).ok()
}

/// The key a JWK describes, if it is a signing key of an allowed kind.
fn key_of(jwk: &Jwk) -> Option<Key> {
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let key = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => Key::Rsa {
            n: b64(jwk.n.as_ref())?,
            e: b64(jwk.e.as_ref())?,
        },
        ("EC", Some("P-256")) => {
            let (x, y) = (b64(jwk.x.as_ref())?, b64(jwk.y.as_ref())?);
            if x.len() != 32 || y.len() != 32 {
                return None;
            }
            let mut point = vec![4u8];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Key::P256(point)
        }
        ("OKP", Some("Ed25519")) => {
            let x = b64(jwk.x.as_ref())?;
            if x.len() != 32 {
                return None;
            }
            Key::Ed25519(x)
        }
        _ => return None,
    };
    // A key that names an algorithm is used for that one only.
    match jwk.alg.as_deref() {
        Some(alg) if alg != key.alg() => None,
        _ => Some(key),
    }
}

/// The keys of one fetched JWKS.
#[derive(Debug, Default)]
struct KeySet {
    by_kid: HashMap<String, Key>,
    /// Keys without a `kid` (used only by tokens without one).
    unnamed: Vec<Key>,
    fetched: Option<Instant>,
}

impl KeySet {
    fn find(&self, kid: Option<&str>, alg: &str) -> Option<Key> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            None => {
                let mut fit = self
                    .by_kid
                    .values()
                    .chain(&self.unnamed)
                    .filter(|k| k.alg() == alg);
                match (fit.next(), fit.next()) {
                    (Some(k), None) => Some(k.clone()),
                    _ => None,
                }
            }
        }
    }

    fn stale(&self) -> bool {
        self.fetched.is_none_or(|at| at.elapsed() > KEYS_MAX_AGE)
    }
}

#[derive(Debug, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
    #[serde(default)]
    typ: Option<String>,
}

/// The identity provider this server trusts, with its cached keys.
#[derive(Debug)]
pub struct Oidc {
    config: OidcConfig,
    http: reqwest::Client,
    keys: RwLock<Arc<KeySet>>,
    /// Held while fetching; when the last attempt was, and how it ended.
    fetching: tokio::sync::Mutex<Option<(Instant, Result<(), OidcError>)>>,
}

impl Oidc {
    /// Trusts the IdP `config` names (validated). Nothing is fetched yet.
    pub fn new(config: OidcConfig) -> Result<Self, String> {
        config.validate()?;
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("vault-server/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client for the identity provider: {e}"))?;
        Ok(Oidc {
            config,
            http,
            keys: RwLock::new(Arc::default()),
            fetching: tokio::sync::Mutex::new(None),
        })
    }

    /// The settings.
    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    fn cached(&self) -> Arc<KeySet> {
        self.keys.read().map(|k| Arc::clone(&k)).unwrap_or_default()
    }

    /// Fetches discovery and the JWKS now (at start, to warn early).
    pub async fn prefetch(&self) -> Result<usize, OidcError> {
        self.refetch()
            .await
            .map(|(k, _)| k.by_kid.len() + k.unnamed.len())
    }

    /// Checks `token` at time `now`; the identity it proves.
    pub async fn verify(&self, token: &str, now: i64) -> Result<Identity, OidcError> {
        if token.len() > MAX_ID_TOKEN_BYTES {
            return Err(refused(format!(
                "the ID token is larger than {} KiB",
                MAX_ID_TOKEN_BYTES >> 10
            )));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(refused(
                "not an ID token: expected a signed JWT (three base64url parts separated by dots)",
            ));
        };
        let header: Header = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| refused("the ID token's header is not base64url JSON with an 'alg'"))?;
        check_alg(&header.alg)?;
        if header
            .typ
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("at+jwt"))
        {
            return Err(refused(
                "the token is an access token ('typ: at+jwt'), not an ID token",
            ));
        }
        if header.crit.is_some() {
            return Err(refused(
                "the ID token's header has 'crit' extensions this server does not understand",
            ));
        }
        let key = self.key_for(header.kid.as_deref(), &header.alg).await?;
        if key.alg() != header.alg {
            return Err(refused(format!(
                "the ID token says alg {} but its key {} is a {} key",
                shown(&header.alg),
                shown(header.kid.as_deref().unwrap_or("")),
                key.alg()
            )));
        }
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| refused("the ID token's signature is not base64url"))?;
        let signed = &token[..h.len() + 1 + p.len()];
        if !key.verify(signed.as_bytes(), &sig) {
            return Err(refused(
                "the ID token's signature does not verify with the identity provider's key",
            ));
        }
        let claims: serde_json::Map<String, Value> = URL_SAFE_NO_PAD
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| refused("the ID token's payload is not a JSON object"))?;
        self.check_claims(&claims, now)
    }

    fn check_claims(
        &self,
        claims: &serde_json::Map<String, Value>,
        now: i64,
    ) -> Result<Identity, OidcError> {
        let c = &self.config;
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        match text("iss") {
            Some(iss) if iss == c.issuer => {}
            // Google's ID tokens may name its issuer without the scheme
            // (OpenID Connect Core 1.0, section 15.6.2).
            Some("accounts.google.com") if c.issuer == "https://accounts.google.com" => {}
            Some(iss) => {
                return Err(refused(format!(
                    "wrong issuer: the ID token is from {}, this server trusts {}",
                    shown(iss),
                    shown(&c.issuer)
                )));
            }
            None => return Err(refused("the ID token has no issuer ('iss')")),
        }
        let auds: Vec<&str> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let accepted = c.accepted_audiences();
        if !auds.iter().any(|a| accepted.iter().any(|x| x == a)) {
            return Err(refused(format!(
                "wrong audience: the ID token is for {}, this server accepts {}",
                if auds.is_empty() {
                    "nobody".to_owned()
                } else {
                    auds.iter().map(|a| shown(a)).collect::<Vec<_>>().join(", ")
                },
                accepted
                    .iter()
                    .map(|a| shown(a))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        // An ID token for this client, not another client's access token
        // that lists it among several audiences.
        if let Some(azp) = text("azp")
            && !c.client_ids.iter().any(|id| id == azp)
        {
            return Err(refused(format!(
                "the token was issued to client {} ('azp'), not to {}",
                shown(azp),
                c.client_ids
                    .iter()
                    .map(|a| shown(a))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if auds.len() > 1 && text("azp").is_none() {
            return Err(refused(
                "the token names several audiences and no authorized party ('azp')",
            ));
        }
        if let Some(typ) = text("typ")
            && !typ.eq_ignore_ascii_case("ID")
        {
            return Err(refused(format!(
                "the token is of type {}, not an ID token",
                shown(typ)
            )));
        }
        let time = |name: &str| claims.get(name).and_then(Value::as_i64);
        let exp = time("exp").ok_or_else(|| refused("the ID token has no expiry ('exp')"))?;
        if now > exp.saturating_add(CLOCK_SKEW) {
            return Err(refused(format!(
                "the ID token expired at {} (allowed clock skew {CLOCK_SKEW} s); sign in again",
                vault_protocol::timefmt::Timestamp(exp)
            )));
        }
        if let Some(nbf) = time("nbf")
            && nbf > now.saturating_add(CLOCK_SKEW)
        {
            return Err(refused(format!(
                "the ID token is not valid before {} (allowed clock skew {CLOCK_SKEW} s); check this server's clock",
                vault_protocol::timefmt::Timestamp(nbf)
            )));
        }
        if let Some(iat) = time("iat")
            && iat > now.saturating_add(CLOCK_SKEW)
        {
            return Err(refused(format!(
                "the ID token was issued in the future ({}; allowed clock skew {CLOCK_SKEW} s); check this server's clock",
                vault_protocol::timefmt::Timestamp(iat)
            )));
        }
        let sub = text("sub").unwrap_or_default();
        check_sub(sub).map_err(refused)?;
        let user = text(&c.username_claim).ok_or_else(|| {
            refused(format!(
                "the ID token has no {} claim to name the user; set --oidc-username-claim",
                shown(&c.username_claim)
            ))
        })?;
        validate_id("user name", user).map_err(|e| {
            refused(format!(
                "the ID token's {} claim is not a valid user name: {e}",
                shown(&c.username_claim)
            ))
        })?;
        let top = c.groups_claim.split('.').next().unwrap_or("");
        if claims.get(top).is_none()
            && claims
                .get("_claim_names")
                .and_then(|n| n.get(top))
                .is_some()
        {
            // Entra ID's "groups overage": too many groups for a token, the
            // claim moved to a Graph call. Mapping none would take every
            // mapped role away.
            return Err(refused(format!(
                "the ID token's {} claim was left out (too many groups for a token, '_claim_names'); map app roles instead, or limit the groups the IdP emits",
                shown(&c.groups_claim)
            )));
        }
        Ok(Identity {
            subject: format!("{} {sub}", c.issuer),
            user: user.to_owned(),
            groups: groups_at(claims, &c.groups_claim),
            expires_at: exp,
        })
    }

    /// The key for `kid`, fetching the JWKS when it is unknown (or stale).
    async fn key_for(&self, kid: Option<&str>, alg: &str) -> Result<Key, OidcError> {
        let keys = self.cached();
        if !keys.stale()
            && let Some(k) = keys.find(kid, alg)
        {
            return Ok(k);
        }
        let (keys, fetched_now) = match self.refetch().await {
            Ok(fetched) => fetched,
            // The IdP is down: keys we have still verify what they signed.
            Err(e) => match keys.find(kid, alg) {
                Some(k) => {
                    tracing::warn!(error = %e, "identity provider unreachable; using its cached keys");
                    return Ok(k);
                }
                None => return Err(e),
            },
        };
        keys.find(kid, alg).ok_or_else(|| match kid {
            // Keys fetched within the cooldown may predate a rotation that
            // followed: "try again", not "sign in again".
            Some(kid) if !fetched_now => OidcError::KeyNotYetFetched(format!(
                "the ID token's signing key {} is not among the identity provider's keys fetched \
                 less than {}s ago; they are fetched again after that: try again shortly",
                shown(kid),
                REFETCH_COOLDOWN.as_secs()
            )),
            _ => refused(match kid {
                Some(kid) => format!(
                    "the ID token's signing key {} is not among the identity provider's keys",
                    shown(kid)
                ),
                None => format!(
                    "the ID token names no key ('kid') and the identity provider has no single {alg} key"
                ),
            }),
        })
    }

    /// Fetches discovery and the JWKS (true: fetched by this call), unless
    /// the last attempt was less than [`REFETCH_COOLDOWN`] ago (maybe by a
    /// caller this one waited for): then that attempt's outcome stands.
    async fn refetch(&self) -> Result<(Arc<KeySet>, bool), OidcError> {
        let mut last = self.fetching.lock().await;
        if let Some((at, outcome)) = &*last
            && at.elapsed() < REFETCH_COOLDOWN
        {
            return match outcome {
                Ok(()) => Ok((self.cached(), false)),
                Err(e) => Err(e.clone()),
            };
        }
        let fetched = self.fetch_keys().await;
        *last = Some((
            Instant::now(),
            fetched.as_ref().map(|_| ()).map_err(Clone::clone),
        ));
        let set = Arc::new(fetched?);
        if let Ok(mut k) = self.keys.write() {
            *k = Arc::clone(&set);
        }
        tracing::info!(
            keys = set.by_kid.len() + set.unnamed.len(),
            "fetched the identity provider's signing keys"
        );
        Ok((set, true))
    }

    async fn fetch_keys(&self) -> Result<KeySet, OidcError> {
        let issuer = &self.config.issuer;
        let discovery = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let doc: Value = self.get_json(&discovery).await?;
        let named = doc.get("issuer").and_then(Value::as_str).unwrap_or("");
        if named != issuer {
            return Err(OidcError::IdpUnavailable(format!(
                "the identity provider's discovery document names issuer {}, not {}; set --oidc-issuer to the exact issuer",
                shown(named),
                shown(issuer)
            )));
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| OidcError::IdpUnavailable(format!("{discovery} names no jwks_uri")))?;
        check_url(
            "the identity provider's jwks_uri",
            jwks_uri,
            Some(issuer.starts_with("http://")),
        )
        .map_err(OidcError::IdpUnavailable)?;
        let jwks: Value = self.get_json(jwks_uri).await?;
        key_set(&jwks).ok_or_else(|| {
            OidcError::IdpUnavailable(format!(
                "the identity provider's JWKS at {} has no 'keys'",
                shown(jwks_uri)
            ))
        })
    }

    /// An `Oidc` whose key cache holds `jwks` as if just fetched (and whose
    /// fetch cooldown has just started, so nothing is fetched for
    /// [`REFETCH_COOLDOWN`]): for benchmarks and tests.
    pub fn with_cached_jwks(config: OidcConfig, jwks: &Value) -> Result<Self, String> {
        let mut oidc = Oidc::new(config)?;
        let set = key_set(jwks).ok_or("the JWKS has no 'keys'")?;
        oidc.keys = RwLock::new(Arc::new(set));
        oidc.fetching = tokio::sync::Mutex::new(Some((Instant::now(), Ok(()))));
        Ok(oidc)
    }

    async fn get_json(&self, url: &str) -> Result<Value, OidcError> {
        let down = |why: String| {
            OidcError::IdpUnavailable(format!(
                "the identity provider cannot be reached ({why}); sign-in fails until it answers"
            ))
        };
        let mut resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| down(format!("{}: {}", shown(url), crate::error::with_causes(&e))))?;
        if !resp.status().is_success() {
            return Err(down(format!("{} answered {}", shown(url), resp.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| down(crate::error::with_causes(&e)))?
        {
            if body.len() + chunk.len() > MAX_DOC_BYTES {
                return Err(down(format!(
                    "{} is larger than {} KiB",
                    shown(url),
                    MAX_DOC_BYTES >> 10
                )));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| down(format!("{} is not JSON: {e}", shown(url))))
    }
}

/// The usable signing keys of a JWKS (at most [`MAX_KEYS`] are read);
/// `None` when it has no `keys` list.
fn key_set(jwks: &Value) -> Option<KeySet> {
    let mut set = KeySet {
        fetched: Some(Instant::now()),
        ..KeySet::default()
    };
    for jwk in jwks.get("keys")?.as_array()?.iter().take(MAX_KEYS) {
        let Ok(jwk) = serde_json::from_value::<Jwk>(jwk.clone()) else {
            continue;
        };
        let Some(key) = key_of(&jwk) else { continue };
        match jwk.kid {
            Some(kid) if kid.len() <= 256 => {
                set.by_kid.insert(kid, key);
            }
            Some(_) => {}
            None => set.unnamed.push(key),
        }
    }
    Some(set)
}

fn check_alg(alg: &str) -> Result<(), OidcError> {
    if ALLOWED_ALGS.contains(&alg) {
        return Ok(());
    }
    let allowed = ALLOWED_ALGS.join(", ");
    Err(refused(if alg.eq_ignore_ascii_case("none") {
        format!("alg 'none' is never accepted: the ID token is unsigned (accepted: {allowed})")
    } else if alg.starts_with("HS") {
        format!(
            "alg {} is not accepted: an HMAC token proves nothing about the identity provider (accepted: {allowed})",
            shown(alg)
        )
    } else {
        format!("alg {} is not accepted (accepted: {allowed})", shown(alg))
    }))
}

/// The string values at a dotted claim path (`groups`, `realm_access.roles`);
/// a single string counts as one value. A claim whose name itself holds a
/// dot is found first.
pub fn groups_at(claims: &serde_json::Map<String, Value>, path: &str) -> Vec<String> {
    let mut at = claims.get(path);
    if at.is_none() {
        let mut parts = path.split('.');
        at = parts.next().and_then(|first| claims.get(first));
        for part in parts {
            at = at.and_then(|v| v.get(part));
        }
    }
    let mut out: Vec<String> = match at {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    out.truncate(1024);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};
    use serde_json::json;

    use super::*;

    const ISSUER: &str = "https://idp.example.test/realms/acme";
    const NOW: i64 = 1_800_000_000;

    fn config() -> OidcConfig {
        OidcConfig {
            issuer: ISSUER.into(),
            client_ids: vec!["vault-cli".into()],
            audiences: vec![],
            username_claim: "preferred_username".into(),
            groups_claim: "groups".into(),
            role_map: vec![
                ("LDAP_ML_TEAM".into(), "ml-team".into()),
                ("LDAP_OPS".into(), "ops".into()),
                ("LDAP_ML_TEAM".into(), "reader".into()),
            ],
            scopes: vec!["openid".into()],
            create_users: true,
            role_ttl: Duration::from_secs(86400),
        }
    }

    struct Signer {
        es: EcdsaKeyPair,
        ed: Ed25519KeyPair,
    }

    impl Signer {
        fn new() -> Self {
            let rng = SystemRandom::new();
            let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
            let es = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
            let ed = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
            Signer { es, ed }
        }

        fn jwks(&self) -> Value {
            let point = self.es.public_key().as_ref();
            json!({"keys": [
                {"kty": "EC", "crv": "P-256", "kid": "ec1", "use": "sig", "alg": "ES256",
                 "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])},
                {"kty": "OKP", "crv": "Ed25519", "kid": "ed1",
                 "x": URL_SAFE_NO_PAD.encode(self.ed.public_key().as_ref())},
                {"kty": "EC", "crv": "P-256", "kid": "enc1", "use": "enc",
                 "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])},
                {"kty": "oct", "kid": "hmac1", "k": "c2VjcmV0"}
            ]})
        }

        /// A compact JWS of `claims` under `header`, signed with the key its
        /// `alg` names (or not signed at all for other algs).
        fn token(&self, header: Value, claims: &Value) -> String {
            let h = URL_SAFE_NO_PAD.encode(header.to_string());
            let p = URL_SAFE_NO_PAD.encode(claims.to_string());
            let input = format!("{h}.{p}");
            let sig = match header["alg"].as_str() {
                Some("ES256") => self
                    .es
                    .sign(&SystemRandom::new(), input.as_bytes())
                    .unwrap()
                    .as_ref()
                    .to_vec(),
                Some("EdDSA") => self.ed.sign(input.as_bytes()).as_ref().to_vec(),
                Some(a) if a.starts_with("HS") => {
                    // The classic forgery: HMAC keyed with the public key.
                    let key = hmac::Key::new(hmac::HMAC_SHA256, self.es.public_key().as_ref());
                    hmac::sign(&key, input.as_bytes()).as_ref().to_vec()
                }
                _ => Vec::new(),
            };
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
        }
    }

    use ring::hmac;

    fn claims() -> Value {
        json!({"iss": ISSUER, "aud": "vault-cli", "sub": "f3a9", "exp": NOW + 300,
               "iat": NOW, "preferred_username": "alice", "groups": ["LDAP_ML_TEAM", "other"]})
    }

    fn check(signer: &Signer, header: Value, claims: &Value) -> Result<Identity, OidcError> {
        check_with(config(), signer, header, claims)
    }

    fn check_with(
        config: OidcConfig,
        signer: &Signer,
        header: Value,
        claims: &Value,
    ) -> Result<Identity, OidcError> {
        let oidc = Oidc::with_cached_jwks(config, &signer.jwks()).unwrap();
        let token = signer.token(header, claims);
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(oidc.verify(&token, NOW))
    }

    fn refusal(r: Result<Identity, OidcError>) -> String {
        match r {
            Err(OidcError::Refused(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_good_token_names_its_user_and_groups_and_maps_roles() {
        let s = Signer::new();
        for header in [
            json!({"alg": "ES256", "kid": "ec1"}),
            json!({"alg": "EdDSA", "kid": "ed1"}),
        ] {
            let id = check(&s, header, &claims()).unwrap();
            assert_eq!(id.user, "alice");
            assert_eq!(id.subject, format!("{ISSUER} f3a9"));
            assert_eq!(id.groups, ["LDAP_ML_TEAM", "other"]);
            assert_eq!(id.expires_at, NOW + 300);
            assert_eq!(config().mapped_roles(&id.groups), ["ml-team", "reader"]);
        }
    }

    #[test]
    fn every_check_refuses_and_says_which() {
        let s = Signer::new();
        let es = || json!({"alg": "ES256", "kid": "ec1"});
        let with = |k: &str, v: Value| {
            let mut c = claims();
            c[k] = v;
            c
        };
        let cases: Vec<(Value, Value, &str)> = vec![
            (
                json!({"alg": "none", "kid": "ec1"}),
                claims(),
                "alg 'none' is never accepted",
            ),
            (
                json!({"alg": "HS256", "kid": "ec1"}),
                claims(),
                "alg 'HS256' is not accepted",
            ),
            (
                json!({"alg": "HS256", "kid": "hmac1"}),
                claims(),
                "alg 'HS256' is not accepted",
            ),
            (
                json!({"alg": "RS384", "kid": "ec1"}),
                claims(),
                "alg 'RS384' is not accepted",
            ),
            (
                json!({"alg": "RS256", "kid": "ec1"}),
                claims(),
                "is a ES256 key",
            ),
            (
                json!({"alg": "ES256", "kid": "ec1", "crit": ["exp"]}),
                claims(),
                "'crit'",
            ),
            (
                es(),
                with("iss", json!("https://evil.example.test")),
                "wrong issuer",
            ),
            (es(), with("aud", json!("someone-else")), "wrong audience"),
            (es(), with("aud", json!(["a", "b"])), "wrong audience"),
            // Another client's access token that lists this one too.
            (
                es(),
                with("aud", json!(["grafana", "vault-cli"])),
                "no authorized party",
            ),
            (
                es(),
                with("azp", json!("grafana")),
                "issued to client 'grafana'",
            ),
            (es(), with("typ", json!("Bearer")), "of type 'Bearer'"),
            (
                json!({"alg": "ES256", "kid": "ec1", "typ": "at+jwt"}),
                claims(),
                "access token",
            ),
            (es(), with("exp", json!(NOW - CLOCK_SKEW - 1)), "expired"),
            (es(), with("exp", json!("tomorrow")), "no expiry"),
            (
                es(),
                with("nbf", json!(NOW + CLOCK_SKEW + 5)),
                "not valid before",
            ),
            (
                es(),
                with("iat", json!(NOW + CLOCK_SKEW + 5)),
                "issued in the future",
            ),
            (es(), with("sub", json!("")), "no subject"),
            (
                es(),
                with("sub", json!("a\nb\u{1b}[2J")),
                "subject ('sub') holds control characters",
            ),
            (
                es(),
                with("preferred_username", json!("../root")),
                "not a valid user name",
            ),
            (
                es(),
                with("preferred_username", json!(null)),
                "no 'preferred_username' claim",
            ),
        ];
        for (header, c, want) in cases {
            let got = refusal(check(&s, header.clone(), &c));
            assert!(got.contains(want), "{header} {c}: {got:?} lacks {want:?}");
        }
        // Within the skew is fine.
        check(&s, es(), &with("exp", json!(NOW - CLOCK_SKEW + 1))).unwrap();
        let mut two = with("aud", json!(["other", "vault-cli"]));
        two["azp"] = json!("vault-cli");
        check(&s, es(), &two).unwrap();
    }

    #[test]
    fn an_unknown_key_within_the_refetch_cooldown_is_try_again_not_refused() {
        // Keys fetched just now; the IdP may have rotated since.
        // (An encryption key, 'enc1', is no signing key either.)
        let s = Signer::new();
        for kid in ["rotated-since", "enc1"] {
            match check(&s, json!({"alg": "ES256", "kid": kid}), &claims()) {
                Err(OidcError::KeyNotYetFetched(m)) => {
                    assert!(
                        m.contains(&format!("'{kid}'")) && m.contains("try again"),
                        "{m}"
                    );
                }
                other => panic!("expected try-again, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_tampered_or_malformed_token_is_refused_without_being_echoed() {
        let s = Signer::new();
        let oidc = Oidc::with_cached_jwks(config(), &s.jwks()).unwrap();
        let good = s.token(json!({"alg": "ES256", "kid": "ec1"}), &claims());
        let (input, _) = good.rsplit_once('.').unwrap();
        // Another person's claims under alice's signature.
        let (h, _) = input.split_once('.').unwrap();
        let mut c = claims();
        c["preferred_username"] = json!("mallory");
        let forged = format!(
            "{h}.{}.{}",
            URL_SAFE_NO_PAD.encode(c.to_string()),
            good.rsplit_once('.').unwrap().1
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for (token, want) in [
            (forged.as_str(), "signature does not verify"),
            ("a.b", "not an ID token"),
            ("a.b.c.d", "not an ID token"),
            ("!!.b.c", "header is not base64url JSON"),
        ] {
            let got = refusal(rt.block_on(oidc.verify(token, NOW)));
            assert!(got.contains(want), "{got}");
            assert!(
                !got.contains(token) || token.len() < 8,
                "echoed the token: {got}"
            );
        }
        let huge = "a".repeat(MAX_ID_TOKEN_BYTES + 1);
        assert!(refusal(rt.block_on(oidc.verify(&huge, NOW))).contains("larger than"));
    }

    #[test]
    fn groups_come_from_a_dotted_path_and_an_overage_is_refused() {
        let s = Signer::new();
        let es = json!({"alg": "ES256", "kid": "ec1"});
        let mut cfg = config();
        cfg.groups_claim = "realm_access.roles".into();
        let mut c = claims();
        c["realm_access"] = json!({"roles": ["LDAP_OPS"]});
        let id = check_with(cfg.clone(), &s, es.clone(), &c).unwrap();
        assert_eq!(id.groups, ["LDAP_OPS"]);
        assert_eq!(cfg.mapped_roles(&id.groups), ["ops"]);
        // One string counts as one value.
        c["realm_access"] = json!({"roles": "LDAP_OPS"});
        assert_eq!(
            check_with(cfg, &s, es.clone(), &c).unwrap().groups,
            ["LDAP_OPS"]
        );
        // No groups claim at all: no groups.
        let mut c = claims();
        c.as_object_mut().unwrap().remove("groups");
        assert!(check(&s, es.clone(), &c).unwrap().groups.is_empty());
        // Entra's overage: the claim moved out of the token.
        c["_claim_names"] = json!({"groups": "src1"});
        assert!(refusal(check(&s, es, &c)).contains("left out"));
    }

    #[test]
    fn google_names_its_issuer_two_ways() {
        let s = Signer::new();
        let mut cfg = config();
        cfg.issuer = "https://accounts.google.com".into();
        let mut c = claims();
        c["iss"] = json!("accounts.google.com");
        check_with(cfg.clone(), &s, json!({"alg": "ES256", "kid": "ec1"}), &c).unwrap();
        // Not for anyone else.
        assert!(
            refusal(check(&s, json!({"alg": "ES256", "kid": "ec1"}), &c)).contains("wrong issuer")
        );
    }

    #[test]
    fn settings_are_checked() {
        let ok = config();
        ok.validate().unwrap();
        let bad = |f: &dyn Fn(&mut OidcConfig)| {
            let mut c = config();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(
            bad(&|c| c.issuer = "http://idp.example.test".into())
                .contains("must be an https:// URL")
        );
        assert!(bad(&|c| c.issuer = "ftp://x".into()).contains("https://"));
        assert!(bad(&|c| c.client_ids.clear()).contains("--oidc-client-id"));
        assert!(bad(&|c| c.role_map.push(("G".into(), "bad role".into()))).contains("role"));
        let mut local = config();
        local.issuer = "http://127.0.0.1:9999".into();
        local.validate().unwrap();
        assert_eq!(parse_role_map("a=b=c").unwrap(), ("a=b".into(), "c".into()));
        assert!(parse_role_map("nothing").is_err());
        // A loopback http issuer may name an http JWKS; an https one may not.
        assert!(check_url("jwks", "http://127.0.0.1:1/jwks", Some(true)).is_ok());
        assert!(check_url("jwks", "http://127.0.0.1:1/jwks", Some(false)).is_err());
        assert!(check_url("jwks", "http://evil.example/jwks", Some(true)).is_err());
        assert!(check_url("jwks", "http://localhost:1@evil.example/", Some(true)).is_err());
        assert!(check_url("issuer", "https://a@idp.example.test", None).is_err());
    }
}
