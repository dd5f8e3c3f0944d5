//! `vault rotate` (docs/lifecycle.md). For an `aws` record: check the
//! key and the IAM user's other keys, create a key, store it, verify it
//! with STS (waiting out IAM's propagation), report every file and
//! platform it reached, deactivate the old key and delete it (at once, or
//! after a grace the daemon waits out). At every step one key is stored
//! and works: a failure before the new key is verified puts the old one
//! back; a failure after leaves the new one and says how to finish. For
//! any type with named fields: set the values, and report the same.
//!
//! Keys go only to endpoints of this machine (`config.toml`, or a record
//! field approved here); nothing said here holds a secret.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};
use vault_protocol::message::{RotateReport, RotateStep, StepOutcome};
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{CredentialType, ErrorCode, Response, SecretValue, WireError};

use super::Shared;
use super::http::Http;
use super::iam;
use super::sigv4::Keys;
use super::syncer::blocking;
use crate::engine::rotate::{AwsPlan, Pending, PendingKeys, Stage};

/// How long the new key may take to work unless the request says.
pub const VERIFY: Duration = Duration::from_secs(30);
/// Each IAM or STS call's limit.
const CALL: Duration = Duration::from_secs(15);
/// Between two tries of the new key.
const RETRY: Duration = Duration::from_secs(2);
/// How often the daemon looks for old keys due for deletion.
const SWEEP: Duration = Duration::from_secs(60);
/// After a background deletion failed, the next try.
const BACKOFF: Duration = Duration::from_secs(600);
/// The new key's check in the background (the key was verified before).
const BACKGROUND_VERIFY: Duration = Duration::from_secs(5);

/// One rotation at a time: two would each see the other's new key.
#[derive(Debug, Default)]
pub struct Rotator {
    one: tokio::sync::Mutex<()>,
    /// Wakes the background look for due deletions (a grace ended).
    wake: tokio::sync::Notify,
    /// Records whose background try failed, and when: left alone for
    /// [`BACKOFF`] unless a record changes meanwhile.
    failed: std::sync::Mutex<HashMap<String, Instant>>,
}

impl Rotator {
    /// Looks for due rotations now (a record changed: whatever stopped
    /// an earlier try may be gone).
    pub fn kick(&self) {
        self.failed_tries().clear();
        self.wake.notify_one();
    }

    fn failed_tries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What `vault rotate` asked.
#[derive(Debug)]
pub struct Asked {
    /// New values of named fields; empty: an aws key rotation.
    pub fields: BTreeMap<String, SecretValue>,
    /// How long the old key stays, inactive (default none).
    pub grace: Option<Duration>,
    /// How long the new key may take to work.
    pub verify: Option<Duration>,
    /// Finish an earlier rotation.
    pub finish: bool,
}

fn failed(msg: String) -> WireError {
    WireError::new(ErrorCode::Failed, msg)
}

fn step(report: &mut RotateReport, name: &str, outcome: StepOutcome, detail: String) {
    report.steps.push(RotateStep::new(name, outcome, detail));
}

fn report(name: &str, kind: CredentialType, revision: u64) -> RotateReport {
    RotateReport {
        name: name.to_owned(),
        kind,
        complete: false,
        steps: Vec::new(),
        revision,
        live_key: None,
        old_key: None,
        files: Vec::new(),
        publications: Vec::new(),
        running: Vec::new(),
        next: None,
    }
}

/// Runs a rotation.
pub async fn rotate(d: &Arc<Shared>, name: &str, asked: Asked) -> Result<Response, WireError> {
    let _one = d.rotator.one.lock().await;
    // The user is at work: the idle lock must not fall between storing a
    // key and verifying it (the undo needs the vault unlocked).
    d.engine().touch(Timestamp::now());
    if !asked.fields.is_empty() {
        if asked.finish || asked.grace.is_some() {
            return Err(WireError::new(
                ErrorCode::Usage,
                "--grace and --finish belong to an aws key rotation, which takes no FIELD=VALUE",
            ));
        }
        return rotate_fields(d, name, asked.fields).await;
    }
    let verify = asked.verify.unwrap_or(VERIFY);
    let r = if asked.finish {
        finish(d, name, verify, false).await?
    } else {
        rotate_aws(d, name, asked.grace.unwrap_or_default(), verify).await?
    };
    Ok(Response::Rotated(r))
}

/// `vault rotate NAME FIELD=-`.
async fn rotate_fields(
    d: &Arc<Shared>,
    name: &str,
    fields: BTreeMap<String, SecretValue>,
) -> Result<Response, WireError> {
    let changed: Vec<String> = fields.keys().cloned().collect();
    let n = name.to_owned();
    let before = Timestamp::now();
    let summary = blocking(d, move |e| e.rotate_fields(&n, fields, Timestamp::now())).await?;
    d.syncer.kick();
    let mut r = report(name, summary.kind, summary.revision);
    step(
        &mut r,
        "set",
        StepOutcome::Ok,
        format!(
            "revision {} holds the new {}; the old one stays in the history",
            summary.revision,
            changed.join(", ")
        ),
    );
    consumers(d, name, &mut r, before).await;
    conclude(&mut r);
    Ok(Response::Rotated(r))
}

/// Where the new value went: every emitted file (rewritten by the
/// change itself), every platform (pushed now), and the `vault exec`
/// processes still holding the old value: handed it at or before
/// `before`, the time just before the new value was stored.
async fn consumers(d: &Arc<Shared>, name: &str, r: &mut RotateReport, before: Timestamp) {
    let n = name.to_owned();
    let now = Timestamp::now();
    let aws = r.kind == CredentialType::Aws;
    let (files, running) = blocking(d, move |e| {
        Ok((e.files_of(&n, now), e.exec_holders(&n, before, aws)))
    })
    .await
    .unwrap_or_default();
    for f in &files {
        let outcome = if f.state.needs_attention() {
            StepOutcome::Failed
        } else {
            StepOutcome::Ok
        };
        let detail = format!("{} [{}] ({}): {}", f.path, f.section, f.kind, f.state);
        step(r, "file", outcome, detail);
    }
    let pubs = super::publisher::push_now(d, name).await;
    for p in &pubs {
        use vault_protocol::message::PublishState as S;
        let outcome = match p.state {
            S::Published => StepOutcome::Ok,
            S::Failed => StepOutcome::Failed,
            S::Pending | S::Missing | S::Unpublishing => StepOutcome::Pending,
        };
        let mut detail = format!("'{}' on {}: {:?}", p.remote_name, p.remote, p.state);
        if let Some(e) = &p.error {
            detail.push_str(&format!(" ({e})"));
        }
        step(r, "publish", outcome, detail.to_lowercase());
    }
    r.files = files;
    r.publications = pubs;
    r.running = running;
}

/// Sets `complete` and, when something is left, `next`.
fn conclude(r: &mut RotateReport) {
    let failed = |s: &str| {
        r.steps
            .iter()
            .any(|x| x.step == s && x.outcome == StepOutcome::Failed)
    };
    if r.next.is_none() && failed("file") {
        r.next = Some(
            "an emitted file was not updated: 'vault emit list' says why, 'vault emit repair' \
             writes it again"
                .into(),
        );
    }
    if r.next.is_none()
        && r.steps
            .iter()
            .any(|x| x.step == "publish" && x.outcome != StepOutcome::Ok)
    {
        r.next = Some(
            "a platform does not have the new value yet: it goes out when the platform \
             answers; 'vault remote status REMOTE' shows where it stands"
                .into(),
        );
    }
    r.complete = !r.steps.iter().any(|x| x.outcome == StepOutcome::Failed);
}

/// Whether STS takes `keys` (as `want`, when given), trying again until
/// `within` has passed: IAM takes a few seconds to let a new key in.
async fn verify_key(
    http: &Http,
    plan: &AwsPlan,
    keys: &Keys<'_>,
    want: Option<&str>,
    within: Duration,
) -> Result<String, String> {
    let start = Instant::now();
    let mut tries = 0u32;
    loop {
        tries += 1;
        let left = within.saturating_sub(start.elapsed());
        let limit = CALL.min(left.max(Duration::from_secs(1)));
        let said =
            super::sts::caller_identity(http, &plan.sts_endpoint, &plan.region, keys, limit).await;
        let waited = start.elapsed().as_secs_f64();
        match said {
            Ok(who) => {
                if let Some(want) = want.filter(|w| *w != who.arn) {
                    return Err(format!("STS says the key is {}, not {want}", who.arn));
                }
                return Ok(format!(
                    "STS takes {} as {} (try {tries}, {waited:.1} s)",
                    keys.access_key_id, who.arn
                ));
            }
            Err(e) if start.elapsed() + RETRY >= within => {
                return Err(format!("{e} (try {tries}, {waited:.1} s)"));
            }
            Err(_) => tokio::time::sleep(RETRY).await,
        }
    }
}

/// A key rotation from the start.
async fn rotate_aws(
    d: &Arc<Shared>,
    name: &str,
    grace: Duration,
    verify: Duration,
) -> Result<RotateReport, WireError> {
    let n = name.to_owned();
    let plan = Arc::new(blocking(d, move |e| e.aws_rotation(&n)).await?);
    // An ended rotation's note is replaced by this one's row.
    if let Some(p) = plan.pending.as_ref().filter(|p| p.stage != Stage::Ended) {
        let what = match p.stage {
            Stage::Deactivate => "deactivated and deleted",
            Stage::Delete => "deleted",
            Stage::Reactivate | Stage::Ended => "turned on again (the record holds it)",
        };
        return Err(WireError::new(
            ErrorCode::Conflict,
            format!(
                "an earlier rotation of '{name}' is not finished: its old key {} is still to be \
                 {what}. Run 'vault rotate {name} --finish' first",
                p.keys.old_key
            ),
        ));
    }
    let http = d.http.clone();
    let old_id = plan.access_key_id.clone();
    let old = Keys {
        access_key_id: &plan.access_key_id,
        secret_access_key: &plan.secret,
        session_token: None,
    };
    let unchanged = format!("nothing was changed: '{name}' still holds {old_id}");
    // Before anything changes: no other record holds the key, the key
    // works, STS answers, and IAM has room for a second key.
    if let Some(why) = copies_refusal(d, name, &plan.id, &old_id).await {
        return Err(failed(format!("{why}; {unchanged}")));
    }
    let who = super::sts::caller_identity(&http, &plan.sts_endpoint, &plan.region, &old, CALL)
        .await
        .map_err(|e| {
            failed(format!(
                "'{name}''s key {old_id} does not work now: {e}; {unchanged}"
            ))
        })?;
    let keys = iam::list_keys(&http, &plan.iam_endpoint, &old, CALL)
        .await
        .map_err(|e| {
            failed(format!(
                "cannot list the access keys of {}: {e}; {unchanged}",
                who.arn
            ))
        })?;
    if keys.len() >= 2 {
        let others: Vec<&iam::KeyInfo> = keys.iter().filter(|k| k.id != old_id).collect();
        let listed: Vec<String> = others
            .iter()
            .map(|k| match &k.created {
                Some(c) => format!("{} ({}, made {c})", k.id, k.status),
                None => format!("{} ({})", k.id, k.status),
            })
            .collect();
        let first = others.first().map_or("KEY_ID", |k| k.id.as_str());
        return Err(failed(format!(
            "{} already has {} access keys, the most IAM allows: '{name}''s {old_id} and {}. \
             Delete the one no longer in use ('aws iam delete-access-key --access-key-id \
             {first}'), then run 'vault rotate {name}' again; {unchanged}",
            who.arn,
            keys.len(),
            listed.join(", ")
        )));
    }
    let mut r = report(name, CredentialType::Aws, plan.revision);
    r.old_key = Some(old_id.clone());
    r.live_key = Some(old_id.clone());
    step(
        &mut r,
        "check",
        StepOutcome::Ok,
        format!(
            "{old_id} is {} (account {}); the user has {} access key{}",
            who.arn,
            who.account,
            keys.len(),
            if keys.len() == 1 { "" } else { "s" }
        ),
    );
    let new = iam::create_key(&http, &plan.iam_endpoint, &old, CALL)
        .await
        .map_err(|e| {
            failed(format!(
                "{e}; {unchanged}. Had IAM made a key all the same, 'aws iam list-access-keys' \
                 shows it"
            ))
        })?;
    if new.id == old_id || keys.iter().any(|k| k.id == new.id) {
        // Never taken as new: the undo would delete a key in use.
        return Err(failed(format!(
            "IAM's answer to CreateAccessKey names {}, a key the user had already: it is not \
             taken; {unchanged}",
            new.id
        )));
    }
    let new_id = new.id.clone();
    step(
        &mut r,
        "create",
        StepOutcome::Ok,
        format!("IAM made access key {new_id}"),
    );
    let pending = PendingKeys {
        old_key: old_id.clone(),
        new_key: new_id.clone(),
        user_arn: Some(who.arn.clone()),
        new_secret: Some(new.secret.duplicate()),
        error: None,
    };
    let before = Timestamp::now();
    let stored = {
        let (plan, n, keys) = (Arc::clone(&plan), name.to_owned(), pending.clone());
        blocking(d, move |e| {
            e.store_rotated(&plan, &n, keys, Timestamp::now())
        })
        .await
    };
    let summary = match stored {
        Ok(s) => s,
        Err(e) => {
            let gone = iam::delete_key(&http, &plan.iam_endpoint, &old, &new_id, CALL).await;
            let what = match gone {
                Ok(()) => format!("the new key {new_id} was deleted at IAM"),
                Err(why) => format!(
                    "the new key {new_id} could not be deleted at IAM ({why}): delete it with \
                     'aws iam delete-access-key --access-key-id {new_id}'"
                ),
            };
            return Err(WireError::new(
                e.code,
                format!(
                    "cannot store the new key: {}; {what}; {unchanged}",
                    e.message
                ),
            ));
        }
    };
    d.syncer.kick();
    r.revision = summary.revision;
    r.live_key = Some(new_id.clone());
    step(
        &mut r,
        "store",
        StepOutcome::Ok,
        format!(
            "revision {} holds {new_id}; {old_id} stays in the history",
            summary.revision
        ),
    );
    let new_keys = Keys {
        access_key_id: &new_id,
        secret_access_key: &new.secret,
        session_token: None,
    };
    match verify_key(&http, &plan, &new_keys, Some(&who.arn), verify).await {
        Ok(said) => step(&mut r, "verify", StepOutcome::Ok, said),
        Err(why) => {
            step(&mut r, "verify", StepOutcome::Failed, why);
            undo(d, &http, name, &plan, &old, &new_id, &mut r).await;
            consumers(d, name, &mut r, before).await;
            conclude(&mut r);
            r.complete = false;
            return Ok(r);
        }
    }
    consumers(d, name, &mut r, before).await;
    take_old_away(
        d,
        name,
        &plan,
        Stage::Deactivate,
        pending,
        &new_keys,
        grace,
        &mut r,
    )
    .await;
    conclude(&mut r);
    Ok(r)
}

/// The new key did not work: the old key goes back into the record (a
/// new revision) and the new key is deleted at IAM, signed with the old.
async fn undo(
    d: &Arc<Shared>,
    http: &Http,
    name: &str,
    plan: &Arc<AwsPlan>,
    old: &Keys<'_>,
    new_id: &str,
    r: &mut RotateReport,
) {
    let old_id = plan.access_key_id.clone();
    d.engine().touch(Timestamp::now());
    let put_back = {
        let (plan, n, id) = (Arc::clone(plan), name.to_owned(), new_id.to_owned());
        blocking(d, move |e| e.undo_rotated(&plan, &n, &id, Timestamp::now())).await
    };
    let summary = match put_back {
        Ok(s) => s,
        Err(e) => {
            // The record may still hold the new key: it is not deleted.
            step(r, "undo", StepOutcome::Failed, e.message);
            let holds = match held_key(d, &plan.id).await {
                Some(k) if k == new_id => {
                    format!("'{name}' holds the new key {new_id}, which STS did not take yet")
                }
                Some(k) => format!("'{name}' holds {k} now"),
                None => format!("what '{name}' holds cannot be read now"),
            };
            r.next = Some(format!(
                "{holds}, and the old key {old_id} could not be put back; neither key was \
                 deleted: 'vault rotate {name} --finish' checks the key '{name}' holds and, \
                 once it works, takes the old one away; 'vault history {name}' and 'vault \
                 restore' go back by hand"
            ));
            return;
        }
    };
    r.revision = summary.revision;
    r.live_key = Some(old_id.clone());
    step(
        r,
        "undo",
        StepOutcome::Ok,
        format!(
            "revision {} holds {old_id} again; it was never deactivated",
            summary.revision
        ),
    );
    d.syncer.kick();
    let deleted = iam::delete_key(http, &plan.iam_endpoint, old, new_id, CALL).await;
    match deleted {
        Ok(()) => {
            step(
                r,
                "delete",
                StepOutcome::Ok,
                format!("the new key {new_id} is deleted"),
            );
            r.next = Some(format!(
                "nothing to undo: '{name}' holds {old_id}, which works, as before; run 'vault \
                 rotate {name}' again (--wait longer if IAM is slow)"
            ));
        }
        Err(why) => {
            step(
                r,
                "delete",
                StepOutcome::Failed,
                format!("the new key {new_id} could not be deleted: {why}"),
            );
            r.next = Some(format!(
                "'{name}' holds {old_id}, which works, as before; the unused new key {new_id} \
                 is left at IAM: delete it with 'aws iam delete-access-key --access-key-id \
                 {new_id}'"
            ));
        }
    }
}

/// Keeps the state of an unfinished rotation, or says why it cannot (a
/// vault locked meanwhile).
async fn keep(d: &Arc<Shared>, id: &str, pending: Pending) -> Result<(), String> {
    let rid = id.to_owned();
    let kept = blocking(d, move |e| e.save_rotation(&rid, &pending)).await;
    kept.map_err(|e| {
        warn!(record = %id, error = %e.message, "cannot keep a rotation's state");
        e.message
    })
}

/// `detail`, with why the state could not be kept, if it was not.
fn kept_or(detail: String, kept: Result<(), String>) -> String {
    match kept {
        Ok(()) => detail,
        Err(why) => format!("{detail} (and this could not be recorded: {why})"),
    }
}

async fn forget(d: &Arc<Shared>, id: &str) {
    let rid = id.to_owned();
    if let Err(e) = blocking(d, move |e| e.drop_rotation(&rid)).await {
        warn!(record = %id, error = %e.message, "cannot forget a finished rotation");
    }
}

/// The access key id record `id` holds now (`None` when it cannot be
/// read: locked, deleted).
async fn held_key(d: &Arc<Shared>, id: &str) -> Option<String> {
    let id = id.to_owned();
    blocking(d, move |e| Ok(e.aws_key_of(&id)))
        .await
        .ok()
        .flatten()
}

/// Why `key` must not be switched off: another record holds it too.
async fn copies_refusal(d: &Arc<Shared>, name: &str, id: &str, key: &str) -> Option<String> {
    let (rid, k) = (id.to_owned(), key.to_owned());
    let copies = blocking(d, move |e| Ok(e.copies_of(&rid, &k)))
        .await
        .unwrap_or_default();
    let first = copies.first()?;
    let quoted: Vec<String> = copies.iter().map(|c| format!("'{c}'")).collect();
    Some(format!(
        "{} hold{} {key} too, which switching it off for '{name}' would break: delete the \
         copy ('vault rm {first}') or give it a key of its own, then run this again",
        quoted.join(", "),
        if copies.len() == 1 { "s" } else { "" }
    ))
}

/// Why the old key must not be touched now: the record no longer holds
/// the live key (a `vault set`, `restore` or sync meanwhile), or another
/// record holds the old one.
async fn refusal(
    d: &Arc<Shared>,
    name: &str,
    plan: &AwsPlan,
    old: &str,
    live: &str,
) -> Option<String> {
    match held_key(d, &plan.id).await {
        Some(k) if k == live => copies_refusal(d, name, &plan.id, old).await,
        Some(k) => Some(format!(
            "'{name}' changed during the rotation: it holds {k} now, not the new key {live}"
        )),
        None => Some(format!(
            "what '{name}' holds cannot be read now (locked, or deleted)"
        )),
    }
}

/// Deactivates the old key (from stage `Deactivate`) and deletes it, now
/// or, with a `grace`, later; signed with the live key. Before each IAM
/// call the record is read again: the old key is touched only while the
/// record holds the live key and no other record holds the old one. What
/// is left is kept for `--finish` and the background.
#[allow(clippy::too_many_arguments)]
async fn take_old_away(
    d: &Arc<Shared>,
    name: &str,
    plan: &AwsPlan,
    stage: Stage,
    mut keys: PendingKeys,
    live: &Keys<'_>,
    grace: Duration,
    r: &mut RotateReport,
) {
    let http = d.http.clone();
    let old = keys.old_key.clone();
    let live_id = live.access_key_id.to_owned();
    let finish = format!("'vault rotate {name} --finish'");
    if stage == Stage::Deactivate {
        let done = match refusal(d, name, plan, &old, &live_id).await {
            Some(why) => Err(why),
            None => iam::set_status(&http, &plan.iam_endpoint, live, &old, "Inactive", CALL).await,
        };
        match done {
            Ok(()) => step(
                r,
                "deactivate",
                StepOutcome::Ok,
                format!("{old} is inactive"),
            ),
            Err(e) if iam::is_gone(&e) => {
                step(
                    r,
                    "deactivate",
                    StepOutcome::Ok,
                    format!("{old} is gone already"),
                );
                forget(d, &plan.id).await;
                return;
            }
            Err(e) => {
                keys.error = Some(e.clone());
                let pending = Pending {
                    stage: Stage::Deactivate,
                    due_at: Timestamp::now(),
                    keys,
                };
                let kept = keep(d, &plan.id, pending).await;
                step(r, "deactivate", StepOutcome::Failed, kept_or(e, kept));
                step(
                    r,
                    "delete",
                    StepOutcome::Skipped,
                    format!("{old} is still active"),
                );
                r.next = Some(format!(
                    "the old key {old} of '{name}' is still active: {finish} deactivates and \
                     deletes it once '{name}' holds {live_id} and nothing else holds {old}"
                ));
                return;
            }
        }
    }
    if !grace.is_zero() {
        let due = Timestamp::now().plus(grace);
        let kept = keep(
            d,
            &plan.id,
            Pending {
                stage: Stage::Delete,
                due_at: due,
                keys,
            },
        )
        .await;
        if let Err(why) = kept {
            // The row the store left says "deactivate": --finish does
            // both again.
            step(
                r,
                "delete",
                StepOutcome::Failed,
                format!("{old} is inactive, but its deletion could not be scheduled: {why}"),
            );
            r.next = Some(format!(
                "{old} is inactive and nothing will delete it by itself: {finish} deletes it"
            ));
            return;
        }
        step(
            r,
            "delete",
            StepOutcome::Pending,
            format!("{old} is deleted at {due}"),
        );
        r.next = Some(format!(
            "{old} stays, inactive, until {due}: vaultd deletes it then (while the vault is \
             unlocked); {finish} deletes it now; a 'vault restore' of a revision holding {old} \
             turns it back on"
        ));
        let d = Arc::clone(d);
        tokio::spawn(async move {
            tokio::time::sleep(grace.saturating_add(Duration::from_millis(1200))).await;
            d.rotator.wake.notify_one();
        });
        return;
    }
    let deleted = match refusal(d, name, plan, &old, &live_id).await {
        Some(why) => Err(why),
        None => iam::delete_key(&http, &plan.iam_endpoint, live, &old, CALL).await,
    };
    match deleted {
        Ok(()) => {
            step(r, "delete", StepOutcome::Ok, format!("{old} is deleted"));
            forget(d, &plan.id).await;
        }
        Err(e) if iam::is_gone(&e) => {
            step(
                r,
                "delete",
                StepOutcome::Ok,
                format!("{old} is gone already"),
            );
            forget(d, &plan.id).await;
        }
        Err(e) => {
            keys.error = Some(e.clone());
            let pending = Pending {
                stage: Stage::Delete,
                due_at: Timestamp::now().plus(BACKOFF),
                keys,
            };
            let kept = keep(d, &plan.id, pending).await;
            step(r, "delete", StepOutcome::Failed, kept_or(e, kept));
            r.next = Some(format!(
                "the old key {old} of '{name}' is inactive but not deleted: {finish} deletes it \
                 (vaultd also tries again later)"
            ));
        }
    }
}

/// `vault rotate NAME --finish`: what an earlier rotation left, done now
/// once the key the record holds is the rotation's new key and works as
/// the same IAM user. A record put back to the old key keeps it (turned
/// on again: it may have been turned off); a record holding a third key
/// ends the rotation with both keys left as they are. In the background
/// (`by_vaultd`), a rotation ended so leaves a note (stage `ended`) for
/// `vault status` and `vault doctor`, since nobody reads the report.
async fn finish(
    d: &Arc<Shared>,
    name: &str,
    verify: Duration,
    by_vaultd: bool,
) -> Result<RotateReport, WireError> {
    let n = name.to_owned();
    let plan = blocking(d, move |e| e.aws_rotation(&n)).await?;
    let mut r = report(name, CredentialType::Aws, plan.revision);
    r.live_key = Some(plan.access_key_id.clone());
    let Some(pending) = plan.pending.clone() else {
        step(
            &mut r,
            "finish",
            StepOutcome::Skipped,
            format!("'{name}' has no unfinished rotation"),
        );
        r.complete = true;
        return Ok(r);
    };
    let (old, new) = (pending.keys.old_key.clone(), pending.keys.new_key.clone());
    r.old_key = Some(old.clone());
    if pending.stage == Stage::Ended {
        forget(d, &plan.id).await;
        let note = pending.keys.error.unwrap_or_default();
        step(
            &mut r,
            "finish",
            StepOutcome::Ok,
            format!("the note vaultd left is cleared: {note}"),
        );
        r.complete = true;
        return Ok(r);
    }
    let stray = format!(
        "the new key {new} stays at IAM, unused by '{name}': once nothing uses it, delete it \
         ('aws iam delete-access-key --access-key-id {new}')"
    );
    let end = Ending {
        by_vaultd,
        id: &plan.id,
        keys: &pending.keys,
    };
    if plan.access_key_id == old {
        put_back(d, name, &plan, pending.clone(), &stray, end, &mut r).await;
        return Ok(r);
    }
    if plan.access_key_id != new {
        let state = match pending.stage {
            Stage::Deactivate => "active",
            Stage::Delete | Stage::Reactivate | Stage::Ended => "inactive",
        };
        step(
            &mut r,
            "finish",
            StepOutcome::Failed,
            format!(
                "'{name}' holds {}, neither the rotation's new key {new} nor its old key {old}: \
                 the rotation is dropped and neither key is touched",
                plan.access_key_id
            ),
        );
        let next = format!(
            "'{name}' holds {}, not a key of its rotation: both keys stay at IAM ({old} \
             {state}, {new} active): delete the ones nothing uses with 'aws iam \
             delete-access-key --access-key-id KEY'",
            plan.access_key_id
        );
        end.over(d, &next).await;
        r.next = Some(next);
        return Ok(r);
    }
    let live = Keys {
        access_key_id: &plan.access_key_id,
        secret_access_key: &plan.secret,
        session_token: None,
    };
    let http = d.http.clone();
    let want = pending.keys.user_arn.as_deref();
    match verify_key(&http, &plan, &live, want, verify).await {
        Ok(said) => step(&mut r, "verify", StepOutcome::Ok, said),
        Err(why) => {
            step(&mut r, "verify", StepOutcome::Failed, why);
            r.next = Some(format!(
                "the key '{name}' holds, {new}, does not work: {old} was left as it is. Put a \
                 working key in ('vault history {name}', 'vault restore'), then run 'vault \
                 rotate {name} --finish' again"
            ));
            return Ok(r);
        }
    }
    take_old_away(
        d,
        name,
        &plan,
        pending.stage,
        pending.keys,
        &live,
        Duration::ZERO,
        &mut r,
    )
    .await;
    conclude(&mut r);
    Ok(r)
}

/// How a rotation that is over is let go: forgotten when the user
/// ran `--finish` (the report says what is left), kept as a note
/// (stage `ended`) when vaultd ended it in the background.
struct Ending<'a> {
    by_vaultd: bool,
    id: &'a str,
    keys: &'a PendingKeys,
}

impl Ending<'_> {
    async fn over(&self, d: &Arc<Shared>, note: &str) {
        if !self.by_vaultd {
            return forget(d, self.id).await;
        }
        let mut keys = self.keys.clone();
        keys.new_secret = None;
        keys.error = Some(note.to_owned());
        let ended = Pending {
            stage: Stage::Ended,
            due_at: Timestamp::now(),
            keys,
        };
        if keep(d, self.id, ended).await.is_err() {
            forget(d, self.id).await;
        }
    }
}

/// The record holds the rotation's old key again (`vault restore`): it
/// stays, and is turned on again, signed with the new key: whatever the
/// stage says, a deactivation whose answer was lost may have switched it
/// off (turning on an active key changes nothing). A rotation that kept
/// no new key (rows from before it was kept) asks STS whether the old
/// key works instead, and waits for the user to turn it on if not.
async fn put_back(
    d: &Arc<Shared>,
    name: &str,
    plan: &AwsPlan,
    mut pending: Pending,
    stray: &str,
    end: Ending<'_>,
    r: &mut RotateReport,
) {
    let old = pending.keys.old_key.clone();
    let turned_on = match &pending.keys.new_secret {
        Some(secret) => {
            let signer = Keys {
                access_key_id: &pending.keys.new_key,
                secret_access_key: secret,
                session_token: None,
            };
            iam::set_status(&d.http, &plan.iam_endpoint, &signer, &old, "Active", CALL).await
        }
        None => {
            let holds = Keys {
                access_key_id: &plan.access_key_id,
                secret_access_key: &plan.secret,
                session_token: None,
            };
            super::sts::caller_identity(&d.http, &plan.sts_endpoint, &plan.region, &holds, CALL)
                .await
                .map(drop)
                .map_err(|e| {
                    format!(
                        "STS does not take it ({e}), and this rotation kept no key to turn it \
                         on with"
                    )
                })
        }
    };
    match turned_on {
        Ok(()) => {
            end.over(d, &format!("'{name}' went back to {old}; {stray}"))
                .await;
            step(
                r,
                "reactivate",
                StepOutcome::Ok,
                format!("'{name}' holds {old} again: it is active, and the rotation is dropped"),
            );
            r.next = Some(stray.to_owned());
            r.complete = true;
        }
        Err(e) if iam::is_gone(&e) => {
            // Trying again cannot bring it back.
            let next = format!(
                "'{name}' holds {old}, which IAM no longer has: put a working key back ('vault \
                 history {name}', 'vault restore'); {stray}"
            );
            end.over(d, &next).await;
            step(r, "reactivate", StepOutcome::Failed, e);
            r.next = Some(next);
        }
        Err(e) => {
            pending.keys.error = Some(e.clone());
            pending.stage = Stage::Reactivate;
            pending.due_at = Timestamp::now().plus(BACKOFF);
            let kept = keep(d, &plan.id, pending).await;
            step(r, "reactivate", StepOutcome::Failed, kept_or(e, kept));
            r.next = Some(format!(
                "'{name}' holds {old}, which may be inactive at IAM: turn it on with 'aws iam \
                 update-access-key --access-key-id {old} --status Active' (vaultd tries again \
                 later; 'vault rotate {name} --finish' now)"
            ));
        }
    }
}

/// Finishes the unfinished rotations that are due: an old key whose grace
/// is over, or one the record was put back to (while unlocked).
async fn sweep(d: &Arc<Shared>) {
    let due = {
        let e = d.engine();
        e.due_rotations(Timestamp::now())
    };
    for (id, name) in due {
        let recent = d
            .rotator
            .failed_tries()
            .get(&id)
            .is_some_and(|t| t.elapsed() < BACKOFF);
        if recent {
            continue;
        }
        let _one = d.rotator.one.lock().await;
        let outcome = finish(d, &name, BACKGROUND_VERIFY, true).await;
        if matches!(&outcome, Ok(r) if r.complete) {
            info!(record = %id, "an unfinished rotation was finished in the background");
        } else {
            d.rotator.failed_tries().insert(id.clone(), Instant::now());
            warn!(
                record = %id,
                "an unfinished rotation could not be finished in the background; trying again \
                 later ('vault status' and 'vault rotate NAME --finish' say why)"
            );
            let rid = id.clone();
            let _ = blocking(d, move |e| {
                e.delay_rotation(&rid, BACKOFF, Timestamp::now());
                Ok(())
            })
            .await;
        }
    }
}

/// Looks for due rotations every minute, and when a grace ends.
pub async fn background(d: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SWEEP) => {}
            _ = d.rotator.wake.notified() => {}
        }
        sweep(&d).await;
    }
}
