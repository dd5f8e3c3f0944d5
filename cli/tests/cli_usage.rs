//! The real `vault` binary, for everything that needs no daemon: help,
//! version, completions, and usage errors caught before any connection.
//! (Building this test also builds the binary the end-to-end suite runs.)
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output, Stdio};

/// Runs `vault` with a private, empty VAULT_HOME so no test touches the real
/// home or reaches a real daemon.
fn vault(args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_vault"))
        .args(args)
        .env("VAULT_HOME", home.path())
        .env_remove("VAULT_SOCKET")
        .env_remove("VAULT_PASSPHRASE_FILE")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_lists_the_commands() {
    let o = vault(&["--help"]);
    assert!(o.status.success());
    let text = stdout(&o);
    for cmd in [
        "init",
        "unlock",
        "lock",
        "status",
        "add",
        "set",
        "get",
        "list",
        "rm",
        "rename",
        "history",
        "restore",
        "daemon",
        "completions",
    ] {
        assert!(text.contains(cmd), "{cmd} missing from:\n{text}");
    }
}

#[test]
fn version() {
    let o = vault(&["--version"]);
    assert!(o.status.success());
    assert_eq!(
        stdout(&o).trim(),
        format!("vault {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn completions_for_each_shell() {
    // Run by a path, the script calls this very binary on each Tab.
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_vault")).unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let o = vault(&["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let script = stdout(&o);
        assert!(script.contains("VAULT_COMPLETE="), "{shell}:\n{script}");
        assert!(
            script.contains(exe.to_str().unwrap()),
            "{shell} does not call {}:\n{script}",
            exe.display()
        );
    }
    let o = vault(&["completions", "elvish"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn a_tab_without_a_daemon_offers_every_subcommand_and_starts_nothing() {
    let home = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_vault"))
        .args(["--", "vault", ""])
        .env("VAULT_HOME", home.path())
        .env("VAULT_COMPLETE", "fish")
        .env_remove("VAULT_SOCKET")
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    let words: Vec<String> = stdout(&o)
        .lines()
        .map(|l| l.split('\t').next().unwrap().to_owned())
        .collect();
    for name in ["get", "exec", "otp", "edit", "emit", "completions"] {
        assert!(words.contains(&name.to_owned()), "{name} not in {words:?}");
    }
    // Names need the daemon: none offered, none started.
    let o = Command::new(env!("CARGO_BIN_EXE_vault"))
        .args(["--", "vault", "get", ""])
        .env("VAULT_HOME", home.path())
        .env("VAULT_COMPLETE", "fish")
        .env_remove("VAULT_SOCKET")
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    assert!(
        !stdout(&o).lines().any(|l| !l.starts_with('-')),
        "names without a daemon: {}",
        stdout(&o)
    );
    for started in ["vaultd.lock", "run"] {
        assert!(
            !home.path().join(started).exists(),
            "a daemon was started: {started} exists"
        );
    }
}

#[test]
fn missing_required_fields_are_all_listed() {
    let o = vault(&["add", "aws-dev", "--type", "aws", "region=eu-west-1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("access_key_id, secret_access_key"),
        "stderr: {err}"
    );
    assert!(err.starts_with("vault: "), "stderr: {err}");
}

#[test]
fn upper_case_platform_types_and_payload() {
    let o = vault(&[
        "add",
        "my-ngc",
        "--type",
        "REGISTRY",
        "--payload",
        "registry=nvcr.io",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("username, auth"), "{}", stderr(&o));
}

#[test]
fn invalid_name_is_a_usage_error() {
    let o = vault(&["add", "-bad", "--type", "token", "token=-"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = vault(&["add", "bad name", "--type", "token", "token=-"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("invalid name"), "{}", stderr(&o));
}

#[test]
fn bare_field_without_terminal_is_a_usage_error() {
    let o = vault(&["add", "gh", "--type", "token", "token"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("token=-"), "{}", stderr(&o));
}

#[test]
fn unknown_type_and_unknown_field() {
    let o = vault(&["add", "x", "--type", "kerberos", "a=b"]);
    assert_eq!(o.status.code(), Some(2));
    let o = vault(&["add", "x", "--type", "token", "token=-", "tok=1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown field 'tok'"), "{}", stderr(&o));
}

#[test]
fn json_usage_errors_are_json_on_stdout() {
    let o = vault(&["--json", "add", "aws-dev", "--type", "aws"]);
    assert_eq!(o.status.code(), Some(2));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(doc["error"]["code"], "usage");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("secret_access_key")
    );
}

#[test]
fn init_without_a_passphrase_source_explains_how() {
    let o = vault(&["init"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--passphrase-stdin"), "{}", stderr(&o));
}

#[test]
fn daemon_status_does_not_start_a_daemon() {
    let home = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_vault"))
        .args(["--json", "daemon", "status"])
        .env("VAULT_HOME", home.path())
        .env_remove("VAULT_SOCKET")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(doc["running"], false);
    assert!(!home.path().join("run").join("vaultd.sock").exists());
}
