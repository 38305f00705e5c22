//! A reference-counted pointer whose allocation can fail, and whose last release is the
//! last thing driver code does with it.
//!
//! `alloc::sync::Arc::new` cannot report an exhausted pool (a failed allocation panics,
//! and a panic in the kernel is a bug check: DESIGN.md rule 13), so shared engine
//! objects live in a [`KArc`]: a block of nonpaged pool with a count, made by
//! [`KArc::try_new`].

use alloc::boxed::Box;
use core::alloc::Layout;
use core::fmt;
use core::marker::PhantomData;
use core::ops::Deref;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering, fence};

use crate::Result;
use crate::pool::PoolBox;

struct Inner<T> {
    count: AtomicUsize,
    value: T,
}

/// A shared, reference-counted `T` in nonpaged pool.
///
/// # Invariants
/// `ptr` is a live `Inner<T>` from [`PoolBox::into_raw`] whose `count` includes this
/// reference.
pub struct KArc<T> {
    ptr: NonNull<Inner<T>>,
    _owns: PhantomData<Inner<T>>,
}

// SAFETY: like `Arc<T>`: the value is shared between threads, so it must be Send + Sync.
unsafe impl<T: Send + Sync> Send for KArc<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for KArc<T> {}

impl<T> KArc<T> {
    /// Moves `value` into a new block with one reference.
    ///
    /// # Errors
    /// `STATUS_INSUFFICIENT_RESOURCES` (the value is dropped).
    ///
    /// # IRQL
    /// <= `DISPATCH_LEVEL`.
    pub fn try_new(value: T) -> Result<Self> {
        let block = PoolBox::try_new(Inner {
            count: AtomicUsize::new(1),
            value,
        })?;
        // INVARIANT: a fresh block with one reference.
        Ok(Self {
            // SAFETY: `into_raw` never returns null.
            ptr: unsafe { NonNull::new_unchecked(PoolBox::into_raw(block)) },
            _owns: PhantomData,
        })
    }

    /// Whether `a` and `b` point to the same object.
    #[must_use]
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        a.ptr == b.ptr
    }

    /// Gives up this reference as a raw pointer (for a C handle or an IRP context);
    /// [`Self::from_raw`] takes it back.
    #[must_use]
    pub fn into_raw(this: Self) -> *const T {
        let ptr = this.ptr;
        core::mem::forget(this);
        // SAFETY: the block is live (this reference, now leaked, keeps it so).
        unsafe { &raw const (*ptr.as_ptr()).value }
    }

    /// Takes back a reference given up by [`Self::into_raw`].
    ///
    /// # Safety
    /// `ptr` came from `into_raw` of a `KArc<T>` and that reference was not taken back yet.
    pub unsafe fn from_raw(ptr: *const T) -> Self {
        let offset = core::mem::offset_of!(Inner<T>, value);
        // SAFETY: `ptr` points at the `value` field of a live `Inner<T>` (caller), so
        // stepping back by the field's offset stays in the same block.
        let inner = unsafe { ptr.cast::<u8>().sub(offset) }.cast::<Inner<T>>();
        // INVARIANT: the reference `into_raw` leaked is handed back.
        Self {
            // SAFETY: derived from a non-null pointer to a live block.
            ptr: unsafe { NonNull::new_unchecked(inner.cast_mut()) },
            _owns: PhantomData,
        }
    }

    fn inner(&self) -> &Inner<T> {
        // SAFETY: the block is live while we hold a reference (type invariant).
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> Clone for KArc<T> {
    fn clone(&self) -> Self {
        // Relaxed is enough to add a reference while holding one (as `Arc` does).
        let old = self.inner().count.fetch_add(1, Ordering::Relaxed);
        if old > usize::MAX / 2 {
            // Unreachable in practice (that many references cannot fit in memory);
            // saturate rather than wrap, leaking the object.
            self.inner().count.store(usize::MAX / 2, Ordering::Relaxed);
        }
        // INVARIANT: the count includes the new reference.
        Self {
            ptr: self.ptr,
            _owns: PhantomData,
        }
    }
}

impl<T> Deref for KArc<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner().value
    }
}

impl<T> Drop for KArc<T> {
    fn drop(&mut self) {
        if self.inner().count.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        fence(Ordering::Acquire);
        // SAFETY: the last reference: the block came from `PoolBox::into_raw` and no
        // one else can reach it any more.
        drop(unsafe { PoolBox::from_raw(self.ptr.as_ptr()) });
    }
}

impl<T: fmt::Debug> fmt::Debug for KArc<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// `Box::new` that reports an exhausted heap instead of panicking (the kernel heap of
/// the front ends is nonpaged pool, which can run out), handing the value back.
///
/// # Errors
/// The value itself, when no memory could be had.
pub fn try_box<T>(value: T) -> core::result::Result<Box<T>, T> {
    let layout = Layout::new::<T>();
    if layout.size() == 0 {
        // Zero-sized: `Box` does not allocate.
        return Ok(Box::new(value));
    }
    // SAFETY: the layout has a non-zero size.
    let raw = unsafe { alloc::alloc::alloc(layout) }.cast::<T>();
    if raw.is_null() {
        return Err(value);
    }
    // SAFETY: a fresh block for one `T`, suitably aligned.
    unsafe { raw.write(value) };
    // SAFETY: allocated by the global allocator with `Layout::new::<T>()` and
    // initialised, which is what `Box::from_raw` requires.
    Ok(unsafe { Box::from_raw(raw) })
}
