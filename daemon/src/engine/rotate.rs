//! The engine's side of rotation (`vault rotate`, docs/lifecycle.md;
//! `remote/rotator.rs` talks to IAM and STS): which keys and endpoints an
//! `aws` rotation uses, storing the new key (and putting the old one back
//! when it does not work), the unfinished rotations kept in `rotations`,
//! and a plain rotation of named fields. Nothing here logs a name or a
//! value.

use std::collections::BTreeMap;

/// IAM's one endpoint (signed for us-east-1), unless `config.toml`'s
/// `[rotate] iam_endpoint` names another.
pub const IAM_ENDPOINT: &str = "https://iam.amazonaws.com";

use serde::{Deserialize, Serialize};
use tracing::info;
use vault_protocol::credential::{REFRESH_COMMAND, SOURCE, validate_fields};
use vault_protocol::message::{EmitterInfo, PendingRotation, RecordSummary};
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{CredentialType, ErrorCode, SecretValue};

use super::refresh::endpoint_for;
use super::{Engine, Result, err, store_err};
use crate::store::RotationRow;

/// What an `aws` key rotation works with: the keys it starts from and
/// where to send them, all read from this machine's record and
/// `config.toml` (a synced endpoint is used only once approved here).
pub struct AwsPlan {
    /// The record's id.
    pub id: String,
    /// The revision the rotation starts from.
    pub revision: u64,
    /// The key the record holds.
    pub access_key_id: String,
    /// Its secret.
    pub secret: SecretValue,
    /// Where `GetCallerIdentity` goes.
    pub sts_endpoint: String,
    /// STS's signing region.
    pub region: String,
    /// Where the IAM calls go.
    pub iam_endpoint: String,
    /// The record's unfinished rotation, if any.
    pub pending: Option<Pending>,
}

impl std::fmt::Debug for AwsPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsPlan")
            .field("id", &self.id)
            .field("access_key_id", &self.access_key_id)
            .field("iam_endpoint", &self.iam_endpoint)
            .finish_non_exhaustive()
    }
}

/// Where an unfinished rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The old key may still be active: deactivate it, then delete it.
    Deactivate,
    /// The old key is inactive: delete it once due.
    Delete,
    /// The record was put back to the old key, which is inactive: turn
    /// it on again (an earlier try failed).
    Reactivate,
    /// Over, ended by vaultd in the background with something left for
    /// the user (an unused new key at IAM), said in the row's `error`
    /// until `vault rotate NAME --finish` or the next rotation clears it.
    Ended,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Deactivate => "deactivate",
            Stage::Delete => "delete",
            Stage::Reactivate => "reactivate",
            Stage::Ended => "ended",
        }
    }
}

/// An unfinished rotation of one record.
#[derive(Debug, Clone)]
pub struct Pending {
    /// What is left.
    pub stage: Stage,
    /// When the next step may run.
    pub due_at: Timestamp,
    /// The old and new key ids.
    pub keys: PendingKeys,
}

/// The sealed part of a [`RotationRow`].
#[derive(Debug, Serialize, Deserialize)]
pub struct PendingKeys {
    /// The key to take away.
    pub old_key: String,
    /// The key that replaced it.
    pub new_key: String,
    /// The IAM user both belong to, as STS named it (rows written before
    /// it was kept have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_arn: Option<String>,
    /// The new key's secret: once the old key is inactive, the one key
    /// that can turn it back on when the record is put back to it (`vault
    /// restore`). Sealed like the record; `Debug` never shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_secret: Option<SecretValue>,
    /// Why the last try failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Clone for PendingKeys {
    fn clone(&self) -> Self {
        PendingKeys {
            old_key: self.old_key.clone(),
            new_key: self.new_key.clone(),
            user_arn: self.user_arn.clone(),
            new_secret: self.new_secret.as_ref().map(SecretValue::duplicate),
            error: self.error.clone(),
        }
    }
}

fn usage(msg: String) -> vault_protocol::WireError {
    err(ErrorCode::Usage, msg)
}

impl Engine {
    /// The keys, endpoints and unfinished rotation of the `aws` record
    /// `name`, or why its keys cannot be rotated here.
    pub fn aws_rotation(&self, name: &str) -> Result<AwsPlan> {
        let (row, body) = self.load(name)?;
        if body.kind != CredentialType::Aws {
            return Err(usage(format!(
                "'{name}' is a {} credential: give its new value, as in 'vault rotate {name} \
                 FIELD=-' (read from stdin)",
                body.kind
            )));
        }
        let field = |f: &str| {
            body.fields
                .get(f)
                .filter(|v| !v.is_empty())
                .map(|v| v.expose_secret().to_owned())
        };
        if let Some(source) = field(SOURCE) {
            return Err(usage(format!(
                "'{name}' is minted from '{source}': rotate that one ('vault rotate {source}'); \
                 {name} follows it at its next refresh"
            )));
        }
        if field(REFRESH_COMMAND).is_some() {
            return Err(usage(format!(
                "'{name}' gets its keys from its refresh_command: rotate them where that \
                 command gets them"
            )));
        }
        if field("session_token").is_some() {
            return Err(usage(format!(
                "'{name}' holds temporary keys (a session token), which IAM cannot rotate: \
                 they expire by themselves"
            )));
        }
        let (Some(access_key_id), Some(secret)) = (
            field("access_key_id"),
            body.fields
                .get("secret_access_key")
                .filter(|v| !v.is_empty()),
        ) else {
            return Err(err(
                ErrorCode::Failed,
                format!("'{name}' has no keys to rotate: see 'vault get {name}'"),
            ));
        };
        if let Some(why) = self.check_blocked(&row, &body) {
            return Err(err(ErrorCode::NotApproved, why));
        }
        let region = field("region");
        let sts_endpoint = endpoint_for(
            field("sts_endpoint").as_deref(),
            self.config().sts_endpoint.as_deref(),
            region.as_deref(),
        )
        .map_err(|e| err(ErrorCode::Failed, e))?;
        let iam_endpoint = self
            .config()
            .iam_endpoint
            .clone()
            .unwrap_or_else(|| IAM_ENDPOINT.to_owned());
        let pending = self.pending_rotation(&row.id)?;
        Ok(AwsPlan {
            id: row.id,
            revision: row.revision,
            access_key_id,
            secret: SecretValue::from(secret.expose_secret()),
            sts_endpoint,
            region: region.unwrap_or_else(|| "us-east-1".into()),
            iam_endpoint,
            pending,
        })
    }

    fn pending_rotation(&self, record_id: &str) -> Result<Option<Pending>> {
        let Some(row) = self.store()?.rotation(record_id).map_err(store_err)? else {
            return Ok(None);
        };
        let keys: PendingKeys = self
            .unseal(&row.body)
            .map(zeroize::Zeroizing::new)
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or_else(|| {
                err(
                    ErrorCode::Failed,
                    format!("the unfinished rotation of record {record_id} cannot be read"),
                )
            })?;
        let stage = [Stage::Delete, Stage::Reactivate, Stage::Ended]
            .into_iter()
            .find(|s| s.as_str() == row.stage)
            .unwrap_or(Stage::Deactivate);
        Ok(Some(Pending {
            stage,
            due_at: Timestamp(row.due_at),
            keys,
        }))
    }

    /// Keeps (or replaces) the unfinished rotation of record `id`.
    pub fn save_rotation(&mut self, id: &str, pending: &Pending) -> Result<()> {
        let text = zeroize::Zeroizing::new(
            serde_json::to_string(&pending.keys)
                .map_err(|e| err(ErrorCode::Internal, e.to_string()))?,
        );
        let row = RotationRow {
            record_id: id.to_owned(),
            stage: pending.stage.as_str().to_owned(),
            due_at: pending.due_at.unix(),
            body: self.seal(&text)?,
        };
        self.store_mut()?.put_rotation(&row).map_err(store_err)
    }

    /// Forgets the unfinished rotation of record `id`.
    pub fn drop_rotation(&mut self, id: &str) -> Result<()> {
        self.store_mut()?.delete_rotation(id).map_err(store_err)
    }

    /// Stores the new key as the next revision of the record of `plan`
    /// (refused when the record changed since the plan was made), and the
    /// rotation as unfinished until the old key is gone.
    pub fn store_rotated(
        &mut self,
        plan: &AwsPlan,
        name: &str,
        keys: PendingKeys,
        now: Timestamp,
    ) -> Result<RecordSummary> {
        let (new_id, Some(new_secret)) = (keys.new_key.as_str(), keys.new_secret.as_ref()) else {
            return Err(err(ErrorCode::Internal, "a rotation without its new key"));
        };
        let (row, mut body) = self.load(name)?;
        if row.id != plan.id || row.revision != plan.revision {
            return Err(err(
                ErrorCode::Conflict,
                format!("'{name}' changed while it was being rotated"),
            ));
        }
        body.fields
            .insert("access_key_id".into(), SecretValue::from(new_id));
        body.fields
            .insert("secret_access_key".into(), new_secret.duplicate());
        validate_fields(body.kind, &body.fields).map_err(|e| err(ErrorCode::Failed, e))?;
        let id = row.id.clone();
        let summary = self.commit(row, body, name, "rotate", now)?;
        // The new key is stored: from here on this never fails, or the
        // caller would delete a key the record holds. Without the row,
        // `--finish` has nothing to finish, and the old key stays active
        // (the report names it).
        let pending = Pending {
            stage: Stage::Deactivate,
            due_at: now,
            keys,
        };
        if let Err(e) = self.save_rotation(&id, &pending) {
            tracing::warn!(record = %id, error = %e.message, "cannot keep a rotation's state");
        }
        info!(record = %id, revision = summary.revision, "rotated: new key stored");
        Ok(summary)
    }

    /// Puts the old key of `plan` back (a new revision) while the record
    /// still holds `new_id`, and forgets the rotation.
    pub fn undo_rotated(
        &mut self,
        plan: &AwsPlan,
        name: &str,
        new_id: &str,
        now: Timestamp,
    ) -> Result<RecordSummary> {
        let (row, mut body) = self.load(name)?;
        let holds_new = body
            .fields
            .get("access_key_id")
            .is_some_and(|v| v.expose_secret() == new_id);
        if row.id != plan.id || !holds_new {
            return Err(err(
                ErrorCode::Conflict,
                format!("'{name}' changed while it was being rotated: nothing was put back"),
            ));
        }
        body.fields.insert(
            "access_key_id".into(),
            SecretValue::from(plan.access_key_id.as_str()),
        );
        body.fields.insert(
            "secret_access_key".into(),
            SecretValue::from(plan.secret.expose_secret()),
        );
        let id = row.id.clone();
        let summary = self.commit(row, body, name, "rotate", now)?;
        self.drop_rotation(&id)?;
        info!(record = %id, revision = summary.revision, "rotation undone: old key stored again");
        Ok(summary)
    }

    /// The records (id, name) whose old key is due for deletion or to be
    /// turned on again, or that hold the old key again (a `vault
    /// restore` during the grace, or after a deactivation whose answer
    /// was lost: it is turned back on at once).
    pub fn due_rotations(&self, now: Timestamp) -> Vec<(String, String)> {
        let (Ok(sess), Ok(store)) = (self.session(), self.store()) else {
            return Vec::new();
        };
        let rows = store.rotations().unwrap_or_default();
        let names = self.names_by_id();
        let mut due = Vec::new();
        for r in rows {
            if r.stage == Stage::Ended.as_str() {
                continue;
            }
            let Some(n) = names
                .get(&r.record_id)
                .filter(|n| sess.index.contains_key(*n))
            else {
                continue;
            };
            let restored = || {
                let old = self
                    .pending_rotation(&r.record_id)
                    .ok()
                    .flatten()?
                    .keys
                    .old_key;
                Some(self.aws_key_of(&r.record_id)? == old)
            };
            // A `deactivate` row waits for `--finish` unless the record
            // went back to the old key, which may have been switched off.
            let timed = r.stage != Stage::Deactivate.as_str() && r.due_at <= now.unix();
            let may_restore = r.stage != Stage::Reactivate.as_str();
            if timed || (may_restore && restored() == Some(true)) {
                due.push((r.record_id.clone(), n.clone()));
            }
        }
        due
    }

    /// The access key id the live record `id` holds now.
    pub fn aws_key_of(&self, id: &str) -> Option<String> {
        let name = self.name_of(id)?;
        let (row, body) = self.load(&name).ok()?;
        if row.id != id {
            return None;
        }
        body.fields
            .get("access_key_id")
            .map(|v| v.expose_secret().to_owned())
    }

    /// The other live `aws` records that hold access key `key` (a copy:
    /// switching the key off would break them).
    pub fn copies_of(&self, id: &str, key: &str) -> Vec<String> {
        let Ok(sess) = self.session() else {
            return Vec::new();
        };
        sess.index
            .iter()
            .filter(|(_, e)| e.kind == CredentialType::Aws && e.id != id)
            .filter_map(|(n, _)| {
                let (_, body) = self.load(n).ok()?;
                let held = body.fields.get("access_key_id")?;
                (held.expose_secret() == key).then(|| n.clone())
            })
            .collect()
    }

    /// `vault rotate NAME FIELD=-`: replaces the values of fields the
    /// record has (a new revision, which rewrites every emitted file and
    /// is published where the record is).
    pub fn rotate_fields(
        &mut self,
        name: &str,
        fields: BTreeMap<String, SecretValue>,
        now: Timestamp,
    ) -> Result<RecordSummary> {
        let (row, mut body) = self.load(name)?;
        for (f, v) in &fields {
            if !body.fields.contains_key(f) {
                return Err(usage(format!(
                    "'{name}' has no field '{f}': rotate replaces a value; 'vault set {name} \
                     {f}=-' adds one"
                )));
            }
            if v.is_empty() {
                return Err(usage(format!("the new value of '{f}' is empty")));
            }
        }
        let typed: Vec<String> = fields.keys().cloned().collect();
        body.fields.extend(fields);
        validate_fields(body.kind, &body.fields).map_err(|e| err(ErrorCode::Usage, e))?;
        // The values given here are the user's own, as with `vault set`.
        let approved = self.approval_items(&row.id, &body, |f| typed.iter().any(|t| t == f))?;
        let summary = self.commit(row, body, name, "rotate", now)?;
        self.record_approvals(&approved, now)?;
        Ok(summary)
    }

    /// Moves the next try of `name`'s unfinished rotation `by` later (a
    /// background try that failed).
    pub fn delay_rotation(&mut self, id: &str, by: std::time::Duration, now: Timestamp) {
        if let Ok(Some(mut p)) = self.pending_rotation(id) {
            p.due_at = now.plus(by);
            if let Err(e) = self.save_rotation(id, &p) {
                tracing::warn!(record = %id, error = %e.message, "cannot keep a rotation's state");
            }
        }
    }

    /// Every unfinished rotation of a live record, for `vault status` and
    /// `vault doctor` (empty while locked).
    pub fn pending_rotations(&self) -> Vec<PendingRotation> {
        let (Ok(_), Ok(store)) = (self.session(), self.store()) else {
            return Vec::new();
        };
        let names = self.names_by_id();
        let mut out: Vec<PendingRotation> = store
            .rotations()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| {
                let name = names.get(&r.record_id)?.clone();
                let p = self.pending_rotation(&r.record_id).ok().flatten()?;
                // What the record holds now: the new key, or the old one
                // again after a rotation put back or ended.
                let held = self.load(&name).ok().and_then(|(_, body)| {
                    Some(body.fields.get("access_key_id")?.expose_secret().to_owned())
                });
                Some(PendingRotation {
                    name,
                    live_key: held.unwrap_or(p.keys.new_key),
                    old_key: p.keys.old_key,
                    stage: r.stage,
                    due_at: p.due_at,
                    error: p.keys.error,
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The emitted files of `name`, as they stand now.
    pub fn files_of(&self, name: &str, now: Timestamp) -> Vec<EmitterInfo> {
        self.emit_list(now)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.name.as_deref() == Some(name))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use vault_protocol::message::NewRecord;
    use vault_protocol::paths::VaultPaths;

    fn aws(name: &str, id: &str, secret: &str) -> NewRecord {
        let mut fields = BTreeMap::new();
        fields.insert("access_key_id".to_string(), SecretValue::from(id));
        fields.insert("secret_access_key".to_string(), SecretValue::from(secret));
        NewRecord {
            name: name.into(),
            kind: CredentialType::Aws,
            fields,
            description: None,
            tags: vec![],
            expires_at: None,
        }
    }

    #[test]
    fn a_stored_key_is_unfinished_until_dropped_and_an_undo_puts_the_old_one_back() {
        let tmp = tempfile::tempdir().unwrap();
        let mut e = Engine::open(VaultPaths::under_home(tmp.path()), Config::default()).unwrap();
        let now = Timestamp(1_000_000);
        e.init(&SecretValue::from("pw"), now).unwrap();
        e.add(vec![aws("dev", "AKIAOLDOLDOLDOLD", "old-secret")], now)
            .unwrap();
        let plan = e.aws_rotation("dev").unwrap();
        assert!(plan.pending.is_none());
        assert_eq!(plan.iam_endpoint, IAM_ENDPOINT);
        assert_eq!(plan.sts_endpoint, super::super::refresh::GLOBAL_ENDPOINT);
        assert!(!format!("{plan:?}").contains("old-secret"));

        let keys = |old: &str, new: &str| PendingKeys {
            old_key: old.into(),
            new_key: new.into(),
            user_arn: Some("arn:aws:iam::123456789012:user/dev".into()),
            new_secret: Some(SecretValue::from("new-secret")),
            error: None,
        };
        let store_new = |e: &mut Engine, plan: &AwsPlan| {
            e.store_rotated(
                plan,
                "dev",
                keys(&plan.access_key_id, "AKIANEWNEWNEWNEW"),
                now,
            )
        };
        let stored = store_new(&mut e, &plan).unwrap();
        assert_eq!(stored.revision, plan.revision + 1);
        assert_eq!(
            e.get("dev", now).unwrap().fields["access_key_id"].expose_secret(),
            "AKIANEWNEWNEWNEW"
        );
        let again = e.aws_rotation("dev").unwrap();
        let pending = again.pending.as_ref().unwrap();
        assert_eq!(pending.stage, Stage::Deactivate);
        assert_eq!(pending.keys.old_key, "AKIAOLDOLDOLDOLD");
        // Kept sealed, read back whole; never in Debug.
        assert_eq!(
            pending.keys.new_secret.as_ref().unwrap().expose_secret(),
            "new-secret"
        );
        assert_eq!(
            pending.keys.user_arn.as_deref(),
            Some("arn:aws:iam::123456789012:user/dev")
        );
        assert!(!format!("{pending:?}").contains("new-secret"));
        assert_eq!(e.aws_key_of(&plan.id).unwrap(), "AKIANEWNEWNEWNEW");
        // The plan is stale now: a second store is refused.
        let stale = e.store_rotated(
            &plan,
            "dev",
            keys("AKIAOLDOLDOLDOLD", "AKIAXXXXXXXXXXXX"),
            now,
        );
        assert_eq!(stale.unwrap_err().code, ErrorCode::Conflict);

        e.undo_rotated(&plan, "dev", "AKIANEWNEWNEWNEW", now)
            .unwrap();
        let back = e.get("dev", now).unwrap();
        assert_eq!(
            back.fields["secret_access_key"].expose_secret(),
            "old-secret"
        );
        assert!(e.aws_rotation("dev").unwrap().pending.is_none());
        let changes: Vec<String> = e
            .history("dev")
            .unwrap()
            .into_iter()
            .map(|r| r.change)
            .collect();
        assert_eq!(changes[..2], ["rotate", "rotate"]);

        // A grace: due only once over, and only while the record lives.
        let plan = e.aws_rotation("dev").unwrap();
        store_new(&mut e, &plan).unwrap();
        let mut p = e.aws_rotation("dev").unwrap().pending.unwrap();
        p.stage = Stage::Delete;
        p.due_at = Timestamp(now.unix() + 60);
        e.save_rotation(&plan.id, &p).unwrap();
        assert!(e.due_rotations(now).is_empty());
        let due = [(plan.id.clone(), "dev".to_owned())];
        assert_eq!(e.due_rotations(Timestamp(now.unix() + 60)), due);
        // Put back to the old key during the grace: due at once.
        let before = e.history("dev").unwrap()[1].revision;
        e.restore("dev", before, now).unwrap();
        assert_eq!(e.aws_key_of(&plan.id).unwrap(), "AKIAOLDOLDOLDOLD");
        assert_eq!(e.due_rotations(now), due);
        e.drop_rotation(&plan.id).unwrap();
        assert!(e.due_rotations(Timestamp(now.unix() + 60)).is_empty());

        // A copy of the key in another record is found; the record itself
        // and other types are not.
        e.add(vec![aws("copy", "AKIAOLDOLDOLDOLD", "old-secret")], now)
            .unwrap();
        assert_eq!(e.copies_of(&plan.id, "AKIAOLDOLDOLDOLD"), ["copy"]);
        assert!(e.copies_of(&plan.id, "AKIANEWNEWNEWNEW").is_empty());

        // Not an aws record with its own long-term keys: refused.
        let mut fields = BTreeMap::new();
        fields.insert("token".to_string(), SecretValue::from("t"));
        e.add(
            vec![NewRecord {
                name: "gh".into(),
                kind: CredentialType::Token,
                fields,
                description: None,
                tags: vec![],
                expires_at: None,
            }],
            now,
        )
        .unwrap();
        let refused = e.aws_rotation("gh").unwrap_err();
        assert_eq!(refused.code, ErrorCode::Usage);
        assert!(refused.message.contains("vault rotate gh FIELD=-"));
        let mut session = aws("sess", "ASIASESSIONSESSI", "s");
        session
            .fields
            .insert("session_token".into(), SecretValue::from("tok"));
        e.add(vec![session], now).unwrap();
        assert_eq!(e.aws_rotation("sess").unwrap_err().code, ErrorCode::Usage);
        let mut f = BTreeMap::new();
        f.insert("nope".to_string(), SecretValue::from("v"));
        assert_eq!(
            e.rotate_fields("gh", f, now).unwrap_err().code,
            ErrorCode::Usage
        );
    }
}
