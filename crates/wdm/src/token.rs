//! A pending `IRP_MJ_DEVICE_CONTROL` IRP as the dispatcher's [`PendingIo`] token, with
//! a cancel routine (`CancelIoEx` from user mode reaches it through `IoCancelIrp`).

use core::ffi::c_void;
use core::ptr::NonNull;

use wsksend_dispatch::{CancelAction, FileId, Outcome, PendingIo, RequestId};
use wsksend_ffi::inline::{IoMarkIrpPending, IoSetCancelRoutine};
use wsksend_ffi::status::STATUS_PENDING;
use wsksend_ffi::{
    DEVICE_OBJECT, IO_NETWORK_INCREMENT, IRP, IoAcquireCancelSpinLock, IoReleaseCancelSpinLock,
    NTSTATUS,
};

use crate::DISPATCHER;

/// `Tail.Overlay.DriverContext` slots we use while the IRP is pending.
const CONTEXT_FILE: usize = 0;
const CONTEXT_ID: usize = 1;

/// A device-control IRP that the dispatcher may complete later.
///
/// # Invariants
/// `irp` is a live IRP dispatched to this driver and not yet completed; this token is
/// the only party that completes it.
pub struct IrpToken {
    irp: NonNull<IRP>,
    marked_pending: bool,
}

// SAFETY: an IRP may be completed from any thread at <= DISPATCH_LEVEL.
unsafe impl Send for IrpToken {}

impl IrpToken {
    /// Wraps a dispatched IRP.
    ///
    /// # Safety
    /// `irp` is live, dispatched to us, and completed only through this token.
    pub unsafe fn new(irp: *mut IRP) -> Self {
        // INVARIANT: the caller hands over a live, uncompleted IRP.
        Self {
            // SAFETY: the I/O manager never dispatches a null IRP.
            irp: unsafe { NonNull::new_unchecked(irp) },
            marked_pending: false,
        }
    }

    /// Completes a request the dispatcher handed back; returns what the dispatch
    /// routine must return (`STATUS_PENDING` once the IRP was marked pending).
    pub fn finish_now(self, outcome: Outcome) -> NTSTATUS {
        let marked = self.marked_pending;
        self.complete(outcome);
        if marked {
            STATUS_PENDING
        } else {
            outcome.status
        }
    }
}

impl PendingIo for IrpToken {
    fn arm(&mut self, file: FileId, id: RequestId) -> bool {
        let irp = self.irp.as_ptr();
        // SAFETY: live and ours (type invariant).
        unsafe { IoMarkIrpPending(irp) };
        self.marked_pending = true;
        {
            // SAFETY: live and ours; no cancel routine is set yet, so no one else reads
            // these slots.
            let irp_ref = unsafe { &mut *irp };
            // CAST: the slots are pointer-sized scratch space owned by the driver.
            irp_ref.DriverContext[CONTEXT_FILE] = file.0 as *mut c_void;
            irp_ref.DriverContext[CONTEXT_ID] = id.0 as usize as *mut c_void;
        }
        // SAFETY: live and ours.
        unsafe { IoSetCancelRoutine(irp, Some(cancel_routine)) };
        // SAFETY: reading a flag of the live IRP.
        let cancelled = unsafe { (*irp).Cancel } != 0;
        // If it was cancelled before the routine was set, take the routine back: when
        // that succeeds the routine will not run and the request is ours to fail.
        // SAFETY: live and ours.
        !(cancelled && unsafe { IoSetCancelRoutine(irp, None) }.is_some())
    }

    fn complete(self, outcome: Outcome) {
        let irp = self.irp.as_ptr();
        // SAFETY: live and ours (type invariant).
        if unsafe { IoSetCancelRoutine(irp, None) }.is_none() && self.marked_pending {
            // The cancel routine has run or is running: it reads DriverContext with the
            // cancel spin lock held, so taking the lock once orders us after that read.
            let mut irql = 0;
            // SAFETY: plain lock acquisition.
            unsafe { IoAcquireCancelSpinLock(&raw mut irql) };
            // SAFETY: releasing the lock acquired just above.
            unsafe { IoReleaseCancelSpinLock(irql) };
        }
        // SAFETY: live and ours; completed once, here.
        unsafe {
            wsksend_wdm_runtime::device::complete(
                irp,
                outcome.status,
                outcome.information,
                IO_NETWORK_INCREMENT,
            )
        };
    }
}

/// The IRP's cancel routine: forwards to the dispatcher, which completes the request
/// through its normal path (possibly by closing the connection where WSK cannot cancel).
///
/// # Safety
/// Called by `IoCancelIrp` with the cancel spin lock held, for an IRP armed by
/// [`IrpToken::arm`].
unsafe extern "system" fn cancel_routine(_device: *mut DEVICE_OBJECT, irp: *mut IRP) {
    let (file, id, irql) = {
        // SAFETY: the IRP is live while its cancel routine runs (it cannot complete
        // until the cancel lock is released, see `complete`).
        let irp_ref = unsafe { &*irp };
        (
            FileId(irp_ref.DriverContext[CONTEXT_FILE] as usize),
            RequestId(irp_ref.DriverContext[CONTEXT_ID] as usize as u64),
            irp_ref.CancelIrql,
        )
    };
    // SAFETY: IoCancelIrp acquired the lock and saved the IRQL in CancelIrql.
    unsafe { IoReleaseCancelSpinLock(irql) };
    if DISPATCHER.cancel(file, id) == CancelAction::RunDeferred {
        queue_deferred();
    }
}

#[cfg_attr(
    target_os = "windows",
    link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")
)]
unsafe extern "system" {
    fn IoAllocateWorkItem(DeviceObject: *mut DEVICE_OBJECT) -> *mut c_void;
    fn IoQueueWorkItem(
        IoWorkItem: *mut c_void,
        WorkerRoutine: unsafe extern "system" fn(*mut DEVICE_OBJECT, *mut c_void),
        QueueType: i32,
        Context: *mut c_void,
    );
    fn IoFreeWorkItem(IoWorkItem: *mut c_void);
}

/// `DelayedWorkQueue`.
const DELAYED_WORK_QUEUE: i32 = 1;

/// Runs [`Dispatcher::run_deferred`](wsksend_dispatch::Dispatcher::run_deferred) at
/// `PASSIVE_LEVEL` in a system worker thread (closing a socket must not happen in the
/// cancel routine: Wine's `WskCloseSocket` blocks on the I/O it cancels).
fn queue_deferred() {
    let device = crate::DEVICE.get();
    // SAFETY: `device` is our device object, live while requests can be cancelled.
    let item = unsafe { IoAllocateWorkItem(device) };
    if item.is_null() {
        // No memory for a work item: close here rather than leave the send hanging.
        DISPATCHER.run_deferred();
        return;
    }
    // SAFETY: a fresh work item; the routine frees it.
    unsafe { IoQueueWorkItem(item, deferred_work, DELAYED_WORK_QUEUE, item) };
}

/// Work item routine of [`queue_deferred`].
///
/// # Safety
/// `context` is the work item that queued this call.
unsafe extern "system" fn deferred_work(_device: *mut DEVICE_OBJECT, context: *mut c_void) {
    DISPATCHER.run_deferred();
    // SAFETY: our work item, finished with.
    unsafe { IoFreeWorkItem(context) };
}
