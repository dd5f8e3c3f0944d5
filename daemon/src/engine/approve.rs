//! Approvals (docs/sync.md, `vault approve`): a field that makes this machine
//! run a program, write a file where it says or talk to an endpoint it
//! names ([`gated_fields`]) is used only with its exact value approved on
//! this device. What the user typed here is approved as it is written; what
//! arrived by sync from another device waits for `vault approve NAME`.
//! Approvals are local state (`approvals` table) and never synced.

use std::collections::BTreeMap;

use tracing::info;
use vault_protocol::credential::{check_gated_fields, gated_fields, gated_meaning};
use vault_protocol::message::{ApprovalInfo, GatedField};
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{ErrorCode, SecretValue};

use super::{Engine, Result, decrypt_body, err, store_err};
use crate::record::RecordBody;
use crate::store::RecordRow;

/// Set once a vault has approvals: made with them, or seeded at the first
/// unlock after the upgrade ([`Engine::seed_approvals`]).
pub const APPROVAL_MARK: &str = "approvals";

/// The mark's value since the fields only `vault check` uses became gated
/// (1: before). A vault marked 1 is seeded once more: values this device
/// first wrote are approved, values from other devices wait.
pub const APPROVALS_V: &str = "2";

/// Whether records of `kind` may hold a field only `vault check` uses.
fn has_check_gated_kind(kind: vault_protocol::CredentialType) -> bool {
    use vault_protocol::CredentialType::{Data, Registry, Token};
    matches!(kind, Token | Registry | Data)
}

/// The gated fields of `body` that hold up a hand-out, with their values.
fn exec_gated(body: &RecordBody) -> Vec<(&str, &str)> {
    gated_fields(body.kind, &body.fields, SecretValue::expose_secret)
        .into_iter()
        .filter_map(|f| body.fields.get(f).map(|v| (f, v.expose_secret())))
        .collect()
}

/// Every gated field of `body`: those of [`exec_gated`] and those only
/// `vault check` uses ([`check_gated_fields`]). Approved, listed and
/// seeded alike.
fn gated(body: &RecordBody) -> Vec<(&str, &str)> {
    let mut all = exec_gated(body);
    all.extend(
        check_gated_fields(body.kind, &body.fields)
            .into_iter()
            .filter_map(|f| body.fields.get(f).map(|v| (f, v.expose_secret()))),
    );
    all
}

/// Whether `body` has a field that holds up a hand-out (kept in the
/// index, so records without one never cost a decryption at a hand-out).
pub fn has_gated(body: &RecordBody) -> bool {
    !exec_gated(body).is_empty()
}

impl Engine {
    /// The gated fields of record `id` (as `body`) not approved here.
    fn unapproved<'b>(&self, id: &str, body: &'b RecordBody) -> Result<Vec<(&'b str, &'b str)>> {
        self.unapproved_of(id, gated(body))
    }

    /// Of `fields` of record `id`, those not approved here.
    fn unapproved_of<'b>(
        &self,
        id: &str,
        fields: Vec<(&'b str, &'b str)>,
    ) -> Result<Vec<(&'b str, &'b str)>> {
        let key = &self.session()?.key;
        let store = self.store()?;
        let mut out = Vec::new();
        for (field, value) in fields {
            let digest = key.approval_digest(id, field, value);
            if !store.approved(id, field, &digest).map_err(store_err)? {
                out.push((field, value));
            }
        }
        Ok(out)
    }

    /// Refuses (exit 1) when one of `names` has a gated field not approved
    /// on this device. Called before anything hands out, refreshes, runs or
    /// writes a record. Names that do not exist are left to the request.
    pub fn check_approved(&self, names: &[String]) -> Result<()> {
        for name in names {
            let gated = self.session()?.index.get(name).is_some_and(|e| e.gated);
            if !gated {
                continue;
            }
            let (row, body) = self.load(name)?;
            let waiting = self.unapproved_of(&row.id, exec_gated(&body))?;
            if !waiting.is_empty() {
                return Err(not_approved(name, &waiting));
            }
        }
        Ok(())
    }

    /// The reason a refresh of `row` must not run, if it must not.
    pub(super) fn refresh_blocked(&self, row: &RecordRow, body: &RecordBody) -> Option<String> {
        match self.unapproved_of(&row.id, exec_gated(body)) {
            Ok(w) if w.is_empty() => None,
            Ok(w) => Some(not_approved(&body.name, &w).message),
            Err(e) => Some(e.message),
        }
    }

    /// The reason `vault check` must not use `row`: a gated field it
    /// would run or send to, not approved here.
    pub(super) fn check_blocked(&self, row: &RecordRow, body: &RecordBody) -> Option<String> {
        match self.unapproved(&row.id, body) {
            Ok(w) if w.is_empty() => None,
            Ok(w) => Some(not_approved(&body.name, &w).message),
            Err(e) => Some(e.message),
        }
    }

    /// What waits for approval: of `names`, or of every record.
    pub fn approvals(&self, names: &[String]) -> Result<Vec<ApprovalInfo>> {
        let sess = self.session()?;
        let wanted: Vec<String> = if names.is_empty() {
            sess.index
                .iter()
                .filter(|(_, e)| e.gated || has_check_gated_kind(e.kind))
                .map(|(n, _)| n.clone())
                .collect()
        } else {
            for n in names {
                if !sess.index.contains_key(n) {
                    return Err(super::not_found(n));
                }
            }
            names.to_vec()
        };
        let mut out = Vec::new();
        for name in wanted {
            let (row, body) = self.load(&name)?;
            let waiting = self.unapproved(&row.id, &body)?;
            if waiting.is_empty() {
                continue;
            }
            out.push(info(&name, &row, &body, &waiting));
        }
        Ok(out)
    }

    /// Approves the gated fields of `name` as they are at `revision`.
    pub fn approve(
        &mut self,
        name: &str,
        revision: u64,
        now: Timestamp,
    ) -> Result<Vec<ApprovalInfo>> {
        let (row, body) = self.load(name)?;
        if row.revision != revision {
            return Err(err(
                ErrorCode::Conflict,
                format!(
                    "'{name}' changed since it was shown (revision {} now, {revision} shown): \
                     nothing was approved; run 'vault approve {name}' again",
                    row.revision
                ),
            ));
        }
        let waiting = self.unapproved(&row.id, &body)?;
        if waiting.is_empty() {
            return Ok(Vec::new());
        }
        let shown = info(name, &row, &body, &waiting);
        self.approve_fields(&row.id, &body, |_| true, now)?;
        info!(record = %row.id, revision, fields = waiting.len(), "approved");
        Ok(vec![shown])
    }

    /// Approves the gated fields of `body` that `typed` selects: values the
    /// user gave on this device (add, set, import) or that an approved
    /// refresh produced.
    pub(super) fn approve_fields(
        &mut self,
        id: &str,
        body: &RecordBody,
        typed: impl Fn(&str) -> bool,
        now: Timestamp,
    ) -> Result<()> {
        let items = self.approval_items(id, body, typed)?;
        self.record_approvals(&items, now)
    }

    /// The approvals of the gated fields of `body` that `typed` selects,
    /// to record with [`Engine::record_approvals`] once the write is done.
    pub(super) fn approval_items(
        &self,
        id: &str,
        body: &RecordBody,
        typed: impl Fn(&str) -> bool,
    ) -> Result<Vec<(String, String, [u8; 32])>> {
        let key = &self.session()?.key;
        Ok(gated(body)
            .into_iter()
            .filter(|(f, _)| typed(f))
            .map(|(f, v)| (id.to_owned(), f.to_owned(), key.approval_digest(id, f, v)))
            .collect())
    }

    /// Stores approvals made by [`Engine::approval_items`].
    pub(super) fn record_approvals(
        &mut self,
        items: &[(String, String, [u8; 32])],
        now: Timestamp,
    ) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        self.store_mut()?
            .approve(items, now.unix())
            .map_err(store_err)
    }

    /// Once, at the first unlock after the upgrade that brought approvals:
    /// a gated value is approved when it first appeared in a revision this
    /// device wrote. What another device introduced waits for approval.
    pub(super) fn seed_approvals(&mut self, now: Timestamp) -> Result<()> {
        if self
            .store()?
            .meta(APPROVAL_MARK)
            .map_err(store_err)?
            .as_deref()
            == Some(APPROVALS_V)
        {
            return Ok(());
        }
        let gated_names: Vec<String> = self
            .session()?
            .index
            .iter()
            .filter(|(_, e)| e.gated || has_check_gated_kind(e.kind))
            .map(|(n, _)| n.clone())
            .collect();
        let mut items = Vec::new();
        for name in gated_names {
            let (row, head) = self.load(&name)?;
            let key = &self.session()?.key;
            let store = self.store()?;
            // Who first wrote each value: oldest revision first.
            let mut first: BTreeMap<(String, String), String> = BTreeMap::new();
            let mut revs = store.revisions(&row.id).map_err(store_err)?;
            revs.reverse();
            for rev in revs {
                let Some(ct) = store
                    .revision_body(&row.id, rev.revision)
                    .map_err(store_err)?
                else {
                    continue;
                };
                let old = RecordRow {
                    body: ct,
                    ..row.clone()
                };
                let Ok(body) = decrypt_body(key, &old) else {
                    continue;
                };
                for (f, v) in gated(&body) {
                    first
                        .entry((f.to_owned(), v.to_owned()))
                        .or_insert_with(|| rev.device.clone());
                }
            }
            for (f, v) in gated(&head) {
                let ours = first
                    .get(&(f.to_owned(), v.to_owned()))
                    .is_some_and(|d| *d == self.device);
                if ours {
                    items.push((
                        row.id.clone(),
                        f.to_owned(),
                        key.approval_digest(&row.id, f, v),
                    ));
                }
            }
        }
        let store = self.store_mut()?;
        store.approve(&items, now.unix()).map_err(store_err)?;
        store
            .set_meta(&[(APPROVAL_MARK, APPROVALS_V)])
            .map_err(store_err)?;
        info!(
            approved = items.len(),
            "approvals seeded from this device's own revisions"
        );
        Ok(())
    }
}

fn info(name: &str, row: &RecordRow, body: &RecordBody, waiting: &[(&str, &str)]) -> ApprovalInfo {
    ApprovalInfo {
        name: name.to_owned(),
        kind: body.kind,
        revision: row.revision,
        device: body.sync.as_ref().map(|s| s.device.clone()),
        fields: waiting
            .iter()
            .map(|(f, v)| GatedField {
                field: (*f).to_owned(),
                value: SecretValue::from(*v),
                meaning: gated_meaning(body.kind, f).to_owned(),
            })
            .collect(),
    }
}

fn not_approved(name: &str, waiting: &[(&str, &str)]) -> vault_protocol::WireError {
    let fields: Vec<&str> = waiting.iter().map(|(f, _)| *f).collect();
    err(
        ErrorCode::NotApproved,
        format!(
            "'{name}' has {} from another device, not approved on this one: see what it would \
             run or write, and approve it, with 'vault approve {name}'",
            fields.join(", ")
        ),
    )
}
