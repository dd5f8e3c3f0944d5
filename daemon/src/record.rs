//! The plaintext body of a record: everything about a credential except the
//! bookkeeping columns. It exists in plaintext only in memory; on disk and on
//! the wire it is one age file (SPEC §4). Its JSON form is frozen by a golden
//! test: changing it needs `BODY_VERSION` + 1 and a migration.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{CredentialType, SecretValue};
use zeroize::Zeroizing;

/// Version of the body format. v2 added [`Stamp`] (sync); v1 bodies, written
/// before sync, still decode (with `sync: None`).
pub const BODY_VERSION: u32 = 2;

/// A revision's place in the device logs (SPEC §11). Inside the encrypted
/// body, so the server can neither move a revision to another log or index
/// nor change which revision wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// The device whose log holds this revision.
    pub device: String,
    /// Its index in that log, from 1.
    pub index: u64,
    /// Hybrid logical clock: unix milliseconds << 16 | a counter. The later
    /// `(clock, device)` wins.
    pub clock: u64,
    /// The logged revisions this one was written over: the head it replaced,
    /// then any conflicting revisions it resolves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<LogRef>,
    /// add, set, rename, remove, restore, refresh or enroll.
    pub change: String,
    /// A tombstone: the record is deleted as of this revision.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

/// A place in a device's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRef {
    /// The device.
    pub device: String,
    /// The index.
    pub index: u64,
}

impl Stamp {
    /// Where this revision sits.
    pub fn at(&self) -> LogRef {
        LogRef {
            device: self.device.clone(),
            index: self.index,
        }
    }

    /// The order in which concurrent revisions win: later clock, then the
    /// greater device id.
    pub fn rank(&self) -> (u64, &str) {
        (self.clock, &self.device)
    }
}

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
    /// Sync stamp (v2); `None` in bodies written before sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<Stamp>,
}

impl RecordBody {
    /// Serializes into a buffer that is wiped on drop.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut buf = Zeroizing::new(Vec::with_capacity(256));
        // Serializing plain data into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buf, self);
        buf
    }

    /// Parses a decrypted body of any record (a pulled one names its own
    /// record; the caller checks its stamp).
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let body: RecordBody =
            serde_json::from_slice(bytes).map_err(|e| format!("unreadable record body: {e}"))?;
        if body.v > BODY_VERSION {
            return Err(format!(
                "a record was written by a newer vault (body v{}): upgrade vault",
                body.v
            ));
        }
        Ok(body)
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
