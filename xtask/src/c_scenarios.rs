//! The Wine scenarios of the C examples (`examples/`):
//!
//! - `kernel-api-c`: the C driver `wsksclient_c.sys` loads next to `wsksend.sys` (its
//!   imports of `Wsks*` bind to the loaded driver) and, driven by the harness's
//!   `kernel-api` scenario (the same IOCTL contract as the Rust `wsksclient.sys`), sends
//!   through every exported function to the harness's verifying sink, byte-exact;
//! - `c-client`: `wsksend-c-client.exe` connects through the driver and sends a stream with
//!   overlapped `DeviceIoControl` on an I/O completion port plus a scatter/gather send to
//!   a verifying sink that xtask runs on 127.0.0.1.

use std::net::IpAddr;
use std::time::Duration;

use wsksend_harness::report::ScenarioResult;
use wsksend_harness::sink::Sink;

use crate::wine::{C_CLIENT_SERVICE, CLIENT_SERVICE, Wine};

const LOG_WAIT: Duration = Duration::from_secs(10);

/// `kernel-api-c`: (passed, detail). Stops the Rust client first (both own
/// `\\.\WsksClient`) and leaves the C driver stopped.
pub fn kernel_api_c(wine: &Wine) -> (bool, String) {
    let _ = wine.sc(&["stop", CLIENT_SERVICE]);
    let started = match wine.sc(&["start", C_CLIENT_SERVICE]) {
        Ok(out) => out,
        Err(e) => return (false, format!("sc start {C_CLIENT_SERVICE}: {e}")),
    };
    let loaded = wine.log_contains("WsksClientC: loaded", LOG_WAIT);
    if !started.success() || !loaded {
        return (
            false,
            format!(
                "sc start {C_CLIENT_SERVICE} exit {:?} ({}), DriverEntry logged: {loaded}",
                started.code,
                started.stdout.trim()
            ),
        );
    }
    let result = wine
        .harness(&["scenario", "kernel-api"])
        .map_err(|e| format!("harness did not run: {e}"))
        .and_then(|out| {
            out.stdout
                .lines()
                .filter_map(ScenarioResult::parse_line)
                .find(|r| r.name == "kernel-api")
                .ok_or_else(|| format!("no result (exit {:?})", out.code))
        });
    // The C driver, not another one, did the work: it logs each run.
    let ran = wine.log_contains("WsksClientC: run status 00000000", LOG_WAIT);
    let _ = wine.sc(&["stop", C_CLIENT_SERVICE]);
    match result {
        Ok(r) => (
            r.passed && ran,
            format!(
                "wsksclient_c.sys (C, mingw-w64): {}; run logged: {ran}",
                r.detail
            ),
        ),
        Err(e) => (false, e),
    }
}

/// `c-client`: (passed, detail).
pub fn c_client(wine: &Wine) -> (bool, String) {
    let sink = match Sink::start(IpAddr::from([127, 0, 0, 1])) {
        Ok(s) => s,
        Err(e) => return (false, format!("sink: {e}")),
    };
    let seed: u32 = 0xC0DE_0000 ^ std::process::id();
    let kib = 4096u64;
    let port = sink.addr().port().to_string();
    let seed_arg = seed.to_string();
    let kib_arg = kib.to_string();
    let out = match wine.program(
        "wsksend-c-client.exe",
        &["127.0.0.1", &port, &seed_arg, &kib_arg],
    ) {
        Ok(out) => out,
        Err(e) => return (false, format!("wsksend-c-client did not run: {e}")),
    };
    // The scatter/gather part adds 1000 + 30000 + 7 bytes after the stream.
    let expected = kib * 1024 + 31_007;
    let report = sink.wait_for(seed, expected, Duration::from_secs(30));
    let exact = report.as_ref().is_some_and(|r| r.exact());
    let lines: Vec<&str> = out.stdout.lines().map(str::trim).collect();
    let sg = lines
        .iter()
        .find_map(|l| l.strip_prefix("c-client: scatter/gather: "))
        .unwrap_or("no scatter/gather line");
    let summary = lines
        .iter()
        .find_map(|l| {
            l.strip_prefix("c-client: ")
                .filter(|l| l.contains("bytes in"))
        })
        .unwrap_or("no summary line");
    (
        out.success() && exact,
        format!(
            "exit {:?}; {summary}; scatter/gather: {sg}; sink: {}",
            out.code,
            match &report {
                Some(r) if r.exact() => format!("{} pattern bytes verified", r.received),
                Some(r) => format!("{r:?}"),
                None => "stream never arrived".to_string(),
            }
        ),
    )
}
