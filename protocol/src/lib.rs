//! Wire types shared by `vault` (the CLI), `vaultd` (the daemon) and
//! `vault-server`.
//!
//! This crate owns the local protocol — frames, the handshake, requests,
//! responses and typed errors — and the credential model that both ends
//! validate against. It must never depend on `age` or `rusqlite`: the CLI links
//! it, and the CLI stays free of crypto and storage.

pub mod credential;
pub mod error;
pub mod form;
pub mod frame;
pub mod message;
pub mod otp;
pub mod paths;
pub mod private;
pub mod secret;
pub mod server_api;
pub mod timefmt;

pub use credential::{CredentialType, validate_name};
pub use error::{ErrorCode, WireError};
pub use message::{Request, RequestFrame, Response, ResponseFrame};
pub use secret::SecretValue;

/// Version of the local protocol. Bump it on any incompatible change of a
/// frame, request or response; the golden tests in `tests/golden.rs` pin it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Build version carried in the handshake. A daemon and a CLI of different
/// builds refuse to talk and tell the user to restart the daemon.
pub const BUILD_VERSION: &str = env!("CARGO_PKG_VERSION");
