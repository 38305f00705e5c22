//! MDLs: allocation, lock state, partial MDLs, and validation of `WSK_BUF` chains.
//!
//! An MDL from `IoAllocateMdl` is a real `MDL` (followed by room for its PFN array)
//! describing real host memory; the provider reads the bytes at
//! `StartVa + ByteOffset`. The model tracks each MDL's lock state:
//!
//! - unlocked after `IoAllocateMdl`;
//! - locked by `MmProbeAndLockPages` (until `MmUnlockPages`) or by
//!   `MmBuildMdlForNonPagedPool` (for good);
//! - a partial MDL from `IoBuildPartialMdl` counts as locked while its source is live
//!   and locked.
//!
//! While an IRP that uses an MDL is in flight, the MDL (and the source of a partial
//! MDL) is marked in flight: unlocking or freeing it is a [`Rule::MdlReleasedInFlight`].

use std::alloc::{self, Layout};
use std::collections::BTreeSet;
use std::ffi::c_void;
use std::mem::size_of;
use std::ptr;

use wsksend_ffi::{
    BOOLEAN, DISPATCH_LEVEL, IRP, KPROCESSOR_MODE, LOCK_OPERATION, MDL, MDL_MAPPED_TO_SYSTEM_VA,
    MDL_PAGES_LOCKED, MDL_PARTIAL, MDL_SOURCE_IS_NONPAGED_POOL, WSK_BUF,
};

use crate::checker::{Op, Rule, State, Violation, state};
use crate::kernel_export;
use crate::sync::check_irql;

const PAGE_SIZE: usize = 0x1000;
const PAGE_MASK: usize = PAGE_SIZE - 1;

/// How an MDL's pages are locked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lock {
    Unlocked,
    /// `MmProbeAndLockPages`: needs `MmUnlockPages`.
    Probed,
    /// `MmBuildMdlForNonPagedPool`.
    NonPaged,
    /// `IoBuildPartialMdl` from this source MDL.
    Partial(usize),
}

/// The model's record of one MDL.
pub(crate) struct MdlRec {
    layout: Layout,
    pub freed: bool,
    lock: Lock,
    /// In-flight IRPs using this MDL (directly or as a partial MDL's source).
    in_flight: usize,
    /// Pages the allocation has room for (a partial MDL's range must fit).
    capacity_pages: usize,
    /// The described range as last set by the model (`va`, `len`).
    range: (usize, usize),
}

/// Pages spanned by `len` bytes at `va` (`ADDRESS_AND_SIZE_TO_SPAN_PAGES`).
const fn span_pages(va: usize, len: usize) -> usize {
    ((va & PAGE_MASK) + len).div_ceil(PAGE_SIZE)
}

/// Looks up a live MDL, recording [`Rule::UnknownObject`] / [`Rule::UseAfterFree`]
/// (or [`Rule::DoubleFree`] for `IoFreeMdl`) otherwise.
fn live<'a>(st: &'a mut State, mdl: *mut MDL, routine: &str) -> Option<&'a mut MdlRec> {
    let addr = mdl as usize;
    match st.mdls.get(&addr) {
        None => {
            st.violate(
                Rule::UnknownObject,
                format!("{routine}({mdl:p}): not an MDL"),
            );
            None
        }
        Some(r) if r.freed => {
            let rule = if routine == "IoFreeMdl" {
                Rule::DoubleFree
            } else {
                Rule::UseAfterFree
            };
            st.violate(rule, format!("{routine}({mdl:p}) after IoFreeMdl"));
            None
        }
        Some(_) => st.mdls.get_mut(&addr),
    }
}

/// Whether the MDL at `addr` is locked; the reason if not.
fn locked(st: &State, addr: usize, depth: usize) -> Result<(), String> {
    match st.mdls.get(&addr) {
        None => Err(format!("{addr:#x} is not an MDL")),
        Some(r) if r.freed => Err(format!("{addr:#x} was freed")),
        Some(r) => match r.lock {
            Lock::Probed | Lock::NonPaged => Ok(()),
            Lock::Unlocked => Err(format!("MDL {addr:#x} is not locked")),
            Lock::Partial(_) if depth > 8 => Err(format!("MDL {addr:#x}: partial chain too deep")),
            Lock::Partial(source) => locked(st, source, depth + 1)
                .map_err(|why| format!("partial MDL {addr:#x}: source {why}")),
        },
    }
}

/// The MDL and, for a partial MDL, its sources: everything an in-flight IRP pins.
fn pinned(st: &State, addr: usize, out: &mut Vec<usize>) {
    let mut current = Some(addr);
    while let Some(a) = current.take() {
        if out.contains(&a) {
            break;
        }
        out.push(a);
        if let Some(MdlRec {
            lock: Lock::Partial(source),
            ..
        }) = st.mdls.get(&a)
        {
            current = Some(*source);
        }
    }
}

kernel_export! {
    /// `IoAllocateMdl`: a real, unlocked MDL for `Length` bytes at `VirtualAddress`.
    /// If `Irp` is not null the MDL becomes its `MdlAddress` (or is appended to that
    /// chain when `SecondaryBuffer`). An injected [`crate::Fault::Fail`] on
    /// [`Op::AllocMdl`] returns null, and so does a low-resources failure
    /// ([`crate::lowres`]) of a driver's allocation.
    ///
    /// # Safety
    /// `Irp` is null or an IRP from `IoAllocateIrp` (checked).
    fn IoAllocateMdl(
        VirtualAddress: *mut c_void,
        Length: u32,
        SecondaryBuffer: BOOLEAN,
        ChargeQuota: BOOLEAN,
        Irp: *mut IRP,
    ) -> *mut MDL {
        let _ = ChargeQuota;
        check_irql("IoAllocateMdl", DISPATCH_LEVEL);
        let mut st = state();
        if matches!(st.take_fault(Op::AllocMdl), Some(crate::Fault::Fail(_))) {
            return ptr::null_mut();
        }
        if crate::lowres::fail_driver_alloc(crate::lowres::Alloc::Mdl) {
            return ptr::null_mut();
        }
        if !Irp.is_null() && !crate::irp::check_live(&mut st, Irp, "IoAllocateMdl") {
            return ptr::null_mut();
        }
        let va = VirtualAddress as usize;
        let len = Length as usize;
        let pages = span_pages(va, len);
        let size = size_of::<MDL>() + pages * size_of::<usize>();
        let Ok(layout) = Layout::from_size_align(size, 8) else {
            return ptr::null_mut();
        };
        // SAFETY: `layout` has a non-zero size.
        let mdl = unsafe { alloc::alloc_zeroed(layout) }.cast::<MDL>();
        if mdl.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: `mdl` is a fresh zeroed allocation (a valid `MDL`), ours alone.
        let m = unsafe { &mut *mdl };
        m.Size = i16::try_from(size).unwrap_or(i16::MAX);
        m.StartVa = VirtualAddress.cast::<u8>().wrapping_sub(va & PAGE_MASK).cast();
        // CAST: the offset is below the page size.
        m.ByteOffset = (va & PAGE_MASK) as u32;
        m.ByteCount = Length;
        if !Irp.is_null() {
            // SAFETY: `Irp` is a live IRP (checked) that the caller owns.
            let head = unsafe { &raw mut (*Irp).MdlAddress };
            let mut slot = head;
            if SecondaryBuffer != 0 {
                loop {
                    // SAFETY: `slot` points into the live IRP or a live MDL of its chain.
                    let next = unsafe { slot.read() };
                    if next.is_null() {
                        break;
                    }
                    // SAFETY: `next` is an MDL of the IRP's chain, live while the IRP
                    // is (the caller's contract).
                    slot = unsafe { &raw mut (*next).Next };
                }
            }
            // SAFETY: as above.
            unsafe { slot.write(mdl) };
        }
        st.mdls.insert(
            mdl as usize,
            MdlRec {
                layout,
                freed: false,
                lock: Lock::Unlocked,
                in_flight: 0,
                capacity_pages: pages,
                range: (va, len),
            },
        );
        mdl
    }
}

kernel_export! {
    /// `IoFreeMdl`. Freeing an in-flight MDL is a [`Rule::MdlReleasedInFlight`]; one
    /// still locked by `MmProbeAndLockPages` a [`Rule::LockedMdlFreed`].
    ///
    /// # Safety
    /// `Mdl` came from `IoAllocateMdl` (checked).
    fn IoFreeMdl(Mdl: *mut MDL) {
        check_irql("IoFreeMdl", DISPATCH_LEVEL);
        let mut st = state();
        let Some(rec) = live(&mut st, Mdl, "IoFreeMdl") else {
            return;
        };
        rec.freed = true;
        let (in_flight, lock, size) = (rec.in_flight, rec.lock, rec.layout.size());
        if in_flight > 0 {
            st.violate(
                Rule::MdlReleasedInFlight,
                format!("IoFreeMdl({Mdl:p}) while an IRP using it is in flight"),
            );
        }
        if lock == Lock::Probed {
            st.violate(
                Rule::LockedMdlFreed,
                format!("IoFreeMdl({Mdl:p}) without MmUnlockPages"),
            );
        }
        // SAFETY: the MDL block is ours (in the table) and `size` bytes; it stays
        // quarantined until the session ends.
        unsafe { Mdl.cast::<u8>().write_bytes(0xDD, size) };
    }
}

kernel_export! {
    /// `MmBuildMdlForNonPagedPool`: the MDL is locked for good, with
    /// `MDL_SOURCE_IS_NONPAGED_POOL` and `MappedSystemVa` set.
    ///
    /// # Safety
    /// `MemoryDescriptorList` came from `IoAllocateMdl` (checked) and describes
    /// nonpaged memory.
    fn MmBuildMdlForNonPagedPool(MemoryDescriptorList: *mut MDL) {
        let mdl = MemoryDescriptorList;
        check_irql("MmBuildMdlForNonPagedPool", DISPATCH_LEVEL);
        let mut st = state();
        let Some(rec) = live(&mut st, mdl, "MmBuildMdlForNonPagedPool") else {
            return;
        };
        match rec.lock {
            Lock::Unlocked | Lock::NonPaged => rec.lock = Lock::NonPaged,
            other => {
                st.violate(
                    Rule::Misuse,
                    format!("MmBuildMdlForNonPagedPool({mdl:p}) on an MDL in state {other:?}"),
                );
                return;
            }
        }
        // SAFETY: the MDL is live (checked) and the caller owns it.
        let m = unsafe { &mut *mdl };
        m.MdlFlags |= MDL_SOURCE_IS_NONPAGED_POOL;
        m.MappedSystemVa = m.StartVa.cast::<u8>().wrapping_add(m.ByteOffset as usize).cast();
    }
}

kernel_export! {
    /// `MmProbeAndLockPages`: the MDL is locked (`MDL_PAGES_LOCKED`) until
    /// `MmUnlockPages`. Never raises: the memory is the host's.
    ///
    /// # Safety
    /// `MemoryDescriptorList` came from `IoAllocateMdl` (checked).
    fn MmProbeAndLockPages(
        MemoryDescriptorList: *mut MDL,
        AccessMode: KPROCESSOR_MODE,
        Operation: LOCK_OPERATION,
    ) {
        let _ = (AccessMode, Operation);
        let mdl = MemoryDescriptorList;
        check_irql("MmProbeAndLockPages", DISPATCH_LEVEL);
        let mut st = state();
        let Some(rec) = live(&mut st, mdl, "MmProbeAndLockPages") else {
            return;
        };
        if rec.lock != Lock::Unlocked {
            let lock = rec.lock;
            st.violate(
                Rule::Misuse,
                format!("MmProbeAndLockPages({mdl:p}) on an MDL in state {lock:?}"),
            );
            return;
        }
        rec.lock = Lock::Probed;
        // SAFETY: the MDL is live (checked) and the caller owns it.
        unsafe { (*mdl).MdlFlags |= MDL_PAGES_LOCKED };
    }
}

kernel_export! {
    /// `MmUnlockPages`: only for MDLs locked by `MmProbeAndLockPages`
    /// ([`Rule::Misuse`] otherwise). Unlocking an in-flight MDL is a
    /// [`Rule::MdlReleasedInFlight`].
    ///
    /// # Safety
    /// `MemoryDescriptorList` came from `IoAllocateMdl` (checked).
    fn MmUnlockPages(MemoryDescriptorList: *mut MDL) {
        let mdl = MemoryDescriptorList;
        check_irql("MmUnlockPages", DISPATCH_LEVEL);
        let mut st = state();
        let Some(rec) = live(&mut st, mdl, "MmUnlockPages") else {
            return;
        };
        let (lock, in_flight) = (rec.lock, rec.in_flight);
        if lock != Lock::Probed {
            st.violate(
                Rule::Misuse,
                format!("MmUnlockPages({mdl:p}) on an MDL in state {lock:?}"),
            );
            return;
        }
        rec.lock = Lock::Unlocked;
        if in_flight > 0 {
            st.violate(
                Rule::MdlReleasedInFlight,
                format!("MmUnlockPages({mdl:p}) while an IRP using it is in flight"),
            );
        }
        // SAFETY: the MDL is live (checked) and the caller owns it.
        unsafe { (*mdl).MdlFlags &= !(MDL_PAGES_LOCKED | MDL_MAPPED_TO_SYSTEM_VA) };
    }
}

kernel_export! {
    /// `IoBuildPartialMdl`: `TargetMdl` describes `Length` bytes (0: to the end of the
    /// source) at `VirtualAddress` inside `SourceMdl`, which must be locked. A range
    /// outside the source is a [`Rule::PartialOutsideSource`] and changes nothing.
    ///
    /// # Safety
    /// Both MDLs came from `IoAllocateMdl` (checked).
    fn IoBuildPartialMdl(
        SourceMdl: *mut MDL,
        TargetMdl: *mut MDL,
        VirtualAddress: *mut c_void,
        Length: u32,
    ) {
        check_irql("IoBuildPartialMdl", DISPATCH_LEVEL);
        let mut st = state();
        if live(&mut st, SourceMdl, "IoBuildPartialMdl").is_none()
            || live(&mut st, TargetMdl, "IoBuildPartialMdl").is_none()
        {
            return;
        }
        // SAFETY: the source MDL is live (checked).
        let src = unsafe { &*SourceMdl };
        let src_start = src.StartVa as usize + src.ByteOffset as usize;
        let src_end = src_start + src.ByteCount as usize;
        let (src_flags, src_process) = (src.MdlFlags, src.Process);
        let va = VirtualAddress as usize;
        let len = if Length == 0 { src_end.saturating_sub(va) } else { Length as usize };
        if va < src_start || va.saturating_add(len) > src_end {
            st.violate(
                Rule::PartialOutsideSource,
                format!(
                    "IoBuildPartialMdl: {va:#x}+{len:#x} outside source {SourceMdl:p} \
                     ({src_start:#x}..{src_end:#x})"
                ),
            );
            return;
        }
        if let Err(why) = locked(&st, SourceMdl as usize, 0) {
            st.violate(Rule::Misuse, format!("IoBuildPartialMdl: source not locked: {why}"));
            return;
        }
        let Some(target) = st.mdls.get(&(TargetMdl as usize)) else {
            return;
        };
        let (capacity, in_flight, lock) = (target.capacity_pages, target.in_flight, target.lock);
        if span_pages(va, len) > capacity {
            st.violate(
                Rule::Misuse,
                format!("IoBuildPartialMdl: target {TargetMdl:p} too small for {len:#x} bytes"),
            );
            return;
        }
        if lock == Lock::Probed {
            st.violate(
                Rule::Misuse,
                format!("IoBuildPartialMdl: target {TargetMdl:p} is locked by MmProbeAndLockPages"),
            );
            return;
        }
        if in_flight > 0 {
            st.violate(
                Rule::MdlReleasedInFlight,
                format!("IoBuildPartialMdl: target {TargetMdl:p} rebuilt while in flight"),
            );
        }
        if let Some(target) = st.mdls.get_mut(&(TargetMdl as usize)) {
            target.lock = Lock::Partial(SourceMdl as usize);
            target.range = (va, len);
        }
        // SAFETY: the target MDL is live (checked) and the caller owns it.
        let t = unsafe { &mut *TargetMdl };
        t.StartVa = VirtualAddress.cast::<u8>().wrapping_sub(va & PAGE_MASK).cast();
        // CAST: the offset is below the page size; `len` fits as it is inside a u32
        // ByteCount.
        t.ByteOffset = (va & PAGE_MASK) as u32;
        t.ByteCount = len as u32;
        t.Process = src_process;
        t.MdlFlags = MDL_PARTIAL | (src_flags & MDL_SOURCE_IS_NONPAGED_POOL);
        t.MappedSystemVa = if src_flags & MDL_SOURCE_IS_NONPAGED_POOL != 0 {
            VirtualAddress
        } else {
            ptr::null_mut()
        };
    }
}

/// A validated `WSK_BUF`: its bytes and what its IRP pins.
pub(crate) struct Chain {
    /// The MDLs of the chain and the sources of partial ones.
    pub pinned: Vec<usize>,
    /// MDLs in the chain.
    pub count: usize,
    /// The `Length` bytes the buffer describes.
    pub data: Vec<u8>,
}

/// Validates a `WSK_BUF` as the provider receives it (every MDL live and locked,
/// `Offset` inside the first MDL, `Length` within the chain), records any violation,
/// and gathers its bytes.
pub(crate) fn validate_chain(st: &mut State, buf: &WSK_BUF, routine: &str) -> Option<Chain> {
    let mut entries: Vec<(usize, usize)> = Vec::new(); // (address, byte count)
    let mut seen = BTreeSet::new();
    let mut p = buf.Mdl;
    while !p.is_null() {
        let addr = p as usize;
        if !seen.insert(addr) {
            st.violate(Rule::Misuse, format!("{routine}: MDL chain loops at {p:p}"));
            return None;
        }
        live(st, p, routine)?;
        if let Err(why) = locked(st, addr, 0) {
            st.violate(Rule::UnlockedMdlInFlight, format!("{routine}: {why}"));
            return None;
        }
        // SAFETY: the MDL is live (checked).
        let m = unsafe { &*p };
        entries.push((
            m.StartVa as usize + m.ByteOffset as usize,
            m.ByteCount as usize,
        ));
        p = m.Next;
    }
    let offset = buf.Offset as usize;
    let length = buf.Length;
    if length > 0 {
        match entries.first() {
            Some(&(_, first)) if offset >= first => {
                st.violate(
                    Rule::OffsetBeyondFirstMdl,
                    format!("{routine}: Offset {offset} >= first MDL's ByteCount {first}"),
                );
                return None;
            }
            _ => {}
        }
        let total = entries
            .iter()
            .map(|&(_, n)| n)
            .sum::<usize>()
            .saturating_sub(offset);
        if length > total {
            st.violate(
                Rule::LengthBeyondChain,
                format!(
                    "{routine}: Length {length} > {total} bytes described after Offset {offset} \
                     by {} MDL(s)",
                    entries.len()
                ),
            );
            return None;
        }
    }
    let mut data = Vec::with_capacity(length);
    let mut skip = offset;
    for &(va, count) in &entries {
        if data.len() == length {
            break;
        }
        let start = skip.min(count);
        skip = 0;
        let take = (count - start).min(length - data.len());
        // SAFETY: the MDL is live and locked, so (the driver's contract) it describes
        // `count` readable bytes at `va`; `start + take <= count`.
        let bytes = unsafe { std::slice::from_raw_parts((va + start) as *const u8, take) };
        data.extend_from_slice(bytes);
    }
    let mut pins = Vec::new();
    for addr in &seen {
        pinned(st, *addr, &mut pins);
    }
    Some(Chain {
        pinned: pins,
        count: entries.len(),
        data,
    })
}

/// Marks MDLs in flight for one more IRP.
pub(crate) fn mark_in_flight(st: &mut State, mdls: &[usize]) {
    for addr in mdls {
        if let Some(r) = st.mdls.get_mut(addr) {
            r.in_flight += 1;
            st.in_flight_mdls.insert(*addr);
        }
    }
}

/// One in-flight IRP using `addr` completed.
pub(crate) fn release_in_flight(st: &mut State, addr: usize) {
    if let Some(r) = st.mdls.get_mut(&addr) {
        r.in_flight = r.in_flight.saturating_sub(1);
        if r.in_flight == 0 {
            st.in_flight_mdls.remove(&addr);
        }
    }
}

/// An in-flight MDL describing memory in `start..end`, if any. Only MDLs in flight are
/// looked at (every pool free asks, and freed MDLs stay in the table until the session
/// ends).
pub(crate) fn in_flight_overlapping(st: &State, start: usize, end: usize) -> Option<usize> {
    st.in_flight_mdls.iter().copied().find(|a| {
        st.mdls
            .get(a)
            .is_some_and(|r| r.in_flight > 0 && r.range.0 < end && start < r.range.0 + r.range.1)
    })
}

/// Reports every MDL still allocated.
pub(crate) fn leaks(st: &State, out: &mut Vec<Violation>) {
    for (addr, rec) in st.mdls.iter().filter(|(_, r)| !r.freed) {
        out.push(Violation {
            rule: Rule::Leak,
            detail: format!(
                "MDL {addr:#x} ({:#x}+{:#x}, {:?}) not freed",
                rec.range.0, rec.range.1, rec.lock
            ),
        });
    }
}

/// Returns quarantined (freed) MDL blocks to the allocator; live ones are leaked on
/// purpose (the driver may still hold them).
pub(crate) fn release_quarantine(mdls: std::collections::BTreeMap<usize, MdlRec>) {
    for (addr, rec) in mdls.into_iter().filter(|(_, r)| r.freed) {
        // SAFETY: the block was allocated with `rec.layout` by `IoAllocateMdl`, freed
        // by the driver, and the session that could reach it is over.
        unsafe { alloc::dealloc(addr as *mut u8, rec.layout) };
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::c_void;
    use std::ptr;

    use wsksend_ffi::{IoReadAccess, KernelMode, MDL, MDL_PARTIAL};

    use crate::{Rule, session};

    fn alloc_mdl(buf: &mut [u8]) -> *mut MDL {
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        // SAFETY: `buf` is live for the test; no IRP.
        let mdl = unsafe {
            wsksend_ffi::IoAllocateMdl(buf.as_mut_ptr().cast(), len, 0, 0, ptr::null_mut())
        };
        assert!(!mdl.is_null());
        mdl
    }

    #[test]
    fn mdl_fields_match_windows() {
        let s = session();
        let mut buf = vec![0u8; 10_000];
        let mdl = alloc_mdl(&mut buf);
        // SAFETY: `mdl` is live.
        let m = unsafe { &*mdl };
        let va = buf.as_ptr() as usize;
        assert_eq!(m.StartVa as usize, va & !0xfff);
        assert_eq!(m.ByteOffset as usize, va & 0xfff);
        assert_eq!(m.ByteCount, 10_000);
        assert!(m.Next.is_null() && m.MappedSystemVa.is_null() && m.MdlFlags == 0);
        // SAFETY: `mdl` is live and unlocked.
        unsafe { wsksend_ffi::MmProbeAndLockPages(mdl, KernelMode, IoReadAccess) };
        // SAFETY: as above, now locked.
        unsafe { wsksend_ffi::MmUnlockPages(mdl) };
        // SAFETY: `mdl` came from IoAllocateMdl.
        unsafe { wsksend_ffi::IoFreeMdl(mdl) };
        s.finish();
    }

    #[test]
    fn partial_mdl_describes_the_sub_range() {
        let s = session();
        let mut buf = vec![0u8; 8192];
        let src = alloc_mdl(&mut buf);
        // SAFETY: `src` is live and unlocked.
        unsafe { wsksend_ffi::MmBuildMdlForNonPagedPool(src) };
        let target = alloc_mdl(&mut buf);
        let va = buf.as_mut_ptr().wrapping_add(100).cast::<c_void>();
        // SAFETY: both MDLs are live; `va..va+1000` is inside `src`.
        unsafe { wsksend_ffi::IoBuildPartialMdl(src, target, va, 1000) };
        // SAFETY: `target` is live.
        let t = unsafe { &*target };
        assert_eq!(t.StartVa as usize + t.ByteOffset as usize, va as usize);
        assert_eq!(t.ByteCount, 1000);
        assert_ne!(t.MdlFlags & MDL_PARTIAL, 0);
        let outside = buf.as_mut_ptr().wrapping_add(8000).cast::<c_void>();
        // SAFETY: both MDLs are live; the range is deliberately outside the source.
        unsafe { wsksend_ffi::IoBuildPartialMdl(src, target, outside, 1000) };
        // SAFETY: both came from IoAllocateMdl.
        unsafe { wsksend_ffi::IoFreeMdl(target) };
        // SAFETY: as above.
        unsafe { wsksend_ffi::IoFreeMdl(src) };
        s.finish_expecting(Rule::PartialOutsideSource);
    }

    #[test]
    fn freeing_a_probed_mdl_without_unlock_is_detected() {
        let s = session();
        let mut buf = vec![0u8; 16];
        let mdl = alloc_mdl(&mut buf);
        // SAFETY: `mdl` is live and unlocked.
        unsafe { wsksend_ffi::MmProbeAndLockPages(mdl, KernelMode, IoReadAccess) };
        // SAFETY: `mdl` came from IoAllocateMdl.
        unsafe { wsksend_ffi::IoFreeMdl(mdl) };
        s.finish_expecting(Rule::LockedMdlFreed);
    }
}
