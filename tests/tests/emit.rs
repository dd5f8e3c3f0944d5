//! `vault emit aws` (issue 4, first slice): the vault's profile in
//! ~/.aws/credentials, kept in sync on every change, never damaging what
//! the user wrote there.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::process::CommandExt;

use vault_e2e::{MARK, VaultHome, secret};

const USER_FILE: &str = "# my keys, keep this comment\n[default]\naws_access_key_id=AKIAUSER\naws_secret_access_key = user-secret ; odd but mine\n\n[dev]\nregion = eu-west-1\ns3 =\n    max_concurrent_requests = 20\n    addressing_style = path\n";

#[test]
fn the_profile_follows_every_change_and_user_lines_never_move() {
    let vh = VaultHome::new();
    vh.init();
    let aws = vh.user_home.join(".aws");
    fs::create_dir_all(&aws).unwrap();
    // The real file lives elsewhere; ~/.aws/credentials is a symlink to it.
    let real = vh.user_home.join("dotfiles-credentials");
    fs::write(&real, USER_FILE).unwrap();
    fs::set_permissions(&real, fs::Permissions::from_mode(0o640)).unwrap();
    symlink(&real, aws.join("credentials")).unwrap();

    let (s1, s2) = (secret("emit-1"), secret("emit-2"));
    vh.add_aws("team-dev", "AKIAVAULT", &s1, &[]);
    let run = vh.vault(["emit", "aws", "team-dev", "--profile", "vault-dev"]);
    run.ok().never_prints(MARK);
    let text = fs::read_to_string(&real).unwrap();
    assert!(
        text.starts_with(USER_FILE),
        "user text first, untouched:\n{text}"
    );
    assert!(text.ends_with(&format!(
        "\n[vault-dev]\naws_access_key_id = AKIAVAULT\naws_secret_access_key = {s1}\n"
    )));
    assert!(
        fs::symlink_metadata(aws.join("credentials"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link stays a link"
    );
    assert_eq!(
        fs::metadata(&real).unwrap().permissions().mode() & 0o777,
        0o640,
        "the mode is kept"
    );

    let list = vh.vault(["--json", "emit", "list"]).ok().json();
    assert_eq!(list[0]["state"], "ok");
    let id = list[0]["id"].as_str().unwrap().to_owned();

    // A rotation in the vault reaches the file; nothing else changes.
    vh.vault_in(["set", "team-dev", "secret_access_key=-"], s2.as_bytes())
        .ok();
    let text = fs::read_to_string(&real).unwrap();
    assert!(text.starts_with(USER_FILE));
    assert!(text.contains(&s2) && !text.contains(&s1), "{text}");

    // Someone edits the vault's section: reported, not fought.
    fs::write(&real, text.replace(&s2, "edited-by-hand")).unwrap();
    let list = vh.vault(["--json", "emit", "list"]).ok().json();
    assert_eq!(list[0]["state"], "drifted");

    // Deleting a bound credential takes --force; then its profile goes and
    // the user's stay.
    vh.vault(["rm", "team-dev"])
        .code(5)
        .stderr_has("is emitted to")
        .stderr_has("--force");
    assert!(fs::read_to_string(&real).unwrap().contains("[vault-dev]"));
    vh.vault(["rm", "team-dev", "--force"]).ok();
    let text = fs::read_to_string(&real).unwrap();
    assert!(!text.contains("vault-dev"), "{text}");
    assert!(text.starts_with(USER_FILE));
    vh.vault(["emit", "rm", &id]).ok();
    assert!(
        vh.vault(["--json", "emit", "list"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_users_profile_is_not_taken_and_a_bad_file_is_not_rewritten() {
    let vh = VaultHome::new();
    vh.init();
    let aws = vh.user_home.join(".aws");
    fs::create_dir_all(&aws).unwrap();
    let file = aws.join("credentials");
    fs::write(&file, USER_FILE).unwrap();
    vh.add_aws("mine", "AKIAVAULT", &secret("mine"), &[]);

    let run = vh.vault(["emit", "aws", "mine", "--profile", "dev"]);
    run.code(5)
        .stderr_has("[dev] exists and was not written by vault");
    assert_eq!(fs::read_to_string(&file).unwrap(), USER_FILE);

    vh.vault(["emit", "aws", "mine", "--profile", "dev", "--force"])
        .ok();
    let backups: Vec<_> = fs::read_dir(&aws)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("credentials.vault-backup-")
        })
        .collect();
    assert_eq!(backups.len(), 1, "--force keeps a backup");
    assert_eq!(fs::read_to_string(backups[0].path()).unwrap(), USER_FILE);
    assert_eq!(
        fs::metadata(backups[0].path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    let broken = "[default]\nthis is not ini\n";
    let other = vh.user_home.join("broken-credentials");
    fs::write(&other, broken).unwrap();
    let run = vh.vault([
        "emit",
        "aws",
        "mine",
        "--profile",
        "p",
        "--path",
        other.to_str().unwrap(),
    ]);
    run.code(1).stderr_has("line 2");
    assert_eq!(
        fs::read_to_string(&other).unwrap(),
        broken,
        "never rewritten"
    );

    // A new file is created 0600 in a 0700 folder.
    let fresh = vh.user_home.join("new-dir/credentials");
    vh.vault([
        "emit",
        "aws",
        "mine",
        "--profile",
        "p",
        "--path",
        fresh.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(
        fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::metadata(fresh.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
}

#[test]
fn process_mode_puts_no_key_in_any_file_and_follows_a_rename() {
    let vh = VaultHome::new();
    vh.init();
    let s1 = secret("proc-emit");
    vh.add_aws("cp", "AKIAVAULT", &s1, &[]);
    let aws = vh.user_home.join(".aws");
    fs::create_dir_all(&aws).unwrap();
    let user_config = "[default]\nregion = us-east-1\n\n[profile other]\noutput = json\n";
    fs::write(aws.join("config"), user_config).unwrap();
    vh.vault(["emit", "aws", "cp", "--profile", "vp", "--process"])
        .ok();
    let vault_bin = vault_e2e::binaries().vault.display().to_string();
    let text = fs::read_to_string(aws.join("config")).unwrap();
    assert_eq!(
        text,
        format!("{user_config}\n[profile vp]\ncredential_process = {vault_bin} aws-process cp\n")
    );
    assert!(
        !aws.join("credentials").exists(),
        "no keys written anywhere"
    );
    vh.vault(["rename", "cp", "cp-renamed"]).ok();
    let text = fs::read_to_string(aws.join("config")).unwrap();
    assert!(
        text.ends_with(&format!(
            "credential_process = {vault_bin} aws-process cp-renamed\n"
        )),
        "{text}"
    );
    assert!(!text.contains(&s1));
}

#[test]
fn an_expiring_credential_leaves_the_file_when_it_expires() {
    let vh = VaultHome::new();
    vh.init();
    let s1 = secret("short-lived");
    let f = vh.at_file("sts", &s1);
    // Expires a few seconds from now (time enough to add, emit and read
    // it first): the daemon's 2 s ticker removes it.
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 10;
    let at = vault_protocol::timefmt::Timestamp(at as i64).to_rfc3339();
    vh.vault([
        "add",
        "sts",
        "--type",
        "aws",
        "access_key_id=ASIASTS",
        &format!("secret_access_key={f}"),
        "--expires-at",
        &at,
    ])
    .ok();
    vh.vault(["emit", "aws", "sts", "--profile", "sts"]).ok();
    let file = vh.user_home.join(".aws/credentials");
    assert!(fs::read_to_string(&file).unwrap().contains(&s1));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while fs::read_to_string(&file).unwrap().contains(&s1) {
        assert!(
            std::time::Instant::now() < deadline,
            "the expired key is still in the file"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(!fs::read_to_string(&file).unwrap().contains("[sts]"));
}

#[test]
fn whole_files_gcloud_and_file_follow_the_vault_and_repair_restores_drift() {
    let vh = VaultHome::new();
    vh.init();
    let key1 = format!(
        "{{\"type\":\"service_account\",\"project_id\":\"p\",\"private_key\":\"{}\"}}",
        secret("k1")
    );
    let key2 = key1.replace("k1", "k2");
    let f = vh.at_file("sa", &key1);
    vh.vault(["add", "sa", "--type", "gcp", &format!("json={f}")])
        .ok();
    vh.vault(["emit", "gcloud", "sa", "--adc"]).ok();
    let adc = vh
        .user_home
        .join(".config/gcloud/application_default_credentials.json");
    assert_eq!(fs::read_to_string(&adc).unwrap(), key1);
    assert_eq!(
        fs::metadata(&adc).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::metadata(adc.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );

    // Rotation, drift, repair.
    let f2 = vh.at_file("sa2", &key2);
    vh.vault(["set", "sa", &format!("json={f2}")]).ok();
    assert_eq!(fs::read_to_string(&adc).unwrap(), key2);
    fs::write(&adc, "{}").unwrap();
    assert_eq!(
        vh.vault(["--json", "emit", "list"]).ok().json()[0]["state"],
        "drifted"
    );
    vh.vault(["emit", "repair"]).ok();
    assert_eq!(fs::read_to_string(&adc).unwrap(), key2);
    assert_eq!(
        vh.vault(["--json", "emit", "list"]).ok().json()[0]["state"],
        "ok"
    );

    // A file credential goes to its own path (~ is the user's home).
    // (One trailing newline of an @file value is dropped, as for stdin.)
    let netrc = format!("machine example.com login me password {}", secret("netrc"));
    let f3 = vh.at_file("netrc", &netrc);
    vh.vault([
        "add",
        "netrc",
        "--type",
        "file",
        &format!("content={f3}"),
        "path=~/.netrc-e2e",
    ])
    .ok();
    vh.vault(["emit", "file", "netrc"]).ok();
    let target = vh.user_home.join(".netrc-e2e");
    assert_eq!(fs::read_to_string(&target).unwrap(), netrc);

    // A file that is not the vault's is not replaced without --force.
    let theirs = vh.user_home.join("theirs.json");
    fs::write(&theirs, "mine").unwrap();
    vh.vault(["emit", "gcloud", "sa", "--path", theirs.to_str().unwrap()])
        .code(5)
        .stderr_has("was not written by vault");
    assert_eq!(fs::read_to_string(&theirs).unwrap(), "mine");

    // Deleting the credentials removes the files the vault wrote.
    vh.vault(["rm", "sa", "--force"]).ok();
    vh.vault(["rm", "netrc", "--force"]).ok();
    assert!(!adc.exists() && !target.exists());
}

#[test]
fn repair_puts_back_a_drifted_profile_and_nothing_else() {
    let vh = VaultHome::new();
    vh.init();
    let aws = vh.user_home.join(".aws");
    fs::create_dir_all(&aws).unwrap();
    let file = aws.join("credentials");
    fs::write(&file, USER_FILE).unwrap();
    let s1 = secret("repair");
    vh.add_aws("r", "AKIAVAULT", &s1, &[]);
    vh.vault(["emit", "aws", "r", "--profile", "vault-r"]).ok();
    let good = fs::read_to_string(&file).unwrap();
    let edited = good.replace(&s1, "hand-edited") + "[user-added-later]\nx = 1\n";
    fs::write(&file, &edited).unwrap();
    vh.vault(["emit", "repair"]).ok();
    let repaired = fs::read_to_string(&file).unwrap();
    assert_eq!(repaired, good.clone() + "\n[user-added-later]\nx = 1\n");
}

#[test]
fn docker_logins_go_into_auths_and_nothing_else_moves() {
    let vh = VaultHome::new();
    vh.init();
    let docker = vh.user_home.join(".docker");
    fs::create_dir_all(&docker).unwrap();
    let user = "{\n\t\"auths\": {\n\t\t\"ghcr.io\": {\n\t\t\t\"auth\": \"dXNlcjpwYXNz\"\n\t\t}\n\t},\n\t\"credsStore\": \"desktop\"\n}\n";
    let file = docker.join("config.json");
    fs::write(&file, user).unwrap();
    let p1 = secret("docker-1");
    vh.add_registry("ngc", "nvcr.io", "$oauthtoken", &p1);
    vh.vault(["emit", "docker", "ngc"]).ok().never_prints(MARK);
    let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
    let auth = v["auths"]["nvcr.io"]["auth"].as_str().unwrap();
    assert_eq!(
        String::from_utf8(vault_e2e::base64_decode(auth)).unwrap(),
        format!("$oauthtoken:{p1}")
    );
    assert_eq!(v["auths"]["ghcr.io"]["auth"], "dXNlcjpwYXNz");
    assert_eq!(v["credsStore"], "desktop");

    // A user's registry is not taken.
    vh.add_registry("gh", "ghcr.io", "me", "x-token");
    vh.vault(["emit", "docker", "gh"])
        .code(5)
        .stderr_has("ghcr.io");

    // Deleting the credential restores the user's bytes exactly.
    vh.vault(["rm", "ngc", "--force"]).ok();
    assert_eq!(fs::read_to_string(&file).unwrap(), user);
}

#[test]
fn docker_helper_binding_names_the_helper_and_no_key() {
    let vh = VaultHome::new();
    vh.init();
    let docker = vh.user_home.join(".docker");
    fs::create_dir_all(&docker).unwrap();
    let user = "{\n\t\"auths\": {},\n\t\"credHelpers\": {\n\t\t\"gcr.io\": \"gcloud\"\n\t}\n}\n";
    let file = docker.join("config.json");
    fs::write(&file, user).unwrap();
    let p1 = secret("docker-helper-emit");
    vh.add_registry("ngc", "nvcr.io", "$oauthtoken", &p1);
    vh.vault(["emit", "docker", "ngc", "--helper"])
        .ok()
        .never_prints(MARK);
    let text = fs::read_to_string(&file).unwrap();
    assert!(!text.contains(MARK), "no key in the file: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["credHelpers"]["nvcr.io"], "vault");
    assert_eq!(v["credHelpers"]["gcr.io"], "gcloud");
    assert!(v["auths"].as_object().unwrap().is_empty());

    // The user's own helper for a registry is not taken.
    vh.add_registry("gcr", "gcr.io", "me", "x-token");
    vh.vault(["emit", "docker", "gcr", "--helper"])
        .code(5)
        .stderr_has("gcr.io");

    // A rotation leaves the file alone (it holds no key); the list says ok.
    let f3 = vh.at_file("ngc2", &secret("docker-helper-rotated"));
    vh.vault(["set", "ngc", &format!("auth={f3}")]).ok();
    assert_eq!(fs::read_to_string(&file).unwrap(), text);
    let list = vh.vault(["emit", "list", "--json"]).ok().json();
    assert_eq!(list[0]["type"], "docker-helper");
    assert_eq!(list[0]["state"], "ok");

    // Someone else's edit is drift; repair puts it back.
    fs::write(&file, text.replace("\"vault\"", "\"desktop\"")).unwrap();
    let list = vh.vault(["emit", "list", "--json"]).ok().json();
    assert_eq!(list[0]["state"], "drifted");
    vh.vault(["emit", "repair"]).ok();
    assert_eq!(fs::read_to_string(&file).unwrap(), text);

    // Deleting the credential restores the user's bytes exactly.
    vh.vault(["rm", "ngc", "--force"]).ok();
    assert_eq!(fs::read_to_string(&file).unwrap(), user);
}

/// Another process holding an advisory lock on the file (`flock`, from
/// util-linux) is waited for, then reported; nothing is written under it.
#[test]
fn a_file_locked_by_another_process_is_not_written_under_its_lock() {
    let Some(flock) = vault_e2e::which("flock") else {
        eprintln!("SKIP: needs flock(1) from util-linux (bash .ci/run installs it)");
        return;
    };
    let vh = VaultHome::new();
    vh.init();
    let aws = vh.user_home.join(".aws");
    fs::create_dir_all(&aws).unwrap();
    let file = aws.join("credentials");
    let user = "[mine]\naws_access_key_id = AKIAUSER\n";
    fs::write(&file, user).unwrap();
    vh.add_aws("dev", "AKIADEV", &secret("locked"), &[]);

    // Its own process group: the lock is shared by flock and its child.
    let mut holder = std::process::Command::new(&flock)
        .arg("-x")
        .arg(&file)
        .args(["sleep", "30"])
        .process_group(0)
        .spawn()
        .unwrap();
    // Wait until it holds the lock.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::process::Command::new(&flock)
        .args(["-n"])
        .arg(&file)
        .arg("true")
        .status()
        .unwrap()
        .success()
    {
        assert!(std::time::Instant::now() < deadline, "flock never took it");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    vh.vault(["emit", "aws", "dev", "--profile", "dev"])
        .code(1)
        .stderr_has("another process holds a lock");
    assert_eq!(fs::read_to_string(&file).unwrap(), user);
    let group = rustix::process::Pid::from_raw(holder.id() as i32).unwrap();
    rustix::process::kill_process_group(group, rustix::process::Signal::KILL).unwrap();
    let _ = holder.wait();
    vh.vault(["emit", "aws", "dev", "--profile", "dev"]).ok();
    let text = fs::read_to_string(&file).unwrap();
    assert!(text.starts_with(user) && text.contains("[dev]"), "{text}");
}

/// Polls `vault status --json` until `pred` holds for its `emitters`.
fn status_emitters_until(
    vh: &VaultHome,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let status = vh.vault(["status", "--json"]).ok().json();
        if pred(&status["emitters"]) {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status never showed {what}: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The daemon watches emitted files: someone else's edit of the vault's
/// section shows as drift in `vault status` without anyone asking, is
/// logged, and is not undone until `vault emit repair`.
#[test]
fn drift_is_seen_by_the_watch_and_shown_in_status() {
    let vh = VaultHome::new();
    vh.init();
    let aws = vh.user_home.join(".aws");
    fs::create_dir_all(&aws).unwrap();
    let file = aws.join("credentials");
    fs::write(&file, "[mine]\naws_access_key_id = AKIAUSER\n").unwrap();
    let s1 = secret("watched");
    vh.add_aws("dev", "AKIADEV", &s1, &[]);
    vh.vault(["emit", "aws", "dev", "--profile", "dev"]).ok();
    let good = fs::read_to_string(&file).unwrap();
    status_emitters_until(&vh, "no drift", |e| e.as_array().unwrap().is_empty());

    let edited = good.replace(&s1, "typed-by-hand");
    fs::write(&file, &edited).unwrap();
    let status = status_emitters_until(&vh, "drift", |e| {
        e.as_array().unwrap().len() == 1 && e[0]["state"] == "drifted"
    });
    assert_eq!(status["emitters"][0]["section"], "dev");
    let text = vh.vault(["status"]).ok().stdout.clone();
    assert!(
        text.contains("[dev] drifted") && text.contains("vault emit repair"),
        "{text}"
    );
    // Reported, not fought: the user's edit stays.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(fs::read_to_string(&file).unwrap(), edited);
    let log = fs::read_to_string(vh.paths().log()).unwrap();
    assert!(log.contains("needs attention"), "{log}");
    assert!(!log.contains(MARK), "the log has a secret");

    vh.vault(["emit", "repair"]).ok();
    assert_eq!(fs::read_to_string(&file).unwrap(), good);
    status_emitters_until(&vh, "drift cleared", |e| e.as_array().unwrap().is_empty());

    // The section removed by hand is `missing`.
    fs::write(&file, "[mine]\naws_access_key_id = AKIAUSER\n").unwrap();
    status_emitters_until(&vh, "missing", |e| {
        e.as_array().unwrap().len() == 1 && e[0]["state"] == "missing"
    });
}

/// The user's `~/.aws/config`: their own `[profile dev]` (with a comment,
/// odd spacing and a nested block) and `[default]` with their region.
const USER_CONFIG: &str = "# my config, keep this comment\n[profile dev]\n; set by hand\noutput=json   \ns3 =\n    addressing_style = path\ncli_pager =\n\n[default]\nregion = us-east-1\n";

fn emitted(vh: &VaultHome) -> serde_json::Value {
    vh.vault(["--json", "emit", "list"]).ok().json()
}

/// The state of the binding of credential `name`.
fn state_of(vh: &VaultHome, name: &str) -> String {
    let list = emitted(vh);
    let found = list.as_array().unwrap().iter().find(|e| e["name"] == name);
    found
        .and_then(|e| e["state"].as_str())
        .unwrap_or_else(|| panic!("no binding of {name}: {list}"))
        .to_owned()
}

/// Issue 26: `vault emit aws` (keys) writes the credential's `region` into
/// the user's own `[profile P]` of `~/.aws/config`, owning that one key:
/// the user's lines stay byte for byte, a region change reaches the file,
/// a hand edit of our line is drift (of the user's keys, not), and the
/// binding's removal takes out only our line.
#[test]
fn the_region_goes_into_the_users_config_profile_and_leaves_with_the_binding() {
    let vh = VaultHome::new();
    vh.init();
    let aws = vh.user_home.join(".aws");
    fs::create_dir_all(&aws).unwrap();
    let config = aws.join("config");
    fs::write(&config, USER_CONFIG).unwrap();
    vh.add_aws(
        "dev",
        "AKIAVAULT",
        &secret("region-1"),
        &["region=eu-west-1"],
    );
    vh.vault(["emit", "aws", "dev", "--profile", "dev"])
        .ok()
        .never_prints(MARK);
    let ours = USER_CONFIG.replace("cli_pager =\n", "cli_pager =\nregion = eu-west-1\n");
    assert_eq!(fs::read_to_string(&config).unwrap(), ours);
    assert!(
        fs::read_to_string(aws.join("credentials"))
            .unwrap()
            .contains("[dev]\naws_access_key_id = AKIAVAULT\n")
    );
    let list = emitted(&vh);
    assert_eq!(list[0]["state"], "ok", "{list}");
    let id = list[0]["id"].as_str().unwrap().to_owned();

    // The user's own keys in that section are theirs: no drift.
    let user_edit = ours.replace("output=json   ", "output = text");
    fs::write(&config, &user_edit).unwrap();
    assert_eq!(emitted(&vh)[0]["state"], "ok");

    // A new region in the vault reaches the file, where our line stands.
    vh.vault(["set", "dev", "region=ap-south-1"]).ok();
    let moved = user_edit.replace("eu-west-1", "ap-south-1");
    assert_eq!(fs::read_to_string(&config).unwrap(), moved);

    // Our line edited by hand: drift, and repair puts back only it.
    fs::write(&config, moved.replace("ap-south-1", "us-west-2")).unwrap();
    assert_eq!(emitted(&vh)[0]["state"], "drifted");
    vh.vault(["emit", "repair"]).ok();
    assert_eq!(fs::read_to_string(&config).unwrap(), moved);

    // A region the file cannot carry (as a synced record could) is never
    // written: no region line; the list says why without showing it; the
    // keys still follow the vault.
    vh.vault(["set", "dev", "region=eu-west-1\n[evil]"]).ok();
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        user_edit.replace("region = eu-west-1\n", "")
    );
    let state = emitted(&vh)[0]["state"].as_str().unwrap().to_owned();
    assert!(
        state.starts_with("error: ") && state.contains("not a region name"),
        "{state}"
    );
    assert!(!state.contains("evil"), "{state}");
    vh.vault(["set", "dev", "region=ap-south-1"]).ok();
    assert_eq!(fs::read_to_string(&config).unwrap(), moved);

    // No region in the credential: no region line.
    vh.vault(["set", "dev", "--unset", "region"]).ok();
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        user_edit.replace("region = eu-west-1\n", "")
    );
    vh.vault(["set", "dev", "region=ap-south-1"]).ok();
    assert_eq!(fs::read_to_string(&config).unwrap(), moved);

    // The profile bound to another credential: the line stays the vault's.
    vh.add_aws(
        "dev2",
        "AKIAVAULT2",
        &secret("region-2"),
        &["region=eu-north-1"],
    );
    vh.vault(["emit", "aws", "dev2", "--profile", "dev"]).ok();
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        moved.replace("ap-south-1", "eu-north-1")
    );

    // Removing the binding removes our line and nothing else.
    vh.vault(["emit", "rm", &id]).ok();
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        user_edit.replace("region = eu-west-1\n", "")
    );
}

/// A section the vault made for the region goes with the credential; a
/// user's own different `region` is not overwritten without `--force`
/// (which keeps a backup), and a user's equal one stays theirs.
#[test]
fn a_made_section_goes_and_a_users_region_is_not_taken() {
    let vh = VaultHome::new();
    vh.init();
    let aws = vh.user_home.join(".aws");
    fs::create_dir_all(&aws).unwrap();
    let config = aws.join("config");
    fs::write(&config, USER_CONFIG).unwrap();

    // No [profile fresh] yet: made, then removed with the credential.
    vh.add_aws(
        "fresh",
        "AKIAFRESH",
        &secret("fresh"),
        &["region=eu-north-1"],
    );
    vh.vault(["emit", "aws", "fresh", "--profile", "fresh"])
        .ok();
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        format!("{USER_CONFIG}\n[profile fresh]\nregion = eu-north-1\n")
    );
    vh.vault(["rm", "fresh", "--force"]).ok();
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        USER_CONFIG,
        "the section we made goes, with the blank line we put before it"
    );
    fs::write(&config, USER_CONFIG).unwrap();

    // [default] (never `[profile default]`) has the user's us-east-1.
    vh.add_aws(
        "other",
        "AKIAOTHER",
        &secret("other"),
        &["region=eu-west-3"],
    );
    vh.vault(["emit", "aws", "other", "--profile", "default"])
        .code(5)
        .stderr_has("[default] already has region = us-east-1")
        .stderr_has("--force");
    assert_eq!(fs::read_to_string(&config).unwrap(), USER_CONFIG);
    assert!(
        !fs::read_to_string(aws.join("credentials"))
            .unwrap()
            .contains("[default]"),
        "a refused emit writes nothing at all"
    );
    vh.vault(["emit", "aws", "other", "--profile", "default", "--force"])
        .ok();
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        USER_CONFIG.replace("us-east-1", "eu-west-3")
    );
    let backups: Vec<_> = fs::read_dir(&aws)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("config.vault-backup-")
        })
        .collect();
    assert_eq!(backups.len(), 1, "--force keeps a backup");
    assert_eq!(fs::read_to_string(backups[0].path()).unwrap(), USER_CONFIG);
    vh.vault(["rm", "other", "--force"]).ok();
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        USER_CONFIG.replace("region = us-east-1\n", ""),
        "a forced key is ours: it goes with the binding, the section stays"
    );

    // The user's region already says ours: it stays theirs, and stays.
    fs::write(&config, USER_CONFIG).unwrap();
    vh.add_aws("same", "AKIASAME", &secret("same"), &["region=us-east-1"]);
    vh.vault(["emit", "aws", "same", "--profile", "default"])
        .ok();
    assert_eq!(fs::read_to_string(&config).unwrap(), USER_CONFIG);
    assert_eq!(state_of(&vh, "same"), "ok");
    // The credential moves to another region: reported, the user's line
    // untouched.
    vh.vault(["set", "same", "region=eu-west-1"]).ok();
    assert_eq!(fs::read_to_string(&config).unwrap(), USER_CONFIG);
    let state = state_of(&vh, "same");
    assert!(
        state.contains("has the user's region = us-east-1") && state.contains("--force"),
        "{state}"
    );
    vh.vault(["rm", "same", "--force"]).ok();
    assert_eq!(fs::read_to_string(&config).unwrap(), USER_CONFIG);

    // A region the file cannot carry: the keys are written, the region is
    // not, and the binding says why (without the value).
    vh.add_aws("bad", "AKIABAD", &secret("bad"), &["region=EU West"]);
    let out = vh
        .vault(["--json", "emit", "aws", "bad", "--profile", "bad"])
        .ok()
        .json();
    assert!(
        out["state"].as_str().unwrap().contains("not a region name"),
        "{out}"
    );
    assert_eq!(fs::read_to_string(&config).unwrap(), USER_CONFIG);
    assert!(
        fs::read_to_string(aws.join("credentials"))
            .unwrap()
            .contains("[bad]\naws_access_key_id = AKIABAD\n")
    );
    let state = state_of(&vh, "bad");
    assert!(
        state.contains("not a region name") && !state.contains("West"),
        "{state}"
    );
}

/// `--process` owns its whole `[profile P]`: the region is a line of it.
/// A binding made before the region existed is not drift: the daemon
/// quietly moves it to the new rendering where the file still holds
/// exactly the old one; one the user changed is compared with the old
/// rendering until `vault emit repair`.
#[test]
fn process_profiles_get_the_region_and_older_bindings_upgrade_quietly() {
    let vh = VaultHome::new();
    vh.init();
    vh.add_aws(
        "cp",
        "AKIAVAULT",
        &secret("proc-region"),
        &["region=eu-central-1"],
    );
    let aws = vh.user_home.join(".aws");
    fs::create_dir_all(&aws).unwrap();
    let config = aws.join("config");
    let user = "[profile mine]\noutput = json\n";
    fs::write(&config, user).unwrap();
    vh.vault(["emit", "aws", "cp", "--profile", "p1", "--process"])
        .ok();
    vh.vault(["emit", "aws", "cp", "--profile", "p2", "--process"])
        .ok();
    let vault_bin = vault_e2e::binaries().vault.display().to_string();
    let v2 = |p: &str| {
        format!(
            "[profile {p}]\ncredential_process = {vault_bin} aws-process cp\nregion = eu-central-1\n"
        )
    };
    let v1 = |p: &str| format!("[profile {p}]\ncredential_process = {vault_bin} aws-process cp\n");
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        format!("{user}\n{}\n{}", v2("p1"), v2("p2"))
    );
    let states = |vh: &VaultHome| -> Vec<String> {
        let mut s: Vec<String> = emitted(vh)
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["section"].as_str().unwrap(),
                    e["state"].as_str().unwrap()
                )
            })
            .collect();
        s.sort();
        s
    };
    assert_eq!(states(&vh), ["profile p1 ok", "profile p2 ok"]);

    // Make it an older vault: the schema before the region (as that
    // release left it; later versions' tables go too) and the file as that release wrote it; p2 was
    // since edited by the user.
    vh.vault(["daemon", "stop"]).ok();
    {
        let db = rusqlite::Connection::open(vh.paths().db()).unwrap();
        db.execute_batch(
            "ALTER TABLE emitters DROP COLUMN config_path;
             ALTER TABLE emitters DROP COLUMN config_region;
             ALTER TABLE emitters DROP COLUMN config_made;
             ALTER TABLE emitters DROP COLUMN rendering;
             ALTER TABLE emitters DROP COLUMN exec_args;
             DROP TABLE checks;
             DROP TABLE audit;
             DROP TABLE rotations;
             DROP TABLE audit_remote;
             DROP TABLE audit_remote_gaps;
             PRAGMA user_version = 6;",
        )
        .unwrap();
    }
    let p2_edited = v1("p2") + "output = text\n";
    let old = format!("{user}\n{}\n{p2_edited}", v1("p1"));
    fs::write(&config, &old).unwrap();
    vh.unlock();
    assert!(
        !states(&vh).iter().any(|s| s == "profile p1 drifted"),
        "an upgraded binding is not drift"
    );
    // The daemon's ticker moves p1 (exactly the old rendering) on.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let upgraded = format!("{user}\n{}\n{p2_edited}", v2("p1"));
    while fs::read_to_string(&config).unwrap() != upgraded {
        assert!(
            std::time::Instant::now() < deadline,
            "p1 never got its region:\n{}",
            fs::read_to_string(&config).unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // p2 holds the user's edit: drift against what was written then (not
    // the region line it never had), and left alone.
    assert_eq!(states(&vh), ["profile p1 ok", "profile p2 drifted"]);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(fs::read_to_string(&config).unwrap(), upgraded);
    // Repair writes the current rendering.
    vh.vault(["emit", "repair"]).ok();
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        format!("{user}\n{}\n{}", v2("p1"), v2("p2"))
    );
    assert_eq!(states(&vh), ["profile p1 ok", "profile p2 ok"]);
    // A new region reaches both.
    vh.vault(["set", "cp", "region=sa-east-1"]).ok();
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        format!("{user}\n{}\n{}", v2("p1"), v2("p2")).replace("eu-central-1", "sa-east-1")
    );
}

/// Review of issue 26: regions of S3-compatible services (`auto` for R2,
/// `us-west-004`, `nyc3`, `fr-par`) are written like AWS's; a region the
/// file cannot carry never blocks the keys, the `credential_process` line
/// (which follows a rename), or `vault emit repair`.
#[test]
fn s3_compatible_regions_are_written_and_a_bad_one_blocks_nothing() {
    let vh = VaultHome::new();
    vh.init();
    let aws = vh.user_home.join(".aws");
    fs::create_dir_all(&aws).unwrap();
    let config = aws.join("config");
    vh.add_aws("r2", "AKIAR2", &secret("r2"), &["region=auto"]);
    vh.vault(["emit", "aws", "r2", "--profile", "r2"]).ok();
    vh.vault(["emit", "aws", "r2", "--profile", "r2p", "--process"])
        .ok();
    let vault_bin = vault_e2e::binaries().vault.display().to_string();
    let expect = |name: &str, region: &str| {
        format!(
            "[profile r2]\nregion = {region}\n\n[profile r2p]\ncredential_process = {vault_bin} \
             aws-process {name}\nregion = {region}\n"
        )
    };
    assert_eq!(fs::read_to_string(&config).unwrap(), expect("r2", "auto"));
    for region in ["us-west-004", "nyc3", "fr-par"] {
        vh.vault(["set", "r2", &format!("region={region}")]).ok();
        assert_eq!(fs::read_to_string(&config).unwrap(), expect("r2", region));
        assert!(
            emitted(&vh)
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["state"] == "ok")
        );
    }

    // A bad one: no region line anywhere, and both bindings say why.
    vh.vault(["set", "r2", "region=fr par"]).ok();
    let no_region = format!("[profile r2p]\ncredential_process = {vault_bin} aws-process r2\n");
    assert_eq!(fs::read_to_string(&config).unwrap(), no_region);
    // The credential_process line still follows a rename.
    vh.vault(["rename", "r2", "r2b"]).ok();
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        no_region.replace("aws-process r2\n", "aws-process r2b\n")
    );
    for e in emitted(&vh).as_array().unwrap() {
        let state = e["state"].as_str().unwrap();
        assert!(
            state.contains("not a region name") && !state.contains("fr par"),
            "{state}"
        );
    }
    vh.vault(["emit", "repair"]).ok();
    // Emitting it again succeeds, and says on stderr what it could not write.
    let again = vh.vault(["emit", "aws", "r2b", "--profile", "r2p", "--process"]);
    again.ok();
    assert!(
        again.stderr.contains("warning:") && again.stderr.contains("not a region name"),
        "{}",
        again.stderr
    );
    // And a good one again comes back in both ([profile r2] made anew,
    // after the other).
    vh.vault(["set", "r2b", "region=auto"]).ok();
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        format!(
            "[profile r2p]\ncredential_process = {vault_bin} aws-process r2b\nregion = auto\n\n\
             [profile r2]\nregion = auto\n"
        )
    );
    assert!(
        emitted(&vh)
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["state"] == "ok")
    );
}

/// Review of issue 26: while the credential has no region the vault claims
/// no `region` and never touches the config file; a line the user writes
/// there is theirs (not drift, and never deleted). When a region appears,
/// the file decides: no line, ours; the user's equal line, theirs; the
/// user's other value, an error and nothing written.
#[test]
fn no_region_claims_nothing_and_a_region_that_appears_asks_the_file() {
    let vh = VaultHome::new();
    vh.init();
    let aws = vh.user_home.join(".aws");
    fs::create_dir_all(&aws).unwrap();
    let config = aws.join("config");
    fs::write(&config, USER_CONFIG).unwrap();
    vh.add_aws("np", "AKIANP", &secret("np"), &[]);
    vh.vault(["emit", "aws", "np", "--profile", "np"]).ok();
    assert_eq!(fs::read_to_string(&config).unwrap(), USER_CONFIG);
    let id = emitted(&vh)[0]["id"].as_str().unwrap().to_owned();

    // The user's own region for the profile.
    let theirs = format!("{USER_CONFIG}\n[profile np]\nregion = us-west-2\n");
    fs::write(&config, &theirs).unwrap();
    assert_eq!(state_of(&vh, "np"), "ok");
    vh.vault(["set", "np", "--description", "x"]).ok();
    assert_eq!(fs::read_to_string(&config).unwrap(), theirs);
    // The credential gets the same region: the line stays the user's.
    vh.vault(["set", "np", "region=us-west-2"]).ok();
    assert_eq!(fs::read_to_string(&config).unwrap(), theirs);
    assert_eq!(state_of(&vh, "np"), "ok");
    // Another one: said, not written.
    vh.vault(["set", "np", "region=eu-west-1"]).ok();
    assert_eq!(fs::read_to_string(&config).unwrap(), theirs);
    let state = state_of(&vh, "np");
    assert!(
        state.contains("has the user's region = us-west-2"),
        "{state}"
    );
    vh.vault(["set", "np", "--unset", "region"]).ok();
    vh.vault(["emit", "rm", &id]).ok();
    assert_eq!(fs::read_to_string(&config).unwrap(), theirs);

    // No section yet, and a region appears later: the section is made,
    // and goes with the region, leaving the file as it was.
    fs::write(&config, USER_CONFIG).unwrap();
    vh.add_aws("late", "AKIALATE", &secret("late"), &[]);
    vh.vault(["emit", "aws", "late", "--profile", "late"]).ok();
    assert_eq!(fs::read_to_string(&config).unwrap(), USER_CONFIG);
    vh.vault(["set", "late", "region=eu-north-1"]).ok();
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        format!("{USER_CONFIG}\n[profile late]\nregion = eu-north-1\n")
    );
    assert_eq!(state_of(&vh, "late"), "ok");
    vh.vault(["set", "late", "--unset", "region"]).ok();
    assert_eq!(fs::read_to_string(&config).unwrap(), USER_CONFIG);
    // Our line gone with the region, a line the user writes is theirs.
    let theirs = format!("{USER_CONFIG}\n[profile late]\nregion = sa-east-1\n");
    fs::write(&config, &theirs).unwrap();
    assert_eq!(state_of(&vh, "late"), "ok");
    vh.vault(["rm", "late", "--force"]).ok();
    assert_eq!(fs::read_to_string(&config).unwrap(), theirs);
}

/// Review of issue 26: `key: value` lines (configparser, so botocore, read
/// them) are the user's and break nothing; once the keys are written, a
/// config file that cannot be parsed is a state, not a failed command;
/// `emit rm` forgets the binding even if the region cannot be taken out.
#[test]
fn colon_lines_are_read_and_a_broken_config_never_fails_a_written_emit() {
    let vh = VaultHome::new();
    vh.init();
    let aws = vh.user_home.join(".aws");
    fs::create_dir_all(&aws).unwrap();
    let config = aws.join("config");
    let user = "[profile np]\noutput: json\n";
    fs::write(&config, user).unwrap();
    vh.add_aws("np", "AKIANP", &secret("np"), &[]);
    vh.vault(["emit", "aws", "np", "--profile", "np"]).ok();
    let id = emitted(&vh)[0]["id"].as_str().unwrap().to_owned();
    vh.vault(["emit", "rm", &id]).ok();
    assert_eq!(emitted(&vh).as_array().unwrap().len(), 0);
    vh.vault(["set", "np", "region=eu-west-1"]).ok();
    vh.vault(["emit", "aws", "np", "--profile", "np"]).ok();
    let ours = format!("{user}region = eu-west-1\n");
    assert_eq!(fs::read_to_string(&config).unwrap(), ours);
    assert_eq!(state_of(&vh, "np"), "ok");

    // The user breaks the file: the binding goes anyway, and says so.
    let broken = format!("{ours}not a key line\n");
    fs::write(&config, &broken).unwrap();
    assert!(state_of(&vh, "np").starts_with("error: "));
    let id = emitted(&vh)[0]["id"].as_str().unwrap().to_owned();
    let out = vh.vault(["--json", "emit", "rm", &id]).ok().json();
    assert!(out["state"].as_str().unwrap().contains("by hand"), "{out}");
    assert_eq!(emitted(&vh).as_array().unwrap().len(), 0);
    assert_eq!(fs::read_to_string(&config).unwrap(), broken);
    assert!(
        !fs::read_to_string(aws.join("credentials"))
            .unwrap()
            .contains("[np]")
    );

    // Emitting into a broken config: the keys are written, the region
    // waits and the binding says why.
    let out = vh
        .vault(["--json", "emit", "aws", "np", "--profile", "np"])
        .ok()
        .json();
    assert!(
        out["state"].as_str().unwrap().starts_with("error: "),
        "{out}"
    );
    assert!(
        fs::read_to_string(aws.join("credentials"))
            .unwrap()
            .contains("[np]\naws_access_key_id = AKIANP\n")
    );
    assert!(state_of(&vh, "np").starts_with("error: "));
    // Fixed by the user: repair writes the region.
    fs::write(&config, user).unwrap();
    vh.vault(["emit", "repair"]).ok();
    assert_eq!(fs::read_to_string(&config).unwrap(), ours);
}

/// Review of issue 26: `vault emit repair` records a binding's new
/// rendering only once it is in the file, and one binding it cannot
/// repair does not stop the others.
#[test]
fn repair_goes_on_past_a_failure_and_records_only_what_it_wrote() {
    let vh = VaultHome::new();
    vh.init();
    vh.add_aws("cp", "AKIACP", &secret("cp"), &["region=eu-central-1"]);
    let aws = vh.user_home.join(".aws");
    fs::create_dir_all(&aws).unwrap();
    let (a, b) = (aws.join("a"), aws.join("b"));
    for (f, p) in [(&a, "pa"), (&b, "pb")] {
        let path = f.display().to_string();
        vh.vault([
            "emit",
            "aws",
            "cp",
            "--profile",
            p,
            "--process",
            "--path",
            &path,
        ])
        .ok();
    }
    let vault_bin = vault_e2e::binaries().vault.display().to_string();
    let v1 = |p: &str| format!("[profile {p}]\ncredential_process = {vault_bin} aws-process cp\n");
    let v2 = |p: &str| v1(p) + "region = eu-central-1\n";
    // As an older vault left them: rendering 1; a's file then broken by
    // the user, b's section edited.
    vh.vault(["daemon", "stop"]).ok();
    {
        let db = rusqlite::Connection::open(vh.paths().db()).unwrap();
        db.execute_batch("UPDATE emitters SET rendering = 1;")
            .unwrap();
    }
    fs::write(&a, v1("pa") + "not a key line\n").unwrap();
    fs::write(&b, v1("pb") + "output = text\n").unwrap();
    vh.unlock();
    vh.vault(["emit", "repair"]).code(1).stderr_has("line 3");
    assert_eq!(fs::read_to_string(&b).unwrap(), v2("pb"), "b is repaired");
    // a was not written: it is still compared with rendering 1.
    fs::write(&a, v1("pa")).unwrap();
    let states: Vec<String> = emitted(&vh)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states, ["ok", "ok"]);
}
