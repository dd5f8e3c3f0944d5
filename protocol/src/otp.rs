//! One-time codes (RFC 6238, time-based) from a record's `otp` field: the
//! `otpauth://totp/…` URI a site shows as a QR code, or the bare base32
//! secret it shows beside it. The daemon computes the code, so `vault otp`
//! never receives the seed (docs/user-guide.md).
//!
//! Messages never quote the value: it is the seed.

use std::collections::BTreeMap;

use totp_rs::{Algorithm, TOTP};

use crate::CredentialType;

/// The field that holds the seed, on any typed record.
pub const FIELD: &str = "otp";

/// Whether `key` of a `kind` record is its one-time-code seed: the `otp`
/// field of any typed record. A generic record's keys are all variables
/// for `exec` and keys on the platform, so its `otp` is an ordinary key.
pub fn is_seed(kind: CredentialType, key: &str) -> bool {
    key == FIELD && kind != CredentialType::Generic
}

/// The seed of a `kind` record with these fields ([`is_seed`]).
pub fn seed_of<V>(kind: CredentialType, fields: &BTreeMap<String, V>) -> Option<&V> {
    fields.get(FIELD).filter(|_| is_seed(kind, FIELD))
}

/// Fewest seed bytes taken: 80 bits, the shortest any service issues
/// (RFC 4226 asks for 128); shorter is a typo.
const MIN_SECRET: usize = 10;

/// A parsed seed with its settings.
pub struct Otp(TOTP);

impl std::fmt::Debug for Otp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Otp")
            .field("digits", &self.0.digits)
            .field("period", &self.0.step)
            .field("algorithm", &self.0.algorithm)
            .finish_non_exhaustive()
    }
}

impl Otp {
    /// Reads an `otp` value; the error says what to fix, never the value.
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        let (secret, algorithm, digits, period) = match strip_prefix_ci(value, "otpauth://") {
            Some(rest) => from_uri(rest)?,
            None => (value.to_owned(), Algorithm::SHA1, 6, 30),
        };
        let secret = decode_base32(&secret)?;
        if secret.len() < MIN_SECRET {
            return Err(format!(
                "the otp secret is {} bits; services issue at least 80 (16 base32 \
                 characters): check it was copied whole",
                secret.len() * 8
            ));
        }
        Ok(Self(TOTP::new_unchecked(
            algorithm, digits, 1, period, secret,
        )))
    }

    /// The code at `unix` seconds, and for how many more seconds it holds.
    pub fn code(&self, unix: u64) -> (String, u64) {
        (self.0.generate(unix), self.0.step - unix % self.0.step)
    }

    /// Seconds each code holds.
    pub fn period(&self) -> u64 {
        self.0.step
    }

    /// Whether the codes are 6 digits of HMAC-SHA1 every 30 s, the only
    /// kind AWS MFA devices use.
    pub fn is_standard(&self) -> bool {
        matches!(self.0.algorithm, Algorithm::SHA1) && self.0.digits == 6 && self.0.step == 30
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// `totp/LABEL?secret=…&algorithm=…&digits=…&period=…` (after the scheme).
fn from_uri(rest: &str) -> Result<(String, Algorithm, usize, u64), String> {
    let (kind, after) = rest.split_once('/').unwrap_or((rest, ""));
    if kind.eq_ignore_ascii_case("hotp") {
        return Err(
            "counter-based (otpauth://hotp) codes are not supported: vault computes \
             time-based codes (otpauth://totp/…)"
                .into(),
        );
    }
    if !kind.eq_ignore_ascii_case("totp") {
        return Err("the otp value is neither an otpauth://totp/… URI nor a base32 secret".into());
    }
    let query = after.split_once('?').map_or("", |(_, q)| q);
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    let (mut secret, mut algorithm, mut digits, mut period) = (None, Algorithm::SHA1, 6, 30);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key.to_ascii_lowercase().as_str() {
            // Base32, digits and algorithm names need no percent-decoding
            // but padding may come escaped.
            "secret" => secret = Some(value.replace("%3D", "=").replace("%3d", "=")),
            "algorithm" => {
                algorithm = match value.to_ascii_uppercase().as_str() {
                    "SHA1" => Algorithm::SHA1,
                    "SHA256" => Algorithm::SHA256,
                    "SHA512" => Algorithm::SHA512,
                    _ => {
                        return Err("the otp URI's algorithm must be SHA1, SHA256 or SHA512".into());
                    }
                }
            }
            "digits" => {
                digits = value
                    .parse()
                    .ok()
                    .filter(|d| (6..=8).contains(d))
                    .ok_or("the otp URI's digits must be 6, 7 or 8")?
            }
            "period" => {
                period = value
                    .parse()
                    .ok()
                    .filter(|p| (1..=3600).contains(p))
                    .ok_or("the otp URI's period must be 1 to 3600 seconds")?
            }
            _ => {}
        }
    }
    let secret = secret.ok_or("the otp URI has no secret= parameter")?;
    Ok((secret, algorithm, digits, period))
}

/// Base32 as sites print it: any case, spaces or dashes between groups,
/// with or without `=` padding.
fn decode_base32(s: &str) -> Result<Vec<u8>, String> {
    let clean: String = s
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '\t'))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let clean = clean.trim_end_matches('=');
    if clean.is_empty() {
        return Err("the otp secret is empty".into());
    }
    if !clean
        .bytes()
        .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
    {
        return Err(
            "the otp secret is not base32 (letters A-Z and digits 2-7): give the secret \
             the site shows, or its otpauth://totp/… URI"
                .into(),
        );
    }
    totp_rs::Secret::Encoded(clean.to_owned())
        .to_bytes()
        .map_err(|_| "the otp secret is not valid base32".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 6238 appendix B: the ASCII seed "12345678901234567890" (SHA1),
    // its 32-byte and 64-byte extensions, 8 digits.
    const SHA1_SEED: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

    #[test]
    fn rfc_6238_test_vectors() {
        let sha1 = Otp::parse(&format!("otpauth://totp/x?secret={SHA1_SEED}&digits=8")).unwrap();
        assert_eq!(sha1.code(59).0, "94287082");
        assert_eq!(sha1.code(1_111_111_109).0, "07081804");
        assert_eq!(sha1.code(2_000_000_000).0, "69279037");
        let sha256 = Otp::parse(
            "otpauth://totp/x?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQGEZA\
             &digits=8&algorithm=SHA256",
        )
        .unwrap();
        assert_eq!(sha256.code(59).0, "46119246");
        let sha512 = Otp::parse(
            "otpauth://totp/x?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQGEZDGNA\
             &digits=8&algorithm=sha512",
        )
        .unwrap();
        assert_eq!(sha512.code(59).0, "90693936");
    }

    #[test]
    fn a_bare_secret_as_sites_print_it() {
        let spaced = Otp::parse("gezd gnbv gy3t qojq gezd gnbv gy3t qojq").unwrap();
        let plain = Otp::parse(SHA1_SEED).unwrap();
        assert_eq!(spaced.code(59), plain.code(59));
        // 6 digits of the RFC's 8, and 1 s left at second 59.
        assert_eq!(plain.code(59), ("287082".to_owned(), 1));
        assert_eq!(plain.code(60).1, 30);
        let padded = Otp::parse("JBSWY3DPEHPK3PXPJBSWY3DP====").unwrap();
        assert_eq!(padded.period(), 30);
        assert!(padded.is_standard());
        let long = Otp::parse("otpauth://totp/x?secret=JBSWY3DPEHPK3PXP&period=60").unwrap();
        assert!(!long.is_standard());
    }

    #[test]
    fn only_a_typed_records_otp_field_is_a_seed() {
        let fields: BTreeMap<String, u8> = [("otp".to_owned(), 1)].into();
        assert_eq!(seed_of(CredentialType::Password, &fields), Some(&1));
        assert_eq!(seed_of(CredentialType::Generic, &fields), None);
        assert!(is_seed(CredentialType::Token, "otp"));
        assert!(!is_seed(CredentialType::Token, "token"));
        assert!(!is_seed(CredentialType::Generic, "otp"));
    }

    #[test]
    fn bad_values_say_what_to_fix_and_never_echo_the_seed() {
        let cases = [
            ("JBSW1", "not base32"),
            ("JBSWY3DP", "bits"),
            (
                "otpauth://hotp/x?secret=JBSWY3DPEHPK3PXP&counter=1",
                "counter-based",
            ),
            ("otpauth://totp/x?digits=6", "no secret="),
            (
                "otpauth://totp/x?secret=JBSWY3DPEHPK3PXP&digits=10",
                "digits",
            ),
            (
                "otpauth://totp/x?secret=JBSWY3DPEHPK3PXP&period=0",
                "period",
            ),
            (
                "otpauth://totp/x?secret=JBSWY3DPEHPK3PXP&algorithm=MD5",
                "algorithm",
            ),
            ("otpauth://nope/x?secret=JBSWY3DPEHPK3PXP", "neither"),
        ];
        for (value, says) in cases {
            let err = Otp::parse(value).unwrap_err();
            assert!(err.contains(says), "{value}: {err}");
            assert!(!err.contains("JBSW"), "{err}");
        }
        let parsed = Otp::parse("JBSWY3DPEHPK3PXP").unwrap();
        assert!(!format!("{parsed:?}").contains("JBSW"));
    }
}
