//! When requests are due. Open loop: a constant arrival rate per step, each request
//! given the instant it is *intended* to be sent, so a slow answer cannot delay the
//! measurement of the requests behind it (no coordinated omission). Closed loop: a number
//! of workers per step, each sending its next request when the last one is answered.
//! Steps of equal length make ramps; the last step's value holds until the run ends.

use std::time::Duration;

/// Highest arrival rate, in requests per second, and highest concurrency: bounds that
/// keep a mistyped flag from turning into an unbounded flood.
pub const RATE_PER_S_MAX: u32 = 1_000_000;
pub const CONCURRENCY_MAX: u32 = 10_000;
/// Longest run.
pub const DURATION_MAX: Duration = Duration::from_secs(24 * 60 * 60);

/// How the load is offered.
#[derive(Clone, Debug)]
pub enum Load {
    /// Requests per second, per step.
    Open(Steps),
    /// Requests in flight, per step.
    Closed(Steps),
}

/// A value per step of `step` each, from the start of the run to `end`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Steps {
    values: Vec<u32>,
    step: Duration,
    end: Duration,
}

impl Steps {
    /// `values` per step; `step` defaults to an equal share of `duration`, and `duration`
    /// to the steps' total length.
    pub fn try_new(
        values: Vec<u32>,
        value_max: u32,
        step: Option<Duration>,
        duration: Option<Duration>,
    ) -> Result<Steps, String> {
        if values.is_empty() || values.iter().any(|value| *value == 0 || *value > value_max) {
            return Err(format!("every step's value must be 1 to {value_max}"));
        }
        let n_steps = values.len() as u32;
        let (step, end) = match (step, duration) {
            (Some(step), Some(end)) => (step, end),
            (Some(step), None) => (step, step * n_steps),
            (None, Some(end)) => (end / n_steps, end),
            (None, None) => return Err("give a duration or a step length".into()),
        };
        if step.is_zero() || end.is_zero() || end > DURATION_MAX {
            return Err(format!(
                "steps and the run must last more than 0 and at most {DURATION_MAX:?}"
            ));
        }
        Ok(Steps { values, step, end })
    }

    /// The value in force `elapsed` into the run.
    pub fn value_at(&self, elapsed: Duration) -> u32 {
        let step_idx = (elapsed.as_nanos() / self.step.as_nanos()) as usize;
        self.values[step_idx.min(self.values.len() - 1)]
    }

    /// The largest value of any step.
    pub fn value_max(&self) -> u32 {
        self.values.iter().copied().max().expect("steps are never empty")
    }

    /// When the step after the one in force at `elapsed` starts (the run's end after the
    /// last step).
    pub fn next_change(&self, elapsed: Duration) -> Duration {
        let step_idx = elapsed.as_nanos() / self.step.as_nanos();
        if step_idx + 1 >= self.values.len() as u128 {
            return self.end;
        }
        (self.step * (step_idx as u32 + 1)).min(self.end)
    }

    pub fn end(&self) -> Duration {
        self.end
    }

    pub fn values(&self) -> &[u32] {
        &self.values
    }

    pub fn step(&self) -> Duration {
        self.step
    }

    /// The intended send times of an open-loop run, as offsets from its start: request
    /// `i` of a step at rate `r` is due `i / r` seconds into the step.
    pub fn arrivals(&self) -> Arrivals<'_> {
        Arrivals { steps: self, step_idx: 0, n_in_step: 0 }
    }
}

/// Iterator over the intended send times of [`Steps::arrivals`].
pub struct Arrivals<'a> {
    steps: &'a Steps,
    step_idx: u32,
    n_in_step: u64,
}

impl Iterator for Arrivals<'_> {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let Steps { values, step, end } = self.steps;
        loop {
            let step_start = *step * self.step_idx;
            let rate = values.get(self.step_idx as usize)?;
            if step_start >= *end {
                return None;
            }
            // The last step lasts until the end of the run.
            let is_last = self.step_idx as usize + 1 == values.len();
            let step_end = if is_last { *end } else { (step_start + *step).min(*end) };
            let rate = u128::from(*rate);
            // Computed from the index, not by adding intervals, so no rounding accumulates.
            let offset_ns = u128::from(self.n_in_step) * 1_000_000_000 / rate;
            let due = step_start + Duration::from_nanos(offset_ns as u64);
            if due < step_end {
                self.n_in_step += 1;
                return Some(due);
            }
            self.step_idx += 1;
            self.n_in_step = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn constant_rate_spaces_arrivals_evenly() {
        let steps = Steps::try_new(vec![1000], RATE_PER_S_MAX, None, Some(s(2))).unwrap();
        let due: Vec<Duration> = steps.arrivals().collect();
        assert_eq!(due.len(), 2000);
        assert_eq!(due[0], Duration::ZERO);
        assert_eq!(due[1], ms(1));
        assert_eq!(due[1999], ms(1999));
        assert!(due.windows(2).all(|pair| pair[1] - pair[0] == ms(1)));
    }

    #[test]
    fn ramp_steps_up_the_rate() {
        let steps = Steps::try_new(vec![10, 20, 40], RATE_PER_S_MAX, Some(s(1)), None).unwrap();
        assert_eq!(steps.end(), s(3));
        let due: Vec<Duration> = steps.arrivals().collect();
        assert_eq!(due.len(), 70);
        let in_second =
            |second: u64| due.iter().filter(|at| **at >= s(second) && **at < s(second + 1)).count();
        assert_eq!((in_second(0), in_second(1), in_second(2)), (10, 20, 40));
        assert_eq!(due[10], s(1));
        assert_eq!(due[11], s(1) + ms(50));
        assert!(due.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn last_step_holds_until_the_end_and_rates_need_not_divide() {
        let steps = Steps::try_new(vec![3, 7], RATE_PER_S_MAX, Some(s(1)), Some(s(3))).unwrap();
        assert_eq!(steps.arrivals().count(), 3 + 7 + 7);
        assert_eq!(steps.value_at(ms(500)), 3);
        assert_eq!(steps.value_at(s(2) + ms(999)), 7);
        assert_eq!(steps.value_at(s(10)), 7);
        assert_eq!(steps.next_change(ms(10)), s(1));
        assert_eq!(steps.next_change(ms(1500)), s(3));
    }

    #[test]
    fn refuses_empty_zero_and_oversized_steps() {
        let bad = |values: Vec<u32>, step, duration| {
            Steps::try_new(values, CONCURRENCY_MAX, step, duration).is_err()
        };
        assert!(bad(vec![], None, Some(s(1))));
        assert!(bad(vec![0], None, Some(s(1))));
        assert!(bad(vec![CONCURRENCY_MAX + 1], None, Some(s(1))));
        assert!(bad(vec![1], None, None));
        assert!(bad(vec![1], None, Some(Duration::ZERO)));
        assert!(bad(vec![1], None, Some(DURATION_MAX + s(1))));
    }
}
