//! The vault key and record encryption (docs/architecture.md).
//!
//! The vault key is an age X25519 identity. On disk it exists only inside
//! `identity.age`, encrypted with the passphrase through age's scrypt
//! recipient at a fixed work factor. Each record body is one standard age
//! file encrypted to the vault's recipient, so `age -d -i identity.txt` can
//! always open it. Names are looked up through a blind index: HMAC-SHA256
//! under a key derived with HKDF from the identity.
//!
//! Nothing in this module logs, and no error it returns includes key
//! material or plaintext.

use std::io::Read;
use std::str::FromStr;

use age::secrecy::{ExposeSecret, SecretString};
use ring::{aead, hkdf, hmac};
use zeroize::Zeroizing;

/// scrypt work factor (log2 N) for `identity.age`. Fixed, never tuned to the
/// machine, so a vault made on a fast laptop opens on a slow CI runner. 2^17
/// costs ~128 MiB and a few hundred milliseconds; age's own default is 18.
pub const SCRYPT_WORK_FACTOR: u8 = 17;

/// Highest work factor accepted when opening `identity.age` (files from a
/// future version may raise the factor; beyond this we refuse rather than
/// spend minutes).
pub const MAX_SCRYPT_WORK_FACTOR: u8 = 20;

/// Why the vault key could not be opened.
#[derive(Debug)]
pub enum KeyError {
    /// The passphrase does not decrypt `identity.age`.
    BadPassphrase,
    /// `identity.age` is not a valid passphrase-encrypted age identity.
    Damaged(String),
}

/// The unlocked vault key. Dropping it zeroizes the secret parts (age's
/// identity and ring's HMAC keys wipe themselves).
pub struct VaultKey {
    identity: age::x25519::Identity,
    recipient: age::x25519::Recipient,
    name_mac: hmac::Key,
    /// Authenticates sync entries (body v3, issue 18): only the vault's
    /// members can derive it; it is never stored or sent.
    entry_mac: hmac::Key,
    /// Digests approved values (`approvals` table): local only.
    approval_mac: hmac::Key,
    /// Seals this device's local caches (the index snapshot, the audit
    /// log's entries): never sent.
    local_seal: aead::LessSafeKey,
    /// Chains the audit log's entries (docs/lifecycle.md): local only.
    audit_mac: hmac::Key,
    /// Seals the audit log segments devices share through the server
    /// (`[audit] sync`, docs/sync.md): every member derives it, the server
    /// never can.
    audit_share: aead::LessSafeKey,
}

impl std::fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VaultKey([redacted])")
    }
}

impl VaultKey {
    /// A fresh random vault key.
    pub fn generate() -> Self {
        Self::from_identity(age::x25519::Identity::generate())
    }

    fn from_identity(identity: age::x25519::Identity) -> Self {
        let secret = identity.to_string();
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"vault blind index v1")
            .extract(secret.expose_secret().as_bytes());
        let okm = prk
            .expand(&[b"record-name"], hmac::HMAC_SHA256)
            .expect("HMAC_SHA256 is a valid HKDF output length");
        let name_mac = hmac::Key::from(okm);
        let okm = prk
            .expand(&[b"sync-entry-auth"], hmac::HMAC_SHA256)
            .expect("HMAC_SHA256 is a valid HKDF output length");
        let entry_mac = hmac::Key::from(okm);
        let okm = prk
            .expand(&[b"local-approval"], hmac::HMAC_SHA256)
            .expect("HMAC_SHA256 is a valid HKDF output length");
        let approval_mac = hmac::Key::from(okm);
        let okm = prk
            .expand(&[b"local-seal"], &aead::CHACHA20_POLY1305)
            .expect("a ChaCha20-Poly1305 key is a valid HKDF output length");
        let local_seal = aead::LessSafeKey::new(aead::UnboundKey::from(okm));
        let okm = prk
            .expand(&[b"local-audit-chain"], hmac::HMAC_SHA256)
            .expect("HMAC_SHA256 is a valid HKDF output length");
        let audit_mac = hmac::Key::from(okm);
        let okm = prk
            .expand(&[b"audit-sync-seal"], &aead::CHACHA20_POLY1305)
            .expect("a ChaCha20-Poly1305 key is a valid HKDF output length");
        let audit_share = aead::LessSafeKey::new(aead::UnboundKey::from(okm));
        let recipient = identity.to_public();
        Self {
            identity,
            recipient,
            name_mac,
            entry_mac,
            approval_mac,
            local_seal,
            audit_mac,
            audit_share,
        }
    }

    /// The recipient string (`age1…`), shareable.
    pub fn recipient(&self) -> String {
        self.recipient.to_string()
    }

    /// A short public id of the key: hex SHA-256 of the recipient, first 16
    /// bytes. Sync checks it before every upload.
    pub fn key_id(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.recipient().as_bytes());
        hex::encode(&digest.as_ref()[..16])
    }

    /// `identity.age`: the identity, age-encrypted with `passphrase`.
    pub fn seal(&self, passphrase: &str) -> Result<Vec<u8>, String> {
        let mut recipient = age::scrypt::Recipient::new(SecretString::from(passphrase.to_owned()));
        recipient.set_work_factor(SCRYPT_WORK_FACTOR);
        let secret = self.identity.to_string();
        let mut text = Zeroizing::new(String::new());
        text.push_str("# vault key (age X25519 identity)\n");
        text.push_str(secret.expose_secret());
        text.push('\n');
        age::encrypt(&recipient, text.as_bytes()).map_err(|e| format!("cannot seal key: {e}"))
    }

    /// Opens `identity.age` with `passphrase`.
    pub fn open(sealed: &[u8], passphrase: &str) -> Result<Self, KeyError> {
        let decryptor = age::Decryptor::new(sealed)
            .map_err(|e| KeyError::Damaged(format!("not an age file ({e})")))?;
        if !decryptor.is_scrypt() {
            return Err(KeyError::Damaged("not passphrase-encrypted".into()));
        }
        let mut identity = age::scrypt::Identity::new(SecretString::from(passphrase.to_owned()));
        identity.set_max_work_factor(MAX_SCRYPT_WORK_FACTOR);
        let mut reader = match decryptor.decrypt(std::iter::once(&identity as &dyn age::Identity)) {
            Ok(r) => r,
            Err(age::DecryptError::ExcessiveWork { required, .. }) => {
                return Err(KeyError::Damaged(format!(
                    "its scrypt work factor {required} is above the supported {MAX_SCRYPT_WORK_FACTOR}"
                )));
            }
            Err(_) => return Err(KeyError::BadPassphrase),
        };
        let mut text = Zeroizing::new(String::new());
        reader
            .read_to_string(&mut text)
            .map_err(|_| KeyError::Damaged("its contents are truncated or corrupt".into()))?;
        let line = text
            .lines()
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .ok_or_else(|| KeyError::Damaged("it holds no age identity".into()))?;
        let identity = age::x25519::Identity::from_str(line)
            .map_err(|_| KeyError::Damaged("its age identity is invalid".into()))?;
        Ok(Self::from_identity(identity))
    }

    /// Encrypts a record body to the vault's recipient.
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, String> {
        age::encrypt(&self.recipient, plaintext).map_err(|e| format!("encryption failed: {e}"))
    }

    /// Decrypts a record body.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
        age::decrypt(&self.identity, ciphertext)
            .map(Zeroizing::new)
            .map_err(|e| format!("decryption failed: {e}"))
    }

    /// The blind index of a record name.
    pub fn name_mac(&self, name: &str) -> Vec<u8> {
        hmac::sign(&self.name_mac, name.as_bytes())
            .as_ref()
            .to_vec()
    }

    /// The MAC that authenticates a sync entry's signed bytes
    /// ([`crate::record::RecordBody::to_signed_bytes`]).
    pub fn entry_mac(&self, signed: &[u8]) -> [u8; 32] {
        let tag = hmac::sign(&self.entry_mac, signed);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// The digest under which an approval of `record_id`'s `field` with
    /// exactly `value` is stored. Lengths prefix each part, so no two
    /// triples share their bytes.
    pub fn approval_digest(&self, record_id: &str, field: &str, value: &str) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.approval_mac);
        for part in [record_id, field, value] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part.as_bytes());
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// The audit chain's MAC over `parts`, each prefixed by its length so
    /// no two lists share their bytes.
    pub fn audit_mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.audit_mac);
        for part in parts {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Seals a local cache: a random nonce, then `plain` encrypted and
    /// authenticated together with `label` (ChaCha20-Poly1305 under a key
    /// derived from the identity). Only this vault's key opens it, and only
    /// under the same label.
    pub fn seal_local(&self, label: &[u8], plain: &[u8]) -> Vec<u8> {
        seal(&self.local_seal, label, plain)
    }

    /// Opens what [`VaultKey::seal_local`] sealed under `label`; `None` when
    /// it is damaged, truncated, made by another key or under another label.
    pub fn open_local(&self, label: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        open(&self.local_seal, label, sealed)
    }

    /// Seals an audit log segment for the vault's other devices, as
    /// [`VaultKey::seal_local`] does, under a key of its own: `label`
    /// binds the vault, the device and the segment's number.
    pub fn seal_shared_audit(&self, label: &[u8], plain: &[u8]) -> Vec<u8> {
        seal(&self.audit_share, label, plain)
    }

    /// Opens a segment sealed by [`VaultKey::seal_shared_audit`] under
    /// exactly `label`; `None` for anything else (forged, changed, moved).
    pub fn open_shared_audit(&self, label: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        open(&self.audit_share, label, sealed)
    }

    /// Whether `mac` authenticates `signed` under this vault's key (in
    /// constant time).
    pub fn verify_entry(&self, signed: &[u8], mac: &[u8]) -> bool {
        hmac::verify(&self.entry_mac, signed, mac).is_ok()
    }

    /// The identity in age's text form, for golden tests and export.
    pub fn identity_string(&self) -> SecretString {
        self.identity.to_string()
    }

    /// Rebuilds a key from an identity string (golden tests, sync join).
    pub fn from_identity_str(s: &str) -> Result<Self, String> {
        age::x25519::Identity::from_str(s.trim())
            .map(Self::from_identity)
            .map_err(|_| "not an age X25519 identity".to_owned())
    }
}

/// A random nonce, then `plain` encrypted and authenticated together with
/// `label` (ChaCha20-Poly1305).
fn seal(key: &aead::LessSafeKey, label: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; aead::NONCE_LEN];
    getrandom::fill(&mut nonce).expect("the OS random source failed");
    let mut out = Vec::with_capacity(nonce.len() + plain.len() + aead::MAX_TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plain);
    let tag = key
        .seal_in_place_separate_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(label),
            &mut out[aead::NONCE_LEN..],
        )
        .expect("a sealed cache or segment is far below ChaCha20-Poly1305's size limit");
    out.extend_from_slice(tag.as_ref());
    out
}

/// Opens what [`seal`] sealed under `label`.
fn open(key: &aead::LessSafeKey, label: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let (nonce, body) = sealed.split_at_checked(aead::NONCE_LEN)?;
    let nonce = aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buf = Zeroizing::new(body.to_vec());
    let len = key
        .open_in_place(nonce, aead::Aad::from(label), &mut buf)
        .ok()?
        .len();
    buf.truncate(len);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open() {
        let key = VaultKey::generate();
        let sealed = key.seal("correct horse").unwrap();
        let opened = VaultKey::open(&sealed, "correct horse").unwrap();
        assert_eq!(opened.recipient(), key.recipient());
        assert_eq!(opened.name_mac("x"), key.name_mac("x"));
        assert!(matches!(
            VaultKey::open(&sealed, "wrong"),
            Err(KeyError::BadPassphrase)
        ));
        assert!(matches!(
            VaultKey::open(&sealed[..20], "x"),
            Err(KeyError::Damaged(_))
        ));
        assert!(matches!(
            VaultKey::open(b"garbage", "x"),
            Err(KeyError::Damaged(_))
        ));
    }

    #[test]
    fn records_round_trip_and_macs_differ_per_key() {
        let a = VaultKey::generate();
        let b = VaultKey::generate();
        let ct = a.encrypt(b"hello").unwrap();
        assert_eq!(&*a.decrypt(&ct).unwrap(), b"hello");
        assert!(b.decrypt(&ct).is_err());
        assert_ne!(a.name_mac("x"), b.name_mac("x"));
        assert_eq!(a.name_mac("x").len(), 32);
        assert_eq!(format!("{a:?}"), "VaultKey([redacted])");
    }

    #[test]
    fn entry_macs_need_the_identity_and_differ_from_the_blind_index() {
        let a = VaultKey::generate();
        let again = VaultKey::from_identity_str(a.identity_string().expose_secret()).unwrap();
        let b = VaultKey::generate();
        let tag = a.entry_mac(b"entry");
        assert!(again.verify_entry(b"entry", &tag));
        assert!(!a.verify_entry(b"entry!", &tag));
        assert!(!b.verify_entry(b"entry", &tag));
        assert!(!a.verify_entry(b"entry", &tag[..31]));
        // Separate keys: a blind-index value is never a valid entry MAC.
        assert_ne!(a.name_mac("entry"), tag.to_vec());
    }

    #[test]
    fn local_seals_open_only_with_their_key_and_label() {
        let a = VaultKey::generate();
        let again = VaultKey::from_identity_str(a.identity_string().expose_secret()).unwrap();
        let b = VaultKey::generate();
        let sealed = a.seal_local(b"label", b"cache");
        assert_eq!(&**again.open_local(b"label", &sealed).unwrap(), b"cache");
        assert!(a.open_local(b"other", &sealed).is_none());
        assert!(b.open_local(b"label", &sealed).is_none());
        assert!(
            a.open_local(b"label", &sealed[..sealed.len() - 1])
                .is_none()
        );
        assert!(a.open_local(b"label", &sealed[..5]).is_none());
        let mut flipped = sealed.clone();
        flipped[13] ^= 1;
        assert!(a.open_local(b"label", &flipped).is_none());
        // A fresh nonce each time.
        assert_ne!(a.seal_local(b"label", b"cache"), sealed);
    }
}
