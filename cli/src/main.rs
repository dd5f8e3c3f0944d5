//! `vault`, the command-line client of `vaultd` (docs/user-guide.md).
//!
//! Stateless: every command is one or a few requests to the daemon, which it
//! starts on demand. It never links crypto or storage (a test enforces it),
//! never takes a secret from argv without warning, and never prints a secret
//! in an error.
//!
//! Errors go to stderr as `vault: <message>` and become the exit codes of
//! docs/user-guide.md; with `--json` they are also one `{"error": {...}}` document on
//! stdout.

mod args;
mod client;
mod clip;
mod commands;
mod complete;
mod completion_script;
mod dotenv;
mod error;
mod exec;
mod generate;
mod helpers;
mod input;
mod names;
mod output;
mod secret_json;

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use serde_json::json;

use crate::args::Cli;
use crate::client::Target;
use crate::error::usage;
use crate::output::Output;

/// Freed heap blocks are wiped (as in vaultd): `vault get` and a waiting
/// `vault exec` hold values the user asked for, and none should outlive its
/// buffer.
#[global_allocator]
static ALLOC: zeroizing_alloc::ZeroAlloc<std::alloc::System> =
    zeroizing_alloc::ZeroAlloc(std::alloc::System);

fn main() -> ExitCode {
    // Called as docker-credential-vault or git-credential-vault?
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if let Some(helper) = argv.first().and_then(|a| helpers::which(a)) {
        return ExitCode::from(u8::try_from(helper(&argv[1..])).unwrap_or(1));
    }
    // `vault get --clip`'s detached holder (clip.rs), started by that name.
    if argv.first().is_some_and(|a| a == clip::HOLDER_NAME) {
        return ExitCode::from(u8::try_from(clip::hold(&argv[1..])).unwrap_or(1));
    }
    // A shell's Tab (VAULT_COMPLETE=SHELL vault -- WORDS): answered and gone.
    complete::answer_if_asked();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => usage_error(e),
    };
    let mut out = Output::new(cli.json, cli.quiet);
    let result = Target::from_env(cli.socket)
        .and_then(|target| commands::run(&mut out, target, cli.command));
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            out.discard();
            eprintln!("vault: {}", e.message);
            if out.json {
                let _ = out.json(&json!({ "error": e }));
            }
            e.code.exit_code()
        }
    };
    if let Err(e) = out.flush() {
        eprintln!("vault: cannot write to stdout: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Help and version go out as clap prints them; usage errors exit 2, and
/// with `--json` also leave an error document on stdout.
fn usage_error(e: clap::Error) -> ! {
    let informational = matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if !informational && std::env::args_os().any(|a| a == "--json") {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default();
        let message = first.strip_prefix("error: ").unwrap_or(first);
        println!("{}", json!({ "error": usage(message) }));
    }
    e.exit()
}
