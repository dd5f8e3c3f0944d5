//! The IAM calls of a key rotation (`vault rotate`, docs/lifecycle.md):
//! list, create, deactivate and delete the calling user's access keys.
//! Each is a query-API form POST signed with a key of that user
//! (remote/sts.rs `call`); no call names a user, so IAM acts on the user
//! whose key signed it. IAM is global: signed for `us-east-1`, at
//! `https://iam.amazonaws.com` unless `config.toml` names another
//! endpoint. Every answer is hostile input: bounded, parsed strictly, and
//! what goes into files (a key id, a secret) is checked first.

use std::time::Duration;

use serde::Deserialize;
use vault_protocol::SecretValue;

use super::http::Http;
use super::sigv4::{self, Keys};

/// IAM's one endpoint (the `aws` partition).
pub use crate::engine::rotate::IAM_ENDPOINT as ENDPOINT;
/// The region IAM signs for.
pub const REGION: &str = "us-east-1";
/// IAM's API version.
const VERSION: &str = "2010-05-08";

/// One of the user's access keys, as `ListAccessKeys` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The access key id.
    pub id: String,
    /// `Active` or `Inactive`.
    pub status: String,
    /// When it was made (RFC 3339), if IAM said.
    pub created: Option<String>,
}

/// A key `CreateAccessKey` just made.
#[derive(Debug)]
pub struct NewKey {
    /// The access key id.
    pub id: String,
    /// Its secret; `Debug` never shows it.
    pub secret: SecretValue,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListAnswer {
    list_access_keys_result: ListResult,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListResult {
    access_key_metadata: Option<Members>,
    is_truncated: Option<bool>,
}

#[derive(Deserialize)]
struct Members {
    #[serde(default)]
    member: Vec<Member>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Member {
    access_key_id: String,
    status: String,
    create_date: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateAnswer {
    create_access_key_result: CreateResult,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateResult {
    access_key: Created,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Created {
    access_key_id: String,
    secret_access_key: SecretValue,
}

/// Whether `id` looks like an access key id: what IAM says goes into
/// `~/.aws/credentials`, so no line break, `=` or `[` gets there.
pub fn valid_key_id(id: &str) -> bool {
    (16..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Whether `secret` can be a secret access key: printable ASCII without
/// spaces, at most 256 bytes.
fn valid_secret(secret: &str) -> bool {
    (1..=256).contains(&secret.len()) && secret.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether `text` is the answer to `action`: its root element is
/// `<ACTIONResponse`, after an optional XML declaration. A 200 with any
/// other body (a proxy's page, another call's answer) is not taken as done.
fn answers(text: &str, action: &str) -> bool {
    let mut rest = text.trim_start();
    if let Some(after) = rest.strip_prefix("<?xml") {
        rest = after.split_once("?>").map_or("", |(_, r)| r).trim_start();
    }
    let Some(tag) = rest.strip_prefix('<') else {
        return false;
    };
    let name: String = tag
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    name == format!("{action}Response")
}

async fn call(
    http: &Http,
    endpoint: &str,
    keys: &Keys<'_>,
    action: &str,
    params: &[(&str, &str)],
    timeout: Duration,
) -> Result<String, String> {
    let mut form = format!("Action={action}");
    for (k, v) in params {
        form.push_str(&format!("&{k}={}", sigv4::form_encode(v)));
    }
    form.push_str(&format!("&Version={VERSION}"));
    let text = super::sts::call(http, "iam", endpoint, REGION, keys, form, action, timeout).await?;
    if !answers(&text, action) {
        return Err(format!("IAM's answer to {action} is not one"));
    }
    Ok(text)
}

/// The signing user's access keys (`ListAccessKeys`).
pub async fn list_keys(
    http: &Http,
    endpoint: &str,
    keys: &Keys<'_>,
    timeout: Duration,
) -> Result<Vec<KeyInfo>, String> {
    let text = call(http, endpoint, keys, "ListAccessKeys", &[], timeout).await?;
    parse_list(&text)
}

fn parse_list(text: &str) -> Result<Vec<KeyInfo>, String> {
    let answer: ListAnswer = quick_xml::de::from_str(text)
        .map_err(|_| "IAM's answer to ListAccessKeys lists no keys".to_owned())?;
    let result = answer.list_access_keys_result;
    if result.is_truncated == Some(true) {
        return Err("IAM's answer to ListAccessKeys is cut short".into());
    }
    let members = result
        .access_key_metadata
        .map(|m| m.member)
        .unwrap_or_default();
    if members.len() > 16 {
        return Err("IAM's answer to ListAccessKeys lists more keys than a user has".into());
    }
    members
        .into_iter()
        .map(|m| {
            if !valid_key_id(&m.access_key_id)
                || !matches!(m.status.as_str(), "Active" | "Inactive")
            {
                return Err("IAM's answer to ListAccessKeys holds a key it cannot be".to_owned());
            }
            Ok(KeyInfo {
                id: m.access_key_id,
                status: m.status,
                created: m
                    .create_date
                    .filter(|d| d.len() <= 40 && d.bytes().all(|b| b.is_ascii_graphic())),
            })
        })
        .collect()
}

/// A new access key for the signing user (`CreateAccessKey`).
pub async fn create_key(
    http: &Http,
    endpoint: &str,
    keys: &Keys<'_>,
    timeout: Duration,
) -> Result<NewKey, String> {
    let text = call(http, endpoint, keys, "CreateAccessKey", &[], timeout).await?;
    parse_created(&text)
}

fn parse_created(text: &str) -> Result<NewKey, String> {
    let answer: CreateAnswer = quick_xml::de::from_str(text)
        .map_err(|_| "IAM's answer to CreateAccessKey holds no key".to_owned())?;
    let key = answer.create_access_key_result.access_key;
    if !valid_key_id(&key.access_key_id) || !valid_secret(key.secret_access_key.expose_secret()) {
        return Err("IAM's answer to CreateAccessKey holds a key that cannot be one".into());
    }
    Ok(NewKey {
        id: key.access_key_id,
        secret: key.secret_access_key,
    })
}

/// Sets the status of key `id` (`UpdateAccessKey`): `Inactive` turns it
/// off (it can be turned on again), `Active` back on.
pub async fn set_status(
    http: &Http,
    endpoint: &str,
    keys: &Keys<'_>,
    id: &str,
    status: &str,
    timeout: Duration,
) -> Result<(), String> {
    let params = [("AccessKeyId", id), ("Status", status)];
    call(http, endpoint, keys, "UpdateAccessKey", &params, timeout)
        .await
        .map(drop)
}

/// Deletes key `id` for good (`DeleteAccessKey`).
pub async fn delete_key(
    http: &Http,
    endpoint: &str,
    keys: &Keys<'_>,
    id: &str,
    timeout: Duration,
) -> Result<(), String> {
    call(
        http,
        endpoint,
        keys,
        "DeleteAccessKey",
        &[("AccessKeyId", id)],
        timeout,
    )
    .await
    .map(drop)
}

/// Whether an IAM refusal says the key is not there (deleted already):
/// its error code, not its message or anything else in the text, is
/// `NoSuchEntity`.
pub fn is_gone(why: &str) -> bool {
    error_code(why) == Some("NoSuchEntity")
}

/// The error code of a refusal as `call` words it: `IAM refused ACTION
/// (STATUS CODE): MESSAGE`.
fn error_code(why: &str) -> Option<&str> {
    let (_, rest) = why.strip_prefix("IAM refused ")?.split_once(" (")?;
    let (inside, _) = rest.split_once("): ")?;
    let (status, code) = inside.split_once(' ')?;
    (status.len() == 3 && status.bytes().all(|b| b.is_ascii_digit())).then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_iam_answers_strictly() {
        let list = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListAccessKeysResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">
  <ListAccessKeysResult>
    <UserName>dev</UserName>
    <AccessKeyMetadata>
      <member><UserName>dev</UserName><AccessKeyId>AKIAIOSFODNN7EXAMPLE</AccessKeyId><Status>Active</Status><CreateDate>2026-12-04T10:00:00Z</CreateDate></member>
      <member><UserName>dev</UserName><AccessKeyId>AKIAI44QH8DHBEXAMPLE</AccessKeyId><Status>Inactive</Status></member>
    </AccessKeyMetadata>
    <IsTruncated>false</IsTruncated>
  </ListAccessKeysResult>
</ListAccessKeysResponse>"#;
        assert!(answers(list, "ListAccessKeys"));
        let keys = parse_list(list).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].status, "Inactive");
        assert_eq!(keys[0].created.as_deref(), Some("2026-12-04T10:00:00Z"));
        let none = "<ListAccessKeysResponse><ListAccessKeysResult><AccessKeyMetadata/>\
                    <IsTruncated>false</IsTruncated></ListAccessKeysResult></ListAccessKeysResponse>";
        assert!(parse_list(none).unwrap().is_empty());
        let hostile = list.replace("AKIAI44QH8DHBEXAMPLE", "AKIA\n[evil]\nx=y");
        assert!(parse_list(&hostile).is_err());

        let created = r#"<CreateAccessKeyResponse><CreateAccessKeyResult><AccessKey>
<UserName>dev</UserName><AccessKeyId>AKIAIOSFODNN7EXAMPLE</AccessKeyId><Status>Active</Status>
<SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY</SecretAccessKey>
</AccessKey></CreateAccessKeyResult></CreateAccessKeyResponse>"#;
        let key = parse_created(created).unwrap();
        assert_eq!(key.id, "AKIAIOSFODNN7EXAMPLE");
        assert!(!format!("{key:?}").contains("wJalr"));
        let bad = created.replace("wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY", "a b\nc");
        assert!(parse_created(&bad).is_err());
        assert!(parse_created("<CreateAccessKeyResponse/>").is_err());

        assert!(answers(
            "<UpdateAccessKeyResponse><ResponseMetadata/></UpdateAccessKeyResponse>",
            "UpdateAccessKey"
        ));
        assert!(!answers("<DeleteAccessKeyResponse/>", "UpdateAccessKey"));
        assert!(!answers("<html>ok</html>", "UpdateAccessKey"));
        assert!(!answers("", "UpdateAccessKey"));
        assert!(is_gone(
            "IAM refused DeleteAccessKey (404 NoSuchEntity): gone"
        ));
        // Only the code counts: not a message, a name or another code.
        for not in [
            "IAM refused DeleteAccessKey (403 AccessDenied): NoSuchEntity",
            "IAM refused DeleteAccessKey (403 AccessDenied): x (404 NoSuchEntity): y",
            "'NoSuchEntity' changed during the rotation",
            "cannot reach IAM at https://NoSuchEntity.example: refused",
            "IAM refused DeleteAccessKey (404 NoSuchEntityX): gone",
        ] {
            assert!(!is_gone(not), "{not}");
        }
    }
}
