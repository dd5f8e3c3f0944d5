//! Sign-in through a real OpenID provider (panva's oidc-provider, started on
//! loopback by `vault_e2e::oidc`): device-code login, users created at first
//! sign-in, groups mapped to roles and re-evaluated at every refresh, a user
//! disabled at the IdP, the IdP's key rotated and the IdP down, and forged
//! tokens (wrong audience or issuer, expired, `alg: none`, HS256 keyed with
//! the IdP's public key, another person's subject). SQLite always,
//! PostgreSQL when `VAULT_TEST_POSTGRES_URL` is set.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use vault_e2e::oidc::{DEVICE_CODE_GRANT, OidcProvider, jwt_parts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_through_the_identity_provider_sqlite() {
    let Some(idp) = OidcProvider::start() else {
        return;
    };
    let (_dir, url) = temp_sqlite();
    story(idp, &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_through_the_identity_provider_postgres() {
    let Ok(base) = std::env::var("VAULT_TEST_POSTGRES_URL") else {
        println!(
            "SKIP postgres oidc: set VAULT_TEST_POSTGRES_URL=postgres://… (bash .ci/run starts one)"
        );
        return;
    };
    let Some(idp) = OidcProvider::start() else {
        return;
    };
    let url = fresh_postgres_schema(&base, "oidc").await;
    story(idp, &url).await;
}

fn oidc_server(idp: &OidcProvider, database: &str, create_users: bool) -> ServerBuilder {
    let mut b = server()
        .database(database)
        .arg("--oidc-issuer")
        .arg(idp.issuer())
        .arg("--oidc-client-id")
        .arg("vault-cli")
        .arg("--oidc-role-map")
        .arg("LDAP_ML_TEAM=ml-team")
        .arg("--oidc-role-map")
        .arg("LDAP_OPS=ops");
    if create_users {
        b = b.arg("--oidc-create-users");
    }
    b
}

async fn exchange_id(api: &Api, id_token: &str) -> (StatusCode, Value) {
    api.call(Method::POST, "/auth/oidc", Some(id_token), None)
        .await
}

async fn sso_jwt(api: &Api, id_token: &str) -> String {
    let (s, b) = exchange_id(api, id_token).await;
    assert_eq!(s, StatusCode::OK, "ID token exchange failed: {b}");
    b["jwt"].as_str().unwrap().to_owned()
}

async fn roles_of(api: &Api, jwt: &str) -> Value {
    let (s, me) = api.get("/whoami", jwt).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    me["roles"].clone()
}

async fn user_row(api: &Api, admin: &str, name: &str) -> Value {
    let (s, list) = api.get("/users", admin).await;
    assert_eq!(s, StatusCode::OK);
    list["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// A 401 whose message names `check` and never echoes `token`.
fn assert_refused(got: &(StatusCode, Value), check: &str, token: &str) {
    let e = assert_error(got, 401, "unauthorized");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains(check), "{msg:?} does not name {check:?}");
    assert!(!msg.contains(token), "the refusal echoed the token: {msg}");
    let (_, sig) = token.rsplit_once('.').unwrap_or(("", token));
    assert!(
        sig.len() < 8 || !msg.contains(sig),
        "echoed the signature: {msg}"
    );
}

async fn story(mut idp: OidcProvider, database: &str) {
    let mut a = oidc_server(&idp, database, true).admin().start();
    let api = a.client();
    let mut secrets: Vec<String> = Vec::new();
    let admin = api.jwt(ADMIN_PASSWORD).await;
    api.role(
        &admin,
        "ml-team",
        json!([
            {"actions": ["vault:read", "vault:write", "vault:admin"], "resources": ["ml-*"]},
            {"actions": ["token:create"], "resources": ["*"]}
        ]),
    )
    .await;
    api.role(
        &admin,
        "ops",
        json!([{"actions": ["vault:read"], "resources": ["*"]}]),
    )
    .await;
    api.role(
        &admin,
        "auditor",
        json!([{"actions": ["vault:read"], "resources": ["audit-*"]}]),
    )
    .await;

    // What a device asks before it signs in.
    let (s, info) = api.call(Method::GET, "/auth/oidc", None, None).await;
    assert_eq!(s, StatusCode::OK, "{info}");
    assert_eq!(info["issuer"], idp.issuer());
    assert_eq!(info["client_id"], "vault-cli");
    assert!(
        info["scopes"]
            .as_array()
            .unwrap()
            .contains(&json!("openid"))
    );

    // Device-code login at the IdP; alice does not exist yet: created at
    // her first sign-in, with the role her group maps to.
    let login = idp.login("alice");
    let id_token = login["id_token"].as_str().unwrap().to_owned();
    let refresh = login["refresh_token"].as_str().unwrap().to_owned();
    secrets.extend([id_token.clone(), refresh.clone()]);
    assert!(user_row(&api, &admin, "alice").await.is_null());
    let first_fetch = Instant::now();
    let alice = sso_jwt(&api, &id_token).await;
    secrets.push(alice.clone());
    let (_, me) = api.get("/whoami", &alice).await;
    assert_eq!(
        me,
        json!({"user": "alice", "token": "sso", "roles": ["ml-team"]})
    );
    let row = user_row(&api, &admin, "alice").await;
    assert_eq!(row["sso"], true, "{row}");
    assert_eq!(row["roles"], json!([]));
    assert_eq!(row["sso_roles"], json!(["ml-team"]));
    assert_eq!(row["last_login"]["via"], "sso");
    // Her role works: a vault under ml-*, none elsewhere.
    let (s, b) = api
        .post(
            "/vaults",
            &alice,
            json!({"id": "ml-team-vault", "key_id": "k1", "identity": b64(b"opaque")}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let denied = api
        .post(
            "/vaults",
            &alice,
            json!({"id": "other", "key_id": "k1", "identity": b64(b"opaque")}),
        )
        .await;
    assert_error(&denied, 403, "forbidden");

    // A device code cannot be redeemed again (the IdP then revokes what it
    // granted, so bob's, not alice's).
    let bob = idp.login("bob");
    secrets.push(bob["id_token"].as_str().unwrap().to_owned());
    let device_code = bob["device_code"].as_str().unwrap();
    let (s, again) = idp.token_request(&[
        ("grant_type", DEVICE_CODE_GRANT),
        ("device_code", device_code),
    ]);
    assert_eq!(s, 400, "{again}");
    assert_eq!(again["error"], "invalid_grant");

    // Automation: an access token minted by the SSO user, with a subset of
    // her roles and an expiry, exchanged like any other.
    let bot = api
        .token(
            &alice,
            json!({"name": "ci-bot", "roles": ["ml-team"], "expires_at": "2099-01-01T00:00:00Z"}),
        )
        .await;
    secrets.push(bot.clone());
    let bot_jwt = api.jwt(&bot).await;
    assert_eq!(roles_of(&api, &bot_jwt).await, json!(["ml-team"]));
    let over = api
        .post("/tokens", &alice, json!({"name": "x", "roles": ["ops"]}))
        .await;
    assert_error(&over, 403, "role_not_held");

    // Roles granted in the database combine with the mapped ones.
    let (s, b) = api
        .post("/users/alice/roles", &admin, json!({"role": "auditor"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(roles_of(&api, &alice).await, json!(["auditor", "ml-team"]));

    // A group added and another removed at the IdP: the roles follow at the
    // next refresh, and the automation token loses the role too.
    idp.set_groups("alice", &["LDAP_OPS"]);
    let (s, refreshed) = idp.refresh(&refresh);
    assert_eq!(s, 200, "{refreshed}");
    let id_token = refreshed["id_token"].as_str().unwrap().to_owned();
    let refresh = refreshed["refresh_token"].as_str().unwrap().to_owned();
    secrets.extend([id_token.clone(), refresh.clone()]);
    let alice = sso_jwt(&api, &id_token).await;
    assert_eq!(roles_of(&api, &alice).await, json!(["auditor", "ops"]));
    assert_eq!(roles_of(&api, &bot_jwt).await, json!([]));
    let row = user_row(&api, &admin, "alice").await;
    assert_eq!(row["roles"], json!(["auditor"]));
    assert_eq!(row["sso_roles"], json!(["ops"]));

    // Forged and foreign tokens, each refused by its own check.
    let claims = |over: Value| {
        let (_, mut c) = jwt_parts(&id_token);
        for (k, v) in over.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let now = jwt_parts(&id_token).1["iat"].as_i64().unwrap();
    let cases = [
        (
            json!({}),
            claims(json!({"aud": "someone-else"})),
            "wrong audience",
        ),
        (
            json!({}),
            claims(json!({"iss": "https://evil.example.test"})),
            "wrong issuer",
        ),
        (
            json!({}),
            claims(json!({"iat": now - 7200, "exp": now - 3600})),
            "expired",
        ),
        (
            json!({"alg": "none"}),
            claims(json!({})),
            "alg 'none' is never accepted",
        ),
        (
            json!({"alg": "HS256"}),
            claims(json!({})),
            "alg 'HS256' is not accepted",
        ),
        (
            json!({}),
            claims(json!({"sub": "mallory"})),
            "belongs to another identity-provider account",
        ),
        // A new IdP account claiming the bootstrap admin's name: a user
        // with access tokens (or a password) is never bound by name.
        (
            json!({}),
            claims(json!({"sub": "mallory", "preferred_username": "admin"})),
            "signs in with access tokens",
        ),
        // Another client's access token naming this client among several.
        (
            json!({}),
            claims(json!({"aud": ["grafana", "vault-cli"], "azp": "grafana"})),
            "issued to client 'grafana'",
        ),
    ];
    for (header, c, check) in cases {
        let forged = idp.sign(header, c);
        assert_refused(&exchange_id(&api, &forged).await, check, &forged);
    }
    // Renamed at the IdP: the binding to alice's account decides, not the
    // name the token now claims.
    let renamed = idp.sign(json!({}), claims(json!({"preferred_username": "carol"})));
    let as_alice = sso_jwt(&api, &renamed).await;
    let (_, me) = api.get("/whoami", &as_alice).await;
    assert_eq!(me["user"], "alice", "{me}");

    // A new IdP account of the same person (another sub, alice's name):
    // refused, with the command an admin runs to move her user to it.
    let account = |sub: &str| format!("{} {sub}", idp.issuer());
    let new_account = idp.sign(json!({}), claims(json!({"sub": "alice-2"})));
    secrets.push(new_account.clone());
    let refused = exchange_id(&api, &new_account).await;
    assert_refused(
        &refused,
        &format!("vault-server user bind alice '{}'", account("alice-2")),
        &new_account,
    );
    // An account another user holds cannot be bound; nor can a user that
    // does not exist, or something that is no account.
    let bob_token = idp.login("bob")["id_token"].as_str().unwrap().to_owned();
    secrets.push(bob_token.clone());
    sso_jwt(&api, &bob_token).await;
    let taken = cli(database, &["user", "bind", "bob", &account("alice")]);
    assert!(!taken.status.success());
    assert!(
        stderr(&taken).contains("bound to user 'alice'"),
        "{}",
        stderr(&taken)
    );
    let nobody = cli(database, &["user", "bind", "nobody", &account("x")]);
    assert!(!nobody.status.success());
    assert!(
        stderr(&nobody).contains("no user 'nobody'"),
        "{}",
        stderr(&nobody)
    );
    let shape = cli(database, &["user", "bind", "alice", "alice-2"]);
    assert_eq!(shape.status.code(), Some(2));
    assert!(stderr(&shape).contains("ISSUER SUB"), "{}", stderr(&shape));
    // Moved: the roles her old account mapped are gone until she signs in
    // with the new one; the old account is refused now.
    let moved = cli(database, &["user", "bind", "alice", &account("alice-2")]);
    assert!(moved.status.success(), "{}", stderr(&moved));
    assert_eq!(roles_of(&api, &alice).await, json!(["auditor"]));
    let as_alice = sso_jwt(&api, &new_account).await;
    assert_eq!(roles_of(&api, &as_alice).await, json!(["auditor", "ops"]));
    let old = exchange_id(&api, &id_token).await;
    assert_refused(
        &old,
        "belongs to another identity-provider account",
        &id_token,
    );
    let back = cli(database, &["user", "bind", "alice", &account("alice")]);
    assert!(back.status.success(), "{}", stderr(&back));
    // Unbound, a user without access tokens binds again at the next
    // sign-in under its name: here bob's new account.
    let freed = cli(database, &["user", "unbind", "bob"]);
    assert!(freed.status.success(), "{}", stderr(&freed));
    let bob_2 = idp.sign(
        json!({}),
        claims(json!({"sub": "bob-2", "preferred_username": "bob", "groups": []})),
    );
    secrets.push(bob_2.clone());
    let bob_jwt = sso_jwt(&api, &bob_2).await;
    let (_, me) = api.get("/whoami", &bob_jwt).await;
    assert_eq!(me["user"], "bob", "{me}");
    assert_refused(
        &exchange_id(&api, &bob_token).await,
        &format!("vault-server user bind bob '{}'", account("bob")),
        &bob_token,
    );

    // The HS256 forgery really was keyed with the IdP's public key.
    assert!(idp.public_pem().contains("PUBLIC KEY"));
    let garbage = exchange_id(&api, "not-a-token").await;
    assert_refused(&garbage, "not an ID token", "not-a-token");

    // The IdP rotates its signing key: the next token names a kid this
    // server has not seen; it fetches the JWKS again, without a restart
    // (once the refetch cooldown since its last fetch has passed).
    let old_kid = jwt_parts(&id_token).0["kid"].clone();
    let new_kid = idp.rotate_drop_old();
    assert_ne!(json!(new_kid), old_kid);
    let cooldown = Duration::from_secs(11);
    if let Some(left) = cooldown.checked_sub(first_fetch.elapsed()) {
        tokio::time::sleep(left).await;
    }
    let (s, refreshed) = idp.refresh(&refresh);
    assert_eq!(s, 200, "{refreshed}");
    let id_token = refreshed["id_token"].as_str().unwrap().to_owned();
    let refresh = refreshed["refresh_token"].as_str().unwrap().to_owned();
    secrets.extend([id_token.clone(), refresh.clone()]);
    assert_eq!(jwt_parts(&id_token).0["kid"], json!(new_kid));
    // A kid the IdP does not have, after the cooldown: the keys are fetched
    // again (the new one among them) and the token is refused.
    let never_kid = |n: &str| idp.sign(json!({"kid": n}), jwt_parts(&id_token).1);
    let forged = never_kid("kid-never-seen");
    secrets.push(forged.clone());
    assert_refused(
        &exchange_id(&api, &forged).await,
        "signing key 'kid-never-seen' is not among",
        &forged,
    );
    let alice = sso_jwt(&api, &id_token).await;
    assert_eq!(roles_of(&api, &alice).await, json!(["auditor", "ops"]));
    // Within the cooldown an unknown kid may be a rotation the cached keys
    // predate: try again (503), not "sign in again" (401).
    let forged = never_kid("kid-rotated-since");
    let soon = exchange_id(&api, &forged).await;
    let e = assert_error(&soon, 503, "unavailable");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("try again") && !msg.contains(&forged), "{e}");
    secrets.push(forged);

    // Without --oidc-create-users, only users an admin made may sign in; an
    // admin-made user binds to its IdP account at its first sign-in and is
    // the same kind of user.
    let mut b = oidc_server(&idp, database, false)
        .arg("--oidc-role-ttl")
        .arg("3s")
        .start();
    let api_b = b.client();
    let carol_token = idp.login("carol")["id_token"].as_str().unwrap().to_owned();
    secrets.push(carol_token.clone());
    let no_user = exchange_id(&api_b, &carol_token).await;
    assert_refused(&no_user, "no vault-server user 'carol'", &carol_token);
    api.user(&admin, "carol", &["auditor"]).await;
    let carol = sso_jwt(&api_b, &carol_token).await;
    assert_eq!(
        roles_of(&api_b, &carol).await,
        json!(["auditor", "ml-team", "ops"])
    );
    let row = user_row(&api, &admin, "carol").await;
    assert_eq!(row["sso"], true, "{row}");
    // Mapped roles are a lease (server B: --oidc-role-ttl 3s): carol's
    // automation token keeps ml-team only while she keeps signing in.
    let carol_bot = api_b
        .token(
            &carol,
            json!({"name": "carol-bot", "roles": ["auditor", "ml-team"]}),
        )
        .await;
    secrets.push(carol_bot.clone());
    let carol_bot = api_b.jwt(&carol_bot).await;
    assert_eq!(
        roles_of(&api_b, &carol_bot).await,
        json!(["auditor", "ml-team"])
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(roles_of(&api_b, &carol_bot).await, json!(["auditor"]));
    // Her own session still holds them until its JWT ends.
    assert_eq!(
        roles_of(&api_b, &carol).await,
        json!(["auditor", "ml-team", "ops"])
    );

    // A user disabled at the IdP cannot refresh: no new ID token, so no new
    // JWT once the current one expires.
    idp.disable("alice");
    let (s, gone) = idp.refresh(&refresh);
    assert_eq!(s, 400, "{gone}");
    assert_eq!(gone["error"], "invalid_grant");

    // The IdP goes down: sessions live on (JWTs, and ID tokens already
    // issued still verify with the cached keys); a token signed with a key
    // this server never saw fails clearly, as a 503, not a 401.
    let carol_next = idp.login("carol")["id_token"].as_str().unwrap().to_owned();
    let unknown_kid = idp.sign(json!({"kid": "kid-never-seen"}), jwt_parts(&carol_next).1);
    secrets.extend([carol_next.clone(), unknown_kid.clone()]);
    idp.stop();
    assert_eq!(roles_of(&api, &alice).await, json!(["auditor", "ops"]));
    sso_jwt(&api_b, &carol_next).await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    let down = exchange_id(&api_b, &unknown_kid).await;
    let e = assert_error(&down, 503, "unavailable");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("identity provider cannot be reached"),
        "{e}"
    );

    // Sign-ins show in the admin's list.
    let out = cli(database, &["user", "list"]);
    let text = stdout(&out);
    assert!(text.contains("SIGN-IN"), "{text}");
    let alice_line = text.lines().find(|l| l.starts_with("alice ")).unwrap();
    assert!(
        alice_line.contains(" sso ") && alice_line.contains("ops(sso)"),
        "{alice_line}"
    );
    let admin_line = text.lines().find(|l| l.starts_with("admin ")).unwrap();
    assert!(
        admin_line.contains(" token ") && admin_line.contains("password"),
        "{admin_line}"
    );

    // No token the IdP issued, and no JWT, reaches a log.
    let logs = format!("{}{}", a.log(), b.log());
    for s in &secrets {
        assert!(
            !logs.contains(s.as_str()),
            "a secret reached the server log"
        );
        let sig = s.rsplit('.').next().unwrap();
        assert!(
            !logs.contains(sig),
            "a token signature reached the server log"
        );
    }
    a.stop();
    b.stop();
}

/// Without --oidc-issuer the OIDC endpoints say how to sign in instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_identity_provider_sign_in_says_to_use_a_token() {
    let mut a = server().admin().start();
    let api = a.client();
    for got in [
        api.call(Method::GET, "/auth/oidc", None, None).await,
        api.call(Method::POST, "/auth/oidc", Some("a.b.c"), None)
            .await,
    ] {
        let e = assert_error(&got, 404, "not_found");
        assert!(
            e["message"].as_str().unwrap().contains("--oidc-issuer"),
            "{e}"
        );
    }
    a.stop();
}

/// Bad settings stop the server at start with a message naming the flag.
#[test]
fn bad_oidc_settings_are_refused_at_start() {
    for (args, want) in [
        (
            vec![
                "--oidc-issuer",
                "http://idp.example.test",
                "--oidc-client-id",
                "c",
            ],
            "must be an https:// URL",
        ),
        (
            vec!["--oidc-issuer", "https://idp.example.test"],
            "--oidc-client-id",
        ),
        (
            vec![
                "--oidc-issuer",
                "https://idp.example.test",
                "--oidc-client-id",
                "c",
                "--oidc-role-map",
                "G=not a role",
            ],
            "role",
        ),
    ] {
        let mut b = server();
        for a in &args {
            b = b.arg(*a);
        }
        let out = b.fail();
        let err = stderr(&out);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
