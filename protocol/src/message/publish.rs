//! Workload platforms: remotes and what is published to them (docs/publish.md).

use serde::{Deserialize, Serialize};

/// The kind of a workload platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RemoteKind {
    /// NVIDIA OSMO's credential service.
    Osmo,
}

impl RemoteKind {
    /// Every kind this build knows.
    pub const ALL: [RemoteKind; 1] = [RemoteKind::Osmo];

    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            RemoteKind::Osmo => "osmo",
        }
    }

    /// The kind named `name`; `None` for one this build does not know (a
    /// newer vault's), which is never taken for another.
    pub fn parse(name: &str) -> Option<RemoteKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// A workload platform the vault publishes to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteInfo {
    /// Local name.
    pub name: String,
    /// Its kind.
    pub kind: RemoteKind,
    /// Its base URL.
    pub url: String,
    /// Credentials bound to it.
    pub published: u64,
    /// Publications waiting to go out (changes, deletes, retries).
    pub queued: u64,
    /// Publications the platform refused (see `attention`).
    pub failed: u64,
    /// The last error talking to it (unreachable, 5xx); cleared by a
    /// successful call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What the platform said about the access token (it warns within 7
    /// days of its expiry), or that it has expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_warning: Option<String>,
    /// The platform refused the access token as expired.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub token_expired: bool,
    /// Publications that are not simply published: queued, refused,
    /// missing on the platform.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attention: Vec<PublicationInfo>,
}

/// Where a publication stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PublishState {
    /// The platform holds the credential's current revision.
    Published,
    /// A push (first, changed, or retried) is waiting to go out.
    Pending,
    /// The platform refused it (4xx); `error` has its message. Retried at
    /// the next change or `vault publish --repair`.
    Failed,
    /// Deleted on the platform for an update whose create has not gone
    /// through yet: the platform is missing it until it does.
    Missing,
    /// `unpublish` (or `rm`) is waiting to delete it on the platform.
    Unpublishing,
}

/// One credential bound to one remote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublicationInfo {
    /// The remote.
    pub remote: String,
    /// The platform's name for it.
    pub remote_name: String,
    /// The local credential (`None` once it was deleted).
    pub name: Option<String>,
    /// `REGISTRY`, `DATA` or `GENERIC`.
    pub cred_type: String,
    /// Where it stands.
    pub state: PublishState,
    /// The platform's message for a refusal, or the last retryable error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The local revision the platform holds, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_revision: Option<u64>,
}

/// A credential on the platform (names and kinds only: it never returns
/// values).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteCredential {
    /// Its name.
    pub name: String,
    /// `REGISTRY`, `DATA` or `GENERIC`.
    pub cred_type: String,
    /// The registry scope or storage endpoint.
    #[serde(default)]
    pub profile: String,
}

/// `vault remote status`: the remote, its publications, and drift.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteReport {
    /// The remote.
    pub remote: RemoteInfo,
    /// Every publication to it.
    pub publications: Vec<PublicationInfo>,
    /// Published names the platform does not have.
    pub missing: Vec<String>,
    /// Credentials on the platform that the vault did not publish.
    pub unknown: Vec<RemoteCredential>,
    /// Pushed again by `publish --repair`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repaired: Vec<String>,
}
