//! The docker emitters read by a real registry client (issue 4): skopeo
//! pushes to and inspects a real `docker-registry` with htpasswd auth on
//! 127.0.0.1, first with the login vault wrote into `auths`, then through
//! `credHelpers` and `docker-credential-vault`; an expired credential is
//! refused by the helper with a message skopeo shows. Needs `skopeo`,
//! `docker-registry` and `htpasswd` (Debian: skopeo docker-registry
//! apache2-utils, installed by `bash .ci/run`); without them the test prints
//! `SKIP …` and passes, unless `VAULT_TEST_REQUIRE_REGISTRY=1` (set by
//! `.ci/run`) makes that a failure.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vault_e2e::{MARK, Run, VaultHome, base64, run_command, secret, which};

struct Tools {
    skopeo: PathBuf,
    registry: PathBuf,
    htpasswd: PathBuf,
}

fn tools(test: &str) -> Option<Tools> {
    let found = (which("skopeo"), which("docker-registry"), which("htpasswd"));
    if let (Some(skopeo), Some(registry), Some(htpasswd)) = found {
        return Some(Tools {
            skopeo,
            registry,
            htpasswd,
        });
    }
    let why = format!(
        "SKIP {test}: needs skopeo, docker-registry and htpasswd \
         (apt install skopeo docker-registry apache2-utils; bash .ci/run installs them)"
    );
    assert!(
        std::env::var_os("VAULT_TEST_REQUIRE_REGISTRY").is_none(),
        "{why}"
    );
    eprintln!("{why}");
    None
}

/// A `docker-registry` on a free loopback port, killed when dropped.
struct Registry {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry(t: &Tools, dir: &Path, user: &str, password: &str) -> Registry {
    let htpasswd = dir.join("htpasswd");
    let run = run_command(
        {
            let mut c = Command::new(&t.htpasswd);
            // -i: the password from stdin, never in argv.
            c.args(["-iBn", user]);
            c
        },
        Some(format!("{password}\n").as_bytes()),
        Duration::from_secs(30),
    );
    run.ok();
    fs::write(&htpasswd, &run.stdout).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let config = dir.join("registry.yml");
    fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n  secret: vault-test-not-a-secret\n\
             auth:\n  htpasswd:\n    realm: vault-test\n    path: {}\n",
            dir.join("data").display(),
            htpasswd.display()
        ),
    )
    .unwrap();
    let log = dir.join("registry.log");
    let child = Command::new(&t.registry)
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log).unwrap())
        .stderr(fs::File::create(dir.join("registry.err")).unwrap())
        .spawn()
        .unwrap();
    let reg = Registry { child, addr, log };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(&reg.addr).is_err() {
        assert!(Instant::now() < deadline, "docker-registry did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    reg
}

fn sha256(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A one-layer OCI image layout (an empty tar as its layer), tagged `v1`.
fn oci_layout(dir: &Path) -> PathBuf {
    let layout = dir.join("image");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| -> (String, usize) {
        let digest = sha256(data);
        fs::write(blobs.join(&digest["sha256:".len()..]), data).unwrap();
        (digest, data.len())
    };
    let layer = vec![0u8; 1024];
    let (layer_digest, layer_size) = put(&layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = put(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest, "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest, "size": layer_size,
        }],
    });
    let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "v1"},
        }],
    });
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    layout
}

/// docker-credential-vault on PATH, as the install links it.
fn helper_on_path(vh: &mut VaultHome) {
    let links = vh.root().join("links");
    fs::create_dir_all(&links).unwrap();
    symlink(&vh.vault_bin, links.join("docker-credential-vault")).unwrap();
    let path = format!(
        "{}:{}:/usr/local/bin:/usr/bin:/bin",
        links.display(),
        vh.vault_bin.parent().unwrap().display()
    );
    vh.env.insert("PATH".into(), path);
}

fn skopeo(vh: &VaultHome, t: &Tools, args: &[&str]) -> Run {
    let cmd = vh.command(&t.skopeo, args);
    run_command(cmd, None, Duration::from_secs(120))
}

#[test]
fn skopeo_reads_the_emitted_login_and_the_helper() {
    let Some(t) = tools("skopeo_reads_the_emitted_login_and_the_helper") else {
        return;
    };
    let mut vh = VaultHome::new();
    vh.init();
    let dir = vh.root().join("registry");
    fs::create_dir_all(&dir).unwrap();
    let password = secret("registry");
    let reg = start_registry(&t, &dir, "alice", &password);
    let layout = oci_layout(&dir);

    helper_on_path(&mut vh);

    vh.add_registry("reg", &reg.addr, "alice", &password);
    let src = format!("oci:{}:v1", layout.display());
    let dest = format!("docker://{}/demo:v1", reg.addr);
    let push = ["copy", "--dest-tls-verify=false", &src, &dest];
    let inspect = ["inspect", "--tls-verify=false", &dest];

    // Nothing emitted yet: the registry refuses the push.
    let run = skopeo(&vh, &t, &push);
    assert!(run.code != 0, "pushed without a login:\n{run}");
    assert!(
        run.stderr.contains("unauthorized") || run.stderr.contains("authentication required"),
        "{run}"
    );

    // `auths`: skopeo pushes and inspects with the login vault wrote.
    vh.vault(["emit", "docker", "reg"]).ok().never_prints(MARK);
    skopeo(&vh, &t, &push).ok();
    let run = skopeo(&vh, &t, &inspect);
    run.ok();
    let info: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert!(info["Digest"].as_str().unwrap().starts_with("sha256:"));

    // `credHelpers`: no login in the file; skopeo asks the helper.
    let list = vh.vault(["emit", "list", "--json"]).ok().json();
    let id = list[0]["id"].as_str().unwrap().to_owned();
    vh.vault(["emit", "rm", &id]).ok();
    skopeo(&vh, &t, &inspect).code(1);
    vh.vault(["emit", "docker", "reg", "--helper"]).ok();
    let config = fs::read_to_string(vh.user_home.join(".docker/config.json")).unwrap();
    assert!(!config.contains(MARK), "{config}");
    let run = skopeo(&vh, &t, &inspect);
    run.ok().never_prints(MARK);

    // Expired: the helper refuses, and skopeo shows why.
    vh.vault(["set", "reg", "--ttl", "1s"]).ok();
    std::thread::sleep(Duration::from_millis(1500));
    let run = skopeo(&vh, &t, &inspect);
    assert!(run.code != 0, "an expired login was used:\n{run}");
    assert!(run.stderr.contains("has expired"), "{run}");
    run.never_prints(MARK);

    let log = fs::read_to_string(&reg.log).unwrap_or_default();
    assert!(!log.contains(MARK), "the registry log has the password");
}

/// `vault check` logs in to the real docker-registry's `/v2/` (htpasswd:
/// a Basic challenge): the right password passes, a wrong one is refused
/// and shown as check-failed, and neither is printed.
#[test]
fn check_logs_in_to_the_registry() {
    let Some(t) = tools("check_logs_in_to_the_registry") else {
        return;
    };
    let vh = VaultHome::new();
    vh.init().ok();
    let password = secret("registry-password");
    let reg = start_registry(&t, vh.root(), "dev", &password);
    vh.add_registry("reg", &reg.addr, "dev", &password);
    vh.add_registry("reg-old", &reg.addr, "dev", &secret("old-password"));
    let run = vh.vault(["check", "reg", "reg-old"]);
    run.code(1).no_panic();
    assert!(
        !run.stdout.contains(MARK) && !run.stderr.contains(MARK),
        "{run}"
    );
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "reg\tregistry\tok\thttp://{} took the login for dev",
            reg.addr
        )
    );
    assert_eq!(
        lines[1],
        format!(
            "reg-old\tregistry\tfailed\thttp://{} refused the login for dev (HTTP 401)",
            reg.addr
        )
    );
    let listed = vh.vault(["list", "--json"]).json();
    let state = |n: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == n)
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(state("reg"), "ok");
    assert_eq!(state("reg-old"), "check-failed");
}

/// Issue 24: `vault import docker --adopt` turns the user's plaintext
/// `auths` login into `credHelpers`; skopeo still logs in (through
/// docker-credential-vault), no password is left in the file, the user's
/// other entries stay, and `--undo` puts the login back.
#[test]
fn an_adopted_login_moves_to_the_helper_and_back() {
    let Some(t) = tools("an_adopted_login_moves_to_the_helper_and_back") else {
        return;
    };
    let mut vh = VaultHome::new();
    vh.init();
    let dir = vh.root().join("registry");
    fs::create_dir_all(&dir).unwrap();
    let password = secret("adopt-registry");
    let reg = start_registry(&t, &dir, "bob", &password);
    helper_on_path(&mut vh);
    let layout = oci_layout(&dir);
    let dest = format!("docker://{}/demo:v1", reg.addr);
    let src = format!("oci:{}:v1", layout.display());
    let auth = base64(&format!("bob:{password}"));
    let docker = vh.user_home.join(".docker");
    fs::create_dir_all(&docker).unwrap();
    let file = docker.join("config.json");
    let original = format!(
        "{{\n  \"auths\": {{\n    \"{}\": {{\"auth\": \"{auth}\"}},\n    \"https://index.docker.io/v1/\": {{\"auth\": \"{}\"}}\n  }},\n  \"psFormat\": \"table\"\n}}\n",
        reg.addr,
        base64("hub:not-adopted")
    );
    fs::write(&file, &original).unwrap();
    skopeo(&vh, &t, &["copy", "--dest-tls-verify=false", &src, &dest]).ok();

    let run = vh.vault(["--json", "import", "docker", "--adopt"]);
    run.ok().never_prints(MARK);
    let name = reg.addr.replace(':', "-");
    assert_eq!(run.json()["adopted"], serde_json::json!([name]), "{run}");
    assert!(run.stderr.contains("is a URL, not a host"), "{run}");
    let now = fs::read_to_string(&file).unwrap();
    assert!(
        !now.contains(&auth),
        "the adopted login is still in the file:\n{now}"
    );
    let config: serde_json::Value = serde_json::from_str(&now).unwrap();
    assert_eq!(config["credHelpers"][&reg.addr], "vault", "{now}");
    assert!(
        config["auths"]["https://index.docker.io/v1/"]["auth"].is_string(),
        "{now}"
    );
    assert_eq!(config["psFormat"], "table");
    let backup = run.json()["backup"].as_str().unwrap().to_owned();
    assert_eq!(fs::read_to_string(&backup).unwrap(), original);
    skopeo(&vh, &t, &["inspect", "--tls-verify=false", &dest])
        .ok()
        .never_prints(MARK);

    vh.vault(["import", "docker", "--undo"]).ok();
    let back: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
    assert!(
        back.get("credHelpers")
            .is_none_or(|h| h.get(&reg.addr).is_none()),
        "{back}"
    );
    assert!(back["auths"][&reg.addr]["auth"].is_string(), "{back}");
    assert_eq!(
        vh.vault(["--json", "emit", "list"]).ok().json(),
        serde_json::json!([])
    );
    skopeo(&vh, &t, &["inspect", "--tls-verify=false", &dest]).ok();
}
