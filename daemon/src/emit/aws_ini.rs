//! Pure merging of vault-managed sections into the AWS shared files
//! (`~/.aws/credentials`, `~/.aws/config`): the current text and the managed
//! entries in, the new text out. Only the vault's own sections change; every
//! other byte — comments, order, blank lines, unknown keys, indented nested
//! blocks such as `s3 =` — stays identical. What the vault writes follows the
//! grammar botocore accepts: ASCII, LF, `key = value` in lower case, no
//! inline comments, one section per name. What it reads is what botocore's
//! parser (Python's configparser) reads: a key line is split at its first
//! `=` or `:`.

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
        } else if split_entry(trimmed).is_some() && seen_section {
            None
        } else {
            return Err(MergeError::Unparseable { line: n + 1 });
        };
        out.push(Line { text, header });
    }
    Ok(out)
}

/// A `key = value` (or `key: value`) line split at its first `=` or `:`,
/// as configparser splits it; `None` when it has neither.
fn split_entry(line: &str) -> Option<(&str, &str)> {
    let at = line.find(['=', ':'])?;
    Some((&line[..at], &line[at + 1..]))
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
        out.push_str(&render_entry(key, value)?);
    }
    Ok(out)
}

/// Writes `sections` into `text`: a section the vault owns (named in
/// `owned`) is replaced where it stands, with everything up to the next
/// header but the comments after its last key line (they usually belong to
/// what follows, and stay, after one blank line); its blank lines are
/// written again as one; a new one is appended. A section that
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
    // Comment and blank lines met while skipping, since its last key line:
    // the comments at a skipped section's end are kept (they usually
    // belong to what follows, `# production` above `[prod]`).
    let mut pending: Vec<&str> = Vec::new();
    let keep_trailing = |out: &mut String, pending: &mut Vec<&str>, separate: &mut bool| {
        let first = pending.iter().position(|l| !l.trim().is_empty());
        if let Some(first) = first {
            separator(out, separate);
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            for l in &pending[first..] {
                out.push_str(l);
            }
            *separate = false;
        }
        pending.clear();
        first.is_some()
    };
    for line in &parsed {
        if let Some(name) = line.header {
            if skipping {
                separate |= replaced;
                if keep_trailing(&mut out, &mut pending, &mut separate) {
                    replaced = false;
                }
            }
            pending.clear();
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
        if skipping {
            let body = line.text.trim();
            let indented = line.text.starts_with([' ', '\t']) && !body.is_empty();
            if !indented && (body.is_empty() || body.starts_with(['#', ';'])) {
                pending.push(line.text);
            } else {
                pending.clear();
            }
            continue;
        }
        separator(&mut out, &mut separate);
        out.push_str(line.text);
    }
    if skipping {
        separate |= replaced;
        keep_trailing(&mut out, &mut pending, &mut separate);
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

/// Keys the vault owns inside one section that may be the user's (the
/// `region` of a keys binding's `[profile P]` in `~/.aws/config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedKeys {
    /// The name between the brackets.
    pub section: String,
    /// Each key the vault owns there, with the value it must have; `None`:
    /// no line for it.
    pub keys: Vec<(String, Option<String>)>,
    /// The vault created the section: it goes once nothing but blank lines
    /// is left in it.
    pub drop_empty: bool,
}

/// The key of a `key = value` line of a section's body, lower-cased as
/// botocore reads it; `None` for comments, blank and indented lines.
fn key_of(line: &Line<'_>) -> Option<String> {
    let body = line.text.trim_end_matches(['\n', '\r']);
    if line.header.is_some() || body.starts_with([' ', '\t']) {
        return None;
    }
    let trimmed = body.trim();
    if trimmed.is_empty() || trimmed.starts_with(['#', ';']) {
        return None;
    }
    let (key, _) = split_entry(trimmed)?;
    Some(key.trim().to_ascii_lowercase())
}

/// The line range of the first section named `name`: its header's index
/// and the index after its last line.
fn section_range(parsed: &[Line<'_>], name: &str) -> Option<(usize, usize)> {
    let start = parsed.iter().position(|l| l.header == Some(name))?;
    let end = parsed[start + 1..]
        .iter()
        .position(|l| l.header.is_some())
        .map_or(parsed.len(), |n| start + 1 + n);
    Some((start, end))
}

/// What `key` says in section `name` of `text`: `None` when there is no
/// such section, `Some(None)` when the section has no such key, else its
/// (first) value, trimmed.
pub fn key_value(text: &str, name: &str, key: &str) -> Result<Option<Option<String>>, MergeError> {
    let parsed = lines(text)?;
    let Some((start, end)) = section_range(&parsed, name) else {
        return Ok(None);
    };
    let key = key.to_ascii_lowercase();
    Ok(Some(parsed[start + 1..end].iter().find_map(|l| {
        (key_of(l).as_deref() == Some(key.as_str())).then(|| {
            let body = l.text.trim_end_matches(['\n', '\r']);
            split_entry(body).map_or("", |(_, v)| v).trim().to_owned()
        })
    })))
}

/// Writes the vault's keys into one section, leaving every other line of
/// it, and of the file, byte for byte where it is. A line of an owned key
/// is replaced where it stands (a second one of the same key, and lines
/// indented under it, go); a missing one is added after the section's last
/// key (or its header); a key whose value is `None` loses its lines. A
/// section that does not exist is appended (after one blank line of ours)
/// when there is something to write. With `drop_empty` (the vault made the
/// section), a section left with nothing but blank lines goes, with that
/// blank line before it: the file is as it was before (byte for byte when
/// it ended with a newline); blank lines after its keys, before a section
/// someone wrote after it, stay.
pub fn merge_keys(text: &str, owned: &OwnedKeys) -> Result<String, MergeError> {
    let parsed = lines(text)?;
    let mut rendered: Vec<(String, Option<String>)> = Vec::new();
    for (key, value) in &owned.keys {
        let line = match value {
            Some(v) => Some(render_entry(key, v)?),
            None => None,
        };
        rendered.push((key.to_ascii_lowercase(), line));
    }
    let Some((start, end)) = section_range(&parsed, &owned.section) else {
        if rendered.iter().all(|(_, l)| l.is_none()) {
            return Ok(text.to_owned());
        }
        let mut out = text.to_owned();
        if !out.is_empty() {
            if !out.ends_with('\n') {
                out.push('\n');
            }
            // Always exactly one: the one taken out with the section.
            out.push('\n');
        }
        out.push_str(&format!("[{}]\n", owned.section));
        for line in rendered.iter().filter_map(|(_, l)| l.as_deref()) {
            out.push_str(line);
        }
        return Ok(out);
    };
    // The section's body with the owned lines taken out (and each kept
    // line's index), then the owned lines put back.
    let mut body: Vec<String> = Vec::new();
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    // After the last key or indented line: where a new key goes.
    let mut insert_at = 0;
    let mut under_owned = false;
    for line in &parsed[start + 1..end] {
        let text = line.text;
        let indented = text.starts_with([' ', '\t']) && !text.trim().is_empty();
        if indented && under_owned {
            continue;
        }
        under_owned = false;
        let key = key_of(line);
        if let Some((k, new)) = key
            .as_ref()
            .and_then(|key| rendered.iter().find(|(k, _)| k == key))
        {
            under_owned = true;
            if let Some(new) = new.as_deref().filter(|_| placed.insert(k.as_str())) {
                body.push(new.to_owned());
                insert_at = body.len();
            }
            continue;
        }
        body.push(text.to_owned());
        if indented || key.is_some() {
            insert_at = body.len();
        }
    }
    let missing: Vec<String> = rendered
        .iter()
        .filter(|(k, l)| l.is_some() && !placed.contains(k.as_str()))
        .filter_map(|(_, l)| l.clone())
        .collect();
    if !missing.is_empty() {
        // A line before ours that has no newline (the end of the file).
        if insert_at > 0 && !body[insert_at - 1].ends_with('\n') {
            body[insert_at - 1].push('\n');
        }
        body.splice(insert_at..insert_at, missing);
    }
    let mut out = String::with_capacity(text.len() + 64);
    let drop = owned.drop_empty && body.iter().all(|l| l.trim().is_empty());
    // The blank line the vault put before a section it made goes with it
    // (one after it, when the section opened the file: the blank line put
    // before whatever came next).
    let (before, body) = match parsed[..start].split_last() {
        Some((last, rest)) if drop && last.text.trim().is_empty() => (rest, &body[..]),
        None if drop => (&parsed[..0], body.get(1..).unwrap_or_default()),
        _ => (&parsed[..start], &body[..]),
    };
    for line in before {
        out.push_str(line.text);
    }
    if !drop {
        let header = parsed[start].text;
        out.push_str(header);
        if !header.ends_with('\n') && !body.is_empty() {
            out.push('\n');
        }
    }
    for line in body {
        out.push_str(line);
    }
    for line in &parsed[end..] {
        out.push_str(line.text);
    }
    Ok(out)
}

/// `key = value\n`, or why the grammar cannot carry it.
fn render_entry(key: &str, value: &str) -> Result<String, MergeError> {
    let ok = |s: &str| s.is_ascii() && !s.contains(['\n', '\r']);
    if key.is_empty() || !ok(key) || !ok(value) || value.trim() != value {
        return Err(MergeError::BadValue {
            key: key.to_owned(),
        });
    }
    Ok(format!("{} = {value}\n", key.to_ascii_lowercase()))
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
    fn comments_after_a_replaced_or_removed_section_stay() {
        let text = "# mine\n[dev]\naws_access_key_id = A\n# inner\naws_secret_access_key = S\n\n\
                    # PRODUCTION: do not use\n\n[prod]\nregion = x\n";
        let taken = merge(text, &[section("dev", "V")], &set(&[]), &set(&[]), true).unwrap();
        assert_eq!(
            taken,
            "# mine\n[dev]\naws_access_key_id = AKIAVAULT\naws_secret_access_key = V\n\n\
             # PRODUCTION: do not use\n\n[prod]\nregion = x\n"
        );
        // Idempotent once owned; removal keeps them too.
        let again = merge(
            &taken,
            &[section("dev", "V")],
            &set(&[]),
            &set(&["dev"]),
            false,
        )
        .unwrap();
        assert_eq!(again, taken);
        let removed = merge(&taken, &[], &set(&["dev"]), &set(&["dev"]), false).unwrap();
        assert_eq!(
            removed,
            "# mine\n# PRODUCTION: do not use\n\n[prod]\nregion = x\n"
        );
        // At the end of the file as well.
        let last = "[dev]\naws_access_key_id = A\n\n# the end\n";
        let taken = merge(last, &[section("dev", "V")], &set(&[]), &set(&[]), true).unwrap();
        assert!(
            taken.ends_with("aws_secret_access_key = V\n\n# the end\n"),
            "{taken:?}"
        );
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

    fn region(section: &str, value: Option<&str>, drop_empty: bool) -> OwnedKeys {
        OwnedKeys {
            section: section.to_owned(),
            keys: vec![("region".to_owned(), value.map(str::to_owned))],
            drop_empty,
        }
    }

    const CONFIG: &str = "# my config\n[default]\nregion = us-east-1\n\n[profile dev]\n; kept by hand\noutput=json   \ns3 =\n    addressing_style = path\ncli_pager =\n\n[profile other]\noutput = text\n";

    #[test]
    fn our_key_is_added_to_a_users_section_and_only_it_changes() {
        let added = merge_keys(CONFIG, &region("profile dev", Some("eu-west-1"), false)).unwrap();
        // After the section's last key (and the block under `s3`), before
        // its trailing blank line; every user byte where it was.
        assert_eq!(
            added,
            CONFIG.replace("cli_pager =\n", "cli_pager =\nregion = eu-west-1\n")
        );
        assert_eq!(
            key_value(&added, "profile dev", "region").unwrap(),
            Some(Some("eu-west-1".into()))
        );
        // Idempotent: the file now holds what we would write.
        let again = merge_keys(&added, &region("profile dev", Some("eu-west-1"), false)).unwrap();
        assert_eq!(again, added);
        // A new value replaces our line where it stands.
        let moved = added.replace("region = eu-west-1\n", "region = eu-west-1\noutput2 = x\n");
        let updated =
            merge_keys(&moved, &region("profile dev", Some("ap-south-1"), false)).unwrap();
        assert_eq!(updated, moved.replace("eu-west-1", "ap-south-1"));
        // Removing our key gives the user's bytes back exactly.
        assert_eq!(
            merge_keys(&added, &region("profile dev", None, false)).unwrap(),
            CONFIG
        );
        // The user's own keys in the section (and [default]'s region) are
        // never ours: changing them changes nothing we compare.
        let user_edit = added.replace("output=json   ", "output = yaml");
        assert_eq!(
            merge_keys(&user_edit, &region("profile dev", Some("eu-west-1"), false)).unwrap(),
            user_edit
        );
    }

    #[test]
    fn our_section_is_made_when_absent_and_goes_when_emptied() {
        let made = merge_keys(CONFIG, &region("profile new", Some("eu-west-1"), true)).unwrap();
        assert_eq!(
            made,
            format!("{CONFIG}\n[profile new]\nregion = eu-west-1\n")
        );
        assert_eq!(
            merge_keys(&made, &region("profile new", None, true)).unwrap(),
            CONFIG,
            "the section goes with our key, and with the blank line we put before it"
        );
        // Whatever blank lines the file ended with, it gets them back.
        for end in ["", "\n", "\n\n", "\r\n\r\n"] {
            let file = format!("{CONFIG}{end}");
            let made = merge_keys(&file, &region("profile new", Some("auto"), true)).unwrap();
            assert!(
                made.ends_with("\n\n[profile new]\nregion = auto\n"),
                "{made:?}"
            );
            assert_eq!(
                merge_keys(&made, &region("profile new", None, true)).unwrap(),
                file
            );
        }
        // A section someone wrote after ours keeps its blank line.
        let after = format!("{made}\n[profile later]\noutput = json\n");
        assert_eq!(
            merge_keys(&after, &region("profile new", None, true)).unwrap(),
            format!("{CONFIG}\n[profile later]\noutput = json\n")
        );
        // Ours opened the file: the blank line after it goes instead.
        let first = "[profile new]\nregion = auto\n\n[profile later]\noutput = json\n";
        assert_eq!(
            merge_keys(first, &region("profile new", None, true)).unwrap(),
            "[profile later]\noutput = json\n"
        );
        // Nothing to write: nothing made.
        assert_eq!(
            merge_keys(CONFIG, &region("profile new", None, true)).unwrap(),
            CONFIG
        );
        // The user added a key to the section we made: only our key goes.
        let shared = made.clone() + "output = json\n";
        assert_eq!(
            merge_keys(&shared, &region("profile new", None, true)).unwrap(),
            format!("{CONFIG}\n[profile new]\noutput = json\n")
        );
        // A new file.
        assert_eq!(
            merge_keys("", &region("default", Some("us-west-2"), true)).unwrap(),
            "[default]\nregion = us-west-2\n"
        );
    }

    #[test]
    fn key_colon_value_lines_are_read_as_configparser_reads_them() {
        // botocore's parser (configparser) splits a line at its first `=`
        // or `:`; such a file is the user's and must not stop a merge.
        let colon = "[profile dev]\noutput: json\nregion: us-east-1\nurl: http://x?a=b\n";
        assert_eq!(
            key_value(colon, "profile dev", "region").unwrap(),
            Some(Some("us-east-1".into()))
        );
        assert_eq!(
            key_value(colon, "profile dev", "url").unwrap(),
            Some(Some("http://x?a=b".into()))
        );
        assert_eq!(
            key_value("[p]\na=b: c\n", "p", "a").unwrap(),
            Some(Some("b: c".into())),
            "the first delimiter splits"
        );
        let mine = "[profile np]\noutput: json\n";
        let added = merge_keys(mine, &region("profile np", Some("eu-west-1"), false)).unwrap();
        assert_eq!(added, format!("{mine}region = eu-west-1\n"));
        assert_eq!(
            merge_keys(&added, &region("profile np", None, false)).unwrap(),
            mine
        );
        // Our key written `region:` by hand is still our key: replaced.
        assert_eq!(
            merge_keys(
                "[profile np]\nregion: x\n",
                &region("profile np", Some("auto"), false)
            )
            .unwrap(),
            "[profile np]\nregion = auto\n"
        );
        // The whole-section merge keeps such lines byte for byte.
        let merged = merge(colon, &[section("v", "s")], &set(&[]), &set(&[]), false).unwrap();
        assert!(merged.starts_with(colon));
        assert_eq!(section_names(&merged).unwrap(), ["profile dev", "v"]);
    }

    #[test]
    fn drift_of_our_key_shows_as_a_difference_and_duplicates_go() {
        let ours = merge_keys(CONFIG, &region("profile dev", Some("eu-west-1"), false)).unwrap();
        for edited in [
            ours.replace("region = eu-west-1", "region = us-east-2"),
            ours.replace("region = eu-west-1\n", ""),
            ours.replace("region = eu-west-1", "Region=eu-west-1"),
        ] {
            let merged =
                merge_keys(&edited, &region("profile dev", Some("eu-west-1"), false)).unwrap();
            assert_ne!(merged, edited, "drift is a difference: {edited:?}");
            assert_eq!(merged, ours, "and a repair puts ours back");
        }
        // A second region line in the section (ours is the key) goes.
        let twice = ours.replace("output=json", "region = x\noutput=json");
        assert_eq!(
            merge_keys(&twice, &region("profile dev", Some("eu-west-1"), false)).unwrap(),
            CONFIG.replace("output=json", "region = eu-west-1\noutput=json")
        );
    }

    #[test]
    fn a_users_region_is_read_and_crlf_and_bad_values_are_handled() {
        assert_eq!(
            key_value(CONFIG, "default", "region").unwrap(),
            Some(Some("us-east-1".into()))
        );
        assert_eq!(
            key_value(CONFIG, "profile other", "region").unwrap(),
            Some(None)
        );
        assert_eq!(key_value(CONFIG, "profile nope", "region").unwrap(), None);
        assert!(matches!(
            key_value("[a]\nwords\n", "a", "region"),
            Err(MergeError::Unparseable { line: 2 })
        ));
        let crlf = "[profile c]\r\noutput = json\r\n";
        let merged = merge_keys(crlf, &region("profile c", Some("eu-west-1"), false)).unwrap();
        assert_eq!(merged, format!("{crlf}region = eu-west-1\n"));
        assert_eq!(
            merge_keys(&merged, &region("profile c", None, false)).unwrap(),
            crlf
        );
        // No newline at the end of the file.
        let cut = "[profile c]\noutput = json";
        assert_eq!(
            merge_keys(cut, &region("profile c", Some("eu-west-1"), false)).unwrap(),
            "[profile c]\noutput = json\nregion = eu-west-1\n"
        );
        assert!(matches!(
            merge_keys(
                CONFIG,
                &region("profile dev", Some("eu-west-1\n[x]"), false)
            ),
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
            (key, value).prop_map(|(k, v)| format!("{k}: {v}\n")),
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
        fn an_owned_key_comes_and_goes_leaving_every_user_byte(
            file in user_file(),
            pick in any::<prop::sample::Index>(),
            fresh in any::<bool>(),
            v1 in "[a-z]{2}-[a-z]{4,9}-[0-9]",
            v2 in "[a-z]{2}-[a-z]{4,9}-[0-9]",
        ) {
            let names = section_names(&file).unwrap();
            let section = if fresh || names.is_empty() {
                "profile vault-p".to_owned()
            } else {
                names[pick.index(names.len())].clone()
            };
            let existed = names.contains(&section);
            // A key the user file never has (no digits in its keys).
            let owned = |v: Option<&str>| OwnedKeys {
                section: section.clone(),
                keys: vec![("key0".to_owned(), v.map(str::to_owned))],
                drop_empty: !existed,
            };
            let t1 = merge_keys(&file, &owned(Some(&v1))).unwrap();
            prop_assert_eq!(key_value(&t1, &section, "key0").unwrap(), Some(Some(v1.clone())));
            prop_assert_eq!(&merge_keys(&t1, &owned(Some(&v1))).unwrap(), &t1, "idempotent");
            let ours = format!("key0 = {v1}\n");
            let without: String = t1.split_inclusive('\n').filter(|l| *l != ours).collect();
            if existed {
                prop_assert_eq!(without.trim_end_matches('\n'), file.trim_end_matches('\n'));
            } else {
                prop_assert!(without.starts_with(file.trim_end_matches('\n')));
            }
            let t2 = merge_keys(&t1, &owned(Some(&v2))).unwrap();
            prop_assert_eq!(&t2, &t1.replace(&ours, &format!("key0 = {v2}\n")));
            let t3 = merge_keys(&t2, &owned(None)).unwrap();
            prop_assert_eq!(t3.trim_end_matches('\n'), file.trim_end_matches('\n'));
            if file.ends_with('\n') || file.is_empty() {
                prop_assert_eq!(&t3, &file, "the user's bytes back exactly");
            }
        }

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
