//! Lifecycles against a ledger cluster of separate processes, through the gateway-facing
//! `LedgerClient` (gRPC to the leaders, client-side batching), the way gateways drive it:
//! `--nodes` ledger nodes, each this binary re-run as `cluster_load node …` with its own
//! data directory and port on 127.0.0.1, and the load generator in this process.
//!
//! Per submitter count (closed loop) or arrival rate (`--rates`, open loop): a fresh
//! cluster, `--warm-up-s` of unmeasured load, then `--duration-s` measured; prints
//! lifecycles/s, lifecycle latency quantiles, and the CPU (in cores) that the node
//! processes and this process used meanwhile. Each node prints, on stopping, the entries
//! its groups proposed, their commands per entry and their mean commit latency.
//!
//! `cargo run --release -p solrouter-bench --bin cluster_load -- --help`

use anyhow::Context;
use clap::{Parser, Subcommand};
use solrouter_bench::load::{fund, Load, LoadReport, Target};
use solrouter_bench::processes::{cpu_ticks, Processes, READY_LINE, TICKS_PER_S};
use solrouter_raft::{ClusterConfig, ClusterStart, LedgerClient, LedgerNode, NodeOptions};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The allocator `solrouter` itself runs on, so the figures are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Lifecycles/s and latency of a multi-process ledger cluster via LedgerClient")]
struct Args {
    #[command(subcommand)]
    node: Option<NodeCommand>,
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Raft groups per cluster (accounts are sharded over them).
    #[arg(long, default_value_t = 1)]
    groups: u32,
    /// Concurrent submitter counts, one row each (closed loop).
    #[arg(long, value_delimiter = ',', default_value = "1,16,256,1024")]
    submitters: Vec<usize>,
    /// Arrival rates in lifecycles/s, one row each, instead of `--submitters` (open loop:
    /// latencies from when each lifecycle was due, so a cluster behind shows in them).
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<NonZeroU64>>,
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    #[arg(long, default_value_t = 2)]
    warm_up_s: u64,
    /// Parent of the nodes' data directories (removed after each row).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// Parent of the nodes' logs (`solrouter ledger --log-dir`), to put them on another
    /// device than the data directories; by default each log is in its data directory.
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Also prints each row's latencies window by window, windows of this many ms by when
    /// each lifecycle started (or was due): whether a tail is a few stalls or everywhere.
    #[arg(long)]
    window_ms: Option<NonZeroU64>,
}

#[derive(Subcommand, Debug)]
enum NodeCommand {
    /// One ledger node, started by the driver; it stops when its standard input closes.
    Node {
        #[arg(long)]
        id: u64,
        /// Founding members as `1=host:port,2=host:port,…`.
        #[arg(long)]
        peers: String,
        #[arg(long)]
        groups: u32,
        #[arg(long)]
        dir: PathBuf,
        /// How long the node keeps request records (default: the production 90 days).
        #[arg(long)]
        history_retention_s: Option<u64>,
        /// The node's log goes to `node-<id>` in this directory.
        #[arg(long)]
        log_parent: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    if let Some(NodeCommand::Node { id, peers, groups, dir, history_retention_s, log_parent }) =
        &args.node
    {
        let mut options = NodeOptions::default();
        if let Some(seconds) = history_retention_s {
            options = options.with_history_retention(Duration::from_secs(*seconds));
        }
        if let Some(parent) = log_parent {
            options = options.with_log_dir(parent.join(format!("node-{id}")));
        }
        return runtime.block_on(run_node(*id, peers, *groups, dir, &options));
    }
    println!(
        "{} node processes, {} groups, {} s per row after {} s warm-up, data in {:?}, logs in {:?}",
        args.nodes,
        args.groups,
        args.duration_s,
        args.warm_up_s,
        args.dir,
        args.log_dir.as_ref().unwrap_or(&args.dir)
    );
    let paces: Vec<Pace> = match &args.rates {
        Some(rates) => rates.iter().copied().map(Pace::Rate).collect(),
        None => args.submitters.iter().copied().map(Pace::Submitters).collect(),
    };
    println!(
        "{:>10} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>11}",
        if args.rates.is_some() { "due/s" } else { "submitters" },
        "lifecycles/s",
        "mean ms",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "max ms",
        "rejected",
        "unanswered",
        "node cores",
        "load cores"
    );
    for pace in paces {
        let exe = std::env::current_exe()?;
        // Removed after the row, as the data directories are.
        let logs = (args.log_dir.as_ref())
            .map(|parent| tempfile::Builder::new().prefix("solrouter-bench-").tempdir_in(parent))
            .transpose()?;
        let node_args = match &logs {
            Some(logs) => vec!["--log-parent".to_owned(), logs.path().display().to_string()],
            None => Vec::new(),
        };
        let mut processes = Processes::start(&exe, args.nodes, args.groups, &args.dir, &node_args)?;
        let row = runtime.block_on(measure(&args, &processes, pace));
        let stopped = processes.stop();
        drop(processes);
        drop(logs);
        println!("{}", row?);
        stopped?;
    }
    Ok(())
}

async fn run_node(
    id: u64,
    peers: &str,
    n_groups: u32,
    dir: &Path,
    options: &NodeOptions,
) -> anyhow::Result<()> {
    let peers = parse_peers(peers)?;
    let listen = peers.get(&id).context("--peers lacks this node")?.parse()?;
    let config = ClusterConfig::try_new(id, listen, ClusterStart::Bootstrap(peers), n_groups)?;
    let node = LedgerNode::open_cluster(&config, dir, options).await?;
    println!("{READY_LINE}");
    // Blocks this runtime thread only; the node runs on the others.
    tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await??;
    // What the driver cannot see from outside: how large this node's entries were and how
    // long its proposals took to commit (warm-up and funding included).
    // Each line in one write: the three nodes share the driver's stderr, and `eprintln!`
    // writes a line in pieces, which interleaved with the other nodes' pieces.
    for group_idx in 0..n_groups {
        let stats = node.group_stats(group_idx);
        if stats.n_batches_proposed > 0 {
            let line = format!(
                "node {id} group {group_idx}: {} entries proposed, {:.1} commands/entry, \
                 mean commit {:.2} ms\n",
                stats.n_batches_proposed,
                stats.n_commands_proposed as f64 / stats.n_batches_proposed as f64,
                stats.commit_us_total as f64 / stats.n_commits.max(1) as f64 / 1e3,
            );
            std::io::stderr().write_all(line.as_bytes())?;
        }
    }
    node.shutdown().await?;
    Ok(())
}

fn parse_peers(peers: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    peers
        .split(',')
        .map(|peer| {
            let (id, addr) = peer.split_once('=').context("a peer is not ID=HOST:PORT")?;
            Ok((id.parse()?, addr.to_owned()))
        })
        .collect()
}

/// How a row loads the cluster.
#[derive(Clone, Copy)]
enum Pace {
    /// This many submitters, each starting its next lifecycle when its last is done.
    Submitters(usize),
    /// Lifecycles started at this rate per second, whatever the cluster's pace.
    Rate(NonZeroU64),
}

impl Pace {
    async fn run(self, load: &mut Load, duration: Duration) -> anyhow::Result<LoadReport> {
        Ok(match self {
            Pace::Submitters(n) => load.run(n, u64::MAX, Some(duration)).await?,
            Pace::Rate(per_s) => load.run_at_rate(per_s, duration).await?,
        })
    }
}

impl std::fmt::Display for Pace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pace::Submitters(n) => n.fmt(f),
            Pace::Rate(per_s) => per_s.fmt(f),
        }
    }
}

async fn measure(args: &Args, processes: &Processes, pace: Pace) -> anyhow::Result<String> {
    let client = LedgerClient::connect(&processes.addrs).await?;
    let target = Target::Client(client);
    fund(&target).await?;
    let mut load = Load::new(target, None);
    if let Some(window_ms) = args.window_ms {
        load = load.with_windows(Duration::from_millis(window_ms.get()));
    }
    pace.run(&mut load, Duration::from_secs(args.warm_up_s)).await?;
    let (nodes_before, self_before) =
        (processes.cpu_ticks()?, cpu_ticks(Path::new("/proc/self/stat"))?);
    let started = Instant::now();
    let report = pace.run(&mut load, Duration::from_secs(args.duration_s)).await?;
    let elapsed_s = started.elapsed().as_secs_f64();
    let (nodes_after, self_after) =
        (processes.cpu_ticks()?, cpu_ticks(Path::new("/proc/self/stat"))?);
    let cores = |before: u64, after: u64| (after - before) as f64 / TICKS_PER_S / elapsed_s;
    let ms = |latency: Duration| latency.as_secs_f64() * 1e3;
    let latencies = &report.latencies;
    let mut windows = String::new();
    let window_ms = args.window_ms.map_or(0, NonZeroU64::get);
    for (idx, window) in report.windows.iter().enumerate() {
        windows += &format!(
            "\n  window from {:>7.2} s: {:>7} lifecycles, p50 {:>7.2} p99 {:>7.2} max {:>7.2} ms",
            (idx as u64 * window_ms) as f64 / 1e3,
            window.n_recorded(),
            ms(window.quantile(0.5)),
            ms(window.quantile(0.99)),
            ms(window.max()),
        );
    }
    Ok(format!(
        "{:>10} {:>12.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>10} {:>10.2} {:>11.2}",
        pace.to_string(),
        report.lifecycles_per_s(),
        ms(latencies.mean()),
        ms(latencies.quantile(0.5)),
        ms(latencies.quantile(0.99)),
        ms(latencies.quantile(0.999)),
        ms(latencies.max()),
        report.n_rejected,
        report.n_unanswered,
        cores(nodes_before, nodes_after),
        cores(self_before, self_after),
    ) + &windows)
}
