//! The engine's side of refresh (`remote/refresher.rs` runs the commands
//! and calls STS): the pure rules, deciding that a record is due and reading
//! a command's output, and writing what a refresh produced as a new
//! revision, which re-renders its emitted files in place.

use std::collections::BTreeMap;
use std::time::Duration;

use vault_protocol::credential::{
    CHECK_COMMAND, REFRESH_COMMAND, SOURCE, SSO_SESSION, SSO_START_URL, is_generic_key,
    is_sso_session, validate_fields,
};
use vault_protocol::message::RecordSummary;
use vault_protocol::timefmt::{Timestamp, parse_duration};
use vault_protocol::{CredentialType, ErrorCode, SecretValue};

use super::{Engine, Result, err};
use crate::record::RecordBody;

/// Everything needed to refresh one record, read under the engine lock and
/// run outside it.
#[derive(Debug)]
pub struct Job {
    /// Record id.
    pub id: String,
    /// Record name (for messages).
    pub name: String,
    /// Type, which decides how the output maps to fields.
    pub kind: CredentialType,
    /// The revision the job was made from; a result for an older revision
    /// is dropped.
    pub revision: u64,
    /// When the current value expires (reported while refreshes fail).
    pub expires_at: Option<Timestamp>,
    /// How to get the new values.
    pub plan: Plan,
}

/// Where new values come from.
#[derive(Debug)]
pub enum Plan {
    /// `refresh_command`, run with `sh -c`.
    Command(String),
    /// An STS call signed with a source record's keys.
    Sts(Box<StsPlan>),
    /// IAM Identity Center's `GetRoleCredentials` with the record's SSO
    /// session (docs/sso.md).
    Sso(Box<SsoPlan>),
    /// The record names a refresh that cannot run; the reason.
    Broken(String),
}

/// AWS's global STS endpoint, used when neither the record nor
/// `config.toml` names one and the record has no region.
pub const GLOBAL_ENDPOINT: &str = "https://sts.amazonaws.com";

/// What one STS call needs.
pub struct StsPlan {
    /// The source's access key id.
    pub access_key_id: String,
    /// The source's secret key.
    pub secret_access_key: SecretValue,
    /// The source's session token, if it is itself temporary.
    pub session_token: Option<SecretValue>,
    /// AssumeRole's role; `None` for GetSessionToken.
    pub role_arn: Option<String>,
    /// `RoleSessionName`.
    pub session_name: String,
    /// The MFA device and where its current code comes from.
    pub mfa: Option<(String, Mfa)>,
    /// Requested lifetime.
    pub duration: Duration,
    /// The endpoint URL.
    pub endpoint: String,
    /// The signing region.
    pub region: String,
}

/// What minting an SSO credential needs: its role, its session and where
/// IAM Identity Center answers.
pub struct SsoPlan {
    /// The record's name.
    pub name: String,
    /// The record that holds the session: the credential itself, or the
    /// SSO session record its `sso_session` names ("run vault sso login
    /// SESSION").
    pub session: String,
    /// That record's id, so tokens are never kept in a record replaced
    /// meanwhile.
    pub session_id: String,
    /// Whether the session is another record's (then renewed tokens are
    /// kept there, once for every credential sharing it).
    pub shared: bool,
    /// `sso_account_id`.
    pub account_id: String,
    /// `sso_role_name`.
    pub role_name: String,
    /// The registered client: id, secret.
    pub client: Option<(String, SecretValue)>,
    /// The session's access token and when it expires.
    pub access_token: Option<(SecretValue, Timestamp)>,
    /// The session's refresh token.
    pub refresh_token: Option<SecretValue>,
    /// The OIDC service (`https://oidc.REGION.amazonaws.com`).
    pub oidc: String,
    /// The portal API (`https://portal.sso.REGION.amazonaws.com`).
    pub portal: String,
}

impl std::fmt::Debug for SsoPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SsoPlan")
            .field("name", &self.name)
            .field("session", &self.session)
            .field("account_id", &self.account_id)
            .field("role_name", &self.role_name)
            .field("oidc", &self.oidc)
            .field("portal", &self.portal)
            .finish_non_exhaustive()
    }
}

/// Where an STS call's MFA code comes from.
#[derive(Debug)]
pub enum Mfa {
    /// `mfa_command`: a command that prints it.
    Command(String),
    /// `mfa_otp`: the seed in the named record's `otp` field.
    Otp(String, vault_protocol::otp::Otp),
}

impl std::fmt::Debug for StsPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StsPlan")
            .field("access_key_id", &self.access_key_id)
            .field("role_arn", &self.role_arn)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// The endpoint a record uses: its own, else `config.toml`'s, else the
/// regional one for its region, else the global one.
pub fn endpoint_for(
    own: Option<&str>,
    configured: Option<&str>,
    region: Option<&str>,
) -> std::result::Result<String, String> {
    Ok(match (own, configured, region) {
        (Some(e), _, _) | (None, Some(e), _) => e.to_owned(),
        (None, None, Some(r)) => format!("https://sts.{}.amazonaws.com", check_region(r)?),
        (None, None, None) => GLOBAL_ENDPOINT.to_owned(),
    })
}

/// A region that may go into a host name: lower-case letters, digits and
/// dashes, as every AWS (and S3-compatible) region is. Anything else could
/// make the host another one (`x.evil.example/`, `a@evil.example#`).
pub fn check_region(region: &str) -> std::result::Result<&str, String> {
    let ok = (1..=32).contains(&region.len())
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(region)
    } else {
        Err(format!(
            "region '{}' is not a region name (lower-case letters, digits, dashes): fix it with \
             'vault set NAME region=…'",
            region.escape_debug()
        ))
    }
}

/// A `RoleSessionName` from the record name: STS allows `[\w+=,.@-]`, 2–64.
pub fn session_name(record: &str) -> String {
    let name: String = format!("vault-{record}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    name
}

/// Why `name`'s `sso_session` cannot be used: `session` does not exist
/// (`exists` false) or is not a session.
fn not_a_session(name: &str, session: &str, exists: bool) -> String {
    if exists {
        format!(
            "the sso_session of '{name}', '{session}', is not an SSO session (it has a role of its \
             own): name a record with only sso_start_url and sso_region, with 'vault set {name} \
             sso_session=SESSION'"
        )
    } else {
        format!(
            "the sso_session of '{name}', '{session}', does not exist: add it with 'vault add \
             {session} --type aws sso_start_url=https://…/start sso_region=…' (no account or role), \
             or fix it with 'vault set {name} sso_session=SESSION'"
        )
    }
}

/// Session length when a record with a `source` names no `duration`.
const DEFAULT_SESSION: Duration = Duration::from_secs(3600);

/// The longest session AWS gives a role assumed with another role's keys
/// (role chaining).
const CHAINED_SESSION: Duration = Duration::from_secs(3600);

/// The most sources a chain may go through (base → … → the record).
pub const MAX_CHAIN: usize = 5;

/// What a refresh produced.
#[derive(Debug)]
pub struct Minted {
    /// New field values (merged over the record's).
    pub fields: BTreeMap<String, SecretValue>,
    /// New expiry (`None`: the values do not expire).
    pub expires_at: Option<Timestamp>,
}

/// A refresh that failed: why, and, when it kept something all the same
/// (SSO tokens renewed on the way: a refresh token may be good once), the
/// revision that made of its record, which the failure then belongs to.
#[derive(Debug)]
pub struct Unminted {
    /// Why (never a value).
    pub why: String,
    /// The record's revision after what was kept.
    pub kept: Option<u64>,
}

impl From<String> for Unminted {
    fn from(why: String) -> Self {
        Unminted { why, kept: None }
    }
}

/// When a record is due: less than `ahead` left, or less than half of its
/// lifetime (from its last change), whichever is sooner, so that a short
/// lifetime does not make every access a refresh. A record never minted
/// (`incomplete`) is always due.
pub fn due(
    incomplete: bool,
    updated_at: Timestamp,
    expires_at: Option<Timestamp>,
    ahead: Duration,
    now: Timestamp,
) -> bool {
    if incomplete {
        return true;
    }
    let Some(t) = expires_at else { return false };
    let left = t.unix() - now.unix();
    let half_life = (t.unix() - updated_at.unix()).max(0) / 2;
    left < (ahead.as_secs() as i64).min(half_life)
}

/// credential_process JSON field → `aws` field.
const AWS_KEYS: [(&str, &str); 3] = [
    ("AccessKeyId", "access_key_id"),
    ("SecretAccessKey", "secret_access_key"),
    ("SessionToken", "session_token"),
];

/// Reads a refresh command's output: a JSON object with `"Version": 1` and
/// an optional `"Expiration"` (RFC 3339). For `aws`, `AccessKeyId`,
/// `SecretAccessKey` and `SessionToken` are the credential_process names;
/// for every type, a key that is one of the type's field names (any env
/// name for `generic`) sets that field. Errors never quote a value.
pub fn parse_output(kind: CredentialType, bytes: &[u8]) -> std::result::Result<Minted, String> {
    let doc: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(bytes)
        .map_err(|e| {
            format!(
                "the refresh command's output is not a JSON object (line {}, column {}): it must print credential_process JSON",
                e.line(),
                e.column()
            )
        })?;
    match doc.get("Version") {
        Some(v) if v.as_u64() == Some(1) => {}
        Some(_) => return Err("the refresh command's output has a Version other than 1".into()),
        None => return Err("the refresh command's output has no \"Version\": 1".into()),
    }
    let expires_at = match doc.get("Expiration") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(
            Timestamp::parse(s).map_err(|e| format!("the refresh command's Expiration: {e}"))?,
        ),
        Some(_) => return Err("the refresh command's Expiration is not a string".into()),
    };
    let mut fields = BTreeMap::new();
    for (key, value) in &doc {
        if key == "Version" || key == "Expiration" {
            continue;
        }
        let field = if kind == CredentialType::Aws {
            AWS_KEYS
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, f)| *f)
                .or_else(|| kind.fields().iter().find(|f| f.name == key).map(|f| f.name))
        } else if kind == CredentialType::Generic {
            Some(key.as_str()).filter(|k| is_generic_key(k))
        } else {
            kind.fields().iter().find(|f| f.name == key).map(|f| f.name)
        };
        let Some(field) = field.filter(|f| *f != REFRESH_COMMAND && *f != CHECK_COMMAND) else {
            return Err(format!(
                "the refresh command's output has the key '{}', which is not a field of a {kind} credential",
                key.escape_debug()
            ));
        };
        let serde_json::Value::String(text) = value else {
            return Err(format!(
                "the refresh command's '{}' is not a string",
                key.escape_debug()
            ));
        };
        fields.insert(field.to_owned(), SecretValue::from(text.as_str()));
    }
    if fields.is_empty() {
        return Err("the refresh command's output holds no credential fields".into());
    }
    Ok(Minted { fields, expires_at })
}

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
            (None, None)
                if body.fields.contains_key(SSO_START_URL)
                    || body.fields.contains_key(SSO_SESSION) =>
            {
                self.sso_plan(&row.id, &body).unwrap_or_else(Plan::Broken)
            }
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

    /// The endpoints of IAM Identity Center for `region`: `config.toml`'s
    /// `[sso]`, else AWS's.
    pub fn sso_endpoints(&self, region: &str) -> std::result::Result<(String, String), String> {
        let region = check_region(region)?;
        Ok((
            self.config
                .sso_oidc_endpoint
                .clone()
                .unwrap_or_else(|| format!("https://oidc.{region}.amazonaws.com")),
            self.config
                .sso_portal_endpoint
                .clone()
                .unwrap_or_else(|| format!("https://portal.sso.{region}.amazonaws.com")),
        ))
    }

    /// The record that holds SSO credential `name`'s session, as a sign-in
    /// starts it: the SSO session record its `sso_session` names, else
    /// `name` itself. Its name, id, type and fields.
    pub fn sso_record(
        &self,
        name: &str,
    ) -> Result<(
        String,
        String,
        CredentialType,
        BTreeMap<String, SecretValue>,
    )> {
        let (row, body) = self.load(name)?;
        let Some(session) = body.fields.get(SSO_SESSION) else {
            return Ok((body.name, row.id, body.kind, body.fields));
        };
        let session = session.expose_secret();
        let loaded = self.load(session).ok();
        let exists = loaded.is_some();
        let (row, body) = loaded
            .filter(|(_, b)| is_sso_session(|f| b.fields.contains_key(f)))
            .ok_or_else(|| err(ErrorCode::NotFound, not_a_session(name, session, exists)))?;
        Ok((body.name, row.id, body.kind, body.fields))
    }

    /// The credentials that share SSO session `session` (name `sso_session`
    /// it), by name: what its sign-in mints.
    pub fn sso_sharing(&self, session: &str) -> Vec<(String, String)> {
        let Ok(sess) = self.session() else {
            return Vec::new();
        };
        let candidates: Vec<String> = sess
            .index
            .iter()
            .filter(|(_, e)| e.kind == CredentialType::Aws && e.refresh)
            .map(|(n, _)| n.clone())
            .collect();
        candidates
            .into_iter()
            .filter_map(|n| self.load(&n).ok())
            .filter(|(_, b)| {
                b.fields
                    .get(SSO_SESSION)
                    .is_some_and(|v| v.expose_secret() == session)
            })
            .map(|(row, b)| (b.name, row.id))
            .collect()
    }

    /// Keeps SSO session fields in record `name`, if it is still the record
    /// `id` they were made for. With `keys_too` (a new sign-in, `vault sso
    /// login`) the previous session and its keys go, so the next use mints
    /// from this one; without (renewed tokens), the keys stay.
    pub fn keep_sso_session(
        &mut self,
        name: &str,
        id: &str,
        session: BTreeMap<String, SecretValue>,
        keys_too: bool,
        now: Timestamp,
    ) -> Result<RecordSummary> {
        let (row, mut body) = self.load(name)?;
        if row.id != id || !body.fields.contains_key(SSO_START_URL) {
            return Err(err(
                ErrorCode::Conflict,
                format!("'{name}' changed while signing in: run 'vault sso login {name}' again"),
            ));
        }
        let old_session = ["sso_access_token", "sso_token_expires", "sso_refresh_token"];
        if keys_too {
            // A new sign-in: nothing of the previous session stays.
            for f in ["access_key_id", "secret_access_key", "session_token"]
                .iter()
                .chain(old_session.iter())
            {
                body.fields.remove(*f);
            }
            body.expires_at = None;
        }
        body.fields.extend(session);
        validate_fields(body.kind, &body.fields).map_err(|e| err(ErrorCode::Failed, e))?;
        // A renewal is the daemon's, as a refresh: it neither resolves a
        // sync conflict nor adopts a name.
        let change = if keys_too { "sso login" } else { "refresh" };
        self.commit(row, body, name, change, now)
    }

    /// Drops the keys of credential `name` (id `id`) sharing an SSO
    /// session that was just signed in again, so that the next use mints
    /// them from the new session (and a role it may not use is said at
    /// once), as a credential with its own session does.
    pub fn drop_sso_keys(&mut self, name: &str, id: &str, now: Timestamp) -> Result<()> {
        let (row, mut body) = self.load(name)?;
        if row.id != id || !body.fields.contains_key(SSO_SESSION) {
            return Ok(());
        }
        for f in ["access_key_id", "secret_access_key", "session_token"] {
            body.fields.remove(f);
        }
        body.expires_at = None;
        self.commit(row, body, name, "sso login", now).map(|_| ())
    }

    /// The summary of record `name` as the index has it.
    pub fn summary_of(&self, name: &str, now: Timestamp) -> Result<RecordSummary> {
        let sess = self.session()?;
        let entry = sess
            .index
            .get(name)
            .ok_or_else(|| err(ErrorCode::NotFound, format!("no credential named '{name}'")))?;
        Ok(entry.summary(name, now))
    }

    /// What SSO credential (or session) `name`'s session needs (`vault sso
    /// roles`, a renewal): the session's tokens, read from the record that
    /// holds them.
    pub fn sso_session(&self, name: &str) -> Result<SsoPlan> {
        let (row, body) = self.load(name)?;
        let sso = body.fields.contains_key(SSO_START_URL) || body.fields.contains_key(SSO_SESSION);
        if body.kind != CredentialType::Aws || !sso {
            return Err(err(
                ErrorCode::Usage,
                format!(
                    "'{name}' is not an SSO credential (it has neither sso_start_url nor \
                     sso_session)"
                ),
            ));
        }
        match self.sso_plan(&row.id, &body) {
            Ok(Plan::Sso(plan)) => Ok(*plan),
            Ok(_) => Err(err(ErrorCode::Internal, "not an SSO plan")),
            Err(why) => Err(err(ErrorCode::Failed, why)),
        }
    }

    /// The `GetRoleCredentials` call that mints SSO credential `body`
    /// (record `id`), with its own session or the one it shares.
    fn sso_plan(&self, id: &str, body: &RecordBody) -> std::result::Result<Plan, String> {
        let role = |f: &str| {
            body.fields
                .get(f)
                .map(|v| v.expose_secret().to_owned())
                .unwrap_or_default()
        };
        let (account_id, role_name) = (role("sso_account_id"), role("sso_role_name"));
        let (session_id, holder) = match body.fields.get(SSO_SESSION) {
            None => (id.to_owned(), None),
            Some(session) => {
                let session = session.expose_secret();
                let loaded = self.load(session).ok();
                let exists = loaded.is_some();
                let (row, held) = loaded
                    .filter(|(_, b)| is_sso_session(|f| b.fields.contains_key(f)))
                    .ok_or_else(|| not_a_session(&body.name, session, exists))?;
                (row.id, Some(held))
            }
        };
        let shared = holder.is_some();
        let held = holder.as_ref().unwrap_or(body);
        let field = |f: &str| held.fields.get(f).filter(|v| !v.is_empty());
        let text = |f: &str| field(f).map(|v| v.expose_secret().to_owned());
        let (oidc, portal) = self.sso_endpoints(&text("sso_region").unwrap_or_default())?;
        let expires = text("sso_token_expires").and_then(|t| Timestamp::parse(&t).ok());
        Ok(Plan::Sso(Box::new(SsoPlan {
            name: body.name.clone(),
            session: held.name.clone(),
            session_id,
            shared,
            account_id,
            role_name,
            client: text("sso_client_id")
                .zip(field("sso_client_secret").map(SecretValue::duplicate)),
            access_token: field("sso_access_token")
                .map(SecretValue::duplicate)
                .zip(expires),
            refresh_token: field("sso_refresh_token").map(SecretValue::duplicate),
            oidc,
            portal,
        })))
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
        if src.kind != CredentialType::Aws {
            return Err(missing());
        }
        self.check_chain(body)?;
        // A source may itself be minted (a chain: the refresher mints it
        // first); its keys must be there and live.
        if src.expires_at.is_some_and(|t| t <= now) {
            return Err(format!(
                "its source '{source}' has expired and could not be renewed: 'vault status' \
                 says why"
            ));
        }
        let key = |f: &str| src.fields.get(f).filter(|v| !v.is_empty());
        let (Some(id), Some(secret)) = (key("access_key_id"), key("secret_access_key")) else {
            if vault_protocol::credential::refreshes_itself(|f| src.fields.contains_key(f)) {
                return Err(format!(
                    "its source '{source}' has no keys yet: 'vault status' says why"
                ));
            }
            return Err(missing());
        };
        let region = field("region");
        let endpoint = endpoint_for(
            field("sts_endpoint").as_deref(),
            self.config.sts_endpoint.as_deref(),
            region.as_deref(),
        )?;
        let mut duration = match field("duration") {
            Some(d) => parse_duration(&d).map_err(|e| format!("duration: {e}"))?,
            None => DEFAULT_SESSION,
        };
        let src_session = key("session_token").is_some();
        let role = field("role_arn");
        if src_session && role.is_none() {
            return Err(format!(
                "its source '{source}' holds temporary keys, and GetSessionToken takes long-term \
                 ones: give '{}' a role_arn (AssumeRole), or a long-term source",
                body.name
            ));
        }
        // Role chaining: AWS gives a role assumed with a role's keys one
        // hour at most.
        if src_session && src.fields.contains_key("role_arn") {
            duration = duration.min(CHAINED_SESSION);
        }
        Ok(Plan::Sts(Box::new(StsPlan {
            access_key_id: id.expose_secret().to_owned(),
            secret_access_key: SecretValue::from(secret.expose_secret()),
            session_token: key("session_token").map(|t| SecretValue::from(t.expose_secret())),
            role_arn: role,
            session_name: field("session_name").unwrap_or_else(|| session_name(&body.name)),
            mfa: match field("mfa_serial") {
                Some(serial) => Some((serial, self.mfa_source(body)?)),
                None => None,
            },
            duration,
            endpoint,
            region: region.unwrap_or_else(|| "us-east-1".to_owned()),
        })))
    }

    /// Refuses a chain of sources that loops back or is longer than
    /// [`MAX_CHAIN`].
    fn check_chain(&self, body: &RecordBody) -> std::result::Result<(), String> {
        let mut seen = vec![body.name.clone()];
        let mut at = body
            .fields
            .get(SOURCE)
            .map(|v| v.expose_secret().to_owned());
        while let Some(name) = at {
            if seen.contains(&name) {
                seen.push(name);
                return Err(format!(
                    "its sources loop ({}): make one of them long-term",
                    seen.join(" → ")
                ));
            }
            if seen.len() > MAX_CHAIN {
                return Err(format!(
                    "its chain of sources is longer than {MAX_CHAIN} ({} → …)",
                    seen.join(" → ")
                ));
            }
            seen.push(name.clone());
            at = self
                .load(&name)
                .ok()
                .and_then(|(_, b)| b.fields.get(SOURCE).map(|v| v.expose_secret().to_owned()));
        }
        Ok(())
    }

    /// The source of `name` when that source is itself minted (a chain):
    /// what the refresher renews first.
    pub fn minted_source(&self, name: &str) -> Option<String> {
        let (_, body) = self.load(name).ok()?;
        let source = body.fields.get(SOURCE)?.expose_secret().to_owned();
        let (_, src) = self.load(&source).ok()?;
        vault_protocol::credential::refreshes_itself(|f| src.fields.contains_key(f))
            .then_some(source)
    }

    /// Where the code for `body`'s MFA device comes from: `mfa_command`,
    /// or the seed in the `otp` field of the record `mfa_otp` names.
    fn mfa_source(&self, body: &RecordBody) -> std::result::Result<Mfa, String> {
        let field = |f: &str| body.fields.get(f).map(|v| v.expose_secret().to_owned());
        if let Some(command) = field("mfa_command") {
            return Ok(Mfa::Command(command));
        }
        let Some(name) = field("mfa_otp") else {
            return Err("it has mfa_serial but neither mfa_otp nor mfa_command".into());
        };
        let record = self.load(&name).ok();
        let seed = record
            .as_ref()
            .and_then(|(_, r)| vault_protocol::otp::seed_of(r.kind, &r.fields))
            .ok_or_else(|| {
                format!(
                    "its mfa_otp '{name}' does not exist or has no otp field: add the MFA \
                     device's seed with vault set {name} otp=-"
                )
            })?;
        let otp = vault_protocol::otp::Otp::parse(seed.expose_secret())
            .map_err(|e| format!("its mfa_otp '{name}': {e}"))?;
        if !otp.is_standard() {
            return Err(format!(
                "its mfa_otp '{name}' holds a seed for codes AWS does not take: an MFA device's \
                 codes are 6 digits of SHA1 every 30 s"
            ));
        }
        Ok(Mfa::Otp(name, otp))
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
            // SSO tokens renewed for this mint are kept all the same: the
            // refresh token they replace may be spent.
            let renewed: BTreeMap<String, SecretValue> = minted
                .fields
                .into_iter()
                .filter(|(k, _)| {
                    vault_protocol::credential::SSO_SESSION_FIELDS.contains(&k.as_str())
                })
                .collect();
            if row.id == job.id && !renewed.is_empty() {
                drop((row, body));
                if let Err(e) = self.keep_sso_session(&job.name, &job.id, renewed, false, now) {
                    tracing::warn!(record = %job.id, error = %e.message, "renewed SSO tokens not kept");
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_uses_ahead_or_half_the_lifetime() {
        let ahead = Duration::from_secs(20 * 60);
        let at = Timestamp(1_000_000);
        // An hour-long session: due under 20 minutes left.
        let exp = Some(at.plus(Duration::from_secs(3600)));
        assert!(!due(
            false,
            at,
            exp,
            ahead,
            at.plus(Duration::from_secs(39 * 60))
        ));
        assert!(due(
            false,
            at,
            exp,
            ahead,
            at.plus(Duration::from_secs(41 * 60))
        ));
        // A 10-second one: due under 5 seconds left, not on every access.
        let exp = Some(at.plus(Duration::from_secs(10)));
        assert!(!due(false, at, exp, ahead, at.plus(Duration::from_secs(4))));
        assert!(due(false, at, exp, ahead, at.plus(Duration::from_secs(6))));
        // No expiry: never, unless never minted.
        assert!(!due(false, at, None, ahead, at));
        assert!(due(true, at, None, ahead, at));
    }

    #[test]
    fn credential_process_output_maps_to_fields() {
        let out = br#"{"Version":1,"AccessKeyId":"ASIAX","SecretAccessKey":"s","SessionToken":"t","Expiration":"2026-11-23T18:00:00Z"}"#;
        let m = parse_output(CredentialType::Aws, out).unwrap();
        assert_eq!(m.fields["access_key_id"].expose_secret(), "ASIAX");
        assert_eq!(m.fields["session_token"].expose_secret(), "t");
        assert_eq!(
            m.expires_at,
            Some(Timestamp::parse("2026-11-23T18:00:00Z").unwrap())
        );
        let m = parse_output(CredentialType::Token, br#"{"Version":1,"token":"x"}"#).unwrap();
        assert_eq!(m.fields["token"].expose_secret(), "x");
        assert_eq!(m.expires_at, None);
        let m = parse_output(CredentialType::Generic, br#"{"Version":1,"API_KEY":"x"}"#).unwrap();
        assert_eq!(m.fields["API_KEY"].expose_secret(), "x");
    }

    #[test]
    fn bad_output_is_explained_without_values() {
        for (out, want) in [
            (&b"not json SECRET-MARK"[..], "not a JSON object"),
            (br#"{"AccessKeyId":"SECRET-MARK"}"#, "no \"Version\": 1"),
            (
                br#"{"Version":2,"AccessKeyId":"SECRET-MARK"}"#,
                "Version other than 1",
            ),
            (br#"{"Version":1,"Nope":"SECRET-MARK"}"#, "'Nope'"),
            (br#"{"Version":1,"AccessKeyId":7}"#, "not a string"),
            (br#"{"Version":1,"Expiration":"SECRET-MARK"}"#, "Expiration"),
            (br#"{"Version":1,"refresh_command":"x"}"#, "not a field"),
            (br#"{"Version":1}"#, "no credential fields"),
        ] {
            let e = parse_output(CredentialType::Aws, out).unwrap_err();
            assert!(e.contains(want), "{e}");
            // The Expiration parser quotes what it refused; nothing else
            // may. That value is a timestamp, never a secret.
            if !want.contains("Expiration") {
                assert!(!e.contains("SECRET-MARK"), "{e}");
            }
        }
    }
}
