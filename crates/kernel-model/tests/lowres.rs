//! The low-resources simulation itself: which allocations fail (only driver code's),
//! how (every Nth, or from a seed, deterministically), what is counted, and how
//! [`lowres::run_seeds`] reports a failing seed.
//!
//! This test crate installs [`ModelAllocator`], so the Rust heap is simulated too.

use std::ffi::c_void;

use wsksend_ffi::status::{STATUS_MORE_PROCESSING_REQUIRED, STATUS_SUCCESS};
use wsksend_ffi::{DEVICE_OBJECT, FALSE, IRP, NTSTATUS, NonPagedPoolNx};
use wsksend_kernel_model::lowres::{self, Context};
use wsksend_kernel_model::{Alloc, LowResources, ModelAllocator, session};

#[global_allocator]
static ALLOC: ModelAllocator = ModelAllocator::new();

const TAG: u32 = u32::from_le_bytes(*b"LowR");

/// `IoAllocateIrp` from driver code: whether it succeeded (frees what it got).
fn driver_irp() -> bool {
    lowres::driver(|| {
        // SAFETY: plain allocation.
        let irp = unsafe { wsksend_ffi::IoAllocateIrp(1, FALSE) };
        if irp.is_null() {
            return false;
        }
        // SAFETY: ours, never submitted.
        unsafe { wsksend_ffi::IoFreeIrp(irp) };
        true
    })
}

/// Which of `n` driver IRP allocations succeed under `config`.
fn pattern(config: LowResources, n: usize) -> Vec<bool> {
    let s = session();
    s.low_resources(config);
    let got = (0..n).map(|_| driver_irp()).collect();
    s.finish();
    got
}

#[test]
fn every_nth_fails_exactly_every_nth_driver_allocation_and_counts_it() {
    let s = session();
    s.low_resources(LowResources::every_nth(3).only(&[Alloc::Irp]));
    let got: Vec<bool> = (0..7).map(|_| driver_irp()).collect();
    assert_eq!(got, [true, true, false, true, true, false, true]);
    let stats = s.low_resources_stats();
    assert_eq!(stats.considered, 7);
    assert_eq!((stats.failed_irp, stats.failed()), (2, 2));
    s.finish();
}

#[test]
fn seeded_failures_are_deterministic_for_a_seed_and_differ_between_seeds() {
    let a = pattern(LowResources::seeded(7, 4), 64);
    assert_eq!(a, pattern(LowResources::seeded(7, 4), 64));
    assert_ne!(a, pattern(LowResources::seeded(8, 4), 64));
    let failed = a.iter().filter(|ok| !**ok).count();
    // About one in four (binomial(64, 1/4): 16 ± 3.5).
    assert!((5..=30).contains(&failed), "{failed} of 64 failed");
}

#[test]
fn allocations_of_the_test_and_the_model_never_fail() {
    let s = session();
    s.low_resources(LowResources::every_nth(1));
    // The test's own IRPs, MDLs, pool and heap.
    // SAFETY: plain allocation.
    let irp = unsafe { wsksend_ffi::IoAllocateIrp(1, FALSE) };
    assert!(!irp.is_null());
    // SAFETY: plain allocation.
    let pool = unsafe { wsksend_ffi::ExAllocatePoolWithTag(NonPagedPoolNx, 16, TAG) };
    assert!(!pool.is_null());
    let mut v: Vec<u8> = Vec::new();
    assert!(v.try_reserve(100).is_ok());
    // Driver code: its own heap allocation fails; the model's bookkeeping inside
    // `IoFreeIrp` / `ExFreePoolWithTag` (which the driver calls) does not.
    lowres::driver(|| {
        let mut w: Vec<u8> = Vec::new();
        assert!(w.try_reserve(100).is_err());
        // SAFETY: ours, never submitted.
        unsafe { wsksend_ffi::IoFreeIrp(irp) };
        // SAFETY: from ExAllocatePoolWithTag with TAG.
        unsafe { wsksend_ffi::ExFreePoolWithTag(pool, TAG) };
        // A test callback inside driver code allocates as the test.
        lowres::harness(|| assert!(Vec::<u8>::new().try_reserve(100).is_ok()));
    });
    assert!(ModelAllocator::installed());
    let stats = s.low_resources_stats();
    assert_eq!((stats.failed_heap, stats.failed()), (1, 1));
    s.finish();
}

#[test]
fn the_session_turns_the_simulation_off() {
    {
        let s = session();
        s.low_resources(LowResources::every_nth(1));
        assert!(!driver_irp());
        s.finish();
    }
    let s = session();
    assert!(driver_irp());
    assert_eq!(s.low_resources_stats(), lowres::LowResStats::default());
    s.finish();
}

unsafe extern "system" fn record_context(
    _: *mut DEVICE_OBJECT,
    _irp: *mut IRP,
    ctx: *mut c_void,
) -> NTSTATUS {
    // SAFETY: the test passes a `Context` it keeps alive.
    unsafe { ctx.cast::<Option<Context>>().write(Some(lowres::current())) };
    STATUS_MORE_PROCESSING_REQUIRED
}

#[test]
fn completion_routines_run_as_driver_code() {
    let s = session();
    // SAFETY: plain allocation.
    let irp = unsafe { wsksend_ffi::IoAllocateIrp(1, FALSE) };
    let mut seen: Option<Context> = None;
    let ctx = (&raw mut seen).cast::<c_void>();
    // SAFETY: the IRP is ours with its next stack location free; `seen` outlives it.
    unsafe {
        wsksend_ffi::inline::IoSetCompletionRoutine(
            irp,
            Some(record_context),
            ctx,
            true,
            true,
            true,
        );
    };
    // What `IoCallDriver` does: make the next location current (the callee's).
    // SAFETY: the IRP is ours, with one stack location left.
    unsafe { (*irp).CurrentLocation -= 1 };
    // SAFETY: as above.
    let location = unsafe { (*irp).CurrentStackLocation };
    // SAFETY: as above; one location down is the IRP's only location.
    unsafe { (*irp).CurrentStackLocation = location.wrapping_sub(1) };
    // SAFETY: as above.
    unsafe { (*irp).IoStatus.Status = STATUS_SUCCESS };
    assert_eq!(lowres::current(), Context::Harness);
    // SAFETY: the IRP's current location is ours to complete.
    unsafe { wsksend_ffi::IofCompleteRequest(irp, 0) };
    assert_eq!(seen, Some(Context::Driver));
    assert_eq!(lowres::current(), Context::Harness);
    // SAFETY: ours, completed.
    unsafe { wsksend_ffi::IoFreeIrp(irp) };
    s.finish();
}

/// A suite that fails at seed 3; run only as a child by
/// `run_seeds_reports_the_failing_seed`.
#[test]
#[ignore = "fixture: fails at seed 3 on purpose; run as a child of run_seeds_reports_the_failing_seed"]
fn fixture_failing_at_seed_3() {
    lowres::run_seeds("fixture_failing_at_seed_3", 0..10, |seed| {
        assert_ne!(seed, 3, "failing on purpose");
    });
}

/// A suite that aborts (an infallible allocation of driver code gets null) at seed 5.
#[test]
#[ignore = "fixture: aborts at seed 5 on purpose; run as a child of run_seeds_reports_an_abort"]
fn fixture_aborting_at_seed_5() {
    lowres::run_seeds("fixture_aborting_at_seed_5", 0..10, |seed| {
        let s = session();
        if seed == 5 {
            s.low_resources(LowResources::every_nth(1).only(&[Alloc::Heap]));
        }
        let v = lowres::driver(|| vec![1u8; 10]);
        assert_eq!(v.len(), 10);
        s.finish();
    });
}

#[test]
fn run_seeds_reports_the_failing_seed() {
    let failed = std::panic::catch_unwind(|| {
        lowres::run_seeds("fixture_failing_at_seed_3", 0..10, |_| {});
    });
    // The closure above is not what runs: the child runs the fixture's own closure.
    let message = *failed
        .expect_err("the child failed")
        .downcast::<String>()
        .unwrap();
    assert!(message.contains("seed 3 failed"), "{message}");
    assert!(message.contains("WSKSEND_LOWRES_SEED=3"), "{message}");
    assert!(message.contains("failing on purpose"), "{message}");
}

#[test]
fn run_seeds_reports_an_abort() {
    let failed = std::panic::catch_unwind(|| {
        lowres::run_seeds("fixture_aborting_at_seed_5", 0..10, |_| {});
    });
    let message = *failed
        .expect_err("the child aborted")
        .downcast::<String>()
        .unwrap();
    assert!(message.contains("seed 5 failed"), "{message}");
    assert!(
        message.contains("memory allocation of 10 bytes failed"),
        "{message}"
    );
}
