//! `cargo xtask <job>`: everything beyond `cargo build` on Linux.
//!
//! - `run`   — build the driver, load it under Wine, drive it over IOCTL, short report.
//! - `test`  — lints, `check-kmdf`, host tests (`cargo test`), then the Wine end-to-end
//!   scenarios; writes `target/e2e/report.json` and prints `e2e: N passed, M failed`.
//! - `check-kmdf` — `cargo check` and `cargo clippy -D warnings` of the KMDF driver
//!   (`driver/`) against the real `wdk-sys` bindings, from public headers (ring 2a).
//! - `build` — only build the Windows binaries (driver `.sys`, shim, harness `.exe`).
//! - `e2e NAME...` — load the driver and run the named harness scenarios.
//! - `headers` — check `include/*.h` against the Rust definitions, in C and C++ (also part of `test`).
//! - `bench [MIB] [KIB]` — driver vs user-mode `WSASend` throughput under Wine;
//!   writes `target/e2e/bench.json`.
//! - `fuzz [SECONDS]` — libFuzzer over the protocol parsers and the dispatcher (the
//!   `fuzz/` crate, its own workspace); prints executions and crashes, keeps crashes
//!   as regression inputs that `cargo test` replays. Not in CI.
//! - `soak [RUNS]` — the host test binaries `RUNS` times (default 20) under CPU load;
//!   prints the failing tests and `N passed, M failed` (runs).
//!
//! System packages (Wine, mingw-w64, LLVM 19) are installed with apt when running as root;
//! otherwise the exact command is printed.

mod artifacts;
mod c_scenarios;
mod deps;
mod e2e;
mod examples;
mod fuzz;
mod headers;
mod kmdf;
mod process;
mod soak;
mod wine;

use std::path::PathBuf;
use std::process::ExitCode;

/// Result type of the jobs: an error is a message for the user.
type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let job = args.first().map_or("help", String::as_str);
    let result = match job {
        "run" => e2e::run(),
        "test" => test(),
        "check-kmdf" => kmdf::check(),
        "build" => deps::ensure().and_then(|()| artifacts::build().map(|_| ())),
        "e2e" => e2e::scenarios(&args[1..]),
        "bench" => e2e::bench(&args[1..]),
        "headers" => deps::ensure().and_then(|()| headers::check()),
        "fuzz" => fuzz::fuzz(&args[1..]),
        "soak" => soak::soak(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask run | test | check-kmdf | build | headers | e2e SCENARIO... \
                 | bench [MIB] [KIB] | fuzz [SECONDS] | soak [RUNS]"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask {job}: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask test`: lints, the KMDF driver's check, host tests (fast, no Wine), then
/// the Wine scenarios.
fn test() -> Result {
    deps::ensure()?;
    lint()?;
    kmdf::check()?;
    process::cargo(&["test", "--quiet"], &[]).map_err(|e| format!("host tests failed: {e}"))?;
    headers::check()?;
    e2e::test()
}

/// `cargo fmt --check` and `cargo clippy -D warnings` on the host crates and on the
/// crates that only build for Windows targets.
fn lint() -> Result {
    process::cargo(&["fmt", "--all", "--", "--check"], &[])
        .map_err(|e| format!("formatting: {e} (run `cargo fmt`)"))?;
    let deny = ["--", "-D", "warnings"];
    for args in [
        &["clippy", "--quiet", "--all-targets"][..],
        &[
            "clippy",
            "--quiet",
            "--target",
            artifacts::MSVC,
            "-p",
            "wsksend-wdm",
            "-p",
            "wsksend-wdm-runtime",
            "-p",
            "wsksend-kapi-client",
            "-p",
            "wsksend-prng-shim",
        ][..],
        &[
            "clippy",
            "--quiet",
            "--target",
            artifacts::GNU,
            "-p",
            "wsksend-harness",
        ][..],
    ] {
        let all: Vec<&str> = args.iter().chain(deny.iter()).copied().collect();
        process::cargo(&all, &[]).map_err(|e| format!("clippy: {e}"))?;
    }
    Ok(())
}

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or_else(|| manifest.clone(), PathBuf::from)
}
