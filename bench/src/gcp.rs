//! GCP access token figures (issue 22): a cached `vault gcp token` against
//! `vault get` of a token record (target: within ±20%), in the daemon and
//! as whole processes, interleaved; and, when `gcloud` is installed,
//! `gcloud auth print-access-token` with its own cached token, in the same
//! run, as a ratio. Both mint from the same service-account key at a local
//! token endpoint, so neither reaches Google.

use std::fs;
use std::path::Path;
use std::process::Command;

use vault_protocol::message::Request;

use super::{
    BenchResult, BenchVault, Binaries, GETS, Row, Samples, calls, ms, time_runs, write_private,
};

/// Rounds of (get, token) whole-process runs.
const ROUNDS: usize = 20;
/// Rounds of (get, token) in-daemon calls.
const CALL_ROUNDS: usize = 100;
/// `vault exec --server` children asking the metadata endpoint once each.
const METADATA_CHILDREN: usize = 30;
/// `gcloud auth print-access-token` runs (each ~1 s).
const GCLOUD_RUNS: usize = 5;

/// A token endpoint that grants every assertion (the tests' endpoint
/// checks them; here only the time matters). Stops with the process.
fn token_endpoint() -> BenchResult<String> {
    let server = tiny_http::Server::http("127.0.0.1:0").map_err(|e| e.to_string())?;
    let url = format!(
        "http://{}/token",
        server
            .server_addr()
            .to_ip()
            .ok_or("the token endpoint has no address")?
    );
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let body =
                r#"{"access_token":"ya29.vault-bench","expires_in":3599,"token_type":"Bearer"}"#;
            let header = tiny_http::Header::from_bytes("Content-Type", "application/json")
                .unwrap_or_else(|()| unreachable!("a valid header"));
            let _ = req.respond(tiny_http::Response::from_string(body).with_header(header));
        }
    });
    Ok(url)
}

/// A service-account key file (an RSA key from ssh-keygen) whose
/// `token_uri` is `url`.
fn key_file(dir: &Path, url: &str) -> BenchResult<std::path::PathBuf> {
    let key = dir.join("sa-key");
    let out = Command::new("ssh-keygen")
        .args([
            "-q", "-t", "rsa", "-b", "2048", "-m", "PKCS8", "-N", "", "-f",
        ])
        .arg(&key)
        .output()
        .map_err(|e| format!("ssh-keygen: {e} (the GCP rows need openssh-client)"))?;
    if !out.status.success() {
        return Err(format!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let private_key = fs::read_to_string(&key).map_err(|e| e.to_string())?;
    let json = serde_json::json!({
        "type": "service_account",
        "project_id": "vault-bench",
        "private_key_id": "0123",
        "private_key": private_key,
        "client_email": "bench@vault-bench.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": url,
    });
    let file = dir.join("sa-key.json");
    write_private(&file, &json.to_string())?;
    Ok(file)
}

pub fn bench(
    bins: &Binaries,
    tmp: &Path,
    runs: usize,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> BenchResult<()> {
    let base = tmp.join("gcp");
    fs::create_dir(&base).map_err(|e| e.to_string())?;
    let url = token_endpoint()?;
    let key = key_file(&base, &url)?;
    let vault =
        BenchVault::with_config(bins, &base, &format!("[gcp]\ntoken_uris = [\"{url}\"]\n"))?;
    let result = vault
        .init()
        .and_then(|()| vault.add_bench_token(&base))
        .and_then(|()| {
            vault
                .cli_ok(
                    &[
                        "add",
                        "sa",
                        "--type",
                        "gcp",
                        &format!("json=@{}", key.display()),
                    ],
                    None,
                )
                .map(drop)
        })
        .and_then(|()| measure(&vault, &base, &key, runs, rows, notes));
    vault.shutdown();
    result
}

fn measure(
    vault: &BenchVault,
    base: &Path,
    key: &Path,
    runs: usize,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> BenchResult<()> {
    // The first call mints; every one measured is served from the cache.
    let first = vault.cli_ok(&["gcp", "token", "sa"], None)?;
    if first.trim() != "ya29.vault-bench" {
        return Err(format!("vault gcp token printed {first:?}"));
    }
    let get = || Request::Get {
        name: "bench-token".to_owned(),
    };
    let token = || Request::GcpToken {
        name: "sa".to_owned(),
        scopes: vec![],
    };
    let (mut in_get, mut in_token) = (Vec::new(), Vec::new());
    for _ in 0..CALL_ROUNDS {
        calls(vault, get, GETS / CALL_ROUNDS, &mut in_get)?;
        calls(vault, token, GETS / CALL_ROUNDS, &mut in_token)?;
    }
    let (mut proc_get, mut proc_token) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let n = (2 * runs / ROUNDS).max(1);
        proc_get.extend(
            time_runs(n, || {
                let mut c = vault.command(&vault.bins.vault);
                c.args(["get", "bench-token", "--field", "token"]);
                c
            })?
            .0,
        );
        proc_token.extend(
            time_runs(n, || {
                let mut c = vault.command(&vault.bins.vault);
                c.args(["gcp", "token", "sa"]);
                c
            })?
            .0,
        );
    }
    let (in_get, in_token) = (Samples::new(in_get), Samples::new(in_token));
    let (proc_get, proc_token) = (Samples::new(proc_get), Samples::new(proc_token));
    let row = |rows: &mut Vec<Row>, what: &str, base: &Samples, s: &Samples, judged: bool| {
        let ratio = s.median().as_secs_f64() / base.median().as_secs_f64().max(1e-9);
        rows.push(Row {
            what: what.to_owned(),
            records: 1,
            result: format!("{} / {} ({ratio:.2}× get)", ms(s.median()), ms(s.pct(90.0))),
            // "Costs the same as get": not slower by more than 20% (a
            // cached token skips the record's decryption, so it is often
            // faster than get, which is not a miss).
            target: if judged {
                "≤ 1.20× get".to_owned()
            } else {
                "the base".to_owned()
            },
            ok: judged.then_some(ratio <= 1.2),
        });
    };
    row(rows, "in-daemon get p50 / p90", &in_get, &in_get, false);
    row(
        rows,
        "in-daemon cached gcp token p50 / p90",
        &in_get,
        &in_token,
        true,
    );
    row(
        rows,
        "`vault get` whole process p50 / p90",
        &proc_get,
        &proc_get,
        false,
    );
    row(
        rows,
        "`vault gcp token` whole process, cached, p50 / p90",
        &proc_get,
        &proc_token,
        true,
    );

    issuer(vault, runs, &proc_get, rows)?;
    metadata(vault, rows, notes)?;
    gcloud(base, key, &proc_token, rows, notes)
}

/// What an issuer's `external_account` file costs the client library per
/// refresh on our side: the whole `vault gcp subject-token` process (the
/// daemon signs ES256 each time; the STS exchange is Google's, not here).
fn issuer(vault: &BenchVault, runs: usize, get: &Samples, rows: &mut Vec<Row>) -> BenchResult<()> {
    vault.cli_ok(
        &[
            "gcp",
            "issuer",
            "wif",
            "--audience",
            "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/b/providers/b",
            "--issuer",
            "https://vault.invalid/issuer/bench",
        ],
        None,
    )?;
    let s = time_runs(runs.max(1), || {
        let mut c = vault.command(&vault.bins.vault);
        c.args(["gcp", "subject-token", "wif"]);
        c
    })?;
    let ratio = s.median().as_secs_f64() / get.median().as_secs_f64().max(1e-9);
    rows.push(Row {
        what: "`vault gcp subject-token` whole process (an issuer's executable) p50 / p90"
            .to_owned(),
        records: 1,
        result: format!("{} / {} ({ratio:.2}× get)", ms(s.median()), ms(s.pct(90.0))),
        target: "informational".to_owned(),
        ok: None,
    });
    Ok(())
}

/// `vault exec --server` children: each asks its metadata endpoint for a
/// token once, with curl, which reports the time from its start to the
/// answer's end (connect, the uid check, the daemon's cached token).
fn metadata(vault: &BenchVault, rows: &mut Vec<Row>, notes: &mut Vec<String>) -> BenchResult<()> {
    if super::which("curl").is_none() {
        notes.push("metadata-endpoint row skipped: curl is not installed".to_owned());
        return Ok(());
    }
    let probe = "curl -s -o /dev/null -w '%{http_code} %{time_total}\\n' \
                 -H 'Metadata-Flavor: Google' \
                 \"http://$GCE_METADATA_HOST/computeMetadata/v1/instance/service-accounts/default/token\"";
    let mut first = Vec::new();
    for _ in 0..METADATA_CHILDREN {
        let out = vault.cli_ok(
            &["exec", "--server", "-c", "sa", "--", "sh", "-c", probe],
            None,
        )?;
        let (code, secs) = out
            .trim()
            .split_once(' ')
            .ok_or_else(|| format!("curl printed {out:?}"))?;
        if code != "200" {
            return Err(format!("the metadata endpoint answered {code}"));
        }
        let secs: f64 = secs.parse().map_err(|_| format!("curl printed {out:?}"))?;
        first.push(std::time::Duration::from_secs_f64(secs));
    }
    let first = Samples::new(first);
    rows.push(Row {
        what: "`exec --server` child's first metadata token p50 / p90".to_owned(),
        records: 1,
        result: format!("{} / {}", ms(first.median()), ms(first.pct(90.0))),
        target: "< 10 ms".to_owned(),
        ok: Some(first.pct(90.0) < std::time::Duration::from_millis(10)),
    });
    Ok(())
}

/// `gcloud auth print-access-token` with its token cached, against the
/// same endpoint (gcloud's own config dir, the key activated first).
fn gcloud(
    base: &Path,
    key: &Path,
    vault_token: &Samples,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> BenchResult<()> {
    let config = base.join("gcloud");
    let gcloud = |args: &[&str]| {
        let mut c = Command::new("gcloud");
        c.args(args)
            .env("CLOUDSDK_CONFIG", &config)
            .env("CLOUDSDK_CORE_DISABLE_PROMPTS", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    };
    let key = key.display().to_string();
    match gcloud(&["auth", "activate-service-account", "--key-file", &key]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            notes.push(format!(
                "gcloud row skipped: activate-service-account failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            return Ok(());
        }
        Err(_) => {
            notes.push("gcloud row skipped: gcloud is not installed".to_owned());
            return Ok(());
        }
    }
    // The first print mints; the ones measured read gcloud's cache.
    let out = gcloud(&["auth", "print-access-token"])
        .output()
        .map_err(|e| e.to_string())?;
    if String::from_utf8_lossy(&out.stdout).trim() != "ya29.vault-bench" {
        return Err(format!(
            "gcloud auth print-access-token gave {:?}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let samples =
        Samples::new(time_runs(GCLOUD_RUNS, || gcloud(&["auth", "print-access-token"]))?.0);
    let ratio = samples.median().as_secs_f64() / vault_token.median().as_secs_f64().max(1e-9);
    rows.push(Row {
        what: "`gcloud auth print-access-token`, cached, p50 / p90".to_owned(),
        records: 1,
        result: format!(
            "{} / {} ({ratio:.0}× vault gcp token)",
            ms(samples.median()),
            ms(samples.pct(90.0))
        ),
        target: "for comparison".to_owned(),
        ok: None,
    });
    Ok(())
}
