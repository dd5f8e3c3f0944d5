//! The `external_account` file of a workload identity issuer (`vault emit
//! gcloud --external-account`, docs/gcp.md): the credential's `json` with
//! an executable source that runs this machine's `vault`. The daemon's
//! signing side is `remote::wif`.

use vault_protocol::credential::{GCP_STS_TOKEN_URL as STS_TOKEN_URL, ISSUER_KEY};

use super::{Engine, GCP_IAM_ENDPOINT};

/// How long google-auth waits for the executable (its default; the daemon
/// may have to start first).
const EXECUTABLE_TIMEOUT_MS: u64 = 30_000;

/// What `vault emit gcloud --external-account` writes for issuer credential
/// `name`: its `json` with an executable `credential_source` that runs this
/// machine's `program`. The endpoints the file sends our subject tokens to
/// must be Google's or listed in this machine's config (`[gcp] token_uris`,
/// `[gcp] iam_endpoint`): a record that came by sync does not choose them.
pub(super) fn external_account_file(
    engine: &Engine,
    name: &str,
    json: Option<&str>,
    has_key: bool,
    program: &str,
) -> Result<Vec<u8>, String> {
    if !has_key {
        return Err(format!(
            "'{name}' is not an issuer credential (no {ISSUER_KEY}): --external-account writes \
             the file of one made by 'vault gcp issuer'; without it, 'vault emit gcloud {name} \
             --adc' writes the key file itself"
        ));
    }
    let mut doc: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(json.unwrap_or_default())
            .map_err(|_| format!("the json of '{name}' is not a JSON object"))?;
    let config = engine.config();
    let token_url = doc
        .get("token_url")
        .and_then(|u| u.as_str())
        .unwrap_or_default();
    if token_url != STS_TOKEN_URL && !config.gcp_token_uris.iter().any(|u| u == token_url) {
        return Err(format!(
            "the json of '{name}' sends subject tokens to {token_url}, which is not Google's \
             STS: list it in config.toml ([gcp] token_uris) on this machine to use it"
        ));
    }
    if let Some(url) = doc
        .get("service_account_impersonation_url")
        .and_then(|u| u.as_str())
    {
        let iam = config
            .gcp_iam_endpoint
            .as_deref()
            .unwrap_or(GCP_IAM_ENDPOINT);
        if !url.starts_with(&format!("{}/", iam.trim_end_matches('/'))) {
            return Err(format!(
                "the json of '{name}' impersonates through {url}, not {iam}: set [gcp] \
                 iam_endpoint in config.toml on this machine to use another"
            ));
        }
    }
    let command = format!(
        "{} gcp subject-token {}",
        shell_word(program),
        shell_word(name)
    );
    doc.insert(
        "credential_source".into(),
        serde_json::json!({"executable": {"command": command, "timeout_millis": EXECUTABLE_TIMEOUT_MS}}),
    );
    let mut out = serde_json::to_vec_pretty(&doc).map_err(|e| e.to_string())?;
    out.push(b'\n');
    Ok(out)
}

/// `word` as one word for a POSIX shell split (google-auth splits the
/// command with `shlex.split`): as is when plain, else single-quoted.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./@%+=:,-".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_words_survive_a_shell_split() {
        assert_eq!(shell_word("/usr/bin/vault"), "/usr/bin/vault");
        assert_eq!(shell_word("/opt/my tools/vault"), "'/opt/my tools/vault'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }
}
