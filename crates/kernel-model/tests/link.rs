//! The model as its users see it: a separate crate that declares the kernel routines
//! through `wsksend-ffi` and links the model's definitions (as the engine's tests do).

use wsksend_ffi::{NonPagedPoolNx, status::STATUS_SUCCESS};
use wsksend_kernel_model::{Rule, session};

const TAG: u32 = u32::from_le_bytes(*b"Link");

#[test]
fn ffi_declarations_resolve_to_the_model() {
    let s = session();
    // SAFETY: plain allocation.
    let p = unsafe { wsksend_ffi::ExAllocatePoolWithTag(NonPagedPoolNx, 32, TAG) };
    assert!(!p.is_null());
    assert_eq!(s.live_pool(), 1);
    // SAFETY: `p` came from ExAllocatePoolWithTag with `TAG`.
    unsafe { wsksend_ffi::ExFreePoolWithTag(p, TAG) };
    // SAFETY: plain allocation.
    let irp = unsafe { wsksend_ffi::IoAllocateIrp(1, 0) };
    // SAFETY: `irp` is live and not in flight.
    unsafe { wsksend_ffi::IoReuseIrp(irp, STATUS_SUCCESS) };
    // SAFETY: `irp` came from IoAllocateIrp.
    unsafe { wsksend_ffi::IoFreeIrp(irp) };
    s.finish();
}

#[test]
fn finish_panics_on_a_leak() {
    let s = session();
    // SAFETY: plain allocation, deliberately leaked.
    let irp = unsafe { wsksend_ffi::IoAllocateIrp(1, 0) };
    assert!(!irp.is_null());
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.finish()));
    let message = panicked
        .err()
        .and_then(|e| e.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    assert!(message.contains("Leak"), "{message}");
    // The model was reset: the next session starts clean.
    let s = session();
    assert_eq!(s.live_irps(), 0);
    s.finish();
}

#[test]
fn finish_expecting_panics_without_that_violation() {
    let s = session();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        s.finish_expecting(Rule::DoubleFree);
    }));
    assert!(result.is_err());
}
