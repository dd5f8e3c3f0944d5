//! Rotation (`vault rotate`, docs/lifecycle.md): what each step did, and
//! every file and platform the new value reached.

use serde::{Deserialize, Serialize};

use super::{AuditProcess, EmitterInfo, PublicationInfo};
use crate::credential::CredentialType;

/// Answer to a rotation: the steps in the order they ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotateReport {
    /// The record.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: CredentialType,
    /// Every step is done. When not, `next` says how to finish or undo,
    /// and the CLI exits 1.
    pub complete: bool,
    /// What was done, step by step.
    pub steps: Vec<RotateStep>,
    /// The revision that holds the value in use now.
    pub revision: u64,
    /// aws: the access key id the credential holds now (the live key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_key: Option<String>,
    /// aws: the access key id it held before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_key: Option<String>,
    /// The credential's emitted files, as they stand after the rotation.
    #[serde(default)]
    pub files: Vec<EmitterInfo>,
    /// Its publications, as they stand after the rotation.
    #[serde(default)]
    pub publications: Vec<PublicationInfo>,
    /// `vault exec` processes (from the audit log) that were handed the
    /// old value and still run: they keep it until restarted.
    #[serde(default)]
    pub running: Vec<AuditProcess>,
    /// What to run next: how to finish or undo a rotation that stopped, or
    /// when a pending step happens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One step of a rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateStep {
    /// `check`, `create`, `store`, `verify`, `file`, `publish`,
    /// `deactivate`, `delete`, `undo`, `set`.
    pub step: String,
    /// How it went.
    pub outcome: StepOutcome,
    /// What happened (key ids, paths, what a service said; never a value).
    pub detail: String,
}

/// How a rotation step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// Done.
    Ok,
    /// Tried and failed.
    Failed,
    /// Not tried (an earlier step failed, or nothing to do).
    Skipped,
    /// To be done later (the old key's deletion after `--grace`).
    Pending,
}

impl StepOutcome {
    /// The word the CLI shows.
    pub fn as_str(self) -> &'static str {
        match self {
            StepOutcome::Ok => "ok",
            StepOutcome::Failed => "failed",
            StepOutcome::Skipped => "skipped",
            StepOutcome::Pending => "pending",
        }
    }
}

impl RotateStep {
    /// A step with its outcome.
    pub fn new(step: &str, outcome: StepOutcome, detail: impl Into<String>) -> Self {
        Self {
            step: step.to_owned(),
            outcome,
            detail: detail.into(),
        }
    }
}
