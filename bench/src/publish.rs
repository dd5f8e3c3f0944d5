//! Publishing figures (issue 10), against the OSMO test double
//! (`tests/src/bin/osmo-double.rs`) on loopback: [`QUEUED`] credentials
//! published while the platform is down, then the time from its start until
//! the last one is on it (the offline queue draining in order); and one
//! `Publish` request while it is up (check, queue, push, answer). And one
//! `Publish` against the real OSMO service (`../shared/osmo/run.sh`, issue
//! 19), as a user of its own, when the environment names it.

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

/// `Publish` requests timed against the real service, per type.
const REAL_REQUESTS: usize = 30;

/// One `vault publish` against the real OSMO service behind its gateway:
/// REGISTRY (the platform's list is read before the create, to never
/// replace a credential vault did not publish) and GENERIC. Skipped, with a
/// note, without `VAULT_TEST_OSMO_URL` and `VAULT_TEST_OSMO_ADMIN_TOKEN_FILE`.
pub(super) fn bench_real(
    bins: &Binaries,
    tmp: &Path,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> BenchResult<()> {
    let Some(user) =
        std::panic::catch_unwind(|| vault_e2e::osmo_real::OsmoUser::new("vault-bench", 30))
            .map_err(|_| "the real OSMO service did not make a user".to_owned())?
    else {
        notes.push(
            "one `vault publish` against the real OSMO service: SKIPPED (bash \
             ../shared/osmo/run.sh, then VAULT_TEST_OSMO_URL and \
             VAULT_TEST_OSMO_ADMIN_TOKEN_FILE)"
                .to_owned(),
        );
        return Ok(());
    };
    eprintln!(
        "vault-bench: publishing to the real OSMO service at {}",
        user.url
    );
    let dir = tmp.join("publish-real");
    std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
    let vault = BenchVault::new(bins, &dir)?;
    vault.init()?;
    let mut conn = vault.connect()?;
    let mut records = Vec::new();
    for i in 0..REAL_REQUESTS {
        records.push(one_field(
            format!("gen-{i:03}"),
            CredentialType::Generic,
            "API_KEY",
            &format!("value-{i}"),
        ));
        let mut reg = one_field(
            format!("reg-{i:03}"),
            CredentialType::Registry,
            "auth",
            &format!("auth-{i}"),
        );
        reg.fields.insert(
            "registry".to_owned(),
            vault_protocol::SecretValue::from(format!("ghcr.io/bench-{i}").as_str()),
        );
        reg.fields.insert(
            "username".to_owned(),
            vault_protocol::SecretValue::from("bench"),
        );
        records.push(reg);
    }
    conn.call(Request::AddMany { records })?;
    let token = dir.join("osmo-token");
    write_private(&token, &user.token)?;
    let token = token.display().to_string();
    let args = vault_e2e::osmo::remote_add_args(&user.url, &token);
    vault.cli_ok(&args.iter().map(String::as_str).collect::<Vec<_>>(), None)?;
    for (kind, prefix) in [("REGISTRY", "reg"), ("GENERIC", "gen")] {
        let mut times = Vec::with_capacity(REAL_REQUESTS);
        for i in 0..REAL_REQUESTS {
            let name = format!("{prefix}-{i:03}");
            let t = Instant::now();
            let state = publish(&mut conn, &name)?;
            times.push(t.elapsed());
            if state != PublishState::Published {
                return Err(format!(
                    "{name} is {state:?} on the real service, not published"
                ));
            }
        }
        let times = Samples::new(times);
        rows.push(Row {
            what: format!("one `vault publish` ({kind}) against the real OSMO service (p50 / p90)"),
            records: REAL_REQUESTS,
            result: format!("{} / {}", ms(times.median()), ms(times.pct(90.0))),
            target: "< 50 ms".to_owned(),
            ok: Some(times.median() < Duration::from_millis(50)),
        });
    }
    vault.shutdown();
    drop(user);
    Ok(())
}
