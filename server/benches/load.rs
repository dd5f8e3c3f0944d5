//! Load benchmark: the real `vault-server` binary on loopback, driven by a
//! reqwest client in this process. For 1, 8 and 64 concurrent devices it
//! measures pushes/s (one record per push, each device appending to its own
//! log) and pulls/s (each pull fetches the newest 50 records of one device),
//! with p50/p99 latency, on SQLite and, when `VAULT_TEST_POSTGRES_URL` is
//! set, on PostgreSQL. Prints a markdown table.
//!
//! Bounded: each phase runs `VAULT_BENCH_SECS` seconds (default 3) or until
//! `VAULT_BENCH_MAX_OPS` operations (default 30000), whichever comes first.
//! Then 256 devices on one PostgreSQL, through one replica and through two
//! (issue 23's budget); `-- --only-replicas` runs just those rows.
//! Run: `cargo bench -p vault-server --bench load`.

#![allow(clippy::unwrap_used)]

// The integration tests' helpers: here for `fresh_postgres_schema`.
#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_vault-server");
const PASSWORD: &str = "bench-password-bench-password-bench-password";
const KEY: &str = "age1benchkey";
const RECORD_BYTES: usize = 512;
const PULL_RECORDS: u64 = 50;

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(database: &str) -> Server {
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--database", database])
        .args(["--default-admin", "bench"])
        .env("VAULT_SERVER_ADMIN_PASSWORD", PASSWORD)
        .env("VAULT_SERVER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("no address announced: {line:?}"))
        .to_owned();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = out.read_to_end(&mut sink);
    });
    Server {
        child,
        base: format!("http://{addr}/api/v1"),
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Default)]
struct Phase {
    ops: u64,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// Runs `op(device, n)` from `devices` concurrent tasks until the time or
/// count budget is spent; `op` returns false on failure (which aborts).
async fn phase<F, Fut>(devices: usize, op: F) -> Phase
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let secs = env_or("VAULT_BENCH_SECS", 3);
    let max_ops = env_or("VAULT_BENCH_MAX_OPS", 30_000);
    let op = Arc::new(op);
    let issued = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for d in 0..devices {
        let op = Arc::clone(&op);
        let issued = Arc::clone(&issued);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < max_ops {
                n += 1;
                let t = Instant::now();
                assert!(op(d, n).await, "operation failed");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort();
    Phase {
        ops: all.len() as u64,
        secs,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
    }
}

async fn post(http: &reqwest::Client, url: String, jwt: &str, body: &Value) -> Option<Value> {
    let resp = http
        .post(url)
        .bearer_auth(jwt)
        .json(body)
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        eprintln!(
            "bench: {} {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
        return None;
    }
    resp.json().await.ok()
}

struct Row {
    backend: &'static str,
    devices: usize,
    push: Phase,
    pull: Phase,
}

/// A client keeping up to `pool` idle connections, and the bench admin's
/// JWT from the server at `base`.
async fn setup(base: &str, pool: usize) -> (reqwest::Client, Arc<str>) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(pool)
        .build()
        .unwrap();
    let resp: Value = http
        .post(format!("{base}/auth/token"))
        .bearer_auth(PASSWORD)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwt: Arc<str> = resp["jwt"].as_str().unwrap().into();
    (http, jwt)
}

/// Creates the bench vault `id` on the server at `base`.
async fn create_vault(http: &reqwest::Client, base: &str, jwt: &str, id: &str) {
    let created = post(
        http,
        format!("{base}/vaults"),
        jwt,
        &json!({"id": id, "key_id": KEY, "identity": "aWRlbnRpdHk="}),
    )
    .await;
    assert!(created.is_some(), "cannot create the bench vault");
}

async fn run_backend(backend: &'static str, database: &str, rows: &mut Vec<Row>) {
    let srv = start(database);
    let (http, jwt) = setup(&srv.base, 128).await;
    let data = base64::engine::general_purpose::STANDARD.encode(vec![0x5a; RECORD_BYTES]);
    for devices in [1usize, 8, 64] {
        let vault = format!("bench-{devices}");
        create_vault(&http, &srv.base, &jwt, &vault).await;
        let push_url: Arc<str> = format!("{}/vaults/{vault}/push", srv.base).into();
        let pull_url: Arc<str> = format!("{}/vaults/{vault}/pull", srv.base).into();

        let (h, j, u, d) = (
            http.clone(),
            Arc::clone(&jwt),
            Arc::clone(&push_url),
            data.clone(),
        );
        let push = phase(devices, move |dev, n| {
            let (h, j, u) = (h.clone(), Arc::clone(&j), Arc::clone(&u));
            let body = json!({"device_id": format!("dev{dev}"),
                              "records": [{"index": n, "key_id": KEY, "data": d}]});
            async move { post(&h, u.to_string(), &j, &body).await.is_some() }
        })
        .await;

        // Pulls: each device fetches the newest PULL_RECORDS of its own log.
        let heads: Value = http
            .get(format!("{}/vaults/{vault}/heads", srv.base))
            .bearer_auth(&*jwt)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let heads: Arc<Vec<u64>> = Arc::new(
            (0..devices)
                .map(|d| heads["heads"][format!("dev{d}")].as_u64().unwrap_or(0))
                .collect(),
        );
        let (h, j, u) = (http.clone(), Arc::clone(&jwt), Arc::clone(&pull_url));
        let pull = phase(devices, move |dev, _n| {
            let (h, j, u) = (h.clone(), Arc::clone(&j), Arc::clone(&u));
            let head = heads[dev];
            let mut since = serde_json::Map::new();
            for (other, &oh) in heads.iter().enumerate() {
                let from = if other == dev {
                    head.saturating_sub(PULL_RECORDS)
                } else {
                    oh
                };
                since.insert(format!("dev{other}"), json!(from));
            }
            let body = json!({"since": since});
            async move {
                match post(&h, u.to_string(), &j, &body).await {
                    Some(page) => page["records"]
                        .as_array()
                        .is_some_and(|r| r.len() as u64 == head.min(PULL_RECORDS)),
                    None => false,
                }
            }
        })
        .await;
        rows.push(Row {
            backend,
            devices,
            push,
            pull,
        });
    }
}

/// Pushes/s with `REPLICA_DEVICES` devices spread over 1 and then 2
/// replicas on one PostgreSQL schema (device d talks to replica d mod N).
async fn run_replicas(base: &str, rows: &mut Vec<(usize, Phase)>) {
    let data = base64::engine::general_purpose::STANDARD.encode(vec![0x5a; RECORD_BYTES]);
    for replicas in [1usize, 2] {
        let url = common::fresh_postgres_schema(base, "bench").await;
        let servers: Vec<Server> = (0..replicas).map(|_| start(&url)).collect();
        let (http, jwt) = setup(&servers[0].base, REPLICA_DEVICES).await;
        create_vault(&http, &servers[0].base, &jwt, "fleet").await;
        let urls: Arc<Vec<String>> = Arc::new(
            servers
                .iter()
                .map(|s| format!("{}/vaults/fleet/push", s.base))
                .collect(),
        );
        let data = data.clone();
        let push = phase(REPLICA_DEVICES, move |dev, n| {
            let (h, j) = (http.clone(), Arc::clone(&jwt));
            let url = urls[dev % urls.len()].clone();
            let body = json!({"device_id": format!("dev{dev}"),
                              "records": [{"index": n, "key_id": KEY, "data": data}]});
            async move { post(&h, url, &j, &body).await.is_some() }
        })
        .await;
        rows.push((replicas, push));
    }
}

/// Devices in the replica rows (issue 23's budget).
const REPLICA_DEVICES: usize = 256;

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not: then
    // only check that the harness builds.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // `--only-replicas`: just the 256-device replica rows.
    let only_replicas = std::env::args().any(|a| a == "--only-replicas");
    rt.block_on(async {
        let mut rows = Vec::new();
        let mut replica_rows = Vec::new();
        let dir = tempfile::tempdir().unwrap();
        let sqlite = format!("sqlite:{}", dir.path().join("bench.db").display());
        if !only_replicas {
            run_backend("SQLite", &sqlite, &mut rows).await;
        }
        match std::env::var("VAULT_TEST_POSTGRES_URL") {
            Ok(base) => {
                if !only_replicas {
                    let url = common::fresh_postgres_schema(&base, "bench").await;
                    run_backend("PostgreSQL", &url, &mut rows).await;
                }
                run_replicas(&base, &mut replica_rows).await;
            }
            Err(_) => eprintln!(
                "SKIP PostgreSQL rows: set VAULT_TEST_POSTGRES_URL=postgres://… (bash .ci/run starts one)"
            ),
        }
        println!(
            "\n{} cores; records of {RECORD_BYTES} bytes, one per push; each pull returns {PULL_RECORDS} records\n",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!("| backend | devices | pushes/s | push p50 ms | push p99 ms | pulls/s | pull p50 ms | pull p99 ms |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for r in rows {
            println!(
                "| {} | {} | {:.0} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} |",
                r.backend,
                r.devices,
                r.push.ops as f64 / r.push.secs,
                r.push.p50_ms,
                r.push.p99_ms,
                r.pull.ops as f64 / r.pull.secs,
                r.pull.p50_ms,
                r.pull.p99_ms,
            );
        }
        if !replica_rows.is_empty() {
            println!(
                "\n{REPLICA_DEVICES} devices on one PostgreSQL, spread over the replicas; one record per push\n"
            );
            println!("| replicas | pushes/s | push p50 ms | push p99 ms | vs 1 replica |");
            println!("|---:|---:|---:|---:|---:|");
            let one = replica_rows[0].1.ops as f64 / replica_rows[0].1.secs;
            for (n, p) in &replica_rows {
                let rate = p.ops as f64 / p.secs;
                println!(
                    "| {n} | {rate:.0} | {:.1} | {:.1} | {:.2}× |",
                    p.p50_ms,
                    p.p99_ms,
                    rate / one
                );
            }
        }
    });
}
