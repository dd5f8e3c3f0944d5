//! Records and the vault's status as `list`, `get`, `history` and `status` show them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{EmitterInfo, RemoteInfo, SyncStatus};
use crate::credential::CredentialType;
use crate::secret::SecretValue;
use crate::timefmt::Timestamp;

/// Daemon and vault state (`vault status`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusInfo {
    /// Whether `vault init` has been run.
    pub initialized: bool,
    /// The vault's id, once initialized.
    pub vault_id: Option<String>,
    /// Whether the key is out of memory.
    pub locked: bool,
    /// The daemon's pid.
    pub daemon_pid: u32,
    /// The socket the daemon serves.
    pub socket: String,
    /// Number of live records (known only while unlocked).
    pub records: Option<u64>,
    /// When the vault locks itself if left idle (while unlocked).
    pub idle_lock_at: Option<Timestamp>,
    /// When the vault locks itself regardless of activity (while unlocked).
    pub hard_lock_at: Option<Timestamp>,
    /// Records expiring within the next hour, or expired (while unlocked).
    #[serde(default)]
    pub expiring: Vec<RecordSummary>,
    /// Sync state (docs/user-guide.md); `server` is null until `vault login`.
    pub sync: SyncStatus,
    /// Workload platforms published to (issue 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remotes: Vec<RemoteInfo>,
    /// Emitted files that need attention: drifted (changed by someone
    /// else), missing, or unreadable, as last seen by the daemon's watch.
    #[serde(default)]
    pub emitters: Vec<EmitterInfo>,
    /// Records whose last refresh failed (docs/refresh.md); the daemon keeps
    /// serving their still-valid value and retries after `retry_at`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refresh: Vec<RefreshInfo>,
    /// Records whose last `vault check`, of their current value, failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_checks: Vec<FailedCheck>,
    /// Key rotations not finished yet (`vault rotate`): an old key still
    /// to be deactivated or deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rotations: Vec<PendingRotation>,
}

/// An unfinished key rotation, within [`StatusInfo`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingRotation {
    /// The record.
    pub name: String,
    /// The key it holds now.
    pub live_key: String,
    /// The key still to be taken away.
    pub old_key: String,
    /// `deactivate` (it may still be active), `delete` (it is inactive),
    /// `reactivate` (the record holds it again, and it may be inactive)
    /// or `ended` (vaultd ended the rotation; `error` says what is left
    /// to do by hand).
    pub stage: String,
    /// When vaultd deletes it (`delete`), or since when it waits
    /// (`deactivate`: only `vault rotate NAME --finish` goes on).
    pub due_at: Timestamp,
    /// Why the last try failed, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A record whose last check failed, within [`StatusInfo`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailedCheck {
    /// The record.
    pub name: String,
    /// When it was checked.
    pub checked_at: Timestamp,
    /// Why it failed (never a secret value).
    pub detail: String,
}

/// A record whose refresh is failing, within [`StatusInfo`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshInfo {
    /// The record.
    pub name: String,
    /// Why the last attempt failed (never a secret value).
    pub error: String,
    /// Attempts failed in a row.
    pub failures: u32,
    /// When the next attempt may run.
    pub retry_at: Timestamp,
    /// When the current value expires.
    pub expires_at: Option<Timestamp>,
}

/// The state shown in `list`'s STATUS column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordState {
    /// Valid, more than an hour left (or no expiry).
    Ok,
    /// Under an hour left.
    Expiring,
    /// Past its expiry.
    Expired,
    /// Changed locally, not yet synced.
    PendingSync,
    /// A sync conflict is recorded.
    Conflict,
    /// An emitted file no longer matches.
    Drifted,
    /// A platform refused this credential when it was published.
    PublishFailed,
    /// Its last `vault check` failed.
    CheckFailed,
}

/// The last `vault check` of a record, as `list --json` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckMark {
    /// When it ran.
    pub at: Timestamp,
    /// Whether the service accepted the credential.
    pub ok: bool,
}

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckOutcome {
    /// The service accepted the credential.
    Ok,
    /// It refused it, or could not be asked.
    Failed,
    /// Nothing to ask: no check for this type, or no endpoint to ask.
    Skipped,
}

/// One record's check (`vault check`). `detail` never holds a secret:
/// what the service says the credential is (account and ARN, a user), or
/// why it failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckResult {
    /// The record.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: CredentialType,
    /// What the check found.
    pub outcome: CheckOutcome,
    /// What the service said, or why it failed or was skipped.
    pub detail: String,
    /// When it ran.
    pub checked_at: Timestamp,
    /// How long it took, in milliseconds.
    pub elapsed_ms: u64,
}

/// A record without its values.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordSummary {
    /// Name.
    pub name: String,
    /// Type.
    #[serde(rename = "type")]
    pub kind: CredentialType,
    /// Description.
    pub description: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
    /// Expiry.
    pub expires_at: Option<Timestamp>,
    /// Whether `expires_at` has passed.
    pub expired: bool,
    /// STATUS column.
    pub state: RecordState,
    /// Current revision number.
    pub revision: u64,
    /// Its last `vault check`, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked: Option<CheckMark>,
    /// Its last hand-out in the audit log (asked for with `used`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<LastUse>,
}

/// A record's last hand-out, as `vault list --used` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastUse {
    /// When.
    pub at: Timestamp,
    /// The request (`get`, `resolve`…).
    pub op: String,
    /// The client's command line.
    pub by: String,
}

/// A record with its values (`vault get`).
#[derive(Debug, Serialize, Deserialize)]
pub struct RecordView {
    /// Name.
    pub name: String,
    /// Type.
    #[serde(rename = "type")]
    pub kind: CredentialType,
    /// Field values.
    pub fields: BTreeMap<String, SecretValue>,
    /// Description.
    pub description: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
    /// Expiry.
    pub expires_at: Option<Timestamp>,
    /// Whether `expires_at` has passed.
    pub expired: bool,
    /// Current revision number.
    pub revision: u64,
}

/// One revision in a record's history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevisionInfo {
    /// Revision number, from 1.
    pub revision: u64,
    /// When it was written.
    pub updated_at: Timestamp,
    /// The device that wrote it.
    pub device: String,
    /// What the change was: `add`, `set`, `rename`, `restore`, `remove`.
    pub change: String,
}

/// A process, as the audit log saw it (from `/proc`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditProcess {
    /// Its pid.
    pub pid: u32,
    /// Its executable, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// Its command line, arguments joined by spaces (cut at 512 bytes).
    #[serde(default)]
    pub cmdline: String,
}

/// One value handed out (`vault audit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its place in the log, from 1.
    pub seq: u64,
    /// When.
    pub at: Timestamp,
    /// The record's name now (`None`: deleted since).
    pub name: Option<String>,
    /// What handed it out: the request (`get`, `resolve`, `otp`,
    /// `emit_aws`…).
    pub op: String,
    /// The client's uid.
    pub uid: u32,
    /// The client process.
    pub client: AuditProcess,
    /// Its parent, grandparent and great-grandparent, as far as they exist.
    #[serde(default)]
    pub parents: Vec<AuditProcess>,
    /// The device whose log holds it, when asked for other devices'
    /// entries (`vault audit --all-devices`); `seq` is its place there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// One account and role an IAM Identity Center session may use (`vault
/// sso roles`, docs/sso.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SsoRole {
    /// The 12-digit account id.
    pub account_id: String,
    /// The account's name in the portal.
    pub account_name: String,
    /// The role (the permission set's).
    pub role_name: String,
}
