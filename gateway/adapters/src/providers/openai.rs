//! The OpenAI Chat Completions adapter, also used for every OpenAI-compatible upstream
//! (and for the built-in mock). Requests pass through nearly untouched: the client
//! already speaks this wire format, so the adapter only swaps the model name, removes
//! the gateway's own request fields and makes streams report usage.

use super::embed::{self, EmbedRequest, EmbedTarget, Embedder, Embeddings, Encoding};
use super::errors::{bad_gateway, classify};
use super::{
    Adapter, ChatRequest, Choice, Chunk, Completion, Endpoint, Loose, Message, ParamError,
    StreamTranslator, Target, UpstreamError, UpstreamRequest, Usage,
};
use crate::json_text::{self, Name, Object, ObjectWriter};
use crate::sse::{SseEvent, SseParser};
use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, StatusCode};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::HashMap;

/// Request fields that steer the gateway (OpenRouter-style routing and accounting
/// options) and mean nothing, or something else, to the upstream.
pub const GATEWAY_ONLY_FIELDS: [&str; 5] = ["models", "route", "provider", "usage", "transforms"];

/// An OpenAI-wire provider, named as in model ids (`openai`, `mock`, …).
pub struct OpenAiCompatible {
    provider: String,
    quirks: Quirks,
}

/// How an OpenAI-compatible upstream departs from OpenAI. Differences every host
/// agrees on (DeepSeek/xAI `reasoning_content`, Mistral's content arrays, Groq's
/// `x_groq.usage`) are normalised for all of them; these are the ones that conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quirks {
    /// What the provider's own SDK appends to its base URL to reach chat completions:
    /// `/chat/completions` where the base URL carries the version (OpenAI's
    /// `https://api.openai.com/v1`), `/v1/chat/completions` for Mistral, whose SDK takes
    /// the bare `https://api.mistral.ai`.
    pub chat_path: &'static str,
    /// The same for embeddings: `/embeddings`, `/v1/embeddings` for Mistral.
    pub embeddings_path: &'static str,
    /// The upstream rejects `stream_options` (Mistral answers 422) and reports usage in
    /// the final chunk unasked.
    pub stream_options_rejected: bool,
    /// The completion-limit field the upstream honours: OpenAI's current
    /// `max_completion_tokens` (its reasoning models refuse `max_tokens`), `max_tokens`
    /// for the hosts that only know the older name (Mistral rejects the newer one).
    pub limit_field: &'static str,
    /// The upstream calls `seed` `random_seed` and an embedding's `dimensions`
    /// `output_dimension`, and takes neither `encoding_format` nor `user` with
    /// embeddings (Mistral answers floats).
    pub mistral_parameter_names: bool,
    /// `completion_tokens` excludes `reasoning_tokens` (xAI: total = prompt +
    /// completion + reasoning, and xAI bills reasoning at the completion price).
    pub reasoning_outside_completion: bool,
    /// Perplexity bills a per-request search fee that depends on the search context
    /// size; the catalogue prices the default (`low`), so larger sizes are refused
    /// rather than under-billed.
    pub search_context_low_only: bool,
}

impl Quirks {
    pub const OPENAI: Quirks = Quirks {
        chat_path: "/chat/completions",
        embeddings_path: "/embeddings",
        limit_field: "max_completion_tokens",
        stream_options_rejected: false,
        mistral_parameter_names: false,
        reasoning_outside_completion: false,
        search_context_low_only: false,
    };
    pub const MISTRAL: Quirks = Quirks {
        chat_path: "/v1/chat/completions",
        embeddings_path: "/v1/embeddings",
        limit_field: "max_tokens",
        stream_options_rejected: true,
        mistral_parameter_names: true,
        ..Quirks::OPENAI
    };
    /// DeepSeek documents only `max_tokens`.
    pub const DEEPSEEK: Quirks = Quirks { limit_field: "max_tokens", ..Quirks::OPENAI };
    pub const XAI: Quirks = Quirks { reasoning_outside_completion: true, ..Quirks::OPENAI };
    /// Perplexity documents only `max_tokens`.
    pub const PERPLEXITY: Quirks =
        Quirks { search_context_low_only: true, limit_field: "max_tokens", ..Quirks::OPENAI };
}

impl OpenAiCompatible {
    pub fn new(provider: &str, quirks: Quirks) -> OpenAiCompatible {
        OpenAiCompatible { provider: provider.to_owned(), quirks }
    }
}

impl Adapter for OpenAiCompatible {
    fn provider(&self) -> &str {
        &self.provider
    }

    fn request(
        &self,
        endpoint: &Endpoint,
        chat: &ChatRequest,
        target: &Target,
    ) -> Result<UpstreamRequest, ParamError> {
        let body = self.upstream_body(chat, target)?;
        Ok(UpstreamRequest {
            url: format!("{}{}", endpoint.base_url.trim_end_matches('/'), self.quirks.chat_path),
            headers: bearer_headers(endpoint),
            body,
        })
    }

    /// The body is read in one pass (`WireAnswer`): `choices` into typed [`Choice`]s,
    /// the pass-through fields into trees, never the envelope the gateway rewrites.
    fn response(&self, _chat: &ChatRequest, body: &[u8]) -> Result<Completion, UpstreamError> {
        let invalid = |error: &dyn std::fmt::Display| {
            bad_gateway(&self.provider, format!("invalid response: {error}"))
        };
        let text = std::str::from_utf8(body).map_err(|error| invalid(&error))?;
        let answer: WireAnswer = json_text::read(text).map_err(|error| invalid(&error))?;
        if let Some(error) = answer.error {
            let error = error.get();
            return Err(bad_gateway(&self.provider, format!("error in 200 response: {error}")));
        }
        let usage = self.usage_of(answer.usage());
        let Some(Loose::Typed(mut choices)) = answer.choices else {
            return Err(bad_gateway(&self.provider, "response has no `choices` array"));
        };
        for choice in &mut choices {
            if let Some(message) = choice.message.as_mut().and_then(Loose::typed_mut) {
                normalise_message(message);
            }
        }
        let mut extra = Map::new();
        for (name, value) in answer.passed_through {
            extra.insert(name.into_owned(), tree(value));
        }
        Ok(Completion { choices, usage, extra })
    }

    fn stream(&self, _chat: &ChatRequest) -> Box<dyn StreamTranslator> {
        Box::new(OpenAiStream {
            adapter: OpenAiCompatible::new(&self.provider, self.quirks),
            passed_on: HashMap::new(),
            parser: SseParser::new(),
            events: Vec::new(),
            usage: Usage::default(),
            finish_reason_seen: false,
            done: false,
        })
    }

    fn error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        classify(&self.provider, status, headers, body)
    }

    fn embedder(&self) -> Option<&dyn Embedder> {
        Some(self)
    }
}

/// `POST /embeddings`: `input` an array of strings; `data[].embedding` floats or, when
/// `encoding_format` asked for it, base64; `usage.prompt_tokens`.
impl Embedder for OpenAiCompatible {
    fn embed_request(
        &self,
        endpoint: &Endpoint,
        request: &EmbedRequest,
        target: &EmbedTarget,
    ) -> UpstreamRequest {
        let mistral = self.quirks.mistral_parameter_names;
        let mut body = Map::new();
        body.insert("model".to_owned(), Value::from(target.upstream_model));
        let inputs = request.inputs.iter().map(embed::Input::to_json).collect();
        body.insert("input".to_owned(), Value::Array(inputs));
        if let Some(dimensions) = target.dimensions {
            let field = if mistral { "output_dimension" } else { "dimensions" };
            body.insert(field.to_owned(), Value::from(dimensions));
        }
        if !mistral {
            let encoding = match request.encoding {
                Encoding::Float => "float",
                Encoding::Base64 => "base64",
            };
            body.insert("encoding_format".to_owned(), Value::from(encoding));
            if let Some(user) = &request.user {
                body.insert("user".to_owned(), Value::from(user.as_str()));
            }
        }
        UpstreamRequest {
            url: format!(
                "{}{}",
                endpoint.base_url.trim_end_matches('/'),
                self.quirks.embeddings_path
            ),
            headers: bearer_headers(endpoint),
            body: Bytes::from(Value::Object(body).to_string()),
        }
    }

    /// OpenAI's own API takes token ids; Mistral's takes text only.
    fn takes_tokens(&self) -> bool {
        !self.quirks.mistral_parameter_names
    }

    fn embed_response(
        &self,
        request: &EmbedRequest,
        body: &[u8],
    ) -> Result<Embeddings, UpstreamError> {
        let object = embed::object(&self.provider, body)?;
        let Some(Value::Array(data)) = object.get("data") else {
            return Err(bad_gateway(&self.provider, "embeddings response has no `data` array"));
        };
        let mut indexed = Vec::with_capacity(data.len());
        for (position, item) in data.iter().enumerate() {
            let index = item.get("index").and_then(Value::as_u64).unwrap_or(position as u64);
            let vector = match item.get("embedding") {
                Some(Value::String(text)) => embed::decode_base64(text),
                Some(values) => embed::float_vector(values),
                None => None,
            };
            let vector = vector.ok_or_else(|| {
                bad_gateway(&self.provider, format!("data[{position}].embedding is no vector"))
            })?;
            indexed.push((index, vector));
        }
        indexed.sort_by_key(|(index, _)| *index);
        let vectors = indexed.into_iter().map(|(_, vector)| vector).collect();
        let input_tokens = usage_object(&object)
            .and_then(|usage| usage.get("prompt_tokens"))
            .and_then(Value::as_u64);
        embed::checked(&self.provider, request, vectors, input_tokens)
    }
}

impl OpenAiCompatible {
    /// The client's body with the members the gateway owns spliced in (`json_text.rs`):
    /// its own fields removed, the upstream's model name, exactly one completion limit
    /// (the reserved one, in the field this upstream honours) and, for a stream, usage
    /// asked for. Every other member goes as the client wrote it, in its order (each
    /// name once, with its last value, as a JSON reader would keep it).
    fn upstream_body(&self, chat: &ChatRequest, target: &Target) -> Result<Bytes, ParamError> {
        let body = chat.body.object().map_err(|error| body_error(&error))?;
        if self.quirks.search_context_low_only {
            check_search_context(&body)?;
        }
        // Mistral's `random_seed` is the client's `seed` where it set one.
        let seed = body.get("seed").filter(|_| self.quirks.mistral_parameter_names);
        let owned = |name: &str| {
            GATEWAY_ONLY_FIELDS.contains(&name)
                || matches!(name, "model" | "max_tokens" | "max_completion_tokens")
                || (chat.stream && matches!(name, "stream" | "stream_options"))
                || (seed.is_some() && matches!(name, "seed" | "random_seed"))
        };
        let mut out = Vec::with_capacity(chat.body.text().len() + 64);
        let mut writer = ObjectWriter::open(&mut out);
        body.write_members(&mut writer, owned);
        writer.member_str("model", target.upstream_model);
        writer.member_u64(self.quirks.limit_field, target.max_tokens);
        if let Some(seed) = seed {
            writer.member_raw("random_seed", seed.get());
        }
        if chat.stream {
            writer.member_bool("stream", true);
            if !self.quirks.stream_options_rejected {
                force_stream_usage(&body, &mut writer)?;
            }
        }
        writer.close();
        Ok(Bytes::from(out))
    }
}

fn body_error(error: &dyn std::fmt::Display) -> ParamError {
    ParamError { param: "body".to_owned(), message: error.to_string() }
}

/// Writes `stream_options` with `include_usage: true`, keeping any other stream options
/// the client chose. Without usage the gateway could not bill a stream.
fn force_stream_usage(body: &Object, writer: &mut ObjectWriter) -> Result<(), ParamError> {
    let client = match body.get_set("stream_options") {
        None => None,
        Some(options) => Some(json_text::object(options).ok_or_else(|| ParamError {
            param: "stream_options".to_owned(),
            message: "must be an object".to_owned(),
        })?),
    };
    let mut options = writer.member_object("stream_options");
    if let Some(client) = client {
        client.write_members(&mut options, |name| name == "include_usage");
    }
    options.member_bool("include_usage", true);
    options.close();
    Ok(())
}

/// `Content-Type: application/json` and, when the endpoint has a key, a bearer token.
pub(crate) fn bearer_headers(endpoint: &Endpoint) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(key) = &endpoint.api_key {
        // `Providers` only admits keys that are valid header values.
        let mut value = HeaderValue::try_from(format!("Bearer {key}"))
            .expect("provider keys are validated when loaded");
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    headers
}

impl OpenAiCompatible {
    /// The usage object, read with this upstream's quirks.
    fn usage_of(&self, usage_object: Option<&RawValue>) -> Usage {
        let mut usage = parse_usage(usage_object);
        if self.quirks.reasoning_outside_completion {
            usage.completion_tokens += usage.reasoning_tokens;
        }
        usage.reasoning_tokens = usage.reasoning_tokens.min(usage.completion_tokens);
        usage
    }
}

/// Top-level fields the gateway writes or consumes itself: the envelope (`id`,
/// `object`, `created`, `model`, `provider`), the translated `choices` and `usage`
/// (and Groq's `x_groq.usage`), `error`, and random-length padding that only masks the
/// upstream's own chunk sizes (OpenAI's `obfuscation`, Mistral's `p`).
const CONSUMED_FIELDS: [&str; 11] = [
    "id",
    "object",
    "created",
    "model",
    "provider",
    "choices",
    "usage",
    "x_groq",
    "error",
    "obfuscation",
    "p",
];

/// The top-level members of an OpenAI answer or stream chunk, read in one pass: `choices`
/// straight into typed [`Choice`]s (no tree; a second pass over their text, as raw values
/// read first, cost as much again), the usage, Groq's `x_groq` and a non-null `error` as raw text, the rest
/// of [`CONSUMED_FIELDS`] skipped, and every other non-null member kept as raw text to
/// pass on: OpenAI's `moderation`, `service_tier` and `system_fingerprint`, Perplexity's
/// `citations` and `search_results`, and whatever fields providers add later. A name
/// written twice keeps its last value, as a JSON reader's map does.
#[derive(Default)]
struct WireAnswer<'a> {
    /// A `choices` member that is no array (`null`) is kept as such.
    choices: Option<Loose<Vec<Choice>>>,
    usage: Option<&'a RawValue>,
    x_groq: Option<&'a RawValue>,
    error: Option<&'a RawValue>,
    /// In the order written.
    passed_through: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> WireAnswer<'a> {
    /// The usage object: top-level, or Groq's `x_groq.usage` (where older Groq streams
    /// put it).
    fn usage(&self) -> Option<&'a RawValue> {
        let is_object = |value: &&RawValue| json_text::is_object(value);
        self.usage
            .filter(is_object)
            .or_else(|| json_text::object(self.x_groq?)?.get("usage").filter(is_object))
    }
}

impl<'de> Deserialize<'de> for WireAnswer<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = WireAnswer<'de>;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut answer = WireAnswer::default();
                while let Some(Name(name)) = map.next_key::<Name>()? {
                    match &*name {
                        "choices" => answer.choices = Some(map.next_value()?),
                        "usage" => answer.usage = Some(map.next_value()?),
                        "x_groq" => answer.x_groq = Some(map.next_value()?),
                        "error" => {
                            let error: &RawValue = map.next_value()?;
                            answer.error = (!json_text::is_null(error)).then_some(error);
                        }
                        consumed if CONSUMED_FIELDS.contains(&consumed) => {
                            map.next_value::<IgnoredAny>()?;
                        }
                        _ => {
                            let value: &RawValue = map.next_value()?;
                            if !json_text::is_null(value) {
                                answer.passed_through.push((name, value));
                            }
                        }
                    }
                }
                Ok(answer)
            }
        }
        deserializer.deserialize_map(Members)
    }
}

/// The usage object: top-level, or Groq's `x_groq.usage` (where older Groq streams
/// put it).
fn usage_object(object: &Map<String, Value>) -> Option<&Value> {
    let top_level = object.get("usage").filter(|usage| usage.is_object());
    top_level.or_else(|| {
        object
            .get("x_groq")
            .and_then(|x_groq| x_groq.get("usage"))
            .filter(|usage| usage.is_object())
    })
}

/// Brings a message or delta to OpenRouter's shape: reasoning text in `reasoning`
/// (DeepSeek and xAI say `reasoning_content`), and `content` a string (Mistral's
/// reasoning models send an array of `text` and `thinking` parts).
fn normalise_message(message: &mut Message) {
    if let Some(reasoning) = message.reasoning_content.take() {
        if reasoning.as_str().is_some_and(|text| !text.is_empty()) {
            message.reasoning = Some(reasoning);
        }
    }
    let Some(Value::Array(parts)) = &message.content else {
        return;
    };
    let (mut text, mut thinking) = (String::new(), String::new());
    for part in parts {
        match part.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(part["text"].as_str().unwrap_or_default()),
            Some("thinking") => {
                for inner in part["thinking"].as_array().into_iter().flatten() {
                    thinking.push_str(inner["text"].as_str().unwrap_or_default());
                }
            }
            _ => {}
        }
    }
    message.content = Some(Value::String(text));
    if !thinking.is_empty() {
        let mut reasoning =
            message.reasoning.as_ref().and_then(Value::as_str).unwrap_or_default().to_owned();
        reasoning.push_str(&thinking);
        message.reasoning = Some(Value::String(reasoning));
    }
}

fn check_search_context(body: &Object) -> Result<(), ParamError> {
    let options = body.get("web_search_options").and_then(json_text::object);
    let size = options.as_ref().and_then(|options| options.get_set("search_context_size"));
    match size.map(json_text::as_str) {
        None => Ok(()),
        Some(Some(size)) if size == "low" => Ok(()),
        Some(_) => Err(ParamError {
            param: "web_search_options.search_context_size".to_owned(),
            message: "only `low` is supported: larger sizes carry request fees the \
                      gateway does not price"
                .to_owned(),
        }),
    }
}

#[derive(Deserialize, Default)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize, Default)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

/// Reads an OpenAI `usage` object. A missing or malformed one counts as zero tokens:
/// the response itself is still good, and the pipeline treats zero usage on a
/// successful response as a provider defect to log, not a reason to fail the client.
fn parse_usage(value: Option<&RawValue>) -> Usage {
    let wire = value.and_then(|value| serde_json::from_str::<WireUsage>(value.get()).ok());
    let wire = wire.unwrap_or_default();
    let cached = wire.prompt_tokens_details.and_then(|details| details.cached_tokens).unwrap_or(0);
    let reasoning =
        wire.completion_tokens_details.and_then(|details| details.reasoning_tokens).unwrap_or(0);
    Usage {
        prompt_tokens: wire.prompt_tokens,
        completion_tokens: wire.completion_tokens,
        // A provider reporting more cached than prompt tokens would make the cached
        // discount exceed the prompt charge; clamp to keep `Usage`'s inclusion rules.
        cached_read_tokens: cached.min(wire.prompt_tokens),
        // Clamped against completion tokens by `usage_of`, after the xAI correction.
        reasoning_tokens: reasoning,
        cached_write_tokens: 0,
    }
}

struct OpenAiStream {
    adapter: OpenAiCompatible,
    /// The pass-through fields last sent, as their JSON text, so repeats (Perplexity
    /// sends its citations on every chunk, OpenAI its `service_tier`) reach the client
    /// once, and are not even parsed again.
    passed_on: HashMap<String, String>,
    parser: SseParser,
    /// Reused between feeds to avoid an allocation per network read.
    events: Vec<SseEvent>,
    usage: Usage,
    finish_reason_seen: bool,
    done: bool,
}

/// JSON text already checked by the body's parse, read as a tree.
fn tree(raw: &RawValue) -> Value {
    serde_json::from_str(raw.get()).unwrap_or_default()
}

impl OpenAiStream {
    fn handle(&mut self, event: &SseEvent, out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        if self.done {
            return Ok(());
        }
        if event.data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        // One pass ([`WireAnswer`]): `choices` is read into typed choices for every chunk;
        // the envelope the gateway rewrites (`id`, `created`, `model`, padding) is never
        // built, the usage only when present.
        let chunk: WireAnswer = json_text::read(&event.data).map_err(|error| {
            bad_gateway(&self.adapter.provider, format!("invalid stream chunk: {error}"))
        })?;
        if let Some(error) = chunk.error.map(tree) {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| error.to_string(), str::to_owned);
            return Err(bad_gateway(
                &self.adapter.provider,
                format!("error mid-stream: {message}"),
            ));
        }
        if let Some(usage) = chunk.usage() {
            self.usage = self.adapter.usage_of(Some(usage));
        }
        let mut choices = match chunk.choices {
            Some(Loose::Typed(choices)) => choices,
            _ => Vec::new(),
        };
        let mut extra = Map::new();
        for (field, value) in chunk.passed_through {
            let text = value.get();
            if self.passed_on.get(&*field).is_some_and(|sent| sent == text) {
                continue;
            }
            extra.insert(field.clone().into_owned(), tree(value));
            self.passed_on.insert(field.into_owned(), text.to_owned());
        }
        if choices.is_empty() && extra.is_empty() {
            // A usage-only chunk: the pipeline emits usage itself, with the cost.
            return Ok(());
        }
        for choice in &mut choices {
            self.finish_reason_seen |= choice.finish_reason.as_ref().is_some_and(|r| !r.is_null());
            if let Some(delta) = choice.delta.as_mut().and_then(Loose::typed_mut) {
                normalise_message(delta);
            }
        }
        out.push(Chunk { choices, extra });
        Ok(())
    }

    fn drain(&mut self, out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        let events = std::mem::take(&mut self.events);
        let result = events.iter().try_for_each(|event| self.handle(event, out));
        self.events = events;
        self.events.clear();
        result
    }
}

impl StreamTranslator for OpenAiStream {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        self.parser
            .feed(bytes, &mut self.events)
            .map_err(|error| bad_gateway(&self.adapter.provider, error.to_string()))?;
        self.drain(out)
    }

    fn finish(&mut self, out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        self.parser
            .finish(&mut self.events)
            .map_err(|error| bad_gateway(&self.adapter.provider, error.to_string()))?;
        self.drain(out)?;
        // Some OpenAI-compatible hosts omit `[DONE]`; a finish reason is as good a
        // sign that the completion is whole.
        if self.done || self.finish_reason_seen {
            Ok(())
        } else {
            Err(bad_gateway(&self.adapter.provider, "stream ended before the completion finished"))
        }
    }

    fn usage(&self) -> Usage {
        self.usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{write_choices, ChatBody};
    use serde_json::json;

    fn chat(body: Value, stream: bool) -> ChatRequest {
        chat_text(&body.to_string(), stream)
    }

    /// A request as the client wrote it.
    fn chat_text(text: &str, stream: bool) -> ChatRequest {
        let body = ChatBody::from_text(Bytes::from(text.to_owned()));
        ChatRequest { body, stream, max_tokens: None, native: None }
    }

    /// The upstream body for the client's `text`, as text.
    fn forwarded(quirks: Quirks, text: &str, stream: bool) -> String {
        let adapter = OpenAiCompatible::new("openai", quirks);
        let upstream = adapter.request(&endpoint(None), &chat_text(text, stream), &target("up"));
        String::from_utf8(upstream.expect("valid").body.to_vec()).expect("utf-8")
    }

    fn target(upstream_model: &str) -> Target<'_> {
        Target { upstream_model, max_tokens: 100, controls: Default::default() }
    }

    fn endpoint(key: Option<&str>) -> Endpoint {
        Endpoint { base_url: "http://up.example/v1/".to_owned(), api_key: key.map(str::to_owned) }
    }

    #[test]
    fn forwards_the_body_with_the_upstream_model() {
        let adapter = OpenAiCompatible::new("openai", Quirks::OPENAI);
        let request = chat(
            json!({"model": "openai/gpt-4o", "models": ["a"], "route": "fallback",
                   "provider": {}, "usage": {"include": true}, "transforms": [],
                   "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5,
                   "x_unknown": 1}),
            false,
        );
        let upstream =
            adapter.request(&endpoint(Some("sk-1")), &request, &target("gpt-4o")).unwrap();
        assert_eq!(upstream.url, "http://up.example/v1/chat/completions");
        assert_eq!(upstream.headers[AUTHORIZATION], "Bearer sk-1");
        assert!(upstream.headers[AUTHORIZATION].is_sensitive());
        let expected = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
               "temperature": 0.5, "x_unknown": 1, "max_completion_tokens": 100});
        let sent: Value = serde_json::from_slice(&upstream.body).unwrap();
        assert_eq!(sent, expected);
        let keyless = adapter.request(&endpoint(None), &request, &target("gpt-4o")).unwrap();
        assert!(keyless.headers.get(AUTHORIZATION).is_none());
    }

    #[test]
    fn streams_always_include_usage() {
        let adapter = OpenAiCompatible::new("openai", Quirks::OPENAI);
        let check = |options: Value, expected: Value| {
            let request =
                chat(json!({"model": "m", "stream": true, "stream_options": options}), true);
            let upstream = adapter.request(&endpoint(None), &request, &target("u")).unwrap();
            let body = json!({"model": "u", "stream": true, "stream_options": expected,
                              "max_completion_tokens": 100});
            assert_eq!(serde_json::from_slice::<Value>(&upstream.body).unwrap(), body);
        };
        check(Value::Null, json!({"include_usage": true}));
        check(json!({"include_usage": false}), json!({"include_usage": true}));
        check(json!({"x": 1}), json!({"x": 1, "include_usage": true}));
        let bad = chat(json!({"model": "m", "stream": true, "stream_options": 3}), true);
        let error = adapter.request(&endpoint(None), &bad, &target("u")).unwrap_err();
        assert_eq!(error.param, "stream_options");
    }

    #[test]
    fn splices_the_gateway_fields_into_the_client_bytes() {
        let check = |quirks: Quirks, text: &str, stream: bool, expected: &str| {
            assert_eq!(forwarded(quirks, text, stream), expected, "{text}");
        };
        let openai = Quirks::OPENAI;
        // The client's members as written, in its order; the gateway's appended.
        check(
            openai,
            r#"{ "temperature" : 0.5, "model":"a/b", "messages":[{"role":"user","content":"hi"}] }"#,
            false,
            r#"{"temperature" : 0.5,"messages":[{"role":"user","content":"hi"}],"model":"up","max_completion_tokens":100}"#,
        );
        // Gateway fields removed; the same names inside other members stay.
        check(
            openai,
            r#"{"provider":{"order":["x"]},"models":["m"],"route":"fallback","usage":{"include":true},"transforms":[],"tools":[{"function":{"name":"f","parameters":{"model":"x","provider":1,"max_tokens":2}}}],"model":"a"}"#,
            false,
            r#"{"tools":[{"function":{"name":"f","parameters":{"model":"x","provider":1,"max_tokens":2}}}],"model":"up","max_completion_tokens":100}"#,
        );
        // Duplicate names: one member, the last value, as the client's JSON reader sees it.
        check(
            openai,
            r#"{"model":"a","temperature":1,"max_tokens":5,"temperature":0,"model":"b","max_tokens":7}"#,
            false,
            r#"{"temperature":0,"model":"up","max_completion_tokens":100}"#,
        );
        // Escapes: in strings kept as written; in names read unescaped.
        check(
            openai,
            r#"{"mod\u0065l":"a","user":"\"q\" \u00e9\n","max_tokens":3}"#,
            false,
            r#"{"user":"\"q\" \u00e9\n","model":"up","max_completion_tokens":100}"#,
        );
        // Streams: usage asked for, the client's other stream options kept.
        check(
            openai,
            r#"{"stream":true,"stream_options":{"x":[1],"include_usage":false},"model":"a"}"#,
            true,
            r#"{"model":"up","max_completion_tokens":100,"stream":true,"stream_options":{"x":[1],"include_usage":true}}"#,
        );
        check(
            openai,
            r#"{"stream":true,"model":"a"}"#,
            true,
            r#"{"model":"up","max_completion_tokens":100,"stream":true,"stream_options":{"include_usage":true}}"#,
        );
        // A plain request's `stream` members go as sent.
        check(
            openai,
            r#"{"stream":false,"stream_options":null,"model":"a"}"#,
            false,
            r#"{"stream":false,"stream_options":null,"model":"up","max_completion_tokens":100}"#,
        );
        // Mistral: `max_tokens`, `seed` as `random_seed`, no `stream_options`.
        check(
            Quirks::MISTRAL,
            r#"{"seed":42,"random_seed":1,"stream":true,"stream_options":{},"model":"a"}"#,
            true,
            r#"{"model":"up","max_tokens":100,"random_seed":42,"stream":true}"#,
        );
        check(
            Quirks::MISTRAL,
            r#"{"random_seed":1,"model":"a"}"#,
            false,
            r#"{"random_seed":1,"model":"up","max_tokens":100}"#,
        );
        // A model name that needs escaping is escaped.
        let adapter = OpenAiCompatible::new("openai", openai);
        let upstream = adapter
            .request(&endpoint(None), &chat_text("{}", false), &target("a\"b"))
            .expect("valid");
        assert_eq!(&upstream.body[..], br#"{"model":"a\"b","max_completion_tokens":100}"#);
    }

    #[test]
    fn a_translated_request_is_forwarded_from_its_tree() {
        let adapter = OpenAiCompatible::new("openai", Quirks::OPENAI);
        let Value::Object(tree) = json!({"model": "a", "messages": [], "provider": {}}) else {
            unreachable!()
        };
        let request = ChatRequest {
            body: ChatBody::from_tree(tree),
            stream: false,
            max_tokens: None,
            native: None,
        };
        let upstream = adapter.request(&endpoint(None), &request, &target("up")).expect("valid");
        assert_eq!(
            &upstream.body[..],
            br#"{"messages":[],"model":"up","max_completion_tokens":100}"#
        );
    }

    #[test]
    fn perplexity_refuses_larger_search_contexts() {
        let adapter = OpenAiCompatible::new("perplexity", Quirks::PERPLEXITY);
        let request =
            |options: &str| chat_text(&format!(r#"{{"web_search_options":{options}}}"#), false);
        for fine in
            ["null", "{}", r#"{"search_context_size":"low"}"#, r#"{"search_context_size":null}"#]
        {
            assert!(
                adapter.request(&endpoint(None), &request(fine), &target("u")).is_ok(),
                "{fine}"
            );
        }
        let error = adapter
            .request(&endpoint(None), &request(r#"{"search_context_size":"high"}"#), &target("u"))
            .unwrap_err();
        assert_eq!(error.param, "web_search_options.search_context_size");
    }

    #[test]
    fn clamps_inconsistent_usage() {
        let raw = |value: Value| RawValue::from_string(value.to_string()).unwrap();
        let usage = parse_usage(Some(&raw(json!({"prompt_tokens": 5, "completion_tokens": 2,
            "prompt_tokens_details": {"cached_tokens": 9},
            "completion_tokens_details": {"reasoning_tokens": null}}))));
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 5,
                completion_tokens: 2,
                cached_read_tokens: 5,
                ..Usage::default()
            }
        );
        assert_eq!(parse_usage(Some(&raw(json!("junk")))), Usage::default());
    }

    #[test]
    fn answers_are_read_in_one_pass_as_a_json_reader_would() {
        let adapter = OpenAiCompatible::new("openai", Quirks::OPENAI);
        let body = json!({"id": "x", "model": "m", "obfuscation": "pad", "error": null,
            "choices": [{"index": 0, "message": {"content": "a", "reasoning_content": "r"}}],
            "x_groq": {"usage": {"prompt_tokens": 2, "completion_tokens": 1}},
            "service_tier": "default", "moderation": null, "citations": ["c"]});
        let completion = adapter.response(&chat_text("{}", false), body.to_string().as_bytes());
        let completion = completion.expect("a completion");
        assert_eq!(
            json!(completion.choices),
            json!([{"index": 0, "message": {"content": "a", "reasoning": "r"}}])
        );
        assert_eq!(
            completion.usage,
            Usage { prompt_tokens: 2, completion_tokens: 1, ..Usage::default() }
        );
        let passed: Vec<&str> = completion.extra.keys().map(String::as_str).collect();
        assert_eq!(passed, ["citations", "service_tier"]);
        // A name written twice keeps its last value; a top-level `usage` wins over Groq's.
        let twice = r#"{"choices":[],"service_tier":"a","choices":[{"index":1}],"service_tier":"b",
            "usage":{"prompt_tokens":5},"x_groq":{"usage":{"prompt_tokens":9}}}"#;
        let completion = adapter.response(&chat_text("{}", false), twice.as_bytes()).unwrap();
        assert_eq!(json!(completion.choices), json!([{"index": 1}]));
        assert_eq!(completion.extra["service_tier"], "b");
        assert_eq!(completion.usage.prompt_tokens, 5);
        for (bad, message) in [
            (r#"{"choices":null}"#, "response has no `choices` array"),
            (
                r#"{"choices":[],"error":{"message":"m"}}"#,
                r#"error in 200 response: {"message":"m"}"#,
            ),
            ("[1]", "invalid response: not a JSON object"),
        ] {
            let error = adapter.response(&chat_text("{}", false), bad.as_bytes()).unwrap_err();
            assert_eq!(error.message, message, "{bad}");
        }
    }

    /// What a client receives of a chunk's choices, byte for byte: members sorted as a
    /// tree wrote them; unknown members (in a choice, a delta, a tool call, its
    /// function), nulls and logprobs kept; `reasoning_content` renamed; several choices.
    #[test]
    fn stream_choices_are_written_as_they_were() {
        let adapter = OpenAiCompatible::new("openai", Quirks::OPENAI);
        let mut translator = adapter.stream(&chat_text("{}", true));
        let event = r#"data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"delta":{"role":"assistant","content":null,"refusal":null,"reasoning_content":"think","tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get","arguments":"{\"a\":"},"x_call":1}],"x_delta":{"z":1,"a":[true]}},"logprobs":{"content":[{"token":"a","logprob":-0.5,"bytes":[97],"top_logprobs":[]}]},"finish_reason":null,"native_finish_reason":null},{"index":1,"delta":{"content":"b\u00e9\/"},"logprobs":null,"finish_reason":"stop"}]}"#;
        let mut chunks = Vec::new();
        translator.feed(format!("{event}\n\n").as_bytes(), &mut chunks).expect("a chunk");
        let mut written = Vec::new();
        write_choices(&mut written, &chunks[0].choices);
        let expected = r#"[{"delta":{"content":null,"reasoning":"think","refusal":null,"role":"assistant","tool_calls":[{"function":{"arguments":"{\"a\":","name":"get"},"id":"call_1","index":0,"type":"function","x_call":1}],"x_delta":{"a":[true],"z":1}},"finish_reason":null,"index":0,"logprobs":{"content":[{"bytes":[97],"logprob":-0.5,"token":"a","top_logprobs":[]}]},"native_finish_reason":null},{"delta":{"content":"bé/"},"finish_reason":"stop","index":1,"logprobs":null}]"#;
        assert_eq!(String::from_utf8(written).expect("utf-8"), expected);
        assert_eq!(json!(chunks[0].extra), json!({"system_fingerprint": "fp"}));
        // An empty reasoning text is dropped, as before.
        let empty =
            r#"data: {"choices":[{"index":0,"delta":{"reasoning_content":"","content":"x"}}]}"#;
        translator.feed(format!("{empty}\n\n").as_bytes(), &mut chunks).expect("a chunk");
        let mut written = Vec::new();
        write_choices(&mut written, &chunks[1].choices);
        assert_eq!(written, br#"[{"delta":{"content":"x"},"index":0}]"#);
    }

    #[test]
    fn stream_reports_truncation_and_mid_stream_errors() {
        let adapter = OpenAiCompatible::new("openai", Quirks::OPENAI);
        let streamed = chat_text("{}", true);
        let mut out = Vec::new();
        let mut truncated = adapter.stream(&streamed);
        let partial =
            br#"data: {"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}"#;
        truncated.feed(partial, &mut out).unwrap();
        truncated.feed(b"\n\n", &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(truncated.finish(&mut out).unwrap_err().status, StatusCode::BAD_GATEWAY);

        let mut failing = adapter.stream(&streamed);
        let error = failing
            .feed(b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n", &mut out)
            .unwrap_err();
        assert_eq!(error.to_string(), "upstream openai: error mid-stream: overloaded");
    }
}
