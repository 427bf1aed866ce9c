//! Parsing and validating an OpenAI chat-completions request body: every rejection is a
//! 400 that names the parameter. Fields the gateway does not act on pass through
//! unchecked; the provider validates them and its 400 reaches the client.

use crate::error::ApiError;
use crate::providers::ChatRequest;
use crate::routing::{request_parameters, Preferences};
use serde_json::{Map, Value};
use solrouter_ledger::NAME_BYTES_MAX;

/// Most models a request may name in `models` (OpenRouter's fallback list). Each one is
/// a possible upstream attempt, so this also bounds the attempts of one request.
pub const FALLBACK_MODELS_MAX: usize = 8;
/// Upper bound of the prompt tokens one non-text content part (an image, an audio clip,
/// a file) may cost. Text is bounded by its bytes; media is not. 4096 covers a
/// high-detail image on every catalogued provider (OpenAI's largest tiling is ~1.1k).
pub const MEDIA_PART_TOKENS_MAX: u64 = 4096;
/// The gateway's own request fields (fallback models, provider routing), read in any
/// API's request and never sent to a provider.
pub const GATEWAY_FIELDS: [&str; 3] = ["models", "route", "provider"];
/// Largest `max_tokens` accepted; above any model's output limit.
pub const MAX_TOKENS_MAX: u64 = u32::MAX as u64;

/// A validated request and the gateway's routing fields.
#[derive(Debug)]
pub struct ParsedChat {
    pub chat: ChatRequest,
    /// `model` first, then `models` in order, without repeats.
    pub model_ids: Vec<String>,
    /// The `provider` object: how to choose among each model's hosts.
    pub routing: Preferences,
    /// The parameters the request sets (for `provider.require_parameters`).
    pub parameters: Vec<&'static str>,
    /// An upper bound of the prompt's tokens on any tokenizer (see [`prompt_tokens_max`]).
    pub prompt_tokens_max: u64,
    pub wants_tools: bool,
    pub wants_images: bool,
    pub wants_structured_output: bool,
    /// Why only a model served in the client's own format can answer (a feature with no
    /// translation, such as Anthropic's server tools): other candidates are skipped.
    pub native_only: Option<ApiError>,
    /// What the codec carries from the request to its answer (the Responses API echoes
    /// the request's parameters in its `response` object); `Null` for codecs that need
    /// nothing. The pipeline only hands it on ([`crate::codec::Answered::echo`]).
    pub echo: Value,
}

pub fn parse(body: &[u8]) -> Result<ParsedChat, ApiError> {
    let body_object = json_object(body)?;
    parse_object(body_object, body.len())
}

/// The body as a JSON object, or a 400.
pub fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|error| ApiError::malformed(format!("request body is not valid JSON: {error}")))?;
    match value {
        Value::Object(body_object) => Ok(body_object),
        _ => Err(ApiError::malformed("request body must be a JSON object")),
    }
}

/// Validates a chat request already read as JSON; `body_bytes` is the size of the body
/// as the client sent it, which bounds its prompt.
pub fn parse_object(
    body_object: Map<String, Value>,
    body_bytes: usize,
) -> Result<ParsedChat, ApiError> {
    let model_ids = model_ids(&body_object)?;
    let routing = Preferences::parse(body_object.get("provider"))?;
    let parameters = request_parameters(&body_object);
    let n_media_parts = check_messages(&body_object)?;
    let stream = match body_object.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(_) => return Err(ApiError::invalid_param("stream", "must be a boolean")),
    };
    let max_tokens = match max_tokens(&body_object, "max_completion_tokens")? {
        Some(tokens) => Some(tokens),
        None => max_tokens(&body_object, "max_tokens")?,
    };
    match body_object.get("n") {
        None | Some(Value::Null) => {}
        Some(n) if n.as_u64() == Some(1) => {}
        Some(_) => return Err(ApiError::invalid_param("n", "only n = 1 is supported")),
    }
    let wants_tools = body_object.get("tools").is_some_and(|tools| !tools.is_null());
    let wants_structured_output = body_object
        .get("response_format")
        .and_then(|format| format.get("type"))
        .and_then(Value::as_str)
        .is_some_and(|kind| kind == "json_schema");
    Ok(ParsedChat {
        prompt_tokens_max: prompt_tokens_max(body_bytes, n_media_parts),
        chat: ChatRequest { body: body_object, stream, max_tokens, native: None },
        model_ids,
        routing,
        parameters,
        wants_tools,
        wants_images: n_media_parts > 0,
        wants_structured_output,
        native_only: None,
        echo: Value::Null,
    })
}

/// An upper bound of the prompt's tokens: every tokenizer in use (byte-level BPE,
/// SentencePiece with byte fallback) spends at least one byte of text per token, and
/// JSON escaping only adds bytes, so the body's length bounds the text and the chat
/// template's per-message tokens (each message's JSON envelope is longer than them);
/// media parts add their own bound.
pub fn prompt_tokens_max(body_bytes: usize, n_media_parts: u64) -> u64 {
    (body_bytes as u64).saturating_add(n_media_parts.saturating_mul(MEDIA_PART_TOKENS_MAX))
}

/// `model` first, then the `models` fallbacks in order, without repeats.
pub fn model_ids(body: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let primary = match body.get("model") {
        Some(Value::String(model)) if !model.is_empty() && model.len() <= NAME_BYTES_MAX => model,
        Some(_) => return Err(ApiError::invalid_param("model", "must be a model id string")),
        None => return Err(ApiError::invalid_param("model", "is required")),
    };
    let mut ids = vec![primary.clone()];
    match body.get("route") {
        None | Some(Value::Null) => {}
        Some(Value::String(route)) if route == "fallback" => {}
        Some(_) => return Err(ApiError::invalid_param("route", "only \"fallback\" is supported")),
    }
    let fallbacks = match body.get("models") {
        None | Some(Value::Null) => return Ok(ids),
        Some(Value::Array(models)) if models.len() <= FALLBACK_MODELS_MAX => models,
        Some(_) => {
            let message = format!("must be an array of at most {FALLBACK_MODELS_MAX} model ids");
            return Err(ApiError::invalid_param("models", message));
        }
    };
    for model in fallbacks {
        let Some(id) = model.as_str().filter(|id| !id.is_empty() && id.len() <= NAME_BYTES_MAX)
        else {
            return Err(ApiError::invalid_param("models", "every entry must be a model id string"));
        };
        if !ids.iter().any(|seen| seen == id) {
            ids.push(id.to_string());
        }
    }
    Ok(ids)
}

/// Checks `messages` and counts its non-text content parts.
fn check_messages(body: &Map<String, Value>) -> Result<u64, ApiError> {
    let messages = match body.get("messages") {
        Some(Value::Array(messages)) if !messages.is_empty() => messages,
        Some(_) => return Err(ApiError::invalid_param("messages", "must be a non-empty array")),
        None => return Err(ApiError::invalid_param("messages", "is required")),
    };
    let mut n_media_parts = 0u64;
    for (message_idx, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str);
        if role.is_none_or(str::is_empty) {
            let param = format!("messages[{message_idx}].role");
            return Err(ApiError::invalid_param(&param, "must be a non-empty string"));
        }
        match message.get("content") {
            None | Some(Value::Null | Value::String(_)) => {}
            Some(Value::Array(parts)) => {
                let is_text =
                    |part: &Value| part.get("type").and_then(Value::as_str) == Some("text");
                n_media_parts += parts.iter().filter(|part| !is_text(part)).count() as u64;
            }
            Some(_) => {
                let param = format!("messages[{message_idx}].content");
                return Err(ApiError::invalid_param(
                    &param,
                    "must be a string or an array of parts",
                ));
            }
        }
    }
    Ok(n_media_parts)
}

fn max_tokens(body: &Map<String, Value>, name: &str) -> Result<Option<u64>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_u64() {
            Some(tokens) if (1..=MAX_TOKENS_MAX).contains(&tokens) => Ok(Some(tokens)),
            _ => Err(ApiError::invalid_param(name, "must be a positive integer")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(body: Value, param: Option<&str>) {
        let bytes = serde_json::to_vec(&body).expect("json");
        match (parse(&bytes), param) {
            (Ok(_), None) => {}
            (Err(error), Some(param)) => {
                let rendered = error.to_json();
                assert_eq!(rendered["error"]["param"], json!(param), "{body}");
            }
            (result, _) => panic!("{body}: unexpected {result:?}"),
        }
    }

    #[test]
    fn validates_parameters() {
        let user = json!([{"role": "user", "content": "hi"}]);
        check(json!({"model": "mock/echo", "messages": user}), None);
        check(json!({"messages": user}), Some("model"));
        check(json!({"model": 5, "messages": user}), Some("model"));
        check(json!({"model": "m"}), Some("messages"));
        check(json!({"model": "m", "messages": []}), Some("messages"));
        check(json!({"model": "m", "messages": [{"content": "x"}]}), Some("messages[0].role"));
        check(
            json!({"model": "m", "messages": [{"role": "user", "content": 1}]}),
            Some("messages[0].content"),
        );
        check(json!({"model": "m", "messages": user, "stream": "yes"}), Some("stream"));
        check(json!({"model": "m", "messages": user, "max_tokens": 0}), Some("max_tokens"));
        check(json!({"model": "m", "messages": user, "max_tokens": -3}), Some("max_tokens"));
        check(
            json!({"model": "m", "messages": user, "max_completion_tokens": 1.5}),
            Some("max_completion_tokens"),
        );
        check(json!({"model": "m", "messages": user, "n": 2}), Some("n"));
        check(json!({"model": "m", "messages": user, "route": "cheapest"}), Some("route"));
        check(json!({"model": "m", "messages": user, "models": "x"}), Some("models"));
        check(json!({"model": "m", "messages": user, "models": [1]}), Some("models"));
        check(json!({"model": "m", "messages": user, "models": vec!["a"; 9]}), Some("models"));
        check(
            json!({"model": "m", "messages": user, "provider": {"sort": "x"}}),
            Some("provider.sort"),
        );
    }

    #[test]
    fn rejects_malformed_bodies() {
        for body in [&b"{"[..], b"[]", b"null", b"\xff\xfe", b""] {
            let error = parse(body).expect_err("must fail");
            assert_eq!(error.status(), http::StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn collects_models_and_bounds() {
        let body = json!({
            "model": "a", "models": ["b", "a", "c"], "route": "fallback", "stream": true,
            "max_tokens": 7, "max_completion_tokens": 9,
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "hi"},
                {"type": "image_url", "image_url": {"url": "data:"}}]}],
        });
        let bytes = serde_json::to_vec(&body).expect("json");
        let parsed = parse(&bytes).expect("valid");
        assert_eq!(parsed.model_ids, ["a", "b", "c"]);
        assert!(parsed.chat.stream && parsed.wants_images && !parsed.wants_tools);
        assert_eq!(parsed.chat.max_tokens, Some(9));
        assert_eq!(parsed.prompt_tokens_max, bytes.len() as u64 + MEDIA_PART_TOKENS_MAX);
    }
}
