//! `vault get NAME --clip` (issue 26): the real `vault` copies a field to
//! the clipboard of an `Xvfb` display, `xclip` reads it back at once, and
//! after `--clear-after` it is gone; a value copied by someone else before
//! the deadline stays. Without a display the copy fails with exit 1 and says
//! what to do; the secret shows in no output, and `get --clip`'s own output
//! is kept for the leak scan (tests/src/leak.rs).
//!
//! Needs `Xvfb` and `xclip` (Debian: xvfb, xclip; installed by `bash
//! .ci/run`). Without them the display tests print `SKIP …` and pass,
//! unless `VAULT_TEST_REQUIRE_CLIPBOARD=1` (set by `.ci/run`) makes that a
//! failure. Each test starts its own `Xvfb` (`-displayfd`: the server picks
//! a free display number and writes it once it accepts connections) and
//! waits until every clipboard holder of its vault has exited.

#![allow(clippy::unwrap_used)]

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vault_e2e::{
    DEFAULT_TIMEOUT, Run, VaultHome, kill_pid, pid_alive, poll_until, run_command, secret, which,
};

/// argv[0] of the process `vault get --clip` leaves behind to hold the value.
const HOLDER: &str = "vault-clip-hold";

/// An `Xvfb` of this test alone, killed (and waited for) on drop.
struct Display {
    xvfb: Child,
    /// `:N`, for `DISPLAY`.
    name: String,
    xclip: PathBuf,
}

impl Display {
    /// A fresh display, or `None` after `SKIP test: …` when `Xvfb` or
    /// `xclip` is missing; a failure instead when
    /// `VAULT_TEST_REQUIRE_CLIPBOARD` is set.
    fn start(test: &str) -> Option<Self> {
        let (Some(xvfb), Some(xclip)) = (which("Xvfb"), which("xclip")) else {
            let why = format!(
                "SKIP {test}: needs Xvfb and xclip (apt install xvfb xclip; bash .ci/run \
                 installs them), then: cargo test -p vault-e2e --test clip"
            );
            assert!(
                std::env::var_os("VAULT_TEST_REQUIRE_CLIPBOARD").is_none(),
                "{why}"
            );
            eprintln!("{why}");
            return None;
        };
        let mut child = Command::new(xvfb)
            .args([
                "-displayfd",
                "1",
                "-nolisten",
                "tcp",
                "-screen",
                "0",
                "640x480x24",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Xvfb");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let number = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if !line.trim().is_empty() => line.trim().to_owned(),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("Xvfb did not report a display within 30 s: {other:?}");
            }
        };
        Some(Self {
            xvfb: child,
            name: format!(":{number}"),
            xclip,
        })
    }

    /// `xclip -o -selection clipboard`: what a paste would get.
    fn paste(&self, vh: &VaultHome) -> Run {
        let mut cmd = vh.command(&self.xclip, ["-o", "-selection", "clipboard"]);
        cmd.env("DISPLAY", &self.name);
        run_command(cmd, None, DEFAULT_TIMEOUT)
    }

    /// `xclip -i`, in the foreground (`-quiet`), serving `text` as the
    /// clipboard until it is killed or something else is copied.
    fn copy_other(&self, vh: &VaultHome, text: &str) -> Child {
        let mut cmd = vh.command(&self.xclip, ["-quiet", "-selection", "clipboard", "-i"]);
        cmd.env("DISPLAY", &self.name)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("start xclip -i");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
        drop(stdin);
        child
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        let _ = self.xvfb.kill();
        let _ = self.xvfb.wait();
    }
}

/// `vault ARGS` with `DISPLAY` (or none).
fn vault_on<I, S>(vh: &VaultHome, display: Option<&str>, args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = vh.command(&vh.vault_bin, args);
    if let Some(display) = display {
        cmd.env("DISPLAY", display);
    }
    run_command(cmd, None, DEFAULT_TIMEOUT)
}

/// The live clipboard holders of this vault: processes named [`HOLDER`]
/// whose environment has this test's `VAULT_HOME`.
fn holders(vh: &VaultHome) -> Vec<u32> {
    let home = format!("VAULT_HOME={}", vh.vault_home.display());
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.split(|b| *b == 0).next() != Some(HOLDER.as_bytes()) {
            continue;
        }
        let Ok(environ) = fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|v| v == home.as_bytes()) && pid_alive(pid) {
            found.push(pid);
        }
    }
    found
}

/// Waits until no holder of this vault is left (each exits once its
/// deadline has passed and it cleared, or not, the clipboard); kills those
/// still there after a minute and fails.
fn wait_for_holders(vh: &VaultHome) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = holders(vh);
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            for pid in &left {
                kill_pid(*pid, true);
            }
            panic!("clipboard holders {left:?} outlived their deadline by a minute");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kills whatever holder is left when a test fails half-way.
struct HolderGuard<'a>(&'a VaultHome);

impl Drop for HolderGuard<'_> {
    fn drop(&mut self) {
        for pid in holders(self.0) {
            kill_pid(pid, true);
        }
    }
}

/// A vault with a password record `db` whose password is the returned
/// secret.
fn vault_with_password() -> (VaultHome, String) {
    let vh = VaultHome::new();
    vh.init();
    let password = secret("clip");
    vh.vault_in(
        [
            "add",
            "db",
            "--type",
            "password",
            "username=admin",
            "password=-",
        ],
        password.as_bytes(),
    )
    .ok();
    (vh, password)
}

#[test]
fn copied_value_is_pasted_and_cleared_after_the_deadline() {
    let Some(display) = Display::start("copied_value_is_pasted_and_cleared_after_the_deadline")
    else {
        return;
    };
    let (vh, password) = vault_with_password();
    let _guard = HolderGuard(&vh);

    let run = vault_on(
        &vh,
        Some(&display.name),
        ["get", "db", "--clip", "--clear-after", "2"],
    );
    run.ok()
        .never_prints(&password)
        .stderr_has("copied db's password; clears in 2 s");
    assert_eq!(run.stdout, "", "nothing on stdout:\n{run}");
    // `vault` returned once the clipboard was set: no waiting here.
    let pasted = display.paste(&vh);
    pasted.ok();
    assert_eq!(pasted.stdout, password, "the clipboard holds the value");
    let holding = holders(&vh);
    assert_eq!(holding.len(), 1, "one holder serves the value");
    // The value reached it over a pipe: not in its argv, not in its env.
    for file in ["cmdline", "environ"] {
        let bytes = fs::read(format!("/proc/{}/{file}", holding[0])).unwrap();
        assert!(
            !vault_e2e::contains_bytes(&bytes, password.as_bytes()),
            "the value is in the holder's {file}"
        );
    }

    wait_for_holders(&vh);
    let after = display.paste(&vh);
    assert!(
        after.code != 0 || after.stdout.is_empty(),
        "the clipboard still holds something after the deadline:\n{}",
        after.cmd
    );
    assert_ne!(after.stdout, password, "the value was not cleared");

    // --field, and --json says what was copied without the value.
    let run = vault_on(
        &vh,
        Some(&display.name),
        [
            "--json",
            "get",
            "db",
            "--field",
            "username",
            "--clip",
            "-q",
            "--clear-after",
            "1",
        ],
    );
    run.ok().never_prints(&password);
    let doc = run.json();
    assert_eq!(doc["name"], "db");
    assert_eq!(doc["field"], "username");
    assert_eq!(doc["clears_after_secs"], 1);
    assert_eq!(display.paste(&vh).ok().stdout, "admin");
    wait_for_holders(&vh);
}

#[test]
fn a_value_copied_by_someone_else_is_not_cleared() {
    let Some(display) = Display::start("a_value_copied_by_someone_else_is_not_cleared") else {
        return;
    };
    let (vh, password) = vault_with_password();
    let _guard = HolderGuard(&vh);

    // Seconds of slack: the other copy must land well before the deadline.
    vault_on(
        &vh,
        Some(&display.name),
        ["get", "db", "--clip", "--clear-after", "10"],
    )
    .ok()
    .never_prints(&password);
    assert_eq!(display.paste(&vh).ok().stdout, password);

    let other = "copied by someone else";
    let mut xclip = display.copy_other(&vh, other);
    poll_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "xclip took the clipboard",
        || display.paste(&vh).stdout,
        |now| now == other,
    );
    let holding = holders(&vh);
    assert_eq!(
        holding.len(),
        1,
        "the holder must still be waiting for its deadline (else this test proves nothing)"
    );

    wait_for_holders(&vh);
    assert_eq!(
        display.paste(&vh).ok().stdout,
        other,
        "the holder cleared a value that was not its own"
    );
    let _ = xclip.kill();
    let _ = xclip.wait();
}

#[test]
fn without_a_display_it_fails_and_says_what_to_do() {
    let (vh, password) = vault_with_password();
    let _guard = HolderGuard(&vh);

    // The harness's environment has neither DISPLAY nor WAYLAND_DISPLAY.
    let run = vault_on(&vh, None, ["get", "db", "--clip"]);
    run.code(1)
        .never_prints(&password)
        .stderr_has("no clipboard: DISPLAY and WAYLAND_DISPLAY are unset")
        .stderr_has("drop --clip to print the value");
    assert_eq!(run.stdout, "", "no fallback to stdout:\n{run}");

    // A display that is set but not there: the holder cannot open it.
    let run = vault_on(&vh, Some(":4093"), ["get", "db", "--clip"]);
    run.code(1)
        .never_prints(&password)
        .stderr_has("no clipboard: cannot open the clipboard");
    assert_eq!(run.stdout, "");
    assert!(
        holders(&vh).is_empty(),
        "a holder stayed without a clipboard"
    );

    // Clear times that make no sense are usage errors, before any copy.
    for bad in ["0", "3601", "soon"] {
        vault_on(
            &vh,
            Some(":4093"),
            ["get", "db", "--clip", "--clear-after", bad],
        )
        .code(2)
        .stderr_has("--clear-after")
        .never_prints(&password);
    }
    vault_on(&vh, None, ["get", "db", "--clear-after", "5"])
        .code(2)
        .never_prints(&password);
    // A record with several fields and no obvious one needs --field.
    vh.add_aws(
        "keys",
        &format!("AKIA{}", "A".repeat(16)),
        &secret("aws"),
        &[],
    );
    vault_on(&vh, Some(":4093"), ["get", "keys", "--clip"])
        .code(2)
        .stderr_has("--field");
}
