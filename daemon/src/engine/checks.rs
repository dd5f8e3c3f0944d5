//! Health checks (`vault check`, docs/lifecycle.md): what each record's
//! check asks of its own service, and the last result of each, kept in
//! the `checks` table (local, never synced; what the service said is
//! sealed to the vault key).

use std::collections::{BTreeMap, HashMap};

use vault_protocol::credential::{CHECK_COMMAND, REFRESH_COMMAND, is_env_name};
use vault_protocol::message::{CheckMark, CheckOutcome, CheckResult, FailedCheck};
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{CredentialType, SecretValue};

use super::refresh::endpoint_for;
use super::{Engine, GCP_IAM_ENDPOINT as IAM_ENDPOINT, Result, store_err};
use crate::store::CheckRow;

/// What to ask, with the values the question needs. Values stay
/// [`SecretValue`]s: `Debug` never shows them.
#[derive(Debug)]
pub enum Probe {
    /// STS `GetCallerIdentity` signed with the keys.
    Aws {
        /// Where to send it (HTTPS, or HTTP on loopback).
        endpoint: String,
        /// The signing region.
        region: String,
        /// The access key id.
        access_key_id: String,
        /// The secret key.
        secret_access_key: SecretValue,
        /// The session token of temporary keys.
        session_token: Option<SecretValue>,
    },
    /// A GET of the token's own `url` with it as the bearer.
    Bearer {
        /// The record's `url`.
        url: String,
        /// The token.
        token: SecretValue,
    },
    /// The registry's `/v2/` with the login (basic, or the token service
    /// its challenge names).
    Registry {
        /// `host[:port]`.
        registry: String,
        /// The user.
        username: String,
        /// The password or token.
        password: SecretValue,
    },
    /// A generic record's `check_command` (sh -c), its other keys in the
    /// environment; exit 0 is ok.
    Command {
        /// The command.
        command: String,
        /// The record's keys that are variable names, with their values.
        env: Vec<(String, SecretValue)>,
    },
    /// S3 `ListObjectsV2` (at most one key) on the bucket, signed with the
    /// keys: an S3-compatible `data` record (s3, tos, gs HMAC).
    Bucket {
        /// The service's origin (`https://host[:port]`).
        origin: String,
        /// The bucket.
        bucket: String,
        /// Virtual-hosted (`bucket.host`) rather than path style.
        virtual_host: bool,
        /// The signing region.
        region: String,
        /// The access key id.
        access_key_id: String,
        /// The secret key.
        secret_access_key: SecretValue,
    },
    /// An OAuth2 token minted from a service-account key (docs/gcp.md);
    /// the token itself is dropped.
    Gcp {
        /// The key file's JSON.
        json: SecretValue,
        /// An issuer credential's `issuer` and `issuer_key`.
        issuer: Option<(String, SecretValue)>,
        /// `[gcp] token_uris` of this machine.
        token_uris: Vec<String>,
        /// The account it acts as (`impersonate`), if any.
        impersonate: Option<String>,
        /// IAM Credentials' URL, where it acts as another account.
        iam_endpoint: String,
    },
    /// Nothing to ask; why.
    Skip(String),
    /// Cannot be asked; why (a failure).
    Fail(String),
}

/// One record to check.
#[derive(Debug)]
pub struct Target {
    /// Listed name.
    pub name: String,
    /// Record id.
    pub id: String,
    /// The revision checked.
    pub revision: u64,
    /// Type.
    pub kind: CredentialType,
    /// What to ask.
    pub probe: Probe,
}

/// A field's value, taken out of the body; `None` when empty.
fn take(fields: &mut BTreeMap<String, SecretValue>, f: &str) -> Option<SecretValue> {
    fields.remove(f).filter(|v| !v.is_empty())
}

/// [`take`] for a field that is not secret.
fn take_text(fields: &mut BTreeMap<String, SecretValue>, f: &str) -> Option<String> {
    take(fields, f).map(|v| v.expose_secret().to_owned())
}

/// The S3 call that checks a `data` record, or why there is none.
fn data_probe(name: &str, fields: &mut BTreeMap<String, SecretValue>) -> Probe {
    let endpoint = take_text(fields, "endpoint").unwrap_or_default();
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("", ""));
    let bucket = rest.split('/').next().unwrap_or("").to_owned();
    let region = take_text(fields, "region");
    let override_url = take_text(fields, "override_url");
    let style = take_text(fields, "addressing_style");
    if let Some(Err(why)) = region.as_deref().map(super::refresh::check_region) {
        return Probe::Fail(why);
    }
    let origin = match (scheme, override_url, region.as_deref()) {
        ("s3" | "tos" | "gs", Some(url), _) => url.trim_end_matches('/').to_owned(),
        ("s3", None, Some(r)) => format!("https://s3.{r}.amazonaws.com"),
        ("s3", None, None) => "https://s3.amazonaws.com".to_owned(),
        ("tos", None, Some(r)) => format!("https://tos-s3-{r}.volces.com"),
        ("gs", None, _) => "https://storage.googleapis.com".to_owned(),
        ("tos", None, None) => {
            return Probe::Fail(format!(
                "'{name}' names no region: 'vault set {name} region=…' says which TOS endpoint"
            ));
        }
        (other, ..) => return Probe::Skip(format!("no check for {other}:// storage yet")),
    };
    let (Some(access_key_id), Some(secret_access_key)) = (
        take_text(fields, "access_key_id"),
        take(fields, "access_key"),
    ) else {
        return Probe::Fail(format!("'{name}' lacks its keys"));
    };
    // Path style where asked, and for an endpoint on loopback (a local
    // emulator), which has no per-bucket host names.
    let virtual_host = match style.as_deref() {
        Some("virtual") => true,
        Some("path") => false,
        _ => !origin.contains("://127.") && !origin.contains("://localhost"),
    };
    Probe::Bucket {
        origin,
        bucket,
        virtual_host,
        region: region.unwrap_or_else(|| "us-east-1".into()),
        access_key_id,
        secret_access_key,
    }
}

impl Engine {
    /// The names a check of `names` covers: all records when empty, else
    /// each one asked (unknown names fail the request).
    pub fn check_names(&self, names: &[String]) -> Result<Vec<String>> {
        let sess = self.session()?;
        if names.is_empty() {
            return Ok(sess.index.keys().cloned().collect());
        }
        for name in names {
            if !sess.index.contains_key(name) {
                return Err(super::not_found(name));
            }
        }
        let mut out = names.to_vec();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Of `names`, those of `kind`.
    pub fn of_kind(&self, names: &[String], kind: CredentialType) -> Vec<String> {
        let Ok(sess) = self.session() else {
            return Vec::new();
        };
        names
            .iter()
            .filter(|n| sess.index.get(*n).is_some_and(|e| e.kind == kind))
            .cloned()
            .collect()
    }

    /// What to ask for each of `names` (from [`Engine::check_names`]).
    pub fn check_targets(&self, names: &[String]) -> Result<Vec<Target>> {
        names
            .iter()
            .map(|name| {
                let (row, body) = match self.load(name) {
                    Ok(loaded) => loaded,
                    // One unreadable record fails its own check, not all.
                    Err(e) => {
                        let entry = self
                            .session()?
                            .index
                            .get(name)
                            .ok_or_else(|| super::not_found(name))?;
                        return Ok(Target {
                            name: name.clone(),
                            id: entry.id.clone(),
                            revision: entry.revision,
                            kind: entry.kind,
                            probe: Probe::Fail(e.message),
                        });
                    }
                };
                let blocked = self.check_blocked(&row, &body);
                let kind = body.kind;
                let mut fields = body.fields;
                let probe = if let Some(why) = blocked {
                    Probe::Fail(why)
                } else {
                    match kind {
                        CredentialType::Aws => match (
                            take_text(&mut fields, "access_key_id"),
                            take(&mut fields, "secret_access_key"),
                        ) {
                            (Some(id), Some(secret)) => {
                                let region = take_text(&mut fields, "region");
                                match endpoint_for(
                                    take_text(&mut fields, "sts_endpoint").as_deref(),
                                    self.config().sts_endpoint.as_deref(),
                                    region.as_deref(),
                                ) {
                                    Ok(endpoint) => Probe::Aws {
                                        endpoint,
                                        region: region.unwrap_or_else(|| "us-east-1".into()),
                                        access_key_id: id,
                                        secret_access_key: secret,
                                        session_token: take(&mut fields, "session_token"),
                                    },
                                    Err(why) => Probe::Fail(why),
                                }
                            }
                            _ => Probe::Fail(format!(
                                "'{name}' has no keys yet; 'vault get {name}' says why"
                            )),
                        },
                        CredentialType::Token => {
                            match (take_text(&mut fields, "url"), take(&mut fields, "token")) {
                                (Some(url), Some(token)) => Probe::Bearer { url, token },
                                _ => Probe::Skip(format!(
                                    "no url to check it against; 'vault set {name} url=https://…' \
                                 names an endpoint that takes the token"
                                )),
                            }
                        }
                        CredentialType::Registry => {
                            match (
                                take_text(&mut fields, "registry"),
                                take_text(&mut fields, "username"),
                                take(&mut fields, "auth"),
                            ) {
                                (Some(registry), Some(username), Some(password)) => {
                                    Probe::Registry {
                                        registry,
                                        username,
                                        password,
                                    }
                                }
                                _ => Probe::Fail(format!("'{name}' lacks its login")),
                            }
                        }
                        CredentialType::Generic => match take_text(&mut fields, CHECK_COMMAND) {
                            Some(command) => Probe::Command {
                                command,
                                env: fields
                                    .into_iter()
                                    .filter(|(k, _)| is_env_name(k) && k != REFRESH_COMMAND)
                                    .collect(),
                            },
                            None => Probe::Skip(format!(
                                "no check_command; 'vault set {name} check_command=CMD' names \
                                 one that exits 0 when the values work"
                            )),
                        },
                        CredentialType::Data => data_probe(name, &mut fields),
                        CredentialType::Gcp => match take(&mut fields, "json") {
                            Some(json) => Probe::Gcp {
                                json,
                                issuer: take_text(&mut fields, vault_protocol::credential::ISSUER)
                                    .zip(take(&mut fields, vault_protocol::credential::ISSUER_KEY)),
                                token_uris: self.config().gcp_token_uris.clone(),
                                impersonate: take_text(
                                    &mut fields,
                                    vault_protocol::credential::IMPERSONATE,
                                ),
                                iam_endpoint: self
                                    .config()
                                    .gcp_iam_endpoint
                                    .clone()
                                    .unwrap_or_else(|| IAM_ENDPOINT.to_owned()),
                            },
                            None => Probe::Fail(format!("'{name}' has no json (the key file)")),
                        },
                        other => {
                            Probe::Skip(format!("no check for {} credentials yet", other.as_str()))
                        }
                    }
                };
                Ok(Target {
                    name: name.clone(),
                    id: row.id.clone(),
                    revision: row.revision,
                    kind,
                    probe,
                })
            })
            .collect()
    }

    /// The names due for a background check: never checked, or last
    /// checked `interval` or longer ago; not those found to have nothing
    /// to check at the revision in `nothing` (record id → revision).
    pub fn check_due(
        &self,
        interval: std::time::Duration,
        now: Timestamp,
        nothing: &HashMap<String, u64>,
    ) -> Vec<String> {
        let Ok(sess) = self.session() else {
            return Vec::new();
        };
        let last: HashMap<String, i64> = self
            .store()
            .ok()
            .and_then(|s| s.checks().ok())
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.record_id, c.checked_at))
            .collect();
        let every = interval.as_secs() as i64;
        sess.index
            .iter()
            .filter(|(_, e)| nothing.get(&e.id) != Some(&e.revision))
            .filter(|(_, e)| last.get(&e.id).is_none_or(|t| now.unix() - t >= every))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Keeps what was checked (skipped ones are not results) as each
    /// record's last check.
    pub fn record_checks(&mut self, done: &[(String, u64, CheckResult)]) -> Result<()> {
        let mut rows = Vec::new();
        for (id, revision, r) in done {
            if r.outcome == CheckOutcome::Skipped {
                continue;
            }
            rows.push(CheckRow {
                record_id: id.clone(),
                revision: *revision,
                checked_at: r.checked_at.unix(),
                ok: r.outcome == CheckOutcome::Ok,
                detail: self.seal(&r.detail)?,
            });
        }
        self.store_mut()?.put_checks(&rows).map_err(store_err)
    }

    /// Each record's last check, by record id, with the revision checked.
    pub fn check_marks(&self) -> HashMap<String, (u64, CheckMark)> {
        let Ok(store) = self.store() else {
            return HashMap::new();
        };
        store
            .checks()
            .unwrap_or_default()
            .into_iter()
            .map(|c| {
                let mark = CheckMark {
                    at: Timestamp(c.checked_at),
                    ok: c.ok,
                };
                (c.record_id, (c.revision, mark))
            })
            .collect()
    }

    /// The records whose last check, of their current revision, failed,
    /// for `vault status` and `vault doctor`.
    pub fn failed_checks(&self) -> Vec<FailedCheck> {
        let (Ok(sess), Ok(store)) = (self.session(), self.store()) else {
            return Vec::new();
        };
        let failed: HashMap<String, CheckRow> = store
            .checks()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| !c.ok)
            .map(|c| (c.record_id.clone(), c))
            .collect();
        if failed.is_empty() {
            return Vec::new();
        }
        sess.index
            .iter()
            .filter_map(|(name, e)| {
                let c = failed.get(&e.id).filter(|c| c.revision == e.revision)?;
                let why = self
                    .unseal(&c.detail)
                    .unwrap_or_else(|| "(unreadable)".into());
                Some(FailedCheck {
                    name: name.clone(),
                    checked_at: Timestamp(c.checked_at),
                    detail: why,
                })
            })
            .collect()
    }
}
