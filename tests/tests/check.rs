//! `vault check` (issue 24, docs/lifecycle.md) against real services: aws
//! keys against moto's STS with authentication on (so a wrong secret is
//! refused by signature), tokens against a local endpoint that takes one
//! bearer and refuses others, and one that never answers. Registries are
//! checked in tests/registry.rs, against docker-registry.
//!
//! Needs `VAULT_TEST_PYTHON` with botocore and `moto[server]` (`.ci/run`
//! installs both and sets `VAULT_TEST_REQUIRE_MOTO=1`).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::Duration;

use vault_e2e::https::https_endpoint;
use vault_e2e::moto::{Moto, moto_python, python_json, vault_on_moto};
use vault_e2e::{MARK, VaultHome, secret};

/// A loopback endpoint that answers 200 to `Bearer GOOD` and 401 to
/// anything else; its URL.
fn token_endpoint(good: &str) -> String {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1/me", server.server_addr().to_ip().unwrap());
    let want = format!("Bearer {good}");
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let ok = req
                .headers()
                .iter()
                .any(|h| h.field.equiv("Authorization") && h.value.as_str() == want);
            let code = if ok { 200 } else { 401 };
            let _ = req.respond(tiny_http::Response::empty(code));
        }
    });
    url
}

/// Makes bucket `checked-bucket` with the keys in argv[2], argv[3].
const MAKE_BUCKET: &str = r#"
import json, sys
import botocore.session
s3 = botocore.session.get_session().create_client(
    "s3", endpoint_url=sys.argv[1], region_name="us-east-1",
    aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3])
s3.create_bucket(Bucket="checked-bucket")
print(json.dumps({"ok": True}))
"#;

fn by_name(results: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap().to_owned(), r.clone()))
        .collect()
}

fn token(vh: &VaultHome, name: &str, value: &str, url: Option<&str>) {
    let mut args = vec!["add", name, "--type", "token", "token=-"];
    let url = url.map(|u| format!("url={u}"));
    if let Some(u) = &url {
        args.push(u);
    }
    vh.vault_in(args, value.as_bytes()).ok();
}

#[test]
fn check_asks_each_service_keeps_the_result_and_prints_no_secret() {
    let Some(python) = moto_python("check") else {
        return;
    };
    let vh = VaultHome::new();
    let moto = Moto::start(&python, vh.root());
    // config.toml names the endpoint of keys that have none of their own.
    let setup = vault_on_moto(&vh, &python, &moto, "");
    let id = setup["id"].as_str().unwrap();
    vh.add_aws("aws-good", id, setup["secret"].as_str().unwrap(), &[]);
    let wrong = secret("wrong-secret");
    vh.add_aws("aws-bad", id, &wrong, &[]);

    let good = secret("api-token");
    let url = token_endpoint(&good);
    token(&vh, "api", &good, Some(&url));
    token(&vh, "api-revoked", &secret("old-token"), Some(&url));
    // Takes connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}/", silent.local_addr().unwrap());
    token(&vh, "api-silent", &secret("t"), Some(&silent_url));
    token(&vh, "no-url", &secret("t"), None);
    vh.vault_in(
        [
            "add",
            "pw",
            "--type",
            "password",
            "username=me",
            "password=-",
        ],
        secret("pw").as_bytes(),
    )
    .ok();

    // S3 on moto: a bucket made with the user's keys (signed: moto checks).
    python_json(
        &vh,
        &python,
        MAKE_BUCKET,
        &[&moto.url, id, setup["secret"].as_str().unwrap()],
    );
    let data = |name: &str, bucket: &str, key: &str| {
        let f = vh.at_file(&format!("{name}-key"), key);
        vh.vault([
            "add",
            name,
            "--type",
            "data",
            &format!("endpoint=s3://{bucket}"),
            &format!("access_key_id={id}"),
            &format!("access_key={f}"),
            &format!("override_url={}", moto.url),
            "region=us-east-1",
        ])
        .ok();
    };
    data(
        "data-good",
        "checked-bucket",
        setup["secret"].as_str().unwrap(),
    );
    data("data-bad", "checked-bucket", &secret("wrong-data-key"));
    data(
        "data-missing",
        "no-such-bucket",
        setup["secret"].as_str().unwrap(),
    );

    // Generic records check with their own command, values in its env.
    let api_key = secret("generic-key");
    let generic = |name: &str, command: Option<&str>| {
        let mut args = vec![
            "add".to_owned(),
            name.to_owned(),
            "--type".to_owned(),
            "generic".to_owned(),
            "API_KEY=-".to_owned(),
        ];
        if let Some(c) = command {
            args.push(format!("check_command={c}"));
        }
        vh.vault_in(args, api_key.as_bytes()).ok();
    };
    generic(
        "gen-ok",
        Some(&format!(
            "test \"$API_KEY\" = '{api_key}' && test -z \"$check_command\""
        )),
    );
    generic(
        "gen-bad",
        Some("echo \"the service says no to $API_KEY\" >&2; exit 3"),
    );
    generic("gen-plain", None);

    let run = vh.vault(["check", "--all", "--timeout", "2s", "--json"]);
    run.code(1).no_panic();
    assert!(
        !run.stdout.contains(MARK) && !run.stderr.contains(MARK),
        "{run}"
    );
    // moto's working secret carries no MARK: looked for by value.
    let working = setup["secret"].as_str().unwrap();
    assert!(!run.stdout.contains(working) && !run.stderr.contains(working));
    let got = by_name(&serde_json::from_str(&run.stdout).unwrap());
    let outcome = |n: &str| got[n]["outcome"].as_str().unwrap().to_owned();
    let detail = |n: &str| got[n]["detail"].as_str().unwrap().to_owned();
    assert_eq!(outcome("aws-good"), "ok", "{}", detail("aws-good"));
    assert!(
        detail("aws-good").contains(":user/dev"),
        "{}",
        detail("aws-good")
    );
    assert!(
        detail("aws-good").starts_with("account "),
        "{}",
        detail("aws-good")
    );
    assert_eq!(outcome("aws-bad"), "failed");
    assert!(
        detail("aws-bad").contains("STS refused GetCallerIdentity (403"),
        "{}",
        detail("aws-bad")
    );
    assert_eq!(outcome("api"), "ok", "{}", detail("api"));
    assert_eq!(outcome("api-revoked"), "failed");
    assert!(detail("api-revoked").contains("refused the token (HTTP 401)"));
    assert_eq!(outcome("api-silent"), "failed");
    assert!(
        detail("api-silent").contains("no answer within 2 s"),
        "{}",
        detail("api-silent")
    );
    assert_eq!(outcome("no-url"), "skipped");
    assert!(detail("no-url").contains("vault set no-url url="));
    assert_eq!(outcome("pw"), "skipped");
    assert_eq!(outcome("data-good"), "ok", "{}", detail("data-good"));
    assert!(detail("data-good").contains("listed bucket checked-bucket"));
    assert_eq!(outcome("data-bad"), "failed");
    assert!(
        detail("data-bad").contains("refused ListObjectsV2 on bucket checked-bucket (403"),
        "{}",
        detail("data-bad")
    );
    assert_eq!(outcome("data-missing"), "failed");
    assert!(
        detail("data-missing").contains("(404 NoSuchBucket)"),
        "{}",
        detail("data-missing")
    );
    assert_eq!(outcome("gen-ok"), "ok", "{}", detail("gen-ok"));
    assert_eq!(outcome("gen-bad"), "failed");
    assert_eq!(
        detail("gen-bad"),
        "check_command failed (exit status: 3): the service says no to …"
    );
    assert_eq!(outcome("gen-plain"), "skipped");
    assert!(run.stderr.contains("4 ok, 6 failed, 3 skipped"), "{run}");

    // Kept: list shows the failures, doctor says why.
    let listed = by_name(&vh.vault(["list", "--json"]).json());
    assert_eq!(listed["aws-bad"]["state"], "check-failed");
    assert_eq!(listed["api-silent"]["state"], "check-failed");
    assert_eq!(listed["aws-good"]["state"], "ok");
    assert_eq!(listed["aws-good"]["checked"]["ok"], true);
    assert!(listed["no-url"].get("checked").is_none());
    let doctor = vh.vault(["doctor"]);
    let said = format!("{}{}", doctor.stdout, doctor.stderr);
    assert!(said.contains("aws-bad: check failed at"), "{said}");
    assert!(said.contains("vault check aws-bad"), "{said}");
    assert!(!said.contains(MARK), "{said}");

    // One name; a working one exits 0. A changed value is no longer
    // called failed by its old check.
    vh.vault(["check", "aws-good"]).ok();
    let f = vh.at_file("right", setup["secret"].as_str().unwrap());
    vh.vault(["set", "aws-bad", &format!("secret_access_key={f}")])
        .ok();
    let listed = by_name(&vh.vault(["list", "--json"]).json());
    assert_eq!(listed["aws-bad"]["state"], "ok");
    vh.vault(["check", "aws-bad", "api"])
        .ok()
        .stdout_has("aws-bad");
    // The command is local machinery: exec never hands it to the child.
    vh.vault([
        "exec",
        "-c",
        "gen-ok",
        "--",
        "sh",
        "-c",
        "test -n \"$API_KEY\" && test -z \"${check_command+set}\"",
    ])
    .ok();
    vh.vault(["check", "nope"]).code(4);
    vh.vault(["check"]).code(2);
}

/// `[check] interval` re-checks in the background, with no `vault check`:
/// the results show up in `list` and `status` by themselves.
#[test]
fn a_background_interval_checks_without_being_asked() {
    let vh = VaultHome::new();
    vh.write_config("[check]\ninterval = \"10s\"\n");
    vh.init().ok();
    let good = secret("bg-token");
    let url = token_endpoint(&good);
    token(&vh, "bg-good", &good, Some(&url));
    token(&vh, "bg-revoked", &secret("bg-old"), Some(&url));
    token(&vh, "bg-no-url", &secret("bg-t"), None);
    let listed = vault_e2e::poll_until(
        Duration::from_secs(45),
        Duration::from_millis(500),
        "checked in the background",
        || by_name(&vh.vault(["list", "--json"]).json()),
        |listed| {
            ["bg-good", "bg-revoked"]
                .iter()
                .all(|n| listed[*n].get("checked").is_some())
        },
    );
    assert_eq!(listed["bg-good"]["state"], "ok");
    assert_eq!(listed["bg-good"]["checked"]["ok"], true);
    assert_eq!(listed["bg-revoked"]["state"], "check-failed");
    assert!(listed["bg-no-url"].get("checked").is_none());
    let status = vh.vault(["status", "--json"]).json();
    let failed = status["failed_checks"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{status}");
    assert_eq!(failed[0]["name"], "bg-revoked");
    assert!(
        failed[0]["detail"]
            .as_str()
            .unwrap()
            .contains("refused the token (HTTP 401)")
    );
}

/// A token's `url` that arrived by sync from another device is an endpoint
/// this machine never approved: `vault check` does not send the token there
/// until `vault approve`; exec of the token is not held up meanwhile.
#[test]
fn a_synced_url_is_checked_only_once_approved_here() {
    let server = vault_e2e::RemoteServer::start();
    let a = VaultHome::new();
    a.write_config("[sync]\nauto = false\n");
    a.init().ok();
    a.login(&server).ok();
    let good = secret("synced-token");
    let url = token_endpoint(&good);
    token(&a, "api", &good, Some(&url));
    a.vault(["sync"]).ok();
    a.vault(["check", "api"]).ok();
    let b = a.join(&server);
    let held = b.vault(["--json", "check", "api"]);
    held.code(1);
    let got = by_name(&serde_json::from_str(&held.stdout).unwrap());
    assert_eq!(got["api"]["outcome"], "failed");
    assert!(
        got["api"]["detail"]
            .as_str()
            .unwrap()
            .contains("vault approve api"),
        "{held}"
    );
    b.vault(["exec", "-c", "api", "--", "true"]).ok();
    b.vault(["approve", "api", "--yes"]).ok();
    b.vault(["check", "api"]).ok().stdout_has("took it");
}

/// Issue 24: a token endpoint over HTTPS under a team's own CA. Without
/// `[tls] ca` the certificate is refused (the token is not sent); with it,
/// the right token passes and a revoked one is refused.
#[test]
fn a_token_endpoint_over_https_is_checked_with_the_teams_ca() {
    let Some(python) = vault_e2e::test_python("https token endpoint") else {
        return;
    };
    let vh = VaultHome::new();
    vh.init().ok();
    let good = secret("https-token");
    let server = https_endpoint(&python, vh.root(), &good);
    token(&vh, "api", &good, Some(&server.url));
    token(&vh, "api-revoked", &secret("https-old"), Some(&server.url));

    let run = vh.vault(["--json", "check", "api", "--timeout", "10s"]);
    run.code(1).never_prints(MARK);
    let got = by_name(&serde_json::from_str(&run.stdout).unwrap());
    let detail = got["api"]["detail"].as_str().unwrap().to_owned();
    assert!(detail.to_lowercase().contains("certificate"), "{detail}");

    vh.write_config(&format!("[tls]\nca = \"{}\"\n", server.ca.display()));
    vh.stop_daemons();
    vh.unlock().ok();
    let run = vh.vault(["--json", "check", "api", "api-revoked", "--timeout", "10s"]);
    run.code(1).never_prints(MARK);
    let got = by_name(&serde_json::from_str(&run.stdout).unwrap());
    assert_eq!(got["api"]["outcome"], "ok", "{run}");
    assert_eq!(got["api-revoked"]["outcome"], "failed");
    assert!(
        got["api-revoked"]["detail"]
            .as_str()
            .unwrap()
            .contains("refused the token (HTTP 401)"),
        "{run}"
    );

    // A CA file that is not one: the daemon says so at start.
    let not_pem = vh.root().join("not-a-ca.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    vh.write_config(&format!("[tls]\nca = \"{}\"\n", not_pem.display()));
    vh.stop_daemons();
    let run = vh.vault(["status"]);
    assert!(
        format!("{}{}", run.stdout, run.stderr).contains("tls.ca"),
        "{run}"
    );
}
