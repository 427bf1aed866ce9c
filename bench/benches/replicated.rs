//! Reserve+settle lifecycles through replicated ledger nodes: a single node, and three
//! nodes in this process replicating over gRPC on 127.0.0.1 (one Raft group, and three
//! groups whose leaders spread over the nodes). Group commit makes one Raft entry per
//! batch; each node's log is in redb on a real directory, `fdatasync`ed before an append
//! is acknowledged. The number of concurrent submitters is swept, which sweeps the batch size.
//! Submitters call the leader's `LedgerNode::submit` directly: no gateway-to-ledger RPC.
//!
//! First criterion measures throughput (one iteration = one lifecycle per submitter); then
//! a fixed-duration run per row prints what criterion cannot: p50/p99 latency of a
//! lifecycle (reserve submitted → settle acknowledged) and the batch sizes achieved.
//!
//! `SOLROUTER_BENCH_DIR` sets where the data directories go (default: the system temp
//! directory). Pointing it at a tmpfs such as `/dev/shm` takes the disk sync out of every
//! flush, which is how `docs/durability.md` prices the flush. `SOLROUTER_BENCH_TOPOLOGIES`
//! picks topologies as `NODESxGROUPS` separated by commas (default `1x1,3x1,3x3`).

use criterion::{BenchmarkId, Criterion, Throughput};
use solrouter_bench::cluster::Cluster;
use solrouter_bench::load::{fund, Load, Target};
use solrouter_raft::NodeOptions;
use std::path::PathBuf;
use std::time::Duration;
use tokio::runtime::Runtime;

/// Concurrent submitters: one (no batching possible) up to about a gateway fleet's worth
/// of requests in flight.
const SUBMITTERS: [usize; 4] = [1, 16, 256, 1024];
/// (nodes, Raft groups) per cluster, unless `SOLROUTER_BENCH_TOPOLOGIES` says otherwise.
const TOPOLOGIES: [(u64, u32); 3] = [(1, 1), (3, 1), (3, 3)];
/// Length of each latency run, and of the unmeasured run before it that warms redb's
/// cache and the allocator (and, in a cluster, lets elections settle).
const LATENCY_RUN: Duration = Duration::from_secs(10);
const LATENCY_WARM_UP: Duration = Duration::from_secs(2);

fn main() {
    let runtime = Runtime::new().expect("tokio runtime");
    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10))
        .configure_from_args();
    let topologies = topologies();
    for &topology in &topologies {
        throughput(&mut criterion, &runtime, topology);
    }
    criterion.final_summary();
    latency(&runtime, &topologies);
}

fn throughput(criterion: &mut Criterion, runtime: &Runtime, (n_nodes, n_groups): (u64, u32)) {
    let name = format!("replicated_lifecycles_{n_nodes}_nodes_{n_groups}_groups");
    let mut group = criterion.benchmark_group(name);
    for n_submitters in SUBMITTERS {
        let cluster = runtime.block_on(open_funded(n_nodes, n_groups));
        let mut load = Load::new(Target::nodes(cluster.nodes()), None);
        group.throughput(Throughput::Elements(n_submitters as u64));
        group.bench_function(BenchmarkId::from_parameter(n_submitters), |b| {
            b.iter_custom(|iters| {
                let n_lifecycles = iters * n_submitters as u64;
                let run = runtime.block_on(load.run(n_submitters, n_lifecycles, None));
                run.expect("ledger cluster failed").elapsed
            });
        });
        runtime.block_on(cluster.shutdown()).expect("shutdown");
    }
    group.finish();
}

fn latency(runtime: &Runtime, topologies: &[(u64, u32)]) {
    println!("\nlifecycle latency, {LATENCY_RUN:?} per row, data in {:?}", base_dir());
    println!(
        "{:>5} {:>6} {:>10} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>14} {:>8} {:>7}",
        "nodes",
        "groups",
        "submitters",
        "lifecycles/s",
        "mean ms",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "max ms",
        "commands/entry",
        "rejected",
        "retries"
    );
    for &(n_nodes, n_groups) in topologies {
        for n_submitters in SUBMITTERS {
            let cluster = runtime.block_on(open_funded(n_nodes, n_groups));
            let mut load = Load::new(Target::nodes(cluster.nodes()), None);
            let report = runtime.block_on(async {
                load.run(n_submitters, u64::MAX, Some(LATENCY_WARM_UP)).await?;
                load.run(n_submitters, u64::MAX, Some(LATENCY_RUN)).await
            });
            let report = report.expect("ledger cluster failed");
            let ms = |latency: Duration| latency.as_secs_f64() * 1e3;
            let latencies = &report.latencies;
            println!(
                "{:>5} {:>6} {:>10} {:>12.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>14.1} {:>8} {:>7}",
                n_nodes,
                n_groups,
                n_submitters,
                report.lifecycles_per_s(),
                ms(latencies.mean()),
                ms(latencies.quantile(0.5)),
                ms(latencies.quantile(0.99)),
                ms(latencies.quantile(0.999)),
                ms(latencies.max()),
                report.commands_per_batch().expect("in-process nodes count batches"),
                report.n_rejected,
                report.n_retries
            );
            runtime.block_on(cluster.shutdown()).expect("shutdown");
        }
    }
}

fn topologies() -> Vec<(u64, u32)> {
    let Some(list) = std::env::var_os("SOLROUTER_BENCH_TOPOLOGIES") else {
        return TOPOLOGIES.to_vec();
    };
    let parse = |item: &str| {
        let (n_nodes, n_groups) = item.trim().split_once('x')?;
        Some((n_nodes.parse().ok()?, n_groups.parse().ok()?))
    };
    let list = list.to_string_lossy();
    let parsed = list.split(',').map(parse).collect::<Option<Vec<_>>>();
    parsed.unwrap_or_else(|| panic!("SOLROUTER_BENCH_TOPOLOGIES={list:?} is not NODESxGROUPS,…"))
}

fn base_dir() -> PathBuf {
    std::env::var_os("SOLROUTER_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

/// A fresh cluster in its own directories (removed when it drops), accounts funded.
async fn open_funded(n_nodes: u64, n_groups: u32) -> Cluster {
    let options = NodeOptions::default();
    let cluster = Cluster::open(n_nodes, n_groups, &base_dir(), &options).await;
    let cluster = cluster.expect("opening the cluster");
    fund(&Target::nodes(cluster.nodes())).await.expect("funding the workload accounts");
    cluster
}
