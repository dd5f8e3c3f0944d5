//! The daemon's network and process side: the background workers that talk
//! to something outside the vault, each named after what it defines. They
//! reach the vault only through the engine (docs/architecture.md).

pub mod checker;
pub mod console;
pub mod eks;
pub mod gcp;
pub mod http;
pub mod iam;
pub mod publisher;
pub mod refresher;
pub mod rotator;
pub mod server_sso;
pub mod sigv4;
pub mod sso;
pub mod sts;
pub mod syncer;
pub mod wif;

use std::sync::{Mutex, MutexGuard};

use crate::engine::Engine;

/// All the workers may touch of the daemon: the engine, and each other's
/// state and wake-ups. The socket, the unlock gate and the prompt lease
/// stay in `server`, which no worker imports; `server` holds this and hands
/// it to them.
#[derive(Debug)]
pub struct Shared {
    engine: Mutex<Engine>,
    /// The one HTTP client: sync, publish and STS share its connections.
    pub http: http::Http,
    /// Single-flight refreshes and their failures (docs/refresh.md).
    pub refresher: refresher::Refresher,
    /// Sync state and the background sync's wake-up (docs/sync.md).
    pub syncer: syncer::Syncer,
    /// Publishing to workload platforms (docs/publish.md).
    pub publisher: publisher::Publisher,
    /// The background re-check (docs/lifecycle.md).
    pub checker: checker::Checker,
    /// GCP access tokens minted, until the vault locks (docs/gcp.md).
    pub gcp_tokens: gcp::Tokens,
    /// One rotation at a time (docs/lifecycle.md).
    pub rotator: rotator::Rotator,
    /// SSO sign-ins waiting for the user's approval (docs/sso.md).
    pub sso_logins: sso::Logins,
    /// Renewals of SSO sessions whose token file is emitted (docs/sso.md).
    pub sso_renewals: sso::Renewals,
}

impl Shared {
    /// Wraps an opened engine.
    pub fn new(engine: Engine) -> Self {
        let http = http::Http::trusting(&engine.config().tls_roots);
        Self {
            engine: Mutex::new(engine),
            http,
            refresher: refresher::Refresher::default(),
            syncer: syncer::Syncer::default(),
            publisher: publisher::Publisher::default(),
            checker: checker::Checker::default(),
            gcp_tokens: gcp::Tokens::default(),
            rotator: rotator::Rotator::default(),
            sso_logins: sso::Logins::default(),
            sso_renewals: sso::Renewals::default(),
        }
    }

    /// The engine, locked.
    pub fn engine(&self) -> MutexGuard<'_, Engine> {
        // A panic while holding the lock must not take the daemon down with
        // it: the engine's state is updated only after each store commit.
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }
}
