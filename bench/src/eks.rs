//! EKS token figures (issue 21): `vault eks token` from temporary keys
//! the vault holds (a session: nothing to refresh), in the daemon and as
//! a whole process (target: under 10 ms), and `vault aws-process` for
//! the same keys against `vault get` (target: within ±20%); `aws eks
//! get-token` with the same keys in its environment, in the same run, as
//! a ratio. None of them reaches the network: a token is a presigned URL.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vault_protocol::message::Request;

use super::{
    BenchResult, BenchVault, Binaries, GETS, Row, Samples, calls, ms, time_runs, write_private,
};

/// Rounds of (get, token) in-daemon calls.
const CALL_ROUNDS: usize = 100;
/// Rounds of whole-process runs (get, token, aws-process).
const ROUNDS: usize = 20;
/// `aws eks get-token` runs (each ~0.5 s).
const AWS_RUNS: usize = 10;
/// The session's made-up keys (they are never sent anywhere).
const KEY_ID: &str = "ASIAVAULTBENCHEKS001";
const SECRET: &str = "vault-bench/eks+secret/0123456789abcdefghij";
const SESSION: &str = "vault-bench-session-token-0123456789abcdefghijklmnopqrstuvwxyz";

pub fn bench(
    bins: &Binaries,
    tmp: &Path,
    runs: usize,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> BenchResult<()> {
    let base = tmp.join("eks");
    fs::create_dir(&base).map_err(|e| e.to_string())?;
    let vault = BenchVault::new(bins, &base)?;
    let secret = base.join("secret");
    write_private(&secret, SECRET)?;
    let session = base.join("session");
    write_private(&session, SESSION)?;
    let result = vault
        .init()
        .and_then(|()| vault.add_bench_token(&base))
        .and_then(|()| {
            vault
                .cli_ok(
                    &[
                        "add",
                        "eks-dev",
                        "--type",
                        "aws",
                        &format!("access_key_id={KEY_ID}"),
                        &format!("secret_access_key=@{}", secret.display()),
                        &format!("session_token=@{}", session.display()),
                        "region=eu-west-1",
                    ],
                    None,
                )
                .map(drop)
        })
        .and_then(|()| measure(&vault, runs, rows, notes));
    vault.shutdown();
    result
}

fn measure(
    vault: &BenchVault,
    runs: usize,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> BenchResult<()> {
    let first = vault.cli_ok(&["eks", "token", "eks-dev", "--cluster", "bench"], None)?;
    if !first.contains("\"token\":\"k8s-aws-v1.") {
        return Err("vault eks token printed no token".into());
    }
    let get = || Request::Get {
        name: "bench-token".to_owned(),
    };
    let token = || Request::EksToken {
        name: "eks-dev".to_owned(),
        cluster: "bench".to_owned(),
        region: None,
    };
    let (mut in_get, mut in_token) = (Vec::new(), Vec::new());
    for _ in 0..CALL_ROUNDS {
        calls(vault, get, GETS / CALL_ROUNDS, &mut in_get)?;
        calls(vault, token, GETS / CALL_ROUNDS, &mut in_token)?;
    }
    let vault_run = |args: &'static [&'static str]| {
        move || {
            let mut c = vault.command(&vault.bins.vault);
            c.args(args);
            c
        }
    };
    let (mut proc_get, mut proc_token, mut proc_process) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let n = (2 * runs / ROUNDS).max(1);
        proc_get.extend(time_runs(n, vault_run(&["get", "bench-token", "--field", "token"]))?.0);
        proc_token.extend(
            time_runs(
                n,
                vault_run(&["eks", "token", "eks-dev", "--cluster", "bench"]),
            )?
            .0,
        );
        proc_process.extend(time_runs(n, vault_run(&["aws-process", "eks-dev"]))?.0);
    }
    let (in_get, in_token) = (Samples::new(in_get), Samples::new(in_token));
    let (proc_get, proc_token, proc_process) = (
        Samples::new(proc_get),
        Samples::new(proc_token),
        Samples::new(proc_process),
    );
    let ratio = |s: &Samples, base: &Samples| {
        s.median().as_secs_f64() / base.median().as_secs_f64().max(1e-9)
    };
    let line = |s: &Samples, base: &Samples, of: &str| {
        format!(
            "{} / {} ({:.2}× {of})",
            ms(s.median()),
            ms(s.pct(90.0)),
            ratio(s, base)
        )
    };
    rows.push(Row {
        what: "in-daemon eks token p50 / p90".to_owned(),
        records: 1,
        result: line(&in_token, &in_get, "get"),
        target: "for comparison".to_owned(),
        ok: None,
    });
    rows.push(Row {
        what: "`vault eks token` whole process p50 / p90".to_owned(),
        records: 1,
        result: line(&proc_token, &proc_get, "get"),
        target: "< 10 ms".to_owned(),
        ok: Some(proc_token.median() < Duration::from_millis(10)),
    });
    let r = ratio(&proc_process, &proc_get);
    rows.push(Row {
        what: "`vault aws-process` (session keys) whole process p50 / p90".to_owned(),
        records: 1,
        result: line(&proc_process, &proc_get, "get"),
        target: "0.80–1.20× get".to_owned(),
        ok: Some((0.8..=1.2).contains(&r)),
    });
    aws_cli(&proc_token, rows, notes)
}

/// `aws eks get-token` with the same keys in its environment (it signs
/// locally too), when the aws CLI is installed.
fn aws_cli(vault_token: &Samples, rows: &mut Vec<Row>, notes: &mut Vec<String>) -> BenchResult<()> {
    let aws = || {
        let mut c = Command::new("aws");
        c.args([
            "eks",
            "get-token",
            "--cluster-name",
            "bench",
            "--region",
            "eu-west-1",
        ])
        .env("AWS_ACCESS_KEY_ID", KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_SESSION_TOKEN", SESSION)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        c
    };
    match aws().status() {
        Ok(s) if s.success() => {}
        Ok(s) => {
            notes.push(format!("aws eks get-token row skipped: it failed ({s})"));
            return Ok(());
        }
        Err(_) => {
            notes.push("aws eks get-token row skipped: the aws CLI is not installed".to_owned());
            return Ok(());
        }
    }
    let samples = time_runs(AWS_RUNS, aws)?;
    let ratio = samples.median().as_secs_f64() / vault_token.median().as_secs_f64().max(1e-9);
    rows.push(Row {
        what: "`aws eks get-token` p50 / p90".to_owned(),
        records: 1,
        result: format!(
            "{} / {} ({ratio:.0}× vault eks token)",
            ms(samples.median()),
            ms(samples.pct(90.0))
        ),
        target: "for comparison".to_owned(),
        ok: None,
    });
    Ok(())
}
