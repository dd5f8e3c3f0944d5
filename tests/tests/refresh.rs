//! Temporary credentials (docs/refresh.md): a record with a `refresh_command` is
//! minted on first use and refreshed before it is handed out with little
//! left, once whatever the number of callers; a failed refresh keeps the
//! still-valid value and shows in `vault status`; an emitted profile is
//! refreshed in place by the daemon alone; botocore in a long-running child
//! keeps working across the original expiry; an `exec` child whose
//! credentials nothing renews is warned five minutes before they expire.
//!
//! Lifetimes are seconds: a record is due for refresh under half its
//! lifetime left (docs/refresh.md), so nothing waits for minutes.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vault_e2e::{VaultHome, secret, test_python};

/// A refresh command under test: counts its runs, fails while `fail`
/// exists, and prints credential_process JSON whose keys carry the run
/// number and whose lifetime is the content of `life` (seconds).
struct Script {
    dir: PathBuf,
    secret: String,
}

impl Script {
    fn new(vh: &VaultHome, life: u64) -> Self {
        Self::new_in(vh, "refresh", life)
    }

    fn new_in(vh: &VaultHome, sub: &str, life: u64) -> Self {
        let dir = vh.root().join(sub);
        std::fs::create_dir_all(&dir).unwrap();
        let secret = secret("refresh");
        std::fs::write(dir.join("life"), life.to_string()).unwrap();
        let d = dir.display();
        // `>> runs` is one O_APPEND write per run: concurrent runs could not
        // hide each other.
        let body = format!(
            r#"#!/bin/sh
echo run >> {d}/runs
n=$(wc -l < {d}/runs)
if [ -f {d}/fail ]; then echo "session expired: run sso login again" >&2; exit 1; fi
sleep 0.3
exp=$(date -u -d "@$(( $(date +%s) + $(cat {d}/life) ))" +%Y-%m-%dT%H:%M:%SZ)
printf '{{"Version": 1, "AccessKeyId": "ASIAREFRESH%04d", "SecretAccessKey": "{secret}-%d", "SessionToken": "tok-%d", "Expiration": "%s"}}\n' "$n" "$n" "$n" "$exp"
"#
        );
        let path = dir.join("mint.sh");
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        Self { dir, secret }
    }

    fn command(&self) -> String {
        format!("refresh_command={}", self.dir.join("mint.sh").display())
    }

    fn runs(&self) -> usize {
        std::fs::read_to_string(self.dir.join("runs"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn set_life(&self, secs: u64) {
        std::fs::write(self.dir.join("life"), secs.to_string()).unwrap();
    }

    fn fail(&self, on: bool) {
        let flag = self.dir.join("fail");
        if on {
            std::fs::write(flag, "").unwrap();
        } else {
            std::fs::remove_file(flag).unwrap();
        }
    }
}

fn key_id(vh: &VaultHome, name: &str) -> String {
    vh.vault(["get", name, "--field", "access_key_id"])
        .ok()
        .stdout
        .trim()
        .to_owned()
}

/// Waits (up to `limit`) until `cond` holds.
fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A vault with the aws record `sts` (region eu-west-1) minted by a
/// [`Script`] with sessions of `life` seconds.
fn vault_with_sts(life: u64) -> (VaultHome, Script) {
    let vh = VaultHome::new();
    vh.init();
    let script = Script::new(&vh, life);
    let args = [
        "add",
        "sts",
        "--type",
        "aws",
        &script.command(),
        "region=eu-west-1",
    ];
    vh.vault(args).ok();
    (vh, script)
}

#[test]
fn minted_on_first_use_and_refreshed_once_for_fifty_callers() {
    let (vh, script) = vault_with_sts(6);
    assert_eq!(script.runs(), 0, "adding runs nothing");
    // First use mints it.
    assert_eq!(key_id(&vh, "sts"), "ASIAREFRESH0001");
    assert_eq!(script.runs(), 1);
    let got = vh.vault(["get", "sts", "--json"]).ok().json();
    assert_eq!(
        got["fields"]["secret_access_key"],
        format!("{}-1", script.secret)
    );
    assert_eq!(got["fields"]["region"], "eu-west-1", "other fields kept");
    // Still fresh: served as it is.
    assert_eq!(key_id(&vh, "sts"), "ASIAREFRESH0001");
    assert_eq!(script.runs(), 1);

    // Under half its 6 s lifetime left (at most 1 s after 5.2 s, whatever
    // the second boundaries): the next callers refresh it, once.
    script.set_life(3600);
    std::thread::sleep(Duration::from_millis(5200));
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let cmd = vh.command(&vault_e2e::binaries().vault, ["aws-process", "sts"]);
            std::thread::spawn(move || vault_e2e::run_command(cmd, None, Duration::from_secs(60)))
        })
        .collect();
    for caller in callers {
        let run = caller.join().unwrap();
        let doc = run.ok().json();
        assert_eq!(doc["AccessKeyId"], "ASIAREFRESH0002", "{run}");
        assert_eq!(doc["SessionToken"], "tok-2");
    }
    assert_eq!(script.runs(), 2, "one refresh for 50 concurrent callers");
    let history = vh.vault(["history", "sts", "--json"]).ok().json();
    let changes: Vec<_> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["change"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(changes, ["refresh", "refresh", "add"], "{history}");
}

#[test]
fn a_failed_refresh_keeps_the_valid_value_backs_off_and_shows_in_status() {
    let vh = VaultHome::new();
    vh.init();
    // Lives 11-12 s, due after half of it: the sleep makes it due and
    // leaves 3.5 s or more for the checks while it is still valid.
    let script = Script::new(&vh, 12);
    vh.vault(["add", "sts", "--type", "aws", &script.command()])
        .ok();
    assert_eq!(key_id(&vh, "sts"), "ASIAREFRESH0001");
    script.fail(true);
    std::thread::sleep(Duration::from_millis(7500));
    // Due, the refresh fails: the still-valid value is served.
    assert_eq!(key_id(&vh, "sts"), "ASIAREFRESH0001");
    assert_eq!(script.runs(), 2);
    // Backing off: the next use does not run the command again.
    assert_eq!(key_id(&vh, "sts"), "ASIAREFRESH0001");
    assert_eq!(script.runs(), 2, "a failing command is not rerun at once");
    let status = vh.vault(["status", "--json"]).ok().json();
    let failing = &status["refresh"][0];
    assert_eq!(failing["name"], "sts", "{status}");
    assert!(
        failing["error"]
            .as_str()
            .unwrap()
            .contains("run sso login again"),
        "{status}"
    );
    let text = vh.vault(["status"]).ok().stdout.clone();
    assert!(
        text.contains("refresh") && text.contains("sts failing"),
        "{text}"
    );
    vh.vault(["status"]).never_prints(&script.secret);

    // Fixed: after the backoff, the next use refreshes and status is clear.
    script.fail(false);
    script.set_life(3600);
    // (Meanwhile the value expires: `get` exits 7 until the retry.)
    wait_until(Duration::from_secs(30), "the refresh recovers", || {
        let run = vh.vault(["get", "sts", "--field", "access_key_id"]);
        run.code == 0 && run.stdout.trim() == "ASIAREFRESH0003"
    });
    let status = vh.vault(["status", "--json"]).ok().json();
    assert!(status.get("refresh").is_none(), "{status}");

    // Never minted, failing: no half document for an SDK, but the reason.
    let broken = Script::new_in(&vh, "broken", 60);
    broken.fail(true);
    vh.vault(["add", "never", "--type", "aws", &broken.command()])
        .ok();
    let run = vh.vault(["aws-process", "never"]);
    run.code(1)
        .stderr_has("never has no access key yet: its refresh failed");
    assert!(run.stdout.is_empty(), "{run}");
    vh.vault(["exec", "-c", "never", "--", "true"])
        .stderr_has("access_key_id");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn an_emitted_profile_is_refreshed_in_place_by_the_daemon() {
    let vh = VaultHome::new();
    vh.init();
    let script = Script::new(&vh, 4);
    vh.vault(["add", "sts", "--type", "aws", &script.command()])
        .ok();
    let aws = vh.user_home.join(".aws");
    std::fs::create_dir_all(&aws).unwrap();
    let creds = aws.join("credentials");
    let user = "# mine\n[default]\naws_access_key_id = AKIAUSER\naws_secret_access_key = user\n";
    std::fs::write(&creds, user).unwrap();
    vh.vault(["emit", "aws", "sts", "--profile", "work"]).ok();
    assert!(read(&creds).contains("ASIAREFRESH0001"));
    // Nobody asks for it: the daemon's ticker refreshes it before it dies,
    // in place, again and again.
    wait_until(Duration::from_secs(20), "a second refresh", || {
        read(&creds).contains("ASIAREFRESH0003")
    });
    let text = read(&creds);
    assert!(text.starts_with(user), "user lines kept:\n{text}");
    assert_eq!(text.matches("[work]").count(), 1, "{text}");
    assert!(!text.contains("ASIAREFRESH0001"), "{text}");
}

#[test]
fn botocore_in_a_long_running_child_works_across_the_first_expiry() {
    let Some(python) = test_python("refresh: botocore --server") else {
        return;
    };
    let (vh, script) = vault_with_sts(4);
    // The child keeps asking botocore for credentials for 10 s, well past
    // the first session's 4 s; botocore re-fetches from the exec server
    // (every time, with so little left) and must never get an expired key.
    let py = r#"
import json, time, datetime
import botocore.session
c = botocore.session.get_session().get_credentials()
keys, stale = [], 0
end = time.time() + 10
while time.time() < end:
    f = c.get_frozen_credentials()
    if c._expiry_time is not None and c._expiry_time <= datetime.datetime.now(datetime.timezone.utc):
        stale += 1
    if not keys or keys[-1] != f.access_key:
        keys.append(f.access_key)
    time.sleep(0.25)
print(json.dumps({"method": c.method, "keys": keys, "stale": stale}))
"#;
    let run = vault_e2e::run_command(
        vh.command(
            &vault_e2e::binaries().vault,
            [
                "exec",
                "--server",
                "-c",
                "sts",
                "--",
                &python.display().to_string(),
                "-c",
                py,
            ],
        ),
        None,
        Duration::from_secs(120),
    );
    let got: serde_json::Value = serde_json::from_str(run.ok().stdout.trim()).unwrap();
    assert_eq!(got["method"], "container-role", "{got}");
    assert_eq!(got["stale"], 0, "botocore held an expired key: {got}");
    let keys = got["keys"].as_array().unwrap();
    assert!(keys.len() >= 3, "refreshed across expiries: {got}");
    assert_eq!(keys[0], "ASIAREFRESH0001");
    assert!(
        script.runs() >= keys.len(),
        "each key was minted by a refresh"
    );
}

#[test]
fn exec_warns_five_minutes_before_an_unrenewable_credential_expires() {
    let vh = VaultHome::new();
    vh.init();
    // Expires in 5 min 3 s: the warning is due 3 s into the child's life.
    let at = vault_protocol::timefmt::Timestamp::now().plus(Duration::from_secs(303));
    vh.vault_in(
        [
            "add",
            "tok",
            "--type",
            "token",
            "token=-",
            "--expires-at",
            &at.to_rfc3339(),
        ],
        secret("tok").as_bytes(),
    )
    .ok();
    let run = vh.vault(["exec", "-c", "tok", "--", "sleep", "6"]);
    run.ok().stderr_has("vault exec: tok expires in ");
    assert_eq!(
        run.stderr.matches("cannot be renewed").count(),
        1,
        "one line: {run}"
    );
    // Far from expiry: no warning.
    let later = vault_protocol::timefmt::Timestamp::now().plus(Duration::from_secs(3600));
    vh.vault(["set", "tok", "--expires-at", &later.to_rfc3339()])
        .ok();
    let run = vh.vault(["exec", "-c", "tok", "--", "sleep", "2"]);
    assert!(!run.ok().stderr.contains("cannot be renewed"), "{run}");
}
