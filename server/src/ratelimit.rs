//! Rate limit for failed logins (`POST /auth/token` with a credential that
//! is not recognised), per client address and per credential prefix, in
//! fixed windows. While a key is over its limit every login attempt under it
//! is refused with 429, right or wrong, so guessing cannot continue.
//!
//! State is per process: with several servers behind a balancer each keeps
//! its own count (documented in docs/server.md).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keep at most this many tracked keys; beyond it, expired windows are swept.
const SWEEP_AT: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
}

/// Counts failed logins; see the module docs.
#[derive(Debug)]
pub struct LoginLimiter {
    max_failures: u32,
    window: Duration,
    windows: Mutex<HashMap<String, Window>>,
}

impl LoginLimiter {
    /// At most `max_failures` failures per address and per prefix per `window`.
    pub fn new(max_failures: u32, window: Duration) -> Self {
        LoginLimiter {
            max_failures: max_failures.max(1),
            window,
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn keys(addr: IpAddr, prefix: &str) -> [String; 2] {
        [format!("addr:{addr}"), format!("prefix:{prefix}")]
    }

    /// `Err(retry_after)` when `addr` or `prefix` is over the limit.
    pub fn check(&self, addr: IpAddr, prefix: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let Ok(windows) = self.windows.lock() else {
            return Ok(());
        };
        let mut wait = None;
        for key in Self::keys(addr, prefix) {
            if let Some(w) = windows.get(&key) {
                let elapsed = now.saturating_duration_since(w.start);
                if elapsed < self.window && w.failures >= self.max_failures {
                    let left = self.window - elapsed;
                    wait = Some(wait.map_or(left, |w: Duration| w.max(left)));
                }
            }
        }
        wait.map_or(Ok(()), Err)
    }

    /// Counts one failed login for `addr` and `prefix`.
    pub fn record_failure(&self, addr: IpAddr, prefix: &str) {
        let now = Instant::now();
        let Ok(mut windows) = self.windows.lock() else {
            return;
        };
        if windows.len() >= SWEEP_AT {
            let window = self.window;
            windows.retain(|_, w| now.saturating_duration_since(w.start) < window);
        }
        for key in Self::keys(addr, prefix) {
            let w = windows.entry(key).or_insert(Window {
                start: now,
                failures: 0,
            });
            if now.saturating_duration_since(w.start) >= self.window {
                *w = Window {
                    start: now,
                    failures: 0,
                };
            }
            w.failures = w.failures.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_address_and_prefix() {
        let l = LoginLimiter::new(2, Duration::from_secs(60));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(l.check(a, "vlt_aaaa").is_ok());
        l.record_failure(a, "vlt_aaaa");
        l.record_failure(a, "vlt_bbbb");
        assert!(l.check(a, "vlt_cccc").is_err(), "address over limit");
        assert!(l.check(b, "vlt_cccc").is_ok());
        l.record_failure(b, "vlt_aaaa");
        assert!(l.check(b, "vlt_aaaa").is_err(), "prefix over limit");
        let short = LoginLimiter::new(1, Duration::from_millis(1));
        short.record_failure(a, "p");
        std::thread::sleep(Duration::from_millis(5));
        assert!(short.check(a, "p").is_ok(), "window expired");
    }
}
