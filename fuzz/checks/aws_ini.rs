//! `aws_ini_merge`: `vault_daemon::emit::aws_ini::merge` driven like the
//! engine drives it (daemon/src/engine/emitters.rs): a user's file, then a
//! sequence of emits (with or without `--force`), rotations (an emit of a
//! name the vault owns) and removals, the set of owned sections kept as the
//! engine's bindings would be. Input layout: `input.rs`.
//!
//! After every merge that succeeds:
//! - the output parses again (`section_names`);
//! - every line of the original file that is not inside a section the vault
//!   has owned is still there, byte for byte and in order (blank lines
//!   aside, which the merge adds as separators), and the file up to the
//!   first such section is an unchanged prefix;
//! - each owned section appears once, holding exactly what was written, in
//!   ASCII with LF endings; a removed one is gone;
//! - merging the same thing again changes nothing (idempotent);
//! - a section of the user's is never taken without `--force`.
//!
//! A merge that fails must fail for the reason it gives: `Unparseable` only
//! when `section_names` refuses the text too, `NotOwned` only for a user's
//! section without `--force`, `BadValue` only for a value the grammar
//! cannot carry.

use std::collections::{BTreeMap, BTreeSet};

use vault_daemon::emit::aws_ini::{self, MergeError, Section};

use crate::input::{self, Kind};

/// The vault's own names for slots 0..=2 (`profile P` is how `--process`
/// names a config-file section).
const NAMES: [&str; 3] = ["vault-0", "vault-1", "profile vault-2"];

/// The whole check of one input.
pub fn check(data: &[u8]) {
    let (orig, ops) = input::split(data);
    // Names already in the file the engine would accept as a profile.
    let existing: Vec<String> = aws_ini::section_names(&orig)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| engine_accepts(n))
        .collect();
    let mut text = orig.clone();
    let mut owned = BTreeSet::new();
    let mut claimed = BTreeSet::new();
    let mut written: BTreeMap<String, String> = BTreeMap::new();
    for op in ops {
        let name = match op.slot {
            3 if !existing.is_empty() => existing[usize::from(op.pick) % existing.len()].clone(),
            3 => NAMES[0].to_owned(),
            n => NAMES[usize::from(n)].to_owned(),
        };
        let present = headers(&text).any(|(_, h)| h == Some(name.as_str()));
        let result = match op.kind {
            Kind::Emit { force } => {
                let section = section(&name, &op.value, op.flags);
                let result = aws_ini::merge(
                    &text,
                    std::slice::from_ref(&section),
                    &none(),
                    &owned,
                    force,
                );
                match &result {
                    Ok(out) => {
                        assert!(
                            force || owned.contains(&name) || !present,
                            "[{name}] of the user was taken without --force"
                        );
                        let mut now_owned = owned.clone();
                        now_owned.insert(name.clone());
                        let again = aws_ini::merge(
                            out,
                            std::slice::from_ref(&section),
                            &none(),
                            &now_owned,
                            false,
                        );
                        assert_eq!(again.as_ref(), Ok(out), "emitting twice is not idempotent");
                        owned = now_owned;
                        claimed.insert(name.clone());
                        written.insert(name.clone(), render(&section));
                    }
                    Err(MergeError::NotOwned { name: n }) => {
                        assert_eq!(n, &name);
                        assert!(
                            present && !force && !owned.contains(&name),
                            "NotOwned for {n}"
                        );
                    }
                    Err(MergeError::BadValue { key }) => assert!(
                        section
                            .entries
                            .iter()
                            .any(|(k, v)| k == key && !grammar_carries(k, v)),
                        "BadValue for {key}, which the grammar carries"
                    ),
                    Err(MergeError::Unparseable { .. }) => {}
                }
                result
            }
            Kind::Remove => {
                let remove: BTreeSet<String> = [name.clone()].into();
                let result = aws_ini::merge(&text, &[], &remove, &owned, false);
                if let Ok(out) = &result {
                    let again = aws_ini::merge(out, &[], &remove, &owned, false);
                    assert_eq!(again.as_ref(), Ok(out), "removing twice is not idempotent");
                    if !owned.contains(&name) {
                        assert_eq!(out, &text, "removing a section the vault does not own");
                    }
                    owned.remove(&name);
                    written.remove(&name);
                }
                result
            }
        };
        match result {
            Ok(out) => text = out,
            Err(MergeError::Unparseable { line }) => {
                assert!(
                    aws_ini::section_names(&text).is_err(),
                    "Unparseable (line {line}) for a text section_names reads"
                );
                assert!(line >= 1 && line <= text.split_inclusive('\n').count());
                // Nothing is ever written to such a file: every further
                // merge fails the same way.
                return;
            }
            Err(_) => continue,
        }
        check_state(&orig, &text, &owned, &claimed, &written);
    }
}

fn none() -> BTreeSet<String> {
    BTreeSet::new()
}

/// What an emit of `name` writes: the keys of an aws credential, or with
/// flag 2 a `credential_process` line (`--process`).
fn section(name: &str, value: &str, flags: u8) -> Section {
    let mut entries = Vec::new();
    if flags & 2 != 0 {
        entries.push((
            "credential_process".to_owned(),
            format!("/usr/bin/vault aws-process {value}"),
        ));
    } else {
        entries.push(("aws_access_key_id".to_owned(), "AKIAVAULTFUZZ".to_owned()));
        entries.push(("aws_secret_access_key".to_owned(), value.to_owned()));
        if flags & 1 != 0 {
            entries.push(("aws_session_token".to_owned(), format!("{value}token")));
        }
    }
    Section {
        name: name.to_owned(),
        entries,
    }
}

/// The text of a section as the vault writes it, without blank lines.
fn render(section: &Section) -> String {
    let mut out = format!("[{}]\n", section.name);
    for (k, v) in &section.entries {
        out.push_str(&format!("{} = {v}\n", k.to_ascii_lowercase()));
    }
    out
}

/// What the AWS grammar can carry as a key and its value (docs/emit.md).
fn grammar_carries(key: &str, value: &str) -> bool {
    let one_ascii_line = |s: &str| s.is_ascii() && !s.contains(['\n', '\r']);
    !key.is_empty() && one_ascii_line(key) && one_ascii_line(value) && value.trim() == value
}

/// The engine's rule for a profile name (`valid_profile`), with the config
/// file's `profile ` prefix.
fn engine_accepts(name: &str) -> bool {
    let valid = |p: &str| {
        !p.is_empty()
            && p.len() <= 128
            && p.chars()
                .all(|c| c.is_ascii_graphic() && !matches!(c, '[' | ']' | '#' | ';' | '='))
    };
    valid(name) || name.strip_prefix("profile ").is_some_and(valid)
}

/// The section name a line opens, by the grammar of `aws_ini`: not
/// indented, not a comment, `[...]` once trimmed.
fn header(line: &str) -> Option<&str> {
    let body = line.trim_end_matches(['\n', '\r']);
    let trimmed = body.trim();
    if body.starts_with([' ', '\t']) || trimmed.starts_with(['#', ';']) {
        return None;
    }
    trimmed
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .map(str::trim)
}

/// Each line (with its ending) and the section it is in (`None` before the
/// first header).
fn sections(text: &str) -> Vec<(Option<&str>, &str)> {
    let mut current = None;
    text.split_inclusive('\n')
        .map(|line| {
            if let Some(name) = header(line) {
                current = Some(name);
            }
            (current, line)
        })
        .collect()
}

/// Each line and the header it opens, if any.
fn headers(text: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    text.split_inclusive('\n').map(|l| (l, header(l)))
}

/// The lines outside `names`' sections, without line feeds, blank lines
/// dropped — blank as the merge (and botocore's configparser) sees them:
/// nothing but whitespace, a vertical tab or form feed among it. Such a
/// line at the end of a section the vault replaces stays with what follows,
/// like an empty one.
fn outside<'a>(text: &'a str, names: &BTreeSet<String>) -> Vec<&'a str> {
    sections(text)
        .into_iter()
        .filter(|(s, _)| s.is_none_or(|s| !names.contains(s)))
        .map(|(_, l)| l.trim_end_matches('\n'))
        .filter(|l| !l.trim().is_empty())
        .collect()
}

fn check_state(
    orig: &str,
    text: &str,
    owned: &BTreeSet<String>,
    claimed: &BTreeSet<String>,
    written: &BTreeMap<String, String>,
) {
    let names = aws_ini::section_names(text)
        .unwrap_or_else(|e| panic!("the merged text does not parse again ({e:?}):\n{text}"));

    // The user's lines, in order, byte for byte. The comments at the end
    // of a section the vault replaced or removed stay (they belong to what
    // follows), so a removal may add such a comment, one of the user's,
    // to what went before: any other line more, or one missing, fails.
    let (before, after) = (outside(orig, claimed), outside(text, claimed));
    let mut rest = before.iter().peekable();
    for line in &after {
        if rest.peek() == Some(&line) {
            rest.next();
        } else {
            let comment = line.trim_start().starts_with(['#', ';']);
            assert!(
                // Split at line feeds as `outside` does: a CRLF line keeps
                // its carriage return on both sides.
                comment && orig.split('\n').any(|l| l == *line),
                "a line that is not the user's appeared: {line:?}\n--- before\n{orig}\n--- after\n{text}"
            );
        }
    }
    assert!(
        rest.peek().is_none(),
        "a line of the user changed, moved or went: {:?}\n--- before\n{orig}\n--- after\n{text}",
        rest.peek()
    );
    let untouched = headers(orig)
        .take_while(|(_, h)| h.is_none_or(|h| !claimed.contains(h)))
        .map(|(l, _)| l)
        .collect::<String>();
    assert!(
        text.starts_with(untouched.trim_end_matches('\n')),
        "the user's text before the vault's first section is not a prefix"
    );

    // The vault's sections: once each, exactly what was written, ASCII/LF.
    for name in claimed {
        let count = names.iter().filter(|n| *n == name).count();
        assert_eq!(
            count,
            usize::from(owned.contains(name)),
            "sections named [{name}]"
        );
    }
    for (name, expected) in written {
        let lines: Vec<&str> = sections(text)
            .into_iter()
            .filter(|(s, _)| *s == Some(name.as_str()))
            .map(|(_, l)| l)
            .collect();
        // Comments after its keys are the user's, as they wrote them (a
        // replaced section keeps them: they belong to what follows).
        let ours: Vec<&str> = lines
            .into_iter()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with(['#', ';']))
            .collect();
        for line in &ours {
            assert!(
                line.is_ascii() && !line.contains('\r') && line.ends_with('\n'),
                "[{name}] has a line that is not ASCII/LF: {line:?}"
            );
        }
        let body: String = ours.into_iter().collect();
        assert_eq!(&body, expected, "[{name}] does not hold what was written");
    }
}
