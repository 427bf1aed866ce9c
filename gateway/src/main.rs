//! `solrouter`: the one binary, with one subcommand per role.
// Denied, not forbidden: the global allocator (`allocator.rs`) is the one exception.
#![deny(unsafe_code)]

#[cfg(feature = "mimalloc")]
mod allocator;

use clap::{Args, Parser, Subcommand};
use solrouter_gateway::config::{Config, ConfigLayer};
use solrouter_gateway::gateway_mode::{self, MockUpstream};
use solrouter_gateway::ledger_server::{self, AdminAction};
use solrouter_gateway::{dev, mock, telemetry};
use solrouter_raft::{FirstLeaders, NodeOptions, TlsConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// mimalloc rather than glibc's malloc: under `solrouter dev` load glibc's per-thread
/// arenas kept freed memory (RSS 130 MiB after 10 minutes against 85 MiB with two
/// arenas), and the allocator was the largest item of the ledger's CPU profile. Without the
/// `mimalloc` feature the system allocator serves, so that `heaptrack` sees every allocation.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: allocator::MiMalloc = allocator::MiMalloc;

#[derive(Parser)]
#[command(name = "solrouter", version, about = "A pay-per-token, OpenAI-compatible LLM gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a gateway, a one-node ledger and the built-in mock provider in one process.
    Dev(GatewayArgs),
    /// Run a stateless gateway against a ledger cluster.
    Gateway(ClusterGatewayArgs),
    /// Run one node of a ledger cluster: Raft and the ledger API on `--listen` (gRPC),
    /// metrics and health probes on `--http`.
    Ledger(LedgerArgs),
    /// Operate a ledger cluster: add or remove a node, show members and leaders.
    LedgerAdmin(LedgerAdminArgs),
    /// Write a development CA and certificates for mutual TLS between ledger nodes,
    /// gateways and `ledger-admin` (not for production: use your own CA there).
    DevCa(DevCaArgs),
    /// Run only the built-in mock upstream (OpenAI, Anthropic, Gemini and Cohere wire
    /// formats; models `echo`, `unavailable`), e.g. as the target of a load test or an
    /// incident rehearsal. Requests script faults with `[[mock …]]` directives.
    MockUpstream(MockUpstreamArgs),
}

/// Mutual TLS on the cluster's gRPC traffic: all three files, or none (plaintext, with a
/// warning at startup). `solrouter dev-ca` writes a development set.
#[derive(Args)]
struct TlsArgs {
    /// The cluster's CA certificate (PEM): peers must present a certificate it signed.
    #[arg(long, env = "SOLROUTER_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// This process's certificate chain (PEM, leaf first), signed by the CA.
    #[arg(long, env = "SOLROUTER_TLS_CERT", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// This process's private key (PEM).
    #[arg(long, env = "SOLROUTER_TLS_KEY", requires_all = ["tls_ca", "tls_cert"])]
    tls_key: Option<PathBuf>,
}

impl TlsArgs {
    fn load(self) -> anyhow::Result<Option<TlsConfig>> {
        let files = match (self.tls_ca, self.tls_cert, self.tls_key) {
            (Some(ca), Some(cert), Some(key)) => Some((ca, cert, key)),
            _ => None,
        };
        ledger_server::cluster_tls(files.as_ref().map(|(ca, cert, key)| (&**ca, &**cert, &**key)))
    }
}

#[derive(Args)]
struct DevCaArgs {
    /// Directory to write `ca.pem`, `ledger.pem`, `ledger-key.pem`, `client.pem` and
    /// `client-key.pem` into.
    #[arg(long)]
    out: PathBuf,
    /// Names the ledger nodes are dialed by (IP addresses or DNS names), written into the
    /// ledger certificate.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1,localhost")]
    hosts: Vec<String>,
}

/// `solrouter mock-upstream`: where to listen and the server-wide knobs (`mock::MockConfig`).
/// The defaults are a fast echo with no faults.
#[derive(Args)]
struct MockUpstreamArgs {
    /// Address to serve on (port 0 picks a free one; the listening line says which).
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
    /// Delay before the response head of every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Time to first token: after the head, before a stream's first event (a plain
    /// answer waits it before its head), in milliseconds.
    #[arg(long, default_value_t = 0)]
    ttft_ms: u64,
    /// Pace streams at this many events (words) per second; 0 sends them at once.
    #[arg(long, default_value_t = 0)]
    tokens_per_second: u32,
    /// Share of requests answered with an error status, e.g. `503=0.01,429=0.02`.
    #[arg(long, default_value = "")]
    error_rate: String,
    /// Share of answers cut abruptly (a stream at a random event, a plain body halfway).
    #[arg(long, default_value_t = 0.0)]
    cut_rate: f64,
    /// Share of requests read and never answered.
    #[arg(long, default_value_t = 0.0)]
    hang_rate: f64,
    /// Context length of the model `echo`, in words; longer prompts get a 400.
    #[arg(long, default_value_t = mock::CONTEXT_WORDS_DEFAULT)]
    context_words: u64,
    /// Answer any model name (but `unavailable`) as `echo`, so that a real provider's
    /// base URL (`SOLROUTER_ANTHROPIC_BASE_URL`, …) can point at the mock.
    #[arg(long)]
    echo_any_model: bool,
    /// Seed of the random faults: the same seed and request order replay the same faults.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Serve HTTPS with this certificate chain (PEM, leaf first), HTTP/2 or HTTP/1.1 by
    /// ALPN as providers do; e.g. `solrouter dev-ca`'s `ledger.pem`, with the gateway's
    /// `SOLROUTER_UPSTREAM_CA_FILE` at its `ca.pem`.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Concurrent HTTP/2 streams per connection (over TLS); a client whose connection is
    /// full waits.
    #[arg(long, default_value_t = mock::H2_STREAMS_MAX_DEFAULT)]
    h2_max_streams: u32,
}

impl MockUpstreamArgs {
    fn knobs(&self) -> Result<mock::Knobs, mock::KnobError> {
        mock::Knobs::try_new(mock::MockConfig {
            latency: Duration::from_millis(self.latency_ms),
            ttft: Duration::from_millis(self.ttft_ms),
            tokens_per_second: self.tokens_per_second,
            error_rates: mock::parse_error_rates(&self.error_rate)?,
            cut_rate: self.cut_rate,
            hang_rate: self.hang_rate,
            context_words: self.context_words,
            echo_any_model: self.echo_any_model,
            seed: self.seed,
        })
    }
}

/// Settings shared by every role that serves the gateway API. Precedence: flags, then
/// `SOLROUTER_*` environment variables, then the TOML file, then defaults.
#[derive(Args)]
struct GatewayArgs {
    /// Address to serve on, e.g. 127.0.0.1:8080 (port 0 picks a free one).
    #[arg(long)]
    listen: Option<String>,
    /// Where the ledger and dev-mode state live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A TOML configuration file (keys as in `SOLROUTER_*` variables, lower case,
    /// without the prefix).
    #[arg(long, env = "SOLROUTER_CONFIG")]
    config: Option<PathBuf>,
}

impl GatewayArgs {
    fn config(self) -> anyhow::Result<Config> {
        let flags =
            ConfigLayer { listen: self.listen, data_dir: self.data_dir, ..ConfigLayer::default() };
        load_config(self.config.as_deref(), flags)
    }
}

/// `solrouter gateway`: the settings of dev mode, less the data directory (a gateway keeps
/// no state), plus where the ledger is.
#[derive(Args)]
struct ClusterGatewayArgs {
    /// Address to serve on, e.g. 0.0.0.0:8080 (port 0 picks a free one).
    #[arg(long)]
    listen: Option<String>,
    /// Some nodes of the ledger cluster, `host:port,host:port`; the rest are learned.
    #[arg(long, env = "SOLROUTER_LEDGER", value_delimiter = ',', required = true)]
    ledger: Vec<String>,
    /// Also serve the built-in mock provider (models `mock/*`), as dev mode does.
    #[arg(long)]
    mock: bool,
    /// A TOML configuration file, as for `dev`.
    #[arg(long, env = "SOLROUTER_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Args)]
struct LedgerArgs {
    /// This node's id, unique in the cluster (1, 2, 3, …).
    #[arg(long)]
    id: u64,
    /// Where to serve Raft and the ledger API (gRPC).
    #[arg(long, default_value = "0.0.0.0:7000")]
    listen: SocketAddr,
    /// The founding members, `1=host:port,2=host:port,…`, this node included; each address
    /// is what the others and the gateways dial. On the cluster's first start the lowest id
    /// founds it once every founder answers; at every start a founder asks the others
    /// whether they know it under another data directory (wiped), and then refuses to start.
    #[arg(long)]
    peers: Option<String>,
    /// Start as a node to be added to a running cluster (`ledger-admin add-node`) instead
    /// of a founding member.
    #[arg(long)]
    join: bool,
    /// Where the Raft log, the snapshots and the request history live.
    #[arg(long)]
    data_dir: PathBuf,
    /// Keep the Raft log here instead of in the data directory: a device of its own spares
    /// every commit's sync the history's and the snapshots' writes. Fixed once the node has
    /// started with it (the data directory records it and refuses another).
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Number of Raft groups (shards); the same on every node, fixed for the cluster's life.
    #[arg(long, default_value_t = 8)]
    groups: u32,
    /// Where each group's leader belongs, `spread` (the voters take the groups in turn, in
    /// id order) or `founder` (the lowest id leads all: a cluster across regions whose
    /// traffic comes mostly from that node's; deploy/TOPOLOGY.md). The lowest founder
    /// founds each group there, and a leader elected elsewhere hands its group back once
    /// that node has caught up. Give every node the same.
    #[arg(long, default_value = "spread")]
    first_leaders: FirstLeaders,
    /// Where to serve /metrics, /healthz and /readyz (e.g. `127.0.0.1:7100`); off unless
    /// given, so that several nodes on one host never collide on a default port.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// How many days each node keeps request records (`/v1/api/generation[s]`,
    /// `/v1/api/activity`) before dropping them.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..=36_500))]
    history_retention_days: u64,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Args)]
struct LedgerAdminArgs {
    /// Some nodes of the ledger cluster, `host:port,host:port`.
    #[arg(long, env = "SOLROUTER_LEDGER", value_delimiter = ',', required = true)]
    ledger: Vec<String>,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(subcommand)]
    action: LedgerAdminCommand,
}

#[derive(Subcommand)]
enum LedgerAdminCommand {
    /// Add a node (started with `solrouter ledger --join`) to every group.
    AddNode {
        #[arg(long)]
        id: u64,
        /// The node's `host:port`, as peers and gateways dial it.
        #[arg(long)]
        addr: String,
    },
    /// Remove a node from every group; stop it afterwards.
    RemoveNode {
        #[arg(long)]
        id: u64,
    },
    /// Print members, voters and leaders as JSON.
    Status,
}

/// Layers the configuration: defaults < TOML file < `SOLROUTER_*` environment < flags.
fn load_config(file: Option<&std::path::Path>, flags: ConfigLayer) -> anyhow::Result<Config> {
    let file = match file {
        Some(path) => ConfigLayer::from_file(path)?,
        None => ConfigLayer::default(),
    };
    let environment = ConfigLayer::from_env(|name| std::env::var(name).ok())?;
    Ok(Config::try_new(file.overridden_by(environment).overridden_by(flags))?)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_logs();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Dev(args) => {
            let config = args.config()?;
            runtime.block_on(dev::run(config))
        }
        Command::Gateway(args) => {
            let flags = ConfigLayer { listen: args.listen, ..ConfigLayer::default() };
            let config = load_config(args.config.as_deref(), flags)?;
            let mock = if args.mock { MockUpstream::InProcess } else { MockUpstream::Off };
            let tls = args.tls.load()?;
            runtime.block_on(gateway_mode::run(config, &args.ledger, tls, mock))
        }
        Command::Ledger(args) => {
            let config = ledger_server::cluster_config(
                args.id,
                args.listen,
                args.peers.as_deref(),
                args.join,
                args.groups,
                args.tls.load()?,
            )?
            .with_first_leaders(args.first_leaders);
            let retention = Duration::from_secs(args.history_retention_days * 24 * 60 * 60);
            let mut options = NodeOptions::default().with_history_retention(retention);
            if let Some(log_dir) = args.log_dir {
                options = options.with_log_dir(log_dir);
            }
            runtime.block_on(ledger_server::run(config, &args.data_dir, args.http, options))
        }
        Command::LedgerAdmin(args) => {
            let action = match args.action {
                LedgerAdminCommand::AddNode { id, addr } => AdminAction::AddNode { id, addr },
                LedgerAdminCommand::RemoveNode { id } => AdminAction::RemoveNode { id },
                LedgerAdminCommand::Status => AdminAction::Status,
            };
            runtime.block_on(ledger_server::admin(&args.ledger, args.tls.load()?, action))
        }
        Command::DevCa(args) => ledger_server::dev_ca(&args.out, &args.hosts),
        Command::MockUpstream(args) => {
            let knobs = args.knobs()?;
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(args.listen).await?;
                let address = listener.local_addr()?;
                let stopped = dev::shutdown_signal();
                match (&args.tls_cert, &args.tls_key) {
                    (Some(cert), Some(key)) => {
                        let tls = mock::MockTls::from_pem_files(cert, key)?
                            .with_h2_streams_max(args.h2_max_streams);
                        dev::say(&format!("listening: https://{address}/v1"));
                        mock::serve_tls(listener, knobs, tls, stopped).await?;
                    }
                    _ => {
                        dev::say(&format!("listening: http://{address}/v1"));
                        mock::serve_with(listener, knobs, stopped).await?;
                    }
                }
                Ok(())
            })
        }
    }
}
