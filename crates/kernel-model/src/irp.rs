//! IRPs: allocation with real stack locations, reuse, cancel, and the I/O manager's
//! completion walk.
//!
//! An IRP from `IoAllocateIrp(n, _)` is one zeroed block: the `IRP`, then `n`
//! `IO_STACK_LOCATION`s (location index 0 at the lowest address). As on Windows a
//! fresh IRP has `StackCount = n`, `CurrentLocation = n + 1` and `CurrentStackLocation`
//! just past the last location, so `IoGetNextIrpStackLocation` is location `n - 1`.
//!
//! The model tracks each IRP: live or freed (freed ones stay quarantined, poisoned with
//! `0xDD`, until the session ends), and whether the provider owns it ("in flight",
//! from the provider call until its completion routine is about to run).

use std::alloc::{self, Layout};
use std::mem::size_of;
use std::ptr;
use std::sync::Arc;

use wsksend_ffi::status::{
    STATUS_CANCELLED, STATUS_INVALID_PARAMETER, STATUS_MORE_PROCESSING_REQUIRED,
};
use wsksend_ffi::{
    BOOLEAN, DEVICE_OBJECT, DISPATCH_LEVEL, FALSE, IO_STACK_LOCATION, IRP, NT_SUCCESS, NTSTATUS,
    SL_INVOKE_ON_CANCEL, SL_INVOKE_ON_ERROR, SL_INVOKE_ON_SUCCESS, SL_PENDING_RETURNED, TRUE,
};

use crate::checker::{Op, Rule, State, Violation, state, violation};
use crate::kernel_export;
use crate::socket::SockShared;
use crate::sync::{IrqlGuard, acquire_cancel_lock, check_irql, release_cancel_lock};

/// `IO_TYPE_IRP`.
const IO_TYPE_IRP: i16 = 6;
/// Alignment of IRP blocks.
const IRP_ALIGN: usize = 16;

/// What the provider holds while it owns an IRP.
pub(crate) struct Flight {
    /// Socket the operation belongs to (for the cancel routine).
    pub socket: Option<Arc<SockShared>>,
    /// MDLs (and sources of partial MDLs) marked in flight for this IRP.
    pub mdls: Vec<usize>,
}

/// The model's record of one IRP.
pub(crate) struct IrpRec {
    layout: Layout,
    stack_size: i8,
    pub freed: bool,
    /// `Some` while the provider owns the IRP.
    pub flight: Option<Flight>,
    /// Completed since allocation or the last `IoReuseIrp`.
    completed: bool,
}

/// Puts a fresh IRP into the state `IoAllocateIrp` returns.
///
/// # Safety
/// `irp` is an allocation of `layout` (at least `IRP` plus `stack_size` locations) that
/// nobody else accesses during the call.
unsafe fn initialize(irp: *mut IRP, layout: Layout, stack_size: i8, allocation_flags: u8) {
    // SAFETY: the caller guarantees `layout.size()` writable bytes at `irp`.
    unsafe { irp.cast::<u8>().write_bytes(0, layout.size()) };
    // SAFETY: zeroed memory is a valid `IRP` (integers, raw pointers and `Option`s of
    // function pointers), and the caller guarantees exclusive access.
    let r = unsafe { &mut *irp };
    r.Type = IO_TYPE_IRP;
    // CAST: at most 0xd0 + 126 * 0x48 bytes, which fits a u16.
    r.Size = layout.size() as u16;
    r.StackCount = stack_size;
    r.CurrentLocation = stack_size + 1;
    r.AllocationFlags = allocation_flags;
    r.ApcEnvironment = 0;
    r.CurrentStackLocation = irp
        .cast::<u8>()
        .wrapping_add(size_of::<IRP>())
        .cast::<IO_STACK_LOCATION>()
        .wrapping_add(stack_size.unsigned_abs().into());
}

kernel_export! {
    /// `IoAllocateIrp`: a real, zeroed IRP with `StackSize` stack locations.
    /// An injected [`crate::Fault::Fail`] on [`Op::AllocIrp`] returns null, and so
    /// does a low-resources failure ([`crate::lowres`]) of a driver's allocation.
    ///
    /// # Safety
    /// None.
    fn IoAllocateIrp(StackSize: i8, ChargeQuota: BOOLEAN) -> *mut IRP {
        let _ = ChargeQuota;
        check_irql("IoAllocateIrp", DISPATCH_LEVEL);
        let mut st = state();
        if matches!(st.take_fault(Op::AllocIrp), Some(crate::Fault::Fail(_))) {
            return ptr::null_mut();
        }
        if crate::lowres::fail_driver_alloc(crate::lowres::Alloc::Irp) {
            return ptr::null_mut();
        }
        if !(0..i8::MAX).contains(&StackSize) {
            st.violate(Rule::Misuse, format!("IoAllocateIrp({StackSize})"));
            return ptr::null_mut();
        }
        let n = usize::from(StackSize.unsigned_abs());
        let size = size_of::<IRP>() + n * size_of::<IO_STACK_LOCATION>();
        let Ok(layout) = Layout::from_size_align(size, IRP_ALIGN) else {
            return ptr::null_mut();
        };
        // SAFETY: `layout` has a non-zero size.
        let irp = unsafe { alloc::alloc(layout) }.cast::<IRP>();
        if irp.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: `irp` is a fresh allocation of `layout`, ours alone.
        unsafe { initialize(irp, layout, StackSize, 0) };
        st.irps.insert(
            irp as usize,
            IrpRec { layout, stack_size: StackSize, freed: false, flight: None, completed: false },
        );
        irp
    }
}

/// The device object the model hands to tests for `IoSetCompletionRoutineEx` (the
/// model's `IoCreateDevice` makes none).
#[must_use]
pub fn model_device() -> *mut DEVICE_OBJECT {
    static DEVICE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // A block the size of a DEVICE_OBJECT that nobody reads: only its address matters.
    *DEVICE.get_or_init(|| Box::into_raw(Box::new([0u64; 48])) as usize) as *mut DEVICE_OBJECT
}

kernel_export! {
    /// `IoSetCompletionRoutineEx`: sets the routine on the next stack location (as
    /// `IoSetCompletionRoutine`) and records that the I/O manager holds a reference on
    /// `DeviceObject` until the routine has returned. An injected
    /// [`crate::Fault::Fail`] on [`Op::AllocIrp`]... is not used here: the allocation it
    /// makes fails only under the low-resources simulation.
    ///
    /// # Safety
    /// `Irp` is a live IRP with a location below the current one.
    fn IoSetCompletionRoutineEx(
        DeviceObject: *mut DEVICE_OBJECT,
        Irp: *mut IRP,
        CompletionRoutine: wsksend_ffi::PIO_COMPLETION_ROUTINE,
        Context: *mut core::ffi::c_void,
        InvokeOnSuccess: BOOLEAN,
        InvokeOnError: BOOLEAN,
        InvokeOnCancel: BOOLEAN,
    ) -> NTSTATUS {
        check_irql("IoSetCompletionRoutineEx", DISPATCH_LEVEL);
        if DeviceObject.is_null() {
            violation(Rule::Misuse, "IoSetCompletionRoutineEx with a NULL device object");
            return STATUS_INVALID_PARAMETER;
        }
        // SAFETY: forwarded from the caller's contract.
        unsafe {
            wsksend_ffi::inline::IoSetCompletionRoutine(
                Irp,
                CompletionRoutine,
                Context,
                InvokeOnSuccess != 0,
                InvokeOnError != 0,
                InvokeOnCancel != 0,
            );
        }
        let hook = {
            let mut st = state();
            st.ex_routines.insert(Irp as usize, DeviceObject as usize);
            st.on_arm.pop_front()
        };
        if let Some(hook) = hook {
            hook();
        }
        wsksend_ffi::status::STATUS_SUCCESS
    }
}

kernel_export! {
    /// `IoFreeIrp`. Freeing an IRP the provider owns is a [`Rule::IrpFreedInFlight`]
    /// (the provider then drops it silently instead of completing it).
    ///
    /// # Safety
    /// `Irp` came from `IoAllocateIrp` (checked).
    fn IoFreeIrp(Irp: *mut IRP) {
        check_irql("IoFreeIrp", DISPATCH_LEVEL);
        let mut st = state();
        let Some(rec) = st.irps.get_mut(&(Irp as usize)) else {
            st.violate(Rule::UnknownObject, format!("IoFreeIrp({Irp:p}): not an IRP"));
            return;
        };
        if rec.freed {
            st.violate(Rule::DoubleFree, format!("IoFreeIrp({Irp:p}) freed twice"));
            return;
        }
        rec.freed = true;
        if rec.flight.is_some() {
            st.violate(
                Rule::IrpFreedInFlight,
                format!("IoFreeIrp({Irp:p}) while the provider owns it"),
            );
        } else {
            let size = rec.layout.size();
            // SAFETY: the IRP is ours (in the table, not in flight) and its block is
            // `size` bytes; quarantined memory is never handed out again this session.
            unsafe { Irp.cast::<u8>().write_bytes(0xDD, size) };
        }
    }
}

kernel_export! {
    /// `IoReuseIrp`: back to the fresh state (same allocation), `IoStatus.Status` set.
    ///
    /// # Safety
    /// `Irp` came from `IoAllocateIrp` (checked).
    fn IoReuseIrp(Irp: *mut IRP, Iostatus: NTSTATUS) {
        check_irql("IoReuseIrp", DISPATCH_LEVEL);
        let mut st = state();
        let Some(rec) = st.irps.get_mut(&(Irp as usize)) else {
            st.violate(Rule::UnknownObject, format!("IoReuseIrp({Irp:p}): not an IRP"));
            return;
        };
        if rec.freed {
            st.violate(Rule::UseAfterFree, format!("IoReuseIrp({Irp:p}) after IoFreeIrp"));
            return;
        }
        if rec.flight.is_some() {
            st.violate(
                Rule::IrpReusedInFlight,
                format!("IoReuseIrp({Irp:p}) while the provider owns it"),
            );
            return;
        }
        rec.completed = false;
        let (layout, stack_size) = (rec.layout, rec.stack_size);
        st.ex_routines.remove(&(Irp as usize));
        // SAFETY: the IRP is live and not in flight, so its block is ours to read.
        let flags = unsafe { (*Irp).AllocationFlags };
        // SAFETY: the block is `layout` and nobody else accesses an IRP the driver is
        // reusing (the model lock is held against provider threads).
        unsafe { initialize(Irp, layout, stack_size, flags) };
        // SAFETY: as above.
        unsafe { (*Irp).IoStatus.Status = Iostatus };
    }
}

kernel_export! {
    /// `IoCancelIrp`: sets `Cancel`, takes the cancel routine atomically and, if there
    /// was one, calls it holding the cancel spin lock (which it must release). Returns
    /// whether a cancel routine was called.
    ///
    /// # Safety
    /// `Irp` came from `IoAllocateIrp` (checked).
    fn IoCancelIrp(Irp: *mut IRP) -> BOOLEAN {
        check_irql("IoCancelIrp", DISPATCH_LEVEL);
        crate::sched::point();
        if !check_live(&mut state(), Irp, "IoCancelIrp") {
            return FALSE;
        }
        let irql = acquire_cancel_lock();
        // SAFETY: the IRP is live (checked); `Cancel` is a byte only ever set to TRUE
        // concurrently.
        unsafe { (*Irp).Cancel = TRUE };
        // SAFETY: the IRP is live; the swap is atomic, as on Windows.
        let routine = unsafe { wsksend_ffi::inline::IoSetCancelRoutine(Irp, None) };
        let Some(routine) = routine else {
            release_cancel_lock(irql);
            return FALSE;
        };
        // SAFETY: the IRP is live; whoever set the cancel routine waits for it to run
        // before touching `CancelIrql`.
        unsafe { (*Irp).CancelIrql = irql };
        // A cancel routine is its owner's code (driver code, for the low-resources
        // simulation, unless it is the model's own).
        let _driver = crate::lowres::enter_driver();
        // SAFETY: the routine was set by the IRP's current owner for exactly this call;
        // it releases the cancel spin lock.
        unsafe { routine(ptr::null_mut(), Irp) };
        TRUE
    }
}

kernel_export! {
    /// `IofCompleteRequest`: the I/O manager's completion walk. While
    /// `CurrentLocation <= StackCount`: take the current location's completion routine,
    /// advance one location, and call the routine at `DISPATCH_LEVEL` if its `Control`
    /// asks for this outcome; `STATUS_MORE_PROCESSING_REQUIRED` stops the walk. For an
    /// IRP from `IoAllocateIrp`, any other return value (or no routine at all) is a
    /// [`Rule::CompletionRoutineReturn`].
    ///
    /// # Safety
    /// `Irp` is an IRP whose current stack location belongs to the caller.
    fn IofCompleteRequest(Irp: *mut IRP, PriorityBoost: i8) {
        let _ = PriorityBoost;
        check_irql("IofCompleteRequest", DISPATCH_LEVEL);
        complete_request(Irp);
    }
}

/// Whether `irp` is an IRP the model allocated and has not freed; records
/// [`Rule::UnknownObject`] or [`Rule::UseAfterFree`] otherwise.
pub(crate) fn check_live(st: &mut State, irp: *mut IRP, routine: &str) -> bool {
    match st.irps.get(&(irp as usize)) {
        None => {
            st.violate(
                Rule::UnknownObject,
                format!("{routine}({irp:p}): not an IRP"),
            );
            false
        }
        Some(r) if r.freed => {
            st.violate(
                Rule::UseAfterFree,
                format!("{routine}({irp:p}) after IoFreeIrp"),
            );
            false
        }
        Some(_) => true,
    }
}

/// Checks that `irp` may be handed to the provider: allocated by the model, not freed,
/// not already in flight. On failure the IRP must not be touched.
pub(crate) fn check_for_provider(
    st: &mut State,
    irp: *mut IRP,
    routine: &str,
) -> Result<(), NTSTATUS> {
    if irp.is_null() {
        st.violate(Rule::Misuse, format!("{routine} with a NULL IRP"));
        return Err(STATUS_INVALID_PARAMETER);
    }
    if !check_live(st, irp, routine) {
        return Err(STATUS_INVALID_PARAMETER);
    }
    let Some(rec) = st.irps.get(&(irp as usize)) else {
        return Err(STATUS_INVALID_PARAMETER);
    };
    if rec.flight.is_some() {
        st.violate(
            Rule::IrpReusedInFlight,
            format!("{routine}({irp:p}): IRP already in flight"),
        );
        return Err(STATUS_INVALID_PARAMETER);
    }
    if rec.completed {
        st.violate(
            Rule::Misuse,
            format!("{routine}({irp:p}): IRP passed on again without IoReuseIrp"),
        );
    }
    Ok(())
}

/// The provider receives `irp`: `IoSetNextIrpStackLocation`, and the IRP is in flight
/// from here until its completion. Call after [`check_for_provider`] succeeded.
pub(crate) fn enter_provider(
    st: &mut State,
    irp: *mut IRP,
    routine: &str,
    socket: Option<Arc<SockShared>>,
) -> Result<(), NTSTATUS> {
    // SAFETY: `irp` is live (checked by `check_for_provider`) and the driver handed it
    // to the provider, which now owns it.
    let current = unsafe { (*irp).CurrentLocation };
    if current <= 1 {
        st.violate(
            Rule::NoStackLocation,
            format!("{routine}({irp:p}): no stack location left for the provider"),
        );
        return Err(STATUS_INVALID_PARAMETER);
    }
    // SAFETY: as above.
    unsafe { (*irp).CurrentLocation = current - 1 };
    // SAFETY: as above.
    let location = unsafe { (*irp).CurrentStackLocation };
    // SAFETY: as above; `current > 1`, so the new location is inside the block.
    unsafe { (*irp).CurrentStackLocation = location.wrapping_sub(1) };
    if let Some(rec) = st.irps.get_mut(&(irp as usize)) {
        rec.flight = Some(Flight {
            socket,
            mdls: Vec::new(),
        });
        rec.completed = false;
    }
    Ok(())
}

/// Adds MDLs to the in-flight set of `irp` (already counted in the MDL table).
pub(crate) fn attach_mdls(st: &mut State, irp: *mut IRP, mdls: &[usize]) {
    if let Some(flight) = st
        .irps
        .get_mut(&(irp as usize))
        .and_then(|r| r.flight.as_mut())
    {
        flight.mdls.extend_from_slice(mdls);
    }
}

/// The socket an in-flight IRP belongs to.
pub(crate) fn flight_socket(irp: *mut IRP) -> Option<Arc<SockShared>> {
    state()
        .irps
        .get(&(irp as usize))
        .and_then(|r| r.flight.as_ref())
        .and_then(|f| f.socket.clone())
}

/// `IoMarkIrpPending` on the provider's (current) stack location.
pub(crate) fn mark_pending(irp: *mut IRP) {
    // SAFETY: the provider owns the in-flight IRP and its current stack location.
    unsafe { wsksend_ffi::inline::IoMarkIrpPending(irp) };
}

/// The provider completes an IRP it owns: sets `IoStatus` and runs the completion walk.
pub(crate) fn provider_complete(irp: *mut IRP, status: NTSTATUS, information: usize) {
    {
        let mut st = state();
        let rec = st.irps.get_mut(&(irp as usize));
        if let Some(rec) = rec.filter(|r| r.freed) {
            // Freed in flight (already reported): drop it without calling the driver.
            let flight = rec.flight.take();
            release_flight(&mut st, flight);
            return;
        }
    }
    // SAFETY: the provider owns the live, in-flight IRP.
    unsafe { (*irp).IoStatus.Status = status };
    // SAFETY: as above.
    unsafe { (*irp).IoStatus.Information = information };
    complete_request(irp);
}

fn release_flight(st: &mut State, flight: Option<Flight>) {
    for mdl in flight.map(|f| f.mdls).unwrap_or_default() {
        crate::mdl::release_in_flight(st, mdl);
    }
}

/// The completion walk of `IofCompleteRequest`, as Windows does it: while
/// `CurrentLocation <= StackCount`, take the current location's completion routine,
/// advance one location, and call the routine (at `DISPATCH_LEVEL`) if its `Control`
/// asks for this outcome (`SL_INVOKE_ON_SUCCESS` / `_ON_ERROR` by `NT_SUCCESS`, and
/// `SL_INVOKE_ON_CANCEL` when `Irp->Cancel` is set). `STATUS_MORE_PROCESSING_REQUIRED`
/// stops the walk: the IRP is its owner's again.
///
/// For a driver-allocated IRP any other return value, or a walk that ends without a
/// routine returning it, is a [`Rule::CompletionRoutineReturn`]: the I/O manager
/// would free the IRP under the driver. IRPs the model did not allocate (built by a
/// test) are walked without that check.
pub(crate) fn complete_request(irp: *mut IRP) {
    // Schedule exploration: completions are scheduling points.
    crate::sched::point();
    let driver_allocated = {
        let mut st = state();
        let (flight, known) = match st.irps.get_mut(&(irp as usize)) {
            None => (None, false),
            Some(rec) if rec.freed => {
                st.violate(
                    Rule::UseAfterFree,
                    format!("IofCompleteRequest({irp:p}) after IoFreeIrp"),
                );
                return;
            }
            Some(rec) => {
                rec.completed = true;
                (rec.flight.take(), true)
            }
        };
        release_flight(&mut st, flight);
        known
    };
    let mut reported = false;
    let mut ran = false;
    loop {
        // SAFETY: the IRP is live (checked above, or a caller-built IRP) and being
        // completed, so the completing side owns its header and stack locations.
        let current = unsafe { (*irp).CurrentLocation };
        // SAFETY: as above.
        let count = unsafe { (*irp).StackCount };
        if current > count {
            break;
        }
        if current < 1 {
            violation(
                Rule::Misuse,
                format!("IofCompleteRequest({irp:p}): CurrentLocation {current} < 1"),
            );
            return;
        }
        // SAFETY: as above.
        let location = unsafe { (*irp).CurrentStackLocation };
        // SAFETY: `1 <= current <= count`, so `location` is a stack location inside
        // the IRP's block.
        let loc = unsafe { &mut *location };
        let (routine, context, control) = (loc.CompletionRoutine, loc.Context, loc.Control);
        // Windows clears the location as it leaves it.
        loc.CompletionRoutine = None;
        loc.Context = ptr::null_mut();
        loc.Control = 0;
        let pending_returned = control & SL_PENDING_RETURNED != 0;
        let next = location.wrapping_add(1);
        // SAFETY: as above.
        unsafe { (*irp).PendingReturned = BOOLEAN::from(pending_returned) };
        // SAFETY: as above.
        unsafe { (*irp).CurrentLocation = current + 1 };
        // SAFETY: as above; `next` is at most one past the last location.
        unsafe { (*irp).CurrentStackLocation = next };
        // SAFETY: as above.
        let status = unsafe { (*irp).IoStatus.Status };
        // SAFETY: as above.
        let cancel = unsafe { (*irp).Cancel } != 0;
        let wanted = (NT_SUCCESS(status) && control & SL_INVOKE_ON_SUCCESS != 0)
            || (!NT_SUCCESS(status) && control & SL_INVOKE_ON_ERROR != 0)
            || (cancel && control & SL_INVOKE_ON_CANCEL != 0);
        match routine.filter(|_| wanted) {
            Some(routine) => {
                let device: *mut DEVICE_OBJECT = if current < count {
                    // SAFETY: `current < count`, so `next` is a location of the IRP.
                    unsafe { (*next).DeviceObject }
                } else {
                    ptr::null_mut()
                };
                let ex = driver_allocated && {
                    let mut st = state();
                    let ex = st.ex_routines.remove(&(irp as usize)).is_some();
                    if st.unloaded {
                        st.violate(
                            Rule::RunAfterUnload,
                            format!("completion routine of IRP {irp:p} called after unload"),
                        );
                    }
                    st.routines_running += 1;
                    if !ex {
                        st.plain_routines_running += 1;
                    }
                    ex
                };
                let result = {
                    let _dpc = IrqlGuard::raise(DISPATCH_LEVEL);
                    // Driver code, whichever thread completes (see `lowres`).
                    let _driver = crate::lowres::enter_driver();
                    // SAFETY: the routine and context were set on this location by the
                    // IRP's owner for exactly this call.
                    unsafe { routine(device, irp, context) }
                };
                if driver_allocated {
                    let mut st = state();
                    st.routines_running -= 1;
                    if !ex {
                        st.plain_routines_running -= 1;
                    }
                }
                ran = true;
                if result == STATUS_MORE_PROCESSING_REQUIRED {
                    return;
                }
                if driver_allocated {
                    reported = true;
                    violation(
                        Rule::CompletionRoutineReturn,
                        format!(
                            "completion routine of driver-allocated IRP {irp:p} returned \
                             {result:#x}, not STATUS_MORE_PROCESSING_REQUIRED"
                        ),
                    );
                    let freed = state().irps.get(&(irp as usize)).is_none_or(|r| r.freed);
                    if freed {
                        return;
                    }
                }
            }
            None => {
                if pending_returned && current < count {
                    // SAFETY: `current < count`, so `next` is a location of the IRP.
                    unsafe { (*next).Control |= SL_PENDING_RETURNED };
                }
            }
        }
    }
    if driver_allocated && !reported {
        let what = if ran {
            "no completion routine returned STATUS_MORE_PROCESSING_REQUIRED"
        } else {
            "no completion routine ran"
        };
        violation(
            Rule::CompletionRoutineReturn,
            format!(
                "driver-allocated IRP {irp:p} completed and {what}: the I/O manager would free it"
            ),
        );
    }
}

/// Reports every IRP still allocated.
pub(crate) fn leaks(st: &State, out: &mut Vec<Violation>) {
    for (addr, rec) in st.irps.iter().filter(|(_, r)| !r.freed) {
        out.push(Violation {
            rule: Rule::Leak,
            detail: format!("IRP {addr:#x} (StackSize {}) not freed", rec.stack_size),
        });
    }
}

/// Returns quarantined (freed) IRP blocks to the allocator; live ones are leaked on
/// purpose (the driver may still hold them).
pub(crate) fn release_quarantine(irps: std::collections::BTreeMap<usize, IrpRec>) {
    for (addr, rec) in irps.into_iter().filter(|(_, r)| r.freed) {
        // SAFETY: the block was allocated with `rec.layout` by `IoAllocateIrp`, freed
        // by the driver, and the session that could reach it is over.
        unsafe { alloc::dealloc(addr as *mut u8, rec.layout) };
    }
}

/// A cancel routine for IRPs the provider parks: completes the IRP with
/// `STATUS_CANCELLED` if it is still parked.
pub(crate) unsafe extern "system" fn park_cancel_routine(
    _device: *mut DEVICE_OBJECT,
    irp: *mut IRP,
) {
    // SAFETY: IoCancelIrp calls us with a live IRP and the cancel lock held.
    let irql = unsafe { (*irp).CancelIrql };
    release_cancel_lock(irql);
    if let Some(socket) = flight_socket(irp) {
        socket.cancel_parked(irp, STATUS_CANCELLED);
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::c_void;
    use std::ptr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use wsksend_ffi::status::{STATUS_MORE_PROCESSING_REQUIRED, STATUS_SUCCESS};
    use wsksend_ffi::{DEVICE_OBJECT, IO_STACK_LOCATION, IRP, NTSTATUS, TRUE};

    use crate::{Rule, session};

    unsafe extern "system" fn keep(
        _: *mut DEVICE_OBJECT,
        irp: *mut IRP,
        ctx: *mut c_void,
    ) -> NTSTATUS {
        // SAFETY: the context is the test's counter.
        let hits = unsafe { &*ctx.cast::<AtomicUsize>() };
        hits.fetch_add(1, Ordering::SeqCst);
        assert_eq!(crate::sync::current_irql(), wsksend_ffi::DISPATCH_LEVEL);
        // SAFETY: the IRP is live during its completion routine.
        let location = unsafe { (*irp).CurrentLocation };
        assert_eq!(location, 2);
        STATUS_MORE_PROCESSING_REQUIRED
    }

    unsafe extern "system" fn finish(
        _: *mut DEVICE_OBJECT,
        _: *mut IRP,
        _: *mut c_void,
    ) -> NTSTATUS {
        STATUS_SUCCESS
    }

    /// Allocates a one-location IRP, arms `routine` on its next location and hands it
    /// to a pretend driver below (`IoSetNextIrpStackLocation`).
    fn armed_irp(routine: wsksend_ffi::PIO_COMPLETION_ROUTINE, ctx: *mut c_void) -> *mut IRP {
        // SAFETY: plain allocation.
        let irp = unsafe { wsksend_ffi::IoAllocateIrp(1, 0) };
        assert!(!irp.is_null());
        // SAFETY: `irp` is live and fresh, with one location below the current one.
        unsafe { wsksend_ffi::inline::IoSetCompletionRoutine(irp, routine, ctx, true, true, true) };
        // SAFETY: as above; the pretend lower driver takes the next location.
        unsafe {
            (*irp).CurrentLocation -= 1;
        }
        // SAFETY: as above.
        let current = unsafe { (*irp).CurrentStackLocation };
        // SAFETY: as above.
        unsafe { (*irp).CurrentStackLocation = current.wrapping_sub(1) };
        irp
    }

    #[test]
    fn fresh_irp_layout_matches_windows() {
        let s = session();
        // SAFETY: plain allocation.
        let irp = unsafe { wsksend_ffi::IoAllocateIrp(3, 0) };
        // SAFETY: `irp` is a live IRP.
        let r = unsafe { &*irp };
        assert_eq!((r.StackCount, r.CurrentLocation), (3, 4));
        let past = irp as usize + size_of::<IRP>() + 3 * size_of::<IO_STACK_LOCATION>();
        assert_eq!(r.CurrentStackLocation as usize, past);
        assert_eq!(usize::from(r.Size), past - irp as usize);
        // SAFETY: `irp` came from IoAllocateIrp.
        unsafe { wsksend_ffi::IoFreeIrp(irp) };
        s.finish();
    }

    #[test]
    fn completion_walk_stops_at_more_processing_required() {
        let s = session();
        let hits = AtomicUsize::new(0);
        let irp = armed_irp(Some(keep), (&raw const hits).cast_mut().cast());
        // SAFETY: the IRP is live; we play the lower driver completing it.
        unsafe { (*irp).IoStatus.Status = STATUS_SUCCESS };
        // SAFETY: as above.
        unsafe { wsksend_ffi::IofCompleteRequest(irp, 0) };
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert_eq!(crate::sync::current_irql(), wsksend_ffi::PASSIVE_LEVEL);
        // SAFETY: the routine returned MORE_PROCESSING_REQUIRED: the IRP is ours.
        unsafe { wsksend_ffi::IoReuseIrp(irp, STATUS_SUCCESS) };
        // SAFETY: as above.
        unsafe { wsksend_ffi::IoFreeIrp(irp) };
        s.finish();
    }

    #[test]
    fn completion_routine_returning_success_is_a_violation() {
        let s = session();
        let irp = armed_irp(Some(finish), ptr::null_mut());
        // SAFETY: the IRP is live; we play the lower driver completing it.
        unsafe { wsksend_ffi::IofCompleteRequest(irp, 0) };
        // SAFETY: the IRP is still allocated (the model never frees it).
        unsafe { wsksend_ffi::IoFreeIrp(irp) };
        s.finish_expecting(Rule::CompletionRoutineReturn);
    }

    #[test]
    fn use_after_free_is_reported_not_crashed() {
        let s = session();
        // SAFETY: plain allocation.
        let irp = unsafe { wsksend_ffi::IoAllocateIrp(1, 0) };
        // SAFETY: `irp` came from IoAllocateIrp.
        unsafe { wsksend_ffi::IoFreeIrp(irp) };
        // SAFETY: deliberately reusing a freed IRP; the model checks its table first.
        unsafe { wsksend_ffi::IoReuseIrp(irp, 0) };
        // SAFETY: as above.
        assert_eq!(unsafe { wsksend_ffi::IoCancelIrp(irp) }, 0);
        // SAFETY: as above.
        unsafe { wsksend_ffi::IoFreeIrp(irp) };
        let rules: Vec<Rule> = s.violations().iter().map(|v| v.rule).collect();
        assert_eq!(
            rules,
            [Rule::UseAfterFree, Rule::UseAfterFree, Rule::DoubleFree]
        );
        s.finish_expecting(Rule::DoubleFree);
    }

    #[test]
    fn cancel_without_routine_returns_false_and_sets_cancel() {
        let s = session();
        // SAFETY: plain allocation.
        let irp = unsafe { wsksend_ffi::IoAllocateIrp(1, 0) };
        // SAFETY: `irp` is live.
        assert_eq!(unsafe { wsksend_ffi::IoCancelIrp(irp) }, 0);
        // SAFETY: as above.
        assert_eq!(unsafe { (*irp).Cancel }, TRUE);
        // SAFETY: `irp` came from IoAllocateIrp.
        unsafe { wsksend_ffi::IoFreeIrp(irp) };
        s.finish();
    }

    use std::mem::size_of;
}
