//! What sharing the audit log costs a sync (issue 24, `[audit] sync`,
//! docs/sync.md "Audit log"): two vaults on one `vault-server`, each with
//! two devices; one shares its audit log, the other does not. Each round,
//! device A hands out the token [`HAND_OUTS`] times, then A syncs (its
//! change and, when sharing, its new entries as a segment) and B syncs
//! (pulling them); the two vaults alternate, so drift hits both alike.
//! Then one sync shares a backlog of [`BACKLOG`] entries (10 segments).

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use vault_protocol::message::{Request, Response};

use super::sync::{change, start_server, sync_now};
use super::{BenchResult, BenchVault, Binaries, PASSPHRASE, Row, Samples, ms, write_private};

/// Hand-outs between two syncs.
const HAND_OUTS: usize = 100;
/// Rounds per vault.
const ROUNDS: usize = 30;
/// Entries in the backlog shared by one sync.
const BACKLOG: usize = 5_000;

/// Devices A and B of one vault, both with `[audit] sync = share`.
struct Pair {
    a: BenchVault,
    b: BenchVault,
}

impl Pair {
    fn new(bins: &Binaries, tmp: &Path, url: &str, token: &str, share: bool) -> BenchResult<Self> {
        let config = format!("[sync]\nauto = false\n[audit]\nsync = {share}\n");
        let device = |name: &str| -> BenchResult<BenchVault> {
            let dir = tmp.join(format!("share-{share}-{name}"));
            fs::create_dir(&dir).map_err(|e| e.to_string())?;
            BenchVault::with_config(bins, &dir, &config)
        };
        let a = device("a")?;
        a.init()?;
        a.add_bench_token(&tmp.join(format!("share-{share}-a")))?;
        a.cli_ok(&["login", url, "--token-file", token], None)?;
        let mut conn = a.connect()?;
        sync_now(&mut conn)?;
        let vault_id = match conn.call(Request::Status)? {
            Response::Status(s) => s.vault_id.ok_or("no vault id")?,
            other => return Err(format!("Status answered {other:?}")),
        };
        let b = device("b")?;
        b.cli_ok(&["login", url, "--token-file", token], None)?;
        b.cli_ok(
            &["init", "--join", &vault_id, "--passphrase-stdin"],
            Some(&format!("{PASSPHRASE}\n")),
        )?;
        Ok(Self { a, b })
    }

    /// `n` hand-outs on A and a change, then A's sync and B's, timed.
    fn round(&self, n: usize, i: usize) -> BenchResult<Duration> {
        let (mut a, mut b) = (self.a.connect()?, self.b.connect()?);
        for _ in 0..n {
            match a.call(Request::Get {
                name: "bench-token".to_owned(),
            })? {
                Response::Record(_) => {}
                other => return Err(format!("Get answered {other:?}")),
            }
        }
        change(&mut a, "bench-token", i)?;
        let t = Instant::now();
        let (pushed, _) = sync_now(&mut a)?;
        let (_, pulled) = sync_now(&mut b)?;
        let took = t.elapsed();
        if (pushed, pulled) != (1, 1) {
            return Err(format!("a round moved {pushed} up and {pulled} down"));
        }
        Ok(took)
    }

    /// The entries of A that B holds.
    fn shared(&self) -> BenchResult<usize> {
        let out = self.b.cli_ok(&["--json", "audit", "--all-devices"], None)?;
        let doc: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        let own = self.b.cli_ok(&["--json", "audit"], None)?;
        let own: serde_json::Value = serde_json::from_str(&own).map_err(|e| e.to_string())?;
        let count = |v: &serde_json::Value| v["entries"].as_array().map_or(0, Vec::len);
        Ok(count(&doc) - count(&own))
    }

    fn shutdown(&self) {
        self.a.shutdown();
        self.b.shutdown();
    }
}

pub(super) fn bench(bins: &Binaries, tmp: &Path, rows: &mut Vec<Row>) -> BenchResult<()> {
    eprintln!("vault-bench: the sync cost of sharing the audit log ({HAND_OUTS} hand-outs a sync)");
    let base = tmp.join("audit-share");
    fs::create_dir(&base).map_err(|e| e.to_string())?;
    let (_server, url) = start_server(bins, &base)?;
    let token = base.join("server-token");
    write_private(&token, super::sync::TOKEN)?;
    let token = token.display().to_string();
    let off = Pair::new(bins, &base, &url, &token, false)?;
    let on = Pair::new(bins, &base, &url, &token, true)?;
    let result = measure(&off, &on, rows);
    off.shutdown();
    on.shutdown();
    result
}

fn measure(off: &Pair, on: &Pair, rows: &mut Vec<Row>) -> BenchResult<()> {
    let (mut t_off, mut t_on) = (Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        t_off.push(off.round(HAND_OUTS, i)?);
        t_on.push(on.round(HAND_OUTS, i)?);
    }
    let want = ROUNDS * HAND_OUTS;
    let (got_off, got_on) = (off.shared()?, on.shared()?);
    if got_on < want || got_off != 0 {
        return Err(format!(
            "B holds {got_on} of A's {want} entries with sharing on and {got_off} with it off"
        ));
    }
    let (s_off, s_on) = (Samples::new(t_off), Samples::new(t_on));
    let figures = |s: &Samples| format!("{} / {}", ms(s.median()), ms(s.pct(90.0)));
    let what = format!("a change and {HAND_OUTS} hand-outs, A syncs then B (p50 / p90)");
    rows.push(Row {
        what: format!("{what}, [audit] sync off"),
        records: 1,
        result: figures(&s_off),
        target: String::new(),
        ok: None,
    });
    let ratio = s_on.median().as_secs_f64() / s_off.median().as_secs_f64().max(1e-9);
    // No budget: a sync is not on a hand-out's path (those are the audit
    // log's budgets, above). Sharing adds a push (when there are entries)
    // and a pull per device and sync; the row tells what that costs.
    rows.push(Row {
        what: format!("{what}, on ({ratio:.2}× off at p50)"),
        records: 1,
        result: figures(&s_on),
        target: String::new(),
        ok: None,
    });
    let backlog = on.round(BACKLOG, ROUNDS)?;
    rows.push(Row {
        what: format!("a backlog of {BACKLOG} entries shared and fetched by one sync each"),
        records: 1,
        result: ms(backlog),
        target: "< 2 s".to_owned(),
        ok: Some(backlog < Duration::from_secs(2)),
    });
    Ok(())
}
