//! Parsing and validating an OpenAI chat-completions request body: every rejection is a
//! 400 that names the parameter. Fields the gateway does not act on pass through
//! unchecked; the provider validates them and its 400 reaches the client.

use crate::error::ApiError;
use crate::json_text::{self, NotAnObject, Object};
use crate::providers::{ChatBody, ChatRequest};
use crate::routing::{request_parameters, Preferences};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
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

/// The error for a completion limit `name` that is not an integer in
/// 1..=[`MAX_TOKENS_MAX`], saying the range (a number too large is not "not positive").
pub fn max_tokens_invalid(name: &str) -> ApiError {
    ApiError::invalid_param(name, format!("must be an integer from 1 to {MAX_TOKENS_MAX}"))
}

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

/// Validates a Chat Completions request as the client sent it. The body is read for the
/// fields the gateway acts on only (`json_text.rs`), and kept as text: an
/// OpenAI-compatible adapter forwards it with a few members spliced in.
pub fn parse(body: &Bytes) -> Result<ParsedChat, ApiError> {
    let text = utf8(body)?;
    let parsed = validated(text, body.len(), |object| ChatBody::from_read(body.clone(), object))?;
    // An adapter that translates the request reads it as a tree: refused here if it
    // cannot be one.
    if !json_text::tree_readable(text) {
        return Err(ApiError::malformed(
            "request body is not valid JSON: nested too deeply or a number out of range",
        ));
    }
    Ok(parsed)
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

/// The body as a JSON object read as text (`json_text.rs`), or a 400.
pub fn object(body: &[u8]) -> Result<Object<'_>, ApiError> {
    text_object(utf8(body)?)
}

fn not_json(error: &dyn std::fmt::Display) -> ApiError {
    ApiError::malformed(format!("request body is not valid JSON: {error}"))
}

/// The body as text, or a 400.
fn utf8(body: &[u8]) -> Result<&str, ApiError> {
    std::str::from_utf8(body).map_err(|error| not_json(&error))
}

/// `text` as a JSON object, or a 400.
fn text_object(text: &str) -> Result<Object<'_>, ApiError> {
    Object::parse(text).map_err(|error| match error {
        NotAnObject::Invalid(error) => not_json(&error),
        NotAnObject::OtherType => ApiError::malformed("request body must be a JSON object"),
    })
}

/// Validates a chat request another API's codec built as a tree; `body_bytes` is the
/// size of the body as the client sent it, which bounds its prompt.
pub fn parse_object(
    body_object: Map<String, Value>,
    body_bytes: usize,
) -> Result<ParsedChat, ApiError> {
    // Serializing a map of JSON values into a `Vec` cannot fail.
    let text = Bytes::from(serde_json::to_vec(&body_object).unwrap_or_default());
    validated(utf8(&text)?, body_bytes, |_| ChatBody::from_both(text.clone(), body_object))
}

/// Validates the chat request `text` (a JSON object); `body` is what the request keeps.
fn validated(
    text: &str,
    body_bytes: usize,
    body: impl FnOnce(&Object) -> ChatBody,
) -> Result<ParsedChat, ApiError> {
    let object = text_object(text)?;
    let model_ids = model_ids(&object)?;
    let provider = match object.get("provider") {
        None => None,
        Some(raw) => Some(
            serde_json::from_str::<Value>(raw.get())
                .map_err(|error| ApiError::invalid_param("provider", error.to_string()))?,
        ),
    };
    let routing = Preferences::parse(provider.as_ref())?;
    let structured_outputs = object
        .get("response_format")
        .and_then(|format| json_text::object(format)?.get("type"))
        .and_then(json_text::as_str)
        .is_some_and(|kind| kind == "json_schema");
    let parameters = request_parameters(|name| object.get_set(name).is_some(), structured_outputs);
    let n_media_parts = check_messages(&object)?;
    let stream = match object.get("stream").map(RawValue::get) {
        None | Some("null" | "false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::invalid_param("stream", "must be a boolean")),
    };
    let max_tokens = match max_tokens(&object, "max_completion_tokens")? {
        Some(tokens) => Some(tokens),
        None => max_tokens(&object, "max_tokens")?,
    };
    if let Some(n) = object.get_set("n") {
        if serde_json::from_str::<u64>(n.get()).ok() != Some(1) {
            return Err(ApiError::invalid_param("n", "only n = 1 is supported"));
        }
    }
    let wants_tools = object.get_set("tools").is_some();
    Ok(ParsedChat {
        prompt_tokens_max: prompt_tokens_max(body_bytes, n_media_parts),
        chat: ChatRequest { body: body(&object), stream, max_tokens, native: None },
        model_ids,
        routing,
        parameters,
        wants_tools,
        wants_images: n_media_parts > 0,
        wants_structured_output: structured_outputs,
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

/// The elements of a JSON array already read as valid JSON.
fn elements(array: &RawValue) -> Vec<&RawValue> {
    serde_json::from_str(array.get()).unwrap_or_default()
}

/// `model` first, then the `models` fallbacks in order, without repeats. As on OpenRouter,
/// `models` alone will do: its first entry is then tried first.
pub fn model_ids(body: &Object) -> Result<Vec<String>, ApiError> {
    let is_id = |id: &str| !id.is_empty() && id.len() <= NAME_BYTES_MAX;
    if let Some(route) = body.get_set("route") {
        if json_text::as_str(route).as_deref() != Some("fallback") {
            return Err(ApiError::invalid_param("route", "only \"fallback\" is supported"));
        }
    }
    let fallbacks = match body.get_set("models") {
        None => Vec::new(),
        Some(models) => match json_text::is_array(models).then(|| elements(models)) {
            Some(models) if models.len() <= FALLBACK_MODELS_MAX => models,
            _ => {
                let message =
                    format!("must be an array of at most {FALLBACK_MODELS_MAX} model ids");
                return Err(ApiError::invalid_param("models", message));
            }
        },
    };
    let mut fallbacks = fallbacks.into_iter().map(|model| {
        json_text::as_str(model).filter(|id| is_id(id)).ok_or_else(|| {
            ApiError::invalid_param("models", "every entry must be a model id string")
        })
    });
    let primary = match body.get_set("model").map(json_text::as_str) {
        Some(Some(model)) if is_id(&model) => model,
        Some(_) => return Err(ApiError::invalid_param("model", "must be a model id string")),
        None => match fallbacks.next() {
            Some(first) => first?,
            None => return Err(ApiError::invalid_param("model", "is required")),
        },
    };
    let mut ids = vec![primary.into_owned()];
    for id in fallbacks {
        let id = id?;
        if !ids.iter().any(|seen| *seen == id) {
            ids.push(id.into_owned());
        }
    }
    Ok(ids)
}

/// What the checks read of one element of `messages`.
#[derive(Default, Deserialize)]
struct MessageFields<'a> {
    #[serde(borrow)]
    role: Option<&'a RawValue>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

/// Each element's fields, in one pass over the array's text when every element is an
/// object naming each field at most once (as clients write them); otherwise element by
/// element, each read as a JSON reader would (the last value of a repeated name).
fn message_fields(messages: &RawValue) -> Vec<MessageFields<'_>> {
    fn fields(message: &RawValue) -> MessageFields<'_> {
        json_text::object(message).map_or_else(MessageFields::default, |message| MessageFields {
            role: message.get("role"),
            content: message.get("content"),
        })
    }
    serde_json::from_str(messages.get())
        .unwrap_or_else(|_| elements(messages).into_iter().map(fields).collect())
}

/// Checks `messages` and counts its non-text content parts.
fn check_messages(body: &Object) -> Result<u64, ApiError> {
    let messages = match body.get("messages") {
        Some(messages) if json_text::is_array(messages) => message_fields(messages),
        Some(_) => Vec::new(),
        None => return Err(ApiError::invalid_param("messages", "is required")),
    };
    if messages.is_empty() {
        return Err(ApiError::invalid_param("messages", "must be a non-empty array"));
    }
    let mut n_media_parts = 0u64;
    for (message_idx, MessageFields { role, content }) in messages.into_iter().enumerate() {
        if role.and_then(json_text::as_str).is_none_or(|role| role.is_empty()) {
            let param = format!("messages[{message_idx}].role");
            return Err(ApiError::invalid_param(&param, "must be a non-empty string"));
        }
        match content {
            None => {}
            Some(content) if json_text::is_null(content) || content.get().starts_with('"') => {}
            Some(parts) if json_text::is_array(parts) => {
                let is_text = |part: &RawValue| {
                    let kind = json_text::object(part).and_then(|part| part.get("type"));
                    kind.and_then(json_text::as_str).is_some_and(|kind| kind == "text")
                };
                n_media_parts +=
                    elements(parts).into_iter().filter(|part| !is_text(part)).count() as u64;
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

fn max_tokens(body: &Object, name: &str) -> Result<Option<u64>, ApiError> {
    let Some(value) = body.get_set(name) else {
        return Ok(None);
    };
    match serde_json::from_str::<u64>(value.get()) {
        Ok(tokens) if (1..=MAX_TOKENS_MAX).contains(&tokens) => Ok(Some(tokens)),
        _ => Err(max_tokens_invalid(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(body: Value, param: Option<&str>) {
        let bytes = Bytes::from(serde_json::to_vec(&body).expect("json"));
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
        let second = json!([{"role": "user", "content": "hi"}, "x"]);
        check(json!({"model": "m", "messages": second}), Some("messages[1].role"));
        check(
            json!({"model": "m", "messages": [{"role": "user", "content": 1}]}),
            Some("messages[0].content"),
        );
        check(json!({"model": "m", "messages": user, "stream": "yes"}), Some("stream"));
        check(json!({"model": "m", "messages": user, "max_tokens": 0}), Some("max_tokens"));
        check(json!({"model": "m", "messages": user, "max_tokens": -3}), Some("max_tokens"));
        // Too large is told as such, with the range.
        let too_large = json!({"model": "m", "messages": user, "max_tokens": 1_u64 << 32});
        let bytes = Bytes::from(serde_json::to_vec(&too_large).expect("json"));
        let message = parse(&bytes).expect_err("too large").to_json()["error"]["message"].clone();
        assert_eq!(
            message,
            "invalid parameter `max_tokens`: must be an integer from 1 to 4294967295"
        );
        check(
            json!({"model": "m", "messages": user, "max_completion_tokens": 1.5}),
            Some("max_completion_tokens"),
        );
        check(json!({"model": "m", "messages": user, "n": 2}), Some("n"));
        check(json!({"model": "m", "messages": user, "route": "cheapest"}), Some("route"));
        check(json!({"model": "m", "messages": user, "models": "x"}), Some("models"));
        check(json!({"model": "m", "messages": user, "models": [1]}), Some("models"));
        check(json!({"model": "m", "messages": user, "models": vec!["a"; 9]}), Some("models"));
        check(json!({"messages": user}), Some("model"));
        check(json!({"messages": user, "models": []}), Some("model"));
        check(json!({"messages": user, "models": [5]}), Some("models"));
        check(
            json!({"model": "m", "messages": user, "provider": {"sort": "x"}}),
            Some("provider.sort"),
        );
    }

    #[test]
    fn rejects_malformed_bodies() {
        for body in [&b"{"[..], b"[]", b"null", b"\xff\xfe", b""] {
            let error = parse(&Bytes::from_static(body)).expect_err("must fail");
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
        let bytes = Bytes::from(serde_json::to_vec(&body).expect("json"));
        let parsed = parse(&bytes).expect("valid");
        assert_eq!(parsed.model_ids, ["a", "b", "c"]);
        // As on OpenRouter, `models` alone: its first entry first.
        let user = json!([{"role": "user", "content": "hi"}]);
        let alone = json!({"models": ["b", "a", "b"], "model": null, "messages": user});
        let alone = Bytes::from(serde_json::to_vec(&alone).expect("json"));
        assert_eq!(parse(&alone).expect("valid").model_ids, ["b", "a"]);
        assert!(parsed.chat.stream && parsed.wants_images && !parsed.wants_tools);
        assert_eq!(parsed.chat.max_tokens, Some(9));
        assert_eq!(parsed.prompt_tokens_max, bytes.len() as u64 + MEDIA_PART_TOKENS_MAX);
    }

    /// What the gateway reads of a body is what a JSON reader would: the last value of a
    /// repeated name, names unescaped, nothing read inside other fields.
    #[test]
    fn reads_the_body_as_a_json_reader_would() {
        let parse_text = |text: &'static str| parse(&Bytes::from_static(text.as_bytes()));
        let parsed = parse_text(
            r#"{"model":"x","messages":[{"role":"user","content":"hi"}],"mod\u0065l":"a",
                "stream":true,"stream":false,"max_tokens":5,"max_tokens":6,
                "tools":null,"extra":{"model":"b","stream":"no","messages":1}}"#,
        )
        .expect("valid");
        assert_eq!(parsed.model_ids, ["a"]);
        assert!(!parsed.chat.stream && !parsed.wants_tools);
        assert_eq!(parsed.chat.max_tokens, Some(6));
        assert_eq!(parsed.parameters, ["max_tokens"]);
        // The body is kept as sent, and read as a tree only when asked.
        assert_eq!(parsed.chat.body.tree()["model"], "a");
        let parsed = parse_text(
            r#"{"model":"a","messages":[{"role":"x","role":""}],"response_format":{"type":"json_schema"}}"#,
        );
        assert_eq!(parsed.unwrap_err().to_json()["error"]["param"], "messages[0].role");
        parse_text(
            r#"{"model":"a","messages":[{"role":"","content":7,"role":"user","content":"hi"}]}"#,
        )
        .expect("the last role and content count");
        let parsed = parse_text(
            r#"{"model":"a","messages":[{"role":"\u0075ser","content":[{"type":"te\u0078t"},3,{"type":"image_url"}]}],
                "response_format":{"type":"json_schema"},"seed":null}"#,
        )
        .expect("valid");
        assert!(parsed.wants_images && parsed.wants_structured_output);
        assert_eq!(
            parsed.prompt_tokens_max,
            parsed.chat.body.text().len() as u64 + 2 * MEDIA_PART_TOKENS_MAX
        );
        assert_eq!(parsed.parameters, ["response_format", "structured_outputs"]);
    }

    /// A request another API translated is validated the same way and keeps its tree.
    #[test]
    fn validates_translated_requests() {
        let Value::Object(tree) = json!({"model": "a", "messages": [{"role": "user"}], "n": 1})
        else {
            unreachable!()
        };
        let parsed = parse_object(tree.clone(), 1000).expect("valid");
        assert_eq!(parsed.prompt_tokens_max, 1000);
        assert_eq!(parsed.chat.body.tree(), &tree);
        assert_eq!(
            serde_json::from_slice::<Map<String, Value>>(parsed.chat.body.text()).unwrap(),
            tree
        );
        let Value::Object(bad) = json!({"model": "a", "messages": [{"role": "user"}], "n": 2})
        else {
            unreachable!()
        };
        assert_eq!(parse_object(bad, 10).unwrap_err().to_json()["error"]["param"], "n");
    }
}
