//! Fault tests of vault-server (issue 23), with the real binary on loopback
//! and bounded loops: a replica killed with SIGKILL in the middle of pushes,
//! and a full disk under SQLite. (A PostgreSQL restart under load is in
//! `pg_restart.rs`, a binary of its own: it restarts the shared cluster.)

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::json;

const KEY: &str = "age1faultkey";
const DEVICES: usize = 6;
/// Records per device, pushed 3 at a time.
const RECORDS: u64 = 60;
const BATCH: u64 = 3;

/// Two replicas on one database; devices push through the first, which is
/// killed with SIGKILL part-way. The devices go on through the second, and
/// it holds every device's log whole: each record once, in place, with its
/// own bytes. On one SQLite file always, on PostgreSQL when
/// `VAULT_TEST_POSTGRES_URL` is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_replica_mid_push_loses_and_duplicates_nothing() {
    let (_dir, sqlite) = temp_sqlite();
    let mut databases = vec![sqlite];
    match std::env::var("VAULT_TEST_POSTGRES_URL") {
        Ok(base) => databases.push(fresh_postgres_schema(&base, "kill").await),
        Err(_) => println!(
            "SKIP killing_a_replica… on postgres: set VAULT_TEST_POSTGRES_URL=postgres://… \
             (bash .ci/run starts one)"
        ),
    }
    for db in databases {
        let mut first = server().database(&db).admin().start();
        let second = server().database(&db).start();
        let apis = vec![first.client(), second.client()];
        let admin = apis[0].jwt(ADMIN_PASSWORD).await;
        create_vault_with(&apis[0], &admin, "v1", KEY).await;
        let batches = Arc::new(AtomicU64::new(0));
        let devices: Vec<_> = (0..DEVICES)
            .map(|d| {
                tokio::spawn(
                    DevicePush {
                        apis: apis.clone(),
                        jwt: admin.clone(),
                        vault: "v1",
                        device: format!("dev{d}"),
                        key: KEY,
                        records: RECORDS,
                        batch: BATCH,
                        timeout: Duration::from_secs(10),
                        acknowledged: Arc::clone(&batches),
                    }
                    .push_all(),
                )
            })
            .collect();
        // Mid-way: a third of the batches are in.
        let third = (DEVICES as u64 * RECORDS / BATCH) / 3;
        for _ in 0..600 {
            if batches.load(Ordering::Relaxed) >= third {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        first.stop();
        let mut failovers = 0;
        for d in devices {
            let seen = d.await.unwrap();
            assert_eq!(seen.unknown, 0, "{db}: a push answered 500");
            failovers += seen.failovers;
        }
        assert!(failovers >= 1, "{db}: no device noticed the kill");
        let heads = whole_logs(&apis[1], &admin, "v1").await;
        let want: BTreeMap<String, u64> =
            (0..DEVICES).map(|d| (format!("dev{d}"), RECORDS)).collect();
        assert_eq!(heads, want, "{db}: every device's log, whole");
    }
}

/// A tmpfs mounted at a new directory; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir(at).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "vault-fault",
            ])
            .arg(at)
            .output()
            .expect("run mount");
        if !out.status.success() {
            println!(
                "SKIP a_full_disk…: cannot mount a tmpfs ({}): needs root with CAP_SYS_ADMIN \
                 (bash .ci/run runs it as root)",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// The SQLite database on a small tmpfs that fills up under pushes of large
/// records: the push that meets the full disk is answered 503 with
/// Retry-After and a message that says the storage is full and nothing was
/// stored; once space is freed pushes go on; and the database is intact,
/// with every acknowledged record.
#[tokio::test]
async fn a_full_disk_under_sqlite_says_so_and_keeps_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path().join("disk");
    let Some(_tmpfs) = Tmpfs::mount(&at, "3m") else {
        return;
    };
    // Room to free later.
    std::fs::write(at.join("ballast"), vec![0u8; 512 << 10]).unwrap();
    let path = at.join("server.db");
    let db = format!("sqlite:{}", path.display());
    let srv = server().database(&db).admin().start();
    let api = srv.client();
    let admin = api.jwt(ADMIN_PASSWORD).await;
    create_vault_with(&api, &admin, "v1", KEY).await;
    let record = |i: u64| {
        // Incompressible and distinct per record.
        let bytes: Vec<u8> = (0..96 * 1024u64)
            .map(|j| ((j * 2_654_435_761 + i * 97) >> 7) as u8)
            .collect();
        json!({"device_id": "big", "records": [{"index": i, "key_id": KEY, "data": b64(&bytes)}]})
    };
    let mut stored = 0;
    let full = loop {
        assert!(stored < 100, "3 MiB never filled");
        let (s, b) = api
            .post("/vaults/v1/push", &admin, record(stored + 1))
            .await;
        if s == StatusCode::OK {
            stored += 1;
            continue;
        }
        break (s, b);
    };
    assert_eq!(full.0, StatusCode::SERVICE_UNAVAILABLE, "{}", full.1);
    let message = full.1["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("storage is full") && message.contains("nothing was stored"),
        "{message}"
    );
    // The log is read on another thread: give it a moment.
    for _ in 0..50 {
        if srv.log().contains("disk is full") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        srv.log().contains("disk is full"),
        "the log names the cause:\n{}",
        srv.log()
    );
    assert!(stored >= 3, "the disk filled too early to tell: {stored}");

    std::fs::remove_file(at.join("ballast")).unwrap();
    let (s, b) = api
        .post("/vaults/v1/push", &admin, record(stored + 1))
        .await;
    assert_eq!(s, StatusCode::OK, "after freeing space: {b}");
    stored += 1;
    drop(srv);

    let conn = rusqlite::Connection::open(&path).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let (count, head): (i64, i64) = conn
        .query_row(
            "SELECT COUNT(*), (SELECT head FROM logs WHERE device_id = 'big') FROM records",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let stored = stored as i64;
    assert_eq!(
        (count, head),
        (stored, stored),
        "every acknowledged record, once"
    );
}
