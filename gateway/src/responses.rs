//! The OpenAI Responses API (`POST /v1/api/responses`), stateless: the codec that reads a
//! Responses request into an OpenAI chat request (the pipeline's own form, which every
//! adapter reads, so any catalogue model answers) and writes the answer back as a
//! `response` object, or as the Responses event stream (`response.created`,
//! `response.in_progress`, per output item `response.output_item.added`, its content and
//! argument deltas and their `….done`, `response.output_item.done`, then
//! `response.completed` with the usage and its `cost`), each event numbered by its
//! `sequence_number`.
//!
//! Translated: `input` as text or items (messages with text and image parts, function
//! calls and `function_call_output` items; reasoning items are dropped, as thinking is
//! between other APIs), `instructions`, function tools and `tool_choice`, `text.format`
//! (`json_schema`, `json_object`), `reasoning.effort`, `max_output_tokens`,
//! `temperature`, `top_p`, `parallel_tool_calls`. The gateway keeps no responses: `store`
//! is accepted and answered `false`, and whatever needs a stored response or
//! conversation (`previous_response_id`, `conversation`, item references, `background`)
//! is refused by name, as are built-in tools (run and billed at OpenAI, not priced by
//! the gateway) and any field without a translation. The response object echoes the
//! request's parameters (instructions, tools, sampling, `text`, `reasoning`, `metadata`)
//! as OpenAI's does, carried from parse to answer in `ParsedChat::echo`; those the
//! client left out keep the defaults of OpenAI's schema.

use crate::codec::{Answered, Codec, StreamEncoder};
use crate::error::{ApiError, ErrorShape};
use crate::parse::{self, ParsedChat, GATEWAY_FIELDS, MAX_TOKENS_MAX};
use crate::providers::{Choice, Chunk, Completion, Message, ToolCall, Usage};
use crate::wire::write_event;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use serde_json::{json, Map, Value};
use solrouter_ledger::PicoUsd;

/// Fields of a Responses request that are translated, or that only tune how OpenAI
/// serves or stores it and are passed over (`store`, `include`, `metadata`, prompt
/// caching, `stream_options`, `max_tool_calls`, which bounds built-in tools only).
const FIELDS_KNOWN: [&str; 24] = [
    "model",
    "input",
    "instructions",
    "max_output_tokens",
    "stream",
    "temperature",
    "top_p",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "text",
    "reasoning",
    "user",
    "safety_identifier",
    "store",
    "include",
    "metadata",
    "prompt_cache_key",
    "prompt_cache_retention",
    "stream_options",
    "service_tier",
    "truncation",
    "max_tool_calls",
    "top_logprobs",
];

/// The request's fields a `response` object repeats (see [`echo`]).
const FIELDS_ECHOED: [&str; 11] = [
    "instructions",
    "max_output_tokens",
    "metadata",
    "parallel_tool_calls",
    "reasoning",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_p",
    "user",
];

/// Fields that need a response or conversation stored by the provider.
const FIELDS_STATEFUL: [&str; 3] = ["previous_response_id", "conversation", "background"];

/// Reasoning efforts every adapter knows (`translate::reasoning_effort`).
const EFFORTS: [&str; 4] = ["minimal", "low", "medium", "high"];

/// The OpenAI Responses API.
pub struct Responses;

pub static RESPONSES: Responses = Responses;

impl Codec for Responses {
    fn errors(&self) -> ErrorShape {
        ErrorShape::OpenAi
    }

    fn parse(&self, body: &Bytes, _headers: &HeaderMap) -> Result<ParsedChat, ApiError> {
        parse_responses(body)
    }

    fn completion(
        &self,
        answer: &Answered,
        completion: Completion,
        _native: Option<&[u8]>,
        cost: PicoUsd,
    ) -> Vec<u8> {
        let choice = completion.choices.first();
        let items = ItemIds::new(answer.id);
        let message = choice.and_then(Choice::message);
        let output = message.map(|message| output_items(&items, message)).unwrap_or_default();
        let finish = choice.and_then(Choice::finish_reason);
        let usage = usage_json(&completion.usage, cost);
        let response = response_object(&Head::of(answer), output, finish, usage);
        serde_json::to_vec(&response).unwrap_or_default()
    }

    fn encoder(&self, answer: &Answered, _native: bool) -> Box<dyn StreamEncoder> {
        Box::new(EventEncoder {
            head: Head::of(answer),
            items: ItemIds::new(answer.id),
            n_events: 0,
            started: false,
            output: Vec::new(),
            open: None,
            finish_reason: None,
        })
    }
}

/// Reads a Responses request into an OpenAI chat request.
fn parse_responses(body: &[u8]) -> Result<ParsedChat, ApiError> {
    let request = parse::json_object(body)?;
    let set = |field: &str| request.get(field).is_some_and(|value| !value.is_null());
    for field in FIELDS_STATEFUL {
        if set(field) && request[field] != Value::Bool(false) {
            return Err(ApiError::invalid_param(
                field,
                "the gateway stores no responses or conversations: send the whole \
                 conversation in `input`",
            ));
        }
    }
    for field in request.keys() {
        let known = FIELDS_KNOWN.contains(&field.as_str())
            || GATEWAY_FIELDS.contains(&field.as_str())
            || FIELDS_STATEFUL.contains(&field.as_str());
        if !known && set(field) {
            return Err(ApiError::invalid_param(field, "is not supported by the gateway"));
        }
    }
    refuse_unsupported(&request)?;
    let mut chat = Map::new();
    for field in GATEWAY_FIELDS.iter().chain(&["model", "stream", "temperature", "top_p"]) {
        if let Some(value) = request.get(*field) {
            chat.insert((*field).to_owned(), value.clone());
        }
    }
    match request.get("max_output_tokens") {
        None | Some(Value::Null) => {}
        Some(value) => match value.as_u64() {
            Some(tokens) if (1..=MAX_TOKENS_MAX).contains(&tokens) => {
                chat.insert("max_completion_tokens".to_owned(), Value::from(tokens));
            }
            _ => return Err(parse::max_tokens_invalid("max_output_tokens")),
        },
    }
    let user = ["safety_identifier", "user"].into_iter().find_map(|field| request.get(field));
    if let Some(user) = user.and_then(Value::as_str) {
        chat.insert("user".to_owned(), Value::from(user));
    }
    chat.insert("messages".to_owned(), Value::Array(messages(&request)?));
    tools(&request, &mut chat)?;
    text_format(&request, &mut chat)?;
    if let Some(reasoning) = request.get("reasoning").filter(|reasoning| !reasoning.is_null()) {
        match reasoning.get("effort") {
            None | Some(Value::Null) => {}
            Some(Value::String(effort)) if EFFORTS.contains(&effort.as_str()) => {
                chat.insert("reasoning_effort".to_owned(), Value::from(effort.as_str()));
            }
            Some(_) => {
                let message = "must be minimal, low, medium or high";
                return Err(ApiError::invalid_param("reasoning.effort", message));
            }
        }
    }
    let mut parsed = parse::parse_object(chat, body.len())?;
    parsed.echo = echo(&request);
    Ok(parsed)
}

/// The request's parameters a `response` object repeats, as OpenAI's does: those the
/// client set (not null), each replacing its default in [`response_object`].
fn echo(request: &Map<String, Value>) -> Value {
    let echoed = FIELDS_ECHOED
        .iter()
        .filter_map(|&field| {
            let value = request.get(field).filter(|value| !value.is_null())?;
            Some((field.to_owned(), value.clone()))
        })
        .collect();
    Value::Object(echoed)
}

/// Refuses values of known fields that the gateway cannot serve as asked.
fn refuse_unsupported(request: &Map<String, Value>) -> Result<(), ApiError> {
    if request.get("truncation").and_then(Value::as_str) == Some("auto") {
        let message = "only `disabled` is supported: an over-long input is refused";
        return Err(ApiError::invalid_param("truncation", message));
    }
    match request.get("service_tier") {
        None | Some(Value::Null) => {}
        Some(tier) if tier == "auto" || tier == "default" => {}
        Some(_) => {
            let message = "only `auto` and `default`: the gateway charges the catalogue's \
                           standard prices";
            return Err(ApiError::invalid_param("service_tier", message));
        }
    }
    match request.get("top_logprobs") {
        None | Some(Value::Null) => {}
        Some(count) if count.as_u64() == Some(0) => {}
        Some(_) => return Err(ApiError::invalid_param("top_logprobs", "is not supported")),
    }
    Ok(())
}

/// `instructions` and `input` as OpenAI chat messages: the instructions as the system
/// message, input messages by role (`developer` as `system`, which every provider
/// takes), consecutive function calls as one assistant message's tool calls (joining the
/// assistant text before them), their outputs as `tool` messages.
fn messages(request: &Map<String, Value>) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    match request.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => out.push(json!({"role": "system", "content": text})),
        Some(_) => return Err(ApiError::invalid_param("instructions", "must be a string")),
    }
    let items = match request.get("input") {
        Some(Value::String(text)) => {
            out.push(json!({"role": "user", "content": text}));
            return Ok(out);
        }
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(_) => {
            let message = "must be a string or a non-empty array of items";
            return Err(ApiError::invalid_param("input", message));
        }
        None => return Err(ApiError::invalid_param("input", "is required")),
    };
    for (item_idx, item) in items.iter().enumerate() {
        let param = format!("input[{item_idx}]");
        let kind = match item.get("type").and_then(Value::as_str) {
            Some(kind) => kind,
            None if item.get("role").is_some() => "message",
            None => return Err(ApiError::invalid_param(&format!("{param}.type"), "is required")),
        };
        match kind {
            "message" => out.push(message(item, &param)?),
            "function_call" => {
                let call = json!({
                    "id": required_str(item, "call_id", &param)?,
                    "type": "function",
                    "function": {
                        "name": required_str(item, "name", &param)?,
                        "arguments": item["arguments"].as_str().unwrap_or("{}"),
                    },
                });
                let last_assistant = out.last_mut().filter(|last| last["role"] == "assistant");
                match last_assistant {
                    Some(Value::Object(last)) => match last.get_mut("tool_calls") {
                        Some(Value::Array(calls)) => calls.push(call),
                        _ => {
                            last.insert("tool_calls".to_owned(), Value::Array(vec![call]));
                        }
                    },
                    _ => {
                        out.push(json!({"role": "assistant", "content": "", "tool_calls": [call]}))
                    }
                }
            }
            "function_call_output" => {
                let call_id = required_str(item, "call_id", &param)?;
                let output = text_of(&item["output"], &format!("{param}.output"))?;
                out.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
            }
            // Another model's reasoning (possibly encrypted) means nothing to this one.
            "reasoning" => {}
            "item_reference" => {
                return Err(ApiError::invalid_param(
                    &param,
                    "the gateway stores no items: send the item itself",
                ))
            }
            _ => {
                return Err(ApiError::invalid_param(
                    &format!("{param}.type"),
                    "only messages, function calls and function call outputs are supported",
                ))
            }
        }
    }
    Ok(out)
}

fn required_str<'a>(item: &'a Value, field: &str, param: &str) -> Result<&'a str, ApiError> {
    item.get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid_param(&format!("{param}.{field}"), "is required"))
}

/// One input message as a chat message.
fn message(item: &Value, param: &str) -> Result<Value, ApiError> {
    let role = match item.get("role").and_then(Value::as_str) {
        Some("developer" | "system") => "system",
        Some(role @ ("user" | "assistant")) => role,
        _ => {
            let message = "must be user, assistant, system or developer";
            return Err(ApiError::invalid_param(&format!("{param}.role"), message));
        }
    };
    let parts = match item.get("content") {
        Some(Value::String(text)) => return Ok(json!({"role": role, "content": text})),
        Some(Value::Array(parts)) => parts,
        _ => {
            let message = "must be a string or an array of parts";
            return Err(ApiError::invalid_param(&format!("{param}.content"), message));
        }
    };
    if role == "assistant" {
        let text = text_of(&item["content"], &format!("{param}.content"))?;
        return Ok(json!({"role": role, "content": text}));
    }
    let mut content = Vec::with_capacity(parts.len());
    for (part_idx, part) in parts.iter().enumerate() {
        let here = format!("{param}.content[{part_idx}]");
        match part.get("type").and_then(Value::as_str) {
            Some("input_text" | "output_text") => {
                let text = required_str(part, "text", &here)?;
                content.push(json!({"type": "text", "text": text}));
            }
            Some("input_image") => {
                let Some(url) = part.get("image_url").and_then(Value::as_str) else {
                    let message = "must be a URL or a data URL: the gateway has no file storage";
                    return Err(ApiError::invalid_param(&format!("{here}.image_url"), message));
                };
                let mut image = json!({"url": url});
                if let Some(detail) = part.get("detail").filter(|detail| detail.is_string()) {
                    image["detail"] = detail.clone();
                }
                content.push(json!({"type": "image_url", "image_url": image}));
            }
            _ => {
                let message = "only input_text and input_image parts are supported";
                return Err(ApiError::invalid_param(&format!("{here}.type"), message));
            }
        }
    }
    Ok(json!({"role": role, "content": content}))
}

/// The text of a string or of an array of text parts (assistant messages, function
/// call outputs).
fn text_of(value: &Value, param: &str) -> Result<String, ApiError> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (part_idx, part) in parts.iter().enumerate() {
                match part.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text") => {
                        text.push_str(part["text"].as_str().unwrap_or_default())
                    }
                    Some("refusal") => text.push_str(part["refusal"].as_str().unwrap_or_default()),
                    _ => {
                        let here = format!("{param}[{part_idx}].type");
                        return Err(ApiError::invalid_param(&here, "only text is supported here"));
                    }
                }
            }
            Ok(text)
        }
        _ => Err(ApiError::invalid_param(param, "must be a string or an array of text parts")),
    }
}

/// Function tools as chat tools; `tool_choice`; `parallel_tool_calls`.
fn tools(request: &Map<String, Value>, chat: &mut Map<String, Value>) -> Result<(), ApiError> {
    if let Some(tools) = request.get("tools").filter(|tools| !tools.is_null()) {
        let tools =
            tools.as_array().ok_or_else(|| ApiError::invalid_param("tools", "must be an array"))?;
        let mut functions = Vec::with_capacity(tools.len());
        for (tool_idx, tool) in tools.iter().enumerate() {
            let param = format!("tools[{tool_idx}]");
            if tool.get("type").and_then(Value::as_str) != Some("function") {
                let message = "only function tools are supported: built-in tools run and are \
                               billed at OpenAI, outside the gateway's prices";
                return Err(ApiError::invalid_param(&format!("{param}.type"), message));
            }
            let mut function = json!({"name": required_str(tool, "name", &param)?});
            for field in ["description", "parameters", "strict"] {
                if let Some(value) = tool.get(field).filter(|value| !value.is_null()) {
                    function[field] = value.clone();
                }
            }
            functions.push(json!({"type": "function", "function": function}));
        }
        if !functions.is_empty() {
            chat.insert("tools".to_owned(), Value::Array(functions));
        }
    }
    let choice = match request.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(mode)) if ["none", "auto", "required"].contains(&mode.as_str()) => {
            Some(Value::from(mode.as_str()))
        }
        Some(choice) if choice.get("type").and_then(Value::as_str) == Some("function") => {
            let name = required_str(choice, "name", "tool_choice")?;
            Some(json!({"type": "function", "function": {"name": name}}))
        }
        Some(_) => {
            let message = "must be none, auto, required or a function";
            return Err(ApiError::invalid_param("tool_choice", message));
        }
    };
    if chat.contains_key("tools") {
        if let Some(choice) = choice {
            chat.insert("tool_choice".to_owned(), choice);
        }
        if let Some(parallel) =
            request.get("parallel_tool_calls").filter(|value| value.is_boolean())
        {
            chat.insert("parallel_tool_calls".to_owned(), parallel.clone());
        }
    }
    Ok(())
}

/// `text.format` as a chat `response_format` (`text.verbosity` is a hint, passed over).
fn text_format(
    request: &Map<String, Value>,
    chat: &mut Map<String, Value>,
) -> Result<(), ApiError> {
    let Some(format) = request.get("text").and_then(|text| text.get("format")) else {
        return Ok(());
    };
    let response_format = match format.get("type").and_then(Value::as_str) {
        None if format.is_null() => return Ok(()),
        Some("text") => return Ok(()),
        Some("json_object") => json!({"type": "json_object"}),
        Some("json_schema") => {
            let mut schema = json!({
                "name": required_str(format, "name", "text.format")?,
                "schema": format.get("schema").cloned().unwrap_or_else(|| json!({})),
            });
            for field in ["description", "strict"] {
                if let Some(value) = format.get(field).filter(|value| !value.is_null()) {
                    schema[field] = value.clone();
                }
            }
            json!({"type": "json_schema", "json_schema": schema})
        }
        _ => {
            let message = "must be text, json_object or json_schema";
            return Err(ApiError::invalid_param("text.format.type", message));
        }
    };
    chat.insert("response_format".to_owned(), response_format);
    Ok(())
}

/// The ids of one response's output items: `msg_`, `fc_` or `rs_`, the generation's
/// digits, and the item's output index, unique within the response.
struct ItemIds {
    digits: String,
}

impl ItemIds {
    fn new(id: &str) -> ItemIds {
        ItemIds { digits: id.strip_prefix("gen-").unwrap_or(id).to_owned() }
    }

    fn id(&self, prefix: &str, output_index: usize) -> String {
        format!("{prefix}_{}_{output_index}", self.digits)
    }
}

/// What is written of an output item as it streams.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Reasoning,
    Text,
    Refusal,
    /// A function call, by the chat tool call index.
    Call(u64),
}

/// An output item being streamed: what it is, its index, and what it holds so far.
struct OpenItem {
    kind: Kind,
    output_index: usize,
    item: Value,
    text: String,
}

/// An item as written when it is done (or, `status` `incomplete`, when the stream broke).
fn finished_item(open: &OpenItem, status: &str) -> Value {
    let mut item = open.item.clone();
    item["status"] = Value::from(status);
    match open.kind {
        Kind::Reasoning => item["content"] = json!([{"type": "reasoning_text", "text": open.text}]),
        Kind::Text => item["content"] = json!([text_part(&open.text)]),
        Kind::Refusal => item["content"] = json!([{"type": "refusal", "refusal": open.text}]),
        Kind::Call(_) => item["arguments"] = Value::from(open.text.as_str()),
    }
    item
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": []})
}

fn message_item(id: String, status: &str, content: Vec<Value>) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
}

fn reasoning_item(id: String, content: Vec<Value>) -> Value {
    json!({"type": "reasoning", "id": id, "summary": [], "content": content})
}

fn call_item(id: String, status: &str, call: &ToolCall, arguments: &str) -> Value {
    json!({"type": "function_call", "id": id, "status": status, "call_id": call.id(),
        "name": call.name(), "arguments": arguments})
}

/// A chat answer's message as Responses output items: its reasoning, its text (or
/// refusal) as an assistant message, each tool call as a function call.
fn output_items(items: &ItemIds, message: &Message) -> Vec<Value> {
    let mut output = Vec::new();
    for field in [&message.reasoning, &message.reasoning_content] {
        if let Some(text) = Message::text(field).filter(|text| !text.is_empty()) {
            let content = vec![json!({"type": "reasoning_text", "text": text})];
            output.push(reasoning_item(items.id("rs", output.len()), content));
        }
    }
    let mut content = Vec::new();
    if let Some(text) = Message::text(&message.content).filter(|text| !text.is_empty()) {
        content.push(text_part(text));
    }
    if let Some(refusal) = Message::text(&message.refusal).filter(|text| !text.is_empty()) {
        content.push(json!({"type": "refusal", "refusal": refusal}));
    }
    if !content.is_empty() {
        output.push(message_item(items.id("msg", output.len()), "completed", content));
    }
    for call in message.tool_calls() {
        let arguments = call.arguments().unwrap_or_default();
        output.push(call_item(items.id("fc", output.len()), "completed", call, arguments));
    }
    output
}

/// Responses' usage object for what was billed, plus `cost` (USD, what the ledger
/// charged). Its `input_tokens` include the cached ones, as the gateway's do.
fn usage_json(usage: &Usage, cost: PicoUsd) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cached_read_tokens,
            "cache_write_tokens": usage.cached_write_tokens,
        },
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.prompt_tokens.saturating_add(usage.completion_tokens),
        "cost": cost.to_usd_f64(),
    })
}

/// The status a finish reason gives a response, and why it is incomplete.
fn status_of(finish_reason: Option<&str>) -> (&'static str, Value) {
    match finish_reason {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// What every `response` object of one answer repeats.
struct Head {
    id: String,
    created_s: u64,
    model: String,
    /// The request's parameters ([`echo`]).
    echo: Value,
}

impl Head {
    fn of(answer: &Answered) -> Head {
        Head {
            id: answer.id.to_owned(),
            created_s: answer.created_s,
            model: answer.model.id.clone(),
            echo: answer.echo.clone(),
        }
    }
}

/// A `response` object. `finish_reason` `None` with no usage: in progress.
fn response_object(
    head: &Head,
    output: Vec<Value>,
    finish_reason: Option<&str>,
    usage: Value,
) -> Value {
    let (status, incomplete) =
        if usage.is_null() { ("in_progress", Value::Null) } else { status_of(finish_reason) };
    let completed_at = if status == "completed" { Value::from(now_s()) } else { Value::Null };
    let mut response = json!({
        "id": head.id,
        "object": "response",
        "created_at": head.created_s,
        "status": status,
        "completed_at": completed_at,
        "error": null,
        "incomplete_details": incomplete,
        "instructions": null,
        "max_output_tokens": null,
        "model": head.model,
        "output": output,
        "parallel_tool_calls": true,
        "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null},
        "store": false,
        "temperature": null,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": null,
        "truncation": "disabled",
        "usage": usage,
        "user": null,
        "metadata": {},
    });
    if let (Value::Object(response), Value::Object(echo)) = (&mut response, &head.echo) {
        response.extend(echo.clone());
    }
    response
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Writes the Responses event sequence from the chat chunks: `response.created` and
/// `response.in_progress` first; each output item opened by `response.output_item.added`
/// (the text part of a message or a reasoning by `response.content_part.added`), filled
/// by its deltas, closed by its `….done` events and `response.output_item.done`; then
/// `response.completed` (`response.incomplete` when the output limit cut it) with every
/// item and the usage with `cost`, held back until the settle. A broken stream ends
/// with an `error` event and `response.failed`, whose usage is what was charged for
/// what was delivered.
struct EventEncoder {
    head: Head,
    items: ItemIds,
    /// Events written: the next one's `sequence_number`.
    n_events: u64,
    started: bool,
    /// The items done, by output index.
    output: Vec<Value>,
    open: Option<OpenItem>,
    finish_reason: Option<String>,
}

impl EventEncoder {
    fn emit(&mut self, out: &mut BytesMut, kind: &str, fields: Value) {
        let mut data = Map::new();
        data.insert("type".to_owned(), Value::from(kind));
        if let Value::Object(fields) = fields {
            data.extend(fields);
        }
        data.insert("sequence_number".to_owned(), Value::from(self.n_events));
        self.n_events += 1;
        write_event(out, kind, &Value::Object(data));
    }

    fn response(&self, output: Vec<Value>, usage: Value) -> Value {
        let finish = self.finish_reason.as_deref();
        response_object(&self.head, output, finish, usage)
    }

    fn start(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        for kind in ["response.created", "response.in_progress"] {
            let response = self.response(Vec::new(), Value::Null);
            self.emit(out, kind, json!({"response": response}));
        }
    }

    /// Opens an item of `kind` unless it is the open one; `call` is the tool call's
    /// first delta. Returns the item's output index.
    /// Opens an item of `kind` (a tool call's: `call`) unless it is the open one;
    /// returns its output index.
    fn open(&mut self, kind: Kind, call: Option<&ToolCall>, out: &mut BytesMut) -> usize {
        if let Some(open) = self.open.as_ref().filter(|open| open.kind == kind) {
            return open.output_index;
        }
        self.close(out);
        let output_index = self.output.len();
        let item = match kind {
            Kind::Reasoning => reasoning_item(self.items.id("rs", output_index), Vec::new()),
            Kind::Text | Kind::Refusal => {
                message_item(self.items.id("msg", output_index), "in_progress", Vec::new())
            }
            Kind::Call(_) => {
                let id = self.items.id("fc", output_index);
                call_item(id, "in_progress", call.unwrap_or(&ToolCall::default()), "")
            }
        };
        let added = json!({"output_index": output_index, "item": item});
        self.emit(out, "response.output_item.added", added);
        let part = match kind {
            Kind::Reasoning => Some(json!({"type": "reasoning_text", "text": ""})),
            Kind::Text => Some(text_part("")),
            Kind::Refusal => Some(json!({"type": "refusal", "refusal": ""})),
            Kind::Call(_) => None,
        };
        if let Some(part) = part {
            let added = json!({"item_id": item["id"], "output_index": output_index,
                "content_index": 0, "part": part});
            self.emit(out, "response.content_part.added", added);
        }
        self.open = Some(OpenItem { kind, output_index, item, text: String::new() });
        output_index
    }

    /// Appends `delta` to the open item and writes its delta event.
    fn delta(&mut self, delta: &str, out: &mut BytesMut) {
        let Some(open) = self.open.as_mut() else { return };
        open.text.push_str(delta);
        let (item_id, output_index) = (open.item["id"].clone(), open.output_index);
        let (kind, mut event) = match open.kind {
            Kind::Reasoning => ("response.reasoning_text.delta", json!({"content_index": 0})),
            Kind::Text => {
                ("response.output_text.delta", json!({"content_index": 0, "logprobs": []}))
            }
            Kind::Refusal => ("response.refusal.delta", json!({"content_index": 0})),
            Kind::Call(_) => ("response.function_call_arguments.delta", json!({})),
        };
        event["item_id"] = item_id;
        event["output_index"] = Value::from(output_index);
        event["delta"] = Value::from(delta);
        self.emit(out, kind, event);
    }

    /// Closes the open item: its `….done` events, and it joins the output.
    fn close(&mut self, out: &mut BytesMut) {
        let Some(open) = self.open.take() else { return };
        let item = finished_item(&open, "completed");
        let output_index = open.output_index;
        let located = json!({"item_id": item["id"], "output_index": output_index});
        let text = Value::from(open.text.as_str());
        let (kind, done) = match open.kind {
            Kind::Reasoning => {
                ("response.reasoning_text.done", json!({"content_index": 0, "text": text}))
            }
            Kind::Text => (
                "response.output_text.done",
                json!({"content_index": 0, "text": text, "logprobs": []}),
            ),
            Kind::Refusal => {
                ("response.refusal.done", json!({"content_index": 0, "refusal": text}))
            }
            Kind::Call(_) => (
                "response.function_call_arguments.done",
                json!({"name": item["name"], "arguments": text}),
            ),
        };
        self.emit(out, kind, merged(&located, done));
        if !matches!(open.kind, Kind::Call(_)) {
            let part = json!({"content_index": 0, "part": item["content"][0]});
            self.emit(out, "response.content_part.done", merged(&located, part));
        }
        let done = json!({"output_index": output_index, "item": item});
        self.emit(out, "response.output_item.done", done);
        self.output.push(item);
    }

    fn translate(&mut self, delta: &Message, out: &mut BytesMut) {
        let texts = [
            (Kind::Reasoning, &delta.reasoning),
            (Kind::Reasoning, &delta.reasoning_content),
            (Kind::Refusal, &delta.refusal),
            (Kind::Text, &delta.content),
        ];
        for (kind, field) in texts {
            if let Some(text) = Message::text(field).filter(|text| !text.is_empty()) {
                self.open(kind, None, out);
                self.delta(text, out);
            }
        }
        for call in delta.tool_calls() {
            let call_idx = call.index().unwrap_or(0);
            self.open(Kind::Call(call_idx), Some(call), out);
            let arguments = call.arguments().unwrap_or_default();
            if !arguments.is_empty() {
                self.delta(arguments, out);
            }
        }
    }
}

/// `base`'s fields, then `extra`'s.
fn merged(base: &Value, extra: Value) -> Value {
    let mut object = base.as_object().cloned().unwrap_or_default();
    if let Value::Object(extra) = extra {
        object.extend(extra);
    }
    Value::Object(object)
}

impl StreamEncoder for EventEncoder {
    fn chunk(&mut self, chunk: &Chunk, out: &mut BytesMut) {
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

    fn finish(&mut self, usage: &Usage, cost: PicoUsd, out: &mut BytesMut) {
        self.start(out);
        self.close(out);
        let output = std::mem::take(&mut self.output);
        let response = self.response(output, usage_json(usage, cost));
        let kind = match response["status"].as_str() {
            Some("incomplete") => "response.incomplete",
            _ => "response.completed",
        };
        self.emit(out, kind, json!({"response": response}));
    }

    fn fail(&mut self, error: &ApiError, usage: &Usage, cost: PicoUsd, out: &mut BytesMut) {
        self.start(out);
        let mut output = std::mem::take(&mut self.output);
        if let Some(open) = self.open.take() {
            output.push(finished_item(&open, "incomplete"));
        }
        let error = error.to_json()["error"].clone();
        let event =
            json!({"code": error["code"], "message": error["message"], "param": error["param"]});
        self.emit(out, "error", event);
        let mut response = self.response(output, usage_json(usage, cost));
        response["status"] = Value::from("failed");
        response["completed_at"] = Value::Null;
        response["incomplete_details"] = Value::Null;
        response["error"] = json!({"code": error["code"], "message": error["message"]});
        self.emit(out, "response.failed", json!({"response": response}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn parse(body: Value) -> Result<ParsedChat, ApiError> {
        parse_responses(body.to_string().as_bytes())
    }

    fn refused_param(body: Value) -> String {
        let error = parse(body).expect_err("refused");
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        error.to_json()["error"]["param"].as_str().expect("param").to_owned()
    }

    #[test]
    fn translates_a_request_into_openai_terms() {
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
        let parsed = parse(json!({
            "model": "openai/gpt-4.1", "models": ["mock/echo"], "stream": true,
            "instructions": "be brief", "max_output_tokens": 100, "temperature": 0.5,
            "store": true, "include": ["reasoning.encrypted_content"], "metadata": {"a": "b"},
            "safety_identifier": "u",
            "input": [
                {"role": "developer", "content": "no jokes"},
                {"role": "user", "content": [{"type": "input_text", "text": "look"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "let me see"}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"a\":1}"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "one"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]},
            ],
            "tools": [{"type": "function", "name": "f", "description": "d",
                "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "f"}, "parallel_tool_calls": false,
            "text": {"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": true},
                "verbosity": "low"},
            "reasoning": {"effort": "medium", "summary": "auto"},
        }))
        .expect("valid");
        assert_eq!(parsed.model_ids, ["openai/gpt-4.1", "mock/echo"]);
        assert!(parsed.chat.stream && parsed.wants_tools && parsed.wants_images);
        assert!(parsed.wants_structured_output);
        assert_eq!(parsed.chat.max_tokens, Some(100));
        let body = Value::Object(parsed.chat.body.tree().clone());
        let expected_messages = json!([
            {"role": "system", "content": "be brief"},
            {"role": "system", "content": "no jokes"},
            {"role": "user", "content": [{"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}]},
            {"role": "assistant", "content": "let me see", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "one"},
            {"role": "tool", "tool_call_id": "c2", "content": "two"},
        ]);
        assert_eq!(body["messages"], expected_messages);
        assert_eq!(
            body["tools"],
            json!([{"type": "function", "function": {"name": "f", "description": "d",
                "parameters": {"type": "object"}, "strict": true}}])
        );
        assert_eq!(body["tool_choice"], json!({"type": "function", "function": {"name": "f"}}));
        assert_eq!(body["parallel_tool_calls"], false);
        assert_eq!(
            body["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": true}})
        );
        assert_eq!(body["reasoning_effort"], "medium");
        assert_eq!(body["max_completion_tokens"], 100);
        assert_eq!(body["temperature"], 0.5);
        assert_eq!(body["user"], "u");
        for field in ["store", "include", "metadata", "input", "instructions", "text"] {
            assert!(!body.as_object().unwrap().contains_key(field), "{field}");
        }
    }

    #[test]
    fn text_input_is_one_user_message() {
        let parsed = parse(json!({"model": "m", "input": "hi"})).expect("valid");
        assert_eq!(parsed.chat.body.tree()["messages"], json!([{"role": "user", "content": "hi"}]));
        assert!(!parsed.chat.stream);
        assert_eq!(parsed.chat.max_tokens, None);
    }

    #[test]
    fn refuses_what_needs_stored_state_or_has_no_translation() {
        let with = |extra: Value| {
            let mut body = json!({"model": "m", "input": "hi"});
            for (field, value) in extra.as_object().unwrap() {
                body[field] = value.clone();
            }
            body
        };
        let cases = [
            (json!({"previous_response_id": "resp_1"}), "previous_response_id"),
            (json!({"conversation": "conv_1"}), "conversation"),
            (json!({"background": true}), "background"),
            (json!({"prompt": {"id": "p"}}), "prompt"),
            (json!({"truncation": "auto"}), "truncation"),
            (json!({"service_tier": "priority"}), "service_tier"),
            (json!({"top_logprobs": 3}), "top_logprobs"),
            (json!({"tools": [{"type": "web_search"}]}), "tools[0].type"),
            (json!({"tools": [{"type": "function"}]}), "tools[0].name"),
            (json!({"tool_choice": {"type": "file_search"}}), "tool_choice"),
            (json!({"text": {"format": {"type": "xml"}}}), "text.format.type"),
            (
                json!({"text": {"format": {"type": "json_schema", "schema": {}}}}),
                "text.format.name",
            ),
            (json!({"reasoning": {"effort": "extreme"}}), "reasoning.effort"),
            (json!({"max_output_tokens": 0}), "max_output_tokens"),
            (json!({"instructions": 3}), "instructions"),
            (json!({"input": []}), "input"),
            (json!({"input": [{"type": "item_reference", "id": "msg_1"}]}), "input[0]"),
            (json!({"input": [{"type": "web_search_call"}]}), "input[0].type"),
            (json!({"input": [{"content": "x"}]}), "input[0].type"),
            (json!({"input": [{"role": "tool", "content": "x"}]}), "input[0].role"),
            (json!({"input": [{"role": "user", "content": 1}]}), "input[0].content"),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
                "input[0].content[0].type",
            ),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}),
                "input[0].content[0].image_url",
            ),
            (json!({"input": [{"type": "function_call", "name": "f"}]}), "input[0].call_id"),
            (
                json!({"input": [{"type": "function_call_output", "output": "x"}]}),
                "input[0].call_id",
            ),
            (json!({"model": null}), "model"),
        ];
        for (extra, param) in cases {
            assert_eq!(refused_param(with(extra.clone())), param, "{extra}");
        }
        assert_eq!(refused_param(json!({"model": "m"})), "input");
        // What only OpenAI's own serving reads is accepted, `store` included.
        for extra in [
            json!({"store": true, "background": false, "truncation": "disabled"}),
            json!({"service_tier": "auto", "prompt_cache_key": "k", "top_logprobs": 0}),
        ] {
            parse(with(extra)).expect("accepted");
        }
    }

    fn model() -> &'static crate::catalog::Model {
        let catalog: &'static crate::catalog::Catalog =
            Box::leak(Box::new(crate::catalog::Catalog::builtin()));
        catalog.get("mock/echo").expect("catalogued")
    }

    fn usage() -> Usage {
        Usage {
            prompt_tokens: 10,
            completion_tokens: 4,
            reasoning_tokens: 1,
            cached_read_tokens: 2,
            ..Usage::default()
        }
    }

    #[test]
    fn an_answer_is_a_response_object() {
        let answer = Answered { id: "gen-00ff", created_s: 7, model: model(), echo: &Value::Null };
        let completion = Completion {
            choices: vec![Choice::from_tree(
                json!({"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Hi", "reasoning": "hm",
                "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}),
            )],
            usage: usage(),
            extra: Map::new(),
        };
        let body = RESPONSES.completion(&answer, completion, None, PicoUsd(5_000_000));
        let response: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(
            (&response["id"], &response["object"], &response["status"], &response["model"]),
            (&json!("gen-00ff"), &json!("response"), &json!("completed"), &json!("mock/echo"))
        );
        assert_eq!(response["created_at"], 7);
        assert_eq!(
            response["output"],
            json!([
                {"type": "reasoning", "id": "rs_00ff_0", "summary": [],
                    "content": [{"type": "reasoning_text", "text": "hm"}]},
                {"type": "message", "id": "msg_00ff_1", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": "Hi", "annotations": []}]},
                {"type": "function_call", "id": "fc_00ff_2", "status": "completed",
                    "call_id": "c1", "name": "f", "arguments": "{\"a\":1}"},
            ])
        );
        assert_eq!(
            response["usage"],
            json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 0},
                "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 1},
                "total_tokens": 14, "cost": 0.000005})
        );
        let cut = Completion {
            choices: vec![Choice::from_tree(
                json!({"finish_reason": "length", "message": {"content": "a b"}}),
            )],
            usage: usage(),
            extra: Map::new(),
        };
        let response: Value =
            serde_json::from_slice(&RESPONSES.completion(&answer, cut, None, PicoUsd(1)))
                .expect("JSON");
        assert_eq!(response["status"], "incomplete");
        assert_eq!(response["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(response["completed_at"], Value::Null);
    }

    /// The events of an encoded stream, as (type, data), each data's `type` its event
    /// name and the sequence numbers 0, 1, 2, ….
    fn events(out: &BytesMut) -> Vec<(String, Value)> {
        let text = std::str::from_utf8(out).expect("utf-8");
        let events: Vec<(String, Value)> = text
            .split("\n\n")
            .filter(|event| !event.is_empty())
            .map(|event| {
                let (kind, data) = event.split_once("\ndata: ").expect("event and data");
                let kind = kind.strip_prefix("event: ").expect("event line").to_owned();
                let data: Value = serde_json::from_str(data).expect("JSON data");
                assert_eq!(data["type"], kind.as_str());
                (kind, data)
            })
            .collect();
        for (sequence, (_, data)) in events.iter().enumerate() {
            assert_eq!(data["sequence_number"], sequence, "{data}");
        }
        events
    }

    fn chunk(delta: Value, finish: Value) -> Chunk {
        Chunk {
            choices: vec![Choice::from_tree(
                json!({"index": 0, "delta": delta, "finish_reason": finish}),
            )],
            extra: Map::new(),
        }
    }

    #[test]
    fn a_stream_follows_the_documented_event_sequence() {
        let answer = Answered { id: "gen-1", created_s: 1, model: model(), echo: &Value::Null };
        let mut encoder = RESPONSES.encoder(&answer, false);
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
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
                Value::Null,
            ),
            chunk(json!({}), json!("tool_calls")),
        ] {
            encoder.chunk(&chunk, &mut out);
        }
        encoder.finish(&usage(), PicoUsd(5_000_000), &mut out);
        let events = events(&out);
        let kinds: Vec<&str> = events.iter().map(|(kind, _)| kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.reasoning_text.delta",
                "response.reasoning_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        assert_eq!(events[0].1["response"]["status"], "in_progress");
        assert_eq!(events[0].1["response"]["usage"], Value::Null);
        let text_delta = &events[10].1;
        assert_eq!(
            (&text_delta["item_id"], &text_delta["output_index"], &text_delta["delta"]),
            (&json!("msg_1_1"), &json!(1), &json!("Hi"))
        );
        assert_eq!(events[12].1["text"], "Hi there");
        assert_eq!(events[13].1["part"]["text"], "Hi there");
        assert_eq!(events[15].1["item"]["call_id"], "c1");
        assert_eq!(events[15].1["item"]["arguments"], "");
        assert_eq!(events[16].1["item_id"], "fc_1_2");
        assert_eq!(events[18].1["arguments"], "{\"a\":1}");
        assert_eq!(events[18].1["name"], "f");
        let completed = &events[20].1["response"];
        assert_eq!(completed["status"], "completed");
        assert_eq!(completed["usage"]["cost"], 0.000005);
        assert_eq!(completed["usage"]["output_tokens"], 4);
        let done_items: Vec<&Value> = events
            .iter()
            .filter(|(kind, _)| kind == "response.output_item.done")
            .map(|(_, data)| &data["item"])
            .collect();
        let output: Vec<&Value> = completed["output"].as_array().expect("output").iter().collect();
        assert_eq!(output, done_items);
        assert_eq!(output[1]["content"][0]["text"], "Hi there");
        assert_eq!(output[2]["arguments"], "{\"a\":1}");
    }

    #[test]
    fn a_cut_stream_is_incomplete_and_a_broken_one_failed_with_its_charge() {
        let answer = Answered { id: "gen-2", created_s: 1, model: model(), echo: &Value::Null };
        let mut encoder = RESPONSES.encoder(&answer, false);
        let mut out = BytesMut::new();
        encoder.chunk(&chunk(json!({"content": "a b"}), json!("length")), &mut out);
        encoder.finish(&usage(), PicoUsd(1), &mut out);
        let cut = events(&out);
        let (kind, last) = cut.last().expect("events");
        assert_eq!(kind, "response.incomplete");
        assert_eq!(last["response"]["incomplete_details"]["reason"], "max_output_tokens");

        let mut encoder = RESPONSES.encoder(&answer, false);
        let mut out = BytesMut::new();
        encoder.chunk(&chunk(json!({"content": "a"}), Value::Null), &mut out);
        let error = ApiError::internal("the provider hung up");
        encoder.fail(&error, &usage(), PicoUsd(3_000_000), &mut out);
        let events = events(&out);
        let kinds: Vec<&str> = events.iter().map(|(kind, _)| kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "error",
                "response.failed",
            ]
        );
        assert_eq!(events[5].1["code"], "internal_error");
        let failed = &events[6].1["response"];
        assert_eq!(failed["status"], "failed");
        assert_eq!(failed["error"]["code"], "internal_error");
        assert_eq!(failed["usage"]["cost"], 0.000003);
        assert_eq!(failed["output"][0]["status"], "incomplete");
        assert_eq!(failed["output"][0]["content"][0]["text"], "a");
    }

    /// JSON trees built from the words a Responses request and a chat delta use, so that
    /// arbitrary input reaches deep into the translation.
    /// The words arbitrary requests and answers are built from: the API's own field names
    /// and values, so that the generated JSON reaches past the first type check.
    const WORDS: &[&str] = &[
        "model",
        "input",
        "instructions",
        "role",
        "user",
        "assistant",
        "developer",
        "content",
        "type",
        "message",
        "input_text",
        "input_image",
        "image_url",
        "text",
        "function_call",
        "function_call_output",
        "call_id",
        "name",
        "arguments",
        "output",
        "tools",
        "function",
        "tool_choice",
        "format",
        "json_schema",
        "reasoning",
        "effort",
        "max_output_tokens",
        "tool_calls",
        "index",
        "id",
        "refusal",
    ];

    fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = Value> {
        crate::codec::arbitrary_json(WORDS)
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_requests_and_answers_never_panic(request in arbitrary_json(), delta in arbitrary_json()) {
            for body in [
                request.clone(),
                json!({"model": "m", "input": request}),
                json!({"model": "m", "input": [request], "tools": [request], "text": request,
                    "tool_choice": request, "reasoning": request, "instructions": request}),
                json!({"model": "m", "input": [{"role": "user", "content": [request]}]}),
            ] {
                let _ = parse_responses(body.to_string().as_bytes());
            }
            let answer = Answered { id: "gen-4", created_s: 1, model: model(), echo: &Value::Null };
            let mut encoder = RESPONSES.encoder(&answer, false);
            let mut out = BytesMut::new();
            for finish in [Value::Null, delta["type"].clone()] {
                encoder.chunk(&chunk(delta.clone(), finish), &mut out);
            }
            encoder.finish(&Usage::default(), PicoUsd(1), &mut out);
            let mut broken = RESPONSES.encoder(&answer, false);
            broken.chunk(&chunk(delta.clone(), Value::Null), &mut out);
            broken.fail(&ApiError::internal("cut"), &Usage::default(), PicoUsd(1), &mut out);
            let completion = Completion {
                choices: vec![Choice::from_tree(json!({"message": delta, "finish_reason": request["type"]}))],
                usage: Usage::default(),
                extra: Map::new(),
            };
            let _ = RESPONSES.completion(&answer, completion, None, PicoUsd(1));
        }
    }
}
