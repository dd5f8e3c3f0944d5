//! moto's server for the tests that talk to AWS (STS, IAM): on 127.0.0.1
//! with authentication on (`INITIAL_NO_AUTH_ACTION_COUNT`), so every call
//! the daemon signs is checked.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{VaultHome, run_command};

/// The Python with botocore and moto, or `None` after saying how to get it.
pub fn moto_python(test: &str) -> Option<PathBuf> {
    let required = std::env::var_os("VAULT_TEST_REQUIRE_MOTO").is_some();
    let python = std::env::var_os("VAULT_TEST_PYTHON").map(PathBuf::from);
    let ok = python.as_ref().is_some_and(|p| {
        Command::new(p)
            .args(["-c", "import botocore.session, moto.server"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if ok {
        return python;
    }
    let why = format!(
        "SKIP {test}: set VAULT_TEST_PYTHON to a Python with botocore and moto[server] \
         (pip install botocore 'moto[server]'; bash .ci/run makes one)"
    );
    assert!(!required, "{why} (VAULT_TEST_REQUIRE_MOTO is set)");
    eprintln!("{why}");
    None
}

/// moto's server, killed on drop; its log counts the requests, its
/// recording (`moto.rec`, JSON lines) holds them.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    log: PathBuf,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts one on a free port, its files in `dir`.
    pub fn start(python: &Path, dir: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.join("moto.log");
        let child = Command::new(python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            // The first five calls (the IAM setup below) need no signature;
            // every later one is checked.
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "5")
            // Every request's headers and body, for what STS was sent.
            .env("MOTO_ENABLE_RECORDING", "1")
            .env("MOTO_RECORDER_FILEPATH", dir.join("moto.rec"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("moto.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let moto = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// STS calls served so far (werkzeug logs one line per request; every
    /// STS and IAM call is a POST to `/`).
    pub fn posts(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"POST / HTTP"))
            .count()
    }
}

/// A new vault under `vh` whose STS is `moto` (`[refresh] sts_endpoint`
/// in config.toml, plus `extra` lines), and IAM user `dev` made there
/// ([`SETUP`]'s answer: `id`, `secret`, `role`).
pub fn vault_on_moto(vh: &VaultHome, python: &Path, moto: &Moto, extra: &str) -> serde_json::Value {
    vh.write_config(&format!(
        "[refresh]\nsts_endpoint = \"{}\"\n{extra}",
        moto.url
    ));
    vh.init().ok();
    python_json(vh, python, SETUP, &[&moto.url])
}

/// Adds aws credential `name` minted by vaultd from `source` with
/// AssumeRole of `role` (an ARN).
pub fn add_role(vh: &VaultHome, name: &str, source: &str, role: &str) {
    vh.vault([
        "add",
        name,
        "--type",
        "aws",
        &format!("source={source}"),
        &format!("role_arn={role}"),
    ])
    .ok();
}

/// Runs a Python script with the moto URL as `argv[1]`; its JSON output.
pub fn python_json(
    vh: &VaultHome,
    python: &Path,
    script: &str,
    args: &[&str],
) -> serde_json::Value {
    let mut all = vec!["-c", script];
    all.extend_from_slice(args);
    let run = run_command(vh.command(python, all), None, Duration::from_secs(120));
    run.ok();
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {run}"))
}

/// A user with an access key and a role it may assume, both allowed
/// everything: five unauthenticated calls.
pub const SETUP: &str = r#"
import json, sys
import botocore.session
s = botocore.session.get_session()
kw = dict(endpoint_url=sys.argv[1], region_name="us-east-1",
          aws_access_key_id="setup", aws_secret_access_key="setup")
iam = s.create_client("iam", **kw)
allow = json.dumps({"Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
user = iam.create_user(UserName="dev")["User"]
key = iam.create_access_key(UserName="dev")["AccessKey"]
iam.put_user_policy(UserName="dev", PolicyName="all", PolicyDocument=allow)
trust = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
    "Principal": {"AWS": user["Arn"]}, "Action": "sts:AssumeRole"}]})
role = iam.create_role(RoleName="deploy", AssumeRolePolicyDocument=trust)["Role"]
iam.put_role_policy(RoleName="deploy", PolicyName="all", PolicyDocument=allow)
print(json.dumps({"id": key["AccessKeyId"], "secret": key["SecretAccessKey"], "role": role["Arn"]}))
"#;

/// `sts get-caller-identity` at moto (`argv[1]`) with the session
/// `credential_process` JSON in `argv[2]`: its ARN, checked by moto.
pub const WHOAMI: &str = r#"
import json, sys
import botocore.session
doc = json.loads(sys.argv[2])
sts = botocore.session.get_session().create_client(
    "sts", endpoint_url=sys.argv[1], region_name="us-east-1",
    aws_access_key_id=doc["AccessKeyId"], aws_secret_access_key=doc["SecretAccessKey"],
    aws_session_token=doc["SessionToken"])
print(json.dumps({"arn": sts.get_caller_identity()["Arn"]}))
"#;

/// Asserts that moto takes `printed` (credential_process JSON) as a
/// session of its role `role`: botocore's `GetCallerIdentity` with those
/// keys answers an `assumed-role/ROLE/` ARN.
pub fn assert_assumed_role(vh: &VaultHome, python: &Path, moto: &Moto, printed: &str, role: &str) {
    let who = python_json(vh, python, WHOAMI, &[&moto.url, printed.trim()]);
    assert!(
        who["arn"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!(":assumed-role/{role}/")),
        "{who}"
    );
}
