//! A secret string that resists misuse: it zeroizes its memory on drop,
//! prints as `[redacted]`, is not `Clone`, and only reveals itself through an
//! explicit [`SecretValue::expose_secret`].
//!
//! It implements `Serialize` because secrets must cross the local socket (the
//! passphrase on unlock, field values on add and get); that is the one place it
//! is serialized, and frame buffers holding it are zeroized by their owners.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

/// A secret UTF-8 value. See the module docs.
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    /// Wraps `value`; the caller's `String` moves in and is wiped on drop.
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The plaintext. Call it only where the value is needed, never to log.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// An explicit copy; `Clone` is deliberately not implemented.
    pub fn duplicate(&self) -> Self {
        Self::new(self.0.as_str().to_owned())
    }

    /// True when the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for SecretValue {
    fn from(value: &str) -> Self {
        Self::new(value.to_owned())
    }
}

impl PartialEq for SecretValue {
    fn eq(&self, other: &Self) -> bool {
        // Not constant time; comparisons of secrets are for tests and
        // change detection, never for authentication.
        self.0.as_str() == other.0.as_str()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for SecretValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = SecretValue::from("hunter2-MARKER");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&s)), "Some([redacted])");
    }

    #[test]
    fn round_trips_through_json() {
        let s = SecretValue::from("p@ss");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"p@ss\"");
        let back: SecretValue = serde_json::from_str(&json).unwrap();
        assert_eq!(back.expose_secret(), "p@ss");
    }
}
