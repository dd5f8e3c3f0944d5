//! Starting and stopping `vaultd` (issue 2, connect-or-start): `vault daemon
//! stop|restart|status`, SIGTERM, a stale socket after `kill -9`, and a
//! command issued right after a stop.

use std::time::Duration;

use vault_e2e::{VaultHome, kill_pid, pid_alive};

#[test]
fn daemon_stop_returns_only_after_the_daemon_exited() {
    let vh = VaultHome::new();
    vh.init();
    let pid = vh.daemon_pid().unwrap();
    vh.vault(["daemon", "stop"]).ok();
    // Checked at once: `stop` means stopped (lock released, database
    // closed), so a backup or a new daemon can follow immediately.
    let alive = pid_alive(pid);
    assert!(
        vh.wait_no_daemons(Duration::from_secs(10)),
        "vaultd {pid} still running 10 s after `vault daemon stop`"
    );
    assert!(
        !alive,
        "`vault daemon stop` returned while vaultd {pid} was still running"
    );
    assert!(!vh.socket().exists(), "socket removed");
    let again = vh.vault(["daemon", "stop"]);
    again.ok();
}

#[test]
fn commands_right_after_a_stop_never_race_the_old_daemon() {
    let vh = VaultHome::new();
    vh.init();
    for round in 0..10 {
        vh.vault(["daemon", "stop"]).ok();
        let run = vh.vault(["list"]);
        assert_eq!(
            run.code, 3,
            "round {round}: right after a stop, a command starts a new (locked) daemon:\n{run}"
        );
        assert!(
            !run.stderr.contains("already running"),
            "round {round}:\n{run}"
        );
    }
}

#[test]
fn daemon_restart_and_status() {
    let vh = VaultHome::new();
    vh.init();
    let old = vh.daemon_pid().unwrap();
    let status = vh.vault(["--json", "daemon", "status"]);
    status.ok();
    vh.vault(["daemon", "restart"]).ok();
    let new = vh.daemon_pid().expect("restart leaves a daemon running");
    assert_ne!(old, new);
    assert!(!pid_alive(old), "the old daemon exited");
    assert_eq!(vh.daemon_pids(), vec![new]);
    // A restarted daemon is locked.
    assert_eq!(vh.vault(["--json", "status"]).ok().json()["locked"], true);
    vh.vault(["daemon", "stop"]).ok();
    let stopped = vh.vault(["daemon", "status"]);
    stopped.no_panic();
    assert!(
        vh.daemon_pids().is_empty(),
        "`daemon status` does not start a daemon"
    );
}

#[test]
fn sigterm_stops_the_daemon_cleanly() {
    let vh = VaultHome::new();
    vh.init();
    let pid = vh.daemon_pid().unwrap();
    kill_pid(pid, false);
    assert!(
        vh.wait_no_daemons(Duration::from_secs(10)),
        "vaultd ignored SIGTERM"
    );
    assert!(!vh.socket().exists(), "SIGTERM removes the socket");
    vh.vault(["list"]).code(3);
}

#[test]
fn stale_socket_after_kill_9_is_replaced() {
    let vh = VaultHome::new();
    vh.init();
    let f = vh.at_file("v", &vault_e2e::secret("stale"));
    vh.vault(["add", "stale", "--type", "token", &format!("token={f}")])
        .ok();
    let pid = vh.daemon_pid().unwrap();
    kill_pid(pid, true);
    assert!(vh.wait_no_daemons(Duration::from_secs(10)));
    assert!(vh.socket().exists(), "kill -9 leaves the socket behind");
    let run = vh.vault(["get", "stale", "--field", "token"]);
    run.code(3)
        .stderr_has("vault is locked: run 'vault unlock'");
    let new = vh
        .daemon_pid()
        .expect("a new daemon on the old socket path");
    assert_ne!(new, pid);
    vh.unlock();
    vh.vault(["get", "stale", "--field", "token"]).ok();
}

#[test]
fn daemon_started_by_the_cli_keeps_no_pipes_or_terminal() {
    let vh = VaultHome::new();
    // run_command fails if vaultd inherited the CLI's stdout/stderr pipes.
    vh.init();
    let pid = vh.daemon_pid().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // fields[3] = session id, fields[4] = tty_nr (0 = no controlling tty).
    assert_eq!(fields[3], pid.to_string(), "vaultd called setsid(): {stat}");
    assert_eq!(fields[4], "0", "vaultd has no controlling terminal: {stat}");
    for fd in 0..3 {
        let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "closed".to_owned());
        assert!(
            !target.starts_with("pipe:") && !target.starts_with("socket:"),
            "vaultd fd {fd} is {target}: it must not hold the CLI's pipes"
        );
    }
}
