//! `vault-server` command line: serve the API, or administer the database
//! (`user`, `role`, `token`). See docs/server.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use vault_protocol::SecretValue;
use vault_protocol::timefmt::parse_duration;
use vault_server::admin::{self, RoleCmd, TokenCmd, UserCmd};
use vault_server::api::ApiConfig;
use vault_server::backup;
use vault_server::oidc::OidcConfig;
use vault_server::serve::{ServeOptions, serve};
use vault_server::store;

/// Env var holding the default admin's password.
const ADMIN_PASSWORD_ENV: &str = "VAULT_SERVER_ADMIN_PASSWORD";

#[derive(Debug, Parser)]
#[command(
    name = "vault-server",
    version,
    about = "The vault remote service: accounts, roles, access tokens and an encrypted record store.",
    after_help = "Serve: vault-server --listen 127.0.0.1:8443 --database sqlite:/var/lib/vault-server/vault.db\n\
                  Administer: vault-server --database ... user|role|token add|list|rm\n\
                  Back up: vault-server --database sqlite:PATH backup --to FILE"
)]
struct Cli {
    /// Database: sqlite:PATH, or postgres://USER[:PASSWORD]@HOST[:PORT]/DB.
    #[arg(long, env = "VAULT_SERVER_DATABASE", global = true)]
    database: Option<String>,

    /// Machine output (list and add commands).
    #[arg(long, global = true)]
    json: bool,

    /// Address to listen on, HOST:PORT (port 0 picks a free port; the bound
    /// address is printed as 'listening on ADDR').
    #[arg(long)]
    listen: Option<String>,

    /// TLS certificate chain (PEM). Plain HTTP is only allowed on loopback.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// On a database without users, create this admin user; its password
    /// (>= 32 characters) comes from --admin-password-file or
    /// $VAULT_SERVER_ADMIN_PASSWORD and works as its first access token.
    #[arg(long)]
    default_admin: Option<String>,

    /// File holding the default admin's password.
    #[arg(long, requires = "default_admin")]
    admin_password_file: Option<PathBuf>,

    /// Lifetime of the JWTs issued by POST /api/v1/auth/token.
    #[arg(long, default_value = "10m", value_parser = duration)]
    jwt_ttl: Duration,

    /// Failed logins allowed per client address and per token prefix per
    /// window before logins are refused with 429.
    #[arg(long, default_value_t = 10)]
    login_failure_limit: u32,

    /// Window of the failed-login limit.
    #[arg(long, default_value = "1m", value_parser = duration)]
    login_failure_window: Duration,

    /// How long a request may take before it is answered 503 with
    /// Retry-After; also the bound of each database call.
    #[arg(long, default_value = "30s", value_parser = duration)]
    request_timeout: Duration,

    /// Serve Prometheus metrics (GET /metrics, plain HTTP) on this
    /// HOST:PORT. Off by default; keep it on loopback or a monitoring-only
    /// network.
    #[arg(long, env = "VAULT_SERVER_METRICS_LISTEN", value_name = "HOST:PORT")]
    metrics_listen: Option<String>,

    /// Trust this OpenID Connect identity provider for sign-in (`vault login
    /// URL --sso`): its issuer, exactly as its discovery document names it.
    #[arg(long, env = "VAULT_SERVER_OIDC_ISSUER", value_name = "URL")]
    oidc_issuer: Option<String>,

    /// OAuth client id devices sign in with (a public client); repeat for
    /// several. The first is the one announced to devices.
    #[arg(
        long = "oidc-client-id",
        value_name = "ID",
        requires = "oidc_issuer",
        env = "VAULT_SERVER_OIDC_CLIENT_ID",
        value_delimiter = ','
    )]
    oidc_client_ids: Vec<String>,

    /// Accepted ID-token audience; repeat for several (default: the client ids).
    #[arg(long = "oidc-audience", value_name = "AUD", requires = "oidc_issuer")]
    oidc_audiences: Vec<String>,

    /// The claim naming the vault-server user.
    #[arg(long, default_value = "preferred_username", value_name = "CLAIM")]
    oidc_username_claim: String,

    /// The claim carrying groups or roles; a dotted path (realm_access.roles)
    /// reaches into nested objects.
    #[arg(long, default_value = "groups", value_name = "PATH")]
    oidc_groups_claim: String,

    /// A claim value's vault-server role, VALUE=ROLE; repeat for several.
    /// Mapped roles are evaluated at every sign-in and refresh.
    #[arg(long = "oidc-role-map", value_name = "VALUE=ROLE", requires = "oidc_issuer",
          value_parser = vault_server::oidc::parse_role_map)]
    oidc_role_map: Vec<(String, String)>,

    /// A scope devices ask for; repeat for several (replaces the default
    /// openid, profile, email, offline_access).
    #[arg(long = "oidc-scope", value_name = "SCOPE", requires = "oidc_issuer")]
    oidc_scopes: Vec<String>,

    /// Create a vault-server user at its first sign-in (otherwise an admin
    /// adds users first, and each binds to its IdP account at first sign-in).
    #[arg(long, requires = "oidc_issuer")]
    oidc_create_users: bool,

    /// How long roles mapped at a sign-in keep counting for the user's
    /// access tokens (automation) without another sign-in; the person's own
    /// sessions renew them at every refresh.
    #[arg(long, default_value = "24h", value_parser = duration)]
    oidc_role_ttl: Duration,

    /// Keep shared audit log segments this long after they arrive (at
    /// least 1h, e.g. 90d); older ones are removed at start and hourly, and
    /// pulls say what went. Off by default: a segment stays until its
    /// device removes it.
    #[arg(long, value_name = "DURATION", value_parser = vault_server::serve::parse_audit_keep)]
    audit_keep: Option<Duration>,

    #[command(subcommand)]
    command: Option<Command>,
}

/// Default scopes devices ask for: an ID token with a user name, and a
/// refresh token so sync goes on without a new sign-in.
const DEFAULT_OIDC_SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage users.
    #[command(subcommand)]
    User(UserCmd),
    /// Manage roles.
    #[command(subcommand)]
    Role(RoleCmd),
    /// Manage access tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Copy a SQLite database to a new file while servers keep serving
    /// (PostgreSQL: use pg_dump; the message says how).
    Backup {
        /// The new backup file (never overwritten).
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
    },
    /// Replace a SQLite database with a backup, then migrate it. Stop every
    /// server on it first.
    Restore {
        /// The backup file.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// Replace a database that holds users or records.
        #[arg(long)]
        force: bool,
    },
}

/// A duration flag; none of them means anything at zero.
fn duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!(
            "{s:?} is zero; give a positive duration such as 30s"
        )),
        d => Ok(d),
    }
}

fn admin_password(file: Option<&PathBuf>) -> Result<SecretValue, String> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --admin-password-file {}: {e}", path.display()))?;
        let trimmed = text.trim_end_matches(['\n', '\r']).to_owned();
        drop(zeroize::Zeroizing::new(text));
        return Ok(SecretValue::new(trimmed));
    }
    match std::env::var(ADMIN_PASSWORD_ENV) {
        Ok(v) => Ok(SecretValue::new(v)),
        Err(_) => Err(format!(
            "--default-admin needs a password: set {ADMIN_PASSWORD_ENV} or pass --admin-password-file"
        )),
    }
}

async fn run(cli: Cli) -> Result<(), (String, i32)> {
    let database = cli.database.clone().ok_or_else(|| {
        (
            "--database is required (sqlite:PATH or postgres://...; or set VAULT_SERVER_DATABASE)"
                .to_owned(),
            2,
        )
    })?;
    if let Some(command) = cli.command {
        let open = || async { store::open(&database).await.map_err(|e| (e, 1)) };
        let result = match command {
            Command::Backup { to } => return backup::backup(&database, to, cli.json).await,
            Command::Restore { from, force } => {
                return backup::restore(&database, from, force, cli.json).await;
            }
            Command::User(c) => admin::user(open().await?.as_ref(), c, cli.json).await,
            Command::Role(c) => admin::role(open().await?.as_ref(), c, cli.json).await,
            Command::Token(c) => admin::token(open().await?.as_ref(), c, cli.json).await,
        };
        return result.map_err(|e| (e.message, e.exit_code));
    }
    let listen = cli.listen.clone().ok_or_else(|| {
        (
            "--listen is required to serve (e.g. --listen 127.0.0.1:8443)".to_owned(),
            2,
        )
    })?;
    let default_admin = match &cli.default_admin {
        Some(name) => Some((
            name.clone(),
            admin_password(cli.admin_password_file.as_ref()).map_err(|e| (e, 2))?,
        )),
        None => None,
    };
    let oidc = cli.oidc_issuer.map(|issuer| OidcConfig {
        issuer,
        client_ids: cli.oidc_client_ids,
        audiences: cli.oidc_audiences,
        username_claim: cli.oidc_username_claim,
        groups_claim: cli.oidc_groups_claim,
        role_map: cli.oidc_role_map,
        scopes: if cli.oidc_scopes.is_empty() {
            DEFAULT_OIDC_SCOPES.map(str::to_owned).to_vec()
        } else {
            cli.oidc_scopes
        },
        create_users: cli.oidc_create_users,
        role_ttl: cli.oidc_role_ttl,
    });
    let opts = ServeOptions {
        listen,
        database,
        tls: cli.tls_cert.zip(cli.tls_key),
        default_admin,
        api: ApiConfig {
            jwt_ttl: cli.jwt_ttl,
            request_timeout: cli.request_timeout,
            ..ApiConfig::default()
        },
        login_failure_limit: cli.login_failure_limit,
        login_failure_window: cli.login_failure_window,
        metrics_listen: cli.metrics_listen,
        oidc,
        audit_keep: cli.audit_keep,
    };
    serve(opts).await.map_err(|e| (e, 1))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VAULT_SERVER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vault-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err((message, code)) => {
            eprintln!("vault-server: {message}");
            ExitCode::from(code as u8)
        }
    }
}
