//! `vault sso login NAME` (docs/sso.md): the daemon starts a device
//! authorization with IAM Identity Center; this prints the page and code
//! (and opens the page when a browser is there and not refused), then waits
//! while the daemon polls for the approval, keeps the session and mints the
//! role credentials.

use serde_json::json;
use vault_protocol::message::NewRecord;
use vault_protocol::{CredentialType, Request, Response, SecretValue, validate_name};

use super::Ctx;
use crate::args::SsoAction;
use crate::error::{CliResult, unexpected, usage};

pub fn run(ctx: &mut Ctx, action: SsoAction) -> CliResult<()> {
    match action {
        SsoAction::Login { name, no_browser } => login(ctx, &name, no_browser),
        SsoAction::Roles { name } => roles(ctx, &name),
        SsoAction::Add {
            new,
            from,
            account,
            role,
        } => add(ctx, &new, &from, &account, &role),
    }
}

fn roles(ctx: &mut Ctx, name: &str) -> CliResult<()> {
    validate_name(name).map_err(usage)?;
    let roles = match ctx.call_unlocked(&|| Request::SsoRoles {
        name: name.to_owned(),
    })? {
        Response::SsoRoles { roles } => roles,
        _ => return Err(unexpected("sso roles")),
    };
    if ctx.out.json {
        return ctx.out.json(&roles);
    }
    let width = roles
        .iter()
        .map(|r| r.account_name.chars().count())
        .max()
        .unwrap_or(0)
        .max("NAME".len());
    ctx.out
        .text(&format!("{:<12}  {:<width$}  ROLE\n", "ACCOUNT", "NAME"));
    for r in &roles {
        ctx.out.text(&format!(
            "{:<12}  {:<width$}  {}\n",
            r.account_id, r.account_name, r.role_name
        ));
    }
    ctx.out.info(&format!(
        "Save one: vault sso add NEW --from {name} --account ACCOUNT --role ROLE"
    ));
    Ok(())
}

/// The fields a new SSO credential takes from `from` when `from` has a
/// session of its own: its portal. Not its client or tokens: the new
/// credential signs in for a session of its own (two records renewing with
/// one refresh token would spend it for each other). To share one
/// sign-in, save the roles from an SSO session record.
const PORTAL: [&str; 2] = [vault_protocol::credential::SSO_START_URL, "sso_region"];

fn add(ctx: &mut Ctx, new: &str, from: &str, account: &str, role: &str) -> CliResult<()> {
    use vault_protocol::credential::{SSO_SESSION, SSO_START_URL, is_sso_session};
    validate_name(new).map_err(usage)?;
    validate_name(from).map_err(usage)?;
    let source = match ctx.call_unlocked(&|| Request::Get {
        name: from.to_owned(),
    })? {
        Response::Record(r) => r,
        _ => return Err(unexpected("get")),
    };
    let has = |f: &str| source.fields.contains_key(f);
    let mut fields = std::collections::BTreeMap::new();
    // Whose sign-in the new credential shares, if any.
    let session = if is_sso_session(has) {
        Some(from.to_owned())
    } else if let Some(s) = source.fields.get(SSO_SESSION) {
        Some(s.expose_secret().to_owned())
    } else if has(SSO_START_URL) {
        for f in PORTAL {
            if let Some(v) = source.fields.get(f) {
                fields.insert(f.to_owned(), v.duplicate());
            }
        }
        None
    } else {
        return Err(usage(format!(
            "'{from}' is not an SSO credential (it has neither sso_start_url nor sso_session)"
        )));
    };
    if let Some(s) = &session {
        fields.insert(SSO_SESSION.to_owned(), SecretValue::from(s.as_str()));
    }
    fields.insert("sso_account_id".into(), SecretValue::from(account));
    fields.insert("sso_role_name".into(), SecretValue::from(role));
    let description = match &session {
        Some(s) => format!("{role} in {account}, through SSO session {s}"),
        None => format!("{role} in {account}, through {from}'s portal"),
    };
    match ctx.call_unlocked(&|| Request::Add {
        record: NewRecord {
            name: new.to_owned(),
            kind: CredentialType::Aws,
            fields: fields
                .iter()
                .map(|(k, v)| (k.clone(), v.duplicate()))
                .collect(),
            description: Some(description.clone()),
            tags: Vec::new(),
            expires_at: None,
        },
    })? {
        Response::Changed(_) => {}
        _ => return Err(unexpected("add")),
    }
    ctx.out.info(&match &session {
        Some(s) => format!(
            "Added '{new}': {role} in account {account}, sharing the sign-in of SSO session \
             '{s}' (vault sso login {s} when it has expired)"
        ),
        None => format!(
            "Added '{new}': {role} in account {account}, through {from}'s portal. Sign it in: \
             vault sso login {new}"
        ),
    });
    Ok(())
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
    let device = device_page(
        ctx.call_unlocked(&|| Request::SsoLogin {
            name: name.to_owned(),
        })?,
        "sso login",
    )?;
    let code = device.code.clone();
    show_device_page(ctx, &format!("'{name}'"), &device, no_browser);
    ctx.out.info("Waiting for the approval…");
    let summary = match ctx.call_unlocked(&|| Request::SsoWait {
        name: name.to_owned(),
        user_code: code.clone(),
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

/// What a device sign-in's first answer says.
pub(crate) struct DevicePage {
    /// The page to open (with the code filled in, when given).
    pub page: String,
    /// The code to approve there.
    pub code: String,
    /// When the code stops working.
    pub expires_at: vault_protocol::timefmt::Timestamp,
    /// The identity provider, when the daemon names it.
    pub issuer: Option<String>,
}

/// The page, code and expiry of a device sign-in's first answer.
pub(crate) fn device_page(answer: Response, what: &str) -> CliResult<DevicePage> {
    match answer {
        Response::SsoDevice {
            verification_uri,
            verification_uri_complete,
            user_code,
            expires_at,
            issuer,
        } => Ok(DevicePage {
            page: verification_uri_complete.unwrap_or(verification_uri),
            code: user_code,
            expires_at,
            issuer,
        }),
        _ => Err(unexpected(what)),
    }
}

/// Tells the user which page to open and which code to approve for a
/// device sign-in of `what`, and opens the page in a browser when there is
/// one (unless `no_browser`).
pub(crate) fn show_device_page(ctx: &mut Ctx, what: &str, device: &DevicePage, no_browser: bool) {
    let DevicePage {
        page,
        code,
        expires_at,
        ..
    } = device;
    ctx.out.prompt(&format!(
        "To sign in {what}, open this page (on any device) and approve the code {code}:\n  \
         {page}\nThe code works until {}.",
        expires_at.to_rfc3339()
    ));
    if !no_browser && has_browser() {
        // Started, not waited for: xdg-open may wait for the browser to
        // exit, and the approval must be waited for meanwhile.
        let opened = super::console::opener().is_some_and(|o| {
            let started = std::process::Command::new(o)
                .arg(page)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
            match started {
                Ok(mut child) => {
                    std::thread::spawn(move || child.wait());
                    true
                }
                Err(_) => false,
            }
        });
        if !opened {
            ctx.out
                .prompt("No browser could be opened: open the page yourself.");
        }
    }
}
