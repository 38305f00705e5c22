//! A stand-in `bcryptprimitives.dll` for Wine 8.
//!
//! Rust's standard library on Windows seeds its hash maps from
//! `bcryptprimitives.dll!ProcessPrng`, which Wine 8.0 does not provide, so a std `.exe`
//! (our harness) fails to start there. Placed beside the `.exe`, this DLL answers
//! `ProcessPrng` with `advapi32!SystemFunction036` (`RtlGenRandom`), which Wine has.
//! It is only ever used under Wine; Windows has the real DLL.
#![no_std]

#[cfg_attr(
    target_os = "windows",
    link(name = "advapi32.dll", kind = "raw-dylib", modifiers = "+verbatim")
)]
unsafe extern "system" {
    /// `RtlGenRandom`.
    fn SystemFunction036(buffer: *mut u8, length: u32) -> u8;
}

/// `ProcessPrng`: fills `data[..len]` with random bytes; always returns `TRUE`, like
/// the real one (which cannot fail).
///
/// # Safety
/// `data` is valid for writes of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn ProcessPrng(data: *mut u8, len: usize) -> i32 {
    let mut done = 0;
    while done < len {
        // CAST: at most u32::MAX bytes per call.
        let chunk = (len - done).min(u32::MAX as usize) as u32;
        let at = data.wrapping_add(done);
        // SAFETY: `at .. at + chunk` lies inside the caller's buffer.
        let ok = unsafe { SystemFunction036(at, chunk) };
        if ok == 0 {
            // The real ProcessPrng cannot fail; a failure here is unrecoverable.
            loop {
                core::hint::spin_loop();
            }
        }
        done += chunk as usize;
    }
    1
}

#[cfg(target_os = "windows")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

/// Expected by the MSVC ABI in any image.
#[cfg(target_os = "windows")]
#[unsafe(no_mangle)]
pub static _fltused: i32 = 0;
