//! Schedule exploration of a connection's state machine (send, post, complete,
//! cancel, close) on the engine's real code, under the `shuttle` crate's controlled
//! scheduler.
//!
//! Each schedule builds a [`Connection`] over a fake WSK socket defined here, whose
//! `WskSend` and `WskCloseSocket` park IRPs (or complete them inline), and runs as
//! shuttle tasks: two senders, a canceller (`Connection::cancel` of send ids, queued or
//! posted), a closer (`begin_close`) and two completers, which complete parked IRPs in
//! any order through the model's completion walk, possibly while the submitter is still
//! inside engine code just after the provider call. The kernel model's spin locks,
//! completions, `IoCancelIrp` and `KeSetEvent` are the scheduling points
//! ([`wsksend_kernel_model::sched`]); the model's real-socket provider and blocking
//! waits are not used. The per-schedule choices (pipeline depth, whether the provider
//! honours cancel, statuses, which IRP completes next) come from shuttle's seeded RNG.
//!
//! After each schedule: no model violation or leak (use after free, double free, IRP
//! reuse in flight, MDLs, pool), every accepted send's completion ran exactly once and
//! a refused one's never, each sender's sends reached the provider in its order, and
//! the provider saw nothing after `WskCloseSocket`.
//!
//! Schedule `i` runs with seed `first + i` (`WSKSEND_SCHED_FIRST`, default 0;
//! `WSKSEND_SCHEDULES`, default 10,000). `WSKSEND_SCHED_SEED=N` replays one seed. A
//! failing schedule prints its seed (and shuttle its schedule); a crash (a use after
//! free that faults) prints the seed from a signal handler.

use std::cell::Cell;
use std::ffi::c_int;
use std::net::{Ipv4Addr, SocketAddr};
use std::panic::{self, AssertUnwindSafe};
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use shuttle::rand::RngCore;
use shuttle::scheduler::RandomScheduler;
use shuttle::sync::Mutex;
use shuttle::{Config, MaxSteps, Runner};
use wsksend_engine::connection::{
    CloseMode, Completion, ConnectOptions, Connection, Payload, SendId,
};
use wsksend_ffi::inline::IoSetCancelRoutine;
use wsksend_ffi::status::{
    STATUS_CANCELLED, STATUS_CONNECTION_RESET, STATUS_INVALID_HANDLE, STATUS_PENDING,
    STATUS_SUCCESS,
};
use wsksend_ffi::{
    DEVICE_OBJECT, IRP, IoReleaseCancelSpinLock, NTSTATUS, WSK_BUF,
    WSK_PROVIDER_CONNECTION_DISPATCH, WSK_SOCKET,
};
use wsksend_kernel_model::sched::{self, ScheduleHooks};
use wsksend_kernel_model::{self as model};

/// Sender tasks, and sends each makes.
const SENDERS: usize = 2;
const SENDS: usize = 2;
/// Schedules `cargo test` explores.
const DEFAULT_SCHEDULES: u64 = 10_000;

// --- the fake provider ---

/// One IRP the fake provider holds.
struct Parked {
    irp: usize,
    len: usize,
    close: bool,
}

/// What the fake provider saw and holds.
#[derive(Default)]
struct Provider {
    parked: Vec<Parked>,
    /// `(sender, sequence)` of each accepted `WskSend`, in call order.
    sent: Vec<(u8, u8)>,
    /// `WskCloseSocket` was called.
    closed: bool,
    /// The close IRP has been taken for completion.
    close_taken: bool,
    problems: Vec<String>,
}

/// A WSK socket whose provider is this test. `socket` comes first: the engine's
/// `*mut WSK_SOCKET` is a pointer to the whole.
#[repr(C)]
struct FakeSocket {
    socket: WSK_SOCKET,
    provider: Mutex<Provider>,
    /// Whether parked sends get a cancel routine (Windows) or not (Wine).
    honour_cancel: bool,
}

struct Dispatch(WSK_PROVIDER_CONNECTION_DISPATCH);
// SAFETY: a table of function pointers, never written.
unsafe impl Sync for Dispatch {}

static DISPATCH: Dispatch = Dispatch(WSK_PROVIDER_CONNECTION_DISPATCH {
    WskControlSocket: None,
    WskCloseSocket: Some(fake_close),
    WskBind: None,
    WskConnect: None,
    WskGetLocalAddress: None,
    WskGetRemoteAddress: None,
    WskSend: Some(fake_send),
    WskReceive: None,
    WskDisconnect: None,
    WskRelease: None,
});

thread_local! {
    /// The socket of the schedule running on this OS thread (for the cancel routine).
    static CURRENT: Cell<*const FakeSocket> = const { Cell::new(ptr::null()) };
}

fn random(below: u64) -> u64 {
    shuttle::rand::thread_rng().next_u64() % below
}

/// # Safety
/// `socket` is a live `FakeSocket`.
unsafe fn fake<'a>(socket: *mut WSK_SOCKET) -> &'a FakeSocket {
    // SAFETY: the caller's contract; `socket` is the first field of a `FakeSocket`.
    unsafe { &*socket.cast::<FakeSocket>() }
}

unsafe extern "system" fn fake_send(
    socket: *mut WSK_SOCKET,
    buffer: *mut WSK_BUF,
    _flags: u32,
    irp: *mut IRP,
) -> NTSTATUS {
    // SAFETY: the engine only has sockets this test gave it.
    let fake = unsafe { fake(socket) };
    // SAFETY: the WSK contract: `buffer` is a readable WSK_BUF.
    let data = match unsafe { sched::accept(irp, buffer, "WskSend") } {
        Ok(data) => data,
        Err(status) => return status,
    };
    let mut p = fake.provider.lock().unwrap();
    if p.closed {
        p.problems
            .push("WskSend after WskCloseSocket (use of a closed socket)".into());
        drop(p);
        sched::complete(irp, STATUS_INVALID_HANDLE, 0);
        return STATUS_INVALID_HANDLE;
    }
    match data.as_slice() {
        [sender, seq, ..] => p.sent.push((*sender, *seq)),
        _ => p.problems.push(format!("WskSend of {} bytes", data.len())),
    }
    if random(4) == 0 {
        // Inline completion, as a provider may do.
        drop(p);
        sched::complete(irp, STATUS_SUCCESS, data.len());
        return STATUS_SUCCESS;
    }
    sched::mark_pending(irp);
    if fake.honour_cancel {
        // SAFETY: the IRP is ours while parked; the routine is set before it is listed.
        unsafe { IoSetCancelRoutine(irp, Some(fake_cancel)) };
        // SAFETY: as above; a cancel that came first set `Cancel`.
        let cancelled = unsafe { (*irp).Cancel } != 0;
        // SAFETY: as above.
        if cancelled && unsafe { IoSetCancelRoutine(irp, None) }.is_some() {
            drop(p);
            sched::complete(irp, STATUS_CANCELLED, 0);
            return STATUS_PENDING;
        }
    }
    p.parked.push(Parked {
        irp: irp as usize,
        len: data.len(),
        close: false,
    });
    STATUS_PENDING
}

unsafe extern "system" fn fake_close(socket: *mut WSK_SOCKET, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: the engine only has sockets this test gave it.
    let fake = unsafe { fake(socket) };
    // SAFETY: a null buffer.
    if let Err(status) = unsafe { sched::accept(irp, ptr::null(), "WskCloseSocket") } {
        return status;
    }
    let mut p = fake.provider.lock().unwrap();
    if p.closed {
        p.problems.push("WskCloseSocket twice".into());
    }
    p.closed = true;
    let sends_parked = p.parked.iter().any(|e| !e.close);
    if !sends_parked && random(4) == 0 {
        p.close_taken = true;
        drop(p);
        sched::complete(irp, STATUS_SUCCESS, 0);
        return STATUS_SUCCESS;
    }
    sched::mark_pending(irp);
    p.parked.push(Parked {
        irp: irp as usize,
        len: 0,
        close: true,
    });
    STATUS_PENDING
}

/// Cancel routine of parked sends: completes the IRP if it is still parked.
unsafe extern "system" fn fake_cancel(_device: *mut DEVICE_OBJECT, irp: *mut IRP) {
    // SAFETY: IoCancelIrp calls us with a live IRP and the cancel lock held.
    let irql = unsafe { (*irp).CancelIrql };
    // SAFETY: we hold the cancel spin lock (IoCancelIrp's contract).
    unsafe { IoReleaseCancelSpinLock(irql) };
    // SAFETY: the schedule's socket outlives every task that can cancel.
    let fake = unsafe { &*CURRENT.with(Cell::get) };
    let mut p = fake.provider.lock().unwrap();
    let i = p.parked.iter().position(|e| e.irp == irp as usize);
    let found = i.map(|i| p.parked.remove(i));
    drop(p);
    if found.is_some() {
        sched::complete(irp, STATUS_CANCELLED, 0);
    }
}

/// A completer task: completes parked IRPs, picked at random (the close only once no
/// send is parked), until the close has completed and nothing is parked.
fn completer(fake: &FakeSocket) {
    loop {
        let mut p = fake.provider.lock().unwrap();
        let sends: Vec<usize> = (0..p.parked.len())
            .filter(|&i| !p.parked[i].close)
            .collect();
        let pick = if sends.is_empty() {
            p.parked.iter().position(|e| e.close)
        } else {
            // CAST: a small count.
            Some(sends[random(sends.len() as u64) as usize])
        };
        let Some(i) = pick else {
            let done = p.close_taken;
            drop(p);
            if done {
                return;
            }
            shuttle::thread::yield_now();
            continue;
        };
        let e = p.parked.remove(i);
        if e.close {
            p.close_taken = true;
        }
        drop(p);
        let irp = e.irp as *mut IRP;
        if e.close {
            sched::complete(irp, STATUS_SUCCESS, 0);
            continue;
        }
        // SAFETY: the IRP is ours (taken off the list); clear the cancel routine first.
        unsafe { IoSetCancelRoutine(irp, None) };
        // SAFETY: as above.
        let cancelled = unsafe { (*irp).Cancel } != 0;
        let (status, bytes) = match random(5) {
            _ if cancelled => (STATUS_CANCELLED, 0),
            0 => (STATUS_CONNECTION_RESET, 0),
            _ => (STATUS_SUCCESS, e.len),
        };
        sched::complete(irp, status, bytes);
    }
}

// --- one schedule ---

/// Completions counted per `(sender, send)`, and which sends were accepted.
struct Tally {
    runs: [[AtomicU32; SENDS]; SENDERS],
    accepted: [[AtomicU32; SENDS]; SENDERS],
}

fn task_id() -> usize {
    usize::from(shuttle::current::me())
}

const HOOKS: ScheduleHooks = ScheduleHooks {
    yield_now: shuttle::thread::yield_now,
    task_id,
};

/// `*const FakeSocket` that tasks may carry.
#[derive(Clone, Copy)]
struct SocketRef(*const FakeSocket);
// SAFETY: the socket outlives every task (joined before it is dropped); its state is
// behind a shuttle mutex.
unsafe impl Send for SocketRef {}
impl SocketRef {
    fn get(&self) -> &FakeSocket {
        // SAFETY: see the `Send` impl.
        unsafe { &*self.0 }
    }
}

fn one_schedule() {
    sched::set_hooks(Some(HOOKS));
    let session = model::session();
    let honour_cancel = random(2) == 0;
    let fake = Box::new(FakeSocket {
        socket: WSK_SOCKET {
            Dispatch: (&raw const DISPATCH.0).cast(),
        },
        provider: Mutex::new(Provider::default()),
        honour_cancel,
    });
    CURRENT.with(|c| c.set(&raw const *fake));
    let options = ConnectOptions {
        // CAST: 1..=3.
        max_posted: random(3) as usize + 1,
        ..ConnectOptions::default()
    };
    // The engine and the fake provider only read the socket through this pointer.
    let socket = NonNull::from(&fake.socket);
    let remote = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
    // SAFETY: a fake connection socket whose dispatch table is a connection dispatch;
    // it lives until after the connection is gone.
    let conn = unsafe { Connection::new(socket, remote, &options) }.expect("connection");
    let tally = Arc::new(Tally {
        runs: Default::default(),
        accepted: Default::default(),
    });
    let sref = SocketRef(&raw const *fake);
    let mut tasks = Vec::new();
    for s in 0..SENDERS {
        let conn = conn.clone();
        let tally = Arc::clone(&tally);
        tasks.push(shuttle::thread::spawn(move || {
            for k in 0..SENDS {
                let t = Arc::clone(&tally);
                let completion = Completion::Closure(Box::new(move |_| {
                    t.runs[s][k].fetch_add(1, Ordering::SeqCst);
                }));
                // CAST: small indices.
                let payload = Payload::Owned(vec![s as u8, k as u8, 0xA0, 0xA1]);
                // SAFETY: an owned payload borrows nothing.
                match unsafe { conn.send(payload, 0, completion) } {
                    Ok(_) => {
                        tally.accepted[s][k].fetch_add(1, Ordering::SeqCst);
                    }
                    Err(refused) => drop(refused.completion),
                }
            }
        }));
    }
    {
        let conn = conn.clone();
        tasks.push(shuttle::thread::spawn(move || {
            // Ids are handed out from 1 in the order sends are built.
            // CAST: small counts.
            let total = (SENDERS * SENDS) as u64;
            for _ in 0..2 {
                let id = SendId(random(total) + 1);
                let _ = conn.cancel(id);
            }
        }));
    }
    {
        let conn = conn.clone();
        tasks.push(shuttle::thread::spawn(move || {
            for _ in 0..random(4) {
                shuttle::thread::yield_now();
            }
            conn.begin_close(CloseMode::Abortive);
        }));
    }
    for _ in 0..2 {
        tasks.push(shuttle::thread::spawn(move || completer(sref.get())));
    }
    for t in tasks {
        t.join().expect("task");
    }
    let mut problems = std::mem::take(&mut fake.provider.lock().unwrap().problems);
    for s in 0..SENDERS {
        for k in 0..SENDS {
            let runs = tally.runs[s][k].load(Ordering::SeqCst);
            let accepted = tally.accepted[s][k].load(Ordering::SeqCst);
            if runs != accepted {
                problems.push(format!(
                    "send {k} of sender {s}: accepted {accepted}, completion ran {runs} time(s)"
                ));
            }
        }
    }
    let sent = fake.provider.lock().unwrap().sent.clone();
    for s in 0..SENDERS {
        // CAST: a small index.
        let order: Vec<u8> = sent
            .iter()
            .filter(|(x, _)| *x == s as u8)
            .map(|&(_, k)| k)
            .collect();
        if order.windows(2).any(|w| w[0] >= w[1]) {
            problems.push(format!(
                "sender {s}'s sends reached the provider as {order:?}"
            ));
        }
    }
    if !fake.provider.lock().unwrap().parked.is_empty() {
        problems.push("IRPs still parked at the end".into());
    }
    let stats = conn.stats();
    if stats.in_flight != 0 {
        problems.push(format!(
            "every task is done, yet the connection lists {} send(s) queued or posted",
            stats.in_flight
        ));
    }
    if problems.is_empty() {
        drop(conn);
    } else {
        // Not dropped: its `Drop` asserts what the problem already says.
        std::mem::forget(conn);
        let violations = session.violations();
        panic!(
            "schedule problems:\n  {}\nmodel violations so far: {violations:#?}",
            problems.join("\n  ")
        );
    }
    // Violations and leaks (IRPs, MDLs, pool): panics listing them.
    session.finish();
    drop(fake);
    sched::set_hooks(None);
}

// --- the runner ---

/// Seed of the schedule running now (for the crash handler).
static RUNNING_SEED: AtomicU64 = AtomicU64::new(u64::MAX);

unsafe extern "C" {
    fn signal(signum: c_int, handler: usize) -> usize;
    fn write(fd: c_int, buf: *const u8, count: usize) -> isize;
    fn _exit(status: c_int) -> !;
}

const SIGBUS: c_int = 7;
const SIGSEGV: c_int = 11;

/// Reports the running seed on a memory fault (a use after free of driver memory),
/// which a panic cannot catch, and exits.
extern "C" fn on_fault(_sig: c_int) {
    let seed = RUNNING_SEED.load(Ordering::SeqCst);
    let mut digits = [0u8; 20];
    let mut n = seed;
    let mut i = digits.len();
    loop {
        i -= 1;
        // CAST: a decimal digit.
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let parts: [&[u8]; 3] = [
        b"\nschedule exploration: memory fault (use after free?) in the schedule with seed ",
        &digits[i..],
        b"\nreplay: WSKSEND_SCHED_SEED=<seed> cargo test -p wsksend-engine --test schedule\n",
    ];
    for part in parts {
        // SAFETY: writing a live buffer to stderr (async-signal-safe).
        unsafe { write(2, part.as_ptr(), part.len()) };
    }
    // SAFETY: ends the process at once (async-signal-safe).
    unsafe { _exit(70) };
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Runs the schedules with seeds `first..first + count`; panics at the first failure.
fn explore(first: u64, count: u64) {
    // SAFETY: installing a handler that only writes and exits.
    unsafe { signal(SIGSEGV, on_fault as extern "C" fn(c_int) as usize) };
    // SAFETY: as above.
    unsafe { signal(SIGBUS, on_fault as extern "C" fn(c_int) as usize) };
    let start = Instant::now();
    for seed in first..first + count {
        RUNNING_SEED.store(seed, Ordering::SeqCst);
        let mut config = Config::new();
        config.stack_size = 64 * 1024;
        config.max_steps = MaxSteps::FailAfter(100_000);
        let runner = Runner::new(RandomScheduler::new_from_seed(seed, 1), config);
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| runner.run(one_schedule)));
        if outcome.is_err() {
            sched::set_hooks(None);
            panic!(
                "schedule exploration: the schedule with seed {seed} failed (see above); \
                 replay: WSKSEND_SCHED_SEED={seed} cargo test -p wsksend-engine --test schedule"
            );
        }
    }
    RUNNING_SEED.store(u64::MAX, Ordering::SeqCst);
    println!(
        "schedule exploration: {count} schedules (seeds {first}..{}), 0 violations, {:.1} s",
        first + count,
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn send_cancel_close_complete_schedules_keep_every_rule() {
    if let Some(seed) = env_u64("WSKSEND_SCHED_SEED") {
        explore(seed, 1);
        return;
    }
    let first = env_u64("WSKSEND_SCHED_FIRST").unwrap_or(0);
    let count = env_u64("WSKSEND_SCHEDULES").unwrap_or(DEFAULT_SCHEDULES);
    explore(first, count);
}
