//! `vault console NAME` (docs/console.md): an AWS console sign-in URL,
//! made as AWS's "custom identity broker" guide says. Long-term keys are
//! first exchanged for a federation session (STS `GetFederationToken`,
//! the console takes no long-term keys); a role's session is used as it
//! is. The sign-in endpoint's `getSigninToken` turns the session into a
//! token, and the URL (`Action=login`) carries it, good for 15 minutes.
//! The keys go only to STS and to the sign-in endpoint this machine's
//! `config.toml` names (AWS's by default); the URL goes to the caller.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{ErrorCode, Response, SecretValue, WireError};

use super::Shared;
use super::http::{describe, read_capped};
use super::sigv4::{Keys, form_encode};

/// AWS's sign-in endpoint.
pub const FEDERATION_ENDPOINT: &str = "https://signin.aws.amazon.com/federation";
/// How long the console session lasts unless asked.
pub const DURATION: Duration = Duration::from_secs(3600);
/// The shortest and longest console session (AWS's bounds for a
/// federation session's console sign-in: 15 minutes to 12 hours).
const MIN: Duration = Duration::from_secs(900);
const MAX: Duration = Duration::from_secs(43_200);
/// How long a sign-in URL works.
const URL_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Each call's limit.
const CALL: Duration = Duration::from_secs(15);
/// The longest answer read from the sign-in endpoint.
const MAX_ANSWER: usize = 64 * 1024;
/// Who the sign-in page says sent the user.
const ISSUER: &str = "vault";
/// The federated user's name (GetFederationToken's `Name`).
const FEDERATED_NAME: &str = "vault-console";

/// What `vault console` asked.
#[derive(Debug, Default)]
pub struct Asked {
    /// Where the console opens.
    pub destination: Option<String>,
    /// The region of the console and of STS.
    pub region: Option<String>,
    /// How long the console session lasts.
    pub duration: Option<Duration>,
}

fn failed(msg: String) -> WireError {
    WireError::new(ErrorCode::Failed, msg)
}

fn usage(msg: String) -> WireError {
    WireError::new(ErrorCode::Usage, msg)
}

#[derive(Deserialize)]
struct SigninAnswer {
    #[serde(rename = "SigninToken")]
    signin_token: SecretValue,
}

/// The console page to open: `asked` (an https URL), else the console's
/// home, in `region` when there is one.
fn destination(asked: Option<&str>, region: Option<&str>) -> Result<String, WireError> {
    match asked {
        Some(d) => {
            let url = reqwest::Url::parse(d)
                .map_err(|e| usage(format!("--destination '{d}' is not a URL: {e}")))?;
            if url.scheme() != "https" {
                return Err(usage(format!(
                    "--destination '{d}' is not an https URL: give a console page, as \
                     https://console.aws.amazon.com/s3/"
                )));
            }
            Ok(url.to_string())
        }
        None => Ok(match region {
            Some(r) => format!("https://{r}.console.aws.amazon.com/console/home?region={r}"),
            None => "https://console.aws.amazon.com/".to_owned(),
        }),
    }
}

/// The sign-in URL for aws record `name`.
pub async fn sign_in(d: &Arc<Shared>, name: &str, asked: Asked) -> Result<Response, WireError> {
    let duration = asked.duration.unwrap_or(DURATION);
    if !(MIN..=MAX).contains(&duration) {
        return Err(usage(format!(
            "a console session lasts 15m to 12h, not {}s: give --duration within that",
            duration.as_secs()
        )));
    }
    let now = Timestamp::now();
    let (keys, endpoint, sts_timeout) = {
        let e = d.engine();
        let keys = e.aws_keys(name, asked.region.as_deref(), now, "a console sign-in")?;
        let endpoint = e
            .config()
            .federation_endpoint
            .clone()
            .unwrap_or_else(|| FEDERATION_ENDPOINT.to_owned());
        (keys, endpoint, e.config().refresh_timeout.min(CALL))
    };
    let region = asked.region.as_deref().or(Some(keys.region.as_str()));
    let given_region = asked.region.is_some() || keys.region != "us-east-1";
    let destination = destination(
        asked.destination.as_deref(),
        region.filter(|_| given_region),
    )?;
    let signer = Keys {
        access_key_id: &keys.access_key_id,
        secret_access_key: &keys.secret_access_key,
        session_token: keys.session_token.as_ref(),
    };
    // The console takes a session: a role's as it is, long-term keys
    // exchanged for a federation session lasting `duration`.
    let federated;
    let (session, session_duration) = match &keys.session_token {
        Some(token) => (
            serde_json::json!({
                "sessionId": keys.access_key_id,
                "sessionKey": keys.secret_access_key.expose_secret(),
                "sessionToken": token.expose_secret(),
            }),
            // SessionDuration is taken only with a role's session.
            keys.assumed.then_some(duration),
        ),
        None => {
            federated = super::sts::federation_token(
                &d.http,
                &keys.endpoint,
                &keys.region,
                &signer,
                FEDERATED_NAME,
                duration,
                sts_timeout,
            )
            .await
            .map_err(|e| {
                failed(format!(
                    "cannot make a console session from '{name}''s keys: {e} (the IAM user needs \
                     sts:GetFederationToken)"
                ))
            })?;
            (
                serde_json::json!({
                    "sessionId": federated.access_key_id.expose_secret(),
                    "sessionKey": federated.secret_access_key.expose_secret(),
                    "sessionToken": federated.session_token.expose_secret(),
                }),
                None,
            )
        }
    };
    let session = zeroize::Zeroizing::new(session.to_string());
    let mut query = zeroize::Zeroizing::new(String::from("?Action=getSigninToken"));
    if let Some(s) = session_duration {
        query.push_str(&format!("&SessionDuration={}", s.as_secs()));
    }
    query.push_str("&Session=");
    query.push_str(&form_encode(&session));
    let url = zeroize::Zeroizing::new(format!("{endpoint}{}", query.as_str()));
    // The URL holds the session's keys: it goes nowhere but the request.
    let response = d
        .http
        .get(url.as_str())
        .timeout(CALL)
        .send()
        .await
        .map_err(|e| {
            failed(format!(
                "cannot reach the AWS sign-in endpoint {endpoint}: {}; try again when it answers",
                describe(&e)
            ))
        })?;
    let status = response.status();
    let body = read_capped(response, MAX_ANSWER)
        .await
        .map_err(|e| failed(format!("cannot read the sign-in endpoint's answer: {e}")))?;
    if !status.is_success() {
        let hint = if keys.session_token.is_some() && !keys.assumed {
            " (the console takes a role's session or long-term keys, not a GetSessionToken \
             session: sign in with the credential it was minted from)"
        } else {
            ""
        };
        return Err(failed(format!(
            "the AWS sign-in endpoint refused the session ({}){hint}",
            status.as_u16()
        )));
    }
    let answer: SigninAnswer = serde_json::from_slice(&body)
        .map_err(|_| failed("the AWS sign-in endpoint's answer holds no SigninToken".into()))?;
    let token = answer.signin_token.expose_secret();
    if token.is_empty() || token.len() > 8192 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(failed(
            "the AWS sign-in endpoint's answer holds a SigninToken that cannot be one".into(),
        ));
    }
    let login = format!(
        "{endpoint}?Action=login&Issuer={}&Destination={}&SigninToken={}",
        form_encode(ISSUER),
        form_encode(&destination),
        form_encode(token)
    );
    Ok(Response::AccessToken {
        token: SecretValue::new(login),
        expires_at: now.plus(URL_LIFETIME),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        assert_eq!(
            destination(None, None).unwrap(),
            "https://console.aws.amazon.com/"
        );
        assert_eq!(
            destination(None, Some("eu-west-1")).unwrap(),
            "https://eu-west-1.console.aws.amazon.com/console/home?region=eu-west-1"
        );
        assert_eq!(
            destination(Some("https://console.aws.amazon.com/s3/"), None).unwrap(),
            "https://console.aws.amazon.com/s3/"
        );
        for bad in [
            "http://console.aws.amazon.com/",
            "console",
            "javascript:alert(1)",
        ] {
            assert_eq!(
                destination(Some(bad), None).unwrap_err().code,
                ErrorCode::Usage,
                "{bad}"
            );
        }
    }
}
