//! cargo-fuzz target `record_body`: see `checks/record_body.rs` for what it checks.
#![no_main]

#[path = "../checks/record_body.rs"]
mod record_body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| record_body::check(data));
