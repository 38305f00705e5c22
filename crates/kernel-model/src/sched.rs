//! Hooks for schedule exploration: running driver code under a controlled scheduler
//! (such as the `shuttle` crate) instead of the operating system's.
//!
//! A controlled scheduler runs its tasks as coroutines on one OS thread and switches
//! between them only at points it is told about. The model cooperates when a test
//! installs [`ScheduleHooks`] on the thread that runs the scheduler:
//!
//! - spin-lock acquire and release (`KeAcquireSpinLockRaiseToDpc`, `KeReleaseSpinLock`,
//!   the cancel spin lock), `IofCompleteRequest` (and the provider completions of
//!   [`complete`]), `IoCancelIrp` and `KeSetEvent` become scheduling points, and a
//!   spin lock held by another task makes the waiter yield;
//! - the model IRQL and the spin-lock owner token, which are per OS thread otherwise,
//!   become per task.
//!
//! Nothing else changes, and without hooks (every other test) nothing changes at all.
//! The model's own tables stay behind a host mutex that is never held across a
//! scheduling point. Blocking waits (`KeWaitForSingleObject`) are not modelled for
//! scheduled tasks: explored code must not wait.
//!
//! For tests that bring their own WSK provider (a dispatch table whose routines park
//! IRPs, completed later by other tasks), [`accept`], [`mark_pending`] and [`complete`]
//! give that provider the checks and the completion walk of the model's own provider:
//! IRP in flight or freed, `WSK_BUF` chain locked and within bounds, MDLs in flight.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use wsksend_ffi::{IRP, KIRQL, NTSTATUS, PASSIVE_LEVEL, WSK_BUF};

use crate::checker::{Rule, state};

/// What a controlled scheduler provides to the model.
#[derive(Clone, Copy, Debug)]
pub struct ScheduleHooks {
    /// A scheduling point: the scheduler may run another task before returning.
    pub yield_now: fn(),
    /// The running task's identifier (tasks share the OS thread, so the model cannot
    /// tell them apart otherwise).
    pub task_id: fn() -> usize,
}

thread_local! {
    static HOOKS: Cell<Option<ScheduleHooks>> = const { Cell::new(None) };
    /// Model IRQL of each task, while hooks are installed.
    static TASK_IRQL: RefCell<BTreeMap<usize, KIRQL>> = const { RefCell::new(BTreeMap::new()) };
}

/// Spin-lock owner tokens of tasks start here, far from the per-thread ones.
const TASK_TOKEN_BASE: usize = 1 << 48;

/// Installs (`Some`) or removes (`None`) the hooks for the calling OS thread, and
/// forgets every task's IRQL.
pub fn set_hooks(hooks: Option<ScheduleHooks>) {
    HOOKS.with(|h| h.set(hooks));
    TASK_IRQL.with(|t| t.borrow_mut().clear());
}

fn hooks() -> Option<ScheduleHooks> {
    HOOKS.with(Cell::get)
}

/// A scheduling point (nothing without hooks). Never call it while holding the
/// model's state mutex.
pub(crate) fn point() {
    if let Some(h) = hooks() {
        (h.yield_now)();
    }
}

/// The IRQL of the running task, if hooks are installed.
pub(crate) fn task_irql() -> Option<KIRQL> {
    let h = hooks()?;
    let id = (h.task_id)();
    Some(TASK_IRQL.with(|t| t.borrow().get(&id).copied().unwrap_or(PASSIVE_LEVEL)))
}

/// Sets the running task's IRQL; returns false (and does nothing) without hooks.
pub(crate) fn set_task_irql(irql: KIRQL) -> bool {
    let Some(h) = hooks() else {
        return false;
    };
    let id = (h.task_id)();
    TASK_IRQL.with(|t| t.borrow_mut().insert(id, irql));
    true
}

/// The running task's spin-lock owner token, if hooks are installed.
pub(crate) fn task_token() -> Option<usize> {
    hooks().map(|h| TASK_TOKEN_BASE + (h.task_id)())
}

/// A test provider receives `irp` (with `buffer` for a send): the checks of the
/// model's provider (IRP live, not in flight, a stack location left; chain locked,
/// `Offset`/`Length` within it), then the IRP and the chain's MDLs are in flight until
/// [`complete`]. Returns the bytes the buffer describes, or the status to return
/// without completing the IRP (a violation is recorded).
///
/// # Safety
/// `buffer` is null or a readable `WSK_BUF`.
pub unsafe fn accept(
    irp: *mut IRP,
    buffer: *const WSK_BUF,
    routine: &str,
) -> Result<Vec<u8>, NTSTATUS> {
    let mut st = state();
    crate::irp::check_for_provider(&mut st, irp, routine)?;
    let chain = if buffer.is_null() {
        None
    } else {
        // SAFETY: the caller guarantees a readable WSK_BUF.
        let buf = unsafe { buffer.read() };
        let Some(chain) = crate::mdl::validate_chain(&mut st, &buf, routine) else {
            return Err(wsksend_ffi::status::STATUS_INVALID_PARAMETER);
        };
        Some(chain)
    };
    crate::irp::enter_provider(&mut st, irp, routine, None)?;
    Ok(chain.map_or_else(Vec::new, |chain| {
        crate::mdl::mark_in_flight(&mut st, &chain.pinned);
        crate::irp::attach_mdls(&mut st, irp, &chain.pinned);
        chain.data
    }))
}

/// `IoMarkIrpPending` for an IRP a test provider accepted and will complete later.
pub fn mark_pending(irp: *mut IRP) {
    crate::irp::mark_pending(irp);
}

/// A test provider completes an IRP it accepted: sets `IoStatus` and runs the I/O
/// manager's completion walk (a scheduling point). Completing an IRP that is not in
/// flight is a [`Rule::Misuse`].
pub fn complete(irp: *mut IRP, status: NTSTATUS, information: usize) {
    point();
    {
        let mut st = state();
        let in_flight = st
            .irps
            .get(&(irp as usize))
            .is_some_and(|r| r.flight.is_some());
        if !in_flight {
            st.violate(
                Rule::Misuse,
                format!("test provider completes IRP {irp:p}, which it does not own"),
            );
            return;
        }
    }
    crate::irp::provider_complete(irp, status, information);
}
