//! The README cannot rot: its first command and its five-minute tour are
//! taken from README.md (between `<!-- readme-test:… -->` markers) and run
//! as written by `bash`, in a temporary HOME, with the installer putting the
//! binaries into a temporary prefix.
//!
//! The "fresh clone" is a copy of the files git would check out (tracked,
//! plus new ones not ignored, as they are in the working tree) in a temp
//! directory: no `target/`, nothing generated beforehand. One concession to
//! test time, outside the README's text: the installer copies the
//! `vault`/`vaultd` this test run already built (`VAULT_INSTALL_FROM`)
//! instead of compiling them again with `cargo install`, and cargo's target
//! dir is this run's, so `xtask` reuses the compiled dependencies.
//! The passphrase comes from `VAULT_PASSPHRASE_FILE` (no terminal here), for
//! the lines where the README says `vault init` asks for it, and only there:
//! elsewhere the CLI would use it to unlock a locked vault by itself.
//!
//! In the tour, `# → TEXT` means the command exits 0 and prints TEXT;
//! `# → exit N: TEXT` means it exits N and says TEXT on stderr.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vault_e2e::{Run, binaries, cargo, run_command, workspace_root};

/// The fenced block between `<!-- readme-test:NAME -->` and its end marker.
fn block(readme: &str, name: &str) -> Vec<String> {
    let open = format!("<!-- readme-test:{name} -->");
    let close = format!("<!-- /readme-test:{name} -->");
    let start = readme
        .find(&open)
        .unwrap_or_else(|| panic!("README.md lost its {open} marker"));
    let end = readme[start..]
        .find(&close)
        .unwrap_or_else(|| panic!("README.md lost its {close} marker"))
        + start;
    readme[start + open.len()..end]
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("```"))
        .map(str::to_owned)
        .collect()
}

/// What a tour line promises.
#[derive(Debug)]
enum Expect {
    Ok,
    Prints(String),
    Fails(i32, String),
}

fn expectation(line: &str) -> Expect {
    let Some((_, promise)) = line.split_once("# → ") else {
        return Expect::Ok;
    };
    let promise = promise.trim();
    if let Some(rest) = promise.strip_prefix("exit ") {
        let (code, text) = rest.split_once(": ").unwrap();
        return Expect::Fails(code.parse().unwrap(), text.to_owned());
    }
    Expect::Prints(promise.to_owned())
}

/// Copies what a clone of the repository holds into `dest`: the files git
/// lists (tracked, and untracked ones it does not ignore), symlinks as
/// symlinks, modes kept.
fn clean_clone(dest: &Path) {
    let root = workspace_root();
    let out = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output()
        .expect("git is needed for the README test (apt-get install git)");
    assert!(
        out.status.success(),
        "git ls-files failed in {}: {}",
        root.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut copied = 0;
    for name in out.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = Path::new(std::str::from_utf8(name).unwrap());
        let from = root.join(name);
        let to = dest.join(name);
        let Ok(meta) = fs::symlink_metadata(&from) else {
            continue; // deleted in the working tree
        };
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from).unwrap(), &to).unwrap();
        } else if meta.is_file() {
            fs::copy(&from, &to).unwrap();
        } else {
            continue; // a submodule
        }
        copied += 1;
    }
    assert!(
        dest.join("packaging/install.sh").is_file() && copied > 50,
        "the clone lacks packaging/install.sh ({copied} files)"
    );
}

/// A throwaway machine: a fresh clone, HOMEs, an install prefix, and the
/// daemons to stop.
struct Sandbox {
    _root: tempfile::TempDir,
    root: PathBuf,
    clone: PathBuf,
    prefix: PathBuf,
    passphrase_file: PathBuf,
    homes: Vec<PathBuf>,
}

impl Sandbox {
    fn new() -> Self {
        let root_dir = tempfile::Builder::new()
            .prefix("vreadme.")
            .tempdir_in("/tmp")
            .unwrap();
        let root = root_dir.path().to_path_buf();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
        let passphrase_file = root.join("passphrase");
        fs::write(&passphrase_file, "readme-Passphrase-PASSMARK\n").unwrap();
        fs::set_permissions(&passphrase_file, fs::Permissions::from_mode(0o600)).unwrap();
        let clone = root.join("vault");
        clean_clone(&clone);
        Self {
            clone,
            prefix: root.join("prefix"),
            root,
            _root: root_dir,
            passphrase_file,
            homes: Vec::new(),
        }
    }

    fn home(&mut self, name: &str) -> PathBuf {
        let home = self.root.join(name);
        fs::create_dir(&home).unwrap();
        self.homes.push(home.clone());
        home
    }

    /// `bash -c LINE` as a user of this machine would run it: a clean
    /// environment, HOME, PATH with the install prefix first. The real
    /// cargo and rustup homes stay, so the installer can run cargo offline.
    fn bash(&self, home: &Path, line: &str) -> Run {
        let mut cmd = Command::new("bash");
        cmd.arg("-c").arg(line);
        let cargo = cargo();
        let toolchain = cargo.parent().unwrap_or(Path::new("/usr/bin"));
        let built = binaries().vault.parent().unwrap().to_path_buf();
        let real_home = std::env::var_os("HOME").map(PathBuf::from).unwrap();
        cmd.env_clear()
            .current_dir(&self.clone)
            .env("HOME", home)
            .env(
                "PATH",
                format!(
                    "{}:{}:/usr/local/bin:/usr/bin:/bin",
                    self.prefix.join("bin").display(),
                    toolchain.display()
                ),
            )
            .env("LANG", "C.UTF-8")
            .env(
                "CARGO_HOME",
                std::env::var_os("CARGO_HOME").unwrap_or_else(|| real_home.join(".cargo").into()),
            )
            .env(
                "RUSTUP_HOME",
                std::env::var_os("RUSTUP_HOME").unwrap_or_else(|| real_home.join(".rustup").into()),
            )
            .env("CARGO_TARGET_DIR", built.parent().unwrap())
            .env("VAULT_PREFIX", &self.prefix)
            .env("VAULT_INSTALL_FROM", &built);
        if line.contains("vault init") {
            cmd.env("VAULT_PASSPHRASE_FILE", &self.passphrase_file);
        }
        if let Some(toolchain) = std::env::var_os("RUSTUP_TOOLCHAIN") {
            cmd.env("RUSTUP_TOOLCHAIN", toolchain);
        }
        run_command(cmd, None, Duration::from_secs(600))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for home in &self.homes {
            let vault = self.prefix.join("bin/vault");
            if vault.exists() {
                let mut cmd = Command::new(&vault);
                cmd.args(["daemon", "stop"])
                    .env_clear()
                    .env("HOME", home)
                    .env("PATH", "/usr/bin:/bin");
                let _ = cmd.output();
            }
        }
    }
}

#[test]
fn the_readme_install_command_and_tour_work_as_written() {
    let readme = fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let install = block(&readme, "install");
    assert_eq!(
        install.len(),
        1,
        "the first command is one line: {install:?}"
    );
    let tour = block(&readme, "tour");
    assert!(tour.len() >= 8, "the tour lost its commands: {tour:?}");
    for step in [
        "vault init",
        "vault add",
        "vault exec",
        "vault emit aws",
        "vault lock",
    ] {
        assert!(
            tour.iter().any(|l| l.contains(step)),
            "the tour must show {step}"
        );
    }

    let mut sandbox = Sandbox::new();

    // The first command: install, init, add, get.
    let first = sandbox.home("first");
    let run = sandbox.bash(&first, &install[0]);
    run.ok();
    assert_eq!(
        run.stdout.lines().last(),
        Some("ghp_example"),
        "the first command ends by printing the token:\n{run}"
    );
    let bin = sandbox.prefix.join("bin");
    for helper in ["docker-credential-vault", "git-credential-vault"] {
        assert_eq!(
            fs::read_link(bin.join(helper)).unwrap(),
            Path::new("vault"),
            "{helper} is a link to vault"
        );
    }
    // The installed links are the vault binary speaking the helper protocol.
    let listed = sandbox.bash(&first, "docker-credential-vault list");
    assert_eq!(
        listed.ok().stdout.trim(),
        "{}",
        "no registry credentials yet"
    );
    let share = sandbox.prefix.join("share");
    for file in [
        "bash-completion/completions/vault",
        "zsh/site-functions/_vault",
        "fish/vendor_completions.d/vault.fish",
        "man/man1/vault.1",
        "man/man1/vault-doctor.1",
    ] {
        assert!(share.join(file).is_file(), "{file} was not installed");
    }
    let unit = fs::read_to_string(first.join(".local/share/systemd/user/vaultd.service")).unwrap();
    assert!(
        unit.contains(&format!("ExecStart={}/vaultd --foreground", bin.display())),
        "the unit runs the installed vaultd:\n{unit}"
    );

    // The tour, line by line, in a fresh HOME.
    let home = sandbox.home("tour");
    for line in &tour {
        let run = sandbox.bash(&home, line);
        run.no_panic();
        match expectation(line) {
            Expect::Ok => {
                run.ok();
            }
            Expect::Prints(text) => {
                run.ok();
                assert!(
                    run.stdout.contains(&text),
                    "README promises {text:?} from `{line}`:\n{run}"
                );
            }
            Expect::Fails(code, text) => {
                run.code(code).stderr_has(&text);
            }
        }
        assert!(
            !run.stdout.contains("wJalrXUtnFEMI") && !run.stderr.contains("wJalrXUtnFEMI"),
            "a secret key was printed by `{line}`:\n{run}"
        );
    }
}
