//! `vault` in a real terminal (issue 26): a tmux session runs a shell with
//! the vault's environment, the test types into it and reads the screen.
//! `vault add` asks for each required field it was not given, hiding
//! secrets as they are typed and echoing the rest; without a terminal it
//! fails as before, naming the fields. Needs `tmux` (`bash .ci/run`
//! installs it); without it the tests print `SKIP …` and pass, unless
//! `VAULT_TEST_REQUIRE_TMUX=1` (set by `.ci/run`) makes that a failure.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use vault_e2e::{Run, VaultHome, run_command, secret, which};

/// A detached tmux session on a private socket, killed on drop.
struct Tmux<'a> {
    vh: &'a VaultHome,
    tmux: PathBuf,
    socket: PathBuf,
}

impl Drop for Tmux<'_> {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

impl<'a> Tmux<'a> {
    /// A 160x40 session running bash with the vault's environment, or `None`
    /// (after `SKIP`) without tmux.
    fn start(vh: &'a VaultHome, test: &str) -> Option<Self> {
        let Some(tmux) = which("tmux") else {
            let why =
                format!("SKIP {test}: needs tmux (apt install tmux; bash .ci/run installs it)");
            assert!(
                std::env::var_os("VAULT_TEST_REQUIRE_TMUX").is_none(),
                "{why}"
            );
            eprintln!("{why}");
            return None;
        };
        let t = Tmux {
            vh,
            tmux,
            socket: vh.root().join("tmux.sock"),
        };
        t.run(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "160",
            "-y",
            "40",
            "env PS1='term$ ' bash --norc --noprofile",
        ])
        .ok();
        t.wait_for("term$");
        Some(t)
    }

    fn run(&self, args: &[&str]) -> Run {
        let mut all = vec!["-S", self.socket.to_str().unwrap(), "-f", "/dev/null"];
        all.extend_from_slice(args);
        let mut cmd = self.vh.command(&self.tmux, all);
        cmd.env("TERM", "xterm-256color");
        run_command(cmd, None, Duration::from_secs(10))
    }

    /// Types `text` and Enter.
    fn type_line(&self, text: &str) {
        self.run(&["send-keys", "-t", "t", "-l", text]).ok();
        self.run(&["send-keys", "-t", "t", "Enter"]).ok();
    }

    fn screen(&self) -> String {
        let run = self.run(&["capture-pane", "-p", "-t", "t"]);
        run.ok();
        run.stdout.clone()
    }

    /// The screen once it shows `needle` (tmux drops trailing spaces).
    fn wait_for(&self, needle: &str) -> String {
        let needle = needle.trim_end();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if screen.contains(needle) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the terminal never showed {needle:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn add_asks_for_the_fields_it_was_not_given() {
    let vh = VaultHome::new();
    vh.init();
    let Some(term) = Tmux::start(&vh, "add_asks_for_the_fields_it_was_not_given") else {
        return;
    };
    // A token: the one required field, hidden.
    let token = secret("typed-token");
    term.type_line("vault add github --type token");
    term.wait_for("token: ");
    term.type_line(&token);
    let screen = term.wait_for("added github");
    assert!(!screen.contains(&token), "the token was echoed:\n{screen}");
    assert_eq!(vh.field("github", "token"), token);

    // A login: the user name echoed, the password hidden, in that order.
    let password = secret("typed-password");
    term.type_line("vault add db --type password url=https://db.example");
    term.wait_for("username: ");
    term.type_line("app-user");
    let screen = term.wait_for("password: ");
    assert!(screen.contains("username: app-user"), "{screen}");
    term.type_line(&password);
    let screen = term.wait_for("added db");
    assert!(
        !screen.contains(&password),
        "the password was echoed:\n{screen}"
    );
    assert_eq!(vh.field("db", "username"), "app-user");
    assert_eq!(vh.field("db", "password"), password);

    // What was given is not asked again; --generate fills its field.
    term.type_line("clear");
    term.type_line("vault add shop --type password --generate");
    term.wait_for("username: ");
    term.type_line("me");
    let screen = term.wait_for("added shop");
    assert!(
        !screen.lines().any(|l| l.starts_with("password:")),
        "{screen}"
    );
    assert_eq!(vh.field("shop", "password").len(), 24);
}

#[test]
fn without_a_terminal_add_names_what_is_missing() {
    let vh = VaultHome::new();
    vh.init();
    vh.vault(["add", "github", "--type", "token"])
        .code(2)
        .stderr_has("missing required field for type token: token");
    vh.vault(["add", "db", "--type", "password"])
        .code(2)
        .stderr_has("missing required fields for type password: username, password");
    assert!(vh.vault(["list", "--format", "json"]).names().is_empty());
}

#[test]
fn ctrl_c_in_the_editor_is_the_editors() {
    let vh = VaultHome::new();
    vh.init();
    let Some(term) = Tmux::start(&vh, "ctrl_c_in_the_editor_is_the_editors") else {
        return;
    };
    vh.vault_in(["add", "api", "--type", "token", "token=-"], b"before")
        .ok();
    // An editor that, like vim, takes Ctrl-C as a key and goes on.
    let dir = vh.root().join("ctrl-c");
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    std::fs::write(
        dir.join("ed.sh"),
        format!(
            "trap 'touch {d}/int' INT\ntouch {d}/started\n\
             while [ ! -e {d}/go ]; do sleep 0.1; done\n\
             sed -i 's/^token = .*/token = \"after\"/' \"$1\"\n"
        ),
    )
    .unwrap();
    term.type_line(&format!("EDITOR='sh {d}/ed.sh' vault edit api"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("started").exists() {
        assert!(Instant::now() < deadline, "the editor never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    term.run(&["send-keys", "-t", "t", "C-c"]).ok();
    while !dir.join("int").exists() {
        assert!(Instant::now() < deadline, "the editor never saw Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(dir.join("go"), "").unwrap();
    term.wait_for("saved api as revision 2");
    assert_eq!(vh.field("api", "token"), "after");
}
