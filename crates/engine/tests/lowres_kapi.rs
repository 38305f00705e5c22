//! The exported kernel API (`Wsks*`) under the kernel model's low-resources
//! simulation, as another driver calls it: `global::start`, `WsksConnect`,
//! `WsksSendMdl`, `WsksSendBuffers`, `WsksSendSync`, `WsksClose`, `global::stop`.
//! Each seed's run ends in success with the right bytes at the sink, or in
//! `STATUS_INSUFFICIENT_RESOURCES` — no panic, no leak, no broken rule. Replay a seed
//! with `WSKSEND_LOWRES_SEED=N cargo test -p wsksend-engine --test lowres_kapi TEST -- --exact`.

mod common;

use std::ffi::c_void;
use std::ptr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::{TestChain, bytes, model};
use model::lowres::{self, driver};
use model::{Alloc, LowResources, ModelAllocator, SendMode, Sink};
use wsksend_engine::RawAddr;
use wsksend_engine::global;
use wsksend_engine::kapi::{
    WSKS_BUFFER, WsksClose, WsksConnect, WsksSendBuffers, WsksSendMdl, WsksSendSync,
};
use wsksend_ffi::status::{STATUS_INSUFFICIENT_RESOURCES, STATUS_PENDING, STATUS_SUCCESS};
use wsksend_ffi::{NTSTATUS, SOCKADDR};

#[global_allocator]
static ALLOC: ModelAllocator = ModelAllocator::new();

const KERNEL: &[Alloc] = &[Alloc::Pool, Alloc::Irp, Alloc::Mdl];
const ALL: &[Alloc] = &[Alloc::Pool, Alloc::Irp, Alloc::Mdl, Alloc::Heap];

type Done = Arc<(Mutex<Vec<(NTSTATUS, usize)>>, Condvar)>;

/// The caller driver's completion callback; its bookkeeping is the test's.
unsafe extern "system" fn on_complete(context: *mut c_void, status: NTSTATUS, bytes: usize) {
    lowres::harness(|| {
        // SAFETY: the runs pass a `Done` they keep alive until completion.
        let done = unsafe { &*context.cast::<(Mutex<Vec<(NTSTATUS, usize)>>, Condvar)>() };
        done.0.lock().unwrap().push((status, bytes));
        done.1.notify_all();
    });
}

fn wait(done: &Done, n: usize, seed: u64) -> (NTSTATUS, usize) {
    let mut got = done.0.lock().unwrap();
    while got.len() < n {
        let (g, t) = done.1.wait_timeout(got, Duration::from_secs(10)).unwrap();
        assert!(!t.timed_out(), "seed {seed}: completion did not arrive");
        got = g;
    }
    got[n - 1]
}

/// What the API may answer under low resources: success, or the resource status.
fn ok_or_no_resources(seed: u64, what: &str, status: NTSTATUS, success: NTSTATUS) -> bool {
    assert!(
        status == success || status == STATUS_INSUFFICIENT_RESOURCES,
        "seed {seed}: {what} returned {status:#x}"
    );
    status == success
}

/// Which calls run under low resources.
#[derive(Clone, Copy)]
struct Plan {
    /// `global::start`, `WsksConnect`, `WsksClose`, `global::stop` too (not only sends).
    everything: bool,
    /// `WsksSendSync` too.
    sync: bool,
}

fn scenario(seed: u64, config: LowResources, plan: Plan) -> u64 {
    let s = model::session();
    s.set_send_mode(SendMode::Immediate);
    let sink = Sink::v4();
    let set = |on: bool| {
        if on {
            s.low_resources(config);
        } else {
            s.low_resources_off();
        }
    };
    set(plan.everything);
    let mut expected = Vec::new();
    if driver(|| {
        // SAFETY: the model's device lives for the whole process.
        unsafe { global::start(wsksend_kernel_model::device()) }
    })
    .is_ok()
    {
        let raw = RawAddr::from_socket_addr(sink.addr());
        let RawAddr::V4(a) = &raw else {
            unreachable!("a v4 sink")
        };
        let mut handle = ptr::null_mut();
        // SAFETY: valid address and out-pointer.
        let status = driver(|| unsafe {
            WsksConnect(
                ptr::from_ref(a).cast::<SOCKADDR>(),
                16,
                0,
                5000,
                &raw mut handle,
            )
        });
        if ok_or_no_resources(seed, "WsksConnect", status, STATUS_SUCCESS) {
            set(true);
            sends(seed, handle, plan, &mut expected);
            set(plan.everything);
            // SAFETY: a live handle, not used again.
            let closed = driver(|| unsafe { WsksClose(handle) });
            ok_or_no_resources(seed, "WsksClose", closed, STATUS_SUCCESS);
        }
        driver(global::stop).expect("stop");
    }
    set(false);
    if !expected.is_empty() {
        assert!(
            sink.wait_bytes(0, expected.len(), Duration::from_secs(10)),
            "seed {seed}: sink got {} of {} bytes",
            sink.received(0).len(),
            expected.len()
        );
        assert!(sink.received(0) == expected, "seed {seed}: bytes differ");
    }
    let failed = s.low_resources_stats().failed();
    s.finish();
    failed
}

fn sends(seed: u64, conn: *mut c_void, plan: Plan, expected: &mut Vec<u8>) {
    let done: Done = Arc::default();
    let ctx = Arc::as_ptr(&done).cast_mut().cast::<c_void>();
    let mut completions = 0;
    let a = bytes(0, 100);
    let chain = TestChain::new(&[&a]);
    // SAFETY: live handle, chain kept until completion, callback accepts ctx.
    let st = driver(|| unsafe {
        WsksSendMdl(
            conn,
            chain.head().as_ptr(),
            5,
            50,
            0,
            Some(on_complete),
            ctx,
        )
    });
    if ok_or_no_resources(seed, "WsksSendMdl", st, STATUS_PENDING) {
        completions += 1;
        let (status, n) = wait(&done, completions, seed);
        if ok_or_no_resources(seed, "WsksSendMdl completion", status, STATUS_SUCCESS) {
            assert_eq!(n, 50, "seed {seed}");
            expected.extend_from_slice(&a[5..55]);
        }
    }
    let b = [bytes(7, 10), bytes(8, 20)];
    let bufs: Vec<WSKS_BUFFER> = b
        .iter()
        .map(|v| WSKS_BUFFER {
            Buffer: v.as_ptr().cast(),
            Length: u32::try_from(v.len()).unwrap(),
        })
        .collect();
    // SAFETY: as above.
    let st =
        driver(|| unsafe { WsksSendBuffers(conn, bufs.as_ptr(), 2, 0, Some(on_complete), ctx) });
    if ok_or_no_resources(seed, "WsksSendBuffers", st, STATUS_PENDING) {
        completions += 1;
        let (status, n) = wait(&done, completions, seed);
        if ok_or_no_resources(seed, "WsksSendBuffers completion", status, STATUS_SUCCESS) {
            assert_eq!(n, 30, "seed {seed}");
            expected.extend_from_slice(&b.concat());
        }
    }
    if plan.sync {
        let mut sent = 0usize;
        // SAFETY: as above.
        let st = driver(|| unsafe { WsksSendSync(conn, bufs.as_ptr(), 1, 0, 5000, &raw mut sent) });
        if ok_or_no_resources(seed, "WsksSendSync", st, STATUS_SUCCESS) {
            assert_eq!(sent, 10, "seed {seed}");
            expected.extend_from_slice(&b[0]);
        }
    }
    drop(chain);
}

fn suite(name: &str, seeds: std::ops::Range<u64>, kinds: &[Alloc], plan: Plan) {
    let (mut ran, mut injected) = (0u64, 0u64);
    lowres::run_seeds(name, seeds, |seed| {
        ran += 1;
        let config = LowResources::seeded(seed, 2 + seed % 7).only(kinds);
        injected += u64::from(scenario(seed, config, plan) > 0);
    });
    // In the parent `ran` is 0: the child ran the seeds and checked this; a replay
    // of one seed runs 1.
    assert!(
        ran <= 1 || injected * 2 >= ran,
        "{name}: only {injected} of {ran} seeds injected a failure"
    );
}

/// `WsksSendMdl` and `WsksSendBuffers` under low pool, IRPs, MDLs and heap.
#[test]
fn kapi_async_sends_all_allocs_seeds_1000_to_1149() {
    suite(
        "kapi_async_sends_all_allocs_seeds_1000_to_1149",
        1000..1150,
        ALL,
        Plan {
            everything: false,
            sync: false,
        },
    );
}

/// The same and `WsksSendSync`, under low pool, IRPs and MDLs.
#[test]
fn kapi_sends_kernel_allocs_seeds_1150_to_1299() {
    suite(
        "kapi_sends_kernel_allocs_seeds_1150_to_1299",
        1150..1300,
        KERNEL,
        Plan {
            everything: false,
            sync: true,
        },
    );
}

/// `WsksSendSync` under a low heap.
#[test]
fn kapi_sends_all_allocs_seeds_1300_to_1399() {
    suite(
        "kapi_sends_all_allocs_seeds_1300_to_1399",
        1300..1400,
        ALL,
        Plan {
            everything: false,
            sync: true,
        },
    );
}

/// Everything, from `global::start` to `global::stop`, under low pool, IRPs and MDLs.
#[test]
fn kapi_everything_kernel_allocs_seeds_1400_to_1499() {
    suite(
        "kapi_everything_kernel_allocs_seeds_1400_to_1499",
        1400..1500,
        KERNEL,
        Plan {
            everything: true,
            sync: true,
        },
    );
}

/// Everything under low pool, IRPs, MDLs and heap.
#[test]
fn kapi_everything_all_allocs_seeds_1500_to_1599() {
    suite(
        "kapi_everything_all_allocs_seeds_1500_to_1599",
        1500..1600,
        ALL,
        Plan {
            everything: true,
            sync: true,
        },
    );
}
