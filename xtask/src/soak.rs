//! `cargo xtask soak [RUNS]`: the host suite, again and again, under CPU load.
//!
//! Builds the host test binaries once (`cargo test --no-run` of the default members),
//! then runs every binary `RUNS` times (default 20) while one busy thread per CPU
//! keeps the machine loaded, the way a loaded CI machine or a slow VM would. A run
//! passes when every binary exits 0. Prints each failing test with how often it
//! failed, and `N passed, M failed` (runs); fails if any run failed. The output of
//! each failing binary is kept in `target/soak/run-<N>-<binary>.txt`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::Result;
use crate::process;

/// Schedules the schedule-exploration test explores in each soak run.
const SOAK_SCHEDULES: &str = "500";
/// Runs when none are given.
const DEFAULT_RUNS: usize = 20;
/// Longest one test binary may take before it counts as hung (and failed).
const BINARY_LIMIT: Duration = Duration::from_secs(600);

/// One host test binary and the directory `cargo test` runs it in.
struct TestBinary {
    executable: PathBuf,
    dir: PathBuf,
}

/// `cargo xtask soak [RUNS]`.
pub fn soak(args: &[String]) -> Result {
    let runs = match args.first() {
        None => DEFAULT_RUNS,
        Some(a) => a
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("RUNS must be a positive number, not {a:?}"))?,
    };
    let binaries = build()?;
    println!(
        "soak: {} test binaries, {runs} runs under load",
        binaries.len()
    );
    let load = Load::start();
    let mut passed = 0;
    let mut failed = 0;
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    let start = Instant::now();
    for run in 1..=runs {
        let mut names = Vec::new();
        for binary in &binaries {
            names.extend(run_binary(binary, run)?);
        }
        if names.is_empty() {
            passed += 1;
            println!("soak: run {run}/{runs} passed");
        } else {
            failed += 1;
            println!("soak: run {run}/{runs} FAILED: {}", names.join(", "));
            for name in names {
                *failures.entry(name).or_default() += 1;
            }
        }
    }
    drop(load);
    println!(
        "soak: {runs} runs in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    for (name, count) in &failures {
        println!("soak: failed {count} of {runs}: {name}");
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("{failed} of {runs} runs failed"))
    }
}

/// Builds the host test binaries and lists them.
fn build() -> Result<Vec<TestBinary>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["test", "--no-run", "--message-format=json"])
        .current_dir(crate::root())
        .stderr(Stdio::inherit());
    let out = process::run_captured(cmd, Duration::from_secs(3600))?;
    if !out.success() {
        return Err("building the host tests failed".into());
    }
    let binaries: Vec<TestBinary> = out
        .stdout
        .lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\"") && l.contains("\"test\":true"))
        .filter_map(|l| {
            let executable = json_string(l, "executable")?;
            let manifest = PathBuf::from(json_string(l, "manifest_path")?);
            let dir = manifest.parent()?.to_path_buf();
            Some(TestBinary {
                executable: PathBuf::from(executable),
                dir,
            })
        })
        .collect();
    if binaries.is_empty() {
        return Err("cargo test --no-run listed no test binary".into());
    }
    Ok(binaries)
}

/// The string value of `"key":"..."` in one line of cargo's JSON (paths here have no
/// escapes worth decoding beyond `\\` and `\"`).
fn json_string(line: &str, key: &str) -> Option<String> {
    let tag = format!("\"{key}\":\"");
    let start = line.find(&tag)? + tag.len();
    let mut value = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(value),
            '\\' => value.push(chars.next()?),
            c => value.push(c),
        }
    }
    None
}

/// Runs one binary; returns the names of the tests that failed (the binary's name if
/// it failed without naming one: a crash, a hang, an abort).
fn run_binary(binary: &TestBinary, run: usize) -> Result<Vec<String>> {
    let mut cmd = Command::new(&binary.executable);
    // The schedule exploration is deterministic by seed: repeating all 10,000 of its
    // schedules every run finds nothing new, so a soak run explores a few (it still
    // runs the same engine code under the same load).
    cmd.env("WSKSEND_SCHEDULES", SOAK_SCHEDULES);
    cmd.current_dir(&binary.dir).stderr(Stdio::null());
    let out = process::run_captured(cmd, BINARY_LIMIT)?;
    if out.success() {
        return Ok(Vec::new());
    }
    let stem = binary
        .executable
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let crate_name = stem.rsplit_once('-').map_or(stem.as_str(), |(s, _)| s);
    let logs = crate::root().join("target").join("soak");
    let log = logs.join(format!("run-{run}-{crate_name}.txt"));
    if std::fs::create_dir_all(&logs).is_ok() && std::fs::write(&log, &out.stdout).is_ok() {
        println!("soak: output kept in {}", log.display());
    }
    let mut names: Vec<String> = out
        .stdout
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("test ")?;
            let name = rest.strip_suffix(" ... FAILED")?;
            Some(format!("{crate_name}::{name}"))
        })
        .collect();
    if names.is_empty() {
        let why = if out.timed_out {
            "hung".to_owned()
        } else {
            format!("exit {:?}", out.code)
        };
        names.push(format!("{crate_name} ({why})"));
    }
    Ok(names)
}

/// One busy thread per CPU until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let cpus = thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let threads = (0..cpus)
            .map(|_| {
                let stop = Arc::clone(&stop);
                thread::spawn(move || {
                    let mut x: u64 = 1;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..10_000 {
                            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        }
                        std::hint::black_box(x);
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
