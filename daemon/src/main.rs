//! `vaultd`: see the crate docs in lib.rs and docs/architecture.md and docs/protocol.md.
//!
//! Start-up order matters: harden the process, resolve and verify every vault
//! path, take the one-daemon lock, open (never create) the database, clear a
//! stale socket only if nothing answers on it, listen, and only then report
//! `ready` to the CLI that spawned us.
//!
//! Under a service manager with socket activation (systemd's `LISTEN_FDS`
//! protocol, `packaging/systemd/vaultd.socket`) the listening socket is
//! inherited as fd 3 instead of bound here; it must be the vault's socket
//! path, in a private runtime directory, and every connection on it is still
//! checked for the peer's uid (`server`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use interprocess::os::unix::local_socket::ListenerOptionsExt;
use tracing::{error, info};
use vault_daemon::config::Config;
use vault_daemon::engine::Engine;
use vault_daemon::fsutil;
use vault_daemon::server::{self, Daemon};
use vault_protocol::paths::VaultPaths;

struct Args {
    foreground: bool,
    socket: Option<PathBuf>,
}

/// The listening sockets handed over by the service manager: the vault's
/// socket and, when the socket unit lists it too, the SSH agent's.
struct Inherited(Vec<UnixListener>);

type UnixListener = std::os::unix::net::UnixListener;

/// Takes the sockets passed by systemd (`LISTEN_PID` is ours and
/// `LISTEN_FDS` ≥ 1: fds 3, 4…; at most two are used). Must run before any
/// thread starts, because it clears those variables from the environment
/// (so no child of ours takes them for its own). `listenfd` does the fd
/// handling so that this crate keeps `unsafe_code` forbidden. Which socket
/// is which is told by its path, in start().
fn take_inherited_socket() -> Result<Option<Inherited>, Fatal> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    if !ours || count == 0 {
        // Not for us (LISTEN_PID names another process, or no LISTEN_PID:
        // the variables leaked from a parent). listenfd would accept a
        // missing LISTEN_PID, so it is not asked.
        return Ok(None);
    }
    if count > 2 {
        return Err(Fatal(
            1,
            format!(
                "the service manager passed {count} sockets; vaultd takes two at most (vaultd.sock \
                 and ssh-agent.sock): check ListenStream= in vaultd.socket"
            ),
        ));
    }
    let mut fds = listenfd::ListenFd::from_env();
    let mut listeners = Vec::with_capacity(count);
    for i in 0..count {
        match fds.take_unix_listener(i) {
            Ok(Some(listener)) => listeners.push(listener),
            Ok(None) => {}
            Err(e) => {
                return Err(Fatal(
                    1,
                    format!(
                        "the service manager passed fd {} but it is not a listening unix socket \
                         ({e}): check ListenStream= in vaultd.socket",
                        3 + i
                    ),
                ));
            }
        }
    }
    Ok((!listeners.is_empty()).then_some(Inherited(listeners)))
}

/// Sorts the inherited sockets by path into the vault's and the agent's;
/// any other path is refused.
fn sort_inherited(
    inherited: Inherited,
    paths: &VaultPaths,
) -> Result<(UnixListener, Option<UnixListener>), Fatal> {
    let (mut main, mut agent) = (None, None);
    for listener in inherited.0 {
        let addr = listener.local_addr()?;
        let Some(path) = addr.as_pathname() else {
            return Err(Fatal(
                1,
                "the service manager passed an unnamed or abstract socket: set ListenStream= in \
                 vaultd.socket to a path (%t/vault/vaultd.sock)"
                    .to_owned(),
            ));
        };
        let slot = if path == paths.socket {
            &mut main
        } else if path == paths.agent_socket() {
            &mut agent
        } else {
            return Err(Fatal(
                1,
                format!(
                    "the service manager passed a socket at {} but this vault's socket is {} (and \
                     its SSH agent's {}): make ListenStream= in vaultd.socket and \
                     VAULT_SOCKET/VAULT_HOME agree",
                    path.display(),
                    paths.socket.display(),
                    paths.agent_socket().display()
                ),
            ));
        };
        check_inherited(path)?;
        *slot = Some(listener);
    }
    let main = main.ok_or_else(|| {
        Fatal(
            1,
            format!(
                "the service manager passed no socket at {}: add ListenStream=%t/vault/vaultd.sock \
                 to vaultd.socket",
                paths.socket.display()
            ),
        )
    })?;
    Ok((main, agent))
}

/// A tokio listener on a socket the service manager made.
fn adopt(listener: UnixListener) -> Result<interprocess::local_socket::tokio::Listener, Fatal> {
    let listener = interprocess::os::unix::uds_local_socket::Listener::from(listener);
    let listener = interprocess::os::unix::uds_local_socket::tokio::Listener::try_from(listener)
        .map_err(|e| Fatal(1, format!("cannot use the inherited socket: {e}")))?;
    Ok(listener.into())
}

/// Checks an inherited socket as strictly as one we bind: at one of the
/// vault's paths (sort_inherited), owned by us, 0600 or tighter, in a
/// directory that is ours and 0700.
fn check_inherited(path: &Path) -> Result<(), Fatal> {
    // Its directory was checked by start() (ensure_private_dir of the
    // socket's parent), and the path is this vault's socket.
    let meta = std::fs::symlink_metadata(path)?;
    let euid = rustix::process::geteuid().as_raw();
    use vault_protocol::private::{self, Found, Want};
    if let Err(wrong) = private::check(Found::of(&meta), Want::Socket, euid) {
        return Err(Fatal(
            1,
            format!(
                "the inherited socket {} {wrong}; it must be yours and 0600: set \
                 SocketMode=0600 in vaultd.socket",
                path.display(),
            ),
        ));
    }
    Ok(())
}

const USAGE: &str = "usage: vaultd [--foreground] [--socket PATH]

The vault daemon. 'vault' starts it on demand; run it with --foreground under
a service manager (systemd, launchd). VAULT_HOME=DIR keeps the whole vault in DIR.";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        foreground: false,
        socket: None,
    };
    let mut it = std::env::args_os().skip(1);
    while let Some(arg) = it.next() {
        match arg.to_str() {
            Some("--foreground") => args.foreground = true,
            Some("--socket") => {
                args.socket = Some(it.next().ok_or("--socket needs a PATH")?.into());
            }
            Some("--version" | "-V") => {
                println!("vaultd {}", vault_protocol::BUILD_VERSION);
                std::process::exit(0);
            }
            Some("--help" | "-h") => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {arg:?}\n{USAGE}")),
        }
    }
    Ok(args)
}

/// A start-up failure with its exit code.
struct Fatal(u8, String);

impl<E: std::fmt::Display> From<E> for Fatal {
    fn from(e: E) -> Self {
        Fatal(1, e.to_string())
    }
}

fn harden() {
    // No core dumps and no ptrace attach by other processes of this user: the
    // unlocked key lives in this process's memory.
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Core,
        rustix::process::Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    );
}

fn verify_paths(paths: &VaultPaths) -> Result<(), Fatal> {
    for dir in [
        &paths.data_dir,
        &paths.config_dir,
        &paths.state_dir,
        &paths.runtime_dir,
    ] {
        fsutil::ensure_private_dir(dir)?;
    }
    for file in &paths.private_files() {
        fsutil::check_private_if_exists(file)?;
    }
    Ok(())
}

fn init_logging(paths: &VaultPaths, foreground: bool) -> Result<(), Fatal> {
    let file = fsutil::open_private(&paths.log(), true)
        .map_err(|e| Fatal(1, format!("cannot open {}: {e}", paths.log().display())))?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("VAULTD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let file = std::sync::Mutex::new(file);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    if foreground {
        let tee = Tee(file);
        builder.with_writer(tee).init();
    } else {
        builder.with_writer(file).init();
    }
    Ok(())
}

/// Writes log lines to the file and to stderr (foreground mode).
struct Tee(std::sync::Mutex<std::fs::File>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Tee {
    type Writer = TeeWriter<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        TeeWriter(&self.0)
    }
}

struct TeeWriter<'a>(&'a std::sync::Mutex<std::fs::File>);

impl Write for TeeWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Takes the exclusive daemon lock, held for the life of the process.
fn take_daemon_lock(paths: &VaultPaths) -> Result<std::fs::File, Fatal> {
    let path = paths.daemon_lock();
    let mut file = fsutil::open_private(&path, false)
        .map_err(|e| Fatal(1, format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(Fatal(
                5,
                format!(
                    "vaultd is already running for this vault (pid {}); stop it with 'vault daemon stop'",
                    pid.trim()
                ),
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(Fatal(1, format!("cannot lock {}: {e}", path.display())));
        }
    }
    file.set_len(0)?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

/// Removes a socket file left by a daemon that died, but only when nothing
/// answers on it.
fn clear_stale_socket(socket: &Path) -> Result<(), Fatal> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(socket) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    if !meta.file_type().is_socket() {
        return Err(Fatal(
            1,
            format!(
                "{} exists and is not a socket: move it aside",
                socket.display()
            ),
        ));
    }
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => Err(Fatal(
            5,
            format!(
                "another process is serving {}; stop it with 'vault daemon stop'",
                socket.display()
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(socket)?;
            Ok(())
        }
        Err(e) => Err(Fatal(1, format!("cannot check {}: {e}", socket.display()))),
    }
}

/// A listening socket and, when we bound it (not the service manager),
/// its path, removed at exit.
type Listening = (interprocess::local_socket::tokio::Listener, Option<PathBuf>);

/// What start() leaves running: the daemon, its socket, the held daemon
/// lock, and the SSH agent's socket when it could be bound.
struct Started {
    daemon: Arc<Daemon>,
    main: Listening,
    lock: std::fs::File,
    agent: Option<Listening>,
}

fn start(args: &Args, inherited: Option<Inherited>) -> Result<Started, Fatal> {
    let paths = VaultPaths::from_env(args.socket.clone())?;
    verify_paths(&paths)?;
    if let Some(dir) = paths.socket.parent() {
        fsutil::ensure_private_dir(dir)?;
    }
    init_logging(&paths, args.foreground)?;
    let lock = take_daemon_lock(&paths)?;
    let config = Config::load(&paths.config())?;
    let engine = Engine::open(paths.clone(), config)?;
    let (inherited, inherited_agent) = match inherited {
        Some(i) => {
            let (main, agent) = sort_inherited(i, &paths)?;
            (Some(main), agent)
        }
        None => (None, None),
    };
    let (listener, owned_socket): (interprocess::local_socket::tokio::Listener, Option<PathBuf>) =
        match inherited {
            Some(inherited) => {
                let listener = adopt(inherited)?;
                info!(
                    pid = std::process::id(),
                    "vaultd serving a socket passed by the service manager"
                );
                // The service manager made the socket file and removes it.
                (listener, None)
            }
            None => {
                clear_stale_socket(&paths.socket)?;
                let name = paths.socket.as_path().to_fs_name::<GenericFilePath>()?;
                let listener = ListenerOptions::new()
                    .name(name)
                    .mode(0o600)
                    .create_tokio()
                    .map_err(|e| {
                        Fatal(
                            1,
                            format!("cannot listen on {}: {e}", paths.socket.display()),
                        )
                    })?;
                info!(pid = std::process::id(), "vaultd listening");
                (listener, Some(paths.socket.clone()))
            }
        };
    let daemon = Daemon::new(engine, paths.socket.display().to_string());
    let agent = match inherited_agent {
        Some(inherited) => {
            info!("ssh agent serving a socket passed by the service manager");
            Some((adopt(inherited)?, None))
        }
        None => listen_agent(&paths.agent_socket()),
    };
    Ok(Started {
        daemon,
        main: (listener, owned_socket),
        lock,
        agent,
    })
}

/// The SSH agent's socket (issue 25), bound here even under socket
/// activation, 0600 from the start in the runtime directory start() has
/// checked. A failure is logged and the daemon serves without an agent:
/// the vault itself must not depend on it.
fn listen_agent(path: &Path) -> Option<Listening> {
    let bound = clear_stale_socket(path)
        .map_err(|Fatal(_, msg)| msg)
        .and_then(|()| {
            let name = path
                .to_fs_name::<GenericFilePath>()
                .map_err(|e| e.to_string())?;
            ListenerOptions::new()
                .name(name)
                .mode(0o600)
                .create_tokio()
                .map_err(|e| e.to_string())
        });
    match bound {
        Ok(listener) => {
            info!("ssh agent listening");
            Some((listener, Some(path.to_path_buf())))
        }
        Err(e) => {
            error!("no ssh agent: cannot listen on {}: {e}", path.display());
            None
        }
    }
}

/// Every heap block is wiped as it is freed, and the old block of a buffer
/// that grew is wiped when it moves (issue 18, docs/threat-model.md): a
/// secret that was serialised, copied or outgrown leaves no copy behind
/// once its owner drops it. 1Password's wrapper around the system allocator.
#[global_allocator]
static ALLOC: zeroizing_alloc::ZeroAlloc<std::alloc::System> =
    zeroizing_alloc::ZeroAlloc(std::alloc::System);

fn main() -> ExitCode {
    harden();
    // Before any thread exists: this edits the environment.
    let inherited = match take_inherited_socket() {
        Ok(i) => i,
        Err(fatal) => {
            eprintln!("vaultd: {}", fatal.1);
            return ExitCode::from(fatal.0);
        }
    };
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vaultd: {e}");
            return ExitCode::from(2);
        }
    };
    if !args.foreground {
        // Leave the CLI's session so its terminal's signals and hangup do not
        // reach us.
        let _ = rustix::process::setsid();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return report(&args, Fatal(1, format!("cannot start runtime: {e}"))),
    };
    let _guard = runtime.enter();
    let Started {
        daemon,
        main: (listener, socket),
        lock,
        agent,
    } = match start(&args, inherited) {
        Ok(v) => v,
        Err(fatal) => return report(&args, fatal),
    };
    if !args.foreground {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "ready {}", std::process::id());
        let _ = out.flush();
        detach_stdio();
    }
    let agent_socket = runtime.block_on(async {
        let d = Arc::clone(&daemon);
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
                signal(SignalKind::hangup()),
            ) else {
                error!("cannot install signal handlers");
                return;
            };
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    // A lost terminal is no reason to drop the vault.
                    _ = hup.recv() => continue,
                }
            }
            info!("signal received");
            d.request_shutdown();
        });
        let agent_socket = agent.and_then(|(agent, path)| {
            tokio::spawn(vault_daemon::agent::serve(Arc::clone(&daemon), agent));
            path
        });
        server::run(daemon, listener).await;
        agent_socket
    });
    // Dropping the runtime drops every task, and with them the last handle
    // on the engine: the key is wiped and the database closed (its WAL
    // checkpointed) before anyone can see us gone.
    drop(_guard);
    drop(runtime);
    for socket in socket.iter().chain(agent_socket.iter()) {
        let _ = std::fs::remove_file(socket);
    }
    info!("vaultd stopped");
    // The daemon lock is released by the kernel as the process exits, not
    // before: a free lock means this process is gone (`vault daemon stop`
    // waits for it).
    std::mem::forget(lock);
    ExitCode::SUCCESS
}

/// Points stdin/stdout/stderr at /dev/null so that whoever started us (a
/// shell's `$(...)`, a CI step) is not kept waiting for our end of a pipe.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = rustix::stdio::dup2_stdin(&null);
        let _ = rustix::stdio::dup2_stdout(&null);
        let _ = rustix::stdio::dup2_stderr(&null);
    }
}

fn report(args: &Args, Fatal(code, msg): Fatal) -> ExitCode {
    error!("{msg}");
    if !args.foreground {
        println!("error: {msg}");
    }
    eprintln!("vaultd: {msg}");
    ExitCode::from(code)
}
