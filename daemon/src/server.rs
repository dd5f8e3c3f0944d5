//! The local socket server (docs/protocol.md): one task per connection, peer uid
//! checked on accept, a `Hello` handshake first, then any number of framed
//! requests answered in order. A bad frame gets an error reply and closes
//! only its own connection.
//!
//! A client cannot hold a connection slot by saying nothing: `hello` must
//! arrive within [`HELLO_TIMEOUT`] of the connect, every frame within
//! [`FRAME_TIMEOUT`] of its first byte, and when all [`MAX_CONNECTIONS`]
//! slots are taken the connection that has waited longest for its client's
//! next frame is closed to make room.
//!
//! Unlock is single-flight (one scrypt at a time; the others wait for its
//! result) and wrong passphrases cost a growing delay. Several CLIs hitting a
//! locked vault coordinate through a prompt lease so the user sees one prompt.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use interprocess::local_socket::tokio::{Listener, Stream};
use interprocess::local_socket::traits::StreamCommon as _;
use interprocess::local_socket::traits::tokio::Listener as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};
use vault_protocol::frame::{self, FrameError};
use vault_protocol::message::RequestFrame;
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{
    BUILD_VERSION, ErrorCode, PROTOCOL_VERSION, Request, Response, ResponseFrame, WireError,
};

use crate::engine::{AwsTarget, Engine, KubeTarget};

/// How long a client may take to send the rest of a frame once it started.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new connection may take to send its whole `hello` frame.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a prompting client holds the lease without unlocking.
const PROMPT_LEASE: Duration = Duration::from_secs(120);
/// Most connections served at once; a further one closes the connection
/// idle longest, or waits in the backlog when every one is mid-request.
const MAX_CONNECTIONS: usize = 256;
/// How often the ticker wakes to check wall-clock deadlines.
const TICK: Duration = Duration::from_secs(2);

/// Connections waiting for their client's next frame, keyed by when they
/// started waiting: the eviction candidates when every slot is taken.
#[derive(Debug, Default)]
pub(crate) struct IdleConnections {
    waiting: Mutex<BTreeMap<(Instant, u64), Arc<Notify>>>,
}

impl IdleConnections {
    fn waiting(&self) -> MutexGuard<'_, BTreeMap<(Instant, u64), Arc<Notify>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the connection that has waited longest, if any waits.
    fn evict_oldest(&self) -> bool {
        let oldest = self.waiting().pop_first();
        match oldest {
            Some(((since, conn), evict)) => {
                info!(
                    conn,
                    idle_ms = since.elapsed().as_millis() as u64,
                    "every connection slot is taken: closing the connection idle longest"
                );
                evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// A connection's entry in [`IdleConnections`], removed on drop.
pub(crate) struct IdleEntry<'a> {
    idle: &'a IdleConnections,
    key: (Instant, u64),
}

impl<'a> IdleEntry<'a> {
    pub(crate) fn enter(idle: &'a IdleConnections, conn: u64, evict: &Arc<Notify>) -> Self {
        let key = (Instant::now(), conn);
        idle.waiting().insert(key, Arc::clone(evict));
        Self { idle, key }
    }
}

impl Drop for IdleEntry<'_> {
    fn drop(&mut self) {
        self.idle.waiting().remove(&self.key);
    }
}

#[derive(Debug)]
struct Lease {
    conn: u64,
    until: Instant,
}

/// Shared daemon state.
#[derive(Debug)]
pub struct Daemon {
    /// The engine and the background workers (they get this, never the
    /// daemon).
    shared: Arc<crate::remote::Shared>,
    unlock_gate: tokio::sync::Mutex<u32>,
    lease: Mutex<Option<Lease>>,
    idle: IdleConnections,
    /// Bumped whenever lock state or the lease changes; waiters watch it.
    changed: watch::Sender<u64>,
    shutdown: watch::Sender<bool>,
    socket: String,
    pid: u32,
    euid: u32,
}

impl Daemon {
    /// Wraps an opened engine.
    pub fn new(engine: Engine, socket: String) -> Arc<Self> {
        Arc::new(Self {
            shared: Arc::new(crate::remote::Shared::new(engine)),
            unlock_gate: tokio::sync::Mutex::new(0),
            lease: Mutex::new(None),
            idle: IdleConnections::default(),
            changed: watch::channel(0).0,
            shutdown: watch::channel(false).0,
            socket,
            pid: std::process::id(),
            euid: rustix::process::geteuid().as_raw(),
        })
    }

    pub(crate) fn engine(&self) -> MutexGuard<'_, Engine> {
        self.shared.engine()
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Whether the peer of `stream` runs as our uid; a connection from
    /// another user is logged and must be dropped unanswered. The one check
    /// of both the main socket and the SSH agent's (`crate::agent`).
    pub(crate) fn is_owner(&self, stream: &Stream) -> bool {
        let peer = stream.peer_creds().ok().and_then(|c| c.euid());
        if peer != Some(self.euid) {
            warn!(peer_uid = ?peer, "connection from another user dropped");
            return false;
        }
        true
    }

    /// Becomes true when the daemon is asked to stop.
    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Asks the accept loop and every connection to stop.
    pub fn request_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    fn status(&self) -> Result<Response, WireError> {
        let mut engine = self.engine();
        engine.check_deadlines(Timestamp::now());
        let mut status = engine.status(&self.socket, self.pid, Timestamp::now())?;
        status.refresh = self
            .shared
            .refresher
            .report(|name, id, revision| engine.is_current(name, id, revision));
        status.sync =
            self.shared
                .syncer
                .status(engine.sync_server(), engine.queued(), engine.refusals());
        status.remotes = self.shared.publisher.infos(&engine);
        Ok(Response::Status(status))
    }

    fn release_lease(&self, conn: u64) {
        let mut lease = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        if lease.as_ref().is_some_and(|l| l.conn == conn) {
            *lease = None;
            drop(lease);
            self.bump();
        }
    }

    fn take_lease(&self, conn: u64) -> bool {
        let mut lease = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match lease.as_ref() {
            Some(l) if l.conn != conn && l.until > now => false,
            _ => {
                *lease = Some(Lease {
                    conn,
                    until: now + PROMPT_LEASE,
                });
                true
            }
        }
    }

    async fn unlock(
        self: &Arc<Self>,
        passphrase: vault_protocol::SecretValue,
    ) -> Result<Response, WireError> {
        let mut failures = self.unlock_gate.lock().await;
        let (sealed, snapshot_path) = {
            let engine = self.engine();
            // Not initialized → that error; already unlocked (by the client
            // we queued behind) → done, one scrypt for all of us.
            let sealed = engine.sealed_key()?;
            if !engine.is_locked() {
                drop(engine);
                return self.status();
            }
            (sealed, engine.snapshot_path())
        };
        // scrypt takes a few hundred milliseconds: never under the engine
        // lock. The other core meanwhile walks the rows and digests their
        // ciphertexts, which is all unlock needs of them when the index
        // snapshot is up to date (docs/architecture.md).
        let this = Arc::clone(self);
        let rows = tokio::task::spawn_blocking(move || this.engine().scan_rows());
        let opened = tokio::task::spawn_blocking(move || {
            crate::crypto::VaultKey::open(&sealed.0, passphrase.expose_secret())
        })
        .await
        .map_err(|_| task_failed())?;
        let rows = rows.await.map_err(|_| task_failed())?;
        let key = match opened {
            Ok(key) => key,
            Err(e) => return Err(Self::refused(&mut failures, e).await),
        };
        *failures = 0;
        let rows = rows?;
        // The snapshot is opened, and what it lacks decrypted, outside the
        // engine lock.
        let this = Arc::clone(self);
        let built = tokio::task::spawn_blocking(move || {
            let snapshot = Engine::read_snapshot(&key, &snapshot_path);
            let scan = this.engine().match_rows(rows, snapshot)?;
            let built = Engine::build_index(&key, scan);
            Ok::<_, WireError>((key, built))
        })
        .await
        .map_err(|_| task_failed())?;
        let (key, built) = built?;
        self.engine().install(key, built, Timestamp::now());
        *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.bump();
        // Catch up with the other devices, and publish what waited.
        self.shared.syncer.kick();
        self.shared.publisher.kick();
        self.status()
    }

    /// The answer to a passphrase that did not open the key. A wrong one
    /// waits longer after each failure in a row.
    async fn refused(failures: &mut u32, e: crate::crypto::KeyError) -> WireError {
        match e {
            crate::crypto::KeyError::BadPassphrase => {
                *failures += 1;
                let delay = Duration::from_millis(250u64 << (*failures).min(5));
                warn!(failures = *failures, "wrong passphrase");
                tokio::time::sleep(delay).await;
                WireError::new(
                    ErrorCode::BadPassphrase,
                    "wrong passphrase: the vault stays locked; try again",
                )
            }
            crate::crypto::KeyError::Damaged(why) => WireError::new(
                ErrorCode::Failed,
                format!(
                    "identity.age is damaged: {why}. Nothing was changed; restore it from a \
                     backup"
                ),
            ),
        }
    }

    async fn wait_unlocked(&self, timeout: Duration) -> Result<Response, WireError> {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout.min(Duration::from_secs(600));
        loop {
            if !self.engine().is_locked() {
                return self.status();
            }
            let prompting = self
                .lease
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some();
            if !prompting {
                return Err(WireError::new(
                    ErrorCode::Locked,
                    "vault is locked and nobody is unlocking it: run 'vault unlock'",
                ));
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(WireError::new(
                    ErrorCode::Locked,
                    "timed out waiting for another client to unlock: run 'vault unlock'",
                ));
            }
        }
    }

    /// Answers one request. The idle timer is applied here and nowhere
    /// else: a request that [`Request::extends_idle`] extends it once it is
    /// handled, whether it succeeded or not (a failed `get` is still the
    /// user at work; docs/decisions.md).
    async fn handle(
        self: &Arc<Self>,
        req: Request,
        conn: u64,
        peer: &PeerCell,
    ) -> Result<Response, WireError> {
        let extends = req.extends_idle();
        let result = self.route(req, conn, peer).await;
        if extends {
            self.engine().touch(Timestamp::now());
        }
        result
    }

    async fn route(
        self: &Arc<Self>,
        req: Request,
        conn: u64,
        peer: &PeerCell,
    ) -> Result<Response, WireError> {
        match req {
            Request::Hello { .. } => {
                Err(WireError::new(ErrorCode::Usage, "hello was already sent"))
            }
            Request::Status => self.status(),
            Request::Unlock { passphrase } => self.unlock(passphrase).await,
            Request::Lock => {
                self.engine().lock("lock requested");
                self.shared.gcp_tokens.clear();
                self.shared.sso_logins.clear();
                self.shared.syncer.forget_sign_ins();
                self.bump();
                self.status()
            }
            Request::PromptLease => Ok(Response::PromptLease {
                granted: self.take_lease(conn),
            }),
            Request::WaitUnlocked { timeout_ms } => {
                self.wait_unlocked(Duration::from_millis(timeout_ms)).await
            }
            Request::Shutdown => {
                self.engine().lock("shutdown");
                self.shared.gcp_tokens.clear();
                self.shared.sso_logins.clear();
                self.shared.syncer.forget_sign_ins();
                self.request_shutdown();
                Ok(Response::Done)
            }
            Request::Login { url, token } => {
                crate::remote::syncer::login(&self.shared, &url, token).await
            }
            Request::LoginSso { url } => crate::remote::server_sso::start(&self.shared, &url).await,
            Request::LoginSsoWait { url, user_code } => {
                crate::remote::server_sso::wait(&self.shared, &url, &user_code).await
            }
            Request::Join {
                vault_id,
                passphrase,
            } => {
                let r = crate::remote::syncer::join(&self.shared, &vault_id, passphrase).await;
                self.bump();
                r
            }
            Request::SyncVerify { repair } => {
                crate::remote::syncer::verify(&self.shared, repair).await
            }
            Request::AuditUnshare => crate::remote::syncer::unshare_audit(&self.shared).await,
            Request::GcpToken { name, scopes } => {
                let r = crate::remote::gcp::token(&self.shared, &name, scopes).await;
                if r.is_ok() {
                    self.engine()
                        .audit(std::slice::from_ref(&name), "gcp_token", &peer.get());
                }
                r
            }
            Request::GcpSubjectToken { name } => {
                let mut engine = self.engine();
                let r = crate::remote::wif::subject_token(&engine, &name, Timestamp::now());
                if r.is_ok() {
                    engine.audit(
                        std::slice::from_ref(&name),
                        "gcp_subject_token",
                        &peer.get(),
                    );
                }
                r
            }
            Request::EksToken {
                name,
                cluster,
                region,
            } => {
                let names = std::slice::from_ref(&name);
                // Keys whose STS endpoint came from another device wait
                // for `vault approve`, as for any hand-out.
                self.engine().check_approved(names)?;
                crate::remote::refresher::ensure_fresh(&self.shared, names).await;
                let r = crate::remote::eks::token(&self.shared, &name, &cluster, region);
                if r.is_ok() {
                    self.engine().audit(names, "eks_token", &peer.get());
                }
                r
            }
            Request::ConsoleUrl {
                name,
                destination,
                region,
                duration_secs,
            } => {
                let names = std::slice::from_ref(&name);
                self.engine().check_approved(names)?;
                crate::remote::refresher::ensure_fresh(&self.shared, names).await;
                let asked = crate::remote::console::Asked {
                    destination,
                    region,
                    duration: duration_secs.map(Duration::from_secs),
                };
                let r = crate::remote::console::sign_in(&self.shared, &name, asked).await;
                if r.is_ok() {
                    self.engine().audit(names, "console_url", &peer.get());
                }
                r
            }
            Request::SsoLogin { name } => {
                crate::remote::sso::login_start(&self.shared, &name).await
            }
            Request::SsoWait { name, user_code } => {
                let r = crate::remote::sso::login_wait(&self.shared, &name, &user_code).await;
                if r.is_ok() {
                    self.engine()
                        .audit(std::slice::from_ref(&name), "sso_login", &peer.get());
                }
                r
            }
            Request::SsoRoles { name } => crate::remote::sso::roles(&self.shared, &name).await,
            Request::Check { names, timeout_ms } => {
                // Keys go to the endpoints their records name: a field from
                // another device waits for `vault approve` (docs/sync.md).
                crate::remote::checker::check(
                    &self.shared,
                    names,
                    timeout_ms.map(Duration::from_millis),
                )
                .await
            }
            Request::Rotate {
                name,
                fields,
                grace_secs,
                verify_ms,
                finish,
            } => {
                // The keys go to IAM and STS at endpoints approved here;
                // the new value reaches every file and platform it is
                // bound to (docs/lifecycle.md).
                let plan = crate::remote::rotator::Asked {
                    fields,
                    grace: grace_secs.map(Duration::from_secs),
                    verify: verify_ms.map(Duration::from_millis),
                    finish,
                };
                let r = crate::remote::rotator::rotate(&self.shared, &name, plan).await;
                if r.is_ok() {
                    self.engine()
                        .audit(std::slice::from_ref(&name), "rotate", &peer.get());
                }
                r
            }
            Request::SyncNow => crate::remote::syncer::sync_now(&self.shared)
                .await
                .map(Response::Synced),
            Request::RemoteAdd {
                name,
                kind,
                url,
                token,
                replace,
            } => {
                crate::remote::publisher::add(&self.shared, &name, kind, &url, token, replace).await
            }
            Request::RemoteRemove { name, force } => {
                crate::remote::publisher::remove(&self.shared, &name, force).await
            }
            Request::RemoteStatus { name } => {
                crate::remote::publisher::status(&self.shared, &name, false).await
            }
            Request::Publish {
                name,
                remote,
                remote_name,
            } => {
                let r = crate::remote::publisher::publish(
                    &self.shared,
                    &name,
                    &remote,
                    remote_name.as_deref(),
                )
                .await;
                if r.is_ok() {
                    self.engine()
                        .audit(std::slice::from_ref(&name), "publish", &peer.get());
                }
                r
            }
            Request::Audit {
                name,
                since,
                after,
                device,
                all_devices,
            } => {
                let me = Arc::clone(self);
                tokio::task::spawn_blocking(move || {
                    let mut engine = me.engine();
                    let (entries, problems, next) = if all_devices || device.is_some() {
                        engine.audit_log_devices(
                            name.as_deref(),
                            since,
                            after.unwrap_or(0),
                            device.as_deref(),
                        )?
                    } else {
                        engine.audit_log(name.as_deref(), since, after)?
                    };
                    Ok(Response::Audit {
                        entries,
                        problems,
                        next,
                    })
                })
                .await
                .map_err(|_| {
                    WireError::new(ErrorCode::Internal, "request failed; see vaultd.log")
                })?
            }
            Request::PublishRepair { remote } => {
                crate::remote::publisher::status(&self.shared, &remote, true).await
            }
            Request::Unpublish { name, remote } => {
                crate::remote::publisher::unpublish(&self.shared, &name, remote.as_deref()).await
            }
            other => {
                // Whatever hands out values gets them fresh (docs/refresh.md).
                let handed_out: &[String] = match &other {
                    Request::Get { name }
                    | Request::EmitAws { name, .. }
                    | Request::EmitDocker { name, .. }
                    | Request::EmitFile { name, .. } => std::slice::from_ref(name),
                    Request::Resolve { names } => names,
                    _ => &[],
                };
                // What the audit log records (docs/lifecycle.md): every
                // value handed out, the one-time code included.
                let audited = match &other {
                    Request::Otp { name } => Some(std::slice::from_ref(name)),
                    _ if !handed_out.is_empty() => Some(handed_out),
                    _ => None,
                }
                .map(|names| (op_name(&other), names.to_vec()));
                // Before anything is refreshed, handed out or written: a
                // field from another device that runs or writes waits for
                // `vault approve` (docs/sync.md).
                if !handed_out.is_empty() {
                    self.engine().check_approved(handed_out)?;
                }
                crate::remote::refresher::ensure_fresh(&self.shared, handed_out).await;
                let me = Arc::clone(self);
                let result = tokio::task::spawn_blocking(move || me.dispatch_blocking(other))
                    .await
                    .map_err(|_| {
                        WireError::new(ErrorCode::Internal, "request failed; see vaultd.log")
                    })?;
                if let (Ok(_), Some((op, names))) = (&result, audited) {
                    let peer = peer.get();
                    self.engine().audit(&names, op, &peer);
                }
                result
            }
        }
    }

    /// Requests that touch the store; run on the blocking pool.
    pub(crate) fn dispatch_blocking(&self, req: Request) -> Result<Response, WireError> {
        let now = Timestamp::now();
        let mut engine = self.engine();
        engine.check_deadlines(now);
        let log_before = engine.log_last();
        let result = match req {
            Request::Init { passphrase } => {
                let r = engine.init(&passphrase, now);
                drop(engine);
                self.bump();
                return r.map(|(vault_id, recipient)| Response::Initialized {
                    vault_id,
                    recipient,
                });
            }
            Request::Add { record } => engine
                .add(vec![record], now)
                .map(|mut v| Response::Changed(v.remove(0))),
            Request::AddMany { records } => engine.add(records, now).map(|v| Response::AddedMany {
                count: v.len() as u64,
            }),
            Request::Set {
                name,
                fields,
                unset,
                description,
                tags,
                expires_at,
            } => engine
                .set(&name, fields, unset, description, tags, expires_at, now)
                .map(Response::Changed),
            Request::Get { name } => engine.get(&name, now).map(Response::Record),
            Request::Otp { name } => engine.otp(&name, now),
            Request::Complete { what, prefix } => engine
                .complete(&what, &prefix)
                .map(|items| Response::Completions { items }),
            Request::Resolve { names } => engine
                .resolve(&names, now)
                .map(|records| Response::Resolved { records }),
            Request::List { filter, after } => {
                // `--used` reads the audit log: what waits is written first.
                if filter.used
                    && let Err(e) = engine.flush_audit()
                {
                    warn!(error = %e.message, "cannot write the audit log");
                }
                engine
                    .list(&filter, after.as_deref(), now)
                    .map(|(records, next)| Response::Records { records, next })
            }
            Request::Remove { name, force } => {
                engine.remove(&name, force, now).map(Response::Changed)
            }
            Request::Rename { from, to } => engine.rename(&from, &to, now).map(Response::Changed),
            Request::History { name } => engine
                .history(&name)
                .map(|revisions| Response::History { revisions }),
            Request::Restore { name, revision } => {
                engine.restore(&name, revision, now).map(Response::Changed)
            }
            Request::EmitAws {
                name,
                profile,
                path,
                force,
                process,
                config,
                adopt,
                sso_cache,
            } => match sso_cache {
                Some(cache) => engine.emit_sso(&name, &profile, &path, &cache, force, now),
                None => engine.emit_aws(
                    &name,
                    &profile,
                    &path,
                    AwsTarget {
                        force,
                        process,
                        config,
                        adopt,
                    },
                    now,
                ),
            }
            .map(Response::Emitted),
            Request::EmitFile {
                name,
                kind,
                path,
                force,
                program,
            } => engine
                .emit_file(&name, &kind, path, force, program, now)
                .map(Response::Emitted),
            Request::EmitDocker {
                name,
                path,
                force,
                helper,
                adopt,
            } => engine
                .emit_docker(&name, &path, force, helper, adopt, now)
                .map(Response::Emitted),
            Request::EmitKube {
                name,
                path,
                user,
                program,
                cluster,
                region,
                scopes,
                force,
            } => engine
                .emit_kube(
                    &name,
                    &path,
                    KubeTarget {
                        user,
                        program,
                        cluster,
                        region,
                        scopes,
                        force,
                    },
                    now,
                )
                .map(Response::Emitted),
            Request::EmitRepair => engine
                .emit_repair(now)
                .map(|emitters| Response::Emitters { emitters }),
            Request::EmitList => engine
                .emit_list(now)
                .map(|emitters| Response::Emitters { emitters }),
            Request::EmitRemove { id, keep } => {
                engine.emit_remove(&id, keep).map(Response::Emitted)
            }
            Request::Approvals { names } => engine
                .approvals(&names)
                .map(|approvals| Response::Approvals { approvals }),
            Request::Approve { name, revision } => engine
                .approve(&name, revision, now)
                .map(|approvals| Response::Approvals { approvals }),
            Request::Conflicts => engine
                .conflicts()
                .map(|conflicts| Response::Conflicts { conflicts }),
            Request::RemoteList => engine.check_unlocked().map(|()| Response::Remotes {
                remotes: self.shared.publisher.infos(&engine),
            }),
            _ => Err(WireError::new(
                ErrorCode::Internal,
                "request routed to the wrong handler",
            )),
        };
        if engine.log_last() != log_before {
            self.shared.syncer.kick();
            self.shared.publisher.kick();
            // A record put back to a rotation's old key during its grace
            // gets that key turned on again now, not at the next sweep.
            self.shared.rotator.kick();
        }
        result
    }
}

/// A connection slot for a new connection. Every slot taken: close the
/// connection idle longest (a silent or dribbling client first) rather than
/// keep the new one waiting; when all are mid-request, wait for one to
/// finish. `None` at shutdown. The main socket's and the SSH agent's.
pub(crate) async fn take_slot(
    slots: &Arc<tokio::sync::Semaphore>,
    idle: &IdleConnections,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    loop {
        match Arc::clone(slots).try_acquire_owned() {
            Ok(p) => return Some(p),
            Err(tokio::sync::TryAcquireError::Closed) => return None,
            Err(tokio::sync::TryAcquireError::NoPermits) => {}
        }
        idle.evict_oldest();
        tokio::select! {
            p = Arc::clone(slots).acquire_owned() => return p.ok(),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = shutdown.wait_for(|v| *v) => return None,
        }
    }
}

/// A blocking task of unlock panicked or was cancelled.
fn task_failed() -> WireError {
    WireError::new(ErrorCode::Internal, "unlock task failed; see vaultd.log")
}

/// Reads one frame body; `Closed` between frames. The first byte may take
/// until `first_byte_by` (forever when `None`); the whole frame must arrive
/// within [`FRAME_TIMEOUT`] of its first byte, and by `first_byte_by` too.
async fn read_frame(
    stream: &mut &Stream,
    first_byte_by: Option<tokio::time::Instant>,
) -> Result<zeroize::Zeroizing<Vec<u8>>, FrameError> {
    let timed_out = |what: &str| {
        FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{what} not received in time"),
        ))
    };
    let mut header = [0u8; 4];
    let first = match first_byte_by {
        Some(by) => tokio::time::timeout_at(by, stream.read(&mut header[..1]))
            .await
            .map_err(|_| timed_out("hello"))?,
        None => stream.read(&mut header[..1]).await,
    };
    match first {
        Ok(0) => return Err(FrameError::Closed),
        Ok(_) => {}
        Err(e) => return Err(e.into()),
    }
    let mut frame_by = tokio::time::Instant::now() + FRAME_TIMEOUT;
    if let Some(by) = first_byte_by {
        frame_by = frame_by.min(by);
    }
    let rest = async {
        stream.read_exact(&mut header[1..]).await?;
        let len = frame::body_len(header)?;
        let mut body = zeroize::Zeroizing::new(vec![0u8; len]);
        stream.read_exact(&mut body).await?;
        Ok::<_, FrameError>(body)
    };
    tokio::time::timeout_at(frame_by, rest)
        .await
        .map_err(|_| timed_out("frame"))?
}

async fn send(stream: &mut &Stream, frame: &ResponseFrame) -> bool {
    match frame::encode(frame) {
        Ok(bytes) => stream.write_all(&bytes).await.is_ok(),
        Err(e) => {
            warn!(error = %e, "response could not be encoded");
            false
        }
    }
}

/// The id of a frame we could not fully parse, if it has one.
fn salvage_id(body: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: u64,
    }
    serde_json::from_slice::<IdOnly>(body)
        .map(|f| f.id)
        .unwrap_or(0)
}

/// The client of one connection, for the audit log: its pid and uid from
/// the socket at once; the rest (`/proc`) is read on the blocking pool
/// while the client sends its first requests, so a hand-out seldom waits
/// for it.
pub(crate) struct PeerCell {
    pid: Option<u32>,
    uid: u32,
    described: Arc<std::sync::OnceLock<Arc<crate::peer::Peer>>>,
}

impl PeerCell {
    fn of(stream: &Stream, uid: u32, audit: bool) -> Self {
        let pid = stream
            .peer_creds()
            .ok()
            .and_then(|c| c.pid())
            .and_then(|p| u32::try_from(p).ok());
        let cell = Self {
            pid,
            uid,
            described: Arc::default(),
        };
        if audit {
            let (described, pid) = (Arc::clone(&cell.described), cell.pid);
            tokio::task::spawn_blocking(move || {
                described.get_or_init(|| Arc::new(describe(pid, uid)));
            });
        }
        cell
    }

    fn get(&self) -> Arc<crate::peer::Peer> {
        Arc::clone(
            self.described
                .get_or_init(|| Arc::new(describe(self.pid, self.uid))),
        )
    }
}

fn describe(pid: Option<u32>, uid: u32) -> crate::peer::Peer {
    match pid {
        Some(pid) => crate::peer::Peer::of(pid, uid),
        None => crate::peer::Peer::unknown(uid),
    }
}

async fn serve_connection(daemon: Arc<Daemon>, stream: Stream, conn: u64) {
    if !daemon.is_owner(&stream) {
        return;
    }
    let audit = daemon.engine().config().audit;
    let peer = PeerCell::of(&stream, daemon.euid, audit);
    let mut shutdown = daemon.shutdown.subscribe();
    let mut s = &stream;
    let mut greeted = false;
    let hello_by = tokio::time::Instant::now() + HELLO_TIMEOUT;
    let evict = Arc::new(Notify::new());
    loop {
        let waiting = IdleEntry::enter(&daemon.idle, conn, &evict);
        let body = tokio::select! {
            r = read_frame(&mut s, (!greeted).then_some(hello_by)) => r,
            _ = evict.notified() => break,
            _ = shutdown.wait_for(|v| *v) => break,
        };
        drop(waiting);
        let body = match body {
            Ok(b) => b,
            Err(FrameError::Closed) => break,
            Err(e @ FrameError::TooLarge(_)) => {
                warn!(conn, error = %e, "bad frame");
                let err =
                    WireError::new(ErrorCode::BadFrame, format!("{e}; closing the connection"));
                send(&mut s, &ResponseFrame::new(0, Err(err))).await;
                break;
            }
            Err(e) => {
                debug!(conn, error = %e, "connection ended");
                break;
            }
        };
        let frame: RequestFrame = match frame::decode(&body) {
            Ok(f) => f,
            Err(e) => {
                warn!(conn, "malformed frame");
                let err =
                    WireError::new(ErrorCode::BadFrame, format!("{e}; closing the connection"));
                send(&mut s, &ResponseFrame::new(salvage_id(&body), Err(err))).await;
                break;
            }
        };
        drop(body);
        if !greeted {
            let reply = match frame.req {
                Request::Hello { protocol, build }
                    if protocol == PROTOCOL_VERSION && build == BUILD_VERSION =>
                {
                    greeted = true;
                    Ok(Response::Hello {
                        protocol: PROTOCOL_VERSION,
                        build: BUILD_VERSION.to_owned(),
                        pid: daemon.pid,
                    })
                }
                Request::Hello { protocol, build } => Err(WireError::new(
                    ErrorCode::VersionMismatch,
                    format!(
                        "vaultd {BUILD_VERSION} (protocol {PROTOCOL_VERSION}) is running but this \
                         vault is {build} (protocol {protocol}): run 'vault daemon restart'"
                    ),
                )),
                _ => Err(WireError::new(
                    ErrorCode::BadFrame,
                    "the first request on a connection must be hello",
                )),
            };
            let ok = reply.is_ok();
            if !send(&mut s, &ResponseFrame::new(frame.id, reply)).await || !ok {
                break;
            }
            continue;
        }
        let id = frame.id;
        let op = op_name(&frame.req);
        let started = Instant::now();
        let result = if waits_for_a_person(&frame.req) {
            // A wait for a person (a sign-in approved in a browser) ends
            // when its client goes (Ctrl-C): the daemon stops polling. The
            // client sends nothing meanwhile; anything it does send ends
            // the connection.
            let mut probe = [0u8; 1];
            tokio::select! {
                r = daemon.handle(frame.req, conn, &peer) => r,
                read = s.read(&mut probe) => {
                    debug!(conn, op, gone = matches!(read, Ok(0) | Err(_)), "client left a wait; dropped");
                    break;
                }
            }
        } else {
            daemon.handle(frame.req, conn, &peer).await
        };
        if let Err(e) = &result {
            debug!(conn, op, code = ?e.code, "request failed");
        } else {
            debug!(
                conn,
                op,
                micros = started.elapsed().as_micros() as u64,
                "request done"
            );
        }
        if !send(&mut s, &ResponseFrame::new(id, result)).await {
            break;
        }
    }
    daemon.release_lease(conn);
}

/// Requests that wait for a person, not for the vault: dropped when their
/// client closes the connection.
fn waits_for_a_person(req: &Request) -> bool {
    matches!(req, Request::SsoWait { .. } | Request::LoginSsoWait { .. })
}

fn op_name(req: &Request) -> &'static str {
    match req {
        Request::Hello { .. } => "hello",
        Request::Status => "status",
        Request::Init { .. } => "init",
        Request::Unlock { .. } => "unlock",
        Request::Lock => "lock",
        Request::PromptLease => "prompt_lease",
        Request::WaitUnlocked { .. } => "wait_unlocked",
        Request::Add { .. } => "add",
        Request::AddMany { .. } => "add_many",
        Request::Set { .. } => "set",
        Request::Get { .. } => "get",
        Request::Otp { .. } => "otp",
        Request::GcpToken { .. } => "gcp_token",
        Request::GcpSubjectToken { .. } => "gcp_subject_token",
        Request::EksToken { .. } => "eks_token",
        Request::ConsoleUrl { .. } => "console_url",
        Request::Check { .. } => "check",
        Request::Rotate { .. } => "rotate",
        Request::Audit { .. } => "audit",
        Request::Complete { .. } => "complete",
        Request::List { .. } => "list",
        Request::Resolve { .. } => "resolve",
        Request::Remove { .. } => "remove",
        Request::Rename { .. } => "rename",
        Request::History { .. } => "history",
        Request::Restore { .. } => "restore",
        Request::EmitAws { .. } => "emit_aws",
        Request::EmitList => "emit_list",
        Request::EmitFile { .. } => "emit_file",
        Request::EmitRepair => "emit_repair",
        Request::EmitDocker { .. } => "emit_docker",
        Request::EmitKube { .. } => "emit_kube",
        Request::EmitRemove { .. } => "emit_remove",
        Request::SsoLogin { .. } => "sso_login",
        Request::SsoWait { .. } => "sso_wait",
        Request::SsoRoles { .. } => "sso_roles",
        Request::Shutdown => "shutdown",
        Request::Login { .. } => "login",
        Request::LoginSso { .. } => "login_sso",
        Request::LoginSsoWait { .. } => "login_sso_wait",
        Request::Join { .. } => "join",
        Request::SyncNow => "sync_now",
        Request::SyncVerify { .. } => "sync_verify",
        Request::AuditUnshare => "audit_unshare",
        Request::Conflicts => "conflicts",
        Request::Approvals { .. } => "approvals",
        Request::Approve { .. } => "approve",
        Request::RemoteAdd { .. } => "remote_add",
        Request::RemoteList => "remote_list",
        Request::RemoteRemove { .. } => "remote_remove",
        Request::RemoteStatus { .. } => "remote_status",
        Request::Publish { .. } => "publish",
        Request::PublishRepair { .. } => "publish_repair",
        Request::Unpublish { .. } => "unpublish",
    }
}

/// The next connection on `listener` (the `what` socket), or `None` once
/// shutdown is requested. A failed accept is logged and retried after a
/// pause. Shared by the main socket and the SSH agent's.
pub(crate) async fn next_connection(
    listener: &Listener,
    shutdown: &mut watch::Receiver<bool>,
    what: &str,
) -> Option<Stream> {
    loop {
        let stream = tokio::select! {
            s = listener.accept() => s,
            _ = shutdown.wait_for(|v| *v) => return None,
        };
        match stream {
            Ok(stream) => return Some(stream),
            Err(e) => {
                warn!(error = %e, socket = what, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves `listener` until shutdown is requested.
pub async fn run(daemon: Arc<Daemon>, listener: Listener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let next = AtomicU64::new(1);
    let ticker = {
        let d = Arc::clone(&daemon);
        let exec_dir = daemon.engine().paths().exec_dir();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            loop {
                tick.tick().await;
                // Files and the engine lock: off the async workers, and the
                // engine taken once.
                let (d2, exec_dir) = (Arc::clone(&d), exec_dir.clone());
                let became_locked = tokio::task::spawn_blocking(move || {
                    crate::fsutil::sweep_exec_dirs(&exec_dir);
                    let now = Timestamp::now();
                    let mut engine = d2.engine();
                    let was_locked = engine.is_locked();
                    engine.check_deadlines(now);
                    engine.expire_emitted(now);
                    engine.watch_emitted(now);
                    if let Err(e) = engine.flush_audit() {
                        warn!(error = %e.message, "cannot write the audit log");
                    }
                    !was_locked && engine.is_locked()
                })
                .await
                .unwrap_or(false);
                if became_locked {
                    d.shared.gcp_tokens.clear();
                    d.shared.sso_logins.clear();
                    d.shared.syncer.forget_sign_ins();
                    d.bump();
                }
                crate::remote::refresher::refresh_bound(&d.shared);
                crate::remote::sso::renew_bound(&d.shared);
            }
        })
    };
    let syncing = tokio::spawn(crate::remote::syncer::background(Arc::clone(
        &daemon.shared,
    )));
    let publishing = tokio::spawn(crate::remote::publisher::background(Arc::clone(
        &daemon.shared,
    )));
    let checking = tokio::spawn(crate::remote::checker::background(Arc::clone(
        &daemon.shared,
    )));
    let rotating = tokio::spawn(crate::remote::rotator::background(Arc::clone(
        &daemon.shared,
    )));
    let mut shutdown = daemon.shutdown.subscribe();
    while let Some(stream) = next_connection(&listener, &mut shutdown, "vaultd").await {
        let Some(permit) = take_slot(&slots, &daemon.idle, &mut shutdown).await else {
            break;
        };
        let conn = next.fetch_add(1, Ordering::Relaxed);
        let d = Arc::clone(&daemon);
        tokio::spawn(async move {
            serve_connection(d, stream, conn).await;
            drop(permit);
        });
    }
    ticker.abort();
    syncing.abort();
    publishing.abort();
    checking.abort();
    rotating.abort();
    info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use vault_protocol::paths::VaultPaths;

    /// One request of every kind, as a client sends it. Those that reach
    /// the network point at a closed port; names that do not exist fail.
    /// `Lock` and `Shutdown` come last: they end the session.
    const EVERY_REQUEST: [&str; 54] = [
        r#"{"op":"hello","protocol":1,"build":"x"}"#,
        r#"{"op":"status"}"#,
        r#"{"op":"init","passphrase":"pw"}"#,
        r#"{"op":"unlock","passphrase":"wrong"}"#,
        r#"{"op":"prompt_lease"}"#,
        r#"{"op":"wait_unlocked","timeout_ms":10}"#,
        r#"{"op":"add","record":{"name":"a","type":"token","fields":{"token":"t"}}}"#,
        r#"{"op":"add_many","records":[{"name":"b","type":"token","fields":{"token":"t"}}]}"#,
        r#"{"op":"set","name":"a","fields":{"token":"u"}}"#,
        r#"{"op":"get","name":"a"}"#,
        r#"{"op":"list"}"#,
        r#"{"op":"resolve","names":["a"]}"#,
        r#"{"op":"rename","from":"b","to":"c"}"#,
        r#"{"op":"history","name":"a"}"#,
        r#"{"op":"restore","name":"a","revision":1}"#,
        r#"{"op":"remove","name":"c"}"#,
        r#"{"op":"emit_aws","name":"none","profile":"p","path":"/nonexistent/c"}"#,
        r#"{"op":"emit_list"}"#,
        r#"{"op":"emit_file","name":"none","kind":"file"}"#,
        r#"{"op":"emit_repair"}"#,
        r#"{"op":"emit_docker","name":"none","path":"/nonexistent/c.json"}"#,
        r#"{"op":"emit_remove","id":"none"}"#,
        r#"{"op":"login","url":"http://127.0.0.1:1","token":"t"}"#,
        r#"{"op":"join","vault_id":"v","passphrase":"pw"}"#,
        r#"{"op":"sync_now"}"#,
        r#"{"op":"sync_verify"}"#,
        r#"{"op":"conflicts"}"#,
        r#"{"op":"approvals"}"#,
        r#"{"op":"approve","name":"a","revision":1}"#,
        r#"{"op":"remote_add","name":"r","kind":"osmo","url":"http://127.0.0.1:1","token":"t"}"#,
        r#"{"op":"remote_list"}"#,
        r#"{"op":"remote_remove","name":"r"}"#,
        r#"{"op":"remote_status","name":"r"}"#,
        r#"{"op":"publish","name":"a","remote":"r"}"#,
        r#"{"op":"publish_repair","remote":"r"}"#,
        r#"{"op":"unpublish","name":"a"}"#,
        r#"{"op":"otp","name":"a"}"#,
        r#"{"op":"complete","what":{"of":"credential"},"prefix":"a"}"#,
        r#"{"op":"check","names":["a"]}"#,
        r#"{"op":"audit"}"#,
        r#"{"op":"gcp_token","name":"a"}"#,
        r#"{"op":"rotate","name":"a","fields":{"token":"v"}}"#,
        r#"{"op":"eks_token","name":"a","cluster":"c"}"#,
        r#"{"op":"console_url","name":"a"}"#,
        r#"{"op":"emit_kube","name":"a","path":"/k","program":"/v","cluster":"c"}"#,
        r#"{"op":"gcp_subject_token","name":"a"}"#,
        r#"{"op":"sso_login","name":"a"}"#,
        r#"{"op":"sso_wait","name":"a","user_code":"B"}"#,
        r#"{"op":"sso_roles","name":"a"}"#,
        r#"{"op":"login_sso","url":"http://127.0.0.1:1"}"#,
        r#"{"op":"login_sso_wait","url":"http://127.0.0.1:1","user_code":"B"}"#,
        r#"{"op":"audit_unshare"}"#,
        r#"{"op":"lock"}"#,
        r#"{"op":"shutdown"}"#,
    ];

    /// Every variant, numbered: a new request kind does not compile here
    /// until it is added to [`EVERY_REQUEST`].
    fn kind(req: &Request) -> usize {
        match req {
            Request::Hello { .. } => 0,
            Request::Status => 1,
            Request::Init { .. } => 2,
            Request::Unlock { .. } => 3,
            Request::PromptLease => 4,
            Request::WaitUnlocked { .. } => 5,
            Request::Add { .. } => 6,
            Request::AddMany { .. } => 7,
            Request::Set { .. } => 8,
            Request::Get { .. } => 9,
            Request::List { .. } => 10,
            Request::Resolve { .. } => 11,
            Request::Rename { .. } => 12,
            Request::History { .. } => 13,
            Request::Restore { .. } => 14,
            Request::Remove { .. } => 15,
            Request::EmitAws { .. } => 16,
            Request::EmitList => 17,
            Request::EmitFile { .. } => 18,
            Request::EmitRepair => 19,
            Request::EmitDocker { .. } => 20,
            Request::EmitRemove { .. } => 21,
            Request::Login { .. } => 22,
            Request::Join { .. } => 23,
            Request::SyncNow => 24,
            Request::SyncVerify { .. } => 25,
            Request::Conflicts => 26,
            Request::Approvals { .. } => 27,
            Request::Approve { .. } => 28,
            Request::RemoteAdd { .. } => 29,
            Request::RemoteList => 30,
            Request::RemoteRemove { .. } => 31,
            Request::RemoteStatus { .. } => 32,
            Request::Publish { .. } => 33,
            Request::PublishRepair { .. } => 34,
            Request::Unpublish { .. } => 35,
            Request::Otp { .. } => 36,
            Request::Complete { .. } => 37,
            Request::Check { .. } => 38,
            Request::Audit { .. } => 39,
            Request::GcpToken { .. } => 40,
            Request::Rotate { .. } => 41,
            Request::EksToken { .. } => 42,
            Request::ConsoleUrl { .. } => 43,
            Request::EmitKube { .. } => 44,
            Request::GcpSubjectToken { .. } => 45,
            Request::SsoLogin { .. } => 46,
            Request::SsoWait { .. } => 47,
            Request::SsoRoles { .. } => 48,
            Request::LoginSso { .. } => 49,
            Request::LoginSsoWait { .. } => 50,
            Request::AuditUnshare => 51,
            Request::Lock => 52,
            Request::Shutdown => 53,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_request_kind_extends_the_idle_timer_exactly_as_declared() {
        let tmp = tempfile::tempdir().unwrap();
        let mut engine =
            Engine::open(VaultPaths::under_home(tmp.path()), Config::default()).unwrap();
        engine
            .init(&vault_protocol::SecretValue::from("pw"), Timestamp::now())
            .unwrap();
        let daemon = Daemon::new(engine, "test.sock".into());
        for (i, json) in EVERY_REQUEST.iter().enumerate() {
            let req: Request = serde_json::from_str(json).unwrap();
            assert_eq!(kind(&req), i, "{json} is out of place");
            let declared = req.extends_idle();
            // Half a minute spent: an extension moves the deadline later.
            let before = {
                let mut e = daemon.engine();
                let now = Timestamp::now();
                e.touch(Timestamp(now.unix() - 30));
                e.idle_deadline()
            };
            let peer = PeerCell {
                pid: Some(std::process::id()),
                uid: 0,
                described: Arc::default(),
            };
            let outcome = daemon
                .handle(req, 1, &peer)
                .await
                .map(|_| ())
                .map_err(|e| e.code);
            let after = daemon.engine().idle_deadline();
            let extended = match (before, after) {
                (Some(b), Some(a)) => a > b,
                _ => false,
            };
            assert_eq!(
                extended, declared,
                "{json} ({outcome:?}) must extend the idle timer iff extends_idle() says so"
            );
        }
    }
}
