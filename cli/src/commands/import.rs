//! `vault import aws|docker|env [FILE]`: bring credentials that sit in
//! plaintext files into the vault. Without `--adopt` the source file is
//! only read, never changed; `--dry-run` shows what would be created; names
//! that exist are skipped unless `--force`, which makes a new revision (the
//! old value stays in the history). `--adopt` then moves the file off the
//! plaintext (`super::adopt`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::json;
use vault_protocol::credential::validate_fields;
use vault_protocol::message::NewRecord;
use vault_protocol::{CredentialType, ErrorCode, Request, Response, SecretValue, validate_name};
use zeroize::Zeroizing;

use super::{Ctx, adopt};
use crate::args::{ImportArgs, ImportSource};
use crate::dotenv;
use crate::error::{CliResult, failed, unexpected, usage};
use crate::names::{host_of, name_from};

/// A credential found in the file: where it sits there (the aws profile,
/// the docker `auths` key), the record it becomes, and why `--adopt` would
/// leave it alone, if it would.
pub(super) struct Found {
    pub key: String,
    pub record: NewRecord,
    pub not_adoptable: Option<String>,
}

impl Found {
    fn new(key: &str, record: NewRecord) -> Self {
        Found {
            key: key.to_owned(),
            record,
            not_adoptable: None,
        }
    }
}

/// What importing did with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Added,
    Replaced,
    /// It exists with these values already.
    Unchanged,
    Skipped,
}

/// Where the source file is: the one given, the tool's variable, or the
/// tool's default.
fn source_path(args: &ImportArgs, home: &Path) -> PathBuf {
    let env_path = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(file) = &args.file {
        return file.clone();
    }
    match args.source {
        ImportSource::Aws => {
            env_path("AWS_SHARED_CREDENTIALS_FILE").unwrap_or_else(|| home.join(".aws/credentials"))
        }
        ImportSource::Docker => env_path("DOCKER_CONFIG")
            .unwrap_or_else(|| home.join(".docker"))
            .join("config.json"),
        ImportSource::Env => PathBuf::from(".env"),
    }
}

/// `vault import`.
pub fn run(ctx: &mut Ctx, args: &ImportArgs) -> CliResult<()> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let path = source_path(args, &home);
    if args.undo {
        return adopt::undo(ctx, args.source, &path);
    }
    let found = match args.source {
        ImportSource::Aws => {
            let config = std::env::var_os("AWS_CONFIG_FILE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(".aws/config"));
            let text = read(&path)?;
            let config = match std::fs::read_to_string(&config) {
                Ok(c) => parse_ini(&c, &config).unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            let sections = parse_ini(&text, &path).map_err(failed)?;
            aws_records(&sections, &config)
        }
        ImportSource::Docker => {
            let text = read(&path)?;
            let (records, notes) = docker_records(&text, &path).map_err(failed)?;
            for note in notes {
                ctx.out.warn(&note);
            }
            records
        }
        ImportSource::Env => {
            let text = read(&path)?;
            let name = match &args.name {
                Some(n) => n.clone(),
                None => default_env_name(&path),
            };
            let record = env_record(&text, &path, &name).map_err(failed)?;
            if record.fields.is_empty() {
                Vec::new()
            } else {
                let mut found = Found::new(&name, record);
                // A key set twice: both lines would become one reference,
                // and the first value would be lost.
                let entries = dotenv::parse(&text, "").unwrap_or_default();
                found.not_adoptable = entries
                    .iter()
                    .enumerate()
                    .find(|(i, e)| entries[..*i].iter().any(|p| p.key == e.key))
                    .map(|(_, e)| {
                        format!(
                            "{} is set twice in the file (line {}): keep one",
                            e.key, e.line
                        )
                    });
                vec![found]
            }
        }
    };
    let mut found = found;
    for f in &mut found {
        let r = &mut f.record;
        validate_name(&r.name).map_err(usage)?;
        validate_fields(r.kind, &r.fields).map_err(|e| failed(format!("{}: {e}", r.name)))?;
        r.tags.extend(args.tag.iter().cloned());
        r.description = Some(format!("imported from {}", path.display()));
    }
    if found.is_empty() {
        ctx.out
            .info(&format!("nothing to import from {}", path.display()));
        return ctx
            .out
            .json(&json!({"added": [], "replaced": [], "skipped": [], "dry_run": args.dry_run}));
    }

    let mut outcomes = Vec::new();
    for f in &found {
        outcomes.push(import_one(ctx, &f.record, args)?);
    }
    let names = |which: Outcome| -> Vec<&str> {
        found
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| **o == which)
            .map(|(f, _)| f.record.name.as_str())
            .collect()
    };
    let mut report = json!({
        "added": names(Outcome::Added),
        "replaced": names(Outcome::Replaced),
        "unchanged": names(Outcome::Unchanged),
        "skipped": names(Outcome::Skipped),
        "dry_run": args.dry_run,
    });
    if args.adopt {
        let done = adopt::adopt(ctx, args.source, &path, &found, &outcomes, args.dry_run)?;
        report["adopted"] = json!(done.adopted);
        report["backup"] = json!(done.backup);
        ctx.out.json(&report)?;
        return done.result;
    }
    ctx.out.json(&report)
}

/// Adds, replaces or skips one record (or says what it would do).
fn import_one(ctx: &mut Ctx, record: &NewRecord, args: &ImportArgs) -> CliResult<Outcome> {
    let name = record.name.clone();
    let kind = record.kind;
    let existing = match ctx.call_unlocked(&|| Request::Get { name: name.clone() }) {
        Ok(Response::Record(view)) => Some(view),
        Ok(_) => return Err(unexpected("get")),
        Err(e) if e.code == ErrorCode::NotFound => None,
        Err(e) => return Err(e),
    };
    let same = existing.as_ref().is_some_and(|v| {
        v.kind == kind
            && record.fields.iter().all(|(k, val)| {
                v.fields
                    .get(k)
                    .is_some_and(|x| x.expose_secret() == val.expose_secret())
            })
    });
    if same {
        ctx.out.info(&format!(
            "{name} is in the vault already, with these values"
        ));
        return Ok(Outcome::Unchanged);
    }
    let exists = existing.is_some();
    let (verb, outcome) = match (exists, args.force, args.dry_run) {
        (true, false, _) => {
            ctx.out.info(&format!("skipped {name}: it exists with other values (--force replaces it, keeping the old value in its history)"));
            return Ok(Outcome::Skipped);
        }
        (false, _, true) => ("would add", Outcome::Added),
        (true, true, true) => ("would replace", Outcome::Replaced),
        (false, _, false) => {
            let answer = ctx.call_unlocked(&|| Request::Add {
                record: dup(record),
            })?;
            if !matches!(answer, Response::Changed(_)) {
                return Err(unexpected("add"));
            }
            ("added", Outcome::Added)
        }
        (true, true, false) => {
            let answer = ctx.call_unlocked(&|| Request::Set {
                name: name.clone(),
                fields: dup_fields(&record.fields),
                unset: vec![],
                description: record.description.clone(),
                tags: None,
                expires_at: None,
            })?;
            if !matches!(answer, Response::Changed(_)) {
                return Err(unexpected("set"));
            }
            ("replaced", Outcome::Replaced)
        }
    };
    ctx.out.info(&format!("{verb} {name} ({kind})"));
    Ok(outcome)
}

/// A copy of `r` (requests hold secrets and are not `Clone`; a request is
/// built again when it is retried after an unlock).
fn dup(r: &NewRecord) -> NewRecord {
    NewRecord {
        name: r.name.clone(),
        kind: r.kind,
        fields: dup_fields(&r.fields),
        description: r.description.clone(),
        tags: r.tags.clone(),
        expires_at: r.expires_at,
    }
}

fn dup_fields(f: &BTreeMap<String, SecretValue>) -> BTreeMap<String, SecretValue> {
    f.iter().map(|(k, v)| (k.clone(), v.duplicate())).collect()
}

fn read(path: &Path) -> CliResult<Zeroizing<String>> {
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|e| {
            failed(format!(
                "cannot read {}: {e}; give the file as the last argument",
                path.display()
            ))
        })
}

/// INI sections in file order: `[name]` then `key = value` lines. `#` and
/// `;` start comments; indented lines (nested `s3 =` blocks) are kept as
/// part of no key we use and skipped.
type Sections = Vec<(String, BTreeMap<String, SecretValue>)>;

/// The key a section gets when it has indented lines (never a real key: a
/// key is trimmed).
const NESTED: &str = " nested";

/// The keys a profile of `~/.aws/credentials` may hold to be adopted: its
/// section is replaced by the vault's, so anything else would be lost.
const ADOPTABLE_KEYS: [&str; 3] = [
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
];

/// Keys of `~/.aws/config` that give a profile its credentials another way;
/// a profile with one is left alone by --adopt (its plaintext keys may be a
/// role's source, which `credential_process` there would change).
const OTHER_SOURCES: [&str; 8] = [
    "credential_process",
    "role_arn",
    "source_profile",
    "credential_source",
    "web_identity_token_file",
    "sso_start_url",
    "sso_session",
    "sso_account_id",
];

fn parse_ini(text: &str, path: &Path) -> Result<Sections, String> {
    let mut sections: Sections = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if raw.starts_with([' ', '\t']) {
            // A nested block's line (`s3 =`): no key we import, but it is
            // part of the section, which --adopt then leaves alone.
            if let Some((_, fields)) = sections.last_mut() {
                fields.insert(NESTED.to_owned(), SecretValue::from(""));
            }
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            sections.push((name.trim().to_owned(), BTreeMap::new()));
            continue;
        }
        let bad = || {
            format!(
                "{} line {}: expected '[profile]' or 'key = value'; nothing was imported — fix the line and retry",
                path.display(),
                n + 1
            )
        };
        let (key, value) = line.split_once('=').ok_or_else(bad)?;
        let (_, fields) = sections.last_mut().ok_or_else(bad)?;
        fields.insert(
            key.trim().to_ascii_lowercase(),
            SecretValue::from(value.trim()),
        );
    }
    Ok(sections)
}

/// A profile's section name in `~/.aws/config`: `[profile X]`, but
/// `[default]`.
fn config_section(profile: &str) -> String {
    if profile == "default" {
        profile.to_owned()
    } else {
        format!("profile {profile}")
    }
}

/// One `aws` record per profile with keys, named `aws-PROFILE` (its region
/// from the section or `~/.aws/config`).
fn aws_records(sections: &Sections, config: &Sections) -> Vec<Found> {
    let config_of = |profile: &str| {
        let wanted = config_section(profile);
        config
            .iter()
            .filter(|(name, _)| {
                *name == wanted
                    || name
                        .strip_prefix("profile ")
                        .is_some_and(|p| p.trim() == profile)
            })
            .map(|(_, fields)| fields)
            .collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    for (profile, fields) in sections {
        let (Some(id), Some(secret)) = (
            fields.get("aws_access_key_id"),
            fields.get("aws_secret_access_key"),
        ) else {
            continue; // role or SSO profiles hold no keys
        };
        let mut f = BTreeMap::new();
        f.insert("access_key_id".to_owned(), id.duplicate());
        f.insert("secret_access_key".to_owned(), secret.duplicate());
        if let Some(token) = fields.get("aws_session_token").filter(|t| !t.is_empty()) {
            f.insert("session_token".to_owned(), token.duplicate());
        }
        let configs = config_of(profile);
        let region = fields
            .get("region")
            .or_else(|| configs.iter().find_map(|c| c.get("region")))
            .map(|r| r.expose_secret().to_owned());
        if let Some(region) = region {
            f.insert("region".to_owned(), SecretValue::from(region.as_str()));
        }
        let record = NewRecord {
            name: format!("aws-{}", name_from(profile)),
            kind: CredentialType::Aws,
            fields: f,
            description: None,
            tags: vec!["imported".to_owned()],
            expires_at: None,
        };
        let mut found = Found::new(profile, record);
        let other_key = fields
            .keys()
            .find(|k| !ADOPTABLE_KEYS.contains(&k.as_str()));
        let source = configs
            .iter()
            .find_map(|c| OTHER_SOURCES.iter().find(|k| c.contains_key(**k)));
        found.not_adoptable = if sections.iter().filter(|(n, _)| n == profile).count() > 1 {
            Some(format!("[{profile}] appears more than once in the file"))
        } else if let Some(key) = other_key {
            let key = if key == NESTED {
                "indented lines"
            } else {
                key.as_str()
            };
            Some(format!(
                "[{profile}] also holds {key}, which the vault's section would drop: move it to \
                 ~/.aws/config and retry"
            ))
        } else {
            source.map(|key| {
                format!(
                    "its [{}] in ~/.aws/config has {key}, so its keys may feed another \
                     profile's credentials",
                    config_section(profile)
                )
            })
        };
        out.push(found);
    }
    out
}

/// One `registry` record per `auths` entry with an inline `auth`; entries
/// kept by a credential helper are named in the notes.
fn docker_records(text: &str, path: &Path) -> Result<(Vec<Found>, Vec<String>), String> {
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        auths: BTreeMap<String, Entry>,
        #[serde(default, rename = "credsStore")]
        creds_store: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        auth: Option<SecretValue>,
        #[serde(flatten)]
        other: BTreeMap<String, serde_json::Value>,
    }
    let config: Config = serde_json::from_str(text).map_err(|e| {
        format!(
            "{} is not valid JSON ({e}); nothing was imported",
            path.display()
        )
    })?;
    let mut notes = Vec::new();
    let mut out = Vec::new();
    for (registry, entry) in config.auths {
        let Some(auth) = entry.auth.filter(|a| !a.is_empty()) else {
            let holder = config
                .creds_store
                .as_deref()
                .unwrap_or("a credential helper");
            notes.push(format!(
                "{registry}: its password is kept by {holder}, not in the file; not imported"
            ));
            continue;
        };
        let decoded = Zeroizing::new(
            BASE64
                .decode(auth.expose_secret().trim())
                .unwrap_or_default(),
        );
        let text = Zeroizing::new(String::from_utf8_lossy(&decoded).into_owned());
        let Some((user, pass)) = text.split_once(':') else {
            notes.push(format!(
                "{registry}: its auth is not base64 of user:password; not imported"
            ));
            continue;
        };
        let host = host_of(&registry).to_owned();
        let mut f = BTreeMap::new();
        f.insert("registry".to_owned(), SecretValue::from(host.as_str()));
        f.insert("username".to_owned(), SecretValue::from(user));
        f.insert("auth".to_owned(), SecretValue::from(pass));
        let record = NewRecord {
            name: name_from(&host),
            kind: CredentialType::Registry,
            fields: f,
            description: None,
            tags: vec!["imported".to_owned()],
            expires_at: None,
        };
        let mut found = Found::new(&registry, record);
        // docker asks credHelpers by the same key as auths; the vault's
        // helper entry is keyed by the host.
        found.not_adoptable = if registry != host {
            Some(format!(
                "its key {registry} is a URL, not a host (Docker Hub's is): the vault's \
                 credHelpers entry is keyed by host"
            ))
        } else {
            entry.other.keys().next().map(|k| {
                format!("its entry also holds {k}, which the vault's helper would not give")
            })
        };
        out.push(found);
    }
    Ok((out, notes))
}

/// `myproject/.env` → `myproject-env`.
fn default_env_name(path: &Path) -> String {
    let dir = std::path::absolute(path)
        .ok()
        .and_then(|p| {
            p.parent()
                .and_then(|d| d.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "dotenv".to_owned());
    format!("{}-env", name_from(&dir))
}

/// One `generic` record with every `KEY=VALUE` of a `.env` file (`export`,
/// comments, single and double quotes understood).
fn env_record(text: &str, path: &Path, name: &str) -> Result<NewRecord, String> {
    let entries = dotenv::parse(text, &path.display().to_string())
        .map_err(|e| format!("{e}; nothing was imported — fix the line and retry"))?;
    // A reference (an adopted file) is the vault's already.
    let fields = entries
        .iter()
        .filter(|e| dotenv::reference(&e.value).is_none())
        .map(|e| (e.key.clone(), SecretValue::from(e.value.as_str())))
        .collect();
    Ok(NewRecord {
        name: name.to_owned(),
        kind: CredentialType::Generic,
        fields,
        description: None,
        tags: vec!["imported".to_owned()],
        expires_at: None,
    })
}
