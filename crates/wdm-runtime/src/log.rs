//! `DbgPrint` logging. Under Wine it lands in the `warn+debugstr` channel, which
//! `cargo xtask` captures in `target/e2e/driver.log`.

#[cfg_attr(
    target_os = "windows",
    link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")
)]
unsafe extern "C" {
    /// `DbgPrint`: printf-style kernel debug output.
    pub fn DbgPrint(format: *const core::ffi::c_char, ...) -> u32;
}

/// Prints a NUL-terminated format with up to two `%u`/`%x` arguments.
pub fn print(fmt: &core::ffi::CStr, a: u32, b: u32) {
    // SAFETY: `fmt` is NUL-terminated; DbgPrint reads at most two 32-bit integer
    // arguments for the conversions our formats contain, and extra ones are ignored.
    unsafe { DbgPrint(fmt.as_ptr(), a, b) };
}

/// `log!("fmt %u\n", args..)`: `DbgPrint` with a format literal and up to two `u32`s.
#[macro_export]
macro_rules! log {
    ($fmt:literal) => {
        $crate::log::print($crate::c_str!($fmt), 0, 0)
    };
    ($fmt:literal, $a:expr) => {
        $crate::log::print($crate::c_str!($fmt), $a, 0)
    };
    ($fmt:literal, $a:expr, $b:expr) => {
        $crate::log::print($crate::c_str!($fmt), $a, $b)
    };
}

/// A `&'static CStr` from a string literal.
#[macro_export]
macro_rules! c_str {
    ($s:literal) => {
        match core::ffi::CStr::from_bytes_with_nul(concat!($s, "\0").as_bytes()) {
            Ok(s) => s,
            Err(_) => panic!("format contains NUL"),
        }
    };
}
