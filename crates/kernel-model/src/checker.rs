//! The model's global state, the rules it checks, fault injection, and test sessions.
//!
//! # Locking
//! All tables live in one [`State`] behind one mutex. That mutex is innermost: code
//! holding it never takes another lock (a socket's, an event's) and never calls driver
//! code (completion or cancel routines). Per-socket locks may be held while taking it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use wsksend_ffi::{DISPATCH_LEVEL, NTSTATUS};

use crate::irp::IrpRec;
use crate::mdl::MdlRec;
use crate::pool::PoolRec;
use crate::sync::{self, EventObj};
use crate::wsk::{RegRec, SockRec};

/// A kernel rule the checker enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// An object the model freed (IRP, MDL, socket, pool block) was passed back.
    UseAfterFree,
    /// An object was freed twice.
    DoubleFree,
    /// An object was still allocated (or a socket open, an NPI captured, a client
    /// registered) when the session finished.
    Leak,
    /// `WSK_BUF.Length` exceeds the bytes the MDL chain describes after `Offset`.
    LengthBeyondChain,
    /// `WSK_BUF.Offset` is not inside the first MDL.
    OffsetBeyondFirstMdl,
    /// An MDL of a `WSK_BUF` chain is not locked.
    UnlockedMdlInFlight,
    /// An MDL (or the source of a partial MDL) was unlocked or freed while an IRP that
    /// uses it was in flight.
    MdlReleasedInFlight,
    /// An IRP was freed while the provider owned it.
    IrpFreedInFlight,
    /// An IRP was reused (`IoReuseIrp`, or passed to the provider) while in flight.
    IrpReusedInFlight,
    /// A completion routine of a driver-allocated IRP did not return
    /// `STATUS_MORE_PROCESSING_REQUIRED` (or none ran), so the I/O manager would have
    /// freed the IRP.
    CompletionRoutineReturn,
    /// A wait at `DISPATCH_LEVEL` whose timeout is not zero (null, relative, or an
    /// absolute time, even one already past).
    WaitAtDispatch,
    /// A send lacked the flags required by [`Session::require_send_flags`].
    FlagDropped,
    /// An IRP reached the provider without a stack location left for it.
    NoStackLocation,
    /// `IoBuildPartialMdl` with a range outside the source MDL.
    PartialOutsideSource,
    /// A spin lock was released while not held (or by a thread that does not hold it),
    /// or acquired again by its holder.
    BadSpinLockRelease,
    /// `ExFreePoolWithTag` with a tag other than the allocation's.
    PoolTagMismatch,
    /// `WskDeregister` while sockets are open or provider NPIs are captured.
    DeregisterWithOpenSockets,
    /// A pointer the model never handed out (IRP, MDL, pool block, socket, event,
    /// registration) was passed to it.
    UnknownObject,
    /// A pool block was freed while an in-flight MDL described its memory.
    BufferFreedInFlight,
    /// An MDL locked with `MmProbeAndLockPages` was freed without `MmUnlockPages`.
    LockedMdlFreed,
    /// A routine was called above the IRQL it allows (for example `WskDeregister` at
    /// `DISPATCH_LEVEL`).
    IrqlTooHigh,
    /// An "infinite" wait lasted longer than the session's hang limit
    /// ([`Session::set_hang_limit`]); the wait gave up.
    Hang,
    /// Driver code ran after the driver's unload returned ([`Session::unloaded`]): a
    /// completion routine was called, a routine set without
    /// `IoSetCompletionRoutineEx` was still running (the image would be unmapped under
    /// it), or driver pool was freed.
    RunAfterUnload,
    /// Any other misuse of a kernel or WSK routine (the detail says which), for example
    /// locking an MDL twice or resubmitting an IRP without `IoReuseIrp`.
    Misuse,
    /// Driver code run through [`crate::lowres::driver`] panicked: in the kernel the
    /// driver's panic handler bugchecks. Typically an allocation failure (injected by
    /// the low-resources simulation) answered with `unwrap`/`expect` instead of a
    /// status.
    DriverPanic,
}

/// One broken rule, with what happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The rule.
    pub rule: Rule,
    /// What the model saw.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.rule, self.detail)
    }
}

/// What one `WskSend` that passed the checker's validation asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendRecord {
    /// `Flags` (for example `WSK_FLAG_NODELAY`).
    pub flags: u32,
    /// `WSK_BUF.Offset`.
    pub offset: u32,
    /// `WSK_BUF.Length`.
    pub length: usize,
    /// MDLs in the chain.
    pub mdl_count: usize,
}

/// A model operation that a [`Fault`] can be injected into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// `WskSocket`.
    Socket,
    /// `WskBind`.
    Bind,
    /// `WskConnect`.
    Connect,
    /// `WskSend`.
    Send,
    /// `WskDisconnect`.
    Disconnect,
    /// `WskCloseSocket`.
    Close,
    /// `WskCaptureProviderNPI`.
    Capture,
    /// `IoAllocateIrp` (only [`Fault::Fail`]: returns null).
    AllocIrp,
    /// `IoAllocateMdl` (only [`Fault::Fail`]: returns null).
    AllocMdl,
    /// `ExAllocatePoolWithTag` (only [`Fault::Fail`]: returns null).
    AllocPool,
}

/// How the next call of an [`Op`] misbehaves (or behaves).
///
/// Not every fault applies to every op; one that does not apply behaves as
/// [`Fault::CompleteImmediately`] (or as no fault for the allocation ops).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Do the operation and complete the IRP inside the call, returning its status.
    /// (If earlier operations of the socket are still queued, or a send would block on
    /// a full socket buffer, the worker finishes it and the call returns
    /// `STATUS_PENDING`.)
    CompleteImmediately,
    /// Like [`Fault::CompleteImmediately`] but return `STATUS_PENDING` after completing
    /// (what Wine's provider always does).
    CompleteReturnPending,
    /// Return `STATUS_PENDING`; a provider thread does the operation and completes.
    PendThenComplete,
    /// Complete the IRP with this status without doing anything, and return it. For
    /// `Capture` and the allocation ops: fail with this status (or null).
    Fail(NTSTATUS),
    /// Return this status and never complete (nor touch) the IRP: Wine's stubs do this.
    FailWithoutCompleting(NTSTATUS),
    /// Park the IRP with a cancel routine: `IoCancelIrp` or closing the socket
    /// completes it with `STATUS_CANCELLED`.
    PendUntilCancelled,
    /// Park the IRP without a cancel routine: only closing the socket completes it
    /// (Wine's behaviour).
    PendIgnoringCancel,
    /// Send only the first half (rounded down) and complete with success and
    /// `Information` = that half.
    Partial,
    /// If the send's flags contain any of these, complete with `STATUS_NOT_SUPPORTED`.
    RejectFlags(u32),
    /// Return `STATUS_PENDING`; a provider thread waits this long, then does the
    /// operation and completes.
    Pend(Duration),
}

/// Default completion mode of sends that have no injected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SendMode {
    /// Write and complete inside `WskSend` and return the status. A send queued
    /// behind earlier pending operations of the socket, or one that would block on a
    /// full socket buffer, is finished by the worker instead (`STATUS_PENDING`).
    #[default]
    Immediate,
    /// Return `STATUS_PENDING`; the socket's worker thread writes and completes.
    Pended,
    /// Write inside `WskSend` (in call order), then complete each send on a thread of
    /// its own and return `STATUS_PENDING`: completions of different sends run at once
    /// on different threads, in any order, and often while the submitting thread is
    /// still inside the driver just after the call — all of which Windows may do.
    Concurrent,
}

/// The whole model state.
pub(crate) struct State {
    pub violations: Vec<Violation>,
    pub sends: Vec<SendRecord>,
    pub required_flags: u32,
    pub send_mode: SendMode,
    pub max_pending: usize,
    pub hang_limit: Duration,
    pub faults: BTreeMap<Op, VecDeque<Fault>>,
    pub irps: BTreeMap<usize, IrpRec>,
    pub mdls: BTreeMap<usize, MdlRec>,
    /// MDLs whose `in_flight` count is not zero (an index into `mdls`).
    pub in_flight_mdls: BTreeSet<usize>,
    pub pool: BTreeMap<usize, PoolRec>,
    pub freed_pool: BTreeSet<usize>,
    pub events: BTreeMap<usize, Arc<EventObj>>,
    pub sockets: BTreeMap<usize, SockRec>,
    pub registrations: BTreeMap<usize, RegRec>,
    /// IRPs whose completion routine was set with `IoSetCompletionRoutineEx`, with the
    /// device object the I/O manager references until the routine returns.
    pub ex_routines: BTreeMap<usize, usize>,
    /// Completion routines of driver-allocated IRPs running now, and how many of them
    /// were set without `IoSetCompletionRoutineEx`.
    pub routines_running: usize,
    pub plain_routines_running: usize,
    /// The test said the driver's unload has returned.
    pub unloaded: bool,
    /// Test code to run at the next `IoSetCompletionRoutineEx` (a driver preparing an
    /// IRP for a provider call): lets a test act in exactly that window.
    pub on_arm: VecDeque<Box<dyn FnOnce() + Send>>,
}

impl State {
    const fn new() -> Self {
        Self {
            violations: Vec::new(),
            sends: Vec::new(),
            required_flags: 0,
            send_mode: SendMode::Immediate,
            max_pending: usize::MAX,
            hang_limit: Duration::from_secs(30),
            faults: BTreeMap::new(),
            irps: BTreeMap::new(),
            mdls: BTreeMap::new(),
            in_flight_mdls: BTreeSet::new(),
            pool: BTreeMap::new(),
            freed_pool: BTreeSet::new(),
            events: BTreeMap::new(),
            sockets: BTreeMap::new(),
            registrations: BTreeMap::new(),
            ex_routines: BTreeMap::new(),
            routines_running: 0,
            plain_routines_running: 0,
            unloaded: false,
            on_arm: VecDeque::new(),
        }
    }

    /// Records a broken rule.
    pub fn violate(&mut self, rule: Rule, detail: impl Into<String>) {
        self.violations.push(Violation {
            rule,
            detail: detail.into(),
        });
    }

    /// Takes the next injected fault of `op`, if any.
    pub fn take_fault(&mut self, op: Op) -> Option<Fault> {
        self.faults.get_mut(&op).and_then(VecDeque::pop_front)
    }
}

static STATE: Mutex<State> = Mutex::new(State::new());
static TEST_LOCK: Mutex<()> = Mutex::new(());
/// Bumped by every reset; provider threads of an older session stop calling into
/// driver code.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Locks the model state (tolerating poisoning: a panicking test must not break the
/// next one).
pub(crate) fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Records a broken rule.
pub(crate) fn violation(rule: Rule, detail: impl Into<String>) {
    state().violate(rule, detail);
}

/// The current session generation.
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// Locks a mutex, tolerating poisoning.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts a test session: waits for other sessions to end, resets the model and
/// returns the guard that keeps other tests out until it is dropped or finished.
#[must_use]
pub fn session() -> Session {
    let guard = TEST_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    reset();
    Session { _guard: guard }
}

/// A test's exclusive use of the model. Dropping it without [`Session::finish`]
/// (a test that panicked) resets the model without checking anything.
pub struct Session {
    _guard: MutexGuard<'static, ()>,
}

impl Session {
    /// Makes the next call of `op` behave as `fault` (faults of one op form a FIFO).
    pub fn inject(&self, op: Op, fault: Fault) {
        state().faults.entry(op).or_default().push_back(fault);
    }

    /// Sets how sends without an injected fault complete (default
    /// [`SendMode::Immediate`]).
    pub fn set_send_mode(&self, mode: SendMode) {
        state().send_mode = mode;
    }

    /// Emulates Wine's limit: operations that would pend while `n` operations of the
    /// same socket are already pending fail with `STATUS_UNSUCCESSFUL`
    /// (default `usize::MAX`: unlimited).
    pub fn set_max_pending(&self, n: usize) {
        state().max_pending = n;
    }

    /// Every later send whose flags lack any of `flags` is a [`Rule::FlagDropped`].
    pub fn require_send_flags(&self, flags: u32) {
        state().required_flags = flags;
    }

    /// How long a `KeWaitForSingleObject` without timeout may block before it records
    /// [`Rule::Hang`] and returns `STATUS_TIMEOUT` (default 30 s), so a broken driver
    /// fails its test instead of hanging it.
    pub fn set_hang_limit(&self, limit: Duration) {
        state().hang_limit = limit;
    }

    /// Declares that the driver's unload (or teardown) has just returned: from now on
    /// any completion routine called, any routine still running that was set without
    /// `IoSetCompletionRoutineEx`, and any free of driver pool is a
    /// [`Rule::RunAfterUnload`]. (A routine set with `IoSetCompletionRoutineEx` may
    /// still be returning: the I/O manager's device reference keeps the image.)
    pub fn unloaded(&self) {
        let mut st = state();
        st.unloaded = true;
        let plain = st.plain_routines_running;
        if plain > 0 {
            st.violate(
                Rule::RunAfterUnload,
                format!(
                    "{plain} completion routine(s) set without IoSetCompletionRoutineEx still \
                     running when unload returned"
                ),
            );
        }
    }

    /// Runs `f` (on the driver's thread, without model locks held) when the driver
    /// next calls `IoSetCompletionRoutineEx`, that is while it prepares an IRP right
    /// before a provider call: a race that Windows allows (another thread acting in
    /// that window) made deterministic.
    pub fn on_next_arm(&self, f: impl FnOnce() + Send + 'static) {
        state().on_arm.push_back(Box::new(f));
    }

    /// Turns the low-resources simulation on for the rest of the session (it is off
    /// at the start of every session): driver allocations fail as `config` says
    /// ([`crate::lowres`]). Replaces an earlier configuration; the counters (and the
    /// numbering of driver allocations) go on for the whole session.
    pub fn low_resources(&self, config: crate::LowResources) {
        crate::lowres::configure(Some(config));
    }

    /// Turns the low-resources simulation off until the next
    /// [`Session::low_resources`] (the counters keep their values).
    pub fn low_resources_off(&self) {
        crate::lowres::configure(None);
    }

    /// What the low-resources simulation did so far: driver allocations decided on
    /// and failures injected, by kind.
    #[must_use]
    pub fn low_resources_stats(&self) -> crate::LowResStats {
        crate::lowres::stats()
    }

    /// Violations recorded so far.
    #[must_use]
    pub fn violations(&self) -> Vec<Violation> {
        state().violations.clone()
    }

    /// Sends that passed validation so far, in call order.
    #[must_use]
    pub fn sends(&self) -> Vec<SendRecord> {
        state().sends.clone()
    }

    /// Runs `f` with the calling thread's model IRQL at `DISPATCH_LEVEL`.
    pub fn at_dispatch<R>(&self, f: impl FnOnce() -> R) -> R {
        let _raised = sync::IrqlGuard::raise(DISPATCH_LEVEL);
        f()
    }

    /// IRPs allocated and not freed.
    #[must_use]
    pub fn live_irps(&self) -> usize {
        state().irps.values().filter(|r| !r.freed).count()
    }

    /// MDLs allocated and not freed.
    #[must_use]
    pub fn live_mdls(&self) -> usize {
        state().mdls.values().filter(|r| !r.freed).count()
    }

    /// Pool blocks allocated and not freed.
    #[must_use]
    pub fn live_pool(&self) -> usize {
        state().pool.len()
    }

    /// Sockets created and not closed.
    #[must_use]
    pub fn open_sockets(&self) -> usize {
        state().sockets.values().filter(|s| !s.closed).count()
    }

    /// Waits until no provider thread has work (queued or running) left, up to
    /// `timeout`; parked IRPs do not count. Returns whether the provider is idle.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        wait_idle(timeout)
    }

    /// Ends the test: waits up to about 2 s for the provider to go idle, checks for
    /// leaks, resets the model, and panics listing every violation if there is any.
    ///
    /// # Panics
    /// If any rule was broken or anything leaked.
    pub fn finish(self) {
        let violations = collect_final();
        drop(self);
        if !violations.is_empty() {
            let list: Vec<String> = violations.iter().map(ToString::to_string).collect();
            panic!(
                "kernel model: {} violation(s):\n  {}",
                list.len(),
                list.join("\n  ")
            );
        }
    }

    /// Ends a test that expects `rule` to be broken: asserts that at least one
    /// violation of `rule` was recorded, ignores the rest, and resets the model.
    ///
    /// # Panics
    /// If no violation of `rule` was recorded.
    pub fn finish_expecting(self, rule: Rule) {
        let violations = collect_final();
        drop(self);
        assert!(
            violations.iter().any(|v| v.rule == rule),
            "kernel model: expected a {rule:?} violation, got: {violations:?}"
        );
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        reset();
    }
}

/// Waits for the provider to go idle, then returns every violation including leaks.
fn collect_final() -> Vec<Violation> {
    // Leaks are only leaks once every completion routine has returned: a routine may
    // still be freeing what it owns.
    let deadline = Instant::now() + Duration::from_secs(5);
    while state().routines_running > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    if state().routines_running > 0 {
        violation(
            Rule::Hang,
            "a completion routine still running 5 s after the test ended",
        );
    }
    if !wait_idle(Duration::from_secs(2)) {
        violation(
            Rule::Leak,
            "provider threads still busy 2 s after the test ended",
        );
    }
    let st = state();
    let mut all = st.violations.clone();
    crate::irp::leaks(&st, &mut all);
    crate::mdl::leaks(&st, &mut all);
    crate::pool::leaks(&st, &mut all);
    crate::wsk::leaks(&st, &mut all);
    all
}

fn wait_idle(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if crate::wsk::idle() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Forgets the session: stops provider threads, frees quarantined memory, clears every
/// table and setting. Objects the driver still holds (leaks) are never freed, so a
/// straggler cannot make the allocator hand their memory out again.
fn reset() {
    crate::lowres::reset();
    let old = {
        let mut st = state();
        GENERATION.fetch_add(1, Ordering::AcqRel);
        std::mem::replace(&mut *st, State::new())
    };
    crate::wsk::shut_down(old.sockets.into_values().collect());
    crate::irp::release_quarantine(old.irps);
    crate::mdl::release_quarantine(old.mdls);
}
