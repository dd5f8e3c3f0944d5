//! `vault eks token NAME --cluster C` (docs/eks.md): a kubectl
//! `ExecCredential` holding the token the daemon presigned, in the API
//! version kubectl asks for.

use vault_protocol::{Request, Response, validate_name};

use super::{Ctx, kube};
use crate::args::EksAction;
use crate::error::{CliResult, unexpected, usage};

pub fn run(ctx: &mut Ctx, action: EksAction) -> CliResult<()> {
    let EksAction::Token {
        name,
        cluster,
        region,
        api_version,
    } = action;
    validate_name(&name).map_err(usage)?;
    let version = kube::api_version(api_version.as_deref())?;
    let (token, expires_at) = match ctx.call_unlocked(&|| Request::EksToken {
        name: name.clone(),
        cluster: cluster.clone(),
        region: region.clone(),
    })? {
        Response::AccessToken { token, expires_at } => (token, expires_at),
        _ => return Err(unexpected("eks token")),
    };
    kube::print_exec_credential(ctx, version, &token, expires_at)
}
