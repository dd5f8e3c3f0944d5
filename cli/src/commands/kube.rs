//! What kubectl's exec plugins answer (`vault eks token`, `vault gke
//! token`; docs/eks.md, docs/gcp.md): an `ExecCredential` holding a bearer
//! token and its expiry, in the client-authentication API version kubectl
//! asks for.

use serde_json::json;
use vault_protocol::SecretValue;
use vault_protocol::timefmt::Timestamp;

use super::Ctx;
use crate::error::{CliResult, usage};

/// The client-authentication API versions answered.
const VERSIONS: [&str; 2] = [
    "client.authentication.k8s.io/v1beta1",
    "client.authentication.k8s.io/v1",
];

/// The version to answer in for `--api-version` (or what kubectl asks for
/// in `KUBERNETES_EXEC_INFO`).
pub fn api_version(flag: Option<&str>) -> CliResult<&'static str> {
    let exec_info = std::env::var("KUBERNETES_EXEC_INFO").ok();
    api_version_of(flag, exec_info.as_deref()).map_err(usage)
}

/// Prints the `ExecCredential` for `token` (on stdout: kubectl reads it).
pub fn print_exec_credential(
    ctx: &mut Ctx,
    version: &str,
    token: &SecretValue,
    expires_at: Timestamp,
) -> CliResult<()> {
    let credential = json!({
        "kind": "ExecCredential",
        "apiVersion": version,
        "spec": {},
        "status": {
            "expirationTimestamp": expires_at,
            "token": token.expose_secret(),
        },
    });
    let text = zeroize::Zeroizing::new(credential.to_string());
    ctx.out.text(&text);
    ctx.out.text("\n");
    Ok(())
}

/// The API version to answer in: `--api-version` (a full name, or `v1`
/// / `v1beta1`), else the one kubectl names in `KUBERNETES_EXEC_INFO`,
/// else v1beta1.
fn api_version_of(flag: Option<&str>, exec_info: Option<&str>) -> Result<&'static str, String> {
    let asked = match (flag, exec_info) {
        (Some(f), _) => Some(f.to_owned()),
        (None, Some(info)) => serde_json::from_str::<serde_json::Value>(info)
            .ok()
            .and_then(|v| v["apiVersion"].as_str().map(str::to_owned)),
        (None, None) => None,
    };
    let Some(asked) = asked else {
        return Ok(VERSIONS[0]);
    };
    VERSIONS
        .into_iter()
        .find(|v| *v == asked || v.rsplit('/').next() == Some(asked.as_str()))
        .ok_or_else(|| {
            format!(
                "API version '{}' is not one vault answers: set the exec entry's apiVersion in \
                 the kubeconfig to {} or {}",
                asked.escape_debug(),
                VERSIONS[0],
                VERSIONS[1]
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_in_the_version_asked() {
        assert_eq!(api_version_of(None, None).unwrap(), VERSIONS[0]);
        assert_eq!(api_version_of(Some("v1"), None).unwrap(), VERSIONS[1]);
        assert_eq!(
            api_version_of(Some(VERSIONS[0]), None).unwrap(),
            VERSIONS[0]
        );
        let info = r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","spec":{"interactive":false}}"#;
        assert_eq!(api_version_of(None, Some(info)).unwrap(), VERSIONS[1]);
        // The flag wins; nonsense in the variable means the default.
        assert_eq!(
            api_version_of(Some("v1beta1"), Some(info)).unwrap(),
            VERSIONS[0]
        );
        assert_eq!(api_version_of(None, Some("{")).unwrap(), VERSIONS[0]);
        let old = r#"{"apiVersion":"client.authentication.k8s.io/v1alpha1"}"#;
        assert!(
            api_version_of(None, Some(old))
                .unwrap_err()
                .contains("v1alpha1")
        );
    }
}
