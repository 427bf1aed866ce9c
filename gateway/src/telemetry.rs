//! Logs (tracing, to stderr, filtered by `RUST_LOG`) and metrics (the `metrics` facade,
//! rendered in Prometheus text format at `/metrics`).

use foldhash::HashMap;
use hyper::StatusCode;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// How often the recorder drains its histograms' pending samples into their summaries.
/// Without upkeep every sample stays queued until a scrape: a gateway nobody scrapes
/// grows by each request's latency samples, without bound.
const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// Bucket bounds, in seconds, of every latency histogram on `/metrics` (the ledger's waits
/// and commits, the requests' durations, streams included). Fixed buckets rather than the
/// exporter's default summaries: each summary keeps quantile sketches of up to 32,768
/// eight-byte bins (relative accuracy 0.0001) for each of its rolling windows, which grew
/// `solrouter dev`'s RSS by several MB within minutes (docs/benchmarks.md, "Session 47");
/// buckets stay a few counters each, and add up across gateways (`histogram_quantile`).
const LATENCY_BUCKETS_S: [f64; 20] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

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

/// The exporter as `/metrics` renders it (latencies in `LATENCY_BUCKETS_S`); tests build
/// their local recorders from it too, so they read what production renders.
pub fn prometheus_builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS_S)
        .expect("LATENCY_BUCKETS_S is not empty")
}

/// Installs the process-wide metrics recorder, starts its upkeep, and returns the handle
/// `/metrics` renders.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = prometheus_builder().install_recorder()?;
    let upkept = handle.clone();
    std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || loop {
        std::thread::sleep(METRICS_UPKEEP_EVERY);
        upkept.run_upkeep();
    })?;
    Ok(handle)
}

/// Metric handles registered once per key (a label's values) and reused: the recorder's
/// own lookup, at every `counter!` and `histogram!`, builds the key with its labels (a
/// status formatted into a `String`, a model id copied), hashes and compares it: ~2k
/// instructions a request for the two request metrics, 0.5k through the handles
/// (docs/benchmarks.md, "Session 16").
pub struct Handles<K, H> {
    by_key: RwLock<HashMap<K, H>>,
}

impl<K, H> Default for Handles<K, H> {
    fn default() -> Handles<K, H> {
        Handles { by_key: RwLock::new(HashMap::default()) }
    }
}

impl<K: Hash + Eq, H> Handles<K, H> {
    /// Runs `f` on `key`'s handles, which `register` makes the first time.
    pub fn with<Q>(&self, key: &Q, register: impl FnOnce() -> H, f: impl FnOnce(&H))
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let by_key = self.by_key.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(handles) = by_key.get(key) {
            return f(handles);
        }
        drop(by_key);
        let mut by_key = self.by_key.write().unwrap_or_else(PoisonError::into_inner);
        f(by_key.entry(key.to_owned()).or_insert_with(register));
    }
}

/// Every request's count by route and status, and its duration by route.
#[derive(Default)]
pub struct RequestMetrics {
    handles: Handles<RouteStatus, (Counter, Histogram)>,
}

/// A route's name and a response's status code.
type RouteStatus = (&'static str, u16);

impl RequestMetrics {
    pub fn record(&self, route: &'static str, status: StatusCode, elapsed: Duration) {
        let register = || {
            let status = status.as_str().to_owned();
            let count = metrics::counter!("solrouter_http_requests_total", "route" => route, "status" => status);
            let duration =
                metrics::histogram!("solrouter_http_request_duration_seconds", "route" => route);
            (count, duration)
        };
        self.handles.with(&(route, status.as_u16()), register, |(count, duration)| {
            count.increment(1);
            duration.record(elapsed.as_secs_f64());
        });
    }
}

/// What each model's settles charged and wrote off, as the ledger answered them: the
/// charge in whole micro-USD (an exact integer counter; sub-micro remainders are noise at
/// a dashboard's scale), the write-offs in pico-USD. Handles registered once per model.
#[derive(Default)]
pub struct ModelCharges {
    handles: Handles<String, (Counter, Counter)>,
}

impl ModelCharges {
    pub fn record(&self, model: &str, charged_pico_usd: u128, written_off_pico_usd: u128) {
        let register = || {
            let model = model.to_owned();
            let charged =
                metrics::counter!("solrouter_cost_micro_usd_total", "model" => model.clone());
            let written_off =
                metrics::counter!("solrouter_written_off_pico_usd_total", "model" => model);
            (charged, written_off)
        };
        self.handles.with(model, register, |(charged, written_off)| {
            charged.increment(u64::try_from(charged_pico_usd / 1_000_000).unwrap_or(u64::MAX));
            if written_off_pico_usd > 0 {
                written_off.increment(u64::try_from(written_off_pico_usd).unwrap_or(u64::MAX));
            }
        });
    }
}

/// How long requests wait for the ledger, by operation (`op`: `reserve`, `settle`,
/// `release`), as a request sees it: from the gateway's submit to the outcome, retries
/// included (a node's `solrouter_ledger_commit_seconds` starts later, at the proposal of
/// the batch the command waited for). A reserve's wait comes before the provider is
/// called and a settle's before a plain answer is sent: together most of what the gateway
/// adds to a request (docs/benchmarks.md, "Session 46"). Handles registered once, per bank.
pub struct LedgerWaits {
    pub reserve: Histogram,
    pub settle: Histogram,
    pub release: Histogram,
}

impl LedgerWaits {
    /// Registered with the installed recorder (with none, they record nothing).
    pub fn register() -> LedgerWaits {
        let wait =
            |op: &'static str| metrics::histogram!("solrouter_ledger_wait_seconds", "op" => op);
        LedgerWaits { reserve: wait("reserve"), settle: wait("settle"), release: wait("release") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `record` against a recorder of its own and checks that `/metrics` would
    /// render each of `lines`.
    fn renders(record: impl FnOnce(), lines: &[&str]) {
        let recorder = prometheus_builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, record);
        let text = handle.render();
        for line in lines {
            assert!(text.lines().any(|l| l == *line), "{line} in:\n{text}");
        }
    }

    #[test]
    fn requests_count_by_route_and_status_through_the_registered_handles() {
        let requests = RequestMetrics::default();
        let record = || {
            requests.record("chat", StatusCode::OK, Duration::from_millis(3));
            requests.record("chat", StatusCode::PAYMENT_REQUIRED, Duration::from_millis(1));
            requests.record("chat", StatusCode::OK, Duration::from_millis(2));
            requests.record("api", StatusCode::OK, Duration::from_millis(1));
        };
        let lines = [
            r#"solrouter_http_requests_total{route="chat",status="200"} 2"#,
            r#"solrouter_http_requests_total{route="chat",status="402"} 1"#,
            r#"solrouter_http_requests_total{route="api",status="200"} 1"#,
            r#"solrouter_http_request_duration_seconds_count{route="chat"} 3"#,
        ];
        renders(record, &lines);
    }

    #[test]
    fn charges_and_write_offs_add_up_by_model() {
        let charges = ModelCharges::default();
        let record = || {
            charges.record("openai/gpt-4o-mini", 2_500_000, 0);
            charges.record("mock/echo", 999_999, 7);
            charges.record("openai/gpt-4o-mini", 1_000_000, 40);
        };
        let lines = [
            r#"solrouter_cost_micro_usd_total{model="openai/gpt-4o-mini"} 3"#,
            r#"solrouter_cost_micro_usd_total{model="mock/echo"} 0"#,
            r#"solrouter_written_off_pico_usd_total{model="openai/gpt-4o-mini"} 40"#,
            r#"solrouter_written_off_pico_usd_total{model="mock/echo"} 7"#,
        ];
        renders(record, &lines);
    }
}
