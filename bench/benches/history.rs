//! The request history's writer: what one transaction of records costs per record, and
//! four transactions and the sync a node does every second at 30k records/s
//! (`solrouter_bench::history` describes the workload).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use solrouter_bench::history::{next_batch, prefilled, RECORDS_PER_TRANSACTION};
use std::time::{Duration, Instant};

fn write_transactions(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (history, mut n) = prefilled(dir.path());
    let mut group = c.benchmark_group("history_write");
    group.throughput(Throughput::Elements(RECORDS_PER_TRANSACTION));
    group.bench_function("transaction_of_8192", |b| {
        b.iter_custom(|iterations| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iterations {
                let batch = next_batch(&mut n, RECORDS_PER_TRANSACTION);
                let started = Instant::now();
                history.insert(batch).unwrap();
                elapsed += started.elapsed();
            }
            elapsed
        });
    });
    group.throughput(Throughput::Elements(4 * RECORDS_PER_TRANSACTION));
    group.bench_function("four_transactions_then_sync", |b| {
        b.iter_custom(|iterations| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iterations {
                for _ in 0..4 {
                    let batch = next_batch(&mut n, RECORDS_PER_TRANSACTION);
                    let started = Instant::now();
                    history.insert(batch).unwrap();
                    elapsed += started.elapsed();
                }
                let started = Instant::now();
                history.sync().unwrap();
                elapsed += started.elapsed();
            }
            elapsed
        });
    });
    group.finish();
}

criterion_group!(benches, write_transactions);
criterion_main!(benches);
