//! MDL chains for `WSK_BUF` (DESIGN.md rules 3, 4 and 5).
//!
//! A send describes its bytes with a chain of MDLs and a `WSK_BUF { Mdl, Offset,
//! Length }`. The chain is built in one of three ways:
//!
//! - borrowed: a chain a kernel caller locked itself; we only validate it;
//! - [`MdlChain::from_nonpaged`]: nonpaged kernel buffers, one `IoAllocateMdl` +
//!   `MmBuildMdlForNonPagedPool` each;
//! - [`MdlChain::carve`]: partial MDLs cut from one locked master MDL by a segment list —
//!   the zero-copy path for user buffers the I/O manager locked (`METHOD_IN_DIRECT`).
//!
//! [`validate`] checks what Windows would bugcheck on: `Offset` inside the first MDL and
//! `Length` within the bytes the chain describes after it.

use core::ffi::c_void;
use core::ptr::{self, NonNull};

use wsksend_ffi::inline::{MmGetMdlByteCount, MmGetMdlVirtualAddress};
use wsksend_ffi::{
    FALSE, IoAllocateMdl, IoBuildPartialMdl, IoFreeMdl, MDL, MDL_MAPPED_TO_SYSTEM_VA,
    MDL_PAGES_LOCKED, MDL_PARTIAL, MDL_SOURCE_IS_NONPAGED_POOL, MmBuildMdlForNonPagedPool, WSK_BUF,
};

use crate::{Error, Result};

/// Most MDLs a chain may have (a WSABUF array of this many buffers).
pub const MAX_CHAIN: usize = 1024;

/// How [`MdlChain::carve`] describes a segment of the master buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carve {
    /// `IoBuildPartialMdl` from the master: the Windows way, valid for user pages the
    /// I/O manager locked.
    PartialMdl,
    /// `IoAllocateMdl` + `MmBuildMdlForNonPagedPool` over the master's system mapping.
    /// Only for a master whose system address is a kernel copy of the data (Wine's
    /// IOCTL path copies the buffer into the driver host's heap, and Wine 8 stubs
    /// `IoBuildPartialMdl`); never for real user pages.
    SystemVa,
}

/// A piece of a buffer: `len` bytes at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Offset from the start of the buffer.
    pub offset: u32,
    /// Length in bytes (non-zero).
    pub len: u32,
}

/// A nonpaged kernel buffer to send from.
#[derive(Clone, Copy, Debug)]
pub struct RawBuf {
    /// Start (nonpaged, valid until the send completes).
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: u32,
}

/// A chain of MDLs we allocated; freed (in order) on drop.
///
/// # Invariants
/// `head` is null or the first of a `Next`-linked chain of MDLs from `IoAllocateMdl`,
/// all owned by this value and not referenced by any in-flight IRP when dropped.
pub struct MdlChain {
    head: *mut MDL,
}

// SAFETY: MDLs are plain kernel objects usable from any thread.
unsafe impl Send for MdlChain {}

impl MdlChain {
    /// An empty chain (nothing to free).
    #[must_use]
    pub const fn empty() -> Self {
        Self {
            head: ptr::null_mut(),
        }
    }

    /// The first MDL (null when empty).
    #[must_use]
    pub const fn head(&self) -> *mut MDL {
        self.head
    }

    /// Describes nonpaged buffers, in order, with one MDL each.
    ///
    /// # Safety
    /// Every buffer is in nonpaged memory and valid for reads until the send that uses
    /// the chain completes.
    ///
    /// # Errors
    /// `STATUS_INVALID_PARAMETER` for no buffers, an empty buffer or more than
    /// [`MAX_CHAIN`]; `STATUS_INSUFFICIENT_RESOURCES`.
    pub unsafe fn from_nonpaged(bufs: &[RawBuf]) -> Result<Self> {
        if bufs.is_empty() || bufs.len() > MAX_CHAIN || bufs.iter().any(|b| b.len == 0) {
            return Err(Error::INVALID_PARAMETER);
        }
        let mut builder = Builder::new();
        for buf in bufs {
            // SAFETY: the caller guarantees the buffer is nonpaged and live.
            unsafe { builder.push_nonpaged(buf.ptr.cast_mut().cast(), buf.len)? };
        }
        Ok(builder.finish())
    }

    /// Cuts `segments` of the locked `master` MDL into a chain, in order.
    ///
    /// # Safety
    /// `master` is a single, locked MDL (for [`Carve::SystemVa`]: mapped to a system
    /// address holding a kernel copy) that stays live and locked until the send using
    /// the chain completes.
    ///
    /// # Errors
    /// `STATUS_INVALID_PARAMETER` when a segment is empty or lies outside the master,
    /// or there are none or too many; `STATUS_INSUFFICIENT_RESOURCES`.
    pub unsafe fn carve(master: NonNull<MDL>, segments: &[Segment], carve: Carve) -> Result<Self> {
        if segments.is_empty() || segments.len() > MAX_CHAIN {
            return Err(Error::INVALID_PARAMETER);
        }
        // SAFETY: `master` is live (caller).
        let m = unsafe { master.as_ref() };
        // SAFETY: as above.
        let total = unsafe { MmGetMdlByteCount(m) };
        if segments.iter().any(|s| !segment_fits(*s, total)) {
            return Err(Error::INVALID_PARAMETER);
        }
        let base: *mut u8 = match carve {
            // SAFETY: as above.
            Carve::PartialMdl => unsafe { MmGetMdlVirtualAddress(m) }.cast(),
            Carve::SystemVa => {
                if m.MdlFlags & (MDL_MAPPED_TO_SYSTEM_VA | MDL_SOURCE_IS_NONPAGED_POOL) == 0
                    || m.MappedSystemVa.is_null()
                {
                    return Err(Error::INVALID_PARAMETER);
                }
                m.MappedSystemVa.cast()
            }
        };
        let mut builder = Builder::new();
        for s in segments {
            let va: *mut c_void = base.wrapping_add(s.offset as usize).cast();
            match carve {
                // SAFETY: `va..va+len` lies inside the locked master (checked above).
                Carve::PartialMdl => unsafe { builder.push_partial(master.as_ptr(), va, s.len)? },
                // SAFETY: `va..va+len` lies inside the master's system copy (checked above).
                Carve::SystemVa => unsafe { builder.push_nonpaged(va, s.len)? },
            }
        }
        Ok(builder.finish())
    }
}

impl Drop for MdlChain {
    fn drop(&mut self) {
        let mut mdl = self.head;
        while !mdl.is_null() {
            // SAFETY: `mdl` is a live MDL of our chain (type invariant).
            let next = unsafe { (*mdl).Next };
            // SAFETY: ours, not in flight (type invariant); partial and nonpaged MDLs
            // own no page locks, so there is nothing to unlock first.
            unsafe { IoFreeMdl(mdl) };
            mdl = next;
        }
    }
}

/// Whether `s` is non-empty and inside a buffer of `total` bytes (no overflow).
#[must_use]
pub fn segment_fits(s: Segment, total: u32) -> bool {
    s.len != 0 && s.offset.checked_add(s.len).is_some_and(|end| end <= total)
}

/// Appends MDLs to a chain under construction; frees them all if dropped unfinished.
struct Builder {
    chain: MdlChain,
    tail: *mut MDL,
}

impl Builder {
    const fn new() -> Self {
        Self {
            chain: MdlChain::empty(),
            tail: ptr::null_mut(),
        }
    }

    fn allocate(va: *mut c_void, len: u32) -> Result<*mut MDL> {
        // SAFETY: describing memory has no preconditions; no IRP is given.
        let mdl = unsafe { IoAllocateMdl(va, len, FALSE, FALSE, ptr::null_mut()) };
        if mdl.is_null() {
            Err(Error::NO_RESOURCES)
        } else {
            Ok(mdl)
        }
    }

    fn link(&mut self, mdl: *mut MDL) {
        if self.tail.is_null() {
            // INVARIANT: the chain owns the MDL from here on.
            self.chain.head = mdl;
        } else {
            // SAFETY: `tail` is the live last MDL of our chain.
            unsafe { (*self.tail).Next = mdl };
        }
        self.tail = mdl;
    }

    /// # Safety
    /// `va..va+len` is nonpaged memory, live until the chain's send completes.
    unsafe fn push_nonpaged(&mut self, va: *mut c_void, len: u32) -> Result {
        let mdl = Self::allocate(va, len)?;
        self.link(mdl);
        // SAFETY: `mdl` describes nonpaged memory (caller).
        unsafe { MmBuildMdlForNonPagedPool(mdl) };
        Ok(())
    }

    /// # Safety
    /// `va..va+len` lies inside the locked `master`, live until the send completes.
    unsafe fn push_partial(&mut self, master: *mut MDL, va: *mut c_void, len: u32) -> Result {
        let mdl = Self::allocate(va, len)?;
        self.link(mdl);
        // SAFETY: `mdl` was allocated for this range, which lies inside `master` (caller).
        unsafe { IoBuildPartialMdl(master, mdl, va, len) };
        Ok(())
    }

    fn finish(self) -> MdlChain {
        self.chain
    }
}

/// Checks a `WSK_BUF` against its chain (DESIGN.md rule 4): `Offset` inside the first
/// MDL, `Length` non-zero and within the bytes described after `Offset`, at most
/// [`MAX_CHAIN`] MDLs.
///
/// # Safety
/// Every MDL reachable from `buf.Mdl` is live.
///
/// # Errors
/// `STATUS_INVALID_PARAMETER`.
pub unsafe fn validate(buf: &WSK_BUF) -> Result {
    if buf.Mdl.is_null() || buf.Length == 0 {
        return Err(Error::INVALID_PARAMETER);
    }
    // SAFETY: live (caller).
    let first = unsafe { MmGetMdlByteCount(buf.Mdl) };
    if buf.Offset >= first {
        return Err(Error::INVALID_PARAMETER);
    }
    let mut available = (first - buf.Offset) as usize;
    // SAFETY: live (caller).
    let mut mdl = unsafe { (*buf.Mdl).Next };
    let mut count = 1;
    while !mdl.is_null() && available < buf.Length {
        count += 1;
        if count > MAX_CHAIN {
            return Err(Error::INVALID_PARAMETER);
        }
        // SAFETY: live (caller).
        available += unsafe { MmGetMdlByteCount(mdl) } as usize;
        // SAFETY: live (caller).
        mdl = unsafe { (*mdl).Next };
    }
    if buf.Length <= available {
        Ok(())
    } else {
        Err(Error::INVALID_PARAMETER)
    }
}

/// Whether every MDL that `buf` reaches is locked or describes nonpaged memory
/// (`MDL_PAGES_LOCKED`, `MDL_SOURCE_IS_NONPAGED_POOL`, or a partial MDL, which is as
/// locked as its source): the cheap check of a kernel caller's chain that refuses
/// what tcpip would otherwise bug-check on.
///
/// # Safety
/// The chain is live; `validate` has accepted `buf`.
pub unsafe fn check_locked(buf: &WSK_BUF) -> Result {
    let ok = MDL_PAGES_LOCKED | MDL_SOURCE_IS_NONPAGED_POOL | MDL_PARTIAL;
    let mut mdl = buf.Mdl;
    let mut needed = buf.Length + buf.Offset as usize;
    while !mdl.is_null() && needed > 0 {
        // SAFETY: live (caller).
        let m = unsafe { &*mdl };
        if m.MdlFlags & ok == 0 {
            return Err(Error::INVALID_PARAMETER);
        }
        needed = needed.saturating_sub(m.ByteCount as usize);
        mdl = m.Next;
    }
    Ok(())
}
