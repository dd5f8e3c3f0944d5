//! EKS tokens (issue 21, docs/eks.md) through the real binaries: the
//! installed `kubectl` runs `vault eks token` as its exec plugin and
//! sends the token to a local HTTPS API server. That server checks the
//! token as EKS's authenticator has STS do it: the presigned
//! `GetCallerIdentity` URL's signature recomputed by botocore's own
//! `SigV4QueryAuth` for the cluster it serves (`x-k8s-aws-id`), its time
//! within 15 minutes, its STS the one configured; then STS (moto, with
//! authentication on) says whose key it is. Moto cannot check a presigned
//! URL itself (it reads only the `Authorization` header), hence botocore.
//! A token for another cluster, or with one changed byte, is refused;
//! temporary keys (an assumed role) carry their session token.
//!
//! Needs `VAULT_TEST_PYTHON` with botocore and `moto[server]` and a
//! `kubectl` (`.ci/run` has both and sets `VAULT_TEST_REQUIRE_MOTO=1` and
//! `VAULT_TEST_REQUIRE_KUBECTL=1`).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use vault_e2e::moto::{Moto, add_role, moto_python, vault_on_moto};
use vault_e2e::{MARK, Run, VaultHome, kube, run_command, spawn_with_port};

/// The API server: `GET /whoami` answers `{"arn": ...}` for a token STS
/// would take for cluster argv[4], else 401 with the reason on stderr.
/// argv: cert, key, STS URL, cluster, a JSON file of {key id: secret}
/// (read at each request: the test adds keys as they are minted).
const API_SERVER: &str = r#"
import base64, datetime, http.server, json, ssl, sys, urllib.parse
import botocore.session
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
cert, key, sts_url, cluster, secrets_file = sys.argv[1:6]
PREFIX = "k8s-aws-v1."

def who(token):
    if not token.startswith(PREFIX):
        return None, "not an EKS token"
    b = token[len(PREFIX):]
    url = base64.urlsafe_b64decode(b + "=" * (-len(b) % 4)).decode()
    p = urllib.parse.urlsplit(url)
    if f"{p.scheme}://{p.netloc}" != sts_url.rstrip("/"):
        return None, "signed for another STS: " + p.netloc
    q = dict(urllib.parse.parse_qsl(p.query, keep_blank_values=True))
    if q.get("Action") != "GetCallerIdentity" or q.get("Version") != "2011-06-15":
        return None, "not GetCallerIdentity"
    if "x-k8s-aws-id" not in q.get("X-Amz-SignedHeaders", "").split(";"):
        return None, "the cluster is not signed"
    akid, _, region, service, _ = q["X-Amz-Credential"].split("/")
    signed_at = datetime.datetime.strptime(q["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
    if abs(datetime.datetime.utcnow() - signed_at) > datetime.timedelta(minutes=15):
        return None, "signed too long ago"
    secret = json.load(open(secrets_file)).get(akid)
    if secret is None:
        return None, "unknown key"
    creds = Credentials(akid, secret, q.get("X-Amz-Security-Token"))
    req = AWSRequest(method="GET",
                     url=f"{p.scheme}://{p.netloc}{p.path}?Action=GetCallerIdentity&Version=2011-06-15",
                     headers={"x-k8s-aws-id": cluster})
    req.context["timestamp"] = q["X-Amz-Date"]
    auth = SigV4QueryAuth(creds, service, region, expires=int(q["X-Amz-Expires"]))
    auth._modify_request_before_signing(req)
    signature = auth.signature(auth.string_to_sign(req, auth.canonical_request(req)), req)
    if signature != q.get("X-Amz-Signature"):
        return None, "signature does not match"
    sts = botocore.session.get_session().create_client(
        "sts", endpoint_url=sts_url, region_name=region, aws_access_key_id=akid,
        aws_secret_access_key=secret, aws_session_token=q.get("X-Amz-Security-Token"))
    return sts.get_caller_identity()["Arn"], None

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        auth = self.headers.get("Authorization", "")
        arn, why = who(auth[len("Bearer "):]) if auth.startswith("Bearer ") else (None, "no token")
        if arn:
            code, body = 200, {"arn": arn}
        else:
            print("refused:", why, file=sys.stderr, flush=True)
            code, body = 401, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "message": "Unauthorized", "reason": "Unauthorized", "code": 401}
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a):
        pass

srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

/// The running API server; stopped on drop.
struct ApiServer {
    child: std::process::Child,
    url: String,
    ca: PathBuf,
    secrets: PathBuf,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ApiServer {
    fn start(python: &Path, dir: &Path, sts_url: &str, cluster: &str) -> Self {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (ca, key, secrets) = (
            dir.join("api-ca.pem"),
            dir.join("api-key.pem"),
            dir.join("api-secrets.json"),
        );
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        std::fs::write(&key, cert.key_pair.serialize_pem()).unwrap();
        std::fs::write(&secrets, "{}").unwrap();
        let mut cmd = std::process::Command::new(python);
        cmd.args(["-c", API_SERVER])
            .arg(&ca)
            .arg(&key)
            .args([sts_url, cluster])
            .arg(&secrets);
        let (child, port) = spawn_with_port(cmd);
        let url = format!("https://localhost:{port}");
        ApiServer {
            child,
            url,
            ca,
            secrets,
        }
    }

    /// Lets the server (standing in for STS) check signatures of `id`.
    fn knows(&self, id: &str, secret: &str) {
        let mut all: Value =
            serde_json::from_str(&std::fs::read_to_string(&self.secrets).unwrap()).unwrap();
        all[id] = Value::from(secret);
        std::fs::write(&self.secrets, all.to_string()).unwrap();
    }
}

/// What each test here starts from: moto with IAM user `dev` (whose key
/// the record `dev` holds) and the API server of cluster `demo`, which
/// knows that key.
struct World {
    kubectl: PathBuf,
    vh: VaultHome,
    moto: Moto,
    setup: Value,
    api: ApiServer,
}

impl World {
    /// `None` (after printing why) without python+moto or kubectl.
    fn start(test: &str) -> Option<World> {
        let python = moto_python(test)?;
        let kubectl = kube::kubectl(test)?;
        let vh = VaultHome::new();
        let moto = Moto::start(&python, vh.root());
        let setup = vault_on_moto(&vh, &python, &moto, "");
        let (id, key) = (
            setup["id"].as_str().unwrap(),
            setup["secret"].as_str().unwrap(),
        );
        vh.add_aws("dev", id, key, &[]);
        let api = ApiServer::start(&python, vh.root(), &moto.url, "demo");
        api.knows(id, key);
        Some(World {
            kubectl,
            vh,
            moto,
            setup,
            api,
        })
    }
}

/// A kubeconfig for the API server whose one user is `user`.
fn kubeconfig(vh: &VaultHome, api: &ApiServer, file: &str, user: &str) -> PathBuf {
    kube::kubeconfig(&vh.root().join(file), &api.url, &api.ca, user)
}

/// The `user:` of an exec entry running `vault eks token NAME --cluster C`.
fn exec_user(vault: &Path, name: &str, cluster: &str, version: &str) -> String {
    kube::exec_user(
        vault,
        &["eks", "token", name, "--cluster", cluster],
        version,
    )
}

fn whoami(vh: &VaultHome, kubectl: &Path, config: &Path) -> Run {
    kube::get_raw(vh, kubectl, config, "/whoami")
}

/// kubectl v1.22 and later take the v1 exec API.
fn takes_v1(vh: &VaultHome, kubectl: &Path) -> bool {
    let run = run_command(
        vh.command(kubectl, ["version", "--client", "-o", "json"]),
        None,
        Duration::from_secs(30),
    );
    let minor = run.json()["clientVersion"]["minor"]
        .as_str()
        .unwrap_or("0")
        .trim_end_matches('+')
        .parse::<u32>()
        .unwrap_or(0);
    minor >= 22
}

/// The presigned URL inside a token.
fn url_of(token: &str) -> String {
    let b = token.strip_prefix("k8s-aws-v1.").unwrap();
    String::from_utf8(URL_SAFE_NO_PAD.decode(b).unwrap()).unwrap()
}

#[test]
fn kubectl_reaches_an_eks_api_server_with_a_token_from_the_vault() {
    let Some(w) = World::start("eks") else {
        return;
    };
    let World {
        kubectl,
        vh,
        moto,
        setup,
        api,
        ..
    } = w;
    let (id, key) = (
        setup["id"].as_str().unwrap(),
        setup["secret"].as_str().unwrap(),
    );
    let vault = vh.vault_bin.clone();
    let exec_config = |file: &str, name: &str, cluster: &str, version: &str| {
        kubeconfig(&vh, &api, file, &exec_user(&vault, name, cluster, version))
    };
    // kubectl fails, saying `why`.
    let refused = |config: &Path, why: &str| {
        let run = whoami(&vh, &kubectl, config);
        assert_ne!(run.code, 0, "{run}");
        assert!(run.stderr.contains(why), "{run}");
    };

    // The ExecCredential, as `aws eks get-token` prints it.
    let run = vh.vault(["eks", "token", "dev", "--cluster", "demo"]);
    run.ok().never_prints(key);
    let cred = run.json();
    assert_eq!(cred["kind"], "ExecCredential");
    assert_eq!(
        cred["apiVersion"], "client.authentication.k8s.io/v1beta1",
        "{cred}"
    );
    let token = cred["status"]["token"].as_str().unwrap().to_owned();
    let url = url_of(&token);
    assert!(
        url.starts_with(&format!(
            "{}/?Action=GetCallerIdentity&Version=2011-06-15&",
            moto.url
        )),
        "{url}"
    );
    assert!(
        url.contains("X-Amz-SignedHeaders=host%3Bx-k8s-aws-id&"),
        "{url}"
    );
    assert!(url.contains(&format!("X-Amz-Credential={id}%2F")), "{url}");
    let expires = cred["status"]["expirationTimestamp"].as_str().unwrap();
    let left = vault_protocol::timefmt::Timestamp::parse(expires)
        .unwrap()
        .unix()
        - vault_protocol::timefmt::Timestamp::now().unix();
    assert!((13 * 60..=14 * 60).contains(&left), "{expires}: {left} s");

    // kubectl runs the plugin and gets in as IAM user dev.
    let config = exec_config("kube-beta", "dev", "demo", "v1beta1");
    let run = whoami(&vh, &kubectl, &config);
    run.ok();
    assert!(
        run.json()["arn"].as_str().unwrap().ends_with(":user/dev"),
        "{run}"
    );
    if takes_v1(&vh, &kubectl) {
        let config = exec_config("kube-v1", "dev", "demo", "v1");
        whoami(&vh, &kubectl, &config).ok().stdout_has(":user/dev");
    } else {
        eprintln!("note: this kubectl predates the v1 exec API; v1 not checked");
    }

    // A token for another cluster is no key to this one.
    let config = exec_config("kube-other", "dev", "other", "v1beta1");
    refused(&config, "Unauthorized");

    // The token as it is works as a static one; with one byte of its
    // signature changed, it does not.
    let config = kubeconfig(&vh, &api, "kube-static", &format!("    token: {token}\n"));
    whoami(&vh, &kubectl, &config).ok().stdout_has(":user/dev");
    let tampered = {
        let last = url.chars().last().unwrap();
        let other = if last == '0' { '1' } else { '0' };
        let changed = format!("{}{other}", &url[..url.len() - 1]);
        format!("k8s-aws-v1.{}", URL_SAFE_NO_PAD.encode(changed))
    };
    let config = kubeconfig(
        &vh,
        &api,
        "kube-tampered",
        &format!("    token: {tampered}\n"),
    );
    refused(&config, "Unauthorized");

    // Temporary keys (an assumed role, minted by vaultd from dev): the
    // session token is in the signed URL, and the role is who comes in.
    let role = setup["role"].as_str().unwrap();
    add_role(&vh, "deploy", "dev", role);
    let run = vh.vault([
        "eks",
        "token",
        "deploy",
        "--cluster",
        "demo",
        "--api-version",
        "v1",
    ]);
    run.ok();
    let cred = run.json();
    assert_eq!(cred["apiVersion"], "client.authentication.k8s.io/v1");
    let url = url_of(cred["status"]["token"].as_str().unwrap());
    assert!(
        url.contains("X-Amz-Security-Token="),
        "a session token in {url}"
    );
    api.knows(
        &vh.field("deploy", "access_key_id"),
        &vh.field("deploy", "secret_access_key"),
    );
    let config = exec_config("kube-role", "deploy", "demo", "v1beta1");
    whoami(&vh, &kubectl, &config)
        .ok()
        .stdout_has("assumed-role/deploy");

    // Bad input: each says what to do.
    for (more, why) in [
        (["--cluster", "a/b"], "list-clusters"),
        (["--region", "EU/x"], "region"),
        (["--api-version", "v1alpha1"], "apiVersion"),
    ] {
        let mut args = vec!["eks", "token", "dev"];
        if more[0] != "--cluster" {
            args.extend(["--cluster", "demo"]);
        }
        args.extend(more);
        vh.vault(&args).code(2).stderr_has(why);
    }
    vh.vault_in(
        ["add", "gh", "--type", "token", "token=-"],
        format!("ghp_{MARK}").as_bytes(),
    )
    .ok();
    vh.vault(["eks", "token", "gh", "--cluster", "demo"])
        .code(2)
        .stderr_has("aws one");
    vh.vault(["eks", "token", "nope", "--cluster", "demo"])
        .code(4);
    // Locked, with no terminal to ask on: kubectl shows why.
    vh.vault(["lock"]).ok();
    let config = exec_config("kube-locked", "dev", "demo", "v1beta1");
    refused(&config, "locked");

    let log = std::fs::read_to_string(vh.paths().log()).unwrap_or_default();
    assert!(!log.contains(key), "a secret in vaultd.log");
    assert!(!log.contains(&token), "a token in vaultd.log");
}

/// `kubectl config view -o jsonpath=…` of `config`.
fn view(vh: &VaultHome, kubectl: &Path, config: &Path, jsonpath: &str) -> String {
    let mut cmd = vh.command(kubectl, ["config", "view", "--raw", "-o"]);
    cmd.arg(format!("jsonpath={jsonpath}"))
        .arg("--kubeconfig")
        .arg(config);
    let run = run_command(cmd, None, Duration::from_secs(30));
    run.ok();
    run.stdout.clone()
}

/// The state `vault emit list` gives binding `id`.
fn emit_state(vh: &VaultHome, id: &str) -> String {
    let list = vh.vault(["--json", "emit", "list"]).ok().json();
    let found = list.as_array().unwrap().iter().find(|e| e["id"] == id);
    found.unwrap()["state"].as_str().unwrap().to_owned()
}

#[test]
fn an_emitted_kube_user_serves_kubectl_beside_the_users_own_entries() {
    let Some(w) = World::start("emit kube") else {
        return;
    };
    let World {
        kubectl,
        vh,
        setup,
        api,
        ..
    } = w;
    let key = setup["secret"].as_str().unwrap();
    // The user's own file: a comment, a cluster, a context, a user.
    let config = vh.root().join("kube-own");
    kube::kubeconfig(&config, &api.url, &api.ca, "    token: the-users-own\n");
    let original = format!(
        "# my clusters\n{}",
        std::fs::read_to_string(&config).unwrap()
    );
    std::fs::write(&config, &original).unwrap();
    let path = config.to_str().unwrap();
    let emit = |more: &[&str]| {
        let mut args = vec!["--json", "emit", "kube", "dev", "--kubeconfig", path];
        args.extend_from_slice(more);
        vh.vault(&args)
    };

    // What it needs is asked for; a user vault did not write is not taken.
    emit(&[]).code(2).stderr_has("--cluster");
    emit(&["--cluster", "a/b"])
        .code(2)
        .stderr_has("cluster name");
    emit(&["--cluster", "demo", "--user", "me"])
        .code(5)
        .stderr_has("--force");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), original);

    // While kubectl holds its lock (it rewrites the file in place), the
    // vault waits, then says so and leaves the file alone.
    let kubectl_lock = vh.root().join("kube-own.lock");
    std::fs::write(&kubectl_lock, "").unwrap();
    emit(&["--cluster", "demo"])
        .code(1)
        .stderr_has("kube-own.lock exists");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), original);
    std::fs::remove_file(&kubectl_lock).unwrap();

    // Added after the user's entries, every byte of theirs kept, no secret.
    let run = emit(&["--cluster", "demo"]);
    run.ok();
    let info = run.json();
    assert_eq!(info["section"], "vault-dev", "{info}");
    assert_eq!(info["type"], "kube", "{info}");
    let emitter = info["id"].as_str().unwrap().to_owned();
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.starts_with(&original), "{text}");
    assert!(!text.contains(key), "a secret in the kubeconfig");
    assert_eq!(emit_state(&vh, &emitter), "ok");
    // Emitting again changes nothing.
    emit(&["--cluster", "demo"]).ok();
    assert_eq!(std::fs::read_to_string(&config).unwrap(), text);
    assert!(
        !kubectl_lock.exists(),
        "the vault left kubectl's lock behind"
    );

    // kubectl itself points the context at it (rewriting the whole file
    // its own way): the entry still reads as the vault's, and works.
    let mut cmd = vh.command(
        &kubectl,
        ["config", "set-context", "demo", "--user=vault-dev"],
    );
    cmd.arg("--kubeconfig").arg(&config);
    run_command(cmd, None, Duration::from_secs(30)).ok();
    assert_eq!(emit_state(&vh, &emitter), "ok");
    let run = whoami(&vh, &kubectl, &config);
    run.ok();
    assert!(
        run.json()["arn"].as_str().unwrap().ends_with(":user/dev"),
        "{run}"
    );
    assert_eq!(
        view(
            &vh,
            &kubectl,
            &config,
            "{.users[?(@.name==\"me\")].user.token}"
        ),
        "the-users-own"
    );

    // An edit of the vault's entry is drift, reported and repaired.
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("interactiveMode: Never"), "{text}");
    std::fs::write(
        &config,
        text.replace("interactiveMode: Never", "interactiveMode: Always"),
    )
    .unwrap();
    assert_eq!(emit_state(&vh, &emitter), "drifted");
    vh.vault(["emit", "repair"]).ok();
    assert_eq!(emit_state(&vh, &emitter), "ok");
    whoami(&vh, &kubectl, &config).ok().stdout_has(":user/dev");

    // Stopping takes out the vault's user only.
    vh.vault(["emit", "rm", &emitter]).ok();
    assert_eq!(view(&vh, &kubectl, &config, "{.users[*].name}"), "me");
    assert_eq!(view(&vh, &kubectl, &config, "{.clusters[*].name}"), "demo");
}
