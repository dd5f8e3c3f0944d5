//! The vault engine: every request's logic, synchronous and free of sockets,
//! so it can be tested directly. It owns the store, the unlocked key and the
//! in-memory index of record metadata that makes `list` and `status` cheap.
//!
//! It must never log a record name or a value: logs name records by id.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::Duration;

use tracing::{info, warn};
use vault_protocol::credential::{is_sso_session, refreshes_itself, validate_fields, validate_tag};
use vault_protocol::message::{
    ListFilter, NewRecord, RecordState, RecordSummary, RecordView, RevisionInfo, StatusInfo,
    SyncStatus,
};
use vault_protocol::paths::VaultPaths;
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{CredentialType, ErrorCode, SecretValue, WireError, validate_name};

use crate::config::Config;
use crate::crypto::{KeyError, VaultKey};
use crate::record::{BODY_VERSION, RecordBody};
use crate::store::{self, RecordRow, Store, StoreError};

mod approve;
pub mod audit;
pub mod audit_sync;
pub mod aws_keys;
pub mod checks;
mod complete;
mod emitters;
pub use emitters::{AwsTarget, KubeTarget};
pub mod publish;
pub mod refresh;
pub mod rotate;
mod snapshot;
mod sso_files;
pub mod sync;
mod wif_file;

type Result<T> = std::result::Result<T, WireError>;

/// The JSON budget of one `list` page, well under the 1 MiB frame limit.
const LIST_PAGE_BYTES: usize = 768 * 1024;

/// Under this much time left, a record shows as `expiring`.
pub const EXPIRING_WINDOW: Duration = Duration::from_secs(3600);

fn err(code: ErrorCode, msg: impl Into<String>) -> WireError {
    WireError::new(code, msg)
}

fn store_err(e: StoreError) -> WireError {
    match e {
        StoreError::NameTaken => err(
            ErrorCode::AlreadyExists,
            "a credential with that name exists",
        ),
        StoreError::Damaged(m) => err(ErrorCode::Failed, m),
        StoreError::Full => err(
            ErrorCode::Failed,
            "the disk holding vault.db is full: nothing was saved and every earlier change is \
             kept; free some space and run the command again",
        ),
        StoreError::Sqlite(e) => err(ErrorCode::Internal, format!("database error: {e}")),
    }
}

fn not_found(name: &str) -> WireError {
    err(
        ErrorCode::NotFound,
        format!("no credential named '{name}': see 'vault list'"),
    )
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS random source failed");
    hex::encode(buf)
}

/// IAM Credentials, where a gcp key asks to act as its record's
/// `impersonate` account, unless `config.toml` names another.
pub const GCP_IAM_ENDPOINT: &str = "https://iamcredentials.googleapis.com";

/// What `vault gcp token` mints from (`Engine::gcp_key`); `Debug` shows
/// no key.
#[derive(Debug)]
pub struct GcpKey {
    /// The record's id.
    pub id: String,
    /// Its revision.
    pub revision: u64,
    /// The service-account key JSON.
    pub json: SecretValue,
    /// The service account to act as (`impersonate`), if any.
    pub impersonate: Option<String>,
    /// For an issuer credential: its `issuer` and `issuer_key`.
    pub issuer: Option<(String, SecretValue)>,
}

/// What the index keeps of a live record: enough for list/status, no values.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    /// Record id.
    pub id: String,
    /// Type.
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
    /// Current revision.
    pub revision: u64,
    /// Has a `refresh_command` (docs/refresh.md).
    pub refresh: bool,
    /// Has a field that runs, writes or reaches out: used only once its
    /// value is approved here ([`approve`]).
    pub gated: bool,
    /// Lacks a required field (a refreshable record not minted yet).
    pub incomplete: bool,
    /// How the head ranks against concurrent revisions: its sync stamp's
    /// clock and device ([`crate::record::Rank::default`] before sync).
    pub rank: crate::record::Rank,
    /// For a record that lost its name to a concurrent one (docs/sync.md): the
    /// name it claims; it is listed under [`sync::derived_name`].
    pub claims: Option<String>,
    /// SHA-256 of the ciphertext it was read from (the index snapshot's
    /// check).
    pub digest: [u8; 32],
}

/// Name → entry, for every live record.
pub type Index = BTreeMap<String, IndexEntry>;

/// The unlocked state: key, index, deadlines.
#[derive(Debug)]
struct Session {
    key: VaultKey,
    index: Index,
    /// Name → ids of the records that claim it but lost it (listed under
    /// derived names).
    claims: BTreeMap<String, std::collections::BTreeSet<String>>,
    idle_deadline: Timestamp,
    hard_deadline: Timestamp,
    /// The snapshot on disk does not match the index: write it at lock.
    snapshot_stale: bool,
    /// The store's change count when the index was installed: any write
    /// since makes the snapshot stale too.
    changes_at_install: u64,
}

/// The vault's state, which decides what can run: nothing but `init` with no
/// vault, nothing that needs the key while it is locked. One value in place
/// of two `Option`s that could disagree.
#[derive(Debug)]
enum Vault {
    /// No `vault.db` yet: `vault init` makes one.
    Uninitialized,
    /// The database is open; the key is not in memory.
    Locked(Store),
    /// The key is open and the index built.
    Unlocked(Store, Box<Session>),
}

impl Vault {
    fn store(&self) -> Option<&Store> {
        match self {
            Self::Uninitialized => None,
            Self::Locked(store) | Self::Unlocked(store, _) => Some(store),
        }
    }

    fn store_mut(&mut self) -> Option<&mut Store> {
        match self {
            Self::Uninitialized => None,
            Self::Locked(store) | Self::Unlocked(store, _) => Some(store),
        }
    }

    fn session(&self) -> Option<&Session> {
        match self {
            Self::Unlocked(_, session) => Some(session.as_ref()),
            _ => None,
        }
    }

    fn session_mut(&mut self) -> Option<&mut Session> {
        match self {
            Self::Unlocked(_, session) => Some(session.as_mut()),
            _ => None,
        }
    }

    /// Both halves of an unlocked vault, to change the store and the index
    /// together.
    fn parts_mut(&mut self) -> Option<(&mut Store, &mut Session)> {
        match self {
            Self::Unlocked(store, session) => Some((store, session.as_mut())),
            _ => None,
        }
    }

    /// Unlocked → locked. Returns the session it held (the key and index,
    /// zeroized when dropped).
    fn lock(&mut self) -> Option<Session> {
        match std::mem::replace(self, Self::Uninitialized) {
            Self::Unlocked(store, session) => {
                *self = Self::Locked(store);
                Some(*session)
            }
            other => {
                *self = other;
                None
            }
        }
    }

    /// Locked → unlocked with `session`. With no vault there is nothing to
    /// unlock: `false`.
    fn unlock(&mut self, session: Session) -> bool {
        match std::mem::replace(self, Self::Uninitialized) {
            Self::Locked(store) | Self::Unlocked(store, _) => {
                *self = Self::Unlocked(store, Box::new(session));
                true
            }
            Self::Uninitialized => false,
        }
    }
}

/// Derives a record's STATUS from its expiry.
pub fn state_of(expires_at: Option<Timestamp>, now: Timestamp) -> RecordState {
    match expires_at {
        Some(t) if t <= now => RecordState::Expired,
        Some(t) if t.unix() - now.unix() < EXPIRING_WINDOW.as_secs() as i64 => {
            RecordState::Expiring
        }
        _ => RecordState::Ok,
    }
}

impl IndexEntry {
    /// An upper bound on the JSON size of this record's summary. Names and
    /// tags never need escaping; a description byte escapes to at most six.
    /// The keys, type, state, timestamps and revision take under 300 bytes.
    fn listed_size(&self, name: &str) -> usize {
        let description = self.description.as_ref().map_or(0, String::len);
        let tags: usize = self.tags.iter().map(|t| t.len() + 3).sum();
        name.len() + 6 * description + tags + 300
    }

    /// Whether this record refreshes itself and is due for it
    /// ([`crate::engine::refresh::due`]).
    pub fn refresh_due(&self, ahead: std::time::Duration, now: Timestamp) -> bool {
        self.refresh
            && crate::engine::refresh::due(
                self.incomplete,
                self.updated_at,
                self.expires_at,
                ahead,
                now,
            )
    }

    fn summary(&self, name: &str, now: Timestamp) -> RecordSummary {
        let state = state_of(self.expires_at, now);
        RecordSummary {
            name: name.to_owned(),
            kind: self.kind,
            description: self.description.clone(),
            tags: self.tags.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            expires_at: self.expires_at,
            expired: state == RecordState::Expired,
            state,
            revision: self.revision,
            checked: None,
            last_used: None,
        }
    }

    fn from_parts(row: &RecordRow, body: &RecordBody) -> Self {
        Self::digested(row, body, snapshot::digest(&row.body))
    }

    /// [`IndexEntry::from_parts`] for a row whose ciphertext digest is
    /// known already (unlock computed it).
    fn digested(row: &RecordRow, body: &RecordBody, digest: [u8; 32]) -> Self {
        Self {
            id: row.id.clone(),
            kind: body.kind,
            description: body.description.clone(),
            tags: body.tags.clone(),
            created_at: Timestamp(row.created_at),
            updated_at: Timestamp(row.updated_at),
            expires_at: body.expires_at,
            revision: row.revision,
            // An SSO session only holds a sign-in: nothing to mint.
            refresh: refreshes_itself(|f| body.fields.contains_key(f))
                && !is_sso_session(|f| body.fields.contains_key(f)),
            gated: approve::has_gated(body),
            incomplete: body
                .kind
                .fields()
                .iter()
                .any(|f| f.required && body.fields.get(f.name).is_none_or(|v| v.is_empty())),
            rank: body
                .sync
                .as_ref()
                .map(crate::record::Stamp::rank)
                .unwrap_or_default(),
            claims: row.shadowed.then(|| body.name.clone()),
            digest,
        }
    }

    /// The name it is listed under.
    fn listed_name(&self, body_name: &str) -> String {
        match &self.claims {
            Some(n) => sync::derived_name(n, &self.id),
            None => body_name.to_owned(),
        }
    }
}

impl Drop for Engine {
    /// A daemon that stops leaves an up-to-date snapshot behind.
    fn drop(&mut self) {
        self.lock("vaultd stopping");
    }
}

/// Material read under the engine lock for an unlock that finishes outside it.
#[derive(Debug)]
pub struct SealedKey(pub Vec<u8>);

/// The engine. See the module docs.
#[derive(Debug)]
pub struct Engine {
    paths: VaultPaths,
    config: Config,
    vault: Vault,
    device: String,
    /// The watch on emitted files, made at the first tick.
    watch: Option<crate::watch::DriftWatch>,
    /// Emitted files that need attention, as last compared.
    drift: Vec<vault_protocol::message::EmitterInfo>,
    /// The comparison is out of date (a change seen while locked, or never
    /// made yet).
    drift_stale: bool,
    /// The last index in this device's log.
    log_last: u64,
    /// The hybrid logical clock's last value.
    clock: u64,
    /// No record written before sync is left to enroll.
    enrolled: bool,
    /// The head of this device's chain of authenticated entries.
    chain: Option<store::ChainHead>,
    /// Unlocks so far: with the store's change count, a version of what
    /// the vault holds ([`Engine::version`]).
    unlocks: u64,
    /// Hand-outs not written to the audit log yet ([`audit`]).
    audit_pending: Vec<audit::Pending>,
    /// When the other devices' kept audit segments are next looked at for
    /// retention (unix seconds; at most every minute).
    audit_segments_due_at: i64,
}

/// An `ssh` record's private key, for the SSH agent.
pub struct SshKeyRecord {
    /// The record's name.
    pub name: String,
    /// The record's id (what logs name).
    pub id: String,
    /// When the record stops being offered.
    pub expires_at: Option<Timestamp>,
    /// The `private_key` field.
    pub private_key: SecretValue,
    /// The `confirm` field says to ask before each signature.
    pub confirm: bool,
}

impl std::fmt::Debug for SshKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshKeyRecord")
            .field("id", &self.id)
            .field("private_key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens the engine for `paths`. A missing database means "not
    /// initialized"; a damaged one is an error and is left untouched.
    pub fn open(paths: VaultPaths, config: Config) -> std::result::Result<Self, String> {
        let db = paths.db();
        let identity = paths.identity();
        let store = match (db.exists(), identity.exists()) {
            (true, true) => Some(Store::open(&db).map_err(|e| e.to_string())?),
            (false, false) => None,
            (true, false) => {
                return Err(format!(
                    "{} exists but {} is missing: the vault key is gone. Restore identity.age \
                     from a backup; nothing was changed",
                    db.display(),
                    identity.display()
                ));
            }
            (false, true) => {
                return Err(format!(
                    "{} exists but {} is missing. Restore vault.db from a backup, or move \
                     identity.age aside and run 'vault init'; nothing was changed",
                    identity.display(),
                    db.display()
                ));
            }
        };
        let device = match &store {
            Some(s) => s
                .meta("device_id")
                .map_err(|e| e.to_string())?
                .unwrap_or_default(),
            None => String::new(),
        };
        let (log_last, clock, chain) = match &store {
            Some(s) => (
                s.log_last(&device).map_err(|e| e.to_string())?,
                s.max_clock().map_err(|e| e.to_string())?,
                s.chain(&device).map_err(|e| e.to_string())?,
            ),
            None => (0, 0, None),
        };
        Ok(Self {
            paths,
            config,
            vault: store.map_or(Vault::Uninitialized, Vault::Locked),
            device,
            watch: None,
            drift: Vec::new(),
            drift_stale: true,
            log_last,
            clock,
            enrolled: false,
            chain,
            unlocks: 0,
            audit_pending: Vec::new(),
            audit_segments_due_at: 0,
        })
    }

    /// Whether the key is out of memory.
    pub fn is_locked(&self) -> bool {
        self.vault.session().is_none()
    }

    fn store(&self) -> Result<&Store> {
        self.vault.store().ok_or_else(|| {
            err(
                ErrorCode::NotInitialized,
                format!(
                    "no vault at {}: run 'vault init'",
                    self.paths.data_dir.display()
                ),
            )
        })
    }

    fn session(&self) -> Result<&Session> {
        self.store()?;
        self.vault
            .session()
            .ok_or_else(|| err(ErrorCode::Locked, "vault is locked: run 'vault unlock'"))
    }

    /// Daemon and vault state.
    pub fn status(&self, socket: &str, pid: u32, now: Timestamp) -> Result<StatusInfo> {
        let vault_id = match self.vault.store() {
            Some(s) => s.meta("vault_id").map_err(store_err)?,
            None => None,
        };
        let session = self.vault.session();
        let mut expiring: Vec<RecordSummary> = Vec::new();
        if let Some(sess) = session {
            for (name, e) in &sess.index {
                if let Some(t) = e.expires_at
                    && t.unix() - now.unix() < EXPIRING_WINDOW.as_secs() as i64
                {
                    expiring.push(e.summary(name, now));
                }
            }
            expiring.sort_by_key(|s| s.expires_at);
        }
        Ok(StatusInfo {
            initialized: self.vault.store().is_some(),
            vault_id,
            locked: session.is_none(),
            daemon_pid: pid,
            socket: socket.to_owned(),
            records: session.map(|s| s.index.len() as u64),
            idle_lock_at: session.map(|s| s.idle_deadline),
            hard_lock_at: session.map(|s| s.hard_deadline),
            expiring,
            sync: SyncStatus::default(),
            remotes: Vec::new(),
            emitters: self.drift.clone(),
            refresh: Vec::new(),
            failed_checks: self.failed_checks(),
            rotations: self.pending_rotations(),
        })
    }

    /// Creates the vault: key, `identity.age`, database. Leaves it unlocked.
    pub fn init(&mut self, passphrase: &SecretValue, now: Timestamp) -> Result<(String, String)> {
        // Before the slow seal; `create` checks again.
        self.check_absent()?;
        if passphrase.is_empty() {
            return Err(err(ErrorCode::Usage, "the passphrase must not be empty"));
        }
        let key = VaultKey::generate();
        let sealed = key
            .seal(passphrase.expose_secret())
            .map_err(|e| err(ErrorCode::Internal, e))?;
        let recipient = key.recipient();
        let vault_id = random_hex(16);
        self.create(key, &sealed, &vault_id, now)?;
        Ok((vault_id, recipient))
    }

    fn check_absent(&self) -> Result<()> {
        if self.vault.store().is_some() || self.paths.identity().exists() {
            return Err(err(
                ErrorCode::AlreadyExists,
                format!(
                    "a vault already exists at {}",
                    self.paths.data_dir.display()
                ),
            ));
        }
        Ok(())
    }

    /// Writes a vault for `key` (sealed as `sealed`): database, metadata,
    /// `identity.age`, a new device id. Leaves it unlocked.
    fn create(
        &mut self,
        key: VaultKey,
        sealed: &[u8],
        vault_id: &str,
        now: Timestamp,
    ) -> Result<()> {
        self.check_absent()?;
        let db_path = self.paths.db();
        if db_path.exists() {
            return Err(err(
                ErrorCode::AlreadyExists,
                format!("{} already exists: move it aside first", db_path.display()),
            ));
        }
        let mut store = store::create(&db_path).map_err(store_err)?;
        let device = random_hex(8);
        let created = now.unix().to_string();
        store
            .set_meta(&[
                ("vault_id", vault_id),
                ("device_id", &device),
                ("recipient", &key.recipient()),
                ("key_id", &key.key_id()),
                ("created_at", &created),
                // Made with authenticated entries and approvals: nothing
                // to upgrade.
                (sync::AUTH_MARK, "1"),
                (approve::APPROVAL_MARK, approve::APPROVALS_V),
            ])
            .map_err(store_err)?;
        // A snapshot left by a vault that was here before is no use to this
        // one (another key opens nothing in it): take it away.
        match std::fs::remove_file(self.paths.index_snapshot()) {
            Ok(()) => info!("removed the index snapshot of an earlier vault"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(error = %e, "cannot remove an earlier index snapshot"),
        }
        // The key file is written last: a crash before this leaves a database
        // without a key, which `open` reports instead of silently reusing.
        crate::fsutil::write_new_atomic(&self.paths.identity(), sealed).map_err(|e| {
            err(
                ErrorCode::Internal,
                format!("cannot write {}: {e}", self.paths.identity().display()),
            )
        })?;
        info!(vault_id = %vault_id, "vault created");
        self.vault = Vault::Locked(store);
        self.device = device;
        self.log_last = 0;
        self.clock = 0;
        self.chain = None;
        self.install(
            key,
            Built {
                index: Index::new(),
                decrypted: 0,
                snapshot_stale: true,
            },
            now,
        );
        Ok(())
    }

    /// First half of unlock: the sealed key bytes, read under the lock.
    pub fn sealed_key(&self) -> Result<SealedKey> {
        self.store()?;
        let path = self.paths.identity();
        // Checked on every read, not only at start: a key file swapped for a
        // symlink while the daemon runs is refused too.
        crate::fsutil::check_private(&path, false)
            .map_err(|e| err(ErrorCode::Failed, e.to_string()))?;
        crate::fsutil::read_private(&path)
            .map(SealedKey)
            .map_err(|e| {
                err(
                    ErrorCode::Failed,
                    format!("cannot read {}: {e}", path.display()),
                )
            })
    }

    /// Opens the sealed key with the passphrase (slow: scrypt). Runs outside
    /// the engine lock.
    pub fn open_key(&self, sealed: &SealedKey, passphrase: &SecretValue) -> Result<VaultKey> {
        let path = self.paths.identity();
        VaultKey::open(&sealed.0, passphrase.expose_secret()).map_err(|e| match e {
            KeyError::BadPassphrase => err(
                ErrorCode::BadPassphrase,
                "wrong passphrase: the vault stays locked; try again",
            ),
            KeyError::Damaged(why) => err(
                ErrorCode::Failed,
                format!(
                    "{} is damaged: {why}. Nothing was changed; restore it from a backup",
                    path.display()
                ),
            ),
        })
    }

    /// Every live row, for building the index outside the lock.
    pub fn live_rows(&self) -> Result<Vec<RecordRow>> {
        self.store()?.live_records().map_err(store_err)
    }

    /// The index snapshot unlock starts from (read and opened outside the
    /// engine lock): empty when there is none or it is unusable (logged).
    pub fn read_snapshot(key: &VaultKey, path: &std::path::Path) -> snapshot::Entries {
        let bytes = match crate::fsutil::read_private(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Default::default(),
            Err(e) => {
                warn!(error = %e, "cannot read the index snapshot; decrypting every record");
                return Default::default();
            }
        };
        match snapshot::open(key, &bytes) {
            Ok(entries) => entries,
            Err(snapshot::Unusable::OtherBuild) => {
                info!("the index snapshot is from another build; decrypting every record");
                Default::default()
            }
            Err(snapshot::Unusable::Damaged) => {
                warn!(
                    "the index snapshot is damaged or from another vault; decrypting every record"
                );
                Default::default()
            }
        }
    }

    /// Unlock, run beside scrypt (under the engine lock): every live row
    /// and the digest of its ciphertext, without keeping the bodies.
    pub fn scan_rows(&self) -> Result<Rows> {
        let store = self.store()?;
        let mut rows = Vec::new();
        store
            .scan_live(|row, body| rows.push((row, snapshot::digest(body))))
            .map_err(store_err)?;
        Ok(Rows {
            rows,
            changes: store.total_changes(),
        })
    }

    /// Unlock once the key is open (under the engine lock): each row the
    /// snapshot holds with this very ciphertext is taken from it; the others
    /// are read again with their bodies, for [`Engine::build_index`] to
    /// decrypt. Rows changed since [`Engine::scan_rows`] are scanned again.
    pub fn match_rows(&self, rows: Rows, mut snapshot: snapshot::Entries) -> Result<Scan> {
        let rows = if rows.changes == self.store()?.total_changes() {
            rows
        } else {
            self.scan_rows()?
        };
        let snapshot_len = snapshot.len();
        let mut reused = Vec::with_capacity(rows.rows.len());
        let mut missing = Vec::new();
        for (row, digest) in rows.rows {
            match snapshot.remove(&row.id) {
                Some(e) if e.digest() == &digest => {
                    let (name, entry) = e.into_index_entry(&row, digest);
                    reused.push((entry.listed_name(&name), entry));
                }
                _ => missing.push((row, digest)),
            }
        }
        drop(snapshot);
        let to_decrypt = self.with_bodies(missing)?;
        Ok(Scan {
            reused,
            to_decrypt,
            snapshot_len,
        })
    }

    /// `rows` with their bodies read: one by one when they are few, in one
    /// more walk over the table when they are many (no snapshot yet).
    fn with_bodies(
        &self,
        mut rows: Vec<(RecordRow, [u8; 32])>,
    ) -> Result<Vec<(RecordRow, [u8; 32])>> {
        let store = self.store()?;
        if rows.len() <= 1024 {
            for (row, _) in &mut rows {
                if let Some(full) = store.by_id(&row.id).map_err(store_err)? {
                    row.body = full.body;
                }
            }
            return Ok(rows);
        }
        let mut at: std::collections::HashMap<String, usize> = rows
            .iter()
            .enumerate()
            .map(|(i, (r, _))| (r.id.clone(), i))
            .collect();
        store
            .scan_live(|row, body| {
                if let Some(i) = at.remove(&row.id) {
                    rows[i].0.body = body.to_vec();
                }
            })
            .map_err(store_err)?;
        Ok(rows)
    }

    /// Last step of unlock but one, outside the lock: decrypts what the
    /// snapshot did not hold, on every core. A record that does not decrypt
    /// is logged by id and left out; the unlock goes on.
    pub fn build_index(key: &VaultKey, scan: Scan) -> Built {
        let Scan {
            reused,
            to_decrypt,
            snapshot_len,
        } = scan;
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let chunk = to_decrypt.len().div_ceil(threads).max(1);
        let parts: Vec<Vec<(String, IndexEntry)>> = std::thread::scope(|s| {
            let handles: Vec<_> = to_decrypt
                .chunks(chunk)
                .map(|part| s.spawn(move || decrypt_part(key, part)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        let snapshot_stale = !to_decrypt.is_empty() || reused.len() != snapshot_len;
        let index: Index = reused
            .into_iter()
            .chain(parts.into_iter().flatten())
            .collect();
        Built {
            index,
            decrypted: to_decrypt.len(),
            snapshot_stale,
        }
    }

    /// Last half of unlock: keep the key and index in memory.
    pub fn install(&mut self, key: VaultKey, built: Built, now: Timestamp) {
        let Built {
            index,
            decrypted,
            snapshot_stale,
        } = built;
        info!(records = index.len(), decrypted, "unlocked");
        self.unlocks += 1;
        let mut claims: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
        for e in index.values() {
            if let Some(n) = &e.claims {
                claims.entry(n.clone()).or_default().insert(e.id.clone());
            }
        }
        let unlocked = self.vault.unlock(Session {
            key,
            index,
            claims,
            idle_deadline: now.plus(self.config.idle),
            hard_deadline: now.plus(self.config.max),
            snapshot_stale,
            changes_at_install: 0,
        });
        if !unlocked {
            warn!("no vault to unlock");
            return;
        }
        // A claimed name nobody holds (a crash between a change and the
        // hand-over of its name) goes to its claimant now.
        let orphans: Vec<String> = self
            .vault
            .session()
            .map(|s| {
                s.claims
                    .keys()
                    .filter(|n| s.index.get(*n).is_none_or(|e| e.claims.is_some()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for name in orphans {
            if let Err(e) = self.settle_name(&name) {
                warn!(error = %e, "cannot hand a name over");
            }
        }
        if let Err(e) = self.seed_approvals(now) {
            // Nothing is approved then: gated fields wait for `vault
            // approve`, and the seeding is tried again at the next unlock.
            warn!(error = %e, "cannot seed approvals");
        }
        if let Some((store, s)) = self.vault.parts_mut() {
            s.changes_at_install = store.total_changes();
        }
    }

    /// Where unlock finds the index snapshot.
    pub fn snapshot_path(&self) -> std::path::PathBuf {
        self.paths.index_snapshot()
    }

    /// Writes the index snapshot when the one on disk is out of date.
    fn save_snapshot(&self) {
        let Vault::Unlocked(store, sess) = &self.vault else {
            return;
        };
        if !sess.snapshot_stale && store.total_changes() == sess.changes_at_install {
            return;
        }
        let bytes = snapshot::seal(&sess.key, &sess.index);
        match crate::fsutil::replace_private(&self.paths.index_snapshot(), &bytes) {
            Ok(()) => info!(records = sess.index.len(), "index snapshot written"),
            // The next unlock decrypts every record instead; nothing is lost.
            Err(e) => warn!(error = %e, "cannot write the index snapshot"),
        }
    }

    /// Forgets the key and index (zeroized on drop).
    pub fn lock(&mut self, why: &str) {
        // The key is needed to seal what waits for the audit log.
        if let Err(e) = self.flush_audit() {
            warn!(error = %e.message, "cannot write the audit log");
        }
        self.save_snapshot();
        if self.vault.lock().is_some() {
            info!(reason = why, "locked");
        }
    }

    /// Locks when a wall-clock deadline has passed. Called on every request
    /// and by the daemon's ticker (which only wakes us; suspend-safe).
    pub fn check_deadlines(&mut self, now: Timestamp) {
        if let Some(s) = self.vault.session() {
            if now >= s.hard_deadline {
                self.lock("hard limit reached");
            } else if now >= s.idle_deadline {
                self.lock("idle timeout");
            }
        }
    }

    /// When the vault locks for idleness, while unlocked.
    pub fn idle_deadline(&self) -> Option<Timestamp> {
        self.vault.session().map(|s| s.idle_deadline)
    }

    /// Extends the idle deadline (never past the hard one).
    pub fn touch(&mut self, now: Timestamp) {
        let idle = self.config.idle;
        if let Some(s) = self.vault.session_mut() {
            s.idle_deadline = now.plus(idle).min(s.hard_deadline);
        }
    }

    fn check_new(sess: &Session, rec: &NewRecord) -> Result<()> {
        validate_name(&rec.name).map_err(|e| err(ErrorCode::Usage, e))?;
        check_meta(rec.description.as_deref(), &rec.tags)?;
        validate_fields(rec.kind, &rec.fields).map_err(|e| err(ErrorCode::Usage, e))?;
        if sess.index.contains_key(&rec.name) {
            return Err(err(
                ErrorCode::AlreadyExists,
                format!(
                    "a credential named '{}' already exists: use 'vault set' to change it or \
                     'vault rm' first",
                    rec.name
                ),
            ));
        }
        Ok(())
    }

    /// Creates records in one transaction.
    pub fn add(&mut self, records: Vec<NewRecord>, now: Timestamp) -> Result<Vec<RecordSummary>> {
        let sess = self.session()?;
        let mut seen = std::collections::HashSet::new();
        for rec in &records {
            Self::check_new(sess, rec)?;
            if !seen.insert(rec.name.as_str()) {
                return Err(err(
                    ErrorCode::Usage,
                    format!("'{}' is given twice", rec.name),
                ));
            }
        }
        let mut rows = Vec::with_capacity(records.len());
        let mut entries = Vec::with_capacity(records.len());
        let mut log = Vec::with_capacity(records.len());
        let mut bodies = Vec::with_capacity(records.len());
        let mut clock = self.clock;
        let device = self.device.clone();
        let mut chain = self.chain;
        let seen = self.store()?.seen().map_err(store_err)?;
        for (i, rec) in records.into_iter().enumerate() {
            let id = random_hex(16);
            clock = sync::tick(clock);
            let stamp = crate::record::Stamp::new(
                &device,
                self.log_last + 1 + i as u64,
                clock,
                "add",
                false,
            );
            let mut body = RecordBody {
                v: BODY_VERSION,
                id: id.clone(),
                name: rec.name,
                kind: rec.kind,
                description: rec.description,
                tags: rec.tags,
                fields: rec.fields,
                expires_at: rec.expires_at,
                sync: Some(stamp),
                mac: None,
            };
            let (ciphertext, head) = self.seal_entry(&mut body, chain, &seen)?;
            chain = Some(head);
            log.push(store::LogStamp {
                index: head.index,
                clock,
                mac: head.mac,
            });
            let sess = self.session()?;
            let row = RecordRow {
                id,
                name_mac: sess.key.name_mac(&body.name),
                kind: body.kind.as_str().to_owned(),
                revision: 1,
                created_at: now.unix(),
                updated_at: now.unix(),
                expires_at: body.expires_at.map(Timestamp::unix),
                deleted: false,
                body: ciphertext,
                shadowed: false,
            };
            check_size(&row)?;
            entries.push((body.name.clone(), IndexEntry::from_parts(&row, &body)));
            rows.push(row);
            bodies.push(body);
        }
        self.store_mut()?
            .insert(&rows, &device, &log)
            .map_err(|e| match e {
                StoreError::NameTaken => err(
                    ErrorCode::AlreadyExists,
                    "a credential with that name already exists",
                ),
                other => store_err(other),
            })?;
        for row in &rows {
            info!(record = %row.id, "added");
        }
        // Typed on this device: what it runs or writes is the user's own.
        for (row, body) in rows.iter().zip(&bodies) {
            self.approve_fields(&row.id, body, |_| true, now)?;
        }
        self.log_last += log.len() as u64;
        self.clock = clock;
        self.chain = chain;
        let sess = self.session_mut()?;
        let mut out = Vec::with_capacity(entries.len());
        for (name, entry) in entries {
            out.push(entry.summary(&name, now));
            sess.index.insert(name, entry);
        }
        Ok(out)
    }

    fn store_mut(&mut self) -> Result<&mut Store> {
        self.store()?;
        self.vault
            .store_mut()
            .ok_or_else(|| err(ErrorCode::NotInitialized, "run 'vault init'"))
    }

    fn session_mut(&mut self) -> Result<&mut Session> {
        self.session()?;
        self.vault
            .session_mut()
            .ok_or_else(|| err(ErrorCode::Locked, "vault is locked"))
    }

    /// Loads and decrypts the live record `name`.
    fn load(&self, name: &str) -> Result<(RecordRow, RecordBody)> {
        let sess = self.session()?;
        if !sess.index.contains_key(name) {
            return Err(not_found(name));
        }
        let row = self
            .store()?
            .find_live(&sess.key.name_mac(name))
            .map_err(store_err)?
            .ok_or_else(|| not_found(name))?;
        let mut body = decrypt_body(&sess.key, &row)?;
        if row.shadowed {
            // Written back under the name it is listed under: a change
            // adopts that name everywhere.
            body.name = name.to_owned();
        }
        Ok((row, body))
    }

    /// One record with its values.
    pub fn get(&self, name: &str, now: Timestamp) -> Result<RecordView> {
        let (row, body) = self.load(name)?;
        let expired = body.expires_at.is_some_and(|t| t <= now);
        Ok(RecordView {
            name: body.name,
            kind: body.kind,
            fields: body.fields,
            description: body.description,
            tags: body.tags,
            created_at: Timestamp(row.created_at),
            updated_at: Timestamp(row.updated_at),
            expires_at: body.expires_at,
            expired,
            revision: row.revision,
        })
    }

    /// What the unlocked vault holds, as a value that changes whenever a
    /// record may have (a write, or another unlock); `None` while locked.
    /// Cheap: for caches of decrypted records, such as the SSH agent's.
    pub fn version(&self) -> Option<(u64, u64)> {
        match &self.vault {
            Vault::Unlocked(store, _) => Some((self.unlocks, store.total_changes())),
            _ => None,
        }
    }

    /// The `private_key` of every live and complete `ssh` record, with the
    /// record's name, id and expiry, for the SSH agent (`crate::agent`):
    /// the key is used there and never leaves the daemon. Expired records
    /// are included (the agent skips them at each use, so a cached list
    /// stays right as time passes). A record that cannot be read is left
    /// out (and logged by id).
    pub fn ssh_private_keys(&self) -> Result<Vec<SshKeyRecord>> {
        let sess = self.session()?;
        let names: Vec<String> = sess
            .index
            .iter()
            .filter(|(_, e)| e.kind == CredentialType::Ssh && !e.incomplete)
            .map(|(name, _)| name.clone())
            .collect();
        let mut keys = Vec::with_capacity(names.len());
        for name in names {
            match self.load(&name) {
                Ok((row, mut body)) => {
                    let confirm = body
                        .fields
                        .get(vault_protocol::credential::SSH_CONFIRM)
                        .is_some_and(|v| vault_protocol::credential::is_yes(v.expose_secret()));
                    if let Some(private_key) = body.fields.remove("private_key") {
                        keys.push(SshKeyRecord {
                            name,
                            id: row.id,
                            expires_at: body.expires_at,
                            private_key,
                            confirm,
                        });
                    }
                }
                Err(e) => {
                    let id = sess.index.get(&name).map(|e| e.id.clone());
                    warn!(id = ?id, code = ?e.code, "ssh agent: record not readable");
                }
            }
        }
        Ok(keys)
    }

    /// The key JSON of gcp credential `name`, with its id and revision
    /// (what a token minted from it is cached under) and the service
    /// account it acts as (`impersonate`): not expired, and its gated
    /// fields approved here.
    pub fn gcp_key(&self, name: &str, now: Timestamp) -> Result<GcpKey> {
        let (row, body) = self.gcp_record(name, now)?;
        let json = body.fields.get("json").ok_or_else(|| {
            err(
                ErrorCode::Failed,
                format!("'{name}' has no json yet: 'vault set {name} json=@key.json'"),
            )
        })?;
        Ok(GcpKey {
            id: row.id,
            revision: row.revision,
            json: json.duplicate(),
            impersonate: body
                .fields
                .get(vault_protocol::credential::IMPERSONATE)
                .map(|v| v.expose_secret().to_owned())
                .filter(|v| !v.is_empty()),
            issuer: match (
                body.fields.get(vault_protocol::credential::ISSUER),
                body.fields.get(vault_protocol::credential::ISSUER_KEY),
            ) {
                (Some(iss), Some(key)) => Some((iss.expose_secret().to_owned(), key.duplicate())),
                _ => None,
            },
        })
    }

    /// The fields of gcp credential `name` (approved, not expired), for
    /// an issuer's subject token (`remote::wif`).
    pub fn gcp_fields(&self, name: &str, now: Timestamp) -> Result<BTreeMap<String, SecretValue>> {
        Ok(self.gcp_record(name, now)?.1.fields)
    }

    fn gcp_record(&self, name: &str, now: Timestamp) -> Result<(RecordRow, RecordBody)> {
        self.check_approved(&[name.to_owned()])?;
        let (row, body) = self.load(name)?;
        if body.kind != CredentialType::Gcp {
            return Err(err(
                ErrorCode::Usage,
                format!(
                    "'{name}' is a {} credential: tokens come from a gcp one",
                    body.kind
                ),
            ));
        }
        if body.expires_at.is_some_and(|t| t <= now) {
            return Err(err(
                ErrorCode::Expired,
                format!("'{name}' has expired: renew it before minting tokens from it"),
            ));
        }
        Ok((row, body))
    }

    /// The current code of `name`'s one-time-code seed (its `otp` field).
    pub fn otp(&self, name: &str, now: Timestamp) -> Result<vault_protocol::Response> {
        let (_, body) = self.load(name)?;
        let field = vault_protocol::otp::FIELD;
        let Some(seed) = vault_protocol::otp::seed_of(body.kind, &body.fields) else {
            let hint = if body.kind == CredentialType::Generic {
                "a generic record's keys are all variables for exec, so none is a seed: keep \
                 the seed on the password or token record it belongs to"
            } else {
                "add one with 'vault set NAME otp=-' (the otpauth://totp/… URI or the base32 \
                 secret the site shows)"
            };
            return Err(err(
                ErrorCode::NotFound,
                format!(
                    "'{}' has no one-time-code seed ({field} field): {hint}",
                    body.name
                ),
            ));
        };
        let otp = vault_protocol::otp::Otp::parse(seed.expose_secret()).map_err(|e| {
            err(
                ErrorCode::Failed,
                format!(
                    "'{}': {e}; replace it with 'vault set {} otp=-'",
                    body.name, body.name
                ),
            )
        })?;
        let (code, valid_for_secs) = otp.code(now.unix().max(0) as u64);
        Ok(vault_protocol::Response::Otp {
            code: SecretValue::from(code.as_str()),
            valid_for_secs,
            period_secs: otp.period(),
        })
    }

    /// The vault's paths.
    pub fn paths(&self) -> &VaultPaths {
        &self.paths
    }

    /// The daemon's settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether record `id`, last known as `name`, is live under that name
    /// at `revision` (for reports about it).
    pub fn is_current(&self, name: &str, id: &str, revision: u64) -> bool {
        self.session().is_ok_and(|s| {
            s.index
                .get(name)
                .is_some_and(|e| e.id == id && e.revision == revision)
        })
    }

    /// Several records with their values, in the order asked; the first
    /// missing one fails the whole request.
    pub fn resolve(&self, names: &[String], now: Timestamp) -> Result<Vec<RecordView>> {
        names.iter().map(|name| self.get(name, now)).collect()
    }

    /// Summaries matching `filter`, sorted by name.
    pub fn list(
        &self,
        filter: &ListFilter,
        after: Option<&str>,
        now: Timestamp,
    ) -> Result<(Vec<RecordSummary>, Option<String>)> {
        let sess = self.session()?;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut matching = sess
            .index
            .range::<str, _>((start, Bound::Unbounded))
            .filter(|(_, e)| filter.kind.is_none_or(|k| e.kind == k))
            .filter(|(_, e)| filter.tag.as_ref().is_none_or(|t| e.tags.contains(t)))
            .filter(|(_, e)| !filter.expired || e.expires_at.is_some_and(|t| t <= now))
            .filter(|(_, e)| {
                filter.expiring_within_secs.is_none_or(|w| {
                    e.expires_at
                        .is_some_and(|t| t > now && t.unix() - now.unix() <= w as i64)
                })
            })
            .peekable();
        let mut out = Vec::new();
        let mut budget = LIST_PAGE_BYTES;
        let refused = self.refused_records();
        let checks = self.check_marks();
        let uses = if filter.used {
            self.last_uses()
        } else {
            Default::default()
        };
        while let Some((name, e)) = matching.peek() {
            let cost = e.listed_size(name);
            // One record always fits: a page never comes back empty.
            if cost > budget && !out.is_empty() {
                break;
            }
            budget = budget.saturating_sub(cost);
            let mut summary = e.summary(name, now);
            if refused.contains(&e.id) && summary.state != RecordState::Expired {
                summary.state = RecordState::PublishFailed;
            }
            summary.last_used = uses.get(&e.id).cloned();
            if let Some((revision, mark)) = checks.get(&e.id) {
                summary.checked = Some(*mark);
                // A failure of an older revision says nothing of this one.
                // Above `expiring`: a minted session is always within the
                // hour, and a failed check says more.
                if !mark.ok
                    && *revision == e.revision
                    && matches!(summary.state, RecordState::Ok | RecordState::Expiring)
                {
                    summary.state = RecordState::CheckFailed;
                }
            }
            out.push(summary);
            matching.next();
        }
        let next = matching.peek().and(out.last()).map(|r| r.name.clone());
        Ok((out, next))
    }

    /// Writes `body` as the next revision of `row` and updates the index.
    fn commit(
        &mut self,
        mut row: RecordRow,
        mut body: RecordBody,
        old_name: &str,
        change: &str,
        now: Timestamp,
    ) -> Result<RecordSummary> {
        let clock = sync::tick(self.clock);
        let mut stamp =
            crate::record::Stamp::new(&self.device, self.log_last + 1, clock, change, row.deleted);
        if let Some((device, index)) = self
            .store()?
            .log_place(&row.id, row.revision)
            .map_err(store_err)?
        {
            stamp.parents.push(crate::record::LogRef { device, index });
        }
        // A change made by the user resolves the record's open conflicts;
        // a refresh does not.
        if !sync::is_background(change) {
            for (device, index) in self.store()?.conflict_refs(&row.id).map_err(store_err)? {
                stamp.parents.push(crate::record::LogRef { device, index });
            }
        }
        let parents: Vec<(String, u64)> = stamp
            .parents
            .iter()
            .map(|p| (p.device.clone(), p.index))
            .collect();
        body.v = BODY_VERSION;
        body.sync = Some(stamp);
        let sess = self.session()?;
        let claimed = row
            .shadowed
            .then(|| sess.index.get(old_name).and_then(|e| e.claims.clone()))
            .flatten();
        // A refresh is not the user's change: a record listed under a
        // derived name goes on claiming its own name.
        let keep_claim = claimed.clone().filter(|_| sync::is_background(change));
        if let Some(n) = &keep_claim {
            body.name = n.clone();
        }
        row.updated_at = now.unix().max(row.updated_at);
        row.name_mac = sess.key.name_mac(match keep_claim {
            Some(_) => old_name,
            None => &body.name,
        });
        row.kind = body.kind.as_str().to_owned();
        row.expires_at = body.expires_at.map(Timestamp::unix);
        row.shadowed = keep_claim.is_some();
        let seen = self.store()?.seen().map_err(store_err)?;
        let (ciphertext, head) = self.seal_entry(&mut body, self.chain, &seen)?;
        row.body = ciphertext;
        let log = store::LogStamp {
            index: head.index,
            clock,
            mac: head.mac,
        };
        check_size(&row)?;
        let device = self.device.clone();
        self.store_mut()?
            .update(&mut row, &device, change, Some(log), &parents)
            .map_err(|e| match e {
                StoreError::NameTaken => err(
                    ErrorCode::AlreadyExists,
                    format!("a credential named '{}' already exists", body.name),
                ),
                other => store_err(other),
            })?;
        self.log_last += 1;
        self.clock = clock;
        self.chain = Some(head);
        info!(record = %row.id, revision = row.revision, change, "changed");
        self.rerender(&row, &body, now);
        let sess = self.session_mut()?;
        sess.index.remove(old_name);
        if let (Some(n), None) = (&claimed, &keep_claim) {
            sync::unclaim(sess, n, &row.id);
        }
        let entry = IndexEntry::from_parts(&row, &body);
        let listed = entry.listed_name(&body.name);
        let summary = entry.summary(&listed, now);
        if !row.deleted {
            sess.index.insert(listed.clone(), entry);
        }
        // A name this record gave up goes to a record that lost it earlier.
        if old_name != listed || row.deleted {
            self.settle_local(old_name)?;
        }
        Ok(summary)
    }

    /// Updates fields and attributes.
    #[allow(clippy::too_many_arguments)]
    pub fn set(
        &mut self,
        name: &str,
        fields: BTreeMap<String, SecretValue>,
        unset: Vec<String>,
        description: Option<String>,
        tags: Option<Vec<String>>,
        expires_at: Option<Option<Timestamp>>,
        now: Timestamp,
    ) -> Result<RecordSummary> {
        let (row, mut body) = self.load(name)?;
        for f in &unset {
            if body.fields.remove(f).is_none() {
                return Err(err(
                    ErrorCode::Usage,
                    format!("'{name}' has no field '{f}'"),
                ));
            }
        }
        let typed: Vec<String> = fields.keys().cloned().collect();
        body.fields.extend(fields);
        if let Some(d) = description {
            body.description = Some(d).filter(|d| !d.is_empty());
        }
        if let Some(t) = tags {
            body.tags = t;
        }
        if let Some(e) = expires_at {
            body.expires_at = e;
        }
        check_meta(body.description.as_deref(), &body.tags)?;
        validate_fields(body.kind, &body.fields).map_err(|e| err(ErrorCode::Usage, e))?;
        // The values given here are the user's own; the others keep (or
        // still wait for) their approval.
        let approved = self.approval_items(&row.id, &body, |f| typed.iter().any(|t| t == f))?;
        let summary = self.commit(row, body, name, "set", now)?;
        self.record_approvals(&approved, now)?;
        Ok(summary)
    }

    /// Renames a record.
    pub fn rename(&mut self, from: &str, to: &str, now: Timestamp) -> Result<RecordSummary> {
        validate_name(to).map_err(|e| err(ErrorCode::Usage, e))?;
        if self.session()?.index.contains_key(to) {
            return Err(err(
                ErrorCode::AlreadyExists,
                format!("a credential named '{to}' already exists"),
            ));
        }
        let (row, mut body) = self.load(from)?;
        // Credentials name their SSO session by name: renaming it would
        // leave them without one.
        let sharing = self.sso_sharing(from);
        if !sharing.is_empty() {
            let names: Vec<&str> = sharing.iter().map(|(n, _)| n.as_str()).collect();
            return Err(err(
                ErrorCode::Conflict,
                format!(
                    "'{from}' is the SSO session of {}: point them at another first ('vault set \
                     NAME sso_session=…'), or keep its name",
                    names.join(", ")
                ),
            ));
        }
        body.name = to.to_owned();
        self.commit(row, body, from, "rename", now)
    }

    /// Deletes a record; its history stays and `restore` brings it back.
    /// A record emitted to files or published to a platform takes `force`
    /// (the deleted head then removes what vault wrote and unpublishes).
    pub fn remove(&mut self, name: &str, force: bool, now: Timestamp) -> Result<RecordSummary> {
        let (mut row, body) = self.load(name)?;
        if !force {
            self.refuse_if_bound(&row, name)?;
        }
        row.deleted = true;
        self.commit(row, body, name, "remove", now)
    }

    /// Refuses while the record is emitted or published, saying where and
    /// what `--force` does there.
    fn refuse_if_bound(&self, row: &RecordRow, name: &str) -> Result<()> {
        let mut bound = Vec::new();
        let mut undo = Vec::new();
        let files = self.emitted_to(&row.id)?;
        if !files.is_empty() {
            bound.push(format!("emitted to {}", files.join(", ")));
            undo.push("removes what vault wrote there");
        }
        let platforms = self.published_as(&row.id)?;
        if !platforms.is_empty() {
            bound.push(format!("published as {}", platforms.join(", ")));
            undo.push("unpublishes it");
        }
        if bound.is_empty() {
            return Ok(());
        }
        Err(err(
            ErrorCode::Conflict,
            format!(
                "{name} is {}: 'vault rm {name} --force' deletes it, {}",
                bound.join(" and "),
                undo.join(" and ")
            ),
        ))
    }

    fn find_any(&self, name: &str) -> Result<RecordRow> {
        let sess = self.session()?;
        self.store()?
            .find_latest(&sess.key.name_mac(name))
            .map_err(store_err)?
            .ok_or_else(|| not_found(name))
    }

    /// History of a record (also of a deleted one), newest first.
    pub fn history(&self, name: &str) -> Result<Vec<RevisionInfo>> {
        let row = self.find_any(name)?;
        let revs = self.store()?.revisions(&row.id).map_err(store_err)?;
        Ok(revs
            .into_iter()
            .map(|r| RevisionInfo {
                revision: r.revision,
                updated_at: Timestamp(r.updated_at),
                device: r.device,
                change: r.change,
            })
            .collect())
    }

    /// Makes revision `revision`'s values current again, as a new revision
    /// under the record's current name. Undeletes a deleted record.
    pub fn restore(&mut self, name: &str, revision: u64, now: Timestamp) -> Result<RecordSummary> {
        let mut row = self.find_any(name)?;
        if row.deleted && self.session()?.index.contains_key(name) {
            return Err(err(
                ErrorCode::Conflict,
                format!("'{name}' now names another credential: rename it first"),
            ));
        }
        let ct = self
            .store()?
            .revision_body(&row.id, revision)
            .map_err(store_err)?
            .ok_or_else(|| {
                err(
                    ErrorCode::NotFound,
                    format!("'{name}' has no revision {revision}: see 'vault history {name}'"),
                )
            })?;
        let old = RecordRow {
            body: ct,
            ..row.clone()
        };
        let mut body = decrypt_body(&self.session()?.key, &old)?;
        body.name = name.to_owned();
        let was_deleted = row.deleted;
        row.deleted = false;
        let old_name = if was_deleted { "" } else { name };
        self.commit(row, body, old_name, "restore", now)
    }
}

/// A record must fit the server's limit so it can always sync (and a log
/// never sticks at an entry the server refuses).
fn check_size(row: &RecordRow) -> Result<()> {
    if row.body.len() > vault_protocol::server_api::MAX_RECORD_BYTES {
        return Err(err(
            ErrorCode::Usage,
            "this credential would be over 1 MiB encrypted, the most a record may hold: \
             nothing was saved; keep big files outside the vault",
        ));
    }
    Ok(())
}

fn check_meta(description: Option<&str>, tags: &[String]) -> Result<()> {
    if description.is_some_and(|d| d.len() > vault_protocol::credential::MAX_DESCRIPTION) {
        return Err(err(
            ErrorCode::Usage,
            "the description is longer than 1024 bytes",
        ));
    }
    for t in tags {
        validate_tag(t).map_err(|e| err(ErrorCode::Usage, e))?;
    }
    Ok(())
}

impl Engine {
    /// Text encrypted to the vault key: the secrets kept beside the records
    /// (access tokens, a platform's messages).
    /// Authenticates and encrypts `body`, a new entry of this device's log
    /// following `prev`: fills in the stamp's vault id, `prev` and `seen`,
    /// MACs it with the vault's entry key (body v3) and encrypts it.
    /// Returns the ciphertext and the new head of this device's chain.
    fn seal_entry(
        &self,
        body: &mut RecordBody,
        prev: Option<store::ChainHead>,
        seen: &BTreeMap<String, u64>,
    ) -> Result<(Vec<u8>, store::ChainHead)> {
        let vault = self.meta_value("vault_id")?;
        let sess = self.session()?;
        let stamp = body
            .sync
            .as_mut()
            .ok_or_else(|| err(ErrorCode::Internal, "an entry without a stamp"))?;
        stamp.vault = vault;
        stamp.prev = prev.map(|p| hex::encode(p.mac)).unwrap_or_default();
        stamp.seen = seen.clone();
        stamp.seen.remove(&self.device);
        let index = stamp.index;
        body.v = BODY_VERSION;
        body.mac = None;
        let (plain, mac) = body.to_signed_bytes(|b| sess.key.entry_mac(b));
        let ciphertext = sess
            .key
            .encrypt(&plain)
            .map_err(|e| err(ErrorCode::Internal, e))?;
        Ok((ciphertext, store::ChainHead { index, mac }))
    }

    /// A `vault_meta` value, empty when unset.
    fn meta_value(&self, key: &str) -> Result<String> {
        Ok(self
            .store()?
            .meta(key)
            .map_err(store_err)?
            .unwrap_or_default())
    }

    fn seal(&self, plain: &str) -> Result<Vec<u8>> {
        self.session()?
            .key
            .encrypt(plain.as_bytes())
            .map_err(|e| err(ErrorCode::Internal, e))
    }

    /// Text sealed by [`Engine::seal`]; `None` while locked or when it
    /// cannot be read.
    fn unseal(&self, sealed: &[u8]) -> Option<String> {
        let plain = self.vault.session()?.key.decrypt(sealed).ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }
}

/// The live rows (without bodies) and their ciphertexts' digests, as
/// [`Engine::scan_rows`] found them.
#[derive(Debug)]
pub struct Rows {
    rows: Vec<(RecordRow, [u8; 32])>,
    /// The store's change count then: [`Engine::match_rows`] scans again
    /// if anything was written since.
    changes: u64,
}

/// The rows of an unlock, read under the engine lock.
#[derive(Debug)]
pub struct Scan {
    /// Entries the snapshot held, by listed name.
    reused: Vec<(String, IndexEntry)>,
    /// Rows it did not hold, with their bodies and digests.
    to_decrypt: Vec<(RecordRow, [u8; 32])>,
    /// Entries in the snapshot.
    snapshot_len: usize,
}

/// An index built at unlock.
#[derive(Debug)]
pub struct Built {
    index: Index,
    /// Rows decrypted because the snapshot did not hold them.
    decrypted: usize,
    /// The snapshot on disk does not describe exactly this index.
    snapshot_stale: bool,
}

/// One thread's share of [`Engine::build_index`].
fn decrypt_part(key: &VaultKey, rows: &[(RecordRow, [u8; 32])]) -> Vec<(String, IndexEntry)> {
    rows.iter()
        .filter_map(|(row, digest)| match decrypt_body(key, row) {
            Ok(body) => {
                let entry = IndexEntry::digested(row, &body, *digest);
                Some((entry.listed_name(&body.name), entry))
            }
            Err(e) => {
                warn!(record = %row.id, error = %e.message, "record skipped");
                None
            }
        })
        .collect()
}

fn decrypt_body(key: &VaultKey, row: &RecordRow) -> Result<RecordBody> {
    let plain = key.decrypt(&row.body).map_err(|e| {
        err(
            ErrorCode::Failed,
            format!("record {} cannot be decrypted: {e}", row.id),
        )
    })?;
    RecordBody::from_bytes(&plain, &row.id).map_err(|e| err(ErrorCode::Failed, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vault_protocol::message::{Response, ResponseFrame};

    fn engine() -> (tempfile::TempDir, Engine) {
        let tmp = tempfile::tempdir().unwrap();
        let paths = VaultPaths::under_home(tmp.path());
        let e = Engine::open(paths, Config::default()).unwrap();
        (tmp, e)
    }

    fn token(name: &str, value: &str) -> NewRecord {
        let mut fields = BTreeMap::new();
        fields.insert("token".to_string(), SecretValue::from(value));
        NewRecord {
            name: name.into(),
            kind: CredentialType::Token,
            fields,
            description: None,
            tags: vec![],
            expires_at: None,
        }
    }

    #[test]
    fn lifecycle_with_history_and_restore() {
        let (_tmp, mut e) = engine();
        let now = Timestamp(1_000);
        assert_eq!(
            e.add(vec![token("a", "v1")], now).unwrap_err().code,
            ErrorCode::NotInitialized
        );
        e.init(&SecretValue::from("pw"), now).unwrap();
        e.add(vec![token("a", "v1")], now).unwrap();
        assert_eq!(
            e.add(vec![token("a", "v2")], now).unwrap_err().code,
            ErrorCode::AlreadyExists
        );
        let mut f = BTreeMap::new();
        f.insert("token".to_string(), SecretValue::from("v2"));
        e.set("a", f, vec![], None, None, None, now).unwrap();
        assert_eq!(
            e.get("a", now).unwrap().fields["token"].expose_secret(),
            "v2"
        );
        e.rename("a", "b", now).unwrap();
        assert_eq!(e.get("a", now).unwrap_err().code, ErrorCode::NotFound);
        e.remove("b", false, now).unwrap();
        assert!(
            e.list(&ListFilter::default(), None, now)
                .unwrap()
                .0
                .is_empty()
        );
        let hist = e.history("b").unwrap();
        assert_eq!(hist.len(), 4);
        e.restore("b", 1, now).unwrap();
        let v = e.get("b", now).unwrap();
        assert_eq!(v.fields["token"].expose_secret(), "v1");
        assert_eq!(v.revision, 5);
    }

    #[test]
    fn unlock_rebuilds_the_index_and_wrong_passphrase_fails() {
        let (tmp, mut e) = engine();
        let now = Timestamp(1_000);
        e.init(&SecretValue::from("pw"), now).unwrap();
        e.add(vec![token("x", "1"), token("y", "2")], now).unwrap();
        e.lock("test");
        assert_eq!(e.get("x", now).unwrap_err().code, ErrorCode::Locked);
        let mut e = Engine::open(VaultPaths::under_home(tmp.path()), Config::default()).unwrap();
        let sealed = e.sealed_key().unwrap();
        assert_eq!(
            e.open_key(&sealed, &SecretValue::from("nope"))
                .unwrap_err()
                .code,
            ErrorCode::BadPassphrase
        );
        let key = e.open_key(&sealed, &SecretValue::from("pw")).unwrap();
        let rows = e.scan_rows().unwrap();
        let scan = e.match_rows(rows, Default::default()).unwrap();
        let index = Engine::build_index(&key, scan);
        e.install(key, index, now);
        assert_eq!(
            e.list(&ListFilter::default(), None, now).unwrap().0.len(),
            2
        );
    }

    /// Opens the vault under `home` as vaultd does: the rows, then the
    /// snapshot (unless `fresh`), then what it lacks. Returns how many rows
    /// were decrypted.
    fn reopen(home: &std::path::Path, fresh: bool, now: Timestamp) -> (Engine, usize) {
        let mut e = Engine::open(VaultPaths::under_home(home), Config::default()).unwrap();
        let key = e
            .open_key(&e.sealed_key().unwrap(), &SecretValue::from("pw"))
            .unwrap();
        let rows = e.scan_rows().unwrap();
        let snapshot = if fresh {
            Default::default()
        } else {
            Engine::read_snapshot(&key, &e.snapshot_path())
        };
        let built = Engine::build_index(&key, e.match_rows(rows, snapshot).unwrap());
        let decrypted = built.decrypted;
        e.install(key, built, now);
        (e, decrypted)
    }

    fn unlock_from_snapshot(home: &std::path::Path, now: Timestamp) -> (Engine, usize) {
        reopen(home, false, now)
    }

    /// Everything `list` shows.
    fn listing(e: &Engine, now: Timestamp) -> String {
        format!("{:?}", e.list(&ListFilter::default(), None, now).unwrap().0)
    }

    /// What `list` shows after decrypting every record.
    fn full_listing(home: &std::path::Path, now: Timestamp) -> String {
        let (mut e, _) = reopen(home, true, now);
        let out = listing(&e, now);
        // Leave the snapshot on disk as it was.
        e.vault.lock();
        out
    }

    #[test]
    fn the_vault_state_decides_what_can_run() {
        let (tmp, mut e) = engine();
        let now = Timestamp(1_000);
        assert!(matches!(e.vault, Vault::Uninitialized));
        assert_eq!(e.get("x", now).unwrap_err().code, ErrorCode::NotInitialized);
        // Nothing to unlock: installing a key leaves it uninitialized.
        e.install(
            VaultKey::generate(),
            Built {
                index: Index::new(),
                decrypted: 0,
                snapshot_stale: false,
            },
            now,
        );
        assert!(matches!(e.vault, Vault::Uninitialized));
        assert!(e.is_locked());

        e.init(&SecretValue::from("pw"), now).unwrap();
        assert!(matches!(e.vault, Vault::Unlocked(..)));
        e.add(vec![token("x", "1")], now).unwrap();
        e.lock("test");
        assert!(matches!(e.vault, Vault::Locked(_)));
        assert_eq!(e.get("x", now).unwrap_err().code, ErrorCode::Locked);
        assert!(e.vault.lock().is_none(), "locking twice is a no-op");
        drop(e);

        let (e, _) = reopen(tmp.path(), false, now);
        assert!(matches!(e.vault, Vault::Unlocked(..)));
        assert_eq!(e.get("x", now).unwrap().name, "x");
    }

    #[test]
    fn unlock_reads_the_snapshot_and_decrypts_only_what_changed_since() {
        let (tmp, mut e) = engine();
        let home = tmp.path();
        let now = Timestamp(1_000);
        e.init(&SecretValue::from("pw"), now).unwrap();
        let described = NewRecord {
            description: Some("ci token".into()),
            tags: vec!["ci".into(), "team".into()],
            expires_at: Some(Timestamp(9_000_000_000)),
            ..token("x", "1")
        };
        e.add(vec![described, token("y", "2"), token("w", "3")], now)
            .unwrap();
        e.lock("test");
        let path = VaultPaths::under_home(home).index_snapshot();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        ) & 0o777;
        assert_eq!(mode, 0o600);
        let first = std::fs::read(&path).unwrap();

        let (mut e, decrypted) = unlock_from_snapshot(home, now);
        assert_eq!(
            decrypted, 0,
            "an up-to-date snapshot spares every decryption"
        );
        assert_eq!(listing(&e, now), full_listing(home, now));

        // Changes, then a crash: the snapshot on disk predates them.
        e.set(
            "x",
            BTreeMap::new(),
            vec![],
            Some("moved".into()),
            None,
            None,
            now,
        )
        .unwrap();
        e.remove("y", false, now).unwrap();
        e.add(vec![token("z", "4")], now).unwrap();
        e.lock("test");
        std::fs::write(&path, &first).unwrap();
        let (e, decrypted) = unlock_from_snapshot(home, now);
        assert_eq!(decrypted, 2, "x changed and z is new; w is reused");
        let shown = listing(&e, now);
        assert_eq!(shown, full_listing(home, now));
        assert!(shown.contains("moved") && !shown.contains("ci token"));
        assert_eq!(
            e.get("x", now).unwrap().description.as_deref(),
            Some("moved")
        );
        assert_eq!(e.get("y", now).unwrap_err().code, ErrorCode::NotFound);
        drop(e); // writes it afresh
        let (_e, decrypted) = unlock_from_snapshot(home, now);
        assert_eq!(decrypted, 0);
    }

    #[test]
    fn a_new_vault_takes_away_an_earlier_vaults_snapshot() {
        let (tmp, mut e) = engine();
        let path = VaultPaths::under_home(tmp.path()).index_snapshot();
        std::fs::write(&path, b"left by an earlier vault").unwrap();
        e.init(&SecretValue::from("pw"), Timestamp(1_000)).unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn a_damaged_or_foreign_snapshot_costs_time_and_nothing_else() {
        let (tmp, mut e) = engine();
        let home = tmp.path();
        let now = Timestamp(1_000);
        e.init(&SecretValue::from("pw"), now).unwrap();
        e.add(vec![token("x", "1"), token("y", "2")], now).unwrap();
        e.lock("test");
        let path = VaultPaths::under_home(home).index_snapshot();
        let good = std::fs::read(&path).unwrap();
        let expected = full_listing(home, now);

        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        // Another vault's snapshot: sealed under another key.
        let (other, mut o) = engine();
        o.init(&SecretValue::from("pw"), now).unwrap();
        o.add(vec![token("x", "9")], now).unwrap();
        drop(o);
        let foreign = std::fs::read(VaultPaths::under_home(other.path()).index_snapshot()).unwrap();
        for bad in [flipped, foreign, good[..10].to_vec(), b"garbage".to_vec()] {
            std::fs::write(&path, &bad).unwrap();
            let (e, decrypted) = unlock_from_snapshot(home, now);
            assert_eq!(decrypted, 2);
            assert_eq!(listing(&e, now), expected);
        }
    }

    #[test]
    fn list_pages_fit_a_frame_and_cover_every_record_once() {
        let (_tmp, mut e) = engine();
        let now = Timestamp(1_000);
        e.init(&SecretValue::from("pw"), now).unwrap();
        // Long escaped descriptions make records big: few fit a page.
        let described: Vec<NewRecord> = (0..3000)
            .map(|i| NewRecord {
                description: Some("\u{1}".repeat(200)),
                ..token(&format!("rec-{i:05}"), "v")
            })
            .collect();
        e.add(described, now).unwrap();
        let filter = ListFilter::default();
        let (mut after, mut seen, mut pages) = (None, Vec::new(), 0);
        loop {
            let (page, next) = e.list(&filter, after.as_deref(), now).unwrap();
            let frame = ResponseFrame::new(
                1,
                Ok(Response::Records {
                    records: page.clone(),
                    next: next.clone(),
                }),
            );
            let bytes = vault_protocol::frame::encode(&frame).unwrap();
            assert!(
                bytes.len() <= vault_protocol::frame::MAX_FRAME,
                "page of {} bytes",
                bytes.len()
            );
            assert!(!page.is_empty());
            seen.extend(page.into_iter().map(|r| r.name));
            pages += 1;
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert!(pages > 1, "3000 big records need more than one page");
        let expected: Vec<String> = (0..3000).map(|i| format!("rec-{i:05}")).collect();
        assert_eq!(seen, expected, "every record once, in name order");
    }

    #[test]
    fn deadlines_lock_the_vault() {
        let (_tmp, mut e) = engine();
        e.init(&SecretValue::from("pw"), Timestamp(0)).unwrap();
        e.check_deadlines(Timestamp(899));
        assert!(!e.is_locked());
        e.touch(Timestamp(500));
        e.check_deadlines(Timestamp(1_300));
        assert!(!e.is_locked());
        e.check_deadlines(Timestamp(1_400));
        assert!(e.is_locked());
    }

    #[test]
    fn states() {
        let now = Timestamp(10_000);
        assert_eq!(state_of(None, now), RecordState::Ok);
        assert_eq!(state_of(Some(Timestamp(9_999)), now), RecordState::Expired);
        assert_eq!(
            state_of(Some(Timestamp(10_100)), now),
            RecordState::Expiring
        );
        assert_eq!(state_of(Some(Timestamp(20_000)), now), RecordState::Ok);
    }
}
