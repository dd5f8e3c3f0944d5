//! Small file and byte helpers: walking a tree, base64, `which`, the test Python;
//! and a throwaway second user ([`TempUser`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every entry under `dir` (not following symlinks), `dir` included.
pub fn walk(dir: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir()
            && let Ok(entries) = fs::read_dir(&p)
        {
            for e in entries.flatten() {
                stack.push(e.path());
            }
        }
        out.push((p, meta));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Standard base64 decoding, written here so tests do not lean on the code
/// under test to decode what it encoded.
pub fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let (mut bits, mut n, mut out) = (0u32, 0, Vec::new());
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .unwrap_or_else(|| panic!("{c:?} is not base64"));
        bits = (bits << 6) | v as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    out
}

/// Whether `haystack` contains `needle` (bytes).
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A command found on PATH, if any.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `oathtool`, the reference for one-time codes, or `None` after printing
/// `SKIP test: ...`; a failure instead when `VAULT_TEST_REQUIRE_OATHTOOL` is
/// set (`.ci/run` installs it and sets that).
pub fn oathtool(test: &str) -> Option<PathBuf> {
    if let Some(tool) = which("oathtool") {
        return Some(tool);
    }
    let why =
        format!("SKIP {test}: needs oathtool (apt install oathtool; bash .ci/run installs it)");
    assert!(
        std::env::var_os("VAULT_TEST_REQUIRE_OATHTOOL").is_none(),
        "{why}"
    );
    eprintln!("{why}");
    None
}

/// A random 160-bit one-time-code seed in base32, as a site issues it.
pub fn otp_seed() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    crate::random_bytes(32)
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % 32] as char)
        .collect()
}

/// The Python with botocore and google-auth to check emitted files with
/// (`VAULT_TEST_PYTHON`), or `None` after printing `SKIP test: ...` and how
/// to get one (`bash .ci/run` makes one in target/ci-venv).
pub fn test_python(test: &str) -> Option<PathBuf> {
    let Some(python) = std::env::var_os("VAULT_TEST_PYTHON").map(PathBuf::from) else {
        eprintln!(
            "SKIP {test}: set VAULT_TEST_PYTHON to a Python with botocore and google-auth \
             (bash .ci/run makes one in target/ci-venv)"
        );
        return None;
    };
    let ok = Command::new(&python)
        .args(["-c", "import botocore.session, google.auth"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "SKIP {test}: {} cannot import botocore and google-auth: pip install botocore google-auth",
            python.display()
        );
        return None;
    }
    Some(python)
}

/// A throwaway system user, deleted on drop: the "another uid" of the
/// permission tests (`other_user.rs`, `ssh_agent.rs`). Needs root.
#[derive(Debug)]
pub struct TempUser {
    /// Login name.
    pub name: String,
    /// Its uid (never 0).
    pub uid: u32,
    /// Its own group.
    pub gid: u32,
}

impl TempUser {
    /// A new user, or `None` after printing `SKIP test: ...` when not root
    /// or without useradd.
    pub fn create(test: &str) -> Option<Self> {
        if crate::my_uid() != 0 {
            eprintln!("SKIP {test}: not running as root, cannot create a second user");
            return None;
        }
        let Some(useradd) = which("useradd").or_else(|| {
            ["/usr/sbin/useradd", "/sbin/useradd"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
        }) else {
            eprintln!("SKIP {test}: useradd is not installed (apt-get install passwd)");
            return None;
        };
        // Tests run in parallel: one user each.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("ve2e{}u{n}", std::process::id());
        let out = Command::new(&useradd)
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg("--user-group")
            .arg(&name)
            .output()
            .expect("run useradd");
        assert!(
            out.status.success(),
            "useradd {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .arg(flag)
                .arg(&name)
                .output()
                .expect("id");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("numeric id")
        };
        let (uid, gid) = (id("-u"), id("-g"));
        assert_ne!(uid, 0);
        Some(Self { name, uid, gid })
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let userdel = which("userdel").unwrap_or_else(|| "/usr/sbin/userdel".into());
        let _ = Command::new(userdel).arg(&self.name).output();
    }
}
