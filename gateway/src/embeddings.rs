//! `POST /v1/api/embeddings`, OpenAI's embeddings API over every provider that serves
//! embedding models (the catalogue's models with an `embedding` table). It shares the
//! pipeline's stages (`pipeline.rs`): accept, route, hold, first answer with fallback,
//! settle with the record; only the request, the billing and the answer are its own.
//!
//! * Input: `input` a string or an array of strings (at most [`INPUTS_MAX`], none
//!   empty), or OpenAI's token ids (an array of integers, or an array of them), which
//!   only models whose provider takes them (OpenAI) are routed; `model` and the
//!   `models` fallbacks; `dimensions`, which routing checks
//!   against each model's vector lengths; `encoding_format` `float` (the default) or
//!   `base64` (OpenAI's: the little-endian `f32`s, whatever the provider sent); `user`
//!   (to OpenAI-compatible hosts) and Cohere's `input_type` (to Cohere only); the
//!   `provider` object, routed as a chat's is (`routing.rs`: `max_price` at the tier
//!   the hold's input bound reaches, `require_parameters` over `dimensions` and
//!   `encoding_format`).
//! * Money: the hold is the worst case at the dearest candidate's input price, each
//!   input counted at its bytes (every tokenizer spends at least a byte per token) or
//!   its token ids, plus
//!   [`INPUT_OVERHEAD_TOKENS_MAX`], capped at the model's input limit. The settle bills
//!   the provider's input tokens (OpenAI and Mistral `usage.prompt_tokens`, Cohere
//!   `meta.billed_units.input_tokens`); Gemini reports none, so its requests are billed
//!   at the gateway's own count of the inputs (`tokens::count`, `o200k_base`) and
//!   recorded as `usage_estimated`. A report above the hold's bound is clamped to it
//!   (`usage_clamped`).
//! * Output: OpenAI's `list` of `embedding` objects, plus `id` (`gen-…`, the record in
//!   `/generation`), `provider`, and `usage` with `cost`, what the ledger charged.

use crate::app::App;
use crate::attempt::{self, Failure};
use crate::bank::{now_ms, Caller};
use crate::catalog::{Model, EMBEDDING_PARAMETERS};
use crate::error::ApiError;
use crate::parse;
use crate::pipeline::{self, WorstCase};
use crate::providers::embed::encode_base64;
use crate::providers::{EmbedRequest, EmbedTarget, Embeddings, Encoding, Input, Usage};
use crate::respond::{self, Response};
use crate::routing::Preferences;
use crate::tokens::{self, Billed};
use crate::upstream::Deadlines;
use crate::wire;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::{Map, Value};
use solrouter_ledger::{HoldId, PicoUsd, RequestRecord};
use tokio::time::Instant;

/// Most inputs one request may carry: OpenAI's limit, the largest of any provider's.
/// Routing skips models that take fewer (`Embedding::inputs_max`).
pub const INPUTS_MAX: usize = 2048;
/// Tokens a provider may add to one input beyond its text (start and end markers),
/// reserved for each input.
pub const INPUT_OVERHEAD_TOKENS_MAX: u64 = 8;
/// The longest `input_type` and `user` passed on.
const LABEL_BYTES_MAX: usize = 256;

/// A validated embeddings request and its routing fields.
#[derive(Debug)]
pub struct ParsedEmbed {
    pub request: EmbedRequest,
    pub model_ids: Vec<String>,
    /// The vector length asked for, if any.
    pub dimensions: Option<u32>,
    /// The `provider` object.
    pub routing: Preferences,
    /// The parameters the request sets, of [`EMBEDDING_PARAMETERS`].
    pub parameters: Vec<&'static str>,
}

/// `POST /v1/api/embeddings`. Errors are OpenAI-shaped, rendered by the caller.
pub async fn handle(app: &'static App, request: Request<Incoming>) -> Result<Response, ApiError> {
    let started = Instant::now();
    // The head dropped at once (`_`, not a named binding that lives to the end), as
    // `pipeline::handle` does: it pins the connection's read buffer.
    let (_, caller, body) = pipeline::accept(app, request).await?;
    let parsed = parse(&body)?;
    drop(body);
    let created_ms = now_ms();
    let generation = crate::keys::fresh_hold(created_ms);
    let candidates = route(app, &parsed, generation.0 as u64)?;
    let context = EmbedContext {
        caller,
        generation,
        request: parsed.request,
        dimensions: parsed.dimensions,
        candidates,
        started,
        created_ms,
        deadline: started + app.upstream.timeouts().total,
    };
    pipeline::detached(move |reply| async move {
        let _ = reply.send(run(app, context).await);
    })
    .await
}

/// Validates the body: a 400 naming the parameter.
pub fn parse(body: &[u8]) -> Result<ParsedEmbed, ApiError> {
    let model_ids = parse::model_ids(&parse::object(body)?)?;
    let body = parse::json_object(body)?;
    let routing = Preferences::parse(body.get("provider"))?;
    let parameters = EMBEDDING_PARAMETERS
        .into_iter()
        .filter(|parameter| body.get(*parameter).is_some_and(|value| !value.is_null()))
        .collect();
    let inputs = inputs(&body)?;
    let dimensions = match body.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(value) => {
            let dimensions = value.as_u64().and_then(|value| u32::try_from(value).ok());
            let positive = dimensions.filter(|dimensions| *dimensions > 0);
            Some(positive.ok_or_else(|| {
                ApiError::invalid_param("dimensions", "must be a positive integer")
            })?)
        }
    };
    let encoding = match body.get("encoding_format").and_then(Value::as_str) {
        _ if body.get("encoding_format").is_none_or(Value::is_null) => Encoding::Float,
        Some("float") => Encoding::Float,
        Some("base64") => Encoding::Base64,
        _ => return Err(ApiError::invalid_param("encoding_format", "must be `float` or `base64`")),
    };
    let request = EmbedRequest {
        inputs,
        encoding,
        input_type: label(&body, "input_type")?,
        user: label(&body, "user")?,
    };
    Ok(ParsedEmbed { request, model_ids, dimensions, routing, parameters })
}

/// `input`: a string, an array of token ids, or an array of strings or of token-id
/// arrays; at most [`INPUTS_MAX`] inputs, none empty.
fn inputs(body: &Map<String, Value>) -> Result<Vec<Input>, ApiError> {
    let inputs = match body.get("input") {
        Some(Value::String(text)) => vec![Input::Text(text.clone())],
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(ApiError::invalid_param("input", "must not be empty"));
        }
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
            vec![Input::Tokens(token_ids(items, "input")?)]
        }
        Some(Value::Array(items)) if items.len() > INPUTS_MAX => {
            let message = format!("has {} inputs, more than the {INPUTS_MAX} allowed", items.len());
            return Err(ApiError::invalid_param("input", message));
        }
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(item_idx, item)| {
                let param = format!("input[{item_idx}]");
                match item {
                    Value::String(text) => Ok(Input::Text(text.clone())),
                    Value::Array(ids) => Ok(Input::Tokens(token_ids(ids, &param)?)),
                    _ => Err(ApiError::invalid_param(&param, "must be a string or token ids")),
                }
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::invalid_param("input", "must be a string or an array"));
        }
        None => return Err(ApiError::invalid_param("input", "is required")),
    };
    let is_empty = |input: &Input| match input {
        Input::Text(text) => text.is_empty(),
        Input::Tokens(ids) => ids.is_empty(),
    };
    if let Some(empty_idx) = inputs.iter().position(is_empty) {
        let param =
            if inputs.len() == 1 { "input".to_owned() } else { format!("input[{empty_idx}]") };
        return Err(ApiError::invalid_param(&param, "must not be empty"));
    }
    Ok(inputs)
}

/// An array of token ids (non-negative integers below 2^32).
fn token_ids(items: &[Value], param: &str) -> Result<Vec<u32>, ApiError> {
    items
        .iter()
        .map(|item| item.as_u64().and_then(|id| u32::try_from(id).ok()))
        .collect::<Option<_>>()
        .ok_or_else(|| ApiError::invalid_param(param, "token ids must be non-negative integers"))
}

/// An optional short string field.
fn label(body: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if !text.is_empty() && text.len() <= LABEL_BYTES_MAX => {
            Ok(Some(text.clone()))
        }
        Some(_) => {
            let message = format!("must be a non-empty string of at most {LABEL_BYTES_MAX} bytes");
            Err(ApiError::invalid_param(field, message))
        }
    }
}

/// The candidates: endpoints of embedding models that produce vectors of the length
/// asked for, take this many inputs, and token ids if there are any, as the `provider`
/// object orders and filters them; `seed` draws the default routing's choice.
fn route(
    app: &'static App,
    parsed: &ParsedEmbed,
    seed: u64,
) -> Result<Vec<&'static Model>, ApiError> {
    let n_inputs = parsed.request.inputs.len();
    let has_tokens = parsed.request.inputs.iter().any(|input| input.text().is_none());
    let prompt_tokens = |model: &Model| input_tokens_max(&parsed.request, model);
    let asked = pipeline::Asked {
        preferences: &parsed.routing,
        parameters: &parsed.parameters,
        prompt_tokens: &prompt_tokens,
        seed,
    };
    let (catalog, providers, health) = (&app.catalog, &app.providers, &app.health);
    pipeline::route_by(catalog, providers, health, &parsed.model_ids, &asked, |id, model| {
        let Some(embedding) = &model.embedding else {
            let message = format!("`{id}` is not an embedding model");
            return Some(ApiError::invalid_param("model", message));
        };
        let takes_tokens = app.providers.get(&model.provider).is_some_and(|(adapter, _)| {
            adapter.embedder().is_some_and(|embedder| embedder.takes_tokens())
        });
        if has_tokens && !takes_tokens {
            let message = format!("model `{id}` embeds text only, not token ids");
            return Some(ApiError::invalid_param("input", message));
        }
        if let Some(dimensions) = parsed.dimensions.filter(|wanted| !embedding.allows(*wanted)) {
            let message =
                format!("model `{id}` does not produce vectors of {dimensions} dimensions");
            return Some(ApiError::invalid_param("dimensions", message));
        }
        if n_inputs > embedding.inputs_max as usize {
            let message = format!("model `{id}` takes at most {} inputs", embedding.inputs_max);
            return Some(ApiError::invalid_param("input", message));
        }
        None
    })
}

/// Everything the stages learn about one embeddings request.
struct EmbedContext {
    caller: Caller,
    /// The hold paying for the request, also its public id (`gen-…`).
    generation: HoldId,
    request: EmbedRequest,
    dimensions: Option<u32>,
    candidates: Vec<&'static Model>,
    started: Instant,
    created_ms: u64,
    deadline: Instant,
}

/// The most input tokens `request` can be billed at `model`: what the hold covers.
fn input_tokens_max(request: &EmbedRequest, model: &Model) -> u64 {
    request
        .inputs
        .iter()
        .map(|input| {
            let tokens_max = match input {
                Input::Text(text) => text.len(),
                Input::Tokens(ids) => ids.len(),
            };
            (tokens_max as u64).saturating_add(INPUT_OVERHEAD_TOKENS_MAX).min(model.context_length)
        })
        .fold(0, u64::saturating_add)
}

impl EmbedContext {
    /// What one attempt at `model` asks for: the length wanted, unless it is the
    /// model's default (some providers refuse the parameter for fixed-length models).
    fn target<'m>(&self, model: &'m Model) -> EmbedTarget<'m> {
        let default = model.embedding.as_ref().map(|embedding| embedding.dimensions);
        let dimensions = self.dimensions.filter(|wanted| Some(*wanted) != default);
        EmbedTarget { upstream_model: &model.upstream_model, dimensions }
    }

    fn record(&self, model: &Model, billed: &Billed) -> RequestRecord {
        let latency_ms = self.started.elapsed().as_millis() as u64;
        RequestRecord {
            key: Some(self.caller.key),
            model: model.id.clone(),
            provider: model.provider.clone(),
            prompt_tokens: billed.usage.prompt_tokens,
            latency_ms,
            // The vectors arrive whole: the first output is the answer.
            ttft_ms: Some(latency_ms),
            status: StatusCode::OK.as_u16(),
            streamed: false,
            created_ms: self.created_ms,
            usage_estimated: billed.estimated,
            usage_clamped: billed.clamped,
            ..RequestRecord::default()
        }
    }
}

/// Stages 6–8: hold the worst case, get the first answer, settle, answer.
async fn run(app: &'static App, context: EmbedContext) -> Result<Response, ApiError> {
    let worst = context
        .candidates
        .iter()
        .map(|model| {
            let tokens = input_tokens_max(&context.request, model);
            (*model, tokens, model.bound(tokens, 0))
        })
        .max_by_key(|(_, _, amount)| *amount)
        .map(|(model, tokens, amount)| WorstCase {
            model,
            amount,
            covers: pipeline::Covers::Input { tokens },
            remedy: "Send fewer or shorter inputs, or add credits.",
        })
        .ok_or_else(|| ApiError::internal("routing left no candidate"))?;
    let hold = pipeline::hold(app, context.caller, context.generation, worst).await?;
    let answer =
        attempt::first_answer(app, &context.candidates, |model| attempt(app, &context, model))
            .await;
    let (model, embeddings) = match answer {
        Ok(answer) => answer,
        Err(error) => {
            hold.release().await;
            return Err(error);
        }
    };
    let billed = bill(&context, model, embeddings.input_tokens).await;
    let cost = model.cost(&billed.usage);
    let charged = hold.settle(cost, context.record(model, &billed)).await;
    let id = wire::generation_id(context.generation);
    let body = answer_body(&id, model, &embeddings, context.request.encoding, &billed, charged);
    Ok(respond::text(StatusCode::OK, body, "application/json"))
}

/// One attempt at one candidate.
async fn attempt(
    app: &'static App,
    context: &EmbedContext,
    model: &'static Model,
) -> Result<Embeddings, Failure> {
    let (adapter, endpoint) = attempt::provider(app, model)?;
    let embedder = adapter.embedder().ok_or_else(|| {
        let message = format!("provider `{}` serves no embeddings", model.provider);
        Failure::Final(ApiError::unavailable(message))
    })?;
    let request = embedder.embed_request(endpoint, &context.request, &context.target(model));
    let deadlines = Deadlines::attempt(app.upstream.timeouts(), context.deadline);
    let mut body = app.upstream.send(adapter, request, &deadlines).await?;
    let body = app.upstream.body(&mut body, &deadlines, adapter.provider()).await?;
    Ok(embedder.embed_response(&context.request, &body)?)
}

/// The input tokens to bill at `model`: the provider's report when it has one within
/// the hold's bound (clamped to it when above); else the gateway's count of the inputs,
/// done off the async workers.
async fn bill(context: &EmbedContext, model: &'static Model, reported: Option<u64>) -> Billed {
    let bound = input_tokens_max(&context.request, model);
    let billed = |prompt_tokens, estimated, clamped| Billed {
        usage: Usage { prompt_tokens, ..Usage::default() },
        estimated,
        clamped,
    };
    match reported {
        Some(tokens) if tokens > bound => {
            tracing::warn!(model = %model.id, tokens, bound, "input tokens beyond the bound");
            return billed(bound, false, true);
        }
        Some(tokens) if tokens > 0 => return billed(tokens, false, false),
        _ => {}
    }
    let inputs = context.request.inputs.clone();
    let counting = tokio::task::spawn_blocking(move || {
        inputs
            .iter()
            .map(|input| match input {
                Input::Text(text) => tokens::count(model.tokenizer(), text),
                Input::Tokens(ids) => ids.len() as u64,
            })
            .fold(0, u64::saturating_add)
    });
    // Counting never panics on any text; if it did, bill the bound the client accepted.
    let counted = counting.await.unwrap_or(bound);
    billed(counted.clamp(1, bound), true, false)
}

/// OpenAI's embeddings list, with the gateway's `id`, `provider` and `usage.cost`.
fn answer_body(
    id: &str,
    model: &Model,
    embeddings: &Embeddings,
    encoding: Encoding,
    billed: &Billed,
    cost: PicoUsd,
) -> Vec<u8> {
    let data: Vec<Item> = embeddings
        .vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| Item {
            object: "embedding",
            index,
            embedding: match encoding {
                Encoding::Float => Vector::Float(vector),
                Encoding::Base64 => Vector::Base64(encode_base64(vector)),
            },
        })
        .collect();
    let prompt_tokens = billed.usage.prompt_tokens;
    let body = List {
        id,
        object: "list",
        model: &model.id,
        provider: &model.provider,
        data,
        usage: EmbedUsage { prompt_tokens, total_tokens: prompt_tokens, cost: cost.to_usd_f64() },
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

#[derive(Serialize)]
struct List<'a> {
    id: &'a str,
    object: &'static str,
    model: &'a str,
    provider: &'a str,
    data: Vec<Item<'a>>,
    usage: EmbedUsage,
}

#[derive(Serialize)]
struct Item<'a> {
    object: &'static str,
    index: usize,
    embedding: Vector<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Vector<'a> {
    Float(&'a [f32]),
    Base64(String),
}

#[derive(Serialize)]
struct EmbedUsage {
    prompt_tokens: u64,
    total_tokens: u64,
    /// USD, what the ledger charged (`PicoUsd::to_usd_f64`).
    cost: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(body: Value) -> Result<ParsedEmbed, Value> {
        parse(body.to_string().as_bytes()).map_err(|error| error.to_json())
    }

    #[test]
    fn parses_text_inputs_and_options() {
        let one = parsed(json!({"model": "m", "input": "hi"})).unwrap();
        assert_eq!(one.request.inputs, [Input::Text("hi".into())]);
        assert_eq!(one.request.encoding, Encoding::Float);
        assert_eq!((one.dimensions, one.model_ids), (None, vec!["m".to_owned()]));
        let many = parsed(json!({"model": "m", "models": ["n"], "input": ["a", "b"],
            "dimensions": 256, "encoding_format": "base64", "input_type": "search_query",
            "user": "u-1"}))
        .unwrap();
        assert_eq!(many.request.inputs, [Input::Text("a".into()), Input::Text("b".into())]);
        let ids = parsed(json!({"model": "m", "input": [1, 2, 3]})).unwrap();
        assert_eq!(ids.request.inputs, [Input::Tokens(vec![1, 2, 3])]);
        let mixed = parsed(json!({"model": "m", "input": [[4, 5], "six"]})).unwrap();
        assert_eq!(mixed.request.inputs, [Input::Tokens(vec![4, 5]), Input::Text("six".into())]);
        assert_eq!(many.request.encoding, Encoding::Base64);
        assert_eq!(many.dimensions, Some(256));
        assert_eq!(many.request.input_type.as_deref(), Some("search_query"));
        assert_eq!(many.request.user.as_deref(), Some("u-1"));
        assert_eq!(many.model_ids, ["m", "n"]);
        let null_format = parsed(json!({"model": "m", "input": "a", "encoding_format": null}));
        let null_format = null_format.unwrap();
        assert_eq!(null_format.request.encoding, Encoding::Float);
        assert!(null_format.parameters.is_empty());
        assert_eq!(null_format.routing, Preferences::default());
        assert_eq!(many.parameters, ["encoding_format", "dimensions"]);
        let routed = parsed(json!({"model": "m", "input": "a",
            "provider": {"order": ["mock"], "allow_fallbacks": false, "zdr": true}}))
        .unwrap();
        assert_eq!(routed.routing.order, ["mock"]);
        assert!(!routed.routing.allow_fallbacks && routed.routing.zdr);
    }

    #[test]
    fn refuses_bad_input_naming_the_parameter() {
        let check = |body: Value, param: &str| {
            let error = parsed(body).expect_err("refused");
            assert_eq!(error["error"]["param"], param, "{error}");
        };
        check(json!({"input": "a"}), "model");
        check(json!({"model": "m"}), "input");
        check(json!({"model": "m", "input": ""}), "input");
        check(json!({"model": "m", "input": []}), "input");
        check(json!({"model": "m", "input": ["a", ""]}), "input[1]");
        check(json!({"model": "m", "input": [[1, -2]]}), "input[0]");
        check(json!({"model": "m", "input": [[]]}), "input");
        check(json!({"model": "m", "input": ["a", {"t": 1}]}), "input[1]");
        check(json!({"model": "m", "input": [1.5]}), "input");
        check(json!({"model": "m", "input": 5}), "input");
        check(json!({"model": "m", "input": vec!["a"; INPUTS_MAX + 1]}), "input");
        check(json!({"model": "m", "input": "a", "dimensions": 0}), "dimensions");
        check(json!({"model": "m", "input": "a", "dimensions": -3}), "dimensions");
        check(json!({"model": "m", "input": "a", "dimensions": "8"}), "dimensions");
        check(json!({"model": "m", "input": "a", "encoding_format": "int8"}), "encoding_format");
        check(json!({"model": "m", "input": "a", "input_type": 3}), "input_type");
        check(json!({"model": "m", "input": "a", "provider": {"sort": "x"}}), "provider.sort");
        check(json!({"model": "m", "input": "a", "provider": {"zdr": 1}}), "provider.zdr");
        assert!(parsed(json!({"model": "m", "input": vec!["a"; INPUTS_MAX]})).is_ok());
    }

    #[test]
    fn answers_float_or_little_endian_base64() {
        let catalog = crate::catalog::Catalog::builtin();
        let model = catalog.get("mock/embed").unwrap();
        let embeddings =
            Embeddings { vectors: vec![vec![1.0, -0.5], vec![0.25, 2.0]], input_tokens: Some(3) };
        let billed = Billed {
            usage: Usage { prompt_tokens: 3, ..Usage::default() },
            estimated: false,
            clamped: false,
        };
        let cost = PicoUsd(3_000_000);
        let body = |encoding| {
            let bytes = answer_body("gen-1", model, &embeddings, encoding, &billed, cost);
            serde_json::from_slice::<Value>(&bytes).unwrap()
        };
        let floats = body(Encoding::Float);
        assert_eq!(floats["object"], "list");
        assert_eq!(floats["model"], "mock/embed");
        assert_eq!(
            floats["data"][1],
            json!({"object": "embedding", "index": 1,
            "embedding": [0.25, 2.0]})
        );
        assert_eq!(
            floats["usage"],
            json!({"prompt_tokens": 3, "total_tokens": 3,
            "cost": 0.000003})
        );
        let base64 = body(Encoding::Base64);
        // 1.0 = 00 00 80 3f, -0.5 = 00 00 00 bf.
        assert_eq!(base64["data"][0]["embedding"], "AACAPwAAAL8=");
    }
}
