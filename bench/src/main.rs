//! `cargo run --release -p vault-bench [-- --runs N --sizes 1000,10000,100000]`
//!
//! Prints one table (issue 2, "Evidence"):
//! - whole-process time of `vault get NAME --field F` against `pass show NAME`
//!   and `age -d -i key.txt file.age` on the same machine (median and p90 of
//!   N runs, each as a ratio to `vault get`);
//! - `vault otp NAME` against `oathtool --totp -b SEED` (issue 26), the tool
//!   users would otherwise run with the seed in argv;
//! - one signature through vaultd's SSH agent against OpenSSH's `ssh-agent`
//!   holding the same key, per key type (issue 25, `agent.rs`);
//! - what one Tab costs (issue 26): the `vault` process a shell's completion
//!   runs, for names and fields at each size, and on a locked vault or with
//!   no daemon;
//! - in-daemon figures at 1k / 10k / 100k records, populated with
//!   `Request::AddMany` over the socket: get p50/p99 (one round trip), list,
//!   unlock (Lock then Unlock, scrypt included; then again without the
//!   index snapshot), daemon RSS.
//!
//! - sync (issue 7): the first sync of 10,000 records to a new device
//!   (`vault init --join`, scrypt included) and one change's round trip
//!   between two devices through a `vault-server` on loopback.
//!
//! It runs the release binaries next to itself (`target/release/vault`,
//! `vaultd`), building them first with `cargo build --release -p vault-cli -p
//! vault-daemon` when run through cargo. Everything lives in a throwaway dir
//! under /tmp (a throwaway GNUPGHOME and PASSWORD_STORE_DIR for `pass`);
//! progress goes to stderr, the table to stdout.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use vault_protocol::credential::CredentialType;
use vault_protocol::frame;
use vault_protocol::message::{
    ListFilter, NewRecord, Request, RequestFrame, Response, ResponseFrame,
};
use vault_protocol::paths::VaultPaths;
use vault_protocol::{BUILD_VERSION, PROTOCOL_VERSION, SecretValue};

mod agent;
mod audit;
mod audit_share;
mod eks;
mod gcp;
mod publish;
mod sync;

/// Passphrase of the throwaway bench vault.
const PASSPHRASE: &str = "vault-bench-passphrase";
/// The value every tool decrypts.
const VALUE: &str = "bench-value-0123456789abcdef0123456789abcdef";
/// A one-time-code seed for the `vault otp` rows (160 bits, base32).
const OTP_SEED: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
/// Records per `AddMany`.
const BATCH: usize = 1000;
/// Round trips per in-daemon get measurement.
const GETS: usize = 5000;

type BenchResult<T> = Result<T, String>;

/// What completion may add to a Tab press (issue 26).
const TAB_BUDGET: Duration = Duration::from_millis(20);

/// pass's bash completion, where Debian puts it.
const PASS_COMPLETION: &str = "/usr/share/bash-completion/completions/pass";

/// One Tab through bash's completion functions, vault's (`vault completions
/// bash`) and pass's, on `size` names each (pass: empty `.gpg` files, which
/// is all its completion reads); `None` without pass's script.
fn tab_in_bash(
    vault: &BenchVault,
    tmp: &Path,
    size: usize,
    runs: usize,
) -> BenchResult<Option<(Samples, Samples)>> {
    if !Path::new(PASS_COMPLETION).is_file() {
        return Ok(None);
    }
    let script = tmp.join("vault.bash");
    if !script.exists() {
        let out = vault.cli_ok(&["completions", "bash"], None)?;
        write_private(&script, &out)?;
    }
    let store = tmp.join("pass-tab");
    fs::create_dir_all(&store).map_err(|e| e.to_string())?;
    for i in 0..size {
        let entry = store.join(format!("bench-{i:06}.gpg"));
        if !entry.exists() {
            fs::write(&entry, b"").map_err(|e| format!("{}: {e}", entry.display()))?;
        }
    }
    let bash = |program: &str, sub: &str, source: &Path, func: &str| {
        let line = format!(
            "source {}; COMP_WORDS=({program} {sub} bench-0001); COMP_CWORD=2; \
             COMP_LINE='{program} {sub} bench-0001'; COMP_POINT=${{#COMP_LINE}}; COMP_TYPE=9; \
             {func} {program} bench-0001 {sub}; echo ${{#COMPREPLY[@]}}",
            source.display()
        );
        let mut c = vault.command(Path::new("/bin/bash"));
        c.args(["--norc", "--noprofile", "-c", &line])
            .env("PASSWORD_STORE_DIR", &store);
        c
    };
    let count = |mut c: Command| -> BenchResult<String> {
        let out = c
            .stdout(Stdio::piped())
            .output()
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let pass_script = Path::new(PASS_COMPLETION);
    for (what, c) in [
        (
            "vault",
            bash("vault", "get", &script, "_clap_complete_vault"),
        ),
        ("pass", bash("pass", "show", pass_script, "_pass")),
    ] {
        let n = count(c)?;
        if n != "100" {
            return Err(format!("{what}'s Tab offered {n} names, not 100"));
        }
    }
    let ours = time_runs(runs, || {
        bash("vault", "get", &script, "_clap_complete_vault")
    })?;
    let theirs = time_runs(runs, || bash("pass", "show", pass_script, "_pass"))?;
    Ok(Some((ours, theirs)))
}

/// What one Tab offers, one word per line (checked before it is timed).
fn tab_words(vault: &BenchVault, words: &[&str]) -> BenchResult<String> {
    let out = tab(vault, words)
        .stdout(Stdio::piped())
        .output()
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The process a shell runs on Tab after `vault WORDS` (the last word is
/// the one being completed), as bash's script calls it.
fn tab(vault: &BenchVault, words: &[&str]) -> Command {
    let mut c = vault.command(&vault.bins.vault);
    c.env("VAULT_COMPLETE", "bash")
        .env("_CLAP_COMPLETE_INDEX", words.len().to_string())
        .env("_CLAP_COMPLETE_COMP_TYPE", "9")
        .env("_CLAP_COMPLETE_SPACE", "true")
        .env("_CLAP_IFS", "\n")
        .args(["--", "vault"])
        .args(words);
    c
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vault-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Command-line options.
#[derive(Debug)]
struct Options {
    runs: usize,
    sizes: Vec<usize>,
    /// Only the publishing figures (`--only-publish`).
    only_publish: bool,
    /// Only the SSH agent figures (`--only-agent`).
    only_agent: bool,
    /// Only the audit log figures (`--only-audit`).
    only_audit: bool,
    /// Only the GCP token figures (`--only-gcp`).
    only_gcp: bool,
    /// Only the EKS token figures (`--only-eks`).
    only_eks: bool,
}

fn parse_args() -> BenchResult<Options> {
    let mut opts = Options {
        runs: 200,
        sizes: vec![1_000, 10_000, 100_000],
        only_publish: false,
        only_agent: false,
        only_audit: false,
        only_gcp: false,
        only_eks: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => {
                opts.runs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--runs needs a number")?;
            }
            "--sizes" => {
                let v = args.next().ok_or("--sizes needs a list like 1000,10000")?;
                opts.sizes = v
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| format!("bad --sizes {v}"))?;
                opts.sizes.sort_unstable();
            }
            "--only-publish" => opts.only_publish = true,
            "--only-agent" => opts.only_agent = true,
            "--only-audit" => opts.only_audit = true,
            "--only-gcp" => opts.only_gcp = true,
            "--only-eks" => opts.only_eks = true,
            "-h" | "--help" => {
                println!(
                    "usage: cargo run --release -p vault-bench -- [--runs N] [--sizes 1000,10000,100000] [--only-publish | --only-agent | --only-audit | --only-gcp | --only-eks]\n\
                     The real OSMO service's row needs VAULT_TEST_OSMO_URL and VAULT_TEST_OSMO_ADMIN_TOKEN_FILE\n\
                     (bash ../shared/osmo/run.sh); without them it is skipped."
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}; see --help")),
        }
    }
    Ok(opts)
}

fn run() -> BenchResult<()> {
    let opts = parse_args()?;
    let bins = binaries()?;
    let tmp = tempfile::Builder::new()
        .prefix("vbench.")
        .tempdir_in("/tmp")
        .map_err(|e| format!("temp dir: {e}"))?;
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700))
        .map_err(|e| e.to_string())?;
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    let mut result = Ok(());
    if opts.only_agent {
        let vault = BenchVault::new(&bins, tmp.path())?;
        result = vault
            .init()
            .and_then(|()| agent::bench(&vault, tmp.path(), opts.runs, &mut rows, &mut notes));
        vault.shutdown();
        if let Err(e) = &result {
            notes.push(format!("stopped early: {e}"));
        }
        print_table(&opts, &rows, &notes);
        return result;
    }
    if opts.only_eks {
        result = eks::bench(&bins, tmp.path(), opts.runs, &mut rows, &mut notes);
        if let Err(e) = &result {
            notes.push(format!("stopped early: {e}"));
        }
        print_table(&opts, &rows, &notes);
        return result;
    }
    if opts.only_gcp {
        result = gcp::bench(&bins, tmp.path(), opts.runs, &mut rows, &mut notes);
        if let Err(e) = &result {
            notes.push(format!("stopped early: {e}"));
        }
        print_table(&opts, &rows, &notes);
        return result;
    }
    if opts.only_audit {
        result = audit::bench(&bins, tmp.path(), opts.runs, &mut rows);
        if result.is_ok() {
            result = audit_share::bench(&bins, tmp.path(), &mut rows);
        }
        if let Err(e) = &result {
            notes.push(format!("stopped early: {e}"));
        }
        print_table(&opts, &rows, &notes);
        return result;
    }
    if !opts.only_publish {
        let vault = BenchVault::new(&bins, tmp.path())?;
        result = bench_all(&vault, tmp.path(), &opts, &mut rows, &mut notes);
        vault.shutdown();
        if result.is_ok() {
            result = sync::bench(&bins, tmp.path(), &mut rows);
        }
        if result.is_ok() {
            result = audit::bench(&bins, tmp.path(), opts.runs, &mut rows);
        }
        if result.is_ok() {
            result = audit_share::bench(&bins, tmp.path(), &mut rows);
        }
        if result.is_ok() {
            result = gcp::bench(&bins, tmp.path(), opts.runs, &mut rows, &mut notes);
        }
        if result.is_ok() {
            result = eks::bench(&bins, tmp.path(), opts.runs, &mut rows, &mut notes);
        }
    }
    if result.is_ok() {
        result = publish::bench(&bins, tmp.path(), &mut rows);
    }
    if result.is_ok() {
        result = publish::bench_real(&bins, tmp.path(), &mut rows, &mut notes);
    }
    if let Err(e) = &result {
        notes.push(format!("stopped early: {e}"));
    }
    print_table(&opts, &rows, &notes);
    result
}

fn bench_all(
    vault: &BenchVault,
    tmp: &Path,
    opts: &Options,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> BenchResult<()> {
    eprintln!(
        "vault-bench: setting up vault, pass and age in {}",
        tmp.display()
    );
    vault.init()?;
    vault.add_bench_token(tmp)?;
    let out = vault.cli_ok(&["get", "bench-token", "--field", "token"], None)?;
    if out.trim_end() != VALUE {
        return Err(format!("vault get printed {out:?}, expected the value"));
    }

    // Whole-process comparison.
    eprintln!(
        "vault-bench: {} runs of each whole-process command",
        opts.runs
    );
    let vault_get = time_runs(opts.runs, || {
        let mut c = vault.command(&vault.bins.vault);
        c.args(["get", "bench-token", "--field", "token"]);
        c
    })?;
    rows.push(Row::process(
        "`vault get NAME --field F`",
        1,
        &vault_get,
        &vault_get,
        "the base of the ratios",
        None,
    ));

    match setup_pass(tmp) {
        Ok(Some(pass)) => {
            let pass_show = time_runs(opts.runs, || pass.show())?;
            let ratio = ratio(&pass_show, &vault_get);
            rows.push(Row::process(
                "`pass show NAME`",
                1,
                &pass_show,
                &vault_get,
                "vault get ≤ ¼ of it",
                Some(ratio >= 4.0),
            ));
            pass.stop_agent();
        }
        Ok(None) => notes.push(
            "`pass show` skipped: pass/gpg not installed (apt-get install pass gnupg)".to_owned(),
        ),
        Err(e) => notes.push(format!("`pass show` skipped: setup failed: {e}")),
    }
    match setup_age(tmp) {
        Ok(Some(age)) => {
            let age_d = time_runs(opts.runs, || age.decrypt())?;
            let ratio = ratio(&age_d, &vault_get);
            rows.push(Row::process(
                "`age -d -i key.txt file.age`",
                1,
                &age_d,
                &vault_get,
                "vault get ≤ it",
                Some(ratio >= 1.0),
            ));
        }
        Ok(None) => notes.push(
            "`age -d` skipped: age/age-keygen not installed (apt-get install age)".to_owned(),
        ),
        Err(e) => notes.push(format!("`age -d` skipped: setup failed: {e}")),
    }

    // exec: what wrapping a command costs, against the command alone and
    // against `vault get` (issue 3: at most 3 ms over `vault get`).
    let true_bin = which("true").unwrap_or_else(|| PathBuf::from("/bin/true"));
    let plain = time_runs(opts.runs, || Command::new(&true_bin))?;
    rows.push(Row::process("`true`", 1, &plain, &vault_get, "", None));
    let exec = time_runs(opts.runs, || {
        let mut c = vault.command(&vault.bins.vault);
        c.args(["exec", "-c", "bench-token", "--"]).arg(&true_bin);
        c
    })?;
    let over_get = exec.median().saturating_sub(vault_get.median());
    rows.push(Row::process(
        &format!("`vault exec -c NAME -- true` (+{} over get)", ms(over_get)),
        1,
        &exec,
        &vault_get,
        "≤ vault get + 3 ms",
        Some(over_get <= Duration::from_millis(3)),
    ));

    // One-time codes: `vault otp` against `oathtool`, which users would
    // otherwise run with the seed in argv.
    let seed_file = tmp.join("otp-seed");
    write_private(&seed_file, OTP_SEED)?;
    vault.cli_ok(
        &[
            "set",
            "bench-token",
            &format!("otp=@{}", seed_file.display()),
        ],
        None,
    )?;
    let otp = time_runs(opts.runs, || {
        let mut c = vault.command(&vault.bins.vault);
        c.args(["otp", "bench-token"]);
        c
    })?;
    rows.push(Row::process(
        "`vault otp NAME`",
        1,
        &otp,
        &vault_get,
        "",
        None,
    ));
    match which("oathtool") {
        Some(tool) => {
            let theirs = time_runs(opts.runs, || {
                let mut c = Command::new(&tool);
                c.args(["--totp", "-b", OTP_SEED]).stdout(Stdio::null());
                c
            })?;
            rows.push(Row::process(
                "`oathtool --totp -b SEED`",
                1,
                &theirs,
                &vault_get,
                "",
                None,
            ));
        }
        None => {
            notes.push("`oathtool` skipped: not installed (apt-get install oathtool)".to_owned())
        }
    }

    // One signature through our SSH agent against OpenSSH's (issue 25).
    agent::bench(vault, tmp, opts.runs, rows, notes)?;

    // A Tab on a locked vault and with no daemon: no names, quickly.
    vault.cli_ok(&["lock"], None)?;
    let offered = tab_words(vault, &["get", "bench-"])?;
    if !offered.is_empty() {
        return Err(format!("a Tab on a locked vault offered {offered:?}"));
    }
    let tab_locked = time_runs(opts.runs, || tab(vault, &["get", "bench-"]))?;
    rows.push(Row::process(
        "Tab `vault get bench-` on a locked vault",
        1,
        &tab_locked,
        &vault_get,
        "≤ 20 ms",
        Some(tab_locked.median() <= TAB_BUDGET),
    ));
    let nobody = tmp.join("no-daemon.sock");
    let tab_stopped = time_runs(opts.runs, || {
        let mut c = tab(vault, &["get", "bench-"]);
        c.env("VAULT_SOCKET", &nobody);
        c
    })?;
    rows.push(Row::process(
        "Tab `vault get bench-` with no daemon",
        1,
        &tab_stopped,
        &vault_get,
        "≤ 20 ms",
        Some(tab_stopped.median() <= TAB_BUDGET),
    ));
    vault.cli_ok(&["unlock", "--passphrase-stdin"], Some(PASSPHRASE))?;

    // In-daemon figures, growing one vault.
    let mut populated = 1usize; // bench-token
    for &size in &opts.sizes {
        eprintln!("vault-bench: populating to {size} records");
        let t = Instant::now();
        let mut conn = vault.connect()?;
        while populated < size {
            let n = BATCH.min(size - populated);
            let records = (populated..populated + n)
                .map(|i| NewRecord {
                    name: format!("bench-{i:06}"),
                    kind: CredentialType::Token,
                    fields: BTreeMap::from([(
                        "token".to_owned(),
                        SecretValue::from(format!("{VALUE}-{i}").as_str()),
                    )]),
                    description: None,
                    tags: vec!["bench".to_owned()],
                    expires_at: None,
                })
                .collect();
            match conn.call(Request::AddMany { records })? {
                Response::AddedMany { count } if count as usize == n => {}
                other => return Err(format!("AddMany answered {other:?}")),
            }
            populated += n;
        }
        eprintln!("vault-bench:   populated in {:.1?}", t.elapsed());

        // get: one round trip each, random names.
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut samples = Vec::with_capacity(GETS);
        for _ in 0..GETS {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let i = 1 + (rng as usize) % (size - 1).max(1);
            let name = format!("bench-{i:06}");
            let t = Instant::now();
            match conn.call(Request::Get { name })? {
                Response::Record(_) => {}
                other => return Err(format!("Get answered {other:?}")),
            }
            samples.push(t.elapsed());
        }
        let gets = Samples::new(samples);
        rows.push(Row {
            what: "in-daemon get (round trip) p50 / p99".to_owned(),
            records: size,
            result: format!("{} / {}", ms(gets.median()), ms(gets.pct(99.0))),
            target: "p99 < 1 ms".to_owned(),
            ok: Some(gets.pct(99.0) < Duration::from_millis(1)),
        });

        // list: median of a few round trips.
        let mut list_times = Vec::new();
        let mut list_error = None;
        for _ in 0..5 {
            let t = Instant::now();
            match list_all(&mut conn) {
                Ok(records) if records == size => list_times.push(t.elapsed()),
                Ok(records) => {
                    list_error = Some(format!("listed {records} of {size}"));
                    break;
                }
                Err(e) => {
                    list_error = Some(e);
                    conn = vault.connect()?;
                    break;
                }
            }
        }
        rows.push(match list_error {
            None => {
                let s = Samples::new(list_times);
                Row {
                    what: "in-daemon list (round trip, all records)".to_owned(),
                    records: size,
                    result: ms(s.median()),
                    target: "< 200 ms at 100k".to_owned(),
                    ok: Some(size < 100_000 || s.median() < Duration::from_millis(200)),
                }
            }
            Some(e) => Row {
                what: "in-daemon list (round trip, all records)".to_owned(),
                records: size,
                result: format!("FAILED: {}", truncate(&e, 90)),
                target: "< 200 ms at 100k".to_owned(),
                ok: Some(false),
            },
        });

        // `vault list --format json` as a user runs it.
        let t = Instant::now();
        let list_cli = vault.cli(&["list", "--format", "json"], None)?;
        let elapsed = t.elapsed();
        rows.push(Row {
            what: "`vault list --format json` (whole process)".to_owned(),
            records: size,
            result: if list_cli.0 == 0 {
                ms(elapsed)
            } else {
                format!(
                    "FAILED (exit {}): {}",
                    list_cli.0,
                    truncate(list_cli.2.trim(), 80)
                )
            },
            target: String::new(),
            ok: None,
        });

        // get as a whole process, at this size.
        let at_size = time_runs(opts.runs.min(100), || {
            let mut c = vault.command(&vault.bins.vault);
            c.args(["get", "bench-000001", "--field", "token"]);
            c
        })?;
        rows.push(Row::process(
            "`vault get NAME --field F`",
            size,
            &at_size,
            &vault_get,
            "",
            None,
        ));

        // Tab completion (issue 26): what one Tab costs, as the shell runs
        // it. `bench-` matches every record; the daemon answers the first
        // COMPLETE_MAX.
        for (what, words) in [
            ("Tab `vault get bench-` (names)", &["get", "bench-"][..]),
            (
                "Tab `vault get NAME --field ` (fields)",
                &["get", "bench-000001", "--field", ""][..],
            ),
        ] {
            let offered = tab_words(vault, words)?;
            let expect = if words.len() == 2 {
                "bench-000001"
            } else {
                "token"
            };
            if !offered.lines().any(|w| w == expect) {
                return Err(format!(
                    "Tab after {words:?} offered {offered:?}, not {expect}"
                ));
            }
            let tabs = time_runs(opts.runs.min(100), || tab(vault, words))?;
            rows.push(Row::process(
                what,
                size,
                &tabs,
                &vault_get,
                "≤ 20 ms",
                Some(tabs.median() <= TAB_BUDGET),
            ));
        }

        // The same Tab as bash runs it, against pass's completion of an
        // entry name in a store of as many entries: a prefix that matches
        // 100 names (bench-0001xx) in both, bash started each time.
        if size >= 1000 {
            match tab_in_bash(vault, tmp, size, opts.runs.min(50)) {
                Ok(Some((ours, theirs))) => {
                    rows.push(Row::process(
                        "bash Tab `vault get bench-0001` (100 matches)",
                        size,
                        &ours,
                        &vault_get,
                        "",
                        None,
                    ));
                    rows.push(Row::process(
                        &format!(
                            "bash Tab `pass show bench-0001` (100 matches; {:.2}× vault's)",
                            ratio(&theirs, &ours)
                        ),
                        size,
                        &theirs,
                        &vault_get,
                        "",
                        None,
                    ));
                }
                Ok(None) => notes.push(
                    "bash Tab rows skipped: pass's bash completion not installed \
                     (apt-get install pass bash-completion)"
                        .to_owned(),
                ),
                Err(e) => notes.push(format!("bash Tab rows skipped: {e}")),
            }
        }

        // unlock: Lock (which writes the index snapshot), then time Unlock
        // (scrypt + the snapshot + whatever it lacks). Then the same with the
        // snapshot deleted: what the first unlock after a crash costs.
        let snapshot = VaultPaths::under_home(&vault.home).index_snapshot();
        for (cold, what, target) in [
            (
                false,
                "unlock (Lock + Unlock round trip, scrypt incl.)",
                "< 1.5 s at 10k, < 1 s at 100k",
            ),
            (true, "unlock with no index snapshot (after a crash)", ""),
        ] {
            let mut unlock_times = Vec::new();
            for _ in 0..3 {
                conn.call(Request::Lock)?;
                if cold {
                    fs::remove_file(&snapshot)
                        .map_err(|e| format!("{}: {e}", snapshot.display()))?;
                }
                let t = Instant::now();
                match conn.call(Request::Unlock {
                    passphrase: SecretValue::from(PASSPHRASE),
                })? {
                    Response::Status(s) if !s.locked => {}
                    other => return Err(format!("Unlock answered {other:?}")),
                }
                unlock_times.push(t.elapsed());
            }
            let unlock = Samples::new(unlock_times);
            let limit = match size {
                10_000 => Some(Duration::from_millis(1500)),
                100_000 => Some(Duration::from_millis(1000)),
                _ => None,
            };
            rows.push(Row {
                what: what.to_owned(),
                records: size,
                result: ms(unlock.median()),
                target: target.to_owned(),
                ok: (!cold).then(|| limit.is_none_or(|l| unlock.median() < l)),
            });
            let (rss, hwm) = rss_kib(conn.pid)?;
            rows.push(Row {
                what: if cold {
                    "daemon RSS after it (VmRSS / VmHWM)"
                } else {
                    "daemon RSS (VmRSS / VmHWM)"
                }
                .to_owned(),
                records: size,
                result: format!(
                    "{:.1} MiB / {:.1} MiB",
                    rss as f64 / 1024.0,
                    hwm as f64 / 1024.0
                ),
                target: String::new(),
                ok: None,
            });
        }

        // A get right after unlock (cold index).
        let t = Instant::now();
        conn.call(Request::Get {
            name: "bench-000001".to_owned(),
        })?;
        rows.push(Row {
            what: "first get after unlock".to_owned(),
            records: size,
            result: ms(t.elapsed()),
            target: String::new(),
            ok: None,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------- binaries

/// The release binaries under test.
#[derive(Debug)]
struct Binaries {
    vault: PathBuf,
    vaultd: PathBuf,
    server: PathBuf,
    /// The OSMO test double (`tests/src/bin/osmo-double.rs`).
    osmo_double: PathBuf,
}

fn binaries() -> BenchResult<Binaries> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe.parent().ok_or("no exe dir")?.to_path_buf();
    let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if profile != "release" {
        eprintln!(
            "vault-bench: WARNING: running the `{profile}` build; numbers are only meaningful \
             with `cargo run --release -p vault-bench`"
        );
    }
    // Under `cargo run`, CARGO is set: rebuild the binaries so they are fresh.
    if let Some(cargo) = std::env::var_os("CARGO") {
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", "vault-cli", "-p", "vault-daemon"]);
        build.args(["-p", "vault-server", "-p", "vault-e2e", "--bins"]);
        if profile == "release" {
            build.arg("--release");
        }
        if let Some(target) = dir.parent() {
            build.arg("--target-dir").arg(target);
        }
        eprintln!("vault-bench: building vault and vaultd ({profile})");
        let status = build
            .stdin(Stdio::null())
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(
                "cargo build of vault, vaultd, vault-server and osmo-double failed".to_owned(),
            );
        }
    }
    let bins = Binaries {
        vault: dir.join("vault"),
        vaultd: dir.join("vaultd"),
        server: dir.join("vault-server"),
        osmo_double: dir.join("osmo-double"),
    };
    for b in [&bins.vault, &bins.vaultd, &bins.server, &bins.osmo_double] {
        if !b.is_file() {
            return Err(format!(
                "{} is missing: run `cargo build --release -p vault-cli -p vault-daemon -p \
                 vault-server -p vault-e2e --bins` first",
                b.display()
            ));
        }
    }
    Ok(bins)
}

// ---------------------------------------------------------------- the vault

/// A throwaway vault and its daemon.
#[derive(Debug)]
struct BenchVault {
    bins: Binaries,
    home: PathBuf,
    user_home: PathBuf,
}

impl BenchVault {
    fn new(bins: &Binaries, tmp: &Path) -> BenchResult<Self> {
        let user_home = tmp.join("h");
        fs::create_dir(&user_home).map_err(|e| e.to_string())?;
        Ok(Self {
            bins: Binaries {
                vault: bins.vault.clone(),
                vaultd: bins.vaultd.clone(),
                server: bins.server.clone(),
                osmo_double: bins.osmo_double.clone(),
            },
            home: tmp.join("v"),
            user_home,
        })
    }

    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.user_home)
            .env("VAULT_HOME", &self.home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    /// Runs `vault ARGS`; returns (exit code, stdout, stderr).
    fn cli(&self, args: &[&str], input: Option<&str>) -> BenchResult<(i32, String, String)> {
        let mut c = self.command(&self.bins.vault);
        c.args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().map_err(|e| format!("vault: {e}"))?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin
                .write_all(input.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    fn cli_ok(&self, args: &[&str], input: Option<&str>) -> BenchResult<String> {
        let (code, out, err) = self.cli(args, input)?;
        if code != 0 {
            return Err(format!(
                "`vault {}` exited {code}: {}",
                args.join(" "),
                err.trim()
            ));
        }
        Ok(out)
    }

    /// A vault under `base` whose `config.toml` is `config` (written
    /// before the daemon first starts).
    fn with_config(bins: &Binaries, base: &Path, config: &str) -> BenchResult<Self> {
        let vault = Self::new(bins, base)?;
        fs::create_dir_all(&vault.home).map_err(|e| e.to_string())?;
        fs::set_permissions(&vault.home, fs::Permissions::from_mode(0o700))
            .map_err(|e| e.to_string())?;
        write_private(&vault.home.join("config.toml"), config)?;
        Ok(vault)
    }

    fn init(&self) -> BenchResult<()> {
        self.cli_ok(
            &["init", "--passphrase-stdin"],
            Some(&format!("{PASSPHRASE}\n")),
        )?;
        Ok(())
    }

    /// Adds `bench-token` holding [`VALUE`], read from a file in `dir`.
    fn add_bench_token(&self, dir: &Path) -> BenchResult<()> {
        let value_file = dir.join("value");
        write_private(&value_file, VALUE)?;
        self.cli_ok(
            &[
                "add",
                "bench-token",
                "--type",
                "token",
                &format!("token=@{}", value_file.display()),
            ],
            None,
        )?;
        Ok(())
    }

    fn socket(&self) -> PathBuf {
        VaultPaths::under_home(&self.home).socket
    }

    fn connect(&self) -> BenchResult<Conn> {
        let stream = UnixStream::connect(self.socket())
            .map_err(|e| format!("connect {}: {e}", self.socket().display()))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(600)))
            .map_err(|e| e.to_string())?;
        let mut conn = Conn {
            stream,
            next_id: 1,
            pid: 0,
        };
        match conn.call(Request::Hello {
            protocol: PROTOCOL_VERSION,
            build: BUILD_VERSION.to_owned(),
        })? {
            Response::Hello { pid, .. } => {
                conn.pid = pid;
                Ok(conn)
            }
            other => Err(format!("Hello answered {other:?}")),
        }
    }

    fn shutdown(&self) {
        if let Ok(mut c) = self.connect() {
            let _ = c.call(Request::Shutdown);
        }
        let _ = self.cli(&["daemon", "stop"], None);
    }
}

impl Drop for BenchVault {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One connection speaking the local protocol.
/// Every record through paged `List` round trips; returns how many.
fn list_all(conn: &mut Conn) -> BenchResult<usize> {
    let (mut count, mut after) = (0, None);
    loop {
        match conn.call(Request::List {
            filter: ListFilter::default(),
            after: after.take(),
        })? {
            Response::Records { records, next } => {
                count += records.len();
                match next {
                    Some(name) => after = Some(name),
                    None => return Ok(count),
                }
            }
            other => return Err(format!("answered {other:?}")),
        }
    }
}

#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    next_id: u64,
    /// The daemon's pid, from its Hello.
    pid: u32,
}

impl Conn {
    fn call(&mut self, req: Request) -> BenchResult<Response> {
        let id = self.next_id;
        self.next_id += 1;
        frame::write(&mut self.stream, &RequestFrame { id, req }).map_err(|e| e.to_string())?;
        let resp: ResponseFrame = frame::read(&mut self.stream).map_err(|e| e.to_string())?;
        if resp.id != id {
            return Err(format!("response id {} for request {id}", resp.id));
        }
        resp.into_result()
            .map_err(|e| format!("{:?}: {}", e.code, e.message))
    }
}

// ---------------------------------------------------------------- pass, age

/// A throwaway password store with a passphrase-less gpg key.
#[derive(Debug)]
struct PassStore {
    gnupghome: PathBuf,
    store: PathBuf,
}

impl PassStore {
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("GNUPGHOME", &self.gnupghome)
            .env("PASSWORD_STORE_DIR", &self.store)
            .env_remove("GPG_AGENT_INFO")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    fn show(&self) -> Command {
        let mut c = self.command("pass");
        c.args(["show", "bench-token"]);
        c
    }

    fn stop_agent(&self) {
        let _ = self
            .command("gpgconf")
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

impl Drop for PassStore {
    fn drop(&mut self) {
        self.stop_agent();
    }
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

fn check(c: &mut Command, what: &str) -> BenchResult<String> {
    let out = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn setup_pass(tmp: &Path) -> BenchResult<Option<PassStore>> {
    if !on_path("pass") || !on_path("gpg") {
        return Ok(None);
    }
    let gnupghome = tmp.join("g");
    fs::create_dir(&gnupghome).map_err(|e| e.to_string())?;
    fs::set_permissions(&gnupghome, fs::Permissions::from_mode(0o700))
        .map_err(|e| e.to_string())?;
    let pass = PassStore {
        gnupghome,
        store: tmp.join("pass"),
    };
    let params = tmp.join("gpg-params");
    write_private(
        &params,
        "%no-protection\nKey-Type: default\nSubkey-Type: default\nName-Real: vault bench\n\
         Name-Email: bench@vault.invalid\nExpire-Date: 0\n%commit\n",
    )?;
    check(
        pass.command("gpg")
            .arg("--batch")
            .arg("--gen-key")
            .arg(&params),
        "gpg --batch --gen-key (%no-protection)",
    )?;
    check(
        pass.command("pass").args(["init", "bench@vault.invalid"]),
        "pass init",
    )?;
    let mut insert = pass.command("pass");
    insert
        .args(["insert", "--multiline", "bench-token"])
        .stdin(Stdio::piped());
    let mut child = insert.spawn().map_err(|e| format!("pass insert: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(format!("{VALUE}\n").as_bytes())
            .map_err(|e| e.to_string())?;
    }
    if !child.wait().map_err(|e| e.to_string())?.success() {
        return Err("pass insert failed".to_owned());
    }
    let shown = check(&mut pass.show(), "pass show")?;
    if shown.trim_end() != VALUE {
        return Err(format!("pass show printed {shown:?}"));
    }
    Ok(Some(pass))
}

/// An age identity and one file encrypted to it.
#[derive(Debug)]
struct AgeFile {
    key: PathBuf,
    file: PathBuf,
}

impl AgeFile {
    fn decrypt(&self) -> Command {
        let mut c = Command::new("age");
        c.arg("-d")
            .arg("-i")
            .arg(&self.key)
            .arg(&self.file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }
}

fn setup_age(tmp: &Path) -> BenchResult<Option<AgeFile>> {
    if !on_path("age") || !on_path("age-keygen") {
        return Ok(None);
    }
    let key = tmp.join("key.txt");
    check(Command::new("age-keygen").arg("-o").arg(&key), "age-keygen")?;
    let key_text = fs::read_to_string(&key).map_err(|e| e.to_string())?;
    let recipient = key_text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .ok_or("no public key in key.txt")?
        .to_owned();
    let file = tmp.join("file.age");
    let mut enc = Command::new("age");
    enc.args(["-r", &recipient, "-o"])
        .arg(&file)
        .stdin(Stdio::piped());
    let mut child = enc.spawn().map_err(|e| format!("age: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(format!("{VALUE}\n").as_bytes())
            .map_err(|e| e.to_string())?;
    }
    if !child.wait().map_err(|e| e.to_string())?.success() {
        return Err("age -r failed".to_owned());
    }
    let age = AgeFile { key, file };
    let out = check(&mut age.decrypt(), "age -d")?;
    if out.trim_end() != VALUE {
        return Err(format!("age -d printed {out:?}"));
    }
    Ok(Some(age))
}

// ---------------------------------------------------------------- timing

/// Durations, sorted.
#[derive(Debug)]
struct Samples(Vec<Duration>);

impl Samples {
    fn new(mut v: Vec<Duration>) -> Self {
        v.sort_unstable();
        Self(v)
    }

    fn pct(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let idx = ((p / 100.0) * (self.0.len() - 1) as f64).round() as usize;
        self.0[idx.min(self.0.len() - 1)]
    }

    fn median(&self) -> Duration {
        self.pct(50.0)
    }
}

/// Runs the command `runs` times (after 10 warm-up runs), timing each whole
/// process from spawn to exit.
fn time_runs(runs: usize, mut make: impl FnMut() -> Command) -> BenchResult<Samples> {
    let mut v = Vec::with_capacity(runs);
    for i in 0..runs + 10 {
        let mut c = make();
        let t = Instant::now();
        let status = c.status().map_err(|e| e.to_string())?;
        let d = t.elapsed();
        if !status.success() {
            return Err(format!("{c:?} failed: {status}"));
        }
        if i >= 10 {
            v.push(d);
        }
    }
    Ok(Samples::new(v))
}

/// `n` in-daemon calls of `req` on one connection, each timed into `out`;
/// the answer must be a record or a token.
fn calls(
    vault: &BenchVault,
    req: fn() -> Request,
    n: usize,
    out: &mut Vec<Duration>,
) -> BenchResult<()> {
    let mut conn = vault.connect()?;
    for _ in 0..n {
        let t = Instant::now();
        match conn.call(req())? {
            Response::Record(_) | Response::AccessToken { .. } => {}
            other => return Err(format!("answered {other:?}")),
        }
        out.push(t.elapsed());
    }
    Ok(())
}

fn ratio(a: &Samples, base: &Samples) -> f64 {
    a.median().as_secs_f64() / base.median().as_secs_f64().max(1e-9)
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.3} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn truncate(s: &str, n: usize) -> String {
    let one_line = s.replace('\n', " ");
    if one_line.chars().count() <= n {
        one_line
    } else {
        format!("{}…", one_line.chars().take(n).collect::<String>())
    }
}

fn rss_kib(pid: u32) -> BenchResult<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// A server the bench started, killed on drop.
struct Listening(Child);

impl Listening {
    /// Starts a server that prints `listening on ADDR` first; returns it
    /// with ADDR. Its stderr is discarded, the rest of its stdout drained.
    fn start(mut cmd: Command, what: &str) -> BenchResult<(Self, String)> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{what}: {e}"))?;
        let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let server = Self(child);
        let mut line = String::new();
        out.read_line(&mut line).map_err(|e| e.to_string())?;
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        });
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| format!("{what} did not start: {line:?}"))?
            .to_owned();
        Ok((server, addr))
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A record of `kind` with one field.
fn one_field(name: String, kind: CredentialType, field: &str, value: &str) -> NewRecord {
    NewRecord {
        name,
        kind,
        fields: BTreeMap::from([(field.to_owned(), SecretValue::from(value))]),
        description: None,
        tags: vec![],
        expires_at: None,
    }
}

fn write_private(path: &Path, content: &str) -> BenchResult<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(content.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------- output

/// One line of the table.
#[derive(Debug)]
struct Row {
    what: String,
    records: usize,
    result: String,
    target: String,
    ok: Option<bool>,
}

impl Row {
    fn process(
        what: &str,
        records: usize,
        s: &Samples,
        base: &Samples,
        target: &str,
        ok: Option<bool>,
    ) -> Self {
        Row {
            what: format!("{what} (whole process)"),
            records,
            result: format!(
                "{} / {} ({:.2}× vault get)",
                ms(s.median()),
                ms(s.pct(90.0)),
                ratio(s, base)
            ),
            target: target.to_owned(),
            ok,
        }
    }
}

fn print_table(opts: &Options, rows: &[Row], notes: &[String]) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nvault-bench: {} whole-process runs each (median / p90), {} in-daemon gets per size (p50 / p99)\n",
        opts.runs, GETS
    );
    let header = ["measurement", "records", "result", "target", "met"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.what.clone(),
                r.records.to_string(),
                r.result.clone(),
                r.target.clone(),
                match r.ok {
                    Some(true) => "yes".to_owned(),
                    Some(false) => "NO".to_owned(),
                    None => String::new(),
                },
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: &[String]| {
        let mut s = String::from("|");
        for (c, w) in cols.iter().zip(widths) {
            let pad = w - c.chars().count();
            let _ = write!(s, " {c}{} |", " ".repeat(pad));
        }
        s
    };
    let _ = writeln!(out, "{}", line(&header.map(str::to_owned)));
    let sep: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    let _ = writeln!(out, "{}", line(&sep).replace(' ', "-"));
    for row in &cells {
        let _ = writeln!(out, "{}", line(row));
    }
    for n in notes {
        let _ = writeln!(out, "\nnote: {n}");
    }
    print!("{out}");
}

/// A program found on PATH.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
