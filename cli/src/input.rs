//! Where secret input comes from: field arguments (`FIELD=VALUE`, `FIELD=-`,
//! `FIELD=@PATH`, a bare `FIELD` that is asked for) and passphrases
//! (`--passphrase-stdin`, `VAULT_PASSPHRASE_FILE`, the terminal; docs/architecture.md).
//!
//! Values are held in `SecretValue`/`Zeroizing` from the moment they are read.
//! Nothing here ever puts a value into an error message.

use std::collections::BTreeMap;
use std::io::{self, BufRead, IsTerminal, Read};
use std::path::{Path, PathBuf};

use vault_protocol::SecretValue;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{CliResult, failed, usage};

/// Environment variable naming a file that holds the passphrase.
pub const PASSPHRASE_FILE_ENV: &str = "VAULT_PASSPHRASE_FILE";

/// Where one field's value comes from.
#[derive(Debug)]
pub enum Source {
    /// Given on the command line.
    Literal(SecretValue),
    /// `FIELD=-`: all of stdin.
    Stdin,
    /// `FIELD=@PATH`: a file.
    File(PathBuf),
    /// Bare `FIELD`: a hidden prompt.
    Prompt,
}

/// One `FIELD=...` argument.
#[derive(Debug)]
pub struct FieldArg {
    /// The field name.
    pub name: String,
    /// Where its value comes from.
    pub source: Source,
}

impl FieldArg {
    /// Parses one argument. Only the syntax is checked here; whether the field
    /// exists for the type is checked by `commands::check_field_names`.
    pub fn parse(arg: &str) -> CliResult<Self> {
        let (name, source) = match arg.split_once('=') {
            None => (arg, Source::Prompt),
            Some((name, "-")) => (name, Source::Stdin),
            Some((name, value)) => match value.strip_prefix('@') {
                Some(path) if !path.is_empty() => (name, Source::File(PathBuf::from(path))),
                _ => (name, Source::Literal(SecretValue::from(value))),
            },
        };
        if name.is_empty() || name.chars().any(char::is_whitespace) {
            // The argument may be a value pasted in the wrong place: do not echo it.
            return Err(usage(
                "a field argument must look like FIELD=VALUE, FIELD=-, FIELD=@PATH or FIELD",
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            source,
        })
    }

    /// Whether the value was typed on the command line (visible in `ps` and
    /// shell history).
    pub fn is_literal(&self) -> bool {
        matches!(&self.source, Source::Literal(v) if !v.is_empty())
    }
}

/// Parses all field arguments: no field twice, at most one from stdin.
pub fn parse_fields<'a>(args: impl IntoIterator<Item = &'a String>) -> CliResult<Vec<FieldArg>> {
    let mut fields: Vec<FieldArg> = Vec::new();
    for arg in args {
        let field = FieldArg::parse(arg)?;
        if fields.iter().any(|f| f.name == field.name) {
            return Err(usage(format!("field '{}' is given twice", field.name)));
        }
        fields.push(field);
    }
    let from_stdin: Vec<_> = fields
        .iter()
        .filter(|f| matches!(f.source, Source::Stdin))
        .map(|f| f.name.as_str())
        .collect();
    if from_stdin.len() > 1 {
        return Err(usage(format!(
            "only one field can read stdin, but {} all use '-': use FIELD=@PATH for the others",
            from_stdin.join(", ")
        )));
    }
    Ok(fields)
}

/// Refuses prompts that cannot be shown: a bare `FIELD` needs a terminal.
pub fn check_prompts(fields: &[FieldArg], have_terminal: bool) -> CliResult<()> {
    match fields.iter().find(|f| matches!(f.source, Source::Prompt)) {
        Some(f) if !have_terminal => Err(usage(format!(
            "no value for field '{0}' and no terminal to ask for it: use {0}=- to read stdin or {0}=@PATH to read a file",
            f.name
        ))),
        _ => Ok(()),
    }
}

/// Reads every value from its source. `prompt` asks for the named field's
/// value on the terminal.
pub fn resolve(
    fields: Vec<FieldArg>,
    stdin: &mut dyn Read,
    prompt: &mut dyn FnMut(&str) -> CliResult<SecretValue>,
) -> CliResult<BTreeMap<String, SecretValue>> {
    let mut values = BTreeMap::new();
    for FieldArg { name, source } in fields {
        let value = match source {
            Source::Literal(v) => v,
            Source::Prompt => prompt(&name)?,
            Source::Stdin => {
                let mut bytes = Zeroizing::new(Vec::new());
                stdin.read_to_end(&mut bytes).map_err(|e| {
                    failed(format!("cannot read the value of '{name}' from stdin: {e}"))
                })?;
                let mut text = utf8(bytes, || format!("the value of '{name}' on stdin"))?;
                strip_newline(&mut text);
                SecretValue::new(std::mem::take(&mut *text))
            }
            Source::File(path) => read_value_file(&path, &name)?,
        };
        values.insert(name, value);
    }
    Ok(values)
}

/// Reads `FIELD=@PATH`. A one-line file loses the newline editors add; a
/// multi-line file (a key, a JSON document) is kept byte for byte.
fn read_value_file(path: &Path, field: &str) -> CliResult<SecretValue> {
    let bytes = std::fs::read(path).map(Zeroizing::new).map_err(|e| {
        usage(format!(
            "cannot read {} for field '{field}': {e}",
            path.display()
        ))
    })?;
    let mut text = utf8(bytes, || format!("{} (field '{field}')", path.display()))?;
    if text.trim_end_matches(['\n', '\r']).find('\n').is_none() {
        strip_newline(&mut text);
    }
    Ok(SecretValue::new(std::mem::take(&mut *text)))
}

/// Converts bytes to text without leaving a copy behind on failure.
fn utf8(
    mut bytes: Zeroizing<Vec<u8>>,
    what: impl FnOnce() -> String,
) -> CliResult<Zeroizing<String>> {
    match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(s) => Ok(Zeroizing::new(s)),
        Err(e) => {
            e.into_bytes().zeroize();
            Err(usage(format!("{} is not UTF-8 text", what())))
        }
    }
}

/// Drops one trailing `\n` (or `\r\n`).
pub fn strip_newline(s: &mut String) {
    if s.ends_with("\r\n") {
        s.truncate(s.len() - 2);
    } else if s.ends_with('\n') {
        s.truncate(s.len() - 1);
    }
}

/// Where the passphrase comes from, in the order tried (docs/user-guide.md).
#[derive(Debug)]
pub enum PassphraseSource {
    /// `--passphrase-stdin`: the first line of stdin.
    Stdin,
    /// `VAULT_PASSPHRASE_FILE`.
    File(PathBuf),
    /// A hidden prompt on the terminal.
    Terminal,
}

impl PassphraseSource {
    /// The first available source, or `None` when there is no way to get one.
    pub fn find(passphrase_stdin: bool) -> Option<Self> {
        if passphrase_stdin {
            Some(Self::Stdin)
        } else if let Some(path) = passphrase_file_from_env() {
            Some(Self::File(path))
        } else if io::stdin().is_terminal() {
            Some(Self::Terminal)
        } else {
            None
        }
    }

    /// Reads the passphrase from a non-interactive source. `None` for the
    /// terminal, which callers prompt for themselves (they may ask twice).
    pub fn read_non_interactive(&self) -> CliResult<Option<SecretValue>> {
        match self {
            Self::Stdin => read_passphrase_line(&mut io::stdin().lock()).map(Some),
            Self::File(path) => read_passphrase_file(path).map(Some),
            Self::Terminal => Ok(None),
        }
    }
}

/// `VAULT_PASSPHRASE_FILE`, when set and not empty.
pub fn passphrase_file_from_env() -> Option<PathBuf> {
    std::env::var_os(PASSPHRASE_FILE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// One line of `reader`, without its newline.
pub fn read_passphrase_line(reader: &mut dyn BufRead) -> CliResult<SecretValue> {
    let mut line = Zeroizing::new(String::new());
    let n = reader
        .read_line(&mut line)
        .map_err(|e| failed(format!("cannot read the passphrase from stdin: {e}")))?;
    if n == 0 {
        return Err(usage(
            "--passphrase-stdin was given but stdin is empty: pipe the passphrase in, e.g. from a password manager",
        ));
    }
    strip_newline(&mut line);
    Ok(SecretValue::new(std::mem::take(&mut *line)))
}

/// The contents of a passphrase file, without a trailing newline.
pub fn read_passphrase_file(path: &Path) -> CliResult<SecretValue> {
    let bytes = std::fs::read(path).map(Zeroizing::new).map_err(|e| {
        failed(format!(
            "cannot read the passphrase file {} ({PASSPHRASE_FILE_ENV}): {e}",
            path.display()
        ))
    })?;
    let mut text = utf8(bytes, || format!("the passphrase file {}", path.display()))?;
    strip_newline(&mut text);
    Ok(SecretValue::new(std::mem::take(&mut *text)))
}

/// Asks for a value that is no secret (a user name, a URL) on the
/// terminal: it is echoed as typed.
pub fn prompt_visible(prompt: &str) -> CliResult<SecretValue> {
    let err = |e: io::Error| failed(format!("cannot read from the terminal: {e}"));
    eprint!("{prompt}");
    let mut line = Zeroizing::new(String::new());
    io::stdin().lock().read_line(&mut line).map_err(err)?;
    strip_newline(&mut line);
    Ok(SecretValue::new(std::mem::take(&mut *line)))
}

/// Asks for a hidden value on the terminal.
pub fn prompt_hidden(prompt: &str) -> CliResult<SecretValue> {
    rpassword::prompt_password(prompt)
        .map(SecretValue::new)
        .map_err(|e| failed(format!("cannot read from the terminal: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn no_prompt(_: &str) -> CliResult<SecretValue> {
        panic!("unexpected prompt")
    }

    #[test]
    fn parses_every_source() {
        let fields =
            parse_fields(&args(&["a=lit=eral", "b=-", "c=@/tmp/x", "d", "e=", "f=@"])).unwrap();
        assert!(matches!(&fields[0].source, Source::Literal(v) if v.expose_secret() == "lit=eral"));
        assert!(matches!(fields[1].source, Source::Stdin));
        assert!(matches!(&fields[2].source, Source::File(p) if p == Path::new("/tmp/x")));
        assert!(matches!(fields[3].source, Source::Prompt));
        assert!(matches!(&fields[4].source, Source::Literal(v) if v.is_empty()));
        assert!(matches!(&fields[5].source, Source::Literal(v) if v.expose_secret() == "@"));
        assert!(fields[0].is_literal());
        assert!(!fields[4].is_literal());
    }

    #[test]
    fn rejects_bad_syntax_without_echoing() {
        let err = FieldArg::parse("=SECRET-MARKER").unwrap_err();
        assert_eq!(err.code.exit_code(), 2);
        assert!(!err.message.contains("SECRET-MARKER"));
        assert!(FieldArg::parse("has space=x").is_err());
    }

    #[test]
    fn duplicates_and_two_stdins_are_usage_errors() {
        let err = parse_fields(&args(&["a=1", "a=2"])).unwrap_err();
        assert!(
            err.message.contains("'a' is given twice"),
            "{}",
            err.message
        );
        let err = parse_fields(&args(&["a=-", "b=-"])).unwrap_err();
        assert!(err.message.contains("a, b"), "{}", err.message);
    }

    #[test]
    fn prompts_need_a_terminal() {
        let fields = parse_fields(&args(&["password"])).unwrap();
        let err = check_prompts(&fields, false).unwrap_err();
        assert!(err.message.contains("password=-"), "{}", err.message);
        assert!(check_prompts(&fields, true).is_ok());
    }

    #[test]
    fn stdin_loses_one_trailing_newline() {
        let fields = parse_fields(&args(&["token=-"])).unwrap();
        let mut stdin: &[u8] = b"line1\nline2\n\n";
        let values = resolve(fields, &mut stdin, &mut no_prompt).unwrap();
        assert_eq!(values["token"].expose_secret(), "line1\nline2\n");

        let fields = parse_fields(&args(&["token=-"])).unwrap();
        let mut stdin: &[u8] = b"tok\r\n";
        let values = resolve(fields, &mut stdin, &mut no_prompt).unwrap();
        assert_eq!(values["token"].expose_secret(), "tok");
    }

    #[test]
    fn files_keep_multi_line_content_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("one");
        let many = dir.path().join("many");
        std::fs::File::create(&one)
            .unwrap()
            .write_all(b"tok\n")
            .unwrap();
        std::fs::File::create(&many)
            .unwrap()
            .write_all(b"-----BEGIN-----\nabc\n-----END-----\n")
            .unwrap();
        let list = args(&[
            &format!("token=@{}", one.display()),
            &format!("key=@{}", many.display()),
        ]);
        let values = resolve(
            parse_fields(&list).unwrap(),
            &mut io::empty(),
            &mut no_prompt,
        )
        .unwrap();
        assert_eq!(values["token"].expose_secret(), "tok");
        assert_eq!(
            values["key"].expose_secret(),
            "-----BEGIN-----\nabc\n-----END-----\n"
        );
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let list = args(&["token=@/nonexistent/tok.txt"]);
        let err = resolve(
            parse_fields(&list).unwrap(),
            &mut io::empty(),
            &mut no_prompt,
        )
        .unwrap_err();
        assert!(
            err.message.contains("/nonexistent/tok.txt"),
            "{}",
            err.message
        );
        assert!(err.message.contains("'token'"), "{}", err.message);
    }

    #[test]
    fn prompt_is_used_for_bare_fields() {
        let list = args(&["password"]);
        let mut asked = Vec::new();
        let values = resolve(parse_fields(&list).unwrap(), &mut io::empty(), &mut |p| {
            asked.push(p.to_owned());
            Ok(SecretValue::from("typed"))
        })
        .unwrap();
        assert_eq!(asked, ["password"]);
        assert_eq!(values["password"].expose_secret(), "typed");
    }

    #[test]
    fn passphrase_line_and_file() {
        let mut input: &[u8] = b"pw one\nsecond line\n";
        assert_eq!(
            read_passphrase_line(&mut input).unwrap().expose_secret(),
            "pw one"
        );
        let mut empty: &[u8] = b"";
        assert_eq!(
            read_passphrase_line(&mut empty)
                .unwrap_err()
                .code
                .exit_code(),
            2
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pass");
        std::fs::write(&file, "pw\n").unwrap();
        assert_eq!(read_passphrase_file(&file).unwrap().expose_secret(), "pw");
        let err = read_passphrase_file(&dir.path().join("missing")).unwrap_err();
        assert!(err.message.contains("missing"), "{}", err.message);
    }

    #[test]
    fn non_utf8_is_refused_without_echo() {
        let fields = parse_fields(&args(&["token=-"])).unwrap();
        let mut stdin: &[u8] = b"\xff\xfe";
        let err = resolve(fields, &mut stdin, &mut no_prompt).unwrap_err();
        assert!(err.message.contains("not UTF-8"));
    }
}
