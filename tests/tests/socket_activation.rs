//! Socket activation (systemd's `LISTEN_FDS` protocol,
//! `packaging/systemd/vaultd.socket`): the test plays the service manager —
//! it binds the vault's socket, then starts `vaultd --foreground` with that
//! socket as fd 3, `LISTEN_FDS=1` and `LISTEN_PID` set to vaultd's own pid
//! (a shell sets `LISTEN_PID=$$` and execs vaultd, keeping the pid).

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use vault_e2e::{VaultHome, secret};

fn private_dir(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
}

/// A new vault home whose home and runtime dirs exist, 0700, as a
/// service manager's socket unit leaves them.
fn private_home() -> VaultHome {
    let vh = VaultHome::new();
    private_dir(&vh.vault_home);
    private_dir(&vh.paths().runtime_dir);
    vh
}

/// Binds `path` as a service manager would (0600) and starts vaultd on it.
/// Returns the child and the file its stderr goes to.
fn activate(vh: &VaultHome, path: &Path) -> (Child, PathBuf) {
    activate_all(vh, &[path])
}

/// Binds each of `paths` (fds 3, 4…, `LISTEN_FDS` = their number), as a
/// socket unit with several `ListenStream=` does, and starts vaultd on them.
fn activate_all(vh: &VaultHome, paths: &[&Path]) -> (Child, PathBuf) {
    let mappings = paths
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let listener = UnixListener::bind(path).unwrap();
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
            FdMapping {
                parent_fd: OwnedFd::from(listener),
                child_fd: 3 + i as i32,
            }
        })
        .collect();
    let stderr = vh.root().join("vaultd.stderr");
    let mut cmd = vh.command(
        Path::new("/bin/sh"),
        [
            "-c",
            &format!(
                "LISTEN_PID=$$ LISTEN_FDS={} exec \"$0\" --foreground",
                paths.len()
            ),
            vh.vaultd_bin.to_str().unwrap(),
        ],
    );
    cmd.fd_mappings(mappings)
        .unwrap()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr).unwrap());
    let child = cmd.spawn().unwrap();
    // Our copy of the listening socket goes with `cmd`: only vaultd holds it.
    drop(cmd);
    (child, stderr)
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn vaultd_serves_the_socket_the_service_manager_passed() {
    let vh = private_home();
    let (mut child, stderr) = activate(&vh, &vh.socket());

    // The CLI finds a daemon on the socket and never starts its own.
    vh.init();
    let status = vh.vault(["--json", "daemon", "status"]).ok().json();
    assert_eq!(status["pid"], child.id(), "the activated vaultd answers");
    let token = secret("activated");
    vh.vault_in(
        ["add", "gh", "--type", "token", "token=-"],
        token.as_bytes(),
    )
    .ok();
    let got = vh.vault(["get", "gh", "--field", "token"]);
    assert_eq!(got.ok().stdout.trim_end(), token);

    // Stopping it leaves the socket file to its owner, the service manager.
    vh.vault(["daemon", "stop"]).ok();
    let exit = wait_exit(&mut child, Duration::from_secs(10)).expect("vaultd exits");
    assert!(
        exit.success(),
        "{exit}: {}",
        fs::read_to_string(&stderr).unwrap()
    );
    assert!(
        vh.socket().exists(),
        "vaultd must not remove a socket it did not make"
    );
    let log = fs::read_to_string(vh.paths().log()).unwrap();
    assert!(log.contains("passed by the service manager"), "{log}");
}

#[test]
fn an_inherited_socket_in_an_open_directory_is_refused() {
    let vh = VaultHome::new();
    private_dir(&vh.vault_home);
    let run = vh.paths().runtime_dir;
    private_dir(&run);
    fs::set_permissions(&run, fs::Permissions::from_mode(0o755)).unwrap();
    let (mut child, stderr) = activate(&vh, &vh.socket());
    let exit = wait_exit(&mut child, Duration::from_secs(10)).expect("vaultd exits");
    assert!(!exit.success());
    let err = fs::read_to_string(&stderr).unwrap();
    assert!(
        err.contains(&format!("chmod 700 {}", run.display())),
        "{err}"
    );
}

#[test]
fn an_inherited_socket_at_another_path_is_refused() {
    let vh = private_home();
    let elsewhere = vh.paths().runtime_dir.join("other.sock");
    let (mut child, stderr) = activate(&vh, &elsewhere);
    let exit = wait_exit(&mut child, Duration::from_secs(10)).expect("vaultd exits");
    assert!(!exit.success());
    let err = fs::read_to_string(&stderr).unwrap();
    assert!(err.contains("ListenStream="), "{err}");
    assert!(err.contains("other.sock"), "{err}");
}

#[test]
fn listen_fds_meant_for_another_process_are_ignored() {
    let mut vh = VaultHome::new();
    // Leaked from a parent: LISTEN_PID is not vaultd's, and no fd 3 exists.
    vh.env.insert("LISTEN_PID".into(), "1".into());
    vh.env.insert("LISTEN_FDS".into(), "1".into());
    vh.init();
    vh.vault(["status"]).ok();
}

/// What `packaging/systemd/vaultd.socket` does: both the vault's socket and
/// the SSH agent's are passed, in either order; the agent serves on the one
/// it was given, and both files are left to the service manager.
#[test]
fn the_ssh_agent_serves_the_socket_the_service_manager_passed() {
    for agent_first in [false, true] {
        let vh = private_home();
        let (main, agent) = (vh.socket(), vh.paths().agent_socket());
        let order: [&Path; 2] = if agent_first {
            [&agent, &main]
        } else {
            [&main, &agent]
        };
        let (mut child, stderr) = activate_all(&vh, &order);
        vh.init();
        let status = vh.vault(["--json", "daemon", "status"]).ok().json();
        assert_eq!(status["pid"], child.id(), "the activated vaultd answers");
        // An identities request on the passed agent socket is answered.
        let mut s = std::os::unix::net::UnixStream::connect(&agent).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        use std::io::{Read, Write};
        s.write_all(&[0, 0, 0, 1, 11]).unwrap();
        let mut answer = [0u8; 9];
        s.read_exact(&mut answer).unwrap();
        assert_eq!(answer, [0, 0, 0, 5, 12, 0, 0, 0, 0], "no identities yet");
        drop(s);
        vh.vault(["daemon", "stop"]).ok();
        let exit = wait_exit(&mut child, Duration::from_secs(10)).expect("vaultd exits");
        assert!(
            exit.success(),
            "{exit}: {}",
            fs::read_to_string(&stderr).unwrap()
        );
        assert!(main.exists() && agent.exists(), "both left to their owner");
        let log = fs::read_to_string(vh.paths().log()).unwrap();
        assert!(
            log.contains("ssh agent serving a socket passed by the service manager"),
            "{log}"
        );
    }
}

#[test]
fn a_third_inherited_socket_is_refused() {
    let vh = private_home();
    let extra = vh.paths().runtime_dir.join("extra.sock");
    let (main, agent) = (vh.socket(), vh.paths().agent_socket());
    let (mut child, stderr) = activate_all(&vh, &[&main, &agent, &extra]);
    let exit = wait_exit(&mut child, Duration::from_secs(10)).expect("vaultd exits");
    assert!(!exit.success());
    let err = fs::read_to_string(&stderr).unwrap();
    assert!(err.contains("two at most"), "{err}");
}
