//! `vault exec` (issue 3, docs/user-guide.md and docs/exec.md) through the real binaries: what
//! the child sees for every type, AWS hygiene, conflicts and `--env`,
//! private files that are gone after the child (also after `kill -9` of the
//! wrapper), exit codes, signals, expired and locked credentials, nesting.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vault_e2e::{MARK, Run, Sample, VaultHome, kill_pid, run_command, samples};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A child that records what it was given into `$OUT`: its environment,
/// and a copy and the mode of every file a credential points it to.
const PROBE: &str = r#"
set -e
env > "$OUT/env"
copy() { [ -n "$2" ] || return 0; cp "$2" "$OUT/$1"; stat -c '%a' "$2" > "$OUT/$1.mode"; }
copy gcp "$GOOGLE_APPLICATION_CREDENTIALS"
copy docker "${DOCKER_CONFIG:+$DOCKER_CONFIG/config.json}"
copy netrc "$NETRC_PATH"
key=$(printf '%s' "$GIT_SSH_COMMAND" | cut -d "'" -f 2)
copy ssh "$key"
if [ -n "$GOOGLE_APPLICATION_CREDENTIALS" ]; then
  dir=$(dirname "$GOOGLE_APPLICATION_CREDENTIALS")
  printf '%s' "$dir" > "$OUT/dir"
  stat -c '%a' "$dir" > "$OUT/dir.mode"
fi
"#;

fn out_dir(vh: &VaultHome, name: &str) -> PathBuf {
    let dir = vh.root().join(name);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// `vault exec ARGS -- sh -c SCRIPT` with `OUT` set through `--env`, and
/// extra variables in the wrapper's own environment.
fn exec_sh(vh: &VaultHome, creds: &[&str], script: &str, out: &Path, env: &[(&str, &str)]) -> Run {
    let mut args: Vec<String> = vec!["exec".into()];
    for c in creds {
        args.push("-c".into());
        args.push((*c).into());
    }
    args.push("--env".into());
    args.push(format!("OUT={}", out.display()));
    args.extend(["--".into(), "sh".into(), "-c".into(), script.into()]);
    let mut cmd = vh.command(&vault_e2e::binaries().vault, &args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_command(cmd, None, TIMEOUT)
}

fn child_env(out: &Path) -> BTreeMap<String, String> {
    fs::read_to_string(out.join("env"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn sample<'a>(all: &'a [Sample], kind: &str) -> &'a Sample {
    all.iter().find(|s| s.kind == kind).unwrap()
}

fn exec_dir(vh: &VaultHome) -> PathBuf {
    vh.paths().exec_dir()
}

fn exec_dir_is_empty(vh: &VaultHome) -> bool {
    fs::read_dir(exec_dir(vh)).map_or(true, |mut d| d.next().is_none())
}

#[test]
fn every_type_reaches_the_child_and_its_files_are_private_and_gone() {
    let vh = VaultHome::new();
    vh.init();
    let all = samples(&vh, "");
    for s in &all {
        s.add(&vh);
    }
    let netrc = vault_e2e::secret("netrc");
    let f = vh.at_file("netrc-src", &netrc);
    vh.vault([
        "add",
        "netrc",
        "--type",
        "file",
        &format!("content={f}"),
        "path=/home/u/.netrc",
        "env=NETRC_PATH",
        "mode=0400",
    ])
    .ok();

    let out = out_dir(&vh, "probe");
    let creds: Vec<&str> = all
        .iter()
        .filter(|s| s.kind != "data" && s.kind != "file")
        .map(|s| s.name.as_str())
        .chain(["netrc"])
        .collect();
    let run = exec_sh(&vh, &creds, PROBE, &out, &[]);
    run.ok().never_prints(MARK);
    let env = child_env(&out);

    assert_eq!(env["API_KEY"], sample(&all, "generic").secret_value);
    let aws = sample(&all, "aws");
    assert_eq!(env["AWS_ACCESS_KEY_ID"], "AKIAE2EEXAMPLE");
    assert_eq!(env["AWS_SECRET_ACCESS_KEY"], aws.secret_value);
    assert_eq!(env["AWS_REGION"], "eu-west-1");
    assert_eq!(env["AWS_DEFAULT_REGION"], "eu-west-1");
    assert!(
        !env.contains_key("AWS_CREDENTIAL_EXPIRATION"),
        "no expiry, no variable"
    );
    assert_eq!(env["ME_CORP_USERNAME"], "alice");
    assert_eq!(
        env["ME_CORP_PASSWORD"],
        sample(&all, "password").secret_value
    );
    assert_eq!(env["GH_TOKEN"], sample(&all, "token").secret_value);
    assert_eq!(env["GOOGLE_CLOUD_PROJECT"], "e2e-proj");
    assert_eq!(env["CLOUDSDK_CORE_PROJECT"], "e2e-proj");
    assert_eq!(
        env["GOOGLE_APPLICATION_CREDENTIALS"],
        env["CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE"]
    );
    let names: Vec<&str> = env["VAULT_EXEC"].split(',').collect();
    assert_eq!(names, creds);

    // Files: byte for byte, 0600 (0400 when asked), in a 0700 folder.
    let read = |n: &str| fs::read_to_string(out.join(n)).unwrap();
    assert_eq!(read("gcp"), sample(&all, "gcp").secret_value);
    assert_eq!(read("ssh"), sample(&all, "ssh").secret_value);
    assert_eq!(read("netrc"), netrc);
    let docker: serde_json::Value = serde_json::from_str(&read("docker")).unwrap();
    let auth = docker["auths"]["nvcr.io"]["auth"].as_str().unwrap();
    let expected = format!("$oauthtoken:{}", sample(&all, "registry").secret_value);
    assert_eq!(vault_e2e::base64_decode(auth), expected.as_bytes());
    for (file, mode) in [
        ("gcp", "600"),
        ("ssh", "600"),
        ("docker", "600"),
        ("netrc", "400"),
    ] {
        assert_eq!(read(&format!("{file}.mode")).trim(), mode, "{file}");
    }
    assert_eq!(read("dir.mode").trim(), "700");
    let dir = PathBuf::from(read("dir"));
    assert!(
        dir.starts_with(exec_dir(&vh)),
        "{dir:?} is under the runtime dir"
    );
    assert!(!dir.exists(), "the child's folder is removed when it exits");
    assert!(exec_dir_is_empty(&vh));
}

#[test]
fn aws_hygiene_data_endpoints_and_conflicts() {
    let vh = VaultHome::new();
    vh.init();
    let all = samples(&vh, "");
    let (aws, data) = (sample(&all, "aws"), sample(&all, "data"));
    aws.add(&vh);
    data.add(&vh);
    let gs_key = vault_e2e::secret("gs");
    let f = vh.at_file("gs", &gs_key);
    vh.vault([
        "add",
        "gcs-hmac",
        "--type",
        "data",
        "endpoint=gs://bucket",
        "access_key_id=GOOGHMAC",
        &format!("access_key={f}"),
    ])
    .ok();

    // Stale variables in the wrapper's environment never reach the child.
    let out = out_dir(&vh, "aws");
    let stale = [
        ("AWS_PROFILE", "stale-profile"),
        ("AWS_SESSION_TOKEN", "stale-token"),
        ("AWS_SECURITY_TOKEN", "stale-token"),
        ("AWS_DEFAULT_PROFILE", "stale"),
        ("AWS_SDK_LOAD_CONFIG", "1"),
        ("AWS_CREDENTIAL_FILE", "/nowhere"),
    ];
    exec_sh(&vh, &[&aws.name], "env > \"$OUT/env\"", &out, &stale).ok();
    let env = child_env(&out);
    for (k, _) in stale {
        assert!(
            !env.contains_key(k),
            "{k} must be unset, got {:?}",
            env.get(k)
        );
    }

    // s3: AWS_* without an endpoint; gs: HMAC keys and Google's endpoint.
    exec_sh(&vh, &[&data.name], "env > \"$OUT/env\"", &out, &[]).ok();
    let env = child_env(&out);
    assert_eq!(env["AWS_ACCESS_KEY_ID"], "AKIADATA");
    assert_eq!(env["AWS_SECRET_ACCESS_KEY"], data.secret_value);
    assert!(!env.contains_key("AWS_ENDPOINT_URL"));
    exec_sh(&vh, &["gcs-hmac"], "env > \"$OUT/env\"", &out, &[]).ok();
    let env = child_env(&out);
    assert_eq!(env["AWS_ACCESS_KEY_ID"], "GOOGHMAC");
    assert_eq!(env["AWS_SECRET_ACCESS_KEY"], gs_key);
    assert_eq!(env["AWS_ENDPOINT_URL"], "https://storage.googleapis.com");

    // Two credentials setting the same variables: an error naming both,
    // and the child never starts.
    let marker = out.join("started");
    let script = "touch \"$OUT/started\"; env > \"$OUT/env\"";
    let run = exec_sh(&vh, &[&aws.name, &data.name], script, &out, &[]);
    run.code(2).never_prints(MARK);
    assert!(
        run.stderr.contains(&aws.name) && run.stderr.contains(&data.name),
        "{run}"
    );
    assert!(
        run.stderr.contains("--env"),
        "says how to settle it:\n{run}"
    );
    assert!(!marker.exists(), "the child must not start");

    // --env settles it, and always wins.
    let mut args = vec!["exec", "-c", &aws.name, "-c", &data.name];
    let out_env = format!("OUT={}", out.display());
    args.extend([
        "--env",
        &out_env,
        "--env",
        "AWS_ACCESS_KEY_ID=chosen-id",
        "--env",
        "AWS_SECRET_ACCESS_KEY=chosen-secret",
        "--",
        "sh",
        "-c",
        script,
    ]);
    vh.vault(&args).ok();
    let env = child_env(&out);
    assert_eq!(env["AWS_ACCESS_KEY_ID"], "chosen-id");
    assert_eq!(env["AWS_SECRET_ACCESS_KEY"], "chosen-secret");
}

#[test]
fn exit_codes_and_signals_pass_through() {
    let vh = VaultHome::new();
    vh.init();
    let token = vault_e2e::secret("tok");
    vh.vault_in(
        ["add", "tok", "--type", "token", "token=-"],
        token.as_bytes(),
    )
    .ok();
    let out = out_dir(&vh, "sig");
    exec_sh(&vh, &["tok"], "exit 42", &out, &[]).code(42);
    let run = exec_sh(&vh, &["tok"], "kill -TERM $$", &out, &[]);
    run.code(128 + 15);
    let run = vh.vault(["exec", "-c", "tok", "--", "no-such-command-e2e"]);
    run.code(127)
        .stderr_has("no-such-command-e2e: command not found");

    // A signal sent to the wrapper reaches the child, which decides.
    let script = r#"trap 'echo TERM > "$OUT/got"; exit 7' TERM; echo $$ > "$OUT/pid"; while :; do sleep 0.05; done"#;
    let (mut wrapper, pid_file) = spawn_wrapper(&vh, &["tok"], script, &out);
    wait_for(&pid_file);
    kill_pid(wrapper.id(), false);
    let status = wait_child(&mut wrapper);
    assert_eq!(
        status.code(),
        Some(7),
        "the child's exit code after its trap"
    );
    assert_eq!(fs::read_to_string(out.join("got")).unwrap().trim(), "TERM");
    assert!(exec_dir_is_empty(&vh));
}

#[test]
fn kill_9_of_the_wrapper_leaves_no_files_behind() {
    let vh = VaultHome::new();
    vh.init();
    let key = format!("{}\n", vault_e2e::secret("ssh"));
    vh.vault_in(
        ["add", "deploy", "--type", "ssh", "private_key=-"],
        key.as_bytes(),
    )
    .ok();
    let out = out_dir(&vh, "k9");
    let script = r#"printf '%s' "$GIT_SSH_COMMAND" | cut -d "'" -f 2 > "$OUT/key"; echo $$ > "$OUT/pid"; exec sleep 60"#;
    let (mut wrapper, pid_file) = spawn_wrapper(&vh, &["deploy"], script, &out);
    wait_for(&pid_file);
    let key_path = PathBuf::from(fs::read_to_string(out.join("key")).unwrap().trim());
    assert!(
        key_path.exists(),
        "the key file exists while the child runs"
    );
    kill_pid(wrapper.id(), true);
    wait_child(&mut wrapper);
    // The orphaned child may go on; its files must not. The daemon sweeps
    // the folder of a wrapper that is gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    while key_path.parent().unwrap().exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let child: u32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    kill_pid(child, true);
    assert!(
        !key_path.parent().unwrap().exists(),
        "vaultd removes the folder of a killed wrapper"
    );
}

#[test]
fn expired_locked_and_missing_credentials_never_start_the_child() {
    let vh = VaultHome::new();
    vh.init();
    let v = vault_e2e::secret("old");
    vh.vault_in(
        [
            "add",
            "old-sts",
            "--type",
            "aws",
            "access_key_id=AKIAOLD",
            "secret_access_key=-",
            "--expires-at",
            "2020-01-01T00:00:00Z",
        ],
        v.as_bytes(),
    )
    .ok();
    vh.vault_in(
        ["add", "fresh", "--type", "token", "token=-"],
        b"fresh-value",
    )
    .ok();
    let out = out_dir(&vh, "never");
    let script = "touch \"$OUT/started\"";
    let run = exec_sh(&vh, &["fresh", "old-sts"], script, &out, &[]);
    run.code(7).never_prints(MARK);
    assert!(
        run.stderr.contains("old-sts") && run.stderr.contains("2020-01-01T00:00:00Z"),
        "names the credential and when it expired:\n{run}"
    );
    exec_sh(&vh, &["fresh", "missing"], script, &out, &[])
        .code(4)
        .stderr_has("missing");
    vh.vault(["lock"]).ok();
    exec_sh(&vh, &["fresh"], script, &out, &[])
        .code(3)
        .stderr_has("vault is locked: run 'vault unlock'");
    assert!(!out.join("started").exists(), "no child was started");
    assert!(exec_dir_is_empty(&vh));
}

#[test]
fn nesting_the_same_credential_is_refused() {
    let vh = VaultHome::new();
    vh.init();
    vh.vault_in(["add", "a", "--type", "token", "token=-"], b"value-a")
        .ok();
    vh.vault_in(["add", "b", "--type", "token", "token=-"], b"value-b")
        .ok();
    let run = vh.vault([
        "exec", "-c", "a", "--", "vault", "exec", "-c", "a", "--", "true",
    ]);
    run.code(5).stderr_has("already inside 'vault exec' with a");
    let out = out_dir(&vh, "nest");
    let out_env = format!("OUT={}", out.display());
    vh.vault([
        "exec",
        "-c",
        "a",
        "--",
        "vault",
        "exec",
        "-c",
        "b",
        "--env",
        &out_env,
        "--",
        "sh",
        "-c",
        "env > \"$OUT/env\"",
    ])
    .ok();
    let env = child_env(&out);
    assert_eq!(env["VAULT_EXEC"], "a,b");
    assert_eq!(env["A_TOKEN"], "value-a");
    assert_eq!(env["B_TOKEN"], "value-b");
}

fn spawn_wrapper(
    vh: &VaultHome,
    creds: &[&str],
    script: &str,
    out: &Path,
) -> (std::process::Child, PathBuf) {
    let mut args: Vec<String> = vec!["exec".into()];
    for c in creds {
        args.extend(["-c".into(), (*c).into()]);
    }
    args.extend([
        "--env".into(),
        format!("OUT={}", out.display()),
        "--".into(),
        "sh".into(),
        "-c".into(),
        script.into(),
    ]);
    let mut cmd: Command = vh.command(&vault_e2e::binaries().vault, &args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _ = fs::remove_file(out.join("pid"));
    (cmd.spawn().unwrap(), out.join("pid"))
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + TIMEOUT;
    while !path.exists()
        || fs::read_to_string(path)
            .unwrap_or_default()
            .trim()
            .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_child(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the wrapper did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_exec_folder_is_private() {
    let vh = VaultHome::new();
    vh.init();
    vh.vault_in(["add", "t", "--type", "token", "token=-"], b"v")
        .ok();
    vh.vault(["exec", "-c", "t", "--", "true"]).ok();
    let mode = fs::metadata(exec_dir(&vh)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

#[test]
fn secrets_in_piped_output_are_masked_even_when_split() {
    let vh = VaultHome::new();
    vh.init();
    let value = vault_e2e::secret("masked");
    vh.vault_in(
        ["add", "ci-token", "--type", "token", "token=-"],
        value.as_bytes(),
    )
    .ok();
    let (head, tail) = value.split_at(value.len() / 2);
    // The value whole, then in two writes far apart, on both streams.
    let script = format!(
        "printf 'a=%s\\n' \"$CI_TOKEN_TOKEN\"; printf 'b=%s' '{head}'; sleep 0.3; printf '%s\\n' '{tail}'; \
         printf 'e=%s\\n' \"$CI_TOKEN_TOKEN\" >&2"
    );
    let run = vh.vault(["exec", "-c", "ci-token", "--", "sh", "-c", &script]);
    run.ok().never_prints(&value);
    assert_eq!(run.stdout, "a=<redacted:ci-token>\nb=<redacted:ci-token>\n");
    assert!(run.stderr.contains("e=<redacted:ci-token>"), "{run}");

    let run = vh.vault([
        "exec",
        "--no-mask",
        "-c",
        "ci-token",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    run.ok();
    assert_eq!(run.stdout, format!("a={value}\nb={value}\n"));
}

#[test]
fn server_needs_exactly_one_aws_credential() {
    let vh = VaultHome::new();
    vh.init();
    vh.vault_in(["add", "t", "--type", "token", "token=-"], b"value-t")
        .ok();
    vh.vault(["exec", "--server", "-c", "t", "--", "true"])
        .code(2)
        .stderr_has("--server serves an aws credential");
}

#[test]
fn password_prefix_can_be_chosen() {
    let vh = VaultHome::new();
    vh.init();
    vh.vault_in(
        [
            "add",
            "db/prod",
            "--type",
            "password",
            "username=app",
            "password=-",
        ],
        b"pw-value",
    )
    .ok();
    let out = out_dir(&vh, "prefix");
    let out_env = format!("OUT={}", out.display());
    let script = "env > \"$OUT/env\"";
    vh.vault([
        "exec", "-c", "db/prod", "--env", &out_env, "--", "sh", "-c", script,
    ])
    .ok();
    let env = child_env(&out);
    assert_eq!(env["DB_PROD_USERNAME"], "app");
    assert_eq!(env["DB_PROD_PASSWORD"], "pw-value");
    vh.vault([
        "exec", "-c", "db/prod", "--prefix", "PG", "--env", &out_env, "--", "sh", "-c", script,
    ])
    .ok();
    let env = child_env(&out);
    assert_eq!(env["PG_USERNAME"], "app");
    assert_eq!(env["PG_PASSWORD"], "pw-value");
    assert!(!env.contains_key("DB_PROD_PASSWORD"));
    vh.vault([
        "exec", "-c", "db/prod", "--prefix", "other=PG", "--", "true",
    ])
    .code(2)
    .stderr_has("not a password credential");
}
