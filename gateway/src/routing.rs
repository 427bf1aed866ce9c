//! Provider routing, pure: which endpoints (a model on a host) a request tries, in which
//! order, from the candidate models (`model`, then `models`), the request's `provider`
//! object (OpenRouter's meaning), the `:nitro` / `:floor` model suffixes, each endpoint's
//! breaker and live statistics (a [`View`]) and a seed. No clock, no I/O: the pipeline
//! passes `Health::view` and the request's id as seed; tests pass synthetic views.
//!
//! Per model, its endpoints that the request allows (`only`, `ignore`, `quantizations`,
//! `max_price`, `require_parameters`, `data_collection`, `zdr`) are ordered:
//!
//! * by `sort` (or the suffix: `:nitro` is `throughput`, `:floor` is `price`): price
//!   ascending (the prices that apply to the request: [`crate::catalog::Price::rank`] at
//!   the tier its prompt bound reaches), throughput (tokens per second) descending or
//!   latency (mean time to first token) ascending over the last
//!   [`crate::health::ROUTING_WINDOW_BUCKETS`] minutes; endpoints without statistics
//!   come after those with, in catalogue order;
//! * else, as OpenRouter documents its default: load spread across the endpoints,
//!   favouring cheaper ones: the first is drawn with weights proportional to the inverse
//!   square of each price, the others follow cheapest first;
//! * the hosts of `order` first, in its order; with `allow_fallbacks: false` only they
//!   (or, without `order`, only the first endpoint) are tried.
//!
//! `max_price` compares the prices that apply to the request: an endpoint's dearer
//! long-context tier when the request's prompt bound (the tokens its hold covers at that
//! endpoint, which the caller passes) reaches it, so a request is never charged more
//! than its `max_price`. `data_collection: "deny"` leaves out hosts that may store
//! prompts for their own use or train on them, `zdr: true` every host that retains
//! anything ([`crate::catalog::DataPolicy`]); a host whose policy is unknown is left out
//! by both. A host with which the operator holds its own zero-data-retention agreement
//! (`zdr_hosts`, [`crate::catalog::Model::zdr_by_agreement`]) passes both.
//!
//! Endpoints whose breaker refuses traffic are left out (unless that leaves nothing to
//! try, when they stay so the request fails with the breaker's 503). The plan is every
//! endpoint of the first model, then of the next: a request falls back across hosts of
//! one model before it moves to the next model.

use crate::catalog::{Model, QUANTIZATIONS};
use crate::error::ApiError;
use crate::health::View;
use crate::providers::PARAMETERS_PASSED_THROUGH;
use serde_json::Value;
use solrouter_ledger::PicoUsd;

/// Most endpoints one request tries: bounds the upstream attempts of a request whose
/// models have many hosts (a fallback costs the client time, up to the deadline).
pub const ATTEMPTS_MAX: usize = 12;

/// Tokens per price unit of `max_price` (USD per million tokens, as OpenRouter takes it).
const TOKENS_PER_PRICE_UNIT: u128 = 1_000_000;

/// What `sort` (or a model suffix) orders a model's endpoints by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Price,
    Throughput,
    Latency,
}

/// `provider.max_price`: the most a request will pay. `prompt` and `completion` are per
/// million tokens, `request` per request (pico-USD).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaxPrice {
    pub prompt_per_million: Option<PicoUsd>,
    pub completion_per_million: Option<PicoUsd>,
    pub request: Option<PicoUsd>,
}

/// The request's `provider` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preferences {
    /// Hosts to try first, in this order.
    pub order: Vec<String>,
    /// Whether hosts beyond `order` (or beyond the first) may be tried.
    pub allow_fallbacks: bool,
    /// Only these hosts, if given.
    pub only: Option<Vec<String>>,
    /// Never these hosts.
    pub ignore: Vec<String>,
    pub sort: Option<Sort>,
    pub max_price: MaxPrice,
    /// Only endpoints that take every parameter the request sets.
    pub require_parameters: bool,
    /// Only endpoints of these quantizations, if given.
    pub quantizations: Option<Vec<String>>,
    /// `data_collection: "deny"`: only hosts known not to collect prompts.
    pub deny_data_collection: bool,
    /// Only hosts known to retain nothing (zero data retention).
    pub zdr: bool,
}

impl Default for Preferences {
    fn default() -> Preferences {
        Preferences {
            order: Vec::new(),
            allow_fallbacks: true,
            only: None,
            ignore: Vec::new(),
            sort: None,
            max_price: MaxPrice::default(),
            require_parameters: false,
            quantizations: None,
            deny_data_collection: false,
            zdr: false,
        }
    }
}

impl Preferences {
    /// Reads the `provider` object (absent or `null`: the defaults). Every field is
    /// checked; an unknown field, host or value is a 400 naming it (`provider.order`).
    pub fn parse(value: Option<&Value>) -> Result<Preferences, ApiError> {
        let object = match value {
            None | Some(Value::Null) => return Ok(Preferences::default()),
            Some(Value::Object(object)) => object,
            Some(_) => return Err(ApiError::invalid_param("provider", "must be an object")),
        };
        let mut preferences = Preferences::default();
        for (field, value) in object {
            let param = format!("provider.{field}");
            let invalid = |message: &str| ApiError::invalid_param(&param, message);
            if value.is_null() {
                continue;
            }
            match field.as_str() {
                "order" => preferences.order = hosts(&param, value)?,
                "only" => preferences.only = Some(hosts(&param, value)?),
                "ignore" => preferences.ignore = hosts(&param, value)?,
                "allow_fallbacks" | "require_parameters" | "zdr" => {
                    let flag = value.as_bool().ok_or_else(|| invalid("must be a boolean"))?;
                    match field.as_str() {
                        "allow_fallbacks" => preferences.allow_fallbacks = flag,
                        "require_parameters" => preferences.require_parameters = flag,
                        _ => preferences.zdr = flag,
                    }
                }
                "data_collection" => {
                    preferences.deny_data_collection = match value.as_str() {
                        Some("allow") => false,
                        Some("deny") => true,
                        _ => return Err(invalid("must be \"allow\" or \"deny\"")),
                    }
                }
                "sort" => {
                    preferences.sort = Some(match value.as_str() {
                        Some("price") => Sort::Price,
                        Some("throughput") => Sort::Throughput,
                        Some("latency") => Sort::Latency,
                        _ => {
                            return Err(invalid("must be \"price\", \"throughput\" or \"latency\""))
                        }
                    })
                }
                "quantizations" => {
                    let names = strings(&param, value)?;
                    if let Some(unknown) =
                        names.iter().find(|q| !QUANTIZATIONS.contains(&q.as_str()))
                    {
                        let message = format!(
                            "unknown quantization `{unknown}` (known: {})",
                            QUANTIZATIONS.join(", ")
                        );
                        return Err(ApiError::invalid_param(&param, message));
                    }
                    preferences.quantizations = Some(names);
                }
                "max_price" => preferences.max_price = max_price(value)?,
                _ => return Err(invalid("is not supported by the gateway")),
            }
        }
        Ok(preferences)
    }
}

/// A list of strings, or a 400 naming `param`.
fn strings(param: &str, value: &Value) -> Result<Vec<String>, ApiError> {
    value
        .as_array()
        .and_then(|items| items.iter().map(|item| item.as_str().map(str::to_owned)).collect())
        .ok_or_else(|| ApiError::invalid_param(param, "must be an array of strings"))
}

/// A list of host names the gateway knows.
fn hosts(param: &str, value: &Value) -> Result<Vec<String>, ApiError> {
    let names = strings(param, value)?;
    if let Some(unknown) =
        names.iter().find(|name| !crate::providers::host_names().any(|host| host == name.as_str()))
    {
        let known: Vec<&str> = crate::providers::host_names().collect();
        let message = format!("unknown provider `{unknown}` (known: {})", known.join(", "));
        return Err(ApiError::invalid_param(param, message));
    }
    Ok(names)
}

fn max_price(value: &Value) -> Result<MaxPrice, ApiError> {
    let object = value
        .as_object()
        .ok_or_else(|| ApiError::invalid_param("provider.max_price", "must be an object"))?;
    let mut max = MaxPrice::default();
    for (field, amount) in object {
        let param = format!("provider.max_price.{field}");
        let text = match amount {
            Value::Null => continue,
            Value::Number(number) => number.to_string(),
            Value::String(text) => text.clone(),
            _ => return Err(ApiError::invalid_param(&param, "must be a USD amount")),
        };
        let usd = PicoUsd::parse_usd(&text).map_err(|_| {
            ApiError::invalid_param(&param, "must be a non-negative USD amount in decimal notation")
        })?;
        match field.as_str() {
            "prompt" => max.prompt_per_million = Some(usd),
            "completion" => max.completion_per_million = Some(usd),
            "request" => max.request = Some(usd),
            _ => return Err(ApiError::invalid_param(&param, "is not supported by the gateway")),
        }
    }
    Ok(max)
}

/// Splits a model suffix off `id`: `:nitro` sorts by throughput, `:floor` by price.
pub fn split_variant(id: &str) -> (&str, Option<Sort>) {
    if let Some(base) = id.strip_suffix(":nitro") {
        (base, Some(Sort::Throughput))
    } else if let Some(base) = id.strip_suffix(":floor") {
        (base, Some(Sort::Price))
    } else {
        (id, None)
    }
}

/// The parameters a request sets, by the names endpoints list them under (OpenRouter's:
/// `max_completion_tokens` is `max_tokens`, a JSON-schema `response_format` is also
/// `structured_outputs`, `reasoning` is `reasoning_effort`): `set` says whether a
/// top-level field is present and not null, `json_schema` whether `response_format` asks
/// for a JSON schema.
pub fn request_parameters(set: impl Fn(&str) -> bool, json_schema: bool) -> Vec<&'static str> {
    PARAMETERS_PASSED_THROUGH
        .iter()
        .copied()
        .filter(|&parameter| match parameter {
            "max_tokens" => set("max_tokens") || set("max_completion_tokens"),
            "structured_outputs" => json_schema,
            "reasoning_effort" => set("reasoning_effort") || set("reasoning"),
            other => set(other),
        })
        .collect()
}

/// One candidate model: its endpoints that can serve the request, in catalogue order.
#[derive(Debug, Clone)]
pub struct Candidate<'a, 'c> {
    /// The id as the client named it (with any suffix), for error messages.
    pub id: &'a str,
    pub endpoints: Vec<&'c Model>,
    /// The model suffix's sort, if any.
    pub sort: Option<Sort>,
}

/// What routing needs to know of each endpoint besides its catalogue entry.
pub struct Facts<Supports, Live, PromptTokens> {
    /// Whether the endpoint takes every parameter the request sets (consulted only with
    /// `require_parameters`).
    pub supports: Supports,
    /// What routing knows of the endpoint now (breaker, statistics).
    pub live: Live,
    /// The most prompt tokens the request can be billed at the endpoint (what its hold
    /// covers there): the price tier `max_price` compares (consulted only with it).
    pub prompt_tokens: PromptTokens,
}

/// The ordered attempts for `candidates` (see the module's documentation), from what
/// `facts` tells of each endpoint; `seed` draws the default's weighted choice. A 400
/// naming the `provider` field when the preferences leave no endpoint.
pub fn plan<'c>(
    candidates: &[Candidate<'_, 'c>],
    preferences: &Preferences,
    facts: Facts<impl Fn(&Model) -> bool, impl Fn(&Model) -> View, impl Fn(&Model) -> u64>,
    seed: u64,
) -> Result<Vec<&'c Model>, ApiError> {
    let Facts { supports, live, prompt_tokens } = facts;
    let max = &preferences.max_price;
    let within = |limit: Option<PicoUsd>, per_token: PicoUsd| {
        limit.is_none_or(|limit| per_token.0 * TOKENS_PER_PRICE_UNIT <= limit.0)
    };
    let limits_price = *max != MaxPrice::default();
    let filters: [(&str, &Allows); 7] = [
        ("provider.only", &|endpoint| {
            preferences.only.as_ref().is_none_or(|only| only.contains(&endpoint.provider))
        }),
        ("provider.ignore", &|endpoint| !preferences.ignore.contains(&endpoint.provider)),
        ("provider.quantizations", &|endpoint| {
            preferences
                .quantizations
                .as_ref()
                .is_none_or(|allowed| allowed.contains(&endpoint.quantization))
        }),
        ("provider.max_price", &|endpoint| {
            if !limits_price {
                return true;
            }
            let price = endpoint.price_at(prompt_tokens(endpoint));
            within(max.prompt_per_million, price.prompt)
                && within(max.completion_per_million, price.completion)
                && max.request.is_none_or(|limit| price.per_request <= limit)
        }),
        ("provider.require_parameters", &|endpoint| {
            !preferences.require_parameters || supports(endpoint)
        }),
        ("provider.data_collection", &|endpoint| {
            !preferences.deny_data_collection || !endpoint.may_collect()
        }),
        ("provider.zdr", &|endpoint| !preferences.zdr || endpoint.zero_retention()),
    ];
    let mut random = SplitMix(seed);
    let mut first_emptied: Option<&str> = None;
    let (mut passable, mut blocked) = (Vec::new(), Vec::new());
    for candidate in candidates {
        let mut endpoints = candidate.endpoints.clone();
        for (field, allows) in &filters {
            let before = endpoints.len();
            endpoints.retain(|endpoint| allows(endpoint));
            if before > 0 && endpoints.is_empty() {
                first_emptied.get_or_insert(field);
            }
        }
        let views: Vec<(&'c Model, View, u128)> = endpoints
            .iter()
            .map(|endpoint| {
                let rank = endpoint.price_at(prompt_tokens(endpoint)).rank();
                (*endpoint, live(endpoint), rank)
            })
            .collect();
        let (open, closed): (Vec<_>, Vec<_>) =
            views.into_iter().partition(|(_, view, _)| view.passable);
        let sort = preferences.sort.or(candidate.sort);
        passable.extend(arrange(open, sort, preferences, &mut random));
        blocked.extend(arrange(closed, sort, preferences, &mut random));
    }
    let mut attempts = if passable.is_empty() { blocked } else { passable };
    if attempts.is_empty() {
        let ids: Vec<&str> = candidates.iter().map(|candidate| candidate.id).collect();
        let field = first_emptied.unwrap_or("provider");
        return Err(ApiError::invalid_param(
            field,
            format!("no endpoint of `{}` satisfies it", ids.join("`, `")),
        ));
    }
    attempts.truncate(ATTEMPTS_MAX);
    Ok(attempts)
}

/// One `provider` filter: whether it lets an endpoint through.
type Allows<'a> = dyn Fn(&Model) -> bool + 'a;

/// One model's endpoints in the order to try them (see the module's documentation).
fn arrange<'c>(
    mut endpoints: Vec<(&'c Model, View, u128)>,
    sort: Option<Sort>,
    preferences: &Preferences,
    random: &mut SplitMix,
) -> Vec<&'c Model> {
    match sort {
        Some(Sort::Price) => endpoints.sort_by_key(|(_, _, rank)| *rank),
        Some(Sort::Throughput) => endpoints.sort_by_key(|(_, view, _)| {
            let speed = view.recent.tokens_per_second;
            (speed.is_none(), std::cmp::Reverse(speed.unwrap_or(0)))
        }),
        Some(Sort::Latency) => endpoints.sort_by_key(|(_, view, _)| {
            let ttft = view.recent.ttft_ms;
            (ttft.is_none(), ttft.unwrap_or(0))
        }),
        None => {
            endpoints.sort_by_key(|(_, _, rank)| *rank);
            let weights: Vec<f64> =
                endpoints.iter().map(|(_, _, rank)| ((*rank).max(1) as f64).powi(-2)).collect();
            let total: f64 = weights.iter().sum();
            let mut target = random.unit() * total;
            let drawn = weights
                .iter()
                .position(|weight| {
                    target -= weight;
                    target < 0.0
                })
                .unwrap_or(0);
            if !endpoints.is_empty() {
                let first = endpoints.remove(drawn);
                endpoints.insert(0, first);
            }
        }
    }
    let mut endpoints: Vec<&'c Model> =
        endpoints.into_iter().map(|(endpoint, _, _)| endpoint).collect();
    let mut ordered = Vec::with_capacity(endpoints.len());
    for host in &preferences.order {
        if let Some(position) = endpoints.iter().position(|endpoint| &endpoint.provider == host) {
            ordered.push(endpoints.remove(position));
        }
    }
    if preferences.allow_fallbacks {
        ordered.extend(endpoints);
    } else if preferences.order.is_empty() {
        ordered.extend(endpoints.into_iter().take(1));
    }
    ordered
}

/// A small deterministic generator (SplitMix64): the same seed draws the same choice.
struct SplitMix(u64);

impl SplitMix {
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::health::{
        CircuitBreaker, EndpointStats, BUCKET_MS, FAILURES_TO_OPEN, ROUTING_WINDOW_BUCKETS,
    };
    use serde_json::json;

    /// The controlled clock's "now".
    const NOW: u64 = 100 * BUCKET_MS;

    const CATALOG: &str = r#"
[[model]]
id = "t/big"
created = "2025-01-01"
context_length = 1000
max_output_tokens = 100
input_modalities = ["text"]
output_modalities = ["text"]
capabilities = { tools = false, structured_output = false, reasoning = false, images = false }
[[model.endpoints]]
provider = "groq"
upstream_model = "big"
quantization = "fp8"
price = { prompt = "1", completion = "1" }
source = "test"
[[model.endpoints]]
provider = "together"
upstream_model = "big"
quantization = "bf16"
supported_parameters = ["max_tokens", "temperature"]
price = { prompt = "2", completion = "2" }
long_context = { above_prompt_tokens = 500, price = { prompt = "7", completion = "2" } }
source = "test"
[[model.endpoints]]
provider = "fireworks"
upstream_model = "big"
quantization = "fp8"
price = { prompt = "4", completion = "4", per_request = "0.01" }
source = "test"

[[model]]
id = "t/small"
created = "2025-01-01"
context_length = 1000
max_output_tokens = 100
input_modalities = ["text"]
output_modalities = ["text"]
capabilities = { tools = false, structured_output = false, reasoning = false, images = false }
[[model.endpoints]]
provider = "deepinfra"
upstream_model = "small"
price = { prompt = "0.5", completion = "0.5" }
source = "test"
[[model.endpoints]]
provider = "cerebras"
upstream_model = "small"
price = { prompt = "1", completion = "1" }
source = "test"

# deepinfra has no entry: its policy is unknown.
[[host]]
name = "groq"
data_policy = "zero-retention"
source = "test"
[[host]]
name = "together"
data_policy = "abuse-monitoring"
source = "test"
[[host]]
name = "fireworks"
data_policy = "may-collect"
source = "test"
[[host]]
name = "cerebras"
data_policy = "zero-retention"
source = "test"
"#;

    /// Synthetic statistics and breakers per endpoint, read at [`NOW`].
    struct Lab {
        catalog: Catalog,
        stats: Vec<EndpointStats>,
        breakers: Vec<CircuitBreaker>,
        now_ms: u64,
        /// The request's prompt bound at every endpoint.
        prompt_tokens: u64,
    }

    impl Lab {
        fn new() -> Lab {
            let catalog = Catalog::parse(CATALOG).expect("test catalogue");
            let n_endpoints = catalog.all_endpoints().len();
            Lab {
                catalog,
                stats: (0..n_endpoints).map(|_| EndpointStats::default()).collect(),
                breakers: (0..n_endpoints).map(|_| CircuitBreaker::new()).collect(),
                now_ms: NOW,
                prompt_tokens: 100,
            }
        }

        fn endpoint(&self, id: &str, host: &str) -> &Model {
            let endpoints = self.catalog.endpoints(id).expect("model");
            endpoints.iter().find(|endpoint| endpoint.provider == host).expect("host")
        }

        /// `host` answered `ms_ago` before now: first token after `ttft_ms`, `tokens`
        /// completion tokens in `generation_ms`.
        fn answered(
            &self,
            id: &str,
            host: &str,
            ms_ago: u64,
            ttft_ms: u64,
            tokens: u64,
            generation_ms: u64,
        ) {
            let stats = &self.stats[self.endpoint(id, host).slot];
            stats.record_answer(self.now_ms - ms_ago, ttft_ms);
            stats.record_tokens(self.now_ms - ms_ago, tokens, generation_ms);
        }

        fn fail(&self, id: &str, host: &str) {
            let slot = self.endpoint(id, host).slot;
            for _ in 0..FAILURES_TO_OPEN {
                self.breakers[slot].record_failure(self.now_ms - 1);
                self.stats[slot].record_failure(self.now_ms - 1, true);
            }
        }

        fn view(&self, endpoint: &Model) -> View {
            let breaker = &self.breakers[endpoint.slot];
            View {
                passable: breaker.passable(self.now_ms),
                state: breaker.state(),
                recent: self.stats[endpoint.slot].snapshot(self.now_ms, ROUTING_WINDOW_BUCKETS),
            }
        }

        fn candidates(&self, ids: &[&'static str]) -> Vec<Candidate<'static, '_>> {
            ids.iter()
                .map(|id| {
                    let (base, sort) = split_variant(id);
                    let endpoints = self.catalog.endpoints(base).expect("model").iter().collect();
                    Candidate { id, endpoints, sort }
                })
                .collect()
        }

        /// The plan as `model@host`s, requiring `parameters` if asked to.
        fn plan_with(
            &self,
            ids: &[&'static str],
            provider: Value,
            parameters: &[&str],
            seed: u64,
        ) -> Result<Vec<String>, ApiError> {
            let preferences = Preferences::parse(Some(&provider))?;
            let supports = |endpoint: &Model| {
                let taken = endpoint.supported_parameters(&PARAMETERS_PASSED_THROUGH);
                parameters.iter().all(|parameter| taken.contains(parameter))
            };
            let facts = Facts {
                supports,
                live: |endpoint: &Model| self.view(endpoint),
                prompt_tokens: |_: &Model| self.prompt_tokens,
            };
            let planned = plan(&self.candidates(ids), &preferences, facts, seed)?;
            Ok(planned
                .iter()
                .map(|e| format!("{}@{}", e.id.trim_start_matches("t/"), e.provider))
                .collect())
        }

        fn plan(&self, ids: &[&'static str], provider: Value) -> Vec<String> {
            self.plan_with(ids, provider, &[], 7).expect("a plan")
        }

        fn refused(&self, ids: &[&'static str], provider: Value) -> String {
            let error = self.plan_with(ids, provider, &["seed"], 7).expect_err("no plan");
            assert_eq!(error.status(), http::StatusCode::BAD_REQUEST);
            error.to_json()["error"]["param"].as_str().expect("param").to_owned()
        }
    }

    #[test]
    fn default_spreads_load_by_inverse_square_price_then_falls_back_within_the_model() {
        let lab = Lab::new();
        let mut firsts = std::collections::BTreeMap::new();
        for seed in 0..20_000 {
            let planned = lab.plan_with(&["t/big", "t/small"], Value::Null, &[], seed).unwrap();
            // Every endpoint of the first model, then of the next.
            assert_eq!(planned.len(), 5);
            assert!(planned[..3].iter().all(|attempt| attempt.starts_with("big@")), "{planned:?}");
            assert!(
                planned[3..].iter().all(|attempt| attempt.starts_with("small@")),
                "{planned:?}"
            );
            *firsts.entry(planned[0].clone()).or_insert(0u32) += 1;
        }
        // Prices 2, 4 and 8 $/M: weights 1/4, 1/16, 1/64, that is 16 : 4 : 1.
        let share = |host: &str| f64::from(firsts[host]) / 20_000.0;
        assert!((share("big@groq") - 16.0 / 21.0).abs() < 0.02, "{firsts:?}");
        assert!((share("big@together") - 4.0 / 21.0).abs() < 0.02, "{firsts:?}");
        assert!((share("big@fireworks") - 1.0 / 21.0).abs() < 0.01, "{firsts:?}");
        // The same seed draws the same plan; the fallbacks are cheapest first.
        let planned = lab.plan(&["t/big"], Value::Null);
        assert_eq!(planned, lab.plan(&["t/big"], Value::Null));
        let rest: Vec<&String> = planned.iter().skip(1).collect();
        let mut sorted = rest.clone();
        sorted.sort_by_key(|attempt| {
            ["big@groq", "big@together", "big@fireworks"].iter().position(|h| h == attempt)
        });
        assert_eq!(rest, sorted);
    }

    #[test]
    fn order_puts_hosts_first_and_allow_fallbacks_limits_to_them() {
        let lab = Lab::new();
        assert_eq!(
            lab.plan(&["t/big", "t/small"], json!({"order": ["fireworks", "cerebras", "groq"]})),
            ["big@fireworks", "big@groq", "big@together", "small@cerebras", "small@deepinfra"]
        );
        let only_ordered = json!({"order": ["fireworks", "groq"], "allow_fallbacks": false});
        assert_eq!(lab.plan(&["t/big", "t/small"], only_ordered), ["big@fireworks", "big@groq"]);
        let planned =
            lab.plan(&["t/big", "t/small"], json!({"allow_fallbacks": false, "sort": "price"}));
        assert_eq!(planned, ["big@groq", "small@deepinfra"]);
    }

    #[test]
    fn only_and_ignore_filter_hosts() {
        let lab = Lab::new();
        let only = json!({"only": ["together", "cerebras"], "sort": "price"});
        assert_eq!(lab.plan(&["t/big", "t/small"], only), ["big@together", "small@cerebras"]);
        let ignore = json!({"ignore": ["groq", "deepinfra"], "sort": "price"});
        assert_eq!(
            lab.plan(&["t/big", "t/small"], ignore),
            ["big@together", "big@fireworks", "small@cerebras"]
        );
        assert_eq!(lab.refused(&["t/small"], json!({"only": ["groq"]})), "provider.only");
        assert_eq!(
            lab.refused(&["t/small"], json!({"ignore": ["deepinfra", "cerebras"]})),
            "provider.ignore"
        );
        // A name the gateway does not know is refused, naming the field.
        assert_eq!(lab.refused(&["t/small"], json!({"order": ["nobody"]})), "provider.order");
        assert_eq!(lab.refused(&["t/small"], json!({"only": "groq"})), "provider.only");
    }

    #[test]
    fn sort_by_price_throughput_and_latency_over_recent_statistics() {
        let lab = Lab::new();
        assert_eq!(
            lab.plan(&["t/big"], json!({"sort": "price"})),
            ["big@groq", "big@together", "big@fireworks"]
        );
        // Within the window: together fast (500 tokens/s), fireworks slow (50 tokens/s)
        // but quickest to its first token; groq's only answer is older than the window.
        lab.answered("t/big", "together", 60_000, 400, 1000, 2000);
        lab.answered("t/big", "fireworks", 1_000, 100, 100, 2000);
        lab.answered(
            "t/big",
            "groq",
            (ROUTING_WINDOW_BUCKETS as u64 + 1) * BUCKET_MS,
            10,
            10_000,
            1000,
        );
        assert_eq!(
            lab.plan(&["t/big"], json!({"sort": "throughput"})),
            ["big@together", "big@fireworks", "big@groq"]
        );
        assert_eq!(
            lab.plan(&["t/big"], json!({"sort": "latency"})),
            ["big@fireworks", "big@together", "big@groq"]
        );
    }

    #[test]
    fn suffixes_sort_their_model_unless_the_request_sorts() {
        let lab = Lab::new();
        assert_eq!(split_variant("a/b:nitro"), ("a/b", Some(Sort::Throughput)));
        assert_eq!(split_variant("a/b:floor"), ("a/b", Some(Sort::Price)));
        assert_eq!(split_variant("a/b:free"), ("a/b:free", None));
        lab.answered("t/big", "fireworks", 0, 100, 1000, 100);
        lab.answered("t/big", "groq", 0, 100, 10, 100);
        assert_eq!(
            lab.plan(&["t/big:nitro"], Value::Null),
            ["big@fireworks", "big@groq", "big@together"]
        );
        assert_eq!(
            lab.plan(&["t/big:floor", "t/small:nitro"], Value::Null),
            ["big@groq", "big@together", "big@fireworks", "small@deepinfra", "small@cerebras"]
        );
        assert_eq!(
            lab.plan(&["t/big:nitro"], json!({"sort": "price"})),
            ["big@groq", "big@together", "big@fireworks"]
        );
    }

    #[test]
    fn max_price_quantizations_and_required_parameters_filter_endpoints() {
        let lab = Lab::new();
        let cheap = json!({"max_price": {"prompt": 2, "completion": "2.5"}, "sort": "price"});
        assert_eq!(lab.plan(&["t/big"], cheap), ["big@groq", "big@together"]);
        let no_fee = json!({"max_price": {"request": 0}, "sort": "price"});
        assert_eq!(lab.plan(&["t/big"], no_fee), ["big@groq", "big@together"]);
        assert_eq!(
            lab.refused(&["t/big"], json!({"max_price": {"prompt": 0.5}})),
            "provider.max_price"
        );
        assert_eq!(
            lab.refused(&["t/big"], json!({"max_price": {"prompt": -1}})),
            "provider.max_price.prompt"
        );
        assert_eq!(
            lab.refused(&["t/big"], json!({"max_price": {"image": 1}})),
            "provider.max_price.image"
        );
        let fp8 = json!({"quantizations": ["fp8"], "sort": "price"});
        assert_eq!(lab.plan(&["t/big"], fp8), ["big@groq", "big@fireworks"]);
        assert_eq!(
            lab.refused(&["t/big"], json!({"quantizations": ["q3"]})),
            "provider.quantizations"
        );
        assert_eq!(
            lab.refused(&["t/small"], json!({"quantizations": ["fp8"]})),
            "provider.quantizations"
        );
        // `seed` is not taken by together: dropped only when parameters are required.
        let required = json!({"require_parameters": true, "sort": "price"});
        let planned = lab.plan_with(&["t/big"], required, &["seed"], 7).unwrap();
        assert_eq!(planned, ["big@groq", "big@fireworks"]);
        let planned = lab.plan_with(&["t/big"], json!({"sort": "price"}), &["seed"], 7).unwrap();
        assert_eq!(planned.len(), 3);
        let set = ["max_completion_tokens", "seed", "response_format", "messages"];
        assert_eq!(
            request_parameters(|name| set.contains(&name), true),
            ["max_tokens", "seed", "response_format", "structured_outputs"]
        );
    }

    #[test]
    fn open_breakers_are_skipped_until_a_probe_is_due() {
        let mut lab = Lab::new();
        lab.fail("t/big", "groq");
        let planned = lab.plan(&["t/big", "t/small"], json!({"sort": "price"}));
        assert_eq!(planned, ["big@together", "big@fireworks", "small@deepinfra", "small@cerebras"]);
        // Every endpoint refusing: they stay, so the request fails with the breaker's 503.
        lab.fail("t/small", "deepinfra");
        lab.fail("t/small", "cerebras");
        assert_eq!(
            lab.plan(&["t/small"], json!({"sort": "price"})),
            ["small@deepinfra", "small@cerebras"]
        );
        // After the cooldown a probe is due: the endpoint is planned again.
        lab.now_ms += crate::health::COOLDOWN_MS;
        assert_eq!(
            lab.plan(&["t/small"], json!({"sort": "price"})),
            ["small@deepinfra", "small@cerebras"]
        );
        assert_eq!(lab.plan(&["t/big"], json!({"sort": "price"}))[0], "big@groq");
    }

    #[test]
    fn the_provider_object_is_checked_field_by_field() {
        let check = |provider: Value, param: &str| {
            let error = Preferences::parse(Some(&provider)).expect_err("invalid");
            assert_eq!(error.to_json()["error"]["param"], param, "{provider}");
        };
        check(json!("groq"), "provider");
        check(json!({"sort": "fast"}), "provider.sort");
        check(json!({"allow_fallbacks": "no"}), "provider.allow_fallbacks");
        check(json!({"data_collection": "never"}), "provider.data_collection");
        check(json!({"zdr": "yes"}), "provider.zdr");
        check(json!({"enforce_distillable_text": true}), "provider.enforce_distillable_text");
        check(json!({"ignore": ["groq", 1]}), "provider.ignore");
        check(json!({"max_price": 1}), "provider.max_price");
        let parsed =
            Preferences::parse(Some(&json!({"order": ["mock-slow"], "sort": null}))).unwrap();
        assert_eq!(
            (parsed.order, parsed.sort, parsed.allow_fallbacks),
            (vec!["mock-slow".to_owned()], None, true)
        );
        assert_eq!(Preferences::parse(None).unwrap(), Preferences::default());
        let private = Preferences::parse(Some(&json!({"data_collection": "deny", "zdr": true})));
        let private = private.unwrap();
        assert!(private.deny_data_collection && private.zdr);
        let open = Preferences::parse(Some(&json!({"data_collection": "allow", "zdr": false})));
        assert_eq!(open.unwrap(), Preferences::default());
    }

    #[test]
    fn max_price_compares_the_tier_the_prompt_bound_reaches() {
        let mut lab = Lab::new();
        // together: $2/M up to 500 prompt tokens, $7/M above.
        let cheap = json!({"max_price": {"prompt": 2}, "sort": "price"});
        assert_eq!(lab.plan(&["t/big"], cheap.clone()), ["big@groq", "big@together"]);
        lab.prompt_tokens = 500;
        assert_eq!(lab.plan(&["t/big"], cheap.clone()), ["big@groq", "big@together"]);
        lab.prompt_tokens = 501;
        assert_eq!(lab.plan(&["t/big"], cheap), ["big@groq"]);
        assert_eq!(
            lab.plan(&["t/big"], json!({"max_price": {"prompt": 7}, "sort": "price"})),
            ["big@groq", "big@fireworks", "big@together"]
        );
        // Without max_price the tier still orders by the price that applies: together
        // ($9/M both ways above 500 tokens) after fireworks ($8/M).
        assert_eq!(
            lab.plan(&["t/big"], json!({"sort": "price"})),
            ["big@groq", "big@fireworks", "big@together"]
        );
        lab.prompt_tokens = 500;
        assert_eq!(
            lab.plan(&["t/big"], json!({"sort": "price"})),
            ["big@groq", "big@together", "big@fireworks"]
        );
        lab.prompt_tokens = 501;
        assert_eq!(
            lab.refused(&["t/big"], json!({"only": ["together"], "max_price": {"prompt": 2.5}})),
            "provider.max_price"
        );

        // The catalogue's own tier: Gemini 2.5 Pro, $1.25/M up to 200,000 prompt
        // tokens, $2.50/M above.
        let catalog = Catalog::builtin();
        let pro = catalog.endpoints("google/gemini-2.5-pro").expect("model");
        let candidates = [Candidate {
            id: "google/gemini-2.5-pro",
            endpoints: pro.iter().collect(),
            sort: None,
        }];
        let preferences = Preferences::parse(Some(&json!({"max_price": {"prompt": "1.25"}})));
        let preferences = preferences.unwrap();
        let health = crate::health::Health::new(&catalog);
        let planned = |prompt_tokens: u64| {
            let facts = Facts {
                supports: |_: &Model| true,
                live: |endpoint: &Model| health.view(endpoint),
                prompt_tokens: |_: &Model| prompt_tokens,
            };
            plan(&candidates, &preferences, facts, 7).map(|planned| planned.len())
        };
        assert_eq!(planned(200_000).unwrap(), 1);
        let error = planned(200_001).unwrap_err();
        assert_eq!(error.to_json()["error"]["param"], "provider.max_price");
    }

    #[test]
    fn data_collection_and_zdr_keep_hosts_known_to_keep_the_data_private() {
        let lab = Lab::new();
        // groq and cerebras retain nothing, together only for abuse monitoring,
        // fireworks may collect, deepinfra's policy is unknown.
        let deny = json!({"data_collection": "deny", "sort": "price"});
        assert_eq!(
            lab.plan(&["t/big", "t/small"], deny),
            ["big@groq", "big@together", "small@cerebras"]
        );
        let zdr = json!({"zdr": true, "sort": "price"});
        assert_eq!(lab.plan(&["t/big", "t/small"], zdr), ["big@groq", "small@cerebras"]);
        let allow = json!({"data_collection": "allow", "zdr": false, "sort": "price"});
        assert_eq!(lab.plan(&["t/big"], allow).len(), 3);
        assert_eq!(
            lab.refused(&["t/big"], json!({"only": ["fireworks"], "data_collection": "deny"})),
            "provider.data_collection"
        );
        assert_eq!(
            lab.refused(&["t/big"], json!({"only": ["together"], "zdr": true})),
            "provider.zdr"
        );
        assert_eq!(
            lab.refused(&["t/small"], json!({"ignore": ["cerebras"], "zdr": true})),
            "provider.zdr"
        );
    }

    #[test]
    fn an_operators_zdr_agreement_makes_its_hosts_retain_nothing() {
        let mut lab = Lab::new();
        let hosts = ["fireworks".to_owned(), "deepinfra".to_owned()];
        lab.catalog = lab.catalog.clone().with_zdr_agreements(&hosts).expect("served hosts");
        // fireworks (may collect) and deepinfra (unknown) retain nothing by the agreement.
        let zdr = json!({"zdr": true, "sort": "price"});
        assert_eq!(
            lab.plan(&["t/big", "t/small"], zdr),
            ["big@groq", "big@fireworks", "small@deepinfra", "small@cerebras"]
        );
        let deny = json!({"data_collection": "deny", "sort": "price"});
        assert_eq!(lab.plan(&["t/big"], deny), ["big@groq", "big@together", "big@fireworks"]);
        // The host's own policy is still what it publishes.
        let fireworks = lab.endpoint("t/big", "fireworks");
        assert_eq!(fireworks.data_policy, crate::catalog::DataPolicy::MayCollect);
        assert!(fireworks.zdr_by_agreement && !lab.endpoint("t/big", "together").zdr_by_agreement);
        // A host the catalogue does not serve is refused, not ignored.
        let error = lab.catalog.clone().with_zdr_agreements(&["grok".to_owned()]).unwrap_err();
        assert!(error.to_string().contains("`grok`"), "{error}");
    }
}
