//! Soak of a ledger cluster of separate processes (`processes.rs`): lifecycles through the
//! gateway-facing `LedgerClient` until `--lifecycles`, with a random node SIGKILLed and
//! restarted on its data directory every `--kill-every-s`. Prints per round the
//! throughput and every node's RSS and data-directory size, so a state that grows with
//! requests served shows as a rising column; at the end, the bank audit and whether the
//! request history holds every settled lifecycle (every workload account's records,
//! counted through the history API).
//!
//! `cargo build --release -p solrouter-bench --bins && target/release/cluster_soak --help`

use anyhow::Context;
use clap::Parser;
use solrouter_bench::load::{fund, Load, Target};
use solrouter_bench::processes::Processes;
use solrouter_bench::WORKLOAD_ACCOUNTS;
use solrouter_ledger::AccountId;
use solrouter_raft::{Consistency, HistoryQuery, LedgerApi, LedgerClient};
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    // The node program is `cluster_load`, built next to this binary.
    let exe = std::env::current_exe()?.with_file_name("cluster_load");
    anyhow::ensure!(exe.exists(), "{} not found: build every bench binary", exe.display());
    let mut processes = Processes::start(&exe, args.nodes, args.groups, &args.dir)?;
    let result = runtime.block_on(soak(&args, &mut processes));
    let stopped = processes.stop();
    result?;
    stopped
}

async fn soak(args: &Args, processes: &mut Processes) -> anyhow::Result<()> {
    let client = LedgerClient::connect(&processes.addrs).await?;
    fund(&Target::Client(client.clone())).await?;
    let mut load = Load::new(Target::Client(client.clone()), None);
    println!(
        "{:>7} {:>11} {:>9} {:>8}  per node: rss MiB / disk MiB",
        "min", "lifecycles", "per s", "killed"
    );
    let started = Instant::now();
    let (mut done, mut rejected, mut round) = (0u64, 0u64, 0u64);
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
            let disk = processes.disk_bytes(idx)? as f64 / MIB;
            nodes.push_str(&format!("  {rss:7.1} / {disk:7.1}"));
        }
        println!(
            "{:>7.1} {:>11} {:>9.0} {:>8}{nodes}",
            started.elapsed().as_secs_f64() / 60.0,
            done,
            report.lifecycles_per_s(),
            killed,
        );
    }
    let audit = client.audit(Consistency::Linearizable).await?;
    println!(
        "audit ok: {} ({} problems), rejected lifecycles: {rejected}",
        audit.ok,
        audit.problems.len()
    );
    let kept = history_records(&client).await?;
    println!(
        "history: {kept} records for {done} settled lifecycles (complete: {})",
        kept == done - rejected
    );
    anyhow::ensure!(audit.ok, "audit failed: {:?}", audit.problems);
    Ok(())
}

/// Every workload account's records, counted page by page through the history API.
async fn history_records(client: &LedgerClient) -> anyhow::Result<u64> {
    let mut total = 0;
    for account in 0..WORKLOAD_ACCOUNTS {
        let mut query = HistoryQuery::all(AccountId(account));
        loop {
            let page = client.history(query.clone(), Consistency::Linearizable).await;
            let page = page.with_context(|| format!("history of account {account}"))?;
            total += page.records.len() as u64;
            match page.next {
                Some(next) => query.before = Some(next),
                None => break,
            }
        }
    }
    Ok(total)
}
