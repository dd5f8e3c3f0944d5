//! The audit log (issue 24, docs/lifecycle.md) through the real binaries:
//! each hand-out names the client process the kernel reports for the
//! socket and its parents; entries reach vault.db at the next tick or at
//! lock; an entry changed, deleted or cut off in vault.db is reported.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::time::Duration;

use vault_e2e::{VaultHome, run_command, secret};

fn canonical(p: &std::path::Path) -> String {
    std::fs::canonicalize(p).unwrap().display().to_string()
}

#[test]
fn every_hand_out_names_its_client_and_a_changed_log_is_reported() {
    let vh = VaultHome::new();
    vh.init().ok();
    let token = secret("audited");
    vh.vault_in(
        ["add", "gh", "--type", "token", "token=-"],
        token.as_bytes(),
    )
    .ok();
    vh.add_aws("prod", "AKIAAUDITED", &secret("aws-audited"), &[]);
    vh.add_registry("ngc", "nvcr.io", "$oauthtoken", &secret("registry-audited"));

    vh.vault(["get", "gh", "--field", "token"]).ok();
    vh.vault(["exec", "-c", "gh", "--", "true"]).ok();
    vh.vault(["aws-process", "prod"]).ok();
    let bin = vh.root().join("helper-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper: PathBuf = bin.join("docker-credential-vault");
    symlink(&vault_e2e::binaries().vault, &helper).unwrap();
    run_command(
        vh.command(&helper, ["get"]),
        Some(b"nvcr.io\n"),
        Duration::from_secs(60),
    )
    .ok();
    // Locked before the tick: the lock writes what waits.
    vh.vault(["lock"]).ok();
    vh.unlock().ok();

    let (entries, problems, status) = vh.audit(&[]);
    assert_eq!(status, 0, "{problems:?}");
    assert!(problems.is_empty(), "{problems:?}");
    let vault = canonical(&vault_e2e::binaries().vault);
    let me = std::process::id();
    let test_exe = canonical(&std::env::current_exe().unwrap());
    let find = |needle: &str| {
        entries
            .iter()
            .find(|e| e["client"]["cmdline"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("no entry by '{needle}' in {entries:#?}"))
            .clone()
    };
    for (needle, name, op) in [
        ("get gh --field token", "gh", "get"),
        ("exec -c gh -- true", "gh", "resolve"),
        ("aws-process prod", "prod", "get"),
        ("docker-credential-vault get", "ngc", "resolve"),
    ] {
        let e = find(needle);
        assert_eq!(e["name"], name, "{e:#}");
        assert_eq!(e["op"], op, "{e:#}");
        assert_eq!(e["client"]["exe"], vault.as_str(), "{e:#}");
        assert!(e["client"]["pid"].as_u64().unwrap() > 1);
        // Its parent is this test, which ran it.
        assert_eq!(e["parents"][0]["pid"], me, "{e:#}");
        assert_eq!(e["parents"][0]["exe"], test_exe.as_str(), "{e:#}");
    }
    assert_eq!(entries.len(), 4, "{entries:#?}");
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    // list --used: each record's last hand-out, and by what.
    let listed = vh.vault(["list", "--used", "--json"]).json();
    let used = |n: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == n)
            .unwrap()["last_used"]
            .clone()
    };
    assert_eq!(used("gh")["op"], "resolve");
    assert!(
        used("gh")["by"]
            .as_str()
            .unwrap()
            .ends_with("exec -c gh -- true")
    );
    assert!(
        used("ngc")["by"]
            .as_str()
            .unwrap()
            .contains("docker-credential-vault get")
    );
    let plain = vh.vault(["list"]).ok().stdout.clone();
    assert!(!plain.contains("exec -c gh"), "{plain}");
    let tsv = vh.vault(["list", "--used"]).ok().stdout.clone();
    let gh_line = tsv
        .lines()
        .find(|l| l.starts_with("gh\t"))
        .unwrap()
        .to_owned();
    assert_eq!(gh_line.split('\t').count(), 6, "{gh_line}");
    assert!(gh_line.ends_with("exec -c gh -- true"), "{gh_line}");
    // One credential's entries; a window.
    let (gh, ..) = vh.audit(&["gh"]);
    assert_eq!(gh.len(), 2);
    let (recent, ..) = vh.audit(&["--since", "1h"]);
    assert_eq!(recent.len(), 4);
    let (none, ..) = vh.audit(&["--since", "2099-01-01T00:00:00Z"]);
    assert!(none.is_empty());
    vh.vault(["audit", "--since", "soon"]).code(2);
    vh.vault(["audit", "nope"]).code(4);

    // vault.db changed behind vaultd's back, one way at a time.
    let tamper = |sql: &str| {
        vh.stop_daemons();
        let db = rusqlite::Connection::open(vh.vault_home.join("vault.db")).unwrap();
        assert_eq!(db.execute(sql, []).unwrap(), 1, "{sql}");
        drop(db);
        vh.unlock().ok();
    };
    tamper("UPDATE audit SET at = at - 60 WHERE seq = 2");
    let (_, problems, status) = vh.audit(&[]);
    assert_eq!(status, 1);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("entry 2 was changed outside vaultd")),
        "{problems:?}"
    );
    tamper("DELETE FROM audit WHERE seq = 3");
    let (entries, problems, _) = vh.audit(&[]);
    assert!(
        problems.iter().any(|p| p == "entry 3 is missing"),
        "{problems:?}"
    );
    assert_eq!(entries.len(), 3);
    tamper("DELETE FROM audit WHERE seq = 4");
    let (_, problems, _) = vh.audit(&[]);
    assert!(
        problems
            .iter()
            .any(|p| p == "entries 3..=4 are missing: the log was cut off"),
        "{problems:?}"
    );
    let run = vh.vault(["audit"]);
    run.code(1).stderr_has("the audit log is not whole");
}

#[test]
fn a_log_turned_off_records_nothing() {
    let vh = VaultHome::new();
    vh.write_config("[audit]\nenabled = false\n");
    vh.init().ok();
    vh.vault_in(
        ["add", "gh", "--type", "token", "token=-"],
        secret("t").as_bytes(),
    )
    .ok();
    vh.vault(["get", "gh"]).ok();
    vh.vault(["lock"]).ok();
    vh.unlock().ok();
    let (entries, problems, status) = vh.audit(&[]);
    assert!(entries.is_empty() && problems.is_empty() && status == 0);
}

/// What the daemon hands out on its own is recorded with the daemon as the
/// client: an emitted file rewritten after a change (`emit_rewrite`).
#[test]
fn a_file_the_daemon_rewrites_is_recorded_as_its_own_hand_out() {
    let vh = VaultHome::new();
    vh.init().ok();
    vh.add_aws("dev", "AKIAREWRITE", &secret("rewrite-1"), &[]);
    vh.vault(["emit", "aws", "dev", "--profile", "dev"]).ok();
    vh.vault_in(
        ["set", "dev", "secret_access_key=-"],
        secret("rewrite-2").as_bytes(),
    )
    .ok();
    vh.vault(["lock"]).ok();
    vh.unlock().ok();
    let (entries, problems, _) = vh.audit(&["dev"]);
    assert!(problems.is_empty(), "{problems:?}");
    let ops: Vec<&str> = entries.iter().map(|e| e["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["emit_aws", "emit_rewrite"], "{entries:#?}");
    let rewrite = &entries[1];
    assert_eq!(
        rewrite["client"]["exe"],
        canonical(&vault_e2e::binaries().vaultd).as_str(),
        "{rewrite:#}"
    );
}
