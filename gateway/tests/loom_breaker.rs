//! Model-checks the lock-free circuit breaker with loom: every interleaving of
//! concurrent callers, not just the ones a stress test happens to hit.

mod atomic {
    pub(super) use loom::sync::atomic::{AtomicU64, Ordering};
}

#[path = "../src/health/breaker.rs"]
#[allow(dead_code)]
mod breaker;

use breaker::{Admission, CircuitBreaker, State, COOLDOWN_MS, FAILURES_TO_OPEN};
use loom::sync::Arc;
use loom::thread;

fn opened() -> CircuitBreaker {
    let breaker = CircuitBreaker::new();
    for _ in 0..FAILURES_TO_OPEN {
        breaker.record_failure(0);
    }
    breaker
}

/// After the cooldown, of three racing requests exactly one becomes the probe.
#[test]
fn exactly_one_probe_after_cooldown() {
    loom::model(|| {
        let breaker = Arc::new(opened());
        let racers: Vec<_> = (0..3)
            .map(|_| {
                let breaker = breaker.clone();
                thread::spawn(move || breaker.admit(COOLDOWN_MS))
            })
            .collect();
        let admissions: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        let n_probes = admissions.iter().filter(|a| **a == Admission::Probe).count();
        assert_eq!(n_probes, 1, "{admissions:?}");
        assert!(!admissions.contains(&Admission::Pass));
    });
}

/// Concurrent failures are never lost: the breaker opens once the threshold is crossed,
/// whatever the interleaving.
#[test]
fn concurrent_failures_open_the_breaker() {
    loom::model(|| {
        let breaker = Arc::new(CircuitBreaker::new());
        for _ in 0..FAILURES_TO_OPEN - 2 {
            breaker.record_failure(0);
        }
        let failing: Vec<_> = (0..2)
            .map(|_| {
                let breaker = breaker.clone();
                thread::spawn(move || breaker.record_failure(5))
            })
            .collect();
        for thread in failing {
            thread.join().unwrap();
        }
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(breaker.admit(5), Admission::Refuse);
    });
}

/// A probe's success racing a new request: the request either passes (closed) or is
/// refused (still half-open), never becomes a second probe.
#[test]
fn probe_success_races_admission() {
    loom::model(|| {
        let breaker = Arc::new(opened());
        assert_eq!(breaker.admit(COOLDOWN_MS), Admission::Probe);
        let closer = {
            let breaker = breaker.clone();
            thread::spawn(move || breaker.record_success())
        };
        let admission = breaker.admit(COOLDOWN_MS + 1);
        closer.join().unwrap();
        assert!(matches!(admission, Admission::Pass | Admission::Refuse), "{admission:?}");
        assert_eq!(breaker.state(), State::Closed);
    });
}
