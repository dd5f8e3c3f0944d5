//! Pure merging of vault-managed sections into the AWS shared files
//! (`~/.aws/credentials`, `~/.aws/config`): the current text and the managed
//! entries in, the new text out. Only the vault's own sections change; every
//! other byte — comments, order, blank lines, unknown keys, indented nested
//! blocks such as `s3 =` — stays identical. What the vault writes follows the
//! grammar botocore accepts: ASCII, LF, `key = value` in lower case, no
//! inline comments, one section per name.

use std::collections::BTreeSet;
use std::fmt;

/// One section the vault manages: its header name (`prod`, or `profile
/// prod` in the config file) and its keys in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The name between the brackets.
    pub name: String,
    /// `key = value` pairs, in the order written.
    pub entries: Vec<(String, String)>,
}

/// Why a file was not rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeError {
    /// A line that is not a section header, a `key = value`, a comment, a
    /// blank line or an indented continuation.
    Unparseable {
        /// 1-based line number.
        line: usize,
    },
    /// The section exists and the vault did not write it.
    NotOwned {
        /// The section's name.
        name: String,
    },
    /// A value the grammar cannot carry (not ASCII, a newline, or empty
    /// key).
    BadValue {
        /// The key.
        key: String,
    },
}

impl fmt::Display for MergeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MergeError::Unparseable { line } => write!(
                f,
                "line {line} is not '[section]', 'key = value', a comment or an indented line; \
                 the file was left as it is: fix that line and retry"
            ),
            MergeError::NotOwned { name } => write!(
                f,
                "[{name}] exists and was not written by vault: choose another profile, or \
                 --force to replace it (a backup is kept)"
            ),
            MergeError::BadValue { key } => write!(
                f,
                "the value of {key} cannot be written to an AWS file (ASCII on one line only)"
            ),
        }
    }
}

/// A line of the file with its ending, and what it is.
#[derive(Debug)]
struct Line<'a> {
    text: &'a str,
    /// The section this line opens, when it is a header.
    header: Option<&'a str>,
}

fn lines(text: &str) -> Result<Vec<Line<'_>>, MergeError> {
    let mut out = Vec::new();
    let mut seen_section = false;
    for (n, text) in text.split_inclusive('\n').enumerate() {
        let body = text.trim_end_matches(['\n', '\r']);
        let trimmed = body.trim();
        let skipped = body.starts_with([' ', '\t'])
            || trimmed.is_empty()
            || trimmed.starts_with('#')
            || trimmed.starts_with(';');
        let header = if skipped {
            None
        } else if let Some(name) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            seen_section = true;
            Some(name.trim())
        } else if trimmed.contains('=') && seen_section {
            None
        } else {
            return Err(MergeError::Unparseable { line: n + 1 });
        };
        out.push(Line { text, header });
    }
    Ok(out)
}

/// The section names of `text`, in order (duplicates kept).
pub fn section_names(text: &str) -> Result<Vec<String>, MergeError> {
    Ok(lines(text)?
        .iter()
        .filter_map(|l| l.header.map(str::to_owned))
        .collect())
}

fn render(section: &Section) -> Result<String, MergeError> {
    let mut out = format!("[{}]\n", section.name);
    for (key, value) in &section.entries {
        let ok = |s: &str| s.is_ascii() && !s.contains(['\n', '\r']);
        if key.is_empty() || !ok(key) || !ok(value) || value.trim() != value {
            return Err(MergeError::BadValue { key: key.clone() });
        }
        out.push_str(&format!("{} = {value}\n", key.to_ascii_lowercase()));
    }
    Ok(out)
}

/// Writes `sections` into `text`: a section the vault owns (named in
/// `owned`) is replaced where it stands, with everything up to the next
/// header (so its own trailing blank lines and comments go too, and are
/// written again as one blank line); a new one is appended. A section that
/// exists and is not owned is an error unless `force`. Sections named in
/// `remove` that the vault owns are dropped. Everything else is copied byte
/// for byte.
pub fn merge(
    text: &str,
    sections: &[Section],
    remove: &BTreeSet<String>,
    owned: &BTreeSet<String>,
    force: bool,
) -> Result<String, MergeError> {
    let parsed = lines(text)?;
    for s in sections {
        if !owned.contains(&s.name)
            && !force
            && parsed.iter().any(|l| l.header == Some(s.name.as_str()))
        {
            return Err(MergeError::NotOwned {
                name: s.name.clone(),
            });
        }
    }
    let mut rendered = Vec::new();
    for s in sections {
        rendered.push((s.name.as_str(), render(s)?));
    }
    let replace = |name: &str| {
        rendered
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| r.as_str())
    };
    let mut out = String::with_capacity(text.len() + 256);
    let mut written: BTreeSet<&str> = BTreeSet::new();
    // Inside a section being replaced or removed: skip its lines.
    let mut skipping = false;
    let mut replaced = false;
    // A blank line is owed between a rewritten section and whatever is
    // written next; owed, not written at once, so that nothing is added
    // when all that follows is skipped (a removed section, a repeated
    // header of a rewritten one): merging again must change nothing.
    let mut separate = false;
    let separator = |out: &mut String, separate: &mut bool| {
        if std::mem::take(separate) && !out.ends_with("\n\n") {
            out.push('\n');
        }
    };
    for line in &parsed {
        if let Some(name) = line.header {
            separate |= replaced;
            skipping = false;
            replaced = false;
            let ours = owned.contains(name) || (force && replace(name).is_some());
            if ours && remove.contains(name) {
                skipping = true;
                continue;
            }
            if let Some(r) = replace(name).filter(|_| ours) {
                if written.insert(name) {
                    separator(&mut out, &mut separate);
                    if !out.is_empty() && !out.ends_with('\n') {
                        out.push('\n');
                    }
                    out.push_str(r);
                    replaced = true;
                }
                skipping = true;
                continue;
            }
        }
        if !skipping {
            separator(&mut out, &mut separate);
            out.push_str(line.text);
        }
    }
    for (name, r) in &rendered {
        if written.contains(name) {
            continue;
        }
        if !out.is_empty() {
            if !out.ends_with('\n') {
                out.push('\n');
            }
            if !out.ends_with("\n\n") {
                out.push('\n');
            }
        }
        out.push_str(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn section(name: &str, secret: &str) -> Section {
        Section {
            name: name.to_owned(),
            entries: vec![
                ("aws_access_key_id".into(), "AKIAVAULT".into()),
                ("aws_secret_access_key".into(), secret.into()),
            ],
        }
    }

    const USER: &str = "# my profiles\n[default]\naws_access_key_id=AKIAUSER ; not a comment in values\naws_secret_access_key = user\n\n[dev]\nregion=eu-west-1\ns3 =\n    max_concurrent_requests = 20\n    addressing_style = path\n";

    #[test]
    fn appends_then_replaces_in_place_and_removes() {
        let owned = set(&["vault-p"]);
        let once = merge(
            USER,
            &[section("vault-p", "s1")],
            &set(&[]),
            &set(&[]),
            false,
        )
        .unwrap();
        assert!(once.starts_with(USER), "the user's text is untouched");
        assert!(once.ends_with(
            "\n\n[vault-p]\naws_access_key_id = AKIAVAULT\naws_secret_access_key = s1\n"
        ));
        let twice = merge(&once, &[section("vault-p", "s2")], &set(&[]), &owned, false).unwrap();
        assert_eq!(twice, once.replace("= s1", "= s2"));
        let gone = merge(&twice, &[], &owned, &owned, false).unwrap();
        assert_eq!(gone, format!("{USER}\n"));
    }

    #[test]
    fn a_section_of_the_user_is_not_taken_without_force() {
        let err = merge(USER, &[section("dev", "x")], &set(&[]), &set(&[]), false).unwrap_err();
        assert_eq!(err, MergeError::NotOwned { name: "dev".into() });
        let forced = merge(USER, &[section("dev", "x")], &set(&[]), &set(&[]), true).unwrap();
        assert!(
            !forced.contains("max_concurrent_requests"),
            "--force replaces the section"
        );
        assert!(forced.starts_with("# my profiles\n[default]\n"));
    }

    #[test]
    fn unparseable_files_are_refused() {
        for bad in [
            "key = before any section\n",
            "[a]\njust words\n",
            "[a]\nx=1\n}\n",
        ] {
            assert!(
                matches!(
                    merge(bad, &[section("v", "s")], &set(&[]), &set(&[]), false),
                    Err(MergeError::Unparseable { .. })
                ),
                "{bad:?}"
            );
        }
        let crlf = "[a]\r\nx = 1\r\n";
        let merged = merge(crlf, &[section("v", "s")], &set(&[]), &set(&[]), false).unwrap();
        assert!(
            merged.starts_with(crlf),
            "CRLF lines of the user are kept as they are"
        );
    }

    #[test]
    fn values_the_grammar_cannot_carry_are_refused() {
        let s = Section {
            name: "v".into(),
            entries: vec![("aws_secret_access_key".into(), "two\nlines".into())],
        };
        assert!(matches!(
            merge("", &[s], &set(&[]), &set(&[]), false),
            Err(MergeError::BadValue { .. })
        ));
    }

    /// A user's file: sections with keys, comments, blank lines and nested
    /// blocks, in arbitrary order; names never start with `vault`.
    fn user_file() -> impl Strategy<Value = String> {
        let key = "[a-z_]{1,12}";
        let value = "[ -~&&[^\\n]]{0,20}";
        let body_line = prop_oneof![
            (key, value).prop_map(|(k, v)| format!("{k} = {v}\n")),
            (key, value).prop_map(|(k, v)| format!("{k}={v}\n")),
            value.prop_map(|v| format!("# {v}\n")),
            value.prop_map(|v| format!("; {v}\n")),
            Just("\n".to_owned()),
            (key, key, value).prop_map(|(a, b, v)| format!("{a} =\n    {b} = {v}\n")),
        ];
        let section = (
            "[a-uw-z][a-z0-9-]{0,8}",
            prop::collection::vec(body_line, 0..6),
        )
            .prop_map(|(name, body)| format!("[{name}]\n{}", body.concat()));
        (
            prop::option::of("# [ -~]{0,30}\n"),
            prop::collection::vec(section, 0..6),
            any::<bool>(),
        )
            .prop_map(|(head, sections, cut_last_newline)| {
                let mut s = head.unwrap_or_default() + &sections.concat();
                if cut_last_newline && s.ends_with('\n') {
                    s.pop();
                }
                s
            })
    }

    #[derive(Debug, Clone)]
    enum Op {
        Emit(u8, String),
        Remove(u8),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![
                (0u8..3, "[A-Za-z0-9/+]{1,40}").prop_map(|(p, s)| Op::Emit(p, s)),
                (0u8..3).prop_map(Op::Remove),
            ],
            1..12,
        )
    }

    proptest! {
        #[test]
        fn user_lines_survive_any_sequence_of_emits_and_removes(file in user_file(), ops in ops()) {
            let user_lines: Vec<String> = file.split_inclusive('\n').map(|l| l.trim_end_matches('\n').to_owned()).collect();
            let mut text = file.clone();
            let mut owned = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Emit(p, secret) => {
                        let name = format!("vault-{p}");
                        text = merge(&text, &[section(&name, &secret)], &BTreeSet::new(), &owned, false).unwrap();
                        let written = format!("[{name}]\naws_access_key_id = AKIAVAULT\naws_secret_access_key = {secret}\n");
                        prop_assert!(text.contains(&written), "{} holds the new value", name);
                        owned.insert(name);
                    }
                    Op::Remove(p) => {
                        let name = format!("vault-{p}");
                        text = merge(&text, &[], &set(&[name.as_str()]), &owned, false).unwrap();
                        owned.remove(&name);
                    }
                }
                // Every user line is still there, in order, byte for byte.
                let vault_free: Vec<&str> = {
                    let mut keep = Vec::new();
                    let mut in_vault = false;
                    for l in text.split_inclusive('\n').map(|l| l.trim_end_matches('\n')) {
                        if l.starts_with('[') { in_vault = l.starts_with("[vault-"); }
                        if !in_vault { keep.push(l); }
                    }
                    keep
                };
                let non_blank = |v: &[&str]| v.iter().filter(|l| !l.is_empty()).map(|l| l.to_string()).collect::<Vec<_>>();
                let users: Vec<&str> = user_lines.iter().map(String::as_str).collect();
                prop_assert_eq!(non_blank(&vault_free), non_blank(&users));
                prop_assert!(text.starts_with(file.trim_end_matches('\n')), "the user's text is a prefix");
                // The output parses, and has one section per vault name.
                let names = section_names(&text).unwrap();
                for name in &owned {
                    prop_assert_eq!(names.iter().filter(|n| *n == name).count(), 1);
                }
                prop_assert!(text.is_ascii());
            }
        }
    }
}
