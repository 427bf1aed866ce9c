//! The Anthropic Messages adapter: system prompts hoisted, tool calls as `tool_use`
//! blocks, tool results as `tool_result` blocks in user turns, thinking as `reasoning`,
//! and the typed SSE events (`message_start` … `message_stop`) as OpenAI chunks.

use super::assemble::{self, assistant_message};
use super::errors::{bad_gateway, classify};
use super::event::{self, lenient_object, Count, IfArray, IfObject, List, Str};
use super::translate::{self, param_error, Effort, Part, ResponseFormat, ToolChoice};
use super::{
    Adapter, ChatRequest, Choice, Chunk, Completion, Endpoint, Message, NativeFormat, ParamError,
    StreamTranslator, Target, UpstreamError, UpstreamRequest, Usage,
};
use crate::controls::{Controls, Thinking};
use crate::sse::{SseError, SseEvent, SseParser};
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, StatusCode};
use serde_json::{json, Map, Value};
use std::borrow::Cow;

/// The Messages API version the translation follows.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// The beta that enables `output_format`, Anthropic's structured outputs (JSON text
/// constrained by a JSON Schema). Only newer models have it (Claude Sonnet 4.5, Opus 4.1
/// and later); older ones get `response_format` through a forced tool instead.
pub const STRUCTURED_OUTPUTS_BETA: &str = "structured-outputs-2025-11-13";

/// The tool that carries a `json_object` response format for models without native
/// structured outputs (a `json_schema` one names its tool after the schema).
const JSON_OBJECT_TOOL: &str = "json_output";

/// Upstream model names of the Claude models that predate native structured outputs:
/// the Claude 3 family and Claude Sonnet 4 and Opus 4 (dated or `-0` aliases, not
/// Opus 4.1 or the 4.5 models).
const NO_OUTPUT_FORMAT: [&str; 5] =
    ["claude-3", "claude-sonnet-4-0", "claude-sonnet-4-2", "claude-opus-4-0", "claude-opus-4-2"];

/// The system prompt Anthropic adds to a request with tools (its "tool use system
/// prompt"): 346 tokens for Claude 4 models with `tool_choice` auto or none, the largest
/// figure Anthropic publishes for any catalogued model (313 for any/tool, 294 and 261 for
/// Claude 3.5). Billed as prompt tokens, so reserved for.
pub const TOOL_USE_SYSTEM_PROMPT_TOKENS: u64 = 346;

/// The smallest thinking budget Anthropic accepts.
const THINKING_BUDGET_MIN: u64 = 1024;

pub struct Anthropic;

impl Adapter for Anthropic {
    fn provider(&self) -> &str {
        "anthropic"
    }

    fn parameters(&self) -> &'static [&'static str] {
        &[
            "max_tokens",
            "temperature",
            "top_p",
            "stop",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "response_format",
            "structured_outputs",
            "reasoning_effort",
        ]
    }

    fn native_format(&self) -> Option<NativeFormat> {
        Some(NativeFormat::AnthropicMessages)
    }

    /// A Messages request from a client (`ChatRequest::native`) goes as it came, with only
    /// the model, the completion limit the pipeline reserved for and `stream` (how the
    /// pipeline reads the answer) set; any other is translated.
    fn request(
        &self,
        endpoint: &Endpoint,
        chat: &ChatRequest,
        target: &Target,
    ) -> Result<UpstreamRequest, ParamError> {
        self.check(chat, target.controls)?;
        let mut headers = HeaderMap::new();
        let body = match chat.native_for(self) {
            Some(native) => {
                let mut body = native.body.clone();
                body.insert("model".to_owned(), Value::from(target.upstream_model));
                body.insert("max_tokens".to_owned(), Value::from(target.max_tokens));
                body.insert("stream".to_owned(), Value::Bool(chat.stream));
                headers.extend(native.headers.clone());
                body
            }
            None => translate_request(chat.body.tree(), chat.stream, target)?,
        };
        if body.contains_key("output_format") && !headers.contains_key("anthropic-beta") {
            headers.insert("anthropic-beta", HeaderValue::from_static(STRUCTURED_OUTPUTS_BETA));
        }
        Ok(upstream_request(endpoint, "/v1/messages", headers, body))
    }

    /// A native request's count: its prompt fields only (`count_tokens` refuses the
    /// others), with the client's `anthropic-beta` and `anthropic-version`.
    fn count_tokens_request(
        &self,
        endpoint: &Endpoint,
        chat: &ChatRequest,
        upstream_model: &str,
    ) -> Option<UpstreamRequest> {
        let native = chat.native_for(self)?;
        let mut body: Map<String, Value> = native
            .body
            .iter()
            .filter(|(field, _)| COUNT_TOKENS_FIELDS.contains(&field.as_str()))
            .map(|(field, value)| (field.clone(), value.clone()))
            .collect();
        body.insert("model".to_owned(), Value::from(upstream_model));
        let path = "/v1/messages/count_tokens";
        Some(upstream_request(endpoint, path, native.headers.clone(), body))
    }

    fn response(&self, chat: &ChatRequest, body: &[u8]) -> Result<Completion, UpstreamError> {
        let json_answer = answers_through_json_tool(chat.body.tree());
        // Read as a stream event is, straight from its text: no tree.
        let message = event::read_body::<IfObject<Answer>>(body)
            .map_err(|error| bad_gateway("anthropic", format!("invalid response: {error}")))?
            .0
            .unwrap_or_default();
        let blocks = message
            .content
            .and_then(|content| content.0)
            .ok_or_else(|| bad_gateway("anthropic", "response has no `content` array"))?;
        let (mut text, mut reasoning, mut tool_calls) = (String::new(), String::new(), Vec::new());
        for block in blocks.0 {
            match event::text(&block.kind) {
                Some("text") => text.push_str(event::text(&block.text).unwrap_or_default()),
                Some("thinking") => {
                    reasoning.push_str(event::text(&block.thinking).unwrap_or_default())
                }
                Some("tool_use") if json_answer => {
                    text.push_str(&event::value(block.input).to_string())
                }
                Some("tool_use") => tool_calls.push(json!({
                    "id": event::value(block.id),
                    "type": "function",
                    "function": {"name": event::value(block.name), "arguments": event::value(block.input).to_string()},
                })),
                // Redacted thinking and server-tool blocks have no OpenAI equivalent.
                _ => {}
            }
        }
        let assistant = assistant_message(text, reasoning, tool_calls);
        let choice = json!({
            "index": 0,
            "message": assistant,
            "finish_reason": finish_reason(event::text(&message.stop_reason), json_answer),
        });
        let mut usage = Usage::default();
        apply_usage(&mut usage, message.usage.as_ref());
        Ok(Completion { choices: vec![Choice::from_tree(choice)], usage, extra: Map::new() })
    }

    fn stream(&self, chat: &ChatRequest) -> Box<dyn StreamTranslator> {
        Box::new(AnthropicStream {
            json_answer: answers_through_json_tool(chat.body.tree()),
            parser: SseParser::new(),
            events: Vec::new(),
            relayed: chat.native_for(self).map(|_| Vec::new()),
            usage: Usage::default(),
            tool_call_by_block: Vec::new(),
            n_tool_calls: 0,
            done: false,
        })
    }

    fn error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        classify("anthropic", status, headers, body)
    }

    /// What Claude models with newer controls refuse with a 400 (see
    /// `catalog::Controls`): in a native request as sent, in a translated one as the
    /// OpenAI parameter it would become.
    fn check(&self, chat: &ChatRequest, controls: Controls) -> Result<(), ParamError> {
        match chat.native_for(self) {
            Some(native) => check_native(&native.body, controls),
            None => check_chat(chat.body.tree(), controls).map(|_| ()),
        }
    }

    /// Tools, and `response_format` answered through a forced tool, bring Anthropic's
    /// tool-use system prompt.
    fn prompt_overhead_tokens(&self, chat: &ChatRequest) -> u64 {
        let uses_tools = ["tools", "response_format"]
            .iter()
            .any(|field| chat.body.tree().get(*field).is_some_and(|value| !value.is_null()));
        if uses_tools {
            TOOL_USE_SYSTEM_PROMPT_TOKENS
        } else {
            0
        }
    }
}

/// The fields of a Messages request that Anthropic's `count_tokens` takes.
const COUNT_TOKENS_FIELDS: [&str; 8] = [
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
    "mcp_servers",
    "output_format",
    "output_config",
];

/// A request to Anthropic's `path` with `body`: JSON, the API version unless the client
/// named one, the key.
fn upstream_request(
    endpoint: &Endpoint,
    path: &str,
    mut headers: HeaderMap,
    body: Map<String, Value>,
) -> UpstreamRequest {
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.entry("anthropic-version").or_insert(HeaderValue::from_static(ANTHROPIC_VERSION));
    if let Some(key) = &endpoint.api_key {
        let mut value =
            HeaderValue::try_from(key.as_str()).expect("provider keys are validated when loaded");
        value.set_sensitive(true);
        headers.insert("x-api-key", value);
    }
    let body = serde_json::to_vec(&Value::Object(body)).expect("JSON values always serialize");
    UpstreamRequest {
        url: format!("{}{path}", endpoint.base_url.trim_end_matches('/')),
        headers,
        body: Bytes::from(body),
    }
}

fn translate_request(
    body: &Map<String, Value>,
    stream: bool,
    target: &Target,
) -> Result<Map<String, Value>, ParamError> {
    translate::check_fields("anthropic", body, &[])?;
    let upstream_model = target.upstream_model;
    translate::refuse("anthropic", body, "seed")?;
    let mut out = Map::new();
    out.insert("model".to_owned(), Value::from(upstream_model));
    translate::max_tokens(body)?;
    let max_tokens = target.max_tokens;
    out.insert("max_tokens".to_owned(), Value::from(max_tokens));
    let (system, messages) = messages(body)?;
    out.insert("messages".to_owned(), Value::Array(messages));
    if let Some(system) = system {
        out.insert("system".to_owned(), Value::from(system));
    }
    out.insert("stream".to_owned(), Value::Bool(stream));
    let adaptive = check_chat(body, target.controls)?;
    if target.controls.sampling {
        translate::copy_number(body, "temperature", &mut out, "temperature")?;
        translate::copy_number(body, "top_p", &mut out, "top_p")?;
    }
    if let Some(stops) = translate::stop_sequences(body)? {
        out.insert("stop_sequences".to_owned(), Value::Array(stops));
    }
    tools(body, &mut out)?;
    match adaptive {
        Some(thinking) => {
            output_format(body, &mut out)?;
            adaptive_thinking(thinking, &mut out);
        }
        None => {
            let effort = translate::reasoning_effort(body)?;
            if NO_OUTPUT_FORMAT.iter().any(|prefix| upstream_model.starts_with(prefix)) {
                json_tool(body, effort, &mut out)?;
            } else {
                output_format(body, &mut out)?;
            }
            if let Some(effort) = effort {
                out.insert("thinking".to_owned(), thinking(effort, max_tokens)?);
            }
        }
    }
    if let Some(user) = body.get("user").and_then(Value::as_str) {
        out.insert("metadata".to_owned(), json!({"user_id": user}));
    }
    Ok(out)
}

/// `json_schema` becomes Anthropic's native `output_format` (the schema as is; the name
/// has no Anthropic field). `json_object` has no honest equivalent: Anthropic has no
/// schema-less JSON mode, and its schemas must close every object
/// (`additionalProperties: false`), so `{"type": "object"}` would allow only `{}`.
fn output_format(
    body: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), ParamError> {
    match translate::response_format(body)? {
        None | Some(ResponseFormat::Text) => Ok(()),
        Some(ResponseFormat::JsonObject) => Err(param_error(
            "response_format",
            "anthropic has no schema-less JSON mode; send a `json_schema` instead of `json_object`",
        )),
        Some(ResponseFormat::JsonSchema { schema, .. }) => {
            out.insert(
                "output_format".to_owned(),
                json!({"type": "json_schema", "schema": schema}),
            );
            Ok(())
        }
    }
}

/// `response_format` for models without native structured outputs, as OpenRouter and
/// LiteLLM emulate it: one tool whose input schema is the wanted schema
/// (`{"type": "object"}` for `json_object`), forced through `tool_choice`; the answer's
/// `tool_use` input becomes the message content (see [`answers_through_json_tool`]).
/// A forced tool excludes the client's own tools and tool choice, and thinking
/// (Anthropic refuses forced tool use while thinking).
fn json_tool(
    body: &Map<String, Value>,
    effort: Option<Effort>,
    out: &mut Map<String, Value>,
) -> Result<(), ParamError> {
    let (name, schema) = match translate::response_format(body)? {
        None | Some(ResponseFormat::Text) => return Ok(()),
        Some(ResponseFormat::JsonObject) => (JSON_OBJECT_TOOL, json!({"type": "object"})),
        Some(ResponseFormat::JsonSchema { name, schema }) => (name, schema.clone()),
    };
    let conflict = |param: &str| {
        param_error(
            param,
            "this model answers `response_format` through a forced tool, which excludes other tools",
        )
    };
    if out.contains_key("tools") {
        return Err(conflict("tools"));
    }
    if out.contains_key("tool_choice") {
        return Err(conflict("tool_choice"));
    }
    if effort.is_some() {
        return Err(conflict("reasoning_effort"));
    }
    let mut tool = json!({"name": name, "input_schema": schema});
    if let Some(description) = body["response_format"]["json_schema"]["description"].as_str() {
        tool["description"] = Value::from(description);
    }
    out.insert("tools".to_owned(), json!([tool]));
    out.insert(
        "tool_choice".to_owned(),
        json!({"type": "tool", "name": name, "disable_parallel_tool_use": true}),
    );
    Ok(())
}

/// Whether the answer to `body` carries its JSON in a `tool_use` block to turn into
/// content: a JSON response format without client tools. With native structured
/// outputs no tool is sent, so no `tool_use` comes back and the rule holds for them too.
fn answers_through_json_tool(body: &Map<String, Value>) -> bool {
    matches!(
        translate::response_format(body),
        Ok(Some(ResponseFormat::JsonObject | ResponseFormat::JsonSchema { .. }))
    ) && translate::tools(body).is_ok_and(|tools| tools.is_empty())
}

/// A thinking budget proportional to `max_tokens` (which it must stay below), as
/// OpenRouter maps effort: low 20 %, medium 50 %, high 80 %.
fn thinking(effort: Effort, max_tokens: u64) -> Result<Value, ParamError> {
    let percent = match effort {
        Effort::Low => 20,
        Effort::Medium => 50,
        Effort::High => 80,
    };
    let budget = (max_tokens * percent / 100).max(THINKING_BUDGET_MIN);
    if budget >= max_tokens {
        return Err(param_error(
            "reasoning_effort",
            format!("anthropic needs max_tokens above {THINKING_BUDGET_MIN} to think"),
        ));
    }
    Ok(json!({"type": "enabled", "budget_tokens": budget}))
}

/// What an OpenAI `reasoning_effort` asks of a model with adaptive thinking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AdaptiveThinking {
    /// The model's default: no `reasoning_effort`.
    Default,
    /// `none`: thinking off.
    Off,
    /// Anthropic's `output_config.effort` of this name: OpenAI's own level, `minimal`
    /// as `low` (Anthropic's lowest, as for budgeted thinking).
    Effort(&'static str),
}

/// The checks of a translated (OpenAI) request against `controls`; for a model with
/// adaptive thinking, what its `reasoning_effort` asks.
fn check_chat(
    body: &Map<String, Value>,
    controls: Controls,
) -> Result<Option<AdaptiveThinking>, ParamError> {
    if !controls.sampling {
        if body.get("temperature").is_some_and(|value| !value.is_null() && !is_one(value)) {
            return Err(sampling_refused("temperature"));
        }
        if body.get("top_p").is_some_and(|value| !value.is_null()) {
            return Err(sampling_refused("top_p"));
        }
    }
    if !controls.forced_tool_choice
        && matches!(
            translate::tool_choice(body)?,
            Some(ToolChoice::Required | ToolChoice::Function(_))
        )
    {
        return Err(forced_tool_choice_refused("tool_choice"));
    }
    if controls.thinking == Thinking::Budget {
        return Ok(None);
    }
    let thinking = match body.get("reasoning_effort") {
        None | Some(Value::Null) => AdaptiveThinking::Default,
        Some(effort) => match effort.as_str() {
            Some("none") if controls.thinking == Thinking::AdaptiveAlways => {
                return Err(param_error(
                    "reasoning_effort",
                    "this model always thinks: `none` is refused; use `minimal` or `low`",
                ))
            }
            Some("none") => AdaptiveThinking::Off,
            Some("minimal" | "low") => AdaptiveThinking::Effort("low"),
            Some("medium") => AdaptiveThinking::Effort("medium"),
            Some("high") => AdaptiveThinking::Effort("high"),
            Some("xhigh") => AdaptiveThinking::Effort("xhigh"),
            _ => {
                let message = "must be none, minimal, low, medium, high or xhigh";
                return Err(param_error("reasoning_effort", message));
            }
        },
    };
    Ok(Some(thinking))
}

/// The checks of a native Messages request, which goes as sent, against `controls`.
fn check_native(body: &Map<String, Value>, controls: Controls) -> Result<(), ParamError> {
    let set = |field: &str| body.get(field).is_some_and(|value| !value.is_null());
    if !controls.sampling {
        if set("temperature") && !is_one(&body["temperature"]) {
            return Err(sampling_refused("temperature"));
        }
        if let Some(field) = ["top_p", "top_k"].into_iter().find(|field| set(field)) {
            return Err(sampling_refused(field));
        }
    }
    let choice = body.get("tool_choice").and_then(|choice| choice.get("type"));
    if !controls.forced_tool_choice
        && matches!(choice.and_then(Value::as_str), Some("any" | "tool"))
    {
        return Err(forced_tool_choice_refused("tool_choice.type"));
    }
    let thinking = body.get("thinking").and_then(|thinking| thinking.get("type"));
    match (controls.thinking, thinking.and_then(Value::as_str)) {
        (Thinking::Adaptive | Thinking::AdaptiveAlways, Some("enabled")) => Err(param_error(
            "thinking.type",
            "this model has no budgeted thinking: send `adaptive` (or no `thinking`) and \
             steer it with `output_config.effort`",
        )),
        (Thinking::AdaptiveAlways, Some("disabled")) => Err(param_error(
            "thinking.type",
            "this model always thinks: `disabled` is refused; lower `output_config.effort`",
        )),
        _ => Ok(()),
    }
}

/// Whether a sampling parameter is 1, Anthropic's default `temperature`.
fn is_one(value: &Value) -> bool {
    value.as_f64() == Some(1.0)
}

fn sampling_refused(param: &str) -> ParamError {
    param_error(
        param,
        "this model takes only its default sampling (no `top_p` or `top_k`, `temperature` 1 \
         at most); omit it",
    )
}

fn forced_tool_choice_refused(param: &str) -> ParamError {
    param_error(
        param,
        "this model refuses forced tool use; use `auto` and say which tool in the prompt",
    )
}

/// Adaptive thinking as asked: `thinking` only to turn it off or on (always-on models
/// take `adaptive` too, and it is every such model's default), the level as
/// `output_config.effort`.
fn adaptive_thinking(thinking: AdaptiveThinking, out: &mut Map<String, Value>) {
    match thinking {
        AdaptiveThinking::Default => {}
        AdaptiveThinking::Off => {
            out.insert("thinking".to_owned(), json!({"type": "disabled"}));
        }
        AdaptiveThinking::Effort(level) => {
            out.insert("thinking".to_owned(), json!({"type": "adaptive"}));
            out.insert("output_config".to_owned(), json!({"effort": level}));
        }
    }
}

fn tools(body: &Map<String, Value>, out: &mut Map<String, Value>) -> Result<(), ParamError> {
    let tools = translate::tools(body)?;
    if !tools.is_empty() {
        let tools = tools
            .into_iter()
            .map(|tool| {
                json!({
                    "name": tool.name,
                    "description": tool.description.unwrap_or_default(),
                    "input_schema": tool.parameters,
                })
            })
            .collect();
        out.insert("tools".to_owned(), Value::Array(tools));
    }
    let mut choice = match translate::tool_choice(body)? {
        None => return Ok(()),
        Some(ToolChoice::Auto) => json!({"type": "auto"}),
        Some(ToolChoice::None) => json!({"type": "none"}),
        Some(ToolChoice::Required) => json!({"type": "any"}),
        Some(ToolChoice::Function(name)) => json!({"type": "tool", "name": name}),
    };
    if body.get("parallel_tool_calls") == Some(&Value::Bool(false)) {
        choice["disable_parallel_tool_use"] = Value::Bool(true);
    }
    out.insert("tool_choice".to_owned(), choice);
    Ok(())
}

/// Splits OpenAI messages into the hoisted system prompt and Anthropic turns. Tool
/// results join the following user turn (Anthropic wants every result for one
/// assistant turn in the next user message), and consecutive same-role turns merge.
fn messages(body: &Map<String, Value>) -> Result<(Option<String>, Vec<Value>), ParamError> {
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<(&str, Vec<Value>)> = Vec::new();
    for (message_idx, (role, message)) in translate::messages(body)?.into_iter().enumerate() {
        let param = format!("messages[{message_idx}]");
        let (turn_role, blocks) = match role {
            "system" | "developer" => {
                system
                    .push(translate::text_only(&message["content"], &format!("{param}.content"))?);
                continue;
            }
            "user" => ("user", content_blocks(&message["content"], &format!("{param}.content"))?),
            "assistant" => ("assistant", assistant_blocks(message, &param)?),
            "tool" => {
                let id = message["tool_call_id"]
                    .as_str()
                    .ok_or_else(|| param_error(format!("{param}.tool_call_id"), "is required"))?;
                let content =
                    translate::text_only(&message["content"], &format!("{param}.content"))?;
                let result = json!({"type": "tool_result", "tool_use_id": id, "content": content, "is_error": false});
                ("user", vec![result])
            }
            other => {
                return Err(param_error(format!("{param}.role"), format!("unknown role `{other}`")))
            }
        };
        match turns.last_mut() {
            Some((last_role, last_blocks)) if *last_role == turn_role => last_blocks.extend(blocks),
            _ => turns.push((turn_role, blocks)),
        }
    }
    let turns =
        turns.into_iter().map(|(role, blocks)| json!({"role": role, "content": blocks})).collect();
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    Ok((system, turns))
}

fn content_blocks(content: &Value, param: &str) -> Result<Vec<Value>, ParamError> {
    let parts = translate::content_parts(content, param)?;
    Ok(parts
        .into_iter()
        .map(|part| match part {
            Part::Text(text) => json!({"type": "text", "text": text}),
            Part::ImageUrl(url) => json!({"type": "image", "source": {"type": "url", "url": url}}),
            Part::ImageData { media_type, data } => json!({
                "type": "image",
                "source": {"type": "base64", "media_type": media_type, "data": data},
            }),
        })
        .collect())
}

fn assistant_blocks(message: &Value, param: &str) -> Result<Vec<Value>, ParamError> {
    let mut blocks = content_blocks(&message["content"], &format!("{param}.content"))?;
    blocks.retain(|block| block["text"] != "");
    for call in translate::tool_calls(message, param)? {
        blocks.push(
            json!({"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}),
        );
    }
    Ok(blocks)
}

/// `json_answer`: the tool use is the response format's (see [`json_tool`]), an answer.
fn finish_reason(stop_reason: Option<&str>, json_answer: bool) -> Value {
    match stop_reason {
        None => Value::Null,
        Some("max_tokens") => Value::from("length"),
        Some("tool_use") if !json_answer => Value::from("tool_calls"),
        Some("refusal") => Value::from("content_filter"),
        // end_turn, stop_sequence, pause_turn and anything newer end the turn normally.
        Some(_) => Value::from("stop"),
    }
}

/// Folds an Anthropic usage object into `usage`. Fields absent from a partial update
/// (`message_delta` carries only `output_tokens`) keep their values. Anthropic's
/// `input_tokens` excludes cached tokens; ours includes them.
fn apply_usage(usage: &mut Usage, wire: Option<&WireUsage>) {
    let Some(wire) = wire else { return };
    let input = event::count(&wire.input_tokens);
    let cache_read = event::count(&wire.cache_read_input_tokens);
    let cache_write = event::count(&wire.cache_creation_input_tokens);
    if input.is_some() || cache_read.is_some() || cache_write.is_some() {
        let uncached_before = usage
            .prompt_tokens
            .saturating_sub(usage.cached_read_tokens)
            .saturating_sub(usage.cached_write_tokens);
        usage.cached_read_tokens = cache_read.unwrap_or(usage.cached_read_tokens);
        usage.cached_write_tokens = cache_write.unwrap_or(usage.cached_write_tokens);
        usage.prompt_tokens =
            input.unwrap_or(uncached_before) + usage.cached_read_tokens + usage.cached_write_tokens;
    }
    if let Some(output) = event::count(&wire.output_tokens) {
        usage.completion_tokens = output;
    }
}

lenient_object! {
    /// A complete answer (a message): the members the translation reads.
    struct Answer<'de> {
        "content" => content: IfArray<List<AnswerBlock<'de>>>,
        "stop_reason" => stop_reason: Str<'de>,
        "usage" => usage: WireUsage<'de>,
    }

    /// A content block of an answer; a tool use's id, name and input are passed on.
    struct AnswerBlock<'de> {
        "type" => kind: Str<'de>,
        "text" => text: Str<'de>,
        "thinking" => thinking: Str<'de>,
        "id" => id: Value,
        "name" => name: Value,
        "input" => input: Value,
    }

    /// An Anthropic usage object (whole in `message_start`, partial in `message_delta`).
    struct WireUsage<'de> {
        "cache_creation_input_tokens" => cache_creation_input_tokens: Count,
        "cache_read_input_tokens" => cache_read_input_tokens: Count,
        "input_tokens" => input_tokens: Count,
        "output_tokens" => output_tokens: Count,
    }

    /// One stream event: the members the translation reads of every event type.
    struct StreamEvent<'de> {
        "type" => kind: Str<'de>,
        /// `message_start`'s message.
        "message" => message: StartedMessage<'de>,
        /// The content block of `content_block_*`.
        "index" => index: Count,
        "content_block" => content_block: Block<'de>,
        /// `content_block_delta`'s and `message_delta`'s.
        "delta" => delta: Delta<'de>,
        /// `message_delta`'s.
        "usage" => usage: WireUsage<'de>,
        /// `error`'s, read as a tree: an event that ends the stream.
        "error" => error: Value,
    }

    /// What relaying an event as sent needs of it.
    struct EventType<'de> {
        "type" => kind: Str<'de>,
    }
}

/// The `type` of a stream event (`""` when it has none, or not as a string), if the event
/// is a JSON object a tree reads; what a client of the Messages API relays as sent is
/// known by this alone.
pub fn event_type(data: &str) -> Option<Cow<'_, str>> {
    let event: IfObject<EventType> = event::read(data).ok()?;
    let kind = event.0?.kind.and_then(|kind| kind.0);
    Some(kind.unwrap_or_default())
}

lenient_object! {
    struct StartedMessage<'de> {
        "usage" => usage: WireUsage<'de>,
    }

    /// A `content_block_start`'s block: the translation reads tool uses only.
    struct Block<'de> {
        "type" => kind: Str<'de>,
        "id" => id: Value,
        "name" => name: Value,
    }

    /// The members passed on (`text`, `thinking`, `partial_json`) are read as values.
    struct Delta<'de> {
        "type" => kind: Str<'de>,
        "text" => text: Value,
        "thinking" => thinking: Value,
        "partial_json" => partial_json: Value,
        "stop_reason" => stop_reason: Str<'de>,
    }
}

struct AnthropicStream {
    /// The answer comes as the response format's tool use (see [`json_tool`]): its
    /// input becomes content.
    json_answer: bool,
    parser: SseParser,
    events: Vec<SseEvent>,
    /// The events read, kept for the relay when the request is the client's own
    /// Messages request (`ChatRequest::native_for`), until `take_events`.
    relayed: Option<Vec<SseEvent>>,
    usage: Usage,
    /// For each content block index, its OpenAI tool call (tool_use blocks only).
    tool_call_by_block: Vec<Option<ToolCallBlock>>,
    n_tool_calls: u64,
    done: bool,
}

/// A tool_use block being streamed as an OpenAI tool call.
#[derive(Debug, Clone, Copy)]
struct ToolCallBlock {
    call_idx: u64,
    /// Whether any argument text was relayed: a call without arguments is closed with
    /// `{}`, as OpenAI's own streams do (an empty string is not JSON).
    has_arguments: bool,
}

/// The most content blocks one message may open; a bound on the index table, far
/// above real messages (a handful of blocks).
const CONTENT_BLOCKS_MAX: usize = 4096;

impl AnthropicStream {
    fn handle(&mut self, event: &SseEvent, out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        if self.done {
            return Ok(());
        }
        let data: StreamEvent = event::read(&event.data)
            .map_err(|error| bad_gateway("anthropic", format!("invalid stream event: {error}")))?;
        let delta = match event::text(&data.kind) {
            Some("message_start") => {
                apply_usage(&mut self.usage, data.message.as_ref().and_then(|m| m.usage.as_ref()));
                assemble::role_delta()
            }
            Some("content_block_start") => match self.block_start(data)? {
                Some(delta) => delta,
                None => return Ok(()),
            },
            Some("content_block_delta") => match self.block_delta(data) {
                Some(delta) => delta,
                None => return Ok(()),
            },
            Some("content_block_stop") => match self.block_stop(&data) {
                Some(delta) => delta,
                None => return Ok(()),
            },
            Some("message_delta") => {
                apply_usage(&mut self.usage, data.usage.as_ref());
                let stop_reason =
                    data.delta.as_ref().and_then(|delta| event::text(&delta.stop_reason));
                let reason = finish_reason(stop_reason, self.json_answer);
                out.push(assemble::delta_chunk(Message::default(), reason));
                return Ok(());
            }
            Some("message_stop") => {
                self.done = true;
                return Ok(());
            }
            Some("error") => return Err(stream_error(&event::value(data.error))),
            // ping and event types newer than this adapter.
            _ => return Ok(()),
        };
        out.push(assemble::delta_chunk(delta, Value::Null));
        Ok(())
    }

    fn block_start(&mut self, data: StreamEvent) -> Result<Option<Message>, UpstreamError> {
        let block_idx = event::count(&data.index).unwrap_or(0) as usize;
        if block_idx >= CONTENT_BLOCKS_MAX {
            return Err(bad_gateway("anthropic", "too many content blocks"));
        }
        if self.tool_call_by_block.len() <= block_idx {
            self.tool_call_by_block.resize(block_idx + 1, None);
        }
        let Some(block) = data.content_block else { return Ok(None) };
        if event::text(&block.kind) != Some("tool_use") || self.json_answer {
            return Ok(None);
        }
        let call_idx = self.n_tool_calls;
        self.n_tool_calls += 1;
        self.tool_call_by_block[block_idx] = Some(ToolCallBlock { call_idx, has_arguments: false });
        let start = (event::value(block.id), event::value(block.name));
        let call = assemble::tool_call(Some(call_idx), Some(start), Value::from(""));
        Ok(Some(assemble::tool_calls_delta(vec![call])))
    }

    fn block_delta(&mut self, data: StreamEvent) -> Option<Message> {
        let delta = data.delta?;
        match event::text(&delta.kind)? {
            "text_delta" => Some(assemble::content_delta(event::value(delta.text))),
            "thinking_delta" => Some(assemble::reasoning_delta(event::value(delta.thinking))),
            "input_json_delta" if self.json_answer => {
                Some(assemble::content_delta(event::value(delta.partial_json)))
            }
            "input_json_delta" => {
                let block_idx = event::count(&data.index)? as usize;
                let call = self.tool_call_by_block.get_mut(block_idx)?.as_mut()?;
                let arguments = match delta.partial_json {
                    Some(Value::String(arguments)) => arguments,
                    _ => String::new(),
                };
                call.has_arguments |= !arguments.is_empty();
                let call = assemble::tool_call(Some(call.call_idx), None, Value::from(arguments));
                Some(assemble::tool_calls_delta(vec![call]))
            }
            // signature_delta (thinking integrity) and citations have no OpenAI field.
            _ => None,
        }
    }

    /// The end of a block: a tool call that received no argument text gets `{}`.
    fn block_stop(&mut self, data: &StreamEvent) -> Option<Message> {
        let block_idx = event::count(&data.index)? as usize;
        let call = self.tool_call_by_block.get_mut(block_idx)?.take()?;
        (!call.has_arguments).then(|| {
            let call = assemble::tool_call(Some(call.call_idx), None, Value::from("{}"));
            assemble::tool_calls_delta(vec![call])
        })
    }

    fn drain(&mut self, out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        let events = std::mem::take(&mut self.events);
        let result = events.iter().try_for_each(|event| self.handle(event, out));
        self.events = events;
        result
    }

    /// Translates the events just parsed (all of them unless the parse failed), then
    /// keeps them for the relay or drops them.
    fn read_events(
        &mut self,
        parsed: Result<(), SseError>,
        out: &mut Vec<Chunk>,
    ) -> Result<(), UpstreamError> {
        let result = match parsed {
            Ok(()) => self.drain(out),
            Err(error) => Err(bad_gateway("anthropic", error.to_string())),
        };
        match &mut self.relayed {
            Some(relayed) => relayed.append(&mut self.events),
            None => self.events.clear(),
        }
        result
    }
}

/// An `error` event mid-stream: overload and API errors are the provider's, so
/// another candidate may help if nothing reached the client yet.
fn stream_error(error: &Value) -> UpstreamError {
    let kind = error["type"].as_str().unwrap_or("error");
    let message = error["message"].as_str().unwrap_or_default();
    let status = match kind {
        "overloaded_error" => StatusCode::SERVICE_UNAVAILABLE,
        "rate_limit_error" => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::BAD_GATEWAY,
    };
    UpstreamError { status, ..bad_gateway("anthropic", format!("{kind} mid-stream: {message}")) }
}

impl StreamTranslator for AnthropicStream {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        let parsed = self.parser.feed(bytes, &mut self.events);
        self.read_events(parsed, out)
    }

    fn finish(&mut self, out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        let parsed = self.parser.finish(&mut self.events);
        self.read_events(parsed, out)?;
        if self.done {
            Ok(())
        } else {
            Err(bad_gateway("anthropic", "stream ended before message_stop"))
        }
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    fn take_events(&mut self, out: &mut Vec<SseEvent>) {
        if let Some(relayed) = &mut self.relayed {
            out.append(relayed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ChatBody;

    #[test]
    fn a_native_request_goes_as_sent_with_the_reserved_limit() {
        let body = json!({"model": "anthropic/claude-sonnet-4", "max_tokens": 99_999,
            "messages": [{"role": "user", "content": "hi"}], "top_k": 3});
        let mut headers = HeaderMap::new();
        headers
            .insert("anthropic-beta", HeaderValue::from_static("interleaved-thinking-2025-05-14"));
        headers.insert("anthropic-version", HeaderValue::from_static("2023-01-01"));
        let chat = ChatRequest {
            body: ChatBody::from_tree(Map::new()),
            stream: true,
            max_tokens: Some(99_999),
            native: Some(super::super::Native {
                format: NativeFormat::AnthropicMessages,
                body: body.as_object().cloned().unwrap(),
                headers,
            }),
        };
        let endpoint = Endpoint { base_url: "https://a.example".into(), api_key: Some("k".into()) };
        let target = Target {
            upstream_model: "claude-sonnet-4-20250514",
            max_tokens: 64_000,
            controls: Controls::default(),
        };
        let request = Anthropic.request(&endpoint, &chat, &target).unwrap();
        let sent: Value = serde_json::from_slice(&request.body).unwrap();
        let expected = json!({"model": "claude-sonnet-4-20250514", "max_tokens": 64_000,
            "stream": true, "messages": [{"role": "user", "content": "hi"}], "top_k": 3});
        assert_eq!(sent, expected);
        assert_eq!(request.headers["anthropic-beta"], "interleaved-thinking-2025-05-14");
        assert_eq!(request.headers["anthropic-version"], "2023-01-01");
        assert_eq!(request.headers["x-api-key"], "k");
    }

    const ADAPTIVE: Controls =
        Controls { thinking: Thinking::Adaptive, sampling: false, forced_tool_choice: true };
    const ALWAYS: Controls =
        Controls { thinking: Thinking::AdaptiveAlways, sampling: false, forced_tool_choice: false };

    /// The body `request` sends for the OpenAI request `body` to a model with `controls`.
    fn translated(body: Value, controls: Controls) -> Result<Value, ParamError> {
        let chat = ChatRequest {
            body: ChatBody::from_tree(body.as_object().cloned().unwrap()),
            stream: false,
            max_tokens: None,
            native: None,
        };
        let endpoint = Endpoint { base_url: "https://a.example".into(), api_key: None };
        let target = Target { upstream_model: "claude-x", max_tokens: 4000, controls };
        let request = Anthropic.request(&endpoint, &chat, &target)?;
        Ok(serde_json::from_slice(&request.body).unwrap())
    }

    fn ask(extra: Value) -> Value {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        body.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap());
        body
    }

    #[test]
    fn reasoning_effort_becomes_what_each_thinking_mode_takes() {
        let sent = |effort: &str, controls| {
            let sent = translated(ask(json!({"reasoning_effort": effort})), controls).unwrap();
            (sent.get("thinking").cloned(), sent.get("output_config").cloned())
        };
        // A budget, for models up to Claude 4.6.
        let (thinking, config) = sent("medium", Controls::default());
        assert_eq!(
            (thinking.unwrap(), config),
            (json!({"type": "enabled", "budget_tokens": 2000}), None)
        );
        // Adaptive: the level as `output_config.effort`; `minimal` is Anthropic's `low`.
        for (effort, level) in
            [("minimal", "low"), ("low", "low"), ("high", "high"), ("xhigh", "xhigh")]
        {
            for controls in [ADAPTIVE, ALWAYS] {
                let (thinking, config) = sent(effort, controls);
                assert_eq!(thinking.unwrap(), json!({"type": "adaptive"}), "{effort}");
                assert_eq!(config.unwrap(), json!({"effort": level}), "{effort}");
            }
        }
        // `none` turns adaptive thinking off, and is refused where it is always on.
        assert_eq!(sent("none", ADAPTIVE), (Some(json!({"type": "disabled"})), None));
        let error = translated(ask(json!({"reasoning_effort": "none"})), ALWAYS).unwrap_err();
        assert_eq!(error.param, "reasoning_effort");
        // No effort asked: the model's default, nothing sent.
        assert_eq!(translated(ask(json!({})), ALWAYS).unwrap().get("thinking"), None);
        let error = translated(ask(json!({"reasoning_effort": "max"})), ADAPTIVE).unwrap_err();
        assert_eq!(error.param, "reasoning_effort");
    }

    #[test]
    fn sampling_and_forced_tools_are_refused_where_the_model_refuses_them() {
        let legacy =
            translated(ask(json!({"temperature": 0.2, "top_p": 0.9})), Controls::default());
        let legacy = legacy.unwrap();
        assert_eq!(
            (legacy["temperature"].as_f64(), legacy["top_p"].as_f64()),
            (Some(0.2), Some(0.9))
        );
        // The default temperature is dropped (it is what the model does anyway).
        let sent = translated(ask(json!({"temperature": 1})), ADAPTIVE).unwrap();
        assert_eq!(sent.get("temperature"), None);
        for (extra, param) in
            [(json!({"temperature": 0.2}), "temperature"), (json!({"top_p": 1}), "top_p")]
        {
            assert_eq!(translated(ask(extra), ADAPTIVE).unwrap_err().param, param);
        }
        let tool = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
        let forced = [json!("required"), json!({"type": "function", "function": {"name": "f"}})];
        for choice in forced {
            let body = ask(json!({"tools": tool, "tool_choice": choice}));
            assert!(translated(body.clone(), ADAPTIVE).is_ok());
            assert_eq!(translated(body, ALWAYS).unwrap_err().param, "tool_choice");
        }
        let body = ask(json!({"tools": tool, "tool_choice": "auto"}));
        assert_eq!(translated(body, ALWAYS).unwrap()["tool_choice"], json!({"type": "auto"}));
    }

    #[test]
    fn a_native_request_is_checked_as_sent() {
        let native = |extra: Value| {
            let mut body = json!({"model": "m", "max_tokens": 10, "messages": []});
            body.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap());
            ChatRequest {
                body: ChatBody::from_tree(Map::new()),
                stream: false,
                max_tokens: Some(10),
                native: Some(super::super::Native {
                    format: NativeFormat::AnthropicMessages,
                    body: body.as_object().cloned().unwrap(),
                    headers: HeaderMap::new(),
                }),
            }
        };
        let refused = |extra: Value, controls| {
            Anthropic.check(&native(extra), controls).err().map(|e| e.param)
        };
        let budget = json!({"thinking": {"type": "enabled", "budget_tokens": 2000}});
        assert_eq!(refused(budget.clone(), Controls::default()), None);
        assert_eq!(refused(budget, ADAPTIVE).as_deref(), Some("thinking.type"));
        let off = json!({"thinking": {"type": "disabled"}});
        assert_eq!(refused(off.clone(), ADAPTIVE), None);
        assert_eq!(refused(off, ALWAYS).as_deref(), Some("thinking.type"));
        let adaptive =
            json!({"thinking": {"type": "adaptive"}, "output_config": {"effort": "max"}});
        assert_eq!(refused(adaptive, ALWAYS), None);
        assert_eq!(refused(json!({"top_k": 5}), Controls::default()), None);
        assert_eq!(refused(json!({"top_k": 5}), ADAPTIVE).as_deref(), Some("top_k"));
        assert_eq!(refused(json!({"temperature": 1.0}), ADAPTIVE), None);
        assert_eq!(refused(json!({"temperature": 0}), ADAPTIVE).as_deref(), Some("temperature"));
        let forced = json!({"tool_choice": {"type": "any"}});
        assert_eq!(refused(forced.clone(), ADAPTIVE), None);
        assert_eq!(refused(forced, ALWAYS).as_deref(), Some("tool_choice.type"));
    }

    #[test]
    fn thinking_budget_follows_effort_and_max_tokens() {
        assert_eq!(thinking(Effort::Medium, 10_000).unwrap()["budget_tokens"], 5000);
        assert_eq!(thinking(Effort::Low, 2000).unwrap()["budget_tokens"], 1024);
        assert_eq!(thinking(Effort::High, 1024).unwrap_err().param, "reasoning_effort");
    }

    /// What the Messages codec relays as sent is known by the event's type alone: an
    /// event that is no object a tree reads has none (and is dropped).
    #[test]
    fn event_types_are_read_as_a_tree_reads_them() {
        let deep = format!(r#"{{"type":"ping","x":{}{}}}"#, "[".repeat(200), "]".repeat(200));
        for (data, expected) in [
            (r#"{"type":"content_block_delta","delta":{"text":"}"}}"#, Some("content_block_delta")),
            (r#" {"type":"pi\u006eg"} "#, Some("ping")),
            (r#"{"type":"ping","type":"message_stop"}"#, Some("message_stop")),
            (r#"{"x":1}"#, Some("")),
            (r#"{"type":5}"#, Some("")),
            (r#"{"type":null}"#, Some("")),
            ("[1]", None),
            (r#""message_stop""#, None),
            ("null", None),
            (r#"{"type":"ping","x":1e400}"#, None),
            (&deep, None),
            (r#"{"type":"ping""#, None),
            (r#"{"type":"ping"} {}"#, None),
        ] {
            assert_eq!(event_type(data).as_deref(), expected, "{data}");
        }
    }

    #[test]
    fn usage_counts_cached_tokens_into_the_prompt() {
        let mut usage = Usage::default();
        let apply = |usage: &mut Usage, text: &str| {
            apply_usage(usage, Some(&event::read::<WireUsage>(text).unwrap()));
        };
        apply(
            &mut usage,
            r#"{"input_tokens": 10, "cache_read_input_tokens": 100,
                "cache_creation_input_tokens": 5, "output_tokens": 1}"#,
        );
        apply(&mut usage, r#"{"output_tokens": 42}"#);
        let expected = Usage {
            prompt_tokens: 115,
            completion_tokens: 42,
            cached_read_tokens: 100,
            cached_write_tokens: 5,
            ..Usage::default()
        };
        assert_eq!(usage, expected);
    }

    /// The arguments a client assembles for each streamed tool call, by index.
    fn streamed_arguments(events: &[Value]) -> Vec<String> {
        let chat = ChatRequest {
            body: ChatBody::from_tree(Map::new()),
            stream: true,
            max_tokens: None,
            native: None,
        };
        let mut translator = Anthropic.stream(&chat);
        let mut chunks = Vec::new();
        for event in events {
            let kind = event["type"].as_str().unwrap();
            let sse = format!("event: {kind}\ndata: {event}\n\n");
            translator.feed(sse.as_bytes(), &mut chunks).unwrap();
        }
        translator.finish(&mut chunks).unwrap();
        let mut arguments: Vec<String> = Vec::new();
        for chunk in &chunks {
            let calls = json!(chunk.choices)[0]["delta"]["tool_calls"].as_array().cloned();
            for call in calls.unwrap_or_default() {
                let idx = call["index"].as_u64().unwrap() as usize;
                if arguments.len() <= idx {
                    arguments.resize(idx + 1, String::new());
                }
                arguments[idx].push_str(call["function"]["arguments"].as_str().unwrap());
            }
        }
        arguments
    }

    #[test]
    fn a_streamed_tool_call_without_arguments_ends_with_an_empty_object() {
        let start = |idx: u64, name: &str| {
            json!({"type": "content_block_start", "index": idx, "content_block":
                {"type": "tool_use", "id": format!("toolu_{idx}"), "name": name, "input": {}}})
        };
        let delta = |idx: u64, partial: &str| {
            json!({"type": "content_block_delta", "index": idx,
                   "delta": {"type": "input_json_delta", "partial_json": partial}})
        };
        let stop = |idx: u64| json!({"type": "content_block_stop", "index": idx});
        let events = [
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 5, "output_tokens": 1}}}),
            start(0, "now"),
            delta(0, ""),
            stop(0),
            start(1, "weather"),
            delta(1, "{\"city\":"),
            delta(1, "\"Paris\"}"),
            stop(1),
            // A block with no input_json_delta at all.
            start(2, "ping"),
            stop(2),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
            json!({"type": "message_stop"}),
        ];
        assert_eq!(streamed_arguments(&events), ["{}", "{\"city\":\"Paris\"}", "{}"]);
    }
}
