//! Rate limit for failed logins (`POST /auth/token` with a credential that
//! is not recognised), per client address and per credential prefix, in
//! fixed windows. While a key is over its limit every login attempt under it
//! is refused with 429, right or wrong, so guessing cannot continue.
//!
//! The counts live in the database (`login_failures`, issue 23), so every
//! server on it shares them: N replicas behind a balancer allow the limit
//! once, not N times. Windows are on the wall clock, in seconds.

use std::net::IpAddr;
use std::time::Duration;

use crate::error::StoreResult;
use crate::store::Store;

/// Counts failed logins; see the module docs.
#[derive(Debug)]
pub struct LoginLimiter {
    max_failures: i64,
    window: i64,
}

impl LoginLimiter {
    /// At most `max_failures` failures per address and per prefix per
    /// `window` (whole seconds, at least one).
    pub fn new(max_failures: u32, window: Duration) -> Self {
        LoginLimiter {
            max_failures: i64::from(max_failures.max(1)),
            window: window.as_secs().clamp(1, i64::MAX as u64) as i64,
        }
    }

    fn keys(addr: IpAddr, prefix: &str) -> [String; 2] {
        [format!("addr:{addr}"), format!("prefix:{prefix}")]
    }

    /// `Ok(Err(retry_after))` when `addr` or `prefix` is over the limit at
    /// `now` (unix seconds).
    pub async fn check(
        &self,
        store: &dyn Store,
        addr: IpAddr,
        prefix: &str,
        now: i64,
    ) -> StoreResult<Result<(), Duration>> {
        let since = now.saturating_sub(self.window) + 1;
        let windows = store
            .login_failures(&Self::keys(addr, prefix), since)
            .await?;
        let wait = windows
            .iter()
            .filter(|(_, failures)| *failures >= self.max_failures)
            .map(|(start, _)| start.saturating_add(self.window).saturating_sub(now).max(1))
            .max();
        Ok(wait.map_or(Ok(()), |secs| Err(Duration::from_secs(secs as u64))))
    }

    /// Counts one failed login for `addr` and `prefix` at `now`.
    pub async fn record_failure(
        &self,
        store: &dyn Store,
        addr: IpAddr,
        prefix: &str,
        now: i64,
    ) -> StoreResult<()> {
        let since = now.saturating_sub(self.window) + 1;
        store
            .record_login_failure(&Self::keys(addr, prefix), now, since)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits_per_address_and_prefix_in_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite:{}", dir.path().join("s.db").display());
        let store = crate::store::open(&db).await.unwrap();
        let l = LoginLimiter::new(2, Duration::from_secs(60));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let t = 1_000_000;
        assert_eq!(l.check(&*store, a, "vlt_aaaa", t).await.unwrap(), Ok(()));
        l.record_failure(&*store, a, "vlt_aaaa", t).await.unwrap();
        l.record_failure(&*store, a, "vlt_bbbb", t + 1)
            .await
            .unwrap();
        assert_eq!(
            l.check(&*store, a, "vlt_cccc", t + 1).await.unwrap(),
            Err(Duration::from_secs(59)),
            "address over limit until its window ends"
        );
        assert!(
            l.check(&*store, b, "vlt_cccc", t + 1)
                .await
                .unwrap()
                .is_ok()
        );
        l.record_failure(&*store, b, "vlt_aaaa", t + 2)
            .await
            .unwrap();
        assert!(
            l.check(&*store, b, "vlt_aaaa", t + 2)
                .await
                .unwrap()
                .is_err(),
            "prefix over limit"
        );
        // Another limiter on the same database (another replica) sees it.
        let other = LoginLimiter::new(2, Duration::from_secs(60));
        assert!(other.check(&*store, a, "x", t + 3).await.unwrap().is_err());
        // The window ends; a failure after it starts a new one.
        assert!(l.check(&*store, a, "x", t + 60).await.unwrap().is_ok());
        l.record_failure(&*store, a, "x", t + 61).await.unwrap();
        assert!(l.check(&*store, a, "x", t + 61).await.unwrap().is_ok());
    }
}
