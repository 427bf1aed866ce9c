//! Storage soak: drives millions of ledger operations (reserve then settle or release)
//! through a single-node `LedgerNode` with snapshots and log purge on, and prints, every
//! `--report-every-s`: disk use of the data directory, live state size (the encoded size of
//! the ledger, i.e. of a snapshot's payload), space amplification (disk / live), process
//! RSS, log entries appended and snapshots taken. Bounded by `--ops-max` and
//! `--duration-max-s`, whichever comes first.
//!
//! `cargo run --release -p solrouter-bench --bin storage_soak -- --help`

use clap::Parser;
use solrouter_bench::cluster::Cluster;
use solrouter_bench::load::{fund, Load, LoadReport, Target};
use solrouter_raft::{
    LedgerNode, NodeOptions, NodeStats, ENTRIES_KEPT_AFTER_SNAPSHOT, SNAPSHOT_EVERY_ENTRIES,
};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the snapshot counter looks at the node's metrics. Far below the time between
/// two snapshots (hundreds of batches of a few ms), so none is missed.
const SNAPSHOT_POLL_INTERVAL: Duration = Duration::from_millis(20);
const MIB: f64 = 1024.0 * 1024.0;

#[derive(Parser, Debug)]
#[command(about = "Disk use, space amplification and RSS of a ledger node under sustained load")]
struct Args {
    /// Stop after this many ledger operations (each lifecycle is two: reserve, then settle
    /// or release; the 2,048 that fund the accounts are not counted).
    #[arg(long, default_value_t = 3_000_000)]
    ops_max: u64,
    /// Stop after this many seconds of load.
    #[arg(long, default_value_t = 540)]
    duration_max_s: u64,
    /// Concurrent submitters (sets the group-commit batch size).
    #[arg(long, default_value_t = 256)]
    submitters: usize,
    /// Raft entries (batches) between snapshots.
    #[arg(long, default_value_t = SNAPSHOT_EVERY_ENTRIES)]
    snapshot_every_entries: u64,
    /// Entries kept in the log behind a snapshot when it is purged.
    #[arg(long, default_value_t = ENTRIES_KEPT_AFTER_SNAPSHOT)]
    entries_kept_after_snapshot: u64,
    /// Every n-th lifecycle releases its hold instead of settling it (no request record).
    #[arg(long, default_value_t = 8)]
    release_one_in: u64,
    #[arg(long, default_value_t = 10)]
    report_every_s: u64,
    /// Parent of the node's data directory (which is removed at the end).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let options =
        NodeOptions::try_new(args.snapshot_every_entries, args.entries_kept_after_snapshot)?;
    println!("{args:?}");
    tokio::runtime::Runtime::new()?.block_on(soak(&args, &options))
}

async fn soak(args: &Args, options: &NodeOptions) -> anyhow::Result<()> {
    let cluster = Cluster::open(1, 1, &args.dir, options).await?;
    let node = cluster.nodes()[0].clone();
    println!("data directory {:?}", cluster.dir(0));
    let target = Target::nodes(cluster.nodes());
    fund(&target).await?;
    let n_snapshots = Arc::new(AtomicU64::new(0));
    let counter = tokio::spawn(count_snapshots(node.clone(), Arc::clone(&n_snapshots)));
    let mut load = Load::new(target, NonZeroU64::new(args.release_one_in));
    let monitor = Monitor {
        node: node.clone(),
        dir: cluster.dir(0).to_owned(),
        n_lifecycles: load.completed(),
        n_snapshots,
        started: Instant::now(),
    };
    println!("{}", Monitor::HEADER);
    let reporter =
        tokio::spawn(monitor.clone().report_every(Duration::from_secs(args.report_every_s)));
    let duration_max = Duration::from_secs(args.duration_max_s);
    let report = load.run(args.submitters, args.ops_max / 2, Some(duration_max)).await?;
    reporter.abort();
    println!("{}", monitor.row()?);
    summarize(&report, &node.stats());
    counter.abort();
    cluster.shutdown().await?;
    println!("disk after shutdown: {}", DiskUse::of(cluster.dir(0))?);
    Ok(())
}

fn summarize(report: &LoadReport, stats: &NodeStats) {
    let ms = |latency: Duration| latency.as_secs_f64() * 1e3;
    println!(
        "{} lifecycles ({} ops) in {:.1} s: {:.0} lifecycles/s, p50 {:.2} ms, p99 {:.2} ms, \
         max {:.2} ms, {:.1} commands/entry, {} rejected; log: last index {:?}, snapshot at \
         {:?}, purged to {:?}",
        report.n_lifecycles(),
        2 * report.n_lifecycles(),
        report.elapsed.as_secs_f64(),
        report.lifecycles_per_s(),
        ms(report.latencies.quantile(0.5)),
        ms(report.latencies.quantile(0.99)),
        ms(report.latencies.max()),
        report.commands_per_batch().expect("in-process nodes count batches"),
        report.n_rejected,
        stats.last_log_index,
        stats.snapshot_index,
        stats.purged_index,
    );
}

/// Counts snapshots as changes of the node's snapshot index.
async fn count_snapshots(node: LedgerNode, n_snapshots: Arc<AtomicU64>) {
    let mut snapshot_index = node.stats().snapshot_index;
    let mut interval = tokio::time::interval(SNAPSHOT_POLL_INTERVAL);
    loop {
        interval.tick().await;
        let current = node.stats().snapshot_index;
        if current != snapshot_index {
            snapshot_index = current;
            n_snapshots.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Clone)]
struct Monitor {
    node: LedgerNode,
    dir: PathBuf,
    n_lifecycles: Arc<AtomicU64>,
    n_snapshots: Arc<AtomicU64>,
    started: Instant,
}

impl Monitor {
    const HEADER: &'static str = "elapsed_s        ops  entries  snapshots  log_kept  \
                                  disk_MiB  alloc_MiB  live_MiB  amplification  rss_MiB  hwm_MiB";

    async fn report_every(self, period: Duration) {
        let mut interval = tokio::time::interval(period);
        interval.tick().await;
        loop {
            interval.tick().await;
            match self.row() {
                Ok(row) => println!("{row}"),
                Err(e) => println!("sampling failed: {e}"),
            }
        }
    }

    /// One sample. Sizing the live state encodes a copy of the ledger (taken under its
    /// lock in O(1), so applies do not wait), costing a worker tens of ms at a million
    /// records: a small, visible perturbation once per report.
    fn row(&self) -> std::io::Result<String> {
        let stats = self.node.stats();
        let disk = DiskUse::of(&self.dir)?;
        let live_bytes = self.node.state_bytes(0).map_err(std::io::Error::other)?;
        let memory = Memory::of_self()?;
        let last = stats.last_log_index.unwrap_or(0);
        let log_kept = last - stats.purged_index.map_or(0, |purged| purged + 1).min(last);
        Ok(format!(
            "{:>9.0} {:>10} {:>8} {:>10} {:>9} {:>9.1} {:>10.1} {:>9.1} {:>14.2} {:>8.1} {:>8.1}",
            self.started.elapsed().as_secs_f64(),
            2 * self.n_lifecycles.load(Ordering::Relaxed),
            last,
            self.n_snapshots.load(Ordering::Relaxed),
            log_kept,
            disk.apparent_bytes as f64 / MIB,
            disk.allocated_bytes as f64 / MIB,
            live_bytes as f64 / MIB,
            disk.allocated_bytes as f64 / live_bytes as f64,
            memory.rss_kib as f64 / 1024.0,
            memory.rss_peak_kib as f64 / 1024.0,
        ))
    }
}

/// Bytes under a directory: file lengths as `ls` shows them, and blocks actually allocated
/// (what `du` shows; lower for sparse files, higher for preallocated ones).
struct DiskUse {
    apparent_bytes: u64,
    allocated_bytes: u64,
}

impl DiskUse {
    fn of(dir: &Path) -> std::io::Result<DiskUse> {
        use std::os::unix::fs::MetadataExt;
        let mut total = DiskUse { apparent_bytes: 0, allocated_bytes: 0 };
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let metadata = entry.metadata()?;
            if metadata.is_dir() {
                let inner = DiskUse::of(&entry.path())?;
                total.apparent_bytes += inner.apparent_bytes;
                total.allocated_bytes += inner.allocated_bytes;
            } else {
                total.apparent_bytes += metadata.len();
                total.allocated_bytes += metadata.blocks() * 512;
            }
        }
        Ok(total)
    }
}

impl std::fmt::Display for DiskUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (apparent, allocated) =
            (self.apparent_bytes as f64 / MIB, self.allocated_bytes as f64 / MIB);
        write!(f, "{apparent:.1} MiB apparent, {allocated:.1} MiB allocated")
    }
}

/// Resident memory of this process, from `/proc/self/status` (Linux).
struct Memory {
    rss_kib: u64,
    rss_peak_kib: u64,
}

impl Memory {
    fn of_self() -> std::io::Result<Memory> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        let field = |name: &str| -> std::io::Result<u64> {
            let line = status.lines().find(|line| line.starts_with(name));
            let value = line.and_then(|line| line.split_whitespace().nth(1));
            value
                .and_then(|kib| kib.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("no {name} in /proc/self/status")))
        };
        Ok(Memory { rss_kib: field("VmRSS:")?, rss_peak_kib: field("VmHWM:")? })
    }
}
