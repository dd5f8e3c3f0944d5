//! cargo-fuzz target `kube_yaml_merge`: see `checks/kube_yaml.rs` for what it checks.
#![no_main]

#[path = "../checks/input.rs"]
mod input;
#[path = "../checks/kube_yaml.rs"]
mod kube_yaml;

libfuzzer_sys::fuzz_target!(|data: &[u8]| kube_yaml::check(data));
