//! Sync: reports, log checks, conflicts and approvals (docs/sync.md).

use serde::{Deserialize, Serialize};

use crate::credential::CredentialType;
use crate::secret::SecretValue;
use crate::timefmt::Timestamp;

/// What one sync did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncReport {
    /// Local changes pushed.
    pub pushed: u64,
    /// Remote changes applied.
    pub pulled: u64,
    /// Open conflicts after it.
    pub conflicts: u64,
    /// Pulled entries that were refused (why), never applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
    /// What the sync found and mended on its own, worth telling the user
    /// (e.g. entries the server had lost, pushed again). Not failures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One device's log as seen here and on the server (`vault sync verify`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogCheck {
    /// The device.
    pub device: String,
    /// Whether it is this device.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub this_device: bool,
    /// The server's last index of it.
    pub server_head: u64,
    /// The last index this device has (this device: written; others:
    /// applied).
    pub local_head: u64,
    /// Entries up to `server_head` this device lacks, as inclusive ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_here: Vec<(u64, u64)>,
    /// Entries this device has that the server lacks, as inclusive ranges
    /// (for this device: written and believed pushed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_there: Vec<(u64, u64)>,
}

/// What kind of conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictKind {
    /// Two devices changed one record concurrently: the later revision is
    /// current, `revision` is the other, kept in history.
    Edit,
    /// Two devices gave one name to different records: this one is listed
    /// under a derived name.
    Name,
}

/// A record's fields that wait for approval on this device (`vault
/// approve`).
#[derive(Debug, Serialize, Deserialize)]
pub struct ApprovalInfo {
    /// The record as listed.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: CredentialType,
    /// The revision the fields are shown at.
    pub revision: u64,
    /// The device that wrote that revision, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The fields not approved here yet (for `Approve`: those approved).
    pub fields: Vec<GatedField>,
}

/// One field that runs a program, writes a file or names an endpoint.
#[derive(Debug, Serialize, Deserialize)]
pub struct GatedField {
    /// The field.
    pub field: String,
    /// Its exact value: what would run, be written to or be reached.
    pub value: SecretValue,
    /// What this machine does with it.
    pub meaning: String,
}

/// One open conflict (`vault conflicts`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConflictInfo {
    /// The record as listed now.
    pub name: String,
    /// Edit or name.
    pub kind: ConflictKind,
    /// `edit`: the revision that lost, kept in history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// The record's current revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<u64>,
    /// The device that wrote the losing revision (`edit`) or the record's
    /// head (`name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// When the losing revision was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Timestamp>,
    /// `edit`: the losing revision was a deletion.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// `edit`: the winner deleted the record.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted_head: bool,
    /// `name`: the name it lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<String>,
}

/// Sync state within [`StatusInfo`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncStatus {
    /// The remote service, if logged in.
    pub server: Option<String>,
    /// Last successful sync.
    pub last_sync: Option<Timestamp>,
    /// Local changes not yet pushed.
    pub queued: u64,
    /// The last sync error.
    pub last_error: Option<String>,
    /// A pull under way: entries applied of those due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<SyncProgress>,
    /// Pulled entries refused (never applied) and what the last sync found
    /// the server hiding, each with what to do (issue 18).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// How far a pull is (drives the CLI's progress bar).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct SyncProgress {
    /// Entries applied so far.
    pub done: u64,
    /// Entries due in this pull.
    pub total: u64,
}
