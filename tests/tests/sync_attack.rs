//! A malicious server, or anyone holding a sync token (issue 18). The real
//! `vault-server` on 127.0.0.1 and the real `vault`/`vaultd`; the attacker
//! holds only what such a person has: a second `vault:write` access token
//! of the vault's owner and the vault's public recipient. Forged entries are
//! made with the real `age` CLI and pushed with `curl`; a server gone bad is
//! played by editing its database while it is stopped.
//!
//! Every case shows that nothing was applied, the user's values are intact,
//! and the refusal is reported where the user looks (`vault sync`, `vault
//! sync status`, `vault doctor`).

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use vault_e2e::{RemoteServer, SERVER_ADMIN_TOKEN, VaultHome, which};

/// The attacker's tools, or a message saying how to get them.
fn tools() -> Option<(PathBuf, PathBuf)> {
    match (which("age"), which("curl")) {
        (Some(age), Some(curl)) => Some((age, curl)),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have age and curl (.ci/run installs them)"
            );
            eprintln!("SKIPPED: needs the age CLI and curl (apt-get install age curl)");
            None
        }
    }
}

struct Scene {
    server: RemoteServer,
    a: VaultHome,
    vault_id: String,
    recipient: String,
    age: PathBuf,
    curl: PathBuf,
    /// The attacker's JWT (from their own access token).
    jwt: String,
}

fn curl_json(curl: &PathBuf, args: &[&str], body: Option<&str>) -> serde_json::Value {
    let mut cmd = Command::new(curl);
    cmd.args(["-sS", "--max-time", "20"]).args(args);
    if body.is_some() {
        cmd.args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            "@-",
        ]);
        cmd.stdin(Stdio::piped());
    }
    cmd.stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(b) = body {
        child.stdin.take().unwrap().write_all(b.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "curl {args:?} failed");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("curl {args:?}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// `POST url` with a bearer token.
fn post(curl: &PathBuf, bearer: &str, url: &str, body: Option<&str>) -> serde_json::Value {
    let auth = format!("authorization: Bearer {bearer}");
    curl_json(curl, &["-X", "POST", "-H", &auth, url], body)
}

fn token_of(vh: &VaultHome, name: &str, field: &str) -> String {
    let run = vh.vault(["get", name, "--field", field]);
    run.ok();
    run.stdout.trim_end().to_owned()
}

/// A vault with `gh` and `prod` on device a, synced to a real server, and
/// an attacker with their own `vault:write` token.
fn scene() -> Option<Scene> {
    let (age, curl) = tools()?;
    let server = RemoteServer::start();
    let a = VaultHome::new();
    let init = a.init();
    let recipient = init
        .stdout
        .split_whitespace()
        .find(|w| w.starts_with("age1"))
        .unwrap()
        .to_owned();
    a.vault_in(
        ["add", "gh", "--type", "token", "token=-"],
        b"gh-real-token",
    )
    .ok();
    a.add_aws("prod", "AKIAREALKEY", "real-secret-key", &[]);
    a.vault_in(["set", "gh", "token=-"], b"gh-real-token-2")
        .ok();
    a.login(&server).ok();
    a.vault(["sync"]).ok();
    let vault_id = a.vault(["status", "--json"]).json()["vault_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The owner's admin session mints a second token: the attacker's.
    let url = server.url();
    let admin_jwt = post(
        &curl,
        SERVER_ADMIN_TOKEN,
        &format!("{url}/api/v1/auth/token"),
        None,
    );
    let created = post(
        &curl,
        admin_jwt["jwt"].as_str().unwrap(),
        &format!("{url}/api/v1/tokens"),
        Some(r#"{"name":"stolen-laptop"}"#),
    );
    let stolen = created["token"].as_str().unwrap();
    let jwt = post(&curl, stolen, &format!("{url}/api/v1/auth/token"), None)["jwt"]
        .as_str()
        .unwrap()
        .to_owned();
    Some(Scene {
        server,
        a,
        vault_id,
        recipient,
        age,
        curl,
        jwt,
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

impl Scene {
    /// The vault's key id, as anyone can compute it from the recipient.
    fn key_id(&self) -> String {
        let d = ring::digest::digest(&ring::digest::SHA256, self.recipient.as_bytes());
        d.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A record body as the attacker writes it: today's layout, whatever
    /// version and MAC they like.
    fn body(
        &self,
        v: u32,
        name: &str,
        fields: &str,
        device: &str,
        index: u64,
        clock: u64,
    ) -> String {
        format!(
            r#"{{"v":{v},"id":"{id}","name":"{name}","type":"token","description":null,"tags":[],"fields":{fields},"expires_at":null,"sync":{{"device":"{device}","index":{index},"clock":{clock},"change":"add","vault":"{vault}","prev":"","seen":{{}}}},"mac":"{mac}"}}"#,
            id = "e".repeat(32),
            vault = self.vault_id,
            mac = "0".repeat(64),
        )
    }

    /// `age -r RECIPIENT`: what anyone can encrypt.
    fn encrypt(&self, plain: &str) -> Vec<u8> {
        let mut child = Command::new(&self.age)
            .args(["-r", &self.recipient])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(plain.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        out.stdout
    }

    /// Pushes `entries` (index, ciphertext) as `device`, with the
    /// attacker's token.
    fn push(&self, device: &str, entries: &[(u64, Vec<u8>)]) {
        let records: Vec<serde_json::Value> = entries
            .iter()
            .map(|(i, data)| {
                serde_json::json!({
                    "index": i,
                    "key_id": self.key_id(),
                    "data": b64(data),
                })
            })
            .collect();
        let body = serde_json::json!({"device_id": device, "records": records}).to_string();
        let url = format!("{}/api/v1/vaults/{}/push", self.server.url(), self.vault_id);
        let answer = post(&self.curl, &self.jwt, &url, Some(&body));
        assert!(answer["head"].as_u64().is_some(), "push refused: {answer}");
    }

    /// A second device of the vault, joined now.
    fn join(&self) -> VaultHome {
        VaultHome::join_id(&self.server, &self.vault_id)
    }

    /// Runs `f` on the server's database while it is stopped.
    fn tamper(&mut self, f: impl FnOnce(&rusqlite::Connection)) {
        self.server.stop();
        let db = rusqlite::Connection::open(self.server.sqlite_path().unwrap()).unwrap();
        f(&db);
        drop(db);
        self.server.resume();
    }
}

fn b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The user's own view is intact on `vh`.
fn intact(vh: &VaultHome, gh: &str) {
    assert_eq!(token_of(vh, "gh", "token"), gh);
    assert_eq!(token_of(vh, "prod", "secret_access_key"), "real-secret-key");
    let run = vh.vault(["list", "--format", "json"]);
    run.ok();
    assert_eq!(run.names(), ["gh", "prod"]);
    vh.vault(["history", "gh"]).ok();
}

/// `vault sync status` and `vault doctor` name the entry and what to do.
fn reported(vh: &VaultHome, device: &str, index: u64, what: &str) {
    let status = vh.vault(["sync", "status"]);
    status.ok();
    let line = format!("entry {index} of device {device}");
    assert!(
        status.stderr.contains(&line) && status.stderr.contains(what),
        "sync status lacks '{line}' / '{what}':\n{status}"
    );
    let doctor = vh.vault(["doctor"]);
    assert!(
        doctor.stdout.contains("sync integrity") && doctor.stdout.contains(&line),
        "doctor does not report it:\n{doctor}"
    );
}

#[test]
fn forged_entries_are_refused_on_every_device() {
    let Some(s) = scene() else { return };
    let marker = s.a.root().join("pwned");
    let evil = "e0e0e0e0e0e0e0e0";
    let clock = now_ms() << 16;
    let ten_years = (now_ms() + 10 * 365 * 86_400_000) << 16;
    let plant = format!(
        r#"{{"refresh_command":"touch {}","token":""}}"#,
        marker.display()
    );
    let gh_real = s.a.vault(["get", "gh", "--json"]).json();
    let entries = [
        // 1. An existing name with a planted refresh_command, made-up MAC.
        (1, s.encrypt(&s.body(3, "gh", &plant, evil, 1, clock))),
        // 2. A new name, in today's (v2, unauthenticated) format.
        (
            2,
            s.encrypt(&s.body(2, "evil", r#"{"token":"x"}"#, evil, 2, clock)),
        ),
        // 3. A credential swap with a clock ten years ahead.
        (
            3,
            s.encrypt(&s.body(3, "prod", r#"{"token":"x"}"#, evil, 3, ten_years)),
        ),
        // 4. An extreme clock.
        (
            4,
            s.encrypt(&s.body(3, "gh", r#"{"token":"x"}"#, evil, 4, u64::MAX)),
        ),
        // 5. A body with no MAC at all.
        (
            5,
            s.encrypt(
                &s.body(3, "gh", r#"{"token":"x"}"#, evil, 5, clock)
                    .replace(&format!(r#","mac":"{}""#, "0".repeat(64)), ""),
            ),
        ),
    ];
    s.push(evil, &entries);

    // The device that had the values, and one that joins now.
    let run = s.a.vault(["sync"]);
    run.code(1).no_panic();
    assert!(run.stderr.contains("fails authentication"), "{run}");
    assert!(
        run.stderr.contains("without authentication (body v2)"),
        "{run}"
    );
    let b = s.join();
    for vh in [&s.a, &b] {
        intact(vh, "gh-real-token-2");
        vh.vault(["exec", "-c", "gh", "--", "true"]).ok();
        assert!(!marker.exists(), "the planted refresh_command ran");
        for i in 1..=5 {
            reported(vh, evil, i, "it is not applied");
        }
        vh.vault(["status"]).ok().stdout_has("problem(s)");
    }
    assert_eq!(
        s.a.vault(["get", "gh", "--json"]).json()["updated_at"],
        gh_real["updated_at"]
    );
    // Syncing again changes nothing and says nothing new of them.
    s.a.vault(["sync"]).ok();
    intact(&s.a, "gh-real-token-2");
    // The user's own changes still sync both ways.
    b.vault_in(["set", "gh", "token=-"], b"gh-real-token-3")
        .ok();
    b.vault(["sync"]).ok();
    s.a.vault(["sync"]).ok();
    assert_eq!(token_of(&s.a, "gh", "token"), "gh-real-token-3");
}

#[test]
fn replayed_foreign_and_reordered_entries_are_refused() {
    let Some(mut s) = scene() else { return };
    // The real entries of a's log, as the server holds them.
    let db_path = s.server.sqlite_path().unwrap();
    let rows: Vec<(String, i64, Vec<u8>)> = {
        let db = rusqlite::Connection::open(&db_path).unwrap();
        let mut stmt = db
            .prepare("SELECT device_id, idx, data FROM records ORDER BY idx")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(rows.len(), 3, "gh add, prod add, gh set");
    let a_dev = rows[0].0.clone();
    // Replay a's first entry (the old gh) under a new device and index.
    let evil = "e1e1e1e1e1e1e1e1";
    s.push(evil, &[(1, rows[0].2.clone())]);
    // An entry of another vault, filed with this vault's key id.
    let other = VaultHome::new();
    other.init();
    other
        .vault_in(["add", "gh", "--type", "token", "token=-"], b"other-vault")
        .ok();
    let other_server = RemoteServer::start();
    other.login(&other_server).ok();
    other.vault(["sync"]).ok();
    let foreign: Vec<u8> = rusqlite::Connection::open(other_server.sqlite_path().unwrap())
        .unwrap()
        .query_row("SELECT data FROM records LIMIT 1", [], |r| r.get(0))
        .unwrap();
    s.push(evil, &[(2, foreign)]);
    // The server reorders a's log: entries 1 and 3 swap places.
    let put = |db: &rusqlite::Connection, first: &Vec<u8>, third: &Vec<u8>| {
        db.execute(
            "UPDATE records SET data = CASE idx WHEN 1 THEN ?1 WHEN 3 THEN ?2 END
             WHERE device_id = ?3 AND idx IN (1, 3)",
            rusqlite::params![first, third, a_dev],
        )
        .unwrap();
    };
    s.tamper(|db| put(db, &rows[2].2, &rows[0].2));
    // A device joining now: the first sync (inside the join) refuses them.
    let b = s.join();
    reported(&b, evil, 1, "swapped, moved or replayed");
    reported(&b, evil, 2, "cannot be decrypted");
    reported(&b, &a_dev, 1, "swapped, moved or replayed");
    reported(&b, &a_dev, 3, "swapped, moved or replayed");
    // Only what verifies in its own place arrived: a's entry 2 (prod).
    assert_eq!(token_of(&b, "prod", "secret_access_key"), "real-secret-key");
    b.vault(["get", "gh"]).code(4);
    intact(&s.a, "gh-real-token-2");
    // The server puts the log back: a repair fetches the refused entries
    // again and the real ones apply.
    s.tamper(|db| put(db, &rows[0].2, &rows[2].2));
    b.vault(["sync", "repair"]).no_panic();
    assert_eq!(token_of(&b, "gh", "token"), "gh-real-token-2");
}

#[test]
fn a_withheld_truncated_or_dropped_log_is_found() {
    let Some(mut s) = scene() else { return };
    // b joins and writes: its entry commits to having seen a's log through 3.
    let b = s.join();
    assert_eq!(token_of(&b, "gh", "token"), "gh-real-token-2");
    b.vault_in(["add", "npm", "--type", "token", "token=-"], b"npm-token")
        .ok();
    b.vault(["sync"]).ok();
    // a stays away meanwhile: its next sync would push back what the server
    // lost (below), before the other devices could be shown noticing.
    s.a.stop_daemons();
    let a_dev: String = rusqlite::Connection::open(s.server.sqlite_path().unwrap())
        .unwrap()
        .query_row("SELECT device_id FROM records WHERE idx = 3", [], |r| {
            r.get(0)
        })
        .unwrap();
    // The server drops a's newest entry (the gh change): truncates the log.
    s.tamper(|db| {
        db.execute(
            "DELETE FROM records WHERE device_id = ?1 AND idx = 3",
            [&a_dev],
        )
        .unwrap();
        db.execute("UPDATE logs SET head = 2 WHERE device_id = ?1", [&a_dev])
            .unwrap();
    });
    // A device that joins now gets the older gh, and is told.
    let c = s.join();
    let status = c.vault(["sync", "status"]);
    assert!(
        status
            .stderr
            .contains(&format!("shows device {a_dev}'s log reaching 3")),
        "{status}"
    );
    let verify = c.vault(["sync", "verify"]);
    verify.code(1);
    // b, which applied entry 3, sees the server go back.
    let run = b.vault(["sync"]);
    run.code(1);
    assert!(
        run.stderr
            .contains(&format!("device {a_dev}'s log ends at 2, before entry 3")),
        "{run}"
    );
    // The server drops a's log entirely.
    s.tamper(|db| {
        db.execute("DELETE FROM records WHERE device_id = ?1", [&a_dev])
            .unwrap();
        db.execute("DELETE FROM logs WHERE device_id = ?1", [&a_dev])
            .unwrap();
    });
    let run = b.vault(["sync"]);
    run.code(1);
    assert!(
        run.stderr
            .contains(&format!("device {a_dev}'s log ends at 0")),
        "{run}"
    );
    b.vault(["doctor"]).stdout_has("sync integrity");
    // Nothing was lost on b: its values are what it had.
    assert_eq!(token_of(&b, "gh", "token"), "gh-real-token-2");
    assert_eq!(token_of(&b, "npm", "token"), "npm-token");
    // a pushes its log again on its next sync, finding from the server's
    // heads that the server lost it (the log is kept locally for ever), says
    // so, and b is whole again.
    s.a.unlock();
    s.a.vault(["sync"]).ok().stderr_has("had lost entries 1..3");
    b.vault(["sync"]).ok();
}
