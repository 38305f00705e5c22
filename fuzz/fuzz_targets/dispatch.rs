//! libFuzzer target: programs of IOCTL requests through the dispatcher, the engine
//! and the kernel model.
#![no_main]

#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::dispatch(data));
