//! Publishing credentials to workload platforms (issue 10): remotes, the
//! credentials bound to them, the platform's rules checked before anything
//! is queued, and the plan of what to send next. The HTTP side is
//! [`crate::remote::publisher`].
//!
//! The queue is the difference between what the vault has and what the
//! platform was last seen to hold: a publication is due when its record's
//! head revision is not the one pushed (a change, a restore, a pulled sync
//! change, a refresh), or when it is to be deleted. Due publications go out
//! in the order they became due, so a burst of offline changes replays in
//! order and a credential changed twice is sent once, with its last value.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Map, Value, json};
use tracing::info;
use vault_protocol::message::{PublicationInfo, PublishState, RemoteKind};
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{CredentialType, ErrorCode, SecretValue, WireError};

use super::{Engine, Result, decrypt_body, err, store_err};
use crate::record::RecordBody;
use crate::store::{Presence, PubKey, PubRow, RecordRow, RemoteRow};

/// What the platform stores for one credential.
#[derive(Debug)]
pub struct Envelope {
    /// `REGISTRY`, `DATA` or `GENERIC`.
    pub cred_type: &'static str,
    /// The uniqueness scope: registry scope or storage endpoint (empty for
    /// GENERIC).
    pub profile: String,
    /// The JSON body of `POST /api/credentials/{name}`.
    pub body: SecretValue,
}

/// A due publication: when it became due (unix ms), the publication, and
/// its record's head even if deleted.
type Due = (i64, PubRow, Option<RecordRow>);

/// A publication not due (sent and current, or refused) and its live head.
type Settled = (PubRow, RecordRow);

/// What planning one due publication came to.
enum Planned {
    /// A request to send.
    Job(Job),
    /// Plan it after its registry's or endpoint's holder, also due.
    After(PubRow, RecordRow),
    /// Nothing to send: refused or already there (marked).
    Nothing,
}

/// A registry or endpoint a publication holds on the platform, which keeps
/// one REGISTRY per registry and one DATA per endpoint.
struct Claim {
    cred_type: &'static str,
    profile: String,
    remote_name: String,
    record_id: String,
    /// Its publication is due and not yet planned: it may move away.
    open: bool,
}

/// `remote_name` stays where it is this pass (refused).
fn settle(held: &mut [Claim], remote_name: &str) {
    for c in held.iter_mut().filter(|c| c.remote_name == remote_name) {
        c.open = false;
    }
}

/// The next thing to do for one publication.
#[derive(Debug)]
pub struct Job {
    /// Which publication, and which version of it.
    pub key: PubKey,
    /// What to do.
    pub op: JobOp,
}

/// See [`Job`].
#[derive(Debug)]
pub enum JobOp {
    /// Delete it on the platform, then forget the publication.
    Delete,
    /// Send `revision` of the record.
    Put {
        /// The record revision sent.
        revision: u64,
        /// The request body.
        body: SecretValue,
        /// Delete the platform's copy first: a GENERIC update (the platform
        /// refuses a name that exists), a registry scope or endpoint that
        /// changed (the platform keys those by it), or a copy whose state
        /// is unknown.
        delete_first: bool,
        /// This vault has had this name on the platform before, so a
        /// "duplicate" answer is its own lost copy, not someone else's.
        ours: bool,
        /// What the platform holds under the name before this job.
        present: Presence,
        /// The registry scope or endpoint it takes on the platform (which
        /// keeps one credential per scope or endpoint); `None` for
        /// GENERIC.
        profile: Option<String>,
    },
}

/// The platform's type for a vault credential type, or why it has none.
pub fn platform_type(kind: CredentialType) -> std::result::Result<&'static str, String> {
    match kind {
        CredentialType::Registry => Ok("REGISTRY"),
        CredentialType::Data => Ok("DATA"),
        CredentialType::Generic | CredentialType::Token | CredentialType::Password => Ok("GENERIC"),
        other => Err(format!(
            "a {other} credential cannot be published: a platform takes registry (REGISTRY), \
             data (DATA), and generic, token or password (GENERIC) credentials"
        )),
    }
}

/// The platform's name rule: `^[a-zA-Z]([a-zA-Z0-9_-]*[a-zA-Z0-9])?$`.
pub fn check_remote_name(name: &str) -> std::result::Result<(), String> {
    let first = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    let last = name
        .chars()
        .last()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let middle = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if first && last && middle {
        Ok(())
    } else {
        Err(format!(
            "'{}' is not a name the platform accepts: start with a letter, then letters, digits, \
             _ or -, ending in a letter or digit (give another with --as NAME)",
            name.escape_debug()
        ))
    }
}

/// A GENERIC key becomes a Kubernetes secret key: `[-._a-zA-Z0-9]`, at most
/// 253 characters (the rule `vault add` keeps too).
fn check_generic_key(key: &str) -> std::result::Result<(), String> {
    if vault_protocol::credential::is_generic_key(key) {
        Ok(())
    } else {
        Err(format!(
            "key '{}' cannot be published: the platform turns keys into Kubernetes secret keys, \
             1-253 characters of A-Z a-z 0-9 - . _",
            key.escape_debug()
        ))
    }
}

/// A registry scope as the platform keys it (OSMO's own normalisation, seen
/// in its code and confirmed against the service): no scheme, no trailing
/// `/`, `docker.io` or empty meaning Docker Hub, and no `:443` (HTTPS's
/// port) on the host, so `registry.example.com:443/team` is
/// `registry.example.com/team`. Lower case too: registry hosts are case
/// blind and image paths lower case, and the platform keeps what it is
/// sent, so two spellings must not become two credentials.
fn registry_scope(registry: &str) -> String {
    let s = registry.trim().trim_end_matches('/');
    let s = s
        .split_once("://")
        .map_or(s, |(_, rest)| rest)
        .to_ascii_lowercase();
    let (host, path) = s.split_once('/').unwrap_or((&s, ""));
    let host = match host {
        "" | "docker.io" | "index.docker.io" => "registry-1.docker.io",
        h => h,
    };
    let host = host.strip_suffix(":443").unwrap_or(host);
    let path = path.trim_matches('/');
    if path.is_empty() {
        host.to_owned()
    } else {
        format!("{host}/{path}")
    }
}

/// Builds what the platform stores for `body`, checking the platform's
/// rules (../shared/remotes/osmo.md).
pub fn envelope(body: &RecordBody) -> std::result::Result<Envelope, String> {
    let cred_type = platform_type(body.kind)?;
    let get = |k: &str| body.fields.get(k).map(|v| v.expose_secret());
    let text = |k: &str| Value::String(get(k).unwrap_or_default().to_owned());
    let (profile, doc) = match body.kind {
        CredentialType::Registry => {
            let scope = registry_scope(get("registry").unwrap_or_default());
            let mut inner = Map::new();
            inner.insert("registry".into(), Value::String(scope.clone()));
            if get("username").is_some_and(|u| !u.is_empty()) {
                inner.insert("username".into(), text("username"));
            }
            inner.insert("auth".into(), text("auth"));
            (scope, json!({ "registry_credential": inner }))
        }
        CredentialType::Data => {
            let endpoint = get("endpoint").unwrap_or_default().trim_end_matches('/');
            let schemes = ["s3://", "gs://", "azure://", "tos://", "swift://"];
            if !schemes.iter().any(|s| endpoint.starts_with(s)) {
                return Err(format!(
                    "endpoint '{endpoint}' cannot be published: the platform takes s3://, gs://, \
                     azure://, tos:// or swift:// endpoints (put an http(s) URL in override_url)"
                ));
            }
            if endpoint.split_once("://").is_none_or(|(_, b)| b.is_empty()) {
                return Err(format!(
                    "endpoint '{endpoint}' names no bucket or container"
                ));
            }
            let mut inner = Map::new();
            inner.insert("endpoint".into(), Value::String(endpoint.to_owned()));
            for k in ["region", "access_key_id", "access_key"] {
                if get(k).is_some_and(|v| !v.is_empty()) || k != "region" {
                    inner.insert(k.into(), text(k));
                }
            }
            if let Some(url) = get("override_url").filter(|u| !u.is_empty()) {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(format!(
                        "override_url '{url}' must be an http:// or https:// URL"
                    ));
                }
                inner.insert("override_url".into(), text("override_url"));
            }
            if let Some(style) = get("addressing_style").filter(|s| !s.is_empty()) {
                if !matches!(style, "virtual" | "path" | "auto") {
                    return Err("addressing_style must be virtual, path or auto".into());
                }
                inner.insert("addressing_style".into(), text("addressing_style"));
            }
            (endpoint.to_owned(), json!({ "data_credential": inner }))
        }
        _ => {
            // Generic, token and password records publish their fields as
            // keys; a refresh or check command is local machinery, and a typed
            // record's one-time-code seed stays in the vault (a generic
            // record's `otp` is an ordinary key): neither is published.
            let mut map = BTreeMap::new();
            for (k, v) in &body.fields {
                if k == vault_protocol::credential::REFRESH_COMMAND
                    || (body.kind == CredentialType::Generic
                        && k == vault_protocol::credential::CHECK_COMMAND)
                    || vault_protocol::otp::is_seed(body.kind, k)
                    || (body.kind == CredentialType::Token && k == "env")
                {
                    continue;
                }
                check_generic_key(k)?;
                map.insert(k.clone(), Value::String(v.expose_secret().to_owned()));
            }
            if map.is_empty() {
                return Err("a GENERIC credential needs at least one key".into());
            }
            (
                String::new(),
                json!({ "generic_credential": { "credential": map } }),
            )
        }
    };
    Ok(Envelope {
        cred_type,
        profile,
        body: SecretValue::new(doc.to_string()),
    })
}

/// A stored remote's kind. One this build does not know (written by a newer
/// vault) is an error, never taken for OSMO: the daemon would send that
/// platform requests in another's protocol, with its token.
pub fn remote_kind(remote: &RemoteRow) -> Result<RemoteKind> {
    RemoteKind::parse(&remote.kind).ok_or_else(|| {
        err(
            ErrorCode::Failed,
            format!(
                "remote '{}' is of kind '{}', which this vault does not know (a newer vault \
                 added it?): upgrade vault to use it, or 'vault remote rm {} --force' to forget it",
                remote.name, remote.kind, remote.name
            ),
        )
    })
}

fn no_remote(name: &str) -> WireError {
    err(
        ErrorCode::NotFound,
        format!("no remote named '{name}': see 'vault remote list'"),
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Engine {
    /// Every remote, by name.
    pub fn remotes(&self) -> Result<Vec<RemoteRow>> {
        self.store()?.remotes().map_err(store_err)
    }

    /// One remote, whatever its kind (`remote rm` must reach every one).
    fn any_remote(&self, name: &str) -> Result<RemoteRow> {
        self.remotes()?
            .into_iter()
            .find(|r| r.name == name)
            .ok_or_else(|| no_remote(name))
    }

    /// One remote, of a kind this build speaks to.
    pub fn remote(&self, name: &str) -> Result<(RemoteRow, RemoteKind)> {
        let row = self.any_remote(name)?;
        let kind = remote_kind(&row)?;
        Ok((row, kind))
    }

    /// A remote's access token, decrypted.
    pub fn remote_token(&self, remote: &RemoteRow) -> Result<SecretValue> {
        self.session()?;
        let token = self.unseal(&remote.token).ok_or_else(|| {
            err(
                ErrorCode::Failed,
                format!(
                    "the access token of remote '{}' cannot be read: add it again with 'vault \
                     remote add {} --replace'",
                    remote.name, remote.name
                ),
            )
        })?;
        Ok(SecretValue::new(token))
    }

    /// Checks a new remote before its token is tried.
    pub fn check_new_remote(&self, name: &str, replace: bool) -> Result<()> {
        self.session()?;
        let ok = (1..=64).contains(&name.len())
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(err(
                ErrorCode::Usage,
                format!(
                    "invalid remote name '{}': use 1-64 characters of A-Z a-z 0-9 - _ .",
                    name.escape_debug()
                ),
            ));
        }
        let exists = self.remotes()?.iter().any(|r| r.name == name);
        if exists && !replace {
            return Err(err(
                ErrorCode::AlreadyExists,
                format!(
                    "remote '{name}' exists: add --replace to give it a new URL or token (its \
                     publications stay)"
                ),
            ));
        }
        if !exists && replace {
            return Err(no_remote(name));
        }
        Ok(())
    }

    /// Stores a remote with its token encrypted to the vault key.
    pub fn save_remote(
        &mut self,
        name: &str,
        kind: RemoteKind,
        url: &str,
        token: &SecretValue,
        now: Timestamp,
    ) -> Result<RemoteRow> {
        let sealed = self.seal(token.expose_secret())?;
        let row = RemoteRow {
            name: name.to_owned(),
            kind: kind.as_str().to_owned(),
            url: url.to_owned(),
            token: sealed,
            created_at: now.unix(),
        };
        let moved = self
            .remotes()?
            .iter()
            .any(|r| r.name == name && r.url != url);
        self.store_mut()?.put_remote(&row).map_err(store_err)?;
        if moved {
            // Another platform holds none of it: push everything again.
            self.store_mut()?
                .reset_publications(name)
                .map_err(store_err)?;
        }
        info!(remote = %name, "remote saved");
        Ok(row)
    }

    /// Forgets a remote; one with publications takes `force`.
    pub fn remove_remote(&mut self, name: &str, force: bool) -> Result<RemoteRow> {
        let remote = self.any_remote(name)?;
        let bound = self.store()?.publications(Some(name)).map_err(store_err)?;
        if !bound.is_empty() && !force {
            return Err(err(
                ErrorCode::Conflict,
                format!(
                    "{} credential(s) are published to '{name}': 'vault unpublish' them first, \
                     or 'vault remote rm {name} --force' to forget them here (the platform keeps \
                     its copies)",
                    bound.len()
                ),
            ));
        }
        self.store_mut()?.delete_remote(name).map_err(store_err)?;
        Ok(remote)
    }

    /// The envelope of a record's head, unless it is deleted.
    fn head_envelope(&self, head: &RecordRow) -> Result<Option<Envelope>> {
        if head.deleted {
            return Ok(None);
        }
        let body = decrypt_body(&self.session()?.key, head)?;
        Ok(envelope(&body).ok())
    }

    /// Says that another publication already holds `env`'s registry or
    /// endpoint, which the platform keys REGISTRY and DATA credentials by.
    fn held_by(&self, env: &Envelope, record_id: &str, remote: &str, remote_name: &str) -> String {
        let other = self.name_of(record_id).unwrap_or_else(|| "?".into());
        let what = if env.cred_type == "REGISTRY" {
            "registry"
        } else {
            "endpoint"
        };
        format!(
            "{other} is already published to '{remote}' as '{remote_name}' for {what} {}: the \
             platform keeps one {} credential per {what}",
            env.profile, env.cred_type
        )
    }

    /// Binds `name` to `remote` as `remote_name`, after checking the
    /// platform's rules; the push is queued.
    pub fn publish(
        &mut self,
        name: &str,
        remote: &str,
        remote_name: Option<&str>,
    ) -> Result<PubRow> {
        self.remote(remote)?;
        let (row, body) = self.load(name)?;
        let remote_name = remote_name.unwrap_or(name);
        check_remote_name(remote_name).map_err(|e| err(ErrorCode::Usage, e))?;
        let env = envelope(&body).map_err(|e| {
            err(
                ErrorCode::Usage,
                format!("{name} cannot be published to '{remote}': {e}"),
            )
        })?;
        let existing = self
            .store()?
            .publications(Some(remote))
            .map_err(store_err)?;
        for p in existing.iter().filter(|p| !p.unpublish) {
            if p.remote_name == remote_name && p.record_id != row.id {
                let other = self.name_of(&p.record_id).unwrap_or_else(|| "?".into());
                return Err(err(
                    ErrorCode::AlreadyExists,
                    format!(
                        "'{remote_name}' on '{remote}' is already published from {other}: \
                         'vault unpublish {other} --from {remote}' first, or publish under \
                         another name with --as"
                    ),
                ));
            }
            if env.cred_type == "GENERIC" || p.remote_name == remote_name {
                continue;
            }
            // What it is to send, and what the platform may still hold of
            // it (the two differ while a change is due or refused).
            let Some(head) = self.store()?.by_id(&p.record_id).map_err(store_err)? else {
                continue;
            };
            let theirs = [self.head_envelope(&head)?, self.held_envelope(p, &head)?];
            if theirs
                .iter()
                .flatten()
                .any(|t| t.cred_type == env.cred_type && t.profile == env.profile)
            {
                return Err(err(
                    ErrorCode::Conflict,
                    format!(
                        "{}; unpublish it first",
                        self.held_by(&env, &p.record_id, remote, &p.remote_name)
                    ),
                ));
            }
        }
        // What the platform holds under that name stays known, also when
        // it was another credential's that is still being unpublished (the
        // next push deletes it first).
        let previous = existing.into_iter().find(|p| p.remote_name == remote_name);
        let publication = PubRow {
            remote: remote.to_owned(),
            remote_name: remote_name.to_owned(),
            record_id: row.id.clone(),
            cred_type: env.cred_type.to_owned(),
            queued_at: now_ms(),
            // Publishing again retries a refusal; what the platform holds
            // of this same credential stays known.
            pushed_revision: previous
                .as_ref()
                .filter(|p| p.record_id == row.id)
                .and_then(|p| p.pushed_revision),
            present: previous.map_or(Presence::Absent, |p| p.present),
            unpublish: false,
            failed_revision: None,
            error: None,
        };
        self.store_mut()?
            .put_publication(&publication)
            .map_err(store_err)?;
        info!(record = %row.id, remote = %remote, "publication queued");
        Ok(publication)
    }

    /// Queues the deletion of `name`'s publications (to `remote` only, when
    /// given).
    pub fn unpublish(&mut self, name: &str, remote: Option<&str>) -> Result<Vec<PubRow>> {
        let row = self.find_any(name)?;
        let mut done = Vec::new();
        for mut p in self.store()?.publications(remote).map_err(store_err)? {
            if p.record_id != row.id {
                continue;
            }
            p.unpublish = true;
            p.queued_at = now_ms();
            self.store_mut()?.put_publication(&p).map_err(store_err)?;
            done.push(p);
        }
        if done.is_empty() {
            return Err(err(
                ErrorCode::NotFound,
                format!(
                    "{name} is not published{}: see 'vault remote status REMOTE'",
                    remote.map(|r| format!(" to '{r}'")).unwrap_or_default()
                ),
            ));
        }
        Ok(done)
    }

    /// Where a record is published, as `'remote name' on remote`.
    pub(super) fn published_as(&self, record_id: &str) -> Result<Vec<String>> {
        Ok(self
            .store()?
            .publications(None)
            .map_err(store_err)?
            .into_iter()
            .filter(|p| p.record_id == record_id && !p.unpublish)
            .map(|p| format!("'{}' on {}", p.remote_name, p.remote))
            .collect())
    }

    /// The due publications of `remote`, oldest first, each with what to
    /// send. Publications whose credential no longer fits the platform's
    /// rules are marked refused here, without a request, and so are those
    /// that changed onto a registry or endpoint another publication holds
    /// (the platform would replace that one); changes that leave what the
    /// platform holds as it is (a rename, a tag) are marked done.
    pub fn plan(&mut self, remote: &str) -> Result<Vec<Job>> {
        let (mut due, settled) = self.due(remote)?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        due.sort_by_key(|(order, p, _)| (*order, p.queued_at));
        // The registry or endpoint each publication holds on the platform
        // (what it last sent); `open` while it is due and not yet planned.
        let mut held = Vec::new();
        // A GENERIC publication holds no scope: no need to decrypt what it
        // last sent (a pass would otherwise decrypt every settled one).
        for (p, head) in settled.iter().filter(|(p, _)| p.cred_type != "GENERIC") {
            self.claim(&mut held, p, head, false)?;
        }
        for (_, p, head) in &due {
            if let Some(head) = head {
                self.claim(&mut held, p, head, true)?;
            }
        }
        let mut work: VecDeque<(PubRow, Option<RecordRow>, bool)> = due
            .into_iter()
            .map(|(_, p, head)| (p, head.filter(|h| !h.deleted), false))
            .collect();
        let mut jobs = Vec::new();
        while let Some((p, head, deferred)) = work.pop_front() {
            let key = PubKey {
                remote: p.remote.clone(),
                remote_name: p.remote_name.clone(),
                record_id: p.record_id.clone(),
                queued_at: p.queued_at,
            };
            let Some(head) = head.filter(|_| !p.unpublish) else {
                // Going: what it holds is free for the jobs after this.
                held.retain(|c| c.remote_name != p.remote_name);
                if p.present == Presence::Absent {
                    // Nothing of it on the platform: nothing to delete
                    // (and a name there is someone else's).
                    self.publish_deleted(&key)?;
                } else {
                    jobs.push(Job {
                        key,
                        op: JobOp::Delete,
                    });
                }
                continue;
            };
            match self.plan_put(remote, key, p, head, deferred, &mut held)? {
                Planned::Job(job) => jobs.push(job),
                Planned::After(p, head) => work.push_back((p, Some(head), true)),
                Planned::Nothing => {}
            }
        }
        Ok(jobs)
    }

    /// The publications of `remote` that are due, each with when it became
    /// due and its record's head (even if deleted), and those that are not
    /// (sent and current, or refused), which keep what they hold.
    fn due(&self, remote: &str) -> Result<(Vec<Due>, Vec<Settled>)> {
        let mut due: Vec<Due> = Vec::new();
        // Not due (sent and current, or refused): they keep what they hold.
        let mut settled: Vec<Settled> = Vec::new();
        for p in self
            .store()?
            .publications(Some(remote))
            .map_err(store_err)?
        {
            let head = self.store()?.by_id(&p.record_id).map_err(store_err)?;
            let live = head.as_ref().filter(|h| !h.deleted);
            let current = |h: &RecordRow| {
                p.pushed_revision == Some(h.revision) && p.present == Presence::Present
            };
            // When it became due: the publication's own time, or the
            // change's (its clock has milliseconds; older rows have only
            // the second).
            let changed = |h: &RecordRow| -> Result<i64> {
                let rank = self.store()?.head_rank(&h.id).map_err(store_err)?;
                Ok(rank.map_or(h.updated_at * 1000, |r| (r.rank.clock >> 16) as i64))
            };
            let order = match live {
                _ if p.unpublish => p.queued_at,
                None => head.as_ref().map_or(Ok(p.queued_at), changed)?,
                Some(h) if p.failed_revision == Some(h.revision) || current(h) => {
                    settled.push((p.clone(), h.clone()));
                    continue;
                }
                Some(h) => p.queued_at.max(changed(h)?),
            };
            due.push((order, p, head));
        }
        Ok((due, settled))
    }

    /// Plans sending the live `head` for `p`: a job, a refusal or nothing
    /// to send (marked here), or "after its holder" when the registry or
    /// endpoint it moves to is held by a publication also due.
    fn plan_put(
        &mut self,
        remote: &str,
        key: PubKey,
        p: PubRow,
        head: RecordRow,
        deferred: bool,
        held: &mut Vec<Claim>,
    ) -> Result<Planned> {
        let sess_key = &self.session()?.key;
        let body = decrypt_body(sess_key, &head)?;
        let env = match envelope(&body) {
            Ok(env) => env,
            Err(why) => {
                self.publish_refused(&key, p.present, head.revision, &why)?;
                settle(held, &p.remote_name);
                return Ok(Planned::Nothing);
            }
        };
        let holder = held.iter().find(|c| {
            env.cred_type != "GENERIC"
                && c.cred_type == env.cred_type
                && c.profile == env.profile
                && c.remote_name != p.remote_name
        });
        if let Some(c) = holder {
            if c.open && !deferred {
                // Its holder is due too and may move away: plan this
                // after it.
                return Ok(Planned::After(p, head));
            }
            let why = format!(
                "{}; change it back, or unpublish the other and publish this one again",
                self.held_by(&env, &c.record_id, remote, &c.remote_name)
            );
            self.publish_refused(&key, p.present, head.revision, &why)?;
            settle(held, &p.remote_name);
            return Ok(Planned::Nothing);
        }
        // From here it holds the new one (jobs run in order).
        held.retain(|c| c.remote_name != p.remote_name);
        if env.cred_type != "GENERIC" {
            held.push(Claim {
                cred_type: env.cred_type,
                profile: env.profile.clone(),
                remote_name: p.remote_name.clone(),
                record_id: p.record_id.clone(),
                open: false,
            });
        }
        let old = self.pushed_envelope(&p, &head)?;
        let same = old
            .as_ref()
            .is_some_and(|o| o.body.expose_secret() == env.body.expose_secret());
        if same && p.present == Presence::Present {
            self.publish_done(&key, head.revision)?;
            return Ok(Planned::Nothing);
        }
        // A scope or endpoint change moves the credential on the
        // platform, which keys REGISTRY and DATA by it.
        let moved = old.as_ref().is_none_or(|o| o.profile != env.profile);
        let delete_first = match p.present {
            Presence::Absent => false,
            Presence::Unknown => true,
            Presence::Present => env.cred_type == "GENERIC" || moved,
        };
        Ok(Planned::Job(Job {
            key,
            op: JobOp::Put {
                revision: head.revision,
                body: env.body,
                delete_first,
                ours: p.pushed_revision.is_some() || p.present != Presence::Absent,
                present: p.present,
                profile: (env.cred_type != "GENERIC").then(|| env.profile.clone()),
            },
        }))
    }

    /// The envelope of the revision last sent for `p` (`head` is its
    /// record's head), whether or not the platform still holds it.
    fn pushed_envelope(&self, p: &PubRow, head: &RecordRow) -> Result<Option<Envelope>> {
        let Some(revision) = p.pushed_revision else {
            return Ok(None);
        };
        let Some(ct) = self
            .store()?
            .revision_body(&head.id, revision)
            .map_err(store_err)?
        else {
            return Ok(None);
        };
        let row = RecordRow {
            body: ct,
            ..head.clone()
        };
        Ok(decrypt_body(&self.session()?.key, &row)
            .ok()
            .and_then(|b| envelope(&b).ok()))
    }

    /// What the platform may hold of `p`: what it last sent, unless
    /// nothing is there.
    fn held_envelope(&self, p: &PubRow, head: &RecordRow) -> Result<Option<Envelope>> {
        if p.present == Presence::Absent {
            return Ok(None);
        }
        self.pushed_envelope(p, head)
    }

    /// Adds the registry or endpoint `p` holds on the platform to `held`.
    fn claim(&self, held: &mut Vec<Claim>, p: &PubRow, head: &RecordRow, open: bool) -> Result<()> {
        if let Some(env) = self.held_envelope(p, head)?
            && env.cred_type != "GENERIC"
        {
            held.push(Claim {
                cred_type: env.cred_type,
                profile: env.profile,
                remote_name: p.remote_name.clone(),
                record_id: p.record_id.clone(),
                open,
            });
        }
        Ok(())
    }

    /// One publication as stored.
    pub fn publication_row(&self, remote: &str, remote_name: &str) -> Result<Option<PubRow>> {
        self.store()?
            .publication(remote, remote_name)
            .map_err(store_err)
    }

    /// Fails when locked.
    pub fn check_unlocked(&self) -> Result<()> {
        self.session().map(|_| ())
    }

    /// The platform now holds `revision`.
    pub fn publish_done(&mut self, key: &PubKey, revision: u64) -> Result<()> {
        let store = self.store_mut()?;
        store
            .set_presence(&key.remote, &key.remote_name, Presence::Present)
            .map_err(store_err)?;
        store
            .mark_publication(key, Some(revision), None)
            .map_err(store_err)
    }

    /// What the platform holds under the name changed (deleted for an
    /// update, or a request's answer was lost).
    pub fn publish_presence(&mut self, key: &PubKey, present: Presence) -> Result<()> {
        self.store_mut()?
            .set_presence(&key.remote, &key.remote_name, present)
            .map_err(store_err)
    }

    /// The platform refused `revision` (4xx): kept, with its message, until
    /// the credential changes or is published again. `present`: what the
    /// platform holds under the name after it.
    pub fn publish_refused(
        &mut self,
        key: &PubKey,
        present: Presence,
        revision: u64,
        message: &str,
    ) -> Result<()> {
        let Some(p) = self.publication_row(&key.remote, &key.remote_name)? else {
            return Ok(());
        };
        let sealed = self.seal(message)?;
        let store = self.store_mut()?;
        store
            .set_presence(&key.remote, &key.remote_name, present)
            .map_err(store_err)?;
        store
            .mark_publication(key, p.pushed_revision, Some((revision, sealed)))
            .map_err(store_err)
    }

    /// Deleted on the platform: the publication is gone.
    pub fn publish_deleted(&mut self, key: &PubKey) -> Result<()> {
        self.store_mut()?.delete_publication(key).map_err(store_err)
    }

    /// Makes publications the platform lacks due again (`publish
    /// --repair`), and retries refused ones (what the platform holds of
    /// those stays known, so a retry never deletes a working copy first).
    pub fn publish_again(&mut self, remote: &str, missing: &[String]) -> Result<()> {
        for p in self
            .store()?
            .publications(Some(remote))
            .map_err(store_err)?
        {
            if p.unpublish {
                continue;
            }
            let gone = missing.contains(&p.remote_name);
            if !gone && p.failed_revision.is_none() {
                continue;
            }
            let key = PubKey {
                remote: p.remote.clone(),
                remote_name: p.remote_name.clone(),
                record_id: p.record_id.clone(),
                queued_at: p.queued_at,
            };
            let store = self.store_mut()?;
            if gone {
                store
                    .set_presence(remote, &p.remote_name, Presence::Absent)
                    .map_err(store_err)?;
            }
            let pushed = if gone { None } else { p.pushed_revision };
            store
                .mark_publication(&key, pushed, None)
                .map_err(store_err)?;
        }
        Ok(())
    }

    /// Publications (to `remote`, or all) as users see them. The
    /// platform's messages are read only while unlocked.
    pub fn publications(&self, remote: Option<&str>) -> Result<Vec<PublicationInfo>> {
        let rows = self.store()?.publications(remote).map_err(store_err)?;
        self.describe(rows)
    }

    /// Describes publication rows.
    pub fn describe(&self, rows: Vec<PubRow>) -> Result<Vec<PublicationInfo>> {
        let mut out = Vec::with_capacity(rows.len());
        let names = self.names_by_id();
        for p in rows {
            let head = self.store()?.by_id(&p.record_id).map_err(store_err)?;
            let revision = head.as_ref().filter(|h| !h.deleted).map(|h| h.revision);
            let state = match revision {
                _ if p.unpublish => PublishState::Unpublishing,
                None => PublishState::Unpublishing,
                Some(r) if p.failed_revision == Some(r) => PublishState::Failed,
                Some(r) if p.pushed_revision == Some(r) && p.present == Presence::Present => {
                    PublishState::Published
                }
                Some(_) if p.present != Presence::Present && p.pushed_revision.is_some() => {
                    PublishState::Missing
                }
                Some(_) => PublishState::Pending,
            };
            let error = match &p.error {
                Some(ct) if state == PublishState::Failed => self.unseal(ct),
                _ => None,
            };
            out.push(PublicationInfo {
                name: names.get(&p.record_id).cloned(),
                remote: p.remote,
                remote_name: p.remote_name,
                cred_type: p.cred_type,
                state,
                error,
                pushed_revision: p.pushed_revision,
            });
        }
        Ok(out)
    }

    /// Ids of records a platform refused (for `list`'s STATUS).
    pub fn refused_records(&self) -> std::collections::BTreeSet<String> {
        let Ok(store) = self.store() else {
            return Default::default();
        };
        let rows = store.publications(None).unwrap_or_default();
        rows.into_iter()
            .filter(|p| p.failed_revision.is_some() && !p.unpublish)
            .filter(|p| {
                store
                    .by_id(&p.record_id)
                    .ok()
                    .flatten()
                    .is_some_and(|h| Some(h.revision) == p.failed_revision)
            })
            .map(|p| p.record_id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(kind: CredentialType, fields: &[(&str, &str)]) -> RecordBody {
        RecordBody::for_test("x", kind, fields)
    }

    #[test]
    fn a_remote_of_an_unknown_kind_is_refused_never_taken_for_osmo_but_can_be_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = vault_protocol::paths::VaultPaths::under_home(tmp.path());
        let mut e = Engine::open(paths, crate::config::Config::default()).unwrap();
        let now = Timestamp(1_000);
        e.init(&SecretValue::from("pw"), now).unwrap();
        let token = SecretValue::from("t");
        let mut row = e
            .save_remote("p", RemoteKind::Osmo, "http://127.0.0.1:1", &token, now)
            .unwrap();
        assert_eq!(e.remote("p").unwrap().1, RemoteKind::Osmo);
        // As a newer vault would have written it.
        row.kind = "nomad".into();
        e.store_mut().unwrap().put_remote(&row).unwrap();
        let refused = e.remote("p").unwrap_err();
        assert_eq!(refused.code, ErrorCode::Failed);
        assert!(
            refused.message.contains("kind 'nomad'"),
            "{}",
            refused.message
        );
        assert!(refused.message.contains("vault remote rm p --force"));
        assert_eq!(remote_kind(&row).unwrap_err().code, ErrorCode::Failed);
        e.remove_remote("p", false).unwrap();
        assert_eq!(e.remote("p").unwrap_err().code, ErrorCode::NotFound);
    }

    fn json_of(e: &Envelope) -> Value {
        serde_json::from_str(e.body.expose_secret()).unwrap()
    }

    #[test]
    fn envelopes_are_exactly_what_the_platform_takes() {
        let reg = envelope(&body(
            CredentialType::Registry,
            &[
                ("registry", "https://NVCR.io/"),
                ("username", "$oauthtoken"),
                ("auth", "s"),
                ("refresh_command", "x"),
            ],
        ))
        .unwrap();
        assert_eq!(reg.cred_type, "REGISTRY");
        assert_eq!(reg.profile, "nvcr.io");
        assert_eq!(
            json_of(&reg),
            json!({"registry_credential": {"registry": "nvcr.io", "username": "$oauthtoken", "auth": "s"}})
        );
        let data = envelope(&body(
            CredentialType::Data,
            &[
                ("endpoint", "s3://bucket/"),
                ("access_key_id", "AK"),
                ("access_key", "s"),
                ("override_url", "http://minio:9000"),
                ("addressing_style", "path"),
            ],
        ))
        .unwrap();
        assert_eq!(data.profile, "s3://bucket");
        assert_eq!(
            json_of(&data),
            json!({"data_credential": {"endpoint": "s3://bucket", "access_key_id": "AK", "access_key": "s", "override_url": "http://minio:9000", "addressing_style": "path"}})
        );
        let tok = envelope(&body(
            CredentialType::Token,
            &[("token", "t"), ("env", "GH_TOKEN")],
        ))
        .unwrap();
        assert_eq!(
            json_of(&tok),
            json!({"generic_credential": {"credential": {"token": "t"}}})
        );
        // A typed record's seed stays home; a generic record's `otp` is its
        // own key.
        let with_seed = envelope(&body(
            CredentialType::Password,
            &[
                ("username", "u"),
                ("password", "p"),
                ("otp", "JBSWY3DPEHPK3PXP"),
            ],
        ))
        .unwrap();
        assert!(!json_of(&with_seed).to_string().contains("JBSW"));
        let generic = envelope(&body(CredentialType::Generic, &[("otp", "x")])).unwrap();
        assert_eq!(
            json_of(&generic),
            json!({"generic_credential": {"credential": {"otp": "x"}}})
        );
    }

    #[test]
    fn the_platform_rules_are_checked_before_queueing() {
        assert!(envelope(&body(CredentialType::Aws, &[])).is_err());
        let bad_key = envelope(&body(CredentialType::Generic, &[("A KEY", "v")]));
        assert!(bad_key.unwrap_err().contains("Kubernetes"));
        for ok in ["a", "ab-c_d9", "Z9"] {
            check_remote_name(ok).unwrap();
        }
        for bad in ["1abc", "a-", "a.b", "", "-a", "a b"] {
            assert!(check_remote_name(bad).is_err(), "{bad}");
        }
        assert_eq!(registry_scope(""), "registry-1.docker.io");
        assert_eq!(registry_scope("docker.io"), "registry-1.docker.io");
        assert_eq!(registry_scope("ghcr.io/org"), "ghcr.io/org");
        assert_eq!(
            registry_scope("docker.io/library"),
            "registry-1.docker.io/library"
        );
        for same in [
            "registry.example.com/team",
            "registry.example.com:443/team",
            "https://registry.example.com:443/team/",
            "Registry.Example.com:443/team",
        ] {
            assert_eq!(registry_scope(same), "registry.example.com/team", "{same}");
        }
        assert_eq!(registry_scope("localhost:5000"), "localhost:5000");
        assert_eq!(registry_scope("quay.io:4430"), "quay.io:4430");
        for ok in ["other.key", "1st", "a-b_c"] {
            check_generic_key(ok).unwrap();
        }
    }
}
