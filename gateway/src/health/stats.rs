//! Live statistics of one endpoint over sliding windows: a ring of one-minute buckets
//! of atomic counters (answers, errors, time to first token, tokens and generation
//! time). Recording is a few relaxed atomic adds, no lock; a bucket is reused for a
//! new minute by whichever caller first sees it stale (a compare-and-swap on its
//! minute), which then clears its counts. A sample added by another caller between
//! that swap and the clearing is lost: these are routing hints, not accounts.

use std::sync::atomic::{AtomicU64, Ordering};

/// One bucket's span.
pub const BUCKET_MS: u64 = 60_000;
/// Buckets kept: the longest window, 30 minutes (`/endpoints`' `*_last_30m`).
pub const BUCKETS: usize = 30;
/// The window routing sorts by (`provider.sort`): recent enough to follow a host that
/// slows down, long enough to hold a few requests.
pub const ROUTING_WINDOW_BUCKETS: usize = 5;

#[derive(Debug, Default)]
struct Bucket {
    /// The minute (`now_ms / BUCKET_MS + 1`; 0: never used) the counts belong to.
    minute: AtomicU64,
    /// Attempts that ended: answered, or failed before answering.
    requests: AtomicU64,
    /// Failures that count against the endpoint's health (outages, timeouts), before
    /// or during an answer.
    errors: AtomicU64,
    /// Time to first token of the answered attempts (for a plain answer, its whole
    /// wait, since nothing arrives before it is complete).
    ttft_ms_sum: AtomicU64,
    answers: AtomicU64,
    /// Completion tokens and the time spent generating them, for tokens per second.
    tokens: AtomicU64,
    generation_ms: AtomicU64,
}

/// What an endpoint did over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub requests: u64,
    pub errors: u64,
    /// Mean time to first token; `None` without an answer in the window.
    pub ttft_ms: Option<u64>,
    /// Completion tokens per second of generation; `None` without tokens in the window.
    pub tokens_per_second: Option<u64>,
}

impl Snapshot {
    /// The share of requests that did not fail, in percent; `None` without requests.
    pub fn uptime_percent(&self) -> Option<f64> {
        let requests = self.requests.max(self.errors);
        (requests > 0).then(|| 100.0 * (requests - self.errors) as f64 / requests as f64)
    }
}

/// One endpoint's ring of buckets.
#[derive(Debug, Default)]
pub struct EndpointStats {
    buckets: [Bucket; BUCKETS],
}

impl EndpointStats {
    /// The bucket of `now_ms`, cleared first if it still holds an older minute.
    fn bucket(&self, now_ms: u64) -> &Bucket {
        let minute = now_ms / BUCKET_MS + 1;
        let bucket = &self.buckets[(minute % BUCKETS as u64) as usize];
        let seen = bucket.minute.load(Ordering::Acquire);
        if seen < minute
            && bucket
                .minute
                .compare_exchange(seen, minute, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            for counter in [
                &bucket.requests,
                &bucket.errors,
                &bucket.ttft_ms_sum,
                &bucket.answers,
                &bucket.tokens,
                &bucket.generation_ms,
            ] {
                counter.store(0, Ordering::Relaxed);
            }
        }
        bucket
    }

    /// An attempt answered, its first token `ttft_ms` after it was sent.
    pub fn record_answer(&self, now_ms: u64, ttft_ms: u64) {
        let bucket = self.bucket(now_ms);
        bucket.requests.fetch_add(1, Ordering::Relaxed);
        bucket.answers.fetch_add(1, Ordering::Relaxed);
        bucket.ttft_ms_sum.fetch_add(ttft_ms, Ordering::Relaxed);
    }

    /// An attempt failed before answering; `outage`: the endpoint's fault.
    pub fn record_failure(&self, now_ms: u64, outage: bool) {
        let bucket = self.bucket(now_ms);
        bucket.requests.fetch_add(1, Ordering::Relaxed);
        if outage {
            bucket.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An answer already counted broke off through the endpoint's fault.
    pub fn record_broken(&self, now_ms: u64) {
        self.bucket(now_ms).errors.fetch_add(1, Ordering::Relaxed);
    }

    /// An answer generated `tokens` completion tokens in `generation_ms` (at least 1).
    pub fn record_tokens(&self, now_ms: u64, tokens: u64, generation_ms: u64) {
        let bucket = self.bucket(now_ms);
        bucket.tokens.fetch_add(tokens, Ordering::Relaxed);
        bucket.generation_ms.fetch_add(generation_ms.max(1), Ordering::Relaxed);
    }

    /// The last `window_buckets` minutes up to `now_ms` (the current one included).
    pub fn snapshot(&self, now_ms: u64, window_buckets: usize) -> Snapshot {
        debug_assert!((1..=BUCKETS).contains(&window_buckets));
        let minute = now_ms / BUCKET_MS + 1;
        let oldest = minute.saturating_sub(window_buckets as u64 - 1).max(1);
        let (mut requests, mut errors, mut ttft_ms_sum, mut answers, mut tokens, mut gen_ms) =
            (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
        for bucket in &self.buckets {
            if !(oldest..=minute).contains(&bucket.minute.load(Ordering::Acquire)) {
                continue;
            }
            requests += bucket.requests.load(Ordering::Relaxed);
            errors += bucket.errors.load(Ordering::Relaxed);
            ttft_ms_sum += bucket.ttft_ms_sum.load(Ordering::Relaxed);
            answers += bucket.answers.load(Ordering::Relaxed);
            tokens += bucket.tokens.load(Ordering::Relaxed);
            gen_ms += bucket.generation_ms.load(Ordering::Relaxed);
        }
        Snapshot {
            requests,
            errors,
            ttft_ms: (answers > 0).then(|| ttft_ms_sum / answers),
            tokens_per_second: (gen_ms > 0 && tokens > 0)
                .then(|| (u128::from(tokens) * 1000 / u128::from(gen_ms)) as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_slide_over_minutes() {
        let stats = EndpointStats::default();
        assert_eq!(stats.snapshot(0, BUCKETS), Snapshot::default());
        stats.record_answer(1_000, 100);
        stats.record_answer(2_000, 300);
        stats.record_tokens(2_000, 100, 500);
        stats.record_failure(3_000, true);
        stats.record_failure(3_000, false);
        let now = stats.snapshot(59_999, 1);
        assert_eq!(
            now,
            Snapshot { requests: 4, errors: 1, ttft_ms: Some(200), tokens_per_second: Some(200) }
        );
        assert_eq!(now.uptime_percent(), Some(75.0));
        // Four minutes later the 5-minute window still holds it; the 1-minute one not.
        let later = 4 * BUCKET_MS + 1;
        assert_eq!(stats.snapshot(later, ROUTING_WINDOW_BUCKETS), now);
        assert_eq!(stats.snapshot(later, 1), Snapshot::default());
        // Past the window it is gone, and a bucket reused for a new minute starts empty.
        let next_lap = BUCKETS as u64 * BUCKET_MS + 1_000;
        stats.record_answer(next_lap, 50);
        let lapped = stats.snapshot(next_lap, BUCKETS);
        assert_eq!((lapped.requests, lapped.ttft_ms), (1, Some(50)));
        stats.record_broken(next_lap);
        assert_eq!(stats.snapshot(next_lap, 1).uptime_percent(), Some(0.0));
    }

    #[test]
    fn concurrent_recording_loses_nothing_within_a_minute() {
        let stats = EndpointStats::default();
        // The minute's first sample claims its bucket (a sample racing that is lost).
        stats.record_tokens(5_000, 0, 1);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        stats.record_answer(5_000, 10);
                        stats.record_tokens(5_000, 2, 1);
                    }
                });
            }
        });
        let snapshot = stats.snapshot(5_000, 1);
        assert_eq!((snapshot.requests, snapshot.ttft_ms), (4000, Some(10)));
        assert_eq!(snapshot.tokens_per_second, Some(8000 * 1000 / 4001));
    }
}
