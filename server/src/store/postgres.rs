//! PostgreSQL backend for shared deployments: several stateless servers on
//! one database. A deadpool connection pool over tokio-postgres; every
//! method is one transaction; migrations run at start under an advisory lock
//! so servers starting together do not race.
//!
//! Concurrency: a push locks its device's `logs` row (`SELECT … FOR UPDATE`),
//! so two servers pushing to one device serialize and the second one sees the
//! first one's head (409). A pull runs in one REPEATABLE READ snapshot.
//! Text keys use `COLLATE "C"` so ordering is bytewise, as in SQLite.
//!
//! Connections are made without TLS (`NoTls`) in this version: run the
//! database on a private network or the same host.

use std::collections::BTreeMap;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::{IsolationLevel, NoTls};
use vault_protocol::server_api::Role;

use super::gate::{self, CommitGate};
use super::pg_tls;
use super::{
    Bootstrap, Log, LogHeads, NewRecord, PoolStatus, Principal, PullPage, SsoSignIn, SsoSignedIn,
    Store, StoredRecord, TokenKind, TokenRow, UserRow, VaultRow, assemble_page, bound_elsewhere,
    continue_log, policies_to_json, prune_audit_sql, redact_url, role_from_row, sso_refusal_bound,
    sso_refusal_no_user, sso_refusal_token_user,
};
use crate::error::{StoreError, StoreResult};

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE settings (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE TABLE users (
    name       TEXT COLLATE "C" PRIMARY KEY,
    created_at BIGINT NOT NULL
);
CREATE TABLE roles (
    name        TEXT COLLATE "C" PRIMARY KEY,
    description TEXT NOT NULL,
    policies    TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE TABLE user_roles (
    user_name TEXT COLLATE "C" NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    role      TEXT COLLATE "C" NOT NULL REFERENCES roles(name) ON DELETE CASCADE,
    PRIMARY KEY (user_name, role)
);
CREATE TABLE tokens (
    id          TEXT COLLATE "C" PRIMARY KEY,
    user_name   TEXT COLLATE "C" NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    name        TEXT COLLATE "C" NOT NULL,
    description TEXT NOT NULL,
    prefix      TEXT NOT NULL,
    hash        TEXT COLLATE "C" NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    UNIQUE (user_name, name)
);
CREATE TABLE token_roles (
    token_id TEXT COLLATE "C" NOT NULL REFERENCES tokens(id) ON DELETE CASCADE,
    role     TEXT COLLATE "C" NOT NULL REFERENCES roles(name) ON DELETE CASCADE,
    PRIMARY KEY (token_id, role)
);
CREATE TABLE vaults (
    id         TEXT COLLATE "C" PRIMARY KEY,
    key_id     TEXT NOT NULL,
    identity   BYTEA NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE logs (
    vault_id  TEXT COLLATE "C" NOT NULL REFERENCES vaults(id) ON DELETE CASCADE,
    device_id TEXT COLLATE "C" NOT NULL,
    head      BIGINT NOT NULL,
    PRIMARY KEY (vault_id, device_id)
);
CREATE TABLE records (
    vault_id    TEXT COLLATE "C" NOT NULL,
    device_id   TEXT COLLATE "C" NOT NULL,
    idx         BIGINT NOT NULL,
    key_id      TEXT NOT NULL,
    data        BYTEA NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (vault_id, device_id, idx),
    FOREIGN KEY (vault_id, device_id) REFERENCES logs(vault_id, device_id) ON DELETE CASCADE
);
"#,
    r#"
CREATE TABLE login_failures (
    key          TEXT COLLATE "C" PRIMARY KEY,
    window_start BIGINT NOT NULL,
    failures     BIGINT NOT NULL
);
CREATE INDEX login_failures_start ON login_failures (window_start);
"#,
    r#"
ALTER TABLE users ADD COLUMN sso_subject TEXT COLLATE "C";
ALTER TABLE users ADD COLUMN last_login_at BIGINT;
ALTER TABLE users ADD COLUMN last_login_via TEXT COLLATE "C";
CREATE UNIQUE INDEX users_sso_subject ON users (sso_subject);
CREATE TABLE user_mapped_roles (
    user_name TEXT COLLATE "C" NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    role      TEXT COLLATE "C" NOT NULL REFERENCES roles(name) ON DELETE CASCADE,
    mapped_at BIGINT NOT NULL,
    PRIMARY KEY (user_name, role)
);
-- UNION ALL, so a WHERE on user_name reaches both primary keys (a role
-- both granted and mapped appears twice: readers use DISTINCT).
CREATE VIEW held_roles AS
    SELECT user_name, role FROM user_roles
    UNION ALL SELECT user_name, role FROM user_mapped_roles;
"#,
    // The audit log segments devices share when `[audit] sync` is on
    // (issue 24): the same shape and rules as `logs` and `records`.
    r#"
CREATE TABLE audit_logs (
    vault_id  TEXT COLLATE "C" NOT NULL REFERENCES vaults(id) ON DELETE CASCADE,
    device_id TEXT COLLATE "C" NOT NULL,
    head      BIGINT NOT NULL,
    PRIMARY KEY (vault_id, device_id)
);
CREATE TABLE audit_segments (
    vault_id    TEXT COLLATE "C" NOT NULL,
    device_id   TEXT COLLATE "C" NOT NULL,
    idx         BIGINT NOT NULL,
    key_id      TEXT NOT NULL,
    data        BYTEA NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (vault_id, device_id, idx),
    FOREIGN KEY (vault_id, device_id) REFERENCES audit_logs(vault_id, device_id) ON DELETE CASCADE
);
"#,
    // Audit segments are removed by retention (`--audit-keep`, by
    // `received_at`) or by their device; `pruned` is the last index removed.
    r#"
ALTER TABLE audit_logs ADD COLUMN pruned BIGINT NOT NULL DEFAULT 0;
CREATE INDEX audit_segments_received ON audit_segments (received_at);
"#,
];

// Arbitrary constant naming our migration lock among the database's
// advisory locks.
const MIGRATION_LOCK: i64 = 0x7661_756c_7401;

const POOL_SIZE: usize = 16;

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// Bound of one database call; also of a COMMIT's answer.
    call_timeout: std::time::Duration,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

fn pg_err(e: tokio_postgres::Error) -> StoreError {
    if e.is_closed()
        || e.as_db_error().is_none() && e.code().is_none()
        // statement_timeout ran out (the call timeout): rolled back.
        || e.code() == Some(&SqlState::QUERY_CANCELED)
        // The database is going down, starting up or out of connections
        // (class 57P, 08, 53300), or a transaction lost a race it may run
        // again (40001, 40P01): all rolled back, all worth a retry.
        || e.code().is_some_and(|c| {
            let c = c.code();
            c.starts_with("57P") || c.starts_with("08") || matches!(c, "53300" | "40001" | "40P01")
        })
    {
        return StoreError::Unavailable(format!("postgres: {e}"));
    }
    if e.code() == Some(&SqlState::DISK_FULL) {
        return StoreError::StorageFull(format!("postgres: {e}"));
    }
    StoreError::Internal(format!("postgres: {e}"))
}

/// Commits `tx` unless its request was answered 503 meanwhile
/// ([`CommitGate`]); then it is rolled back (dropped).
///
/// A COMMIT that the database refused was rolled back: its error maps as any
/// other. One whose connection broke, or that got no answer within `limit`
/// (a network partition is not bounded by `statement_timeout`), may or may
/// not have been applied: that is a 500 saying so, never a 503, which would
/// tell the client that nothing was applied.
async fn commit(
    tx: deadpool_postgres::Transaction<'_>,
    limit: std::time::Duration,
) -> StoreResult<()> {
    let gate = CommitGate::current();
    let _ticket = gate::begin(gate.as_ref())?;
    let unknown = |why: String| {
        StoreError::Internal(format!(
            "postgres: the outcome of a COMMIT is unknown ({why}); the change may have been applied"
        ))
    };
    match tokio::time::timeout(limit, tx.commit()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if e.as_db_error().is_some() => Err(pg_err(e)),
        Ok(Err(e)) => Err(unknown(e.to_string())),
        Err(_) => Err(unknown(format!(
            "no answer within {}s",
            limit.as_secs_f64()
        ))),
    }
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(format!("postgres pool: {e}"))
}

impl PostgresStore {
    /// Connects to `url`, checks the connection and migrates the schema.
    /// Every statement runs under `statement_timeout = call_timeout`, and a
    /// wait for a pooled connection is bounded by it too.
    pub async fn connect_with(
        url: &str,
        call_timeout: std::time::Duration,
    ) -> Result<Self, String> {
        let shown = redact_url(url);
        let (url, tls) = pg_tls::split_url(url).map_err(|e| format!("{e} ({shown})"))?;
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| format!("bad --database URL {shown}: {e}"))?;
        config.ssl_mode(tls.ssl_mode());
        // Kept with what the URL's own `options` say (a search_path…).
        let options = format!(
            "{} -c statement_timeout={}",
            config.get_options().unwrap_or_default(),
            call_timeout.as_millis().max(1)
        );
        config.options(options.trim_start());
        let mc = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match pg_tls::client_config(&tls)? {
            None => Manager::from_config(config, NoTls, mc),
            Some(rustls) => Manager::from_config(
                config,
                tokio_postgres_rustls::MakeRustlsConnect::new(rustls),
                mc,
            ),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(call_timeout))
            .create_timeout(Some(call_timeout))
            .build()
            .map_err(|e| format!("cannot build the PostgreSQL pool: {e}"))?;
        let store = PostgresStore { pool, call_timeout };
        // One connection first, so that a TLS refusal is told as one.
        if let Err(e) = store.pool.get().await {
            let why = match &e {
                deadpool_postgres::PoolError::Backend(pg) => pg_tls::explain(pg, &tls)
                    .or_else(|| pg.as_db_error().map(ToString::to_string))
                    .unwrap_or_else(|| crate::error::with_causes(pg)),
                other => other.to_string(),
            };
            return Err(format!("cannot connect to PostgreSQL {shown}: {why}"));
        }
        store
            .migrate()
            .await
            .map_err(|e| format!("cannot prepare PostgreSQL database {shown}: {e}"))?;
        Ok(store)
    }

    async fn migrate(&self) -> StoreResult<()> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg_err)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS vault_schema (version INT NOT NULL)")
            .await
            .map_err(pg_err)?;
        let version: i32 = tx
            .query_one("SELECT COALESCE(MAX(version), 0) FROM vault_schema", &[])
            .await
            .map_err(pg_err)?
            .get(0);
        let known = MIGRATIONS.len() as i32;
        if version > known {
            return Err(StoreError::Internal(format!(
                "schema version {version} is newer than this vault-server knows ({known}); upgrade vault-server"
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.batch_execute(sql).await.map_err(pg_err)?;
            tx.execute("DELETE FROM vault_schema", &[])
                .await
                .map_err(pg_err)?;
            tx.execute(
                "INSERT INTO vault_schema (version) VALUES ($1)",
                &[&((i + 1) as i32)],
            )
            .await
            .map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)
    }
}

fn token_from_row(r: &tokio_postgres::Row) -> StoreResult<TokenRow> {
    Ok(TokenRow {
        id: r.get(0),
        user: r.get(1),
        name: r.get(2),
        description: r.get(3),
        prefix: r.get(4),
        hash: r.get(5),
        kind: TokenKind::parse(r.get::<_, &str>(6))?,
        roles: Vec::new(),
        created_at: r.get(7),
        expires_at: r.get(8),
    })
}

const TOKEN_COLUMNS: &str =
    "id, user_name, name, description, prefix, hash, kind, created_at, expires_at";

async fn fill_token_roles<C: deadpool_postgres::GenericClient>(
    c: &C,
    mut tokens: Vec<TokenRow>,
) -> StoreResult<Vec<TokenRow>> {
    let stmt = c
        .prepare_cached("SELECT role FROM token_roles WHERE token_id = $1 ORDER BY role")
        .await
        .map_err(pg_err)?;
    for t in &mut tokens {
        t.roles = c
            .query(&stmt, &[&t.id])
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
    }
    Ok(tokens)
}

async fn user_roles<C: deadpool_postgres::GenericClient>(
    c: &C,
    user: &str,
) -> StoreResult<Vec<String>> {
    role_names(
        c,
        "SELECT role FROM user_roles WHERE user_name = $1 ORDER BY role",
        user,
    )
    .await
}

/// Drops the roles the identity provider mapped to `user`.
async fn forget_mapped_roles<C: deadpool_postgres::GenericClient>(
    c: &C,
    user: &str,
) -> StoreResult<()> {
    c.execute(
        "DELETE FROM user_mapped_roles WHERE user_name = $1",
        &[&user],
    )
    .await
    .map_err(pg_err)?;
    Ok(())
}

async fn role_names<C: deadpool_postgres::GenericClient>(
    c: &C,
    sql: &str,
    user: &str,
) -> StoreResult<Vec<String>> {
    Ok(c.query(sql, &[&user])
        .await
        .map_err(pg_err)?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

const USER_COLUMNS: &str = "name, created_at, sso_subject, last_login_at, last_login_via";

async fn user_from_row<C: deadpool_postgres::GenericClient>(
    c: &C,
    r: &tokio_postgres::Row,
) -> StoreResult<UserRow> {
    let name: String = r.get(0);
    let at: Option<i64> = r.get(3);
    let via: Option<String> = r.get(4);
    Ok(UserRow {
        roles: user_roles(c, &name).await?,
        sso_roles: role_names(
            c,
            "SELECT role FROM user_mapped_roles WHERE user_name = $1 ORDER BY role",
            &name,
        )
        .await?,
        created_at: r.get(1),
        sso_subject: r.get(2),
        last_login: at.zip(via),
        name,
    })
}

async fn exists<C: deadpool_postgres::GenericClient>(
    c: &C,
    sql: &str,
    key: &str,
) -> StoreResult<bool> {
    Ok(c.query_opt(sql, &[&key]).await.map_err(pg_err)?.is_some())
}

async fn insert_role<C: deadpool_postgres::GenericClient>(
    c: &C,
    role: &Role,
    now: i64,
) -> StoreResult<()> {
    c.execute(
        "INSERT INTO roles (name, description, policies, created_at) VALUES ($1, $2, $3, $4)",
        &[
            &role.name,
            &role.description,
            &policies_to_json(role)?,
            &now,
        ],
    )
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            StoreError::AlreadyExists(format!("role '{}' already exists", role.name))
        } else {
            pg_err(e)
        }
    })?;
    Ok(())
}

async fn insert_token<C: deadpool_postgres::GenericClient>(c: &C, t: &TokenRow) -> StoreResult<()> {
    if !exists(c, "SELECT 1 FROM users WHERE name = $1", &t.user).await? {
        return Err(StoreError::NotFound(format!("no user '{}'", t.user)));
    }
    let held = role_names(
        c,
        "SELECT DISTINCT role FROM held_roles WHERE user_name = $1 ORDER BY role",
        &t.user,
    )
    .await?;
    for role in &t.roles {
        if !held.contains(role) {
            return Err(StoreError::Invalid(format!(
                "user '{}' does not hold role '{role}'; a token carries a subset of its owner's roles",
                t.user
            )));
        }
    }
    c.execute(
        "INSERT INTO tokens (id, user_name, name, description, prefix, hash, kind, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &t.id,
            &t.user,
            &t.name,
            &t.description,
            &t.prefix,
            &t.hash,
            &t.kind.as_str(),
            &t.created_at,
            &t.expires_at,
        ],
    )
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            StoreError::AlreadyExists(format!(
                "user '{}' already has a token named '{}'",
                t.user, t.name
            ))
        } else {
            pg_err(e)
        }
    })?;
    for role in &t.roles {
        c.execute(
            "INSERT INTO token_roles (token_id, role) VALUES ($1, $2)",
            &[&t.id, role],
        )
        .await
        .map_err(pg_err)?;
    }
    Ok(())
}

async fn vault_exists<C: deadpool_postgres::GenericClient>(
    c: &C,
    vault_id: &str,
) -> StoreResult<()> {
    if !exists(c, "SELECT 1 FROM vaults WHERE id = $1", vault_id).await? {
        return Err(StoreError::NotFound(format!("no vault '{vault_id}'")));
    }
    Ok(())
}

async fn read_heads<C: deadpool_postgres::GenericClient>(
    c: &C,
    vault_id: &str,
    log: Log,
) -> StoreResult<LogHeads> {
    vault_exists(c, vault_id).await?;
    let stmt = c
        .prepare_cached(&log.heads_sql("$1"))
        .await
        .map_err(pg_err)?;
    Ok(c.query(&stmt, &[&vault_id])
        .await
        .map_err(pg_err)?
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                r.get::<_, i64>(1) as u64,
                r.get::<_, i64>(2) as u64,
            )
        })
        .collect())
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn schema_version(&self) -> StoreResult<(i64, i64)> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let version: i32 = client
            .query_one("SELECT COALESCE(MAX(version), 0) FROM vault_schema", &[])
            .await
            .map_err(pg_err)?
            .get(0);
        Ok((i64::from(version), MIGRATIONS.len() as i64))
    }

    async fn records_stored(&self) -> StoreResult<u64> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let n: i64 = client
            .query_one("SELECT COALESCE(SUM(head), 0)::BIGINT FROM logs", &[])
            .await
            .map_err(pg_err)?
            .get(0);
        Ok(n.max(0) as u64)
    }

    fn pool_status(&self) -> PoolStatus {
        let s = self.pool.status();
        PoolStatus {
            max: s.max_size,
            in_use: s.size.saturating_sub(s.available),
            waiting: s.waiting,
        }
    }

    async fn login_failures(&self, keys: &[String], since: i64) -> StoreResult<Vec<(i64, i64)>> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let rows = client
            .query(
                "SELECT window_start, failures FROM login_failures \
                 WHERE key = ANY($1) AND window_start >= $2",
                &[&keys, &since],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn record_login_failure(&self, keys: &[String], now: i64, since: i64) -> StoreResult<()> {
        // One statement per key, each atomic on its own, always in the
        // caller's order, and the sweep last: no transaction holds one row
        // while waiting for another, so replicas cannot deadlock here.
        let client = self.pool.get().await.map_err(pool_err)?;
        for key in keys {
            client
                .execute(
                    "INSERT INTO login_failures (key, window_start, failures) VALUES ($1, $2, 1) \
                 ON CONFLICT (key) DO UPDATE SET \
                 failures = CASE WHEN login_failures.window_start < $3 THEN 1 \
                                 ELSE login_failures.failures + 1 END, \
                 window_start = CASE WHEN login_failures.window_start < $3 THEN $2 \
                                     ELSE login_failures.window_start END",
                    &[key, &now, &since],
                )
                .await
                .map_err(pg_err)?;
        }
        client
            .execute(
                "DELETE FROM login_failures WHERE window_start < $1",
                &[&since],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn jwt_secret(&self) -> StoreResult<Vec<u8>> {
        let fresh = crate::crypto::random_bytes(32).map_err(StoreError::Internal)?;
        let client = self.pool.get().await.map_err(pool_err)?;
        client
            .execute(
                "INSERT INTO settings (key, value) VALUES ('jwt_secret', $1) ON CONFLICT DO NOTHING",
                &[&fresh],
            )
            .await
            .map_err(pg_err)?;
        Ok(client
            .query_one("SELECT value FROM settings WHERE key = 'jwt_secret'", &[])
            .await
            .map_err(pg_err)?
            .get(0))
    }

    async fn bootstrap_admin(
        &self,
        admin_role: &Role,
        password: &TokenRow,
        now: i64,
    ) -> StoreResult<Bootstrap> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        // Servers starting together must not both bootstrap.
        tx.execute("LOCK TABLE users IN EXCLUSIVE MODE", &[])
            .await
            .map_err(pg_err)?;
        let users: i64 = tx
            .query_one("SELECT COUNT(*) FROM users", &[])
            .await
            .map_err(pg_err)?
            .get(0);
        if users > 0 {
            return Ok(Bootstrap::AlreadyDone);
        }
        if !exists(&tx, "SELECT 1 FROM roles WHERE name = $1", &admin_role.name).await? {
            insert_role(&tx, admin_role, now).await?;
        }
        tx.execute(
            "INSERT INTO users (name, created_at) VALUES ($1, $2)",
            &[&password.user, &now],
        )
        .await
        .map_err(pg_err)?;
        tx.execute(
            "INSERT INTO user_roles (user_name, role) VALUES ($1, $2)",
            &[&password.user, &admin_role.name],
        )
        .await
        .map_err(pg_err)?;
        insert_token(&tx, password).await?;
        commit(tx, self.call_timeout).await?;
        Ok(Bootstrap::Created)
    }

    async fn create_user(&self, name: &str, roles: &[String], now: i64) -> StoreResult<()> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute(
            "INSERT INTO users (name, created_at) VALUES ($1, $2)",
            &[&name, &now],
        )
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::AlreadyExists(format!("user '{name}' already exists"))
            } else {
                pg_err(e)
            }
        })?;
        for role in roles {
            if !exists(&tx, "SELECT 1 FROM roles WHERE name = $1", role).await? {
                return Err(StoreError::Invalid(format!("no role '{role}'")));
            }
            tx.execute(
                "INSERT INTO user_roles (user_name, role) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&name, role],
            )
            .await
            .map_err(pg_err)?;
        }
        commit(tx, self.call_timeout).await
    }

    async fn list_users(&self) -> StoreResult<Vec<UserRow>> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let rows = client
            .query(
                &format!("SELECT {USER_COLUMNS} FROM users ORDER BY name"),
                &[],
            )
            .await
            .map_err(pg_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(user_from_row(&client, r).await?);
        }
        Ok(out)
    }

    async fn get_user(&self, name: &str) -> StoreResult<UserRow> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let row = client
            .query_opt(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE name = $1"),
                &[&name],
            )
            .await
            .map_err(pg_err)?
            .ok_or_else(|| StoreError::NotFound(format!("no user '{name}'")))?;
        user_from_row(&client, &row).await
    }

    async fn delete_user(&self, name: &str) -> StoreResult<()> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let n = tx
            .execute("DELETE FROM users WHERE name = $1", &[&name])
            .await
            .map_err(pg_err)?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no user '{name}'")));
        }
        commit(tx, self.call_timeout).await
    }

    async fn grant_role(&self, user: &str, role: &str) -> StoreResult<()> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        if !exists(&tx, "SELECT 1 FROM users WHERE name = $1", user).await? {
            return Err(StoreError::NotFound(format!("no user '{user}'")));
        }
        if !exists(&tx, "SELECT 1 FROM roles WHERE name = $1", role).await? {
            return Err(StoreError::NotFound(format!("no role '{role}'")));
        }
        tx.execute(
            "INSERT INTO user_roles (user_name, role) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&user, &role],
        )
        .await
        .map_err(pg_err)?;
        commit(tx, self.call_timeout).await
    }

    async fn revoke_role(&self, user: &str, role: &str) -> StoreResult<()> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let n = tx
            .execute(
                "DELETE FROM user_roles WHERE user_name = $1 AND role = $2",
                &[&user, &role],
            )
            .await
            .map_err(pg_err)?;
        if n == 0 {
            return Err(StoreError::NotFound(format!(
                "user '{user}' does not hold role '{role}'"
            )));
        }
        tx.execute(
            "DELETE FROM token_roles WHERE role = $2
             AND token_id IN (SELECT id FROM tokens WHERE user_name = $1)",
            &[&user, &role],
        )
        .await
        .map_err(pg_err)?;
        commit(tx, self.call_timeout).await
    }

    async fn create_role(&self, role: &Role, now: i64) -> StoreResult<()> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        insert_role(&tx, role, now).await?;
        commit(tx, self.call_timeout).await
    }

    async fn list_roles(&self) -> StoreResult<Vec<Role>> {
        let client = self.pool.get().await.map_err(pool_err)?;
        client
            .query(
                "SELECT name, description, policies FROM roles ORDER BY name",
                &[],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| role_from_row(r.get(0), r.get(1), r.get::<_, &str>(2)))
            .collect()
    }

    async fn delete_role(&self, name: &str) -> StoreResult<()> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let n = tx
            .execute("DELETE FROM roles WHERE name = $1", &[&name])
            .await
            .map_err(pg_err)?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no role '{name}'")));
        }
        commit(tx, self.call_timeout).await
    }

    async fn create_token(&self, token: &TokenRow) -> StoreResult<()> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        insert_token(&tx, token).await?;
        commit(tx, self.call_timeout).await
    }

    async fn list_tokens(&self, user: Option<&str>) -> StoreResult<Vec<TokenRow>> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let rows = client
            .query(
                &format!(
                    "SELECT {TOKEN_COLUMNS} FROM tokens
                     WHERE $1::text IS NULL OR user_name = $1 ORDER BY user_name, name"
                ),
                &[&user],
            )
            .await
            .map_err(pg_err)?;
        let tokens = rows
            .iter()
            .map(token_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        fill_token_roles(&client, tokens).await
    }

    async fn delete_token(&self, user: &str, name: &str) -> StoreResult<()> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let n = tx
            .execute(
                "DELETE FROM tokens WHERE user_name = $1 AND name = $2",
                &[&user, &name],
            )
            .await
            .map_err(pg_err)?;
        if n == 0 {
            return Err(StoreError::NotFound(format!(
                "user '{user}' has no token named '{name}'"
            )));
        }
        commit(tx, self.call_timeout).await
    }

    async fn find_token_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRow>> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let row = client
            .query_opt(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = $1"),
                &[&hash],
            )
            .await
            .map_err(pg_err)?;
        let tokens = row.iter().map(token_from_row).collect::<StoreResult<_>>()?;
        Ok(fill_token_roles(&client, tokens).await?.pop())
    }

    async fn password_tokens(&self) -> StoreResult<Vec<TokenRow>> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let rows = client
            .query(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE kind = 'password'"),
                &[],
            )
            .await
            .map_err(pg_err)?;
        let tokens = rows
            .iter()
            .map(token_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        fill_token_roles(&client, tokens).await
    }

    async fn principal(&self, token_id: &str, mapped_since: i64) -> StoreResult<Option<Principal>> {
        let client = self.pool.get().await.map_err(pool_err)?;
        // One round trip: the token row joined with its effective roles
        // (a token without effective roles still yields one row).
        let stmt = client
            .prepare_cached(
                "SELECT t.user_name, t.name, t.expires_at, r.name, r.description, r.policies
                 FROM tokens t
                 LEFT JOIN token_roles tr ON tr.token_id = t.id
                     AND (EXISTS (SELECT 1 FROM user_roles ur
                                  WHERE ur.user_name = t.user_name AND ur.role = tr.role)
                          OR EXISTS (SELECT 1 FROM user_mapped_roles m
                                     WHERE m.user_name = t.user_name AND m.role = tr.role
                                       AND m.mapped_at >= $2))
                 LEFT JOIN roles r ON r.name = tr.role
                 WHERE t.id = $1 ORDER BY r.name",
            )
            .await
            .map_err(pg_err)?;
        let rows = client
            .query(&stmt, &[&token_id, &mapped_since])
            .await
            .map_err(pg_err)?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let mut roles = Vec::new();
        for r in &rows {
            if let Some(name) = r.get::<_, Option<String>>(3) {
                roles.push(role_from_row(name, r.get(4), r.get::<_, &str>(5))?);
            }
        }
        Ok(Some(Principal {
            user: first.get(0),
            token_id: token_id.to_owned(),
            token_name: first.get(1),
            expires_at: first.get(2),
            roles,
        }))
    }

    async fn user_principal(&self, user: &str) -> StoreResult<Option<Principal>> {
        let client = self.pool.get().await.map_err(pool_err)?;
        // One round trip: the user row joined with every role it holds (a
        // user without roles still yields one row).
        let stmt = client
            .prepare_cached(
                "SELECT DISTINCT r.name, r.description, r.policies
                 FROM users u
                 LEFT JOIN held_roles h ON h.user_name = u.name
                 LEFT JOIN roles r ON r.name = h.role
                 WHERE u.name = $1 ORDER BY r.name",
            )
            .await
            .map_err(pg_err)?;
        let rows = client.query(&stmt, &[&user]).await.map_err(pg_err)?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut roles = Vec::new();
        for r in &rows {
            if let Some(name) = r.get::<_, Option<String>>(0) {
                roles.push(role_from_row(name, r.get(1), r.get::<_, &str>(2))?);
            }
        }
        Ok(Some(Principal::sso(user.to_owned(), roles)))
    }

    async fn sso_sign_in(&self, s: &SsoSignIn) -> StoreResult<SsoSignedIn> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let bound = tx
            .query_opt(
                // Locked, so a concurrent 'user bind/unbind' either went
                // first (this finds the moved row no more) or waits.
                "SELECT name FROM users WHERE sso_subject = $1 FOR UPDATE",
                &[&s.subject],
            )
            .await
            .map_err(pg_err)?;
        let mut created = false;
        let user: String = match bound {
            Some(r) => r.get(0),
            None => {
                if s.create {
                    created = tx
                        .execute(
                            "INSERT INTO users (name, created_at) VALUES ($1, $2)
                             ON CONFLICT DO NOTHING",
                            &[&s.user, &s.now],
                        )
                        .await
                        .map_err(pg_err)?
                        == 1;
                }
                // Binds only an unbound user without access tokens or a
                // password: never a token user (the bootstrap admin) by name.
                let n = tx
                    .execute(
                        "UPDATE users SET sso_subject = $1 WHERE name = $2 AND sso_subject IS NULL
                         AND NOT EXISTS (SELECT 1 FROM tokens WHERE user_name = $2)",
                        &[&s.subject, &s.user],
                    )
                    .await
                    .map_err(pg_err)?;
                if n == 0 {
                    // Missing, a token user, or bound meanwhile (by this
                    // subject, in a concurrent sign-in, or by another).
                    let row = tx
                        .query_opt("SELECT sso_subject FROM users WHERE name = $1", &[&s.user])
                        .await
                        .map_err(pg_err)?;
                    match row.map(|r| r.get::<_, Option<String>>(0)) {
                        None => return Err(sso_refusal_no_user(&s.user)),
                        Some(None) => return Err(sso_refusal_token_user(&s.user)),
                        Some(subject) if subject.as_deref() == Some(&s.subject) => {}
                        Some(_) => return Err(sso_refusal_bound(&s.user, &s.subject)),
                    }
                }
                s.user.clone()
            }
        };
        // One sign-in of a user at a time: a concurrent one would miss
        // this one's new rows in its DELETE and collide in its INSERT.
        tx.execute("SELECT 1 FROM users WHERE name = $1 FOR UPDATE", &[&user])
            .await
            .map_err(pg_err)?;
        forget_mapped_roles(&tx, &user).await?;
        let mut unknown_roles = Vec::new();
        for role in &s.roles {
            let n = tx
                .execute(
                    "INSERT INTO user_mapped_roles (user_name, role, mapped_at)
                     SELECT $1, name, $3 FROM roles WHERE name = $2",
                    &[&user, role, &s.now],
                )
                .await
                .map_err(pg_err)?;
            if n == 0 {
                unknown_roles.push(role.clone());
            }
        }
        tx.execute(
            "UPDATE users SET last_login_at = $1, last_login_via = 'sso' WHERE name = $2",
            &[&s.now, &user],
        )
        .await
        .map_err(pg_err)?;
        commit(tx, self.call_timeout).await?;
        Ok(SsoSignedIn {
            user,
            created,
            unknown_roles,
        })
    }

    async fn bind_sso(&self, user: &str, subject: Option<&str>) -> StoreResult<()> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        if !exists(&tx, "SELECT 1 FROM users WHERE name = $1 FOR UPDATE", user).await? {
            return Err(StoreError::NotFound(format!("no user '{user}'")));
        }
        if let Some(subject) = subject {
            let holder = tx
                .query_opt(
                    "SELECT name FROM users WHERE sso_subject = $1 AND name <> $2",
                    &[&subject, &user],
                )
                .await
                .map_err(pg_err)?;
            if let Some(holder) = holder {
                return Err(bound_elsewhere(&holder.get::<_, String>(0)));
            }
        }
        tx.execute(
            "UPDATE users SET sso_subject = $1 WHERE name = $2",
            &[&subject, &user],
        )
        .await
        .map_err(pg_err)?;
        forget_mapped_roles(&tx, user).await?;
        commit(tx, self.call_timeout).await
    }

    async fn note_login(&self, user: &str, via: &str, now: i64) -> StoreResult<()> {
        let client = self.pool.get().await.map_err(pool_err)?;
        client
            .execute(
                "UPDATE users SET last_login_at = $1::BIGINT, last_login_via = $2::TEXT
                 WHERE name = $3 AND (last_login_at IS NULL OR last_login_at <= $1::BIGINT - 60
                                      OR last_login_via IS DISTINCT FROM $2::TEXT)",
                &[&now, &via, &user],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn create_vault(&self, vault: &VaultRow) -> StoreResult<()> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute(
            "INSERT INTO vaults (id, key_id, identity, created_by, created_at)
                 VALUES ($1, $2, $3, $4, $5)",
            &[
                &vault.id,
                &vault.key_id,
                &vault.identity,
                &vault.created_by,
                &vault.created_at,
            ],
        )
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::AlreadyExists(format!("vault '{}' already exists", vault.id))
            } else {
                pg_err(e)
            }
        })?;
        commit(tx, self.call_timeout).await
    }

    async fn get_vault(&self, id: &str) -> StoreResult<VaultRow> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let r = client
            .query_opt(
                "SELECT id, key_id, identity, created_by, created_at FROM vaults WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(pg_err)?
            .ok_or_else(|| StoreError::NotFound(format!("no vault '{id}'")))?;
        Ok(VaultRow {
            id: r.get(0),
            key_id: r.get(1),
            identity: r.get(2),
            created_by: r.get(3),
            created_at: r.get(4),
        })
    }

    async fn heads(&self, vault_id: &str, log: Log) -> StoreResult<BTreeMap<String, u64>> {
        let client = self.pool.get().await.map_err(pool_err)?;
        Ok(read_heads(&client, vault_id, log).await?.heads)
    }

    async fn push(
        &self,
        vault_id: &str,
        log: Log,
        device_id: &str,
        records: Vec<NewRecord>,
        now: i64,
    ) -> StoreResult<u64> {
        let (heads_t, rows_t) = log.tables();
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let key_stmt = tx
            .prepare_cached("SELECT key_id FROM vaults WHERE id = $1")
            .await
            .map_err(pg_err)?;
        let key_id: String = tx
            .query_opt(&key_stmt, &[&vault_id])
            .await
            .map_err(pg_err)?
            .ok_or_else(|| StoreError::NotFound(format!("no vault '{vault_id}'")))?
            .get(0);
        let ensure = tx
            .prepare_cached(&format!(
                "INSERT INTO {heads_t} (vault_id, device_id, head) VALUES ($1, $2, 0)
                 ON CONFLICT DO NOTHING"
            ))
            .await
            .map_err(pg_err)?;
        tx.execute(&ensure, &[&vault_id, &device_id])
            .await
            .map_err(pg_err)?;
        let lock = tx
            .prepare_cached(&format!(
                "SELECT head FROM {heads_t} WHERE vault_id = $1 AND device_id = $2 FOR UPDATE"
            ))
            .await
            .map_err(pg_err)?;
        let head = tx
            .query_one(&lock, &[&vault_id, &device_id])
            .await
            .map_err(pg_err)?
            .get::<_, i64>(0) as u64;
        let new_head = continue_log(&records, &key_id, head)?;
        let indexes: Vec<i64> = records.iter().map(|r| r.index as i64).collect();
        let key_ids: Vec<&str> = records.iter().map(|r| r.key_id.as_str()).collect();
        let datas: Vec<&[u8]> = records.iter().map(|r| r.data.as_slice()).collect();
        let insert = tx
            .prepare_cached(&format!(
                "INSERT INTO {rows_t} (vault_id, device_id, idx, key_id, data, received_at)
                 SELECT $1, $2, t.idx, t.key_id, t.data, $6
                 FROM UNNEST($3::bigint[], $4::text[], $5::bytea[]) AS t(idx, key_id, data)"
            ))
            .await
            .map_err(pg_err)?;
        tx.execute(
            &insert,
            &[&vault_id, &device_id, &indexes, &key_ids, &datas, &now],
        )
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::IndexConflict { expected: head + 1 }
            } else {
                pg_err(e)
            }
        })?;
        let update = tx
            .prepare_cached(&format!(
                "UPDATE {heads_t} SET head = $3 WHERE vault_id = $1 AND device_id = $2"
            ))
            .await
            .map_err(pg_err)?;
        tx.execute(&update, &[&vault_id, &device_id, &(new_head as i64)])
            .await
            .map_err(pg_err)?;
        commit(tx, self.call_timeout).await?;
        Ok(new_head)
    }

    async fn pull(
        &self,
        vault_id: &str,
        log: Log,
        since: &BTreeMap<String, u64>,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<PullPage> {
        let (heads_t, rows_t) = log.tables();
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg_err)?;
        let heads = read_heads(&tx, vault_id, log).await?;
        // One query for the whole page: each lagging device's records past
        // its `since` (an index range scan per device, never the whole
        // vault), in (device, index) order, at most `limit` of them, and
        // only those that start before `max_bytes` (so a page of large
        // records does not pull `limit` megabytes out of the database).
        let devices: Vec<&str> = since.keys().map(String::as_str).collect();
        let froms: Vec<i64> = since
            .values()
            .map(|&v| v.min(i64::MAX as u64) as i64)
            .collect();
        let stmt = tx
            .prepare_cached(&format!(
                "WITH page AS (
                     SELECT l.device_id, r.idx, r.key_id, r.received_at, r.len
                     FROM {heads_t} l
                     LEFT JOIN UNNEST($2::text[], $3::bigint[]) AS s(device_id, since)
                         ON s.device_id = l.device_id
                     CROSS JOIN LATERAL (
                         SELECT r.idx, r.key_id, r.received_at, octet_length(r.data) AS len
                         FROM {rows_t} r
                         WHERE r.vault_id = l.vault_id AND r.device_id = l.device_id
                           AND r.idx > COALESCE(s.since, 0)
                         ORDER BY r.idx
                         LIMIT $4
                     ) r
                     WHERE l.vault_id = $1 AND l.head > COALESCE(s.since, 0)
                     ORDER BY l.device_id, r.idx
                     LIMIT $4
                 ), sized AS (
                     SELECT page.*, SUM(len) OVER (ORDER BY device_id, idx) - len AS before
                     FROM page
                 )
                 SELECT z.device_id, z.idx, z.key_id, r.data, z.received_at
                 FROM sized z
                 JOIN {rows_t} r ON r.vault_id = $1 AND r.device_id = z.device_id AND r.idx = z.idx
                 WHERE z.before < $5
                 ORDER BY z.device_id, z.idx"
            ))
            .await
            .map_err(pg_err)?;
        let max_bytes_i64 = max_bytes.min(i64::MAX as usize) as i64;
        let rows = tx
            .query(
                &stmt,
                &[&vault_id, &devices, &froms, &(limit as i64), &max_bytes_i64],
            )
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        let mut by_device: BTreeMap<String, Vec<StoredRecord>> = BTreeMap::new();
        for r in rows {
            let device_id: String = r.get(0);
            by_device
                .entry(device_id.clone())
                .or_default()
                .push(StoredRecord {
                    device_id,
                    index: r.get::<_, i64>(1) as u64,
                    key_id: r.get(2),
                    data: r.get(3),
                    received_at: r.get(4),
                });
        }
        assemble_page(heads, since, limit, max_bytes, |device, _from, n| {
            let mut run = by_device.remove(device).unwrap_or_default();
            run.truncate(n);
            Ok(run)
        })
    }

    async fn prune_audit(&self, before: i64) -> StoreResult<u64> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        // The devices' `audit_logs` rows first (locked by the UPDATE), then
        // their segments: the order a push and a removal take them in.
        let marked = tx
            .query(&prune_audit_sql("$1"), &[&before])
            .await
            .map_err(pg_err)?;
        if marked.is_empty() {
            return Ok(0);
        }
        let vaults: Vec<String> = marked.iter().map(|r| r.get(0)).collect();
        let devices: Vec<String> = marked.iter().map(|r| r.get(1)).collect();
        let upto: Vec<i64> = marked.iter().map(|r| r.get(2)).collect();
        let removed = tx
            .execute(
                "DELETE FROM audit_segments s
                 USING UNNEST($1::text[], $2::text[], $3::bigint[]) AS t(vault_id, device_id, upto)
                 WHERE s.vault_id = t.vault_id AND s.device_id = t.device_id AND s.idx <= t.upto",
                &[&vaults, &devices, &upto],
            )
            .await
            .map_err(pg_err)?;
        commit(tx, self.call_timeout).await?;
        Ok(removed)
    }

    async fn remove_audit_device(
        &self,
        vault_id: &str,
        device_id: &str,
    ) -> StoreResult<(u64, u64)> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        vault_exists(&tx, vault_id).await?;
        let Some(row) = tx
            .query_opt(
                "SELECT head FROM audit_logs WHERE vault_id = $1 AND device_id = $2 FOR UPDATE",
                &[&vault_id, &device_id],
            )
            .await
            .map_err(pg_err)?
        else {
            return Ok((0, 0));
        };
        let head: i64 = row.get(0);
        let removed = tx
            .execute(
                "DELETE FROM audit_segments WHERE vault_id = $1 AND device_id = $2",
                &[&vault_id, &device_id],
            )
            .await
            .map_err(pg_err)?;
        tx.execute(
            "UPDATE audit_logs SET pruned = head WHERE vault_id = $1 AND device_id = $2",
            &[&vault_id, &device_id],
        )
        .await
        .map_err(pg_err)?;
        commit(tx, self.call_timeout).await?;
        Ok((removed, head as u64))
    }
}
