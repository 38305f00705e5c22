//! `cargo xtask fuzz [SECONDS]`: coverage-guided fuzzing with libFuzzer.
//!
//! The fuzz crate (`fuzz/`, its own workspace: the main build never compiles
//! libFuzzer) has two targets over one harness (`fuzz/harness/mod.rs`): `protocol`
//! (the wire parsers) and `dispatch` (IOCTL programs through the dispatcher, the
//! engine and the kernel model). They are built on the pinned stable compiler with
//! LLVM's SanitizerCoverage passes (`-C passes=sancov-module` and `-C llvm-args`, both
//! stable flags: no nightly, no `-Z`), and `libfuzzer-sys` compiles libFuzzer from its
//! bundled source with the system C++ compiler. Panics, overflows and debug
//! assertions are the crash oracles, with the kernel model's checker.
//!
//! `SECONDS` (default 60) is split between the targets (a fifth for `protocol`).
//! The corpus grows in `target/fuzz/corpus/<target>/`, starting from
//! `fuzz/seeds/<target>/`. A crash is copied to `fuzz/regressions/<target>/`, which
//! `cargo test` replays (`crates/dispatch/tests/fuzz_regressions.rs`), and the job
//! fails. Prints the executions and crashes of each target.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::Result;

/// The host target: naming it keeps `RUSTFLAGS` off build scripts and proc macros.
const HOST: &str = "x86_64-unknown-linux-gnu";
const DEFAULT_SECONDS: u64 = 60;
/// Longest input libFuzzer makes.
const MAX_LEN: &str = "-max_len=4096";

/// SanitizerCoverage as cargo-fuzz sets it up, plus the `fuzzing` cfg.
const RUSTFLAGS: &str = "-C passes=sancov-module \
    -C llvm-args=-sanitizer-coverage-level=4 \
    -C llvm-args=-sanitizer-coverage-inline-8bit-counters \
    -C llvm-args=-sanitizer-coverage-pc-table \
    -C llvm-args=-sanitizer-coverage-trace-compares \
    -C debug-assertions -C overflow-checks --cfg fuzzing";

/// What one target's run found.
struct Run {
    executions: u64,
    crashes: Vec<PathBuf>,
}

/// `cargo xtask fuzz [SECONDS]`.
pub fn fuzz(args: &[String]) -> Result {
    let seconds = match args.first() {
        None => DEFAULT_SECONDS,
        Some(a) => a
            .parse::<u64>()
            .ok()
            .filter(|&n| n >= 2)
            .ok_or_else(|| format!("SECONDS must be a number >= 2, not {a:?}"))?,
    };
    let root = crate::root();
    let target_dir = root.join("target").join("fuzz");
    build(&root, &target_dir)?;
    let protocol_seconds = (seconds / 5).max(1);
    let plan = [
        ("protocol", protocol_seconds),
        ("dispatch", seconds - protocol_seconds),
    ];
    let mut total_crashes = 0;
    let mut total_executions = 0;
    for (name, secs) in plan {
        let run = run_target(&root, &target_dir, name, secs)?;
        println!(
            "fuzz {name}: {} executions in {secs} s, {} crash(es)",
            run.executions,
            run.crashes.len()
        );
        for crash in &run.crashes {
            let kept = keep(&root, name, crash)?;
            println!("fuzz {name}: crash kept as {}", kept.display());
        }
        total_crashes += run.crashes.len();
        total_executions += run.executions;
    }
    println!("fuzz: {total_executions} executions, {total_crashes} crashes");
    if total_crashes == 0 {
        Ok(())
    } else {
        Err(format!(
            "{total_crashes} crash(es); replay with `cargo test -p wsksend-dispatch --test fuzz_regressions`"
        ))
    }
}

fn build(root: &Path, target_dir: &Path) -> Result {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = root.join("fuzz").join("Cargo.toml");
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--bins",
            "--target",
            HOST,
            "--manifest-path",
        ])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", target_dir)
        .env("RUSTFLAGS", RUSTFLAGS)
        .current_dir(root)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("building the fuzz targets failed ({status})"))
    }
}

fn run_target(root: &Path, target_dir: &Path, name: &str, seconds: u64) -> Result<Run> {
    let binary = target_dir.join(HOST).join("release").join(name);
    let corpus = target_dir.join("corpus").join(name);
    let artifacts = target_dir.join("artifacts").join(name);
    let seeds = root.join("fuzz").join("seeds").join(name);
    for dir in [&corpus, &artifacts] {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let before = crash_files(&artifacts);
    let mut cmd = Command::new(&binary);
    cmd.arg(&corpus)
        .arg(&seeds)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(MAX_LEN)
        .arg("-timeout=60")
        .arg("-print_final_stats=1")
        .current_dir(root)
        .stderr(Stdio::piped());
    println!("fuzz {name}: {seconds} s ...");
    // libFuzzer reports on stderr: swap the streams so the capture gets it.
    let out = run_stderr(cmd, Duration::from_secs(seconds + 600))?;
    let executions = out
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .find_map(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let crashes: Vec<PathBuf> = crash_files(&artifacts)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    if crashes.is_empty() && out.contains("==ERROR: libFuzzer") {
        return Err(format!("fuzz {name}: libFuzzer failed:\n{out}"));
    }
    if !crashes.is_empty() {
        eprintln!("{out}");
    }
    Ok(Run {
        executions,
        crashes,
    })
}

/// Runs `cmd` (stderr piped), echoing libFuzzer's status lines; returns its stderr.
fn run_stderr(mut cmd: Command, limit: Duration) -> Result<String> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the fuzz target: {e}"))?;
    let stderr = child.stderr.take().ok_or("stderr not piped")?;
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr)
            .lines()
            .map_while(std::result::Result::ok)
        {
            if line.contains("DONE") || line.contains("pulse") || line.starts_with("==") {
                println!("  {line}");
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let start = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(200)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
        }
    }
    reader
        .join()
        .map_err(|_| "reading the fuzzer's output failed".into())
}

fn crash_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.starts_with("crash-")
                            || n.starts_with("timeout-")
                            || n.starts_with("oom-")
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Copies a crash into `fuzz/regressions/<target>/` (replayed by `cargo test`).
fn keep(root: &Path, name: &str, crash: &Path) -> Result<PathBuf> {
    let dir = root.join("fuzz").join("regressions").join(name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let file = crash.file_name().ok_or("crash file without a name")?;
    let kept = dir.join(file);
    std::fs::copy(crash, &kept).map_err(|e| format!("{}: {e}", kept.display()))?;
    Ok(kept)
}
