//! The real `vault`, `vaultd` and `vault-server` binaries, built fresh once per test process.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The real binaries under test.
#[derive(Debug)]
pub struct Binaries {
    /// `target/<profile>/vault`.
    pub vault: PathBuf,
    /// `target/<profile>/vaultd`.
    pub vaultd: PathBuf,
    /// `target/<profile>/vault-server`.
    pub server: PathBuf,
    /// The workspace root (for `cargo metadata` and the like).
    pub workspace: PathBuf,
}

/// The workspace root, from this crate's manifest dir.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The `cargo` that built these tests.
pub fn cargo() -> PathBuf {
    std::env::var_os("CARGO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO")))
}

/// Finds `vault` and `vaultd` next to this test executable
/// (`target/debug/deps/<test>` → `target/debug/`).
///
/// `cargo test --workspace` builds a package's binaries only for that
/// package's own integration tests, so it does not build `vault`/`vaultd` for
/// us; this runs `cargo build -p vault-cli -p vault-daemon` once per test
/// process so the binaries exist and are never stale. Set
/// `VAULT_E2E_NO_BUILD=1` to use whatever is there.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let mut profile_dir = exe.parent().expect("exe dir").to_path_buf();
        if profile_dir.file_name() == Some(OsStr::new("deps")) {
            profile_dir = profile_dir.parent().expect("profile dir").to_path_buf();
        }
        let workspace = workspace_root();
        if std::env::var_os("VAULT_E2E_NO_BUILD").is_none() {
            let target_dir = profile_dir.parent().expect("target dir");
            let mut build = Command::new(cargo());
            build
                .current_dir(&workspace)
                .args(["build", "--quiet", "-p", "vault-cli", "-p", "vault-daemon"])
                .args(["-p", "vault-server"])
                .arg("--target-dir")
                .arg(target_dir)
                .stdin(Stdio::null());
            // Cargo gives this test process the vault-e2e package's own
            // CARGO_MANIFEST_DIR, CARGO_PKG_* and the like. Build scripts
            // (ring's, through cc) rerun when those change, so passing them
            // on rebuilt ring and all above it on every test run, and again
            // at the next plain `cargo build`: ~50 s each way.
            for (key, _) in std::env::vars_os() {
                let key = key.to_string_lossy();
                let per_package = key.starts_with("CARGO_PKG_")
                    || key.starts_with("CARGO_MANIFEST_")
                    || key.starts_with("CARGO_BIN_")
                    || matches!(
                        &*key,
                        "CARGO_CRATE_NAME"
                            | "CARGO_PRIMARY_PACKAGE"
                            | "CARGO_TARGET_TMPDIR"
                            | "OUT_DIR"
                    );
                if per_package {
                    build.env_remove(&*key);
                }
            }
            if profile_dir.file_name() == Some(OsStr::new("release")) {
                build.arg("--release");
            }
            let out = build.output().expect("run cargo build");
            assert!(
                out.status.success(),
                "building vault and vaultd failed (cargo build -p vault-cli -p vault-daemon):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let vault = profile_dir.join("vault");
        let vaultd = profile_dir.join("vaultd");
        let server = profile_dir.join("vault-server");
        for bin in [&vault, &vaultd, &server] {
            assert!(
                bin.is_file(),
                "{} is missing: run `cargo test --workspace` so the binaries are built",
                bin.display()
            );
        }
        Binaries {
            vault,
            vaultd,
            server,
            workspace,
        }
    })
}
