//! `vault emit aws|docker|gcloud|file|kube|list|repair|rm` (docs/emit.md): files
//! other tools read, kept in sync by the daemon.

use std::path::{Path, PathBuf};

use vault_protocol::message::EmitterInfo;
use vault_protocol::{Request, Response, validate_name};

use super::Ctx;
use crate::args::EmitAction;
use crate::error::{CliResult, failed, unexpected, usage};
use crate::output::Table;

/// `vault emit ...`.
pub fn run(ctx: &mut Ctx, action: EmitAction) -> CliResult<()> {
    match action {
        EmitAction::Aws {
            name,
            profile,
            path,
            force,
            process,
            sso,
        } => {
            validate_name(&name).map_err(usage)?;
            let path = match path {
                Some(p) => p,
                None if process || sso => default_aws_file("AWS_CONFIG_FILE", "config")?,
                None => default_aws_file("AWS_SHARED_CREDENTIALS_FILE", "credentials")?,
            };
            let program = if process { Some(this_program()?) } else { None };
            let path = absolute(&path)?;
            // With keys, the profile's region goes to the config file.
            let config = if process || sso {
                None
            } else {
                Some(absolute(&default_aws_file("AWS_CONFIG_FILE", "config")?)?)
            };
            // botocore's token cache: always under the home directory.
            let sso_cache = if sso {
                Some(absolute(&home()?.join(".aws/sso/cache"))?)
            } else {
                None
            };
            let req = || Request::EmitAws {
                name: name.clone(),
                profile: profile.clone(),
                path: path.clone(),
                force,
                process: program.clone(),
                config: config.clone(),
                adopt: false,
                sso_cache: sso_cache.clone(),
            };
            emitted(ctx, &req, |info| {
                format!(
                    "emitting {name} as [{}] in {} (id {}); vault keeps it in sync",
                    info.section, info.path, info.id
                )
            })
        }
        EmitAction::Gcloud {
            name,
            adc,
            path,
            force,
            external_account,
        } => {
            let path = match (path, adc) {
                (Some(p), _) => p,
                (None, true) => adc_file()?,
                (None, false) => {
                    return Err(usage("say where: --adc, or --path FILE"));
                }
            };
            let program = if external_account {
                Some(this_program()?)
            } else {
                None
            };
            emit_file(ctx, &name, "gcloud", Some(path), force, program)
        }
        EmitAction::File { name, path, force } => emit_file(ctx, &name, "file", path, force, None),
        EmitAction::Docker {
            name,
            path,
            force,
            helper,
        } => {
            validate_name(&name).map_err(usage)?;
            let path = match path {
                Some(p) => p,
                None => match std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
                    Some(dir) => PathBuf::from(dir).join("config.json"),
                    None => home()?.join(".docker/config.json"),
                },
            };
            let path = absolute(&path)?;
            let req = || Request::EmitDocker {
                name: name.clone(),
                path: path.clone(),
                force,
                helper,
                adopt: false,
            };
            let object = if helper { "credHelpers" } else { "auths" };
            emitted(ctx, &req, |info| {
                format!(
                    "emitting {name} as {object}[{}] in {} (id {}); vault keeps it in sync",
                    info.section, info.path, info.id
                )
            })
        }
        EmitAction::Kube {
            name,
            user,
            cluster,
            region,
            scopes,
            kubeconfig,
            force,
        } => {
            validate_name(&name).map_err(usage)?;
            let path = match kubeconfig {
                Some(p) => p,
                None => default_kubeconfig()?,
            };
            let path = absolute(&path)?;
            let program = this_program()?;
            let req = || Request::EmitKube {
                name: name.clone(),
                path: path.clone(),
                user: user.clone(),
                program: program.clone(),
                cluster: cluster.clone(),
                region: region.clone(),
                scopes: scopes.clone(),
                force,
            };
            emitted(ctx, &req, |info| {
                format!(
                    "emitting {name} as user '{0}' in {1} (id {2}); vault keeps it in sync. Use \
                     it with 'kubectl config set-context CONTEXT --user={0}'",
                    info.section, info.path, info.id
                )
            })
        }
        EmitAction::Repair => {
            let emitters = emitters(ctx, || Request::EmitRepair)?;
            if ctx.out.json {
                return ctx.out.json(&emitters);
            }
            ctx.out.info(&format!(
                "rewrote {} emitted file(s) from the vault",
                emitters.len()
            ));
            let color = ctx.out.color;
            ctx.out.text(&table(&emitters).render(color));
            Ok(())
        }
        EmitAction::List => {
            let emitters = emitters(ctx, || Request::EmitList)?;
            if ctx.out.json {
                return ctx.out.json(&emitters);
            }
            if emitters.is_empty() {
                ctx.out
                    .info("no emitted files: see 'vault emit aws --help'");
                return Ok(());
            }
            let color = ctx.out.color;
            ctx.out.text(&table(&emitters).render(color));
            Ok(())
        }
        EmitAction::Rm { id } => {
            let req = || Request::EmitRemove {
                id: id.clone(),
                keep: false,
            };
            emitted(ctx, &req, |info| {
                format!(
                    "removed [{}] from {}; no longer emitted",
                    info.section, info.path
                )
            })
        }
    }
}

/// Sends a request answered by one binding; says what was done (and with
/// `--json`, prints the binding).
fn emitted(
    ctx: &mut Ctx,
    req: &dyn Fn() -> Request,
    said: impl Fn(&EmitterInfo) -> String,
) -> CliResult<()> {
    let info = match ctx.call_unlocked(req)? {
        Response::Emitted(info) => info,
        _ => return Err(unexpected("emit")),
    };
    ctx.out.info(&said(&info));
    // Written, but something next to it could not be (a region the config
    // file cannot take): said, as `emit list` will say it.
    if info.state.needs_attention() {
        ctx.out.warn(&format!("{}: {}", info.id, info.state));
    }
    if ctx.out.json {
        ctx.out.json(&info)?;
    }
    Ok(())
}

/// Sends a request answered by every binding.
pub(super) fn emitters(ctx: &mut Ctx, req: fn() -> Request) -> CliResult<Vec<EmitterInfo>> {
    match ctx.call_unlocked(&req)? {
        Response::Emitters { emitters } => Ok(emitters),
        _ => Err(unexpected("emit")),
    }
}

/// `path` made absolute, as the daemon (another working directory) needs.
pub(super) fn absolute(path: &Path) -> CliResult<String> {
    std::path::absolute(path)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| failed(format!("{}: {e}", path.display())))
}

/// `vault emit gcloud|file`.
fn emit_file(
    ctx: &mut Ctx,
    name: &str,
    kind: &str,
    path: Option<PathBuf>,
    force: bool,
    program: Option<String>,
) -> CliResult<()> {
    validate_name(name).map_err(usage)?;
    let path = path.as_deref().map(absolute).transpose()?;
    let req = || Request::EmitFile {
        name: name.to_owned(),
        kind: kind.to_owned(),
        path: path.clone(),
        force,
        program: program.clone(),
    };
    emitted(ctx, &req, |info| {
        format!(
            "emitting {name} to {} (id {}); vault keeps it in sync",
            info.path, info.id
        )
    })
}

/// This `vault` program's path, which an emitted file runs.
fn this_program() -> CliResult<String> {
    let exe = std::env::current_exe()
        .map_err(|e| failed(format!("cannot find the vault program: {e}")))?;
    Ok(exe.to_string_lossy().into_owned())
}

/// gcloud's ADC file: `$CLOUDSDK_CONFIG` or `~/.config/gcloud`, then
/// `application_default_credentials.json`.
fn adc_file() -> CliResult<PathBuf> {
    let dir = match std::env::var_os("CLOUDSDK_CONFIG").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => home()?.join(".config/gcloud"),
    };
    Ok(dir.join("application_default_credentials.json"))
}

/// `$VAR`, else `~/.aws/FILE`.
fn default_aws_file(var: &str, file: &str) -> CliResult<PathBuf> {
    if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    Ok(home()?.join(".aws").join(file))
}

/// Where kubectl adds new entries: the first file of `$KUBECONFIG` (a
/// list split by `:`), else `~/.kube/config`.
fn default_kubeconfig() -> CliResult<PathBuf> {
    let listed = std::env::var_os("KUBECONFIG")
        .and_then(|list| std::env::split_paths(&list).find(|p| !p.as_os_str().is_empty()));
    match listed {
        Some(p) => Ok(p),
        None => Ok(home()?.join(".kube/config")),
    }
}

/// The user's home directory.
fn home() -> CliResult<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| {
            usage("HOME is not set: give the file with --path (--kubeconfig for emit kube)")
        })
}

fn table(emitters: &[EmitterInfo]) -> Table {
    let mut t = Table::new(&["ID", "CREDENTIAL", "KIND", "STATUS", "FILE", "SECTION"]);
    for e in emitters {
        t.row(vec![
            (e.id.clone(), None),
            (e.name.clone().unwrap_or_else(|| "-".to_owned()), None),
            (e.kind.to_string(), None),
            (e.state.to_string(), None),
            (e.path.clone(), None),
            (e.section.clone(), None),
        ]);
    }
    t
}
