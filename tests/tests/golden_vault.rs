//! The real binaries open the frozen v1 vault of `daemon/tests/fixtures/v1`
//! (written by the first release): unlock, get, list, history, and a new
//! revision on top. See daemon/tests/golden_disk.rs for the format itself.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use vault_e2e::{RemoteServer, VaultHome};

#[test]
fn the_frozen_v1_vault_opens_and_keeps_working() {
    let vh = VaultHome::new();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemon/tests/fixtures/v1");
    fs::create_dir_all(&vh.vault_home).unwrap();
    fs::set_permissions(&vh.vault_home, fs::Permissions::from_mode(0o700)).unwrap();
    for name in ["vault.db", "identity.age"] {
        let to = vh.vault_home.join(name);
        fs::copy(fixtures.join(name), &to).unwrap();
        // A git checkout leaves them 0644, which vaultd rightly refuses.
        fs::set_permissions(&to, fs::Permissions::from_mode(0o600)).unwrap();
    }

    vh.vault(["get", "golden/token", "--field", "token"])
        .code(3);
    vh.unlock_with("golden-passphrase").ok();
    let run = vh.vault(["get", "golden/token", "--field", "token"]);
    run.ok();
    assert_eq!(run.stdout, "golden-token-v2\n");
    let run = vh.vault(["get", "golden-aws", "--field", "secret_access_key"]);
    run.ok();
    assert_eq!(run.stdout, "golden-secret-key\n");

    let run = vh.vault(["list", "--format", "json"]);
    run.ok();
    let names = run.names();
    assert_eq!(names, ["golden-aws", "golden/token"]);

    vh.vault(["restore", "golden/token", "--revision", "1"])
        .ok();
    let run = vh.vault(["get", "golden/token", "--field", "token"]);
    run.ok();
    assert_eq!(run.stdout, "golden-token-value\n");
    let run = vh.vault(["history", "golden/token", "--json"]);
    run.ok();
    let revisions: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(revisions.as_array().unwrap().len(), 3);
}

/// Two devices and a `vault-server`, synced with the release before
/// authenticated entries (body v2, schema v4): `daemon/tests/fixtures/v4-sync`
/// (see its make.sh). Each device upgrades at its first sync, re-
/// authenticating the records it wrote last; a device that joins afterwards
/// gets each record once the device that wrote it has upgraded, refuses the
/// old unauthenticated entries without listing them as an attack once their
/// device's authenticated chain starts, and every device ends with the same
/// values and no conflict.
#[test]
fn the_frozen_v4_synced_vault_upgrades_and_syncs() {
    const PASSPHRASE: &str = "golden-sync-passphrase";
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemon/tests/fixtures/v4-sync");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("server.db");
    fs::copy(fixtures.join("server.db"), &db).unwrap();
    let server = RemoteServer::start_on(format!("sqlite:{}", db.display()), dir);
    let vault_id = fs::read_to_string(fixtures.join("vault_id")).unwrap();
    let vault_id = vault_id.trim();

    let device = |name: &str| {
        let vh = VaultHome::new();
        fs::create_dir_all(&vh.vault_home).unwrap();
        fs::set_permissions(&vh.vault_home, fs::Permissions::from_mode(0o700)).unwrap();
        for file in ["vault.db", "identity.age"] {
            let to = vh.vault_home.join(file);
            fs::copy(fixtures.join(name).join(file), &to).unwrap();
            fs::set_permissions(&to, fs::Permissions::from_mode(0o600)).unwrap();
        }
        vh.unlock_with(PASSPHRASE).ok();
        // The server moved to a new port: log in to it again.
        vh.login(&server).ok();
        vh
    };
    let value = |vh: &VaultHome, name: &str| {
        let run = vh.vault(["get", name, "--field", "token"]);
        run.ok();
        run.stdout.trim_end().to_owned()
    };
    let a = device("a");
    assert_eq!(value(&a, "alpha"), "golden-a-token-3");
    a.vault(["sync"]).ok();

    // c joins while b is still on the old release: it gets what a wrote
    // last (alpha), and is told why beta and gamma have not arrived.
    let c = VaultHome::new();
    c.login(&server).ok();
    c.vault_in(
        ["init", "--join", vault_id, "--passphrase-stdin"],
        format!("{PASSPHRASE}\n").as_bytes(),
    )
    .ok();
    assert_eq!(value(&c, "alpha"), "golden-a-token-3");
    c.vault(["get", "beta"]).code(4);
    let status = c.vault(["sync", "status"]);
    assert!(
        status.stderr.contains("without authentication (body v2)")
            && status.stderr.contains("Upgrade vault on device"),
        "{status}"
    );

    // b upgrades: its records reach c, and the old entries stop being
    // listed as refused once each device's authenticated chain starts.
    let b = device("b");
    b.vault(["sync"]).ok();
    c.vault(["sync"]).ok();
    a.vault(["sync"]).ok();
    for vh in [&a, &b, &c] {
        assert_eq!(value(vh, "alpha"), "golden-a-token-3");
        assert_eq!(value(vh, "beta"), "golden-b-token-2");
        assert_eq!(value(vh, "gamma"), "golden-b-token-1");
        let conflicts = vh.vault(["conflicts", "--json"]);
        conflicts.ok();
        assert_eq!(conflicts.json(), serde_json::json!([]), "{conflicts}");
        let status = vh.vault(["sync", "status", "--json"]);
        status.ok();
        assert!(status.json().get("problems").is_none(), "{status}");
    }
    // History from before the upgrade stays on the devices that had it.
    let history = a.vault(["history", "alpha", "--json"]);
    history.ok();
    assert_eq!(history.json().as_array().unwrap().len(), 3);
    // New changes go on syncing everywhere.
    c.vault_in(["set", "gamma", "token=-"], b"golden-c-token")
        .ok();
    c.vault(["sync"]).ok();
    b.vault(["sync"]).ok();
    assert_eq!(value(&b, "gamma"), "golden-c-token");
}
