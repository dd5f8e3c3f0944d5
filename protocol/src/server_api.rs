//! Wire types of the remote service's HTTP API (`/api/v1`), shared by
//! `vault-server` and the daemon's sync client.
