//! `vault rotate` (docs/lifecycle.md): the daemon does every step (the CLI
//! never sees a key); this prints its report, step by step, and exits 1
//! when a step failed, with what to run next.

use std::io::{self, IsTerminal};

use vault_protocol::message::{RotateReport, StepOutcome};
use vault_protocol::timefmt::parse_duration;
use vault_protocol::{ErrorCode, Request, Response, validate_name};

use super::Ctx;
use super::records::{duplicate, maybe_secret, read_values, warn_about_literals};
use crate::args::RotateArgs;
use crate::error::{CliResult, unexpected, usage};
use crate::input;
use crate::output::{Color, Table, tsv_row};

pub fn run(ctx: &mut Ctx, args: RotateArgs) -> CliResult<()> {
    validate_name(&args.name).map_err(usage)?;
    let grace = match &args.grace {
        Some(g) => Some(parse_duration(g).map_err(usage)?.as_secs()),
        None => None,
    };
    let wait = parse_duration(&args.wait).map_err(usage)?;
    let fields = input::parse_fields(&args.fields)?;
    for f in &fields {
        if matches!(&f.source, input::Source::Literal(v) if v.is_empty()) {
            return Err(usage(format!("the new value of '{}' is empty", f.name)));
        }
    }
    input::check_prompts(&fields, io::stdin().is_terminal())?;
    warn_about_literals(ctx, &fields, maybe_secret);
    let values = read_values(fields, &maybe_secret)?;
    let build = || Request::Rotate {
        name: args.name.clone(),
        fields: duplicate(&values),
        grace_secs: grace,
        verify_ms: Some(wait.as_millis() as u64),
        finish: args.finish,
    };
    let report = match ctx.call_unlocked(&build)? {
        Response::Rotated(r) => r,
        _ => return Err(unexpected("rotate")),
    };
    print(ctx, &report)?;
    if !report.complete {
        ctx.exit_code = ErrorCode::Failed.exit_code();
    }
    Ok(())
}

fn print(ctx: &mut Ctx, r: &RotateReport) -> CliResult<()> {
    if ctx.out.json {
        return ctx.out.json(r);
    }
    if ctx.out.stdout_tty {
        let mut table = Table::new(&["STEP", "RESULT", "DETAIL"]);
        for s in &r.steps {
            let color = match s.outcome {
                StepOutcome::Ok => None,
                StepOutcome::Failed => Some(Color::Red),
                StepOutcome::Skipped | StepOutcome::Pending => Some(Color::Yellow),
            };
            table.row(vec![
                (s.step.clone(), None),
                (s.outcome.as_str().to_owned(), color),
                (s.detail.clone(), None),
            ]);
        }
        let color = ctx.out.color;
        ctx.out.text(&table.render(color));
    } else {
        for s in &r.steps {
            ctx.out
                .text(&tsv_row(&[&s.step, s.outcome.as_str(), &s.detail]));
        }
    }
    if !r.running.is_empty() {
        ctx.out.warn(&format!(
            "{} process{} started with 'vault exec' still hold{} the old value and cannot be \
             changed from outside: restart {}",
            r.running.len(),
            if r.running.len() == 1 { "" } else { "es" },
            if r.running.len() == 1 { "s" } else { "" },
            if r.running.len() == 1 { "it" } else { "them" },
        ));
        for p in &r.running {
            ctx.out.warn(&format!("  pid {}: {}", p.pid, p.cmdline));
        }
    }
    let live = r
        .live_key
        .as_deref()
        .map(|k| format!(": {k} is live"))
        .unwrap_or_default();
    if r.complete {
        ctx.out.info(&format!(
            "rotated {} (revision {}){live}",
            r.name, r.revision
        ));
    } else {
        ctx.out
            .warn(&format!("the rotation of {} did not finish{live}", r.name));
    }
    match &r.next {
        Some(next) if r.complete => ctx.out.info(next),
        Some(next) => ctx.out.warn(next),
        None => {}
    }
    Ok(())
}
