//! The engine-wide count of in-flight holders, which teardown waits for.
//!
//! Whatever a completion path holds — a send op (with its IRP, MDLs and a reference to
//! its connection), the context of a disconnect or close — counts from its creation
//! until the code that drops it has dropped everything, including possibly the last
//! reference to the connection (which frees it): the count is decremented as the last
//! action of that code. [`wait_idle`] polls the count (no event is signalled across
//! threads, so nothing is freed under a `KeSetEvent` in progress). What is left after
//! the count reaches zero is the return path of a completion routine, which
//! `IoSetCompletionRoutineEx` covers (see [`crate::irp`]).

use core::sync::atomic::{AtomicUsize, Ordering};
use core::time::Duration;

use crate::sync::Event;

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// How often [`wait_idle`] looks at the count.
const POLL: Duration = Duration::from_millis(5);

/// One more in-flight holder.
pub(crate) fn acquire() {
    LIVE.fetch_add(1, Ordering::AcqRel);
}

/// One in-flight holder fewer: the last thing its code does.
pub(crate) fn release() {
    LIVE.fetch_sub(1, Ordering::AcqRel);
}

/// In-flight holders now.
#[must_use]
pub fn live() -> usize {
    LIVE.load(Ordering::Acquire)
}

/// Waits, polling with `tick` (an event nobody else signals), until no in-flight
/// holder is left or `limit` has passed; returns whether the count reached zero.
///
/// # IRQL
/// `PASSIVE_LEVEL`.
pub fn wait_idle(tick: &Event, limit: Duration) -> bool {
    let mut waited = Duration::ZERO;
    loop {
        if live() == 0 {
            return true;
        }
        if waited >= limit {
            return false;
        }
        tick.wait(POLL);
        waited += POLL;
    }
}
