//! kubectl for the tests of `vault eks token` and `vault gke token`: the
//! installed client, a kubeconfig whose user is an exec entry (or a static
//! token), and a raw GET through it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{Run, VaultHome, run_command, which};

/// `kubectl`, or `None` after printing why the test is skipped (a failure
/// under `VAULT_TEST_REQUIRE_KUBECTL`, which `.ci/run` sets).
pub fn kubectl(test: &str) -> Option<PathBuf> {
    if let Some(k) = which("kubectl") {
        return Some(k);
    }
    let why = format!("SKIP {test}: needs kubectl (bash .ci/run installs one)");
    assert!(
        std::env::var_os("VAULT_TEST_REQUIRE_KUBECTL").is_none(),
        "{why}"
    );
    eprintln!("{why}");
    None
}

/// Writes a kubeconfig at `path` with one cluster (`server`, trusted
/// through `ca`) and one user whose `user:` is `user` (YAML, indented 4).
pub fn kubeconfig(path: &Path, server: &str, ca: &Path, user: &str) -> PathBuf {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: demo\n  cluster:\n    server: {server}\n    \
         certificate-authority: {}\ncontexts:\n- name: demo\n  context:\n    cluster: demo\n    \
         user: me\ncurrent-context: demo\nusers:\n- name: me\n  user:\n{user}",
        ca.display()
    );
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path.to_owned()
}

/// The `user:` of an exec entry running `vault ARGS` (API `version`:
/// `v1beta1` or `v1`).
pub fn exec_user(vault: &Path, args: &[&str], version: &str) -> String {
    format!(
        "    exec:\n      apiVersion: client.authentication.k8s.io/{version}\n      command: {}\n      \
         args: [{}]\n      interactiveMode: Never\n",
        vault.display(),
        args.join(", ")
    )
}

/// `kubectl get --raw PATH` with the kubeconfig `config`.
pub fn get_raw(vh: &VaultHome, kubectl: &Path, config: &Path, path: &str) -> Run {
    let mut cmd = vh.command(kubectl, ["get", "--raw", path]);
    cmd.arg("--kubeconfig").arg(config);
    run_command(cmd, None, Duration::from_secs(60))
}
