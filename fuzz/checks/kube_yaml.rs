//! `kube_yaml_merge`: `vault_daemon::emit::kube_yaml::merge` driven like the
//! engine drives it: a user's kubeconfig, then emits (with or without
//! `--force`) and removals of the vault's exec users, the owned set kept as
//! the engine's bindings would be. Input layout: `input.rs`.
//!
//! After every merge that succeeds:
//! - the output is one YAML mapping (or, with nothing written, as empty
//!   as the input);
//! - every top-level key but `users`, and every `users` entry the vault
//!   has not owned, has the same value as before;
//! - each emitted user reads back (`exec_user`) as exactly what was set; a
//!   removed one is gone;
//! - merging the same thing again changes nothing (idempotent);
//! - a user's entry is never taken without `--force`.
//!
//! At the end, removing every entry the vault owns gives back the original
//! bytes when the file had a `users` entry of its own that was not taken.
//! A merge never fails with "the result would not parse" (it never breaks
//! a file).

use std::collections::BTreeSet;

use vault_daemon::emit::kube_yaml::{self, EXEC_API_VERSION, ExecUser, KubeError};
use yaml_rust2::{Yaml, YamlLoader};

use crate::input::{self, Kind};

/// The vault's own user names for slots 0..=2 (one needs quoting).
const NAMES: [&str; 3] = ["vault-dev", "vault: prod", "-vault"];

/// The file's top level, when it is one plain mapping.
fn top(text: &str) -> Option<yaml_rust2::yaml::Hash> {
    match YamlLoader::load_from_str(text).ok()?.into_iter().next()? {
        Yaml::Hash(h) => Some(h),
        _ => None,
    }
}

fn users(top: &yaml_rust2::yaml::Hash) -> Vec<Yaml> {
    match top.get(&Yaml::String("users".into())) {
        Some(Yaml::Array(a)) => a.clone(),
        _ => Vec::new(),
    }
}

fn name_of(item: &Yaml) -> Option<String> {
    match item {
        Yaml::Hash(h) => h
            .get(&Yaml::String("name".into()))?
            .as_str()
            .map(str::to_owned),
        _ => None,
    }
}

/// The whole check of one input.
pub fn check(data: &[u8]) {
    let (orig, ops) = input::split(data);
    let before = top(&orig);
    let user_items = before.as_ref().map(users).unwrap_or_default();
    let existing: Vec<String> = user_items.iter().filter_map(name_of).collect();

    let mut text = orig.clone();
    let mut owned = BTreeSet::new();
    let mut claimed = BTreeSet::new();
    let mut written: Vec<ExecUser> = Vec::new();
    for op in ops {
        let name = match op.slot {
            3 if !existing.is_empty() => existing[usize::from(op.pick) % existing.len()].clone(),
            3 => NAMES[0].to_owned(),
            n => NAMES[usize::from(n)].to_owned(),
        };
        let present = matches!(kube_yaml::exec_user(&text, &name), Ok(Some(_)));
        let result = match op.kind {
            Kind::Emit { force } => {
                let user = ExecUser {
                    name: name.clone(),
                    command: "/usr/bin/vault".to_owned(),
                    // Flag 1: a value YAML must quote.
                    args: vec![
                        "eks".into(),
                        "token".into(),
                        if op.flags & 1 != 0 {
                            format!("- {}: #", op.value)
                        } else {
                            op.value.clone()
                        },
                    ],
                    api_version: EXEC_API_VERSION.to_owned(),
                };
                let result = kube_yaml::merge(
                    &text,
                    std::slice::from_ref(&user),
                    &BTreeSet::new(),
                    &owned,
                    force,
                );
                match &result {
                    Ok(out) => {
                        assert!(
                            force || owned.contains(&name) || !present,
                            "the user's {name} was taken without --force"
                        );
                        assert_eq!(
                            kube_yaml::exec_user(out, &name),
                            Ok(Some(Some(user.clone()))),
                            "{name} does not hold what was written:\n{out}"
                        );
                        let mut now_owned = owned.clone();
                        now_owned.insert(name.clone());
                        let again = kube_yaml::merge(
                            out,
                            std::slice::from_ref(&user),
                            &BTreeSet::new(),
                            &now_owned,
                            false,
                        );
                        assert_eq!(again.as_ref(), Ok(out), "emitting twice is not idempotent");
                        owned = now_owned;
                        claimed.insert(name.clone());
                        written.retain(|u| u.name != name);
                        written.push(user);
                    }
                    Err(KubeError::NotOwned(n)) => {
                        assert_eq!(n, &name);
                        assert!(!force && !owned.contains(n), "NotOwned for {n}");
                        assert!(present, "NotOwned for {n}, which is not there");
                    }
                    Err(KubeError::Unparseable(_)) => {}
                }
                result
            }
            Kind::Remove => {
                let remove: BTreeSet<String> = [name.clone()].into();
                let result = kube_yaml::merge(&text, &[], &remove, &owned, false);
                if let Ok(out) = &result {
                    let again = kube_yaml::merge(out, &[], &remove, &owned, false);
                    assert_eq!(again.as_ref(), Ok(out), "removing twice is not idempotent");
                    if owned.remove(&name) {
                        assert_eq!(kube_yaml::exec_user(out, &name), Ok(None), "{name} stayed");
                    }
                    written.retain(|u| u.name != name);
                }
                result
            }
        };
        match result {
            Ok(out) => text = out,
            Err(KubeError::Unparseable(why)) => {
                assert!(
                    !why.contains("would not parse"),
                    "the merge broke the file ({why}):\n{text}"
                );
                return;
            }
            Err(KubeError::NotOwned(_)) => continue,
        }

        let Some(now) = top(&text) else {
            // Only a file with nothing in it (comments) may stay that way.
            let empty = YamlLoader::load_from_str(&text)
                .is_ok_and(|d| d.first().is_none_or(|d| *d == Yaml::Null));
            assert!(
                empty && written.is_empty(),
                "the merged file is not a mapping:\n{text}"
            );
            continue;
        };
        let Some(before) = &before else { continue };
        for (k, v) in before.iter().filter(|(k, _)| k.as_str() != Some("users")) {
            assert_eq!(now.get(k), Some(v), "the user's key {k:?} changed");
        }
        let now_users = users(&now);
        let theirs = |items: &[Yaml]| -> Vec<Yaml> {
            items
                .iter()
                .filter(|i| name_of(i).is_none_or(|n| !claimed.contains(&n)))
                .cloned()
                .collect()
        };
        assert_eq!(
            theirs(&user_items),
            theirs(&now_users),
            "the user's users changed"
        );
        for u in &written {
            assert_eq!(
                kube_yaml::exec_user(&text, &u.name),
                Ok(Some(Some(u.clone()))),
                "{} does not hold what was written",
                u.name
            );
        }
    }

    let taken_from_user = claimed.iter().any(|n| existing.contains(n));
    let own_left = existing.iter().any(|n| !claimed.contains(n));
    if !owned.is_empty() && !taken_from_user && own_left {
        let all = owned.clone();
        let cleared = kube_yaml::merge(&text, &[], &all, &owned, false).expect("removal succeeds");
        assert_eq!(
            cleared, orig,
            "removing the vault's entries does not restore the file"
        );
    }
}
