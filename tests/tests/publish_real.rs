//! Publishing against the real OSMO credential service (issue 19): the real
//! `vault` and `vaultd` talk to NVIDIA OSMO's own service behind its
//! gateway (`../shared/osmo/run.sh`), each test as an OSMO user of its own
//! (`vault_e2e::osmo_real`). Skipped with a `SKIP` line when the service is
//! not configured; `.ci/run` sets `VAULT_TEST_REQUIRE_OSMO=1`, so there they
//! run. What the real service cannot be made to do (outages, 5xx, slow or
//! dropped answers) is tested against the double in `publish.rs`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{Value, json};
use vault_e2e::osmo::{date_in_days, remote_add_args};
use vault_e2e::osmo_real::OsmoUser;
use vault_e2e::{VaultHome, contains_bytes, secret, walk};

const WAIT: Duration = Duration::from_secs(30);

fn home() -> VaultHome {
    let vh = VaultHome::new();
    vh.write_config("[publish]\nretry = \"1s\"\n");
    vh.init().ok();
    vh
}

fn add_remote(vh: &VaultHome, user: &OsmoUser) -> vault_e2e::Run {
    let f = vh.at_file("osmo-token", &user.token);
    vh.vault(remote_add_args(&user.url, &f[1..]))
}

fn remote_status(vh: &VaultHome) -> Value {
    vh.vault(["status", "--json"]).ok().json()["remotes"][0].clone()
}

fn listed_state(vh: &VaultHome, name: &str) -> String {
    let list = vh.vault(["list", "--json"]).ok().json();
    let row = list.as_array().unwrap().iter().find(|r| r["name"] == name);
    row.unwrap()["state"].as_str().unwrap().to_owned()
}

/// Polls `cond` on the platform's listing until it holds; panics after
/// [`WAIT`].
fn wait_platform(
    user: &OsmoUser,
    what: &str,
    cond: impl Fn(&[(String, String, String)]) -> bool,
) -> Vec<(String, String, String)> {
    vault_e2e::poll_until(
        WAIT,
        Duration::from_millis(100),
        what,
        || user.list(),
        |l| cond(l),
    )
}

fn add_registry(vh: &VaultHome, name: &str, registry: &str) {
    let auth = vh.at_file(&format!("{name}-auth"), &secret("reg-auth"));
    vh.vault([
        "add",
        name,
        "--type",
        "registry",
        &format!("registry={registry}"),
        "username=robot",
        &format!("auth={auth}"),
    ])
    .ok();
}

/// Problems 1-4 and 6 of issue 19, with a token that expires in 3 days: the
/// requests go through, the expiry warning is heard on `remote add` (not a
/// "new client" one), `:443` is one registry with the one without it, and a
/// GENERIC key such as `other.key` is stored and published.
#[test]
fn publishes_to_the_real_service_and_hears_of_the_expiry() {
    let Some(user) = OsmoUser::new("publish_real", 3) else {
        return;
    };
    let expiry = date_in_days(3);
    let vh = home();
    let added = add_remote(&vh, &user);
    added
        .ok()
        .stderr_has("works and is kept")
        .stderr_has(&expiry)
        .stderr_has(&user.token_name)
        .never_prints("New client")
        .never_prints("first push");
    let remote = remote_status(&vh);
    assert!(remote.get("last_error").is_none(), "{remote}");
    let warning = remote["token_warning"].as_str().unwrap();
    assert!(warning.contains(&expiry), "{remote}");
    assert!(!warning.contains("New client"), "{remote}");

    // ':443' is the registry without it (the platform normalises so).
    add_registry(&vh, "team.reg", "https://registry.example.com:443/team/");
    vh.vault(["publish", "team.reg", "--to", "osmo", "--as", "teamreg"])
        .ok()
        .stderr_has("published");
    let listed = user.list();
    assert_eq!(
        listed,
        vec![(
            "teamreg".to_owned(),
            "REGISTRY".to_owned(),
            "registry.example.com/team".to_owned()
        )]
    );
    add_registry(&vh, "team.reg2", "registry.example.com/team");
    vh.vault(["publish", "team.reg2", "--to", "osmo", "--as", "teamreg2"])
        .code(5)
        .stderr_has("registry.example.com/team");
    // --repair finds nothing to flip.
    let repaired = vh.vault(["remote", "status", "osmo", "--json"]).ok().json();
    assert_eq!(repaired["missing"], json!([]), "{repaired}");
    assert_eq!(user.list(), listed);

    // A key the platform takes, though no variable name.
    let v = vh.at_file("gen-value", &secret("generic"));
    vh.vault([
        "add",
        "gen",
        "--type",
        "generic",
        &format!("other.key={v}"),
        "plain=x",
    ])
    .ok();
    vh.vault(["publish", "gen", "--to", "osmo"])
        .ok()
        .stderr_has("published");
    assert!(
        user.list()
            .iter()
            .any(|(n, t, _)| n == "gen" && t == "GENERIC")
    );
    vh.vault(["exec", "-c", "gen", "--", "true"])
        .code(2)
        .stderr_has("other.key")
        .stderr_has("environment variable");

    // Where the warning shows, once each, with its date; never as
    // unreachable.
    let list = vh.vault(["remote", "list"]);
    list.ok()
        .stdout_has("token-expiring")
        .never_prints("unreachable");
    assert!(!list.stderr.contains(&expiry), "{list}");
    let status = vh.vault(["status"]);
    status.ok();
    let text = format!("{}{}", status.stdout, status.stderr);
    assert_eq!(text.matches(&expiry).count(), 1, "{status}");
    assert_eq!(listed_state(&vh, "team.reg"), "ok");

    // The access token is nowhere in plaintext.
    vh.stop_daemons();
    for (path, meta) in walk(vh.root()) {
        if !meta.is_file() || path.starts_with(&vh.files) {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !contains_bytes(&bytes, user.token.as_bytes()),
            "the access token is in {}",
            path.display()
        );
    }
}

/// Problem 5: a credential the user made with OSMO's own client for the
/// same registry is left alone: `publish-failed`, naming it, and no request
/// that would replace it.
#[test]
fn someone_elses_credential_is_refused_not_replaced() {
    let Some(user) = OsmoUser::new("publish_real", 30) else {
        return;
    };
    user.set(
        "theirs",
        &json!({"registry_credential": {"registry": "quay.io", "username": "u", "auth": secret("theirs")}}),
    );
    let vh = home();
    add_remote(&vh, &user).ok().never_prints("platform warns");
    add_registry(&vh, "mine", "https://quay.io:443");
    vh.vault(["publish", "mine", "--to", "osmo"])
        .code(1)
        .stderr_has("'theirs'");
    assert_eq!(listed_state(&vh, "mine"), "publish-failed");
    vh.vault(["remote", "status", "osmo"])
        .ok()
        .stderr_has("'theirs'")
        .stderr_has("quay.io")
        .stderr_has("osmo credential delete theirs");
    assert_eq!(
        user.list(),
        vec![(
            "theirs".to_owned(),
            "REGISTRY".to_owned(),
            "quay.io".to_owned()
        )],
        "the platform's credential was replaced"
    );

    // Deleted on the platform, the repair publishes it.
    user.call("DELETE", "/api/credentials/theirs", None, "")
        .expect(200);
    vh.vault(["publish", "--repair", "--to", "osmo"]).ok();
    wait_platform(&user, "published after the repair", |l| {
        l.iter().any(|(n, _, p)| n == "mine" && p == "quay.io")
    });
}
