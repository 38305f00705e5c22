//! Synchronisation over the kernel's primitives: a spin lock that raises to
//! `DISPATCH_LEVEL`, and events in nonpaged pool.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::time::Duration;

use wsksend_ffi::status::STATUS_SUCCESS;
use wsksend_ffi::{
    EVENT_TYPE, Executive, FALSE, KEVENT, KIRQL, KSPIN_LOCK, KeAcquireSpinLockRaiseToDpc,
    KeClearEvent, KeInitializeEvent, KeReleaseSpinLock, KeSetEvent, KeWaitForSingleObject,
    KernelMode, NotificationEvent,
};

use crate::Result;
use crate::pool::PoolBox;

/// Data guarded by a kernel spin lock (`KeAcquireSpinLockRaiseToDpc`).
///
/// Lock holders run at `DISPATCH_LEVEL`: no waiting, no paged memory, keep it short.
pub struct SpinLock<T> {
    lock: UnsafeCell<KSPIN_LOCK>,
    data: UnsafeCell<T>,
}

// SAFETY: the lock serialises all access to `data`, so sharing the lock shares `T`
// only one holder at a time; `T: Send` is enough, as for `std::sync::Mutex`.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: moving the lock moves the `T`.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// A new, released lock (`KeInitializeSpinLock` is zeroing on x64).
    pub const fn new(data: T) -> Self {
        Self {
            lock: UnsafeCell::new(0),
            data: UnsafeCell::new(data),
        }
    }

    /// Exclusive access without locking, through `&mut` (no one else can hold it).
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    /// Acquires the lock, raising IRQL to `DISPATCH_LEVEL` until the guard drops.
    ///
    /// # IRQL
    /// <= `DISPATCH_LEVEL`.
    pub fn lock(&self) -> SpinLockGuard<'_, T> {
        // SAFETY: `self.lock` is a valid, initialised KSPIN_LOCK for the lock's lifetime.
        let old_irql = unsafe { KeAcquireSpinLockRaiseToDpc(self.lock.get()) };
        SpinLockGuard {
            owner: self,
            old_irql,
        }
    }
}

/// Holds a [`SpinLock`]; releases it and restores IRQL on drop.
///
/// # Invariants
/// The lock of `owner` is held by this guard.
pub struct SpinLockGuard<'a, T> {
    owner: &'a SpinLock<T>,
    old_irql: KIRQL,
}

impl<T> Deref for SpinLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the lock is held (type invariant), so no one else accesses `data`.
        unsafe { &*self.owner.data.get() }
    }
}

impl<T> DerefMut for SpinLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the lock is held (type invariant), so this access is unique.
        unsafe { &mut *self.owner.data.get() }
    }
}

impl<T> Drop for SpinLockGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: we hold the lock (type invariant) and restore the IRQL it saved.
        unsafe { KeReleaseSpinLock(self.owner.lock.get(), self.old_irql) };
    }
}

/// A kernel event in nonpaged pool (so it never moves after `KeInitializeEvent`).
pub struct Event {
    raw: PoolBox<UnsafeCell<KEVENT>>,
}

// SAFETY: KEVENTs are made to be signalled and waited on from any thread.
unsafe impl Send for Event {}
// SAFETY: as above; all access goes through the Ke* routines, which synchronise.
unsafe impl Sync for Event {}

impl Event {
    /// A notification event (stays signalled until cleared), initially not signalled.
    ///
    /// # Errors
    /// `STATUS_INSUFFICIENT_RESOURCES`.
    pub fn notification() -> Result<Self> {
        Self::new(NotificationEvent)
    }

    fn new(kind: EVENT_TYPE) -> Result<Self> {
        let raw = PoolBox::try_new(UnsafeCell::new(KEVENT::zeroed()))?;
        // SAFETY: `raw` is nonpaged storage for a KEVENT that stays put until dropped.
        unsafe { KeInitializeEvent(raw.get(), kind, FALSE) };
        Ok(Self { raw })
    }

    /// Signals the event.
    ///
    /// # IRQL
    /// <= `DISPATCH_LEVEL`.
    pub fn set(&self) {
        // SAFETY: the event is initialised (constructor).
        unsafe { KeSetEvent(self.raw.get(), 0, FALSE) };
    }

    /// Resets the event to not signalled.
    pub fn clear(&self) {
        // SAFETY: the event is initialised (constructor).
        unsafe { KeClearEvent(self.raw.get()) };
    }

    /// Waits up to `limit` (never without bound: DESIGN.md rules 7 and 9); returns
    /// whether the event was signalled.
    ///
    /// # IRQL
    /// `PASSIVE_LEVEL` (or `APC_LEVEL`).
    pub fn wait(&self, limit: Duration) -> bool {
        // CAST: relative timeouts are negative counts of 100 ns; saturate absurd limits.
        let ticks = i64::try_from(limit.as_nanos() / 100).unwrap_or(i64::MAX);
        let timeout = -ticks.max(1);
        // SAFETY: the event is initialised; `timeout` outlives the call.
        let status = unsafe {
            KeWaitForSingleObject(
                self.raw.get().cast(),
                Executive,
                KernelMode,
                FALSE,
                &timeout,
            )
        };
        status == STATUS_SUCCESS
    }
}
