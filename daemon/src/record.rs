//! The plaintext body of a record: everything about a credential except the
//! bookkeeping columns. It exists in plaintext only in memory; on disk and on
//! the wire it is one age file (SPEC §4). Its JSON form is frozen by a golden
//! test: changing it needs `BODY_VERSION` + 1 and a migration.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{CredentialType, SecretValue};
use zeroize::Zeroizing;

/// Version of the body format.
pub const BODY_VERSION: u32 = 1;

/// A decrypted record body.
#[derive(Debug, Serialize, Deserialize)]
pub struct RecordBody {
    /// Format version.
    pub v: u32,
    /// The record id it is filed under; checked on decrypt so a body cannot be
    /// swapped between records.
    pub id: String,
    /// Name.
    pub name: String,
    /// Credential type.
    #[serde(rename = "type")]
    pub kind: CredentialType,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Field values.
    pub fields: BTreeMap<String, SecretValue>,
    /// Expiry.
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
}

impl RecordBody {
    /// Serializes into a buffer that is wiped on drop.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut buf = Zeroizing::new(Vec::with_capacity(256));
        // Serializing plain data into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buf, self);
        buf
    }

    /// Parses a decrypted body and checks that it belongs to `expected_id`.
    pub fn from_bytes(bytes: &[u8], expected_id: &str) -> Result<Self, String> {
        let body: RecordBody = serde_json::from_slice(bytes)
            .map_err(|e| format!("record {expected_id} has an unreadable body: {e}"))?;
        if body.v > BODY_VERSION {
            return Err(format!(
                "record {expected_id} was written by a newer vault (body v{}): upgrade vault",
                body.v
            ));
        }
        if body.id != expected_id {
            return Err(format!(
                "record {expected_id} holds the body of another record"
            ));
        }
        Ok(body)
    }
}
