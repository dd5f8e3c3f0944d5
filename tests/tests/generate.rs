//! `vault add --generate` (issue 26): a random password from the OS source
//! fills a field; nothing is printed unless `--print` asks; the classes and
//! length are honoured; a bad request is a usage error (exit 2).

#![allow(clippy::unwrap_used)]

use vault_e2e::VaultHome;

#[test]
fn a_generated_password_is_kept_and_printed_only_when_asked() {
    let vh = VaultHome::new();
    vh.init();
    let run = vh.vault([
        "add",
        "site",
        "--type",
        "password",
        "username=me",
        "--generate",
    ]);
    run.ok().stderr_has("generated password");
    assert_eq!(run.stdout, "", "nothing on stdout unless --print");
    let password = vh.field("site", "password");
    assert_eq!(password.len(), 24, "{password}");
    assert!(password.bytes().any(|b| b.is_ascii_digit()), "{password}");
    assert!(
        password.bytes().any(|b| b.is_ascii_alphabetic()),
        "{password}"
    );
    assert!(
        password.bytes().any(|b| b"!%*+-.:=?@^_~".contains(&b)),
        "{password}"
    );
    assert!(
        password
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"\"'$&\\#/`".contains(&b))
    );
    assert!(!run.stderr.contains(&password), "{run}");

    let run = vh.vault([
        "add",
        "pin",
        "--type",
        "token",
        "--generate",
        "--length",
        "40",
        "--charset",
        "digits",
        "--print",
    ]);
    run.ok();
    let printed = run.stdout.trim_end_matches('\n');
    assert_eq!(printed, vh.field("pin", "token"));
    assert!(
        printed.len() == 40 && printed.bytes().all(|b| b.is_ascii_digit()),
        "{run}"
    );

    // Another field, by name, on another type; and two draws differ.
    vh.vault([
        "add",
        "db",
        "--type",
        "generic",
        "DB_USER=app",
        "--generate=DB_PASSWORD",
    ])
    .ok();
    let again = vh.field("db", "DB_PASSWORD");
    assert_eq!(again.len(), 24);
    assert_ne!(again, password);
}

#[test]
fn a_bad_generate_request_is_a_usage_error() {
    let vh = VaultHome::new();
    vh.init();
    let cases: [(&[&str], &str); 5] = [
        (&["--type", "aws", "--generate"], "--generate=FIELD"),
        (
            &[
                "--type",
                "password",
                "username=u",
                "password=x",
                "--generate",
            ],
            "both given and generated",
        ),
        (
            &["--type", "token", "--generate", "--length", "4"],
            "8 to 1024",
        ),
        (
            &["--type", "token", "--generate", "--charset", "emoji"],
            "unknown character class",
        ),
        (
            &["--type", "token", "token=t", "--length", "30"],
            "--generate",
        ),
    ];
    for (args, says) in cases {
        let run = vh.vault(["add", "x"].iter().chain(args));
        run.code(2).stderr_has(says);
    }
    assert!(vh.vault(["list", "--format", "json"]).names().is_empty());
}
