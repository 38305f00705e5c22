//! The runtime of our `no_std` WDM driver images (`crates/wdm`, `crates/kapi-client`):
//! the named device every image creates, IRP completion, a panic handler that
//! bugchecks, a global allocator over nonpaged pool, `DbgPrint`
//! logging, the kernel's C memory routines and the `_fltused` marker. Each image links
//! exactly one copy. Only meaningful for `x86_64-pc-windows-msvc`.
#![no_std]

pub mod device;
pub mod log;
mod runtime;
