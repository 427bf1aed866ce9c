//! The scenario mix: what each request is (plain, streamed, a fallback, one that must
//! be refused with a 402, a large prompt), drawn by weight, and which account and key it
//! uses (one hot account or many, several keys each). Every choice derives from the
//! seed and the request's number, so both phases of a run send the same sequence.

use bytes::Bytes;
use rand::distributions::{Distribution, WeightedIndex};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// Events the upstream sends before it cuts a `cut` stream: enough for the first to
/// reach the client, so the gateway can no longer fall back.
const CUT_AFTER_EVENTS: u32 = 2;

/// The scenarios, as named in `--mix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A whole answer.
    Plain,
    /// An SSE stream.
    Stream,
    /// `models: ["mock/unavailable", <model>]`: the first candidate answers 503, the
    /// gateway falls back.
    Fallback,
    /// From an account whose credit cannot cover the hold: the gateway must answer 402
    /// without calling the provider.
    Broke,
    /// A prompt of `--large-prompt-words` words.
    Large,
    /// A stream the upstream mock cuts after two events (its `cut_after` directive): the
    /// gateway must end it with an error event that still carries the cost. Reported as
    /// a `stream cut` error, on purpose.
    Cut,
}

impl Kind {
    pub const ALL: [Kind; 6] =
        [Kind::Plain, Kind::Stream, Kind::Fallback, Kind::Broke, Kind::Large, Kind::Cut];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Plain => "plain",
            Kind::Stream => "stream",
            Kind::Fallback => "fallback",
            Kind::Broke => "broke",
            Kind::Large => "large",
            Kind::Cut => "cut",
        }
    }
}

/// What the bodies are made of.
#[derive(Clone, Debug)]
pub struct BodySpec {
    /// The model through the gateway, e.g. `mock/echo`.
    pub model: String,
    pub prompt_words: usize,
    pub large_prompt_words: usize,
    pub max_tokens: u64,
}

/// One scenario with its bodies, built once.
pub struct Scenario {
    pub kind: Kind,
    pub stream: bool,
    /// The body sent to the gateway.
    pub gateway_body: Bytes,
    /// The same request as the upstream receives it (model without the provider
    /// prefix); `None` when the gateway never forwards it (a 402).
    pub direct_body: Option<Bytes>,
}

/// The weighted scenarios and how requests spread over accounts and keys.
pub struct Mix {
    scenarios: Vec<Scenario>,
    weights: WeightedIndex<u32>,
    seed: u64,
    n_accounts: usize,
    n_keys: usize,
    hot_share: f64,
}

/// What request number `idx` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    pub scenario_idx: usize,
    /// Index among the funded accounts (the broke account is not among them).
    pub account_idx: usize,
    pub key_idx: usize,
}

impl Mix {
    /// `weights` as given to `--mix`: `plain=80,stream=15,broke=5`.
    pub fn try_new(
        weights: &str,
        body: &BodySpec,
        seed: u64,
        (n_accounts, n_keys): (usize, usize),
        hot_share: f64,
    ) -> Result<Mix, String> {
        if n_accounts == 0 || n_keys == 0 || !(0.0..=1.0).contains(&hot_share) {
            return Err("accounts and keys must be at least 1, the hot share 0 to 1".into());
        }
        let mut scenarios = Vec::new();
        let mut scenario_weights = Vec::new();
        for part in weights.split(',').map(str::trim).filter(|part| !part.is_empty()) {
            let (name, weight) = part.split_once('=').unwrap_or((part, "1"));
            let kind =
                Kind::ALL.into_iter().find(|kind| kind.name() == name.trim()).ok_or_else(|| {
                    format!(
                        "unknown scenario {name:?} (plain, stream, fallback, broke, large, cut)"
                    )
                })?;
            let weight: u32 =
                weight.trim().parse().map_err(|_| format!("bad weight in {part:?}"))?;
            if scenarios.iter().any(|scenario: &Scenario| scenario.kind == kind) {
                return Err(format!("scenario {name:?} named twice"));
            }
            if weight > 0 {
                scenarios.push(Scenario::new(kind, body));
                scenario_weights.push(weight);
            }
        }
        let weights = WeightedIndex::new(&scenario_weights)
            .map_err(|_| "the mix needs at least one scenario with a weight above 0".to_owned())?;
        Ok(Mix { scenarios, weights, seed, n_accounts, n_keys, hot_share })
    }

    pub fn scenarios(&self) -> &[Scenario] {
        &self.scenarios
    }

    pub fn has(&self, kind: Kind) -> bool {
        self.scenarios.iter().any(|scenario| scenario.kind == kind)
    }

    /// Request `idx`'s scenario, account and key: the hot account (0) takes `hot_share`
    /// of the requests, the rest spread evenly over all accounts.
    pub fn pick(&self, idx: u64) -> Pick {
        let mut rng = StdRng::seed_from_u64(self.seed ^ idx.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let scenario_idx = self.weights.sample(&mut rng);
        let account_idx =
            if rng.gen_bool(self.hot_share) { 0 } else { rng.gen_range(0..self.n_accounts) };
        Pick { scenario_idx, account_idx, key_idx: rng.gen_range(0..self.n_keys) }
    }
}

impl Scenario {
    fn new(kind: Kind, spec: &BodySpec) -> Scenario {
        let words = if kind == Kind::Large { spec.large_prompt_words } else { spec.prompt_words };
        let mut prompt: Vec<String> =
            (0..words).map(|word_idx| format!("word{word_idx}")).collect();
        if kind == Kind::Cut {
            prompt.insert(0, format!("[[mock cut_after={CUT_AFTER_EVENTS}]]"));
        }
        let stream = matches!(kind, Kind::Stream | Kind::Cut);
        let messages = json!([{"role": "user", "content": prompt.join(" ")}]);
        let mut gateway = json!({
            "model": spec.model,
            "messages": messages,
            "max_tokens": spec.max_tokens,
            "stream": stream,
        });
        if kind == Kind::Fallback {
            gateway["models"] = json!(["mock/unavailable", spec.model]);
        }
        let upstream_model =
            spec.model.split_once('/').map_or(spec.model.as_str(), |(_, name)| name);
        let mut direct = json!({
            "model": upstream_model,
            "messages": messages,
            "max_tokens": spec.max_tokens,
            "stream": stream,
        });
        if stream {
            // The gateway asks its upstream for the usage chunk; so does the direct phase.
            direct["stream_options"] = json!({"include_usage": true});
        }
        Scenario {
            kind,
            stream,
            gateway_body: Bytes::from(gateway.to_string()),
            direct_body: (kind != Kind::Broke).then(|| Bytes::from(direct.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BodySpec {
        BodySpec {
            model: "mock/echo".into(),
            prompt_words: 3,
            large_prompt_words: 100,
            max_tokens: 8,
        }
    }

    #[test]
    fn parses_the_mix_and_refuses_nonsense() {
        let mix = Mix::try_new("plain=3, stream=1,broke=0", &spec(), 1, (1, 1), 0.0).unwrap();
        assert_eq!(mix.scenarios().len(), 2);
        assert!(mix.has(Kind::Stream) && !mix.has(Kind::Broke));
        assert!(Mix::try_new("plain", &spec(), 1, (1, 1), 0.0).is_ok());
        for bad in ["", "plain=0", "nope=1", "plain=x", "plain=1,plain=2"] {
            assert!(Mix::try_new(bad, &spec(), 1, (1, 1), 0.0).is_err(), "{bad}");
        }
        assert!(Mix::try_new("plain", &spec(), 1, (0, 1), 0.0).is_err());
        assert!(Mix::try_new("plain", &spec(), 1, (1, 1), 1.5).is_err());
    }

    #[test]
    fn picks_by_weight_deterministically() {
        let mix = Mix::try_new("plain=9,stream=1", &spec(), 7, (10, 3), 0.5).unwrap();
        let picks: Vec<Pick> = (0..10_000).map(|idx| mix.pick(idx)).collect();
        assert_eq!(picks, (0..10_000).map(|idx| mix.pick(idx)).collect::<Vec<_>>());
        let streams = picks.iter().filter(|pick| pick.scenario_idx == 1).count();
        assert!((800..1200).contains(&streams), "{streams} streams of 10000");
        let hot = picks.iter().filter(|pick| pick.account_idx == 0).count();
        assert!((5_200..5_800).contains(&hot), "{hot} on the hot account (55 % expected)");
        assert!(picks.iter().all(|pick| pick.account_idx < 10 && pick.key_idx < 3));
    }

    #[test]
    fn builds_gateway_and_upstream_bodies() {
        let mix = Mix::try_new("fallback,broke,large,cut", &spec(), 0, (1, 1), 0.0).unwrap();
        let body = |idx: usize| {
            let scenario = &mix.scenarios()[idx];
            let gateway: serde_json::Value =
                serde_json::from_slice(&scenario.gateway_body).unwrap();
            let direct = scenario
                .direct_body
                .as_ref()
                .map(|body| serde_json::from_slice::<serde_json::Value>(body).unwrap());
            (gateway, direct)
        };
        let (fallback, direct) = body(0);
        assert_eq!(fallback["models"], json!(["mock/unavailable", "mock/echo"]));
        assert_eq!(direct.unwrap()["model"], "echo");
        assert_eq!(body(1).1, None);
        let (large, _) = body(2);
        assert_eq!(large["messages"][0]["content"].as_str().unwrap().split(' ').count(), 100);
        let (cut, direct) = body(3);
        assert_eq!(cut["stream"], true);
        let prompt = cut["messages"][0]["content"].as_str().unwrap();
        assert!(prompt.starts_with("[[mock cut_after=2]] word0"), "{prompt}");
        assert_eq!(direct.unwrap()["stream_options"]["include_usage"], true);
    }
}
