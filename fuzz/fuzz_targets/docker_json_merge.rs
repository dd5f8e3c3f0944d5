//! cargo-fuzz target `docker_json_merge`: see `checks/docker_json.rs` for what it checks.
#![no_main]

#[path = "../checks/docker_json.rs"]
mod docker_json;
#[path = "../checks/input.rs"]
mod input;

libfuzzer_sys::fuzz_target!(|data: &[u8]| docker_json::check(data));
