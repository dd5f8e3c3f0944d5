//! `vault rotate` (issue 24, docs/lifecycle.md). An aws key rotation
//! against moto's IAM and STS with authentication on, through a man in
//! the middle that fails one step at a time (a key that STS never takes,
//! a deactivation or a creation whose answer is lost): the user keeps a
//! working key at every step, the emitted `~/.aws/credentials` section
//! follows, botocore reading it is the same user, and the old key ends
//! deleted. Then a plain `FIELD=-` rotation of a `file` credential
//! updating its emitted file and naming the `vault exec` still holding
//! the old value, and of a token published to a platform (the OSMO
//! double), pushed in the same answer.
//!
//! The aws test needs `VAULT_TEST_PYTHON` with botocore and `moto[server]`
//! (`.ci/run` installs both and sets `VAULT_TEST_REQUIRE_MOTO=1`).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use vault_e2e::moto::{Moto, SETUP, moto_python, python_json};
use vault_e2e::osmo::{OsmoDouble, free_addr, remote_add_args};

use vault_e2e::{MARK, RewritingProxy, VaultHome, poll_until, secret};

/// IAM as the user with keys argv[2], argv[3] sees it: `list` (the keys
/// and their status), `create` (a second key), `delete KEY`; and STS
/// `who`, with the `dev` profile of the emitted credentials file when
/// argv[2] is `profile`.
const IAM: &str = r#"
import json, sys
import botocore.session
url, key, secret, op = sys.argv[1:5]
if key == "profile":
    s = botocore.session.Session(profile="dev")
    kw = dict(endpoint_url=url, region_name="us-east-1")
else:
    s = botocore.session.get_session()
    kw = dict(endpoint_url=url, region_name="us-east-1",
              aws_access_key_id=key, aws_secret_access_key=secret)
if op == "who":
    print(json.dumps(s.create_client("sts", **kw).get_caller_identity()["Arn"]))
    sys.exit(0)
iam = s.create_client("iam", **kw)
if op == "list":
    keys = iam.list_access_keys()["AccessKeyMetadata"]
    print(json.dumps({k["AccessKeyId"]: k["Status"] for k in keys}))
elif op == "create":
    print(json.dumps(iam.create_access_key()["AccessKey"]["AccessKeyId"]))
elif op == "delete":
    iam.delete_access_key(AccessKeyId=sys.argv[5])
    print(json.dumps(True))
"#;

/// The double's access token (it takes this one only).
fn pat() -> String {
    format!("osmo-pat-{MARK}-0123456789abcdefghijklmnopqrstu")
}

fn steps(report: &Value) -> Vec<String> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                s["step"].as_str().unwrap(),
                s["outcome"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn an_aws_key_rotation_keeps_a_working_key_whichever_step_fails() {
    let Some(python) = moto_python("rotate") else {
        return;
    };
    let vh = VaultHome::new();
    let moto = Moto::start(&python, vh.root());
    // Armed by each phase: GetCallerIdentity answers after the first of a
    // rotation (the new key's) fail, or UpdateAccessKey's or
    // CreateAccessKey's answer is lost.
    let sts_seen = Arc::new(AtomicUsize::new(0));
    let fail = Arc::new(AtomicUsize::new(0));
    let proxy = {
        let (seen, fail) = (Arc::clone(&sts_seen), Arc::clone(&fail));
        RewritingProxy::start(
            &moto.url,
            Box::new(move |_, _, body| {
                let text = String::from_utf8_lossy(body);
                match fail.load(Ordering::SeqCst) {
                    1 if text.contains("<GetCallerIdentityResponse")
                        && seen.fetch_add(1, Ordering::SeqCst) >= 1 =>
                    {
                        Some(b"<ErrorResponse><Error><Code>InvalidClientTokenId</Code><Message>not yet</Message></Error></ErrorResponse>".to_vec())
                    }
                    2 if text.contains("<UpdateAccessKeyResponse") => {
                        Some(b"<html>gateway timeout</html>".to_vec())
                    }
                    3 if text.contains("<CreateAccessKeyResponse") => {
                        Some(b"<html>gateway timeout</html>".to_vec())
                    }
                    _ => None,
                }
            }),
        )
    };
    let (first, first_secret) = dev_user(&vh, &python, &moto, &proxy);
    let mut secrets = vec![first_secret.clone()];
    let mut said = String::new();
    let emitted = |id: &str| {
        std::fs::read_to_string(vh.user_home.join(".aws/credentials"))
            .unwrap()
            .contains(&format!("aws_access_key_id = {id}"))
    };
    let iam = |key: &str, op: &str, more: &[&str]| iam_as(&vh, &python, &moto, key, op, more);

    // 1. Every step: the old key inactive for the grace, then deleted by
    // the daemon; botocore reading the emitted file is the same user.
    let run = vh.vault(["--json", "rotate", "dev", "--grace", "6s"]);
    run.ok();
    said.push_str(&run.to_string());
    let report = run.json();
    assert_eq!(
        steps(&report),
        [
            "check ok",
            "create ok",
            "store ok",
            "verify ok",
            "file ok",
            "deactivate ok",
            "delete pending"
        ],
        "{report}"
    );
    let second = vh.field("dev", "access_key_id");
    secrets.push(vh.field("dev", "secret_access_key"));
    assert_ne!(second, first);
    assert_eq!(report["live_key"], second.as_str());
    assert_eq!(report["old_key"], first.as_str());
    assert!(
        report["next"].as_str().unwrap().contains("--finish"),
        "{report}"
    );
    let listed = iam(&second, "list", &[]);
    assert_eq!(listed[&first], "Inactive", "{listed}");
    assert_eq!(listed[&second], "Active", "{listed}");
    assert!(emitted(&second));
    assert!(
        iam("profile", "who", &[])
            .as_str()
            .unwrap()
            .ends_with(":user/dev")
    );
    poll_until(
        Duration::from_secs(30),
        Duration::from_millis(500),
        "the old key deleted after its grace",
        || iam(&second, "list", &[]),
        |l| l.get(&first).is_none(),
    );
    let history = vh.vault(["history", "dev"]);
    history.ok().stdout_has("rotate");

    // 2. Two keys already: refused up front, naming the other one.
    let extra = iam(&second, "create", &[]);
    let extra = extra.as_str().unwrap();
    let refused = vh.vault(["rotate", "dev"]);
    said.push_str(&refused.to_string());
    refused
        .code(1)
        .stderr_has(extra)
        .stderr_has("delete-access-key");
    assert_eq!(vh.field("dev", "access_key_id"), second);
    iam(&second, "delete", &[extra]);

    // 3. STS never takes the new key: the old one goes back into the
    // record and the files, the new one is deleted at IAM.
    fail.store(1, Ordering::SeqCst);
    let run = vh.vault(["--json", "rotate", "dev", "--wait", "3s"]);
    run.code(1);
    said.push_str(&run.to_string());
    let report = run.json();
    assert_eq!(
        steps(&report),
        [
            "check ok",
            "create ok",
            "store ok",
            "verify failed",
            "undo ok",
            "delete ok",
            "file ok"
        ],
        "{report}"
    );
    assert_eq!(report["live_key"], second.as_str());
    assert_eq!(vh.field("dev", "access_key_id"), second);
    let listed = iam(&second, "list", &[]);
    assert_eq!(listed.as_object().unwrap().len(), 1, "{listed}");
    assert!(emitted(&second));
    fail.store(0, Ordering::SeqCst);

    // 4. The deactivation's answer is lost: the new key is stored and
    // works, the old one is left; a new rotation is refused until
    // --finish completes this one.
    fail.store(2, Ordering::SeqCst);
    let run = vh.vault(["--json", "rotate", "dev"]);
    run.code(1);
    said.push_str(&run.to_string());
    let report = run.json();
    let third = vh.field("dev", "access_key_id");
    secrets.push(vh.field("dev", "secret_access_key"));
    assert_ne!(third, second);
    assert!(
        steps(&report).ends_with(&["deactivate failed".to_owned(), "delete skipped".to_owned()]),
        "{report}"
    );
    assert!(
        report["next"]
            .as_str()
            .unwrap()
            .contains("vault rotate dev --finish")
    );
    assert!(
        iam("profile", "who", &[])
            .as_str()
            .unwrap()
            .ends_with(":user/dev")
    );
    assert!(iam(&third, "list", &[]).get(&second).is_some());
    vh.vault(["rotate", "dev"]).code(5).stderr_has("--finish");
    let status = vh.vault(["status", "--json"]).json();
    assert_eq!(status["rotations"][0]["name"], "dev", "{status}");
    assert_eq!(status["rotations"][0]["stage"], "deactivate");
    assert_eq!(status["rotations"][0]["old_key"], second.as_str());
    let doctor = vh.vault(["doctor"]);
    let told = format!("{}{}", doctor.stdout, doctor.stderr);
    assert!(
        told.contains("still active") && told.contains("--finish"),
        "{told}"
    );
    fail.store(0, Ordering::SeqCst);
    let run = vh.vault(["--json", "rotate", "dev", "--finish"]);
    run.ok();
    said.push_str(&run.to_string());
    assert_eq!(
        steps(&run.json()),
        ["verify ok", "deactivate ok", "delete ok"],
        "{run}"
    );
    let listed = iam(&third, "list", &[]);
    assert_eq!(
        listed.as_object().unwrap().keys().collect::<Vec<_>>(),
        [&third]
    );
    assert!(
        vh.vault(["status", "--json"])
            .json()
            .get("rotations")
            .is_none()
    );
    vh.vault(["rotate", "dev", "--finish"]).ok();

    // 5. CreateAccessKey's answer is lost (IAM made a key all the same):
    // nothing changed, and the next rotation names the stray key.
    fail.store(3, Ordering::SeqCst);
    let run = vh.vault(["rotate", "dev"]);
    run.code(1).stderr_has("nothing was changed");
    said.push_str(&run.to_string());
    fail.store(0, Ordering::SeqCst);
    assert_eq!(vh.field("dev", "access_key_id"), third);
    let listed = iam(&third, "list", &[]);
    let stray = listed
        .as_object()
        .unwrap()
        .keys()
        .find(|k| **k != third)
        .unwrap()
        .clone();
    vh.vault(["rotate", "dev"]).code(1).stderr_has(&stray);
    assert!(!proxy.rewritten().is_empty());

    // No key in anything vault printed or logged.
    let log = std::fs::read_to_string(vh.paths().log()).unwrap_or_default();
    for s in &secrets {
        assert!(!log.contains(s.as_str()), "a secret in vaultd.log");
        assert!(!said.contains(s.as_str()), "a secret in vault's output");
    }
}

#[test]
fn a_field_rotation_updates_every_file_and_names_the_exec_holding_the_old_value() {
    let vh = VaultHome::new();
    vh.init().ok();
    let old = secret("content-before");
    let path = vh.user_home.join("app.key");
    vh.vault_in(
        [
            "add",
            "gh",
            "--type",
            "file",
            "content=-",
            &format!("path={}", path.display()),
        ],
        old.as_bytes(),
    )
    .ok();
    vh.vault(["emit", "file", "gh"]).ok();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), old);
    // A long-running `vault exec` holding the old value.
    let mut holder = vh
        .command(&vh.vault_bin, ["exec", "-c", "gh", "--", "sleep", "60"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    poll_until(
        Duration::from_secs(20),
        Duration::from_millis(200),
        "the exec in the audit log",
        || vh.vault(["--json", "audit", "gh"]).json(),
        |a| {
            a["entries"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["op"] == "resolve")
        },
    );
    let new = secret("content-after");
    let run = vh.vault_in(["--json", "rotate", "gh", "content=-"], new.as_bytes());
    run.ok().never_prints(MARK);
    let report = run.json();
    assert_eq!(steps(&report), ["set ok", "file ok"], "{report}");
    assert_eq!(report["complete"], true);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), new);
    let running = report["running"].as_array().unwrap();
    assert_eq!(running.len(), 1, "{report}");
    assert_eq!(running[0]["pid"], holder.id());
    let text = vh.vault_in(["rotate", "gh", "content=-"], secret("third").as_bytes());
    text.ok().stderr_has("restart").stderr_has("sleep 60");
    let _ = holder.kill();
    let _ = holder.wait();
    // A published token: the new value is pushed in the same answer.
    let double = OsmoDouble::start_on(&free_addr(), &["--token", &pat()]);
    let f = vh.at_file("osmo-token", &pat());
    vh.vault(remote_add_args(&double.url(), &f[1..])).ok();
    vh.vault_in(
        ["add", "api", "--type", "token", "token=-"],
        secret("api-before").as_bytes(),
    )
    .ok();
    vh.vault(["publish", "api", "--to", "osmo"]).ok();
    let rotated = secret("api-after");
    let run = vh.vault_in(["--json", "rotate", "api", "token=-"], rotated.as_bytes());
    run.ok().never_prints(MARK);
    let report = run.json();
    assert_eq!(steps(&report), ["set ok", "publish ok"], "{report}");
    assert_eq!(report["publications"][0]["state"], "published", "{report}");
    let held = double.state();
    // Compared, never printed: it is a secret.
    assert!(
        held["credentials"]["api"]["body"]["credential"]["token"] == rotated.as_str(),
        "the platform does not hold the new token"
    );

    vh.vault(["rotate", "gh", "nope=-"]).code(2);
    vh.vault(["rotate", "gh"]).code(2).stderr_has("FIELD=-");
    vh.vault_in(["rotate", "missing", "content=-"], b"x")
        .code(4);
}

/// A vault whose STS and IAM are `proxy` (in front of moto), with IAM
/// user `dev`'s first key as record `dev`, emitted as profile `dev`: that
/// key (id, secret).
fn dev_user(
    vh: &VaultHome,
    python: &Path,
    moto: &Moto,
    proxy: &RewritingProxy,
) -> (String, String) {
    vh.write_config(&format!(
        "[refresh]\nsts_endpoint = \"{0}\"\n[rotate]\niam_endpoint = \"{0}\"\n",
        proxy.url()
    ));
    vh.init().ok();
    let setup = python_json(vh, python, SETUP, &[&moto.url]);
    let key = (
        setup["id"].as_str().unwrap().to_owned(),
        setup["secret"].as_str().unwrap().to_owned(),
    );
    vh.add_aws("dev", &key.0, &key.1, &[]);
    vh.vault(["emit", "aws", "dev", "--profile", "dev"]).ok();
    key
}

/// [`IAM`]'s `op` signed with `key` (the secret `dev` holds), or with
/// the emitted profile when `key` is `profile`.
fn iam_as(vh: &VaultHome, python: &Path, moto: &Moto, key: &str, op: &str, more: &[&str]) -> Value {
    let secret = if key == "profile" {
        String::new()
    } else {
        vh.field("dev", "secret_access_key")
    };
    let mut args = vec![moto.url.as_str(), key, secret.as_str(), op];
    args.extend_from_slice(more);
    python_json(vh, python, IAM, &args)
}

/// Waits for vaultd to end `dev`'s rotation in the background with a
/// note naming the unused key `new` (in status and doctor), then clears
/// it with `--finish`; returns what was said.
fn ended_naming(vh: &VaultHome, new: &str) -> String {
    let status = poll_until(
        Duration::from_secs(20),
        Duration::from_millis(200),
        "the rotation ended by vaultd",
        || vh.vault(["status", "--json"]).json(),
        |s| s["rotations"][0]["stage"] == "ended",
    );
    let note = status["rotations"][0]["error"].as_str().unwrap().to_owned();
    assert!(
        note.contains(new) && note.contains("delete-access-key"),
        "{status}"
    );
    // The live key is the one the record holds.
    assert_eq!(
        status["rotations"][0]["live_key"],
        vh.field("dev", "access_key_id").as_str(),
        "{status}"
    );
    let doctor = vh.vault(["doctor"]);
    assert!(doctor.to_string().contains(new), "{doctor}");
    let run = vh.vault(["--json", "rotate", "dev", "--finish"]);
    run.ok();
    let report = run.json();
    assert_eq!(steps(&report), ["finish ok"], "{report}");
    assert!(report.to_string().contains(new), "{report}");
    let status = vh.vault(["status", "--json"]).json();
    assert!(status.get("rotations").is_none(), "{status}");
    format!("{note}{doctor}{run}")
}

/// The revision `name` is at now.
fn revision(vh: &VaultHome, name: &str) -> String {
    let revs = vh.vault(["--json", "history", name]).json();
    let newest = revs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["revision"].as_u64().unwrap())
        .max();
    newest.unwrap().to_string()
}

#[test]
fn a_key_a_record_holds_again_or_shares_is_never_left_switched_off() {
    let Some(python) = moto_python("rotate") else {
        return;
    };
    let vh = VaultHome::new();
    let moto = Moto::start(&python, vh.root());
    // Armed by a phase: a `vault` command run while STS's answer to the
    // GetCallerIdentity after the first `skip` is held back, i.e. while
    // the rotation verifies the key it just stored.
    let hook: Arc<Mutex<Option<(usize, std::process::Command)>>> = Arc::default();
    // Set by a phase: IAM's next answer to UpdateAccessKey is lost (the
    // change is made, the client hears garbage).
    let lose_update = Arc::new(AtomicBool::new(false));
    let proxy = {
        let (hook, lose) = (Arc::clone(&hook), Arc::clone(&lose_update));
        RewritingProxy::start(
            &moto.url,
            Box::new(move |_, _, body| {
                let text = String::from_utf8_lossy(body);
                if text.contains("<UpdateAccessKeyResponse") && lose.swap(false, Ordering::SeqCst) {
                    return Some(b"<lost/>".to_vec());
                }
                if !text.contains("<GetCallerIdentityResponse") {
                    return None;
                }
                let mut armed = hook.lock().unwrap();
                match armed.as_mut() {
                    Some((skip, _)) if *skip > 0 => *skip -= 1,
                    Some(_) => {
                        let (_, mut cmd) = armed.take().unwrap();
                        let out = cmd.output().unwrap();
                        assert!(out.status.success(), "{out:?}");
                    }
                    None => {}
                }
                None
            }),
        )
    };
    let (first, first_secret) = dev_user(&vh, &python, &moto, &proxy);
    let iam = |key: &str, op: &str, more: &[&str]| iam_as(&vh, &python, &moto, key, op, more);
    let works = || {
        iam("profile", "who", &[])
            .as_str()
            .unwrap()
            .ends_with(":user/dev")
    };
    let mut said = String::new();

    // 1. Another record holds the same key: refused before anything
    // changes, naming it.
    vh.add_aws("dev-copy", &first, &first_secret, &[]);
    let run = vh.vault(["rotate", "dev"]);
    said.push_str(&run.to_string());
    run.code(1)
        .stderr_has("'dev-copy'")
        .stderr_has("vault rm dev-copy")
        .stderr_has("nothing was changed");
    assert_eq!(iam(&first, "list", &[]).as_object().unwrap().len(), 1);
    vh.vault(["rm", "dev-copy"]).ok();

    // 2. Put back to the old key during the grace: vaultd turns the old
    // key on again at once (signed with the new one), and drops the
    // rotation. A `vault exec` holding the old key is named; a `vault
    // exec --server`, whose child asks afresh, is not.
    let spawn = |args: &[&str]| {
        vh.command(&vh.vault_bin, args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let plain = spawn(&["exec", "-c", "dev", "--", "sleep", "60"]);
    let served = spawn(&["exec", "--server", "-c", "dev", "--", "sleep", "60"]);
    poll_until(
        Duration::from_secs(20),
        Duration::from_millis(200),
        "both execs in the audit log",
        || vh.vault(["--json", "audit", "dev"]).json(),
        |a| {
            let pids: Vec<u64> = a["entries"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e["client"]["pid"].as_u64())
                .collect();
            [plain.id(), served.id()]
                .iter()
                .all(|p| pids.contains(&u64::from(*p)))
        },
    );
    let before = revision(&vh, "dev");
    let run = vh.vault(["--json", "rotate", "dev", "--grace", "1h"]);
    run.ok();
    said.push_str(&run.to_string());
    let report = run.json();
    assert!(
        steps(&report).ends_with(&["deactivate ok".to_owned(), "delete pending".to_owned()]),
        "{report}"
    );
    let running: Vec<u64> = report["running"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(running, [u64::from(plain.id())], "{report}");
    for mut c in [plain, served] {
        let _ = c.kill();
        let _ = c.wait();
    }
    let second = vh.field("dev", "access_key_id");
    let second_secret = vh.field("dev", "secret_access_key");
    assert_eq!(iam(&second, "list", &[])[&first], "Inactive");
    vh.vault(["restore", "dev", "--revision", &before]).ok();
    assert_eq!(vh.field("dev", "access_key_id"), first);
    poll_until(
        Duration::from_secs(20),
        Duration::from_millis(300),
        "the restored old key active again",
        || iam(&first, "list", &[]),
        |l| l[&first] == "Active" && l[&second] == "Active",
    );
    assert!(works(), "botocore reads the restored key from the file");
    ended_naming(&vh, &second);
    let log = std::fs::read_to_string(vh.paths().log()).unwrap_or_default();
    assert!(log.contains("finished in the background"), "{log}");
    iam(&first, "delete", &[&second]);

    // 3. Put back to the old key while the new one is verified (after it
    // was stored): the old key is not switched off, and --finish drops
    // the rotation, naming the unused new key.
    let before = revision(&vh, "dev");
    *hook.lock().unwrap() = Some((
        1,
        vh.command(&vh.vault_bin, ["restore", "dev", "--revision", &before]),
    ));
    let run = vh.vault(["--json", "rotate", "dev"]);
    said.push_str(&run.to_string());
    run.code(1);
    assert!(hook.lock().unwrap().is_none(), "the restore ran");
    let report = run.json();
    assert!(
        steps(&report).ends_with(&["deactivate failed".to_owned(), "delete skipped".to_owned()]),
        "{report}"
    );
    assert!(
        report.to_string().contains("changed during the rotation"),
        "{report}"
    );
    assert_eq!(vh.field("dev", "access_key_id"), first);
    let listed = iam(&first, "list", &[]);
    assert_eq!(listed[&first], "Active", "{listed}");
    let third = listed
        .as_object()
        .unwrap()
        .keys()
        .find(|k| **k != first)
        .unwrap()
        .clone();
    assert!(works());
    // The restore woke vaultd, which ends the rotation once `vault
    // rotate` lets go, leaving a note that names the unused key.
    said.push_str(&ended_naming(&vh, &third));
    iam(&first, "delete", &[&third]);

    // 4. IAM switched the old key off but its answer was lost, and the
    // record is put back to the old key: vaultd turns it on again.
    let before = revision(&vh, "dev");
    lose_update.store(true, Ordering::SeqCst);
    let run = vh.vault(["--json", "rotate", "dev"]);
    said.push_str(&run.to_string());
    run.code(1);
    let report = run.json();
    assert!(
        steps(&report).ends_with(&["deactivate failed".to_owned(), "delete skipped".to_owned()]),
        "{report}"
    );
    let fourth = vh.field("dev", "access_key_id");
    assert_eq!(iam(&fourth, "list", &[])[&first], "Inactive");
    vh.vault(["restore", "dev", "--revision", &before]).ok();
    poll_until(
        Duration::from_secs(20),
        Duration::from_millis(300),
        "the restored old key active again after a lost answer",
        || iam(&first, "list", &[]),
        |l| l[&first] == "Active",
    );
    assert!(works());
    said.push_str(&ended_naming(&vh, &fourth));
    iam(&first, "delete", &[&fourth]);

    let log = std::fs::read_to_string(vh.paths().log()).unwrap_or_default();
    for s in [&first_secret, &second_secret] {
        assert!(!log.contains(s.as_str()), "a secret in vaultd.log");
        assert!(!said.contains(s.as_str()), "a secret in vault's output");
    }
}
