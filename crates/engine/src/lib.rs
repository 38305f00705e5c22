//! WskSend's engine: a Winsock Kernel client that opens TCP connections and sends with
//! `WskSend` over locked MDL chains, with IRPs it allocates itself
//! ([`wsk.h`](https://learn.microsoft.com/windows-hardware/drivers/ddi/wsk/)).
//!
//! It obeys the kernel rules of DESIGN.md; on a Linux host the same code runs against
//! the `wsksend-kernel-model` crate, which fails tests that break them.
//!
//! - [`client::Client`]: `WskRegister`, lazy provider capture, connect, shutdown.
//! - [`connection::Connection`]: ordered, pipelined sends with cancel and close.
//! - [`mdl`]: building and validating `WSK_BUF` chains.
//! - [`global`]: the driver-wide client; [`kapi`]: the C API other drivers call.
#![no_std]

extern crate alloc;

pub mod client;
pub mod connection;
mod control;
mod error;
pub mod global;
pub mod irp;
pub mod kapi;
pub mod karc;
pub mod log;
pub mod mdl;
pub mod pool;
pub mod rundown;
pub mod sync;

pub use control::RawAddr;
pub use error::{Error, Result, to_result};
