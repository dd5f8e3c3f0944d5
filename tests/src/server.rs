//! A real `vault-server` on loopback for the sync tests.

use std::path::PathBuf;

use crate::*;

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
    /// More flags for every start (`--oidc-issuer …`).
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl RemoteServer {
    /// Starts one on a free port with a fresh SQLite database.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts one with a fresh SQLite database and these flags besides.
    pub fn start_with(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let database = format!("sqlite:{}", dir.path().join("server.db").display());
        let mut s = Self {
            server: Listening::new("127.0.0.1:0", "vault-server"),
            database,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            _dir: dir,
        };
        s.resume();
        s
    }

    /// Starts one on `database` (`sqlite:…` or `postgres://…`).
    pub fn start_on(database: String, dir: tempfile::TempDir) -> Self {
        let mut s = Self {
            server: Listening::new("127.0.0.1:0", "vault-server"),
            database,
            args: Vec::new(),
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

    /// Stops it and starts it again on the same address with `database`
    /// (a server restored into a new database).
    pub fn restart_on(&mut self, database: String) {
        self.stop();
        self.database = database;
        self.resume();
    }

    /// Runs `vault-server --database THIS ARGS…` (an admin command) to its
    /// end, with the server running or not.
    pub fn admin(&self, args: &[&str]) -> std::process::Output {
        let out = std::process::Command::new(&binaries().server)
            .args(["--database", &self.database])
            .args(args)
            .env_remove("VAULT_SERVER_DATABASE")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run vault-server");
        crate::leak::keep_log("vault-server", &String::from_utf8_lossy(&out.stderr));
        out
    }

    /// Flags for the next [`RemoteServer::resume`] (`--audit-keep 1h`).
    pub fn set_args(&mut self, args: &[&str]) {
        self.args = args.iter().map(|a| (*a).to_owned()).collect();
    }

    /// Starts it again on the same address and database.
    pub fn resume(&mut self) {
        self.server.start(&binaries().server, |cmd| {
            cmd.args(["--database", &self.database])
                .args(["--default-admin", "admin"])
                .args(&self.args)
                .env("VAULT_SERVER_ADMIN_PASSWORD", SERVER_ADMIN_TOKEN)
                .env("VAULT_SERVER_LOG", "info");
        });
    }
}
