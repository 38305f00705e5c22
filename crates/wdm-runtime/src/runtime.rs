//! What a `no_std` kernel image needs from its runtime: a panic handler, a global
//! allocator over nonpaged pool, and the `_fltused` marker the MSVC ABI expects.

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;

use wsksend_ffi::{ExAllocatePoolWithTag, ExFreePoolWithTag, KeBugCheckEx, NonPagedPoolNx};

/// Pool tag `WskS` (shown reversed in pool dumps).
const POOL_TAG: u32 = u32::from_le_bytes(*b"WskS");

/// Bugcheck code for a Rust panic (`MANUALLY_INITIATED_CRASH1` is 0xDEADDEAD).
const PANIC_BUGCHECK: u32 = 0xDEAD_DEAD;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let line = info.location().map_or(0, |l| l.line() as usize);
    crate::log!(
        "WskSend: panic at line %u\n",
        u32::try_from(line).unwrap_or(u32::MAX)
    );
    // SAFETY: stopping the machine is always allowed; a kernel panic cannot unwind.
    unsafe { KeBugCheckEx(PANIC_BUGCHECK, line, 0, 0, 0) }
}

/// Nonpaged pool allocator: everything the driver allocates may be touched by a
/// completion routine at `DISPATCH_LEVEL` (DESIGN.md rule 6).
struct NonPagedPool;

// Pool blocks are 16-byte aligned on x64; larger alignments are not served.
const POOL_ALIGN: usize = 16;

// SAFETY: `alloc` returns null or a fresh pool block of at least `size` bytes with the
// requested alignment (<= 16), and `dealloc` frees blocks from `alloc` with the same tag.
unsafe impl GlobalAlloc for NonPagedPool {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() > POOL_ALIGN {
            return core::ptr::null_mut();
        }
        // SAFETY: any size is valid; failure returns null, which GlobalAlloc allows.
        unsafe { ExAllocatePoolWithTag(NonPagedPoolNx, layout.size().max(1), POOL_TAG) }.cast()
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with the same tag.
        unsafe { ExFreePoolWithTag(ptr.cast::<c_void>(), POOL_TAG) };
    }
}

#[global_allocator]
static ALLOCATOR: NonPagedPool = NonPagedPool;

/// The MSVC ABI expects this symbol in any image that uses floating point.
#[unsafe(no_mangle)]
pub static _fltused: i32 = 0;

// The compiler lowers copies and fills to calls of the C memory routines; a driver
// takes them from the kernel, which exports them.
#[cfg_attr(
    target_os = "windows",
    link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")
)]
unsafe extern "C" {
    fn memcpy(dest: *mut c_void, src: *const c_void, n: usize) -> *mut c_void;
    fn memmove(dest: *mut c_void, src: *const c_void, n: usize) -> *mut c_void;
    fn memset(dest: *mut c_void, c: i32, n: usize) -> *mut c_void;
    fn memcmp(a: *const c_void, b: *const c_void, n: usize) -> i32;
}

/// Keeps the imports above in the image even when no Rust code names them.
#[used]
static MEMORY_ROUTINES: [unsafe extern "C" fn(); 4] = [
    // SAFETY: only the addresses are taken; nothing calls through these pointers.
    unsafe {
        core::mem::transmute::<
            unsafe extern "C" fn(*mut c_void, *const c_void, usize) -> *mut c_void,
            unsafe extern "C" fn(),
        >(memcpy)
    },
    // SAFETY: as above.
    unsafe {
        core::mem::transmute::<
            unsafe extern "C" fn(*mut c_void, *const c_void, usize) -> *mut c_void,
            unsafe extern "C" fn(),
        >(memmove)
    },
    // SAFETY: as above.
    unsafe {
        core::mem::transmute::<
            unsafe extern "C" fn(*mut c_void, i32, usize) -> *mut c_void,
            unsafe extern "C" fn(),
        >(memset)
    },
    // SAFETY: as above.
    unsafe {
        core::mem::transmute::<
            unsafe extern "C" fn(*const c_void, *const c_void, usize) -> i32,
            unsafe extern "C" fn(),
        >(memcmp)
    },
];
