//! Harness for the end-to-end tests in `tests/tests/*.rs`: they drive the real
//! `vault` and `vaultd` binaries, never the crates' internals.
//!
//! [`VaultHome`] owns one throwaway vault: a private temp dir under `/tmp`
//! (Unix socket paths are limited to 108 bytes, so the paths stay short) with
//! `VAULT_HOME`, a fake `HOME` and a directory for secret input files. It runs
//! `vault`/`vaultd` with a clean environment (`XDG_RUNTIME_DIR` removed), with
//! a timeout, and on drop stops every daemon that serves it, so no daemon
//! outlives its test.
//!
//! Secret values made by [`secret`] contain [`MARK`], so tests (and the
//! leak scan of logs and outputs, see [`leak`]) can check that no secret
//! escaped.
//!
//! This crate must never link the daemon or CLI crates: the tests talk to the
//! binaries through processes and the socket, as a user would.
//!
//! Modules, all re-exported here: `binaries` (build and find the binaries),
//! `home` ([`VaultHome`] and the socket), `process` ([`Run`], servers on
//! loopback, [`poll_until`]), `server` ([`RemoteServer`]), `proxy`
//! ([`RewritingProxy`], a server that lies), `samples` (one
//! record of each type), `files` (small helpers); [`leak`], [`moto`], [`oidc`]
//! (a real OpenID provider), [`osmo`], [`osmo_real`] and [`tmux`] are used by
//! name.

// A test harness reports failure by panicking with context.
#![allow(clippy::unwrap_used)]

mod binaries;
mod files;
mod home;
pub mod https;
pub mod kube;
pub mod leak;
pub mod moto;
pub mod oidc;
pub mod osmo;
pub mod osmo_real;
mod process;
mod proxy;
mod samples;
mod server;
pub mod tmux;

pub use binaries::*;
pub use files::*;
pub use home::*;
pub use process::*;
pub use proxy::*;
pub use samples::*;
pub use server::*;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Every secret value in the tests contains this, so a leak is easy to find.
pub const MARK: &str = "SECRETMARK";

/// The passphrase of every test vault. Not a secret value (it must be typed
/// on stdin), but it must never show up in files or output either.
pub const PASSPHRASE: &str = "e2e-Passphrase-PASSMARK-correct-horse";

/// How long one CLI invocation may take before the test fails as hung.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A unique-enough number for names: pid, time and a counter.
pub fn unique() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64 finaliser, so consecutive calls look unrelated.
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A secret value carrying [`MARK`] and `tag`, unique per call.
pub fn secret(tag: &str) -> String {
    format!("{MARK}-{tag}-{:016x}", unique())
}

/// `n` pseudo-random bytes (xorshift; not for crypto, just noise).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut x = unique() | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Standard base64, written here so the test does not lean on the code
/// under test.
pub fn base64(s: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in s.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
