//! The request history's writer without criterion, for `valgrind --tool=callgrind` and
//! `perf`: prefills a history (`solrouter_bench::history`), then commits `--transactions`
//! transactions of 8,192 records, syncing after every fourth (a node syncs every second),
//! and prints the time per record of the measured part.
//!
//! `cargo run --release -p solrouter-bench --bin history_write -- --transactions 40`

use clap::Parser;
use solrouter_bench::history::{next_batch, prefilled, RECORDS_PER_TRANSACTION};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 40)]
    transactions: u64,
    /// Parent of the history's temporary directory.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: std::path::PathBuf,
}

fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir_in(&args.dir).expect("a temporary directory");
    let (history, mut n) = prefilled(dir.path());
    let (mut writing, mut syncing) = (Duration::ZERO, Duration::ZERO);
    for transaction in 1..=args.transactions {
        let batch = next_batch(&mut n);
        let started = Instant::now();
        history.insert(batch).unwrap();
        writing += started.elapsed();
        if transaction % 4 == 0 {
            let started = Instant::now();
            history.sync().unwrap();
            syncing += started.elapsed();
        }
    }
    let records = (args.transactions * RECORDS_PER_TRANSACTION) as f64;
    let per_record_ns = |total: Duration| total.as_nanos() as f64 / records;
    println!(
        "{} records: {:.0} ns/record writing, {:.0} ns/record syncing, file {} MiB",
        records,
        per_record_ns(writing),
        per_record_ns(syncing),
        std::fs::metadata(dir.path().join("history.redb")).map_or(0, |m| m.len() >> 20)
    );
}
