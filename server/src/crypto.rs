//! Secrets the server mints and checks: access tokens (random, stored only
//! as a SHA-256 hash), the bootstrap password (PBKDF2-HMAC-SHA256), and the
//! short-lived HS256 JWTs every API call carries.
//!
//! Everything uses `ring`, which the workspace already builds: no second
//! crypto stack, no OpenSSL. This module must never log or return a secret in
//! an error; errors say which check failed, nothing more.

use std::num::NonZeroU32;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac, pbkdf2};
use serde::{Deserialize, Serialize};
use vault_protocol::SecretValue;

/// Every access token starts with this, so the server (and secret scanners)
/// can tell a token from a password.
pub const TOKEN_PREFIX: &str = "vlt_";

/// Characters of a presented credential used as its rate-limit key and shown
/// in `token list`: `vlt_` plus 8 random characters (48 bits), too few to
/// help a guesser, enough to tell tokens apart.
pub const SHOWN_PREFIX_LEN: usize = 12;

const PBKDF2_ITERATIONS: u32 = 210_000;

/// `n` random bytes from the OS.
pub fn random_bytes(n: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| "the operating system's random generator failed".to_owned())?;
    Ok(buf)
}

/// A random id for rows (token ids): 16 hex characters.
pub fn random_id() -> Result<String, String> {
    Ok(hex::encode(random_bytes(8)?))
}

/// A new access token: `vlt_` + URL-safe base64 of 32 random bytes.
pub fn new_access_token() -> Result<SecretValue, String> {
    let bytes = zeroize::Zeroizing::new(random_bytes(32)?);
    Ok(SecretValue::new(format!(
        "{TOKEN_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(bytes.as_slice())
    )))
}

/// The stored form of an access token: hex SHA-256. Tokens carry 256 random
/// bits, so a fast hash is enough (nothing to brute-force) and lets the
/// server find a token by its hash with one indexed lookup.
pub fn token_hash(token: &str) -> String {
    hex::encode(digest::digest(&digest::SHA256, token.as_bytes()))
}

/// The first [`SHOWN_PREFIX_LEN`] characters of a presented credential.
pub fn shown_prefix(presented: &str) -> String {
    presented.chars().take(SHOWN_PREFIX_LEN).collect()
}

/// The stored form of a bootstrap password: `pbkdf2-sha256$ITER$SALT$HASH`.
/// A password may be human-chosen, so it gets a slow, salted hash.
pub fn password_hash(password: &str) -> Result<String, String> {
    let salt = random_bytes(16)?;
    let mut out = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations(PBKDF2_ITERATIONS),
        &salt,
        password.as_bytes(),
        &mut out,
    );
    Ok(format!(
        "pbkdf2-sha256${PBKDF2_ITERATIONS}${}${}",
        hex::encode(salt),
        hex::encode(out)
    ))
}

/// True when `password` matches a [`password_hash`] string (constant time).
pub fn password_verify(password: &str, stored: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some("pbkdf2-sha256"), Some(iter), Some(salt), Some(hash), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let (Ok(iter), Ok(salt), Ok(hash)) =
        (iter.parse::<u32>(), hex::decode(salt), hex::decode(hash))
    else {
        return false;
    };
    pbkdf2::verify(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations(iter),
        &salt,
        password.as_bytes(),
        &hash,
    )
    .is_ok()
}

fn iterations(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// What a JWT asserts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer, always `vault-server`.
    pub iss: String,
    /// The user.
    pub sub: String,
    /// The access token it was exchanged from; checked on every call so that
    /// revocation and role changes take effect at once.
    pub tid: String,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
}

/// Why a JWT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    /// Not three base64 parts, a foreign header, or bad claims.
    Malformed,
    /// The signature does not verify under this server's key.
    BadSignature,
    /// `exp` has passed.
    Expired,
}

// The only header this server issues or accepts; comparing it verbatim rules
// out `alg: none` and algorithm confusion.
const JWT_HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// The HMAC-SHA256 key JWTs are signed with. It lives in the database so that
/// several servers sharing one database accept each other's JWTs.
pub struct JwtKey(hmac::Key);

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKey([redacted])")
    }
}

impl JwtKey {
    /// A key from raw secret bytes.
    pub fn new(secret: &[u8]) -> Self {
        JwtKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// Signs `claims` into a compact JWT.
    pub fn sign(&self, claims: &Claims) -> Result<String, String> {
        let payload =
            serde_json::to_vec(claims).map_err(|e| format!("cannot encode JWT claims: {e}"))?;
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(JWT_HEADER),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let tag = hmac::sign(&self.0, signing_input.as_bytes());
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        ))
    }

    /// Verifies a compact JWT and returns its claims if it is still valid at
    /// `now` (Unix seconds).
    pub fn verify(&self, jwt: &str, now: i64) -> Result<Claims, JwtError> {
        let mut parts = jwt.split('.');
        let (Some(header), Some(payload), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let signing_input = &jwt[..header.len() + 1 + payload.len()];
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| JwtError::Malformed)?;
        if header != JWT_HEADER.as_bytes() {
            return Err(JwtError::Malformed);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| JwtError::Malformed)?;
        hmac::verify(&self.0, signing_input.as_bytes(), &sig)
            .map_err(|_| JwtError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| JwtError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| JwtError::Malformed)?;
        if claims.iss != "vault-server" {
            return Err(JwtError::Malformed);
        }
        if now >= claims.exp {
            return Err(JwtError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            iss: "vault-server".into(),
            sub: "alice".into(),
            tid: "t1".into(),
            iat: 100,
            exp,
        }
    }

    #[test]
    fn jwt_round_trip_and_rejections() {
        let key = JwtKey::new(b"0123456789abcdef0123456789abcdef");
        let jwt = key.sign(&claims(200)).unwrap();
        assert_eq!(key.verify(&jwt, 150).unwrap(), claims(200));
        assert_eq!(key.verify(&jwt, 200), Err(JwtError::Expired));
        let other = JwtKey::new(b"another key another key another k");
        assert_eq!(other.verify(&jwt, 150), Err(JwtError::BadSignature));
        // Tampered payload.
        let mut parts: Vec<&str> = jwt.split('.').collect();
        let evil = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(10_000)).unwrap());
        parts[1] = &evil;
        assert_eq!(
            key.verify(&parts.join("."), 150),
            Err(JwtError::BadSignature)
        );
        // alg:none and garbage.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(10_000)).unwrap())
        );
        assert_eq!(key.verify(&none, 150), Err(JwtError::Malformed));
        assert_eq!(key.verify("a.b", 150), Err(JwtError::Malformed));
        assert_eq!(key.verify("", 150), Err(JwtError::Malformed));
    }

    #[test]
    fn tokens_and_passwords() {
        let t = new_access_token().unwrap();
        assert!(t.expose_secret().starts_with(TOKEN_PREFIX));
        assert_eq!(t.expose_secret().len(), 4 + 43);
        assert_ne!(
            new_access_token().unwrap().expose_secret(),
            t.expose_secret()
        );
        assert_eq!(token_hash("x").len(), 64);
        assert_eq!(shown_prefix(t.expose_secret()).len(), SHOWN_PREFIX_LEN);
        let h = password_hash("correct horse battery staple 1234").unwrap();
        assert!(password_verify("correct horse battery staple 1234", &h));
        assert!(!password_verify("correct horse battery staple 1235", &h));
        assert!(!password_verify("x", "garbage"));
    }
}
