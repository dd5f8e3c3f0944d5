//! The storage trait every backend implements, the rows it speaks in, and
//! [`open`], which picks a backend from `--database`.
//!
//! The store owns durability and the two invariants that need a transaction:
//! a push continues its device's log exactly (else `IndexConflict`) and carries
//! the vault's key id (else `KeyMismatch`); and a token's effective roles are
//! its own roles cut to its owner's current roles, evaluated on every read.
//! It never sees plaintext: record bodies and identities are opaque bytes.
//! Authorization decisions are made above it, in the API layer.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use vault_protocol::server_api::Role;

use crate::error::{StoreError, StoreResult};

pub mod gate;
pub mod pg_tls;
pub mod postgres;
pub mod sqlite;

/// A user row with the roles held now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    /// Name.
    pub name: String,
    /// Roles granted in this database, sorted.
    pub roles: Vec<String>,
    /// Roles the identity provider's claims gave at the last sign-in, sorted.
    pub sso_roles: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// `ISSUER SUB` of the IdP identity bound to this user, once it signed
    /// in through the identity provider.
    pub sso_subject: Option<String>,
    /// The last sign-in: unix seconds and how (`token`, `password`, `sso`).
    pub last_login: Option<(i64, String)>,
}

impl UserRow {
    /// The user as the API and `vault-server user list --json` show it.
    pub fn view(self) -> vault_protocol::server_api::User {
        use vault_protocol::server_api::{LastLogin, User};
        use vault_protocol::timefmt::Timestamp;
        User {
            name: self.name,
            roles: self.roles,
            sso_roles: self.sso_roles,
            created_at: Timestamp(self.created_at),
            sso: self.sso_subject.is_some(),
            last_login: self.last_login.map(|(at, via)| LastLogin {
                at: Timestamp(at),
                via,
            }),
        }
    }
}

/// A sign-in through the identity provider, as the store applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoSignIn {
    /// `ISSUER SUB` (crate::oidc::Identity::subject).
    pub subject: String,
    /// The user name the token's claim gives.
    pub user: String,
    /// The roles mapped from the token's claims now; they replace the last
    /// sign-in's.
    pub roles: Vec<String>,
    /// Create the user if missing.
    pub create: bool,
    /// Unix seconds.
    pub now: i64,
}

/// What [`Store::sso_sign_in`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoSignedIn {
    /// The user signed in: the one bound to the subject (which may differ
    /// from the name the token claims, after a rename at the IdP).
    pub user: String,
    /// The user was created by this sign-in.
    pub created: bool,
    /// Mapped roles that do not exist in this database (skipped).
    pub unknown_roles: Vec<String>,
}

/// Why [`Store::sso_sign_in`] refused, as the message of a
/// `StoreError::NotFound` (no such user, creation off) or
/// `StoreError::Invalid` (the user is bound to another identity).
pub fn sso_refusal_no_user(user: &str) -> StoreError {
    StoreError::NotFound(format!(
        "no vault-server user '{user}': ask an admin to add it ('vault-server user add {user}'), or start the server with --oidc-create-users"
    ))
}

/// The user exists and signs in with access tokens: never bound by name.
pub fn sso_refusal_token_user(user: &str) -> StoreError {
    StoreError::Invalid(format!(
        "vault-server user '{user}' signs in with access tokens, so it is not bound to an identity-provider account by name; an admin revokes its tokens first ('vault-server token rm') to let it sign in through the identity provider"
    ))
}

/// The user exists and is bound to another identity-provider account
/// than `subject` (`ISSUER SUB`, the one signing in).
pub fn sso_refusal_bound(user: &str, subject: &str) -> StoreError {
    StoreError::Invalid(format!(
        "vault-server user '{user}' belongs to another identity-provider account; if this one \
         (a new account of the same person) should be it, an admin runs: vault-server user bind \
         {user} {}",
        shell_quoted(subject)
    ))
}

/// [`Store::bind_sso`]: another user, `holder`, holds that account.
pub fn bound_elsewhere(holder: &str) -> StoreError {
    StoreError::Invalid(format!(
        "that identity-provider account is bound to user '{holder}'; unbind it first \
         (vault-server user unbind {holder})"
    ))
}

/// `s` in single quotes for a POSIX shell.
pub fn shell_quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// How a token's secret is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A random access token; `hash` is its hex SHA-256.
    Token,
    /// The bootstrap password; `hash` is a PBKDF2 string.
    Password,
}

impl TokenKind {
    /// Column spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Token => "token",
            TokenKind::Password => "password",
        }
    }

    /// Parses the column spelling.
    pub fn parse(s: &str) -> StoreResult<Self> {
        match s {
            "token" => Ok(TokenKind::Token),
            "password" => Ok(TokenKind::Password),
            other => Err(StoreError::Internal(format!(
                "unknown token kind {other:?}"
            ))),
        }
    }
}

/// An access token row (never the secret itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// Random row id; JWTs name it.
    pub id: String,
    /// Owner.
    pub user: String,
    /// Name, unique per owner.
    pub name: String,
    /// Free text.
    pub description: String,
    /// First characters of the secret, to recognise it.
    pub prefix: String,
    /// Hash of the secret (see [`TokenKind`]).
    pub hash: String,
    /// How `hash` is made.
    pub kind: TokenKind,
    /// Roles the token was given, sorted.
    pub roles: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; `None` never expires (bootstrap password only).
    pub expires_at: Option<i64>,
}

/// Who a JWT speaks for, as of now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user.
    pub user: String,
    /// The token's row id.
    pub token_id: String,
    /// The token's name.
    pub token_name: String,
    /// The token's expiry.
    pub expires_at: Option<i64>,
    /// Effective roles: the token's roles the owner still holds.
    pub roles: Vec<Role>,
}

/// The `tid` of a JWT issued for a sign-in through the identity provider
/// (access token ids are 16 hex digits, so the two never meet).
pub const SSO_SESSION: &str = "sso";

impl Principal {
    /// A user signed in through the identity provider, holding `roles`.
    pub fn sso(user: String, roles: Vec<Role>) -> Self {
        Principal {
            user,
            token_id: SSO_SESSION.to_owned(),
            token_name: SSO_SESSION.to_owned(),
            expires_at: None,
            roles,
        }
    }
}

/// A vault row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultRow {
    /// Id.
    pub id: String,
    /// Key id every record must carry.
    pub key_id: String,
    /// Passphrase-encrypted identity (opaque).
    pub identity: Vec<u8>,
    /// The user who created it.
    pub created_by: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// A record to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    /// Index in the device's log.
    pub index: u64,
    /// Key id it claims.
    pub key_id: String,
    /// Ciphertext (opaque).
    pub data: Vec<u8>,
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Device whose log holds it.
    pub device_id: String,
    /// Index in that log.
    pub index: u64,
    /// Key id.
    pub key_id: String,
    /// Ciphertext.
    pub data: Vec<u8>,
    /// Unix seconds.
    pub received_at: i64,
}

/// One page of a pull.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PullPage {
    /// Records by device id, then index.
    pub records: Vec<StoredRecord>,
    /// Every device's head in the same snapshot.
    pub heads: BTreeMap<String, u64>,
    /// Audit log only: per device, the last index the server no longer
    /// holds (removed by retention or by the device), from the same
    /// snapshot; devices with none are left out.
    pub pruned: BTreeMap<String, u64>,
    /// More records are due after this page.
    pub more: bool,
}

/// A log's heads as read in one snapshot: every device's head and, for the
/// audit log, the last index removed (devices with none left out).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct LogHeads {
    pub heads: BTreeMap<String, u64>,
    pub pruned: BTreeMap<String, u64>,
}

impl FromIterator<(String, u64, u64)> for LogHeads {
    /// From `(device, head, pruned)` rows.
    fn from_iter<I: IntoIterator<Item = (String, u64, u64)>>(rows: I) -> Self {
        let mut out = LogHeads::default();
        for (device, head, pruned) in rows {
            if pruned > 0 {
                out.pruned.insert(device.clone(), pruned);
            }
            out.heads.insert(device, head);
        }
        out
    }
}

/// Which of a vault's logs a call is about: the record log every device
/// syncs, or the audit log segments devices share when `[audit] sync` is
/// on (issue 24, docs/sync.md "Audit log"). Both are kept by the same
/// rules (consecutive indexes per device, the vault's key id on each
/// entry), in their own tables, so one never reaches into the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Log {
    /// `logs` and `records`.
    Records,
    /// `audit_logs` and `audit_segments`.
    Audit,
}

impl Log {
    /// The table of heads and the table of entries.
    pub(crate) fn tables(self) -> (&'static str, &'static str) {
        match self {
            Log::Records => ("logs", "records"),
            Log::Audit => ("audit_logs", "audit_segments"),
        }
    }

    /// `SELECT device_id, head, pruned` of the log's heads table, with
    /// `param` (`?1`, `$1`) for the vault id. Only the audit log is ever
    /// pruned (schema 5); records are kept until their vault goes.
    pub(crate) fn heads_sql(self, param: &str) -> String {
        let pruned = match self {
            // BIGINT, as PostgreSQL's `pruned` column is.
            Log::Records => "CAST(0 AS BIGINT)",
            Log::Audit => "pruned",
        };
        format!(
            "SELECT device_id, head, {pruned} FROM {} WHERE vault_id = {param}",
            self.tables().0
        )
    }
}

/// Marks what [`Store::prune_audit`] removes, in both backends: for every
/// device with a segment received before `param` (`?1`, `$1`), `pruned`
/// becomes at least the highest such index, and the statement returns
/// `(vault_id, device_id, pruned)` of those devices; their segments up to
/// `pruned` are then deleted. Heads are left alone, so no number is reused.
pub(crate) fn prune_audit_sql(param: &str) -> String {
    format!(
        "UPDATE audit_logs AS l
         SET pruned = CASE WHEN cut.p > l.pruned THEN cut.p ELSE l.pruned END
         FROM (SELECT vault_id AS v, device_id AS d, MAX(idx) AS p FROM audit_segments
               WHERE received_at < {param} GROUP BY vault_id, device_id) AS cut
         WHERE l.vault_id = cut.v AND l.device_id = cut.d
         RETURNING vault_id, device_id, pruned"
    )
}

/// What the bootstrap created, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrap {
    /// The database had no user: role `admin`, the user and its password
    /// token were created.
    Created,
    /// Users exist already; nothing was changed.
    AlreadyDone,
}

/// A connection pool's use at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// Most connections the pool opens.
    pub max: usize,
    /// Connections (or SQLite permits) held by calls now.
    pub in_use: usize,
    /// Calls waiting for one.
    pub waiting: usize,
}

/// Storage backend. Every method is one transaction.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Short backend name for logs (`sqlite`, `postgres`).
    fn backend(&self) -> &'static str;

    /// The database's schema version and the one this server's migrations
    /// reach: equal when the database is reachable and migrated (`GET
    /// /api/v1/ready`).
    async fn schema_version(&self) -> StoreResult<(i64, i64)>;

    /// Records stored, in every vault: the sum of the device logs' heads
    /// (records are never deleted but with their vault), so it reads one
    /// small table, not the records (`/metrics`).
    async fn records_stored(&self) -> StoreResult<u64>;

    /// How busy the connection pool is now (`/metrics`).
    fn pool_status(&self) -> PoolStatus;

    /// The failed-login windows of `keys` that started at or after `since`:
    /// `(window_start, failures)` each. Shared by every server on this
    /// database (`crate::ratelimit`).
    async fn login_failures(&self, keys: &[String], since: i64) -> StoreResult<Vec<(i64, i64)>>;

    /// Counts one failed login at `now` under each of `keys`; a window that
    /// started before `since` starts again at `now`. Windows that ended are
    /// removed. Atomic per key, so concurrent servers never lose a count.
    async fn record_login_failure(&self, keys: &[String], now: i64, since: i64) -> StoreResult<()>;

    /// The JWT signing secret, created (32 random bytes) on first use. Shared
    /// by every server on this database.
    async fn jwt_secret(&self) -> StoreResult<Vec<u8>>;

    /// On a database without users, creates the `admin` role (every action on
    /// `*`) if missing, the user `name` holding it, and the password token
    /// `password` (a finished [`TokenRow`] owned by `name`).
    async fn bootstrap_admin(
        &self,
        admin_role: &Role,
        password: &TokenRow,
        now: i64,
    ) -> StoreResult<Bootstrap>;

    /// Creates a user holding `roles` (which must exist).
    async fn create_user(&self, name: &str, roles: &[String], now: i64) -> StoreResult<()>;
    /// All users.
    async fn list_users(&self) -> StoreResult<Vec<UserRow>>;
    /// One user.
    async fn get_user(&self, name: &str) -> StoreResult<UserRow>;
    /// Deletes a user and their tokens.
    async fn delete_user(&self, name: &str) -> StoreResult<()>;
    /// Grants a role (idempotent).
    async fn grant_role(&self, user: &str, role: &str) -> StoreResult<()>;
    /// Takes a role from a user and from all of the user's tokens.
    async fn revoke_role(&self, user: &str, role: &str) -> StoreResult<()>;

    /// Creates a role.
    async fn create_role(&self, role: &Role, now: i64) -> StoreResult<()>;
    /// All roles.
    async fn list_roles(&self) -> StoreResult<Vec<Role>>;
    /// Deletes a role; users and tokens lose it.
    async fn delete_role(&self, name: &str) -> StoreResult<()>;

    /// Stores a token. Its roles must exist and be held by its owner.
    async fn create_token(&self, token: &TokenRow) -> StoreResult<()>;
    /// Tokens of one user, or of everyone.
    async fn list_tokens(&self, user: Option<&str>) -> StoreResult<Vec<TokenRow>>;
    /// Deletes (revokes) a token.
    async fn delete_token(&self, user: &str, name: &str) -> StoreResult<()>;
    /// The access token with this hash.
    async fn find_token_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRow>>;
    /// All password tokens (bootstrap passwords; normally one).
    async fn password_tokens(&self) -> StoreResult<Vec<TokenRow>>;
    /// Who token `token_id` speaks for now; `None` once it is revoked.
    /// Roles mapped from the identity provider count only when mapped at or
    /// after `mapped_since` (a lease the owner's sign-ins renew).
    async fn principal(&self, token_id: &str, mapped_since: i64) -> StoreResult<Option<Principal>>;
    /// Who a signed-in identity-provider user is now: every role the user
    /// holds (granted here or mapped at the last sign-in); `None` once the
    /// user is deleted.
    async fn user_principal(&self, user: &str) -> StoreResult<Option<Principal>>;
    /// Applies a sign-in through the identity provider: finds the user bound
    /// to the subject, else binds the unbound user of that name that has no
    /// access token or password, else creates it (if allowed); replaces its
    /// mapped roles (stamped `now`); notes the login.
    async fn sso_sign_in(&self, s: &SsoSignIn) -> StoreResult<SsoSignedIn>;
    /// Notes a login of `user` at `now` by `via` (at most once a minute per
    /// way, so busy automation does not write on every exchange).
    async fn note_login(&self, user: &str, via: &str, now: i64) -> StoreResult<()>;
    /// Binds `user` to the identity-provider account `subject` (`ISSUER
    /// SUB`), or unbinds it (`None`), dropping the roles the old account's
    /// last sign-in mapped. Refused when another user holds `subject`.
    async fn bind_sso(&self, user: &str, subject: Option<&str>) -> StoreResult<()>;

    /// Creates a vault.
    async fn create_vault(&self, vault: &VaultRow) -> StoreResult<()>;
    /// One vault.
    async fn get_vault(&self, id: &str) -> StoreResult<VaultRow>;
    /// Every device's head in `log`.
    async fn heads(&self, vault_id: &str, log: Log) -> StoreResult<BTreeMap<String, u64>>;
    /// Appends `records` (consecutive indexes, checked by the caller) to the
    /// device's `log`; returns the new head.
    async fn push(
        &self,
        vault_id: &str,
        log: Log,
        device_id: &str,
        records: Vec<NewRecord>,
        now: i64,
    ) -> StoreResult<u64>;
    /// Entries of `log` past `since` (per device), at most `limit` of them
    /// and about `max_bytes` bytes; for the audit log also what each device
    /// had removed ([`PullPage::pruned`]), from the same snapshot.
    async fn pull(
        &self,
        vault_id: &str,
        log: Log,
        since: &BTreeMap<String, u64>,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<PullPage>;
    /// Audit log retention (`vault-server serve --audit-keep`): in every
    /// vault, removes each device's oldest segments, those up to the highest
    /// index received before `before` (unix seconds), and records that
    /// index as the device's `pruned` (never lowered). Heads stay, so a
    /// later push goes on after them. Returns how many segments went.
    async fn prune_audit(&self, before: i64) -> StoreResult<u64>;
    /// Removes every audit segment of `device_id` in `vault_id` (the device
    /// stopped sharing) and sets its `pruned` to its head, which stays.
    /// Returns `(segments removed, pruned)`; `(0, 0)` for a device that
    /// never shared. `NotFound` for an unknown vault.
    async fn remove_audit_device(&self, vault_id: &str, device_id: &str)
    -> StoreResult<(u64, u64)>;
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.backend())
    }
}

/// How long one database call may take by default: a statement (PostgreSQL
/// `statement_timeout`), a wait for a pooled connection, or a wait for
/// SQLite's write lock (`busy_timeout`). `vault-server --request-timeout`
/// sets it to the request timeout.
pub const DEFAULT_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Opens (and migrates) the database named by `--database`:
/// `sqlite:PATH` or `postgres://…` / `postgresql://…`, with
/// [`DEFAULT_CALL_TIMEOUT`].
pub async fn open(database: &str) -> Result<Arc<dyn Store>, String> {
    open_with(database, DEFAULT_CALL_TIMEOUT).await
}

/// [`open`] with every database call bounded by `call_timeout`; a call
/// that runs out fails as `Unavailable` (503), and its transaction is
/// rolled back by the database.
pub async fn open_with(
    database: &str,
    call_timeout: std::time::Duration,
) -> Result<Arc<dyn Store>, String> {
    if let Some(path) = database.strip_prefix("sqlite:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err(
                "--database sqlite: needs a file path, e.g. sqlite:/var/lib/vault-server/vault.db"
                    .into(),
            );
        }
        let store =
            sqlite::SqliteStore::open_with(std::path::Path::new(path), call_timeout).await?;
        return Ok(Arc::new(store));
    }
    if database.starts_with("postgres://") || database.starts_with("postgresql://") {
        let store = postgres::PostgresStore::connect_with(database, call_timeout).await?;
        return Ok(Arc::new(store));
    }
    Err(format!(
        "unsupported --database '{}': use sqlite:PATH or postgres://USER@HOST/DB",
        redact_url(database)
    ))
}

/// `database` with any password replaced, for messages and logs.
pub fn redact_url(database: &str) -> String {
    // scheme://user:password@host → scheme://user:***@host
    let mut out = database.to_owned();
    if let Some((scheme, rest)) = database.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && let Some((user, _)) = userinfo.split_once(':')
    {
        out = format!("{scheme}://{user}:***@{host}");
    }
    // …?password=secret&… → …?password=***&…
    if let Some((base, query)) = out.split_once('?') {
        let query: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out = format!("{base}?{}", query.join("&"));
    }
    out
}

/// The push rule, written once for both stores (docs/server.md): every
/// record is encrypted to the vault's key `vault_key_id`, and the batch
/// continues the device's log at `head` exactly (its indexes are
/// consecutive, checked by the API). Returns the log's new head.
pub(crate) fn continue_log(
    records: &[NewRecord],
    vault_key_id: &str,
    head: u64,
) -> StoreResult<u64> {
    if records.iter().any(|r| r.key_id != vault_key_id) {
        return Err(StoreError::KeyMismatch {
            vault_key_id: vault_key_id.to_owned(),
        });
    }
    let first = records.first().map_or(head + 1, |r| r.index);
    if first != head + 1 {
        return Err(StoreError::IndexConflict { expected: head + 1 });
    }
    Ok(records.last().map_or(head, |r| r.index))
}

/// Policies as stored in a role row (JSON text).
pub(crate) fn policies_to_json(role: &Role) -> StoreResult<String> {
    serde_json::to_string(&role.policies)
        .map_err(|e| StoreError::Internal(format!("cannot encode policies: {e}")))
}

/// Parses the stored policies of role `name`.
pub(crate) fn role_from_row(
    name: String,
    description: String,
    policies: &str,
) -> StoreResult<Role> {
    let policies = serde_json::from_str(policies).map_err(|e| {
        StoreError::Internal(format!("role {name}: stored policies unreadable: {e}"))
    })?;
    Ok(Role {
        name,
        description,
        policies,
    })
}

/// Picks records for a pull page from per-device runs, applying the limits.
/// `fetch(device, since, n)` returns up to `n` records of `device` past `since`.
/// A device's run starts past both its `since` and its `pruned` mark: what
/// the server removed is not asked for (nor waited for) again.
pub(crate) fn assemble_page<F>(
    heads: LogHeads,
    since: &BTreeMap<String, u64>,
    limit: usize,
    max_bytes: usize,
    mut fetch: F,
) -> StoreResult<PullPage>
where
    F: FnMut(&str, u64, usize) -> StoreResult<Vec<StoredRecord>>,
{
    let mut page = PullPage::default();
    let mut bytes = 0usize;
    for (device, &head) in &heads.heads {
        let from = since
            .get(device)
            .copied()
            .unwrap_or(0)
            .max(heads.pruned.get(device).copied().unwrap_or(0));
        if head <= from {
            continue;
        }
        let room = limit.saturating_sub(page.records.len());
        if room == 0 || bytes >= max_bytes {
            page.more = true;
            break;
        }
        let mut last = from;
        for rec in fetch(device, from, room)? {
            if bytes >= max_bytes && !page.records.is_empty() {
                break;
            }
            bytes += rec.data.len();
            last = rec.index;
            page.records.push(rec);
        }
        if last < head {
            page.more = true;
            break;
        }
    }
    page.heads = heads.heads;
    page.pruned = heads.pruned;
    Ok(page)
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_url_hides_every_password() {
        assert_eq!(
            redact_url("postgres://u:pw@h/db?sslmode=require"),
            "postgres://u:***@h/db?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://u@h/db?password=pw&sslmode=require"),
            "postgres://u@h/db?password=***&sslmode=require"
        );
        assert_eq!(redact_url("sqlite:/x.db"), "sqlite:/x.db");
    }

    use super::*;

    #[test]
    fn a_push_continues_the_log_exactly_and_only_with_the_vaults_key() {
        let new = |index, key: &str| NewRecord {
            index,
            key_id: key.to_owned(),
            data: vec![],
        };
        let batch = [new(4, "k"), new(5, "k")];
        assert_eq!(continue_log(&batch, "k", 3).unwrap(), 5);
        assert!(matches!(
            continue_log(&batch, "k", 4),
            Err(StoreError::IndexConflict { expected: 5 })
        ));
        assert!(matches!(
            continue_log(&batch, "k", 1),
            Err(StoreError::IndexConflict { expected: 2 })
        ));
        assert!(matches!(
            continue_log(&[new(4, "k"), new(5, "other")], "k", 3),
            Err(StoreError::KeyMismatch { .. })
        ));
        assert_eq!(continue_log(&[], "k", 7).unwrap(), 7);
    }

    fn rec(device: &str, index: u64, len: usize) -> StoredRecord {
        StoredRecord {
            device_id: device.into(),
            index,
            key_id: "k".into(),
            data: vec![0; len],
            received_at: 0,
        }
    }

    /// Serves runs from an in-memory log of `len`-byte records.
    fn page(
        heads: &[(&str, u64)],
        since: &[(&str, u64)],
        limit: usize,
        max_bytes: usize,
        len: usize,
    ) -> PullPage {
        let heads: Vec<(&str, u64, u64)> = heads.iter().map(|&(d, h)| (d, h, 0)).collect();
        pruned_page(&heads, since, limit, max_bytes, len)
    }

    /// [`page`] of logs given as `(device, head, pruned)`: the records up
    /// to `pruned` are gone.
    fn pruned_page(
        logs: &[(&str, u64, u64)],
        since: &[(&str, u64)],
        limit: usize,
        max_bytes: usize,
        len: usize,
    ) -> PullPage {
        let heads: LogHeads = logs
            .iter()
            .map(|&(d, h, p)| (d.to_string(), h, p))
            .collect();
        let since: BTreeMap<String, u64> = since.iter().map(|(d, h)| (d.to_string(), *h)).collect();
        let kept: BTreeMap<&str, (u64, u64)> = logs.iter().map(|&(d, h, p)| (d, (p, h))).collect();
        assemble_page(heads, &since, limit, max_bytes, |device, from, n| {
            let (pruned, head) = kept[device];
            Ok((from.max(pruned) + 1..=head)
                .take(n)
                .map(|i| rec(device, i, len))
                .collect())
        })
        .unwrap()
    }

    #[test]
    fn pages_start_past_what_was_pruned() {
        // `a` lost 1..=2, `b` everything: its page is empty, not "more".
        let p = pruned_page(
            &[("a", 4, 2), ("b", 3, 3), ("c", 1, 0)],
            &[],
            10,
            usize::MAX,
            1,
        );
        assert_eq!(
            keys(&p),
            [("a".into(), 3), ("a".into(), 4), ("c".into(), 1)]
        );
        assert!(!p.more);
        assert_eq!(p.pruned, BTreeMap::from([("a".into(), 2), ("b".into(), 3)]));
        assert_eq!(p.heads.len(), 3);
        // A `since` past the mark still counts.
        let p = pruned_page(&[("a", 4, 2)], &[("a", 3)], 10, usize::MAX, 1);
        assert_eq!(keys(&p), [("a".into(), 4)]);
    }

    fn keys(p: &PullPage) -> Vec<(String, u64)> {
        p.records
            .iter()
            .map(|r| (r.device_id.clone(), r.index))
            .collect()
    }

    #[test]
    fn pages_respect_count_bytes_and_since() {
        // Count limit across devices.
        let p = page(&[("a", 3), ("b", 2)], &[], 4, usize::MAX, 1);
        assert_eq!(
            keys(&p),
            [
                ("a".into(), 1),
                ("a".into(), 2),
                ("a".into(), 3),
                ("b".into(), 1)
            ]
        );
        assert!(p.more);
        // Up-to-date devices are skipped; nothing due means no more.
        let p = page(
            &[("a", 3), ("b", 2)],
            &[("a", 3), ("b", 1)],
            10,
            usize::MAX,
            1,
        );
        assert_eq!(keys(&p), [("b".into(), 2)]);
        assert!(!p.more);
        // Byte cap: stops once the page holds max_bytes, but always holds one.
        let p = page(&[("a", 5)], &[], 10, 25, 10);
        assert_eq!(p.records.len(), 3);
        assert!(p.more);
        let p = page(&[("a", 5)], &[], 10, 5, 100);
        assert_eq!(p.records.len(), 1);
        assert!(p.more);
        // Heads always reported.
        assert_eq!(p.heads.len(), 1);
    }
}
