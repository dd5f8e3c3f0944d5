//! A real terminal for the interactive tests (`terminal.rs`,
//! `completion.rs`): a detached tmux session on a private socket runs a
//! shell with the vault's environment; the test types into it and reads the
//! screen. Needs `tmux` (`bash .ci/run` installs it); without it [`Tmux::start`]
//! prints `SKIP …` and gives `None`, unless `VAULT_TEST_REQUIRE_TMUX=1` (set
//! by `.ci/run`) makes that a failure.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::{Run, VaultHome, run_command, which};

/// A detached tmux session, killed (with its shell) on drop.
#[derive(Debug)]
pub struct Tmux<'a> {
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
    /// A session running bash without rc files and with the prompt `term$ `.
    pub fn start(vh: &'a VaultHome, test: &str) -> Option<Self> {
        Self::start_shell(
            vh,
            test,
            "env PS1='term$ ' bash --norc --noprofile",
            "term$",
        )
    }

    /// A 160x40 session running `shell` (a command line), once the screen
    /// shows `prompt`; `None` (after `SKIP`) without tmux.
    pub fn start_shell(vh: &'a VaultHome, test: &str, shell: &str, prompt: &str) -> Option<Self> {
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
            shell,
        ])
        .ok();
        t.wait_for(prompt);
        Some(t)
    }

    /// Runs `tmux ARGS` against this session's server.
    pub fn run(&self, args: &[&str]) -> Run {
        let mut all = vec!["-S", self.socket.to_str().unwrap(), "-f", "/dev/null"];
        all.extend_from_slice(args);
        let mut cmd = self.vh.command(&self.tmux, all);
        cmd.env("TERM", "xterm-256color");
        run_command(cmd, None, Duration::from_secs(10))
    }

    /// Types `text` literally, without Enter.
    pub fn type_text(&self, text: &str) {
        self.run(&["send-keys", "-t", "t", "-l", "--", text]).ok();
    }

    /// Presses one key by tmux's name for it (`Tab`, `C-c`, `Enter`).
    pub fn press(&self, key: &str) {
        self.run(&["send-keys", "-t", "t", key]).ok();
    }

    /// Types `text` and Enter.
    pub fn type_line(&self, text: &str) {
        self.type_text(text);
        self.press("Enter");
    }

    /// What the terminal shows now.
    pub fn screen(&self) -> String {
        let run = self.run(&["capture-pane", "-p", "-t", "t"]);
        run.ok();
        run.stdout.clone()
    }

    /// The screen once it shows `needle` (tmux drops trailing spaces);
    /// fails the test after 20 s.
    pub fn wait_for(&self, needle: &str) -> String {
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
