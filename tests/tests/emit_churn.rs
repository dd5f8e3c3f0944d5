//! Issue 4's churn test: a credentials file with 50 user profiles, comments
//! and a nested `s3 =` block; 1,000 rotate/expire/renew cycles of an emitted
//! profile while a concurrent reader keeps parsing the file. The reader never
//! sees a partial file, and every user line survives every write. The
//! credential's region comes and goes in the user's `[profile churn]` of
//! `~/.aws/config` with it.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vault_e2e::{VaultHome, hello, request};
use vault_protocol::message::{Request, Response};
use vault_protocol::timefmt::Timestamp;

const CYCLES: usize = 1000;

fn user_file() -> String {
    let mut s = String::from("# team credentials; do not reorder\n");
    for i in 0..50 {
        s.push_str(&format!(
            "[user-{i:02}]\naws_access_key_id = AKIAUSER{i:02}\naws_secret_access_key = user-secret-{i}\n"
        ));
        if i % 7 == 0 {
            s.push_str("; rotated by hand, ask ops\n");
        }
        if i == 20 {
            s.push_str("s3 =\n    max_concurrent_requests = 20\n    multipart_threshold = 64MB\n");
        }
        s.push('\n');
    }
    s
}

/// Checks one snapshot: all user lines, in order, and the vault's section
/// either absent or whole.
fn check(text: &str, user: &[&str]) -> Result<(), String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut it = lines.iter().filter(|l| !l.is_empty());
    for want in user.iter().filter(|l| !l.is_empty()) {
        loop {
            match it.next() {
                Some(l) if l == want => break,
                Some(l) if l.starts_with("[churn]") || l.starts_with("aws_") => continue,
                Some(l) => return Err(format!("unexpected line {l:?} while looking for {want:?}")),
                None => return Err(format!("user line {want:?} is missing")),
            }
        }
    }
    if let Some(at) = lines.iter().position(|l| *l == "[churn]") {
        let id = lines.get(at + 1).copied().unwrap_or_default();
        let secret = lines.get(at + 2).copied().unwrap_or_default();
        if id != "aws_access_key_id = AKIACHURN"
            || !secret.starts_with("aws_secret_access_key = rot-")
        {
            return Err(format!("partial vault section: {:?}", &lines[at..]));
        }
        if !text.ends_with('\n') {
            return Err("the file does not end with a newline".into());
        }
    }
    Ok(())
}

#[test]
fn churn_with_a_concurrent_reader() {
    let vh = VaultHome::new();
    vh.init();
    let aws = vh.user_home.join(".aws");
    fs::create_dir_all(&aws).unwrap();
    let file = aws.join("credentials");
    let original = user_file();
    fs::write(&file, &original).unwrap();
    // The profile's region goes into the user's own [profile churn] of
    // ~/.aws/config, and out again at each expiry.
    let user_config =
        "# mine\n[profile churn]\noutput = json\n\n[profile other]\nregion = us-east-1\n";
    let config = aws.join("config");
    fs::write(&config, user_config).unwrap();
    vh.vault_in(
        [
            "add",
            "churn",
            "--type",
            "aws",
            "access_key_id=AKIACHURN",
            "secret_access_key=-",
            "region=eu-west-1",
        ],
        b"rot-0",
    )
    .ok();
    vh.vault(["emit", "aws", "churn", "--profile", "churn"])
        .ok();

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, file, original) = (Arc::clone(&stop), file.clone(), original.clone());
        std::thread::spawn(move || {
            let user: Vec<&str> = original.lines().collect();
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let text = fs::read_to_string(&file).unwrap();
                if let Err(e) = check(&text, &user) {
                    return Err(format!("read {reads}: {e}\n{text}"));
                }
                reads += 1;
            }
            Ok(reads)
        })
    };

    let mut s = vh.connect().unwrap();
    hello(&mut s).unwrap();
    for i in 1..=CYCLES {
        // Every tenth cycle the credential expires (its section goes), and
        // the next renews it (the section comes back).
        let expires_at = match i % 10 {
            5 => Some(Some(Timestamp(1))),
            6 => Some(None),
            _ => None,
        };
        let req = Request::Set {
            name: "churn".into(),
            fields: BTreeMap::from([(
                "secret_access_key".into(),
                format!("rot-{i}").as_str().into(),
            )]),
            unset: vec![],
            description: None,
            tags: None,
            expires_at,
        };
        match request(&mut s, i as u64 + 1, req).unwrap().into_result() {
            Ok(Response::Changed(_)) => {}
            other => panic!("set {i}: {other:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
    assert!(reads > 0);
    let text = fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with(&original),
        "user text untouched after {CYCLES} cycles"
    );
    assert!(
        text.ends_with(&format!(
            "[churn]\naws_access_key_id = AKIACHURN\naws_secret_access_key = rot-{CYCLES}\n"
        )) || !text.contains("[churn]")
    );
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        user_config.replace("output = json\n", "output = json\nregion = eu-west-1\n"),
        "only the region line of the config changed, and it is back"
    );
    eprintln!("churn: {CYCLES} cycles, {reads} concurrent reads, all whole");
}
