//! Soak of a ledger cluster of separate processes (`processes.rs`): lifecycles through the
//! gateway-facing `LedgerClient` until `--lifecycles`, with a random node SIGKILLed and
//! restarted on its data directory every `--kill-every-s`. Prints per round the
//! throughput and every node's RSS and data-directory size, so a state that grows with
//! requests served shows as a rising column; at the end, the bank audit and whether the
//! request history holds every settled lifecycle (every workload account's records,
//! counted through the history API, then once the nodes stopped in each one's own
//! history file).
//!
//! `cargo build --release -p solrouter-bench --bins && target/release/cluster_soak --help`

use anyhow::Context;
use clap::Parser;
use solrouter_bench::load::{fund, Load, Target};
use solrouter_bench::processes::Processes;
use solrouter_bench::WORKLOAD_ACCOUNTS;
use solrouter_ledger::AccountId;
use solrouter_raft::{
    Consistency, History, HistoryPage, HistoryQuery, LedgerApi, LedgerClient, HISTORY_FILE,
    HISTORY_RETENTION_DEFAULT, SNAPSHOT_FILE_NAME,
};
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Parser, Debug)]
#[command(about = "RSS, disk, audit and history of a ledger cluster under load and SIGKILLs")]
struct Args {
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    #[arg(long, default_value_t = 1)]
    groups: u32,
    #[arg(long, default_value_t = 10_000_000)]
    lifecycles: u64,
    #[arg(long, default_value_t = 256)]
    submitters: usize,
    /// Seconds of load between two SIGKILLs (0: never kill).
    #[arg(long, default_value_t = 60)]
    kill_every_s: u64,
    /// Parent of the nodes' data directories (removed at the end).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// How long the nodes keep request records (default: the production 90 days), so a
    /// soak shows the disk bounded by retention; the history check then covers the
    /// rounds that began within the retained window, far enough inside it
    /// ([`COUNT_ALLOWANCE`]) that none of their records expires while they are counted.
    #[arg(long)]
    history_retention_s: Option<u64>,
}

/// Margin between a round's end and the next one's start around the wall-clock cut taken
/// between them: records carry their gateway's creation time, so every record of the
/// rounds after a cut is created after it and every earlier one before.
const CUT_MARGIN: Duration = Duration::from_millis(5);

/// Longest the history check's count may take (a page of 500 records per call, ~5 M
/// records in ~40 s here), at most half the retention: the check covers the rounds whose
/// records no node may drop before the count has read them.
const COUNT_ALLOWANCE: Duration = Duration::from_secs(90);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    // The node program is `cluster_load`, built next to this binary.
    let exe = std::env::current_exe()?.with_file_name("cluster_load");
    anyhow::ensure!(exe.exists(), "{} not found: build every bench binary", exe.display());
    let node_args = match args.history_retention_s {
        Some(seconds) => vec!["--history-retention-s".to_owned(), seconds.to_string()],
        None => Vec::new(),
    };
    let mut processes = Processes::start(&exe, args.nodes, args.groups, &args.dir, &node_args)?;
    let result = runtime.block_on(soak(&args, &mut processes));
    let stopped = processes.stop();
    let stopped_at_ms = now_ms();
    let window = result?;
    stopped?;
    anyhow::ensure!(
        stopped_at_ms < window.cut_ms.saturating_add(window.retention_ms),
        "the nodes stopped after an expiry could drop records of the checked window: run \
         with a longer --history-retention-s"
    );
    runtime.block_on(check_every_replica(&processes, &window))
}

/// The rounds the history check covers: their records, created at or after `cut_ms`, are
/// `expected` on every replica, none of them older than `retention_ms`.
struct Window {
    cut_ms: u64,
    expected: u64,
    retention_ms: u64,
}

/// Counts `window`'s records in each stopped node's own history file: every replica holds
/// every settled request's record, not only the leader the check read through (a restarted
/// node replays its log into its history; one that installed a snapshot copies the
/// records it covers from its leader).
async fn check_every_replica(processes: &Processes, window: &Window) -> anyhow::Result<()> {
    let mut counts = Vec::new();
    for idx in 0..processes.len() {
        let path = processes.data_dir(idx).join(HISTORY_FILE);
        // Read only: the incarnation names the log a write of postings would mark, and a
        // read of a stopped node's file writes none (nothing is held).
        let history = History::open(&path, HISTORY_RETENTION_DEFAULT, 0).await?;
        let kept = count_records(window.cut_ms, |query| {
            let page = history.query(&query);
            std::future::ready(page.with_context(|| format!("node {}'s history", idx + 1)))
        });
        counts.push(kept.await?);
    }
    let complete = counts.iter().all(|&kept| kept == window.expected);
    println!(
        "every replica's own history file: {counts:?} records for {} (complete: {complete})",
        window.expected,
    );
    anyhow::ensure!(complete, "a replica's history lost or doubled records");
    Ok(())
}

async fn soak(args: &Args, processes: &mut Processes) -> anyhow::Result<Window> {
    let client = LedgerClient::connect(&processes.addrs).await?;
    fund(&Target::Client(client.clone())).await?;
    let mut load = Load::new(Target::Client(client.clone()), None);
    println!(
        "{:>7} {:>11} {:>9} {:>8}  per node: rss MiB / snapshots MiB / disk MiB",
        "min", "lifecycles", "per s", "killed"
    );
    let started = Instant::now();
    let (mut done, mut rejected, mut round) = (0u64, 0u64, 0u64);
    // Before each round: (wall-clock ms, lifecycles that left a record so far).
    let mut cuts = vec![(0u64, 0u64)];
    let round_s = if args.kill_every_s == 0 { 60 } else { args.kill_every_s };
    while done < args.lifecycles {
        round += 1;
        let report = load
            .run(args.submitters, args.lifecycles - done, Some(Duration::from_secs(round_s)))
            .await?;
        done += report.n_lifecycles();
        rejected += report.n_rejected;
        let killed = if args.kill_every_s > 0 && done < args.lifecycles {
            let victim = usize::try_from(round).unwrap_or(0) % processes.len();
            processes.kill_and_restart(victim)?;
            format!("node {}", victim + 1)
        } else {
            "-".to_owned()
        };
        let mut nodes = String::new();
        for idx in 0..processes.len() {
            let rss = processes.rss_bytes(idx)? as f64 / MIB;
            let snapshots = processes.file_bytes(idx, SNAPSHOT_FILE_NAME)? as f64 / MIB;
            let disk = processes.disk_bytes(idx)? as f64 / MIB;
            nodes.push_str(&format!("  {rss:7.1} / {snapshots:6.1} / {disk:7.1}"));
        }
        println!(
            "{:>7.1} {:>11} {:>9.0} {:>8}{nodes}",
            started.elapsed().as_secs_f64() / 60.0,
            done,
            report.lifecycles_per_s(),
            killed,
        );
        tokio::time::sleep(CUT_MARGIN).await;
        cuts.push((now_ms(), done - rejected));
        tokio::time::sleep(CUT_MARGIN).await;
    }
    let audit = client.audit(Consistency::Linearizable).await?;
    println!(
        "audit ok: {} ({} problems), rejected lifecycles: {rejected}",
        audit.ok,
        audit.problems.len()
    );
    anyhow::ensure!(audit.ok, "audit failed: {:?}", audit.problems);
    // The earliest cut whose records no node can drop before the count ends: retention runs
    // every `HISTORY_EXPIRE_INTERVAL` and drops what was created before its `now −
    // retention`, and the count takes a while (a cut just inside the retained window lost
    // its first records to an expiry during the count: 4,916,578 of 5,069,482 counted).
    let retention_ms = args.history_retention_s.map_or(u64::MAX, |s| s.saturating_mul(1000));
    let allowance_ms = (COUNT_ALLOWANCE.as_millis() as u64).min(retention_ms / 2);
    let keep_from_ms = (now_ms() + allowance_ms).saturating_sub(retention_ms);
    // The last cut comes after the last round: no record is created after it.
    let rounds_after = &cuts[..cuts.len() - 1];
    let &(cut_ms, recorded_before) =
        rounds_after.iter().find(|(at_ms, _)| *at_ms >= keep_from_ms).context(
            "no round began far enough inside the retained window to check the history: run \
             with a longer --history-retention-s or shorter rounds (--kill-every-s)",
        )?;
    let kept = history_records(&client, cut_ms).await?;
    let counted_at_ms = now_ms();
    let expected = done - rejected - recorded_before;
    println!(
        "history since {cut_ms} ms (rounds from {}): {kept} records for {expected} settled \
         lifecycles (complete: {})",
        if cut_ms == 0 {
            "the start".to_owned()
        } else {
            format!("{:.1} min", cut_age_min(cut_ms))
        },
        kept == expected
    );
    anyhow::ensure!(
        counted_at_ms < cut_ms.saturating_add(retention_ms),
        "counting the history outlasted the retained window (an expiry may have dropped \
         records of it before they were read): run with a longer --history-retention-s"
    );
    anyhow::ensure!(kept == expected, "the history lost or doubled records");
    Ok(Window { cut_ms, expected, retention_ms })
}

fn now_ms() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// How long ago `cut_ms` was, in minutes.
fn cut_age_min(cut_ms: u64) -> f64 {
    now_ms().saturating_sub(cut_ms) as f64 / 60_000.0
}

/// Every workload account's records created at or after `from_ms`, counted page by page
/// through the history API.
async fn history_records(client: &LedgerClient, from_ms: u64) -> anyhow::Result<u64> {
    count_records(from_ms, |query| async move {
        let account = query.account;
        let page = client.history(query, Consistency::Linearizable).await;
        page.with_context(|| format!("history of account {}", account.0))
    })
    .await
}

/// Every workload account's records created at or after `from_ms`, counted page by page:
/// `page` answers a query.
async fn count_records<F, Fut>(from_ms: u64, mut page: F) -> anyhow::Result<u64>
where
    F: FnMut(HistoryQuery) -> Fut,
    Fut: Future<Output = anyhow::Result<HistoryPage>>,
{
    let mut total = 0;
    for account in 0..WORKLOAD_ACCOUNTS {
        let mut query = HistoryQuery { from_ms, ..HistoryQuery::all(AccountId(account)) };
        loop {
            let answer = page(query.clone()).await?;
            total += answer.records.len() as u64;
            match answer.next {
                Some(next) => query.before = Some(next),
                None => break,
            }
        }
    }
    Ok(total)
}
