//! docs/architecture.md, "Files": every directory the daemon creates is
//! 0700 and every file 0600 (the socket too), owned by the user, from the
//! start; and "The vault on disk": no file at rest holds a secret value or
//! a record name in plaintext.

// Helper fns of a test report failure by panicking.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use vault_e2e::{MARK, PASSPHRASE, VaultHome, contains_bytes, samples, walk};

/// Exercises everything that creates files: init, adds of every type, set,
/// history, lock/unlock, a daemon restart.
fn busy_vault(vh: &VaultHome) -> Vec<vault_e2e::Sample> {
    vh.init();
    let samples = samples(vh, "-p");
    for s in &samples {
        s.add(vh);
    }
    let f = vh.at_file("set", &vault_e2e::secret("set"));
    vh.vault(["set", &samples[0].name, &format!("API_KEY={f}")])
        .ok();
    vh.vault(["lock"]).ok();
    vh.unlock();
    vh.vault(["list"]).ok();
    samples
}

fn check_modes(vh: &VaultHome) {
    let me = vault_e2e::my_uid();
    let entries = walk(&vh.vault_home);
    assert!(
        entries.len() >= 4,
        "expected at least VAULT_HOME, vault.db, identity.age and the socket: {entries:?}"
    );
    let mut problems = Vec::new();
    let mut saw_socket = false;
    for (path, meta) in &entries {
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        let want = if ft.is_dir() {
            0o700
        } else if ft.is_file() || ft.is_socket() {
            0o600
        } else {
            problems.push(format!("{}: unexpected file type {ft:?}", path.display()));
            continue;
        };
        if ft.is_socket() {
            saw_socket = true;
        }
        if mode != want {
            problems.push(format!(
                "{}: mode {mode:04o}, want {want:04o}",
                path.display()
            ));
        }
        if meta.uid() != me {
            problems.push(format!(
                "{}: owned by uid {}, want {me}",
                path.display(),
                meta.uid()
            ));
        }
    }
    assert!(saw_socket, "no socket under VAULT_HOME: {entries:#?}");
    assert!(
        problems.is_empty(),
        "unsafe permissions under {}:\n  {}",
        vh.vault_home.display(),
        problems.join("\n  ")
    );
}

#[test]
fn every_file_and_dir_is_private() {
    let vh = VaultHome::new();
    busy_vault(&vh);
    for p in [vh.paths().db(), vh.paths().identity(), vh.socket()] {
        assert!(
            fs::symlink_metadata(&p).is_ok(),
            "{} should exist",
            p.display()
        );
    }
    check_modes(&vh);
}

/// A umask of 000 makes any file created with a default mode world-readable,
/// so this catches "create, then chmod" and files made without an explicit
/// mode.
#[test]
fn every_file_and_dir_is_private_even_under_umask_000() {
    let mut vh = VaultHome::new();
    vh.umask = Some(0o000);
    busy_vault(&vh);
    check_modes(&vh);
    vh.vault(["daemon", "stop"]).ok();
    // A restart (which re-opens and migrates the database) keeps them private.
    vh.unlock();
    check_modes(&vh);
}

#[test]
fn no_secret_or_name_at_rest_or_in_the_log() {
    let vh = VaultHome::new();
    let samples = busy_vault(&vh);
    // A record with a distinctive name, to look for it in the files.
    let name = "NAMEMARK-distinctive.record";
    let f = vh.at_file("nm", &vault_e2e::secret("nm"));
    vh.vault(["add", name, "--type", "token", &format!("token={f}")])
        .ok();
    // Errors about it too (they may be logged).
    vh.vault(["add", name, "--type", "token", &format!("token={f}")])
        .code(5);
    vh.vault(["get", "NAMEMARK-missing"]).code(4);
    // Unlocking an unlocked vault is a no-op, so lock first: the wrong
    // passphrase must really be tried (and its failure logged).
    vh.vault(["lock"]).ok();
    vh.unlock_with("wrong-PASSMARK-passphrase").code(3);
    vh.vault(["daemon", "stop"]).ok();

    let mut leaks = Vec::new();
    for (path, meta) in walk(&vh.vault_home) {
        if !meta.is_file() {
            continue;
        }
        let bytes = fs::read(&path).unwrap();
        for needle in [MARK, "NAMEMARK", "PASSMARK", PASSPHRASE] {
            if contains_bytes(&bytes, needle.as_bytes()) {
                leaks.push(format!("{} contains {needle:?}", path.display()));
            }
        }
        for s in &samples {
            // Short names could occur by chance in ciphertext; these are
            // long enough not to.
            if s.name.len() >= 8 && contains_bytes(&bytes, s.name.as_bytes()) {
                leaks.push(format!(
                    "{} contains record name {:?}",
                    path.display(),
                    s.name
                ));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "plaintext at rest:\n  {}",
        leaks.join("\n  ")
    );
    assert!(
        vh.paths().log().exists(),
        "vaultd.log should exist after a daemon ran (docs/architecture.md)"
    );
}

#[test]
fn refuses_to_start_on_an_open_vault_dir() {
    let vh = VaultHome::new();
    vh.init();
    vh.vault(["daemon", "stop"]).ok();
    fs::set_permissions(&vh.vault_home, fs::Permissions::from_mode(0o755)).unwrap();
    let run = vh.vault(["list"]);
    assert_ne!(
        run.code, 0,
        "vaultd must refuse a group/other-readable VAULT_HOME:\n{run}"
    );
    run.no_panic();
    let text = format!("{}{}", run.stdout, run.stderr);
    assert!(
        text.contains(&vh.vault_home.display().to_string()) && text.contains("chmod"),
        "the error names the path and the fix:\n{run}"
    );
    assert!(
        vh.daemon_pids().is_empty(),
        "no daemon runs on an unsafe vault"
    );
    // And it did not "fix" the mode behind the user's back.
    assert_eq!(
        fs::metadata(&vh.vault_home).unwrap().permissions().mode() & 0o777,
        0o755
    );
}

#[test]
fn refuses_to_start_on_a_readable_identity() {
    let vh = VaultHome::new();
    vh.init();
    vh.vault(["daemon", "stop"]).ok();
    let identity = vh.paths().identity();
    fs::set_permissions(&identity, fs::Permissions::from_mode(0o644)).unwrap();
    let run = vh.vault(["list"]);
    run.no_panic();
    // Refusing to start, or refusing to unlock, are both acceptable; using
    // the key file is not.
    let unlock = vh.unlock_with(PASSPHRASE);
    assert!(
        run.code != 0 || unlock.code != 0,
        "a group/other-readable identity.age must be refused:\n{run}\n{unlock}"
    );
    let text = format!(
        "{}{}{}{}",
        run.stdout, run.stderr, unlock.stdout, unlock.stderr
    );
    assert!(
        text.contains("identity.age"),
        "the error names the file:\n{run}\n{unlock}"
    );
}

#[test]
fn refuses_a_symlinked_database() {
    let vh = VaultHome::new();
    vh.init();
    vh.vault(["daemon", "stop"]).ok();
    let db = vh.paths().db();
    let moved = vh.root().join("elsewhere.db");
    fs::rename(&db, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &db).unwrap();
    let status = vh.vault(["list"]);
    let unlock = vh.unlock_with(PASSPHRASE);
    status.no_panic();
    unlock.no_panic();
    assert!(
        status.code != 0 || unlock.code != 0,
        "a symlinked vault.db must be refused:\n{status}\n{unlock}"
    );
    let text = format!(
        "{}{}{}{}",
        status.stdout, status.stderr, unlock.stdout, unlock.stderr
    );
    assert!(
        text.contains("symlink"),
        "the error says why:\n{status}\n{unlock}"
    );
}

/// Each vault file and directory, replaced by a symlink to a faithful copy,
/// is refused when the daemon starts: the error names the path and says
/// "symlink", and no daemon is left running. (The database has its own test
/// above.)
#[test]
fn refuses_every_vault_file_or_dir_replaced_by_a_symlink() {
    let vh = VaultHome::new();
    vh.init();
    fs::write(vh.paths().config(), "").unwrap();
    fs::set_permissions(vh.paths().config(), fs::Permissions::from_mode(0o600)).unwrap();
    vh.vault(["daemon", "stop"]).ok();
    let paths = vh.paths();
    let run_dir = paths.socket.parent().unwrap().to_path_buf();
    for target in [
        paths.identity(),
        paths.config(),
        paths.log(),
        paths.daemon_lock(),
        run_dir,
    ] {
        let moved = vh.root().join("moved");
        fs::rename(&target, &moved).unwrap();
        std::os::unix::fs::symlink(&moved, &target).unwrap();
        let run = vh.vault(["list"]);
        run.no_panic();
        assert_ne!(
            run.code,
            0,
            "{} as a symlink must be refused:\n{run}",
            target.display()
        );
        assert!(
            run.stderr.contains("symlink") && run.stderr.contains(&target.display().to_string()),
            "the error names {} and says symlink:\n{run}",
            target.display()
        );
        assert!(vh.daemon_pids().is_empty(), "no daemon on an unsafe vault");
        fs::remove_file(&target).unwrap();
        fs::rename(&moved, &target).unwrap();
    }
    // Restored, the vault opens again.
    vh.unlock();
    vh.vault(["list"]).ok();
}

/// `identity.age` swapped for a symlink while the daemon runs is refused at
/// the next unlock, not only at start.
#[test]
fn refuses_an_identity_swapped_for_a_symlink_while_running() {
    let vh = VaultHome::new();
    vh.init();
    let f = vh.at_file("v", &vault_e2e::secret("swap"));
    vh.vault(["add", "swap-rec", "--type", "token", &format!("token={f}")])
        .ok();
    vh.vault(["lock"]).ok();
    let identity = vh.paths().identity();
    let copy = vh.root().join("identity-copy.age");
    fs::copy(&identity, &copy).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(&identity).unwrap();
    std::os::unix::fs::symlink(&copy, &identity).unwrap();
    let unlock = vh.unlock_with(PASSPHRASE);
    unlock.no_panic().never_prints(PASSPHRASE);
    assert_ne!(
        unlock.code, 0,
        "unlocked through a symlinked identity.age:\n{unlock}"
    );
    assert!(
        unlock.stderr.contains("symlink") && unlock.stderr.contains("identity.age"),
        "the error says why:\n{unlock}"
    );
    assert_eq!(
        vh.vault(["--json", "status"]).ok().json()["locked"],
        true,
        "the vault stays locked"
    );
    fs::remove_file(&identity).unwrap();
    fs::rename(&copy, &identity).unwrap();
    vh.unlock();
    vh.vault(["get", "swap-rec", "--field", "token"]).ok();
}
