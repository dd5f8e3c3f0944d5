//! The commands (docs/user-guide.md; issue 2's scope) and what they share: a context
//! holding the output and a lazily opened connection, and the one place that
//! turns "the vault is locked" into an unlock and a retry.

mod adopt;
mod audit;
mod aws_process;
mod check;
mod console;
mod daemon;
mod doctor;
mod edit;
mod eks;
mod emit;
mod gcp;
mod import;
mod kube;
mod publish;
mod records;
mod rotate;
mod sso;
mod sync;
mod vault;

pub use vault::agent_socket;

use clap_complete::Shell;
use vault_protocol::{ErrorCode, Request, Response};

use crate::args::Command;
use crate::client::{Client, Target};
use crate::error::CliResult;
use crate::output::Output;

/// What every command works with.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// Where results and messages go.
    pub out: &'a mut Output,
    /// The vault and its daemon.
    pub target: Target,
    client: Option<Client>,
    /// Exit code of a command that succeeded but has a non-zero answer
    /// (`vault daemon status` when the daemon is not running).
    pub exit_code: i32,
}

impl<'a> Ctx<'a> {
    /// A context for the vault at `target`.
    pub fn new(out: &'a mut Output, target: Target) -> Self {
        Self {
            out,
            target,
            client: None,
            exit_code: 0,
        }
    }

    /// The connection, starting the daemon if needed.
    pub fn client(&mut self) -> CliResult<&mut Client> {
        let client = match self.client.take() {
            Some(client) => client,
            None => Client::connect_or_start(&self.target)?,
        };
        Ok(self.client.insert(client))
    }

    /// Uses `client` for the following requests.
    pub fn adopt(&mut self, client: Client) {
        self.client = Some(client);
    }

    /// Closes the connection (a child process must not inherit it).
    pub fn disconnect(&mut self) {
        self.client = None;
    }

    /// Sends one request.
    pub fn call(&mut self, req: Request) -> CliResult<Response> {
        self.client()?.call(req)
    }

    /// Sends a request that needs the vault unlocked. When it is locked,
    /// unlocks it (prompting on a terminal, once across all waiting CLIs) and
    /// sends the request once more; `build` makes the request again because
    /// requests hold secrets and are not `Clone`.
    pub fn call_unlocked(&mut self, build: &dyn Fn() -> Request) -> CliResult<Response> {
        match self.call(build()) {
            Err(e) if e.code == ErrorCode::Locked => {
                vault::unlock_for_retry(self)?;
                self.call(build())
            }
            other => other,
        }
    }
}

/// Runs one command against the vault at `target`; returns the exit code.
pub fn run(out: &mut Output, target: Target, command: Command) -> CliResult<i32> {
    let mut ctx = Ctx::new(out, target);
    match command {
        Command::Init(args) => vault::init(&mut ctx, &args),
        Command::Unlock(args) => vault::unlock(&mut ctx, &args),
        Command::Lock => vault::lock(&mut ctx),
        Command::Status => vault::status(&mut ctx),
        Command::Add(args) => records::add(&mut ctx, args),
        Command::Set(args) => records::set(&mut ctx, args),
        Command::Get(args) => records::get(&mut ctx, &args),
        Command::Otp(args) => records::otp(&mut ctx, &args),
        Command::Check(args) => check::run(&mut ctx, &args),
        Command::Audit(args) => audit::run(&mut ctx, &args),
        Command::Edit(args) => edit::edit(&mut ctx, &args),
        Command::Rotate(args) => rotate::run(&mut ctx, args),
        Command::List(args) => records::list(&mut ctx, &args),
        Command::Rm(args) => records::rm(&mut ctx, &args),
        Command::Rename { old, new } => records::rename(&mut ctx, &old, &new),
        Command::History { name } => records::history(&mut ctx, &name),
        Command::Restore { name, revision } => records::restore(&mut ctx, &name, revision),
        Command::Exec(args) => crate::exec::run(&mut ctx, args),
        Command::Import(args) => import::run(&mut ctx, &args),
        Command::Emit { action } => emit::run(&mut ctx, action),
        Command::Gcp { action } => gcp::run(&mut ctx, action),
        Command::Eks { action } => eks::run(&mut ctx, action),
        Command::Gke { action } => gcp::gke(&mut ctx, action),
        Command::Console {
            name,
            destination,
            region,
            duration,
            open,
        } => console::run(&mut ctx, name, destination, region, &duration, open),
        Command::Sso { action } => sso::run(&mut ctx, action),
        Command::AwsProcess { name } => aws_process::run(&mut ctx, &name),
        Command::Daemon { action } => daemon::run(&mut ctx, action),
        Command::Doctor => doctor::run(&mut ctx),
        Command::Login(args) => sync::login(&mut ctx, &args),
        Command::Sync { action, now: _ } => match action {
            Some(crate::args::SyncAction::Status) => sync::status(&mut ctx),
            Some(crate::args::SyncAction::Now) | None => sync::now(&mut ctx),
            Some(crate::args::SyncAction::Verify) => sync::verify(&mut ctx, false),
            Some(crate::args::SyncAction::Repair) => sync::verify(&mut ctx, true),
            Some(crate::args::SyncAction::UnshareAudit) => sync::unshare_audit(&mut ctx),
        },
        Command::Conflicts => sync::conflicts(&mut ctx),
        Command::Approve(args) => sync::approve(&mut ctx, &args),
        Command::Remote { action } => publish::remote(&mut ctx, &action),
        Command::Publish(args) => publish::publish(&mut ctx, &args),
        Command::Unpublish(args) => publish::unpublish(&mut ctx, &args),
        Command::SshAgent(args) => vault::ssh_agent(&mut ctx, &args),
        Command::Completions { shell } => completions(ctx.out, shell),
    }?;
    Ok(ctx.exit_code)
}

/// `vault completions SHELL`: the script on stdout (never JSON). It runs
/// `vault` on each Tab: the one on PATH, or this very program when it was
/// started by a path (`./target/release/vault completions bash`).
pub fn completions(out: &mut Output, shell: Shell) -> CliResult<()> {
    let by_path = std::env::args_os()
        .next()
        .is_some_and(|a| a.to_string_lossy().contains('/'));
    let completer = match std::env::current_exe() {
        Ok(exe) if by_path => exe.to_string_lossy().into_owned(),
        _ => "vault".to_owned(),
    };
    let script = crate::completion_script::script(shell, &completer).ok_or_else(|| {
        crate::error::usage(format!(
            "no completion for {shell}: bash, zsh and fish are supported"
        ))
    })?;
    out.text(&script);
    Ok(())
}
