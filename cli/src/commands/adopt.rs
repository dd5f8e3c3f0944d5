//! `vault import aws|docker|env --adopt` and `--undo` (docs/lifecycle.md):
//! move a plaintext file off its secrets once they are in the vault, and
//! put them back. Each adopted aws or docker entry becomes an emitter
//! binding the daemon keeps: a `[PROFILE]` of `~/.aws/credentials` holding
//! only `credential_process = vault aws-process NAME`, a docker
//! `credHelpers[registry] = "vault"` in place of its `auths` entry. A
//! `.env` file's values become `vault://NAME/KEY` references, which `vault
//! exec --env-file` resolves. The
//! credential is tagged `adopted`, which is how `--undo` knows it. Nothing
//! the user wrote that was not imported is touched, and the file is copied
//! first to `FILE.vault-adopt-TIME` (0600, never overwritten).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use vault_protocol::message::{EmitterInfo, EmitterKind};
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{ErrorCode, Request, Response, WireError};
use zeroize::Zeroizing;

use super::Ctx;
use super::emit::{absolute, emitters};
use super::import::{Found, Outcome};
use crate::args::ImportSource;
use crate::dotenv;
use crate::error::{CliResult, failed, unexpected};

/// The tag of a credential whose file entry the vault took over.
pub const ADOPTED: &str = "adopted";

/// What `--adopt` did.
pub(super) struct Adopted {
    /// The credentials whose entries now ask the vault.
    pub adopted: Vec<String>,
    /// The copy of the file kept before the first change.
    pub backup: Option<String>,
    /// An error when some could not be adopted (the others were).
    pub result: CliResult<()>,
}

/// `--adopt`: every imported entry that is in the vault with the file's
/// values (added, replaced or already there) and can be taken over.
pub(super) fn adopt(
    ctx: &mut Ctx,
    source: ImportSource,
    path: &Path,
    found: &[Found],
    outcomes: &[Outcome],
    dry_run: bool,
) -> CliResult<Adopted> {
    let file = absolute(path)?;
    let mut chosen = Vec::new();
    for (f, outcome) in found.iter().zip(outcomes) {
        let name = &f.record.name;
        if let Some(why) = &f.not_adoptable {
            ctx.out
                .warn(&format!("{name} was imported but not adopted: {why}"));
        } else if *outcome == Outcome::Skipped {
            ctx.out.warn(&format!(
                "{name} is not adopted: the vault holds other values under that name \
                 (--force replaces them)"
            ));
        } else {
            chosen.push(f);
        }
    }
    let mut done = Adopted {
        adopted: Vec::new(),
        backup: None,
        result: Ok(()),
    };
    if dry_run {
        for f in &chosen {
            ctx.out
                .info(&format!("would adopt {} in {file}", entry(source, &f.key)));
        }
        done.adopted = chosen.iter().map(|f| f.record.name.clone()).collect();
        return Ok(done);
    }
    if chosen.is_empty() {
        return Ok(done);
    }
    let backup = keep_backup(path)?;
    ctx.out.info(&format!(
        "kept the file as {backup} (0600); remove it once you are satisfied"
    ));
    if let Some(repo) = git_work_tree(Path::new(&backup)) {
        ctx.out.warn(&format!(
            "the backup holds the plaintext and is inside the git work tree {}: a .gitignore \
             that lists only the file does not cover it; remove it, or ignore \
             '*.vault-adopt-*'",
            repo.display()
        ));
    }
    done.backup = Some(backup);
    if matches!(source, ImportSource::Env) {
        for f in chosen {
            retag(ctx, &f.record.name, true)?;
            if let Err(e) = adopt_env(path, &f.record.name) {
                let _ = retag(ctx, &f.record.name, false);
                return Err(e);
            }
            ctx.out.info(&format!(
                "adopted {file}: its values are references to {} now; run with 'vault exec \
                 --env-file {} -- …'",
                f.record.name,
                path.display()
            ));
            done.adopted.push(f.record.name.clone());
        }
        return Ok(done);
    }
    let program = if matches!(source, ImportSource::Aws) {
        let exe = std::env::current_exe()
            .map_err(|e| failed(format!("cannot find the vault program: {e}")))?;
        Some(exe.to_string_lossy().into_owned())
    } else {
        None
    };
    let mut failures: Vec<WireError> = Vec::new();
    for f in chosen {
        let name = f.record.name.clone();
        let req = || match source {
            ImportSource::Docker => Request::EmitDocker {
                name: name.clone(),
                path: file.clone(),
                force: false,
                helper: true,
                adopt: true,
            },
            _ => Request::EmitAws {
                name: name.clone(),
                profile: f.key.clone(),
                path: file.clone(),
                force: false,
                process: program.clone(),
                config: None,
                adopt: true,
                sso_cache: None,
            },
        };
        // Tagged first: an entry taken over is always one --undo finds.
        let result = retag(ctx, &name, true).and_then(|()| {
            let emitted = ctx.call_unlocked(&req).and_then(|answer| match answer {
                Response::Emitted(_) => Ok(()),
                _ => Err(unexpected("emit")),
            });
            if emitted.is_err() {
                let _ = retag(ctx, &name, false);
            }
            emitted
        });
        match result {
            Ok(()) => {
                ctx.out.info(&format!(
                    "adopted {}: {}",
                    entry(source, &f.key),
                    asks_now(source, &name)
                ));
                done.adopted.push(name);
            }
            Err(e) => {
                ctx.out.warn(&format!(
                    "{name}: not adopted ({}); its entry in the file is as it was",
                    e.message
                ));
                failures.push(e);
            }
        }
    }
    if let Some(first) = failures.first() {
        done.result = Err(WireError::new(
            first.code,
            format!(
                "{} of the imported entries could not be adopted (see above); the vault has \
                 them, and the file keeps them as they were",
                failures.len()
            ),
        ));
    }
    Ok(done)
}

/// `--undo`: every adopted entry of the file gets its values back in plain
/// text, and the vault stops managing it (the credential stays in the
/// vault).
pub(super) fn undo(ctx: &mut Ctx, source: ImportSource, path: &Path) -> CliResult<()> {
    let kind = match source {
        ImportSource::Aws => EmitterKind::AwsProcess,
        ImportSource::Docker => EmitterKind::DockerHelper,
        ImportSource::Env => return undo_env(ctx, path),
    };
    let file = absolute(path)?;
    let mut undone = Vec::new();
    // In name order: the binding ids (the daemon's order) are random.
    let mut bound = emitters(ctx, || Request::EmitList)?;
    bound.sort_by(|a, b| a.name.cmp(&b.name));
    for e in bound {
        let Some(name) = e.name.clone() else {
            continue;
        };
        if e.kind != kind || e.path != file || !tagged(ctx, &name)? {
            continue;
        }
        match source {
            ImportSource::Docker => undo_docker(ctx, &name, &file)?,
            _ => undo_aws(ctx, &e, &name, &file)?,
        }
        retag(ctx, &name, false)?;
        ctx.out.info(&format!(
            "{} has its values back in {file}; vault no longer manages it ({name} stays in the \
             vault)",
            entry(source, &e.section)
        ));
        undone.push(name);
    }
    if undone.is_empty() {
        ctx.out
            .info(&format!("nothing adopted in {file}: nothing to undo"));
    }
    ctx.out
        .json(&serde_json::json!({"undone": undone, "path": file}))
}

/// The profile's keys in place of `credential_process` (the binding turns
/// into a keys one, then is released to the user).
fn undo_aws(ctx: &mut Ctx, e: &EmitterInfo, name: &str, file: &str) -> CliResult<()> {
    let keys = emit(ctx, &|| Request::EmitAws {
        name: name.to_owned(),
        profile: e.section.clone(),
        path: file.to_owned(),
        force: true,
        process: None,
        config: None,
        adopt: false,
        sso_cache: None,
    })?;
    release(ctx, &keys.id)
}

/// The login back in `auths` (the binding switches from `credHelpers`:
/// the login is written before the helper entry goes, so docker always has
/// one), then released to the user.
fn undo_docker(ctx: &mut Ctx, name: &str, file: &str) -> CliResult<()> {
    let auths = emit(ctx, &|| Request::EmitDocker {
        name: name.to_owned(),
        path: file.to_owned(),
        force: false,
        helper: false,
        adopt: false,
    })?;
    release(ctx, &auths.id)
}

fn release(ctx: &mut Ctx, id: &str) -> CliResult<()> {
    emit(ctx, &|| Request::EmitRemove {
        id: id.to_owned(),
        keep: true,
    })
    .map(drop)
}

fn emit(ctx: &mut Ctx, req: &dyn Fn() -> Request) -> CliResult<EmitterInfo> {
    match ctx.call_unlocked(req)? {
        Response::Emitted(info) => Ok(info),
        _ => Err(unexpected("emit")),
    }
}

/// Whether `name` carries the `adopted` tag.
fn tagged(ctx: &mut Ctx, name: &str) -> CliResult<bool> {
    Ok(tags(ctx, name)?.iter().any(|t| t == ADOPTED))
}

fn tags(ctx: &mut Ctx, name: &str) -> CliResult<Vec<String>> {
    match ctx.call_unlocked(&|| Request::Get {
        name: name.to_owned(),
    })? {
        Response::Record(view) => Ok(view.tags),
        _ => Err(unexpected("get")),
    }
}

/// Adds (`on`) or takes away the `adopted` tag.
fn retag(ctx: &mut Ctx, name: &str, on: bool) -> CliResult<()> {
    let mut tags = tags(ctx, name)?;
    if tags.iter().any(|t| t == ADOPTED) == on {
        return Ok(());
    }
    tags.retain(|t| t != ADOPTED);
    if on {
        tags.push(ADOPTED.to_owned());
    }
    match ctx.call_unlocked(&|| Request::Set {
        name: name.to_owned(),
        fields: Default::default(),
        unset: vec![],
        description: None,
        tags: Some(tags.clone()),
        expires_at: None,
    })? {
        Response::Changed(_) => Ok(()),
        _ => Err(unexpected("set")),
    }
}

/// `[PROFILE]` or `credHelpers[HOST]`, as users read the file.
fn entry(source: ImportSource, key: &str) -> String {
    match source {
        ImportSource::Docker => format!("the login of {key}"),
        ImportSource::Env => key.to_owned(),
        _ => format!("[{key}]"),
    }
}

fn asks_now(source: ImportSource, name: &str) -> String {
    match source {
        ImportSource::Docker => format!("docker now asks docker-credential-vault ({name})"),
        _ => format!("its credential_process now asks the vault ({name})"),
    }
}

/// Copies the file to `FILE.vault-adopt-TIME` (0600, a new file: an older
/// backup is never overwritten) and returns that path.
fn keep_backup(path: &Path) -> CliResult<String> {
    let bytes =
        std::fs::read(path).map_err(|e| failed(format!("cannot read {}: {e}", path.display())))?;
    let stem = format!("{}.vault-adopt-{}", path.display(), Timestamp::now().unix());
    for n in 1..100 {
        let backup = if n == 1 {
            stem.clone()
        } else {
            format!("{stem}-{n}")
        };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&backup);
        match file {
            Ok(mut f) => {
                f.write_all(&bytes)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| {
                        failed(format!("cannot write {backup}: {e}; nothing was adopted"))
                    })?;
                return Ok(backup);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(failed(format!(
                    "cannot keep a backup as {backup}: {e}; nothing was adopted"
                )));
            }
        }
    }
    Err(failed(format!(
        "cannot find a free name for a backup beside {}; nothing was adopted",
        path.display()
    )))
}

/// The `.env` file with each value (not a reference already) replaced by
/// the reference to its field of `name`.
fn adopt_env(path: &Path, name: &str) -> CliResult<()> {
    let text = read_text(path)?;
    let entries = dotenv::parse(&text, &path.display().to_string()).map_err(failed)?;
    let edits: Vec<_> = entries
        .iter()
        .filter(|e| dotenv::reference(&e.value).is_none())
        .map(|e| (e.span.clone(), dotenv::reference_to(name, &e.key)))
        .collect();
    replace_file(path, &dotenv::replace(&text, &edits))
}

/// `vault import env --undo`: every reference in the file gets its value
/// back (quoted as needed); one that cannot be resolved or written stays,
/// and is named.
fn undo_env(ctx: &mut Ctx, path: &Path) -> CliResult<()> {
    let text = read_text(path)?;
    let entries = dotenv::parse(&text, &path.display().to_string()).map_err(failed)?;
    let mut records = std::collections::BTreeMap::new();
    let mut edits = Vec::new();
    let mut undone = Vec::new();
    let mut left = 0;
    for e in &entries {
        let Some((name, field)) = dotenv::reference(&e.value) else {
            continue;
        };
        if !records.contains_key(name) {
            let view = match ctx.call_unlocked(&|| Request::Get {
                name: name.to_owned(),
            }) {
                Ok(Response::Record(view)) => Some(view),
                Ok(_) => return Err(unexpected("get")),
                Err(x) if x.code == ErrorCode::NotFound => None,
                Err(x) => return Err(x),
            };
            records.insert(name.to_owned(), view);
        }
        let value = records
            .get(name)
            .and_then(|v| v.as_ref())
            .and_then(|v| v.fields.get(field))
            .map(|v| v.expose_secret());
        match value.map(dotenv::quoted) {
            Some(Some(q)) => {
                edits.push((e.span.clone(), q));
                undone.push(e.key.clone());
            }
            Some(None) => {
                left += 1;
                ctx.out.warn(&format!(
                    "line {}: {} holds both kinds of quotes or a newline, which a .env value \
                     cannot; left as the reference",
                    e.line, e.key
                ));
            }
            None => {
                left += 1;
                ctx.out.warn(&format!(
                    "line {}: the vault has no {field} in '{name}'; left as the reference",
                    e.line
                ));
            }
        }
    }
    if !edits.is_empty() {
        replace_file(path, &Zeroizing::new(dotenv::replace(&text, &edits)))?;
    }
    // A credential still referenced stays tagged: --undo may run again.
    for (name, view) in &records {
        let still = left > 0
            && entries
                .iter()
                .filter_map(|e| dotenv::reference(&e.value))
                .any(|(n, _)| n == name);
        if !still
            && view
                .as_ref()
                .is_some_and(|v| v.tags.iter().any(|t| t == ADOPTED))
        {
            retag(ctx, name, false)?;
        }
    }
    ctx.out.info(&format!(
        "{} value(s) back in {}{}",
        undone.len(),
        path.display(),
        if left > 0 {
            format!("; {left} left as references (see above)")
        } else {
            String::new()
        }
    ));
    ctx.out
        .json(&serde_json::json!({"undone": undone, "path": path, "left": left}))?;
    if left > 0 {
        return Err(failed(format!(
            "{left} reference(s) in {} could not be written back (see above)",
            path.display()
        )));
    }
    Ok(())
}

fn read_text(path: &Path) -> CliResult<Zeroizing<String>> {
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|e| failed(format!("cannot read {}: {e}", path.display())))
}

/// Replaces the file atomically (a temporary file beside it, renamed over
/// it), keeping its permissions.
fn replace_file(path: &Path, text: &str) -> CliResult<()> {
    use std::os::unix::fs::PermissionsExt as _;
    // A link is followed: its target is the file the user keeps (renaming
    // over the link would leave the plaintext in the target).
    let target = std::fs::canonicalize(path)
        .map_err(|e| failed(format!("cannot resolve {}: {e}", path.display())))?;
    let path = target.as_path();
    let fail = |e: std::io::Error| {
        failed(format!(
            "cannot write {}: {e}; it is as it was",
            path.display()
        ))
    };
    let mode = std::fs::metadata(path).map_err(fail)?.permissions().mode() & 0o7777;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(fail)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(fail)?;
    tmp.write_all(text.as_bytes()).map_err(fail)?;
    tmp.as_file().sync_all().map_err(fail)?;
    tmp.persist(path).map_err(|e| fail(e.error))?;
    // The rename itself reaches the disk.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail)?;
    Ok(())
}

/// The git work tree `file` is in, if any.
fn git_work_tree(file: &Path) -> Option<std::path::PathBuf> {
    let file = std::path::absolute(file).ok()?;
    file.ancestors()
        .skip(1)
        .find(|d| d.join(".git").exists())
        .map(Path::to_path_buf)
}
