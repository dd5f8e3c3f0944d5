//! [`VaultHome`], one throwaway vault, and talking to its daemon's socket directly.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vault_protocol::frame;
use vault_protocol::message::{Request, RequestFrame, Response, ResponseFrame};
use vault_protocol::paths::VaultPaths;
use vault_protocol::{BUILD_VERSION, PROTOCOL_VERSION};

use crate::*;

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

    /// `vault get NAME --field F`, which must succeed: the value without
    /// its newline.
    pub fn field(&self, name: &str, field: &str) -> String {
        let run = self.vault(["get", name, "--field", field]);
        run.ok();
        run.stdout.trim_end_matches('\n').to_owned()
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
        self.login_at(&server.url())
    }

    /// [`VaultHome::login`] to `url`, a server reached through a proxy.
    pub fn login_at(&self, url: &str) -> Run {
        let token = self.at_file("server-token", SERVER_ADMIN_TOKEN);
        self.vault(["login", url, "--token-file", &token[1..]])
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

    /// `vault --json audit ARGS…`: its entries, its problems and its exit
    /// code; no secret marker in its output.
    pub fn audit(&self, args: &[&str]) -> (Vec<serde_json::Value>, Vec<String>, i32) {
        let mut all = vec!["--json", "audit"];
        all.extend_from_slice(args);
        let run = self.vault(all);
        run.no_panic();
        assert!(
            !run.stdout.contains(crate::MARK) && !run.stderr.contains(crate::MARK),
            "{run}"
        );
        let doc: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        let entries = doc["entries"].as_array().unwrap().clone();
        let problems = doc["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_owned())
            .collect();
        (entries, problems, run.code)
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
