//! `vault console NAME` (docs/console.md): the AWS console sign-in URL the
//! daemon made, printed (with `--json`, its expiry too).

use serde_json::json;
use vault_protocol::timefmt::parse_duration;
use vault_protocol::{Request, Response, validate_name};

use super::Ctx;
use crate::error::{CliResult, unexpected, usage};

pub fn run(
    ctx: &mut Ctx,
    name: String,
    destination: Option<String>,
    region: Option<String>,
    duration: &str,
) -> CliResult<()> {
    validate_name(&name).map_err(usage)?;
    let duration_secs = parse_duration(duration).map_err(usage)?.as_secs();
    let (url, expires_at) = match ctx.call_unlocked(&|| Request::ConsoleUrl {
        name: name.clone(),
        destination: destination.clone(),
        region: region.clone(),
        duration_secs: Some(duration_secs),
    })? {
        Response::AccessToken { token, expires_at } => (token, expires_at),
        _ => return Err(unexpected("console")),
    };
    if ctx.out.json {
        return ctx.out.json(&json!({
            "name": name,
            "url": url,
            "expires_at": expires_at,
        }));
    }
    ctx.out.text(url.expose_secret());
    ctx.out.text("\n");
    Ok(())
}
