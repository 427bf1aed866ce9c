//! `solrouter ledger`: one node of a ledger cluster. Raft and the gateway-facing ledger
//! API share one gRPC port (served by `solrouter-raft`); this module adds the operator's
//! HTTP port: `/metrics` (Prometheus), `/healthz` (the process runs) and `/readyz` (every
//! group has a leader this node knows of). `solrouter ledger-admin` is the matching
//! operator client: add or remove a node, show the cluster.

use crate::dev::{say, shutdown_signal};
use crate::respond::{self, Response};
use crate::telemetry;
use anyhow::Context;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use solrouter_raft::{
    ClusterConfig, ClusterStart, LedgerClient, LedgerNode, NodeOptions, TlsConfig, DEV_CA_CERT,
    DEV_CLIENT_CERT, DEV_CLIENT_KEY, DEV_LEDGER_CERT, DEV_LEDGER_KEY,
};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Connections to the operator port served at once: scrapers and probes, a handful.
pub const OPS_CONNECTIONS_MAX: usize = 64;
/// Longest a scraper or probe may take to send its request headers.
pub const OPS_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a node's ledger lives inside `--data-dir`.
const LEDGER_DIR: &str = "ledger";

/// Runs a ledger node until SIGINT or SIGTERM, then shuts it down cleanly; or until one
/// of its Raft groups stops on a storage error (EIO, a full disk, a corrupt record), then
/// exits with that error, so that its supervisor restarts it rather than leave it half
/// dead (serving the other groups, that one answering nothing).
/// The ops port (`/metrics`, `/healthz`, `/readyz`) is served only when `http` is given.
pub async fn run(
    config: ClusterConfig,
    data_dir: &Path,
    http: Option<SocketAddr>,
    options: NodeOptions,
) -> anyhow::Result<()> {
    let metrics = telemetry::init_metrics()?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let ops_listener = match http {
        Some(http) => Some(
            TcpListener::bind(http)
                .await
                .with_context(|| format!("binding the http port {http}"))?,
        ),
        None => None,
    };
    let node = LedgerNode::open_cluster(&config, &data_dir.join(LEDGER_DIR), &options)
        .await
        .context("opening the ledger node")?;
    let ops_address = match &ops_listener {
        Some(listener) => format!("http://{}", listener.local_addr()?),
        None => "off (--http ADDR serves /metrics, /healthz, /readyz)".to_owned(),
    };
    say(&format!(
        "ledger node {} listening: grpc {}, http {ops_address}",
        config.id(),
        config.listen(),
    ));
    let ops = ops_listener.map(|listener| tokio::spawn(serve_ops(node.clone(), metrics, listener)));
    let stopped = tokio::select! {
        () = shutdown_signal() => None,
        why = node.stopped() => Some(why),
    };
    if let Some(ops) = ops {
        ops.abort();
    }
    if stopped.is_none() {
        // A planned stop: the groups this node leads go to other voters first, so that
        // they need no election (which leaves a group without a leader for a while).
        let still_led = node.hand_over_leadership().await;
        if still_led > 0 {
            tracing::warn!("{still_led} group(s) still led here are left to an election");
        }
    }
    // A stopped group reports its error again here; the first report is the one to tell.
    let shut_down = node.shutdown().await;
    if let Some(why) = stopped {
        return Err(why).context("a raft group stopped; exiting so the supervisor restarts");
    }
    shut_down.context("shutting down the ledger node")?;
    Ok(())
}

/// `--peers 1=host:port,2=host:port`: the founding members.
pub fn parse_peers(text: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut peers = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let (id, addr) =
            item.split_once('=').with_context(|| format!("peer {item:?} is not ID=HOST:PORT"))?;
        let id: u64 = id.parse().with_context(|| format!("peer id {id:?} is not a number"))?;
        anyhow::ensure!(addr.contains(':'), "peer address {addr:?} lacks a port");
        anyhow::ensure!(peers.insert(id, addr.to_owned()).is_none(), "peer {id} named twice");
    }
    anyhow::ensure!(!peers.is_empty(), "no peers given");
    Ok(peers)
}

/// The cluster configuration from the `solrouter ledger` flags: founding members, or
/// `--join` for a node that an operator adds to a running cluster; mutual TLS with `tls`.
pub fn cluster_config(
    id: u64,
    listen: SocketAddr,
    peers: Option<&str>,
    join: bool,
    n_groups: u32,
    tls: Option<TlsConfig>,
) -> anyhow::Result<ClusterConfig> {
    let start = match (peers, join) {
        (Some(peers), false) => ClusterStart::Bootstrap(parse_peers(peers)?),
        (None, true) => ClusterStart::Join,
        (Some(_), true) => anyhow::bail!("--join and --peers exclude each other"),
        (None, false) => anyhow::bail!("give --peers (founding member) or --join (added later)"),
    };
    let config = ClusterConfig::try_new(id, listen, start, n_groups)?;
    Ok(match tls {
        Some(tls) => config.with_tls(tls),
        None => config,
    })
}

/// The mutual TLS of the cluster's gRPC traffic from `(ca, cert, key)` PEM files
/// (`--tls-ca`, `--tls-cert`, `--tls-key`). Without them the traffic is plaintext and
/// anyone who reaches a ledger's port can submit commands and Raft messages: allowed, for
/// tests and a cluster on a private network, but warned about loudly.
pub fn cluster_tls(files: Option<(&Path, &Path, &Path)>) -> anyhow::Result<Option<TlsConfig>> {
    let Some((ca, cert, key)) = files else {
        tracing::warn!(
            "UNAUTHENTICATED CLUSTER TRAFFIC: no --tls-ca/--tls-cert/--tls-key, so ledger gRPC \
             is plaintext and anyone who reaches a ledger port can submit credits and Raft \
             messages; `solrouter dev-ca` makes certificates"
        );
        return Ok(None);
    };
    Ok(Some(TlsConfig::from_files(ca, cert, key).context("loading the TLS files")?))
}

/// `solrouter dev-ca`: writes a development CA and certificates into `out` and says which
/// flags use them.
pub fn dev_ca(out: &Path, hosts: &[String]) -> anyhow::Result<()> {
    solrouter_raft::write_dev_ca(out, hosts).context("writing the development CA")?;
    let file = |name: &str| out.join(name).display().to_string();
    let (ca, ledger_cert, ledger_key) =
        (file(DEV_CA_CERT), file(DEV_LEDGER_CERT), file(DEV_LEDGER_KEY));
    let (client_cert, client_key) = (file(DEV_CLIENT_CERT), file(DEV_CLIENT_KEY));
    say(&format!("ledger: --tls-ca {ca} --tls-cert {ledger_cert} --tls-key {ledger_key}"));
    say(&format!(
        "gateway, ledger-admin: --tls-ca {ca} --tls-cert {client_cert} --tls-key {client_key}"
    ));
    Ok(())
}

/// What `solrouter ledger-admin` can do.
pub enum AdminAction {
    AddNode { id: u64, addr: String },
    RemoveNode { id: u64 },
    Status,
}

/// Runs one operator action against the cluster that `seeds` belong to (over mutual TLS
/// with `tls`).
pub async fn admin(
    seeds: &[String],
    tls: Option<TlsConfig>,
    action: AdminAction,
) -> anyhow::Result<()> {
    let client =
        LedgerClient::connect_with(seeds, tls).await.context("connecting to the ledger")?;
    match action {
        AdminAction::AddNode { id, addr } => {
            client.add_node(id, &addr).await.with_context(|| format!("adding node {id}"))?;
            say(&format!("node {id} at {addr} is a voter of every group"));
        }
        AdminAction::RemoveNode { id } => {
            client.remove_node(id).await.with_context(|| format!("removing node {id}"))?;
            say(&format!("node {id} left every group; stop it now"));
        }
        AdminAction::Status => {
            let topology = client.topology().await.context("reading the topology")?;
            say(&serde_json::to_string_pretty(&serde_json::json!({
                "answered_by": topology.node_id,
                "groups": topology.n_groups,
                "members": topology.members,
                "voters": topology.voters,
                "leaders": topology.leaders,
            }))?);
        }
    }
    Ok(())
}

async fn serve_ops(node: LedgerNode, metrics: PrometheusHandle, listener: TcpListener) {
    let permits = Arc::new(Semaphore::new(OPS_CONNECTIONS_MAX));
    let (node, metrics) = (Arc::new(node), Arc::new(metrics));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { return };
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting on the http port failed");
                continue;
            }
        };
        let (node, metrics) = (Arc::clone(&node), Arc::clone(&metrics));
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = route(&node, &metrics, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(OPS_HEADER_READ_TIMEOUT);
            // A probe that hangs up early is not worth a log line.
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
            drop(permit);
        });
    }
}

fn route(node: &LedgerNode, metrics: &PrometheusHandle, request: &Request<Incoming>) -> Response {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => respond::text(StatusCode::OK, "ok\n", "text/plain"),
        (&Method::GET, "/readyz") => {
            let topology = node.topology();
            match topology.leaders.iter().position(Option::is_none) {
                None => respond::text(StatusCode::OK, "ready\n", "text/plain"),
                Some(group_idx) => respond::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("group {group_idx} has no known leader\n"),
                    "text/plain",
                ),
            }
        }
        (&Method::GET, "/metrics") => {
            record_node_metrics(node);
            respond::text(StatusCode::OK, metrics.render(), "text/plain; version=0.0.4")
        }
        _ => respond::text(StatusCode::NOT_FOUND, "not found\n", "text/plain"),
    }
}

/// Per-group Raft state, refreshed at each scrape (no background task): on a node's ops
/// port, and on the gateway's `/metrics` in dev mode. Levels are gauges; what only grows
/// while the process runs is a counter (`_total`), set to the node's own count.
pub(crate) fn record_node_metrics(node: &LedgerNode) {
    for group_idx in 0..node.n_groups() {
        let stats = node.group_stats(group_idx);
        let group = group_idx.to_string();
        let gauge = |name: &'static str, value: Option<u64>| {
            metrics::gauge!(name, "group" => group.clone()).set(value.map_or(-1.0, |v| v as f64));
        };
        let counter = |name: &'static str, value: u64| {
            metrics::counter!(name, "group" => group.clone()).absolute(value);
        };
        gauge("solrouter_ledger_leader_id", stats.leader_id);
        gauge("solrouter_ledger_is_leader", Some(u64::from(stats.leader_id == Some(node.id()))));
        gauge("solrouter_ledger_last_log_index", stats.last_log_index);
        gauge("solrouter_ledger_last_applied_index", stats.last_applied_index);
        gauge("solrouter_ledger_snapshot_index", stats.snapshot_index);
        counter("solrouter_ledger_batches_proposed_total", stats.n_batches_proposed);
        counter("solrouter_ledger_commands_proposed_total", stats.n_commands_proposed);
        gauge("solrouter_ledger_proposals_in_flight", Some(stats.proposals_in_flight));
        gauge("solrouter_ledger_snapshot_build_ms_last", Some(stats.snapshot_build_ms_last));
        gauge("solrouter_ledger_snapshot_encode_ms_last", Some(stats.snapshot_encode_ms_last));
        gauge("solrouter_ledger_snapshot_bytes_last", Some(stats.snapshot_bytes_last));
        counter("solrouter_ledger_clock_jumps_total", stats.n_clock_jumps);
        gauge("solrouter_ledger_holds_remembered", Some(stats.n_ended_holds_remembered));
        gauge("solrouter_ledger_op_ids_remembered", Some(stats.n_op_ids_remembered));
        if let Some(behind_ms) = stats.time_behind_ms {
            metrics::gauge!("solrouter_ledger_time_behind_ms", "group" => group)
                .set(behind_ms as f64);
        }
    }
    match node.history_stats() {
        Ok(history) => {
            metrics::gauge!("solrouter_ledger_history_records").set(history.records as f64);
            metrics::counter!("solrouter_ledger_history_expired_total")
                .absolute(history.expired_total);
            metrics::gauge!("solrouter_ledger_history_copies_wanted")
                .set(history.copies_wanted as f64);
        }
        Err(e) => tracing::warn!(error = %e, "request history stats unavailable"),
    }
}
