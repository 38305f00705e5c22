//! The IOCTL dispatcher and the engine under the kernel model's low-resources
//! simulation, driven as a front end drives them: `global::start`, CONNECT, SENDs
//! (a single segment and a multi-segment send, both carves), CLOSE, a second
//! connection left to handle cleanup, `shutdown`, `global::stop`. Each seed's run ends
//! in success with the right bytes at the sink, or with requests completed as
//! `STATUS_INSUFFICIENT_RESOURCES` — no panic, no leak, no broken rule, and every
//! armed token completed exactly once. Replay a seed with
//! `WSKSEND_LOWRES_SEED=N cargo test -p wsksend-dispatch --test lowres TEST -- --exact`.

use std::ptr::{self, NonNull};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use wsksend_dispatch::{
    Carve, Config, DirectBuffer, Dispatcher, Disposition, FileId, Outcome, PendingIo, Request,
    RequestId,
};
use wsksend_ffi::status::{STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_HANDLE};
use wsksend_ffi::{FALSE, IoAllocateMdl, IoFreeMdl, MDL, MmBuildMdlForNonPagedPool};
use wsksend_kernel_model::lowres::{self, driver};
use wsksend_kernel_model::{Alloc, LowResources, ModelAllocator, SendMode, Sink, session};
use wsksend_protocol::{
    ConnectReply, ConnectRequest, HandleRequest, IOCTL_WSKSEND_CLOSE, IOCTL_WSKSEND_CONNECT,
    IOCTL_WSKSEND_SEND, SendRequest, WireSegment,
};

#[global_allocator]
static ALLOC: ModelAllocator = ModelAllocator::new();

const KERNEL: &[Alloc] = &[Alloc::Pool, Alloc::Irp, Alloc::Mdl];
const ALL: &[Alloc] = &[Alloc::Pool, Alloc::Irp, Alloc::Mdl, Alloc::Heap];
const WAIT: Duration = Duration::from_secs(10);
const FILE_A: FileId = FileId(0xA000);
const FILE_B: FileId = FileId(0xB000);

/// What happened to one request's token.
#[derive(Default)]
struct Probe {
    state: Mutex<(bool, Vec<Outcome>)>,
    cv: Condvar,
}

/// The front end's token; its bookkeeping is the test's, not driver code.
struct Token(Arc<Probe>);

impl PendingIo for Token {
    fn arm(&mut self, _file: FileId, _id: RequestId) -> bool {
        lowres::harness(|| self.0.state.lock().unwrap().0 = true);
        true
    }

    fn complete(self, outcome: Outcome) {
        lowres::harness(|| {
            self.0.state.lock().unwrap().1.push(outcome);
            self.0.cv.notify_all();
        });
    }
}

impl Probe {
    fn wait(&self, seed: u64) -> Outcome {
        let deadline = Instant::now() + WAIT;
        let mut st = self.state.lock().unwrap();
        while st.1.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "seed {seed}: request not completed");
            st = self.cv.wait_timeout(st, left).unwrap().0;
        }
        assert_eq!(st.1.len(), 1, "seed {seed}: completed more than once");
        st.1[0]
    }

    /// Armed tokens completed exactly once; others never.
    fn assert_settled(&self, seed: u64) {
        let st = self.state.lock().unwrap();
        assert_eq!(
            st.1.len(),
            usize::from(st.0),
            "seed {seed}: token armed {}",
            st.0
        );
    }
}

/// One seed's driver: the dispatcher and every probe.
struct Run {
    seed: u64,
    d: &'static Dispatcher<Token>,
    probes: Vec<Arc<Probe>>,
}

impl Run {
    /// One request; its outcome (waiting if it went pending).
    fn request(
        &mut self,
        file: FileId,
        code: u32,
        system: &mut [u8],
        input_len: usize,
        output_len: usize,
        direct: Option<DirectBuffer>,
    ) -> Outcome {
        let probe = Arc::new(Probe::default());
        self.probes.push(Arc::clone(&probe));
        let token = Token(Arc::clone(&probe));
        let d = self.d;
        let disposition = driver(|| {
            d.device_control(Request {
                file,
                code,
                system,
                input_len,
                output_len,
                direct,
                pending: token,
            })
        });
        match disposition {
            Disposition::Complete(outcome, token) => {
                drop(token);
                outcome
            }
            Disposition::Pending => probe.wait(self.seed),
        }
    }

    /// A result that is success (`information` = `want`) or a resource failure.
    fn ok(&self, what: &str, outcome: Outcome, want: usize) -> bool {
        if outcome.status == STATUS_INSUFFICIENT_RESOURCES {
            assert_eq!(outcome.information, 0, "seed {}: {what}", self.seed);
            return false;
        }
        assert_eq!(outcome, Outcome::ok(want), "seed {}: {what}", self.seed);
        true
    }

    fn connect(&mut self, file: FileId, sink: &Sink) -> Option<u64> {
        let mut system = vec![0u8; ConnectRequest::WIRE_SIZE.max(ConnectReply::WIRE_SIZE)];
        ConnectRequest {
            remote: sink.addr(),
            flags: 0,
            timeout_ms: 0,
            max_posted: 0,
        }
        .emit(&mut system)
        .expect("emit ConnectRequest");
        let outcome = self.request(
            file,
            IOCTL_WSKSEND_CONNECT,
            &mut system,
            ConnectRequest::WIRE_SIZE,
            ConnectReply::WIRE_SIZE,
            None,
        );
        self.ok("CONNECT", outcome, ConnectReply::WIRE_SIZE)
            .then(|| ConnectReply::parse(&system).expect("ConnectReply").handle)
    }

    fn send(&mut self, file: FileId, handle: u64, segments: &[WireSegment], buf: &Buf) -> bool {
        let mut input =
            vec![0; SendRequest::HEADER_SIZE + segments.len() * SendRequest::SEGMENT_SIZE];
        SendRequest::emit(&mut input, handle, 0, segments).expect("emit SendRequest");
        let len = input.len();
        let want = segments.iter().map(|s| s.len as usize).sum();
        let outcome = self.request(
            file,
            IOCTL_WSKSEND_SEND,
            &mut input,
            len,
            0,
            Some(buf.direct()),
        );
        self.ok("SEND", outcome, want)
    }

    fn close(&mut self, file: FileId, handle: u64) {
        let mut input = vec![0; HandleRequest::WIRE_SIZE];
        HandleRequest { handle }
            .emit(&mut input)
            .expect("emit HandleRequest");
        let outcome = self.request(
            file,
            IOCTL_WSKSEND_CLOSE,
            &mut input,
            HandleRequest::WIRE_SIZE,
            0,
            None,
        );
        // A CLOSE that ran out of resources still closed the connection, or left it
        // to cleanup: both end without a leak, which the session checks.
        assert!(
            outcome.status == 0
                || outcome.status == STATUS_INSUFFICIENT_RESOURCES
                || outcome.status == STATUS_INVALID_HANDLE,
            "seed {}: CLOSE: {:#x}",
            self.seed,
            outcome.status
        );
    }
}

/// A buffer described by a locked MDL (a `METHOD_IN_DIRECT` buffer Wine copied).
struct Buf {
    data: Vec<u8>,
    mdl: NonNull<MDL>,
}

impl Buf {
    fn new(data: Vec<u8>) -> Self {
        let len = u32::try_from(data.len()).unwrap();
        // SAFETY: describing memory; no IRP.
        let mdl = unsafe {
            IoAllocateMdl(
                data.as_ptr().cast_mut().cast(),
                len,
                FALSE,
                FALSE,
                ptr::null_mut(),
            )
        };
        let mdl = NonNull::new(mdl).expect("IoAllocateMdl");
        // SAFETY: a live MDL over `data`, which stays put until drop.
        unsafe { MmBuildMdlForNonPagedPool(mdl.as_ptr()) };
        Self { data, mdl }
    }

    fn direct(&self) -> DirectBuffer {
        DirectBuffer {
            mdl: self.mdl,
            len: self.data.len(),
        }
    }

    fn gather(&self, segments: &[WireSegment]) -> Vec<u8> {
        segments
            .iter()
            .flat_map(|s| &self.data[s.offset as usize..(s.offset + s.len) as usize])
            .copied()
            .collect()
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: ours; the requests that used it have completed.
        unsafe { IoFreeMdl(self.mdl.as_ptr()) };
    }
}

fn seg(offset: u32, len: u32) -> WireSegment {
    WireSegment { offset, len }
}

fn scenario(seed: u64, kinds: &[Alloc], sends_only: bool) -> u64 {
    let s = session();
    s.set_send_mode(SendMode::Immediate);
    let config = LowResources::seeded(seed, 2 + seed % 9).only(kinds);
    let set = |on: bool| {
        if on {
            s.low_resources(config);
        } else {
            s.low_resources_off();
        }
    };
    let carve = if seed.is_multiple_of(2) {
        Carve::SystemVa
    } else {
        Carve::PartialMdl
    };
    let sink = Sink::v4();
    let buf = Buf::new((0..2000u32).map(|i| (i * 7 % 251) as u8).collect());
    set(!sends_only);
    let mut expected = Vec::new();
    if driver(|| {
        // SAFETY: the model's device lives for the whole process.
        unsafe { wsksend_engine::global::start(wsksend_kernel_model::device()) }
    })
    .is_ok()
    {
        let d: &'static Dispatcher<Token> = Box::leak(Box::new(Dispatcher::new(Config {
            carve,
            linger: std::time::Duration::from_millis(200),
        })));
        let mut run = Run {
            seed,
            d,
            probes: Vec::new(),
        };
        if let Some(h) = run.connect(FILE_A, &sink) {
            set(true);
            for segments in [
                vec![seg(0, 300)],
                vec![seg(10, 100), seg(500, 7), seg(1999, 1)],
                vec![seg(700, 50), seg(800, 50)],
            ] {
                if run.send(FILE_A, h, &segments, &buf) {
                    expected.extend_from_slice(&buf.gather(&segments));
                }
            }
            set(!sends_only);
            run.close(FILE_A, h);
        }
        // A connection on another file, left open: handle cleanup closes it.
        let second = run.connect(FILE_B, &sink);
        driver(|| d.cleanup(FILE_B));
        driver(|| d.cleanup(FILE_A));
        driver(|| d.shutdown());
        driver(wsksend_engine::global::stop).expect("stop");
        assert_eq!(d.connection_count(), 0, "seed {seed}");
        for p in &run.probes {
            p.assert_settled(seed);
        }
        let _ = second;
    }
    set(false);
    if !expected.is_empty() {
        assert!(
            sink.wait_bytes(0, expected.len(), WAIT),
            "seed {seed}: sink got {} of {} bytes",
            sink.received(0).len(),
            expected.len()
        );
        assert!(sink.received(0) == expected, "seed {seed}: bytes differ");
    }
    drop(buf);
    let failed = s.low_resources_stats().failed();
    s.finish();
    failed
}

fn suite(name: &str, seeds: std::ops::Range<u64>, kinds: &[Alloc], sends_only: bool) {
    let (mut ran, mut injected) = (0u64, 0u64);
    lowres::run_seeds(name, seeds, |seed| {
        ran += 1;
        injected += u64::from(scenario(seed, kinds, sends_only) > 0);
    });
    // In the parent `ran` is 0: the child ran the seeds and checked this; a replay
    // of one seed runs 1.
    assert!(
        ran <= 1 || injected * 2 >= ran,
        "{name}: only {injected} of {ran} seeds injected a failure"
    );
}

/// SENDs under low pool, IRPs and MDLs.
#[test]
fn dispatch_sends_kernel_allocs_seeds_2000_to_2199() {
    suite(
        "dispatch_sends_kernel_allocs_seeds_2000_to_2199",
        2000..2200,
        KERNEL,
        true,
    );
}

/// SENDs under low pool, IRPs, MDLs and heap.
#[test]
fn dispatch_sends_all_allocs_seeds_2200_to_2399() {
    suite(
        "dispatch_sends_all_allocs_seeds_2200_to_2399",
        2200..2400,
        ALL,
        true,
    );
}

/// Everything (start, CONNECT, SEND, CLOSE, cleanup, shutdown, stop) under low pool,
/// IRPs and MDLs.
#[test]
fn dispatch_everything_kernel_allocs_seeds_2400_to_2599() {
    suite(
        "dispatch_everything_kernel_allocs_seeds_2400_to_2599",
        2400..2600,
        KERNEL,
        false,
    );
}

/// Everything under low pool, IRPs, MDLs and heap.
#[test]
fn dispatch_everything_all_allocs_seeds_2600_to_2799() {
    suite(
        "dispatch_everything_all_allocs_seeds_2600_to_2799",
        2600..2800,
        ALL,
        false,
    );
}
