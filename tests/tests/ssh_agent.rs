//! The SSH agent (issue 25, docs/user-guide.md "SSH agent"), driven by the
//! real OpenSSH clients: `ssh-add -l`/`-L` list the vault's keys of every
//! type, real `ssh` logs in to a local `sshd` with each one, a locked vault
//! lists nothing and `ssh` fails fast, hostile bytes on the agent socket
//! never hurt the daemon, and another uid is refused.
//!
//! Needs `ssh`, `ssh-add`, `ssh-keygen` (openssh-client) and `sshd`
//! (openssh-server). Without them each test prints `SKIP` and how to get
//! them, unless `VAULT_TEST_REQUIRE_SSHD=1` (set by `.ci/run`) makes that a
//! failure. The `sshd` is our own: started here as the test user, on
//! 127.0.0.1 and a free high port, with its own host key and config in a
//! temp dir, and killed at the end; the package's service is not used.

// Helper fns of a test report failure by panicking.
#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vault_e2e::{Run, TempUser, VaultHome, run_command, which};

/// The OpenSSH programs the tests run.
struct Tools {
    ssh: PathBuf,
    ssh_add: PathBuf,
    ssh_keygen: PathBuf,
    sshd: PathBuf,
}

/// The tools, or `None` after printing how to get them; a failure when
/// `VAULT_TEST_REQUIRE_SSHD` is set.
fn tools(test: &str) -> Option<Tools> {
    let find = |name: &str| {
        which(name).or_else(|| {
            ["/usr/sbin", "/usr/bin", "/sbin"]
                .iter()
                .map(|d| Path::new(d).join(name))
                .find(|p| p.is_file())
        })
    };
    match (
        find("ssh"),
        find("ssh-add"),
        find("ssh-keygen"),
        find("sshd"),
    ) {
        (Some(ssh), Some(ssh_add), Some(ssh_keygen), Some(sshd)) => Some(Tools {
            ssh,
            ssh_add,
            ssh_keygen,
            sshd,
        }),
        _ => {
            let why = format!(
                "SKIP {test}: needs ssh, ssh-add, ssh-keygen and sshd (apt-get install \
                 openssh-client openssh-server; bash .ci/run installs them)"
            );
            assert!(
                std::env::var_os("VAULT_TEST_REQUIRE_SSHD").is_none_or(|v| v != "1"),
                "VAULT_TEST_REQUIRE_SSHD=1: {why}"
            );
            eprintln!("{why}");
            None
        }
    }
}

/// One key of the vault: its type, credential name and `.pub` line.
struct Key {
    kind: &'static str,
    name: String,
    /// `TYPE BASE64` of ssh-keygen's `.pub` file (without its comment).
    public: String,
}

/// ssh-keygen's arguments and the `ssh-add -l` type of each key type.
const KINDS: [(&str, &[&str], &str); 3] = [
    ("ed25519", &["-t", "ed25519"], "(ED25519)"),
    ("ecdsa", &["-t", "ecdsa", "-b", "256"], "(ECDSA)"),
    ("rsa", &["-t", "rsa", "-b", "3072"], "(RSA)"),
];

/// Makes a key of each type with `ssh-keygen` (in the vault's private
/// input dir) and adds it: `vault add NAME --type ssh private_key=@FILE`.
fn add_keys(vh: &VaultHome, t: &Tools) -> Vec<Key> {
    KINDS
        .iter()
        .map(|(kind, args, _)| {
            let file = vh.files.join(format!("id_{kind}"));
            let keygen = run_command(
                {
                    let mut c = vh.command(&t.ssh_keygen, *args);
                    c.args(["-q", "-N", "", "-C", "keygen-comment", "-f"])
                        .arg(&file);
                    c
                },
                None,
                vault_e2e::DEFAULT_TIMEOUT,
            );
            keygen.ok();
            let name = format!("{kind}-key");
            vh.vault([
                "add",
                &name,
                "--type",
                "ssh",
                &format!("private_key=@{}", file.display()),
            ])
            .ok();
            let line = std::fs::read_to_string(file.with_extension("pub")).unwrap();
            let public = line
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            Key { kind, name, public }
        })
        .collect()
}

/// The tools and a new vault holding a key of each type, or `None` (the
/// test skips) without the tools.
fn vault_with_keys(test: &str) -> Option<(Tools, VaultHome, Vec<Key>)> {
    let t = tools(test)?;
    let vh = VaultHome::new();
    vh.init();
    let keys = add_keys(&vh, &t);
    Some((t, vh, keys))
}

fn agent_socket(vh: &VaultHome) -> PathBuf {
    vh.paths().agent_socket()
}

/// `ssh-add ARGS` pointed at the vault's agent.
fn ssh_add(vh: &VaultHome, t: &Tools, args: &[&str]) -> Run {
    let mut cmd = vh.command(&t.ssh_add, args);
    cmd.env("SSH_AUTH_SOCK", agent_socket(vh));
    run_command(cmd, None, Duration::from_secs(30))
}

#[test]
fn ssh_add_lists_the_vaults_keys_of_every_type() {
    let Some((t, vh, keys)) = vault_with_keys("ssh_add_lists_the_vaults_keys_of_every_type") else {
        return;
    };

    // The line for shells names the socket; the other shells' too.
    let socket = agent_socket(&vh);
    let sh = vh.vault(["ssh-agent"]);
    sh.ok();
    assert_eq!(
        sh.stdout.trim(),
        format!("SSH_AUTH_SOCK={}; export SSH_AUTH_SOCK;", socket.display()),
        "{sh}"
    );
    let fish = vh.vault(["ssh-agent", "--fish"]);
    fish.ok()
        .stdout_has(&format!("set -gx SSH_AUTH_SOCK {};", socket.display()));
    let csh = vh.vault(["ssh-agent", "--csh"]);
    csh.ok()
        .stdout_has(&format!("setenv SSH_AUTH_SOCK {};", socket.display()));
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "agent socket mode"
    );
    let dir = std::fs::metadata(socket.parent().unwrap()).unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, 0o700, "runtime dir mode");

    let l = ssh_add(&vh, &t, &["-l"]);
    l.ok();
    for ((_, _, shown), key) in KINDS.iter().zip(&keys) {
        let line = l
            .stdout
            .lines()
            .find(|line| line.contains(&key.name))
            .unwrap_or_else(|| panic!("{} not listed:\n{l}", key.name));
        assert!(line.ends_with(shown), "{} is {shown}:\n{l}", key.kind);
    }
    assert_eq!(l.stdout.lines().count(), 3, "{l}");

    let big_l = ssh_add(&vh, &t, &["-L"]);
    big_l.ok();
    for key in &keys {
        let want = format!("{} {}", key.public, key.name);
        assert!(
            big_l.stdout.lines().any(|line| line == want),
            "ssh-add -L must show {want}:\n{big_l}"
        );
    }
    big_l.never_prints("PRIVATE KEY");

    // ssh-add of a key the vault already holds stores nothing twice.
    let again = ssh_add(&vh, &t, &[vh.files.join("id_ed25519").to_str().unwrap()]);
    again.ok();
    assert_eq!(ssh_add(&vh, &t, &["-l"]).stdout.lines().count(), 3);

    // vault exec --ssh-agent hands the socket to the child.
    let exec = vh.vault([
        "exec",
        "--ssh-agent",
        "--",
        t.ssh_add.to_str().unwrap(),
        "-l",
    ]);
    exec.ok().stdout_has(&keys[0].name);
    let env = vh.vault([
        "exec",
        "--ssh-agent",
        "--",
        "/bin/sh",
        "-c",
        "echo $SSH_AUTH_SOCK",
    ]);
    assert_eq!(env.stdout.trim(), socket.to_str().unwrap(), "{env}");
}

/// Our own sshd on 127.0.0.1, killed on drop.
struct Sshd {
    child: Child,
    port: u16,
    authorized_keys: PathBuf,
    log: PathBuf,
}

impl Sshd {
    fn start(vh: &VaultHome, t: &Tools) -> Self {
        let dir = vh.root().join("sshd");
        std::fs::create_dir(&dir).unwrap();
        let host_key = dir.join("host_ed25519");
        run_command(
            {
                let mut c = Command::new(&t.ssh_keygen);
                c.args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(&host_key);
                c
            },
            None,
            vault_e2e::DEFAULT_TIMEOUT,
        )
        .ok();
        let authorized_keys = dir.join("authorized_keys");
        std::fs::write(&authorized_keys, "").unwrap();
        // sshd running as root re-execs with privilege separation and
        // needs this directory, which only the package's service makes.
        if vault_e2e::my_uid() == 0 {
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\nPort {port}\nHostKey {}\nAuthorizedKeysFile {}\n\
                 StrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\nPidFile none\nLogLevel VERBOSE\n",
                host_key.display(),
                authorized_keys.display()
            ),
        )
        .unwrap();
        let log = dir.join("sshd.log");
        let child = Command::new(&t.sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut sshd = Self {
            child,
            port,
            authorized_keys,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = sshd.child.try_wait() {
                panic!("sshd exited ({status}):\n{}", sshd.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not listen:\n{}",
                sshd.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sshd
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Only `public` may log in.
    fn authorize(&self, public: &str) {
        std::fs::write(&self.authorized_keys, format!("{public}\n")).unwrap();
    }

    /// `ssh USER@127.0.0.1 echo ok` with only the agent at `agent` (or
    /// none) to authenticate with.
    fn ssh(&self, vh: &VaultHome, t: &Tools, agent: Option<&Path>) -> Run {
        let user = run_command(
            {
                let mut c = Command::new("id");
                c.arg("-un");
                c
            },
            None,
            vault_e2e::DEFAULT_TIMEOUT,
        );
        let mut cmd = vh.command(
            &t.ssh,
            [
                "-F",
                "/dev/null",
                "-o",
                "IdentitiesOnly=no",
                "-o",
                "PasswordAuthentication=no",
                "-o",
                "KbdInteractiveAuthentication=no",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=10",
                "-p",
                &self.port.to_string(),
                "-l",
                user.stdout.trim(),
                "127.0.0.1",
                "echo",
                "ok",
            ],
        );
        if let Some(agent) = agent {
            cmd.env("SSH_AUTH_SOCK", agent);
        }
        run_command(cmd, None, Duration::from_secs(45))
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn real_ssh_logs_in_with_each_key_type_through_the_agent() {
    let Some((t, vh, keys)) =
        vault_with_keys("real_ssh_logs_in_with_each_key_type_through_the_agent")
    else {
        return;
    };
    let sshd = Sshd::start(&vh, &t);
    let socket = agent_socket(&vh);
    for key in &keys {
        sshd.authorize(&key.public);
        let run = sshd.ssh(&vh, &t, Some(&socket));
        assert!(
            run.code == 0 && run.stdout.trim() == "ok",
            "ssh with the vault's {} key:\n{run}\n--- sshd ---\n{}",
            key.kind,
            sshd.log_text()
        );
    }
    // The key came from the agent: without it the same login fails.
    let without = sshd.ssh(&vh, &t, None);
    assert_ne!(without.code, 0, "logged in without the agent:\n{without}");

    // Locked: ssh gets no identity from us and gives up at once, no hang.
    vh.vault(["lock"]).ok();
    let started = Instant::now();
    let locked = sshd.ssh(&vh, &t, Some(&socket));
    assert_ne!(locked.code, 0, "logged in with a locked vault:\n{locked}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "ssh took {:?} against a locked vault:\n{locked}",
        started.elapsed()
    );
    locked.stderr_has("Permission denied");
}

#[test]
fn a_locked_vault_lists_no_identities_and_answers_at_once() {
    let Some((t, vh, _)) =
        vault_with_keys("a_locked_vault_lists_no_identities_and_answers_at_once")
    else {
        return;
    };
    vh.vault(["lock"]).ok();
    let started = Instant::now();
    let l = ssh_add(&vh, &t, &["-l"]);
    assert_eq!(l.code, 1, "{l}");
    assert!(
        format!("{}{}", l.stdout, l.stderr).contains("no identities"),
        "{l}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "{l}");
    vh.unlock();
    assert_eq!(ssh_add(&vh, &t, &["-l"]).ok().stdout.lines().count(), 3);
}

/// Writes `bytes` and reads one agent message back: its type, or `None`
/// when the daemon closed the connection instead.
fn exchange(stream: &mut UnixStream, bytes: &[u8]) -> Option<u8> {
    if stream.write_all(bytes).is_err() {
        return None;
    }
    let mut header = [0u8; 4];
    match stream.read_exact(&mut header) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
            ) =>
        {
            return None;
        }
        Err(e) => panic!("the agent neither answered nor closed within 10 s: {e}"),
    }
    let len = u32::from_be_bytes(header) as usize;
    assert!((1..=256 * 1024).contains(&len), "answer length {len}");
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).unwrap();
    Some(body[0])
}

fn connect(vh: &VaultHome) -> UnixStream {
    let s = UnixStream::connect(agent_socket(vh)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn message(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn string(bytes: &[u8]) -> Vec<u8> {
    message(bytes)
}

const FAILURE: u8 = 5;
const IDENTITIES_ANSWER: u8 = 12;
const SIGN_RESPONSE: u8 = 14;

#[test]
fn hostile_agent_messages_get_a_failure_and_the_daemon_keeps_serving() {
    let Some((t, vh, keys)) =
        vault_with_keys("hostile_agent_messages_get_a_failure_and_the_daemon_keeps_serving")
    else {
        return;
    };
    let pid = vh.daemon_pid().expect("daemon running");
    let identities = message(&[11]);

    // Answered with a failure, and the connection still serves.
    let rsa = &keys[2];
    use base64::Engine as _;
    let rsa_blob = base64::engine::general_purpose::STANDARD
        .decode(rsa.public.split_whitespace().nth(1).unwrap())
        .unwrap();
    let sign = |flags: u32| {
        let mut body = vec![13];
        body.extend(string(&rsa_blob));
        body.extend(string(b"session data"));
        body.extend(flags.to_be_bytes());
        message(&body)
    };
    let mut s = connect(&vh);
    for (what, bytes) in [
        ("unknown type", message(&[200, 1, 2, 3])),
        ("truncated sign request", message(&[13, 0, 0, 0, 9, 1])),
        (
            "string past the end",
            message(&[13, 0xff, 0xff, 0xff, 0xff]),
        ),
        ("trailing bytes", message(&[11, 0])),
        ("ssh-rsa (SHA-1) signature", sign(0)),
        ("unknown key", {
            let mut body = vec![13];
            body.extend(string(b"no such key"));
            body.extend(string(b"data"));
            body.extend(2u32.to_be_bytes());
            message(&body)
        }),
        ("add identity, no key", message(&[17, 0, 0, 0, 0])),
        ("add identity, unknown key type", {
            let mut body = vec![17];
            body.extend(string(b"ssh-dss"));
            body.extend(string(&[1; 20]));
            message(&body)
        }),
        ("add identity, truncated ed25519", {
            let mut body = vec![17];
            body.extend(string(b"ssh-ed25519"));
            body.extend(string(&[1; 32]));
            body.extend(string(&[2; 10]));
            message(&body)
        }),
        ("remove all", message(&[19])),
        ("lock", message(&[22, 0, 0, 0, 1, b'x'])),
        ("extension", message(&[27, 0, 0, 0, 1, b'x'])),
    ] {
        assert_eq!(exchange(&mut s, &bytes), Some(FAILURE), "{what}");
        assert_eq!(
            exchange(&mut s, &identities),
            Some(IDENTITIES_ANSWER),
            "after {what}"
        );
    }
    assert_eq!(
        exchange(&mut s, &sign(2)),
        Some(SIGN_RESPONSE),
        "rsa-sha2-256"
    );
    assert_eq!(
        exchange(&mut s, &sign(4)),
        Some(SIGN_RESPONSE),
        "rsa-sha2-512"
    );

    // Lengths out of bounds close the connection (with or without a
    // failure first); nothing is allocated for them.
    for header in [0u32, 256 * 1024 + 1, u32::MAX] {
        let mut s = connect(&vh);
        let answer = exchange(&mut s, &header.to_be_bytes());
        assert!(
            answer.is_none() || answer == Some(FAILURE),
            "length {header}"
        );
        assert_eq!(exchange(&mut s, &identities), None, "closed after {header}");
    }
    // Noise, a half-sent message that stalls, a client that vanishes.
    let mut noise = connect(&vh);
    let _ = noise.write_all(&vault_e2e::random_bytes(4096));
    let mut stalled = connect(&vh);
    stalled.write_all(&[0, 0, 1, 0, 13]).unwrap();
    drop(connect(&vh));
    // Meanwhile everyone else is served, by the same daemon.
    let mut fresh = connect(&vh);
    assert_eq!(exchange(&mut fresh, &identities), Some(IDENTITIES_ANSWER));
    assert_eq!(ssh_add(&vh, &t, &["-l"]).ok().stdout.lines().count(), 3);
    // The stalled one is dropped after the message timeout.
    let started = Instant::now();
    let mut buf = [0u8; 16];
    stalled
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // A signal to this process (a child ending) interrupts the read:
    // read again.
    loop {
        match stalled.read(&mut buf) {
            Ok(_) => break,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("a stalled message was never dropped: {e}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(25));
    assert_eq!(vh.daemon_pid(), Some(pid), "the same daemon serves");
    vh.vault(["status"]).ok();
}

#[test]
fn another_uid_is_refused_by_the_agent() {
    let Some(t) = tools("another_uid_is_refused_by_the_agent") else {
        return;
    };
    let Some(user) = TempUser::create("another_uid_is_refused_by_the_agent") else {
        return;
    };
    // (a) A daemon of the other user with a key; root connects to its
    // agent socket (root passes the file permissions, so only the
    // daemon's peer-uid check refuses it).
    let other = VaultHome::new_as(user.uid, user.gid);
    other.init();
    let keys = add_keys(&other, &t);
    assert_eq!(keys.len(), 3);
    let socket = agent_socket(&other);
    let mut s = UnixStream::connect(&socket).expect("root can reach the socket file");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(
        exchange(&mut s, &message(&[11])),
        None,
        "the daemon of uid {} answered root",
        user.uid
    );
    let mut root_add = Command::new(&t.ssh_add);
    root_add.arg("-L").env("SSH_AUTH_SOCK", &socket);
    let run = run_command(root_add, None, Duration::from_secs(30));
    assert_ne!(run.code, 0, "root listed another user's keys:\n{run}");
    assert!(!run.stdout.contains("-key"), "{run}");
    // Its owner is still served.
    let own = ssh_add(&other, &t, &["-l"]);
    assert_eq!(own.ok().stdout.lines().count(), 3, "{own}");

    // (b) A root daemon's agent: the other user cannot even reach it.
    let root_vault = VaultHome::new();
    root_vault.init();
    let probe = other.command(&t.ssh_add, ["-l"]);
    let mut probe = probe;
    probe.env("SSH_AUTH_SOCK", agent_socket(&root_vault));
    let run = run_command(probe, None, Duration::from_secs(30));
    assert_ne!(run.code, 0, "uid {} used root's agent:\n{run}", user.uid);
}

/// `ssh-keygen ARGS -N '' -C COMMENT -f FILE` (a new key at `file`).
fn keygen(vh: &VaultHome, t: &Tools, args: &[&str], comment: &str, file: &Path) {
    let mut c = vh.command(&t.ssh_keygen, args);
    c.args(["-q", "-N", "", "-C", comment, "-f"]).arg(file);
    run_command(c, None, vault_e2e::DEFAULT_TIMEOUT).ok();
}

/// The `TYPE BASE64` of a `.pub` file.
fn public_of(file: &Path) -> String {
    let line = std::fs::read_to_string(file.with_extension("pub")).unwrap();
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Names in `vault list --json`.
fn names(vh: &VaultHome) -> Vec<String> {
    let list = vh.vault(["list", "--json"]);
    list.ok();
    let v: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    let records = v.as_array().or_else(|| v["records"].as_array()).unwrap();
    let mut out: Vec<String> = records
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

#[test]
fn ssh_add_stores_keys_in_the_vault_and_removal_changes_nothing() {
    let Some(t) = tools("ssh_add_stores_keys_in_the_vault_and_removal_changes_nothing") else {
        return;
    };
    let vh = VaultHome::new();
    vh.init();
    // A key with a comment is named after it; one without is sent with its
    // path as the comment and named after the file.
    let alice = vh.files.join("id_alice");
    keygen(&vh, &t, &["-t", "ed25519"], "alice@laptop", &alice);
    let plain = vh.files.join("id_rsa");
    keygen(&vh, &t, &["-t", "rsa", "-b", "3072"], "", &plain);
    for file in [&alice, &plain] {
        let add = ssh_add(&vh, &t, &[file.to_str().unwrap()]);
        add.ok().stderr_has("Identity added");
        add.never_prints("PRIVATE KEY");
    }
    assert_eq!(names(&vh), ["alice@laptop", "id_rsa"]);
    assert_eq!(
        vh.field("alice@laptop", "public_key")
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" "),
        public_of(&alice)
    );
    // The stored key is the file's key: the vault's copy signs in its stead
    // once the file is gone.
    let stored = vh.field("id_rsa", "private_key");
    assert!(stored.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    std::fs::remove_file(&alice).unwrap();
    std::fs::remove_file(&plain).unwrap();
    let l = ssh_add(&vh, &t, &["-L"]);
    l.ok();
    assert!(
        l.stdout.contains(&public_of(&vh.files.join("id_alice"))),
        "{l}"
    );

    // ssh-add twice stores once; a second key with the same comment gets
    // the next free name.
    let again = vh.files.join("id_again");
    keygen(
        &vh,
        &t,
        &["-t", "ecdsa", "-b", "256"],
        "alice@laptop",
        &again,
    );
    ssh_add(&vh, &t, &[again.to_str().unwrap()]).ok();
    ssh_add(&vh, &t, &[again.to_str().unwrap()]).ok();
    assert_eq!(names(&vh), ["alice@laptop", "alice@laptop-2", "id_rsa"]);

    // -c marks the key confirm=yes; -t makes it expire (and the agent
    // stops offering it then).
    let brief = vh.files.join("id_brief");
    keygen(&vh, &t, &["-t", "ed25519"], "brief", &brief);
    ssh_add(&vh, &t, &["-c", "-t", "3", brief.to_str().unwrap()]).ok();
    assert_eq!(vh.field("brief", "confirm"), "yes");
    let get = vh.vault(["get", "brief", "--json"]);
    get.ok();
    assert!(get.stdout.contains("expires_at"), "{get}");
    assert!(ssh_add(&vh, &t, &["-l"]).stdout.contains("brief"));
    std::thread::sleep(Duration::from_secs(5));
    let l = ssh_add(&vh, &t, &["-l"]);
    assert!(
        !l.stdout.contains("brief"),
        "offered after its lifetime:\n{l}"
    );
    assert_eq!(l.stdout.lines().count(), 3, "{l}");

    // Removal through the agent fails and deletes nothing: keys leave the
    // vault with `vault rm`.
    for args in [&["-D"][..], &["-d", brief.to_str().unwrap()][..]] {
        let rm = ssh_add(&vh, &t, args);
        assert_ne!(rm.code, 0, "ssh-add {args:?} must fail:\n{rm}");
    }
    assert_eq!(names(&vh).len(), 4);
    assert_eq!(ssh_add(&vh, &t, &["-l"]).stdout.lines().count(), 3);

    // A locked vault stores nothing.
    let late = vh.files.join("id_late");
    keygen(&vh, &t, &["-t", "ed25519"], "late", &late);
    vh.vault(["lock"]).ok();
    let refused = ssh_add(&vh, &t, &[late.to_str().unwrap()]);
    assert_ne!(refused.code, 0, "{refused}");
    vh.unlock();
    assert!(!names(&vh).contains(&"late".to_owned()));
    // An RSA key under 2048 bits is refused (ring signs with none).
    let weak = vh.files.join("id_weak");
    keygen(&vh, &t, &["-t", "rsa", "-b", "1024"], "weak", &weak);
    let refused = ssh_add(&vh, &t, &[weak.to_str().unwrap()]);
    assert_ne!(refused.code, 0, "{refused}");
    assert!(!names(&vh).contains(&"weak".to_owned()));
}

/// `ssh-keygen -Y sign` of `data` with the public key `pub_file` through
/// the agent at `agent`: the signature file, or the failed run.
fn sign_file(
    vh: &VaultHome,
    t: &Tools,
    agent: &Path,
    pub_file: &Path,
    data: &Path,
) -> Result<String, Run> {
    // ssh-keygen appends `.sig` to the file name.
    let sig = PathBuf::from(format!("{}.sig", data.display()));
    let _ = std::fs::remove_file(&sig);
    let mut c = vh.command(&t.ssh_keygen, ["-Y", "sign", "-n", "file", "-f"]);
    c.arg(pub_file).arg(data).env("SSH_AUTH_SOCK", agent);
    let run = run_command(c, None, Duration::from_secs(90));
    if run.code == 0 {
        Ok(std::fs::read_to_string(&sig).unwrap())
    } else {
        Err(run)
    }
}

#[test]
fn a_key_marked_confirm_asks_ssh_askpass_before_each_signature() {
    let Some(t) = tools("a_key_marked_confirm_asks_ssh_askpass_before_each_signature") else {
        return;
    };
    let mut vh = VaultHome::new();
    // The askpass the daemon runs: logs what it was asked, answers with the
    // exit status in `answer`.
    let askpass = vh.root().join("askpass");
    let log = vh.root().join("askpass.log");
    let answer = vh.root().join("answer");
    std::fs::write(
        &askpass,
        format!(
            "#!/bin/sh\nprintf '%s|%s\\n' \"$SSH_ASKPASS_PROMPT\" \"$1\" >> '{}'\nexit $(cat '{}')\n",
            log.display(),
            answer.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755)).unwrap();
    vh.env
        .insert("SSH_ASKPASS".into(), askpass.display().to_string());
    vh.init();
    let guarded = vh.files.join("id_guarded");
    keygen(&vh, &t, &["-t", "ed25519"], "c", &guarded);
    let open = vh.files.join("id_open");
    keygen(&vh, &t, &["-t", "ed25519"], "c", &open);
    for (name, file, extra) in [
        ("guarded", &guarded, Some("confirm=yes")),
        ("open", &open, None),
    ] {
        let key = format!("private_key=@{}", file.display());
        let mut args = vec!["add", name, "--type", "ssh", key.as_str()];
        args.extend(extra);
        vh.vault(args).ok();
        std::fs::remove_file(file).unwrap();
    }
    let agent = agent_socket(&vh);
    let data = vh.root().join("data.txt");
    std::fs::write(&data, "to be signed\n").unwrap();
    let asked = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("confirm|")
            .count()
    };

    // Yes: signed, after one question naming the key and its fingerprint.
    std::fs::write(&answer, "0").unwrap();
    let sig = sign_file(&vh, &t, &agent, &guarded.with_extension("pub"), &data)
        .unwrap_or_else(|run| panic!("confirmed signature failed:\n{run}"));
    assert_eq!(asked(), 1);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("Allow use of key guarded?"), "{text}");
    let fp = {
        let mut c = vh.command(&t.ssh_keygen, ["-l", "-f"]);
        c.arg(guarded.with_extension("pub"));
        let run = run_command(c, None, vault_e2e::DEFAULT_TIMEOUT);
        run.ok();
        run.stdout.split_whitespace().nth(1).unwrap().to_owned()
    };
    assert!(text.contains(&fp), "fingerprint {fp} in {text}");
    // The signature is good: ssh-keygen verifies it.
    let signers = vh.root().join("allowed_signers");
    std::fs::write(&signers, format!("me@example {}\n", public_of(&guarded))).unwrap();
    std::fs::write(data.with_extension("sig"), &sig).unwrap();
    let mut verify = vh.command(
        &t.ssh_keygen,
        ["-Y", "verify", "-n", "file", "-I", "me@example", "-f"],
    );
    verify
        .arg(&signers)
        .arg("-s")
        .arg(data.with_extension("sig"));
    let run = run_command(verify, Some(b"to be signed\n"), vault_e2e::DEFAULT_TIMEOUT);
    run.ok().stdout_has("Good \"file\" signature");

    // No: refused, and asked again (every signature asks).
    std::fs::write(&answer, "1").unwrap();
    let refused = sign_file(&vh, &t, &agent, &guarded.with_extension("pub"), &data);
    assert!(refused.is_err(), "signed although the user said no");
    assert_eq!(asked(), 2);

    // A key without `confirm` signs without asking.
    sign_file(&vh, &t, &agent, &open.with_extension("pub"), &data)
        .unwrap_or_else(|run| panic!("{run}"));
    assert_eq!(asked(), 2);
}

#[test]
fn git_signs_and_verifies_commits_through_the_agent() {
    let Some((_, vh, keys)) = vault_with_keys("git_signs_and_verifies_commits_through_the_agent")
    else {
        return;
    };
    let Some(git) = which("git") else {
        let why = "SKIP git_signs_and_verifies_commits_through_the_agent: needs git \
                   (apt-get install git; bash .ci/run installs it)";
        assert!(
            std::env::var_os("VAULT_TEST_REQUIRE_SSHD").is_none_or(|v| v != "1"),
            "{why}"
        );
        eprintln!("{why}");
        return;
    };
    let agent = agent_socket(&vh);
    let repo = vh.root().join("repo");
    std::fs::create_dir(&repo).unwrap();
    let signers = vh.root().join("allowed_signers");
    let git_run = |args: &[&str]| {
        let mut c = vh.command(&git, args);
        c.current_dir(&repo).env("SSH_AUTH_SOCK", &agent);
        run_command(c, None, Duration::from_secs(60))
    };
    git_run(&["init", "-q"]).ok();
    git_run(&["config", "user.name", "Vault Test"]).ok();
    git_run(&["config", "user.email", "me@example.com"]).ok();
    git_run(&["config", "gpg.format", "ssh"]).ok();
    git_run(&[
        "config",
        "gpg.ssh.allowedSignersFile",
        signers.to_str().unwrap(),
    ])
    .ok();
    // ed25519 and rsa (git asks for rsa-sha2-512); the key file is not on
    // disk: `user.signingkey` is the public key itself.
    for key in [&keys[0], &keys[2]] {
        let _ = std::fs::remove_file(vh.files.join(format!("id_{}", key.kind)));
        std::fs::write(&signers, format!("me@example.com {}\n", key.public)).unwrap();
        git_run(&["config", "user.signingkey", &format!("key::{}", key.public)]).ok();
        let commit = git_run(&[
            "commit",
            "-q",
            "-S",
            "--allow-empty",
            "-m",
            &format!("signed with {}", key.kind),
        ]);
        commit.ok();
        let verify = git_run(&["verify-commit", "HEAD"]);
        verify.ok();
        assert!(
            format!("{}{}", verify.stdout, verify.stderr).contains("Good \"git\" signature"),
            "{} commit:\n{verify}",
            key.kind
        );
        let show = git_run(&["log", "-1", "--format=%G?"]);
        assert_eq!(show.stdout.trim(), "G", "{show}");
    }
    // Locked: the commit cannot be signed, and says so.
    vh.vault(["lock"]).ok();
    let locked = git_run(&["commit", "-q", "-S", "--allow-empty", "-m", "locked"]);
    assert_ne!(locked.code, 0, "signed with a locked vault:\n{locked}");
}

/// A remote end of `ssh -A` (or a leaky tool) holding every agent
/// connection open and idle does not lock the user out: the one idle
/// longest is closed for a new one.
#[test]
fn idle_connections_cannot_lock_the_user_out_of_the_agent() {
    let Some((t, vh, _)) =
        vault_with_keys("idle_connections_cannot_lock_the_user_out_of_the_agent")
    else {
        return;
    };
    let idle: Vec<UnixStream> = (0..64).map(|_| connect(&vh)).collect();
    // Each is served (so each holds a slot) and then sits idle.
    let mut first = idle;
    for s in &mut first {
        assert_eq!(exchange(s, &message(&[11])), Some(IDENTITIES_ANSWER));
    }
    let started = Instant::now();
    let l = ssh_add(&vh, &t, &["-l"]);
    assert_eq!(l.ok().stdout.lines().count(), 3, "{l}");
    assert!(started.elapsed() < Duration::from_secs(5), "{l}");
    // An idle one was closed to make room, the one idle longest by the
    // daemon's clock: that is when its task went back to waiting after
    // its answer, which under load (a worker thread preempted right after
    // writing) can come after the next connections' (seen in CI: the
    // second one closed). So: some idle one, never the newest.
    let closed = first
        .iter_mut()
        .map(|s| exchange(s, &message(&[11])))
        .filter(Option::is_none)
        .count();
    assert!(closed >= 1, "no idle connection was closed for ssh-add");
    assert!(closed < first.len(), "every idle connection was closed");
}
