//! The run's event trace: faults, starts, crashes and acknowledged outcomes, stamped with
//! simulated time. Its fingerprint shows a replay retraced the same run; its tail is
//! printed when a seed fails; `SIM_TRACE=1` prints it live.

use solrouter_ledger::Fnv1a;
use std::collections::VecDeque;
use std::hash::Hasher;
use std::sync::Mutex;

/// Events kept for the failure report; older ones only count towards the fingerprint.
const TRACE_TAIL_MAX: usize = 400;

pub struct Trace {
    verbose: bool,
    state: Mutex<TraceState>,
}

struct TraceState {
    tail: VecDeque<String>,
    fingerprint: Fnv1a,
    n_events: u64,
}

impl Trace {
    pub fn new(verbose: bool) -> Trace {
        let state =
            TraceState { tail: VecDeque::new(), fingerprint: Fnv1a::default(), n_events: 0 };
        Trace { verbose, state: Mutex::new(state) }
    }

    pub fn event(&self, now_ms: u64, what: String) {
        let line = format!("{now_ms:>7} ms  {what}");
        if self.verbose {
            eprintln!("{line}");
        }
        let mut state = self.state.lock().expect("trace lock poisoned");
        state.fingerprint.write(line.as_bytes());
        state.n_events += 1;
        if state.tail.len() == TRACE_TAIL_MAX {
            state.tail.pop_front();
        }
        state.tail.push_back(line);
    }

    /// A detail only worth seeing while replaying one seed (a failed attempt, say): printed
    /// with `SIM_TRACE=1`, neither kept nor hashed.
    pub fn detail(&self, now_ms: u64, what: String) {
        if self.verbose {
            eprintln!("{now_ms:>7} ms    {what}");
        }
    }

    /// A hash of every event so far, in order.
    pub fn fingerprint(&self) -> (u64, u64) {
        let state = self.state.lock().expect("trace lock poisoned");
        (state.n_events, state.fingerprint.finish())
    }

    pub fn tail(&self) -> Vec<String> {
        self.state.lock().expect("trace lock poisoned").tail.iter().cloned().collect()
    }
}
