//! `vault-server`: the zero-knowledge remote service devices sync through
//! (docs/sync.md and docs/server.md). Accounts, roles and policies, access tokens exchanged for
//! short-lived JWTs, and an append-only store of encrypted records per device.
//!
//! It stores only ciphertext and bookkeeping and must never link `age`: it
//! has no key and no way to read a record. Wire types live in
//! `vault_protocol::server_api`; storage backends behind [`store::Store`].

pub mod admin;
pub mod api;
pub mod backup;
pub mod crypto;
pub mod error;
pub mod oidc;
pub mod ratelimit;
pub mod serve;
pub mod store;
pub mod telemetry;
