//! `vault eks token` (docs/eks.md): the bearer token EKS takes, as `aws
//! eks get-token` makes it: `k8s-aws-v1.` and the unpadded base64url of a
//! presigned STS `GetCallerIdentity` URL that signs the cluster's name
//! (`x-k8s-aws-id`). The cluster's authenticator calls that URL; STS says
//! who signed it. Signed here, in the daemon: the keys never leave it.
//! Nothing goes over the network to make one.

use std::time::Duration;

use vault_protocol::timefmt::Timestamp;
use vault_protocol::{ErrorCode, Response, SecretValue, WireError};

use super::Shared;
use super::sigv4::{self, Keys, Presign};

/// What the token is prefixed with.
pub const PREFIX: &str = "k8s-aws-v1.";
/// The presigned URL's `X-Amz-Expires`, as `aws eks get-token` signs it.
const URL_EXPIRES: u64 = 60;
/// How long the token is announced for: EKS takes a URL signed up to 15
/// minutes ago; the aws CLI says 14, to leave a minute.
pub const LIFETIME: Duration = Duration::from_secs(14 * 60);
use vault_protocol::credential::{MAX_EKS_CLUSTER as MAX_CLUSTER, is_eks_cluster as valid_cluster};

/// A token for `cluster` from aws record `name`.
pub fn token(
    d: &Shared,
    name: &str,
    cluster: &str,
    region: Option<String>,
) -> Result<Response, WireError> {
    if !valid_cluster(cluster) {
        return Err(WireError::new(
            ErrorCode::Usage,
            format!(
                "'{}' is not an EKS cluster name (letters, digits, '-' and '_', at most \
                 {MAX_CLUSTER}): give the name 'aws eks list-clusters' shows",
                cluster.escape_debug()
            ),
        ));
    }
    let now = Timestamp::now();
    let plan = d
        .engine()
        .aws_keys(name, region.as_deref(), now, "an EKS token")?;
    let url = reqwest::Url::parse(&plan.endpoint).map_err(|e| {
        WireError::new(
            ErrorCode::Failed,
            format!("STS endpoint '{}' is not a URL: {e}", plan.endpoint),
        )
    })?;
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, _) => {
            return Err(WireError::new(
                ErrorCode::Failed,
                format!("STS endpoint '{}' has no host", plan.endpoint),
            ));
        }
    };
    let path = match url.path() {
        "" => "/",
        p => p,
    };
    let amz_date = now.to_rfc3339().replace(['-', ':'], "");
    let keys = Keys {
        access_key_id: &plan.access_key_id,
        secret_access_key: &plan.secret_access_key,
        session_token: plan.session_token.as_ref(),
    };
    let query = sigv4::presign(
        &Presign {
            host: &host,
            path,
            params: &[("Action", "GetCallerIdentity"), ("Version", "2011-06-15")],
            headers: &[("x-k8s-aws-id", cluster)],
            amz_date: &amz_date,
            expires_secs: URL_EXPIRES,
            region: &plan.region,
            service: "sts",
        },
        &keys,
    );
    let presigned = zeroize::Zeroizing::new(format!("{}://{host}{path}?{query}", url.scheme()));
    let mut token = String::with_capacity(PREFIX.len() + presigned.len() * 4 / 3 + 4);
    token.push_str(PREFIX);
    token.push_str(&base64url(presigned.as_bytes()));
    let mut expires_at = now.plus(LIFETIME);
    if let Some(keys_end) = plan.expires_at {
        expires_at = expires_at.min(keys_end);
    }
    Ok(Response::AccessToken {
        token: SecretValue::new(token),
        expires_at,
    })
}

/// Unpadded base64url.
fn base64url(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names() {
        for good in ["demo", "prod-eu_1", "9lives", &"a".repeat(100)] {
            assert!(valid_cluster(good), "{good}");
        }
        for bad in ["", "-x", "a b", "a/b", "ä", "x\n", &"a".repeat(101)] {
            assert!(!valid_cluster(bad), "{bad:?}");
        }
    }
}
