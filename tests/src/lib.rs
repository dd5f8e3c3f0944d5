//! Harness for the end-to-end tests in `tests/tests/*.rs`: they drive the real
//! `vault` and `vaultd` binaries, never the crates' internals.
//!
//! [`VaultHome`] owns one throwaway vault: a private temp dir under `/tmp`
//! (Unix socket paths are limited to 108 bytes, so the paths stay short) with
//! `VAULT_HOME`, a fake `HOME` and a directory for secret input files. It runs
//! `vault`/`vaultd` with a clean environment (`XDG_RUNTIME_DIR` removed), with
//! a timeout, and on drop stops every daemon that serves it, so no daemon
//! outlives its test.
//!
//! Secret values made by [`secret`] contain [`MARK`], so tests (and the
//! leak scan of logs and outputs, see [`leak`]) can check that no secret
//! escaped.
//!
//! This crate must never link the daemon or CLI crates: the tests talk to the
//! binaries through processes and the socket, as a user would.

// A test harness reports failure by panicking with context.
#![allow(clippy::unwrap_used)]

pub mod leak;
pub mod osmo;
pub mod osmo_real;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vault_protocol::frame;
use vault_protocol::message::{Request, RequestFrame, Response, ResponseFrame};
use vault_protocol::paths::VaultPaths;
use vault_protocol::{BUILD_VERSION, PROTOCOL_VERSION};

/// Every secret value in the tests contains this, so a leak is easy to find.
pub const MARK: &str = "SECRETMARK";

/// The passphrase of every test vault. Not a secret value (it must be typed
/// on stdin), but it must never show up in files or output either.
pub const PASSPHRASE: &str = "e2e-Passphrase-PASSMARK-correct-horse";

/// How long one CLI invocation may take before the test fails as hung.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A unique-enough number for names: pid, time and a counter.
pub fn unique() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64 finaliser, so consecutive calls look unrelated.
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A secret value carrying [`MARK`] and `tag`, unique per call.
pub fn secret(tag: &str) -> String {
    format!("{MARK}-{tag}-{:016x}", unique())
}

/// `n` pseudo-random bytes (xorshift; not for crypto, just noise).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut x = unique() | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The real binaries under test.
#[derive(Debug)]
pub struct Binaries {
    /// `target/<profile>/vault`.
    pub vault: PathBuf,
    /// `target/<profile>/vaultd`.
    pub vaultd: PathBuf,
    /// `target/<profile>/vault-server`.
    pub server: PathBuf,
    /// The workspace root (for `cargo metadata` and the like).
    pub workspace: PathBuf,
}

/// The workspace root, from this crate's manifest dir.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The `cargo` that built these tests.
pub fn cargo() -> PathBuf {
    std::env::var_os("CARGO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO")))
}

/// Finds `vault` and `vaultd` next to this test executable
/// (`target/debug/deps/<test>` → `target/debug/`).
///
/// `cargo test --workspace` builds a package's binaries only for that
/// package's own integration tests, so it does not build `vault`/`vaultd` for
/// us; this runs `cargo build -p vault-cli -p vault-daemon` once per test
/// process so the binaries exist and are never stale. Set
/// `VAULT_E2E_NO_BUILD=1` to use whatever is there.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let mut profile_dir = exe.parent().expect("exe dir").to_path_buf();
        if profile_dir.file_name() == Some(OsStr::new("deps")) {
            profile_dir = profile_dir.parent().expect("profile dir").to_path_buf();
        }
        let workspace = workspace_root();
        if std::env::var_os("VAULT_E2E_NO_BUILD").is_none() {
            let target_dir = profile_dir.parent().expect("target dir");
            let mut build = Command::new(cargo());
            build
                .current_dir(&workspace)
                .args(["build", "--quiet", "-p", "vault-cli", "-p", "vault-daemon"])
                .args(["-p", "vault-server"])
                .arg("--target-dir")
                .arg(target_dir)
                .stdin(Stdio::null());
            // Cargo gives this test process the vault-e2e package's own
            // CARGO_MANIFEST_DIR, CARGO_PKG_* and the like. Build scripts
            // (ring's, through cc) rerun when those change, so passing them
            // on rebuilt ring and all above it on every test run, and again
            // at the next plain `cargo build`: ~50 s each way.
            for (key, _) in std::env::vars_os() {
                let key = key.to_string_lossy();
                let per_package = key.starts_with("CARGO_PKG_")
                    || key.starts_with("CARGO_MANIFEST_")
                    || key.starts_with("CARGO_BIN_")
                    || matches!(
                        &*key,
                        "CARGO_CRATE_NAME"
                            | "CARGO_PRIMARY_PACKAGE"
                            | "CARGO_TARGET_TMPDIR"
                            | "OUT_DIR"
                    );
                if per_package {
                    build.env_remove(&*key);
                }
            }
            if profile_dir.file_name() == Some(OsStr::new("release")) {
                build.arg("--release");
            }
            let out = build.output().expect("run cargo build");
            assert!(
                out.status.success(),
                "building vault and vaultd failed (cargo build -p vault-cli -p vault-daemon):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let vault = profile_dir.join("vault");
        let vaultd = profile_dir.join("vaultd");
        let server = profile_dir.join("vault-server");
        for bin in [&vault, &vaultd, &server] {
            assert!(
                bin.is_file(),
                "{} is missing: run `cargo test --workspace` so the binaries are built",
                bin.display()
            );
        }
        Binaries {
            vault,
            vaultd,
            server,
            workspace,
        }
    })
}

/// The default admin's password of a [`RemoteServer`]; it works as that
/// admin's access token. Carries the passphrase marker the leak scan knows.
pub const SERVER_ADMIN_TOKEN: &str = "sync-admin-token-PASSMARK-0123456789abcdef";

/// A real `vault-server` on 127.0.0.1 with a temp SQLite database (or
/// `database`), its log kept for the leak scan. Stopped on drop; `stop` and
/// `start` again simulate an outage (same port, same data).
#[derive(Debug)]
pub struct RemoteServer {
    server: Listening,
    database: String,
    _dir: tempfile::TempDir,
}

impl RemoteServer {
    /// Starts one on a free port with a fresh SQLite database.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let database = format!("sqlite:{}", dir.path().join("server.db").display());
        Self::start_on(database, dir)
    }

    /// Starts one on `database` (`sqlite:…` or `postgres://…`).
    pub fn start_on(database: String, dir: tempfile::TempDir) -> Self {
        let mut s = Self {
            server: Listening::new("127.0.0.1:0", "vault-server"),
            database,
            _dir: dir,
        };
        s.resume();
        s
    }

    /// `http://ADDR`, what `vault login` takes.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The SQLite database file, for tests that play a server gone bad
    /// (edit it while [`RemoteServer::stop`]ped); `None` on PostgreSQL.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        self.database.strip_prefix("sqlite:").map(PathBuf::from)
    }

    /// Kills it (an outage).
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Starts it again on the same address and database.
    pub fn resume(&mut self) {
        self.server.start(&binaries().server, |cmd| {
            cmd.args(["--database", &self.database])
                .args(["--default-admin", "admin"])
                .env("VAULT_SERVER_ADMIN_PASSWORD", SERVER_ADMIN_TOKEN)
                .env("VAULT_SERVER_LOG", "info");
        });
    }
}

/// Calls `probe` every `every` until `ok` holds for what it returns, and
/// returns that; panics with `what` and the last value after `timeout`.
/// Tests wait for a condition this way, never for a fixed time.
pub fn poll_until<T: fmt::Debug>(
    timeout: Duration,
    every: Duration,
    what: &str,
    mut probe: impl FnMut() -> T,
    ok: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let value = probe();
        if ok(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "never {what}: {value:?}");
        std::thread::sleep(every);
    }
}

/// A server process on one loopback address, killed on drop; `stop` and
/// `start` again make an outage on the same address.
#[derive(Debug)]
pub struct Listening {
    child: Option<std::process::Child>,
    /// `127.0.0.1:PORT` (`:0` until first started).
    addr: String,
    log: &'static str,
}

impl Listening {
    /// Not started yet; `log` names its stderr for the leak scan.
    pub fn new(addr: &str, log: &'static str) -> Self {
        Self {
            child: None,
            addr: addr.to_owned(),
            log,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)starts `program --listen ADDR`, with what `args` adds.
    pub fn start(&mut self, program: &Path, args: impl FnOnce(&mut Command)) {
        self.stop();
        let mut cmd = Command::new(program);
        cmd.args(["--listen", &self.addr]);
        args(&mut cmd);
        let (child, addr) = spawn_listening(cmd, self.log);
        self.addr = addr;
        self.child = Some(child);
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a server that prints `listening on ADDR` as its first line, and
/// returns it with ADDR. Its stderr is kept for the leak scan as `log`; the
/// rest of its stdout is drained.
pub fn spawn_listening(mut cmd: Command, log: &'static str) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {log}: {e}"));
    let mut stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        leak::keep_log(log, &text);
    });
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let _ = stdout.read_line(&mut line);
    let Some(addr) = line.trim().strip_prefix("listening on ") else {
        let _ = child.kill();
        panic!("{log} did not start (stdout {line:?})");
    };
    let addr = addr.to_owned();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = stdout.read_to_end(&mut sink);
    });
    (child, addr)
}

/// The outcome of one process run.
#[derive(Debug)]
pub struct Run {
    /// What was run, for failure messages.
    pub cmd: String,
    /// Exit code; `-1` when killed by a signal.
    pub code: i32,
    /// Signal that killed it, if any.
    pub signal: Option<i32>,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
    /// Wall-clock duration.
    pub elapsed: Duration,
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "$ {}\nexit: {}{}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
            self.cmd,
            self.code,
            self.signal
                .map(|s| format!(" (signal {s})"))
                .unwrap_or_default(),
            self.stdout,
            self.stderr
        )
    }
}

impl Run {
    /// Panics with the whole run unless it exited 0.
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "expected success:\n{self}");
        self
    }

    /// Panics with the whole run unless it exited with `code`.
    #[track_caller]
    pub fn code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "expected exit code {code}:\n{self}");
        self
    }

    /// Panics unless stderr contains `needle`.
    #[track_caller]
    pub fn stderr_has(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "expected stderr to contain {needle:?}:\n{self}"
        );
        self
    }

    /// Panics unless stdout contains `needle`.
    #[track_caller]
    pub fn stdout_has(&self, needle: &str) -> &Self {
        assert!(
            self.stdout.contains(needle),
            "expected stdout to contain {needle:?}:\n{self}"
        );
        self
    }

    /// Panics if stdout or stderr contains `needle`.
    #[track_caller]
    pub fn never_prints(&self, needle: &str) -> &Self {
        assert!(
            !self.stdout.contains(needle) && !self.stderr.contains(needle),
            "output must not contain {needle:?}:\n{self}"
        );
        self
    }

    /// Panics if the process panicked (a bug, whatever the input).
    #[track_caller]
    pub fn no_panic(&self) -> &Self {
        assert!(
            !self.stderr.contains("panicked at") && self.signal.is_none(),
            "the process panicked or was killed:\n{self}"
        );
        self
    }

    /// Stdout parsed as one JSON document.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{self}"))
    }

    /// The `name`s of the JSON array on stdout (`vault list --format json`).
    pub fn names(&self) -> Vec<String> {
        let listed = self.json();
        let Some(items) = listed.as_array() else {
            panic!("stdout is not a JSON array:\n{self}")
        };
        items
            .iter()
            .map(|r| {
                r["name"]
                    .as_str()
                    .expect("every item has a name")
                    .to_owned()
            })
            .collect()
    }
}

/// Runs `cmd` with `input` on stdin (or /dev/null), capturing output, killing
/// it and failing after `timeout`. Also fails when the process exits but its
/// stdout/stderr stay open (a child it started kept our pipes).
pub fn run_command(mut cmd: Command, input: Option<&[u8]>, timeout: Duration) -> Run {
    match try_run_command(&mut cmd, input, timeout) {
        Ok(run) => run,
        Err(e) => panic!("{e}"),
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn try_run_command(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<Run, String> {
    let desc = describe(cmd);
    let start = Instant::now();
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {desc}: {e}"))?;
    let pid = child.id();
    if let Some(bytes) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            // The process may exit without reading; that is its business.
            let _ = stdin.write_all(&bytes);
        });
    }
    let (out_tx, out_rx) = mpsc::channel();
    let (err_tx, err_rx) = mpsc::channel();
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        let _ = out_tx.send(buf);
    });
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        let _ = err_tx.send(buf);
    });
    let (wait_tx, wait_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = wait_tx.send(child.wait());
    });
    let status = match wait_rx.recv_timeout(timeout) {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Err(format!("waiting for {desc}: {e}")),
        Err(_) => {
            kill_pid(pid, true);
            let partial_out = out_rx
                .recv_timeout(Duration::from_secs(2))
                .unwrap_or_default();
            let partial_err = err_rx
                .recv_timeout(Duration::from_secs(2))
                .unwrap_or_default();
            return Err(format!(
                "TIMEOUT: `{desc}` did not finish within {timeout:?} and was killed\n\
                 --- stdout ---\n{}\n--- stderr ---\n{}",
                String::from_utf8_lossy(&partial_out),
                String::from_utf8_lossy(&partial_err)
            ));
        }
    };
    let pipe_grace = Duration::from_secs(10);
    let stdout = out_rx.recv_timeout(pipe_grace);
    let stderr = err_rx.recv_timeout(pipe_grace);
    let (stdout, stderr) = match (stdout, stderr) {
        (Ok(o), Ok(e)) => (o, e),
        _ => {
            return Err(format!(
                "`{desc}` exited ({status}) but its stdout/stderr stayed open for {pipe_grace:?}: \
                 a process it started (vaultd?) inherited the pipes instead of detaching"
            ));
        }
    };
    let run = Run {
        cmd: desc,
        code: status.code().unwrap_or(-1),
        signal: status.signal(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        elapsed: start.elapsed(),
    };
    leak::record_run(cmd, &run);
    Ok(run)
}

/// Sends SIGKILL (or SIGTERM when `hard` is false) to `pid`; errors ignored.
pub fn kill_pid(pid: u32, hard: bool) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let sig = if hard {
            rustix::process::Signal::KILL
        } else {
            rustix::process::Signal::TERM
        };
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Whether `pid` is a live (non-zombie) process.
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3, after the parenthesised command name, is the state.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The real and effective uid of this process.
pub fn my_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// One throwaway vault. See the crate docs.
#[derive(Debug)]
pub struct VaultHome {
    root: Option<tempfile::TempDir>,
    root_path: PathBuf,
    /// `VAULT_HOME` (not created by the harness: the daemon creates it).
    pub vault_home: PathBuf,
    /// `HOME` of the processes run.
    pub user_home: PathBuf,
    /// Private dir for secret input files (`FIELD=@path`).
    pub files: PathBuf,
    /// The `vault` binary the tests run.
    pub vault_bin: PathBuf,
    /// The `vaultd` binary the tests run.
    pub vaultd_bin: PathBuf,
    /// Run every process as this (uid, gid) instead of ourselves.
    pub user: Option<(u32, u32)>,
    /// Run every process under this umask (through `/bin/sh -c 'umask …'`).
    pub umask: Option<u32>,
    /// Extra environment for every process.
    pub env: BTreeMap<String, String>,
}

impl VaultHome {
    /// A fresh vault home for the current user.
    pub fn new() -> Self {
        Self::build(None)
    }

    /// A fresh vault home owned by `uid`/`gid`, whose processes run as that
    /// user (the caller must be root). The binaries are copied into it so the
    /// other user can execute them wherever the repository lives.
    pub fn new_as(uid: u32, gid: u32) -> Self {
        Self::build(Some((uid, gid)))
    }

    fn build(user: Option<(u32, u32)>) -> Self {
        let bins = binaries();
        let root = tempfile::Builder::new()
            .prefix("ve2e.")
            .tempdir_in("/tmp")
            .expect("create temp dir under /tmp");
        let root_path = root.path().to_path_buf();
        fs::set_permissions(&root_path, fs::Permissions::from_mode(0o700)).unwrap();
        let user_home = root_path.join("h");
        let files = root_path.join("f");
        for d in [&user_home, &files] {
            fs::create_dir(d).unwrap();
            fs::set_permissions(d, fs::Permissions::from_mode(0o700)).unwrap();
        }
        let (vault_bin, vaultd_bin) = match user {
            None => (bins.vault.clone(), bins.vaultd.clone()),
            Some((uid, gid)) => {
                let bin = root_path.join("bin");
                fs::create_dir(&bin).unwrap();
                fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
                let vault = bin.join("vault");
                let vaultd = bin.join("vaultd");
                fs::copy(&bins.vault, &vault).unwrap();
                fs::copy(&bins.vaultd, &vaultd).unwrap();
                for p in [&root_path, &user_home, &files] {
                    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
                }
                (vault, vaultd)
            }
        };
        let vault_home = root_path.join("v");
        let mut env = BTreeMap::new();
        if let Some(p) = std::env::var_os("LLVM_PROFILE_FILE") {
            env.insert(
                "LLVM_PROFILE_FILE".to_owned(),
                p.to_string_lossy().into_owned(),
            );
        }
        Self {
            root: Some(root),
            root_path,
            vault_home,
            user_home,
            files,
            vault_bin,
            vaultd_bin,
            user,
            umask: None,
            env,
        }
    }

    /// The temp dir holding everything of this vault.
    pub fn root(&self) -> &Path {
        &self.root_path
    }

    /// The vault's paths as the binaries compute them.
    pub fn paths(&self) -> VaultPaths {
        VaultPaths::under_home(&self.vault_home)
    }

    /// The daemon's socket.
    pub fn socket(&self) -> PathBuf {
        self.paths().socket
    }

    /// A `Command` for `program` with this vault's environment: a clean env
    /// with `VAULT_HOME`, `HOME`, `PATH`; no `XDG_RUNTIME_DIR`, no
    /// `VAULT_SOCKET`, no terminal.
    pub fn command<I, S>(&self, program: &Path, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = match self.umask {
            Some(mask) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c")
                    .arg(format!("umask {mask:03o}; exec \"$0\" \"$@\""))
                    .arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args);
        cmd.env_clear();
        let bin_dir = self.vault_bin.parent().unwrap_or(Path::new("/"));
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_owned());
        cmd.env("PATH", format!("{}:{path}", bin_dir.display()))
            .env("HOME", &self.user_home)
            .env("VAULT_HOME", &self.vault_home)
            .env("LANG", "C.UTF-8")
            .env("RUST_BACKTRACE", "1")
            .current_dir(&self.user_home);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// `vault ARGS` with stdin from /dev/null.
    pub fn vault<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_command(self.command(&self.vault_bin, args), None, DEFAULT_TIMEOUT)
    }

    /// `vault ARGS` with `input` on stdin.
    pub fn vault_in<I, S>(&self, args: I, input: &[u8]) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_command(
            self.command(&self.vault_bin, args),
            Some(input),
            DEFAULT_TIMEOUT,
        )
    }

    /// `vault ARGS`, returning an error text instead of panicking on a hang
    /// (for worker threads and cleanup).
    pub fn try_vault<I, S>(
        &self,
        args: I,
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Run, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        try_run_command(&mut self.command(&self.vault_bin, args), input, timeout)
    }

    /// `vaultd ARGS` run directly, stdin from /dev/null.
    pub fn vaultd<I, S>(&self, args: I, timeout: Duration) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_command(self.command(&self.vaultd_bin, args), None, timeout)
    }

    /// `vault init --passphrase-stdin` with [`PASSPHRASE`]; must succeed.
    pub fn init(&self) -> Run {
        let run = self.vault_in(
            ["init", "--passphrase-stdin"],
            format!("{PASSPHRASE}\n").as_bytes(),
        );
        run.ok();
        run
    }

    /// `vault unlock --passphrase-stdin` with `passphrase`.
    pub fn unlock_with(&self, passphrase: &str) -> Run {
        self.vault_in(
            ["unlock", "--passphrase-stdin"],
            format!("{passphrase}\n").as_bytes(),
        )
    }

    /// `vault unlock --passphrase-stdin` with [`PASSPHRASE`]; must succeed.
    pub fn unlock(&self) -> Run {
        let run = self.unlock_with(PASSPHRASE);
        run.ok();
        run
    }

    /// `vault login` to `server` with its admin token, read from a file.
    pub fn login(&self, server: &RemoteServer) -> Run {
        let token = self.at_file("server-token", SERVER_ADMIN_TOKEN);
        self.vault(["login", &server.url(), "--token-file", &token[1..]])
    }

    /// A second device of this vault: a new home that logs in to `server`
    /// and joins with [`PASSPHRASE`] (this device must have synced).
    pub fn join(&self, server: &RemoteServer) -> VaultHome {
        let vault_id = self.vault(["status", "--json"]).json()["vault_id"]
            .as_str()
            .expect("status names the vault")
            .to_owned();
        Self::join_id(server, &vault_id)
    }

    /// A new home that logs in to `server` and joins the vault `vault_id`
    /// ([`VaultHome::join`]).
    pub fn join_id(server: &RemoteServer, vault_id: &str) -> VaultHome {
        let second = VaultHome::new();
        second
            .login(server)
            .ok()
            .stderr_has("vault init --join VAULT_ID");
        second
            .vault_in(
                ["init", "--join", vault_id, "--passphrase-stdin"],
                format!("{PASSPHRASE}\n").as_bytes(),
            )
            .ok()
            .no_panic()
            .stderr_has("joined vault");
        second
    }

    /// Writes `config.toml` (0600, its directory 0700), before the daemon
    /// starts.
    pub fn write_config(&self, text: &str) {
        use std::os::unix::fs::DirBuilderExt;
        let config = self.paths().config();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(config.parent().expect("config dir"))
            .unwrap();
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&config)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .unwrap();
    }

    /// Writes `content` to a private file and returns `@PATH` for a
    /// `FIELD=@PATH` argument, so secret values never sit in argv.
    pub fn at_file(&self, name: &str, content: &str) -> String {
        let path = self.files.join(name);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        f.write_all(content.as_bytes()).unwrap();
        if let Some((uid, gid)) = self.user {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
        }
        format!("@{}", path.display())
    }

    /// `vault add NAME --type aws` with `access_key_id`, the secret key
    /// from a file, and `extra` arguments (more fields, `--ttl`, ...).
    pub fn add_aws(&self, name: &str, key_id: &str, secret_key: &str, extra: &[&str]) {
        let f = self.at_file(
            &format!("{}-secret-key", name.replace('/', "_")),
            secret_key,
        );
        let mut args = vec![
            "add".to_owned(),
            name.to_owned(),
            "--type".to_owned(),
            "aws".to_owned(),
            format!("access_key_id={key_id}"),
            format!("secret_access_key={f}"),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        self.vault(&args).ok();
    }

    /// `vault add NAME --type registry` with `registry`, `username` and the
    /// password (`auth`) from a file.
    pub fn add_registry(&self, name: &str, registry: &str, username: &str, password: &str) {
        let f = self.at_file(&format!("{name}-auth"), password);
        self.vault([
            "add",
            name,
            "--type",
            "registry",
            &format!("registry={registry}"),
            &format!("username={username}"),
            &format!("auth={f}"),
        ])
        .ok();
    }

    /// Connects to the daemon's socket directly (10 s I/O timeouts).
    pub fn connect(&self) -> std::io::Result<UnixStream> {
        connect(&self.socket())
    }

    /// The pid the daemon reports in its handshake, if one answers.
    pub fn daemon_pid(&self) -> Option<u32> {
        let mut s = self.connect().ok()?;
        hello(&mut s).ok()
    }

    /// Every live `vaultd` process serving this vault, found through
    /// `/proc/*/environ` (works for daemons the CLI started, and for ones a
    /// test started directly).
    pub fn daemon_pids(&self) -> Vec<u32> {
        let want = format!("VAULT_HOME={}", self.vault_home.display());
        let mut pids = Vec::new();
        let Ok(entries) = fs::read_dir("/proc") else {
            return pids;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let is_vaultd = fs::read_link(entry.path().join("exe"))
                .map(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("vaultd"))
                })
                .unwrap_or(false);
            if !is_vaultd || !pid_alive(pid) {
                continue;
            }
            let Ok(environ) = fs::read(entry.path().join("environ")) else {
                continue;
            };
            if environ.split(|b| *b == 0).any(|kv| kv == want.as_bytes()) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Waits up to `timeout` for every daemon of this vault to exit.
    pub fn wait_no_daemons(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.daemon_pids().is_empty() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops every daemon of this vault: `vault daemon stop`, then SIGTERM,
    /// then SIGKILL. Never panics.
    pub fn stop_daemons(&self) {
        let pids = self.daemon_pids();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            leak::snapshot_daemon(pid, &self.artifacts_dir());
        }
        let _ = self.try_vault(["daemon", "stop"], None, Duration::from_secs(15));
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut term_sent = false;
        loop {
            let pids = self.daemon_pids();
            if pids.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                for pid in pids {
                    eprintln!("e2e: vaultd {pid} survived `vault daemon stop`: SIGKILL");
                    kill_pid(pid, true);
                }
                std::thread::sleep(Duration::from_millis(100));
                return;
            }
            if !term_sent && Instant::now() + Duration::from_secs(2) > deadline {
                for pid in &pids {
                    kill_pid(*pid, false);
                }
                term_sent = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Where this vault's log, daemon snapshots and core files are kept for
    /// the leak scan (see [`leak`]).
    pub fn artifacts_dir(&self) -> PathBuf {
        let name = self
            .root_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "vault".to_owned());
        leak::process_dir().join(name)
    }

    /// Copies `vaultd.log` and any core file into [`Self::artifacts_dir`];
    /// done on drop, and by a test before it unmounts the vault's files.
    pub fn collect_artifacts(&self) {
        leak::collect_files(&self.paths().log(), &self.root_path, &self.artifacts_dir());
    }

    /// Keeps the temp dir after the test (for debugging); prints its path.
    pub fn keep(&mut self) {
        if let Some(root) = self.root.take() {
            let path = root.keep();
            eprintln!("e2e: keeping {}", path.display());
        }
    }
}

impl Default for VaultHome {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for VaultHome {
    fn drop(&mut self) {
        self.stop_daemons();
        self.collect_artifacts();
        if std::env::var_os("VAULT_E2E_KEEP").is_some() {
            self.keep();
        }
    }
}

/// Connects to a socket with 10 s read/write timeouts.
pub fn connect(socket: &Path) -> std::io::Result<UnixStream> {
    let s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// Sends one request and reads one response frame.
pub fn request(
    stream: &mut UnixStream,
    id: u64,
    req: Request,
) -> Result<ResponseFrame, frame::FrameError> {
    frame::write(stream, &RequestFrame { id, req })?;
    frame::read(stream)
}

/// The handshake; returns the daemon's pid.
pub fn hello(stream: &mut UnixStream) -> Result<u32, String> {
    let resp = request(
        stream,
        1,
        Request::Hello {
            protocol: PROTOCOL_VERSION,
            build: BUILD_VERSION.to_owned(),
        },
    )
    .map_err(|e| e.to_string())?;
    match resp.into_result() {
        Ok(Response::Hello { pid, .. }) => Ok(pid),
        Ok(other) => Err(format!("unexpected answer to Hello: {other:?}")),
        Err(e) => Err(format!("Hello refused: {:?}: {}", e.code, e.message)),
    }
}

/// Every entry under `dir` (not following symlinks), `dir` included.
pub fn walk(dir: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir()
            && let Ok(entries) = fs::read_dir(&p)
        {
            for e in entries.flatten() {
                stack.push(e.path());
            }
        }
        out.push((p, meta));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Standard base64 decoding, written here so tests do not lean on the code
/// under test to decode what it encoded.
pub fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let (mut bits, mut n, mut out) = (0u32, 0, Vec::new());
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .unwrap_or_else(|| panic!("{c:?} is not base64"));
        bits = (bits << 6) | v as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    out
}

/// Whether `haystack` contains `needle` (bytes).
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A command found on PATH, if any.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// One record of each credential type (SPEC §6), as `vault add` arguments.
/// Secret values come from `@file` or stdin, never argv.
#[derive(Debug)]
pub struct Sample {
    /// Record name.
    pub name: String,
    /// `--type`.
    pub kind: &'static str,
    /// Everything after `add NAME`.
    pub args: Vec<String>,
    /// Bytes for stdin (a `FIELD=-` argument), if any.
    pub stdin: Option<String>,
    /// A field holding a secret.
    pub secret_field: &'static str,
    /// Its value (contains [`MARK`]).
    pub secret_value: String,
    /// A non-secret field and its value, when the type has one.
    pub plain: Option<(&'static str, String)>,
}

impl Sample {
    /// `vault add` for this sample, which must succeed.
    pub fn add(&self, vh: &VaultHome) -> Run {
        let mut args = vec!["add".to_owned(), self.name.clone()];
        args.extend(self.args.iter().cloned());
        let run = match &self.stdin {
            Some(input) => vh.vault_in(&args, input.as_bytes()),
            None => vh.vault(&args),
        };
        run.ok().never_prints(MARK);
        run
    }
}

/// One sample of each of the 9 types; names end with `suffix`.
pub fn samples(vh: &VaultHome, suffix: &str) -> Vec<Sample> {
    let s = |tag: &str| secret(tag);
    let mut out = Vec::new();
    let mut push = |name: &str,
                    kind: &'static str,
                    args: Vec<String>,
                    stdin: Option<String>,
                    secret_field: &'static str,
                    secret_value: String,
                    plain: Option<(&'static str, String)>| {
        let mut all = vec!["--type".to_owned(), kind.to_owned()];
        all.extend(args);
        out.push(Sample {
            name: format!("{name}{suffix}"),
            kind,
            args: all,
            stdin,
            secret_field,
            secret_value,
            plain,
        });
    };

    let v = s("generic");
    push(
        "app-env",
        "generic",
        vec![format!(
            "API_KEY={}",
            vh.at_file(&format!("generic{suffix}"), &v)
        )],
        None,
        "API_KEY",
        v,
        None,
    );

    let v = s("aws");
    push(
        "aws-dev",
        "aws",
        vec![
            "access_key_id=AKIAE2EEXAMPLE".to_owned(),
            format!(
                "secret_access_key={}",
                vh.at_file(&format!("aws{suffix}"), &v)
            ),
            "region=eu-west-1".to_owned(),
        ],
        None,
        "secret_access_key",
        v,
        Some(("access_key_id", "AKIAE2EEXAMPLE".to_owned())),
    );

    let v = s("data");
    push(
        "bucket.prod",
        "data",
        vec![
            "endpoint=s3://e2e-bucket".to_owned(),
            "access_key_id=AKIADATA".to_owned(),
            format!("access_key={}", vh.at_file(&format!("data{suffix}"), &v)),
        ],
        None,
        "access_key",
        v,
        Some(("endpoint", "s3://e2e-bucket".to_owned())),
    );

    let v = s("registry");
    push(
        "ngc",
        "registry",
        vec![
            "registry=nvcr.io".to_owned(),
            "username=$oauthtoken".to_owned(),
            format!("auth={}", vh.at_file(&format!("registry{suffix}"), &v)),
        ],
        None,
        "auth",
        v,
        Some(("username", "$oauthtoken".to_owned())),
    );

    let key = s("gcp");
    let json = format!(
        "{{\"type\":\"service_account\",\"project_id\":\"e2e-proj\",\"private_key_id\":\"abc\",\
         \"private_key\":\"-----BEGIN PRIVATE KEY-----\\n{key}\\n-----END PRIVATE KEY-----\\n\",\
         \"client_email\":\"e2e@e2e-proj.iam.gserviceaccount.com\"}}"
    );
    push(
        "gcp-sa",
        "gcp",
        vec![
            format!("json={}", vh.at_file(&format!("gcp{suffix}.json"), &json)),
            "project=e2e-proj".to_owned(),
        ],
        None,
        "json",
        json,
        Some(("project", "e2e-proj".to_owned())),
    );

    let v = s("password");
    push(
        "me@corp",
        "password",
        vec![
            "username=alice".to_owned(),
            format!("password={}", vh.at_file(&format!("password{suffix}"), &v)),
            "url=https://corp.example".to_owned(),
        ],
        None,
        "password",
        v,
        Some(("username", "alice".to_owned())),
    );

    // Key files end with a newline and must round-trip byte for byte.
    let v = format!(
        "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n{}\n-----END OPENSSH PRIVATE KEY-----\n",
        s("ssh"),
        s("ssh2")
    );
    push(
        "team/deploy-key",
        "ssh",
        vec![format!(
            "private_key={}",
            vh.at_file(&format!("ssh{suffix}"), &v)
        )],
        None,
        "private_key",
        v,
        None,
    );

    let v = s("file");
    push(
        "netrc_file",
        "file",
        vec![
            format!("content={}", vh.at_file(&format!("file{suffix}"), &v)),
            format!("path={}/netrc-e2e", vh.user_home.display()),
            "mode=0600".to_owned(),
        ],
        None,
        "content",
        v,
        Some(("mode", "0600".to_owned())),
    );

    let v = s("token");
    push(
        "9-gh-token",
        "token",
        vec!["token=-".to_owned(), "env=GH_TOKEN".to_owned()],
        Some(v.clone()),
        "token",
        v,
        Some(("env", "GH_TOKEN".to_owned())),
    );
    out
}

/// The Python with botocore and google-auth to check emitted files with
/// (`VAULT_TEST_PYTHON`), or `None` after printing `SKIP test: ...` and how
/// to get one (`bash .ci/run` makes one in target/ci-venv).
pub fn test_python(test: &str) -> Option<PathBuf> {
    let Some(python) = std::env::var_os("VAULT_TEST_PYTHON").map(PathBuf::from) else {
        eprintln!(
            "SKIP {test}: set VAULT_TEST_PYTHON to a Python with botocore and google-auth \
             (bash .ci/run makes one in target/ci-venv)"
        );
        return None;
    };
    let ok = Command::new(&python)
        .args(["-c", "import botocore.session, google.auth"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "SKIP {test}: {} cannot import botocore and google-auth: pip install botocore google-auth",
            python.display()
        );
        return None;
    }
    Some(python)
}
