//! Issue 2, "Bad input, and what it must get": usage errors, exit codes,
//! wrong passphrase, damaged files, a second daemon.

// Helper fns of a test report failure by panicking.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::time::Duration;

use vault_e2e::{MARK, PASSPHRASE, VaultHome};

#[test]
fn missing_required_fields_are_a_usage_error_listing_them() {
    let vh = VaultHome::new();
    vh.init();
    let secret = vh.at_file("s", &vault_e2e::secret("missing"));
    let run = vh.vault(["add", "aws-x", "--type", "aws", "region=eu-west-1"]);
    run.code(2)
        .stderr_has("access_key_id")
        .stderr_has("secret_access_key");
    let run = vh.vault([
        "add",
        "aws-y",
        "--type",
        "aws",
        &format!("secret_access_key={secret}"),
    ]);
    run.code(2).stderr_has("access_key_id").never_prints(MARK);
    let run = vh.vault(["add", "reg", "--type", "registry", "registry=nvcr.io"]);
    run.code(2).stderr_has("username").stderr_has("auth");
    vh.vault(["add", "gen", "--type", "generic"]).code(2);
    // Nothing was created by the failed adds.
    let list = vh.vault(["list", "--format", "json"]).ok().json();
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
}

#[test]
fn invalid_names_and_types_are_usage_errors() {
    let vh = VaultHome::new();
    vh.init();
    let token = vh.at_file("t", &vault_e2e::secret("name"));
    let long = "x".repeat(129);
    for bad in [
        "bad name",
        ".hidden",
        "semi;colon",
        "ünïcode",
        long.as_str(),
    ] {
        vh.vault(["add", bad, "--type", "token", &format!("token={token}")])
            .code(2)
            .stderr_has("invalid name")
            .never_prints(MARK);
    }
    vh.vault(["add", "ok-name", "--type", "kerberos", "x=y"])
        .code(2)
        .stderr_has("kerberos");
    vh.vault([
        "add",
        "ok-name",
        "--type",
        "token",
        "nosuchfield=1",
        &format!("token={token}"),
    ])
    .code(2)
    .stderr_has("nosuchfield");
    vh.vault(["frobnicate"]).code(2);
}

#[test]
fn duplicate_add_exits_5_and_keeps_the_original() {
    let vh = VaultHome::new();
    vh.init();
    let first = vault_e2e::secret("first");
    let second = vault_e2e::secret("second");
    let f1 = vh.at_file("1", &first);
    let f2 = vh.at_file("2", &second);
    vh.vault(["add", "dup", "--type", "token", &format!("token={f1}")])
        .ok();
    vh.vault(["add", "dup", "--type", "token", &format!("token={f2}")])
        .code(5)
        .stderr_has("dup")
        .never_prints(MARK);
    let out = vh.vault(["get", "dup", "--field", "token"]);
    assert_eq!(out.ok().stdout, format!("{first}\n"));
}

#[test]
fn unknown_names_exit_4() {
    let vh = VaultHome::new();
    vh.init();
    let v = vh.at_file("v", &vault_e2e::secret("nf"));
    for args in [
        vec!["get", "nope"],
        vec!["get", "nope", "--field", "token"],
        vec!["set", "nope", &format!("token={v}")],
        vec!["rm", "nope", "--force"],
        vec!["rename", "nope", "other"],
        vec!["history", "nope"],
        vec!["restore", "nope", "--revision", "1"],
    ] {
        vh.vault(&args)
            .code(4)
            .stderr_has("nope")
            .never_prints(MARK);
    }
}

#[test]
fn wrong_passphrase_exits_3_and_stays_locked() {
    let vh = VaultHome::new();
    vh.init();
    let value = vault_e2e::secret("wp");
    let f = vh.at_file("v", &value);
    vh.vault(["add", "wp", "--type", "token", &format!("token={f}")])
        .ok();
    vh.vault(["lock"]).ok();
    let wrong = "not-the-PASSMARK-passphrase";
    let run = vh.unlock_with(wrong);
    run.code(3).never_prints(wrong).never_prints(PASSPHRASE);
    assert!(
        run.stderr.to_lowercase().contains("passphrase"),
        "the error says the passphrase was wrong:\n{run}"
    );
    vh.vault(["get", "wp", "--field", "token"])
        .code(3)
        .stderr_has("vault is locked: run 'vault unlock'");
    // An empty passphrase is refused too, never treated as "no passphrase".
    vh.unlock_with("").no_panic();
    assert_eq!(vh.vault(["--json", "status"]).ok().json()["locked"], true);
    vh.unlock();
    assert_eq!(
        vh.vault(["get", "wp", "--field", "token"]).ok().stdout,
        format!("{value}\n")
    );
}

#[test]
fn commands_before_init_say_run_vault_init() {
    let vh = VaultHome::new();
    let run = vh.vault(["list"]);
    run.no_panic().stderr_has("vault init");
    assert_ne!(run.code, 0, "{run}");
    let run = vh.unlock_with(PASSPHRASE);
    assert_ne!(run.code, 0, "{run}");
    run.stderr_has("vault init");
}

#[test]
fn init_twice_refuses_and_keeps_the_identity() {
    let vh = VaultHome::new();
    vh.init();
    let identity = fs::read(vh.paths().identity()).unwrap();
    let run = vh.vault_in(["init", "--passphrase-stdin"], b"another-passphrase\n");
    run.code(5).no_panic();
    assert_eq!(fs::read(vh.paths().identity()).unwrap(), identity);
}

/// What the damaged-file tests break, and how.
#[derive(Debug, Clone, Copy)]
enum Damage {
    Truncate,
    Garbage,
}

fn damage(path: &std::path::Path, how: Damage) -> Vec<u8> {
    let original = fs::read(path).unwrap();
    let damaged = match how {
        Damage::Truncate => original[..original.len() / 3].to_vec(),
        Damage::Garbage => vault_e2e::random_bytes(original.len()),
    };
    fs::write(path, &damaged).unwrap();
    damaged
}

/// A vault with records, stopped cleanly (no WAL left behind to mask damage).
fn stopped_vault_with_records() -> VaultHome {
    let vh = VaultHome::new();
    vh.init();
    // Enough records that the database spans many pages.
    for i in 0..40 {
        let f = vh.at_file(
            &format!("v{i}"),
            &format!("{}{}", vault_e2e::secret("dmg"), "x".repeat(2000)),
        );
        vh.vault([
            "add",
            &format!("rec-{i}"),
            "--type",
            "token",
            &format!("token={f}"),
        ])
        .ok();
    }
    vh.vault(["daemon", "stop"]).ok();
    assert!(
        vh.wait_no_daemons(Duration::from_secs(10)),
        "vaultd still running 10 s after `vault daemon stop`"
    );
    for suffix in ["-wal", "-shm"] {
        let p = vh.vault_home.join(format!("vault.db{suffix}"));
        if p.exists() && fs::metadata(&p).unwrap().len() > 0 {
            panic!("{} still has data after a clean stop", p.display());
        }
    }
    vh
}

/// Runs the commands a user would try, and checks: at least one fails with a
/// clear error naming `file_name`, none panics or prints a secret, and the
/// damaged file is byte-for-byte what we wrote (nothing overwritten).
fn assert_damage_reported(vh: &VaultHome, file_name: &str, damaged: &[u8]) {
    let path = vh.vault_home.join(file_name);
    let mut runs = vec![vh.unlock_with(PASSPHRASE)];
    runs.push(vh.vault(["list", "--format", "json"]));
    runs.push(vh.vault(["get", "rec-1", "--field", "token"]));
    let f = vh.at_file("new", &vault_e2e::secret("new"));
    runs.push(vh.vault(["add", "rec-new", "--type", "token", &format!("token={f}")]));
    // init must not "repair" a damaged vault by replacing it.
    runs.push(vh.vault_in(
        ["init", "--passphrase-stdin"],
        format!("{PASSPHRASE}\n").as_bytes(),
    ));
    for r in &runs {
        r.no_panic().never_prints(MARK);
    }
    let failures: Vec<_> = runs.iter().filter(|r| r.code != 0).collect();
    assert!(
        failures.len() >= 4,
        "a damaged {file_name} must make unlock/list/get/add fail:\n{}",
        runs.iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        failures.iter().any(|r| r.stderr.contains(file_name)),
        "some error names {file_name}:\n{}",
        failures
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    vh.stop_daemons();
    assert!(
        fs::read(&path).unwrap() == damaged,
        "{} was modified after it was found damaged",
        path.display()
    );
}

#[test]
fn truncated_vault_db_is_reported_and_not_overwritten() {
    let vh = stopped_vault_with_records();
    let damaged = damage(&vh.paths().db(), Damage::Truncate);
    assert_damage_reported(&vh, "vault.db", &damaged);
}

#[test]
fn garbage_vault_db_is_reported_and_not_overwritten() {
    let vh = stopped_vault_with_records();
    let damaged = damage(&vh.paths().db(), Damage::Garbage);
    assert_damage_reported(&vh, "vault.db", &damaged);
}

#[test]
fn truncated_identity_is_reported_and_not_overwritten() {
    let vh = stopped_vault_with_records();
    let damaged = damage(&vh.paths().identity(), Damage::Truncate);
    assert_damage_reported(&vh, "identity.age", &damaged);
}

#[test]
fn garbage_identity_is_reported_and_not_overwritten() {
    let vh = stopped_vault_with_records();
    let damaged = damage(&vh.paths().identity(), Damage::Garbage);
    assert_damage_reported(&vh, "identity.age", &damaged);
}

#[test]
fn missing_identity_with_a_database_is_not_reinitialised() {
    let vh = stopped_vault_with_records();
    let db = fs::read(vh.paths().db()).unwrap();
    fs::remove_file(vh.paths().identity()).unwrap();
    let run = vh.vault_in(
        ["init", "--passphrase-stdin"],
        format!("{PASSPHRASE}\n").as_bytes(),
    );
    run.no_panic();
    vh.stop_daemons();
    // Either init refuses, or it leaves the old database alone; it must never
    // silently start a fresh vault over 40 records it cannot read.
    if run.code == 0 {
        assert_eq!(
            fs::read(vh.paths().db()).unwrap(),
            db,
            "init rewrote vault.db:\n{run}"
        );
    }
    assert_ne!(
        run.code, 0,
        "init over an orphaned vault.db should refuse:\n{run}"
    );
}

#[test]
fn second_daemon_on_the_same_vault_is_refused() {
    let vh = VaultHome::new();
    vh.init();
    let first = vh.daemon_pid().expect("the CLI started a daemon");
    let run = vh.vaultd(std::iter::empty::<&str>(), Duration::from_secs(20));
    assert_ne!(run.code, 0, "a second vaultd must refuse:\n{run}");
    assert!(
        format!("{}{}", run.stdout, run.stderr).contains("already running"),
        "the refusal says a daemon is already running:\n{run}"
    );
    assert_eq!(
        run.code, 5,
        "contract: exit 5 when another daemon holds the lock:\n{run}"
    );
    assert!(
        run.stdout.starts_with("error: ") && run.stdout.lines().count() == 1,
        "contract: exactly one `error: ...` line on stdout:\n{run}"
    );
    let fg = vh.vaultd(["--foreground"], Duration::from_secs(20));
    assert_ne!(
        fg.code, 0,
        "a second vaultd --foreground must refuse:\n{fg}"
    );
    // The first daemon still serves, from the same socket.
    assert_eq!(
        vh.daemon_pid(),
        Some(first),
        "the first daemon still answers"
    );
    vh.vault(["list"]).ok();
    assert_eq!(vh.daemon_pids(), vec![first]);
}

/// A remote of a kind this build does not know (written by a newer vault)
/// is left out of `vault status`, which still works, and said once in the
/// log, not on every status call.
#[test]
fn a_remote_of_an_unknown_kind_is_logged_once_and_status_still_works() {
    let vh = VaultHome::new();
    vh.init();
    vh.stop_daemons();
    let db = rusqlite::Connection::open(vh.paths().db()).unwrap();
    db.execute(
        "INSERT INTO remotes (name, kind, url, token, created_at) \
         VALUES ('later', 'nomad', 'https://nomad.example', x'00', 0)",
        [],
    )
    .unwrap();
    drop(db);
    vh.unlock();
    for _ in 0..3 {
        let run = vh.vault(["--json", "status"]);
        let status = run.ok().json();
        assert!(!run.stdout.contains("later"), "{status}");
    }
    let log = fs::read_to_string(vh.paths().log()).unwrap();
    let said = log
        .lines()
        .filter(|l| l.contains("unknown kind") && l.contains("later"))
        .count();
    assert_eq!(said, 1, "{log}");
}
