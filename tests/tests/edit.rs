//! `vault edit NAME` (issue 26), driven through scripted `$EDITOR`s: the
//! fields arrive as TOML in a 0600 file in a 0700 folder, an edit becomes a
//! new revision, an unchanged file saves nothing, a file that does not parse
//! comes back with the error on top, and the file is gone afterwards: after
//! a failing editor, a killed editor, and a killed `vault` (the daemon
//! sweeps its folder).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vault_e2e::{Run, VaultHome, secret};

/// `vault edit NAME` with `EDITOR=sh SCRIPT`; the script gets the file as
/// `$1` and a scratch dir as `$LOG`.
fn edit(vh: &VaultHome, name: &str, script: &str) -> (Run, PathBuf) {
    let log = vh.root().join(format!("edit-log-{}", rand_suffix()));
    std::fs::create_dir_all(&log).unwrap();
    let path = log.join("editor.sh");
    std::fs::write(&path, script).unwrap();
    let mut cmd = vh.command(&vh.vault_bin, ["edit", name]);
    cmd.env("EDITOR", format!("sh {}", path.display()))
        .env("LOG", &log)
        .env_remove("VISUAL");
    let run = vault_e2e::run_command(cmd, None, Duration::from_secs(60));
    (run, log)
}

fn rand_suffix() -> String {
    format!(
        "{:08x}",
        vault_e2e::random_bytes(4)
            .iter()
            .fold(0u32, |a, b| a << 8 | u32::from(*b))
    )
}

fn read(log: &Path, file: &str) -> String {
    std::fs::read_to_string(log.join(file)).unwrap_or_default()
}

fn revisions(vh: &VaultHome, name: &str) -> usize {
    vh.vault(["--json", "history", name])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .len()
}

/// Records where the file is and its folder's and its own mode.
const RECORD: &str = r#"echo "$1" > "$LOG/path"; stat -c %a "$1" > "$LOG/mode"; stat -c %a "$(dirname "$1")" > "$LOG/dirmode"; "#;

/// Walks up from the editor to the `vault` that started it and kills it.
const KILL_VAULT: &str = r#"
p=$PPID; n=0
while [ "$(ps -o comm= -p "$p")" != vault ] && [ $n -lt 5 ]; do
    p=$(ps -o ppid= -p "$p" | tr -d ' '); n=$((n + 1))
done
[ "$(ps -o comm= -p "$p")" = vault ] && kill -9 "$p"
sleep 1
"#;

#[test]
fn an_edit_is_a_new_revision_and_the_file_is_wiped() {
    let vh = VaultHome::new();
    vh.init();
    let old = secret("old-token");
    vh.vault_in(
        [
            "add",
            "api",
            "--type",
            "token",
            "token=-",
            "url=https://a.example",
        ],
        old.as_bytes(),
    )
    .ok();
    let new = secret("new-token");
    // Changes the token, removes url, adds an env; keeps no copy.
    let script = format!(
        "{RECORD}\nsed -i -e 's/^token = .*/token = \"{new}\"/' -e '/^url = /d' \"$1\"\necho 'env = \"API_KEY\"' >> \"$1\"\n"
    );
    let (run, log) = edit(&vh, "api", &script);
    run.ok()
        .stderr_has("saved api as revision 2")
        .never_prints(&old)
        .never_prints(&new);
    assert_eq!(read(&log, "mode").trim(), "600");
    assert_eq!(read(&log, "dirmode").trim(), "700");
    let file = PathBuf::from(read(&log, "path").trim());
    assert!(
        !file.exists() && !file.parent().unwrap().exists(),
        "{file:?} is left"
    );
    assert_eq!(vh.field("api", "token"), new);
    assert_eq!(vh.field("api", "env"), "API_KEY");
    vh.vault(["get", "api", "--field", "url"]).code(4);
    assert_eq!(revisions(&vh, "api"), 2);

    // A multi-line value keeps every byte, and an unchanged file saves nothing.
    let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE=\n-----END OPENSSH PRIVATE KEY-----\n";
    vh.vault_in(
        ["add", "deploy", "--type", "ssh", "private_key=-"],
        key.as_bytes(),
    )
    .ok();
    let (run, _) = edit(&vh, "deploy", "true\n");
    run.ok().stderr_has("no changes: nothing saved");
    assert_eq!(revisions(&vh, "deploy"), 1);
    assert_eq!(
        vh.field("deploy", "private_key"),
        key.trim_end_matches('\n')
    );
    vh.vault(["get", "deploy", "--field", "private_key"])
        .ok()
        .stdout_has(key);
}

#[test]
fn a_file_that_does_not_parse_comes_back_with_the_error() {
    let vh = VaultHome::new();
    vh.init();
    vh.vault_in(["add", "api", "--type", "token", "token=-"], b"t1")
        .ok();
    // Round 1 breaks the file; round 2 finds the error on top, pointing at
    // the bad line, and writes a field a token does not have; round 3 finds
    // that refusal and fixes it.
    let script = r#"
n=$(cat "$LOG/n" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$LOG/n"
case $n in
1) printf '# comment\ntoken = unquoted\n' > "$1" ;;
2) head -n 1 "$1" > "$LOG/error2"; sed -n 4p "$1" > "$LOG/line4"; echo 'tokn = "t2"' > "$1" ;;
*) head -n 1 "$1" > "$LOG/error3"; echo 'token = "t2"' > "$1" ;;
esac
"#;
    let (run, log) = edit(&vh, "api", script);
    run.ok().stderr_has("saved api");
    let error2 = read(&log, "error2");
    assert!(
        error2.starts_with("# ERROR at line 4: this is not valid TOML"),
        "{error2}"
    );
    assert_eq!(read(&log, "line4").trim(), "token = unquoted");
    assert!(
        read(&log, "error3").contains("unknown field 'tokn'"),
        "{}",
        read(&log, "error3")
    );
    assert_eq!(vh.field("api", "token"), "t2");
    assert_eq!(revisions(&vh, "api"), 2);

    // Changed by someone else while the editor is open: asked again, then
    // the second save is taken.
    let script = r#"
if [ ! -e "$LOG/once" ]; then
    touch "$LOG/once"; vault set api token=meanwhile >/dev/null 2>&1
    echo 'token = "mine"' > "$1"
else
    head -n 1 "$1" > "$LOG/error"; echo 'token = "mine"' > "$1"
fi
"#;
    let (run, log) = edit(&vh, "api", script);
    run.ok().stderr_has("saved api as revision 4");
    assert!(
        read(&log, "error").contains("changed since you opened it"),
        "{}",
        read(&log, "error")
    );
    assert_eq!(vh.field("api", "token"), "mine");

    // A value that is no string, then an emptied file: cancelled.
    let (run, _) = edit(
        &vh,
        "api",
        "echo 'token = 5' > \"$1\"; [ -e \"$LOG/r\" ] && : > \"$1\"; touch \"$LOG/r\"\n",
    );
    run.ok().stderr_has("emptied: nothing changed");
    assert_eq!(vh.field("api", "token"), "mine");
}

#[test]
fn a_failed_or_killed_editor_or_vault_leaves_nothing() {
    let vh = VaultHome::new();
    vh.init();
    let token = secret("kept");
    vh.vault_in(
        ["add", "api", "--type", "token", "token=-"],
        token.as_bytes(),
    )
    .ok();
    let (run, log) = edit(&vh, "api", &format!("{RECORD}\nexit 3\n"));
    run.code(1).stderr_has("exited with 3: nothing changed");
    assert!(!PathBuf::from(read(&log, "path").trim()).exists());

    let (run, log) = edit(&vh, "api", &format!("{RECORD}\nkill -9 $$\n"));
    run.code(1).stderr_has("killed by signal 9");
    assert!(!PathBuf::from(read(&log, "path").trim()).exists());

    // vault itself killed while the editor has the file: the daemon sweeps
    // the folder (its name carries the dead pid).
    let (run, log) = edit(&vh, "api", &format!("{RECORD}\n{KILL_VAULT}"));
    assert_ne!(run.code, 0, "{run}");
    let file = PathBuf::from(read(&log, "path").trim());
    let deadline = Instant::now() + Duration::from_secs(15);
    while file.parent().unwrap().exists() {
        assert!(Instant::now() < deadline, "{file:?} was never swept");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(vh.field("api", "token"), token);
    assert_eq!(revisions(&vh, "api"), 1);
}
