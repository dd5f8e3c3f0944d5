//! The last health check of each record (`vault check`, docs/lifecycle.md):
//! local state, never synced. Plaintext is limited to bookkeeping (record
//! id, revision, time, ok); what the service said is age ciphertext.

use rusqlite::params;

use super::{Result, Store};

/// One record's last check.
#[derive(Debug, Clone)]
pub struct CheckRow {
    /// The record.
    pub record_id: String,
    /// The revision checked: a later change makes the result stale.
    pub revision: u64,
    /// Unix seconds.
    pub checked_at: i64,
    /// Whether the service accepted the credential.
    pub ok: bool,
    /// What it said, encrypted to the vault key.
    pub detail: Vec<u8>,
}

impl Store {
    /// Keeps `rows` as the records' last checks, in one transaction.
    pub fn put_checks(&mut self, rows: &[CheckRow]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare(
                // A check of an older revision never replaces a newer one's
                // (two checks at once, or one racing a change).
                "INSERT INTO checks (record_id, revision, checked_at, ok, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(record_id) DO UPDATE SET revision = excluded.revision,
                    checked_at = excluded.checked_at, ok = excluded.ok, detail = excluded.detail
                 WHERE excluded.revision >= checks.revision",
            )?;
            for r in rows {
                stmt.execute(params![
                    r.record_id,
                    r.revision as i64,
                    r.checked_at,
                    r.ok,
                    r.detail
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every record's last check.
    pub fn checks(&self) -> Result<Vec<CheckRow>> {
        let mut stmt = self
            .conn
            .prepare("SELECT record_id, revision, checked_at, ok, detail FROM checks")?;
        let rows = stmt.query_map([], |r| {
            Ok(CheckRow {
                record_id: r.get(0)?,
                revision: r.get::<_, i64>(1)? as u64,
                checked_at: r.get(2)?,
                ok: r.get(3)?,
                detail: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
