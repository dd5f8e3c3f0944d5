//! SQLite backend: one file in WAL mode, one writer connection (SQLite allows
//! one writer at a time anyway; a single connection avoids `SQLITE_BUSY`
//! between our own writers) and a small pool of reader connections, all used
//! from `spawn_blocking` so the async runtime never blocks on disk.
//!
//! Schema changes are numbered migrations recorded in `PRAGMA user_version`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use vault_protocol::server_api::Role;

use super::gate::{self, CommitGate};
use super::{
    Bootstrap, Log, LogHeads, NewRecord, PoolStatus, Principal, PullPage, SsoSignIn, SsoSignedIn,
    Store, StoredRecord, TokenKind, TokenRow, UserRow, VaultRow, assemble_page, bound_elsewhere,
    continue_log, policies_to_json, prune_audit_sql, role_from_row, sso_refusal_bound,
    sso_refusal_no_user, sso_refusal_token_user,
};
use crate::error::{StoreError, StoreResult};

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE users (
    name       TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);
CREATE TABLE roles (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    policies    TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE user_roles (
    user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    role      TEXT NOT NULL REFERENCES roles(name) ON DELETE CASCADE,
    PRIMARY KEY (user_name, role)
);
CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    user_name   TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    prefix      TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    UNIQUE (user_name, name)
);
CREATE TABLE token_roles (
    token_id TEXT NOT NULL REFERENCES tokens(id) ON DELETE CASCADE,
    role     TEXT NOT NULL REFERENCES roles(name) ON DELETE CASCADE,
    PRIMARY KEY (token_id, role)
);
CREATE TABLE vaults (
    id         TEXT PRIMARY KEY,
    key_id     TEXT NOT NULL,
    identity   BLOB NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE logs (
    vault_id  TEXT NOT NULL REFERENCES vaults(id) ON DELETE CASCADE,
    device_id TEXT NOT NULL,
    head      INTEGER NOT NULL,
    PRIMARY KEY (vault_id, device_id)
) WITHOUT ROWID;
CREATE TABLE records (
    vault_id    TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    idx         INTEGER NOT NULL,
    key_id      TEXT NOT NULL,
    data        BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (vault_id, device_id, idx),
    FOREIGN KEY (vault_id, device_id) REFERENCES logs(vault_id, device_id) ON DELETE CASCADE
) WITHOUT ROWID;
"#,
    r#"
CREATE TABLE login_failures (
    key          TEXT PRIMARY KEY,
    window_start INTEGER NOT NULL,
    failures     INTEGER NOT NULL
);
CREATE INDEX login_failures_start ON login_failures (window_start);
"#,
    r#"
ALTER TABLE users ADD COLUMN sso_subject TEXT;
ALTER TABLE users ADD COLUMN last_login_at INTEGER;
ALTER TABLE users ADD COLUMN last_login_via TEXT;
CREATE UNIQUE INDEX users_sso_subject ON users (sso_subject);
CREATE TABLE user_mapped_roles (
    user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    role      TEXT NOT NULL REFERENCES roles(name) ON DELETE CASCADE,
    mapped_at INTEGER NOT NULL,
    PRIMARY KEY (user_name, role)
);
-- UNION ALL, so a WHERE on user_name reaches both primary keys (a role
-- both granted and mapped appears twice: readers use DISTINCT).
CREATE VIEW held_roles AS
    SELECT user_name, role FROM user_roles
    UNION ALL SELECT user_name, role FROM user_mapped_roles;
"#,
    // The audit log segments devices share when `[audit] sync` is on
    // (issue 24): the same shape and rules as `logs` and `records`, in
    // tables of their own.
    r#"
CREATE TABLE audit_logs (
    vault_id  TEXT NOT NULL REFERENCES vaults(id) ON DELETE CASCADE,
    device_id TEXT NOT NULL,
    head      INTEGER NOT NULL,
    PRIMARY KEY (vault_id, device_id)
) WITHOUT ROWID;
CREATE TABLE audit_segments (
    vault_id    TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    idx         INTEGER NOT NULL,
    key_id      TEXT NOT NULL,
    data        BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (vault_id, device_id, idx),
    FOREIGN KEY (vault_id, device_id) REFERENCES audit_logs(vault_id, device_id) ON DELETE CASCADE
) WITHOUT ROWID;
"#,
    // Audit segments are removed: by the server's retention
    // (`--audit-keep`, which finds the old ones by `received_at`) or by
    // their device. `pruned` is the last index removed; the head stays.
    r#"
ALTER TABLE audit_logs ADD COLUMN pruned INTEGER NOT NULL DEFAULT 0;
CREATE INDEX audit_segments_received ON audit_segments (received_at);
"#,
];

/// Most reader connections, and so most reads running at once; more
/// concurrent reads wait for a permit instead of opening connections (each
/// open re-reads the schema) or piling up blocking threads.
const MAX_READERS: usize = 8;

/// The SQLite store. Cheap to clone (shared connections).
#[derive(Clone)]
pub struct SqliteStore {
    path: PathBuf,
    /// SQLite's `busy_timeout`: how long a call waits for the write lock.
    busy: std::time::Duration,
    writer: Arc<Mutex<Connection>>,
    /// One permit: writes queue here, not on blocking threads.
    write_permit: Arc<tokio::sync::Semaphore>,
    readers: Arc<Mutex<Vec<Connection>>>,
    read_permits: Arc<tokio::sync::Semaphore>,
    /// Calls waiting for a permit (`pool_status`).
    waiting: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts one caller waiting for a permit, until dropped.
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn sql_err(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e
        && matches!(
            f.code,
            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
        )
    {
        // The write lock was not free within the call timeout.
        return StoreError::Unavailable(format!("sqlite: {e}"));
    }
    if let rusqlite::Error::SqliteFailure(f, _) = &e
        && f.code == rusqlite::ErrorCode::DiskFull
    {
        return StoreError::StorageFull(format!("sqlite: {e}"));
    }
    StoreError::Internal(format!("sqlite: {e}"))
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

fn connect(path: &Path, busy: std::time::Duration) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(busy)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
    )?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens or creates the database at `path` and brings its schema up to
    /// date; a call waits at most `busy` for the write lock.
    pub async fn open_with(path: &Path, busy: std::time::Duration) -> Result<Self, String> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(path, busy))
            .await
            .map_err(|e| format!("cannot open the database: {e}"))?
    }

    fn open_blocking(path: PathBuf, busy: std::time::Duration) -> Result<Self, String> {
        let shown = path.display().to_string();
        create_private(&path).map_err(|e| format!("cannot create SQLite database {shown}: {e}"))?;
        let mut conn = connect(&path, busy)
            .map_err(|e| format!("cannot open SQLite database {shown}: {e}"))?;
        migrate(&mut conn).map_err(|e| format!("cannot migrate SQLite database {shown}: {e}"))?;
        Ok(SqliteStore {
            path,
            busy,
            writer: Arc::new(Mutex::new(conn)),
            write_permit: Arc::new(tokio::sync::Semaphore::new(1)),
            readers: Arc::new(Mutex::new(Vec::new())),
            read_permits: Arc::new(tokio::sync::Semaphore::new(MAX_READERS)),
            waiting: Arc::default(),
        })
    }

    /// Runs `f` in one `IMMEDIATE` transaction on the writer connection, off
    /// the async runtime, and commits it unless `f` fails or the request was
    /// answered 503 meanwhile ([`CommitGate`]). The writer permit stays held
    /// by the blocking task, so an abandoned request's write still counts
    /// until its connection is free again.
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        let writer = Arc::clone(&self.writer);
        let gate = CommitGate::current();
        let waiting = Waiting::new(&self.waiting);
        let permit = Arc::clone(&self.write_permit)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Internal("sqlite writer closed".into()))?;
        drop(waiting);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut conn = writer
                .lock()
                .map_err(|_| StoreError::Internal("sqlite writer lock poisoned".into()))?;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql_err)?;
            let out = f(&tx)?;
            let _ticket = gate::begin(gate.as_ref())?;
            tx.commit().map_err(sql_err)?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("storage task failed: {e}")))?
    }

    /// Runs `f` on a reader connection, off the async runtime.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let readers = Arc::clone(&self.readers);
        let path = self.path.clone();
        let busy = self.busy;
        let waiting = Waiting::new(&self.waiting);
        let _permit = self
            .read_permits
            .acquire()
            .await
            .map_err(|_| StoreError::Internal("sqlite readers closed".into()))?;
        drop(waiting);
        tokio::task::spawn_blocking(move || {
            let pooled = readers
                .lock()
                .map_err(|_| StoreError::Internal("sqlite reader pool poisoned".into()))?
                .pop();
            let mut conn = match pooled {
                Some(c) => c,
                None => connect(&path, busy).map_err(sql_err)?,
            };
            let out = f(&mut conn);
            if let Ok(mut idle) = readers.lock()
                && idle.len() < MAX_READERS
            {
                idle.push(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::Internal(format!("storage task failed: {e}")))?
    }
}

/// Creates the database file 0600 if it does not exist yet: it holds the JWT
/// signing key, so nobody else may read it. (SQLite gives its `-wal` and
/// `-shm` files the main file's mode.)
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// What a backup or a restore holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    /// Schema version of the copy.
    pub schema_version: i64,
    /// Users.
    pub users: i64,
    /// Vaults.
    pub vaults: i64,
    /// Records, every vault.
    pub records: i64,
}

fn contents(conn: &Connection) -> Result<Contents, rusqlite::Error> {
    let count = |table: &str| -> Result<i64, rusqlite::Error> {
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
    };
    Ok(Contents {
        schema_version: conn.pragma_query_value(None, "user_version", |r| r.get(0))?,
        users: count("users")?,
        vaults: count("vaults")?,
        records: count("records")?,
    })
}

/// Copies every page of `from` into `to` in one step: one read transaction
/// on the source, so the copy is one consistent snapshot, and (WAL) the
/// server's writers are not held up meanwhile.
fn copy_pages(from: &Connection, to: &mut Connection) -> Result<(), rusqlite::Error> {
    use rusqlite::backup::{Backup, StepResult};
    let backup = Backup::new(from, to)?;
    for _ in 0..200 {
        match backup.step(-1)? {
            StepResult::Done => return Ok(()),
            // A writer holds a lock the copy needs: wait and try again.
            _ => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
    Err(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
        Some("the database stayed locked for 10s".into()),
    ))
}

/// Checks that `conn` is a sound vault-server database this build can use.
fn check_copy(conn: &Connection, shown: &str) -> Result<Contents, String> {
    let ok: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| format!("{shown} is not a SQLite database: {e}"))?;
    if ok != "ok" {
        return Err(format!("{shown} is damaged (SQLite quick_check: {ok})"));
    }
    let c = contents(conn).map_err(|e| format!("{shown} is not a vault-server database ({e})"))?;
    if c.schema_version < 1 || c.schema_version > MIGRATIONS.len() as i64 {
        return Err(format!(
            "{shown} has schema version {}; this vault-server reads 1 to {}",
            c.schema_version,
            MIGRATIONS.len()
        ));
    }
    Ok(c)
}

/// `vault-server backup`: a consistent copy of the database at `db` into the
/// new file `to` (0600), taken while servers keep serving. It is written
/// under a temporary name, checked, synced and then renamed, so `to` is
/// either whole or absent.
pub fn backup(db: &Path, to: &Path) -> Result<Contents, String> {
    let shown = db.display().to_string();
    if !db.exists() {
        return Err(format!("no database at {shown}"));
    }
    if to.exists() {
        return Err(format!(
            "{} exists already; choose a new file (a backup never overwrites)",
            to.display()
        ));
    }
    let from = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| {
            c.busy_timeout(std::time::Duration::from_secs(10))
                .map(|()| c)
        })
        .map_err(|e| format!("cannot open {shown}: {e}"))?;
    let partial = to.with_file_name(format!(
        ".{}.{}.partial",
        to.file_name().and_then(|n| n.to_str()).unwrap_or("backup"),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&partial);
    create_private(&partial).map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
    let result = (|| {
        let mut copy = Connection::open(&partial)
            .map_err(|e| format!("cannot open {}: {e}", partial.display()))?;
        copy_pages(&from, &mut copy).map_err(|e| format!("cannot copy {shown}: {e}"))?;
        // A backup is one self-contained file.
        copy.pragma_update(None, "journal_mode", "DELETE")
            .map_err(|e| format!("cannot finish the backup: {e}"))?;
        let c = check_copy(&copy, &partial.display().to_string())?;
        drop(copy);
        std::fs::File::open(&partial)
            .and_then(|f| f.sync_all())
            .map_err(|e| format!("cannot sync the backup: {e}"))?;
        // A link, not a rename: it fails if FILE appeared meanwhile.
        std::fs::hard_link(&partial, to)
            .map_err(|e| format!("cannot put the backup at {}: {e}", to.display()))?;
        let _ = std::fs::remove_file(&partial);
        if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(c)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// `vault-server restore`: replaces the database at `db` with the backup
/// `from`, then brings its schema up to date. A database that holds users or
/// records is replaced only with `force` (every server on it must be
/// stopped first: they would keep serving what they had read).
pub fn restore(from: &Path, db: &Path, force: bool) -> Result<Contents, String> {
    let shown_from = from.display().to_string();
    let src = Connection::open_with_flags(from, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("cannot open the backup {shown_from}: {e}"))?;
    check_copy(&src, &shown_from)?;
    let shown = db.display().to_string();
    create_private(db).map_err(|e| format!("cannot create {shown}: {e}"))?;
    let mut dst = connect(db, std::time::Duration::from_secs(10))
        .map_err(|e| format!("cannot open {shown}: {e}"))?;
    let version: i64 = dst
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if version > 0 && !force {
        let c = contents(&dst).map_err(|e| format!("cannot read {shown}: {e}"))?;
        if c.users > 0 || c.records > 0 {
            return Err(format!(
                "{shown} is in use ({} users, {} records): restoring replaces all of it. Stop \
                 every vault-server on it, then add --force",
                c.users, c.records
            ));
        }
    }
    copy_pages(&src, &mut dst).map_err(|e| format!("cannot restore into {shown}: {e}"))?;
    migrate(&mut dst).map_err(|e| format!("cannot migrate the restored {shown}: {e}"))?;
    contents(&dst).map_err(|e| format!("cannot read the restored {shown}: {e}"))
}

/// One more failed login under `?1` at `?2`; a window started before `?3`
/// starts again. Both SET expressions read the row as it was.
const LOGIN_FAILURE_UPSERT: &str = "INSERT INTO login_failures (key, window_start, failures) \
     VALUES (?1, ?2, 1) ON CONFLICT (key) DO UPDATE SET \
     failures = CASE WHEN login_failures.window_start < ?3 THEN 1 \
                     ELSE login_failures.failures + 1 END, \
     window_start = CASE WHEN login_failures.window_start < ?3 THEN ?2 \
                         ELSE login_failures.window_start END";

fn migrate(conn: &mut Connection) -> Result<(), String> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| e.to_string())?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(format!(
            "schema version {version} is newer than this vault-server knows ({known}); upgrade vault-server"
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| e.to_string())?;
        tx.execute_batch(sql).map_err(|e| e.to_string())?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn token_roles(conn: &Connection, token_id: &str) -> StoreResult<Vec<String>> {
    let mut stmt = conn
        .prepare_cached("SELECT role FROM token_roles WHERE token_id = ?1 ORDER BY role")
        .map_err(sql_err)?;
    let rows = stmt
        .query_map([token_id], |r| r.get(0))
        .map_err(sql_err)?
        .collect::<Result<Vec<String>, _>>()
        .map_err(sql_err)?;
    Ok(rows)
}

const TOKEN_COLUMNS: &str =
    "id, user_name, name, description, prefix, hash, kind, created_at, expires_at";

fn token_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(TokenRow, String)> {
    let kind: String = r.get(6)?;
    Ok((
        TokenRow {
            id: r.get(0)?,
            user: r.get(1)?,
            name: r.get(2)?,
            description: r.get(3)?,
            prefix: r.get(4)?,
            hash: r.get(5)?,
            kind: TokenKind::Token,
            roles: Vec::new(),
            created_at: r.get(7)?,
            expires_at: r.get(8)?,
        },
        kind,
    ))
}

fn finish_tokens(conn: &Connection, rows: Vec<(TokenRow, String)>) -> StoreResult<Vec<TokenRow>> {
    rows.into_iter()
        .map(|(mut t, kind)| {
            t.kind = TokenKind::parse(&kind)?;
            t.roles = token_roles(conn, &t.id)?;
            Ok(t)
        })
        .collect()
}

fn user_exists(conn: &Connection, name: &str) -> StoreResult<bool> {
    conn.query_row("SELECT 1 FROM users WHERE name = ?1", [name], |_| Ok(()))
        .optional()
        .map(|o| o.is_some())
        .map_err(sql_err)
}

fn role_exists(conn: &Connection, name: &str) -> StoreResult<bool> {
    conn.query_row("SELECT 1 FROM roles WHERE name = ?1", [name], |_| Ok(()))
        .optional()
        .map(|o| o.is_some())
        .map_err(sql_err)
}

/// Every role `user` holds: granted here or mapped at the last sign-in.
fn held_roles(conn: &Connection, user: &str) -> StoreResult<Vec<String>> {
    role_names(
        conn,
        "SELECT DISTINCT role FROM held_roles WHERE user_name = ?1 ORDER BY role",
        user,
    )
}

/// Roles granted to `user` here.
fn user_roles(conn: &Connection, user: &str) -> StoreResult<Vec<String>> {
    role_names(
        conn,
        "SELECT role FROM user_roles WHERE user_name = ?1 ORDER BY role",
        user,
    )
}

/// Drops the roles the identity provider mapped to `user`.
fn forget_mapped_roles(conn: &Connection, user: &str) -> StoreResult<()> {
    conn.execute("DELETE FROM user_mapped_roles WHERE user_name = ?1", [user])
        .map_err(sql_err)?;
    Ok(())
}

/// The role names `sql` (one column, `?1` = the user) selects.
fn role_names(conn: &Connection, sql: &str, user: &str) -> StoreResult<Vec<String>> {
    conn.prepare_cached(sql)
        .map_err(sql_err)?
        .query_map([user], |r| r.get(0))
        .map_err(sql_err)?
        .collect::<Result<Vec<String>, _>>()
        .map_err(sql_err)
}

/// The roles `sql` selects (name, description, policies) with `args`.
fn roles_where(
    conn: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> StoreResult<Vec<Role>> {
    let rows = conn
        .prepare_cached(sql)
        .map_err(sql_err)?
        .query_map(args, |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(sql_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql_err)?;
    rows.into_iter()
        .map(|(n, d, p)| role_from_row(n, d, &p))
        .collect()
}

/// Roles the identity provider's claims gave `user` at the last sign-in.
fn mapped_roles(conn: &Connection, user: &str) -> StoreResult<Vec<String>> {
    role_names(
        conn,
        "SELECT role FROM user_mapped_roles WHERE user_name = ?1 ORDER BY role",
        user,
    )
}

const USER_COLUMNS: &str = "name, created_at, sso_subject, last_login_at, last_login_via";

fn user_from_row(conn: &Connection, r: &rusqlite::Row<'_>) -> StoreResult<UserRow> {
    let name: String = r.get(0).map_err(sql_err)?;
    let at: Option<i64> = r.get(3).map_err(sql_err)?;
    let via: Option<String> = r.get(4).map_err(sql_err)?;
    Ok(UserRow {
        roles: user_roles(conn, &name)?,
        sso_roles: mapped_roles(conn, &name)?,
        created_at: r.get(1).map_err(sql_err)?,
        sso_subject: r.get(2).map_err(sql_err)?,
        last_login: at.zip(via),
        name,
    })
}

fn insert_role(conn: &Connection, role: &Role, now: i64) -> StoreResult<()> {
    conn.execute(
        "INSERT INTO roles (name, description, policies, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![role.name, role.description, policies_to_json(role)?, now],
    )
    .map_err(|e| {
        if is_unique_violation(&e) {
            StoreError::AlreadyExists(format!("role '{}' already exists", role.name))
        } else {
            sql_err(e)
        }
    })?;
    Ok(())
}

fn insert_token(conn: &Connection, t: &TokenRow) -> StoreResult<()> {
    if !user_exists(conn, &t.user)? {
        return Err(StoreError::NotFound(format!("no user '{}'", t.user)));
    }
    let held = held_roles(conn, &t.user)?;
    for role in &t.roles {
        if !held.contains(role) {
            return Err(StoreError::Invalid(format!(
                "user '{}' does not hold role '{role}'; a token carries a subset of its owner's roles",
                t.user
            )));
        }
    }
    conn.execute(
        "INSERT INTO tokens (id, user_name, name, description, prefix, hash, kind, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            t.id,
            t.user,
            t.name,
            t.description,
            t.prefix,
            t.hash,
            t.kind.as_str(),
            t.created_at,
            t.expires_at
        ],
    )
    .map_err(|e| {
        if is_unique_violation(&e) {
            StoreError::AlreadyExists(format!(
                "user '{}' already has a token named '{}'",
                t.user, t.name
            ))
        } else {
            sql_err(e)
        }
    })?;
    for role in &t.roles {
        conn.execute(
            "INSERT INTO token_roles (token_id, role) VALUES (?1, ?2)",
            params![t.id, role],
        )
        .map_err(sql_err)?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn schema_version(&self) -> StoreResult<(i64, i64)> {
        let version: i64 = self
            .read(|conn| {
                conn.pragma_query_value(None, "user_version", |r| r.get(0))
                    .map_err(sql_err)
            })
            .await?;
        Ok((version, MIGRATIONS.len() as i64))
    }

    async fn records_stored(&self) -> StoreResult<u64> {
        self.read(|conn| {
            conn.query_row("SELECT COALESCE(SUM(head), 0) FROM logs", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n.max(0) as u64)
            .map_err(sql_err)
        })
        .await
    }

    fn pool_status(&self) -> PoolStatus {
        // One writer plus the readers; a call holds a permit while it runs.
        let writing = 1 - self.write_permit.available_permits();
        let reading = MAX_READERS - self.read_permits.available_permits();
        PoolStatus {
            max: 1 + MAX_READERS,
            in_use: writing + reading,
            waiting: self.waiting.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    async fn login_failures(&self, keys: &[String], since: i64) -> StoreResult<Vec<(i64, i64)>> {
        let keys = keys.to_vec();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT window_start, failures FROM login_failures \
                     WHERE key = ?1 AND window_start >= ?2",
                )
                .map_err(sql_err)?;
            let mut out = Vec::new();
            for key in &keys {
                let rows = stmt
                    .query_map(params![key, since], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(sql_err)?;
                for row in rows {
                    out.push(row.map_err(sql_err)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn record_login_failure(&self, keys: &[String], now: i64, since: i64) -> StoreResult<()> {
        let keys = keys.to_vec();
        self.write(move |tx| {
            tx.execute(
                "DELETE FROM login_failures WHERE window_start < ?1",
                [since],
            )
            .map_err(sql_err)?;
            for key in &keys {
                tx.execute(LOGIN_FAILURE_UPSERT, params![key, now, since])
                    .map_err(sql_err)?;
            }
            Ok(())
        })
        .await
    }

    async fn jwt_secret(&self) -> StoreResult<Vec<u8>> {
        let fresh = crate::crypto::random_bytes(32).map_err(StoreError::Internal)?;
        self.write(move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO settings (key, value) VALUES ('jwt_secret', ?1)",
                [&fresh],
            )
            .map_err(sql_err)?;
            conn.query_row(
                "SELECT value FROM settings WHERE key = 'jwt_secret'",
                [],
                |r| r.get(0),
            )
            .map_err(sql_err)
        })
        .await
    }

    async fn bootstrap_admin(
        &self,
        admin_role: &Role,
        password: &TokenRow,
        now: i64,
    ) -> StoreResult<Bootstrap> {
        let role = admin_role.clone();
        let token = password.clone();
        self.write(move |tx| {
            let users: i64 = tx
                .query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))
                .map_err(sql_err)?;
            if users > 0 {
                return Ok(Bootstrap::AlreadyDone);
            }
            if !role_exists(tx, &role.name)? {
                insert_role(tx, &role, now)?;
            }
            tx.execute(
                "INSERT INTO users (name, created_at) VALUES (?1, ?2)",
                params![token.user, now],
            )
            .map_err(sql_err)?;
            tx.execute(
                "INSERT INTO user_roles (user_name, role) VALUES (?1, ?2)",
                params![token.user, role.name],
            )
            .map_err(sql_err)?;
            insert_token(tx, &token)?;
            Ok(Bootstrap::Created)
        })
        .await
    }

    async fn create_user(&self, name: &str, roles: &[String], now: i64) -> StoreResult<()> {
        let name = name.to_owned();
        let roles = roles.to_vec();
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO users (name, created_at) VALUES (?1, ?2)",
                params![name, now],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::AlreadyExists(format!("user '{name}' already exists"))
                } else {
                    sql_err(e)
                }
            })?;
            for role in &roles {
                if !role_exists(tx, role)? {
                    return Err(StoreError::Invalid(format!("no role '{role}'")));
                }
                tx.execute(
                    "INSERT OR IGNORE INTO user_roles (user_name, role) VALUES (?1, ?2)",
                    params![name, role],
                )
                .map_err(sql_err)?;
            }
            Ok(())
        })
        .await
    }

    async fn list_users(&self) -> StoreResult<Vec<UserRow>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY name"))
                .map_err(sql_err)?;
            let mut rows = stmt.query([]).map_err(sql_err)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(sql_err)? {
                out.push(user_from_row(conn, r)?);
            }
            Ok(out)
        })
        .await
    }

    async fn get_user(&self, name: &str) -> StoreResult<UserRow> {
        let name = name.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE name = ?1"))
                .map_err(sql_err)?;
            let mut rows = stmt.query([&name]).map_err(sql_err)?;
            match rows.next().map_err(sql_err)? {
                Some(r) => user_from_row(conn, r),
                None => Err(StoreError::NotFound(format!("no user '{name}'"))),
            }
        })
        .await
    }

    async fn delete_user(&self, name: &str) -> StoreResult<()> {
        let name = name.to_owned();
        self.write(move |conn| {
            let n = conn
                .execute("DELETE FROM users WHERE name = ?1", [&name])
                .map_err(sql_err)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("no user '{name}'")));
            }
            Ok(())
        })
        .await
    }

    async fn grant_role(&self, user: &str, role: &str) -> StoreResult<()> {
        let (user, role) = (user.to_owned(), role.to_owned());
        self.write(move |tx| {
            if !user_exists(tx, &user)? {
                return Err(StoreError::NotFound(format!("no user '{user}'")));
            }
            if !role_exists(tx, &role)? {
                return Err(StoreError::NotFound(format!("no role '{role}'")));
            }
            tx.execute(
                "INSERT OR IGNORE INTO user_roles (user_name, role) VALUES (?1, ?2)",
                params![user, role],
            )
            .map_err(sql_err)?;
            Ok(())
        })
        .await
    }

    async fn revoke_role(&self, user: &str, role: &str) -> StoreResult<()> {
        let (user, role) = (user.to_owned(), role.to_owned());
        self.write(move |tx| {
            let n = tx
                .execute(
                    "DELETE FROM user_roles WHERE user_name = ?1 AND role = ?2",
                    params![user, role],
                )
                .map_err(sql_err)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!(
                    "user '{user}' does not hold role '{role}'"
                )));
            }
            tx.execute(
                "DELETE FROM token_roles WHERE role = ?2
                 AND token_id IN (SELECT id FROM tokens WHERE user_name = ?1)",
                params![user, role],
            )
            .map_err(sql_err)?;
            Ok(())
        })
        .await
    }

    async fn create_role(&self, role: &Role, now: i64) -> StoreResult<()> {
        let role = role.clone();
        self.write(move |conn| insert_role(conn, &role, now)).await
    }

    async fn list_roles(&self) -> StoreResult<Vec<Role>> {
        self.read(|conn| {
            roles_where(
                conn,
                "SELECT name, description, policies FROM roles ORDER BY name",
                [],
            )
        })
        .await
    }

    async fn delete_role(&self, name: &str) -> StoreResult<()> {
        let name = name.to_owned();
        self.write(move |conn| {
            let n = conn
                .execute("DELETE FROM roles WHERE name = ?1", [&name])
                .map_err(sql_err)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("no role '{name}'")));
            }
            Ok(())
        })
        .await
    }

    async fn create_token(&self, token: &TokenRow) -> StoreResult<()> {
        let token = token.clone();
        self.write(move |tx| {
            insert_token(tx, &token)?;
            Ok(())
        })
        .await
    }

    async fn list_tokens(&self, user: Option<&str>) -> StoreResult<Vec<TokenRow>> {
        let user = user.map(str::to_owned);
        self.read(move |conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM tokens
                     WHERE ?1 IS NULL OR user_name = ?1 ORDER BY user_name, name"
                ))
                .map_err(sql_err)?;
            let rows = stmt
                .query_map([&user], token_from_row)
                .map_err(sql_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql_err)?;
            finish_tokens(conn, rows)
        })
        .await
    }

    async fn delete_token(&self, user: &str, name: &str) -> StoreResult<()> {
        let (user, name) = (user.to_owned(), name.to_owned());
        self.write(move |conn| {
            let n = conn
                .execute(
                    "DELETE FROM tokens WHERE user_name = ?1 AND name = ?2",
                    params![user, name],
                )
                .map_err(sql_err)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!(
                    "user '{user}' has no token named '{name}'"
                )));
            }
            Ok(())
        })
        .await
    }

    async fn find_token_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRow>> {
        let hash = hash.to_owned();
        self.read(move |conn| {
            let row = conn
                .query_row(
                    &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = ?1"),
                    [&hash],
                    token_from_row,
                )
                .optional()
                .map_err(sql_err)?;
            Ok(finish_tokens(conn, row.into_iter().collect())?.pop())
        })
        .await
    }

    async fn password_tokens(&self) -> StoreResult<Vec<TokenRow>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM tokens WHERE kind = 'password'"
                ))
                .map_err(sql_err)?;
            let rows = stmt
                .query_map([], token_from_row)
                .map_err(sql_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql_err)?;
            finish_tokens(conn, rows)
        })
        .await
    }

    async fn principal(&self, token_id: &str, mapped_since: i64) -> StoreResult<Option<Principal>> {
        let token_id = token_id.to_owned();
        self.read(move |conn| {
            let tx = conn.transaction().map_err(sql_err)?;
            let token = tx
                .prepare_cached("SELECT user_name, name, expires_at FROM tokens WHERE id = ?1")
                .map_err(sql_err)?
                .query_row([&token_id], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                    ))
                })
                .optional()
                .map_err(sql_err)?;
            let Some((user, token_name, expires_at)) = token else {
                return Ok(None);
            };
            let roles = roles_where(
                &tx,
                // Held = granted or mapped; two EXISTS probes of primary
                // keys rather than the held_roles view (every call runs it).
                "SELECT r.name, r.description, r.policies
                 FROM token_roles tr
                 JOIN tokens t ON t.id = tr.token_id
                 JOIN roles r ON r.name = tr.role
                 WHERE tr.token_id = ?1
                   AND (EXISTS (SELECT 1 FROM user_roles ur
                                WHERE ur.user_name = t.user_name AND ur.role = tr.role)
                        OR EXISTS (SELECT 1 FROM user_mapped_roles m
                                   WHERE m.user_name = t.user_name AND m.role = tr.role
                                     AND m.mapped_at >= ?2))
                 ORDER BY r.name",
                params![token_id, mapped_since],
            )?;
            Ok(Some(Principal {
                user,
                token_id,
                token_name,
                expires_at,
                roles,
            }))
        })
        .await
    }

    async fn user_principal(&self, user: &str) -> StoreResult<Option<Principal>> {
        let user = user.to_owned();
        self.read(move |conn| {
            let tx = conn.transaction().map_err(sql_err)?;
            if !user_exists(&tx, &user)? {
                return Ok(None);
            }
            let roles = roles_where(
                &tx,
                "SELECT DISTINCT r.name, r.description, r.policies
                 FROM held_roles h JOIN roles r ON r.name = h.role
                 WHERE h.user_name = ?1 ORDER BY r.name",
                [&user],
            )?;
            Ok(Some(Principal::sso(user, roles)))
        })
        .await
    }

    async fn sso_sign_in(&self, s: &SsoSignIn) -> StoreResult<SsoSignedIn> {
        let s = s.clone();
        self.write(move |tx| {
            let bound: Option<String> = tx
                .query_row(
                    "SELECT name FROM users WHERE sso_subject = ?1",
                    [&s.subject],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql_err)?;
            let mut created = false;
            let user = match bound {
                Some(name) => name,
                None => {
                    let named: Option<Option<String>> = tx
                        .query_row(
                            "SELECT sso_subject FROM users WHERE name = ?1",
                            [&s.user],
                            |r| r.get(0),
                        )
                        .optional()
                        .map_err(sql_err)?;
                    match named {
                        Some(Some(_)) => return Err(sso_refusal_bound(&s.user, &s.subject)),
                        Some(None) => {
                            let has_tokens = tx
                                .query_row(
                                    "SELECT 1 FROM tokens WHERE user_name = ?1 LIMIT 1",
                                    [&s.user],
                                    |_| Ok(()),
                                )
                                .optional()
                                .map_err(sql_err)?
                                .is_some();
                            if has_tokens {
                                return Err(sso_refusal_token_user(&s.user));
                            }
                        }
                        None if s.create => {
                            tx.execute(
                                "INSERT INTO users (name, created_at) VALUES (?1, ?2)",
                                params![s.user, s.now],
                            )
                            .map_err(sql_err)?;
                            created = true;
                        }
                        None => return Err(sso_refusal_no_user(&s.user)),
                    }
                    tx.execute(
                        "UPDATE users SET sso_subject = ?1 WHERE name = ?2",
                        params![s.subject, s.user],
                    )
                    .map_err(sql_err)?;
                    s.user.clone()
                }
            };
            forget_mapped_roles(tx, &user)?;
            let mut unknown_roles = Vec::new();
            for role in &s.roles {
                if role_exists(tx, role)? {
                    tx.execute(
                        "INSERT INTO user_mapped_roles (user_name, role, mapped_at)
                         VALUES (?1, ?2, ?3)",
                        params![user, role, s.now],
                    )
                    .map_err(sql_err)?;
                } else {
                    unknown_roles.push(role.clone());
                }
            }
            tx.execute(
                "UPDATE users SET last_login_at = ?1, last_login_via = 'sso' WHERE name = ?2",
                params![s.now, user],
            )
            .map_err(sql_err)?;
            Ok(SsoSignedIn {
                user,
                created,
                unknown_roles,
            })
        })
        .await
    }

    async fn bind_sso(&self, user: &str, subject: Option<&str>) -> StoreResult<()> {
        let (user, subject) = (user.to_owned(), subject.map(str::to_owned));
        self.write(move |tx| {
            if !user_exists(tx, &user)? {
                return Err(StoreError::NotFound(format!("no user '{user}'")));
            }
            if let Some(subject) = &subject {
                let holder: Option<String> = tx
                    .query_row(
                        "SELECT name FROM users WHERE sso_subject = ?1 AND name <> ?2",
                        [subject, &user],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(sql_err)?;
                if let Some(holder) = holder {
                    return Err(bound_elsewhere(&holder));
                }
            }
            tx.execute(
                "UPDATE users SET sso_subject = ?1 WHERE name = ?2",
                params![subject, user],
            )
            .map_err(sql_err)?;
            forget_mapped_roles(tx, &user)?;
            Ok(())
        })
        .await
    }

    async fn note_login(&self, user: &str, via: &str, now: i64) -> StoreResult<()> {
        // Read first: most exchanges find the note fresh and write nothing.
        let (u, v) = (user.to_owned(), via.to_owned());
        let fresh = self
            .read(move |conn| {
                conn.query_row(
                    "SELECT 1 FROM users WHERE name = ?1 AND last_login_via = ?2
                     AND last_login_at > ?3 - 60",
                    params![u, v, now],
                    |_| Ok(()),
                )
                .optional()
                .map(|o| o.is_some())
                .map_err(sql_err)
            })
            .await?;
        if fresh {
            return Ok(());
        }
        let (user, via) = (user.to_owned(), via.to_owned());
        self.write(move |tx| {
            tx.execute(
                "UPDATE users SET last_login_at = ?1, last_login_via = ?2 WHERE name = ?3",
                params![now, via, user],
            )
            .map_err(sql_err)?;
            Ok(())
        })
        .await
    }

    async fn create_vault(&self, vault: &VaultRow) -> StoreResult<()> {
        let v = vault.clone();
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO vaults (id, key_id, identity, created_by, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![v.id, v.key_id, v.identity, v.created_by, v.created_at],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::AlreadyExists(format!("vault '{}' already exists", v.id))
                } else {
                    sql_err(e)
                }
            })?;
            Ok(())
        })
        .await
    }

    async fn get_vault(&self, id: &str) -> StoreResult<VaultRow> {
        let id = id.to_owned();
        self.read(move |conn| {
            conn.query_row(
                "SELECT id, key_id, identity, created_by, created_at FROM vaults WHERE id = ?1",
                [&id],
                |r| {
                    Ok(VaultRow {
                        id: r.get(0)?,
                        key_id: r.get(1)?,
                        identity: r.get(2)?,
                        created_by: r.get(3)?,
                        created_at: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(sql_err)?
            .ok_or_else(|| StoreError::NotFound(format!("no vault '{id}'")))
        })
        .await
    }

    async fn heads(&self, vault_id: &str, log: Log) -> StoreResult<BTreeMap<String, u64>> {
        let vault_id = vault_id.to_owned();
        self.read(move |conn| {
            let tx = conn.transaction().map_err(sql_err)?;
            vault_exists(&tx, &vault_id)?;
            Ok(read_heads(&tx, &vault_id, log)?.heads)
        })
        .await
    }

    async fn push(
        &self,
        vault_id: &str,
        log: Log,
        device_id: &str,
        records: Vec<NewRecord>,
        now: i64,
    ) -> StoreResult<u64> {
        let (vault_id, device_id) = (vault_id.to_owned(), device_id.to_owned());
        let (heads_t, rows_t) = log.tables();
        self.write(move |tx| {
            let key_id: Option<String> = tx
                .prepare_cached("SELECT key_id FROM vaults WHERE id = ?1")
                .map_err(sql_err)?
                .query_row([&vault_id], |r| r.get(0))
                .optional()
                .map_err(sql_err)?;
            let key_id =
                key_id.ok_or_else(|| StoreError::NotFound(format!("no vault '{vault_id}'")))?;
            let head: u64 = tx
                .prepare_cached(&format!(
                    "SELECT head FROM {heads_t} WHERE vault_id = ?1 AND device_id = ?2"
                ))
                .map_err(sql_err)?
                .query_row(params![vault_id, device_id], |r| r.get::<_, i64>(0))
                .optional()
                .map_err(sql_err)?
                .map_or(0, |h| h as u64);
            let new_head = continue_log(&records, &key_id, head)?;
            tx.prepare_cached(&format!(
                "INSERT INTO {heads_t} (vault_id, device_id, head) VALUES (?1, ?2, ?3)
                 ON CONFLICT (vault_id, device_id) DO UPDATE SET head = excluded.head"
            ))
            .map_err(sql_err)?
            .execute(params![vault_id, device_id, new_head as i64])
            .map_err(sql_err)?;
            {
                let mut insert = tx
                    .prepare_cached(&format!(
                        "INSERT INTO {rows_t} (vault_id, device_id, idx, key_id, data, received_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
                    ))
                    .map_err(sql_err)?;
                for r in &records {
                    insert
                        .execute(params![
                            vault_id,
                            device_id,
                            r.index as i64,
                            r.key_id,
                            r.data,
                            now
                        ])
                        .map_err(sql_err)?;
                }
            }
            Ok(new_head)
        })
        .await
    }

    async fn pull(
        &self,
        vault_id: &str,
        log: Log,
        since: &BTreeMap<String, u64>,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<PullPage> {
        let vault_id = vault_id.to_owned();
        let since = since.clone();
        let rows_t = log.tables().1;
        self.read(move |conn| {
            // One read transaction: heads and records come from one snapshot.
            let tx = conn.transaction().map_err(sql_err)?;
            vault_exists(&tx, &vault_id)?;
            let heads = read_heads(&tx, &vault_id, log)?;
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT idx, key_id, data, received_at FROM {rows_t}
                     WHERE vault_id = ?1 AND device_id = ?2 AND idx > ?3
                     ORDER BY idx LIMIT ?4"
                ))
                .map_err(sql_err)?;
            assemble_page(heads, &since, limit, max_bytes, |device, from, n| {
                stmt.query_map(params![vault_id, device, from as i64, n as i64], |r| {
                    Ok(StoredRecord {
                        device_id: device.to_owned(),
                        index: r.get::<_, i64>(0)? as u64,
                        key_id: r.get(1)?,
                        data: r.get(2)?,
                        received_at: r.get(3)?,
                    })
                })
                .map_err(sql_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql_err)
            })
        })
        .await
    }

    async fn prune_audit(&self, before: i64) -> StoreResult<u64> {
        self.write(move |tx| {
            let marked = tx
                .prepare(&prune_audit_sql("?1"))
                .map_err(sql_err)?
                .query_map([before], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(sql_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql_err)?;
            let mut removed = 0;
            for (vault_id, device_id, pruned) in marked {
                removed += delete_segments(tx, &vault_id, &device_id, pruned)?;
            }
            Ok(removed)
        })
        .await
    }

    async fn remove_audit_device(
        &self,
        vault_id: &str,
        device_id: &str,
    ) -> StoreResult<(u64, u64)> {
        let (vault_id, device_id) = (vault_id.to_owned(), device_id.to_owned());
        self.write(move |tx| {
            vault_exists(tx, &vault_id)?;
            let head: Option<i64> = tx
                .prepare_cached(
                    "SELECT head FROM audit_logs WHERE vault_id = ?1 AND device_id = ?2",
                )
                .map_err(sql_err)?
                .query_row(params![vault_id, device_id], |r| r.get(0))
                .optional()
                .map_err(sql_err)?;
            let Some(head) = head else {
                return Ok((0, 0));
            };
            let removed = delete_segments(tx, &vault_id, &device_id, head)?;
            tx.prepare_cached(
                "UPDATE audit_logs SET pruned = head WHERE vault_id = ?1 AND device_id = ?2",
            )
            .map_err(sql_err)?
            .execute(params![vault_id, device_id])
            .map_err(sql_err)?;
            Ok((removed, head as u64))
        })
        .await
    }
}

fn vault_exists(conn: &Connection, id: &str) -> StoreResult<()> {
    conn.prepare_cached("SELECT 1 FROM vaults WHERE id = ?1")
        .map_err(sql_err)?
        .query_row([id], |_| Ok(()))
        .optional()
        .map_err(sql_err)?
        .ok_or_else(|| StoreError::NotFound(format!("no vault '{id}'")))
}

fn read_heads(conn: &Connection, vault_id: &str, log: Log) -> StoreResult<LogHeads> {
    let mut stmt = conn.prepare_cached(&log.heads_sql("?1")).map_err(sql_err)?;
    let rows = stmt
        .query_map([vault_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
            ))
        })
        .map_err(sql_err)?
        .collect::<Result<LogHeads, _>>()
        .map_err(sql_err)?;
    Ok(rows)
}

/// Deletes `device_id`'s audit segments up to `upto`; returns how many.
fn delete_segments(
    tx: &Transaction<'_>,
    vault_id: &str,
    device_id: &str,
    upto: i64,
) -> StoreResult<u64> {
    let n = tx
        .prepare_cached(
            "DELETE FROM audit_segments WHERE vault_id = ?1 AND device_id = ?2 AND idx <= ?3",
        )
        .map_err(sql_err)?
        .execute(params![vault_id, device_id, upto])
        .map_err(sql_err)?;
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn role(name: &str) -> Role {
        Role {
            name: name.into(),
            description: String::new(),
            policies: Vec::new(),
        }
    }

    /// Starts `create_role(name)` while another connection holds the write
    /// lock, gives up on it after 200 ms (as the request timeout does, with
    /// `gate`, or without one), releases the lock and says whether the role
    /// was created anyway.
    async fn created_after_giving_up(gate: Option<CommitGate>, name: &str) -> bool {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        // The call's own bound is far longer than the request's.
        let store = SqliteStore::open_with(&path, Duration::from_secs(10))
            .await
            .unwrap();
        let holder = Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let write = {
            let store = store.clone();
            let role = role(name);
            async move { store.create_role(&role, 0).await }
        };
        let gave_up = match gate.clone() {
            Some(g) => tokio::time::timeout(Duration::from_millis(200), g.scope(write)).await,
            None => tokio::time::timeout(Duration::from_millis(200), write).await,
        };
        assert!(gave_up.is_err(), "the write finished under a held lock");
        if let Some(g) = &gate {
            assert!(g.abandon(), "nothing was committing yet");
        }
        holder.execute_batch("COMMIT").unwrap();
        // The blocking task gets the lock now; wait for the writer to be free.
        let _permit = store.write_permit.acquire().await.unwrap();
        let roles = store.list_roles().await.unwrap();
        roles.iter().any(|r| r.name == name)
    }

    /// A 503'd request's write, already running on its blocking thread, rolls
    /// back instead of committing once the lock frees. The control shows the
    /// same write without a gate does commit: the test can fail.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abandoned_write_is_rolled_back_not_committed_late() {
        assert!(
            !created_after_giving_up(Some(CommitGate::new()), "late").await,
            "the abandoned write was committed after its 503"
        );
        assert!(
            created_after_giving_up(None, "ungated").await,
            "control: without a gate the write lands after the caller left"
        );
    }
}
