//! Running processes: one command with a timeout ([`Run`]), servers on a loopback address, polling, pids.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::*;

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

pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub(crate) fn try_run_command(
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

/// Starts a server that prints the port it listens on as its first line
/// of stdout: the child, and that port.
pub fn spawn_with_port(mut cmd: Command) -> (std::process::Child, String) {
    use std::io::BufRead as _;
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut port = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = std::io::BufReader::new(out).read_line(&mut port);
    }
    let port = port.trim().to_owned();
    assert!(!port.is_empty(), "{cmd:?} printed no port");
    (child, port)
}
