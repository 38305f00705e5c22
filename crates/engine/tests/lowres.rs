//! The engine under the kernel model's low-resources simulation: driver allocations
//! (pool, IRPs, MDLs and, through [`ModelAllocator`], the Rust heap) fail at random
//! from a seed, and every scenario must end in success with the right bytes at the
//! sink, or in a clean `STATUS_INSUFFICIENT_RESOURCES` — with no panic, no leak and no
//! broken kernel rule (the session's checker).
//!
//! One scenario per seed: register, connect, one send of each payload kind (a caller's
//! MDL chain, nonpaged buffers, segments carved as partial MDLs and as a system-VA
//! chain, a single segment, owned bytes), a blocking send, a cancelled send, close and
//! shutdown. The seed also picks the failure rate (one allocation in 2 to 12). A
//! failing seed is reported by number; replay it with
//! `WSKSEND_LOWRES_SEED=N cargo test -p wsksend-engine --test lowres TEST -- --exact --nocapture`
//! (add `WSKSEND_LOWRES_TRACE=1` for a backtrace at every injected failure).

mod common;

use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{TestChain, bytes, model};
use model::lowres::{self, driver};
use model::{Alloc, Fault, LowResources, ModelAllocator, Op, SendMode, Sink};
use wsksend_engine::Error;
use wsksend_engine::client::Client;
use wsksend_engine::connection::{
    CancelOutcome, Completion, ConnectOptions, Connection, Payload, SendResult,
};
use wsksend_engine::mdl::{Carve, RawBuf, Segment};
use wsksend_ffi::MDL;
use wsksend_ffi::status::{STATUS_CANCELLED, STATUS_INVALID_CONNECTION, STATUS_SUCCESS};

#[global_allocator]
static ALLOC: ModelAllocator = ModelAllocator::new();

const WAIT: Duration = Duration::from_secs(10);

/// Pool, IRPs and MDLs (what the engine allocates through kernel routines).
const KERNEL: &[Alloc] = &[Alloc::Pool, Alloc::Irp, Alloc::Mdl];
/// Every kind, the Rust heap too (the driver's global allocator is pool).
const ALL: &[Alloc] = &[Alloc::Pool, Alloc::Irp, Alloc::Mdl, Alloc::Heap];

/// The parts of a scenario that run under low resources (the others run with
/// plenty, so a suite can isolate a path).
#[derive(Clone, Copy)]
struct Phases {
    connect: bool,
    send: bool,
    close: bool,
}

const EVERYTHING: Phases = Phases {
    connect: true,
    send: true,
    close: true,
};
const SENDS_ONLY: Phases = Phases {
    connect: false,
    send: true,
    close: false,
};

/// Completions by tag; the test's own bookkeeping runs as the test (not driver code)
/// even though driver code calls it.
#[derive(Clone, Default)]
struct Recorder {
    inner: Arc<(Mutex<BTreeMap<u64, SendResult>>, Condvar)>,
}

impl Recorder {
    fn completion(&self, tag: u64) -> Completion {
        let inner = Arc::clone(&self.inner);
        Completion::Closure(Box::new(move |r| {
            lowres::harness(|| {
                let (lock, cv) = &*inner;
                let previous = lock.lock().unwrap().insert(tag, r);
                assert!(previous.is_none(), "send {tag} completed twice");
                cv.notify_all();
            });
        }))
    }

    fn wait(&self, tag: u64) -> SendResult {
        let (lock, cv) = &*self.inner;
        let deadline = Instant::now() + WAIT;
        let mut got = lock.lock().unwrap();
        loop {
            if let Some(r) = got.get(&tag) {
                return *r;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "send {tag}: no completion after {WAIT:?}");
            got = cv.wait_timeout(got, left).unwrap().0;
        }
    }
}

/// One seed's run of the scenario.
struct Run<'a> {
    seed: u64,
    session: &'a model::Session,
    config: LowResources,
    /// A resource failure has been seen (later sends may find the connection closed).
    failed: bool,
}

impl Run<'_> {
    fn set(&self, on: bool) {
        if on {
            self.session.low_resources(self.config);
        } else {
            self.session.low_resources_off();
        }
    }

    /// An error a low-resources run may report.
    fn check_error(&mut self, what: &str, e: Error) {
        let seed = self.seed;
        if e == Error::NO_RESOURCES {
            self.failed = true;
            return;
        }
        assert!(
            self.failed && e.status() == STATUS_INVALID_CONNECTION,
            "seed {seed}: {what} failed with {:#x}, not STATUS_INSUFFICIENT_RESOURCES",
            e.status()
        );
    }

    /// A send's result: success with every byte, or a clean resource failure.
    fn check_result(&mut self, what: &str, r: SendResult, len: usize) -> bool {
        let seed = self.seed;
        if r.status == STATUS_SUCCESS {
            assert_eq!(r.bytes, len, "seed {seed}: {what}: bytes reported");
            return true;
        }
        assert_eq!(r.bytes, 0, "seed {seed}: {what}: failed but reported bytes");
        self.check_error(what, Error::from_status(r.status));
        false
    }
}

fn scenario(seed: u64, config: LowResources, phases: Phases, blocking: bool) -> u64 {
    let s = model::session();
    s.set_send_mode(SendMode::Immediate);
    let mut run = Run {
        seed,
        session: &s,
        config,
        failed: false,
    };
    let sink = Sink::v4();
    run.set(phases.connect);
    let client = match driver(Client::register) {
        Ok(c) => c,
        Err(e) => {
            run.check_error("register", e);
            let failed = s.low_resources_stats().failed();
            s.finish();
            return failed;
        }
    };
    let conn = match driver(|| client.connect(sink.addr(), &ConnectOptions::default())) {
        Ok(c) => Some(c),
        Err(e) => {
            run.check_error("connect", e);
            None
        }
    };
    let mut expected = Vec::new();
    if let Some(conn) = &conn {
        run.set(phases.send);
        sends(&mut run, conn, &mut expected, blocking);
        run.set(phases.close);
        if let Err(e) = driver(|| client.close(conn)) {
            run.check_error("close", e);
        }
    }
    drop(conn);
    driver(|| Client::shutdown(client)).expect("shutdown");
    run.set(false);
    if !expected.is_empty() {
        assert!(
            sink.wait_bytes(0, expected.len(), WAIT),
            "seed {seed}: sink got {} of {} bytes",
            sink.received(0).len(),
            expected.len()
        );
        assert!(sink.received(0) == expected, "seed {seed}: bytes differ");
    }
    let stats = s.low_resources_stats();
    assert!(
        stats.considered > 0,
        "seed {seed}: no driver allocation was decided on"
    );
    s.finish();
    stats.failed()
}

/// One send of each payload kind, a blocking send, and a cancelled send.
fn sends(run: &mut Run<'_>, conn: &Connection, expected: &mut Vec<u8>, blocking: bool) {
    let rec = Recorder::default();
    let chain_parts = [bytes(0, 100), bytes(100, 50)];
    let chain = TestChain::new(&[&chain_parts[0], &chain_parts[1]]);
    let nonpaged = [bytes(1000, 33), bytes(2000, 1), bytes(3000, 300)];
    let raw: Vec<RawBuf> = nonpaged
        .iter()
        .map(|v| RawBuf {
            ptr: v.as_ptr(),
            len: u32::try_from(v.len()).unwrap(),
        })
        .collect();
    let master_bytes = bytes(5000, 1000);
    let master = TestChain::new(&[&master_bytes]);
    let segs = [
        Segment {
            offset: 10,
            len: 100,
        },
        Segment {
            offset: 500,
            len: 7,
        },
        Segment {
            offset: 999,
            len: 1,
        },
    ];
    let single = [Segment {
        offset: 300,
        len: 200,
    }];
    let gather = |segments: &[Segment]| -> Vec<u8> {
        segments
            .iter()
            .flat_map(|sg| &master_bytes[sg.offset as usize..(sg.offset + sg.len) as usize])
            .copied()
            .collect()
    };
    let flat_chain = [chain_parts[0].as_slice(), chain_parts[1].as_slice()].concat();
    let m: NonNull<MDL> = master.head();
    let cases: Vec<(&str, Payload<'_>, Vec<u8>)> = vec![
        (
            "mdl chain",
            Payload::Mdl {
                chain: chain.head(),
                offset: 10,
                length: 120,
            },
            flat_chain[10..130].to_vec(),
        ),
        ("nonpaged", Payload::Nonpaged(&raw), nonpaged.concat()),
        (
            "segments (partial MDLs)",
            Payload::Segments {
                master: m,
                segments: &segs,
                carve: Carve::PartialMdl,
            },
            gather(&segs),
        ),
        (
            "segments (system VA)",
            Payload::Segments {
                master: m,
                segments: &segs,
                carve: Carve::SystemVa,
            },
            gather(&segs),
        ),
        (
            "single segment",
            Payload::Segments {
                master: m,
                segments: &single,
                carve: Carve::PartialMdl,
            },
            gather(&single),
        ),
        ("owned", Payload::Owned(bytes(9000, 77)), bytes(9000, 77)),
    ];
    for (tag, (what, payload, want)) in (0u64..).zip(cases) {
        // Built by the test (outside driver code): the closure is the caller's.
        let completion = rec.completion(tag);
        // SAFETY: every buffer and chain outlives the completion, waited for below.
        match driver(|| unsafe { conn.send(payload, 0, completion) }) {
            Ok(_) => {
                if run.check_result(what, rec.wait(tag), want.len()) {
                    expected.extend_from_slice(&want);
                }
            }
            Err(refused) => run.check_error(what, refused.error),
        }
    }
    if blocking {
        let data = bytes(7000, 55);
        match driver(|| conn.send_blocking(&data, 0, WAIT)) {
            Ok(n) => {
                assert_eq!(n, data.len(), "seed {}: blocking send", run.seed);
                expected.extend_from_slice(&data);
            }
            Err(e) => run.check_error("blocking send", e),
        }
    }
    // A send the provider parks until cancelled. (If its allocations fail first the
    // fault stays queued, unused: no send follows.)
    run.session.inject(Op::Send, Fault::PendUntilCancelled);
    let tag = 100;
    let (payload, completion) = (Payload::Owned(bytes(0, 10)), rec.completion(tag));
    // SAFETY: owned payload.
    match driver(|| unsafe { conn.send(payload, 0, completion) }) {
        Ok(id) => {
            let outcome = driver(|| conn.cancel(id));
            let r = rec.wait(tag);
            if r.status == STATUS_CANCELLED {
                assert_ne!(outcome, CancelOutcome::NotHonoured, "seed {}", run.seed);
            } else {
                // Failed for lack of resources before it reached the provider.
                run.check_result("cancelled send", r, 0);
                assert_ne!(r.status, STATUS_SUCCESS, "seed {}", run.seed);
            }
        }
        Err(refused) => run.check_error("cancelled send", refused.error),
    }
    drop((chain, master));
}

/// The seed's configuration: failures from the seed, one allocation in 2 to 12.
fn seeded(seed: u64, kinds: &[Alloc]) -> LowResources {
    LowResources::seeded(seed, 2 + seed % 11).only(kinds)
}

/// Runs `each` over `seeds` ([`lowres::run_seeds`]); `each` returns the failures it
/// injected, and most seeds must have injected at least one (or the suite proves
/// nothing).
fn suite(name: &str, seeds: std::ops::Range<u64>, mut each: impl FnMut(u64) -> u64) {
    let (mut ran, mut injected) = (0u64, 0u64);
    lowres::run_seeds(name, seeds, |seed| {
        ran += 1;
        injected += u64::from(each(seed) > 0);
    });
    // In the parent `ran` is 0: the child ran the seeds and checked this; a replay
    // of one seed runs 1.
    assert!(
        ran <= 1 || injected * 2 >= ran,
        "{name}: only {injected} of {ran} seeds injected a failure"
    );
}

// --- the suites ---

/// Sends of every kind and a cancel under low pool, IRPs, MDLs and heap (register,
/// connect and close with plenty).
#[test]
fn engine_sends_all_allocs_seeds_0_to_299() {
    suite("engine_sends_all_allocs_seeds_0_to_299", 0..300, |seed| {
        scenario(seed, seeded(seed, ALL), SENDS_ONLY, false)
    });
}

/// The same and a blocking send, under low pool, IRPs and MDLs.
#[test]
fn engine_sends_kernel_allocs_seeds_300_to_499() {
    suite(
        "engine_sends_kernel_allocs_seeds_300_to_499",
        300..500,
        |seed| scenario(seed, seeded(seed, KERNEL), SENDS_ONLY, true),
    );
}

/// Every Nth allocation of the send paths fails, N = 1..=24, every kind (the sends
/// make about 20 driver allocations): each allocation point fails in turn.
#[test]
fn engine_sends_every_nth_1_to_24() {
    suite("engine_sends_every_nth_1_to_24", 1..25, |n| {
        scenario(n, LowResources::every_nth(n), SENDS_ONLY, false)
    });
}

/// A blocking send under a low heap.
#[test]
fn engine_blocking_send_all_allocs_seeds_500_to_599() {
    suite(
        "engine_blocking_send_all_allocs_seeds_500_to_599",
        500..600,
        |seed| scenario(seed, seeded(seed, ALL), SENDS_ONLY, true),
    );
}

/// Everything (register, connect, sends, close, shutdown) under low pool, IRPs and
/// MDLs.
#[test]
fn engine_everything_kernel_allocs_seeds_600_to_799() {
    suite(
        "engine_everything_kernel_allocs_seeds_600_to_799",
        600..800,
        |seed| scenario(seed, seeded(seed, KERNEL), EVERYTHING, true),
    );
}

/// Everything under low pool, IRPs, MDLs and heap.
#[test]
fn engine_everything_all_allocs_seeds_800_to_999() {
    suite(
        "engine_everything_all_allocs_seeds_800_to_999",
        800..1000,
        |seed| scenario(seed, seeded(seed, ALL), EVERYTHING, true),
    );
}
