//! Named end-to-end scenarios. Each prints one `RESULT` line. Data scenarios send to
//! a [`Sink`] in this process that checks every byte.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use wsksend_protocol::{
    CONNECT_NODELAY, FILE_ANY_ACCESS, FILE_DEVICE_WSKSEND, IOCTL_WSKSEND_GET_VERSION,
    IOCTL_WSKSEND_SEND, METHOD_BUFFERED, MSG_OOB, PROTOCOL_VERSION, SEND_NODELAY, SendRequest,
    VersionInfo, WireSegment, ctl_code,
};

use crate::device::{Completed, Device, PendingSend, SendTicket, Win32Error};
use crate::pattern::{HEADER_LEN, fill, header};
use crate::report::ScenarioResult;
use crate::sink::Sink;

/// `ERROR_FILE_NOT_FOUND`.
pub const ERROR_FILE_NOT_FOUND: u32 = 2;
/// `ERROR_INVALID_FUNCTION` (from `STATUS_INVALID_DEVICE_REQUEST`).
pub const ERROR_INVALID_FUNCTION: u32 = 1;
/// `ERROR_INSUFFICIENT_BUFFER` (from `STATUS_BUFFER_TOO_SMALL`).
pub const ERROR_INSUFFICIENT_BUFFER: u32 = 122;
/// `ERROR_INVALID_HANDLE`.
pub const ERROR_INVALID_HANDLE: u32 = 6;
/// `ERROR_INVALID_PARAMETER`.
pub const ERROR_INVALID_PARAMETER: u32 = 87;
/// `ERROR_REVISION_MISMATCH`.
pub const ERROR_REVISION_MISMATCH: u32 = 1306;
/// `ERROR_NOT_SUPPORTED`.
pub const ERROR_NOT_SUPPORTED: u32 = 50;
/// `ERROR_OPERATION_ABORTED` (from `STATUS_CANCELLED`).
pub const ERROR_OPERATION_ABORTED: u32 = 995;

const MIB: usize = 1 << 20;

/// Every scenario name and what it checks.
pub const SCENARIOS: &[(&str, &str)] = &[
    (
        "version",
        "GET_VERSION round-trips the protocol and driver version",
    ),
    (
        "unknown-ioctl",
        "an unknown code fails with ERROR_INVALID_FUNCTION",
    ),
    (
        "short-output",
        "GET_VERSION into 15 bytes fails with ERROR_INSUFFICIENT_BUFFER and writes nothing",
    ),
    (
        "device-absent",
        "opening the device fails with ERROR_FILE_NOT_FOUND (driver stopped)",
    ),
    (
        "send-sizes",
        "single-segment sends of 1 B to 4 MiB, 64 MiB in all, byte-exact at the sink",
    ),
    (
        "inflight-8",
        "8 overlapped sends in flight on one connection: byte-exact, in order",
    ),
    (
        "inflight-64",
        "64 overlapped sends in flight on one connection: byte-exact, in order",
    ),
    (
        "multi-connection",
        "3 connections on one handle and 2 handles at once, all byte-exact",
    ),
    (
        "nodelay",
        "NODELAY connection and send flags: sends succeed, byte-exact",
    ),
    (
        "multi-segment",
        "a 3-segment send succeeds byte-exact or fails cleanly; the connection stays usable",
    ),
    (
        "bad-input",
        "every malformed request fails with its own error and the driver stays healthy",
    ),
    (
        "stats",
        "STATS reports the bytes and sends of a connection and of the driver",
    ),
    (
        "peer-reset",
        "the peer resets mid-transfer: sends fail with a connection error, later connections work",
    ),
    (
        "cancel",
        "CancelIoEx on a send blocked by a sink that stopped reading completes it as aborted",
    ),
    (
        "close-handle",
        "closing the file handle with sends pending completes them; the driver stays healthy",
    ),
    (
        "close-delivers",
        "send, CLOSE: the sink gets every byte and a clean end of stream; ABORT resets",
    ),
];

/// Runs the scenario `name`.
#[must_use]
pub fn run(name: &str) -> ScenarioResult {
    let outcome = match name {
        "version" => version(),
        "unknown-ioctl" => unknown_ioctl(),
        "short-output" => short_output(),
        "device-absent" => device_absent(),
        "send-sizes" => send_sizes(),
        "inflight-8" => inflight(8),
        "inflight-64" => inflight(64),
        "multi-connection" => multi_connection(),
        "nodelay" => nodelay(),
        "multi-segment" => multi_segment(),
        "bad-input" => bad_input(),
        "stats" => stats(),
        "peer-reset" => peer_reset(),
        "cancel" => cancel(),
        "close-handle" => close_handle(),
        "close-delivers" => close_delivers(),
        "kernel-api" => kernel_api(),
        _ => Err(format!("no scenario named {name}")),
    };
    match outcome {
        Ok(detail) => ScenarioResult::new(name, true, detail),
        Err(detail) => ScenarioResult::new(name, false, detail),
    }
}

type Outcome = Result<String, String>;

fn open() -> Result<Device, String> {
    Device::open().map_err(|e| format!("open {}: {e}", wsksend_protocol::USER_PATH))
}

fn sink() -> Result<Sink, String> {
    Sink::start(IpAddr::from([127, 0, 0, 1])).map_err(|e| format!("sink: {e}"))
}

fn seed() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id().wrapping_mul(7919);
    base.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Sends one stream: the header, then `sizes` pattern bytes per send with
/// `segments` segments each (laid out with gaps the driver must skip), keeping
/// `in_flight` sends outstanding. Returns the pattern bytes sent.
pub fn send_stream(
    dev: &Device,
    handle: u64,
    seed: u32,
    sizes: &[usize],
    in_flight: usize,
    segments: usize,
    flags: u32,
) -> Result<u64, String> {
    send_stream_with(
        dev,
        handle,
        seed,
        sizes,
        (in_flight, segments, flags),
        &mut |_| {},
    )
}

/// [`send_stream`] with `(in_flight, segments, flags)` and a callback that sees the
/// pattern bytes sent so far after every completion (for progress output).
pub fn send_stream_with(
    dev: &Device,
    handle: u64,
    seed: u32,
    sizes: &[usize],
    (in_flight, segments, flags): (usize, usize, u32),
    progress: &mut dyn FnMut(u64),
) -> Result<u64, String> {
    let total: u64 = sizes.iter().map(|&s| s as u64).sum();
    let mut head = header(seed, total);
    let n = dev
        .send(
            handle,
            flags,
            &mut head,
            &[WireSegment {
                offset: 0,
                len: HEADER_LEN as u32,
            }],
        )
        .map_err(|e| format!("header send: {e}"))?;
    if n != HEADER_LEN {
        return Err(format!("header send reported {n} bytes"));
    }
    let mut pos: u64 = 0;
    let mut outstanding = 0usize;
    let mut sent: u64 = 0;
    let result = pump_stream(
        dev,
        handle,
        seed,
        sizes,
        (in_flight, segments, flags),
        &mut pos,
        &mut outstanding,
        &mut sent,
        progress,
    );
    // On failure, collect what is still in flight so a later stream on this device does
    // not see stale completions.
    while outstanding > 0 {
        if dev.next_completion(30_000).is_none() {
            break;
        }
        outstanding -= 1;
    }
    result.map(|()| sent)
}

#[allow(clippy::too_many_arguments, reason = "the loop state of send_stream")]
fn pump_stream(
    dev: &Device,
    handle: u64,
    seed: u32,
    sizes: &[usize],
    (in_flight, segments, flags): (usize, usize, u32),
    pos: &mut u64,
    outstanding: &mut usize,
    sent: &mut u64,
    progress: &mut dyn FnMut(u64),
) -> Result<(), String> {
    let mut check = |c: Completed, sent: &mut u64| -> Result<(), String> {
        match c.result {
            Ok(n) if n == c.send.expected => {
                *sent += n as u64;
                progress(*sent);
                Ok(())
            }
            Ok(n) => Err(format!(
                "send at {} reported {n} of {} bytes",
                c.send.tag, c.send.expected
            )),
            Err(e) => Err(format!("send at {} failed: {e}", c.send.tag)),
        }
    };
    for &size in sizes {
        let (payload, segs) = build_payload(seed, *pos, size, segments);
        let mut send = PendingSend::new(handle, flags, payload, &segs);
        send.tag = *pos;
        *pos += size as u64;
        if let Err(c) = dev.start_send(send) {
            check(c, sent)?;
            return Err("send failed at once".into());
        }
        *outstanding += 1;
        while *outstanding >= in_flight {
            let c = dev
                .next_completion(60_000)
                .ok_or("no completion within 60 s")?;
            *outstanding -= 1;
            check(c, sent)?;
        }
    }
    while *outstanding > 0 {
        let c = dev
            .next_completion(60_000)
            .ok_or("no completion within 60 s")?;
        *outstanding -= 1;
        check(c, sent)?;
    }
    Ok(())
}

/// The payload buffer of one send of `size` pattern bytes from `pos`, split into
/// `segments` pieces separated by 16-byte gaps of 0xEE.
fn build_payload(seed: u32, pos: u64, size: usize, segments: usize) -> (Vec<u8>, Vec<WireSegment>) {
    let segments = segments.clamp(1, size.max(1));
    let gap = if segments > 1 { 16 } else { 0 };
    let mut payload = vec![0xEE; size + gap * (segments - 1)];
    let mut segs = Vec::with_capacity(segments);
    let mut done = 0usize;
    for i in 0..segments {
        let len = if i + 1 == segments {
            size - done
        } else {
            size / segments
        };
        let offset = done + gap * i;
        fill(seed, pos + done as u64, &mut payload[offset..offset + len]);
        segs.push(WireSegment {
            offset: offset as u32,
            len: len as u32,
        });
        done += len;
    }
    (payload, segs)
}

fn expect_exact(sink: &Sink, seed: u32, bytes: u64) -> Result<(), String> {
    let r = sink
        .wait_for(seed, bytes, Duration::from_secs(30))
        .ok_or_else(|| format!("sink never saw stream {seed}"))?;
    if r.exact() {
        Ok(())
    } else {
        Err(format!("sink: {r:?}"))
    }
}

fn connect(dev: &Device, sink: &Sink, flags: u32) -> Result<u64, String> {
    dev.connect(sink.addr(), flags, 0)
        .map_err(|e| format!("connect {}: {e}", sink.addr()))
}

fn version() -> Outcome {
    let dev = open()?;
    let v = dev.version().map_err(|e| format!("GET_VERSION: {e}"))?;
    let expected = VersionInfo::current();
    if v != expected {
        return Err(format!("got {v:?}, expected {expected:?}"));
    }
    Ok(format!(
        "protocol {} driver {}.{}.{}",
        v.protocol_version, v.driver.major, v.driver.minor, v.driver.patch
    ))
}

fn unknown_ioctl() -> Outcome {
    let dev = open()?;
    let code = ctl_code(FILE_DEVICE_WSKSEND, 0xFFF, METHOD_BUFFERED, FILE_ANY_ACCESS);
    let mut out = [0u8; 16];
    match dev.ioctl(code, &[1, 2, 3, 4], &mut out) {
        Err(Win32Error(ERROR_INVALID_FUNCTION)) => {
            Ok(format!("code {code:#010x} -> ERROR_INVALID_FUNCTION"))
        }
        other => Err(format!(
            "code {code:#010x}: expected ERROR_INVALID_FUNCTION, got {other:?}"
        )),
    }
}

fn short_output() -> Outcome {
    let dev = open()?;
    let mut out = [0xa5u8; VersionInfo::WIRE_SIZE - 1];
    let result = dev.ioctl(IOCTL_WSKSEND_GET_VERSION, &[], &mut out);
    if result != Err(Win32Error(ERROR_INSUFFICIENT_BUFFER)) {
        return Err(format!(
            "expected ERROR_INSUFFICIENT_BUFFER, got {result:?}"
        ));
    }
    if out.iter().any(|&b| b != 0xa5) {
        return Err(format!("output buffer was written: {out:02x?}"));
    }
    dev.version()
        .map_err(|e| format!("GET_VERSION after short call: {e}"))?;
    Ok("ERROR_INSUFFICIENT_BUFFER, buffer untouched".into())
}

fn device_absent() -> Outcome {
    match Device::open() {
        Err(Win32Error(ERROR_FILE_NOT_FOUND)) => Ok("ERROR_FILE_NOT_FOUND".into()),
        Err(e) => Err(format!("expected ERROR_FILE_NOT_FOUND, got {e}")),
        Ok(_) => Err("device still present".into()),
    }
}

fn send_sizes() -> Outcome {
    let dev = open()?;
    let sink = sink()?;
    let handle = connect(&dev, &sink, 0)?;
    let mut sizes: Vec<usize> = vec![
        1,
        2,
        3,
        7,
        8,
        9,
        100,
        1000,
        4095,
        4096,
        4097,
        65_535,
        65_536,
        65_537,
        MIB,
        4 * MIB - 1,
        4 * MIB,
    ];
    let mut total: usize = sizes.iter().sum();
    while total < 64 * MIB {
        sizes.push(4 * MIB);
        total += 4 * MIB;
    }
    let s = seed();
    let start = Instant::now();
    let sent = send_stream(&dev, handle, s, &sizes, 1, 1, 0)?;
    expect_exact(&sink, s, sent)?;
    dev.close(handle).map_err(|e| format!("close: {e}"))?;
    Ok(format!(
        "{} sends, {} bytes byte-exact in {:.1} s",
        sizes.len(),
        sent,
        start.elapsed().as_secs_f64()
    ))
}

fn inflight(depth: usize) -> Outcome {
    let dev = open()?;
    let sink = sink()?;
    let handle = dev
        .connect(sink.addr(), 0, 0)
        .map_err(|e| format!("connect: {e}"))?;
    let sizes = vec![64 << 10; 256];
    let s = seed();
    let sent = send_stream(&dev, handle, s, &sizes, depth, 1, 0)?;
    expect_exact(&sink, s, sent)?;
    dev.close(handle).map_err(|e| format!("close: {e}"))?;
    Ok(format!(
        "{} sends of 64 KiB, {depth} in flight, {sent} bytes in order",
        sizes.len()
    ))
}

fn multi_connection() -> Outcome {
    let sink = sink()?;
    let addr = sink.addr();
    let dev = open()?;
    let mut handles = Vec::new();
    for _ in 0..3 {
        handles.push(
            dev.connect(addr, 0, 0)
                .map_err(|e| format!("connect: {e}"))?,
        );
    }
    let sizes = vec![256 << 10; 16];
    let mut seeds = Vec::new();
    for &h in &handles {
        let s = seed();
        seeds.push((s, send_stream(&dev, h, s, &sizes, 4, 1, 0)?));
    }
    // Two more file handles at once, from two threads.
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let sizes = sizes.clone();
            let s = seed();
            std::thread::spawn(move || -> Result<(u32, u64), String> {
                let dev = open()?;
                let h = dev
                    .connect(addr, 0, 0)
                    .map_err(|e| format!("connect: {e}"))?;
                let sent = send_stream(&dev, h, s, &sizes, 4, 1, 0)?;
                dev.close(h).map_err(|e| format!("close: {e}"))?;
                Ok((s, sent))
            })
        })
        .collect();
    for t in threads {
        seeds.push(t.join().map_err(|_| "thread panicked".to_string())??);
    }
    for &(s, sent) in &seeds {
        expect_exact(&sink, s, sent)?;
    }
    for h in handles {
        dev.close(h).map_err(|e| format!("close: {e}"))?;
    }
    Ok(format!(
        "{} streams byte-exact (3 on one handle, 2 on two handles)",
        seeds.len()
    ))
}

fn nodelay() -> Outcome {
    let dev = open()?;
    let sink = sink()?;
    let handle = connect(&dev, &sink, CONNECT_NODELAY)?;
    let s = seed();
    let sizes = vec![100; 50];
    let sent = send_stream(&dev, handle, s, &sizes, 4, 1, SEND_NODELAY)?;
    expect_exact(&sink, s, sent)?;
    dev.close(handle).map_err(|e| format!("close: {e}"))?;
    Ok(format!("{sent} bytes with CONNECT_NODELAY + SEND_NODELAY"))
}

/// Issue 8, bug 6: a close must not lose what completed sends reported sent. Sends
/// 4 MiB with 8 overlapped sends, then CLOSE, and checks the sink got every byte and
/// a clean end of stream (Windows' WskCloseSocket alone would reset it). Then ABORT on
/// another connection: under Wine (no WskDisconnect, graceful close) it may end
/// cleanly too, so only its success and the bytes before it are checked.
fn close_delivers() -> Outcome {
    let dev = open()?;
    let sink = sink()?;
    let handle = connect(&dev, &sink, 0)?;
    let s = seed();
    let sizes = vec![256 << 10; 16];
    let sent = send_stream(&dev, handle, s, &sizes, 8, 1, 0)?;
    dev.close(handle).map_err(|e| format!("close: {e}"))?;
    let r = sink
        .wait_for(s, u64::MAX, Duration::from_secs(10))
        .ok_or_else(|| format!("sink never saw stream {s}"))?;
    if !r.exact() || r.received != sent {
        return Err(format!(
            "after CLOSE the sink has {r:?}, {sent} bytes were sent"
        ));
    }
    if !r.clean_end {
        return Err(format!("CLOSE reset the peer after {} bytes", r.received));
    }
    let other = connect(&dev, &sink, 0)?;
    let s2 = seed();
    let sent2 = send_stream(&dev, other, s2, &[64 << 10], 1, 1, 0)?;
    expect_exact(&sink, s2, sent2)?;
    dev.abort(other).map_err(|e| format!("abort: {e}"))?;
    if dev.close(other).is_ok() {
        return Err("CLOSE after ABORT found the handle still open".into());
    }
    healthy(&dev)?;
    Ok(format!(
        "{sent} bytes then CLOSE: every byte and a clean end of stream; ABORT closed the second connection"
    ))
}

fn multi_segment() -> Outcome {
    let dev = open()?;
    let sink = sink()?;
    let handle = connect(&dev, &sink, 0)?;
    let s = seed();
    let total: u64 = 3000 + 4096;
    let mut head = header(s, total);
    dev.send(handle, 0, &mut head, &[WireSegment { offset: 0, len: 16 }])
        .map_err(|e| format!("header: {e}"))?;
    let (mut payload, segs) = build_payload(s, 0, 3000, 3);
    let detail = match dev.send(handle, 0, &mut payload, &segs) {
        Ok(3000) => {
            // Provider supports chained MDLs (Windows): continue after them.
            let (mut rest, one) = build_payload(s, 3000, 4096, 1);
            dev.send(handle, 0, &mut rest, &one)
                .map_err(|e| format!("send after: {e}"))?;
            expect_exact(&sink, s, total)?;
            "3-segment send delivered byte-exact".to_string()
        }
        Ok(n) => return Err(format!("3-segment send reported {n} bytes")),
        Err(e) => {
            // Provider refused the chain (Wine): nothing of it may arrive, and the
            // connection must carry on from the same stream position.
            let (mut rest, one) = build_payload(s, 0, 3000 + 4096, 1);
            dev.send(handle, 0, &mut rest, &one)
                .map_err(|e2| format!("send after failed chain ({e}): {e2}"))?;
            expect_exact(&sink, s, total)?;
            format!("provider refused the chain with {e}; connection still usable, byte-exact")
        }
    };
    dev.close(handle).map_err(|e| format!("close: {e}"))?;
    Ok(detail)
}

/// The driver still works: a new connection on `dev` sends a short stream exactly.
fn healthy(dev: &Device) -> Result<(), String> {
    let sink = sink()?;
    let handle = connect(dev, &sink, 0)?;
    let s = seed();
    let sent = send_stream(dev, handle, s, &[4096; 4], 2, 1, 0)?;
    expect_exact(&sink, s, sent)?;
    dev.close(handle).map_err(|e| format!("close: {e}"))
}

fn expect_err(
    what: &str,
    got: Result<usize, Win32Error>,
    want: u32,
    log: &mut Vec<String>,
) -> Result<(), String> {
    match got {
        Err(Win32Error(code)) if code == want => {
            log.push(format!("{what}={code}"));
            Ok(())
        }
        other => Err(format!("{what}: expected error {want}, got {other:?}")),
    }
}

fn bad_input() -> Outcome {
    let dev = open()?;
    let other = open()?;
    let sink = sink()?;
    let handle = connect(&dev, &sink, 0)?;
    let foreign = connect(&other, &sink, 0)?;
    let mut log = Vec::new();
    let one = [WireSegment { offset: 0, len: 4 }];
    let mut payload = vec![0u8; 64];
    let send_raw = |input: &[u8], payload: &mut [u8]| dev.ioctl(IOCTL_WSKSEND_SEND, input, payload);

    expect_err(
        "unknown-handle",
        dev.send(handle + 1000, 0, &mut payload, &one),
        ERROR_INVALID_HANDLE,
        &mut log,
    )?;
    expect_err(
        "other-file-handle",
        dev.send(foreign, 0, &mut payload, &one),
        ERROR_INVALID_HANDLE,
        &mut log,
    )?;
    expect_err(
        "zero-segments",
        dev.send(handle, 0, &mut payload, &[]),
        ERROR_INVALID_PARAMETER,
        &mut log,
    )?;
    expect_err(
        "segment-outside",
        dev.send(
            handle,
            0,
            &mut payload,
            &[WireSegment { offset: 60, len: 8 }],
        ),
        ERROR_INVALID_PARAMETER,
        &mut log,
    )?;
    expect_err(
        "empty-segment",
        dev.send(
            handle,
            0,
            &mut payload,
            &[WireSegment { offset: 0, len: 0 }],
        ),
        ERROR_INVALID_PARAMETER,
        &mut log,
    )?;
    expect_err(
        "offset-overflow",
        dev.send(
            handle,
            0,
            &mut payload,
            &[WireSegment {
                offset: u32::MAX,
                len: 2,
            }],
        ),
        ERROR_INVALID_PARAMETER,
        &mut log,
    )?;
    expect_err(
        "msg-oob",
        dev.send(handle, MSG_OOB, &mut payload, &one),
        ERROR_NOT_SUPPORTED,
        &mut log,
    )?;
    let mut input = vec![0u8; SendRequest::HEADER_SIZE + 8];
    let _ = SendRequest::emit(&mut input, handle, 0, &one);
    expect_err(
        "short-input",
        send_raw(&input[..10], &mut payload),
        ERROR_INSUFFICIENT_BUFFER,
        &mut log,
    )?;
    let mut wrong = input.clone();
    wrong[4..8].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
    expect_err(
        "wrong-version",
        send_raw(&wrong, &mut payload),
        ERROR_REVISION_MISMATCH,
        &mut log,
    )?;
    expect_err(
        "no-payload",
        send_raw(&input, &mut []),
        ERROR_INVALID_PARAMETER,
        &mut log,
    )?;
    expect_err(
        "close-unknown",
        dev.close(handle + 1000).map(|()| 0),
        ERROR_INVALID_HANDLE,
        &mut log,
    )?;
    expect_err(
        "close-foreign",
        dev.close(foreign).map(|()| 0),
        ERROR_INVALID_HANDLE,
        &mut log,
    )?;
    expect_err(
        "stats-unknown",
        dev.stats(handle + 1000).map(|_| 0),
        ERROR_INVALID_HANDLE,
        &mut log,
    )?;
    // Nothing above may have changed anything: the connection still sends exactly.
    let s = seed();
    let sent = send_stream(&dev, handle, s, &[1000, 2000], 1, 1, 0)?;
    expect_exact(&sink, s, sent)?;
    let stats = dev.stats(handle).map_err(|e| format!("stats: {e}"))?;
    if stats.errors != 0 {
        return Err(format!("bad input was counted as send errors: {stats:?}"));
    }
    dev.version()
        .map_err(|e| format!("version after bad input: {e}"))?;
    dev.close(handle).map_err(|e| format!("close: {e}"))?;
    other
        .close(foreign)
        .map_err(|e| format!("close foreign: {e}"))?;
    Ok(log.join(" "))
}

fn stats() -> Outcome {
    let dev = open()?;
    let sink = sink()?;
    let before = dev.stats(0).map_err(|e| format!("driver stats: {e}"))?;
    let handle = connect(&dev, &sink, 0)?;
    let s = seed();
    let sizes = vec![10_000; 10];
    let sent = send_stream(&dev, handle, s, &sizes, 2, 1, 0)?;
    expect_exact(&sink, s, sent)?;
    let c = dev.stats(handle).map_err(|e| format!("stats: {e}"))?;
    // The header is one more send of 16 bytes.
    if c.sends != 11
        || c.bytes != sent + 16
        || c.errors != 0
        || c.in_flight != 0
        || c.connections != 1
    {
        return Err(format!(
            "connection stats {c:?} after 11 sends of {} bytes",
            sent + 16
        ));
    }
    let all = dev.stats(0).map_err(|e| format!("driver stats: {e}"))?;
    if all.bytes < before.bytes + sent + 16 || all.connections < 1 {
        return Err(format!("driver stats {all:?} (before {before:?})"));
    }
    dev.close(handle).map_err(|e| format!("close: {e}"))?;
    Ok(format!("connection {c:?}"))
}

fn peer_reset() -> Outcome {
    let dev = open()?;
    let sink = sink()?;
    sink.reset_after(MIB as u64);
    let handle = connect(&dev, &sink, 0)?;
    let s = seed();
    let sizes = vec![256 << 10; 256];
    let err = match send_stream(&dev, handle, s, &sizes, 4, 1, 0) {
        Ok(n) => return Err(format!("all {n} bytes reported sent to a peer that reset")),
        Err(e) => e,
    };
    // Later sends on the dead connection fail too, with a clear error.
    let mut payload = vec![0u8; 16];
    let after = dev.send(
        handle,
        0,
        &mut payload,
        &[WireSegment { offset: 0, len: 16 }],
    );
    let _ = dev.close(handle);
    healthy(&dev)?;
    if after.is_ok() {
        // Some stacks accept one more send into the buffer before noticing the RST.
        return Ok(format!("failed with: {err}; a later connection works"));
    }
    Ok(format!(
        "failed with: {err}; next send {after:?}; a later connection works"
    ))
}

/// Starts sends until one stays pending for `settle`; returns the pending ones.
fn fill_until_blocked(dev: &Device, handle: u64, sink: &Sink) -> Result<Vec<SendTicket>, String> {
    sink.set_paused(true);
    let s = seed();
    let mut head = header(s, u64::MAX);
    dev.send(handle, 0, &mut head, &[WireSegment { offset: 0, len: 16 }])
        .map_err(|e| format!("header: {e}"))?;
    let mut pending = Vec::new();
    let mut pos = 0u64;
    for _ in 0..6 {
        let (payload, segs) = build_payload(s, pos, 4 * MIB, 1);
        pos += 4 * MIB as u64;
        match dev.start_send(PendingSend::new(handle, 0, payload, &segs)) {
            Ok(ov) => pending.push(ov),
            Err(c) => return Err(format!("send failed at once: {:?}", c.result)),
        }
    }
    // Let the socket buffers fill: completions that arrive now are the ones that fit.
    let settle = Instant::now();
    let mut completed = 0;
    while settle.elapsed() < Duration::from_secs(2) {
        if let Some(c) = dev.next_completion(100) {
            completed += 1;
            if c.result.is_err() {
                return Err(format!("send failed while filling: {:?}", c.result));
            }
            let done = SendTicket::of(&c.send);
            pending.retain(|&p| p != done);
        }
    }
    if pending.is_empty() {
        return Err(format!("all {completed} sends completed: nothing blocked"));
    }
    Ok(pending)
}

fn drain(
    dev: &Device,
    mut count: usize,
    limit: Duration,
) -> Result<Vec<Result<usize, Win32Error>>, String> {
    let start = Instant::now();
    let mut results = Vec::new();
    while count > 0 {
        if start.elapsed() > limit {
            return Err(format!("{count} sends still pending after {limit:?}"));
        }
        if let Some(c) = dev.next_completion(200) {
            results.push(c.result);
            count -= 1;
        }
    }
    Ok(results)
}

fn cancel() -> Outcome {
    let dev = open()?;
    let sink = sink()?;
    let handle = connect(&dev, &sink, 0)?;
    let pending = fill_until_blocked(&dev, handle, &sink)?;
    let target = *pending.last().ok_or("no pending send")?;
    if !dev.cancel(target) {
        return Err("CancelIoEx found nothing to cancel".into());
    }
    let results = drain(&dev, pending.len(), Duration::from_secs(30))?;
    if !results.contains(&Err(Win32Error(ERROR_OPERATION_ABORTED))) {
        return Err(format!("no send completed as aborted: {results:?}"));
    }
    sink.set_paused(false);
    let _ = dev.close(handle);
    healthy(&dev)?;
    Ok(format!(
        "{} pending sends completed: {results:?}; a new connection works",
        pending.len()
    ))
}

fn close_handle() -> Outcome {
    let mut dev = open()?;
    let sink = sink()?;
    let handle = connect(&dev, &sink, 0)?;
    let pending = fill_until_blocked(&dev, handle, &sink)?;
    dev.close_file();
    let results = drain(&dev, pending.len(), Duration::from_secs(30))?;
    if results.iter().any(Result::is_ok) && results.iter().all(Result::is_ok) {
        return Err(format!(
            "pending sends all succeeded after close: {results:?}"
        ));
    }
    sink.set_paused(false);
    healthy(&open()?)?;
    Ok(format!(
        "{} pending sends completed on handle close: {results:?}",
        pending.len()
    ))
}

/// `IOCTL_WSKSCLIENT_RUN` of the kernel-API test driver (`crates/kapi-client`).
const IOCTL_WSKSCLIENT_RUN: u32 =
    ctl_code(FILE_DEVICE_WSKSEND, 0x900, METHOD_BUFFERED, FILE_ANY_ACCESS);

fn kernel_api() -> Outcome {
    let client = Device::open_path("\\\\.\\WsksClient")
        .map_err(|e| format!("open \\\\.\\WsksClient: {e}"))?;
    let sink = sink()?;
    let s = seed();
    let pattern_len = 300_000usize;
    let mut input = vec![0u8; wsksend_protocol::ConnectRequest::WIRE_SIZE];
    let req = wsksend_protocol::ConnectRequest {
        remote: sink.addr(),
        flags: 0,
        timeout_ms: 0,
        max_posted: 0,
    };
    req.emit(&mut input).map_err(|e| format!("emit: {e:?}"))?;
    input.extend_from_slice(&header(s, pattern_len as u64));
    let start = input.len();
    input.resize(start + pattern_len, 0);
    fill(s, 0, &mut input[start..]);
    let total = HEADER_LEN + pattern_len;
    let n = client
        .ioctl(IOCTL_WSKSCLIENT_RUN, &input, &mut [])
        .map_err(|e| format!("WsksClient run: {e}"))?;
    if n != total {
        return Err(format!(
            "the client driver reported {n} of {total} bytes sent"
        ));
    }
    expect_exact(&sink, s, pattern_len as u64)?;
    Ok(format!(
        "{total} bytes through WsksSendBuffers + WsksSendMdl + WsksSendSync, byte-exact"
    ))
}
