//! A full disk while writing: `VAULT_HOME` on a small tmpfs, filled up.
//! Every `add` that exited 0 stays readable — while the disk is full, after
//! space is freed and after a restart — and the `add` that hits the full
//! disk fails with exit 1 and a message that says so. Needs root (to mount
//! the tmpfs); skipped with a message otherwise.

// Helper fns of a test report failure by panicking.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use vault_e2e::{MARK, VaultHome, secret};

/// A tmpfs mounted on `VAULT_HOME`; on drop the vault's daemons are stopped
/// and the tmpfs unmounted, whatever happened.
struct Tmpfs<'a> {
    vh: &'a VaultHome,
    at: PathBuf,
}

impl<'a> Tmpfs<'a> {
    fn mount(vh: &'a VaultHome, size: &str) -> Option<Self> {
        let at = vh.vault_home.clone();
        fs::create_dir(&at).unwrap();
        fs::set_permissions(&at, fs::Permissions::from_mode(0o700)).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "vault-e2e",
            ])
            .arg(&at)
            .output()
            .expect("run mount");
        if !out.status.success() {
            eprintln!(
                "SKIP full_disk: cannot mount a tmpfs on {} ({}): needs root with \
                 CAP_SYS_ADMIN, outside a restricted container",
                at.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Self { vh, at })
    }
}

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        self.vh.stop_daemons();
        // The log is on the tmpfs: keep it for the leak scan first.
        self.vh.collect_artifacts();
        let _ = Command::new("umount").arg(&self.at).output();
        // Lazily, if something still holds it.
        let _ = Command::new("umount").arg("-l").arg(&self.at).output();
    }
}

/// Writes zeros to `path` until the filesystem refuses.
fn fill(path: &Path) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap();
    let chunk = vec![0u8; 16 * 1024];
    while f.write_all(&chunk).is_ok() {}
    while f.write_all(&chunk[..512]).is_ok() {}
    let _ = f.sync_all();
}

#[test]
fn a_full_disk_loses_nothing_committed_and_says_so() {
    // Before anything is built or created.
    if vault_e2e::my_uid() != 0 {
        eprintln!(
            "SKIP full_disk: not running as root, cannot mount a tmpfs \
             (run as root, e.g. in CI: bash .ci/run)"
        );
        return;
    }
    let vh = VaultHome::new();
    let Some(_tmpfs) = Tmpfs::mount(&vh, "4m") else {
        return;
    };
    vh.init();
    let mut committed: Vec<(String, String)> = Vec::new();
    for i in 0..10 {
        let name = format!("before-{i}");
        let value = secret(&name);
        let f = vh.at_file(&name, &value);
        vh.vault(["add", &name, "--type", "token", &format!("token={f}")])
            .ok();
        committed.push((name, value));
    }

    let filler = vh.vault_home.join("filler");
    fill(&filler);
    // Each add writes a few KiB; the WAL may still have room for some.
    // Keep adding until one fails.
    let mut failure = None;
    for i in 0..500 {
        let name = format!("during-{i}");
        let value = format!("{}-{}", secret(&name), "x".repeat(4096));
        let f = vh.at_file("during", &value);
        let run = vh.vault(["add", &name, "--type", "token", &format!("token={f}")]);
        run.no_panic().never_prints(MARK);
        if run.code == 0 {
            committed.push((name, value));
        } else {
            failure = Some(run);
            break;
        }
    }
    let failure = failure.expect("500 adds of 4 KiB fit in a full 4 MiB tmpfs");
    failure.code(1);
    assert!(
        failure.stderr.contains("disk") && failure.stderr.contains("full"),
        "the error says the disk is full:\n{failure}"
    );
    assert!(
        failure.stderr.contains("free some space"),
        "the error says what to do:\n{failure}"
    );

    // While the disk is still full, the same daemon serves every committed
    // value.
    let pid = vh.daemon_pid().expect("the daemon survives a full disk");
    for (name, value) in &committed {
        let got = vh.vault(["get", name, "--field", "token"]);
        assert_eq!(got.ok().stdout, format!("{value}\n"), "{name} while full");
    }
    assert_eq!(vh.daemon_pid(), Some(pid));

    // Space freed: writes work again, and everything survives a restart.
    fs::remove_file(&filler).unwrap();
    let f = vh.at_file("after", &secret("after"));
    vh.vault(["add", "after", "--type", "token", &format!("token={f}")])
        .ok();
    vh.vault(["daemon", "stop"]).ok();
    vh.unlock();
    let listed = vh.vault(["list", "--format", "json"]).ok().names();
    assert_eq!(listed.len(), committed.len() + 1, "{listed:?}");
    for (name, value) in &committed {
        let got = vh.vault(["get", name, "--field", "token"]);
        assert_eq!(
            got.ok().stdout,
            format!("{value}\n"),
            "{name} after restart"
        );
    }
    vh.vault(["daemon", "stop"]).ok();
    let db = rusqlite::Connection::open(vh.paths().db()).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}
