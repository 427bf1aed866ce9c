//! The model catalogue: which models exist, who serves them, what they can do and what
//! they cost. The data lives in `catalog.toml`, embedded at build time so a binary and
//! its prices always ship together.
//!
//! A model id has one or more endpoints: the hosts that serve it (an open-weight model
//! on Groq, Together, Fireworks, …), each with its own upstream name, prices, limits,
//! quantization and supported parameters. A [`Model`] is one model as one host serves
//! it; [`Catalog::endpoints`] lists a model's endpoints, [`Catalog::get`] answers its
//! first (for what all endpoints share: id, capabilities, modalities), and routing
//! (`routing.rs`) chooses among them per request.
//!
//! Prices are exact: published USD-per-million-token decimals become whole pico-USD per
//! token, and every cost is integer arithmetic on those.

use crate::providers::Usage;
use foldhash::{HashMap, HashMapExt};
use serde::{Deserialize, Serialize};
pub use solrouter_adapters::controls::{Controls, Thinking};
use solrouter_ledger::PicoUsd;

/// Tokens per price unit: providers quote USD per million tokens.
const TOKENS_PER_PRICE_UNIT: u128 = 1_000_000;

/// The highest price the catalogue accepts, in pico-USD per token ($10,000 per million
/// tokens, 50× the most expensive model published so far). With token counts below
/// `u64::MAX` (1.8·10¹⁹) and four terms per cost, every cost stays below
/// 4 · 1.8·10¹⁹ · 10¹⁰ ≈ 7.4·10²⁹, far inside `u128`.
const PRICE_PICO_PER_TOKEN_MAX: u128 = 10_000_000_000;
const _: () = assert!(4 * (u64::MAX as u128) * PRICE_PICO_PER_TOKEN_MAX < u128::MAX);

/// The embedded catalogue text.
const BUILTIN_TOML: &str = include_str!("../catalog.toml");

/// The request parameters of an embedding model, by OpenRouter's names: what
/// `provider.require_parameters` checks of an embeddings request (see
/// [`Model::supported_parameters`]).
pub const EMBEDDING_PARAMETERS: [&str; 2] = ["encoding_format", "dimensions"];

/// Words (lower case) that mark a price note as no source at all: a price is billed, so
/// it must say where it was read.
const UNSOURCED: [&str; 2] = ["unverified", "from memory"];

/// Quantizations an endpoint may declare (OpenRouter's names).
pub const QUANTIZATIONS: [&str; 9] =
    ["int4", "int8", "fp4", "fp6", "fp8", "fp16", "bf16", "fp32", "unknown"];

/// All known models, in catalogue order, each followed by its other endpoints.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Every endpoint; a model's endpoints are contiguous. An endpoint's index here is
    /// its [`Model::slot`].
    endpoints: Vec<Model>,
    /// Where each model's endpoints start and end in `endpoints`, in catalogue order.
    models: Vec<(usize, usize)>,
    /// Ids and aliases alike, to an index into `models`.
    index_by_id: HashMap<String, usize>,
}

/// One model as one host serves it: an endpoint. What the model is (id, aliases,
/// modalities, capabilities) is the same in each of its endpoints; what the host does
/// (upstream name, limits, prices, quantization, parameters) is its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// The id clients ask for, `provider-family/model`, e.g. `openai/gpt-4o-mini`.
    pub id: String,
    /// The host serving this endpoint: the key of its adapter and base URL (see
    /// `providers::Providers`), and the `provider` name of responses, records and the
    /// `provider` request object.
    pub provider: String,
    /// This endpoint's index among all the catalogue's endpoints (for per-endpoint
    /// health and statistics).
    pub slot: usize,
    /// How the host quantizes the weights (one of [`QUANTIZATIONS`]).
    pub quantization: String,
    /// The request parameters this host takes, where it takes fewer than its adapter
    /// passes on (`None`: all of them).
    pub supported_parameters: Option<Vec<String>>,
    /// The provider's own name for the model.
    pub upstream_model: String,
    /// Other names a client may ask for it by (Anthropic's own ids and aliases, as
    /// Claude Code and the `anthropic` SDKs send them): [`Catalog::get`] answers them.
    pub aliases: Vec<String>,
    /// When the provider released the model, in unix seconds (`/models`' `created`).
    pub created_s: u64,
    /// The most prompt tokens of a request; of an embedding model, of one input.
    pub context_length: u64,
    /// Zero for an embedding model, which generates no tokens.
    pub max_output_tokens: u64,
    pub input_modalities: Vec<String>,
    pub output_modalities: Vec<String>,
    pub capabilities: Capabilities,
    /// Which request parameters the model takes in what form (Claude's thinking modes,
    /// sampling and forced tool use): what the adapter translates to and what routing
    /// refuses before anything is reserved.
    pub controls: Controls,
    /// What every request pays, unless its prompt reaches `long_context`.
    pub price: Price,
    /// Dearer prices for a request whose prompt is longer than a threshold (Google's
    /// "prompts > 200k tokens"): the whole request is billed at them.
    pub long_context: Option<LongContext>,
    /// Where the price was read, and when.
    pub source: String,
    /// What an embedding model answers (`POST /v1/api/embeddings`); `None` for chat
    /// models, which only that endpoint refuses.
    pub embedding: Option<Embedding>,
    /// What the host does with prompts (its catalogue `[[host]]` entry; unknown when it
    /// has none): with `zdr_by_agreement`, what `provider.data_collection` and
    /// `provider.zdr` filter by ([`Model::zero_retention`], [`Model::may_collect`]).
    pub data_policy: DataPolicy,
    /// Whether the operator holds its own zero-data-retention agreement with the host
    /// (the `zdr_hosts` setting, [`Catalog::with_zdr_agreements`]): the endpoint then
    /// retains nothing whatever the host's published policy.
    pub zdr_by_agreement: bool,
}

/// What a host does with the prompts and completions it serves, as its published policy
/// says for API traffic under the host's default settings (OpenRouter's two controls:
/// whether a host may collect data, and whether it retains any).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataPolicy {
    /// Nothing is kept once the answer is sent (zero data retention), nor trained on.
    ZeroRetention,
    /// Kept for a bounded time only to detect abuse, keep the service reliable or obey
    /// the law; never trained on nor used otherwise.
    AbuseMonitoring,
    /// Stored and possibly trained on or used to improve the host's products.
    MayCollect,
    /// Not known: treated as [`DataPolicy::MayCollect`] by every filter.
    #[default]
    Unknown,
}

impl DataPolicy {
    /// Whether the host may collect the data (store it for its own use or train on it):
    /// `provider.data_collection: "deny"` leaves such endpoints out. Unknown counts as
    /// collecting.
    pub fn may_collect(self) -> bool {
        matches!(self, DataPolicy::MayCollect | DataPolicy::Unknown)
    }

    /// Whether the host retains nothing: what `provider.zdr: true` requires.
    pub fn zero_retention(self) -> bool {
        self == DataPolicy::ZeroRetention
    }
}

/// The vectors of an embedding model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Embedding {
    /// The length of a vector when the client asks for none.
    pub dimensions: u32,
    /// The other lengths a client may ask for (`dimensions`).
    pub reducible: Reducible,
    /// The most inputs one upstream request may carry.
    pub inputs_max: u32,
}

/// Which vector lengths besides the default an embedding model produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reducible {
    /// Only the default.
    No,
    /// Any length from this one up to the default (Matryoshka models).
    From(u32),
    /// One of these.
    To(Vec<u32>),
}

impl Embedding {
    /// Whether the model produces vectors of `dimensions`.
    pub fn allows(&self, dimensions: u32) -> bool {
        dimensions == self.dimensions
            || match &self.reducible {
                Reducible::No => false,
                Reducible::From(min) => (*min..=self.dimensions).contains(&dimensions),
                Reducible::To(options) => options.contains(&dimensions),
            }
    }
}

/// A price tier keyed by the request's prompt length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongContext {
    /// The tier applies when the prompt has more tokens than this.
    pub above_prompt_tokens: u64,
    pub price: Price,
}

/// How the gateway counts a model's tokens itself (for a prompt certainly too long, and
/// for usage a provider never reported). See `tokens.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tokenizer {
    /// OpenAI's `o200k_base`, the exact tokenizer of every catalogued OpenAI model.
    OpenAi,
    /// No public tokenizer: `o200k_base` as an estimate (see `tokens.rs` for its bounds).
    Estimated,
    /// The mock provider's: whitespace-separated words.
    Words,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    pub tools: bool,
    pub structured_output: bool,
    pub reasoning: bool,
    pub images: bool,
}

/// Prices per token. Reasoning tokens are billed as completion tokens (every provider
/// in the catalogue does so).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub prompt: PicoUsd,
    pub completion: PicoUsd,
    /// Prompt tokens read from the provider's cache; `None` bills them as `prompt`.
    pub cached_read: Option<PicoUsd>,
    /// Prompt tokens written to the provider's cache; `None` bills them as `prompt`.
    pub cached_write: Option<PicoUsd>,
    /// A flat fee per request on top of tokens (Perplexity's search fee), else zero.
    pub per_request: PicoUsd,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("catalogue is not valid TOML: {0}")]
    Syntax(String),
    #[error("model `{id}`: {message}")]
    Model { id: String, message: String },
    #[error("host `{host}`: {message}")]
    Host { host: String, message: String },
}

impl Catalog {
    /// The embedded catalogue. Its validity is checked by this module's tests, so a
    /// failure here is a build defect.
    pub fn builtin() -> Catalog {
        match Catalog::parse(BUILTIN_TOML) {
            Ok(catalog) => catalog,
            Err(error) => panic!("embedded catalog.toml is invalid: {error}"),
        }
    }

    /// The model of this id or alias: its first endpoint.
    pub fn get(&self, id: &str) -> Option<&Model> {
        self.endpoints(id).map(|endpoints| &endpoints[0])
    }

    /// Every endpoint of the model of this id or alias, in catalogue order (never empty).
    pub fn endpoints(&self, id: &str) -> Option<&[Model]> {
        let &model_idx = self.index_by_id.get(id)?;
        let (start, end) = self.models[model_idx];
        Some(&self.endpoints[start..end])
    }

    /// Each model once (its first endpoint), in catalogue order.
    pub fn models(&self) -> impl Iterator<Item = &Model> {
        self.models.iter().map(|&(start, _)| &self.endpoints[start])
    }

    /// Every endpoint of every model; an endpoint's position is its [`Model::slot`].
    pub fn all_endpoints(&self) -> &[Model] {
        &self.endpoints
    }

    pub(crate) fn parse(text: &str) -> Result<Catalog, CatalogError> {
        let file: CatalogFile =
            toml::from_str(text).map_err(|error| CatalogError::Syntax(error.to_string()))?;
        let mut catalog = Catalog {
            endpoints: Vec::with_capacity(file.model.len()),
            models: Vec::with_capacity(file.model.len()),
            index_by_id: HashMap::with_capacity(file.model.len()),
        };
        for entry in file.model {
            let endpoints = entry.validate(catalog.endpoints.len())?;
            let model = &endpoints[0];
            for name in std::iter::once(&model.id).chain(&model.aliases) {
                if catalog.index_by_id.insert(name.clone(), catalog.models.len()).is_some() {
                    return Err(model_error(&model.id, &format!("duplicate id or alias {name}")));
                }
            }
            let start = catalog.endpoints.len();
            catalog.endpoints.extend(endpoints);
            catalog.models.push((start, catalog.endpoints.len()));
        }
        let mut policies: HashMap<&str, DataPolicy> = HashMap::with_capacity(file.host.len());
        for host in &file.host {
            let host_error = |message: &str| CatalogError::Host {
                host: host.name.clone(),
                message: message.to_owned(),
            };
            if host.source.trim().is_empty() {
                return Err(host_error("every data policy needs its source note (`source`)"));
            }
            if !catalog.endpoints.iter().any(|endpoint| endpoint.provider == host.name) {
                return Err(host_error("serves no endpoint of the catalogue"));
            }
            if policies.insert(&host.name, host.data_policy).is_some() {
                return Err(host_error("is listed twice"));
            }
        }
        for endpoint in &mut catalog.endpoints {
            endpoint.data_policy =
                policies.get(endpoint.provider.as_str()).copied().unwrap_or_default();
        }
        Ok(catalog)
    }

    /// The catalogue with the operator's own zero-data-retention agreements: every
    /// endpoint of each of `hosts` retains nothing ([`Model::zdr_by_agreement`]). A name
    /// that is no host of the catalogue is refused, so that a misspelt host cannot leave
    /// the traffic the operator meant to protect routed by the host's default policy.
    pub fn with_zdr_agreements(mut self, hosts: &[String]) -> Result<Catalog, CatalogError> {
        for host in hosts {
            let mut served = false;
            for endpoint in self.endpoints.iter_mut().filter(|endpoint| endpoint.provider == *host)
            {
                endpoint.zdr_by_agreement = true;
                served = true;
            }
            if !served {
                return Err(CatalogError::Host {
                    host: host.clone(),
                    message: "serves no endpoint of the catalogue".to_owned(),
                });
            }
        }
        Ok(self)
    }
}

impl Model {
    /// Whether the endpoint retains nothing, by the host's published policy or by the
    /// operator's own agreement with it: what `provider.zdr: true` requires.
    pub fn zero_retention(&self) -> bool {
        self.zdr_by_agreement || self.data_policy.zero_retention()
    }

    /// Whether the host may collect the data (see [`DataPolicy::may_collect`]):
    /// `provider.data_collection: "deny"` leaves such endpoints out. A zero-retention
    /// agreement rules collection out.
    pub fn may_collect(&self) -> bool {
        !self.zdr_by_agreement && self.data_policy.may_collect()
    }

    /// The prices a request with `prompt_tokens` pays.
    pub fn price_at(&self, prompt_tokens: u64) -> &Price {
        match &self.long_context {
            Some(tier) if prompt_tokens > tier.above_prompt_tokens => &tier.price,
            _ => &self.price,
        }
    }

    /// The exact cost of `usage`, at the tier its prompt reached.
    pub fn cost(&self, usage: &Usage) -> PicoUsd {
        self.price_at(usage.prompt_tokens).cost(usage)
    }

    /// The most a request of at most `prompt_tokens` and `completion_tokens` can cost, at
    /// the tier the prompt bound can reach (tiers only get dearer with length).
    pub fn bound(&self, prompt_tokens: u64, completion_tokens: u64) -> PicoUsd {
        self.price_at(prompt_tokens).bound(prompt_tokens, completion_tokens)
    }

    /// What routing compares endpoints' prices by: the prompt and completion prices per
    /// token added (pico-USD), so an endpoint cheaper on both is always cheaper.
    pub fn price_rank(&self) -> u128 {
        self.price.rank()
    }

    /// The dearest per-token price any request may pay.
    pub fn price_per_token_max(&self) -> PicoUsd {
        let dearest = self.long_context.as_ref().map_or(&self.price, |tier| &tier.price);
        [Some(dearest.prompt), Some(dearest.completion), dearest.cached_read, dearest.cached_write]
            .into_iter()
            .flatten()
            .fold(PicoUsd::ZERO, PicoUsd::max)
    }

    pub fn tokenizer(&self) -> Tokenizer {
        match self.provider.as_str() {
            "openai" => Tokenizer::OpenAi,
            host if crate::providers::is_mock(host) => Tokenizer::Words,
            _ => Tokenizer::Estimated,
        }
    }

    /// The request parameters this endpoint takes, by OpenRouter's names: of `passed`
    /// (what its adapter passes on), those its host takes, less those of capabilities
    /// the model lacks (tools, structured output, reasoning). An embedding model takes
    /// `encoding_format`, and `dimensions` if it can shorten its vectors.
    pub fn supported_parameters(&self, passed: &[&'static str]) -> Vec<&'static str> {
        if let Some(embedding) = &self.embedding {
            let reducible = embedding.reducible != Reducible::No;
            return EMBEDDING_PARAMETERS
                .into_iter()
                .filter(|&parameter| parameter != "dimensions" || reducible)
                .collect();
        }
        let capabilities = &self.capabilities;
        let host_takes = |parameter: &str| {
            self.supported_parameters
                .as_ref()
                .is_none_or(|taken| taken.iter().any(|taken| taken == parameter))
        };
        passed
            .iter()
            .copied()
            .filter(|&parameter| host_takes(parameter))
            .filter(|&parameter| match parameter {
                "tools" | "tool_choice" | "parallel_tool_calls" => capabilities.tools,
                "response_format" | "structured_outputs" => capabilities.structured_output,
                "reasoning_effort" => capabilities.reasoning,
                // Models that take only their default sampling (Claude 4.7 and later).
                "temperature" | "top_p" => self.controls.sampling,
                _ => true,
            })
            .collect()
    }

    /// The most tokens a request to this model can really use: a provider reporting
    /// more is at fault (DESIGN.md §3), and is settled at this bound.
    pub fn usage_max(&self) -> (u64, u64) {
        (self.context_length, self.max_output_tokens)
    }
}

impl Price {
    /// How routing ranks the price: the prompt and completion per-token prices summed.
    pub fn rank(&self) -> u128 {
        self.prompt.0 + self.completion.0
    }

    /// The exact cost of `usage`.
    pub fn cost(&self, usage: &Usage) -> PicoUsd {
        let cached_read = u128::from(usage.cached_read_tokens);
        let cached_write = u128::from(usage.cached_write_tokens);
        let uncached = u128::from(usage.prompt_tokens).saturating_sub(cached_read + cached_write);
        let total = uncached * self.prompt.0
            + cached_read * self.cached_read.unwrap_or(self.prompt).0
            + cached_write * self.cached_write.unwrap_or(self.prompt).0
            + u128::from(usage.completion_tokens) * self.completion.0
            + self.per_request.0;
        PicoUsd(total)
    }

    /// The most `prompt_tokens` and `completion_tokens` can cost, whatever the cache
    /// does: what the pipeline reserves before forwarding.
    pub fn bound(&self, prompt_tokens: u64, completion_tokens: u64) -> PicoUsd {
        let prompt_max = [self.cached_read, self.cached_write]
            .into_iter()
            .flatten()
            .fold(self.prompt, PicoUsd::max);
        PicoUsd(
            u128::from(prompt_tokens) * prompt_max.0
                + u128::from(completion_tokens) * self.completion.0
                + self.per_request.0,
        )
    }

    /// A per-token price as a plain USD decimal, the way OpenRouter's `/models` lists
    /// pricing: `"0.00000015"`, `"0"`.
    pub fn per_token_usd(p: PicoUsd) -> String {
        let pico_per_usd = solrouter_ledger::PICO_PER_USD;
        let whole = p.0 / pico_per_usd;
        let fraction = p.0 % pico_per_usd;
        if fraction == 0 {
            return whole.to_string();
        }
        let digits = format!("{fraction:012}");
        format!("{whole}.{}", digits.trim_end_matches('0'))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    model: Vec<ModelEntry>,
    /// What each host does with prompts; a host without an entry is unknown.
    #[serde(default)]
    host: Vec<HostEntry>,
}

/// A host's data policy and where it was read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostEntry {
    name: String,
    data_policy: DataPolicy,
    /// Where the policy was read, and when: required, never empty.
    source: String,
}

/// A model: either one endpoint written inline (`provider`, `upstream_model`, `price`,
/// `source`, … beside the model's fields), or its endpoints in `endpoints`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelEntry {
    id: String,
    #[serde(default)]
    aliases: Vec<String>,
    /// The release date, `YYYY-MM-DD` (UTC); `source` says where it was read.
    created: String,
    /// The model's context; an endpoint may serve less.
    context_length: u64,
    /// Required, except of embedding models, which must have none; an endpoint may
    /// allow less.
    max_output_tokens: Option<u64>,
    input_modalities: Vec<String>,
    output_modalities: Vec<String>,
    capabilities: Capabilities,
    embedding: Option<EmbeddingEntry>,
    #[serde(default)]
    controls: Controls,
    provider: Option<String>,
    upstream_model: Option<String>,
    quantization: Option<String>,
    supported_parameters: Option<Vec<String>>,
    price: Option<PriceEntry>,
    long_context: Option<LongContextEntry>,
    source: Option<String>,
    #[serde(default)]
    endpoints: Vec<EndpointEntry>,
}

/// The fields of an endpoint written inline in its model's entry.
struct InlineEndpoint {
    provider: Option<String>,
    upstream_model: Option<String>,
    quantization: Option<String>,
    supported_parameters: Option<Vec<String>>,
    price: Option<PriceEntry>,
    long_context: Option<LongContextEntry>,
    source: Option<String>,
}

/// One host serving the model.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointEntry {
    provider: String,
    upstream_model: String,
    /// At most the model's; the model's when absent.
    context_length: Option<u64>,
    /// At most the model's; the model's (capped at this context) when absent.
    max_output_tokens: Option<u64>,
    quantization: Option<String>,
    supported_parameters: Option<Vec<String>>,
    price: PriceEntry,
    long_context: Option<LongContextEntry>,
    /// Where the prices were read, and when: required, never empty.
    source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddingEntry {
    dimensions: u32,
    dimensions_min: Option<u32>,
    dimensions_options: Option<Vec<u32>>,
    inputs_max: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LongContextEntry {
    above_prompt_tokens: u64,
    price: PriceEntry,
}

/// USD per million tokens, as published.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceEntry {
    prompt: String,
    completion: String,
    cached_read: Option<String>,
    cached_write: Option<String>,
    /// USD per request (not per million tokens).
    per_request: Option<String>,
}

impl ModelEntry {
    /// The model's endpoints, the first one's slot `first_slot`.
    fn validate(self, first_slot: usize) -> Result<Vec<Model>, CatalogError> {
        let id = &self.id;
        let embedding = self.embedding.as_ref().map(|entry| entry.validate(id)).transpose()?;
        let created_s = chrono::NaiveDate::parse_from_str(&self.created, "%Y-%m-%d")
            .map_err(|error| model_error(id, &format!("created {:?}: {error}", self.created)))?
            .and_time(chrono::NaiveTime::MIN)
            .and_utc()
            .timestamp();
        let created_s = u64::try_from(created_s)
            .map_err(|_| model_error(id, "created must not be before 1970"))?;
        let max_output_tokens = match (self.max_output_tokens, &embedding) {
            (None, Some(_)) => 0,
            (Some(_), Some(_)) => {
                return Err(model_error(id, "an embedding model has no max_output_tokens"))
            }
            (Some(tokens), None) if (1..=self.context_length).contains(&tokens) => tokens,
            _ => return Err(model_error(id, "max_output_tokens must be in 1..=context_length")),
        };
        let inline = InlineEndpoint {
            provider: self.provider,
            upstream_model: self.upstream_model,
            quantization: self.quantization,
            supported_parameters: self.supported_parameters,
            price: self.price,
            long_context: self.long_context,
            source: self.source,
        };
        let endpoints = match (inline, self.endpoints.is_empty()) {
            (inline, true) => vec![inline.into_endpoint(id)?],
            (
                InlineEndpoint {
                    provider: None,
                    upstream_model: None,
                    quantization: None,
                    supported_parameters: None,
                    price: None,
                    long_context: None,
                    source: None,
                },
                false,
            ) => self.endpoints,
            (_, false) => {
                return Err(model_error(
                    id,
                    "a model with `endpoints` names its hosts, prices and sources only there",
                ))
            }
        };
        let mut models: Vec<Model> = Vec::with_capacity(endpoints.len());
        for (endpoint_idx, entry) in endpoints.into_iter().enumerate() {
            let host = entry.provider.clone();
            let endpoint_error =
                |message: &str| model_error(id, &format!("endpoint {host}: {message}"));
            if entry.provider.is_empty() || entry.upstream_model.is_empty() {
                return Err(endpoint_error("provider and upstream_model are required"));
            }
            if entry.source.trim().is_empty() {
                return Err(endpoint_error("every price needs its source note (`source`)"));
            }
            let note = entry.source.to_lowercase();
            if let Some(word) = UNSOURCED.iter().find(|word| note.contains(*word)) {
                return Err(endpoint_error(&format!(
                    "a source note saying {word:?} is no source: name where the price was read"
                )));
            }
            if models.iter().any(|other| other.provider == entry.provider) {
                return Err(endpoint_error("the host is listed twice"));
            }
            let context_length = entry.context_length.unwrap_or(self.context_length);
            if !(1..=self.context_length).contains(&context_length) {
                return Err(endpoint_error("context_length must be in 1..=the model's"));
            }
            let endpoint_max_output = match (entry.max_output_tokens, &embedding) {
                (None, _) => max_output_tokens.min(context_length),
                (Some(_), Some(_)) => {
                    return Err(endpoint_error("an embedding model has no max_output_tokens"))
                }
                (Some(tokens), None)
                    if (1..=max_output_tokens.min(context_length)).contains(&tokens) =>
                {
                    tokens
                }
                (Some(_), None) => {
                    return Err(endpoint_error(
                        "max_output_tokens must be in 1..=the model's and the context",
                    ))
                }
            };
            let quantization = entry.quantization.unwrap_or_else(|| "unknown".to_owned());
            if !QUANTIZATIONS.contains(&quantization.as_str()) {
                return Err(endpoint_error(&format!(
                    "quantization {quantization:?} is none of {QUANTIZATIONS:?}"
                )));
            }
            if let Some(parameters) = &entry.supported_parameters {
                let passed = crate::providers::PARAMETERS_PASSED_THROUGH;
                if let Some(unknown) = parameters.iter().find(|p| !passed.contains(&p.as_str())) {
                    return Err(endpoint_error(&format!("unknown parameter {unknown:?}")));
                }
            }
            let price = entry.price.validate(id)?;
            if embedding.is_some() && price.completion != PicoUsd::ZERO {
                return Err(model_error(id, "an embedding model bills no completion tokens"));
            }
            let long_context = match &entry.long_context {
                None => None,
                Some(tier) => {
                    let dearer = tier.price.validate(id)?;
                    let cheaper = [
                        (dearer.prompt, price.prompt),
                        (dearer.completion, price.completion),
                        (dearer.per_request, price.per_request),
                    ];
                    if tier.above_prompt_tokens >= context_length
                        || cheaper.iter().any(|(long, short)| long < short)
                    {
                        return Err(model_error(
                            id,
                            "long_context must start inside the context and cost no less",
                        ));
                    }
                    Some(LongContext {
                        above_prompt_tokens: tier.above_prompt_tokens,
                        price: dearer,
                    })
                }
            };
            models.push(Model {
                id: self.id.clone(),
                provider: entry.provider,
                slot: first_slot + endpoint_idx,
                quantization,
                supported_parameters: entry.supported_parameters,
                upstream_model: entry.upstream_model,
                aliases: self.aliases.clone(),
                created_s,
                context_length,
                max_output_tokens: endpoint_max_output,
                input_modalities: self.input_modalities.clone(),
                output_modalities: self.output_modalities.clone(),
                capabilities: self.capabilities,
                controls: self.controls,
                price,
                long_context,
                source: entry.source,
                embedding: embedding.clone(),
                // Set from the host's entry once every model is read (`Catalog::parse`).
                data_policy: DataPolicy::Unknown,
                zdr_by_agreement: false,
            });
        }
        Ok(models)
    }
}

impl InlineEndpoint {
    /// The single endpoint of a model written in the one-host form.
    fn into_endpoint(self, id: &str) -> Result<EndpointEntry, CatalogError> {
        match self {
            InlineEndpoint {
                provider: Some(provider),
                upstream_model: Some(upstream_model),
                price: Some(price),
                source: Some(source),
                quantization,
                supported_parameters,
                long_context,
            } => Ok(EndpointEntry {
                provider,
                upstream_model,
                context_length: None,
                max_output_tokens: None,
                quantization,
                supported_parameters,
                price,
                long_context,
                source,
            }),
            _ => Err(model_error(
                id,
                "provider, upstream_model, price and source are required (or `endpoints`)",
            )),
        }
    }
}

impl EmbeddingEntry {
    fn validate(&self, id: &str) -> Result<Embedding, CatalogError> {
        let reducible = match (self.dimensions_min, &self.dimensions_options) {
            (None, None) => Reducible::No,
            (Some(min), None) if (1..=self.dimensions).contains(&min) => Reducible::From(min),
            (None, Some(options))
                if options.iter().all(|option| (1..=self.dimensions).contains(option)) =>
            {
                Reducible::To(options.clone())
            }
            _ => {
                return Err(model_error(
                    id,
                    "embedding: at most one of dimensions_min and dimensions_options, \
                     within 1..=dimensions",
                ))
            }
        };
        if self.dimensions == 0 || self.inputs_max == 0 {
            return Err(model_error(id, "embedding: dimensions and inputs_max must be positive"));
        }
        Ok(Embedding { dimensions: self.dimensions, reducible, inputs_max: self.inputs_max })
    }
}

impl PriceEntry {
    fn validate(&self, id: &str) -> Result<Price, CatalogError> {
        let per_token = |text: &str| per_token_price(id, text);
        let optional = |text: &Option<String>| text.as_deref().map(per_token).transpose();
        Ok(Price {
            prompt: per_token(&self.prompt)?,
            completion: per_token(&self.completion)?,
            cached_read: optional(&self.cached_read)?,
            cached_write: optional(&self.cached_write)?,
            per_request: match &self.per_request {
                Some(text) => per_request_price(id, text)?,
                None => PicoUsd::ZERO,
            },
        })
    }
}

/// Converts USD per million tokens to exact pico-USD per token.
fn per_token_price(id: &str, per_million_usd: &str) -> Result<PicoUsd, CatalogError> {
    let per_million = PicoUsd::parse_usd(per_million_usd)
        .map_err(|error| model_error(id, &format!("price {per_million_usd:?}: {error}")))?;
    if per_million.0 % TOKENS_PER_PRICE_UNIT != 0 {
        return Err(model_error(
            id,
            &format!("price {per_million_usd:?} has more than 6 decimals"),
        ));
    }
    let per_token = per_million.0 / TOKENS_PER_PRICE_UNIT;
    if per_token > PRICE_PICO_PER_TOKEN_MAX {
        return Err(model_error(id, &format!("price {per_million_usd:?} is implausibly high")));
    }
    Ok(PicoUsd(per_token))
}

/// A per-request fee in USD, bounded like token prices (at most $10 a request).
fn per_request_price(id: &str, usd: &str) -> Result<PicoUsd, CatalogError> {
    let fee = PicoUsd::parse_usd(usd)
        .map_err(|error| model_error(id, &format!("per_request {usd:?}: {error}")))?;
    if fee > PicoUsd::from_usd_whole(10) {
        return Err(model_error(id, &format!("per_request {usd:?} is implausibly high")));
    }
    Ok(fee)
}

fn model_error(id: &str, message: &str) -> CatalogError {
    CatalogError::Model { id: id.to_owned(), message: message.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(prompt: u128, completion: u128) -> Price {
        Price {
            prompt: PicoUsd(prompt),
            completion: PicoUsd(completion),
            cached_read: None,
            cached_write: None,
            per_request: PicoUsd::ZERO,
        }
    }

    #[test]
    fn builtin_parses_with_exact_prices() {
        let catalog = Catalog::builtin();
        let mini = catalog.get("openai/gpt-4o-mini").unwrap();
        assert_eq!(mini.upstream_model, "gpt-4o-mini");
        assert_eq!(mini.price.prompt, PicoUsd(150_000));
        assert_eq!(mini.price.completion, PicoUsd(600_000));
        assert_eq!(mini.price.cached_read, Some(PicoUsd(75_000)));
        let echo = catalog.get("mock/echo").unwrap();
        assert_eq!(echo.provider, "mock");
        assert_eq!(echo.price, price(1_000_000, 2_000_000));
        assert!(catalog.get("openai/none").is_none());
        let ids: Vec<&str> = catalog.models().map(|model| model.id.as_str()).collect();
        assert_eq!(ids[0], "openai/gpt-4.1");
        assert!(ids.contains(&"mock/unavailable"));
    }

    #[test]
    fn cost_bills_each_token_kind_at_its_price() {
        let mut gpt4o = Catalog::builtin().get("openai/gpt-4o").unwrap().price;
        let usage = Usage {
            prompt_tokens: 1000,
            completion_tokens: 200,
            reasoning_tokens: 50,
            cached_read_tokens: 400,
            cached_write_tokens: 0,
        };
        // 600 × $2.50/M + 400 × $1.25/M + 200 × $10/M = $0.0015 + $0.0005 + $0.002.
        assert_eq!(gpt4o.cost(&usage), PicoUsd::parse_usd("0.004").unwrap());
        gpt4o.cached_write = Some(PicoUsd(3_125_000));
        let writing = Usage { cached_read_tokens: 0, cached_write_tokens: 1000, ..usage };
        assert_eq!(gpt4o.cost(&writing), PicoUsd::parse_usd("0.005125").unwrap());
        // The bound covers the dearest prompt price, whatever the cache does.
        assert_eq!(gpt4o.bound(1000, 200), PicoUsd::parse_usd("0.005125").unwrap());
        assert_eq!(price(1, 2).bound(0, 0), PicoUsd::ZERO);
        let sonar = Catalog::builtin().get("perplexity/sonar-pro").unwrap().price;
        let answered = Usage { prompt_tokens: 10, completion_tokens: 100, ..Usage::default() };
        // 10 × $3/M + 100 × $15/M + $6 per thousand requests.
        assert_eq!(sonar.cost(&answered), PicoUsd::parse_usd("0.007530").unwrap());
        assert_eq!(sonar.bound(10, 100), sonar.cost(&answered));
    }

    /// Every endpoint of the catalogue names a host the adapters' registry knows, whose
    /// adapter serves it (embeddings included), once every host has a key.
    #[test]
    fn every_catalogue_model_has_its_provider() {
        use crate::providers::{Providers, MOCK_PROVIDER, MOCK_SLOW_PROVIDER};
        let local = "http://127.0.0.1:9".to_owned();
        let mocks = [(MOCK_PROVIDER, Some(local.clone())), (MOCK_SLOW_PROVIDER, Some(local))];
        let all = Providers::from_lookup(&mocks, |var| {
            (!var.ends_with("_BASE_URL")).then(|| "key".to_owned())
        });
        for model in Catalog::builtin().all_endpoints() {
            let (adapter, _) = all.get(&model.provider).unwrap_or_else(|| panic!("{}", model.id));
            assert_eq!(adapter.provider(), model.provider, "{}", model.id);
            if model.embedding.is_some() {
                assert!(adapter.embedder().is_some(), "{} has no embeddings adapter", model.id);
            }
        }
    }

    #[test]
    fn long_prompts_pay_the_long_context_tier() {
        let pro = Catalog::builtin().get("google/gemini-2.5-pro").unwrap().clone();
        assert_eq!(pro.context_length, 1_048_576);
        let usage =
            |prompt_tokens| Usage { prompt_tokens, completion_tokens: 1000, ..Usage::default() };
        // 200,000 prompt tokens: $1.25/M and $10/M; one more: $2.50/M and $15/M for all.
        assert_eq!(pro.cost(&usage(200_000)), PicoUsd::parse_usd("0.26").unwrap());
        assert_eq!(pro.cost(&usage(200_001)), PicoUsd::parse_usd("0.5150025").unwrap());
        // The reservation takes the tier its prompt bound reaches.
        assert_eq!(pro.bound(200_000, 1000), pro.cost(&usage(200_000)));
        assert_eq!(pro.bound(200_001, 1000), pro.cost(&usage(200_001)));
        assert_eq!(pro.price_per_token_max(), PicoUsd(15_000_000));
    }

    #[test]
    fn formats_per_token_prices() {
        let check = |pico: u128, expected: &str| {
            assert_eq!(Price::per_token_usd(PicoUsd(pico)), expected);
        };
        check(150_000, "0.00000015");
        check(0, "0");
        check(1, "0.000000000001");
        check(2_000_000_000_000, "2");
        check(2_500_000_000_000, "2.5");
    }

    fn entry(price: &str) -> String {
        format!(
            r#"[[model]]
id = "x/y"
provider = "x"
upstream_model = "y"
created = "2025-04-14"
context_length = 10
max_output_tokens = 5
input_modalities = ["text"]
output_modalities = ["text"]
capabilities = {{ tools = false, structured_output = false, reasoning = false, images = false }}
price = {price}
source = "test"
"#
        )
    }

    fn endpoints_entry(endpoints: &str) -> String {
        format!(
            r#"[[model]]
id = "x/y"
created = "2025-04-14"
context_length = 100
max_output_tokens = 50
input_modalities = ["text"]
output_modalities = ["text"]
capabilities = {{ tools = false, structured_output = false, reasoning = false, images = false }}
{endpoints}"#
        )
    }

    fn endpoint(host: &str, extra: &str) -> String {
        format!(
            "[[model.endpoints]]\nprovider = \"{host}\"\nupstream_model = \"u\"\n\
             price = {{ prompt = \"1\", completion = \"2\" }}\nsource = \"test\"\n{extra}\n"
        )
    }

    #[test]
    fn a_model_has_endpoints_each_with_its_host_price_and_source() {
        let catalog = Catalog::builtin();
        let maverick = catalog.endpoints("meta-llama/llama-4-maverick").unwrap();
        let hosts: Vec<&str> = maverick.iter().map(|model| model.provider.as_str()).collect();
        assert_eq!(hosts, ["groq", "deepinfra", "together", "fireworks"]);
        assert!(maverick.iter().all(|endpoint| endpoint.id == "meta-llama/llama-4-maverick"));
        assert_eq!(catalog.get("meta-llama/llama-4-maverick").unwrap(), &maverick[0]);
        assert_eq!(maverick[1].quantization, "fp8");
        assert_eq!(maverick[0].quantization, "unknown");
        assert_eq!(maverick[1].price.prompt, PicoUsd(150_000));
        assert_eq!((maverick[0].context_length, maverick[0].max_output_tokens), (131072, 8192));
        // Together's limits are in neither table: the model's are kept.
        assert_eq!((maverick[2].context_length, maverick[2].max_output_tokens), (1048576, 16384));
        // Each model listed once; every endpoint's slot is its position.
        let n_models = catalog.models().count();
        let n_multi = catalog
            .models()
            .filter(|model| catalog.endpoints(&model.id).unwrap().len() > 1)
            .count();
        assert!(n_models >= 40 && n_multi >= 20, "{n_models} models, {n_multi} with several hosts");
        for (slot, endpoint) in catalog.all_endpoints().iter().enumerate() {
            assert_eq!(endpoint.slot, slot);
            assert!(!endpoint.source.trim().is_empty(), "{} on {}", endpoint.id, endpoint.provider);
        }
        // Parameters: the mock-slow host takes fewer than its adapter passes on.
        let shared = catalog.endpoints("mock/shared").unwrap();
        let passed = crate::providers::PARAMETERS_PASSED_THROUGH;
        assert!(shared[0].supported_parameters(&passed).contains(&"seed"));
        assert_eq!(
            shared[1].supported_parameters(&passed),
            ["max_tokens", "temperature", "top_p", "stop"]
        );
        assert!(shared[1].price_rank() < shared[0].price_rank());
    }

    #[test]
    fn refuses_an_endpoint_without_a_source_note() {
        let check = |text: &str, expected: &str| {
            let error = Catalog::parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        };
        let two = endpoints_entry(&format!("{}{}", endpoint("a", ""), endpoint("b", "")));
        let parsed = Catalog::parse(&two).unwrap();
        assert_eq!(parsed.endpoints("x/y").unwrap().len(), 2);
        assert_eq!(parsed.all_endpoints()[1].slot, 1);
        check(
            &two.replace("source = \"test\"\n\n[[model.endpoints]]", "\n[[model.endpoints]]"),
            "source",
        );
        check(&two.replacen("source = \"test\"", "source = \" \"", 1), "source note");
        // A note that says the price was never checked is no source either.
        for note in ["https://example.com/pricing, Unverified", "from memory (2025 list price)"] {
            let unsourced = two.replacen("source = \"test\"", &format!("source = \"{note}\""), 1);
            check(&unsourced, "is no source");
        }
        check(&endpoints_entry(&format!("{}{}", endpoint("a", ""), endpoint("a", ""))), "twice");
        check(&endpoints_entry(&endpoint("a", "context_length = 101")), "context_length");
        check(&endpoints_entry(&endpoint("a", "max_output_tokens = 51")), "max_output_tokens");
        check(&endpoints_entry(&endpoint("a", "quantization = \"q3\"")), "quantization");
        check(&endpoints_entry(&endpoint("a", "supported_parameters = [\"tempo\"]")), "tempo");
        // The inline form and endpoints do not mix.
        let mixed =
            endpoints_entry(&endpoint("a", "")).replace("created", "provider = \"p\"\ncreated");
        check(&mixed, "only there");
        // The inline form needs its source too.
        check(
            &entry(r#"{ prompt = "1", completion = "1" }"#).replace("source = \"test\"\n", ""),
            "source",
        );
        let limited =
            Catalog::parse(&endpoints_entry(&endpoint("a", "context_length = 40"))).unwrap();
        // The model's output limit, capped at the endpoint's context.
        assert_eq!(limited.get("x/y").unwrap().max_output_tokens, 40);
    }

    #[test]
    fn hosts_declare_their_data_policy_with_its_source() {
        let catalog = Catalog::builtin();
        let policy = |id: &str, host: &str| {
            let endpoints = catalog.endpoints(id).unwrap();
            endpoints.iter().find(|endpoint| endpoint.provider == host).unwrap().data_policy
        };
        let maverick = "meta-llama/llama-4-maverick";
        assert_eq!(policy(maverick, "fireworks"), DataPolicy::ZeroRetention);
        assert_eq!(policy(maverick, "groq"), DataPolicy::AbuseMonitoring);
        assert_eq!(policy(maverick, "together"), DataPolicy::MayCollect);
        assert_eq!(policy("cohere/embed-v4.0", "cohere"), DataPolicy::Unknown);
        assert_eq!(policy("mock/shared", "mock"), DataPolicy::ZeroRetention);
        assert_eq!(policy("mock/shared", "mock-slow"), DataPolicy::AbuseMonitoring);
        assert!(DataPolicy::Unknown.may_collect() && !DataPolicy::Unknown.zero_retention());
        assert!(!DataPolicy::AbuseMonitoring.may_collect());
        // Every host of the catalogue has its entry, unknown ones said so explicitly.
        let file: CatalogFile = toml::from_str(BUILTIN_TOML).unwrap();
        for endpoint in catalog.all_endpoints() {
            let host = file.host.iter().find(|host| host.name == endpoint.provider);
            assert!(host.is_some(), "host {} has no [[host]] entry", endpoint.provider);
        }

        let check = |hosts: &str, expected: &str| {
            let text = format!("{}{hosts}", endpoints_entry(&endpoint("a", "")));
            let error = Catalog::parse(&text).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        };
        let host = |name: &str, policy: &str, source: &str| {
            format!(
                "[[host]]\nname = \"{name}\"\ndata_policy = \"{policy}\"\nsource = \"{source}\"\n"
            )
        };
        check(&host("a", "zero-retention", " "), "source note");
        check(&host("b", "zero-retention", "s"), "serves no endpoint");
        check(&host("a", "never", "s"), "never");
        check(&format!("{}{}", host("a", "unknown", "s"), host("a", "unknown", "s")), "twice");
        let text =
            format!("{}{}", endpoints_entry(&endpoint("a", "")), host("a", "may-collect", "s"));
        assert_eq!(
            Catalog::parse(&text).unwrap().get("x/y").unwrap().data_policy,
            DataPolicy::MayCollect
        );
    }

    #[test]
    fn embedding_models_name_their_vectors_and_bill_input_only() {
        let catalog = Catalog::builtin();
        let small = catalog.get("openai/text-embedding-3-small").unwrap();
        let embedding = small.embedding.as_ref().unwrap();
        assert_eq!((embedding.dimensions, embedding.inputs_max), (1536, 2048));
        assert!(embedding.allows(1536) && embedding.allows(1) && !embedding.allows(1537));
        assert_eq!(small.max_output_tokens, 0);
        // 1,000 tokens at $0.02 per million.
        let usage = Usage { prompt_tokens: 1000, ..Usage::default() };
        assert_eq!(small.cost(&usage), PicoUsd::parse_usd("0.00002").unwrap());
        let cohere = catalog.get("cohere/embed-v4.0").unwrap().embedding.clone().unwrap();
        assert!(cohere.allows(256) && !cohere.allows(300));
        let mistral = catalog.get("mistralai/mistral-embed").unwrap().embedding.clone().unwrap();
        assert!(mistral.allows(1024) && !mistral.allows(512));
        assert!(catalog.get("openai/gpt-4o").unwrap().embedding.is_none());

        let embed = |table: &str| {
            entry(r#"{ prompt = "1", completion = "0" }"#)
                .replace("max_output_tokens = 5\n", "")
                .replace("source = \"test\"", &format!("source = \"test\"\nembedding = {table}"))
        };
        assert!(Catalog::parse(&embed("{ dimensions = 8, dimensions_min = 2, inputs_max = 4 }"))
            .is_ok());
        let check = |text: &str, expected: &str| {
            let error = Catalog::parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        };
        check(&embed("{ dimensions = 8, dimensions_min = 9, inputs_max = 4 }"), "dimensions_min");
        check(&embed("{ dimensions = 8, inputs_max = 0 }"), "inputs_max");
        check(
            &embed("{ dimensions = 8, inputs_max = 4 }")
                .replace("completion = \"0\"", "completion = \"1\""),
            "no completion",
        );
        check(
            &embed("{ dimensions = 8, inputs_max = 4 }")
                .replace("context_length = 10", "context_length = 10\nmax_output_tokens = 5"),
            "no max_output_tokens",
        );
    }

    #[test]
    fn rejects_invalid_entries() {
        let check = |text: &str, expected: &str| {
            let error = Catalog::parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        };
        check(&entry(r#"{ prompt = "0.0000001", completion = "1" }"#), "more than 6 decimals");
        check(&entry(r#"{ prompt = "-1", completion = "1" }"#), "price \"-1\"");
        check(&entry(r#"{ prompt = "10001", completion = "1" }"#), "implausibly high");
        check(&entry(r#"{ prompt = "1" }"#), "completion");
        check(&entry(r#"{ prompt = "1", completion = "1", per_request = "11" }"#), "per_request");
        let valid = entry(r#"{ prompt = "1", completion = "1" }"#);
        check(&format!("{valid}{valid}"), "duplicate id");
        let aliased = valid.replace("created", "aliases = [\"y\"]\ncreated");
        let other = valid.replace("x/y", "x/z");
        check(
            &format!("{aliased}{}", other.replace("created", "aliases = [\"y\"]\ncreated")),
            "alias y",
        );
        check(&format!("{aliased}{}", other.replace("x/z", "y")), "alias y");
        check(&valid.replace("2025-04-14", "2025-14-04"), "created");
        check(&valid.replace("2025-04-14", "1969-12-31"), "created");
        check(
            &valid.replace("max_output_tokens = 5", "max_output_tokens = 11"),
            "max_output_tokens",
        );
        check(&valid.replace("source = \"test\"", "source = \"test\"\nextra = 1"), "unknown field");
        let tier = |above: u64, prompt: &str| {
            valid.replace(
                "source = \"test\"",
                &format!(
                    "source = \"test\"\nlong_context = {{ above_prompt_tokens = {above}, \
                     price = {{ prompt = \"{prompt}\", completion = \"2\" }} }}"
                ),
            )
        };
        check(&tier(10, "2"), "long_context");
        check(&tier(5, "0.5"), "long_context");
        assert!(Catalog::parse(&tier(5, "2")).is_ok());
        let parsed = Catalog::parse(&valid).unwrap();
        // 2025-04-14T00:00:00Z.
        assert_eq!(parsed.get("x/y").unwrap().created_s, 1_744_588_800);
    }

    #[test]
    fn anthropic_ids_are_aliases_of_catalogue_models() {
        let catalog = Catalog::builtin();
        for alias in ["claude-sonnet-4-20250514", "claude-sonnet-4-0", "anthropic/claude-sonnet-4"]
        {
            assert_eq!(catalog.get(alias).unwrap().id, "anthropic/claude-sonnet-4");
        }
        assert_eq!(catalog.get("claude-opus-4-20250514").unwrap().id, "anthropic/claude-opus-4");
        // Claude Code's defaults, dated and undated.
        for (alias, id) in [
            ("claude-sonnet-4-5-20250929", "anthropic/claude-sonnet-4.5"),
            ("claude-sonnet-4-5", "anthropic/claude-sonnet-4.5"),
            ("claude-haiku-4-5-20251001", "anthropic/claude-haiku-4.5"),
            ("claude-haiku-4-5", "anthropic/claude-haiku-4.5"),
            ("claude-opus-4-5", "anthropic/claude-opus-4.5"),
        ] {
            assert_eq!(catalog.get(alias).unwrap().id, id, "{alias}");
        }
        assert!(catalog.get("claude-3-5-haiku-latest").is_none());
        // Listed once, under its id.
        assert_eq!(catalog.models().filter(|model| model.provider == "anthropic").count(), 13);
    }

    /// The current Claude models by their undated Anthropic ids (what Claude Code's
    /// `opus`, `sonnet`, `haiku` and `fable` send), with their 1M context, 128K output,
    /// published prices and controls; older Claude models keep the defaults.
    #[test]
    fn current_claude_models_have_their_limits_prices_and_controls() {
        let catalog = Catalog::builtin();
        let usd = |micro: u128| PicoUsd(micro * 1_000_000);
        let cases = [
            ("claude-fable-5-2", 8, 40, Thinking::AdaptiveAlways, false),
            ("claude-opus-5-5", 4, 20, Thinking::AdaptiveAlways, false),
            ("claude-sonnet-5-5", 2, 10, Thinking::Adaptive, false),
            ("claude-fable-5-1", 10, 50, Thinking::AdaptiveAlways, false),
            ("claude-opus-5", 5, 25, Thinking::Adaptive, true),
            ("claude-sonnet-5", 2, 10, Thinking::Adaptive, true),
            ("claude-fable-5", 10, 50, Thinking::AdaptiveAlways, true),
        ];
        for (alias, prompt, completion, thinking, forced_tool_choice) in cases {
            let model = catalog.get(alias).unwrap();
            assert_eq!(model.upstream_model, alias);
            assert_eq!(model.usage_max(), (1_000_000, 128_000), "{alias}");
            assert_eq!(
                (model.price.prompt, model.price.completion),
                (usd(prompt), usd(completion))
            );
            let controls = Controls { thinking, sampling: false, forced_tool_choice };
            assert_eq!(model.controls, controls, "{alias}");
            assert_eq!(model.long_context, None, "{alias}");
        }
        let haiku = catalog.get("claude-haiku-5-5").unwrap();
        assert_eq!(haiku.controls.thinking, Thinking::Adaptive);
        assert!(!haiku.controls.sampling && haiku.controls.forced_tool_choice);
        // Prompts over 100,000 tokens pay the dearer tier, whole: $0.50/$2.50, not $0.10/$0.50.
        let usage = |prompt_tokens| Usage {
            prompt_tokens,
            completion_tokens: 1_000,
            cached_read_tokens: 10_000,
            ..Usage::default()
        };
        let short = 90_000 * 100_000 + 10_000 * 10_000 + 1_000 * 500_000;
        assert_eq!(haiku.cost(&usage(100_000)), PicoUsd(short));
        let long = 90_001 * 500_000 + 10_000 * 50_000 + 1_000 * 2_500_000;
        assert_eq!(haiku.cost(&usage(100_001)), PicoUsd(long));
        assert_eq!(catalog.get("claude-opus-4-5").unwrap().controls, Controls::default());
    }
}
