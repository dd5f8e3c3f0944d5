//! AWS console sign-in (issue 21, docs/console.md) through the real
//! binaries: `vault console` against moto's STS (authentication on) and a
//! double of AWS's sign-in endpoint written from AWS's guide ("Enable
//! custom identity broker access to the AWS console"): `getSigninToken`
//! takes a session as JSON (`sessionId`, `sessionKey`, `sessionToken`) and
//! answers `{"SigninToken"}`; `SessionDuration` only with a role's
//! session; a `GetSessionToken` session (moto's, known by its token) is
//! refused; `login` with a known
//! token, the issuer and an https destination redirects there. The
//! double asks moto whose session each one is.
//!
//! Needs `VAULT_TEST_PYTHON` with botocore and `moto[server]` (`.ci/run`
//! makes one and sets `VAULT_TEST_REQUIRE_MOTO=1`).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use vault_e2e::moto::{Moto, add_role, moto_python, vault_on_moto};
use vault_e2e::{MARK, VaultHome, run_command, spawn_with_port};

/// The sign-in endpoint at `/federation`. argv: moto's URL, a file it
/// appends each session it is given to (JSON lines, without the secret).
const FEDERATION: &str = r#"
import http.server, json, secrets, sys, urllib.parse
import botocore.session
sts_url, log_file = sys.argv[1:3]
tokens = {}

def who(sid, key, tok):
    try:
        sts = botocore.session.get_session().create_client(
            "sts", endpoint_url=sts_url, region_name="us-east-1", aws_access_key_id=sid,
            aws_secret_access_key=key, aws_session_token=tok)
        return sts.get_caller_identity()["Arn"]
    except Exception:
        return None

class H(http.server.BaseHTTPRequestHandler):
    def answer(self, code, body, location=None):
        data = body.encode()
        self.send_response(code)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        u = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(u.query, keep_blank_values=True))
        if u.path != "/federation":
            return self.answer(404, "no such page")
        if q.get("Action") == "getSigninToken":
            try:
                s = json.loads(q["Session"])
                sid, key, tok = s["sessionId"], s["sessionKey"], s["sessionToken"]
            except Exception:
                return self.answer(400, "bad session")
            arn = who(sid, key, tok)
            role = arn is not None and ":assumed-role/" in arn
            entry = {"sessionId": sid, "sessionToken": tok, "duration": q.get("SessionDuration"),
                     "arn": arn}
            with open(log_file, "a") as f:
                f.write(json.dumps(entry) + "\n")
            if "SessionDuration" in q and not role:
                return self.answer(400, "SessionDuration is only for a role's session")
            # moto hands every GetSessionToken caller the same session
            # (its token starts so); AWS refuses such sessions here.
            if tok.startswith("AQoEXAMPLEH4"):
                return self.answer(400, "GetSessionToken credentials cannot sign in")
            t = secrets.token_urlsafe(32)
            tokens[t] = entry
            return self.answer(200, json.dumps({"SigninToken": t}))
        if q.get("Action") == "login":
            dest = q.get("Destination", "")
            if q.get("SigninToken") not in tokens or q.get("Issuer") != "vault" \
                    or not dest.startswith("https://"):
                return self.answer(400, "bad login")
            return self.answer(302, "", location=dest)
        return self.answer(400, "unknown action")

    def log_message(self, *a):
        pass

srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

/// Follows a sign-in URL (read from stdin) one hop: `{status, location}`.
const FOLLOW: &str = r#"
import http.client, json, sys, urllib.parse
u = urllib.parse.urlsplit(sys.stdin.read().strip())
c = http.client.HTTPConnection(u.netloc, timeout=10)
c.request("GET", u.path + "?" + u.query)
r = c.getresponse()
print(json.dumps({"status": r.status, "location": r.getheader("Location")}))
"#;

struct Federation {
    child: std::process::Child,
    url: String,
    log: std::path::PathBuf,
}

impl Drop for Federation {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Federation {
    fn start(python: &Path, dir: &Path, sts_url: &str) -> Self {
        let log = dir.join("federation.jsonl");
        let mut cmd = std::process::Command::new(python);
        cmd.args(["-c", FEDERATION, sts_url]).arg(&log);
        let (child, port) = spawn_with_port(cmd);
        Federation {
            child,
            url: format!("http://127.0.0.1:{port}/federation"),
            log,
        }
    }

    /// The last session it was given.
    fn last(&self) -> Value {
        let text = std::fs::read_to_string(&self.log).unwrap();
        serde_json::from_str(text.lines().last().unwrap()).unwrap()
    }
}

fn follow(vh: &VaultHome, python: &Path, url: &str) -> Value {
    let run = run_command(
        vh.command(python, ["-c", FOLLOW]),
        Some(url.as_bytes()),
        Duration::from_secs(30),
    );
    run.ok();
    run.json()
}

#[test]
fn console_sign_in_urls_from_long_term_keys_and_from_a_role() {
    let Some(python) = moto_python("console") else {
        return;
    };
    let vh = VaultHome::new();
    let moto = Moto::start(&python, vh.root());
    let mut fed = Federation::start(&python, vh.root(), &moto.url);
    let setup = vault_on_moto(
        &vh,
        &python,
        &moto,
        &format!("[console]\nfederation_endpoint = \"{}\"\n", fed.url),
    );
    let (id, key) = (
        setup["id"].as_str().unwrap(),
        setup["secret"].as_str().unwrap(),
    );
    vh.add_aws("dev", id, key, &[]);

    // Long-term keys: a federation session from STS first, no
    // SessionDuration; the URL logs in to the console's home.
    let run = vh.vault(["console", "dev"]);
    run.ok().never_prints(key);
    let url = run.stdout.trim().to_owned();
    let prefix = format!(
        "{}?Action=login&Issuer=vault&Destination=https%3A%2F%2Fconsole.aws.amazon.com%2F&SigninToken=",
        fed.url
    );
    assert!(url.starts_with(&prefix), "{url}");
    let session = fed.last();
    // What moto's GetFederationToken hands out: the session came from STS.
    assert_eq!(session["sessionId"], "AKIAIOSFODNN7EXAMPLE", "{session}");
    assert!(
        session["sessionToken"]
            .as_str()
            .unwrap()
            .starts_with("AQoDYXdzEPT")
    );
    assert!(session["duration"].is_null(), "{session}");
    let hop = follow(&vh, &python, &url);
    assert_eq!(hop["status"], 302, "{hop}");
    assert_eq!(hop["location"], "https://console.aws.amazon.com/");
    let json = vh.vault(["--json", "console", "dev"]).json();
    assert!(json["url"].as_str().unwrap().starts_with(&prefix), "{json}");
    assert!(json["expires_at"].as_str().is_some(), "{json}");

    // A role's keys (minted by vaultd from dev): used as they are, with
    // the session's length; the console opens in the region asked.
    let role = setup["role"].as_str().unwrap();
    add_role(&vh, "deploy", "dev", role);
    let run = vh.vault([
        "console",
        "deploy",
        "--region",
        "eu-west-1",
        "--duration",
        "2h",
    ]);
    run.ok();
    let session = fed.last();
    assert!(
        session["arn"]
            .as_str()
            .unwrap()
            .contains(":assumed-role/deploy/"),
        "{session}"
    );
    assert_eq!(session["duration"], "7200");
    assert_eq!(
        session["sessionId"],
        vh.field("deploy", "access_key_id").as_str()
    );
    let hop = follow(&vh, &python, run.stdout.trim());
    assert_eq!(
        hop["location"], "https://eu-west-1.console.aws.amazon.com/console/home?region=eu-west-1",
        "{hop}"
    );

    // A GetSessionToken session: the sign-in endpoint refuses it, and the
    // error says what to use instead.
    vh.vault(["add", "sess", "--type", "aws", "source=dev"])
        .ok();
    vh.vault(["console", "sess"])
        .code(1)
        .stderr_has("refused")
        .stderr_has("minted from");

    // Bad input.
    vh.vault(["console", "dev", "--duration", "5m"])
        .code(2)
        .stderr_has("15m to 12h");
    vh.vault([
        "console",
        "dev",
        "--destination",
        "http://console.aws.amazon.com/",
    ])
    .code(2)
    .stderr_has("https");
    vh.vault_in(
        ["add", "gh", "--type", "token", "token=-"],
        format!("ghp_{MARK}").as_bytes(),
    )
    .ok();
    vh.vault(["console", "gh"]).code(2).stderr_has("aws one");
    vh.vault(["console", "nope"]).code(4);

    // --open: the page goes to the opener by its path, never the URL on a
    // command line; it is private while it lives and gone afterwards.
    let bin = vh.root().join("fake-bin");
    std::fs::create_dir(&bin).unwrap();
    let seen = vh.root().join("opened");
    let opener = bin.join("xdg-open");
    std::fs::write(
        &opener,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" > {0}.argv\nstat -c %a \"$1\" > {0}.mode\ncat \"$1\" > {0}.page\n",
            seen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&opener, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut cmd = vh.command(&vh.vault_bin, ["console", "dev", "--open"]);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    cmd.env(
        "PATH",
        format!("{}:{path}", vh.vault_bin.parent().unwrap().display()),
    );
    let run = run_command(cmd, None, Duration::from_secs(60));
    run.ok().stderr_has("opened");
    assert!(!run.stdout.contains("SigninToken"), "{run}");
    let read = |ext: &str| std::fs::read_to_string(seen.with_extension(ext)).unwrap();
    let argv = read("argv");
    assert!(
        !argv.contains("SigninToken") && argv.trim().ends_with("aws-console.html"),
        "{argv}"
    );
    assert_eq!(read("mode").trim(), "600");
    let page = read("page");
    assert!(page.contains("http-equiv=\"refresh\""), "{page}");
    assert!(page.contains("Action=login&amp;Issuer=vault"), "{page}");
    assert!(!Path::new(argv.trim()).exists(), "the page is removed");

    // The sign-in endpoint down: a clear error, nothing else changes.
    let _ = fed.child.kill();
    let _ = fed.child.wait();
    vh.vault(["console", "dev"])
        .code(1)
        .stderr_has("cannot reach the AWS sign-in endpoint");

    let log = std::fs::read_to_string(vh.paths().log()).unwrap_or_default();
    assert!(!log.contains(key), "a secret in vaultd.log");
    assert!(
        !log.contains("SigninToken"),
        "a sign-in token in vaultd.log"
    );
}
