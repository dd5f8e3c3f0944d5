//! The audit log (`vault audit`, docs/lifecycle.md): every value handed
//! out, to whom. Entries wait in memory (a hand-out costs no write) and
//! are written by the daemon's 2 s tick, at lock and at shutdown, each
//! sealed to the vault key with its number bound in and chained to the
//! one before by a MAC. The chain's ends are kept in `vault_meta`
//! (`audit_state`) under a MAC too, so an entry deleted, changed, added or
//! cut off the end is found and reported.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::warn;
use vault_protocol::ErrorCode;
use vault_protocol::message::{AuditEntry, AuditProcess, LastUse};
use vault_protocol::timefmt::Timestamp;

use super::{Engine, Result, err, store_err};
use crate::crypto::VaultKey;
use crate::peer::Peer;
use crate::store::AuditRow;

const STATE: &str = "audit_state";

/// A hand-out not written yet.
#[derive(Debug)]
pub struct Pending {
    at: Timestamp,
    record_id: String,
    op: &'static str,
    peer: Arc<Peer>,
}

/// What an entry's sealed body holds.
#[derive(Serialize, Deserialize)]
pub(super) struct Body {
    pub(super) op: String,
    pub(super) uid: u32,
    pub(super) client: AuditProcess,
    pub(super) parents: Vec<AuditProcess>,
}

/// The chain's ends: entries after `base` (pruned up to it) through
/// `head`, with their MACs; `tag` vouches for all four.
#[derive(Serialize, Deserialize, Default, Clone)]
struct State {
    base_seq: u64,
    base_mac: String,
    head_seq: u64,
    head_mac: String,
    tag: String,
}

/// The chain MAC of one row: over the row before's MAC, its number, time,
/// record id and sealed body. Written by the flush, checked by the reader.
fn entry_mac(
    key: &VaultKey,
    prev: &[u8],
    seq: u64,
    at: i64,
    record_id: &str,
    sealed: &[u8],
) -> [u8; 32] {
    key.audit_mac(&[
        b"entry",
        prev,
        &seq.to_be_bytes(),
        &at.to_be_bytes(),
        record_id.as_bytes(),
        sealed,
    ])
}

/// A row's entry, opened; `None` when it does not open or parse (changed).
pub(super) fn open_body(key: &VaultKey, row: &AuditRow) -> Option<Body> {
    let plain = key.open_local(&label(row.seq), &row.body)?;
    serde_json::from_slice(&plain).ok()
}

fn label(seq: u64) -> Vec<u8> {
    let mut l = b"vault audit entry ".to_vec();
    l.extend_from_slice(&seq.to_be_bytes());
    l
}

impl Engine {
    /// Notes that `names` were handed out by `op` to `peer` (nothing when
    /// the audit log is off; names not in the index are skipped).
    pub fn audit(&mut self, names: &[String], op: &'static str, peer: &Arc<Peer>) {
        if !self.config.audit {
            return;
        }
        let Ok(sess) = self.session() else {
            return;
        };
        let at = Timestamp::now();
        let ids: Vec<String> = names
            .iter()
            .filter_map(|n| sess.index.get(n).map(|e| e.id.clone()))
            .collect();
        for record_id in ids {
            self.audit_pending.push(Pending {
                at,
                record_id,
                op,
                peer: Arc::clone(peer),
            });
        }
    }

    fn state_tag(&self, s: &State) -> Result<String> {
        let key = &self.session()?.key;
        let tag = key.audit_mac(&[
            b"state",
            &s.base_seq.to_be_bytes(),
            s.base_mac.as_bytes(),
            &s.head_seq.to_be_bytes(),
            s.head_mac.as_bytes(),
        ]);
        Ok(hex::encode(tag))
    }

    fn audit_state(&self) -> Result<Option<State>> {
        let raw = self.store()?.meta(STATE).map_err(store_err)?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    fn write_state(&self, mut s: State) -> Result<String> {
        s.tag = self.state_tag(&s)?;
        serde_json::to_string(&s).map_err(|e| err(ErrorCode::Internal, e.to_string()))
    }

    /// Writes the waiting entries, in one transaction; then drops what is
    /// older than `[audit] keep`. Needs the key: called while unlocked.
    pub fn flush_audit(&mut self) -> Result<()> {
        if self.audit_pending.is_empty() || self.session().is_err() {
            return self.prune_audit();
        }
        let pending = std::mem::take(&mut self.audit_pending);
        let mut state = self.audit_state()?.unwrap_or_default();
        let mut prev = hex::decode(&state.head_mac).unwrap_or_default();
        let mut rows = Vec::with_capacity(pending.len());
        {
            let key = &self.session()?.key;
            for p in pending {
                let seq = state.head_seq + 1;
                let body = Body {
                    op: p.op.to_owned(),
                    uid: p.peer.uid,
                    client: p.peer.client.clone(),
                    parents: p.peer.parents.clone(),
                };
                let plain = serde_json::to_vec(&body)
                    .map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
                let sealed = key.seal_local(&label(seq), &plain);
                let mac = entry_mac(key, &prev, seq, p.at.unix(), &p.record_id, &sealed);
                prev = mac.to_vec();
                state.head_seq = seq;
                rows.push(AuditRow {
                    seq,
                    at: p.at.unix(),
                    record_id: p.record_id,
                    body: sealed,
                    mac: mac.to_vec(),
                });
            }
        }
        state.head_mac = hex::encode(&prev);
        let head = state.head_seq;
        let text = self.write_state(state)?;
        self.store_mut()?
            .append_audit(&rows, &text)
            .map_err(store_err)?;
        if !self.audit_sync_on() {
            let first = rows.first().map_or(head, |r| r.seq);
            self.audit_not_shared(first, head)?;
        }
        self.prune_audit()
    }

    /// Drops entries older than `[audit] keep`, moving the chain's base
    /// to the last one dropped.
    fn prune_audit(&mut self) -> Result<()> {
        if self.store().is_err() {
            return Ok(());
        }
        let cutoff = Timestamp::now().unix() - self.config.audit_keep.as_secs() as i64;
        self.prune_audit_segments(cutoff)?;
        let store = self.store()?;
        match store.audit_oldest().map_err(store_err)? {
            Some((_, at)) if at < cutoff && self.session().is_ok() => {}
            _ => return Ok(()),
        }
        let rows = store.audit_rows().map_err(store_err)?;
        let Some(last_old) = rows.iter().take_while(|r| r.at < cutoff).last() else {
            return Ok(());
        };
        let mut state = self.audit_state()?.unwrap_or_default();
        state.base_seq = last_old.seq;
        state.base_mac = hex::encode(&last_old.mac);
        let through = last_old.seq;
        let text = self.write_state(state)?;
        self.store_mut()?
            .prune_audit(through, &text)
            .map_err(store_err)?;
        Ok(())
    }

    /// The record id of `name` (`None` for every record); not found when
    /// there is no such record.
    pub(super) fn audited_id(&self, name: Option<&str>) -> Result<Option<String>> {
        name.map(|n| {
            self.session()?
                .index
                .get(n)
                .map(|e| e.id.clone())
                .ok_or_else(|| super::not_found(n))
        })
        .transpose()
    }

    /// A page of the log's entries (of `name`, from `since`, after entry
    /// `after`), oldest first; what the check of the whole chain found
    /// wrong (first page only); and where the next page starts.
    pub fn audit_log(
        &mut self,
        name: Option<&str>,
        since: Option<Timestamp>,
        after: Option<u64>,
    ) -> Result<(Vec<AuditEntry>, Vec<String>, Option<u64>)> {
        self.flush_audit()?;
        let only = self.audited_id(name)?;
        let names: std::collections::HashMap<String, String> = self
            .session()?
            .index
            .iter()
            .map(|(n, e)| (e.id.clone(), n.clone()))
            .collect();
        let wanted = |row: &AuditRow| {
            only.as_ref().is_none_or(|id| *id == row.record_id)
                && since.is_none_or(|t| row.at >= t.unix())
        };
        if let Some(after) = after {
            let rows = self.store()?.audit_rows_after(after).map_err(store_err)?;
            let key = &self.session()?.key;
            let mut page = Page::default();
            for row in rows.iter().filter(|r| wanted(r)) {
                let body = open_body(key, row);
                if let Some(b) = body
                    && !page.push(entry(row, b, &names))
                {
                    break;
                }
            }
            return Ok((page.entries, Vec::new(), page.next));
        }
        let rows = self.store()?.audit_rows().map_err(store_err)?;
        let state = self.audit_state()?;
        let mut problems = Vec::new();
        let state = match state {
            Some(s) if self.state_tag(&s)? == s.tag => s,
            Some(_) => {
                problems.push(
                    "the audit log's state in vault.db was changed outside vaultd: no entry \
                     can be vouched for"
                        .to_owned(),
                );
                State::default()
            }
            None if rows.is_empty() => State::default(),
            None => {
                problems.push(
                    "the audit log's state is missing from vault.db: its entries cannot be \
                     vouched for"
                        .to_owned(),
                );
                State::default()
            }
        };
        let key = &self.session()?.key;
        let mut expected = state.base_seq + 1;
        let mut prev = hex::decode(&state.base_mac).unwrap_or_default();
        let mut page = Page::default();
        for row in &rows {
            let mut linked = true;
            if row.seq > expected {
                problems.push(missing(expected, row.seq - 1));
                linked = false;
            } else if row.seq < expected {
                problems.push(format!(
                    "entry {} is older than the log's start ({}): it was put back",
                    row.seq, expected
                ));
                linked = false;
            }
            let mac = entry_mac(key, &prev, row.seq, row.at, &row.record_id, &row.body);
            let body = open_body(key, row);
            if body.is_none() || (linked && mac[..] != row.mac[..]) {
                problems.push(format!(
                    "entry {} was changed outside vaultd (time {}, record id {})",
                    row.seq,
                    Timestamp(row.at),
                    row.record_id
                ));
            }
            prev = row.mac.clone();
            expected = row.seq + 1;
            // The whole log is checked; the page stops filling when full.
            if let (true, Some(b)) = (wanted(row) && page.next.is_none(), body) {
                page.push(entry(row, b, &names));
            }
        }
        if expected <= state.head_seq {
            problems.push(format!(
                "{}: the log was cut off",
                missing(expected, state.head_seq)
            ));
        } else if expected - 1 > state.head_seq {
            problems.push(format!(
                "entries {}..={} were added outside vaultd",
                state.head_seq + 1,
                expected - 1
            ));
        } else if state.head_seq > 0 && hex::encode(&prev) != state.head_mac {
            problems.push(format!(
                "entry {} was changed outside vaultd",
                state.head_seq
            ));
        }
        problems.dedup();
        if !problems.is_empty() {
            warn!(problems = problems.len(), "the audit log is not whole");
        }
        Ok((page.entries, problems, page.next))
    }
}

impl Engine {
    /// The `vault exec` processes (entries `resolve`) that were handed
    /// `name`'s value and still run: the same pid with the same executable
    /// and command line in `/proc` now. They hold the value they were
    /// given until restarted (`vault rotate` says so); only hand-outs at
    /// or before `before` count. With `served_fresh` (an aws key, which a
    /// `vault exec --server` serves afresh to each request of its child)
    /// such a process is not counted. Empty when the log is off or
    /// unreadable.
    pub fn exec_holders(
        &mut self,
        name: &str,
        before: Timestamp,
        served_fresh: bool,
    ) -> Vec<AuditProcess> {
        if let Err(e) = self.flush_audit() {
            warn!(error = %e.message, "cannot write the audit log");
        }
        let (Ok(sess), Ok(store)) = (self.session(), self.store()) else {
            return Vec::new();
        };
        let Some(id) = sess.index.get(name).map(|e| e.id.clone()) else {
            return Vec::new();
        };
        let rows = store.audit_rows_of(&id).unwrap_or_default();
        let mut seen = std::collections::BTreeMap::new();
        for row in rows.iter().filter(|r| r.at <= before.unix()) {
            let Some(body) = open_body(&sess.key, row) else {
                continue;
            };
            if body.op == "resolve"
                && body.client.pid != 0
                && body.client.pid != std::process::id()
                && !(served_fresh && serves_fresh(&body.client.cmdline))
            {
                seen.insert(body.client.pid, body.client);
            }
        }
        seen.into_values()
            .filter(|p| {
                let now = crate::peer::process(p.pid);
                !now.cmdline.is_empty() && now.cmdline == p.cmdline && now.exe == p.exe
            })
            .collect()
    }

    /// Each record's last hand-out, by record id, from the audit log
    /// (written entries only: the caller flushes first).
    pub fn last_uses(&self) -> std::collections::HashMap<String, LastUse> {
        let (Ok(sess), Ok(store)) = (self.session(), self.store()) else {
            return Default::default();
        };
        store
            .audit_latest()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|row| {
                let body = open_body(&sess.key, &row)?;
                let by = match body.client.cmdline.as_str() {
                    "" => body
                        .client
                        .exe
                        .unwrap_or_else(|| format!("pid {}", body.client.pid)),
                    c => c.to_owned(),
                };
                let last = LastUse {
                    at: Timestamp(row.at),
                    op: body.op,
                    by,
                };
                Some((row.record_id, last))
            })
            .collect()
    }
}

/// Whether `cmdline` is a `vault exec --server`: its child asks for the
/// aws credential afresh (and gets a rotated key) instead of holding one.
fn serves_fresh(cmdline: &str) -> bool {
    let words: Vec<&str> = cmdline
        .split_whitespace()
        .skip(1)
        .take_while(|w| *w != "--")
        .collect();
    words.contains(&"exec") && words.contains(&"--server")
}

/// Most bytes of entries in one answer (a frame is at most 1 MiB).
const PAGE_BYTES: usize = 768 * 1024;

/// A page of entries being filled.
#[derive(Default)]
pub(super) struct Page {
    pub(super) entries: Vec<AuditEntry>,
    bytes: usize,
    /// Set once full: the last entry that fit.
    pub(super) next: Option<u64>,
}

impl Page {
    /// Adds `e` if it fits; `false` (and `next` set) once full.
    pub(super) fn push(&mut self, e: AuditEntry) -> bool {
        let size = 256
            + e.client.cmdline.len()
            + e.parents
                .iter()
                .map(|p| p.cmdline.len() + 128)
                .sum::<usize>();
        if self.bytes + size > PAGE_BYTES && !self.entries.is_empty() {
            self.next = self.entries.last().map(|l| l.seq);
            return false;
        }
        self.bytes += size;
        self.entries.push(e);
        true
    }
}

fn entry(row: &AuditRow, b: Body, names: &std::collections::HashMap<String, String>) -> AuditEntry {
    AuditEntry {
        seq: row.seq,
        at: Timestamp(row.at),
        name: names.get(&row.record_id).cloned(),
        op: b.op,
        uid: b.uid,
        client: b.client,
        parents: b.parents,
        device: None,
    }
}

fn missing(from: u64, to: u64) -> String {
    if from == to {
        format!("entry {from} is missing")
    } else {
        format!("entries {from}..={to} are missing")
    }
}

#[cfg(test)]
mod tests {
    use super::serves_fresh;

    #[test]
    fn a_vault_exec_server_is_told_apart_from_its_child() {
        assert!(serves_fresh("/usr/bin/vault exec --server -c dev -- make"));
        assert!(serves_fresh(
            "vault --json exec -c dev --server -- aws s3 ls"
        ));
        assert!(!serves_fresh("/usr/bin/vault exec -c dev -- make"));
        // The child's own arguments are not vault's.
        assert!(!serves_fresh("/usr/bin/vault exec -c dev -- tool --server"));
        assert!(!serves_fresh("/usr/bin/vault-server --server"));
        assert!(!serves_fresh(""));
    }
}
