//! The SSH agent (issue 25, docs/architecture.md "The SSH agent"): vaultd
//! serves the ssh-agent protocol (draft-miller-ssh-agent) on
//! `ssh-agent.sock` beside its own socket, 0600 in the same 0700 runtime
//! directory, and drops a connection from another uid exactly as the main
//! socket does ([`Daemon::is_owner`]).
//!
//! This module owns the agent's message parser (pure, unit-tested with
//! truncated, malformed and oversized input), the signing with an `ssh`
//! credential's key, and the connection loop. It must never hand a private
//! key out, write one anywhere, log one or a credential's name, or wait for
//! an unlock: a locked vault lists no identities and refuses to sign at
//! once, so `ssh` falls back to its other methods.
//!
//! Served: `REQUEST_IDENTITIES`, `SIGN_REQUEST` (asking through
//! `SSH_ASKPASS` first for a key marked `confirm`), and `ADD_IDENTITY` /
//! `ADD_ID_CONSTRAINED` (`ssh-add KEY`, with `-t` and `-c`), which store the
//! key as a new `ssh` credential. Removing and agent-locking keys (`ssh-add
//! -d`, `-D`, `-x`), smartcards and extensions answer `SSH_AGENT_FAILURE`
//! and change nothing: the vault's credentials are removed with `vault rm`.
//!
//! Parsed keys are cached by the vault's version ([`Engine::version`]): an
//! RSA key takes milliseconds to check, which a signature must not pay
//! again. The cache is dropped the moment the agent finds the vault
//! locked.
//!
//! [`Engine::version`]: crate::engine::Engine::version

use std::sync::Arc;
use std::time::Duration;

use interprocess::local_socket::tokio::{Listener, Stream};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};
use ssh_encoding::{Decode, Encode, Reader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};
use vault_protocol::timefmt::Timestamp;
use zeroize::Zeroizing;

use crate::server::Daemon;

/// The largest agent message accepted (its length field); a longer one
/// closes the connection. OpenSSH's own agent allows 256 KiB too.
pub const MAX_MESSAGE: usize = 256 * 1024;
/// How long a client may take to send the rest of a message once started.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most agent connections served at once; a further one closes the one
/// idle longest (as the main socket does), or waits while all are busy.
const MAX_CONNECTIONS: usize = 64;
/// How long `SSH_ASKPASS` may take to answer a confirmation; no answer is
/// a no.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(60);

/// Message numbers of draft-miller-ssh-agent.
mod msg {
    pub const FAILURE: u8 = 5;
    pub const SUCCESS: u8 = 6;
    pub const IDENTITIES_ANSWER: u8 = 12;
    pub const SIGN_RESPONSE: u8 = 14;
    pub const REQUEST_IDENTITIES: u8 = 11;
    pub const SIGN_REQUEST: u8 = 13;
    pub const ADD_IDENTITY: u8 = 17;
    pub const REMOVE_IDENTITY: u8 = 18;
    pub const REMOVE_ALL_IDENTITIES: u8 = 19;
    pub const ADD_SMARTCARD_KEY: u8 = 20;
    pub const REMOVE_SMARTCARD_KEY: u8 = 21;
    pub const LOCK: u8 = 22;
    pub const UNLOCK: u8 = 23;
    pub const ADD_ID_CONSTRAINED: u8 = 25;
    pub const ADD_SMARTCARD_KEY_CONSTRAINED: u8 = 26;
    pub const EXTENSION: u8 = 27;
}

/// `SIGN_REQUEST` flags: which RSA signature is asked for.
const RSA_SHA2_256: u32 = 2;
const RSA_SHA2_512: u32 = 4;

/// Key constraints of `ADD_ID_CONSTRAINED`.
const CONSTRAIN_LIFETIME: u8 = 1;
const CONSTRAIN_CONFIRM: u8 = 2;

/// A key `ssh-add` hands over, with what it asks of it.
#[derive(PartialEq, Eq)]
pub struct NewIdentity {
    /// The key pair (its private parts zeroized on drop by `ssh-key`).
    pub key: ssh_key::private::KeypairData,
    /// The key's comment (usually `user@host` or the file it came from).
    pub comment: String,
    /// `ssh-add -t`: seconds the key may be used for.
    pub lifetime: Option<u32>,
    /// `ssh-add -c`: ask before each signature.
    pub confirm: bool,
}

impl std::fmt::Debug for NewIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewIdentity")
            .field("key", &"[redacted]")
            .field("lifetime", &self.lifetime)
            .field("confirm", &self.confirm)
            .finish_non_exhaustive()
    }
}

/// One parsed agent request.
#[derive(Debug, PartialEq, Eq)]
pub enum AgentRequest {
    /// List the keys.
    Identities,
    /// Sign `data` with the key whose public blob is `key_blob`.
    Sign {
        /// The public key blob, as `Identities` listed it.
        key_blob: Vec<u8>,
        /// What to sign (not secret: the session hash and user name).
        data: Vec<u8>,
        /// `SSH_AGENT_RSA_SHA2_*`.
        flags: u32,
    },
    /// Store a key (`ssh-add KEY`).
    Add(Box<NewIdentity>),
    /// A request the agent understands but refuses (remove, lock, unlock,
    /// smartcard, extension): answered with a failure.
    Refused(u8),
}

/// Why a message could not be parsed. Every one is answered with
/// `SSH_AGENT_FAILURE`.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// No message type byte.
    Empty,
    /// A message number the protocol does not define for a client.
    Unknown(u8),
    /// Fields missing, too long for the message, or extra bytes after them.
    Malformed,
    /// A key constraint the agent cannot keep (an extension such as
    /// `restrict-destination-v00@openssh.com`): the key is not added, as
    /// the protocol requires.
    Constraint(u8),
}

/// The body length of a message from its 4-byte header, or `None` when it
/// is zero or over [`MAX_MESSAGE`] (the connection is then closed: what
/// follows cannot be trusted to be a message boundary).
pub fn message_len(header: [u8; 4]) -> Option<usize> {
    let len = u32::from_be_bytes(header) as usize;
    (1..=MAX_MESSAGE).contains(&len).then_some(len)
}

/// Parses one message body (after its length).
pub fn parse(body: &[u8]) -> Result<AgentRequest, ParseError> {
    let (&kind, mut rest) = body.split_first().ok_or(ParseError::Empty)?;
    let padded: Zeroizing<Vec<u8>>;
    let req = match kind {
        msg::REQUEST_IDENTITIES => AgentRequest::Identities,
        msg::SIGN_REQUEST => {
            let key_blob = Vec::<u8>::decode(&mut rest).map_err(|_| ParseError::Malformed)?;
            let data = Vec::<u8>::decode(&mut rest).map_err(|_| ParseError::Malformed)?;
            let flags = u32::decode(&mut rest).map_err(|_| ParseError::Malformed)?;
            AgentRequest::Sign {
                key_blob,
                data,
                flags,
            }
        }
        msg::ADD_IDENTITY | msg::ADD_ID_CONSTRAINED => {
            // A short ECDSA scalar, as ssh-add sends about one key in 256,
            // padded first (pad_ecdsa_scalar).
            if let Some((keypair, used)) = pad_ecdsa_scalar(rest) {
                let mut joined = keypair;
                joined.extend_from_slice(&rest[used..]);
                padded = joined;
                rest = &padded[..];
            }
            let key = ssh_key::private::KeypairData::decode(&mut rest)
                .map_err(|_| ParseError::Malformed)?;
            let comment = String::decode(&mut rest).map_err(|_| ParseError::Malformed)?;
            let mut new = NewIdentity {
                key,
                comment,
                lifetime: None,
                confirm: false,
            };
            if kind == msg::ADD_ID_CONSTRAINED {
                while !rest.is_finished() {
                    match u8::decode(&mut rest).map_err(|_| ParseError::Malformed)? {
                        CONSTRAIN_LIFETIME => {
                            let secs = u32::decode(&mut rest).map_err(|_| ParseError::Malformed)?;
                            new.lifetime = Some(new.lifetime.map_or(secs, |l| l.min(secs)));
                        }
                        CONSTRAIN_CONFIRM => new.confirm = true,
                        other => return Err(ParseError::Constraint(other)),
                    }
                }
            }
            AgentRequest::Add(Box::new(new))
        }
        msg::REMOVE_IDENTITY
        | msg::REMOVE_ALL_IDENTITIES
        | msg::ADD_SMARTCARD_KEY
        | msg::REMOVE_SMARTCARD_KEY
        | msg::LOCK
        | msg::UNLOCK
        | msg::ADD_SMARTCARD_KEY_CONSTRAINED
        | msg::EXTENSION => return Ok(AgentRequest::Refused(kind)),
        other => return Err(ParseError::Unknown(other)),
    };
    if !rest.is_finished() {
        return Err(ParseError::Malformed);
    }
    Ok(req)
}

/// Why an `ssh` credential's key is not offered.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyError {
    /// Not an OpenSSH private key we could read.
    Unreadable,
    /// Protected by a passphrase (store it without one: the vault is its
    /// protection).
    Encrypted,
    /// A type the agent does not sign with (DSA, P-384/521, security keys).
    Unsupported,
    /// ring refused the key's numbers.
    Rejected,
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Unreadable => "not an OpenSSH private key",
            Self::Encrypted => "passphrase-protected (not supported by the agent yet)",
            Self::Unsupported => "key type not supported (ed25519, ecdsa P-256, rsa only)",
            Self::Rejected => {
                "key rejected by ring (RSA must be 2048-4096 bits with e >= 65537), or its \
                 numbers are inconsistent"
            }
        })
    }
}

enum Signer {
    Ed25519(Ed25519KeyPair),
    EcdsaP256(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// One identity the agent offers: an `ssh` credential's key, ready to sign.
pub struct AgentKey {
    /// The credential's name (the identity's comment).
    pub comment: String,
    /// The public key blob (the wire encoding `ssh-add -L` shows in base64).
    pub blob: Vec<u8>,
    /// `SHA256:…`, as `ssh-add -l` shows it.
    pub fingerprint: String,
    signer: Signer,
}

impl std::fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentKey([redacted])")
    }
}

/// Big-endian bytes as ring wants them: no leading zeros.
fn trim(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// `d mod (p - 1)`: an RSA CRT exponent, which OpenSSH keys do not store
/// and ring needs. Constant-time arithmetic on 4096-bit numbers (ring signs
/// with moduli up to that size).
fn crt_exponent(d: &[u8], p: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    use crypto_bigint::{Encoding as _, NonZero, U4096};
    const SIZE: usize = 512;
    let (d, p) = (trim(d), trim(p));
    if d.len() > SIZE || p.len() > SIZE {
        return None;
    }
    let mut buf = Zeroizing::new([0u8; SIZE]);
    buf[SIZE - d.len()..].copy_from_slice(d);
    let d = Zeroizing::new(U4096::from_be_slice(&buf[..]));
    buf.fill(0);
    buf[SIZE - p.len()..].copy_from_slice(p);
    let p = Zeroizing::new(U4096::from_be_slice(&buf[..]));
    let p_minus_1: Option<NonZero<U4096>> = NonZero::new(p.wrapping_sub(&U4096::ONE)).into();
    let reduced = Zeroizing::new(d.rem(&p_minus_1?));
    let bytes = Zeroizing::new(reduced.to_be_bytes());
    Some(Zeroizing::new(trim(&bytes[..]).to_vec()))
}

/// The ECDSA P-256 key pair at the start of `keypair` (its wire encoding:
/// key type, curve, point, scalar) with the scalar left-padded to 32 bytes,
/// and how many bytes of `keypair` it took; `None` for any other key or a
/// scalar that needs no padding. OpenSSH writes the scalar as an mpint,
/// shorter than 32 bytes when its top byte is zero (about one key in 256),
/// and ssh-key 0.6 reads only 32 bytes (or 33 with a leading zero).
fn pad_ecdsa_scalar(keypair: &[u8]) -> Option<(Zeroizing<Vec<u8>>, usize)> {
    let mut r = keypair;
    let kind = Vec::<u8>::decode(&mut r).ok()?;
    if kind != b"ecdsa-sha2-nistp256" {
        return None;
    }
    let curve = Vec::<u8>::decode(&mut r).ok()?;
    let point = Vec::<u8>::decode(&mut r).ok()?;
    let scalar = Zeroizing::new(Vec::<u8>::decode(&mut r).ok()?);
    let short = trim(&scalar);
    if short.len() >= 32 {
        return None;
    }
    let mut padded = Zeroizing::new([0u8; 32]);
    padded[32 - short.len()..].copy_from_slice(short);
    let mut out = Zeroizing::new(Vec::with_capacity(keypair.len() + 32));
    let encoded = kind.as_slice().encode(&mut *out).is_ok()
        && curve.as_slice().encode(&mut *out).is_ok()
        && point.as_slice().encode(&mut *out).is_ok()
        && padded[..].encode(&mut *out).is_ok();
    encoded.then_some((out, keypair.len() - r.len()))
}

/// An unencrypted OpenSSH private key file whose ECDSA scalar ssh-key 0.6
/// cannot read ([`pad_ecdsa_scalar`]), as the binary key format with the
/// scalar padded; `None` when that is not the trouble.
fn padded_openssh(openssh: &str) -> Option<Zeroizing<Vec<u8>>> {
    use base64::Engine as _;
    let text = openssh.trim();
    let body = text
        .strip_prefix("-----BEGIN OPENSSH PRIVATE KEY-----")?
        .strip_suffix("-----END OPENSSH PRIVATE KEY-----")?;
    let b64: String = body.split_whitespace().collect();
    let raw = Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(b64).ok()?);
    const MAGIC: &[u8] = b"openssh-key-v1\0";
    let mut r = raw.strip_prefix(MAGIC)?;
    let cipher = Vec::<u8>::decode(&mut r).ok()?;
    let kdf = Vec::<u8>::decode(&mut r).ok()?;
    let kdf_options = Vec::<u8>::decode(&mut r).ok()?;
    let count = u32::decode(&mut r).ok()?;
    if cipher != b"none" || count != 1 {
        return None;
    }
    let public = Vec::<u8>::decode(&mut r).ok()?;
    let private = Zeroizing::new(Vec::<u8>::decode(&mut r).ok()?);
    let (checks, rest) = private.split_at_checked(8)?;
    let (keypair, used) = pad_ecdsa_scalar(rest)?;
    let mut after = &rest[used..];
    let comment = String::decode(&mut after).ok()?;
    let mut section = Zeroizing::new(checks.to_vec());
    section.extend_from_slice(&keypair);
    comment.encode(&mut *section).ok()?;
    let mut pad = 1u8;
    while section.len() % 8 != 0 {
        section.push(pad);
        pad += 1;
    }
    let mut out = Zeroizing::new(MAGIC.to_vec());
    let encoded = cipher.as_slice().encode(&mut *out).is_ok()
        && kdf.as_slice().encode(&mut *out).is_ok()
        && kdf_options.as_slice().encode(&mut *out).is_ok()
        && count.encode(&mut *out).is_ok()
        && public.as_slice().encode(&mut *out).is_ok()
        && section.as_slice().encode(&mut *out).is_ok();
    encoded.then_some(out)
}

/// Reads an OpenSSH private key (the `private_key` field of an `ssh`
/// credential) into a signer. `comment` is the credential's name.
pub fn load_key(comment: &str, openssh: &str) -> Result<AgentKey, KeyError> {
    use ssh_key::private::{EcdsaKeypair, KeypairData};
    let key = match ssh_key::PrivateKey::from_openssh(openssh.trim().as_bytes()) {
        Ok(key) => key,
        Err(_) => padded_openssh(openssh)
            .and_then(|bytes| ssh_key::PrivateKey::from_bytes(&bytes).ok())
            .ok_or(KeyError::Unreadable)?,
    };
    if key.is_encrypted() {
        return Err(KeyError::Encrypted);
    }
    let blob = key
        .public_key()
        .to_bytes()
        .map_err(|_| KeyError::Unreadable)?;
    let rng = SystemRandom::new();
    let signer = match key.key_data() {
        KeypairData::Ed25519(kp) => {
            let seed = Zeroizing::new(kp.private.to_bytes());
            Signer::Ed25519(
                Ed25519KeyPair::from_seed_and_public_key(&seed[..], &kp.public.0)
                    .map_err(|_| KeyError::Rejected)?,
            )
        }
        KeypairData::Ecdsa(EcdsaKeypair::NistP256 { public, private }) => Signer::EcdsaP256(
            EcdsaKeyPair::from_private_key_and_public_key(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                private.as_slice(),
                public.as_bytes(),
                &rng,
            )
            .map_err(|_| KeyError::Rejected)?,
        ),
        KeypairData::Rsa(kp) => {
            fn part(m: &ssh_key::Mpint) -> Result<&[u8], KeyError> {
                m.as_positive_bytes().ok_or(KeyError::Rejected)
            }
            let (d, p, q) = (
                part(&kp.private.d)?,
                part(&kp.private.p)?,
                part(&kp.private.q)?,
            );
            let dp = crt_exponent(d, p).ok_or(KeyError::Rejected)?;
            let dq = crt_exponent(d, q).ok_or(KeyError::Rejected)?;
            let components = ring::rsa::KeyPairComponents {
                public_key: ring::rsa::PublicKeyComponents {
                    n: trim(part(&kp.public.n)?),
                    e: trim(part(&kp.public.e)?),
                },
                d: trim(d),
                p: trim(p),
                q: trim(q),
                dP: &dp[..],
                dQ: &dq[..],
                qInv: trim(part(&kp.private.iqmp)?),
            };
            Signer::Rsa(RsaKeyPair::from_components(&components).map_err(|_| KeyError::Rejected)?)
        }
        KeypairData::Encrypted(_) => return Err(KeyError::Encrypted),
        _ => return Err(KeyError::Unsupported),
    };
    Ok(AgentKey {
        comment: comment.to_owned(),
        blob,
        fingerprint: key
            .public_key()
            .fingerprint(ssh_key::HashAlg::Sha256)
            .to_string(),
        signer,
    })
}

/// Why a signature was refused (answered with `SSH_AGENT_FAILURE`).
#[derive(Debug, PartialEq, Eq)]
pub enum SignError {
    /// An RSA signature without `rsa-sha2-256`/`-512`: SHA-1 is never used.
    Sha1Refused,
    /// ring failed.
    Failed,
}

impl AgentKey {
    /// The SSH signature blob (algorithm name and signature) of `data`.
    pub fn sign(&self, data: &[u8], flags: u32) -> Result<Vec<u8>, SignError> {
        let rng = SystemRandom::new();
        let (alg, sig): (&str, Vec<u8>) = match &self.signer {
            Signer::Ed25519(kp) => ("ssh-ed25519", kp.sign(data).as_ref().to_vec()),
            Signer::EcdsaP256(kp) => {
                let fixed = kp.sign(&rng, data).map_err(|_| SignError::Failed)?;
                let (r, s) = fixed.as_ref().split_at(fixed.as_ref().len() / 2);
                let mut inner = Vec::new();
                for half in [r, s] {
                    ssh_key::Mpint::from_positive_bytes(half)
                        .and_then(|m| Ok(m.encode(&mut inner)?))
                        .map_err(|_| SignError::Failed)?;
                }
                ("ecdsa-sha2-nistp256", inner)
            }
            Signer::Rsa(kp) => {
                let (alg, padding): (&str, &'static dyn signature::RsaEncoding) =
                    if flags & RSA_SHA2_512 != 0 {
                        ("rsa-sha2-512", &signature::RSA_PKCS1_SHA512)
                    } else if flags & RSA_SHA2_256 != 0 {
                        ("rsa-sha2-256", &signature::RSA_PKCS1_SHA256)
                    } else {
                        return Err(SignError::Sha1Refused);
                    };
                let mut sig = vec![0u8; kp.public().modulus_len()];
                kp.sign(padding, &rng, data, &mut sig)
                    .map_err(|_| SignError::Failed)?;
                (alg, sig)
            }
        };
        let mut blob = Vec::new();
        alg.encode(&mut blob).map_err(|_| SignError::Failed)?;
        sig.as_slice()
            .encode(&mut blob)
            .map_err(|_| SignError::Failed)?;
        Ok(blob)
    }

    /// The public key as ring sees it (tests compare it with the blob).
    #[cfg(test)]
    fn ring_public(&self) -> Vec<u8> {
        use ring::signature::KeyPair as _;
        match &self.signer {
            Signer::Ed25519(kp) => kp.public_key().as_ref().to_vec(),
            Signer::EcdsaP256(kp) => kp.public_key().as_ref().to_vec(),
            Signer::Rsa(kp) => kp.public_key().as_ref().to_vec(),
        }
    }
}

/// A whole message (length and body) of type `kind` with `payload`.
fn message(kind: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len() + 1).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.extend_from_slice(&len.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    out
}

/// `SSH_AGENT_FAILURE`.
pub fn failure() -> Vec<u8> {
    message(msg::FAILURE, &[])
}

/// `SSH_AGENT_IDENTITIES_ANSWER` listing `keys`.
pub fn identities_answer(keys: &[&AgentKey]) -> Vec<u8> {
    let mut payload = Vec::new();
    let count = u32::try_from(keys.len()).unwrap_or(u32::MAX);
    let ok = count.encode(&mut payload).is_ok()
        && keys.iter().all(|k| {
            k.blob.as_slice().encode(&mut payload).is_ok()
                && k.comment.as_str().encode(&mut payload).is_ok()
        });
    if !ok {
        return failure();
    }
    message(msg::IDENTITIES_ANSWER, &payload)
}

/// `SSH_AGENT_SIGN_RESPONSE` carrying `signature` (a signature blob).
pub fn sign_response(signature: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    if signature.encode(&mut payload).is_err() {
        return failure();
    }
    message(msg::SIGN_RESPONSE, &payload)
}

/// An `ssh` credential's key as the agent holds it while the vault is
/// unlocked.
struct Held {
    key: AgentKey,
    /// The record's id: what logs name.
    id: String,
    expires_at: Option<Timestamp>,
    confirm: bool,
}

impl Held {
    fn live(&self, now: Timestamp) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }
}

/// The parsed keys of one version of the vault ([`Engine::version`]).
///
/// [`Engine::version`]: crate::engine::Engine::version
#[derive(Default)]
struct KeyCache(std::sync::Mutex<Option<Cached>>);

/// The vault's version and the keys parsed from it.
type Cached = ((u64, u64), Arc<Vec<Held>>);

impl KeyCache {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Cached>> {
        // A panic while holding it leaves nothing half-written: at worst a
        // stale version, which the next request replaces.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What the agent shares between its connections.
struct Agent {
    daemon: Arc<Daemon>,
    cache: KeyCache,
    /// Connections waiting for their client's next message.
    idle: crate::server::IdleConnections,
}

/// The vault's `ssh` credentials as agent keys (expired ones included:
/// callers skip them with [`Held::live`]); none when the vault is locked
/// (never waits for an unlock). Keys are parsed again only when the vault
/// changed; decrypting happens under the engine lock, parsing after it, on
/// the blocking pool.
async fn keys(agent: &Arc<Agent>) -> Arc<Vec<Held>> {
    let a = Arc::clone(agent);
    let loaded = tokio::task::spawn_blocking(move || {
        let (version, records) = {
            let mut engine = a.daemon.engine();
            engine.check_deadlines(Timestamp::now());
            let Some(version) = engine.version() else {
                // Locked: nothing parsed stays in memory.
                *a.cache.slot() = None;
                return Arc::new(Vec::new());
            };
            if let Some((v, held)) = &*a.cache.slot()
                && *v == version
            {
                return Arc::clone(held);
            }
            (version, engine.ssh_private_keys().unwrap_or_default())
        };
        let held: Vec<Held> = records
            .into_iter()
            .filter_map(|r| match load_key(&r.name, r.private_key.expose_secret()) {
                Ok(key) => Some(Held {
                    key,
                    id: r.id,
                    expires_at: r.expires_at,
                    confirm: r.confirm,
                }),
                Err(e) => {
                    // By id: logs never name a record.
                    info!(id = %r.id, reason = %e, "ssh agent: key not offered");
                    None
                }
            })
            .collect();
        let held = Arc::new(held);
        *a.cache.slot() = Some((version, Arc::clone(&held)));
        held
    })
    .await;
    loaded.unwrap_or_default()
}

/// The peer of an agent connection, for the log line of each signature.
struct Peer {
    pid: Option<i32>,
    exe: Option<std::path::PathBuf>,
}

impl Peer {
    fn of(stream: &Stream) -> Self {
        use interprocess::local_socket::traits::StreamCommon as _;
        let pid = stream.peer_creds().ok().and_then(|c| c.pid());
        let exe = pid.and_then(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok());
        Self { pid, exe }
    }
}

/// Asks the user, through `SSH_ASKPASS` as OpenSSH's agent does
/// (`SSH_ASKPASS_PROMPT=confirm`), whether `key` may sign now. Yes is an
/// exit status of 0 with an empty or "yes" answer; anything else, no
/// askpass, or no answer within [`CONFIRM_TIMEOUT`] is a no.
async fn confirmed(held: &Held, conn: u64) -> bool {
    let Some(askpass) = std::env::var_os("SSH_ASKPASS").filter(|v| !v.is_empty()) else {
        warn!(
            conn,
            key = %held.id,
            "ssh agent: key needs confirmation but vaultd has no SSH_ASKPASS: refused"
        );
        return false;
    };
    let prompt = format!(
        "Allow use of key {}?\nKey fingerprint {}.",
        held.key.comment, held.key.fingerprint
    );
    let child = tokio::process::Command::new(askpass)
        .arg(prompt)
        .env("SSH_ASKPASS_PROMPT", "confirm")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            warn!(conn, error = %e, "ssh agent: cannot run SSH_ASKPASS: refused");
            return false;
        }
    };
    match tokio::time::timeout(CONFIRM_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => {
            let answer = String::from_utf8_lossy(&out.stdout);
            let answer = answer.trim();
            out.status.success() && (answer.is_empty() || answer.eq_ignore_ascii_case("yes"))
        }
        Ok(Err(e)) => {
            warn!(conn, error = %e, "ssh agent: SSH_ASKPASS failed: refused");
            false
        }
        Err(_) => {
            info!(conn, "ssh agent: no confirmation in time: refused");
            false
        }
    }
}

/// Answers a signature request.
async fn sign(
    agent: &Arc<Agent>,
    peer: &Peer,
    conn: u64,
    key_blob: &[u8],
    data: &[u8],
    flags: u32,
) -> Vec<u8> {
    let held_keys = keys(agent).await;
    let now = Timestamp::now();
    let Some(held) = held_keys
        .iter()
        .find(|k| k.key.blob == key_blob && k.live(now))
    else {
        debug!(conn, "ssh agent: sign request for a key we do not hold");
        return failure();
    };
    let fresh;
    let held = if held.confirm {
        if !confirmed(held, conn).await {
            info!(conn, key = %held.id, "ssh agent: signature not confirmed");
            return failure();
        }
        // The prompt may have been up for a minute: a lock, `vault rm` or
        // the key's expiry meanwhile wins over the yes.
        fresh = keys(agent).await;
        let now = Timestamp::now();
        let Some(still) = fresh.iter().find(|k| k.key.blob == key_blob && k.live(now)) else {
            info!(
                conn,
                "ssh agent: key gone or locked while confirming: refused"
            );
            return failure();
        };
        still
    } else {
        held
    };
    match held.key.sign(data, flags) {
        Ok(sig) => {
            // The local record of who used which key: by record id, with the
            // process that asked (the audit log of issue 24 takes it over).
            info!(
                conn,
                key = %held.id,
                pid = ?peer.pid,
                exe = ?peer.exe,
                "ssh agent: signed"
            );
            sign_response(&sig)
        }
        Err(e) => {
            info!(conn, key = %held.id, error = ?e, "ssh agent: signature refused");
            failure()
        }
    }
}

/// A credential name for a key `ssh-add` hands over, from its comment:
/// the file name of a path (ssh-add sends the path when a key has no
/// comment), other characters than a name allows made `-`, `ssh-key` when
/// nothing is left.
pub fn name_for(comment: &str) -> String {
    let base = comment.trim().rsplit('/').next().unwrap_or_default();
    let mut name: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-') {
                c
            } else {
                '-'
            }
        })
        .skip_while(|c| !c.is_ascii_alphanumeric())
        .take(100)
        .collect();
    while name.ends_with('-') {
        name.pop();
    }
    if name.is_empty() {
        name = "ssh-key".to_owned();
    }
    name
}

/// The fields of the `ssh` credential that stores a key from `ssh-add`
/// (`private_key` in OpenSSH's format, `public_key`, `confirm` for `-c`),
/// and the key as the agent will offer it: a key the agent cannot sign
/// with is refused here, before anything is stored.
pub fn stored_fields(
    new: NewIdentity,
) -> Result<
    (
        AgentKey,
        std::collections::BTreeMap<String, vault_protocol::SecretValue>,
    ),
    KeyError,
> {
    use vault_protocol::SecretValue;
    let private =
        ssh_key::PrivateKey::new(new.key, new.comment.clone()).map_err(|_| KeyError::Rejected)?;
    let openssh = private
        .to_openssh(ssh_key::LineEnding::LF)
        .map_err(|_| KeyError::Rejected)?;
    let key = load_key(&new.comment, &openssh)?;
    let public = private
        .public_key()
        .to_openssh()
        .map_err(|_| KeyError::Rejected)?;
    let mut fields = std::collections::BTreeMap::new();
    fields.insert(
        "private_key".to_owned(),
        SecretValue::new(openssh.as_str().to_owned()),
    );
    fields.insert("public_key".to_owned(), SecretValue::new(public));
    if new.confirm {
        fields.insert(
            vault_protocol::credential::SSH_CONFIRM.to_owned(),
            SecretValue::new("yes".to_owned()),
        );
    }
    Ok((key, fields))
}

/// Stores a key from `ssh-add` as a new `ssh` credential, named after its
/// comment (`NAME-2`, `NAME-3`… when that is taken). A key the vault
/// already offers is not stored twice. Fails (changing nothing) when the
/// vault is locked or the key is one the agent cannot sign with.
async fn add(agent: &Arc<Agent>, new: NewIdentity, conn: u64) -> Vec<u8> {
    use vault_protocol::message::{NewRecord, Request};
    use vault_protocol::{ErrorCode, SecretValue};
    let (lifetime, base) = (new.lifetime, name_for(&new.comment));
    let (held, fields) = match stored_fields(new) {
        Ok(v) => v,
        Err(e) => {
            info!(conn, reason = %e, "ssh agent: key from ssh-add not stored");
            return failure();
        }
    };
    let now = Timestamp::now();
    if keys(agent)
        .await
        .iter()
        .any(|k| k.key.blob == held.blob && k.live(now))
    {
        debug!(
            conn,
            "ssh agent: ssh-add of a key the vault holds: nothing to store"
        );
        return message(msg::SUCCESS, &[]);
    }
    let expires_at = lifetime.map(|secs| now.plus(Duration::from_secs(u64::from(secs))));
    for n in 1..=20u32 {
        let name = if n == 1 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        let record = NewRecord {
            name,
            kind: vault_protocol::CredentialType::Ssh,
            fields: fields
                .iter()
                .map(|(k, v)| (k.clone(), SecretValue::new(v.expose_secret().to_owned())))
                .collect(),
            description: Some("added through the SSH agent (ssh-add)".to_owned()),
            tags: Vec::new(),
            expires_at,
        };
        let d = Arc::clone(&agent.daemon);
        let result =
            tokio::task::spawn_blocking(move || d.dispatch_blocking(Request::Add { record })).await;
        match result {
            Ok(Ok(_)) => {
                info!(conn, "ssh agent: key from ssh-add stored");
                return message(msg::SUCCESS, &[]);
            }
            Ok(Err(e)) if e.code == ErrorCode::AlreadyExists => continue,
            Ok(Err(e)) => {
                info!(conn, code = ?e.code, "ssh agent: key from ssh-add not stored");
                return failure();
            }
            Err(_) => return failure(),
        }
    }
    info!(conn, "ssh agent: no free name for the key from ssh-add");
    failure()
}

/// The answer to one message body.
async fn answer(agent: &Arc<Agent>, peer: &Peer, body: &[u8], conn: u64) -> Vec<u8> {
    match parse(body) {
        Ok(AgentRequest::Identities) => {
            let keys = keys(agent).await;
            let now = Timestamp::now();
            let live: Vec<&AgentKey> = keys
                .iter()
                .filter(|k| k.live(now))
                .map(|k| &k.key)
                .collect();
            identities_answer(&live)
        }
        Ok(AgentRequest::Sign {
            key_blob,
            data,
            flags,
        }) => sign(agent, peer, conn, &key_blob, &data, flags).await,
        Ok(AgentRequest::Add(new)) => add(agent, *new, conn).await,
        Ok(AgentRequest::Refused(kind)) => {
            debug!(conn, kind, "ssh agent: request not supported");
            failure()
        }
        Err(e) => {
            debug!(conn, error = ?e, "ssh agent: bad message");
            failure()
        }
    }
}

/// Serves one agent connection: messages answered in order until the
/// client closes, sends an oversized length, stalls mid-message, or the
/// daemon shuts down.
async fn serve_connection(agent: Arc<Agent>, stream: Stream, conn: u64) {
    if !agent.daemon.is_owner(&stream) {
        return;
    }
    let peer = Peer::of(&stream);
    let mut shutdown = agent.daemon.shutdown_signal();
    let mut s = &stream;
    let evict = Arc::new(tokio::sync::Notify::new());
    loop {
        let mut header = [0u8; 4];
        let waiting = crate::server::IdleEntry::enter(&agent.idle, conn, &evict);
        let first = tokio::select! {
            r = s.read(&mut header[..1]) => r,
            _ = evict.notified() => break,
            _ = shutdown.wait_for(|v| *v) => break,
        };
        drop(waiting);
        match first {
            Ok(1) => {}
            _ => break,
        }
        let rest = async {
            s.read_exact(&mut header[1..]).await?;
            let Some(len) = message_len(header) else {
                return Ok(None);
            };
            let mut body = Zeroizing::new(vec![0u8; len]);
            s.read_exact(&mut body).await?;
            Ok::<_, std::io::Error>(Some(body))
        };
        let body = match tokio::time::timeout(MESSAGE_TIMEOUT, rest).await {
            Ok(Ok(Some(body))) => body,
            Ok(Ok(None)) => {
                debug!(conn, "ssh agent: message length out of bounds: closing");
                let _ = tokio::time::timeout(MESSAGE_TIMEOUT, s.write_all(&failure())).await;
                break;
            }
            Ok(Err(_)) | Err(_) => break,
        };
        let reply = answer(&agent, &peer, &body, conn).await;
        // A client that does not read its answer is dropped like one that
        // stalls mid-message.
        if !matches!(
            tokio::time::timeout(MESSAGE_TIMEOUT, s.write_all(&reply)).await,
            Ok(Ok(()))
        ) {
            break;
        }
    }
}

/// Serves the agent socket until shutdown.
pub async fn serve(daemon: Arc<Daemon>, listener: Listener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut shutdown = daemon.shutdown_signal();
    let agent = Arc::new(Agent {
        daemon,
        cache: KeyCache::default(),
        idle: crate::server::IdleConnections::default(),
    });
    let mut next: u64 = 1;
    while let Some(stream) =
        crate::server::next_connection(&listener, &mut shutdown, "ssh-agent").await
    {
        let Some(permit) = crate::server::take_slot(&slots, &agent.idle, &mut shutdown).await
        else {
            break;
        };
        let conn = next;
        next += 1;
        let a = Arc::clone(&agent);
        tokio::spawn(async move {
            serve_connection(a, stream, conn).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(bytes: &[u8]) -> Vec<u8> {
        let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(bytes);
        out
    }

    fn sign_body(blob: &[u8], data: &[u8], flags: u32) -> Vec<u8> {
        let mut body = vec![msg::SIGN_REQUEST];
        body.extend(string(blob));
        body.extend(string(data));
        body.extend(flags.to_be_bytes());
        body
    }

    #[test]
    fn well_formed_requests_parse() {
        assert_eq!(parse(&[11]), Ok(AgentRequest::Identities));
        assert_eq!(
            parse(&sign_body(b"blob", b"data", 4)),
            Ok(AgentRequest::Sign {
                key_blob: b"blob".to_vec(),
                data: b"data".to_vec(),
                flags: 4
            })
        );
        for refused in [18, 19, 20, 21, 22, 23, 26, 27] {
            assert_eq!(parse(&[refused, 0, 0]), Ok(AgentRequest::Refused(refused)));
        }
    }

    #[test]
    fn bad_messages_are_errors_not_panics() {
        assert_eq!(parse(&[]), Err(ParseError::Empty));
        assert_eq!(parse(&[0]), Err(ParseError::Unknown(0)));
        assert_eq!(parse(&[5]), Err(ParseError::Unknown(5)));
        assert_eq!(parse(&[255, 1, 2]), Err(ParseError::Unknown(255)));
        // Trailing bytes after a complete request.
        assert_eq!(parse(&[11, 0]), Err(ParseError::Malformed));
        let good = sign_body(b"blob", b"data", 2);
        let mut long = good.clone();
        long.push(0);
        assert_eq!(parse(&long), Err(ParseError::Malformed));
        // Every truncation of a good sign request.
        for cut in 1..good.len() {
            assert_eq!(parse(&good[..cut]), Err(ParseError::Malformed), "cut {cut}");
        }
        // A string length far past the end of the message.
        let mut huge = vec![msg::SIGN_REQUEST];
        huge.extend(u32::MAX.to_be_bytes());
        huge.extend([1, 2, 3]);
        assert_eq!(parse(&huge), Err(ParseError::Malformed));
    }

    #[test]
    fn parser_survives_noise() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 64) as usize;
            let body: Vec<u8> = (0..len)
                .map(|i| (x >> ((i % 8) * 8)) as u8 ^ i as u8)
                .collect();
            let mut body = body;
            if let Some(first) = body.first_mut() {
                *first = [11, 13, 17, 255][(x % 4) as usize];
            }
            let _ = parse(&body);
        }
    }

    #[test]
    fn lengths_are_bounded() {
        assert_eq!(message_len(0u32.to_be_bytes()), None);
        assert_eq!(message_len(1u32.to_be_bytes()), Some(1));
        assert_eq!(
            message_len((MAX_MESSAGE as u32).to_be_bytes()),
            Some(MAX_MESSAGE)
        );
        assert_eq!(message_len((MAX_MESSAGE as u32 + 1).to_be_bytes()), None);
        assert_eq!(message_len(u32::MAX.to_be_bytes()), None);
    }

    #[test]
    fn garbage_keys_are_refused_not_panics() {
        assert_eq!(load_key("x", "").err(), Some(KeyError::Unreadable));
        assert_eq!(
            load_key(
                "x",
                "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----"
            )
            .err(),
            Some(KeyError::Unreadable)
        );
    }

    #[test]
    fn crt_exponent_reduces() {
        // 100 mod (7 - 1) = 4; 255 mod (16 - 1) = 0 → empty (zero).
        let reduced = |d: &[u8], p: &[u8]| crt_exponent(d, p).map(|v| v.to_vec());
        assert_eq!(reduced(&[100], &[7]), Some(vec![4]));
        assert_eq!(reduced(&[0, 0, 255], &[16]), Some(vec![]));
        assert!(crt_exponent(&[1], &[1]).is_none(), "p - 1 = 0");
        assert!(crt_exponent(&[1; 513], &[7]).is_none());
    }

    /// ssh-keygen where Debian puts it, or `None` after saying how to get it.
    fn ssh_keygen() -> Option<&'static str> {
        let found = ["/usr/bin/ssh-keygen", "/bin/ssh-keygen"]
            .into_iter()
            .find(|p| std::path::Path::new(p).is_file());
        if found.is_none() {
            eprintln!("SKIP: ssh-keygen not installed (apt-get install openssh-client)");
        }
        found
    }

    /// About one ECDSA key in 256 has a scalar shorter than 32 bytes, which
    /// ssh-key 0.6 cannot read: such a key (found by making keys until one
    /// trips it) still loads from its file, signs, and is taken from
    /// ssh-add's wire form.
    #[test]
    fn ecdsa_keys_with_a_short_scalar_load_and_add() {
        let Some(keygen) = ssh_keygen() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let text = (0..4000)
            .find_map(|_| {
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_file(path.with_extension("pub"));
                let out = std::process::Command::new(keygen)
                    .args([
                        "-q", "-t", "ecdsa", "-b", "256", "-N", "", "-C", "short", "-f",
                    ])
                    .arg(&path)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{out:?}");
                let text = std::fs::read_to_string(&path).unwrap();
                ssh_key::PrivateKey::from_openssh(text.trim().as_bytes())
                    .is_err()
                    .then_some(text)
            })
            .expect("no short scalar in 4000 keys (expected about one in 256)");
        let key = load_key("short", &text).expect("padded and loaded");
        let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
        use base64::Engine as _;
        let want = base64::engine::general_purpose::STANDARD
            .decode(public.split_whitespace().nth(1).unwrap())
            .unwrap();
        assert_eq!(key.blob, want);
        assert!(key.sign(b"data", 0).is_ok());

        // What ssh-add sends for it: the key pair and comment of the file's
        // private section, after its two check words.
        let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let mut r = &raw[b"openssh-key-v1\0".len()..];
        for _ in 0..3 {
            Vec::<u8>::decode(&mut r).unwrap();
        }
        u32::decode(&mut r).unwrap();
        Vec::<u8>::decode(&mut r).unwrap();
        let private = Vec::<u8>::decode(&mut r).unwrap();
        let mut k = &private[8..];
        let start = k;
        for _ in 0..4 {
            Vec::<u8>::decode(&mut k).unwrap();
        }
        String::decode(&mut k).unwrap();
        let used = start.len() - k.len();
        let mut body = vec![msg::ADD_IDENTITY];
        body.extend_from_slice(&start[..used]);
        let Ok(AgentRequest::Add(new)) = parse(&body) else {
            panic!("ssh-add of a short-scalar key is refused");
        };
        let (added, _) = stored_fields(*new).unwrap();
        assert_eq!(added.blob, want);
    }

    /// Keys made by ssh-keygen when it is installed (the end-to-end test
    /// checks the signatures with real ssh; here: they load and sign).
    #[test]
    fn ssh_keygen_keys_load_and_sign() {
        let Some(keygen) = ssh_keygen() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        for (t, bits, alg) in [
            ("ed25519", "256", "ssh-ed25519"),
            ("ecdsa", "256", "ecdsa-sha2-nistp256"),
            ("rsa", "2048", "rsa-sha2-256"),
        ] {
            let path = dir.path().join(t);
            let out = std::process::Command::new(keygen)
                .args(["-q", "-t", t, "-b", bits, "-N", "", "-C", "c", "-f"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let text = std::fs::read_to_string(&path).unwrap();
            let key = load_key("name", &text).unwrap();
            assert!(!key.ring_public().is_empty());
            let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
            let b64 = public.split_whitespace().nth(1).unwrap();
            use base64::Engine as _;
            let want = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            assert_eq!(key.blob, want, "{t}: blob matches the .pub file");
            let sig = key.sign(b"data", RSA_SHA2_256).unwrap();
            let mut r = sig.as_slice();
            assert_eq!(String::decode(&mut r).unwrap(), alg);
            if t == "rsa" {
                assert_eq!(key.sign(b"data", 0), Err(SignError::Sha1Refused));
                let sig = key.sign(b"data", RSA_SHA2_512).unwrap();
                let mut r = sig.as_slice();
                assert_eq!(String::decode(&mut r).unwrap(), "rsa-sha2-512");
            }
            assert!(format!("{key:?}").contains("redacted"));
        }
    }
}
