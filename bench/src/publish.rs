//! Publishing figures (issue 10), against the OSMO test double
//! (`tests/src/bin/osmo-double.rs`) on loopback: [`QUEUED`] credentials
//! published while the platform is down, then the time from its start until
//! the last one is on it (the offline queue draining in order); and one
//! `Publish` request while it is up (check, queue, push, answer).

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vault_protocol::credential::CredentialType;
use vault_protocol::message::{PublishState, Request, Response};

use super::{
    BenchResult, BenchVault, Binaries, Listening, Row, Samples, ms, one_field, write_private,
};

/// Credentials queued while the platform is down.
const QUEUED: usize = 200;
/// `Publish` requests timed while it is up.
const REQUESTS: usize = 50;
const PAT: &str = "vault-bench-osmo-access-token-0123456789abc";

fn start_double(bins: &Binaries, addr: &str) -> BenchResult<Listening> {
    let mut cmd = Command::new(&bins.osmo_double);
    cmd.args(["--listen", addr, "--token", PAT]);
    Ok(Listening::start(cmd, "osmo-double")?.0)
}

/// How many credentials the double holds.
fn held(addr: &str) -> usize {
    let r = vault_e2e::osmo::http(addr, "GET", "/_double/state", &[], "");
    serde_json::from_str::<serde_json::Value>(&r.text)
        .ok()
        .and_then(|v| v["credentials"].as_object().map(|m| m.len()))
        .unwrap_or(0)
}

fn publish(conn: &mut super::Conn, name: &str) -> BenchResult<PublishState> {
    match conn.call(Request::Publish {
        name: name.to_owned(),
        remote: "osmo".to_owned(),
        remote_name: None,
    })? {
        Response::Publications { publications } => publications
            .first()
            .map(|p| p.state)
            .ok_or_else(|| "Publish answered nothing".to_owned()),
        other => Err(format!("Publish answered {other:?}")),
    }
}

/// Adds the publishing rows.
pub(super) fn bench(bins: &Binaries, tmp: &Path, rows: &mut Vec<Row>) -> BenchResult<()> {
    eprintln!("vault-bench: publishing {QUEUED} credentials to the OSMO test double");
    let dir = tmp.join("publish");
    std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
    let vault = BenchVault::new(bins, &dir)?;
    let config = vault_protocol::paths::VaultPaths::under_home(&vault.home).config();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(config.parent().ok_or("config dir")?)
        .map_err(|e| e.to_string())?;
    write_private(&config, "[publish]\nretry = \"1s\"\n")?;
    vault.init()?;
    let mut conn = vault.connect()?;
    let total = QUEUED + REQUESTS;
    let records = (0..total)
        .map(|i| {
            let name = format!("pub-{i:04}");
            one_field(
                name,
                CredentialType::Generic,
                "API_KEY",
                &format!("value-{i}"),
            )
        })
        .collect();
    conn.call(Request::AddMany { records })?;

    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .to_string();
    let token = dir.join("osmo-token");
    write_private(&token, PAT)?;
    let url = format!("http://{addr}");
    let token = token.display().to_string();
    let args = vault_e2e::osmo::remote_add_args(&url, &token);
    vault.cli_ok(&args.iter().map(String::as_str).collect::<Vec<_>>(), None)?;
    for i in 0..QUEUED {
        publish(&mut conn, &format!("pub-{i:04}"))?;
    }
    let t = Instant::now();
    let _double = start_double(bins, &addr)?;
    let mut first = None;
    loop {
        let n = held(&addr);
        if n > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if n >= QUEUED {
            break;
        }
        if t.elapsed() > Duration::from_secs(120) {
            return Err(format!("only {n} of {QUEUED} arrived in 120 s"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let back = t.elapsed();
    let drain = first.map_or(back, |f| f.elapsed());
    rows.push(Row {
        what: "queued publishes: the platform back until the last is on it (incl. the retry \
               wait, publish.retry = 1 s)"
            .to_owned(),
        records: QUEUED,
        result: ms(back),
        target: String::new(),
        ok: None,
    });
    rows.push(Row {
        what: "queued publishes: first to last on the platform (one pass, in order)".to_owned(),
        records: QUEUED,
        result: format!(
            "{} ({:.0} per s)",
            ms(drain),
            QUEUED as f64 / drain.as_secs_f64().max(1e-6)
        ),
        target: String::new(),
        ok: None,
    });

    let mut times = Vec::with_capacity(REQUESTS);
    for i in QUEUED..total {
        let t = Instant::now();
        let state = publish(&mut conn, &format!("pub-{i:04}"))?;
        times.push(t.elapsed());
        if state != PublishState::Published {
            return Err(format!("pub-{i:04} is {state:?}, not published"));
        }
    }
    let times = Samples::new(times);
    rows.push(Row {
        what: "one `vault publish` while the platform is up (check, push, answer; p50 / p90)"
            .to_owned(),
        records: total,
        result: format!("{} / {}", ms(times.median()), ms(times.pct(90.0))),
        target: "< 50 ms".to_owned(),
        ok: Some(times.median() < Duration::from_millis(50)),
    });
    vault.shutdown();
    Ok(())
}
