//! Remotes (workload platforms) and publications: which credential is
//! published where, and what the platform holds of it (issue 10).
//!
//! Plaintext here is limited to bookkeeping, like emitter targets: the
//! remote's name, kind and URL, the platform's name for each credential and
//! its platform type, and revision numbers. The access token and the
//! platform's error messages are age ciphertext.

use rusqlite::{OptionalExtension, params};

use super::{Result, Store};

/// A workload platform.
#[derive(Debug, Clone)]
pub struct RemoteRow {
    /// Local name.
    pub name: String,
    /// `osmo`.
    pub kind: String,
    /// Base URL.
    pub url: String,
    /// The access token, encrypted to the vault key.
    pub token: Vec<u8>,
    /// Unix seconds.
    pub created_at: i64,
}

/// Whether the platform holds a publication's name, as far as the vault
/// knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// It does not (never sent, refused, or deleted).
    Absent = 0,
    /// It does: a push or an earlier state was confirmed.
    Present = 1,
    /// A request was sent and its answer lost: it may.
    Unknown = 2,
}

impl Presence {
    fn from_column(v: i64) -> Self {
        match v {
            0 => Presence::Absent,
            1 => Presence::Present,
            _ => Presence::Unknown,
        }
    }
}

/// Which version of a publication a write is about: the record it binds
/// and when it was (un)published. A write for an older version (the
/// publication was replaced, unpublished or published again while a
/// request was in flight) changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubKey {
    /// The remote.
    pub remote: String,
    /// The platform's name.
    pub remote_name: String,
    /// The record bound.
    pub record_id: String,
    /// Its `queued_at`.
    pub queued_at: i64,
}

/// One credential bound to one remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubRow {
    /// The remote.
    pub remote: String,
    /// The platform's name for it.
    pub remote_name: String,
    /// The local record.
    pub record_id: String,
    /// `REGISTRY`, `DATA` or `GENERIC`.
    pub cred_type: String,
    /// When it was published or unpublished (unix ms): with the record's
    /// last change, the order publications go out in.
    pub queued_at: i64,
    /// The record revision the platform holds.
    pub pushed_revision: Option<u64>,
    /// Whether the platform holds this name.
    pub present: Presence,
    /// Waiting to be deleted on the platform.
    pub unpublish: bool,
    /// The revision the platform refused (4xx).
    pub failed_revision: Option<u64>,
    /// The platform's message for that refusal, encrypted to the vault key.
    pub error: Option<Vec<u8>>,
}

fn read_pub(r: &rusqlite::Row<'_>) -> rusqlite::Result<PubRow> {
    Ok(PubRow {
        remote: r.get(0)?,
        remote_name: r.get(1)?,
        record_id: r.get(2)?,
        cred_type: r.get(3)?,
        queued_at: r.get(4)?,
        pushed_revision: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
        present: Presence::from_column(r.get(6)?),
        unpublish: r.get(7)?,
        failed_revision: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
        error: r.get(9)?,
    })
}

const PUB_COLUMNS: &str = "remote, remote_name, record_id, cred_type, queued_at, \
     pushed_revision, present, unpublish, failed_revision, error";

impl Store {
    /// Adds a remote, or replaces its URL and token.
    pub fn put_remote(&mut self, r: &RemoteRow) -> Result<()> {
        self.conn.execute(
            "INSERT INTO remotes (name, kind, url, token, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(name) DO UPDATE SET kind = ?2, url = ?3, token = ?4",
            params![r.name, r.kind, r.url, r.token, r.created_at],
        )?;
        Ok(())
    }

    /// Every remote, by name.
    pub fn remotes(&self) -> Result<Vec<RemoteRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT name, kind, url, token, created_at FROM remotes ORDER BY name",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok(RemoteRow {
                    name: r.get(0)?,
                    kind: r.get(1)?,
                    url: r.get(2)?,
                    token: r.get(3)?,
                    created_at: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Forgets a remote and its publications (the platform is not told).
    pub fn delete_remote(&mut self, name: &str) -> Result<bool> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM publications WHERE remote = ?1", [name])?;
        let n = tx.execute("DELETE FROM remotes WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// Adds or replaces a publication.
    pub fn put_publication(&mut self, p: &PubRow) -> Result<()> {
        self.conn.execute(
            &format!(
                "INSERT OR REPLACE INTO publications ({PUB_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ),
            params![
                p.remote,
                p.remote_name,
                p.record_id,
                p.cred_type,
                p.queued_at,
                p.pushed_revision.map(|v| v as i64),
                p.present as i64,
                p.unpublish,
                p.failed_revision.map(|v| v as i64),
                p.error
            ],
        )?;
        Ok(())
    }

    /// One publication.
    pub fn publication(&self, remote: &str, remote_name: &str) -> Result<Option<PubRow>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {PUB_COLUMNS} FROM publications WHERE remote = ?1 AND remote_name = ?2"
                ),
                [remote, remote_name],
                read_pub,
            )
            .optional()?)
    }

    /// Publications to `remote` (every remote when `None`), oldest first.
    pub fn publications(&self, remote: Option<&str>) -> Result<Vec<PubRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {PUB_COLUMNS} FROM publications WHERE ?1 IS NULL OR remote = ?1
             ORDER BY queued_at, remote, remote_name"
        ))?;
        let rows = st
            .query_map([remote], read_pub)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Drops a publication (deleted on the platform, or never sent),
    /// unless it changed meanwhile.
    pub fn delete_publication(&mut self, key: &PubKey) -> Result<()> {
        self.conn.execute(
            "DELETE FROM publications WHERE remote = ?1 AND remote_name = ?2
                AND record_id = ?3 AND queued_at = ?4",
            params![key.remote, key.remote_name, key.record_id, key.queued_at],
        )?;
        Ok(())
    }

    /// Records whether the platform holds a name. A fact about the name,
    /// whichever publication holds it now, so it is never dropped.
    pub fn set_presence(
        &mut self,
        remote: &str,
        remote_name: &str,
        present: Presence,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE publications SET present = ?3 WHERE remote = ?1 AND remote_name = ?2",
            params![remote, remote_name, present as i64],
        )?;
        Ok(())
    }

    /// Records which revision the platform holds of a publication, or that
    /// it refused one, unless the publication changed meanwhile.
    pub fn mark_publication(
        &mut self,
        key: &PubKey,
        pushed_revision: Option<u64>,
        failed: Option<(u64, Vec<u8>)>,
    ) -> Result<()> {
        let (failed_revision, error) = failed.unzip();
        self.conn.execute(
            "UPDATE publications SET pushed_revision = ?5, failed_revision = ?6, error = ?7
             WHERE remote = ?1 AND remote_name = ?2 AND record_id = ?3 AND queued_at = ?4",
            params![
                key.remote,
                key.remote_name,
                key.record_id,
                key.queued_at,
                pushed_revision.map(|v| v as i64),
                failed_revision.map(|v| v as i64),
                error
            ],
        )?;
        Ok(())
    }

    /// Forgets what a remote holds (its URL changed): everything is pushed
    /// again.
    pub fn reset_publications(&mut self, remote: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE publications SET pushed_revision = NULL, present = 0,
                    failed_revision = NULL, error = NULL
             WHERE remote = ?1",
            [remote],
        )?;
        Ok(())
    }
}
