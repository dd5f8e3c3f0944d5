//! `vault exec -c NAME... [--env K=V]... -- CMD ARGS` (SPEC §8): resolve
//! every credential in one request, refuse before starting anything when one
//! is missing, locked or expired, write the child's files into a private
//! folder, run the child with its environment, forward signals, remove the
//! folder whatever way the child ends, and exit with the child's code.

mod child;
mod mask;
pub mod plan;

use std::ffi::OsString;

use vault_protocol::message::RecordView;
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{ErrorCode, Request, Response, WireError, validate_name};

use crate::args::ExecArgs;
use crate::commands::Ctx;
use crate::error::{CliResult, failed, unexpected, usage};

/// Set in the child: the credentials it was given, comma-separated.
pub const VAULT_EXEC: &str = "VAULT_EXEC";

/// Runs `vault exec`; the child's exit code becomes ours.
pub fn run(ctx: &mut Ctx, args: ExecArgs) -> CliResult<()> {
    let mut names: Vec<String> = Vec::new();
    for name in &args.credentials {
        validate_name(name).map_err(usage)?;
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let overrides = parse_overrides(&args.env)?;
    let outer = std::env::var(VAULT_EXEC).unwrap_or_default();
    if let Some(again) = names
        .iter()
        .find(|n| outer.split(',').any(|o| o == n.as_str()))
    {
        return Err(WireError::new(
            ErrorCode::Conflict,
            format!(
                "already inside 'vault exec' with {again} (VAULT_EXEC={outer}): the variables are set; \
                 run the command directly, or leave the outer 'vault exec' first"
            ),
        ));
    }
    let Some((program, program_args)) = args.command.split_first() else {
        return Err(usage(
            "no command to run: vault exec -c NAME -- COMMAND [ARG...]",
        ));
    };

    let records = if names.is_empty() {
        Vec::new()
    } else {
        match ctx.call_unlocked(&|| Request::Resolve {
            names: names.clone(),
        })? {
            Response::Resolved { records } => records,
            _ => return Err(unexpected("resolve")),
        }
    };
    refuse_expired(&records, Timestamp::now())?;
    // The child must not inherit our connection, and the daemon need not
    // keep it open while the child runs.
    ctx.disconnect();

    let folder = child::Folder::create(&ctx.target.paths.exec_dir()).map_err(failed)?;
    let mut plan = plan::build(&records, &overrides, &folder.path_str()).map_err(usage)?;
    let mut masker = mask::Masker::default();
    if !args.no_mask {
        for record in &records {
            for (field, value) in &record.fields {
                if record.kind.is_secret(field) {
                    masker.add(value.expose_secret(), &record.name);
                }
            }
        }
    }
    drop(records);
    folder.write_all(&plan.files).map_err(failed)?;
    plan.files.clear();

    let mut exec_names = outer;
    for name in &names {
        if !exec_names.is_empty() {
            exec_names.push(',');
        }
        exec_names.push_str(name);
    }
    let code = child::run(program, program_args, &plan, &exec_names, &masker);
    drop(plan);
    drop(folder);
    match code {
        Ok(code) => {
            ctx.exit_code = code;
            Ok(())
        }
        Err(child::SpawnError { code, message }) => {
            eprintln!("vault: {message}");
            ctx.exit_code = code;
            Ok(())
        }
    }
}

/// `--env K=V` pairs; the value may be empty.
fn parse_overrides(pairs: &[String]) -> CliResult<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| usage(format!("--env {pair}: use --env NAME=VALUE")))
        })
        .collect()
}

/// Exit 7 before anything starts when a credential has expired, naming it
/// and when.
fn refuse_expired(records: &[RecordView], now: Timestamp) -> CliResult<()> {
    match records
        .iter()
        .find(|r| r.expired || r.expires_at.is_some_and(|t| t <= now))
    {
        Some(r) => Err(WireError::new(
            ErrorCode::Expired,
            format!(
                "{} expired at {}: renew it (vault set {} ... --ttl DUR) before running the command",
                r.name,
                r.expires_at.map(|t| t.to_string()).unwrap_or_default(),
                r.name
            ),
        )),
        None => Ok(()),
    }
}

/// The command, for messages.
pub fn describe(program: &OsString) -> String {
    program.to_string_lossy().into_owned()
}
