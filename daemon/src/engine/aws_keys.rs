//! The keys of an `aws` record and its STS endpoint, read from this
//! machine's record and `config.toml`, for what the daemon signs with
//! them: `vault eks token` (docs/eks.md, `remote/eks.rs`) and `vault
//! console` (docs/console.md, `remote/console.rs`). Nothing here logs a
//! name or a value.

use vault_protocol::timefmt::Timestamp;
use vault_protocol::{CredentialType, ErrorCode, SecretValue};

use super::refresh::{check_region, endpoint_for};
use super::{Engine, Result, err};

/// An `aws` record's keys, and its STS.
pub struct AwsKeys {
    /// The STS endpoint the URL points at.
    pub endpoint: String,
    /// The signing region.
    pub region: String,
    /// The access key id.
    pub access_key_id: String,
    /// The secret key.
    pub secret_access_key: SecretValue,
    /// The session token of temporary keys.
    pub session_token: Option<SecretValue>,
    /// When temporary keys expire.
    pub expires_at: Option<Timestamp>,
    /// The keys are a role's, minted with AssumeRole (the record has a
    /// `role_arn`).
    pub assumed: bool,
}

impl std::fmt::Debug for AwsKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKeys")
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// The keys of `aws` record `name` and the STS endpoint of `region`
    /// (given, else the record's, else the global endpoint), or why not.
    pub fn aws_keys(
        &self,
        name: &str,
        region: Option<&str>,
        now: Timestamp,
        what: &str,
    ) -> Result<AwsKeys> {
        let (row, body) = self.load(name)?;
        if body.kind != CredentialType::Aws {
            return Err(err(
                ErrorCode::Usage,
                format!(
                    "'{name}' is a {} credential: {what} needs an aws one",
                    body.kind
                ),
            ));
        }
        if let Some(why) = self.check_blocked(&row, &body) {
            return Err(err(ErrorCode::NotApproved, why));
        }
        let field = |f: &str| {
            body.fields
                .get(f)
                .filter(|v| !v.is_empty())
                .map(|v| v.expose_secret().to_owned())
        };
        let secret = |f: &str| {
            body.fields
                .get(f)
                .filter(|v| !v.is_empty())
                .map(SecretValue::duplicate)
        };
        let (Some(access_key_id), Some(secret_access_key)) =
            (field("access_key_id"), secret("secret_access_key"))
        else {
            return Err(err(
                ErrorCode::Failed,
                format!("'{name}' has no keys yet; 'vault status' says why"),
            ));
        };
        if let Some(at) = body.expires_at.filter(|t| *t <= now) {
            return Err(err(
                ErrorCode::Failed,
                format!(
                    "'{name}''s keys expired at {at} and could not be renewed; 'vault status' says why"
                ),
            ));
        }
        let region = match region.map(str::to_owned).or_else(|| field("region")) {
            Some(r) => Some(
                check_region(&r)
                    .map_err(|e| err(ErrorCode::Usage, e))?
                    .to_owned(),
            ),
            None => None,
        };
        let endpoint = endpoint_for(
            field("sts_endpoint").as_deref(),
            self.config().sts_endpoint.as_deref(),
            region.as_deref(),
        )
        .map_err(|e| err(ErrorCode::Failed, e))?;
        Ok(AwsKeys {
            endpoint,
            region: region.unwrap_or_else(|| "us-east-1".into()),
            access_key_id,
            secret_access_key,
            session_token: secret("session_token"),
            expires_at: body.expires_at,
            assumed: field("role_arn").is_some(),
        })
    }
}
