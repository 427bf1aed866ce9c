//! Lifecycles against a ledger cluster of separate processes, through the gateway-facing
//! `LedgerClient` (gRPC to the leaders, client-side batching), the way gateways drive it:
//! `--nodes` ledger nodes, each this binary re-run as `cluster_load node …` with its own
//! data directory and port on 127.0.0.1, and the load generator in this process.
//!
//! Per submitter count: a fresh cluster, `--warm-up-s` of unmeasured load, then
//! `--duration-s` measured; prints lifecycles/s, lifecycle latency quantiles, and the CPU
//! (in cores) that the node processes and this process used meanwhile.
//!
//! `cargo run --release -p solrouter-bench --bin cluster_load -- --help`

use anyhow::Context;
use clap::{Parser, Subcommand};
use solrouter_bench::cluster::free_local_addr;
use solrouter_bench::load::{fund, Load, Target};
use solrouter_raft::{ClusterConfig, ClusterStart, LedgerClient, LedgerNode, NodeOptions};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// What a node process prints once it serves, so the driver connects only then.
const READY_LINE: &str = "ready";
/// How long a node process may take to stop after its standard input closes (it shuts its
/// node down first), polled this often; past it the driver kills it and says so.
const STOP_WAIT_ATTEMPTS_MAX: u32 = 3_000;
const STOP_WAIT_INTERVAL: Duration = Duration::from_millis(10);
/// `/proc/<pid>/stat` counts CPU time in clock ticks of `USER_HZ`, 100 on Linux x86-64.
const TICKS_PER_S: f64 = 100.0;

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
    /// Concurrent submitter counts, one row each.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256,1024")]
    submitters: Vec<usize>,
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    #[arg(long, default_value_t = 2)]
    warm_up_s: u64,
    /// Parent of the nodes' data directories (removed after each row).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
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
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    if let Some(NodeCommand::Node { id, peers, groups, dir }) = &args.node {
        return runtime.block_on(run_node(*id, peers, *groups, dir));
    }
    println!(
        "{} node processes, {} groups, {} s per row after {} s warm-up, data in {:?}",
        args.nodes, args.groups, args.duration_s, args.warm_up_s, args.dir
    );
    println!(
        "{:>10} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>11}",
        "submitters",
        "lifecycles/s",
        "mean ms",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "max ms",
        "rejected",
        "node cores",
        "load cores"
    );
    for &n_submitters in &args.submitters {
        let processes = Processes::start(&args)?;
        let row = runtime.block_on(measure(&args, &processes, n_submitters));
        let stopped = processes.stop();
        println!("{}", row?);
        stopped?;
    }
    Ok(())
}

async fn run_node(id: u64, peers: &str, n_groups: u32, dir: &Path) -> anyhow::Result<()> {
    let peers = parse_peers(peers)?;
    let listen = peers.get(&id).context("--peers lacks this node")?.parse()?;
    let config = ClusterConfig::try_new(id, listen, ClusterStart::Bootstrap(peers), n_groups)?;
    let node = LedgerNode::open_cluster(&config, dir, &NodeOptions::default()).await?;
    println!("{READY_LINE}");
    // Blocks this runtime thread only; the node runs on the others.
    tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await??;
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

async fn measure(
    args: &Args,
    processes: &Processes,
    n_submitters: usize,
) -> anyhow::Result<String> {
    let client = LedgerClient::connect(&processes.addrs).await?;
    let target = Target::Client(client);
    fund(&target).await?;
    let mut load = Load::new(target, None);
    load.run(n_submitters, u64::MAX, Some(Duration::from_secs(args.warm_up_s))).await?;
    let (nodes_before, self_before) =
        (processes.cpu_ticks()?, cpu_ticks(Path::new("/proc/self/stat"))?);
    let started = Instant::now();
    let report =
        load.run(n_submitters, u64::MAX, Some(Duration::from_secs(args.duration_s))).await?;
    let elapsed_s = started.elapsed().as_secs_f64();
    let (nodes_after, self_after) =
        (processes.cpu_ticks()?, cpu_ticks(Path::new("/proc/self/stat"))?);
    let cores = |before: u64, after: u64| (after - before) as f64 / TICKS_PER_S / elapsed_s;
    let ms = |latency: Duration| latency.as_secs_f64() * 1e3;
    let latencies = &report.latencies;
    Ok(format!(
        "{:>10} {:>12.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>10.2} {:>11.2}",
        n_submitters,
        report.lifecycles_per_s(),
        ms(latencies.mean()),
        ms(latencies.quantile(0.5)),
        ms(latencies.quantile(0.99)),
        ms(latencies.quantile(0.999)),
        ms(latencies.max()),
        report.n_rejected,
        cores(nodes_before, nodes_after),
        cores(self_before, self_after),
    ))
}

/// The node processes of one row, their data directories and addresses.
struct Processes {
    children: Vec<Child>,
    addrs: Vec<String>,
    _dirs: Vec<TempDir>,
}

impl Processes {
    /// Starts every node and returns once each has printed [`READY_LINE`].
    fn start(args: &Args) -> anyhow::Result<Processes> {
        let addrs =
            (0..args.nodes).map(|_| free_local_addr()).collect::<anyhow::Result<Vec<_>>>()?;
        let peers = (1..).zip(&addrs).map(|(id, addr)| format!("{id}={addr}"));
        let peers = peers.collect::<Vec<_>>().join(",");
        let exe = std::env::current_exe()?;
        let (mut children, mut dirs) = (Vec::new(), Vec::new());
        for id in 1..=args.nodes {
            let dir = tempfile::Builder::new().prefix("solrouter-bench-").tempdir_in(&args.dir)?;
            let child = Command::new(&exe)
                .args(["node", "--id", &id.to_string(), "--peers", &peers])
                .args(["--groups", &args.groups.to_string()])
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .context("starting a node process")?;
            children.push(child);
            dirs.push(dir);
        }
        for child in &mut children {
            let stdout = child.stdout.take().expect("stdout is piped");
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line)?;
            anyhow::ensure!(line.trim() == READY_LINE, "a node process failed to start");
        }
        Ok(Processes { children, addrs, _dirs: dirs })
    }

    /// CPU time of every node process so far, in clock ticks.
    fn cpu_ticks(&self) -> anyhow::Result<u64> {
        let per_child = self
            .children
            .iter()
            .map(|child| cpu_ticks(&PathBuf::from(format!("/proc/{}/stat", child.id()))));
        per_child.sum()
    }

    /// Closes every node's standard input (its signal to shut down) and waits for all of
    /// them to exit; kills one that does not within the bound, and reports it.
    fn stop(mut self) -> anyhow::Result<()> {
        for child in &mut self.children {
            drop(child.stdin.take());
        }
        let mut stuck = Vec::new();
        for child in &mut self.children {
            if !wait_exit(child)? {
                child.kill()?;
                child.wait()?;
                stuck.push(child.id());
            }
        }
        anyhow::ensure!(stuck.is_empty(), "node processes {stuck:?} did not stop and were killed");
        Ok(())
    }
}

/// Whether `child` exited within the stop bound.
fn wait_exit(child: &mut Child) -> anyhow::Result<bool> {
    for _ in 0..STOP_WAIT_ATTEMPTS_MAX {
        if child.try_wait()?.is_some() {
            return Ok(true);
        }
        std::thread::sleep(STOP_WAIT_INTERVAL);
    }
    Ok(false)
}

/// User plus system CPU time of a process from its `/proc/<pid>/stat`, in clock ticks.
fn cpu_ticks(stat: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(stat).with_context(|| format!("reading {stat:?}"))?;
    // The command name (field 2) may hold spaces; fields after it are plain numbers.
    let after_name = &text[text.rfind(')').context("malformed stat")? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}
