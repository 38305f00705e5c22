//! Low-resources simulation, in the spirit of Driver Verifier's "low resources
//! simulation": allocations made by driver code fail, every Nth or at random from a
//! seed, so that every path that handles an allocation failure really runs.
//!
//! # What can fail
//! [`Alloc::Pool`] (`ExAllocatePoolWithTag`), [`Alloc::Irp`] (`IoAllocateIrp`),
//! [`Alloc::Mdl`] (`IoAllocateMdl`), and [`Alloc::Heap`]: the Rust heap. In the real
//! driver the global allocator is nonpaged pool (`wdm-runtime`), so `Arc::new`,
//! `Box::new` or `Vec::push` in driver code are pool allocations that can fail. On the
//! host they go to std's allocator, which never fails; a test crate that installs
//! [`ModelAllocator`] as its global allocator makes them fail like pool:
//!
//! ```text
//! #[global_allocator]
//! static ALLOC: wsksend_kernel_model::ModelAllocator = wsksend_kernel_model::ModelAllocator::new();
//! ```
//!
//! An infallible allocation (`Arc::new`, `Box::new`, `Vec::push`, `vec![]`, `format!`)
//! that gets null calls std's `handle_alloc_error`, which prints
//! `memory allocation of N bytes failed` and **aborts the process**: that is the host's
//! picture of the bug check the same code causes in the kernel (the panic handler of a
//! driver bugchecks), and an honest test failure. Fallible allocations
//! (`try_reserve`, `PoolBox::try_new`, pool and IRP/MDL allocations checked for null)
//! see the failure and must answer it with a status. [`run_seeds`] runs each suite in a
//! child process, so an abort is reported with the seed that caused it.
//!
//! # Whose allocation it is
//! Only allocations made by driver code fail; the model's own and the test's never do.
//! Each thread has a context ([`Context`]), kept in a thread-local and changed only by
//! guards that restore the previous context when dropped, so contexts nest:
//!
//! - a thread starts in [`Context::Harness`] (test code, the sink, provider threads);
//! - a test calls driver code (the engine, the dispatcher, the exported API) inside
//!   [`driver`] (or holding [`DriverGuard`]): [`Context::Driver`];
//! - every routine the model exports (the kernel routines and the WSK provider's
//!   dispatch functions) runs in [`Context::Model`], and remembers the context of its
//!   caller: `IoAllocateIrp` called by driver code may fail, called by the model or the
//!   test it never does;
//! - the model runs a driver's completion or cancel routine in [`Context::Driver`],
//!   whatever thread it runs on;
//! - driver code that calls back into the test (a completion closure, a front end's
//!   token) is in driver context; the test's callback wraps what it allocates in
//!   [`harness`].
//!
//! While a thread is panicking nothing fails (the panic machinery allocates).
//!
//! # Determinism
//! Every allocation driver code makes while a configuration is active is numbered
//! (1, 2, …) across all kinds and threads; whether allocation `k` fails is a pure
//! function of the configuration and `k` ([`LowResources::every_nth`]: `k % n == 0`;
//! [`LowResources::seeded`]: a hash of `(seed, k)`). A scenario whose driver
//! allocations happen in a fixed order (one thread; the model's
//! [`crate::SendMode::Immediate`]) therefore fails the same allocations for the same
//! seed, and replays.
//!
//! # Configuration
//! Through the session: [`crate::Session::low_resources`],
//! [`crate::Session::low_resources_stats`]; the session's reset turns it off.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::checker::{Rule, violation};

/// Whose code a thread is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    /// The test, or a thread of the model's own (never fails).
    Harness,
    /// Driver code: its allocations may fail.
    Driver,
    /// Inside a routine the model exports (never fails).
    Model,
}

/// A kind of allocation the simulation can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Alloc {
    /// `ExAllocatePoolWithTag` (the model's `ExAllocatePool2` is not exported: Wine
    /// lacks it, so the driver does not import it).
    Pool,
    /// `IoAllocateIrp`.
    Irp,
    /// `IoAllocateMdl`.
    Mdl,
    /// The Rust heap, through [`ModelAllocator`].
    Heap,
}

impl Alloc {
    const fn bit(self) -> u64 {
        1 << self as u64
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    EveryNth(u64),
    Seeded { seed: u64, one_in: u64 },
}

/// A low-resources configuration: which driver allocations fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LowResources {
    mode: Mode,
    kinds: u64,
}

impl LowResources {
    /// Fails every `n`th driver allocation (`n` = 1: every one); `n` = 0 is taken as 1.
    #[must_use]
    pub const fn every_nth(n: u64) -> Self {
        Self {
            mode: Mode::EveryNth(if n == 0 { 1 } else { n }),
            kinds: u64::MAX,
        }
    }

    /// Fails each driver allocation with probability `1 / one_in`, decided by a hash
    /// of `seed` and the allocation's number (`one_in` = 0 is taken as 1).
    #[must_use]
    pub const fn seeded(seed: u64, one_in: u64) -> Self {
        Self {
            mode: Mode::Seeded {
                seed,
                one_in: if one_in == 0 { 1 } else { one_in },
            },
            kinds: u64::MAX,
        }
    }

    /// Restricts the failures to `kinds` (default: every kind). Allocations of other
    /// kinds are not counted either.
    #[must_use]
    pub fn only(mut self, kinds: &[Alloc]) -> Self {
        self.kinds = kinds.iter().fold(0, |m, k| m | k.bit());
        self
    }
}

/// What the simulation did in this session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LowResStats {
    /// Driver allocations the simulation decided on (of the configured kinds).
    pub considered: u64,
    /// Of those, how many it failed, by kind: pool, IRP, MDL, heap.
    pub failed_pool: u64,
    /// IRP allocations failed.
    pub failed_irp: u64,
    /// MDL allocations failed.
    pub failed_mdl: u64,
    /// Rust-heap allocations failed.
    pub failed_heap: u64,
}

impl LowResStats {
    /// All failures injected.
    #[must_use]
    pub const fn failed(&self) -> u64 {
        self.failed_pool + self.failed_irp + self.failed_mdl + self.failed_heap
    }
}

// The configuration lives in atomics: the global allocator consults it, so it must
// not take a lock or allocate.
/// 0: off, 1: every nth, 2: seeded.
static MODE: AtomicU64 = AtomicU64::new(0);
static PARAM: AtomicU64 = AtomicU64::new(1);
static SEED: AtomicU64 = AtomicU64::new(0);
static KINDS: AtomicU64 = AtomicU64::new(0);
static COUNTER: AtomicU64 = AtomicU64::new(0);
static FAILED: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static ALLOCATOR_INSTALLED: AtomicBool = AtomicBool::new(false);
/// `WSKSEND_LOWRES_TRACE` is set: print a backtrace at each injected failure.
static TRACE: AtomicU64 = AtomicU64::new(u64::MAX);

thread_local! {
    static CONTEXT: Cell<Context> = const { Cell::new(Context::Harness) };
    /// The context of the caller of the model routine this thread is in.
    static CALLER: Cell<Context> = const { Cell::new(Context::Harness) };
}

fn context() -> Context {
    CONTEXT.try_with(Cell::get).unwrap_or(Context::Harness)
}

/// The calling thread's context.
#[must_use]
pub fn current() -> Context {
    context()
}

/// Sets the calling thread's context until dropped (then restores the previous one).
#[must_use = "the context is restored when the guard is dropped"]
pub struct ContextGuard {
    previous: Context,
    previous_caller: Option<Context>,
}

impl ContextGuard {
    fn set(to: Context, caller: bool) -> Self {
        let previous = CONTEXT.with(|c| c.replace(to));
        let previous_caller = caller.then(|| CALLER.with(|c| c.replace(previous)));
        Self {
            previous,
            previous_caller,
        }
    }
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        CONTEXT.with(|c| c.set(self.previous));
        if let Some(caller) = self.previous_caller {
            CALLER.with(|c| c.set(caller));
        }
    }
}

/// Marks the calling thread as running driver code until dropped.
pub type DriverGuard = ContextGuard;

/// Enters driver code: allocations until the guard drops may fail.
pub fn enter_driver() -> DriverGuard {
    ContextGuard::set(Context::Driver, false)
}

/// Enters test code (for a test callback that driver code calls): allocations until
/// the guard drops never fail.
pub fn enter_harness() -> ContextGuard {
    ContextGuard::set(Context::Harness, false)
}

/// Entry of a model routine: remembers the caller's context (for the allocation
/// routines) and runs the model's own code in [`Context::Model`].
pub(crate) fn enter_model() -> ContextGuard {
    ContextGuard::set(Context::Model, true)
}

/// Runs driver code `f` in [`Context::Driver`].
///
/// A panic out of `f` is recorded as [`Rule::DriverPanic`] (on Windows the driver's
/// panic handler bugchecks) and then continues to unwind.
pub fn driver<R>(f: impl FnOnce() -> R) -> R {
    let result = {
        let _driver = enter_driver();
        panic::catch_unwind(AssertUnwindSafe(f))
    };
    match result {
        Ok(r) => r,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string payload".to_owned());
            violation(
                Rule::DriverPanic,
                format!("driver code panicked (a bug check in the kernel): {message}"),
            );
            panic::resume_unwind(payload)
        }
    }
}

/// Runs test code `f` (called back from driver code) in [`Context::Harness`].
pub fn harness<R>(f: impl FnOnce() -> R) -> R {
    let _harness = enter_harness();
    f()
}

/// Whether the routine of the model the thread is in was called by driver code.
fn caller_is_driver() -> bool {
    context() == Context::Model && CALLER.try_with(Cell::get).ok() == Some(Context::Driver)
}

/// splitmix64: a well-mixed hash of one word.
const fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Decides one allocation of `kind` whose caller is `driver_code`; counts it.
fn decide(kind: Alloc, driver_code: bool, size: usize) -> bool {
    let mode = MODE.load(Ordering::Acquire);
    if mode == 0 || !driver_code || KINDS.load(Ordering::Relaxed) & kind.bit() == 0 {
        return false;
    }
    if std::thread::panicking() {
        return false;
    }
    let k = COUNTER.fetch_add(1, Ordering::AcqRel) + 1;
    let param = PARAM.load(Ordering::Relaxed).max(1);
    let fail = if mode == 1 {
        k.is_multiple_of(param)
    } else {
        mix(SEED.load(Ordering::Relaxed) ^ mix(k)).is_multiple_of(param)
    };
    if fail {
        FAILED[kind as usize].fetch_add(1, Ordering::AcqRel);
        if trace_enabled() {
            trace(kind, k, size);
        }
    }
    fail
}

/// Whether an allocation of `kind` by the caller of the current model routine fails
/// (called by the model's allocation routines).
pub(crate) fn fail_driver_alloc(kind: Alloc) -> bool {
    decide(kind, caller_is_driver(), 0)
}

fn trace_enabled() -> bool {
    let mut t = TRACE.load(Ordering::Relaxed);
    if t == u64::MAX {
        let _model = ContextGuard::set(Context::Model, false);
        t = u64::from(std::env::var_os("WSKSEND_LOWRES_TRACE").is_some());
        TRACE.store(t, Ordering::Relaxed);
    }
    t == 1
}

/// Prints where an injected failure happened (`WSKSEND_LOWRES_TRACE=1`): a backtrace
/// for pool, IRP and MDL failures; one line for a heap failure, because std's
/// allocation-failure path may hold the backtrace lock when it allocates again (run
/// the replay under a debugger to see where an aborting heap allocation was made).
fn trace(kind: Alloc, k: u64, size: usize) {
    let _model = ContextGuard::set(Context::Model, false);
    let mut err = std::io::stderr();
    if kind == Alloc::Heap {
        let _ = writeln!(
            err,
            "lowres: injected Heap failure ({size} bytes) at driver allocation {k}"
        );
        return;
    }
    let bt = std::backtrace::Backtrace::force_capture();
    let _ = writeln!(
        err,
        "lowres: injected {kind:?} failure at driver allocation {k}:\n{bt}"
    );
}

/// Turns the simulation off and zeroes the counters (a new session).
pub(crate) fn reset() {
    MODE.store(0, Ordering::Release);
    COUNTER.store(0, Ordering::Release);
    for f in &FAILED {
        f.store(0, Ordering::Release);
    }
}

/// Applies `config` (a session's configuration; `None`: off); the counters go on.
pub(crate) fn configure(config: Option<LowResources>) {
    MODE.store(0, Ordering::Release);
    let Some(config) = config else {
        return;
    };
    let (mode, param, seed) = match config.mode {
        Mode::EveryNth(n) => (1, n, 0),
        Mode::Seeded { seed, one_in } => (2, one_in, seed),
    };
    PARAM.store(param, Ordering::Release);
    SEED.store(seed, Ordering::Release);
    KINDS.store(config.kinds, Ordering::Release);
    MODE.store(mode, Ordering::Release);
}

/// The counters of the current configuration.
pub(crate) fn stats() -> LowResStats {
    let f = |k: Alloc| FAILED[k as usize].load(Ordering::Acquire);
    LowResStats {
        considered: COUNTER.load(Ordering::Acquire),
        failed_pool: f(Alloc::Pool),
        failed_irp: f(Alloc::Irp),
        failed_mdl: f(Alloc::Mdl),
        failed_heap: f(Alloc::Heap),
    }
}

/// A global allocator for test crates: std's system allocator, except that an
/// allocation made in [`Context::Driver`] fails when the low-resources simulation
/// says so (see the module documentation). `dealloc` always frees.
pub struct ModelAllocator(());

impl ModelAllocator {
    /// The allocator, for a `#[global_allocator]` static.
    #[must_use]
    pub const fn new() -> Self {
        Self(())
    }

    /// Whether a `ModelAllocator` is this process's global allocator (it has served
    /// an allocation), so [`Alloc::Heap`] failures can happen.
    #[must_use]
    pub fn installed() -> bool {
        ALLOCATOR_INSTALLED.load(Ordering::Relaxed)
    }

    fn fails(size: usize) -> bool {
        ALLOCATOR_INSTALLED.store(true, Ordering::Relaxed);
        decide(Alloc::Heap, context() == Context::Driver, size)
    }
}

impl Default for ModelAllocator {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every allocation is forwarded to `System` unchanged, or refused with null
// (which `GlobalAlloc` allows); `dealloc` and a successful `realloc` only ever see
// blocks `System` allocated.
unsafe impl GlobalAlloc for ModelAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if Self::fails(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract (a non-zero-sized layout) is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if Self::fails(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` (every block this allocator hands out does)
        // with `layout`.
        unsafe { System.dealloc(ptr, layout) };
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if Self::fails(new_size) {
            // The old block stays valid, as `GlobalAlloc::realloc` requires on null.
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` came from `System` with `layout`; the caller's contract on
        // `new_size` is `System`'s.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Environment variable that marks the child process of [`run_seeds`].
const CHILD_ENV: &str = "WSKSEND_LOWRES_CHILD";
/// Environment variable that replays one seed in-process.
pub const SEED_ENV: &str = "WSKSEND_LOWRES_SEED";
/// Prefix of the progress lines the child prints.
const PROGRESS: &str = "lowres-seed ";
/// What the child prints when every seed ran.
const DONE: &str = "lowres-all-seeds-ran";

/// Runs `each(seed)` for every seed of `seeds`, for the test function `test_name`
/// (its name as libtest knows it, for example `engine_seeds_0_to_199`).
///
/// The seeds run in a child process (this test binary again, running only this
/// test), which prints each seed before running it. If the child fails — a failed
/// assertion, a leak or violation reported by the session, or an abort because an
/// infallible allocation got null — this panics naming the seed, the child's exit
/// status and its last output, and how to replay it:
/// `WSKSEND_LOWRES_SEED=N cargo test -p CRATE --test FILE TEST -- --exact`
/// runs only seed `N`, in-process (add `WSKSEND_LOWRES_TRACE=1` for a backtrace at
/// each injected failure).
///
/// # Panics
/// If a seed fails, or the child cannot be started or runs no seed.
pub fn run_seeds(test_name: &str, seeds: Range<u64>, mut each: impl FnMut(u64)) {
    if let Some(seed) = std::env::var(SEED_ENV).ok().and_then(|s| s.parse().ok()) {
        if seeds.contains(&seed) {
            each(seed);
        }
        return;
    }
    if std::env::var_os(CHILD_ENV).is_some() {
        for seed in seeds {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{PROGRESS}{seed}");
            let _ = out.flush();
            drop(out);
            each(seed);
        }
        println!("{DONE}");
        return;
    }
    let exe = std::env::current_exe().expect("current test executable");
    let output = std::process::Command::new(exe)
        .args([
            test_name,
            "--exact",
            "--nocapture",
            "--include-ignored",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .env_remove(SEED_ENV)
        .output()
        .expect("start the low-resources child process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let ran: Vec<u64> = stdout
        .lines()
        .filter_map(|l| {
            // libtest's `test NAME ... ` may share the line.
            let at = l.find(PROGRESS)? + PROGRESS.len();
            l[at..].split_whitespace().next()?.parse().ok()
        })
        .collect();
    if output.status.success() && ran.len() == seeds.clone().count() {
        return;
    }
    let tail = |s: &str| {
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    let all_ran = stdout.contains(DONE);
    match ran.last() {
        Some(_) if all_ran => panic!(
            "low-resources {test_name}: every seed passed, then the test failed ({})\n\
             --- child stderr (tail) ---\n{}",
            output.status,
            tail(&stderr)
        ),
        Some(seed) if !output.status.success() => panic!(
            "low-resources {test_name}: seed {seed} failed ({}); replay with \
             {SEED_ENV}={seed} cargo test ... {test_name} -- --exact --nocapture\n\
             --- child stdout (tail) ---\n{}\n--- child stderr (tail) ---\n{}",
            output.status,
            tail(&stdout),
            tail(&stderr)
        ),
        _ => panic!(
            "low-resources {test_name}: the child ran {} of {} seeds ({}); is `{test_name}` \
             the test's exact name?\n{}\n{}",
            ran.len(),
            seeds.count(),
            output.status,
            tail(&stdout),
            tail(&stderr)
        ),
    }
}
