//! `vaultd`, the per-user daemon that owns the vault (docs/architecture.md): the
//! encrypted store, the unlocked key in memory, and the local socket.

pub mod agent;
pub mod config;
pub mod crypto;
pub mod emit;
pub mod engine;
pub mod fsutil;
pub mod peer;
pub mod record;
pub mod remote;
pub mod server;
pub mod store;
pub mod watch;
