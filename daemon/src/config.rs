//! `config.toml` (docs/file-formats.md, "Files of the vault itself"). Every
//! key is optional; the defaults are written there.
//!
//! ```toml
//! [lock]
//! idle = "15m"   # lock after this long without use
//! max = "12h"    # lock this long after unlocking, whatever the use
//!
//! [refresh]
//! ahead = "20m"    # refresh a temporary credential with less than this left
//! timeout = "60s"  # longest a refresh_command or STS call may take
//! sts_endpoint = "https://sts.eu-west-1.amazonaws.com"  # default: AWS's
//!
//! [sync]
//! interval = "5m"  # sync this often (and after every change)
//! auto = true      # false: only 'vault sync' syncs
//!
//! [publish]
//! retry = "5m"     # longest wait between retries when a platform is down
//!
//! [check]
//! interval = "6h"  # re-check credentials this often in the background (default: never)
//!
//! [audit]
//! enabled = true   # record every value handed out (default)
//! keep = "90d"     # drop entries older than this
//! sync = false     # true: share entries with this vault's other devices through the server
//!
//! [tls]
//! ca = "/etc/ssl/corp-ca.pem"  # also trust these roots (PEM), besides the built-in ones
//!
//! [gcp]
//! token_uris = ["https://oauth2.example.internal/token"]  # besides Google's (docs/gcp.md)
//! iam_endpoint = "https://iamcredentials.googleapis.com"  # where `impersonate` goes (default)
//!
//! [rotate]
//! iam_endpoint = "https://iam.amazonaws.com"  # where `vault rotate` asks IAM (default)
//!
//! [console]
//! federation_endpoint = "https://signin.aws.amazon.com/federation"  # `vault console` (default)
//!
//! [sso]
//! oidc_endpoint = "https://oidc.us-east-1.amazonaws.com"  # default: the credential's sso_region's
//! portal_endpoint = "https://portal.sso.us-east-1.amazonaws.com"  # likewise (docs/sso.md)
//! ```

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// The daemon's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Idle timeout.
    pub idle: Duration,
    /// Hard cap on an unlock session.
    pub max: Duration,
    /// Refresh a temporary credential with less than this left (or less
    /// than half its lifetime, whichever is sooner).
    pub refresh_ahead: Duration,
    /// Longest a `refresh_command` or an STS call may take.
    pub refresh_timeout: Duration,
    /// The STS endpoint for records that name none (default: AWS's).
    pub sts_endpoint: Option<String>,
    /// Background sync period.
    pub sync_interval: Duration,
    /// Whether the daemon syncs by itself.
    pub sync_auto: bool,
    /// The longest backoff between publish retries (issue 10).
    pub publish_retry: Duration,
    /// Re-check credentials in the background this often (`vault check`,
    /// docs/lifecycle.md); `None`: never.
    pub check_interval: Option<Duration>,
    /// Record every value handed out (docs/lifecycle.md).
    pub audit: bool,
    /// Drop audit entries older than this.
    pub audit_keep: Duration,
    /// Share the audit log's entries with the vault's other devices
    /// through the sync server, sealed (docs/sync.md); off by default.
    pub audit_sync: bool,
    /// `[tls] ca`: more roots to trust over HTTPS (PEM), besides the
    /// built-in Mozilla ones: a team's own CA for vault-server, a
    /// company's token endpoints. Read when the config is loaded.
    pub tls_roots: Vec<reqwest::Certificate>,
    /// `[gcp] token_uris`: token endpoints a service-account key may name
    /// besides Google's (docs/gcp.md).
    pub gcp_token_uris: Vec<String>,
    /// `[gcp] iam_endpoint`: IAM Credentials, where a key asks to act as
    /// the service account its record's `impersonate` names (default:
    /// Google's).
    pub gcp_iam_endpoint: Option<String>,
    /// Where `vault rotate` asks IAM (default: AWS's one endpoint).
    pub iam_endpoint: Option<String>,
    /// Where `vault console` gets sign-in tokens (default: AWS's).
    pub federation_endpoint: Option<String>,
    /// `[sso] oidc_endpoint`: IAM Identity Center's OIDC service, for
    /// every SSO credential (default: its `sso_region`'s).
    pub sso_oidc_endpoint: Option<String>,
    /// `[sso] portal_endpoint`: the access portal's API (likewise).
    pub sso_portal_endpoint: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(15 * 60),
            max: Duration::from_secs(12 * 3600),
            refresh_ahead: Duration::from_secs(20 * 60),
            refresh_timeout: Duration::from_secs(60),
            sts_endpoint: None,
            sync_interval: Duration::from_secs(300),
            sync_auto: true,
            publish_retry: Duration::from_secs(300),
            check_interval: None,
            audit: true,
            audit_keep: Duration::from_secs(90 * 86_400),
            audit_sync: false,
            tls_roots: Vec::new(),
            gcp_token_uris: Vec::new(),
            gcp_iam_endpoint: None,
            iam_endpoint: None,
            federation_endpoint: None,
            sso_oidc_endpoint: None,
            sso_portal_endpoint: None,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    lock: Lock,
    #[serde(default)]
    refresh: Refresh,
    #[serde(default)]
    sync: Sync,
    #[serde(default)]
    publish: Publish,
    #[serde(default)]
    check: Check,
    #[serde(default)]
    audit: Audit,
    #[serde(default)]
    tls: Tls,
    #[serde(default)]
    gcp: Gcp,
    #[serde(default)]
    rotate: Rotate,
    #[serde(default)]
    console: Console,
    #[serde(default)]
    sso: Sso,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Sso {
    oidc_endpoint: Option<String>,
    portal_endpoint: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Gcp {
    #[serde(default)]
    token_uris: Vec<String>,
    iam_endpoint: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Tls {
    ca: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Console {
    federation_endpoint: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rotate {
    iam_endpoint: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Audit {
    enabled: Option<bool>,
    keep: Option<String>,
    sync: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Check {
    interval: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Publish {
    retry: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Sync {
    interval: Option<String>,
    auto: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Refresh {
    ahead: Option<String>,
    timeout: Option<String>,
    sts_endpoint: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Lock {
    idle: Option<String>,
    max: Option<String>,
}

/// The certificates of a PEM file, at least one.
fn read_roots(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    if !path.is_absolute() {
        return Err(format!("{} is not an absolute path", path.display()));
    }
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let roots = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{} is not PEM certificates: {e}", path.display()))?;
    if roots.is_empty() {
        return Err(format!(
            "{} holds no certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(roots)
}

impl Config {
    /// Reads `path`; a missing file means defaults.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let mut config = Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: File = toml::from_str(&text).map_err(|e| e.to_string())?;
        if let Some(ca) = &file.tls.ca {
            config.tls_roots = read_roots(Path::new(ca))
                .map_err(|e| format!("{}: tls.ca: {e}", path.display()))?;
        }
        Ok(config)
    }

    /// Parses the TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut config = Self::default();
        let dur = |key: &str, v: &str| {
            vault_protocol::timefmt::parse_duration(v).map_err(|e| format!("{key}: {e}"))
        };
        if let Some(v) = &file.lock.idle {
            config.idle = dur("lock.idle", v)?;
        }
        if let Some(v) = &file.lock.max {
            config.max = dur("lock.max", v)?;
        }
        if let Some(v) = &file.refresh.ahead {
            config.refresh_ahead = dur("refresh.ahead", v)?;
        }
        if let Some(v) = &file.refresh.timeout {
            config.refresh_timeout = dur("refresh.timeout", v)?;
        }
        if let Some(url) = &file.refresh.sts_endpoint {
            vault_protocol::credential::check_sts_endpoint(url)
                .map_err(|e| format!("refresh.{e}"))?;
            config.sts_endpoint = Some(url.clone());
        }
        if let Some(url) = &file.rotate.iam_endpoint {
            vault_protocol::credential::check_endpoint_url("rotate.iam_endpoint", url)?;
            config.iam_endpoint = Some(url.clone());
        }
        if let Some(url) = &file.console.federation_endpoint {
            vault_protocol::credential::check_endpoint_url("console.federation_endpoint", url)?;
            config.federation_endpoint = Some(url.clone());
        }
        if let Some(url) = &file.sso.oidc_endpoint {
            vault_protocol::credential::check_endpoint_url("sso.oidc_endpoint", url)?;
            config.sso_oidc_endpoint = Some(url.trim_end_matches('/').to_owned());
        }
        if let Some(url) = &file.sso.portal_endpoint {
            vault_protocol::credential::check_endpoint_url("sso.portal_endpoint", url)?;
            config.sso_portal_endpoint = Some(url.trim_end_matches('/').to_owned());
        }
        if let Some(v) = &file.sync.interval {
            config.sync_interval = dur("sync.interval", v)?;
            if config.sync_interval < Duration::from_secs(10) {
                return Err("sync.interval must be at least 10s".into());
            }
        }
        if let Some(v) = &file.publish.retry {
            config.publish_retry = dur("publish.retry", v)?;
            if config.publish_retry < Duration::from_secs(1) {
                return Err("publish.retry must be at least 1s".into());
            }
        }
        if let Some(v) = &file.check.interval {
            let every = dur("check.interval", v)?;
            if every < Duration::from_secs(10) {
                return Err("check.interval must be at least 10s".into());
            }
            config.check_interval = Some(every);
        }
        if let Some(on) = file.audit.enabled {
            config.audit = on;
        }
        if let Some(on) = file.audit.sync {
            config.audit_sync = on;
        }
        if let Some(v) = &file.audit.keep {
            config.audit_keep = dur("audit.keep", v)?;
            if config.audit_keep < Duration::from_secs(3600) {
                return Err("audit.keep must be at least 1h".into());
            }
        }
        for uri in &file.gcp.token_uris {
            vault_protocol::credential::check_endpoint_url("gcp.token_uris", uri)?;
        }
        config.gcp_token_uris = file.gcp.token_uris.clone();
        if let Some(url) = &file.gcp.iam_endpoint {
            vault_protocol::credential::check_endpoint_url("gcp.iam_endpoint", url)?;
            config.gcp_iam_endpoint = Some(url.trim_end_matches('/').to_owned());
        }
        if let Some(auto) = file.sync.auto {
            config.sync_auto = auto;
        }
        if config.refresh_timeout.is_zero() {
            return Err("refresh.timeout must be longer than zero".into());
        }
        if config.idle.is_zero() || config.max.is_zero() {
            return Err("lock.idle and lock.max must be longer than zero".into());
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.idle, Duration::from_secs(900));
        let c = Config::parse("[lock]\nidle = \"2s\"\nmax = \"1h\"\n").unwrap();
        assert_eq!(c.idle, Duration::from_secs(2));
        assert!(
            Config::parse("[lock]\nidle = \"soon\"")
                .unwrap_err()
                .contains("lock.idle")
        );
        assert!(Config::parse("[lokc]\n").is_err());
        assert_eq!(c.check_interval, None);
        assert_eq!(c.iam_endpoint, None);
        let c = Config::parse("[rotate]\niam_endpoint = \"http://127.0.0.1:5000\"\n").unwrap();
        assert_eq!(c.iam_endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert!(
            Config::parse("[rotate]\niam_endpoint = \"http://iam.example\"\n")
                .unwrap_err()
                .contains("rotate.iam_endpoint")
        );
        let c = Config::parse("[check]\ninterval = \"6h\"\n").unwrap();
        assert_eq!(c.check_interval, Some(Duration::from_secs(6 * 3600)));
        assert!(
            Config::parse("[check]\ninterval = \"1s\"\n")
                .unwrap_err()
                .contains("at least 10s")
        );
        let c = Config::parse("[refresh]\nahead = \"5m\"\ntimeout = \"10s\"\n").unwrap();
        assert_eq!(c.refresh_ahead, Duration::from_secs(300));
        assert_eq!(c.refresh_timeout, Duration::from_secs(10));
        assert!(
            Config::parse("[refresh]\ntimeout = \"0s\"")
                .unwrap_err()
                .contains("refresh.timeout")
        );
    }
}
