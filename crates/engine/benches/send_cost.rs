//! CPU cost of a send through the engine, per MDL-chain length, on the kernel model.
//!
//! Reproduce with `cargo bench -p wsksend-engine --bench send_cost`.
//!
//! Each row opens a connection with the engine's public API to a loopback [`Sink`]
//! (model provider in [`SendMode::Immediate`]: a send is written and completed inside
//! `WskSend`), warms up, then issues [`SENDS`] tiny sends back to back: `N` buffers of
//! [`BUF_LEN`] bytes each, as [`Payload::Nonpaged`] (the engine builds `N` MDLs per
//! send) and as [`Payload::Mdl`] (a chain of `N` MDLs the caller built once; the
//! engine only validates it). The bytes are few, so what is measured is the CPU the
//! engine and the model spend per send: building and freeing MDLs, IRP reuse, the
//! send queue, the model's rule checks and its copy of the bytes, one `write` to a
//! loopback socket, and the completion.
//!
//! Reported per send: the mean over the [`SENDS`] sends of a run, as the median of
//! [`RUNS`] runs (the rows' runs interleaved, each run in a fresh model session):
//! - `wall`: elapsed time from the first send to the last completion;
//! - `thread CPU`: CPU time of the sending thread (`CLOCK_THREAD_CPUTIME_ID`): engine,
//!   model and the inline `write`;
//! - `process CPU`: CPU time of the whole process (`CLOCK_PROCESS_CPUTIME_ID`), which
//!   also counts the sink's reader thread and any provider worker thread.
//!
//! These are model numbers, not Windows numbers: the model takes a global lock per
//! kernel call and keeps freed MDLs in quarantine until the session ends, so they rank
//! costs within the engine rather than predict a kernel's. Each run also ends with the
//! model's checker: a broken kernel rule (or a leak) fails the benchmark.

use std::ffi::c_void;
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use wsksend_engine::client::Client;
use wsksend_engine::connection::{Completion, ConnectOptions, Connection, Payload};
use wsksend_engine::mdl::RawBuf;
use wsksend_ffi::{
    FALSE, IoAllocateMdl, IoFreeMdl, MDL, MmBuildMdlForNonPagedPool, NT_SUCCESS, WSK_FLAG_NODELAY,
};
use wsksend_kernel_model::{SendMode, Sink, session};

/// MDL-chain lengths measured.
const CHAINS: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];
/// Bytes per buffer (one MDL each).
const BUF_LEN: usize = 64;
/// Sends measured per row.
const SENDS: usize = 2_000;
/// Sends before measuring (caches, allocator, socket buffers).
const WARMUP: usize = 200;
/// Runs per row, each in a fresh model session; the table shows the median. A debug
/// build (`cargo test --benches`) only checks that the benchmark works.
const RUNS: usize = if cfg!(debug_assertions) { 1 } else { 5 };
/// Longest wait for completions or for the sink, so the run always ends.
const WAIT: Duration = Duration::from_secs(10);

/// How a row describes its bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// [`Payload::Nonpaged`]: the engine builds one MDL per buffer for each send.
    Nonpaged,
    /// [`Payload::Mdl`]: a chain the caller built once.
    Mdl,
}

impl Kind {
    const fn name(self) -> &'static str {
        match self {
            Self::Nonpaged => "nonpaged",
            Self::Mdl => "mdl",
        }
    }
}

/// Means per send over one run of [`SENDS`] sends, in nanoseconds.
#[derive(Clone, Copy)]
struct Run {
    wall: f64,
    thread_cpu: Option<f64>,
    process_cpu: Option<f64>,
}

/// The [`RUNS`] runs of one payload kind and chain length.
struct Row {
    kind: Kind,
    mdls: usize,
    runs: Vec<Run>,
}

impl Row {
    /// The metric of every run, sorted (`None` if a run lacks it).
    fn sorted(&self, metric: fn(&Run) -> Option<f64>) -> Option<Vec<f64>> {
        let mut values = self.runs.iter().map(metric).collect::<Option<Vec<f64>>>()?;
        values.sort_by(f64::total_cmp);
        (!values.is_empty()).then_some(values)
    }

    fn median(&self, metric: fn(&Run) -> Option<f64>) -> Option<f64> {
        self.sorted(metric).map(|v| v[v.len() / 2])
    }

    fn min(&self, metric: fn(&Run) -> Option<f64>) -> Option<f64> {
        self.sorted(metric).map(|v| v[0])
    }

    fn max(&self, metric: fn(&Run) -> Option<f64>) -> Option<f64> {
        self.sorted(metric).and_then(|v| v.last().copied())
    }
}

const WALL: fn(&Run) -> Option<f64> = |r| Some(r.wall);
const THREAD_CPU: fn(&Run) -> Option<f64> = |r| r.thread_cpu;
const PROCESS_CPU: fn(&Run) -> Option<f64> = |r| r.process_cpu;

/// CPU clocks (Linux `clock_gettime`; `None` elsewhere).
mod cpu {
    #[cfg(target_os = "linux")]
    mod imp {
        use std::ffi::c_int;

        #[repr(C)]
        struct Timespec {
            tv_sec: i64,
            tv_nsec: i64,
        }

        unsafe extern "C" {
            fn clock_gettime(clock: c_int, tp: *mut Timespec) -> c_int;
        }

        /// `CLOCK_PROCESS_CPUTIME_ID` on Linux.
        pub const PROCESS: c_int = 2;
        /// `CLOCK_THREAD_CPUTIME_ID` on Linux.
        pub const THREAD: c_int = 3;

        /// The clock's reading in nanoseconds.
        pub fn read(clock: c_int) -> Option<u128> {
            let mut ts = Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `ts` is a writable `struct timespec` (x86_64/aarch64 Linux layout:
            // two 64-bit fields) that outlives the call; `clock` is a valid clock id.
            let rc = unsafe { clock_gettime(clock, &raw mut ts) };
            if rc != 0 {
                return None;
            }
            let secs = u128::try_from(ts.tv_sec).ok()?;
            let nanos = u128::try_from(ts.tv_nsec).ok()?;
            Some(secs * 1_000_000_000 + nanos)
        }
    }

    /// CPU time of the calling thread, in nanoseconds.
    pub fn thread_ns() -> Option<u128> {
        #[cfg(target_os = "linux")]
        return imp::read(imp::THREAD);
        #[cfg(not(target_os = "linux"))]
        return None;
    }

    /// CPU time of the process (all threads), in nanoseconds.
    pub fn process_ns() -> Option<u128> {
        #[cfg(target_os = "linux")]
        return imp::read(imp::PROCESS);
        #[cfg(not(target_os = "linux"))]
        return None;
    }
}

/// `N` buffers of [`BUF_LEN`] bytes in one block that outlives every send of a row.
struct Buffers {
    mem: Vec<u8>,
    raw: Vec<RawBuf>,
}

impl Buffers {
    fn new(n: usize) -> Self {
        // CAST: truncation to a byte is the point: it makes a pattern.
        let mem: Vec<u8> = (0..n * BUF_LEN).map(|i| i as u8).collect();
        let len = u32::try_from(BUF_LEN).expect("buffer length fits u32");
        let raw = mem
            .chunks_exact(BUF_LEN)
            .map(|c| RawBuf {
                ptr: c.as_ptr(),
                len,
            })
            .collect();
        Self { mem, raw }
    }
}

/// A chain of locked MDLs over a [`Buffers`], built once and freed on drop.
struct Chain {
    mdls: Vec<*mut MDL>,
}

impl Chain {
    fn new(bufs: &Buffers) -> Self {
        let mut mdls: Vec<*mut MDL> = Vec::with_capacity(bufs.raw.len());
        for b in &bufs.raw {
            let va = b.ptr.cast_mut().cast::<c_void>();
            // SAFETY: describing memory has no preconditions; no IRP is given.
            let mdl = unsafe { IoAllocateMdl(va, b.len, FALSE, FALSE, ptr::null_mut()) };
            assert!(!mdl.is_null(), "IoAllocateMdl failed");
            // SAFETY: `mdl` is fresh and describes memory that outlives the chain (the
            // model's stand-in for nonpaged pool).
            unsafe { MmBuildMdlForNonPagedPool(mdl) };
            if let Some(&last) = mdls.last() {
                // SAFETY: `last` is a live MDL of this chain, not in flight yet.
                unsafe { (*last).Next = mdl };
            }
            mdls.push(mdl);
        }
        Self { mdls }
    }

    fn head(&self) -> NonNull<MDL> {
        NonNull::new(self.mdls[0]).expect("a chain has at least one MDL")
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        for &mdl in &self.mdls {
            // SAFETY: ours, from IoAllocateMdl, and no send using it is in flight.
            unsafe { IoFreeMdl(mdl) };
        }
    }
}

/// Completions seen, bytes they reported, and failures.
#[derive(Default)]
struct Tally {
    done: AtomicUsize,
    bytes: AtomicU64,
    failed: AtomicUsize,
}

/// Issues `count` sends of `bufs` (or of `chain`) and waits for their completions.
fn send_many(conn: &Connection, kind: Kind, bufs: &Buffers, chain: Option<&Chain>, count: usize) {
    let tally = Arc::new(Tally::default());
    let length = bufs.mem.len();
    for _ in 0..count {
        let payload = match (kind, chain) {
            (Kind::Mdl, Some(chain)) => Payload::Mdl {
                chain: chain.head(),
                offset: 0,
                length,
            },
            _ => Payload::Nonpaged(&bufs.raw),
        };
        let t = tally.clone();
        let completion = Completion::Closure(Box::new(move |r| {
            if !NT_SUCCESS(r.status) {
                t.failed.fetch_add(1, Ordering::Relaxed);
            }
            // CAST: a byte count of one send fits in u64.
            t.bytes.fetch_add(r.bytes as u64, Ordering::Relaxed);
            t.done.fetch_add(1, Ordering::Release);
        }));
        // SAFETY: `bufs` and `chain` outlive every send: this function waits for all
        // completions below before it returns; the memory stands in for nonpaged pool
        // and the chain's MDLs are locked.
        let sent = unsafe { conn.send(payload, 0, completion) };
        assert!(sent.is_ok(), "send refused");
    }
    let deadline = Instant::now() + WAIT;
    while tally.done.load(Ordering::Acquire) < count {
        assert!(Instant::now() < deadline, "completions did not arrive");
        thread::yield_now();
    }
    // CAST: at most 2,000 * 4,096 bytes.
    let expected = (count * length) as u64;
    assert_eq!(tally.failed.load(Ordering::Relaxed), 0, "a send failed");
    assert_eq!(
        tally.bytes.load(Ordering::Relaxed),
        expected,
        "a send was short"
    );
}

/// Measures one run in its own model session (a fresh model: its tables, and the
/// quarantine of freed MDLs, start empty).
fn measure(kind: Kind, mdls: usize) -> Run {
    let s = session();
    s.set_send_mode(SendMode::Immediate);
    let sink = Sink::v4();
    let client = Client::register().expect("WskRegister");
    let options = ConnectOptions {
        nodelay: true,
        ..ConnectOptions::default()
    };
    let conn = client.connect(sink.addr(), &options).expect("connect");
    let bufs = Buffers::new(mdls);
    let chain = (kind == Kind::Mdl).then(|| Chain::new(&bufs));

    send_many(&conn, kind, &bufs, chain.as_ref(), WARMUP);
    let (t0, p0, w0) = (cpu::thread_ns(), cpu::process_ns(), Instant::now());
    send_many(&conn, kind, &bufs, chain.as_ref(), SENDS);
    let wall = w0.elapsed();
    let (t1, p1) = (cpu::thread_ns(), cpu::process_ns());

    let total = (WARMUP + SENDS) * bufs.mem.len();
    assert!(
        sink.wait_bytes(0, total, WAIT),
        "sink did not get every byte"
    );
    let sends = s.sends();
    assert_eq!(sends.len(), WARMUP + SENDS);
    assert!(
        sends
            .iter()
            .all(|r| r.flags == WSK_FLAG_NODELAY && r.mdl_count == mdls)
    );
    client.close(&conn).expect("close");
    drop(conn);
    Client::shutdown(client).expect("shutdown");
    drop(chain);
    s.finish();

    // CAST: nanoseconds of a run of a few seconds are exact in f64.
    let per_send = |ns: u128| ns as f64 / SENDS as f64;
    let delta = |a: Option<u128>, b: Option<u128>| Some(per_send(b?.checked_sub(a?)?));
    Run {
        wall: per_send(wall.as_nanos()),
        thread_cpu: delta(t0, t1),
        process_cpu: delta(p0, p1),
    }
}

fn micros(ns: Option<f64>) -> String {
    ns.map_or_else(|| "n/a".to_owned(), |ns| format!("{:.2}", ns / 1000.0))
}

fn json_number(ns: Option<f64>) -> String {
    ns.map_or_else(|| "null".to_owned(), |ns| format!("{ns:.0}"))
}

fn main() {
    let started = Instant::now();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "optimised"
    };
    println!("send_cost: CPU cost per send of wsksend-engine on the kernel model");
    println!("reproduce: cargo bench -p wsksend-engine --bench send_cost");
    println!(
        "setup: SendMode::Immediate, loopback sink, NODELAY, {BUF_LEN}-byte buffers; \
         per run {WARMUP} warm-up + {SENDS} measured sends; {RUNS} runs per row \
         (interleaved); {profile} build; {} CPUs",
        thread::available_parallelism().map_or(0, usize::from)
    );
    let mut rows: Vec<Row> = [Kind::Nonpaged, Kind::Mdl]
        .into_iter()
        .flat_map(|kind| {
            CHAINS.into_iter().map(move |mdls| Row {
                kind,
                mdls,
                runs: Vec::new(),
            })
        })
        .collect();
    for _ in 0..RUNS {
        for row in &mut rows {
            row.runs.push(measure(row.kind, row.mdls));
        }
    }
    println!();
    println!(
        "{:<9} {:>5} {:>11} {:>9} {:>14} {:>17} {:>15}",
        "payload", "MDLs", "bytes/send", "wall µs", "thread CPU µs", "(min..max)", "process CPU µs"
    );
    for r in &rows {
        let spread = format!(
            "({}..{})",
            micros(r.min(THREAD_CPU)),
            micros(r.max(THREAD_CPU))
        );
        println!(
            "{:<9} {:>5} {:>11} {:>9} {:>14} {:>17} {:>15}",
            r.kind.name(),
            r.mdls,
            r.mdls * BUF_LEN,
            micros(r.median(WALL)),
            micros(r.median(THREAD_CPU)),
            spread,
            micros(r.median(PROCESS_CPU)),
        );
    }
    println!(
        "(µs per send: mean over {SENDS} sends, median of {RUNS} runs; min..max of the \
         runs' thread CPU)"
    );
    println!();
    for r in &rows {
        println!(
            "{{\"bench\":\"send_cost\",\"payload\":\"{}\",\"mdls\":{},\"bytes_per_send\":{},\
             \"sends\":{SENDS},\"runs\":{RUNS},\"wall_ns_per_send\":{},\
             \"thread_cpu_ns_per_send\":{},\"thread_cpu_ns_per_send_min\":{},\
             \"thread_cpu_ns_per_send_max\":{},\"process_cpu_ns_per_send\":{}}}",
            r.kind.name(),
            r.mdls,
            r.mdls * BUF_LEN,
            json_number(r.median(WALL)),
            json_number(r.median(THREAD_CPU)),
            json_number(r.min(THREAD_CPU)),
            json_number(r.max(THREAD_CPU)),
            json_number(r.median(PROCESS_CPU)),
        );
    }
    println!();
    println!("total run time: {:.1} s", started.elapsed().as_secs_f64());
}
