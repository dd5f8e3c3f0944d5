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
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Deactivate => "deactivate",
            Stage::Delete => "delete",
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingKeys {
    /// The key to take away.
    pub old_key: String,
    /// The key that replaced it.
    pub new_key: String,
    /// Why the last try failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or_else(|| {
                err(
                    ErrorCode::Failed,
                    format!("the unfinished rotation of record {record_id} cannot be read"),
                )
            })?;
        let stage = if row.stage == Stage::Delete.as_str() {
            Stage::Delete
        } else {
            Stage::Deactivate
        };
        Ok(Some(Pending {
            stage,
            due_at: Timestamp(row.due_at),
            keys,
        }))
    }

    /// Keeps (or replaces) the unfinished rotation of record `id`.
    pub fn save_rotation(&mut self, id: &str, pending: &Pending) -> Result<()> {
        let text = serde_json::to_string(&pending.keys)
            .map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
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
        new_id: &str,
        new_secret: SecretValue,
        now: Timestamp,
    ) -> Result<RecordSummary> {
        let (row, mut body) = self.load(name)?;
        if row.id != plan.id || row.revision != plan.revision {
            return Err(err(
                ErrorCode::Conflict,
                format!("'{name}' changed while it was being rotated"),
            ));
        }
        body.fields
            .insert("access_key_id".into(), SecretValue::from(new_id));
        body.fields.insert("secret_access_key".into(), new_secret);
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
            keys: PendingKeys {
                old_key: plan.access_key_id.clone(),
                new_key: new_id.to_owned(),
                error: None,
            },
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

    /// The names of records whose old key is due for deletion.
    pub fn due_rotations(&self, now: Timestamp) -> Vec<String> {
        let (Ok(sess), Ok(store)) = (self.session(), self.store()) else {
            return Vec::new();
        };
        let rows = store.rotations().unwrap_or_default();
        let names = self.names_by_id();
        let mut due = Vec::new();
        for r in rows {
            if r.stage != Stage::Delete.as_str() || r.due_at > now.unix() {
                continue;
            }
            match names.get(&r.record_id) {
                Some(n) if sess.index.contains_key(n) => due.push(n.clone()),
                _ => {}
            }
        }
        due
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
    pub fn delay_rotation(&mut self, name: &str, by: std::time::Duration, now: Timestamp) {
        let Some(id) = self
            .session()
            .ok()
            .and_then(|s| s.index.get(name))
            .map(|e| e.id.clone())
        else {
            return;
        };
        if let Ok(Some(mut p)) = self.pending_rotation(&id) {
            p.due_at = now.plus(by);
            if let Err(e) = self.save_rotation(&id, &p) {
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
                Some(PendingRotation {
                    name,
                    live_key: p.keys.new_key,
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

        let store_new = |e: &mut Engine, plan: &AwsPlan| {
            e.store_rotated(
                plan,
                "dev",
                "AKIANEWNEWNEWNEW",
                SecretValue::from("new"),
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
        // The plan is stale now: a second store is refused.
        let stale = e.store_rotated(
            &plan,
            "dev",
            "AKIAXXXXXXXXXXXX",
            SecretValue::from("x"),
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
        assert_eq!(e.due_rotations(Timestamp(now.unix() + 60)), ["dev"]);
        e.drop_rotation(&plan.id).unwrap();
        assert!(e.due_rotations(Timestamp(now.unix() + 60)).is_empty());

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
