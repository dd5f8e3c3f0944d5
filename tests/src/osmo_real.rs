//! The real OSMO credential service (`../shared/osmo/run.sh`) as the tests
//! use it: found through the environment, one OSMO user of its own per
//! test (made with the admin token, so listings never meet another test's
//! credentials, and removed again at the end), and calls made as OSMO's own
//! client would make them, to set up the platform behind the vault's back.
//!
//! ```sh
//! bash ../shared/osmo/run.sh    # prints OSMO_URL=… OSMO_TOKEN_FILE=…
//! export VAULT_TEST_OSMO_URL=http://127.0.0.1:58080
//! export VAULT_TEST_OSMO_ADMIN_TOKEN_FILE=/tmp/osmo-real/etc/admin-token
//! ```
//!
//! Without them a test says `SKIP …` and passes, unless
//! `VAULT_TEST_REQUIRE_OSMO=1` (set by `.ci/run`), which makes it fail.

use serde_json::{Value, json};

use crate::osmo::{Resp, date_in_days, http};

/// The environment variable with the service's URL (the gateway's).
pub const URL_ENV: &str = "VAULT_TEST_OSMO_URL";
/// The environment variable with the path of the admin's access token.
pub const ADMIN_ENV: &str = "VAULT_TEST_OSMO_ADMIN_TOKEN_FILE";
/// Set to `1` to fail, not skip, when the service is not there.
pub const REQUIRE_ENV: &str = "VAULT_TEST_REQUIRE_OSMO";

/// The service and its admin token, or `None` (with a `SKIP` line) when the
/// environment does not name them. Panics when `VAULT_TEST_REQUIRE_OSMO=1`.
pub fn service(test: &str) -> Option<(String, String)> {
    let url = std::env::var(URL_ENV).ok().filter(|u| !u.is_empty());
    let admin = std::env::var(ADMIN_ENV)
        .ok()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    match (url, admin) {
        (Some(url), Some(admin)) => Some((url.trim_end_matches('/').to_owned(), admin)),
        _ => {
            let how = format!(
                "run 'bash ../shared/osmo/run.sh', then set {URL_ENV}=http://127.0.0.1:58080 and \
                 {ADMIN_ENV}=/tmp/osmo-real/etc/admin-token"
            );
            assert!(
                std::env::var(REQUIRE_ENV).as_deref() != Ok("1"),
                "{test}: the real OSMO service is required ({REQUIRE_ENV}=1): {how}"
            );
            eprintln!("SKIP {test}: no real OSMO service: {how}");
            None
        }
    }
}

/// `host:port` of an `http://host:port` URL.
pub fn addr_of(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

/// Exchanges an access token for a JWT (no client version header).
pub fn exchange(addr: &str, pat: &str) -> String {
    let r = http(
        addr,
        "POST",
        "/api/auth/jwt/access_token",
        &[],
        &json!({ "token": pat }).to_string(),
    );
    r.expect(200);
    r.json()["token"].as_str().unwrap().to_owned()
}

/// A user of the real service made for one test; deleted, with every
/// credential it holds, on drop.
#[derive(Debug)]
pub struct OsmoUser {
    /// The gateway's URL.
    pub url: String,
    /// Its `host:port`.
    pub addr: String,
    /// The user's id.
    pub id: String,
    /// Its access token.
    pub token: String,
    /// The name of that token on the platform.
    pub token_name: String,
    admin: String,
    /// A JWT of this user and when it was issued (the service takes about
    /// a second per exchange; a JWT lives 300 s).
    jwt: std::sync::Mutex<Option<(String, std::time::Instant)>>,
}

impl OsmoUser {
    /// A new user (role `osmo-user`) with an access token that expires in
    /// `days` days; `None` when the service is not configured (see
    /// [`service`]).
    pub fn new(test: &str, days: i64) -> Option<Self> {
        let (url, admin) = service(test)?;
        let addr = addr_of(&url);
        let admin_jwt = exchange(&addr, &admin);
        let auth = format!("Bearer {admin_jwt}");
        let id = format!("vt-{:012x}", crate::unique() & 0xffff_ffff_ffff);
        http(
            &addr,
            "POST",
            "/api/auth/user",
            &[("Authorization", &auth)],
            &json!({"id": id, "roles": ["osmo-user"]}).to_string(),
        )
        .expect(200);
        let token_name = format!("t{:08x}", crate::unique() & 0xffff_ffff);
        let r = http(
            &addr,
            "POST",
            &format!(
                "/api/auth/user/{id}/access_token/{token_name}?expires_at={}",
                date_in_days(days)
            ),
            &[("Authorization", &auth)],
            "",
        );
        if r.status != 200 {
            // No user left behind in the service's database.
            http(
                &addr,
                "DELETE",
                &format!("/api/auth/user/{id}"),
                &[("Authorization", &auth)],
                "",
            );
            panic!("the service made no access token for {id}: {}", r.text);
        }
        let token = r.json().as_str().unwrap().to_owned();
        Some(Self {
            url,
            addr,
            id,
            token,
            token_name,
            admin,
            jwt: std::sync::Mutex::new(None),
        })
    }

    /// A JWT of this user, with at least a minute left.
    pub fn jwt(&self) -> String {
        let mut slot = self.jwt.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some((jwt, at)) if at.elapsed() < std::time::Duration::from_secs(240) => jwt.clone(),
            _ => {
                let jwt = exchange(&self.addr, &self.token);
                *slot = Some((jwt.clone(), std::time::Instant::now()));
                jwt
            }
        }
    }

    /// A call as this user, as OSMO's own client makes it (`version`:
    /// the `x-osmo-client-version` it sends, if any).
    pub fn call(&self, method: &str, path: &str, version: Option<&str>, body: &str) -> Resp {
        let auth = format!("Bearer {}", self.jwt());
        let mut headers = vec![("Authorization", auth.as_str())];
        if let Some(v) = version {
            headers.push(("x-osmo-client-version", v));
        }
        http(&self.addr, method, path, &headers, body)
    }

    /// `(cred_name, cred_type, profile)` of every credential the platform
    /// holds for this user.
    pub fn list(&self) -> Vec<(String, String, String)> {
        let r = self.call("GET", "/api/credentials", None, "");
        r.expect(200);
        r.json()["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["cred_name"].as_str().unwrap().to_owned(),
                    c["cred_type"].as_str().unwrap().to_owned(),
                    c["profile"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// Sets a credential as OSMO's own client would (`osmo credential
    /// set`), behind the vault's back.
    pub fn set(&self, name: &str, envelope: &Value) {
        self.call(
            "POST",
            &format!("/api/credentials/{name}"),
            None,
            &envelope.to_string(),
        )
        .expect(200);
    }
}

impl Drop for OsmoUser {
    fn drop(&mut self) {
        // Best effort: a test that failed must still not leave its user's
        // credentials in the service's database.
        let Ok(jwt) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.jwt())) else {
            return;
        };
        let auth = format!("Bearer {jwt}");
        let listed = std::panic::catch_unwind(|| {
            http(
                &self.addr,
                "GET",
                "/api/credentials",
                &[("Authorization", &auth)],
                "",
            )
            .json()["credentials"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .unwrap_or_default();
        for c in listed {
            if let Some(name) = c["cred_name"].as_str() {
                let path = format!("/api/credentials/{name}");
                let _ = std::panic::catch_unwind(|| {
                    http(&self.addr, "DELETE", &path, &[("Authorization", &auth)], "")
                });
            }
        }
        let _ = std::panic::catch_unwind(|| {
            let admin = format!("Bearer {}", exchange(&self.addr, &self.admin));
            http(
                &self.addr,
                "DELETE",
                &format!("/api/auth/user/{}", self.id),
                &[("Authorization", &admin)],
                "",
            )
        });
    }
}
