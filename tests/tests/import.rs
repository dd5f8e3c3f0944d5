//! `vault import aws|docker|env` (issue 3): credentials come in from the
//! files users have, the files stay untouched, `--dry-run` changes nothing,
//! existing names are skipped unless `--force`, bad files get a clear error.

#![allow(clippy::unwrap_used)]

use std::fs;

use vault_e2e::{MARK, VaultHome, base64, secret};

#[test]
fn aws_profiles_with_keys_come_in_and_the_file_is_untouched() {
    let vh = VaultHome::new();
    vh.init();
    let (s1, s2, token) = (
        secret("aws-default"),
        secret("aws-prod"),
        secret("aws-token"),
    );
    let aws = vh.user_home.join(".aws");
    fs::create_dir_all(&aws).unwrap();
    let credentials = format!(
        "# mine\n[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = {s1}\n\n\
         [prod]\naws_access_key_id=AKIAPROD\naws_secret_access_key={s2}\naws_session_token = {token}\n\
         s3 =\n    max_concurrent_requests = 20\n\n[sso-only]\nsso_start_url = https://example.awsapps.com/start\n"
    );
    fs::write(aws.join("credentials"), &credentials).unwrap();
    fs::write(
        aws.join("config"),
        "[default]\nregion = us-east-2\n[profile prod]\nregion = eu-west-3\n",
    )
    .unwrap();

    let run = vh.vault(["import", "aws", "--dry-run"]);
    run.ok().never_prints(MARK);
    assert!(
        run.stderr.contains("would add aws-default") && run.stderr.contains("would add aws-prod"),
        "{run}"
    );
    assert!(
        !run.stderr.contains("sso-only"),
        "a profile without keys is not imported:\n{run}"
    );
    assert!(
        vh.vault(["list", "--format", "json"]).names().is_empty(),
        "--dry-run changes nothing"
    );

    vh.vault(["import", "aws"]).ok().never_prints(MARK);
    assert_eq!(
        vh.vault(["list", "--format", "json"]).names(),
        ["aws-default", "aws-prod"]
    );
    assert_eq!(vh.field("aws-default", "secret_access_key"), s1);
    assert_eq!(vh.field("aws-default", "region"), "us-east-2");
    assert_eq!(vh.field("aws-prod", "session_token"), token);
    assert_eq!(vh.field("aws-prod", "region"), "eu-west-3");
    assert_eq!(
        fs::read_to_string(aws.join("credentials")).unwrap(),
        credentials,
        "the source is never changed"
    );

    // Again: already there, nothing changes. Other values: skipped. With
    // --force: a new revision, the old one kept.
    let run = vh.vault(["--json", "import", "aws"]);
    assert_eq!(run.ok().json()["unchanged"].as_array().unwrap().len(), 2);
    let s3 = secret("aws-default-rotated");
    fs::write(
        aws.join("credentials"),
        format!("[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = {s3}\n"),
    )
    .unwrap();
    let run = vh.vault(["--json", "import", "aws"]);
    assert_eq!(
        run.ok().json()["skipped"],
        serde_json::json!(["aws-default"])
    );
    let run = vh.vault(["--json", "import", "aws", "--force"]);
    assert_eq!(
        run.ok().json()["replaced"],
        serde_json::json!(["aws-default"])
    );
    assert_eq!(vh.field("aws-default", "secret_access_key"), s3);
    let history = vh.vault(["--json", "history", "aws-default"]);
    assert_eq!(history.ok().json().as_array().unwrap().len(), 2);
}

#[test]
fn docker_logins_and_dotenv_files_come_in() {
    let vh = VaultHome::new();
    vh.init();
    let pass = secret("docker");
    let auth = base64(&format!("$oauthtoken:{pass}"));
    let docker = vh.user_home.join(".docker");
    fs::create_dir_all(&docker).unwrap();
    fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths":{{"nvcr.io":{{"auth":"{auth}"}},"https://index.docker.io/v1/":{{}}}},"credsStore":"desktop"}}"#
        ),
    )
    .unwrap();
    let run = vh.vault(["import", "docker"]);
    run.ok().never_prints(MARK);
    assert!(
        run.stderr
            .contains("index.docker.io/v1/: its password is kept by desktop"),
        "{run}"
    );
    assert_eq!(vh.field("nvcr.io", "username"), "$oauthtoken");
    assert_eq!(vh.field("nvcr.io", "auth"), pass);
    assert_eq!(vh.field("nvcr.io", "registry"), "nvcr.io");

    let api = secret("env");
    let project = vh.user_home.join("myproj");
    fs::create_dir_all(&project).unwrap();
    fs::write(
        project.join(".env"),
        format!(
            "# settings\nexport API_KEY=\"{api}\"\nDEBUG=1 # inline comment\nEMPTY=\nQUOTED='a b'\n"
        ),
    )
    .unwrap();
    vh.vault(["import", "env", project.join(".env").to_str().unwrap()])
        .ok()
        .never_prints(MARK);
    assert_eq!(vh.field("myproj-env", "API_KEY"), api);
    assert_eq!(vh.field("myproj-env", "DEBUG"), "1");
    assert_eq!(vh.field("myproj-env", "QUOTED"), "a b");
}

#[test]
fn unparseable_files_get_a_clear_error_and_nothing_is_imported() {
    let vh = VaultHome::new();
    vh.init();
    let bad = vh.user_home.join("credentials");
    fs::write(
        &bad,
        "[default]\naws_access_key_id = AKIA\nthis line is broken\n",
    )
    .unwrap();
    let run = vh.vault(["import", "aws", bad.to_str().unwrap()]);
    run.code(1)
        .stderr_has("line 3")
        .stderr_has("nothing was imported");
    let bad_json = vh.user_home.join("config.json");
    fs::write(&bad_json, "{ not json").unwrap();
    vh.vault(["import", "docker", bad_json.to_str().unwrap()])
        .code(1)
        .stderr_has("is not valid JSON");
    vh.vault(["import", "env", "/nonexistent/.env"])
        .code(1)
        .stderr_has("cannot read /nonexistent/.env");
    assert!(vh.vault(["list", "--format", "json"]).names().is_empty());
}

/// Issue 24: `vault import env --adopt` turns each value of a `.env` file
/// into a reference, `vault exec --env-file` resolves them for the child,
/// and `--undo` writes the values back.
#[test]
fn an_adopted_dotenv_file_holds_references_that_exec_resolves() {
    let vh = VaultHome::new();
    vh.init();
    let api = secret("dotenv-adopt");
    let project = vh.user_home.join("app");
    fs::create_dir_all(&project).unwrap();
    // The project's .env is a link to the file the user keeps: that file
    // is the one rewritten.
    let env = project.join(".env");
    let kept = vh.user_home.join("app.env");
    let original = format!(
        "# app settings\nexport API_KEY=\"{api}\"\nDEBUG=1 # inline comment\nGREETING=\"hello world\" # quoted, then a comment\n"
    );
    fs::write(&kept, &original).unwrap();
    std::os::unix::fs::symlink(&kept, &env).unwrap();
    let env_arg = env.to_str().unwrap();

    let run = vh.vault(["--json", "import", "env", env_arg, "--adopt"]);
    run.ok().never_prints(MARK);
    assert_eq!(
        run.json()["adopted"],
        serde_json::json!(["app-env"]),
        "{run}"
    );
    let adopted = fs::read_to_string(&kept).unwrap();
    assert_eq!(
        adopted,
        "# app settings\nexport API_KEY=vault://app-env/API_KEY\nDEBUG=vault://app-env/DEBUG # inline comment\nGREETING=vault://app-env/GREETING # quoted, then a comment\n"
    );
    assert!(fs::symlink_metadata(&env).unwrap().file_type().is_symlink());
    let backup = run.json()["backup"].as_str().unwrap().to_owned();
    assert_eq!(fs::read_to_string(&backup).unwrap(), original);
    assert_eq!(vh.field("app-env", "GREETING"), "hello world");

    // The child gets the values; its piped output has the secret masked;
    // --env still wins, and a literal line passes as it is.
    let extra = project.join("extra.env");
    fs::write(&extra, "MODE=dev\n").unwrap();
    let script = "printf '%s|%s|%s|%s|%s' \"$API_KEY\" \"$DEBUG\" \"$GREETING\" \"$MODE\" \"$API_KEY\" >&2; printf '%s' \"$API_KEY\"";
    let run = vh.vault([
        "exec",
        "--env-file",
        env_arg,
        "--env-file",
        extra.to_str().unwrap(),
        "--env",
        "DEBUG=0",
        "--",
        "sh",
        "-c",
        script,
    ]);
    run.ok();
    assert_eq!(run.stdout, "<redacted:app-env>");
    assert_eq!(
        run.stderr,
        "<redacted:app-env>|0|<redacted:app-env>|dev|<redacted:app-env>"
    );
    let run = vh.vault([
        "exec",
        "--no-mask",
        "--env-file",
        env_arg,
        "--",
        "sh",
        "-c",
        "printf '%s' \"$API_KEY\"",
    ]);
    assert_eq!(run.ok().stdout, api);

    // A reference to a field the credential lacks: refused before the
    // command runs, the line named.
    fs::write(&extra, "X=vault://app-env/NOPE\n").unwrap();
    vh.vault(["exec", "--env-file", extra.to_str().unwrap(), "--", "true"])
        .code(2)
        .stderr_has("line 1: 'app-env' has no field NOPE");

    // Importing the adopted file again finds nothing new.
    let run = vh.vault(["--json", "import", "env", env_arg, "--adopt"]);
    assert_eq!(run.ok().json()["adopted"], serde_json::json!(null));
    assert_eq!(fs::read_to_string(&kept).unwrap(), adopted);

    vh.vault(["import", "env", env_arg, "--undo"])
        .ok()
        .never_prints(MARK);
    let back = fs::read_to_string(&kept).unwrap();
    assert_eq!(
        back,
        format!(
            "# app settings\nexport API_KEY={api}\nDEBUG=1 # inline comment\nGREETING='hello world' # quoted, then a comment\n"
        )
    );

    // A key set twice is imported, not adopted (one reference would stand
    // for two values).
    let twice = project.join("twice.env");
    fs::write(&twice, "A=1\nA=2\n").unwrap();
    let run = vh.vault([
        "import",
        "env",
        twice.to_str().unwrap(),
        "--name",
        "twice",
        "--adopt",
    ]);
    run.ok().stderr_has("A is set twice in the file (line 2)");
    assert_eq!(fs::read_to_string(&twice).unwrap(), "A=1\nA=2\n");
}
