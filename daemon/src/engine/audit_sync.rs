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

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use vault_protocol::ErrorCode;
use vault_protocol::message::{AuditEntry, AuditProcess};
use vault_protocol::server_api::{MAX_RECORD_BYTES, validate_id};
use vault_protocol::timefmt::Timestamp;

use super::audit::open_body;
use super::sync::{MAX_CLOCK_SKEW_SECS, Pulled};
use super::{Engine, Result, err, store_err};
use crate::crypto::VaultKey;
use crate::store::AuditSegment;

/// `vault_meta`: the last local entry shipped in a segment the server took.
const SEQ: &str = "audit_sync_seq";
/// `vault_meta`: the number of the last segment the server took.
const SEGMENT: &str = "audit_sync_segment";
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
        Ok(self
            .store()?
            .meta(key)
            .map_err(store_err)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    fn vault_id(&self) -> Result<String> {
        Ok(self
            .store()?
            .meta("vault_id")
            .map_err(store_err)?
            .unwrap_or_default())
    }

    /// The segments the server has not taken yet: this device's entries
    /// after the last shipped, numbered after the last segment taken; at
    /// most [`PUSH_SEGMENTS`]. Writes the waiting entries first.
    pub fn audit_outgoing(&mut self) -> Result<Vec<Outgoing>> {
        self.flush_audit()?;
        let after = self.meta_u64(SEQ)?;
        let mut index = self.meta_u64(SEGMENT)?;
        let vault = self.vault_id()?;
        let rows = self.store()?.audit_rows_after(after).map_err(store_err)?;
        let key = &self.session()?.key;
        let mut out = Vec::new();
        let mut entries: Vec<Shared> = Vec::new();
        let mut bytes = 0;
        let seal = |entries: Vec<Shared>, index: u64| -> Result<Outgoing> {
            let last_seq = entries.last().map_or(0, |e| e.seq);
            let seg = Segment {
                v: FORMAT,
                vault: vault.clone(),
                device: self.device.clone(),
                entries,
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
            // Exactly as sealed: a long executable path or a command line
            // of control characters (escaped six times over) counts in full.
            bytes += serde_json::to_vec(&e).map_or(SEGMENT_BYTES, |j| j.len() + 1);
            entries.push(e);
            if entries.len() >= SEGMENT_ENTRIES || bytes >= SEGMENT_BYTES {
                index += 1;
                out.push(seal(std::mem::take(&mut entries), index)?);
                bytes = 0;
                if out.len() >= PUSH_SEGMENTS {
                    return Ok(out);
                }
            }
        }
        if !entries.is_empty() {
            index += 1;
            out.push(seal(entries, index)?);
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
        let key_id = self
            .store()?
            .meta("key_id")
            .map_err(store_err)?
            .unwrap_or_default();
        let mut keep = Vec::new();
        let mut refused = Vec::new();
        {
            let key = &self.session()?.key;
            for p in pulled {
                if p.device == self.device {
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
                    Ok(_) => keep.push(AuditSegment {
                        device: p.device,
                        index: p.index,
                        data: p.data,
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
        let mut entries = Vec::new();
        let mut problems = Vec::new();
        // (next segment number, next entry number) per device.
        let mut next: HashMap<String, (u64, Option<u64>)> = HashMap::new();
        for s in segments {
            let (want_index, want_seq) = next.entry(s.device.clone()).or_insert((1, None));
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
        };
        let data = key.seal_shared_audit(&label("v", "d", 1), &serde_json::to_vec(&seg).unwrap());
        let why = open_segment(&key, "v", "d", 1, &data).err().unwrap();
        assert!(why.contains("another format, vault or device"), "{why}");
    }

    #[test]
    fn a_label_binds_vault_device_and_number_apart() {
        assert_ne!(label("v", "d1", 1), label("v", "d", 11));
        assert_ne!(label("vd", "", 1), label("v", "d", 1));
        assert_ne!(label("v", "d", 1), label("v", "d", 2));
    }
}
