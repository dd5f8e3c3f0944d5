//! cargo-fuzz target `agent_message`: see `checks/agent.rs` for what it
//! checks.
#![no_main]

#[path = "../checks/agent.rs"]
mod agent;

libfuzzer_sys::fuzz_target!(|data: &[u8]| agent::check(data));
