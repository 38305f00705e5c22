//! Replays the fuzzer's saved inputs through the fuzz targets' own entry points
//! (`fuzz/harness/mod.rs`): every file in `fuzz/regressions/<target>/` (crashes the
//! fuzzer found, kept after the fix) and `fuzz/seeds/<target>/` (the hand-written
//! starting corpus). `cargo xtask fuzz [SECONDS]` runs the fuzzer itself.

use std::fs;
use std::path::{Path, PathBuf};

#[path = "../../../fuzz/harness/mod.rs"]
mod harness;

/// Saved inputs of `target`, in name order.
fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut files: Vec<PathBuf> = ["regressions", "seeds"]
        .iter()
        .filter_map(|dir| fs::read_dir(fuzz.join(dir).join(target)).ok())
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"))
        .collect();
    files.sort();
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no saved inputs for the {target} target");
    for file in files {
        let data = fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        println!("replaying {}", file.display());
        run(&data);
    }
}

#[test]
fn protocol_fuzz_inputs_replay_cleanly() {
    replay("protocol", harness::protocol);
}

#[test]
fn dispatch_fuzz_inputs_replay_cleanly() {
    replay("dispatch", harness::dispatch);
}
