//! PostgreSQL restarted under load (issue 23). A binary of its own: it stops
//! and starts the shared test cluster, which no other test may be using
//! meanwhile (cargo runs test binaries one after another).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

const KEY: &str = "age1restartkey";
const DEVICES: usize = 4;
const RECORDS: u64 = 80;

fn pg_ctl(bin: &str, data: &str, args: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(format!("{bin}/pg_ctl"))
        .args(["-D", data, "-w", "-t", "60"])
        .args(args)
        .output()
        .expect("run pg_ctl");
    assert!(
        out.status.success(),
        "pg_ctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Devices push while the database is stopped (fast shutdown) and started
/// again: meanwhile pushes fail fast with 503 and Retry-After (the server
/// stays up, no request hangs), then succeed again on fresh connections,
/// and every device's log ends whole: each record once, with its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_restart_under_load_fails_fast_then_loses_nothing() {
    let (Ok(base), Ok(data), Ok(bin)) = (
        std::env::var("VAULT_TEST_POSTGRES_URL"),
        std::env::var("VAULT_TEST_POSTGRES_DATA"),
        std::env::var("VAULT_TEST_POSTGRES_BIN"),
    ) else {
        println!(
            "SKIP a_postgres_restart…: set VAULT_TEST_POSTGRES_URL, VAULT_TEST_POSTGRES_DATA and \
             VAULT_TEST_POSTGRES_BIN to a cluster this test may stop and start (bash .ci/run \
             does)"
        );
        return;
    };
    let db = fresh_postgres_schema(&base, "restart").await;
    let srv = server()
        .database(&db)
        .admin()
        .arg("--request-timeout")
        .arg("10s")
        .start();
    let api = srv.client();
    let admin = api.jwt(ADMIN_PASSWORD).await;
    create_vault_with(&api, &admin, "v1", KEY).await;

    let done = Arc::new(AtomicU64::new(0));
    let devices: Vec<_> = (0..DEVICES)
        .map(|d| {
            tokio::spawn(
                DevicePush {
                    apis: vec![api.clone()],
                    jwt: admin.clone(),
                    vault: "v1",
                    device: format!("dev{d}"),
                    key: KEY,
                    records: RECORDS,
                    batch: 1,
                    timeout: Duration::from_secs(30),
                    acknowledged: Arc::clone(&done),
                }
                .push_all(),
            )
        })
        .collect();
    let quarter = Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::Relaxed) < (DEVICES as u64 * RECORDS) / 4 {
        assert!(
            Instant::now() < quarter && !devices.iter().any(|d| d.is_finished()),
            "the pushes stopped before a quarter was in"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = format!("{data}/../restart.log");
    pg_ctl(&bin, &data, &["-m", "fast", "stop"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = done.load(Ordering::Relaxed);
    pg_ctl(&bin, &data, &["-l", &log, "start"]);

    let mut unavailable = 0;
    for d in devices {
        let seen = d.await.unwrap();
        unavailable += seen.unavailable;
        assert!(
            seen.slowest_503 < Duration::from_secs(3),
            "a 503 took {:?}: not failing fast",
            seen.slowest_503
        );
    }
    assert!(unavailable > 0, "no push met the stopped database");
    assert!(
        done.load(Ordering::Relaxed) > during,
        "nothing succeeded after the restart"
    );

    let heads = whole_logs(&api, &admin, "v1").await;
    let want: BTreeMap<String, u64> = (0..DEVICES).map(|d| (format!("dev{d}"), RECORDS)).collect();
    assert_eq!(heads, want, "every device's log, whole");
}
