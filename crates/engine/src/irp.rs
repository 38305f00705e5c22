//! IRPs the engine allocates for its WSK calls (DESIGN.md rules 1 and 2).

use core::ffi::c_void;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, Ordering};

use wsksend_ffi::inline::IoSetCompletionRoutine;
use wsksend_ffi::status::STATUS_UNSUCCESSFUL;
use wsksend_ffi::{
    DEVICE_OBJECT, FALSE, IRP, IoAllocateIrp, IoCancelIrp, IoFreeIrp, IoReuseIrp,
    IoSetCompletionRoutineEx, NT_SUCCESS, NTSTATUS, TRUE,
};

use crate::{Error, Result};

/// Stack locations of our IRPs: one, for the WSK provider (our completion routine
/// lives in it).
const STACK_SIZE: i8 = 1;

/// The driver's device object, which `IoSetCompletionRoutineEx` references while one
/// of our completion routines runs (null: plain `IoSetCompletionRoutine`).
static DEVICE: AtomicPtr<DEVICE_OBJECT> = AtomicPtr::new(ptr::null_mut());

/// Sets the device object that keeps the driver image loaded while our completion
/// routines run (DESIGN.md rule 12). The front ends call it (through
/// [`crate::global::start`]) before any IRP is sent; null turns it off.
///
/// # Safety
/// `device` is null or a device object of this driver that outlives every IRP the
/// engine sends (the front end deletes it only after [`crate::global::stop`]).
pub unsafe fn set_device(device: *mut DEVICE_OBJECT) {
    DEVICE.store(device, Ordering::Release);
}

/// Signature of the completion routines we set.
pub type CompletionRoutine =
    unsafe extern "system" fn(*mut wsksend_ffi::DEVICE_OBJECT, *mut IRP, *mut c_void) -> NTSTATUS;

/// An IRP from `IoAllocateIrp`, owned by the engine.
///
/// # Invariants
/// `ptr` is a live IRP from `IoAllocateIrp(STACK_SIZE, FALSE)`. While it is not in
/// flight (between a completion routine's return of `STATUS_MORE_PROCESSING_REQUIRED`
/// and the next provider call) only the owner touches it; it is freed on drop.
pub struct Irp {
    ptr: NonNull<IRP>,
}

// SAFETY: an IRP is a plain kernel object usable from any thread at <= DISPATCH_LEVEL.
unsafe impl Send for Irp {}
// SAFETY: shared references only expose the pointer value and `cancel`, which the
// kernel makes safe to call concurrently.
unsafe impl Sync for Irp {}

impl Irp {
    /// Allocates an IRP with one stack location.
    ///
    /// # Errors
    /// `STATUS_INSUFFICIENT_RESOURCES`.
    ///
    /// # IRQL
    /// <= `DISPATCH_LEVEL`.
    pub fn new() -> Result<Self> {
        // SAFETY: no preconditions; returns null on failure.
        let raw = unsafe { IoAllocateIrp(STACK_SIZE, FALSE) };
        // INVARIANT: a fresh IRP from IoAllocateIrp, owned by the new value.
        NonNull::new(raw)
            .map(|ptr| Self { ptr })
            .ok_or(Error::NO_RESOURCES)
    }

    /// The raw IRP, to pass to a provider call.
    #[must_use]
    pub const fn as_ptr(&self) -> *mut IRP {
        self.ptr.as_ptr()
    }

    /// Re-arms the IRP for another call (`IoReuseIrp`) and sets `routine` to run with
    /// `context` on success, error and cancel. With a device set ([`set_device`]) the
    /// routine is set with `IoSetCompletionRoutineEx`, so the image stays loaded until
    /// the routine has returned, even after our teardown has seen its last object go.
    ///
    /// If `IoSetCompletionRoutineEx` cannot allocate its context, the routine is set
    /// without the device reference instead (KMDF's IRP wrapper does the same), so
    /// arming never fails.
    ///
    /// # Safety
    /// The IRP is not in flight, and `context` stays valid until `routine` has run.
    pub unsafe fn prepare(&mut self, routine: CompletionRoutine, context: *mut c_void) {
        // SAFETY: not in flight (caller), so the IRP is ours to reset.
        unsafe { IoReuseIrp(self.as_ptr(), STATUS_UNSUCCESSFUL) };
        let device = DEVICE.load(Ordering::Acquire);
        if !device.is_null() {
            // SAFETY: as above; `device` is our live device object (`set_device`).
            let status = unsafe {
                IoSetCompletionRoutineEx(
                    device,
                    self.as_ptr(),
                    Some(routine),
                    context,
                    TRUE,
                    TRUE,
                    TRUE,
                )
            };
            if NT_SUCCESS(status) {
                return;
            }
            // Out of memory for the I/O manager's context: set the routine without the
            // device reference (as KMDF's own IRP wrapper does) rather than fail the
            // call; the engine's rundown still waits for everything the routine frees.
        }
        // SAFETY: a reset IRP from IoAllocateIrp(1) has its one location below the
        // current one.
        unsafe { IoSetCompletionRoutine(self.as_ptr(), Some(routine), context, true, true, true) };
    }

    /// `IoStatus` after completion: `(Status, Information)`.
    ///
    /// # Safety
    /// The IRP has completed (its completion routine ran) and is not in flight again.
    #[must_use]
    pub unsafe fn io_status(&self) -> (NTSTATUS, usize) {
        // SAFETY: completed and not in flight (caller), so no one writes it now.
        let irp = unsafe { &*self.as_ptr() };
        (irp.IoStatus.Status, irp.IoStatus.Information)
    }

    /// `IoCancelIrp`: asks the provider to cancel; returns whether a cancel routine ran
    /// (false when the provider cannot cancel, as in Wine, or the IRP has completed).
    ///
    /// # Safety
    /// The IRP is live (not freed, not reused for another call while this runs).
    ///
    /// # IRQL
    /// <= `DISPATCH_LEVEL`.
    pub unsafe fn cancel(&self) -> bool {
        // SAFETY: the IRP is live (caller).
        unsafe { IoCancelIrp(self.as_ptr()) != FALSE }
    }

    /// Abandons the IRP without freeing it: for an IRP a misbehaving provider never
    /// completed, which may still write to it. A deliberate, logged leak.
    pub fn abandon(self) {
        core::mem::forget(self);
    }
}

impl Drop for Irp {
    fn drop(&mut self) {
        // SAFETY: by the type invariant the IRP is ours and not in flight.
        unsafe { IoFreeIrp(self.as_ptr()) };
    }
}

/// A completion status as a `Result` of the bytes/information.
pub(crate) fn io_result(status: NTSTATUS, information: usize) -> Result<usize> {
    crate::error::to_result(status).map(|()| information)
}
