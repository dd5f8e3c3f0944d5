//! Commands on credentials: `add`, `set`, `get`, `list`, `rm`, `rename`,
//! `history`, `restore`.
//!
//! Arguments are checked here, before any prompt or request, so a typo costs
//! neither a passphrase prompt nor a round trip; the daemon checks again.

use std::collections::BTreeMap;
use std::io::{self, BufRead, IsTerminal, Write};

use serde_json::json;
use vault_protocol::credential::{
    CredentialType, MAX_DESCRIPTION, is_generic_key, missing_required, refreshes_itself,
    validate_fields, validate_tag,
};
use vault_protocol::message::{ListFilter, NewRecord, RecordState, RecordSummary, RecordView};
use vault_protocol::timefmt::{Timestamp, parse_duration};
use vault_protocol::{ErrorCode, Request, Response, SecretValue, WireError, validate_name};

use super::Ctx;
use crate::args::{AddArgs, GetArgs, ListArgs, ListFormat, OtpArgs, RmArgs, SetArgs, SortKey};
use crate::client::list_all;
use crate::clip;
use crate::error::{CliResult, failed, unexpected, usage};
use crate::generate;
use crate::input::{self, FieldArg, Source};
use crate::output::{Color, Table, csv_row, relative, truncate, tsv_row};

/// The field name that sets a record's expiry rather than a value.
const EXPIRES_FIELD: &str = "expires_at";

/// `vault add`.
pub fn add(ctx: &mut Ctx, args: AddArgs) -> CliResult<()> {
    let kind = args.kind;
    validate_name(&args.name).map_err(usage)?;
    check_attributes(args.description.as_deref(), &args.tags)?;
    let fields = input::parse_fields(args.fields.iter().chain(&args.payload))?;
    let generate = generate_plan(&args, &fields)?;
    let generated = generate.as_ref().map(|g| g.field.as_str());
    let mut fields = fields;
    if io::stdin().is_terminal() {
        ask_for_missing(kind, &mut fields, generated);
    }
    check_field_names(kind, &fields, generated)?;
    let flag_expiry = expiry_from_flags(args.expires_at.as_deref(), args.ttl.as_deref())?;
    if flag_expiry.is_some() && fields.iter().any(|f| f.name == EXPIRES_FIELD) {
        return Err(usage(
            "the expiry is given twice: as expires_at= and as --expires-at/--ttl",
        ));
    }
    input::check_prompts(&fields, io::stdin().is_terminal())?;
    warn_about_literals(ctx, &fields, |f| kind.is_secret(f));

    let mut values = read_values(fields, &|f| kind.is_secret(f))?;
    let expires_at = match values.remove(EXPIRES_FIELD) {
        Some(ts) => Some(parse_timestamp(ts.expose_secret())?),
        None => flag_expiry,
    };
    let generated = match &generate {
        Some(g) => {
            let value = generate::password(g.length, &g.classes).map_err(failed)?;
            values.insert(g.field.clone(), SecretValue::from(value.as_str()));
            Some(value)
        }
        None => None,
    };
    validate_fields(kind, &values).map_err(usage)?;

    let build = || Request::Add {
        record: NewRecord {
            name: args.name.clone(),
            kind,
            fields: duplicate(&values),
            description: args.description.clone(),
            tags: args.tags.clone(),
            expires_at,
        },
    };
    let summary = changed(ctx.call_unlocked(&build)?, "add")?;
    ctx.out
        .info(&format!("added {} ({})", summary.name, summary.kind));
    if let (Some(value), Some(Generate { field, .. })) = (&generated, &generate) {
        if args.print && !ctx.out.json {
            ctx.out.line(value);
        } else {
            ctx.out.info(&format!(
                "generated {field}: see it with 'vault get {} --field {field}'",
                summary.name
            ));
        }
    }
    print_summary(ctx, &summary)
}

/// What `--generate` fills; the field is not also given a value.
fn generate_plan(args: &AddArgs, fields: &[FieldArg]) -> CliResult<Option<Generate>> {
    let Some(named) = &args.generate else {
        return Ok(None);
    };
    let field = match (named.as_str(), args.kind) {
        ("", CredentialType::Password) => "password".to_owned(),
        ("", CredentialType::Token) => "token".to_owned(),
        ("", kind) => {
            return Err(usage(format!(
                "name the field to generate for a {kind} credential: --generate=FIELD"
            )));
        }
        (f, _) => f.to_owned(),
    };
    if fields.iter().any(|f| f.name == field) {
        return Err(usage(format!(
            "field '{field}' is both given and generated: drop one"
        )));
    }
    let classes = generate::classes(args.charset.as_deref().unwrap_or(generate::DEFAULT_CHARSET))
        .map_err(usage)?;
    let length = args.length.unwrap_or(generate::DEFAULT_LENGTH);
    generate::check_length(length).map_err(usage)?;
    Ok(Some(Generate {
        field,
        length,
        classes,
    }))
}

/// A field `vault add --generate` fills.
struct Generate {
    field: String,
    length: usize,
    classes: Vec<&'static [u8]>,
}

/// `vault set`.
pub fn set(ctx: &mut Ctx, args: SetArgs) -> CliResult<()> {
    validate_name(&args.name).map_err(usage)?;
    check_attributes(args.description.as_deref(), &args.tags)?;
    let fields = input::parse_fields(&args.fields)?;
    for f in &fields {
        if matches!(&f.source, Source::Literal(v) if v.is_empty()) && f.name != EXPIRES_FIELD {
            return Err(usage(format!(
                "field '{0}' has an empty value: to remove it use --unset {0}",
                f.name
            )));
        }
        if args.unset.contains(&f.name) {
            return Err(usage(format!(
                "field '{}' is both set and unset: choose one",
                f.name
            )));
        }
    }
    if let Some(bad) = args
        .unset
        .iter()
        .find(|u| u.is_empty() || *u == EXPIRES_FIELD)
    {
        return Err(usage(if bad.is_empty() {
            "--unset needs a field name".to_owned()
        } else {
            "to remove the expiry use --no-expiry".to_owned()
        }));
    }
    let flag_expiry = expiry_from_flags(args.expires_at.as_deref(), args.ttl.as_deref())?;
    let expiry_field = fields.iter().any(|f| f.name == EXPIRES_FIELD);
    if expiry_field && (flag_expiry.is_some() || args.no_expiry) {
        return Err(usage(
            "the expiry is given twice: as expires_at= and as --expires-at/--ttl/--no-expiry",
        ));
    }
    let nothing = fields.is_empty()
        && args.unset.is_empty()
        && args.description.is_none()
        && args.tags.is_empty()
        && flag_expiry.is_none()
        && !args.no_expiry;
    if nothing {
        return Err(usage(
            "nothing to change: give FIELD=VALUE, --unset FIELD, --description, --tag, \
             --expires-at, --ttl or --no-expiry",
        ));
    }
    input::check_prompts(&fields, io::stdin().is_terminal())?;
    warn_about_literals(ctx, &fields, maybe_secret);

    let mut values = read_values(fields, &maybe_secret)?;
    let expires_at = match values.remove(EXPIRES_FIELD) {
        Some(ts) if ts.is_empty() => Some(None),
        Some(ts) => Some(Some(parse_timestamp(ts.expose_secret())?)),
        None if args.no_expiry => Some(None),
        None => flag_expiry.map(Some),
    };
    let tags = (!args.tags.is_empty()).then(|| args.tags.clone());

    let build = || Request::Set {
        name: args.name.clone(),
        fields: duplicate(&values),
        unset: args.unset.clone(),
        description: args.description.clone(),
        tags: tags.clone(),
        expires_at,
    };
    let summary = changed(ctx.call_unlocked(&build)?, "set")?;
    ctx.out.info(&format!(
        "updated {} (revision {})",
        summary.name, summary.revision
    ));
    print_summary(ctx, &summary)
}

/// One record with its values, the vault unlocked first if need be.
pub(super) fn fetch(ctx: &mut Ctx, name: &str) -> CliResult<RecordView> {
    validate_name(name).map_err(usage)?;
    match ctx.call_unlocked(&|| Request::Get {
        name: name.to_owned(),
    })? {
        Response::Record(view) => Ok(view),
        _ => Err(unexpected("get")),
    }
}

/// `vault get`.
pub fn get(ctx: &mut Ctx, args: &GetArgs) -> CliResult<()> {
    if args.clip {
        return get_clip(ctx, args);
    }
    let view = fetch(ctx, &args.name)?;
    let expired_at = expired_at(&view);

    if let Some(field) = &args.field {
        let value = field_value(&view, field)?;
        if ctx.out.json {
            return ctx.out.json(&json!({
                "name": view.name,
                "field": field,
                "value": value,
            }));
        }
        ctx.out.text(value.expose_secret());
        ctx.out.text("\n");
        return Ok(());
    }

    if let Some(t) = expired_at {
        ctx.out.warn(&format!("{} expired at {t}", view.name));
    }
    if ctx.out.json {
        return ctx.out.json(&view);
    }
    print_record(ctx, &view);
    Ok(())
}

/// `vault get --clip`: one field to the clipboard (clip.rs), nothing
/// secret printed. Whether a clipboard can be reached and the clear time
/// are checked first, so a copy that cannot happen costs no unlock prompt.
fn get_clip(ctx: &mut Ctx, args: &GetArgs) -> CliResult<()> {
    let clear_after = clip::clear_after(args.clear_after.as_deref())?;
    clip::reachable()?;
    let view = fetch(ctx, &args.name)?;
    let field = match &args.field {
        Some(field) => field.clone(),
        None => clip::default_field(&view)?,
    };
    let value = field_value(&view, &field)?;
    // The holder must not inherit the daemon connection.
    ctx.disconnect();
    clip::copy(value, clear_after)?;
    let secs = clear_after.as_secs();
    if ctx.out.json {
        return ctx.out.json(&json!({
            "name": view.name,
            "field": field,
            "clipboard": true,
            "clears_after_secs": secs,
        }));
    }
    ctx.out.info(&format!(
        "copied {}'s {field}; clears in {secs} s",
        view.name
    ));
    Ok(())
}

/// When the record expired, if it has.
fn expired_at(view: &RecordView) -> Option<Timestamp> {
    view.expires_at
        .filter(|t| view.expired || *t <= Timestamp::now())
}

/// One field's value for a script or the clipboard: not found (exit 4)
/// names the fields there are; an expired record is exit 7, since a script
/// must not silently use an expired key.
fn field_value<'v>(view: &'v RecordView, field: &str) -> CliResult<&'v SecretValue> {
    let Some(value) = view.fields.get(field) else {
        let known: Vec<_> = view.fields.keys().map(String::as_str).collect();
        return Err(WireError::new(
            ErrorCode::NotFound,
            format!(
                "'{}' has no field '{field}': its fields are {}",
                view.name,
                known.join(", ")
            ),
        ));
    };
    if let Some(t) = expired_at(view) {
        return Err(WireError::new(
            ErrorCode::Expired,
            format!(
                "{} expired at {t}: renew it with 'vault set {} FIELD=...' (or --ttl)",
                view.name, view.name
            ),
        ));
    }
    Ok(value)
}

/// `vault otp`: the code on stdout; on a terminal, with how long it holds.
pub fn otp(ctx: &mut Ctx, args: &OtpArgs) -> CliResult<()> {
    validate_name(&args.name).map_err(usage)?;
    let (code, valid_for_secs, period_secs) = match ctx.call_unlocked(&|| Request::Otp {
        name: args.name.clone(),
    })? {
        Response::Otp {
            code,
            valid_for_secs,
            period_secs,
        } => (code, valid_for_secs, period_secs),
        _ => return Err(unexpected("otp")),
    };
    if ctx.out.json {
        return ctx.out.json(&json!({
            "name": args.name,
            "code": code,
            "valid_for_secs": valid_for_secs,
            "period_secs": period_secs,
        }));
    }
    ctx.out.text(code.expose_secret());
    // For a person, how long it holds; a pipe gets the digits alone.
    if ctx.out.stdout_tty && !ctx.out.quiet {
        ctx.out.text(&format!("  (valid {valid_for_secs} s more)"));
    }
    ctx.out.text("\n");
    Ok(())
}

/// Human form of a record: `key: value` lines; multi-line values indented.
fn print_record(ctx: &mut Ctx, view: &RecordView) {
    ctx.out.line(&format!("name: {}", view.name));
    ctx.out.line(&format!("type: {}", view.kind));
    if let Some(d) = &view.description {
        ctx.out.line(&format!("description: {d}"));
    }
    if !view.tags.is_empty() {
        ctx.out.line(&format!("tags: {}", view.tags.join(", ")));
    }
    if let Some(t) = view.expires_at {
        ctx.out.line(&format!(
            "expires_at: {t} ({})",
            relative(t, Timestamp::now())
        ));
    }
    for (key, value) in &view.fields {
        let value = value.expose_secret();
        if value.contains('\n') {
            ctx.out.text(&format!("{key}:\n"));
            for line in value.lines() {
                ctx.out.text("  ");
                ctx.out.text(line);
                ctx.out.text("\n");
            }
        } else {
            ctx.out.text(&format!("{key}: "));
            ctx.out.text(value);
            ctx.out.text("\n");
        }
    }
}

/// `vault list`.
pub fn list(ctx: &mut Ctx, args: &ListArgs) -> CliResult<()> {
    if let Some(tag) = &args.tag {
        validate_tag(tag).map_err(usage)?;
    }
    let expiring_within_secs = match &args.expiring {
        Some(d) => Some(parse_duration(d).map_err(usage)?.as_secs()),
        None => None,
    };
    let filter = ListFilter {
        kind: args.kind,
        tag: args.tag.clone(),
        expiring_within_secs,
        expired: args.expired,
        used: args.used,
    };
    let mut records = list_all(&filter, |req| ctx.call_unlocked(req))?;
    sort_records(&mut records, args.sort);

    let format = match args.format {
        _ if ctx.out.json => ListFormat::Json,
        Some(f) => f,
        None if ctx.out.stdout_tty => ListFormat::Table,
        None => {
            for r in &records {
                let expires = r.expires_at.map(|t| t.to_string());
                let mut cells = vec![
                    r.name.clone(),
                    r.kind.as_str().to_owned(),
                    state_name(r.state).to_owned(),
                    expires.unwrap_or_else(|| "-".into()),
                ];
                // --used adds when and by what, '-' for never.
                if args.used {
                    let (at, by) = r.last_used.as_ref().map_or_else(
                        || ("-".to_owned(), "-".to_owned()),
                        |u| (u.at.to_string(), u.by.clone()),
                    );
                    cells.extend([at, by]);
                }
                let cells: Vec<&str> = cells.iter().map(String::as_str).collect();
                ctx.out.text(&tsv_row(&cells));
            }
            return Ok(());
        }
    };
    match format {
        ListFormat::Json => ctx.out.json(&records)?,
        ListFormat::Csv => ctx.out.text(&records_csv(&records)),
        ListFormat::Table if records.is_empty() => ctx.out.info("no credentials"),
        ListFormat::Table => {
            let table = records_table(&records, Timestamp::now(), args.used);
            let color = ctx.out.color;
            ctx.out.text(&table.render(color));
        }
    }
    Ok(())
}

fn sort_records(records: &mut [RecordSummary], key: SortKey) {
    match key {
        SortKey::Name => records.sort_by(|a, b| a.name.cmp(&b.name)),
        SortKey::Updated => records.sort_by(|a, b| {
            b.updated_at
                .cmp(&a.updated_at)
                .then_with(|| a.name.cmp(&b.name))
        }),
        SortKey::Expires => records.sort_by(|a, b| {
            (a.expires_at.is_none(), a.expires_at, &a.name).cmp(&(
                b.expires_at.is_none(),
                b.expires_at,
                &b.name,
            ))
        }),
    }
}

fn records_table(records: &[RecordSummary], now: Timestamp, used: bool) -> Table {
    let mut headers = vec!["NAME", "TYPE", "STATUS", "EXPIRES", "UPDATED"];
    if used {
        headers.push("LAST USED");
    }
    headers.extend(["TAGS", "DESCRIPTION"]);
    let mut table = Table::new(&headers);
    for r in records {
        let color = match r.state {
            RecordState::Expiring | RecordState::PendingSync => Some(Color::Yellow),
            RecordState::Expired
            | RecordState::Conflict
            | RecordState::Drifted
            | RecordState::PublishFailed
            | RecordState::CheckFailed => Some(Color::Red),
            RecordState::Ok => None,
        };
        let mut row = vec![
            (r.name.clone(), None),
            (r.kind.to_string(), None),
            (state_name(r.state).to_owned(), color),
            (
                r.expires_at
                    .map_or_else(|| "-".to_owned(), |t| relative(t, now)),
                None,
            ),
            (relative(r.updated_at, now), None),
        ];
        if used {
            let last = r.last_used.as_ref().map_or_else(
                || "never".to_owned(),
                |u| format!("{} by {}", relative(u.at, now), truncate(&u.by, 40)),
            );
            row.push((last, None));
        }
        row.extend([
            (r.tags.join(","), None),
            (truncate(r.description.as_deref().unwrap_or(""), 50), None),
        ]);
        table.row(row);
    }
    table
}

fn records_csv(records: &[RecordSummary]) -> String {
    let mut out = csv_row(&[
        "name",
        "type",
        "state",
        "expires_at",
        "updated_at",
        "created_at",
        "revision",
        "tags",
        "description",
    ]);
    for r in records {
        let expires = r.expires_at.map(|t| t.to_string()).unwrap_or_default();
        out.push_str(&csv_row(&[
            &r.name,
            r.kind.as_str(),
            state_name(r.state),
            &expires,
            &r.updated_at.to_string(),
            &r.created_at.to_string(),
            &r.revision.to_string(),
            &r.tags.join(";"),
            r.description.as_deref().unwrap_or(""),
        ]));
    }
    out
}

/// The JSON spelling of a state (docs/user-guide.md).
fn state_name(state: RecordState) -> &'static str {
    match state {
        RecordState::Ok => "ok",
        RecordState::Expiring => "expiring",
        RecordState::Expired => "expired",
        RecordState::PendingSync => "pending-sync",
        RecordState::Conflict => "conflict",
        RecordState::Drifted => "drifted",
        RecordState::PublishFailed => "publish-failed",
        RecordState::CheckFailed => "check-failed",
    }
}

/// `vault rm`: asks first on a terminal, unless `--force`.
pub fn rm(ctx: &mut Ctx, args: &RmArgs) -> CliResult<()> {
    validate_name(&args.name).map_err(usage)?;
    if !args.force && io::stdin().is_terminal() && !confirm(&format!("Delete {}?", args.name))? {
        return Err(failed(format!("{} was not deleted", args.name)));
    }
    let summary = changed(
        // vaultd refuses a credential that files are emitted from unless
        // --force.
        ctx.call_unlocked(&|| Request::Remove {
            name: args.name.clone(),
            force: args.force,
        })?,
        "rm",
    )?;
    ctx.out.info(&format!(
        "removed {0}; its history is kept ('vault history {0}')",
        summary.name
    ));
    print_summary(ctx, &summary)
}

pub(super) fn confirm(question: &str) -> CliResult<bool> {
    eprint!("{question} [y/N] ");
    let _ = io::stderr().flush();
    let mut answer = String::new();
    io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| failed(format!("cannot read the answer: {e}")))?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// `vault rename`.
pub fn rename(ctx: &mut Ctx, old: &str, new: &str) -> CliResult<()> {
    validate_name(old).map_err(usage)?;
    validate_name(new).map_err(usage)?;
    let summary = changed(
        ctx.call_unlocked(&|| Request::Rename {
            from: old.to_owned(),
            to: new.to_owned(),
        })?,
        "rename",
    )?;
    ctx.out.info(&format!("renamed {old} to {}", summary.name));
    print_summary(ctx, &summary)
}

/// `vault history`.
pub fn history(ctx: &mut Ctx, name: &str) -> CliResult<()> {
    validate_name(name).map_err(usage)?;
    let revisions = match ctx.call_unlocked(&|| Request::History {
        name: name.to_owned(),
    })? {
        Response::History { revisions } => revisions,
        _ => return Err(unexpected("history")),
    };
    if ctx.out.json {
        return ctx.out.json(&revisions);
    }
    if ctx.out.stdout_tty {
        let now = Timestamp::now();
        let mut table = Table::new(&["REVISION", "UPDATED", "DEVICE", "CHANGE"]);
        for r in &revisions {
            table.row(vec![
                (r.revision.to_string(), None),
                (
                    format!("{} ({})", r.updated_at, relative(r.updated_at, now)),
                    None,
                ),
                (r.device.clone(), None),
                (r.change.clone(), None),
            ]);
        }
        let text = table.render(false);
        ctx.out.text(&text);
    } else {
        for r in &revisions {
            ctx.out.text(&tsv_row(&[
                &r.revision.to_string(),
                &r.updated_at.to_string(),
                &r.device,
                &r.change,
            ]));
        }
    }
    Ok(())
}

/// `vault restore`.
pub fn restore(ctx: &mut Ctx, name: &str, revision: u64) -> CliResult<()> {
    validate_name(name).map_err(usage)?;
    let summary = changed(
        ctx.call_unlocked(&|| Request::Restore {
            name: name.to_owned(),
            revision,
        })?,
        "restore",
    )?;
    ctx.out.info(&format!(
        "restored {} to revision {revision} (now revision {})",
        summary.name, summary.revision
    ));
    print_summary(ctx, &summary)
}

fn changed(response: Response, what: &str) -> CliResult<RecordSummary> {
    match response {
        Response::Changed(summary) => Ok(summary),
        _ => Err(unexpected(what)),
    }
}

/// Mutations print their summary only with `--json`; the human message went
/// to stderr so stdout stays clean for scripts.
fn print_summary(ctx: &mut Ctx, summary: &RecordSummary) -> CliResult<()> {
    if ctx.out.json {
        ctx.out.json(summary)?;
    }
    Ok(())
}

/// Description and tags, checked before anything is asked or sent.
fn check_attributes(description: Option<&str>, tags: &[String]) -> CliResult<()> {
    if description.is_some_and(|d| d.len() > MAX_DESCRIPTION) {
        return Err(usage(format!(
            "the description is longer than {MAX_DESCRIPTION} bytes"
        )));
    }
    tags.iter().try_for_each(|t| validate_tag(t)).map_err(usage)
}

/// Which fields a type accepts and requires, from the field names alone, so
/// every missing field is reported before any value is read or asked for.
/// (`validate_fields` checks the values themselves afterwards.)
fn check_field_names(
    kind: CredentialType,
    fields: &[FieldArg],
    generated: Option<&str>,
) -> CliResult<()> {
    let given: Vec<&FieldArg> = fields.iter().filter(|f| f.name != EXPIRES_FIELD).collect();
    let names = || given.iter().map(|f| f.name.as_str()).chain(generated);
    if kind == CredentialType::Generic {
        if names().next().is_none() {
            return Err(usage("a generic credential needs at least one KEY=VALUE"));
        }
        if let Some(bad) = names().find(|n| !is_generic_key(n)) {
            return Err(usage(format!(
                "'{}' is not a valid key: use 1-253 characters of A-Z a-z 0-9 - . _ (workload \
                 platforms turn keys into Kubernetes secret keys)",
                bad.escape_debug()
            )));
        }
        return Ok(());
    }
    let specs = kind.fields();
    if let Some(unknown) = names().find(|n| !specs.iter().any(|s| s.name == *n)) {
        let known: Vec<_> = specs.iter().map(|s| s.name).collect();
        return Err(usage(format!(
            "unknown field '{}' for type {kind}: its fields are {}",
            unknown.escape_debug(),
            known.join(", ")
        )));
    }
    let present = |name: &str| {
        generated == Some(name)
            || given
                .iter()
                .any(|f| f.name == name && !matches!(&f.source, Source::Literal(v) if v.is_empty()))
    };
    // A record with a refresh command gets its values from the first refresh.
    let missing = missing_required(kind, refreshes_itself(present), present);
    if !missing.is_empty() {
        return Err(usage(format!(
            "missing required field{} for type {kind}: {}",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", ")
        )));
    }
    Ok(())
}

/// A field of unknown type (`vault set`) counts as secret unless it is a
/// non-secret field of some type (`region`, `username`, ...).
pub(super) fn maybe_secret(field: &str) -> bool {
    !CredentialType::ALL
        .iter()
        .flat_map(|t| t.fields())
        .any(|s| s.name == field && !s.secret)
}

/// One warning line for secret values typed on the command line; the values
/// themselves are never echoed.
pub(super) fn warn_about_literals(
    ctx: &Ctx,
    fields: &[FieldArg],
    is_secret: impl Fn(&str) -> bool,
) {
    let names: Vec<_> = fields
        .iter()
        .filter(|f| f.is_literal() && f.name != EXPIRES_FIELD && is_secret(&f.name))
        .map(|f| f.name.as_str())
        .collect();
    if let Some(first) = names.first() {
        ctx.out.warn(&format!(
            "{} given on the command line, where other processes and your shell history can see it; \
             next time use {first}=- (stdin) or {first}=@FILE",
            names.join(", ")
        ));
    }
}

/// Every field's value; one asked for on the terminal is hidden as typed
/// when `secret` says it holds a secret, echoed otherwise.
pub(super) fn read_values(
    fields: Vec<FieldArg>,
    secret: &dyn Fn(&str) -> bool,
) -> CliResult<BTreeMap<String, SecretValue>> {
    // Stdin unlocked: a visible prompt reads it too.
    input::resolve(fields, &mut io::stdin(), &mut |name| {
        let prompt = format!("{name}: ");
        if secret(name) {
            input::prompt_hidden(&prompt)
        } else {
            input::prompt_visible(&prompt)
        }
    })
}

/// On a terminal, the required fields not given are asked for, in the
/// type's order (`vault add github --type token` asks for the token).
fn ask_for_missing(kind: CredentialType, fields: &mut Vec<FieldArg>, generated: Option<&str>) {
    if kind == CredentialType::Generic {
        return;
    }
    let present = |name: &str| generated == Some(name) || fields.iter().any(|f| f.name == name);
    let missing = missing_required(kind, refreshes_itself(present), present);
    fields.extend(missing.into_iter().map(|name| FieldArg {
        name: name.to_owned(),
        source: Source::Prompt,
    }));
}

fn expiry_from_flags(expires_at: Option<&str>, ttl: Option<&str>) -> CliResult<Option<Timestamp>> {
    match (expires_at, ttl) {
        (Some(ts), _) => parse_timestamp(ts).map(Some),
        (None, Some(ttl)) => {
            let d = parse_duration(ttl).map_err(usage)?;
            Ok(Some(Timestamp::now().plus(d)))
        }
        (None, None) => Ok(None),
    }
}

fn parse_timestamp(ts: &str) -> CliResult<Timestamp> {
    Timestamp::parse(ts).map_err(usage)
}

pub(super) fn duplicate(values: &BTreeMap<String, SecretValue>) -> BTreeMap<String, SecretValue> {
    values
        .iter()
        .map(|(k, v)| (k.clone(), v.duplicate()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_names(kind: CredentialType, fields: &[FieldArg]) -> CliResult<()> {
        check_field_names(kind, fields, None)
    }

    #[test]
    fn a_generated_field_counts_as_given() {
        let given = fields(&["username=u"]);
        assert!(check_field_names(CredentialType::Password, &given, Some("password")).is_ok());
        assert!(check_field_names(CredentialType::Password, &given, Some("pin")).is_err());
        assert!(check_field_names(CredentialType::Generic, &[], Some("DB_PASSWORD")).is_ok());
        assert!(check_field_names(CredentialType::Generic, &[], Some("a/b")).is_err());
    }

    fn fields(list: &[&str]) -> Vec<FieldArg> {
        let owned: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        input::parse_fields(&owned).unwrap()
    }

    fn summary(name: &str, updated: i64, expires: Option<i64>) -> RecordSummary {
        RecordSummary {
            name: name.into(),
            kind: CredentialType::Token,
            description: None,
            tags: vec![],
            created_at: Timestamp(0),
            updated_at: Timestamp(updated),
            expires_at: expires.map(Timestamp),
            expired: false,
            state: RecordState::Ok,
            revision: 1,
            checked: None,
            last_used: None,
        }
    }

    #[test]
    fn every_missing_field_is_listed_before_reading_values() {
        let err = check_names(CredentialType::Aws, &fields(&["region=x"])).unwrap_err();
        assert_eq!(err.code.exit_code(), 2);
        assert!(
            err.message
                .contains("missing required fields for type aws: access_key_id, secret_access_key"),
            "{}",
            err.message
        );
        // Sources that are not read yet count as present; empty literals do not.
        assert!(
            check_names(
                CredentialType::Aws,
                &fields(&["access_key_id=AK", "secret_access_key=-"])
            )
            .is_ok()
        );
        assert!(
            check_names(
                CredentialType::Aws,
                &fields(&["access_key_id=", "secret_access_key"])
            )
            .is_err()
        );
    }

    #[test]
    fn unknown_fields_and_generic_names() {
        let err = check_names(CredentialType::Token, &fields(&["token=t", "tok=x"])).unwrap_err();
        assert!(
            err.message.contains("unknown field 'tok'"),
            "{}",
            err.message
        );
        assert!(check_names(CredentialType::Generic, &fields(&[])).is_err());
        assert!(check_names(CredentialType::Generic, &fields(&["a/b=v"])).is_err());
        // What a platform takes, also when it is no variable name.
        assert!(check_names(CredentialType::Generic, &fields(&["other.key=v"])).is_ok());
        assert!(check_names(CredentialType::Generic, &fields(&["1X=v"])).is_ok());
        assert!(check_names(CredentialType::Generic, &fields(&["API_KEY=-"])).is_ok());
        // expires_at is the record's expiry, not a field.
        assert!(
            check_names(
                CredentialType::Token,
                &fields(&["token=-", "expires_at=2030-01-01T00:00:00Z"])
            )
            .is_ok()
        );
    }

    #[test]
    fn secret_guess_for_set() {
        assert!(maybe_secret("password"));
        assert!(maybe_secret("MY_API_KEY"));
        assert!(!maybe_secret("region"));
        assert!(!maybe_secret("username"));
    }

    #[test]
    fn sorting() {
        let mut rs = vec![
            summary("b", 10, None),
            summary("a", 5, Some(100)),
            summary("c", 20, Some(50)),
        ];
        sort_records(&mut rs, SortKey::Name);
        assert_eq!(names(&rs), ["a", "b", "c"]);
        sort_records(&mut rs, SortKey::Updated);
        assert_eq!(names(&rs), ["c", "b", "a"]);
        sort_records(&mut rs, SortKey::Expires);
        assert_eq!(names(&rs), ["c", "a", "b"]);
    }

    fn names(rs: &[RecordSummary]) -> Vec<&str> {
        rs.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn csv_has_header_and_quotes() {
        let mut r = summary("a", 0, None);
        r.description = Some("x, \"y\"".into());
        r.tags = vec!["t1".into(), "t2".into()];
        let csv = records_csv(&[r]);
        let mut lines = csv.lines();
        assert_eq!(
            lines.next().unwrap(),
            "name,type,state,expires_at,updated_at,created_at,revision,tags,description"
        );
        assert_eq!(
            lines.next().unwrap(),
            "a,token,ok,,1970-01-01T00:00:00Z,1970-01-01T00:00:00Z,1,t1;t2,\"x, \"\"y\"\"\""
        );
    }

    #[test]
    fn table_shows_status_and_no_values() {
        let mut r = summary("aws-sts", 0, Some(3600));
        r.state = RecordState::Expiring;
        let text = records_table(&[r], Timestamp(0), false).render(false);
        let mut lines = text.lines();
        assert!(
            lines
                .next()
                .unwrap()
                .starts_with("NAME     TYPE   STATUS    EXPIRES")
        );
        assert!(
            lines.next().unwrap().contains("expiring  in 1h0m"),
            "{text}"
        );
    }
}
