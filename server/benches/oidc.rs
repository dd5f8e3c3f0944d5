//! What signing in through an identity provider costs (issue 27's budget:
//! validating an ID token against cached keys adds under 1 ms to a request).
//!
//! 1. In process: `Oidc::verify` of an ID token signed by a real OpenID
//!    provider (panva's oidc-provider, `vault_e2e::oidc`) with RS256, ES256
//!    and EdDSA, keys cached as after the first fetch — beside the server's
//!    own HS256 JWT check every API call already does.
//! 2. Through the real `vault-server` binary on loopback: `POST
//!    /api/v1/auth/oidc` (verify + the sign-in's database write) beside
//!    `POST /api/v1/auth/token` (an access token), and `GET /whoami` with the
//!    JWT each gives (the per-call cost after sign-in).
//!
//! Needs node and `npm ci --prefix tests/oidc`; says so and exits otherwise.
//! Run: `cargo bench -p vault-server --bench oidc`. Prints a markdown table.

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use vault_e2e::oidc::OidcProvider;
use vault_server::crypto::{Claims, JwtKey};
use vault_server::oidc::{Oidc, OidcConfig};

const RUNS: usize = 2000;
const HTTP_RUNS: usize = 300;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn row(what: &str, mut times: Vec<Duration>) -> (f64, f64) {
    times.sort();
    let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
    println!("| {what} | {} | {p50:.1} | {p99:.1} |", times.len());
    (p50, p99)
}

fn config(issuer: &str) -> OidcConfig {
    OidcConfig {
        issuer: issuer.to_owned(),
        client_ids: vec!["vault-cli".into()],
        audiences: vec![],
        username_claim: "preferred_username".into(),
        groups_claim: "groups".into(),
        role_map: vec![("LDAP_ML_TEAM".into(), "ml-team".into())],
        scopes: vec!["openid".into()],
        create_users: true,
        role_ttl: Duration::from_secs(86400),
    }
}

fn id_token(idp: &OidcProvider) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    idp.sign(
        json!({}),
        json!({"iss": idp.issuer(), "aud": "vault-cli", "sub": "alice", "iat": now,
               "exp": now + 3600, "preferred_username": "alice", "groups": ["LDAP_ML_TEAM"]}),
    )
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("| what | runs | p50 µs | p99 µs |");
    println!("|---|---:|---:|---:|");

    // The server's own JWT check, as every API call does it.
    let key = JwtKey::new(&[7u8; 32]);
    let now = 1_800_000_000;
    let jwt = key
        .sign(&Claims {
            iss: "vault-server".into(),
            sub: "alice".into(),
            tid: "0123456789abcdef".into(),
            iat: now,
            exp: now + 600,
        })
        .unwrap();
    let times = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            key.verify(&jwt, now).unwrap();
            t.elapsed()
        })
        .collect();
    row("vault-server JWT (HS256) check, every call", times);

    let mut rs256 = None;
    for alg in ["RS256", "ES256", "EdDSA"] {
        let Some(idp) = OidcProvider::start_with(&[("SIGN_ALG", alg)]) else {
            println!("\n(no OpenID provider: run `npm ci --prefix tests/oidc` first)");
            return;
        };
        let token = id_token(&idp);
        let jwks = idp.jwks();
        let oidc = Oidc::with_cached_jwks(config(idp.issuer()), &jwks).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let times = rt.block_on(async {
            let mut times = Vec::with_capacity(RUNS);
            for _ in 0..RUNS {
                let t = Instant::now();
                oidc.verify(&token, now).await.unwrap();
                times.push(t.elapsed());
            }
            times
        });
        row(&format!("ID token ({alg}) verify, keys cached"), times);
        if alg == "RS256" {
            rs256 = Some(idp);
        }
    }
    let Some(idp) = rs256 else { return };

    // Through the real server.
    rt.block_on(async {
        let mut srv = server()
            .admin()
            .arg("--oidc-issuer")
            .arg(idp.issuer())
            .arg("--oidc-client-id")
            .arg("vault-cli")
            .arg("--oidc-create-users")
            .env("VAULT_SERVER_LOG", "warn")
            .start();
        let api = srv.client();
        let admin = api.jwt(ADMIN_PASSWORD).await;
        let token = api
            .token(
                &admin,
                json!({"name": "bench", "expires_at": "2099-01-01T00:00:00Z"}),
            )
            .await;
        let id = id_token(&idp);
        // Warm: the first ID token fetches the keys.
        let (s, first) = api.call(Method::POST, "/auth/oidc", Some(&id), None).await;
        assert_eq!(s, StatusCode::OK, "{first}");
        let sso_jwt = first["jwt"].as_str().unwrap().to_owned();
        let token_jwt = api.jwt(&token).await;
        let timed = |times: &mut Vec<Duration>, t: Instant| times.push(t.elapsed());
        let (mut by_token, mut by_id, mut who_token, mut who_sso) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..HTTP_RUNS {
            let t = Instant::now();
            let (s, _) = api.exchange(&token).await;
            assert_eq!(s, StatusCode::OK);
            timed(&mut by_token, t);
            let t = Instant::now();
            let (s, _) = api.call(Method::POST, "/auth/oidc", Some(&id), None).await;
            assert_eq!(s, StatusCode::OK);
            timed(&mut by_id, t);
            let t = Instant::now();
            let (s, _) = api.get("/whoami", &token_jwt).await;
            assert_eq!(s, StatusCode::OK);
            timed(&mut who_token, t);
            let t = Instant::now();
            let (s, _) = api.get("/whoami", &sso_jwt).await;
            assert_eq!(s, StatusCode::OK);
            timed(&mut who_sso, t);
        }
        let (t50, t99) = row("POST /auth/token (access token → JWT), HTTP", by_token);
        let (i50, i99) = row("POST /auth/oidc (RS256 ID token → JWT), HTTP", by_id);
        let (w50, w99) = row("GET /whoami, access-token JWT, HTTP", who_token);
        let (s50, s99) = row("GET /whoami, SSO JWT, HTTP", who_sso);
        println!();
        println!(
            "sign-in by ID token vs by access token: {:+.0} µs p50, {:+.0} µs p99; \
             a call with an SSO JWT vs an access-token JWT: {:+.0} µs p50, {:+.0} µs p99",
            i50 - t50,
            i99 - t99,
            s50 - w50,
            s99 - w99
        );
        srv.stop();
    });
}
