//! The completion scripts shells load (`vault completions SHELL`, and the
//! files `cargo run -p xtask -- dist` writes for the packages). Each is a
//! few lines that hand the words typed so far to `vault` itself on every
//! Tab (`VAULT_COMPLETE=SHELL vault -- WORDS…`), which answers from its clap
//! definitions and, for names, from the running daemon (`complete.rs`).
//! Shared by source with xtask, so the packaged files and the command print
//! the same text.

use clap_complete::Shell;
use clap_complete::env::{Bash, EnvCompleter, Fish, Zsh};

/// The variable that turns a `vault` run into a completion answer. Not
/// clap's default `COMPLETE`, which other programs may have set.
pub const VAR: &str = "VAULT_COMPLETE";

/// The script for `shell`, calling `completer` (a program name on PATH, or an
/// absolute path) on each Tab. `None` for a shell we do not support.
pub fn script(shell: Shell, completer: &str) -> Option<String> {
    let env: &dyn EnvCompleter = match shell {
        Shell::Bash => &Bash,
        Shell::Zsh => &Zsh,
        Shell::Fish => &Fish,
        _ => return None,
    };
    let mut buf = Vec::new();
    env.write_registration(VAR, "vault", "vault", completer, &mut buf)
        .ok()?;
    let text = String::from_utf8(buf).ok()?;
    Some(match shell {
        Shell::Zsh => zsh_autoloadable(&text),
        _ => text,
    })
}

/// clap's zsh script registers itself with `compdef`, which suits `source`
/// but not an `_vault` file in `$fpath`: autoloaded, its first Tab would
/// only register. Either way works with this ending (as kubectl's does).
fn zsh_autoloadable(text: &str) -> String {
    const REGISTER: &str = "compdef _clap_dynamic_completer_vault vault";
    let body = text.trim_end();
    match body.strip_suffix(REGISTER) {
        Some(head) => format!(
            "{head}if [[ \"${{funcstack[1]}}\" == _vault ]]; then\n    \
             _clap_dynamic_completer_vault \"$@\"\nelse\n    {REGISTER}\nfi\n"
        ),
        None => text.to_owned(),
    }
}
