//! `vault exec --server`: a loopback HTTP endpoint in the AWS container
//! credentials format, for one child. SDKs in a long-running child fetch
//! credentials from it (`AWS_CONTAINER_CREDENTIALS_FULL_URI` +
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN`) and fetch again before they expire,
//! so they never hold stale keys: every request reads the credential from
//! the daemon afresh. A request without the child's token gets 401. The
//! endpoint stops when the child exits.

use std::sync::Arc;

use serde_json::json;
use vault_protocol::message::RecordView;
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{ErrorCode, Request, Response};
use zeroize::Zeroizing;

use super::loopback::{Loopback, Reply, Request as HttpRequest};
use crate::client::{Client, Target};

/// How long credentials without an expiry are announced for: SDKs come back
/// after this, so a rotated key reaches a long-running child.
const STATIC_LIFETIME: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// The running endpoint; stopped on drop.
pub struct CredServer {
    _server: Loopback,
    /// `http://127.0.0.1:PORT/credentials`.
    pub url: String,
    /// The value the child must send in `Authorization`.
    pub token: Zeroizing<String>,
}

impl CredServer {
    /// Serves credential `name` of the vault at `target` on a free loopback
    /// port.
    pub fn start(target: Target, name: String, token: Zeroizing<String>) -> Result<Self, String> {
        let expected = token.clone();
        let handler = move |request: &HttpRequest, _: std::net::SocketAddrV4| {
            let (status, body) = answer(request, &target, &name, &expected);
            Reply {
                status,
                headers: vec![("Content-Type", "application/json")],
                body,
            }
        };
        let server = Loopback::start(Arc::new(handler), || Reply {
            status: 503,
            headers: vec![("Content-Type", "application/json")],
            body: error_body("Busy", "too many requests at once: try again"),
        })?;
        Ok(Self {
            url: format!("http://127.0.0.1:{}/credentials", server.addr.port()),
            _server: server,
            token,
        })
    }
}

impl std::fmt::Debug for CredServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredServer")
            .field("url", &self.url)
            .field("token", &"[redacted]")
            .finish()
    }
}

/// Compares without an early exit, so timing tells nothing of the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error_body(code: &str, message: &str) -> Zeroizing<String> {
    Zeroizing::new(json!({ "Code": code, "Message": message }).to_string())
}

/// The status and JSON body for one request.
fn answer(
    request: &HttpRequest,
    target: &Target,
    name: &str,
    token: &str,
) -> (u16, Zeroizing<String>) {
    let authorized = request
        .header("Authorization")
        .is_some_and(|h| same(h.as_bytes(), token.as_bytes()));
    if !authorized {
        return (
            401,
            error_body(
                "Unauthorized",
                "send the AWS_CONTAINER_AUTHORIZATION_TOKEN of this child",
            ),
        );
    }
    if request.method() != "GET" {
        return (405, error_body("MethodNotAllowed", "use GET"));
    }
    let fetched = Client::connect_or_start(target).and_then(|mut client| {
        client.call(Request::Resolve {
            names: vec![name.to_owned()],
        })
    });
    let record = match fetched {
        Ok(Response::Resolved { mut records }) if records.len() == 1 => records.remove(0),
        Ok(_) => {
            return (
                500,
                error_body("Internal", "vaultd sent an unexpected answer"),
            );
        }
        Err(e) if e.code == ErrorCode::Locked => {
            return (
                503,
                error_body("Locked", "vault is locked: run 'vault unlock'"),
            );
        }
        Err(e) => return (500, error_body("Unavailable", &e.message)),
    };
    let now = Timestamp::now();
    if record.expires_at.is_some_and(|t| t <= now) {
        let message = format!("{name} has expired: renew it in the vault");
        return (503, error_body("Expired", &message));
    }
    (200, credentials_json(&record, now))
}

/// The container-credentials document. `Token` and `Expiration` are always
/// present (SDKs require them): an empty token for long-lived keys, and for
/// keys without an expiry a time 15 minutes ahead, after which SDKs ask
/// again.
fn credentials_json(record: &RecordView, now: Timestamp) -> Zeroizing<String> {
    let field = |f: &str| {
        record
            .fields
            .get(f)
            .map(|v| v.expose_secret())
            .unwrap_or_default()
    };
    let expiration = record
        .expires_at
        .unwrap_or(now.plus(STATIC_LIFETIME))
        .to_rfc3339();
    crate::secret_json::object(&[
        ("AccessKeyId", Some(field("access_key_id"))),
        ("SecretAccessKey", Some(field("secret_access_key"))),
        ("Token", Some(field("session_token"))),
        ("Expiration", Some(&expiration)),
    ])
}
