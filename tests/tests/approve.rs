//! Approvals (docs/sync.md, issue 18), between real devices through a real
//! `vault-server`: a field another device set that runs a program, writes
//! a file or makes a child run code is not used on this device until
//! `vault approve` here; approvals never travel.

#![allow(clippy::unwrap_used)]

use vault_e2e::{RemoteServer, VaultHome};

/// A refresh command that leaves `marker` behind and mints `token`.
fn command(marker: &std::path::Path, token: &str) -> String {
    format!(
        r#"refresh_command=touch '{}' && echo '{{"Version":1,"token":"{token}"}}'"#,
        marker.display()
    )
}

#[test]
fn what_another_device_would_run_or_write_waits_for_vault_approve() {
    let server = RemoteServer::start();
    let a = VaultHome::new();
    a.init().ok();
    let scratch = tempfile::tempdir().unwrap();
    let ran = scratch.path().join("ran");
    let written = scratch.path().join("netrc");
    a.vault(["add", "gh", "--type", "token", &command(&ran, "minted-1")])
        .ok();
    a.vault_in(
        [
            "add",
            "netrc",
            "--type",
            "file",
            "content=-",
            &format!("path={}", written.display()),
        ],
        b"machine example.com",
    )
    .ok();
    a.vault_in(
        ["add", "git", "--type", "generic", "GIT_SSH_COMMAND=-"],
        b"ssh -o StrictHostKeyChecking=no",
    )
    .ok();
    a.vault_in(["add", "plain", "--type", "token", "token=-"], b"p-token")
        .ok();
    // An STS session whose MFA code comes from a command, at an endpoint.
    let mfa_ran = scratch.path().join("mfa-ran");
    a.add_aws("base", "AKIAAPPROVEBASE", "approve-base-secret", &[]);
    a.vault([
        "add",
        "role",
        "--type",
        "aws",
        "source=base",
        "role_arn=arn:aws:iam::123456789012:role/r",
        "mfa_serial=arn:aws:iam::123456789012:mfa/u",
        &format!("mfa_command=touch '{}'; echo 123456", mfa_ran.display()),
        "sts_endpoint=http://127.0.0.1:9/",
    ])
    .ok();
    // Typed on a: a uses them without asking.
    a.vault(["approve"])
        .ok()
        .stderr_has("nothing waits for approval");
    a.login(&server).ok();
    a.vault(["sync"]).ok();

    let b = a.join(&server);
    // A record without such fields is used as before.
    b.vault(["get", "plain", "--field", "token"])
        .ok()
        .stdout_has("p-token");
    // The others fail with exit 1 and say what to run; nothing ran or was
    // written.
    b.vault(["get", "gh", "--field", "token"])
        .code(1)
        .stderr_has("vault approve gh");
    b.vault(["exec", "-c", "git", "--", "true"])
        .code(1)
        .stderr_has("vault approve git");
    b.vault(["emit", "file", "netrc"])
        .code(1)
        .stderr_has("vault approve netrc");
    b.vault(["exec", "-c", "role", "--", "true"])
        .code(1)
        .stderr_has("mfa_command, sts_endpoint")
        .stderr_has("vault approve role");
    assert!(!mfa_ran.exists(), "an mfa_command from another device ran");
    assert!(!ran.exists(), "a refresh command from another device ran");
    assert!(!written.exists(), "a path from another device was written");
    b.vault(["doctor"])
        .ok()
        .stdout_has("approvals")
        .stdout_has("gh, git, netrc, role");

    // `vault approve` alone lists; with a name, and no terminal, it shows
    // exactly what would run and approves nothing without --yes.
    let listed = b.vault(["approve", "--json"]);
    listed.ok();
    let waiting = listed.json();
    assert_eq!(waiting.as_array().unwrap().len(), 4, "{waiting}");
    assert_eq!(waiting[0]["name"], "gh");
    assert_eq!(waiting[0]["fields"][0]["field"], "refresh_command");
    b.vault(["approve", "gh"])
        .code(2)
        .stderr_has(&format!("touch '{}'", ran.display()))
        .stderr_has("--yes");
    b.vault(["get", "gh", "--field", "token"]).code(1);
    b.vault(["approve", "gh", "--yes"])
        .ok()
        .stderr_has("approved gh");
    b.vault(["get", "gh", "--field", "token"])
        .ok()
        .stdout_has("minted-1");
    assert!(ran.exists(), "the approved refresh command did not run");

    // A new value from a waits again, even where the old one was approved.
    std::fs::remove_file(&ran).unwrap();
    a.vault(["set", "gh", &command(&ran, "minted-2")]).ok();
    a.vault(["sync"]).ok();
    b.vault(["sync"]).ok();
    b.vault(["exec", "-c", "gh", "--", "true"])
        .code(1)
        .stderr_has("vault approve gh");
    assert!(!ran.exists());

    // --all --yes approves everything listed.
    b.vault(["approve", "--all", "--yes"])
        .ok()
        .stderr_has("approved gh")
        .stderr_has("approved netrc");
    b.vault(["emit", "file", "netrc"]).ok();
    assert_eq!(
        std::fs::read_to_string(&written).unwrap(),
        "machine example.com"
    );
    b.vault(["exec", "-c", "git", "--", "true"]).ok();
    b.vault(["approve"])
        .ok()
        .stderr_has("nothing waits for approval");

    // Approvals stay where they were made: a device that joins now asks.
    let c = a.join(&server);
    c.vault(["exec", "-c", "git", "--", "true"])
        .code(1)
        .stderr_has("vault approve git");
}
