//! The core loop of issue 2, end to end through the real binaries: init, add
//! every type, get, list in every format, set, history, restore, rename, rm,
//! lock, the locked path, unlock.

// Helper fns of a test report failure by panicking.
#![allow(clippy::unwrap_used)]

use vault_e2e::{MARK, PASSPHRASE, VaultHome, samples};

fn get_field(vh: &VaultHome, name: &str, field: &str) -> String {
    let run = vh.vault(["get", name, "--field", field]);
    run.ok();
    run.stdout.clone()
}

#[test]
fn lifecycle_of_every_credential_type() {
    let vh = VaultHome::new();
    let init = vh.init();
    init.never_prints(PASSPHRASE);
    assert!(
        init.stdout.contains("age1"),
        "init prints the vault's recipient:\n{init}"
    );

    let samples = samples(&vh, "");
    for s in &samples {
        s.add(&vh);
    }

    // get: --field prints the raw value and a newline; --json the record.
    for s in &samples {
        let out = get_field(&vh, &s.name, s.secret_field);
        if s.secret_value.ends_with('\n') {
            assert_eq!(
                out.trim_end_matches('\n'),
                s.secret_value.trim_end_matches('\n'),
                "{} {}",
                s.name,
                s.secret_field
            );
        } else {
            assert_eq!(
                out,
                format!("{}\n", s.secret_value),
                "`vault get {} --field {}` prints the raw value and a newline",
                s.name,
                s.secret_field
            );
        }
        if let Some((field, value)) = &s.plain {
            assert_eq!(get_field(&vh, &s.name, field), format!("{value}\n"));
        }
        let doc = vh.vault(["--json", "get", &s.name]).ok().json();
        assert_eq!(doc["name"], s.name.as_str(), "{doc}");
        assert_eq!(doc["type"], s.kind, "{doc}");
        assert_eq!(
            doc["fields"][s.secret_field].as_str(),
            Some(s.secret_value.as_str()),
            "{} {}: the value round-trips byte for byte through @file/stdin",
            s.name,
            s.secret_field
        );
    }

    // list never prints a secret value, in any format.
    let table = vh.vault(["list", "--format", "table"]);
    table.ok().never_prints(MARK);
    for s in &samples {
        assert!(
            table.stdout.contains(&s.name),
            "{} in table:\n{table}",
            s.name
        );
    }
    let json = vh.vault(["list", "--format", "json"]);
    json.ok().never_prints(MARK);
    let listed = json.json();
    let listed = listed.as_array().expect("list --format json is an array");
    assert_eq!(listed.len(), samples.len(), "{json}");
    for entry in listed {
        for key in [
            "name",
            "type",
            "description",
            "tags",
            "created_at",
            "updated_at",
            "expires_at",
            "expired",
            "state",
        ] {
            assert!(entry.get(key).is_some(), "list entry lacks {key}: {entry}");
        }
        assert!(entry.get("fields").is_none(), "list shows fields: {entry}");
        assert_eq!(entry["state"], "ok", "{entry}");
    }
    let mut names: Vec<&str> = listed.iter().map(|e| e["name"].as_str().unwrap()).collect();
    let mut want: Vec<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    want.sort_unstable();
    assert_eq!(names, want);
    let csv = vh.vault(["list", "--format", "csv"]);
    csv.ok().never_prints(MARK);
    let lines: Vec<&str> = csv.stdout.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        lines.len(),
        samples.len() + 1,
        "header + one line each:\n{csv}"
    );
    assert!(lines[0].contains("name"), "csv header:\n{csv}");
    let typed = vh.vault(["list", "--type", "aws", "--format", "json"]);
    assert_eq!(
        typed.ok().json().as_array().map(Vec::len),
        Some(1),
        "{typed}"
    );

    // set makes a new revision; history lists it; restore brings back the old
    // value as yet another revision.
    let token = samples.iter().find(|s| s.kind == "token").unwrap();
    let new_value = vault_e2e::secret("token-v2");
    let file = vh.at_file("token-v2", &new_value);
    vh.vault(["set", &token.name, &format!("token={file}")])
        .ok()
        .never_prints(MARK);
    assert_eq!(
        get_field(&vh, &token.name, "token"),
        format!("{new_value}\n")
    );
    let history = vh.vault(["--json", "history", &token.name]);
    let revs = history.ok().json();
    let revs = revs.as_array().expect("history --json is an array");
    assert_eq!(revs.len(), 2, "{history}");
    for r in revs {
        for key in ["revision", "updated_at", "device"] {
            assert!(r.get(key).is_some(), "history entry lacks {key}: {r}");
        }
    }
    history.never_prints(MARK);
    let first = revs
        .iter()
        .map(|r| r["revision"].as_u64().unwrap())
        .min()
        .unwrap();
    vh.vault(["restore", &token.name, "--revision", &first.to_string()])
        .ok()
        .never_prints(MARK);
    assert_eq!(
        get_field(&vh, &token.name, "token"),
        format!("{}\n", token.secret_value)
    );
    let history = vh.vault(["--json", "history", &token.name]);
    assert_eq!(
        history.ok().json().as_array().map(Vec::len),
        Some(3),
        "restore is a new revision:\n{history}"
    );

    // rename: the old name is gone (exit 4), the new one has the value.
    vh.vault(["rename", &token.name, "renamed-token"]).ok();
    vh.vault(["get", &token.name, "--field", "token"]).code(4);
    assert_eq!(
        get_field(&vh, "renamed-token", "token"),
        format!("{}\n", token.secret_value)
    );

    // rm: gone.
    vh.vault(["rm", "renamed-token", "--force"]).ok();
    vh.vault(["get", "renamed-token", "--field", "token"])
        .code(4);
    let after = vh.vault(["list", "--format", "json"]).ok().json();
    assert_eq!(after.as_array().map(Vec::len), Some(samples.len() - 1));

    // lock: data commands without a terminal exit 3 with the fix.
    let aws = samples.iter().find(|s| s.kind == "aws").unwrap();
    vh.vault(["lock"]).ok();
    let status = vh.vault(["--json", "status"]).ok().json();
    assert_eq!(status["locked"], true, "{status}");
    vh.vault(["get", &aws.name, "--field", "secret_access_key"])
        .code(3)
        .stderr_has("vault is locked: run 'vault unlock'")
        .never_prints(MARK);
    vh.vault(["list"])
        .code(3)
        .stderr_has("vault is locked: run 'vault unlock'");

    // unlock: works again.
    vh.unlock().never_prints(PASSPHRASE);
    assert_eq!(
        get_field(&vh, &aws.name, "secret_access_key"),
        format!("{}\n", aws.secret_value)
    );
    let status = vh.vault(["--json", "status"]).ok().json();
    assert_eq!(status["locked"], false, "{status}");
    for key in [
        "vault_id",
        "locked",
        "daemon_pid",
        "socket",
        "records",
        "sync",
    ] {
        assert!(status.get(key).is_some(), "status lacks {key}: {status}");
    }
    assert_eq!(
        status["daemon_pid"].as_u64().map(|p| p as u32),
        vh.daemon_pid(),
        "{status}"
    );
}

#[test]
fn records_survive_a_daemon_restart() {
    let vh = VaultHome::new();
    vh.init();
    let samples = samples(&vh, "-r");
    for s in samples.iter().take(3) {
        s.add(&vh);
    }
    let before = vh.daemon_pid().expect("daemon running");
    vh.vault(["daemon", "stop"]).ok();
    assert!(
        vh.wait_no_daemons(std::time::Duration::from_secs(10)),
        "`vault daemon stop` leaves no vaultd: {:?}",
        vh.daemon_pids()
    );
    assert!(!vh.socket().exists(), "the socket is removed on shutdown");
    // The next command starts a new daemon, which is locked.
    vh.vault(["get", &samples[0].name, "--field", samples[0].secret_field])
        .code(3)
        .stderr_has("vault is locked: run 'vault unlock'");
    assert_ne!(vh.daemon_pid(), Some(before), "a new daemon answers");
    vh.unlock();
    for s in samples.iter().take(3) {
        let out = get_field(&vh, &s.name, s.secret_field);
        assert_eq!(
            out.trim_end_matches('\n'),
            s.secret_value.trim_end_matches('\n')
        );
    }
}

#[test]
fn platform_spelling_of_add() {
    let vh = VaultHome::new();
    vh.init();
    let auth = vault_e2e::secret("ngc");
    let file = vh.at_file("ngc", &auth);
    vh.vault([
        "add",
        "my-ngc",
        "--type",
        "REGISTRY",
        "--payload",
        "registry=nvcr.io",
        "username=$oauthtoken",
        &format!("auth={file}"),
    ])
    .ok()
    .never_prints(MARK);
    let doc = vh.vault(["--json", "get", "my-ngc"]).ok().json();
    assert_eq!(doc["type"], "registry", "{doc}");
    assert_eq!(doc["fields"]["auth"].as_str(), Some(auth.as_str()));
    assert_eq!(doc["fields"]["username"], "$oauthtoken");
}

#[test]
fn list_of_more_records_than_one_frame_holds() {
    use std::collections::BTreeMap;
    use vault_protocol::CredentialType;
    use vault_protocol::message::{NewRecord, Request, Response};

    let vh = VaultHome::new();
    vh.init();
    // 6,000 records with long descriptions: about 2.5 MiB of summaries,
    // more than twice the 1 MiB frame limit. Added over the socket, in
    // batches, because 6,000 `vault add` processes would be slow.
    const N: usize = 6000;
    let mut records: Vec<NewRecord> = (0..N)
        .map(|i| NewRecord {
            name: format!("bulk-{i:05}"),
            kind: CredentialType::Password,
            fields: BTreeMap::from([
                ("username".to_owned(), "bulk-user".into()),
                ("password".to_owned(), "not-listed".into()),
            ]),
            description: Some(format!("record {i} {}", "x".repeat(300))),
            tags: vec!["bulk".to_owned()],
            expires_at: None,
        })
        .collect();
    let mut s = vh.connect().unwrap();
    vault_e2e::hello(&mut s).unwrap();
    for id in 2.. {
        if records.is_empty() {
            break;
        }
        let rest = records.split_off(records.len().min(1000));
        let batch = std::mem::replace(&mut records, rest);
        let len = batch.len();
        let answer = vault_e2e::request(&mut s, id, Request::AddMany { records: batch })
            .map(|f| f.into_result());
        match answer {
            Ok(Ok(Response::AddedMany { count })) => assert_eq!(count as usize, len),
            other => panic!("AddMany failed: {other:?}"),
        }
    }

    let run = vh.vault(["list", "--format", "json", "--tag", "bulk"]);
    run.ok();
    let names = run.names();
    let expected: Vec<String> = (0..N).map(|i| format!("bulk-{i:05}")).collect();
    assert_eq!(names, expected, "every record once, sorted by name");
    assert!(
        !run.stdout.contains("not-listed"),
        "list never prints values"
    );
}
