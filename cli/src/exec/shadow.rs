//! With `--server`, credentials the child's SDK would find on its own
//! before it asks our endpoint. Their default chains read files first:
//! google-auth (and every Google client library) takes gcloud's ADC file
//! before the metadata server, botocore takes a `[default]` profile's keys
//! (or a `credential_process`, a `role_arn`, an SSO session) before the
//! container endpoint. The child would then run silently as another
//! identity than the `-c` it was given; so such files are hidden from it by
//! pointing the variable that names them at an empty place in its private
//! folder, and a note says so (docs/exec.md). `--env` setting that variable
//! keeps the user's choice, with a warning.

use std::path::{Path, PathBuf};

use super::plan::{EnvValue, Plan};

/// The child's value of `key`: what the plan sets, else the inherited one
/// unless the plan removes it.
fn child_env(plan: &Plan, key: &str) -> Option<String> {
    if let Some(v) = plan.set.get(key) {
        return Some(v.value.expose_secret().to_owned());
    }
    if plan.unset.contains(&key) {
        return None;
    }
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

fn home_path(plan: &Plan, rel: &str) -> Option<PathBuf> {
    child_env(plan, "HOME").map(|h| Path::new(&h).join(rel))
}

fn set(plan: &mut Plan, key: &str, value: &str) {
    plan.set.insert(
        key.to_owned(),
        EnvValue {
            value: value.into(),
            from: None,
        },
    );
}

/// Hides gcloud's ADC file from a child served by the metadata endpoint.
pub fn hide_gcloud_adc(plan: &mut Plan, folder: &Path, overrides: &[(String, String)]) {
    let config = child_env(plan, "CLOUDSDK_CONFIG")
        .map(PathBuf::from)
        .or_else(|| home_path(plan, ".config/gcloud"));
    let Some(adc) = config.map(|c| c.join("application_default_credentials.json")) else {
        return;
    };
    if !adc.is_file() {
        return;
    }
    if overrides.iter().any(|(k, _)| k == "CLOUDSDK_CONFIG") {
        eprintln!(
            "vault: warning: google-auth in the child will use {} before the metadata endpoint (--env CLOUDSDK_CONFIG keeps it)",
            adc.display()
        );
        return;
    }
    let empty = folder.join("gcloud");
    set(plan, "CLOUDSDK_CONFIG", &empty.to_string_lossy());
    eprintln!(
        "vault: note: {} would win over the metadata endpoint in google-auth; the child gets an empty CLOUDSDK_CONFIG (gcloud in it has no configuration; --env CLOUDSDK_CONFIG=DIR to keep one)",
        adc.display()
    );
}

/// The keys that make botocore take a profile's credentials before the
/// container endpoint.
const AWS_CREDENTIAL_KEYS: [&str; 7] = [
    "aws_access_key_id",
    "credential_process",
    "role_arn",
    "sso_session",
    "sso_start_url",
    "web_identity_token_file",
    "login_session",
];

/// Variables that select a credential source ahead of the container
/// endpoint (web identity), removed from a served child.
pub const AWS_AHEAD_OF_ENDPOINT: [&str; 3] = [
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
];

/// Hides the shared files' `default` profile from a child served by the
/// container endpoint, when it holds credentials of its own; the config
/// file's region is kept as `AWS_REGION`.
pub fn hide_default_aws_profile(plan: &mut Plan, folder: &Path, overrides: &[(String, String)]) {
    let files = [
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            ".aws/credentials",
            &["default"][..],
        ),
        (
            "AWS_CONFIG_FILE",
            ".aws/config",
            &["default", "profile default"][..],
        ),
    ];
    for (var, rel, sections) in files {
        let Some(path) = child_env(plan, var)
            .map(PathBuf::from)
            .or_else(|| home_path(plan, rel))
        else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let keys = section_keys(&text, sections);
        if !keys
            .iter()
            .any(|(k, _)| AWS_CREDENTIAL_KEYS.contains(&k.as_str()))
        {
            continue;
        }
        if overrides.iter().any(|(k, _)| k == var) {
            eprintln!(
                "vault: warning: the AWS SDK in the child will use the default profile of {} before the endpoint (--env {var} keeps it)",
                path.display()
            );
            continue;
        }
        if var == "AWS_CONFIG_FILE"
            && child_env(plan, "AWS_REGION").is_none()
            && child_env(plan, "AWS_DEFAULT_REGION").is_none()
            && let Some((_, region)) = keys.iter().find(|(k, _)| k == "region")
        {
            set(plan, "AWS_REGION", region);
            set(plan, "AWS_DEFAULT_REGION", region);
        }
        let empty = folder.join(if var == "AWS_CONFIG_FILE" {
            "aws-config"
        } else {
            "aws-credentials"
        });
        set(plan, var, &empty.to_string_lossy());
        eprintln!(
            "vault: note: the default profile of {} would win over the endpoint in the AWS SDKs; the child gets an empty {var}",
            path.display()
        );
    }
}

/// Hides a boto2 config with keys (`BOTO_CONFIG`, else `/etc/boto.cfg`
/// and `~/.boto`, `[Credentials] aws_access_key_id`), which botocore also
/// reads before the container endpoint.
pub fn hide_boto_config(plan: &mut Plan, folder: &Path, overrides: &[(String, String)]) {
    let files: Vec<PathBuf> = match child_env(plan, "BOTO_CONFIG") {
        Some(p) => vec![PathBuf::from(p)],
        None => std::iter::once(PathBuf::from("/etc/boto.cfg"))
            .chain(home_path(plan, ".boto"))
            .collect(),
    };
    let Some(found) = files.into_iter().find(|f| {
        std::fs::read_to_string(f).is_ok_and(|text| {
            section_keys(&text, &["Credentials"])
                .iter()
                .any(|(k, _)| k == "aws_access_key_id")
        })
    }) else {
        return;
    };
    if overrides.iter().any(|(k, _)| k == "BOTO_CONFIG") {
        eprintln!(
            "vault: warning: botocore in the child will use the keys of {} before the endpoint (--env BOTO_CONFIG keeps it)",
            found.display()
        );
        return;
    }
    set(
        plan,
        "BOTO_CONFIG",
        &folder.join("boto.cfg").to_string_lossy(),
    );
    eprintln!(
        "vault: note: the keys of {} would win over the endpoint in botocore; the child gets an empty BOTO_CONFIG",
        found.display()
    );
}

/// The `key = value` pairs of the INI sections named `sections` (keys
/// lowercased; a value's secret is never kept past the caller's check).
fn section_keys(text: &str, sections: &[&str]) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = sections.contains(&name.trim());
            continue;
        }
        if !inside || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let key = k.trim().to_ascii_lowercase();
            // Only the region's value is used; other values are not kept.
            let value = if key == "region" { v.trim() } else { "" };
            out.push((key, value.to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_sections_keys_are_found_and_no_secret_is_kept() {
        let text = "[profile dev]\nrole_arn = x\n[default]\nregion = eu-west-1\n\
                    aws_secret_access_key = SECRET\n; aws_access_key_id = no\n[other]\nsso_session = s\n";
        let keys = section_keys(text, &["default", "profile default"]);
        assert_eq!(
            keys,
            [
                ("region".to_owned(), "eu-west-1".to_owned()),
                ("aws_secret_access_key".to_owned(), String::new()),
            ]
        );
        let keys = section_keys(
            "[ profile default ]\nCredential_Process = x\n",
            &["profile default"],
        );
        assert_eq!(keys[0].0, "credential_process");
    }
}
