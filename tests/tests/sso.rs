//! AWS IAM Identity Center (SSO) through the real binaries (issue 21,
//! docs/sso.md): `vault sso login` registers a client, starts a device
//! authorization and waits for the approval at a double of SSO OIDC and the
//! portal API (moto has neither); the role credentials the portal hands out
//! are a real session of moto (authentication on), so botocore's
//! `GetCallerIdentity` with what `vault aws-process` prints is checked by
//! moto. A refused token is renewed with the refresh token, without a
//! browser; a revoked session, a denied or expired sign-in and a role the
//! session may not use each end with a clear message and exit code.
//!
//! The double is pinned to botocore's own `sso-oidc` and `sso` clients
//! (their service models parse every answer it gives, errors included).
//!
//! Needs `VAULT_TEST_PYTHON` with botocore and `moto[server]` (`.ci/run`
//! installs both and sets `VAULT_TEST_REQUIRE_MOTO=1`).

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vault_e2e::VaultHome;
use vault_e2e::moto::{Moto, SETUP, assert_assumed_role, moto_python, python_json};

const START_URL: &str = "https://d-test.awsapps.com/start";
const ACCOUNT: &str = "123456789012";
const OTHER: &str = "210987654321";

/// How the next device authorization ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ending {
    /// Approved after two polls.
    Approve,
    Deny,
    Expire,
    /// Never approved.
    Pending,
}

#[derive(Debug)]
struct State {
    ending: Ending,
    /// The role session the portal hands out (moto's).
    role: serde_json::Value,
    /// How long each role session lasts, seconds.
    role_life: i64,
    clients: Vec<(String, String)>,
    /// Device codes and how often each was polled.
    devices: Vec<(String, u32)>,
    access: Vec<String>,
    refresh: Vec<String>,
    refreshes: u32,
    portal_calls: u32,
    /// Each (account, role) GetRoleCredentials was asked for.
    requested: Vec<(String, String)>,
    /// `expiresIn` of the access tokens issued.
    token_life: i64,
    /// The role the session may use.
    role_name: String,
    /// Whether the first poll of a device code is told to slow down.
    slow_down: bool,
    /// When each device code poll came.
    polls: Vec<std::time::Instant>,
    /// How long a renewal (refresh grant) takes to answer.
    refresh_delay: Duration,
}

impl State {
    fn new(role: serde_json::Value, role_life: i64) -> Self {
        State {
            ending: Ending::Approve,
            role,
            role_life,
            clients: Vec::new(),
            devices: Vec::new(),
            access: Vec::new(),
            refresh: Vec::new(),
            refreshes: 0,
            portal_calls: 0,
            requested: Vec::new(),
            token_life: 28800,
            role_name: "deploy".into(),
            slow_down: false,
            polls: Vec::new(),
            refresh_delay: Duration::ZERO,
        }
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An error as AWS's restJson1 services send one: the type in
/// `x-amzn-ErrorType`, OIDC's `error` in the body.
fn refused(status: u16, kind: &str, body: serde_json::Value) -> (u16, Option<String>, String) {
    (status, Some(kind.to_owned()), body.to_string())
}

fn oidc_error(kind: &str, error: &str) -> (u16, Option<String>, String) {
    refused(
        400,
        kind,
        serde_json::json!({"error": error, "error_description": null}),
    )
}

/// The (account, role) pairs the session may use.
fn allowed(st: &State) -> Vec<(String, String)> {
    vec![
        (ACCOUNT.to_owned(), st.role_name.clone()),
        (OTHER.to_owned(), "ReadOnly".to_owned()),
    ]
}

fn answer(
    st: &mut State,
    method: &str,
    url: &str,
    bearer: &str,
    body: &str,
) -> (u16, Option<String>, String) {
    let doc: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let s = |k: &str| doc[k].as_str().unwrap_or_default().to_owned();
    let known_client = |st: &State| st.clients.contains(&(s("clientId"), s("clientSecret")));
    match (method, url.split('?').next().unwrap()) {
        ("POST", "/client/register") => {
            if s("clientType") != "public"
                || !doc["scopes"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|v| v == "sso:account:access"))
            {
                return oidc_error("InvalidClientMetadataException", "invalid_client_metadata");
            }
            let client = (
                format!("client-{}", st.clients.len()),
                format!("csecret-{}", st.clients.len()),
            );
            st.clients.push(client.clone());
            (
                200,
                None,
                serde_json::json!({
                    "clientId": client.0, "clientSecret": client.1,
                    "clientIdIssuedAt": now(), "clientSecretExpiresAt": now() + 90 * 86400,
                })
                .to_string(),
            )
        }
        ("POST", "/device_authorization") => {
            if !known_client(st) {
                return oidc_error("InvalidClientException", "invalid_client");
            }
            if s("startUrl") != START_URL {
                return oidc_error("InvalidRequestException", "invalid_request");
            }
            let code = format!("device-{}", st.devices.len());
            st.devices.push((code.clone(), 0));
            (200, None, serde_json::json!({
                "deviceCode": code, "userCode": "ABCD-EFGH",
                "verificationUri": "https://device.sso.us-east-1.amazonaws.com/",
                "verificationUriComplete": "https://device.sso.us-east-1.amazonaws.com/?user_code=ABCD-EFGH",
                "expiresIn": 600, "interval": 1,
            }).to_string())
        }
        ("POST", "/token") => {
            if !known_client(st) {
                return oidc_error("InvalidClientException", "invalid_client");
            }
            match s("grantType").as_str() {
                "urn:ietf:params:oauth:grant-type:device_code" => {
                    let (ending, slow_down) = (st.ending, st.slow_down);
                    st.polls.push(std::time::Instant::now());
                    let Some(dev) = st.devices.iter_mut().find(|d| d.0 == s("deviceCode")) else {
                        return oidc_error("InvalidGrantException", "invalid_grant");
                    };
                    dev.1 += 1;
                    if slow_down && dev.1 == 1 {
                        return oidc_error("SlowDownException", "slow_down");
                    }
                    match ending {
                        Ending::Deny => {
                            return oidc_error("AccessDeniedException", "access_denied");
                        }
                        Ending::Expire => {
                            return oidc_error("ExpiredTokenException", "expired_token");
                        }
                        Ending::Approve | Ending::Pending
                            if ending == Ending::Pending || dev.1 < 2 =>
                        {
                            return oidc_error(
                                "AuthorizationPendingException",
                                "authorization_pending",
                            );
                        }
                        Ending::Approve | Ending::Pending => {}
                    }
                }
                "refresh_token" => {
                    // Each refresh token is good once: the one issued with
                    // the new access token must be the one kept.
                    let used = s("refreshToken");
                    if !st.refresh.contains(&used) {
                        return oidc_error("InvalidGrantException", "invalid_grant");
                    }
                    st.refresh.retain(|r| *r != used);
                    st.refreshes += 1;
                }
                _ => return oidc_error("UnsupportedGrantTypeException", "unsupported_grant_type"),
            }
            let n = st.refreshes as usize + st.devices.len();
            let (a, r) = (format!("access-{n}"), format!("refresh-{n}"));
            st.access.push(a.clone());
            st.refresh.push(r.clone());
            (
                200,
                None,
                serde_json::json!({
                    "accessToken": a, "tokenType": "Bearer", "expiresIn": st.token_life, "refreshToken": r,
                })
                .to_string(),
            )
        }
        ("GET", "/assignment/accounts") => {
            if !st.access.iter().any(|a| a == bearer) {
                return refused(
                    401,
                    "UnauthorizedException",
                    serde_json::json!({"message": "Session token not found or invalid"}),
                );
            }
            // Two pages, as the portal pages them.
            let (list, next) = if url.contains("next_token=page-2") {
                (
                    serde_json::json!([{"accountId": OTHER, "accountName": "prod", "emailAddress": "prod@example.com"}]),
                    None,
                )
            } else {
                (
                    serde_json::json!([{"accountId": ACCOUNT, "accountName": "sandbox", "emailAddress": "sb@example.com"}]),
                    Some("page-2"),
                )
            };
            (
                200,
                None,
                serde_json::json!({"accountList": list, "nextToken": next}).to_string(),
            )
        }
        ("GET", "/assignment/roles") => {
            if !st.access.iter().any(|a| a == bearer) {
                return refused(
                    401,
                    "UnauthorizedException",
                    serde_json::json!({"message": "Session token not found or invalid"}),
                );
            }
            let roles: Vec<serde_json::Value> = allowed(st)
                .into_iter()
                .filter(|(a, _)| url.contains(&format!("account_id={a}")))
                .map(|(a, r)| serde_json::json!({"roleName": r, "accountId": a}))
                .collect();
            (
                200,
                None,
                serde_json::json!({"roleList": roles, "nextToken": null}).to_string(),
            )
        }
        ("GET", "/federation/credentials") => {
            st.portal_calls += 1;
            if !st.access.iter().any(|a| a == bearer) {
                return refused(
                    401,
                    "UnauthorizedException",
                    serde_json::json!({"message": "Session token not found or invalid"}),
                );
            }
            let query = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
            let asked = |k: &str, v: &str| query.split('&').any(|kv| kv == format!("{k}={v}"));
            let pair = allowed(st)
                .into_iter()
                .find(|(a, r)| asked("account_id", a) && asked("role_name", r));
            if let Some(p) = pair {
                st.requested.push(p);
            }
            if !allowed(st)
                .iter()
                .any(|(a, r)| asked("account_id", a) && asked("role_name", r))
            {
                return refused(
                    403,
                    "ForbiddenException",
                    serde_json::json!({"message": "No access"}),
                );
            }
            let r = &st.role;
            (
                200,
                None,
                serde_json::json!({"roleCredentials": {
                    "accessKeyId": r["AccessKeyId"], "secretAccessKey": r["SecretAccessKey"],
                    "sessionToken": r["SessionToken"], "expiration": (now() + st.role_life) * 1000,
                }})
                .to_string(),
            )
        }
        _ => (404, None, "{}".into()),
    }
}

/// The double on loopback; stops with the process.
fn double(state: Arc<Mutex<State>>) -> String {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}", server.server_addr().to_ip().unwrap());
    std::thread::spawn(move || {
        for mut req in server.incoming_requests() {
            // Each request on its own thread, as a real service answers
            // concurrent callers.
            let state = Arc::clone(&state);
            std::thread::spawn(move || {
                let mut body = String::new();
                let _ = req.as_reader().read_to_string(&mut body);
                let bearer = req
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("x-amz-sso_bearer_token"))
                    .map(|h| h.value.to_string())
                    .unwrap_or_default();
                if req.url() == "/token" && body.contains("\"refresh_token\"") {
                    let delay = state.lock().unwrap().refresh_delay;
                    std::thread::sleep(delay);
                }
                let (code, kind, text) = answer(
                    &mut state.lock().unwrap(),
                    req.method().as_str(),
                    req.url(),
                    &bearer,
                    &body,
                );
                let mut resp = tiny_http::Response::from_string(text)
                    .with_status_code(code)
                    .with_header(
                        tiny_http::Header::from_bytes("Content-Type", "application/json").unwrap(),
                    );
                if let Some(k) = kind {
                    resp.add_header(tiny_http::Header::from_bytes("x-amzn-ErrorType", k).unwrap());
                }
                let _ = req.respond(resp);
            });
        }
    });
    url
}

/// A session of moto's role `deploy`, assumed by user `dev` (SETUP).
const ASSUME: &str = r#"
import json, sys
import botocore.session
sts = botocore.session.get_session().create_client(
    "sts", endpoint_url=sys.argv[1], region_name="us-east-1",
    aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.stdin.readline().strip())
c = sts.assume_role(RoleArn=sys.argv[3], RoleSessionName="sso-dev")["Credentials"]
print(json.dumps({"AccessKeyId": c["AccessKeyId"], "SecretAccessKey": c["SecretAccessKey"],
                  "SessionToken": c["SessionToken"]}))
"#;

/// botocore's own SSO clients against the double: every answer parses by
/// their service models, errors by their codes.
const CONTRACT: &str = r#"
import json, sys
import botocore.session
from botocore.exceptions import ClientError
s = botocore.session.get_session()
kw = dict(endpoint_url=sys.argv[1], region_name="us-east-1")
oidc = s.create_client("sso-oidc", **kw)
c = oidc.register_client(clientName="contract", clientType="public", scopes=["sso:account:access"])
d = oidc.start_device_authorization(clientId=c["clientId"], clientSecret=c["clientSecret"], startUrl=sys.argv[2])
grant = dict(clientId=c["clientId"], clientSecret=c["clientSecret"],
             grantType="urn:ietf:params:oauth:grant-type:device_code", deviceCode=d["deviceCode"])
try:
    oidc.create_token(**grant)
    pending = None
except ClientError as e:
    pending = e.response["Error"]["Code"]
t = oidc.create_token(**grant)
r = oidc.create_token(clientId=c["clientId"], clientSecret=c["clientSecret"],
                      grantType="refresh_token", refreshToken=t["refreshToken"])
sso = s.create_client("sso", **kw)
creds = sso.get_role_credentials(roleName="deploy", accountId=sys.argv[3], accessToken=r["accessToken"])["roleCredentials"]
try:
    sso.get_role_credentials(roleName="deploy", accountId=sys.argv[3], accessToken="nope")
    unauthorized = None
except ClientError as e:
    unauthorized = e.response["Error"]["Code"]
accounts = sso.list_accounts(accessToken=r["accessToken"])
more = sso.list_accounts(accessToken=r["accessToken"], nextToken=accounts["nextToken"])
roles = sso.list_account_roles(accessToken=r["accessToken"], accountId=more["accountList"][0]["accountId"])
print(json.dumps({"pending": pending, "accounts": [a["accountName"] for a in accounts["accountList"] + more["accountList"]],
                  "roles": [x["roleName"] for x in roles["roleList"]], "user_code": d["userCode"], "interval": d["interval"],
                  "expires_in": t["expiresIn"], "key": creds["accessKeyId"],
                  "expiration": creds["expiration"], "unauthorized": unauthorized}))
"#;

/// Whether RFC 3339 time `t` (UTC, `Z`) has passed.
fn past(t: &str) -> bool {
    let secs = std::process::Command::new("date")
        .args(["-u", "-d", t, "+%s"])
        .output()
        .unwrap();
    let at: i64 = String::from_utf8_lossy(&secs.stdout)
        .trim()
        .parse()
        .unwrap();
    now() > at
}

fn python_stdin(
    vh: &VaultHome,
    python: &std::path::Path,
    script: &str,
    args: &[&str],
    input: &str,
) -> serde_json::Value {
    let mut all = vec!["-c", script];
    all.extend_from_slice(args);
    let run = vault_e2e::run_command(
        vh.command(python, all),
        Some(input.as_bytes()),
        Duration::from_secs(120),
    );
    run.ok();
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {run}"))
}

/// Moto (authentication on) and a session of its role `deploy`: what the
/// double's portal hands out.
fn moto_role(vh: &VaultHome, python: &std::path::Path) -> (Moto, serde_json::Value) {
    let moto = Moto::start(python, vh.root());
    let setup = python_json(vh, python, SETUP, &[&moto.url]);
    let role = python_stdin(
        vh,
        python,
        ASSUME,
        &[
            &moto.url,
            setup["id"].as_str().unwrap(),
            setup["role"].as_str().unwrap(),
        ],
        &format!("{}\n", setup["secret"].as_str().unwrap()),
    );
    (moto, role)
}

#[test]
fn sso_login_mints_role_credentials_moto_accepts_and_renews_without_a_browser() {
    let Some(python) = moto_python("sso") else {
        return;
    };
    let scratch = VaultHome::new();
    let (moto, role) = moto_role(&scratch, &python);
    // Short sessions: minted again a few seconds after each mint.
    let state = Arc::new(Mutex::new(State::new(role.clone(), 5)));
    let url = double(Arc::clone(&state));
    let vh = vault_at(&url);

    // The double answers as botocore's models expect.
    let contract = python_json(&vh, &python, CONTRACT, &[&url, START_URL, ACCOUNT]);
    assert_eq!(
        contract["pending"], "AuthorizationPendingException",
        "{contract}"
    );
    assert_eq!(
        contract["unauthorized"], "UnauthorizedException",
        "{contract}"
    );
    assert_eq!(contract["key"], role["AccessKeyId"], "{contract}");
    assert_eq!(
        contract["accounts"],
        serde_json::json!(["sandbox", "prod"]),
        "{contract}"
    );
    assert_eq!(
        contract["roles"],
        serde_json::json!(["ReadOnly"]),
        "{contract}"
    );
    assert!(
        contract["expiration"].as_i64().unwrap() > now() * 1000,
        "{contract}"
    );

    let add = |name: &str, start: &str, role: &str| {
        vh.vault([
            "add",
            name,
            "--type",
            "aws",
            &format!("sso_start_url={start}"),
            "sso_region=us-east-1",
            &format!("sso_account_id={ACCOUNT}"),
            &format!("sso_role_name={role}"),
        ])
    };
    add("sso-dev", START_URL, "deploy").ok();
    add("bad", "http://d-test.awsapps.com/start", "deploy")
        .code(2)
        .stderr_has("https://");

    // Before the sign-in: what to run, at once.
    vh.vault(["aws-process", "sso-dev"])
        .code(1)
        .stderr_has("vault sso login sso-dev");

    // The sign-in: the page and code, no browser, the approval polled.
    let run = vh.vault(["sso", "login", "sso-dev", "--no-browser"]);
    run.ok()
        .stderr_has("ABCD-EFGH")
        .stderr_has("https://device.sso.us-east-1.amazonaws.com/?user_code=ABCD-EFGH")
        .stderr_has("Signed in");
    {
        let st = state.lock().unwrap();
        assert_eq!(st.devices.last().unwrap().1, 2, "polled until approved");
        assert_eq!(st.refreshes, 1, "only the contract check renewed so far");
    }
    // The session is in the record (secret fields), not in the listing.
    let (access, refresh) = {
        let st = state.lock().unwrap();
        (
            st.access.last().unwrap().clone(),
            st.refresh.last().unwrap().clone(),
        )
    };
    let shown = vh.vault(["list", "--json"]).ok().stdout.clone();
    assert!(
        !shown.contains(&access) && !shown.contains(&refresh),
        "{shown}"
    );
    let record = vh
        .vault(["get", "sso-dev", "--field", "sso_refresh_token"])
        .ok()
        .stdout
        .clone();
    assert_eq!(record.trim(), refresh);

    // What aws-process prints is moto's session, and moto takes it.
    let printed = vh.vault(["aws-process", "sso-dev"]);
    printed.ok();
    let doc = printed.json();
    assert_eq!(doc["AccessKeyId"], role["AccessKeyId"], "{doc}");
    assert_assumed_role(&vh, &python, &moto, &printed.stdout, "deploy");

    // The portal stops taking the access token (signed out elsewhere):
    // the daemon renews it with the refresh token, with no browser.
    state.lock().unwrap().access.clear();
    let before = state.lock().unwrap().refreshes;
    // Once the 5 s role session is over, the next use mints again.
    let over = doc["Expiration"].as_str().unwrap().to_owned();
    while !past(&over) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let again = vh.vault(["aws-process", "sso-dev"]);
    again.ok();
    assert!(
        state.lock().unwrap().refreshes > before,
        "renewed with the refresh token: {again} {:?}",
        state.lock().unwrap()
    );

    // What the session may use, every page (its access token refused
    // first: renewed and kept); one saved as a credential and signed in.
    state.lock().unwrap().access.clear();
    let listed = vh.vault(["--json", "sso", "roles", "sso-dev"]);
    listed.ok();
    assert_eq!(
        listed.json(),
        serde_json::json!([
            {"account_id": ACCOUNT, "account_name": "sandbox", "role_name": "deploy"},
            {"account_id": OTHER, "account_name": "prod", "role_name": "ReadOnly"},
        ])
    );
    vh.vault(["sso", "roles", "sso-dev"])
        .ok()
        .stdout_has("210987654321  prod     ReadOnly");
    vh.vault([
        "sso",
        "add",
        "prod-ro",
        "--from",
        "sso-dev",
        "--account",
        OTHER,
        "--role",
        "ReadOnly",
    ])
    .ok();
    vh.vault(["aws-process", "prod-ro"])
        .code(1)
        .stderr_has("vault sso login prod-ro");
    // Its session's access tokens last 2 minutes: every mint renews
    // first, each time with the refresh token the last renewal gave.
    state.lock().unwrap().token_life = 120;
    vh.vault(["sso", "login", "prod-ro", "--no-browser"]).ok();
    let before = state.lock().unwrap().refreshes;
    let ro = vh.vault(["aws-process", "prod-ro"]);
    ro.ok();
    assert_eq!(ro.json()["AccessKeyId"], role["AccessKeyId"]);
    let over = ro.json()["Expiration"].as_str().unwrap().to_owned();
    while !past(&over) {
        std::thread::sleep(Duration::from_millis(200));
    }
    vh.vault(["aws-process", "prod-ro"]).ok();
    {
        let st = state.lock().unwrap();
        assert_eq!(
            st.requested.last().unwrap(),
            &(OTHER.to_owned(), "ReadOnly".to_owned())
        );
        assert!(st.refreshes > before, "renewed ahead of expiry: {st:?}");
    }
    state.lock().unwrap().token_life = 28800;

    // The whole session revoked: sign in again, says the daemon.
    {
        let mut st = state.lock().unwrap();
        st.access.clear();
        st.refresh.clear();
    }
    std::thread::sleep(Duration::from_secs(6));
    vh.vault(["aws-process", "sso-dev"])
        .code(7)
        .stderr_has("vault sso login sso-dev");
    let status = vh.vault(["status", "--json"]).ok().json();
    assert!(
        status
            .to_string()
            .contains("has expired: run 'vault sso login sso-dev' to sign in again"),
        "{status}"
    );

    // A denied sign-in, an expired code, a role the session may not use.
    state.lock().unwrap().ending = Ending::Deny;
    vh.vault(["sso", "login", "sso-dev", "--no-browser"])
        .code(1)
        .stderr_has("was denied in the browser");
    state.lock().unwrap().ending = Ending::Expire;
    vh.vault(["sso", "login", "sso-dev", "--no-browser"])
        .code(1)
        .stderr_has("expired before it was approved");
    {
        let mut st = state.lock().unwrap();
        st.ending = Ending::Approve;
        st.role_name = "admin".into();
        st.role_life = 3600;
    }
    vh.vault(["sso", "login", "sso-dev", "--no-browser"])
        .code(1)
        .stderr_has("no role credentials")
        .stderr_has("refused role deploy in account 123456789012 (403 ForbiddenException)");
    // One client per credential, kept for its later sign-ins (it lasts 90
    // days): the contract check's, sso-dev's and prod-ro's.
    assert_eq!(state.lock().unwrap().clients.len(), 3);

    // Not an SSO credential: said so.
    vh.vault(["add", "plain", "--type", "aws", "access_key_id=AKIAEXAMPLE"])
        .code(2);
    assert_no_tokens_logged(&vh);
}

/// No SSO token of the double's in vaultd.log.
fn assert_no_tokens_logged(vh: &VaultHome) {
    let log = std::fs::read_to_string(vh.paths().log()).unwrap();
    for t in ["access-", "refresh-", "csecret-", "device-"] {
        assert!(!log.contains(t), "{t} in vaultd.log");
    }
}

/// `vault add NAME` of an SSO session on the double's portal (and `extra`
/// fields).
fn add_session(vh: &VaultHome, name: &str, extra: &[&str]) -> vault_e2e::Run {
    let mut args = vec![
        "add".to_owned(),
        name.to_owned(),
        "--type".into(),
        "aws".into(),
        format!("sso_start_url={START_URL}"),
        "sso_region=us-east-1".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    vh.vault(args)
}

/// A vault whose `[sso]` endpoints are the double's.
fn vault_at(url: &str) -> VaultHome {
    let vh = VaultHome::new();
    vh.write_config(&format!(
        "[sso]\noidc_endpoint = \"{url}\"\nportal_endpoint = \"{url}\"\n"
    ));
    vh.init().ok();
    vh
}

#[test]
fn one_sso_session_signs_in_once_for_every_role_that_shares_it() {
    let Some(python) = moto_python("sso shared session") else {
        return;
    };
    let scratch = VaultHome::new();
    let (moto, role) = moto_role(&scratch, &python);
    let state = Arc::new(Mutex::new(State::new(role.clone(), 5)));
    let vh = vault_at(&double(Arc::clone(&state)));

    // The session alone (an sso-session): a portal, no role, no keys.
    add_session(&vh, "corp", &[]).ok();
    add_session(&vh, "corp-keys", &["access_key_id=AKIAEXAMPLE"])
        .code(2)
        .stderr_has("holds no keys");

    // Signed in once; IAM Identity Center first asks to poll more slowly,
    // and is then polled at least 5 s apart.
    state.lock().unwrap().slow_down = true;
    vh.vault(["sso", "login", "corp", "--no-browser"])
        .ok()
        .stderr_has("Signed in");
    {
        let mut st = state.lock().unwrap();
        st.slow_down = false;
        assert_eq!(st.polls.len(), 2, "slowed down, then approved: {st:?}");
        let gap = st.polls[1] - st.polls[0];
        assert!(
            gap >= Duration::from_secs(5),
            "polled {gap:?} after slow_down"
        );
    }

    // Two roles saved from it share its sign-in: no second login, no
    // tokens of their own.
    for (name, account, role_name) in [("dev", ACCOUNT, "deploy"), ("ro", OTHER, "ReadOnly")] {
        vh.vault([
            "sso",
            "add",
            name,
            "--from",
            "corp",
            "--account",
            account,
            "--role",
            role_name,
        ])
        .ok()
        .stderr_has("sharing the sign-in of SSO session 'corp'");
    }
    vh.vault(["get", "dev", "--field", "sso_refresh_token"])
        .code(4)
        .stderr_has("has no field");
    let dev = vh.vault(["aws-process", "dev"]);
    dev.ok();
    assert_assumed_role(&vh, &python, &moto, &dev.stdout, "deploy");
    vh.vault(["aws-process", "ro"]).ok();
    assert_eq!(state.lock().unwrap().refreshes, 0);
    // The session is listed through either name.
    vh.vault(["sso", "roles", "ro"])
        .ok()
        .stdout_has("210987654321  prod     ReadOnly");

    // The access token refused, both roles minted again at once: one
    // renewal serves both (the double's refresh tokens are good once, so
    // two renewals with one token would fail the second).
    // A renewal takes a second: the second mint is refused the old token
    // while the first renews, and must wait for it.
    {
        let mut st = state.lock().unwrap();
        st.access.clear();
        st.refresh_delay = Duration::from_secs(1);
    }
    std::thread::sleep(Duration::from_secs(6));
    std::thread::scope(|s| {
        let a = s.spawn(|| vh.vault(["aws-process", "dev"]));
        let b = s.spawn(|| vh.vault(["aws-process", "ro"]));
        a.join().unwrap().ok();
        b.join().unwrap().ok();
    });
    assert_eq!(state.lock().unwrap().refreshes, 1, "one renewal for both");
    state.lock().unwrap().refresh_delay = Duration::ZERO;
    let kept = vh
        .vault(["get", "corp", "--field", "sso_refresh_token"])
        .ok()
        .stdout
        .trim()
        .to_owned();
    assert_eq!(&kept, state.lock().unwrap().refresh.last().unwrap());

    // The session over: each role says which session to sign in again,
    // and signing in through a role's name signs the session in and
    // mints both.
    {
        let mut st = state.lock().unwrap();
        st.access.clear();
        st.refresh.clear();
    }
    std::thread::sleep(Duration::from_secs(6));
    vh.vault(["aws-process", "ro"])
        .code(7)
        .stderr_has("vault sso login corp");
    let calls = state.lock().unwrap().requested.len();
    vh.vault(["sso", "login", "dev", "--no-browser"]).ok();
    assert_eq!(
        state.lock().unwrap().requested.len(),
        calls + 2,
        "the sign-in minted dev and ro"
    );
    vh.vault(["aws-process", "ro"]).ok();

    // A role the new session may not use is said by the sign-in, though
    // the role's keys of the old session are still live.
    state.lock().unwrap().role_name = "admin".into();
    vh.vault(["sso", "login", "corp", "--no-browser"])
        .code(1)
        .stderr_has("no role credentials for 'dev'");
    state.lock().unwrap().role_name = "deploy".into();

    // A name that is not an SSO session.
    vh.vault([
        "add",
        "stray",
        "--type",
        "aws",
        "sso_session=dev",
        &format!("sso_account_id={ACCOUNT}"),
        "sso_role_name=deploy",
    ])
    .ok();
    vh.vault(["aws-process", "stray"])
        .code(1)
        .stderr_has("'dev', is not an SSO session (it has a role of its own)");
    vh.vault(["set", "stray", "sso_session=nowhere"]).ok();
    vh.vault(["aws-process", "stray"])
        .code(1)
        .stderr_has("'nowhere', does not exist");
    // A session holds no keys to hand out, and keeps its name while used.
    vh.vault(["aws-process", "corp"])
        .code(2)
        .stderr_has("is an SSO session");
    vh.vault(["rename", "corp", "corp2"])
        .code(5)
        .stderr_has("is the SSO session of");
    assert_no_tokens_logged(&vh);
}

#[test]
fn tokens_renewed_for_a_mint_that_then_fails_are_kept() {
    let Some(python) = moto_python("sso renewal kept") else {
        return;
    };
    let scratch = VaultHome::new();
    let (_moto, role) = moto_role(&scratch, &python);
    let state = Arc::new(Mutex::new(State::new(role, 5)));
    let vh = vault_at(&double(Arc::clone(&state)));
    vh.vault([
        "add",
        "solo",
        "--type",
        "aws",
        &format!("sso_start_url={START_URL}"),
        "sso_region=us-east-1",
        &format!("sso_account_id={ACCOUNT}"),
        "sso_role_name=deploy",
    ])
    .ok();
    vh.vault(["sso", "login", "solo", "--no-browser"]).ok();
    // The access token refused and the role withdrawn: the mint renews
    // (spending the refresh token), then GetRoleCredentials fails.
    {
        let mut st = state.lock().unwrap();
        st.access.clear();
        st.role_name = "admin".into();
    }
    std::thread::sleep(Duration::from_secs(6));
    vh.vault(["aws-process", "solo"])
        .code(7)
        .stderr_has("refused role deploy");
    assert_eq!(state.lock().unwrap().refreshes, 1);
    // The role given back: minted with the kept access token, no sign-in
    // (the first access token is refused, and the first refresh token
    // spent, so nothing else would do).
    // The failure belongs to the record with the kept tokens: retried
    // after its backoff (5 s).
    state.lock().unwrap().role_name = "deploy".into();
    vh.vault(["aws-process", "solo"])
        .code(7)
        .stderr_has("refused role deploy");
    std::thread::sleep(Duration::from_secs(6));
    vh.vault(["aws-process", "solo"]).ok();
    assert_eq!(state.lock().unwrap().refreshes, 1);
    let kept = vh
        .vault(["get", "solo", "--field", "sso_refresh_token"])
        .ok()
        .stdout
        .trim()
        .to_owned();
    assert_eq!(&kept, state.lock().unwrap().refresh.last().unwrap());
    assert_no_tokens_logged(&vh);
}

#[test]
fn a_sign_in_left_with_ctrl_c_stops_polling() {
    // Only the double: nothing is minted.
    let state = Arc::new(Mutex::new(State::new(serde_json::json!({}), 5)));
    state.lock().unwrap().ending = Ending::Pending;
    let vh = vault_at(&double(Arc::clone(&state)));
    add_session(&vh, "corp", &[]).ok();
    let mut login = vh
        .command(&vh.vault_bin, ["sso", "login", "corp", "--no-browser"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let polled = || state.lock().unwrap().polls.len();
    let by = std::time::Instant::now() + Duration::from_secs(30);
    while polled() < 2 {
        assert!(std::time::Instant::now() < by, "never polled");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Ctrl-C: the CLI goes, and so does the daemon's wait.
    let kill = std::process::Command::new("kill")
        .args(["-INT", &login.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    login.wait().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let after = polled();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        polled(),
        after,
        "the daemon kept polling a sign-in nobody waits for"
    );
    // A new sign-in works.
    state.lock().unwrap().ending = Ending::Approve;
    vh.vault(["sso", "login", "corp", "--no-browser"])
        .ok()
        .stderr_has("Signed in");
}

/// botocore's own SSO credential provider, with profile `argv[1]` of the
/// home's `~/.aws/config` and its token cache: the keys it resolves.
const BOTOCORE_SSO: &str = r#"
import json, sys
import botocore.session
c = botocore.session.Session(profile=sys.argv[1]).get_credentials().get_frozen_credentials()
print(json.dumps({"AccessKeyId": c.access_key, "SecretAccessKey": c.secret_key, "SessionToken": c.token}))
"#;

#[test]
fn the_aws_cli_signs_in_through_the_sso_profile_and_token_vault_writes() {
    use std::os::unix::fs::PermissionsExt;
    let Some(python) = moto_python("sso profile for the aws CLI") else {
        return;
    };
    let scratch = VaultHome::new();
    let (moto, role) = moto_role(&scratch, &python);
    let state = Arc::new(Mutex::new(State::new(role.clone(), 3600)));
    // One-minute access tokens: renewed by vaultd after half of that.
    state.lock().unwrap().token_life = 60;
    let url = double(Arc::clone(&state));
    let mut vh = vault_at(&url);
    vh.env.insert("AWS_ENDPOINT_URL_SSO".into(), url.clone());
    vh.env
        .insert("AWS_ENDPOINT_URL_SSO_OIDC".into(), url.clone());
    add_session(&vh, "corp", &[]).ok();
    // Nothing to write before a sign-in.
    vh.vault([
        "sso",
        "add",
        "dev",
        "--from",
        "corp",
        "--account",
        ACCOUNT,
        "--role",
        "deploy",
    ])
    .ok();
    vh.vault(["emit", "aws", "dev", "--profile", "dev", "--sso"])
        .code(7)
        .stderr_has("vault sso login corp");
    vh.vault(["sso", "login", "corp", "--no-browser"]).ok();

    // The user's own config stays as it is around the vault's sections.
    let aws_dir = vh.user_home.join(".aws");
    std::fs::create_dir_all(&aws_dir).unwrap();
    let mine = "# mine\n[profile other]\nregion = eu-north-1\n";
    std::fs::write(aws_dir.join("config"), mine).unwrap();
    // A token file of the aws CLI's own sign-in is not the vault's to take.
    let cache = aws_dir.join("sso/cache/08b83bdfca0ae6f6df31c386fdb4c36fef0a8f51.json");
    std::fs::create_dir_all(cache.parent().unwrap()).unwrap();
    let theirs = r#"{"startUrl":"x","region":"us-east-1","accessToken":"theirs","expiresAt":"2030-01-01T00:00:00Z","refreshToken":"r","clientId":"c","clientSecret":"s","registrationExpiresAt":"2030-01-01T00:00:00Z"}"#;
    std::fs::write(&cache, theirs).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o644)).unwrap();
    vh.vault(["emit", "aws", "dev", "--profile", "dev", "--sso"])
        .code(5)
        .stderr_has("--force replaces it");
    assert_eq!(std::fs::read_to_string(&cache).unwrap(), theirs);
    assert_eq!(
        std::fs::read_to_string(aws_dir.join("config")).unwrap(),
        mine
    );
    vh.vault(["emit", "aws", "dev", "--profile", "dev", "--sso", "--force"])
        .ok();
    let backups: Vec<_> = std::fs::read_dir(cache.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".vault-backup-"))
        .collect();
    assert_eq!(backups.len(), 1, "the aws CLI's file is kept as a backup");
    let config = std::fs::read_to_string(aws_dir.join("config")).unwrap();
    assert!(config.starts_with(mine), "{config}");
    for line in [
        "[profile dev]",
        "sso_session = vault-corp",
        &format!("sso_account_id = {ACCOUNT}"),
        "sso_role_name = deploy",
        "[sso-session vault-corp]",
        &format!("sso_start_url = {START_URL}"),
        "sso_region = us-east-1",
    ] {
        assert!(config.contains(line), "{line} not in {config}");
    }
    // The cache holds the access token, and nothing that outlives it, 0600
    // whatever the file it replaced had.
    let token = std::fs::read_to_string(&cache).unwrap();
    assert_eq!(
        std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let doc: serde_json::Value = serde_json::from_str(&token).unwrap();
    assert_eq!(
        doc["accessToken"],
        *state.lock().unwrap().access.last().unwrap()
    );
    assert!(
        !token.contains("refresh-") && !token.contains("csecret-"),
        "{token}"
    );

    // botocore and the aws CLI sign in through them: GetRoleCredentials
    // with the cached token at the portal, keys moto takes.
    let asked = state.lock().unwrap().requested.len();
    let keys = python_json(&vh, &python, BOTOCORE_SSO, &["dev"]);
    assert_eq!(keys["AccessKeyId"], role["AccessKeyId"], "{keys}");
    assert_assumed_role(&vh, &python, &moto, &keys.to_string(), "deploy");
    // The installed aws CLI (v1 has no export-credentials): its own call
    // to moto with what it resolved for the profile.
    let aws = python.with_file_name("aws");
    let run = vault_e2e::run_command(
        vh.command(
            &aws,
            [
                "sts",
                "get-caller-identity",
                "--profile",
                "dev",
                "--endpoint-url",
                &moto.url,
                "--region",
                "us-east-1",
                "--output",
                "json",
            ],
        ),
        None,
        Duration::from_secs(120),
    );
    run.ok();
    assert!(
        run.json()["Arn"]
            .as_str()
            .unwrap_or_default()
            .contains(":assumed-role/deploy/"),
        "{run}"
    );
    assert!(state.lock().unwrap().requested.len() >= asked + 2);
    let listed = vh.vault(["--json", "emit", "list"]).ok().json();
    let kinds: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "aws-sso").count(),
        2,
        "{listed}"
    );
    assert!(kinds.contains(&"aws-sso-token"), "{listed}");

    // vaultd renews the token before it runs out, and rewrites the file.
    let first = doc["accessToken"].as_str().unwrap().to_owned();
    let fresh = |t: &str| {
        std::fs::read_to_string(&cache)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .is_some_and(|d| d["accessToken"] != t)
    };
    let by = std::time::Instant::now() + Duration::from_secs(60);
    while !fresh(&first) {
        assert!(
            std::time::Instant::now() < by,
            "the token file was not renewed"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    python_json(&vh, &python, BOTOCORE_SSO, &["dev"]);

    // The session ended at IAM Identity Center: the file goes when its
    // token expires, and the profile says what botocore says.
    {
        let mut st = state.lock().unwrap();
        st.refresh.clear();
    }
    let by = std::time::Instant::now() + Duration::from_secs(90);
    while cache.exists() {
        assert!(
            std::time::Instant::now() < by,
            "the expired token file stayed"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let config_now = std::fs::read_to_string(aws_dir.join("config")).unwrap();
    assert!(config_now.contains("[profile dev]"));

    // The session's section goes with the last profile naming it, not
    // before; the user's lines stay.
    let id_of = |section: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["section"] == section)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    vh.vault(["emit", "rm", &id_of("sso-session vault-corp")])
        .code(5)
        .stderr_has("[profile dev]");
    vh.vault(["emit", "rm", &id_of("profile dev")]).ok();
    let after = std::fs::read_to_string(aws_dir.join("config")).unwrap();
    assert_eq!(after.trim_end(), mine.trim_end());
    let left = vh.vault(["--json", "emit", "list"]).ok().json();
    assert_eq!(left, serde_json::json!([]), "{left}");
    assert_no_tokens_logged(&vh);
}
