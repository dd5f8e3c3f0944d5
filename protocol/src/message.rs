//! Requests and responses of the local protocol (docs/protocol.md).
//!
//! A connection starts with [`Request::Hello`]; after that a client may send
//! any number of requests, each with its own `id`, and the daemon answers each
//! with a [`ResponseFrame`] carrying the same `id` and either `ok` or `err`.
//!
//! ```text
//! {"id":1,"req":{"op":"get","name":"aws-dev"}}
//! {"id":1,"ok":{"kind":"record", ...}}
//! {"id":1,"err":{"code":"not_found","message":"..."}}
//! ```
//!
//! This file holds the frames, [`Request`] and [`Response`]; the types the
//! answers carry are in submodules by feature, all re-exported here:
//! `records` (list, get, history, status), `sync`, `publish`, `emit` and
//! `rotate`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::credential::CredentialType;
use crate::error::{ErrorCode, WireError};
use crate::secret::SecretValue;
use crate::timefmt::Timestamp;

mod emit;
mod publish;
mod records;
mod rotate;
mod sync;

pub use emit::*;
pub use publish::*;
pub use records::*;
pub use rotate::*;
pub use sync::*;

/// A request with its id.
#[derive(Debug, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Chosen by the client; echoed in the response.
    pub id: u64,
    /// The request.
    pub req: Request,
}

/// A response with the id of the request it answers. Exactly one of `ok` and
/// `err` is set. A frame the daemon could not parse is answered with id 0.
#[derive(Debug, Serialize, Deserialize)]
pub struct ResponseFrame {
    /// The id of the request this answers.
    pub id: u64,
    /// The answer, on success.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "fast_response::deserialize"
    )]
    pub ok: Option<Response>,
    /// The error, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err: Option<WireError>,
}

impl ResponseFrame {
    /// Wraps a result for request `id`.
    pub fn new(id: u64, result: Result<Response, WireError>) -> Self {
        match result {
            Ok(r) => Self {
                id,
                ok: Some(r),
                err: None,
            },
            Err(e) => Self {
                id,
                ok: None,
                err: Some(e),
            },
        }
    }

    /// The result this frame carries.
    pub fn into_result(self) -> Result<Response, WireError> {
        match (self.ok, self.err) {
            (_, Some(e)) => Err(e),
            (Some(r), None) => Ok(r),
            (None, None) => Err(WireError::new(
                ErrorCode::BadFrame,
                "empty response from vaultd",
            )),
        }
    }
}

/// Everything a client can ask of the daemon.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Must be the first request on a connection.
    Hello {
        /// [`crate::PROTOCOL_VERSION`] of the client.
        protocol: u32,
        /// [`crate::BUILD_VERSION`] of the client.
        build: String,
    },
    /// Daemon and vault state; never needs the vault unlocked.
    Status,
    /// Create the vault key and database; leaves the vault unlocked.
    Init {
        /// Encrypts `identity.age`.
        passphrase: SecretValue,
    },
    /// Decrypt the vault key into memory.
    Unlock {
        /// The vault passphrase.
        passphrase: SecretValue,
    },
    /// Forget the vault key now.
    Lock,
    /// Ask to be the one client that prompts the user for the passphrase.
    /// Answered by [`Response::PromptLease`].
    PromptLease,
    /// Wait until the vault is unlocked (by another client's prompt), at most
    /// `timeout_ms`. Answered by [`Response::Status`].
    WaitUnlocked {
        /// How long to wait.
        timeout_ms: u64,
    },
    /// Create a record.
    Add {
        /// The new record.
        record: NewRecord,
    },
    /// Create many records in one transaction (import, benchmarks).
    /// Fails as a whole if any name exists or any record is invalid.
    AddMany {
        /// The new records.
        records: Vec<NewRecord>,
    },
    /// Update fields or attributes of a record; makes a new revision.
    Set {
        /// The record.
        name: String,
        /// Fields to set (added or replaced).
        #[serde(default)]
        fields: BTreeMap<String, SecretValue>,
        /// Fields to remove.
        #[serde(default)]
        unset: Vec<String>,
        /// New description, when given.
        #[serde(default)]
        description: Option<String>,
        /// Replacement tag list, when given.
        #[serde(default)]
        tags: Option<Vec<String>>,
        /// New expiry: `Some(None)` clears it.
        #[serde(
            default,
            with = "double_option",
            skip_serializing_if = "Option::is_none"
        )]
        expires_at: Option<Option<Timestamp>>,
    },
    /// One record with its values.
    Get {
        /// The record.
        name: String,
    },
    /// The audit log (`vault audit`, docs/lifecycle.md): who was handed
    /// which value. Answered by [`Response::Audit`].
    Audit {
        /// Only this record's entries.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Only entries at or after this time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<Timestamp>,
        /// The next page: entries after this one (the last answer's `next`).
        /// The first page alone carries the check of the whole log. With
        /// `device` or `all_devices`: how many entries came before.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
        /// Only the entries of this device (its id, as `vault sync verify`
        /// and `vault audit --all-devices` show it), as
        /// synced from it (`[audit] sync`, docs/sync.md); this device's own
        /// id gives its local log.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        /// This device's entries and every synced device's, by time.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        all_devices: bool,
    },
    /// Checks credentials against their own services (`vault check`,
    /// docs/lifecycle.md): all of them when `names` is empty. Answered by
    /// [`Response::Checked`].
    Check {
        /// The records; empty: every record.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        names: Vec<String>,
        /// Each check's limit, in milliseconds (default 10 s).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// An OAuth2 access token minted from a `gcp` service-account key
    /// (`vault gcp token`, docs/gcp.md); cached by the daemon until 5
    /// minutes before it expires. Answered by [`Response::AccessToken`].
    GcpToken {
        /// The gcp credential.
        name: String,
        /// OAuth2 scopes; empty: `https://www.googleapis.com/auth/cloud-platform`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        scopes: Vec<String>,
    },
    /// A subject token for workload identity federation from a `gcp`
    /// issuer credential (`vault gcp subject-token`, the executable of an
    /// `external_account` file, docs/gcp.md): a short-lived JWT the daemon
    /// signs (ES256) with the credential's `issuer_key`, for the audience
    /// its `json` names. Answered by [`Response::AccessToken`].
    GcpSubjectToken {
        /// The gcp issuer credential.
        name: String,
    },
    /// A bearer token for an EKS cluster from an `aws` credential (`vault
    /// eks token`, docs/eks.md): `k8s-aws-v1.` and a presigned STS
    /// `GetCallerIdentity` URL that signs the cluster's name. Answered by
    /// [`Response::AccessToken`].
    EksToken {
        /// The aws credential.
        name: String,
        /// The cluster's name (signed as `x-k8s-aws-id`).
        cluster: String,
        /// The STS region; default: the record's `region`, else us-east-1
        /// (the global endpoint).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
    },
    /// An AWS console sign-in URL from an `aws` credential (`vault
    /// console`, docs/console.md): long-term keys are exchanged for a
    /// federation session first (STS `GetFederationToken`), then the
    /// sign-in endpoint's `getSigninToken` makes the URL. Answered by
    /// [`Response::AccessToken`] (`token`: the URL, good for 15 minutes).
    ConsoleUrl {
        /// The aws credential.
        name: String,
        /// Where the console opens; default: its home page (of `region`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        destination: Option<String>,
        /// The console's and STS's region; default: the record's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
        /// How long the console session lasts, seconds (15 min to 12 h;
        /// default 1 h).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_secs: Option<u64>,
    },
    /// Starts signing in an SSO credential (`vault sso login`,
    /// docs/sso.md): the daemon registers a client with IAM Identity
    /// Center when it has none, and starts a device authorization. Answered
    /// by [`Response::SsoDevice`]; then [`Request::SsoWait`].
    SsoLogin {
        /// The aws credential with `sso_start_url`.
        name: String,
    },
    /// Waits until the user approved the sign-in [`Request::SsoLogin`]
    /// started (the daemon polls `CreateToken`), keeps the session in the
    /// record and mints its role credentials. Answered by
    /// [`Response::Changed`]; fails when the code expires or is denied.
    SsoWait {
        /// The credential whose sign-in was started.
        name: String,
        /// The code `SsoLogin` answered: the wait is for that sign-in.
        user_code: String,
    },
    /// The accounts and roles the SSO session of `name` may use
    /// (`ListAccounts`, `ListAccountRoles`). Answered by
    /// [`Response::SsoRoles`].
    SsoRoles {
        /// A signed-in SSO credential.
        name: String,
    },
    /// Rotates a credential (`vault rotate`, docs/lifecycle.md). With no
    /// `fields`, an `aws` record gets a new access key from IAM, verified,
    /// stored and emitted, and its old key is deactivated and deleted;
    /// with `fields`, those values are replaced. Answered by
    /// [`Response::Rotated`].
    Rotate {
        /// The record.
        name: String,
        /// The new values (each field must exist already).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        fields: BTreeMap<String, SecretValue>,
        /// aws: how long the old key stays, inactive, before it is deleted,
        /// in seconds (default 0: at once).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grace_secs: Option<u64>,
        /// aws: how long to wait for IAM to let the new key in, in
        /// milliseconds (default 30 s).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verify_ms: Option<u64>,
        /// aws: finish a rotation that stopped part way (deactivate and
        /// delete the old key now, whatever the grace).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        finish: bool,
    },
    /// The current one-time code of a record's `otp` field (`vault otp`);
    /// the seed stays in the daemon. Answered by [`Response::Otp`].
    Otp {
        /// The record.
        name: String,
    },
    /// Words for a shell's Tab (docs/user-guide.md, "Completion"): the
    /// names of one kind that start with `prefix`, in order, at most
    /// [`COMPLETE_MAX`]. Never values. Answered by [`Response::Completions`].
    Complete {
        /// What to complete.
        what: Completable,
        /// What the user typed so far.
        #[serde(default)]
        prefix: String,
    },
    /// Several records with their values, all or none (`vault exec`).
    Resolve {
        /// The records, in the order wanted.
        names: Vec<String>,
    },
    /// Summaries of records; never values.
    List {
        /// Filters; all must match.
        #[serde(default)]
        filter: ListFilter,
        /// Start after this name: the `next` of the previous page.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
    },
    /// Delete a record (its history is kept).
    Remove {
        /// The record.
        name: String,
        /// Also when files are emitted from it (what the vault wrote there
        /// is taken out); without it such a record is refused.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
    },
    /// Give a record a new name.
    Rename {
        /// Current name.
        from: String,
        /// New name.
        to: String,
    },
    /// Revisions of a record.
    History {
        /// The record.
        name: String,
    },
    /// Make an old revision's values current again (as a new revision).
    Restore {
        /// The record.
        name: String,
        /// The revision to restore.
        revision: u64,
    },
    /// Keep an AWS shared-credentials file's `[profile]` section in sync
    /// with an aws credential (`vault emit aws`).
    EmitAws {
        /// The aws credential.
        name: String,
        /// The section (profile) to write.
        profile: String,
        /// The absolute path of the credentials file.
        path: String,
        /// Replace a section the vault did not write (a backup is kept).
        #[serde(default)]
        force: bool,
        /// `--process`: write `credential_process = PROGRAM aws-process
        /// NAME` under `[profile P]` of the config file at `path` instead of
        /// keys; this is the absolute path of `vault`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        process: Option<String>,
        /// With keys: the absolute path of the config file whose
        /// `[profile P]` gets the credential's `region` (`None`: no region
        /// is written, as before this field).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        config: Option<String>,
        /// `vault import aws --adopt`: with `process`, `path` is the
        /// shared-credentials file, and the user's `[P]` there (whose keys
        /// are now in the vault) is replaced by the vault's section with
        /// `credential_process`. No backup is kept by the daemon: the caller
        /// kept one of the file before.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        adopt: bool,
        /// `--sso`: the absolute path of the aws CLI's SSO token cache
        /// directory (`~/.aws/sso/cache`); `path` is then the config file,
        /// which gets `[profile P]` naming `[sso-session vault-S]` (S the
        /// record holding the session), and the cache the session's access
        /// token (docs/sso.md).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sso_cache: Option<String>,
    },
    /// Keep a whole file (a gcloud/ADC JSON key, a `file` credential's
    /// content) in sync with a credential (`vault emit gcloud|file`).
    EmitFile {
        /// The credential.
        name: String,
        /// `gcloud` or `file`.
        kind: String,
        /// The absolute path; for `file`, `None` means the credential's own
        /// `path` field.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        /// Replace a file the vault did not write (a backup is kept).
        #[serde(default)]
        force: bool,
        /// For `gcloud` from an issuer credential: this machine's `vault`
        /// program, which the written `external_account` file runs for
        /// subject tokens (`vault emit gcloud --external-account`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        program: Option<String>,
    },
    /// Keep a registry login in `~/.docker/config.json` (`auths`) in sync
    /// with a registry credential (`vault emit docker`).
    EmitDocker {
        /// The registry credential.
        name: String,
        /// The absolute path of the docker config file.
        path: String,
        /// Replace an entry the vault did not write (a backup is kept).
        #[serde(default)]
        force: bool,
        /// `--helper`: write `credHelpers[registry] = "vault"` (docker then
        /// asks `docker-credential-vault`) instead of the login in `auths`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        helper: bool,
        /// `vault import docker --adopt`: with `helper`, the user's
        /// `auths[registry]` entry (whose login is now in the vault) goes in
        /// the same write. The caller kept a backup of the file before.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        adopt: bool,
    },
    /// Keep a `users[]` entry of a kubeconfig that runs `vault eks token
    /// NAME …` (aws) or `vault gke token NAME …` (gcp) in sync with the
    /// credential (`vault emit kube`, docs/kube.md). It holds no secret.
    EmitKube {
        /// The aws or gcp credential.
        name: String,
        /// The absolute path of the kubeconfig.
        path: String,
        /// The `users[].name` to write (`None`: `vault-NAME`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// The absolute path of `vault`, which kubectl runs.
        program: String,
        /// aws: the EKS cluster's name (required).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cluster: Option<String>,
        /// aws: the cluster's region (`None`: the credential's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
        /// gcp: OAuth scopes (empty: the command's default).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        scopes: Vec<String>,
        /// Replace an entry the vault did not write (a backup is kept).
        #[serde(default)]
        force: bool,
    },
    /// Every emitted file binding.
    EmitList,
    /// Rewrite every emitted file that drifted from what the vault wrote.
    EmitRepair,
    /// Stop emitting; removes the vault's section from the file.
    EmitRemove {
        /// The binding's id (see `EmitList`).
        id: String,
        /// Leave what the binding wrote in the file, as the user's own
        /// (`vault import … --undo`); only the binding is forgotten.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        keep: bool,
    },
    /// Stop the daemon (locks first).
    Shutdown,
    /// Log in to a `vault-server` (docs/sync.md): the daemon checks the token by
    /// exchanging it for a JWT, then keeps it encrypted in the vault (or, on
    /// a device without a vault yet, in memory for `Join`). Answered by
    /// [`Response::LoggedIn`].
    Login {
        /// The server's base URL (`https://…`, or `http://` on loopback).
        url: String,
        /// The access token.
        token: SecretValue,
    },
    /// Starts signing in to a `vault-server` through the identity provider
    /// it trusts (`vault login URL --sso`, docs/sync.md): the daemon asks the
    /// server which IdP (`GET /api/v1/auth/oidc`), reads the IdP's discovery
    /// document and starts a device authorization (RFC 8628). Answered by
    /// [`Response::SsoDevice`]; then [`Request::LoginSsoWait`].
    LoginSso {
        /// The server's base URL (`https://…`, or `http://` on loopback).
        url: String,
    },
    /// Waits until the user approved the sign-in [`Request::LoginSso`]
    /// started (the daemon polls the IdP's token endpoint), then logs in
    /// as [`Request::Login`] does, keeping the IdP's refresh token encrypted
    /// in the vault. Answered by [`Response::LoggedIn`].
    LoginSsoWait {
        /// The server's base URL, as given to `LoginSso`.
        url: String,
        /// The code `LoginSso` answered: the wait is for that sign-in.
        user_code: String,
    },
    /// Create this device's copy of a vault kept on the server: downloads
    /// `identity.age`, opens it with the passphrase. Needs `Login` first.
    /// Answered by [`Response::Initialized`].
    Join {
        /// The vault id.
        vault_id: String,
        /// The vault passphrase.
        passphrase: SecretValue,
    },
    /// Push and pull now; answered by [`Response::Synced`].
    SyncNow,
    /// Open sync conflicts; answered by [`Response::Conflicts`].
    Conflicts,
    /// The fields waiting for approval on this device (docs/sync.md), of
    /// `names` or of every record when empty; answered by
    /// [`Response::Approvals`]. Approves nothing.
    Approvals {
        /// The records; empty: all.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        names: Vec<String>,
    },
    /// Approve, on this device, the gated fields of record `name` as they
    /// are at `revision` (the one [`Request::Approvals`] showed): refused
    /// with a conflict when the record changed since. Answered by
    /// [`Response::Approvals`] with what was approved.
    Approve {
        /// The record.
        name: String,
        /// The revision that was shown.
        revision: u64,
    },
    /// Compare this device's copy of every log with the server's; with
    /// `repair`, fetch what is missing here and push again what is missing
    /// there. Answered by [`Response::Verified`].
    SyncVerify {
        /// Fill the holes found.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        repair: bool,
    },
    /// Removes this device's shared audit log from the sync server (`vault
    /// sync unshare-audit`; refused while `[audit] sync` is on). Answered
    /// by [`Response::AuditUnshared`].
    AuditUnshare,
    /// Add a workload platform to publish to (issue 10). The daemon checks
    /// the access token by exchanging it, then keeps it encrypted in the
    /// vault. Answered by [`Response::Remotes`] with the one remote.
    RemoteAdd {
        /// Local name of the remote.
        name: String,
        /// The platform's kind.
        kind: RemoteKind,
        /// Its base URL.
        url: String,
        /// The platform access token.
        token: SecretValue,
        /// Replace the URL and token of an existing remote (its
        /// publications stay).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        replace: bool,
    },
    /// Every remote; answered by [`Response::Remotes`].
    RemoteList,
    /// Forget a remote. One with publications takes `force` (what was
    /// published stays on the platform). Answered by [`Response::Remotes`]
    /// with the remote as it was.
    RemoteRemove {
        /// The remote.
        name: String,
        /// Also when credentials are published to it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
    },
    /// Compare the platform's credentials with what is published to it
    /// (drift); answered by [`Response::RemoteReport`].
    RemoteStatus {
        /// The remote.
        name: String,
    },
    /// Bind a credential to a platform and push it (and again at every
    /// change). Answered by [`Response::Publications`] with the binding.
    Publish {
        /// The local credential.
        name: String,
        /// The remote.
        remote: String,
        /// The platform's name for it (default: `name`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        remote_name: Option<String>,
    },
    /// Push again what the platform is missing (drift) and retry failed
    /// publications; answered by [`Response::RemoteReport`].
    PublishRepair {
        /// The remote.
        remote: String,
    },
    /// Delete a credential from the platform(s) it is published to and
    /// drop the binding. Answered by [`Response::Publications`].
    Unpublish {
        /// The local credential.
        name: String,
        /// Only from this remote.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        remote: Option<String>,
    },
}

impl Request {
    /// Whether this request counts as activity for the idle-lock timer.
    ///
    /// This is the one place that decides it (docs/protocol.md). Only requests that
    /// use the unlocked key extend the session; status polls, handshakes and
    /// lock/unlock housekeeping never keep a vault unlocked.
    pub fn extends_idle(&self) -> bool {
        match self {
            Request::Add { .. }
            | Request::AddMany { .. }
            | Request::Set { .. }
            | Request::Get { .. }
            | Request::Otp { .. }
            | Request::GcpToken { .. }
            | Request::GcpSubjectToken { .. }
            | Request::EksToken { .. }
            | Request::ConsoleUrl { .. }
            | Request::SsoLogin { .. }
            | Request::SsoWait { .. }
            | Request::SsoRoles { .. }
            | Request::Check { .. }
            | Request::Rotate { .. }
            | Request::Audit { .. }
            | Request::Resolve { .. }
            | Request::List { .. }
            | Request::Remove { .. }
            | Request::Rename { .. }
            | Request::History { .. }
            | Request::Restore { .. }
            | Request::EmitAws { .. }
            | Request::EmitFile { .. }
            | Request::EmitDocker { .. }
            | Request::EmitKube { .. }
            | Request::EmitRepair
            | Request::EmitList
            | Request::EmitRemove { .. }
            | Request::Login { .. }
            | Request::LoginSso { .. }
            | Request::LoginSsoWait { .. }
            | Request::SyncNow
            | Request::SyncVerify { .. }
            | Request::AuditUnshare
            | Request::Conflicts
            | Request::Approvals { .. }
            | Request::Approve { .. }
            | Request::RemoteAdd { .. }
            | Request::RemoteList
            | Request::RemoteRemove { .. }
            | Request::RemoteStatus { .. }
            | Request::Publish { .. }
            | Request::PublishRepair { .. }
            | Request::Unpublish { .. } => true,
            Request::Hello { .. }
            | Request::Status
            | Request::Init { .. }
            | Request::Unlock { .. }
            | Request::Lock
            | Request::PromptLease
            | Request::WaitUnlocked { .. }
            | Request::Complete { .. }
            | Request::Join { .. }
            | Request::Shutdown => false,
        }
    }
}

/// The most words one [`Request::Complete`] answers with: more than a
/// shell shows usefully, few enough to stay inside a Tab's budget.
pub const COMPLETE_MAX: usize = 500;

/// What [`Request::Complete`] completes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "of", rename_all = "snake_case")]
pub enum Completable {
    /// Credential names.
    Credential,
    /// Tags in use.
    Tag,
    /// Remote (platform) names.
    Remote,
    /// Emitter (binding) ids, each with its credential and file as help.
    Emitter,
    /// The field names of one credential.
    Field {
        /// The credential.
        name: String,
    },
}

/// One word of a [`Response::Completions`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    /// The word.
    pub value: String,
    /// A short description the shell may show beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

/// A record to create.
#[derive(Debug, Serialize, Deserialize)]
pub struct NewRecord {
    /// Unique name (see [`crate::validate_name`]).
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: CredentialType,
    /// Field values.
    pub fields: BTreeMap<String, SecretValue>,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Tags for filtering.
    #[serde(default)]
    pub tags: Vec<String>,
    /// When the credential stops being valid.
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
}

/// Filters for [`Request::List`].
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ListFilter {
    /// Only this type.
    #[serde(default, rename = "type")]
    pub kind: Option<CredentialType>,
    /// Only records carrying this tag.
    #[serde(default)]
    pub tag: Option<String>,
    /// Only records expiring within this many seconds (not yet expired).
    #[serde(default)]
    pub expiring_within_secs: Option<u64>,
    /// Only expired records.
    #[serde(default)]
    pub expired: bool,
    /// Fill in each record's `last_used` from the audit log.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub used: bool,
}

/// Everything the daemon answers with.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Hello`].
    Hello {
        /// The daemon's protocol version.
        protocol: u32,
        /// The daemon's build version.
        build: String,
        /// The daemon's process id.
        pid: u32,
    },
    /// Success with nothing to report.
    Done,
    /// Answer to `Status`, `Unlock`, `Lock`, `WaitUnlocked`.
    Status(StatusInfo),
    /// Answer to `Init`.
    Initialized {
        /// New vault id.
        vault_id: String,
        /// The vault's age recipient (`age1…`).
        recipient: String,
    },
    /// Answer to `PromptLease`: `granted` means this client should prompt
    /// and then send `Unlock`; otherwise another client is prompting and
    /// this one should send `WaitUnlocked`.
    PromptLease {
        /// Whether this client holds the lease.
        granted: bool,
    },
    /// Answer to `Add`, `Set`, `Rename`, `Restore`, `Remove`.
    Changed(RecordSummary),
    /// Answer to `AddMany`.
    AddedMany {
        /// How many records were created.
        count: u64,
    },
    /// Answer to `Get`.
    Record(RecordView),
    /// Answer to `Audit`, oldest first.
    Audit {
        /// The entries asked for.
        entries: Vec<AuditEntry>,
        /// What the check of the whole log found wrong (an entry missing,
        /// changed or cut off); empty when it is whole. First page only.
        problems: Vec<String>,
        /// More entries follow: ask again with `after` = this.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<u64>,
    },
    /// Answer to `Check`, in name order.
    Checked {
        /// One per record asked.
        results: Vec<CheckResult>,
    },
    /// Answer to `GcpToken`, `GcpSubjectToken`, `EksToken` and `ConsoleUrl`.
    AccessToken {
        /// The bearer token.
        token: SecretValue,
        /// When it stops working.
        expires_at: Timestamp,
    },
    /// Answer to `SsoLogin`: where the user approves the sign-in.
    SsoDevice {
        /// The page to open (`https://device.sso.REGION.amazonaws.com/`).
        verification_uri: String,
        /// The same page with the code filled in, when given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verification_uri_complete: Option<String>,
        /// The code the user checks on that page.
        user_code: String,
        /// When the code stops working.
        expires_at: Timestamp,
        /// The identity provider signing in (`login_sso`: the issuer the
        /// server named, shown so the user sees whom they approve); left
        /// out for `sso_login`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        issuer: Option<String>,
    },
    /// Answer to `SsoRoles`, by account then role.
    SsoRoles {
        /// Every account and role the session may use.
        roles: Vec<SsoRole>,
    },
    /// Answer to `Rotate`.
    Rotated(RotateReport),
    /// Answer to `Otp`.
    Otp {
        /// The code, digits only.
        code: SecretValue,
        /// Seconds it holds from now.
        valid_for_secs: u64,
        /// Seconds each code holds.
        period_secs: u64,
    },
    /// Answer to `Complete`, in order.
    Completions {
        /// The words.
        items: Vec<Completion>,
    },
    /// Answer to `Resolve`, in the order asked.
    Resolved {
        /// The records with their values.
        records: Vec<RecordView>,
    },
    /// Answer to `List`.
    Records {
        /// Matching records, sorted by name: one page, which fits a frame.
        records: Vec<RecordSummary>,
        /// Set when more records follow: send the same `List` again with
        /// `after` set to this.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    /// Answer to `EmitAws`.
    Emitted(EmitterInfo),
    /// Answer to `EmitList`.
    Emitters {
        /// Every binding.
        emitters: Vec<EmitterInfo>,
    },
    /// Answer to `History`, newest first.
    History {
        /// The revisions.
        revisions: Vec<RevisionInfo>,
    },
    /// Answer to `Login`.
    LoggedIn {
        /// The server.
        server: String,
        /// The vault on it, when this device has one (`None`: run
        /// `vault init --join VAULT_ID` next).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vault_id: Option<String>,
    },
    /// Answer to `SyncNow`.
    Synced(SyncReport),
    /// Answer to `AuditUnshare`.
    AuditUnshared {
        /// The server.
        server: String,
        /// Segments this call removed.
        removed: u64,
        /// The server no longer holds this device's segments 1..=`through`.
        through: u64,
    },
    /// Answer to `SyncVerify`.
    Verified {
        /// One entry per device log, this device's first.
        logs: Vec<LogCheck>,
        /// Whether holes were filled (`repair`).
        repaired: bool,
    },
    /// Answer to `Conflicts`, newest first.
    Conflicts {
        /// The open conflicts.
        conflicts: Vec<ConflictInfo>,
    },
    /// Answer to `Approvals` and `Approve`, by name.
    Approvals {
        /// The records concerned and their gated fields.
        approvals: Vec<ApprovalInfo>,
    },
    /// Answer to `RemoteAdd`, `RemoteList`, `RemoteRemove`.
    Remotes {
        /// The remotes, by name.
        remotes: Vec<RemoteInfo>,
    },
    /// Answer to `Publish`, `Unpublish`.
    Publications {
        /// The bindings concerned.
        publications: Vec<PublicationInfo>,
    },
    /// Answer to `RemoteStatus`, `PublishRepair`.
    RemoteReport(RemoteReport),
}

/// Reads a `Response` without serde's buffering of internally tagged enums
/// when the tag comes first (as this crate writes it). Three answers are
/// parsed straight from the stream: a page of `list`, the one that can be
/// large (twice as fast), and `record` and `resolved`, which carry secret values
/// (they must not be copied into a `serde_json::Value` that is never
/// wiped). Anything else, or a tag that is not first, goes through the
/// derived implementation. A new answer that carries secrets belongs on the
/// direct path. The bytes on the wire are the same either way.
mod fast_response {
    use std::fmt;

    use serde::de::{self, MapAccess, Visitor};
    use serde::{Deserialize, Deserializer};

    use super::{RecordSummary, RecordView, Response};

    #[derive(Deserialize)]
    struct Resolved {
        records: Vec<RecordView>,
    }

    #[derive(Deserialize)]
    struct RecordsPage {
        records: Vec<RecordSummary>,
        #[serde(default)]
        next: Option<String>,
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Response>, D::Error> {
        Option::<Fast>::deserialize(d).map(|o| o.map(|Fast(r)| r))
    }

    struct Fast(Response);

    impl<'de> Deserialize<'de> for Fast {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(FastVisitor).map(Fast)
        }
    }

    struct FastVisitor;

    impl<'de> Visitor<'de> for FastVisitor {
        type Value = Response;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a response object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Response, A::Error> {
            let mut seen = serde_json::Map::new();
            if let Some(key) = map.next_key::<String>()? {
                let value: serde_json::Value = map.next_value()?;
                if key == "kind" && value == "records" {
                    let page =
                        RecordsPage::deserialize(de::value::MapAccessDeserializer::new(map))?;
                    return Ok(Response::Records {
                        records: page.records,
                        next: page.next,
                    });
                }
                if key == "kind" && value == "record" {
                    let view = RecordView::deserialize(de::value::MapAccessDeserializer::new(map))?;
                    return Ok(Response::Record(view));
                }
                if key == "kind" && value == "resolved" {
                    let resolved =
                        Resolved::deserialize(de::value::MapAccessDeserializer::new(map))?;
                    return Ok(Response::Resolved {
                        records: resolved.records,
                    });
                }
                seen.insert(key, value);
            }
            while let Some((key, value)) = map.next_entry::<String, serde_json::Value>()? {
                seen.insert(key, value);
            }
            Response::deserialize(serde_json::Value::Object(seen)).map_err(de::Error::custom)
        }
    }
}

mod double_option {
    //! `Option<Option<T>>` where a present `null` means "clear".
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(
        value: &Option<Option<T>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            None => serializer.serialize_none(),
            Some(inner) => inner.serialize(serializer),
        }
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(deserializer).map(Some)
    }
}
