//! Anthropic Messages (`POST /v1/messages`, `POST /v1/messages/count_tokens` and
//! `GET /v1/models` at the gateway's root, where the `anthropic` SDKs and Claude Code put
//! their base URL): the codec that reads a Messages request into the pipeline's terms
//! and writes answers, streams and errors in Anthropic's shape.
//!
//! A Claude model is served natively: the request goes to Anthropic as the client sent it
//! (`ChatRequest::native`), and Anthropic's answer comes back as it came, with the id,
//! the model and the usage (plus `cost`) the gateway billed set. Any other model gets the
//! request translated to an OpenAI chat request (the pipeline's own form, which every
//! adapter reads) and the answer translated back: text, images, tools and tool results,
//! `tool_choice`, thinking (as a reasoning effort), stop sequences, streaming with
//! Anthropic's event sequence. A feature with no translation (server tools, documents,
//! `top_k`, …) leaves only Claude models as candidates.

use crate::app::App;
use crate::body::UnreadBody;
use crate::catalog::Model;
use crate::codec::{Answered, Codec, StreamEncoder};
use crate::error::{ApiError, ErrorShape};
use crate::parse::{self, ParsedChat, GATEWAY_FIELDS};
use crate::providers::{
    anthropic, ChatRequest, Choice, Chunk, Completion, Message, Native, NativeFormat, Usage,
};
use crate::respond::{self, Response};
use crate::sse::SseEvent;
use crate::tokens;
use crate::upstream::Deadlines;
use crate::wire::write_event;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{json, Map, Value};
use solrouter_ledger::PicoUsd;
use tokio::time::Instant;

/// Fields of a Messages request the gateway reads itself, or that have an OpenAI chat
/// equivalent.
const FIELDS_TRANSLATED: [&str; 13] = [
    "model",
    "messages",
    "system",
    "max_tokens",
    "stream",
    "temperature",
    "top_p",
    "stop_sequences",
    "tools",
    "tool_choice",
    "thinking",
    "metadata",
    "output_config",
];

/// Fields that tune how Anthropic serves a request, not what it answers (prompt caching,
/// service tier and speed, diagnostics): other providers do without them.
const FIELDS_ANTHROPIC_ONLY_HINTS: [&str; 4] =
    ["cache_control", "service_tier", "speed", "diagnostics"];

/// Anthropic server tools billed per use on top of tokens (`web_search_…`: per search;
/// `code_execution_…`: per container hour), by their `type`'s prefix.
const TOOLS_BILLED_PER_USE: [&str; 2] = ["web_search", "code_execution"];

/// `anthropic-beta` features that raise the price above the catalogue's (the 1M-token
/// context, fast mode), by prefix.
const BETAS_PRICED_ABOVE_CATALOGUE: [&str; 2] = ["context-1m-", "fast-mode-"];

/// Client headers forwarded to Anthropic with a native request, unchanged (what Claude
/// Code's gateway protocol asks of a gateway).
const FORWARDED_HEADERS: [&str; 2] = ["anthropic-beta", "anthropic-version"];

/// Anthropic Messages.
pub struct Messages;

pub static MESSAGES: Messages = Messages;

impl Codec for Messages {
    fn errors(&self) -> ErrorShape {
        ErrorShape::Anthropic
    }

    fn parse(&self, body: &Bytes, headers: &HeaderMap) -> Result<ParsedChat, ApiError> {
        parse_messages(body, headers, true)
    }

    fn completion(
        &self,
        answer: &Answered,
        completion: Completion,
        native: Option<&[u8]>,
        cost: PicoUsd,
    ) -> Vec<u8> {
        let native = native.and_then(|body| serde_json::from_slice::<Value>(body).ok());
        let message = match native {
            Some(Value::Object(mut message)) => {
                message.insert("id".to_owned(), Value::from(answer.id));
                message.insert("model".to_owned(), Value::from(answer.model.id.as_str()));
                let usage = usage_json(message.get("usage"), &completion.usage, cost);
                message.insert("usage".to_owned(), usage);
                Value::Object(message)
            }
            _ => translated_message(answer, completion, cost),
        };
        serde_json::to_vec(&message).unwrap_or_default()
    }

    fn encoder(&self, answer: &Answered, native: bool) -> Box<dyn StreamEncoder> {
        Box::new(EventEncoder {
            id: answer.id.to_owned(),
            model: answer.model.id.clone(),
            native,
            started: false,
            block: None,
            n_blocks: 0,
            finish_reason: None,
            held_delta: None,
        })
    }
}

/// `POST /v1/messages/count_tokens`: the prompt's tokens for the model, free of charge.
/// A model whose provider has its own count (Claude at Anthropic) gets that; any other,
/// or when the provider's count fails, the gateway's (`tokens::prompt_tokens_estimate`:
/// the text of the system prompt, messages, tool calls and results and the tool
/// definitions, tokenized with `o200k_base`: exact for OpenAI models, an estimate for
/// others; images are not counted).
pub async fn count_tokens(
    app: &'static App,
    request: Request<Incoming>,
) -> Result<Response, ApiError> {
    let limit = app.config.body_bytes_max();
    let (head, body) = request.into_parts();
    let body = UnreadBody::new(&head.headers, body, limit)?;
    app.bank.authenticate(&head.headers).await?;
    let body = body.read(limit).await?;
    let parsed = parse_messages(&body, &head.headers, false)?;
    // Before the provider's count is awaited, as `pipeline::handle` does: the head and
    // the body pin the connection's read buffer.
    drop((head, body));
    let id =
        parsed.model_ids.first().ok_or_else(|| ApiError::invalid_param("model", "is required"))?;
    let model = app.catalog.get(id).ok_or_else(|| ApiError::model_not_found(id))?;
    let chat = parsed.chat;
    if let Some(input_tokens) = provider_count(app, model, &chat).await {
        return Ok(respond::json(StatusCode::OK, &json!({"input_tokens": input_tokens})));
    }
    let counting = tokio::task::spawn_blocking(move || {
        tokens::prompt_tokens_estimate(model, chat.body.tree())
    });
    let input_tokens =
        counting.await.map_err(|error| ApiError::internal(format!("counting tokens: {error}")))?;
    Ok(respond::json(StatusCode::OK, &json!({"input_tokens": input_tokens})))
}

/// The provider's own count of the prompt, if its adapter has one for this request and
/// it answers within the upstream timeouts.
async fn provider_count(app: &'static App, model: &Model, chat: &ChatRequest) -> Option<u64> {
    let (adapter, endpoint) = app.providers.get(&model.provider)?;
    let request = adapter.count_tokens_request(endpoint, chat, &model.upstream_model)?;
    let timeouts = app.upstream.timeouts();
    let deadlines = Deadlines::attempt(timeouts, Instant::now() + timeouts.total);
    let counted = async {
        let mut body = app.upstream.send(adapter, request, &deadlines).await?;
        app.upstream.body(&mut body, &deadlines, adapter.provider()).await
    };
    match counted.await {
        Ok(body) => {
            let answer = serde_json::from_slice::<Value>(&body).unwrap_or_default();
            let input_tokens = answer["input_tokens"].as_u64();
            if input_tokens.is_none() {
                tracing::warn!(
                    provider = adapter.provider(),
                    "count_tokens answer has no input_tokens"
                );
            }
            input_tokens
        }
        Err(error) => {
            tracing::warn!(provider = adapter.provider(), error = %error.message, "count_tokens failed; estimating");
            None
        }
    }
}

/// `GET /v1/models`: the models with a configured host in Anthropic's list shape, for the
/// Anthropic SDKs' `models.list()` and Claude Code's model discovery (prices and limits
/// are in `/v1/api/models`).
pub fn models(app: &'static App) -> Response {
    let data: Vec<Value> = app
        .catalog
        .models()
        // Embedding models answer no messages.
        .filter(|model| {
            let endpoints = app.catalog.endpoints(&model.id).unwrap_or_default();
            let served = endpoints.iter().any(|endpoint| app.providers.enabled(&endpoint.provider));
            served && model.embedding.is_none()
        })
        .map(|model| {
            json!({"type": "model", "id": model.id, "display_name": model.id,
                "created_at": crate::api::utc_rfc3339(model.created_s.saturating_mul(1000))})
        })
        .collect();
    let (first_id, last_id) = (
        data.first().map(|model| model["id"].clone()),
        data.last().map(|model| model["id"].clone()),
    );
    let body = json!({"data": data, "has_more": false, "first_id": first_id, "last_id": last_id});
    respond::json(StatusCode::OK, &body)
}

/// Reads a Messages request: its OpenAI translation for the pipeline, the request itself
/// for Anthropic, and what only Anthropic can serve. `max_tokens` is required of a
/// message, not of a token count.
fn parse_messages(
    body: &[u8],
    headers: &HeaderMap,
    needs_max_tokens: bool,
) -> Result<ParsedChat, ApiError> {
    let mut request = parse::json_object(body)?;
    refuse_unpriced(&request, headers)?;
    let mut native_only = None;
    let mut chat = Map::new();
    for field in GATEWAY_FIELDS {
        if let Some(value) = request.remove(field) {
            chat.insert(field.to_owned(), value);
        }
    }
    if let Some(fallbacks) = request.remove("fallbacks").filter(|value| !value.is_null()) {
        if chat.get("models").is_some_and(|models| !models.is_null()) {
            let message = "name the fallback models in `fallbacks` or in `models`, not both";
            return Err(ApiError::invalid_param("fallbacks", message));
        }
        chat.insert("models".to_owned(), fallback_models(&fallbacks)?);
    }
    for field in request.keys() {
        let known = FIELDS_TRANSLATED.contains(&field.as_str())
            || FIELDS_ANTHROPIC_ONLY_HINTS.contains(&field.as_str());
        if !known && !request[field].is_null() {
            native_only.get_or_insert_with(|| untranslatable(field, "has no translation"));
        }
    }
    chat.insert("model".to_owned(), request.get("model").cloned().unwrap_or(Value::Null));
    match request.get("max_tokens") {
        Some(max_tokens) => {
            chat.insert("max_tokens".to_owned(), max_tokens.clone());
        }
        None if needs_max_tokens => {
            return Err(ApiError::invalid_param("max_tokens", "is required"))
        }
        None => {}
    }
    let stream = request.get("stream").cloned().unwrap_or(Value::Bool(false));
    chat.insert("stream".to_owned(), stream);
    for field in ["temperature", "top_p"] {
        if let Some(value) = request.get(field).filter(|value| !value.is_null()) {
            chat.insert(field.to_owned(), value.clone());
        }
    }
    if let Some(stops) = request.get("stop_sequences").filter(|stops| !stops.is_null()) {
        chat.insert("stop".to_owned(), stops.clone());
    }
    if let Some(user) = request.get("metadata").and_then(|metadata| metadata.get("user_id")) {
        if let Some(user) = user.as_str() {
            chat.insert("user".to_owned(), Value::from(user));
        }
    }
    let messages = messages(&request, &mut native_only)?;
    chat.insert("messages".to_owned(), Value::Array(messages));
    tools(&request, &mut chat, &mut native_only)?;
    thinking(&request, &mut chat)?;
    output_config(&request, &mut chat)?;
    let n_media = media_blocks(&request);
    let mut parsed = parse::parse_object(chat, body.len())?;
    parsed.prompt_tokens_max =
        parsed.prompt_tokens_max.max(parse::prompt_tokens_max(body.len(), n_media));
    parsed.wants_images |= n_media > 0;
    let mut forwarded = HeaderMap::new();
    for name in FORWARDED_HEADERS {
        for value in headers.get_all(name) {
            // Copied: a clone would share the connection's read buffer (which the value is
            // a slice of) for as long as the request lives, a stream's whole life. A value
            // hyper accepted always converts; the clone only stands in for a panic.
            let owned = HeaderValue::from_bytes(value.as_bytes());
            forwarded.append(name, owned.unwrap_or_else(|_| value.clone()));
        }
    }
    parsed.chat.native =
        Some(Native { format: NativeFormat::AnthropicMessages, body: request, headers: forwarded });
    parsed.native_only = native_only;
    Ok(parsed)
}

/// Anthropic's server-side `fallbacks` (`[{"model": …}, …]`) as the gateway's own `models`
/// fallbacks, as OpenRouter takes them: never forwarded, since a model Anthropic switched
/// to would answer at a price the gateway neither reserved nor charges. So they are tried
/// when a model fails before anything was sent (an outage, a rate limit), not when it
/// answers with a refusal. Anthropic's `"default"` fallbacks name no model, and an entry
/// may carry only its `model`.
fn fallback_models(fallbacks: &Value) -> Result<Value, ApiError> {
    let entries = fallbacks.as_array().ok_or_else(|| {
        let message = "must be an array of `{\"model\": …}` entries (the gateway cannot price \
                       Anthropic's default fallbacks ahead: name the models)";
        ApiError::invalid_param("fallbacks", message)
    })?;
    let models = entries.iter().enumerate().map(|(at, entry)| {
        let model =
            entry.as_object().filter(|entry| entry.len() == 1).and_then(|entry| entry.get("model"));
        model.filter(|model| model.is_string()).cloned().ok_or_else(|| {
            let message = "must be `{\"model\": \"…\"}`: per-attempt overrides are not supported";
            ApiError::invalid_param(&format!("fallbacks[{at}]"), message)
        })
    });
    models.collect::<Result<Vec<Value>, ApiError>>().map(Value::Array)
}

/// Refuses what Anthropic would bill beyond the catalogue's token prices: the gateway
/// charges only what it can price, so forwarding these would charge the customer less
/// than the provider bills.
fn refuse_unpriced(request: &Map<String, Value>, headers: &HeaderMap) -> Result<(), ApiError> {
    let refuse = |param: &str| {
        Err(ApiError::invalid_param(
            param,
            "Anthropic prices it above the catalogue's per-token prices, which is all the \
             gateway charges; not supported",
        ))
    };
    let set = |field: &str| request.get(field).is_some_and(|value| !value.is_null());
    if set("speed") && request["speed"] != "standard" {
        return refuse("speed");
    }
    for field in ["inference_geo", "container"] {
        if set(field) {
            return refuse(field);
        }
    }
    let tools = request.get("tools").and_then(Value::as_array).into_iter().flatten();
    for (tool_idx, tool) in tools.enumerate() {
        let kind = tool.get("type").and_then(Value::as_str).unwrap_or_default();
        if TOOLS_BILLED_PER_USE.iter().any(|prefix| kind.starts_with(prefix)) {
            return refuse(&format!("tools[{tool_idx}]"));
        }
    }
    let betas = headers.get_all("anthropic-beta").iter().filter_map(|value| value.to_str().ok());
    for beta in betas.flat_map(|value| value.split(',')).map(str::trim) {
        if BETAS_PRICED_ABOVE_CATALOGUE.iter().any(|prefix| beta.starts_with(prefix)) {
            return refuse("anthropic-beta");
        }
    }
    Ok(())
}

/// The refusal of a feature for a model not served natively.
fn untranslatable(param: &str, why: &str) -> ApiError {
    ApiError::invalid_param(
        param,
        format!("{why}: only models served in Anthropic's own format (Claude) support it"),
    )
}

/// Image and document blocks anywhere in the messages: each adds its own token bound.
fn media_blocks(request: &Map<String, Value>) -> u64 {
    fn count(value: &Value) -> u64 {
        match value {
            Value::Array(items) => items.iter().map(count).sum(),
            Value::Object(object) => {
                let own = matches!(
                    object.get("type").and_then(Value::as_str),
                    Some("image" | "document")
                );
                u64::from(own) + object.values().map(count).sum::<u64>()
            }
            _ => 0,
        }
    }
    request.get("messages").map_or(0, count)
}

/// The text of a string or of an array of text blocks (`system`, tool results).
fn text_of(
    value: &Value,
    param: &str,
    native_only: &mut Option<ApiError>,
) -> Result<String, ApiError> {
    match value {
        Value::Null => Ok(String::new()),
        Value::String(text) => Ok(text.clone()),
        Value::Array(blocks) => {
            let mut text = String::new();
            for (block_idx, block) in blocks.iter().enumerate() {
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => text.push_str(block["text"].as_str().unwrap_or_default()),
                    _ => {
                        native_only.get_or_insert_with(|| {
                            untranslatable(&format!("{param}[{block_idx}]"), "only text here")
                        });
                    }
                }
            }
            Ok(text)
        }
        _ => Err(ApiError::invalid_param(param, "must be a string or an array of blocks")),
    }
}

/// Anthropic's turns as OpenAI messages: the system prompt first, tool results as
/// `tool` messages ahead of the rest of their user turn, tool uses as tool calls.
fn messages(
    request: &Map<String, Value>,
    native_only: &mut Option<ApiError>,
) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    if let Some(system) = request.get("system").filter(|system| !system.is_null()) {
        let text = text_of(system, "system", native_only)?;
        out.push(json!({"role": "system", "content": text}));
    }
    let turns = match request.get("messages") {
        Some(Value::Array(turns)) if !turns.is_empty() => turns,
        Some(_) => return Err(ApiError::invalid_param("messages", "must be a non-empty array")),
        None => return Err(ApiError::invalid_param("messages", "is required")),
    };
    for (turn_idx, turn) in turns.iter().enumerate() {
        let param = format!("messages[{turn_idx}]");
        let role = match turn.get("role").and_then(Value::as_str) {
            Some(role @ ("user" | "assistant")) => role,
            _ => {
                let param = format!("{param}.role");
                return Err(ApiError::invalid_param(&param, "must be `user` or `assistant`"));
            }
        };
        match (role, turn.get("content")) {
            (_, Some(Value::String(text))) => out.push(json!({"role": role, "content": text})),
            ("user", Some(Value::Array(blocks))) => {
                user_turn(blocks, &param, native_only, &mut out)?
            }
            (_, Some(Value::Array(blocks))) => {
                out.push(assistant_turn(blocks, &param, native_only))
            }
            _ => {
                let param = format!("{param}.content");
                return Err(ApiError::invalid_param(&param, "must be a string or an array"));
            }
        }
    }
    Ok(out)
}

fn user_turn(
    blocks: &[Value],
    param: &str,
    native_only: &mut Option<ApiError>,
    out: &mut Vec<Value>,
) -> Result<(), ApiError> {
    let mut parts = Vec::new();
    for (block_idx, block) in blocks.iter().enumerate() {
        let here = format!("{param}.content[{block_idx}]");
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                parts.push(json!({"type": "text", "text": block["text"]}));
            }
            Some("image") => match image_url(&block["source"]) {
                Some(url) => parts.push(json!({"type": "image_url", "image_url": {"url": url}})),
                None => {
                    native_only.get_or_insert_with(|| untranslatable(&here, "this image source"));
                }
            },
            Some("tool_result") => {
                let id = block["tool_use_id"].as_str().ok_or_else(|| {
                    ApiError::invalid_param(&format!("{here}.tool_use_id"), "is required")
                })?;
                let content = text_of(&block["content"], &format!("{here}.content"), native_only)?;
                out.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
            }
            _ => {
                native_only.get_or_insert_with(|| untranslatable(&here, "this block"));
            }
        }
    }
    let has_tool_results = blocks.iter().any(|block| block["type"] == "tool_result");
    if !parts.is_empty() || !has_tool_results {
        // A turn of untranslatable blocks only stays a (then empty) turn: the translation
        // is never forwarded (`native_only`), but it is what the prompt is estimated from.
        out.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

/// An assistant turn: its text and tool uses. Thinking blocks are Claude's own (signed)
/// and are not shown to other models.
fn assistant_turn(blocks: &[Value], param: &str, native_only: &mut Option<ApiError>) -> Value {
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for (block_idx, block) in blocks.iter().enumerate() {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or_default()),
            Some("tool_use") => tool_calls.push(json!({
                "id": block["id"],
                "type": "function",
                "function": {"name": block["name"], "arguments": block["input"].to_string()},
            })),
            Some("thinking" | "redacted_thinking") => {}
            _ => {
                let here = format!("{param}.content[{block_idx}]");
                native_only.get_or_insert_with(|| untranslatable(&here, "this block"));
            }
        }
    }
    let mut message = json!({"role": "assistant", "content": text});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    message
}

/// A base64 or URL image source as an OpenAI image URL.
fn image_url(source: &Value) -> Option<String> {
    match source.get("type").and_then(Value::as_str)? {
        "base64" => Some(format!(
            "data:{};base64,{}",
            source["media_type"].as_str()?,
            source["data"].as_str()?
        )),
        "url" => source["url"].as_str().map(str::to_owned),
        _ => None,
    }
}

/// Client tools (no `type`, or `custom`: a string `name` and an object `input_schema`, as
/// Anthropic requires, else 400 naming the field) as OpenAI functions; `tool_choice`.
fn tools(
    request: &Map<String, Value>,
    chat: &mut Map<String, Value>,
    native_only: &mut Option<ApiError>,
) -> Result<(), ApiError> {
    if let Some(tools) = request.get("tools").filter(|tools| !tools.is_null()) {
        let tools =
            tools.as_array().ok_or_else(|| ApiError::invalid_param("tools", "must be an array"))?;
        let mut functions = Vec::with_capacity(tools.len());
        for (tool_idx, tool) in tools.iter().enumerate() {
            let custom = matches!(tool.get("type").and_then(Value::as_str), None | Some("custom"));
            if !custom {
                let here = format!("tools[{tool_idx}]");
                native_only.get_or_insert_with(|| untranslatable(&here, "a server tool"));
                continue;
            }
            let field = |name: &str, valid: fn(&Value) -> bool, what: &str| {
                tool.get(name).filter(|value| valid(value)).ok_or_else(|| {
                    ApiError::invalid_param(&format!("tools[{tool_idx}].{name}"), what)
                })
            };
            let name = field("name", Value::is_string, "must be a string")?;
            let schema = field("input_schema", Value::is_object, "must be a JSON Schema object")?;
            let mut function = json!({"name": name, "parameters": schema});
            if let Some(description) = tool.get("description").filter(|value| value.is_string()) {
                function["description"] = description.clone();
            }
            functions.push(json!({"type": "function", "function": function}));
        }
        if !functions.is_empty() {
            chat.insert("tools".to_owned(), Value::Array(functions));
        }
    }
    let Some(choice) = request.get("tool_choice").filter(|choice| !choice.is_null()) else {
        return Ok(());
    };
    let translated = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => match choice.get("name").and_then(Value::as_str) {
            Some(name) => json!({"type": "function", "function": {"name": name}}),
            None => return Err(ApiError::invalid_param("tool_choice.name", "is required")),
        },
        _ => {
            return Err(ApiError::invalid_param(
                "tool_choice.type",
                "must be auto, any, tool or none",
            ))
        }
    };
    if chat.contains_key("tools") {
        chat.insert("tool_choice".to_owned(), translated);
        if choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
            chat.insert("parallel_tool_calls".to_owned(), Value::Bool(false));
        }
    }
    Ok(())
}

/// Manual extended thinking as an OpenAI reasoning effort: the budget's tier in the
/// gateway's one table of budgets (`translate::thinking_budget`: 1024 low, 8192 medium,
/// above high). Adaptive thinking (the model decides) is any model's default.
fn thinking(request: &Map<String, Value>, chat: &mut Map<String, Value>) -> Result<(), ApiError> {
    let Some(thinking) = request.get("thinking").filter(|thinking| !thinking.is_null()) else {
        return Ok(());
    };
    match thinking.get("type").and_then(Value::as_str) {
        Some("enabled") => {
            let budget =
                thinking.get("budget_tokens").and_then(Value::as_u64).ok_or_else(|| {
                    ApiError::invalid_param("thinking.budget_tokens", "must be a positive integer")
                })?;
            let effort = match budget {
                0..=1024 => "low",
                1025..=8192 => "medium",
                _ => "high",
            };
            chat.insert("reasoning_effort".to_owned(), Value::from(effort));
        }
        Some(_) => {}
        None => return Err(ApiError::invalid_param("thinking.type", "is required")),
    }
    Ok(())
}

/// `output_config`: its effort as a reasoning effort (Anthropic's `xhigh` and `max` are
/// OpenAI's `high`), its JSON schema format as a `json_schema` response format.
fn output_config(
    request: &Map<String, Value>,
    chat: &mut Map<String, Value>,
) -> Result<(), ApiError> {
    let Some(config) = request.get("output_config").filter(|config| !config.is_null()) else {
        return Ok(());
    };
    match config.get("effort") {
        None | Some(Value::Null) => {}
        Some(effort) => {
            let effort = match effort.as_str() {
                Some("low") => "low",
                Some("medium") => "medium",
                Some("high" | "xhigh" | "max") => "high",
                _ => {
                    let message = "must be low, medium, high, xhigh or max";
                    return Err(ApiError::invalid_param("output_config.effort", message));
                }
            };
            chat.insert("reasoning_effort".to_owned(), Value::from(effort));
        }
    }
    match config.get("format") {
        None | Some(Value::Null) => {}
        Some(format) if format.get("type").and_then(Value::as_str) == Some("json_schema") => {
            // Anthropic requires the schema; an absent one is no licence for any JSON.
            let Some(schema) = format.get("schema").filter(|schema| schema.is_object()).cloned()
            else {
                let message = "must be a JSON schema object";
                return Err(ApiError::invalid_param("output_config.format.schema", message));
            };
            chat.insert(
                "response_format".to_owned(),
                json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}),
            );
        }
        Some(_) => {
            let message = "must be json_schema";
            return Err(ApiError::invalid_param("output_config.format.type", message));
        }
    }
    Ok(())
}

/// Anthropic's stop reason for an OpenAI finish reason.
fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic's usage object for what was billed, plus `cost` (USD, what the ledger
/// charged). Its `input_tokens` excludes the cached tokens, which ours include; fields of
/// the provider's own usage that the gateway does not bill by (server tool use, service
/// tier) are kept.
fn usage_json(native: Option<&Value>, usage: &Usage, cost: PicoUsd) -> Value {
    let mut object = match native {
        Some(Value::Object(object)) => object.clone(),
        _ => Map::new(),
    };
    let uncached = usage
        .prompt_tokens
        .saturating_sub(usage.cached_read_tokens)
        .saturating_sub(usage.cached_write_tokens);
    object.insert("input_tokens".to_owned(), Value::from(uncached));
    object.insert("output_tokens".to_owned(), Value::from(usage.completion_tokens));
    object.insert("cache_read_input_tokens".to_owned(), Value::from(usage.cached_read_tokens));
    object.insert("cache_creation_input_tokens".to_owned(), Value::from(usage.cached_write_tokens));
    object.insert("cost".to_owned(), Value::from(cost.to_usd_f64()));
    Value::Object(object)
}

/// A tool call's arguments as a tool use's input (an object; unparsable text kept whole
/// under `arguments`, never dropped).
fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(input)) => Value::Object(input),
        _ if arguments.trim().is_empty() => json!({}),
        _ => json!({"arguments": arguments}),
    }
}

/// A translated answer as an Anthropic message.
fn translated_message(answer: &Answered, completion: Completion, cost: PicoUsd) -> Value {
    let choice = completion.choices.first();
    let mut content = Vec::new();
    if let Some(message) = choice.and_then(Choice::message) {
        for field in [&message.reasoning, &message.reasoning_content] {
            if let Some(thinking) = Message::text(field).filter(|text| !text.is_empty()) {
                content.push(json!({"type": "thinking", "thinking": thinking, "signature": ""}));
            }
        }
        if let Some(text) = Message::text(&message.content).filter(|text| !text.is_empty()) {
            content.push(json!({"type": "text", "text": text}));
        }
        for call in message.tool_calls() {
            let arguments = call.arguments().unwrap_or_default();
            content.push(json!({
                "type": "tool_use",
                "id": call.id(),
                "name": call.name(),
                "input": tool_input(arguments),
            }));
        }
    }
    json!({
        "id": answer.id,
        "type": "message",
        "role": "assistant",
        "model": answer.model.id,
        "content": content,
        "stop_reason": stop_reason(choice.and_then(Choice::finish_reason)),
        "stop_sequence": null,
        "usage": usage_json(None, &completion.usage, cost),
    })
}

/// The content block a translated stream has open.
#[derive(Debug, Clone, PartialEq)]
enum Block {
    Thinking,
    Text,
    /// A tool use, by the OpenAI tool call index.
    ToolUse(u64),
}

/// Writes Anthropic's event sequence: `message_start`, then per content block
/// `content_block_start`, its deltas and `content_block_stop`, then `message_delta`
/// (stop reason, usage with `cost`) and `message_stop`, held back until the settle; a
/// broken stream ends with an `error` event instead. A native stream's events are
/// relayed as they came (id and model set on `message_start`); a translated one's are
/// built from its chunks.
struct EventEncoder {
    id: String,
    model: String,
    native: bool,
    started: bool,
    /// The open block of a translated stream.
    block: Option<Block>,
    n_blocks: u64,
    finish_reason: Option<String>,
    /// A native stream's `message_delta`, written by `finish` with the billed usage.
    held_delta: Option<Map<String, Value>>,
}

impl EventEncoder {
    fn start(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let message = json!({
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        });
        write_event(out, "message_start", &json!({"type": "message_start", "message": message}));
    }

    fn close_block(&mut self, out: &mut BytesMut) {
        if self.block.take().is_some() {
            let index = self.n_blocks - 1;
            let stop = BlockEvent::new("content_block_stop", index);
            write_event(out, "content_block_stop", &stop);
        }
    }

    /// Opens `block` unless it is the open one; returns its index.
    fn open_block(&mut self, block: Block, content_block: ContentBlock, out: &mut BytesMut) -> u64 {
        if self.block.as_ref() != Some(&block) {
            self.close_block(out);
            let start = BlockEvent {
                content_block: Some(content_block),
                ..BlockEvent::new("content_block_start", self.n_blocks)
            };
            write_event(out, "content_block_start", &start);
            self.block = Some(block);
            self.n_blocks += 1;
        }
        self.n_blocks - 1
    }

    fn delta(out: &mut BytesMut, index: u64, delta: Delta) {
        let event =
            BlockEvent { delta: Some(delta), ..BlockEvent::new("content_block_delta", index) };
        write_event(out, "content_block_delta", &event);
    }

    fn translate(&mut self, delta: &Message, out: &mut BytesMut) {
        for field in [&delta.reasoning, &delta.reasoning_content] {
            if let Some(thinking) = Message::text(field).filter(|text| !text.is_empty()) {
                let index = self.open_block(Block::Thinking, ContentBlock::Thinking, out);
                Self::delta(out, index, Delta::Thinking(thinking));
            }
        }
        if let Some(text) = Message::text(&delta.content).filter(|text| !text.is_empty()) {
            let index = self.open_block(Block::Text, ContentBlock::Text, out);
            Self::delta(out, index, Delta::Text(text));
        }
        for call in delta.tool_calls() {
            let call_idx = call.index().unwrap_or(0);
            let block = ContentBlock::ToolUse { id: call.id(), name: call.name() };
            let index = self.open_block(Block::ToolUse(call_idx), block, out);
            let arguments = call.arguments().unwrap_or_default();
            if !arguments.is_empty() {
                Self::delta(out, index, Delta::InputJson(arguments));
            }
        }
    }
}

/// A content-block event of a translated stream, serialized from borrowed parts
/// straight into the stream's buffer: these are most of a stream's events, so no JSON
/// tree is built for them. Keys in sorted order, as a `serde_json::Map` writes them.
#[derive(Serialize)]
struct BlockEvent<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    content_block: Option<ContentBlock<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<Delta<'a>>,
    index: u64,
    #[serde(rename = "type")]
    kind: &'static str,
}

impl BlockEvent<'static> {
    fn new(kind: &'static str, index: u64) -> BlockEvent<'static> {
        BlockEvent { content_block: None, delta: None, index, kind }
    }
}

/// A block as `content_block_start` opens it, empty: its deltas fill it.
enum ContentBlock<'a> {
    Thinking,
    Text,
    /// The OpenAI tool call's `id` and `function.name` (`null` when absent).
    ToolUse {
        id: &'a Value,
        name: &'a Value,
    },
}

impl Serialize for ContentBlock<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ContentBlock::Thinking => {
                let mut block = serializer.serialize_map(Some(3))?;
                block.serialize_entry("signature", "")?;
                block.serialize_entry("thinking", "")?;
                block.serialize_entry("type", "thinking")?;
                block.end()
            }
            ContentBlock::Text => {
                let mut block = serializer.serialize_map(Some(2))?;
                block.serialize_entry("text", "")?;
                block.serialize_entry("type", "text")?;
                block.end()
            }
            ContentBlock::ToolUse { id, name } => {
                let mut block = serializer.serialize_map(Some(4))?;
                block.serialize_entry("id", id)?;
                block.serialize_entry("input", &Map::new())?;
                block.serialize_entry("name", name)?;
                block.serialize_entry("type", "tool_use")?;
                block.end()
            }
        }
    }
}

/// A `content_block_delta`'s delta: one text field and its type.
enum Delta<'a> {
    Thinking(&'a str),
    Text(&'a str),
    InputJson(&'a str),
}

impl Serialize for Delta<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (field, text, kind) = match *self {
            Delta::Thinking(text) => ("thinking", text, "thinking_delta"),
            Delta::Text(text) => ("text", text, "text_delta"),
            Delta::InputJson(text) => ("partial_json", text, "input_json_delta"),
        };
        let mut delta = serializer.serialize_map(Some(2))?;
        delta.serialize_entry(field, text)?;
        delta.serialize_entry("type", kind)?;
        delta.end()
    }
}

impl StreamEncoder for EventEncoder {
    fn chunk(&mut self, chunk: &Chunk, out: &mut BytesMut) {
        if self.native {
            return;
        }
        self.start(out);
        for choice in &chunk.choices {
            if let Some(delta) = choice.delta() {
                self.translate(delta, out);
            }
            if let Some(reason) = choice.finish_reason() {
                self.finish_reason = Some(reason.to_owned());
            }
        }
    }

    fn native(&mut self, event: &SseEvent, out: &mut BytesMut) {
        if !self.native {
            return;
        }
        // An event that is no object (or no JSON a tree can hold) is dropped. Only its
        // type is read; the two events rewritten are built as trees.
        let Some(kind) = anthropic::event_type(&event.data) else { return };
        let tree = || match serde_json::from_str::<Value>(&event.data) {
            Ok(Value::Object(data)) => data,
            _ => Map::new(),
        };
        match &*kind {
            "message_start" => {
                self.started = true;
                let mut data = tree();
                if let Some(Value::Object(message)) = data.get_mut("message") {
                    message.insert("id".to_owned(), Value::from(self.id.as_str()));
                    message.insert("model".to_owned(), Value::from(self.model.as_str()));
                }
                write_event(out, &kind, &Value::Object(data));
            }
            "message_delta" => self.held_delta = Some(tree()),
            // Written by `finish` or `fail`.
            "message_stop" | "error" => {}
            // JSON spread over several `data:` lines is rewritten on one.
            _ if event.data.contains('\n') => write_event(out, &kind, &Value::Object(tree())),
            _ => {
                out.put_slice(b"event: ");
                out.put_slice(kind.as_bytes());
                out.put_slice(b"\ndata: ");
                out.put_slice(event.data.as_bytes());
                out.put_slice(b"\n\n");
            }
        }
    }

    fn finish(&mut self, usage: &Usage, cost: PicoUsd, out: &mut BytesMut) {
        self.start(out);
        self.close_block(out);
        let mut delta = self.held_delta.take().unwrap_or_else(|| {
            let stop_reason = stop_reason(self.finish_reason.as_deref());
            let delta = json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": null}});
            delta.as_object().cloned().unwrap_or_default()
        });
        let usage = usage_json(delta.get("usage"), usage, cost);
        delta.insert("usage".to_owned(), usage);
        write_event(out, "message_delta", &Value::Object(delta));
        write_event(out, "message_stop", &json!({"type": "message_stop"}));
    }

    /// Anthropic's `error` event, with the usage charged for what was delivered (a field
    /// of the gateway's: Anthropic's own error events carry none).
    fn fail(&mut self, error: &ApiError, usage: &Usage, cost: PicoUsd, out: &mut BytesMut) {
        let mut event = error.to_anthropic_json();
        event["usage"] = usage_json(None, usage, cost);
        write_event(out, "error", &event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<ParsedChat, ApiError> {
        parse_messages(body.to_string().as_bytes(), &HeaderMap::new(), true)
    }

    #[test]
    fn translates_a_request_into_openai_terms() {
        let parsed = parse(json!({
            "model": "openai/gpt-4.1", "max_tokens": 100, "stream": true,
            "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "look"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"},
                    {"type": "text", "text": "and?"}]},
            ],
            "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "thinking": {"type": "enabled", "budget_tokens": 4000},
            "stop_sequences": ["END"], "metadata": {"user_id": "u"}, "models": ["mock/echo"],
        }))
        .expect("valid");
        assert_eq!(parsed.model_ids, ["openai/gpt-4.1", "mock/echo"]);
        assert!(parsed.chat.stream && parsed.wants_tools && parsed.wants_images);
        assert!(parsed.native_only.is_none());
        assert_eq!(parsed.chat.max_tokens, Some(100));
        let body = Value::Object(parsed.chat.body.tree().clone());
        let expected_messages = json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "t1", "type": "function",
                "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "and?"}]},
        ]);
        assert_eq!(body["messages"], expected_messages);
        assert_eq!(body["tool_choice"], "required");
        assert_eq!(body["parallel_tool_calls"], false);
        assert_eq!(body["reasoning_effort"], "medium");
        assert_eq!(body["stop"], json!(["END"]));
        assert_eq!(body["user"], "u");
        let native = parsed.chat.native.expect("native");
        assert!(!native.body.contains_key("models"), "gateway fields stay at the gateway");
        assert_eq!(native.body["thinking"]["budget_tokens"], 4000);
    }

    #[test]
    fn translates_output_config_and_passes_over_serving_hints() {
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
        let parsed = parse(json!({
            "model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
            "output_config": {"effort": "max", "format": {"type": "json_schema", "schema": schema}},
            "thinking": {"type": "adaptive"}, "cache_control": {"type": "ephemeral"},
            "service_tier": "auto",
        }))
        .expect("valid");
        assert!(parsed.native_only.is_none());
        assert!(parsed.wants_structured_output);
        let body = parsed.chat.body.tree();
        assert_eq!(body["reasoning_effort"], "high");
        assert_eq!(body["response_format"]["json_schema"]["schema"], schema);
        assert!(!body.contains_key("cache_control") && !body.contains_key("service_tier"));
    }

    #[test]
    fn an_output_format_without_a_schema_object_is_refused() {
        for format in
            [json!({"type": "json_schema"}), json!({"type": "json_schema", "schema": "x"})]
        {
            let Err(error) = parse(json!({
                "model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
                "output_config": {"format": format},
            })) else {
                panic!("{format}: accepted");
            };
            assert_eq!(
                error.to_json()["error"]["param"],
                "output_config.format.schema",
                "{format}"
            );
        }
    }

    #[test]
    fn untranslatable_features_leave_only_native_models() {
        let user = json!([{"role": "user", "content": "hi"}]);
        let check = |extra: Value, param: &str| {
            let mut body = json!({"model": "m", "max_tokens": 5, "messages": user});
            for (field, value) in extra.as_object().unwrap() {
                body[field] = value.clone();
            }
            let parsed = parse(body).expect("valid");
            let refusal = parsed.native_only.expect("native only");
            assert_eq!(refusal.to_json()["error"]["param"], param);
        };
        check(json!({"top_k": 5}), "top_k");
        check(json!({"tools": [{"type": "bash_20250124", "name": "bash"}]}), "tools[0]");
        check(
            json!({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}),
            "messages[0].content[0]",
        );
    }

    #[test]
    fn anthropic_fallbacks_are_the_gateways_own_and_never_forwarded() {
        let user = json!([{"role": "user", "content": "hi"}]);
        let fallbacks = json!([{"model": "b"}, {"model": "c"}]);
        let parsed = parse(json!({"model": "a", "max_tokens": 5, "messages": user,
            "fallbacks": fallbacks}))
        .expect("valid");
        assert_eq!(parsed.model_ids, ["a", "b", "c"]);
        assert!(parsed.native_only.is_none(), "any model may serve it");
        let native = parsed.chat.native.expect("native");
        assert!(!native.body.contains_key("fallbacks"), "Anthropic never switches models");
        for (fallbacks, param) in [
            (json!("default"), "fallbacks"),
            (json!([{"model": "b", "max_tokens": 9}]), "fallbacks[0]"),
            (json!([{"model": "b"}, "c"]), "fallbacks[1]"),
        ] {
            let body = json!({"model": "a", "max_tokens": 5, "messages": user,
                "fallbacks": fallbacks});
            assert_eq!(parse(body).expect_err("invalid").to_json()["error"]["param"], param);
        }
        let both = json!({"model": "a", "max_tokens": 5, "messages": user,
            "fallbacks": [{"model": "b"}], "models": ["c"]});
        assert_eq!(parse(both).expect_err("invalid").to_json()["error"]["param"], "fallbacks");
    }

    #[test]
    fn refuses_what_anthropic_prices_above_the_catalogue() {
        let user = json!([{"role": "user", "content": "hi"}]);
        let check = |extra: Value, beta: Option<&str>, refused: Option<&str>| {
            let mut body = json!({"model": "m", "max_tokens": 5, "messages": user});
            for (field, value) in extra.as_object().unwrap() {
                body[field] = value.clone();
            }
            let mut headers = HeaderMap::new();
            if let Some(beta) = beta {
                headers.insert("anthropic-beta", beta.parse().unwrap());
            }
            let parsed = parse_messages(body.to_string().as_bytes(), &headers, true);
            match (parsed, refused) {
                (Ok(_), None) => {}
                (Err(error), Some(param)) => assert_eq!(error.to_json()["error"]["param"], param),
                (parsed, _) => panic!("{body} {beta:?}: {parsed:?}"),
            }
        };
        check(json!({"speed": "fast"}), None, Some("speed"));
        check(json!({"speed": "standard"}), None, None);
        check(json!({"inference_geo": "us"}), None, Some("inference_geo"));
        check(json!({"container": "c"}), None, Some("container"));
        let search = json!([{"type": "bash_20250124", "name": "bash"},
            {"type": "web_search_20250305", "name": "web_search"}]);
        check(json!({"tools": search}), None, Some("tools[1]"));
        let betas = "fine-grained-tool-streaming-2025-05-14, context-1m-2025-08-07";
        check(json!({}), Some(betas), Some("anthropic-beta"));
        check(json!({}), Some("interleaved-thinking-2025-05-14"), None);
    }

    /// The headers forwarded to Anthropic are copies: the request's own values are slices
    /// of the connection's read buffer, which a clone would keep for the stream's life.
    #[test]
    fn forwarded_headers_keep_nothing_of_the_request_buffer() {
        let buffer = bytes::Bytes::from_static(b"2023-06-01interleaved-thinking-2025-05-14");
        let mut headers = HeaderMap::new();
        let version = HeaderValue::from_maybe_shared(buffer.slice(..10)).unwrap();
        headers.insert("anthropic-version", version);
        headers
            .insert("anthropic-beta", HeaderValue::from_maybe_shared(buffer.slice(10..)).unwrap());
        let body =
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
        let parsed = parse_messages(body.to_string().as_bytes(), &headers, true).unwrap();
        let forwarded = &parsed.chat.native.expect("a Messages request keeps its own form").headers;
        let in_buffer = buffer.as_ptr_range();
        for name in FORWARDED_HEADERS {
            let value = forwarded.get(name).expect("forwarded");
            assert_eq!(value, headers.get(name).unwrap());
            assert!(!in_buffer.contains(&value.as_bytes().as_ptr()), "{name} shares the buffer");
        }
    }

    #[test]
    fn refuses_malformed_requests_by_parameter() {
        let check = |body: Value, param: &str| {
            let error = parse(body).expect_err("invalid");
            assert_eq!(error.status(), StatusCode::BAD_REQUEST);
            assert_eq!(error.to_json()["error"]["param"], param, "{error}");
        };
        let user = json!([{"role": "user", "content": "hi"}]);
        check(json!({"model": "m", "messages": user}), "max_tokens");
        check(json!({"max_tokens": 5, "messages": user}), "model");
        check(json!({"model": "m", "max_tokens": 5, "messages": []}), "messages");
        check(json!({"model": "m", "max_tokens": 0, "messages": user}), "max_tokens");
        let system_role = json!([{"role": "system", "content": "x"}]);
        check(json!({"model": "m", "max_tokens": 5, "messages": system_role}), "messages[0].role");
        let choice = json!({"type": "sometimes"});
        check(
            json!({"model": "m", "max_tokens": 5, "messages": user, "tool_choice": choice}),
            "tool_choice.type",
        );
        let schema = json!({"type": "object"});
        for (tool, param) in [
            (json!({"name": "f"}), "tools[0].input_schema"),
            (json!({"type": "custom", "name": "f", "input_schema": "{}"}), "tools[0].input_schema"),
            (json!({"name": 5, "input_schema": schema}), "tools[0].name"),
            (json!({"input_schema": schema}), "tools[0].name"),
        ] {
            check(json!({"model": "m", "max_tokens": 5, "messages": user, "tools": [tool]}), param);
        }
    }

    /// The events of an encoded stream, as (type, data).
    fn events(out: &BytesMut) -> Vec<(String, Value)> {
        let text = std::str::from_utf8(out).expect("utf-8");
        text.split("\n\n")
            .filter(|event| !event.is_empty())
            .map(|event| {
                let (kind, data) = event.split_once("\ndata: ").expect("event and data");
                let kind = kind.strip_prefix("event: ").expect("event line").to_owned();
                (kind, serde_json::from_str(data).expect("JSON data"))
            })
            .collect()
    }

    fn model() -> &'static crate::catalog::Model {
        let catalog: &'static crate::catalog::Catalog =
            Box::leak(Box::new(crate::catalog::Catalog::builtin()));
        catalog.get("mock/echo").expect("catalogued")
    }

    #[test]
    fn a_translated_stream_follows_anthropics_event_sequence() {
        let answer = Answered { id: "gen-1", created_s: 1, model: model(), echo: &Value::Null };
        let mut encoder = MESSAGES.encoder(&answer, false);
        let chunk = |delta: Value, finish: Value| Chunk {
            choices: vec![Choice::from_tree(
                json!({"index": 0, "delta": delta, "finish_reason": finish}),
            )],
            extra: Map::new(),
        };
        let mut out = BytesMut::new();
        for chunk in [
            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(json!({"reasoning": "think"}), Value::Null),
            chunk(json!({"content": "Hi"}), Value::Null),
            chunk(json!({"content": " there"}), Value::Null),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": ""}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":1}"}}]}),
                Value::Null,
            ),
            chunk(json!({}), json!("tool_calls")),
        ] {
            encoder.chunk(&chunk, &mut out);
        }
        let usage = Usage {
            prompt_tokens: 10,
            completion_tokens: 4,
            cached_read_tokens: 2,
            ..Usage::default()
        };
        encoder.finish(&usage, PicoUsd(5_000_000), &mut out);
        let events = events(&out);
        let kinds: Vec<&str> = events.iter().map(|(kind, _)| kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        for (kind, data) in &events {
            assert_eq!(data["type"], kind.as_str());
        }
        assert_eq!(events[0].1["message"]["id"], "gen-1");
        assert_eq!(events[1].1["content_block"]["type"], "thinking");
        assert_eq!(events[5].1["delta"]["text"], "Hi");
        assert_eq!(
            events[8].1["content_block"],
            json!({"type": "tool_use", "id": "c1", "name": "f", "input": {}})
        );
        assert_eq!(events[9].1["index"], 2);
        let delta = &events[11].1;
        assert_eq!(delta["delta"]["stop_reason"], "tool_use");
        assert_eq!(delta["usage"]["input_tokens"], 8);
        assert_eq!(delta["usage"]["cache_read_input_tokens"], 2);
        assert_eq!(delta["usage"]["output_tokens"], 4);
        assert_eq!(delta["usage"]["cost"], 0.000005);
    }

    #[test]
    fn a_native_stream_is_relayed_with_the_billed_usage() {
        let answer = Answered { id: "gen-2", created_s: 1, model: model(), echo: &Value::Null };
        let mut encoder = MESSAGES.encoder(&answer, true);
        let mut out = BytesMut::new();
        let upstream = [
            json!({"type": "message_start", "message": {"id": "msg_1", "model": "claude", "usage": {"input_tokens": 3}}}),
            json!({"type": "ping"}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "x"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 2, "server_tool_use": {"web_search_requests": 1}}}),
            json!({"type": "message_stop"}),
        ];
        for (event_idx, data) in upstream.iter().enumerate() {
            let kind = data["type"].as_str().unwrap().to_owned();
            // One event's JSON spread over several `data:` lines, as SSE allows.
            let text = if event_idx == 3 {
                serde_json::to_string_pretty(data).unwrap()
            } else {
                data.to_string()
            };
            encoder.native(&SseEvent { event: Some(kind), data: text }, &mut out);
            // Chunks of a native stream are billed, never written.
            encoder.chunk(
                &Chunk {
                    choices: vec![Choice::from_tree(json!({"delta": {"content": "x"}}))],
                    extra: Map::new(),
                },
                &mut out,
            );
        }
        let usage = Usage { prompt_tokens: 3, completion_tokens: 2, ..Usage::default() };
        encoder.finish(&usage, PicoUsd(1), &mut out);
        let text = std::str::from_utf8(&out).expect("utf-8");
        let framed = |line: &str| {
            line.is_empty() || line.starts_with("event: ") || line.starts_with("data: ")
        };
        assert!(text.lines().all(framed), "{text}");
        let events = events(&out);
        let kinds: Vec<&str> = events.iter().map(|(kind, _)| kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(events[0].1["message"]["id"], "gen-2");
        assert_eq!(events[0].1["message"]["model"], "mock/echo");
        assert_eq!(events[3].1, upstream[3]);
        let usage = &events[5].1["usage"];
        assert_eq!(usage["output_tokens"], 2);
        assert_eq!(usage["server_tool_use"]["web_search_requests"], 1);
        assert_eq!(usage["cost"], 0.000000000001);
        assert_eq!(events[5].1["delta"]["stop_reason"], "end_turn");
    }

    /// JSON trees built from the words a Messages request uses, so that arbitrary input
    /// reaches deep into the translation.
    /// The words arbitrary requests and answers are built from: the API's own field names
    /// and values, so that the generated JSON reaches past the first type check.
    const WORDS: &[&str] = &[
        "model",
        "messages",
        "role",
        "user",
        "assistant",
        "content",
        "type",
        "text",
        "image",
        "source",
        "base64",
        "url",
        "tool_use",
        "tool_result",
        "id",
        "name",
        "input",
        "tool_use_id",
        "tools",
        "tool_choice",
        "input_schema",
        "thinking",
        "budget_tokens",
        "enabled",
        "system",
        "max_tokens",
        "stream",
        "output_config",
        "format",
        "json_schema",
        "effort",
        "any",
        "tool",
    ];

    fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = Value> {
        crate::codec::arbitrary_json(WORDS)
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_requests_never_panic(request in arbitrary_json(), delta in arbitrary_json()) {
            let enveloped = [
                request.clone(),
                json!({"model": "m", "max_tokens": 5, "messages": request}),
                json!({"model": "m", "max_tokens": 5, "system": request, "tools": request,
                    "tool_choice": request, "thinking": request, "output_config": request,
                    "messages": [{"role": "user", "content": request},
                        {"role": "assistant", "content": request}]}),
            ];
            for body in enveloped {
                let _ = parse_messages(body.to_string().as_bytes(), &HeaderMap::new(), true);
            }
            let answer = Answered { id: "gen-3", created_s: 1, model: model(), echo: &Value::Null };
            for native in [false, true] {
                let mut encoder = MESSAGES.encoder(&answer, native);
                let mut out = BytesMut::new();
                let chunk = Chunk {
                    choices: vec![Choice::from_tree(json!({"delta": delta, "finish_reason": delta["type"]}))],
                    extra: Map::new(),
                };
                encoder.chunk(&chunk, &mut out);
                encoder.native(&SseEvent { event: None, data: delta.to_string() }, &mut out);
                encoder.finish(&Usage::default(), PicoUsd(1), &mut out);
                let completion = Completion {
                    choices: vec![Choice::from_tree(json!({"message": delta, "finish_reason": request["type"]}))],
                    usage: Usage::default(),
                    extra: Map::new(),
                };
                let native_body = request.to_string();
                let _ = MESSAGES.completion(&answer, completion, native.then_some(native_body.as_bytes()), PicoUsd(1));
            }
        }
    }
}

/// Every recorded Anthropic stream (`tests/fixtures/anthropic`) and the hand-written ones
/// (`adapters/tests/events/anthropic.txt`: unknown members, escapes, nulls, repeated
/// names, broken JSON) relayed to a Messages client, compared byte for byte with what the
/// relay wrote for them when `message_start` and `message_delta` were rewritten as
/// `serde_json::Value` trees (`tests/expected/messages-relay.txt`). Run with
/// `UPDATE_EXPECTED=1` to write the file anew after a deliberate change.
#[cfg(test)]
mod recorded {
    use super::*;
    use crate::catalog::Catalog;
    use crate::providers::anthropic::Anthropic;
    use crate::providers::{Adapter, ChatBody};
    use std::fmt::Write as _;
    use std::path::Path;

    const GATEWAY: &str = env!("CARGO_MANIFEST_DIR");

    mod support {
        include!(concat!(env!("CARGO_MANIFEST_DIR"), "/adapters/tests/support/recorded.rs"));
    }

    /// What a Messages client receives for `bytes`: the events as relayed, then the end
    /// the settle writes.
    fn relay(out: &mut String, bytes: &[u8]) {
        let catalog = Catalog::builtin();
        let model = catalog.get("anthropic/claude-haiku-4.5").expect("catalogued");
        let answer = Answered { id: "gen-relay", created_s: 1, model, echo: &Value::Null };
        let mut encoder = MESSAGES.encoder(&answer, true);
        // The events as the relay gets them: from the translation's parse.
        let native = Native {
            format: NativeFormat::AnthropicMessages,
            body: Map::new(),
            headers: HeaderMap::new(),
        };
        let body = ChatBody::from_tree(Map::new());
        let chat = ChatRequest { body, stream: true, max_tokens: None, native: Some(native) };
        let mut translator = Anthropic.stream(&chat);
        let (mut chunks, mut events) = (Vec::new(), Vec::new());
        let _ = translator.feed(bytes, &mut chunks);
        translator.take_events(&mut events);
        let _ = translator.finish(&mut chunks);
        translator.take_events(&mut events);
        let mut relayed = BytesMut::new();
        events.iter().for_each(|event| encoder.native(event, &mut relayed));
        let usage = Usage {
            prompt_tokens: 100,
            completion_tokens: 20,
            cached_read_tokens: 30,
            cached_write_tokens: 5,
            ..Usage::default()
        };
        encoder.finish(&usage, PicoUsd(1_234_567), &mut relayed);
        out.push_str(std::str::from_utf8(&relayed).expect("UTF-8"));
    }

    #[test]
    fn recorded_streams_are_relayed_as_checked_in() {
        let mut out = String::new();
        for path in support::files(&Path::new(GATEWAY).join("tests/fixtures/anthropic")) {
            if let Some(bytes) = support::stream_bytes(&path) {
                writeln!(out, "## stream {}", path.file_name().unwrap().to_string_lossy()).unwrap();
                relay(&mut out, &bytes);
            }
        }
        let cases = Path::new(GATEWAY).join("adapters/tests/events/anthropic.txt");
        for (title, body) in support::cases(&cases) {
            if !title.starts_with("answer: ") {
                writeln!(out, "## {title}").unwrap();
                relay(&mut out, body.as_bytes());
            }
        }
        support::check_expected(
            &out,
            &Path::new(GATEWAY).join("tests/expected/messages-relay.txt"),
        );
    }
}
