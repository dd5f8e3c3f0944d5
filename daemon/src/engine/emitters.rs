//! File bindings (docs/emit.md): the vault keeps a section of a file other tools
//! read in sync with a credential — an AWS profile (keys or
//! `credential_process`), a docker `auths`/`credHelpers` entry, or a whole
//! file (gcloud key, `file` credential). Every change to a bound record
//! re-renders its sections; a deleted or expired record's sections are
//! removed, so no tool is handed a dead key. Each read-merge-write holds an
//! advisory lock on the file, and the daemon's watch reports drift.

use std::collections::BTreeSet;
use std::path::Path;

use tracing::{info, warn};
use vault_protocol::credential::is_config_region;
use vault_protocol::message::EmitterKind;
use vault_protocol::message::{EmitState, EmitterInfo, Removed};
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{CredentialType, ErrorCode, WireError};

use super::sso_files;
use super::{Engine, Result, err, random_hex, store_err};
use crate::emit::aws_ini::{self, MergeError, OwnedKeys, Section};
use crate::emit::docker_json;
use crate::emit::kube_yaml::{self, ExecUser, KubeError};
use crate::fsutil;
use crate::record::RecordBody;
use crate::store::{EmitterRow, RecordRow};

/// The section of a whole-file binding: the whole file.
const WHOLE: &str = "(whole file)";

/// Where `vault emit aws` writes, and how (see `Engine::emit_aws`).
#[derive(Debug, Default)]
pub struct AwsTarget {
    /// Replace a section the user wrote (a backup is kept).
    pub force: bool,
    /// `credential_process` with this `vault` program instead of keys.
    pub process: Option<String>,
    /// With keys: the config file that gets the `region`.
    pub config: Option<String>,
    /// Take over the user's `[P]` of the credentials file (with `process`).
    pub adopt: bool,
}

/// Where `vault emit kube` writes, and what its user runs (see
/// `Engine::emit_kube`).
#[derive(Debug, Default)]
pub struct KubeTarget {
    /// The `users[].name` (`None`: `vault-NAME`).
    pub user: Option<String>,
    /// The absolute path of `vault`.
    pub program: String,
    /// aws: the EKS cluster.
    pub cluster: Option<String>,
    /// aws: its region (`None`: the credential's).
    pub region: Option<String>,
    /// gcp: OAuth scopes.
    pub scopes: Vec<String>,
    /// Replace a user the vault did not write (a backup is kept).
    pub force: bool,
}

/// Whether a `--force` write keeps a copy of what it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backup {
    /// The daemon keeps `FILE.vault-backup-TIME`.
    Keep,
    /// The caller kept one already.
    Kept,
}

/// The version of what a binding writes (`EmitterRow::rendering`): 2 added
/// `region` to an `aws-process` section. A binding of an older version is
/// compared with what that version wrote, and moved on by
/// `Engine::upgrade_renderings` where its file still holds exactly that.
const RENDERING: i64 = 2;

/// The credential's `region` as an AWS config file gets it.
enum Region {
    /// None (or empty): no line.
    None,
    /// One the file format cannot carry
    /// (`vault_protocol::credential::is_config_region`): no line, and the
    /// binding's state says why.
    Bad,
    /// One to write.
    Is(String),
}

impl Region {
    /// What to write: nothing for a bad one.
    fn value(self) -> Option<String> {
        match self {
            Region::Is(r) => Some(r),
            Region::None | Region::Bad => None,
        }
    }
}

/// The credential's `region`. Records arrive by sync from other devices,
/// so it is checked before it goes into a file other tools parse.
fn region_of(body: &RecordBody) -> Region {
    match body.fields.get("region").map(|v| v.expose_secret().trim()) {
        None | Some("") => Region::None,
        Some(v) if is_config_region(v) => Region::Is(v.to_owned()),
        Some(_) => Region::Bad,
    }
}

/// Why a bad region is not written. Never the value: it may come from
/// another device, and is not one.
fn bad_region(name: &str) -> String {
    format!(
        "the region of '{name}' is not a region name an AWS config file can carry (one word of \
         letters, digits, '.', '_' and '-'), so no region line is written: 'vault set {name} \
         region=eu-west-1' fixes it"
    )
}

/// The region a keys binding's config file should hold for `body` now:
/// none when the credential has none (or a bad one), or has expired.
fn wanted_region(body: &RecordBody, now: Timestamp) -> Option<String> {
    let live = body.expires_at.is_none_or(|t| t > now);
    if live { region_of(body).value() } else { None }
}

/// A profile's section in the config file: `[profile P]`, but `[default]`.
fn config_section(profile: &str) -> String {
    if profile == "default" {
        profile.to_owned()
    } else {
        format!("profile {profile}")
    }
}

fn owned_region(profile: &str, region: Option<String>, made: bool) -> OwnedKeys {
    OwnedKeys {
        section: config_section(profile),
        keys: vec![("region".to_owned(), region)],
        drop_empty: made,
    }
}

/// The top-level object of the docker config a docker binding writes in.
fn docker_object(kind: EmitterKind) -> &'static str {
    if kind == EmitterKind::DockerHelper {
        docker_json::CRED_HELPERS
    } else {
        docker_json::AUTHS
    }
}

/// The registry and entry a docker binding of `kind` writes for `body`;
/// `None` when it must go. A `credHelpers` entry names the helper, not a
/// key, so it stays when the credential expires: the helper itself refuses
/// an expired one.
fn docker_render(kind: EmitterKind, body: &RecordBody, now: Timestamp) -> Option<(String, String)> {
    if kind == EmitterKind::DockerHelper {
        let registry = body.fields.get("registry")?.expose_secret().to_owned();
        return Some((registry, docker_json::HELPER_ENTRY.to_owned()));
    }
    docker_entry(body, now)
}

/// The content a whole-file binding writes; `None` when it must go.
fn whole_content(
    engine: &Engine,
    kind: EmitterKind,
    program: Option<&str>,
    body: &RecordBody,
    now: Timestamp,
) -> Option<Vec<u8>> {
    if kind == EmitterKind::AwsSsoToken {
        return sso_files::token_json(body, now);
    }
    if body.expires_at.is_some_and(|t| t <= now) {
        return None;
    }
    if let (EmitterKind::Gcloud, Some(program)) = (kind, program) {
        // An issuer's external_account file; one that can no longer be
        // written (its key or an allowed endpoint gone) is taken out.
        return external_content(engine, body, program).ok();
    }
    let field = if kind == EmitterKind::Gcloud {
        "json"
    } else {
        "content"
    };
    body.fields
        .get(field)
        .map(|v| v.expose_secret().as_bytes().to_vec())
}

/// The `external_account` file of issuer credential `body`, whose
/// executable is `program` (`vault emit gcloud --external-account`).
fn external_content(
    engine: &Engine,
    body: &RecordBody,
    program: &str,
) -> std::result::Result<Vec<u8>, String> {
    super::wif_file::external_account_file(
        engine,
        &body.name,
        body.fields.get("json").map(|j| j.expose_secret()),
        body.fields
            .contains_key(vault_protocol::credential::ISSUER_KEY),
        program,
    )
}

/// The `auths` entry of a registry credential: its registry and the entry
/// JSON; `None` when expired.
fn docker_entry(body: &RecordBody, now: Timestamp) -> Option<(String, String)> {
    use base64::Engine as _;
    if body.expires_at.is_some_and(|t| t <= now) {
        return None;
    }
    let get = |f: &str| {
        body.fields
            .get(f)
            .map(|v| v.expose_secret())
            .unwrap_or_default()
    };
    let pair = zeroize::Zeroizing::new(format!("{}:{}", get("username"), get("auth")));
    let encoded =
        zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()));
    Some((
        get("registry").to_owned(),
        docker_json::auth_entry(&encoded),
    ))
}

/// `~/x` with the daemon's HOME.
fn expand_home(path: &str) -> String {
    match (path.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) if !home.is_empty() => format!("{home}/{rest}"),
        _ => path.to_owned(),
    }
}

/// A path for a `credential_process` line, which botocore splits like a
/// shell: quoted when it has spaces or quotes.
fn shell_word(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+@:".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// What binding `e` puts in its file for the record `name` with `body`;
/// `None` when its section must go (an expired key is never handed out).
/// A region the file cannot carry gets no line (`vault emit list` says
/// why); it never keeps the rest of the section from being written.
fn render(e: &EmitterRow, name: &str, body: &RecordBody, now: Timestamp) -> Option<Section> {
    match (e.kind, &e.program) {
        // credential_process names the credential; `vault aws-process`
        // itself refuses an expired one with a message the SDK shows.
        (EmitterKind::AwsProcess, Some(program)) => {
            let mut entries = vec![(
                "credential_process".to_owned(),
                format!("{} aws-process {name}", shell_word(program)),
            )];
            if e.rendering >= 2
                && let Region::Is(region) = region_of(body)
            {
                entries.push(("region".to_owned(), region));
            }
            Some(Section {
                name: e.section.clone(),
                entries,
            })
        }
        // The aws CLI's SSO profile or session: no secret, never expires
        // (the token file does).
        (EmitterKind::AwsSso, _) => Some(Section {
            name: e.section.clone(),
            entries: if sso_files::session_of_section(&e.section).is_some() {
                sso_files::session_entries(body)
            } else {
                sso_files::profile_entries(body, e.program.as_deref(), region_of(body).value())
            },
        }),
        _ => aws_section(&e.section, body, now),
    }
}

/// The profile section for an aws record, `None` when it cannot be used
/// (expired).
fn aws_section(profile: &str, body: &RecordBody, now: Timestamp) -> Option<Section> {
    if body.expires_at.is_some_and(|t| t <= now) {
        return None;
    }
    let mut entries = Vec::new();
    for (field, key) in [
        ("access_key_id", "aws_access_key_id"),
        ("secret_access_key", "aws_secret_access_key"),
        ("session_token", "aws_session_token"),
    ] {
        if let Some(v) = body.fields.get(field).filter(|v| !v.is_empty()) {
            entries.push((key.to_owned(), v.expose_secret().to_owned()));
        }
    }
    Some(Section {
        name: profile.to_owned(),
        entries,
    })
}

fn merge_error(path: &str, e: &MergeError) -> vault_protocol::WireError {
    let code = match e {
        MergeError::NotOwned { .. } => ErrorCode::Conflict,
        MergeError::BadValue { .. } => ErrorCode::Usage,
        MergeError::Unparseable { .. } => ErrorCode::Failed,
    };
    err(code, format!("{path}: {e}"))
}

/// A binding of `record_id` at `(path, section)`, in the current rendering
/// and with no config file of its own: a new one, or `existing` (the one
/// at that place) replaced.
fn new_row(
    existing: Option<EmitterRow>,
    record_id: String,
    kind: EmitterKind,
    (path, section): (String, String),
    program: Option<String>,
    now: Timestamp,
) -> EmitterRow {
    EmitterRow {
        id: existing.map_or_else(|| random_hex(6), |e| e.id),
        record_id,
        kind,
        path,
        section,
        program,
        created_at: now.unix(),
        config_path: None,
        config_region: false,
        config_made: false,
        rendering: RENDERING,
        exec_args: Vec::new(),
    }
}

/// A profile name the AWS files can carry, else what to use.
fn check_profile(profile: &str) -> Result<()> {
    if valid_profile(profile) {
        return Ok(());
    }
    Err(err(
        ErrorCode::Usage,
        format!("'{profile}' cannot be a profile name: use letters, digits and . _ - / @ +"),
    ))
}

fn valid_profile(profile: &str) -> bool {
    !profile.is_empty()
        && profile.len() <= 128
        && profile
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '[' | ']' | '#' | ';' | '='))
}

impl Engine {
    /// The first binding `pred` picks, if any.
    fn find_emitter(&self, pred: impl Fn(&EmitterRow) -> bool) -> Result<Option<EmitterRow>> {
        Ok(self
            .store()?
            .emitters()
            .map_err(store_err)?
            .into_iter()
            .find(|e| pred(e)))
    }

    /// Sections of `path` the vault writes (for docker configs, those of
    /// the one object `kind` writes in).
    fn owned_sections(&self, path: &str, kind: Option<EmitterKind>) -> Result<BTreeSet<String>> {
        Ok(self
            .store()?
            .emitters()
            .map_err(store_err)?
            .into_iter()
            .filter(|e| e.path == path && kind.is_none_or(|k| k == e.kind))
            .map(|e| e.section)
            .collect())
    }

    /// The record `name`, which must be of type `kind` for `emit WHAT`.
    fn load_as(
        &self,
        name: &str,
        kind: CredentialType,
        what: &str,
    ) -> Result<(RecordRow, RecordBody)> {
        let (row, body) = self.load(name)?;
        if body.kind != kind {
            return Err(err(
                ErrorCode::Usage,
                format!(
                    "'{name}' is a {} credential: emit {what} needs a {kind} one",
                    body.kind
                ),
            ));
        }
        Ok((row, body))
    }

    /// The files a record is emitted to, as `path [section]`.
    pub(super) fn emitted_to(&self, record_id: &str) -> Result<Vec<String>> {
        Ok(self
            .store()?
            .emitters()
            .map_err(store_err)?
            .into_iter()
            .filter(|e| e.record_id == record_id)
            .map(|e| format!("{} [{}]", e.path, e.section))
            .collect())
    }

    /// Records binding `emitter` (replacing one for the same place).
    fn bind(&mut self, emitter: EmitterRow, name: &str) -> Result<EmitterInfo> {
        self.store_mut()?.put_emitter(&emitter).map_err(store_err)?;
        info!(emitter = %emitter.id, record = %emitter.record_id, "emitting");
        Ok(info_of(&emitter, Some(name.to_owned()), EmitState::Ok))
    }

    /// Merges `sections` into / `remove` from the file and writes it.
    fn write_sections(
        &self,
        path: &str,
        sections: &[Section],
        remove: &BTreeSet<String>,
        force: bool,
        backup: Backup,
    ) -> Result<()> {
        let _lock = lock(path)?;
        let text = read_file(path)?;
        let owned = self.owned_sections(path, None)?;
        let merged = aws_ini::merge(&text, sections, remove, &owned, force)
            .map_err(|e| merge_error(path, &e))?;
        if merged == text {
            return Ok(());
        }
        let taken = sections.iter().any(|s| !owned.contains(&s.name))
            && aws_ini::section_names(&text)
                .is_ok_and(|names| sections.iter().any(|s| names.contains(&s.name)));
        if force && taken && backup == Backup::Keep {
            keep_backup(path, &text)?;
        }
        write_file(path, merged.as_bytes())
    }

    /// Merges a registry entry of a `kind` binding into / out of a docker
    /// config and writes it.
    /// With `adopt`, the user's `auths` entry of the registry set goes in
    /// the same write (no backup: the caller kept one).
    fn write_docker(
        &self,
        path: &str,
        kind: EmitterKind,
        set: Option<(String, String)>,
        remove: &BTreeSet<String>,
        force: bool,
        adopt: bool,
    ) -> Result<()> {
        let _lock = lock(path)?;
        let text = read_file(path)?;
        let owned = self.owned_sections(path, Some(kind))?;
        let entries: Vec<(String, String)> = set.into_iter().collect();
        let object = docker_object(kind);
        let merge_error = |object: &str, e: docker_json::DockerError| {
            let code = match e {
                docker_json::DockerError::NotOwned(_) => ErrorCode::Conflict,
                docker_json::DockerError::Unparseable(_) => ErrorCode::Failed,
            };
            err(code, format!("{path}: {object} {e}"))
        };
        let mut merged = docker_json::merge_in(&text, object, &entries, remove, &owned, force)
            .map_err(|e| merge_error(object, e))?;
        if adopt {
            let theirs: BTreeSet<String> = entries.iter().map(|(r, _)| r.clone()).collect();
            merged =
                docker_json::merge_in(&merged, docker_json::AUTHS, &[], &theirs, &theirs, false)
                    .map_err(|e| merge_error(docker_json::AUTHS, e))?;
        }
        if merged == text {
            return Ok(());
        }
        let taken = entries.iter().any(|(r, _)| !owned.contains(r)) && !text.is_empty();
        if force && taken && !adopt {
            keep_backup(path, &text)?;
        }
        write_file(path, merged.as_bytes())
    }

    /// `vault emit aws NAME --profile P`: writes the profile now and keeps
    /// it in sync from then on. With keys (no `process`), `config` is the
    /// config file whose `[profile P]` gets the credential's `region`.
    /// Adopting (`vault import aws --adopt`) puts `credential_process` in
    /// `[P]` of the shared-credentials file itself, in place of the user's
    /// section there (SDKs read a profile from both files, the credentials
    /// file first), without a backup: the CLI kept one.
    pub fn emit_aws(
        &mut self,
        name: &str,
        profile: &str,
        path: &str,
        target: AwsTarget,
        now: Timestamp,
    ) -> Result<EmitterInfo> {
        let AwsTarget {
            force,
            process,
            config,
            adopt,
        } = target;
        if adopt && process.is_none() {
            return Err(err(
                ErrorCode::Usage,
                "adopting a profile writes credential_process: give the vault program",
            ));
        }
        check_profile(profile)?;
        check_absolute(path)?;
        let (row, body) = self.load_as(name, CredentialType::Aws, "aws")?;
        let region = region_of(&body);
        let bad = matches!(region, Region::Bad) && (process.is_some() || config.is_some());
        let region = region.value();
        // In the config file a profile is `[profile P]`, except `[default]`.
        let (kind, section_name) = match &process {
            Some(_) if adopt => (EmitterKind::AwsProcess, profile.to_owned()),
            Some(_) => (EmitterKind::AwsProcess, config_section(profile)),
            None => (EmitterKind::Aws, profile.to_owned()),
        };
        let existing = self.find_emitter(|e| e.path == path && e.section == section_name)?;
        let config = config.filter(|_| process.is_none());
        let (config_region, config_made) = match &config {
            Some(c) => {
                check_absolute(c)?;
                // A binding of a live credential keeps the key it owns (its
                // line is the vault's); one whose credential was deleted had
                // its line taken out, and the file is asked again.
                let prior = existing
                    .as_ref()
                    .filter(|e| e.record_id == row.id || self.name_of(&e.record_id).is_some());
                self.claim_region(prior, c, profile, region.as_deref(), force)?
            }
            None => (false, false),
        };
        if let Some(old) = existing.as_ref().filter(|e| e.config_path != config) {
            // The config file moved ($AWS_CONFIG_FILE changed): our key
            // leaves the old one.
            if let Err(error) = self.unwrite_region(old) {
                warn!(emitter = %old.id, error = %error.message, "cannot remove the region of an emitted profile");
            }
        }
        let emitter = EmitterRow {
            id: existing.map_or_else(|| random_hex(6), |e| e.id),
            record_id: row.id,
            kind,
            path: path.to_owned(),
            section: section_name,
            program: process,
            created_at: now.unix(),
            config_path: config,
            config_region,
            config_made,
            rendering: RENDERING,
            exec_args: Vec::new(),
        };
        let section = render(&emitter, name, &body, now).ok_or_else(|| expired(name))?;
        let backup = if adopt { Backup::Kept } else { Backup::Keep };
        self.write_sections(path, &[section], &BTreeSet::new(), force || adopt, backup)?;
        let mut info = self.bind(emitter.clone(), name)?;
        // The keys are bound: the region is second to them. One that cannot
        // be written now is a warning and the binding's state (in `vault
        // emit list`, retried by `vault emit repair`), not a failed command.
        if let Err(error) = self.sync_region(&emitter, region.as_deref()) {
            warn!(emitter = %emitter.id, error = %error.message, "cannot write the region of an emitted profile");
            info.state = EmitState::Error(error.message);
        } else if bad {
            info.state = EmitState::Error(bad_region(name));
        }
        Ok(info)
    }

    /// `vault emit aws NAME --profile P --sso`: the aws CLI's own SSO
    /// profile for SSO role credential `name` (docs/sso.md): `[profile P]`
    /// naming `[sso-session vault-S]` in `config`, and the session's access
    /// token in `cache_dir`, S the record holding the session. Three
    /// bindings, each kept in sync with its record: the profile with the
    /// role credential, the session section and the token file with the
    /// session's record (so every credential sharing it shares them).
    pub fn emit_sso(
        &mut self,
        name: &str,
        profile: &str,
        config: &str,
        cache_dir: &str,
        force: bool,
        now: Timestamp,
    ) -> Result<EmitterInfo> {
        check_profile(profile)?;
        check_absolute(config)?;
        check_absolute(cache_dir)?;
        let (row, body) = self.load_as(name, CredentialType::Aws, "aws --sso")?;
        if !body.fields.contains_key("sso_account_id") {
            return Err(err(
                ErrorCode::Usage,
                format!(
                    "'{name}' is not an SSO role credential: emit aws --sso writes a profile for \
                     a role (sso_account_id, sso_role_name); save one with 'vault sso add'"
                ),
            ));
        }
        let (holder, holder_id, _, _) = self.sso_record(name)?;
        let (_, held) = self.load(&holder)?;
        let token = sso_files::token_json(&held, now).ok_or_else(|| {
            err(
                ErrorCode::Expired,
                format!(
                    "'{holder}' has no live SSO session to write: run 'vault sso login {holder}' \
                     first"
                ),
            )
        })?;
        let token_path = sso_files::token_file(cache_dir, &holder);
        let binding = |engine: &Self, record_id: &str, kind, path: &str, section: String| {
            let existing = engine.find_emitter(|e| e.path == path && e.section == section)?;
            let at = (path.to_owned(), section);
            Ok::<_, WireError>(new_row(existing, record_id.to_owned(), kind, at, None, now))
        };
        let profile_row = EmitterRow {
            program: Some(sso_files::session_name(&holder)),
            ..binding(
                self,
                &row.id,
                EmitterKind::AwsSso,
                config,
                config_section(profile),
            )?
        };
        let session_row = binding(
            self,
            &holder_id,
            EmitterKind::AwsSso,
            config,
            sso_files::session_section(&holder),
        )?;
        let token_row = binding(
            self,
            &holder_id,
            EmitterKind::AwsSsoToken,
            &token_path,
            WHOLE.to_owned(),
        )?;
        let sections: Vec<Section> = [(&profile_row, name, &body), (&session_row, &holder, &held)]
            .into_iter()
            .filter_map(|(e, n, b)| render(e, n, b, now))
            .collect();
        // The token first: a file of the aws CLI's there is refused before
        // anything is written.
        write_token(&token_path, &token, force)?;
        self.write_sections(config, &sections, &BTreeSet::new(), force, Backup::Keep)?;
        self.bind(token_row, &holder)?;
        self.bind(session_row, &holder)?;
        self.bind(profile_row, name)
    }

    /// The SSO sessions whose token file is bound and whose access token
    /// has less than `ahead` left (or none): `(holder, id)`, for the daemon
    /// to renew, so the aws CLI always finds a live token.
    pub fn sso_tokens_due(
        &self,
        ahead: std::time::Duration,
        now: Timestamp,
    ) -> Vec<(String, String)> {
        let Ok(bound) = self.store().and_then(|s| s.emitters().map_err(store_err)) else {
            return Vec::new();
        };
        let Ok(sess) = self.session() else {
            return Vec::new();
        };
        let mut due: Vec<(String, String)> = Vec::new();
        for e in bound.iter().filter(|e| e.kind == EmitterKind::AwsSsoToken) {
            let Some((name, entry)) = sess.index.iter().find(|(_, x)| x.id == e.record_id) else {
                continue;
            };
            let Ok((_, body)) = self.load(name) else {
                continue;
            };
            // As every refresh: `ahead`, or half the token's life when that
            // is shorter, so a short-lived token is not renewed at every
            // tick.
            let expires = body
                .fields
                .get("sso_token_expires")
                .and_then(|t| Timestamp::parse(t.expose_secret()).ok());
            let renew = expires
                .is_none_or(|t| super::refresh::due(false, entry.updated_at, Some(t), ahead, now));
            if renew && !due.iter().any(|(_, id)| *id == e.record_id) {
                due.push((name.clone(), e.record_id.clone()));
            }
        }
        due
    }

    /// Whether a keys binding for `profile` owns `region` in `[profile P]`
    /// of `config`, and whether it makes that section: a section that does
    /// not exist, or has no `region`, is ours to write; a user's `region`
    /// with the credential's value is theirs and stays theirs; one with
    /// another value is refused unless `force`, which keeps a backup of the
    /// file first. A binding that already owned the key keeps it. While
    /// the credential has no region nothing is claimed, and the file is not
    /// read (`Engine::sync_region` decides when one appears). A section an
    /// `aws-process` binding writes is that binding's (it writes the region
    /// itself). A file that cannot be parsed does not stop the keys: it is
    /// asked again once they are written, and shows in `vault emit list`.
    /// `existing` is the profile's binding of a live credential, if any.
    fn claim_region(
        &self,
        existing: Option<&EmitterRow>,
        config: &str,
        profile: &str,
        region: Option<&str>,
        force: bool,
    ) -> Result<(bool, bool)> {
        let section = config_section(profile);
        if let Some(e) =
            existing.filter(|e| e.config_region && e.config_path.as_deref() == Some(config))
        {
            return Ok((true, e.config_made));
        }
        let Some(region) = region else {
            return Ok((false, false));
        };
        if self.process_section(config, &section)? {
            return Ok((false, false));
        }
        let _lock = lock(config)?;
        let text = read_file(config)?;
        let theirs = match aws_ini::key_value(&text, &section, "region") {
            Err(_) => return Ok((false, false)),
            Ok(None) => return Ok((true, true)),
            Ok(Some(None)) => return Ok((true, false)),
            Ok(Some(Some(theirs))) => theirs,
        };
        match region {
            ours if ours != theirs => {
                if !force {
                    return Err(err(
                        ErrorCode::Conflict,
                        format!(
                            "{config}: [{section}] already has region = {theirs}, not vault's \
                             {ours}: remove that line, or --force to let vault write it (a \
                             backup is kept)"
                        ),
                    ));
                }
                keep_backup(config, &text)?;
                Ok((true, false))
            }
            _ => Ok((false, false)),
        }
    }

    /// Whether an `aws-process` binding writes `[section]` of `config`
    /// (then the region there is its line).
    fn process_section(&self, config: &str, section: &str) -> Result<bool> {
        Ok(self
            .find_emitter(|e| {
                e.kind == EmitterKind::AwsProcess && e.path == config && e.section == section
            })?
            .is_some())
    }

    /// Takes a keys binding's `region` out of its config file (and the
    /// section, if the binding made it and nothing else is left).
    fn unwrite_region(&self, e: &EmitterRow) -> Result<()> {
        match e.config_path.as_deref().filter(|_| e.config_region) {
            Some(config) => write_keys(config, &owned_region(&e.section, None, e.config_made)),
            None => Ok(()),
        }
    }

    /// Puts the `region` of keys binding `e` in its config file in line
    /// with `region` (`None`: no line) and says what the binding owns there
    /// afterwards, `(config_region, config_made)`. The vault owns the key
    /// only while its line is there: an owned line gets the new value, or
    /// goes (and the section, if the vault made it), and then nothing is
    /// owned, so a line the user writes later is theirs. While nothing is
    /// owned and there is no region, the file is neither read nor written;
    /// with a region, the file decides: no section, it is made; no region
    /// line, the key is claimed; the user's own line stays theirs (another
    /// value than the credential's shows in `vault emit list`).
    fn place_region(&self, e: &EmitterRow, region: Option<&str>) -> Result<(bool, bool)> {
        let Some(config) = e.config_path.as_deref() else {
            return Ok((false, false));
        };
        if e.config_region {
            let keys = owned_region(&e.section, region.map(str::to_owned), e.config_made);
            write_keys(config, &keys)?;
            return Ok(match region {
                Some(_) => (true, e.config_made),
                None => (false, false),
            });
        }
        let Some(region) = region else {
            return Ok((false, false));
        };
        let section = config_section(&e.section);
        if self.process_section(config, &section)? {
            return Ok((false, false));
        }
        let _lock = lock(config)?;
        let text = read_file(config)?;
        let made = match aws_ini::key_value(&text, &section, "region")
            .map_err(|x| merge_error(config, &x))?
        {
            None => true,
            Some(None) => false,
            Some(Some(_)) => return Ok((false, false)),
        };
        let keys = owned_region(&e.section, Some(region.to_owned()), made);
        let merged = aws_ini::merge_keys(&text, &keys).map_err(|x| merge_error(config, &x))?;
        write_file(config, merged.as_bytes())?;
        Ok((true, made))
    }

    /// [`Self::place_region`], with what the binding owns recorded.
    fn sync_region(&mut self, e: &EmitterRow, region: Option<&str>) -> Result<()> {
        let (owned, made) = self.place_region(e, region)?;
        if (owned, made) != (e.config_region, e.config_made) {
            let row = EmitterRow {
                config_region: owned,
                config_made: made,
                ..e.clone()
            };
            self.store_mut()?.put_emitter(&row).map_err(store_err)?;
        }
        Ok(())
    }

    /// `vault emit docker NAME [--helper]`: the registry's login in
    /// `auths` (or `credHelpers[registry] = "vault"`), kept in sync.
    pub fn emit_docker(
        &mut self,
        name: &str,
        path: &str,
        force: bool,
        helper: bool,
        adopt: bool,
        now: Timestamp,
    ) -> Result<EmitterInfo> {
        check_absolute(path)?;
        if adopt && !helper {
            return Err(err(
                ErrorCode::Usage,
                "adopting a registry login writes credHelpers: ask for the helper",
            ));
        }
        let (row, body) = self.load_as(name, CredentialType::Registry, "docker")?;
        let kind = if helper {
            EmitterKind::DockerHelper
        } else {
            EmitterKind::Docker
        };
        if body.expires_at.is_some_and(|t| t <= now) {
            return Err(expired(name));
        }
        let (registry, entry) = docker_render(kind, &body, now)
            .filter(|(r, _)| !r.is_empty())
            .ok_or_else(|| {
                err(
                    ErrorCode::Usage,
                    format!("'{name}' has no registry field: 'vault set {name} registry=HOST'"),
                )
            })?;
        // One binding per registry and file: switching between `auths` and
        // `credHelpers` writes the new entry, then takes the old one out.
        let existing = self.find_emitter(|e| e.path == path && e.section == registry)?;
        self.write_docker(
            path,
            kind,
            Some((registry.clone(), entry)),
            &BTreeSet::new(),
            force,
            adopt,
        )?;
        if let Some(old) = existing.as_ref().filter(|e| e.kind != kind) {
            self.unwrite(old)?;
        }
        let emitter = new_row(
            existing,
            row.id,
            kind,
            (path.to_owned(), registry),
            None,
            now,
        );
        self.bind(emitter, name)
    }

    /// `vault emit gcloud|file`: writes the whole file now and keeps it in
    /// sync. A file the vault did not write is not replaced without
    /// `force` (which keeps a backup).
    pub fn emit_file(
        &mut self,
        name: &str,
        kind: &str,
        path: Option<String>,
        force: bool,
        program: Option<String>,
        now: Timestamp,
    ) -> Result<EmitterInfo> {
        let (kind, wanted) = match EmitterKind::parse(kind) {
            Some(k @ EmitterKind::Gcloud) => (k, CredentialType::Gcp),
            Some(k @ EmitterKind::File) => (k, CredentialType::File),
            _ => {
                return Err(err(
                    ErrorCode::Usage,
                    format!("unknown emitter kind '{kind}'"),
                ));
            }
        };
        let (row, body) = self.load_as(name, wanted, kind.as_str())?;
        let path = match path {
            Some(p) => p,
            None => body
                .fields
                .get("path")
                .map(|p| expand_home(p.expose_secret()))
                .ok_or_else(|| err(ErrorCode::Usage, "give the file with --path"))?,
        };
        check_absolute(&path)?;
        let content = match &program {
            Some(program) if kind == EmitterKind::Gcloud => {
                check_absolute(program)?;
                if body.expires_at.is_some_and(|t| t <= now) {
                    return Err(expired(name));
                }
                external_content(self, &body, program).map_err(|m| err(ErrorCode::Usage, m))?
            }
            Some(_) => {
                return Err(err(
                    ErrorCode::Usage,
                    "a program goes with an external_account gcloud file only",
                ));
            }
            None if kind == EmitterKind::Gcloud
                && body
                    .fields
                    .contains_key(vault_protocol::credential::ISSUER_KEY) =>
            {
                return Err(err(
                    ErrorCode::Usage,
                    format!(
                        "'{name}' is a workload identity issuer: its file runs the vault for \
                         tokens, add --external-account"
                    ),
                ));
            }
            None => whole_content(self, kind, None, &body, now).ok_or_else(|| expired(name))?,
        };
        let existing = self.find_emitter(|e| e.path == path)?;
        if let Some(other) = existing.as_ref().filter(|e| !e.kind.is_whole_file()) {
            return Err(err(
                ErrorCode::Conflict,
                format!(
                    "{path} already has vault sections (emitter {}): choose another file",
                    other.id
                ),
            ));
        }
        let lock = lock(&path)?;
        let current = fsutil::read_text(Path::new(&path))
            .map_err(|e| err(ErrorCode::Failed, format!("cannot read {path}: {e}")))?;
        let theirs = current.filter(|t| existing.is_none() && t.as_bytes() != content.as_slice());
        if let Some(text) = theirs {
            if !force {
                return Err(err(
                    ErrorCode::Conflict,
                    format!(
                        "{path} exists and was not written by vault: choose another path, or \
                         --force to replace it (a backup is kept)"
                    ),
                ));
            }
            keep_backup(&path, &text)?;
        }
        write_file(&path, &content)?;
        drop(lock);
        let emitter = new_row(
            existing,
            row.id,
            kind,
            (path, WHOLE.to_owned()),
            program,
            now,
        );
        self.bind(emitter, name)
    }

    /// Takes out of its file what binding `e` wrote there (a whole file is
    /// removed); not the region of a keys binding's config file.
    fn unwrite(&self, e: &EmitterRow) -> Result<()> {
        let remove: BTreeSet<String> = [e.section.clone()].into();
        if e.kind == EmitterKind::AwsSsoToken {
            remove_token_if_ours(&e.path)
        } else if e.kind.is_whole_file() {
            remove_file(&e.path)
        } else if e.kind.is_kube() {
            self.write_kube(&e.path, None, &remove, false)
        } else if e.kind.is_docker() {
            self.write_docker(&e.path, e.kind, None, &remove, false, false)
        } else {
            self.write_sections(&e.path, &[], &remove, false, Backup::Keep)
        }
    }

    /// Writes what binding `e` should hold for `body`, or takes it out when
    /// the record was deleted or has expired (a whole file only if nobody
    /// changed it since).
    fn write_binding(
        &mut self,
        e: &EmitterRow,
        body: &RecordBody,
        deleted: bool,
        now: Timestamp,
    ) -> Result<()> {
        if deleted {
            return self.take_out(e, body);
        }
        if e.kind == EmitterKind::AwsSsoToken {
            return match sso_files::token_json(body, now) {
                Some(token) => write_token(&e.path, &token, false),
                None => self.take_out(e, body),
            };
        }
        if e.kind.is_whole_file() {
            return match whole_content(self, e.kind, e.program.as_deref(), body, now) {
                Some(content) => {
                    let _lock = lock(&e.path)?;
                    write_file(&e.path, &content)
                }
                None => self.take_out(e, body),
            };
        }
        if e.kind.is_kube() {
            let user = kube_render(e, &body.name, body)?;
            return self.write_kube(&e.path, Some(user), &BTreeSet::new(), false);
        }
        if e.kind.is_docker() {
            // The registry may have been renamed in the credential: the
            // binding's entry goes, the current one is written.
            return match docker_render(e.kind, body, now) {
                Some(entry) if entry.0 == e.section => {
                    self.write_docker(&e.path, e.kind, Some(entry), &BTreeSet::new(), false, false)
                }
                _ => self.unwrite(e),
            };
        }
        match render(e, &body.name, body, now) {
            Some(s) => {
                self.write_sections(&e.path, &[s], &BTreeSet::new(), false, Backup::Keep)?;
                self.sync_region(e, wanted_region(body, now).as_deref())
            }
            None => self.take_out(e, body),
        }
    }

    /// Takes binding `e` out for a record that is gone or expired (with
    /// its region line, if it owns one).
    fn take_out(&mut self, e: &EmitterRow, body: &RecordBody) -> Result<()> {
        if e.kind == EmitterKind::AwsSsoToken {
            return remove_token_if_ours(&e.path);
        }
        if e.kind.is_whole_file() {
            remove_if_ours(&e.path, body)
        } else if e.kind.is_kube() {
            self.unwrite(e)
        } else {
            self.unwrite(e)?;
            self.sync_region(e, None)
        }
    }

    /// `vault emit repair`: rewrites every binding from the vault (a drifted
    /// section or file gets the vault's content back; the user's other lines
    /// stay). Returns the bindings with their state afterwards.
    /// A binding written by an older version is rewritten in the current
    /// one (and recorded as such once that write succeeded). One binding
    /// that cannot be repaired does not stop the others: every failure is
    /// reported at the end.
    pub fn emit_repair(&mut self, now: Timestamp) -> Result<Vec<EmitterInfo>> {
        let names = self.names_by_id();
        let mut failed: Vec<WireError> = Vec::new();
        for e in self.store()?.emitters().map_err(store_err)? {
            let Some(name) = names.get(&e.record_id) else {
                continue;
            };
            if let Err(error) = self.repair_one(&e, name, now) {
                warn!(emitter = %e.id, error = %error.message, "cannot repair an emitted file");
                failed.push(err(error.code, format!("{}: {}", e.id, error.message)));
            }
        }
        match failed.len() {
            0 => self.emit_list(now),
            1 => Err(failed.remove(0)),
            n => Err(err(
                failed[0].code,
                format!(
                    "{n} emitted files could not be repaired (the others were): {}",
                    failed
                        .iter()
                        .map(|e| e.message.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            )),
        }
    }

    /// Rewrites one binding in the current rendering, and records that
    /// rendering once it is in the file.
    fn repair_one(&mut self, e: &EmitterRow, name: &str, now: Timestamp) -> Result<()> {
        let (_, body) = self.load(name)?;
        let current = EmitterRow {
            rendering: RENDERING,
            ..e.clone()
        };
        self.write_binding(&current, &body, false, now)?;
        if e.rendering < RENDERING {
            self.store_mut()?
                .set_emitter_rendering(&e.id, RENDERING)
                .map_err(store_err)?;
        }
        Ok(())
    }

    /// Record id → name, for looking up many (empty while locked).
    pub(super) fn names_by_id(&self) -> std::collections::HashMap<String, String> {
        self.session()
            .map(|s| {
                s.index
                    .iter()
                    .map(|(n, entry)| (entry.id.clone(), n.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn name_of(&self, record_id: &str) -> Option<String> {
        self.session()
            .ok()?
            .index
            .iter()
            .find(|(_, entry)| entry.id == record_id)
            .map(|(n, _)| n.clone())
    }

    /// Every binding, with whether its file still holds what the vault
    /// wrote (`ok`), was changed by someone else (`drifted`), lost the
    /// section (`missing`) or cannot be read.
    pub fn emit_list(&self, now: Timestamp) -> Result<Vec<EmitterInfo>> {
        self.session()?;
        let names = self.names_by_id();
        let mut out = Vec::new();
        for e in self.store()?.emitters().map_err(store_err)? {
            let name = names.get(&e.record_id).cloned();
            let state = match &name {
                None => EmitState::CredentialDeleted,
                Some(n) => self.drift_state(&e, n, now),
            };
            out.push(info_of(&e, name, state));
        }
        Ok(out)
    }

    fn drift_state(&self, e: &EmitterRow, name: &str, now: Timestamp) -> EmitState {
        let Ok((_, body)) = self.load(name) else {
            return EmitState::CredentialUnreadable;
        };
        let text = match fsutil::read_text(Path::new(&e.path)) {
            Ok(Some(t)) => t,
            Ok(None) => return EmitState::Missing,
            Err(error) => return EmitState::Unreadable(error.to_string()),
        };
        if e.kind.is_kube() {
            let Ok(want) = kube_render(e, name, &body) else {
                return EmitState::CredentialUnreadable;
            };
            return match kube_yaml::exec_user(&text, &e.section) {
                Ok(None) => EmitState::Missing,
                Ok(Some(Some(found))) if found == want => EmitState::Ok,
                Ok(Some(_)) => EmitState::Drifted,
                Err(error) => EmitState::Error(error.to_string()),
            };
        }
        if e.kind.is_docker() {
            let owned: BTreeSet<String> = [e.section.clone()].into();
            let object = docker_object(e.kind);
            return match docker_render(e.kind, &body, now) {
                None => EmitState::Expired(Removed::Entry),
                Some(entry) => {
                    match docker_json::merge_in(
                        &text,
                        object,
                        &[entry],
                        &BTreeSet::new(),
                        &owned,
                        false,
                    ) {
                        Ok(merged) if merged == text => EmitState::Ok,
                        Ok(_) => EmitState::Drifted,
                        Err(error) => EmitState::Error(error.to_string()),
                    }
                }
            };
        }
        if e.kind.is_whole_file() {
            return match whole_content(self, e.kind, e.program.as_deref(), &body, now) {
                Some(c) if c == text.as_bytes() => EmitState::Ok,
                Some(_) => EmitState::Drifted,
                None => EmitState::Expired(Removed::File),
            };
        }
        let Some(section) = render(e, name, &body, now) else {
            return EmitState::Expired(Removed::Section);
        };
        let owned: BTreeSet<String> = [e.section.clone()].into();
        match aws_ini::merge(&text, &[section], &BTreeSet::new(), &owned, false) {
            Ok(merged) if merged == text => self.region_state(e, name, &body),
            Ok(_) => {
                if aws_ini::section_names(&text).is_ok_and(|n| n.contains(&e.section)) {
                    EmitState::Drifted
                } else {
                    EmitState::Missing
                }
            }
            Err(error) => EmitState::Error(error.to_string()),
        }
    }

    /// How the `region` of a keys binding stands in its config file: ours
    /// compared with what we would write (`drifted`, or `missing` when the
    /// section is gone); a user's own line must say the credential's
    /// region, else the user is told what to do. A region the file cannot
    /// carry (of a binding that writes one) is an error, whatever the file.
    fn region_state(&self, e: &EmitterRow, name: &str, body: &RecordBody) -> EmitState {
        let region = region_of(body);
        let writes_region = e.config_path.is_some()
            || (e.kind == EmitterKind::AwsProcess && e.rendering >= RENDERING);
        if writes_region && matches!(region, Region::Bad) {
            return EmitState::Error(bad_region(name));
        }
        let Some(config) = e.config_path.as_deref() else {
            return EmitState::Ok;
        };
        let region = region.value();
        let text = match fsutil::read_text(Path::new(config)) {
            Ok(t) => t.unwrap_or_default(),
            Err(error) => return EmitState::Unreadable(format!("{config}: {error}")),
        };
        let section = config_section(&e.section);
        let found = match aws_ini::key_value(&text, &section, "region") {
            Ok(found) => found,
            Err(error) if region.is_some() || e.config_region => {
                return EmitState::Error(format!("{config}: {error}"));
            }
            Err(_) => return EmitState::Ok,
        };
        if e.config_region {
            let keys = owned_region(&e.section, region, false);
            return match aws_ini::merge_keys(&text, &keys) {
                Ok(merged) if merged == text => EmitState::Ok,
                Ok(_) if found.is_none() => EmitState::Missing,
                Ok(_) => EmitState::Drifted,
                Err(error) => EmitState::Error(format!("{config}: {error}")),
            };
        }
        let again = format!("vault emit aws {name} --profile {}", e.section);
        match (region, found.flatten()) {
            (Some(ours), None) => EmitState::Error(format!(
                "{config}: [{section}] has no region line: run '{again}' to let vault write \
                 {ours}"
            )),
            (Some(ours), Some(theirs)) if theirs != ours => EmitState::Error(format!(
                "{config}: [{section}] has the user's region = {theirs}, not the credential's \
                 {ours}: remove that line and run '{again}', or add --force"
            )),
            _ => EmitState::Ok,
        }
    }

    /// `vault emit rm ID`: removes the vault's section and forgets the
    /// binding. With `keep`, what it wrote stays in the file as the user's
    /// own (`vault import … --undo`), region line included.
    pub fn emit_remove(&mut self, id: &str, keep: bool) -> Result<EmitterInfo> {
        let Some(e) = self.find_emitter(|e| e.id == id)? else {
            return Err(err(
                ErrorCode::NotFound,
                format!("no emitter '{id}': see 'vault emit list'"),
            ));
        };
        // The aws CLI's SSO files: a session's section and token file go
        // with the last profile naming it, never before.
        let then = self.sso_removal(&e)?;
        let removed = self.emit_remove_one(e, keep)?;
        for other in then {
            if let Err(error) = self.emit_remove_one(other, keep) {
                warn!(emitter = %id, error = %error.message, "cannot remove an SSO session's file");
            }
        }
        Ok(removed)
    }

    /// What else goes when binding `e` is removed: for the last `aws-sso`
    /// profile of a session, that session's section and token file.
    /// Refused for a session's section or token file while a profile
    /// names the session.
    fn sso_removal(&self, e: &EmitterRow) -> Result<Vec<EmitterRow>> {
        if !matches!(e.kind, EmitterKind::AwsSso | EmitterKind::AwsSsoToken) {
            return Ok(Vec::new());
        }
        let all = self.store()?.emitters().map_err(store_err)?;
        let section_of = |s: &EmitterRow| {
            (s.kind == EmitterKind::AwsSso)
                .then(|| sso_files::session_of_section(&s.section))
                .flatten()
                .map(str::to_owned)
        };
        let profile = e.kind == EmitterKind::AwsSso && e.program.is_some();
        let session = if profile {
            e.program.clone()
        } else if e.kind == EmitterKind::AwsSso {
            section_of(e)
        } else {
            all.iter()
                .find(|s| s.record_id == e.record_id && section_of(s).is_some())
                .and_then(section_of)
        };
        let Some(session) = session else {
            return Ok(Vec::new());
        };
        let profiles: Vec<&EmitterRow> = all
            .iter()
            .filter(|p| p.id != e.id && p.kind == EmitterKind::AwsSso)
            .filter(|p| p.program.as_deref() == Some(session.as_str()))
            .collect();
        if !profile && !profiles.is_empty() {
            let ids: Vec<String> = profiles
                .iter()
                .map(|p| format!("[{}] {}", p.section, p.id))
                .collect();
            return Err(err(
                ErrorCode::Conflict,
                format!(
                    "{} belongs to SSO session {session}, which {} names: remove that with 'vault \
                     emit rm ID'; the session's section and token file go with the last one",
                    e.id,
                    ids.join(", ")
                ),
            ));
        }
        if !profile || !profiles.is_empty() {
            return Ok(Vec::new());
        }
        // The session's section, and the token file of the same record.
        let holder = all
            .iter()
            .find(|s| section_of(s).as_deref() == Some(session.as_str()))
            .map(|s| s.record_id.clone());
        Ok(all
            .into_iter()
            .filter(|s| {
                section_of(s).as_deref() == Some(session.as_str())
                    || (s.kind == EmitterKind::AwsSsoToken && Some(&s.record_id) == holder.as_ref())
            })
            .collect())
    }

    /// Removes binding `e` (and what it wrote, unless `keep`).
    fn emit_remove_one(&mut self, e: EmitterRow, keep: bool) -> Result<EmitterInfo> {
        let id = e.id.as_str();
        if keep {
            self.store_mut()?.delete_emitter(id).map_err(store_err)?;
            info!(emitter = %id, "stopped emitting; the file keeps what was written");
            return Ok(info_of(&e, None, EmitState::Removed));
        }
        self.unwrite(&e)?;
        // The keys are out: the binding goes even if its region line cannot
        // be taken out, which is reported.
        let region = self.unwrite_region(&e);
        self.store_mut()?.delete_emitter(id).map_err(store_err)?;
        info!(emitter = %id, "stopped emitting");
        let state = match region {
            Ok(()) => EmitState::Removed,
            Err(error) => {
                warn!(emitter = %id, error = %error.message, "cannot remove the region of an emitted profile");
                EmitState::Error(format!(
                    "{}; the binding is removed: take that region line out by hand",
                    error.message
                ))
            }
        };
        Ok(info_of(&e, None, state))
    }

    /// Takes out what was written for credentials that have expired since
    /// (called by the daemon's ticker), so no tool is handed a dead key. A
    /// no-op when the file no longer has it. `credential_process` lines
    /// stay: `vault aws-process` itself refuses an expired credential.
    pub fn expire_emitted(&mut self, now: Timestamp) {
        let (Ok(sess), Ok(store)) = (self.session(), self.store()) else {
            return;
        };
        let Ok(bound) = store.emitters() else { return };
        let mut bound = bound
            .into_iter()
            .filter(|e| !e.kind.points_at_vault())
            .peekable();
        if bound.peek().is_none() {
            return;
        }
        let expired: std::collections::BTreeMap<String, String> = sess
            .index
            .iter()
            .filter(|(_, e)| e.expires_at.is_some_and(|t| t <= now))
            .map(|(name, e)| (e.id.clone(), name.clone()))
            .collect();
        for e in bound {
            // A token file goes when its session's access token expired (a
            // session record itself never expires).
            if e.kind == EmitterKind::AwsSsoToken {
                self.expire_token_file(&e, now);
                continue;
            }
            let Some(name) = expired.get(e.record_id.as_str()) else {
                continue;
            };
            let gone = self
                .load(name)
                .and_then(|(_, body)| self.take_out(&e, &body));
            if let Err(error) = gone {
                warn!(emitter = %e.id, error = %error.message, "cannot remove an expired credential");
            }
        }
    }

    /// Takes token file `e` out when its session's access token has
    /// expired and the file still holds it.
    fn expire_token_file(&mut self, e: &EmitterRow, now: Timestamp) {
        if !Path::new(&e.path).exists() {
            return;
        }
        let Some(name) = self.name_of(&e.record_id) else {
            return;
        };
        let Ok((_, body)) = self.load(&name) else {
            return;
        };
        if sso_files::token_json(&body, now).is_some() {
            return;
        }
        if let Err(error) = self.take_out(e, &body) {
            warn!(emitter = %e.id, error = %error.message, "cannot remove an expired SSO token file");
        }
    }

    /// Called by the daemon's ticker: keeps the watch on every emitted file
    /// and, when one changed (or the set of bindings did), compares them
    /// with what the vault wrote. Drift is logged once and kept for
    /// `vault status`; the vault never rewrites a user's edit by itself
    /// (`vault emit repair` does, when asked). While locked the comparison
    /// waits: it needs the values.
    pub fn watch_emitted(&mut self, now: Timestamp) {
        let Ok(bound) = self.store().and_then(|s| s.emitters().map_err(store_err)) else {
            return;
        };
        if !self.is_locked() && bound.iter().any(|e| e.rendering < RENDERING) {
            self.upgrade_renderings(&bound, now);
        }
        let watch = self.watch.get_or_insert_with(crate::watch::DriftWatch::new);
        let files = bound
            .iter()
            .flat_map(|e| std::iter::once(e.path.as_str()).chain(e.config_path.as_deref()));
        let set_changed = watch.set_files(files);
        if watch.take_changed() || set_changed {
            self.drift_stale = true;
        }
        if !self.drift_stale || self.is_locked() {
            return;
        }
        let Ok(list) = self.emit_list(now) else {
            return;
        };
        self.drift_stale = false;
        let trouble: Vec<EmitterInfo> = list
            .into_iter()
            .filter(|e| e.state.needs_attention())
            .collect();
        for t in &trouble {
            if !self
                .drift
                .iter()
                .any(|d| d.id == t.id && d.state == t.state)
            {
                warn!(
                    emitter = %t.id,
                    path = %t.path,
                    section = %t.section,
                    state = %t.state,
                    "an emitted file needs attention: 'vault emit repair' rewrites it from the vault"
                );
            }
        }
        self.drift = trouble;
    }

    /// Moves bindings written by an older version of the renderer to the
    /// current one, quietly, where their file still holds exactly what the
    /// old version wrote: an `aws-process` section of before `region` gets
    /// its region line (if the credential has one). A file someone changed
    /// since is left as it is, and compared with the old rendering (so the
    /// new line is never drift) until `vault emit repair` or a new `vault
    /// emit aws`. Other kinds wrote then what they write now.
    fn upgrade_renderings(&mut self, bound: &[EmitterRow], now: Timestamp) {
        let names = self.names_by_id();
        for e in bound.iter().filter(|e| e.rendering < RENDERING) {
            let Some(name) = names.get(&e.record_id) else {
                continue;
            };
            let upgraded = EmitterRow {
                rendering: RENDERING,
                ..e.clone()
            };
            let moved = (|| -> Result<bool> {
                if e.kind != EmitterKind::AwsProcess {
                    return Ok(true);
                }
                let (_, body) = self.load(name)?;
                let (Some(old), Some(new)) = (
                    render(e, name, &body, now),
                    render(&upgraded, name, &body, now),
                ) else {
                    return Ok(false);
                };
                let _lock = lock(&e.path)?;
                let text = read_file(&e.path)?;
                let owned: BTreeSet<String> = [e.section.clone()].into();
                let none = BTreeSet::new();
                let as_old = aws_ini::merge(&text, &[old], &none, &owned, false);
                if as_old.ok().as_ref() != Some(&text) {
                    return Ok(false);
                }
                let merged = aws_ini::merge(&text, &[new], &none, &owned, false)
                    .map_err(|x| merge_error(&e.path, &x))?;
                if merged != text {
                    write_file(&e.path, merged.as_bytes())?;
                }
                Ok(true)
            })();
            let result = match moved {
                Ok(true) => self
                    .store_mut()
                    .and_then(|s| s.set_emitter_rendering(&e.id, RENDERING).map_err(store_err)),
                Ok(false) => continue,
                Err(error) => Err(error),
            };
            match result {
                Ok(()) => info!(emitter = %e.id, "emitted section moved to the current rendering"),
                Err(error) => {
                    warn!(emitter = %e.id, error = %error.message, "cannot upgrade an emitted section");
                }
            }
        }
    }

    /// After a change to `row`: re-renders its sections, or removes them
    /// when it was deleted or has expired. Never fails the change: a file
    /// that cannot be written is logged and shows in `vault emit list`.
    /// A file rewritten with the record's values is a hand-out by the
    /// daemon itself, and goes in the audit log as `emit_rewrite`.
    pub(super) fn rerender(&mut self, row: &RecordRow, body: &RecordBody, now: Timestamp) {
        let Ok(store) = self.store() else { return };
        let Ok(bound) = store.emitters() else { return };
        let mut written = false;
        for e in bound.into_iter().filter(|e| e.record_id == row.id) {
            match self.write_binding(&e, body, row.deleted, now) {
                Ok(()) => written = true,
                Err(error) => {
                    warn!(emitter = %e.id, error = %error.message, "cannot update an emitted file");
                }
            }
        }
        if written && !row.deleted && body.expires_at.is_none_or(|t| t > now) {
            let name = [body.name.clone()];
            self.audit(&name, "emit_rewrite", &crate::peer::Peer::daemon());
        }
    }
}

/// The subcommand of `vault` that prints a kubectl credential from a
/// credential of type `kind`.
fn kube_command(kind: CredentialType) -> Option<&'static str> {
    match kind {
        CredentialType::Aws => Some("eks"),
        CredentialType::Gcp => Some("gke"),
        _ => None,
    }
}

/// The `users[]` entry binding `e` writes for the credential `name`: it
/// runs `PROGRAM eks|gke token NAME ARGS…`, whatever the credential's
/// values (it holds none, and stays when the credential expires: the
/// command itself then says so, through kubectl).
fn kube_render(e: &EmitterRow, name: &str, body: &RecordBody) -> Result<ExecUser> {
    let (Some(program), Some(sub)) = (&e.program, kube_command(body.kind)) else {
        return Err(err(
            ErrorCode::Failed,
            format!("the kubeconfig binding {} cannot be written", e.id),
        ));
    };
    let mut args = vec![sub.to_owned(), "token".to_owned(), name.to_owned()];
    args.extend(e.exec_args.iter().cloned());
    Ok(ExecUser {
        name: e.section.clone(),
        command: program.clone(),
        args,
        api_version: kube_yaml::EXEC_API_VERSION.to_owned(),
    })
}

fn kube_error(path: &str, e: &KubeError) -> WireError {
    let code = match e {
        KubeError::NotOwned(_) => ErrorCode::Conflict,
        KubeError::Unparseable(_) => ErrorCode::Failed,
    };
    err(code, format!("{path}: {e}"))
}

/// Whether `user` can be a kubeconfig user name the vault writes: 1–253
/// printable characters, no spaces at either end.
fn valid_kube_user(user: &str) -> bool {
    (1..=253).contains(&user.len()) && user.trim() == user && !user.chars().any(char::is_control)
}

/// Whether `scope` can be an OAuth scope on a command line kubectl runs.
fn valid_scope(scope: &str) -> bool {
    (1..=512).contains(&scope.len()) && scope.bytes().all(|b| b.is_ascii_graphic())
}

impl Engine {
    /// Merges a `users[]` entry into / out of a kubeconfig and writes it.
    fn write_kube(
        &self,
        path: &str,
        set: Option<ExecUser>,
        remove: &BTreeSet<String>,
        force: bool,
    ) -> Result<()> {
        let _lock = lock(path)?;
        // kubectl's own lock too: it rewrites the file in place.
        let _kubectl = fsutil::dot_lock(Path::new(path), fsutil::LOCK_WAIT)
            .map_err(|e| err(ErrorCode::Failed, format!("cannot lock {path}: {e}")))?;
        let text = read_file(path)?;
        let owned = self.owned_sections(path, Some(EmitterKind::Kube))?;
        let set: Vec<ExecUser> = set.into_iter().collect();
        let merged = kube_yaml::merge(&text, &set, remove, &owned, force)
            .map_err(|e| kube_error(path, &e))?;
        if merged == text {
            return Ok(());
        }
        let taken = set.iter().any(|u| !owned.contains(&u.name))
            && set
                .iter()
                .any(|u| kube_yaml::exec_user(&text, &u.name).is_ok_and(|f| f.is_some()));
        if force && taken {
            keep_backup(path, &text)?;
        }
        write_file(path, merged.as_bytes())
    }

    /// `vault emit kube NAME`: a `users[]` entry of the kubeconfig at
    /// `path` that runs `vault eks token NAME --cluster C [--region R]`
    /// (an aws credential) or `vault gke token NAME [--scope S]…` (gcp),
    /// kept from then on (docs/kube.md). It names the credential and holds
    /// no secret; a user of that name the vault did not write is replaced
    /// only with `force` (a backup is kept).
    pub fn emit_kube(
        &mut self,
        name: &str,
        path: &str,
        target: KubeTarget,
        now: Timestamp,
    ) -> Result<EmitterInfo> {
        let KubeTarget {
            user,
            program,
            cluster,
            region,
            scopes,
            force,
        } = target;
        check_absolute(path)?;
        check_absolute(&program)?;
        let (row, body) = self.load(name)?;
        let usage = |m: String| err(ErrorCode::Usage, m);
        let exec_args = match body.kind {
            CredentialType::Aws => {
                let cluster = cluster.ok_or_else(|| {
                    usage(format!(
                        "an EKS user needs the cluster: 'vault emit kube {name} --cluster NAME'"
                    ))
                })?;
                if !vault_protocol::credential::is_eks_cluster(&cluster) {
                    return Err(usage(format!(
                        "'{cluster}' is not an EKS cluster name (letters, digits, '-' and '_')"
                    )));
                }
                if !scopes.is_empty() {
                    return Err(usage("--scope belongs to a gcp credential".into()));
                }
                let mut args = vec!["--cluster".to_owned(), cluster];
                if let Some(r) = region {
                    if !is_config_region(&r) {
                        return Err(usage(format!("'{r}' is not a region name")));
                    }
                    args.extend(["--region".to_owned(), r]);
                }
                args
            }
            CredentialType::Gcp => {
                if cluster.is_some() || region.is_some() {
                    return Err(usage(
                        "--cluster and --region belong to an aws credential (EKS); a GKE user \
                         works for every cluster the account may reach"
                            .into(),
                    ));
                }
                let mut args = Vec::new();
                for s in scopes {
                    if !valid_scope(&s) {
                        return Err(usage("a scope is one word of printable characters".into()));
                    }
                    args.extend(["--scope".to_owned(), s]);
                }
                args
            }
            other => {
                return Err(usage(format!(
                    "'{name}' is a {other} credential: emit kube needs an aws (EKS) or gcp \
                     (GKE) one"
                )));
            }
        };
        let user = user.unwrap_or_else(|| format!("vault-{name}"));
        if !valid_kube_user(&user) {
            return Err(usage(format!(
                "'{user}' cannot be a kubeconfig user name: 1 to 253 printable characters"
            )));
        }
        let existing = self.find_emitter(|e| e.path == path && e.section == user)?;
        if let Some(other) = existing.as_ref().filter(|e| !e.kind.is_kube()) {
            return Err(err(
                ErrorCode::Conflict,
                format!(
                    "{path} already has vault sections of another kind (emitter {}): choose \
                     another file",
                    other.id
                ),
            ));
        }
        let emitter = EmitterRow {
            exec_args,
            ..new_row(
                existing,
                row.id,
                EmitterKind::Kube,
                (path.to_owned(), user),
                Some(program),
                now,
            )
        };
        let entry = kube_render(&emitter, name, &body)?;
        self.write_kube(path, Some(entry), &BTreeSet::new(), force)?;
        self.bind(emitter, name)
    }
}

fn expired(name: &str) -> WireError {
    err(
        ErrorCode::Expired,
        format!("'{name}' has expired: renew it before emitting it"),
    )
}

fn check_absolute(path: &str) -> Result<()> {
    if Path::new(path).is_absolute() {
        Ok(())
    } else {
        Err(err(
            ErrorCode::Usage,
            format!("{path} is not an absolute path"),
        ))
    }
}

/// The text of a file other tools own; empty when it does not exist yet.
fn read_file(path: &str) -> Result<String> {
    Ok(fsutil::read_text(Path::new(path))
        .map_err(|e| err(ErrorCode::Failed, format!("cannot read {path}: {e}")))?
        .unwrap_or_default())
}

/// Merges the keys a binding owns into their section of an AWS file
/// (`vault emit aws`'s `region` in `~/.aws/config`) and writes it.
fn write_keys(path: &str, keys: &OwnedKeys) -> Result<()> {
    let _lock = lock(path)?;
    let text = read_file(path)?;
    let merged = aws_ini::merge_keys(&text, keys).map_err(|e| merge_error(path, &e))?;
    if merged == text {
        return Ok(());
    }
    write_file(path, merged.as_bytes())
}

/// The advisory lock on a file other tools read, held while the vault reads
/// and writes it.
fn lock(path: &str) -> Result<Option<fsutil::FileLock>> {
    fsutil::lock_file(Path::new(path), fsutil::LOCK_WAIT)
        .map_err(|e| err(ErrorCode::Failed, format!("cannot lock {path}: {e}")))
}

fn write_file(path: &str, content: &[u8]) -> Result<()> {
    fsutil::replace_file(Path::new(path), content)
        .map_err(|e| err(ErrorCode::Failed, format!("cannot write {path}: {e}")))
}

/// Keeps the whole file before `--force` replaces a part the user wrote.
fn keep_backup(path: &str, text: &str) -> Result<()> {
    // Two backups within a second must not overwrite the first, which holds
    // the user's text.
    let stem = format!("{path}.vault-backup-{}", Timestamp::now().unix());
    let backup = (1..)
        .map(|n| match n {
            1 => stem.clone(),
            n => format!("{stem}-{n}"),
        })
        .find(|b| !Path::new(b).exists())
        .unwrap_or(stem);
    write_file(&backup, text.as_bytes())?;
    info!("kept a backup before --force");
    Ok(())
}

fn remove_file(path: &str) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(x) if x.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(x) => Err(err(ErrorCode::Failed, format!("cannot remove {path}: {x}"))),
    }
}

/// Writes an SSO token cache file: 0600 whatever the file had, in a 0700
/// directory made if needed. A file the vault did not write (the aws CLI's
/// own sign-in, with its refresh token) is left as it is, or with `force`
/// kept as a backup and replaced.
fn write_token(path: &str, token: &[u8], force: bool) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    let _lock = lock(path)?;
    if let Some(text) = fsutil::read_text(Path::new(path)).ok().flatten()
        && !sso_files::token_is_ours(&text)
    {
        if !force {
            return Err(err(
                ErrorCode::Conflict,
                format!(
                    "{path} holds a token the vault did not write (an 'aws sso login' of this \
                     session): --force replaces it, keeping a backup"
                ),
            ));
        }
        keep_backup(path, &text)?;
    }
    let dir = Path::new(path).parent().unwrap_or(Path::new("/"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| fsutil::replace_private(Path::new(path), token))
        .map_err(|e| err(ErrorCode::Failed, format!("cannot write {path}: {e}")))
}

/// Removes an SSO token cache file if the vault wrote it.
fn remove_token_if_ours(path: &str) -> Result<()> {
    let _lock = lock(path)?;
    match fsutil::read_text(Path::new(path)).ok().flatten() {
        Some(text) if sso_files::token_is_ours(&text) => remove_file(path),
        _ => Ok(()),
    }
}

/// Removes a whole file the vault wrote, unless someone changed it since
/// (then it is theirs now, and stays).
fn remove_if_ours(path: &str, body: &RecordBody) -> Result<()> {
    let _lock = lock(path)?;
    let current = fsutil::read_text(Path::new(path)).ok().flatten();
    let ours = ["json", "content"]
        .iter()
        .filter_map(|f| body.fields.get(*f))
        .any(|v| current.as_deref() == Some(v.expose_secret()));
    if !ours {
        if current.is_some() {
            warn!("an emitted file was changed by someone else: left in place");
        }
        return Ok(());
    }
    remove_file(path)
}

fn info_of(e: &EmitterRow, name: Option<String>, state: EmitState) -> EmitterInfo {
    EmitterInfo {
        id: e.id.clone(),
        name,
        kind: e.kind,
        path: e.path.clone(),
        section: e.section.clone(),
        state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_region_is_named_by_its_credential_never_shown() {
        let message = bad_region("r2");
        assert!(message.contains("'r2'") && message.contains("no region line"));
        assert_eq!(config_section("default"), "default");
        assert_eq!(config_section("dev"), "profile dev");
    }
}
