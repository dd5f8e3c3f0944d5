//! The index snapshot: what unlock needs of every live record, sealed under
//! the vault key, so that unlock reads it instead of decrypting every record
//! (docs/architecture.md, "Unlock and the index snapshot").
//!
//! It is a cache, never a source of truth. Each entry carries the SHA-256 of
//! the ciphertext it was read from, and an entry is used only for a live row
//! whose ciphertext has that digest; every other row is decrypted as before.
//! So a snapshot that is stale (a crash, a sync, a restore from backup),
//! from another build, damaged or missing costs time and nothing else.
//!
//! The file is `MAGIC`, then [`VaultKey::seal_local`] of the document in
//! postcard's compact encoding, labelled with `MAGIC`. postcard is not
//! self-describing: any change to [`Document`] or [`Entry`] needs a new
//! `MAGIC` (the golden test in `tests/golden_disk.rs` holds it). Only the vault key opens it (a key derived from the
//! identity, not the public recipient), so nobody who can merely write the
//! data directory can make unlock believe a forged entry.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{BUILD_VERSION, CredentialType};
use zeroize::Zeroizing;

use super::{Index, IndexEntry};
use crate::crypto::VaultKey;
use crate::record::Rank;
use crate::store::RecordRow;

/// The first bytes of the file, and the label its seal is bound to.
pub const MAGIC: &[u8] = b"vault index snapshot v1\n";

/// The SHA-256 of a record's ciphertext: what ties an entry to its row.
pub fn digest(ciphertext: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, ciphertext);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The document inside the seal.
#[derive(Serialize, Deserialize)]
struct Document {
    /// The build that wrote it. Another build ignores it: what an entry
    /// derives from a body (whether a field is gated, say) may have changed.
    build: String,
    entries: Vec<Entry>,
}

/// What an index entry takes from its record's body. What it takes from the
/// row (revision, times, whether the name is shadowed) is read from the row
/// at every unlock.
#[derive(Debug, Serialize, Deserialize)]
pub struct Entry {
    id: String,
    /// SHA-256 of the ciphertext.
    digest: [u8; 32],
    /// The name in the body (the claimed one, for a shadowed record).
    name: String,
    kind: CredentialType,
    description: Option<String>,
    tags: Vec<String>,
    expires_at: Option<i64>,
    refresh: bool,
    gated: bool,
    incomplete: bool,
    /// The head's sync clock and device (zero and empty before sync).
    clock: u64,
    device: String,
}

/// A snapshot's entries by record id.
pub type Entries = HashMap<String, Entry>;

/// Seals `index` into the file's bytes.
pub fn seal(key: &VaultKey, index: &Index) -> Vec<u8> {
    let entries = index
        .iter()
        .map(|(listed, e)| Entry {
            id: e.id.clone(),
            digest: e.digest,
            name: e.claims.clone().unwrap_or_else(|| listed.clone()),
            kind: e.kind,
            description: e.description.clone(),
            tags: e.tags.clone(),
            expires_at: e.expires_at.map(|t| t.0),
            refresh: e.refresh,
            gated: e.gated,
            incomplete: e.incomplete,
            clock: e.rank.clock,
            device: e.rank.device.clone(),
        })
        .collect();
    let doc = Document {
        build: BUILD_VERSION.to_owned(),
        entries,
    };
    let plain = Zeroizing::new(postcard::to_stdvec(&doc).expect("the snapshot serializes"));
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&key.seal_local(MAGIC, &plain));
    out
}

/// Why a snapshot was not used.
#[derive(Debug, PartialEq, Eq)]
pub enum Unusable {
    /// Not a snapshot, damaged, or sealed by another key.
    Damaged,
    /// Written by another build of vaultd.
    OtherBuild,
}

/// Opens the file's bytes.
pub fn open(key: &VaultKey, bytes: &[u8]) -> Result<Entries, Unusable> {
    let doc = decode(key, bytes)?;
    if doc.build != BUILD_VERSION {
        return Err(Unusable::OtherBuild);
    }
    Ok(doc.entries.into_iter().map(|e| (e.id.clone(), e)).collect())
}

fn decode(key: &VaultKey, bytes: &[u8]) -> Result<Document, Unusable> {
    let sealed = bytes.strip_prefix(MAGIC).ok_or(Unusable::Damaged)?;
    let plain = key.open_local(MAGIC, sealed).ok_or(Unusable::Damaged)?;
    postcard::from_bytes(&plain).map_err(|_| Unusable::Damaged)
}

impl Entry {
    /// The digest of the ciphertext it was read from.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The index entry of `row`, whose ciphertext has this entry's digest,
    /// and the name in the body.
    pub fn into_index_entry(self, row: &RecordRow, digest: [u8; 32]) -> (String, IndexEntry) {
        let entry = IndexEntry {
            id: self.id,
            kind: self.kind,
            description: self.description,
            tags: self.tags,
            created_at: Timestamp(row.created_at),
            updated_at: Timestamp(row.updated_at),
            expires_at: self.expires_at.map(Timestamp),
            revision: row.revision,
            refresh: self.refresh,
            gated: self.gated,
            incomplete: self.incomplete,
            rank: Rank {
                clock: self.clock,
                device: self.device,
            },
            claims: row.shadowed.then(|| self.name.clone()),
            digest,
        };
        (self.name, entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The golden vault's key (`tests/fixtures/v1`).
    fn golden_key() -> VaultKey {
        let sealed = include_bytes!("../../tests/fixtures/v1/identity.age");
        VaultKey::open(sealed, "golden-passphrase").unwrap()
    }

    fn entry(id: &str, n: u8) -> IndexEntry {
        IndexEntry {
            id: id.into(),
            kind: if n == 1 {
                CredentialType::Token
            } else {
                CredentialType::Aws
            },
            description: (n == 1).then(|| "golden token".to_owned()),
            tags: if n == 1 { vec!["ci".into()] } else { vec![] },
            created_at: Timestamp(1_700_000_000),
            updated_at: Timestamp(1_700_000_100),
            expires_at: (n == 2).then_some(Timestamp(1_800_000_000)),
            revision: u64::from(n),
            refresh: n == 2,
            gated: n == 2,
            incomplete: false,
            rank: Rank {
                clock: u64::from(n) << 16,
                device: if n == 1 {
                    String::new()
                } else {
                    "d".repeat(32)
                },
            },
            claims: None,
            digest: [n; 32],
        }
    }

    fn golden_index() -> Index {
        [
            ("golden/token".to_owned(), entry("a".repeat(32).as_str(), 1)),
            ("golden-aws".to_owned(), entry("b".repeat(32).as_str(), 2)),
        ]
        .into_iter()
        .collect()
    }

    /// The encoding, frozen: `index.snapshot` in the fixtures was sealed by
    /// the first build that wrote snapshots. A change that breaks this
    /// needs a new `MAGIC`, not a new fixture.
    #[test]
    fn the_frozen_snapshot_still_decodes() {
        let bytes = include_bytes!("../../tests/fixtures/v1/index.snapshot");
        let doc = decode(&golden_key(), bytes).unwrap();
        assert_eq!(doc.build, "0.1.0");
        let expected = golden_index();
        assert_eq!(doc.entries.len(), 2);
        for e in doc.entries {
            let row = RecordRow {
                id: e.id.clone(),
                name_mac: vec![],
                kind: String::new(),
                revision: 0,
                created_at: 1_700_000_000,
                updated_at: 1_700_000_100,
                expires_at: None,
                deleted: false,
                body: vec![],
                shadowed: false,
            };
            let digest = e.digest;
            let (name, mut got) = e.into_index_entry(&row, digest);
            let want = &expected[&name];
            got.revision = want.revision;
            assert_eq!(format!("{got:?}"), format!("{want:?}"));
        }
    }

    #[test]
    fn a_snapshot_round_trips_and_names_why_it_is_unusable() {
        let key = golden_key();
        let index = golden_index();
        let entries = open(&key, &seal(&key, &index)).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries["a".repeat(32).as_str()].digest(), &[1; 32]);
        assert_eq!(
            open(&VaultKey::generate(), &seal(&key, &index)).unwrap_err(),
            Unusable::Damaged
        );
        assert_eq!(
            open(&key, b"vault index snapshot v0\n").unwrap_err(),
            Unusable::Damaged
        );
        let doc = Document {
            build: "0.0.1".into(),
            entries: vec![],
        };
        let mut other = MAGIC.to_vec();
        other.extend_from_slice(&key.seal_local(MAGIC, &postcard::to_stdvec(&doc).unwrap()));
        assert_eq!(open(&key, &other).unwrap_err(), Unusable::OtherBuild);
    }
}
