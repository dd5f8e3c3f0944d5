//! `vault emit aws|list|rm` (SPEC §9): files other tools read, kept in sync
//! by the daemon. This slice: AWS shared-credentials profiles.

use std::path::PathBuf;

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
        } => {
            validate_name(&name).map_err(usage)?;
            let path = match path {
                Some(p) => p,
                None if process => default_aws_file("AWS_CONFIG_FILE", "config")?,
                None => default_aws_file("AWS_SHARED_CREDENTIALS_FILE", "credentials")?,
            };
            let program = if process {
                let exe = std::env::current_exe()
                    .map_err(|e| failed(format!("cannot find the vault program: {e}")))?;
                Some(exe.to_string_lossy().into_owned())
            } else {
                None
            };
            let path = std::path::absolute(&path)
                .map_err(|e| failed(format!("{}: {e}", path.display())))?;
            let path = path.to_string_lossy().into_owned();
            let info = match ctx.call_unlocked(&|| Request::EmitAws {
                name: name.clone(),
                profile: profile.clone(),
                path: path.clone(),
                force,
                process: program.clone(),
            })? {
                Response::Emitted(info) => info,
                _ => return Err(unexpected("emit")),
            };
            ctx.out.info(&format!(
                "emitting {name} as [{}] in {} (id {}); vault keeps it in sync",
                info.section, info.path, info.id
            ));
            if ctx.out.json {
                ctx.out.json(&info)?;
            }
            Ok(())
        }
        EmitAction::Gcloud {
            name,
            adc,
            path,
            force,
        } => {
            let path = match (path, adc) {
                (Some(p), _) => p,
                (None, true) => adc_file()?,
                (None, false) => {
                    return Err(usage("say where: --adc, or --path FILE"));
                }
            };
            emit_file(ctx, &name, "gcloud", Some(path), force)
        }
        EmitAction::File { name, path, force } => emit_file(ctx, &name, "file", path, force),
        EmitAction::Docker { name, path, force } => {
            validate_name(&name).map_err(usage)?;
            let path = match path {
                Some(p) => p,
                None => match std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
                    Some(dir) => PathBuf::from(dir).join("config.json"),
                    None => home()?.join(".docker/config.json"),
                },
            };
            let path = std::path::absolute(&path)
                .map_err(|e| failed(format!("{}: {e}", path.display())))?
                .to_string_lossy()
                .into_owned();
            let info = match ctx.call_unlocked(&|| Request::EmitDocker {
                name: name.clone(),
                path: path.clone(),
                force,
            })? {
                Response::Emitted(info) => info,
                _ => return Err(unexpected("emit")),
            };
            ctx.out.info(&format!(
                "emitting {name} as auths[{}] in {} (id {}); vault keeps it in sync",
                info.section, info.path, info.id
            ));
            if ctx.out.json {
                ctx.out.json(&info)?;
            }
            Ok(())
        }
        EmitAction::Repair => {
            let emitters = match ctx.call_unlocked(&|| Request::EmitRepair)? {
                Response::Emitters { emitters } => emitters,
                _ => return Err(unexpected("emit repair")),
            };
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
            let emitters = match ctx.call_unlocked(&|| Request::EmitList)? {
                Response::Emitters { emitters } => emitters,
                _ => return Err(unexpected("emit list")),
            };
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
            let info = match ctx.call_unlocked(&|| Request::EmitRemove { id: id.clone() })? {
                Response::Emitted(info) => info,
                _ => return Err(unexpected("emit rm")),
            };
            ctx.out.info(&format!(
                "removed [{}] from {}; no longer emitted",
                info.section, info.path
            ));
            if ctx.out.json {
                ctx.out.json(&info)?;
            }
            Ok(())
        }
    }
}

/// `vault emit gcloud|file`.
fn emit_file(
    ctx: &mut Ctx,
    name: &str,
    kind: &str,
    path: Option<PathBuf>,
    force: bool,
) -> CliResult<()> {
    validate_name(name).map_err(usage)?;
    let path = match path {
        Some(p) => Some(
            std::path::absolute(&p)
                .map_err(|e| failed(format!("{}: {e}", p.display())))?
                .to_string_lossy()
                .into_owned(),
        ),
        None => None,
    };
    let info = match ctx.call_unlocked(&|| Request::EmitFile {
        name: name.to_owned(),
        kind: kind.to_owned(),
        path: path.clone(),
        force,
    })? {
        Response::Emitted(info) => info,
        _ => return Err(unexpected("emit")),
    };
    ctx.out.info(&format!(
        "emitting {name} to {} (id {}); vault keeps it in sync",
        info.path, info.id
    ));
    if ctx.out.json {
        ctx.out.json(&info)?;
    }
    Ok(())
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

/// The user's home directory.
fn home() -> CliResult<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| usage("HOME is not set: give the file with --path"))
}

fn table(emitters: &[EmitterInfo]) -> Table {
    let mut t = Table::new(&["ID", "CREDENTIAL", "KIND", "STATUS", "FILE", "SECTION"]);
    for e in emitters {
        t.row(vec![
            (e.id.clone(), None),
            (e.name.clone().unwrap_or_else(|| "-".to_owned()), None),
            (e.kind.clone(), None),
            (e.state.clone(), None),
            (e.path.clone(), None),
            (e.section.clone(), None),
        ]);
    }
    t
}
