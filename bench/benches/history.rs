//! The request history's writer: what one transaction of records costs per record, and
//! four transactions and the sync a node does every second at 30k records/s; and its
//! reader: a dashboard's page of an account's requests (`solrouter_bench::history`
//! describes the workload).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use solrouter_bench::history::{now_ms, prefilled, RECORDS_PER_TRANSACTION};
use solrouter_ledger::{AccountId, HoldId, KeyId};
use solrouter_raft::{HistoryCursor, HistoryQuery};
use std::time::{Duration, Instant};

fn write_transactions(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (history, mut batches) = prefilled(dir.path());
    // As applies queue them: each batch the records of group 0's next entry.
    let mut applied = 0;
    let mut group = c.benchmark_group("history_write");
    group.throughput(Throughput::Elements(RECORDS_PER_TRANSACTION));
    group.bench_function("one_transaction", |b| {
        b.iter_custom(|iterations| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iterations {
                let batch = batches.take(RECORDS_PER_TRANSACTION);
                applied += 1;
                let started = Instant::now();
                history.queue(Some((0, applied)), batch);
                history.flush().unwrap();
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
                    let batch = batches.take(RECORDS_PER_TRANSACTION);
                    applied += 1;
                    let started = Instant::now();
                    history.queue(Some((0, applied)), batch);
                    history.flush().unwrap();
                    elapsed += started.elapsed();
                }
                let started = Instant::now();
                history.sync_records().unwrap();
                elapsed += started.elapsed();
            }
            elapsed
        });
    });
    group.finish();
}

/// Pages of 50 of one account's records, newest first: the latest (four transactions
/// written at 30k records/s after the two prefilled days: ~30 of the account's records a
/// second) with and without its key as a filter, and one from an hour back, where the
/// prefilled records are minutes apart.
fn read_pages(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (history, mut batches) = prefilled(dir.path());
    for _ in 0..4 {
        history.insert(batches.take(RECORDS_PER_TRANSACTION)).unwrap();
    }
    let account = AccountId(7);
    let latest = HistoryQuery { limit: 50, ..HistoryQuery::all(account) };
    let hour_back = now_ms() - 60 * 60 * 1000;
    let before = HistoryCursor { created_ms: hour_back, hold: HoldId(0) };
    let pages = [
        ("latest_page_of_50", latest.clone()),
        ("latest_page_of_50_of_a_key", HistoryQuery { key: Some(KeyId(7)), ..latest.clone() }),
        ("page_of_50_an_hour_back", HistoryQuery { before: Some(before), ..latest }),
    ];
    let mut group = c.benchmark_group("history_read");
    group.throughput(Throughput::Elements(50));
    for (name, query) in pages {
        assert_eq!(history.query(&query).unwrap().records.len(), 50, "{name}");
        group.bench_function(name, |b| b.iter(|| history.query(&query).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, write_transactions, read_pages);
criterion_main!(benches);
