//! Memory hygiene (issue 18, docs/threat-model.md): after `vault lock`, no
//! copy of a secret that `get` and `exec` handed out is left anywhere in
//! `vaultd`'s memory — not in live buffers, not in freed heap chunks, not in
//! the old halves of buffers that grew.
//!
//! `vaultd` makes itself non-dumpable, so only a process with
//! `CAP_SYS_PTRACE` may read `/proc/PID/mem`: the test runs as root (as
//! `.ci/run` does) and is skipped with a message otherwise.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use vault_e2e::{VaultHome, my_uid, secret};

/// One readable mapping of the process and how often the needle is in it.
struct Hit {
    region: String,
    count: usize,
}

/// Reads every readable mapping of `pid` and counts `needle` in each.
fn scan(pid: u32, needle: &[u8]) -> std::io::Result<(Vec<Hit>, usize)> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mut mem = fs::File::open(format!("/proc/{pid}/mem"))?;
    let mut hits = Vec::new();
    let mut scanned = 0;
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(perms)) = (parts.next(), parts.next()) else {
            continue;
        };
        let name = line.split_whitespace().nth(5).unwrap_or("[anonymous]");
        if !perms.starts_with('r') || name == "[vvar]" || name == "[vsyscall]" {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut buf = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue; // a guard page or a mapping that went away
        }
        scanned += buf.len();
        let count = memchr::memmem::find_iter(&buf, needle).count();
        if count > 0 {
            hits.push(Hit {
                region: format!("{range} {perms} {name}"),
                count,
            });
        }
    }
    Ok((hits, scanned))
}

#[test]
fn after_lock_no_handed_out_secret_is_left_in_vaultd_memory() {
    if my_uid() != 0 {
        eprintln!(
            "SKIP memory: vaultd is non-dumpable, so reading its memory needs root \
             (run `sudo -E cargo test -p vault-e2e --test memory`; .ci/run runs it as root)"
        );
        return;
    }
    let vh = VaultHome::new();
    vh.init().ok();
    let token = secret("memtoken");
    let key = format!(
        "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n",
        secret("memssh")
    );
    let probe_name = format!("probe-{:016x}", vault_e2e::unique());
    vh.vault([
        "add",
        &probe_name,
        "--type",
        "token",
        &format!("token={}", vh.at_file("probe", "x")),
    ])
    .ok();
    let token_file = vh.at_file("token", &token);
    let key_file = vh.at_file("key", &key);
    vh.vault([
        "add",
        "api",
        "--type",
        "token",
        &format!("token={token_file}"),
    ])
    .ok();
    vh.vault([
        "add",
        "deploy",
        "--type",
        "ssh",
        &format!("private_key={key_file}"),
    ])
    .ok();
    // Hand both out several times, through every path that serialises
    // them: get (text and JSON), exec (env and a key file), list/show.
    for _ in 0..3 {
        vh.vault(["get", "api"]).ok().stdout_has(&token);
        vh.vault(["get", "api", "--json"]).ok();
        vh.vault(["get", "deploy"]).ok();
        vh.vault(["exec", "-c", "api", "--", "true"]).ok();
        vh.vault(["exec", "-c", "deploy", "--", "true"]).ok();
        vh.vault(["list"]).ok();
    }
    let pid = vh.daemon_pid().expect("vaultd answers");

    // The scan must be able to see the daemon's heap, or a clean result
    // proves nothing: a credential's name, held in the unlocked index, is
    // found while the vault is unlocked.
    let (seen, scanned) = scan(pid, probe_name.as_bytes()).unwrap();
    assert!(scanned > 1 << 20, "read only {scanned} bytes of vaultd");
    assert!(
        seen.iter().any(|h| h.region.contains("rw-p")),
        "the scan found no copy of the name {probe_name} in vaultd's writable memory"
    );

    vh.vault(["lock"]).ok();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(vh.daemon_pid(), Some(pid), "vaultd stays up after lock");

    let mut report = Vec::new();
    for (what, needle) in [("token", token.as_str()), ("ssh key", key.as_str())] {
        // The ssh needle is the marker line inside the key, so a copy of
        // the key body is found however the key was framed.
        let needle = needle
            .lines()
            .find(|l| l.contains("memtoken") || l.contains("memssh"))
            .unwrap();
        let (hits, _) = scan(pid, needle.as_bytes()).unwrap();
        for h in hits {
            report.push(format!("{what}: {} copies in {}", h.count, h.region));
        }
    }
    assert!(
        report.is_empty(),
        "secrets left in vaultd's memory after lock:\n{}",
        report.join("\n")
    );
}
