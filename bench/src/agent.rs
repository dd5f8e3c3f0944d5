//! SSH agent figures (issue 25): one signature through vaultd's agent
//! against OpenSSH's own `ssh-agent` holding the same key, in the same run.
//! What is timed is what a client does for one signature: connect to the
//! socket, send `SIGN_REQUEST`, read the answer, close. Per key type;
//! target: ours at most 1.5× theirs.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vault_protocol::paths::VaultPaths;

use super::{BenchResult, BenchVault, Row, Samples, ms, which};

/// The data signed: about what ssh signs for a login (session id, user,
/// service, key).
const DATA: [u8; 160] = [0x5a; 160];
/// `SSH_AGENT_RSA_SHA2_512`.
const RSA_SHA2_512: u32 = 4;

/// OpenSSH's agent on its own socket, killed on drop.
struct OpenSshAgent {
    child: Child,
    socket: PathBuf,
}

impl Drop for OpenSshAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn sign_request(blob: &[u8], flags: u32) -> Vec<u8> {
    let mut body = vec![13];
    body.extend(frame(blob));
    body.extend(frame(&DATA));
    body.extend(flags.to_be_bytes());
    frame(&body)
}

/// One signature: connect, ask, read the answer, close. The answer's type.
fn sign_once(socket: &Path, request: &[u8]) -> BenchResult<u8> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(request).map_err(|e| e.to_string())?;
    let mut header = [0u8; 4];
    s.read_exact(&mut header).map_err(|e| e.to_string())?;
    let len = u32::from_be_bytes(header) as usize;
    if !(1..=256 * 1024).contains(&len) {
        return Err(format!("agent answered a {len}-byte message"));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok(body[0])
}

/// `runs` signatures (after 10 untimed ones), each checked to be a
/// `SIGN_RESPONSE`.
fn time_signs(socket: &Path, request: &[u8], runs: usize) -> BenchResult<Samples> {
    let mut v = Vec::with_capacity(runs);
    for i in 0..runs + 10 {
        let started = Instant::now();
        let kind = sign_once(socket, request)?;
        let took = started.elapsed();
        if kind != 14 {
            return Err(format!(
                "{} answered type {kind}, not a signature",
                socket.display()
            ));
        }
        if i >= 10 {
            v.push(took);
        }
    }
    Ok(Samples::new(v))
}

/// Adds a row per key type; a note instead when OpenSSH is not installed.
pub fn bench(
    vault: &BenchVault,
    tmp: &Path,
    runs: usize,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> BenchResult<()> {
    let (Some(keygen), Some(ssh_agent), Some(ssh_add)) =
        (which("ssh-keygen"), which("ssh-agent"), which("ssh-add"))
    else {
        notes.push(
            "SSH agent rows skipped: needs ssh-keygen, ssh-agent and ssh-add \
             (apt-get install openssh-client)"
                .to_owned(),
        );
        return Ok(());
    };
    let dir = tmp.join("ssh-agent-bench");
    std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
    let socket = dir.join("openssh-agent.sock");
    let child = Command::new(&ssh_agent)
        .arg("-D")
        .arg("-a")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("ssh-agent: {e}"))?;
    let theirs = OpenSshAgent { child, socket };
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&theirs.socket).is_err() {
        if Instant::now() > deadline {
            return Err("ssh-agent did not listen".to_owned());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let ours = VaultPaths::under_home(&vault.home).agent_socket();

    for (kind, args, flags) in [
        ("ed25519", &["-t", "ed25519"][..], 0),
        ("ecdsa P-256", &["-t", "ecdsa", "-b", "256"][..], 0),
        (
            "rsa 3072, rsa-sha2-512",
            &["-t", "rsa", "-b", "3072"][..],
            RSA_SHA2_512,
        ),
    ] {
        let file = dir.join(format!("id_{}", kind.split(' ').next().unwrap_or(kind)));
        let mut c = Command::new(&keygen);
        c.args(args)
            .args(["-q", "-N", "", "-C", "bench", "-f"])
            .arg(&file);
        super::check(&mut c, "ssh-keygen")?;
        let name = format!("bench-ssh-{}", kind.split(' ').next().unwrap_or(kind));
        vault.cli_ok(
            &[
                "add",
                &name,
                "--type",
                "ssh",
                &format!("private_key=@{}", file.display()),
            ],
            None,
        )?;
        let mut c = Command::new(&ssh_add);
        c.arg("-q").arg(&file).env("SSH_AUTH_SOCK", &theirs.socket);
        super::check(&mut c, "ssh-add")?;
        let public =
            std::fs::read_to_string(file.with_extension("pub")).map_err(|e| e.to_string())?;
        let b64 = public.split_whitespace().nth(1).ok_or("a .pub line")?;
        let blob = vault_e2e::base64_decode(b64);
        let request = sign_request(&blob, flags);
        eprintln!("vault-bench: {runs} signatures ({kind}) through each agent");
        let vault_sign = time_signs(&ours, &request, runs)?;
        let openssh_sign = time_signs(&theirs.socket, &request, runs)?;
        let ratio = super::ratio(&vault_sign, &openssh_sign);
        rows.push(Row {
            what: format!("ssh agent: one {kind} signature (connect, sign, close)"),
            records: 1,
            result: format!(
                "vaultd {} / {} · ssh-agent {} / {} ({ratio:.2}×)",
                ms(vault_sign.median()),
                ms(vault_sign.pct(90.0)),
                ms(openssh_sign.median()),
                ms(openssh_sign.pct(90.0)),
            ),
            target: "≤ 1.5× ssh-agent".to_owned(),
            ok: Some(ratio <= 1.5),
        });
    }
    Ok(())
}
