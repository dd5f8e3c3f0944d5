//! STS minting against a real peer (docs/refresh.md): moto's server on 127.0.0.1
//! with authentication on (`INITIAL_NO_AUTH_ACTION_COUNT`), so every
//! AssumeRole the daemon sends is signature-checked by moto, and the minted
//! `ASIA…` session then passes `sts get-caller-identity` through botocore.
//! Also: an MFA code from a seed; a chain of roles minted hop by hop with
//! one MFA code; a wrong source key is refused by
//! moto and shown in `vault status`;
//! 50 concurrent `aws-process` callers on an about-to-expire session make
//! exactly one STS call.
//!
//! Needs `VAULT_TEST_PYTHON` with botocore and `moto[server]` (`.ci/run`
//! installs both and sets `VAULT_TEST_REQUIRE_MOTO=1`, so it never skips
//! there).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vault_e2e::moto::{Moto, SETUP, assert_assumed_role, moto_python, python_json};
use vault_e2e::{VaultHome, oathtool, otp_seed, run_command, secret};

/// A vault, moto with a user and a role (SETUP), and that user's keys as
/// the long-term source `base` (its secret only ever in a file). The
/// user's key id and the role's ARN.
fn moto_with_base(vh: &VaultHome, python: &Path) -> (Moto, String, String) {
    vh.init();
    let moto = Moto::start(python, vh.root());
    let setup = python_json(vh, python, SETUP, &[&moto.url]);
    let id = setup["id"].as_str().unwrap().to_owned();
    vh.add_aws("base", &id, setup["secret"].as_str().unwrap(), &[]);
    (moto, id, setup["role"].as_str().unwrap().to_owned())
}

#[test]
fn assume_role_is_signed_checked_by_moto_and_single_flight() {
    let Some(python) = moto_python("sts") else {
        return;
    };
    let vh = VaultHome::new();
    let (moto, id, role) = moto_with_base(&vh, &python);
    let endpoint = format!("sts_endpoint={}", moto.url);
    let minted = |name: &str, source: &str| {
        vh.vault([
            "add",
            name,
            "--type",
            "aws",
            &format!("source={source}"),
            &format!("role_arn={role}"),
            &endpoint,
            "region=us-east-1",
            "duration=15m",
        ])
        .ok();
    };
    minted("deploy", "base");

    let run = vh.vault(["aws-process", "deploy"]);
    if run.code != 0 {
        let status = vh.vault(["status", "--json"]);
        panic!("{run}\nstatus: {}", status.stdout);
    }
    let doc = run.json();
    let key = doc["AccessKeyId"].as_str().unwrap().to_owned();
    assert!(key.starts_with("ASIA"), "{doc}");
    assert!(!doc["SessionToken"].as_str().unwrap().is_empty());
    let left = vault_protocol::timefmt::Timestamp::parse(doc["Expiration"].as_str().unwrap())
        .unwrap()
        .unix()
        - vault_protocol::timefmt::Timestamp::now().unix();
    assert!(
        (800..=900).contains(&left),
        "a 15-minute session: {left}s left"
    );
    // moto accepts the minted session: the daemon's signature and the keys
    // it stored are both real.
    assert_assumed_role(&vh, &python, &moto, &run.stdout, "deploy");

    // About to expire (as if the session had run for minutes): 50 callers
    // at once, one AssumeRole.
    // (Due under half its lifetime left: with 6 s, at most 1 s left after
    // 5.2 s is surely under it, whatever the second boundaries.)
    let soon = vault_protocol::timefmt::Timestamp::now().plus(Duration::from_secs(6));
    vh.vault(["set", "deploy", "--expires-at", &soon.to_rfc3339()])
        .ok();
    std::thread::sleep(Duration::from_millis(5200));
    let before = moto.posts();
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let cmd = vh.command(&vault_e2e::binaries().vault, ["aws-process", "deploy"]);
            std::thread::spawn(move || run_command(cmd, None, Duration::from_secs(60)))
        })
        .collect();
    let mut keys: Vec<String> = callers
        .into_iter()
        .map(|c| {
            let run = c.join().unwrap();
            run.ok().json()["AccessKeyId"].as_str().unwrap().to_owned()
        })
        .collect();
    keys.dedup();
    assert_eq!(keys.len(), 1, "every caller got the same new session");
    assert_ne!(keys[0], key, "a new session");
    assert_eq!(moto.posts() - before, 1, "one STS call for 50 callers");

    // With an MFA device, the code comes from mfa_command, run by the
    // daemon (moto does not check codes; the form is unit-tested).
    let ran = vh.root().join("mfa-ran");
    vh.vault([
        "add",
        "mfa-deploy",
        "--type",
        "aws",
        "source=base",
        &format!("role_arn={role}"),
        &endpoint,
        "mfa_serial=arn:aws:iam::123456789012:mfa/dev",
        &format!("mfa_command=touch {} && echo 123456", ran.display()),
    ])
    .ok();
    let doc = vh.vault(["aws-process", "mfa-deploy"]).ok().json();
    assert!(
        doc["AccessKeyId"].as_str().unwrap().starts_with("ASIA"),
        "{doc}"
    );
    assert!(ran.exists(), "the daemon ran mfa_command");

    // A wrong source secret: moto refuses the signature; nothing is minted
    // and status says why.
    vh.add_aws("wrong", &id, &secret("not-the-key"), &[]);
    minted("broken", "wrong");
    let run = vh.vault(["aws-process", "broken"]);
    run.code(1).stderr_has("broken has no access key yet");
    let status = vh.vault(["status", "--json"]).ok().json();
    let error = status["refresh"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("STS refused AssumeRole (403 SignatureDoesNotMatch)"),
        "{status}"
    );
}

/// The STS calls moto was sent (`AssumeRole`, `GetSessionToken`), from its
/// recording (`argv[1]`), in order: the action and, with an MFA code, the
/// code, the device and the time its request was signed (as oathtool's
/// `--now` takes it).
const STS_CALLS: &str = r#"
import base64, json, sys, urllib.parse
out = []
for line in open(sys.argv[1]):
    r = json.loads(line)
    body = r.get("body") or ""
    if r.get("body_encoded"):
        body = base64.b64decode(body).decode()
    form = urllib.parse.parse_qs(body)
    action = form.get("Action", [""])[0]
    if action not in ("AssumeRole", "GetSessionToken"):
        continue
    call = {"action": action}
    if "TokenCode" in form:
        d = {k.lower(): v for k, v in r["headers"].items()}["x-amz-date"]
        call["at"] = f"{d[0:4]}-{d[4:6]}-{d[6:8]} {d[9:11]}:{d[11:13]}:{d[13:15]} UTC"
        call["code"] = form["TokenCode"][0]
        call["serial"] = form["SerialNumber"][0]
    out.append(call)
print(json.dumps(out))
"#;

#[test]
fn an_mfa_code_from_a_seed_in_the_vault_is_what_oathtool_computes() {
    let test = "an_mfa_code_from_a_seed_in_the_vault_is_what_oathtool_computes";
    let (Some(python), Some(oathtool)) = (moto_python("sts"), oathtool(test)) else {
        return;
    };
    let vh = VaultHome::new();
    let (moto, _, role) = moto_with_base(&vh, &python);
    // The MFA device's seed beside the IAM user's keys.
    let seed = otp_seed();
    vh.vault_in(["set", "base", "otp=-"], seed.as_bytes()).ok();
    let serial = "arn:aws:iam::123456789012:mfa/dev";
    let session = |name: &str, from: &str| {
        vh.vault([
            "add",
            name,
            "--type",
            "aws",
            "source=base",
            &format!("role_arn={role}"),
            &format!("sts_endpoint={}", moto.url),
            &format!("mfa_serial={serial}"),
            &format!("mfa_otp={from}"),
        ])
        .ok();
    };
    session("mfa-deploy", "base");
    let run = vh.vault(["aws-process", "mfa-deploy"]);
    run.ok().never_prints(&seed);
    assert!(
        run.json()["AccessKeyId"]
            .as_str()
            .unwrap()
            .starts_with("ASIA"),
        "{run}"
    );
    // A second session from the same device right away: AWS refuses a code
    // it has seen, so the daemon waits for the next one.
    session("mfa-other", "base");
    vh.vault(["aws-process", "mfa-other"]).ok();
    let rec = vh.root().join("moto.rec");
    let calls = python_json(&vh, &python, STS_CALLS, &[rec.to_str().unwrap()]);
    let sent: Vec<&serde_json::Value> = calls
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c.get("code").is_some())
        .collect();
    assert_eq!(sent.len(), 2, "two AssumeRoles with a code: {sent:?}");
    for one in &sent {
        assert_eq!(one["serial"], serial);
        let mut cmd = Command::new(&oathtool);
        cmd.args(["--totp", "-b", "--now", one["at"].as_str().unwrap(), &seed]);
        let theirs = run_command(cmd, None, Duration::from_secs(10));
        theirs.ok();
        assert_eq!(one["code"].as_str().unwrap(), theirs.stdout.trim());
    }
    assert_ne!(sent[0]["code"], sent[1]["code"], "a code was sent twice");
    assert!(!std::fs::read_to_string(&rec).unwrap().contains(&seed));

    // A record without a seed mints nothing, and status says what to add.
    vh.vault_in(["add", "plain", "--type", "token", "token=-"], b"t")
        .ok();
    session("no-seed", "plain");
    vh.vault(["aws-process", "no-seed"]).code(1);
    let status = vh.vault(["status", "--json"]).ok().json();
    let errors = status["refresh"].to_string();
    assert!(errors.contains("vault set plain otp=-"), "{status}");
}

/// A second role, `admin`, that any principal may assume (moto does not
/// check trust policies): its ARN. Signed by the setup user.
const ADMIN_ROLE: &str = r#"
import json, sys
import botocore.session
s = botocore.session.get_session()
iam = s.create_client("iam", endpoint_url=sys.argv[1], region_name="us-east-1",
                      aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3])
trust = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
    "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]})
allow = json.dumps({"Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
role = iam.create_role(RoleName="admin", AssumeRolePolicyDocument=trust)["Role"]
iam.put_role_policy(RoleName="admin", PolicyName="all", PolicyDocument=allow)
print(json.dumps(role["Arn"]))
"#;

#[test]
fn a_role_chain_reuses_one_mfa_session_for_every_hop() {
    let Some(python) = moto_python("sts") else {
        return;
    };
    let vh = VaultHome::new();
    let (moto, id, role) = moto_with_base(&vh, &python);
    let seed = otp_seed();
    vh.vault_in(["set", "base", "otp=-"], seed.as_bytes()).ok();
    let base_secret = vh.field("base", "secret_access_key");
    let admin = python_json(&vh, &python, ADMIN_ROLE, &[&moto.url, &id, &base_secret]);
    let admin = admin.as_str().unwrap();
    let endpoint = format!("sts_endpoint={}", moto.url);
    let add = |name: &str, source: &str, role: &str, more: &[&str]| {
        let mut args = vec![
            "add".to_owned(),
            name.to_owned(),
            "--type".to_owned(),
            "aws".to_owned(),
            format!("source={source}"),
            format!("role_arn={role}"),
            endpoint.clone(),
        ];
        args.extend(more.iter().map(|m| (*m).to_owned()));
        vh.vault(&args).ok();
    };
    // The MFA session: the first hop, with the device's code; two roles
    // chained from it, without one.
    add(
        "deploy",
        "base",
        &role,
        &[
            "mfa_serial=arn:aws:iam::123456789012:mfa/dev",
            "mfa_otp=base",
        ],
    );
    add("admin", "deploy", admin, &["duration=2h"]);
    add("ops", "deploy", admin, &["session_name=ops"]);

    let run = vh.vault(["aws-process", "admin"]);
    run.ok().never_prints(&seed);
    assert_assumed_role(&vh, &python, &moto, &run.stdout, "admin");
    vh.vault(["aws-process", "ops"]).ok();
    let rec = vh.root().join("moto.rec");
    let sent = python_json(&vh, &python, STS_CALLS, &[rec.to_str().unwrap()]);
    let sent: Vec<(String, bool)> = sent
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap().to_owned(),
                a.get("code").is_some(),
            )
        })
        .collect();
    // deploy (with the code), then admin from it; ops from the same
    // deploy session: one code for the whole chain.
    assert_eq!(
        sent,
        [
            ("AssumeRole".to_owned(), true),
            ("AssumeRole".to_owned(), false),
            ("AssumeRole".to_owned(), false),
        ],
        "{sent:?}"
    );
    // Role chaining: AWS gives the chained hop one hour at most.
    let admin_rec = vh.vault(["--json", "get", "admin"]).json();
    let expires =
        vault_protocol::timefmt::Timestamp::parse(admin_rec["expires_at"].as_str().unwrap())
            .unwrap()
            .unix();
    let left = expires - vault_protocol::timefmt::Timestamp::now().unix();
    assert!((0..=3600).contains(&left), "admin expires in {left} s");

    // GetSessionToken from temporary keys, a loop: refused, saying why.
    vh.vault(["add", "sess", "--type", "aws", "source=deploy", &endpoint])
        .ok();
    vh.vault(["aws-process", "sess"]).code(1);
    add("loop-a", "loop-b", admin, &[]);
    add("loop-b", "loop-a", admin, &[]);
    vh.vault(["aws-process", "loop-a"]).code(1);
    let status = vh.vault(["status", "--json"]).ok().json();
    let errors = status["refresh"].to_string();
    assert!(
        errors.contains("GetSessionToken takes long-term"),
        "{status}"
    );
    assert!(errors.contains("loop"), "{status}");
}
