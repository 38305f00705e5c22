//! Tagged pool: `ExAllocatePoolWithTag` / `ExFreePoolWithTag` over the host allocator.
//!
//! Blocks are 16-byte aligned and filled with `0xA5` (pool is not zeroed on Windows),
//! and `0xDD` again when freed. Every block's size and tag are recorded: freeing with
//! another tag, twice, or a pointer that is not a block are violations, as is freeing
//! memory an in-flight MDL still describes.

use std::alloc::{self, Layout};
use std::ffi::c_void;

use wsksend_ffi::{DISPATCH_LEVEL, POOL_TYPE};

use crate::checker::{Op, Rule, State, Violation, state};
use crate::kernel_export;
use crate::sync::check_irql;

/// Pool alignment (x64 pool blocks are 16-byte aligned).
const POOL_ALIGN: usize = 16;

/// One live pool block.
pub(crate) struct PoolRec {
    layout: Layout,
    tag: u32,
}

/// A pool tag as the four characters `!pool` shows.
pub(crate) fn tag_str(tag: u32) -> String {
    tag.to_le_bytes()
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() {
                char::from(b)
            } else {
                '.'
            }
        })
        .collect()
}

kernel_export! {
    /// `ExAllocatePoolWithTag`: real host memory, 16-byte aligned, filled with `0xA5`.
    /// An injected [`crate::Fault::Fail`] on [`Op::AllocPool`] returns null, and so
    /// does a low-resources failure ([`crate::lowres`]) of a driver's allocation.
    ///
    /// # Safety
    /// None.
    fn ExAllocatePoolWithTag(PoolType: POOL_TYPE, NumberOfBytes: usize, Tag: u32) -> *mut c_void {
        let _ = PoolType;
        check_irql("ExAllocatePoolWithTag", DISPATCH_LEVEL);
        let mut st = state();
        if matches!(st.take_fault(Op::AllocPool), Some(crate::Fault::Fail(_))) {
            return std::ptr::null_mut();
        }
        if crate::lowres::fail_driver_alloc(crate::lowres::Alloc::Pool) {
            return std::ptr::null_mut();
        }
        let Ok(layout) = Layout::from_size_align(NumberOfBytes.max(1), POOL_ALIGN) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `layout` has a non-zero size.
        let p = unsafe { alloc::alloc(layout) };
        if p.is_null() {
            return std::ptr::null_mut();
        }
        // SAFETY: `p` is a fresh allocation of `layout.size()` bytes.
        unsafe { p.write_bytes(0xA5, layout.size()) };
        st.freed_pool.remove(&(p as usize));
        st.pool.insert(p as usize, PoolRec { layout, tag: Tag });
        p.cast()
    }
}

kernel_export! {
    /// `ExFreePoolWithTag`: the tag must be the allocation's ([`Rule::PoolTagMismatch`]
    /// otherwise; the block is freed anyway).
    ///
    /// # Safety
    /// `P` was returned by `ExAllocatePoolWithTag` and is not used afterwards (both are
    /// checked as far as the model can).
    fn ExFreePoolWithTag(P: *mut c_void, Tag: u32) {
        check_irql("ExFreePoolWithTag", DISPATCH_LEVEL);
        let addr = P as usize;
        let mut st = state();
        if st.unloaded {
            st.violate(
                Rule::RunAfterUnload,
                format!("ExFreePoolWithTag({P:p}) after unload returned"),
            );
        }
        let Some(rec) = st.pool.remove(&addr) else {
            if st.freed_pool.contains(&addr) {
                st.violate(Rule::DoubleFree, format!("ExFreePoolWithTag({P:p}) freed twice"));
            } else {
                st.violate(
                    Rule::UnknownObject,
                    format!("ExFreePoolWithTag({P:p}): not a pool block"),
                );
            }
            return;
        };
        if rec.tag != Tag {
            st.violate(
                Rule::PoolTagMismatch,
                format!(
                    "ExFreePoolWithTag({P:p}, '{}'): allocated with '{}'",
                    tag_str(Tag),
                    tag_str(rec.tag)
                ),
            );
        }
        let end = addr + rec.layout.size();
        if let Some(mdl) = crate::mdl::in_flight_overlapping(&st, addr, end) {
            st.violate(
                Rule::BufferFreedInFlight,
                format!("pool block {P:p} freed while in-flight MDL {mdl:#x} describes it"),
            );
        }
        st.freed_pool.insert(addr);
        drop(st);
        // SAFETY: the block is `rec.layout.size()` bytes, allocated by us, and was just
        // removed from the table, so this is its only free.
        unsafe { P.cast::<u8>().write_bytes(0xDD, rec.layout.size()) };
        // SAFETY: `P` was allocated with `rec.layout` and is freed exactly once.
        unsafe { alloc::dealloc(P.cast(), rec.layout) };
    }
}

/// Reports every block still allocated.
pub(crate) fn leaks(st: &State, out: &mut Vec<Violation>) {
    for (addr, rec) in &st.pool {
        out.push(Violation {
            rule: Rule::Leak,
            detail: format!(
                "pool block {addr:#x} ({} bytes, tag '{}') not freed",
                rec.layout.size(),
                tag_str(rec.tag)
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use wsksend_ffi::NonPagedPoolNx;

    use crate::{Rule, session};

    const TAG: u32 = u32::from_le_bytes(*b"Test");

    #[test]
    fn pool_leak_is_detected() {
        let s = session();
        // SAFETY: plain allocation.
        let p = unsafe { wsksend_ffi::ExAllocatePoolWithTag(NonPagedPoolNx, 100, TAG) };
        assert!(!p.is_null());
        assert_eq!(p as usize % 16, 0);
        assert_eq!(s.live_pool(), 1);
        s.finish_expecting(Rule::Leak);
    }

    #[test]
    fn pool_round_trip_is_clean() {
        let s = session();
        // SAFETY: plain allocation.
        let p = unsafe { wsksend_ffi::ExAllocatePoolWithTag(NonPagedPoolNx, 64, TAG) };
        // SAFETY: `p` is a 64-byte block we own.
        unsafe { p.cast::<u8>().write_bytes(7, 64) };
        // SAFETY: `p` came from ExAllocatePoolWithTag with `TAG`.
        unsafe { wsksend_ffi::ExFreePoolWithTag(p, TAG) };
        assert_eq!(s.live_pool(), 0);
        s.finish();
    }

    #[test]
    fn tag_mismatch_and_double_free_are_detected() {
        let s = session();
        // SAFETY: plain allocation.
        let p = unsafe { wsksend_ffi::ExAllocatePoolWithTag(NonPagedPoolNx, 8, TAG) };
        // SAFETY: deliberately wrong tag; the model checks it.
        unsafe { wsksend_ffi::ExFreePoolWithTag(p, 0) };
        let rules: Vec<Rule> = s.violations().iter().map(|v| v.rule).collect();
        assert_eq!(rules, [Rule::PoolTagMismatch]);
        // SAFETY: deliberately a double free; the model detects it without touching `p`.
        unsafe { wsksend_ffi::ExFreePoolWithTag(p, TAG) };
        s.finish_expecting(Rule::DoubleFree);
    }
}
