//! `vault otp NAME` (issue 26): the current RFC 6238 code of a record's
//! `otp` field, computed in the daemon, checked against `oathtool` for the
//! same seed and time. The seed never shows in output, in a child's
//! environment, or in an error. Needs `oathtool` (Debian: oathtool,
//! installed by `bash .ci/run`); without it the comparison prints `SKIP …`
//! and passes, unless `VAULT_TEST_REQUIRE_OATHTOOL=1` (set by `.ci/run`)
//! makes that a failure.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use vault_e2e::{VaultHome, oathtool, otp_seed, run_command, secret};

/// `vault otp NAME --json` and `oathtool ARGS SEED` within one time step:
/// retried when the step ends in between.
fn both_codes(
    vh: &VaultHome,
    name: &str,
    tool: &PathBuf,
    args: &[&str],
    seed: &str,
) -> (String, String) {
    for _ in 0..3 {
        let run = vh.vault(["--json", "otp", name]);
        run.ok().never_prints(seed);
        let ours = run.json();
        if ours["valid_for_secs"].as_u64().unwrap() < 3 {
            std::thread::sleep(Duration::from_secs(3));
            continue;
        }
        let mut cmd = Command::new(tool);
        cmd.args(args).arg(seed);
        let theirs = run_command(cmd, None, Duration::from_secs(10));
        theirs.ok();
        return (
            ours["code"].as_str().unwrap().to_owned(),
            theirs.stdout.trim().to_owned(),
        );
    }
    panic!("no time step was long enough to compare codes in");
}

#[test]
fn codes_match_oathtool_for_a_secret_and_a_uri() {
    let Some(tool) = oathtool("codes_match_oathtool_for_a_secret_and_a_uri") else {
        return;
    };
    let vh = VaultHome::new();
    vh.init();
    // A bare secret, spaced in groups of four as sites print it, on a login.
    let plain = otp_seed();
    let spaced: Vec<String> = plain
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).to_lowercase())
        .collect();
    vh.vault_in(
        [
            "add",
            "site",
            "--type",
            "password",
            "username=me",
            "password=-",
        ],
        secret("site").as_bytes(),
    )
    .ok();
    vh.vault_in(["set", "site", "otp=-"], spaced.join(" ").as_bytes())
        .ok()
        .never_prints(&plain);
    let (ours, theirs) = both_codes(&vh, "site", &tool, &["--totp", "-b"], &plain);
    assert_eq!(ours, theirs);
    assert_eq!(ours.len(), 6);

    // A URI with every setting away from the defaults, on a token.
    let other = otp_seed();
    let uri = format!(
        "otpauth://totp/Example:me@example.com?secret={other}&issuer=Example&algorithm=SHA256&digits=8&period=60"
    );
    vh.vault_in(
        ["add", "api", "--type", "token", "token=-"],
        secret("api").as_bytes(),
    )
    .ok();
    vh.vault_in(["set", "api", "otp=-"], uri.as_bytes()).ok();
    let (ours, theirs) = both_codes(
        &vh,
        "api",
        &tool,
        &["--totp=sha256", "--digits=8", "--time-step-size=60s", "-b"],
        &other,
    );
    assert_eq!(ours, theirs);
    assert_eq!(ours.len(), 8);

    // The plain form prints the code alone (stdout is a pipe here).
    let run = vh.vault(["otp", "site"]);
    run.ok().never_prints(&plain);
    let code = run.stdout.trim_end_matches('\n');
    assert!(
        code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()),
        "{run}"
    );
}

#[test]
fn the_seed_stays_out_of_children_and_errors() {
    let vh = VaultHome::new();
    vh.init();
    let plain = otp_seed();
    vh.vault_in(
        ["add", "api", "--type", "token", "token=-"],
        secret("api").as_bytes(),
    )
    .ok();
    vh.vault_in(["set", "api", "otp=-"], plain.as_bytes()).ok();
    // exec injects the token, never the seed (exec redacts a record's
    // values in the child's output, so count what it redacted: one value).
    let run = vh.vault(["exec", "-c", "api", "--", "env"]);
    run.ok().never_prints(&plain);
    assert!(
        run.stdout.contains("API_TOKEN=<redacted"),
        "the token is injected:\n{run}"
    );
    assert_eq!(
        run.stdout.matches("<redacted").count(),
        1,
        "only the token:\n{run}"
    );

    // Seeds that cannot be right are refused at once, without echoing them.
    for (bad, says) in [
        ("JBSW1JBSW1JBSW1J", "not base32"),
        ("JBSWY3DP", "bits"),
        (
            "otpauth://hotp/x?secret=JBSWY3DPEHPK3PXP&counter=3",
            "counter-based",
        ),
    ] {
        let run = vh.vault_in(["set", "api", "otp=-"], bad.as_bytes());
        run.code(2).stderr_has(says).never_prints(bad);
    }
    vh.vault(["otp", "api"]).ok();

    // No seed: the error says how to add one; a generic record has none.
    vh.vault_in(["add", "plain", "--type", "token", "token=-"], b"t")
        .ok();
    vh.vault(["otp", "plain"])
        .code(4)
        .stderr_has("vault set NAME otp=-");
    vh.vault_in(
        ["add", "env", "--type", "generic", "otp=-"],
        plain.as_bytes(),
    )
    .ok();
    vh.vault(["otp", "env"])
        .code(4)
        .stderr_has("generic")
        .never_prints(&plain);
    vh.vault(["otp", "nothing"]).code(4);
}
