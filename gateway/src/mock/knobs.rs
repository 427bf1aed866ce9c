//! Server-wide knobs: timing every answer shares and random faults drawn per request
//! from a seeded generator, so an incident rehearsal replays.

use http::StatusCode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// The mock model `echo`'s context length in words: the catalogue's `mock/echo`.
pub const CONTEXT_WORDS_DEFAULT: u64 = 32_768;
/// The fastest `tokens_per_second` accepted: a microsecond per event is already below
/// what timers resolve.
pub const TOKENS_PER_SECOND_MAX: u32 = 1_000_000;

/// The mock's server-wide settings, as `solrouter mock-upstream` flags set them. The
/// default is a fast echo: no delay and no fault.
#[derive(Debug, Clone, PartialEq)]
pub struct MockConfig {
    /// Before the response head of every answer.
    pub latency: Duration,
    /// After the head, before the first event of a stream; before the head of a plain
    /// answer, which arrives when it is complete.
    pub ttft: Duration,
    /// Events per second after the first (0: unpaced). A plain answer waits as long as
    /// its stream would have taken.
    pub tokens_per_second: u32,
    /// The share of requests answered with each error status.
    pub error_rates: Vec<(StatusCode, f64)>,
    /// The share of answers cut abruptly: a stream after a random number of events, a
    /// plain body after half of it.
    pub cut_rate: f64,
    /// The share of requests read and never answered.
    pub hang_rate: f64,
    /// The context length of the model `echo`, in words: longer prompts are refused.
    pub context_words: u64,
    /// Answer every model name but `unavailable` as `echo`, so a real provider's base URL
    /// can point at the mock and its catalogue models (`claude-sonnet-4-…`) be served.
    pub echo_any_model: bool,
    /// Seeds the random faults: request number `n` draws from `seed` and `n` alone.
    pub seed: u64,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            latency: Duration::ZERO,
            ttft: Duration::ZERO,
            tokens_per_second: 0,
            error_rates: Vec::new(),
            cut_rate: 0.0,
            hang_rate: 0.0,
            context_words: CONTEXT_WORDS_DEFAULT,
            echo_any_model: false,
            seed: 0,
        }
    }
}

/// A configuration that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mock-upstream: {0}")]
pub struct KnobError(pub String);

/// A validated [`MockConfig`].
#[derive(Debug, Clone, Default)]
pub struct Knobs {
    config: MockConfig,
}

/// What the random draw decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fate {
    Answer,
    Error(StatusCode),
    Hang,
    /// Cut the answer; the value picks where, uniform over the possible points.
    Cut(u64),
}

impl Knobs {
    pub fn try_new(config: MockConfig) -> Result<Knobs, KnobError> {
        let rate = |name: &str, rate: f64| {
            if (0.0..=1.0).contains(&rate) {
                Ok(rate)
            } else {
                Err(KnobError(format!("{name} must lie between 0 and 1, not {rate}")))
            }
        };
        let mut total =
            rate("--cut-rate", config.cut_rate)? + rate("--hang-rate", config.hang_rate)?;
        for (status_idx, (status, share)) in config.error_rates.iter().enumerate() {
            total += rate(&format!("--error-rate {status}"), *share)?;
            if !(status.is_client_error() || status.is_server_error()) {
                return Err(KnobError(format!("--error-rate: {status} is no error status")));
            }
            if config.error_rates[..status_idx].iter().any(|(earlier, _)| earlier == status) {
                return Err(KnobError(format!("--error-rate: {status} given twice")));
            }
        }
        if total > 1.0 {
            return Err(KnobError(format!("the fault rates add up to {total}, above 1")));
        }
        if config.context_words == 0 {
            return Err(KnobError("--context-words must be at least 1".to_owned()));
        }
        if config.tokens_per_second > TOKENS_PER_SECOND_MAX {
            return Err(KnobError(format!(
                "--tokens-per-second must be at most {TOKENS_PER_SECOND_MAX}"
            )));
        }
        Ok(Knobs { config })
    }

    pub fn config(&self) -> &MockConfig {
        &self.config
    }

    /// Whether any fault is drawn at random; when none is, no request draws.
    pub(super) fn draws(&self) -> bool {
        self.config.cut_rate > 0.0
            || self.config.hang_rate > 0.0
            || !self.config.error_rates.is_empty()
    }

    /// The fate of request number `request_idx`: one uniform draw walks the errors,
    /// then hang, then cut.
    pub(super) fn draw(&self, request_idx: u64) -> Fate {
        let mut rng = StdRng::seed_from_u64(
            self.config.seed ^ request_idx.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let draw: f64 = rng.gen();
        let mut below = 0.0;
        for (status, share) in &self.config.error_rates {
            below += share;
            if draw < below {
                return Fate::Error(*status);
            }
        }
        below += self.config.hang_rate;
        if draw < below {
            return Fate::Hang;
        }
        below += self.config.cut_rate;
        if draw < below {
            return Fate::Cut(rng.gen());
        }
        Fate::Answer
    }

    /// The delay between events of a stream.
    pub(super) fn event_interval(&self) -> Duration {
        match self.config.tokens_per_second {
            0 => Duration::ZERO,
            rate => Duration::from_secs(1) / rate,
        }
    }
}

/// Parses `--error-rate`: `503=0.01,429=0.02`.
pub fn parse_error_rates(text: &str) -> Result<Vec<(StatusCode, f64)>, KnobError> {
    let fail =
        |entry: &str| KnobError(format!("--error-rate: expected STATUS=SHARE, not `{entry}`"));
    text.split(',')
        .filter(|entry| !entry.trim().is_empty())
        .map(|entry| {
            let (status, share) = entry.trim().split_once('=').ok_or_else(|| fail(entry))?;
            let status =
                status.parse::<u16>().ok().and_then(|code| StatusCode::from_u16(code).ok());
            let share = share.parse::<f64>().ok();
            match (status, share) {
                (Some(status), Some(share)) => Ok((status, share)),
                _ => Err(fail(entry)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_rates_parse() {
        let rates = parse_error_rates("503=0.01, 429=0.02").unwrap();
        assert_eq!(
            rates,
            vec![(StatusCode::SERVICE_UNAVAILABLE, 0.01), (StatusCode::TOO_MANY_REQUESTS, 0.02)]
        );
        assert_eq!(parse_error_rates("").unwrap(), vec![]);
        assert!(parse_error_rates("503").is_err());
        assert!(parse_error_rates("abc=0.1").is_err());
    }

    #[test]
    fn invalid_configurations_are_refused() {
        let check = |config: MockConfig, expected: &str| {
            let error = Knobs::try_new(config).unwrap_err();
            assert!(error.0.contains(expected), "{error}");
        };
        let base = MockConfig::default();
        check(MockConfig { cut_rate: 1.5, ..base.clone() }, "between 0 and 1");
        check(MockConfig { cut_rate: 0.6, hang_rate: 0.6, ..base.clone() }, "above 1");
        check(
            MockConfig { error_rates: vec![(StatusCode::OK, 0.1)], ..base.clone() },
            "no error status",
        );
        let twice = vec![(StatusCode::BAD_GATEWAY, 0.1), (StatusCode::BAD_GATEWAY, 0.1)];
        check(MockConfig { error_rates: twice, ..base.clone() }, "twice");
        check(MockConfig { context_words: 0, ..base }, "context-words");
    }

    #[test]
    fn draws_follow_the_rates_and_replay() {
        let config = MockConfig {
            error_rates: vec![(StatusCode::SERVICE_UNAVAILABLE, 0.25)],
            hang_rate: 0.25,
            cut_rate: 0.25,
            seed: 7,
            ..MockConfig::default()
        };
        let knobs = Knobs::try_new(config).unwrap();
        let fates: Vec<Fate> = (0..4000).map(|request_idx| knobs.draw(request_idx)).collect();
        let share = |wanted: fn(&Fate) -> bool| fates.iter().filter(|fate| wanted(fate)).count();
        for count in [
            share(|fate| matches!(fate, Fate::Error(_))),
            share(|fate| matches!(fate, Fate::Hang)),
            share(|fate| matches!(fate, Fate::Cut(_))),
            share(|fate| matches!(fate, Fate::Answer)),
        ] {
            assert!((850..1150).contains(&count), "{count} of 4000, expected about 1000");
        }
        assert_eq!(fates, (0..4000).map(|request_idx| knobs.draw(request_idx)).collect::<Vec<_>>());
        assert!(!Knobs::default().draws());
    }
}
