//! `vault-leak-scan [DIR]`: fails when any file the end-to-end tests kept
//! (`VAULT_TEST_ARTIFACTS`, else `target/e2e-artifacts`) holds a test
//! secret's marker. Prints the file and line of each hit, never the line.
//! Run by `.ci/run` after `cargo test`; see `docs/testing.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use vault_e2e::leak;

fn main() -> ExitCode {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(leak::artifacts_root);
    let report = match leak::scan(&dir, &leak::NEEDLES) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "vault-leak-scan: cannot scan {} ({e}): run the end-to-end tests first \
                 (cargo test --workspace)",
                dir.display()
            );
            return ExitCode::from(2);
        }
    };
    println!(
        "vault-leak-scan: {} files ({} bytes) under {}: {} vaultd.log, {} runs.log, {} \
         vault-server logs",
        report.files,
        report.bytes,
        dir.display(),
        report.daemon_logs,
        report.run_logs,
        report.server_logs
    );
    if report.daemon_logs == 0 || report.run_logs == 0 {
        eprintln!(
            "vault-leak-scan: nothing to scan (no vaultd.log or no runs.log): the scan would \
             prove nothing; run the end-to-end tests first"
        );
        return ExitCode::from(2);
    }
    if report.hits.is_empty() {
        println!("vault-leak-scan: no test secret or passphrase marker found");
        return ExitCode::SUCCESS;
    }
    for hit in &report.hits {
        println!(
            "LEAK: {}:{}: holds the marker {:?} (the line is not printed: it holds a secret)",
            hit.path.display(),
            hit.line,
            hit.needle
        );
    }
    eprintln!(
        "vault-leak-scan: {} lines hold a test secret; outputs that are asked to print \
         secrets are listed in tests/src/leak.rs (asks_for_secrets)",
        report.hits.len()
    );
    ExitCode::from(1)
}
