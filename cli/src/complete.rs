//! Tab completion answered by `vault` itself (docs/user-guide.md,
//! "Completion"). The shell's script (`completion_script.rs`) runs
//! `VAULT_COMPLETE=SHELL vault -- WORDS…` on each Tab; clap_complete's
//! engine answers subcommands, flags and fixed values from the clap
//! definitions, and the completers attached here answer names — credentials,
//! tags, remotes, emitter ids, a credential's fields — from the running
//! daemon.
//!
//! A Tab must never hurt: nothing here starts the daemon, prompts, unlocks,
//! prints an error or waits long. A stopped daemon, a locked vault or a
//! daemon slower than [`PATIENCE`] all give no names, and the shell
//! completes what it can without them.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use clap::{Command, CommandFactory};
use clap_complete::engine::{ArgValueCompleter, CompletionCandidate};
use clap_complete::env::CompleteEnv;
use vault_protocol::message::{Completable, Completion};
use vault_protocol::{Request, Response};

use crate::args::Cli;
use crate::client::{Client, Target};
use crate::completion_script::VAR;

/// The longest a Tab waits for the daemon before offering no names.
const PATIENCE: Duration = Duration::from_millis(500);

/// Which argument completes from which list, by subcommand path and clap
/// argument id. The field completers find the credential among the words
/// typed ([`credential_in`]).
const COMPLETERS: &[(&[&str], &str, Kind)] = &[
    (&["get"], "name", Kind::Credential),
    (&["get"], "field", Kind::Field),
    (&["set"], "name", Kind::Credential),
    (&["set"], "unset", Kind::Field),
    (&["set"], "tags", Kind::Tag),
    (&["add"], "tags", Kind::Tag),
    (&["edit"], "name", Kind::Credential),
    (&["otp"], "name", Kind::Credential),
    (&["check"], "names", Kind::Credential),
    (&["rotate"], "name", Kind::Credential),
    (&["audit"], "name", Kind::Credential),
    (&["rm"], "name", Kind::Credential),
    (&["rename"], "old", Kind::Credential),
    (&["history"], "name", Kind::Credential),
    (&["restore"], "name", Kind::Credential),
    (&["exec"], "credentials", Kind::Credential),
    (&["aws-process"], "name", Kind::Credential),
    (&["emit", "aws"], "name", Kind::Credential),
    (&["emit", "gcloud"], "name", Kind::Credential),
    (&["emit", "docker"], "name", Kind::Credential),
    (&["emit", "file"], "name", Kind::Credential),
    (&["emit", "rm"], "id", Kind::Emitter),
    (&["list"], "tag", Kind::Tag),
    (&["import"], "tag", Kind::Tag),
    (&["approve"], "names", Kind::Credential),
    (&["publish"], "name", Kind::Credential),
    (&["publish"], "to", Kind::Remote),
    (&["unpublish"], "name", Kind::Credential),
    (&["unpublish"], "from", Kind::Remote),
    (&["remote", "status"], "name", Kind::Remote),
    (&["remote", "rm"], "name", Kind::Remote),
];

/// The lists names come from.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Credential,
    Tag,
    Remote,
    Emitter,
    Field,
}

/// Answers the Tab and exits when `VAULT_COMPLETE` is set; returns
/// otherwise.
pub fn answer_if_asked() {
    if std::env::var_os(VAR).is_none() {
        return;
    }
    CompleteEnv::with_factory(command)
        .var(VAR)
        .completer("vault")
        .complete();
}

/// The clap command with the name completers attached.
pub fn command() -> Command {
    COMPLETERS
        .iter()
        .fold(Cli::command(), |cmd, (path, arg, kind)| {
            attach(cmd, path, arg, *kind)
        })
}

fn attach(cmd: Command, path: &[&str], arg: &'static str, kind: Kind) -> Command {
    match path.split_first() {
        Some((sub, rest)) => cmd.mut_subcommand(*sub, |c| attach(c, rest, arg, kind)),
        // mut_args, not mut_arg: that one moves the argument last, which
        // reorders positionals.
        None => cmd.mut_args(|a| {
            if a.get_id() != arg {
                return a;
            }
            a.add(ArgValueCompleter::new(move |current: &OsStr| {
                candidates(kind, current)
            }))
        }),
    }
}

fn candidates(kind: Kind, current: &OsStr) -> Vec<CompletionCandidate> {
    let Some(prefix) = current.to_str() else {
        return Vec::new();
    };
    let what = match kind {
        Kind::Credential => Completable::Credential,
        Kind::Tag => Completable::Tag,
        Kind::Remote => Completable::Remote,
        Kind::Emitter => Completable::Emitter,
        Kind::Field => match credential_in(&typed_words()) {
            Some(name) => Completable::Field { name },
            None => return Vec::new(),
        },
    };
    ask(what, prefix.to_owned())
        .into_iter()
        .filter(|c| well_formed(kind, &c.value))
        .map(|c| {
            let help = c.help.map(|h| h.replace(|ch: char| ch.is_control(), " "));
            CompletionCandidate::new(c.value).help(help.map(Into::into))
        })
        .collect()
}

/// Whether `word` keeps the rule of its kind. The shell puts words on the
/// command line as they are (bash unquoted), and tags and field names may
/// come by sync from another device: a word with a space, `;`, `$(`, a
/// glob or a control character is never offered.
fn well_formed(kind: Kind, word: &str) -> bool {
    match kind {
        Kind::Credential | Kind::Remote => vault_protocol::validate_name(word).is_ok(),
        Kind::Tag => vault_protocol::credential::validate_tag(word).is_ok(),
        Kind::Field => vault_protocol::credential::is_generic_key(word),
        Kind::Emitter => !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric()),
    }
}

/// The daemon's words, or none: within [`PATIENCE`], never starting it.
fn ask(what: Completable, prefix: String) -> Vec<Completion> {
    let Ok(target) = Target::from_env(socket_in(&typed_words())) else {
        return Vec::new();
    };
    let (tx, rx) = mpsc::channel();
    // A daemon that does not answer keeps this thread, not the Tab: the
    // process exits with the main thread.
    std::thread::spawn(move || {
        let _ = tx.send(query(&target, what, prefix));
    });
    rx.recv_timeout(PATIENCE).unwrap_or_default()
}

fn query(target: &Target, what: Completable, prefix: String) -> Vec<Completion> {
    let Ok(Some(mut client)) = Client::connect_running(target) else {
        return Vec::new();
    };
    // The handshake first: `call` alone may retry a dropped read-only
    // request on a daemon it starts, and a Tab starts nothing.
    if client.hello().is_err() {
        return Vec::new();
    }
    match client.call(Request::Complete { what, prefix }) {
        Ok(Response::Completions { items }) => items,
        _ => Vec::new(),
    }
}

/// The words of the command line being completed, before the cursor: what
/// the script passed after `--`, cut at `_CLAP_COMPLETE_INDEX` (bash, zsh)
/// or without the word being completed (fish).
fn typed_words() -> Vec<OsString> {
    let mut args = std::env::args_os().skip_while(|a| a != "--");
    args.next();
    let words: Vec<OsString> = args.collect();
    let cursor = std::env::var("_CLAP_COMPLETE_INDEX")
        .ok()
        .and_then(|i| i.parse::<usize>().ok())
        .unwrap_or(words.len().saturating_sub(1));
    words.into_iter().take(cursor).collect()
}

/// `--socket PATH` or `--socket=PATH` among `words`, else `VAULT_SOCKET`,
/// as the command itself would use.
fn socket_in(words: &[OsString]) -> Option<PathBuf> {
    let mut given = None;
    let mut iter = words.iter();
    while let Some(w) = iter.next() {
        let w = w.to_string_lossy();
        if w == "--socket" {
            given = iter.next().map(PathBuf::from);
        } else if let Some(path) = w.strip_prefix("--socket=") {
            given = Some(PathBuf::from(path));
        }
    }
    given.or_else(|| std::env::var_os("VAULT_SOCKET").map(PathBuf::from))
}

/// Options of `get` and `set` that take a value, so their value is not
/// taken for the credential's name.
const VALUED: &[&str] = &[
    "--field",
    "-f",
    "--unset",
    "--description",
    "-d",
    "--tag",
    "--expires-at",
    "--ttl",
    "--socket",
    "--clear-after",
];

/// The credential a field completion is about: the first word after `get`
/// or `set` that is neither an option nor an option's value.
fn credential_in(words: &[OsString]) -> Option<String> {
    let words: Vec<String> = words
        .iter()
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    let start = words.iter().position(|w| w == "get" || w == "set")? + 1;
    let mut rest = words[start..].iter();
    while let Some(w) = rest.next() {
        if VALUED.contains(&w.as_str()) {
            rest.next();
        } else if !w.starts_with('-') {
            return Some(w.clone());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn words(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn every_completer_names_an_argument_that_exists() {
        let cmd = Cli::command();
        for (path, arg, _) in COMPLETERS {
            let mut c = &cmd;
            for p in *path {
                c = c.find_subcommand(p).unwrap();
            }
            assert!(
                c.get_arguments().any(|a| a.get_id() == *arg),
                "{path:?} {arg}"
            );
        }
        // And clap's own checks of the whole tree still hold.
        command().build();
    }

    #[test]
    fn the_credential_of_a_field_completion_is_found_among_the_words() {
        assert_eq!(
            credential_in(&words("vault get github --field")),
            Some("github".into())
        );
        assert_eq!(
            credential_in(&words("vault --json get -f x github")),
            Some("github".into())
        );
        assert_eq!(
            credential_in(&words("vault set --tag t db --unset")),
            Some("db".into())
        );
        assert_eq!(credential_in(&words("vault get --field")), None);
        assert_eq!(credential_in(&words("vault list")), None);
    }

    #[test]
    fn words_a_shell_would_interpret_are_never_offered() {
        assert!(well_formed(Kind::Credential, "me@github.com/work"));
        assert!(well_formed(Kind::Tag, "env=prod"));
        assert!(well_formed(Kind::Field, "DB_PASSWORD"));
        assert!(well_formed(Kind::Emitter, "3f9c0a1b22de"));
        for bad in [
            "a;rm -rf ~",
            "$(id)",
            "a b",
            "x*",
            "a\nb",
            "`id`",
            "",
            "a|b",
        ] {
            for kind in [Kind::Credential, Kind::Tag, Kind::Field, Kind::Emitter] {
                assert!(!well_formed(kind, bad), "{kind:?} {bad:?}");
            }
        }
    }

    #[test]
    fn the_socket_of_the_command_line_wins_over_the_environment() {
        assert_eq!(
            socket_in(&words("vault --socket /s get")),
            Some(PathBuf::from("/s"))
        );
        assert_eq!(
            socket_in(&words("vault get --socket=/t x")),
            Some(PathBuf::from("/t"))
        );
    }
}
