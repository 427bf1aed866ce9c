//! What every request handler shares: configuration, the ledger client, the catalogue,
//! the providers and the upstream client. Built once at startup and never mutated, so
//! handlers read it without locks.

use crate::bank::Bank;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::health::Health;
use crate::providers::Providers;
use crate::telemetry::RequestMetrics;
use crate::upstream::Upstream;
use crate::web::Web;
use metrics_exporter_prometheus::PrometheusHandle;

pub struct App {
    pub config: Config,
    /// The bearer token of the admin API (configured, or generated at startup).
    pub admin_token: String,
    /// The payments webhook's signing secret (`payments.rs`); none: no webhook.
    pub webhook_secret: Option<String>,
    pub bank: Bank,
    pub catalog: Catalog,
    pub providers: Providers,
    /// One circuit breaker per provider, consulted before each upstream attempt.
    pub health: Health,
    pub upstream: Upstream,
    pub metrics: PrometheusHandle,
    /// Every request's count and duration (`server.rs`).
    pub requests: RequestMetrics,
    /// The dashboard's sessions and login limits.
    pub web: Web,
}

impl App {
    /// Gives the state the process's lifetime: every connection task and every settle
    /// task borrows it as `&'static`, with no reference counting on the hot path. Called
    /// once per process.
    pub fn leak(self) -> &'static App {
        Box::leak(Box::new(self))
    }
}
