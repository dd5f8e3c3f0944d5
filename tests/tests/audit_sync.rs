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

#[test]
fn hand_outs_reach_the_other_devices_sealed_only_when_turned_on() {
    let mut server = RemoteServer::start();
    let a = VaultHome::new();
    a.write_config(SHARE);
    a.init().ok();
    let token = secret("audit-shared");
    a.vault_in(
        ["add", "gh", "--type", "token", "token=-"],
        token.as_bytes(),
    )
    .ok();
    a.login(&server).ok();
    sync(&a).ok();
    let vault_id = a.vault(["status", "--json"]).json()["vault_id"]
        .as_str()
        .unwrap()
        .to_owned();
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
    let a = VaultHome::new();
    a.write_config(SHARE);
    a.init().ok();
    a.vault_in(
        ["add", "gh", "--type", "token", "token=-"],
        secret("audit-attacked").as_bytes(),
    )
    .ok();
    a.login(&server).ok();
    sync(&a).ok();
    let vault_id = a.vault(["status", "--json"]).json()["vault_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = device(&server, &vault_id, SHARE);
    // Then three segments of A's log, one sync each.
    for _ in 0..3 {
        a.vault(["get", "gh", "--field", "token"]).ok();
        sync(&a).ok();
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
