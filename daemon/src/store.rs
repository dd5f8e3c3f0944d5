//! The vault database (SPEC §4): SQLite in WAL mode, versioned migrations,
//! one writer (this daemon). It stores ciphertext only; plaintext columns are
//! the record id, kind, times, the blind-index MAC and bookkeeping.
//!
//! Every change appends a revision, so nothing is ever overwritten: `records`
//! holds the head of each record, `revisions` every version including the
//! head.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

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
];

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

/// A file binding (SPEC §9): the vault keeps `section` of `path` in sync
/// with a record. Paths and sections are plaintext (emitter targets).
#[derive(Debug, Clone)]
pub struct EmitterRow {
    /// Random id (hex).
    pub id: String,
    /// The record it renders.
    pub record_id: String,
    /// `aws`.
    pub kind: String,
    /// Absolute path of the file.
    pub path: String,
    /// The section in it.
    pub section: String,
    /// For `aws-process`: the `vault` program credential_process runs.
    pub program: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
}

/// The vault database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

const ROW_COLUMNS: &str =
    "id, name_mac, kind, revision, created_at, updated_at, expires_at, deleted, body";

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RecordRow> {
    Ok(RecordRow {
        id: r.get(0)?,
        name_mac: r.get(1)?,
        kind: r.get(2)?,
        revision: r.get::<_, i64>(3)? as u64,
        created_at: r.get(4)?,
        updated_at: r.get(5)?,
        expires_at: r.get(6)?,
        deleted: r.get::<_, i64>(7)? != 0,
        body: r.get(8)?,
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

    /// Inserts new records (revision 1 each) atomically.
    pub fn insert(&mut self, rows: &[RecordRow], device: &str) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut ins = tx.prepare_cached(&format!(
                "INSERT INTO records ({ROW_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ))?;
            let mut rev = tx.prepare_cached(
                "INSERT INTO revisions (record_id, revision, updated_at, device, change, deleted, body)
                 VALUES (?1, ?2, ?3, ?4, 'add', 0, ?5)",
            )?;
            for row in rows {
                ins.execute(params![
                    row.id,
                    row.name_mac,
                    row.kind,
                    row.revision as i64,
                    row.created_at,
                    row.updated_at,
                    row.expires_at,
                    row.deleted as i64,
                    row.body
                ])?;
                rev.execute(params![
                    row.id,
                    row.revision as i64,
                    row.updated_at,
                    device,
                    row.body
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Writes a new head for an existing record and appends it to history.
    /// `row.revision` must be the previous revision + 1.
    pub fn update(&mut self, row: &RecordRow, device: &str, change: &str) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let changed = tx.execute(
            "UPDATE records SET name_mac = ?2, kind = ?3, revision = ?4, updated_at = ?5,
                    expires_at = ?6, deleted = ?7, body = ?8
             WHERE id = ?1 AND revision = ?4 - 1",
            params![
                row.id,
                row.name_mac,
                row.kind,
                row.revision as i64,
                row.updated_at,
                row.expires_at,
                row.deleted as i64,
                row.body
            ],
        )?;
        if changed != 1 {
            return Err(StoreError::Damaged(format!(
                "record {} changed concurrently; retry",
                row.id
            )));
        }
        tx.execute(
            "INSERT INTO revisions (record_id, revision, updated_at, device, change, deleted, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                row.id,
                row.revision as i64,
                row.updated_at,
                device,
                change,
                row.deleted as i64,
                row.body
            ],
        )?;
        tx.commit()?;
        Ok(())
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
        self.conn.execute(
            "INSERT INTO emitters (id, record_id, kind, path, section, program, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (path, section) DO UPDATE SET record_id = excluded.record_id, \
             kind = excluded.kind, program = excluded.program",
            params![
                e.id,
                e.record_id,
                e.kind,
                e.path,
                e.section,
                e.program,
                e.created_at
            ],
        )?;
        Ok(())
    }

    /// Every file binding, oldest first.
    pub fn emitters(&self) -> Result<Vec<EmitterRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, record_id, kind, path, section, program, created_at FROM emitters \
             ORDER BY created_at, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(EmitterRow {
                id: r.get(0)?,
                record_id: r.get(1)?,
                kind: r.get(2)?,
                path: r.get(3)?,
                section: r.get(4)?,
                program: r.get(5)?,
                created_at: r.get(6)?,
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
        }
    }

    #[test]
    fn live_names_are_unique_and_history_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = create(&tmp.path().join("v.db")).unwrap();
        s.insert(&[row("a", b"m1")], "dev").unwrap();
        assert!(matches!(
            s.insert(&[row("b", b"m1")], "dev"),
            Err(StoreError::NameTaken)
        ));
        let mut head = s.find_live(b"m1").unwrap().unwrap();
        head.revision = 2;
        head.deleted = true;
        s.update(&head, "dev", "remove").unwrap();
        assert!(s.find_live(b"m1").unwrap().is_none());
        assert!(s.find_latest(b"m1").unwrap().unwrap().deleted);
        s.insert(&[row("b", b"m1")], "dev").unwrap();
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
        s.insert(&[row("a", b"m")], "dev").unwrap();
        let mut head = s.find_live(b"m").unwrap().unwrap();
        head.revision = 5;
        assert!(s.update(&head, "dev", "set").is_err());
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
