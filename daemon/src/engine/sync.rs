//! Sync inside the engine (SPEC §11): the hybrid logical clock, this
//! device's log, applying pulled entries, conflicts and name clashes. The
//! network side is [`crate::sync`].
//!
//! Every revision is stamped ([`Stamp`]) inside its encrypted body with the
//! device whose log holds it, its index there, its clock and the revisions
//! it was written over. Per record the head is the revision with the
//! greatest `(clock, device)`; every other revision stays in history. A
//! logged revision that is not the head and that no revision was written
//! over is a conflict (`vault conflicts`) until a change by the user names
//! it as a parent. Two live records claiming one name: the one whose head
//! ranks higher keeps it, the other is listed as [`derived_name`] until it
//! is renamed, changed (which adopts the derived name) or the name frees up.
//! All of this is a function of the set of revisions, so devices that have
//! applied the same entries agree, whatever the order.

use std::collections::{BTreeMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{info, warn};
use vault_protocol::message::{ConflictInfo, ConflictKind, LogCheck};
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{ErrorCode, SecretValue, validate_name};

use super::{Engine, IndexEntry, Result, Session, decrypt_body, err, store_err};
use crate::crypto::VaultKey;
use crate::record::{RecordBody, Stamp};
use crate::store::{LogEntry, LogStamp, RecordRow, StoreError, SyncTx};

/// The next clock value after `last`: wall-clock milliseconds << 16, or
/// `last + 1` when the wall clock is behind.
pub fn tick(last: u64) -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    (ms << 16).max(last + 1)
}

/// Unix seconds of a clock value.
pub fn clock_secs(clock: u64) -> i64 {
    ((clock >> 16) / 1000) as i64
}

/// The name a record is listed under after losing `name` to a concurrent
/// record: `NAME@conflict-ID8`, within the 128-character limit.
pub fn derived_name(name: &str, id: &str) -> String {
    let suffix = format!("@conflict-{}", &id[..id.len().min(8)]);
    // Names are ASCII, so any byte offset is a char boundary.
    let keep = name.len().min(128 - suffix.len());
    format!("{}{suffix}", &name[..keep])
}

/// Forgets that record `id` claims `name`.
pub(super) fn unclaim(sess: &mut Session, name: &str, id: &str) {
    if let Some(ids) = sess.claims.get_mut(name) {
        ids.remove(id);
        if ids.is_empty() {
            sess.claims.remove(name);
        }
    }
}

fn rank(e: &IndexEntry) -> (u64, String) {
    e.stamp
        .as_ref()
        .map_or((0, String::new()), |s| (s.clock, s.device.clone()))
}

/// Gives `name` to the live record claiming it whose head ranks highest;
/// the others are listed under derived names.
fn settle(
    sess: &mut Session,
    tx: &mut SyncTx<'_>,
    name: &str,
) -> std::result::Result<(), StoreError> {
    let mut cands: Vec<((u64, String), String, bool)> = Vec::new();
    if let Some(e) = sess.index.get(name).filter(|e| e.claims.is_none()) {
        cands.push((rank(e), e.id.clone(), false));
    }
    for id in sess.claims.get(name).cloned().unwrap_or_default() {
        if let Some(e) = sess.index.get(&derived_name(name, &id)) {
            cands.push((rank(e), id, true));
        }
    }
    let Some(winner) = cands
        .iter()
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|c| c.1.clone())
    else {
        return Ok(());
    };
    // Losers first: the name's blind index must be free before the winner
    // takes it.
    for (_, id, shadowed) in &cands {
        if *id != winner && !shadowed {
            let listed = derived_name(name, id);
            if let Some(mut e) = sess.index.remove(name) {
                e.claims = Some(name.to_owned());
                sess.index.insert(listed.clone(), e);
            }
            sess.claims
                .entry(name.to_owned())
                .or_default()
                .insert(id.clone());
            tx.set_name(id, &sess.key.name_mac(&listed), true)?;
            info!(record = %id, "lost its name to a concurrent record");
        }
    }
    if cands
        .iter()
        .any(|(_, id, shadowed)| *id == winner && *shadowed)
    {
        if let Some(mut e) = sess.index.remove(&derived_name(name, &winner)) {
            e.claims = None;
            sess.index.insert(name.to_owned(), e);
        }
        unclaim(sess, name, &winner);
        tx.set_name(&winner, &sess.key.name_mac(name), false)?;
    }
    Ok(())
}

/// One entry of another device's log, as pulled.
#[derive(Debug)]
pub struct Pulled {
    /// The device whose log holds it.
    pub device: String,
    /// Its index there.
    pub index: u64,
    /// The key id it was pushed with.
    pub key_id: String,
    /// The age ciphertext.
    pub data: Vec<u8>,
}

/// What [`Engine::apply`] did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Entries applied.
    pub applied: u64,
    /// Entries refused, with why; their device's log stops there until the
    /// next pull.
    pub refused: Vec<String>,
}

/// What the network side needs for one sync.
#[derive(Debug)]
pub struct Target {
    /// The server's base URL.
    pub url: String,
    /// The access token.
    pub token: SecretValue,
    /// The vault id.
    pub vault_id: String,
    /// This device.
    pub device: String,
    /// The vault's key id.
    pub key_id: String,
    /// `identity.age`, read only to create the vault on the server.
    pub identity: std::path::PathBuf,
    /// This device's log is on the server through this index.
    pub pushed: u64,
    /// Other devices' logs are applied through these indexes.
    pub seen: BTreeMap<String, u64>,
}

enum Refusal {
    Refused(String),
    Store(StoreError),
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal::Store(e)
    }
}

const PUSHED: &str = "sync_pushed";

impl Engine {
    fn meta(&self, key: &str) -> Result<Option<String>> {
        self.store()?.meta(key).map_err(store_err)
    }

    /// The server and token, decrypted; `None` before `vault login`.
    pub fn sync_target(&self) -> Result<Option<Target>> {
        let Some(url) = self.meta("sync_url")? else {
            return Ok(None);
        };
        self.session()?;
        let sealed = self.meta("sync_token")?.unwrap_or_default();
        let token = hex::decode(sealed)
            .ok()
            .and_then(|ct| self.unseal(&ct))
            .ok_or_else(|| {
                err(
                    ErrorCode::Failed,
                    "the stored access token cannot be read: run 'vault login' again",
                )
            })?;
        let store = self.store()?;
        Ok(Some(Target {
            url,
            token: SecretValue::new(token),
            vault_id: self.meta("vault_id")?.unwrap_or_default(),
            device: self.device.clone(),
            key_id: self.meta("key_id")?.unwrap_or_default(),
            identity: self.paths.identity(),
            pushed: self.pushed()?,
            seen: store.seen().map_err(store_err)?,
        }))
    }

    /// Whether `vault init` (or a join) has made a vault here.
    pub fn is_initialized(&self) -> bool {
        self.store.is_some()
    }

    /// Forgets the server and token.
    pub fn forget_login(&mut self) -> Result<()> {
        self.store_mut()?
            .delete_meta(&["sync_url", "sync_token"])
            .map_err(store_err)
    }

    /// How many conflicts are open.
    pub fn conflict_count(&self) -> Result<u64> {
        Ok(self.store()?.conflicts().map_err(store_err)?.len() as u64)
    }

    /// Compares this device's copy of every log with the server's `heads`
    /// (`vault sync verify`).
    pub fn verify_logs(&self, heads: &BTreeMap<String, u64>) -> Result<Vec<LogCheck>> {
        let store = self.store()?;
        let pushed = self.pushed()?;
        // This device first, then every other one known here or there.
        let mut others: std::collections::BTreeSet<String> =
            store.seen().map_err(store_err)?.into_keys().collect();
        others.extend(heads.keys().cloned());
        others.remove(&self.device);
        let mut out = Vec::new();
        for device in std::iter::once(self.device.clone()).chain(others) {
            let mine = device == self.device;
            let server_head = heads.get(&device).copied().unwrap_or(0);
            let local_head = store.log_last(&device).map_err(store_err)?;
            let mut missing_here = ranges(
                &store
                    .log_holes(&device, server_head.max(local_head))
                    .map_err(store_err)?,
            );
            // This device's entries written but not pushed yet are a queue,
            // not a hole.
            let missing_there = if mine {
                (pushed > server_head).then_some((server_head + 1, pushed))
            } else {
                (local_head > server_head).then_some((server_head + 1, local_head))
            };
            if mine {
                missing_here.retain(|(a, _)| *a <= server_head);
            }
            out.push(LogCheck {
                device,
                this_device: mine,
                server_head,
                local_head,
                missing_here,
                missing_there: missing_there.into_iter().collect(),
            });
        }
        Ok(out)
    }

    /// Sets up a repair of what [`Engine::verify_logs`] found: the next
    /// sync pushes this device's log again from the server's head and pulls
    /// other devices' logs again from their first missing entry.
    pub fn prepare_repair(&mut self, checks: &[LogCheck]) -> Result<()> {
        for c in checks {
            if c.this_device {
                if !c.missing_there.is_empty() {
                    self.set_pushed(c.server_head)?;
                }
            } else if let Some((first, _)) = c.missing_here.first() {
                self.store_mut()?
                    .reset_seen(&c.device, first - 1)
                    .map_err(store_err)?;
            }
        }
        Ok(())
    }

    /// Other devices' logs applied so far.
    pub fn seen(&self) -> Result<BTreeMap<String, u64>> {
        self.store()?.seen().map_err(store_err)
    }

    /// The server URL, if logged in (readable while locked).
    pub fn sync_server(&self) -> Option<String> {
        self.store.as_ref()?.meta("sync_url").ok()?
    }

    /// Stores the server URL and the access token, encrypted to the vault
    /// key, in the vault.
    pub fn save_login(&mut self, url: &str, token: &SecretValue) -> Result<()> {
        let ct = self.seal(token.expose_secret())?;
        self.store_mut()?
            .set_meta(&[("sync_url", url), ("sync_token", &hex::encode(ct))])
            .map_err(store_err)
    }

    fn pushed(&self) -> Result<u64> {
        Ok(self.meta(PUSHED)?.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// Local changes not yet on the server.
    pub fn queued(&self) -> u64 {
        self.log_last.saturating_sub(self.pushed().unwrap_or(0))
    }

    /// The last index of this device's log.
    pub fn log_last(&self) -> u64 {
        self.log_last
    }

    /// This device's log entries after `after`, at most `limit`.
    pub fn log_after(&self, after: u64, limit: usize) -> Result<Vec<LogEntry>> {
        self.store()?
            .log_after(&self.device, after, limit)
            .map_err(store_err)
    }

    /// Notes that the server holds this device's log through `head`.
    pub fn set_pushed(&mut self, head: u64) -> Result<()> {
        self.store_mut()?
            .set_meta(&[(PUSHED, &head.to_string())])
            .map_err(store_err)
    }

    /// Logs every live record written before sync existed, as a new
    /// revision (`enroll`), so it can be pushed. Returns how many.
    pub fn enroll(&mut self, now: Timestamp) -> Result<usize> {
        // New revisions are always logged: once none is left, none comes back.
        if self.enrolled {
            return Ok(0);
        }
        let rows = self.store()?.unlogged_heads().map_err(store_err)?;
        let n = rows.len();
        for row in rows {
            // One unreadable record (logged at unlock) must not stop sync.
            let body = match decrypt_body(&self.session()?.key, &row) {
                Ok(body) => body,
                Err(e) => {
                    warn!(record = %row.id, error = %e.message, "not enrolled: unreadable");
                    continue;
                }
            };
            let name = body.name.clone();
            self.commit(row, body, &name, "enroll", now)?;
        }
        if n > 0 {
            info!(records = n, "enrolled records written before sync");
        }
        self.enrolled = true;
        Ok(n)
    }

    /// Applies pulled entries in one transaction: each device's entries must
    /// follow on from what was applied before (a gap stops that device until
    /// the next pull), must be encrypted to this vault's key and must carry
    /// the place they are filed under.
    pub fn apply(&mut self, entries: Vec<Pulled>, now: Timestamp) -> Result<Applied> {
        let me = self.device.clone();
        let key_id = self.meta("key_id")?.unwrap_or_default();
        let bound: HashSet<String> = self
            .store()?
            .emitters()
            .map_err(store_err)?
            .into_iter()
            .map(|e| e.record_id)
            .collect();
        self.session()?;
        let mut out = Applied::default();
        let mut touched = Vec::new();
        let mut clock = self.clock;
        let result = (|| -> std::result::Result<(), StoreError> {
            let (Some(store), Some(sess)) = (self.store.as_mut(), self.session.as_mut()) else {
                return Ok(());
            };
            let mut seen = store.seen()?;
            let mut tx = store.sync_tx()?;
            let mut stopped = HashSet::new();
            for e in entries {
                if e.device == me || stopped.contains(&e.device) {
                    continue;
                }
                let last = seen.get(&e.device).copied().unwrap_or(0);
                if e.index <= last {
                    continue;
                }
                if e.index != last + 1 {
                    out.refused.push(format!(
                        "entries {}..{} of device {} are missing from the server's answer; \
                         they are fetched again on the next sync",
                        last + 1,
                        e.index - 1,
                        e.device
                    ));
                    stopped.insert(e.device.clone());
                    continue;
                }
                match apply_one(sess, &mut tx, &e, &key_id) {
                    Ok(Some((c, changed))) => {
                        clock = clock.max(c);
                        if let Some((row, body)) = changed
                            && bound.contains(&row.id)
                        {
                            touched.push((row, body));
                        }
                    }
                    Ok(None) => {}
                    Err(Refusal::Refused(why)) => {
                        warn!(device = %e.device, index = e.index, "pulled entry refused");
                        out.refused.push(why);
                        stopped.insert(e.device.clone());
                        continue;
                    }
                    Err(Refusal::Store(e)) => return Err(e),
                }
                seen.insert(e.device.clone(), e.index);
                tx.set_seen(&e.device, e.index)?;
                out.applied += 1;
            }
            tx.commit()
        })();
        if let Err(e) = result {
            // The index may hold changes the rollback undid.
            self.reindex();
            return Err(store_err(e));
        }
        self.clock = clock;
        for (row, body) in touched {
            self.rerender(&row, &body, now);
        }
        Ok(out)
    }

    /// Rebuilds the index from the store.
    fn reindex(&mut self) {
        let Ok(rows) = self.live_rows() else { return };
        let Some(sess) = self.session.take() else {
            return;
        };
        let index = Self::build_index(&sess.key, &rows);
        let (idle, hard) = (sess.idle_deadline, sess.hard_deadline);
        self.install(sess.key, index, Timestamp::now());
        if let Some(s) = &mut self.session {
            s.idle_deadline = idle;
            s.hard_deadline = hard;
        }
    }

    /// After a local change freed `name`: a record that lost it takes it.
    pub(super) fn settle_local(&mut self, name: &str) -> Result<()> {
        if let Err(e) = self.settle_name(name) {
            self.reindex();
            return Err(store_err(e));
        }
        Ok(())
    }

    /// [`settle`] in its own transaction.
    pub(super) fn settle_name(&mut self, name: &str) -> std::result::Result<(), StoreError> {
        let (Some(store), Some(sess)) = (self.store.as_mut(), self.session.as_mut()) else {
            return Ok(());
        };
        if !sess.claims.contains_key(name) {
            return Ok(());
        }
        let mut tx = store.sync_tx()?;
        settle(sess, &mut tx, name)?;
        tx.commit()
    }

    /// Open conflicts: revisions that lost to a concurrent change, and
    /// records that lost their name.
    pub fn conflicts(&self) -> Result<Vec<ConflictInfo>> {
        let sess = self.session()?;
        let store = self.store()?;
        let names: BTreeMap<&str, &str> = sess
            .index
            .iter()
            .map(|(n, e)| (e.id.as_str(), n.as_str()))
            .collect();
        let mut out = Vec::new();
        for c in store.conflicts().map_err(store_err)? {
            let name = match names.get(c.record_id.as_str()) {
                Some(n) => (*n).to_owned(),
                None => match store.by_id(&c.record_id).map_err(store_err)? {
                    Some(row) => decrypt_body(&sess.key, &row)
                        .map(|b| b.name)
                        .unwrap_or_else(|_| c.record_id.clone()),
                    None => c.record_id.clone(),
                },
            };
            out.push(ConflictInfo {
                name,
                kind: ConflictKind::Edit,
                revision: Some(c.revision),
                head: Some(c.head),
                device: Some(c.device),
                at: Some(Timestamp(c.updated_at)),
                deleted: c.deleted,
                claims: None,
                deleted_head: !names.contains_key(c.record_id.as_str()),
            });
        }
        for (name, e) in &sess.index {
            if let Some(claims) = &e.claims {
                out.push(ConflictInfo {
                    name: name.clone(),
                    kind: ConflictKind::Name,
                    revision: None,
                    head: Some(e.revision),
                    device: e.stamp.as_ref().map(|s| s.device.clone()),
                    at: Some(e.updated_at),
                    deleted: false,
                    claims: Some(claims.clone()),
                    deleted_head: false,
                });
            }
        }
        Ok(out)
    }
}

/// Sorted numbers as inclusive ranges.
fn ranges(list: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &i in list {
        match out.last_mut() {
            Some((_, end)) if *end + 1 == i => *end = i,
            _ => out.push((i, i)),
        }
    }
    out
}

/// Applies one pulled entry. Returns its clock and, when it became the
/// head, the new head.
#[allow(clippy::type_complexity)]
fn apply_one(
    sess: &mut Session,
    tx: &mut SyncTx<'_>,
    e: &Pulled,
    key_id: &str,
) -> std::result::Result<Option<(u64, Option<(RecordRow, RecordBody)>)>, Refusal> {
    let place = format!("entry {} of device {}", e.index, e.device);
    if e.key_id != key_id {
        return Err(Refusal::Refused(format!(
            "{place} was pushed with another vault key ({}); it is not applied",
            e.key_id
        )));
    }
    if tx.has_entry(&e.device, e.index)? {
        return Ok(None);
    }
    let plain = sess.key.decrypt(&e.data).map_err(|_| {
        Refusal::Refused(format!(
            "{place} cannot be decrypted with this vault's key; it is not applied"
        ))
    })?;
    let body =
        RecordBody::parse(&plain).map_err(|why| Refusal::Refused(format!("{place}: {why}")))?;
    let stamp: Stamp = body
        .sync
        .clone()
        .filter(|s| s.device == e.device && s.index == e.index)
        .ok_or_else(|| {
            Refusal::Refused(format!(
                "{place} holds a revision filed elsewhere (the server may have swapped \
                 entries); it is not applied"
            ))
        })?;
    let id_ok = body.id.len() == 32
        && body
            .id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if validate_name(&body.name).is_err() || !id_ok {
        return Err(Refusal::Refused(format!(
            "{place} holds an invalid record; it is not applied"
        )));
    }
    let log = LogStamp {
        index: e.index,
        clock: stamp.clock,
    };
    let parents: Vec<(String, u64)> = stamp
        .parents
        .iter()
        .map(|p| (p.device.clone(), p.index))
        .collect();
    let existing = tx.by_id(&body.id)?;
    let head = match &existing {
        None => None,
        Some(_) => tx.head_rank(&body.id)?,
    };
    let wins = head
        .as_ref()
        .is_none_or(|(c, d, _)| (stamp.clock, stamp.device.as_str()) > (*c, d.as_str()));
    // Only here can a revision be left that nobody built on: when this one
    // loses, or wins without having seen the head.
    let seen_head = head
        .as_ref()
        .is_some_and(|(_, d, i)| parents.iter().any(|(pd, pi)| pd == d && pi == i));
    if existing.is_some() && (!wins || !seen_head) {
        tx.add_fork(&body.id)?;
    }
    let updated = clock_secs(stamp.clock);
    let mut row = RecordRow {
        id: body.id.clone(),
        name_mac: Vec::new(),
        kind: body.kind.as_str().to_owned(),
        revision: existing.as_ref().map_or(0, |r| r.revision),
        created_at: existing.as_ref().map_or(updated, |r| r.created_at),
        updated_at: updated,
        expires_at: body.expires_at.map(Timestamp::unix),
        deleted: stamp.deleted,
        body: e.data.clone(),
        shadowed: false,
    };
    if !wins {
        // Kept in history only.
        tx.add_revision(&mut row, &e.device, &stamp.change, log, false)?;
        tx.add_parents(&row.id, &parents)?;
        return Ok(Some((stamp.clock, None)));
    }
    // The old head leaves the index.
    let mut freed = None;
    if let Some(old) = existing.as_ref().filter(|r| !r.deleted) {
        let old_body = decrypt_body(&sess.key, old).map_err(|e| {
            Refusal::Refused(format!(
                "{place} changes record {}, whose copy here cannot be read ({}); it is not applied",
                old.id, e.message
            ))
        })?;
        if old.shadowed {
            sess.index.remove(&derived_name(&old_body.name, &old.id));
            unclaim(sess, &old_body.name, &old.id);
        } else {
            sess.index.remove(&old_body.name);
        }
        freed = Some(old_body.name);
    }
    if row.deleted {
        row.name_mac = existing
            .as_ref()
            .map_or_else(|| sess.key.name_mac(&body.name), |r| r.name_mac.clone());
        tx.add_revision(&mut row, &e.device, &stamp.change, log, true)?;
    } else {
        let name = body.name.clone();
        let taken = sess.index.get(&name).is_some_and(|o| o.id != row.id);
        let listed = if taken {
            derived_name(&name, &row.id)
        } else {
            name.clone()
        };
        row.shadowed = taken;
        row.name_mac = sess.key.name_mac(&listed);
        tx.add_revision(&mut row, &e.device, &stamp.change, log, true)?;
        if taken {
            sess.claims
                .entry(name.clone())
                .or_default()
                .insert(row.id.clone());
        }
        sess.index
            .insert(listed, IndexEntry::from_parts(&row, &body));
        settle(sess, tx, &name)?;
    }
    tx.add_parents(&row.id, &parents)?;
    if let Some(old) = freed
        && (row.deleted || old != body.name)
    {
        settle(sess, tx, &old)?;
    }
    Ok(Some((stamp.clock, Some((row, body)))))
}

/// A new device's vault: the key from the server, a new device id.
pub struct Joined {
    /// The vault key, opened with the passphrase.
    pub key: VaultKey,
    /// `identity.age` as the server keeps it.
    pub sealed: Vec<u8>,
    /// The vault id.
    pub vault_id: String,
    /// The server.
    pub url: String,
    /// The access token.
    pub token: SecretValue,
}

impl std::fmt::Debug for Joined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joined")
            .field("vault_id", &self.vault_id)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Creates this device's copy of an existing vault (`vault init
    /// --join`), logged in, unlocked and empty until the first pull.
    pub fn join(&mut self, joined: Joined, now: Timestamp) -> Result<String> {
        let recipient = joined.key.recipient();
        self.create(joined.key, &joined.sealed, &joined.vault_id, now)?;
        self.save_login(&joined.url, &joined.token)?;
        Ok(recipient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use vault_protocol::CredentialType;
    use vault_protocol::message::{ListFilter, NewRecord};
    use vault_protocol::paths::VaultPaths;

    fn token(name: &str, value: &str) -> NewRecord {
        NewRecord {
            name: name.into(),
            kind: CredentialType::Token,
            fields: [("token".to_owned(), SecretValue::from(value))].into(),
            description: None,
            tags: vec![],
            expires_at: None,
        }
    }

    /// Two engines of one vault (the second joined with the first's key).
    fn pair() -> (tempfile::TempDir, Engine, Engine) {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["a", "b"] {
            std::fs::create_dir(tmp.path().join(d)).unwrap();
        }
        let now = Timestamp::now();
        let mut a = Engine::open(
            VaultPaths::under_home(&tmp.path().join("a")),
            Config::default(),
        )
        .unwrap();
        let (vault_id, _) = a.init(&SecretValue::from("pw"), now).unwrap();
        let sealed = std::fs::read(a.paths().identity()).unwrap();
        let mut b = Engine::open(
            VaultPaths::under_home(&tmp.path().join("b")),
            Config::default(),
        )
        .unwrap();
        let joined = Joined {
            key: VaultKey::open(&sealed, "pw").unwrap(),
            sealed,
            vault_id,
            url: "http://127.0.0.1:1".into(),
            token: SecretValue::from("t"),
        };
        b.join(joined, now).unwrap();
        (tmp, a, b)
    }

    /// Everything `from` wrote, as pulled by another device.
    fn log_of(from: &Engine) -> Vec<Pulled> {
        let key_id = from.meta("key_id").unwrap().unwrap();
        from.log_after(0, 10_000)
            .unwrap()
            .into_iter()
            .map(|e| Pulled {
                device: from.device.clone(),
                index: e.index,
                key_id: key_id.clone(),
                data: e.body,
            })
            .collect()
    }

    fn listing(e: &Engine) -> Vec<(String, String)> {
        let now = Timestamp::now();
        let (names, _) = e.list(&ListFilter::default(), None, now).unwrap();
        names
            .into_iter()
            .map(|r| {
                let v = e.get(&r.name, now).unwrap();
                (r.name, v.fields["token"].expose_secret().to_owned())
            })
            .collect()
    }

    #[test]
    fn one_name_on_two_devices_converges_and_a_refresh_keeps_the_claim() {
        let (_tmp, mut a, mut b) = pair();
        let now = Timestamp::now();
        a.add(vec![token("n", "from-a")], now).unwrap();
        // Clocks count milliseconds: within one, the device id would decide.
        std::thread::sleep(std::time::Duration::from_millis(2));
        b.add(vec![token("n", "from-b")], now).unwrap();
        // Each applies the other's log: the later clock (b) keeps the name.
        let (from_a, from_b) = (log_of(&a), log_of(&b));
        assert_eq!(a.apply(from_b, now).unwrap().applied, 1);
        assert_eq!(b.apply(from_a, now).unwrap().applied, 1);
        let seen = listing(&a);
        assert_eq!(seen, listing(&b));
        assert_eq!(seen[0], ("n".to_owned(), "from-b".to_owned()));
        assert!(seen[1].0.starts_with("n@conflict-"), "{seen:?}");
        assert_eq!(a.conflicts().unwrap()[0].kind, ConflictKind::Name);

        // A refresh of the loser is not the user's choice: it still claims n.
        let loser = seen[1].0.clone();
        let (row, body) = a.load(&loser).unwrap();
        a.commit(row, body, &loser, "refresh", now).unwrap();
        assert_eq!(listing(&a)[1].0, loser);
        // Deleting the winner hands the name back, on both devices.
        b.remove("n", false, now).unwrap();
        let fresh: Vec<Pulled> = log_of(&b).into_iter().skip(1).collect();
        a.apply(fresh, now).unwrap();
        assert_eq!(listing(&a), [("n".to_owned(), "from-a".to_owned())]);
        b.apply(log_of(&a).into_iter().skip(1).collect(), now)
            .unwrap();
        assert_eq!(listing(&b), listing(&a));
    }

    #[test]
    fn a_pulled_entry_filed_elsewhere_is_refused() {
        let (_tmp, mut a, mut b) = pair();
        let now = Timestamp::now();
        a.add(vec![token("x", "1"), token("y", "2")], now).unwrap();
        let mut swapped = log_of(&a);
        swapped.swap(0, 1);
        swapped[0].index = 1;
        swapped[1].index = 2;
        let out = b.apply(swapped, now).unwrap();
        assert_eq!(out.applied, 0);
        assert!(
            out.refused[0].contains("filed elsewhere"),
            "{:?}",
            out.refused
        );
        assert!(listing(&b).is_empty());
    }

    #[test]
    fn clocks_move_forward() {
        let a = tick(0);
        assert!(tick(a) > a);
        assert_eq!(tick(u64::MAX / 2), u64::MAX / 2 + 1);
        assert!(clock_secs(a) > 1_700_000_000);
    }

    #[test]
    fn ranges_compress() {
        assert_eq!(ranges(&[1, 2, 3, 7, 9, 10]), [(1, 3), (7, 7), (9, 10)]);
        assert!(ranges(&[]).is_empty());
    }

    #[test]
    fn derived_names_are_valid_and_short() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(derived_name("github", id), "github@conflict-01234567");
        let long = "a".repeat(128);
        let d = derived_name(&long, id);
        assert_eq!(d.len(), 128);
        assert!(validate_name(&d).is_ok());
    }
}
