//! docs/protocol.md: the socket is 0600 in a 0700 dir, and the daemon checks the
//! peer's uid on every connection. Needs root (to create a second user and
//! run processes as it); skipped with a message otherwise.
//!
//! (a) another user cannot connect to a root daemon's socket;
//! (b) a daemon run by another user drops a connection from root. Root
//!     bypasses file permissions, so this exercises the peer-uid check itself;
//! (c) with every directory above the vault opened up, another user still
//!     cannot list or read any vault file, nor get a secret out through the
//!     credential helpers (`docker-credential-vault`, `git-credential-vault`)
//!     pointed at the vault (`VAULT_HOME`, `VAULT_SOCKET`).

// Helper fns of a test report failure by panicking.
#![allow(clippy::unwrap_used)]

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use vault_e2e::{MARK, Run, TempUser, VaultHome, hello, run_command};

#[test]
fn a_second_uid_cannot_talk_to_the_daemon() {
    let Some(user) = TempUser::create("other_user") else {
        return;
    };

    // (a) A root daemon; the other user tries its socket.
    let root_vault = VaultHome::new();
    root_vault.init();
    let f = root_vault.at_file("v", &vault_e2e::secret("root"));
    root_vault
        .vault(["add", "root-rec", "--type", "token", &format!("token={f}")])
        .ok();
    let root_pid = root_vault.daemon_pid().expect("root daemon");

    let other = VaultHome::new_as(user.uid, user.gid);
    let socket = root_vault.socket();
    let socket_str = socket.to_str().unwrap();
    for args in [
        vec!["--socket", socket_str, "list", "--format", "json"],
        vec![
            "--socket", socket_str, "get", "root-rec", "--field", "token",
        ],
        vec!["--socket", socket_str, "--json", "status"],
    ] {
        let run = other.vault(&args);
        assert_ne!(
            run.code, 0,
            "uid {} reached root's daemon:\n{run}",
            user.uid
        );
        run.never_prints(MARK).never_prints("root-rec").no_panic();
    }
    // The kernel already hides it: the 0700 runtime dir cannot be entered.
    let probe = other.command(
        std::path::Path::new("/bin/sh"),
        [
            "-c",
            "test -e \"$0\" && echo visible || echo hidden",
            socket_str,
        ],
    );
    let probe = vault_e2e::run_command(probe, None, vault_e2e::DEFAULT_TIMEOUT);
    assert_eq!(probe.stdout.trim(), "hidden", "{probe}");
    assert_eq!(
        root_vault.daemon_pid(),
        Some(root_pid),
        "root daemon unharmed"
    );

    // (b) A daemon of the other user; root connects to it directly.
    other.init();
    // Found through /proc: connecting as root must not work (that is the point).
    let other_pid = *other
        .daemon_pids()
        .first()
        .expect("the other user's daemon is running");
    let status = std::fs::read_to_string(format!("/proc/{other_pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().nth(1) == Some(&user.uid.to_string()),
        "the daemon runs as the other user: {uid_line}"
    );
    let f = other.at_file("v", &vault_e2e::secret("other"));
    other
        .vault(["add", "other-rec", "--type", "token", &format!("token={f}")])
        .ok();

    // Root bypasses the file permissions, so only the daemon's peer-uid check
    // stands between root's connection and the records.
    match other.connect() {
        Err(e) => panic!("root could not even connect ({e}); expected the daemon to drop it"),
        Ok(mut s) => {
            match hello(&mut s) {
                Ok(pid) => panic!("daemon {pid} of uid {} answered root's Hello", user.uid),
                Err(e) => eprintln!("root's Hello was refused as expected: {e}"),
            }
            let get = vault_e2e::request(
                &mut s,
                2,
                vault_protocol::Request::Get {
                    name: "other-rec".to_owned(),
                },
            );
            match get {
                Ok(frame) => assert!(
                    frame.ok.is_none(),
                    "root read another user's record: {:?}",
                    frame.ok
                ),
                Err(vault_protocol::frame::FrameError::Io(e))
                    if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {}
                Err(_) => {}
            }
        }
    }
    // Root's CLI pointed at that socket fails too.
    let other_socket = other.socket();
    let run = root_vault.vault([
        "--socket",
        other_socket.to_str().unwrap(),
        "get",
        "other-rec",
        "--field",
        "token",
    ]);
    assert_ne!(
        run.code, 0,
        "root's CLI read the other user's vault:\n{run}"
    );
    run.never_prints(MARK).no_panic();
    // The other user's daemon is still serving its owner.
    other.vault(["get", "other-rec", "--field", "token"]).ok();
    assert_eq!(other.daemon_pids().len(), 1);
}

/// Runs `program ARGS` as `other`'s user, with `env` on top of its
/// environment, `input` on stdin.
fn run_as(
    other: &VaultHome,
    program: &Path,
    args: &[&str],
    env: &[(&str, &Path)],
    input: &str,
) -> Run {
    let mut cmd = other.command(program, args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_command(cmd, Some(input.as_bytes()), vault_e2e::DEFAULT_TIMEOUT)
}

#[test]
fn a_second_uid_cannot_read_the_files_or_use_a_helper() {
    let Some(user) = TempUser::create("other_user") else {
        return;
    };
    let root_vault = VaultHome::new();
    root_vault.init();
    let auth = vault_e2e::secret("registry");
    root_vault.add_registry("ngc", "nvcr.io", "$oauthtoken", &auth);
    let pw = vault_e2e::secret("git");
    let f = root_vault.at_file("pw", &pw);
    root_vault
        .vault([
            "add",
            "github",
            "--type",
            "password",
            "username=octo",
            &format!("password={f}"),
            "url=https://github.com",
        ])
        .ok();
    // The harness's temp dir is private; open it up so only the vault's own
    // modes (0700 dirs, 0600 files) stand between the other user and it.
    std::fs::set_permissions(root_vault.root(), std::fs::Permissions::from_mode(0o755)).unwrap();

    let other = VaultHome::new_as(user.uid, user.gid);
    let sh = Path::new("/bin/sh");
    // Listing the vault dir, and reading every file and the socket in it.
    let ls = run_as(
        &other,
        sh,
        &[
            "-c",
            "ls -la \"$0\"",
            root_vault.vault_home.to_str().unwrap(),
        ],
        &[],
        "",
    );
    assert_ne!(ls.code, 0, "uid {} listed the vault dir:\n{ls}", user.uid);
    let files: Vec<_> = vault_e2e::walk(&root_vault.vault_home)
        .into_iter()
        .filter(|(p, _)| p != &root_vault.vault_home)
        .collect();
    assert!(files.len() >= 4, "the vault has files: {files:?}");
    for (path, _) in &files {
        let cat = run_as(
            &other,
            sh,
            &["-c", "cat \"$0\"", path.to_str().unwrap()],
            &[],
            "",
        );
        assert_ne!(
            cat.code,
            0,
            "uid {} read {}:\n{cat}",
            user.uid,
            path.display()
        );
        cat.never_prints(MARK);
    }

    // The helpers, as the other user, pointed at root's vault.
    let helper_dir = other.root().join("helpers");
    std::fs::create_dir(&helper_dir).unwrap();
    std::os::unix::fs::chown(&helper_dir, Some(user.uid), Some(user.gid)).unwrap();
    let docker = helper_dir.join("docker-credential-vault");
    let git = helper_dir.join("git-credential-vault");
    for link in [&docker, &git] {
        std::os::unix::fs::symlink(&other.vault_bin, link).unwrap();
    }
    let socket = root_vault.socket();
    let envs: [&[(&str, &Path)]; 2] = [
        &[("VAULT_HOME", &root_vault.vault_home)],
        &[("VAULT_SOCKET", &socket)],
    ];
    for env in envs {
        let run = run_as(&other, &docker, &["get"], env, "nvcr.io\n");
        assert_ne!(
            run.code, 0,
            "docker helper as uid {} with {env:?}:\n{run}",
            user.uid
        );
        run.never_prints(MARK).no_panic();
        let run = run_as(&other, &docker, &["list"], env, "");
        assert!(
            !run.stdout.contains("nvcr.io"),
            "docker helper listed root's registry:\n{run}"
        );
        run.never_prints(MARK).no_panic();
        let run = run_as(
            &other,
            &git,
            &["get"],
            env,
            "protocol=https\nhost=github.com\n\n",
        );
        assert!(
            !run.stdout.contains("password="),
            "git helper as uid {} with {env:?} answered a password:\n{run}",
            user.uid
        );
        run.never_prints(MARK).no_panic();
    }
    // Nothing the other user did started a daemon of theirs on root's vault,
    // and root's daemon still serves root.
    assert_eq!(root_vault.daemon_pids().len(), 1);
    assert_eq!(
        root_vault
            .vault(["get", "ngc", "--field", "auth"])
            .ok()
            .stdout,
        format!("{auth}\n")
    );
}
