//! `remote add|list|status|rm`, `publish`, `unpublish` (issue 10): keep a
//! workload platform's credential service supplied from the vault. The
//! daemon checks, queues and pushes; these read the access token from a
//! file or the terminal (never argv) and show where each publication
//! stands.

use vault_protocol::message::{
    PublicationInfo, PublishState, RemoteInfo, RemoteKind, RemoteReport,
};
use vault_protocol::{ErrorCode, Request, Response, SecretValue, WireError};

use super::Ctx;
use crate::args::{PublishArgs, RemoteAction, RemoteAddArgs, RemoteKindArg, UnpublishArgs};
use crate::error::{CliResult, unexpected};
use crate::output::{Color, Table};

/// `vault remote …`.
pub fn remote(ctx: &mut Ctx, action: &RemoteAction) -> CliResult<()> {
    match action {
        RemoteAction::Add(args) => add(ctx, args),
        RemoteAction::List => list(ctx),
        RemoteAction::Status { name } => {
            let report = report(ctx, &|| Request::RemoteStatus { name: name.clone() })?;
            show_report(ctx, &report)
        }
        RemoteAction::Rm { name, force } => {
            let remotes = remotes(
                ctx.call_unlocked(&|| Request::RemoteRemove {
                    name: name.clone(),
                    force: *force,
                })?,
                "remote rm",
            )?;
            if ctx.out.json {
                return ctx.out.json(&remotes);
            }
            let n = remotes.first().map_or(0, |r| r.published);
            let kept = if n > 0 {
                format!("; the {n} credential(s) published there stay on the platform")
            } else {
                String::new()
            };
            ctx.out.info(&format!("removed remote {name}{kept}"));
            Ok(())
        }
    }
}

fn remotes(answer: Response, what: &str) -> CliResult<Vec<RemoteInfo>> {
    match answer {
        Response::Remotes { remotes } => Ok(remotes),
        _ => Err(unexpected(what)),
    }
}

fn add(ctx: &mut Ctx, args: &RemoteAddArgs) -> CliResult<()> {
    let token = super::sync::read_token(args.token_file.as_deref(), "vault remote add")?;
    let kind = match args.kind {
        RemoteKindArg::Osmo => RemoteKind::Osmo,
    };
    let remotes = remotes(
        ctx.call_unlocked(&|| Request::RemoteAdd {
            name: args.name.clone(),
            kind,
            url: args.url.clone(),
            token: SecretValue::from(token.expose_secret()),
            replace: args.replace,
        })?,
        "remote add",
    )?;
    if ctx.out.json {
        return ctx.out.json(&remotes);
    }
    for r in &remotes {
        let checked = match &r.last_error {
            Some(e) => {
                ctx.out
                    .warn(&format!("{e}: the access token is tried at the first push"));
                "is kept"
            }
            None => "works and is kept",
        };
        ctx.out.info(&format!(
            "remote {} ({}) at {}: the access token {checked} encrypted in the vault; 'vault \
             publish NAME --to {}' publishes a credential there",
            r.name,
            r.kind.as_str(),
            r.url,
            r.name
        ));
        if let Some(w) = &r.token_warning {
            ctx.out.warn(&token_note(w));
        }
    }
    Ok(())
}

/// The platform's expiry warning, its lines kept (indented under the
/// first), with what to do.
fn token_note(w: &str) -> String {
    format!(
        "the platform warns: {}\n  (a new token: 'vault remote add NAME --kind osmo URL \
         --token-file FILE --replace')",
        w.lines().collect::<Vec<_>>().join("\n  ")
    )
}

fn list(ctx: &mut Ctx) -> CliResult<()> {
    let remotes = remotes(ctx.call_unlocked(&|| Request::RemoteList)?, "remote list")?;
    if ctx.out.json {
        return ctx.out.json(&remotes);
    }
    if remotes.is_empty() {
        ctx.out
            .info("no remotes: 'vault remote add NAME URL --kind osmo --token-file FILE' adds one");
        return Ok(());
    }
    let mut t = Table::new(&[
        "REMOTE",
        "KIND",
        "CREDENTIALS",
        "QUEUED",
        "FAILED",
        "STATUS",
        "URL",
    ]);
    for r in &remotes {
        let (state, color) = remote_state(r);
        t.row(vec![
            (r.name.clone(), None),
            (r.kind.as_str().to_owned(), None),
            (r.published.to_string(), None),
            (r.queued.to_string(), None),
            (r.failed.to_string(), None),
            (state, color),
            (r.url.clone(), None),
        ]);
    }
    let color = ctx.out.color;
    ctx.out.text(&t.render(color));
    for r in &remotes {
        // The STATUS column says token-expiring: the platform's text is
        // for `vault status` and `vault remote status`.
        let quiet = RemoteInfo {
            token_warning: None,
            ..r.clone()
        };
        for line in remote_notes(&quiet) {
            ctx.out.warn(&line);
        }
    }
    Ok(())
}

/// One word for a remote, and its color.
fn remote_state(r: &RemoteInfo) -> (String, Option<Color>) {
    if r.token_expired {
        ("token-expired".into(), Some(Color::Red))
    } else if r.last_error.is_some() {
        ("unreachable".into(), Some(Color::Yellow))
    } else if r.failed > 0 {
        ("refused".into(), Some(Color::Red))
    } else if r.token_warning.is_some() {
        ("token-expiring".into(), Some(Color::Yellow))
    } else if r.queued > 0 {
        ("pending".into(), Some(Color::Yellow))
    } else {
        ("ok".into(), None)
    }
}

/// What a user should know about a remote, one line each (also for
/// `vault status`).
pub(super) fn remote_notes(r: &RemoteInfo) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(w) = &r.token_warning {
        out.push(format!("remote {}: {}", r.name, token_note(w)));
    }
    if let Some(e) = &r.last_error {
        out.push(format!(
            "remote {}: {e} ({} publication(s) queued; retried with backoff)",
            r.name, r.queued
        ));
    }
    for p in &r.attention {
        if let Some(line) = publication_note(p) {
            out.push(format!("remote {}: {line}", r.name));
        }
    }
    out
}

fn publication_note(p: &PublicationInfo) -> Option<String> {
    // No local name: deleted, or the vault is locked.
    let what = match &p.name {
        Some(local) => format!("{local} as '{}'", p.remote_name),
        None => format!("'{}'", p.remote_name),
    };
    match p.state {
        PublishState::Failed => Some(format!(
            "{what}: {} (fix the credential, then it is sent again; or 'vault publish --repair')",
            p.error
                .as_deref()
                .unwrap_or("refused (unlock to see the platform's message)")
        )),
        PublishState::Missing => Some(format!(
            "{what}: the platform is missing it (deleted for an update; the create is retried)"
        )),
        _ => None,
    }
}

fn state_word(s: PublishState) -> (&'static str, Option<Color>) {
    match s {
        PublishState::Published => ("published", None),
        PublishState::Pending => ("pending", Some(Color::Yellow)),
        PublishState::Failed => ("failed", Some(Color::Red)),
        PublishState::Missing => ("missing", Some(Color::Red)),
        PublishState::Unpublishing => ("unpublishing", Some(Color::Yellow)),
    }
}

fn publications_table(pubs: &[PublicationInfo], missing: &[String]) -> Table {
    let mut t = Table::new(&["CREDENTIAL", "REMOTE", "AS", "TYPE", "STATUS", "MESSAGE"]);
    for p in pubs {
        let (mut word, mut color) = state_word(p.state);
        if p.state == PublishState::Published && missing.contains(&p.remote_name) {
            (word, color) = ("drifted", Some(Color::Red));
        }
        t.row(vec![
            (p.name.clone().unwrap_or_else(|| "-".into()), None),
            (p.remote.clone(), None),
            (p.remote_name.clone(), None),
            (p.cred_type.clone(), None),
            (word.to_owned(), color),
            (p.error.clone().unwrap_or_default(), None),
        ]);
    }
    t
}

fn report(ctx: &mut Ctx, build: &dyn Fn() -> Request) -> CliResult<RemoteReport> {
    match ctx.call_unlocked(build)? {
        Response::RemoteReport(r) => Ok(r),
        _ => Err(unexpected("remote status")),
    }
}

fn show_report(ctx: &mut Ctx, r: &RemoteReport) -> CliResult<()> {
    if ctx.out.json {
        return ctx.out.json(r);
    }
    let remote = &r.remote;
    ctx.out.line(&format!(
        "{} ({}) at {}: {} credential(s), {} queued, {} refused",
        remote.name,
        remote.kind.as_str(),
        remote.url,
        remote.published,
        remote.queued,
        remote.failed
    ));
    if !r.publications.is_empty() {
        let color = ctx.out.color;
        ctx.out
            .text(&publications_table(&r.publications, &r.missing).render(color));
    }
    if !r.repaired.is_empty() {
        ctx.out
            .info(&format!("pushed again: {}", r.repaired.join(", ")));
    }
    if !r.missing.is_empty() {
        ctx.out.warn(&format!(
            "missing on the platform: {} ('vault publish --repair --to {}' pushes them again)",
            r.missing.join(", "),
            remote.name
        ));
    }
    for c in &r.unknown {
        let profile = if c.profile.is_empty() {
            String::new()
        } else {
            format!(" for {}", c.profile)
        };
        ctx.out.warn(&format!(
            "on the platform but not published by this vault: {} ({}{profile})",
            c.name, c.cred_type
        ));
    }
    for line in remote_notes(remote) {
        ctx.out.warn(&line);
    }
    Ok(())
}

/// `vault publish NAME --to REMOTE [--as N]`, `vault publish --repair`.
pub fn publish(ctx: &mut Ctx, args: &PublishArgs) -> CliResult<()> {
    if args.repair {
        let targets = match &args.to {
            Some(r) => vec![r.clone()],
            None => remotes(ctx.call_unlocked(&|| Request::RemoteList)?, "remote list")?
                .into_iter()
                .map(|r| r.name)
                .collect(),
        };
        let mut reports = Vec::new();
        for remote in targets {
            reports.push(report(ctx, &|| Request::PublishRepair {
                remote: remote.clone(),
            })?);
        }
        if ctx.out.json {
            return ctx.out.json(&reports);
        }
        for r in &reports {
            show_report(ctx, r)?;
        }
        return Ok(());
    }
    let (Some(name), Some(to)) = (&args.name, &args.to) else {
        return Err(WireError::new(
            ErrorCode::Usage,
            "give NAME and --to REMOTE",
        ));
    };
    let answer = ctx.call_unlocked(&|| Request::Publish {
        name: name.clone(),
        remote: to.clone(),
        remote_name: args.remote_name.clone(),
    })?;
    let Response::Publications { publications } = answer else {
        return Err(unexpected("publish"));
    };
    if ctx.out.json {
        return ctx.out.json(&publications);
    }
    for p in &publications {
        let what = format!(
            "{name} as '{}' ({}) on {}",
            p.remote_name, p.cred_type, p.remote
        );
        match p.state {
            PublishState::Published => ctx.out.info(&format!(
                "published {what}; it is sent again whenever it changes"
            )),
            PublishState::Failed => {
                return Err(WireError::new(
                    ErrorCode::Failed,
                    format!(
                        "{what}: {}; the binding is kept and is sent again when the credential \
                         changes",
                        p.error.as_deref().unwrap_or("refused")
                    ),
                ));
            }
            _ => ctx.out.info(&format!(
                "queued {what}{}; it goes out when the platform answers ('vault remote status \
                 {}')",
                p.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default(),
                p.remote
            )),
        }
    }
    Ok(())
}

/// `vault unpublish NAME [--from REMOTE]`.
pub fn unpublish(ctx: &mut Ctx, args: &UnpublishArgs) -> CliResult<()> {
    let answer = ctx.call_unlocked(&|| Request::Unpublish {
        name: args.name.clone(),
        remote: args.from.clone(),
    })?;
    let Response::Publications { publications } = answer else {
        return Err(unexpected("unpublish"));
    };
    if ctx.out.json {
        return ctx.out.json(&publications);
    }
    for p in &publications {
        if p.error.is_some() {
            ctx.out.info(&format!(
                "queued the deletion of '{}' on {} ({}); it goes out when the platform answers",
                p.remote_name,
                p.remote,
                p.error.as_deref().unwrap_or_default()
            ));
        } else if p.pushed_revision.is_none() && p.state == PublishState::Unpublishing {
            ctx.out.info(&format!(
                "unpublished '{}' from {}",
                p.remote_name, p.remote
            ));
        } else {
            ctx.out.info(&format!(
                "queued the deletion of '{}' on {}",
                p.remote_name, p.remote
            ));
        }
    }
    Ok(())
}
