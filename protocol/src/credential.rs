//! The credential model (docs/user-guide.md): types, their fields, and the validation
//! both the CLI (for early usage errors) and the daemon (authoritatively) run.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::SecretValue;

/// The kind of a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialType {
    /// Arbitrary key/values, injected as env vars.
    Generic,
    /// AWS access keys, possibly a temporary STS session.
    Aws,
    /// Object-storage keys (S3, GCS HMAC, Azure Blob, TOS).
    Data,
    /// A container-registry login.
    Registry,
    /// A GCP service-account key or ADC JSON.
    Gcp,
    /// A username and password.
    Password,
    /// An SSH private key.
    Ssh,
    /// A file written to a path.
    File,
    /// A bearer/API token.
    Token,
}

/// One field of a credential type.
#[derive(Debug, Clone, Copy)]
pub struct FieldSpec {
    /// Field name as typed on the command line.
    pub name: &'static str,
    /// Must be present.
    pub required: bool,
    /// Holds a secret: never echoed, warned about when given in argv.
    pub secret: bool,
}

const fn req(name: &'static str, secret: bool) -> FieldSpec {
    FieldSpec {
        name,
        required: true,
        secret,
    }
}

const fn opt(name: &'static str, secret: bool) -> FieldSpec {
    FieldSpec {
        name,
        required: false,
        secret,
    }
}

/// The field naming a command whose stdout (credential_process JSON) gives
/// the record's new values (docs/refresh.md; docs/refresh.md). Any type may have
/// it; it is never injected or emitted, and while it is set the type's
/// required fields may be missing (the first refresh fills them).
pub const REFRESH_COMMAND: &str = "refresh_command";

/// The `generic` key naming a command `vault check` runs (sh -c) with the
/// record's other keys in its environment: exit 0 means the credential
/// works (docs/lifecycle.md). Never injected, published or emitted.
pub const CHECK_COMMAND: &str = "check_command";

/// The `aws` field naming the long-term `aws` record whose keys mint this
/// record's STS sessions (with `role_arn`: AssumeRole; without:
/// GetSessionToken). Like a refresh command, it makes the keys optional.
pub const SOURCE: &str = "source";

/// An `ssh` credential's field that makes the SSH agent ask before each
/// signature with its key (`yes` or `no`).
pub const SSH_CONFIRM: &str = "confirm";

/// A yes/no field's value: `yes`, `true`, `on` or `1` (any case) are yes.
pub fn is_yes(value: &str) -> bool {
    ["yes", "true", "on", "1"]
        .iter()
        .any(|y| value.trim().eq_ignore_ascii_case(y))
}

/// Whether `value` is a yes or a no ([`is_yes`]).
fn is_yes_or_no(value: &str) -> bool {
    is_yes(value)
        || ["no", "false", "off", "0"]
            .iter()
            .any(|n| value.trim().eq_ignore_ascii_case(n))
}

/// The required fields of `ty` not `present`, in the type's order; none
/// when the record is `refreshed` ([`refreshes_itself`]: the first refresh
/// fills them).
pub fn missing_required(
    ty: CredentialType,
    refreshed: bool,
    present: impl Fn(&str) -> bool,
) -> Vec<&'static str> {
    if refreshed {
        return Vec::new();
    }
    ty.fields()
        .iter()
        .filter(|s| s.required && !present(s.name))
        .map(|s| s.name)
        .collect()
}

/// Whether a record with these field names gets its values from a refresh
/// (a `refresh_command`, an STS session minted from a `source`, or IAM
/// Identity Center's role credentials): its required fields may then be
/// missing until the first refresh. An SSO session record
/// ([`is_sso_session`]) holds no keys either.
pub fn refreshes_itself(has_field: impl Fn(&str) -> bool) -> bool {
    has_field(REFRESH_COMMAND)
        || has_field(SOURCE)
        || has_field(SSO_START_URL)
        || has_field(SSO_SESSION)
}

/// An `aws` record that is an SSO session only (an `sso-session`, as the
/// aws CLI calls it): a start URL and region, signed in with `vault sso
/// login`, and no role of its own. Role credentials name it in
/// [`SSO_SESSION`] and share its sign-in; it is never minted itself.
pub fn is_sso_session(has_field: impl Fn(&str) -> bool) -> bool {
    has_field(SSO_START_URL) && !has_field("sso_account_id")
}

/// An `aws` credential minted through AWS IAM Identity Center (SSO): the
/// portal's start URL (docs/sso.md). With it, `sso_region`,
/// `sso_account_id` and `sso_role_name` say which role; `vault sso login`
/// writes the session (`sso_client_*`, `sso_access_token`,
/// `sso_token_expires`, `sso_refresh_token`).
pub const SSO_START_URL: &str = "sso_start_url";

/// An SSO role credential that shares the sign-in of an SSO session
/// record (docs/sso.md): that record's name, instead of a start URL of its
/// own.
pub const SSO_SESSION: &str = "sso_session";

/// The fields of an SSO credential that `vault sso login` and the daemon
/// write: the registered client and the session's tokens.
pub const SSO_SESSION_FIELDS: [&str; 6] = [
    "sso_client_id",
    "sso_client_secret",
    "sso_client_expires",
    "sso_access_token",
    "sso_token_expires",
    "sso_refresh_token",
];

/// An SSO credential's fields. Three shapes: a role with its own session
/// (start URL, region, account, role), a session only (start URL and
/// region, no role: [`is_sso_session`]), or a role sharing a session
/// record (`sso_session=NAME`, account, role, and none of the session's
/// fields). None of them has a `source` or a `refresh_command`, which
/// would mint it too.
fn check_sso<'a>(get: &impl Fn(&str) -> Option<&'a str>) -> Result<(), String> {
    let role_fields = ["sso_account_id", "sso_role_name"];
    let session_fields = || {
        ["sso_region"]
            .iter()
            .chain(SSO_SESSION_FIELDS.iter())
            .copied()
    };
    let url = get(SSO_START_URL);
    let shared = get(SSO_SESSION);
    if url.is_none() && shared.is_none() {
        if role_fields
            .iter()
            .copied()
            .chain(session_fields())
            .any(|f| get(f).is_some())
        {
            return Err(format!(
                "the sso_ fields belong to an SSO credential: add {SSO_START_URL}=https://…/start, \
                 or {SSO_SESSION}=NAME of an SSO session"
            ));
        }
        return Ok(());
    }
    if get(SOURCE).is_some() || get(REFRESH_COMMAND).is_some() || get("role_arn").is_some() {
        return Err(format!(
            "an SSO credential is minted through IAM Identity Center: drop {SOURCE}, \
             {REFRESH_COMMAND} and role_arn (to assume a role from it, add another aws \
             credential with {SOURCE}=THIS and role_arn)"
        ));
    }
    if let Some(session) = shared {
        if url.is_some() || session_fields().any(|f| get(f).is_some()) {
            return Err(format!(
                "a credential with {SSO_SESSION} signs in through that session: drop \
                 {SSO_START_URL}, sso_region and the session's tokens from it"
            ));
        }
        validate_name(session).map_err(|e| format!("{SSO_SESSION}: {e}"))?;
        return check_sso_role(get, true);
    }
    let url = url.unwrap_or_default();
    if !url.starts_with("https://") || url.len() <= 8 || url.contains(char::is_whitespace) {
        return Err(format!(
            "{SSO_START_URL} '{}' is not an https:// URL (the AWS access portal's, as \
             https://my-org.awsapps.com/start)",
            url.escape_debug()
        ));
    }
    let region = get("sso_region").unwrap_or_default();
    let region_ok = (1..=32).contains(&region.len())
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !region_ok {
        return Err(format!(
            "an SSO credential needs sso_region, the region of its IAM Identity Center (as \
             us-east-1), not '{}'",
            region.escape_debug()
        ));
    }
    check_sso_role(get, role_fields.iter().any(|f| get(f).is_some()))
}

/// The role of an SSO credential, when it has one (`needed`): a 12-digit
/// account and a role name. Without one it is a session only, and has no
/// keys.
fn check_sso_role<'a>(get: &impl Fn(&str) -> Option<&'a str>, needed: bool) -> Result<(), String> {
    if !needed {
        return match ["access_key_id", "secret_access_key", "session_token"]
            .iter()
            .find(|f| get(f).is_some())
        {
            Some(f) => Err(format!(
                "an SSO session without sso_account_id and sso_role_name holds no keys: drop \
                 {f}, or name the role"
            )),
            None => Ok(()),
        };
    }
    let account = get("sso_account_id").unwrap_or_default();
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "an SSO credential needs sso_account_id, a 12-digit AWS account id, not '{}'",
            account.escape_debug()
        ));
    }
    let role = get("sso_role_name").unwrap_or_default();
    let role_ok = (1..=64).contains(&role.len())
        && role
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c));
    if !role_ok {
        return Err(format!(
            "an SSO credential needs sso_role_name, its permission set's role (1-64 of A-Z a-z \
             0-9 _ + = , . @ -), not '{}'",
            role.escape_debug()
        ));
    }
    Ok(())
}

/// Environment variables that make a program load or run other code, or
/// read its settings from a file: a credential that puts one into a
/// child's environment decides what that child runs. Exact names, then
/// prefixes. Not a complete list of every program's variables; it covers
/// the loaders, shells, interpreters and tools a credential's child
/// usually is (docs/sync.md, "Approvals").
const CODE_ENV: [&str; 40] = [
    "PATH",
    "BASH_ENV",
    "ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "PROMPT_COMMAND",
    "IFS",
    "CDPATH",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "PYTHONHOME",
    "PYTHONUSERBASE",
    "PYTHONINSPECT",
    "PERL5OPT",
    "PERL5LIB",
    "PERLLIB",
    "RUBYOPT",
    "RUBYLIB",
    "NODE_OPTIONS",
    "NODE_PATH",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "CLASSPATH",
    "EDITOR",
    "VISUAL",
    "PAGER",
    "MANPAGER",
    "BROWSER",
    "LESSOPEN",
    "LESSCLOSE",
    "SSH_ASKPASS",
    "SUDO_ASKPASS",
    "HOME",
    "XDG_CONFIG_HOME",
    "KUBECONFIG",
    "DOCKER_CONFIG",
    "AWS_CONFIG_FILE",
    "CLOUDSDK_CONFIG",
];

/// Prefixes of [`CODE_ENV`]: the dynamic loaders' variables, bash's
/// exported functions, and git's (`GIT_SSH_COMMAND`, `GIT_CONFIG_*`,
/// `GIT_EXEC_PATH`…).
const CODE_ENV_PREFIXES: [&str; 4] = ["LD_", "DYLD_", "BASH_FUNC_", "GIT_"];

/// Whether setting environment variable `name` in a child can make it run
/// other code (see `CODE_ENV`).
pub fn is_code_env(name: &str) -> bool {
    CODE_ENV.contains(&name) || CODE_ENV_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The fields of a record that make this machine run a program, write a
/// file where they say, or talk to an endpoint they name; or that put a
/// variable into a child's environment that does ([`is_code_env`]). Such
/// a field is used only with its exact value approved on this device
/// (docs/sync.md; `vault approve`). Returns the field names, in order.
pub fn gated_fields<'a, V>(
    kind: CredentialType,
    fields: &'a BTreeMap<String, V>,
    value: impl Fn(&'a V) -> &'a str,
) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(name, v)| match (kind, name.as_str()) {
            (_, REFRESH_COMMAND) => true,
            (CredentialType::Aws, "mfa_command" | "sts_endpoint") => true,
            (CredentialType::File, "path") => true,
            (CredentialType::File | CredentialType::Token, "env") => is_code_env(value(v)),
            (CredentialType::Generic, CHECK_COMMAND) => true,
            (CredentialType::Generic, n) => is_code_env(n),
            _ => false,
        })
        .map(|(name, _)| name.as_str())
        .collect()
}

/// The fields only `vault check` sends a credential to (docs/lifecycle.md):
/// a token's `url`, a registry's host, a data record's `override_url`.
/// `exec` never uses them, so they do not hold up a hand-out; the check
/// uses one only with its value approved on this device, like
/// [`gated_fields`].
pub fn check_gated_fields<V>(kind: CredentialType, fields: &BTreeMap<String, V>) -> Vec<&str> {
    fields
        .keys()
        .filter(|name| {
            matches!(
                (kind, name.as_str()),
                (CredentialType::Token, "url")
                    | (CredentialType::Registry, "registry")
                    | (CredentialType::Data, "override_url")
            )
        })
        .map(String::as_str)
        .collect()
}

/// What a gated field ([`gated_fields`]) makes this machine do, for the
/// approval prompt.
pub fn gated_meaning(kind: CredentialType, field: &str) -> &'static str {
    match (kind, field) {
        (_, REFRESH_COMMAND) => "runs this command (sh -c) to refresh the values",
        (_, "mfa_command") => "runs this command (sh -c) for an MFA code",
        (CredentialType::Generic, CHECK_COMMAND) => {
            "vault check runs this command (sh -c) with the values in its environment"
        }
        (_, "sts_endpoint") => "sends the source's signed STS requests to this endpoint",
        (CredentialType::File, "path") => "vault emit file writes the file here",
        (CredentialType::Token, "url") => "vault check sends the token to this URL",
        (CredentialType::Registry, "registry") => "vault check sends the login to this registry",
        (CredentialType::Data, "override_url") => {
            "vault check sends requests signed with the keys to this endpoint"
        }
        (_, "env") => {
            "vault exec puts the value in this variable, which can make the child run code"
        }
        _ => "vault exec sets this variable, which can make the child run code",
    }
}

/// The `aws` fields that only mean something with a `source`.
const STS_ONLY: [&str; 5] = [
    "duration",
    "sts_endpoint",
    "session_name",
    "mfa_command",
    "mfa_otp",
];

/// Checks an STS endpoint: HTTPS anywhere, plain HTTP only on loopback
/// (tests and local emulators).
pub fn check_sts_endpoint(url: &str) -> Result<(), String> {
    check_endpoint_url("sts_endpoint", url)
}

/// Checks a URL the vault sends a credential to (the `field` named in
/// the message): HTTPS anywhere, plain HTTP only on loopback; a host, and
/// no user name before it (`https://aws.example@evil.example/` goes to
/// evil.example).
pub fn check_endpoint_url(field: &str, url: &str) -> Result<(), String> {
    let refuse = |why: &str| Err(format!("{field} '{}' {why}", url.escape_debug()));
    let (rest, https) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => (rest, true),
        (None, Some(rest)) => (rest, false),
        (None, None) => {
            return refuse(
                "must be an https:// URL (plain http:// only on 127.0.0.1 or localhost)",
            );
        }
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return refuse("has no host");
    }
    if authority.contains('@') {
        // Not shown: what precedes the '@' may be a password.
        return Err(format!(
            "{field} must not carry a user name or password ('@' before the host)"
        ));
    }
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    let loopback = matches!(host, "localhost" | "[::1]")
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback());
    if https || loopback {
        Ok(())
    } else {
        refuse("must be an https:// URL (plain http:// only on 127.0.0.1 or localhost)")
    }
}

#[cfg(test)]
mod endpoint_tests {
    use super::check_endpoint_url as check;

    #[test]
    fn https_anywhere_http_on_loopback_only() {
        for ok in [
            "https://sts.amazonaws.com",
            "https://sts.example:8443/path?q=1",
            "http://127.0.0.1:5000",
            "http://127.8.0.1/x",
            "http://localhost:1/",
            "http://[::1]:8080/token",
            "https://x.example/p@q",
            "https://x.example?a=b@c",
            "https://x.example#f@g",
        ] {
            assert_eq!(check("url", ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("http://sts.example", "https://"),
            ("http://localhost.evil.example/", "https://"),
            ("ftp://127.0.0.1/", "https://"),
            ("sts.example", "https://"),
            ("https://", "no host"),
            ("https:///path", "no host"),
            ("http://", "no host"),
            ("https://sts.amazonaws.com@evil.example/", "user name"),
            ("http://localhost:1@evil.example/", "user name"),
            ("https://u:p@sts.example", "user name"),
        ] {
            let e = check("sts_endpoint", bad).unwrap_err();
            assert!(e.starts_with("sts_endpoint "), "{e}");
            assert!(e.contains(why), "{bad}: {e}");
        }
        let e = check("url", "https://me:hunter2@x.example/").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }
}

impl CredentialType {
    /// Every type, in the order docs/user-guide.md lists them.
    pub const ALL: [CredentialType; 9] = [
        CredentialType::Generic,
        CredentialType::Aws,
        CredentialType::Data,
        CredentialType::Registry,
        CredentialType::Gcp,
        CredentialType::Password,
        CredentialType::Ssh,
        CredentialType::File,
        CredentialType::Token,
    ];

    /// Lower-case name, as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialType::Generic => "generic",
            CredentialType::Aws => "aws",
            CredentialType::Data => "data",
            CredentialType::Registry => "registry",
            CredentialType::Gcp => "gcp",
            CredentialType::Password => "password",
            CredentialType::Ssh => "ssh",
            CredentialType::File => "file",
            CredentialType::Token => "token",
        }
    }

    /// The fixed fields of this type. `generic` has none: any valid env name
    /// is a field, and every value is secret.
    pub fn fields(self) -> &'static [FieldSpec] {
        match self {
            CredentialType::Generic => const { &[] },
            CredentialType::Aws => {
                const {
                    &[
                        req("access_key_id", false),
                        req("secret_access_key", true),
                        opt("session_token", true),
                        opt("region", false),
                        opt("role_arn", false),
                        opt("mfa_serial", false),
                        opt(SOURCE, false),
                        opt("duration", false),
                        opt("sts_endpoint", false),
                        opt("session_name", false),
                        opt("mfa_command", false),
                        opt("mfa_otp", false),
                        opt(REFRESH_COMMAND, false),
                        opt(crate::otp::FIELD, true),
                        opt(SSO_START_URL, false),
                        opt(SSO_SESSION, false),
                        opt("sso_region", false),
                        opt("sso_account_id", false),
                        opt("sso_role_name", false),
                        opt("sso_client_id", false),
                        opt("sso_client_secret", true),
                        opt("sso_client_expires", false),
                        opt("sso_access_token", true),
                        opt("sso_token_expires", false),
                        opt("sso_refresh_token", true),
                    ]
                }
            }
            CredentialType::Data => {
                const {
                    &[
                        req("endpoint", false),
                        req("access_key_id", false),
                        req("access_key", true),
                        opt("region", false),
                        opt("override_url", false),
                        opt("addressing_style", false),
                        opt(REFRESH_COMMAND, false),
                        opt(crate::otp::FIELD, true),
                    ]
                }
            }
            CredentialType::Registry => {
                const {
                    &[
                        req("registry", false),
                        req("username", false),
                        req("auth", true),
                        opt(REFRESH_COMMAND, false),
                        opt(crate::otp::FIELD, true),
                    ]
                }
            }
            CredentialType::Gcp => {
                const {
                    &[
                        req("json", true),
                        opt("project", false),
                        opt(IMPERSONATE, false),
                        opt(ISSUER, false),
                        opt(ISSUER_KEY, true),
                        opt(REFRESH_COMMAND, false),
                        opt(crate::otp::FIELD, true),
                    ]
                }
            }
            CredentialType::Password => {
                const {
                    &[
                        req("username", false),
                        req("password", true),
                        opt("url", false),
                        opt(REFRESH_COMMAND, false),
                        opt(crate::otp::FIELD, true),
                    ]
                }
            }
            CredentialType::Ssh => {
                const {
                    &[
                        req("private_key", true),
                        opt("public_key", false),
                        opt("known_hosts", false),
                        opt(SSH_CONFIRM, false),
                        opt(REFRESH_COMMAND, false),
                        opt(crate::otp::FIELD, true),
                    ]
                }
            }
            CredentialType::File => {
                const {
                    &[
                        req("content", true),
                        req("path", false),
                        opt("mode", false),
                        opt("env", false),
                        opt(REFRESH_COMMAND, false),
                        opt(crate::otp::FIELD, true),
                    ]
                }
            }
            CredentialType::Token => {
                const {
                    &[
                        req("token", true),
                        opt("url", false),
                        opt("env", false),
                        opt(REFRESH_COMMAND, false),
                        opt(crate::otp::FIELD, true),
                    ]
                }
            }
        }
    }

    /// Whether `field` of this type holds a secret.
    pub fn is_secret(self, field: &str) -> bool {
        match self {
            CredentialType::Generic => true,
            _ => self.fields().iter().any(|f| f.name == field && f.secret),
        }
    }
}

impl fmt::Display for CredentialType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CredentialType {
    type Err = String;

    /// Accepts the lower-case names and, for people coming from workload
    /// platforms, their upper-case spelling (`REGISTRY`, `DATA`, `GENERIC`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        CredentialType::ALL
            .into_iter()
            .find(|t| t.as_str() == lower)
            .ok_or_else(|| {
                let names: Vec<_> = CredentialType::ALL.iter().map(|t| t.as_str()).collect();
                format!(
                    "unknown credential type '{s}': use one of {}",
                    names.join(", ")
                )
            })
    }
}

/// Checks a record name: 1–128 chars of `[A-Za-z0-9._@/-]`, starting
/// alphanumeric.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok_len = (1..=128).contains(&name.len());
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '/' | '-'));
    if ok_len && ok_first && ok_chars {
        Ok(())
    } else {
        Err(format!(
            "invalid name '{}': use 1-128 characters of A-Z a-z 0-9 . _ @ / -, starting with a letter or digit",
            name.escape_debug()
        ))
    }
}

/// Checks a tag: 1–64 chars of `[A-Za-z0-9._:=/-]`.
pub fn validate_tag(tag: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&tag.len())
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '=' | '/' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid tag '{}': use 1-64 characters of A-Z a-z 0-9 . _ : = / -",
            tag.escape_debug()
        ))
    }
}

/// Whether `s` is a valid environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether `s` is a key a generic credential may hold: what workload
/// platforms accept, since OSMO turns GENERIC keys into Kubernetes secret
/// keys: 1-253 characters of `A-Z a-z 0-9 - . _`. Keys that are not
/// environment variable names (`other.key`) are stored; `vault exec` says
/// it cannot set them.
pub fn is_generic_key(s: &str) -> bool {
    (1..=253).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// Longest description accepted.
pub const MAX_DESCRIPTION: usize = 1024;

/// Largest single field value accepted (fits comfortably in a frame).
pub const MAX_FIELD_VALUE: usize = 256 * 1024;

/// Validates the fields of a credential of type `ty`. Reports every missing
/// required field at once. The message never includes a secret value.
pub fn validate_fields(
    ty: CredentialType,
    fields: &BTreeMap<String, SecretValue>,
) -> Result<(), String> {
    if let Some((name, _)) = fields
        .iter()
        .find(|(_, v)| v.expose_secret().len() > MAX_FIELD_VALUE)
    {
        return Err(format!(
            "field '{name}' is larger than {MAX_FIELD_VALUE} bytes"
        ));
    }
    if ty == CredentialType::Generic {
        return check_generic(fields);
    }
    let get = |k: &str| fields.get(k).map(|v| v.expose_secret());
    // Before the required keys: an SSO credential half given is told what
    // it lacks, not that it has no keys.
    if ty == CredentialType::Aws {
        check_sso(&get)?;
    }
    check_known_fields(ty, fields)?;
    if let Some(seed) = get(crate::otp::FIELD) {
        crate::otp::Otp::parse(seed)?;
    }
    match ty {
        CredentialType::Aws => check_aws(fields, &get),
        CredentialType::Data => check_data(&get),
        CredentialType::Gcp => check_gcp(&get),
        CredentialType::File => {
            if get("path").unwrap_or_default().contains('\0') {
                return Err("field 'path' contains a NUL byte".into());
            }
            if let Some(mode) = get("mode") {
                parse_mode(mode)?;
            }
            check_env(&get)
        }
        CredentialType::Token => check_env(&get),
        CredentialType::Ssh => match get(SSH_CONFIRM) {
            Some(v) if !is_yes_or_no(v) => Err(format!(
                "field '{SSH_CONFIRM}' must be yes or no, not '{}'",
                v.escape_debug()
            )),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

/// A generic credential: any keys a workload platform takes, at least one.
fn check_generic(fields: &BTreeMap<String, SecretValue>) -> Result<(), String> {
    if fields.is_empty() {
        return Err("a generic credential needs at least one KEY=VALUE".into());
    }
    if let Some(bad) = fields.keys().find(|k| !is_generic_key(k)) {
        return Err(format!(
            "'{}' is not a valid key: use 1-253 characters of A-Z a-z 0-9 - . _ (workload \
             platforms turn keys into Kubernetes secret keys)",
            bad.escape_debug()
        ));
    }
    Ok(())
}

/// Every field is one of the type's, `refresh_command` is not blank, and
/// every required field is there (unless a refresh or STS mints them).
fn check_known_fields(
    ty: CredentialType,
    fields: &BTreeMap<String, SecretValue>,
) -> Result<(), String> {
    let specs = ty.fields();
    if let Some(unknown) = fields
        .keys()
        .find(|k| !specs.iter().any(|s| s.name == k.as_str()))
    {
        let known: Vec<_> = specs.iter().map(|s| s.name).collect();
        return Err(format!(
            "unknown field '{}' for type {ty}: its fields are {}",
            unknown.escape_debug(),
            known.join(", ")
        ));
    }
    if let Some(cmd) = fields.get(REFRESH_COMMAND)
        && cmd.expose_secret().trim().is_empty()
    {
        return Err(format!(
            "{REFRESH_COMMAND} is empty: give the command that prints credential_process JSON"
        ));
    }
    let missing = missing_required(ty, refreshes_itself(|f| fields.contains_key(f)), |f| {
        fields.get(f).is_some_and(|v| !v.is_empty())
    });
    if !missing.is_empty() {
        return Err(format!(
            "missing required field{} for type {ty}: {}",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", ")
        ));
    }
    Ok(())
}

/// Longest EKS cluster name taken (EKS allows 100).
pub const MAX_EKS_CLUSTER: usize = 100;

/// Whether `name` can be an EKS cluster name: letters, digits, `-` and
/// `_`, starting with a letter or digit, at most 100.
pub fn is_eks_cluster(name: &str) -> bool {
    (1..=MAX_EKS_CLUSTER).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether an `aws` credential's `region` can go into an AWS config file:
/// a letter or digit, then up to 63 letters, digits, `.`, `_` or `-`. Only
/// what the file format needs (one token, no spaces, brackets, `=`, `:`,
/// `#`, `;` or newlines), not AWS's own names: S3-compatible services use
/// others (`auto` for Cloudflare R2, `us-west-004` for Backblaze, `nyc3`
/// for DigitalOcean, `fr-par` for Scaleway). Records arrive by sync from
/// other devices, so the daemon checks it before writing one.
pub fn is_config_region(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=64).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// An aws credential: a source for STS or a refresh command, never both,
/// and the STS settings only with a source, each in range.
fn check_aws<'a>(
    fields: &BTreeMap<String, SecretValue>,
    get: &impl Fn(&str) -> Option<&'a str>,
) -> Result<(), String> {
    if fields.contains_key(SOURCE) && fields.contains_key(REFRESH_COMMAND) {
        return Err(format!(
            "give either {SOURCE} (STS mints the session) or {REFRESH_COMMAND}, not both"
        ));
    }
    if let Some(source) = get(SOURCE) {
        validate_name(source).map_err(|e| format!("{SOURCE}: {e}"))?;
    } else if let Some(f) = STS_ONLY.iter().find(|f| fields.contains_key(**f)) {
        return Err(format!(
            "{f} only applies to a session minted from a source: add {SOURCE}=NAME"
        ));
    }
    let code_from = [get("mfa_command"), get("mfa_otp")]
        .iter()
        .flatten()
        .count();
    if get(SOURCE).is_some() && get("mfa_serial").is_some() != (code_from > 0) {
        return Err(
            "a session minted with mfa_serial needs where its code comes from: mfa_otp=NAME, \
             a record whose otp field holds the device's seed, or mfa_command, a command that \
             prints the current 6-digit code (e.g. ykman oath accounts code -s aws); and \
             either needs mfa_serial"
                .into(),
        );
    }
    if code_from > 1 {
        return Err("give either mfa_otp or mfa_command, not both".into());
    }
    if let Some(name) = get("mfa_otp") {
        validate_name(name).map_err(|e| format!("mfa_otp: {e}"))?;
    }
    if let Some(d) = get("duration") {
        let secs = crate::timefmt::parse_duration(d)?.as_secs();
        if !(900..=43_200).contains(&secs) {
            return Err(format!(
                "duration '{d}' is outside what STS grants: use 15m to 12h"
            ));
        }
    }
    if let Some(url) = get("sts_endpoint") {
        check_sts_endpoint(url)?;
    }
    if let Some(name) = get("session_name") {
        let ok = (2..=64).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c));
        if !ok {
            return Err(format!(
                "session_name '{name}' must be 2-64 characters of A-Z a-z 0-9 _ + = , . @ -"
            ));
        }
    }
    Ok(())
}

/// A data credential: an endpoint of a scheme the platforms take.
fn check_data<'a>(get: &impl Fn(&str) -> Option<&'a str>) -> Result<(), String> {
    let endpoint = get("endpoint").unwrap_or_default();
    let schemes = ["s3://", "gs://", "azure://", "tos://", "swift://"];
    if !schemes.iter().any(|s| endpoint.starts_with(s)) {
        return Err(format!(
            "endpoint '{endpoint}' must start with s3://, gs://, azure://, tos:// or swift://"
        ));
    }
    if let Some(style) = get("addressing_style")
        && !matches!(style, "virtual" | "path" | "auto")
    {
        return Err("addressing_style must be virtual, path or auto".into());
    }
    Ok(())
}

/// A gcp credential: JSON of a kind google-auth loads.
/// A `gcp` credential's service account to act as (IAM Credentials
/// `generateAccessToken`, docs/gcp.md).
pub const IMPERSONATE: &str = "impersonate";

/// A `gcp` issuer credential's `iss` claim: the issuer URL a workload
/// identity pool's OIDC provider trusts (docs/gcp.md).
pub const ISSUER: &str = "issuer";

/// A `gcp` issuer credential's signing key: a P-256 key, PKCS#8 DER in
/// standard base64, that signs its subject tokens (ES256).
pub const ISSUER_KEY: &str = "issuer_key";

/// The subject token type of an issuer's tokens, in its external_account file.
pub const GCP_SUBJECT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// Google's STS, where client libraries exchange subject tokens (RFC 8693).
pub const GCP_STS_TOKEN_URL: &str = "https://sts.googleapis.com/v1/token";

/// The service account an `external_account` file's
/// `service_account_impersonation_url` acts as
/// (`…/serviceAccounts/EMAIL:generateAccessToken`).
pub fn impersonated_account(url: &str) -> Option<String> {
    url.rsplit('/')
        .next()?
        .strip_suffix(":generateAccessToken")
        .filter(|e| is_service_account(e))
        .map(str::to_owned)
}

/// The `kid` of an issuer's ES256 key, from its public point (SEC1
/// uncompressed, 65 bytes): the first 8 bytes of `x` in hex. Stable for
/// the key, the same in the JWKS the user uploads and in every token.
pub fn es256_kid(public_point: &[u8]) -> String {
    public_point
        .get(1..9)
        .unwrap_or_default()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `email` can be a service account's: `NAME@DOMAIN`, at most 254
/// of letters, digits, `.`, `_`, `-` (it goes into a URL path).
pub fn is_service_account(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    let word = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    email.len() <= 254 && word(local) && word(domain) && domain.contains('.')
}

fn check_gcp<'a>(get: &impl Fn(&str) -> Option<&'a str>) -> Result<(), String> {
    if let Some(who) = get(IMPERSONATE).filter(|w| !is_service_account(w)) {
        return Err(format!(
            "field '{IMPERSONATE}' is not a service account's email ('{}'): give one like \
             deploy@PROJECT.iam.gserviceaccount.com",
            who.escape_debug()
        ));
    }
    let json = get("json").unwrap_or_default();
    let doc: serde_json::Value = serde_json::from_str(json).map_err(|_| {
        "field 'json' is not valid JSON: pass the key file with json=@key.json".to_owned()
    })?;
    let kind = doc.get("type").and_then(|t| t.as_str()).unwrap_or("");
    let known = [
        "service_account",
        "authorized_user",
        "external_account",
        "impersonated_service_account",
    ];
    if !known.contains(&kind) {
        return Err(format!(
            "field 'json' has \"type\": \"{kind}\"; expected one of {}",
            known.join(", ")
        ));
    }
    if get(ISSUER_KEY).is_some() || get(ISSUER).is_some() {
        if kind != "external_account" {
            return Err(format!(
                "fields '{ISSUER}' and '{ISSUER_KEY}' belong to an issuer credential, whose json \
                 is an external_account file: make one with 'vault gcp issuer NAME --audience AUD'"
            ));
        }
        match get(ISSUER) {
            Some(url)
                if url.starts_with("https://")
                    && url.len() > 8
                    && !url.contains(char::is_whitespace) => {}
            _ => {
                return Err(format!(
                    "an issuer credential needs '{ISSUER}', an https:// URL without spaces \
                     (the issuer its workload identity provider trusts)"
                ));
            }
        }
        if get(ISSUER_KEY).is_none() {
            return Err(format!(
                "an issuer credential needs '{ISSUER_KEY}': make one with 'vault gcp issuer'"
            ));
        }
        if doc
            .get("audience")
            .and_then(|a| a.as_str())
            .is_none_or(str::is_empty)
        {
            return Err(
                "the json of an issuer credential names no \"audience\" (its workload identity \
                 provider: //iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/providers/R)"
                    .into(),
            );
        }
    }
    Ok(())
}

/// An `env` field (token, file) names a valid environment variable.
fn check_env<'a>(get: &impl Fn(&str) -> Option<&'a str>) -> Result<(), String> {
    match get("env") {
        Some(env) if !is_env_name(env) => Err(format!(
            "env '{env}' is not a valid environment variable name"
        )),
        _ => Ok(()),
    }
}

/// Parses an octal file mode such as `0600` or `600`; group/other bits are
/// allowed (the user asked), but not setuid/setgid/sticky.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("mode '{s}' is not an octal file mode like 0600"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_accounts() {
        for ok in [
            "deploy@proj.iam.gserviceaccount.com",
            "a-b_c.d@x.y",
            "123456789-compute@developer.gserviceaccount.com",
        ] {
            assert!(is_service_account(ok), "{ok}");
        }
        for bad in [
            "",
            "deploy",
            "@x.y",
            "a@",
            "a@localhost",
            "a b@x.y",
            "a@x.y/../z",
            "a@x.y:gen",
        ] {
            assert!(!is_service_account(bad), "{bad}");
        }
    }

    fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, SecretValue> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), SecretValue::from(*v)))
            .collect()
    }

    #[test]
    fn sso_credentials_come_in_three_shapes() {
        let aws = CredentialType::Aws;
        let url = ("sso_start_url", "https://d-1.awsapps.com/start");
        let region = ("sso_region", "eu-west-1");
        let account = ("sso_account_id", "111122223333");
        let role = ("sso_role_name", "Admin");
        // A role with its own session, a session only, a role sharing one.
        for ok in [
            vec![url, region, account, role],
            vec![url, region],
            vec![("sso_session", "corp"), account, role],
        ] {
            validate_fields(aws, &fields(&ok)).unwrap();
        }
        let session = fields(&[url, region]);
        assert!(is_sso_session(|f| session.contains_key(f)));
        let own = fields(&[url, region, account, role]);
        assert!(!is_sso_session(|f| own.contains_key(f)));
        let shared = fields(&[("sso_session", "corp"), account, role]);
        assert!(refreshes_itself(|f| shared.contains_key(f)));
        for (bad, says) in [
            // A role half named.
            (vec![url, region, account], "sso_role_name"),
            (vec![("sso_session", "corp"), role], "sso_account_id"),
            // A sharing role carries none of the session's own fields.
            (vec![("sso_session", "corp"), url, account, role], "drop"),
            (
                vec![
                    ("sso_session", "corp"),
                    ("sso_refresh_token", "r"),
                    account,
                    role,
                ],
                "drop",
            ),
            (vec![("sso_session", "-x y"), account, role], "sso_session"),
            // A session holds no keys.
            (vec![url, region, ("access_key_id", "AKIA")], "no keys"),
            // Nor is it minted twice.
            (
                vec![("sso_session", "corp"), ("source", "x"), account, role],
                "drop source",
            ),
            (vec![account, role], "sso_session=NAME"),
        ] {
            let e = validate_fields(aws, &fields(&bad)).expect_err(&format!("{bad:?}"));
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_config_region_is_one_token_of_the_file_format_not_an_aws_name() {
        for ok in [
            "eu-west-1",
            "us-gov-west-1",
            "eusc-de-east-1",
            "auto",
            "us-west-004",
            "nyc3",
            "fr-par",
            "garage",
            "local_1.a",
            &"a".repeat(64),
        ] {
            assert!(is_config_region(ok), "{ok}");
        }
        for bad in [
            "",
            "-west-1",
            ".x",
            "eu west 1",
            "eu-west-1\n[evil]",
            "eu-west-1 ",
            " eu-west-1",
            "eu-wést-1",
            "a=b",
            "a:b",
            "a#b",
            "a;b",
            "[x]",
            &"a".repeat(65),
        ] {
            assert!(!is_config_region(bad), "{bad:?}");
        }
    }

    #[test]
    fn gated_fields_are_those_that_run_write_or_reach_out() {
        let gated = |kind, pairs: &[(&str, &str)]| {
            let f = fields(pairs);
            gated_fields(kind, &f, |v: &SecretValue| v.expose_secret())
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let aws = [
            ("access_key_id", "AK"),
            ("mfa_command", "ykman oath code"),
            ("mfa_serial", "arn"),
            ("region", "eu-west-1"),
            ("sts_endpoint", "https://sts.example"),
        ];
        assert_eq!(
            gated(CredentialType::Aws, &aws),
            ["mfa_command", "sts_endpoint"]
        );
        assert_eq!(
            gated(CredentialType::File, &[("content", "c"), ("path", "~/.x")]),
            ["path"]
        );
        // vault check runs a generic record's check_command.
        assert_eq!(
            gated(
                CredentialType::Generic,
                &[("API_KEY", "k"), (CHECK_COMMAND, "curl …")]
            ),
            [CHECK_COMMAND]
        );
        // A token's variable only when it can make the child run code.
        let token = |env| gated(CredentialType::Token, &[("env", env), ("token", "t")]);
        assert!(token("GITHUB_TOKEN").is_empty());
        assert_eq!(token("LD_PRELOAD"), ["env"]);
        assert_eq!(token("BASH_ENV"), ["env"]);
        // Generic keys are variable names.
        assert_eq!(
            gated(
                CredentialType::Generic,
                &[
                    ("GIT_SSH_COMMAND", "sh x"),
                    ("OPENAI_API_KEY", "k"),
                    ("PATH", "/tmp")
                ]
            ),
            ["GIT_SSH_COMMAND", "PATH"]
        );
        // Any type's refresh command; a path is only a file's.
        assert_eq!(
            gated(
                CredentialType::Ssh,
                &[("private_key", "k"), (REFRESH_COMMAND, "x")]
            ),
            [REFRESH_COMMAND]
        );
        assert!(
            gated(
                CredentialType::Password,
                &[("url", "https://x"), ("username", "u")]
            )
            .is_empty()
        );
    }

    #[test]
    fn names() {
        for good in [
            "a",
            "aws-dev",
            "team/prod.db",
            "me@corp",
            "9lives",
            &"x".repeat(128),
        ] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", ".x", "a b", "ä", "a;b", &"x".repeat(129)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn types_parse_in_platform_spelling() {
        assert_eq!(
            "REGISTRY".parse::<CredentialType>().unwrap(),
            CredentialType::Registry
        );
        assert_eq!(
            "aws".parse::<CredentialType>().unwrap(),
            CredentialType::Aws
        );
        assert!("kerberos".parse::<CredentialType>().is_err());
    }

    #[test]
    fn missing_fields_are_all_listed() {
        let err =
            validate_fields(CredentialType::Aws, &fields(&[("region", "eu-west-1")])).unwrap_err();
        assert!(err.contains("access_key_id, secret_access_key"), "{err}");
    }

    #[test]
    fn unknown_and_invalid_fields() {
        assert!(
            validate_fields(
                CredentialType::Token,
                &fields(&[("token", "t"), ("x", "1")])
            )
            .unwrap_err()
            .contains("unknown field 'x'")
        );
        assert!(validate_fields(CredentialType::Generic, &fields(&[("A KEY", "v")])).is_err());
        assert!(validate_fields(CredentialType::Generic, &fields(&[("a=b", "v")])).is_err());
        let long = "k".repeat(254);
        assert!(
            validate_fields(CredentialType::Generic, &fields(&[(long.as_str(), "v")])).is_err()
        );
        // What a platform takes, also when it is no variable name.
        validate_fields(
            CredentialType::Generic,
            &fields(&[("other.key", "v"), ("1st", "v"), ("a-b_c", "v")]),
        )
        .unwrap();
        validate_fields(
            CredentialType::Data,
            &fields(&[
                ("endpoint", "swift://container"),
                ("access_key_id", "a"),
                ("access_key", "k"),
            ]),
        )
        .unwrap();
        assert!(validate_fields(CredentialType::Generic, &fields(&[])).is_err());
        let data = fields(&[
            ("endpoint", "http://x"),
            ("access_key_id", "a"),
            ("access_key", "k"),
        ]);
        assert!(
            validate_fields(CredentialType::Data, &data)
                .unwrap_err()
                .contains("s3://")
        );
        let gcp = fields(&[("json", r#"{"type":"nope"}"#)]);
        assert!(validate_fields(CredentialType::Gcp, &gcp).is_err());
        let gcp = fields(&[("json", r#"{"type":"service_account"}"#)]);
        assert!(validate_fields(CredentialType::Gcp, &gcp).is_ok());
    }

    #[test]
    fn errors_never_echo_secret_values() {
        let err = validate_fields(
            CredentialType::Gcp,
            &fields(&[("json", "SECRET-MARKER-not-json")]),
        )
        .unwrap_err();
        assert!(!err.contains("SECRET-MARKER"), "{err}");
    }

    #[test]
    fn sts_fields() {
        let base = [("source", "base"), ("role_arn", "arn:aws:iam::1:role/r")];
        assert!(validate_fields(CredentialType::Aws, &fields(&base)).is_ok());
        let with = |extra: (&str, &str)| {
            let mut f = fields(&base);
            f.insert(extra.0.into(), SecretValue::from(extra.1));
            validate_fields(CredentialType::Aws, &f)
        };
        assert!(with(("duration", "1h")).is_ok());
        assert!(with(("duration", "5m")).unwrap_err().contains("15m to 12h"));
        let mfa = |extra: &[(&str, &str)]| {
            let mut f = fields(&base);
            f.insert(
                "mfa_serial".into(),
                SecretValue::from("arn:aws:iam::1:mfa/me"),
            );
            for (k, v) in extra {
                f.insert((*k).into(), SecretValue::from(*v));
            }
            validate_fields(CredentialType::Aws, &f)
        };
        assert!(mfa(&[("mfa_otp", "aws-mfa")]).is_ok());
        assert!(
            mfa(&[("mfa_otp", "aws-mfa"), ("mfa_command", "ykman")])
                .unwrap_err()
                .contains("not both")
        );
        assert!(
            mfa(&[("mfa_otp", "bad name")])
                .unwrap_err()
                .starts_with("mfa_otp: ")
        );
        assert!(with(("sts_endpoint", "http://127.0.0.1:5000")).is_ok());
        assert!(
            with(("sts_endpoint", "http://sts.example"))
                .unwrap_err()
                .contains("https://")
        );
        assert!(
            with(("refresh_command", "x"))
                .unwrap_err()
                .contains("not both")
        );
        assert!(with(("session_name", "a b")).is_err());
        assert!(
            with(("mfa_serial", "arn:aws:iam::1:mfa/me"))
                .unwrap_err()
                .contains("mfa_command")
        );
        assert!(
            with(("mfa_command", "ykman"))
                .unwrap_err()
                .contains("mfa_serial")
        );
        let lonely = fields(&[
            ("access_key_id", "AKIA"),
            ("secret_access_key", "s"),
            ("duration", "1h"),
        ]);
        assert!(
            validate_fields(CredentialType::Aws, &lonely)
                .unwrap_err()
                .contains("source")
        );
    }

    #[test]
    fn secret_fields() {
        assert!(CredentialType::Aws.is_secret("secret_access_key"));
        assert!(!CredentialType::Aws.is_secret("access_key_id"));
        assert!(CredentialType::Generic.is_secret("ANYTHING"));
    }
}
