//! Provider health: one lock-free [`CircuitBreaker`] per provider, consulted when routing
//! picks candidates and fed with the outcome of every upstream exchange, so an upstream
//! that is down is skipped (and the request falls back) instead of being waited on.

mod breaker;

pub use breaker::{Admission, CircuitBreaker, State, COOLDOWN_MS, FAILURES_TO_OPEN};

/// The atomics `breaker` is written against; the loom model test swaps in loom's.
mod atomic {
    pub(super) use std::sync::atomic::{AtomicU64, Ordering};
}

use std::collections::HashMap;
use std::time::Instant;

/// Breakers of every provider, created up front so lookups never allocate or lock.
#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    breakers: HashMap<String, CircuitBreaker>,
}

impl Health {
    pub fn new<'a>(providers: impl IntoIterator<Item = &'a str>) -> Health {
        let breakers =
            providers.into_iter().map(|p| (p.to_owned(), CircuitBreaker::new())).collect();
        Health { epoch: Instant::now(), breakers }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether `provider` may be tried now. Unknown providers are always admitted.
    pub fn admit(&self, provider: &str) -> Admission {
        self.breakers.get(provider).map_or(Admission::Pass, |b| b.admit(self.now_ms()))
    }

    pub fn record(&self, provider: &str, healthy: bool) {
        if let Some(breaker) = self.breakers.get(provider) {
            if healthy {
                breaker.record_success();
            } else {
                breaker.record_failure(self.now_ms());
            }
        }
    }

    /// Each provider's breaker state, for `/readyz` and metrics.
    pub fn states(&self) -> impl Iterator<Item = (&str, State)> {
        self.breakers.iter().map(|(provider, breaker)| (provider.as_str(), breaker.state()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_probes_after_cooldown() {
        let breaker = CircuitBreaker::new();
        for _ in 1..FAILURES_TO_OPEN {
            breaker.record_failure(100);
        }
        assert_eq!(breaker.admit(100), Admission::Pass, "one failure short of opening");
        breaker.record_failure(100);
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(breaker.admit(100 + COOLDOWN_MS - 1), Admission::Refuse);
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
    fn health_tracks_providers_by_name() {
        let health = Health::new(["openai", "mock"]);
        for _ in 0..FAILURES_TO_OPEN {
            health.record("mock", false);
        }
        assert_eq!(health.admit("mock"), Admission::Refuse);
        assert_eq!(health.admit("openai"), Admission::Pass);
        assert_eq!(health.admit("unknown"), Admission::Pass);
    }
}
