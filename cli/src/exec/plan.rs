//! What `vault exec` gives the child (docs/user-guide.md and docs/exec.md), as a pure function of
//! the resolved records: variables to set, variables to remove, and files to
//! write into the child's private folder. No I/O here, so every type's
//! mapping is unit-tested.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::json;
use vault_protocol::credential::{CHECK_COMMAND, REFRESH_COMMAND, is_env_name};
use vault_protocol::message::RecordView;
use vault_protocol::{CredentialType, SecretValue};
use zeroize::Zeroizing;

/// Stale AWS variables removed before AWS credentials are set (docs/exec.md):
/// any of them could make an SDK prefer another identity.
pub const AWS_STALE: [&str; 8] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CREDENTIAL_FILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_PROFILE",
    "AWS_SDK_LOAD_CONFIG",
];

/// A value to give the child, and where it came from.
#[derive(Debug)]
pub struct EnvValue {
    /// The value; wiped on drop.
    pub value: SecretValue,
    /// The credential that set it, or `None` for `--env`.
    pub from: Option<String>,
}

/// A file for the child, relative to its private folder.
#[derive(Debug)]
pub struct FileSpec {
    /// The file's name inside the folder (may hold one subfolder).
    pub rel: String,
    /// Its content; wiped on drop.
    pub content: Zeroizing<Vec<u8>>,
    /// Unix mode (owner bits only).
    pub mode: u32,
}

/// Everything the child gets.
#[derive(Debug, Default)]
pub struct Plan {
    /// Variables to set.
    pub set: BTreeMap<String, EnvValue>,
    /// Variables to remove from the inherited environment.
    pub unset: Vec<&'static str>,
    /// Files to write before the child starts.
    pub files: Vec<FileSpec>,
}

/// Builds the plan for `records`, whose files will live in `dir`, then
/// applies `--env` overrides, which always win. Two credentials setting one
/// variable is an error naming both, unless `--env` settles it.
pub fn build(
    records: &[RecordView],
    overrides: &[(String, String)],
    prefixes: &BTreeMap<String, String>,
    dir: &str,
) -> Result<Plan, String> {
    let mut plan = Plan::default();
    let mut conflicts = Vec::new();
    for record in records {
        for (key, value) in env_of(record, &mut plan, prefixes, dir)? {
            match plan.set.get(&key) {
                Some(prev) if prev.from.as_deref() != Some(&record.name) => {
                    conflicts.push((
                        key.clone(),
                        prev.from.clone().unwrap_or_default(),
                        record.name.clone(),
                    ));
                }
                _ => {}
            }
            plan.set.insert(
                key,
                EnvValue {
                    value,
                    from: Some(record.name.clone()),
                },
            );
        }
    }
    for (key, value) in overrides {
        if !is_env_name(key) {
            return Err(format!(
                "--env {key}=…: '{key}' is not a valid environment variable name"
            ));
        }
        plan.set.insert(
            key.clone(),
            EnvValue {
                value: SecretValue::from(value.as_str()),
                from: None,
            },
        );
    }
    conflicts.retain(|(key, _, _)| !overrides.iter().any(|(k, _)| k == key));
    if let Some((key, a, b)) = conflicts.first() {
        return Err(format!(
            "'{a}' and '{b}' both set {key}: drop one -c, or choose with --env {key}=VALUE"
        ));
    }
    plan.unset.sort_unstable();
    plan.unset.dedup();
    Ok(plan)
}

type Vars = Vec<(String, SecretValue)>;

fn field<'a>(record: &'a RecordView, name: &str) -> Option<&'a SecretValue> {
    record.fields.get(name).filter(|v| !v.is_empty())
}

fn required<'a>(record: &'a RecordView, name: &str) -> Result<&'a SecretValue, String> {
    field(record, name).ok_or_else(|| {
        format!(
            "'{}' has no {name}: add it with 'vault set {} {name}=-'",
            record.name, record.name
        )
    })
}

fn var(key: &str, value: &SecretValue) -> (String, SecretValue) {
    (key.to_owned(), value.duplicate())
}

fn text(key: &str, value: &str) -> (String, SecretValue) {
    (key.to_owned(), SecretValue::from(value))
}

/// `aws-dev` → `AWS_DEV`, `team/db.prod` → `TEAM_DB_PROD`: a name as the
/// prefix of an environment variable.
pub fn env_prefix(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// A file name for this record: its name with `/` and other odd characters
/// made safe, so two records never share a file.
fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn in_dir(dir: &str, rel: &str) -> String {
    format!("{dir}/{rel}")
}

/// What `vault exec` reads from a GCP key besides the key itself (parsed
/// into this so the private key is never copied).
#[derive(serde::Deserialize)]
struct GcpKeyInfo {
    #[serde(rename = "type")]
    kind: Option<String>,
    project_id: Option<String>,
    quota_project_id: Option<String>,
    client_email: Option<String>,
    /// An external_account file's account to act as (an issuer's).
    service_account_impersonation_url: Option<String>,
}

fn gcp_key_info(record: &RecordView) -> Result<GcpKeyInfo, String> {
    let json = required(record, "json")?;
    let info: GcpKeyInfo = serde_json::from_str(json.expose_secret()).map_err(|_| {
        format!(
            "'{}' holds a json field that is not a JSON object: replace it with \
             'vault set {} json=@key.json'",
            record.name, record.name
        )
    })?;
    if info.kind.is_none() {
        return Err(format!(
            "'{}' holds JSON without a \"type\": use a service-account key or ADC file",
            record.name
        ));
    }
    Ok(info)
}

/// The project a `gcp` credential's child works in: the record's
/// `project`, else the key's.
fn gcp_project(record: &RecordView, info: &GcpKeyInfo) -> Option<String> {
    field(record, "project")
        .map(|p| p.expose_secret().to_owned())
        .or_else(|| info.project_id.clone())
        .or_else(|| info.quota_project_id.clone())
}

/// The key file `exec` writes for a `gcp` credential, in the folder.
pub fn gcp_key_file(name: &str) -> String {
    format!("gcp-{}.json", file_stem(name))
}

/// The account a `gcp` credential's tokens are for (`impersonate`, else
/// the key's `client_email`) and its project, for `--server`'s metadata
/// endpoint. Only a service-account key has an account.
pub fn gcp_identity(record: &RecordView) -> Result<(String, Option<String>), String> {
    let info = gcp_key_info(record)?;
    let acts_as = field(record, vault_protocol::credential::IMPERSONATE)
        .map(|v| v.expose_secret().to_owned())
        .filter(|v| !v.is_empty());
    let from_file = info
        .service_account_impersonation_url
        .as_deref()
        .and_then(vault_protocol::credential::impersonated_account);
    let email = match (acts_as.or(from_file), info.kind.as_deref()) {
        (Some(account), _) => account,
        (None, Some("service_account")) => info
            .client_email
            .clone()
            .ok_or_else(|| format!("'{}' holds a key without a client_email", record.name))?,
        (None, kind) => {
            return Err(format!(
                "--server serves a service account's tokens, and '{}' holds a {} file with \
                 none: set 'impersonate' to the account to act as, or run without --server \
                 to give the child the file",
                record.name,
                kind.unwrap_or_default()
            ));
        }
    };
    Ok((email, gcp_project(record, &info)))
}

fn aws_vars(
    vars: &mut Vars,
    plan: &mut Plan,
    key_id: &SecretValue,
    secret_key: &SecretValue,
    token: Option<&SecretValue>,
    region: Option<&SecretValue>,
) {
    plan.unset.extend(AWS_STALE);
    vars.push(var("AWS_ACCESS_KEY_ID", key_id));
    vars.push(var("AWS_SECRET_ACCESS_KEY", secret_key));
    if let Some(token) = token {
        vars.push(var("AWS_SESSION_TOKEN", token));
    }
    if let Some(region) = region {
        vars.push(var("AWS_REGION", region));
        vars.push(var("AWS_DEFAULT_REGION", region));
    }
}

fn env_of(
    record: &RecordView,
    plan: &mut Plan,
    prefixes: &BTreeMap<String, String>,
    dir: &str,
) -> Result<Vars, String> {
    let mut vars = Vars::new();
    match record.kind {
        CredentialType::Generic => generic_env(record, &mut vars)?,
        CredentialType::Aws => aws_env(record, &mut vars, plan)?,
        CredentialType::Data => data_vars(record, &mut vars, plan)?,
        CredentialType::Registry => registry_env(record, &mut vars, plan, dir)?,
        CredentialType::Gcp => gcp_env(record, &mut vars, plan, dir)?,
        CredentialType::Password => password_env(record, &mut vars, prefixes)?,
        CredentialType::Ssh => ssh_env(record, &mut vars, plan, dir)?,
        CredentialType::File => file_env(record, &mut vars, plan, dir)?,
        CredentialType::Token => token_env(record, &mut vars)?,
    }
    Ok(vars)
}

/// Every key but `refresh_command` and `check_command`, as itself; a key
/// that is no variable name stops exec.
fn generic_env(record: &RecordView, vars: &mut Vars) -> Result<(), String> {
    for (key, value) in &record.fields {
        if key == REFRESH_COMMAND || key == CHECK_COMMAND {
            continue;
        }
        if !is_env_name(key) {
            // Keys a platform takes (`other.key`) need not be
            // variable names; exec never sets half a credential.
            return Err(format!(
                "'{}' has the key '{key}', which cannot be an environment variable (use \
                 letters, digits and _, not starting with a digit): exec does not start \
                 the command; read it with 'vault get {} --field {key}', or rename the key",
                record.name, record.name
            ));
        }
        vars.push(var(key, value));
    }
    Ok(())
}

/// The AWS SDKs' variables, and the session's expiry.
fn aws_env(record: &RecordView, vars: &mut Vars, plan: &mut Plan) -> Result<(), String> {
    aws_vars(
        vars,
        plan,
        required(record, "access_key_id")?,
        required(record, "secret_access_key")?,
        field(record, "session_token"),
        field(record, "region"),
    );
    if let Some(t) = record.expires_at {
        vars.push(text("AWS_CREDENTIAL_EXPIRATION", &t.to_rfc3339()));
    }
    Ok(())
}

/// A docker `config.json` with the login, and `DOCKER_CONFIG` pointing at it.
fn registry_env(
    record: &RecordView,
    vars: &mut Vars,
    plan: &mut Plan,
    dir: &str,
) -> Result<(), String> {
    let stem = file_stem(&record.name);
    let registry = required(record, "registry")?.expose_secret();
    let username = required(record, "username")?.expose_secret();
    let auth = required(record, "auth")?.expose_secret();
    let pair = Zeroizing::new(format!("{username}:{auth}"));
    let encoded = Zeroizing::new(BASE64.encode(pair.as_bytes()));
    // Built by hand so the secret is only ever in wiped buffers;
    // base64 needs no JSON escaping.
    let config = Zeroizing::new(format!(
        r#"{{"auths":{{{}:{{"auth":"{}"}}}}}}"#,
        json!(registry),
        encoded.as_str()
    ));
    plan.files.push(FileSpec {
        rel: format!("docker-{stem}/config.json"),
        content: Zeroizing::new(config.as_bytes().to_vec()),
        mode: 0o600,
    });
    vars.push(text(
        "DOCKER_CONFIG",
        &in_dir(dir, &format!("docker-{stem}")),
    ));
    Ok(())
}

/// The key file, the variables google-auth and gcloud read, and the project.
fn gcp_env(record: &RecordView, vars: &mut Vars, plan: &mut Plan, dir: &str) -> Result<(), String> {
    let json = required(record, "json")?;
    let info = gcp_key_info(record)?;
    let rel = gcp_key_file(&record.name);
    plan.files.push(FileSpec {
        rel: rel.clone(),
        content: Zeroizing::new(json.expose_secret().as_bytes().to_vec()),
        mode: 0o600,
    });
    let path = in_dir(dir, &rel);
    vars.push(text(GOOGLE_APPLICATION_CREDENTIALS, &path));
    vars.push(text(CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE, &path));
    if let Some(project) = gcp_project(record, &info) {
        vars.push(text("GOOGLE_CLOUD_PROJECT", &project));
        vars.push(text("CLOUDSDK_CORE_PROJECT", &project));
    }
    Ok(())
}

/// Where google-auth finds a credential file.
pub const GOOGLE_APPLICATION_CREDENTIALS: &str = "GOOGLE_APPLICATION_CREDENTIALS";
/// Where gcloud finds one.
pub const CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE: &str = "CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE";

/// `PREFIX_USERNAME` and `PREFIX_PASSWORD`.
fn password_env(
    record: &RecordView,
    vars: &mut Vars,
    prefixes: &BTreeMap<String, String>,
) -> Result<(), String> {
    let prefix = prefixes
        .get(&record.name)
        .cloned()
        .unwrap_or_else(|| env_prefix(&record.name));
    vars.push(var(
        &format!("{prefix}_USERNAME"),
        required(record, "username")?,
    ));
    vars.push(var(
        &format!("{prefix}_PASSWORD"),
        required(record, "password")?,
    ));
    Ok(())
}

/// The key (and known_hosts) as files, and `GIT_SSH_COMMAND` using them.
fn ssh_env(record: &RecordView, vars: &mut Vars, plan: &mut Plan, dir: &str) -> Result<(), String> {
    let stem = file_stem(&record.name);
    let key = required(record, "private_key")?;
    let mut content = key.expose_secret().as_bytes().to_vec();
    // OpenSSH refuses a key file without its final newline.
    if !content.ends_with(b"\n") {
        content.push(b'\n');
    }
    let rel = format!("ssh-{stem}");
    plan.files.push(FileSpec {
        rel: rel.clone(),
        content: Zeroizing::new(content),
        mode: 0o600,
    });
    let mut command = format!(
        "ssh -i {} -o IdentitiesOnly=yes",
        shell_quote(&in_dir(dir, &rel))
    );
    if let Some(known) = field(record, "known_hosts") {
        let rel = format!("ssh-{stem}.known_hosts");
        plan.files.push(FileSpec {
            rel: rel.clone(),
            content: Zeroizing::new(known.expose_secret().as_bytes().to_vec()),
            mode: 0o600,
        });
        command.push_str(&format!(
            " -o UserKnownHostsFile={}",
            shell_quote(&in_dir(dir, &rel))
        ));
    }
    vars.push(text("GIT_SSH_COMMAND", &command));
    Ok(())
}

/// The file under its own base name, and its `env` variable if it has one.
fn file_env(
    record: &RecordView,
    vars: &mut Vars,
    plan: &mut Plan,
    dir: &str,
) -> Result<(), String> {
    let stem = file_stem(&record.name);
    let content = required(record, "content")?;
    let path = required(record, "path")?.expose_secret();
    let base = std::path::Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .ok_or_else(|| {
            format!(
                "'{}' has path '{path}', which names no file: set path to a file name",
                record.name
            )
        })?;
    let mode = match field(record, "mode") {
        Some(m) => vault_protocol::credential::parse_mode(m.expose_secret())?,
        None => 0o600,
    };
    let rel = format!("file-{stem}/{base}");
    plan.files.push(FileSpec {
        rel: rel.clone(),
        content: Zeroizing::new(content.expose_secret().as_bytes().to_vec()),
        // Never more than the owner may have.
        mode: mode & 0o700,
    });
    if let Some(env) = field(record, "env") {
        let env = env.expose_secret();
        check_env_field(record, env)?;
        vars.push(text(env, &in_dir(dir, &rel)));
    }
    Ok(())
}

/// The token as `env`, or `NAME_TOKEN`.
fn token_env(record: &RecordView, vars: &mut Vars) -> Result<(), String> {
    let env = match field(record, "env") {
        Some(env) => env.expose_secret().to_owned(),
        None => format!("{}_TOKEN", env_prefix(&record.name)),
    };
    check_env_field(record, &env)?;
    vars.push(var(&env, required(record, "token")?));
    Ok(())
}

/// A record's `env` (token, file) must name a variable the child can have.
fn check_env_field(record: &RecordView, env: &str) -> Result<(), String> {
    if is_env_name(env) {
        return Ok(());
    }
    Err(format!(
        "'{}' has env '{env}', which is not a valid environment variable name",
        record.name
    ))
}

/// DATA credentials (docs/user-guide.md): S3 and TOS as AWS_* (plus the endpoint where
/// it is not AWS), GCS through its S3-compatible API with HMAC keys, Azure
/// as a connection string.
fn data_vars(record: &RecordView, vars: &mut Vars, plan: &mut Plan) -> Result<(), String> {
    let endpoint = required(record, "endpoint")?.expose_secret();
    let key_id = required(record, "access_key_id")?;
    let key = required(record, "access_key")?;
    let region = field(record, "region");
    let override_url = field(record, "override_url").map(|v| v.expose_secret().to_owned());
    let scheme = endpoint
        .split_once("://")
        .map(|(s, _)| s)
        .unwrap_or_default();
    match scheme {
        "s3" => {
            aws_vars(vars, plan, key_id, key, None, region);
            if let Some(url) = override_url {
                vars.push(text("AWS_ENDPOINT_URL", &url));
            }
        }
        "tos" => {
            aws_vars(vars, plan, key_id, key, None, region);
            let url = match (override_url, region) {
                (Some(url), _) => url,
                (None, Some(region)) => {
                    format!("https://tos-s3-{}.volces.com", region.expose_secret())
                }
                (None, None) => {
                    return Err(format!(
                        "'{}' is a tos:// endpoint without region or override_url: add one with 'vault set {} region=cn-beijing'",
                        record.name, record.name
                    ));
                }
            };
            vars.push(text("AWS_ENDPOINT_URL", &url));
        }
        "gs" => {
            aws_vars(vars, plan, key_id, key, None, region);
            let url = override_url.unwrap_or_else(|| "https://storage.googleapis.com".to_owned());
            vars.push(text("AWS_ENDPOINT_URL", &url));
        }
        "azure" => {
            let account = key_id.expose_secret();
            let endpoint_part = match override_url {
                Some(url) => format!("BlobEndpoint={url}"),
                None => "EndpointSuffix=core.windows.net".to_owned(),
            };
            let conn = Zeroizing::new(format!(
                "DefaultEndpointsProtocol=https;AccountName={account};AccountKey={};{endpoint_part}",
                key.expose_secret()
            ));
            vars.push(text("AZURE_STORAGE_CONNECTION_STRING", &conn));
            vars.push(var("AZURE_STORAGE_ACCOUNT", key_id));
        }
        _ => {
            return Err(format!(
                "'{}' has endpoint '{endpoint}': exec supports s3://, gs://, azure:// and tos://",
                record.name
            ));
        }
    }
    Ok(())
}

/// Single-quotes `s` for a POSIX shell (GIT_SSH_COMMAND is run by one).
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vault_protocol::timefmt::Timestamp;

    fn record(name: &str, kind: CredentialType, fields: &[(&str, &str)]) -> RecordView {
        RecordView {
            name: name.to_owned(),
            kind,
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), SecretValue::from(*v)))
                .collect(),
            description: None,
            tags: vec![],
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
            expires_at: None,
            expired: false,
            revision: 1,
        }
    }

    fn value(plan: &Plan, key: &str) -> String {
        plan.set[key].value.expose_secret().to_owned()
    }

    #[test]
    fn prefixes_are_env_names() {
        assert_eq!(env_prefix("aws-dev"), "AWS_DEV");
        assert_eq!(env_prefix("team/db.prod"), "TEAM_DB_PROD");
        assert_eq!(env_prefix("9lives"), "_9LIVES");
        assert!(is_env_name(&env_prefix("me@corp")));
    }

    #[test]
    fn azure_gets_a_connection_string_and_tos_an_endpoint() {
        let azure = record(
            "blob",
            CredentialType::Data,
            &[
                ("endpoint", "azure://acct/container"),
                ("access_key_id", "acct"),
                ("access_key", "s3cr3t"),
            ],
        );
        let plan = build(&[azure], &[], &BTreeMap::new(), "/d").unwrap();
        assert_eq!(
            value(&plan, "AZURE_STORAGE_CONNECTION_STRING"),
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=s3cr3t;EndpointSuffix=core.windows.net"
        );
        assert_eq!(value(&plan, "AZURE_STORAGE_ACCOUNT"), "acct");
        assert!(plan.unset.is_empty(), "azure leaves AWS variables alone");

        let tos = record(
            "tos",
            CredentialType::Data,
            &[
                ("endpoint", "tos://bucket"),
                ("access_key_id", "id"),
                ("access_key", "k"),
                ("region", "cn-beijing"),
            ],
        );
        let plan = build(&[tos], &[], &BTreeMap::new(), "/d").unwrap();
        assert_eq!(
            value(&plan, "AWS_ENDPOINT_URL"),
            "https://tos-s3-cn-beijing.volces.com"
        );
        assert_eq!(plan.unset.len(), AWS_STALE.len());

        let swift = record(
            "sw",
            CredentialType::Data,
            &[
                ("endpoint", "swift://x"),
                ("access_key_id", "i"),
                ("access_key", "k"),
            ],
        );
        assert!(
            build(&[swift], &[], &BTreeMap::new(), "/d")
                .unwrap_err()
                .contains("swift://x")
        );
    }

    #[test]
    fn conflicts_name_both_and_env_settles_them() {
        let a = record("one", CredentialType::Generic, &[("KEY", "1")]);
        let b = record("two", CredentialType::Generic, &[("KEY", "2")]);
        let err = build(&[a, b], &[], &BTreeMap::new(), "/d").unwrap_err();
        assert!(err.contains("'one'") && err.contains("'two'") && err.contains("KEY"));
        let a = record("one", CredentialType::Generic, &[("KEY", "1")]);
        let b = record("two", CredentialType::Generic, &[("KEY", "2")]);
        let plan = build(
            &[a, b],
            &[("KEY".into(), "3".into())],
            &BTreeMap::new(),
            "/d",
        )
        .unwrap();
        assert_eq!(value(&plan, "KEY"), "3");
        assert!(build(&[], &[("1BAD".into(), "x".into())], &BTreeMap::new(), "/d").is_err());
    }

    #[test]
    fn ssh_quotes_its_paths_and_files_stay_owner_only() {
        let ssh = record("k", CredentialType::Ssh, &[("private_key", "KEY")]);
        let plan = build(&[ssh], &[], &BTreeMap::new(), "/run/it's").unwrap();
        assert_eq!(
            value(&plan, "GIT_SSH_COMMAND"),
            r"ssh -i '/run/it'\''s/ssh-k' -o IdentitiesOnly=yes"
        );
        assert_eq!(&plan.files[0].content[..], b"KEY\n");
        let file = record(
            "f",
            CredentialType::File,
            &[("content", "c"), ("path", "/etc/x.conf"), ("mode", "0666")],
        );
        let plan = build(&[file], &[], &BTreeMap::new(), "/d").unwrap();
        assert_eq!(plan.files[0].rel, "file-f/x.conf");
        assert_eq!(plan.files[0].mode, 0o600);
    }
}
