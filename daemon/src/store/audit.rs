//! The audit log's rows (docs/lifecycle.md): who was handed which record's
//! value. Plaintext is the row number, the time and the record id; what
//! was handed to whom is sealed, and each row's MAC chains it to the last.
//! Other devices' entries arrive in sealed segments (`[audit] sync`).

use rusqlite::params;

use super::{Result, Store};

/// One row of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// From 1, without gaps.
    pub seq: u64,
    /// Unix seconds.
    pub at: i64,
    /// The record handed out.
    pub record_id: String,
    /// The sealed entry.
    pub body: Vec<u8>,
    /// The chain MAC.
    pub mac: Vec<u8>,
}

/// A segment of another device's audit log, as pulled: still sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSegment {
    /// The device whose log it is.
    pub device: String,
    /// Its number in that device's segments, from 1.
    pub index: u64,
    /// Sealed to the vault's shared audit key.
    pub data: Vec<u8>,
    /// Its newest entry's time (unix seconds), once known: unsealed, so
    /// retention need not open it (a segment kept by schema 13 has none
    /// until it is next opened).
    pub last_at: Option<i64>,
}

/// A run of a device's segments gone on purpose: dropped here by `[audit]
/// keep`, or no longer on the server (its claim). The checks and the pull
/// go on after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditGap {
    /// The device whose segments they were.
    pub device: String,
    /// The first segment number gone.
    pub first: u64,
    /// The last.
    pub last: u64,
    /// The entry number the next segment starts at, when known (dropped
    /// here: from the last segment dropped).
    pub next_seq: Option<u64>,
    /// The server said so; else dropped here.
    pub by_server: bool,
}

/// A row of `SELECT seq, at, record_id, body, mac`.
fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRow> {
    Ok(AuditRow {
        seq: r.get::<_, i64>(0)? as u64,
        at: r.get(1)?,
        record_id: r.get(2)?,
        body: r.get(3)?,
        mac: r.get(4)?,
    })
}

impl Store {
    /// Appends `rows` and sets the log's sealed state (a `vault_meta`
    /// value), in one transaction.
    pub fn append_audit(&mut self, rows: &[AuditRow], state: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare(
                "INSERT INTO audit (seq, at, record_id, body, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for r in rows {
                stmt.execute(params![r.seq as i64, r.at, r.record_id, r.body, r.mac])?;
            }
            tx.execute(
                "INSERT OR REPLACE INTO vault_meta (key, value) VALUES ('audit_state', ?1)",
                [state],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every row, in order (the chain is checked whole).
    pub fn audit_rows(&self) -> Result<Vec<AuditRow>> {
        self.audit_rows_after(0)
    }

    /// The rows after `seq`, in order.
    pub fn audit_rows_after(&self, seq: u64) -> Result<Vec<AuditRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT seq, at, record_id, body, mac FROM audit WHERE seq > ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([seq as i64], row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The rows of one record, in order (by the `audit_record` index).
    pub fn audit_rows_of(&self, record_id: &str) -> Result<Vec<AuditRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT seq, at, record_id, body, mac FROM audit WHERE record_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([record_id], row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Drops the rows up to `through` and sets the log's state, in one
    /// transaction (retention).
    pub fn prune_audit(&mut self, through: u64, state: &str) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let n = tx.execute("DELETE FROM audit WHERE seq <= ?1", [through as i64])?;
        tx.execute(
            "INSERT OR REPLACE INTO vault_meta (key, value) VALUES ('audit_state', ?1)",
            [state],
        )?;
        tx.commit()?;
        Ok(n)
    }

    /// Each record's latest row.
    pub fn audit_latest(&self) -> Result<Vec<AuditRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT a.seq, a.at, a.record_id, a.body, a.mac FROM audit a
             JOIN (SELECT record_id, MAX(seq) AS last FROM audit GROUP BY record_id) l
               ON a.seq = l.last",
        )?;
        let rows = stmt.query_map([], row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The row that holds the oldest entry, if any: (seq, at).
    pub fn audit_oldest(&self) -> Result<Option<(u64, i64)>> {
        use rusqlite::OptionalExtension;
        Ok(self
            .conn
            .query_row("SELECT seq, at FROM audit ORDER BY seq LIMIT 1", [], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
            })
            .optional()?)
    }

    /// Keeps pulled segments (one already kept stays as it is).
    pub fn put_audit_segments(&mut self, segments: &[AuditSegment]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare(
                "INSERT OR IGNORE INTO audit_remote (device_id, idx, body, last_at)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for s in segments {
                stmt.execute(params![s.device, s.index as i64, s.data, s.last_at])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The kept segments (of `device`, or every device's), by device and
    /// number.
    pub fn audit_segments(&self, device: Option<&str>) -> Result<Vec<AuditSegment>> {
        let mut stmt = self.conn.prepare(
            "SELECT device_id, idx, body, last_at FROM audit_remote
             WHERE ?1 IS NULL OR device_id = ?1 ORDER BY device_id, idx",
        )?;
        let rows = stmt.query_map([device], |r| {
            Ok(AuditSegment {
                device: r.get(0)?,
                index: r.get::<_, i64>(1)? as u64,
                data: r.get(2)?,
                last_at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every kept segment's device, number and time, by device and number
    /// (no bodies).
    pub fn audit_segment_times(&self) -> Result<Vec<(String, u64, Option<i64>)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT device_id, idx, last_at FROM audit_remote ORDER BY device_id, idx")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One kept segment's body.
    pub fn audit_segment(&self, device: &str, idx: u64) -> Result<Option<Vec<u8>>> {
        use rusqlite::OptionalExtension;
        Ok(self
            .conn
            .query_row(
                "SELECT body FROM audit_remote WHERE device_id = ?1 AND idx = ?2",
                params![device, idx as i64],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Whether a kept segment may be older than `cutoff` (or its time is
    /// not known yet): retention has work.
    pub fn audit_segments_due(&self, cutoff: i64) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM audit_remote WHERE last_at IS NULL OR last_at < ?1)",
            [cutoff],
            |r| r.get(0),
        )?)
    }

    /// Notes kept segments' newest entry times: (device, number, time).
    pub fn set_audit_segment_times(&mut self, times: &[(String, u64, i64)]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare(
                "UPDATE audit_remote SET last_at = ?3 WHERE device_id = ?1 AND idx = ?2",
            )?;
            for (device, idx, at) in times {
                stmt.execute(params![device, *idx as i64, at])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The runs of segments gone on purpose (of `device`, or every
    /// device's), by device and first number.
    pub fn audit_gaps(&self, device: Option<&str>) -> Result<Vec<AuditGap>> {
        let mut stmt = self.conn.prepare(
            "SELECT device_id, first_idx, last_idx, next_seq, by_server FROM audit_remote_gaps
             WHERE ?1 IS NULL OR device_id = ?1 ORDER BY device_id, first_idx",
        )?;
        let rows = stmt.query_map([device], |r| {
            Ok(AuditGap {
                device: r.get(0)?,
                first: r.get::<_, i64>(1)? as u64,
                last: r.get::<_, i64>(2)? as u64,
                next_seq: r.get::<_, Option<i64>>(3)?.map(|s| s as u64),
                by_server: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Notes segments the server no longer holds.
    pub fn add_audit_gap(&mut self, gap: &AuditGap) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO audit_remote_gaps
             (device_id, first_idx, last_idx, next_seq, by_server) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                gap.device,
                gap.first as i64,
                gap.last as i64,
                gap.next_seq.map(|s| s as i64),
                gap.by_server
            ],
        )?;
        Ok(())
    }

    /// Drops a device's segments through `through` (retention): one gap
    /// from 1 takes the place of them and of the gaps among them, in one
    /// transaction.
    pub fn drop_audit_segments(
        &mut self,
        device: &str,
        through: u64,
        next_seq: Option<u64>,
    ) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let n = tx.execute(
            "DELETE FROM audit_remote WHERE device_id = ?1 AND idx <= ?2",
            params![device, through as i64],
        )?;
        tx.execute(
            "DELETE FROM audit_remote_gaps WHERE device_id = ?1 AND last_idx <= ?2",
            params![device, through as i64],
        )?;
        tx.execute(
            "INSERT OR REPLACE INTO audit_remote_gaps
             (device_id, first_idx, last_idx, next_seq, by_server) VALUES (?1, 1, ?2, ?3, 0)",
            params![device, through as i64, next_seq.map(|s| s as i64)],
        )?;
        tx.commit()?;
        Ok(n)
    }

    /// Per device, the end of the unbroken run from 1 of kept segments and
    /// gaps: what a pull goes on after, so a segment missing or refused is
    /// asked for again at every sync.
    pub fn audit_segment_heads(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        let mut stmt = self.conn.prepare(
            "SELECT device_id, idx, idx FROM audit_remote
             UNION ALL SELECT device_id, first_idx, last_idx FROM audit_remote_gaps
             ORDER BY 1, 2, 3 DESC",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
            ))
        })?;
        let mut runs = std::collections::BTreeMap::new();
        for row in rows {
            let (device, first, last) = row?;
            let end: &mut u64 = runs.entry(device).or_default();
            if first <= end.saturating_add(1) {
                *end = (*end).max(last);
            }
        }
        Ok(runs)
    }
}
