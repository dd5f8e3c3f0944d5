//! Wire types of the remote service's HTTP API (`/api/v1`), shared by
//! `vault-server` and the daemon's sync client.
//!
//! Everything here is plain serde data: no HTTP, no storage, no crypto. The
//! server never sees plaintext, so record bodies and the vault identity travel
//! as base64 of the age ciphertext the daemon already stores locally. Bearer
//! secrets (access tokens, JWTs) are [`SecretValue`]s so they print as
//! `[redacted]`.
//!
//! Errors are always `{"error": {"code": "...", "message": "..."}}` with a
//! stable [`ApiErrorCode`]; a 403 also names the missing `action`, and a 409
//! on push carries the `expected_index` the device's log continues at.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::secret::SecretValue;
use crate::timefmt::Timestamp;

/// Every route lives under this prefix.
pub const API_PREFIX: &str = "/api/v1";

/// Largest record (decoded ciphertext) the server accepts.
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// Most records in one push.
pub const MAX_BATCH_RECORDS: usize = 1000;
/// Most decoded ciphertext bytes in one push.
pub const MAX_BATCH_BYTES: usize = 8 << 20;
/// Largest passphrase-encrypted identity (decoded) a vault may hold.
pub const MAX_IDENTITY_BYTES: usize = 64 << 10;
/// Records in a pull page when the request does not say.
pub const DEFAULT_PULL_LIMIT: u32 = 500;
/// Most records in one pull page; larger limits are cut to this.
pub const MAX_PULL_LIMIT: u32 = 1000;
/// A pull page stops adding records once it holds this many decoded bytes
/// (it always holds at least one record when any is due).
pub const MAX_PULL_BYTES: usize = 8 << 20;
/// Longest id (vault, device, user, role, token name).
pub const MAX_ID_LEN: usize = 64;
/// Longest key id.
pub const MAX_KEY_ID_LEN: usize = 128;

/// Checks a vault, device, user, role or token name: 1–64 characters of
/// `[A-Za-z0-9._-]`, starting with a letter or digit. `what` names the thing
/// in the error message.
pub fn validate_id(what: &str, s: &str) -> Result<(), String> {
    let ok_chars = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    let starts_ok = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if s.is_empty() || s.len() > MAX_ID_LEN || !ok_chars || !starts_ok {
        return Err(format!(
            "{what} '{}' is invalid: use 1-{MAX_ID_LEN} characters of A-Z a-z 0-9 . _ -, starting with a letter or digit",
            s.escape_debug()
        ));
    }
    Ok(())
}

/// Checks a key id: 1–128 printable ASCII characters without spaces.
pub fn validate_key_id(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_KEY_ID_LEN || !s.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "key id is invalid: use 1-{MAX_KEY_ID_LEN} printable ASCII characters without spaces"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Errors

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ApiError,
}

/// A typed error: a stable code, a human message, and details for the codes
/// that have them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Machine-readable code.
    pub code: ApiErrorCode,
    /// What happened and what to do next; never contains a secret.
    pub message: String,
    /// For `forbidden`: the action the caller lacks, e.g. `vault:write`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// For `forbidden`: the resource the action was checked on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// For `index_conflict`: the index the device's log continues at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_index: Option<u64>,
}

/// Stable error codes of the HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiErrorCode {
    /// Malformed request: bad JSON, bad id, bad base64 (400).
    BadRequest,
    /// Missing, bad, expired or revoked credential (401).
    Unauthorized,
    /// Authenticated but not allowed; `action` names what is missing (403).
    Forbidden,
    /// Asked a new token for a role the caller does not hold (403).
    RoleNotHeld,
    /// No such vault, user, role, token or route (404).
    NotFound,
    /// Method not allowed on this route (405).
    MethodNotAllowed,
    /// The thing to create exists already (409).
    AlreadyExists,
    /// A push does not continue the device's log; see `expected_index` (409).
    IndexConflict,
    /// A record's key id differs from the vault's (422).
    KeyMismatch,
    /// Body, record or batch over its size limit (413).
    TooLarge,
    /// Too many failed logins from this address or for this token (429).
    RateLimited,
    /// A bug or a storage failure on the server (500).
    Internal,
    /// The storage backend is unreachable (503).
    Unavailable,
    /// A code from a newer server that this build does not know.
    #[serde(other)]
    Unknown,
}

impl ApiErrorCode {
    /// The HTTP status that carries this code.
    pub fn http_status(self) -> u16 {
        match self {
            ApiErrorCode::BadRequest => 400,
            ApiErrorCode::Unauthorized => 401,
            ApiErrorCode::Forbidden | ApiErrorCode::RoleNotHeld => 403,
            ApiErrorCode::NotFound => 404,
            ApiErrorCode::MethodNotAllowed => 405,
            ApiErrorCode::AlreadyExists | ApiErrorCode::IndexConflict => 409,
            ApiErrorCode::TooLarge => 413,
            ApiErrorCode::KeyMismatch => 422,
            ApiErrorCode::RateLimited => 429,
            ApiErrorCode::Internal | ApiErrorCode::Unknown => 500,
            ApiErrorCode::Unavailable => 503,
        }
    }
}

// ---------------------------------------------------------------------------
// Authorization model

/// What a policy may allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Action {
    /// Read a vault: its identity blob, heads and records.
    #[serde(rename = "vault:read")]
    VaultRead,
    /// Push records to a vault.
    #[serde(rename = "vault:write")]
    VaultWrite,
    /// Create a vault.
    #[serde(rename = "vault:admin")]
    VaultAdmin,
    /// Create access tokens for oneself.
    #[serde(rename = "token:create")]
    TokenCreate,
    /// Manage users, roles and other users' tokens.
    #[serde(rename = "user:admin")]
    UserAdmin,
}

impl Action {
    /// Every action, in a stable order.
    pub const ALL: [Action; 5] = [
        Action::VaultRead,
        Action::VaultWrite,
        Action::VaultAdmin,
        Action::TokenCreate,
        Action::UserAdmin,
    ];

    /// The wire spelling, e.g. `vault:read`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::VaultRead => "vault:read",
            Action::VaultWrite => "vault:write",
            Action::VaultAdmin => "vault:admin",
            Action::TokenCreate => "token:create",
            Action::UserAdmin => "user:admin",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Result<Action, String> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown action '{}' (known: vault:read, vault:write, vault:admin, token:create, user:admin)",
                    s.escape_debug()
                )
            })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Allows `actions` on `resources`. A resource is a vault id, `*` (anything),
/// or a prefix ending in `*` (`team-*`). `token:create` and `user:admin` are
/// checked on the resource `*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// What is allowed.
    pub actions: Vec<Action>,
    /// Where it is allowed.
    pub resources: Vec<String>,
}

impl Policy {
    /// True when this policy allows `action` on `resource`.
    pub fn allows(&self, action: Action, resource: &str) -> bool {
        self.actions.contains(&action)
            && self.resources.iter().any(|r| resource_matches(r, resource))
    }
}

/// True when the policy resource `pattern` covers `resource`.
pub fn resource_matches(pattern: &str, resource: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => resource.starts_with(prefix),
        None => pattern == resource,
    }
}

/// A named set of policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Role name (an id).
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// What the role allows.
    pub policies: Vec<Policy>,
}

/// `GET /roles`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleList {
    /// All roles, by name.
    pub roles: Vec<Role>,
}

// ---------------------------------------------------------------------------
// Users

/// `POST /users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewUser {
    /// User name (an id).
    pub name: String,
    /// Roles granted at creation.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// A user as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// User name.
    pub name: String,
    /// Roles granted to the user in vault-server's database.
    pub roles: Vec<String>,
    /// Roles the identity provider's claims gave at the last sign-in
    /// (replaced at every sign-in); the user holds these too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sso_roles: Vec<String>,
    /// When the user was created.
    pub created_at: Timestamp,
    /// Bound to an identity-provider account (signed in through it once).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sso: bool,
    /// The last sign-in, if any was noted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_login: Option<LastLogin>,
}

/// When and how a user last signed in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastLogin {
    /// When.
    pub at: Timestamp,
    /// How: `token` (an access token), `password` (the bootstrap
    /// password) or `sso` (the identity provider).
    pub via: String,
}

/// `GET /auth/oidc`: how a device signs in through the identity provider
/// this server trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OidcInfo {
    /// The issuer; its `/.well-known/openid-configuration` names the
    /// device-authorization and token endpoints.
    pub issuer: String,
    /// The OAuth client id devices use (a public client: no secret).
    pub client_id: String,
    /// The scopes to ask for.
    pub scopes: Vec<String>,
}

/// `GET /users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserList {
    /// All users, by name.
    pub users: Vec<User>,
}

/// `POST /users/{name}/roles`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRole {
    /// The role to grant.
    pub role: String,
}

// ---------------------------------------------------------------------------
// Access tokens and JWTs

/// `POST /tokens`: a new access token for the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    /// Token name, unique per user (an id).
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// When it stops working; the server's default (90 days) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// Roles the token carries; must be held by the caller. All the caller's
    /// roles when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
}

/// An access token's bookkeeping (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Token name.
    pub name: String,
    /// Owner.
    pub user: String,
    /// Free text.
    pub description: String,
    /// The first characters of the token, to recognise it.
    pub prefix: String,
    /// Roles the token was given (its effective roles are these cut to the
    /// owner's current roles).
    pub roles: Vec<String>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it stops working; `null` for a bootstrap password.
    pub expires_at: Option<Timestamp>,
}

/// `POST /tokens` answer; `token` is shown this once and stored only as a hash.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreatedToken {
    /// The access token.
    pub token: SecretValue,
    /// Its bookkeeping.
    pub info: TokenInfo,
}

/// `GET /tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenList {
    /// The caller's tokens (or a user's, for `user:admin`).
    pub tokens: Vec<TokenInfo>,
}

/// `POST /auth/token` answer: a short-lived signed JWT that every other call
/// carries as `Authorization: Bearer <jwt>`.
#[derive(Debug, Serialize, Deserialize)]
pub struct JwtResponse {
    /// The JWT.
    pub jwt: SecretValue,
    /// When it stops working; refresh before.
    pub expires_at: Timestamp,
}

/// `GET /whoami`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    /// The user.
    pub user: String,
    /// The access token the JWT was exchanged from.
    pub token: String,
    /// The token's effective roles now.
    pub roles: Vec<String>,
}

// ---------------------------------------------------------------------------
// Vaults and the record store

/// `POST /vaults`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewVault {
    /// Vault id (an id), chosen by the device that ran `vault init`.
    pub id: String,
    /// Identifies the vault key; every record must carry the same.
    pub key_id: String,
    /// Base64 of the passphrase-encrypted identity (`identity.age`).
    pub identity: String,
}

/// `GET /vaults/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultInfo {
    /// Vault id.
    pub id: String,
    /// The vault's key id.
    pub key_id: String,
    /// Base64 of the passphrase-encrypted identity.
    pub identity: String,
    /// When it was created.
    pub created_at: Timestamp,
}

/// One record in a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRecord {
    /// Its place in the device's log; a batch's indexes are consecutive and
    /// the first is the log's head + 1 (indexes start at 1).
    pub index: u64,
    /// Must equal the vault's key id.
    pub key_id: String,
    /// Base64 of the age ciphertext.
    pub data: String,
}

/// `POST /vaults/{id}/push`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRequest {
    /// The pushing device (an id).
    pub device_id: String,
    /// 1 to [`MAX_BATCH_RECORDS`] records.
    pub records: Vec<PushRecord>,
}

/// `POST /vaults/{id}/push` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushResponse {
    /// The device.
    pub device_id: String,
    /// The log's last index after the push.
    pub head: u64,
}

/// `POST /vaults/{id}/pull`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    /// Last index seen per device; devices not named are pulled from the start.
    #[serde(default)]
    pub since: BTreeMap<String, u64>,
    /// Most records in the page (default [`DEFAULT_PULL_LIMIT`], at most
    /// [`MAX_PULL_LIMIT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// A record as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// The device whose log holds it.
    pub device_id: String,
    /// Its index in that log.
    pub index: u64,
    /// The key id it was pushed with.
    pub key_id: String,
    /// Base64 of the age ciphertext.
    pub data: String,
    /// When the server stored it.
    pub received_at: Timestamp,
}

/// `POST /vaults/{id}/pull` answer: records ordered by device id, then index,
/// each device's run consecutive from its `since` + 1 (audit log: from
/// after the larger of `since` and `pruned`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullResponse {
    /// This page.
    pub records: Vec<LogRecord>,
    /// Every device's head, from the same snapshot.
    pub heads: BTreeMap<String, u64>,
    /// True when more records are due: pull again with `since` advanced past
    /// this page.
    pub more: bool,
    /// Audit log only: per device, the last segment number the server no
    /// longer holds (dropped by its retention, `--audit-keep`, or removed
    /// by the device, `vault sync unshare-audit`); devices with none are left
    /// out. A claim of the server's: a reader notes it, it proves nothing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pruned: BTreeMap<String, u64>,
}

/// `DELETE /vaults/{id}/audit/devices/{device}`: a device's shared audit
/// segments removed. Its numbering is kept, so a later push goes on after
/// `pruned` and no number is ever sealed twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRemoved {
    /// The device whose segments were removed.
    pub device_id: String,
    /// How many segments this call removed.
    pub removed: u64,
    /// The last segment number the server no longer holds (its head).
    pub pruned: u64,
}

/// `GET /vaults/{id}/heads`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadsResponse {
    /// Every device's last index.
    pub heads: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_shape() {
        let body = ErrorBody {
            error: ApiError {
                code: ApiErrorCode::Forbidden,
                message: "m".into(),
                action: Some(Action::VaultWrite),
                resource: Some("v1".into()),
                expected_index: None,
            },
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"error":{"code":"forbidden","message":"m","action":"vault:write","resource":"v1"}}"#
        );
        let unknown: ApiErrorCode = serde_json::from_str(r#""brand_new""#).unwrap();
        assert_eq!(unknown, ApiErrorCode::Unknown);
    }

    #[test]
    fn resources_and_ids() {
        assert!(resource_matches("*", "v1"));
        assert!(resource_matches("team-*", "team-a"));
        assert!(!resource_matches("team-*", "other"));
        assert!(resource_matches("v1", "v1"));
        assert!(!resource_matches("v1", "v10"));
        assert!(validate_id("vault id", "a.b_c-1").is_ok());
        assert!(validate_id("vault id", "-a").is_err());
        assert!(validate_id("vault id", "").is_err());
        assert!(validate_id("vault id", &"a".repeat(65)).is_err());
        assert!(validate_key_id("age1abc").is_ok());
        assert!(validate_key_id("a b").is_err());
        for a in Action::ALL {
            assert_eq!(Action::parse(a.as_str()).unwrap(), a);
            assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{a}\""));
        }
    }
}
