//! GCP access tokens (issue 22, docs/gcp.md) through the real binaries:
//! `vault gcp token` mints from a service-account key at a local token
//! endpoint that checks the assertion as Google's does (RS256 signature by
//! the key's public key, issuer, audience, scope, a short life, the time),
//! caches it, mints once for many callers, and says why when the key is
//! revoked, the clock is off or the endpoint is down (serving the cached
//! token while it works). google-auth's own assertion is accepted by the
//! same endpoint, which pins it to the real client.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use vault_e2e::{MARK, VaultHome, kube, run_command, secret, which};

/// What the token endpoint knows and does.
#[derive(Debug, Default)]
struct State {
    /// The PKCS#1 DER of the public key it accepts.
    public_key: Vec<u8>,
    client_email: String,
    /// Its clock's offset from the real one, seconds.
    skew: i64,
    /// `expires_in` of the tokens it issues.
    expires_in: i64,
    /// The scopes of each token issued.
    issued: Vec<String>,
    /// Why the last assertion was refused.
    refusals: Vec<String>,
    /// Every token issued (what IAM Credentials takes as a caller's).
    tokens: Vec<String>,
    /// The service accounts the key's account may act as.
    may_act_as: Vec<String>,
    /// Each token made for another account: (the account, its scopes).
    impersonated: Vec<(String, Vec<String>)>,
    /// A user's login it accepts: (client_id, client_secret, refresh_token).
    login: Option<(String, String, String)>,
    /// The login was signed out (its refresh token revoked).
    revoked: bool,
    /// A workload identity provider: (its audience, the issuer it trusts,
    /// the JWKS uploaded to it).
    provider: Option<(String, String, serde_json::Value)>,
    /// The `sub` of each subject token exchanged.
    exchanged: Vec<String>,
}

/// A refresh-token grant (RFC 6749 §6) as Google's endpoint takes it: the
/// client and the refresh token it issued; `scope` optional (at most what
/// was granted). The token, else Google's error description.
fn refresh_grant(state: &mut State, field: &dyn Fn(&str) -> String) -> Result<String, String> {
    let Some((id, secret_, refresh)) = state.login.clone() else {
        return Err("no logins here".into());
    };
    if vault_protocol::form::decode(&field("client_id")) != id
        || vault_protocol::form::decode(&field("client_secret")) != secret_
    {
        return Err("Unauthorized (invalid_client)".into());
    }
    if vault_protocol::form::decode(&field("refresh_token")) != refresh || state.revoked {
        return Err("Token has been expired or revoked.".into());
    }
    let scope = vault_protocol::form::decode(&field("scope"));
    state.issued.push(if scope.is_empty() {
        "(as granted)".to_owned()
    } else {
        scope
    });
    let token = format!("ya29.{}", secret(&format!("user-{}", state.issued.len())));
    state.tokens.push(token.clone());
    Ok(token)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Checks one JWT-bearer grant; the token on success, else the OAuth2
/// error description Google gives for it.
fn grant(state: &mut State, form: &str) -> Result<String, String> {
    let field = |k: &str| {
        form.split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap_or_default()
            .to_owned()
    };
    if field("grant_type") == "refresh_token" {
        return refresh_grant(state, &field);
    }
    if field("grant_type") != "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer" {
        return Err(format!("Invalid grant_type: {}", field("grant_type")));
    }
    let jwt = field("assertion");
    let parts: Vec<&str> = jwt.split('.').collect();
    let [head, body, sig] = parts.as_slice() else {
        return Err("Invalid JWT: not three parts".into());
    };
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        &state.public_key,
    );
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| "Invalid JWT Signature.")?;
    key.verify(format!("{head}.{body}").as_bytes(), &sig)
        .map_err(|_| "Invalid JWT Signature.")?;
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(head).unwrap()).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap();
    if header["alg"] != "RS256" {
        return Err("Invalid JWT: alg".into());
    }
    // Google's endpoint wants its own URL as the audience, wherever the
    // grant is sent (google-auth always sends that).
    if claims["iss"] != state.client_email.as_str()
        || claims["aud"] != "https://oauth2.googleapis.com/token"
    {
        return Err(format!("Invalid JWT: iss or aud ({claims})"));
    }
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    let here = now() + state.skew;
    if exp - iat > 3600 || (iat - here).abs() > 300 || exp < here {
        return Err(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a \
                    reasonable timeframe. Check your iat and exp values in the JWT claim."
                .into(),
        );
    }
    let scope = claims["scope"].as_str().unwrap_or_default().to_owned();
    if scope.is_empty() {
        return Err("Invalid JWT: no scope".into());
    }
    state.issued.push(scope);
    let token = format!("ya29.{}", secret(&format!("gcp-{}", state.issued.len())));
    state.tokens.push(token.clone());
    Ok(token)
}

/// Google STS's token exchange (RFC 8693) as its API reference gives it,
/// for an OIDC provider with an uploaded JWKS: the form's grant and token
/// types and `audience` must be the provider's; the subject token a JWT
/// signed by a key of the JWKS (ES256 here), its `iss` the provider's
/// issuer, its `aud` `https:` + the audience, not expired and short-lived.
/// The federated token, else the error description.
fn sts_exchange(state: &mut State, form: &str) -> Result<String, String> {
    let field = |k: &str| {
        vault_protocol::form::decode(
            form.split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .unwrap_or_default(),
        )
    };
    let Some((audience, issuer, jwks)) = state.provider.clone() else {
        return Err("no workload identity provider here".into());
    };
    if field("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange"
        || field("requested_token_type") != "urn:ietf:params:oauth:token-type:access_token"
        || field("subject_token_type") != "urn:ietf:params:oauth:token-type:jwt"
    {
        return Err(format!("unsupported exchange: {form}"));
    }
    if field("audience") != audience {
        return Err("The audience in the request is not a valid provider.".into());
    }
    let jwt = field("subject_token");
    let parts: Vec<&str> = jwt.split('.').collect();
    let [head, body, sig] = parts.as_slice() else {
        return Err("Invalid JWT: not three parts".into());
    };
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(head).unwrap()).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap();
    if header["alg"] != "ES256" {
        return Err("Invalid JWT: alg".into());
    }
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .ok_or("The key ID in the JWT header is not in the provider's JWKS.")?;
    let mut point = vec![4u8];
    point.extend(URL_SAFE_NO_PAD.decode(key["x"].as_str().unwrap()).unwrap());
    point.extend(URL_SAFE_NO_PAD.decode(key["y"].as_str().unwrap()).unwrap());
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| "Invalid JWT signature.")?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &point)
        .verify(format!("{head}.{body}").as_bytes(), &sig)
        .map_err(|_| "Invalid JWT signature.")?;
    if claims["iss"] != issuer.as_str() {
        return Err(format!(
            "The issuer in the token is not the provider's: {}",
            claims["iss"]
        ));
    }
    if claims["aud"] != format!("https:{audience}") {
        return Err(format!(
            "The audience in the token is not allowed: {}",
            claims["aud"]
        ));
    }
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    if exp < now() || exp - iat > 3600 {
        return Err("The token has expired or lives too long.".into());
    }
    let sub = claims["sub"].as_str().unwrap_or_default().to_owned();
    state.exchanged.push(sub);
    let token = format!("ya29.{}", secret(&format!("fed-{}", state.exchanged.len())));
    state.tokens.push(token.clone());
    Ok(token)
}

/// IAM Credentials' `generateAccessToken` as Google's API reference gives
/// it: `POST /v1/projects/-/serviceAccounts/EMAIL:generateAccessToken`,
/// the caller's token as the bearer, `{"scope": [...], "lifetime": "Ns"}`;
/// `{"accessToken", "expireTime"}`, or 403 when the caller may not act as
/// EMAIL, 401 for a token it did not issue. The status and JSON answer.
fn generate(state: &mut State, path: &str, bearer: &str, body: &str) -> (u16, serde_json::Value) {
    let denied = |code: u16, status: &str, message: &str| {
        (
            code,
            serde_json::json!({"error": {"code": code, "message": message, "status": status}}),
        )
    };
    let Some(target) = path
        .strip_prefix("/v1/projects/-/serviceAccounts/")
        .and_then(|p| p.strip_suffix(":generateAccessToken"))
    else {
        return denied(404, "NOT_FOUND", "no such method");
    };
    if !state.tokens.iter().any(|t| format!("Bearer {t}") == bearer) {
        return denied(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
        );
    }
    let asked: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let scopes: Vec<String> = asked["scope"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if scopes.is_empty() {
        return denied(400, "INVALID_ARGUMENT", "Scope required.");
    }
    if !state.may_act_as.iter().any(|a| a == target) {
        return denied(
            403,
            "PERMISSION_DENIED",
            "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).",
        );
    }
    state.impersonated.push((target.to_owned(), scopes));
    let expires = vault_protocol::timefmt::Timestamp(now() + 3600).to_rfc3339();
    let token = format!("ya29.{}", secret(&format!("as-{target}")));
    state.tokens.push(token.clone());
    (
        200,
        serde_json::json!({"accessToken": token, "expireTime": expires}),
    )
}

/// The token endpoint on loopback; stops with the test.
fn token_endpoint(state: Arc<Mutex<State>>) -> (String, Arc<tiny_http::Server>) {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let url = format!("http://{}/token", server.server_addr().to_ip().unwrap());
    let s = Arc::clone(&server);
    std::thread::spawn(move || {
        for mut req in s.incoming_requests() {
            let mut form = String::new();
            req.as_reader().read_to_string(&mut form).unwrap();
            let mut st = state.lock().unwrap();
            if req.url() == "/v1/token" {
                let (code, body) = match sts_exchange(&mut st, &form) {
                    Ok(token) => (
                        200,
                        serde_json::json!({"access_token": token, "expires_in": 3600,
                            "token_type": "Bearer",
                            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"}),
                    ),
                    Err(why) => {
                        st.refusals.push(why.clone());
                        (
                            400,
                            serde_json::json!({"error": "invalid_grant", "error_description": why}),
                        )
                    }
                };
                drop(st);
                let _ = req.respond(
                    tiny_http::Response::from_string(body.to_string()).with_status_code(code),
                );
                continue;
            }
            if req.url() != "/token" {
                let bearer = req
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("Authorization"))
                    .map(|h| h.value.to_string())
                    .unwrap_or_default();
                let (code, body) = generate(&mut st, req.url(), &bearer, &form);
                drop(st);
                let _ = req.respond(
                    tiny_http::Response::from_string(body.to_string()).with_status_code(code),
                );
                continue;
            }
            let (code, body) = match grant(&mut st, &form) {
                Ok(token) => (
                    200,
                    serde_json::json!({"access_token": token, "expires_in": st.expires_in,
                                       "token_type": "Bearer"}),
                ),
                Err(why) => {
                    st.refusals.push(why.clone());
                    (
                        400,
                        serde_json::json!({"error": "invalid_grant", "error_description": why}),
                    )
                }
            };
            drop(st);
            let _ = req
                .respond(tiny_http::Response::from_string(body.to_string()).with_status_code(code));
        }
    });
    (url, server)
}

/// An RSA key made by ssh-keygen: (PKCS#8 PEM private key, PKCS#1 DER
/// public key).
fn rsa_key(dir: &Path, name: &str) -> (String, Vec<u8>) {
    let file = dir.join(name);
    let keygen = |args: &[&str]| {
        let mut c = Command::new("ssh-keygen");
        c.args(args);
        let run = run_command(c, None, Duration::from_secs(60));
        run.ok();
        run.stdout.clone()
    };
    let f = file.to_str().unwrap();
    keygen(&[
        "-q", "-t", "rsa", "-b", "2048", "-m", "PKCS8", "-N", "", "-f", f,
    ]);
    let public = keygen(&["-e", "-m", "PEM", "-f", &format!("{f}.pub")]);
    let b64: String = public.lines().filter(|l| !l.starts_with("-----")).collect();
    (
        std::fs::read_to_string(&file).unwrap(),
        STANDARD.decode(b64).unwrap(),
    )
}

/// A key for `email` (its private PEM) and a token endpoint that knows
/// its public half: the endpoint's state, URL and server.
fn key_and_endpoint(
    dir: &Path,
    email: &str,
) -> (String, Arc<Mutex<State>>, String, Arc<tiny_http::Server>) {
    let (private_key, public_key) = rsa_key(dir, "sa-key");
    let state = Arc::new(Mutex::new(State {
        public_key,
        client_email: email.into(),
        expires_in: 3599,
        ..State::default()
    }));
    let (url, server) = token_endpoint(Arc::clone(&state));
    (private_key, state, url, server)
}

fn key_json(private_key: &str, email: &str, token_uri: &str) -> String {
    serde_json::json!({
        "type": "service_account",
        "project_id": "vault-test",
        "private_key_id": "0123456789abcdef",
        "private_key": private_key,
        "client_email": email,
        "client_id": "1",
        "token_uri": token_uri,
    })
    .to_string()
}

#[test]
fn tokens_are_minted_cached_and_refused_with_a_reason() {
    if which("ssh-keygen").is_none() {
        eprintln!("SKIP gcp tokens: needs ssh-keygen (apt install openssh-client)");
        return;
    }
    let vh = VaultHome::new();
    vh.init().ok();
    let email = "builder@vault-test.iam.gserviceaccount.com";
    let (private_key, state, url, server) = key_and_endpoint(vh.root(), email);
    let json = key_json(&private_key, email, &url);
    vh.vault_in(["add", "sa", "--type", "gcp", "json=-"], json.as_bytes())
        .ok();

    // Not Google's endpoint, not listed on this machine: refused, nothing
    // sent.
    vh.vault(["gcp", "token", "sa"])
        .code(1)
        .stderr_has("[gcp] token_uris");
    assert!(state.lock().unwrap().issued.is_empty());
    vh.write_config(&format!("[gcp]\ntoken_uris = [\"{url}\"]\n"));
    vh.stop_daemons();
    vh.unlock().ok();

    let first = vh.vault(["gcp", "token", "sa"]);
    first.ok();
    let token = first.stdout.trim().to_owned();
    assert!(
        token.starts_with("ya29.") && token.contains(MARK),
        "{first}"
    );
    let json_run = vh.vault(["--json", "gcp", "token", "sa"]);
    let doc = json_run.ok().json();
    assert_eq!(doc["token"], token.as_str(), "cached: the same token");
    let expires = vault_protocol::timefmt::Timestamp::parse(doc["expires_at"].as_str().unwrap())
        .unwrap()
        .unix();
    assert!((expires - now() - 3599).abs() < 30, "{doc}");
    assert_eq!(
        state.lock().unwrap().issued,
        ["https://www.googleapis.com/auth/cloud-platform"]
    );
    // `vault check` mints one too (issue 24's gcp check), and says whose.
    let run = vh.vault(["--json", "check", "sa"]);
    let result = &run.ok().json()[0];
    assert_eq!(result["outcome"], "ok", "{result}");
    assert!(
        result["detail"].as_str().unwrap().contains(email),
        "{result}"
    );

    // Many callers at once after a lock (the cache is gone): one mint.
    vh.vault(["lock"]).ok();
    vh.unlock().ok();
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let mut c = vh.command(&vault_e2e::binaries().vault, ["gcp", "token", "sa"]);
            c.stdout(std::process::Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    let tokens: std::collections::BTreeSet<String> = callers
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success());
            String::from_utf8(out.stdout).unwrap()
        })
        .collect();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(state.lock().unwrap().issued.len(), 3);
    // Another scope is another token.
    let scoped = vh.vault([
        "gcp",
        "token",
        "sa",
        "--scope",
        "https://www.googleapis.com/auth/devstorage.read_only",
    ]);
    assert_ne!(scoped.ok().stdout.trim(), token);
    assert_eq!(
        state.lock().unwrap().issued[3],
        "https://www.googleapis.com/auth/devstorage.read_only"
    );

    // The endpoint's clock two hours ahead: the assertion is refused, and
    // the message points at the clock.
    {
        let mut st = state.lock().unwrap();
        st.skew = 7200;
    }
    vh.vault(["lock"]).ok();
    vh.unlock().ok();
    let run = vh.vault(["gcp", "token", "sa"]);
    run.code(1).stderr_has("clock").never_prints(MARK);
    state.lock().unwrap().skew = 0;

    // The key deleted in IAM: the endpoint no longer knows its public key.
    let (_, other_public) = rsa_key(vh.root(), "other-key");
    let known = std::mem::replace(&mut state.lock().unwrap().public_key, other_public);
    let run = vh.vault(["gcp", "token", "sa"]);
    run.code(1)
        .stderr_has("Invalid JWT Signature")
        .stderr_has("deleted or disabled");
    let run = vh.vault(["--json", "check", "sa"]);
    run.code(1).never_prints(MARK);
    let result = &run.json()[0];
    assert_eq!(result["outcome"], "failed");
    assert!(
        result["detail"]
            .as_str()
            .unwrap()
            .contains("deleted or disabled"),
        "{result}"
    );
    assert!(
        state
            .lock()
            .unwrap()
            .refusals
            .iter()
            .any(|r| r == "Invalid JWT Signature."),
        "the endpoint checked the signature"
    );
    state.lock().unwrap().public_key = known;

    // Short-lived tokens (under the 5-minute margin) are minted on every
    // call; with the endpoint down, the one that still works is served.
    state.lock().unwrap().expires_in = 200;
    let short = vh.vault(["gcp", "token", "sa"]);
    let short = short.ok().stdout.trim().to_owned();
    server.unblock();
    drop(server);
    std::thread::sleep(Duration::from_millis(200));
    let run = vh.vault(["gcp", "token", "sa"]);
    assert_eq!(
        run.ok().stdout.trim(),
        short,
        "the cached token, still valid"
    );
    vh.vault(["lock"]).ok();
    vh.unlock().ok();
    vh.vault(["gcp", "token", "sa"])
        .code(1)
        .stderr_has("cannot reach");

    // Not a gcp credential; one that does not exist.
    vh.vault_in(["add", "tok", "--type", "token", "token=-"], b"x")
        .ok();
    vh.vault(["gcp", "token", "tok"])
        .code(2)
        .stderr_has("tokens come from a gcp one");
    vh.vault(["gcp", "token", "nope"]).code(4);
    // Every hand-out is in the audit log.
    vh.vault(["lock"]).ok();
    vh.unlock().ok();
    let audit = vh.vault(["--json", "audit", "sa"]).ok().json();
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["op"] == "gcp_token"),
        "{audit}"
    );
}

/// The endpoint accepts google-auth's own JWT-bearer grant: what it checks
/// is what the real client sends.
#[test]
fn google_auth_gets_a_token_from_the_same_endpoint() {
    let Some(python) = vault_e2e::test_python("gcp token endpoint contract") else {
        return;
    };
    if which("ssh-keygen").is_none() {
        eprintln!("SKIP gcp token endpoint contract: needs ssh-keygen");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let email = "contract@vault-test.iam.gserviceaccount.com";
    let (private_key, state, url, _server) = key_and_endpoint(dir.path(), email);
    let key = dir.path().join("key.json");
    std::fs::write(&key, key_json(&private_key, email, &url)).unwrap();
    let script = r#"
import json, sys
import google.auth.transport.requests
from google.oauth2 import service_account
c = service_account.Credentials.from_service_account_file(
    sys.argv[1], scopes=["https://www.googleapis.com/auth/cloud-platform"])
c.refresh(google.auth.transport.requests.Request())
print(json.dumps({"token": c.token, "valid": c.valid}))
"#;
    let mut cmd = Command::new(&python);
    cmd.args(["-c", script]).arg(&key);
    let run = run_command(cmd, None, Duration::from_secs(60));
    run.ok();
    let got: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(got["valid"], true, "{run}");
    assert!(got["token"].as_str().unwrap().starts_with("ya29."));
    assert_eq!(
        state.lock().unwrap().issued,
        ["https://www.googleapis.com/auth/cloud-platform"]
    );

    // google-auth's impersonated credentials against the same double's
    // generateAccessToken: what it sends is what the double takes.
    let target = "deploy@vault-test.iam.gserviceaccount.com";
    state.lock().unwrap().may_act_as.push(target.into());
    let base = url.trim_end_matches("/token");
    let script = r#"
import json, sys
import google.auth.transport.requests
from google.auth import impersonated_credentials
from google.oauth2 import service_account
src = service_account.Credentials.from_service_account_file(
    sys.argv[1], scopes=["https://www.googleapis.com/auth/cloud-platform"])
c = impersonated_credentials.Credentials(
    source_credentials=src, target_principal=sys.argv[2],
    target_scopes=["https://www.googleapis.com/auth/devstorage.read_only"], lifetime=3600,
    iam_endpoint_override=sys.argv[3] + "/v1/projects/-/serviceAccounts/" + sys.argv[2]
        + ":generateAccessToken")
c.refresh(google.auth.transport.requests.Request())
print(json.dumps({"token": c.token, "valid": c.valid}))
"#;
    let mut cmd = Command::new(&python);
    cmd.args(["-c", script]).arg(&key).args([target, base]);
    let run = run_command(cmd, None, Duration::from_secs(60));
    run.ok();
    let got: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(got["valid"], true, "{run}");
    assert_eq!(
        state.lock().unwrap().impersonated,
        [(
            target.to_owned(),
            vec!["https://www.googleapis.com/auth/devstorage.read_only".to_owned()]
        )]
    );
}

/// A service-account key that acts as another account (`impersonate`):
/// the daemon's token is that account's, from IAM Credentials, with the
/// scopes asked; an account the key may not act as is refused, saying
/// which role is missing; a value that is no account's is refused.
#[test]
fn a_key_acts_as_the_account_it_names() {
    if which("ssh-keygen").is_none() {
        eprintln!("SKIP gcp impersonation: needs ssh-keygen (apt install openssh-client)");
        return;
    }
    let vh = VaultHome::new();
    let email = "ci@vault-test.iam.gserviceaccount.com";
    let (private_key, state, url, _server) = key_and_endpoint(vh.root(), email);
    let base = url.trim_end_matches("/token");
    vh.write_config(&format!(
        "[gcp]\ntoken_uris = [\"{url}\"]\niam_endpoint = \"{base}\"\n"
    ));
    vh.init().ok();
    let target = "deploy@vault-test.iam.gserviceaccount.com";
    state.lock().unwrap().may_act_as.push(target.into());
    let json = key_json(&private_key, email, &url);
    vh.vault_in(
        [
            "add",
            "sa",
            "--type",
            "gcp",
            "json=-",
            &format!("impersonate={target}"),
        ],
        json.as_bytes(),
    )
    .ok();
    let scope = "https://www.googleapis.com/auth/devstorage.read_only";
    let run = vh.vault(["gcp", "token", "sa", "--scope", scope]);
    run.ok();
    assert!(run.stdout.contains("as-deploy@"), "the target's token");
    {
        let st = state.lock().unwrap();
        assert_eq!(
            st.impersonated,
            [(target.to_owned(), vec![scope.to_owned()])]
        );
        // The key's own token was for cloud-platform.
        assert_eq!(
            st.issued,
            ["https://www.googleapis.com/auth/cloud-platform"]
        );
    }
    // Cached like any token: no second call.
    vh.vault(["gcp", "token", "sa", "--scope", scope]).ok();
    assert_eq!(state.lock().unwrap().impersonated.len(), 1);
    // `vault check` acts as the account too, and says so.
    let run = vh.vault(["--json", "check", "sa"]);
    let result = &run.ok().json()[0];
    assert_eq!(result["outcome"], "ok", "{result}");
    assert!(
        result["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("{target} (as {email})")),
        "{result}"
    );
    assert_eq!(state.lock().unwrap().impersonated.len(), 2);

    let other = "prod@vault-test.iam.gserviceaccount.com";
    vh.vault(["set", "sa", &format!("impersonate={other}")])
        .ok();
    vh.vault(["gcp", "token", "sa"])
        .code(1)
        .stderr_has(other)
        .stderr_has("roles/iam.serviceAccountTokenCreator");
    vh.vault(["check", "sa"]).code(1);
    vh.vault(["set", "sa", "impersonate=not an account/../x"])
        .code(2)
        .stderr_has("service account");
}

/// GKE (issue 22): kubectl runs `vault gke token` as its exec plugin (in
/// place of gke-gcloud-auth-plugin) and sends the token the daemon minted
/// to an HTTPS API server that takes that token only; a wrong one is
/// refused there.
#[test]
fn kubectl_reaches_a_gke_api_server_with_the_minted_token() {
    if which("ssh-keygen").is_none() {
        eprintln!("SKIP gke: needs ssh-keygen (apt install openssh-client)");
        return;
    }
    let Some(python) = vault_e2e::test_python("gke") else {
        return;
    };
    let Some(kubectl) = kube::kubectl("gke") else {
        return;
    };
    let vh = VaultHome::new();
    let email = "gke@vault-test.iam.gserviceaccount.com";
    let (private_key, _state, url, _server) = key_and_endpoint(vh.root(), email);
    vh.write_config(&format!("[gcp]\ntoken_uris = [\"{url}\"]\n"));
    vh.init().ok();
    let json = key_json(&private_key, email, &url);
    vh.vault_in(["add", "sa", "--type", "gcp", "json=-"], json.as_bytes())
        .ok();
    let token = vh.vault(["gcp", "token", "sa"]);
    let token = token.ok().stdout.trim().to_owned();

    // The ExecCredential holds the cached token and its expiry.
    let cred = vh.vault(["gke", "token", "sa"]).ok().json();
    assert_eq!(cred["kind"], "ExecCredential");
    assert_eq!(cred["apiVersion"], "client.authentication.k8s.io/v1beta1");
    assert!(
        cred["status"]["token"] == token.as_str(),
        "not the cached token"
    );
    let expires = vault_protocol::timefmt::Timestamp::parse(
        cred["status"]["expirationTimestamp"].as_str().unwrap(),
    )
    .unwrap();
    assert!((expires.unix() - now() - 3599).abs() < 60, "{expires}");

    let api = vault_e2e::https::https_endpoint(&python, vh.root(), &token);
    let server = api.url.trim_end_matches("/v1/me");
    let exec = kube::exec_user(&vh.vault_bin, &["gke", "token", "sa"], "v1beta1");
    let config = kube::kubeconfig(&vh.root().join("kube-gke"), server, &api.ca, &exec);
    kube::get_raw(&vh, &kubectl, &config, "/v1/me").ok();
    // The same through a user `vault emit kube` adds to a kubeconfig of
    // the user's, which kubectl then points its context at.
    let own = kube::kubeconfig(
        &vh.root().join("kube-own"),
        server,
        &api.ca,
        "    token: ya29.not-the-token\n",
    );
    let run = vh.vault(["emit", "kube", "sa", "--kubeconfig", own.to_str().unwrap()]);
    run.ok();
    assert!(
        !std::fs::read_to_string(&own).unwrap().contains(&token),
        "a token in the kubeconfig"
    );
    let mut cmd = vh.command(
        &kubectl,
        ["config", "set-context", "demo", "--user=vault-sa"],
    );
    cmd.arg("--kubeconfig").arg(&own);
    vault_e2e::run_command(cmd, None, std::time::Duration::from_secs(30)).ok();
    kube::get_raw(&vh, &kubectl, &own, "/v1/me").ok();
    vh.vault([
        "emit",
        "kube",
        "sa",
        "--kubeconfig",
        own.to_str().unwrap(),
        "--cluster",
        "c",
    ])
    .code(2)
    .stderr_has("aws credential");
    // A token the server does not take: kubectl is refused.
    let wrong = kube::kubeconfig(
        &vh.root().join("kube-wrong"),
        server,
        &api.ca,
        "    token: ya29.not-the-token\n",
    );
    let run = kube::get_raw(&vh, &kubectl, &wrong, "/v1/me");
    assert_ne!(run.code, 0, "{run}");
    assert!(run.stderr.contains("must be logged in"), "{run}");
}

/// What the child of `vault exec --server -c sa` runs: google-auth finds
/// the metadata endpoint by itself and gets a token, email and project
/// through it; the endpoint's rules are probed directly; and no file in
/// the exec folder (argv[1]) holds anything.
const METADATA_CHILD: &str = r#"
import json, os, subprocess, sys, urllib.error, urllib.request
import google.auth, google.auth.transport.requests
out = {"gac": os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"),
       "host": os.environ.get("GCE_METADATA_HOST"), "ip": os.environ.get("GCE_METADATA_IP"),
       "sdk_config": os.environ.get("CLOUDSDK_CONFIG")}
creds, project = google.auth.default()
creds.refresh(google.auth.transport.requests.Request())
out.update(token=creds.token, project=project, email=creds.service_account_email,
           valid=creds.valid)
out["files"] = [os.path.join(d, f) for d, _, fs in os.walk(sys.argv[1]) for f in fs]
base = "http://" + os.environ["GCE_METADATA_HOST"]
def probe(path, headers):
    req = urllib.request.Request(base + path, headers=headers)
    try:
        with urllib.request.urlopen(req) as r:
            return [r.status, r.headers.get("Metadata-Flavor"), r.read().decode()]
    except urllib.error.HTTPError as e:
        return [e.code, e.headers.get("Metadata-Flavor"), e.read().decode()]
tok = "/computeMetadata/v1/instance/service-accounts/default/token"
flavor = {"Metadata-Flavor": "Google"}
out["no_flavor"] = probe(tok, {})
out["proxied"] = probe(tok, dict(flavor, **{"X-Forwarded-For": "10.0.0.1"}))
out["scoped"] = probe(tok + "?scopes=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fdevstorage.read_only", flavor)
out["rebound"] = probe(tok, dict(flavor, Host="vault-test.example:80"))
# Two scopes, as google-auth sends them (`scopes=A%2CB`).
two, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/devstorage.read_only",
                                     "https://www.googleapis.com/auth/pubsub"])
two.refresh(google.auth.transport.requests.Request())
out["two_scopes"] = two.token
# A dual-stack socket (IPv4-mapped IPv6, Java's default) is ours too.
import http.client, socket
port = int(os.environ["GCE_METADATA_HOST"].rsplit(":", 1)[1])
try:
    conn = http.client.HTTPConnection("::ffff:127.0.0.1", port, timeout=10)
    conn.putrequest("GET", tok, skip_host=True)
    conn.putheader("Host", os.environ["GCE_METADATA_HOST"])
    conn.putheader("Metadata-Flavor", "Google")
    conn.endheaders()
    out["mapped"] = conn.getresponse().status
except OSError as e:
    out["mapped"] = "no IPv6 here: " + str(e)
out["identity"] = probe("/computeMetadata/v1/instance/service-accounts/default/identity", flavor)
if sys.argv[2] != "none":
    uid, gid = sys.argv[2].split(":")
    run = subprocess.run(["setpriv", "--reuid", uid, "--regid", gid, "--clear-groups",
                          "curl", "-s", "-w", " %{http_code}", "-H", "Metadata-Flavor: Google",
                          base + tok], capture_output=True, text=True, timeout=30)
    out["other_uid"] = run.stdout
    # Another uid holding many idle connections takes none of our slots.
    import time
    hold = subprocess.Popen(["setpriv", "--reuid", uid, "--regid", gid, "--clear-groups",
                             "bash", "-c", "for i in $(seq 60); do exec {fd}<>/dev/tcp/127.0.0.1/%d; done; sleep 4" % port])
    time.sleep(1)
    out["while_held"] = probe(tok, flavor)[0]
    hold.wait(timeout=30)
    out["after_held"] = probe(tok, flavor)[0]
print(json.dumps(out))
"#;

/// `vault exec --server` with a gcp key (issue 22): the child gets a
/// metadata endpoint in place of the key file, and google-auth's own
/// Compute Engine credentials take their token from it, which is the
/// daemon's cached token; a request without `Metadata-Flavor`, through a
/// proxy, or from another uid is refused.
#[test]
fn a_child_gets_tokens_from_a_metadata_endpoint_and_no_key_file() {
    if which("ssh-keygen").is_none() {
        eprintln!("SKIP gcp metadata: needs ssh-keygen (apt install openssh-client)");
        return;
    }
    let Some(python) = vault_e2e::test_python("gcp metadata") else {
        return;
    };
    let mut vh = VaultHome::new();
    let email = "meta@vault-test.iam.gserviceaccount.com";
    let (private_key, state, url, _server) = key_and_endpoint(vh.root(), email);
    vh.write_config(&format!("[gcp]\ntoken_uris = [\"{url}\"]\n"));
    vh.init().ok();
    let json = key_json(&private_key, email, &url);
    vh.vault_in(["add", "sa", "--type", "gcp", "json=-"], json.as_bytes())
        .ok();
    // An inherited key file would win in google-auth: exec removes it.
    vh.env.insert(
        "GOOGLE_APPLICATION_CREDENTIALS".into(),
        "/nonexistent/key.json".into(),
    );
    // Inherited settings that turn google-auth away from the endpoint
    // are removed too.
    vh.env
        .insert("GCE_METADATA_MTLS_MODE".into(), "strict".into());
    vh.env.insert("NO_GCE_CHECK".into(), "true".into());
    // gcloud's ADC file (the user's own login) would win over the
    // metadata endpoint in google-auth: exec hides it from the child.
    let gcloud = vh.user_home.join(".config/gcloud");
    std::fs::create_dir_all(&gcloud).unwrap();
    let adc = serde_json::json!({"type": "authorized_user", "client_id": "c",
        "client_secret": "s", "refresh_token": secret("own-login")})
    .to_string();
    std::fs::write(gcloud.join("application_default_credentials.json"), &adc).unwrap();
    let other = vault_e2e::TempUser::create("gcp metadata, a second uid");
    let uid_arg = match (&other, which("curl"), which("setpriv")) {
        (Some(u), Some(_), Some(_)) => format!("{}:{}", u.uid, u.gid),
        (Some(_), _, _) => {
            eprintln!("SKIP gcp metadata, a second uid: needs curl and setpriv");
            "none".into()
        }
        (None, _, _) => "none".into(),
    };
    let exec_dir = vh.paths().exec_dir();
    let run = vh.vault([
        "exec",
        "--server",
        "-c",
        "sa",
        "--",
        python.to_str().unwrap(),
        "-c",
        METADATA_CHILD,
        exec_dir.to_str().unwrap(),
        &uid_arg,
    ]);
    run.ok();
    let got: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(got["gac"], serde_json::Value::Null, "{got}");
    let sdk_config = got["sdk_config"].as_str().unwrap();
    assert!(sdk_config.starts_with(exec_dir.to_str().unwrap()), "{got}");
    assert!(
        run.stderr
            .contains("application_default_credentials.json would win")
    );
    assert_eq!(
        std::fs::read_to_string(gcloud.join("application_default_credentials.json")).unwrap(),
        adc
    );
    assert!(got["host"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(got["host"], got["ip"]);
    assert_eq!(got["valid"], true, "{got}");
    assert_eq!(got["email"], email);
    assert_eq!(got["project"], "vault-test");
    assert_eq!(
        got["files"],
        serde_json::json!([]),
        "no key file is written"
    );
    let token = got["token"].as_str().unwrap();
    assert!(token.starts_with("ya29.") && token.contains(MARK), "{got}");

    // The token is the daemon's: the same one comes from its cache.
    let cached = vh.vault(["gcp", "token", "sa"]);
    assert_eq!(cached.ok().stdout.trim(), token);

    let status = |k: &str| got[k][0].as_i64().unwrap();
    assert_eq!(status("no_flavor"), 403, "{}", got["no_flavor"]);
    assert!(
        got["no_flavor"][2]
            .as_str()
            .unwrap()
            .contains("Metadata-Flavor")
    );
    assert_eq!(status("proxied"), 403, "{}", got["proxied"]);
    assert_eq!(status("rebound"), 403, "{}", got["rebound"]);
    assert!(got["rebound"][2].as_str().unwrap().contains("127.0.0.1:"));
    assert_eq!(status("identity"), 404);
    for k in ["no_flavor", "proxied", "scoped"] {
        assert_eq!(got[k][1], "Google", "{k} answers with the header");
    }
    assert_eq!(status("scoped"), 200, "{}", got["scoped"]);
    let scoped: serde_json::Value =
        serde_json::from_str(got["scoped"][2].as_str().unwrap()).unwrap();
    assert_eq!(scoped["token_type"], "Bearer");
    let left = scoped["expires_in"].as_i64().unwrap();
    assert!((3000..=3599).contains(&left), "{scoped}");
    assert_ne!(
        scoped["access_token"], token,
        "another scope, another token"
    );
    assert_eq!(
        state.lock().unwrap().issued,
        [
            "https://www.googleapis.com/auth/cloud-platform",
            "https://www.googleapis.com/auth/devstorage.read_only",
            "https://www.googleapis.com/auth/devstorage.read_only \
             https://www.googleapis.com/auth/pubsub"
        ]
    );
    assert!(got["two_scopes"].as_str().unwrap().starts_with("ya29."));
    match &got["mapped"] {
        serde_json::Value::String(why) => eprintln!("SKIP gcp metadata, IPv6 client: {why}"),
        status => assert_eq!(
            status, 200,
            "a dual-stack client socket of ours is answered"
        ),
    }
    if let Some(user) = &other
        && uid_arg != "none"
    {
        let answer = got["other_uid"].as_str().unwrap();
        assert!(answer.ends_with(" 403"), "uid {} got: {answer}", user.uid);
        assert!(
            answer.contains(&format!("not uid {}", user.uid)),
            "{answer}"
        );
        assert!(!answer.contains("ya29."));
        assert_eq!(
            got["while_held"], 200,
            "another uid's idle connections block us"
        );
        assert_eq!(got["after_held"], 200);
    }
    run.never_prints(&private_key[40..80]);
}

/// A person's own login as the source (issue 22): gcloud's
/// `authorized_user` ADC file kept in the vault mints by its refresh
/// token (the default scope left to the grant, a narrower one asked by
/// name), is checked, acts as a service account and serves a `--server`
/// child; once signed out at Google the error says to sign in again.
/// google-auth's own user credentials are accepted by the same endpoint.
#[test]
fn a_user_login_mints_by_its_refresh_token_and_says_when_it_is_signed_out() {
    if which("ssh-keygen").is_none() {
        eprintln!("SKIP gcp user login: needs ssh-keygen (apt install openssh-client)");
        return;
    }
    let vh = VaultHome::new();
    let (_key, state, url, _server) =
        key_and_endpoint(vh.root(), "unused@vault-test.iam.gserviceaccount.com");
    let client_id = "764086051850-vault.apps.googleusercontent.com";
    let client_secret = secret("client-secret");
    let refresh = format!("1//{}", secret("refresh"));
    state.lock().unwrap().login =
        Some((client_id.to_owned(), client_secret.clone(), refresh.clone()));
    let base = url.trim_end_matches("/token");
    vh.write_config(&format!(
        "[gcp]\ntoken_uris = [\"{url}\"]\niam_endpoint = \"{base}\"\n"
    ));
    vh.init().ok();
    let login = serde_json::json!({
        "type": "authorized_user",
        "client_id": client_id,
        "client_secret": client_secret,
        "refresh_token": refresh,
        "token_uri": url,
        "quota_project_id": "vault-test",
    })
    .to_string();
    vh.vault_in(["add", "me", "--type", "gcp", "json=-"], login.as_bytes())
        .ok();

    let first = vh.vault(["gcp", "token", "me"]);
    let token = first.ok().stdout.trim().to_owned();
    assert!(
        token.starts_with("ya29.") && token.contains(MARK),
        "{first}"
    );
    let again = vh.vault(["gcp", "token", "me"]);
    assert_eq!(again.ok().stdout.trim(), token, "cached");
    let read_only = "https://www.googleapis.com/auth/devstorage.read_only";
    vh.vault(["gcp", "token", "me", "--scope", read_only]).ok();
    assert_eq!(state.lock().unwrap().issued, ["(as granted)", read_only]);
    let checked = vh.vault(["--json", "check", "me"]).ok().json();
    assert_eq!(checked[0]["outcome"], "ok", "{checked}");
    assert!(
        checked[0]["detail"]
            .as_str()
            .unwrap()
            .contains("user login of client"),
        "{checked}"
    );

    let python = vault_e2e::test_python("gcp user login, google-auth");
    if let Some(python) = &python {
        // google-auth's user credentials against the same endpoint: what
        // it sends is what the double takes. (Its from_authorized_user_info
        // always sends to Google's endpoint, so the credentials are built
        // as it builds them, with the double's URL.)
        let script = r#"
import json, sys
import google.auth.transport.requests
from google.oauth2 import credentials
i = json.loads(sys.argv[1])
c = credentials.Credentials(token=None, refresh_token=i["refresh_token"], token_uri=i["token_uri"],
                            client_id=i["client_id"], client_secret=i["client_secret"])
c.refresh(google.auth.transport.requests.Request())
print(json.dumps({"valid": c.valid}))
"#;
        let mut cmd = Command::new(python);
        cmd.args(["-c", script, &login]);
        let run = run_command(cmd, None, Duration::from_secs(60));
        run.ok();
        assert!(run.stdout.contains("\"valid\": true"), "{run}");
    }

    // Without `impersonate` a login has no account to serve: --server
    // alone refuses, beside a served aws credential it goes as a file.
    vh.vault(["exec", "--server", "-c", "me", "--", "true"])
        .code(2)
        .stderr_has("set 'impersonate'");
    vh.add_aws("aws-beside", "AKIABESIDE", &secret("beside"), &[]);
    let both = vh.vault([
        "exec",
        "--server",
        "-c",
        "aws-beside",
        "-c",
        "me",
        "--",
        "sh",
        "-c",
        "test -f \"$GOOGLE_APPLICATION_CREDENTIALS\" && echo \"file $AWS_CONTAINER_CREDENTIALS_FULL_URI\"",
    ]);
    both.ok().stderr_has("is given as a file instead");
    assert!(both.stdout.starts_with("file http://127.0.0.1:"), "{both}");

    // The login acts as a service account, and serves it to a child.
    let deploy = "deploy@vault-test.iam.gserviceaccount.com";
    state.lock().unwrap().may_act_as.push(deploy.into());
    vh.vault(["set", "me", &format!("impersonate={deploy}")])
        .ok();
    let acting = vh.vault(["gcp", "token", "me"]);
    assert!(acting.ok().stdout.contains(MARK));
    assert_eq!(state.lock().unwrap().impersonated.last().unwrap().0, deploy);
    if let Some(python) = &python {
        let script = r#"
import json, google.auth, google.auth.transport.requests
c, project = google.auth.default()
c.refresh(google.auth.transport.requests.Request())
print(json.dumps({"email": c.service_account_email, "project": project, "valid": c.valid}))
"#;
        let run = vh.vault([
            "exec",
            "--server",
            "-c",
            "me",
            "--",
            python.to_str().unwrap(),
            "-c",
            script,
        ]);
        let got: serde_json::Value = serde_json::from_str(run.ok().stdout.trim()).unwrap();
        assert_eq!(got["email"], deploy, "{got}");
        assert_eq!(got["project"], "vault-test");
        assert_eq!(got["valid"], true);
    }

    // Signed out at Google: no token, and the way back.
    state.lock().unwrap().revoked = true;
    vh.vault(["lock"]).ok();
    vh.unlock().ok();
    let out = vh.vault(["gcp", "token", "me"]);
    out.code(1)
        .stderr_has("sign in again")
        .never_prints(&refresh)
        .never_prints(&client_secret);
}

/// What google-auth runs for the `external_account` file (argv[1]):
/// `default()` finds it, runs the vault for a subject token, exchanges it
/// at the file's STS and impersonates the file's account.
const EXTERNAL_CHILD: &str = r#"
import json, sys
import google.auth, google.auth.transport.requests
creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
try:
    creds.refresh(google.auth.transport.requests.Request())
    print(json.dumps({"kind": type(creds).__module__, "token": creds.token,
                      "email": creds.service_account_email}))
except Exception as e:
    print(json.dumps({"kind": type(creds).__module__, "error": str(e)}))
"#;

/// The vault as a workload identity issuer (issue 22): `vault gcp issuer`
/// keeps a P-256 key, `vault gcp jwks` gives its public half to the
/// provider, `vault emit gcloud --external-account` writes an
/// `external_account` file with no key in it, and google-auth, reading that
/// file, runs the vault for a signed subject token, exchanges it at the STS
/// double (which verifies the signature against the uploaded JWKS) and
/// impersonates the account. Another issuer's key is refused, an endpoint
/// not allowed on this machine is not written, a key file is no issuer.
#[test]
fn google_auth_gets_tokens_through_an_external_account_file_with_no_key() {
    let Some(python) = vault_e2e::test_python("gcp external_account") else {
        return;
    };
    let vh = VaultHome::new();
    let state = Arc::new(Mutex::new(State::default()));
    let (url, _server) = token_endpoint(Arc::clone(&state));
    let base = url.trim_end_matches("/token").to_owned();
    let sts = format!("{base}/v1/token");
    vh.write_config(&format!(
        "[gcp]\ntoken_uris = [\"{sts}\"]\niam_endpoint = \"{base}\"\n"
    ));
    vh.init().ok();
    let audience = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/dev/providers/vault";
    let issuer = "https://vault.example/issuer/e2e";
    let deploy = "deploy@vault-test.iam.gserviceaccount.com";
    state.lock().unwrap().may_act_as.push(deploy.into());
    let make = |name: &str, token_url: &str| {
        vh.vault([
            "gcp",
            "issuer",
            name,
            "--audience",
            audience,
            "--issuer",
            issuer,
            "--impersonate",
            deploy,
            "--token-url",
            token_url,
            "--iam-endpoint",
            &base,
        ])
    };
    make("wif", &sts).ok().stderr_has("vault gcp jwks wif");
    let jwks: serde_json::Value =
        serde_json::from_str(vh.vault(["gcp", "jwks", "wif"]).ok().stdout.trim()).unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "EC");
    assert!(
        jwks["keys"][0].get("d").is_none(),
        "no private part: {jwks}"
    );
    state.lock().unwrap().provider = Some((audience.into(), issuer.into(), jwks));
    let private = vh.field("wif", "issuer_key");

    let file = vh.user_home.join("wif.json");
    vh.vault(["emit", "gcloud", "wif", "--path", file.to_str().unwrap()])
        .code(2)
        .stderr_has("add --external-account");
    let emit = vh.vault([
        "emit",
        "gcloud",
        "wif",
        "--external-account",
        "--path",
        file.to_str().unwrap(),
    ]);
    emit.ok();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        !text.contains(&private[10..40]),
        "the key is not in the file"
    );
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["type"], "external_account");
    assert_eq!(doc["token_url"], sts.as_str());
    let command = doc["credential_source"]["executable"]["command"]
        .as_str()
        .unwrap();
    assert!(command.ends_with(" gcp subject-token wif"), "{command}");
    let listed = vh.vault(["emit", "list"]);
    assert!(listed.ok().stdout.contains("ok"), "{listed}");

    let run_child = |path: &Path| {
        let mut cmd = vh.command(&python, ["-c", EXTERNAL_CHILD]);
        cmd.env("GOOGLE_APPLICATION_CREDENTIALS", path)
            .env("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1")
            // Else default() asks Cloud Resource Manager for the project.
            .env("GOOGLE_CLOUD_PROJECT", "vault-test");
        let run = run_command(cmd, None, Duration::from_secs(60));
        run.ok();
        serde_json::from_str::<serde_json::Value>(run.stdout.trim()).unwrap()
    };
    let got = run_child(&file);
    assert_eq!(got["kind"], "google.auth.pluggable", "{got}");
    assert!(got["token"].as_str().unwrap().contains(MARK), "{got}");
    assert_eq!(got["email"], deploy);
    {
        let st = state.lock().unwrap();
        assert_eq!(st.exchanged, ["wif"], "{:?}", st.refusals);
        assert_eq!(st.impersonated.last().unwrap().0, deploy);
    }

    // gcloud reads the same file (`auth login --cred-file`) and gets its
    // token through the vault and the same STS double.
    if which("gcloud").is_some() {
        let config = vh.root().join("gcloud-config");
        let gcloud = |args: &[&str]| {
            let mut cmd = vh.command(Path::new("gcloud"), args);
            cmd.env("CLOUDSDK_CONFIG", &config)
                .env("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1")
                .env("CLOUDSDK_CORE_DISABLE_PROMPTS", "1");
            let run = run_command(cmd, None, Duration::from_secs(120));
            run.ok();
            run.stdout.clone()
        };
        gcloud(&["auth", "login", "--cred-file", file.to_str().unwrap()]);
        let printed = gcloud(&["auth", "print-access-token"]);
        assert!(
            printed.trim().starts_with("ya29.") && printed.contains(MARK),
            "{printed}"
        );
        assert_eq!(state.lock().unwrap().exchanged.len(), 2);
    } else {
        let why =
            "SKIP gcp external_account with gcloud: needs gcloud (apt install google-cloud-cli)";
        assert!(
            std::env::var_os("VAULT_TEST_REQUIRE_GCLOUD").is_none(),
            "{why}"
        );
        eprintln!("{why}");
    }

    // The daemon mints from the issuer itself, by the same exchange: a
    // token, a check, and a --server child; a plain exec has no file to give.
    let (exchanged, impersonated) = {
        let st = state.lock().unwrap();
        (st.exchanged.len(), st.impersonated.len())
    };
    let minted = vh.vault(["gcp", "token", "wif"]);
    assert!(minted.ok().stdout.contains(MARK));
    vh.vault(["check", "wif"]).ok();
    {
        let st = state.lock().unwrap();
        assert_eq!(st.exchanged.len(), exchanged + 2, "{:?}", st.refusals);
        assert!(st.exchanged.iter().all(|sub| sub == "wif"));
        assert_eq!(st.impersonated.len(), impersonated + 2);
    }
    let served = vh.vault([
        "exec",
        "--server",
        "-c",
        "wif",
        "--",
        python.to_str().unwrap(),
        "-c",
        "import google.auth, google.auth.transport.requests as r\n\
         c, _ = google.auth.default()\nc.refresh(r.Request())\n\
         print(c.service_account_email, c.token[:5])",
    ]);
    assert_eq!(served.ok().stdout.trim(), format!("{deploy} ya29."));
    vh.vault(["exec", "-c", "wif", "--", "true"])
        .code(2)
        .stderr_has("--server -c wif");

    // Another issuer's key (its JWKS never uploaded) is refused at STS.
    make("wif-other", &sts).ok();
    let other = vh.user_home.join("other.json");
    vh.vault([
        "emit",
        "gcloud",
        "wif-other",
        "--external-account",
        "--path",
        other.to_str().unwrap(),
    ])
    .ok();
    let refused = run_child(&other);
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("not in the provider's JWKS"),
        "{refused}"
    );
    vh.vault(["gcp", "token", "wif-other"])
        .code(1)
        .stderr_has("not in the provider's JWKS")
        .stderr_has("upload 'vault gcp jwks wif-other'");

    // An exchange endpoint this machine did not list is not written.
    make("wif-elsewhere", "https://sts.example.net/v1/token").ok();
    let elsewhere = vh.user_home.join("elsewhere.json");
    vh.vault([
        "emit",
        "gcloud",
        "wif-elsewhere",
        "--external-account",
        "--path",
        elsewhere.to_str().unwrap(),
    ])
    .code(2)
    .stderr_has("not Google's STS");
    assert!(!elsewhere.exists());

    // A subject token is only an issuer's; the token printed is the format
    // executables answer in, and never lands in an error.
    let (private_key, _) = rsa_key(vh.root(), "k");
    let json = key_json(&private_key, "sa@vault-test.iam.gserviceaccount.com", &url);
    vh.vault_in(["add", "sa", "--type", "gcp", "json=-"], json.as_bytes())
        .ok();
    vh.vault(["gcp", "subject-token", "sa"])
        .code(2)
        .stderr_has("not an issuer credential");
    let answer = vh.vault(["gcp", "subject-token", "wif"]);
    let answer: serde_json::Value = serde_json::from_str(answer.ok().stdout.trim()).unwrap();
    assert_eq!(answer["version"], 1);
    assert_eq!(answer["success"], true);
    assert_eq!(answer["token_type"], "urn:ietf:params:oauth:token-type:jwt");
    let left = answer["expiration_time"].as_i64().unwrap() - now();
    assert!((500..=600).contains(&left), "{answer}");
    emit.never_prints(&private[10..40]);
}
