//! API tests against the real `vault-server` binary on 127.0.0.1 port 0
//! with a temp SQLite database: authentication, authorization, the record
//! store's rules, limits, the admin bootstrap, TLS and the error format.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use vault_protocol::timefmt::Timestamp;

const KEY: &str = "age1vaultkey";

/// A fresh SQLite database, and a fresh PostgreSQL schema (named after `tag`)
/// when `VAULT_TEST_POSTGRES_URL` is set; else says that `test` skipped it.
async fn sqlite_and_postgres(test: &str, tag: &str) -> (tempfile::TempDir, Vec<String>) {
    let (dir, sqlite) = temp_sqlite();
    let mut databases = vec![sqlite];
    match std::env::var("VAULT_TEST_POSTGRES_URL") {
        Ok(base) => databases.push(fresh_postgres_schema(&base, tag).await),
        Err(_) => println!(
            "SKIP {test} on postgres: set VAULT_TEST_POSTGRES_URL=postgres://… \
             (bash .ci/run starts one)"
        ),
    }
    (dir, databases)
}

/// Creates vault `id` with key [`KEY`] as `admin`.
async fn create_vault(api: &Api, admin: &str, id: &str) {
    create_vault_with(api, admin, id, KEY).await;
}

/// A server with the default admin, a vault `v1`, and the admin's JWT.
async fn with_vault() -> (Server, Api, String) {
    let srv = server().admin().start();
    let api = srv.client();
    let admin = api.jwt(ADMIN_PASSWORD).await;
    create_vault(&api, &admin, "v1").await;
    (srv, api, admin)
}

#[tokio::test]
async fn token_exchange_and_jwt_checks() {
    let (srv, api, admin) = with_vault().await;
    let token = api.token(&admin, json!({"name": "t1"})).await;
    assert!(token.starts_with("vlt_"));

    let (s, body) = api.exchange(&token).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let jwt = body["jwt"].as_str().unwrap();
    assert_eq!(jwt.split('.').count(), 3, "a compact JWT");
    let expires = Timestamp::parse(body["expires_at"].as_str().unwrap()).unwrap();
    let now = Timestamp::now().unix();
    // Short-lived: the default is 10 minutes.
    assert!(expires.unix() > now && expires.unix() <= now + 600 + 5);
    let (s, me) = api.get("/whoami", jwt).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me["token"], "t1");

    // Every other call needs a JWT, not an access token or nothing.
    let err = assert_error(
        &api.call(Method::GET, "/whoami", None, None).await,
        401,
        "unauthorized",
    );
    assert!(err["message"].as_str().unwrap().contains("auth/token"));
    let err = assert_error(&api.get("/whoami", &token).await, 401, "unauthorized");
    assert!(err["message"].as_str().unwrap().contains("not a JWT"));
    // A tampered JWT.
    let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
    parts[1] = parts[1].replace('A', "B");
    parts[2] = parts[2].chars().rev().collect();
    assert_error(
        &api.get("/whoami", &parts.join(".")).await,
        401,
        "unauthorized",
    );
    // A made-up token.
    assert_error(
        &api.exchange("vlt_thisTokenWasNeverIssuedByTheServer0000000000")
            .await,
        401,
        "unauthorized",
    );
    // 401s say how to authenticate.
    let resp = reqwest::Client::new()
        .get(srv.url("/whoami"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()[reqwest::header::WWW_AUTHENTICATE],
        "Bearer realm=\"vault\""
    );
}

#[tokio::test]
async fn expired_token_and_jwt_are_refused() {
    let (_srv, api, admin) = with_vault().await;
    let expires = Timestamp(Timestamp::now().unix() + 2);
    let token = api
        .token(
            &admin,
            json!({"name": "short", "expires_at": expires.to_rfc3339()}),
        )
        .await;
    let (s, body) = api.exchange(&token).await;
    if s == StatusCode::OK {
        // The JWT never outlives its access token.
        let jwt_exp = Timestamp::parse(body["expires_at"].as_str().unwrap()).unwrap();
        assert!(jwt_exp.unix() <= expires.unix());
        let jwt = body["jwt"].as_str().unwrap().to_owned();
        while Timestamp::now().unix() <= expires.unix() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_error(&api.get("/whoami", &jwt).await, 401, "unauthorized");
    } else {
        // The slow machine took two seconds to get here: expired already.
        assert_error(&(s, body), 401, "unauthorized");
    }
    let err = assert_error(&api.exchange(&token).await, 401, "unauthorized");
    assert!(
        err["message"].as_str().unwrap().contains("expired"),
        "{err}"
    );

    // An expiry in the past is refused at creation.
    assert_error(
        &api.post(
            "/tokens",
            &admin,
            json!({"name": "past", "expires_at": "2001-01-01T00:00:00Z"}),
        )
        .await,
        400,
        "bad_request",
    );
}

#[tokio::test]
async fn jwt_ttl_is_configurable_and_enforced() {
    let srv = server().admin().arg("--jwt-ttl").arg("1s").start();
    let api = srv.client();
    let (s, body) = api.exchange(ADMIN_PASSWORD).await;
    assert_eq!(s, StatusCode::OK);
    let exp = Timestamp::parse(body["expires_at"].as_str().unwrap()).unwrap();
    let jwt = body["jwt"].as_str().unwrap().to_owned();
    while Timestamp::now().unix() < exp.unix() + 1 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let err = assert_error(&api.get("/whoami", &jwt).await, 401, "unauthorized");
    assert!(
        err["message"].as_str().unwrap().contains("expired"),
        "{err}"
    );
    // Exchanging again gives a working one.
    let jwt = api.jwt(ADMIN_PASSWORD).await;
    assert_eq!(api.get("/whoami", &jwt).await.0, StatusCode::OK);
}

#[tokio::test]
async fn revoked_token_stops_working_at_once() {
    let (_srv, api, admin) = with_vault().await;
    let token = api.token(&admin, json!({"name": "doomed"})).await;
    let jwt = api.jwt(&token).await;
    assert_eq!(api.get("/vaults/v1/heads", &jwt).await.0, StatusCode::OK);
    let (s, _) = api.delete("/tokens/doomed", &admin).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let err = assert_error(
        &api.get("/vaults/v1/heads", &jwt).await,
        401,
        "unauthorized",
    );
    assert!(err["message"].as_str().unwrap().contains("revoked"));
    assert_error(&api.exchange(&token).await, 401, "unauthorized");
    assert_error(
        &api.delete("/tokens/doomed", &admin).await,
        404,
        "not_found",
    );
    let (_, list) = api.get("/tokens", &admin).await;
    assert!(
        list["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["name"] != "doomed")
    );
}

/// A server with roles `reader` (vault:read on v1), `writer` (vault:write on
/// v1) and `minter` (token:create), user `bob` holding all three, and bob's
/// JWT from a token carrying all three.
async fn with_bob() -> (Server, Api, String, String) {
    let (srv, api, admin) = with_vault().await;
    api.role(
        &admin,
        "reader",
        json!([{"actions": ["vault:read"], "resources": ["v1"]}]),
    )
    .await;
    api.role(
        &admin,
        "writer",
        json!([{"actions": ["vault:write"], "resources": ["v1"]}]),
    )
    .await;
    api.role(
        &admin,
        "minter",
        json!([{"actions": ["token:create"], "resources": ["*"]}]),
    )
    .await;
    api.user(&admin, "bob", &["reader", "writer", "minter"])
        .await;
    let out = cli(&srv.database, &["token", "add", "--user", "bob", "main"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bob = api.jwt(stdout(&out).trim()).await;
    (srv, api, admin, bob)
}

#[tokio::test]
async fn token_roles_are_a_subset_of_the_callers() {
    let (_srv, api, _admin, bob) = with_bob().await;
    // A subset is fine and is all the new token can do.
    let ro = api
        .token(&bob, json!({"name": "ro", "roles": ["reader"]}))
        .await;
    let ro_jwt = api.jwt(&ro).await;
    let (_, me) = api.get("/whoami", &ro_jwt).await;
    assert_eq!(me["roles"], json!(["reader"]));
    assert_eq!(api.get("/vaults/v1/heads", &ro_jwt).await.0, StatusCode::OK);
    let err = assert_error(
        &api.post("/vaults/v1/push", &ro_jwt, push_body("d", KEY, 1, 1))
            .await,
        403,
        "forbidden",
    );
    assert_eq!(err["action"], "vault:write");
    // A role bob lacks is refused, naming it.
    let err = assert_error(
        &api.post(
            "/tokens",
            &bob,
            json!({"name": "up", "roles": ["reader", "admin"]}),
        )
        .await,
        403,
        "role_not_held",
    );
    assert!(
        err["message"].as_str().unwrap().contains("'admin'"),
        "{err}"
    );
    // So is one bob holds but the calling token does not carry (no widening
    // through a narrower token) — here the ro token also lacks token:create.
    let err = assert_error(
        &api.post(
            "/tokens",
            &ro_jwt,
            json!({"name": "up", "roles": ["writer"]}),
        )
        .await,
        403,
        "forbidden",
    );
    assert_eq!(err["action"], "token:create");
    // Without `roles`, the new token carries the calling token's roles.
    let all = api.token(&bob, json!({"name": "all"})).await;
    let (_, me) = api.get("/whoami", &api.jwt(&all).await).await;
    assert_eq!(me["roles"], json!(["minter", "reader", "writer"]));
    // Names are unique per user.
    assert_error(
        &api.post("/tokens", &bob, json!({"name": "all"})).await,
        409,
        "already_exists",
    );
}

#[tokio::test]
async fn removing_a_role_from_a_user_cuts_it_from_their_tokens() {
    let (_srv, api, admin, bob) = with_bob().await;
    let rw = api
        .token(&bob, json!({"name": "rw", "roles": ["reader", "writer"]}))
        .await;
    let rw_jwt = api.jwt(&rw).await;
    let (s, _) = api
        .post("/vaults/v1/push", &rw_jwt, push_body("d", KEY, 1, 1))
        .await;
    assert_eq!(s, StatusCode::OK);

    // Take `writer` from bob: the already-issued JWT loses it at once.
    let (s, _) = api.delete("/users/bob/roles/writer", &admin).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, me) = api.get("/whoami", &rw_jwt).await;
    assert_eq!(me["roles"], json!(["reader"]));
    let err = assert_error(
        &api.post("/vaults/v1/push", &rw_jwt, push_body("d", KEY, 2, 1))
            .await,
        403,
        "forbidden",
    );
    assert_eq!(err["action"], "vault:write");
    assert_eq!(api.get("/vaults/v1/heads", &rw_jwt).await.0, StatusCode::OK);
    let (_, list) = api.get("/tokens?user=bob", &admin).await;
    for t in list["tokens"].as_array().unwrap() {
        assert!(
            !t["roles"].as_array().unwrap().contains(&json!("writer")),
            "{t}"
        );
    }

    // Deleting a role takes it from everyone.
    let (s, _) = api.delete("/roles/reader", &admin).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, me) = api.get("/whoami", &rw_jwt).await;
    assert_eq!(me["roles"], json!([]));
    let err = assert_error(
        &api.get("/vaults/v1/heads", &rw_jwt).await,
        403,
        "forbidden",
    );
    assert_eq!(err["action"], "vault:read");
    // Revoking a role the user does not hold is a 404.
    assert_error(
        &api.delete("/users/bob/roles/writer", &admin).await,
        404,
        "not_found",
    );
}

#[tokio::test]
async fn denials_name_the_missing_action() {
    let (_srv, api, _admin, bob) = with_bob().await;
    let cases: Vec<((StatusCode, Value), &str, &str)> = vec![
        (api.get("/users", &bob).await, "user:admin", "*"),
        (api.get("/roles", &bob).await, "user:admin", "*"),
        (
            api.post("/users", &bob, json!({"name": "eve"})).await,
            "user:admin",
            "*",
        ),
        (api.delete("/users/admin", &bob).await, "user:admin", "*"),
        (
            api.post(
                "/vaults",
                &bob,
                json!({"id": "v2", "key_id": KEY, "identity": b64(b"i")}),
            )
            .await,
            "vault:admin",
            "v2",
        ),
        // Another vault: bob's roles cover v1 only. Whether it exists is not
        // revealed (403 before 404).
        (api.get("/vaults/nope", &bob).await, "vault:read", "nope"),
        (
            api.post("/vaults/nope/pull", &bob, json!({})).await,
            "vault:read",
            "nope",
        ),
        (
            api.post("/vaults/nope/push", &bob, push_body("d", KEY, 1, 1))
                .await,
            "vault:write",
            "nope",
        ),
        (api.get("/tokens?user=admin", &bob).await, "user:admin", "*"),
    ];
    for (got, action, resource) in cases {
        let err = assert_error(&got, 403, "forbidden");
        assert_eq!(err["action"], action, "{err}");
        assert_eq!(err["resource"], resource, "{err}");
        assert!(err["message"].as_str().unwrap().contains(action), "{err}");
    }
    // Allowed calls on v1 work; a missing vault he may read is a 404.
    assert_eq!(api.get("/vaults/v1", &bob).await.0, StatusCode::OK);
}

#[tokio::test]
async fn failed_logins_are_rate_limited_per_address_and_per_prefix() {
    let srv = server()
        .admin()
        .arg("--login-failure-limit")
        .arg("3")
        .start();
    let api = srv.client();
    let admin = api.jwt(ADMIN_PASSWORD).await;
    let good = api.token(&admin, json!({"name": "good"})).await;

    // Per address: three failures from 127.0.0.1, then even a good token
    // is refused from there.
    for i in 0..3 {
        let got = api
            .exchange(&format!("vlt_wrongguess{i}xxxxxxxxxxxxxxxxxxxx"))
            .await;
        assert_error(&got, 401, "unauthorized");
    }
    let resp = reqwest::Client::new()
        .post(srv.url("/auth/token"))
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()[reqwest::header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // JWTs already issued keep working: the limit is on logins only.
    assert_eq!(api.get("/whoami", &admin).await.0, StatusCode::OK);

    // From another loopback address the good token works...
    let from = |ip: &str| {
        Api::with_http(
            reqwest::Client::builder()
                .local_address(ip.parse::<std::net::IpAddr>().unwrap())
                .build()
                .unwrap(),
            &srv.base,
        )
    };
    let other = from("127.0.0.2");
    assert_eq!(other.exchange(&good).await.0, StatusCode::OK);
    // ...but guessing one token prefix from many addresses is limited too.
    let prefix_guess = |i: u32| format!("vlt_SAMEPREFIXguess{i}yyyyyyyyyyyyyyyyyyyy");
    for (i, ip) in ["127.0.0.3", "127.0.0.4", "127.0.0.5"].iter().enumerate() {
        assert_error(
            &from(ip).exchange(&prefix_guess(i as u32)).await,
            401,
            "unauthorized",
        );
    }
    assert_error(
        &from("127.0.0.6").exchange(&prefix_guess(9)).await,
        429,
        "rate_limited",
    );
    assert_eq!(from("127.0.0.6").exchange(&good).await.0, StatusCode::OK);
}

#[tokio::test]
async fn default_admin_bootstrap() {
    let (dir, db) = temp_sqlite();
    // A short password is refused, and nothing is created.
    let out = server()
        .database(&db)
        .arg("--default-admin")
        .arg("root")
        .env("VAULT_SERVER_ADMIN_PASSWORD", "too-short")
        .fail();
    assert!(stderr(&out).contains("at least 32"), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("too-short"),
        "the password was echoed"
    );
    // No password at all.
    let out = server()
        .database(&db)
        .arg("--default-admin")
        .arg("root")
        .fail();
    assert!(
        stderr(&out).contains("VAULT_SERVER_ADMIN_PASSWORD"),
        "{}",
        stderr(&out)
    );
    let out = cli(&db, &["user", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains("root"));

    // From a file (a trailing newline is not part of it).
    let password = "file-password-that-is-long-enough-0123456789";
    let file = temp_file(dir.path(), "pw", &format!("{password}\n"));
    let srv = server()
        .database(&db)
        .arg("--default-admin")
        .arg("root")
        .arg("--admin-password-file")
        .arg(file.to_str().unwrap())
        .start();
    let api = srv.client();
    let jwt = api.jwt(password).await;
    let (_, me) = api.get("/whoami", &jwt).await;
    assert_eq!(
        me,
        json!({"user": "root", "token": "bootstrap-password", "roles": ["admin"]})
    );
    assert_error(
        &api.exchange("file-password-that-is-long-enough-012345678X")
            .await,
        401,
        "unauthorized",
    );
    let (_, roles) = api.get("/roles", &jwt).await;
    assert_eq!(
        roles["roles"][0]["policies"][0]["actions"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    drop(srv);

    // A second start with another admin and password changes nothing.
    let srv = server()
        .database(&db)
        .arg("--default-admin")
        .arg("other")
        .env("VAULT_SERVER_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .start();
    let api = srv.client();
    assert_error(&api.exchange(ADMIN_PASSWORD).await, 401, "unauthorized");
    let jwt = api.jwt(password).await;
    let (_, users) = api.get("/users", &jwt).await;
    assert_eq!(users["users"].as_array().unwrap().len(), 1);
    assert!(srv.log().contains("left unchanged"), "{}", srv.log());
    // The bootstrap password can be revoked like any token.
    let (s, _) = api.delete("/tokens/bootstrap-password", &jwt).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_error(&api.exchange(password).await, 401, "unauthorized");
    for secret in [password, ADMIN_PASSWORD, jwt.as_str()] {
        assert!(!srv.log().contains(secret), "a secret reached the log");
    }
}

#[tokio::test]
async fn push_must_continue_the_log_exactly() {
    let (_srv, api, admin) = with_vault().await;
    let push = |body: Value| {
        let api = api.clone();
        let admin = admin.clone();
        async move { api.post("/vaults/v1/push", &admin, body).await }
    };
    // The first push starts at 1.
    let err = assert_error(
        &push(push_body("d", KEY, 2, 1)).await,
        409,
        "index_conflict",
    );
    assert_eq!(err["expected_index"], 1);
    let (s, b) = push(push_body("d", KEY, 1, 3)).await;
    assert_eq!(
        (s, b),
        (StatusCode::OK, json!({"device_id": "d", "head": 3}))
    );
    // Skipping an index, replaying an old one: 409 naming the next index.
    for from in [5, 3, 1] {
        let err = assert_error(
            &push(push_body("d", KEY, from, 1)).await,
            409,
            "index_conflict",
        );
        assert_eq!(err["expected_index"], 4, "from {from}");
    }
    // A batch must be consecutive within itself.
    let mut body = push_body("d", KEY, 4, 3);
    body["records"][2]["index"] = json!(7);
    assert_error(&push(body).await, 400, "bad_request");
    assert_error(&push(push_body("d", KEY, 0, 1)).await, 400, "bad_request");
    assert_error(
        &push(json!({"device_id": "d", "records": []})).await,
        400,
        "bad_request",
    );
    assert_error(
        &push(push_body("bad device", KEY, 4, 1)).await,
        400,
        "bad_request",
    );
    let mut body = push_body("d", KEY, 4, 1);
    body["records"][0]["data"] = json!("not base64!");
    assert_error(&push(body).await, 400, "bad_request");
    // Nothing above was stored.
    let (_, h) = api.get("/vaults/v1/heads", &admin).await;
    assert_eq!(h, json!({"heads": {"d": 3}}));
    let (s, b) = push(push_body("d", KEY, 4, 2)).await;
    assert_eq!((s, b["head"].clone()), (StatusCode::OK, json!(5)));
    // Unknown vault.
    assert_error(
        &api.post("/vaults/nope/push", &admin, push_body("d", KEY, 1, 1))
            .await,
        404,
        "not_found",
    );
}

/// The audit log segments devices share (`[audit] sync`, issue 24) are a
/// log of their own: the push rules of records, their own heads, never
/// mixed with the record log either way; `vault:write` to push them,
/// `vault:read` to pull them. On SQLite and on PostgreSQL.
#[tokio::test]
async fn audit_segments_are_a_log_of_their_own() {
    let (_dir, databases) = sqlite_and_postgres("audit_segments_are…", "auditlog").await;
    for db in databases {
        let srv = server().database(&db).admin().start();
        let api = srv.client();
        let admin = api.jwt(ADMIN_PASSWORD).await;
        create_vault(&api, &admin, "v1").await;
        // Records and segments with the same device and indexes.
        let (s, _) = api
            .post("/vaults/v1/push", &admin, push_body("d", KEY, 1, 2))
            .await;
        assert_eq!(s, StatusCode::OK, "{db}");
        let mut seg = push_body("d", KEY, 1, 3);
        seg["records"][0]["data"] = json!(b64(b"segment one"));
        let (s, b) = api.post("/vaults/v1/audit/push", &admin, seg).await;
        assert_eq!((s, b["head"].clone()), (StatusCode::OK, json!(3)), "{db}");
        // The record log is untouched by the segments, and the other way.
        let (_, h) = api.get("/vaults/v1/heads", &admin).await;
        assert_eq!(h, json!({"heads": {"d": 2}}), "{db}");
        let (_, page) = api
            .post("/vaults/v1/audit/pull", &admin, json!({"since": {}}))
            .await;
        assert_eq!(page["heads"], json!({"d": 3}), "{db}");
        assert_eq!(
            pulled(&page),
            [("d".into(), 1), ("d".into(), 2), ("d".into(), 3)]
        );
        assert_eq!(page["records"][0]["data"], json!(b64(b"segment one")));
        let (_, page) = api
            .post("/vaults/v1/audit/pull", &admin, json!({"since": {"d": 2}}))
            .await;
        assert_eq!(page["records"].as_array().unwrap().len(), 1, "{db}");
        let (_, records) = api
            .post("/vaults/v1/pull", &admin, json!({"since": {}}))
            .await;
        assert_eq!(records["heads"], json!({"d": 2}), "{db}");
        assert_eq!(records["records"].as_array().unwrap().len(), 2, "{db}");
        // A replayed or skipping segment, another key: refused as records are.
        let err = assert_error(
            &api.post("/vaults/v1/audit/push", &admin, push_body("d", KEY, 2, 1))
                .await,
            409,
            "index_conflict",
        );
        assert_eq!(err["expected_index"], 4);
        assert_error(
            &api.post(
                "/vaults/v1/audit/push",
                &admin,
                push_body("d", "age1intruder", 4, 1),
            )
            .await,
            422,
            "key_mismatch",
        );
        assert_error(
            &api.post("/vaults/nope/audit/pull", &admin, json!({"since": {}}))
                .await,
            404,
            "not_found",
        );
        // A reader may pull segments, not push them.
        let rita = v1_reader(&srv, &api, &admin).await;
        let err = assert_error(
            &api.post("/vaults/v1/audit/push", &rita, push_body("r", KEY, 1, 1))
                .await,
            403,
            "forbidden",
        );
        assert_eq!(err["action"], "vault:write");
        let (s, _) = api
            .post("/vaults/v1/audit/pull", &rita, json!({"since": {}}))
            .await;
        assert_eq!(s, StatusCode::OK, "{db}");
    }
}

/// User `rita`, who may read vault `v1` only; her JWT.
async fn v1_reader(srv: &Server, api: &Api, admin: &str) -> String {
    api.role(
        admin,
        "reader",
        json!([{"actions": ["vault:read"], "resources": ["v1"]}]),
    )
    .await;
    api.user(admin, "rita", &["reader"]).await;
    let out = cli(&srv.database, &["token", "add", "--user", "rita", "main"]);
    assert!(out.status.success(), "{}", stderr(&out));
    api.jwt(stdout(&out).trim()).await
}

/// `(device, index)` of every entry a pull answered.
fn pulled(page: &Value) -> Vec<(String, u64)> {
    page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["device_id"].as_str().unwrap().to_owned(),
                r["index"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Runs `sql` on a test's database (its SQLite file, or its PostgreSQL
/// schema) behind the server's back.
async fn run_sql(db: &str, sql: &str) {
    match db.strip_prefix("sqlite:") {
        Some(path) => rusqlite::Connection::open(path)
            .unwrap()
            .execute_batch(sql)
            .unwrap(),
        None => {
            let schema = db.rsplit("%3D").next().unwrap();
            let (client, conn) = tokio_postgres::connect(db, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client
                .batch_execute(&format!("SET search_path TO {schema}; {sql}"))
                .await
                .unwrap();
        }
    }
}

/// Pushes audit segments `from..from+n` of `device` to `v1`, asserting 200.
async fn push_segments(api: &Api, jwt: &str, device: &str, from: u64, n: u64) {
    let (s, b) = api
        .post(
            "/vaults/v1/audit/push",
            jwt,
            push_body(device, KEY, from, n),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

/// Dates audit segments `1..=upto` of `device` two hours back.
async fn age_segments(db: &str, device: &str, upto: u64) {
    run_sql(
        db,
        &format!(
            "UPDATE audit_segments SET received_at = received_at - 7200 \
             WHERE device_id = '{device}' AND idx <= {upto}"
        ),
    )
    .await;
}

/// `DELETE /vaults/{id}/audit/devices/{device}` (issue 24): a writer removes
/// a device's segments; pulls then say so in `pruned`, the head stays, the
/// next push goes on after it and one at or below `pruned` is refused.
#[tokio::test]
async fn a_device_removes_its_audit_segments_and_keeps_its_numbering() {
    let (_dir, databases) = sqlite_and_postgres("a_device_removes…", "auditrm").await;
    for db in databases {
        let srv = server().database(&db).admin().start();
        let api = srv.client();
        let admin = api.jwt(ADMIN_PASSWORD).await;
        create_vault(&api, &admin, "v1").await;
        push_segments(&api, &admin, "d", 1, 3).await;
        push_segments(&api, &admin, "e", 1, 2).await;
        let (s, _) = api
            .post("/vaults/v1/push", &admin, push_body("d", KEY, 1, 2))
            .await;
        assert_eq!(s, StatusCode::OK);

        let (s, b) = api.delete("/vaults/v1/audit/devices/d", &admin).await;
        assert_eq!(s, StatusCode::OK, "{db}: {b}");
        assert_eq!(b, json!({"device_id": "d", "removed": 3, "pruned": 3}));
        let (_, page) = api
            .post("/vaults/v1/audit/pull", &admin, json!({"since": {}}))
            .await;
        assert_eq!(pulled(&page), [("e".into(), 1), ("e".into(), 2)], "{db}");
        assert_eq!(page["heads"], json!({"d": 3, "e": 2}), "{db}");
        assert_eq!(page["pruned"], json!({"d": 3}), "{db}");
        assert_eq!(page["more"], false, "{db}");
        // The record log is not the audit log's business, and says nothing.
        let (_, records) = api
            .post("/vaults/v1/pull", &admin, json!({"since": {}}))
            .await;
        assert_eq!(records["records"].as_array().unwrap().len(), 2, "{db}");
        assert!(records.get("pruned").is_none(), "{records}");

        // Numbers are never sealed twice: at or below `pruned` is a 409.
        for from in [1, 3] {
            let err = assert_error(
                &api.post(
                    "/vaults/v1/audit/push",
                    &admin,
                    push_body("d", KEY, from, 1),
                )
                .await,
                409,
                "index_conflict",
            );
            assert_eq!(err["expected_index"], 4, "{db}");
        }
        push_segments(&api, &admin, "d", 4, 1).await;
        let (_, page) = api
            .post("/vaults/v1/audit/pull", &admin, json!({"since": {"e": 2}}))
            .await;
        assert_eq!(pulled(&page), [("d".into(), 4)], "{db}");
        assert_eq!(page["pruned"], json!({"d": 3}), "{db}");
        let (_, b) = api.delete("/vaults/v1/audit/devices/d", &admin).await;
        assert_eq!(b, json!({"device_id": "d", "removed": 1, "pruned": 4}));
        // A device that never shared, removed: nothing to do.
        let (s, b) = api.delete("/vaults/v1/audit/devices/zz", &admin).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(b, json!({"device_id": "zz", "removed": 0, "pruned": 0}));

        assert_error(
            &api.delete("/vaults/v1/audit/devices/_bad", &admin).await,
            400,
            "bad_request",
        );
        assert_error(
            &api.delete("/vaults/nope/audit/devices/d", &admin).await,
            404,
            "not_found",
        );
        // A reader may pull segments, not remove them.
        let rita = v1_reader(&srv, &api, &admin).await;
        let err = assert_error(
            &api.delete("/vaults/v1/audit/devices/e", &rita).await,
            403,
            "forbidden",
        );
        assert_eq!(err["action"], "vault:write");
        let (_, page) = api
            .post("/vaults/v1/audit/pull", &rita, json!({"since": {}}))
            .await;
        assert_eq!(pulled(&page), [("e".into(), 1), ("e".into(), 2)], "{db}");
    }
}

/// `Store::prune_audit` with a cutoff of the test's choosing: each device
/// loses only its prefix received before it, pulls report that in
/// `pruned`, and no head goes back. Records are never pruned.
#[tokio::test]
async fn pruning_removes_only_the_old_prefix_of_each_device() {
    let (_dir, databases) = sqlite_and_postgres("pruning_removes…", "auditprune").await;
    for db in databases {
        let srv = server().database(&db).admin().start();
        let api = srv.client();
        let admin = api.jwt(ADMIN_PASSWORD).await;
        create_vault(&api, &admin, "v1").await;
        push_segments(&api, &admin, "d", 1, 4).await;
        push_segments(&api, &admin, "e", 1, 2).await;
        push_segments(&api, &admin, "f", 1, 1).await;
        let (s, _) = api
            .post("/vaults/v1/push", &admin, push_body("d", KEY, 1, 2))
            .await;
        assert_eq!(s, StatusCode::OK);
        age_segments(&db, "d", 2).await;
        age_segments(&db, "e", 2).await;
        run_sql(&db, "UPDATE records SET received_at = received_at - 7200").await;

        let store = vault_server::store::open(&db).await.unwrap();
        let cutoff = Timestamp::now().unix() - 3600;
        assert_eq!(store.prune_audit(cutoff).await.unwrap(), 4, "{db}");
        let (_, page) = api
            .post("/vaults/v1/audit/pull", &admin, json!({"since": {}}))
            .await;
        assert_eq!(
            pulled(&page),
            [("d".into(), 3), ("d".into(), 4), ("f".into(), 1)],
            "{db}"
        );
        assert_eq!(page["heads"], json!({"d": 4, "e": 2, "f": 1}), "{db}");
        assert_eq!(page["pruned"], json!({"d": 2, "e": 2}), "{db}");
        // Again: nothing more is old; the marks stay where they are.
        assert_eq!(store.prune_audit(cutoff).await.unwrap(), 0, "{db}");
        let (_, again) = api
            .post("/vaults/v1/audit/pull", &admin, json!({"since": {}}))
            .await;
        assert_eq!(again, page, "{db}");
        // Heads stay: `e` goes on at 3, `d` cannot go back to 2.
        push_segments(&api, &admin, "e", 3, 1).await;
        let err = assert_error(
            &api.post("/vaults/v1/audit/push", &admin, push_body("d", KEY, 2, 1))
                .await,
            409,
            "index_conflict",
        );
        assert_eq!(err["expected_index"], 5, "{db}");
        // A later cutoff takes what is old by then, the mark only rises.
        let later = Timestamp::now().unix() + 10;
        assert_eq!(store.prune_audit(later).await.unwrap(), 4, "{db}");
        let (_, page) = api
            .post("/vaults/v1/audit/pull", &admin, json!({"since": {}}))
            .await;
        assert!(pulled(&page).is_empty(), "{db}: {page}");
        assert_eq!(page["pruned"], json!({"d": 4, "e": 3, "f": 1}), "{db}");
        assert_eq!(page["heads"], json!({"d": 4, "e": 3, "f": 1}), "{db}");
        assert_eq!(page["more"], false, "{db}");
        // The records, older than any cutoff, are all there.
        let (_, records) = api
            .post("/vaults/v1/pull", &admin, json!({"since": {}}))
            .await;
        assert_eq!(records["records"].as_array().unwrap().len(), 2, "{db}");
        assert_eq!(
            store.prune_audit(i64::MAX).await.unwrap(),
            0,
            "{db}: nothing left"
        );
    }
}

/// `vault-server --audit-keep 1h`: the real server prunes at start, logs
/// how many went and before when (nothing else), and pulls say so.
#[tokio::test]
async fn the_server_prunes_old_audit_segments_with_audit_keep() {
    let (_dir, databases) = sqlite_and_postgres("the_server_prunes…", "auditkeep").await;
    for db in databases {
        let mut srv = server().database(&db).admin().start();
        let api = srv.client();
        let admin = api.jwt(ADMIN_PASSWORD).await;
        create_vault(&api, &admin, "v1").await;
        push_segments(&api, &admin, "d", 1, 3).await;
        srv.stop();
        age_segments(&db, "d", 2).await;

        let srv = server().database(&db).arg("--audit-keep").arg("1h").start();
        let api = srv.client();
        let admin = api.jwt(ADMIN_PASSWORD).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !srv.log().contains("audit retention: removed") {
            assert!(
                std::time::Instant::now() < deadline,
                "{db}: no prune logged:\n{}",
                srv.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = srv.log();
        assert!(
            log.contains("removed 2 segment(s) received before"),
            "{log}"
        );
        let (_, page) = api
            .post("/vaults/v1/audit/pull", &admin, json!({"since": {}}))
            .await;
        assert_eq!(pulled(&page), [("d".into(), 3)], "{db}");
        assert_eq!(page["pruned"], json!({"d": 2}), "{db}");
        assert_eq!(page["heads"], json!({"d": 3}), "{db}");
    }
}

#[tokio::test]
async fn records_with_another_key_id_are_rejected() {
    let (_srv, api, admin) = with_vault().await;
    let err = assert_error(
        &api.post(
            "/vaults/v1/push",
            &admin,
            push_body("d", "age1intruder", 1, 1),
        )
        .await,
        422,
        "key_mismatch",
    );
    assert!(err["message"].as_str().unwrap().contains(KEY), "{err}");
    // One wrong record spoils the whole batch.
    let mut body = push_body("d", KEY, 1, 3);
    body["records"][1]["key_id"] = json!("age1intruder");
    assert_error(
        &api.post("/vaults/v1/push", &admin, body).await,
        422,
        "key_mismatch",
    );
    let (_, h) = api.get("/vaults/v1/heads", &admin).await;
    assert_eq!(h, json!({"heads": {}}));
}

#[tokio::test]
async fn pull_is_paginated_and_consistent() {
    let (_srv, api, admin) = with_vault().await;
    // Three devices, 700 + 5 + 300 records (pushed in batches).
    for (device, n) in [("a", 700u64), ("b", 5), ("c", 300)] {
        let mut next = 1;
        while next <= n {
            let batch = (n - next + 1).min(250);
            let (s, b) = api
                .post(
                    "/vaults/v1/push",
                    &admin,
                    push_body(device, KEY, next, batch),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{b}");
            next += batch;
        }
    }
    let heads = json!({"a": 700, "b": 5, "c": 300});
    // Default page size is 500; a bigger limit is cut to 1000.
    let (_, page) = api.post("/vaults/v1/pull", &admin, json!({})).await;
    assert_eq!(page["records"].as_array().unwrap().len(), 500);
    assert_eq!(page["more"], true);
    let (_, page) = api
        .post("/vaults/v1/pull", &admin, json!({"limit": 5000}))
        .await;
    assert_eq!(page["records"].as_array().unwrap().len(), 1000);
    assert_eq!(page["more"], true);
    assert_error(
        &api.post("/vaults/v1/pull", &admin, json!({"limit": 0}))
            .await,
        400,
        "bad_request",
    );

    // Walk it in pages of 333, starting past b's 2nd record.
    let mut since = serde_json::Map::new();
    since.insert("b".into(), json!(2));
    let mut seen: Vec<(String, u64)> = Vec::new();
    let mut pages = 0;
    loop {
        let (s, page) = api
            .post(
                "/vaults/v1/pull",
                &admin,
                json!({"since": since, "limit": 333}),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(page["heads"], heads);
        pages += 1;
        for r in page["records"].as_array().unwrap() {
            let d = r["device_id"].as_str().unwrap().to_owned();
            let i = r["index"].as_u64().unwrap();
            assert_eq!(
                unb64(r["data"].as_str().unwrap()),
                format!("{d}#{i}").into_bytes()
            );
            since.insert(d.clone(), json!(i));
            seen.push((d, i));
        }
        if page["more"] == false {
            break;
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 4, "1003 records in pages of 333");
    let expect: Vec<(String, u64)> = (1..=700)
        .map(|i| ("a".to_owned(), i))
        .chain((3..=5).map(|i| ("b".to_owned(), i)))
        .chain((1..=300).map(|i| ("c".to_owned(), i)))
        .collect();
    assert_eq!(seen, expect);
    // Up to date: an empty page, nothing more.
    let (_, page) = api
        .post("/vaults/v1/pull", &admin, json!({"since": since}))
        .await;
    assert_eq!(page["records"], json!([]));
    assert_eq!(page["more"], false);
}

#[tokio::test]
async fn size_limits() {
    let (_srv, api, admin) = with_vault().await;
    // A record over 1 MiB.
    let big = vec![7u8; (1 << 20) + 1];
    let body =
        json!({"device_id": "d", "records": [{"index": 1, "key_id": KEY, "data": b64(&big)}]});
    assert_error(
        &api.post("/vaults/v1/push", &admin, body).await,
        413,
        "too_large",
    );
    // A 1 MiB record is fine (push bodies may exceed the general limit).
    let ok = vec![7u8; 1 << 20];
    let body =
        json!({"device_id": "d", "records": [{"index": 1, "key_id": KEY, "data": b64(&ok)}]});
    let (s, b) = api.post("/vaults/v1/push", &admin, body).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // Too many records in one batch.
    assert_error(
        &api.post("/vaults/v1/push", &admin, push_body("e", KEY, 1, 1001))
            .await,
        413,
        "too_large",
    );
    // Any other call: a body over 256 KiB.
    let huge = "x".repeat(300 << 10);
    assert_error(
        &api.post("/users", &admin, json!({"name": huge})).await,
        413,
        "too_large",
    );
    // An identity over 64 KiB.
    assert_error(
        &api.post(
            "/vaults",
            &admin,
            json!({"id": "v2", "key_id": KEY, "identity": b64(&vec![1u8; (64 << 10) + 1])}),
        )
        .await,
        413,
        "too_large",
    );
    // Pulling the big record back works.
    let (s, page) = api.post("/vaults/v1/pull", &admin, json!({})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(unb64(page["records"][0]["data"].as_str().unwrap()), ok);
}

#[tokio::test]
async fn errors_are_json_with_code_and_message() {
    let (srv, api, admin) = with_vault().await;
    assert_error(&api.get("/nope", &admin).await, 404, "not_found");
    assert_error(
        &api.call(Method::GET, "/not/an/api/route", None, None).await,
        404,
        "not_found",
    );
    assert_error(
        &api.call(Method::PUT, "/vaults/v1", Some(&admin), None)
            .await,
        405,
        "method_not_allowed",
    );
    assert_error(&api.get("/vaults/missing", &admin).await, 404, "not_found");
    // Bad JSON and a missing content type.
    let http = reqwest::Client::new();
    for req in [
        http.post(srv.url("/vaults/v1/pull"))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body("{not json"),
        http.post(srv.url("/vaults/v1/pull"))
            .bearer_auth(&admin)
            .body("{}"),
        http.post(srv.url("/users"))
            .bearer_auth(&admin)
            .json(&json!({"name": 5})),
    ] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_request", "{body}");
    }
    // Invalid names and roles.
    assert_error(
        &api.post("/users", &admin, json!({"name": "-bad"})).await,
        400,
        "bad_request",
    );
    assert_error(
        &api.post("/users", &admin, json!({"name": "u", "roles": ["ghost"]}))
            .await,
        400,
        "bad_request",
    );
    assert_error(
        &api.post("/roles", &admin, json!({"name": "r", "policies": []}))
            .await,
        400,
        "bad_request",
    );
    assert_error(
        &api.post(
            "/roles",
            &admin,
            json!({"name": "r", "policies": [{"actions": ["vault:fly"], "resources": ["*"]}]}),
        )
        .await,
        400,
        "bad_request",
    );
}

#[tokio::test]
async fn openapi_lists_exactly_the_served_routes() {
    let srv = server().admin().start();
    let api = srv.client();
    let (s, doc) = api.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    documented.sort();
    let mut served: Vec<(String, String)> = vault_server::api::route_table()
        .into_iter()
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
    served.sort();
    assert_eq!(documented, served);

    // And the running server really routes each of them (no 404 "no
    // route" / 405): every documented operation answers something else.
    let admin = api.jwt(ADMIN_PASSWORD).await;
    for (method, path) in &documented {
        let concrete = path
            .trim_start_matches("/api/v1")
            .replace("{name}", "x")
            .replace("{role}", "x")
            .replace("{id}", "x");
        let got = api
            .call(
                Method::from_bytes(method.as_bytes()).unwrap(),
                &concrete,
                Some(&admin),
                (method == "POST").then_some(&json!({})),
            )
            .await;
        assert_ne!(
            got.0,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {}",
            got.1
        );
        let no_route = got.1["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("no route"));
        assert!(!no_route, "{method} {path} is documented but not served");
    }
    // Every referenced schema exists.
    let text = doc.to_string();
    for cap in text.split("#/components/schemas/").skip(1) {
        let name: String = cap.chars().take_while(|c| c.is_alphanumeric()).collect();
        assert!(
            doc["components"]["schemas"][&name].is_object(),
            "missing schema {name}"
        );
    }
}

#[tokio::test]
async fn admin_cli_manages_users_roles_and_tokens() {
    let (_dir, db) = temp_sqlite();
    let run = |args: &[&str]| {
        let out = cli(&db, args);
        assert!(
            out.status.success(),
            "vault-server {args:?} failed: {}",
            stderr(&out)
        );
        stdout(&out)
    };
    run(&[
        "role",
        "add",
        "ops",
        "--description",
        "operators",
        "--policy",
        "vault:read,vault:write=team-*",
        "--policy",
        "token:create=*",
    ]);
    run(&["role", "add", "audit", "--policy", "vault:read=*"]);
    let roles: Value = serde_json::from_str(&run(&["--json", "role", "list"])).unwrap();
    assert_eq!(roles["roles"][1]["name"], "ops");
    assert_eq!(
        roles["roles"][1]["policies"],
        json!([{"actions": ["vault:read", "vault:write"], "resources": ["team-*"]},
               {"actions": ["token:create"], "resources": ["*"]}])
    );
    assert!(run(&["role", "list"]).contains("vault:read,vault:write=team-*"));

    run(&["user", "add", "carol", "--role", "ops"]);
    run(&["user", "grant", "carol", "audit"]);
    let users: Value = serde_json::from_str(&run(&["--json", "user", "list"])).unwrap();
    assert_eq!(users["users"][0]["roles"], json!(["audit", "ops"]));
    assert!(run(&["user", "list"]).contains("carol"));

    let token = run(&[
        "token", "add", "--user", "carol", "ci", "--role", "ops", "--ttl", "1h",
    ]);
    let token = token.trim();
    assert!(token.starts_with("vlt_"));
    let listed = run(&["token", "list"]);
    assert!(
        listed.contains("ci") && listed.contains(&token[..12]),
        "{listed}"
    );
    assert!(!listed.contains(token), "token list shows the secret");
    let json_list: Value =
        serde_json::from_str(&run(&["--json", "token", "list", "--user", "carol"])).unwrap();
    assert_eq!(json_list["tokens"][0]["roles"], json!(["ops"]));

    // Refusals, with exit codes: a role the user lacks, duplicates, unknowns.
    let out = cli(
        &db,
        &["token", "add", "--user", "carol", "x", "--role", "nope"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not hold role 'nope'"),
        "{}",
        stderr(&out)
    );
    let out = cli(&db, &["user", "add", "carol"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let out = cli(&db, &["user", "rm", "nobody"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let out = cli(&db, &["role", "add", "bad", "--policy", "vault:fly=*"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = cli(
        &db,
        &[
            "token",
            "add",
            "--user",
            "carol",
            "old",
            "--expires-at",
            "2001-01-01T00:00:00Z",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // The CLI's token works on a server, and `token rm` revokes it there.
    let srv = server().database(&db).start();
    let api = srv.client();
    let jwt = api.jwt(token).await;
    let (_, me) = api.get("/whoami", &jwt).await;
    assert_eq!(
        me,
        json!({"user": "carol", "token": "ci", "roles": ["ops"]})
    );
    run(&["user", "revoke", "carol", "ops"]);
    let (_, me) = api.get("/whoami", &jwt).await;
    assert_eq!(me["roles"], json!([]));
    run(&["token", "rm", "--user", "carol", "ci"]);
    assert_error(&api.get("/whoami", &jwt).await, 401, "unauthorized");
    assert!(!run(&["token", "list"]).contains("ci "));
    run(&["role", "rm", "audit"]);
    run(&["user", "rm", "carol"]);
    let users: Value = serde_json::from_str(&run(&["--json", "user", "list"])).unwrap();
    assert_eq!(users["users"], json!([]));
    assert!(!srv.log().contains(token));
}

#[tokio::test]
async fn plain_http_only_on_loopback_and_tls_works() {
    // Plain HTTP on a non-loopback address is refused.
    let out = server().listen("0.0.0.0:0").fail();
    assert!(
        stderr(&out).contains("not a loopback address"),
        "{}",
        stderr(&out)
    );

    // TLS with a self-signed certificate, on every interface.
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = cert.cert.pem();
    let cert_file = temp_file(dir.path(), "cert.pem", &cert_pem);
    let key_file = temp_file(dir.path(), "key.pem", &cert.key_pair.serialize_pem());
    let srv = server()
        .listen("0.0.0.0:0")
        .arg("--tls-cert")
        .arg(cert_file.to_str().unwrap())
        .arg("--tls-key")
        .arg(key_file.to_str().unwrap())
        .admin()
        .tls()
        .start();
    let port = srv.addr.rsplit(':').next().unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .resolve("localhost", format!("127.0.0.1:{port}").parse().unwrap())
        .build()
        .unwrap();
    let api = Api::with_http(http, &format!("https://localhost:{port}/api/v1"));
    let jwt = api.jwt(ADMIN_PASSWORD).await;
    assert_eq!(api.get("/whoami", &jwt).await.0, StatusCode::OK);
    // Plain HTTP to the TLS port gets nowhere.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/api/v1/health"))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());

    // A bad key file is a clear start error.
    let out = server()
        .arg("--tls-cert")
        .arg(cert_file.to_str().unwrap())
        .arg("--tls-key")
        .arg(cert_file.to_str().unwrap())
        .fail();
    assert!(stderr(&out).contains("TLS"), "{}", stderr(&out));
}

#[tokio::test]
async fn issued_secrets_never_reach_the_log() {
    let (srv, api, admin, bob) = with_bob().await;
    let mut secrets = vec![ADMIN_PASSWORD.to_owned(), admin.clone(), bob.clone()];
    let t = api.token(&bob, json!({"name": "scan"})).await;
    let jwt = api.jwt(&t).await;
    secrets.extend([t.clone(), jwt.clone()]);
    // Provoke every kind of failure around them.
    let _ = api.exchange(&format!("{t}x")).await;
    let _ = api.exchange(&t[..20]).await;
    let _ = api
        .exchange("a-wrong-password-that-is-long-enough-000")
        .await;
    let _ = api.get("/whoami", &t).await;
    let _ = api.get("/whoami", &format!("{jwt}x")).await;
    let _ = api.get("/users", &jwt).await;
    let _ = api.delete("/tokens/scan", &bob).await;
    let _ = api.get("/whoami", &jwt).await;
    let _ = api.exchange(&t).await;
    let log = srv.log();
    assert!(log.contains("failed login"), "debug log expected: {log}");
    for s in &secrets {
        assert!(!log.contains(s.as_str()), "a secret reached the server log");
        // Nor a recognisable piece of one (past the shown prefix).
        assert!(
            !log.contains(&s[s.len() - 16..]),
            "part of a secret reached the log"
        );
    }
    // And the token list never carries them.
    let (_, list) = api.get("/tokens", &admin).await;
    for s in &secrets {
        assert!(!list.to_string().contains(s.as_str()));
    }
}

/// `GET /api/v1/ready`: without a token, 200 while the database answers
/// and is migrated; 503 with `Retry-After` and a reason, and nothing else,
/// when its schema is not this server's. Liveness stays 200 throughout.
#[tokio::test]
async fn ready_says_whether_the_database_is_migrated() {
    let (_dir, url) = temp_sqlite();
    let srv = server().database(&url).admin().start();
    let api = srv.client();
    let (s, body) = api.call(Method::GET, "/ready", None, None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"status": "ready"}));

    // Behind the server's back the schema version goes back, as if its
    // migrations had not run on this database.
    let path = url.strip_prefix("sqlite:").unwrap();
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "user_version", 0).unwrap();
    let raw = api
        .http
        .get(format!("{}/ready", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        raw.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("5")
    );
    let body: Value = raw.json().await.unwrap();
    assert_eq!(body["status"], "not ready");
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("version 0"), "{reason}");
    assert!(!reason.contains(path), "no path in {reason}");
    let (s, _) = api.call(Method::GET, "/health", None, None).await;
    assert_eq!(s, StatusCode::OK, "alive while not ready");
    conn.pragma_update(None, "user_version", {
        // Put back what the server migrated to.
        let known: i64 = body["reason"]
            .as_str()
            .and_then(|r| r.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        known
    })
    .unwrap();
    let (s, _) = api.call(Method::GET, "/ready", None, None).await;
    assert_eq!(s, StatusCode::OK, "ready again");
}

/// The same on PostgreSQL: a database whose schema table is gone answers
/// 503, without the database's error text.
#[tokio::test]
async fn ready_on_postgres_fails_when_the_schema_is_gone() {
    let Ok(base) = std::env::var("VAULT_TEST_POSTGRES_URL") else {
        println!(
            "SKIP ready_on_postgres: set VAULT_TEST_POSTGRES_URL=postgres://… (bash .ci/run starts one)"
        );
        return;
    };
    let url = fresh_postgres_schema(&base, "ready").await;
    let schema = url.rsplit("%3D").next().unwrap().to_owned();
    let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let srv = server().database(&url).admin().start();
    let api = srv.client();
    let (s, body) = api.call(Method::GET, "/ready", None, None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    client
        .batch_execute(&format!("DROP TABLE {schema}.vault_schema"))
        .await
        .unwrap();
    let (s, body) = api.call(Method::GET, "/ready", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        body,
        json!({"status": "not ready", "reason": "the database did not answer the readiness check"})
    );
    let (s, _) = api.call(Method::GET, "/health", None, None).await;
    assert_eq!(s, StatusCode::OK);
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

/// Two replicas on one database share the failed-login counts: guesses
/// spread over both are limited once, not once per replica. On PostgreSQL
/// when `VAULT_TEST_POSTGRES_URL` is set, and always on one SQLite file.
#[tokio::test]
async fn two_replicas_share_the_failed_login_limit() {
    let (_dir, databases) = sqlite_and_postgres("two_replicas_share…", "limits").await;
    for db in databases {
        let replica = || {
            server()
                .database(&db)
                .admin()
                .arg("--login-failure-limit")
                .arg("4")
                .start()
        };
        let (a, b) = (replica(), replica());
        let (api_a, api_b) = (a.client(), b.client());
        let admin = api_a.jwt(ADMIN_PASSWORD).await;
        let good = api_a.token(&admin, json!({"name": "good"})).await;
        // Four wrong guesses, alternating replicas: each sees only two.
        for i in 0..4 {
            let api = if i % 2 == 0 { &api_a } else { &api_b };
            let got = api
                .exchange(&format!("vlt_replicaguess{i}zzzzzzzzzzzzzzzzzzzzz"))
                .await;
            assert_error(&got, 401, "unauthorized");
        }
        // Now both refuse this address, even the good token.
        for api in [&api_a, &api_b] {
            assert_error(&api.exchange(&good).await, 429, "rate_limited");
        }
        // Issued JWTs keep working on either.
        assert_eq!(api_b.get("/whoami", &admin).await.0, StatusCode::OK);
    }
}

/// `--request-timeout`: a request held up past it (here by a lock the test
/// holds on the database) is answered 503 with `Retry-After`, promptly, and
/// its change is not applied later when the lock goes: each database call
/// is bounded by the same timeout and fails whole. SQLite always (the test
/// holds the write lock), PostgreSQL when `VAULT_TEST_POSTGRES_URL` is set
/// (the test locks the roles table).
#[tokio::test]
async fn a_request_out_of_time_answers_503_and_applies_nothing() {
    let (_dir, databases) = sqlite_and_postgres("a_request_out_of_time…", "timeout").await;
    let pg_base = std::env::var("VAULT_TEST_POSTGRES_URL").ok();
    for db in databases {
        let srv = server()
            .database(&db)
            .admin()
            .arg("--request-timeout")
            .arg("1s")
            .start();
        let api = srv.client();
        let admin = api.jwt(ADMIN_PASSWORD).await;
        let policies = json!([{"actions": ["vault:read"], "resources": ["x"]}]);
        // Hold the lock the role's INSERT needs, for longer than the timeout.
        enum Holder {
            Sqlite(rusqlite::Connection),
            Postgres(tokio_postgres::Client),
        }
        let holder = if let Some(path) = db.strip_prefix("sqlite:") {
            let conn = rusqlite::Connection::open(path).unwrap();
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            Holder::Sqlite(conn)
        } else {
            let base = pg_base.clone().unwrap();
            let schema = db.rsplit("%3D").next().unwrap().to_owned();
            let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client
                .batch_execute(&format!(
                    "BEGIN; LOCK TABLE {schema}.roles IN ACCESS EXCLUSIVE MODE"
                ))
                .await
                .unwrap();
            Holder::Postgres(client)
        };
        let started = std::time::Instant::now();
        let resp = api
            .http
            .post(format!("{}/roles", api.base))
            .bearer_auth(&admin)
            .json(&json!({"name": "late", "description": "", "policies": policies}))
            .send()
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{db}");
        assert_eq!(
            resp.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("5")
        );
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
        assert!(took < Duration::from_secs(5), "answered after {took:?}");
        // Past the database's own bound for the call, then the lock goes.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        match holder {
            Holder::Sqlite(conn) => conn.execute_batch("COMMIT").unwrap(),
            Holder::Postgres(client) => client.batch_execute("COMMIT").await.unwrap(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (s, roles) = api.get("/roles", &admin).await;
        assert_eq!(s, StatusCode::OK);
        assert!(
            !roles.to_string().contains("\"late\""),
            "the timed-out change was applied after its 503: {roles}"
        );
        // And the server serves on: the same change now goes through.
        api.role(&admin, "late", policies).await;
    }
}

/// The request timeout starts once the body is in: a body that takes longer
/// than `--request-timeout` to arrive (a big push over a slow link) is
/// served, not answered 503; the handler alone is held to the limit.
#[tokio::test]
async fn a_slow_upload_is_not_counted_against_the_request_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = server().admin().arg("--request-timeout").arg("1s").start();
    let api = srv.client();
    let admin = api.jwt(ADMIN_PASSWORD).await;
    let policies = json!([{"actions": ["vault:read"], "resources": ["x"]}]);
    let body = json!({"name": "trickled", "description": "", "policies": policies}).to_string();
    let (first, rest) = body.split_at(body.len() / 2);
    let mut conn = tokio::net::TcpStream::connect(&srv.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/roles HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {admin}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        srv.addr,
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(first.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    conn.write_all(rest.as_bytes()).await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 201"),
        "a slow upload was refused: {answer}"
    );
    let (s, roles) = api.get("/roles", &admin).await;
    assert_eq!(s, StatusCode::OK);
    assert!(roles.to_string().contains("\"trickled\""), "{roles}");
}

/// A zero duration is refused at start with the flag named, not served as
/// "every request times out at once".
#[test]
fn zero_durations_are_refused() {
    let (_dir, db) = temp_sqlite();
    for flag in ["--request-timeout", "--jwt-ttl", "--login-failure-window"] {
        let out = cli(&db, &[flag, "0s", "user", "list"]);
        assert_eq!(out.status.code(), Some(2), "{flag}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(flag) && stderr(&out).contains("positive duration"),
            "{}",
            stderr(&out)
        );
    }
}

/// `--audit-keep` is at least an hour (retention runs hourly): less is
/// refused at start with the minimum named; days are fine.
#[test]
fn audit_keep_is_at_least_an_hour() {
    let (_dir, db) = temp_sqlite();
    let out = cli(&db, &["--audit-keep", "10m", "user", "list"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("--audit-keep") && err.contains("at least 1h"),
        "{err}"
    );
    let out = cli(&db, &["--audit-keep", "90d", "user", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Reads one sample from a Prometheus exposition: the line of `name` whose
/// labels include every `labels` pair.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// `--metrics-listen`: `GET /metrics` on its own listener reports requests
/// by route template and status, latency buckets, pushes, pulls, records
/// stored, pool use and failed logins, and names no vault, user, device or
/// token. The API listener has no `/metrics`; without the flag there is no
/// listener. SQLite always, PostgreSQL when `VAULT_TEST_POSTGRES_URL` is set.
#[tokio::test]
async fn metrics_report_the_service_without_naming_anyone() {
    let (_dir, databases) = sqlite_and_postgres("metrics_report…", "metrics").await;
    for db in databases {
        let srv = server()
            .database(&db)
            .admin()
            .arg("--metrics-listen")
            .arg("127.0.0.1:0")
            .start();
        let metrics_url = format!(
            "http://{}/metrics",
            srv.metrics_addr
                .as_deref()
                .expect("metrics address announced")
        );
        let api = srv.client();
        let admin = api.jwt(ADMIN_PASSWORD).await;
        create_vault(&api, &admin, "secretvaultid").await;
        let push = push_body("secretdeviceid", KEY, 1, 5);
        let (s, b) = api.post("/vaults/secretvaultid/push", &admin, push).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let (s, b) = api
            .post("/vaults/secretvaultid/pull", &admin, json!({"since": {}}))
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["records"].as_array().unwrap().len(), 5);
        assert_eq!(api.exchange("vlt_wrongtokenwrongtoken").await.0, 401);
        assert_eq!(api.get("/no/such/route", &admin).await.0, 404);
        // An invented method is counted as "other", not as a new series.
        let odd = reqwest::Method::from_bytes(b"FOOBARMETHOD").unwrap();
        let resp = api
            .http
            .request(odd, format!("{}/health", api.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);

        let text = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let push_route = [
            ("method", "POST"),
            ("route", "/api/v1/vaults/{id}/push"),
            ("status", "200"),
        ];
        assert_eq!(
            sample(&text, "vault_server_http_requests_total", &push_route),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "vault_server_http_requests_total",
                &[("route", "/api/v1/auth/token"), ("status", "401")]
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "vault_server_http_requests_total",
                &[("route", "unmatched"), ("status", "404")]
            ),
            Some(1.0),
            "{text}"
        );
        assert!(
            sample(
                &text,
                "vault_server_http_request_duration_seconds_bucket",
                &[("route", "/api/v1/vaults/{id}/pull"), ("le", "+Inf")]
            ) == Some(1.0),
            "latency histogram: {text}"
        );
        for (name, want) in [
            ("vault_server_pushes_total", 1.0),
            ("vault_server_pushed_records_total", 5.0),
            ("vault_server_pulls_total", 1.0),
            ("vault_server_pulled_records_total", 5.0),
            ("vault_server_records_stored", 5.0),
            ("vault_server_failed_logins_total", 1.0),
            ("vault_server_database_up", 1.0),
        ] {
            assert_eq!(sample(&text, name, &[]), Some(want), "{name}: {text}");
        }
        let max = sample(&text, "vault_server_db_pool_max", &[]).unwrap();
        assert!(max >= 1.0, "{text}");
        assert!(sample(&text, "vault_server_db_pool_in_use", &[]).is_some());
        assert_eq!(
            sample(
                &text,
                "vault_server_http_requests_total",
                &[("method", "other"), ("status", "405")]
            ),
            Some(1.0),
            "{text}"
        );
        for private in [
            "FOOBARMETHOD",
            "secretvaultid",
            "secretdeviceid",
            "admin",
            "vlt_",
            "wrongtoken",
            ADMIN_PASSWORD,
        ] {
            assert!(!text.contains(private), "/metrics shows {private:?}");
        }
        // Only /metrics there, and no /metrics on the API's listener.
        let other = reqwest::get(metrics_url.replace("/metrics", "/api/v1/health"))
            .await
            .unwrap();
        assert_eq!(other.status(), StatusCode::NOT_FOUND);
        let api_side = reqwest::get(format!("http://{}/metrics", srv.addr))
            .await
            .unwrap();
        assert_eq!(api_side.status(), StatusCode::NOT_FOUND);
    }
    // Off by default.
    let plain = server().start();
    assert!(plain.metrics_addr.is_none());
}

/// PostgreSQL over TLS (issue 23), against a real PostgreSQL with `ssl=on`
/// and a throwaway CA (`.ci/pg-tls-setup`), as a role the server admits over
/// TLS only, so getting in at all proves the connection was encrypted:
/// `verify-full` with the right CA serves; `require` serves unchecked;
/// `disable` is refused by the database; a wrong CA, a host the certificate
/// does not name, and `verify-full` without a CA are refused at start with
/// a message that says which and what to do, and no password.
#[tokio::test]
async fn postgres_over_tls_checks_the_servers_certificate() {
    let (Ok(plain), Ok(tls_base), Ok(ca)) = (
        std::env::var("VAULT_TEST_POSTGRES_URL"),
        std::env::var("VAULT_TEST_POSTGRES_TLS_URL"),
        std::env::var("VAULT_TEST_POSTGRES_CA"),
    ) else {
        assert!(
            std::env::var_os("VAULT_TEST_REQUIRE_POSTGRES_TLS").is_none(),
            "VAULT_TEST_REQUIRE_POSTGRES_TLS is set but the TLS PostgreSQL is not: see .ci/run"
        );
        println!(
            "SKIP postgres_over_tls…: set VAULT_TEST_POSTGRES_URL, VAULT_TEST_POSTGRES_TLS_URL \
             (a TLS-only role) and VAULT_TEST_POSTGRES_CA (bash .ci/run sets them up with \
             .ci/pg-tls-setup)"
        );
        return;
    };
    let schema = fresh_postgres_schema(&plain, "tls").await;
    let (_, options) = schema.split_once('?').unwrap();
    let url = |host: &str, tls: &str| {
        format!(
            "{}?{options}&{tls}",
            tls_base
                .replace("127.0.0.1", host)
                .replace("@", ":hunter2-PASSMARK@")
        )
    };

    for tls in [
        format!("sslmode=verify-full&sslrootcert={ca}"),
        "sslmode=require".to_owned(),
    ] {
        let srv = server().database(&url("127.0.0.1", &tls)).admin().start();
        let api = srv.client();
        let admin = api.jwt(ADMIN_PASSWORD).await;
        let policies = json!([{"actions": ["vault:read"], "resources": ["x"]}]);
        api.role(&admin, &format!("r{}", tls.len()), policies).await;
        let ready = reqwest::get(srv.url("/ready")).await.unwrap();
        assert_eq!(ready.status(), StatusCode::OK, "{tls}");
    }
    // verify-ca checks the chain only: the name `localhost` is not on the
    // certificate, and it still connects.
    let srv = server()
        .database(&url(
            "localhost",
            &format!("sslmode=verify-ca&sslrootcert={ca}"),
        ))
        .start();
    drop(srv);

    let dir = tempfile::tempdir().unwrap();
    let other_ca = rcgen::generate_simple_self_signed(vec!["other CA".into()]).unwrap();
    let wrong = temp_file(dir.path(), "wrong-ca.pem", &other_ca.cert.pem());
    let refusals = [
        (
            url("127.0.0.1", "sslmode=disable"),
            "no encryption".to_owned(),
        ),
        (
            url(
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={}", wrong.display()),
            ),
            "not signed by the CA in sslrootcert".to_owned(),
        ),
        (
            url(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            "does not name the host".to_owned(),
        ),
        (
            url("127.0.0.1", "sslmode=verify-full"),
            "needs sslrootcert=PATH".to_owned(),
        ),
    ];
    for (db, want) in refusals {
        let out = server().database(&db).fail();
        let err = stderr(&out);
        assert!(err.contains(&want), "{db}: wanted {want:?} in:\n{err}");
        assert!(!err.contains("hunter2"), "the URL's password leaked: {err}");
    }
}

/// Backup and restore on PostgreSQL (issue 23) is PostgreSQL's own
/// `pg_dump`/`pg_restore`, as docs/server.md says: a dump taken while a
/// device keeps pushing restores into a fresh database as one consistent
/// snapshot (every device log whole, no gap), the restored server accepts
/// the old admin token and JWT key, and the device's log continues from
/// the restored head. `vault-server backup` on PostgreSQL names pg_dump.
#[tokio::test]
async fn postgres_is_backed_up_with_pg_dump_while_serving() {
    let Ok(base) = std::env::var("VAULT_TEST_POSTGRES_URL") else {
        println!(
            "SKIP postgres_is_backed_up…: set VAULT_TEST_POSTGRES_URL (bash .ci/run starts one)"
        );
        return;
    };
    let db = fresh_postgres_schema(&base, "dump").await;
    let schema = db.rsplit("%3D").next().unwrap().to_owned();
    let out = cli(&db, &["backup", "--to", "/nonexistent/x"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("pg_dump"), "{}", stderr(&out));

    let srv = server().database(&db).admin().start();
    let api = srv.client();
    let admin = api.jwt(ADMIN_PASSWORD).await;
    create_vault(&api, &admin, "v1").await;
    // Load: two devices push one record at a time while the dump runs.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut pushers = Vec::new();
    for device in ["d1", "d2"] {
        let (api, admin, stop) = (srv.client(), admin.clone(), Arc::clone(&stop));
        pushers.push(tokio::spawn(async move {
            let mut next = 1;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || next < 5 {
                let (s, b) = api
                    .post("/vaults/v1/push", &admin, push_body(device, KEY, next, 1))
                    .await;
                assert_eq!(s, StatusCode::OK, "{b}");
                next += 1;
            }
            next - 1
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("vault.dump");
    let out = tokio::process::Command::new("pg_dump")
        .args(["--format=custom", "--schema", &schema, "--file"])
        .arg(&dump)
        .arg(&base)
        .output()
        .await
        .expect("pg_dump (postgresql-client)");
    assert!(out.status.success(), "{}", stderr(&out));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut pushed = Vec::new();
    for p in pushers {
        pushed.push(p.await.unwrap());
    }
    drop(srv);

    // Into a fresh database.
    let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let fresh = format!("{schema}_restored");
    client
        .batch_execute(&format!("CREATE DATABASE {fresh}"))
        .await
        .unwrap();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    let fresh_url = format!("{prefix}/{fresh}");
    let out = tokio::process::Command::new("pg_restore")
        .args(["--no-owner", "--dbname", &fresh_url])
        .arg(&dump)
        .output()
        .await
        .expect("pg_restore (postgresql-client)");
    assert!(out.status.success(), "{}", stderr(&out));

    let restored = server()
        .database(&format!("{fresh_url}?options=-csearch_path%3D{schema}"))
        .start();
    let api = restored.client();
    // The same admin token and JWT key: an old JWT still works.
    assert_eq!(api.get("/whoami", &admin).await.0, StatusCode::OK);
    // Every device log whole, up to its restored head.
    let heads = whole_logs(&api, &admin, "v1").await;
    for (i, device) in ["d1", "d2"].into_iter().enumerate() {
        let head = heads.get(device).copied().unwrap_or(0);
        assert!(head <= pushed[i], "{device}: {head} > {}", pushed[i]);
        // The device's log goes on from the restored head.
        let (s, b) = api
            .post(
                "/vaults/v1/push",
                &admin,
                push_body(device, KEY, head + 1, 1),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    drop(restored);
    client
        .batch_execute(&format!("DROP DATABASE {fresh} WITH (FORCE)"))
        .await
        .unwrap();
}

/// `backup`/`restore` on SQLite refuse what would lose data or mislead: an
/// existing backup file is never overwritten, a database in use is replaced
/// only with --force, and a file that is not a vault-server backup is
/// refused before anything is touched. The backup is 0600 and restores.
#[test]
fn sqlite_backup_and_restore_refuse_what_would_lose_data() {
    let (dir, db) = temp_sqlite();
    assert!(cli(&db, &["user", "add", "carol"]).status.success());
    let backup = dir.path().join("b.db");
    let b = backup.to_str().unwrap();
    let out = cli(&db, &["backup", "--to", b]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("1 users"), "{}", stdout(&out));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = cli(&db, &["backup", "--to", b]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("never overwrites"),
        "{}",
        stderr(&again)
    );

    let in_use = cli(&db, &["restore", "--from", b]);
    assert_eq!(in_use.status.code(), Some(5), "{}", stderr(&in_use));
    assert!(stderr(&in_use).contains("--force"), "{}", stderr(&in_use));
    assert!(
        cli(&db, &["restore", "--from", b, "--force"])
            .status
            .success()
    );

    let junk = temp_file(dir.path(), "junk", "not a database\n");
    let fresh = format!("sqlite:{}", dir.path().join("fresh.db").display());
    let out = cli(&fresh, &["restore", "--from", junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a SQLite database"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("fresh.db").exists(), "nothing was created");

    let out = cli(&fresh, &["restore", "--from", b]);
    assert!(out.status.success(), "{}", stderr(&out));
    let users = stdout(&cli(&fresh, &["user", "list"]));
    assert!(users.contains("carol"), "{users}");
}

/// An anonymous push's body is never read: the caller is refused (401) as
/// soon as the headers are in, not after the server has waited for and
/// buffered up to a push's size limit from someone it does not know.
#[tokio::test]
async fn an_anonymous_body_is_refused_before_it_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = server().admin().start();
    let mut conn = tokio::net::TcpStream::connect(&srv.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/vaults/v1/push HTTP/1.1\r\nHost: {}\r\n\
         Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{{",
        srv.addr
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut answer))
        .await
        .expect("the server waited for the body of an anonymous push")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}
