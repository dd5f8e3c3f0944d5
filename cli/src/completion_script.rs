//! The completion scripts shells load (`vault completions SHELL`, and the
//! files `cargo run -p xtask -- dist` writes for the packages). Each is a
//! few lines that hand the words typed so far to `vault` itself on every
//! Tab (`VAULT_COMPLETE=SHELL vault -- WORDS…`), which answers from its clap
//! definitions and, for names, from the running daemon (`complete.rs`).
//! Shared by source with xtask, so the packaged files and the command print
//! the same text.

use clap_complete::Shell;
use clap_complete::env::{EnvCompleter, Fish, Zsh};

/// The variable that turns a `vault` run into a completion answer. Not
/// clap's default `COMPLETE`, which other programs may have set.
pub const VAR: &str = "VAULT_COMPLETE";

/// The script for `shell`, calling `completer` (a program name on PATH, or an
/// absolute path) on each Tab. `None` for a shell we do not support.
pub fn script(shell: Shell, completer: &str) -> Option<String> {
    let env: &dyn EnvCompleter = match shell {
        Shell::Bash => return Some(bash(completer)),
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

/// bash: clap's script, but with the words as typed. bash splits the line
/// at `COMP_WORDBREAKS` too (`@ : =` by default), and names (`me@site`)
/// and tags (`env=prod`) hold those: this script splits the line before the
/// cursor at blanks only, asks `vault` about that, and gives bash back only
/// the part after the last break, which is all bash replaces.
fn bash(completer: &str) -> String {
    let completer = shell_quote(completer);
    format!(
        r#"
_clap_complete_vault() {{
    local line=${{COMP_LINE:0:COMP_POINT}}
    local -a words
    IFS=$' \t\n' read -r -a words <<< "$line"
    if [[ -z $line || $line == *[[:blank:]] ]]; then
        words+=("")
    fi
    local cur=${{words[${{#words[@]}}-1]}}
    local before=
    if [[ $cur == *"$2" ]]; then
        before=${{cur%"$2"}}
    fi
    local _CLAP_COMPLETE_SPACE=true
    if compopt +o nospace 2> /dev/null; then
        _CLAP_COMPLETE_SPACE=false
    fi
    local IFS=$'\013'
    COMPREPLY=( $( \
        _CLAP_IFS="$IFS" \
        _CLAP_COMPLETE_INDEX="$(( ${{#words[@]}} - 1 ))" \
        _CLAP_COMPLETE_COMP_TYPE="${{COMP_TYPE}}" \
        _CLAP_COMPLETE_SPACE="$_CLAP_COMPLETE_SPACE" \
        {VAR}="bash" \
        {completer} -- "${{words[@]}}" 2> /dev/null \
    ) )
    if [[ $? != 0 ]]; then
        unset COMPREPLY
        return
    fi
    if [[ -n $before ]]; then
        local i
        for i in "${{!COMPREPLY[@]}}"; do
            COMPREPLY[i]=${{COMPREPLY[i]#"$before"}}
        done
    fi
    if [[ $_CLAP_COMPLETE_SPACE == false ]] && [[ "${{COMPREPLY-}}" =~ [=/:]$ ]]; then
        compopt -o nospace
    fi
}}
if [[ "${{BASH_VERSINFO[0]}}" -eq 4 && "${{BASH_VERSINFO[1]}}" -ge 4 || "${{BASH_VERSINFO[0]}}" -gt 4 ]]; then
    complete -o nospace -o bashdefault -o nosort -F _clap_complete_vault vault
else
    complete -o nospace -o bashdefault -F _clap_complete_vault vault
fi
"#
    )
}

/// `s` as one shell word (a program name or an absolute path).
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+'))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
