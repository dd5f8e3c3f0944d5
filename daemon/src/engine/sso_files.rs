//! The aws CLI's own SSO files, written on request (`vault emit aws NAME
//! --profile P --sso`, docs/sso.md): `[profile P]` naming
//! `[sso-session vault-S]` in `~/.aws/config`, and the session's access
//! token in botocore's token cache, `~/.aws/sso/cache/SHA1(vault-S).json`.
//! S is the record that holds the session (the credential itself, or the
//! SSO session record it shares). Only the access token goes to the cache:
//! not the refresh token nor the client's secret, which would let anyone
//! who reads the file renew the session for months; vaultd renews the
//! token itself and rewrites the file.

use vault_protocol::credential::SSO_SESSION;
use vault_protocol::timefmt::Timestamp;

use crate::record::RecordBody;

/// The scope the vault signs in with (`sso_registration_scopes`).
const SCOPE: &str = "sso:account:access";

/// The `sso-session` the vault writes for the session held by `holder`.
pub fn session_name(holder: &str) -> String {
    format!("vault-{holder}")
}

/// Its section in the config file.
pub fn session_section(holder: &str) -> String {
    format!("sso-session {}", session_name(holder))
}

/// The token cache file of the session held by `holder`: botocore names it
/// by the SHA-1 of the `sso-session` name.
pub fn token_file(cache_dir: &str, holder: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        session_name(holder).as_bytes(),
    );
    format!(
        "{}/{}.json",
        cache_dir.trim_end_matches('/'),
        hex::encode(digest.as_ref())
    )
}

/// The record that holds role credential `body`'s session.
pub fn holder_of(body: &RecordBody) -> String {
    body.fields
        .get(SSO_SESSION)
        .map_or_else(|| body.name.clone(), |s| s.expose_secret().to_owned())
}

fn field<'a>(body: &'a RecordBody, name: &str) -> Option<&'a str> {
    body.fields
        .get(name)
        .map(|v| v.expose_secret())
        .filter(|v| !v.is_empty())
}

/// `[profile P]` of role credential `body`: the `sso-session` it was
/// emitted with (`session`, so a rename changes nothing the aws CLI
/// reads), its account and role, and its region when it has one to write.
pub fn profile_entries(
    body: &RecordBody,
    session: Option<&str>,
    region: Option<String>,
) -> Vec<(String, String)> {
    let session = session.map_or_else(|| session_name(&holder_of(body)), str::to_owned);
    let mut entries = vec![("sso_session".to_owned(), session)];
    for key in ["sso_account_id", "sso_role_name"] {
        if let Some(v) = field(body, key) {
            entries.push((key.to_owned(), v.to_owned()));
        }
    }
    if let Some(r) = region {
        entries.push(("region".to_owned(), r));
    }
    entries
}

/// `[sso-session vault-S]` of the session holder `body`: its portal.
pub fn session_entries(body: &RecordBody) -> Vec<(String, String)> {
    let mut entries = Vec::new();
    for key in ["sso_start_url", "sso_region"] {
        if let Some(v) = field(body, key) {
            entries.push((key.to_owned(), v.to_owned()));
        }
    }
    entries.push(("sso_registration_scopes".to_owned(), SCOPE.to_owned()));
    entries
}

/// The token cache file's content for the session holder `body`: its
/// portal, access token and when that expires; `None` when it has no live
/// one (signed out, or expired: the file goes).
pub fn token_json(body: &RecordBody, now: Timestamp) -> Option<Vec<u8>> {
    let expires = Timestamp::parse(field(body, "sso_token_expires")?).ok()?;
    if expires <= now {
        return None;
    }
    let doc = serde_json::json!({
        "startUrl": field(body, "sso_start_url")?,
        "region": field(body, "sso_region")?,
        "accessToken": field(body, "sso_access_token")?,
        "expiresAt": expires.to_rfc3339(),
    });
    let text = zeroize::Zeroizing::new(doc.to_string());
    Some(text.as_bytes().to_vec())
}

/// Whether the cache file `text` is one the vault writes: the four keys
/// of [`token_json`] and none of what the aws CLI keeps with its own
/// sign-in (`aws sso login --sso-session vault-S`: a refresh token and
/// its client), which the vault never overwrites or takes out.
pub fn token_is_ours(text: &str) -> bool {
    let Ok(serde_json::Value::Object(doc)) = serde_json::from_str::<serde_json::Value>(text) else {
        return false;
    };
    doc.keys()
        .all(|k| ["startUrl", "region", "accessToken", "expiresAt"].contains(&k.as_str()))
}

/// The `sso-session` name a config section of an `aws-sso` binding is
/// about, if it is a session's section.
pub fn session_of_section(section: &str) -> Option<&str> {
    section.strip_prefix("sso-session ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vault_protocol::CredentialType;

    fn body(fields: &[(&str, &str)]) -> RecordBody {
        RecordBody::for_test("corp", CredentialType::Aws, fields)
    }

    #[test]
    fn the_cache_file_is_named_as_botocore_names_it() {
        // botocore: hashlib.sha1("vault-corp".encode("utf-8")).hexdigest()
        assert_eq!(
            token_file("/h/.aws/sso/cache/", "corp"),
            "/h/.aws/sso/cache/08b83bdfca0ae6f6df31c386fdb4c36fef0a8f51.json"
        );
    }

    #[test]
    fn only_the_access_token_goes_to_the_cache_and_only_while_it_lives() {
        let now = Timestamp(1_800_000_000);
        let later = now.plus(std::time::Duration::from_secs(3600)).to_rfc3339();
        let b = body(&[
            ("sso_start_url", "https://d-1.awsapps.com/start"),
            ("sso_region", "eu-west-1"),
            ("sso_access_token", "AT"),
            ("sso_token_expires", &later),
            ("sso_refresh_token", "RT"),
            ("sso_client_secret", "CS"),
        ]);
        let json = String::from_utf8(token_json(&b, now).unwrap()).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(doc["accessToken"], "AT");
        assert_eq!(doc["expiresAt"], later);
        assert!(!json.contains("RT") && !json.contains("CS"), "{json}");
        assert!(token_is_ours(&json));
        // The aws CLI's own file: never the vault's to overwrite or remove.
        assert!(!token_is_ours(r#"{"accessToken":"AT","refreshToken":"x"}"#));
        assert!(!token_is_ours("not json"));
        assert_eq!(
            token_json(&b, now.plus(std::time::Duration::from_secs(3600))),
            None
        );
    }
}
