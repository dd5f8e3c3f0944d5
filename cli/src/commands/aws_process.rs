//! `vault aws-process NAME`: the `credential_process` of `~/.aws/config`
//! (`credential_process = /path/to/vault aws-process NAME`). Prints the
//! Version 1 JSON document the AWS SDKs read; never prompts (an SDK runs it
//! without a terminal of its own), so a locked vault or an expired
//! credential is a message on stderr and a non-zero exit, which the SDK
//! reports.

use vault_protocol::credential::refreshes_itself;
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{CredentialType, ErrorCode, Request, Response, WireError, validate_name};

use super::Ctx;
use crate::error::{CliResult, unexpected, usage};

/// `vault aws-process NAME`.
pub fn run(ctx: &mut Ctx, name: &str) -> CliResult<()> {
    validate_name(name).map_err(usage)?;
    let record = match ctx.call(Request::Get {
        name: name.to_owned(),
    })? {
        Response::Record(record) => record,
        _ => return Err(unexpected("get")),
    };
    if record.kind != CredentialType::Aws {
        return Err(usage(format!(
            "{name} is a {} credential; credential_process needs an aws one",
            record.kind
        )));
    }
    if vault_protocol::credential::is_sso_session(|f| record.fields.contains_key(f)) {
        return Err(usage(format!(
            "'{name}' is an SSO session: it holds a sign-in, not keys; use a role that shares it \
             (vault sso roles {name}, then vault sso add NEW --from {name} --account A --role R)"
        )));
    }
    // The daemon refreshed it before answering if it could; when it has a
    // refresh command and still is not usable, that refresh failed.
    let hint = if refreshes_itself(|f| record.fields.contains_key(f)) {
        // Why, as `vault status` has it (never a value): what the SDK
        // shows its user, who then knows what to run.
        let why = match ctx.call(Request::Status) {
            Ok(Response::Status(s)) => s.refresh.into_iter().find(|r| r.name == name),
            _ => None,
        };
        match why {
            Some(r) => format!("its refresh failed: {}", r.error),
            None => "its refresh failed; 'vault status' shows why".to_owned(),
        }
    } else {
        "renew it in the vault".to_owned()
    };
    if let Some(t) = record.expires_at.filter(|t| *t <= Timestamp::now()) {
        return Err(WireError::new(
            ErrorCode::Expired,
            format!("{name} expired at {t}: {hint}"),
        ));
    }
    let field = |f: &str| {
        record
            .fields
            .get(f)
            .map(|v| v.expose_secret())
            .filter(|v| !v.is_empty())
    };
    if field("access_key_id").is_none() || field("secret_access_key").is_none() {
        return Err(WireError::new(
            ErrorCode::Failed,
            format!("{name} has no access key yet: {hint}"),
        ));
    }
    let expiration = record.expires_at.map(Timestamp::to_rfc3339);
    let doc = crate::secret_json::object(&[
        ("AccessKeyId", field("access_key_id")),
        ("SecretAccessKey", field("secret_access_key")),
        ("SessionToken", field("session_token")),
        ("Expiration", expiration.as_deref()),
    ]);
    // `Version` is a number, the one key that is not a string.
    ctx.out.text(&format!("{{\"Version\":1,{}\n", &doc[1..]));
    Ok(())
}
