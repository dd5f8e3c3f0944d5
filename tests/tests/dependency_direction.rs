//! docs/architecture.md, "Dependency rules": `cli → protocol`, `daemon →
//! protocol`, `server → protocol`. The CLI never links `age` or `rusqlite` (nor SQLite itself); the server never
//! links `age`. Read from `cargo metadata`, walking normal dependencies from
//! each package's node in the resolve graph.
//!
//! Also (issue #9): no member reaches OpenSSL by any kind of dependency
//! (`deny.toml` bans it too, but this runs without cargo-deny), and the
//! end-to-end harness links no crate it tests.
//!
//! And (issue 20): code comments point into `docs/`, never at section
//! numbers of an outside document; and no module of `vaultd` imports a
//! module that imports it back (a module is a top-level file or folder of
//! `daemon/src`).

// Helper fns of a test report failure by panicking.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, VecDeque};
use std::process::Command;

use serde_json::Value;

fn metadata() -> Value {
    let out = Command::new(vault_e2e::cargo())
        .current_dir(vault_e2e::workspace_root())
        .args(["metadata", "--format-version", "1"])
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata JSON")
}

/// Package name → the chain of package names from `root` that reaches it,
/// following only normal (not dev, not build) dependencies.
fn normal_closure(meta: &Value, root: &str) -> BTreeMap<String, Vec<String>> {
    closure(meta, root, false)
}

/// As [`normal_closure`]; with `every_kind`, `root`'s dev and build
/// dependencies (and theirs) are followed too.
fn closure(meta: &Value, root: &str, every_kind: bool) -> BTreeMap<String, Vec<String>> {
    let packages = meta["packages"].as_array().expect("packages");
    let name_of: BTreeMap<&str, &str> = packages
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let members: Vec<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    let root_id = *members
        .iter()
        .find(|id| name_of.get(*id) == Some(&root))
        .unwrap_or_else(|| panic!("workspace member {root} not found in cargo metadata"));
    let nodes: BTreeMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve.nodes (run without --no-deps)")
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();

    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut queue = VecDeque::from([(root_id.to_owned(), vec![root.to_owned()])]);
    let mut visited = std::collections::BTreeSet::new();
    while let Some((id, chain)) = queue.pop_front() {
        if !visited.insert(id.clone()) {
            continue;
        }
        seen.insert(name_of[id.as_str()].to_owned(), chain.clone());
        let node = nodes[id.as_str()];
        for dep in node["deps"].as_array().unwrap() {
            let normal = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null());
            if !normal && !every_kind {
                continue;
            }
            let dep_id = dep["pkg"].as_str().unwrap().to_owned();
            let mut next = chain.clone();
            next.push(name_of[dep_id.as_str()].to_owned());
            queue.push_back((dep_id, next));
        }
    }
    seen
}

fn assert_not_linked(meta: &Value, package: &str, forbidden: &[&str]) {
    let closure = normal_closure(meta, package);
    let hits: Vec<String> = forbidden
        .iter()
        .filter_map(|f| closure.get(*f).map(|chain| chain.join(" -> ")))
        .collect();
    assert!(
        hits.is_empty(),
        "{package} must not link {forbidden:?} (docs/architecture.md), but its dependency graph has:\n  {}",
        hits.join("\n  ")
    );
    assert!(
        closure.contains_key("vault-protocol"),
        "{package} should depend on vault-protocol; closure: {:?}",
        closure.keys().collect::<Vec<_>>()
    );
}

#[test]
fn cli_links_neither_age_nor_sqlite() {
    let meta = metadata();
    assert_not_linked(
        &meta,
        "vault-cli",
        &[
            "age",
            "age-core",
            "rusqlite",
            "libsqlite3-sys",
            "vault-daemon",
            "vault-server",
        ],
    );
}

#[test]
fn server_never_links_age() {
    let meta = metadata();
    assert_not_linked(&meta, "vault-server", &["age", "age-core", "vault-daemon"]);
}

#[test]
fn protocol_links_neither_age_nor_sqlite() {
    let closure = normal_closure(&metadata(), "vault-protocol");
    for f in ["age", "age-core", "rusqlite", "libsqlite3-sys"] {
        assert!(
            !closure.contains_key(f),
            "vault-protocol links {f}: {}",
            closure[f].join(" -> ")
        );
    }
}

/// Guards against a vacuous pass: the walker must see what the daemon links.
#[test]
fn walker_sees_the_daemons_age_and_sqlite() {
    let closure = normal_closure(&metadata(), "vault-daemon");
    for needed in ["age", "rusqlite", "vault-protocol"] {
        assert!(
            closure.contains_key(needed),
            "vault-daemon's closure lacks {needed}: {:?}",
            closure.keys().collect::<Vec<_>>()
        );
    }
}

fn members(meta: &Value) -> Vec<String> {
    let ids: Vec<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| ids.contains(&p["id"].as_str().unwrap()))
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn no_member_reaches_openssl_by_any_dependency() {
    let meta = metadata();
    let members = members(&meta);
    assert!(members.len() >= 5, "workspace members: {members:?}");
    for member in &members {
        let closure = closure(&meta, member, true);
        for f in ["openssl-sys", "openssl", "native-tls"] {
            assert!(
                !closure.contains_key(f),
                "{member} reaches {f} (TLS is rustls only): {}",
                closure[f].join(" -> ")
            );
        }
    }
    // Not vacuous: the walk through every kind sees TLS, through rustls.
    let server = closure(&meta, "vault-server", true);
    assert!(
        server.contains_key("rustls"),
        "{:?}",
        server.keys().collect::<Vec<_>>()
    );
}

/// The harness drives the real binaries as a user would (tests/src/lib.rs):
/// linking a crate it tests would let a test call into it instead.
#[test]
fn the_e2e_harness_links_no_crate_it_tests() {
    let closure = closure(&metadata(), "vault-e2e", true);
    for f in ["vault-daemon", "vault-cli", "vault-server", "age"] {
        assert!(
            !closure.contains_key(f),
            "vault-e2e links {f}: {}",
            closure[f].join(" -> ")
        );
    }
    assert!(closure.contains_key("vault-protocol"));
}

#[test]
fn comments_point_into_docs_not_at_outside_section_numbers() {
    let root = vault_e2e::workspace_root();
    let out = Command::new("git")
        .current_dir(&root)
        .args(["ls-files", "*.rs"])
        .output()
        .expect("run git ls-files");
    assert!(out.status.success(), "git ls-files failed");
    let needle = ["SPEC", " §"].concat();
    let mut found = Vec::new();
    for file in String::from_utf8_lossy(&out.stdout).lines() {
        let text = std::fs::read_to_string(root.join(file)).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            if line.contains(&needle) {
                found.push(format!("{file}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "cite the docs/ file that holds the rule instead:\n{}",
        found.join("\n")
    );
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_daemon_module_imports_one_that_imports_it_back() {
    let src = vault_e2e::workspace_root().join("daemon/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // module → the modules it names as `crate::x`, outside comments.
    let mut uses: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        if module == "main" || module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for line in text.lines() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for (at, _) in line.match_indices("crate::") {
                let name: String = line[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    uses.entry(module.clone()).or_default().insert(name);
                }
            }
        }
    }
    assert!(
        uses.get("remote").is_some_and(|u| u.contains("engine")),
        "the scan found no imports: {uses:?}"
    );
    for start in uses.keys() {
        // Every module reachable from `start`; `start` must not be one.
        let mut seen = std::collections::BTreeSet::new();
        let mut todo: VecDeque<&String> = uses[start].iter().collect();
        while let Some(m) = todo.pop_front() {
            if seen.insert(m.clone()) {
                todo.extend(uses.get(m).into_iter().flatten());
            }
        }
        assert!(
            !seen.contains(start),
            "daemon module '{start}' imports itself back through {seen:?}; the graph: {uses:?}"
        );
    }
}

#[test]
fn a_worker_touches_another_worker_only_to_wake_it() {
    let dir = vault_e2e::workspace_root().join("daemon/src/remote");
    let workers = ["syncer", "publisher", "refresher"];
    let mut wakes = 0;
    for me in workers {
        let raw = std::fs::read_to_string(dir.join(format!("{me}.rs"))).unwrap();
        // Lines joined, so a call split over lines (`d\n.publisher\n.kick()`)
        // reads as one.
        let text: String = raw.lines().map(str::trim).collect();
        for other in workers.iter().filter(|w| **w != me) {
            for (at, _) in text.match_indices(&format!(".{other}.")) {
                let rest = &text[at + other.len() + 2..];
                let around = text
                    .get(at.saturating_sub(40)..(at + 60).min(text.len()))
                    .unwrap_or(other);
                assert!(
                    rest.starts_with("kick()"),
                    "remote/{me}.rs reaches into the {other}'s state ({around}); workers share \
                     only the engine and each other's kick() (docs/architecture.md)"
                );
                wakes += 1;
            }
        }
    }
    assert!(wakes > 0, "the scan found no worker waking another");
}
