//! `vault check` (docs/lifecycle.md): the daemon asks each credential's
//! service; this prints what it found and exits 1 when a check failed.

use vault_protocol::message::{CheckOutcome, CheckResult};
use vault_protocol::timefmt::parse_duration;
use vault_protocol::{ErrorCode, Request, Response, validate_name};

use super::Ctx;
use crate::args::CheckArgs;
use crate::error::{CliResult, unexpected, usage};
use crate::output::{Color, Table, tsv_row};

pub fn run(ctx: &mut Ctx, args: &CheckArgs) -> CliResult<()> {
    for name in &args.names {
        validate_name(name).map_err(usage)?;
    }
    let timeout = parse_duration(&args.timeout).map_err(usage)?;
    if timeout.is_zero() {
        return Err(usage("--timeout must be more than 0s"));
    }
    let results = match ctx.call_unlocked(&|| Request::Check {
        names: args.names.clone(),
        timeout_ms: Some(timeout.as_millis() as u64),
    })? {
        Response::Checked { results } => results,
        _ => return Err(unexpected("check")),
    };
    let count = |o| results.iter().filter(|r| r.outcome == o).count();
    let failed = count(CheckOutcome::Failed);
    if ctx.out.json {
        ctx.out.json(&results)?;
    } else if ctx.out.stdout_tty {
        let mut table = Table::new(&["NAME", "TYPE", "RESULT", "DETAIL"]);
        for r in &results {
            let color = match r.outcome {
                CheckOutcome::Ok => None,
                CheckOutcome::Failed => Some(Color::Red),
                CheckOutcome::Skipped => Some(Color::Yellow),
            };
            table.row(vec![
                (r.name.clone(), None),
                (r.kind.as_str().to_owned(), None),
                (outcome_name(r).to_owned(), color),
                (r.detail.clone(), None),
            ]);
        }
        let color = ctx.out.color;
        ctx.out.text(&table.render(color));
    } else {
        for r in &results {
            ctx.out.text(&tsv_row(&[
                &r.name,
                r.kind.as_str(),
                outcome_name(r),
                &r.detail,
            ]));
        }
    }
    ctx.out.info(&format!(
        "{} ok, {failed} failed, {} skipped",
        count(CheckOutcome::Ok),
        count(CheckOutcome::Skipped)
    ));
    if failed > 0 {
        ctx.exit_code = ErrorCode::Failed.exit_code();
    }
    Ok(())
}

fn outcome_name(r: &CheckResult) -> &'static str {
    match r.outcome {
        CheckOutcome::Ok => "ok",
        CheckOutcome::Failed => "failed",
        CheckOutcome::Skipped => "skipped",
    }
}
