//! libFuzzer target: the protocol's wire parsers on arbitrary bytes.
#![no_main]

#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::protocol(data));
