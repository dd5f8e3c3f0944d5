//! `docker_json_merge`: `vault_daemon::emit::docker_json::merge` driven like
//! the engine drives it: a user's `config.json`, then emits (with or without
//! `--force`), rotations and removals of registry logins, the owned set kept
//! as the engine's bindings would be. Input layout: `input.rs`.
//!
//! After every merge that succeeds:
//! - the output is a JSON object;
//! - every top-level key but `auths`, and every `auths` entry the vault has
//!   not owned, has the same value as before (when the original has no
//!   duplicate keys, for which "the same value" is ambiguous);
//! - each owned registry holds exactly the entry written; a removed one is
//!   gone;
//! - merging the same thing again changes nothing (idempotent);
//! - a registry of the user's is never taken without `--force`.
//!
//! At the end, removing every entry the vault owns gives back the original
//! bytes when the file had an `auths` object and no user entry was taken.
//! A merge never fails with "the result would not parse" (it never breaks
//! a file), and `Unparseable` only comes for a file that is not a clean JSON
//! object with an `auths` object (or none).
//!
//! All calls of the API under test go through [`merge`] and [`entry`], so a
//! change of its signature (e.g. `credHelpers`) is adapted in one place.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};
use vault_daemon::emit::docker_json::{self, DockerError};

use crate::input::{self, Kind};

/// The vault's own registries for slots 0..=2.
const REGISTRIES: [&str; 3] = [
    "vault0.example",
    "registry.vault.example:5000",
    "https://index.docker.io/v1/",
];

fn merge(
    text: &str,
    set: Option<(&str, &str)>,
    remove: &BTreeSet<String>,
    owned: &BTreeSet<String>,
    force: bool,
) -> Result<String, DockerError> {
    let entries: Vec<(String, String)> = set
        .map(|(r, auth)| (r.to_owned(), entry(auth)))
        .into_iter()
        .collect();
    docker_json::merge(text, &entries, remove, owned, force)
}

/// The entry the engine writes for a login whose base64 is `auth`.
fn entry(auth: &str) -> String {
    docker_json::auth_entry(auth)
}

/// The whole check of one input.
pub fn check(data: &[u8]) {
    let (orig, ops) = input::split(data);
    // The file as the engine reads it (missing or blank is a new config).
    let blank = orig
        .bytes()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    let clean = if blank {
        Some(Map::new())
    } else {
        clean_object(&orig)
    };
    let user_auths: Map<String, Value> = clean
        .as_ref()
        .and_then(|m| m.get("auths"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let existing: Vec<&String> = user_auths.keys().collect();

    let mut text = orig.clone();
    let mut owned = BTreeSet::new();
    let mut claimed = BTreeSet::new();
    let mut written: BTreeMap<String, String> = BTreeMap::new();
    for op in ops {
        let registry = match op.slot {
            3 if !existing.is_empty() => existing[usize::from(op.pick) % existing.len()].clone(),
            3 => REGISTRIES[0].to_owned(),
            n => REGISTRIES[usize::from(n)].to_owned(),
        };
        // Meaningful only for a clean file (with a repeated key, which of
        // the values counts is ambiguous).
        let present = auths_of(&text).is_some_and(|a| a.contains_key(&registry));
        let strict = clean.is_some();
        let result = match op.kind {
            Kind::Emit { force } => {
                // Flag 1: the value as the engine makes it, base64 of
                // `user:secret`; else as it is (to stress the escaping).
                let auth = if op.flags & 1 != 0 {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD.encode(format!("fuzz:{}", op.value))
                } else {
                    op.value.clone()
                };
                let set = Some((registry.as_str(), auth.as_str()));
                let result = merge(&text, set, &BTreeSet::new(), &owned, force);
                match &result {
                    Ok(out) => {
                        assert!(
                            !strict || force || owned.contains(&registry) || !present,
                            "the user's {registry} was taken without --force"
                        );
                        let mut now_owned = owned.clone();
                        now_owned.insert(registry.clone());
                        let again = merge(out, set, &BTreeSet::new(), &now_owned, false);
                        assert_eq!(again.as_ref(), Ok(out), "emitting twice is not idempotent");
                        owned = now_owned;
                        claimed.insert(registry.clone());
                        written.insert(registry.clone(), auth.clone());
                    }
                    Err(DockerError::NotOwned(r)) => {
                        assert_eq!(r, &registry);
                        assert!(!force && !owned.contains(r), "NotOwned for {r}");
                        assert!(!strict || present, "NotOwned for {r}, which is not there");
                    }
                    Err(DockerError::Unparseable(_)) => {}
                }
                result
            }
            Kind::Remove => {
                let remove: BTreeSet<String> = [registry.clone()].into();
                let result = merge(&text, None, &remove, &owned, false);
                if let Ok(out) = &result {
                    let again = merge(out, None, &remove, &owned, false);
                    assert_eq!(again.as_ref(), Ok(out), "removing twice is not idempotent");
                    owned.remove(&registry);
                    written.remove(&registry);
                }
                result
            }
        };
        match result {
            Ok(out) => text = out,
            Err(DockerError::Unparseable(why)) => {
                assert!(
                    !why.starts_with("the result would not parse"),
                    "the merge broke the file ({why}):\n{text}"
                );
                assert!(
                    clean.is_none(),
                    "a clean config was refused as unparseable ({why}):\n{text}"
                );
                return;
            }
            Err(_) => continue,
        }

        let now: Map<String, Value> = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("the merged file is not a JSON object ({e}):\n{text}"));
        let Some(before) = &clean else { continue };
        for (k, v) in before.iter().filter(|(k, _)| *k != "auths") {
            assert_eq!(now.get(k), Some(v), "the user's key {k} changed");
        }
        let auths = now.get("auths").and_then(Value::as_object);
        for (r, v) in user_auths.iter().filter(|(r, _)| !claimed.contains(*r)) {
            assert_eq!(
                auths.and_then(|a| a.get(r)),
                Some(v),
                "the user's {r} changed"
            );
        }
        for r in &claimed {
            let got = auths.and_then(|a| a.get(r));
            match written.get(r) {
                Some(auth) => {
                    let want: Value = serde_json::from_str(&entry(auth)).expect("entry is JSON");
                    assert_eq!(got, Some(&want), "{r} does not hold what was written");
                }
                None => assert_eq!(got, None, "{r} was removed but is still there"),
            }
        }
    }

    let taken_from_user = claimed.iter().any(|r| user_auths.contains_key(r));
    if !owned.is_empty()
        && !taken_from_user
        && clean.as_ref().is_some_and(|m| m.contains_key("auths"))
    {
        let all = owned.clone();
        let cleared = merge(&text, None, &all, &owned, false).expect("removal succeeds");
        assert_eq!(
            cleared, orig,
            "removing the vault's entries does not restore the file"
        );
    }
}

/// The `auths` object of `text`, when it is a JSON object with one.
fn auths_of(text: &str) -> Option<Map<String, Value>> {
    let mut top: Map<String, Value> = serde_json::from_str(text).ok()?;
    match top.remove("auths")? {
        Value::Object(a) => Some(a),
        _ => None,
    }
}

/// `text` as a JSON object when it is one without a repeated key anywhere
/// and its `auths`, if any, is an object: a file vault must be able to edit.
fn clean_object(text: &str) -> Option<Map<String, Value>> {
    serde_json::from_str::<unique::Unique>(text).ok()?;
    let map: Map<String, Value> = serde_json::from_str(text).ok()?;
    match map.get("auths") {
        None | Some(Value::Object(_)) => Some(map),
        Some(_) => None,
    }
}

/// Accepts any JSON value without a repeated key in any object.
mod unique {
    use std::collections::BTreeSet;
    use std::fmt;

    use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

    pub struct Unique;

    impl<'de> Deserialize<'de> for Unique {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(UniqueVisitor)
        }
    }

    struct UniqueVisitor;

    impl<'de> Visitor<'de> for UniqueVisitor {
        type Value = Unique;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("JSON without repeated keys")
        }

        fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
            Ok(Unique)
        }

        fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
            Ok(Unique)
        }

        fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
            Ok(Unique)
        }

        fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
            Ok(Unique)
        }

        fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
            Ok(Unique)
        }

        fn visit_unit<E>(self) -> Result<Unique, E> {
            Ok(Unique)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
            while seq.next_element::<Unique>()?.is_some() {}
            Ok(Unique)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
            let mut seen = BTreeSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !seen.insert(key) {
                    return Err(de::Error::custom("a repeated key"));
                }
                map.next_value::<Unique>()?;
            }
            Ok(Unique)
        }
    }
}
