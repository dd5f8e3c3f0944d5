//! `vault gcp token NAME` (docs/gcp.md): an access token minted by the
//! daemon from a service-account key, printed like `gcloud auth
//! print-access-token` (with `--json`, its expiry too).

use serde_json::json;
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{Request, Response, SecretValue, validate_name};

use super::{Ctx, kube};

mod issuer;
use crate::args::{GcpAction, GkeAction};
use crate::error::{CliResult, unexpected, usage};

/// The daemon's token for gcp credential `name` and `scopes`.
fn token(ctx: &mut Ctx, name: &str, scopes: &[String]) -> CliResult<(SecretValue, Timestamp)> {
    validate_name(name).map_err(usage)?;
    match ctx.call_unlocked(&|| Request::GcpToken {
        name: name.to_owned(),
        scopes: scopes.to_vec(),
    })? {
        Response::AccessToken { token, expires_at } => Ok((token, expires_at)),
        _ => Err(unexpected("gcp token")),
    }
}

pub fn run(ctx: &mut Ctx, action: GcpAction) -> CliResult<()> {
    let (name, scopes) = match action {
        GcpAction::Token { name, scopes } => (name, scopes),
        GcpAction::Issuer(args) => return issuer::create(ctx, args),
        GcpAction::Jwks { name } => return issuer::jwks(ctx, &name),
        GcpAction::SubjectToken { name } => return issuer::subject_token(ctx, &name),
    };
    let (token, expires_at) = token(ctx, &name, &scopes)?;
    if ctx.out.json {
        return ctx.out.json(&json!({
            "name": name,
            "token": token,
            "expires_at": expires_at,
        }));
    }
    ctx.out.text(token.expose_secret());
    ctx.out.text("\n");
    Ok(())
}

/// `vault gke token NAME`: the same token, as kubectl's ExecCredential.
pub fn gke(ctx: &mut Ctx, action: GkeAction) -> CliResult<()> {
    let GkeAction::Token {
        name,
        scopes,
        api_version,
    } = action;
    let version = kube::api_version(api_version.as_deref())?;
    let (token, expires_at) = token(ctx, &name, &scopes)?;
    kube::print_exec_credential(ctx, version, &token, expires_at)
}
