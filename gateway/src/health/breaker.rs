//! A lock-free circuit breaker: one `AtomicU64` per upstream, read and updated with
//! compare-and-swap on every request, so the hot path never takes a lock.
//!
//! This file is compiled twice: into the gateway with `std` atomics, and into the loom
//! model test (`tests/loom_breaker.rs`) with loom's, through the sibling `atomic` module.

use super::atomic::{AtomicU64, Ordering};

/// Consecutive failures that open a closed breaker.
pub const FAILURES_TO_OPEN: u64 = 5;
/// How long an open breaker refuses traffic before it lets one probe through; also how
/// long a probe may stay unanswered before another is allowed.
pub const COOLDOWN_MS: u64 = 10_000;

// Packing: bits 0-1 state, bits 2-15 consecutive failures (saturating), bits 16-63 the
// time in ms (since the caller's epoch) the breaker opened or the probe started.
const STATE_BITS: u64 = 0b11;
const FAILURES_SHIFT: u32 = 2;
const FAILURES_MAX: u64 = (1 << 14) - 1;
const TIME_SHIFT: u32 = 16;
const TIME_MS_MAX: u64 = (1 << 48) - 1;
const _: () = assert!(FAILURES_TO_OPEN <= FAILURES_MAX);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Traffic flows; failures are counted.
    Closed,
    /// Traffic is refused until the cooldown has passed.
    Open,
    /// One probe is in flight; its outcome closes or reopens the breaker.
    HalfOpen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Word {
    state: State,
    failures: u64,
    since_ms: u64,
}

impl Word {
    fn unpack(bits: u64) -> Word {
        let state = match bits & STATE_BITS {
            0 => State::Closed,
            1 => State::Open,
            _ => State::HalfOpen,
        };
        let failures = (bits >> FAILURES_SHIFT) & FAILURES_MAX;
        Word { state, failures, since_ms: bits >> TIME_SHIFT }
    }

    fn pack(self) -> u64 {
        let state = match self.state {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        };
        debug_assert!(self.failures <= FAILURES_MAX);
        state | self.failures << FAILURES_SHIFT | self.since_ms.min(TIME_MS_MAX) << TIME_SHIFT
    }
}

/// What [`CircuitBreaker::admit`] decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send it.
    Pass,
    /// Send it as the single probe of a recovering upstream.
    Probe,
    /// Skip this upstream for now.
    Refuse,
}

#[derive(Debug, Default)]
pub struct CircuitBreaker {
    word: AtomicU64,
}

impl CircuitBreaker {
    pub fn new() -> CircuitBreaker {
        CircuitBreaker {
            word: AtomicU64::new(Word { state: State::Closed, failures: 0, since_ms: 0 }.pack()),
        }
    }

    pub fn state(&self) -> State {
        Word::unpack(self.word.load(Ordering::Acquire)).state
    }

    /// Whether [`CircuitBreaker::admit`] would let a request through at `now_ms` (closed,
    /// or a probe is due), without claiming the probe: what routing plans by.
    pub fn passable(&self, now_ms: u64) -> bool {
        let word = Word::unpack(self.word.load(Ordering::Acquire));
        word.state == State::Closed || now_ms.saturating_sub(word.since_ms) >= COOLDOWN_MS
    }

    /// Decides whether a request may go to this upstream at `now_ms`. Of many concurrent
    /// callers after a cooldown, exactly one gets [`Admission::Probe`].
    pub fn admit(&self, now_ms: u64) -> Admission {
        let mut bits = self.word.load(Ordering::Acquire);
        loop {
            let word = Word::unpack(bits);
            let due = now_ms.saturating_sub(word.since_ms) >= COOLDOWN_MS;
            let next = match word.state {
                State::Closed => return Admission::Pass,
                State::Open | State::HalfOpen if !due => return Admission::Refuse,
                // Cooldown over, or the last probe never answered: one new probe.
                State::Open | State::HalfOpen => {
                    Word { state: State::HalfOpen, since_ms: now_ms, ..word }
                }
            };
            match self.word.compare_exchange_weak(
                bits,
                next.pack(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Admission::Probe,
                Err(current) => bits = current,
            }
        }
    }

    /// The upstream answered well: close the breaker.
    pub fn record_success(&self) {
        let closed = Word { state: State::Closed, failures: 0, since_ms: 0 }.pack();
        self.word.store(closed, Ordering::Release);
    }

    /// The upstream failed in a way that says it is unhealthy (outage, overload, timeout).
    pub fn record_failure(&self, now_ms: u64) {
        let mut bits = self.word.load(Ordering::Acquire);
        loop {
            let word = Word::unpack(bits);
            let failures = (word.failures + 1).min(FAILURES_MAX);
            let next = match word.state {
                State::Closed if failures >= FAILURES_TO_OPEN => {
                    Word { state: State::Open, failures, since_ms: now_ms }
                }
                State::Closed => Word { failures, ..word },
                // A failed probe reopens for a full cooldown.
                State::HalfOpen => Word { state: State::Open, failures, since_ms: now_ms },
                // Late failures of requests admitted before opening change nothing.
                State::Open => return,
            };
            match self.word.compare_exchange_weak(
                bits,
                next.pack(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(current) => bits = current,
            }
        }
    }
}
