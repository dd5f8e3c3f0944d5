//! Sharing the audit log with the vault's other devices (`[audit] sync`,
//! off by default; docs/sync.md, "Audit log").
//!
//! A device ships the entries it wrote since the last sync as numbered
//! segments: JSON of the entries, sealed (ChaCha20-Poly1305) under a key
//! every member of the vault derives from its identity and the server
//! cannot, with the vault, the device and the segment's number bound in.
//! So the server can withhold, replay or move a segment, never forge or
//! change one: a segment that does not open under exactly its place is
//! refused, a number missing is reported, and so is a break in the
//! device's entry numbers between segments. Pulled segments are kept as
//! they came, sealed, in `audit_remote`, and opened when read.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use vault_protocol::ErrorCode;
use vault_protocol::message::{AuditEntry, AuditProcess};
use vault_protocol::server_api::{MAX_RECORD_BYTES, validate_id};
use vault_protocol::timefmt::Timestamp;

use super::audit::open_body;
use super::sync::{MAX_CLOCK_SKEW_SECS, Pulled};
use super::{Engine, Result, err, store_err};
use crate::crypto::VaultKey;
use crate::store::{AuditGap, AuditSegment};

/// `vault_meta`: the last local entry shipped in a segment the server took.
const SEQ: &str = "audit_sync_seq";
/// `vault_meta`: the number of the last segment the server took.
const SEGMENT: &str = "audit_sync_segment";
/// `vault_meta`: the last local entry written while sharing was off; never
/// shared.
const UNSHARED: &str = "audit_sync_unshared";
/// `vault_meta`: the first entry of that run (entries before it, written
/// while sharing was on and not pushed yet, still go).
const UNSHARED_FROM: &str = "audit_sync_unshared_from";
/// Most entries in one segment.
const SEGMENT_ENTRIES: usize = 500;
/// A segment stops growing past this many bytes of JSON (an entry is at
/// most a few KiB: four command lines of at most 512 bytes).
const SEGMENT_BYTES: usize = 256 * 1024;
/// Most segments in one push: a segment holds at most [`SEGMENT_BYTES`]
/// plus one entry (under 128 KiB even of escaped control characters), so
/// 16 stay inside the server's 8 MiB a batch and 1 MiB a segment.
pub const PUSH_SEGMENTS: usize = 16;
/// How many refused segments one sync lists.
const SHOWN_REFUSALS: usize = 20;
/// The segment format this build writes and reads.
const FORMAT: u32 = 1;

/// What a segment holds, sealed.
#[derive(Serialize, Deserialize)]
struct Segment {
    v: u32,
    vault: String,
    device: String,
    entries: Vec<Shared>,
    /// The entries between the previous segment's last and this one's
    /// first were written while sharing was off, and are not shared.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    resumed: bool,
}

/// One entry as another device sees it: the record by id (names are
/// looked up on the reading device), the rest as `vault audit` shows it.
#[derive(Serialize, Deserialize)]
struct Shared {
    seq: u64,
    at: i64,
    record_id: String,
    op: String,
    uid: u32,
    client: AuditProcess,
    #[serde(default)]
    parents: Vec<AuditProcess>,
}

/// A segment ready to push.
#[derive(Debug)]
pub struct Outgoing {
    /// Its number in this device's segments.
    pub index: u64,
    /// Sealed.
    pub data: Vec<u8>,
    /// The last local entry in it.
    pub last_seq: u64,
}

/// What binds a segment to its place: the vault, the device, the number,
/// each length-prefixed.
fn label(vault: &str, device: &str, index: u64) -> Vec<u8> {
    let mut l = b"vault audit segment v1".to_vec();
    for part in [vault.as_bytes(), device.as_bytes()] {
        l.extend_from_slice(&(part.len() as u64).to_be_bytes());
        l.extend_from_slice(part);
    }
    l.extend_from_slice(&index.to_be_bytes());
    l
}

/// Opens and checks one segment of `device` at `index`; why not, phrased
/// for `vault sync status`.
fn open_segment(
    key: &VaultKey,
    vault: &str,
    device: &str,
    index: u64,
    data: &[u8],
) -> std::result::Result<Segment, String> {
    let plain = key
        .open_shared_audit(&label(vault, device, index), data)
        .ok_or_else(|| {
            format!(
                "audit segment {index} of device {device} does not open with this vault's key \
                 under its place: forged, changed or moved on the server; not kept"
            )
        })?;
    let seg: Segment = serde_json::from_slice(&plain).map_err(|_| {
        format!("audit segment {index} of device {device} is not a segment this version reads")
    })?;
    if seg.v != FORMAT || seg.vault != vault || seg.device != device {
        return Err(format!(
            "audit segment {index} of device {device} is of another format, vault or device; \
             not kept"
        ));
    }
    if seg.entries.is_empty() || seg.entries.len() > SEGMENT_ENTRIES {
        return Err(format!(
            "audit segment {index} of device {device} holds {} entries (1..={SEGMENT_ENTRIES} \
             expected); not kept",
            seg.entries.len()
        ));
    }
    if seg.entries.windows(2).any(|w| w[1].seq <= w[0].seq) {
        return Err(format!(
            "audit segment {index} of device {device} holds entries out of order; not kept"
        ));
    }
    let ahead = Timestamp::now().unix() + MAX_CLOCK_SKEW_SECS;
    if seg.entries.iter().any(|e| e.at > ahead || e.at < 0) {
        return Err(format!(
            "audit segment {index} of device {device} holds an entry dated in the future; not \
             kept"
        ));
    }
    Ok(seg)
}

impl Engine {
    /// Whether this device shares its audit log (`[audit] sync`).
    pub fn audit_sync_on(&self) -> bool {
        self.config.audit && self.config.audit_sync
    }

    fn meta_u64(&self, key: &str) -> Result<u64> {
        Ok(self.meta(key)?.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    fn vault_id(&self) -> Result<String> {
        Ok(self.meta("vault_id")?.unwrap_or_default())
    }

    /// The segments the server has not taken yet: this device's entries
    /// after the last shipped, numbered after the last segment taken; at
    /// most [`PUSH_SEGMENTS`]. Writes the waiting entries first.
    pub fn audit_outgoing(&mut self) -> Result<Vec<Outgoing>> {
        self.flush_audit()?;
        let shipped = self.meta_u64(SEQ)?;
        let (from, to) = (self.meta_u64(UNSHARED_FROM)?, self.meta_u64(UNSHARED)?);
        let unshared = |seq: u64| to > shipped && (from..=to).contains(&seq);
        let mut resumed = false;
        let mut index = self.meta_u64(SEGMENT)?;
        let vault = self.vault_id()?;
        let rows = self.store()?.audit_rows_after(shipped).map_err(store_err)?;
        let key = &self.session()?.key;
        let mut out = Vec::new();
        let mut entries: Vec<Shared> = Vec::new();
        let mut bytes = 0;
        let seal = |entries: Vec<Shared>, index: u64, resumed: bool| -> Result<Outgoing> {
            let last_seq = entries.last().map_or(0, |e| e.seq);
            let seg = Segment {
                v: FORMAT,
                vault: vault.clone(),
                device: self.device.clone(),
                entries,
                resumed,
            };
            let plain =
                serde_json::to_vec(&seg).map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
            Ok(Outgoing {
                index,
                data: key.seal_shared_audit(&label(&vault, &self.device, index), &plain),
                last_seq,
            })
        };
        for row in &rows {
            // Written while sharing was off: never shared. What came before
            // goes in a segment of its own; the next one says entries were
            // left out before it.
            let skip = unshared(row.seq);
            if !skip {
                // An entry changed in vault.db does not open: `vault audit`
                // reports it here; the other devices see its number missing.
                let Some(body) = open_body(key, row) else {
                    continue;
                };
                let e = Shared {
                    seq: row.seq,
                    at: row.at,
                    record_id: row.record_id.clone(),
                    op: body.op,
                    uid: body.uid,
                    client: body.client,
                    parents: body.parents,
                };
                // Exactly as sealed: a long executable path or a command
                // line of control characters (escaped six times over)
                // counts in full.
                bytes += serde_json::to_vec(&e).map_or(SEGMENT_BYTES, |j| j.len() + 1);
                entries.push(e);
            }
            let full = entries.len() >= SEGMENT_ENTRIES || bytes >= SEGMENT_BYTES;
            if (skip || full) && !entries.is_empty() {
                index += 1;
                out.push(seal(
                    std::mem::take(&mut entries),
                    index,
                    std::mem::take(&mut resumed),
                )?);
                bytes = 0;
                if out.len() >= PUSH_SEGMENTS {
                    return Ok(out);
                }
            }
            resumed |= skip;
        }
        if !entries.is_empty() {
            index += 1;
            out.push(seal(entries, index, resumed)?);
        }
        Ok(out)
    }

    /// The server took this device's segments through `index`, whose last
    /// entry is `last_seq`.
    pub fn audit_pushed(&mut self, index: u64, last_seq: u64) -> Result<()> {
        let (index, seq) = (index.to_string(), last_seq.to_string());
        self.store_mut()?
            .set_meta(&[(SEGMENT, &index), (SEQ, &seq)])
            .map_err(store_err)
    }

    /// The server's copy of this device's segments ends at `head`, not
    /// where this device thought (a vault.db restored from a backup, a
    /// server restored from one): number the next segment after it.
    pub fn audit_resume_at(&mut self, head: u64) -> Result<()> {
        let head = head.to_string();
        self.store_mut()?
            .set_meta(&[(SEGMENT, &head)])
            .map_err(store_err)
    }

    /// Entries `first..=last` were written while sharing was off: they
    /// are never shared (turning it on shares the entries from then on).
    /// One run is kept: it grows while the last is not behind what was
    /// shipped (entries of a short time on between two runs, never pushed,
    /// go with it), else a new run starts.
    pub(super) fn audit_not_shared(&mut self, first: u64, last: u64) -> Result<()> {
        let (from, to) = (self.meta_u64(UNSHARED_FROM)?, self.meta_u64(UNSHARED)?);
        let from = if to > self.meta_u64(SEQ)? && to > 0 {
            from
        } else {
            first
        };
        let (from, last) = (from.to_string(), last.to_string());
        self.store_mut()?
            .set_meta(&[(UNSHARED_FROM, &from), (UNSHARED, &last)])
            .map_err(store_err)
    }

    /// The server removed this device's segments through `through` (`vault
    /// sync unshare-audit`) and keeps its numbering: the next segment, if
    /// sharing is turned on again, is numbered after it.
    pub fn audit_unshared(&mut self, through: u64) -> Result<()> {
        if through > self.meta_u64(SEGMENT)? {
            self.audit_resume_at(through)?;
        }
        Ok(())
    }

    /// The number of the last segment of this device the server took.
    pub fn audit_segment_mark(&self) -> Result<u64> {
        self.meta_u64(SEGMENT)
    }

    /// The other devices' segments kept here: per device, the end of the
    /// unbroken run from 1 (a pull goes on after it).
    pub fn audit_kept(&self) -> Result<BTreeMap<String, u64>> {
        self.store()?.audit_segment_heads().map_err(store_err)
    }

    /// Checks and keeps pulled segments; what was refused, and why.
    pub fn accept_audit_segments(&mut self, pulled: Vec<Pulled>) -> Result<Vec<String>> {
        let vault = self.vault_id()?;
        let key_id = self.meta("key_id")?.unwrap_or_default();
        // What is kept here already, or gone on purpose, is not kept again
        // (a server replaying a segment dropped by `[audit] keep`): every
        // gap lies inside the unbroken run (one dropped here starts at 1,
        // one the server claims right after the run), so the run's end
        // covers both.
        let kept = self.audit_kept()?;
        let known = |device: &str, index: u64| index <= kept.get(device).copied().unwrap_or(0);
        let mut keep = Vec::new();
        let mut refused = Vec::new();
        {
            let key = &self.session()?.key;
            for p in pulled {
                if p.device == self.device || known(&p.device, p.index) {
                    continue;
                }
                if validate_id("device id", &p.device).is_err()
                    || p.index == 0
                    || p.index > i64::MAX as u64
                {
                    refused.push(
                        "the server sent an audit segment of an invalid device id or number; \
                         not kept"
                            .to_owned(),
                    );
                    continue;
                }
                if p.key_id != key_id || p.data.len() > MAX_RECORD_BYTES {
                    refused.push(format!(
                        "audit segment {} of device {} is not sealed to this vault's key; not kept",
                        p.index, p.device
                    ));
                    continue;
                }
                match open_segment(key, &vault, &p.device, p.index, &p.data) {
                    Ok(seg) => keep.push(AuditSegment {
                        device: p.device,
                        index: p.index,
                        data: p.data,
                        last_at: seg.entries.last().map(|e| e.at),
                    }),
                    Err(why) => refused.push(why),
                }
            }
        }
        self.store_mut()?
            .put_audit_segments(&keep)
            .map_err(store_err)?;
        let more = refused.len().saturating_sub(SHOWN_REFUSALS);
        refused.truncate(SHOWN_REFUSALS);
        if more > 0 {
            refused.push(format!("… and {more} more audit segment(s) refused"));
        }
        Ok(refused)
    }

    /// Drops the other devices' kept segments whose newest entry is older
    /// than `cutoff` (`[audit] keep`), oldest first and only from the start
    /// of each device's unbroken run, so what is left still checks whole.
    /// Looks at most once a minute; opens only segments kept without a
    /// time (by schema 13) and the last one dropped of each device.
    pub(super) fn prune_audit_segments(&mut self, cutoff: i64) -> Result<()> {
        let now = Timestamp::now().unix();
        if now < self.audit_segments_due_at || self.session().is_err() {
            return Ok(());
        }
        self.audit_segments_due_at = now + 60;
        let store = self.store()?;
        if !store.audit_segments_due(cutoff).map_err(store_err)? {
            return Ok(());
        }
        let vault = self.vault_id()?;
        // Their numbers and times only: bodies are read one at a time, for
        // a segment kept without a time (once) and the last one dropped.
        let mut index = store.audit_segment_times().map_err(store_err)?;
        let mut gaps: HashMap<String, Vec<AuditGap>> = HashMap::new();
        for g in store.audit_gaps(None).map_err(store_err)? {
            gaps.entry(g.device.clone()).or_default().push(g);
        }
        let key = &self.session()?.key;
        let open = |device: &str, idx: u64| -> Result<Option<Segment>> {
            let data = store.audit_segment(device, idx).map_err(store_err)?;
            Ok(data.and_then(|d| open_segment(key, &vault, device, idx, &d).ok()))
        };
        let mut times = Vec::new();
        for (device, idx, at) in index.iter_mut().filter(|t| t.2.is_none()) {
            *at = open(device, *idx)?.and_then(|seg| seg.entries.last().map(|e| e.at));
            if let Some(at) = *at {
                times.push((device.clone(), *idx, at));
            }
        }
        // Per device: the last segment to drop, and the entry after it.
        let mut drops: Vec<(String, u64, Option<u64>)> = Vec::new();
        let mut by_device: BTreeMap<&str, Vec<(u64, Option<i64>)>> = BTreeMap::new();
        for (device, idx, at) in &index {
            by_device.entry(device).or_default().push((*idx, *at));
        }
        for (device, kept) in by_device {
            let mut gaps_here = gaps
                .remove(device)
                .unwrap_or_default()
                .into_iter()
                .peekable();
            let mut next = 1u64;
            let mut last = None;
            for (idx, at) in kept {
                while let Some(g) = gaps_here.next_if(|g| g.first <= next) {
                    next = next.max(g.last.saturating_add(1));
                }
                if idx < next {
                    // Inside a run already gone (kept again since): it
                    // goes with the next drop.
                    continue;
                }
                if idx != next || at.is_none_or(|at| at >= cutoff) {
                    break;
                }
                last = Some(idx);
                next = idx + 1;
            }
            if let Some(idx) = last {
                let next_seq = open(device, idx)?
                    .and_then(|seg| seg.entries.last().map(|e| e.seq.saturating_add(1)));
                drops.push((device.to_owned(), idx, next_seq));
            }
        }
        let store = self.store_mut()?;
        store.set_audit_segment_times(&times).map_err(store_err)?;
        for (device, through, next_seq) in drops {
            store
                .drop_audit_segments(&device, through, next_seq)
                .map_err(store_err)?;
        }
        Ok(())
    }

    /// The server no longer holds these devices' segments through the
    /// numbers given (its retention, or the device removed them): those
    /// past what is kept here are noted as gone, so the checks and the pull
    /// go on after them. Its claim, not a proof; each is told to the user.
    /// `listed` caps it at the heads the server listed.
    pub fn audit_server_pruned(
        &mut self,
        pruned: &BTreeMap<String, u64>,
        listed: &BTreeMap<String, u64>,
    ) -> Result<Vec<String>> {
        let kept = self.audit_kept()?;
        let mut notes = Vec::new();
        for (device, &through) in pruned {
            let Some(&head) = listed.get(device) else {
                continue;
            };
            let have = kept.get(device).copied().unwrap_or(0);
            let through = through.min(head);
            if *device == self.device || through <= have || through >= i64::MAX as u64 {
                continue;
            }
            self.store_mut()?
                .add_audit_gap(&AuditGap {
                    device: device.clone(),
                    first: have + 1,
                    last: through,
                    next_seq: None,
                    by_server: true,
                })
                .map_err(store_err)?;
            notes.push(format!(
                "the server no longer holds audit segments {}..={through} of device {device} \
                 (dropped by its retention, or removed by that device); they were not fetched \
                 here",
                have + 1
            ));
        }
        Ok(notes)
    }

    /// The other devices' entries kept here (of `device`, or all), with
    /// what their segments' numbers and entry numbers say is missing.
    fn synced_entries(
        &self,
        device: Option<&str>,
        wanted: &dyn Fn(&str, i64) -> bool,
    ) -> Result<(Vec<AuditEntry>, Vec<String>)> {
        let vault = self.vault_id()?;
        let sess = self.session()?;
        let names: HashMap<&str, &str> = sess
            .index
            .iter()
            .map(|(n, e)| (e.id.as_str(), n.as_str()))
            .collect();
        let segments = self.store()?.audit_segments(device).map_err(store_err)?;
        let mut gaps: HashMap<String, VecDeque<AuditGap>> = HashMap::new();
        for g in self.store()?.audit_gaps(device).map_err(store_err)? {
            gaps.entry(g.device.clone()).or_default().push_back(g);
        }
        let mut entries = Vec::new();
        let mut problems = Vec::new();
        // (next segment number, next entry number) per device.
        let mut next: HashMap<String, (u64, Option<u64>)> = HashMap::new();
        for s in segments {
            let (want_index, want_seq) = next.entry(s.device.clone()).or_insert((1, None));
            // Runs gone on purpose before it: dropped here (the entry
            // numbers go on from the last one dropped), or no longer on the
            // server (noted by the sync that learnt it; numbers unknown).
            let pending = gaps.entry(s.device.clone()).or_default();
            while let Some(g) = pending.front().filter(|g| g.first <= s.index) {
                if g.first > *want_index {
                    problems.push(missing_segments(&s.device, *want_index, g.first - 1));
                }
                if g.last.saturating_add(1) > *want_index {
                    *want_index = g.last.saturating_add(1);
                    *want_seq = if g.by_server { None } else { g.next_seq };
                }
                pending.pop_front();
            }
            if s.index < *want_index {
                // Inside a run gone on purpose (a copy kept again since):
                // not shown, as the run's other entries are not.
                continue;
            }
            if s.index > *want_index {
                problems.push(missing_segments(&s.device, *want_index, s.index - 1));
            }
            *want_index = s.index + 1;
            let seg = match open_segment(&sess.key, &vault, &s.device, s.index, &s.data) {
                Ok(seg) => seg,
                Err(_) => {
                    problems.push(format!(
                        "audit segment {} of device {} was changed in vault.db outside vaultd",
                        s.index, s.device
                    ));
                    *want_seq = None;
                    continue;
                }
            };
            if let (Some(want), Some(first)) = (*want_seq, seg.entries.first())
                && first.seq != want
                && !(seg.resumed && first.seq > want)
            {
                problems.push(if first.seq > want {
                    format!(
                        "entries {want}..={} of device {}'s audit log are missing",
                        first.seq - 1,
                        s.device
                    )
                } else {
                    format!(
                        "device {}'s audit log repeats entry {} (a segment replayed?)",
                        s.device, first.seq
                    )
                });
            }
            *want_seq = seg.entries.last().map(|e| e.seq + 1);
            for e in seg.entries {
                if !wanted(&e.record_id, e.at) {
                    continue;
                }
                entries.push(AuditEntry {
                    seq: e.seq,
                    at: Timestamp(e.at),
                    name: names.get(e.record_id.as_str()).map(|n| (*n).to_owned()),
                    op: e.op,
                    uid: e.uid,
                    client: e.client,
                    parents: e.parents,
                    device: Some(s.device.clone()),
                });
            }
        }
        Ok((entries, problems))
    }

    /// `vault audit --all-devices` / `--device ID`: this device's entries
    /// (unless another device is named) and the synced ones, by time; a
    /// page from entry `offset`, and the offset of the next page.
    pub fn audit_log_devices(
        &mut self,
        name: Option<&str>,
        since: Option<Timestamp>,
        offset: u64,
        device: Option<&str>,
    ) -> Result<(Vec<AuditEntry>, Vec<String>, Option<u64>)> {
        // What waits is written and what is past `[audit] keep` dropped
        // first, also when only another device's entries are asked for.
        self.flush_audit()?;
        let own = self.device.clone();
        let mut all = Vec::new();
        let mut problems = Vec::new();
        if device.is_none_or(|d| d == own) {
            let mut after = None;
            loop {
                let (page, found, next) = self.audit_log(name, since, after)?;
                if after.is_none() {
                    problems.extend(found);
                }
                all.extend(page.into_iter().map(|mut e| {
                    e.device = Some(own.clone());
                    e
                }));
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
        }
        if device != Some(own.as_str()) {
            let only = self.audited_id(name)?;
            let wanted = |record_id: &str, at: i64| {
                only.as_deref().is_none_or(|id| id == record_id)
                    && since.is_none_or(|t| at >= t.unix())
            };
            let (synced, found) = self.synced_entries(device, &wanted)?;
            all.extend(synced);
            problems.extend(found);
        }
        all.sort_by(|a, b| (a.at, &a.device, a.seq).cmp(&(b.at, &b.device, b.seq)));
        let mut page = super::audit::Page::default();
        let mut taken = 0u64;
        for e in all.into_iter().skip(offset as usize) {
            if !page.push(e) {
                break;
            }
            taken += 1;
        }
        let next = page.next.map(|_| offset + taken);
        if offset > 0 {
            problems.clear();
        }
        Ok((page.entries, problems, next))
    }
}

fn missing_segments(device: &str, from: u64, to: u64) -> String {
    let which = if from == to {
        format!("audit segment {from}")
    } else {
        format!("audit segments {from}..={to}")
    };
    format!("{which} of device {device} never arrived (withheld by the server?)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, at: i64) -> Shared {
        Shared {
            seq,
            at,
            record_id: "r1".into(),
            op: "get".into(),
            uid: 1000,
            client: AuditProcess {
                pid: 7,
                exe: None,
                cmdline: "vault get x".into(),
            },
            parents: Vec::new(),
        }
    }

    fn sealed(
        key: &VaultKey,
        vault: &str,
        device: &str,
        index: u64,
        entries: Vec<Shared>,
    ) -> Vec<u8> {
        let seg = Segment {
            v: FORMAT,
            vault: vault.into(),
            device: device.into(),
            entries,
            resumed: false,
        };
        let plain = serde_json::to_vec(&seg).unwrap();
        key.seal_shared_audit(&label(vault, device, index), &plain)
    }

    #[test]
    fn only_a_segment_of_this_vault_in_its_place_and_in_range_opens() {
        let key = VaultKey::generate();
        let now = Timestamp::now().unix();
        let good = sealed(&key, "v", "d", 2, vec![entry(4, now), entry(5, now)]);
        assert_eq!(
            open_segment(&key, "v", "d", 2, &good)
                .unwrap()
                .entries
                .len(),
            2
        );
        // Moved (another number, device or vault), or replayed elsewhere.
        for (vault, device, index) in [("v", "d", 3), ("v", "e", 2), ("w", "d", 2)] {
            let why = open_segment(&key, vault, device, index, &good)
                .err()
                .unwrap();
            assert!(why.contains("does not open"), "{why}");
        }
        // Forged: another vault's key, or one byte changed.
        let other = VaultKey::generate();
        let forged = sealed(&other, "v", "d", 2, vec![entry(4, now)]);
        assert!(open_segment(&key, "v", "d", 2, &forged).is_err());
        let mut flipped = good.clone();
        flipped[20] ^= 1;
        assert!(open_segment(&key, "v", "d", 2, &flipped).is_err());
        // Sealed by a member, but out of range: empty, out of order, too
        // many entries, dated in the future.
        let cases = [
            (Vec::new(), "holds 0 entries"),
            (vec![entry(5, now), entry(5, now)], "out of order"),
            (
                (1..=SEGMENT_ENTRIES as u64 + 1)
                    .map(|s| entry(s, now))
                    .collect(),
                "entries (1..=",
            ),
            (
                vec![entry(1, now + 2 * MAX_CLOCK_SKEW_SECS)],
                "in the future",
            ),
        ];
        for (entries, want) in cases {
            let data = sealed(&key, "v", "d", 1, entries);
            let why = open_segment(&key, "v", "d", 1, &data).err().unwrap();
            assert!(why.contains(want), "{why}");
        }
        // Sealed by a member for another device, then put in this place.
        let seg = Segment {
            v: FORMAT,
            vault: "v".into(),
            device: "e".into(),
            entries: vec![entry(1, now)],
            resumed: false,
        };
        let data = key.seal_shared_audit(&label("v", "d", 1), &serde_json::to_vec(&seg).unwrap());
        let why = open_segment(&key, "v", "d", 1, &data).err().unwrap();
        assert!(why.contains("another format, vault or device"), "{why}");
    }

    /// A's segments 1..=n as B pulls them, with A's config sharing.
    fn share(a: &mut Engine, hand_outs: usize) -> Vec<Pulled> {
        let peer = crate::peer::Peer::daemon();
        for _ in 0..hand_outs {
            a.audit(&["n".to_owned()], "get", &peer);
        }
        let key_id = a.meta("key_id").unwrap().unwrap();
        let out = a.audit_outgoing().unwrap();
        let last = out.last().unwrap();
        a.audit_pushed(last.index, last.last_seq).unwrap();
        out.into_iter()
            .map(|o| Pulled {
                device: a.device.clone(),
                index: o.index,
                key_id: key_id.clone(),
                data: o.data,
            })
            .collect()
    }

    fn seqs(b: &mut Engine) -> (Vec<u64>, Vec<String>) {
        let a = |_: &str, _: i64| true;
        let (entries, problems) = b.synced_entries(None, &a).unwrap();
        (entries.into_iter().map(|e| e.seq).collect(), problems)
    }

    #[test]
    fn dropped_and_server_pruned_segments_leave_the_rest_checking_whole() {
        let (_tmp, mut a, mut b) = super::super::sync::tests::pair();
        let now = Timestamp::now();
        a.add(vec![super::super::sync::tests::token("n", "v")], now)
            .unwrap();
        a.config.audit_sync = true;
        let a_dev = a.device.clone();
        // Three syncs: segments 1 (entries 1..=2), 2 (3..=5), 3 (6).
        let mut pulled = Vec::new();
        for n in [2, 3, 1] {
            pulled.extend(share(&mut a, n));
        }
        let replay = Pulled {
            device: pulled[0].device.clone(),
            index: 1,
            key_id: pulled[0].key_id.clone(),
            data: pulled[0].data.clone(),
        };
        assert!(b.accept_audit_segments(pulled).unwrap().is_empty());
        assert_eq!(seqs(&mut b), ((1..=6).collect(), vec![]));

        // Nothing is old yet: nothing goes.
        b.prune_audit_segments(now.unix() - 3600).unwrap();
        assert_eq!(b.store().unwrap().audit_segments(None).unwrap().len(), 3);
        // Segments 1 and 2 dated old: they go; 3 still checks against
        // entry 5, the last one dropped, and the pull goes on after 3.
        b.store_mut()
            .unwrap()
            .set_audit_segment_times(&[(a_dev.clone(), 1, 10), (a_dev.clone(), 2, 20)])
            .unwrap();
        b.audit_segments_due_at = 0;
        b.prune_audit_segments(100).unwrap();
        assert_eq!(seqs(&mut b), (vec![6], vec![]));
        assert_eq!(b.audit_kept().unwrap()[&a_dev], 3);
        // The server replays segment 1, dropped here: not kept again.
        assert!(b.accept_audit_segments(vec![replay]).unwrap().is_empty());
        assert_eq!(b.store().unwrap().audit_segments(None).unwrap().len(), 1);
        assert_eq!(seqs(&mut b), (vec![6], vec![]));

        // The server says it no longer holds 4..=5 (never fetched here): no
        // problem, the pull goes on after 5, and 6 is taken as it comes.
        let more = [4, 1, 2].map(|n| share(&mut a, n));
        let listed: BTreeMap<String, u64> = [(a_dev.clone(), 6)].into();
        let pruned: BTreeMap<String, u64> = [(a_dev.clone(), 5)].into();
        let notes = b.audit_server_pruned(&pruned, &listed).unwrap();
        assert!(notes[0].contains("segments 4..=5 of device"), "{notes:?}");
        assert_eq!(b.audit_kept().unwrap()[&a_dev], 5);
        let [_, _, six] = more;
        assert!(b.accept_audit_segments(six).unwrap().is_empty());
        assert_eq!(seqs(&mut b), (vec![6, 12, 13], vec![]));
        // Said again, it changes nothing; nor do claims of what cannot be:
        // of B itself, of a device not listed, past the listed head (cut
        // to it), at or past 2^63.
        assert!(b.audit_server_pruned(&pruned, &listed).unwrap().is_empty());
        let b_dev = b.device.clone();
        let odd: BTreeMap<String, u64> = [
            (b_dev.clone(), 9),
            ("feedfacefeedface".to_owned(), 9),
            (a_dev.clone(), u64::MAX),
        ]
        .into();
        let heads: BTreeMap<String, u64> = [(b_dev, 9), (a_dev.clone(), u64::MAX)].into();
        assert!(b.audit_server_pruned(&odd, &heads).unwrap().is_empty());
        assert_eq!(b.audit_kept().unwrap()[&a_dev], 6);
        assert_eq!(b.audit_kept().unwrap().len(), 1);

        // A segment missing between kept ones is still a problem.
        let seven = share(&mut a, 1);
        let eight = share(&mut a, 1);
        assert!(b.accept_audit_segments(eight).unwrap().is_empty());
        let (_, problems) = seqs(&mut b);
        assert!(
            problems[0].contains("audit segment 7 of device"),
            "{problems:?}"
        );
        assert!(b.accept_audit_segments(seven).unwrap().is_empty());
        assert_eq!(seqs(&mut b).1, Vec::<String>::new());

        // Hand-outs while sharing is off are never shared; the entries
        // after them follow with no gap reported. One written while it was
        // on, not pushed yet, still goes.
        let peer = crate::peer::Peer::daemon();
        a.audit(&["n".to_owned()], "get", &peer);
        a.flush_audit().unwrap();
        a.config.audit_sync = false;
        for _ in 0..2 {
            a.audit(&["n".to_owned()], "get", &peer);
        }
        a.flush_audit().unwrap();
        a.config.audit_sync = true;
        let nine = share(&mut a, 1);
        assert_eq!(nine.len(), 2);
        assert!(b.accept_audit_segments(nine).unwrap().is_empty());
        let (seen, problems) = seqs(&mut b);
        assert_eq!(seen[seen.len() - 4..], [14, 15, 16, 19]);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn a_label_binds_vault_device_and_number_apart() {
        assert_ne!(label("v", "d1", 1), label("v", "d", 11));
        assert_ne!(label("vd", "", 1), label("v", "d", 1));
        assert_ne!(label("v", "d", 1), label("v", "d", 2));
    }
}
