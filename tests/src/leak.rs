//! The secret-leak scan (issue #9). The harness keeps, in an artifacts dir,
//! everything a leak could end up in:
//!
//! - the stdout and stderr of every process a test runs through the harness
//!   (`runs.log` per test process), except the outputs whose job is to print
//!   a secret ([`asks_for_secrets`]: `vault get` (not with `--clip`), `vault aws-process`, `vault
//!   exec`'s child, a helper's `get`, tools the test runs to read what vault
//!   wrote);
//! - each vault's `vaultd.log`, and any `core*` file found under its temp
//!   dir, when the [`crate::VaultHome`] is dropped;
//! - `/proc/<pid>/cmdline` and `/proc/<pid>/environ` of each of its daemons,
//!   read just before they are stopped;
//! - the log of every `vault-server` the server's API tests start
//!   ([`keep_log`], `server/tests/common`);
//! - the whole output of `cargo test` (`.ci/run` tees it into the dir), with
//!   the panic messages of any failing test.
//!
//! Then [`scan`] (the `vault-leak-scan` binary, run by `.ci/run` after
//! `cargo test`) looks for [`NEEDLES`] in every one of those files and
//! reports the file and line of each hit — never the line itself, which
//! holds the secret.
//!
//! The artifacts dir is `VAULT_TEST_ARTIFACTS`, else `target/e2e-artifacts`;
//! each test process writes under its own `<test>-<pid>/`, so delete the dir
//! before a run to scan that run alone.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::{MARK, Run};

/// What the scan looks for: the marker of every test secret and of every
/// test passphrase.
pub const NEEDLES: [&str; 2] = [MARK, "PASSMARK"];

/// Where artifacts go: `VAULT_TEST_ARTIFACTS`, else `target/e2e-artifacts`
/// (the target dir this test executable was built in).
pub fn artifacts_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("VAULT_TEST_ARTIFACTS") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> or target/<profile>/<bin>.
    let mut dir = exe.parent().unwrap_or(Path::new(".")).to_path_buf();
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir.pop();
    }
    dir.pop();
    if dir.as_os_str().is_empty() {
        dir = crate::workspace_root().join("target");
    }
    dir.join("e2e-artifacts")
}

/// This test process's own artifacts dir, created on first use.
pub fn process_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap_or_default();
        let stem = exe
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "test".to_owned());
        let dir = artifacts_root().join(format!("{stem}-{}", std::process::id()));
        if let Err(e) = fs::create_dir_all(&dir) {
            eprintln!(
                "e2e: cannot create the artifacts dir {}: {e}",
                dir.display()
            );
        }
        dir
    })
}

/// Whether the command's stdout and stderr are outputs the test asked to
/// hold secrets, so they are not kept for the scan. `program` and `args`
/// are what ran, with the harness's umask wrapper (`/bin/sh -c 'umask …;
/// exec "$0" "$@"' PROGRAM ARGS`) already removed.
pub fn asks_for_secrets(program: &Path, args: &[String]) -> (bool, bool) {
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.as_str() {
        "vault" => {
            let mut rest = args.iter();
            let mut sub = None;
            while let Some(a) = rest.next() {
                match a.as_str() {
                    "--socket" => {
                        rest.next();
                    }
                    a if a.starts_with('-') => {}
                    a => {
                        sub = Some(a);
                        break;
                    }
                }
            }
            match sub {
                // `get --clip` puts the value on the clipboard and must
                // print nothing of it: both streams are kept and scanned.
                Some("get") if args.iter().any(|a| a == "--clip" || a == "-c") => (false, false),
                // `get` prints the values (stdout only: its errors are kept).
                Some("get" | "aws-process") => (true, false),
                // `gcp token`, `gke token`, `eks token` print a bearer
                // token, `console`
                // a sign-in URL (stdout only).
                Some("gcp" | "gke" | "eks" | "console") => (true, false),
                // The child's own output, on both streams.
                Some("exec") => (true, true),
                _ => (false, false),
            }
        }
        "docker-credential-vault" | "git-credential-vault" => {
            (args.first().map(String::as_str) == Some("get"), false)
        }
        // Our daemon and server never print a secret, asked or not.
        "vaultd" | "vault-server" => (false, false),
        // git, python, sh, cat, skopeo: the test runs them to read what vault
        // wrote; printing what they read is their job.
        _ => (true, true),
    }
}

/// Keeps `run`'s output for the scan (see the module docs).
pub(crate) fn record_run(cmd: &Command, run: &Run) {
    let mut program = PathBuf::from(cmd.get_program());
    let mut args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if program == Path::new("/bin/sh")
        && args.len() >= 3
        && args[0] == "-c"
        && args[1].starts_with("umask ")
    {
        program = PathBuf::from(&args[2]);
        args.drain(..3);
    }
    let (skip_out, skip_err) = asks_for_secrets(&program, &args);
    // Inputs are not what the scan is about: an argument holding a marker
    // (a test passing a value through argv on purpose) is not written.
    let shown: Vec<String> = std::iter::once(program.display().to_string())
        .chain(args)
        .map(|a| {
            if NEEDLES.iter().any(|n| a.contains(n)) {
                "<argument with a test secret>".to_owned()
            } else {
                a
            }
        })
        .collect();
    let stream = |skip: bool, text: &str| {
        if skip {
            "[not kept: this output is asked to print secrets]\n".to_owned()
        } else {
            text.to_owned()
        }
    };
    let entry = format!(
        "=== $ {}\n=== exit {}{} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n",
        shown.join(" "),
        run.code,
        run.signal
            .map(|s| format!(" signal {s}"))
            .unwrap_or_default(),
        run.elapsed,
        stream(skip_out, &run.stdout),
        stream(skip_err, &run.stderr),
    );
    append(&process_dir().join("runs.log"), entry.as_bytes());
}

fn append(path: &Path, bytes: &[u8]) {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let result = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(bytes));
    if let Err(e) = result {
        eprintln!("e2e: cannot write {}: {e}", path.display());
    }
}

/// Keeps `text` (a process's log that a test holds in memory, such as a
/// `vault-server`'s stderr) as `<name>.log` in this test process's dir.
pub fn keep_log(name: &str, text: &str) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    append(
        &process_dir().join(format!("{name}-{n}.log")),
        text.as_bytes(),
    );
}

/// Copies `/proc/<pid>/cmdline` and `environ` into `dest` (`environ` is
/// readable only by root once vaultd made itself non-dumpable; noted when
/// unreadable).
pub(crate) fn snapshot_daemon(pid: u32, dest: &Path) {
    let _ = fs::create_dir_all(dest);
    for what in ["cmdline", "environ"] {
        let out = dest.join(format!("vaultd-{pid}.{what}"));
        match fs::read(format!("/proc/{pid}/{what}")) {
            Ok(bytes) => {
                // NUL-separated; one entry per line so a hit has a line.
                let lines: Vec<u8> = bytes
                    .into_iter()
                    .map(|b| if b == 0 { b'\n' } else { b })
                    .collect();
                let _ = fs::write(&out, lines);
            }
            Err(e) => {
                let _ = fs::write(&out, format!("[unreadable: {e}; run as root to include]\n"));
            }
        }
    }
}

/// Copies the vault's log and any core file under `root` into `dest`.
pub(crate) fn collect_files(log: &Path, root: &Path, dest: &Path) {
    let mut wanted: Vec<(PathBuf, String)> = Vec::new();
    if log.is_file() {
        wanted.push((log.to_path_buf(), "vaultd.log".to_owned()));
    }
    for (path, meta) in crate::walk(root) {
        let is_core = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n == "core" || n.starts_with("core."));
        if is_core && meta.is_file() {
            eprintln!("e2e: core file {} (a process crashed)", path.display());
            let n = wanted.len();
            wanted.push((path, format!("core-{n}")));
        }
    }
    if wanted.is_empty() {
        return;
    }
    let _ = fs::create_dir_all(dest);
    for (from, to) in wanted {
        if let Err(e) = fs::copy(&from, dest.join(&to)) {
            eprintln!("e2e: cannot keep {}: {e}", from.display());
        }
    }
}

/// One needle found: where, never what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The file.
    pub path: PathBuf,
    /// 1-based line number (lines split on `\n`; binary files too).
    pub line: usize,
    /// Which needle (a marker, not a secret).
    pub needle: &'static str,
}

/// What [`scan`] looked at and found.
#[derive(Debug, Default)]
pub struct Report {
    /// Files read.
    pub files: usize,
    /// Bytes read.
    pub bytes: u64,
    /// `vaultd.log` copies among them.
    pub daemon_logs: usize,
    /// `runs.log` files among them.
    pub run_logs: usize,
    /// `vault-server-*.log` files among them.
    pub server_logs: usize,
    /// Every hit.
    pub hits: Vec<Hit>,
}

/// Reads every file under `dir` and reports each line holding a needle.
pub fn scan(dir: &Path, needles: &[&'static str]) -> std::io::Result<Report> {
    let mut report = Report::default();
    fs::metadata(dir)?;
    for (path, meta) in crate::walk(dir) {
        if !meta.is_file() {
            continue;
        }
        let bytes = fs::read(&path)?;
        report.files += 1;
        report.bytes += bytes.len() as u64;
        match path.file_name().and_then(|n| n.to_str()) {
            Some("vaultd.log") => report.daemon_logs += 1,
            Some("runs.log") => report.run_logs += 1,
            Some(n) if n.starts_with("vault-server-") => report.server_logs += 1,
            _ => {}
        }
        for needle in needles {
            let n = needle.as_bytes();
            if n.is_empty() || bytes.len() < n.len() {
                continue;
            }
            let mut line = 1;
            let mut last_line = 0;
            for (i, w) in bytes.windows(n.len()).enumerate() {
                if bytes[i] == b'\n' {
                    line += 1;
                }
                if w == n && line != last_line {
                    report.hits.push(Hit {
                        path: path.clone(),
                        line,
                        needle,
                    });
                    last_line = line;
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn finds_a_planted_marker_and_names_only_the_place() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("socket-1234/ve2e.abc");
        fs::create_dir_all(&home).unwrap();
        let planted = crate::secret("planted");
        fs::write(
            home.join("vaultd.log"),
            format!("line one\nINFO listening\nWARN oops value={planted} end\nlast\n"),
        )
        .unwrap();
        fs::write(home.join("core-0"), b"\x00\x01PASSMARK\x00").unwrap();
        fs::write(dir.path().join("clean.log"), "nothing here\n").unwrap();
        let report = scan(dir.path(), &NEEDLES).unwrap();
        assert_eq!(report.files, 3);
        assert_eq!(report.daemon_logs, 1);
        let mut hits = report.hits.clone();
        hits.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(
            hits,
            vec![
                Hit {
                    path: home.join("core-0"),
                    line: 1,
                    needle: "PASSMARK"
                },
                Hit {
                    path: home.join("vaultd.log"),
                    line: 3,
                    needle: MARK
                },
            ]
        );
        // What the binary prints names the file and line, never the value.
        let printed = format!("{hits:?}");
        assert!(!printed.contains(&planted));
    }

    #[test]
    fn a_clean_dir_has_no_hits_and_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("runs.log"), "=== $ vault list\nok\n").unwrap();
        let report = scan(dir.path(), &NEEDLES).unwrap();
        assert!(report.hits.is_empty());
        assert_eq!(report.run_logs, 1);
        assert!(scan(&dir.path().join("missing"), &NEEDLES).is_err());
    }

    #[test]
    fn only_outputs_that_print_secrets_are_exempt() {
        let v = |args: &[&str]| {
            asks_for_secrets(
                Path::new("/x/vault"),
                &args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(v(&["get", "n", "--field", "token"]), (true, false));
        assert_eq!(v(&["--socket", "/s", "--json", "get", "n"]), (true, false));
        assert_eq!(
            v(&["get", "n", "--clip", "--clear-after", "2"]),
            (false, false)
        );
        assert_eq!(v(&["exec", "-c", "n", "--", "env"]), (true, true));
        assert_eq!(v(&["add", "get", "--type", "token"]), (false, false));
        assert_eq!(v(&["--socket", "get", "list"]), (false, false));
        assert_eq!(v(&["import", "aws"]), (false, false));
        assert_eq!(v(&["--json", "gcp", "token", "sa"]), (true, false));
        assert_eq!(v(&["eks", "token", "n", "--cluster", "c"]), (true, false));
        assert_eq!(v(&["console", "n"]), (true, false));
        assert_eq!(v(&["gke", "token", "sa"]), (true, false));
        assert_eq!(
            asks_for_secrets(Path::new("/x/vaultd"), &["--foreground".to_owned()]),
            (false, false)
        );
        assert_eq!(
            asks_for_secrets(
                Path::new("/h/docker-credential-vault"),
                &["list".to_owned()]
            ),
            (false, false)
        );
        assert_eq!(
            asks_for_secrets(Path::new("/h/git-credential-vault"), &["get".to_owned()]),
            (true, false)
        );
    }
}
