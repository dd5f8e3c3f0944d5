//! The CLI's error type is the wire's: a code (which decides the exit code,
//! docs/user-guide.md) and a message that says what happened and what to do next. Errors
//! from the daemon pass through unchanged; the CLI makes its own with these
//! helpers. No message ever contains a secret value.

use vault_protocol::{ErrorCode, WireError};

/// Result of a CLI operation.
pub type CliResult<T> = Result<T, WireError>;

/// A usage error (exit 2).
pub fn usage(message: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::Usage, message)
}

/// A plain failure (exit 1).
pub fn failed(message: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::Failed, message)
}

/// The vault is locked and this process cannot ask for the passphrase (exit 3).
pub fn locked() -> WireError {
    WireError::new(ErrorCode::Locked, "vault is locked: run 'vault unlock'")
}

/// The daemon answered something this request does not expect.
pub fn unexpected(what: &str) -> WireError {
    WireError::new(
        ErrorCode::BadFrame,
        format!("vaultd sent an unexpected answer to {what}: run 'vault daemon restart'"),
    )
}
