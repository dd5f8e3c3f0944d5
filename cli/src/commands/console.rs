//! `vault console NAME` (docs/console.md): the AWS console sign-in URL the
//! daemon made, printed (with `--json`, its expiry too), or opened in the
//! browser through a private page (`--open`).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use vault_protocol::timefmt::parse_duration;
use vault_protocol::{ErrorCode, Request, Response, SecretValue, WireError, validate_name};

use super::Ctx;
use crate::error::{CliResult, unexpected, usage};
use crate::exec::child::Folder;
use crate::exec::plan::FileSpec;

/// How long the page stays for the browser to read it.
const PAGE_KEPT: Duration = Duration::from_secs(10);

pub fn run(
    ctx: &mut Ctx,
    name: String,
    destination: Option<String>,
    region: Option<String>,
    duration: &str,
    open: bool,
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
    if open {
        return open_page(ctx, &url);
    }
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

fn failed(msg: String) -> WireError {
    WireError::new(ErrorCode::Failed, msg)
}

/// The program that opens a file in the user's browser.
pub(super) fn opener() -> Option<PathBuf> {
    let name = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `text` safe inside an HTML attribute.
fn html_attr(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes a page that goes to `url` into a private folder, opens it, and
/// removes it once the browser has had time to read it.
fn open_page(ctx: &mut Ctx, url: &SecretValue) -> CliResult<()> {
    let Some(opener) = opener() else {
        return Err(failed(
            "no xdg-open (or open) to start a browser with: run 'vault console' without --open \
             and paste the URL it prints"
                .into(),
        ));
    };
    let folder = Folder::create(&ctx.target.paths.exec_dir()).map_err(failed)?;
    let href = zeroize::Zeroizing::new(html_attr(url.expose_secret()));
    let page = zeroize::Zeroizing::new(format!(
        "<!doctype html><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"no-referrer\">\
         <title>AWS console</title><meta http-equiv=\"refresh\" content=\"0;url={}\">\
         <p><a href=\"{}\">Sign in to the AWS console</a></p>\n",
        href.as_str(),
        href.as_str()
    ));
    folder
        .write_all(&[FileSpec {
            rel: "aws-console.html".into(),
            content: zeroize::Zeroizing::new(page.as_bytes().to_vec()),
            mode: 0o600,
        }])
        .map_err(failed)?;
    let file = folder.path().join("aws-console.html");
    let status = std::process::Command::new(&opener)
        .arg(&file)
        .stdin(std::process::Stdio::null())
        .status()
        .map_err(|e| failed(format!("cannot run {}: {e}", opener.display())))?;
    if !status.success() {
        return Err(failed(format!(
            "{} could not open the page ({status}): run 'vault console' without --open and \
             paste the URL it prints",
            opener.display()
        )));
    }
    ctx.out.info(&format!(
        "opened the AWS console sign-in in the browser; the page is removed in {} s",
        PAGE_KEPT.as_secs()
    ));
    std::thread::sleep(PAGE_KEPT);
    drop(folder);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::html_attr;

    #[test]
    fn a_url_stays_inside_its_attribute() {
        assert_eq!(
            html_attr("https://x/?a=1&b=\"2\"<script>"),
            "https://x/?a=1&amp;b=&quot;2&quot;&lt;script&gt;"
        );
    }
}
