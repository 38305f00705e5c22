//! One-time notices about the provider (for example "no WskDisconnect: closing
//! directly"), written through a logger the front end installs (`DbgPrint`) and kept
//! as flags that tests and the STATS path can read.

use core::ffi::CStr;
use core::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

/// A notice: the provider has no usable `WskDisconnect`, so connections are closed
/// with `WskCloseSocket` alone (abortive on Windows, graceful on Wine).
pub const NO_DISCONNECT: u32 = 1 << 0;

/// Where notices go: `DbgPrint` in the front ends.
pub type Logger = fn(&'static CStr);

static LOGGER: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());
static SEEN: AtomicU32 = AtomicU32::new(0);

/// Installs the logger (null-safe: before this, notices are only recorded).
pub fn set_logger(logger: Logger) {
    LOGGER.store(logger as *mut (), Ordering::Release);
}

/// Notices given so far (a mask of the constants above).
#[must_use]
pub fn notices() -> u32 {
    SEEN.load(Ordering::Acquire)
}

/// Records `flag` and logs `message` the first time only.
pub(crate) fn once(flag: u32, message: &'static CStr) {
    if SEEN.fetch_or(flag, Ordering::AcqRel) & flag != 0 {
        return;
    }
    let raw = LOGGER.load(Ordering::Acquire);
    if !raw.is_null() {
        // SAFETY: only `set_logger` stores here, always a `Logger`.
        let logger: Logger = unsafe { core::mem::transmute::<*mut (), Logger>(raw) };
        logger(message);
    }
}
