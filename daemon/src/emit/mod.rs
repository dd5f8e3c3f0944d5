//! Emitters (docs/emit.md): the files other tools read, written from the vault.
//! This module holds the pure merge functions; each takes a file's current
//! text and the vault's entries and returns the new text, changing nothing
//! that is not the vault's.

pub mod aws_ini;
pub mod docker_json;
pub mod kube_yaml;
