//! Requests: `EvtIoDeviceControl` turns a `WDFREQUEST` into the dispatcher's [`Request`],
//! [`Pending`] is the request as the dispatcher's [`PendingIo`] token (cancellation with
//! `WdfRequestMarkCancelableEx`, completion with `WdfRequestCompleteWithInformation`),
//! `EvtFileCleanup` closes a handle's connections, and a work item runs the closes that
//! a cancellation defers to `PASSIVE_LEVEL` ([`CancelAction::RunDeferred`]).
//!
//! Cancellation races completion; KMDF resolves the request's side of it
//! (`WdfRequestUnmarkCancelable` fails with `STATUS_CANCELLED` once `EvtRequestCancel`
//! has run or will run) and the dispatcher's [`CancelHandshake`] decides which of the two
//! paths then completes. [`wdfrequest.h`](https://learn.microsoft.com/windows-hardware/drivers/ddi/wdfrequest/).

use core::ffi::c_void;
use core::ptr::{self, NonNull};
use core::slice;
use core::sync::atomic::{AtomicPtr, Ordering};

use wdk::println;
use wdk_sys::{
    NT_SUCCESS, NTSTATUS, PCWDF_OBJECT_CONTEXT_TYPE_INFO, STATUS_CANCELLED,
    STATUS_INVALID_PARAMETER, ULONG, ULONG_PTR, WDF_OBJECT_ATTRIBUTES,
    WDF_OBJECT_CONTEXT_TYPE_INFO, WDF_WORKITEM_CONFIG, WDFDEVICE, WDFFILEOBJECT, WDFOBJECT,
    WDFQUEUE, WDFREQUEST, WDFWORKITEM, call_unsafe_wdf_function_binding,
};
use wsksend_dispatch::{
    BufferLayout, CancelAction, CancelHandshake, DirectBuffer, Disposition, FileId, Outcome,
    PendingIo, Request, RequestId,
};

use crate::{DISPATCHER, object_attributes, size_ulong};

/// Per-request context, allocated and zeroed by KMDF with every request of our device:
/// what the cancel callback needs to name the operation to the dispatcher, and the
/// handshake between the cancel callback and the completion path.
///
/// # Invariants
/// Written by [`Pending::arm`] before the request is marked cancelable; read only for
/// armed requests, until they complete.
struct RequestContext {
    /// The request's file, as the dispatcher knows it.
    file: FileId,
    /// The dispatcher's name for the operation.
    id: RequestId,
    /// Who completes the request when cancellation and completion race.
    handshake: CancelHandshake,
}

// KMDF frees the context memory with the request without running `Drop`, and aligns it
// to MEMORY_ALLOCATION_ALIGNMENT (16 bytes on x64).
const _: () = assert!(!core::mem::needs_drop::<RequestContext>());
const _: () = assert!(align_of::<RequestContext>() <= 16);

/// `WDF_DECLARE_CONTEXT_TYPE(RequestContext)` by hand: the type information KMDF uses to
/// size the context and to find it again.
#[repr(transparent)]
struct ContextTypeInfo(WDF_OBJECT_CONTEXT_TYPE_INFO);

// SAFETY: never written after initialization; its pointers reference static data only.
unsafe impl Sync for ContextTypeInfo {}

static REQUEST_CONTEXT_TYPE: ContextTypeInfo = ContextTypeInfo(WDF_OBJECT_CONTEXT_TYPE_INFO {
    Size: size_ulong::<WDF_OBJECT_CONTEXT_TYPE_INFO>(),
    ContextName: c"WskSendRequestContext".as_ptr(),
    ContextSize: size_of::<RequestContext>(),
    UniqueType: &raw const REQUEST_CONTEXT_TYPE.0,
    EvtDriverGetUniqueContextType: None,
});

/// `WDF_GET_CONTEXT_TYPE_INFO(RequestContext)`, for `WDF_OBJECT_ATTRIBUTES.ContextTypeInfo`.
pub fn context_type() -> PCWDF_OBJECT_CONTEXT_TYPE_INFO {
    REQUEST_CONTEXT_TYPE.0.UniqueType
}

/// The request's context (`WdfObjectGetTypedContext`).
///
/// # Safety
/// `request` is a live request of our device, so it carries a [`RequestContext`].
unsafe fn context(request: WDFREQUEST) -> *mut RequestContext {
    // SAFETY: the caller's contract; the type information is the one the device
    // registered with WdfDeviceInitSetRequestAttributes.
    unsafe {
        call_unsafe_wdf_function_binding!(
            WdfObjectGetTypedContextWorker,
            request.cast(),
            context_type(),
        )
    }
    .cast()
}

/// A `WDFREQUEST` this driver owns until it completes it: the dispatcher's token.
///
/// # Invariants
/// `request` was presented to [`evt_io_device_control`] and is not completed; this token
/// is its only owner. `armed` is true once `WdfRequestMarkCancelableEx` succeeded (and so
/// its [`RequestContext`] is written).
pub struct Pending {
    request: WDFREQUEST,
    armed: bool,
}

// SAFETY: a WDFREQUEST handle may be used from any thread at IRQL <= DISPATCH_LEVEL, and
// the token is the request's only owner (type invariant).
unsafe impl Send for Pending {}

impl PendingIo for Pending {
    fn arm(&mut self, file: FileId, id: RequestId) -> bool {
        // SAFETY: a live request of our device (type invariant).
        let context = unsafe { context(self.request) };
        // SAFETY: `context` is this request's context memory, sized and aligned for a
        // RequestContext; the request is not cancelable yet, so nothing else touches it.
        // INVARIANT: written before the request is marked cancelable.
        unsafe {
            context.write(RequestContext {
                file,
                id,
                handshake: CancelHandshake::new(),
            });
        }
        // SAFETY: we own the request; `evt_request_cancel` has the EVT_WDF_REQUEST_CANCEL
        // signature. If the request is already cancelled this fails with
        // STATUS_CANCELLED without calling it, and we complete the request ourselves.
        let status = unsafe {
            call_unsafe_wdf_function_binding!(
                WdfRequestMarkCancelableEx,
                self.request,
                Some(evt_request_cancel),
            )
        };
        // INVARIANT: armed exactly when the request is now cancelable.
        self.armed = NT_SUCCESS(status);
        self.armed
    }

    fn complete(self, outcome: Outcome) {
        if self.armed {
            // SAFETY: we own the request and marked it cancelable in `arm`.
            let status = unsafe {
                call_unsafe_wdf_function_binding!(WdfRequestUnmarkCancelable, self.request)
            };
            if status == STATUS_CANCELLED {
                // EvtRequestCancel has run or will run: whichever side finishes last
                // completes the request.
                // SAFETY: a live request of our device (type invariant).
                let context = unsafe { context(self.request) };
                // SAFETY: armed, so the context is written; it lives until the request
                // completes, which the handshake keeps from happening before this returns.
                let ready = unsafe { &*context }.handshake.completion_ready(outcome);
                if let Some(outcome) = ready {
                    // SAFETY: the cancel callback is done with the request; it is ours.
                    unsafe { finish(self.request, outcome) };
                }
                return;
            }
        }
        // SAFETY: we own the request and it is not cancelable (never armed, or unmarked
        // just above).
        unsafe { finish(self.request, outcome) };
    }
}

/// Completes `request` with `outcome`.
///
/// # Safety
/// We own `request`, it is not cancelable (or its cancel callback has handed it over),
/// and it is completed exactly once, here. IRQL <= `DISPATCH_LEVEL`.
unsafe fn finish(request: WDFREQUEST, outcome: Outcome) {
    // CAST: usize and ULONG_PTR are both 64 bits on x64.
    let information = outcome.information as ULONG_PTR;
    // SAFETY: the caller's contract.
    unsafe {
        call_unsafe_wdf_function_binding!(
            WdfRequestCompleteWithInformation,
            request,
            outcome.status,
            information,
        );
    }
}

/// `EvtIoDeviceControl` of the default queue (at `PASSIVE_LEVEL`: the queue's execution
/// level): hands the request to the dispatcher and completes it if the dispatcher is done.
///
/// The buffers are read from the request's IRP with the dispatcher's [`BufferLayout`],
/// exactly as the WDM front end reads its own IRP.
///
/// # Safety
/// Called by KMDF with a device-control request it presents to us.
pub unsafe extern "C" fn evt_io_device_control(
    _queue: WDFQUEUE,
    request: WDFREQUEST,
    output_len: usize,
    input_len: usize,
    code: ULONG,
) {
    // INVARIANT: KMDF just presented the request to us.
    let pending = Pending {
        request,
        armed: false,
    };
    // SAFETY: a live request; every request of our device has a file object.
    let file = unsafe { call_unsafe_wdf_function_binding!(WdfRequestGetFileObject, request) };
    // SAFETY: a live request presented to us: its IRP stays valid until we complete it.
    let irp = unsafe { call_unsafe_wdf_function_binding!(WdfRequestWdmGetIrp, request) };
    let layout = BufferLayout::of(code, input_len, output_len);
    // SAFETY: the request's IRP (never null for a presented request); reading one field
    // the I/O manager set before dispatching (no reference to the whole IRP, whose other
    // fields, such as `Cancel`, other threads may write).
    let mdl = unsafe { (*irp).MdlAddress }.cast::<wsksend_ffi::MDL>();
    let direct = layout
        .direct_len
        .and_then(|len| NonNull::new(mdl).map(|mdl| DirectBuffer { mdl, len }));
    // SAFETY: as above.
    let associated = unsafe { (*irp).AssociatedIrp };
    // SAFETY: `SystemBuffer` is the member of the union a device-control request uses.
    let system_ptr = unsafe { associated.SystemBuffer }.cast::<u8>();
    let system: &mut [u8] = if layout.system_len == 0 {
        &mut []
    } else if system_ptr.is_null() {
        return pending.complete(Outcome::fail(STATUS_INVALID_PARAMETER));
    } else {
        // SAFETY: the I/O manager allocated the system buffer with `system_len` bytes for
        // this method; we own it until the request completes, and nothing else aliases it.
        unsafe { slice::from_raw_parts_mut(system_ptr, layout.system_len) }
    };
    let disposition = DISPATCHER.device_control(Request {
        file: FileId(file.addr()),
        code,
        system,
        input_len,
        output_len: layout.output_len,
        direct,
        pending,
    });
    if let Disposition::Complete(outcome, pending) = disposition {
        pending.complete(outcome);
    }
}

/// `EvtRequestCancel`: the I/O manager cancelled an armed request. Asks the dispatcher to
/// cancel the operation behind it (queueing the work item if that needs a connection
/// closed); completes the request here only if its completion has already arrived,
/// otherwise the completion path will ([`CancelHandshake`]).
///
/// # Safety
/// Called by KMDF (IRQL <= `DISPATCH_LEVEL`) for a request armed by [`Pending::arm`].
unsafe extern "C" fn evt_request_cancel(request: WDFREQUEST) {
    // SAFETY: a live request of our device.
    let context = unsafe { context(request) };
    // SAFETY: armed, so the context is written; the request cannot complete (and free
    // it) before `cancel_finished` has run.
    let context = unsafe { &*context };
    if DISPATCHER.cancel(context.file, context.id) == CancelAction::RunDeferred {
        queue_deferred();
    }
    if let Some(outcome) = context.handshake.cancel_finished() {
        // SAFETY: the completion path handed the request over; it is ours to complete.
        unsafe { finish(request, outcome) };
    }
}

/// `EvtFileCleanup` (`IRP_MJ_CLEANUP`, the last handle to a file object closed): closes
/// that handle's connections and completes their pending requests.
///
/// # Safety
/// Called by KMDF at `PASSIVE_LEVEL` with one of our file objects.
pub unsafe extern "C" fn evt_file_cleanup(file: WDFFILEOBJECT) {
    DISPATCHER.cleanup(FileId(file.addr()));
}

/// The device's work item for [`CancelAction::RunDeferred`]: null until the device
/// exists, and again once KMDF deletes it with the device (after every request of the
/// device has completed, so no cancellation can reach it then).
static DEFERRED: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());

/// Creates the device's work item, a child of `device` (KMDF deletes it with the device).
///
/// # Safety
/// `device` is a live device of ours; `PASSIVE_LEVEL`.
pub unsafe fn create_deferred_work(device: WDFDEVICE) -> NTSTATUS {
    // WDF_WORKITEM_CONFIG_INIT without automatic serialization: the dispatcher has its
    // own locks and the device no synchronization scope.
    let mut config = WDF_WORKITEM_CONFIG {
        Size: size_ulong::<WDF_WORKITEM_CONFIG>(),
        EvtWorkItemFunc: Some(evt_deferred_work),
        AutomaticSerialization: 0,
    };
    let mut attributes = WDF_OBJECT_ATTRIBUTES {
        ParentObject: device.cast(),
        EvtCleanupCallback: Some(evt_deferred_cleanup),
        ..object_attributes()
    };
    let mut item: WDFWORKITEM = ptr::null_mut();
    // SAFETY: the caller's contract; the configuration and attributes outlive the call;
    // `item` receives the handle.
    let status = unsafe {
        call_unsafe_wdf_function_binding!(
            WdfWorkItemCreate,
            &raw mut config,
            &raw mut attributes,
            &raw mut item,
        )
    };
    if NT_SUCCESS(status) {
        DEFERRED.store(item.cast(), Ordering::Release);
    } else {
        println!("WskSend: WdfWorkItemCreate failed {status:#010x}");
    }
    status
}

/// Queues the work item (a no-op while it is queued and not yet running: one run drains
/// everything deferred so far).
fn queue_deferred() {
    let item = DEFERRED.load(Ordering::Acquire);
    if item.is_null() {
        // Not reachable (the device creates the item before it takes requests), but
        // closing here beats leaving a send hanging.
        DISPATCHER.run_deferred();
        return;
    }
    // SAFETY: the device's live work item (see DEFERRED); IRQL <= DISPATCH_LEVEL.
    unsafe {
        call_unsafe_wdf_function_binding!(WdfWorkItemEnqueue, item.cast());
    }
}

/// Waits until a queued run of the work item has finished. For the legacy unload, where
/// KMDF deletes the control device (and so the work item) only after `EvtDriverUnload`,
/// which must not deregister WSK under a running close.
///
/// # IRQL
/// `PASSIVE_LEVEL`, not from the work item itself.
pub fn flush_deferred() {
    let item = DEFERRED.load(Ordering::Acquire);
    if !item.is_null() {
        // SAFETY: the live work item (its cleanup callback clears DEFERRED before KMDF
        // deletes it); PASSIVE_LEVEL and not its own callback (the caller's contract).
        unsafe {
            call_unsafe_wdf_function_binding!(WdfWorkItemFlush, item.cast());
        }
    }
}

/// `EvtCleanupCallback` of the work item: KMDF is deleting it with the device.
///
/// # Safety
/// Called by KMDF for the device's work item.
unsafe extern "C" fn evt_deferred_cleanup(_item: WDFOBJECT) {
    DEFERRED.store(ptr::null_mut(), Ordering::Release);
}

/// `EvtWorkItem`: closes the connections whose sends could not be cancelled, at
/// `PASSIVE_LEVEL` in a system worker thread.
///
/// # Safety
/// Called by KMDF for the device's work item.
unsafe extern "C" fn evt_deferred_work(_item: WDFWORKITEM) {
    DISPATCHER.run_deferred();
}
