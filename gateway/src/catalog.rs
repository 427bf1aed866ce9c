//! The model catalogue: which models exist, who serves them, what they can do and what
//! they cost. The data lives in `catalog.toml`, embedded at build time so a binary and
//! its prices always ship together.
//!
//! Prices are exact: published USD-per-million-token decimals become whole pico-USD per
//! token, and every cost is integer arithmetic on those.

use crate::providers::Usage;
use serde::Deserialize;
use solrouter_ledger::PicoUsd;
use std::collections::HashMap;

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

/// All known models, in catalogue order.
#[derive(Debug, Clone)]
pub struct Catalog {
    models: Vec<Model>,
    /// Ids and aliases alike.
    index_by_id: HashMap<String, usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// The id clients ask for, `provider-family/model`, e.g. `openai/gpt-4o-mini`.
    pub id: String,
    /// The key of the adapter and endpoint that serve it (see `providers::Providers`).
    pub provider: String,
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

/// Request parameters a model takes or refuses (catalogue `controls`; every field
/// defaults to what older models take). Only the Anthropic adapter reads them today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Controls {
    #[serde(default)]
    pub thinking: Thinking,
    /// Whether non-default sampling parameters (`temperature`, `top_p`, `top_k`) are
    /// taken; Claude 4.7 and later models refuse them with a 400.
    #[serde(default = "yes")]
    pub sampling: bool,
    /// Whether forced tool use (`tool_choice` `any`/`tool`, OpenAI's `required` or a
    /// named function) is taken; Claude Opus 5.5, Sonnet 5.5 and Fable 5.1 refuse it.
    #[serde(default = "yes")]
    pub forced_tool_choice: bool,
}

fn yes() -> bool {
    true
}

impl Default for Controls {
    fn default() -> Controls {
        Controls { thinking: Thinking::Budget, sampling: true, forced_tool_choice: true }
    }
}

/// How a model is asked to think.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Thinking {
    /// A token budget (`thinking: {type: enabled, budget_tokens}`), or none: models up
    /// to Claude 4.6, and every non-Claude model.
    #[default]
    Budget,
    /// Adaptive thinking steered by `output_config.effort`, which may be turned off
    /// (`thinking: {type: disabled}`); a budget is refused.
    Adaptive,
    /// Adaptive thinking that is always on: a budget and turning it off are refused.
    AdaptiveAlways,
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

    /// The model of this id or alias.
    pub fn get(&self, id: &str) -> Option<&Model> {
        self.index_by_id.get(id).map(|&model_idx| &self.models[model_idx])
    }

    pub fn models(&self) -> impl Iterator<Item = &Model> {
        self.models.iter()
    }

    fn parse(text: &str) -> Result<Catalog, CatalogError> {
        let file: CatalogFile =
            toml::from_str(text).map_err(|error| CatalogError::Syntax(error.to_string()))?;
        let mut catalog = Catalog {
            models: Vec::with_capacity(file.model.len()),
            index_by_id: HashMap::with_capacity(file.model.len()),
        };
        for entry in file.model {
            let model = entry.validate()?;
            for name in std::iter::once(&model.id).chain(&model.aliases) {
                if catalog.index_by_id.insert(name.clone(), catalog.models.len()).is_some() {
                    return Err(model_error(&model.id, &format!("duplicate id or alias {name}")));
                }
            }
            catalog.models.push(model);
        }
        Ok(catalog)
    }
}

impl Model {
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
            crate::providers::MOCK_PROVIDER => Tokenizer::Words,
            _ => Tokenizer::Estimated,
        }
    }

    /// The most tokens a request to this model can really use: a provider reporting
    /// more is at fault (DESIGN.md §3), and is settled at this bound.
    pub fn usage_max(&self) -> (u64, u64) {
        (self.context_length, self.max_output_tokens)
    }
}

impl Price {
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelEntry {
    id: String,
    provider: String,
    upstream_model: String,
    #[serde(default)]
    aliases: Vec<String>,
    /// The release date, `YYYY-MM-DD` (UTC); `source` says where it was read.
    created: String,
    context_length: u64,
    /// Required, except of embedding models, which must have none.
    max_output_tokens: Option<u64>,
    input_modalities: Vec<String>,
    output_modalities: Vec<String>,
    capabilities: Capabilities,
    #[serde(default)]
    controls: Controls,
    price: PriceEntry,
    long_context: Option<LongContextEntry>,
    source: String,
    embedding: Option<EmbeddingEntry>,
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
    fn validate(self) -> Result<Model, CatalogError> {
        let id = &self.id;
        if self.provider.is_empty() || self.upstream_model.is_empty() || self.source.is_empty() {
            return Err(model_error(id, "provider, upstream_model and source are required"));
        }
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
        let price = self.price.validate(id)?;
        if embedding.is_some() && price.completion != PicoUsd::ZERO {
            return Err(model_error(id, "an embedding model bills no completion tokens"));
        }
        let long_context = match &self.long_context {
            None => None,
            Some(tier) => {
                let dearer = tier.price.validate(id)?;
                let cheaper = [
                    (dearer.prompt, price.prompt),
                    (dearer.completion, price.completion),
                    (dearer.per_request, price.per_request),
                ];
                if tier.above_prompt_tokens >= self.context_length
                    || cheaper.iter().any(|(long, short)| long < short)
                {
                    return Err(model_error(
                        id,
                        "long_context must start inside the context and cost no less",
                    ));
                }
                Some(LongContext { above_prompt_tokens: tier.above_prompt_tokens, price: dearer })
            }
        };
        Ok(Model {
            id: self.id,
            provider: self.provider,
            upstream_model: self.upstream_model,
            aliases: self.aliases,
            created_s,
            context_length: self.context_length,
            max_output_tokens,
            input_modalities: self.input_modalities,
            output_modalities: self.output_modalities,
            capabilities: self.capabilities,
            controls: self.controls,
            price,
            long_context,
            source: self.source,
            embedding,
        })
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
