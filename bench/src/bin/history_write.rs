//! The request history's writer without criterion, for `valgrind --tool=callgrind` and
//! `perf`: prefills a history (`solrouter_bench::history`), then commits `--transactions`
//! transactions of `--records-per-transaction` records (32,768), syncing after every
//! `--sync-every` (4: a node syncs every second), and prints the time and the bytes read
//! and written per record of the measured part. `--latency-spread-ms` creates each record
//! up to that long before it settles (out of creation order, as a provider's streams).
//!
//! `cargo run --release -p solrouter-bench --bin history_write -- --transactions 40`

use clap::Parser;
use solrouter_bench::history::{prefilled, RECORDS_PER_TRANSACTION};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 40)]
    transactions: u64,
    #[arg(long, default_value_t = RECORDS_PER_TRANSACTION)]
    records_per_transaction: u64,
    /// Transactions per sync.
    #[arg(long, default_value_t = 4)]
    sync_every: u64,
    /// Each record created up to this long before it settles (0: when it settles).
    #[arg(long, default_value_t = 0)]
    latency_spread_ms: u64,
    /// Parent of the history's temporary directory.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: std::path::PathBuf,
}

fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir_in(&args.dir).expect("a temporary directory");
    let (history, batches) = prefilled(dir.path());
    let mut batches = batches.with_latency_spread(args.latency_spread_ms);
    let io_before = io_bytes();
    let (mut writing, mut syncing) = (Duration::ZERO, Duration::ZERO);
    for transaction in 1..=args.transactions {
        let batch = batches.take(args.records_per_transaction);
        let started = Instant::now();
        // As an apply queues them: the entries of group 0 through `transaction`.
        history.queue(Some((0, transaction)), batch);
        history.flush().unwrap();
        writing += started.elapsed();
        if transaction.is_multiple_of(args.sync_every) {
            let started = Instant::now();
            history.sync_records().unwrap();
            syncing += started.elapsed();
        }
    }
    let io_after = io_bytes();
    let records = (args.transactions * args.records_per_transaction) as f64;
    let per_record_ns = |total: Duration| total.as_nanos() as f64 / records;
    let per_record = |after: u64, before: u64| (after - before) as f64 / records;
    println!(
        "{} records: {:.0} ns/record writing, {:.0} ns/record syncing, {:.0} B/record read, \
         {:.0} B/record written, file {} MiB",
        records,
        per_record_ns(writing),
        per_record_ns(syncing),
        per_record(io_after.0, io_before.0),
        per_record(io_after.1, io_before.1),
        std::fs::metadata(dir.path().join("history.redb")).map_or(0, |m| m.len() >> 20)
    );
}

/// Bytes this process has read and written through system calls (`rchar`, `wchar`).
fn io_bytes() -> (u64, u64) {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let field = |name: &str| {
        let line = io.lines().find(|line| line.starts_with(name));
        line.and_then(|line| line[name.len()..].trim().parse().ok()).unwrap_or(0)
    };
    (field("rchar:"), field("wchar:"))
}
