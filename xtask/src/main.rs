//! Build tasks of the workspace (the `cargo xtask` pattern).
//!
//! `cargo run -p xtask -- dist [--out DIR]` writes the shell completions
//! (bash, zsh, fish) and the man pages of `vault` into DIR (default
//! `target/dist`), generated from the CLI's own clap definitions: the file
//! `cli/src/args.rs` is compiled into this program, so the generated text can
//! never disagree with the binary. `cargo deb` and `packaging/install.sh`
//! install what this writes; nothing there is written by hand.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

// The CLI's argument definitions, shared by source rather than by a library
// crate, so `vault` stays a single binary crate. Only `Cli::command()` is
// used here; the rest of the file is the CLI's business.
#[allow(dead_code)]
#[path = "../../cli/src/args.rs"]
mod args;

// The completion scripts: a few lines that ask `vault` on each Tab.
#[allow(dead_code)]
#[path = "../../cli/src/completion_script.rs"]
mod completion_script;

const USAGE: &str = "usage: cargo run -p xtask -- dist [--out DIR]

dist   write completions (DIR/completions: vault.bash, _vault, vault.fish) and
       man pages (DIR/man/vault.1, vault-<command>.1, ...) generated from the
       clap definitions of vault; DIR defaults to target/dist";

/// The workspace root (this crate lives in `<root>/xtask`).
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The `vault` command as clap sees it.
pub fn vault_command() -> clap::Command {
    args::Cli::command()
}

/// Writes completions and man pages under `out`; returns the files written.
pub fn dist(out: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)?;
    for (shell, file) in [
        (Shell::Bash, "vault.bash"),
        (Shell::Zsh, "_vault"),
        (Shell::Fish, "vault.fish"),
    ] {
        let script = completion_script::script(shell, "vault")
            .ok_or_else(|| std::io::Error::other(format!("no completion script for {shell}")))?;
        let path = completions.join(file);
        std::fs::write(&path, script)?;
        written.push(path);
    }
    let man = out.join("man");
    // Pages of commands that no longer exist must not linger.
    if man.exists() {
        std::fs::remove_dir_all(&man)?;
    }
    std::fs::create_dir_all(&man)?;
    clap_mangen::generate_to(vault_command(), &man)?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&man)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    pages.sort();
    written.extend(pages);
    Ok(written)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = match argv.split_first() {
        Some((task, rest)) => (task.as_str(), rest),
        None => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let out = match (task, rest) {
        ("dist", []) => workspace_root().join("target/dist"),
        ("dist", [flag, dir]) if flag == "--out" => PathBuf::from(dir),
        ("-h" | "--help" | "help", _) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("xtask: unknown arguments {argv:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match dist(&out) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "xtask: cannot write {}: {e}; check that the directory is writable",
                out.display()
            );
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod dist_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn man_pages_cover_every_subcommand_and_completions_ask_vault() {
        let tmp = tempfile::tempdir().unwrap();
        dist(tmp.path()).unwrap();
        let read = |p: &str| std::fs::read_to_string(tmp.path().join(p)).unwrap();
        // The scripts hold no names: each Tab asks the installed `vault`
        // (tests/tests/completion.rs types into real shells).
        for (file, registers) in [
            ("vault.bash", "-F _clap_complete_vault vault"),
            ("_vault", "#compdef vault"),
            (
                "vault.fish",
                "complete --keep-order --exclusive --command vault",
            ),
        ] {
            let text = read(&format!("completions/{file}"));
            assert!(text.contains("VAULT_COMPLETE="), "{file}:\n{text}");
            assert!(text.contains(registers), "{file}:\n{text}");
        }
        let top = read("man/vault.1");
        let cmd = vault_command();
        let mut count = 0;
        for sub in cmd.get_subcommands() {
            let name = sub.get_name();
            count += 1;
            // roff writes a hyphen as `\-`: `vault\-aws\-process(1)`.
            let roff = format!("vault\\-{}", name.replace('-', "\\-"));
            assert!(
                top.contains(&format!("{roff}(1)")),
                "vault.1 does not list '{name}'"
            );
            let page = read(&format!("man/vault-{name}.1"));
            assert!(
                page.contains(&roff),
                "vault-{name}.1 is not about {name}:\n{page}"
            );
            for nested in sub.get_subcommands() {
                let nested = nested.get_name();
                assert!(
                    tmp.path()
                        .join(format!("man/vault-{name}-{nested}.1"))
                        .is_file(),
                    "no page for vault {name} {nested}"
                );
            }
        }
        assert!(count >= 19, "only {count} subcommands?");
        // The pages .ci/run expects in the .deb.
        for page in ["vault-doctor.1", "vault-exec.1", "vault-emit-aws.1"] {
            assert!(tmp.path().join("man").join(page).is_file(), "no {page}");
        }
    }
}
