//! `vault gcp token NAME` (docs/gcp.md): an access token minted by the
//! daemon from a service-account key, printed like `gcloud auth
//! print-access-token` (with `--json`, its expiry too).

use serde_json::json;
use vault_protocol::{Request, Response, validate_name};

use super::Ctx;
use crate::args::GcpAction;
use crate::error::{CliResult, unexpected, usage};

pub fn run(ctx: &mut Ctx, action: GcpAction) -> CliResult<()> {
    let GcpAction::Token { name, scopes } = action;
    validate_name(&name).map_err(usage)?;
    let (token, expires_at) = match ctx.call_unlocked(&|| Request::GcpToken {
        name: name.clone(),
        scopes: scopes.clone(),
    })? {
        Response::AccessToken { token, expires_at } => (token, expires_at),
        _ => return Err(unexpected("gcp token")),
    };
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
