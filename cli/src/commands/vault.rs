//! `init`, `unlock`, `lock`, `status`, and unlocking on demand when another
//! command finds the vault locked (docs/architecture.md).

use std::io::{self, IsTerminal};

use serde_json::json;
use vault_protocol::message::StatusInfo;
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{ErrorCode, Request, Response, SecretValue, WireError};

use super::Ctx;
use crate::args::{InitArgs, PassphraseArgs};
use crate::client::Client;
use crate::error::{CliResult, locked, unexpected, usage};
use crate::input::{self, PassphraseSource};
use crate::output::relative;

/// Passphrase attempts on a terminal before giving up.
const PROMPT_TRIES: u32 = 3;

/// How long to wait for another CLI's prompt (docs/architecture.md: one prompt, not many).
const WAIT_UNLOCKED_MS: u64 = 120_000;

/// `vault init`: create the vault; print its recipient.
pub fn init(ctx: &mut Ctx, args: &InitArgs) -> CliResult<()> {
    if let Some(vault_id) = &args.join {
        return super::sync::join(ctx, vault_id, &args.passphrase);
    }
    let source = PassphraseSource::find(args.passphrase.passphrase_stdin).ok_or_else(|| {
        usage(
            "vault init needs a new passphrase and there is no terminal to ask for it: \
             pipe it with --passphrase-stdin or set VAULT_PASSPHRASE_FILE=PATH",
        )
    })?;
    // Say so before asking for a passphrase twice.
    let status = status_info(ctx)?;
    if status.initialized {
        return Err(WireError::new(
            ErrorCode::AlreadyExists,
            format!(
                "a vault already exists in {}: use 'vault unlock'; to start over, move that directory away",
                ctx.target.paths.data_dir.display()
            ),
        ));
    }
    let passphrase = match source.read_non_interactive()? {
        Some(p) => p,
        None => prompt_new_passphrase()?,
    };
    if passphrase.is_empty() {
        return Err(usage("the passphrase is empty: choose a non-empty one"));
    }
    match ctx.call(Request::Init { passphrase })? {
        Response::Initialized {
            vault_id,
            recipient,
        } => {
            print_initialized(ctx, &vault_id, &recipient)?;
            ctx.out.info(&format!(
                "created vault {vault_id} in {}; it is unlocked",
                ctx.target.paths.data_dir.display()
            ));
            Ok(())
        }
        _ => Err(unexpected("init")),
    }
}

/// The answer to `init` and `init --join`: the recipient (or JSON).
pub(super) fn print_initialized(ctx: &mut Ctx, vault_id: &str, recipient: &str) -> CliResult<()> {
    if ctx.out.json {
        ctx.out
            .json(&json!({ "vault_id": vault_id, "recipient": recipient }))
    } else {
        ctx.out.line(recipient);
        Ok(())
    }
}

/// Asks for a new passphrase twice.
fn prompt_new_passphrase() -> CliResult<SecretValue> {
    for _ in 0..PROMPT_TRIES {
        let first = input::prompt_hidden("New vault passphrase: ")?;
        if first.is_empty() {
            eprintln!("vault: the passphrase must not be empty");
            continue;
        }
        let second = input::prompt_hidden("Repeat the passphrase: ")?;
        if first == second {
            return Ok(first);
        }
        eprintln!("vault: the passphrases do not match");
    }
    Err(usage("no passphrase chosen: the vault was not created"))
}

/// `vault unlock`.
pub fn unlock(ctx: &mut Ctx, args: &PassphraseArgs) -> CliResult<()> {
    let status = status_info(ctx)?;
    if !status.initialized {
        return Err(WireError::new(
            ErrorCode::NotInitialized,
            format!(
                "no vault in {}: run 'vault init'",
                ctx.target.paths.data_dir.display()
            ),
        ));
    }
    let status = if !status.locked {
        ctx.out.info("the vault is already unlocked");
        status
    } else {
        let source = PassphraseSource::find(args.passphrase_stdin).ok_or_else(|| {
            WireError::new(
                ErrorCode::Locked,
                "vault is locked and there is no terminal to ask for the passphrase: \
                 pipe it with --passphrase-stdin or set VAULT_PASSPHRASE_FILE=PATH",
            )
        })?;
        let status = match source.read_non_interactive()? {
            Some(passphrase) => send_unlock(ctx, passphrase)?,
            None => prompt_unlock(ctx)?,
        };
        ctx.out
            .info(&format!("vault unlocked{}", lock_times(&status)));
        status
    };
    if ctx.out.json {
        ctx.out.json(&status)?;
    }
    Ok(())
}

/// `vault lock`. Does not start a daemon just to lock it.
pub fn lock(ctx: &mut Ctx) -> CliResult<()> {
    let Some(mut client) = Client::connect_running(&ctx.target)? else {
        ctx.out.info("vault is locked (vaultd is not running)");
        if ctx.out.json {
            ctx.out
                .json(&json!({ "locked": true, "daemon_pid": null }))?;
        }
        return Ok(());
    };
    match client.call(Request::Lock)? {
        Response::Status(status) => {
            ctx.out.info("vault locked");
            if ctx.out.json {
                ctx.out.json(&status)?;
            }
            Ok(())
        }
        _ => Err(unexpected("lock")),
    }
}

/// `vault status`.
pub fn status(ctx: &mut Ctx) -> CliResult<()> {
    let status = status_info(ctx)?;
    if ctx.out.json {
        return ctx.out.json(&status);
    }
    let now = Timestamp::now();
    let mut lines: Vec<(&str, String)> = Vec::new();
    match (&status.vault_id, status.initialized) {
        (Some(id), true) => lines.push(("vault", id.clone())),
        _ => lines.push(("vault", "not initialized: run 'vault init'".into())),
    }
    if status.initialized {
        let state = if status.locked {
            "locked".to_owned()
        } else {
            format!("unlocked{}", lock_times(&status))
        };
        lines.push(("state", state));
    }
    if let Some(n) = status.records {
        lines.push(("records", n.to_string()));
    }
    if !status.expiring.is_empty() {
        let list: Vec<_> = status
            .expiring
            .iter()
            .map(|r| match r.expires_at {
                Some(t) if t <= now => format!("{} (expired {})", r.name, relative(t, now)),
                Some(t) => format!("{} ({})", r.name, relative(t, now)),
                None => r.name.clone(),
            })
            .collect();
        lines.push(("expiring", list.join(", ")));
    }
    if !status.emitters.is_empty() {
        let list: Vec<_> = status
            .emitters
            .iter()
            .map(|e| format!("{} [{}] {}", e.path, e.section, e.state))
            .collect();
        lines.push((
            "emitted",
            format!("{} ('vault emit repair' rewrites them)", list.join(", ")),
        ));
    }
    for r in &status.refresh {
        let left = match r.expires_at {
            Some(t) if t <= now => format!("expired {}", relative(t, now)),
            Some(t) => format!("value valid {}", relative(t, now)),
            None => "no value yet".to_owned(),
        };
        lines.push((
            "refresh",
            format!(
                "{} failing ({left}; retry {}): {}",
                r.name,
                relative(r.retry_at, now),
                r.error
            ),
        ));
    }
    for r in &status.rotations {
        let left = match r.stage.as_str() {
            "delete" => format!(
                "{} inactive, deleted {}",
                r.old_key,
                relative(r.due_at, now)
            ),
            "ended" => {
                lines.push((
                    "rotation",
                    format!(
                        "{}: {} ('vault rotate {} --finish' clears this)",
                        r.name,
                        r.error.as_deref().unwrap_or("ended by vaultd"),
                        r.name
                    ),
                ));
                continue;
            }
            "reactivate" => {
                lines.push((
                    "rotation",
                    format!(
                        "{}: holds the old key {} again, which is inactive at IAM ('vault rotate \
                         {} --finish')",
                        r.name, r.old_key, r.name
                    ),
                ));
                continue;
            }
            _ => format!("{} still active", r.old_key),
        };
        lines.push((
            "rotation",
            format!(
                "{}: {} is live, {left} ('vault rotate {} --finish')",
                r.name, r.live_key, r.name
            ),
        ));
    }
    lines.push(("sync", sync_line(&status, now)));
    for r in &status.remotes {
        let mut line = format!(
            "{} ({}): {} credential(s), {} queued, {} refused",
            r.name,
            r.kind.as_str(),
            r.published,
            r.queued,
            r.failed
        );
        for note in super::publish::remote_notes(r) {
            line.push_str("\n          ");
            line.push_str(&note);
        }
        lines.push(("remote", line));
    }
    lines.push((
        "daemon",
        format!("pid {}, socket {}", status.daemon_pid, status.socket),
    ));
    for (key, value) in lines {
        ctx.out.line(&format!("{key:<9} {value}"));
    }
    Ok(())
}

pub(super) fn sync_line(status: &StatusInfo, now: Timestamp) -> String {
    let sync = &status.sync;
    let Some(server) = &sync.server else {
        return "not set up".into();
    };
    let mut line = server.clone();
    match sync.last_sync {
        Some(t) => line.push_str(&format!(", last sync {}", relative(t, now))),
        None => line.push_str(", never synced"),
    }
    if sync.queued > 0 {
        line.push_str(&format!(", {} change(s) queued", sync.queued));
    }
    if let Some(e) = &sync.last_error {
        line.push_str(&format!(", last error: {e}"));
    } else if !sync.problems.is_empty() {
        line.push_str(&format!(
            ", {} problem(s) with what the server sent: see 'vault sync status'",
            sync.problems.len()
        ));
    }
    line
}

/// ` (locks ... )` for an unlocked vault.
fn lock_times(status: &StatusInfo) -> String {
    let now = Timestamp::now();
    match (status.idle_lock_at, status.hard_lock_at) {
        (Some(idle), Some(hard)) => format!(
            " (locks when idle {}, at the latest {})",
            relative(idle, now),
            relative(hard, now)
        ),
        (Some(t), None) | (None, Some(t)) => format!(" (locks {})", relative(t, now)),
        (None, None) => String::new(),
    }
}

pub(super) fn status_info(ctx: &mut Ctx) -> CliResult<StatusInfo> {
    match ctx.call(Request::Status)? {
        Response::Status(status) => Ok(status),
        _ => Err(unexpected("status")),
    }
}

fn send_unlock(ctx: &mut Ctx, passphrase: SecretValue) -> CliResult<StatusInfo> {
    match ctx.call(Request::Unlock { passphrase })? {
        Response::Status(status) => Ok(status),
        _ => Err(unexpected("unlock")),
    }
}

/// Prompts for the passphrase until it unlocks the vault (a few tries).
pub(super) fn prompt_unlock(ctx: &mut Ctx) -> CliResult<StatusInfo> {
    let mut tries = 0;
    loop {
        tries += 1;
        let passphrase = input::prompt_hidden("Vault passphrase: ")?;
        match send_unlock(ctx, passphrase) {
            Err(e) if e.code == ErrorCode::BadPassphrase && tries < PROMPT_TRIES => {
                eprintln!("vault: {}", e.message);
            }
            other => return other,
        }
    }
}

/// Unlocks the vault after a command was refused as locked: with
/// `VAULT_PASSPHRASE_FILE` when set; else, on a terminal, by prompting (if
/// the daemon grants this CLI the prompt) or by waiting for the CLI that
/// prompts; else it is an error (exit 3).
pub fn unlock_for_retry(ctx: &mut Ctx) -> CliResult<()> {
    if let Some(path) = input::passphrase_file_from_env() {
        let passphrase = input::read_passphrase_file(&path)?;
        send_unlock(ctx, passphrase)?;
        return Ok(());
    }
    if !io::stdin().is_terminal() {
        return Err(locked());
    }
    match ctx.call(Request::PromptLease)? {
        Response::PromptLease { granted: true } => prompt_unlock(ctx).map(drop),
        Response::PromptLease { granted: false } => {
            ctx.out
                .info("waiting for the passphrase prompt of another vault command...");
            let waited = ctx.call(Request::WaitUnlocked {
                timeout_ms: WAIT_UNLOCKED_MS,
            });
            match waited {
                Ok(Response::Status(s)) if !s.locked => Ok(()),
                Ok(Response::Status(_))
                | Err(WireError {
                    code: ErrorCode::Locked,
                    ..
                }) => Err(WireError::new(
                    ErrorCode::Locked,
                    "vault is still locked after waiting 2 minutes for another prompt: run 'vault unlock'",
                )),
                Ok(_) => Err(unexpected("wait_unlocked")),
                Err(e) => Err(e),
            }
        }
        _ => Err(unexpected("prompt_lease")),
    }
}

/// The SSH agent's socket of the running daemon, starting the daemon if
/// needed; an error when the daemon serves none (its log says why).
pub fn agent_socket(ctx: &mut Ctx) -> CliResult<std::path::PathBuf> {
    ctx.client()?.hello()?;
    let path = ctx.target.paths.agent_socket();
    use std::os::unix::fs::FileTypeExt as _;
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_socket() => Ok(path),
        _ => Err(vault_protocol::WireError::new(
            vault_protocol::ErrorCode::Failed,
            format!(
                "vaultd serves no SSH agent at {}: see {} for why, then run 'vault daemon restart'",
                path.display(),
                ctx.target.paths.log().display()
            ),
        )),
    }
}

/// `vault ssh-agent`: the line that points a shell's ssh at the agent.
pub fn ssh_agent(ctx: &mut Ctx, args: &crate::args::SshAgentArgs) -> CliResult<()> {
    let path = agent_socket(ctx)?;
    let Some(path) = path.to_str() else {
        return Err(vault_protocol::WireError::new(
            vault_protocol::ErrorCode::Usage,
            format!(
                "the agent's socket path {} is not UTF-8, which a shell line cannot carry: set \
                 VAULT_SOCKET (or XDG_RUNTIME_DIR) to a plain path",
                path.display()
            ),
        ));
    };
    if ctx.out.json {
        return ctx.out.json(&json!({ "SSH_AUTH_SOCK": path }));
    }
    let shell = if args.fish {
        Shell::Fish
    } else if args.csh {
        Shell::Csh
    } else {
        Shell::Sh
    };
    let quoted = shell_quote(path, shell).map_err(|why| {
        vault_protocol::WireError::new(
            vault_protocol::ErrorCode::Usage,
            format!(
                "the agent's socket path {path:?} {why}: set VAULT_SOCKET (or XDG_RUNTIME_DIR) to \
                 a plain path, or use --json"
            ),
        )
    })?;
    let line = match shell {
        Shell::Fish => format!("set -gx SSH_AUTH_SOCK {quoted};"),
        Shell::Csh => format!("setenv SSH_AUTH_SOCK {quoted};"),
        Shell::Sh => format!("SSH_AUTH_SOCK={quoted}; export SSH_AUTH_SOCK;"),
    };
    ctx.out.line(&line);
    Ok(())
}

/// The shells `vault ssh-agent` prints for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shell {
    Sh,
    Fish,
    Csh,
}

/// `path` as one word for `shell`: bare when it is only safe characters,
/// else in single quotes. sh and csh: a quote is written `'\''`. fish reads
/// `\\` and `\'` inside single quotes as escapes, so those are escaped.
/// csh cannot quote a newline, and expands `!` even inside quotes: such a
/// path is refused for it.
fn shell_quote(path: &str, shell: Shell) -> Result<String, &'static str> {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+:@%,".contains(c);
    if !path.is_empty() && path.chars().all(safe) {
        return Ok(path.to_owned());
    }
    match shell {
        Shell::Sh => Ok(format!("'{}'", path.replace('\'', r"'\''"))),
        Shell::Fish => Ok(format!(
            "'{}'",
            path.replace('\\', r"\\").replace('\'', r"\'")
        )),
        Shell::Csh if path.contains(['\n', '!']) => {
            Err("has a newline or '!', which csh cannot take quoted")
        }
        Shell::Csh => Ok(format!("'{}'", path.replace('\'', r"'\''"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AWKWARD: [&str; 6] = [
        "/run/user/1000/vault/ssh-agent.sock",
        "/tmp/with space/ssh-agent.sock",
        "/tmp/it's/ssh-agent.sock",
        r"/tmp/back\slash/ssh-agent.sock",
        r"/tmp/ends\",
        "/tmp/$HOME;`x`/ssh-agent.sock",
    ];

    /// What `shell` makes of `SSH_AUTH_SOCK` after running the line; `None`
    /// when that shell is not installed.
    fn through(shell: &str, line: &str) -> Option<String> {
        let script = match shell {
            "fish" => format!("{line}\nprintf '%s' $SSH_AUTH_SOCK"),
            _ => format!("{line}\nprintf '%s' \"$SSH_AUTH_SOCK\""),
        };
        let out = std::process::Command::new(shell)
            .arg("-c")
            .arg(script)
            .env_remove("SSH_AUTH_SOCK")
            .output()
            .ok()?;
        assert!(out.status.success(), "{shell}: {line}: {out:?}");
        Some(String::from_utf8(out.stdout).unwrap_or_default())
    }

    #[test]
    fn every_shell_reads_back_the_exact_path() {
        for path in AWKWARD {
            let sh = shell_quote(path, Shell::Sh).unwrap_or_default();
            let line = format!("SSH_AUTH_SOCK={sh}; export SSH_AUTH_SOCK;");
            assert_eq!(through("sh", &line).as_deref(), Some(path), "{line}");
            let fish = shell_quote(path, Shell::Fish).unwrap_or_default();
            let line = format!("set -gx SSH_AUTH_SOCK {fish};");
            if let Some(got) = through("fish", &line) {
                assert_eq!(got, path, "{line}");
            }
            let csh = shell_quote(path, Shell::Csh).unwrap_or_default();
            for tcsh in ["tcsh", "csh"] {
                let line = format!("setenv SSH_AUTH_SOCK {csh};");
                if let Some(got) = through(tcsh, &line) {
                    assert_eq!(got, path, "{tcsh}: {line}");
                }
            }
        }
        assert_eq!(
            shell_quote("/run/user/1000/vault/ssh-agent.sock", Shell::Fish).as_deref(),
            Ok("/run/user/1000/vault/ssh-agent.sock"),
            "a plain path stays bare"
        );
    }

    #[test]
    fn csh_refuses_what_it_cannot_quote() {
        for path in ["/tmp/a\nb", "/tmp/bang!/x"] {
            assert!(shell_quote(path, Shell::Csh).is_err(), "{path:?}");
            assert!(shell_quote(path, Shell::Sh).is_ok());
        }
    }
}
