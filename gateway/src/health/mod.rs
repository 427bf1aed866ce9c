//! Endpoint health: per endpoint (one model on one host), a lock-free
//! [`CircuitBreaker`] consulted before each attempt and fed with its outcome, so an
//! endpoint that is down is skipped (and the request falls back) instead of being waited
//! on, and live [`EndpointStats`] (time to first token, tokens per second, error rate
//! over sliding windows) that routing sorts by and `/endpoints` and `/metrics` show.
//!
//! Breakers are per endpoint, not per host: a host's outage of one model (a deployment
//! overloaded, a model withdrawn) does not send its other models' traffic elsewhere,
//! and a host that is down for everything opens each of its endpoints' breakers after
//! their own failures.

mod breaker;
mod stats;

pub use breaker::{Admission, CircuitBreaker, State, COOLDOWN_MS, FAILURES_TO_OPEN};
pub use stats::{EndpointStats, Snapshot, BUCKETS, BUCKET_MS, ROUTING_WINDOW_BUCKETS};

/// The atomics `breaker` is written against; the loom model test swaps in loom's.
mod atomic {
    pub(super) use std::sync::atomic::{AtomicU64, Ordering};
}

use crate::catalog::{Catalog, Model};
use crate::providers::UpstreamError;
use http::StatusCode;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// An endpoint's breaker and statistics.
#[derive(Debug, Default)]
struct EndpointHealth {
    breaker: CircuitBreaker,
    stats: EndpointStats,
}

/// What routing knows of an endpoint now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// Its breaker would let a request through (closed, or a probe is due).
    pub passable: bool,
    pub state: State,
    /// The last [`ROUTING_WINDOW_BUCKETS`] minutes.
    pub recent: Snapshot,
}

/// Health of every catalogue endpoint, indexed by [`Model::slot`], made up front so
/// lookups never allocate or lock.
#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    endpoints: Vec<EndpointHealth>,
    /// Each slot's host and model id, for `/readyz` and `/metrics`.
    names: Vec<(String, String)>,
}

impl Health {
    pub fn new(catalog: &Catalog) -> Health {
        let all = catalog.all_endpoints();
        Health {
            epoch: Instant::now(),
            endpoints: all.iter().map(|_| EndpointHealth::default()).collect(),
            names: all.iter().map(|model| (model.provider.clone(), model.id.clone())).collect(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn of(&self, endpoint: &Model) -> Option<&EndpointHealth> {
        self.endpoints.get(endpoint.slot)
    }

    /// Whether `endpoint` may be tried now. Endpoints of another catalogue are admitted.
    pub fn admit(&self, endpoint: &Model) -> Admission {
        self.of(endpoint).map_or(Admission::Pass, |health| health.breaker.admit(self.now_ms()))
    }

    /// An attempt at `endpoint` answered, its first token `ttft` after it was sent.
    pub fn record_answer(&self, endpoint: &Model, ttft: Duration) {
        if let Some(health) = self.of(endpoint) {
            health.breaker.record_success();
            health.stats.record_answer(self.now_ms(), ttft.as_millis() as u64);
        }
    }

    /// An attempt at `endpoint` failed before answering; `outage`: by the endpoint's
    /// fault (its servers failed or did not answer in time), which counts against its
    /// breaker and error rate. Its refusals of a request (4xx, rate limits) do not.
    pub fn record_failure(&self, endpoint: &Model, outage: bool) {
        if let Some(health) = self.of(endpoint) {
            if outage {
                health.breaker.record_failure(self.now_ms());
            } else {
                health.breaker.record_success();
            }
            health.stats.record_failure(self.now_ms(), outage);
        }
    }

    /// An answer of `endpoint` broke off mid-stream; `outage` as in `record_failure`.
    pub fn record_broken(&self, endpoint: &Model, outage: bool) {
        if let Some(health) = self.of(endpoint).filter(|_| outage) {
            health.breaker.record_failure(self.now_ms());
            health.stats.record_broken(self.now_ms());
        }
    }

    /// An answer of `endpoint` generated `tokens` completion tokens in `generation`.
    pub fn record_tokens(&self, endpoint: &Model, tokens: u64, generation: Duration) {
        if let Some(health) = self.of(endpoint) {
            health.stats.record_tokens(self.now_ms(), tokens, generation.as_millis() as u64);
        }
    }

    /// What routing knows of `endpoint` now.
    pub fn view(&self, endpoint: &Model) -> View {
        let now_ms = self.now_ms();
        self.of(endpoint).map_or(
            View { passable: true, state: State::Closed, recent: Snapshot::default() },
            |health| View {
                passable: health.breaker.passable(now_ms),
                state: health.breaker.state(),
                recent: health.stats.snapshot(now_ms, ROUTING_WINDOW_BUCKETS),
            },
        )
    }

    /// `endpoint`'s statistics over the last `window_buckets` minutes.
    pub fn snapshot(&self, endpoint: &Model, window_buckets: usize) -> Snapshot {
        self.of(endpoint).map_or(Snapshot::default(), |health| {
            health.stats.snapshot(self.now_ms(), window_buckets)
        })
    }

    /// Each host's worst endpoint state (open over half-open over closed), for `/readyz`.
    pub fn host_states(&self) -> BTreeMap<&str, State> {
        let mut hosts: BTreeMap<&str, State> = BTreeMap::new();
        for ((host, _), health) in self.names.iter().zip(&self.endpoints) {
            let state = health.breaker.state();
            let worst = hosts.entry(host.as_str()).or_insert(State::Closed);
            *worst = match (*worst, state) {
                (State::Open, _) | (_, State::Open) => State::Open,
                (State::HalfOpen, _) | (_, State::HalfOpen) => State::HalfOpen,
                _ => State::Closed,
            };
        }
        hosts
    }

    /// Sets the per-endpoint gauges of `/metrics` (called at each scrape): requests,
    /// errors, mean time to first token and tokens per second over the routing window,
    /// and whether the breaker is open, of every endpoint that has seen traffic.
    pub fn export_metrics(&self) {
        let now_ms = self.now_ms();
        for ((host, model), health) in self.names.iter().zip(&self.endpoints) {
            let recent = health.stats.snapshot(now_ms, ROUTING_WINDOW_BUCKETS);
            let open = health.breaker.state() != State::Closed;
            if recent == Snapshot::default() && !open {
                continue;
            }
            let labels = [("provider", host.clone()), ("model", model.clone())];
            metrics::gauge!("solrouter_endpoint_requests_5m", &labels).set(recent.requests as f64);
            metrics::gauge!("solrouter_endpoint_errors_5m", &labels).set(recent.errors as f64);
            if let Some(ttft_ms) = recent.ttft_ms {
                metrics::gauge!("solrouter_endpoint_ttft_ms_5m", &labels).set(ttft_ms as f64);
            }
            if let Some(speed) = recent.tokens_per_second {
                metrics::gauge!("solrouter_endpoint_tokens_per_second_5m", &labels)
                    .set(speed as f64);
            }
            metrics::gauge!("solrouter_endpoint_circuit_open", &labels)
                .set(f64::from(u8::from(open)));
        }
    }
}

/// Whether a failure counts against the provider's health: its servers failed or did
/// not answer in time. Its refusals of a request (4xx, rate limits) do not.
pub fn is_outage(error: &UpstreamError) -> bool {
    error.status.is_server_error() || error.status == StatusCode::REQUEST_TIMEOUT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_server_errors_and_timeouts() {
        let check = |status: StatusCode, expected: bool| {
            let error = crate::upstream::failure("p", status, "m", true);
            assert_eq!(is_outage(&error), expected, "{status}");
        };
        check(StatusCode::BAD_GATEWAY, true);
        check(StatusCode::SERVICE_UNAVAILABLE, true);
        check(StatusCode::GATEWAY_TIMEOUT, true);
        check(StatusCode::REQUEST_TIMEOUT, true);
        check(StatusCode::TOO_MANY_REQUESTS, false);
        check(StatusCode::BAD_REQUEST, false);
    }

    #[test]
    fn opens_after_consecutive_failures_and_probes_after_cooldown() {
        let breaker = CircuitBreaker::new();
        for _ in 1..FAILURES_TO_OPEN {
            breaker.record_failure(100);
        }
        assert_eq!(breaker.admit(100), Admission::Pass, "one failure short of opening");
        breaker.record_failure(100);
        assert_eq!(breaker.state(), State::Open);
        assert!(!breaker.passable(100 + COOLDOWN_MS - 1));
        assert_eq!(breaker.admit(100 + COOLDOWN_MS - 1), Admission::Refuse);
        assert!(breaker.passable(100 + COOLDOWN_MS));
        assert_eq!(breaker.admit(100 + COOLDOWN_MS), Admission::Probe);
        assert_eq!(breaker.admit(100 + COOLDOWN_MS), Admission::Refuse, "one probe at a time");
        breaker.record_failure(100 + COOLDOWN_MS);
        assert_eq!(breaker.state(), State::Open, "a failed probe reopens");
        assert_eq!(breaker.admit(100 + 2 * COOLDOWN_MS), Admission::Probe);
        breaker.record_success();
        assert_eq!((breaker.state(), breaker.admit(0)), (State::Closed, Admission::Pass));
    }

    #[test]
    fn success_resets_the_failure_count() {
        let breaker = CircuitBreaker::new();
        for _ in 0..3 * FAILURES_TO_OPEN {
            breaker.record_failure(1);
            breaker.record_success();
        }
        assert_eq!(breaker.state(), State::Closed);
    }

    #[test]
    fn an_unanswered_probe_is_replaced_after_a_cooldown() {
        let breaker = CircuitBreaker::new();
        for _ in 0..FAILURES_TO_OPEN {
            breaker.record_failure(0);
        }
        assert_eq!(breaker.admit(COOLDOWN_MS), Admission::Probe);
        assert_eq!(breaker.admit(2 * COOLDOWN_MS - 1), Admission::Refuse);
        assert_eq!(breaker.admit(2 * COOLDOWN_MS), Admission::Probe);
    }

    #[test]
    fn health_tracks_each_endpoint() {
        let catalog = Catalog::builtin();
        let health = Health::new(&catalog);
        let shared = catalog.endpoints("mock/shared").unwrap();
        for _ in 0..FAILURES_TO_OPEN {
            health.record_failure(&shared[1], true);
        }
        assert_eq!(health.admit(&shared[1]), Admission::Refuse);
        assert_eq!(health.admit(&shared[0]), Admission::Pass, "the other host's endpoint");
        let echo = catalog.get("mock/echo").unwrap();
        assert_eq!(health.admit(echo), Admission::Pass, "the same host's other model");
        assert!(!health.view(&shared[1]).passable);
        assert_eq!(health.view(&shared[1]).recent.errors, FAILURES_TO_OPEN);
        assert_eq!(health.host_states()["mock-slow"], State::Open);
        assert_eq!(health.host_states()["mock"], State::Closed);
        // Refusals (4xx) count as requests, not errors, and close nothing.
        health.record_failure(echo, false);
        health.record_answer(echo, Duration::from_millis(30));
        health.record_tokens(echo, 10, Duration::from_millis(100));
        let recent = health.view(echo).recent;
        assert_eq!((recent.requests, recent.errors, recent.ttft_ms), (2, 0, Some(30)));
        assert_eq!(recent.tokens_per_second, Some(100));
    }
}
