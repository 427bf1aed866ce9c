//! Throughput of the pure state machine: reserve+settle lifecycles applied per second, by
//! batch size. This is the ceiling the replicated ledger can approach.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use solrouter_bench::{funded_ledger, lifecycle_batches};

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

criterion_group!(benches, apply_lifecycles);
criterion_main!(benches);
