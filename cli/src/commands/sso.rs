//! `vault sso login NAME` (docs/sso.md): the daemon starts a device
//! authorization with IAM Identity Center; this prints the page and code
//! (and opens the page when a browser is there and not refused), then waits
//! while the daemon polls for the approval, keeps the session and mints the
//! role credentials.

use serde_json::json;
use vault_protocol::{Request, Response, validate_name};

use super::Ctx;
use crate::args::SsoAction;
use crate::error::{CliResult, unexpected, usage};

pub fn run(ctx: &mut Ctx, action: SsoAction) -> CliResult<()> {
    match action {
        SsoAction::Login { name, no_browser } => login(ctx, &name, no_browser),
    }
}

/// Whether a browser can be shown here: a graphical session (macOS, or a
/// display on Linux).
fn has_browser() -> bool {
    cfg!(target_os = "macos")
        || ["DISPLAY", "WAYLAND_DISPLAY"]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()))
}

fn login(ctx: &mut Ctx, name: &str, no_browser: bool) -> CliResult<()> {
    validate_name(name).map_err(usage)?;
    let (page, code, expires_at) = match ctx.call_unlocked(&|| Request::SsoLogin {
        name: name.to_owned(),
    })? {
        Response::SsoDevice {
            verification_uri,
            verification_uri_complete,
            user_code,
            expires_at,
        } => (
            verification_uri_complete.unwrap_or(verification_uri),
            user_code,
            expires_at,
        ),
        _ => return Err(unexpected("sso login")),
    };
    ctx.out.prompt(&format!(
        "To sign in '{name}', open this page (on any device) and approve the code {code}:\n  \
         {page}\nThe code works until {}.",
        expires_at.to_rfc3339()
    ));
    if !no_browser && has_browser() {
        let opened = super::console::opener().is_some_and(|o| {
            std::process::Command::new(o)
                .arg(&page)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if !opened {
            ctx.out
                .prompt("No browser could be opened: open the page yourself.");
        }
    }
    ctx.out.info("Waiting for the approval…");
    let summary = match ctx.call_unlocked(&|| Request::SsoWait {
        name: name.to_owned(),
    })? {
        Response::Changed(s) => s,
        _ => return Err(unexpected("sso login")),
    };
    if ctx.out.json {
        return ctx.out.json(&json!({
            "name": summary.name,
            "expires_at": summary.expires_at,
        }));
    }
    let until = summary
        .expires_at
        .map(|t| format!(" until {}", t.to_rfc3339()))
        .unwrap_or_default();
    ctx.out
        .info(&format!("Signed in: '{name}' has role credentials{until}."));
    Ok(())
}
