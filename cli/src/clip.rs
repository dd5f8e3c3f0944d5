//! `vault get --clip`: a field's value on the system clipboard, cleared
//! after a while unless something else was copied meanwhile
//! (docs/user-guide.md, "Copying to the clipboard").
//!
//! On X11 (and on Wayland) a clipboard holds no data: the process that set
//! it serves every paste, and the value is gone when that process exits. So
//! `vault get --clip` hands the value to a holder: this same binary started
//! as [`HOLDER_NAME`] (a name in argv[0], like the credential helpers, so it
//! shows in neither help, completion nor the man pages). The value goes over
//! the holder's stdin, never in argv or the environment. The holder starts a
//! session of its own, sets the clipboard, answers `ok` on its stdout (so
//! `vault` returns only once a paste would see the value), closes its stdio
//! and waits. At the deadline it reads the clipboard and clears it only when
//! it still holds our value. macOS's pasteboard keeps the data itself; the
//! holder is still what clears it.
//!
//! This module must never print, log or put into an error a value it
//! copies: arboard's errors are about the display, and are passed on as
//! such; the holder's stderr is /dev/null.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use vault_protocol::credential::CredentialType;
use vault_protocol::message::RecordView;
use vault_protocol::timefmt::parse_duration;
use vault_protocol::{SecretValue, WireError};
use zeroize::Zeroizing;

use crate::error::{CliResult, failed, usage};

/// argv[0] of the holder process (shown by `ps`).
pub const HOLDER_NAME: &str = "vault-clip-hold";

/// How long a copied value stays, unless `--clear-after` or
/// `VAULT_CLIP_CLEAR_AFTER` says otherwise (gopass's default).
pub const DEFAULT_CLEAR_AFTER: Duration = Duration::from_secs(45);

/// The longest a value may stay: a clipboard that holds a secret for hours
/// is a secret left lying around.
pub const MAX_CLEAR_AFTER: Duration = Duration::from_secs(3600);

/// The longest `vault get --clip` waits for the holder to say the clipboard
/// is set (a display that accepts the connection and then hangs).
const HOLDER_ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// The largest value the holder accepts (a frame is 1 MiB at most).
const MAX_VALUE: u64 = 1 << 20;

/// The variable that sets the clear time for every `--clip` of a session.
/// Read here rather than by clap, for which a value from the environment
/// would count as a `--clear-after` given without `--clip`.
pub const CLEAR_AFTER_VAR: &str = "VAULT_CLIP_CLEAR_AFTER";

/// The clear time: `--clear-after`, else `VAULT_CLIP_CLEAR_AFTER`, else
/// the default.
pub fn clear_after(flag: Option<&str>) -> CliResult<Duration> {
    match (flag, std::env::var(CLEAR_AFTER_VAR)) {
        (Some(text), _) => parse_clear_after(text, "--clear-after"),
        (None, Ok(text)) if !text.trim().is_empty() => parse_clear_after(&text, CLEAR_AFTER_VAR),
        (None, _) => Ok(DEFAULT_CLEAR_AFTER),
    }
}

/// A clear time as seconds or a duration such as `90s` or `2m`: 1 s to
/// [`MAX_CLEAR_AFTER`], in whole seconds. `source` names where it came from.
fn parse_clear_after(text: &str, source: &str) -> CliResult<Duration> {
    let text = text.trim();
    let parsed = match text.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => parse_duration(text),
    };
    let bad = |why: &str| {
        usage(format!(
            "{source} '{text}' {why}: give 1 to {} seconds, or a duration such as 90s or 2m",
            MAX_CLEAR_AFTER.as_secs()
        ))
    };
    let d = parsed.map_err(|_| bad("is neither seconds nor a duration"))?;
    if d.subsec_nanos() != 0 {
        return Err(bad("is not a whole number of seconds"));
    }
    if d.is_zero() {
        return Err(bad("would clear the clipboard before anyone could paste"));
    }
    if d > MAX_CLEAR_AFTER {
        return Err(bad("is longer than an hour"));
    }
    Ok(d)
}

/// Whether this session has a clipboard at all, checked before anything is
/// asked of the daemon. On Linux and the BSDs that is a display to talk
/// to; macOS always has its pasteboard.
pub fn reachable() -> CliResult<()> {
    if cfg!(target_os = "macos") {
        return Ok(());
    }
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    if set("WAYLAND_DISPLAY") || set("DISPLAY") {
        return Ok(());
    }
    Err(no_clipboard(
        "DISPLAY and WAYLAND_DISPLAY are unset".to_owned(),
    ))
}

/// The error for a session without a usable clipboard (exit 1).
fn no_clipboard(why: String) -> WireError {
    failed(format!(
        "no clipboard: {why}; run in a graphical session (or ssh -X), or drop --clip to print \
         the value"
    ))
}

/// The field `--clip` copies when no `--field` is given: the password of
/// a password, the token of a token, the auth of a registry, or a record's
/// only field. Anything else must be named (exit 2).
pub fn default_field(view: &RecordView) -> CliResult<String> {
    let by_type = match view.kind {
        CredentialType::Password => Some("password"),
        CredentialType::Token => Some("token"),
        CredentialType::Registry => Some("auth"),
        _ => None,
    };
    if let Some(field) = by_type.filter(|f| view.fields.contains_key(*f)) {
        return Ok(field.to_owned());
    }
    let mut names = view.fields.keys();
    if let (Some(only), None) = (names.next(), names.next()) {
        return Ok(only.clone());
    }
    let known: Vec<_> = view.fields.keys().map(String::as_str).collect();
    Err(usage(format!(
        "which field of '{}' should go to the clipboard? say --field F (its fields are {})",
        view.name,
        known.join(", ")
    )))
}

/// Hands `value` to a new holder process and returns once the clipboard
/// holds it (or with the holder's error). The holder then runs on alone.
pub fn copy(value: &SecretValue, clear_after: Duration) -> CliResult<()> {
    let exe = std::env::current_exe().map_err(|e| {
        failed(format!(
            "cannot find this vault program to start the clipboard holder: {e}"
        ))
    })?;
    let mut cmd = Command::new(exe);
    {
        use std::os::unix::process::CommandExt;
        cmd.arg0(HOLDER_NAME);
    }
    let mut child = cmd
        .arg("--clear-after")
        .arg(clear_after.as_secs().to_string())
        // Not holding a directory (a mount) busy for the next minute.
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| failed(format!("cannot start the clipboard holder: {e}")))?;
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        let _ = child.kill();
        return Err(failed("cannot talk to the clipboard holder"));
    };
    let sent = stdin
        .write_all(value.expose_secret().as_bytes())
        .and_then(|()| stdin.flush());
    drop(stdin);
    if let Err(e) = sent {
        let _ = child.kill();
        let _ = child.wait();
        return Err(failed(format!(
            "cannot hand the value to the clipboard holder: {e}"
        )));
    }

    // Its answer, read on a thread so a hung display cannot hang us.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = BufReader::new(stdout)
            .take(4096)
            .read_line(&mut line)
            .map(|_| line);
        let _ = tx.send(read);
    });
    let answer = match rx.recv_timeout(HOLDER_ANSWER_TIMEOUT) {
        Ok(Ok(line)) => line,
        Ok(Err(e)) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(failed(format!("the clipboard holder did not answer: {e}")));
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(failed(format!(
                "the clipboard did not answer within {} s: is the display alive?",
                HOLDER_ANSWER_TIMEOUT.as_secs()
            )));
        }
    };
    let answer = answer.trim_end();
    if answer == "ok" {
        return Ok(());
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(match answer.split_once(' ') {
        Some(("no-clipboard", why)) => no_clipboard(why.to_owned()),
        Some(("error", why)) => failed(format!("the clipboard holder failed: {why}")),
        _ => failed("the clipboard holder exited without setting the clipboard"),
    })
}

/// The holder's `main`: `vault-clip-hold --clear-after SECS`, the value on
/// stdin. Its exit code is seen by nobody once it has answered.
pub fn hold(args: &[String]) -> i32 {
    // As vaultd: no core dump and no ptrace by the user's other processes,
    // for the value this process holds until the deadline.
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Core,
        rustix::process::Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    );
    // A session of its own: no terminal's hangup or Ctrl-C reaches it, and
    // it outlives the `vault` that started it.
    let _ = rustix::process::setsid();
    let clear_after = match args {
        [flag, secs] if flag == "--clear-after" => secs
            .parse::<u64>()
            .ok()
            .map(Duration::from_secs)
            .filter(|d| !d.is_zero() && *d <= MAX_CLEAR_AFTER),
        _ => None,
    };
    let Some(clear_after) = clear_after else {
        answer("error the clipboard holder was started with bad arguments");
        return 2;
    };
    let value = match read_value() {
        Ok(value) => value,
        Err(e) => {
            answer(&format!("error cannot read the value to copy: {e}"));
            return 1;
        }
    };
    let mut clipboard = match set(&value) {
        Ok(clipboard) => clipboard,
        Err(why) => {
            answer(&format!("no-clipboard {why}"));
            return 1;
        }
    };
    let deadline = SystemTime::now() + clear_after;
    answer("ok");
    detach_stdio();
    sleep_until(deadline);
    clear_if_ours(&mut clipboard, &value);
    0
}

/// One line to the `vault` that waits (it may be gone: nothing to do then).
fn answer(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// The value from stdin, in memory that is wiped when dropped.
fn read_value() -> io::Result<Zeroizing<String>> {
    let mut bytes = Zeroizing::new(Vec::new());
    io::stdin()
        .lock()
        .take(MAX_VALUE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_VALUE {
        return Err(io::Error::other("larger than 1 MiB"));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| io::Error::other("not UTF-8 text"))?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// Opens the clipboard and puts `value` on it, marked for clipboard
/// managers (KDE's Klipper, macOS's history) as a password not to keep.
fn set(value: &str) -> Result<arboard::Clipboard, String> {
    let mut clipboard = arboard::Clipboard::new().map_err(|e| describe(&e))?;
    let set = clipboard.set();
    #[cfg(all(
        unix,
        not(any(target_os = "macos", target_os = "android", target_os = "emscripten"))
    ))]
    let set = {
        use arboard::SetExtLinux;
        set.exclude_from_history()
    };
    #[cfg(target_os = "macos")]
    let set = {
        use arboard::SetExtApple;
        set.exclude_from_history()
    };
    set.text(value).map_err(|e| describe(&e))?;
    Ok(clipboard)
}

/// An arboard error as a sentence. Its texts are about the display (an X
/// connection refused, no data-control protocol), never about the data.
fn describe(e: &arboard::Error) -> String {
    match e {
        arboard::Error::ClipboardNotSupported => {
            "this session's clipboard is not supported (on Wayland, the compositor needs the \
             data-control protocol)"
                .to_owned()
        }
        arboard::Error::ClipboardOccupied => {
            "another program holds the clipboard open; try again".to_owned()
        }
        other => format!("cannot open the clipboard ({other})"),
    }
}

/// Points stdin, stdout and stderr at /dev/null: the pipes to `vault` are
/// closed, and nothing written later could reach a terminal or a log.
fn detach_stdio() {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    let _ = rustix::stdio::dup2_stdin(&null);
    let _ = rustix::stdio::dup2_stdout(&null);
    let _ = rustix::stdio::dup2_stderr(&null);
}

/// Sleeps until the wall clock passes `deadline`, waking every second: a
/// machine suspended for an hour clears the value as soon as it wakes.
fn sleep_until(deadline: SystemTime) {
    while let Ok(left) = deadline.duration_since(SystemTime::now()) {
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_secs(1)));
    }
}

/// Clears the clipboard when it still holds `value`: a value copied since
/// (by anyone) is the user's, and stays.
fn clear_if_ours(clipboard: &mut impl Board, value: &str) {
    let Some(now) = clipboard.text() else {
        // Empty, an image, or no longer readable: nothing of ours to clear.
        return;
    };
    if now.as_str() == value {
        clipboard.clear();
    }
}

/// What [`clear_if_ours`] needs of a clipboard (a fake in the tests: on
/// X11 the holder's exit drops the selection anyway, so only a unit test
/// can show the comparison).
trait Board {
    /// The text on it, if any.
    fn text(&mut self) -> Option<Zeroizing<String>>;
    /// Empties it.
    fn clear(&mut self);
}

impl Board for arboard::Clipboard {
    fn text(&mut self) -> Option<Zeroizing<String>> {
        self.get_text().ok().map(Zeroizing::new)
    }

    fn clear(&mut self) {
        let _ = arboard::Clipboard::clear(self);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use super::*;
    use vault_protocol::timefmt::Timestamp;

    /// A clipboard in memory, counting clears.
    struct Fake(Option<&'static str>, usize);

    impl Board for Fake {
        fn text(&mut self) -> Option<Zeroizing<String>> {
            self.0.map(|t| Zeroizing::new(t.to_owned()))
        }

        fn clear(&mut self) {
            self.0 = None;
            self.1 += 1;
        }
    }

    #[test]
    fn only_our_own_value_is_cleared() {
        let mut ours = Fake(Some("s3cret"), 0);
        clear_if_ours(&mut ours, "s3cret");
        assert_eq!((ours.0, ours.1), (None, 1));
        let mut theirs = Fake(Some("copied later"), 0);
        clear_if_ours(&mut theirs, "s3cret");
        assert_eq!((theirs.0, theirs.1), (Some("copied later"), 0));
        let mut empty = Fake(None, 0);
        clear_if_ours(&mut empty, "s3cret");
        assert_eq!(empty.1, 0);
    }

    #[test]
    fn clear_after_takes_seconds_or_a_duration() {
        let parse = |text| parse_clear_after(text, "--clear-after").unwrap();
        assert_eq!(parse("2"), Duration::from_secs(2));
        assert_eq!(parse(" 45 "), DEFAULT_CLEAR_AFTER);
        assert_eq!(parse("90s"), Duration::from_secs(90));
        assert_eq!(parse("2m"), Duration::from_secs(120));
        assert_eq!(parse("1h"), MAX_CLEAR_AFTER);
    }

    #[test]
    fn clear_after_refuses_zero_fractions_and_absurd_values() {
        for bad in [
            "0",
            "0s",
            "1500ms",
            "3601",
            "2h",
            "-5",
            "soon",
            "",
            "99999999999999999999",
        ] {
            let e = parse_clear_after(bad, "--clear-after").unwrap_err();
            assert_eq!(e.code, vault_protocol::ErrorCode::Usage, "{bad}");
            assert!(e.message.contains("--clear-after"), "{bad}: {}", e.message);
        }
    }

    fn view(kind: CredentialType, fields: &[&str]) -> RecordView {
        RecordView {
            name: "x".to_owned(),
            kind,
            fields: fields
                .iter()
                .map(|f| ((*f).to_owned(), SecretValue::new("v".to_owned())))
                .collect::<BTreeMap<_, _>>(),
            description: None,
            tags: Vec::new(),
            created_at: Timestamp::now(),
            updated_at: Timestamp::now(),
            expires_at: None,
            expired: false,
            revision: 1,
        }
    }

    #[test]
    fn default_field_is_the_obvious_secret_or_must_be_named() {
        let pick = |kind, fields: &[&str]| default_field(&view(kind, fields));
        assert_eq!(
            pick(CredentialType::Password, &["username", "password", "url"]).unwrap(),
            "password"
        );
        assert_eq!(
            pick(CredentialType::Token, &["token", "url"]).unwrap(),
            "token"
        );
        assert_eq!(
            pick(CredentialType::Registry, &["registry", "username", "auth"]).unwrap(),
            "auth"
        );
        assert_eq!(
            pick(CredentialType::Generic, &["API_KEY"]).unwrap(),
            "API_KEY"
        );
        let e = pick(CredentialType::Aws, &["access_key_id", "secret_access_key"]).unwrap_err();
        assert_eq!(e.code, vault_protocol::ErrorCode::Usage);
        assert!(e.message.contains("--field"), "{}", e.message);
        assert!(e.message.contains("secret_access_key"), "{}", e.message);
    }
}
