//! The audit log shared between devices (`[audit] sync`, issue 24,
//! docs/sync.md "Audit log") through the real binaries and a real
//! `vault-server`: off by default; on, each device's hand-outs reach the
//! others sealed (the server holds no plaintext of them), and a server
//! that changes, moves or withholds a segment is caught and reported.

#![allow(clippy::unwrap_used)]

use serde_json::Value;
use vault_e2e::{PASSPHRASE, RemoteServer, VaultHome, secret};

const SHARE: &str = "[sync]\nauto = false\n[audit]\nsync = true\n";

fn sync(vh: &VaultHome) -> vault_e2e::Run {
    let run = vh.vault(["sync"]);
    run.no_panic();
    run
}

/// A device of `vault_id` with `config`, joined through `server`.
fn device(server: &RemoteServer, vault_id: &str, config: &str) -> VaultHome {
    let vh = VaultHome::new();
    vh.write_config(config);
    vh.login(server).ok();
    vh.vault_in(
        ["init", "--join", vault_id, "--passphrase-stdin"],
        format!("{PASSPHRASE}\n").as_bytes(),
    )
    .ok()
    .no_panic();
    vh
}

fn device_id(vh: &VaultHome) -> String {
    let doc = vh.vault(["sync", "verify", "--json"]).json();
    doc["logs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["this_device"] == true)
        .and_then(|l| l["device"].as_str())
        .unwrap()
        .to_owned()
}

/// (device, name, op) of each entry.
fn who(entries: &[Value]) -> Vec<(String, String, String)> {
    entries
        .iter()
        .map(|e| {
            (
                e["device"].as_str().unwrap_or("").to_owned(),
                e["name"].as_str().unwrap_or("").to_owned(),
                e["op"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn server_segments(server: &RemoteServer) -> Vec<(String, i64, Vec<u8>)> {
    let db = rusqlite::Connection::open(server.sqlite_path().unwrap()).unwrap();
    let mut stmt = db
        .prepare("SELECT device_id, idx, data FROM audit_segments ORDER BY device_id, idx")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Device A (sharing) with token `gh` = `token`, synced to `server`; its
/// vault id.
fn first_device(server: &RemoteServer, token: &str) -> (VaultHome, String) {
    let a = VaultHome::new();
    a.write_config(SHARE);
    a.init().ok();
    a.vault_in(
        ["add", "gh", "--type", "token", "token=-"],
        token.as_bytes(),
    )
    .ok();
    a.login(server).ok();
    sync(&a).ok();
    let vault_id = a.vault(["status", "--json"]).json()["vault_id"]
        .as_str()
        .unwrap()
        .to_owned();
    (a, vault_id)
}

/// A hand-out on `a`, shared by a sync: one more segment.
fn one_segment(a: &VaultHome) {
    a.vault(["get", "gh", "--field", "token"]).ok();
    sync(a).ok();
}

#[test]
fn hand_outs_reach_the_other_devices_sealed_only_when_turned_on() {
    let mut server = RemoteServer::start();
    let token = secret("audit-shared");
    let (a, vault_id) = first_device(&server, &token);
    let b = device(&server, &vault_id, SHARE);
    // A device that did not turn it on shares nothing.
    let c = device(&server, &vault_id, "[sync]\nauto = false\n");
    let (a_id, b_id, c_id) = (device_id(&a), device_id(&b), device_id(&c));

    a.vault(["get", "gh", "--field", "token"]).ok();
    b.vault(["exec", "-c", "gh", "--", "true"]).ok();
    c.vault(["get", "gh", "--field", "token"]).ok();
    for vh in [&a, &b, &c, &a] {
        sync(vh).ok();
    }

    // Each sharing device sees the other's entries, named and placed.
    let (entries, problems, code) = b.audit(&["--all-devices"]);
    assert_eq!((problems.as_slice(), code), (&[][..], 0), "{entries:?}");
    let seen = who(&entries);
    assert!(
        seen.contains(&(a_id.clone(), "gh".into(), "get".into())),
        "{seen:?}"
    );
    assert!(
        seen.contains(&(b_id.clone(), "gh".into(), "resolve".into())),
        "{seen:?}"
    );
    let from_a = entries
        .iter()
        .find(|e| e["device"] == a_id.as_str())
        .unwrap();
    assert!(
        from_a["client"]["cmdline"]
            .as_str()
            .unwrap()
            .contains("get gh --field token"),
        "{from_a}"
    );
    let (entries, _, _) = a.audit(&["--all-devices"]);
    assert!(
        who(&entries).contains(&(b_id.clone(), "gh".into(), "resolve".into())),
        "{entries:?}"
    );
    // --device: that device's entries alone.
    let (entries, _, code) = a.audit(&["--device", &b_id]);
    assert_eq!(code, 0);
    assert!(!entries.is_empty());
    assert!(entries.iter().all(|e| e["device"] == b_id.as_str()));
    // Without the setting: nothing of C's on the server, nothing of the
    // others' kept on C.
    let segments = server_segments(&server);
    let devices: Vec<&str> = segments.iter().map(|s| s.0.as_str()).collect();
    assert!(devices.contains(&a_id.as_str()) && devices.contains(&b_id.as_str()));
    assert!(!devices.contains(&c_id.as_str()), "{devices:?}");
    let (entries, _, _) = c.audit(&["--all-devices"]);
    assert!(
        entries.iter().all(|e| e["device"] == c_id.as_str()),
        "{entries:?}"
    );
    // The server holds them sealed: no name, command line or value.
    for (_, _, data) in &segments {
        let text = String::from_utf8_lossy(data);
        for plain in ["--field token", "resolve", token.as_str()] {
            assert!(!text.contains(plain), "{plain} in a stored segment");
        }
    }
    server.stop();
}

#[test]
fn a_segment_changed_moved_or_withheld_by_the_server_is_caught() {
    let mut server = RemoteServer::start();
    let (a, vault_id) = first_device(&server, &secret("audit-attacked"));
    let b = device(&server, &vault_id, SHARE);
    // Then three segments of A's log, one sync each.
    for _ in 0..3 {
        one_segment(&a);
    }
    let a_id = device_id(&a);
    let segments = server_segments(&server);
    assert_eq!(segments.len(), 3, "{segments:?}");

    // The server gone bad: segment 1 changed (one byte), segment 2
    // replaced by a copy of segment 3 (a replay in another place).
    server.stop();
    {
        let db = rusqlite::Connection::open(server.sqlite_path().unwrap()).unwrap();
        let mut one = segments[0].2.clone();
        let last = one.len() - 1;
        one[last] ^= 1;
        db.execute("UPDATE audit_segments SET data = ?1 WHERE idx = 1", [&one])
            .unwrap();
        db.execute(
            "UPDATE audit_segments SET data = ?1 WHERE idx = 2",
            [&segments[2].2],
        )
        .unwrap();
    }
    server.resume();

    let run = sync(&b);
    assert_ne!(run.code, 0, "{run}");
    run.stderr_has(&format!("audit segment 1 of device {a_id} does not open"))
        .stderr_has(&format!("audit segment 2 of device {a_id} does not open"));
    let status = b.vault(["sync", "status", "--json"]).json();
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("does not open"),
        "{status}"
    );
    // What did arrive is shown, what did not is named, and the exit is 1.
    let (entries, problems, code) = b.audit(&["--device", &a_id]);
    assert_eq!(code, 1, "{problems:?}");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["seq"], 3);
    assert!(
        problems.iter().any(|p| p.contains(&format!(
            "audit segments 1..=2 of device {a_id} never arrived"
        ))),
        "{problems:?}"
    );
    // Nothing refused was kept; the refused ones are asked for again at
    // the next sync (and refused again), and the gap stays reported.
    let again = sync(&b);
    assert_ne!(again.code, 0, "{again}");
    again.stderr_has(&format!("audit segment 1 of device {a_id} does not open"));
    let (entries, problems, code) = b.audit(&["--all-devices"]);
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["device"] == a_id.as_str())
            .count(),
        1
    );
    assert_eq!(code, 1, "{problems:?}");

    // The server rolls A's audit log back to segment 1: A does not seal
    // other entries under numbers it already used, and says so; its
    // records still sync.
    server.stop();
    {
        let db = rusqlite::Connection::open(server.sqlite_path().unwrap()).unwrap();
        db.execute("DELETE FROM audit_segments WHERE idx > 1", [])
            .unwrap();
        db.execute("UPDATE audit_logs SET head = 1", []).unwrap();
    }
    server.resume();
    a.vault(["get", "gh", "--field", "token"]).ok();
    let run = sync(&a);
    run.ok()
        .stderr_has("holds this device's audit segments only through 1, but took them through 3");
    let numbers: Vec<i64> = server_segments(&server).iter().map(|s| s.1).collect();
    assert_eq!(numbers, [1]);
    server.stop();
}

/// The sequence numbers of `device`'s entries `vh` shows, and its problems.
fn seqs_of(vh: &VaultHome, device: &str) -> (Vec<u64>, Vec<String>, i32) {
    let (entries, problems, code) = vh.audit(&["--device", device]);
    let seqs = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    (seqs, problems, code)
}

fn kept_segments(vh: &VaultHome) -> i64 {
    let db = rusqlite::Connection::open(vh.paths().db()).unwrap();
    db.query_row("SELECT COUNT(*) FROM audit_remote", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn old_segments_go_here_and_on_the_server_and_a_device_can_take_back_its_own() {
    let mut server = RemoteServer::start();
    let (a, vault_id) = first_device(&server, &secret("audit-kept"));
    let b = device(&server, &vault_id, SHARE);
    let a_id = device_id(&a);
    // Segments 1..=3 of A (entries 1..=3), kept on B.
    for _ in 0..3 {
        one_segment(&a);
    }
    sync(&b).ok();
    assert_eq!(seqs_of(&b, &a_id), (vec![1, 2, 3], vec![], 0));

    // [audit] keep on B: segments 1 and 2 dated older than it go, 3 still
    // checks whole against the last entry dropped, and the next sync does
    // not fetch them again.
    b.stop_daemons();
    {
        let db = rusqlite::Connection::open(b.paths().db()).unwrap();
        db.execute("UPDATE audit_remote SET last_at = 1000 WHERE idx <= 2", [])
            .unwrap();
    }
    b.unlock().ok();
    assert_eq!(seqs_of(&b, &a_id), (vec![3], vec![], 0));
    assert_eq!(kept_segments(&b), 1);
    sync(&b).ok();
    assert_eq!(kept_segments(&b), 1);
    assert_eq!(seqs_of(&b, &a_id), (vec![3], vec![], 0));

    // The server's --audit-keep drops what it received long ago: a device
    // that fetches later is told, and sees the rest with no problem.
    let c = device(&server, &vault_id, "[sync]\nauto = false\n");
    one_segment(&a);
    server.stop();
    {
        let db = rusqlite::Connection::open(server.sqlite_path().unwrap()).unwrap();
        db.execute(
            "UPDATE audit_segments SET received_at = 1000 WHERE idx <= 3",
            [],
        )
        .unwrap();
    }
    server.set_args(&["--audit-keep", "1h"]);
    server.resume();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while server_segments(&server).len() > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the server pruned nothing"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // C joined before, without sharing; it turns sharing on now.
    c.write_config(SHARE);
    c.stop_daemons();
    c.unlock().ok();
    let run = sync(&c);
    run.ok().stderr_has(&format!(
        "the server no longer holds audit segments 1..=3 of device {a_id}"
    ));
    assert_eq!(seqs_of(&c, &a_id), (vec![4], vec![], 0));
    sync(&b).ok();
    assert_eq!(seqs_of(&b, &a_id), (vec![3, 4], vec![], 0));

    // A takes back what it shared: refused while sharing is on, then done;
    // B keeps the copies it fetched, and a sync after is clean everywhere.
    let refused = a.vault(["sync", "unshare-audit"]);
    assert_ne!(refused.code, 0, "{refused}");
    refused.stderr_has("[audit] sync is on");
    a.write_config("[sync]\nauto = false\n");
    a.stop_daemons();
    a.unlock().ok();
    let run = a.vault(["sync", "unshare-audit", "--json"]);
    let done = run.ok().json();
    assert_eq!(
        (done["removed"].as_u64(), done["through"].as_u64()),
        (Some(1), Some(4)),
        "{done}"
    );
    assert!(server_segments(&server).is_empty());
    sync(&b).ok();
    assert_eq!(seqs_of(&b, &a_id), (vec![3, 4], vec![], 0));
    // A hand-out while sharing is off is never shared. Shared again
    // later: numbered after what was removed, never over it.
    a.vault(["get", "gh", "--field", "token"]).ok();
    a.write_config(SHARE);
    a.stop_daemons();
    a.unlock().ok();
    one_segment(&a);
    let numbers: Vec<i64> = server_segments(&server).iter().map(|s| s.1).collect();
    assert_eq!(numbers, [5]);
    sync(&b).ok();
    let (seqs, problems, code) = seqs_of(&b, &a_id);
    assert_eq!((problems.as_slice(), code), (&[][..], 0), "{seqs:?}");
    assert_eq!(seqs, [3, 4, 6]);
    server.stop();
}
