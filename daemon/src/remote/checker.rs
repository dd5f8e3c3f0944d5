//! `vault check` (docs/lifecycle.md): asks each credential's own service
//! whether it still takes the credential, all at once, each within its
//! limit, and keeps the results. Nothing said here names a secret.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::info;
use vault_protocol::message::{CheckOutcome, CheckResult};
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{Response, SecretValue, WireError};

use super::Shared;
use super::http::{Http, describe, read_capped};
use super::sigv4::Keys;
use super::syncer::blocking;
use crate::engine::checks::Probe;

/// Each check's limit unless the request sets one.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Most checks in flight at once.
const PARALLEL: usize = 16;

/// The background re-check's memory: the records found to have nothing to
/// check, at which revision, so they are not decrypted again each round.
#[derive(Debug, Default)]
pub struct Checker {
    nothing: std::sync::Mutex<HashMap<String, u64>>,
}

impl Checker {
    fn nothing(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.nothing.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Re-checks, while unlocked, every record whose last check is older than
/// `[check] interval` (docs/lifecycle.md); does nothing when it is unset.
pub async fn background(d: Arc<Shared>) {
    let Some(interval) = d.engine().config().check_interval else {
        return;
    };
    let round = interval.min(Duration::from_secs(60));
    loop {
        tokio::time::sleep(round).await;
        let due = {
            let nothing = d.checker.nothing().clone();
            d.engine().check_due(interval, Timestamp::now(), &nothing)
        };
        if due.is_empty() {
            continue;
        }
        match check(&d, due, None).await {
            Ok(Response::Checked { results }) => {
                let failed = results
                    .iter()
                    .filter(|r| r.outcome == CheckOutcome::Failed)
                    .count();
                info!(checked = results.len(), failed, "background check");
            }
            Ok(_) => {}
            // Locked meanwhile, or a record went away: the next round.
            Err(e) => info!(error = %e.message, "background check did not run"),
        }
    }
}

/// Checks `names` (every record when empty) and keeps the results.
pub async fn check(
    d: &Arc<Shared>,
    names: Vec<String>,
    timeout: Option<Duration>,
) -> Result<Response, WireError> {
    let timeout = timeout.unwrap_or(TIMEOUT);
    let names = blocking(d, move |e| e.check_names(&names)).await?;
    // AWS sessions are checked as they would be handed out: fresh.
    let sessions = {
        let names = names.clone();
        blocking(d, move |e| {
            Ok(e.of_kind(&names, vault_protocol::CredentialType::Aws))
        })
        .await?
    };
    crate::remote::refresher::ensure_fresh(d, &sessions).await;
    let targets = blocking(d, move |e| e.check_targets(&names)).await?;
    let gate = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, target) in targets.into_iter().enumerate() {
        let (http, gate) = (d.http.clone(), Arc::clone(&gate));
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let checked_at = Timestamp::now();
            let started = Instant::now();
            // The calls' own limit is later, so a silent service is told
            // the same way whichever call it stalls.
            let late = timeout + Duration::from_secs(1);
            let (outcome, detail) = match tokio::time::timeout(
                timeout,
                probe(&http, &target.probe, &target.name, late),
            )
            .await
            {
                Ok(Ok(said)) => (CheckOutcome::Ok, said),
                Ok(Err(Skipped(why))) => (CheckOutcome::Skipped, why),
                Ok(Err(Failed(why))) => (CheckOutcome::Failed, why),
                Err(_) => (
                    CheckOutcome::Failed,
                    format!("no answer within {} s", timeout.as_secs_f64()),
                ),
            };
            let result = CheckResult {
                name: target.name.clone(),
                kind: target.kind,
                outcome,
                detail: clean(&detail),
                checked_at,
                elapsed_ms: started.elapsed().as_millis() as u64,
            };
            (i, target.id, target.revision, result)
        });
    }
    let mut done = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(one) = joined {
            done.push(one);
        }
    }
    done.sort_by_key(|(i, ..)| *i);
    {
        let mut nothing = d.checker.nothing();
        for (_, id, revision, r) in &done {
            if r.outcome == CheckOutcome::Skipped {
                nothing.insert(id.clone(), *revision);
            } else {
                nothing.remove(id);
            }
        }
    }
    let done: Vec<_> = done
        .into_iter()
        .map(|(_, id, rev, r)| (id, rev, r))
        .collect();
    let results = done.iter().map(|(.., r)| r.clone()).collect();
    blocking(d, move |e| e.record_checks(&done)).await?;
    Ok(Response::Checked { results })
}

/// A detail as it may be kept and shown: a remote chose part of it, so
/// no control character (a terminal escape) and at most 300 characters.
fn clean(detail: &str) -> String {
    let mut out: String = detail
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    if detail.chars().count() > 300 {
        out.push('…');
    }
    out
}

/// Why a probe gave no "ok".
enum NotOk {
    Skipped(String),
    Failed(String),
}
use NotOk::{Failed, Skipped};

/// Asks the service; what it says the credential is.
async fn probe(http: &Http, probe: &Probe, name: &str, timeout: Duration) -> Result<String, NotOk> {
    match probe {
        Probe::Skip(why) => Err(Skipped(why.clone())),
        Probe::Fail(why) => Err(Failed(why.clone())),
        Probe::Aws {
            endpoint,
            region,
            access_key_id,
            secret_access_key,
            session_token,
        } => {
            let keys = Keys {
                access_key_id,
                secret_access_key,
                session_token: session_token.as_ref(),
            };
            let who = super::sts::caller_identity(http, endpoint, region, &keys, timeout)
                .await
                .map_err(Failed)?;
            Ok(format!("account {}, {}", who.account, who.arn))
        }
        Probe::Bearer { url, token } => bearer(http, url, token, timeout).await,
        Probe::Command { command, env } => run_check_command(command, env).await,
        Probe::Bucket {
            origin,
            bucket,
            virtual_host,
            region,
            access_key_id,
            secret_access_key,
        } => {
            let keys = Keys {
                access_key_id,
                secret_access_key,
                session_token: None,
            };
            list_bucket(http, origin, bucket, *virtual_host, region, &keys, timeout).await
        }
        Probe::Registry {
            registry,
            username,
            password,
        } => registry_login(http, registry, username, password, timeout).await,
        Probe::Gcp {
            json,
            issuer,
            token_uris,
            impersonate,
            iam_endpoint,
        } => {
            let issuer = issuer.as_ref().map(|(i, k)| (i.as_str(), k));
            let key = super::gcp::key_of(name, json.expose_secret(), issuer).map_err(Failed)?;
            super::gcp::check_token_uri(&key, token_uris, name).map_err(Failed)?;
            let scopes = [super::gcp::DEFAULT_SCOPE.to_owned()];
            let (own, mut expires_at) = super::gcp::mint(http, &key, &scopes, timeout, name)
                .await
                .map_err(|e| Failed(e.message))?;
            let mut whose = key.client_email.clone();
            // Acting as another account is part of what the record does.
            if let Some(target) = key.acts_as(impersonate.clone()) {
                let asked = super::gcp::Impersonation {
                    endpoint: iam_endpoint,
                    target: &target,
                    by: &key.client_email,
                    scopes: &scopes,
                };
                (_, expires_at) = super::gcp::impersonate(http, &asked, &own, timeout, name)
                    .await
                    .map_err(|e| Failed(e.message))?;
                whose = format!("{target} (as {})", key.client_email);
            }
            let left = expires_at.unix() - vault_protocol::timefmt::Timestamp::now().unix();
            Ok(format!(
                "minted a token for {whose} (valid {} min)",
                left.max(0) / 60
            ))
        }
    }
}

async fn bearer(
    http: &Http,
    url: &str,
    token: &SecretValue,
    timeout: Duration,
) -> Result<String, NotOk> {
    vault_protocol::credential::check_endpoint_url("url", url).map_err(Failed)?;
    let answer = http
        .get(url)
        .timeout(timeout)
        .bearer_auth(token.expose_secret())
        .send()
        .await
        .map_err(|e| Failed(format!("cannot reach {url}: {}", describe(&e))))?;
    match answer.status() {
        s if s.is_success() => Ok(format!("{url} took it (HTTP {})", s.as_u16())),
        s @ (reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN) => Err(Failed(
            format!("{url} refused the token (HTTP {})", s.as_u16()),
        )),
        s => Err(Failed(format!(
            "{url} answered HTTP {}, so the token could not be checked",
            s.as_u16()
        ))),
    }
}

/// The longest answer body read from a checked service.
const MAX_ANSWER: usize = 64 << 10;

/// Runs a generic record's `check_command` with its values in the
/// environment: exit 0 is ok. Its stdout is dropped; the first line of its
/// stderr is shown with every value of the record blanked out, in case the
/// command echoes one. The outer timeout drops the child, which kills it.
async fn run_check_command(command: &str, env: &[(String, SecretValue)]) -> Result<String, NotOk> {
    use tokio::io::AsyncReadExt;
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v.expose_secret());
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Failed(format!("cannot start check_command: {e}")))?;
    let mut stderr = child.stderr.take().expect("stderr is piped");
    // The first 4 KiB are kept, the rest drained so the child never
    // blocks on a full pipe.
    let drain = async move {
        let mut said = Vec::new();
        let _ = (&mut stderr).take(4096).read_to_end(&mut said).await;
        let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
        said
    };
    let (said, status) = tokio::join!(drain, child.wait());
    let status = status.map_err(|e| Failed(format!("cannot wait for check_command: {e}")))?;
    if status.success() {
        return Ok("check_command exited 0".to_owned());
    }
    let mut line = String::from_utf8_lossy(&said)
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .take(300)
        .collect::<String>();
    for (_, v) in env {
        if !v.expose_secret().is_empty() {
            line = line.replace(v.expose_secret(), "…");
        }
    }
    Err(Failed(match line.trim() {
        "" => format!("check_command failed ({status})"),
        l => format!("check_command failed ({status}): {l}"),
    }))
}

/// `ListObjectsV2` of at most one key on `bucket`, signed with `keys`:
/// whether the storage takes them.
async fn list_bucket(
    http: &Http,
    origin: &str,
    bucket: &str,
    virtual_host: bool,
    region: &str,
    keys: &Keys<'_>,
    timeout: Duration,
) -> Result<String, NotOk> {
    vault_protocol::credential::check_endpoint_url("override_url", origin).map_err(Failed)?;
    if bucket.is_empty()
        || !bucket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(Failed(format!(
            "'{bucket}' is not a bucket name the check can ask for"
        )));
    }
    let base =
        reqwest::Url::parse(origin).map_err(|_| Failed(format!("'{origin}' is not a URL")))?;
    let host = match (base.host_str(), base.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, _) => return Err(Failed(format!("'{origin}' names no host"))),
    };
    let (host, path) = if virtual_host {
        (format!("{bucket}.{host}"), "/".to_owned())
    } else {
        (host, format!("/{bucket}"))
    };
    let query = "list-type=2&max-keys=1";
    let url = format!("{}://{host}{path}?{query}", base.scheme());
    let amz_date = Timestamp::now().to_rfc3339().replace(['-', ':'], "");
    let headers = super::sigv4::sign(
        &super::sigv4::Request {
            method: "GET",
            host: &host,
            path: &path,
            query,
            body: b"",
            amz_date: &amz_date,
            region,
            service: "s3",
        },
        keys,
    );
    let mut request = http.get(&url).timeout(timeout);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let answer = request
        .send()
        .await
        .map_err(|e| Failed(format!("cannot reach {origin}: {}", describe(&e))))?;
    let status = answer.status();
    if status.is_success() {
        return Ok(format!("{origin} listed bucket {bucket}"));
    }
    let body = read_capped(answer, MAX_ANSWER).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    // S3's error XML: <Error><Code>…</Code>…; its code holds no secret.
    let code = text
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| code.chars().take(64).collect::<String>())
        .unwrap_or_default();
    Err(Failed(
        format!(
            "{origin} refused ListObjectsV2 on bucket {bucket} ({} {code})",
            status.as_u16()
        )
        .replace(" )", ")"),
    ))
}

/// The registry's API origin: HTTPS, or HTTP for a registry on loopback
/// (as docker treats `localhost`); Docker Hub's login key names its API
/// host.
fn registry_origin(registry: &str) -> Result<String, String> {
    let (scheme, bare) = match registry.split_once("://") {
        Some((s @ ("https" | "http"), rest)) => (Some(s), rest),
        Some(_) => return Err(format!("registry '{registry}' is not a registry host")),
        None => (None, registry),
    };
    let host = bare.split('/').next().unwrap_or("");
    if host.is_empty() || host.contains(['@', '?', '#', ' ']) {
        return Err(format!(
            "registry '{registry}' names no plain host (HOST or HOST:PORT)"
        ));
    }
    let host = match host {
        "docker.io" | "index.docker.io" => "registry-1.docker.io",
        h => h,
    };
    let plain = format!("http://{host}");
    let loopback = vault_protocol::credential::check_endpoint_url("registry", &plain).is_ok();
    match (scheme, loopback) {
        // As docker: plain HTTP for a registry on loopback, unless asked.
        (None | Some("http"), true) => Ok(plain),
        (Some("http"), false) => Err(format!(
            "registry '{registry}' is plain http:// off this machine: vault sends logins \
             over HTTPS only"
        )),
        _ => Ok(format!("https://{host}")),
    }
}

/// Whether a token service at `realm` may get the login for `origin`: the
/// same host, or (for a named host of three labels or more) the host's
/// parent domain or a sibling under it: GitLab's gitlab.com for
/// registry.gitlab.com, Docker Hub's auth.docker.io for
/// registry-1.docker.io. HTTPS, or HTTP on loopback. The registry names
/// the realm, so the vault bounds where it points.
fn realm_allowed(origin: &str, realm: &str) -> bool {
    let host = |u: &str| reqwest::Url::parse(u).ok()?.host_str().map(str::to_owned);
    let (Some(a), Some(b)) = (host(origin), host(realm)) else {
        return false;
    };
    if vault_protocol::credential::check_endpoint_url("realm", realm).is_err() {
        return false;
    }
    if a == b {
        return true;
    }
    let named = |h: &str| h.parse::<std::net::IpAddr>().is_err() && !h.starts_with('[');
    let parent = a.split_once('.').map(|(_, p)| p).unwrap_or("");
    named(&a) && parent.contains('.') && (b == parent || b.ends_with(&format!(".{parent}")))
}

/// One `key="value"` parameter of a `WWW-Authenticate` challenge.
fn challenge_param(challenge: &str, key: &str) -> Option<String> {
    challenge.split(',').find_map(|part| {
        let (k, v) = part.trim().split_once('=')?;
        let k = k.rsplit(' ').next()?;
        k.eq_ignore_ascii_case(key)
            .then(|| v.trim().trim_matches('"').to_owned())
    })
}

async fn registry_login(
    http: &Http,
    registry: &str,
    username: &str,
    password: &SecretValue,
    timeout: Duration,
) -> Result<String, NotOk> {
    let origin = registry_origin(registry).map_err(Failed)?;
    let ping = format!("{origin}/v2/");
    let reach = |e: reqwest::Error| Failed(format!("cannot reach {origin}: {}", describe(&e)));
    let first = http
        .get(&ping)
        .timeout(timeout)
        .send()
        .await
        .map_err(reach)?;
    if first.status().is_success() {
        return Err(Skipped(format!(
            "{origin} does not ask for a login, so the login could not be checked"
        )));
    }
    let challenge = first
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let refused = |s: reqwest::StatusCode| {
        Failed(format!(
            "{origin} refused the login for {username} (HTTP {})",
            s.as_u16()
        ))
    };
    let scheme = challenge.split(' ').next().unwrap_or("");
    let answer = if scheme.eq_ignore_ascii_case("bearer") {
        let realm = challenge_param(&challenge, "realm")
            .ok_or_else(|| Failed(format!("{origin} asked for a token but named no realm")))?;
        if !realm_allowed(&origin, &realm) {
            return Err(Failed(format!(
                "{origin} sends logins to {realm}, outside its own domain; vault does not \
                 send the password there"
            )));
        }
        let mut url = reqwest::Url::parse(&realm)
            .map_err(|_| Failed(format!("{origin} named a realm that is not a URL")))?;
        if let Some(service) = challenge_param(&challenge, "service") {
            url.query_pairs_mut().append_pair("service", &service);
        }
        url.query_pairs_mut().append_pair("account", username);
        let got = http
            .get(url.as_str())
            .timeout(timeout)
            .basic_auth(username, Some(password.expose_secret()))
            .send()
            .await
            .map_err(reach)?;
        match got.status() {
            s if s.is_success() => {}
            s @ (reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN) => {
                return Err(refused(s));
            }
            s => {
                return Err(Failed(format!(
                    "the token service {realm} answered HTTP {}, so the login could not be checked",
                    s.as_u16()
                )));
            }
        }
        #[derive(serde::Deserialize)]
        struct Issued {
            token: Option<SecretValue>,
            access_token: Option<SecretValue>,
        }
        let body = read_capped(got, MAX_ANSWER)
            .await
            .map_err(|e| Failed(e.to_string()))?;
        let issued: Issued = serde_json::from_slice(&body)
            .map_err(|_| Failed(format!("{realm} answered without a token")))?;
        let token = issued
            .token
            .or(issued.access_token)
            .ok_or_else(|| Failed(format!("{realm} answered without a token")))?;
        http.get(&ping)
            .timeout(timeout)
            .bearer_auth(token.expose_secret())
            .send()
            .await
            .map_err(reach)?
    } else {
        http.get(&ping)
            .timeout(timeout)
            .basic_auth(username, Some(password.expose_secret()))
            .send()
            .await
            .map_err(reach)?
    };
    match answer.status() {
        s if s.is_success() => Ok(format!("{origin} took the login for {username}")),
        s @ (reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN) => Err(refused(s)),
        s => Err(Failed(format!(
            "{origin}/v2/ answered HTTP {}, so the login could not be checked",
            s.as_u16()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_origins() {
        assert_eq!(registry_origin("ghcr.io").unwrap(), "https://ghcr.io");
        assert_eq!(
            registry_origin("https://index.docker.io/v1/").unwrap(),
            "https://registry-1.docker.io"
        );
        assert_eq!(
            registry_origin("127.0.0.1:5000").unwrap(),
            "http://127.0.0.1:5000"
        );
        assert!(registry_origin("https:///x").is_err());
        assert_eq!(
            registry_origin("https://localhost:5000").unwrap(),
            "https://localhost:5000"
        );
        assert!(registry_origin("user:pw@ghcr.io").is_err());
        assert!(registry_origin("http://ghcr.io").is_err());
        assert!(registry_origin("ftp://ghcr.io").is_err());
    }

    #[test]
    fn realms_stay_in_the_registrys_domain() {
        let hub = "https://registry-1.docker.io";
        assert!(realm_allowed(hub, "https://auth.docker.io/token"));
        assert!(realm_allowed("https://ghcr.io", "https://ghcr.io/token"));
        assert!(!realm_allowed(
            "https://ghcr.io",
            "https://evil.example/token"
        ));
        assert!(!realm_allowed(hub, "http://auth.docker.io/token"));
        assert!(!realm_allowed(
            "https://ghcr.io",
            "https://ghcr.io.evil.example/t"
        ));
        assert!(realm_allowed(
            "https://registry.gitlab.com",
            "https://gitlab.com/jwt/auth"
        ));
        assert!(realm_allowed(
            "http://127.0.0.1:5000",
            "http://127.0.0.1:5001/auth"
        ));
        assert!(!realm_allowed(
            "https://10.0.0.1",
            "https://192.168.0.1/auth"
        ));
    }

    #[test]
    fn challenge_params() {
        let c = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#;
        assert_eq!(
            challenge_param(c, "realm").as_deref(),
            Some("https://auth.docker.io/token")
        );
        assert_eq!(
            challenge_param(c, "service").as_deref(),
            Some("registry.docker.io")
        );
        assert_eq!(challenge_param(c, "scope"), None);
    }
}
