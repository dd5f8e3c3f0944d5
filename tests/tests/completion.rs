//! Tab completion in real shells (issue 26): bash, zsh and fish each load
//! the script `vault completions SHELL` prints, the way the user guide says
//! to install it, in a tmux terminal; the test types a prefix, presses Tab
//! and reads the screen. Names come from the running daemon: credentials,
//! a credential's fields, tags. A locked vault or a stopped daemon completes
//! no names, prints nothing and starts nothing.
//!
//! Needs tmux, zsh and fish (`bash .ci/run` installs them). Without one, its
//! test prints `SKIP …` and passes, unless `VAULT_TEST_REQUIRE_SHELLS=1`
//! (set by `.ci/run`) makes that a failure.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use vault_e2e::tmux::Tmux;
use vault_e2e::{VaultHome, secret, which};

/// The prompt every shell here shows.
const PROMPT: &str = "term> ";

/// A vault with a few names to complete, and the shell's script installed
/// under the fake home.
fn vault_with_names(shell: &str) -> VaultHome {
    let vh = VaultHome::new();
    vh.init();
    let token = vh.at_file("t", &secret("tab-token"));
    vh.vault([
        "add",
        "github",
        "--type",
        "token",
        &format!("token={token}"),
        "url=https://api.github.com",
        "--tag",
        "ci",
        "-d",
        "personal",
    ])
    .ok();
    vh.vault([
        "add",
        "gitlab",
        "--type",
        "token",
        &format!("token={token}"),
    ])
    .ok();
    vh.vault([
        "add",
        "db-prod",
        "--type",
        "password",
        "username=app",
        &format!("password={token}"),
        "--tag",
        "prod",
    ])
    .ok();
    vh.vault([
        "add",
        "me@site.example",
        "--type",
        "password",
        "username=me",
        &format!("password={token}"),
        "--tag",
        "env=stage",
    ])
    .ok();
    let script = vh.vault(["completions", shell]);
    script.ok();
    let home = &vh.user_home;
    let (dir, file) = match shell {
        "bash" => (home.clone(), "vault.bash"),
        "zsh" => (home.join(".zfunc"), "_vault"),
        _ => (home.join(".config/fish/completions"), "vault.fish"),
    };
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(file), &script.stdout).unwrap();
    vh
}

/// The shell's rc file and the command line that starts it in tmux, or
/// `None` (after `SKIP`) when the shell is not installed.
fn shell_command(vh: &VaultHome, shell: &str, test: &str) -> Option<String> {
    if which(shell).is_none() {
        let why =
            format!("SKIP {test}: needs {shell} (apt install {shell}; bash .ci/run installs it)");
        assert!(
            std::env::var_os("VAULT_TEST_REQUIRE_SHELLS").is_none(),
            "{why}"
        );
        eprintln!("{why}");
        return None;
    }
    let home = &vh.user_home;
    let write = |path: &Path, text: &str| {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    Some(match shell {
        "bash" => {
            // As the user guide says: source the script from ~/.bashrc.
            write(
                &home.join(".bashrc"),
                &format!("PS1='{PROMPT}'\nsource ~/vault.bash\n"),
            );
            "bash --noprofile --rcfile ~/.bashrc -i".to_owned()
        }
        "zsh" => {
            // The installed way: _vault in $fpath, loaded by compinit.
            write(
                &home.join(".zshrc"),
                &format!(
                    "PS1='{PROMPT}'\nfpath=(~/.zfunc $fpath)\n\
                     autoload -U compinit\ncompinit -u -d ~/.zcompdump\n"
                ),
            );
            "zsh -i".to_owned()
        }
        _ => {
            // fish loads ~/.config/fish/completions/vault.fish itself.
            write(
                &home.join(".config/fish/config.fish"),
                &format!(
                    "function fish_prompt; printf '{PROMPT}'; end\n\
                     set -g fish_greeting\nset -g fish_autosuggestion_enabled 0\n"
                ),
            );
            "fish -i".to_owned()
        }
    })
}

/// The line of the screen that starts with the prompt, last one.
fn command_line(screen: &str) -> String {
    screen
        .lines()
        .rev()
        .find(|l| l.starts_with(PROMPT.trim_end()))
        .unwrap_or_default()
        .trim_end()
        .to_owned()
}

/// Types `text`, presses Tab, and waits for the command line to read
/// `expect`.
fn tab_until(term: &Tmux, text: &str, expect: &str) {
    term.type_text(text);
    term.press("Tab");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let screen = term.screen();
        if command_line(&screen) == format!("{}{expect}", PROMPT.trim_end()).trim_end()
            || command_line(&screen) == format!("{PROMPT}{expect}").trim_end()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {text:?} and Tab the line is not {expect:?}:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Clears the command line (Ctrl-U in bash and zsh, Ctrl-C in fish).
fn clear(term: &Tmux, shell: &str) {
    term.press(if shell == "fish" { "C-c" } else { "C-u" });
    std::thread::sleep(Duration::from_millis(200));
}

fn completes_names(shell: &str, test: &str) {
    let vh = vault_with_names(shell);
    let Some(cmd) = shell_command(&vh, shell, test) else {
        return;
    };
    let Some(term) = Tmux::start_shell(&vh, test, &cmd, PROMPT.trim_end()) else {
        return;
    };

    // Subcommands come from the clap definitions.
    tab_until(&term, "vault hist", "vault history ");
    clear(&term, shell);
    // Credential names, from the daemon.
    tab_until(&term, "vault get gith", "vault get github ");
    // That credential's fields.
    tab_until(&term, "--field u", "vault get github --field url ");
    clear(&term, shell);
    tab_until(&term, "vault exec -c db", "vault exec -c db-prod ");
    clear(&term, shell);
    // Tags.
    tab_until(&term, "vault list --tag pr", "vault list --tag prod ");
    clear(&term, shell);
    // Characters bash breaks words at, or that names and tags may hold.
    tab_until(&term, "vault get me@s", "vault get me@site.example ");
    clear(&term, shell);
    tab_until(
        &term,
        "vault list --tag env=st",
        "vault list --tag env=stage ",
    );
    clear(&term, shell);
    // Two matches: both offered.
    term.type_text("vault edit git");
    term.press("Tab");
    term.press("Tab");
    let screen = term.wait_for("gitlab");
    assert!(screen.contains("github"), "{screen}");
    clear(&term, shell);

    // Locked: no names, no prompt, no error, and the vault stays locked.
    vh.vault(["lock"]).ok();
    tab_until(&term, "vault get gith", "vault get gith");
    std::thread::sleep(Duration::from_millis(700));
    let screen = term.screen();
    assert_eq!(
        command_line(&screen),
        format!("{PROMPT}vault get gith"),
        "{screen}"
    );
    assert!(
        !screen.contains("vault:"),
        "an error was printed:\n{screen}"
    );
    assert!(!screen.contains("assphrase"), "it asked:\n{screen}");
    let status = vh.vault(["--json", "status"]);
    assert_eq!(status.json()["locked"], true, "{}", status.stdout);
    clear(&term, shell);

    // Stopped: no names, and no daemon started by the Tab.
    vh.vault(["daemon", "stop"]).ok();
    tab_until(&term, "vault get gith", "vault get gith");
    std::thread::sleep(Duration::from_millis(700));
    let screen = term.screen();
    assert_eq!(
        command_line(&screen),
        format!("{PROMPT}vault get gith"),
        "{screen}"
    );
    assert!(
        !screen.contains("vault:"),
        "an error was printed:\n{screen}"
    );
    assert!(
        !vh.socket().exists(),
        "the Tab started a daemon ({} exists)",
        vh.socket().display()
    );
}

#[test]
fn bash_completes_names_from_the_daemon() {
    completes_names("bash", "bash_completes_names_from_the_daemon");
}

#[test]
fn zsh_completes_names_from_the_daemon() {
    completes_names("zsh", "zsh_completes_names_from_the_daemon");
}

#[test]
fn fish_completes_names_from_the_daemon() {
    completes_names("fish", "fish_completes_names_from_the_daemon");
}
