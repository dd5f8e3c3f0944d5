//! `login`, `init --join`, `sync`, `sync status`, `conflicts` (docs/sync.md).
//! The daemon does the work; these only gather secrets from files or the
//! terminal (never argv) and print what happened.

use std::io::{self, IsTerminal, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use vault_protocol::message::ConflictKind;
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{ErrorCode, Request, Response, SecretValue, WireError};
use zeroize::Zeroizing;

use super::Ctx;
use crate::args::{ApproveArgs, LoginArgs, PassphraseArgs};
use crate::client::Client;
use crate::error::{CliResult, failed, unexpected, usage};
use crate::input::{self, PassphraseSource};
use crate::output::relative;

/// Reads the access token: from `--token-file` (`-` is stdin), else a hidden
/// prompt on a terminal.
pub(super) fn read_token(
    token_file: Option<&std::path::Path>,
    command: &str,
) -> CliResult<SecretValue> {
    let text = match token_file {
        Some(path) if path.as_os_str() == "-" => {
            let mut buf = Zeroizing::new(String::new());
            io::stdin()
                .read_to_string(&mut buf)
                .map_err(|e| failed(format!("cannot read the token from stdin: {e}")))?;
            buf
        }
        Some(path) => {
            let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| {
                failed(format!(
                    "cannot read the token file {}: {e}",
                    path.display()
                ))
            })?);
            Zeroizing::new(
                String::from_utf8(bytes.to_vec())
                    .map_err(|_| usage(format!("{} is not text", path.display())))?,
            )
        }
        None if io::stdin().is_terminal() => {
            let t = input::prompt_hidden("Access token: ")?;
            Zeroizing::new(t.expose_secret().to_owned())
        }
        None => {
            return Err(usage(format!(
                "{command} needs the access token and there is no terminal to ask for it: use \
                 --token-file FILE (or --token-file - for stdin)"
            )));
        }
    };
    let token = text.trim();
    if token.is_empty() {
        return Err(usage("the access token is empty"));
    }
    Ok(SecretValue::from(token))
}

/// Pulls at least this big get a progress bar.
const PROGRESS_FROM: u64 = 200;

/// Runs `f` (a request that may pull many records) with a progress bar on
/// stderr when that is a terminal: a second connection polls `status` for
/// the pull's progress.
fn with_progress<T>(ctx: &mut Ctx, f: impl FnOnce(&mut Ctx) -> CliResult<T>) -> CliResult<T> {
    if ctx.out.json || ctx.out.quiet || !io::stderr().is_terminal() {
        return f(ctx);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, target) = (Arc::clone(&stop), ctx.target.clone());
        std::thread::spawn(move || {
            let mut client = None;
            let mut bar: Option<indicatif::ProgressBar> = None;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if client.is_none() {
                    client = Client::connect_running(&target).ok().flatten();
                }
                let Some(c) = client.as_mut() else { continue };
                let Ok(Response::Status(s)) = c.call(Request::Status) else {
                    continue;
                };
                if let Some(p) = s.sync.progress.filter(|p| p.total >= PROGRESS_FROM) {
                    let b = bar.get_or_insert_with(|| {
                        let b = indicatif::ProgressBar::new(p.total);
                        if let Ok(style) = indicatif::ProgressStyle::with_template(
                            "pulling {bar:30} {pos}/{len} records ({eta} left)",
                        ) {
                            b.set_style(style);
                        }
                        b
                    });
                    b.set_length(p.total);
                    b.set_position(p.done);
                }
            }
            if let Some(b) = bar {
                b.finish_and_clear();
            }
        })
    };
    let result = f(ctx);
    stop.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    result
}

/// `vault login URL [--token-file F | --sso [--no-browser]]`.
pub fn login(ctx: &mut Ctx, args: &LoginArgs) -> CliResult<()> {
    let answer = if args.sso {
        let device = super::sso::device_page(
            ctx.call_unlocked(&|| Request::LoginSso {
                url: args.url.clone(),
            })?,
            "login",
        )?;
        let code = device.code.clone();
        let mut what = format!("to {}", args.url.trim_end_matches('/'));
        if let Some(issuer) = &device.issuer {
            what.push_str(&format!(" through the identity provider {issuer}"));
        }
        super::sso::show_device_page(ctx, &what, &device, args.no_browser);
        ctx.out.info("Waiting for the approval…");
        ctx.call_unlocked(&|| Request::LoginSsoWait {
            url: args.url.clone(),
            user_code: code.clone(),
        })?
    } else {
        let token = read_token(args.token_file.as_deref(), "vault login")?;
        ctx.call_unlocked(&|| Request::Login {
            url: args.url.clone(),
            token: SecretValue::from(token.expose_secret()),
        })?
    };
    match answer {
        Response::LoggedIn { server, vault_id } => {
            if ctx.out.json {
                ctx.out
                    .json(&json!({ "server": server, "vault_id": vault_id }))?;
            }
            match vault_id {
                Some(id) => ctx.out.info(&format!(
                    "logged in to {server}; vault {id} syncs there from now on ('vault sync \
                     status')"
                )),
                None => ctx.out.info(&format!(
                    "logged in to {server}; this device has no vault yet: run 'vault init \
                     --join VAULT_ID'"
                )),
            }
            Ok(())
        }
        _ => Err(unexpected("login")),
    }
}

/// `vault init --join VAULT_ID`.
pub fn join(ctx: &mut Ctx, vault_id: &str, args: &PassphraseArgs) -> CliResult<()> {
    let source = PassphraseSource::find(args.passphrase_stdin).ok_or_else(|| {
        usage(
            "vault init --join needs the vault's passphrase and there is no terminal to ask \
             for it: pipe it with --passphrase-stdin or set VAULT_PASSPHRASE_FILE=PATH",
        )
    })?;
    let mut tries = 0;
    let answer = loop {
        tries += 1;
        let (passphrase, prompted) = match source.read_non_interactive()? {
            Some(p) => (p, false),
            None => (
                input::prompt_hidden("Passphrase of the vault to join: ")?,
                true,
            ),
        };
        let joined = with_progress(ctx, |ctx| {
            ctx.call(Request::Join {
                vault_id: vault_id.to_owned(),
                passphrase,
            })
        });
        match joined {
            Err(e) if e.code == ErrorCode::BadPassphrase && prompted && tries < 3 => {
                eprintln!("vault: {}", e.message);
            }
            other => break other?,
        }
    };
    match answer {
        Response::Initialized {
            vault_id,
            recipient,
        } => {
            super::vault::print_initialized(ctx, &vault_id, &recipient)?;
            let status = super::vault::status_info(ctx)?;
            ctx.out.info(&format!(
                "joined vault {vault_id} in {}; it is unlocked and holds {} credential(s)",
                ctx.target.paths.data_dir.display(),
                status.records.unwrap_or(0)
            ));
            if let Some(e) = status.sync.last_error {
                ctx.out.warn(&format!("the first sync did not finish: {e}"));
            }
            Ok(())
        }
        _ => Err(unexpected("join")),
    }
}

/// `vault sync [--now]`.
pub fn now(ctx: &mut Ctx) -> CliResult<()> {
    match with_progress(ctx, |ctx| ctx.call_unlocked(&|| Request::SyncNow))? {
        Response::Synced(report) => {
            if ctx.out.json {
                ctx.out.json(&report)?;
            }
            let mut line = format!(
                "synced: {} change(s) pushed, {} pulled",
                report.pushed, report.pulled
            );
            if report.conflicts > 0 {
                line.push_str(&format!(
                    "; {} conflict(s): see 'vault conflicts'",
                    report.conflicts
                ));
            }
            ctx.out.info(&line);
            for n in &report.notes {
                ctx.out.warn(n);
            }
            for r in &report.refused {
                ctx.out.warn(r);
            }
            if report.refused.is_empty() {
                Ok(())
            } else {
                Err(WireError::new(
                    ErrorCode::Failed,
                    "some pulled changes were refused (above); nothing local was lost",
                ))
            }
        }
        _ => Err(unexpected("sync")),
    }
}

/// `vault sync status`.
pub fn status(ctx: &mut Ctx) -> CliResult<()> {
    let status = super::vault::status_info(ctx)?;
    if ctx.out.json {
        return ctx.out.json(&status.sync);
    }
    ctx.out
        .line(&super::vault::sync_line(&status, Timestamp::now()));
    for p in &status.sync.problems {
        ctx.out.warn(p);
    }
    Ok(())
}

/// `vault conflicts`.
pub fn conflicts(ctx: &mut Ctx) -> CliResult<()> {
    let conflicts = match ctx.call_unlocked(&|| Request::Conflicts)? {
        Response::Conflicts { conflicts } => conflicts,
        _ => return Err(unexpected("conflicts")),
    };
    if ctx.out.json {
        return ctx.out.json(&conflicts);
    }
    if conflicts.is_empty() {
        ctx.out.info("no conflicts");
        return Ok(());
    }
    let now = Timestamp::now();
    for c in &conflicts {
        let when = c.at.map(|t| relative(t, now)).unwrap_or_default();
        let device = c.device.as_deref().unwrap_or("?");
        let line = match c.kind {
            ConflictKind::Edit => {
                let what = if c.deleted { "deletion" } else { "change" };
                let rev = c.revision.unwrap_or(0);
                let head = if c.deleted_head {
                    "the record was deleted by a later change".to_owned()
                } else {
                    format!("revision {} is current", c.head.unwrap_or(0))
                };
                format!(
                    "{}: a concurrent {what} from device {device} ({when}) lost and is kept as \
                     revision {rev}; {head}. 'vault restore {} --revision {rev}' makes it \
                     current; any change to it clears this",
                    c.name, c.name
                )
            }
            ConflictKind::Name => format!(
                "{}: another credential took the name '{}' at the same time; this one is listed \
                 as {} until you 'vault rename' it",
                c.name,
                c.claims.as_deref().unwrap_or("?"),
                c.name
            ),
        };
        ctx.out.line(&line);
    }
    Ok(())
}

/// `vault approve`: shows exactly what each credential would run, write
/// or reach, then approves it on this device (asking on a terminal).
pub fn approve(ctx: &mut Ctx, args: &ApproveArgs) -> CliResult<()> {
    for name in &args.names {
        vault_protocol::validate_name(name).map_err(usage)?;
    }
    let names = args.names.clone();
    let waiting = match ctx.call_unlocked(&|| Request::Approvals {
        names: names.clone(),
    })? {
        Response::Approvals { approvals } => approvals,
        _ => return Err(unexpected("approvals")),
    };
    let approving = args.all || !args.names.is_empty();
    if waiting.is_empty() {
        if ctx.out.json {
            return ctx.out.json(&waiting);
        }
        ctx.out.info(if args.names.is_empty() {
            "nothing waits for approval"
        } else {
            "nothing of that waits for approval"
        });
        return Ok(());
    }
    if !(ctx.out.json && (args.yes || !approving)) {
        for a in &waiting {
            let from = a.device.as_deref().unwrap_or("another device");
            eprintln!(
                "{} ({}, revision {}, written by device {from}):",
                a.name, a.kind, a.revision
            );
            for f in &a.fields {
                eprintln!("  {}: {}", f.field, f.meaning);
                for line in f.value.expose_secret().lines() {
                    eprintln!("    {line}");
                }
            }
        }
    }
    if !approving {
        if ctx.out.json {
            return ctx.out.json(&waiting);
        }
        ctx.out.info(
            "approve one with 'vault approve NAME', or all of them with 'vault approve --all'",
        );
        return Ok(());
    }
    if !args.yes {
        if !io::stdin().is_terminal() {
            return Err(usage(
                "nothing was approved: read what is shown above, then approve it with --yes                  (vault only asks on a terminal)",
            ));
        }
        let question = match waiting.len() {
            1 => format!("Approve {} on this device?", waiting[0].name),
            n => format!("Approve these {n} credentials on this device?"),
        };
        if !super::records::confirm(&question)? {
            return Err(failed("nothing was approved"));
        }
    }
    let mut approved = Vec::new();
    for a in &waiting {
        let (name, revision) = (a.name.clone(), a.revision);
        match ctx.call_unlocked(&|| Request::Approve {
            name: name.clone(),
            revision,
        })? {
            Response::Approvals { approvals } => approved.extend(approvals),
            _ => return Err(unexpected("approve")),
        }
    }
    if ctx.out.json {
        return ctx.out.json(&approved);
    }
    for a in &approved {
        ctx.out.info(&format!("approved {} on this device", a.name));
    }
    Ok(())
}

/// `vault sync unshare-audit`.
pub fn unshare_audit(ctx: &mut Ctx) -> CliResult<()> {
    let (server, removed, through) = match ctx.call_unlocked(&|| Request::AuditUnshare)? {
        Response::AuditUnshared {
            server,
            removed,
            through,
        } => (server, removed, through),
        _ => return Err(unexpected("sync unshare-audit")),
    };
    if ctx.out.json {
        return ctx.out.json(&json!({
            "server": server,
            "removed": removed,
            "through": through,
        }));
    }
    ctx.out.info(&format!(
        "removed {removed} audit segment(s) of this device from {server} (it no longer holds \
         1..={through}); the vault's other devices keep the entries they fetched until their \
         [audit] keep drops them"
    ));
    Ok(())
}

/// `vault sync verify` / `vault sync repair`.
pub fn verify(ctx: &mut Ctx, repair: bool) -> CliResult<()> {
    let (logs, repaired) = match ctx.call_unlocked(&|| Request::SyncVerify { repair })? {
        Response::Verified { logs, repaired } => (logs, repaired),
        _ => return Err(unexpected("sync verify")),
    };
    if ctx.out.json {
        ctx.out
            .json(&json!({ "logs": logs, "repaired": repaired }))?;
    }
    let span = |r: &[(u64, u64)]| -> String {
        r.iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut holes = false;
    for l in &logs {
        let who = if l.this_device {
            format!("{} (this device)", l.device)
        } else {
            l.device.clone()
        };
        let mut line = format!(
            "{who}: server has 1-{}, this device {}",
            l.server_head, l.local_head
        );
        if !l.missing_here.is_empty() {
            holes = true;
            line.push_str(&format!("; missing here: {}", span(&l.missing_here)));
        }
        if !l.missing_there.is_empty() {
            holes = true;
            line.push_str(&format!(
                "; missing on the server: {}",
                span(&l.missing_there)
            ));
        }
        if !ctx.out.json {
            ctx.out.line(&line);
        }
    }
    match (holes, repaired) {
        (false, true) => ctx
            .out
            .info("repaired: every log is complete on both sides"),
        (false, false) => ctx.out.info("every log is complete on both sides"),
        (true, _) => {
            // The answer is still printed (and its JSON kept on stdout).
            ctx.out.warn(if repaired {
                "holes remain after the repair (above): the server may lack entries only their \
                 device can push again; sync that device"
            } else {
                "holes found (above): run 'vault sync repair'"
            });
            ctx.exit_code = 1;
        }
    }
    Ok(())
}
