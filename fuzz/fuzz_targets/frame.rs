//! cargo-fuzz target `frame`: see `checks/frame.rs` for what it checks.
#![no_main]

#[path = "../checks/frame.rs"]
mod frame;

libfuzzer_sys::fuzz_target!(|data: &[u8]| frame::check(data));
