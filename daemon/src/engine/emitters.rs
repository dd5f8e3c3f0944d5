//! File bindings (SPEC §9): the vault keeps a section of a file other tools
//! read in sync with a credential. This slice: `aws` (a profile of
//! `~/.aws/credentials`). Every change to a bound record re-renders its
//! sections; a deleted or expired record's sections are removed, so no tool
//! is handed a dead key.

use std::collections::BTreeSet;
use std::path::Path;

use tracing::{info, warn};
use vault_protocol::message::EmitterInfo;
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{CredentialType, ErrorCode};

use super::{Engine, Result, err, random_hex, store_err};
use crate::emit::aws_ini::{self, MergeError, Section};
use crate::emit::docker_json;
use crate::fsutil;
use crate::record::RecordBody;
use crate::store::{EmitterRow, RecordRow};

const AWS: &str = "aws";
const AWS_PROCESS: &str = "aws-process";
const GCLOUD: &str = "gcloud";
const DOCKER: &str = "docker";
const FILE: &str = "file";
/// The section of a whole-file binding: the whole file.
const WHOLE: &str = "(whole file)";

fn is_whole(e: &EmitterRow) -> bool {
    e.kind == GCLOUD || e.kind == FILE
}

/// The content a whole-file binding writes; `None` when it must go.
fn whole_content(kind: &str, body: &RecordBody, now: Timestamp) -> Option<Vec<u8>> {
    if body.expires_at.is_some_and(|t| t <= now) {
        return None;
    }
    let field = if kind == GCLOUD { "json" } else { "content" };
    body.fields
        .get(field)
        .map(|v| v.expose_secret().as_bytes().to_vec())
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
fn render(e: &EmitterRow, name: &str, body: &RecordBody, now: Timestamp) -> Option<Section> {
    match (e.kind.as_str(), &e.program) {
        // credential_process names the credential; `vault aws-process`
        // itself refuses an expired one with a message the SDK shows.
        (AWS_PROCESS, Some(program)) => Some(Section {
            name: e.section.clone(),
            entries: vec![(
                "credential_process".to_owned(),
                format!("{} aws-process {name}", shell_word(program)),
            )],
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

fn valid_profile(profile: &str) -> bool {
    !profile.is_empty()
        && profile.len() <= 128
        && profile
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '[' | ']' | '#' | ';' | '='))
}

impl Engine {
    /// Sections of `path` the vault writes.
    fn owned_sections(&self, path: &str) -> Result<BTreeSet<String>> {
        Ok(self
            .store()?
            .emitters()
            .map_err(store_err)?
            .into_iter()
            .filter(|e| e.path == path)
            .map(|e| e.section)
            .collect())
    }

    /// Merges `sections` into / `remove` from the file and writes it.
    fn write_sections(
        &self,
        path: &str,
        sections: &[Section],
        remove: &BTreeSet<String>,
        force: bool,
    ) -> Result<()> {
        let file = Path::new(path);
        let text = fsutil::read_text(file)
            .map_err(|e| err(ErrorCode::Failed, format!("cannot read {path}: {e}")))?
            .unwrap_or_default();
        let owned = self.owned_sections(path)?;
        let merged = aws_ini::merge(&text, sections, remove, &owned, force)
            .map_err(|e| merge_error(path, &e))?;
        if merged == text {
            return Ok(());
        }
        let taken = sections.iter().any(|s| !owned.contains(&s.name))
            && aws_ini::section_names(&text)
                .is_ok_and(|names| sections.iter().any(|s| names.contains(&s.name)));
        if force && taken {
            // The user's section is replaced: keep the whole file first.
            let backup = format!("{path}.vault-backup-{}", Timestamp::now().unix());
            fsutil::replace_file(Path::new(&backup), text.as_bytes())
                .map_err(|e| err(ErrorCode::Failed, format!("cannot write {backup}: {e}")))?;
            info!("kept a backup before --force");
        }
        fsutil::replace_file(file, merged.as_bytes())
            .map_err(|e| err(ErrorCode::Failed, format!("cannot write {path}: {e}")))
    }

    /// `vault emit aws NAME --profile P`: writes the profile now and keeps
    /// it in sync from then on.
    pub fn emit_aws(
        &mut self,
        name: &str,
        profile: &str,
        path: &str,
        force: bool,
        process: Option<String>,
        now: Timestamp,
    ) -> Result<EmitterInfo> {
        if !valid_profile(profile) {
            return Err(err(
                ErrorCode::Usage,
                format!(
                    "'{profile}' cannot be a profile name: use letters, digits and . _ - / @ +"
                ),
            ));
        }
        if !Path::new(path).is_absolute() {
            return Err(err(
                ErrorCode::Usage,
                format!("{path} is not an absolute path"),
            ));
        }
        let (row, body) = self.load(name)?;
        if body.kind != CredentialType::Aws {
            return Err(err(
                ErrorCode::Usage,
                format!(
                    "'{name}' is a {} credential: emit aws needs an aws one",
                    body.kind
                ),
            ));
        }
        // In the config file a profile is `[profile P]`, except `[default]`.
        let (kind, section_name) = match &process {
            Some(_) if profile == "default" => (AWS_PROCESS, profile.to_owned()),
            Some(_) => (AWS_PROCESS, format!("profile {profile}")),
            None => (AWS, profile.to_owned()),
        };
        let existing = self
            .store()?
            .emitters()
            .map_err(store_err)?
            .into_iter()
            .find(|e| e.path == path && e.section == section_name);
        let emitter = EmitterRow {
            id: existing.map_or_else(|| random_hex(6), |e| e.id),
            record_id: row.id.clone(),
            kind: kind.to_owned(),
            path: path.to_owned(),
            section: section_name,
            program: process,
            created_at: now.unix(),
        };
        let Some(section) = render(&emitter, name, &body, now) else {
            return Err(err(
                ErrorCode::Expired,
                format!("'{name}' has expired: renew it before emitting it"),
            ));
        };
        self.write_sections(path, &[section], &BTreeSet::new(), force)?;
        self.store_mut()?.put_emitter(&emitter).map_err(store_err)?;
        info!(emitter = %emitter.id, record = %row.id, "emitting");
        Ok(info_of(&emitter, Some(name.to_owned()), "ok".to_owned()))
    }

    /// Merges a registry login into / out of a docker config and writes it.
    fn write_docker(
        &self,
        path: &str,
        set: Option<(String, String)>,
        remove: &BTreeSet<String>,
        force: bool,
    ) -> Result<()> {
        let file = Path::new(path);
        let text = fsutil::read_text(file)
            .map_err(|e| err(ErrorCode::Failed, format!("cannot read {path}: {e}")))?
            .unwrap_or_default();
        let owned = self.owned_sections(path)?;
        let entries: Vec<(String, String)> = set.into_iter().collect();
        let merged = docker_json::merge(&text, &entries, remove, &owned, force).map_err(|e| {
            let code = match e {
                docker_json::DockerError::NotOwned(_) => ErrorCode::Conflict,
                docker_json::DockerError::Unparseable(_) => ErrorCode::Failed,
            };
            err(code, format!("{path} {e}"))
        })?;
        if merged == text {
            return Ok(());
        }
        if force && entries.iter().any(|(r, _)| !owned.contains(r)) && !text.is_empty() {
            let backup = format!("{path}.vault-backup-{}", Timestamp::now().unix());
            fsutil::replace_file(Path::new(&backup), text.as_bytes())
                .map_err(|e| err(ErrorCode::Failed, format!("cannot write {backup}: {e}")))?;
        }
        fsutil::replace_file(file, merged.as_bytes())
            .map_err(|e| err(ErrorCode::Failed, format!("cannot write {path}: {e}")))
    }

    /// `vault emit docker NAME`: the registry's login in `auths`, kept in
    /// sync.
    pub fn emit_docker(
        &mut self,
        name: &str,
        path: &str,
        force: bool,
        now: Timestamp,
    ) -> Result<EmitterInfo> {
        if !Path::new(path).is_absolute() {
            return Err(err(
                ErrorCode::Usage,
                format!("{path} is not an absolute path"),
            ));
        }
        let (row, body) = self.load(name)?;
        if body.kind != CredentialType::Registry {
            return Err(err(
                ErrorCode::Usage,
                format!(
                    "'{name}' is a {} credential: emit docker needs a registry one",
                    body.kind
                ),
            ));
        }
        let Some((registry, entry)) = docker_entry(&body, now) else {
            return Err(err(
                ErrorCode::Expired,
                format!("'{name}' has expired: renew it before emitting it"),
            ));
        };
        let existing = self
            .store()?
            .emitters()
            .map_err(store_err)?
            .into_iter()
            .find(|e| e.path == path && e.section == registry);
        self.write_docker(
            path,
            Some((registry.clone(), entry)),
            &BTreeSet::new(),
            force,
        )?;
        let emitter = EmitterRow {
            id: existing.map_or_else(|| random_hex(6), |e| e.id),
            record_id: row.id.clone(),
            kind: DOCKER.to_owned(),
            path: path.to_owned(),
            section: registry,
            program: None,
            created_at: now.unix(),
        };
        self.store_mut()?.put_emitter(&emitter).map_err(store_err)?;
        info!(emitter = %emitter.id, record = %row.id, "emitting");
        Ok(info_of(&emitter, Some(name.to_owned()), "ok".to_owned()))
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
        now: Timestamp,
    ) -> Result<EmitterInfo> {
        let (row, body) = self.load(name)?;
        let wanted = match kind {
            GCLOUD => CredentialType::Gcp,
            FILE => CredentialType::File,
            _ => {
                return Err(err(
                    ErrorCode::Usage,
                    format!("unknown emitter kind '{kind}'"),
                ));
            }
        };
        if body.kind != wanted {
            return Err(err(
                ErrorCode::Usage,
                format!(
                    "'{name}' is a {} credential: emit {kind} needs a {wanted} one",
                    body.kind
                ),
            ));
        }
        let path = match path {
            Some(p) => p,
            None => body
                .fields
                .get("path")
                .map(|p| expand_home(p.expose_secret()))
                .ok_or_else(|| err(ErrorCode::Usage, "give the file with --path"))?,
        };
        if !Path::new(&path).is_absolute() {
            return Err(err(
                ErrorCode::Usage,
                format!("{path} is not an absolute path"),
            ));
        }
        let Some(content) = whole_content(kind, &body, now) else {
            return Err(err(
                ErrorCode::Expired,
                format!("'{name}' has expired: renew it before emitting it"),
            ));
        };
        let existing = self
            .store()?
            .emitters()
            .map_err(store_err)?
            .into_iter()
            .find(|e| e.path == path);
        if let Some(other) = existing.as_ref().filter(|e| !is_whole(e)) {
            return Err(err(
                ErrorCode::Conflict,
                format!(
                    "{path} already has vault sections (emitter {}): choose another file",
                    other.id
                ),
            ));
        }
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
            let backup = format!("{path}.vault-backup-{}", Timestamp::now().unix());
            fsutil::replace_file(Path::new(&backup), text.as_bytes())
                .map_err(|e| err(ErrorCode::Failed, format!("cannot write {backup}: {e}")))?;
        }
        fsutil::replace_file(Path::new(&path), &content)
            .map_err(|e| err(ErrorCode::Failed, format!("cannot write {path}: {e}")))?;
        let emitter = EmitterRow {
            id: existing.map_or_else(|| random_hex(6), |e| e.id),
            record_id: row.id.clone(),
            kind: kind.to_owned(),
            path,
            section: WHOLE.to_owned(),
            program: None,
            created_at: now.unix(),
        };
        self.store_mut()?.put_emitter(&emitter).map_err(store_err)?;
        info!(emitter = %emitter.id, record = %row.id, "emitting");
        Ok(info_of(&emitter, Some(name.to_owned()), "ok".to_owned()))
    }

    /// Writes what binding `e` should hold for `body` (or removes it).
    fn write_binding(
        &self,
        e: &EmitterRow,
        body: &RecordBody,
        deleted: bool,
        now: Timestamp,
    ) -> Result<()> {
        if is_whole(e) {
            let file = Path::new(&e.path);
            return match whole_content(&e.kind, body, now).filter(|_| !deleted) {
                Some(content) => fsutil::replace_file(file, &content)
                    .map_err(|x| err(ErrorCode::Failed, format!("cannot write {}: {x}", e.path))),
                None => remove_if_ours(&e.path, body),
            };
        }
        let remove: BTreeSet<String> = [e.section.clone()].into();
        if e.kind == DOCKER {
            // The registry may have been renamed in the credential: the
            // binding's entry goes, the current one is written.
            return match docker_entry(body, now).filter(|_| !deleted) {
                Some(entry) if entry.0 == e.section => {
                    self.write_docker(&e.path, Some(entry), &BTreeSet::new(), false)
                }
                _ => self.write_docker(&e.path, None, &remove, false),
            };
        }
        match render(e, &body.name, body, now).filter(|_| !deleted) {
            Some(s) => self.write_sections(&e.path, &[s], &BTreeSet::new(), false),
            None => self.write_sections(&e.path, &[], &remove, false),
        }
    }

    /// `vault emit repair`: rewrites every binding from the vault (a drifted
    /// section or file gets the vault's content back; the user's other lines
    /// stay). Returns the bindings with their state afterwards.
    pub fn emit_repair(&self, now: Timestamp) -> Result<Vec<EmitterInfo>> {
        for e in self.store()?.emitters().map_err(store_err)? {
            let Some(name) = self.name_of(&e.record_id) else {
                continue;
            };
            let (_, body) = self.load(&name)?;
            self.write_binding(&e, &body, false, now)?;
        }
        self.emit_list(now)
    }

    fn name_of(&self, record_id: &str) -> Option<String> {
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
        let sess = self.session()?;
        let mut out = Vec::new();
        for e in self.store()?.emitters().map_err(store_err)? {
            let name = sess
                .index
                .iter()
                .find(|(_, entry)| entry.id == e.record_id)
                .map(|(n, _)| n.clone());
            let state = match &name {
                None => "credential deleted".to_owned(),
                Some(n) => self.drift_state(&e, n, now),
            };
            out.push(info_of(&e, name, state));
        }
        Ok(out)
    }

    fn drift_state(&self, e: &EmitterRow, name: &str, now: Timestamp) -> String {
        let Ok((_, body)) = self.load(name) else {
            return "credential unreadable".to_owned();
        };
        let text = match fsutil::read_text(Path::new(&e.path)) {
            Ok(Some(t)) => t,
            Ok(None) => return "missing".to_owned(),
            Err(error) => return format!("unreadable: {error}"),
        };
        if e.kind == DOCKER {
            let owned: BTreeSet<String> = [e.section.clone()].into();
            return match docker_entry(&body, now) {
                None => "expired (entry removed)".to_owned(),
                Some(entry) => {
                    match docker_json::merge(&text, &[entry], &BTreeSet::new(), &owned, false) {
                        Ok(merged) if merged == text => "ok".to_owned(),
                        Ok(_) => "drifted".to_owned(),
                        Err(error) => format!("error: {error}"),
                    }
                }
            };
        }
        if is_whole(e) {
            return match whole_content(&e.kind, &body, now) {
                Some(c) if c == text.as_bytes() => "ok".to_owned(),
                Some(_) => "drifted".to_owned(),
                None => "expired (file removed)".to_owned(),
            };
        }
        let Some(section) = render(e, name, &body, now) else {
            return "expired (section removed)".to_owned();
        };
        let owned: BTreeSet<String> = [e.section.clone()].into();
        match aws_ini::merge(&text, &[section], &BTreeSet::new(), &owned, false) {
            Ok(merged) if merged == text => "ok".to_owned(),
            Ok(_) => {
                if aws_ini::section_names(&text).is_ok_and(|n| n.contains(&e.section)) {
                    "drifted".to_owned()
                } else {
                    "missing".to_owned()
                }
            }
            Err(error) => format!("error: {error}"),
        }
    }

    /// `vault emit rm ID`: removes the vault's section and forgets the
    /// binding.
    pub fn emit_remove(&mut self, id: &str) -> Result<EmitterInfo> {
        let Some(e) = self
            .store()?
            .emitters()
            .map_err(store_err)?
            .into_iter()
            .find(|e| e.id == id)
        else {
            return Err(err(
                ErrorCode::NotFound,
                format!("no emitter '{id}': see 'vault emit list'"),
            ));
        };
        if is_whole(&e) {
            match std::fs::remove_file(&e.path) {
                Ok(()) => {}
                Err(x) if x.kind() == std::io::ErrorKind::NotFound => {}
                Err(x) => {
                    return Err(err(
                        ErrorCode::Failed,
                        format!("cannot remove {}: {x}", e.path),
                    ));
                }
            }
        } else if e.kind == DOCKER {
            let remove: BTreeSet<String> = [e.section.clone()].into();
            self.write_docker(&e.path, None, &remove, false)?;
        } else {
            let remove: BTreeSet<String> = [e.section.clone()].into();
            self.write_sections(&e.path, &[], &remove, false)?;
        }
        self.store_mut()?.delete_emitter(id).map_err(store_err)?;
        info!(emitter = %id, "stopped emitting");
        Ok(info_of(&e, None, "removed".to_owned()))
    }

    /// Removes the key sections of credentials that have expired since they
    /// were written (called by the daemon's ticker), so no tool is handed
    /// a dead key. A no-op when the file no longer has them.
    pub fn expire_emitted(&self, now: Timestamp) {
        let (Ok(sess), Ok(store)) = (self.session(), self.store()) else {
            return;
        };
        let Ok(bound) = store.emitters() else { return };
        let mut bound = bound
            .into_iter()
            .filter(|e| e.kind == AWS || e.kind == DOCKER || is_whole(e))
            .peekable();
        if bound.peek().is_none() {
            return;
        }
        let expired: BTreeSet<&str> = sess
            .index
            .values()
            .filter(|e| e.expires_at.is_some_and(|t| t <= now))
            .map(|e| e.id.as_str())
            .collect();
        for e in bound.filter(|e| expired.contains(e.record_id.as_str())) {
            let gone = if is_whole(&e) {
                match self.name_of(&e.record_id).map(|n| self.load(&n)) {
                    Some(Ok((_, body))) => remove_if_ours(&e.path, &body),
                    _ => Ok(()),
                }
            } else if e.kind == DOCKER {
                let remove: BTreeSet<String> = [e.section.clone()].into();
                self.write_docker(&e.path, None, &remove, false)
            } else {
                let remove: BTreeSet<String> = [e.section.clone()].into();
                self.write_sections(&e.path, &[], &remove, false)
            };
            if let Err(error) = gone {
                warn!(emitter = %e.id, error = %error.message, "cannot remove an expired section");
            }
        }
    }

    /// After a change to `row`: re-renders its sections, or removes them
    /// when it was deleted or has expired. Never fails the change: a file
    /// that cannot be written is logged and shows in `vault emit list`.
    pub(super) fn rerender(&mut self, row: &RecordRow, body: &RecordBody, now: Timestamp) {
        let Ok(store) = self.store() else { return };
        let Ok(bound) = store.emitters() else { return };
        for e in bound.into_iter().filter(|e| e.record_id == row.id) {
            let result = self.write_binding(&e, body, row.deleted, now);
            if let Err(error) = result {
                warn!(emitter = %e.id, error = %error.message, "cannot update an emitted file");
            }
        }
    }
}

/// Removes a whole file the vault wrote, unless someone changed it since
/// (then it is theirs now, and stays).
fn remove_if_ours(path: &str, body: &RecordBody) -> Result<()> {
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
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(x) if x.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(x) => Err(err(ErrorCode::Failed, format!("cannot remove {path}: {x}"))),
    }
}

fn info_of(e: &EmitterRow, name: Option<String>, state: String) -> EmitterInfo {
    EmitterInfo {
        id: e.id.clone(),
        name,
        kind: e.kind.clone(),
        path: e.path.clone(),
        section: e.section.clone(),
        state,
    }
}
