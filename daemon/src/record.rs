//! The plaintext body of a record: everything about a credential except the
//! bookkeeping columns. It exists in plaintext only in memory; on disk and on
//! the wire it is one age file (docs/architecture.md). Its JSON form is frozen by a golden
//! test: changing it needs `BODY_VERSION` + 1 and a migration.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{CredentialType, SecretValue};
use zeroize::Zeroizing;

/// Version of the body format. v2 added [`Stamp`] (sync); v1 bodies, written
/// before sync, still decode (with `sync: None`). v3 authenticates every
/// body with the vault's entry key ([`RecordBody::to_signed_bytes`]) and adds
/// the stamp's `vault`, `prev` and `seen` (issue 18).
pub const BODY_VERSION: u32 = 3;

/// The first body version that carries a MAC. Pulled entries older than
/// this are refused: anyone who knows the vault's public recipient can
/// write one.
pub const AUTH_VERSION: u32 = 3;

/// The member that holds a v3 body's MAC; always the last one.
const MAC_MEMBER: &[u8] = b",\"mac\":\"";
/// Bytes after the signed part: the member, 64 hex digits, `"}`.
const MAC_TAIL: usize = MAC_MEMBER.len() + 64 + 2;

/// A revision's place in the device logs (docs/sync.md). Inside the encrypted
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
    /// v3: the vault id, so an entry of another vault never verifies.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vault: String,
    /// v3: hex MAC of this device's previous authenticated entry; empty for
    /// its first. Each device's log is a hash chain.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prev: String,
    /// v3: how far the writing device had applied each other device's log:
    /// a commitment to the heads it knew, so a server that withholds them
    /// is found out.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub seen: BTreeMap<String, u64>,
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
    /// A new entry's stamp, before [`crate::engine`] seals it (which fills
    /// in `vault`, `prev` and `seen`).
    pub fn new(device: &str, index: u64, clock: u64, change: &str, deleted: bool) -> Self {
        Self {
            device: device.to_owned(),
            index,
            clock,
            parents: Vec::new(),
            change: change.to_owned(),
            deleted,
            vault: String::new(),
            prev: String::new(),
            seen: BTreeMap::new(),
        }
    }

    /// Where this revision sits.
    pub fn at(&self) -> LogRef {
        LogRef {
            device: self.device.clone(),
            index: self.index,
        }
    }

    /// Where this revision stands among concurrent ones ([`Rank`]).
    pub fn rank(&self) -> Rank {
        Rank {
            clock: self.clock,
            device: self.device.clone(),
        }
    }
}

/// The order in which concurrent revisions of a record win (docs/sync.md):
/// the later clock, then the greater device id. The one definition, used
/// wherever a winner is chosen; a revision without a stamp (never synced)
/// ranks lowest ([`Rank::default`]). Field order is the order compared.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank {
    /// The hybrid clock of the revision.
    pub clock: u64,
    /// The device that wrote it.
    pub device: String,
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
    /// v3: hex HMAC-SHA256 of every byte before this member. Must stay the
    /// last field: [`RecordBody::signed_part`] finds it at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl RecordBody {
    /// A body for unit tests: record `name` of type `kind` with `fields`.
    #[cfg(test)]
    pub fn for_test(
        name: &str,
        kind: vault_protocol::CredentialType,
        fields: &[(&str, &str)],
    ) -> Self {
        RecordBody {
            v: BODY_VERSION,
            id: "0".into(),
            name: name.into(),
            kind,
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), SecretValue::from(*v)))
                .collect(),
            description: None,
            tags: vec![],
            expires_at: None,
            sync: None,
            mac: None,
        }
    }

    /// Serializes into a buffer that is wiped on drop.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut buf = Zeroizing::new(Vec::with_capacity(256));
        // Serializing plain data into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buf, self);
        buf
    }

    /// Serializes and authenticates: the body without a MAC is MACed with
    /// `mac` and the MAC added as its last member. Returns the bytes and the
    /// MAC. The buffer is sized up front so no copy of the plaintext is
    /// left behind by a reallocation.
    pub fn to_signed_bytes(
        &self,
        mac: impl FnOnce(&[u8]) -> [u8; 32],
    ) -> (Zeroizing<Vec<u8>>, [u8; 32]) {
        debug_assert!(self.mac.is_none(), "signing a signed body");
        let unsigned = self.to_bytes();
        let tag = mac(&unsigned);
        let mut out = Zeroizing::new(Vec::with_capacity(unsigned.len() + MAC_TAIL));
        out.extend_from_slice(&unsigned[..unsigned.len() - 1]);
        out.extend_from_slice(MAC_MEMBER);
        out.extend_from_slice(hex::encode(tag).as_bytes());
        out.extend_from_slice(b"\"}");
        (out, tag)
    }

    /// The bytes a v3 body's MAC covers, and the MAC; `None` when `plain`
    /// does not end with a MAC member.
    pub fn signed_part(plain: &[u8]) -> Option<(Zeroizing<Vec<u8>>, [u8; 32])> {
        if plain.len() < MAC_TAIL + 2 || !plain.ends_with(b"\"}") {
            return None;
        }
        let at = plain.len() - MAC_TAIL;
        let (head, tail) = plain.split_at(at);
        let hex_mac = tail.strip_prefix(MAC_MEMBER)?.strip_suffix(b"\"}")?;
        let mut tag = [0u8; 32];
        hex::decode_to_slice(hex_mac, &mut tag).ok()?;
        let mut signed = Zeroizing::new(Vec::with_capacity(at + 1));
        signed.extend_from_slice(head);
        signed.push(b'}');
        Some((signed, tag))
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

#[cfg(test)]
mod tests {
    use super::Rank;

    fn rank(clock: u64, device: &str) -> Rank {
        Rank {
            clock,
            device: device.to_owned(),
        }
    }

    #[test]
    fn the_later_clock_wins_then_the_greater_device_and_no_stamp_ranks_lowest() {
        assert!(rank(2, "a") > rank(1, "z"));
        assert!(rank(1, "b") > rank(1, "a"));
        assert!(rank(0, "a") > Rank::default());
        let mut all = vec![rank(1, "b"), rank(3, "a"), Rank::default(), rank(1, "c")];
        all.sort();
        assert_eq!(
            all,
            vec![Rank::default(), rank(1, "b"), rank(1, "c"), rank(3, "a")]
        );
    }
}
