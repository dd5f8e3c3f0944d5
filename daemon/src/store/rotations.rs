//! Rotations not finished yet (`vault rotate`, docs/lifecycle.md): local
//! state, never synced. Plaintext is the record id, the stage and when it
//! is due; the key ids and the last error are age ciphertext.

use rusqlite::{OptionalExtension, params};

use super::{Result, Store};

/// One record's unfinished rotation.
#[derive(Debug, Clone)]
pub struct RotationRow {
    /// The record.
    pub record_id: String,
    /// `deactivate` (the old key may still be active) or `delete` (it is
    /// inactive, to be deleted at `due_at`).
    pub stage: String,
    /// Unix seconds: when the next step may run.
    pub due_at: i64,
    /// The key ids and the last error, encrypted to the vault key.
    pub body: Vec<u8>,
}

impl Store {
    /// Keeps `row` as its record's unfinished rotation (replacing one).
    pub fn put_rotation(&mut self, row: &RotationRow) -> Result<()> {
        self.conn.execute(
            "INSERT INTO rotations (record_id, stage, due_at, body) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(record_id) DO UPDATE SET stage = excluded.stage,
                due_at = excluded.due_at, body = excluded.body",
            params![row.record_id, row.stage, row.due_at, row.body],
        )?;
        Ok(())
    }

    /// The unfinished rotation of `record_id`, if any.
    pub fn rotation(&self, record_id: &str) -> Result<Option<RotationRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT record_id, stage, due_at, body FROM rotations WHERE record_id = ?1",
                params![record_id],
                row_of,
            )
            .optional()?)
    }

    /// Every unfinished rotation.
    pub fn rotations(&self) -> Result<Vec<RotationRow>> {
        let mut stmt = self
            .conn
            .prepare("SELECT record_id, stage, due_at, body FROM rotations")?;
        let rows = stmt.query_map([], row_of)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Forgets the rotation of `record_id` (finished, or undone).
    pub fn delete_rotation(&mut self, record_id: &str) -> Result<()> {
        self.conn.execute(
            "DELETE FROM rotations WHERE record_id = ?1",
            params![record_id],
        )?;
        Ok(())
    }
}

fn row_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<RotationRow> {
    Ok(RotationRow {
        record_id: r.get(0)?,
        stage: r.get(1)?,
        due_at: r.get(2)?,
        body: r.get(3)?,
    })
}
