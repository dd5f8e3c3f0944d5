//! Sync (docs/sync.md) between real devices: each device is a `VaultHome` with
//! its own `vaultd`, all talking to one real `vault-server` on 127.0.0.1
//! port 0, logged in with the server's default admin.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::time::Duration;

use vault_e2e::{PASSPHRASE, RemoteServer, RewritingProxy, VaultHome, secret};

fn add_token(vh: &VaultHome, name: &str, value: &str) {
    vh.vault_in(
        ["add", name, "--type", "token", "token=-"],
        value.as_bytes(),
    )
    .ok();
}

fn set_token(vh: &VaultHome, name: &str, value: &str) {
    vh.vault_in(["set", name, "token=-"], value.as_bytes()).ok();
}

fn token_of(vh: &VaultHome, name: &str) -> String {
    let run = vh.vault(["get", name, "--field", "token"]);
    run.ok();
    run.stdout.trim_end().to_owned()
}

fn sync(vh: &VaultHome) -> vault_e2e::Run {
    let run = vh.vault(["sync"]);
    run.ok().no_panic();
    run
}

fn vault_id(vh: &VaultHome) -> String {
    vh.vault(["status", "--json"]).json()["vault_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A second device for `first`'s vault: logs in, joins, pulls.
fn join(first: &VaultHome, server: &RemoteServer) -> VaultHome {
    first.join(server)
}

/// The vault database files of a stopped device, to put back later (a
/// restored backup, or a push whose answer never arrived).
fn snapshot(vh: &VaultHome) -> Vec<(String, Option<Vec<u8>>)> {
    let db = vh.paths().db().display().to_string();
    [db.clone(), format!("{db}-wal"), format!("{db}-shm")]
        .into_iter()
        .map(|f| {
            let content = std::fs::read(&f).ok();
            (f, content)
        })
        .collect()
}

fn put_back(saved: &[(String, Option<Vec<u8>>)]) {
    for (f, content) in saved {
        match content {
            Some(c) => std::fs::write(f, c).unwrap(),
            None => {
                let _ = std::fs::remove_file(f);
            }
        }
    }
}

fn names(vh: &VaultHome) -> Vec<String> {
    vh.vault(["list", "--json"]).names()
}

#[test]
fn offline_edits_on_two_devices_converge_and_nothing_is_lost() {
    let mut server = RemoteServer::start();
    let a = VaultHome::new();
    // The pushes counted below are the explicit syncs' own: a background
    // sync kicked by the login could take them first.
    a.write_config("[sync]\nauto = false\n");
    a.init().ok();
    let v1 = secret("gh-v1");
    add_token(&a, "github", &v1);
    add_token(&a, "npm", &secret("npm"));
    a.login(&server).ok();
    let first = sync(&a).stderr.clone();
    assert!(first.contains("2 change(s) pushed"), "{first}");

    let b = join(&a, &server);
    assert_eq!(names(&b), ["github", "npm"]);
    assert_eq!(token_of(&b, "github"), v1);

    // The server goes away; both devices keep working.
    server.stop();
    let from_a = secret("gh-from-a");
    set_token(&a, "github", &from_a);
    add_token(&a, "only-a", &secret("only-a"));
    let failed = a.vault(["sync"]);
    failed
        .code(6)
        .stderr_has("cannot reach")
        .stderr_has("stay queued");
    let status = a.vault(["sync", "status", "--json"]).json();
    assert_eq!(status["queued"], 2, "{status}");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot reach")
    );
    let doctor = a.vault(["doctor", "--json"]).json();
    let remote = doctor["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "remote")
        .unwrap()
        .clone();
    assert_eq!(remote["status"], "warn", "{remote}");
    assert!(
        remote["message"]
            .as_str()
            .unwrap()
            .contains("2 change(s) queued")
    );

    std::thread::sleep(Duration::from_millis(20));
    let from_b = secret("gh-from-b");
    set_token(&b, "github", &from_b);
    b.vault(["rm", "npm"]).ok();
    add_token(&b, "only-b", &secret("only-b"));

    server.resume();
    sync(&a);
    sync(&b);
    sync(&a);
    for vh in [&a, &b] {
        assert_eq!(names(vh), ["github", "only-a", "only-b"]);
        // B's change is the later one on the hybrid logical clock.
        assert_eq!(token_of(vh, "github"), from_b);
        assert_eq!(vh.vault(["sync", "status", "--json"]).json()["queued"], 0);
    }

    // A's concurrent change lost but is kept, and listed.
    let conflicts = a.vault(["conflicts", "--json"]).json();
    let list = conflicts.as_array().unwrap();
    assert_eq!(list.len(), 1, "{conflicts}");
    assert_eq!(list[0]["name"], "github");
    assert_eq!(list[0]["kind"], "edit");
    let lost = list[0]["revision"].as_u64().unwrap();
    let text = a.vault(["conflicts"]);
    text.ok();
    assert!(
        text.stdout
            .contains(&format!("vault restore github --revision {lost}")),
        "{text}"
    );
    // Restoring it resolves the conflict on every device.
    a.vault(["restore", "github", "--revision", &lost.to_string()])
        .ok();
    assert_eq!(token_of(&a, "github"), from_a);
    sync(&a);
    sync(&b);
    for vh in [&a, &b] {
        assert_eq!(token_of(vh, "github"), from_a);
        let c = vh.vault(["conflicts", "--json"]).json();
        assert_eq!(c.as_array().unwrap().len(), 0, "{c}");
    }
    // The delete reached A as a tombstone: history keeps the value.
    let history = a.vault(["history", "npm", "--json"]).json();
    assert!(history.as_array().unwrap().len() >= 2, "{history}");
}

#[test]
fn one_name_taken_on_two_devices_keeps_both_records() {
    let server = RemoteServer::start();
    let a = VaultHome::new();
    a.init().ok();
    a.login(&server).ok();
    sync(&a);
    let b = join(&a, &server);
    let (va, vb) = (secret("shared-a"), secret("shared-b"));
    add_token(&a, "shared", &va);
    std::thread::sleep(Duration::from_millis(20));
    add_token(&b, "shared", &vb);
    sync(&a);
    sync(&b);
    sync(&a);
    let listed = names(&a);
    assert_eq!(listed, names(&b), "both devices list the same names");
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0], "shared");
    assert!(listed[1].starts_with("shared@conflict-"), "{listed:?}");
    for vh in [&a, &b] {
        // The later record keeps the name; the other is listed, not lost.
        assert_eq!(token_of(vh, "shared"), vb);
        assert_eq!(token_of(vh, &listed[1]), va);
        let c = vh.vault(["conflicts", "--json"]).json();
        assert_eq!(c[0]["kind"], "name", "{c}");
        assert_eq!(c[0]["claims"], "shared");
    }
    // Renaming the loser settles it everywhere.
    a.vault(["rename", &listed[1], "shared-from-a"]).ok();
    sync(&a);
    sync(&b);
    for vh in [&a, &b] {
        assert_eq!(names(vh), ["shared", "shared-from-a"]);
        assert_eq!(token_of(vh, "shared-from-a"), va);
    }
}

#[test]
fn a_vault_with_another_key_is_refused_before_uploading() {
    let server = RemoteServer::start();
    let a = VaultHome::new();
    a.init().ok();
    add_token(&a, "mine", &secret("mine"));
    a.login(&server).ok();
    sync(&a);
    // Another vault that claims A's id (a restored backup of something
    // else, a copied vault.db): it must not upload anything.
    let c = VaultHome::new();
    c.init().ok();
    add_token(&c, "theirs", &secret("theirs"));
    c.stop_daemons();
    let db = rusqlite::Connection::open(c.paths().db()).unwrap();
    db.execute(
        "UPDATE vault_meta SET value = ?1 WHERE key = 'vault_id'",
        [vault_id(&a)],
    )
    .unwrap();
    drop(db);
    c.unlock();
    c.login(&server)
        .code(5)
        .stderr_has("encrypted to another key")
        .stderr_has("nothing was uploaded");
    c.vault(["sync"]).code(2).stderr_has("vault login");
    // A pulls nothing of C's.
    let b = join(&a, &server);
    assert_eq!(names(&b), ["mine"]);
}

#[test]
fn an_interrupted_push_resumes_without_holes_or_duplicates() {
    let server = RemoteServer::start();
    let a = VaultHome::new();
    // Only the explicit syncs below may push.
    a.write_config("[sync]\nauto = false\n");
    a.init().ok();
    a.login(&server).ok();
    for i in 0..5 {
        add_token(&a, &format!("t{i}"), &secret(&format!("t{i}")));
    }
    // The push lands but the device never hears back: its vault.db is put
    // back to the state before the push.
    a.stop_daemons();
    let saved = snapshot(&a);
    a.unlock();
    sync(&a);
    a.stop_daemons();
    put_back(&saved);
    a.unlock();
    assert_eq!(a.vault(["sync", "status", "--json"]).json()["queued"], 5);
    add_token(&a, "t5", &secret("t5"));
    let out = sync(&a).stderr.clone();
    assert!(out.contains("1 change(s) pushed"), "{out}");
    let b = join(&a, &server);
    assert_eq!(names(&b), ["t0", "t1", "t2", "t3", "t4", "t5"]);
    assert_eq!(b.vault(["sync", "status", "--json"]).json()["queued"], 0);
}

#[test]
fn verify_finds_a_hole_and_repair_fills_it() {
    let server = RemoteServer::start();
    let a = VaultHome::new();
    a.init().ok();
    a.login(&server).ok();
    let x2 = secret("x2");
    add_token(&a, "x", &secret("x1"));
    set_token(&a, "x", &x2);
    add_token(&a, "y", &secret("y"));
    sync(&a);
    let b = join(&a, &server);
    b.vault(["sync", "verify"])
        .ok()
        .stderr_has("every log is complete");
    // B loses A's first entry (the add of x, no longer its head).
    b.stop_daemons();
    let db = rusqlite::Connection::open(b.paths().db()).unwrap();
    let gone = db
        .execute(
            "DELETE FROM revisions WHERE log_index = 1 AND device != \
             (SELECT value FROM vault_meta WHERE key = 'device_id')",
            [],
        )
        .unwrap();
    assert_eq!(gone, 1);
    drop(db);
    b.unlock();
    let found = b.vault(["sync", "verify", "--json"]);
    found.code(1).stderr_has("vault sync repair");
    let logs = found.json()["logs"].clone();
    let other = logs
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["this_device"] != true)
        .unwrap()
        .clone();
    assert_eq!(other["missing_here"], serde_json::json!([[1, 1]]), "{logs}");
    b.vault(["sync", "repair"]).ok().stderr_has("repaired");
    b.vault(["sync", "verify"]).ok();
    assert_eq!(token_of(&b, "x"), x2);
    let history = b.vault(["history", "x", "--json"]).json();
    assert_eq!(history.as_array().unwrap().len(), 2, "{history}");
    let c = b.vault(["conflicts", "--json"]).json();
    assert_eq!(
        c.as_array().unwrap().len(),
        0,
        "a refetched ancestor is no conflict: {c}"
    );
}

/// A logged-in, synced device holding `n` token records.
fn bulk_device(server: &RemoteServer, n: usize) -> VaultHome {
    let a = VaultHome::new();
    a.init().ok();
    let records: Vec<vault_protocol::message::NewRecord> = (0..n)
        .map(|i| vault_protocol::message::NewRecord {
            name: format!("bulk-{i:05}"),
            kind: vault_protocol::CredentialType::Token,
            fields: [("token".to_owned(), "not-secret".into())].into(),
            description: None,
            tags: vec![],
            expires_at: None,
        })
        .collect();
    let mut conn = a.connect().unwrap();
    vault_e2e::hello(&mut conn).unwrap();
    vault_e2e::request(&mut conn, 2, vault_protocol::Request::AddMany { records })
        .unwrap()
        .into_result()
        .unwrap();
    a.login(server).ok();
    sync(&a);
    a
}

#[test]
fn an_interrupted_pull_resumes_without_holes() {
    let mut server = RemoteServer::start();
    let a = bulk_device(&server, 3000);
    let b = VaultHome::new();
    b.login(&server).ok();
    // The join's pull runs in the daemon; kill it once some pages landed.
    let joining = {
        let mut cmd = b.command(
            &vault_e2e::binaries().vault,
            ["init", "--join", &vault_id(&a), "--passphrase-stdin"],
        );
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{PASSPHRASE}\n").as_bytes())
            .unwrap();
        child
    };
    let pid = b.daemon_pid().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = b.vault(["sync", "status", "--json"]).json();
        if s["progress"]["done"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no pull seen: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Stopping the server freezes the pull part way, however slowly this
    // test gets to the kill.
    server.stop();
    vault_e2e::kill_pid(pid, true);
    let _ = joining.wait_with_output();
    let partial = rusqlite::Connection::open(b.paths().db())
        .unwrap()
        .query_row("SELECT count(*) FROM records", [], |r| r.get::<_, i64>(0))
        .unwrap();
    assert!(
        partial < 3000,
        "the pull was not interrupted ({partial} records)"
    );
    server.resume();
    b.unlock();
    sync(&b);
    assert_eq!(names(&b).len(), 3000);
    b.vault(["sync", "verify"])
        .ok()
        .stderr_has("every log is complete");
}

#[test]
fn a_first_sync_on_a_terminal_shows_progress() {
    let Some(script) = vault_e2e::which("script") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "script(1) is missing in CI: .ci/run installs util-linux"
        );
        println!("SKIP progress bar: script(1) (util-linux) not installed");
        return;
    };
    let server = RemoteServer::start();
    let a = bulk_device(&server, 3000);

    let b = VaultHome::new();
    b.login(&server).ok();
    let pass = b.at_file("passphrase", PASSPHRASE);
    // script(1) gives the CLI a terminal (TERM set, as in any terminal); the
    // passphrase comes from the file.
    let mut cmd = b.command(
        &script,
        [
            "-qec",
            &format!("vault init --join {}", vault_id(&a)),
            "/dev/null",
        ],
    );
    cmd.env("VAULT_PASSPHRASE_FILE", &pass[1..])
        .env("TERM", "xterm");
    let run = vault_e2e::run_command(cmd, None, Duration::from_secs(120));
    run.ok();
    assert!(run.stdout.contains("pulling"), "no progress bar: {run}");
    assert!(run.stdout.contains("/3000 records"), "{run}");
    assert_eq!(names(&b).len(), 3000);
}

#[test]
fn a_restored_backup_never_skips_its_new_changes() {
    let server = RemoteServer::start();
    let a = VaultHome::new();
    a.write_config("[sync]\nauto = false\n");
    a.init().ok();
    a.login(&server).ok();
    add_token(&a, "t0", &secret("t0"));
    sync(&a);
    a.stop_daemons();
    let saved = snapshot(&a);
    a.unlock();
    add_token(&a, "t1", &secret("t1"));
    sync(&a);
    // Back to the backup: its next change takes the index the server
    // already holds for t1.
    a.stop_daemons();
    put_back(&saved);
    a.unlock();
    add_token(&a, "t2", &secret("t2"));
    a.vault(["sync"])
        .code(5)
        .stderr_has("restored from a backup")
        .stderr_has("vault init --join");
    assert_eq!(a.vault(["sync", "status", "--json"]).json()["queued"], 1);
    // The server still holds t0 and t1, nothing of the diverged log.
    let b = join(&a, &server);
    assert_eq!(names(&b), ["t0", "t1"]);
}

/// Issue 23: a backup of the server taken while a device pushes, restored
/// into a fresh database behind the same address. The devices that had
/// pushed past the backup push those entries again on their next sync and
/// say so; afterwards both devices hold every record exactly once, every
/// log verifies complete, and new changes flow both ways.
#[test]
fn a_server_restored_from_a_backup_taken_under_load_loses_nothing() {
    let mut server = RemoteServer::start();
    let a = VaultHome::new();
    a.write_config("[sync]\nauto = false\n");
    a.init().ok();
    a.login(&server).ok();
    add_token(&a, "a00", &secret("a00"));
    sync(&a);
    let b = join(&a, &server);

    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("server.backup");
    let (four_done, wait_four) = std::sync::mpsc::channel();
    let backed_up = std::thread::scope(|s| {
        let a = &a;
        s.spawn(move || {
            for i in 1..=12 {
                let name = format!("a{i:02}");
                add_token(a, &name, &secret(&name));
                sync(a);
                if i == 4 {
                    four_done.send(()).unwrap();
                }
            }
        });
        // Taken while A goes on pushing.
        wait_four.recv().unwrap();
        let out = server.admin(&["--json", "backup", "--to", backup.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    });
    add_token(&b, "b01", &secret("b01"));
    sync(&b);
    let mut want: Vec<String> = (0..=12).map(|i| format!("a{i:02}")).collect();
    want.push("b01".into());
    assert_eq!(names(&b), want);
    // The backup stopped part-way: the restored server lacks A's last
    // entries and all of B's.
    let in_backup = backed_up["records"].as_u64().unwrap();
    assert!(
        (5..13).contains(&in_backup),
        "the backup was not taken mid-load: {backed_up}"
    );

    let restored = format!("sqlite:{}", dir.path().join("restored.db").display());
    let out = std::process::Command::new(&vault_e2e::binaries().server)
        .args(["--database", &restored, "restore", "--from"])
        .arg(&backup)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.restart_on(restored);

    a.vault(["sync"])
        .ok()
        .stderr_has("had lost entries")
        .stderr_has("pushed again");
    b.vault(["sync"]).ok().stderr_has("had lost entries");
    sync(&a);
    for device in [&a, &b] {
        assert_eq!(names(device), want, "every record, once");
        device
            .vault(["sync", "verify"])
            .ok()
            .stderr_has("every log is complete");
    }
    let b02 = secret("b02");
    add_token(&b, "b02", &b02);
    sync(&b);
    sync(&a);
    assert_eq!(token_of(&a, "b02"), b02);
}

/// A server (or something between it and the device) that answers a push
/// with a head past what was sent claims entries the device never pushed.
/// Believing it would mark queued changes stored; the device refuses the
/// answer, keeps them queued, and pushes them once the answers are honest.
#[test]
fn a_push_answer_claiming_unsent_entries_is_refused() {
    let server = RemoteServer::start();
    let proxy = RewritingProxy::start(
        &server.url(),
        Box::new(|request, status, body| {
            if status != 200 || !request.contains("/push ") {
                return None;
            }
            let mut answer: serde_json::Value = serde_json::from_slice(body).unwrap();
            let head = answer["head"].as_u64().unwrap();
            answer["head"] = (head + 2).into();
            Some(serde_json::to_vec(&answer).unwrap())
        }),
    );
    let a = VaultHome::new();
    a.write_config("[sync]\nauto = false\n");
    a.init().ok();
    proxy.arm(false);
    a.login_at(&proxy.url()).ok();
    for name in ["t1", "t2", "t3"] {
        add_token(&a, name, &secret(name));
    }
    let queued = a.vault(["sync", "status", "--json"]).json()["queued"].clone();
    proxy.arm(true);
    let lied = a.vault(["sync"]);
    lied.code(1)
        .no_panic()
        .stderr_has("entries this device never sent")
        .stderr_has("changes stay queued");
    assert_eq!(proxy.rewritten().len(), 1, "{:?}", proxy.rewritten());
    assert_eq!(
        a.vault(["sync", "status", "--json"]).json()["queued"],
        queued
    );
    // Honest again: the entries the server did take are recognised as
    // this device's own, the rest pushed, and a second device gets all.
    proxy.arm(false);
    add_token(&a, "t4", &secret("t4"));
    sync(&a);
    assert_eq!(a.vault(["sync", "status", "--json"]).json()["queued"], 0);
    a.vault(["sync", "verify"]).ok();
    let b = join(&a, &server);
    assert_eq!(names(&b), ["t1", "t2", "t3", "t4"]);
}

/// A server that answers with more than any honest answer holds (40 MiB,
/// valid JSON) is not read on: the sync fails saying so, nothing of it is
/// applied, and the next honest sync goes on.
#[test]
fn an_answer_larger_than_any_honest_one_is_refused() {
    let server = RemoteServer::start();
    let proxy = RewritingProxy::start(
        &server.url(),
        Box::new(|_, status, body| {
            if status != 200 {
                return None;
            }
            let mut padded = vec![b' '; 40 << 20];
            padded.extend_from_slice(body);
            Some(padded)
        }),
    );
    let a = VaultHome::new();
    a.write_config("[sync]\nauto = false\n");
    a.init().ok();
    proxy.arm(false);
    a.login_at(&proxy.url()).ok();
    add_token(&a, "t1", &secret("big-1"));
    proxy.arm(true);
    a.vault(["sync"])
        .code(1)
        .no_panic()
        .stderr_has("longer than");
    assert_eq!(a.vault(["sync", "status", "--json"]).json()["queued"], 1);
    proxy.arm(false);
    sync(&a);
    assert_eq!(a.vault(["sync", "status", "--json"]).json()["queued"], 0);
}
