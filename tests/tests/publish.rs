//! Publishing to a workload platform (issue 10), end to end: the real
//! `vault` and `vaultd` against the OSMO test double (`src/bin/osmo-double.rs`,
//! written from ../shared/remotes/osmo.md), which enforces the platform's
//! rules, so a wrong request fails these tests.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{Value, json};
use vault_e2e::osmo::{OsmoDouble, free_addr, remote_add_args};
use vault_e2e::{MARK, VaultHome, contains_bytes, secret, walk};

/// The platform access token; carries the secret marker for the leak scan.
fn pat() -> String {
    format!("osmo-pat-{MARK}-0123456789abcdefghijklmnopqrstu")
}

const WAIT: Duration = Duration::from_secs(30);

/// A vault whose daemon retries a platform every second at most.
fn home() -> VaultHome {
    let vh = VaultHome::new();
    vh.write_config("[publish]\nretry = \"1s\"\n");
    vh.init().ok();
    vh
}

fn add_remote(vh: &VaultHome, url: &str, token: &str) -> vault_e2e::Run {
    let f = vh.at_file("osmo-token", token);
    vh.vault(remote_add_args(url, &f[1..]))
}

fn credential<'a>(state: &'a Value, name: &str) -> Option<&'a Value> {
    state["credentials"].get(name)
}

fn remote_status(vh: &VaultHome) -> Value {
    let status = vh.vault(["status", "--json"]).ok().json();
    status["remotes"][0].clone()
}

/// User plus system CPU time of a process, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name in parentheses: field 14 utime, 15 stime.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Polls `vault status`'s first remote until `ok` holds (the daemon records
/// an answer just after the platform has it); panics after [`WAIT`].
fn wait_remote(vh: &VaultHome, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    vault_e2e::poll_until(
        WAIT,
        Duration::from_millis(50),
        what,
        || remote_status(vh),
        ok,
    )
}

/// `vault list`'s STATUS of `name`.
fn listed_state(vh: &VaultHome, name: &str) -> String {
    let list = vh.vault(["list", "--json"]).ok().json();
    let row = list.as_array().unwrap().iter().find(|r| r["name"] == name);
    row.unwrap()["state"].as_str().unwrap().to_owned()
}

/// The API requests (method, path, status) the double answered, in order.
fn api_log(state: &Value) -> Vec<(String, String, u64)> {
    state["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["method"].as_str().unwrap().to_owned(),
                e["path"].as_str().unwrap().to_owned(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn publishes_queue_while_the_platform_is_down_and_arrive_in_order() {
    let vh = home();
    let auth = secret("ngc-auth");
    let access_key = secret("bucket-key");
    let reg_auth = vh.at_file("reg-auth", &auth);
    vh.vault([
        "add",
        "team.ngc",
        "--type",
        "REGISTRY",
        "--payload",
        "registry=nvcr.io",
        "username=$oauthtoken",
        &format!("auth={reg_auth}"),
    ])
    .ok();
    let key = vh.at_file("data-key", &access_key);
    vh.vault([
        "add",
        "bucket",
        "--type",
        "data",
        "endpoint=s3://team-bucket/",
        "access_key_id=AKIDEXAMPLE",
        &format!("access_key={key}"),
        "override_url=http://minio.local:9000",
        "addressing_style=path",
    ])
    .ok();

    // The platform is down: the remote is kept, the publishes queue.
    let addr = free_addr();
    let added = add_remote(&vh, &format!("http://{addr}"), &pat());
    added.ok().stderr_has("first push");
    vh.vault(["publish", "team.ngc", "--to", "osmo"])
        .code(2)
        .stderr_has("--as");
    vh.vault(["publish", "team.ngc", "--to", "osmo", "--as", "ngc"])
        .ok()
        .stderr_has("queued");
    vh.vault(["publish", "bucket", "--to", "osmo"])
        .ok()
        .stderr_has("queued");
    let remote = remote_status(&vh);
    assert_eq!(remote["queued"], 2, "{remote}");
    assert!(
        remote["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot reach")
    );

    // Locked while the platform is down: the daemon waits quietly (no busy
    // loop), and the unlock sends what waited.
    vh.vault(["lock"]).ok();
    let pid = vh.daemon_pid().unwrap();
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_ticks(pid) - before;
    assert!(used < 30, "a locked daemon used {used} CPU ticks in 3 s");
    vh.unlock();

    // It comes up: both arrive, in the order they were published, each
    // exactly as the platform takes it.
    let double = OsmoDouble::start_on(&addr, &["--token", &pat()]);
    // The double logs a request just after storing it: wait for the log.
    let state = double.wait_for(WAIT, "both credentials published", |s| {
        api_log(s)
            .iter()
            .any(|(m, p, s)| m == "POST" && p == "/api/credentials/bucket" && *s == 200)
    });
    assert_eq!(
        credential(&state, "ngc").unwrap()["body"],
        json!({"registry": "nvcr.io", "username": "$oauthtoken", "auth": auth})
    );
    assert_eq!(
        credential(&state, "bucket").unwrap()["body"],
        json!({"endpoint": "s3://team-bucket", "access_key_id": "AKIDEXAMPLE",
               "access_key": access_key, "override_url": "http://minio.local:9000",
               "addressing_style": "path"})
    );
    let posts: Vec<String> = api_log(&state)
        .into_iter()
        .filter(|(m, p, s)| m == "POST" && p.starts_with("/api/credentials/") && *s == 200)
        .map(|(_, p, _)| p)
        .collect();
    assert_eq!(posts, ["/api/credentials/ngc", "/api/credentials/bucket"]);
    // The pass clears its error when it ends, just after the last record.
    wait_remote(&vh, "both recorded as sent", |r| {
        r["queued"] == 0 && r.get("last_error").is_none()
    });

    // A rotation is sent again; REGISTRY replaces in place.
    let rotated = secret("ngc-auth-rotated");
    let f = vh.at_file("reg-auth-2", &rotated);
    vh.vault(["set", "team.ngc", &format!("auth={f}")]).ok();
    let state = double.wait_for(WAIT, "the rotated value published", |s| {
        credential(s, "ngc").is_some_and(|c| c["body"]["auth"] == json!(rotated))
    });
    assert_eq!(state["credentials"].as_object().unwrap().len(), 2);
    let deletes = api_log(&state)
        .iter()
        .filter(|(m, _, _)| m == "DELETE")
        .count();
    assert_eq!(deletes, 0, "a REGISTRY update replaces in place");

    // A restore is a change too.
    vh.vault(["restore", "team.ngc", "--revision", "1"]).ok();
    double.wait_for(WAIT, "the restored value published", |s| {
        credential(s, "ngc").is_some_and(|c| c["body"]["auth"] == json!(auth))
    });

    // The audit log: who asked (`publish`, by vault) and what left the
    // machine (`publish_sent`, by vaultd, in the background pass).
    vh.vault(["lock"]).ok();
    vh.unlock();
    let audit = vh.vault(["--json", "audit", "team.ngc"]).ok().json();
    let entries = audit["entries"].as_array().unwrap();
    let by = |op: &str| {
        entries
            .iter()
            .find(|e| e["op"] == op)
            .unwrap_or_else(|| panic!("no {op} entry in {audit:#}"))["client"]["exe"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let canonical = |p: &std::path::Path| std::fs::canonicalize(p).unwrap().display().to_string();
    assert_eq!(by("publish"), canonical(&vault_e2e::binaries().vault));
    assert_eq!(by("publish_sent"), canonical(&vault_e2e::binaries().vaultd));

    // The platform token is nowhere in plaintext outside the input file:
    // not in vault.db, config, logs, or anything the daemon wrote.
    vh.stop_daemons();
    for (path, meta) in walk(vh.root()) {
        if !meta.is_file() || path.starts_with(&vh.files) {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !contains_bytes(&bytes, pat().as_bytes()),
            "the platform access token is in {}",
            path.display()
        );
    }
}

#[test]
fn updates_refusals_drift_and_unpublish() {
    let vh = home();
    let double = OsmoDouble::start_on("127.0.0.1:0", &["--token", &pat()]);
    add_remote(&vh, &double.url(), &pat()).ok();
    let v1 = secret("app-v1");
    let f = vh.at_file("app-v1", &v1);
    vh.vault(["add", "app", "--type", "generic", &format!("API_KEY={f}")])
        .ok();
    vh.vault(["publish", "app", "--to", "osmo"])
        .ok()
        .stderr_has("published app");

    // Checked before anything is queued, with the platform's rules.
    vh.add_aws("cloud", "AKIDEXAMPLE", &secret("aws"), &[]);
    vh.vault(["publish", "cloud", "--to", "osmo"])
        .code(2)
        .stderr_has("cannot be published");
    vh.vault(["publish", "app", "--to", "nowhere"])
        .code(4)
        .stderr_has("vault remote list");

    // GENERIC update: delete, then create; a failing create leaves the
    // platform missing it, which status says, until a retry succeeds. The
    // create fails until the test has seen that and lets it through.
    double
        .control(
            "POST",
            "/_double/fail",
            &json!({"method": "POST", "path": "/api/credentials/app", "status": 503, "times": 1000}),
        )
        .expect(200);
    let v2 = secret("app-v2");
    let f = vh.at_file("app-v2", &v2);
    vh.vault(["set", "app", &format!("API_KEY={f}")]).ok();
    let app_calls = |s: &Value| -> Vec<(String, u64)> {
        api_log(s)
            .into_iter()
            .filter(|(_, p, _)| p == "/api/credentials/app")
            .map(|(m, _, s)| (m, s))
            .collect()
    };
    let failed_creates = |s: &Value| {
        app_calls(s)
            .iter()
            .filter(|(m, s)| m == "POST" && *s == 503)
            .count()
    };
    double.wait_for(WAIT, "the create retried", |s| failed_creates(s) >= 2);
    let remote = wait_remote(&vh, "the platform missing it", |r| {
        r["attention"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p["state"] == "missing"))
    });
    assert_eq!(remote["queued"], 1, "{remote}");
    vh.vault(["status"])
        .ok()
        .stdout_has("the platform is missing it");
    double
        .control("DELETE", "/_double/fail", &json!(null))
        .expect(200);
    let s = double.wait_for(WAIT, "the create let through", |s| {
        app_calls(s).last() == Some(&("POST".to_owned(), 200))
    });
    assert_eq!(
        credential(&s, "app").unwrap()["body"]["credential"]["API_KEY"],
        json!(v2)
    );
    wait_remote(&vh, "the publication settled", |r| r["queued"] == 0);
    // Deleted, then each create failed; a 503 may come after the platform
    // stored it (a proxy, say), so each retry deletes first and "does not
    // exist" (400) is fine there; then the create goes through.
    let calls = app_calls(&s);
    let pair = |m: &str, s: u64| (m.to_owned(), s);
    let retries = failed_creates(&s);
    let mut expected = vec![pair("POST", 200), pair("DELETE", 200), pair("POST", 503)];
    for _ in 1..retries {
        expected.extend([pair("DELETE", 400), pair("POST", 503)]);
    }
    expected.extend([pair("DELETE", 400), pair("POST", 200)]);
    assert_eq!(calls, expected);

    // A 4xx is permanent: shown with the platform's message, in list's
    // STATUS, until the credential changes.
    let wrong = secret("wrong-registry-login");
    double
        .control("POST", "/_double/reject-auth", &json!({"auth": wrong}))
        .expect(200);
    vh.add_registry("ghcr", "ghcr.io", "me", &wrong);
    vh.vault(["publish", "ghcr", "--to", "osmo"])
        .code(1)
        .stderr_has("Registry login to ghcr.io failed");
    assert_eq!(listed_state(&vh, "ghcr"), "publish-failed");
    let remote = remote_status(&vh);
    assert!(
        remote["attention"][0]["error"]
            .as_str()
            .unwrap()
            .contains("Registry login to ghcr.io failed"),
        "{remote}"
    );
    // Another registry login for the same scope is refused before queueing.
    vh.add_registry("ghcr2", "ghcr.io/", "me", &secret("other"));
    vh.vault(["publish", "ghcr2", "--to", "osmo"])
        .code(5)
        .stderr_has("one REGISTRY credential per registry");
    vh.vault(["publish", "ghcr", "--to", "osmo", "--as", "ghcr-copy"])
        .code(5)
        .stderr_has("one REGISTRY credential per registry");
    let right = secret("right-registry-login");
    let f = vh.at_file("right", &right);
    vh.vault(["set", "ghcr", &format!("auth={f}")]).ok();
    double.wait_for(WAIT, "the fixed registry login published", |s| {
        credential(s, "ghcr").is_some_and(|c| c["body"]["auth"] == json!(right))
    });
    wait_remote(&vh, "the fixed login recorded", |r| r["queued"] == 0);
    assert_eq!(listed_state(&vh, "ghcr"), "ok");

    // Drift: deleted behind the vault's back, and one the vault never
    // published.
    double
        .control("DELETE", "/_double/credentials/app", &json!(null))
        .expect(200);
    double
        .control(
            "POST",
            "/_double/credentials/stray",
            &json!({"generic_credential": {"credential": {"K": "v"}}}),
        )
        .expect(200);
    let report = vh.vault(["remote", "status", "osmo", "--json"]).ok().json();
    assert_eq!(report["missing"], json!(["app"]), "{report}");
    assert_eq!(report["unknown"][0]["name"], "stray", "{report}");
    vh.vault(["remote", "status", "osmo"])
        .ok()
        .stderr_has("publish --repair");
    let repaired = vh
        .vault(["publish", "--repair", "--to", "osmo", "--json"])
        .ok()
        .json();
    assert_eq!(repaired[0]["repaired"], json!(["app"]), "{repaired}");
    assert_eq!(repaired[0]["missing"], json!([]), "{repaired}");
    let s = double.state();
    assert_eq!(
        credential(&s, "app").unwrap()["body"]["credential"]["API_KEY"],
        json!(v2)
    );

    // Unpublish deletes it there; rm of a published credential takes
    // --force and then unpublishes it.
    // A name someone else holds there is refused, and never deleted by an
    // unpublish.
    double
        .control(
            "POST",
            "/_double/credentials/theirs",
            &json!({"generic_credential": {"credential": {"THEIRS": "v"}}}),
        )
        .expect(200);
    vh.vault(["publish", "app", "--to", "osmo", "--as", "theirs"])
        .code(1)
        .stderr_has("this vault did not publish");
    vh.vault(["unpublish", "app"]).ok();
    let s = double.state();
    assert!(credential(&s, "app").is_none());
    assert_eq!(
        credential(&s, "theirs").unwrap()["body"]["credential"]["THEIRS"],
        "v"
    );
    vh.vault(["emit", "docker", "ghcr"]).ok();
    vh.vault(["rm", "ghcr"])
        .code(5)
        .stderr_has("emitted to ")
        .stderr_has("published as 'ghcr' on osmo")
        .stderr_has("--force' deletes it, removes what vault wrote there and unpublishes it");
    vh.vault(["rm", "ghcr", "--force"]).ok();
    let docker = std::fs::read_to_string(vh.user_home.join(".docker/config.json")).unwrap();
    assert!(!docker.contains("ghcr.io"), "{docker}");
    double.wait_for(WAIT, "the removed credential unpublished", |s| {
        credential(s, "ghcr").is_none()
    });
    wait_remote(&vh, "without publications", |r| r["published"] == 0);
    vh.vault(["remote", "rm", "osmo"]).ok();
    assert!(remote_status(&vh).is_null());
}

#[test]
fn a_change_onto_a_registry_another_holds_is_refused_not_sent() {
    let vh = home();
    let double = OsmoDouble::start_on("127.0.0.1:0", &["--token", &pat()]);
    add_remote(&vh, &double.url(), &pat()).ok();
    let ghcr_auth = secret("ghcr-auth");
    vh.add_registry("ghcr", "ghcr.io", "me", &ghcr_auth);
    vh.add_registry("quay", "quay.io", "me", &secret("quay-auth"));
    for name in ["ghcr", "quay"] {
        vh.vault(["publish", name, "--to", "osmo"]).ok();
    }
    wait_remote(&vh, "both sent", |r| r["queued"] == 0);

    // quay moves onto ghcr.io: the platform keys REGISTRY by registry and
    // would replace ghcr with it, so it is refused without a request.
    vh.vault(["set", "quay", "registry=ghcr.io"]).ok();
    let remote = wait_remote(&vh, "the move refused", |r| r["failed"] == 1);
    let error = remote["attention"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("one REGISTRY credential per registry")
            && error.contains("ghcr is already published"),
        "{remote}"
    );
    assert_eq!(listed_state(&vh, "quay"), "publish-failed");
    vh.vault(["status"])
        .ok()
        .stdout_has("one REGISTRY credential per registry");
    let s = double.state();
    assert_eq!(
        credential(&s, "ghcr").unwrap()["body"]["auth"],
        json!(ghcr_auth)
    );
    assert_eq!(
        credential(&s, "quay").unwrap()["body"]["registry"],
        "quay.io",
        "the platform keeps what it had"
    );
    // What the platform still holds of the refused one counts: another
    // credential for quay.io would replace it there.
    vh.add_registry("quay2", "quay.io", "other", &secret("quay2-auth"));
    vh.vault(["publish", "quay2", "--to", "osmo"])
        .code(5)
        .stderr_has("quay is already published to 'osmo' as 'quay' for registry quay.io");
    // Nor can one sent elsewhere be moved onto it later.
    vh.vault(["set", "quay2", "registry=docker.io"]).ok();
    vh.vault(["publish", "quay2", "--to", "osmo"]).ok();
    vh.vault(["set", "quay2", "registry=quay.io"]).ok();
    wait_remote(&vh, "the second move refused", |r| r["failed"] == 2);
    assert_eq!(listed_state(&vh, "quay2"), "publish-failed");
    let s = double.state();
    assert_eq!(
        credential(&s, "quay").unwrap()["body"]["registry"],
        "quay.io"
    );
    assert_eq!(
        credential(&s, "quay2").unwrap()["body"]["registry"],
        "registry-1.docker.io"
    );
    vh.vault(["unpublish", "quay2"]).ok();

    // Moved back, it is what the platform holds again: nothing to send,
    // and the refusal is over.
    vh.vault(["set", "quay", "registry=quay.io"]).ok();
    wait_remote(&vh, "the move back settled", |r| {
        r["failed"] == 0 && r["queued"] == 0
    });
    assert_eq!(listed_state(&vh, "quay"), "ok");

    // Both changed while the platform was failing, planned in one pass:
    // quay moves onto ghcr.io first, then ghcr is rotated. ghcr keeps its
    // registry and gets the rotation; quay is refused, never sent.
    let f = vh.at_file("tick", &secret("tick"));
    vh.vault(["add", "tick", "--type", "generic", &format!("K={f}")])
        .ok();
    double
        .control(
            "POST",
            "/_double/fail",
            &json!({"method": "*", "path": "*", "status": 503, "times": 100000}),
        )
        .expect(200);
    // A failing pass: the daemon backs off, and the two changes below wait
    // for the same plan (if one is planned alone, quay meets a settled
    // ghcr, which also refuses it).
    vh.vault(["publish", "tick", "--to", "osmo"])
        .ok()
        .stderr_has("queued");
    vh.vault(["set", "quay", "registry=ghcr.io"]).ok();
    let rotated = secret("ghcr-rotated");
    let f = vh.at_file("ghcr-rotated", &rotated);
    vh.vault(["set", "ghcr", &format!("auth={f}")]).ok();
    double
        .control("DELETE", "/_double/fail", &json!(null))
        .expect(200);
    let remote = wait_remote(&vh, "the rotation sent, the move refused", |r| {
        r["failed"] == 1 && r["queued"] == 0
    });
    assert_eq!(remote["attention"][0]["name"], "quay", "{remote}");
    let s = double.state();
    assert_eq!(
        credential(&s, "ghcr").unwrap()["body"]["auth"],
        json!(rotated)
    );
    assert_eq!(
        credential(&s, "quay").unwrap()["body"]["registry"],
        "quay.io"
    );
}

#[test]
fn a_remote_given_a_new_url_gets_everything_again() {
    let vh = home();
    let first = OsmoDouble::start_on("127.0.0.1:0", &["--token", &pat()]);
    add_remote(&vh, &first.url(), &pat()).ok();
    vh.add_registry("ngc", "nvcr.io", "$oauthtoken", &secret("ngc"));
    let f = vh.at_file("app", &secret("app"));
    vh.vault(["add", "app", "--type", "generic", &format!("API_KEY={f}")])
        .ok();
    for name in ["ngc", "app"] {
        vh.vault(["publish", name, "--to", "osmo"])
            .ok()
            .stderr_has("published");
    }
    let moved = OsmoDouble::start_on("127.0.0.1:0", &["--token", &pat()]);
    let f = vh.at_file("osmo-token-2", &pat());
    let url = moved.url();
    let args = remote_add_args(&url, &f[1..]);
    vh.vault(&args).code(5).stderr_has("--replace");
    vh.vault(args.iter().map(String::as_str).chain(["--replace"]))
        .ok();
    moved.wait_for(WAIT, "everything pushed to the new URL", |s| {
        credential(s, "ngc").is_some() && credential(s, "app").is_some()
    });
    let remote = wait_remote(&vh, "both recorded as sent", |r| r["queued"] == 0);
    assert_eq!(remote["url"], json!(url));
    assert_eq!(remote["published"], 2, "{remote}");
}

#[test]
fn one_token_exchange_at_a_time_renewed_before_it_runs_out() {
    let vh = home();
    let double = OsmoDouble::start_on(
        "127.0.0.1:0",
        &[
            "--token",
            &pat(),
            "--jwt-ttl",
            "6",
            "--exchange-delay-ms",
            "300",
        ],
    );
    add_remote(&vh, &double.url(), &pat()).ok();
    assert_eq!(double.state()["exchanges"], 1);
    // Let the JWT run out, then ask from several clients at once (they
    // have the new JWT's 4.8 s of use to all get there).
    std::thread::sleep(Duration::from_millis(6200));
    std::thread::scope(|scope| {
        let runs: Vec<_> = (0..6)
            .map(|_| scope.spawn(|| vh.vault(["remote", "status", "osmo"])))
            .collect();
        for r in runs {
            r.join().unwrap().ok();
        }
    });
    let state = double.state();
    assert_eq!(state["exchanges"], 2, "one exchange for six callers");
    assert_eq!(state["max_concurrent_exchanges"], 1);
    // Calls spread over more than a JWT's use never meet an expired JWT.
    for _ in 0..14 {
        vh.vault(["remote", "status", "osmo"]).ok();
        std::thread::sleep(Duration::from_millis(400));
    }
    let state = double.state();
    assert!(
        api_log(&state).iter().all(|(_, _, s)| *s != 401),
        "a call went out with an expired JWT: {}",
        state["log"]
    );
    assert!(state["exchanges"].as_u64().unwrap() >= 3);
}

#[test]
fn the_access_token_nearing_or_past_expiry_is_reported() {
    let in_3_days = vault_e2e::osmo::date_in_days(3);
    let double = OsmoDouble::start_on(
        "127.0.0.1:0",
        &["--token", &pat(), "--token-expires", &in_3_days],
    );
    let vh = home();
    add_remote(&vh, &double.url(), &pat())
        .ok()
        .stderr_has(&in_3_days);
    let remote = remote_status(&vh);
    assert!(
        remote["token_warning"]
            .as_str()
            .unwrap()
            .contains(&in_3_days),
        "{remote}"
    );
    vh.vault(["status"]).ok().stdout_has(&in_3_days);

    let expired = OsmoDouble::start_on(
        "127.0.0.1:0",
        &[
            "--token",
            &pat(),
            "--token-expires",
            &vault_e2e::osmo::date_in_days(-1),
        ],
    );
    let other = home();
    add_remote(&other, &expired.url(), &pat())
        .code(1)
        .stderr_has("expired")
        .stderr_has("--replace");
}

#[test]
fn a_new_client_warning_is_never_taken_for_the_token_expiry() {
    let in_3_days = vault_e2e::osmo::date_in_days(3);
    let mut double = OsmoDouble::start_on(
        "127.0.0.1:0",
        &["--token", &pat(), "--token-expires", &in_3_days],
    );
    let vh = home();
    add_remote(&vh, &double.url(), &pat())
        .ok()
        .stderr_has(&in_3_days)
        .never_prints("New client");
    // The platform moves on to a newer client: the version vault learnt
    // is now old, and the next answers say so, next to the expiry.
    double.restart_with(&["--client-version", "7.0.0"]);
    let versioned = |state: &Value| {
        api_log(state)
            .iter()
            .filter(|(m, p, _)| m == "GET" && p == "/client/version")
            .count()
    };
    for _ in 0..2 {
        vh.vault(["remote", "status", "osmo"])
            .ok()
            .never_prints("New client")
            .stderr_has(&in_3_days);
    }
    // It asked for the current version again after the warning.
    assert!(versioned(&double.state()) >= 1, "{}", double.state()["log"]);
    let remote = remote_status(&vh);
    let warning = remote["token_warning"].as_str().unwrap();
    assert!(warning.contains(&in_3_days), "{remote}");
    assert!(!warning.contains("New client"), "{remote}");
    vh.vault(["status"]).ok().never_prints("New client");
    // Line breaks kept: the warning is the platform's one line.
    assert_eq!(
        warning,
        format!("Access token vault-test is expiring on {in_3_days} at 12AM UTC.")
    );
}
