//! Audit log figures (issue 24): the same vault with `[audit] enabled =
//! false` and with the log on (the default), in the same run, measured
//! alternately so drift hits both alike. Targets: with the log on,
//! in-daemon get p99 within 10% of the log off, and whole-process
//! `vault get` within 5%.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use vault_protocol::message::{Request, Response};

use super::{BenchResult, BenchVault, Binaries, GETS, Row, Samples, ms, time_runs};

/// Rounds of (off, on) whole-process runs, `4 × runs / ROUNDS` each (four
/// times the main bench's runs, for the same reason as [`AUDIT_GETS`]).
const ROUNDS: usize = 20;
/// In-daemon gets from each vault: four times the main bench's, so the
/// p99 (the 200th slowest) is not one scheduling hiccup of this machine.
const AUDIT_GETS: usize = 4 * GETS;
/// Rounds of (off, on) in-daemon gets, `AUDIT_GETS / GET_ROUNDS` each.
const GET_ROUNDS: usize = 200;

fn vault(bins: &Binaries, tmp: &Path, dir: &str, audit: bool) -> BenchResult<BenchVault> {
    let base = tmp.join(dir);
    fs::create_dir(&base).map_err(|e| e.to_string())?;
    let vault = BenchVault::with_config(bins, &base, &format!("[audit]\nenabled = {audit}\n"))?;
    vault.init()?;
    vault.add_bench_token(&base)?;
    Ok(vault)
}

fn gets(vault: &BenchVault, n: usize, out: &mut Vec<Duration>) -> BenchResult<()> {
    let mut conn = vault.connect()?;
    for _ in 0..n {
        let t = Instant::now();
        match conn.call(Request::Get {
            name: "bench-token".to_owned(),
        })? {
            Response::Record(_) => {}
            other => return Err(format!("Get answered {other:?}")),
        }
        out.push(t.elapsed());
    }
    Ok(())
}

pub fn bench(bins: &Binaries, tmp: &Path, runs: usize, rows: &mut Vec<Row>) -> BenchResult<()> {
    let off = vault(bins, tmp, "audit-off", false)?;
    let on = vault(bins, tmp, "audit-on", true)?;
    let result = measure(&off, &on, runs, rows);
    // The log holds what was measured: one entry per hand-out.
    let entries = on.cli_ok(&["--json", "audit"], None).map(|out| {
        serde_json::from_str::<serde_json::Value>(&out)
            .ok()
            .and_then(|v| v["entries"].as_array().map(Vec::len))
            .unwrap_or(0)
    });
    off.shutdown();
    on.shutdown();
    result?;
    let entries = entries?;
    let want = 4 * runs + AUDIT_GETS;
    if entries < want {
        return Err(format!(
            "the audit log holds {entries} entries after {want} hand-outs"
        ));
    }
    Ok(())
}

fn measure(off: &BenchVault, on: &BenchVault, runs: usize, rows: &mut Vec<Row>) -> BenchResult<()> {
    let (mut get_off, mut get_on) = (Vec::new(), Vec::new());
    let (mut proc_off, mut proc_on) = (Vec::new(), Vec::new());
    // Round trips alternate in small slices: a burst of noise on this
    // machine lands on both sides alike.
    for _ in 0..GET_ROUNDS {
        gets(off, AUDIT_GETS / GET_ROUNDS, &mut get_off)?;
        gets(on, AUDIT_GETS / GET_ROUNDS, &mut get_on)?;
    }
    for _ in 0..ROUNDS {
        for (vault, procs_out) in [(off, &mut proc_off), (on, &mut proc_on)] {
            let s = time_runs((4 * runs / ROUNDS).max(1), || {
                let mut c = vault.command(&vault.bins.vault);
                c.args(["get", "bench-token", "--field", "token"]);
                c
            })?;
            procs_out.extend(s.0);
        }
    }
    let (get_off, get_on) = (Samples::new(get_off), Samples::new(get_on));
    let (proc_off, proc_on) = (Samples::new(proc_off), Samples::new(proc_on));
    let p99 = |s: &Samples| s.pct(99.0);
    pair(
        rows,
        "in-daemon get p50 / p99",
        &get_off,
        &get_on,
        p99,
        1.10,
    );
    let p50 = |s: &Samples| s.median();
    pair(
        rows,
        "`vault get` whole process p50 / p90",
        &proc_off,
        &proc_on,
        p50,
        1.05,
    );
    Ok(())
}

/// Two rows, the log off (the base) and on, with the ratio of `judged`
/// (on over off) against `limit`.
fn pair(
    rows: &mut Vec<Row>,
    what: &str,
    off: &Samples,
    on: &Samples,
    judged: impl Fn(&Samples) -> Duration,
    limit: f64,
) {
    let tail = if what.contains("p99") { 99.0 } else { 90.0 };
    let figures = |s: &Samples| format!("{} / {}", ms(s.median()), ms(s.pct(tail)));
    let ratio = judged(on).as_secs_f64() / judged(off).as_secs_f64().max(1e-9);
    rows.push(Row {
        what: format!("{what}, audit log off"),
        records: 1,
        result: figures(off),
        target: "the base".to_owned(),
        ok: None,
    });
    rows.push(Row {
        what: format!("{what}, audit log on"),
        records: 1,
        result: format!("{} ({ratio:.2}× off)", figures(on)),
        target: format!("≤ {limit:.2}× off"),
        ok: Some(ratio <= limit),
    });
}
