//! Emitted files and their state (docs/emit.md).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A file the vault keeps in sync with a credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmitterInfo {
    /// Binding id, for `vault emit rm`.
    pub id: String,
    /// The credential's name (`None` when it was deleted).
    pub name: Option<String>,
    /// What it writes.
    #[serde(rename = "type")]
    pub kind: EmitterKind,
    /// The file.
    pub path: String,
    /// The section in it.
    pub section: String,
    /// Whether the file holds what the vault wrote.
    pub state: EmitState,
}

/// What kind of file a binding writes (docs/emit.md). On the wire, in
/// `vault.db` and in `vault emit list --json` it is the string users have
/// always read (`aws`, `aws-process`, `gcloud`, `docker`, `docker-helper`,
/// `file`, `kube` from schema 11, `aws-sso` and `aws-sso-token` from
/// schema 12): the typed value changed no byte of the protocol. A new kind
/// needs a new schema version of `vault.db`, so an older build never meets
/// one it does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EmitterKind {
    /// A profile of `~/.aws/credentials` with the keys.
    Aws,
    /// A profile of `~/.aws/config` with `credential_process`.
    AwsProcess,
    /// A gcloud / ADC JSON file.
    Gcloud,
    /// An `auths` entry of `~/.docker/config.json`.
    Docker,
    /// A `credHelpers` entry of `~/.docker/config.json` naming `vault`.
    DockerHelper,
    /// A whole file with a `file` credential's content.
    File,
    /// A `users[]` entry of a kubeconfig running `vault eks|gke token`.
    Kube,
    /// A section of `~/.aws/config` for the aws CLI's own SSO: `[profile
    /// P]` naming an `sso_session`, account and role, or that `[sso-session
    /// vault-S]` with the portal (docs/sso.md). No secret.
    AwsSso,
    /// The aws CLI's SSO token cache file
    /// (`~/.aws/sso/cache/SHA1.json`): the session's access token only.
    AwsSsoToken,
}

impl EmitterKind {
    /// Every kind.
    pub const ALL: [EmitterKind; 9] = [
        EmitterKind::Aws,
        EmitterKind::AwsProcess,
        EmitterKind::Gcloud,
        EmitterKind::Docker,
        EmitterKind::DockerHelper,
        EmitterKind::File,
        EmitterKind::Kube,
        EmitterKind::AwsSso,
        EmitterKind::AwsSsoToken,
    ];

    /// Its string.
    pub fn as_str(self) -> &'static str {
        match self {
            EmitterKind::Aws => "aws",
            EmitterKind::AwsProcess => "aws-process",
            EmitterKind::Gcloud => "gcloud",
            EmitterKind::Docker => "docker",
            EmitterKind::DockerHelper => "docker-helper",
            EmitterKind::File => "file",
            EmitterKind::Kube => "kube",
            EmitterKind::AwsSso => "aws-sso",
            EmitterKind::AwsSsoToken => "aws-sso-token",
        }
    }

    /// The kind spelled `text`, if any.
    pub fn parse(text: &str) -> Option<EmitterKind> {
        EmitterKind::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// It writes an entry of `~/.docker/config.json`.
    pub fn is_docker(self) -> bool {
        matches!(self, EmitterKind::Docker | EmitterKind::DockerHelper)
    }

    /// It writes a `users[]` entry of a kubeconfig.
    pub fn is_kube(self) -> bool {
        self == EmitterKind::Kube
    }

    /// It owns its whole file.
    pub fn is_whole_file(self) -> bool {
        matches!(
            self,
            EmitterKind::Gcloud | EmitterKind::File | EmitterKind::AwsSsoToken
        )
    }

    /// What it writes is a pointer at the vault, never a secret: nothing to
    /// take out when the credential expires.
    pub fn points_at_vault(self) -> bool {
        matches!(
            self,
            EmitterKind::AwsProcess
                | EmitterKind::DockerHelper
                | EmitterKind::Kube
                | EmitterKind::AwsSso
        )
    }
}

impl fmt::Display for EmitterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the vault removed from an emitted file when its credential expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// Its section (`~/.aws/credentials`, gcloud's config).
    Section,
    /// The whole file (a token or ADC file).
    File,
    /// Its entry (`~/.docker/config.json`).
    Entry,
}

impl Removed {
    fn as_str(self) -> &'static str {
        match self {
            Removed::Section => "section",
            Removed::File => "file",
            Removed::Entry => "entry",
        }
    }
}

/// How an emitted file stands against what the vault would write now.
///
/// On the wire and in `vault emit list --json` it is the one string users
/// and scripts have always read (`ok`, `drifted`, `expired (section
/// removed)`, `error: …`): [`fmt::Display`] writes it and
/// [`EmitState::parse`] is the one place that reads it back, so neither the
/// daemon nor the CLI compares strings. A state from a newer daemon that
/// this build does not know is [`EmitState::Other`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmitState {
    /// The file holds exactly what the vault wrote.
    Ok,
    /// Someone changed the vault's section or file.
    Drifted,
    /// The section or the file is gone.
    Missing,
    /// The credential expired and the vault took its part out.
    Expired(Removed),
    /// The credential was deleted; the binding remains.
    CredentialDeleted,
    /// The credential could not be decrypted.
    CredentialUnreadable,
    /// The file could not be read (the reason, no content).
    Unreadable(String),
    /// The file could not be parsed (the parser's reason, no content).
    Error(String),
    /// The binding was just removed (`vault emit rm`).
    Removed,
    /// A state this build does not know, as the daemon wrote it.
    Other(String),
}

impl EmitState {
    /// Whether the user has to act: not `ok`, not an expiry the vault
    /// handled itself, not a binding that is gone.
    pub fn needs_attention(&self) -> bool {
        !matches!(
            self,
            EmitState::Ok | EmitState::Expired(_) | EmitState::Removed
        )
    }

    /// Reads the wire form back ([`fmt::Display`] writes it).
    pub fn parse(text: &str) -> EmitState {
        let expired = |what: Removed| format!("expired ({} removed)", what.as_str());
        match text {
            "ok" => EmitState::Ok,
            "drifted" => EmitState::Drifted,
            "missing" => EmitState::Missing,
            "credential deleted" => EmitState::CredentialDeleted,
            "credential unreadable" => EmitState::CredentialUnreadable,
            "removed" => EmitState::Removed,
            _ => {
                if let Some(what) = [Removed::Section, Removed::File, Removed::Entry]
                    .into_iter()
                    .find(|w| text == expired(*w))
                {
                    EmitState::Expired(what)
                } else if let Some(reason) = text.strip_prefix("unreadable: ") {
                    EmitState::Unreadable(reason.to_owned())
                } else if let Some(reason) = text.strip_prefix("error: ") {
                    EmitState::Error(reason.to_owned())
                } else {
                    EmitState::Other(text.to_owned())
                }
            }
        }
    }
}

impl fmt::Display for EmitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmitState::Ok => f.write_str("ok"),
            EmitState::Drifted => f.write_str("drifted"),
            EmitState::Missing => f.write_str("missing"),
            EmitState::Expired(what) => write!(f, "expired ({} removed)", what.as_str()),
            EmitState::CredentialDeleted => f.write_str("credential deleted"),
            EmitState::CredentialUnreadable => f.write_str("credential unreadable"),
            EmitState::Unreadable(reason) => write!(f, "unreadable: {reason}"),
            EmitState::Error(reason) => write!(f, "error: {reason}"),
            EmitState::Removed => f.write_str("removed"),
            EmitState::Other(text) => f.write_str(text),
        }
    }
}

impl Serialize for EmitState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EmitState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ok(EmitState::parse(&text))
    }
}
