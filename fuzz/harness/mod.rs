//! Fuzz entry points, shared by the libFuzzer targets (`fuzz/fuzz_targets/`) and by
//! the regression test that replays saved inputs in `cargo test`
//! (`crates/dispatch/tests/fuzz_regressions.rs`, which includes this file).
//!
//! - [`protocol`]: every wire struct's parser on arbitrary bytes; what parses must
//!   emit and parse back to the same value, and a SEND's segments must lie inside the
//!   payload it was checked against.
//! - [`dispatch`]: a short program of requests (any IOCTL code, input, output length,
//!   direct buffer; cancels; handle cleanup; provider faults) run through the real
//!   dispatcher and engine against the kernel model. Any broken kernel rule or leak,
//!   a token completed twice or never, output beyond the caller's buffer, or success
//!   for an unknown code, panics (a crash for the fuzzer).
//!
//! A failure is a panic; the fuzzer records the input as a crash.

#![allow(dead_code, reason = "each includer uses one entry point or both")]

use std::net::SocketAddr;
use std::ptr::{self, NonNull};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use wsksend_dispatch::{
    CancelAction, Carve, Config, DirectBuffer, Dispatcher, Disposition, FileId, Outcome, PendingIo,
    Request, RequestId,
};
use wsksend_ffi::status::STATUS_CONNECTION_RESET;
use wsksend_ffi::{FALSE, IoAllocateMdl, IoFreeMdl, MDL, MmBuildMdlForNonPagedPool, NT_SUCCESS};
use wsksend_kernel_model::{Fault, Op, SendMode, Sink, session};
use wsksend_protocol::{
    ConnectReply, ConnectRequest, HandleRequest, IOCTL_WSKSEND_CLOSE, IOCTL_WSKSEND_CONNECT,
    IOCTL_WSKSEND_GET_VERSION, IOCTL_WSKSEND_SEND, IOCTL_WSKSEND_STATS, Ioctl, SendRequest, Stats,
    VersionInfo, WireSegment, mapping_for_win32,
};

// --- protocol ---

/// Parses `data` as every wire struct.
///
/// # Panics
/// If a parsed value does not survive emit and parse, or a SEND's segments escape
/// the payload.
pub fn protocol(data: &[u8]) {
    let code = data
        .get(..4)
        .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap_or_default()));
    let ioctl = Ioctl::from(code);
    if let Ioctl::Unknown(raw) = ioctl {
        assert_eq!(raw, code);
    } else {
        assert_eq!(u32::from(ioctl), code, "IOCTL code round trip");
    }
    let _ = mapping_for_win32(code);

    macro_rules! round_trip {
        ($ty:ty) => {
            if let Ok(v) = <$ty>::parse(data) {
                let mut buf = vec![0u8; <$ty>::WIRE_SIZE];
                let n = v.emit(&mut buf).expect("emit of a parsed value");
                assert_eq!(n, <$ty>::WIRE_SIZE);
                assert_eq!(<$ty>::parse(&buf), Ok(v), "parse(emit(x)) == x");
            }
        };
    }
    round_trip!(VersionInfo);
    round_trip!(ConnectRequest);
    round_trip!(ConnectReply);
    round_trip!(HandleRequest);
    round_trip!(Stats);

    // The payload length the request is checked against comes from the last 4 bytes.
    let payload_len = data.len().checked_sub(4).map_or(0, |at| {
        u32::from_le_bytes(data[at..].try_into().unwrap_or_default()) as usize % (1 << 20)
    });
    if let Ok(req) = SendRequest::parse(data, payload_len) {
        let segments: Vec<WireSegment> = req.segments().collect();
        assert_eq!(segments.len(), req.segment_count());
        let mut total = 0usize;
        for s in &segments {
            assert!(s.len != 0, "empty segment accepted");
            assert!(
                s.offset as usize + s.len as usize <= payload_len,
                "segment {s:?} outside a payload of {payload_len}"
            );
            total += s.len as usize;
        }
        assert_eq!(total, req.total_len());
        let mut buf =
            vec![0u8; SendRequest::HEADER_SIZE + segments.len() * SendRequest::SEGMENT_SIZE];
        let n = SendRequest::emit(&mut buf, req.handle, req.flags, &segments).expect("emit");
        assert_eq!(n, buf.len());
        assert_eq!(
            SendRequest::parse(&buf, payload_len),
            Ok(req),
            "SEND round trip"
        );
    }
}

// --- dispatch ---

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the dispatcher did with one request's token.
#[derive(Default)]
struct Trace {
    armed: bool,
    arms: Vec<(FileId, RequestId)>,
    completions: Vec<Outcome>,
}

/// The front end's token: records `arm` and `complete`.
struct Token {
    trace: Arc<Mutex<Trace>>,
    /// `arm` reports the request as already cancelled.
    already_cancelled: bool,
}

impl PendingIo for Token {
    fn arm(&mut self, file: FileId, id: RequestId) -> bool {
        let mut t = lock(&self.trace);
        t.arms.push((file, id));
        if self.already_cancelled {
            return false;
        }
        t.armed = true;
        true
    }

    fn complete(self, outcome: Outcome) {
        let mut t = lock(&self.trace);
        assert!(t.armed, "token completed without being armed");
        t.completions.push(outcome);
    }
}

/// One dispatcher for the process (`device_control` takes `&'static self`), and the
/// sink CONNECTs go to.
struct World {
    dispatcher: &'static Dispatcher<Token>,
    sink: Sink,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| World {
        dispatcher: Box::leak(Box::new(Dispatcher::new(Config {
            carve: Carve::PartialMdl,
            linger: std::time::Duration::from_millis(100),
        }))),
        sink: Sink::v4(),
    })
}

/// A direct buffer the way the I/O manager describes one: a locked MDL over memory
/// that stays put until the request completed.
struct Direct {
    data: Vec<u8>,
    mdl: NonNull<MDL>,
}

impl Direct {
    fn new(len: usize, seed: u8) -> Option<Self> {
        let mut data: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
        let len32 = u32::try_from(data.len()).ok()?;
        // SAFETY: describing memory has no preconditions; no IRP is given.
        let mdl = unsafe {
            IoAllocateMdl(
                data.as_mut_ptr().cast(),
                len32,
                FALSE,
                FALSE,
                ptr::null_mut(),
            )
        };
        let mdl = NonNull::new(mdl)?;
        // SAFETY: the MDL is live and describes `data`, which stays put until drop.
        unsafe { MmBuildMdlForNonPagedPool(mdl.as_ptr()) };
        Some(Self { data, mdl })
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        // SAFETY: ours, built by `new`; dropped only after its request completed.
        unsafe { IoFreeMdl(self.mdl.as_ptr()) };
    }
}

/// Reads the fuzzer's bytes; past the end everything reads as zero.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn done(&self) -> bool {
        self.0.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        b.to_vec()
    }
}

const FILES: [FileId; 2] = [FileId(0xA000), FileId(0xB000)];
/// Requests one input may make.
const MAX_STEPS: usize = 12;
/// Bound of the wait for pending requests after unload.
const WAIT: Duration = Duration::from_secs(10);

/// Runs `data` as a program of requests against the dispatcher and the model.
///
/// # Panics
/// On any broken kernel rule, leak, token misuse or impossible outcome.
pub fn dispatch(data: &[u8]) {
    let w = world();
    let d = w.dispatcher;
    let s = session();
    let mut r = Reader(data);
    let setup = r.u8();
    if setup & 1 != 0 {
        s.set_send_mode(SendMode::Pended);
    }
    match (setup >> 1) & 7 {
        1 => s.inject(Op::Send, Fault::Fail(STATUS_CONNECTION_RESET)),
        2 => s.inject(Op::Send, Fault::PendUntilCancelled),
        3 => s.inject(Op::Send, Fault::PendIgnoringCancel),
        4 => s.inject(Op::Send, Fault::Partial),
        5 => s.inject(Op::Send, Fault::CompleteReturnPending),
        _ => {}
    }
    if setup & 0x10 != 0 {
        s.set_max_pending(usize::from(setup >> 5) + 1);
    }
    // SAFETY: the model's device object lives for the whole process.
    unsafe { wsksend_engine::global::start(wsksend_kernel_model::device()) }
        .expect("global::start");

    let mut handles: Vec<u64> = Vec::new();
    let mut traces: Vec<Arc<Mutex<Trace>>> = Vec::new();
    let mut directs: Vec<Direct> = Vec::new();
    let mut steps = 0;
    while !r.done() && steps < MAX_STEPS {
        steps += 1;
        let op = r.u8();
        let file = FILES[usize::from(op >> 7)];
        match op & 0x0F {
            // Cancel the k-th request's arm.
            8 => {
                let k = usize::from(r.u8());
                let arm = traces
                    .get(k % traces.len().max(1))
                    .and_then(|t| lock(t).arms.last().copied());
                if let Some((f, id)) = arm
                    && d.cancel(f, id) == CancelAction::RunDeferred
                {
                    d.run_deferred();
                }
            }
            9 => d.cleanup(file),
            10 => d.run_deferred(),
            sel => {
                let code = match sel {
                    0 => IOCTL_WSKSEND_GET_VERSION,
                    1 | 11 => IOCTL_WSKSEND_CONNECT,
                    2 | 12 | 13 => IOCTL_WSKSEND_SEND,
                    3 => IOCTL_WSKSEND_CLOSE,
                    4 => IOCTL_WSKSEND_STATS,
                    _ => r.u32(),
                };
                let input_len = usize::from(r.u8());
                let mut input = r.bytes(input_len);
                let output_len = usize::from(r.u8());
                let direct_len = usize::from(r.u16() % 4096);
                let already_cancelled = op & 0x40 != 0;
                patch(&mut input, code, w.sink.addr(), &handles);
                let trace = Arc::new(Mutex::new(Trace::default()));
                traces.push(Arc::clone(&trace));
                let token = Token {
                    trace: Arc::clone(&trace),
                    already_cancelled,
                };
                let direct = (direct_len > 0)
                    .then(|| Direct::new(direct_len, op))
                    .flatten();
                let mut system = vec![0xA5u8; input.len().max(output_len)];
                system[..input.len()].copy_from_slice(&input);
                let disposition = d.device_control(Request {
                    file,
                    code,
                    system: &mut system,
                    input_len: input.len(),
                    output_len,
                    direct: direct.as_ref().map(|b| DirectBuffer {
                        mdl: b.mdl,
                        len: b.data.len(),
                    }),
                    pending: token,
                });
                let trace_on = std::env::var_os("WSKSEND_FUZZ_TRACE").is_some();
                match disposition {
                    Disposition::Complete(outcome, token) => {
                        if trace_on {
                            eprintln!(
                                "IOCTL {code:#x} ({} in, {output_len} out): {outcome:?}",
                                input.len()
                            );
                        }
                        let t = lock(&token.trace);
                        assert!(t.completions.is_empty(), "completed and handed back");
                        assert!(!t.armed, "armed and handed back");
                        drop(t);
                        if code != IOCTL_WSKSEND_SEND {
                            assert!(
                                outcome.information <= output_len,
                                "IOCTL {code:#x}: information {} beyond output {output_len}",
                                outcome.information
                            );
                        }
                        if let Ioctl::Unknown(_) = Ioctl::from(code) {
                            assert!(
                                !NT_SUCCESS(outcome.status),
                                "unknown IOCTL {code:#x} succeeded"
                            );
                        }
                        if code == IOCTL_WSKSEND_CONNECT
                            && NT_SUCCESS(outcome.status)
                            && let Ok(reply) = ConnectReply::parse(&system)
                        {
                            handles.push(reply.handle);
                        }
                    }
                    Disposition::Pending => {
                        if trace_on {
                            eprintln!("IOCTL {code:#x} ({} in): pending", input.len());
                        }
                    }
                }
                // Kept until every request has completed (after unload below).
                directs.extend(direct);
            }
        }
    }

    for f in FILES {
        d.cleanup(f);
    }
    d.shutdown();
    wsksend_engine::global::stop().expect("global::stop");
    assert_eq!(d.connection_count(), 0, "connections left after shutdown");
    let deadline = Instant::now() + WAIT;
    for t in &traces {
        loop {
            let (armed, done) = {
                let t = lock(t);
                (t.armed, t.completions.len())
            };
            assert!(done <= 1, "token completed {done} times");
            if !armed || done == 1 {
                assert_eq!(done, usize::from(armed), "armed token not completed");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "armed token not completed after unload"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    drop(directs);
    s.finish();
}

/// Points a CONNECT at the sink (the fuzzer's other fields kept), and a handle in
/// 1..=n at the n-th connection this input opened (handles count up across inputs).
fn patch(input: &mut [u8], code: u32, sink: SocketAddr, handles: &[u64]) {
    if code == IOCTL_WSKSEND_CONNECT {
        if let Ok(mut req) = ConnectRequest::parse(input) {
            req.remote = sink;
            let _ = req.emit(input);
        }
        return;
    }
    if matches!(
        code,
        IOCTL_WSKSEND_SEND | IOCTL_WSKSEND_CLOSE | IOCTL_WSKSEND_STATS
    ) && let Some(field) = input.get_mut(8..16)
    {
        let h = u64::from_le_bytes(field.try_into().unwrap_or_default());
        if let Some(&real) = usize::try_from(h)
            .ok()
            .and_then(|h| h.checked_sub(1))
            .and_then(|i| handles.get(i))
        {
            field.copy_from_slice(&real.to_le_bytes());
        }
    }
}
