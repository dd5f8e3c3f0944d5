//! Where a vault's files live (docs/architecture.md). `VAULT_HOME=DIR` puts everything of
//! one vault under DIR; otherwise the platform's directories are used.
//!
//! Shared by the CLI (to find the socket and the log) and the daemon (to own
//! the files). This module only computes paths; creating and checking them is
//! the daemon's job.

use std::path::{Path, PathBuf};

/// Every path of one vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultPaths {
    /// Holds `vault.db`, `identity.age`, the daemon lock.
    pub data_dir: PathBuf,
    /// Holds `config.toml`.
    pub config_dir: PathBuf,
    /// Holds the socket and exec temp files.
    pub runtime_dir: PathBuf,
    /// Holds `vaultd.log`.
    pub state_dir: PathBuf,
    /// The local socket the daemon listens on.
    pub socket: PathBuf,
}

impl VaultPaths {
    /// Paths from the environment: `VAULT_HOME`, else the platform's dirs.
    /// `VAULT_SOCKET` (or `--socket`, passed as `socket_override`) moves only
    /// the socket.
    pub fn from_env(socket_override: Option<PathBuf>) -> Result<Self, String> {
        let mut paths = match std::env::var_os("VAULT_HOME").filter(|v| !v.is_empty()) {
            Some(home) => Self::under_home(Path::new(&home)),
            None => Self::platform()?,
        };
        let socket = socket_override.or_else(|| {
            std::env::var_os("VAULT_SOCKET")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        if let Some(socket) = socket {
            paths.socket = socket;
        }
        Ok(paths)
    }

    /// Everything of one vault under `home` (tests, `GNUPGHOME`-style use).
    pub fn under_home(home: &Path) -> Self {
        let home = absolute(home);
        let runtime_dir = home.join("run");
        Self {
            data_dir: home.clone(),
            config_dir: home.clone(),
            state_dir: home.clone(),
            socket: runtime_dir.join("vaultd.sock"),
            runtime_dir,
        }
    }

    fn platform() -> Result<Self, String> {
        let dirs = directories::ProjectDirs::from("", "", "vault").ok_or_else(|| {
            "cannot find your home directory: set HOME, or VAULT_HOME=DIR to keep the vault in DIR"
                .to_owned()
        })?;
        let data_dir = dirs.data_dir().to_path_buf();
        let runtime_dir = dirs
            .runtime_dir()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| data_dir.join("run"));
        Ok(Self {
            config_dir: dirs.config_dir().to_path_buf(),
            state_dir: dirs
                .state_dir()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| data_dir.clone()),
            socket: runtime_dir.join("vaultd.sock"),
            runtime_dir,
            data_dir,
        })
    }

    /// The SSH agent's socket (issue 25), beside the daemon's in the same
    /// private directory: `SSH_AUTH_SOCK` for ssh, printed by `vault
    /// ssh-agent`. `ssh-agent.sock` beside the default `vaultd.sock`; beside
    /// another socket (`VAULT_SOCKET=…/work.sock`) it carries that one's
    /// name (`work.ssh-agent.sock`), so two vaults sharing a directory never
    /// share an agent.
    pub fn agent_socket(&self) -> PathBuf {
        match self.socket.file_stem() {
            Some(stem) if stem != "vaultd" => {
                let mut name = stem.to_os_string();
                name.push(".ssh-agent.sock");
                self.socket.with_file_name(name)
            }
            _ => self.socket.with_file_name("ssh-agent.sock"),
        }
    }

    /// `vault exec`'s per-child folders (`<wrapper pid>-<random>`), swept by
    /// the daemon when their wrapper is gone.
    pub fn exec_dir(&self) -> PathBuf {
        self.runtime_dir.join("exec")
    }

    /// The SQLite database.
    pub fn db(&self) -> PathBuf {
        self.data_dir.join("vault.db")
    }

    /// The passphrase-encrypted vault key.
    pub fn identity(&self) -> PathBuf {
        self.data_dir.join("identity.age")
    }

    /// The encrypted index snapshot: a cache that makes unlock fast.
    /// Deleting it loses nothing.
    pub fn index_snapshot(&self) -> PathBuf {
        self.data_dir.join("index.snapshot")
    }

    /// The user's configuration.
    pub fn config(&self) -> PathBuf {
        self.config_dir.join("config.toml")
    }

    /// The daemon's log.
    pub fn log(&self) -> PathBuf {
        self.state_dir.join("vaultd.log")
    }

    /// Held exclusively by the running daemon: one `vaultd` per vault.
    pub fn daemon_lock(&self) -> PathBuf {
        self.data_dir.join("vaultd.lock")
    }

    /// Held by a CLI while it starts the daemon, so parallel CLIs start one.
    pub fn start_lock(&self) -> PathBuf {
        self.runtime_dir.join("start.lock")
    }

    /// The vault's own files that must be private (0600, ours, not a link)
    /// whenever they exist: what `vaultd` checks before it starts and
    /// `vault doctor` reports on (the CLI's `start.lock` aside).
    pub fn private_files(&self) -> Vec<PathBuf> {
        let db = self.db();
        let side = |suffix: &str| {
            let mut name = db.clone().into_os_string();
            name.push(suffix);
            PathBuf::from(name)
        };
        let (wal, shm) = (side("-wal"), side("-shm"));
        vec![
            db,
            wal,
            shm,
            self.identity(),
            self.index_snapshot(),
            self.config(),
            self.log(),
            self.daemon_lock(),
        ]
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_puts_everything_under_one_dir() {
        let p = VaultPaths::under_home(Path::new("/tmp/vh"));
        assert_eq!(p.db(), Path::new("/tmp/vh/vault.db"));
        assert_eq!(p.identity(), Path::new("/tmp/vh/identity.age"));
        assert_eq!(p.config(), Path::new("/tmp/vh/config.toml"));
        assert_eq!(p.socket, Path::new("/tmp/vh/run/vaultd.sock"));
        assert_eq!(p.log(), Path::new("/tmp/vh/vaultd.log"));
        assert_eq!(p.agent_socket(), Path::new("/tmp/vh/run/ssh-agent.sock"));
    }

    #[test]
    fn two_sockets_in_one_dir_have_two_agents() {
        let mut p = VaultPaths::under_home(Path::new("/tmp/vh"));
        p.socket = PathBuf::from("/run/user/1/vault/work.sock");
        assert_eq!(
            p.agent_socket(),
            Path::new("/run/user/1/vault/work.ssh-agent.sock")
        );
        p.socket = PathBuf::from("/run/user/1/vault/personal");
        assert_eq!(
            p.agent_socket(),
            Path::new("/run/user/1/vault/personal.ssh-agent.sock")
        );
    }
}
