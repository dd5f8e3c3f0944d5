//! Sync figures (issue 7): a `vault-server` on 127.0.0.1 port 0 with SQLite,
//! device A with [`RECORDS`] records, then device B joining (the first sync
//! of a new device: download the identity, scrypt, pull and apply every
//! record), then one change's round trip (A pushes it, B pulls it, each one
//! `SyncNow` over the socket).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vault_protocol::SecretValue;
use vault_protocol::credential::CredentialType;
use vault_protocol::message::{Request, Response};

use super::{
    BATCH, BenchResult, BenchVault, Binaries, Listening, PASSPHRASE, Row, Samples, ms, one_field,
    write_private,
};

/// Records on the first device.
const RECORDS: usize = 10_000;
/// Round trips timed.
const ROUND_TRIPS: usize = 30;
/// The server's default admin password, used as the access token.
pub(super) const TOKEN: &str = "vault-bench-server-admin-token-0123456789";

pub(super) fn start_server(bins: &Binaries, dir: &Path) -> BenchResult<(Listening, String)> {
    let mut cmd = Command::new(&bins.server);
    cmd.args(["--listen", "127.0.0.1:0", "--default-admin", "admin"])
        .arg("--database")
        .arg(format!("sqlite:{}", dir.join("server.db").display()))
        .env("VAULT_SERVER_ADMIN_PASSWORD", TOKEN)
        .env("VAULT_SERVER_LOG", "warn");
    let (server, addr) = Listening::start(cmd, "vault-server")?;
    Ok((server, format!("http://{addr}")))
}

fn device(bins: &Binaries, tmp: &Path, name: &str) -> BenchResult<BenchVault> {
    let dir = tmp.join(name);
    fs::create_dir(&dir).map_err(|e| e.to_string())?;
    let vault = BenchVault::new(bins, &dir)?;
    // Only the measured syncs run.
    let config = vault_protocol::paths::VaultPaths::under_home(&vault.home).config();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(config.parent().ok_or("config dir")?)
        .map_err(|e| e.to_string())?;
    write_private(&config, "[sync]\nauto = false\n")?;
    Ok(vault)
}

pub(super) fn sync_now(conn: &mut super::Conn) -> BenchResult<(u64, u64)> {
    match conn.call(Request::SyncNow)? {
        Response::Synced(r) if r.refused.is_empty() => Ok((r.pushed, r.pulled)),
        other => Err(format!("SyncNow answered {other:?}")),
    }
}

/// Gives record `name`'s `token` field a new value (the `i`th).
pub(super) fn change(conn: &mut super::Conn, name: &str, i: usize) -> BenchResult<()> {
    conn.call(Request::Set {
        name: name.to_owned(),
        fields: BTreeMap::from([(
            "token".to_owned(),
            SecretValue::from(format!("changed-{i}").as_str()),
        )]),
        unset: vec![],
        description: None,
        tags: None,
        expires_at: None,
    })?;
    Ok(())
}

/// Adds the sync rows.
pub(super) fn bench(bins: &Binaries, tmp: &Path, rows: &mut Vec<Row>) -> BenchResult<()> {
    eprintln!("vault-bench: sync with {RECORDS} records through vault-server on loopback");
    let (_server, url) = start_server(bins, tmp)?;
    let token = tmp.join("server-token");
    write_private(&token, TOKEN)?;
    let token = token.display().to_string();

    let a = device(bins, tmp, "sync-a")?;
    a.init()?;
    let mut conn = a.connect()?;
    for start in (0..RECORDS).step_by(BATCH) {
        let records = (start..(start + BATCH).min(RECORDS))
            .map(|i| {
                let name = format!("sync-{i:06}");
                one_field(
                    name,
                    CredentialType::Token,
                    "token",
                    &format!("sync-value-{i}"),
                )
            })
            .collect();
        conn.call(Request::AddMany { records })?;
    }
    a.cli_ok(&["login", &url, "--token-file", &token], None)?;
    let t = Instant::now();
    let (pushed, _) = sync_now(&mut conn)?;
    let push = t.elapsed();
    if pushed as usize != RECORDS {
        return Err(format!("pushed {pushed} of {RECORDS}"));
    }
    rows.push(Row {
        what: "first push of a vault (one `SyncNow`)".to_owned(),
        records: RECORDS,
        result: ms(push),
        target: String::new(),
        ok: None,
    });
    let vault_id = match conn.call(Request::Status)? {
        Response::Status(s) => s.vault_id.ok_or("no vault id")?,
        other => return Err(format!("Status answered {other:?}")),
    };

    let b = device(bins, tmp, "sync-b")?;
    b.cli_ok(&["login", &url, "--token-file", &token], None)?;
    let t = Instant::now();
    b.cli_ok(
        &["init", "--join", &vault_id, "--passphrase-stdin"],
        Some(&format!("{PASSPHRASE}\n")),
    )?;
    let join = t.elapsed();
    let mut conn_b = b.connect()?;
    let have = super::list_all(&mut conn_b)?;
    if have != RECORDS {
        return Err(format!("the new device holds {have} of {RECORDS} records"));
    }
    rows.push(Row {
        what: "first sync of a new device (`vault init --join`: identity, scrypt, pull, apply)"
            .to_owned(),
        records: RECORDS,
        result: ms(join),
        target: "< 5 s".to_owned(),
        ok: Some(join < Duration::from_secs(5)),
    });

    let mut trips = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS {
        change(&mut conn, "sync-000042", i)?;
        let t = Instant::now();
        let (pushed, _) = sync_now(&mut conn)?;
        let (_, pulled) = sync_now(&mut conn_b)?;
        trips.push(t.elapsed());
        if (pushed, pulled) != (1, 1) {
            return Err(format!("round trip moved {pushed} up and {pulled} down"));
        }
    }
    let trips = Samples::new(trips);
    rows.push(Row {
        what: "one change, A pushes and B pulls (two `SyncNow`, p50 / p90)".to_owned(),
        records: RECORDS,
        result: format!("{} / {}", ms(trips.median()), ms(trips.pct(90.0))),
        target: "< 50 ms".to_owned(),
        ok: Some(trips.median() < Duration::from_millis(50)),
    });
    a.shutdown();
    b.shutdown();
    Ok(())
}
