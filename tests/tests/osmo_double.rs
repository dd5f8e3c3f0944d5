//! Contract tests of the OSMO test double (`src/bin/osmo-double.rs`): it must
//! enforce the rules of `../shared/remotes/osmo.md`, so a wrong request from
//! the daemon fails a test instead of passing silently. Each test starts its
//! own double on a free loopback port and talks HTTP/1.1 to it with the tiny
//! client below.

#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{Value, json};
use vault_e2e::osmo::{Resp, http};

const PAT: &str = "pat-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
const SECRET: &str = "SECRETMARK-osmo-double";

// ---------------------------------------------------------------------------
// Harness.

/// A running double, killed when dropped.
struct Double {
    child: Child,
    addr: String,
    /// Its stderr (the request log), in `_dir`.
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Double {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&str]) -> Double {
    start_on("127.0.0.1:0", args)
}

fn start_on(listen: &str, args: &[&str]) -> Double {
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_osmo-double"))
        .args(["--listen", listen])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let Some(addr) = line.trim_end().strip_prefix("listening on ") else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "osmo-double did not start: stdout {line:?}, stderr {:?}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
    };
    Double {
        addr: addr.to_owned(),
        child,
        stderr,
        _dir: dir,
    }
}

impl Double {
    fn port(&self) -> &str {
        self.addr.rsplit(':').next().unwrap()
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
        http(&self.addr, method, path, headers, body)
    }

    /// A request with `Authorization: Bearer <jwt>`.
    fn authed(&self, jwt: &str, method: &str, path: &str, body: &str) -> Resp {
        let bearer = format!("Bearer {jwt}");
        self.request(method, path, &[("Authorization", &bearer)], body)
    }

    fn exchange(&self, pat: &str) -> Resp {
        let body = json!({ "token": pat }).to_string();
        self.request("POST", "/api/auth/jwt/access_token", &[], &body)
    }

    /// A fresh JWT for [`PAT`].
    fn jwt(&self) -> String {
        let r = self.exchange(PAT);
        r.expect(200);
        r.json()["token"].as_str().unwrap().to_owned()
    }

    fn set(&self, jwt: &str, name: &str, envelope: &Value) -> Resp {
        let path = format!("/api/credentials/{name}");
        self.authed(jwt, "POST", &path, &envelope.to_string())
    }

    fn delete(&self, jwt: &str, name: &str) -> Resp {
        self.authed(jwt, "DELETE", &format!("/api/credentials/{name}"), "")
    }

    /// `GET /api/credentials` as (name, type, profile), checked for shape.
    fn list(&self, jwt: &str) -> Vec<(String, String, String)> {
        let r = self.authed(jwt, "GET", "/api/credentials", "");
        r.expect(200);
        listing(&r.json())
    }

    fn names(&self, jwt: &str) -> Vec<String> {
        self.list(jwt).into_iter().map(|(n, _, _)| n).collect()
    }

    fn state(&self) -> Value {
        let r = self.request("GET", "/_double/state", &[], "");
        r.expect(200);
        r.json()
    }

    fn control(&self, method: &str, path: &str, body: &Value) -> Resp {
        self.request(method, path, &[], &body.to_string())
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap()
    }
}

/// A `{"credentials": [...]}` answer as (name, type, profile); fails on any
/// other key, so a value can never slip into a listing.
fn listing(v: &Value) -> Vec<(String, String, String)> {
    let obj = v.as_object().unwrap();
    assert_eq!(obj.len(), 1, "{v}");
    obj["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let c = c.as_object().unwrap();
            assert_eq!(c.len(), 3, "{c:?}");
            let s = |k: &str| c[k].as_str().unwrap().to_owned();
            // GENERIC: null.
            let profile = c["profile"].as_str().unwrap_or_default().to_owned();
            (s("cred_name"), s("cred_type"), profile)
        })
        .collect()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Today (UTC) plus `n` days, as `YYYY-MM-DD`.
fn today_plus(n: i64) -> String {
    vault_e2e::osmo::date_in_days(n)
}

fn registry(scope: &str, auth: &str) -> Value {
    json!({"registry_credential": {"registry": scope, "username": "$oauthtoken", "auth": auth}})
}

fn data(endpoint: &str) -> Value {
    json!({"data_credential": {"endpoint": endpoint, "access_key_id": "AK", "access_key": SECRET}})
}

fn generic(map: Value) -> Value {
    json!({ "generic_credential": { "credential": map } })
}

#[track_caller]
fn assert_error(r: &Resp, status: u16, code: &str, message_has: &str) {
    r.expect(status);
    let v = r.json();
    assert_eq!(v["error_code"], code, "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains(message_has),
        "{message:?} lacks {message_has:?}"
    );
}

/// A 422 whose `detail` has an item at `loc` (after "body").
#[track_caller]
fn assert_422(r: &Resp, loc: &[&str]) {
    r.expect(422);
    let v = r.json();
    let detail = v["detail"].as_array().unwrap();
    let mut want = vec![json!("body")];
    want.extend(loc.iter().map(|s| json!(s)));
    assert!(
        detail.iter().any(|d| d["loc"] == Value::Array(want.clone())
            && d["msg"].is_string()
            && d["type"].is_string()),
        "no detail at {want:?}: {v}"
    );
}

// ---------------------------------------------------------------------------
// Auth.

#[test]
fn exchange_issues_a_jwt_for_a_known_token_only() {
    let d = start(&["--token", PAT, "--token", "other-pat"]);
    let r = d.exchange(PAT);
    r.expect(200);
    let v = r.json();
    assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
    assert!(v["token"].as_str().unwrap().starts_with("jwt."), "{v}");
    let expires_at = v["expires_at"].as_i64().unwrap();
    assert!((expires_at - now_secs() - 300).abs() <= 2, "{v}");
    d.exchange("other-pat").expect(200);

    // As the platform answers: 400, about the length first.
    let r = d.exchange("not-a-known-pat");
    r.expect(400);
    assert_eq!(
        r.json(),
        json!({"message": "Access token has invalid length 15", "error_code": "USER", "workflow_id": null})
    );
    let r = d.exchange(&"x".repeat(43));
    assert_eq!(
        (r.status, r.json()),
        (
            400,
            json!({"message": "Access Token is invalid", "error_code": "USER", "workflow_id": null})
        )
    );

    // The body is exactly {"token": "<PAT>"}.
    let exchange = "/api/auth/jwt/access_token";
    for body in [
        json!({"access_token": PAT}),
        json!({"token": PAT, "extra": 1}),
        json!({"token": 42}),
        json!([PAT]),
    ] {
        let r = d.request("POST", exchange, &[], &body.to_string());
        r.expect(422);
        assert!(r.json()["detail"].is_array(), "{}", r.text);
    }
    d.request("POST", exchange, &[], "not json").expect(422);
    d.request("GET", exchange, &[], "").expect(405);

    let state = d.state();
    // Two good, two unknown; the malformed ones never reach the exchange.
    assert_eq!(state["exchanges"], 4, "{state}");
    assert_eq!(
        state["log"][0],
        json!({"method": "POST", "path": exchange, "status": 200})
    );
    assert_eq!(state["log"].as_array().unwrap().len(), 10, "{state}");
}

#[test]
fn an_expired_token_is_refused_with_400() {
    // Long past, and today: a token stops working at 00:00 UTC of its date.
    for expires in ["2020-01-01".to_owned(), today_plus(0)] {
        let d = start(&["--token", PAT, "--token-expires", &expires]);
        let r = d.exchange(PAT);
        assert_eq!(
            (r.status, r.json()),
            (
                400,
                json!({"message": "Access Token has expired", "error_code": "USER", "workflow_id": null})
            ),
            "expires {expires}"
        );
        // Unknown stays unknown.
        d.exchange("not-a-known-pat").expect(400);
    }
    // Tomorrow still works.
    let d = start(&["--token", PAT, "--token-expires", &today_plus(1)]);
    d.exchange(PAT).expect(200);
}

fn warning_of(r: &Resp) -> Option<String> {
    let text = base64::engine::general_purpose::STANDARD
        .decode(r.header("x-osmo-warning")?)
        .unwrap();
    Some(String::from_utf8(text).unwrap())
}

#[test]
fn the_version_header_and_warnings_behave_as_the_platform_does() {
    let expires = today_plus(3);
    let d = start(&["--token", PAT, "--token-expires", &expires]);
    let body = json!({ "token": PAT }).to_string();
    let exchange = "/api/auth/jwt/access_token";
    // The current client version, without login.
    let r = d.request("GET", "/client/version", &[("Accept", "text/plain")], "");
    assert_eq!((r.status, r.text.as_str()), (200, "6.4.0"));
    let r = d.request("GET", "/client/version", &[], "");
    assert_eq!(
        r.json(),
        json!({"major": "6", "minor": "4", "revision": "0", "hash": ""})
    );
    // Not major.minor.revision: 500, the exchange included.
    for bad in ["vault/0.1.0", "6.4", "6.4.0-rc1"] {
        let v = [("x-osmo-client-version", bad)];
        let r = d.request("POST", exchange, &v, &body);
        r.expect(500);
        assert!(r.text.contains("major.minor.revision"), "{}", r.text);
    }
    // The exchange never warns of the token (no user headers there).
    let current = [("x-osmo-client-version", "6.4.0")];
    let r = d.request("POST", exchange, &current, &body);
    assert_eq!(warning_of(r.expect(200)), None);
    let jwt = r.json()["token"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {jwt}");

    // Past the JWT check, with the version: the expiry, on errors too.
    let expiry = format!("WARNING: Access token vault-test is expiring on {expires} at 12AM UTC.");
    let with = [("Authorization", bearer.as_str()), current[0]];
    let r = d.request("GET", "/api/credentials", &with, "");
    assert_eq!(warning_of(r.expect(200)), Some(expiry.clone()));
    let r = d.request("DELETE", "/api/credentials/missing", &with, "");
    assert_eq!(warning_of(r.expect(400)), Some(expiry.clone()));
    // Without the version: nothing.
    let r = d.authed(&jwt, "GET", "/api/credentials", "");
    assert_eq!(warning_of(r.expect(200)), None);
    // An older version: told to update, first; the expiry after.
    let old = [
        ("Authorization", bearer.as_str()),
        ("x-osmo-client-version", "0.1.0"),
    ];
    let r = d.request("GET", "/api/credentials", &old, "");
    assert_eq!(
        r.expect(200).header("x-osmo-service-version"),
        Some("6.4.0")
    );
    assert_eq!(
        warning_of(&r).unwrap(),
        format!(
            "WARNING: New client 6.4.0 available.\nCurrent version: 0.1.0.\nPlease update by \
             running the install command in the documentation.\n{expiry}"
        )
    );

    // Not when the expiry is more than 7 days away, or unset.
    for args in [
        vec!["--token", PAT, "--token-expires", &today_plus(30)],
        vec!["--token", PAT],
    ] {
        let d = start(&args);
        let jwt = d.jwt();
        let bearer = format!("Bearer {jwt}");
        let with = [("Authorization", bearer.as_str()), current[0]];
        let r = d.request("GET", "/api/credentials", &with, "");
        assert_eq!(warning_of(r.expect(200)), None, "{args:?}");
    }
}

#[test]
fn credential_calls_need_a_live_jwt() {
    let d = start(&["--token", PAT, "--jwt-ttl", "1"]);
    let envelope = generic(json!({"K": "v"})).to_string();
    let calls = [
        ("GET", "/api/credentials", ""),
        ("POST", "/api/credentials/x", envelope.as_str()),
        ("DELETE", "/api/credentials/x", ""),
    ];
    let unauthorized = |r: &Resp| {
        r.expect(401);
        let v = r.json();
        assert_eq!(v["error_code"], "USER", "{v}");
        assert!(v["message"].is_string(), "{v}");
    };
    for (method, path, body) in calls {
        unauthorized(&d.request(method, path, &[], body));
        unauthorized(&d.request(method, path, &[("Authorization", PAT)], body));
        // A PAT is not a JWT.
        unauthorized(&d.authed(PAT, method, path, body));
        unauthorized(&d.authed("jwt.0123456789abcdef0123456789abcdef", method, path, body));
    }
    let jwt = d.jwt();
    assert_eq!(d.list(&jwt), vec![]);
    thread::sleep(Duration::from_millis(1500));
    for (method, path, body) in calls {
        unauthorized(&d.authed(&jwt, method, path, body));
    }
    // Nothing was stored by the refused calls; a fresh JWT works.
    assert_eq!(d.list(&d.jwt()), vec![]);
}

// ---------------------------------------------------------------------------
// Setting credentials.

#[test]
fn each_documented_envelope_is_accepted_as_written() {
    let d = start(&["--token", PAT]);
    let jwt = d.jwt();
    // The three examples of osmo.md, verbatim but for the secrets.
    let examples = [
        (
            "ngc",
            json!({"registry_credential": {"registry": "nvcr.io", "username": "$oauthtoken", "auth": SECRET}}),
        ),
        (
            "bucket",
            json!({"data_credential": {"endpoint": "s3://bucket", "region": "us-east-1", "access_key_id": "AK..", "access_key": SECRET, "override_url": "http://minio:9000", "addressing_style": "path"}}),
        ),
        (
            "env",
            json!({"generic_credential": {"credential": {"KEY": SECRET}}}),
        ),
        // Optional fields left out; an empty registry means Docker Hub; the
        // endpoint's trailing `/` is stripped.
        ("hub", json!({"registry_credential": {"auth": SECRET}})),
        (
            "gcs",
            json!({"data_credential": {"endpoint": "gs://b/", "access_key_id": "AK", "access_key": SECRET}}),
        ),
        (
            "quay",
            json!({"registry_credential": {"registry": "", "auth": SECRET}}),
        ),
    ];
    for style in ["virtual", "auto"] {
        let mut e = data(&format!("azure://{style}"));
        e["data_credential"]["addressing_style"] = json!(style);
        d.set(&jwt, style, &e).expect(200);
    }
    // "quay" has the same (empty → Docker Hub) scope as "hub": it replaces it.
    for (name, envelope) in &examples {
        let r = d.set(&jwt, name, envelope);
        r.expect(200);
        assert_eq!(r.text, "null");
    }
    let list = d.list(&jwt);
    let want = [
        ("auto", "DATA", "azure://auto"),
        ("bucket", "DATA", "s3://bucket"),
        ("env", "GENERIC", ""),
        ("gcs", "DATA", "gs://b"),
        ("ngc", "REGISTRY", "nvcr.io"),
        ("quay", "REGISTRY", "registry-1.docker.io"),
        ("virtual", "DATA", "azure://virtual"),
    ];
    let want: Vec<_> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(list, want);

    // The control API keeps the inner object exactly as sent.
    let state = d.state();
    for (name, envelope) in examples.iter().filter(|(n, _)| *n != "hub") {
        let inner = envelope.as_object().unwrap().values().next().unwrap();
        assert_eq!(&state["credentials"][name]["body"], inner, "{name}");
    }
    assert_eq!(state["credentials"]["ngc"]["cred_type"], "REGISTRY");
    assert_eq!(state["credentials"]["gcs"]["profile"], "gs://b");
}

#[test]
fn schema_errors_are_422() {
    let d = start(&["--token", PAT]);
    let jwt = d.jwt();
    let reg = |inner: Value| json!({ "registry_credential": inner });
    let cases = [
        // Unknown top-level key.
        (
            json!({"ssh_credential": {"key": "k"}}),
            vec!["ssh_credential"],
        ),
        // Unknown inner key.
        (
            reg(json!({"auth": "a", "password": "p"})),
            vec!["registry_credential", "password"],
        ),
        (
            json!({"data_credential": {"endpoint": "s3://b", "access_key_id": "A", "access_key": "k", "bucket": "b"}}),
            vec!["data_credential", "bucket"],
        ),
        (
            json!({"generic_credential": {"credential": {"K": "v"}, "type": "x"}}),
            vec!["generic_credential", "type"],
        ),
        // Missing required fields.
        (
            reg(json!({"registry": "nvcr.io", "username": "u"})),
            vec!["registry_credential", "auth"],
        ),
        (
            json!({"data_credential": {"access_key_id": "A", "access_key": "k"}}),
            vec!["data_credential", "endpoint"],
        ),
        (
            json!({"data_credential": {"endpoint": "s3://b", "access_key": "k"}}),
            vec!["data_credential", "access_key_id"],
        ),
        (
            json!({"data_credential": {"endpoint": "s3://b", "access_key_id": "A"}}),
            vec!["data_credential", "access_key"],
        ),
        (
            json!({"generic_credential": {}}),
            vec!["generic_credential", "credential"],
        ),
        // Values of the wrong kind.
        (
            reg(json!({"auth": 42})),
            vec!["registry_credential", "auth"],
        ),
        (
            reg(json!({"auth": "a", "registry": null})),
            vec!["registry_credential", "registry"],
        ),
        (
            json!({"generic_credential": {"credential": "K=v"}}),
            vec!["generic_credential", "credential"],
        ),
        (
            json!({"generic_credential": {"credential": {"K": 1}}}),
            vec!["generic_credential", "credential", "K"],
        ),
        (
            json!({"registry_credential": "a"}),
            vec!["registry_credential"],
        ),
        (json!(["registry_credential"]), vec![]),
        // addressing_style is virtual, path or auto.
        (
            json!({"data_credential": {"endpoint": "s3://b", "access_key_id": "A", "access_key": "k", "addressing_style": "dns"}}),
            vec!["data_credential", "addressing_style"],
        ),
    ];
    for (body, loc) in &cases {
        let r = d.set(&jwt, "name", body);
        assert_422(&r, loc);
    }
    // Schema errors come before the name check.
    assert_422(
        &d.set(&jwt, "1bad", &json!({"ssh_credential": {}})),
        &["ssh_credential"],
    );
    // Seen on the platform: one key with a value, or a 400 before the
    // schema (an unknown key next to an envelope counts).
    for body in [
        json!({"registry_credential": {"auth": "a"}, "generic_credential": {"credential": {"K": "v"}}}),
        json!({}),
        json!({"registry_credential": {"auth": "a"}, "description": "x"}),
    ] {
        assert_error(
            &d.set(&jwt, "name", &body),
            400,
            "USER",
            "Exactly one of the following must be set",
        );
    }
    let r = d.authed(&jwt, "POST", "/api/credentials/name", "{not json");
    r.expect(422);
    assert_eq!(d.list(&jwt), vec![]);
}

#[test]
fn names_must_match_the_documented_pattern() {
    let d = start(&["--token", PAT]);
    let jwt = d.jwt();
    let envelope = generic(json!({"K": "v"}));
    for bad in [
        "1abc",
        "a-",
        "a.b",
        "_a",
        "a_",
        "-a",
        "%C3%A9t%C3%A9",
        "a%20b",
    ] {
        assert_error(&d.set(&jwt, bad, &envelope), 400, "USER", "");
    }
    for good in ["a", "ab-c_d9", "Z", "a1", "A-b-C"] {
        d.set(&jwt, good, &envelope).expect(200);
    }
    assert_eq!(d.names(&jwt), ["A-b-C", "Z", "a", "a1", "ab-c_d9"]);
}

#[test]
fn data_endpoints_must_be_storage_urls() {
    let d = start(&["--token", PAT]);
    let jwt = d.jwt();
    for http_endpoint in ["http://minio:9000", "https://s3.amazonaws.com/bucket"] {
        assert_error(
            &d.set(&jwt, "d", &data(http_endpoint)),
            400,
            "USER",
            "override_url",
        );
    }
    for bad in ["ftp://bucket", "bucket", "S3://bucket", "s3://", ""] {
        assert_error(&d.set(&jwt, "d", &data(bad)), 400, "USER", "endpoint");
    }
    for (i, good) in ["s3://b", "gs://b", "azure://b", "tos://b", "swift://b/c/"]
        .iter()
        .enumerate()
    {
        d.set(&jwt, &format!("d{i}"), &data(good)).expect(200);
    }
    assert_eq!(d.list(&jwt)[4].2, "swift://b/c");
}

#[test]
fn generic_keys_are_checked_and_names_are_not_reused() {
    let d = start(&["--token", PAT]);
    let jwt = d.jwt();
    assert_error(&d.set(&jwt, "g", &generic(json!({}))), 400, "USER", "");
    // The platform takes any string key (the vault checks its own rule).
    d.set(&jwt, "g0", &generic(json!({"a/b": "v", "a b": "w"})))
        .expect(200);
    let ok = "k".repeat(253);
    d.set(&jwt, "g", &generic(json!({ ok: "v", "A-b.c_9": "w" })))
        .expect(200);

    // A GENERIC name that exists is a duplicate, whatever its type.
    let r = d.set(&jwt, "g", &generic(json!({"K": "new"})));
    assert_error(&r, 400, "USER", "(vault-user, g) already exists");
    d.set(&jwt, "r", &registry("nvcr.io", "a")).expect(200);
    assert_error(
        &d.set(&jwt, "r", &generic(json!({"K": "v"}))),
        400,
        "USER",
        "already exists",
    );

    // Update = delete, then create.
    d.delete(&jwt, "g").expect(200);
    d.set(&jwt, "g", &generic(json!({"K": "new"}))).expect(200);
    assert_eq!(
        d.state()["credentials"]["g"]["body"]["credential"],
        json!({"K": "new"})
    );
}

#[test]
fn registry_and_data_are_unique_per_scope_and_replace_in_place() {
    let d = start(&["--token", PAT]);
    let jwt = d.jwt();
    d.set(&jwt, "ngc", &registry("https://nvcr.io:443/", "one"))
        .expect(200);
    d.set(&jwt, "ngc-org", &registry("nvcr.io/org", "one"))
        .expect(200);
    // Same scope again under the same name: replaced in place.
    d.set(&jwt, "ngc", &registry("nvcr.io", "two")).expect(200);
    // Same scope under a new name: replaced and renamed.
    d.set(&jwt, "nvidia", &registry("nvcr.io", "three"))
        .expect(200);
    let list = d.list(&jwt);
    assert_eq!(
        list.iter()
            .map(|c| (c.0.as_str(), c.2.as_str()))
            .collect::<Vec<_>>(),
        [("ngc-org", "nvcr.io/org"), ("nvidia", "nvcr.io")]
    );
    assert_eq!(d.state()["credentials"]["nvidia"]["body"]["auth"], "three");

    // A name that exists with another scope, or another type: duplicate.
    let r = d.set(&jwt, "nvidia", &registry("ghcr.io", "x"));
    assert_error(&r, 400, "USER", "(vault-user, nvidia) already exists");
    assert_error(
        &d.set(&jwt, "nvidia", &data("s3://b")),
        400,
        "USER",
        "already exists",
    );

    // DATA: one per endpoint, the trailing `/` does not make it another.
    d.set(&jwt, "b1", &data("s3://bucket")).expect(200);
    d.set(&jwt, "b2", &data("s3://bucket/")).expect(200);
    assert_eq!(d.names(&jwt), ["b2", "ngc-org", "nvidia"]);
    assert_error(
        &d.set(&jwt, "b2", &data("s3://other")),
        400,
        "USER",
        "already exists",
    );
}

#[test]
fn delete_returns_what_it_deleted_and_refuses_a_missing_name() {
    let d = start(&["--token", PAT]);
    let jwt = d.jwt();
    let r = d.delete(&jwt, "ghost");
    r.expect(400);
    assert_eq!(
        r.json(),
        json!({"message": "Credential ghost does not exits", "error_code": "USER", "workflow_id": null})
    );
    d.set(&jwt, "a", &generic(json!({"K": SECRET}))).expect(200);
    d.set(&jwt, "b", &registry("nvcr.io", SECRET)).expect(200);
    let r = d.delete(&jwt, "b");
    r.expect(200);
    assert_eq!(
        listing(&r.json()),
        [("b".to_owned(), "REGISTRY".to_owned(), "nvcr.io".to_owned())]
    );
    let r = d.delete(&jwt, "a");
    assert_eq!(
        r.expect(200).json(),
        json!({"credentials": [{"cred_name": "a", "cred_type": "GENERIC", "profile": null}]})
    );
    assert!(!r.text.contains(SECRET));
    d.delete(&jwt, "a").expect(400);
}

#[test]
fn listings_and_logs_never_hold_a_value_or_token() {
    let d = start(&["--token", PAT]);
    let jwt = d.jwt();
    d.set(&jwt, "r", &registry("nvcr.io", SECRET)).expect(200);
    d.set(&jwt, "d", &data("s3://b")).expect(200);
    d.set(&jwt, "g", &generic(json!({"K": SECRET}))).expect(200);
    let r = d.authed(&jwt, "GET", "/api/credentials", "");
    r.expect(200);
    assert_eq!(listing(&r.json()).len(), 3);
    for needle in [SECRET, "$oauthtoken", "\"AK\"", "\"K\""] {
        assert!(!r.text.contains(needle), "{needle} in {}", r.text);
    }
    d.set(
        &jwt,
        "bad",
        &json!({"registry_credential": {"auth": SECRET, "x": 1}}),
    )
    .expect(422);
    let log = d.stderr();
    assert!(log.contains("POST /api/credentials/r 200"), "{log}");
    assert!(log.contains("POST /api/credentials/bad 422"), "{log}");
    for needle in [SECRET, PAT, jwt.as_str()] {
        assert!(!log.contains(needle), "{needle} in the stderr log:\n{log}");
    }
}

// ---------------------------------------------------------------------------
// The registry login check and the control API.

#[test]
fn a_rejected_registry_auth_is_a_credential_error() {
    let d = start(&["--token", PAT]);
    let jwt = d.jwt();
    d.control("POST", "/_double/reject-auth", &json!({"auth": "wrong"}))
        .expect(200);
    let r = d.set(&jwt, "ngc", &registry("nvcr.io/org/team", "wrong"));
    r.expect(400);
    assert_eq!(
        r.json(),
        json!({"message": "Registry login to nvcr.io failed: unauthorized", "error_code": "CREDENTIAL", "workflow_id": null})
    );
    let r = d.set(
        &jwt,
        "hub",
        &json!({"registry_credential": {"auth": "wrong"}}),
    );
    assert_error(
        &r,
        400,
        "CREDENTIAL",
        "Registry login to registry-1.docker.io failed",
    );
    d.set(&jwt, "ngc", &registry("nvcr.io/org/team", "right"))
        .expect(200);
    assert_eq!(d.names(&jwt), ["ngc"]);
}

#[test]
fn injected_failures_come_first_and_run_out() {
    let d = start(&["--token", PAT]);
    let jwt = d.jwt();
    let fail = json!({"method": "POST", "path": "/api/credentials/foo", "status": 500, "times": 1});
    d.control("POST", "/_double/fail", &fail).expect(200);
    let envelope = generic(json!({"K": "v"}));
    // Other paths and methods are not hit.
    d.set(&jwt, "bar", &envelope).expect(200);
    d.delete(&jwt, "foo").expect(400);
    // Before auth: no JWT needed to get the injected failure.
    let r = d.request("POST", "/api/credentials/foo", &[], &envelope.to_string());
    r.expect(500);
    assert_eq!(r.json(), json!({"message": "injected failure"}));
    d.set(&jwt, "foo", &envelope).expect(200);

    // "*" matches any path, `times` counts down, the exchange included.
    let fail = json!({"method": "POST", "path": "*", "status": 503, "times": 2});
    d.control("POST", "/_double/fail", &fail).expect(200);
    d.exchange(PAT).expect(503);
    d.set(&jwt, "baz", &envelope).expect(503);
    d.set(&jwt, "baz", &envelope).expect(200);
    assert_eq!(d.state()["exchanges"], 1);
    let log = d.state()["log"].clone();
    let statuses: Vec<_> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 200, 400, 500, 200, 503, 503, 200]);

    // DELETE drops what was not yet taken.
    let fail = json!({"method": "*", "path": "*", "status": 503, "times": 1000});
    d.control("POST", "/_double/fail", &fail).expect(200);
    d.set(&jwt, "qux", &envelope).expect(503);
    d.control("DELETE", "/_double/fail", &json!(null))
        .expect(200);
    d.set(&jwt, "qux", &envelope).expect(200);

    // A malformed control request is refused.
    let bad = json!({"method": "POST", "status": 500});
    d.control("POST", "/_double/fail", &bad).expect(400);
}

#[test]
fn the_control_api_changes_credentials_behind_the_clients_back() {
    let d = start(&["--token", PAT]);
    let jwt = d.jwt();
    d.control("POST", "/_double/reject-auth", &json!({"auth": "wrong"}))
        .expect(200);
    // No auth, no login check; still OSMO's rules for the rest.
    d.control(
        "POST",
        "/_double/credentials/remote",
        &registry("nvcr.io", "wrong"),
    )
    .expect(200);
    d.control(
        "POST",
        "/_double/credentials/1bad",
        &registry("ghcr.io", "x"),
    )
    .expect(400);
    d.control("POST", "/_double/credentials/x", &json!({"x": 1}))
        .expect(422);
    d.set(&jwt, "mine", &generic(json!({"K": "v"}))).expect(200);
    assert_eq!(d.names(&jwt), ["mine", "remote"]);
    d.control("DELETE", "/_double/credentials/mine", &Value::Null)
        .expect(200);
    d.control("DELETE", "/_double/credentials/mine", &Value::Null)
        .expect(404);
    assert_eq!(d.names(&jwt), ["remote"]);
    // Control requests are not in the log.
    let state = d.state();
    assert!(
        state["log"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| !e["path"].as_str().unwrap().starts_with("/_double")),
        "{state}"
    );
}

#[test]
fn unknown_paths_are_404_and_wrong_methods_405() {
    let d = start(&["--token", PAT]);
    let jwt = d.jwt();
    for path in [
        "/",
        "/api",
        "/api/credential",
        "/api/credentials/a/b",
        "/api/credentials/",
    ] {
        let r = d.authed(&jwt, "GET", path, "");
        r.expect(404);
        assert_eq!(r.json(), json!({"message": "not found"}), "{path}");
    }
    d.authed(&jwt, "PUT", "/api/credentials/a", "{}")
        .expect(405);
    d.authed(&jwt, "GET", "/api/credentials/a", "").expect(405);
    d.authed(&jwt, "POST", "/api/credentials", "{}").expect(405);
}

// ---------------------------------------------------------------------------
// Concurrency and persistence.

#[test]
fn exchanges_run_concurrently_with_a_delay() {
    let d = start(&["--token", PAT, "--exchange-delay-ms", "700"]);
    let began = Instant::now();
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let addr = d.addr.clone();
            thread::spawn(move || {
                let body = json!({ "token": PAT }).to_string();
                http(&addr, "POST", "/api/auth/jwt/access_token", &[], &body).status
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    let took = began.elapsed();
    assert!(took >= Duration::from_millis(700), "{took:?}");
    let state = d.state();
    assert_eq!(state["exchanges"], 3);
    assert_eq!(state["max_concurrent_exchanges"], 3);
}

#[test]
fn state_survives_a_restart_on_the_same_port() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("osmo.json");
    let state_arg = file.to_str().unwrap();
    let d = start(&["--token", PAT, "--state", state_arg]);
    let jwt = d.jwt();
    d.set(&jwt, "ngc", &registry("nvcr.io", SECRET)).expect(200);
    d.set(&jwt, "g", &generic(json!({"K": SECRET}))).expect(200);
    d.set(&jwt, "gone", &data("s3://b")).expect(200);
    d.delete(&jwt, "gone").expect(200);
    d.control("POST", "/_double/reject-auth", &json!({"auth": "wrong"}))
        .expect(200);
    let before = d.state()["credentials"].clone();
    let port = d.port().to_owned();
    drop(d);
    assert!(Path::new(&file).exists());

    let d = start_on(
        &format!("127.0.0.1:{port}"),
        &["--token", PAT, "--state", state_arg],
    );
    assert_eq!(d.port(), port);
    let state = d.state();
    assert_eq!(state["credentials"], before);
    // Counters and the log start again.
    assert_eq!(state["exchanges"], 0);
    assert_eq!(state["log"], json!([]));
    // The JWT issued before the restart still works, as a signed one would.
    assert_eq!(d.names(&jwt), ["g", "ngc"]);
    let r = d.set(&jwt, "other", &registry("ghcr.io", "wrong"));
    assert_error(&r, 400, "CREDENTIAL", "ghcr.io");

    // Without the file, a restart starts empty.
    let port = d.port().to_owned();
    drop(d);
    let d = start_on(&format!("127.0.0.1:{port}"), &["--token", PAT]);
    assert_eq!(d.names(&d.jwt()), Vec::<String>::new());
}
