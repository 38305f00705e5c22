//! Owned nonpaged pool allocations, so that everything a completion routine touches is
//! nonpaged (DESIGN.md rule 6) and every allocation is visible to pool tracking (the
//! kernel model's leak checker, `!poolused` on Windows).

use core::mem::{align_of, size_of};
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;

use wsksend_ffi::{ExAllocatePoolWithTag, ExFreePoolWithTag, NonPagedPoolNx};

use crate::{Error, Result};

/// Pool tag of the engine's allocations, `WskE`.
pub const POOL_TAG: u32 = u32::from_le_bytes(*b"WskE");

/// A `T` in nonpaged pool, freed on drop.
///
/// # Invariants
/// `ptr` points to an initialised `T` in a pool block allocated with [`POOL_TAG`] and
/// owned by this value.
pub struct PoolBox<T> {
    ptr: NonNull<T>,
}

// SAFETY: `PoolBox<T>` owns its `T` like `Box<T>` does.
unsafe impl<T: Send> Send for PoolBox<T> {}
// SAFETY: shared access only hands out `&T`.
unsafe impl<T: Sync> Sync for PoolBox<T> {}

impl<T> PoolBox<T> {
    /// Moves `value` into a new pool block.
    ///
    /// # Errors
    /// `STATUS_INSUFFICIENT_RESOURCES` if the pool is exhausted.
    ///
    /// # IRQL
    /// <= `DISPATCH_LEVEL`.
    pub fn try_new(value: T) -> Result<Self> {
        const { assert!(align_of::<T>() <= 16, "pool blocks are 16-byte aligned") };
        // SAFETY: allocating has no preconditions; failure returns null.
        let raw = unsafe { ExAllocatePoolWithTag(NonPagedPoolNx, size_of::<T>().max(1), POOL_TAG) };
        let ptr = NonNull::new(raw.cast::<T>()).ok_or(Error::NO_RESOURCES)?;
        // SAFETY: `ptr` is a fresh block of at least `size_of::<T>()` bytes, suitably aligned.
        unsafe { ptr.as_ptr().write(value) };
        // INVARIANT: initialised just above, owned by the new value.
        Ok(Self { ptr })
    }

    /// Gives up ownership; [`Self::from_raw`] takes it back.
    #[must_use]
    pub fn into_raw(this: Self) -> *mut T {
        let ptr = this.ptr.as_ptr();
        core::mem::forget(this);
        ptr
    }

    /// Takes back ownership of a pointer from [`Self::into_raw`].
    ///
    /// # Safety
    /// `ptr` came from `into_raw` and is not owned by anything else any more.
    pub unsafe fn from_raw(ptr: *mut T) -> Self {
        // INVARIANT: the caller returns the ownership `into_raw` gave up.
        Self {
            // SAFETY: `into_raw` never returns null.
            ptr: unsafe { NonNull::new_unchecked(ptr) },
        }
    }
}

impl<T> Deref for PoolBox<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: by the type invariant `ptr` is an initialised, owned `T`.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> DerefMut for PoolBox<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`, and `&mut self` makes the access unique.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T> Drop for PoolBox<T> {
    fn drop(&mut self) {
        // SAFETY: by the type invariant the `T` is initialised and ours to drop.
        unsafe { self.ptr.as_ptr().drop_in_place() };
        // SAFETY: the block came from ExAllocatePoolWithTag with POOL_TAG.
        unsafe { ExFreePoolWithTag(self.ptr.as_ptr().cast(), POOL_TAG) };
    }
}
