//! The engine's side of refresh (daemon/src/refresh.rs runs the commands):
//! deciding that a record is due, and writing what a refresh produced as a
//! new revision, which re-renders its emitted files in place.

use std::time::Duration;

use vault_protocol::credential::{REFRESH_COMMAND, SOURCE, validate_fields};
use vault_protocol::message::RecordSummary;
use vault_protocol::timefmt::{Timestamp, parse_duration};
use vault_protocol::{CredentialType, ErrorCode, SecretValue};

use super::{Engine, Result, err};
use crate::record::RecordBody;
use crate::refresh::{Job, Minted, Plan};

/// Session length when a record with a `source` names no `duration`.
const DEFAULT_SESSION: Duration = Duration::from_secs(3600);

impl Engine {
    /// The id of `name` when it is due for a refresh, from the index alone
    /// (no decryption): what a caller needs to join the record's flight.
    /// `None` also when the vault is locked or the record does not exist:
    /// the request that follows says so.
    pub fn refresh_due_id(&self, name: &str, ahead: Duration, now: Timestamp) -> Option<String> {
        let entry = self.session().ok()?.index.get(name)?;
        entry.refresh_due(ahead, now).then(|| entry.id.clone())
    }

    /// The refresh `name` needs now, if any (`None` as for
    /// [`Engine::refresh_due_id`]).
    pub fn refresh_job(&self, name: &str, ahead: Duration, now: Timestamp) -> Option<Job> {
        let entry = self.session().ok()?.index.get(name)?;
        if !entry.refresh_due(ahead, now) {
            return None;
        }
        let (row, body) = self.load(name).ok()?;
        // A command, an MFA command or an endpoint from another device runs
        // only once approved here.
        let plan = match (
            self.refresh_blocked(&row, &body),
            body.fields.get(REFRESH_COMMAND),
        ) {
            (Some(why), _) => Plan::Broken(why),
            (None, Some(command)) => Plan::Command(command.expose_secret().to_owned()),
            (None, None) => self.sts_plan(&body, now).unwrap_or_else(Plan::Broken),
        };
        Some(Job {
            id: row.id,
            name: body.name,
            kind: body.kind,
            revision: row.revision,
            expires_at: body.expires_at,
            plan,
        })
    }

    /// The STS call that mints `body`'s session from its `source`.
    fn sts_plan(&self, body: &RecordBody, now: Timestamp) -> std::result::Result<Plan, String> {
        let field = |f: &str| body.fields.get(f).map(|v| v.expose_secret().to_owned());
        let Some(source) = field(SOURCE) else {
            return Err("it has neither a refresh_command nor a source".into());
        };
        let missing = || {
            format!(
                "its source '{source}' does not exist or is not an aws credential with keys: \
                 add it, or fix 'source' with vault set {} source=NAME",
                body.name
            )
        };
        let (_, src) = self.load(&source).map_err(|_| missing())?;
        if src.kind != CredentialType::Aws || src.fields.contains_key(SOURCE) {
            return Err(format!(
                "its source '{source}' must be a long-term aws credential, not one minted from \
                 another source"
            ));
        }
        if src.expires_at.is_some_and(|t| t <= now) {
            return Err(format!("its source '{source}' has expired: renew it"));
        }
        let key = |f: &str| src.fields.get(f).filter(|v| !v.is_empty());
        let (Some(id), Some(secret)) = (key("access_key_id"), key("secret_access_key")) else {
            return Err(missing());
        };
        let region = field("region");
        let endpoint = crate::sts::endpoint_for(
            field("sts_endpoint").as_deref(),
            self.config.sts_endpoint.as_deref(),
            region.as_deref(),
        );
        let duration = match field("duration") {
            Some(d) => parse_duration(&d).map_err(|e| format!("duration: {e}"))?,
            None => DEFAULT_SESSION,
        };
        Ok(Plan::Sts(Box::new(crate::sts::Plan {
            access_key_id: id.expose_secret().to_owned(),
            secret_access_key: SecretValue::from(secret.expose_secret()),
            session_token: key("session_token").map(|t| SecretValue::from(t.expose_secret())),
            role_arn: field("role_arn"),
            session_name: field("session_name")
                .unwrap_or_else(|| crate::sts::session_name(&body.name)),
            mfa: field("mfa_serial").zip(field("mfa_command")),
            duration,
            endpoint,
            region: region.unwrap_or_else(|| "us-east-1".to_owned()),
        })))
    }

    /// Names of records bound to an emitted file that are due: refreshed in
    /// the background so the files never hold a dying key.
    pub fn refresh_due_bound(&self, ahead: Duration, now: Timestamp) -> Vec<String> {
        let (Ok(sess), Ok(store)) = (self.session(), self.store()) else {
            return Vec::new();
        };
        // The index first: most ticks nothing is due, and the bindings
        // need not be read from the store.
        let mut due: Vec<(&String, &str)> = sess
            .index
            .iter()
            .filter(|(_, e)| e.refresh_due(ahead, now))
            .map(|(name, e)| (name, e.id.as_str()))
            .collect();
        if due.is_empty() {
            return Vec::new();
        }
        let Ok(bound) = store.emitters() else {
            return Vec::new();
        };
        due.retain(|(_, id)| bound.iter().any(|b| b.record_id == *id));
        due.into_iter().map(|(name, _)| name.clone()).collect()
    }

    /// Writes a refresh's result as the next revision of the job's record.
    /// Refused when the record changed meanwhile (the result may be for an
    /// old command) or when the values leave a required field empty.
    pub fn apply_refresh(
        &mut self,
        job: &Job,
        minted: Minted,
        now: Timestamp,
    ) -> Result<RecordSummary> {
        let (row, mut body) = self.load(&job.name)?;
        if row.id != job.id || row.revision != job.revision {
            return Err(err(
                ErrorCode::Conflict,
                format!(
                    "'{}' changed while it was being refreshed; the result was dropped",
                    job.name
                ),
            ));
        }
        // A new session replaces the whole session: a token left from the
        // previous one would not match the new keys.
        if body.kind == CredentialType::Aws && !minted.fields.contains_key("session_token") {
            body.fields.remove("session_token");
        }
        let minted_names: Vec<String> = minted.fields.keys().cloned().collect();
        body.fields.extend(minted.fields);
        body.expires_at = minted.expires_at;
        // Checked as if it had no refresh command: every required field set.
        let command = body.fields.remove(REFRESH_COMMAND);
        validate_fields(body.kind, &body.fields).map_err(|e| {
            err(
                ErrorCode::Failed,
                format!(
                    "the refresh command's values do not make a valid {} credential: {e}",
                    body.kind
                ),
            )
        })?;
        if let Some(command) = command {
            body.fields.insert(REFRESH_COMMAND.to_owned(), command);
        }
        // What an approved refresh wrote is as trusted as the refresh.
        let approved =
            self.approval_items(&row.id, &body, |f| minted_names.iter().any(|m| m == f))?;
        let summary = self.commit(row, body, &job.name, "refresh", now)?;
        self.record_approvals(&approved, now)?;
        Ok(summary)
    }
}
