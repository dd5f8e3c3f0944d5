//! Pure merging of the vault's registry entries into `~/.docker/config.json`:
//! the current text and the vault's entries of one top-level object
//! (`auths` for logins, `credHelpers` for `--helper`) in, the new text out.
//! Only the members of that object the vault owns are inserted, replaced or
//! removed, by editing their byte spans; every other byte of the file —
//! other keys, other registries, formatting — stays identical.

use std::collections::BTreeSet;
use std::fmt;

/// Why the file was not rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerError {
    /// Not a JSON object (or `auths`/`credHelpers` is not an object).
    Unparseable(String),
    /// The registry has an entry the vault did not write (its name, and
    /// the object it is in).
    NotOwned(String),
}

impl fmt::Display for DockerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DockerError::Unparseable(why) => write!(
                f,
                "is not a docker config vault can edit ({why}); the file was left as it is: \
                 fix it and retry"
            ),
            DockerError::NotOwned(r) => write!(
                f,
                "has an entry for {r} that vault did not write: --force replaces it \
                 (a backup is kept)"
            ),
        }
    }
}

/// A member of an object: the span of its key's opening quote to its
/// value's end, and its key.
#[derive(Debug, Clone)]
struct Member {
    key: String,
    start: usize,
    value_start: usize,
    end: usize,
}

struct Scanner<'a> {
    s: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let start = self.i;
        if self.s.get(self.i) != Some(&b'"') {
            return Err(format!("a string was expected at byte {}", self.i));
        }
        self.i += 1;
        while self.i < self.s.len() {
            match self.s[self.i] {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    let raw =
                        std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?;
                    return serde_json::from_str(raw).map_err(|e| e.to_string());
                }
                _ => self.i += 1,
            }
        }
        Err("an unterminated string".into())
    }

    /// Skips one value (any type), checking only its nesting.
    fn value(&mut self) -> Result<(), String> {
        self.ws();
        match self.s.get(self.i) {
            Some(b'"') => self.string().map(drop),
            Some(b'{' | b'[') => {
                let mut depth = 0usize;
                while self.i < self.s.len() {
                    match self.s[self.i] {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Ok(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
                Err("an unterminated object or array".into())
            }
            Some(_) => {
                while self.i < self.s.len()
                    && !matches!(
                        self.s[self.i],
                        b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'
                    )
                {
                    self.i += 1;
                }
                Ok(())
            }
            None => Err("a value was expected".into()),
        }
    }

    /// The members of the object starting at `self.i`; leaves `self.i`
    /// after its closing brace. Returns (members, position of `}`).
    fn object(&mut self) -> Result<(Vec<Member>, usize), String> {
        self.ws();
        if self.s.get(self.i) != Some(&b'{') {
            return Err("an object was expected".into());
        }
        self.i += 1;
        let mut members = Vec::new();
        loop {
            self.ws();
            if self.s.get(self.i) == Some(&b'}') {
                let close = self.i;
                self.i += 1;
                return Ok((members, close));
            }
            if !members.is_empty() {
                if self.s.get(self.i) != Some(&b',') {
                    return Err(format!("',' or '}}' was expected at byte {}", self.i));
                }
                self.i += 1;
                self.ws();
            }
            let start = self.i;
            let key = self.string()?;
            self.ws();
            if self.s.get(self.i) != Some(&b':') {
                return Err(format!("':' was expected at byte {}", self.i));
            }
            self.i += 1;
            self.ws();
            let value_start = self.i;
            self.value()?;
            members.push(Member {
                key,
                start,
                value_start,
                end: self.i,
            });
        }
    }
}

/// The `auths` entry for a login: `{"auth": "<base64 user:password>"}`.
pub fn auth_entry(auth_b64: &str) -> String {
    format!(
        "{{\n\t\t\t\"auth\": {}\n\t\t}}",
        serde_json::Value::from(auth_b64)
    )
}

/// The `credHelpers` entry that sends docker to `docker-credential-vault`.
pub const HELPER_ENTRY: &str = "\"vault\"";

/// The top-level object holding logins.
pub const AUTHS: &str = "auths";
/// The top-level object naming a credential helper per registry.
pub const CRED_HELPERS: &str = "credHelpers";

/// Sets `entries` (registry → entry JSON text) and removes `remove` in the
/// `auths` object of `text`. A registry present and not in `owned` is an
/// error unless `force`. An empty or missing file becomes a new config.
pub fn merge(
    text: &str,
    entries: &[(String, String)],
    remove: &BTreeSet<String>,
    owned: &BTreeSet<String>,
    force: bool,
) -> Result<String, DockerError> {
    merge_in(text, AUTHS, entries, remove, owned, force)
}

/// [`merge`] for the top-level object `object` (`auths` or `credHelpers`).
pub fn merge_in(
    text: &str,
    object: &str,
    entries: &[(String, String)],
    remove: &BTreeSet<String>,
    owned: &BTreeSet<String>,
    force: bool,
) -> Result<String, DockerError> {
    let text = if text.trim().is_empty() { "{}\n" } else { text };
    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
        .map_err(|e| DockerError::Unparseable(e.to_string()))?;
    let mut out = text.to_owned();
    for (registry, entry) in entries {
        out = set_one(&out, object, registry, entry, owned, force)?;
    }
    for registry in remove.iter().filter(|r| owned.contains(*r)) {
        out = remove_one(&out, object, registry)?;
    }
    serde_json::from_str::<serde_json::Value>(&out)
        .map_err(|e| DockerError::Unparseable(format!("the result would not parse: {e}")))?;
    Ok(out)
}

fn top(text: &str) -> Result<(Vec<Member>, usize), DockerError> {
    Scanner {
        s: text.as_bytes(),
        i: 0,
    }
    .object()
    .map_err(DockerError::Unparseable)
}

/// The members of the top-level `object` and the position of its `}`;
/// `None` when absent.
fn members_of(text: &str, object: &str) -> Result<Option<(Vec<Member>, usize)>, DockerError> {
    let (members, _) = top(text)?;
    let Some(a) = members.iter().find(|m| m.key == object) else {
        return Ok(None);
    };
    let mut sc = Scanner {
        s: text.as_bytes(),
        i: a.value_start,
    };
    sc.object()
        .map(Some)
        .map_err(|_| DockerError::Unparseable(format!("{object} is not an object")))
}

/// Inserts `member` before the `}` at `close` of an object with `count`
/// members, after its last member.
fn insert(text: &str, members: &[Member], close: usize, member: &str, indent: &str) -> String {
    match members.last() {
        Some(last) => format!(
            "{},\n{indent}{member}{}",
            &text[..last.end],
            &text[last.end..]
        ),
        // An empty object: right after its `{`, keeping whatever was
        // between the braces after the new member (so removing it again
        // gives back the same bytes).
        None => {
            let open = text[..close].rfind('{').map_or(close, |p| p + 1);
            format!("{}\n{indent}{member}{}", &text[..open], &text[open..])
        }
    }
}

fn set_one(
    text: &str,
    object: &str,
    registry: &str,
    entry: &str,
    owned: &BTreeSet<String>,
    force: bool,
) -> Result<String, DockerError> {
    let key = serde_json::Value::from(registry).to_string();
    match members_of(text, object)? {
        Some((members, close)) => match members.iter().find(|m| m.key == registry) {
            Some(m) => {
                if !owned.contains(registry) && !force {
                    return Err(DockerError::NotOwned(registry.to_owned()));
                }
                Ok(format!(
                    "{}{entry}{}",
                    &text[..m.value_start],
                    &text[m.end..]
                ))
            }
            None => Ok(insert(
                text,
                &members,
                close,
                &format!("{key}: {entry}"),
                "\t\t",
            )),
        },
        None => {
            let (members, close) = top(text)?;
            let name = serde_json::Value::from(object);
            let member = format!("{name}: {{\n\t\t{key}: {entry}\n\t}}");
            Ok(insert(text, &members, close, &member, "\t"))
        }
    }
}

fn remove_one(text: &str, object: &str, registry: &str) -> Result<String, DockerError> {
    let Some((members, _)) = members_of(text, object)? else {
        return Ok(text.to_owned());
    };
    let Some(at) = members.iter().position(|m| m.key == registry) else {
        return Ok(text.to_owned());
    };
    let m = &members[at];
    // Take the separator with it: the comma before it, or after it when it
    // is the first member.
    let (from, to) = if at > 0 {
        (members[at - 1].end, m.end)
    } else if let Some(next) = members.get(1) {
        (m.start, next.start)
    } else {
        // The only member: leave `{}` with the whitespace before `}`.
        let open = text[..m.start].rfind('{').map_or(m.start, |p| p + 1);
        (open, m.end)
    };
    Ok(format!("{}{}", &text[..from], &text[to..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    const USER: &str = "{\n\t\"auths\": {\n\t\t\"ghcr.io\": {\n\t\t\t\"auth\": \"dXNlcjpwYXNz\"\n\t\t}\n\t},\n\t\"credsStore\": \"desktop\",\n\t\"currentContext\": \"colima\"\n}\n";

    #[test]
    fn adds_replaces_and_removes_only_the_vaults_entry() {
        let owned = set(&["nvcr.io"]);
        let one = merge(
            USER,
            &[("nvcr.io".into(), auth_entry("QQ=="))],
            &set(&[]),
            &set(&[]),
            false,
        )
        .unwrap();
        let v: Value = serde_json::from_str(&one).unwrap();
        assert_eq!(v["auths"]["nvcr.io"]["auth"], "QQ==");
        assert_eq!(v["auths"]["ghcr.io"]["auth"], "dXNlcjpwYXNz");
        assert!(
            one.ends_with("\t\"credsStore\": \"desktop\",\n\t\"currentContext\": \"colima\"\n}\n")
        );
        let two = merge(
            &one,
            &[("nvcr.io".into(), auth_entry("Qg=="))],
            &set(&[]),
            &owned,
            false,
        )
        .unwrap();
        assert_eq!(two, one.replace("QQ==", "Qg=="));
        let back = merge(&two, &[], &owned, &owned, false).unwrap();
        assert_eq!(back, USER, "removing restores the user's bytes");
    }

    #[test]
    fn a_users_registry_is_not_taken_and_bad_files_are_refused() {
        let err = merge(
            USER,
            &[("ghcr.io".into(), auth_entry("x"))],
            &set(&[]),
            &set(&[]),
            false,
        );
        assert_eq!(err, Err(DockerError::NotOwned("ghcr.io".into())));
        for bad in ["[]", "{\"auths\": []}", "{", "not json"] {
            assert!(
                matches!(
                    merge(
                        bad,
                        &[("r".into(), auth_entry("x"))],
                        &set(&[]),
                        &set(&[]),
                        false
                    ),
                    Err(DockerError::Unparseable(_))
                ),
                "{bad}"
            );
        }
        let fresh = merge(
            "",
            &[("r.io".into(), auth_entry("eA=="))],
            &set(&[]),
            &set(&[]),
            false,
        )
        .unwrap();
        let v: Value = serde_json::from_str(&fresh).unwrap();
        assert_eq!(v["auths"]["r.io"]["auth"], "eA==");
    }

    #[test]
    fn cred_helpers_are_merged_beside_auths_without_touching_them() {
        let with_helpers =
            "{\n\t\"auths\": {},\n\t\"credHelpers\": {\n\t\t\"gcr.io\": \"gcloud\"\n\t}\n}\n";
        for text in [USER, with_helpers] {
            let one = merge_in(
                text,
                CRED_HELPERS,
                &[("nvcr.io".into(), HELPER_ENTRY.into())],
                &set(&[]),
                &set(&[]),
                false,
            )
            .unwrap();
            let v: Value = serde_json::from_str(&one).unwrap();
            let before: Value = serde_json::from_str(text).unwrap();
            assert_eq!(v["credHelpers"]["nvcr.io"], "vault");
            assert_eq!(v["auths"], before["auths"], "auths untouched");
            let owned = set(&["nvcr.io"]);
            let back = merge_in(&one, CRED_HELPERS, &[], &owned, &owned, false).unwrap();
            let back: Value = serde_json::from_str(&back).unwrap();
            assert!(back["credHelpers"].get("nvcr.io").is_none());
        }
        // The user's own helper for a registry is not taken.
        let theirs = merge_in(
            with_helpers,
            CRED_HELPERS,
            &[("gcr.io".into(), HELPER_ENTRY.into())],
            &set(&[]),
            &set(&[]),
            false,
        );
        assert_eq!(theirs, Err(DockerError::NotOwned("gcr.io".into())));
        let removed_back = merge_in(
            &merge_in(
                with_helpers,
                CRED_HELPERS,
                &[("nvcr.io".into(), HELPER_ENTRY.into())],
                &set(&[]),
                &set(&[]),
                false,
            )
            .unwrap(),
            CRED_HELPERS,
            &[],
            &set(&["nvcr.io"]),
            &set(&["nvcr.io"]),
            false,
        )
        .unwrap();
        assert_eq!(removed_back, with_helpers, "the user's bytes come back");
    }

    fn user_config() -> impl Strategy<Value = (String, Map<String, Value>)> {
        let leaf = prop_oneof![
            "[a-z]{0,8}".prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
        ];
        let registries =
            prop::collection::btree_map("[a-u][a-z]{0,6}\\.io", "[A-Za-z0-9=]{4,12}", 0..4);
        let others = prop::collection::btree_map("[a-zA-Z]{1,10}", leaf, 0..4);
        (registries, others, any::<bool>(), any::<bool>()).prop_map(
            |(regs, others, pretty, with_auths)| {
                let mut map = Map::new();
                if with_auths {
                    let auths: Map<String, Value> = regs
                        .into_iter()
                        .map(|(r, a)| (r, serde_json::json!({ "auth": a })))
                        .collect();
                    map.insert("auths".into(), Value::Object(auths));
                }
                for (k, v) in others {
                    if k != "auths" {
                        map.insert(k, v);
                    }
                }
                let text = if pretty {
                    serde_json::to_string_pretty(&map).unwrap()
                } else {
                    serde_json::to_string(&map).unwrap()
                };
                (text, map)
            },
        )
    }

    proptest! {
        #[test]
        fn user_entries_survive_any_sequence_of_sets_and_removes(
            (text, map) in user_config(),
            ops in prop::collection::vec((0u8..3, any::<bool>(), "[A-Za-z0-9]{1,12}"), 1..10),
        ) {
            let mut cur = text.clone();
            let mut owned = BTreeSet::new();
            let mut expected: std::collections::BTreeMap<String, String> = Default::default();
            for (n, set_it, auth) in ops {
                let reg = format!("vault{n}.example");
                if set_it {
                    cur = merge(&cur, &[(reg.clone(), auth_entry(&auth))], &BTreeSet::new(), &owned, false).unwrap();
                    owned.insert(reg.clone());
                    expected.insert(reg, auth);
                } else {
                    cur = merge(&cur, &[], &[reg.clone()].into(), &owned, false).unwrap();
                    owned.remove(&reg);
                    expected.remove(&reg);
                }
                let v: Map<String, Value> = serde_json::from_str(&cur).unwrap();
                // Every user key and registry is exactly as it was.
                for (k, val) in &map {
                    if k == "auths" {
                        for (r, e) in val.as_object().unwrap() {
                            prop_assert_eq!(&v["auths"][r], e);
                        }
                    } else {
                        prop_assert_eq!(&v[k], val);
                    }
                }
                for (r, a) in &expected {
                    prop_assert_eq!(&v["auths"][r]["auth"], &Value::from(a.as_str()));
                }
            }
            // With every vault entry removed, the user's bytes come back
            // when the file had an auths object to begin with.
            let all: BTreeSet<String> = owned.clone();
            let cleared = merge(&cur, &[], &all, &owned, false).unwrap();
            if map.contains_key("auths") {
                prop_assert_eq!(cleared, text);
            }
        }
    }
}
