//! Ring 1: the real driver image under Wine, driven by the harness over IOCTL.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use wsksend_harness::report::ScenarioResult;

use crate::wine::{CLIENT_SERVICE, SERVICE, Wine};
use crate::{Result, artifacts, deps, root};

fn e2e_dir() -> Result<PathBuf> {
    let dir = root().join("target").join("e2e");
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Builds, prepares the prefix, installs the driver; returns the running prefix.
fn prepare() -> Result<Wine> {
    deps::ensure()?;
    let artifacts = artifacts::build()?;
    let log = e2e_dir()?.join("driver.log");
    std::fs::write(&log, b"").map_err(|e| format!("truncate {}: {e}", log.display()))?;
    let mut wine = Wine::start(&log)?;
    wine.install(&artifacts)?;
    Ok(wine)
}

/// `cargo xtask run`: load the driver, ask it for its version, send 64 MiB through it
/// to a verifying sink, show its counters, unload it.
pub fn run() -> Result {
    let wine = prepare()?;
    let started = wine.sc(&["start", SERVICE])?;
    if !started.success() {
        return Err(format!("sc start failed: {}", started.stdout.trim()));
    }
    let version = wine.harness(&["version"])?;
    let send = wine.harness(&[
        "send",
        "sink",
        "--bytes",
        "64M",
        "--chunk",
        "64K",
        "--inflight",
        "8",
    ])?;
    let stats = wine.harness(&["stats"])?;
    let stopped = wine.sc(&["stop", SERVICE])?;
    println!("WskSend under Wine");
    println!("  driver image : target/x86_64-pc-windows-msvc/release/wsksend.sys");
    println!("  service      : {SERVICE} (kernel driver, loaded by Wine's winedevice)");
    println!("  over IOCTL   : {}", version.stdout.trim());
    for line in send.stdout.lines() {
        println!("  {line}");
    }
    println!("  counters     : {}", stats.stdout.trim());
    println!(
        "  unload       : {}",
        if stopped.success() { "ok" } else { "FAILED" }
    );
    println!("  driver log   : target/e2e/driver.log");
    if version.success() && send.success() && stopped.success() {
        Ok(())
    } else {
        Err("the driver did not answer, did not send, or did not unload (see target/e2e/driver.log)".into())
    }
}

/// Collects scenario results.
#[derive(Default)]
struct Results(Vec<ScenarioResult>);

impl Results {
    fn check(&mut self, name: &str, passed: bool, detail: impl Into<String>) {
        let result = ScenarioResult::new(name, passed, detail);
        println!("{}", result.to_line());
        self.0.push(result);
    }

    /// Runs harness scenarios and records each `RESULT` line; a scenario that printed
    /// no line is recorded as failed.
    fn harness(&mut self, wine: &Wine, names: &[&str]) {
        self.harness_as(wine, names, "");
    }

    /// As [`Self::harness`], recording each result as `name` + `suffix`.
    fn harness_as(&mut self, wine: &Wine, names: &[&str], suffix: &str) {
        let mut args = vec!["scenario"];
        args.extend_from_slice(names);
        let out = match wine.harness(&args) {
            Ok(out) => out,
            Err(e) => {
                for name in names {
                    let label = format!("{name}{suffix}");
                    self.check(&label, false, format!("harness did not run: {e}"));
                }
                return;
            }
        };
        for name in names {
            let found = out
                .stdout
                .lines()
                .filter_map(ScenarioResult::parse_line)
                .find(|r| r.name == *name);
            let label = format!("{name}{suffix}");
            match found {
                Some(r) => self.check(&label, r.passed, r.detail),
                None => self.check(
                    &label,
                    false,
                    format!(
                        "no result (exit {:?}{})",
                        out.code,
                        if out.timed_out { ", timed out" } else { "" }
                    ),
                ),
            }
        }
    }

    fn write_json(&self, path: &std::path::Path) -> Result {
        let mut json = String::from("{\n  \"scenarios\": [\n");
        for (i, r) in self.0.iter().enumerate() {
            let sep = if i + 1 == self.0.len() { "" } else { "," };
            let _ = writeln!(
                json,
                "    {{\"name\": {}, \"passed\": {}, \"detail\": {}}}{sep}",
                json_string(&r.name),
                r.passed,
                json_string(&r.detail)
            );
        }
        let passed = self.0.iter().filter(|r| r.passed).count();
        let _ = write!(
            json,
            "  ],\n  \"passed\": {passed},\n  \"failed\": {}\n}}\n",
            self.0.len() - passed
        );
        std::fs::write(path, json).map_err(|e| format!("write {}: {e}", path.display()))
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

const LOG_WAIT: Duration = Duration::from_secs(10);

/// Harness scenarios that send data through the driver to the harness's sink (one
/// harness run each, so a hang costs one scenario, not the suite).
const DATA_SCENARIOS: &[&str] = &[
    "send-sizes",
    "inflight-8",
    "inflight-64",
    "multi-connection",
    "nodelay",
    "multi-segment",
    "bad-input",
    "stats",
    "peer-reset",
    "cancel",
    "close-handle",
    "close-delivers",
];

/// `cargo xtask e2e NAME...`: load the driver and run the named harness scenarios
/// (a developer's loop; `cargo xtask test` runs them all).
pub fn scenarios(names: &[String]) -> Result {
    let wine = prepare()?;
    let started = wine.sc(&["start", SERVICE])?;
    if !started.success() {
        return Err(format!("sc start failed: {}", started.stdout.trim()));
    }
    let mut results = Results::default();
    for name in names {
        match name.as_str() {
            "kernel-api-c" => {
                let (passed, detail) = crate::c_scenarios::kernel_api_c(&wine);
                results.check(name, passed, detail);
            }
            "c-client" => {
                let (passed, detail) = crate::c_scenarios::c_client(&wine);
                results.check(name, passed, detail);
            }
            _ => results.harness(&wine, &[name.as_str()]),
        }
    }
    let _ = wine.sc(&["stop", SERVICE]);
    let failed = results.0.iter().filter(|r| !r.passed).count();
    if failed == 0 {
        Ok(())
    } else {
        Err(format!(
            "{failed} scenario(s) failed; see target/e2e/driver.log"
        ))
    }
}

/// `cargo xtask test` (Wine part): every scenario, a JSON report and the summary line.
pub fn test() -> Result {
    let wine = prepare()?;
    let mut results = Results::default();

    let started = wine.sc(&["start", SERVICE])?;
    let state = wine.service_state()?;
    let entry = wine.log_contains("WskSend: loaded", LOG_WAIT);
    results.check(
        "driver-load",
        started.success() && state.as_deref() == Some("RUNNING") && entry,
        format!(
            "sc start exit {:?}, state {state:?}, DriverEntry logged: {entry}",
            started.code
        ),
    );

    results.harness(&wine, &["version", "unknown-ioctl", "short-output"]);
    for name in DATA_SCENARIOS {
        results.harness(&wine, &[name]);
    }
    // The interactive `send` command (what `cargo xtask run` and a tester use).
    match wine.harness(&[
        "send",
        "sink",
        "--bytes",
        "8M",
        "--chunk",
        "100K",
        "--segments",
        "1",
        "--inflight",
        "4",
        "--nodelay",
    ]) {
        Ok(out) => {
            let verified = out.stdout.contains("every byte verified");
            results.check(
                "cli-send",
                out.success() && verified,
                format!("exit {:?}, sink verified: {verified}", out.code),
            );
        }
        Err(e) => results.check("cli-send", false, e),
    }
    // Another driver calling WskSend's exports (it imports them from wsksend.sys).
    let client = wine.sc(&["start", CLIENT_SERVICE])?;
    let client_loaded = wine.log_contains("WsksClient: loaded", LOG_WAIT);
    results.check(
        "kernel-api-load",
        client.success() && client_loaded,
        format!(
            "sc start {CLIENT_SERVICE} exit {:?}, DriverEntry logged: {client_loaded}",
            client.code
        ),
    );
    results.harness(&wine, &["kernel-api"]);
    let _ = wine.sc(&["stop", CLIENT_SERVICE]);
    // The C examples (examples/): a driver and a user-mode client.
    let (passed, detail) = crate::c_scenarios::kernel_api_c(&wine);
    results.check("kernel-api-c", passed, detail);
    let (passed, detail) = crate::c_scenarios::c_client(&wine);
    results.check("c-client", passed, detail);

    let stopped = wine.sc(&["stop", SERVICE])?;
    let state = wine.service_state()?;
    let unload = wine.log_contains("WskSend: unloaded", LOG_WAIT);
    results.check(
        "driver-unload",
        stopped.success() && state.as_deref() == Some("STOPPED") && unload,
        format!(
            "sc stop exit {:?}, state {state:?}, DriverUnload logged: {unload}",
            stopped.code
        ),
    );
    results.harness(&wine, &["device-absent"]);

    let restarted = wine.sc(&["start", SERVICE])?;
    let state = wine.service_state()?;
    results.check(
        "driver-reload",
        restarted.success() && state.as_deref() == Some("RUNNING"),
        format!("sc start exit {:?}, state {state:?}", restarted.code),
    );
    results.harness_as(&wine, &["version"], "-after-reload");
    let _ = wine.sc(&["stop", SERVICE]);
    drop(wine);

    let report = e2e_dir()?.join("report.json");
    results.write_json(&report)?;
    let passed = results.0.iter().filter(|r| r.passed).count();
    let failed = results.0.len() - passed;
    println!("report: {}", report.display());
    println!("e2e: {passed} passed, {failed} failed");
    if failed == 0 {
        Ok(())
    } else {
        Err(format!(
            "{failed} end-to-end scenario(s) failed; see target/e2e/driver.log"
        ))
    }
}

/// `cargo xtask bench`: the harness's driver-vs-`WSASend` benchmark under Wine;
/// writes `target/e2e/bench.json`.
pub fn bench(args: &[String]) -> Result {
    let wine = prepare()?;
    let started = wine.sc(&["start", SERVICE])?;
    if !started.success() {
        return Err(format!("sc start failed: {}", started.stdout.trim()));
    }
    let mut harness_args = vec!["bench"];
    harness_args.extend(args.iter().map(String::as_str));
    let out = wine.harness(&harness_args)?;
    let _ = wine.sc(&["stop", SERVICE]);
    print!(
        "{}",
        out.stdout
            .lines()
            .filter(|l| !l.starts_with("BENCH "))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );
    let entries: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("BENCH "))
        .collect();
    let json = format!(
        "{{\n  \"command\": \"cargo xtask bench {}\",\n  \"environment\": \"Wine 8 on Linux: IOCTL buffers cross processes, not Windows speed\",\n  \"results\": [\n    {}\n  ]\n}}\n",
        args.join(" "),
        entries.join(",\n    ")
    );
    let path = e2e_dir()?.join("bench.json");
    std::fs::write(&path, json).map_err(|e| format!("write {}: {e}", path.display()))?;
    println!("bench: {}", path.display());
    if out.success() && entries.len() == 4 {
        Ok(())
    } else {
        Err("the benchmark did not complete (see target/e2e/driver.log)".into())
    }
}
