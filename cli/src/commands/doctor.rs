//! `vault doctor` (docs/user-guide.md): checks what a working vault needs and, for each
//! problem, says how to fix it. It only looks — it never changes a file's
//! mode, never rewrites an emitted file and never prompts — except that,
//! like every command, it starts `vaultd` when none runs (that start is
//! itself one of the checks).
//!
//! The permission rules repeat the daemon's (`vaultd` refuses to start on
//! the same conditions), because the CLI must not link the daemon and a
//! daemon that refuses to start cannot explain itself over the socket.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use vault_protocol::message::{EmitState, EmitterInfo, StatusInfo};
use vault_protocol::private::{self, Found, NotPrivate, Want};
use vault_protocol::{BUILD_VERSION, ErrorCode, Request, Response};

use super::Ctx;
use crate::client::Client;
use crate::error::CliResult;

/// No clock that is right reads earlier than this (2025-01-01T00:00:00Z):
/// this code did not exist before then.
const CLOCK_FLOOR_UNIX: u64 = 1_735_689_600;

/// A vault file written further than this in the future means the clock
/// went back since.
const CLOCK_SKEW_ALLOWED: Duration = Duration::from_secs(300);

/// The helper names `vault` answers to (argv[0]).
const HELPERS: [(&str, &str); 2] = [
    ("docker-credential-vault", "docker"),
    ("git-credential-vault", "git"),
];

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Nothing to do.
    Ok,
    /// Works, but something is missing or unusual; exit 0.
    Warn,
    /// Broken; `vault doctor` exits 1.
    Fail,
    /// Could not be checked now (the reason says why).
    Skip,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "skip",
        }
    }
}

/// One finding.
#[derive(Debug, Serialize)]
pub struct Finding {
    /// Which check: `clock`, `runtime-dir`, `permissions`, `socket`,
    /// `daemon`, `vault`, `emitted`, `refresh`, `approvals`, `helpers`, `remote`.
    pub check: &'static str,
    /// How it came out.
    pub status: Verdict,
    /// What was found.
    pub message: String,
    /// What to run or change, when something is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Default)]
struct Report(Vec<Finding>);

impl Report {
    fn add(&mut self, check: &'static str, status: Verdict, message: impl Into<String>) {
        self.0.push(Finding {
            check,
            status,
            message: message.into(),
            fix: None,
        });
    }

    fn problem(
        &mut self,
        check: &'static str,
        status: Verdict,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.0.push(Finding {
            check,
            status,
            message: message.into(),
            fix: Some(fix.into()),
        });
    }

    fn failures(&self) -> usize {
        self.0.iter().filter(|f| f.status == Verdict::Fail).count()
    }
}

/// `vault doctor`.
pub fn run(ctx: &mut Ctx) -> CliResult<()> {
    let mut report = Report::default();
    check_clock(ctx, &mut report);
    check_runtime_dir(ctx, &mut report);
    check_permissions(ctx, &mut report);
    check_socket(ctx, &mut report);
    let status = check_daemon(ctx, &mut report);
    check_vault(ctx, &mut report, status.as_ref());
    check_emitted(ctx, &mut report, status.as_ref());
    check_refresh(&mut report, status.as_ref());
    check_health(&mut report, status.as_ref());
    check_rotations(&mut report, status.as_ref());
    check_approvals(ctx, &mut report, status.as_ref());
    check_helpers(&mut report);
    check_remote(&mut report, status.as_ref());

    let failures = report.failures();
    if ctx.out.json {
        ctx.out.json(&serde_json::json!({
            "ok": failures == 0,
            "checks": report.0,
        }))?;
    } else {
        let width = report.0.iter().map(|f| f.check.len()).max().unwrap_or(0);
        for f in &report.0 {
            ctx.out.line(&format!(
                "{:<4}  {:<width$}  {}",
                f.status.label(),
                f.check,
                f.message
            ));
            if let Some(fix) = &f.fix {
                ctx.out
                    .line(&format!("{:<4}  {:<width$}  fix: {fix}", "", ""));
            }
        }
        match failures {
            0 => ctx.out.line("no problems found"),
            n => ctx.out.line(&format!(
                "{n} problem{} found: apply the fixes above, then run 'vault doctor' again",
                if n == 1 { "" } else { "s" }
            )),
        }
    }
    if failures > 0 {
        ctx.exit_code = ErrorCode::Failed.exit_code();
    }
    Ok(())
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn check_clock(ctx: &Ctx, report: &mut Report) {
    let now = SystemTime::now();
    let fix = "set the system clock right (e.g. 'timedatectl set-ntp true'); expiry, the idle \
               lock and AWS signatures all use the wall clock";
    if unix_secs(now) < CLOCK_FLOOR_UNIX {
        report.problem(
            "clock",
            Verdict::Fail,
            format!(
                "the system clock reads {} s after 1970, earlier than this program was written",
                unix_secs(now)
            ),
            fix,
        );
        return;
    }
    let paths = &ctx.target.paths;
    for file in [paths.db(), paths.identity(), paths.log()] {
        let Ok(modified) = fs::metadata(&file).and_then(|m| m.modified()) else {
            continue;
        };
        if let Ok(ahead) = modified.duration_since(now)
            && ahead > CLOCK_SKEW_ALLOWED
        {
            report.problem(
                "clock",
                Verdict::Fail,
                format!(
                    "{} was last written {} in the future: the clock went back since",
                    file.display(),
                    humantime::format_duration(Duration::from_secs(ahead.as_secs()))
                ),
                fix,
            );
            return;
        }
    }
    report.add(
        "clock",
        Verdict::Ok,
        "the wall clock is plausible and no vault file is dated in the future",
    );
}

fn check_runtime_dir(ctx: &Ctx, report: &mut Report) {
    let runtime = ctx.target.paths.runtime_dir.display().to_string();
    if std::env::var_os("VAULT_HOME").is_some_and(|v| !v.is_empty()) {
        report.add(
            "runtime-dir",
            Verdict::Ok,
            format!("VAULT_HOME is set: the socket lives in {runtime}"),
        );
        return;
    }
    let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) else {
        report.add(
            "runtime-dir",
            Verdict::Ok,
            format!("XDG_RUNTIME_DIR is not set: the socket lives in {runtime}"),
        );
        return;
    };
    let xdg = PathBuf::from(xdg);
    let shown = xdg.display();
    match fs::metadata(&xdg) {
        Err(e) => report.problem(
            "runtime-dir",
            Verdict::Fail,
            format!("XDG_RUNTIME_DIR={shown} cannot be used: {e}"),
            "log in again so your session manager creates it (or 'loginctl enable-linger \
             $USER'), or unset XDG_RUNTIME_DIR",
        ),
        Ok(m) if !m.is_dir() => report.problem(
            "runtime-dir",
            Verdict::Fail,
            format!("XDG_RUNTIME_DIR={shown} is not a directory"),
            "unset XDG_RUNTIME_DIR, or point it at your session's runtime directory",
        ),
        Ok(m) if m.uid() != euid() => report.problem(
            "runtime-dir",
            Verdict::Fail,
            format!(
                "XDG_RUNTIME_DIR={shown} belongs to uid {}, not to you (uid {})",
                m.uid(),
                euid()
            ),
            "unset XDG_RUNTIME_DIR or set it to your own runtime directory (/run/user/$(id -u))",
        ),
        Ok(_) => report.add(
            "runtime-dir",
            Verdict::Ok,
            format!("XDG_RUNTIME_DIR={shown} is yours: the socket lives in {runtime}"),
        ),
    }
}

/// Why `path` is not a private vault path, and the fix; `None` when it is
/// fine or missing (nothing to protect yet).
fn private_problem(path: &Path, want_dir: bool) -> Option<(String, String)> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            return Some((
                format!("cannot inspect {}: {e}", path.display()),
                format!("check the permissions of {}'s parent", path.display()),
            ));
        }
    };
    let p = path.display();
    let want = if want_dir { Want::Dir } else { Want::File };
    let wrong = private::check(Found::of(&meta), want, euid()).err()?;
    let fix = match wrong {
        NotPrivate::Symlink(w) => format!(
            "replace the link with the real {}: f=$(readlink -f {p}) && rm {p} && mv \"$f\" {p}",
            w.noun()
        ),
        NotPrivate::NotA(_) => format!("move it aside: mv {p} {p}.moved"),
        NotPrivate::Owner { me, .. } => format!("chown {me} {p}"),
        NotPrivate::Open { want, .. } => format!("chmod {} {p}", want.mode()),
    };
    Some((format!("{p} {wrong}"), fix))
}

fn check_permissions(ctx: &Ctx, report: &mut Report) {
    let paths = &ctx.target.paths;
    let mut dirs: Vec<PathBuf> = vec![
        paths.data_dir.clone(),
        paths.config_dir.clone(),
        paths.state_dir.clone(),
        paths.runtime_dir.clone(),
        paths.exec_dir(),
    ];
    dirs.dedup();
    let mut files = paths.private_files();
    files.push(paths.start_lock());
    let mut checked = 0;
    let mut problems = 0;
    let candidates = dirs
        .iter()
        .map(|d| (d.as_path(), true))
        .chain(files.iter().map(|f| (f.as_path(), false)));
    for (path, want_dir) in candidates {
        if fs::symlink_metadata(path).is_ok() {
            checked += 1;
        }
        if let Some((message, fix)) = private_problem(path, want_dir) {
            problems += 1;
            report.problem("permissions", Verdict::Fail, message, fix);
        }
    }
    if problems == 0 {
        report.add(
            "permissions",
            Verdict::Ok,
            format!(
                "{checked} vault paths exist, every one yours and private (dirs 0700, files 0600)"
            ),
        );
    }
}

fn check_socket(ctx: &Ctx, report: &mut Report) {
    let socket = ctx.target.socket();
    let p = socket.display();
    if let Some(dir) = socket.parent()
        && dir != ctx.target.paths.runtime_dir
        && let Some((message, fix)) = private_problem(dir, true)
    {
        report.problem("socket", Verdict::Fail, message, fix);
    }
    let meta = match fs::symlink_metadata(socket) {
        Ok(m) => m,
        Err(_) => {
            report.add(
                "socket",
                Verdict::Ok,
                format!("{p} does not exist yet (vault starts vaultd on demand)"),
            );
            return;
        }
    };
    match private::check(Found::of(&meta), Want::Socket, euid()) {
        Err(wrong @ (NotPrivate::Symlink(_) | NotPrivate::NotA(_))) => report.problem(
            "socket",
            Verdict::Fail,
            format!("{p} {wrong}"),
            format!("stop vaultd ('vault daemon stop'), then move it aside: mv {p} {p}.moved"),
        ),
        Err(wrong @ NotPrivate::Owner { .. }) => report.problem(
            "socket",
            Verdict::Fail,
            format!("{p} {wrong}: another user's daemon may be listening"),
            format!(
                "stop that daemon, remove {p}, and make sure {} is yours and 0700",
                ctx.target.paths.runtime_dir.display()
            ),
        ),
        Err(wrong @ NotPrivate::Open { .. }) => report.problem(
            "socket",
            Verdict::Fail,
            format!("{p} {wrong}"),
            format!("chmod 600 {p} (vaultd creates it 0600; 'vault daemon restart' also fixes it)"),
        ),
        Ok(()) => report.add("socket", Verdict::Ok, format!("{p} is yours, mode 600")),
    }
}

fn check_daemon(ctx: &mut Ctx, report: &mut Report) -> Option<StatusInfo> {
    let log = ctx.target.paths.log().display().to_string();
    let mut client = match Client::connect_or_start(&ctx.target) {
        Ok(c) => c,
        Err(e) => {
            report.problem(
                "daemon",
                Verdict::Fail,
                e.message,
                format!(
                    "fix what the message names (see the checks above and {log}), then run \
                     'vault daemon start'"
                ),
            );
            return None;
        }
    };
    let started = client.started_daemon;
    let answers = client
        .hello()
        .and_then(|hello| match client.call(Request::Status) {
            Ok(Response::Status(status)) => Ok((hello, status)),
            Ok(_) => Err(crate::error::unexpected("status")),
            Err(e) => Err(e),
        });
    let (hello, status) = match answers {
        Ok(answers) => answers,
        Err(e) => {
            let fix = if e.code == ErrorCode::VersionMismatch {
                "vault daemon restart (after an upgrade the old vaultd keeps running)".to_owned()
            } else {
                format!("see {log}, then run 'vault daemon restart'")
            };
            report.problem("daemon", Verdict::Fail, e.message, fix);
            return None;
        }
    };
    report.add(
        "daemon",
        Verdict::Ok,
        format!(
            "vaultd {} (pid {}) answers on {}, the same build as this vault ({BUILD_VERSION}){}",
            hello.build,
            hello.pid,
            ctx.target.socket().display(),
            if started { "; doctor started it" } else { "" }
        ),
    );
    // Keep the connection for the emitted-files check.
    ctx.adopt(client);
    Some(status)
}

fn check_vault(ctx: &Ctx, report: &mut Report, status: Option<&StatusInfo>) {
    let Some(status) = status else {
        report.add("vault", Verdict::Skip, "vaultd is not reachable");
        return;
    };
    let data = ctx.target.paths.data_dir.display();
    if !status.initialized {
        report.problem(
            "vault",
            Verdict::Warn,
            format!("no vault in {data} yet"),
            "vault init",
        );
    } else if status.locked {
        report.add("vault", Verdict::Ok, format!("vault in {data}, locked"));
    } else {
        report.add(
            "vault",
            Verdict::Ok,
            format!(
                "vault in {data}, unlocked, {} credentials",
                status.records.unwrap_or(0)
            ),
        );
    }
}

/// Credentials with a field from another device that runs, writes or
/// reaches out, not approved here (docs/sync.md): using them fails until then.
fn check_approvals(ctx: &mut Ctx, report: &mut Report, status: Option<&StatusInfo>) {
    if status.is_none_or(|s| !s.initialized || s.locked) {
        return;
    }
    let Ok(Response::Approvals { approvals }) = ctx.call(Request::Approvals { names: vec![] })
    else {
        return;
    };
    if approvals.is_empty() {
        return;
    }
    let names: Vec<&str> = approvals.iter().map(|a| a.name.as_str()).collect();
    report.problem(
        "approvals",
        Verdict::Warn,
        format!(
            "{} credential(s) changed on another device wait for approval on this one: {}",
            names.len(),
            names.join(", ")
        ),
        "'vault approve NAME' shows what it would run or write and approves it; until then \
         using it fails",
    );
}

fn check_emitted(ctx: &mut Ctx, report: &mut Report, status: Option<&StatusInfo>) {
    let why_not = match status {
        None => Some("vaultd is not reachable"),
        Some(s) if !s.initialized => Some("there is no vault yet"),
        Some(s) if s.locked => Some(
            "the vault is locked; emitted files are checked while it is unlocked \
             ('vault unlock', then 'vault doctor')",
        ),
        Some(_) => None,
    };
    if let Some(why) = why_not {
        report.add("emitted", Verdict::Skip, why);
        return;
    }
    let emitters = match ctx.call(Request::EmitList) {
        Ok(Response::Emitters { emitters }) => emitters,
        Ok(_) => {
            report.problem(
                "emitted",
                Verdict::Fail,
                "vaultd gave an unexpected answer to emit list",
                "vault daemon restart",
            );
            return;
        }
        Err(e) => {
            report.problem(
                "emitted",
                Verdict::Fail,
                format!("cannot list emitted files: {}", e.message),
                "vault emit list",
            );
            return;
        }
    };
    let mut fine = 0;
    for e in &emitters {
        match emitted_problem(e) {
            None => fine += 1,
            Some((verdict, message, fix)) => report.problem("emitted", verdict, message, fix),
        }
    }
    if fine == emitters.len() {
        report.add(
            "emitted",
            Verdict::Ok,
            match fine {
                0 => "no emitted files".to_owned(),
                n => format!("{n} emitted file section(s) hold what vault wrote"),
            },
        );
    }
}

/// What is wrong with one emitted file, from the state the daemon reports.
fn emitted_problem(e: &EmitterInfo) -> Option<(Verdict, String, String)> {
    let what = format!(
        "{} [{}] (emitter {}{})",
        e.path,
        e.section,
        e.id,
        e.name
            .as_deref()
            .map(|n| format!(", credential {n}"))
            .unwrap_or_default()
    );
    let repair = || {
        (
            Verdict::Fail,
            "vault emit repair (rewrites vault's own section; other lines stay)".to_owned(),
        )
    };
    let (verdict, fix) = match &e.state {
        EmitState::Ok | EmitState::Removed => return None,
        EmitState::Drifted | EmitState::Missing => repair(),
        EmitState::Error(_) | EmitState::Unreadable(_) => (
            Verdict::Fail,
            format!(
                "vault never rewrites a file it cannot parse: fix {} by hand (a backup may be \
                 beside it), then run 'vault emit repair'",
                e.path
            ),
        ),
        EmitState::CredentialDeleted => (
            Verdict::Fail,
            format!("vault emit rm {} (or restore the credential)", e.id),
        ),
        EmitState::Expired(_) => (
            Verdict::Warn,
            format!(
                "renew the credential ('vault set {} ... --ttl DUR'); vault writes it again",
                e.name.as_deref().unwrap_or("NAME")
            ),
        ),
        EmitState::CredentialUnreadable | EmitState::Other(_) => {
            (Verdict::Fail, "vault emit list; see vaultd.log".to_owned())
        }
    };
    Some((verdict, format!("{what}: {}", e.state), fix))
}

/// The first executable file called `name` on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
}

/// Whether two paths are the same program: the same file, or equal bytes.
fn same_program(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(x), Ok(y)) if x == y => true,
        _ => matches!((fs::read(a), fs::read(b)), (Ok(x), Ok(y)) if x == y),
    }
}

fn check_helpers(report: &mut Report) {
    let Ok(exe) = std::env::current_exe() else {
        report.add(
            "helpers",
            Verdict::Skip,
            "cannot find this vault program to compare the helpers with",
        );
        return;
    };
    let exe_dir = exe.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut fine = Vec::new();
    for (helper, tool) in HELPERS {
        let link = exe_dir.join(helper);
        match on_path(helper) {
            None => report.problem(
                "helpers",
                Verdict::Warn,
                format!(
                    "{helper} is not on PATH: {tool} cannot use vault as its credential helper"
                ),
                format!("ln -s {} {}", exe.display(), link.display()),
            ),
            Some(found) if !same_program(&found, &exe) => report.problem(
                "helpers",
                Verdict::Fail,
                format!(
                    "{helper} on PATH is {}, which is not this vault ({})",
                    found.display(),
                    exe.display()
                ),
                format!("ln -sf {} {}", exe.display(), found.display()),
            ),
            Some(found) => fine.push(format!("{helper} → {}", found.display())),
        }
    }
    if fine.len() == HELPERS.len() {
        report.add("helpers", Verdict::Ok, fine.join(", "));
    }
}

/// Temporary credentials whose refresh fails (docs/refresh.md): a warning
/// while the value is still valid, a failure once it has expired or was
/// never minted.
fn check_refresh(report: &mut Report, status: Option<&StatusInfo>) {
    let Some(status) = status.filter(|s| s.initialized && !s.locked) else {
        return;
    };
    if status.refresh.is_empty() {
        report.add("refresh", Verdict::Ok, "no failing refresh");
        return;
    }
    let now = vault_protocol::timefmt::Timestamp::now();
    for r in &status.refresh {
        let (verdict, state) = match r.expires_at {
            Some(t) if t > now => (Verdict::Warn, format!("value valid until {t}")),
            Some(t) => (Verdict::Fail, format!("expired at {t}")),
            None => (Verdict::Fail, "never minted".to_owned()),
        };
        report.problem(
            "refresh",
            verdict,
            format!(
                "{}: refresh failing ({state}; {} attempt{}): {}",
                r.name,
                r.failures,
                if r.failures == 1 { "" } else { "s" },
                r.error
            ),
            format!(
                "fix what the error names (the command or the source: vault set {} FIELD=...); \
                 the daemon retries at {}",
                r.name, r.retry_at
            ),
        );
    }
}

/// The credentials whose last `vault check` failed: they may not work.
fn check_health(report: &mut Report, status: Option<&StatusInfo>) {
    let Some(status) = status.filter(|s| s.initialized && !s.locked) else {
        return;
    };
    if status.failed_checks.is_empty() {
        report.add("checks", Verdict::Ok, "no failed credential check");
        return;
    }
    for c in &status.failed_checks {
        report.problem(
            "checks",
            Verdict::Warn,
            format!("{}: check failed at {}: {}", c.name, c.checked_at, c.detail),
            format!(
                "renew it ('vault set {} FIELD=-') or fix what the check names, then \
                 'vault check {}'",
                c.name, c.name
            ),
        );
    }
}

/// Key rotations that stopped part way (`vault rotate`): an old key that
/// still works, or is still to be deleted.
fn check_rotations(report: &mut Report, status: Option<&StatusInfo>) {
    let Some(status) = status.filter(|s| s.initialized && !s.locked) else {
        return;
    };
    for r in &status.rotations {
        let fix = format!("'vault rotate {} --finish' finishes it now", r.name);
        match (r.stage.as_str(), r.error.as_deref()) {
            ("delete", None) => report.add(
                "rotation",
                Verdict::Ok,
                format!(
                    "{}: the old key {} is inactive; vaultd deletes it at {}",
                    r.name, r.old_key, r.due_at
                ),
            ),
            ("ended", e) => report.problem(
                "rotation",
                Verdict::Warn,
                format!(
                    "{}: vaultd ended its rotation: {}",
                    r.name,
                    e.unwrap_or("no reason kept")
                ),
                format!(
                    "once done, 'vault rotate {} --finish' clears this note",
                    r.name
                ),
            ),
            ("reactivate", e) => report.problem(
                "rotation",
                Verdict::Fail,
                format!(
                    "{}: holds the old key {} again, which is inactive at IAM{}",
                    r.name,
                    r.old_key,
                    e.map(|e| format!(" ({e})")).unwrap_or_default()
                ),
                format!(
                    "'aws iam update-access-key --access-key-id {} --status Active', or 'vault \
                     rotate {} --finish'",
                    r.old_key, r.name
                ),
            ),
            ("delete", Some(e)) => report.problem(
                "rotation",
                Verdict::Warn,
                format!(
                    "{}: the old key {} is inactive but could not be deleted: {e}",
                    r.name, r.old_key
                ),
                fix,
            ),
            (_, e) => report.problem(
                "rotation",
                Verdict::Warn,
                format!(
                    "{}: holds {}, but the old key {} is still active{}",
                    r.name,
                    r.live_key,
                    r.old_key,
                    e.map(|e| format!(" ({e})")).unwrap_or_default()
                ),
                fix,
            ),
        }
    }
}

fn check_remote(report: &mut Report, status: Option<&StatusInfo>) {
    let Some(sync) = status.map(|s| &s.sync) else {
        return report.add("remote", Verdict::Skip, "the daemon did not answer");
    };
    let Some(server) = sync.server.as_deref() else {
        return report.add(
            "remote",
            Verdict::Skip,
            "not configured (sync is optional; everything works offline)",
        );
    };
    let queued = if sync.queued > 0 {
        format!(", {} change(s) queued", sync.queued)
    } else {
        String::new()
    };
    if !sync.problems.is_empty() {
        report.problem(
            "sync integrity",
            Verdict::Warn,
            format!(
                "{} problem(s) with what {server} sent, nothing of it applied: {}",
                sync.problems.len(),
                sync.problems.join("; ")
            ),
            "each line names the device and entry and what to do; 'vault sync status' lists \
             them again, 'vault sync verify' compares every log",
        );
    }
    match (&sync.last_error, sync.last_sync) {
        (Some(e), _) => report.problem(
            "remote",
            Verdict::Warn,
            format!("the last sync with {server} failed{queued}: {e}"),
            "nothing is lost (changes stay queued); fix what the error names, then 'vault \
             sync'; a refused token needs 'vault login URL --token-file FILE'",
        ),
        (None, Some(t)) => report.add(
            "remote",
            Verdict::Ok,
            format!("syncs with {server}, last at {t}{queued}"),
        ),
        (None, None) => report.add(
            "remote",
            Verdict::Ok,
            format!("syncs with {server}; not synced since the daemon started{queued}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_paths_pass_and_open_ones_name_the_chmod() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(private_problem(&dir, true).is_none());
        assert!(private_problem(&tmp.path().join("missing"), false).is_none());
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).unwrap();
        let (message, fix) = private_problem(&dir, true).unwrap();
        assert!(message.contains("mode 750"), "{message}");
        assert_eq!(fix, format!("chmod 700 {}", dir.display()));
        let (message, _) = private_problem(&dir, false).unwrap();
        assert!(message.contains("not a file"), "{message}");
    }

    #[test]
    fn every_emitter_state_has_a_fix() {
        let info = |state: &str| EmitterInfo {
            id: "e1".into(),
            name: Some("aws-dev".into()),
            kind: vault_protocol::message::EmitterKind::Aws,
            path: "/h/.aws/credentials".into(),
            section: "dev".into(),
            state: EmitState::parse(state),
        };
        assert!(emitted_problem(&info("ok")).is_none());
        for (state, verdict, fix) in [
            ("drifted", Verdict::Fail, "vault emit repair"),
            ("missing", Verdict::Fail, "vault emit repair"),
            ("error: line 3: no '='", Verdict::Fail, "by hand"),
            ("credential deleted", Verdict::Fail, "vault emit rm e1"),
            (
                "expired (section removed)",
                Verdict::Warn,
                "vault set aws-dev",
            ),
        ] {
            let (v, message, f) = emitted_problem(&info(state)).unwrap();
            assert_eq!(v, verdict, "{state}");
            assert!(message.contains(state), "{message}");
            assert!(f.contains(fix), "{state}: {f}");
        }
    }
}
