//! Host tests of the IOCTL dispatcher: the real dispatcher and engine against the
//! kernel model, driven the way a front end drives them.
//!
//! Every model test starts a session and the driver-wide engine, leaks one
//! `Dispatcher<TestToken>` (`device_control` takes `&'static self`), runs requests, and
//! ends with `shutdown`, `global::stop` and `Session::finish`, so the checker proves that
//! nothing leaked and no kernel rule was broken. SEND payloads are real locked MDLs over
//! test buffers, built as the I/O manager builds a `METHOD_IN_DIRECT` buffer, and freed
//! only after their request completed (the checker verifies that order).
//!
//! `TestToken` records what the dispatcher does with each request's token; at the end of
//! every test each token the dispatcher armed must have been completed exactly once, and
//! a token handed back with `Disposition::Complete` must never have been armed (bad
//! input) or completed by the dispatcher.

use std::net::SocketAddr;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use wsksend_dispatch::{
    CancelAction, CancelHandshake, Carve, Config, DirectBuffer, Dispatcher, Disposition, FileId,
    Outcome, PendingIo, Request, RequestId,
};
use wsksend_ffi::WSK_FLAG_NODELAY;
use wsksend_ffi::status::{
    STATUS_BUFFER_TOO_SMALL, STATUS_CANCELLED, STATUS_CONNECTION_REFUSED, STATUS_CONNECTION_RESET,
    STATUS_DEVICE_NOT_READY, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_CONNECTION,
    STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_HANDLE, STATUS_INVALID_PARAMETER,
    STATUS_NOT_SUPPORTED, STATUS_REVISION_MISMATCH, STATUS_SUCCESS, STATUS_UNSUCCESSFUL,
};
use wsksend_ffi::{
    FALSE, IoAllocateMdl, IoFreeMdl, IoReadAccess, MDL, MmBuildMdlForNonPagedPool,
    MmProbeAndLockPages, MmUnlockPages, NTSTATUS, UserMode,
};
// Links the model's definitions of the kernel and WSK routines the engine imports.
use wsksend_kernel_model as _;
use wsksend_kernel_model::{Fault, Op, SendMode, Sink, session};
use wsksend_protocol::{
    CONNECT_NODELAY, ConnectReply, ConnectRequest, HandleRequest, IOCTL_WSKSEND_ABORT,
    IOCTL_WSKSEND_CLOSE, IOCTL_WSKSEND_CONNECT, IOCTL_WSKSEND_GET_VERSION, IOCTL_WSKSEND_SEND,
    IOCTL_WSKSEND_STATS, MAX_PENDING_PER_HANDLE, MAX_SEGMENTS, MSG_DONTROUTE, MSG_OOB, MSG_PARTIAL,
    SEND_NODELAY, SendRequest, Stats, VersionInfo, WireSegment, ctl_code,
};

/// Bound of every wait for something that should happen.
const WAIT: Duration = Duration::from_secs(5);
/// Two files (user-mode handles) of the device.
const FILE_A: FileId = FileId(0xA000);
const FILE_B: FileId = FileId(0xB000);
/// What system buffers are filled with before a request, to see what it wrote.
const FILL: u8 = 0xA5;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// --- the front end's token ---

/// What happened to one request's token.
#[derive(Default)]
struct Trace {
    /// Every `arm` call.
    arms: Vec<(FileId, RequestId)>,
    /// Whether an `arm` returned true (the dispatcher then owns the completion).
    armed: bool,
    /// Every `complete` call, with its place in the global completion order.
    completions: Vec<(Outcome, usize)>,
    /// `complete` ran on a token that was never armed.
    completed_unarmed: bool,
    /// An armed token was dropped without being completed.
    dropped_armed: bool,
}

/// The test's view of one request's token, shared with the token.
#[derive(Default)]
struct Probe {
    trace: Mutex<Trace>,
    changed: Condvar,
}

/// Global completion order, to check that sends complete in the order they were made.
static COMPLETION_SEQ: AtomicUsize = AtomicUsize::new(0);
/// Every probe of the running test (tests that use the model are serialised by
/// `session()`), checked when the driver stops.
static PROBES: Mutex<Vec<Arc<Probe>>> = Mutex::new(Vec::new());

impl Probe {
    fn trace(&self) -> MutexGuard<'_, Trace> {
        lock(&self.trace)
    }

    /// The `(file, id)` of the (last) `arm` call.
    fn armed(&self) -> Option<(FileId, RequestId)> {
        self.trace().arms.last().copied()
    }

    /// The outcome, if the token was completed.
    fn completed(&self) -> Option<Outcome> {
        let t = self.trace();
        assert!(t.completions.len() <= 1, "token completed more than once");
        t.completions.first().map(|c| c.0)
    }

    /// The global completion sequence number of the token.
    fn completion_seq(&self) -> Option<usize> {
        self.trace().completions.first().map(|c| c.1)
    }

    /// Waits (bounded) for the completion and returns its outcome.
    fn wait(&self, timeout: Duration) -> Option<Outcome> {
        let deadline = Instant::now() + timeout;
        let mut t = self.trace();
        while t.completions.is_empty() && !t.dropped_armed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            t = self
                .changed
                .wait_timeout(t, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        assert!(!t.dropped_armed, "armed token dropped without completion");
        assert_eq!(t.completions.len(), 1, "token completed more than once");
        Some(t.completions[0].0)
    }

    /// Neither armed nor completed by the dispatcher.
    fn assert_untouched(&self) {
        let t = self.trace();
        assert!(t.arms.is_empty(), "bad input armed the token");
        assert!(t.completions.is_empty(), "bad input completed the token");
    }

    /// End-of-test invariant: an armed token was completed exactly once; any other was
    /// never completed by the dispatcher.
    fn assert_settled(&self) {
        let t = self.trace();
        assert!(!t.completed_unarmed, "token completed without being armed");
        assert!(!t.dropped_armed, "armed token dropped without completion");
        let expected = usize::from(t.armed);
        assert_eq!(
            t.completions.len(),
            expected,
            "token armed: {}, completions: {:?}",
            t.armed,
            t.completions
        );
    }
}

type ArmHook = Box<dyn FnOnce(FileId, RequestId) + Send>;

/// A front end's token that records `arm` and `complete` in its [`Probe`].
struct TestToken {
    probe: Arc<Probe>,
    /// `arm` reports the request as already cancelled.
    already_cancelled: bool,
    /// Runs inside a successful `arm` (a cancel racing the hand-over).
    on_arm: Option<ArmHook>,
    armed: bool,
    completed: bool,
}

impl TestToken {
    fn with(already_cancelled: bool, on_arm: Option<ArmHook>) -> (Self, Arc<Probe>) {
        let probe = Arc::new(Probe::default());
        lock(&PROBES).push(Arc::clone(&probe));
        let token = Self {
            probe: Arc::clone(&probe),
            already_cancelled,
            on_arm,
            armed: false,
            completed: false,
        };
        (token, probe)
    }

    fn new() -> (Self, Arc<Probe>) {
        Self::with(false, None)
    }
}

impl PendingIo for TestToken {
    fn arm(&mut self, file: FileId, id: RequestId) -> bool {
        self.probe.trace().arms.push((file, id));
        if self.already_cancelled {
            return false;
        }
        self.armed = true;
        self.probe.trace().armed = true;
        if let Some(hook) = self.on_arm.take() {
            hook(file, id);
        }
        true
    }

    fn complete(mut self, outcome: Outcome) {
        self.completed = true;
        let seq = COMPLETION_SEQ.fetch_add(1, Ordering::SeqCst);
        {
            let mut t = self.probe.trace();
            t.completed_unarmed |= !self.armed;
            t.completions.push((outcome, seq));
        }
        self.probe.changed.notify_all();
    }
}

impl Drop for TestToken {
    fn drop(&mut self) {
        if self.armed && !self.completed {
            self.probe.trace().dropped_armed = true;
            self.probe.changed.notify_all();
        }
    }
}

// --- the driver ---

/// The engine started and a dispatcher for the test; stops both if the test panics.
struct Driver {
    d: &'static Dispatcher<TestToken>,
    running: bool,
}

impl Driver {
    fn start(carve: Carve) -> Self {
        lock(&PROBES).clear();
        // SAFETY: the model's device object lives for the whole process.
        unsafe { wsksend_engine::global::start(wsksend_kernel_model::device()) }
            .expect("global::start");
        let d = Box::leak(Box::new(Dispatcher::new(Config {
            carve,
            // Connections whose sends the provider parks for ever reset soon.
            linger: Duration::from_millis(200),
        })));
        Self { d, running: true }
    }

    /// Unload: `shutdown` then `global::stop`; then every token must be settled.
    fn stop(mut self) {
        self.running = false;
        self.d.shutdown();
        wsksend_engine::global::stop().expect("global::stop");
        assert_eq!(self.d.connection_count(), 0);
        for probe in lock(&PROBES).drain(..) {
            probe.assert_settled();
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if self.running {
            self.d.shutdown();
            let _ = wsksend_engine::global::stop();
        }
    }
}

// --- requests ---

/// A METHOD_BUFFERED request that completed at once.
struct Buffered {
    outcome: Outcome,
    /// The system buffer afterwards.
    system: Vec<u8>,
}

fn buffered(
    d: &'static Dispatcher<TestToken>,
    file: FileId,
    code: u32,
    input: &[u8],
    output_len: usize,
) -> Buffered {
    let mut system = vec![FILL; input.len().max(output_len)];
    system[..input.len()].copy_from_slice(input);
    let (token, probe) = TestToken::new();
    let disposition = d.device_control(Request {
        file,
        code,
        system: &mut system,
        input_len: input.len(),
        output_len,
        direct: None,
        pending: token,
    });
    let Disposition::Complete(outcome, _token) = disposition else {
        panic!("buffered IOCTL {code:#x} went pending");
    };
    probe.assert_untouched();
    Buffered { outcome, system }
}

fn connect_input(remote: SocketAddr, flags: u32, max_posted: u32) -> Vec<u8> {
    let mut input = vec![0; ConnectRequest::WIRE_SIZE];
    ConnectRequest {
        remote,
        flags,
        timeout_ms: 0,
        max_posted,
    }
    .emit(&mut input)
    .expect("emit ConnectRequest");
    input
}

fn try_connect(
    d: &'static Dispatcher<TestToken>,
    file: FileId,
    remote: SocketAddr,
    flags: u32,
    max_posted: u32,
) -> Buffered {
    buffered(
        d,
        file,
        IOCTL_WSKSEND_CONNECT,
        &connect_input(remote, flags, max_posted),
        ConnectReply::WIRE_SIZE,
    )
}

/// CONNECT that must succeed; returns the handle.
fn connect_with(
    d: &'static Dispatcher<TestToken>,
    file: FileId,
    remote: SocketAddr,
    flags: u32,
    max_posted: u32,
) -> u64 {
    let r = try_connect(d, file, remote, flags, max_posted);
    assert_eq!(r.outcome, Outcome::ok(ConnectReply::WIRE_SIZE));
    let handle = ConnectReply::parse(&r.system).expect("ConnectReply").handle;
    assert_ne!(handle, 0);
    handle
}

fn connect(d: &'static Dispatcher<TestToken>, file: FileId, sink: &Sink) -> u64 {
    connect_with(d, file, sink.addr(), 0, 0)
}

fn handle_input(handle: u64) -> Vec<u8> {
    let mut input = vec![0; HandleRequest::WIRE_SIZE];
    HandleRequest { handle }
        .emit(&mut input)
        .expect("emit HandleRequest");
    input
}

fn close(d: &'static Dispatcher<TestToken>, file: FileId, handle: u64) -> Outcome {
    buffered(d, file, IOCTL_WSKSEND_CLOSE, &handle_input(handle), 0).outcome
}

/// STATS that must succeed (handle 0: the whole driver).
fn stats(d: &'static Dispatcher<TestToken>, file: FileId, handle: u64) -> Stats {
    let r = buffered(
        d,
        file,
        IOCTL_WSKSEND_STATS,
        &handle_input(handle),
        Stats::WIRE_SIZE,
    );
    assert_eq!(r.outcome, Outcome::ok(Stats::WIRE_SIZE));
    Stats::parse(&r.system).expect("Stats")
}

/// A test buffer described by a locked MDL, as the I/O manager describes the second
/// buffer of a `METHOD_IN_DIRECT` request. Dropping it frees the MDL: only once the
/// request using it has completed.
struct Payload {
    data: Vec<u8>,
    mdl: NonNull<MDL>,
    /// Locked with `MmProbeAndLockPages` (unlocked before it is freed).
    probed: bool,
}

impl Payload {
    /// A buffer the I/O manager copied into kernel memory (Wine's IOCTL path):
    /// `MmBuildMdlForNonPagedPool` locks it and sets `MappedSystemVa` with
    /// `MDL_SOURCE_IS_NONPAGED_POOL`, which `Carve::SystemVa` needs.
    fn new(data: Vec<u8>) -> Self {
        let payload = Self::unlocked(data);
        // SAFETY: the MDL is live and describes `data`, whose heap block stays put
        // (and, in the model, counts as nonpaged) until this payload is dropped.
        unsafe { MmBuildMdlForNonPagedPool(payload.mdl.as_ptr()) };
        payload
    }

    /// User pages the I/O manager probed and locked (Windows' `METHOD_IN_DIRECT`):
    /// locked, but not mapped to a system address.
    fn probed(data: Vec<u8>) -> Self {
        let mut payload = Self::unlocked(data);
        // SAFETY: the MDL is live, unlocked and describes `data` (the model never
        // raises).
        unsafe { MmProbeAndLockPages(payload.mdl.as_ptr(), UserMode, IoReadAccess) };
        payload.probed = true;
        payload
    }

    fn unlocked(mut data: Vec<u8>) -> Self {
        let len = u32::try_from(data.len()).expect("payload length");
        let va = data.as_mut_ptr().cast();
        // SAFETY: describing memory has no preconditions; no IRP is given.
        let mdl = unsafe { IoAllocateMdl(va, len, FALSE, FALSE, ptr::null_mut()) };
        let mdl = NonNull::new(mdl).expect("IoAllocateMdl");
        Self {
            data,
            mdl,
            probed: false,
        }
    }

    fn pattern(len: usize, seed: u8) -> Self {
        Self::new(pattern(len, seed))
    }

    fn direct(&self) -> DirectBuffer {
        DirectBuffer {
            mdl: self.mdl,
            len: self.data.len(),
        }
    }

    /// The bytes `segments` select, in order.
    fn gather(&self, segments: &[WireSegment]) -> Vec<u8> {
        segments
            .iter()
            .flat_map(|s| &self.data[s.offset as usize..(s.offset + s.len) as usize])
            .copied()
            .collect()
    }

    /// The whole buffer as one segment.
    fn whole(&self) -> [WireSegment; 1] {
        [seg(0, self.data.len())]
    }
}

impl Drop for Payload {
    fn drop(&mut self) {
        if self.probed {
            // SAFETY: locked by `probed`; tests drop a payload only after the request
            // that used it completed, which the model checks.
            unsafe { MmUnlockPages(self.mdl.as_ptr()) };
        }
        // SAFETY: the MDL came from IoAllocateMdl, is ours and unlocked if it was
        // probed; not in flight (as above).
        unsafe { IoFreeMdl(self.mdl.as_ptr()) };
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            // CAST: truncation is the point: a byte pattern with a long period.
            let x =
                (i as u32).wrapping_mul(0x9E37_79B1) ^ u32::from(seed).wrapping_mul(0x85EB_CA6B);
            (x >> 24) as u8
        })
        .collect()
}

fn seg(offset: usize, len: usize) -> WireSegment {
    WireSegment {
        offset: u32::try_from(offset).expect("offset"),
        len: u32::try_from(len).expect("len"),
    }
}

fn send_input(handle: u64, flags: u32, segments: &[WireSegment]) -> Vec<u8> {
    let mut input = vec![0; SendRequest::HEADER_SIZE + segments.len() * SendRequest::SEGMENT_SIZE];
    SendRequest::emit(&mut input, handle, flags, segments).expect("emit SendRequest");
    input
}

/// How `device_control` answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    Complete(Outcome),
    Pending,
}

/// A SEND as the front end saw it.
struct Call {
    reply: Reply,
    probe: Arc<Probe>,
}

impl Call {
    /// The request was refused at once, without its token being armed or completed;
    /// returns the status.
    fn refused(&self) -> NTSTATUS {
        let Reply::Complete(outcome) = self.reply else {
            panic!("expected Disposition::Complete, got Pending");
        };
        self.probe.assert_untouched();
        assert_eq!(outcome.information, 0);
        outcome.status
    }

    /// The request went pending; waits (bounded) for its completion.
    fn outcome(&self) -> Outcome {
        assert_eq!(self.reply, Reply::Pending);
        self.probe
            .wait(WAIT)
            .expect("no completion within the deadline")
    }

    /// The `(file, id)` the token was armed with.
    fn id(&self) -> (FileId, RequestId) {
        self.probe.armed().expect("token not armed")
    }

    fn is_done(&self) -> bool {
        self.probe.completed().is_some()
    }
}

fn send_raw(
    d: &'static Dispatcher<TestToken>,
    file: FileId,
    input: &[u8],
    direct: Option<DirectBuffer>,
    token: (TestToken, Arc<Probe>),
) -> Call {
    let (token, probe) = token;
    let mut system = input.to_vec();
    let disposition = d.device_control(Request {
        file,
        code: IOCTL_WSKSEND_SEND,
        system: &mut system,
        input_len: input.len(),
        output_len: 0,
        direct,
        pending: token,
    });
    let reply = match disposition {
        Disposition::Complete(outcome, _token) => Reply::Complete(outcome),
        Disposition::Pending => Reply::Pending,
    };
    Call { reply, probe }
}

fn send(
    d: &'static Dispatcher<TestToken>,
    file: FileId,
    handle: u64,
    flags: u32,
    segments: &[WireSegment],
    payload: &Payload,
) -> Call {
    send_raw(
        d,
        file,
        &send_input(handle, flags, segments),
        Some(payload.direct()),
        TestToken::new(),
    )
}

/// Sends all of `payload` and expects success.
fn send_all(d: &'static Dispatcher<TestToken>, file: FileId, handle: u64, payload: &Payload) {
    let call = send(d, file, handle, 0, &payload.whole(), payload);
    assert_eq!(call.outcome(), Outcome::ok(payload.data.len()));
}

fn assert_received(sink: &Sink, i: usize, expected: &[u8]) {
    assert!(
        sink.wait_bytes(i, expected.len(), WAIT),
        "sink connection {i}: {} of {} bytes",
        sink.received(i).len(),
        expected.len()
    );
    let got = sink.received(i);
    assert_eq!(got.len(), expected.len(), "sink connection {i}: length");
    assert!(got == expected, "sink connection {i}: bytes differ");
}

fn cancelled() -> Outcome {
    Outcome::fail(STATUS_CANCELLED)
}

// --- GET_VERSION and unknown codes ---

#[test]
fn get_version_reports_the_current_version() {
    let s = session();
    let drv = Driver::start(Carve::SystemVa);
    let d = drv.d;
    let r = buffered(d, FILE_A, IOCTL_WSKSEND_GET_VERSION, &[], 32);
    assert_eq!(r.outcome, Outcome::ok(VersionInfo::WIRE_SIZE));
    assert_eq!(VersionInfo::parse(&r.system), Ok(VersionInfo::current()));
    assert_eq!(&r.system[VersionInfo::WIRE_SIZE..], &[FILL; 16]);
    drv.stop();
    s.finish();
}

#[test]
fn get_version_with_a_short_output_buffer_writes_nothing() {
    let s = session();
    let drv = Driver::start(Carve::SystemVa);
    let d = drv.d;
    for len in [0, 1, VersionInfo::WIRE_SIZE - 1] {
        let r = buffered(d, FILE_A, IOCTL_WSKSEND_GET_VERSION, &[], len);
        assert_eq!(r.outcome, Outcome::fail(STATUS_BUFFER_TOO_SMALL), "{len}");
        assert!(
            r.system.iter().all(|&b| b == FILL),
            "wrote into {len} bytes"
        );
    }
    drv.stop();
    s.finish();
}

#[test]
fn unknown_code_is_an_invalid_device_request() {
    let s = session();
    let drv = Driver::start(Carve::SystemVa);
    let d = drv.d;
    let codes = [
        ctl_code(0x8A57, 0x805, 0, 0),
        ctl_code(0x8A57, 0x800, 3, 0),
        ctl_code(0x22, 0x800, 0, 0),
        0,
    ];
    for code in codes {
        let r = buffered(d, FILE_A, code, &[1, 2, 3, 4], 16);
        assert_eq!(r.outcome, Outcome::fail(STATUS_INVALID_DEVICE_REQUEST));
        assert_eq!(&r.system[4..], &[FILL; 12]);
    }
    drv.stop();
    s.finish();
}

// --- CONNECT and SEND ---

#[test]
fn connect_v4_and_v6_and_send_on_both() {
    let s = session();
    let drv = Driver::start(Carve::SystemVa);
    let d = drv.d;
    let (v4, v6) = (Sink::v4(), Sink::v6());
    let h4 = connect(d, FILE_A, &v4);
    let h6 = connect(d, FILE_A, &v6);
    assert_ne!(h4, h6);
    assert_eq!(d.connection_count(), 2);
    assert!(v4.wait_connections(1, WAIT) && v6.wait_connections(1, WAIT));
    let (p4, p6) = (Payload::pattern(3000, 4), Payload::pattern(5000, 6));
    send_all(d, FILE_A, h4, &p4);
    send_all(d, FILE_A, h6, &p6);
    assert_received(&v4, 0, &p4.data);
    assert_received(&v6, 0, &p6.data);
    drv.stop();
    drop((p4, p6));
    s.finish();
}

#[test]
fn single_segment_send_is_zero_copy_from_the_master_mdl() {
    for carve in [Carve::SystemVa, Carve::PartialMdl] {
        let s = session();
        let drv = Driver::start(carve);
        let d = drv.d;
        let sink = Sink::v4();
        let h = connect(d, FILE_A, &sink);
        let payload = Payload::pattern(10_000, 1);
        let segments = [seg(1234, 5000)];
        let call = send(d, FILE_A, h, 0, &segments, &payload);
        assert_eq!(call.outcome(), Outcome::ok(5000));
        let sends = s.sends();
        assert_eq!(sends.len(), 1);
        assert_eq!(sends[0].mdl_count, 1, "a copy or a new MDL was made");
        assert_eq!(sends[0].offset, 1234);
        assert_eq!(sends[0].length, 5000);
        assert_eq!(sends[0].flags, 0);
        assert_received(&sink, 0, &payload.gather(&segments));
        drv.stop();
        drop(payload);
        s.finish();
    }
}

fn multi_segment_send(carve: Carve) {
    let s = session();
    let drv = Driver::start(carve);
    let d = drv.d;
    let sink = Sink::v4();
    let h = connect(d, FILE_A, &sink);
    let payload = Payload::pattern(40_000, 2);
    // Out of order, adjacent, overlapping, across page boundaries, up to the last byte.
    let segments = [
        seg(5000, 3000),
        seg(0, 100),
        seg(100, 1),
        seg(50, 200),
        seg(8191, 4097),
        seg(28_000, 12_000),
    ];
    let call = send(d, FILE_A, h, 0, &segments, &payload);
    let total: usize = segments.iter().map(|s| s.len as usize).sum();
    assert_eq!(call.outcome(), Outcome::ok(total));
    // The most segments a request may have, one byte each.
    let many: Vec<WireSegment> = (0..MAX_SEGMENTS).map(|i| seg(i * 577, 1)).collect();
    let call = send(d, FILE_A, h, 0, &many, &payload);
    assert_eq!(call.outcome(), Outcome::ok(MAX_SEGMENTS));
    let sends = s.sends();
    assert_eq!(sends.len(), 2);
    assert_eq!(
        (sends[0].mdl_count, sends[0].offset, sends[0].length),
        (segments.len(), 0, total)
    );
    assert_eq!(
        (sends[1].mdl_count, sends[1].offset, sends[1].length),
        (MAX_SEGMENTS, 0, MAX_SEGMENTS)
    );
    let expected = [payload.gather(&segments), payload.gather(&many)].concat();
    assert_received(&sink, 0, &expected);
    drv.stop();
    drop(payload);
    s.finish();
}

#[test]
fn multi_segment_send_with_a_system_va_chain_is_byte_exact() {
    multi_segment_send(Carve::SystemVa);
}

#[test]
fn multi_segment_send_with_a_partial_mdl_chain_is_byte_exact() {
    multi_segment_send(Carve::PartialMdl);
}

/// Real user pages have no system mapping: the partial-MDL carve (Windows) sends from
/// them, the system-address carve (Wine's kernel copies) must refuse them, and a single
/// segment needs no carving at all.
#[test]
fn each_carve_handles_a_probed_user_buffer_as_documented() {
    for carve in [Carve::PartialMdl, Carve::SystemVa] {
        let s = session();
        let drv = Driver::start(carve);
        let d = drv.d;
        let sink = Sink::v4();
        let h = connect(d, FILE_A, &sink);
        let payload = Payload::probed(pattern(9000, 22));
        let two = [seg(4000, 5000), seg(0, 10)];
        let call = send(d, FILE_A, h, 0, &two, &payload);
        let one = [seg(100, 8000)];
        let single = send(d, FILE_A, h, 0, &one, &payload);
        assert_eq!(single.outcome(), Outcome::ok(8000), "{carve:?}");
        let mut expected = Vec::new();
        if carve == Carve::PartialMdl {
            assert_eq!(call.outcome(), Outcome::ok(5010));
            expected.extend(payload.gather(&two));
            assert_eq!(s.sends()[0].mdl_count, 2);
        } else {
            // Refused by the engine after the token was armed: completed, not sent.
            assert_eq!(call.outcome(), Outcome::fail(STATUS_INVALID_PARAMETER));
        }
        expected.extend(payload.gather(&one));
        assert_received(&sink, 0, &expected);
        assert_eq!(s.sends().last().map(|r| r.mdl_count), Some(1));
        drv.stop();
        drop(payload);
        s.finish();
    }
}

#[test]
fn send_nodelay_reaches_wsk_as_wsk_flag_nodelay() {
    let s = session();
    s.require_send_flags(WSK_FLAG_NODELAY);
    let drv = Driver::start(Carve::PartialMdl);
    let d = drv.d;
    let sink = Sink::v4();
    let h = connect(d, FILE_A, &sink);
    let payload = Payload::pattern(2000, 3);
    let one = [seg(10, 100)];
    let two = [seg(500, 100), seg(0, 50)];
    let first = send(d, FILE_A, h, SEND_NODELAY, &one, &payload);
    assert_eq!(first.outcome(), Outcome::ok(100));
    let second = send(d, FILE_A, h, SEND_NODELAY, &two, &payload);
    assert_eq!(second.outcome(), Outcome::ok(150));
    assert!(s.sends().iter().all(|r| r.flags & WSK_FLAG_NODELAY != 0));
    assert_received(
        &sink,
        0,
        &[payload.gather(&one), payload.gather(&two)].concat(),
    );
    drv.stop();
    drop(payload);
    s.finish();
}

#[test]
fn connect_nodelay_applies_to_every_send() {
    let s = session();
    s.require_send_flags(WSK_FLAG_NODELAY);
    let drv = Driver::start(Carve::SystemVa);
    let d = drv.d;
    let sink = Sink::v4();
    let h = connect_with(d, FILE_A, sink.addr(), CONNECT_NODELAY, 0);
    let payload = Payload::pattern(4000, 5);
    let call = send(d, FILE_A, h, 0, &[seg(0, 1000), seg(3000, 1000)], &payload);
    assert_eq!(call.outcome(), Outcome::ok(2000));
    send_all(d, FILE_A, h, &payload);
    let sends = s.sends();
    assert_eq!(sends.len(), 2);
    assert!(sends.iter().all(|r| r.flags & WSK_FLAG_NODELAY != 0));
    drv.stop();
    drop(payload);
    s.finish();
}

#[test]
fn many_pending_sends_complete_in_order() {
    let s = session();
    s.set_send_mode(SendMode::Pended);
    let drv = Driver::start(Carve::SystemVa);
    let d = drv.d;
    let sink = Sink::v4();
    let h = connect(d, FILE_A, &sink);
    let payloads: Vec<Payload> = (0..100u8)
        .map(|i| Payload::pattern(1000 + 37 * usize::from(i), i))
        .collect();
    let calls: Vec<Call> = payloads
        .iter()
        .map(|p| send(d, FILE_A, h, 0, &p.whole(), p))
        .collect();
    for (call, payload) in calls.iter().zip(&payloads) {
        assert_eq!(call.outcome(), Outcome::ok(payload.data.len()));
    }
    let order: Vec<usize> = calls
        .iter()
        .map(|c| c.probe.completion_seq().expect("completed"))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "out of order");
    let expected: Vec<u8> = payloads.iter().flat_map(|p| p.data.clone()).collect();
    assert_received(&sink, 0, &expected);
    let st = stats(d, FILE_A, h);
    assert_eq!((st.sends, st.errors, st.in_flight), (100, 0, 0));
    assert_eq!(st.bytes, expected.len() as u64);
    drv.stop();
    drop(payloads);
    s.finish();
}

#[test]
fn concurrent_senders_on_one_connection_keep_their_own_order() {
    const THREADS: u32 = 4;
    const SENDS: u32 = 25;
    fn chunk(thread: u32, seq: u32) -> Vec<u8> {
        let body = pattern(300 + 10 * seq as usize, (thread * 31 + seq) as u8);
        [&thread.to_le_bytes()[..], &seq.to_le_bytes(), &body].concat()
    }
    let s = session();
    s.set_send_mode(SendMode::Pended);
    let drv = Driver::start(Carve::PartialMdl);
    let d = drv.d;
    let sink = Sink::v4();
    let h = connect(d, FILE_A, &sink);
    thread::scope(|scope| {
        for t in 0..THREADS {
            scope.spawn(move || {
                let payloads: Vec<Payload> =
                    (0..SENDS).map(|i| Payload::new(chunk(t, i))).collect();
                // Two segments each: the header, then the body.
                let calls: Vec<Call> = payloads
                    .iter()
                    .map(|p| send(d, FILE_A, h, 0, &[seg(0, 8), seg(8, p.data.len() - 8)], p))
                    .collect();
                for (call, p) in calls.iter().zip(&payloads) {
                    assert_eq!(call.outcome(), Outcome::ok(p.data.len()));
                }
            });
        }
    });
    let total: usize = (0..THREADS)
        .flat_map(|t| (0..SENDS).map(move |i| chunk(t, i).len()))
        .sum();
    assert!(sink.wait_bytes(0, total, WAIT));
    let got = sink.received(0);
    assert_eq!(got.len(), total);
    let mut next = [0u32; THREADS as usize];
    let mut at = 0;
    while at < got.len() {
        let t = u32::from_le_bytes(got[at..at + 4].try_into().expect("4 bytes"));
        let seq = u32::from_le_bytes(got[at + 4..at + 8].try_into().expect("4 bytes"));
        assert!(t < THREADS, "garbled chunk header at {at}");
        assert_eq!(seq, next[t as usize], "thread {t} out of order");
        next[t as usize] += 1;
        let expected = chunk(t, seq);
        assert!(
            got[at..at + expected.len()] == expected,
            "chunk {t}/{seq} differs"
        );
        at += expected.len();
    }
    assert_eq!(next, [SENDS; THREADS as usize]);
    drv.stop();
    s.finish();
}

// --- bad input ---

#[test]
fn bad_send_requests_fail_and_change_nothing() {
    let s = session();
    let drv = Driver::start(Carve::SystemVa);
    let d = drv.d;
    let sink = Sink::v4();
    let a = connect(d, FILE_A, &sink);
    let b = connect(d, FILE_B, &sink);
    let payload = Payload::pattern(100, 7);
    let ok = send_input(a, 0, &[seg(0, 100)]);
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut input = ok.clone();
        f(&mut input);
        input
    };
    let too_many: Vec<WireSegment> = (0..=MAX_SEGMENTS).map(|i| seg(i, 1)).collect();
    let direct = Some(payload.direct());
    let cases: Vec<(&str, Vec<u8>, Option<DirectBuffer>, NTSTATUS)> = vec![
        (
            "unknown handle",
            send_input(0xDEAD_BEEF, 0, &[seg(0, 1)]),
            direct,
            STATUS_INVALID_HANDLE,
        ),
        (
            "handle 0",
            send_input(0, 0, &[seg(0, 1)]),
            direct,
            STATUS_INVALID_HANDLE,
        ),
        (
            "other file's handle",
            send_input(b, 0, &[seg(0, 1)]),
            direct,
            STATUS_INVALID_HANDLE,
        ),
        (
            "zero segments",
            send_input(a, 0, &[]),
            direct,
            STATUS_INVALID_PARAMETER,
        ),
        (
            "empty segment",
            send_input(a, 0, &[seg(0, 0)]),
            direct,
            STATUS_INVALID_PARAMETER,
        ),
        (
            "segment outside payload",
            send_input(a, 0, &[seg(0, 10), seg(50, 51)]),
            direct,
            STATUS_INVALID_PARAMETER,
        ),
        (
            "offset + len overflow",
            send_input(
                a,
                0,
                &[WireSegment {
                    offset: u32::MAX,
                    len: 2,
                }],
            ),
            direct,
            STATUS_INVALID_PARAMETER,
        ),
        (
            "too many segments",
            send_input(a, 0, &too_many),
            direct,
            STATUS_INVALID_PARAMETER,
        ),
        (
            "no direct buffer",
            ok.clone(),
            None,
            STATUS_INVALID_PARAMETER,
        ),
        (
            "empty direct buffer",
            ok.clone(),
            Some(DirectBuffer {
                mdl: payload.mdl,
                len: 0,
            }),
            STATUS_INVALID_PARAMETER,
        ),
        (
            "unknown flag",
            send_input(a, 0x100, &[seg(0, 1)]),
            direct,
            STATUS_INVALID_PARAMETER,
        ),
        (
            "short header",
            ok[..SendRequest::HEADER_SIZE - 1].to_vec(),
            direct,
            STATUS_BUFFER_TOO_SMALL,
        ),
        ("no input", Vec::new(), direct, STATUS_BUFFER_TOO_SMALL),
        (
            "short segment table",
            ok[..ok.len() - 1].to_vec(),
            direct,
            STATUS_BUFFER_TOO_SMALL,
        ),
        (
            "wrong version",
            with(&|i| i[4] = 2),
            direct,
            STATUS_REVISION_MISMATCH,
        ),
        (
            "wrong header size",
            with(&|i| i[0] = 32),
            direct,
            STATUS_REVISION_MISMATCH,
        ),
        (
            "MSG_OOB",
            send_input(a, MSG_OOB, &[seg(0, 1)]),
            direct,
            STATUS_NOT_SUPPORTED,
        ),
        (
            "MSG_PARTIAL",
            send_input(a, MSG_PARTIAL, &[seg(0, 1)]),
            direct,
            STATUS_NOT_SUPPORTED,
        ),
        (
            "MSG_DONTROUTE",
            send_input(a, MSG_DONTROUTE | SEND_NODELAY, &[seg(0, 1)]),
            direct,
            STATUS_NOT_SUPPORTED,
        ),
    ];
    let before = stats(d, FILE_A, 0);
    for (name, input, direct, status) in cases {
        let call = send_raw(d, FILE_A, &input, direct, TestToken::new());
        assert_eq!(call.refused(), status, "{name}");
        assert!(s.sends().is_empty(), "{name}: reached the provider");
        assert_eq!(stats(d, FILE_A, 0), before, "{name}: counters changed");
    }
    assert_eq!(d.connection_count(), 2);
    // The connection is unharmed.
    send_all(d, FILE_A, a, &payload);
    assert_received(&sink, 0, &payload.data);
    drv.stop();
    drop(payload);
    s.finish();
}

#[test]
fn bad_connect_close_and_stats_requests_fail_and_change_nothing() {
    let s = session();
    let drv = Driver::start(Carve::SystemVa);
    let d = drv.d;
    let sink = Sink::v4();
    let a = connect(d, FILE_A, &sink);
    let b = connect(d, FILE_B, &sink);
    let sockets = s.open_sockets();
    let good = connect_input(sink.addr(), 0, 0);
    let with = |at: usize, value: u8| {
        let mut input = good.clone();
        input[at] = value;
        input
    };
    let reply = ConnectReply::WIRE_SIZE;
    let connects: Vec<(&str, Vec<u8>, usize, NTSTATUS)> = vec![
        (
            "short input",
            good[..47].to_vec(),
            reply,
            STATUS_BUFFER_TOO_SMALL,
        ),
        ("no input", Vec::new(), reply, STATUS_BUFFER_TOO_SMALL),
        ("wrong version", with(4, 2), reply, STATUS_REVISION_MISMATCH),
        ("wrong size", with(0, 40), reply, STATUS_REVISION_MISMATCH),
        (
            "unknown family",
            with(8, 7),
            reply,
            STATUS_INVALID_PARAMETER,
        ),
        ("unknown flag", with(12, 2), reply, STATUS_INVALID_PARAMETER),
        (
            "max_posted over 64",
            with(40, 65),
            reply,
            STATUS_INVALID_PARAMETER,
        ),
        ("reserved set", with(44, 1), reply, STATUS_INVALID_PARAMETER),
        (
            "short output",
            good.clone(),
            reply - 1,
            STATUS_BUFFER_TOO_SMALL,
        ),
        ("no output", good.clone(), 0, STATUS_BUFFER_TOO_SMALL),
    ];
    for (name, input, output_len, status) in connects {
        let r = buffered(d, FILE_A, IOCTL_WSKSEND_CONNECT, &input, output_len);
        assert_eq!(r.outcome, Outcome::fail(status), "CONNECT {name}");
        let mut untouched = vec![FILL; input.len().max(output_len)];
        untouched[..input.len()].copy_from_slice(&input);
        assert_eq!(r.system, untouched, "CONNECT {name} wrote output");
        assert_eq!(s.open_sockets(), sockets, "CONNECT {name} opened a socket");
    }
    let short = handle_input(a)[..15].to_vec();
    let mut bad_version = handle_input(a);
    bad_version[4] = 9;
    let handles: Vec<(&str, Vec<u8>, NTSTATUS)> = vec![
        (
            "unknown handle",
            handle_input(0xDEAD_BEEF),
            STATUS_INVALID_HANDLE,
        ),
        (
            "other file's handle",
            handle_input(b),
            STATUS_INVALID_HANDLE,
        ),
        ("short input", short, STATUS_BUFFER_TOO_SMALL),
        ("wrong version", bad_version, STATUS_REVISION_MISMATCH),
    ];
    for (name, input, status) in &handles {
        let r = buffered(d, FILE_A, IOCTL_WSKSEND_CLOSE, input, 0);
        assert_eq!(r.outcome, Outcome::fail(*status), "CLOSE {name}");
        let r = buffered(d, FILE_A, IOCTL_WSKSEND_STATS, input, Stats::WIRE_SIZE);
        assert_eq!(r.outcome, Outcome::fail(*status), "STATS {name}");
        assert!(
            r.system[input.len()..].iter().all(|&x| x == FILL),
            "STATS {name} wrote"
        );
    }
    for output_len in [0, Stats::WIRE_SIZE - 1] {
        for handle in [0, a] {
            let input = handle_input(handle);
            let r = buffered(d, FILE_A, IOCTL_WSKSEND_STATS, &input, output_len);
            assert_eq!(r.outcome, Outcome::fail(STATUS_BUFFER_TOO_SMALL));
            let mut untouched = vec![FILL; input.len().max(output_len)];
            untouched[..input.len()].copy_from_slice(&input);
            assert_eq!(r.system, untouched, "STATS wrote into a short buffer");
        }
    }
    // Nothing changed: both connections are open and work.
    assert_eq!(d.connection_count(), 2);
    assert_eq!(s.open_sockets(), sockets);
    assert_eq!(stats(d, FILE_A, 0).connections, 2);
    let payload = Payload::pattern(500, 8);
    send_all(d, FILE_A, a, &payload);
    send_all(d, FILE_B, b, &payload);
    drv.stop();
    drop(payload);
    s.finish();
}

#[test]
fn too_many_pending_sends_on_one_file_are_refused() {
    let s = session();
    let drv = Driver::start(Carve::SystemVa);
    let d = drv.d;
    let sink = Sink::v4();
    // One send posted at a time: the first is parked, the rest wait in the engine.
    let a = connect_with(d, FILE_A, sink.addr(), 0, 1);
    let b = connect(d, FILE_B, &sink);
    s.inject(Op::Send, Fault::PendUntilCancelled);
    let payloads: Vec<Payload> = (0..=MAX_PENDING_PER_HANDLE)
        .map(|i| Payload::pattern(16, i as u8))
        .collect();
    let calls: Vec<Call> = payloads[..MAX_PENDING_PER_HANDLE]
        .iter()
        .map(|p| send(d, FILE_A, a, 0, &p.whole(), p))
        .collect();
    assert!(
        calls
            .iter()
            .all(|c| c.reply == Reply::Pending && !c.is_done())
    );
    assert_eq!(s.sends().len(), 1);
    assert_eq!(stats(d, FILE_A, a).in_flight, MAX_PENDING_PER_HANDLE as u64);
    let extra = &payloads[MAX_PENDING_PER_HANDLE];
    let refused = send(d, FILE_A, a, 0, &extra.whole(), extra);
    assert_eq!(refused.refused(), STATUS_INSUFFICIENT_RESOURCES);
    assert_eq!(s.sends().len(), 1);
    assert_eq!(stats(d, FILE_A, a).in_flight, MAX_PENDING_PER_HANDLE as u64);
    // The limit is per file: the other file still sends.
    send_all(d, FILE_B, b, extra);
    // Closing the file completes every pending send as cancelled.
    d.cleanup(FILE_A);
    for call in &calls {
        assert_eq!(call.outcome(), cancelled());
    }
    // And frees the file's quota.
    let a2 = connect(d, FILE_A, &sink);
    send_all(d, FILE_A, a2, extra);
    drv.stop();
    drop(payloads);
    s.finish();
}

// --- provider errors ---

#[test]
fn provider_errors_and_completion_modes_reach_the_request() {
    let s = session();
    let drv = Driver::start(Carve::SystemVa);
    let d = drv.d;
    let sink = Sink::v4();
    let h = connect(d, FILE_A, &sink);
    let p = Payload::pattern(1000, 9);
    let whole = p.whole();
    let mut expected = Vec::new();

    s.inject(Op::Send, Fault::Fail(STATUS_CONNECTION_RESET));
    let call = send(d, FILE_A, h, 0, &whole, &p);
    assert_eq!(call.outcome(), Outcome::fail(STATUS_CONNECTION_RESET));

    s.inject(Op::Send, Fault::RejectFlags(WSK_FLAG_NODELAY));
    let call = send(d, FILE_A, h, SEND_NODELAY, &whole, &p);
    assert_eq!(call.outcome(), Outcome::fail(STATUS_NOT_SUPPORTED));

    // Without the flag the same fault does not apply.
    s.inject(Op::Send, Fault::RejectFlags(WSK_FLAG_NODELAY));
    send_all(d, FILE_A, h, &p);
    expected.extend_from_slice(&p.data);

    // The request reports the bytes the provider reports.
    s.inject(Op::Send, Fault::Partial);
    let call = send(d, FILE_A, h, 0, &whole, &p);
    assert_eq!(call.outcome(), Outcome::ok(500));
    expected.extend_from_slice(&p.data[..500]);

    // A provider that fails the call without completing the IRP (Wine's stubs).
    s.inject(Op::Send, Fault::FailWithoutCompleting(STATUS_UNSUCCESSFUL));
    let call = send(d, FILE_A, h, 0, &whole, &p);
    assert_eq!(call.outcome(), Outcome::fail(STATUS_UNSUCCESSFUL));

    for fault in [
        Fault::CompleteImmediately,
        Fault::CompleteReturnPending,
        Fault::PendThenComplete,
        Fault::Pend(Duration::from_millis(5)),
    ] {
        s.inject(Op::Send, fault);
        let call = send(d, FILE_A, h, 0, &[seg(100, 200), seg(0, 10)], &p);
        assert_eq!(call.outcome(), Outcome::ok(210), "{fault:?}");
        expected.extend_from_slice(&p.data[100..300]);
        expected.extend_from_slice(&p.data[..10]);
    }
    assert_received(&sink, 0, &expected);
    let st = stats(d, FILE_A, h);
    assert_eq!((st.sends, st.errors, st.in_flight), (6, 3, 0));
    assert_eq!(st.bytes, expected.len() as u64);
    drv.stop();
    drop(p);
    s.finish();
}

#[test]
fn connect_failures_reach_the_request() {
    let s = session();
    let drv = Driver::start(Carve::SystemVa);
    let d = drv.d;
    let sink = Sink::v4();
    s.inject(Op::Capture, Fault::Fail(STATUS_DEVICE_NOT_READY));
    let r = try_connect(d, FILE_A, sink.addr(), 0, 0);
    assert_eq!(r.outcome, Outcome::fail(STATUS_DEVICE_NOT_READY));
    s.inject(Op::Connect, Fault::Fail(STATUS_CONNECTION_REFUSED));
    let r = try_connect(d, FILE_A, sink.addr(), 0, 0);
    assert_eq!(r.outcome, Outcome::fail(STATUS_CONNECTION_REFUSED));
    assert_eq!(r.system, connect_input(sink.addr(), 0, 0), "wrote a reply");
    assert_eq!(d.connection_count(), 0);
    assert_eq!(s.open_sockets(), 0);
    // The next attempt captures the provider and connects.
    let h = connect(d, FILE_A, &sink);
    assert_eq!(stats(d, FILE_A, h).connections, 1);
    drv.stop();
    s.finish();
}

// --- cancel ---

#[test]
fn cancel_of_a_send_the_provider_cancels() {
    let s = session();
    let drv = Driver::start(Carve::SystemVa);
    let d = drv.d;
    let sink = Sink::v4();
    let h = connect(d, FILE_A, &sink);
    let p = Payload::pattern(700, 10);
    s.inject(Op::Send, Fault::PendUntilCancelled);
    let call = send(d, FILE_A, h, 0, &p.whole(), &p);
    assert_eq!(call.reply, Reply::Pending);
    assert!(!call.is_done());
    assert_eq!(stats(d, FILE_A, h).in_flight, 1);
    let (file, id) = call.id();
    assert_eq!(file, FILE_A);
    // From a cancel routine: at DISPATCH_LEVEL.
    assert_eq!(s.at_dispatch(|| d.cancel(file, id)), CancelAction::Done);
    assert_eq!(call.outcome(), cancelled());
    // Cancelling again (or a completed request) does nothing.
    assert_eq!(d.cancel(file, id), CancelAction::Done);
    // The connection is still usable.
    send_all(d, FILE_A, h, &p);
    assert_received(&sink, 0, &p.data);
    let st = stats(d, FILE_A, h);
    assert_eq!((st.sends, st.errors, st.in_flight), (1, 1, 0));
    drv.stop();
    drop(p);
    s.finish();
}

#[test]
fn cancel_of_a_send_the_provider_ignores_closes_its_connection() {
    let s = session();
    let drv = Driver::start(Carve::SystemVa);
    let d = drv.d;
    let sink = Sink::v4();
    let h = connect(d, FILE_A, &sink);
    let p = Payload::pattern(700, 11);
    s.inject(Op::Send, Fault::PendIgnoringCancel);
    let call = send(d, FILE_A, h, 0, &p.whole(), &p);
    let (file, id) = call.id();
    assert_eq!(
        s.at_dispatch(|| d.cancel(file, id)),
        CancelAction::RunDeferred
    );
    // The cancel routine itself must not close: the send is still pending.
    assert!(!call.is_done());
    // The front end's work item.
    d.run_deferred();
    assert_eq!(call.outcome(), cancelled());
    assert!(sink.wait_closed(0, WAIT));
    // Later sends on that handle fail: the connection is closed.
    let later = send(d, FILE_A, h, 0, &p.whole(), &p);
    assert_eq!(later.outcome(), Outcome::fail(STATUS_INVALID_CONNECTION));
    assert_eq!(s.sends().len(), 1);
    // A new connection works.
    let h2 = connect(d, FILE_A, &sink);
    assert_ne!(h2, h);
    send_all(d, FILE_A, h2, &p);
    assert_received(&sink, 1, &p.data);
    assert_eq!(close(d, FILE_A, h), Outcome::ok(0));
    drv.stop();
    drop(p);
    s.finish();
}

/// The front end's work item may run after the connection was closed another way
/// (KMDF flushes it after `shutdown` at unload; a file may be cleaned up first).
#[test]
fn run_deferred_after_the_connection_closed_is_harmless() {
    let s = session();
    let drv = Driver::start(Carve::SystemVa);
    let d = drv.d;
    let sink = Sink::v4();
    let a = connect(d, FILE_A, &sink);
    let b = connect(d, FILE_B, &sink);
    let p = Payload::pattern(100, 24);
    s.inject(Op::Send, Fault::PendIgnoringCancel);
    let on_a = send(d, FILE_A, a, 0, &p.whole(), &p);
    s.inject(Op::Send, Fault::PendIgnoringCancel);
    let on_b = send(d, FILE_B, b, 0, &p.whole(), &p);
    let (file, id) = on_a.id();
    assert_eq!(d.cancel(file, id), CancelAction::RunDeferred);
    d.cleanup(FILE_A);
    assert_eq!(on_a.outcome(), cancelled());
    d.run_deferred();
    let (file, id) = on_b.id();
    assert_eq!(d.cancel(file, id), CancelAction::RunDeferred);
    d.shutdown();
    assert_eq!(on_b.outcome(), cancelled());
    d.run_deferred();
    d.run_deferred();
    drv.stop();
    drop(p);
    s.finish();
}

/// A send the provider is still writing (the peer stopped reading) cannot be
/// cancelled: the connection is closed, which completes it and the sends behind it.
#[test]
fn cancel_of_a_send_blocked_on_a_full_socket_closes_its_connection() {
    // More than the loopback socket buffers can take (rmem_max + wmem_max here).
    const BIG: usize = 48 << 20;
    let s = session();
    let drv = Driver::start(Carve::SystemVa);
    let d = drv.d;
    let sink = Sink::v4();
    let h = connect(d, FILE_A, &sink);
    assert!(sink.wait_connections(1, WAIT));
    sink.pause_reading(true);
    // CAST: `i % 251` fits in a byte.
    let big = Payload::new((0..BIG).map(|i| (i % 251) as u8).collect());
    let small = Payload::pattern(100, 23);
    let blocked = send(d, FILE_A, h, 0, &big.whole(), &big);
    let behind = send(d, FILE_A, h, 0, &small.whole(), &small);
    assert!(!blocked.is_done() && !behind.is_done());
    let (file, id) = blocked.id();
    assert_eq!(
        s.at_dispatch(|| d.cancel(file, id)),
        CancelAction::RunDeferred
    );
    d.run_deferred();
    assert_eq!(blocked.outcome(), cancelled());
    assert_eq!(behind.outcome(), cancelled());
    sink.pause_reading(false);
    assert!(sink.wait_closed(0, WAIT));
    let got = sink.received(0);
    assert!(got.len() < BIG, "the whole send went through");
    assert!(got[..] == big.data[..got.len()], "not a prefix of the send");
    let st = stats(d, FILE_A, h);
    assert_eq!((st.sends, st.errors, st.in_flight), (0, 2, 0));
    drv.stop();
    drop((big, small));
    s.finish();
}

#[test]
fn cancel_of_a_queued_send_does_not_touch_the_provider() {
    let s = session();
    let drv = Driver::start(Carve::PartialMdl);
    let d = drv.d;
    let sink = Sink::v4();
    let h = connect_with(d, FILE_A, sink.addr(), 0, 1);
    let (p1, p2, p3) = (
        Payload::pattern(100, 12),
        Payload::pattern(200, 13),
        Payload::pattern(300, 14),
    );
    s.inject(Op::Send, Fault::PendUntilCancelled);
    let first = send(d, FILE_A, h, 0, &p1.whole(), &p1);
    let queued = send(d, FILE_A, h, 0, &[seg(0, 100), seg(150, 50)], &p2);
    assert_eq!(
        s.sends().len(),
        1,
        "max_posted 1: the second send must wait"
    );
    assert_eq!(stats(d, FILE_A, h).in_flight, 2);
    let (file, id) = queued.id();
    assert_eq!(s.at_dispatch(|| d.cancel(file, id)), CancelAction::Done);
    assert_eq!(queued.outcome(), cancelled());
    assert_eq!(
        s.sends().len(),
        1,
        "the cancelled send reached the provider"
    );
    assert!(!first.is_done());
    let (file, id) = first.id();
    assert_eq!(d.cancel(file, id), CancelAction::Done);
    assert_eq!(first.outcome(), cancelled());
    send_all(d, FILE_A, h, &p3);
    assert_eq!(s.sends().len(), 2);
    assert_received(&sink, 0, &p3.data);
    drv.stop();
    drop((p1, p2, p3));
    s.finish();
}

/// A cancel that arrives while the dispatcher is still handing the send to the engine
/// (the cancel routine runs as soon as `arm` sets it).
#[test]
fn cancel_racing_the_hand_over_is_honoured() {
    let s = session();
    let drv = Driver::start(Carve::SystemVa);
    let d = drv.d;
    let sink = Sink::v4();
    let h = connect(d, FILE_A, &sink);
    let p = Payload::pattern(400, 15);
    let cancel_in_arm = || {
        let action = Arc::new(Mutex::new(None));
        let seen = Arc::clone(&action);
        let hook: ArmHook = Box::new(move |file, id| {
            *lock(&seen) = Some(d.cancel(file, id));
        });
        (TestToken::with(false, Some(hook)), action)
    };
    let input = send_input(h, 0, &p.whole());

    // The provider honours the cancel.
    s.inject(Op::Send, Fault::PendUntilCancelled);
    let (token, action) = cancel_in_arm();
    let call = send_raw(d, FILE_A, &input, Some(p.direct()), token);
    assert_eq!(*lock(&action), Some(CancelAction::Done));
    assert_eq!(call.outcome(), cancelled());

    // The send completes inline before the cancel can act on it.
    let (token, action) = cancel_in_arm();
    let call = send_raw(d, FILE_A, &input, Some(p.direct()), token);
    assert_eq!(*lock(&action), Some(CancelAction::Done));
    assert_eq!(call.outcome(), Outcome::ok(p.data.len()));
    assert_received(&sink, 0, &p.data);

    // The provider ignores the cancel: the dispatcher closes the connection itself.
    s.inject(Op::Send, Fault::PendIgnoringCancel);
    let (token, action) = cancel_in_arm();
    let call = send_raw(d, FILE_A, &input, Some(p.direct()), token);
    assert_eq!(*lock(&action), Some(CancelAction::Done));
    assert_eq!(call.outcome(), cancelled());
    assert!(sink.wait_closed(0, WAIT));
    drv.stop();
    drop(p);
    s.finish();
}

#[test]
fn cancel_of_an_unknown_request_or_of_another_file_does_nothing() {
    let s = session();
    let drv = Driver::start(Carve::SystemVa);
    let d = drv.d;
    let sink = Sink::v4();
    let h = connect(d, FILE_A, &sink);
    let p = Payload::pattern(100, 16);
    s.inject(Op::Send, Fault::PendUntilCancelled);
    let call = send(d, FILE_A, h, 0, &p.whole(), &p);
    let (file, id) = call.id();
    assert_eq!(d.cancel(FILE_B, id), CancelAction::Done);
    assert_eq!(d.cancel(file, RequestId(id.0 + 1000)), CancelAction::Done);
    assert!(!call.is_done());
    assert_eq!(d.cancel(file, id), CancelAction::Done);
    assert_eq!(call.outcome(), cancelled());
    drv.stop();
    drop(p);
    s.finish();
}

#[test]
fn a_token_already_cancelled_completes_at_once() {
    let s = session();
    let drv = Driver::start(Carve::SystemVa);
    let d = drv.d;
    let sink = Sink::v4();
    let h = connect(d, FILE_A, &sink);
    let p = Payload::pattern(100, 17);
    let input = send_input(h, 0, &p.whole());
    // More than the per-file limit: a refused request must not keep its slot.
    for _ in 0..MAX_PENDING_PER_HANDLE + 10 {
        let call = send_raw(
            d,
            FILE_A,
            &input,
            Some(p.direct()),
            TestToken::with(true, None),
        );
        assert_eq!(call.reply, Reply::Complete(cancelled()));
        assert_eq!(call.probe.trace().arms.len(), 1);
        assert!(
            call.probe.completed().is_none(),
            "dispatcher completed it too"
        );
    }
    assert!(s.sends().is_empty());
    assert_eq!(stats(d, FILE_A, h).in_flight, 0);
    send_all(d, FILE_A, h, &p);
    assert_received(&sink, 0, &p.data);
    drv.stop();
    drop(p);
    s.finish();
}

// --- cleanup, close, shutdown ---

#[test]
fn cleanup_closes_only_that_files_connections() {
    let s = session();
    let drv = Driver::start(Carve::SystemVa);
    let d = drv.d;
    let (sink_a, sink_b) = (Sink::v4(), Sink::v4());
    let a = connect(d, FILE_A, &sink_a);
    let a2 = connect(d, FILE_A, &sink_a);
    let b = connect(d, FILE_B, &sink_b);
    let p = Payload::pattern(300, 18);
    s.inject(Op::Send, Fault::PendUntilCancelled);
    let a_first = send(d, FILE_A, a, 0, &p.whole(), &p);
    s.inject(Op::Send, Fault::PendIgnoringCancel);
    let a_second = send(d, FILE_A, a2, 0, &p.whole(), &p);
    s.inject(Op::Send, Fault::PendUntilCancelled);
    let b_first = send(d, FILE_B, b, 0, &p.whole(), &p);
    assert_eq!(s.sends().len(), 3);

    d.cleanup(FILE_A);
    assert_eq!(a_first.outcome(), cancelled());
    assert_eq!(a_second.outcome(), cancelled());
    assert!(!b_first.is_done(), "cleanup of A completed B's send");
    assert_eq!(d.connection_count(), 1);
    assert!(sink_a.wait_closed(0, WAIT) && sink_a.wait_closed(1, WAIT));
    assert!(!sink_b.closed(0));
    for h in [a, a2] {
        let call = send(d, FILE_A, h, 0, &p.whole(), &p);
        assert_eq!(call.refused(), STATUS_INVALID_HANDLE);
        assert_eq!(close(d, FILE_A, h), Outcome::fail(STATUS_INVALID_HANDLE));
    }
    // Idempotent (Wine sends CLOSE only, the WDM front end calls it for both).
    d.cleanup(FILE_A);
    assert_eq!(d.connection_count(), 1);

    // B's connection still works.
    assert_eq!(stats(d, FILE_B, b).in_flight, 1);
    let (file, id) = b_first.id();
    assert_eq!(d.cancel(file, id), CancelAction::Done);
    assert_eq!(b_first.outcome(), cancelled());
    send_all(d, FILE_B, b, &p);
    assert_received(&sink_b, 0, &p.data);
    assert!(sink_a.received(0).is_empty() && sink_a.received(1).is_empty());
    drv.stop();
    drop(p);
    s.finish();
}

#[test]
fn close_completes_pending_sends_and_forgets_the_handle() {
    let s = session();
    let drv = Driver::start(Carve::SystemVa);
    let d = drv.d;
    let sink = Sink::v4();
    let h = connect(d, FILE_A, &sink);
    let other = connect(d, FILE_A, &sink);
    let p = Payload::pattern(100, 19);
    s.inject(Op::Send, Fault::PendUntilCancelled);
    let parked = send(d, FILE_A, h, 0, &p.whole(), &p);
    assert_eq!(close(d, FILE_A, h), Outcome::ok(0));
    assert_eq!(parked.outcome(), cancelled());
    assert!(sink.wait_closed(0, WAIT));
    assert_eq!(close(d, FILE_A, h), Outcome::fail(STATUS_INVALID_HANDLE));
    let r = buffered(
        d,
        FILE_A,
        IOCTL_WSKSEND_STATS,
        &handle_input(h),
        Stats::WIRE_SIZE,
    );
    assert_eq!(r.outcome, Outcome::fail(STATUS_INVALID_HANDLE));
    let call = send(d, FILE_A, h, 0, &p.whole(), &p);
    assert_eq!(call.refused(), STATUS_INVALID_HANDLE);
    assert_eq!(d.connection_count(), 1);
    send_all(d, FILE_A, other, &p);
    drv.stop();
    drop(p);
    s.finish();
}

#[test]
fn shutdown_closes_every_connection_of_every_file() {
    let s = session();
    let drv = Driver::start(Carve::SystemVa);
    let d = drv.d;
    let sink = Sink::v4();
    let a = connect_with(d, FILE_A, sink.addr(), 0, 1);
    let b = connect(d, FILE_B, &sink);
    let p = Payload::pattern(100, 20);
    s.inject(Op::Send, Fault::PendIgnoringCancel);
    let a_parked = send(d, FILE_A, a, 0, &p.whole(), &p);
    let a_queued = send(d, FILE_A, a, 0, &p.whole(), &p);
    s.inject(Op::Send, Fault::PendUntilCancelled);
    let b_parked = send(d, FILE_B, b, 0, &p.whole(), &p);
    assert_eq!(s.sends().len(), 2);
    d.shutdown();
    for call in [&a_parked, &a_queued, &b_parked] {
        assert_eq!(call.outcome(), cancelled());
    }
    assert_eq!(d.connection_count(), 0);
    assert_eq!(s.open_sockets(), 0);
    assert!(sink.wait_closed(0, WAIT) && sink.wait_closed(1, WAIT));
    let call = send(d, FILE_B, b, 0, &p.whole(), &p);
    assert_eq!(call.refused(), STATUS_INVALID_HANDLE);
    drv.stop();
    drop(p);
    s.finish();
}

// --- STATS ---

#[test]
fn stats_per_connection_and_driver_wide() {
    let s = session();
    let drv = Driver::start(Carve::SystemVa);
    let d = drv.d;
    let sink = Sink::v4();
    let c1 = connect(d, FILE_A, &sink);
    let c2 = connect(d, FILE_A, &sink);
    let c3 = connect(d, FILE_B, &sink);
    let p = Payload::pattern(1000, 21);
    let fresh = Stats {
        connections: 1,
        ..Stats::default()
    };
    assert_eq!(stats(d, FILE_A, c1), fresh);
    for len in [10, 20, 30] {
        let call = send(d, FILE_A, c1, 0, &[seg(0, len)], &p);
        assert_eq!(call.outcome(), Outcome::ok(len));
    }
    send_all(d, FILE_A, c2, &p);
    s.inject(Op::Send, Fault::Fail(STATUS_CONNECTION_RESET));
    let failed = send(d, FILE_A, c2, 0, &p.whole(), &p);
    assert_eq!(failed.outcome(), Outcome::fail(STATUS_CONNECTION_RESET));
    s.inject(Op::Send, Fault::PendUntilCancelled);
    let parked = send(d, FILE_B, c3, 0, &[seg(0, 5)], &p);

    let s1 = Stats {
        connections: 1,
        sends: 3,
        bytes: 60,
        errors: 0,
        in_flight: 0,
    };
    let s2 = Stats {
        connections: 1,
        sends: 1,
        bytes: 1000,
        errors: 1,
        in_flight: 0,
    };
    let s3 = Stats {
        in_flight: 1,
        ..fresh
    };
    assert_eq!(stats(d, FILE_A, c1), s1);
    assert_eq!(stats(d, FILE_A, c2), s2);
    assert_eq!(stats(d, FILE_B, c3), s3);
    let all = Stats {
        connections: 3,
        sends: 4,
        bytes: 1060,
        errors: 1,
        in_flight: 1,
    };
    // Driver-wide, whichever file asks.
    assert_eq!(stats(d, FILE_A, 0), all);
    assert_eq!(stats(d, FILE_B, 0), all);

    let (file, id) = parked.id();
    assert_eq!(d.cancel(file, id), CancelAction::Done);
    assert_eq!(parked.outcome(), cancelled());
    assert_eq!(stats(d, FILE_B, c3), Stats { errors: 1, ..fresh });
    // Closed connections keep counting in the driver-wide figures.
    assert_eq!(close(d, FILE_A, c1), Outcome::ok(0));
    assert_eq!(
        stats(d, FILE_B, 0),
        Stats {
            connections: 2,
            errors: 2,
            in_flight: 0,
            ..all
        }
    );
    d.cleanup(FILE_B);
    assert_eq!(
        stats(d, FILE_A, 0),
        Stats {
            connections: 1,
            errors: 2,
            in_flight: 0,
            ..all
        }
    );
    drv.stop();
    drop(p);
    s.finish();
}

// --- CancelHandshake (no model) ---

#[test]
fn handshake_completion_first_lets_the_cancel_callback_complete() {
    let h = CancelHandshake::new();
    let outcome = Outcome::ok(42);
    assert_eq!(h.completion_ready(outcome), None);
    assert_eq!(h.cancel_finished(), Some(outcome));
}

#[test]
fn handshake_cancel_first_lets_the_completion_path_complete() {
    let h = CancelHandshake::default();
    let outcome = Outcome::fail(STATUS_CANCELLED);
    assert_eq!(h.cancel_finished(), None);
    assert_eq!(h.completion_ready(outcome), Some(outcome));
}

#[test]
fn handshake_race_completes_exactly_once_with_the_stored_outcome() {
    for i in 0..500 {
        let h = CancelHandshake::new();
        let outcome = Outcome {
            status: STATUS_SUCCESS,
            information: i,
        };
        let (a, b) = thread::scope(|scope| {
            let completion = scope.spawn(|| h.completion_ready(outcome));
            let cancel = scope.spawn(|| h.cancel_finished());
            (
                completion.join().expect("completion side"),
                cancel.join().expect("cancel side"),
            )
        });
        match (a, b) {
            (Some(o), None) | (None, Some(o)) => assert_eq!(o, outcome),
            other => panic!("round {i}: completed {other:?}"),
        }
    }
}

/// CLOSE ends the stream cleanly after every byte (a graceful disconnect); ABORT resets
/// it (Windows' `WskCloseSocket` on a connected socket, which the model imitates).
#[test]
fn close_ends_the_stream_cleanly_and_abort_resets_it() {
    let s = session();
    let drv = Driver::start(Carve::SystemVa);
    let d = drv.d;
    let sink = Sink::v4();
    let graceful = connect(d, FILE_A, &sink);
    let abortive = connect(d, FILE_A, &sink);
    let p = Payload::pattern(10_000, 31);
    send_all(d, FILE_A, graceful, &p);
    send_all(d, FILE_A, abortive, &p);
    assert_received(&sink, 0, &p.data);
    assert_received(&sink, 1, &p.data);
    assert_eq!(close(d, FILE_A, graceful), Outcome::ok(0));
    let r = buffered(d, FILE_A, IOCTL_WSKSEND_ABORT, &handle_input(abortive), 0);
    assert_eq!(r.outcome, Outcome::ok(0));
    assert!(sink.wait_closed(0, WAIT) && sink.wait_closed(1, WAIT));
    assert_eq!(sink.ended_cleanly(0), Some(true), "CLOSE reset the peer");
    assert_eq!(
        sink.ended_cleanly(1),
        Some(false),
        "ABORT ended the stream cleanly"
    );
    // Both handles are gone.
    let r = buffered(d, FILE_A, IOCTL_WSKSEND_ABORT, &handle_input(abortive), 0);
    assert_eq!(r.outcome, Outcome::fail(STATUS_INVALID_HANDLE));
    assert_eq!(d.connection_count(), 0);
    drv.stop();
    drop(p);
    s.finish();
}

/// Bug 8: requests without a file object (a kernel-mode sender) all shared file id 0,
/// whose connections no cleanup ever closed. CONNECT, SEND, CLOSE and ABORT without a
/// file object are refused; GET_VERSION still answers.
#[test]
fn connection_requests_without_a_file_object_are_refused() {
    let s = session();
    let drv = Driver::start(Carve::SystemVa);
    let d = drv.d;
    let sink = Sink::v4();
    let none = FileId::NONE;
    let r = try_connect(d, none, sink.addr(), 0, 0);
    assert_eq!(r.outcome, Outcome::fail(STATUS_INVALID_DEVICE_REQUEST));
    for code in [IOCTL_WSKSEND_CLOSE, IOCTL_WSKSEND_ABORT] {
        let r = buffered(d, none, code, &handle_input(1), 0);
        assert_eq!(r.outcome, Outcome::fail(STATUS_INVALID_DEVICE_REQUEST));
    }
    let r = buffered(
        d,
        none,
        IOCTL_WSKSEND_GET_VERSION,
        &[],
        VersionInfo::WIRE_SIZE,
    );
    assert_eq!(r.outcome, Outcome::ok(VersionInfo::WIRE_SIZE));
    assert_eq!(d.connection_count(), 0);
    assert_eq!(sink.connections(), 0);
    drv.stop();
    s.finish();
}
