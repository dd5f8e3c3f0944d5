//! `vault import aws|docker|env [FILE]`: bring credentials that sit in
//! plaintext files into the vault. The source file is only read, never
//! changed; `--dry-run` shows what would be created; names that exist are
//! skipped unless `--force`, which makes a new revision (the old value stays
//! in the history).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::json;
use vault_protocol::credential::{is_env_name, validate_fields};
use vault_protocol::message::NewRecord;
use vault_protocol::{CredentialType, ErrorCode, Request, Response, SecretValue, validate_name};
use zeroize::Zeroizing;

use super::Ctx;
use crate::args::{ImportArgs, ImportSource};
use crate::error::{CliResult, failed, unexpected, usage};
use crate::names::{host_of, name_from};

/// `vault import`.
pub fn run(ctx: &mut Ctx, args: &ImportArgs) -> CliResult<()> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let env_path = |var: &str| std::env::var_os(var).map(PathBuf::from);
    let (path, records) = match args.source {
        ImportSource::Aws => {
            let path = args
                .file
                .clone()
                .or_else(|| env_path("AWS_SHARED_CREDENTIALS_FILE"))
                .unwrap_or_else(|| home.join(".aws/credentials"));
            let config = env_path("AWS_CONFIG_FILE").unwrap_or_else(|| home.join(".aws/config"));
            let text = read(&path)?;
            let regions = match std::fs::read_to_string(&config) {
                Ok(c) => parse_ini(&c, &config)
                    .map(|s| aws_regions(&s))
                    .unwrap_or_default(),
                Err(_) => BTreeMap::new(),
            };
            let sections = parse_ini(&text, &path).map_err(failed)?;
            (path, aws_records(&sections, &regions))
        }
        ImportSource::Docker => {
            let path = args.file.clone().unwrap_or_else(|| {
                env_path("DOCKER_CONFIG")
                    .unwrap_or_else(|| home.join(".docker"))
                    .join("config.json")
            });
            let text = read(&path)?;
            let (records, notes) = docker_records(&text, &path).map_err(failed)?;
            for note in notes {
                ctx.out.warn(&note);
            }
            (path, records)
        }
        ImportSource::Env => {
            let path = args.file.clone().unwrap_or_else(|| PathBuf::from(".env"));
            let text = read(&path)?;
            let name = match &args.name {
                Some(n) => n.clone(),
                None => default_env_name(&path),
            };
            (
                path.clone(),
                vec![env_record(&text, &path, &name).map_err(failed)?],
            )
        }
    };
    let mut records = records;
    for r in &mut records {
        validate_name(&r.name).map_err(usage)?;
        validate_fields(r.kind, &r.fields).map_err(|e| failed(format!("{}: {e}", r.name)))?;
        r.tags.extend(args.tag.iter().cloned());
        r.description = Some(format!("imported from {}", path.display()));
    }
    if records.is_empty() {
        ctx.out
            .info(&format!("nothing to import from {}", path.display()));
        return ctx
            .out
            .json(&json!({"added": [], "replaced": [], "skipped": [], "dry_run": args.dry_run}));
    }

    let (mut added, mut replaced, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
    for record in records {
        let name = record.name.clone();
        let kind = record.kind;
        let exists = match ctx.call_unlocked(&|| Request::Get { name: name.clone() }) {
            Ok(_) => true,
            Err(e) if e.code == ErrorCode::NotFound => false,
            Err(e) => return Err(e),
        };
        let verb = match (exists, args.force, args.dry_run) {
            (true, false, _) => {
                ctx.out.info(&format!("skipped {name}: it exists (--force replaces it, keeping the old value in its history)"));
                skipped.push(name);
                continue;
            }
            (false, _, true) => "would add",
            (true, true, true) => "would replace",
            (false, _, false) => {
                let answer = ctx.call_unlocked(&|| Request::Add {
                    record: dup(&record),
                })?;
                if !matches!(answer, Response::Changed(_)) {
                    return Err(unexpected("add"));
                }
                "added"
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
                "replaced"
            }
        };
        ctx.out.info(&format!("{verb} {name} ({kind})"));
        if exists {
            replaced.push(name)
        } else {
            added.push(name)
        }
    }
    ctx.out.json(
        &json!({"added": added, "replaced": replaced, "skipped": skipped, "dry_run": args.dry_run}),
    )
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

fn parse_ini(text: &str, path: &Path) -> Result<Sections, String> {
    let mut sections: Sections = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if raw.starts_with([' ', '\t']) {
            continue; // a nested block's line
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

/// `region` of each profile in `~/.aws/config` (`[default]`, `[profile X]`).
fn aws_regions(sections: &Sections) -> BTreeMap<String, String> {
    sections
        .iter()
        .filter_map(|(name, fields)| {
            let profile = name.strip_prefix("profile ").unwrap_or(name).trim();
            let region = fields.get("region")?.expose_secret().to_owned();
            Some((profile.to_owned(), region))
        })
        .collect()
}

/// One `aws` record per profile with keys, named `aws-PROFILE`.
fn aws_records(sections: &Sections, regions: &BTreeMap<String, String>) -> Vec<NewRecord> {
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
        let region = fields
            .get("region")
            .map(|r| r.expose_secret().to_owned())
            .or_else(|| regions.get(profile).cloned());
        if let Some(region) = region {
            f.insert("region".to_owned(), SecretValue::from(region.as_str()));
        }
        out.push(NewRecord {
            name: format!("aws-{}", name_from(profile)),
            kind: CredentialType::Aws,
            fields: f,
            description: None,
            tags: vec!["imported".to_owned()],
            expires_at: None,
        });
    }
    out
}

/// One `registry` record per `auths` entry with an inline `auth`; entries
/// kept by a credential helper are named in the notes.
fn docker_records(text: &str, path: &Path) -> Result<(Vec<NewRecord>, Vec<String>), String> {
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
        out.push(NewRecord {
            name: name_from(&host),
            kind: CredentialType::Registry,
            fields: f,
            description: None,
            tags: vec!["imported".to_owned()],
            expires_at: None,
        });
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
    let mut fields = BTreeMap::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!(
                "{} line {}: expected KEY=VALUE; nothing was imported — fix the line and retry",
                path.display(),
                n + 1
            ));
        };
        let key = key.trim();
        if !is_env_name(key) {
            return Err(format!(
                "{} line {}: '{key}' is not a variable name; nothing was imported",
                path.display(),
                n + 1
            ));
        }
        let value = value.trim();
        let value = match (value.chars().next(), value.chars().last()) {
            (Some(q @ ('"' | '\'')), Some(e)) if value.len() >= 2 && q == e => {
                &value[1..value.len() - 1]
            }
            _ => value.split(" #").next().unwrap_or(value).trim_end(),
        };
        fields.insert(key.to_owned(), SecretValue::from(value));
    }
    Ok(NewRecord {
        name: name.to_owned(),
        kind: CredentialType::Generic,
        fields,
        description: None,
        tags: vec!["imported".to_owned()],
        expires_at: None,
    })
}
