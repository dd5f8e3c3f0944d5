//! The vault database (docs/architecture.md): SQLite in WAL mode, versioned migrations,
//! one writer (this daemon). It stores ciphertext only; plaintext columns are
//! the record id, kind, times, the blind-index MAC and bookkeeping.
//!
//! Every change appends a revision, so nothing is ever overwritten: `records`
//! holds the head of each record, `revisions` every version including the
//! head.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

mod audit;
mod checks;
mod publish;
mod rotations;

pub use audit::{AuditGap, AuditRow, AuditSegment};
pub use checks::CheckRow;
pub use publish::{Presence, PubKey, PubRow, RemoteRow};
pub use rotations::RotationRow;

/// Schema migrations; index + 1 is the `user_version` after applying.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE vault_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE records (
    id         TEXT PRIMARY KEY,
    name_mac   BLOB NOT NULL,
    kind       TEXT NOT NULL,
    revision   INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    expires_at INTEGER,
    deleted    INTEGER NOT NULL DEFAULT 0,
    body       BLOB NOT NULL
);
CREATE UNIQUE INDEX records_live_name ON records(name_mac) WHERE deleted = 0;
CREATE INDEX records_name ON records(name_mac, updated_at);
CREATE TABLE revisions (
    record_id  TEXT NOT NULL REFERENCES records(id),
    revision   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    device     TEXT NOT NULL,
    change     TEXT NOT NULL,
    deleted    INTEGER NOT NULL,
    body       BLOB NOT NULL,
    PRIMARY KEY (record_id, revision)
);
"#,
    r#"
CREATE TABLE emitters (
    id         TEXT PRIMARY KEY,
    record_id  TEXT NOT NULL REFERENCES records(id),
    kind       TEXT NOT NULL,
    path       TEXT NOT NULL,
    section    TEXT NOT NULL,
    program    TEXT,
    created_at INTEGER NOT NULL,
    UNIQUE (path, section)
);
"#,
    // Sync (docs/sync.md): a revision's place in its device's log and its
    // hybrid logical clock (NULL for revisions written before sync);
    // records that lost a name to a concurrent record; what was pulled;
    // which revisions each was written over.
    r#"
ALTER TABLE revisions ADD COLUMN log_index INTEGER;
ALTER TABLE revisions ADD COLUMN clock INTEGER;
CREATE UNIQUE INDEX revisions_log ON revisions(device, log_index) WHERE log_index IS NOT NULL;
ALTER TABLE records ADD COLUMN shadowed INTEGER NOT NULL DEFAULT 0;
CREATE TABLE sync_seen (
    device     TEXT PRIMARY KEY,
    last_index INTEGER NOT NULL
);
-- The revisions each logged revision was written over: a logged revision
-- that is not the head and that nothing was written over is a conflict.
CREATE TABLE log_parents (
    record_id     TEXT NOT NULL REFERENCES records(id),
    parent_device TEXT NOT NULL,
    parent_index  INTEGER NOT NULL
);
CREATE INDEX log_parents_of ON log_parents(record_id, parent_device, parent_index);
-- Records where a pulled revision may have left a conflict (the only place
-- one can appear), so listing conflicts never scans the whole history.
CREATE TABLE sync_forks (
    record_id TEXT PRIMARY KEY REFERENCES records(id)
);
"#,
    // Publishing to workload platforms (issue 10): remotes with their
    // access token (age ciphertext) and the credentials bound to them.
    r#"
CREATE TABLE remotes (
    name       TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    url        TEXT NOT NULL,
    token      BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE publications (
    remote          TEXT NOT NULL REFERENCES remotes(name),
    remote_name     TEXT NOT NULL,
    record_id       TEXT NOT NULL REFERENCES records(id),
    cred_type       TEXT NOT NULL,
    queued_at       INTEGER NOT NULL,
    pushed_revision INTEGER,
    present         INTEGER NOT NULL DEFAULT 0,
    unpublish       INTEGER NOT NULL DEFAULT 0,
    failed_revision INTEGER,
    error           BLOB,
    PRIMARY KEY (remote, remote_name)
);
CREATE INDEX publications_record ON publications(record_id);
"#,
    // Authenticated sync entries (issue 18): the MAC of each device's last
    // authenticated entry (the chain's head), the heads that applied
    // entries claim other devices' logs reach, and pulled entries refused.
    r#"
CREATE TABLE sync_chain (
    device     TEXT PRIMARY KEY,
    last_index INTEGER NOT NULL,
    mac        BLOB NOT NULL
);
CREATE TABLE sync_claims (
    device    TEXT PRIMARY KEY,
    through   INTEGER NOT NULL,
    by_device TEXT NOT NULL,
    by_index  INTEGER NOT NULL
);
CREATE TABLE sync_refused (
    device     TEXT NOT NULL,
    log_index  INTEGER NOT NULL,
    reason     TEXT NOT NULL,
    held       INTEGER NOT NULL,
    -- written without authentication (an older vault, or forged)
    legacy     INTEGER NOT NULL,
    first_seen INTEGER NOT NULL,
    PRIMARY KEY (device, log_index)
);
"#,
    // Approvals (docs/sync.md): the exact values of fields that run a program,
    // write a file or name an endpoint, approved on this device. Local
    // state, never synced. `digest` is an HMAC of record id, field and
    // value under a key derived from the vault identity, so the table
    // tells nothing about the values.
    r#"
CREATE TABLE approvals (
    record_id   TEXT NOT NULL,
    field       TEXT NOT NULL,
    digest      BLOB NOT NULL,
    approved_at INTEGER NOT NULL,
    PRIMARY KEY (record_id, field, digest)
);
"#,
    // The region of an emitted AWS profile (issue 26, docs/emit.md): a keys
    // binding also keeps `region` in `[profile P]` of the config file at
    // `config_path`; `config_region` says it owns that key there (else the
    // user's own line is left alone), `config_made` that it made the
    // section (which then goes once empty). `rendering` is the version of
    // what a binding writes (1: before the region line, 2: with it): rows
    // from before are 1, so an older binding is never called drifted for a
    // line it never wrote, and the daemon moves it to 2 where its file
    // still holds exactly what version 1 wrote.
    r#"
ALTER TABLE emitters ADD COLUMN config_path TEXT;
ALTER TABLE emitters ADD COLUMN config_region INTEGER NOT NULL DEFAULT 0;
ALTER TABLE emitters ADD COLUMN config_made INTEGER NOT NULL DEFAULT 0;
ALTER TABLE emitters ADD COLUMN rendering INTEGER NOT NULL DEFAULT 1;
"#,
    // Health checks (issue 24, docs/lifecycle.md): each record's last
    // `vault check`, of which revision, and what the service said (age
    // ciphertext). Local state, never synced.
    r#"
CREATE TABLE checks (
    record_id  TEXT PRIMARY KEY REFERENCES records(id),
    revision   INTEGER NOT NULL,
    checked_at INTEGER NOT NULL,
    ok         INTEGER NOT NULL,
    detail     BLOB NOT NULL
);
"#,
    // The audit log (issue 24, docs/lifecycle.md): one row per value
    // handed out, numbered from 1 without gaps. `body` is sealed to the
    // vault key with the row's number bound in; `mac` chains each row to
    // the one before. Local state, never synced.
    r#"
CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    record_id TEXT NOT NULL,
    body      BLOB NOT NULL,
    mac       BLOB NOT NULL
);
CREATE INDEX audit_record ON audit(record_id, seq);
"#,
    // Rotations not finished yet (`vault rotate`, docs/lifecycle.md): the
    // old access key of a record, still to be deactivated or deleted, and
    // when. `stage` and `due_at` are bookkeeping; `body` (the key ids, the
    // last error) is sealed to the vault key. Local state, never synced.
    r#"
CREATE TABLE rotations (
    record_id TEXT PRIMARY KEY,
    stage     TEXT NOT NULL,
    due_at    INTEGER NOT NULL,
    body      BLOB NOT NULL
);
"#,
    // Kubeconfig users (`vault emit kube`, docs/kube.md): a binding of
    // kind `kube` runs `program eks|gke token NAME` with these arguments
    // after the name (a JSON array of strings: `--cluster C`, `--region
    // R`, `--scope S`). A new kind, so an older vaultd never meets one.
    r#"
ALTER TABLE emitters ADD COLUMN exec_args TEXT;
"#,
    // The aws CLI's own SSO files (`vault emit aws --sso`, docs/sso.md):
    // bindings of kinds `aws-sso` and `aws-sso-token`. No table changes; a
    // new version so that an older vaultd never meets a kind it does not
    // know.
    r#"
UPDATE vault_meta SET value = value WHERE 0;
"#,
    // Other devices' audit log segments (`[audit] sync`, docs/sync.md), as
    // pulled: still sealed to the vault's shared audit key, with the device
    // and number bound in; opened when read. This device's own progress is
    // in `vault_meta` (`audit_sync_seq`, `audit_sync_segment`).
    r#"
CREATE TABLE audit_remote (
    device_id TEXT NOT NULL,
    idx       INTEGER NOT NULL,
    body      BLOB NOT NULL,
    PRIMARY KEY (device_id, idx)
) WITHOUT ROWID;
"#,
    // Retention of other devices' audit segments (docs/sync.md, "Audit
    // log"): each kept segment's newest entry time, unsealed, so `[audit]
    // keep` drops old ones without opening them all (NULL for segments kept
    // before: filled when next opened); and the runs of a device's segments
    // that are gone on purpose (dropped here by `keep`, or no longer on the
    // server), so the checks and the pull go on after them.
    r#"
ALTER TABLE audit_remote ADD COLUMN last_at INTEGER;
CREATE TABLE audit_remote_gaps (
    device_id TEXT NOT NULL,
    first_idx INTEGER NOT NULL,
    last_idx  INTEGER NOT NULL,
    next_seq  INTEGER,
    by_server INTEGER NOT NULL,
    PRIMARY KEY (device_id, first_idx)
) WITHOUT ROWID;
"#,
];

/// The one definition of an open conflict (docs/sync.md), as SQL over a
/// revision `v` and its record `r`: a logged revision that is not the head
/// and that no revision was written over.
macro_rules! open_conflict {
    () => {
        "v.log_index IS NOT NULL AND v.revision != r.revision
         AND NOT EXISTS (SELECT 1 FROM log_parents p WHERE p.record_id = v.record_id
                         AND p.parent_device = v.device AND p.parent_index = v.log_index)"
    };
}

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Store failures, already phrased for users.
#[derive(Debug)]
pub enum StoreError {
    /// The live name is taken (blind-index collision).
    NameTaken,
    /// The file is not a usable vault database.
    Damaged(String),
    /// The disk (or quota) is full; the write was rolled back.
    Full,
    /// Any other SQLite failure.
    Sqlite(rusqlite::Error),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::NameTaken => f.write_str("name already in use"),
            StoreError::Damaged(why) => f.write_str(why),
            StoreError::Full => f.write_str("the disk holding the vault is full"),
            StoreError::Sqlite(e) => write!(f, "database error: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(err, _) = &e
            && err.code == rusqlite::ErrorCode::ConstraintViolation
        {
            return StoreError::NameTaken;
        }
        if let rusqlite::Error::SqliteFailure(err, _) = &e
            && err.code == rusqlite::ErrorCode::DiskFull
        {
            return StoreError::Full;
        }
        StoreError::Sqlite(e)
    }
}

type Result<T> = std::result::Result<T, StoreError>;

/// The head of a record as stored.
#[derive(Debug, Clone)]
pub struct RecordRow {
    /// Random id (hex).
    pub id: String,
    /// Blind index of the name.
    pub name_mac: Vec<u8>,
    /// Credential type name.
    pub kind: String,
    /// Current revision, from 1.
    pub revision: u64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    /// Tombstone.
    pub deleted: bool,
    /// age ciphertext of the body.
    pub body: Vec<u8>,
    /// Lost its name to a concurrent record with the same name; listed under
    /// a derived name (docs/sync.md).
    pub shadowed: bool,
}

/// A revision's place in its device's log (its [`crate::record::Stamp`],
/// in plaintext bookkeeping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStamp {
    /// Index in the writing device's log.
    pub index: u64,
    /// Hybrid logical clock.
    pub clock: u64,
    /// The entry's MAC (body v3): the head of its device's chain once
    /// stored.
    pub mac: [u8; 32],
}

/// The head of a device's chain of authenticated entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    /// Index of the device's last authenticated entry here.
    pub index: u64,
    /// Its MAC.
    pub mac: [u8; 32],
}

/// An applied entry's claim that a device's log reaches `through`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The device whose log is claimed.
    pub device: String,
    /// How far.
    pub through: u64,
    /// The entry that claims it: its device and index.
    pub by: (String, u64),
}

/// A pulled entry that was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The device whose log holds it.
    pub device: String,
    /// Its index there.
    pub index: u64,
    /// Why, and what to do.
    pub reason: String,
    /// Held (the device's log waits at it) rather than skipped.
    pub held: bool,
    /// When it was first refused (unix seconds).
    pub first_seen: i64,
}

/// One entry of a device's log, as pushed.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// Index in the log.
    pub index: u64,
    /// The revision's age ciphertext.
    pub body: Vec<u8>,
}

/// A logged revision that lost to a concurrent one: not the head, and no
/// revision was written over it (docs/sync.md conflicts).
#[derive(Debug, Clone)]
pub struct ConflictRow {
    /// The record.
    pub record_id: String,
    /// The losing revision (kept in history).
    pub revision: u64,
    /// The device that wrote it.
    pub device: String,
    /// Unix seconds.
    pub updated_at: i64,
    /// It was a deletion.
    pub deleted: bool,
    /// The record's head revision.
    pub head: u64,
}

/// One history entry.
#[derive(Debug, Clone)]
pub struct RevisionRow {
    /// Revision number.
    pub revision: u64,
    /// Unix seconds.
    pub updated_at: i64,
    /// Writing device.
    pub device: String,
    /// add, set, rename, restore, remove.
    pub change: String,
    /// Whether this revision is a deletion.
    pub deleted: bool,
}

/// A file binding (docs/emit.md): the vault keeps `section` of `path` in sync
/// with a record. Paths and sections are plaintext (emitter targets).
#[derive(Debug, Clone)]
pub struct EmitterRow {
    /// Random id (hex).
    pub id: String,
    /// The record it renders.
    pub record_id: String,
    /// What it writes.
    pub kind: vault_protocol::message::EmitterKind,
    /// Absolute path of the file.
    pub path: String,
    /// The section in it.
    pub section: String,
    /// For `aws-process`: the `vault` program credential_process runs.
    pub program: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// For `aws` (keys): the config file whose `[profile P]` gets the
    /// credential's `region` (`None`: a binding made before that).
    pub config_path: Option<String>,
    /// The binding owns the `region` key in that section.
    pub config_region: bool,
    /// The binding made that section (it goes once nothing else is in it).
    pub config_made: bool,
    /// The version of what it writes (1: before `region`, 2: with it).
    pub rendering: i64,
    /// For `kube`: the arguments after the credential's name.
    pub exec_args: Vec<String>,
}

/// The vault database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

const ROW_COLUMNS: &str =
    "id, name_mac, kind, revision, created_at, updated_at, expires_at, deleted, body, shadowed";

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RecordRow> {
    let mut row = read_head(r)?;
    row.body = r.get(8)?;
    Ok(row)
}

/// A row of [`ROW_COLUMNS`] but its body (left empty).
fn read_head(r: &rusqlite::Row<'_>) -> rusqlite::Result<RecordRow> {
    Ok(RecordRow {
        id: r.get(0)?,
        name_mac: r.get(1)?,
        kind: r.get(2)?,
        revision: r.get::<_, i64>(3)? as u64,
        created_at: r.get(4)?,
        updated_at: r.get(5)?,
        expires_at: r.get(6)?,
        deleted: r.get::<_, i64>(7)? != 0,
        body: Vec::new(),
        shadowed: r.get::<_, i64>(9)? != 0,
    })
}

impl Store {
    /// Opens an existing database, checks it and applies pending migrations.
    /// The file must exist (callers create it 0600 first).
    pub fn open(path: &Path) -> Result<Self> {
        let damaged = |why: String| {
            StoreError::Damaged(format!(
                "{} is damaged ({why}); nothing was changed. Restore it from a backup, or move \
                 it and identity.age aside and run 'vault init' to start a new vault",
                path.display()
            ))
        };
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| damaged(e.to_string()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| damaged(e.to_string()))?;
        if check != "ok" {
            return Err(damaged(check));
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| damaged(e.to_string()))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Damaged(format!(
                "{} has schema version {version}, newer than this vaultd understands \
                 ({SCHEMA_VERSION}): upgrade vault",
                path.display()
            )));
        }
        let mut store = Self { conn };
        store.migrate(version)?;
        Ok(store)
    }

    fn migrate(&mut self, from: i64) -> Result<()> {
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// A metadata value.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM vault_meta WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Sets metadata values in one transaction.
    pub fn set_meta(&mut self, pairs: &[(&str, &str)]) -> Result<()> {
        let tx = self.conn.transaction()?;
        for (k, v) in pairs {
            tx.execute(
                "INSERT INTO vault_meta(key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![k, v],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Whether `digest` of `record_id`'s `field` is approved here.
    pub fn approved(&self, record_id: &str, field: &str, digest: &[u8]) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM approvals WHERE record_id = ?1 AND field = ?2 AND digest = ?3",
                params![record_id, field, digest],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Records approvals `(record id, field, digest)`, in one transaction.
    pub fn approve(&mut self, items: &[(String, String, [u8; 32])], now: i64) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare(
                "INSERT OR IGNORE INTO approvals (record_id, field, digest, approved_at)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (id, field, digest) in items {
                stmt.execute(params![id, field, &digest[..], now])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Forgets every approval (tests of the upgrade's seeding).
    #[cfg(test)]
    pub fn clear_approvals(&mut self) -> Result<()> {
        self.conn.execute("DELETE FROM approvals", [])?;
        Ok(())
    }

    /// Removes metadata values.
    pub fn delete_meta(&mut self, keys: &[&str]) -> Result<()> {
        let tx = self.conn.transaction()?;
        for k in keys {
            tx.execute("DELETE FROM vault_meta WHERE key = ?1", [k])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Rows this connection has changed since it opened (SQLite's
    /// `total_changes`): a cheap "anything written since?".
    pub fn total_changes(&self) -> u64 {
        self.conn.total_changes()
    }

    /// Every live record (for building the in-memory index at unlock).
    pub fn live_records(&self) -> Result<Vec<RecordRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {ROW_COLUMNS} FROM records WHERE deleted = 0"
        ))?;
        let rows = stmt
            .query_map([], read_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Walks every live record without copying its body: `f` gets the row
    /// (its `body` empty) and the body's bytes, and keeps what it needs.
    /// Unlock reads 100k rows this way in a fraction of what copying every
    /// body costs.
    pub fn scan_live(&self, mut f: impl FnMut(RecordRow, &[u8])) -> Result<()> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {ROW_COLUMNS} FROM records WHERE deleted = 0"
        ))?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            f(
                read_head(r)?,
                r.get_ref(8)?.as_blob().map_err(rusqlite::Error::from)?,
            );
        }
        Ok(())
    }

    /// Number of live records.
    pub fn count_live(&self) -> Result<u64> {
        let n: i64 =
            self.conn
                .query_row("SELECT count(*) FROM records WHERE deleted = 0", [], |r| {
                    r.get(0)
                })?;
        Ok(n as u64)
    }

    /// The live record with this blind index.
    pub fn find_live(&self, name_mac: &[u8]) -> Result<Option<RecordRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {ROW_COLUMNS} FROM records WHERE name_mac = ?1 AND deleted = 0"),
                [name_mac],
                read_row,
            )
            .optional()?)
    }

    /// The live record with this name, else the most recently deleted one.
    pub fn find_latest(&self, name_mac: &[u8]) -> Result<Option<RecordRow>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {ROW_COLUMNS} FROM records WHERE name_mac = ?1
                     ORDER BY deleted ASC, updated_at DESC, rowid DESC LIMIT 1"
                ),
                [name_mac],
                read_row,
            )
            .optional()?)
    }

    /// Inserts new records (revision 1 each) atomically; `log[i]` places
    /// `rows[i]` in `device`'s log.
    pub fn insert(&mut self, rows: &[RecordRow], device: &str, log: &[LogStamp]) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (row, stamp) in rows.iter().zip(log) {
            put_head(&tx, row)?;
            put_revision(&tx, row, device, "add", Some(*stamp))?;
        }
        if let Some(head) = last_head(log) {
            put_chain(&tx, device, head)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Writes a new head for an existing record and appends it to history.
    /// `row.revision` is the head it replaces; on success it is the new
    /// revision (the highest in the record's history + 1).
    pub fn update(
        &mut self,
        row: &mut RecordRow,
        device: &str,
        change: &str,
        log: Option<LogStamp>,
        parents: &[(String, u64)],
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let head: Option<i64> = tx
            .query_row(
                "SELECT revision FROM records WHERE id = ?1",
                [&row.id],
                |r| r.get(0),
            )
            .optional()?;
        if head != Some(row.revision as i64) {
            return Err(StoreError::Damaged(format!(
                "record {} changed concurrently; retry",
                row.id
            )));
        }
        row.revision = next_revision(&tx, &row.id)?;
        put_head(&tx, row)?;
        put_revision(&tx, row, device, change, log)?;
        if let Some(head) = last_head(log.as_slice()) {
            put_chain(&tx, device, head)?;
        }
        put_parents(&tx, &row.id, parents)?;
        tx.commit()?;
        Ok(())
    }

    /// Starts a transaction for applying pulled entries.
    pub fn sync_tx(&mut self) -> Result<SyncTx<'_>> {
        Ok(SyncTx {
            tx: self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?,
        })
    }

    /// The record with this id (live or not).
    pub fn by_id(&self, id: &str) -> Result<Option<RecordRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {ROW_COLUMNS} FROM records WHERE id = ?1"),
                [id],
                read_row,
            )
            .optional()?)
    }

    /// `device`'s log entries after `after`, at most `limit`, in order.
    pub fn log_after(&self, device: &str, after: u64, limit: usize) -> Result<Vec<LogEntry>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT log_index, body FROM revisions WHERE device = ?1 AND log_index > ?2
             ORDER BY log_index LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(params![device, after as i64, limit as i64], |r| {
                Ok(LogEntry {
                    index: r.get::<_, i64>(0)? as u64,
                    body: r.get(1)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The last index in `device`'s log (0 when empty).
    pub fn log_last(&self, device: &str) -> Result<u64> {
        let last: i64 = self.conn.query_row(
            "SELECT coalesce(max(log_index), 0) FROM revisions WHERE device = ?1",
            [device],
            |r| r.get(0),
        )?;
        Ok(last as u64)
    }

    /// The highest clock of any revision (0 before sync).
    pub fn max_clock(&self) -> Result<u64> {
        let clock: i64 =
            self.conn
                .query_row("SELECT coalesce(max(clock), 0) FROM revisions", [], |r| {
                    r.get(0)
                })?;
        Ok(clock as u64)
    }

    /// Entries pulled so far: device → last index applied.
    pub fn seen(&self) -> Result<BTreeMap<String, u64>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT device, last_index FROM sync_seen")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The head of `device`'s chain of authenticated entries here.
    pub fn chain(&self, device: &str) -> Result<Option<ChainHead>> {
        Ok(read_chain(&self.conn, device)?)
    }

    /// What applied entries claim other devices' logs reach.
    pub fn claims(&self) -> Result<Vec<Claim>> {
        let mut stmt = self.conn.prepare(
            "SELECT device, through, by_device, by_index FROM sync_claims ORDER BY device",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Claim {
                    device: r.get(0)?,
                    through: r.get::<_, i64>(1)? as u64,
                    by: (r.get(2)?, r.get::<_, i64>(3)? as u64),
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Pulled entries refused and not applied since, oldest first.
    pub fn refused(&self) -> Result<Vec<Refused>> {
        let mut stmt = self.conn.prepare(
            "SELECT device, log_index, reason, held, first_seen FROM sync_refused
             ORDER BY first_seen, device, log_index",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Refused {
                    device: r.get(0)?,
                    index: r.get::<_, i64>(1)? as u64,
                    reason: r.get(2)?,
                    held: r.get::<_, i64>(3)? != 0,
                    first_seen: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Which entries of `device`'s log up to `through` are missing here
    /// (neither applied nor refused for good).
    pub fn log_holes(&self, device: &str, through: u64) -> Result<Vec<u64>> {
        let mut stmt = self.conn.prepare(
            "SELECT log_index FROM revisions WHERE device = ?1 AND log_index <= ?2
             UNION
             SELECT log_index FROM sync_refused WHERE device = ?1 AND log_index <= ?2
               AND held = 0
             ORDER BY 1",
        )?;
        let have = stmt
            .query_map(params![device, through as i64], |r| {
                r.get::<_, i64>(0).map(|i| i as u64)
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut holes = Vec::new();
        let mut next = 1;
        for i in have {
            holes.extend(next..i);
            next = i + 1;
        }
        holes.extend(next..=through);
        Ok(holes)
    }

    /// Lowers (or sets) the mark of what was applied from `device`, so the
    /// next pull fetches from `index + 1` again (repair).
    pub fn reset_seen(&mut self, device: &str, index: u64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO sync_seen (device, last_index) VALUES (?1, ?2)
             ON CONFLICT(device) DO UPDATE SET last_index = excluded.last_index",
            params![device, index as i64],
        )?;
        Ok(())
    }

    /// Every live record whose head is not in any log (written before sync).
    pub fn unlogged_heads(&self) -> Result<Vec<RecordRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {} FROM records r JOIN revisions v
               ON v.record_id = r.id AND v.revision = r.revision
             WHERE r.deleted = 0 AND v.log_index IS NULL",
            ROW_COLUMNS
                .split(", ")
                .map(|c| format!("r.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))?;
        let rows = stmt
            .query_map([], read_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Open conflicts, newest first.
    pub fn conflicts(&self) -> Result<Vec<ConflictRow>> {
        let mut stmt = self.conn.prepare(concat!(
            "SELECT v.record_id, v.revision, v.device, v.updated_at, v.deleted, r.revision
                 FROM sync_forks f CROSS JOIN revisions v ON v.record_id = f.record_id
                   CROSS JOIN records r ON r.id = v.record_id
                 WHERE ",
            open_conflict!(),
            " ORDER BY v.updated_at DESC, v.record_id, v.revision"
        ))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ConflictRow {
                    record_id: r.get(0)?,
                    revision: r.get::<_, i64>(1)? as u64,
                    device: r.get(2)?,
                    updated_at: r.get(3)?,
                    deleted: r.get::<_, i64>(4)? != 0,
                    head: r.get::<_, i64>(5)? as u64,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The open conflicts' places of one record (what a new revision of it
    /// resolves by naming them as parents).
    pub fn conflict_refs(&self, record_id: &str) -> Result<Vec<(String, u64)>> {
        let mut stmt = self.conn.prepare_cached(concat!(
            "SELECT v.device, v.log_index FROM revisions v JOIN records r ON r.id = v.record_id
                 WHERE v.record_id = ?1 AND ",
            open_conflict!(),
            " ORDER BY v.device, v.log_index"
        ))?;
        let rows = stmt
            .query_map([record_id], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Where revision `revision` of a record sits in the logs, if logged.
    pub fn log_place(&self, record_id: &str, revision: u64) -> Result<Option<(String, u64)>> {
        let r: Option<(String, Option<i64>)> = self
            .conn
            .prepare_cached(
                "SELECT device, log_index FROM revisions WHERE record_id = ?1 AND revision = ?2",
            )?
            .query_row(params![record_id, revision as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        Ok(r.and_then(|(d, i)| i.map(|i| (d, i as u64))))
    }

    /// The head's rank `(clock, device)` and index; `None` for a head
    /// written before sync.
    pub fn head_rank(&self, record_id: &str) -> Result<Option<HeadRank>> {
        head_rank(&self.conn, record_id)
    }

    /// History of a record, newest first.
    pub fn revisions(&self, record_id: &str) -> Result<Vec<RevisionRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT revision, updated_at, device, change, deleted FROM revisions
             WHERE record_id = ?1 ORDER BY revision DESC",
        )?;
        let rows = stmt
            .query_map([record_id], |r| {
                Ok(RevisionRow {
                    revision: r.get::<_, i64>(0)? as u64,
                    updated_at: r.get(1)?,
                    device: r.get(2)?,
                    change: r.get(3)?,
                    deleted: r.get::<_, i64>(4)? != 0,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The ciphertext of one revision.
    pub fn revision_body(&self, record_id: &str, revision: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row(
                "SELECT body FROM revisions WHERE record_id = ?1 AND revision = ?2",
                params![record_id, revision as i64],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Records a file binding; an existing one for the same file and
    /// section is replaced.
    pub fn put_emitter(&mut self, e: &EmitterRow) -> Result<()> {
        let exec_args = (!e.exec_args.is_empty())
            .then(|| serde_json::to_string(&e.exec_args))
            .transpose()
            .map_err(|e| StoreError::Damaged(e.to_string()))?;
        self.conn.execute(
            "INSERT INTO emitters (id, record_id, kind, path, section, program, created_at, \
             config_path, config_region, config_made, rendering, exec_args) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
             ON CONFLICT (path, section) DO UPDATE SET record_id = excluded.record_id, \
             kind = excluded.kind, program = excluded.program, \
             config_path = excluded.config_path, config_region = excluded.config_region, \
             config_made = excluded.config_made, rendering = excluded.rendering, \
             exec_args = excluded.exec_args",
            params![
                e.id,
                e.record_id,
                e.kind.as_str(),
                e.path,
                e.section,
                e.program,
                e.created_at,
                e.config_path,
                e.config_region,
                e.config_made,
                e.rendering,
                exec_args
            ],
        )?;
        Ok(())
    }

    /// Moves a file binding to another version of what it writes.
    pub fn set_emitter_rendering(&mut self, id: &str, rendering: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE emitters SET rendering = ?2 WHERE id = ?1",
            params![id, rendering],
        )?;
        Ok(())
    }

    /// Every file binding, oldest first.
    pub fn emitters(&self) -> Result<Vec<EmitterRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, record_id, kind, path, section, program, created_at, config_path, \
             config_region, config_made, rendering, exec_args FROM emitters \
             ORDER BY created_at, id",
        )?;
        let rows = stmt.query_map([], |r| {
            let kind: String = r.get(2)?;
            let kind = vault_protocol::message::EmitterKind::parse(&kind).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    2,
                    rusqlite::types::Type::Text,
                    format!(
                        "a file binding has the kind '{kind}', which this vaultd does not \
                         know: vault.db is from a newer vault (upgrade) or damaged"
                    )
                    .into(),
                )
            })?;
            Ok(EmitterRow {
                id: r.get(0)?,
                record_id: r.get(1)?,
                kind,
                path: r.get(3)?,
                section: r.get(4)?,
                program: r.get(5)?,
                created_at: r.get(6)?,
                config_path: r.get(7)?,
                config_region: r.get(8)?,
                config_made: r.get(9)?,
                rendering: r.get(10)?,
                exec_args: match r.get::<_, Option<String>>(11)? {
                    None => Vec::new(),
                    Some(text) => serde_json::from_str(&text).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            11,
                            rusqlite::types::Type::Text,
                            format!("a kubeconfig binding's arguments do not read: {e}").into(),
                        )
                    })?,
                },
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Forgets a file binding; whether it existed.
    pub fn delete_emitter(&mut self, id: &str) -> Result<bool> {
        Ok(self
            .conn
            .execute("DELETE FROM emitters WHERE id = ?1", [id])?
            > 0)
    }
}

fn put_head(tx: &rusqlite::Transaction<'_>, row: &RecordRow) -> rusqlite::Result<()> {
    tx.prepare_cached(&format!(
        "INSERT INTO records ({ROW_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT(id) DO UPDATE SET name_mac = excluded.name_mac, kind = excluded.kind,
           revision = excluded.revision, updated_at = excluded.updated_at,
           expires_at = excluded.expires_at, deleted = excluded.deleted, body = excluded.body,
           shadowed = excluded.shadowed"
    ))?
    .execute(params![
        row.id,
        row.name_mac,
        row.kind,
        row.revision as i64,
        row.created_at,
        row.updated_at,
        row.expires_at,
        row.deleted as i64,
        row.body,
        row.shadowed as i64,
    ])?;
    Ok(())
}

fn put_revision(
    tx: &rusqlite::Transaction<'_>,
    row: &RecordRow,
    device: &str,
    change: &str,
    log: Option<LogStamp>,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO revisions
           (record_id, revision, updated_at, device, change, deleted, body, log_index, clock)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        row.id,
        row.revision as i64,
        row.updated_at,
        device,
        change,
        row.deleted as i64,
        row.body,
        log.map(|l| l.index as i64),
        log.map(|l| l.clock as i64),
    ])?;
    Ok(())
}

/// Moves `device`'s chain head forward to `head` (never back).
fn put_chain(
    tx: &rusqlite::Transaction<'_>,
    device: &str,
    head: ChainHead,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO sync_chain (device, last_index, mac) VALUES (?1, ?2, ?3)
         ON CONFLICT(device) DO UPDATE SET last_index = excluded.last_index,
           mac = excluded.mac
         WHERE excluded.last_index > sync_chain.last_index",
    )?
    .execute(params![device, head.index as i64, &head.mac[..]])?;
    Ok(())
}

/// The chain head a batch of this device's own entries leaves.
fn last_head(log: &[LogStamp]) -> Option<ChainHead> {
    log.iter().max_by_key(|l| l.index).map(|l| ChainHead {
        index: l.index,
        mac: l.mac,
    })
}

fn read_chain(conn: &Connection, device: &str) -> rusqlite::Result<Option<ChainHead>> {
    conn.prepare_cached("SELECT last_index, mac FROM sync_chain WHERE device = ?1")?
        .query_row([device], |r| {
            let mac: Vec<u8> = r.get(1)?;
            let mut m = [0u8; 32];
            if mac.len() == 32 {
                m.copy_from_slice(&mac);
            }
            Ok(ChainHead {
                index: r.get::<_, i64>(0)? as u64,
                mac: m,
            })
        })
        .optional()
}

/// A logged head: its rank and its index in its device's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadRank {
    /// Its clock and device.
    pub rank: crate::record::Rank,
    /// Its place in the device's log.
    pub index: u64,
}

fn head_rank(conn: &Connection, record_id: &str) -> Result<Option<HeadRank>> {
    let r: Option<(Option<i64>, String, Option<i64>)> = conn
        .prepare_cached(
            "SELECT v.clock, v.device, v.log_index FROM records r JOIN revisions v
               ON v.record_id = r.id AND v.revision = r.revision WHERE r.id = ?1",
        )?
        .query_row([record_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    Ok(r.and_then(|(clock, device, index)| {
        Some(HeadRank {
            rank: crate::record::Rank {
                clock: clock? as u64,
                device,
            },
            index: index? as u64,
        })
    }))
}

fn put_parents(
    tx: &rusqlite::Transaction<'_>,
    record_id: &str,
    parents: &[(String, u64)],
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO log_parents (record_id, parent_device, parent_index) VALUES (?1, ?2, ?3)",
    )?;
    for (d, i) in parents {
        stmt.execute(params![record_id, d, *i as i64])?;
    }
    Ok(())
}

fn next_revision(tx: &rusqlite::Transaction<'_>, id: &str) -> rusqlite::Result<u64> {
    let max: i64 = tx.query_row(
        "SELECT coalesce(max(revision), 0) FROM revisions WHERE record_id = ?1",
        [id],
        |r| r.get(0),
    )?;
    Ok(max as u64 + 1)
}

/// Applies pulled log entries in one transaction (docs/sync.md).
#[derive(Debug)]
pub struct SyncTx<'a> {
    tx: rusqlite::Transaction<'a>,
}

impl SyncTx<'_> {
    /// Whether `device`'s entry `index` is already here.
    pub fn has_entry(&self, device: &str, index: u64) -> Result<bool> {
        Ok(self
            .tx
            .prepare_cached("SELECT 1 FROM revisions WHERE device = ?1 AND log_index = ?2")?
            .exists(params![device, index as i64])?)
    }

    /// The record with this id.
    pub fn by_id(&self, id: &str) -> Result<Option<RecordRow>> {
        Ok(self
            .tx
            .prepare_cached(&format!("SELECT {ROW_COLUMNS} FROM records WHERE id = ?1"))?
            .query_row([id], read_row)
            .optional()?)
    }

    /// Adds a pulled revision to `row.id`'s history and returns its local
    /// revision number; when `head`, `row` becomes the record's head.
    pub fn add_revision(
        &mut self,
        row: &mut RecordRow,
        device: &str,
        change: &str,
        log: LogStamp,
        head: bool,
    ) -> Result<u64> {
        let revision = next_revision(&self.tx, &row.id)?;
        let keep = row.revision;
        row.revision = revision;
        if head {
            put_head(&self.tx, row)?;
        } else if self.by_id(&row.id)?.is_none() {
            return Err(StoreError::Damaged(format!(
                "record {} has no head to keep",
                row.id
            )));
        }
        put_revision(&self.tx, row, device, change, Some(log))?;
        if !head {
            row.revision = keep;
        }
        Ok(revision)
    }

    /// Files a record under another blind index (a name won or lost).
    pub fn set_name(&mut self, id: &str, name_mac: &[u8], shadowed: bool) -> Result<()> {
        self.tx
            .prepare_cached("UPDATE records SET name_mac = ?2, shadowed = ?3 WHERE id = ?1")?
            .execute(params![id, name_mac, shadowed as i64])?;
        Ok(())
    }

    /// Notes that `record_id` may have a conflict now.
    pub fn add_fork(&mut self, record_id: &str) -> Result<()> {
        self.tx
            .prepare_cached("INSERT OR IGNORE INTO sync_forks (record_id) VALUES (?1)")?
            .execute([record_id])?;
        Ok(())
    }

    /// Notes which logged revisions `record_id`'s new revision was written over.
    pub fn add_parents(&mut self, record_id: &str, parents: &[(String, u64)]) -> Result<()> {
        put_parents(&self.tx, record_id, parents)?;
        Ok(())
    }

    /// The head's rank, as [`Store::head_rank`].
    pub fn head_rank(&self, record_id: &str) -> Result<Option<HeadRank>> {
        head_rank(&self.tx, record_id)
    }

    /// The head of `device`'s chain of authenticated entries here.
    pub fn chain(&self, device: &str) -> Result<Option<ChainHead>> {
        Ok(read_chain(&self.tx, device)?)
    }

    /// Moves `device`'s chain head forward (once per device and batch).
    pub fn set_chain(&mut self, device: &str, head: ChainHead) -> Result<()> {
        Ok(put_chain(&self.tx, device, head)?)
    }

    /// An entry that was refused is applied after all.
    pub fn unrefuse(&mut self, device: &str, index: u64) -> Result<()> {
        self.tx
            .prepare_cached("DELETE FROM sync_refused WHERE device = ?1 AND log_index = ?2")?
            .execute(params![device, index as i64])?;
        Ok(())
    }

    /// Notes that entry `by` claims `device`'s log reaches `through`.
    pub fn claim(&mut self, device: &str, through: u64, by: (&str, u64)) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO sync_claims (device, through, by_device, by_index)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(device) DO UPDATE SET through = excluded.through,
                   by_device = excluded.by_device, by_index = excluded.by_index
                 WHERE excluded.through > sync_claims.through",
            )?
            .execute(params![device, through as i64, by.0, by.1 as i64])?;
        Ok(())
    }

    /// Records a refused entry; true the first time it is refused (the
    /// caller logs it then, once). A later refusal keeps the first time but
    /// takes the newer reason.
    pub fn refuse(
        &mut self,
        device: &str,
        index: u64,
        reason: &str,
        (held, legacy): (bool, bool),
        now: i64,
    ) -> Result<bool> {
        let known = self
            .tx
            .prepare_cached("SELECT 1 FROM sync_refused WHERE device = ?1 AND log_index = ?2")?
            .exists(params![device, index as i64])?;
        self.tx
            .prepare_cached(
                "INSERT INTO sync_refused (device, log_index, reason, held, legacy, first_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(device, log_index) DO UPDATE SET reason = excluded.reason,
                   held = excluded.held, legacy = excluded.legacy",
            )?
            .execute(params![
                device,
                index as i64,
                reason,
                held as i64,
                legacy as i64,
                now
            ])?;
        Ok(!known)
    }

    /// Forgets the unauthenticated entries refused from `device`'s log
    /// before `index`, where its chain of authenticated entries starts:
    /// that is the device's history from before the upgrade, not an attack
    /// in progress (none of it was applied).
    pub fn forget_legacy(&mut self, device: &str, index: u64) -> Result<usize> {
        Ok(self
            .tx
            .prepare_cached(
                "DELETE FROM sync_refused WHERE device = ?1 AND log_index < ?2 AND legacy = 1",
            )?
            .execute(params![device, index as i64])?)
    }

    /// Notes that `device`'s log is applied through `index`.
    pub fn set_seen(&mut self, device: &str, index: u64) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO sync_seen (device, last_index) VALUES (?1, ?2)
                 ON CONFLICT(device) DO UPDATE SET last_index = max(last_index, excluded.last_index)",
            )?
            .execute(params![device, index as i64])?;
        Ok(())
    }

    /// Makes it all durable.
    pub fn commit(self) -> Result<()> {
        self.tx.commit()?;
        Ok(())
    }
}

/// Creates a new, empty vault database at `path`, which must not exist. The
/// file is created 0600 before SQLite opens it, so SQLite's `-wal` and `-shm`
/// files inherit 0600 too.
pub fn create(path: &Path) -> Result<Store> {
    crate::fsutil::create_new_private(path)
        .map_err(|e| StoreError::Damaged(format!("cannot create {}: {e}", path.display())))?;
    Store::open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAMP: LogStamp = LogStamp {
        index: 1,
        clock: 1,
        mac: [1; 32],
    };

    fn row(id: &str, mac: &[u8]) -> RecordRow {
        RecordRow {
            id: id.into(),
            name_mac: mac.to_vec(),
            kind: "token".into(),
            revision: 1,
            created_at: 1,
            updated_at: 1,
            expires_at: None,
            deleted: false,
            body: b"ct".to_vec(),
            shadowed: false,
        }
    }

    #[test]
    fn a_pull_of_audit_segments_goes_on_after_the_unbroken_run() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = create(&tmp.path().join("v.db")).unwrap();
        let seg = |device: &str, index| AuditSegment {
            device: device.into(),
            index,
            data: vec![index as u8],
            last_at: Some(index as i64 * 100),
        };
        // d: 1, 2, then 4 (3 refused or withheld); e: only 2; f: 1..=3.
        let kept = [
            seg("d", 1),
            seg("d", 2),
            seg("d", 4),
            seg("e", 2),
            seg("f", 1),
            seg("f", 2),
            seg("f", 3),
        ];
        s.put_audit_segments(&kept).unwrap();
        // Kept once: the same number again changes nothing.
        s.put_audit_segments(&[AuditSegment {
            data: b"other".to_vec(),
            ..seg("d", 1)
        }])
        .unwrap();
        let runs = s.audit_segment_heads().unwrap();
        let want: BTreeMap<String, u64> = [("d".into(), 2), ("e".into(), 0), ("f".into(), 3)]
            .into_iter()
            .collect();
        assert_eq!(runs, want);
        assert_eq!(s.audit_segments(Some("d")).unwrap()[0].data, [1]);
        assert_eq!(s.audit_segments(None).unwrap().len(), 7);

        // The server no longer holds d's 3 nor e's 1: the runs go on
        // after them.
        for (device, first, last) in [("d", 3, 3), ("e", 1, 1)] {
            s.add_audit_gap(&AuditGap {
                device: device.into(),
                first,
                last,
                next_seq: None,
                by_server: true,
            })
            .unwrap();
        }
        let runs = s.audit_segment_heads().unwrap();
        assert_eq!(runs["d"], 4);
        assert_eq!(runs["e"], 2);
        // Retention drops d's 1..=3 (the gap among them too): one gap from
        // 1 in their place, and the run still ends at 4.
        assert!(s.audit_segments_due(250).unwrap());
        assert!(!s.audit_segments_due(100).unwrap());
        assert_eq!(s.drop_audit_segments("d", 3, Some(9)).unwrap(), 2);
        let gaps = s.audit_gaps(Some("d")).unwrap();
        assert_eq!(
            gaps,
            [AuditGap {
                device: "d".into(),
                first: 1,
                last: 3,
                next_seq: Some(9),
                by_server: false,
            }]
        );
        assert_eq!(s.audit_segment_heads().unwrap()["d"], 4);
        assert_eq!(s.audit_segments(Some("d")).unwrap().len(), 1);
        // A time learnt later is kept.
        s.set_audit_segment_times(&[("d".into(), 4, 7)]).unwrap();
        assert_eq!(s.audit_segments(Some("d")).unwrap()[0].last_at, Some(7));
    }

    #[test]
    fn emitter_kinds_round_trip_and_an_unknown_one_is_named() {
        use vault_protocol::message::EmitterKind;
        let tmp = tempfile::tempdir().unwrap();
        let mut s = create(&tmp.path().join("v.db")).unwrap();
        s.insert(&[row("r", b"m")], "dev", &[STAMP]).unwrap();
        for (i, kind) in EmitterKind::ALL.into_iter().enumerate() {
            s.put_emitter(&EmitterRow {
                id: format!("e{i}"),
                record_id: "r".into(),
                kind,
                path: format!("/f{i}"),
                section: "s".into(),
                program: None,
                created_at: i as i64,
                config_path: None,
                config_region: false,
                config_made: false,
                rendering: 2,
                exec_args: Vec::new(),
            })
            .unwrap();
        }
        let kinds: Vec<EmitterKind> = s.emitters().unwrap().iter().map(|e| e.kind).collect();
        assert_eq!(kinds, EmitterKind::ALL);
        s.conn
            .execute("UPDATE emitters SET kind = 'nomad' WHERE id = 'e0'", [])
            .unwrap();
        let e = s.emitters().unwrap_err().to_string();
        assert!(e.contains("'nomad'") && e.contains("newer vault"), "{e}");
    }

    #[test]
    fn live_names_are_unique_and_history_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = create(&tmp.path().join("v.db")).unwrap();
        s.insert(&[row("a", b"m1")], "dev", &[STAMP]).unwrap();
        assert!(matches!(
            s.insert(&[row("b", b"m1")], "dev", &[STAMP]),
            Err(StoreError::NameTaken)
        ));
        let mut head = s.find_live(b"m1").unwrap().unwrap();
        head.deleted = true;
        s.update(&mut head, "dev", "remove", None, &[]).unwrap();
        assert_eq!(head.revision, 2);
        assert!(s.find_live(b"m1").unwrap().is_none());
        assert!(s.find_latest(b"m1").unwrap().unwrap().deleted);
        s.insert(
            &[row("b", b"m1")],
            "dev",
            &[LogStamp {
                index: 2,
                clock: 2,
                mac: [2; 32],
            }],
        )
        .unwrap();
        assert_eq!(s.find_latest(b"m1").unwrap().unwrap().id, "b");
        let hist = s.revisions("a").unwrap();
        assert_eq!(
            hist.iter().map(|r| r.revision).collect::<Vec<_>>(),
            vec![2, 1]
        );
        assert_eq!(s.count_live().unwrap(), 1);
    }

    #[test]
    fn stale_revision_update_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = create(&tmp.path().join("v.db")).unwrap();
        s.insert(&[row("a", b"m")], "dev", &[STAMP]).unwrap();
        let mut head = s.find_live(b"m").unwrap().unwrap();
        head.revision = 5;
        assert!(s.update(&mut head, "dev", "set", None, &[]).is_err());
    }

    #[test]
    fn garbage_is_reported_as_damaged_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("v.db");
        std::fs::write(
            &p,
            b"definitely not sqlite, but long enough to look like a header....",
        )
        .unwrap();
        let before = std::fs::read(&p).unwrap();
        let err = Store::open(&p).unwrap_err().to_string();
        assert!(err.contains("is damaged"), "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), before);
    }
}
