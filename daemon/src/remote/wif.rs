//! A `gcp` issuer credential: the vault as an OIDC issuer that a Google
//! workload identity pool trusts (docs/gcp.md, "Keyless: an
//! external_account file"). The credential holds a P-256 key
//! (`issuer_key`), the issuer URL (`issuer`) and, as `json`, the
//! federation settings in Google's `external_account` shape (audience,
//! token URL, impersonation URL). The key never leaves the daemon: it
//! signs short-lived subject tokens, which the client libraries exchange
//! at Google's STS themselves, running `vault gcp subject-token NAME` as
//! the executable source of the file `vault emit gcloud --external-account`
//! writes.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64URL};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use vault_protocol::credential::{
    GCP_STS_TOKEN_URL as STS_TOKEN_URL, ISSUER, ISSUER_KEY, es256_kid, impersonated_account,
};
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{ErrorCode, Response, SecretValue, WireError};
use zeroize::Zeroizing;

use crate::engine::Engine;

/// How long a subject token lives: it is exchanged at once, so minutes.
const LIFETIME_SECS: i64 = 600;

fn usage(message: String) -> WireError {
    WireError::new(ErrorCode::Usage, message)
}

fn failed(message: String) -> WireError {
    WireError::new(ErrorCode::Failed, message)
}

/// A signed subject token for issuer credential `name`.
pub fn subject_token(engine: &Engine, name: &str, now: Timestamp) -> Result<Response, WireError> {
    let fields = engine.gcp_fields(name, now)?;
    let (Some(issuer), Some(key)) = (fields.get(ISSUER), fields.get(ISSUER_KEY)) else {
        return Err(usage(format!(
            "'{name}' is not an issuer credential (it has no {ISSUER_KEY}): make one with \
             'vault gcp issuer NAME --audience AUD'"
        )));
    };
    let issuer = Issuer::new(
        name,
        fields.get("json").map(|j| j.expose_secret()),
        issuer.expose_secret(),
        key,
    )
    .map_err(failed)?;
    let (token, exp) = issuer.sign(now.unix()).map_err(failed)?;
    Ok(Response::AccessToken {
        token: SecretValue::from(token.as_str()),
        expires_at: Timestamp(exp),
    })
}

/// An issuer credential, ready to sign: what its `json` names and its key.
pub struct Issuer {
    /// The credential's name: the tokens' `sub`.
    pub name: String,
    /// The `iss` claim.
    pub issuer: String,
    /// The workload identity provider (`//iam.googleapis.com/…`).
    pub audience: String,
    /// Where subject tokens are exchanged.
    pub token_url: String,
    /// The service account the json impersonates, if any.
    pub acts_as: Option<String>,
    /// PKCS#8 DER of the P-256 key; wiped on drop.
    pkcs8: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// Reads issuer credential `name`'s fields; messages name no secret.
    pub fn new(
        name: &str,
        json: Option<&str>,
        issuer: &str,
        key: &SecretValue,
    ) -> Result<Self, String> {
        let doc: serde_json::Value = serde_json::from_str(json.unwrap_or_default())
            .map_err(|_| format!("the json of '{name}' is not JSON"))?;
        let text = |k: &str| {
            doc.get(k)
                .and_then(|v| v.as_str())
                .filter(|v| !v.is_empty())
        };
        let audience = text("audience")
            .ok_or_else(|| format!("the json of '{name}' names no audience"))?
            .to_owned();
        let acts_as = match text("service_account_impersonation_url") {
            Some(url) => Some(impersonated_account(url).ok_or_else(|| {
                format!(
                    "the json of '{name}' impersonates through a URL that names no service account"
                )
            })?),
            None => None,
        };
        let pkcs8 = Zeroizing::new(
            STANDARD
                .decode(key.expose_secret().trim())
                .map_err(|_| format!("the {ISSUER_KEY} of '{name}' is not base64"))?,
        );
        Ok(Self {
            name: name.to_owned(),
            issuer: issuer.to_owned(),
            audience,
            token_url: text("token_url").unwrap_or(STS_TOKEN_URL).to_owned(),
            acts_as,
            pkcs8,
        })
    }

    /// A subject token issued at `now` (unix seconds) and its expiry.
    pub fn sign(&self, now: i64) -> Result<(Zeroizing<String>, i64), String> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &self.pkcs8, &rng)
            .map_err(|_| {
                format!(
                    "the {ISSUER_KEY} of '{}' is not a P-256 PKCS#8 key",
                    self.name
                )
            })?;
        let header = serde_json::json!({
            "alg": "ES256",
            "typ": "JWT",
            "kid": es256_kid(pair.public_key().as_ref()),
        });
        let exp = now + LIFETIME_SECS;
        let claims = serde_json::json!({
            "iss": self.issuer,
            "sub": self.name,
            "aud": aud_claim(&self.audience),
            "iat": now,
            "exp": exp,
        });
        let signing_input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let sig = pair
            .sign(&rng, signing_input.as_bytes())
            .map_err(|_| format!("signing a subject token for '{}' failed", self.name))?;
        Ok((
            Zeroizing::new(format!("{signing_input}.{}", B64URL.encode(sig.as_ref()))),
            exp,
        ))
    }
}

/// The `aud` claim Google's STS checks by default: the provider's
/// resource name with `https:` in front of the file's `//iam…` audience.
fn aud_claim(audience: &str) -> String {
    if audience.starts_with("//") {
        format!("https:{audience}")
    } else {
        audience.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audience_claim_is_the_provider_with_https_in_front() {
        let aud =
            "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/r";
        assert_eq!(aud_claim(aud), format!("https:{aud}"));
        assert_eq!(aud_claim("https://x"), "https://x");
    }
}
