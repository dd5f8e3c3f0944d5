//! cargo-fuzz target `aws_ini_merge`: see `checks/aws_ini.rs` for what it checks.
#![no_main]

#[path = "../checks/aws_ini.rs"]
mod aws_ini;
#[path = "../checks/input.rs"]
mod input;

libfuzzer_sys::fuzz_target!(|data: &[u8]| aws_ini::check(data));
