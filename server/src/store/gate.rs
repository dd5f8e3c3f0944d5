//! The commit gate: one request's timeout and its writes agree on whether a
//! change is applied, so a client that is told 503 knows nothing changed.
//!
//! Without it a request could time out while its transaction was already
//! committing (SQLite runs it on a blocking thread the timeout can't stop;
//! PostgreSQL may have received `COMMIT`), and the client would retry a change
//! that had been applied. With it:
//!
//! - a store takes the gate just before `COMMIT` ([`CommitGate::begin_commit`])
//!   and refuses to commit (rolls back, `Unavailable`) if the request was
//!   already abandoned;
//! - the timeout abandons the request ([`CommitGate::abandon`]) only when no
//!   commit is running and none has happened; otherwise the handler's own
//!   answer is awaited, since the change is applied. Its remaining work is
//!   bounded by the per-call database timeouts.
//!
//! Requests outside a gate scope (admin commands, tests) commit freely.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::StoreError;

const OPEN: u8 = 0;
const COMMITTING: u8 = 1;
const COMMITTED: u8 = 2;
const ABANDONED: u8 = 3;

tokio::task_local! {
    static GATE: CommitGate;
}

/// One request's gate. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct CommitGate(Arc<AtomicU8>);

impl CommitGate {
    /// A fresh gate: nothing committed, not abandoned.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `fut` with this gate as the current request's.
    pub async fn scope<F: std::future::Future>(self, fut: F) -> F::Output {
        GATE.scope(self, fut).await
    }

    /// The current request's gate, if there is one. Call it on the async
    /// side: a blocking thread has no task-local.
    pub fn current() -> Option<CommitGate> {
        GATE.try_with(CommitGate::clone).ok()
    }

    /// Called just before `COMMIT`. Errs if the request has been answered
    /// 503 already: the caller must roll back.
    pub fn begin_commit(&self) -> Result<CommitTicket<'_>, StoreError> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s != ABANDONED).then_some(COMMITTING)
            })
            .map(|_| CommitTicket(self))
            .map_err(|_| {
                StoreError::Unavailable(
                    "the request timed out before its change was applied".into(),
                )
            })
    }

    /// Called by the timeout: true if the request may be answered 503 (no
    /// change was or will be committed); false if a commit is running or done,
    /// so the handler's answer must be awaited.
    pub fn abandon(&self) -> bool {
        matches!(
            self.0
                .compare_exchange(OPEN, ABANDONED, Ordering::AcqRel, Ordering::Acquire),
            Ok(_) | Err(ABANDONED)
        )
    }
}

/// Held while a commit runs; dropping it marks the request as having
/// committed (also when `COMMIT` failed: whether it applied is then unknown,
/// and the handler's own error is the truthful answer).
#[must_use]
#[derive(Debug)]
pub struct CommitTicket<'a>(&'a CommitGate);

impl Drop for CommitTicket<'_> {
    fn drop(&mut self) {
        self.0.0.store(COMMITTED, Ordering::Release);
    }
}

/// Takes `gate` (if any) for a commit.
pub fn begin(gate: Option<&CommitGate>) -> Result<Option<CommitTicket<'_>>, StoreError> {
    gate.map(CommitGate::begin_commit).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abandoned_gate_refuses_commit() {
        let g = CommitGate::new();
        assert!(g.abandon());
        assert!(g.abandon(), "abandoning twice is still abandoned");
        assert!(matches!(g.begin_commit(), Err(StoreError::Unavailable(_))));
    }

    #[test]
    fn running_or_done_commit_refuses_abandon() {
        let g = CommitGate::new();
        let ticket = g.begin_commit().unwrap();
        assert!(!g.abandon(), "a commit is running");
        drop(ticket);
        assert!(!g.abandon(), "a change was committed");
        // A second write in the same request may still commit.
        drop(g.begin_commit().unwrap());
    }

    #[tokio::test]
    async fn scope_sets_current() {
        assert!(CommitGate::current().is_none());
        let g = CommitGate::new();
        let inner = g.clone().scope(async { CommitGate::current() }).await;
        assert!(inner.is_some_and(|i| Arc::ptr_eq(&i.0, &g.0)));
    }
}
