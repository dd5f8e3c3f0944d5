//! `vault doctor`: each broken condition, produced on purpose, is reported
//! with its fix, and the exit code says whether something is wrong.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use vault_e2e::{DEFAULT_TIMEOUT, MARK, Run, VaultHome, run_command, secret};
use vault_protocol::frame;
use vault_protocol::message::{Request, RequestFrame, Response, ResponseFrame};

/// PATH with only the directory of the binaries under test and the system's:
/// helper links a developer installed must not change what doctor finds.
fn plain_path(vh: &VaultHome) -> String {
    format!("{}:/usr/bin:/bin", vh.vault_bin.parent().unwrap().display())
}

/// `vault [--json] doctor` with a plain PATH.
fn doctor_run(vh: &VaultHome, json: bool) -> Run {
    let args: &[&str] = if json {
        &["--json", "doctor"]
    } else {
        &["doctor"]
    };
    let mut cmd = vh.command(&vh.vault_bin, args);
    cmd.env("PATH", plain_path(vh));
    let run = run_command(cmd, None, DEFAULT_TIMEOUT);
    run.no_panic().never_prints(MARK);
    run
}

/// `vault --json doctor`, with the document and the exit code.
fn doctor(vh: &VaultHome) -> (Run, Value) {
    let run = doctor_run(vh, true);
    let doc = run.json();
    (run, doc)
}

/// The findings of one check.
fn findings<'a>(doc: &'a Value, check: &str) -> Vec<&'a Value> {
    doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == check)
        .collect()
}

/// The one finding of `check` whose message contains `needle`.
#[track_caller]
fn finding<'a>(doc: &'a Value, check: &str, needle: &str) -> &'a Value {
    let all = findings(doc, check);
    all.iter()
        .find(|f| f["message"].as_str().unwrap().contains(needle))
        .copied()
        .unwrap_or_else(|| panic!("no {check} finding mentions {needle:?}:\n{doc:#}"))
}

#[track_caller]
fn assert_status(doc: &Value, check: &str, status: &str) {
    let all = findings(doc, check);
    assert!(!all.is_empty(), "no {check} finding:\n{doc:#}");
    for f in all {
        assert_eq!(f["status"], status, "{check}:\n{doc:#}");
    }
}

fn private_dir(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn a_healthy_vault_passes_and_says_what_it_checked() {
    let vh = VaultHome::new();
    vh.init();
    let (run, doc) = doctor(&vh);
    run.ok();
    assert_eq!(doc["ok"], true, "{doc:#}");
    for check in [
        "clock",
        "runtime-dir",
        "permissions",
        "socket",
        "daemon",
        "vault",
        "emitted",
        "refresh",
    ] {
        assert_status(&doc, check, "ok");
    }
    // The harness puts no helper links on PATH: a warning with the fix.
    let helper = finding(&doc, "helpers", "docker-credential-vault is not on PATH");
    assert_eq!(helper["status"], "warn");
    assert!(
        helper["fix"].as_str().unwrap().starts_with("ln -s "),
        "{helper}"
    );
    assert_status(&doc, "remote", "skip");

    // The human form: one line per finding, the fix under it.
    let text = doctor_run(&vh, false);
    text.ok();
    assert!(text.stdout.contains("ok    daemon"), "{text}");
    assert!(text.stdout.contains("fix: ln -s "), "{text}");
    assert!(text.stdout.contains("no problems found"), "{text}");

    // Locked: the emitted files wait for an unlock.
    vh.vault(["lock"]).ok();
    let (run, doc) = doctor(&vh);
    run.ok();
    let emitted = finding(&doc, "emitted", "locked");
    assert_eq!(emitted["status"], "skip");
    assert!(
        emitted["message"]
            .as_str()
            .unwrap()
            .contains("vault unlock")
    );
}

#[test]
fn open_permissions_are_reported_with_the_chmod() {
    let vh = VaultHome::new();
    vh.init();
    let identity = vh.paths().identity();
    fs::set_permissions(&identity, fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(&vh.vault_home, fs::Permissions::from_mode(0o755)).unwrap();
    let (run, doc) = doctor(&vh);
    run.code(1);
    assert_eq!(doc["ok"], false);
    let f = finding(&doc, "permissions", "identity.age is accessible");
    assert_eq!(f["status"], "fail");
    assert_eq!(f["fix"], format!("chmod 600 {}", identity.display()));
    let f = finding(&doc, "permissions", "mode 755");
    assert_eq!(f["fix"], format!("chmod 700 {}", vh.vault_home.display()));

    // The human form ends by counting them.
    let text = doctor_run(&vh, false);
    text.code(1);
    assert!(text.stdout.contains("2 problems found"), "{text}");

    // A socket opened to everyone.
    fs::set_permissions(&identity, fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(&vh.vault_home, fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(vh.socket(), fs::Permissions::from_mode(0o666)).unwrap();
    let (run, doc) = doctor(&vh);
    run.code(1);
    let f = finding(&doc, "socket", "accessible to other users");
    assert!(f["fix"].as_str().unwrap().starts_with("chmod 600 "), "{f}");

    // The fixes work: all green again.
    fs::set_permissions(vh.socket(), fs::Permissions::from_mode(0o600)).unwrap();
    doctor(&vh).0.ok();
}

#[test]
fn a_symlinked_database_and_a_file_for_a_socket_are_reported() {
    let vh = VaultHome::new();
    vh.init();
    vh.vault(["daemon", "stop"]).ok();
    let db = vh.paths().db();
    let moved = vh.root().join("moved.db");
    fs::rename(&db, &moved).unwrap();
    symlink(&moved, &db).unwrap();
    // Where the socket should be, a regular file: vaultd cannot start.
    fs::write(vh.socket(), "not a socket").unwrap();
    let (run, doc) = doctor(&vh);
    run.code(1);
    let f = finding(&doc, "permissions", "vault.db is a symlink");
    assert!(f["fix"].as_str().unwrap().contains("readlink -f"), "{f}");
    let f = finding(&doc, "socket", "is not a socket");
    assert!(f["fix"].as_str().unwrap().contains("mv "), "{f}");
    let daemon = &findings(&doc, "daemon")[0];
    assert_eq!(daemon["status"], "fail");
    assert!(
        daemon["fix"].as_str().unwrap().contains("vaultd.log"),
        "{daemon}"
    );
    assert_status(&doc, "emitted", "skip");
}

#[test]
fn a_daemon_of_another_build_is_reported_with_restart() {
    let vh = VaultHome::new();
    private_dir(&vh.vault_home);
    private_dir(&vh.paths().runtime_dir);
    // A stand-in for an old vaultd that kept running after an upgrade.
    let listener = UnixListener::bind(vh.socket()).unwrap();
    let old = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let hello: RequestFrame = frame::read(&mut stream).unwrap();
        assert!(matches!(hello.req, Request::Hello { .. }));
        let answer = Response::Hello {
            protocol: vault_protocol::PROTOCOL_VERSION,
            build: "0.0.1-old".to_owned(),
            pid: 4242,
        };
        frame::write(&mut stream, &ResponseFrame::new(hello.id, Ok(answer))).unwrap();
    });
    let (run, doc) = doctor(&vh);
    old.join().unwrap();
    run.code(1);
    let f = finding(&doc, "daemon", "0.0.1-old");
    assert_eq!(f["status"], "fail");
    assert!(
        f["fix"]
            .as_str()
            .unwrap()
            .starts_with("vault daemon restart"),
        "{f}"
    );
}

#[test]
fn drifted_and_unparseable_emitted_files_are_reported() {
    let vh = VaultHome::new();
    vh.init();
    let key = secret("doctor");
    vh.add_aws("team-dev", "AKIADOCTOR", &key, &[]);
    let file = vh.user_home.join(".aws/credentials");
    vh.vault(["emit", "aws", "team-dev", "--profile", "dev"])
        .ok();
    doctor(&vh).0.ok();

    // Someone edits the vault's section.
    let text = fs::read_to_string(&file).unwrap();
    fs::write(&file, text.replace(&key, "edited-by-hand")).unwrap();
    let (run, doc) = doctor(&vh);
    run.code(1);
    let f = finding(&doc, "emitted", "drifted");
    assert!(f["message"].as_str().unwrap().contains("[dev]"), "{f}");
    assert!(
        f["fix"].as_str().unwrap().starts_with("vault emit repair"),
        "{f}"
    );
    // The fix works.
    vh.vault(["emit", "repair"]).ok();
    doctor(&vh).0.ok();

    // A file that no longer parses is never rewritten: fix it by hand.
    let broken = "[default]\nthis is not ini\n";
    fs::write(&file, broken).unwrap();
    let (run, doc) = doctor(&vh);
    run.code(1);
    let f = finding(&doc, "emitted", "error");
    assert!(f["fix"].as_str().unwrap().contains("by hand"), "{f}");
    assert_eq!(fs::read_to_string(&file).unwrap(), broken);
}

#[test]
fn helper_links_on_path_are_checked() {
    let vh = VaultHome::new();
    vh.init();
    let bin = vh.root().join("pathbin");
    fs::create_dir(&bin).unwrap();
    symlink(&vh.vault_bin, bin.join("docker-credential-vault")).unwrap();
    // Another program under the git helper's name.
    symlink("/bin/true", bin.join("git-credential-vault")).unwrap();
    let path = format!(
        "{}:{}:/usr/bin:/bin",
        bin.display(),
        vh.vault_bin.parent().unwrap().display()
    );
    let mut cmd = vh.command(&vh.vault_bin, ["--json", "doctor"]);
    cmd.env("PATH", &path);
    let run = run_command(cmd, None, DEFAULT_TIMEOUT);
    run.code(1);
    let doc = run.json();
    let f = finding(&doc, "helpers", "git-credential-vault on PATH");
    assert_eq!(f["status"], "fail");
    assert!(f["fix"].as_str().unwrap().starts_with("ln -sf "), "{f}");
    assert!(
        findings(&doc, "helpers")
            .iter()
            .all(|f| !f["message"].as_str().unwrap().contains("docker")),
        "the docker link is this vault:\n{doc:#}"
    );

    // Both links right: ok.
    fs::remove_file(bin.join("git-credential-vault")).unwrap();
    symlink(&vh.vault_bin, bin.join("git-credential-vault")).unwrap();
    let mut cmd = vh.command(&vh.vault_bin, ["--json", "doctor"]);
    cmd.env("PATH", &path);
    let run = run_command(cmd, None, DEFAULT_TIMEOUT);
    run.ok();
    assert_status(&run.json(), "helpers", "ok");
}

#[test]
fn a_clock_that_went_back_is_reported() {
    let vh = VaultHome::new();
    vh.init();
    let tomorrow = SystemTime::now() + Duration::from_secs(86_400);
    fs::File::options()
        .write(true)
        .open(vh.paths().identity())
        .unwrap()
        .set_modified(tomorrow)
        .unwrap();
    let (run, doc) = doctor(&vh);
    run.code(1);
    let f = finding(&doc, "clock", "in the future");
    assert!(f["fix"].as_str().unwrap().contains("timedatectl"), "{f}");
}

#[test]
fn an_unusable_runtime_dir_is_reported() {
    let vh = VaultHome::new();
    // The platform layout (no VAULT_HOME) with XDG_RUNTIME_DIR naming a file.
    let not_a_dir = vh.files.join("runtime");
    fs::write(&not_a_dir, "").unwrap();
    let mut cmd = vh.command(&vh.vault_bin, ["--json", "doctor"]);
    cmd.env_remove("VAULT_HOME")
        .env("XDG_RUNTIME_DIR", &not_a_dir);
    let run = run_command(cmd, None, DEFAULT_TIMEOUT);
    run.code(1);
    let doc = run.json();
    let f = finding(&doc, "runtime-dir", "is not a directory");
    assert!(
        f["fix"].as_str().unwrap().contains("XDG_RUNTIME_DIR"),
        "{f}"
    );
    assert_status(&doc, "daemon", "fail");
}

#[test]
fn a_failing_refresh_is_reported_with_what_to_fix() {
    let vh = VaultHome::new();
    vh.init();
    // Never minted: its command fails, saying why on stderr.
    let cmd = "refresh_command=echo 'token expired: run sso login' >&2; exit 1";
    vh.vault(["add", "sso", "--type", "aws", cmd]).ok();
    vh.vault(["aws-process", "sso"]).code(1);
    let (run, doc) = doctor(&vh);
    assert_eq!(run.code, 1, "{run}");
    let f = finding(&doc, "refresh", "sso: refresh failing (never minted");
    assert_eq!(f["status"], "fail");
    assert!(
        f["message"].as_str().unwrap().contains("run sso login"),
        "{f}"
    );
    assert!(f["fix"].as_str().unwrap().contains("vault set sso"), "{f}");
}
