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

use vault_protocol::{Request, Response, SecretValue};
use zeroize::Zeroizing;

use super::Ctx;
use crate::args::EditArgs;
use crate::error::{CliResult, failed, unexpected, usage};
use crate::exec::Folder;

/// At most this many rounds of a file that does not parse.
const ROUNDS: usize = 10;

/// `vault edit`.
pub fn edit(ctx: &mut Ctx, args: &EditArgs) -> CliResult<()> {
    let view = super::records::fetch(ctx, &args.name)?;
    let editor = editor();
    let folder = Folder::create(&ctx.target.paths.exec_dir()).map_err(failed)?;
    let file = EditFile(folder.path().join("fields.toml"));
    let mut text = Zeroizing::new(format!(
        "# vault edit {} ({}), revision {}\n{HELP}\n{}",
        view.name,
        view.kind,
        view.revision,
        render(&view.fields)?.as_str()
    ));
    let edited = 'rounds: {
        for _ in 0..ROUNDS {
            file.write(&text)?;
            run_editor(&editor, &file.0)?;
            let after = file.read()?;
            if after.trim().is_empty() {
                ctx.out.info("the file was emptied: nothing changed");
                return Ok(());
            }
            match parse(&after) {
                Ok(fields) => break 'rounds fields,
                // Shown at the top of the file, with what was written.
                Err(why) => {
                    text = Zeroizing::new(format!(
                        "# ERROR: {}\n# Fix it and save, or empty the file to cancel.\n{}",
                        why.replace('\n', "\n# "),
                        strip_error(&after)
                    ));
                }
            }
        }
        return Err(usage(format!(
            "the file still did not parse after {ROUNDS} rounds: nothing changed"
        )));
    };
    drop(file);
    drop(folder);
    let (fields, unset) = changes(&view.fields, edited);
    if fields.is_empty() && unset.is_empty() {
        ctx.out.info("no changes: nothing saved");
        return Ok(());
    }
    let summary = match ctx.call_unlocked(&|| Request::Set {
        name: args.name.clone(),
        fields: fields
            .iter()
            .map(|(k, v)| (k.clone(), v.duplicate()))
            .collect(),
        unset: unset.clone(),
        description: None,
        tags: None,
        expires_at: None,
    })? {
        Response::Changed(summary) => summary,
        _ => return Err(unexpected("set")),
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
    Ok(())
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
        .arg(format!("{editor} \"$1\""))
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
fn parse(text: &str) -> Result<BTreeMap<String, SecretValue>, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let at = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
            .map_or(String::new(), |line| format!(" at line {line}"));
        format!("this is not valid TOML{at}: {}", e.message())
    })?;
    table
        .into_iter()
        .map(|(k, v)| match v {
            toml::Value::String(s) => Ok((k, SecretValue::new(s))),
            _ => Err(format!(
                "'{k}' must be a string: put its value in quotes, \"like this\""
            )),
        })
        .collect()
}

/// An earlier round's error lines, so they do not pile up.
fn strip_error(text: &str) -> String {
    text.lines()
        .skip_while(|l| l.starts_with("# ERROR: ") || l.starts_with("# Fix it and save"))
        .fold(String::new(), |mut out, l| {
            out.push_str(l);
            out.push('\n');
            out
        })
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
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let err = parse("token = 5\n").unwrap_err();
        assert!(err.contains("'token' must be a string"), "{err}");
        let again = strip_error("# ERROR: x\n# Fix it and save, or empty\ntoken = \"a\"\n");
        assert_eq!(again, "token = \"a\"\n");
    }
}
