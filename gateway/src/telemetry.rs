//! Logs (tracing, to stderr, filtered by `RUST_LOG`) and metrics (the `metrics` facade,
//! rendered in Prometheus text format at `/metrics`).

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

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

/// Installs the process-wide metrics recorder and returns the handle `/metrics` renders.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    Ok(handle)
}
