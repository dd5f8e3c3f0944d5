//! `vault` in a real terminal (issue 26): a tmux session runs a shell with
//! the vault's environment, the test types into it and reads the screen.
//! `vault add` asks for each required field it was not given, hiding
//! secrets as they are typed and echoing the rest; without a terminal it
//! fails as before, naming the fields. Needs `tmux` (`bash .ci/run`
//! installs it); without it the tests print `SKIP …` and pass, unless
//! `VAULT_TEST_REQUIRE_TMUX=1` (set by `.ci/run`) makes that a failure.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use vault_e2e::tmux::Tmux;
use vault_e2e::{VaultHome, secret};

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
    term.press("C-c");
    while !dir.join("int").exists() {
        assert!(Instant::now() < deadline, "the editor never saw Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(dir.join("go"), "").unwrap();
    term.wait_for("saved api as revision 2");
    assert_eq!(vh.field("api", "token"), "after");
}
