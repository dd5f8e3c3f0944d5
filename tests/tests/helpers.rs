//! `docker-credential-vault` and `git-credential-vault` (docs/user-guide.md, issue 4):
//! the `vault` binary under those names. Docker's protocol is driven
//! directly (get/store/list/erase/version and the miss message); git's
//! through `git credential fill|approve|reject` with the helper configured,
//! when git is installed.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vault_e2e::{MARK, Run, VaultHome, run_command, secret, which};

fn helper(vh: &VaultHome, name: &str) -> PathBuf {
    let bin = vh.root().join("helper-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let link = bin.join(name);
    if !link.exists() {
        symlink(&vault_e2e::binaries().vault, &link).unwrap();
    }
    link
}

fn call(vh: &VaultHome, program: &Path, args: &[&str], input: &str) -> Run {
    let cmd = vh.command(program, args);
    run_command(cmd, Some(input.as_bytes()), Duration::from_secs(60))
}

#[test]
fn docker_credential_helper_protocol() {
    let vh = VaultHome::new();
    vh.init();
    let h = helper(&vh, "docker-credential-vault");
    let pass = secret("docker-helper");
    vh.add_registry("ngc", "nvcr.io", "$oauthtoken", &pass);

    let run = call(&vh, &h, &["get"], "nvcr.io\n");
    run.ok();
    let got: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(got["Username"], "$oauthtoken");
    assert_eq!(got["Secret"], pass.as_str());
    assert_eq!(got["ServerURL"], "nvcr.io");

    let run = call(&vh, &h, &["get"], "https://unknown.example/v1/\n");
    run.code(1);
    assert_eq!(
        run.stdout.trim(),
        "credentials not found in native keychain"
    );

    let stored = secret("stored");
    let doc = format!(r#"{{"ServerURL":"https://ghcr.io","Username":"me","Secret":"{stored}"}}"#);
    call(&vh, &h, &["store"], &doc).ok().never_prints(MARK);
    assert_eq!(
        vh.vault(["get", "ghcr.io", "--field", "auth"]).ok().stdout,
        format!("{stored}\n")
    );
    let list: serde_json::Value =
        serde_json::from_str(call(&vh, &h, &["list"], "").ok().stdout.trim()).unwrap();
    assert_eq!(list["nvcr.io"], "$oauthtoken");
    assert_eq!(list["ghcr.io"], "me");
    call(&vh, &h, &["erase"], "ghcr.io\n").ok();
    vh.vault(["get", "ghcr.io"]).code(4);
    assert!(
        call(&vh, &h, &["version"], "")
            .ok()
            .stdout
            .contains("docker-credential-vault")
    );
}

#[test]
fn git_fills_approves_and_rejects_through_the_helper() {
    let Some(git) = which("git") else {
        eprintln!("SKIP git helper: git is not installed (apt-get install git; bash .ci/run does)");
        return;
    };
    let vh = VaultHome::new();
    vh.init();
    let h = helper(&vh, "git-credential-vault");
    let helper_cfg = format!("credential.helper={}", h.display());
    let token = secret("git");
    let f = vh.at_file("tok", &token);
    vh.vault([
        "add",
        "github",
        "--type",
        "password",
        "username=octo",
        &format!("password={f}"),
        "url=https://github.com",
    ])
    .ok();
    let git_call = |args: &[&str], input: &str| {
        let mut all = vec!["-c", &helper_cfg, "-c", "credential.interactive=false"];
        all.extend_from_slice(args);
        let mut cmd = vh.command(&git, &all);
        cmd.env("GIT_TERMINAL_PROMPT", "0");
        run_command(cmd, Some(input.as_bytes()), Duration::from_secs(60))
    };
    let run = git_call(
        &["credential", "fill"],
        "protocol=https\nhost=github.com\n\n",
    );
    run.ok();
    assert!(run.stdout.contains("username=octo\n"), "{run}");
    assert!(run.stdout.contains(&format!("password={token}\n")), "{run}");

    // approve stores a new one; reject erases it.
    git_call(
        &["credential", "approve"],
        "protocol=https\nhost=git.example.com\nusername=me\npassword=pw-stored-by-git\n\n",
    )
    .ok();
    assert_eq!(
        vh.vault(["get", "git.example.com", "--field", "password"])
            .ok()
            .stdout,
        "pw-stored-by-git\n"
    );
    git_call(
        &["credential", "reject"],
        "protocol=https\nhost=git.example.com\nusername=me\n\n",
    )
    .ok();
    vh.vault(["get", "git.example.com"]).code(4);
}
