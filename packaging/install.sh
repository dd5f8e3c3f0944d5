#!/bin/sh
# Installs vault for the current user, without root:
#
#   PREFIX/bin/vault, PREFIX/bin/vaultd         the binaries (cargo install)
#   PREFIX/bin/docker-credential-vault          helper links: the vault binary
#   PREFIX/bin/git-credential-vault             by those names (argv[0])
#   PREFIX/share/bash-completion/completions/vault
#   PREFIX/share/zsh/site-functions/_vault
#   PREFIX/share/fish/vendor_completions.d/vault.fish
#   PREFIX/share/man/man1/vault*.1              generated from the CLI's clap definitions
#   ~/.local/share/systemd/user/vaultd.{service,socket}   (Linux; not enabled)
#   ~/Library/LaunchAgents/com.example.vault.vaultd.plist (macOS; not loaded)
#
# PREFIX is $VAULT_PREFIX, else cargo's own install root ($CARGO_INSTALL_ROOT,
# $CARGO_HOME, ~/.cargo), whose bin/ rustup already put on PATH.
#
# VAULT_INSTALL_FROM=DIR copies vault and vaultd from DIR (e.g. target/release)
# instead of building them with `cargo install` (the README test uses it).
#
# Run from anywhere: paths are relative to this script's repository.
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
prefix=${VAULT_PREFIX:-${CARGO_INSTALL_ROOT:-${CARGO_HOME:-$HOME/.cargo}}}
bin=$prefix/bin
share=$prefix/share

say() { printf 'vault install: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

command -v cargo >/dev/null 2>&1 ||
    die "cargo not found: install Rust from https://rustup.rs, then run this again"

mkdir -p "$bin"
if [ -n "${VAULT_INSTALL_FROM:-}" ]; then
    for b in vault vaultd; do
        [ -x "$VAULT_INSTALL_FROM/$b" ] ||
            die "$VAULT_INSTALL_FROM/$b is missing: build it (cargo build -p vault-cli -p vault-daemon) or unset VAULT_INSTALL_FROM"
        # Replace, never write through: a running vaultd keeps its old file.
        cp "$VAULT_INSTALL_FROM/$b" "$bin/.$b.new"
        mv -f "$bin/.$b.new" "$bin/$b"
    done
    say "copied vault and vaultd from $VAULT_INSTALL_FROM to $bin"
else
    cargo install --quiet --locked --root "$prefix" --path "$repo/daemon"
    cargo install --quiet --locked --root "$prefix" --path "$repo/cli"
    say "installed vault and vaultd in $bin"
fi

# The helpers are the vault binary under other names.
for helper in docker-credential-vault git-credential-vault; do
    ln -sf vault "$bin/$helper"
done

# Completions and man pages, generated from the clap definitions.
dist=$(mktemp -d "${TMPDIR:-/tmp}/vault-dist.XXXXXX")
trap 'rm -rf "$dist"' EXIT
(cd "$repo" && cargo run --quiet --locked -p xtask -- dist --out "$dist" >/dev/null)
mkdir -p "$share/bash-completion/completions" "$share/zsh/site-functions" \
    "$share/fish/vendor_completions.d" "$share/man/man1"
cp "$dist/completions/vault.bash" "$share/bash-completion/completions/vault"
cp "$dist/completions/_vault" "$share/zsh/site-functions/_vault"
cp "$dist/completions/vault.fish" "$share/fish/vendor_completions.d/vault.fish"
cp "$dist"/man/*.1 "$share/man/man1/"
say "installed completions and man pages under $share"

# User units, pointing at the vaultd just installed. Not enabled: vault starts
# vaultd on demand; `systemctl --user enable --now vaultd.socket` hands that
# to systemd.
if [ "$(uname -s)" = Linux ]; then
    units=${XDG_DATA_HOME:-$HOME/.local/share}/systemd/user
    mkdir -p "$units"
    sed "s#^ExecStart=/usr/bin/vaultd#ExecStart=$bin/vaultd#" \
        "$repo/packaging/systemd/vaultd.service" >"$units/vaultd.service"
    cp "$repo/packaging/systemd/vaultd.socket" "$units/vaultd.socket"
    say "installed systemd user units in $units (enable: systemctl --user enable --now vaultd.socket)"
elif [ "$(uname -s)" = Darwin ]; then
    agents=$HOME/Library/LaunchAgents
    agent=com.example.vault.vaultd.plist
    mkdir -p "$agents"
    sed "s#<string>/usr/local/bin/vaultd</string>#<string>$bin/vaultd</string>#" \
        "$repo/packaging/launchd/$agent" >"$agents/$agent"
    say "installed the launchd agent $agents/$agent (load: launchctl bootstrap gui/\$(id -u) $agents/$agent)"
fi

case ":$PATH:" in
*":$bin:"*) ;;
*) say "note: $bin is not on PATH; add it (e.g. export PATH=\"$bin:\$PATH\")" ;;
esac
