//! The contract between the OSMO double (`src/bin/osmo-double.rs`) and the
//! real OSMO credential service (`../shared/osmo/run.sh`), so that the
//! double cannot drift from the platform again (issue 19): the same
//! requests go to both, and the answers must agree on the status, the
//! body's shape (keys and JSON types; the values too where they are
//! deterministic, such as listings and normalised scopes), and the headers
//! the vault reads: `x-osmo-warning` (decoded, the token's name set aside),
//! `x-osmo-service-version`, and the content type.
//!
//! Skipped (`SKIP …`) without the real service, unless
//! `VAULT_TEST_REQUIRE_OSMO=1`.

#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use serde_json::{Value, json};
use vault_e2e::osmo::{OsmoDouble, Resp, date_in_days, http};
use vault_e2e::osmo_real::{OsmoUser, addr_of};

/// One side of the comparison.
struct Side {
    what: &'static str,
    addr: String,
    pat: String,
    /// The access token's name, as the platform's messages name it.
    token_name: String,
    jwt: String,
}

impl Side {
    fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
        http(&self.addr, method, path, headers, body)
    }

    /// A call with the JWT and, when given, the client version.
    fn call(&self, method: &str, path: &str, version: Option<&str>, body: &str) -> Resp {
        let bearer = format!("Bearer {}", self.jwt);
        let mut h = vec![("Authorization", bearer.as_str())];
        if let Some(v) = version {
            h.push(("x-osmo-client-version", v));
        }
        self.send(method, path, &h, body)
    }
}

/// The JSON types of a document: objects by key, arrays by their items'
/// shapes (deduplicated), scalars by type name.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(items) => {
            let mut shapes: Vec<Value> = items.iter().map(shape).collect();
            shapes.sort_by_key(|s| s.to_string());
            shapes.dedup();
            Value::Array(shapes)
        }
        Value::String(_) => json!("string"),
        Value::Number(_) => json!("number"),
        Value::Bool(_) => json!("bool"),
        Value::Null => json!("null"),
    }
}

/// What the vault reads of an answer, comparable across the two sides.
fn seen(side: &Side, r: &Resp, values: bool) -> Value {
    let body: Value = if r.status == 401 {
        // The gateway's 401 is text (Envoy's); the vault reads the status.
        Value::Null
    } else if r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain"))
    {
        json!({"text": r.text.trim()})
    } else {
        let v: Value = serde_json::from_str(&r.text).unwrap_or(Value::Null);
        if values {
            sorted(v)
        } else if v.get("detail").is_some() {
            // A 422 lists each error; the vault shows loc and msg.
            json!({"detail": v["detail"].as_array().unwrap().iter().map(|d| json!({"loc": d["loc"], "msg": shape(&d["msg"])})).collect::<Vec<_>>()})
        } else {
            shape(&v)
        }
    };
    let warning = r.header("x-osmo-warning").map(|w| {
        let text = base64::engine::general_purpose::STANDARD.decode(w).unwrap();
        String::from_utf8(text)
            .unwrap()
            .replace(&side.token_name, "TOKEN")
    });
    json!({
        "status": r.status,
        "content_type": r
            .header("content-type")
            .filter(|_| r.status != 401)
            .map(|c| c.split(';').next().unwrap().to_owned()),
        "body": body,
        "x-osmo-warning": warning,
        "x-osmo-service-version": r.header("x-osmo-service-version"),
    })
}

/// Listings sorted by name (the two order them differently; the vault
/// does not care).
fn sorted(mut v: Value) -> Value {
    if let Some(list) = v.get_mut("credentials").and_then(Value::as_array_mut) {
        list.sort_by_key(|c| c["cred_name"].as_str().unwrap_or_default().to_owned());
    }
    v
}

/// A request, and whether its answer's values (not only the shape) must
/// be the same.
struct Step {
    what: &'static str,
    run: Box<dyn Fn(&Side) -> Resp>,
    values: bool,
}

fn step(what: &'static str, values: bool, run: impl Fn(&Side) -> Resp + 'static) -> Step {
    Step {
        what,
        run: Box::new(run),
        values,
    }
}

fn steps() -> Vec<Step> {
    let exchange = "/api/auth/jwt/access_token";
    let reg = |scope: &str| {
        json!({"registry_credential": {"registry": scope, "username": "u", "auth": "contract-auth"}})
            .to_string()
    };
    vec![
        step("the client version, as text", true, |s| {
            s.send("GET", "/client/version", &[("Accept", "text/plain")], "")
        }),
        step("the client version, as JSON", true, |s| {
            s.send("GET", "/client/version", &[], "")
        }),
        step("a version header vault once sent", false, move |s| {
            let body = json!({"token": s.pat}).to_string();
            s.send(
                "POST",
                exchange,
                &[("x-osmo-client-version", "vault/0.1.0")],
                &body,
            )
        }),
        step("the exchange", false, move |s| {
            let body = json!({"token": s.pat}).to_string();
            s.send(
                "POST",
                exchange,
                &[("x-osmo-client-version", "6.4.0")],
                &body,
            )
        }),
        step("an unknown token", true, move |s| {
            let body = json!({"token": "x".repeat(43)}).to_string();
            s.send("POST", exchange, &[], &body)
        }),
        step("a token of the wrong length", true, move |s| {
            s.send(
                "POST",
                exchange,
                &[],
                &json!({"token": "short"}).to_string(),
            )
        }),
        step("an exchange without a token", false, move |s| {
            s.send("POST", exchange, &[], "{}")
        }),
        step("no JWT", false, |s| {
            s.send("GET", "/api/credentials", &[], "")
        }),
        step("a list with the current version", true, |s| {
            s.call("GET", "/api/credentials", Some("6.4.0"), "")
        }),
        step("a list with an old version", true, |s| {
            s.call("GET", "/api/credentials", Some("0.1.0"), "")
        }),
        step("a list without a version", true, |s| {
            s.call("GET", "/api/credentials", None, "")
        }),
        step("a registry with :443", true, move |s| {
            s.call(
                "POST",
                "/api/credentials/r1",
                Some("6.4.0"),
                &reg("https://registry.example.com:443/team/"),
            )
        }),
        step("the list after it", true, |s| {
            s.call("GET", "/api/credentials", None, "")
        }),
        step("the same registry under another name", true, move |s| {
            s.call(
                "POST",
                "/api/credentials/r2",
                None,
                &reg("registry.example.com/team"),
            )
        }),
        step("the list: renamed", true, |s| {
            s.call("GET", "/api/credentials", None, "")
        }),
        step("that name for another registry", false, move |s| {
            s.call("POST", "/api/credentials/r2", None, &reg("quay.io"))
        }),
        step("a generic credential, any keys", true, |s| {
            let body =
                json!({"generic_credential": {"credential": {"other.key": "v", "a b": "w"}}});
            s.call("POST", "/api/credentials/g", None, &body.to_string())
        }),
        step("a generic name again", false, |s| {
            let body = json!({"generic_credential": {"credential": {"k": "v"}}});
            s.call("POST", "/api/credentials/g", None, &body.to_string())
        }),
        step("a data endpoint with a trailing /", true, |s| {
            let body = json!({"data_credential": {"endpoint": "s3://contract-bucket/", "access_key_id": "a", "access_key": "k"}});
            s.call("POST", "/api/credentials/d", None, &body.to_string())
        }),
        step("an http endpoint", false, |s| {
            let body = json!({"data_credential": {"endpoint": "https://minio", "access_key_id": "a", "access_key": "k"}});
            s.call("POST", "/api/credentials/d2", None, &body.to_string())
        }),
        step("an unknown key in an envelope", false, |s| {
            let body = json!({"registry_credential": {"auth": "a", "extra": 1}});
            s.call("POST", "/api/credentials/x", None, &body.to_string())
        }),
        step("no envelope", false, |s| {
            s.call("POST", "/api/credentials/x", None, "{}")
        }),
        step("a bad name", false, |s| {
            let body = json!({"generic_credential": {"credential": {"k": "v"}}});
            s.call("POST", "/api/credentials/1bad", None, &body.to_string())
        }),
        step("the list of all three types", true, |s| {
            s.call("GET", "/api/credentials", None, "")
        }),
        step("delete a missing name", true, |s| {
            s.call("DELETE", "/api/credentials/ghost", Some("6.4.0"), "")
        }),
        step("delete a generic one", true, |s| {
            s.call("DELETE", "/api/credentials/g", None, "")
        }),
        step("delete a registry", true, |s| {
            s.call("DELETE", "/api/credentials/r2", None, "")
        }),
        step("delete a data one", true, |s| {
            s.call("DELETE", "/api/credentials/d", None, "")
        }),
        step("the empty list", true, |s| {
            s.call("GET", "/api/credentials", None, "")
        }),
    ]
}

#[test]
fn the_double_answers_as_the_real_service_does() {
    let Some(user) = OsmoUser::new("osmo_contract", 3) else {
        return;
    };
    let pat = format!("{}{}", "p".repeat(20), "q".repeat(23));
    let double = OsmoDouble::start_on(
        "127.0.0.1:0",
        &["--token", &pat, "--token-expires", &date_in_days(3)],
    );
    let double_addr = addr_of(&double.url());
    let real = Side {
        what: "real",
        addr: user.addr.clone(),
        pat: user.token.clone(),
        token_name: user.token_name.clone(),
        jwt: user.jwt(),
    };
    let fake = Side {
        what: "double",
        jwt: vault_e2e::osmo_real::exchange(&double_addr, &pat),
        addr: double_addr,
        pat,
        token_name: "vault-test".into(),
    };
    let mut drift = Vec::new();
    for st in steps() {
        let a = seen(&real, &(st.run)(&real), st.values);
        let b = seen(&fake, &(st.run)(&fake), st.values);
        if a != b {
            drift.push(format!(
                "{}:\n  {}: {a}\n  {}: {b}",
                st.what, real.what, fake.what
            ));
        }
    }
    assert!(
        drift.is_empty(),
        "the double drifted from the real service:\n{}",
        drift.join("\n")
    );
}
