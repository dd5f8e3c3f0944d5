//! Replays what the fuzz targets were run on — `fuzz/seeds/<target>/` (the
//! hand-made seeds) and `fuzz/regressions/<target>/` (inputs that once
//! crashed) — through the same check, as part of `cargo test`. Included by
//! `protocol/tests/fuzz_replay.rs` and `daemon/tests/fuzz_replay.rs`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// Runs `check` on every file of the target's corpus and regressions; fails
/// naming every file whose check panicked.
pub fn replay(target: &str, check: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let files = |dir: &str| -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(fuzz.join(dir).join(target))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    };
    let seeds = files("seeds");
    assert!(
        !seeds.is_empty(),
        "no seeds in fuzz/seeds/{target}/: the replay would prove nothing"
    );
    let mut failed = Vec::new();
    for path in seeds.iter().chain(&files("regressions")) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "the {target} check fails on (reproduce with `cargo fuzz run {target} FILE` in fuzz/):\n  {}",
        failed.join("\n  ")
    );
}
