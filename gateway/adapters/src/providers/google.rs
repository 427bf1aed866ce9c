//! The Google Gemini adapter (`generateContent` and `streamGenerateContent?alt=sse`):
//! roles and parts, function declarations and calls, JSON output, inline and URL
//! images, thinking, cited and grounding sources (a top-level `citations` array of URLs,
//! as Perplexity's), and Gemini's cumulative usage, as OpenAI chat completions.
//!
//! Gemini function calls carry no id, so the adapter makes one from the response id and
//! the call's position: the same response always yields the same ids, streamed or not.
//! When a conversation comes back, each tool result is matched to its call through the
//! assistant message that holds the id, which gives the function name Gemini wants.

use super::assemble::{self, Citations};
use super::embed::{self, EmbedRequest, EmbedTarget, Embedder, Embeddings};
use super::errors::{bad_gateway, classify, truncate, RETRY_AFTER_MAX};
use super::event::{self, lenient_object, Count, Flag, IfObject, List, Skip, Str, Values};
use super::translate::{self, param_error, Part, ResponseFormat, ToolChoice};
use super::{
    Adapter, ChatRequest, Choice, Chunk, Completion, Endpoint, Loose, Message, ParamError,
    StreamTranslator, Target, ToolCall, UpstreamError, UpstreamRequest, Usage,
};
use crate::providers::ERROR_BYTES_MAX;
use crate::sse::{SseEvent, SseParser};
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, StatusCode};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::time::Duration;

const PROVIDER: &str = "google";

/// The image types Gemini accepts, by the file extension of an image URL. Gemini
/// fetches public `https:` URLs itself (`fileData`), but wants the MIME type up front,
/// and the adapter does no I/O to sniff it.
const IMAGE_TYPES_BY_EXTENSION: [(&str, &str); 6] = [
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("webp", "image/webp"),
    ("heic", "image/heic"),
    ("heif", "image/heif"),
];

pub struct Google;

impl Adapter for Google {
    fn provider(&self) -> &str {
        PROVIDER
    }

    fn parameters(&self) -> &'static [&'static str] {
        &[
            "max_tokens",
            "temperature",
            "top_p",
            "stop",
            "seed",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "response_format",
            "structured_outputs",
            "reasoning_effort",
        ]
    }

    fn request(
        &self,
        endpoint: &Endpoint,
        chat: &ChatRequest,
        target: &Target,
    ) -> Result<UpstreamRequest, ParamError> {
        let body = translate_request(chat.body.tree(), target.max_tokens)?;
        let headers = key_headers(endpoint);
        let method = if chat.stream { "streamGenerateContent?alt=sse" } else { "generateContent" };
        let base_url = endpoint.base_url.trim_end_matches('/');
        let body = serde_json::to_vec(&Value::Object(body)).expect("JSON values always serialize");
        Ok(UpstreamRequest {
            url: format!("{base_url}/v1beta/models/{}:{method}", target.upstream_model),
            headers,
            body: Bytes::from(body),
        })
    }

    fn response(&self, chat: &ChatRequest, body: &[u8]) -> Result<Completion, UpstreamError> {
        // The answer is read as a stream event is, straight from its text (what is no
        // object reads as an empty reply, as it did when it was read into a tree first).
        let reply = event::read_body::<IfObject<Reply>>(body)
            .map_err(|error| bad_gateway(PROVIDER, format!("invalid response: {error}")))?
            .0
            .unwrap_or_default();
        if let Some(error) = &reply.error {
            return Err(embedded_error(error, "in a 200 response"));
        }
        let usage = usage_of(reply.usage_metadata.as_ref().and_then(|m| m.0.as_ref()));
        let response_id = event::text(&reply.response_id).map(str::to_owned);
        let mut ids = CallIds { response_id, n: 0 };
        let mut output = Output::default();
        let mut citations = Citations::default();
        let finish_reason = match event::items(&reply.candidates).first() {
            Some(candidate) => {
                output.read(candidate, &mut ids);
                read_citations(&mut citations, candidate);
                match event::text(&candidate.finish_reason) {
                    Some(reason) => {
                        let message = event::text(&candidate.finish_message).unwrap_or_default();
                        let produced = !output.is_empty();
                        let has_tool_calls = !output.tool_calls.is_empty();
                        Value::from(finish_reason(reason, message, has_tool_calls, produced)?)
                    }
                    None => Value::Null,
                }
            }
            None if reply.prompt_feedback.is_some() => Value::from("content_filter"),
            None => return Err(bad_gateway(PROVIDER, "response has no candidates")),
        };
        let choice = Choice {
            finish_reason: Some(finish_reason),
            index: Some(Value::from(0)),
            message: Some(Loose::Typed(Box::new(output.message()))),
            ..Choice::default()
        };
        let completion = Completion { choices: vec![choice], usage, extra: citations.extra() };
        Ok(assemble::first_tool_call_only(chat.body.tree(), completion))
    }

    fn stream(&self, chat: &ChatRequest) -> Box<dyn StreamTranslator> {
        let stream = Box::new(GoogleStream {
            parser: SseParser::new(),
            events: Vec::new(),
            at_line_start: true,
            error_body: None,
            usage: Usage::default(),
            ids: CallIds { response_id: None, n: 0 },
            role_sent: false,
            citations: Citations::default(),
            finish: None,
            prompt_blocked: false,
        });
        assemble::stream_first_tool_call_only(chat.body.tree(), stream)
    }

    /// Google's errors are `{"error": {"code", "message", "status", "details"}}`. Two
    /// details matter: an invalid key is a 400 (`API_KEY_INVALID`) although it is the
    /// operator's credentials, not the client's request, that failed; and a 429 says
    /// when to retry in a `RetryInfo` detail rather than in `Retry-After`.
    fn error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let error = parsed.as_ref().map_or(&Value::Null, |parsed| &parsed["error"]);
        let mut classified = classify(PROVIDER, status, headers, body);
        if error_reasons(error).any(|reason| reason == "API_KEY_INVALID") {
            classified.status = StatusCode::UNAUTHORIZED;
        }
        if classified.fallback && classified.retry_after.is_none() {
            classified.retry_after = retry_delay(error);
        }
        classified
    }

    fn embedder(&self) -> Option<&dyn Embedder> {
        Some(self)
    }
}

/// `Content-Type: application/json` and, when the endpoint has a key, `x-goog-api-key`.
fn key_headers(endpoint: &Endpoint) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(key) = &endpoint.api_key {
        let mut value =
            HeaderValue::try_from(key.as_str()).expect("provider keys are validated when loaded");
        value.set_sensitive(true);
        headers.insert("x-goog-api-key", value);
    }
    headers
}

/// `POST /v1beta/models/{model}:batchEmbedContents`: one `requests[]` entry per input
/// (`content.parts[].text`, `outputDimensionality`), answered by `embeddings[].values`
/// in order. Gemini reports no token count for embeddings: the pipeline bills its own
/// count of the inputs.
impl Embedder for Google {
    fn embed_request(
        &self,
        endpoint: &Endpoint,
        request: &EmbedRequest,
        target: &EmbedTarget,
    ) -> UpstreamRequest {
        let model = format!("models/{}", target.upstream_model);
        let requests: Vec<Value> = request
            .inputs
            .iter()
            // Routing sends token ids only to embedders that take them.
            .filter_map(embed::Input::text)
            .map(|text| {
                let mut entry = json!({"model": model, "content": {"parts": [{"text": text}]}});
                if let Some(dimensions) = target.dimensions {
                    entry["outputDimensionality"] = Value::from(dimensions);
                }
                entry
            })
            .collect();
        let base_url = endpoint.base_url.trim_end_matches('/');
        UpstreamRequest {
            url: format!("{base_url}/v1beta/{model}:batchEmbedContents"),
            headers: key_headers(endpoint),
            body: Bytes::from(json!({"requests": requests}).to_string()),
        }
    }

    fn embed_response(
        &self,
        request: &EmbedRequest,
        body: &[u8],
    ) -> Result<Embeddings, UpstreamError> {
        let object = embed::object(PROVIDER, body)?;
        let Some(Value::Array(embeddings)) = object.get("embeddings") else {
            return Err(bad_gateway(PROVIDER, "embeddings response has no `embeddings` array"));
        };
        let vectors = embeddings
            .iter()
            .enumerate()
            .map(|(position, embedding)| {
                embed::float_vector(&embedding["values"]).ok_or_else(|| {
                    bad_gateway(PROVIDER, format!("embeddings[{position}].values is no vector"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        embed::checked(PROVIDER, request, vectors, None)
    }
}

fn translate_request(
    body: &Map<String, Value>,
    max_tokens: u64,
) -> Result<Map<String, Value>, ParamError> {
    translate::check_fields(PROVIDER, body, &[])?;
    // `parallel_tool_calls` has no Gemini field: `false` is kept to by the answer's
    // translation (see `assemble::first_tool_call_only`).
    let mut out = Map::new();
    let (system, contents) = contents(body)?;
    out.insert("contents".to_owned(), Value::Array(contents));
    if !system.is_empty() {
        out.insert("systemInstruction".to_owned(), json!({"parts": system}));
    }
    tools(body, &mut out)?;
    out.insert("generationConfig".to_owned(), Value::Object(generation_config(body, max_tokens)?));
    // `user` (an end-user id for abuse tracking) has no Gemini field and does not change
    // the answer, so it is the one translated field left out.
    Ok(out)
}

fn generation_config(
    body: &Map<String, Value>,
    max_tokens: u64,
) -> Result<Map<String, Value>, ParamError> {
    let mut config = Map::new();
    translate::max_tokens(body)?;
    config.insert("maxOutputTokens".to_owned(), Value::from(max_tokens));
    translate::copy_number(body, "temperature", &mut config, "temperature")?;
    translate::copy_number(body, "top_p", &mut config, "topP")?;
    translate::copy_number(body, "seed", &mut config, "seed")?;
    if let Some(stops) = translate::stop_sequences(body)? {
        config.insert("stopSequences".to_owned(), Value::Array(stops));
    }
    // `responseJsonSchema` takes the client's JSON Schema (see `gemini_schema`); the
    // older `responseSchema` takes an OpenAPI subset that would need a lossy conversion.
    match translate::response_format(body)? {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => {
            config.insert("responseMimeType".to_owned(), Value::from("application/json"));
        }
        Some(ResponseFormat::JsonSchema { schema, .. }) => {
            config.insert("responseMimeType".to_owned(), Value::from("application/json"));
            config.insert("responseJsonSchema".to_owned(), gemini_schema(schema));
        }
    }
    if let Some(effort) = translate::reasoning_effort(body)? {
        // The shared budgets lie inside every Gemini 2.5 model's accepted range (128 to
        // 32,768 for Pro, 0 to 24,576 for Flash). A client asking for reasoning wants to
        // see it: Gemini only returns thought summaries when asked to.
        let budget = translate::thinking_budget(effort);
        config.insert(
            "thinkingConfig".to_owned(),
            json!({"thinkingBudget": budget, "includeThoughts": true}),
        );
    }
    Ok(config)
}

fn tools(body: &Map<String, Value>, out: &mut Map<String, Value>) -> Result<(), ParamError> {
    let tools = translate::tools(body)?;
    if !tools.is_empty() {
        // `parametersJsonSchema` takes JSON Schema, as OpenAI clients write it.
        let declarations: Vec<Value> = tools
            .into_iter()
            .map(|tool| {
                json!({
                    "name": tool.name,
                    "description": tool.description.unwrap_or_default(),
                    "parametersJsonSchema": gemini_schema(&tool.parameters),
                })
            })
            .collect();
        out.insert("tools".to_owned(), json!([{"functionDeclarations": declarations}]));
    }
    let config = match translate::tool_choice(body)? {
        None => return Ok(()),
        Some(ToolChoice::Auto) => json!({"mode": "AUTO"}),
        Some(ToolChoice::None) => json!({"mode": "NONE"}),
        Some(ToolChoice::Required) => json!({"mode": "ANY"}),
        Some(ToolChoice::Function(name)) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
    };
    out.insert("toolConfig".to_owned(), json!({"functionCallingConfig": config}));
    Ok(())
}

/// A client's JSON Schema as Gemini takes it. Gemini documents the keywords it supports
/// (`$id`, `$defs`, `$ref`, `$anchor`, `type`, `format`, `title`, `description`, `enum`,
/// `items`, `prefixItems`, `minItems`, `maxItems`, `minimum`, `maximum`, `anyOf`,
/// `oneOf`, `properties`, `additionalProperties`, `required`, `propertyOrdering`); the
/// rest "may be sent" but constrain nothing. Three rewrites make what Pydantic
/// (Instructor, LangChain, the OpenAI Agents SDK) and zod write mean to Gemini what it
/// means to OpenAI:
/// * a `$ref` sub-schema keeps only its `$` keywords: Gemini refuses any other beside a
///   `$ref` (Pydantic writes a nested model's `description` and `default` there);
/// * `allOf` of one schema (older Pydantic's wrapper of a described `$ref`) becomes
///   that schema, and `const` (a `Literal`) becomes a one-value `enum`, so both
///   constrain the answer instead of being ignored;
/// * a `title` that only restates its property's name or its `$defs` key (Pydantic
///   titles every property `city` "City") is dropped: it tells the model nothing, and
///   the schema is part of the billed prompt. Other titles stay.
///
/// Anything else is sent as the client wrote it.
fn gemini_schema(schema: &Value) -> Value {
    gemini_subschema(schema, None)
}

/// [`gemini_schema`] of a sub-schema named `name` (a property or a `$defs` entry).
fn gemini_subschema(schema: &Value, name: Option<&str>) -> Value {
    let Value::Object(object) = schema else { return schema.clone() };
    if let Some(Value::Array(all)) = object.get("allOf") {
        if let [only] = all.as_slice() {
            let mut merged = object.clone();
            merged.remove("allOf");
            for (keyword, value) in only.as_object().into_iter().flatten() {
                merged.entry(keyword.clone()).or_insert_with(|| value.clone());
            }
            return gemini_subschema(&Value::Object(merged), name);
        }
    }
    let is_ref = object.contains_key("$ref");
    let mut out = Map::new();
    for (keyword, value) in object {
        if is_ref && !keyword.starts_with('$') {
            continue;
        }
        let value = match keyword.as_str() {
            "properties" | "$defs" | "definitions" => named_subschemas(value),
            "items" | "additionalProperties" | "not" => gemini_subschema(value, None),
            "anyOf" | "oneOf" | "allOf" | "prefixItems" => match value {
                Value::Array(schemas) => {
                    schemas.iter().map(|schema| gemini_subschema(schema, None)).collect()
                }
                other => other.clone(),
            },
            "const" if !object.contains_key("enum") => {
                out.insert("enum".to_owned(), Value::Array(vec![value.clone()]));
                continue;
            }
            "title" if name.is_some_and(|name| restates(value, name)) => continue,
            _ => value.clone(),
        };
        out.insert(keyword.clone(), value);
    }
    Value::Object(out)
}

/// The sub-schemas of `properties` or `$defs`, each under its name.
fn named_subschemas(schemas: &Value) -> Value {
    let Value::Object(schemas) = schemas else { return schemas.clone() };
    let converted =
        schemas.iter().map(|(name, schema)| (name.clone(), gemini_subschema(schema, Some(name))));
    Value::Object(converted.collect())
}

/// Whether `title` says no more than `name`: the name itself (a `$defs` key is its
/// model's name), or Pydantic's title of a field so named (Python's `str.title()` of
/// the name, underscores as spaces: `first_name` is "First Name").
fn restates(title: &Value, name: &str) -> bool {
    let Some(title) = title.as_str() else { return false };
    let mut pydantic = String::with_capacity(name.len());
    let mut after_letter = false;
    for character in name.chars() {
        if character.is_alphabetic() {
            if after_letter {
                pydantic.extend(character.to_lowercase());
            } else {
                pydantic.extend(character.to_uppercase());
            }
            after_letter = true;
        } else {
            pydantic.push(if character == '_' { ' ' } else { character });
            after_letter = false;
        }
    }
    title == name || title == pydantic.trim()
}

/// Splits OpenAI messages into system instruction parts and Gemini contents. Tool
/// results become `functionResponse` parts of a user turn, and consecutive turns of one
/// role merge, so the results of one model turn travel together as Gemini wants.
fn contents(body: &Map<String, Value>) -> Result<(Vec<Value>, Vec<Value>), ParamError> {
    let mut system = Vec::new();
    let mut turns: Vec<(&str, Vec<Value>)> = Vec::new();
    let mut names_by_call_id: HashMap<&str, &str> = HashMap::new();
    for (message_idx, (role, message)) in translate::messages(body)?.into_iter().enumerate() {
        let param = format!("messages[{message_idx}]");
        let (turn_role, parts) = match role {
            "system" | "developer" => {
                let text = translate::text_only(&message["content"], &format!("{param}.content"))?;
                system.extend(text_part(&text));
                continue;
            }
            "user" => ("user", user_parts(&message["content"], &format!("{param}.content"))?),
            "assistant" => ("model", model_parts(message, &param, &mut names_by_call_id)?),
            "tool" => ("user", vec![function_response(message, &param, &names_by_call_id)?]),
            other => {
                return Err(param_error(format!("{param}.role"), format!("unknown role `{other}`")))
            }
        };
        // Gemini rejects a turn without parts; an empty message says nothing anyway.
        if parts.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last_role, last_parts)) if *last_role == turn_role => last_parts.extend(parts),
            _ => turns.push((turn_role, parts)),
        }
    }
    let turns =
        turns.into_iter().map(|(role, parts)| json!({"role": role, "parts": parts})).collect();
    Ok((system, turns))
}

/// A text part, unless the text is empty: Gemini rejects empty text parts.
fn text_part(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({"text": text}))
}

fn user_parts(content: &Value, param: &str) -> Result<Vec<Value>, ParamError> {
    let mut parts = Vec::new();
    for (part_idx, part) in translate::content_parts(content, param)?.into_iter().enumerate() {
        match part {
            Part::Text(text) => parts.extend(text_part(text)),
            Part::ImageData { media_type, data } => {
                parts.push(json!({"inlineData": {"mimeType": media_type, "data": data}}))
            }
            Part::ImageUrl(url) => {
                let here = format!("{param}[{part_idx}].image_url.url");
                let media_type = image_type(url).ok_or_else(|| {
                    param_error(
                        here,
                        "gemini needs the image type: send a data: URL, or a URL whose path \
                         ends in .png, .jpg, .jpeg, .webp, .heic or .heif",
                    )
                })?;
                parts.push(json!({"fileData": {"mimeType": media_type, "fileUri": url}}));
            }
        }
    }
    Ok(parts)
}

/// The MIME type an image URL's path names by its extension.
fn image_type(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let extension = path.rsplit_once('.')?.1.to_ascii_lowercase();
    IMAGE_TYPES_BY_EXTENSION
        .iter()
        .find(|(known, _)| *known == extension)
        .map(|(_, media_type)| *media_type)
}

fn model_parts<'a>(
    message: &'a Value,
    param: &str,
    names_by_call_id: &mut HashMap<&'a str, &'a str>,
) -> Result<Vec<Value>, ParamError> {
    let text = translate::text_only(&message["content"], &format!("{param}.content"))?;
    let mut parts: Vec<Value> = text_part(&text).into_iter().collect();
    for (call_idx, call) in translate::tool_calls(message, param)?.into_iter().enumerate() {
        let args = match call.arguments {
            Value::Null => Value::Object(Map::new()),
            Value::Object(args) => Value::Object(args),
            _ => {
                return Err(param_error(
                    format!("{param}.tool_calls[{call_idx}].function.arguments"),
                    "must be a JSON object",
                ))
            }
        };
        names_by_call_id.insert(call.id, call.name);
        // Gemini accepts the id back and uses it to pair the call with its result.
        parts.push(json!({"functionCall": {"id": call.id, "name": call.name, "args": args}}));
    }
    Ok(parts)
}

fn function_response(
    message: &Value,
    param: &str,
    names_by_call_id: &HashMap<&str, &str>,
) -> Result<Value, ParamError> {
    let here = format!("{param}.tool_call_id");
    let id = message["tool_call_id"]
        .as_str()
        .ok_or_else(|| param_error(here.as_str(), "is required"))?;
    let name = names_by_call_id
        .get(id)
        .ok_or_else(|| param_error(here.as_str(), "matches no tool call of an earlier message"))?;
    let output = translate::text_only(&message["content"], &format!("{param}.content"))?;
    // `output` is the key Google documents for a function's result.
    Ok(json!({"functionResponse": {"id": id, "name": name, "response": {"output": output}}}))
}

/// Makes stable tool-call ids: the response id and the call's position in the answer.
struct CallIds {
    response_id: Option<String>,
    n: u64,
}

impl CallIds {
    fn next(&mut self) -> (u64, String) {
        let call_idx = self.n;
        self.n += 1;
        let id = match &self.response_id {
            Some(response_id) => format!("call_{response_id}_{call_idx}"),
            None => format!("call_{call_idx}"),
        };
        (call_idx, id)
    }
}

/// What a candidate's parts add to the answer.
#[derive(Default)]
struct Output {
    text: String,
    reasoning: String,
    /// OpenAI tool calls, each with its stream `index`.
    tool_calls: Vec<ToolCall>,
}

impl Output {
    /// Reads the parts of `candidate`. `thoughtSignature`s are dropped: Gemini 2.5 takes
    /// a conversation without them (it only loses the thought context), and OpenAI
    /// messages have no field to carry them back. Code-execution and other server-tool
    /// parts cannot occur: the adapter never enables those tools.
    fn read(&mut self, candidate: &Candidate, ids: &mut CallIds) {
        let content = candidate.content.as_ref();
        for part in content.map_or(&[][..], |content| event::items(&content.parts)) {
            if let Some(text) = event::text(&part.text) {
                let thought = part.thought.is_some_and(|thought| thought.0);
                let target = if thought { &mut self.reasoning } else { &mut self.text };
                target.push_str(text);
            } else if let Some(call) = &part.function_call {
                let (call_idx, id) = ids.next();
                let arguments = match &call.args {
                    None | Some(Value::Null) => "{}".to_owned(),
                    Some(args) => args.to_string(),
                };
                let start = (Value::from(id), call.name.clone().unwrap_or(Value::Null));
                let call = assemble::tool_call(Some(call_idx), Some(start), Value::from(arguments));
                self.tool_calls.push(call);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.text.is_empty() && self.reasoning.is_empty() && self.tool_calls.is_empty()
    }

    /// The non-streamed assistant message.
    fn message(mut self) -> Message {
        for call in &mut self.tool_calls {
            call.index = None;
        }
        let content = if self.text.is_empty() && !self.tool_calls.is_empty() {
            Value::Null
        } else {
            Value::from(self.text)
        };
        let reasoning = (!self.reasoning.is_empty()).then(|| Value::from(self.reasoning));
        let tool_calls = (!self.tool_calls.is_empty())
            .then(|| Loose::Typed(self.tool_calls.into_iter().map(Loose::Typed).collect()));
        Message {
            content: Some(content),
            reasoning,
            role: Some(Value::from("assistant")),
            tool_calls,
            ..Message::default()
        }
    }

    /// The stream delta, if the parts added anything.
    fn delta(self) -> Option<Message> {
        let delta = Message {
            content: (!self.text.is_empty()).then(|| Value::from(self.text)),
            reasoning: (!self.reasoning.is_empty()).then(|| Value::from(self.reasoning)),
            tool_calls: (!self.tool_calls.is_empty())
                .then(|| Loose::Typed(self.tool_calls.into_iter().map(Loose::Typed).collect())),
            ..Message::default()
        };
        (!delta.is_empty()).then_some(delta)
    }
}

/// The sources a candidate cites, as the top-level `citations` array of URLs of the
/// Perplexity/OpenRouter convention: the `uri`s of `citationMetadata.citationSources`
/// (where recited text comes from) and of `groundingMetadata.groundingChunks` (the
/// search results and places behind a grounded answer: `web`, `maps`,
/// `retrievedContext`), in order of first appearance, each once. A source without a URI
/// names nothing a client could follow, so it is left out.
fn read_citations(citations: &mut Citations, candidate: &Candidate) -> bool {
    let recited = candidate.citation_metadata.as_ref();
    let recited = recited.map_or(&[][..], |metadata| event::items(&metadata.citation_sources));
    let grounded = candidate.grounding_metadata.as_ref();
    let grounded = grounded.map_or(&[][..], |metadata| event::items(&metadata.grounding_chunks));
    let grounded = grounded.iter().flat_map(|chunk| &chunk.0);
    let mut new = false;
    for uri in recited.iter().chain(grounded).filter_map(|source| event::text(&source.uri)) {
        new |= citations.insert(uri);
    }
    new
}

lenient_object! {
    /// A complete answer, or one stream event (a piece of one): the members the
    /// translation reads.
    struct Reply<'de> {
        /// Read as a tree: it ends the answer.
        "error" => error: Value,
        /// Taken only when it is an object.
        "usageMetadata" => usage_metadata: IfObject<UsageMetadata<'de>>,
        "responseId" => response_id: Str<'de>,
        "candidates" => candidates: List<Candidate<'de>>,
        "promptFeedback" => prompt_feedback: Skip,
    }

    struct UsageMetadata<'de> {
        "cachedContentTokenCount" => cached_content_token_count: Count,
        "candidatesTokenCount" => candidates_token_count: Count,
        "promptTokenCount" => prompt_token_count: Count,
        "thoughtsTokenCount" => thoughts_token_count: Count,
        "toolUsePromptTokenCount" => tool_use_prompt_token_count: Count,
    }

    struct Candidate<'de> {
        "content" => content: Content<'de>,
        "finishReason" => finish_reason: Str<'de>,
        "finishMessage" => finish_message: Str<'de>,
        "citationMetadata" => citation_metadata: CitationMetadata<'de>,
        "groundingMetadata" => grounding_metadata: GroundingMetadata<'de>,
    }

    struct Content<'de> {
        "parts" => parts: List<WirePart<'de>>,
    }

    struct WirePart<'de> {
        "text" => text: Str<'de>,
        "thought" => thought: Flag,
        "functionCall" => function_call: FunctionCall<'de>,
    }

    /// `args` is passed on as JSON text, written from its tree (keys sorted).
    struct FunctionCall<'de> {
        "name" => name: Value,
        "args" => args: Value,
    }

    struct CitationMetadata<'de> {
        "citationSources" => citation_sources: List<Source<'de>>,
    }

    struct GroundingMetadata<'de> {
        /// Each a `web`, `maps` or `retrievedContext` source (any member's value).
        "groundingChunks" => grounding_chunks: List<Values<Source<'de>>>,
    }

    struct Source<'de> {
        "uri" => uri: Str<'de>,
    }
}

/// How a Gemini generation ended, in OpenAI's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    Stop,
    Length,
    ContentFilter,
    /// The model failed (`OTHER`, `MALFORMED_FUNCTION_CALL`, …, and reasons newer than
    /// this adapter, which so far have all been failures).
    Failed,
}

fn finish_kind(reason: &str) -> Finish {
    match reason {
        "STOP" => Finish::Stop,
        "MAX_TOKENS" => Finish::Length,
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION" => Finish::ContentFilter,
        _ => Finish::Failed,
    }
}

/// The OpenAI finish reason. A failed generation that produced nothing is an upstream
/// error, so the router may try another candidate; one that produced something ends
/// with OpenRouter's `error` finish reason, keeping what was generated.
fn finish_reason(
    reason: &str,
    message: &str,
    has_tool_calls: bool,
    produced: bool,
) -> Result<&'static str, UpstreamError> {
    match finish_kind(reason) {
        Finish::Stop if has_tool_calls => Ok("tool_calls"),
        Finish::Stop => Ok("stop"),
        Finish::Length => Ok("length"),
        Finish::ContentFilter => Ok("content_filter"),
        Finish::Failed if produced => Ok("error"),
        Finish::Failed => Err(bad_gateway(PROVIDER, truncate(format!("{reason}: {message}")))),
    }
}

/// Gemini usage in `Usage` terms: `candidatesTokenCount` excludes thoughts, which are
/// billed as output; prompt tokens a server-side tool added (`toolUsePromptTokenCount`)
/// are billed as input; `cachedContentTokenCount` is part of `promptTokenCount`.
fn usage_of(metadata: Option<&UsageMetadata>) -> Usage {
    let count = |count: fn(&UsageMetadata) -> Option<u64>| metadata.and_then(count).unwrap_or(0);
    let prompt_tokens = count(|m| event::count(&m.prompt_token_count))
        .saturating_add(count(|m| event::count(&m.tool_use_prompt_token_count)));
    let thoughts = count(|m| event::count(&m.thoughts_token_count));
    Usage {
        prompt_tokens,
        completion_tokens: count(|m| event::count(&m.candidates_token_count))
            .saturating_add(thoughts),
        reasoning_tokens: thoughts,
        cached_read_tokens: count(|m| event::count(&m.cached_content_token_count))
            .min(prompt_tokens),
        cached_write_tokens: 0,
    }
}

/// The `reason`s of an error's `ErrorInfo` details.
fn error_reasons(error: &Value) -> impl Iterator<Item = &str> {
    error["details"].as_array().into_iter().flatten().filter_map(|detail| detail["reason"].as_str())
}

/// The delay of an error's `RetryInfo` detail (`"34.4s"`), rounded up to whole seconds
/// so a retry never comes early, and capped like `Retry-After`.
fn retry_delay(error: &Value) -> Option<Duration> {
    let delay = error["details"]
        .as_array()?
        .iter()
        .find(|detail| detail["@type"] == "type.googleapis.com/google.rpc.RetryInfo")?
        .get("retryDelay")?
        .as_str()?;
    let seconds: f64 = delay.strip_suffix('s')?.parse().ok()?;
    if !seconds.is_finite() || seconds < 0.0 {
        return None;
    }
    let capped = seconds.ceil().min(RETRY_AFTER_MAX.as_secs_f64());
    Some(Duration::from_secs_f64(capped))
}

/// An error object inside a successful response: mid-stream, or instead of a body.
/// Generation already started, so the provider failed, not the request; capacity
/// errors keep their status so the router backs off.
fn embedded_error(error: &Value, context: &str) -> UpstreamError {
    let status = match error["code"].as_u64() {
        Some(429) => StatusCode::TOO_MANY_REQUESTS,
        Some(503) => StatusCode::SERVICE_UNAVAILABLE,
        Some(504) => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    let kind = error["status"].as_str().unwrap_or("error");
    let message = error["message"].as_str().unwrap_or_default();
    UpstreamError {
        status,
        retry_after: retry_delay(error),
        ..bad_gateway(PROVIDER, truncate(format!("{kind} {context}: {message}")))
    }
}

struct GoogleStream {
    parser: SseParser,
    events: Vec<SseEvent>,
    /// Whether the next byte starts a line (see `split_error_body`).
    at_line_start: bool,
    /// A bare JSON error body that followed the events, as collected so far.
    error_body: Option<Vec<u8>>,
    usage: Usage,
    ids: CallIds,
    role_sent: bool,
    citations: Citations,
    /// The finish reason and message of the last candidate that had one. Sent when the
    /// stream ends: Gemini has no terminal event, and a chunk with a finish reason can
    /// be followed by more content (Vertex AI puts `STOP` on every chunk).
    finish: Option<(String, String)>,
    /// The prompt was blocked: no candidate, only `promptFeedback`.
    prompt_blocked: bool,
}

impl GoogleStream {
    /// Separates SSE bytes from a bare JSON error body. When Gemini fails mid-stream it
    /// appends the error object as plain JSON, outside any `data:` line, where an SSE
    /// parser would silently skip it; an SSE line never starts with `{`.
    fn split_error_body<'b>(&mut self, bytes: &'b [u8]) -> (&'b [u8], &'b [u8]) {
        if self.error_body.is_some() {
            return (&[], bytes);
        }
        // Only the bytes that start lines are looked at: the first (if the last read
        // ended a line) and each after a line end, found by `memchr2`.
        let (mut line_start, mut at_line_start) = (0, self.at_line_start);
        loop {
            if at_line_start && bytes.get(line_start) == Some(&b'{') {
                self.error_body = Some(Vec::new());
                return bytes.split_at(line_start);
            }
            match memchr::memchr2(b'\n', b'\r', &bytes[line_start..]) {
                Some(line_end) => (line_start, at_line_start) = (line_start + line_end + 1, true),
                None => break,
            }
        }
        if let Some(&last) = bytes.last() {
            self.at_line_start = last == b'\n' || last == b'\r';
        }
        (bytes, &[])
    }

    /// Collects error-body bytes; fails as soon as they form a JSON value (or exceed
    /// the bound on error bodies).
    fn collect_error_body(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        let Some(body) = &mut self.error_body else { return Ok(()) };
        if bytes.is_empty() {
            return Ok(());
        }
        let room = ERROR_BYTES_MAX.saturating_sub(body.len());
        body.extend_from_slice(&bytes[..bytes.len().min(room)]);
        match serde_json::from_slice::<Value>(body) {
            Ok(parsed) => Err(embedded_error(parsed.get("error").unwrap_or(&parsed), "mid-stream")),
            Err(_) if body.len() >= ERROR_BYTES_MAX => Err(self.raw_error()),
            Err(_) => Ok(()),
        }
    }

    fn raw_error(&self) -> UpstreamError {
        let body = self.error_body.as_deref().unwrap_or_default();
        let text = String::from_utf8_lossy(body);
        bad_gateway(PROVIDER, truncate(format!("malformed error mid-stream: {}", text.trim())))
    }

    fn handle(&mut self, event: &SseEvent, out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        // Gemini ends streams by closing them; an OpenAI-style end marker from a proxy
        // in between means the same.
        if event.data == "[DONE]" {
            return Ok(());
        }
        let data: Reply = event::read(&event.data)
            .map_err(|error| bad_gateway(PROVIDER, format!("invalid stream event: {error}")))?;
        if let Some(error) = &data.error {
            return Err(embedded_error(error, "mid-stream"));
        }
        if let Some(metadata) = data.usage_metadata.as_ref().and_then(|m| m.0.as_ref()) {
            self.usage = usage_of(Some(metadata));
        }
        if self.ids.response_id.is_none() {
            self.ids.response_id = event::text(&data.response_id).map(str::to_owned);
        }
        let Some(candidate) = event::items(&data.candidates).first() else {
            self.prompt_blocked |= data.prompt_feedback.is_some();
            return Ok(());
        };
        if let Some(reason) = event::text(&candidate.finish_reason) {
            let message = event::text(&candidate.finish_message).unwrap_or_default();
            self.finish = Some((reason.to_owned(), message.to_owned()));
        }
        let mut output = Output::default();
        output.read(candidate, &mut self.ids);
        let delta = output.delta();
        // Each event repeats the sources of the text so far: the list goes out again
        // only when it grows, as Perplexity's does.
        let extra = if read_citations(&mut self.citations, candidate) {
            self.citations.extra()
        } else {
            Map::new()
        };
        if delta.is_some() || !extra.is_empty() {
            let mut chunk = self.chunk(delta.unwrap_or_default(), Value::Null);
            chunk.extra = extra;
            out.push(chunk);
        }
        Ok(())
    }

    /// A chunk; the first one also says the role, as OpenAI streams do.
    fn chunk(&mut self, mut delta: Message, finish_reason: Value) -> Chunk {
        if !self.role_sent {
            self.role_sent = true;
            delta.role = Some(Value::from("assistant"));
            delta.content.get_or_insert_with(|| Value::from(""));
        }
        assemble::delta_chunk(delta, finish_reason)
    }

    fn drain(&mut self, out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        let events = std::mem::take(&mut self.events);
        let result = events.iter().try_for_each(|event| self.handle(event, out));
        self.events = events;
        self.events.clear();
        result
    }

    /// The last chunk, with the finish reason, once the upstream has closed the stream.
    fn last_chunk(&mut self) -> Result<Chunk, UpstreamError> {
        let reason = match self.finish.take() {
            Some((reason, message)) => {
                finish_reason(&reason, &message, self.ids.n > 0, self.role_sent)?
            }
            None if self.prompt_blocked => "content_filter",
            None => return Err(bad_gateway(PROVIDER, "stream ended before a finish reason")),
        };
        Ok(self.chunk(Message::default(), Value::from(reason)))
    }
}

impl StreamTranslator for GoogleStream {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        let (sse, error_body) = self.split_error_body(bytes);
        self.parser
            .feed(sse, &mut self.events)
            .map_err(|error| bad_gateway(PROVIDER, error.to_string()))?;
        self.drain(out)?;
        self.collect_error_body(error_body)
    }

    fn finish(&mut self, out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        self.parser
            .finish(&mut self.events)
            .map_err(|error| bad_gateway(PROVIDER, error.to_string()))?;
        self.drain(out)?;
        if self.error_body.is_some() {
            return Err(self.raw_error());
        }
        let last = self.last_chunk()?;
        out.push(last);
        Ok(())
    }

    fn usage(&self) -> Usage {
        self.usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ChatBody;

    fn chat_with(parallel_tool_calls: Option<bool>, stream: bool) -> ChatRequest {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        if let Some(parallel) = parallel_tool_calls {
            body["parallel_tool_calls"] = Value::Bool(parallel);
        }
        let Value::Object(body) = body else { unreachable!() };
        ChatRequest { body: ChatBody::from_tree(body), stream, max_tokens: None, native: None }
    }

    /// A bare error body after the events (a line starting with `{`) ends the stream with
    /// its error however the reads cut the bytes; a `{` inside a line is no error body.
    #[test]
    fn an_error_body_is_found_however_the_reads_cut_the_bytes() {
        let stream = concat!(
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"x{\"}]}}]}\r\n\r\n",
            "{\"error\": {\"code\": 503, \"message\": \"m\", \"status\": \"UNAVAILABLE\"}}\n",
        )
        .as_bytes();
        let chat = chat_with(None, true);
        let mut cuts: Vec<Vec<usize>> = (0..=stream.len()).map(|cut| vec![cut]).collect();
        cuts.push((1..stream.len()).collect());
        for cut in cuts {
            let mut translator = Google.stream(&chat);
            let (mut chunks, mut from) = (Vec::new(), 0);
            let mut ended = Ok(());
            for &to in cut.iter().chain([&stream.len()]) {
                ended = ended.and_then(|()| translator.feed(&stream[from..to], &mut chunks));
                from = to;
            }
            let ended = ended.and_then(|()| translator.finish(&mut chunks));
            assert_eq!(ended.map_err(|error| error.status), Err(StatusCode::SERVICE_UNAVAILABLE));
            assert_eq!(chunks.len(), 1, "{cut:?}");
        }
    }

    /// Two calls in one answer, as Gemini answers a question needing two lookups.
    fn two_calls() -> Value {
        json!({"responseId": "r1", "candidates": [{"finishReason": "STOP", "content": {"role": "model",
            "parts": [{"functionCall": {"name": "weather", "args": {"city": "Paris"}}},
                {"functionCall": {"name": "weather", "args": {"city": "Rome"}}}]}}],
            "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 16}})
    }

    fn cities(calls: &[Value]) -> Vec<String> {
        calls
            .iter()
            .map(|call| call["function"]["arguments"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn parallel_tool_calls_false_keeps_the_first_call_of_a_plain_answer() {
        // Nothing is sent for it: Gemini has no such switch.
        let sent = translate_request(chat_with(Some(false), false).body.tree(), 100).unwrap();
        assert_eq!(sent, translate_request(chat_with(None, false).body.tree(), 100).unwrap());
        let body = two_calls().to_string();
        for (parallel, expected) in [
            (None, vec![r#"{"city":"Paris"}"#, r#"{"city":"Rome"}"#]),
            (Some(true), vec![r#"{"city":"Paris"}"#, r#"{"city":"Rome"}"#]),
            (Some(false), vec![r#"{"city":"Paris"}"#]),
        ] {
            let completion = Google.response(&chat_with(parallel, false), body.as_bytes()).unwrap();
            let message = &json!(completion.choices)[0]["message"];
            let calls = message["tool_calls"].as_array().unwrap();
            assert_eq!(cities(calls), expected, "{parallel:?}");
            assert_eq!(completion.choices[0].finish_reason(), Some("tool_calls"));
            // The provider generated (and bills) both calls.
            assert_eq!(completion.usage.completion_tokens, 16, "{parallel:?}");
        }
    }

    #[test]
    fn parallel_tool_calls_false_keeps_the_first_call_of_a_stream() {
        let mut first = two_calls();
        first["candidates"][0]["content"]["parts"].as_array_mut().unwrap().truncate(1);
        first["candidates"][0].as_object_mut().unwrap().remove("finishReason");
        let mut second = two_calls();
        second["candidates"][0]["content"]["parts"].as_array_mut().unwrap().remove(0);
        let sse = format!("data: {first}\r\n\r\ndata: {second}\r\n\r\n");
        for (parallel, n_calls) in [(None, 2), (Some(false), 1)] {
            let mut translator = Google.stream(&chat_with(parallel, true));
            let mut chunks = Vec::new();
            translator.feed(sse.as_bytes(), &mut chunks).unwrap();
            translator.finish(&mut chunks).unwrap();
            let calls: Vec<Value> = chunks
                .iter()
                .flat_map(|chunk| {
                    json!(chunk.choices)[0]["delta"]["tool_calls"].as_array().cloned()
                })
                .flatten()
                .collect();
            assert_eq!(calls.len(), n_calls, "{parallel:?}: {chunks:?}");
            assert_eq!(calls[0]["function"]["arguments"], r#"{"city":"Paris"}"#);
            assert!(calls.iter().all(|call| call["index"].is_u64()));
            let last = &chunks.last().unwrap().choices[0];
            assert_eq!(last.finish_reason(), Some("tool_calls"), "{parallel:?}");
            assert_eq!(translator.usage().completion_tokens, 16);
        }
    }

    #[test]
    fn image_types_follow_the_url_path() {
        assert_eq!(image_type("https://x.test/a/b.JPG?size=2#top"), Some("image/jpeg"));
        assert_eq!(image_type("https://x.test/b.webp"), Some("image/webp"));
        assert_eq!(image_type("https://x.test/b.gif"), None);
        assert_eq!(image_type("https://x.test/image?format=png"), None);
        assert_eq!(image_type("https://x.test/noextension"), None);
    }

    #[test]
    fn retry_delays_round_up_and_are_capped() {
        let info = |delay: &str| json!({"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]});
        assert_eq!(retry_delay(&info("34.4s")), Some(Duration::from_secs(35)));
        assert_eq!(retry_delay(&info("0s")), Some(Duration::ZERO));
        assert_eq!(retry_delay(&info("99999999s")), Some(RETRY_AFTER_MAX));
        assert_eq!(retry_delay(&info("-1s")), None);
        assert_eq!(retry_delay(&info("NaNs")), None);
        assert_eq!(retry_delay(&info("soon")), None);
        assert_eq!(retry_delay(&json!({"details": []})), None);
    }

    #[test]
    fn usage_counts_thoughts_as_completion_and_tool_prompts_as_prompt() {
        let usage_of = |text: &str| usage_of(Some(&event::read::<UsageMetadata>(text).unwrap()));
        let usage = usage_of(
            r#"{"promptTokenCount": 438, "candidatesTokenCount": 13, "toolUsePromptTokenCount": 619,
                "thoughtsTokenCount": 39, "cachedContentTokenCount": 400, "totalTokenCount": 1109}"#,
        );
        let expected = Usage {
            prompt_tokens: 1057,
            completion_tokens: 52,
            reasoning_tokens: 39,
            cached_read_tokens: 400,
            cached_write_tokens: 0,
        };
        assert_eq!(usage, expected);
        assert_eq!(usage_of("null"), Usage::default());
    }

    #[test]
    fn finish_reasons_map_to_openai() {
        let check = |reason: &str, expected: Finish| assert_eq!(finish_kind(reason), expected);
        check("STOP", Finish::Stop);
        check("MAX_TOKENS", Finish::Length);
        check("SAFETY", Finish::ContentFilter);
        check("RECITATION", Finish::ContentFilter);
        check("PROHIBITED_CONTENT", Finish::ContentFilter);
        check("OTHER", Finish::Failed);
        check("MALFORMED_FUNCTION_CALL", Finish::Failed);
        check("SOMETHING_NEW", Finish::Failed);
    }
}
