//! What a phase measured: HDR histograms of latency (from each request's intended send
//! time) and of time to first token, outcomes by scenario, errors by kind and the cost
//! the clients saw per account; the live progress line, and the phase's report.

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Longest latency a histogram holds, in microseconds (longer ones are clamped to it):
/// an hour, beyond any request timeout.
const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Significant decimal digits the histograms keep: values within 0.1 %.
const SIGNIFICANT_DIGITS: u8 = 3;
/// The quantiles reported, with their labels.
pub const QUANTILES: [(&str, f64); 4] =
    [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p99.9", 0.999)];

/// How one request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A complete answer (a stream ended with `[DONE]`).
    Ok,
    /// The 402 the scenario asked for (an account without enough credit).
    Refused,
    /// Anything else, by kind: `status 503`, `transport: timeout`, `stream cut`, …
    Error(String),
}

/// One request's result, as the sender saw it.
#[derive(Clone, Debug)]
pub struct Sample {
    pub scenario: &'static str,
    pub outcome: Outcome,
    /// When the first event of a stream arrived.
    pub first_token: Option<Instant>,
    pub done: Instant,
    /// The test account charged and the `usage.cost` the client saw, in pico-USD.
    pub cost: Option<(usize, u128)>,
}

/// Everything recorded during a phase.
pub struct Tally {
    pub latency_us: Histogram<u64>,
    /// The same since the progress line last read it: a stall shows in its second, not
    /// diluted into the whole run's quantiles.
    latency_us_interval: Histogram<u64>,
    pub ttft_us: Histogram<u64>,
    /// Open loop: how late each request was handed to the sender.
    pub send_late_us: Histogram<u64>,
    /// Requests dispatched, and those of them the phase skipped without sending.
    pub n_sent: u64,
    pub n_skipped: u64,
    pub n_done: u64,
    pub n_ok: u64,
    pub n_refused: u64,
    pub n_errors: u64,
    pub errors: BTreeMap<String, u64>,
    pub by_scenario: BTreeMap<&'static str, u64>,
    /// `usage.cost` seen per test account, in pico-USD.
    pub cost_by_account: Vec<u128>,
    pub last_done: Option<Instant>,
}

/// A phase's shared tally, written by every request task.
pub struct Recorder {
    tally: Mutex<Tally>,
    pub started: Instant,
}

impl Recorder {
    pub fn new(n_accounts: usize) -> Recorder {
        let histogram = || {
            Histogram::new_with_bounds(1, LATENCY_US_MAX, SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid")
        };
        let tally = Tally {
            latency_us: histogram(),
            latency_us_interval: histogram(),
            ttft_us: histogram(),
            send_late_us: histogram(),
            n_sent: 0,
            n_skipped: 0,
            n_done: 0,
            n_ok: 0,
            n_refused: 0,
            n_errors: 0,
            errors: BTreeMap::new(),
            by_scenario: BTreeMap::new(),
            cost_by_account: vec![0; n_accounts],
            last_done: None,
        };
        Recorder { tally: Mutex::new(tally), started: Instant::now() }
    }

    /// Counts a request handed to the sender `late` after it was due (open loop: a
    /// harness that cannot keep up shows here, not as a lower rate).
    pub fn sent(&self, late: Option<Duration>) {
        let mut tally = self.lock();
        tally.n_sent += 1;
        if let Some(late) = late {
            tally.send_late_us.saturating_record(micros(late));
        }
    }

    /// Records a request whose latency and time to first token count from `start`: in
    /// open loop when it was due, not when it could actually be sent. `None`: the phase
    /// skipped it.
    pub fn record(&self, start: Instant, sample: Option<Sample>) {
        let mut tally = self.lock();
        let Some(sample) = sample else {
            tally.n_skipped += 1;
            return;
        };
        tally.n_done += 1;
        tally.last_done = Some(tally.last_done.map_or(sample.done, |last| last.max(sample.done)));
        *tally.by_scenario.entry(sample.scenario).or_default() += 1;
        if let Some((account_idx, cost)) = sample.cost {
            tally.cost_by_account[account_idx] += cost;
        }
        match sample.outcome {
            Outcome::Ok => {
                tally.n_ok += 1;
                let latency = micros(sample.done - start);
                tally.latency_us.saturating_record(latency);
                tally.latency_us_interval.saturating_record(latency);
                if let Some(first_token) = sample.first_token {
                    tally.ttft_us.saturating_record(micros(first_token - start));
                }
            }
            Outcome::Refused => tally.n_refused += 1,
            Outcome::Error(kind) => {
                tally.n_errors += 1;
                *tally.errors.entry(kind).or_default() += 1;
            }
        }
    }

    /// What the progress line shows; starts the next interval.
    pub fn progress(&self) -> Progress {
        let mut tally = self.lock();
        let progress = Progress {
            sent: tally.n_sent - tally.n_skipped,
            done: tally.n_done,
            errors: tally.n_errors,
            p99_ms: ms(tally.latency_us.value_at_quantile(0.99)),
            interval_p99_ms: ms(tally.latency_us_interval.value_at_quantile(0.99)),
            interval_max_ms: ms(tally.latency_us_interval.max()),
        };
        tally.latency_us_interval.reset();
        progress
    }

    pub fn finish(self) -> Tally {
        self.tally.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tally> {
        // A task that panicked while holding the lock left a consistent tally (each
        // update is a few additions), so the run goes on with it.
        self.tally.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Counts so far, and the latency of the answers since the previous [`Recorder::progress`].
pub struct Progress {
    pub sent: u64,
    pub done: u64,
    pub errors: u64,
    /// Over the whole phase so far.
    pub p99_ms: f64,
    pub interval_p99_ms: f64,
    pub interval_max_ms: f64,
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// A histogram's microseconds in milliseconds.
fn ms(micros: u64) -> f64 {
    micros as f64 / 1e3
}

/// Prints a progress line on stderr every second until stopped.
pub fn progress_line(phase: &'static str, recorder: std::sync::Arc<Recorder>) -> ProgressTask {
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        ticks.tick().await;
        let mut done_before = 0;
        loop {
            ticks.tick().await;
            let Progress { sent, done, errors, p99_ms, interval_p99_ms, interval_max_ms } =
                recorder.progress();
            eprintln!(
                "{phase:>7} {:>4}s  rate {:>6}/s  sent {sent}  done {done}  errors {errors}  \
                 p99 {p99_ms:.2} ms  (this second: p99 {interval_p99_ms:.2} ms, max \
                 {interval_max_ms:.2} ms)",
                recorder.started.elapsed().as_secs(),
                done - done_before,
            );
            done_before = done;
        }
    });
    ProgressTask(task)
}

/// The progress line's task.
pub struct ProgressTask(tokio::task::JoinHandle<()>);

impl ProgressTask {
    /// Stops the task and waits until it is gone (with its handle on the recorder).
    pub async fn stop(self) {
        self.0.abort();
        let _ = self.0.await;
    }
}

/// A finished phase.
pub struct PhaseReport {
    pub name: &'static str,
    pub tally: Tally,
    /// From the first intended send to the last answer.
    pub elapsed: Duration,
    /// Connections the harness opened in the phase.
    pub connections_opened: u64,
}

impl PhaseReport {
    pub fn new(name: &'static str, recorder: Recorder, connections_opened: u64) -> PhaseReport {
        let started = recorder.started;
        let tally = recorder.finish();
        let elapsed = tally.last_done.map_or(Duration::ZERO, |last| last - started);
        PhaseReport { name, tally, elapsed, connections_opened }
    }

    /// Answered requests per second (complete answers and expected refusals).
    pub fn throughput_per_s(&self) -> f64 {
        let answered = (self.tally.n_ok + self.tally.n_refused) as f64;
        answered / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn to_json(&self) -> Value {
        let tally = &self.tally;
        json!({
            "sent": tally.n_sent - tally.n_skipped,
            "skipped": tally.n_skipped,
            "ok": tally.n_ok,
            "refused_402": tally.n_refused,
            "errors": tally.n_errors,
            "errors_by_kind": tally.errors,
            "by_scenario": tally.by_scenario,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "throughput_per_s": self.throughput_per_s(),
            "connections_opened": self.connections_opened,
            "latency_ms": quantiles_json(&tally.latency_us),
            "ttft_ms": quantiles_json(&tally.ttft_us),
            "send_late_ms": quantiles_json(&tally.send_late_us),
        })
    }

    pub fn print(&self) {
        let tally = &self.tally;
        println!(
            "{}: sent {}  ok {}  refused (402, expected) {}  errors {}  in {:.2} s  \
             throughput {:.0}/s  connections opened {}",
            self.name,
            tally.n_sent - tally.n_skipped,
            tally.n_ok,
            tally.n_refused,
            tally.n_errors,
            self.elapsed.as_secs_f64(),
            self.throughput_per_s(),
            self.connections_opened
        );
        for (kind, n) in &tally.errors {
            println!("  error {kind}: {n}");
        }
        println!("  latency ms        {}", quantiles_line(&tally.latency_us));
        if !tally.ttft_us.is_empty() {
            println!("  first token ms    {}", quantiles_line(&tally.ttft_us));
        }
        if !tally.send_late_us.is_empty() {
            // Counted in the latencies above; large values mean the in-flight limit or
            // the harness itself held requests back.
            println!("  sent late by ms   {}", quantiles_line(&tally.send_late_us));
        }
    }
}

/// Each reported quantile and the maximum, in milliseconds.
pub fn quantiles_ms(histogram: &Histogram<u64>) -> Vec<(&'static str, f64)> {
    let mut quantiles: Vec<(&str, f64)> = QUANTILES
        .iter()
        .map(|(label, quantile)| (*label, ms(histogram.value_at_quantile(*quantile))))
        .collect();
    quantiles.push(("max", ms(histogram.max())));
    quantiles
}

fn quantiles_json(histogram: &Histogram<u64>) -> Value {
    let mut object: serde_json::Map<String, Value> =
        quantiles_ms(histogram).into_iter().map(|(label, ms)| (label.into(), json!(ms))).collect();
    object.insert("count".into(), json!(histogram.len()));
    object.insert("mean".into(), json!(histogram.mean() / 1e3));
    Value::Object(object)
}

fn quantiles_line(histogram: &Histogram<u64>) -> String {
    let parts = quantiles_ms(histogram).into_iter().map(|(label, ms)| format!("{label} {ms:.3}"));
    parts.collect::<Vec<_>>().join("  ")
}

/// Through the gateway minus straight to the upstream, per quantile, in milliseconds.
pub fn overhead_ms(gateway: &PhaseReport, direct: &PhaseReport) -> Vec<(&'static str, f64)> {
    let through = quantiles_ms(&gateway.tally.latency_us);
    let straight = quantiles_ms(&direct.tally.latency_us);
    through.iter().zip(&straight).map(|((label, via), (_, mock))| (*label, via - mock)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(recorder: &Recorder, latency_ms: u64) {
        let start = Instant::now();
        let done = start + Duration::from_millis(latency_ms);
        let sample =
            Sample { scenario: "plain", outcome: Outcome::Ok, first_token: None, done, cost: None };
        recorder.sent(None);
        recorder.record(start, Some(sample));
    }

    /// A slow second shows in the progress line's interval in full, and only there: the
    /// next interval starts empty, while the phase's p99 keeps counting everything.
    #[test]
    fn the_progress_interval_shows_a_stall_and_then_starts_afresh() {
        let recorder = Recorder::new(1);
        for _ in 0..99 {
            answered(&recorder, 1);
        }
        let first = recorder.progress();
        assert_eq!((first.sent, first.done, first.errors), (99, 99, 0));
        assert_eq!(first.interval_max_ms.round(), 1.0);

        for _ in 0..5 {
            answered(&recorder, 400);
        }
        let stalled = recorder.progress();
        // Within the histograms' 0.1 %.
        assert_eq!(stalled.interval_p99_ms.round(), 400.0);
        assert_eq!(stalled.interval_max_ms.round(), 400.0);
        assert_eq!(stalled.p99_ms.round(), 400.0, "5 of 104 answers were slow");

        let quiet = recorder.progress();
        assert_eq!((quiet.interval_p99_ms, quiet.interval_max_ms), (0.0, 0.0));
        assert_eq!(quiet.done, 104);
    }
}
