//! `vault audit` (docs/lifecycle.md): the daemon's record of every value
//! handed out; exits 1 when the log is not whole.

use vault_protocol::message::{AuditEntry, AuditProcess};
use vault_protocol::server_api::validate_id;
use vault_protocol::timefmt::{Timestamp, parse_duration};
use vault_protocol::{ErrorCode, Request, Response, validate_name};

use super::Ctx;
use crate::args::AuditArgs;
use crate::error::{CliResult, unexpected, usage};
use crate::output::{Table, tsv_row};

pub fn run(ctx: &mut Ctx, args: &AuditArgs) -> CliResult<()> {
    if let Some(name) = &args.name {
        validate_name(name).map_err(usage)?;
    }
    if let Some(device) = &args.device {
        validate_id("--device", device).map_err(usage)?;
    }
    let devices = args.all_devices || args.device.is_some();
    let since = match args.since.as_deref() {
        None => None,
        Some(s) => Some(match parse_duration(s) {
            Ok(d) => Timestamp(Timestamp::now().unix() - d.as_secs() as i64),
            Err(_) => Timestamp::parse(s).map_err(|_| {
                usage(format!(
                    "--since '{s}' is neither a duration (7d, 1h) nor a time (2026-12-01T00:00:00Z)"
                ))
            })?,
        }),
    };
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    let mut after = None;
    loop {
        match ctx.call_unlocked(&|| Request::Audit {
            name: args.name.clone(),
            since,
            after,
            device: args.device.clone(),
            all_devices: args.all_devices,
        })? {
            Response::Audit {
                entries: page,
                problems: found,
                next,
            } => {
                entries.extend(page);
                problems.extend(found);
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            _ => return Err(unexpected("audit")),
        }
    }
    if ctx.out.json {
        ctx.out.json(&serde_json::json!({
            "entries": entries,
            "problems": problems,
        }))?;
    } else if ctx.out.stdout_tty {
        if entries.is_empty() {
            ctx.out.info("no entries");
        } else {
            let mut head = vec!["TIME"];
            if devices {
                head.push("DEVICE");
            }
            head.extend(["CREDENTIAL", "OP", "PID", "CLIENT", "PARENTS"]);
            let mut table = Table::new(&head);
            for e in &entries {
                let mut row = vec![(e.at.to_string(), None)];
                if devices {
                    row.push((device_of(e).to_owned(), None));
                }
                row.extend([
                    (name_of(e).to_owned(), None),
                    (e.op.clone(), None),
                    (e.client.pid.to_string(), None),
                    (e.client.cmdline.clone(), None),
                    (parents(e), None),
                ]);
                table.row(row);
            }
            let color = ctx.out.color;
            ctx.out.text(&table.render(color));
        }
    } else {
        for e in &entries {
            let mut fields = vec![e.at.to_string()];
            if devices {
                fields.push(device_of(e).to_owned());
            }
            fields.extend([
                name_of(e).to_owned(),
                e.op.clone(),
                e.client.pid.to_string(),
                e.client.exe.clone().unwrap_or_else(|| "-".to_owned()),
                e.client.cmdline.clone(),
                parents(e),
            ]);
            let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
            ctx.out.text(&tsv_row(&fields));
        }
    }
    for p in &problems {
        ctx.out.warn(p);
    }
    if !problems.is_empty() {
        ctx.out.warn(if devices {
            "the audit log is not whole: entries are missing or were changed, here or on the \
             way from another device (see docs/sync.md, 'Audit log')"
        } else {
            "the audit log is not whole: vault.db was changed outside vaultd (see \
             docs/lifecycle.md, 'Audit log')"
        });
        ctx.exit_code = ErrorCode::Failed.exit_code();
    }
    Ok(())
}

fn device_of(e: &AuditEntry) -> &str {
    e.device.as_deref().unwrap_or("-")
}

fn name_of(e: &AuditEntry) -> &str {
    e.name.as_deref().unwrap_or("(deleted)")
}

/// `pid name < pid name …`, nearest parent first.
fn parents(e: &AuditEntry) -> String {
    e.parents.iter().map(short).collect::<Vec<_>>().join(" < ")
}

fn short(p: &AuditProcess) -> String {
    let name = p
        .exe
        .as_deref()
        .and_then(|x| x.rsplit('/').next())
        .unwrap_or("?");
    format!("{} {name}", p.pid)
}
