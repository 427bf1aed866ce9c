//! Logs (tracing, to stderr, filtered by `RUST_LOG`) and metrics (the `metrics` facade,
//! rendered in Prometheus text format at `/metrics`).

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// How often the recorder drains its histograms' pending samples into their summaries.
/// Without upkeep every sample stays queued until a scrape: a gateway nobody scrapes
/// grows by each request's latency samples, without bound.
const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Without `RUST_LOG`: our own info logs; openraft and redb only when they warn (their
/// info level narrates every election).
const LOG_FILTER_DEFAULT: &str = "info,openraft=warn,redb=warn";

/// Installs the log subscriber. Stdout stays free for the lines a user (or a test)
/// reads: the endpoint, the admin token, the demo key.
pub fn init_logs() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(LOG_FILTER_DEFAULT));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// Installs the process-wide metrics recorder, starts its upkeep, and returns the handle
/// `/metrics` renders.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    let upkept = handle.clone();
    std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || loop {
        std::thread::sleep(METRICS_UPKEEP_EVERY);
        upkept.run_upkeep();
    })?;
    Ok(handle)
}
