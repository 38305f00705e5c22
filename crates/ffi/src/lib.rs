//! Raw bindings for the parts of the Windows kernel and the Winsock Kernel (WSK) that
//! WskSend uses, written from the WDK headers
//! ([`wdm.h`](https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/),
//! [`wsk.h`](https://learn.microsoft.com/windows-hardware/drivers/ddi/wsk/)).
//!
//! `wdk-sys` has no `wsk.h` and none of the inline WDM helpers, and it cannot build on
//! Linux, so the engine and the WDM front end use these instead. Names keep their C
//! spelling; there is no logic here beyond the header's own inline functions, which are
//! redone once in [`inline`] and documented.
//!
//! Every struct whose layout we rely on carries a compile-time size/offset check against
//! x64 Windows. On Windows the functions are imported with `raw-dylib` from
//! `ntoskrnl.exe` and `netio.sys` (no import library needed); on a Linux host the same
//! symbols are defined by the `wsksend-kernel-model` crate, so host tests run the
//! engine's real code against a model of the kernel.
#![no_std]
#![allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    clippy::upper_case_acronyms,
    reason = "C names as the WDK spells them"
)]

mod functions;
pub mod inline;
mod types;
mod wsk;

pub use functions::*;
pub use types::*;
pub use wsk::*;

/// Compile-time layout check: `offset_of!(ty, field) == value`.
#[macro_export]
macro_rules! assert_offset {
    ($ty:ty, $($field:ident).+, $value:expr) => {
        const _: () = assert!(core::mem::offset_of!($ty, $($field).+) == $value);
    };
}

/// Compile-time layout check: `size_of::<ty>() == value`.
#[macro_export]
macro_rules! assert_size {
    ($ty:ty, $value:expr) => {
        const _: () = assert!(core::mem::size_of::<$ty>() == $value);
    };
}
