//! What `vault exec` gives a child, read by the real client libraries users
//! run (issue 3): botocore resolves exactly the injected AWS credentials, and
//! google-auth loads the injected service-account file. They need a Python
//! with botocore and google-auth in `VAULT_TEST_PYTHON`; `bash .ci/run`
//! makes one (target/ci-venv). Without it each test prints `SKIP …` and
//! passes.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vault_e2e::{MARK, VaultHome, run_command, secret, test_python};

/// Runs `cmd`, which must succeed and print one JSON document.
fn json_of(cmd: Command) -> serde_json::Value {
    let run = run_command(cmd, None, Duration::from_secs(120));
    run.ok();
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}:\n{run}"))
}

/// `python -c SCRIPT` in the vault's environment; its JSON output.
fn run_python(vh: &VaultHome, python: &Path, script: &str) -> serde_json::Value {
    json_of(vh.command(python, ["-c", script]))
}

/// `vault exec --no-mask FLAGS -c CREDS... -- python -c SCRIPT`; the
/// script's JSON output.
fn exec_python(
    vh: &VaultHome,
    flags: &[&str],
    creds: &[&str],
    python: &Path,
    script: &str,
    env: &[(&str, &str)],
) -> serde_json::Value {
    // The script prints the secrets it resolved, to compare them: unmasked.
    let mut args: Vec<String> = vec!["exec".into(), "--no-mask".into()];
    args.extend(flags.iter().map(|f| (*f).to_owned()));
    for c in creds {
        args.extend(["-c".into(), (*c).into()]);
    }
    args.extend([
        "--".into(),
        python.display().to_string(),
        "-c".into(),
        script.into(),
    ]);
    let mut cmd = vh.command(&vault_e2e::binaries().vault, &args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    json_of(cmd)
}

#[test]
fn botocore_resolves_exactly_the_injected_credentials() {
    let Some(python) = test_python("botocore") else {
        return;
    };
    let vh = VaultHome::new();
    vh.init();
    let secret_key = secret("aws-secret");
    let token = secret("aws-token");
    let tk = vh.at_file("tk", &token);
    vh.add_aws(
        "aws-sts",
        "ASIAREALCLIENT",
        &secret_key,
        &[
            &format!("session_token={tk}"),
            "region=ap-southeast-2",
            "--ttl",
            "1h",
        ],
    );
    // A profile that the user's environment points at: if AWS_PROFILE
    // reached the child, botocore would use it (or fail to find it).
    let aws_dir = vh.user_home.join(".aws");
    std::fs::create_dir_all(&aws_dir).unwrap();
    std::fs::write(
        aws_dir.join("credentials"),
        "[stale]\naws_access_key_id = AKIASTALE\naws_secret_access_key = stale\n",
    )
    .unwrap();
    let script = r#"
import json, botocore.session
s = botocore.session.get_session()
c = s.get_credentials()
f = c.get_frozen_credentials()
print(json.dumps({"method": c.method, "key": f.access_key, "secret": f.secret_key,
                  "token": f.token, "region": s.get_config_variable("region")}))
"#;
    let got = exec_python(
        &vh,
        &[],
        &["aws-sts"],
        &python,
        script,
        &[("AWS_PROFILE", "stale")],
    );
    assert_eq!(got["method"], "env", "{got}");
    assert_eq!(got["key"], "ASIAREALCLIENT");
    assert_eq!(got["secret"], secret_key.as_str());
    assert_eq!(got["token"], token.as_str());
    assert_eq!(got["region"], "ap-southeast-2");
}

#[test]
fn google_auth_loads_the_injected_service_account() {
    let Some(python) = test_python("google-auth") else {
        return;
    };
    let vh = VaultHome::new();
    vh.init();
    // A real RSA key: google-auth parses it.
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl genpkey failed");
    let pem = String::from_utf8(out.stdout).unwrap();
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "real-client-proj",
        "private_key_id": format!("{MARK}-key-id"),
        "private_key": pem,
        "client_email": "ci@real-client-proj.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    let f = vh.at_file("sa.json", &key.to_string());
    vh.vault(["add", "gcp-ci", "--type", "gcp", &format!("json={f}")])
        .ok();
    let script = r#"
import json, os, google.auth
creds, project = google.auth.default()
print(json.dumps({"email": creds.service_account_email, "project": project,
                  "file_mode": oct(os.stat(os.environ["GOOGLE_APPLICATION_CREDENTIALS"]).st_mode & 0o777)}))
"#;
    let got = exec_python(&vh, &[], &["gcp-ci"], &python, script, &[]);
    assert_eq!(got["email"], "ci@real-client-proj.iam.gserviceaccount.com");
    assert_eq!(got["project"], "real-client-proj");
    assert_eq!(got["file_mode"], "0o600");
}

#[test]
fn botocore_fetches_fresh_credentials_from_the_exec_server() {
    let Some(python) = test_python("botocore --server") else {
        return;
    };
    let vh = VaultHome::new();
    vh.init();
    let first = secret("srv-first");
    let rotated = secret("srv-rotated");
    vh.add_aws("aws-srv", "AKIASERVED", &first, &["region=eu-north-1"]);
    let rotated_file = vh.at_file("rotated", &rotated);
    // The user's own default profile would win over the endpoint in
    // botocore's chain: exec hides the shared files from the child.
    let aws = vh.user_home.join(".aws");
    std::fs::create_dir_all(&aws).unwrap();
    let plain = secret("plaintext-default");
    let credentials =
        format!("[default]\naws_access_key_id = AKIAPLAINTEXT\naws_secret_access_key = {plain}\n");
    let config = "[default]\nregion = ap-south-1\ncredential_process = false\n";
    std::fs::write(aws.join("credentials"), &credentials).unwrap();
    std::fs::write(aws.join("config"), config).unwrap();
    let boto =
        format!("[Credentials]\naws_access_key_id = AKIABOTO\naws_secret_access_key = {plain}\n");
    std::fs::write(vh.user_home.join(".boto"), &boto).unwrap();
    // Inside the child: botocore through the endpoint; a request without
    // the token; a rotation in the vault, seen by the next fetch.
    let script = format!(
        r#"
import json, os, subprocess, urllib.request, urllib.error
import botocore.session
s = botocore.session.get_session()
c = s.get_credentials()
f = c.get_frozen_credentials()
url = os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
try:
    urllib.request.urlopen(url)
    anonymous = 200
except urllib.error.HTTPError as e:
    anonymous = e.code
subprocess.run(["vault", "set", "aws-srv", "secret_access_key={rotated_file}"], check=True,
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
req = urllib.request.Request(url, headers={{"Authorization": os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"]}})
after = json.load(urllib.request.urlopen(req))
print(json.dumps({{"method": c.method, "key": f.access_key, "secret": f.secret_key,
                  "region": s.get_config_variable("region"), "anonymous": anonymous,
                  "static_key_in_env": "AWS_SECRET_ACCESS_KEY" in os.environ,
                  "after": after["SecretAccessKey"], "expiration": after["Expiration"], "url": url}}))
"#
    );
    let got = exec_python(&vh, &["--server"], &["aws-srv"], &python, &script, &[]);
    assert_eq!(got["method"], "container-role", "{got}");
    assert_eq!(got["key"], "AKIASERVED");
    assert_eq!(got["secret"], first.as_str());
    assert_eq!(got["region"], "eu-north-1");
    assert_eq!(got["anonymous"], 401);
    assert_eq!(got["static_key_in_env"], false);
    assert_eq!(
        got["after"],
        rotated.as_str(),
        "each fetch reads the vault afresh"
    );
    assert!(got["expiration"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        std::fs::read_to_string(aws.join("credentials")).unwrap(),
        credentials
    );
    assert_eq!(std::fs::read_to_string(aws.join("config")).unwrap(), config);
    // The endpoint stops with the child.
    let url = got["url"].as_str().unwrap();
    let port = url.rsplit(':').next().unwrap().split('/').next().unwrap();
    let addr = format!("127.0.0.1:{port}");
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "{addr} still accepts after the child exited"
    );
}

#[test]
fn botocore_runs_vault_as_its_credential_process() {
    let Some(python) = test_python("botocore credential_process") else {
        return;
    };
    let vh = VaultHome::new();
    vh.init();
    let sk = secret("proc");
    vh.add_aws("aws-proc", "AKIAPROCESS", &sk, &[]);
    let aws = vh.user_home.join(".aws");
    std::fs::create_dir_all(&aws).unwrap();
    std::fs::write(
        aws.join("config"),
        format!(
            "[profile vp]\ncredential_process = {} aws-process aws-proc\nregion = sa-east-1\n",
            vault_e2e::binaries().vault.display()
        ),
    )
    .unwrap();
    let script = r#"
import json, botocore.session
s = botocore.session.Session(profile="vp")
c = s.get_credentials()
f = c.get_frozen_credentials()
print(json.dumps({"method": c.method, "key": f.access_key, "secret": f.secret_key}))
"#;
    let got = run_python(&vh, &python, script);
    assert_eq!(got["method"], "custom-process", "{got}");
    assert_eq!(got["key"], "AKIAPROCESS");
    assert_eq!(got["secret"], sk.as_str());
}

#[test]
fn botocore_reads_the_emitted_profile() {
    let Some(python) = test_python("botocore emit") else {
        return;
    };
    let vh = VaultHome::new();
    vh.init();
    let sk = secret("emitted");
    vh.add_aws("aws-emit", "AKIAEMITTED", &sk, &[]);
    let aws = vh.user_home.join(".aws");
    std::fs::create_dir_all(&aws).unwrap();
    std::fs::write(
        aws.join("credentials"),
        "[default]\naws_access_key_id = AKIAUSER\naws_secret_access_key = user\n",
    )
    .unwrap();
    vh.vault(["emit", "aws", "aws-emit", "--profile", "from-vault"])
        .ok();
    let script = r#"
import json, botocore.session
out = {}
for p in ("from-vault", "default"):
    f = botocore.session.Session(profile=p).get_credentials().get_frozen_credentials()
    out[p] = [f.access_key, f.secret_key]
print(json.dumps(out))
"#;
    let got = run_python(&vh, &python, script);
    assert_eq!(got["from-vault"], serde_json::json!(["AKIAEMITTED", sk]));
    assert_eq!(got["default"], serde_json::json!(["AKIAUSER", "user"]));
}

#[test]
fn botocore_uses_the_emitted_credential_process() {
    let Some(python) = test_python("botocore emit --process") else {
        return;
    };
    let vh = VaultHome::new();
    vh.init();
    let sk = secret("emit-proc");
    vh.add_aws("aws-ep", "AKIAEMITPROC", &sk, &[]);
    vh.vault(["emit", "aws", "aws-ep", "--profile", "ep", "--process"])
        .ok();
    let script = r#"
import json, botocore.session
c = botocore.session.Session(profile="ep").get_credentials()
f = c.get_frozen_credentials()
print(json.dumps({"method": c.method, "key": f.access_key, "secret": f.secret_key}))
"#;
    let got = run_python(&vh, &python, script);
    assert_eq!(got["method"], "custom-process", "{got}");
    assert_eq!(got["key"], "AKIAEMITPROC");
    assert_eq!(got["secret"], sk.as_str());
}

#[test]
fn google_auth_loads_the_emitted_adc_file() {
    let Some(python) = test_python("google-auth emit") else {
        return;
    };
    let vh = VaultHome::new();
    vh.init();
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .unwrap();
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "emitted-proj",
        "private_key_id": "k1",
        "private_key": String::from_utf8(out.stdout).unwrap(),
        "client_email": "emit@emitted-proj.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    let f = vh.at_file("sa.json", &key.to_string());
    vh.vault(["add", "gcp-emit", "--type", "gcp", &format!("json={f}")])
        .ok();
    vh.vault(["emit", "gcloud", "gcp-emit", "--adc"]).ok();
    let adc = vh
        .user_home
        .join(".config/gcloud/application_default_credentials.json");
    let script = format!(
        r#"
import json, google.auth
creds, project = google.auth.load_credentials_from_file({:?})
print(json.dumps({{"email": creds.service_account_email, "project": project}}))
"#,
        adc.display().to_string()
    );
    let got = run_python(&vh, &python, &script);
    assert_eq!(got["email"], "emit@emitted-proj.iam.gserviceaccount.com");
    assert_eq!(got["project"], "emitted-proj");
}

/// Whether `python` has the aws CLI (v1, `python -m awscli`; `bash
/// .ci/run` installs it in its venv and sets `VAULT_TEST_REQUIRE_AWSCLI`).
fn has_aws_cli(python: &Path, test: &str) -> bool {
    let ok = Command::new(python)
        .args(["-c", "import awscli"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("VAULT_TEST_REQUIRE_AWSCLI").is_none(),
            "{test}: {} cannot import awscli (VAULT_TEST_REQUIRE_AWSCLI is set)",
            python.display()
        );
        eprintln!(
            "SKIP {test} (the aws CLI part): {} cannot import awscli: pip install awscli",
            python.display()
        );
    }
    ok
}

/// Issue 26: the region of an emitted profile, as botocore and the `aws`
/// CLI read it: a keys binding puts it in the user's own `[profile P]` of
/// `~/.aws/config` (their `output: json` stays), `--process` in its own
/// section.
#[test]
fn botocore_and_the_aws_cli_read_the_emitted_region() {
    let Some(python) = test_python("emitted region") else {
        return;
    };
    let vh = VaultHome::new();
    vh.init();
    vh.add_aws(
        "aws-keys",
        "AKIAREGIONKEYS",
        &secret("region-keys"),
        &["region=eu-central-1"],
    );
    vh.add_aws(
        "aws-proc",
        "AKIAREGIONPROC",
        &secret("region-proc"),
        &["region=ap-northeast-2"],
    );
    let aws = vh.user_home.join(".aws");
    std::fs::create_dir_all(&aws).unwrap();
    // `key: value`, as configparser (so botocore) reads it too: the
    // user's line, which the vault must read and keep.
    std::fs::write(aws.join("config"), "[profile keys]\noutput: json\n").unwrap();
    vh.vault(["emit", "aws", "aws-keys", "--profile", "keys"])
        .ok();
    vh.vault(["emit", "aws", "aws-proc", "--profile", "proc", "--process"])
        .ok();
    let script = r#"
import json, botocore.session
out = {}
for p in ("keys", "proc"):
    s = botocore.session.Session(profile=p)
    out[p] = {"region": s.get_config_variable("region"),
              "output": s.get_scoped_config().get("output"),
              "key": s.get_credentials().get_frozen_credentials().access_key}
print(json.dumps(out))
"#;
    let got = run_python(&vh, &python, script);
    assert_eq!(
        got["keys"],
        serde_json::json!({"region": "eu-central-1", "output": "json", "key": "AKIAREGIONKEYS"})
    );
    assert_eq!(
        got["proc"],
        serde_json::json!({"region": "ap-northeast-2", "output": null, "key": "AKIAREGIONPROC"})
    );

    if !has_aws_cli(&python, "emitted region") {
        return;
    }
    let aws_cli = |args: &[&str]| {
        let mut all = vec!["-m", "awscli"];
        all.extend_from_slice(args);
        let run = run_command(vh.command(&python, all), None, Duration::from_secs(120));
        run.ok();
        run.stdout.clone()
    };
    for (profile, region) in [("keys", "eu-central-1"), ("proc", "ap-northeast-2")] {
        let got = aws_cli(&["configure", "get", "region", "--profile", profile]);
        assert_eq!(
            got.trim(),
            region,
            "aws configure get region --profile {profile}"
        );
        // `configure list` resolves the profile as every command does
        // (for proc, through `vault aws-process`): the region comes from
        // the config file.
        let list = aws_cli(&["configure", "list", "--profile", profile]);
        let line = list
            .lines()
            .find(|l| l.trim_start().starts_with("region"))
            .unwrap_or_else(|| panic!("no region row:\n{list}"));
        assert!(
            line.contains(region) && line.contains("config-file"),
            "aws configure list --profile {profile}:\n{list}"
        );
        assert!(!list.contains(MARK), "the secret key is masked");
    }
}

/// Issue 24: `vault import aws --adopt` takes the plaintext keys out of
/// `~/.aws/credentials`; botocore and the aws CLI then get the same keys
/// through `credential_process`, the region and output still from the
/// user's config. Entries it cannot take over whole stay as they were, and
/// `--undo` puts the keys back.
#[test]
fn botocore_and_the_aws_cli_use_an_adopted_profile() {
    let Some(python) = test_python("adopted profile") else {
        return;
    };
    let vh = VaultHome::new();
    vh.init();
    let (s_default, s_dev, s_kept) = (
        secret("adopt-default"),
        secret("adopt-dev"),
        secret("adopt-kept"),
    );
    let aws = vh.user_home.join(".aws");
    std::fs::create_dir_all(&aws).unwrap();
    let credentials = format!(
        "# my keys\n[default]\naws_access_key_id = AKIAADOPTDEFAULT\naws_secret_access_key = {s_default}\n\n\
         [dev]\naws_access_key_id=AKIAADOPTDEV\naws_secret_access_key={s_dev}\n\n\
         # PRODUCTION: do not use\n[kept]\naws_access_key_id = AKIAKEPT\naws_secret_access_key = {s_kept}\nregion = us-west-1\n\n\
         [other]\nsso_session = corp\n"
    );
    let creds_file = aws.join("credentials");
    std::fs::write(&creds_file, &credentials).unwrap();
    let config =
        "[default]\nregion = us-east-2\noutput = json\n[profile dev]\nregion = eu-west-1\n";
    std::fs::write(aws.join("config"), config).unwrap();

    let run = vh.vault(["--json", "import", "aws", "--adopt"]);
    run.ok().never_prints(MARK);
    let report = run.json();
    assert_eq!(
        report["adopted"],
        serde_json::json!(["aws-default", "aws-dev"]),
        "{run}"
    );
    assert!(
        run.stderr
            .contains("aws-kept was imported but not adopted: [kept] also holds region"),
        "{run}"
    );
    let now = std::fs::read_to_string(&creds_file).unwrap();
    for s in [&s_default, &s_dev] {
        assert!(
            !now.contains(s.as_str()),
            "an adopted secret is still in the file:\n{now}"
        );
    }
    assert!(
        now.contains("\n# PRODUCTION: do not use\n[kept]\n"),
        "{now}"
    );
    assert!(now.contains("# my keys\n") && now.contains(&format!("[kept]\naws_access_key_id = AKIAKEPT\naws_secret_access_key = {s_kept}\nregion = us-west-1\n")) && now.contains("[other]\nsso_session = corp\n"), "{now}");
    assert_eq!(
        std::fs::read_to_string(aws.join("config")).unwrap(),
        config,
        "the config file is not touched"
    );
    let backup = report["backup"].as_str().unwrap();
    assert_eq!(std::fs::read_to_string(backup).unwrap(), credentials);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(backup).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let script = r#"
import json, botocore.session
out = {}
for p in ("default", "dev", "kept"):
    s = botocore.session.Session(profile=p)
    c = s.get_credentials()
    f = c.get_frozen_credentials()
    out[p] = {"method": c.method, "key": f.access_key, "secret": f.secret_key,
              "region": s.get_config_variable("region"), "output": s.get_scoped_config().get("output")}
print(json.dumps(out))
"#;
    let got = run_python(&vh, &python, script);
    assert_eq!(
        got["default"],
        serde_json::json!({"method": "custom-process", "key": "AKIAADOPTDEFAULT", "secret": s_default, "region": "us-east-2", "output": "json"})
    );
    assert_eq!(got["dev"]["method"], "custom-process");
    assert_eq!(got["dev"]["secret"], s_dev.as_str());
    assert_eq!(got["dev"]["region"], "eu-west-1");
    assert_eq!(got["kept"]["method"], "shared-credentials-file");

    // Again: nothing left to adopt, nothing changes.
    vh.vault(["import", "aws", "--adopt"]).ok();
    assert_eq!(std::fs::read_to_string(&creds_file).unwrap(), now);

    if has_aws_cli(&python, "adopted profile") {
        let run = run_command(
            vh.command(
                &python,
                ["-m", "awscli", "configure", "list", "--profile", "default"],
            ),
            None,
            Duration::from_secs(120),
        );
        run.ok().never_prints(MARK);
        let line = run
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with("access_key"))
            .unwrap_or_default();
        assert!(
            line.contains("AULT") && line.contains("custom-process"),
            "{run}"
        );
    }

    // Undo: the keys are back in plain text, botocore reads them there,
    // and the vault keeps the credentials but no longer the sections.
    let run = vh.vault(["--json", "import", "aws", "--undo"]);
    run.ok();
    assert_eq!(
        run.json()["undone"],
        serde_json::json!(["aws-default", "aws-dev"]),
        "{run}"
    );
    let back = std::fs::read_to_string(&creds_file).unwrap();
    assert!(
        back.contains(&format!("aws_secret_access_key = {s_default}")),
        "{back}"
    );
    let got = run_python(&vh, &python, script);
    assert_eq!(got["default"]["method"], "shared-credentials-file");
    assert_eq!(got["default"]["secret"], s_default.as_str());
    assert_eq!(got["dev"]["secret"], s_dev.as_str());
    let emitted = vh.vault(["--json", "emit", "list"]).ok().json();
    assert_eq!(emitted, serde_json::json!([]), "no binding is left");
    vh.vault(["rm", "aws-dev"]).ok();
    assert!(
        std::fs::read_to_string(&creds_file)
            .unwrap()
            .contains(s_dev.as_str()),
        "the file is the user's again"
    );
}
