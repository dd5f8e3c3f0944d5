//! The daemon's network and process side: the background workers that talk
//! to something outside the vault, each named after what it defines. They
//! reach the vault only through the engine (docs/architecture.md).

pub mod publisher;
pub mod refresher;
pub mod sigv4;
pub mod sts;
pub mod syncer;
