//! IRQL, events and spin locks.
//!
//! Each thread has a *model IRQL* (`PASSIVE_LEVEL` at start). Acquiring a spin lock,
//! running a completion routine and [`crate::Session::at_dispatch`] raise it to
//! `DISPATCH_LEVEL`; routines that may not run that high check it.
//!
//! Events really block: each initialised `KEVENT` is keyed by its address in a side
//! table holding a mutex and a condition variable (the 24 bytes themselves are not
//! used). Spin locks are the `KSPIN_LOCK` word itself used as an atomic holding the
//! owner's per-thread token.

use std::cell::Cell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wsksend_ffi::status::{STATUS_SUCCESS, STATUS_TIMEOUT};
use wsksend_ffi::{
    BOOLEAN, DISPATCH_LEVEL, EVENT_TYPE, KEVENT, KIRQL, KPROCESSOR_MODE, KSPIN_LOCK, NTSTATUS,
    NotificationEvent, PASSIVE_LEVEL, SynchronizationEvent,
};

use crate::checker::{Rule, lock, state, violation};
use crate::kernel_export;

thread_local! {
    static IRQL: Cell<KIRQL> = const { Cell::new(PASSIVE_LEVEL) };
    static TOKEN: usize = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
}
/// Source of per-thread spin-lock owner tokens (never 0, which means "free").
static NEXT_TOKEN: AtomicUsize = AtomicUsize::new(1);
/// The I/O manager's global cancel spin lock.
static CANCEL_LOCK: AtomicUsize = AtomicUsize::new(0);

/// The calling thread's model IRQL.
#[must_use]
pub fn current_irql() -> KIRQL {
    // Schedule exploration: tasks of a controlled scheduler each have their own IRQL.
    crate::sched::task_irql().unwrap_or_else(|| IRQL.with(Cell::get))
}

pub(crate) fn set_irql(irql: KIRQL) {
    if !crate::sched::set_task_irql(irql) {
        IRQL.with(|c| c.set(irql));
    }
}

/// Sets the thread's model IRQL and restores the previous one when dropped.
pub(crate) struct IrqlGuard(KIRQL);

impl IrqlGuard {
    pub fn raise(irql: KIRQL) -> Self {
        let old = current_irql();
        set_irql(irql);
        Self(old)
    }
}

impl Drop for IrqlGuard {
    fn drop(&mut self) {
        set_irql(self.0);
    }
}

/// Records [`Rule::IrqlTooHigh`] if the thread's IRQL is above `max`.
pub(crate) fn check_irql(routine: &str, max: KIRQL) {
    let irql = current_irql();
    if irql > max {
        violation(
            Rule::IrqlTooHigh,
            format!("{routine} called at IRQL {irql} (allowed <= {max})"),
        );
    }
}

// --- spin locks ---

fn acquire(word: &AtomicUsize, what: &str) {
    // Schedule exploration: a scheduling point, and the task's own owner token.
    crate::sched::point();
    let me = crate::sched::task_token().unwrap_or_else(|| TOKEN.with(|t| *t));
    if word.load(Ordering::Relaxed) == me {
        violation(
            Rule::BadSpinLockRelease,
            format!("{what} acquired again by the thread holding it (deadlock on Windows)"),
        );
        return;
    }
    while word
        .compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        if crate::sched::task_token().is_some() {
            crate::sched::point();
        } else {
            thread::yield_now();
        }
    }
}

/// Releases the lock if the calling thread holds it. A lock held by another thread
/// stays with that thread (on Windows its holder would run on with its data corrupted).
fn release(word: &AtomicUsize, what: &str) {
    let me = crate::sched::task_token().unwrap_or_else(|| TOKEN.with(|t| *t));
    match word.compare_exchange(me, 0, Ordering::Release, Ordering::Relaxed) {
        Ok(_) => crate::sched::point(),
        Err(0) => violation(
            Rule::BadSpinLockRelease,
            format!("{what} released while not held"),
        ),
        Err(_) => violation(
            Rule::BadSpinLockRelease,
            format!("{what} released by a thread that does not hold it"),
        ),
    }
}

kernel_export! {
    /// `KeAcquireSpinLockRaiseToDpc`: spins (yielding) until the lock is free, raises
    /// the thread's model IRQL to `DISPATCH_LEVEL` and returns the previous one.
    ///
    /// # Safety
    /// `SpinLock` points to a live, pointer-aligned `KSPIN_LOCK`.
    fn KeAcquireSpinLockRaiseToDpc(SpinLock: *mut KSPIN_LOCK) -> KIRQL {
        if SpinLock.is_null() {
            violation(Rule::Misuse, "KeAcquireSpinLockRaiseToDpc(NULL)");
            return current_irql();
        }
        // SAFETY: the caller guarantees a live, aligned lock word, which every user
        // accesses only through these routines (atomically).
        let word = unsafe { AtomicUsize::from_ptr(SpinLock) };
        let old = current_irql();
        acquire(word, "spin lock");
        set_irql(DISPATCH_LEVEL);
        old
    }
}

kernel_export! {
    /// `KeReleaseSpinLock`: releases the lock and restores the IRQL to `NewIrql`.
    /// Releasing a lock that is not held is a [`Rule::BadSpinLockRelease`].
    ///
    /// # Safety
    /// `SpinLock` points to a live, pointer-aligned `KSPIN_LOCK`.
    fn KeReleaseSpinLock(SpinLock: *mut KSPIN_LOCK, NewIrql: KIRQL) {
        if SpinLock.is_null() {
            violation(Rule::Misuse, "KeReleaseSpinLock(NULL)");
            return;
        }
        // SAFETY: as in `KeAcquireSpinLockRaiseToDpc`.
        let word = unsafe { AtomicUsize::from_ptr(SpinLock) };
        release(word, "spin lock");
        set_irql(NewIrql);
    }
}

kernel_export! {
    /// `IoAcquireCancelSpinLock`: takes the model's global cancel spin lock.
    ///
    /// # Safety
    /// `Irql` is writable.
    fn IoAcquireCancelSpinLock(Irql: *mut KIRQL) {
        let old = acquire_cancel_lock();
        if Irql.is_null() {
            violation(Rule::Misuse, "IoAcquireCancelSpinLock(NULL)");
        } else {
            // SAFETY: the caller guarantees `Irql` is writable.
            unsafe { Irql.write(old) };
        }
    }
}

kernel_export! {
    /// `IoReleaseCancelSpinLock`: releases the global cancel spin lock and restores
    /// the IRQL.
    ///
    /// # Safety
    /// None beyond holding the lock (checked).
    fn IoReleaseCancelSpinLock(Irql: KIRQL) {
        release_cancel_lock(Irql);
    }
}

/// Takes the global cancel spin lock, raising to `DISPATCH_LEVEL`; returns the old IRQL.
pub(crate) fn acquire_cancel_lock() -> KIRQL {
    let old = current_irql();
    acquire(&CANCEL_LOCK, "cancel spin lock");
    set_irql(DISPATCH_LEVEL);
    old
}

/// Releases the global cancel spin lock and sets the IRQL to `irql`.
pub(crate) fn release_cancel_lock(irql: KIRQL) {
    release(&CANCEL_LOCK, "cancel spin lock");
    set_irql(irql);
}

// --- events ---

/// The model's side of one `KEVENT`.
pub(crate) struct EventObj {
    synchronization: bool,
    signaled: Mutex<bool>,
    cv: Condvar,
}

impl EventObj {
    fn set(&self) -> bool {
        let mut signaled = lock(&self.signaled);
        let previous = *signaled;
        *signaled = true;
        drop(signaled);
        self.cv.notify_all();
        previous
    }

    /// Waits up to `limit`; returns whether the event was signalled (and consumes the
    /// signal of a synchronization event).
    fn wait(&self, limit: Duration) -> bool {
        let deadline = Instant::now().checked_add(limit);
        let mut signaled = lock(&self.signaled);
        while !*signaled {
            let remaining = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if remaining.is_zero() {
                return false;
            }
            signaled = self
                .cv
                .wait_timeout(signaled, remaining)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        if self.synchronization {
            *signaled = false;
        }
        true
    }
}

fn event(ptr: *mut c_void, routine: &str) -> Option<Arc<EventObj>> {
    let mut st = state();
    let found = st.events.get(&(ptr as usize)).cloned();
    if found.is_none() {
        st.violate(
            Rule::UnknownObject,
            format!("{routine}({ptr:p}): not an initialised event"),
        );
    }
    found
}

kernel_export! {
    /// `KeInitializeEvent`: (re)initialises the event at this address.
    ///
    /// # Safety
    /// None: the 24 bytes are not accessed; the address only names the event.
    fn KeInitializeEvent(Event: *mut KEVENT, Type: EVENT_TYPE, State: BOOLEAN) {
        let synchronization = if Type == SynchronizationEvent {
            true
        } else {
            if Type != NotificationEvent {
                violation(Rule::Misuse, format!("KeInitializeEvent: bad type {Type}"));
            }
            false
        };
        let obj = Arc::new(EventObj {
            synchronization,
            signaled: Mutex::new(State != 0),
            cv: Condvar::new(),
        });
        state().events.insert(Event as usize, obj);
    }
}

kernel_export! {
    /// `KeSetEvent`: signals the event; returns the previous state (0 or 1).
    ///
    /// # Safety
    /// None: the address only names the event.
    fn KeSetEvent(Event: *mut KEVENT, Increment: i32, Wait: BOOLEAN) -> i32 {
        let _ = (Increment, Wait);
        check_irql("KeSetEvent", DISPATCH_LEVEL);
        crate::sched::point();
        event(Event.cast(), "KeSetEvent").map_or(0, |e| i32::from(e.set()))
    }
}

kernel_export! {
    /// `KeClearEvent`: resets the event to not signalled.
    ///
    /// # Safety
    /// None: the address only names the event.
    fn KeClearEvent(Event: *mut KEVENT) {
        if let Some(e) = event(Event.cast(), "KeClearEvent") {
            *lock(&e.signaled) = false;
        }
    }
}

/// 100 ns intervals between 1601-01-01 and 1970-01-01.
const EPOCH_1601_TO_1970: u64 = 116_444_736_000_000_000;

/// Turns a `KeWaitForSingleObject` timeout into a duration (`None`: infinite).
fn decode_timeout(timeout: Option<i64>) -> Option<Duration> {
    let t = timeout?;
    if t <= 0 {
        return Some(Duration::from_nanos(t.unsigned_abs().saturating_mul(100)));
    }
    // Absolute system time in 100 ns units since 1601.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let now_100ns = EPOCH_1601_TO_1970 + u64::try_from(now.as_nanos() / 100).unwrap_or(u64::MAX);
    let remaining = t.unsigned_abs().saturating_sub(now_100ns);
    Some(Duration::from_nanos(remaining.saturating_mul(100)))
}

kernel_export! {
    /// `KeWaitForSingleObject` on an event: blocks until it is signalled or the timeout
    /// passes (null: infinite; negative: relative, 100 ns units; 0: poll; positive:
    /// absolute system time). Returns `STATUS_SUCCESS` or `STATUS_TIMEOUT`.
    ///
    /// A timeout other than zero (a relative or absolute time, or null) at
    /// `DISPATCH_LEVEL` is a [`Rule::WaitAtDispatch`]; the wait still happens. An infinite wait (at any IRQL) gives up after the session's hang
    /// limit, recording [`Rule::Hang`] and returning `STATUS_TIMEOUT`, so a broken
    /// driver fails its test rather than hanging it.
    ///
    /// # Safety
    /// `Timeout`, if not null, is readable.
    fn KeWaitForSingleObject(
        Object: *mut c_void,
        WaitReason: i32,
        WaitMode: KPROCESSOR_MODE,
        Alertable: BOOLEAN,
        Timeout: *const i64,
    ) -> NTSTATUS {
        let _ = (WaitReason, WaitMode, Alertable);
        let raw = if Timeout.is_null() {
            None
        } else {
            // SAFETY: the caller guarantees a non-null `Timeout` is readable.
            Some(unsafe { Timeout.read() })
        };
        let timeout = decode_timeout(raw);
        let irql = current_irql();
        // The contract is on the value passed, not on the time left: only a zero
        // timeout is allowed at DISPATCH_LEVEL (an absolute time already past is not).
        if irql >= DISPATCH_LEVEL && raw != Some(0) {
            violation(
                Rule::WaitAtDispatch,
                format!("KeWaitForSingleObject with timeout {raw:?} at IRQL {irql}"),
            );
        }
        let Some(ev) = event(Object, "KeWaitForSingleObject") else {
            return STATUS_SUCCESS;
        };
        let limit = timeout.unwrap_or_else(|| state().hang_limit);
        if ev.wait(limit) {
            STATUS_SUCCESS
        } else {
            if timeout.is_none() {
                violation(
                    Rule::Hang,
                    format!("infinite KeWaitForSingleObject still blocked after {limit:?}"),
                );
            }
            STATUS_TIMEOUT
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ptr;
    use std::time::{Duration, Instant};

    use wsksend_ffi::status::{STATUS_SUCCESS, STATUS_TIMEOUT};
    use wsksend_ffi::{
        Executive, FALSE, KEVENT, KernelMode, NotificationEvent, SynchronizationEvent, TRUE,
    };

    use crate::{Rule, session};

    fn wait(ev: &mut KEVENT, timeout: Option<i64>) -> i32 {
        let t = timeout.unwrap_or(0);
        let tp = if timeout.is_some() {
            &raw const t
        } else {
            ptr::null()
        };
        // SAFETY: `ev` is an initialised event; `tp` is null or points to `t`.
        unsafe {
            wsksend_ffi::KeWaitForSingleObject(
                (&raw mut *ev).cast(),
                Executive,
                KernelMode,
                FALSE,
                tp,
            )
        }
    }

    #[test]
    fn event_wait_times_out() {
        let s = session();
        let mut ev = KEVENT::zeroed();
        // SAFETY: `ev` is valid storage for an event.
        unsafe { wsksend_ffi::KeInitializeEvent(&raw mut ev, NotificationEvent, FALSE) };
        let start = Instant::now();
        assert_eq!(wait(&mut ev, Some(-200_000)), STATUS_TIMEOUT); // 20 ms
        assert!(start.elapsed() >= Duration::from_millis(15));
        assert_eq!(wait(&mut ev, Some(0)), STATUS_TIMEOUT);
        s.finish();
    }

    #[test]
    fn synchronization_event_wakes_one_waiter_across_threads() {
        let s = session();
        let ev = Box::leak(Box::new(KEVENT::zeroed()));
        // SAFETY: `ev` is valid storage for an event (leaked: lives forever).
        unsafe { wsksend_ffi::KeInitializeEvent(&raw mut *ev, SynchronizationEvent, FALSE) };
        let addr = &raw mut *ev as usize;
        let setter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            // SAFETY: the event is initialised and leaked.
            unsafe { wsksend_ffi::KeSetEvent(addr as *mut KEVENT, 0, FALSE) }
        });
        assert_eq!(wait(ev, None), STATUS_SUCCESS);
        assert_eq!(setter.join().ok(), Some(0));
        // Auto-reset: the signal was consumed.
        assert_eq!(wait(ev, Some(0)), STATUS_TIMEOUT);
        s.finish();
    }

    #[test]
    fn wait_at_dispatch_is_a_violation() {
        let s = session();
        let mut ev = KEVENT::zeroed();
        // SAFETY: `ev` is valid storage for an event.
        unsafe { wsksend_ffi::KeInitializeEvent(&raw mut ev, NotificationEvent, TRUE) };
        assert_eq!(s.at_dispatch(|| wait(&mut ev, Some(-10))), STATUS_SUCCESS);
        s.finish_expecting(Rule::WaitAtDispatch);
    }

    #[test]
    fn spin_lock_raises_and_restores_irql() {
        let s = session();
        let mut lock: usize = 0;
        // SAFETY: `lock` is a live, aligned spin lock word.
        let old = unsafe { wsksend_ffi::KeAcquireSpinLockRaiseToDpc(&raw mut lock) };
        assert_eq!(old, wsksend_ffi::PASSIVE_LEVEL);
        assert_eq!(super::current_irql(), wsksend_ffi::DISPATCH_LEVEL);
        // SAFETY: as above; the lock is held.
        unsafe { wsksend_ffi::KeReleaseSpinLock(&raw mut lock, old) };
        assert_eq!(super::current_irql(), wsksend_ffi::PASSIVE_LEVEL);
        s.finish();
    }

    #[test]
    fn releasing_a_free_spin_lock_is_a_violation() {
        let s = session();
        let mut lock: usize = 0;
        // SAFETY: `lock` is a live, aligned spin lock word.
        unsafe { wsksend_ffi::KeReleaseSpinLock(&raw mut lock, 0) };
        s.finish_expecting(Rule::BadSpinLockRelease);
    }
}
