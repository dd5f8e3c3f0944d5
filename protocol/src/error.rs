//! Typed errors that cross the socket, and their mapping to exit codes
//! (docs/user-guide.md). An error is always a code plus a message; the message says what
//! happened and what to do next, and never contains a secret value.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What went wrong, as a stable machine-readable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A bug or an unexpected I/O failure in the daemon.
    Internal,
    /// The request is valid but cannot be carried out (bad state, bad data).
    Failed,
    /// The request's arguments are wrong (missing field, bad name).
    Usage,
    /// The vault is locked; unlock it and retry.
    Locked,
    /// The passphrase did not decrypt the vault key.
    BadPassphrase,
    /// No vault exists yet under this home; run `vault init`.
    NotInitialized,
    /// The named record does not exist.
    NotFound,
    /// A record with that name already exists, or the vault already exists.
    AlreadyExists,
    /// Concurrent change or a sync conflict.
    Conflict,
    /// CLI and daemon speak different protocol or build versions.
    VersionMismatch,
    /// The daemon could not be reached (used by the CLI only).
    Unreachable,
    /// The credential has expired.
    Expired,
    /// The frame could not be read: too large, not JSON, not a request.
    BadFrame,
    /// The record holds a field from another device that runs a program,
    /// writes a file or names an endpoint, not approved on this device
    /// (`vault approve NAME`). Exit code 1, as for older CLIs that read it
    /// as [`ErrorCode::Unknown`].
    NotApproved,
    /// A code from a newer peer that this build does not know.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The process exit code for this error (docs/user-guide.md).
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorCode::Usage => 2,
            ErrorCode::Locked | ErrorCode::BadPassphrase => 3,
            ErrorCode::NotFound => 4,
            ErrorCode::AlreadyExists | ErrorCode::Conflict => 5,
            ErrorCode::VersionMismatch | ErrorCode::Unreachable => 6,
            ErrorCode::Expired => 7,
            ErrorCode::Internal
            | ErrorCode::Failed
            | ErrorCode::NotInitialized
            | ErrorCode::BadFrame
            | ErrorCode::NotApproved
            | ErrorCode::Unknown => 1,
        }
    }
}

/// An error as it crosses the socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable text: what happened and what to do next.
    pub message: String,
}

impl WireError {
    /// Builds an error from a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for WireError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_spec() {
        assert_eq!(ErrorCode::Usage.exit_code(), 2);
        assert_eq!(ErrorCode::Locked.exit_code(), 3);
        assert_eq!(ErrorCode::BadPassphrase.exit_code(), 3);
        assert_eq!(ErrorCode::NotFound.exit_code(), 4);
        assert_eq!(ErrorCode::AlreadyExists.exit_code(), 5);
        assert_eq!(ErrorCode::VersionMismatch.exit_code(), 6);
        assert_eq!(ErrorCode::Expired.exit_code(), 7);
        assert_eq!(ErrorCode::Internal.exit_code(), 1);
    }

    #[test]
    fn unknown_codes_from_newer_peers_decode() {
        let e: WireError = serde_json::from_str(r#"{"code":"brand_new","message":"m"}"#).unwrap();
        assert_eq!(e.code, ErrorCode::Unknown);
        assert_eq!(e.code.exit_code(), 1);
    }
}
