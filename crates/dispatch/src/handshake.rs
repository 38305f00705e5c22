//! A two-party handshake for frameworks where the cancel callback and the completion
//! path race (WDF: `WdfRequestUnmarkCancelable` returns `STATUS_CANCELLED` once
//! `EvtRequestCancel` has run or will run, and then only the cancel callback may
//! complete the request).

use core::sync::atomic::{AtomicU8, Ordering};

use crate::Outcome;
use wsksend_engine::sync::SpinLock;

const OUTCOME_STORED: u8 = 1;
const CANCEL_FINISHED: u8 = 2;

/// Decides which of the completion path and the cancel callback completes a request
/// whose cancellation could not be disarmed: whichever arrives second.
pub struct CancelHandshake {
    state: AtomicU8,
    outcome: SpinLock<Option<Outcome>>,
}

impl Default for CancelHandshake {
    fn default() -> Self {
        Self::new()
    }
}

impl CancelHandshake {
    /// A handshake where neither side has arrived.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            state: AtomicU8::new(0),
            outcome: SpinLock::new(None),
        }
    }

    /// Completion path, after the framework refused to disarm cancellation: stores
    /// `outcome`; returns it back if the cancel callback has already finished, in which
    /// case the caller completes the request now.
    pub fn completion_ready(&self, outcome: Outcome) -> Option<Outcome> {
        *self.outcome.lock() = Some(outcome);
        let before = self.state.fetch_or(OUTCOME_STORED, Ordering::AcqRel);
        if before & CANCEL_FINISHED != 0 {
            self.outcome.lock().take()
        } else {
            None
        }
    }

    /// End of the cancel callback (after it called `Dispatcher::cancel`): returns the
    /// stored outcome if the completion path already arrived, in which case the cancel
    /// callback completes the request now.
    pub fn cancel_finished(&self) -> Option<Outcome> {
        let before = self.state.fetch_or(CANCEL_FINISHED, Ordering::AcqRel);
        if before & OUTCOME_STORED != 0 {
            self.outcome.lock().take()
        } else {
            None
        }
    }
}
