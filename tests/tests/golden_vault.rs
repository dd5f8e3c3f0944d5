//! The real binaries open the frozen v1 vault of `daemon/tests/fixtures/v1`
//! (written by the first release): unlock, get, list, history, and a new
//! revision on top. See daemon/tests/golden_disk.rs for the format itself.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use vault_e2e::VaultHome;

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
