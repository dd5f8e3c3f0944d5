//! Minting AWS sessions (docs/refresh.md): an `aws` record with a
//! `source` (a long-term `aws` record) gets its keys from STS —
//! `AssumeRole` when it has a `role_arn`, `GetSessionToken` otherwise —
//! signed with the source's keys (SigV4, remote/sigv4.rs) and sent over
//! HTTPS (plain HTTP only to a loopback endpoint, for tests and local
//! emulators).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use vault_protocol::SecretValue;
use vault_protocol::timefmt::Timestamp;

use crate::engine::refresh::{Mfa, Minted, StsPlan as Plan};

/// An MFA code this close to the end of its step is not sent: STS could
/// see it expire on the way.
const OTP_MARGIN: Duration = Duration::from_secs(2);
use crate::remote::http::{Http, describe, read_capped};

/// The longest answer read from STS (its answers are a few KiB).
const MAX_ANSWER: usize = 64 << 10;
use crate::remote::sigv4::{self, Keys};

/// Whether `url` may be used: HTTPS anywhere, HTTP only on loopback.
pub use vault_protocol::credential::check_sts_endpoint as check_endpoint;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Answer {
    #[serde(alias = "GetSessionTokenResult", alias = "GetFederationTokenResult")]
    assume_role_result: Option<Outcome>,
    /// AWS's form.
    error: Option<ErrorBody>,
    /// moto's form: the same, wrapped.
    errors: Option<Errors>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Errors {
    error: ErrorBody,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Outcome {
    credentials: Credentials,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Credentials {
    access_key_id: SecretValue,
    secret_access_key: SecretValue,
    session_token: SecretValue,
    expiration: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody {
    code: Option<String>,
    message: Option<String>,
}

/// The form body of the call; `code` is the MFA code when the plan has a
/// device.
fn body(plan: &Plan, code: Option<&str>) -> String {
    let secs = plan.duration.as_secs();
    let mfa = match (&plan.mfa, code) {
        (Some((serial, _)), Some(code)) => format!(
            "&SerialNumber={}&TokenCode={}",
            sigv4::form_encode(serial),
            sigv4::form_encode(code)
        ),
        _ => String::new(),
    };
    match &plan.role_arn {
        Some(role) => format!(
            "Action=AssumeRole&DurationSeconds={secs}&RoleArn={}&RoleSessionName={}{mfa}&Version=2011-06-15",
            sigv4::form_encode(role),
            sigv4::form_encode(&plan.session_name)
        ),
        None => format!("Action=GetSessionToken&DurationSeconds={secs}{mfa}&Version=2011-06-15"),
    }
}

/// The step of the codes AWS takes (RFC 6238's 30 s).
const MFA_STEP: u64 = 30;

/// The code each MFA device (`mfa_serial`) was last sent, and when: AWS
/// takes a code once, so a second session minted from one device within a
/// step waits for the next code, whether the codes come from a seed
/// (`mfa_otp`) or from `mfa_command`.
#[derive(Default)]
struct Sent(std::collections::HashMap<String, (u64, String)>);

impl Sent {
    /// Records `code` as sent to `serial` at `now`, unless it was sent
    /// within the last four steps (then `false`: wait for the next one).
    fn take(&mut self, serial: &str, code: &str, now: u64, step: u64) -> bool {
        if let Some((at, last)) = self.0.get(serial)
            && last == code
            && now < at + 4 * step
        {
            return false;
        }
        self.0.insert(serial.to_owned(), (now, code.to_owned()));
        true
    }
}

static SENT: std::sync::LazyLock<std::sync::Mutex<Sent>> =
    std::sync::LazyLock::new(Default::default);

fn take_code(serial: &str, code: &str, step: u64) -> bool {
    let now = Timestamp::now().unix().max(0) as u64;
    SENT.lock()
        .unwrap_or_else(|p| p.into_inner())
        .take(serial, code, now, step)
}

/// The current code of the seed, with time to reach STS (in the last
/// [`OTP_MARGIN`] of its step the next code is awaited), and never one
/// this daemon has sent the device before.
async fn otp_code(serial: &str, otp: &vault_protocol::otp::Otp) -> String {
    loop {
        let now = Timestamp::now().unix().max(0) as u64;
        let (code, left) = otp.code(now);
        if left > OTP_MARGIN.as_secs() && take_code(serial, &code, otp.period()) {
            return code;
        }
        tokio::time::sleep(Duration::from_secs(left)).await;
    }
}

/// The code `mfa_command` prints, never one this daemon has sent the
/// device before: a repeated one is asked for again at the next `step`,
/// three times at most.
async fn command_code(
    serial: &str,
    command: &str,
    timeout: Duration,
    step: u64,
) -> Result<String, String> {
    for _ in 0..3 {
        let run = command.to_owned();
        let code = tokio::task::spawn_blocking(move || mfa_code(&run, timeout))
            .await
            .map_err(|_| "the mfa_command task failed".to_owned())??;
        if take_code(serial, &code, step) {
            return Ok(code);
        }
        let now = Timestamp::now().unix().max(0) as u64;
        tokio::time::sleep(Duration::from_secs(step - now % step)).await;
    }
    Err(format!(
        "mfa_command printed a code already sent to AWS for {serial}, three steps running; \
         AWS takes each code once: make it print the device's current code"
    ))
}

/// Runs the plan's `mfa_command` and reads the code it prints: six digits.
/// Blocking.
fn mfa_code(command: &str, timeout: Duration) -> Result<String, String> {
    let out = crate::remote::refresher::run_raw(command, timeout)
        .map_err(|e| format!("mfa_command: {e}"))?;
    let code = String::from_utf8_lossy(&out).trim().to_owned();
    if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
        Ok(code)
    } else {
        Err("mfa_command did not print a 6-digit code".into())
    }
}

/// A federation session (`GetFederationToken`, `vault console`); `Debug`
/// shows no key.
#[derive(Debug)]
pub struct Federated {
    /// Its access key id.
    pub access_key_id: SecretValue,
    /// Its secret key.
    pub secret_access_key: SecretValue,
    /// Its session token.
    pub session_token: SecretValue,
}

/// The policy of a console session made from long-term keys: everything
/// the user may do (a federation session gets the intersection of this
/// and the user's own policies; without one it gets nothing).
const CONSOLE_POLICY: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#;

/// `GetFederationToken` for `name` (2–32 of `\w+=,.@-`), lasting
/// `duration`, signed with long-term `keys`.
pub async fn federation_token(
    http: &Http,
    endpoint: &str,
    region: &str,
    keys: &Keys<'_>,
    name: &str,
    duration: Duration,
    timeout: Duration,
) -> Result<Federated, String> {
    check_endpoint(endpoint)?;
    let form = format!(
        "Action=GetFederationToken&DurationSeconds={}&Name={}&Policy={}&Version=2011-06-15",
        duration.as_secs(),
        sigv4::form_encode(name),
        sigv4::form_encode(CONSOLE_POLICY)
    );
    let action = "GetFederationToken";
    let text = call(http, "sts", endpoint, region, keys, form, action, timeout).await?;
    let answer: Option<Answer> = quick_xml::de::from_str(&text).ok();
    let creds = answer
        .and_then(|a| a.assume_role_result)
        .map(|r| r.credentials)
        .ok_or_else(|| format!("STS's answer to {action} holds no credentials"))?;
    check_keys(&creds, action)?;
    Ok(Federated {
        access_key_id: creds.access_key_id,
        secret_access_key: creds.secret_access_key,
        session_token: creds.session_token,
    })
}

/// STS's keys look like keys: printable ASCII of AWS's lengths (a
/// hostile or broken endpoint's values would go into files and env vars).
fn check_keys(creds: &Credentials, action: &str) -> Result<(), String> {
    if !keys_look_real(
        &creds.access_key_id,
        &creds.secret_access_key,
        &creds.session_token,
    ) {
        return Err(format!(
            "STS's answer to {action} holds keys that cannot be ones"
        ));
    }
    Ok(())
}

/// Whether a session's keys look like AWS's: printable ASCII of AWS's
/// lengths (also what IAM Identity Center hands out).
pub(crate) fn keys_look_real(id: &SecretValue, secret: &SecretValue, token: &SecretValue) -> bool {
    let sane = |v: &SecretValue, max: usize| {
        (1..=max).contains(&v.expose_secret().len())
            && v.expose_secret().bytes().all(|b| b.is_ascii_graphic())
    };
    sane(id, 128) && sane(secret, 256) && sane(token, 8192)
}

/// A session ends after `now` and at most `duration` later (plus 5
/// minutes for clocks): a past one would be refreshed on every access, a
/// far one never.
/// `service` names who answered (STS, IAM Identity Center).
pub(crate) fn check_expiry(
    expires_at: Timestamp,
    now: Timestamp,
    duration: Duration,
    service: &str,
    action: &str,
) -> Result<(), String> {
    let asked = i64::try_from(duration.as_secs()).unwrap_or(i64::MAX / 2);
    if expires_at.unix() <= now.unix() || expires_at.unix() > now.unix() + asked + 300 {
        return Err(format!(
            "{service}'s answer to {action} expires at {}, outside now .. now + {asked} s",
            expires_at.to_rfc3339()
        ));
    }
    Ok(())
}

/// Calls STS and returns the session as `aws` fields.
pub async fn mint(http: &Http, plan: &Plan, timeout: Duration) -> Result<Minted, String> {
    check_endpoint(&plan.endpoint)?;
    let action = if plan.role_arn.is_some() {
        "AssumeRole"
    } else {
        "GetSessionToken"
    };
    let code = match &plan.mfa {
        Some((serial, Mfa::Command(command))) => Some(zeroize::Zeroizing::new(
            command_code(serial, command, timeout, MFA_STEP).await?,
        )),
        Some((serial, Mfa::Otp(_, otp))) => {
            Some(zeroize::Zeroizing::new(otp_code(serial, otp).await))
        }
        None => None,
    };
    let form = body(plan, code.as_deref().map(String::as_str));
    let keys = Keys {
        access_key_id: &plan.access_key_id,
        secret_access_key: &plan.secret_access_key,
        session_token: plan.session_token.as_ref(),
    };
    let text = call(
        http,
        "sts",
        &plan.endpoint,
        &plan.region,
        &keys,
        form,
        action,
        timeout,
    )
    .await?;
    let answer: Option<Answer> = quick_xml::de::from_str(&text).ok();
    let creds = answer
        .and_then(|a| a.assume_role_result)
        .map(|r| r.credentials)
        .ok_or_else(|| format!("STS's answer to {action} holds no credentials"))?;
    check_keys(&creds, action)?;
    let expires_at =
        Timestamp::parse(&creds.expiration).map_err(|e| format!("STS's Expiration: {e}"))?;
    check_expiry(expires_at, Timestamp::now(), plan.duration, "STS", action)?;
    let mut fields = BTreeMap::new();
    fields.insert("access_key_id".to_owned(), creds.access_key_id);
    fields.insert("secret_access_key".to_owned(), creds.secret_access_key);
    fields.insert("session_token".to_owned(), creds.session_token);
    Ok(Minted {
        fields,
        expires_at: Some(expires_at),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IdentityAnswer {
    get_caller_identity_result: Identity,
}

/// Who a set of keys is, as `GetCallerIdentity` says (`vault check`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Identity {
    /// The account id.
    pub account: String,
    /// The user's or role session's ARN.
    pub arn: String,
}

/// `GetCallerIdentity` with `keys` at `endpoint`: whether AWS takes them.
pub async fn caller_identity(
    http: &Http,
    endpoint: &str,
    region: &str,
    keys: &Keys<'_>,
    timeout: Duration,
) -> Result<Identity, String> {
    let form = "Action=GetCallerIdentity&Version=2011-06-15".to_owned();
    let text = call(
        http,
        "sts",
        endpoint,
        region,
        keys,
        form,
        "GetCallerIdentity",
        timeout,
    )
    .await?;
    quick_xml::de::from_str::<IdentityAnswer>(&text)
        .map(|a| a.get_caller_identity_result)
        .map_err(|_| "STS's answer to GetCallerIdentity names no account".to_owned())
}

/// Sends one form call of AWS's query API to `service` (`sts`, `iam`)
/// signed with `keys` (SigV4) and returns the text of a successful
/// answer, or why it failed: never a key. The answer is hostile input:
/// read up to 64 KiB, and its error XML (AWS's, or moto's wrapped form)
/// only quoted for its code and message.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn call(
    http: &Http,
    service: &str,
    endpoint: &str,
    region: &str,
    keys: &Keys<'_>,
    form: String,
    action: &str,
    timeout: Duration,
) -> Result<String, String> {
    let label = service.to_ascii_uppercase();
    check_endpoint(endpoint)?;
    let url = reqwest::Url::parse(endpoint)
        .map_err(|e| format!("{service} endpoint '{endpoint}' is not a URL: {e}"))?;
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, _) => return Err(format!("{service} endpoint '{endpoint}' has no host")),
    };
    let path = match url.path() {
        "" => "/",
        p => p,
    };
    let amz_date = amz_date(Timestamp::now());
    let headers = sigv4::sign(
        &sigv4::Request {
            method: "POST",
            host: &host,
            path,
            query: "",
            body: form.as_bytes(),
            amz_date: &amz_date,
            region,
            service,
        },
        keys,
    );
    // The endpoint was checked above; the client follows no redirect out
    // of its origin, so https stays https.
    let mut request = http.post(url.as_str()).timeout(timeout).body(form);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("cannot reach {label} at {endpoint}: {}", describe(&e)))?;
    let status = response.status();
    let body = read_capped(response, MAX_ANSWER)
        .await
        .map_err(|e| format!("cannot read {label}'s answer: {e}"))?;
    let text = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        // An error answer holds no secret: its text may be shown when it
        // is not the XML AWS speaks.
        let (code, message) =
            error_of(&text).unwrap_or_else(|| (String::new(), text.chars().take(300).collect()));
        return Err(format!(
            "{label} refused {action} ({} {code}): {message}",
            status.as_u16()
        ));
    }
    Ok(text)
}

/// The code and message of an AWS error answer (`<ErrorResponse><Error>`,
/// or moto's `<Errors><Error>`), if it is one.
pub(crate) fn error_of(text: &str) -> Option<(String, String)> {
    let answer: Option<Answer> = quick_xml::de::from_str(text).ok();
    answer
        .and_then(|a| a.error.or(a.errors.map(|e| e.error)))
        .map(|e| (e.code.unwrap_or_default(), e.message.unwrap_or_default()))
}

/// `20261123T120000Z`.
fn amz_date(t: Timestamp) -> String {
    t.to_rfc3339().replace(['-', ':'], "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_must_end_after_now_and_within_what_was_asked() {
        let now = Timestamp(1_800_000_000);
        let hour = Duration::from_secs(3600);
        assert!(check_expiry(Timestamp(now.0 + 3600), now, hour, "STS", "AssumeRole").is_ok());
        assert!(check_expiry(Timestamp(now.0 + 3900), now, hour, "STS", "AssumeRole").is_ok());
        assert!(check_expiry(now, now, hour, "STS", "AssumeRole").is_err());
        let far = check_expiry(Timestamp(253_402_300_799), now, hour, "STS", "AssumeRole");
        assert!(far.unwrap_err().contains("outside now"));
    }
    use crate::engine::refresh::{GLOBAL_ENDPOINT, endpoint_for, session_name};

    #[test]
    fn endpoints() {
        assert_eq!(endpoint_for(None, None, None).unwrap(), GLOBAL_ENDPOINT);
        assert_eq!(
            endpoint_for(None, None, Some("eu-west-1")).unwrap(),
            "https://sts.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            endpoint_for(Some("https://a"), Some("https://b"), None).unwrap(),
            "https://a"
        );
        assert_eq!(
            endpoint_for(None, Some("https://b"), Some("x")).unwrap(),
            "https://b"
        );
        // A region never chooses the host.
        for bad in [
            "x.evil.example/",
            "a@evil.example#",
            "EU-WEST-1",
            "",
            "eu west",
        ] {
            let e = endpoint_for(None, None, Some(bad)).unwrap_err();
            assert!(e.contains("is not a region name"), "{e}");
        }
        for ok in [
            "https://sts.amazonaws.com",
            "http://127.0.0.1:5000",
            "http://localhost/",
        ] {
            assert!(check_endpoint(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://sts.amazonaws.com",
            "ftp://x",
            "https://",
            "http://127.0.0.1.evil.com/",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_sts_answers() {
        let ok = r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <AssumedRoleUser><Arn>arn:aws:sts::1:assumed-role/r/s</Arn><AssumedRoleId>A:s</AssumedRoleId></AssumedRoleUser>
    <Credentials>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
      <SecretAccessKey>se&amp;cret</SecretAccessKey>
      <SessionToken>tok</SessionToken>
      <Expiration>2026-11-23T13:00:00Z</Expiration>
    </Credentials>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>r</RequestId></ResponseMetadata>
</AssumeRoleResponse>"#;
        let a: Answer = quick_xml::de::from_str(ok).unwrap();
        let c = a.assume_role_result.unwrap().credentials;
        assert_eq!(c.access_key_id.expose_secret(), "ASIAEXAMPLE");
        assert_eq!(c.secret_access_key.expose_secret(), "se&cret");
        let gst = ok
            .replace("AssumeRoleResult", "GetSessionTokenResult")
            .replace("AssumeRoleResponse", "GetSessionTokenResponse");
        let a: Answer = quick_xml::de::from_str(&gst).unwrap();
        assert!(a.assume_role_result.is_some());
        let err = r#"<ErrorResponse><Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code><Message>bad sig</Message></Error><RequestId>x</RequestId></ErrorResponse>"#;
        let a: Answer = quick_xml::de::from_str(err).unwrap();
        assert_eq!(
            a.error.unwrap().code.as_deref(),
            Some("SignatureDoesNotMatch")
        );
        // moto wraps it in <Errors>.
        let wrapped = err
            .replace("<Error>", "<Errors><Error>")
            .replace("</Error>", "</Error></Errors>");
        let a: Answer = quick_xml::de::from_str(&wrapped).unwrap();
        assert_eq!(
            a.errors.unwrap().error.code.as_deref(),
            Some("SignatureDoesNotMatch")
        );
    }

    #[test]
    fn a_code_sent_to_a_device_is_not_sent_to_it_again() {
        let mut sent = Sent::default();
        assert!(sent.take("mfa/a", "123456", 1000, 30));
        assert!(!sent.take("mfa/a", "123456", 1010, 30));
        assert!(sent.take("mfa/b", "123456", 1010, 30), "another device");
        assert!(sent.take("mfa/a", "654321", 1031, 30), "the next code");
        assert!(sent.take("mfa/a", "123456", 1100, 30), "long after");
    }

    #[tokio::test]
    async fn an_mfa_command_repeating_itself_is_asked_again_then_refused() {
        let t = Duration::from_secs(5);
        let serial = "arn:aws:iam::1:mfa/repeating";
        assert_eq!(
            command_code(serial, "echo 111111", t, 1).await.unwrap(),
            "111111"
        );
        // The same code again: asked at the next steps, then refused.
        let e = command_code(serial, "echo 111111", t, 1).await.unwrap_err();
        assert!(e.contains("already sent") && e.contains(serial), "{e}");
        // A command that moves on is taken at its next code.
        let file = tempfile::NamedTempFile::new().unwrap();
        let script = format!(
            "f={}; if [ -s $f ]; then echo 222222; else echo x > $f; echo 111111; fi",
            file.path().display()
        );
        assert_eq!(command_code(serial, &script, t, 1).await.unwrap(), "222222");
    }

    #[test]
    fn forms_and_names() {
        let plan = Plan {
            access_key_id: "AKIA".into(),
            secret_access_key: SecretValue::from("s"),
            session_token: None,
            role_arn: Some("arn:aws:iam::123456789012:role/dev".into()),
            session_name: session_name("team/dev"),
            mfa: None,
            duration: Duration::from_secs(3600),
            endpoint: GLOBAL_ENDPOINT.into(),
            region: "us-east-1".into(),
        };
        let with_mfa = Plan {
            mfa: Some(("arn:aws:iam::1:mfa/me".into(), Mfa::Command("true".into()))),
            role_arn: None,
            session_name: String::new(),
            access_key_id: String::new(),
            secret_access_key: SecretValue::from("s"),
            session_token: None,
            duration: Duration::from_secs(900),
            endpoint: String::new(),
            region: String::new(),
        };
        assert_eq!(
            body(&with_mfa, Some("123456")),
            "Action=GetSessionToken&DurationSeconds=900&SerialNumber=arn%3Aaws%3Aiam%3A%3A1%3Amfa%2Fme&TokenCode=123456&Version=2011-06-15"
        );
        let t = Duration::from_secs(5);
        assert_eq!(mfa_code("echo 012345", t).unwrap(), "012345");
        assert!(mfa_code("echo 12345", t).unwrap_err().contains("6-digit"));
        assert!(
            mfa_code("exit 2", t)
                .unwrap_err()
                .starts_with("mfa_command: ")
        );
        assert_eq!(
            body(&plan, None),
            "Action=AssumeRole&DurationSeconds=3600&RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fdev&RoleSessionName=vault-team-dev&Version=2011-06-15"
        );
        assert!(!format!("{plan:?}").contains("secret_access_key"));
        assert_eq!(
            amz_date(Timestamp::parse("2015-08-30T12:36:00Z").unwrap()),
            "20150830T123600Z"
        );
    }
}
