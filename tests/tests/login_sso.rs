//! `vault login URL --sso` (issue 27) against a real `vault-server` that
//! trusts a real OpenID provider (panva's oidc-provider, `vault_e2e::oidc`):
//! the device-code sign-in approved at the IdP, sync on the server's JWT,
//! the IdP's refresh token renewing the session (rotated each time, kept
//! sealed in the vault), and a user disabled at the IdP: sync says "sign in
//! again", changes stay queued, and a new sign-in sends them.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use vault_e2e::oidc::OidcProvider;
use vault_e2e::*;

/// `vault login URL --sso --no-browser`, approved at the IdP as `account`
/// once the code is shown; its output.
fn sign_in(vh: &VaultHome, idp: &OidcProvider, url: &str, account: &str) -> (bool, String) {
    let mut child = vh
        .command(&vh.vault_bin, ["login", url, "--sso", "--no-browser"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut said = String::new();
    let code = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("vault login ended before showing a code: {said}"))
            .unwrap();
        said.push_str(&line);
        said.push('\n');
        if let Some(rest) = line.split("approve the code ").nth(1) {
            break rest.trim_end_matches(':').to_owned();
        }
    };
    idp.approve(&code, account);
    for line in lines {
        said.push_str(&line.unwrap());
        said.push('\n');
    }
    let status = child.wait().unwrap();
    (status.success(), said)
}

#[test]
fn sync_signs_in_through_the_identity_provider_and_says_when_to_sign_in_again() {
    let Some(idp) = OidcProvider::start() else {
        return;
    };
    let server = RemoteServer::start_with(&[
        "--oidc-issuer",
        idp.issuer(),
        "--oidc-client-id",
        "vault-cli",
        "--oidc-role-map",
        "LDAP_ML_TEAM=syncers",
        "--oidc-create-users",
        // The test IdP puts groups in the ID token for this scope only.
        "--oidc-scope",
        "openid",
        "--oidc-scope",
        "offline_access",
        "--oidc-scope",
        "profile",
        "--oidc-scope",
        "groups",
        // Every sync after a second renews the sign-in at the IdP.
        "--jwt-ttl",
        "1s",
    ]);
    let out = server.admin(&[
        "role",
        "add",
        "syncers",
        "--policy",
        "vault:read,vault:write,vault:admin=*",
    ]);
    assert!(out.status.success(), "{out:?}");
    let url = server.url();

    let vh = VaultHome::new();
    vh.init();
    vh.vault(["add", "api", "--type", "token", "token=tok-SECRETMARK-1"])
        .ok();

    // A server without an IdP says how to log in instead.
    let plain = RemoteServer::start();
    vh.vault(["login", &plain.url(), "--sso"])
        .code(2)
        .stderr_has("--token-file");

    // The sign-in: the IdP's page and code, approved there.
    let (ok, said) = sign_in(&vh, &idp, &url, "alice");
    assert!(ok, "{said}");
    assert!(said.contains(&format!("{}/device", idp.issuer())), "{said}");
    let through = format!("through the identity provider {}", idp.issuer());
    assert!(said.contains(&through), "{said}");
    assert!(said.contains("logged in to"), "{said}");
    vh.vault(["sync"]).ok();
    let status = vh.vault(["sync", "status", "--json"]).json();
    assert_eq!(status["queued"], 0, "{status}");

    // The JWT runs out each second: each sync renews the sign-in with the
    // refresh token (rotated by the IdP every time; reusing an old one would
    // revoke the grant, so these syncs pass only if the newest is kept).
    for i in 0..3 {
        std::thread::sleep(Duration::from_millis(1200));
        vh.vault(["add", &format!("t{i}"), "--type", "token", "token=x"])
            .ok();
        vh.vault(["sync"]).ok();
    }
    // And across a daemon restart: the newest refresh token is in the vault.
    vh.vault(["daemon", "stop"]).ok();
    vh.unlock();
    for i in 0..2 {
        std::thread::sleep(Duration::from_millis(1200));
        vh.vault([
            "add",
            &format!("after-restart-{i}"),
            "--type",
            "token",
            "token=x",
        ])
        .ok();
        vh.vault(["sync"]).ok();
    }

    // The login is sealed in the vault: no IdP name or token in the clear.
    for entry in std::fs::read_dir(&vh.vault_home).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            // The log may name the IdP; nothing else may.
            let is_log = path.extension().is_some_and(|e| e == "log");
            assert!(
                !text.contains("sso_login") && (is_log || !text.contains(idp.issuer())),
                "{} holds the login in the clear",
                path.display()
            );
        }
    }

    // Disabled at the IdP: the refresh is refused; sync says to sign in
    // again and keeps the change queued; doctor and status say so too.
    idp.disable("alice");
    std::thread::sleep(Duration::from_millis(1200));
    vh.vault(["add", "queued", "--type", "token", "token=y"])
        .ok();
    vh.vault(["sync"])
        .code(1)
        .stderr_has("sign in again with 'vault login")
        .stderr_has("--sso")
        .stderr_has("changes stay queued");
    let status = vh.vault(["sync", "status", "--json"]).json();
    assert_eq!(status["queued"], 1, "{status}");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("sign in again"),
        "{status}"
    );
    let doctor = vh.vault(["doctor"]);
    assert!(
        format!("{}{}", doctor.stdout, doctor.stderr).contains("sign in again"),
        "{}{}",
        doctor.stdout,
        doctor.stderr
    );

    // Enabled again and signed in again: the queued change goes up.
    idp.enable("alice");
    let (ok, said) = sign_in(&vh, &idp, &url, "alice");
    assert!(ok, "{said}");
    vh.vault(["sync"]).ok();
    let status = vh.vault(["sync", "status", "--json"]).json();
    assert_eq!(status["queued"], 0, "{status}");

    // A second device joins with its own sign-in and reads the records.
    let vault_id = vh.vault(["status", "--json"]).json()["vault_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = VaultHome::new();
    let (ok, said) = sign_in(&other, &idp, &url, "alice");
    assert!(ok, "{said}");
    assert!(said.contains("vault init --join"), "{said}");
    other
        .vault_in(
            ["init", "--join", &vault_id, "--passphrase-stdin"],
            format!("{PASSPHRASE}\n").as_bytes(),
        )
        .ok();
    assert_eq!(other.field("queued", "token"), "y");
}
