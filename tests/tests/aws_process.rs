//! `vault aws-process NAME` (docs/user-guide.md and docs/emit.md): the credential_process document,
//! and the failures an SDK reports: locked, expired, wrong type, missing.

#![allow(clippy::unwrap_used)]

use vault_e2e::{MARK, VaultHome, secret};

#[test]
fn prints_version_1_json_and_fails_cleanly() {
    let vh = VaultHome::new();
    vh.init();
    let sk = secret("cp");
    let token = secret("cp-token");
    let f1 = vh.at_file("sk", &sk);
    let f2 = vh.at_file("tok", &token);
    vh.vault([
        "add",
        "aws-cp",
        "--type",
        "aws",
        "access_key_id=ASIAPROCESS",
        &format!("secret_access_key={f1}"),
        &format!("session_token={f2}"),
        "--expires-at",
        "2099-01-01T00:00:00Z",
    ])
    .ok();
    let run = vh.vault(["aws-process", "aws-cp"]);
    let doc = run.ok().json();
    assert_eq!(doc["Version"], 1);
    assert_eq!(doc["AccessKeyId"], "ASIAPROCESS");
    assert_eq!(doc["SecretAccessKey"], sk.as_str());
    assert_eq!(doc["SessionToken"], token.as_str());
    assert_eq!(doc["Expiration"], "2099-01-01T00:00:00Z");

    let f3 = vh.at_file("old", &secret("old"));
    vh.vault([
        "add",
        "aws-old",
        "--type",
        "aws",
        "access_key_id=AKIAOLD",
        &format!("secret_access_key={f3}"),
        "--expires-at",
        "2020-01-01T00:00:00Z",
    ])
    .ok();
    let run = vh.vault(["aws-process", "aws-old"]);
    run.code(7)
        .stderr_has("aws-old expired at 2020-01-01T00:00:00Z");
    assert!(
        run.stdout.is_empty(),
        "nothing an SDK could take for credentials"
    );
    vh.vault_in(["add", "tok", "--type", "token", "token=-"], b"abcd")
        .ok();
    vh.vault(["aws-process", "tok"])
        .code(2)
        .stderr_has("needs an aws one");
    vh.vault(["aws-process", "nope"]).code(4);
    vh.vault(["lock"]).ok();
    let run = vh.vault(["aws-process", "aws-cp"]);
    run.code(3)
        .stderr_has("vault is locked: run 'vault unlock'")
        .never_prints(MARK);
}
