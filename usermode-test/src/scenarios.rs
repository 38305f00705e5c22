//! Named end-to-end scenarios. Each prints one `RESULT` line.

use wsksend_protocol::{
    FILE_ANY_ACCESS, FILE_DEVICE_WSKSEND, IOCTL_WSKSEND_GET_VERSION, METHOD_BUFFERED, VersionInfo,
    ctl_code,
};

use crate::device::{Device, Win32Error};
use crate::report::ScenarioResult;

/// `ERROR_FILE_NOT_FOUND`.
pub const ERROR_FILE_NOT_FOUND: u32 = 2;
/// `ERROR_INVALID_FUNCTION` (from `STATUS_INVALID_DEVICE_REQUEST`).
pub const ERROR_INVALID_FUNCTION: u32 = 1;
/// `ERROR_INSUFFICIENT_BUFFER` (from `STATUS_BUFFER_TOO_SMALL`).
pub const ERROR_INSUFFICIENT_BUFFER: u32 = 122;

/// Every scenario name and what it checks.
pub const SCENARIOS: &[(&str, &str)] = &[
    (
        "version",
        "GET_VERSION round-trips the protocol and driver version",
    ),
    (
        "unknown-ioctl",
        "an unknown code fails with ERROR_INVALID_FUNCTION",
    ),
    (
        "short-output",
        "GET_VERSION into 15 bytes fails with ERROR_INSUFFICIENT_BUFFER and writes nothing",
    ),
    (
        "device-absent",
        "opening the device fails with ERROR_FILE_NOT_FOUND (driver stopped)",
    ),
];

/// Runs the scenario `name`.
#[must_use]
pub fn run(name: &str) -> ScenarioResult {
    let outcome = match name {
        "version" => version(),
        "unknown-ioctl" => unknown_ioctl(),
        "short-output" => short_output(),
        "device-absent" => device_absent(),
        _ => Err(format!("no scenario named {name}")),
    };
    match outcome {
        Ok(detail) => ScenarioResult::new(name, true, detail),
        Err(detail) => ScenarioResult::new(name, false, detail),
    }
}

fn open() -> Result<Device, String> {
    Device::open().map_err(|e| format!("open {}: {e}", wsksend_protocol::USER_PATH))
}

fn version() -> Result<String, String> {
    let dev = open()?;
    let v = dev.version().map_err(|e| format!("GET_VERSION: {e}"))?;
    let expected = VersionInfo::current();
    if v != expected {
        return Err(format!("got {v:?}, expected {expected:?}"));
    }
    Ok(format!(
        "protocol {} driver {}.{}.{}",
        v.protocol_version, v.driver.major, v.driver.minor, v.driver.patch
    ))
}

fn unknown_ioctl() -> Result<String, String> {
    let dev = open()?;
    let code = ctl_code(FILE_DEVICE_WSKSEND, 0xFFF, METHOD_BUFFERED, FILE_ANY_ACCESS);
    let mut out = [0u8; 16];
    match dev.ioctl(code, &[1, 2, 3, 4], &mut out) {
        Err(Win32Error(ERROR_INVALID_FUNCTION)) => {
            Ok(format!("code {code:#010x} -> ERROR_INVALID_FUNCTION"))
        }
        other => Err(format!(
            "code {code:#010x}: expected ERROR_INVALID_FUNCTION, got {other:?}"
        )),
    }
}

fn short_output() -> Result<String, String> {
    let dev = open()?;
    let mut out = [0xa5u8; VersionInfo::WIRE_SIZE - 1];
    let result = dev.ioctl(IOCTL_WSKSEND_GET_VERSION, &[], &mut out);
    if result != Err(Win32Error(ERROR_INSUFFICIENT_BUFFER)) {
        return Err(format!(
            "expected ERROR_INSUFFICIENT_BUFFER, got {result:?}"
        ));
    }
    if out.iter().any(|&b| b != 0xa5) {
        return Err(format!("output buffer was written: {out:02x?}"));
    }
    // The device still answers correctly afterwards.
    dev.version()
        .map_err(|e| format!("GET_VERSION after short call: {e}"))?;
    Ok("ERROR_INSUFFICIENT_BUFFER, buffer untouched".into())
}

fn device_absent() -> Result<String, String> {
    match Device::open() {
        Err(Win32Error(ERROR_FILE_NOT_FOUND)) => Ok("ERROR_FILE_NOT_FOUND".into()),
        Err(e) => Err(format!("expected ERROR_FILE_NOT_FOUND, got {e}")),
        Ok(_) => Err("device still present".into()),
    }
}
