//! The `FORCEINLINE` helpers of `wdm.h` that WskSend needs, redone once here.
//!
//! They touch only the IRP/MDL fields the header's own versions touch, so they behave
//! the same on Windows, in Wine (whose `wdm.h` has the same inline definitions) and in
//! the kernel model.

use core::ffi::c_void;

use crate::{
    IO_STACK_LOCATION, IRP, MDL, PDRIVER_CANCEL, PIO_COMPLETION_ROUTINE, SL_INVOKE_ON_CANCEL,
    SL_INVOKE_ON_ERROR, SL_INVOKE_ON_SUCCESS, SL_PENDING_RETURNED,
};

/// `IoGetCurrentIrpStackLocation`.
///
/// # Safety
/// `irp` points to a live IRP that has a current stack location (one dispatched to us).
#[must_use]
pub unsafe fn IoGetCurrentIrpStackLocation(irp: *mut IRP) -> *mut IO_STACK_LOCATION {
    // SAFETY: the caller guarantees `irp` is live.
    unsafe { (*irp).CurrentStackLocation }
}

/// `IoGetNextIrpStackLocation`: the location the next driver (here: the WSK provider)
/// will see, where our completion routine goes.
///
/// # Safety
/// `irp` points to a live IRP with at least one stack location below the current one
/// (true for an IRP from `IoAllocateIrp(n >= 1)` that we have not passed on yet).
#[must_use]
pub unsafe fn IoGetNextIrpStackLocation(irp: *mut IRP) -> *mut IO_STACK_LOCATION {
    // SAFETY: the caller guarantees `irp` is live.
    let current = unsafe { (*irp).CurrentStackLocation };
    // SAFETY: the caller guarantees a location exists below the current one, inside
    // the IRP's allocation, so the result is in bounds.
    unsafe { current.sub(1) }
}

/// `IoSetCompletionRoutine`: arms `routine` on the next stack location, to be invoked
/// on success, error and/or cancel.
///
/// # Safety
/// As for [`IoGetNextIrpStackLocation`]; `context` must stay valid until the routine runs.
pub unsafe fn IoSetCompletionRoutine(
    irp: *mut IRP,
    routine: PIO_COMPLETION_ROUTINE,
    context: *mut c_void,
    on_success: bool,
    on_error: bool,
    on_cancel: bool,
) {
    // SAFETY: forwarded from the caller's contract.
    let next = unsafe { IoGetNextIrpStackLocation(irp) };
    let mut control = 0;
    if on_success {
        control |= SL_INVOKE_ON_SUCCESS;
    }
    if on_error {
        control |= SL_INVOKE_ON_ERROR;
    }
    if on_cancel {
        control |= SL_INVOKE_ON_CANCEL;
    }
    // SAFETY: `next` is a stack location inside the live IRP, not yet owned by the
    // provider (we have not called it), so no one else accesses it.
    let next = unsafe { &mut *next };
    next.CompletionRoutine = routine;
    next.Context = context;
    next.Control = control;
}

/// `IoMarkIrpPending`: the dispatch routine will return `STATUS_PENDING`.
///
/// # Safety
/// `irp` is a live IRP dispatched to us and not yet completed.
pub unsafe fn IoMarkIrpPending(irp: *mut IRP) {
    // SAFETY: forwarded from the caller's contract.
    let current = unsafe { IoGetCurrentIrpStackLocation(irp) };
    // SAFETY: the current location of a live IRP dispatched to us is ours to modify.
    unsafe { (*current).Control |= SL_PENDING_RETURNED };
}

/// `IoSetCancelRoutine`: atomically swaps the IRP's cancel routine, returning the old one.
///
/// # Safety
/// `irp` is a live IRP that we own (dispatched to us, not completed).
pub unsafe fn IoSetCancelRoutine(irp: *mut IRP, routine: PDRIVER_CANCEL) -> PDRIVER_CANCEL {
    use core::sync::atomic::{AtomicPtr, Ordering};
    // SAFETY: the caller guarantees `irp` is live; taking a field address reads nothing.
    let field = unsafe { &raw mut (*irp).CancelRoutine };
    // SAFETY: `CancelRoutine` is a pointer-sized, pointer-aligned field of a live IRP
    // that the I/O manager also only accesses atomically (InterlockedExchangePointer).
    let slot = unsafe { AtomicPtr::<c_void>::from_ptr(field.cast()) };
    let new = routine.map_or(core::ptr::null_mut(), |f| f as *mut c_void);
    let old = slot.swap(new, Ordering::AcqRel);
    // SAFETY: the slot holds a `PDRIVER_CANCEL` (null is `None`), which has the layout
    // of a nullable pointer.
    unsafe { core::mem::transmute::<*mut c_void, PDRIVER_CANCEL>(old) }
}

/// `MmGetMdlVirtualAddress`.
///
/// # Safety
/// `mdl` points to a live MDL.
#[must_use]
pub unsafe fn MmGetMdlVirtualAddress(mdl: *const MDL) -> *mut c_void {
    // SAFETY: the caller guarantees `mdl` is live.
    let mdl = unsafe { &*mdl };
    let (start, offset) = (mdl.StartVa, mdl.ByteOffset);
    start.cast::<u8>().wrapping_add(offset as usize).cast()
}

/// `MmGetMdlByteCount`.
///
/// # Safety
/// `mdl` points to a live MDL.
#[must_use]
pub unsafe fn MmGetMdlByteCount(mdl: *const MDL) -> u32 {
    // SAFETY: the caller guarantees `mdl` is live.
    unsafe { (*mdl).ByteCount }
}
