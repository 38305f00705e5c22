//! The WskSend user-mode harness: a library over the driver's IOCTL interface and the
//! scenarios `cargo xtask test` runs under Wine (and a tester runs in a Windows VM).
//!
//! The Windows-only parts (device access, scenarios) compile only for Windows targets;
//! the result format is plain Rust so `xtask` can parse it on the host.

pub mod pattern;
pub mod report;
pub mod sink;

#[cfg(windows)]
pub mod bench;
pub mod cli;
#[cfg(windows)]
pub mod device;
#[cfg(windows)]
pub mod scenarios;
