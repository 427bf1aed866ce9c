//! Drives one phase: sends requests on the open-loop schedule or from closed-loop
//! workers, hands each to the sender with the instant it was due, and records the
//! result. The sender is a function, so the timing logic is tested without a network.

use crate::schedule::Load;
use crate::stats::{Recorder, Sample};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The granularity of tokio's timer: a sleep ends up to this much after its deadline.
const TIMER_RESOLUTION: Duration = Duration::from_millis(1);

/// Stops besides the schedule's end.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Requests sent at most in the phase.
    pub requests_max: u64,
    /// Open loop: requests in flight at most. When they are all busy the next request
    /// waits, and that wait counts in its latency (it is measured from when it was due).
    pub in_flight_max: usize,
}

/// Runs a phase to its end and waits for every request sent. `send(idx)` performs
/// request number `idx` as soon as it is called (its latency counts from when it was
/// due), or answers `None` at once when the phase skips it (the direct phase has no 402s
/// to send).
pub async fn run<S, F>(load: &Load, limits: Limits, recorder: Arc<Recorder>, send: S)
where
    S: Fn(u64) -> F + Send + Sync + 'static,
    F: Future<Output = Option<Sample>> + Send + 'static,
{
    let send = Arc::new(send);
    match load {
        Load::Open(steps) => {
            let in_flight = Arc::new(Semaphore::new(limits.in_flight_max));
            let mut tasks = JoinSet::new();
            let arrivals = steps.arrivals().take(limits.requests_max as usize);
            for (idx, offset) in (0u64..).zip(arrivals) {
                let intended = recorder.started + offset;
                // Tokio's timer wakes up to a millisecond late; waking that much early and
                // sending at once keeps its granularity out of every latency.
                tokio::time::sleep_until(intended - TIMER_RESOLUTION.min(offset)).await;
                let permit = in_flight.clone().acquire_owned().await.expect("never closed");
                let now = Instant::now();
                recorder.sent(Some(now.saturating_duration_since(intended)));
                // Late: measured from when it was due (no coordinated omission). Early:
                // from when it left, as if its user had arrived then.
                let start = intended.min(now);
                let (request, recorder) = (send(idx), recorder.clone());
                tasks.spawn(async move {
                    recorder.record(start, request.await);
                    drop(permit);
                });
                // Reap finished tasks as we go so their results do not pile up.
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        }
        Load::Closed(steps) => {
            let issued = Arc::new(AtomicU64::new(0));
            let mut workers = JoinSet::new();
            for worker_idx in 0..steps.value_max() {
                let (steps, recorder, send, issued) =
                    (steps.clone(), recorder.clone(), send.clone(), issued.clone());
                workers.spawn(async move {
                    loop {
                        let elapsed = recorder.started.elapsed();
                        if elapsed >= steps.end() {
                            return;
                        }
                        // Workers beyond the step's concurrency wait for a later step.
                        if steps.value_at(elapsed) <= worker_idx {
                            let wake = recorder.started + steps.next_change(elapsed);
                            tokio::time::sleep_until(wake).await;
                            continue;
                        }
                        let idx = issued.fetch_add(1, Ordering::Relaxed);
                        if idx >= limits.requests_max {
                            return;
                        }
                        recorder.sent(None);
                        let intended = Instant::now();
                        let sample = send(idx).await;
                        recorder.record(intended, sample);
                    }
                });
            }
            while workers.join_next().await.is_some() {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{Steps, CONCURRENCY_MAX, RATE_PER_S_MAX};
    use crate::stats::{Outcome, PhaseReport};
    use std::time::Duration;

    // Whole milliseconds: tokio's timers have millisecond resolution.
    const STALL: Duration = Duration::from_secs(1);
    const SERVICE: Duration = Duration::from_millis(1);

    /// A server that answers in 1 ms, except that request 0 stalls it for 1 s;
    /// one request at a time (as one connection would).
    async fn stalling_server(load: Load, stall: Duration) -> PhaseReport {
        let recorder = Arc::new(Recorder::new(0));
        let server = Arc::new(tokio::sync::Mutex::new(()));
        let limits = Limits { requests_max: u64::MAX, in_flight_max: 1 };
        run(&load, limits, recorder.clone(), move |idx| {
            let server = server.clone();
            async move {
                let _busy = server.lock().await;
                tokio::time::sleep(if idx == 0 { stall } else { SERVICE }).await;
                let done = Instant::now();
                Some(Sample {
                    scenario: "plain",
                    outcome: Outcome::Ok,
                    first_token: None,
                    done,
                    cost: None,
                })
            }
        })
        .await;
        let recorder = Arc::into_inner(recorder).expect("every request task has finished");
        PhaseReport::new("test", recorder, 0)
    }

    // Time is paused: tokio advances it only when every task waits, so these runs are
    // exact and do not depend on the machine's speed.
    #[tokio::test(start_paused = true)]
    async fn open_loop_counts_the_stall_in_every_request_it_delayed() {
        let steps = Steps::try_new(vec![100], RATE_PER_S_MAX, None, Some(Duration::from_secs(10)));
        let report = stalling_server(Load::Open(steps.unwrap()), STALL).await;
        let latency = &report.tally.latency_us;
        assert_eq!(report.tally.n_ok, 1000);
        // The requests due during the stall waited for it: request k, due at 10·k ms,
        // is answered at 1000 + k ms, so k < 100 took over 100 ms. A tenth of all
        // requests is that slow, and the p90 shows it.
        let over_100_ms = latency.count_between(100_000, u64::MAX);
        assert!((95..=105).contains(&over_100_ms), "{over_100_ms} requests over 100 ms");
        assert!(latency.max() >= 1_000_000, "max {} µs", latency.max());
        let p90 = latency.value_at_quantile(0.9);
        assert!(p90 >= 50_000, "p90 {p90} µs");
        // The wait for the one connection shows as requests sent late.
        assert_eq!(report.tally.send_late_us.len(), 1000);
        assert!(report.tally.send_late_us.max() >= 900_000);
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_latency_is_the_service_time_when_nothing_waits() {
        let steps = Steps::try_new(vec![100], RATE_PER_S_MAX, None, Some(Duration::from_secs(1)));
        let report = stalling_server(Load::Open(steps.unwrap()), SERVICE).await;
        let latency = &report.tally.latency_us;
        assert_eq!(report.tally.n_ok, 100);
        // Each request leaves up to the timer's resolution early; its latency then counts
        // from when it left, so it is exactly the service time, never less.
        assert_eq!((latency.min(), latency.max()), (1000, 1000));
        assert_eq!(report.tally.send_late_us.max(), 1, "never late (1 µs is the floor)");
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_sees_the_stall_once() {
        let steps = Steps::try_new(vec![1], CONCURRENCY_MAX, None, Some(Duration::from_secs(10)));
        let report = stalling_server(Load::Closed(steps.unwrap()), STALL).await;
        let latency = &report.tally.latency_us;
        // Coordinated omission: the worker waited out the stall, so one sample shows it
        // and the requests it held back were never sent.
        assert_eq!(latency.count_between(100_000, u64::MAX), 1);
        assert!(report.tally.n_ok > 5_000, "{} requests", report.tally.n_ok);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_the_request_count_and_ramps_workers() {
        let steps = Steps::try_new(vec![1, 4], CONCURRENCY_MAX, None, Some(Duration::from_secs(2)));
        let load = Load::Closed(steps.unwrap());
        let recorder = Arc::new(Recorder::new(0));
        let limits = Limits { requests_max: 50, in_flight_max: 1 };
        let peak = Arc::new(AtomicU64::new(0));
        let in_flight = Arc::new(AtomicU64::new(0));
        let (peak_seen, in_flight_seen) = (peak.clone(), in_flight.clone());
        run(&load, limits, recorder.clone(), move |_| {
            let (peak, in_flight) = (peak_seen.clone(), in_flight_seen.clone());
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                let done = Instant::now();
                Some(Sample {
                    scenario: "plain",
                    outcome: Outcome::Ok,
                    first_token: None,
                    done,
                    cost: None,
                })
            }
        })
        .await;
        let report = PhaseReport::new("test", Arc::into_inner(recorder).unwrap(), 0);
        // 10 requests in the first second (one worker), then 4 at a time until 50.
        assert_eq!(report.tally.n_ok, 50);
        assert_eq!(peak.load(Ordering::SeqCst), 4);
        assert_eq!(report.elapsed, Duration::from_millis(2000));
    }
}
