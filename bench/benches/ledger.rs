//! Throughput of the pure state machine: reserve+settle lifecycles applied per second, by
//! batch size. This is the ceiling the replicated ledger can approach. And a snapshot's
//! encoding of a ledger that remembers a minute of ended holds, as a node under load does.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use solrouter_bench::{funded_ledger, lifecycle_batches};
use solrouter_raft::encode_snapshot;

fn apply_lifecycles(c: &mut Criterion) {
    let mut group = c.benchmark_group("ledger_apply_lifecycles");
    for n_lifecycles in [1usize, 64, 512, 2048] {
        group.throughput(Throughput::Elements(n_lifecycles as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(n_lifecycles),
            &n_lifecycles,
            |b, &n| {
                let mut ledger = funded_ledger();
                let mut first = 0u64;
                b.iter_batched(
                    || {
                        first += n as u64;
                        lifecycle_batches(first, n, 2)
                    },
                    |batches| {
                        for batch in &batches {
                            ledger.apply(batch);
                        }
                    },
                    BatchSize::SmallInput,
                );
            },
        );
    }
    group.finish();
}

/// Ended holds a snapshot carries at 100k lifecycles/s is six million (a minute of them,
/// `HOLDS_REMEMBERED_FOR_MS`); a million keeps the setup short and the window larger than
/// the CPU's caches.
const SNAPSHOT_ENDED_HOLDS: usize = 1 << 20;

fn snapshot_encode(c: &mut Criterion) {
    let mut ledger = funded_ledger();
    for first in (0..SNAPSHOT_ENDED_HOLDS).step_by(2048) {
        for batch in &lifecycle_batches(first as u64, 2048, 2) {
            ledger.apply(batch);
        }
    }
    let mut group = c.benchmark_group("ledger_snapshot_encode");
    group.sample_size(10).throughput(Throughput::Elements(SNAPSHOT_ENDED_HOLDS as u64));
    group.bench_function(BenchmarkId::from_parameter(SNAPSHOT_ENDED_HOLDS), |b| {
        b.iter(|| encode_snapshot(&ledger).expect("encodable"))
    });
    group.finish();
}

/// A snapshot's copy of the state, taken under the lock every apply takes, with this many
/// holds pending (reserved, not yet settled: streams in flight across a fleet of
/// gateways). It must not grow with them: snapshots never block applies.
fn clone_with_pending_holds(c: &mut Criterion) {
    let mut group = c.benchmark_group("ledger_clone_with_pending_holds");
    for n_pending in [4_096usize, 65_536, 262_144] {
        let mut ledger = funded_ledger();
        for first in (0..n_pending).step_by(2048) {
            let [reserves, _settles] = lifecycle_batches(first as u64, 2048, 2);
            ledger.apply(&reserves);
        }
        assert_eq!(ledger.audit().n_holds, n_pending as u64);
        group.bench_function(BenchmarkId::from_parameter(n_pending), |b| b.iter(|| ledger.clone()));
    }
    group.finish();
}

criterion_group!(benches, apply_lifecycles, snapshot_encode, clone_with_pending_holds);
criterion_main!(benches);
