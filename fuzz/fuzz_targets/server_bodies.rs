//! cargo-fuzz target `server_bodies`: see `checks/server_bodies.rs` for what it checks.
#![no_main]

#[path = "../checks/server_bodies.rs"]
mod server_bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| server_bodies::check(data));
