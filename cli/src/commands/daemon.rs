//! `vault daemon start|stop|restart|status`. Only `start` (and `restart`)
//! may start `vaultd`; `stop` and `status` only look.

use std::time::Duration;

use serde_json::json;
use vault_protocol::{ErrorCode, Request, Response, WireError};

use super::Ctx;
use crate::args::DaemonAction;
use crate::client::{Client, wait_until_stopped};
use crate::error::{CliResult, unexpected};

/// How long `stop` waits for the socket to go away.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one `vault daemon` action.
pub fn run(ctx: &mut Ctx, action: DaemonAction) -> CliResult<()> {
    match action {
        DaemonAction::Start => start(ctx, false),
        DaemonAction::Stop => {
            let stopped = stop(ctx)?;
            if ctx.out.json {
                ctx.out
                    .json(&json!({ "running": false, "stopped": stopped }))?;
            }
            Ok(())
        }
        DaemonAction::Restart => {
            stop(ctx)?;
            start(ctx, true)
        }
        DaemonAction::Status => status(ctx),
    }
}

fn start(ctx: &mut Ctx, restart: bool) -> CliResult<()> {
    let mut client = Client::connect_or_start(&ctx.target)?;
    let hello = client.hello()?;
    let started = client.started_daemon;
    if ctx.out.json {
        ctx.out.json(&json!({
            "running": true,
            "started": started,
            "pid": hello.pid,
            "build": hello.build,
            "socket": ctx.target.socket(),
            "log": ctx.target.paths.log(),
        }))?;
    } else {
        let what = match (started, restart) {
            (true, true) => "restarted vaultd",
            (true, false) => "started vaultd",
            (false, _) => "vaultd is already running",
        };
        ctx.out.line(&format!("{what} (pid {})", hello.pid));
    }
    Ok(())
}

/// Stops the daemon; returns whether one was running. Prints no JSON:
/// `restart` prints one document, after starting.
fn stop(ctx: &mut Ctx) -> CliResult<bool> {
    let Some(mut client) = Client::connect_running(&ctx.target)? else {
        ctx.out.info("vaultd is not running");
        return Ok(false);
    };
    let peer = client.peer_pid();
    match client.hello() {
        Ok(_) => match client.call(Request::Shutdown) {
            // It may exit before its answer reaches us.
            Ok(Response::Done)
            | Err(WireError {
                code: ErrorCode::Unreachable,
                ..
            }) => {}
            Ok(_) => return Err(unexpected("shutdown")),
            Err(e) => return Err(e),
        },
        // A daemon of another build may not understand Shutdown; SIGTERM
        // stops any vaultd cleanly (it locks and removes its socket).
        Err(e) if e.code == ErrorCode::VersionMismatch => terminate(ctx, peer)?,
        Err(e) => return Err(e),
    }
    drop(client);
    if !wait_until_stopped(&ctx.target, STOP_TIMEOUT) {
        let kill = peer.map_or_else(|| "it".to_owned(), |p| format!("kill {p}"));
        return Err(ctx.target.unreachable(format_args!(
            "vaultd did not stop within {} s: see its log, or stop it with '{kill}'",
            STOP_TIMEOUT.as_secs()
        )));
    }
    let pid = peer.map(|p| format!(" (pid {p})")).unwrap_or_default();
    ctx.out.info(&format!("stopped vaultd{pid}"));
    Ok(true)
}

fn terminate(ctx: &Ctx, pid: Option<u32>) -> CliResult<()> {
    let target = pid
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw);
    let Some(target) = target else {
        return Err(ctx.target.unreachable(
            "vaultd is a different version and its pid is unknown: stop it yourself (e.g. pkill -x vaultd)",
        ));
    };
    rustix::process::kill_process(target, rustix::process::Signal::TERM).map_err(|e| {
        ctx.target.unreachable(format_args!(
            "cannot stop vaultd (pid {}): {e}",
            target.as_raw_nonzero()
        ))
    })
}

fn status(ctx: &mut Ctx) -> CliResult<()> {
    let Some(mut client) = Client::connect_running(&ctx.target)? else {
        ctx.exit_code = ErrorCode::Unreachable.exit_code();
        if ctx.out.json {
            ctx.out.json(&json!({
                "running": false,
                "socket": ctx.target.socket(),
                "log": ctx.target.paths.log(),
            }))?;
        } else {
            ctx.out.line(&format!(
                "vaultd is not running (socket {})",
                ctx.target.socket().display()
            ));
        }
        return Ok(());
    };
    let hello = client.hello()?;
    let status = match client.call(Request::Status)? {
        Response::Status(status) => status,
        _ => return Err(unexpected("status")),
    };
    if ctx.out.json {
        ctx.out.json(&json!({
            "running": true,
            "pid": hello.pid,
            "build": hello.build,
            "socket": ctx.target.socket(),
            "log": ctx.target.paths.log(),
            "initialized": status.initialized,
            "locked": status.locked,
        }))?;
    } else {
        let vault = match (status.initialized, status.locked) {
            (false, _) => "no vault yet",
            (true, true) => "vault locked",
            (true, false) => "vault unlocked",
        };
        ctx.out.line(&format!(
            "vaultd is running (pid {}, build {}, {vault})\nsocket {}\nlog    {}",
            hello.pid,
            hello.build,
            ctx.target.socket().display(),
            ctx.target.paths.log().display()
        ));
    }
    Ok(())
}
