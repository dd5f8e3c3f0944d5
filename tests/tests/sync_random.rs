//! Randomized convergence (docs/sync.md): three devices make random changes
//! (add, set, rm, rename over a small pool of names, so they collide) with
//! sync points and server outages at random; at the end every device holds
//! the same records with the same values, the same conflicts, and every
//! revision anyone wrote — the very same ciphertext — in its history.
//!
//! `VAULT_SYNC_SEED` replays a run (the seed is printed);
//! `VAULT_SYNC_OPS` sets the operations per device (default 500). Runs on
//! SQLite, and on PostgreSQL when `VAULT_TEST_POSTGRES_URL` is set (`bash
//! .ci/run` starts one) and `psql` is installed.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use vault_e2e::{PASSPHRASE, RemoteServer, VaultHome};

/// xorshift64*: small, seedable, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a>(&mut self, set: &'a BTreeSet<String>) -> Option<&'a String> {
        if set.is_empty() {
            return None;
        }
        set.iter().nth(self.below(set.len() as u64) as usize)
    }
}

/// A device whose daemon syncs only when told (so a seed replays).
fn device() -> VaultHome {
    let vh = VaultHome::new();
    vh.write_config("[sync]\nauto = false\n");
    vh
}

fn names(vh: &VaultHome) -> BTreeSet<String> {
    vh.vault(["list", "--json"]).names().into_iter().collect()
}

/// Every logged revision: (device, index) → ciphertext.
fn logged(vh: &VaultHome) -> BTreeMap<(String, i64), Vec<u8>> {
    let db = rusqlite::Connection::open_with_flags(
        vh.paths().db(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = db
        .prepare("SELECT device, log_index, body FROM revisions WHERE log_index IS NOT NULL")
        .unwrap();
    stmt.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn run(database: Option<String>) {
    let seed: u64 = std::env::var("VAULT_SYNC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let ops: usize = std::env::var("VAULT_SYNC_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    println!(
        "seed {seed} ({} ops per device, {}): replay with VAULT_SYNC_SEED={seed}",
        ops,
        if database.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    );
    let mut rng = Rng(seed);
    let mut server = match database {
        Some(db) => RemoteServer::start_on(db, tempfile::tempdir().unwrap()),
        None => RemoteServer::start(),
    };

    let devices = [device(), device(), device()];
    devices[0].init().ok();
    devices[0].login(&server).ok();
    devices[0].vault(["sync"]).ok();
    let vault_id = devices[0].vault(["status", "--json"]).json()["vault_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for d in &devices[1..] {
        d.login(&server).ok();
        d.vault_in(
            ["init", "--join", &vault_id, "--passphrase-stdin"],
            format!("{PASSPHRASE}\n").as_bytes(),
        )
        .ok();
    }

    let pool: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    let mut live: Vec<BTreeSet<String>> = vec![BTreeSet::new(); 3];
    let mut writes = 0usize;
    let mut outage_left = 0;
    for step in 0..ops * 3 {
        let d = step % 3;
        let vh = &devices[d];
        if outage_left > 0 {
            outage_left -= 1;
            if outage_left == 0 {
                server.resume();
            }
        } else if rng.chance(2) {
            server.stop();
            outage_left = 10 + rng.below(30);
        }
        if rng.chance(12) {
            let r = vh.vault(["sync"]);
            r.no_panic();
            assert!(
                r.code == 0 || (outage_left > 0 && r.code == 6),
                "seed {seed}: {r}"
            );
            live[d] = names(vh);
            continue;
        }
        let name = pool[rng.below(pool.len() as u64) as usize].clone();
        let value = format!("v{step}-{}", rng.next());
        let r = match rng.below(10) {
            0..=3 if !live[d].contains(&name) => vh.vault_in(
                ["add", &name, "--type", "token", "token=-"],
                value.as_bytes(),
            ),
            0..=5 => match rng.pick(&live[d]).cloned() {
                Some(n) => vh.vault_in(["set", &n, "token=-"], value.as_bytes()),
                None => continue,
            },
            6..=7 => match rng.pick(&live[d]).cloned() {
                Some(n) => vh.vault(["rm", &n]),
                None => continue,
            },
            _ => match (rng.pick(&live[d]).cloned(), live[d].contains(&name)) {
                (Some(from), false) => vh.vault(["rename", &from, &name]),
                _ => continue,
            },
        };
        r.no_panic();
        assert_eq!(r.code, 0, "seed {seed}: {r}");
        writes += 1;
        live[d] = names(vh);
    }

    if outage_left > 0 {
        server.resume();
    }
    for _ in 0..2 {
        for vh in &devices {
            vh.vault(["sync"]).ok().no_panic();
        }
    }

    let first = names(&devices[0]);
    let values = |vh: &VaultHome| -> BTreeMap<String, String> {
        first
            .iter()
            .map(|n| {
                let r = vh.vault(["get", n, "--field", "token"]);
                r.ok();
                (n.clone(), r.stdout)
            })
            .collect()
    };
    let conflicts = |vh: &VaultHome| -> Vec<(String, String)> {
        let mut c: Vec<(String, String)> = vh
            .vault(["conflicts", "--json"])
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].to_string(), c["kind"].to_string()))
            .collect();
        c.sort();
        c
    };
    let (v0, c0, l0) = (
        values(&devices[0]),
        conflicts(&devices[0]),
        logged(&devices[0]),
    );
    assert_eq!(
        l0.len(),
        writes,
        "seed {seed}: every write is one logged revision"
    );
    for vh in &devices[1..] {
        assert_eq!(names(vh), first, "seed {seed}: the same names everywhere");
        assert_eq!(values(vh), v0, "seed {seed}: the same values everywhere");
        assert_eq!(
            conflicts(vh),
            c0,
            "seed {seed}: the same conflicts everywhere"
        );
        assert!(
            logged(vh) == l0,
            "seed {seed}: every revision, byte for byte, on every device"
        );
    }
    println!(
        "seed {seed}: {writes} writes, {} live records, {} open conflicts, all 3 devices agree",
        first.len(),
        c0.len()
    );
}

#[test]
fn three_devices_converge_on_sqlite() {
    run(None);
}

#[test]
fn three_devices_converge_on_postgres() {
    let Ok(base) = std::env::var("VAULT_TEST_POSTGRES_URL") else {
        println!(
            "SKIP postgres convergence: set VAULT_TEST_POSTGRES_URL=postgres://… (bash .ci/run \
             starts one)"
        );
        return;
    };
    let schema = format!("vt_sync_{}_{}", std::process::id(), vault_e2e::unique());
    let made = Command::new("psql")
        .arg(&base)
        .args([
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            &format!("CREATE SCHEMA {schema}"),
        ])
        .output();
    match made {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "psql could not create a schema: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "psql is missing in CI ({e}): .ci/run installs postgresql-client"
            );
            println!("SKIP postgres convergence: psql not found ({e})");
            return;
        }
    }
    let sep = if base.contains('?') { '&' } else { '?' };
    run(Some(format!("{base}{sep}options=-csearch_path%3D{schema}")));
}
