//! `vault edit NAME`: the credential's fields in `$VISUAL`/`$EDITOR`, as
//! TOML, in a private file that is overwritten and removed afterwards
//! (docs/user-guide.md). TOML because its multi-line strings keep an ssh
//! key or a JSON document as it is, and its strings round-trip exactly.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use vault_protocol::credential::validate_fields;
use vault_protocol::message::RecordView;
use vault_protocol::{ErrorCode, Request, Response, SecretValue};
use zeroize::Zeroizing;

use super::Ctx;
use crate::args::EditArgs;
use crate::error::{CliResult, failed, unexpected, usage};
use crate::exec::Folder;

/// At most this many rounds of a file that does not parse.
const ROUNDS: usize = 10;

/// `vault edit`.
pub fn edit(ctx: &mut Ctx, args: &EditArgs) -> CliResult<()> {
    let mut base = super::records::fetch(ctx, &args.name)?;
    let editor = editor();
    let folder = Folder::create(&ctx.target.paths.exec_dir()).map_err(failed)?;
    let file = EditFile(folder.path().join("fields.toml"));
    let mut text = Zeroizing::new(format!(
        "# vault edit {} ({}), revision {}\n{HELP}\n{}",
        base.name,
        base.kind,
        base.revision,
        render(&base.fields)?.as_str()
    ));
    // Ctrl-C is the editor's while it runs, as with system(3).
    let _calm = Calm::install()?;
    for _ in 0..ROUNDS {
        file.write(&text)?;
        run_editor(&editor, &file.0)?;
        let body = strip_error(&file.read()?);
        if body.trim().is_empty() {
            ctx.out.info("the file was emptied: nothing changed");
            return Ok(());
        }
        // Anything wrong comes back on top of what was written: nothing
        // typed is lost until the save is taken or cancelled.
        let problem = match parse(&body) {
            Err(problem) => problem,
            Ok(edited) => match save(ctx, &mut base, edited)? {
                None => return Ok(()),
                Some(why) => Problem { line: None, why },
            },
        };
        let header = 2 + problem.why.matches('\n').count();
        let at = problem
            .line
            .map_or(String::new(), |l| format!(" at line {}", l + header));
        text = Zeroizing::new(format!(
            "# ERROR{at}: {}\n# Fix it and save, or empty the file to cancel.\n{}",
            problem.why.replace('\n', "\n# "),
            body.as_str()
        ));
    }
    Err(usage(format!(
        "the file still could not be saved after {ROUNDS} rounds: nothing changed"
    )))
}

/// Saves the edited fields as a new revision of `base`; `None` when done
/// (saved, or nothing to save), else why not, for the user to fix. A
/// record changed meanwhile is re-read, and the user asked again.
fn save(
    ctx: &mut Ctx,
    base: &mut RecordView,
    edited: BTreeMap<String, SecretValue>,
) -> CliResult<Option<String>> {
    if let Err(why) = validate_fields(base.kind, &edited) {
        return Ok(Some(why));
    }
    let now = super::records::fetch(ctx, &base.name)?;
    if now.revision != base.revision {
        let why = format!(
            "{} changed since you opened it (it is at revision {} now): what you saved is \
             below; save again to put it over that change",
            base.name, now.revision
        );
        *base = now;
        return Ok(Some(why));
    }
    let (fields, unset) = changes(&base.fields, edited);
    if fields.is_empty() && unset.is_empty() {
        ctx.out.info("no changes: nothing saved");
        return Ok(None);
    }
    let answer = ctx.call_unlocked(&|| Request::Set {
        name: base.name.clone(),
        fields: fields
            .iter()
            .map(|(k, v)| (k.clone(), v.duplicate()))
            .collect(),
        unset: unset.clone(),
        description: None,
        tags: None,
        expires_at: None,
    });
    let summary = match answer {
        Ok(Response::Changed(summary)) => summary,
        Ok(_) => return Err(unexpected("set")),
        // Refused as it stands (a field the daemon will not take).
        Err(e) if e.code == ErrorCode::Usage => return Ok(Some(e.message)),
        Err(e) => return Err(e),
    };
    ctx.out.info(&format!(
        "saved {} as revision {} ({} changed, {} removed)",
        summary.name,
        summary.revision,
        fields.len(),
        unset.len()
    ));
    if ctx.out.json {
        ctx.out.json(&summary)?;
    }
    Ok(None)
}

/// SIGINT and SIGQUIT caught (and dropped) while alive: the editor, which
/// gets the default handling back when it starts, decides what they mean.
struct Calm(Vec<signal_hook::SigId>);

impl Calm {
    fn install() -> CliResult<Self> {
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        [signal_hook::consts::SIGINT, signal_hook::consts::SIGQUIT]
            .into_iter()
            .map(|sig| signal_hook::flag::register(sig, std::sync::Arc::clone(&seen)))
            .collect::<Result<Vec<_>, _>>()
            .map(Calm)
            .map_err(|e| failed(format!("cannot set up signal handling: {e}")))
    }
}

impl Drop for Calm {
    fn drop(&mut self) {
        for id in self.0.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// Why an edited file cannot be saved, and on which of its lines (never
/// a value).
#[derive(Debug)]
struct Problem {
    line: Option<usize>,
    why: String,
}

const HELP: &str = "\
# One field per line, as TOML: name = \"value\"; a value over several lines
# between \"\"\" and \"\"\". Delete a line to remove that field. Lines starting
# with # are ignored. Save and quit to keep the changes (a new revision);
# empty the file to cancel. This file is overwritten and removed afterwards.";

/// `$VISUAL`, else `$EDITOR`, else `vi`: a command line, run by `sh`.
fn editor() -> String {
    ["VISUAL", "EDITOR"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "vi".to_owned())
}

fn run_editor(editor: &str, file: &Path) -> CliResult<()> {
    let status = Command::new("/bin/sh")
        .arg("-c")
        // exec: the editor is our child, with no shell between to die of
        // a Ctrl-C the editor takes as a key.
        .arg(format!("exec {editor} \"$1\""))
        .arg("vault-edit")
        .arg(file)
        .status()
        .map_err(|e| failed(format!("cannot start the editor '{editor}': {e}")))?;
    if status.success() {
        return Ok(());
    }
    let how = match (
        status.code(),
        std::os::unix::process::ExitStatusExt::signal(&status),
    ) {
        // The shell's way of saying its command was killed.
        (Some(code @ 129..=192), _) => format!("was killed by signal {}", code - 128),
        (Some(code), _) => format!("exited with {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "failed".to_owned(),
    };
    Err(failed(format!(
        "the editor '{editor}' {how}: nothing changed (the file was wiped)"
    )))
}

/// The fields as TOML: a table of strings.
fn render(fields: &BTreeMap<String, SecretValue>) -> CliResult<Zeroizing<String>> {
    let plain: BTreeMap<&str, &str> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.expose_secret()))
        .collect();
    toml::to_string(&plain)
        .map(Zeroizing::new)
        .map_err(|e| failed(format!("cannot write the fields as TOML: {e}")))
}

/// The edited fields; every value must be a string. The error never
/// quotes a value (TOML's own messages show the line; ours do not).
fn parse(text: &str) -> Result<BTreeMap<String, SecretValue>, Problem> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| Problem {
        line: e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1),
        why: format!("this is not valid TOML: {}", e.message()),
    })?;
    table
        .into_iter()
        .map(|(k, v)| match v {
            toml::Value::String(s) => Ok((k, SecretValue::new(s))),
            _ => Err(Problem {
                line: None,
                why: format!("'{k}' must be a string: put its value in quotes, \"like this\""),
            }),
        })
        .collect()
}

/// The text without an earlier round's error lines (from `# ERROR` through
/// `# Fix it and save…`), so they do not pile up.
fn strip_error(text: &str) -> Zeroizing<String> {
    let mut lines = text.lines().peekable();
    if lines.peek().is_some_and(|l| l.starts_with("# ERROR")) {
        for l in lines.by_ref() {
            if l.starts_with("# Fix it and save") {
                break;
            }
        }
    }
    let mut out = Zeroizing::new(String::with_capacity(text.len()));
    for l in lines {
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// What to send: the fields that are new or changed, and those removed.
fn changes(
    before: &BTreeMap<String, SecretValue>,
    after: BTreeMap<String, SecretValue>,
) -> (BTreeMap<String, SecretValue>, Vec<String>) {
    let unset = before
        .keys()
        .filter(|k| !after.contains_key(*k))
        .cloned()
        .collect();
    let changed = after
        .into_iter()
        .filter(|(k, v)| {
            before
                .get(k)
                .is_none_or(|old| old.expose_secret() != v.expose_secret())
        })
        .collect();
    (changed, unset)
}

/// The file the editor gets: overwritten with zeros and removed on drop,
/// whatever happened (the folder it is in goes too).
struct EditFile(PathBuf);

impl EditFile {
    fn write(&self, text: &str) -> CliResult<()> {
        let _ = fs::remove_file(&self.0);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&self.0)
            .map_err(|e| failed(format!("cannot create {}: {e}", self.0.display())))?;
        f.write_all(text.as_bytes())
            .map_err(|e| failed(format!("cannot write {}: {e}", self.0.display())))
    }

    fn read(&self) -> CliResult<Zeroizing<String>> {
        let bytes = Zeroizing::new(
            fs::read(&self.0)
                .map_err(|e| failed(format!("cannot read {}: {e}", self.0.display())))?,
        );
        std::str::from_utf8(&bytes)
            .map(|s| Zeroizing::new(s.to_owned()))
            .map_err(|_| usage("the edited file is not UTF-8 text: nothing changed"))
    }
}

impl Drop for EditFile {
    fn drop(&mut self) {
        // Editors may have replaced the file (write to a new one, rename):
        // whatever is at the path now is wiped.
        if let Ok(meta) = fs::symlink_metadata(&self.0)
            && meta.is_file()
            && let Ok(mut f) = OpenOptions::new()
                .write(true)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&self.0)
        {
            let _ = f.write_all(&vec![0; meta.len() as usize]);
            let _ = f.sync_all();
        }
        let _ = fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, SecretValue> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), SecretValue::from(*v)))
            .collect()
    }

    #[test]
    fn every_value_round_trips_through_the_file() {
        let before = fields(&[
            (
                "private_key",
                "-----BEGIN KEY-----\nabc\n-----END KEY-----\n",
            ),
            ("json", "{\n  \"type\": \"x\"\n}"),
            ("other.key", " spaced "),
            ("quotes", "a'''b\"\"\"c\\d\n\n"),
            ("tab", "a\tb\r\n"),
        ]);
        let text = render(&before).unwrap();
        let after = parse(&format!("# vault edit x\n{HELP}\n{}", text.as_str())).unwrap();
        let (changed, unset) = changes(&before, after);
        assert!(changed.is_empty() && unset.is_empty());
    }

    #[test]
    fn changes_and_removals_are_found() {
        let before = fields(&[("token", "a"), ("url", "u"), ("env", "E")]);
        let after = parse("token = \"b\"\nenv = \"E\"\nnew = \"n\"\n").unwrap();
        let (changed, unset) = changes(&before, after);
        assert_eq!(changed.keys().collect::<Vec<_>>(), ["new", "token"]);
        assert_eq!(unset, ["url"]);
    }

    #[test]
    fn bad_files_say_where_and_never_quote_a_value() {
        let err = parse("token = \"s3cret\"\nurl = unquoted-s3cret\n").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(!err.why.contains("s3cret"), "{}", err.why);
        let err = parse("token = 5\n").unwrap_err();
        assert!(err.why.contains("'token' must be a string"), "{}", err.why);
        let again = strip_error(
            "# ERROR at line 4: x\n# more of x\n# Fix it and save, or empty\n# vault edit\ntoken = \"a\"\n",
        );
        assert_eq!(again.as_str(), "# vault edit\ntoken = \"a\"\n");
    }
}
