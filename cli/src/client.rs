//! The connection to `vaultd`: connect (or start it and connect), handshake,
//! then requests and responses in order on one socket.
//!
//! Synchronous on purpose (docs/protocol.md): a `vault get` is one process start and
//! one round trip — read-only first requests travel in the same write as the
//! `Hello`. No async runtime, and nothing here ever deletes a socket file (the
//! daemon removes stale ones).

use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, BufRead, BufReader};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use interprocess::local_socket::{GenericFilePath, Stream, ToFsName, prelude::*};
use vault_protocol::frame::{self, FrameError};
use vault_protocol::message::{ListFilter, RecordSummary};
use vault_protocol::paths::VaultPaths;
use vault_protocol::{
    BUILD_VERSION, ErrorCode, PROTOCOL_VERSION, Request, RequestFrame, Response, ResponseFrame,
    WireError,
};

use crate::error::{CliResult, failed, unexpected};

/// How long a freshly started `vaultd` may take to say `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to keep retrying when another `vaultd` is already starting.
const ALREADY_RUNNING_RETRY: Duration = Duration::from_secs(5);

/// Which vault to talk to: its paths, and the `--socket` the user gave.
#[derive(Debug, Clone)]
pub struct Target {
    /// Every path of the vault.
    pub paths: VaultPaths,
    /// `--socket` / `VAULT_SOCKET`, made absolute; passed on to `vaultd`.
    pub socket_override: Option<PathBuf>,
}

impl Target {
    /// The vault from the environment (`VAULT_HOME`) and `--socket`.
    pub fn from_env(socket: Option<PathBuf>) -> CliResult<Self> {
        // Absolute, because the daemon does not run in our working directory.
        let socket = socket
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| std::path::absolute(&p).unwrap_or(p));
        let paths = VaultPaths::from_env(socket.clone()).map_err(failed)?;
        Ok(Self {
            paths,
            socket_override: socket,
        })
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.paths.socket
    }

    /// An "unreachable" error (exit 6): `what` says what happened and what to
    /// do; the socket and the daemon's log are named after it.
    pub fn unreachable(&self, what: impl std::fmt::Display) -> WireError {
        WireError::new(
            ErrorCode::Unreachable,
            format!(
                "{what} (socket {}, daemon log {})",
                self.paths.socket.display(),
                self.paths.log().display()
            ),
        )
    }
}

/// What the daemon said in the handshake.
#[derive(Debug, Clone)]
pub struct DaemonHello {
    /// The daemon's pid.
    pub pid: u32,
    /// The daemon's build version.
    pub build: String,
}

/// An open connection to `vaultd`.
#[derive(Debug)]
pub struct Client {
    stream: Stream,
    target: Target,
    next_id: u64,
    hello: Option<DaemonHello>,
    /// Whether this CLI started the daemon to get this connection.
    pub started_daemon: bool,
}

impl Client {
    /// Connects to the running daemon, starting it first if none runs.
    pub fn connect_or_start(target: &Target) -> CliResult<Self> {
        match connect_socket(target.socket()) {
            Ok(stream) => Ok(Self::new(stream, target, false)),
            Err(e) if is_absent(&e) => {
                let stream = start_daemon(target)?;
                Ok(Self::new(stream, target, true))
            }
            Err(e) => Err(connect_error(target, &e)),
        }
    }

    /// Connects to the running daemon; `None` when none runs. Never starts one.
    pub fn connect_running(target: &Target) -> CliResult<Option<Self>> {
        match connect_socket(target.socket()) {
            Ok(stream) => Ok(Some(Self::new(stream, target, false))),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(connect_error(target, &e)),
        }
    }

    fn new(stream: Stream, target: &Target, started_daemon: bool) -> Self {
        Self {
            stream,
            target: target.clone(),
            next_id: 1,
            hello: None,
            started_daemon,
        }
    }

    /// The handshake (done once per connection).
    pub fn hello(&mut self) -> CliResult<DaemonHello> {
        if let Some(hello) = &self.hello {
            return Ok(hello.clone());
        }
        let id = self.send(hello_request())?;
        self.read_hello(id)
    }

    /// The pid of the process at the other end of the socket, from the
    /// kernel (works even when the handshake fails).
    pub fn peer_pid(&self) -> Option<u32> {
        let pid = self.stream.peer_creds().ok()?.pid()?;
        u32::try_from(pid).ok()
    }

    /// Sends one request and returns the daemon's answer.
    pub fn call(&mut self, req: Request) -> CliResult<Response> {
        if self.hello.is_none() {
            if is_read_only(&req) {
                // A daemon that was dying as we connected (killed, shutting
                // down) accepts and then drops the connection: a read-only
                // request (it holds no secret) is sent once more on a new
                // connection, which finds the socket dead and starts a new
                // daemon.
                let again = if self.started_daemon {
                    None
                } else {
                    serde_json::to_value(&req).ok()
                };
                let first = self.pipelined(req);
                return match (first, again) {
                    (Err(e), Some(again)) if e.code == ErrorCode::Unreachable => {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        *self = Self::connect_or_start(&self.target)?;
                        let req = serde_json::from_value(again).map_err(|_| e)?;
                        self.pipelined(req)
                    }
                    (result, _) => result,
                };
            }
            self.hello()?;
        }
        let id = self.send(req)?;
        self.read_response(id)
    }

    /// One round trip for a read-only request on a fresh connection: the
    /// hello and the request go out before we wait.
    fn pipelined(&mut self, req: Request) -> CliResult<Response> {
        let hello_id = self.send(hello_request())?;
        let id = self.send(req)?;
        self.read_hello(hello_id)?;
        self.read_response(id)
    }

    fn send(&mut self, req: Request) -> CliResult<u64> {
        let id = self.next_id;
        self.next_id += 1;
        frame::write(&mut self.stream, &RequestFrame { id, req })
            .map_err(|e| self.frame_error(e))?;
        Ok(id)
    }

    fn read_response(&mut self, id: u64) -> CliResult<Response> {
        let response: ResponseFrame =
            frame::read(&mut self.stream).map_err(|e| self.frame_error(e))?;
        if response.id != id && response.id != 0 {
            return Err(WireError::new(
                ErrorCode::BadFrame,
                format!(
                    "vaultd answered request {} while request {id} was waiting: run 'vault daemon restart'",
                    response.id
                ),
            ));
        }
        response.into_result()
    }

    fn read_hello(&mut self, id: u64) -> CliResult<DaemonHello> {
        match self.read_response(id)? {
            Response::Hello {
                protocol,
                build,
                pid,
            } => {
                if protocol != PROTOCOL_VERSION || build != BUILD_VERSION {
                    return Err(WireError::new(
                        ErrorCode::VersionMismatch,
                        format!(
                            "vaultd (pid {pid}) is build {build} with protocol {protocol}, but this vault \
                             is build {BUILD_VERSION} with protocol {PROTOCOL_VERSION}: run 'vault daemon restart'"
                        ),
                    ));
                }
                let hello = DaemonHello { pid, build };
                self.hello = Some(hello.clone());
                Ok(hello)
            }
            _ => Err(unexpected("the handshake")),
        }
    }

    fn frame_error(&self, e: FrameError) -> WireError {
        match e {
            FrameError::Closed => self.target.unreachable(
                "vaultd closed the connection: check its log, then try 'vault daemon restart'",
            ),
            FrameError::Io(e) => self
                .target
                .unreachable(format_args!(
                "lost the connection to vaultd ({e}): check its log, then try 'vault daemon restart'"
            )),
            FrameError::TooLarge(_) | FrameError::Malformed(_) => WireError::new(
                ErrorCode::BadFrame,
                format!(
                    "cannot exchange a message with vaultd: {e}; if the daemon was upgraded, run 'vault daemon restart'"
                ),
            ),
        }
    }
}

fn hello_request() -> Request {
    Request::Hello {
        protocol: PROTOCOL_VERSION,
        build: BUILD_VERSION.to_owned(),
    }
}

/// Every record matching `filter`: the daemon answers `list` in pages that
/// each fit a frame, and this follows them. `call` sends one request (built
/// again on a retry).
pub fn list_all(
    filter: &ListFilter,
    mut call: impl FnMut(&dyn Fn() -> Request) -> CliResult<Response>,
) -> CliResult<Vec<RecordSummary>> {
    let mut records = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = call(&|| Request::List {
            filter: filter.clone(),
            after: after.clone(),
        })?;
        let Response::Records {
            records: page,
            next,
        } = page
        else {
            return Err(unexpected("list"));
        };
        records.extend(page);
        match next {
            Some(name) => after = Some(name),
            None => return Ok(records),
        }
    }
}

/// Requests that change nothing, and so may be sent before the handshake is
/// answered (a daemon of another version cannot be harmed by them).
fn is_read_only(req: &Request) -> bool {
    matches!(
        req,
        Request::Status
            | Request::Get { .. }
            | Request::Resolve { .. }
            | Request::List { .. }
            | Request::History { .. }
    )
}

/// Connects to the socket file (never an abstract name).
pub fn connect_socket(socket: &Path) -> io::Result<Stream> {
    let name = socket.to_fs_name::<GenericFilePath>()?;
    Stream::connect(name)
}

/// No daemon listens: the socket is missing, or stale.
pub fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
    )
}

fn connect_error(target: &Target, e: &io::Error) -> WireError {
    let hint = if e.kind() == io::ErrorKind::PermissionDenied {
        "; the socket or its directory may belong to another user"
    } else {
        ""
    };
    target.unreachable(format_args!(
        "cannot connect to vaultd ({e}){hint}: check its log, then try 'vault daemon restart'"
    ))
}

/// Starts `vaultd` and returns a connection to it. A lock file makes
/// parallel CLIs start one daemon: the second one finds it running.
fn start_daemon(target: &Target) -> CliResult<Stream> {
    let paths = &target.paths;
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&paths.runtime_dir)
        .map_err(|e| {
            failed(format!(
                "cannot create the runtime directory {}: {e}",
                paths.runtime_dir.display()
            ))
        })?;
    let lock_path = paths.start_lock();
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| failed(format!("cannot open {}: {e}", lock_path.display())))?;
    lock.lock()
        .map_err(|e| failed(format!("cannot lock {}: {e}", lock_path.display())))?;

    // Another CLI may have started it while we waited for the lock.
    match connect_socket(target.socket()) {
        Ok(stream) => return Ok(stream),
        Err(e) if is_absent(&e) => {}
        Err(e) => return Err(connect_error(target, &e)),
    }

    let program = vaultd_program();
    let mut command = Command::new(&program);
    if let Some(socket) = &target.socket_override {
        command.arg("--socket").arg(socket);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            let place = if program.is_absolute() {
                program.display().to_string()
            } else {
                "next to vault or on PATH".to_owned()
            };
            target.unreachable(format_args!(
                "cannot start vaultd ({place}): {e}; install vaultd in the directory of vault or on PATH"
            ))
        })?;
    let Some(stdout) = child.stdout.take() else {
        return Err(target.unreachable("cannot read vaultd's readiness line; see its log"));
    };

    // vaultd writes exactly one line: `ready <pid>` or `error: <message>`.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let result = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(result);
    });
    let line = match rx.recv_timeout(READY_TIMEOUT) {
        Ok(Ok(line)) => line,
        Ok(Err(e)) => {
            return Err(target.unreachable(format_args!(
                "cannot read vaultd's readiness line ({e}); see its log"
            )));
        }
        Err(_) => {
            return Err(target.unreachable(format_args!(
                "vaultd did not report ready within {} s; see its log",
                READY_TIMEOUT.as_secs()
            )));
        }
    };
    let line = line.trim_end();
    if line.starts_with("ready") {
        return connect_socket(target.socket()).map_err(|e| connect_error(target, &e));
    }
    if let Some(message) = line.strip_prefix("error: ") {
        // It exits right after saying so: reap it, so that when we report
        // the error no vaultd of ours is left, not even as a zombie.
        reap(&mut child);
        if message.contains("already running") {
            return connect_with_retry(target);
        }
        return Err(target.unreachable(format_args!("vaultd could not start: {message}")));
    }
    if line.is_empty() {
        reap(&mut child);
        let status = child
            .try_wait()
            .ok()
            .flatten()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        return Err(target.unreachable(format_args!(
            "vaultd exited before it was ready{status}; see its log"
        )));
    }
    Err(target.unreachable(format_args!(
        "vaultd said '{}' instead of 'ready': is the vaultd found on PATH another program?",
        line.escape_debug()
    )))
}

/// Waits (up to 2 s) for a daemon that reported failure to exit.
fn reap(child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Another daemon holds the vault: it may still be binding its socket.
fn connect_with_retry(target: &Target) -> CliResult<Stream> {
    let deadline = Instant::now() + ALREADY_RUNNING_RETRY;
    loop {
        match connect_socket(target.socket()) {
            Ok(stream) => return Ok(stream),
            Err(e) if is_absent(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(target.unreachable(format_args!(
                    "another vaultd holds this vault but its socket does not answer ({e}): \
                     stop it with 'vault daemon stop' or kill it, then retry"
                )));
            }
        }
    }
}

/// Whether no process holds the daemon lock. The shared lock is dropped at
/// once; it is only a probe.
fn daemon_lock_free(target: &Target) -> bool {
    match std::fs::File::open(target.paths.daemon_lock()) {
        Ok(file) => file.try_lock_shared().is_ok(),
        Err(_) => true,
    }
}

/// `vaultd` next to this executable, else from PATH.
fn vaultd_program() -> PathBuf {
    std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("vaultd"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("vaultd"))
}

/// Waits until no daemon serves the socket (the file is gone, or nothing
/// listens on it any more) and the daemon lock is free, so the process has
/// closed the database and exited.
pub fn wait_until_stopped(target: &Target, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let gone = !target.socket().exists()
            || matches!(connect_socket(target.socket()), Err(e) if is_absent(&e));
        if gone && daemon_lock_free(target) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target_in(dir: &Path) -> Target {
        Target {
            paths: VaultPaths::under_home(dir),
            socket_override: None,
        }
    }

    #[test]
    fn missing_socket_means_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let target = target_in(dir.path());
        assert!(Client::connect_running(&target).unwrap().is_none());
        assert!(wait_until_stopped(&target, Duration::ZERO));
    }

    #[test]
    fn unreachable_errors_name_socket_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let target = target_in(dir.path());
        let err = target.unreachable("boom");
        assert_eq!(err.code.exit_code(), 6);
        assert!(err.message.contains("vaultd.sock"), "{}", err.message);
        assert!(err.message.contains("vaultd.log"), "{}", err.message);
    }

    #[test]
    fn only_read_only_requests_are_pipelined() {
        assert!(is_read_only(&Request::Get { name: "a".into() }));
        assert!(is_read_only(&Request::Status));
        assert!(!is_read_only(&Request::Remove {
            name: "a".into(),
            force: false,
        }));
        assert!(!is_read_only(&Request::Shutdown));
    }
}
