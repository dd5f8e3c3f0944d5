//! The protocol's fuzz targets (`fuzz/`: `frame`, `server_bodies`) replayed
//! in the normal test suite: every seed and every input that once crashed
//! goes through the very checks the targets run (`fuzz/checks/*.rs`,
//! included by path), so a regression fails `cargo test`, no fuzzer needed.

#[path = "../../fuzz/checks/frame.rs"]
mod frame;
#[path = "../../fuzz/checks/replay.rs"]
mod replay;
#[path = "../../fuzz/checks/server_bodies.rs"]
mod server_bodies;

#[test]
fn frame_inputs_replay() {
    replay::replay("frame", frame::check);
}

#[test]
fn server_bodies_inputs_replay() {
    replay::replay("server_bodies", server_bodies::check);
}
