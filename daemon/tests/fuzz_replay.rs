//! The daemon's fuzz targets (`fuzz/`: `aws_ini_merge`, `docker_json_merge`,
//! `kube_yaml_merge`,
//! `record_body`, `agent_message`) replayed in the normal test suite: every seed and every
//! input that once crashed goes through the very checks the targets run
//! (`fuzz/checks/*.rs`, included by path), so a regression fails
//! `cargo test`, no fuzzer needed.

#[path = "../../fuzz/checks/agent.rs"]
mod agent;
#[path = "../../fuzz/checks/aws_ini.rs"]
mod aws_ini;
#[path = "../../fuzz/checks/docker_json.rs"]
mod docker_json;
#[path = "../../fuzz/checks/input.rs"]
mod input;
#[path = "../../fuzz/checks/kube_yaml.rs"]
mod kube_yaml;
#[path = "../../fuzz/checks/record_body.rs"]
mod record_body;
#[path = "../../fuzz/checks/replay.rs"]
mod replay;

#[test]
fn aws_ini_merge_inputs_replay() {
    replay::replay("aws_ini_merge", aws_ini::check);
}

#[test]
fn docker_json_merge_inputs_replay() {
    replay::replay("docker_json_merge", docker_json::check);
}

#[test]
fn kube_yaml_merge_inputs_replay() {
    replay::replay("kube_yaml_merge", kube_yaml::check);
}

#[test]
fn record_body_inputs_replay() {
    replay::replay("record_body", record_body::check);
}

#[test]
fn agent_message_inputs_replay() {
    replay::replay("agent_message", agent::check);
}
