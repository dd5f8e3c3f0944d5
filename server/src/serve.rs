//! Starting the service: open and migrate the database, bootstrap the default
//! admin, bind the listener (plain HTTP only on loopback, else TLS via
//! rustls), announce the bound address on stdout, serve until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vault_protocol::SecretValue;
use vault_protocol::server_api::{Action, Policy, Role, validate_id};
use vault_protocol::timefmt::Timestamp;

use crate::api::{self, ApiConfig, AppState};
use crate::crypto::{self, JwtKey};
use crate::ratelimit::LoginLimiter;
use crate::store::{self, Bootstrap, Store, TokenKind, TokenRow};

/// Shortest accepted default-admin password.
pub const MIN_ADMIN_PASSWORD: usize = 32;

/// Name of the role the bootstrap creates.
pub const ADMIN_ROLE: &str = "admin";

/// Name of the bootstrap password's token row.
pub const BOOTSTRAP_TOKEN: &str = "bootstrap-password";

/// How long requests in flight at SIGTERM/SIGINT get to finish.
pub const DRAIN: Duration = Duration::from_secs(10);

/// Shortest `--audit-keep`: retention runs hourly, so less would not be kept.
pub const MIN_AUDIT_KEEP: Duration = Duration::from_secs(3600);

/// How often the audit retention runs (and once at start).
pub const AUDIT_PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Parses `--audit-keep`: a duration of at least [`MIN_AUDIT_KEEP`].
pub fn parse_audit_keep(s: &str) -> Result<Duration, String> {
    let keep = vault_protocol::timefmt::parse_duration(s)?;
    if keep < MIN_AUDIT_KEEP {
        return Err(format!(
            "{s:?} is too short: audit segments are kept at least 1h (retention runs hourly); \
             give e.g. 90d, or leave --audit-keep out to keep them until their device removes them"
        ));
    }
    Ok(keep)
}

/// Everything `vault-server` (without a subcommand) needs.
#[derive(Debug)]
pub struct ServeOptions {
    /// `--listen`.
    pub listen: String,
    /// `--database`.
    pub database: String,
    /// `--tls-cert` and `--tls-key`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `--default-admin` with its password.
    pub default_admin: Option<(String, SecretValue)>,
    /// API settings.
    pub api: ApiConfig,
    /// Failed logins allowed per address and per token prefix per window.
    pub login_failure_limit: u32,
    /// The rate-limit window.
    pub login_failure_window: Duration,
    /// `--metrics-listen`: where `GET /metrics` is served, if anywhere.
    pub metrics_listen: Option<String>,
    /// `--oidc-*`: the identity provider to trust, if any.
    pub oidc: Option<crate::oidc::OidcConfig>,
    /// `--audit-keep`: how long shared audit segments are kept; `None`
    /// keeps them until their device removes them.
    pub audit_keep: Option<Duration>,
}

/// The role the bootstrap gives the default admin: every action everywhere.
pub fn admin_role() -> Role {
    Role {
        name: ADMIN_ROLE.into(),
        description: "every action on every resource (created by --default-admin)".into(),
        policies: vec![Policy {
            actions: Action::ALL.to_vec(),
            resources: vec!["*".into()],
        }],
    }
}

/// Creates the default admin on a database without users. The password
/// becomes the admin's first access token (stored as a PBKDF2 hash).
pub async fn bootstrap(
    store: &dyn Store,
    name: &str,
    password: &SecretValue,
) -> Result<Bootstrap, String> {
    validate_id("--default-admin", name)?;
    let chars = password.expose_secret().chars().count();
    if chars < MIN_ADMIN_PASSWORD {
        return Err(format!(
            "the default admin password is {chars} characters; it must be at least {MIN_ADMIN_PASSWORD} (generate one, e.g. with 'head -c 32 /dev/urandom | base64')"
        ));
    }
    if password.expose_secret().starts_with(crypto::TOKEN_PREFIX) {
        return Err(format!(
            "the default admin password must not start with '{}' (that marks access tokens)",
            crypto::TOKEN_PREFIX
        ));
    }
    let secret = password.duplicate();
    let hash = tokio::task::spawn_blocking(move || crypto::password_hash(secret.expose_secret()))
        .await
        .map_err(|e| e.to_string())??;
    let now = Timestamp::now().unix();
    let row = TokenRow {
        id: crypto::random_id()?,
        user: name.to_owned(),
        name: BOOTSTRAP_TOKEN.into(),
        description: "the --default-admin password; revoke it once you have your own tokens".into(),
        prefix: "(password)".into(),
        hash,
        kind: TokenKind::Password,
        roles: vec![ADMIN_ROLE.into()],
        created_at: now,
        expires_at: None,
    };
    store
        .bootstrap_admin(&admin_role(), &row, now)
        .await
        .map_err(|e| format!("cannot create the default admin: {e}"))
}

/// Resolves `--listen` and refuses plain HTTP anywhere but loopback.
pub async fn resolve_listen(listen: &str, tls: bool) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(listen)
        .await
        .map_err(|e| {
            format!(
                "cannot resolve --listen '{listen}': {e} (expected HOST:PORT, e.g. 127.0.0.1:8443)"
            )
        })?
        .collect();
    let Some(&first) = addrs.first() else {
        return Err(format!("--listen '{listen}' resolves to no address"));
    };
    if !tls && addrs.iter().any(|a| !a.ip().is_loopback()) {
        return Err(format!(
            "refusing to serve plain HTTP on {listen}, which is not a loopback address: pass --tls-cert and --tls-key, or listen on 127.0.0.1"
        ));
    }
    Ok(first)
}

/// Runs the service until SIGINT or SIGTERM. Prints `listening on ADDR` on
/// stdout once the socket accepts connections.
pub async fn serve(opts: ServeOptions) -> Result<(), String> {
    let addr = resolve_listen(&opts.listen, opts.tls.is_some()).await?;
    let store = store::open_with(&opts.database, opts.api.request_timeout).await?;
    let jwt_secret = store
        .jwt_secret()
        .await
        .map_err(|e| format!("cannot read the JWT key: {e}"))?;
    match &opts.default_admin {
        Some((name, password)) => match bootstrap(store.as_ref(), name, password).await? {
            Bootstrap::Created => tracing::info!("created the default admin user '{name}'"),
            Bootstrap::AlreadyDone => {
                tracing::info!("users exist already; --default-admin '{name}' left unchanged")
            }
        },
        None => {
            if store
                .list_users()
                .await
                .map_err(|e| e.to_string())?
                .is_empty()
            {
                tracing::warn!(
                    "no users yet: start with --default-admin NAME, or add one with 'vault-server user add'"
                );
            }
        }
    }
    let oidc = match opts.oidc.clone() {
        Some(config) => Some(crate::oidc::Oidc::new(config)?),
        None => None,
    };
    let state = Arc::new(AppState {
        store: Arc::clone(&store),
        jwt: JwtKey::new(&jwt_secret),
        limiter: LoginLimiter::new(opts.login_failure_limit, opts.login_failure_window),
        config: opts.api.clone(),
        oidc,
    });
    if let Some(oidc) = &state.oidc {
        // Warm the key cache, and say early when the IdP cannot be reached;
        // serving does not wait for it (sign-ins fetch again on demand).
        let shared = Arc::clone(&state);
        let issuer = oidc.config().issuer.clone();
        tokio::spawn(async move {
            if let Some(oidc) = &shared.oidc {
                match oidc.prefetch().await {
                    Ok(n) => tracing::info!(%issuer, keys = n, "trusting identity provider"),
                    Err(e) => {
                        tracing::warn!(%issuer, error = %e, "identity provider not reachable yet")
                    }
                }
            }
        });
    }
    // Metrics first: its address is announced before the API's, whose line
    // tells supervisors the service is up.
    let _metrics_listener = match &opts.metrics_listen {
        Some(listen) => {
            let handle = crate::telemetry::install()?;
            let (listener, at) = crate::telemetry::bind(listen).await?;
            announce_line(&format!("metrics on {at}"));
            tracing::info!("serving http://{at}/metrics");
            let task = tokio::spawn(crate::telemetry::serve(
                listener,
                handle,
                Arc::clone(&store),
                std::future::pending(),
            ));
            Some(AbortOnDrop(task))
        }
        None => None,
    };
    let _audit_retention = opts.audit_keep.map(|keep| {
        tracing::info!(
            "audit retention on: segments received more than {} ago are removed now and hourly",
            humanize(keep)
        );
        AbortOnDrop(tokio::spawn(audit_retention(Arc::clone(&store), keep)))
    });
    let app = api::router(state).into_make_service_with_connect_info::<SocketAddr>();
    let listener =
        std::net::TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;

    match opts.tls {
        None => {
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            announce(bound, "http", store.backend());
            let stopping = Arc::new(tokio::sync::Notify::new());
            let stop = Arc::clone(&stopping);
            let serving = axum::serve(listener, app).with_graceful_shutdown(async move {
                shutdown_signal().await;
                stop.notify_one();
            });
            // Requests in flight at SIGTERM get DRAIN to finish, as over TLS.
            tokio::select! {
                r = serving => r.map_err(|e| format!("server failed: {e}")),
                () = async {
                    stopping.notified().await;
                    tokio::time::sleep(DRAIN).await;
                } => {
                    tracing::warn!("requests still in flight after {}s: stopping anyway", DRAIN.as_secs());
                    Ok(())
                }
            }
        }
        Some((cert, key)) => {
            // ring, not aws-lc: one crypto stack, no C toolchain beyond ring's.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
                .await
                .map_err(|e| {
                    format!(
                        "cannot load the TLS certificate {} and key {}: {e}",
                        cert.display(),
                        key.display()
                    )
                })?;
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                stopper.graceful_shutdown(Some(DRAIN));
            });
            announce(bound, "https", store.backend());
            axum_server::from_tcp_rustls(listener, config)
                .handle(handle)
                .serve(app)
                .await
                .map_err(|e| format!("server failed: {e}"))
        }
    }
}

fn announce(bound: SocketAddr, scheme: &str, backend: &str) {
    // The line tests and supervisors read; everything else goes to stderr.
    announce_line(&format!("listening on {bound}"));
    tracing::info!("serving {scheme}://{bound}/api/v1 on {backend}");
}

fn announce_line(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// `keep` for the log: whole days or hours as `90d`, `36h`, else compact.
fn humanize(keep: Duration) -> String {
    match keep.as_secs() {
        s if s > 0 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        _ => vault_protocol::timefmt::format_duration_short(keep),
    }
}

/// The audit retention task: [`prune_audit_once`] now and every
/// [`AUDIT_PRUNE_EVERY`], until serving ends (it is aborted then; a prune
/// cut short is rolled back and simply runs again at the next start).
async fn audit_retention(store: Arc<dyn Store>, keep: Duration) {
    let mut every = tokio::time::interval(AUDIT_PRUNE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let _ = prune_audit_once(store.as_ref(), keep, Timestamp::now().unix()).await;
    }
}

/// Removes the audit segments received more than `keep` before `now`
/// (unix seconds) and logs how many (never which, nor what they hold).
pub async fn prune_audit_once(
    store: &dyn Store,
    keep: Duration,
    now: i64,
) -> Result<u64, crate::error::StoreError> {
    let cutoff = Timestamp(now.saturating_sub(i64::try_from(keep.as_secs()).unwrap_or(i64::MAX)));
    match store.prune_audit(cutoff.unix()).await {
        Ok(removed) => {
            tracing::info!(
                removed,
                cutoff = %cutoff.to_rfc3339(),
                "audit retention: removed {removed} segment(s) received before {}",
                cutoff.to_rfc3339()
            );
            Ok(removed)
        }
        Err(e) => {
            tracing::warn!(
                "audit retention could not remove old segments: {e}; it tries again in {}",
                humanize(AUDIT_PRUNE_EVERY)
            );
            Err(e)
        }
    }
}

/// Stops a background task (the metrics listener, the audit retention)
/// when serving ends.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_keep_is_an_hour_or_more() {
        assert_eq!(parse_audit_keep("1h"), Ok(MIN_AUDIT_KEEP));
        assert_eq!(
            parse_audit_keep("90d"),
            Ok(Duration::from_secs(90 * 86_400))
        );
        for short in ["10m", "59m59s", "0s"] {
            let err = parse_audit_keep(short).unwrap_err();
            assert!(err.contains("at least 1h"), "{short}: {err}");
        }
        assert!(
            parse_audit_keep("soon")
                .unwrap_err()
                .contains("not a duration")
        );
        assert_eq!(humanize(Duration::from_secs(90 * 86_400)), "90d");
        assert_eq!(humanize(MIN_AUDIT_KEEP), "1h");
    }
}
