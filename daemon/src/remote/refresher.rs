//! Refresh of temporary credentials (docs/refresh.md).
//!
//! A record with a `refresh_command` gets new values from that command's
//! stdout, credential_process JSON. The daemon refreshes a record before it
//! hands it out (`get`, `exec`, `aws-process`, helpers) when little of its
//! lifetime is left, and in the background when it is bound to an emitted
//! file, so no consumer is given a dying key.
//!
//! One refresh at a time per record whatever the number of clients (single
//! flight: the others wait for its result and then find the record fresh).
//! A failed refresh keeps the still-valid value, backs off, and shows in
//! `vault status`.

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{info, warn};
use vault_protocol::credential::CredentialType;
use vault_protocol::message::RefreshInfo;
use vault_protocol::timefmt::Timestamp;

use super::Shared;
use crate::engine::refresh::MAX_CHAIN;
use crate::engine::refresh::{Job, Minted, Plan, Unminted, parse_output};

/// Most stdout a refresh command may print.
const MAX_OUTPUT: usize = 256 * 1024;
/// First retry delay after a failure; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Gets the job's new values (the command on the blocking pool, STS and
/// IAM Identity Center over the network).
pub async fn execute(
    daemon: &Arc<Shared>,
    job: &Job,
    timeout: Duration,
) -> Result<Minted, Unminted> {
    let http = &daemon.http;
    Ok(match &job.plan {
        Plan::Command(command) => {
            let (command, kind) = (command.clone(), job.kind);
            tokio::task::spawn_blocking(move || run(&command, kind, timeout))
                .await
                .map_err(|_| "the refresh command's task failed".to_owned())??
        }
        Plan::Sts(plan) => crate::remote::sts::mint(http, plan, timeout).await?,
        Plan::Sso(plan) => crate::remote::sso::mint(daemon, plan).await?,
        Plan::Broken(why) => return Err(why.clone().into()),
    })
}

/// Runs a refresh command with a clean stdin and a time limit, and reads
/// its output as the values of a `kind` record. Blocking.
pub fn run(command: &str, kind: CredentialType, timeout: Duration) -> Result<Minted, String> {
    parse_output(kind, &run_raw(command, timeout)?)
}

/// Runs `sh -c command` with a clean stdin and a time limit; its stdout,
/// when it exits 0. Blocking.
pub fn run_raw(command: &str, timeout: Duration) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the refresh command: {e}"))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let out = std::thread::spawn(move || {
        let mut buf = zeroize::Zeroizing::new(Vec::new());
        let read = (&mut stdout)
            .take(MAX_OUTPUT as u64 + 1)
            .read_to_end(&mut buf);
        // Drain the rest so the child never blocks on a full pipe.
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        read.map(|_| buf)
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(4096).read_to_end(&mut buf);
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the refresh command did not finish within {}s",
                    timeout.as_secs()
                ));
            }
            Err(e) => return Err(format!("cannot wait for the refresh command: {e}")),
        }
    };
    let stdout = out
        .join()
        .map_err(|_| "reading the refresh command failed".to_owned())?
        .map_err(|e| format!("cannot read the refresh command's output: {e}"))?;
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        return Err(format!(
            "the refresh command failed ({status}){}",
            first_line(&stderr)
        ));
    }
    if stdout.len() > MAX_OUTPUT {
        return Err(format!(
            "the refresh command printed more than {MAX_OUTPUT} bytes"
        ));
    }
    Ok(stdout)
}

/// `: <first line of stderr>`, shortened; empty when there is none. The
/// command's own diagnostics (e.g. "run aws sso login") are what the user
/// needs to see.
fn first_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    match text.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => {
            let short: String = line.chars().take(200).collect();
            format!(": {short}")
        }
        None => String::new(),
    }
}

/// A failed refresh, remembered for backoff and `vault status`.
#[derive(Debug, Clone)]
struct Failure {
    name: String,
    revision: u64,
    error: String,
    count: u32,
    retry_at: Timestamp,
    expires_at: Option<Timestamp>,
}

/// The daemon's refresh state: one flight per record, and failures.
#[derive(Debug, Default)]
pub struct Refresher {
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    failures: Mutex<HashMap<String, Failure>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Refresher {
    /// The flight lock of record `id`: whoever holds it is the one refresh
    /// of that record.
    pub fn flight(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut flights = locked(&self.flights);
        // Forget flights nobody holds or waits for, so the map stays small.
        flights.retain(|_, f| Arc::strong_count(f) > 1);
        Arc::clone(flights.entry(id.to_owned()).or_default())
    }

    /// Whether `job` must wait: its record failed at this revision and the
    /// retry time has not come.
    pub fn backing_off(&self, job: &Job, now: Timestamp) -> bool {
        locked(&self.failures)
            .get(&job.id)
            .is_some_and(|f| f.revision == job.revision && f.retry_at > now)
    }

    /// Records a failure and when to try again. `kept`: the revision the
    /// failed refresh itself made of the record, if it kept something
    /// (else the failure is the job's revision's).
    pub fn failed(&self, job: &Job, failure: Unminted, now: Timestamp) {
        let Unminted { why: error, kept } = failure;
        let revision = kept.unwrap_or(job.revision);
        let mut failures = locked(&self.failures);
        let count = failures
            .get(&job.id)
            .filter(|f| f.revision == job.revision || f.revision == revision)
            .map_or(1, |f| f.count.saturating_add(1));
        let delay = FIRST_BACKOFF
            .saturating_mul(1 << (count - 1).min(10))
            .min(MAX_BACKOFF);
        failures.insert(
            job.id.clone(),
            Failure {
                name: job.name.clone(),
                revision,
                error,
                count,
                retry_at: now.plus(delay),
                expires_at: job.expires_at,
            },
        );
    }

    /// Why the last refresh of record `id` failed, if it did.
    pub fn error_of(&self, id: &str) -> Option<String> {
        locked(&self.failures).get(id).map(|f| f.error.clone())
    }

    /// Forgets the failures of record `id` (it was refreshed).
    pub fn succeeded(&self, id: &str) {
        locked(&self.failures).remove(id);
    }

    /// The failing records, for `vault status`, by name. `live(name, id,
    /// revision)` says whether the record still exists as it failed.
    pub fn report(&self, live: impl Fn(&str, &str, u64) -> bool) -> Vec<RefreshInfo> {
        let mut failures = locked(&self.failures);
        failures.retain(|id, f| live(&f.name, id, f.revision));
        let mut out: Vec<RefreshInfo> = failures
            .values()
            .map(|f| RefreshInfo {
                name: f.name.clone(),
                error: f.error.clone(),
                failures: f.count,
                retry_at: f.retry_at,
                expires_at: f.expires_at,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// Refreshes every record of `names` that is due, one flight per record:
/// a caller that finds a refresh of the same record under way waits for it
/// and then finds the record fresh. Never fails: a failure is recorded (and
/// logged) and the request that follows is served the current value.
pub async fn ensure_fresh(daemon: &Arc<Shared>, names: &[String]) {
    for (i, name) in names.iter().enumerate() {
        if names[..i].contains(name) {
            continue;
        }
        refresh_one(daemon, name).await;
    }
}

/// Called by the ticker: refreshes, in the background, the records bound
/// to emitted files that are due.
pub fn refresh_bound(daemon: &Arc<Shared>) {
    let names = {
        let engine = daemon.engine();
        engine.refresh_due_bound(engine.config().refresh_ahead, Timestamp::now())
    };
    for name in names {
        let d = Arc::clone(daemon);
        tokio::spawn(async move { refresh_one(&d, &name).await });
    }
}

async fn refresh_one(daemon: &Arc<Shared>, name: &str) {
    refresh_chain(daemon, name, 0).await;
}

/// Refreshes `name` if it is due, after its source when that is minted
/// too (a chain of roles: each hop signs the next), at most
/// [`MAX_CHAIN`] deep; a loop is refused by the plan.
async fn refresh_chain(daemon: &Arc<Shared>, name: &str, depth: usize) {
    let (ahead, timeout) = {
        let c = daemon.engine();
        (c.config().refresh_ahead, c.config().refresh_timeout)
    };
    let due_id = daemon
        .engine()
        .refresh_due_id(name, ahead, Timestamp::now());
    let Some(id) = due_id else {
        return;
    };
    if depth < MAX_CHAIN {
        let source = daemon.engine().minted_source(name);
        if let Some(source) = source {
            Box::pin(refresh_chain(daemon, &source, depth + 1)).await;
        }
    }
    let flight = daemon.refresher.flight(&id);
    let _flying = flight.lock().await;
    // Whoever held the flight before us may have refreshed it already.
    let now = Timestamp::now();
    let job = daemon.engine().refresh_job(name, ahead, now);
    let Some(job) = job else {
        return;
    };
    if daemon.refresher.backing_off(&job, now) {
        return;
    }
    info!(record = %job.id, "refreshing");
    let job = Arc::new(job);
    let result = match execute(daemon, &job, timeout).await {
        Ok(minted) => {
            let (d, j) = (Arc::clone(daemon), Arc::clone(&job));
            tokio::task::spawn_blocking(move || {
                d.engine()
                    .apply_refresh(&j, minted, Timestamp::now())
                    .map_err(|e| e.message)
            })
            .await
            .unwrap_or_else(|_| Err("the refresh task failed; see vaultd.log".to_owned()))
            .map_err(Unminted::from)
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(summary) => {
            info!(record = %job.id, revision = summary.revision, "refreshed");
            daemon.refresher.succeeded(&job.id);
            // A published credential goes out with its new value.
            daemon.publisher.kick();
        }
        Err(failure) => {
            warn!(record = %job.id, error = %failure.why, "refresh failed; the current value is kept");
            daemon.refresher.failed(&job, failure, Timestamp::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(kind: CredentialType, command: &str) -> Job {
        Job {
            id: "0123".into(),
            name: "n".into(),
            kind,
            revision: 1,
            expires_at: None,
            plan: Plan::Command(command.into()),
        }
    }

    #[test]
    fn commands_run_with_a_time_limit_and_report_failures() {
        let t = Duration::from_secs(5);
        let token = CredentialType::Token;
        let ok = run(r#"printf '{"Version":1,"token":"v"}'"#, token, t).unwrap();
        assert_eq!(ok.fields["token"].expose_secret(), "v");
        let e = run("echo 'run sso login' >&2; exit 3", token, t).unwrap_err();
        assert!(
            e.contains("exit status: 3") && e.contains("run sso login"),
            "{e}"
        );
        let e = run("sleep 5", token, Duration::from_millis(200)).unwrap_err();
        assert!(e.contains("did not finish"), "{e}");
    }

    #[test]
    fn failures_back_off_and_reset_on_a_new_revision() {
        let r = Refresher::default();
        let now = Timestamp(1000);
        let j = job(CredentialType::Token, "x");
        r.failed(&j, "boom".to_owned().into(), now);
        assert!(r.backing_off(&j, now));
        assert!(!r.backing_off(&j, now.plus(FIRST_BACKOFF)));
        r.failed(&j, "boom".to_owned().into(), now);
        assert!(r.backing_off(&j, now.plus(FIRST_BACKOFF)));
        let newer = Job {
            revision: 2,
            ..job(CredentialType::Token, "x")
        };
        assert!(!r.backing_off(&newer, now));
        assert_eq!(r.report(|_, _, _| true)[0].failures, 2);
        r.succeeded(&j.id);
        assert!(r.report(|_, _, _| true).is_empty());
    }
}
