//! The whole API, one story, against each storage backend: SQLite always,
//! PostgreSQL when `VAULT_TEST_POSTGRES_URL` is set (each run in a fresh
//! schema, so runs never see each other's rows). Two servers share the
//! database, as in a horizontally scaled deployment.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn story_sqlite() {
    let (_dir, url) = temp_sqlite();
    story(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn story_postgres() {
    let Ok(base) = std::env::var("VAULT_TEST_POSTGRES_URL") else {
        println!(
            "SKIP postgres story: set VAULT_TEST_POSTGRES_URL=postgres://… (bash .ci/run starts one)"
        );
        return;
    };
    let url = fresh_postgres_schema(&base, "story").await;
    story(&url).await;
}

async fn story(database: &str) {
    let mut a = server().database(database).admin().start();
    let api = a.client();
    let mut secrets: Vec<String> = vec![ADMIN_PASSWORD.to_owned()];

    // The default admin's password is its first access token.
    let admin = api.jwt(ADMIN_PASSWORD).await;
    secrets.push(admin.clone());
    let (s, me) = api.get("/whoami", &admin).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        me,
        json!({"user": "admin", "token": "bootstrap-password", "roles": ["admin"]})
    );
    let (s, health) = api.call(reqwest::Method::GET, "/health", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let backend = if database.starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    };
    assert_eq!(health["backend"], backend);

    // Roles and a user.
    api.role(
        &admin,
        "team-writer",
        json!([{"actions": ["vault:read", "vault:write"], "resources": ["team-*"]}]),
    )
    .await;
    api.role(
        &admin,
        "team-creator",
        json!([{"actions": ["vault:admin"], "resources": ["team-*"]},
               {"actions": ["token:create"], "resources": ["*"]}]),
    )
    .await;
    api.user(&admin, "alice", &["team-writer", "team-creator"])
        .await;
    let (s, roles) = api.get("/roles", &admin).await;
    assert_eq!(s, StatusCode::OK);
    let names: Vec<&str> = roles["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "team-creator", "team-writer"]);
    assert_error(
        &api.post("/users", &admin, json!({"name": "alice"})).await,
        409,
        "already_exists",
    );

    // Alice's first token comes from the admin CLI, on the same database
    // while the server runs.
    let out = cli(
        database,
        &[
            "token",
            "add",
            "--user",
            "alice",
            "laptop",
            "--description",
            "first",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let alice_token = stdout(&out).trim().to_owned();
    assert!(alice_token.starts_with("vlt_"), "{alice_token}");
    secrets.push(alice_token.clone());
    let alice = api.jwt(&alice_token).await;
    secrets.push(alice.clone());

    // Vaults: create within her prefix only.
    let identity = b"age-encryption.org/v1 passphrase-wrapped identity".to_vec();
    let (s, v) = api
        .post(
            "/vaults",
            &alice,
            json!({"id": "team-a", "key_id": "age1teamkey", "identity": b64(&identity)}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let err = assert_error(
        &api.post(
            "/vaults",
            &alice,
            json!({"id": "other", "key_id": "k", "identity": b64(b"x")}),
        )
        .await,
        403,
        "forbidden",
    );
    assert_eq!(err["action"], "vault:admin");
    assert_error(
        &api.post(
            "/vaults",
            &alice,
            json!({"id": "team-a", "key_id": "k", "identity": b64(b"x")}),
        )
        .await,
        409,
        "already_exists",
    );
    let (s, v) = api.get("/vaults/team-a", &alice).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(unb64(v["identity"].as_str().unwrap()), identity);
    assert_eq!(v["key_id"], "age1teamkey");

    // Push: two devices, a gap, a wrong key.
    let key = "age1teamkey";
    let (s, p) = api
        .post("/vaults/team-a/push", &alice, push_body("d1", key, 1, 3))
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p, json!({"device_id": "d1", "head": 3}));
    let (s, _) = api
        .post("/vaults/team-a/push", &alice, push_body("d2", key, 1, 2))
        .await;
    assert_eq!(s, StatusCode::OK);
    let err = assert_error(
        &api.post("/vaults/team-a/push", &alice, push_body("d1", key, 5, 1))
            .await,
        409,
        "index_conflict",
    );
    assert_eq!(err["expected_index"], 4);
    assert_error(
        &api.post(
            "/vaults/team-a/push",
            &alice,
            push_body("d1", "age1other", 4, 1),
        )
        .await,
        422,
        "key_mismatch",
    );

    // Pull in pages of 2.
    let mut since = serde_json::Map::new();
    let mut got: Vec<(String, u64, Vec<u8>)> = Vec::new();
    loop {
        let (s, page) = api
            .post(
                "/vaults/team-a/pull",
                &alice,
                json!({"since": since, "limit": 2}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{page}");
        assert_eq!(page["heads"], json!({"d1": 3, "d2": 2}));
        let records = page["records"].as_array().unwrap();
        assert!(records.len() <= 2);
        for r in records {
            let d = r["device_id"].as_str().unwrap().to_owned();
            let i = r["index"].as_u64().unwrap();
            assert_eq!(r["key_id"], key);
            since.insert(d.clone(), json!(i));
            got.push((d, i, unb64(r["data"].as_str().unwrap())));
        }
        if !page["more"].as_bool().unwrap() {
            break;
        }
        assert!(!records.is_empty(), "more=true with an empty page");
    }
    let expect: Vec<(String, u64, Vec<u8>)> =
        [("d1", 1), ("d1", 2), ("d1", 3), ("d2", 1), ("d2", 2)]
            .iter()
            .map(|(d, i)| (d.to_string(), *i, format!("{d}#{i}").into_bytes()))
            .collect();
    assert_eq!(got, expect);
    let (s, h) = api.get("/vaults/team-a/heads", &alice).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h, json!({"heads": {"d1": 3, "d2": 2}}));

    // A narrower token: a subset of her roles; asking for more is refused.
    let narrow = api
        .token(&alice, json!({"name": "sync", "roles": ["team-writer"]}))
        .await;
    secrets.push(narrow.clone());
    assert_error(
        &api.post(
            "/tokens",
            &alice,
            json!({"name": "evil", "roles": ["admin"]}),
        )
        .await,
        403,
        "role_not_held",
    );
    let narrow_jwt = api.jwt(&narrow).await;
    secrets.push(narrow_jwt.clone());
    let (_, me) = api.get("/whoami", &narrow_jwt).await;
    assert_eq!(me["roles"], json!(["team-writer"]));
    let err = assert_error(
        &api.post(
            "/vaults",
            &narrow_jwt,
            json!({"id": "team-b", "key_id": "k", "identity": b64(b"x")}),
        )
        .await,
        403,
        "forbidden",
    );
    assert_eq!(err["action"], "vault:admin");
    // The narrow token cannot mint tokens (it lacks token:create).
    let err = assert_error(
        &api.post("/tokens", &narrow_jwt, json!({"name": "x"})).await,
        403,
        "forbidden",
    );
    assert_eq!(err["action"], "token:create");

    // A second server on the same database accepts the first one's JWTs
    // and sees the same logs.
    let b = server().database(database).start();
    let api_b = b.client();
    let (s, p) = api_b
        .post(
            "/vaults/team-a/push",
            &narrow_jwt,
            push_body("d1", key, 4, 2),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["head"], 5);
    let err = assert_error(
        &api.post("/vaults/team-a/push", &alice, push_body("d1", key, 4, 1))
            .await,
        409,
        "index_conflict",
    );
    assert_eq!(err["expected_index"], 6);

    // Taking a role from the user takes it from every token at once.
    let (s, _) = api.delete("/users/alice/roles/team-writer", &admin).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, me) = api_b.get("/whoami", &narrow_jwt).await;
    assert_eq!(me["roles"], json!([]));
    let err = assert_error(
        &api.post(
            "/vaults/team-a/push",
            &narrow_jwt,
            push_body("d1", key, 6, 1),
        )
        .await,
        403,
        "forbidden",
    );
    assert_eq!(err["action"], "vault:write");
    // Granting it back does not silently widen old tokens again.
    let (s, _) = api
        .post("/users/alice/roles", &admin, json!({"role": "team-writer"}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, me) = api.get("/whoami", &narrow_jwt).await;
    assert_eq!(me["roles"], json!([]));
    let (_, me) = api.get("/whoami", &alice).await;
    assert_eq!(me["roles"], json!(["team-creator"]));
    let (_, u) = api.get("/users", &admin).await;
    assert_eq!(
        u["users"][1]["roles"],
        json!(["team-creator", "team-writer"])
    );

    // Tokens: list (no secrets), revoke, and the JWT dies with its token.
    let (s, list) = api.get("/tokens", &alice).await;
    assert_eq!(s, StatusCode::OK);
    let names: Vec<&str> = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["laptop", "sync"]);
    assert!(!list.to_string().contains(&narrow));
    let (s, _) = api.delete("/tokens/sync", &alice).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_error(&api.get("/whoami", &narrow_jwt).await, 401, "unauthorized");
    assert_error(&api.exchange(&narrow).await, 401, "unauthorized");
    // Alice cannot see or revoke another user's tokens; the admin can.
    let err = assert_error(
        &api.get("/tokens?user=admin", &alice).await,
        403,
        "forbidden",
    );
    assert_eq!(err["action"], "user:admin");
    let (s, list) = api.get("/tokens?user=alice", &admin).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["tokens"].as_array().unwrap().len(), 1);

    // Users: list, delete (their tokens go too).
    let (s, users) = api.get("/users", &admin).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(users["users"].as_array().unwrap().len(), 2);
    assert_eq!(users["users"][1]["name"], "alice");
    let (s, _) = api.delete("/users/alice", &admin).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_error(&api.get("/whoami", &alice).await, 401, "unauthorized");
    assert_error(&api.exchange(&alice_token).await, 401, "unauthorized");
    let (s, _) = api.delete("/roles/team-creator", &admin).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_error(
        &api.delete("/roles/team-creator", &admin).await,
        404,
        "not_found",
    );

    // The records are still there for the admin.
    let (s, page) = api
        .post(
            "/vaults/team-a/pull",
            &admin,
            json!({"since": {"d1": 4, "d2": 2}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(page["records"].as_array().unwrap().len(), 1);
    assert_eq!(page["more"], false);

    // No secret ever reached a log.
    let logs = format!("{}{}", a.log(), b.log());
    assert!(
        logs.contains("listening") || logs.contains("serving"),
        "{logs}"
    );
    for s in &secrets {
        assert!(
            !logs.contains(s.as_str()),
            "a secret reached the server log"
        );
    }
    a.stop();
    let _ = Value::Null;
}
