//! `.env` files: `KEY=VALUE` lines, `export ` allowed, `#` comments (whole
//! lines, or after ` #` in an unquoted value), a value in single or double
//! quotes taken as it is between them. Read by `vault import env` and
//! `vault exec --env-file`, and rewritten in place (value by value) by
//! `vault import env --adopt/--undo`. A value may be a reference,
//! `vault://NAME/FIELD`, which `vault exec --env-file` resolves.

use std::ops::Range;

use vault_protocol::credential::is_env_name;
use zeroize::Zeroizing;

/// The scheme of a reference.
pub const SCHEME: &str = "vault://";

/// One `KEY=VALUE` line.
pub struct Entry {
    /// 1-based line number.
    pub line: usize,
    pub key: String,
    /// The value (quotes taken off); wiped on drop.
    pub value: Zeroizing<String>,
    /// Where the value stands in the file's text, quotes included, inline
    /// comment not.
    pub span: Range<usize>,
}

/// Never the value.
impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("line", &self.line)
            .field("key", &self.key)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// The entries of a `.env` file, in order, or which line is wrong (`what`
/// names the file in the message; the caller says what follows from it).
pub fn parse(text: &str, what: &str) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    for (n, raw) in text.split_inclusive('\n').enumerate() {
        let start = at;
        at += raw.len();
        let body = raw.trim_end_matches(['\n', '\r']);
        let lead = body.len() - body.trim_start().len();
        let line = body.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let after_export = match line.strip_prefix("export ") {
            Some(rest) => lead + "export ".len() + (rest.len() - rest.trim_start().len()),
            None => lead,
        };
        let rest = &body[after_export..];
        let Some((key, value)) = rest.split_once('=') else {
            return Err(format!("{what} line {}: expected KEY=VALUE", n + 1));
        };
        let key = key.trim();
        if !is_env_name(key) {
            // Never the text itself: a line of a PEM or base64 value that
            // lost its quotes would be shown.
            return Err(format!(
                "{what} line {}: what stands before '=' is not a variable name",
                n + 1
            ));
        }
        let value_at = after_export + rest.len() - value.len();
        let trimmed = value.trim_matches([' ', '\t']);
        let v_start = value_at + (value.len() - value.trim_start_matches([' ', '\t']).len());
        let (inner, span_len) = split_value(trimmed);
        out.push(Entry {
            line: n + 1,
            key: key.to_owned(),
            value: Zeroizing::new(inner.to_owned()),
            span: start + v_start..start + v_start + span_len,
        });
    }
    Ok(out)
}

/// A value as written (spaces and tabs around it taken off) → the value
/// and how long its written form is: `"…"` or `'…'` taken as it is between
/// the quotes, then an optional ` # comment`; unquoted, up to a `#` at its
/// start or after a space or tab.
fn split_value(v: &str) -> (&str, usize) {
    let comment_at = |s: &str| {
        s.char_indices()
            .find(|&(i, c)| c == '#' && (i == 0 || s[..i].ends_with([' ', '\t'])))
            .map(|(i, _)| i)
    };
    if let Some(q @ ('"' | '\'')) = v.chars().next()
        && let Some(close) = v[1..].find(q).map(|j| j + 1)
    {
        let after = &v[close + 1..];
        let after_trimmed = after.trim_start_matches([' ', '\t']);
        if after.is_empty() || (after_trimmed.starts_with('#') && after_trimmed.len() < after.len())
        {
            return (&v[1..close], close + 1);
        }
        // `"a"b"`: quoted from the first character to the last.
        if v.len() >= 2 && v.ends_with(q) {
            return (&v[1..v.len() - 1], v.len());
        }
    }
    let cut = comment_at(v).map_or(v, |i| &v[..i]);
    let value = cut.trim_end_matches([' ', '\t']);
    (value, value.len())
}

/// `vault://NAME/FIELD` → `(NAME, FIELD)` (a name may hold `/`; a field
/// does not).
pub fn reference(value: &str) -> Option<(&str, &str)> {
    let rest = value.strip_prefix(SCHEME)?;
    let (name, field) = rest.rsplit_once('/')?;
    (!name.is_empty() && !field.is_empty()).then_some((name, field))
}

/// The reference to `field` of credential `name`.
pub fn reference_to(name: &str, field: &str) -> String {
    format!("{SCHEME}{name}/{field}")
}

/// `value` as a `.env` value reads it back, here and in a shell that
/// sources the file: bare when every character is plain, else in single
/// quotes (literal everywhere), else in double quotes when nothing in it
/// means something there; `None` when neither can carry it (or it has a
/// newline).
pub fn quoted(value: &str) -> Option<String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:@%+=,".contains(c);
    if !value.is_empty() && value.chars().all(plain) {
        return Some(value.to_owned());
    }
    if value.contains(['\n', '\r']) {
        return None;
    }
    if !value.contains('\'') {
        Some(format!("'{value}'"))
    } else if !value.contains(['"', '$', '`', '\\']) {
        Some(format!("\"{value}\""))
    } else {
        None
    }
}

/// `text` with each `(span, new)` put in place of its span (spans in
/// order, not overlapping).
pub fn replace(text: &str, edits: &[(Range<usize>, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (span, new) in edits {
        out.push_str(&text[at..span.start]);
        out.push_str(new);
        // `K= # c` has an empty value right before its comment: a value
        // put there must not run into the `#`.
        if span.is_empty() && text[span.end..].starts_with('#') {
            out.push(' ');
        }
        at = span.end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each entry as (key, value, the text its span covers).
    fn spans(text: &str) -> Vec<(String, String, String)> {
        parse(text, ".env")
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e.key.clone(),
                    e.value.to_string(),
                    text[e.span.clone()].to_owned(),
                )
            })
            .collect()
    }

    /// Every value put back in its quoted form: the new text, and the
    /// values it reads as.
    fn written_back(text: &str) -> (String, Vec<String>) {
        let edits: Vec<_> = parse(text, ".env")
            .unwrap()
            .iter()
            .map(|e| (e.span.clone(), quoted(&e.value).unwrap()))
            .collect();
        let again = replace(text, &edits);
        let values = parse(&again, ".env")
            .unwrap()
            .iter()
            .map(|e| e.value.to_string())
            .collect();
        (again, values)
    }

    fn triples(t: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
        t.iter()
            .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned()))
            .collect()
    }

    #[test]
    fn values_are_found_where_they_stand_and_read_back_the_same() {
        let text = "# settings\r\nexport API_KEY=\"a b\"\nDEBUG=1 # inline\n  EMPTY=\nQ='x # y'\n";
        assert_eq!(
            spans(text),
            triples(&[
                ("API_KEY", "a b", "\"a b\""),
                ("DEBUG", "1", "1"),
                ("EMPTY", "", ""),
                ("Q", "x # y", "'x # y'"),
            ])
        );
        // Each value replaced by its quoted form parses to the same value.
        let (again, back) = written_back(text);
        assert_eq!(back, ["a b", "1", "", "x # y"]);
        assert!(again.starts_with("# settings\r\n") && again.contains("DEBUG=1 # inline\n"));
    }

    #[test]
    fn quotes_and_comments_read_as_sh_reads_them() {
        let text =
            "A=\"tok en\" # prod\nB='x' #c\nC=v\t# tab\nD= # only a comment\nE=\"a\"b\"\nF=a#b\n";
        assert_eq!(
            spans(text),
            triples(&[
                ("A", "tok en", "\"tok en\""),
                ("B", "x", "'x'"),
                ("C", "v", "v"),
                ("D", "", ""),
                ("E", "a\"b", "\"a\"b\""),
                ("F", "a#b", "a#b"),
            ])
        );
        // A value written back in place of a reference, comment kept,
        // reads back the same.
        let (again, back) = written_back(text);
        assert!(again.contains("A='tok en' # prod\n"), "{again}");
        assert_eq!(back, ["tok en", "x", "v", "", "a\"b", "a#b"]);
    }

    #[test]
    fn a_bad_line_is_named_never_shown() {
        let e = parse("MIIEv+QIB/ADAN==\n", ".env").unwrap_err();
        assert!(e.contains("line 1") && !e.contains("MIIE"), "{e}");
    }

    #[test]
    fn references_and_bad_lines() {
        assert_eq!(
            reference("vault://team/app-env/DB_URL"),
            Some(("team/app-env", "DB_URL"))
        );
        assert_eq!(reference("vault://app-env"), None);
        assert_eq!(reference("https://x/y"), None);
        assert!(
            parse("A=1\nnot a line\n", ".env")
                .unwrap_err()
                .contains("line 2")
        );
        assert!(
            parse("1A=1\n", ".env")
                .unwrap_err()
                .contains("not a variable name")
        );
        assert_eq!(quoted("both \" and '"), None);
        assert_eq!(quoted("it's"), Some("\"it's\"".to_owned()));
        assert_eq!(quoted("a b"), Some("'a b'".to_owned()));
        assert_eq!(quoted(""), Some("''".to_owned()));
    }
}
