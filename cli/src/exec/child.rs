//! The child's private folder and the child process itself.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, IsTerminal, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH};
use signal_hook::iterator::SignalsInfo;
use signal_hook::iterator::exfiltrator::WithOrigin;

use super::mask::Masker;
use super::plan::{FileSpec, Plan};

/// Signals passed on to the child (docs/exec.md).
const FORWARDED: [i32; 7] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH];

/// A 0700 folder for one child's files under the runtime dir, named
/// `<our pid>-<random>` so the daemon can sweep it if we are killed.
/// Removed on drop.
#[derive(Debug)]
pub struct Folder {
    path: PathBuf,
}

impl Folder {
    /// Creates the folder (and `exec_dir`, 0700, when missing).
    pub fn create(exec_dir: &Path) -> Result<Self, String> {
        match DirBuilder::new().mode(0o700).create(exec_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {}: {e}", exec_dir.display())),
        }
        check_private_dir(exec_dir)?;
        let suffix = random_hex(8)?;
        let path = exec_dir.join(format!("{}-{suffix}", std::process::id()));
        DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(Self { path })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder's path as text (it is built from our own dirs, so UTF-8
    /// unless the home dir is not; then lossily).
    pub fn path_str(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// Writes every file, 0600 (or the file's own stricter mode), never
    /// following a symlink and never replacing a file.
    pub fn write_all(&self, files: &[FileSpec]) -> Result<(), String> {
        for file in files {
            let path = self.path.join(&file.rel);
            if let Some(parent) = path.parent().filter(|p| *p != self.path) {
                match DirBuilder::new().mode(0o700).create(parent) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(format!("cannot create {}: {e}", parent.display())),
                }
            }
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            out.write_all(&file.content)
                .and_then(|()| out.sync_all())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            if file.mode != 0o600 {
                fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(file.mode),
                )
                .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))?;
            }
        }
        Ok(())
    }
}

/// `bytes` random bytes from the kernel, as hex.
pub fn random_hex(bytes: usize) -> Result<String, String> {
    let mut random = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    Ok(random.iter().map(|b| format!("{b:02x}")).collect())
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Refuses a folder that others could read or plant files in.
fn check_private_dir(dir: &Path) -> Result<(), String> {
    let meta =
        fs::symlink_metadata(dir).map_err(|e| format!("cannot inspect {}: {e}", dir.display()))?;
    let me = rustix::process::geteuid().as_raw();
    use vault_protocol::private::{self, Found, Want};
    private::check(Found::of(&meta), Want::Dir, me).map_err(|wrong| {
        format!(
            "{} {wrong}: it must be a directory of yours that only you can use: remove it, or \
             run 'chmod 700 {}'",
            dir.display(),
            dir.display()
        )
    })
}

/// Why the child could not be started, as `env`/`sudo` report it.
#[derive(Debug)]
pub struct SpawnError {
    /// 127 when the command is not found, 126 when it cannot be run.
    pub code: i32,
    /// What happened.
    pub message: String,
}

/// Runs the child with the plan's environment and waits for it, passing on
/// signals sent to us. Its stdout and stderr go through `masker` when they
/// are not terminals. Returns its exit code, or 128+N when signal N killed
/// it.
pub fn run(
    program: &OsString,
    args: &[OsString],
    plan: &Plan,
    exec_names: &str,
    masker: &Masker,
) -> Result<i32, SpawnError> {
    let mut command = Command::new(program);
    command.args(args);
    let mask_out = !masker.is_empty() && !io::stdout().is_terminal();
    let mask_err = !masker.is_empty() && !io::stderr().is_terminal();
    if mask_out {
        command.stdout(Stdio::piped());
    }
    if mask_err {
        command.stderr(Stdio::piped());
    }
    for key in &plan.unset {
        command.env_remove(key);
    }
    for (key, value) in &plan.set {
        command.env(key, value.value.expose_secret());
    }
    command.env(super::VAULT_EXEC, exec_names);

    // Subscribe before spawning so no signal falls between the two.
    let signals = SignalsInfo::<WithOrigin>::new(FORWARDED).map_err(|e| SpawnError {
        code: 1,
        message: format!("cannot install signal handlers: {e}"),
    })?;
    let mut child = command.spawn().map_err(|e| {
        let name = super::describe(program);
        match e.kind() {
            io::ErrorKind::NotFound => SpawnError {
                code: 127,
                message: format!("{name}: command not found"),
            },
            _ => SpawnError {
                code: 126,
                message: format!("cannot run {name}: {e}"),
            },
        }
    })?;
    // The child's copy of the environment is made; ours holds no secret.
    drop(command);

    let (out, err) = (child.stdout.take(), child.stderr.take());
    let status = std::thread::scope(|scope| {
        if let Some(out) = out {
            scope.spawn(move || masker.pump(out, io::stdout().lock()));
        }
        if let Some(err) = err {
            scope.spawn(move || masker.pump(err, io::stderr().lock()));
        }
        wait_forwarding(&mut child, signals)
    });
    match status {
        Ok(status) => Ok(status
            .code()
            .or_else(|| status.signal().map(|n| 128 + n))
            .unwrap_or(1)),
        Err(e) => Err(SpawnError {
            code: 1,
            message: format!("lost track of the command: {e}"),
        }),
    }
}

/// Waits for `child`, passing on the signals `signals` catches meanwhile.
fn wait_forwarding(
    child: &mut std::process::Child,
    mut signals: SignalsInfo<WithOrigin>,
) -> io::Result<std::process::ExitStatus> {
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    let handle = signals.handle();
    let forwarder = std::thread::spawn(move || {
        for origin in signals.forever() {
            // A signal from the terminal (no sending process) already
            // reached the child, which shares our process group; only
            // signals sent to us alone are passed on.
            if origin.process.is_none() {
                continue;
            }
            if let (Some(pid), Some(sig)) =
                (pid, rustix::process::Signal::from_named_raw(origin.signal))
            {
                let _ = rustix::process::kill_process(pid, sig);
            }
        }
    });
    let status = child.wait();
    handle.close();
    let _ = forwarder.join();
    status
}
