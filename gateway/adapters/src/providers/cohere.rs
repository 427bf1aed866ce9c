//! The Cohere Chat v2 adapter. Cohere v2 is close to OpenAI on the request side
//! (messages, OpenAI-shaped tools and tool calls) but answers with typed content
//! blocks, a `tool_plan`, upper-case finish reasons, and a stream of typed events
//! (`message-start` … `message-end`) that this adapter turns into OpenAI chunks.
//! Citations become a top-level `citations` array of their sources, as Perplexity's.
//!
//! Cohere reports two token counts: `tokens` (everything the model saw, including
//! Cohere's own hidden preamble) and `billed_units` (what Cohere charges). The gateway
//! bills on `billed_units`, so clients pay what the operator pays.

use super::assemble::{self, assistant_message, Citations};
use super::embed::{self, EmbedRequest, EmbedTarget, Embedder, Embeddings};
use super::errors::{bad_gateway, classify, truncate};
use super::event::{self, lenient_object, Count, IfObject, List, Number, Str};
use super::openai::bearer_headers;
use super::translate::{self, param_error, Part, ResponseFormat, ToolChoice};
use super::{
    Adapter, ChatRequest, Choice, Chunk, Completion, Endpoint, Message, ParamError,
    StreamTranslator, Target, UpstreamError, UpstreamRequest, Usage,
};
use crate::sse::{SseEvent, SseParser};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Map, Value};

const PROVIDER: &str = "cohere";

/// Request fields Cohere takes under the same meaning as OpenAI, beyond the shared set.
const FIELDS_EXTRA: [&str; 2] = ["frequency_penalty", "presence_penalty"];

/// The most tool calls one streamed message may open; a bound on the index table, far
/// above what a model calls in one turn.
const TOOL_CALLS_MAX: usize = 1024;

pub struct Cohere;

impl Adapter for Cohere {
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
            "frequency_penalty",
            "presence_penalty",
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
        let body = translate_request(chat.body.tree(), chat.stream, target)?;
        let body = serde_json::to_vec(&Value::Object(body)).expect("JSON values always serialize");
        Ok(UpstreamRequest {
            url: format!("{}/v2/chat", endpoint.base_url.trim_end_matches('/')),
            headers: bearer_headers(endpoint),
            body: Bytes::from(body),
        })
    }

    fn response(&self, chat: &ChatRequest, body: &[u8]) -> Result<Completion, UpstreamError> {
        // Read as a stream event is, straight from its text: no tree.
        let reply = event::read_body::<IfObject<Answer>>(body)
            .map_err(|error| bad_gateway(PROVIDER, format!("invalid response: {error}")))?
            .0
            .unwrap_or_default();
        let message = reply
            .message
            .and_then(|message| message.0)
            .ok_or_else(|| bad_gateway(PROVIDER, "response has no `message`"))?;
        let (mut text, mut reasoning) = (String::new(), String::new());
        for block in event::items(&message.content) {
            match event::text(&block.kind) {
                Some("text") => text.push_str(event::text(&block.text).unwrap_or_default()),
                Some("thinking") => {
                    reasoning.push_str(event::text(&block.thinking).unwrap_or_default())
                }
                // Newer block types have no OpenAI equivalent.
                _ => {}
            }
        }
        // The tool plan is the model explaining which tools it is about to call: its
        // reasoning, not its answer.
        reasoning.push_str(event::text(&message.tool_plan).unwrap_or_default());
        let calls = message.tool_calls.map(|calls| calls.0).unwrap_or_default();
        let tool_calls: Vec<Value> = calls
            .into_iter()
            .map(|call| {
                let function = call.function.unwrap_or_default();
                let arguments = event::text(&function.arguments).unwrap_or_default();
                json!({
                    "id": event::value(call.id),
                    "type": "function",
                    "function": {"name": event::value(function.name), "arguments": object_arguments(arguments)},
                })
            })
            .collect();
        let produced = !(text.is_empty() && reasoning.is_empty() && tool_calls.is_empty());
        let finish_reason = match event::text(&reply.finish_reason) {
            Some(reason) => Value::from(finish_reason(reason, produced)?),
            None => Value::Null,
        };
        let assistant = assistant_message(text, reasoning, tool_calls);
        let choice = json!({"index": 0, "message": assistant, "finish_reason": finish_reason});
        let mut citations = Citations::default();
        for citation in event::items(&message.citations) {
            read_citations(&mut citations, citation);
        }
        let completion = Completion {
            choices: vec![Choice::from_tree(choice)],
            usage: usage_of(reply.usage.as_ref()),
            extra: citations.extra(),
        };
        Ok(assemble::first_tool_call_only(chat.body.tree(), completion))
    }

    fn stream(&self, chat: &ChatRequest) -> Box<dyn StreamTranslator> {
        let stream = Box::new(CohereStream {
            parser: SseParser::new(),
            events: Vec::new(),
            usage: Usage::default(),
            calls: Vec::new(),
            n_tool_calls: 0,
            citations: Citations::default(),
            produced: false,
            done: false,
        });
        assemble::stream_first_tool_call_only(chat.body.tree(), stream)
    }

    fn error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        classify(PROVIDER, status, headers, body)
    }

    fn embedder(&self) -> Option<&dyn Embedder> {
        Some(self)
    }
}

/// The `input_type` sent when the client names none: Cohere requires one of its v3 and
/// later models, and documents are what most embedding calls embed.
pub const INPUT_TYPE_DEFAULT: &str = "search_document";

/// `POST /v2/embed`: `texts`, `input_type`, `embedding_types: ["float"]`,
/// `output_dimension`; answered by `embeddings.float` and `meta.billed_units.input_tokens`.
impl Embedder for Cohere {
    fn embed_request(
        &self,
        endpoint: &Endpoint,
        request: &EmbedRequest,
        target: &EmbedTarget,
    ) -> UpstreamRequest {
        let input_type = request.input_type.as_deref().unwrap_or(INPUT_TYPE_DEFAULT);
        // Routing sends token ids only to embedders that take them.
        let texts: Vec<&str> = request.inputs.iter().filter_map(embed::Input::text).collect();
        let mut body = json!({"model": target.upstream_model, "texts": texts,
            "input_type": input_type, "embedding_types": ["float"]});
        if let Some(dimensions) = target.dimensions {
            body["output_dimension"] = Value::from(dimensions);
        }
        UpstreamRequest {
            url: format!("{}/v2/embed", endpoint.base_url.trim_end_matches('/')),
            headers: bearer_headers(endpoint),
            body: Bytes::from(body.to_string()),
        }
    }

    fn embed_response(
        &self,
        request: &EmbedRequest,
        body: &[u8],
    ) -> Result<Embeddings, UpstreamError> {
        let object = embed::object(PROVIDER, body)?;
        let Some(Value::Array(floats)) = object.get("embeddings").and_then(|by| by.get("float"))
        else {
            return Err(bad_gateway(PROVIDER, "embeddings response has no `embeddings.float`"));
        };
        let vectors = floats
            .iter()
            .enumerate()
            .map(|(position, values)| {
                embed::float_vector(values).ok_or_else(|| {
                    bad_gateway(PROVIDER, format!("embeddings.float[{position}] is no vector"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let input_tokens = object
            .get("meta")
            .and_then(|meta| meta.get("billed_units"))
            .and_then(|units| units.get("input_tokens"))
            .and_then(Value::as_u64);
        embed::checked(PROVIDER, request, vectors, input_tokens)
    }
}

fn translate_request(
    body: &Map<String, Value>,
    stream: bool,
    target: &Target,
) -> Result<Map<String, Value>, ParamError> {
    translate::check_fields(PROVIDER, body, &FIELDS_EXTRA)?;
    // `parallel_tool_calls` has no Cohere field: `false` is kept to by the answer's
    // translation (see `assemble::first_tool_call_only`).
    let mut out = Map::new();
    out.insert("model".to_owned(), Value::from(target.upstream_model));
    out.insert("messages".to_owned(), Value::Array(messages(body)?));
    out.insert("stream".to_owned(), Value::Bool(stream));
    tools(body, &mut out)?;
    translate::max_tokens(body)?;
    out.insert("max_tokens".to_owned(), Value::from(target.max_tokens));
    translate::copy_number(body, "temperature", &mut out, "temperature")?;
    translate::copy_number(body, "top_p", &mut out, "p")?;
    translate::copy_number(body, "seed", &mut out, "seed")?;
    for field in FIELDS_EXTRA {
        translate::copy_number(body, field, &mut out, field)?;
    }
    if let Some(stops) = translate::stop_sequences(body)? {
        out.insert("stop_sequences".to_owned(), Value::Array(stops));
    }
    match translate::response_format(body)? {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => {
            out.insert("response_format".to_owned(), json!({"type": "json_object"}));
        }
        Some(ResponseFormat::JsonSchema { schema, .. }) => {
            let format = json!({"type": "json_object", "json_schema": schema});
            out.insert("response_format".to_owned(), format);
        }
    }
    if let Some(effort) = translate::reasoning_effort(body)? {
        let budget = translate::thinking_budget(effort);
        out.insert("thinking".to_owned(), json!({"type": "enabled", "token_budget": budget}));
    }
    // `user` (an end-user id for abuse tracking) has no Cohere field and does not
    // change the answer, so it is the one translated field left out.
    Ok(out)
}

/// Cohere takes OpenAI's function tools as they are. It has no named tool choice, so
/// naming a tool sends only that tool and requires a call.
fn tools(body: &Map<String, Value>, out: &mut Map<String, Value>) -> Result<(), ParamError> {
    let mut tools: Vec<Value> = translate::tools(body)?
        .into_iter()
        .map(|tool| {
            let mut function = Map::new();
            function.insert("name".to_owned(), Value::from(tool.name));
            if let Some(description) = tool.description {
                function.insert("description".to_owned(), Value::from(description));
            }
            function.insert("parameters".to_owned(), tool.parameters);
            json!({"type": "function", "function": function})
        })
        .collect();
    let choice = match translate::tool_choice(body)? {
        None | Some(ToolChoice::Auto) => None,
        Some(ToolChoice::None) => Some("NONE"),
        Some(ToolChoice::Required) => Some("REQUIRED"),
        Some(ToolChoice::Function(name)) => {
            tools.retain(|tool| tool["function"]["name"] == name);
            if tools.is_empty() {
                return Err(param_error(
                    "tool_choice",
                    format!("names no tool of `tools`: {name}"),
                ));
            }
            Some("REQUIRED")
        }
    };
    if !tools.is_empty() {
        out.insert("tools".to_owned(), Value::Array(tools));
    }
    if let Some(choice) = choice {
        out.insert("tool_choice".to_owned(), Value::from(choice));
    }
    Ok(())
}

fn messages(body: &Map<String, Value>) -> Result<Vec<Value>, ParamError> {
    let mut out = Vec::new();
    for (message_idx, (role, message)) in translate::messages(body)?.into_iter().enumerate() {
        let param = format!("messages[{message_idx}]");
        let content_param = format!("{param}.content");
        let translated = match role {
            "system" | "developer" => {
                let text = translate::text_only(&message["content"], &content_param)?;
                json!({"role": "system", "content": text})
            }
            "user" => {
                json!({"role": "user", "content": user_content(&message["content"], &content_param)?})
            }
            "assistant" => match assistant(message, &param)? {
                Some(assistant) => assistant,
                // An assistant turn with neither text nor calls says nothing, and Cohere
                // rejects empty messages.
                None => continue,
            },
            "tool" => {
                let id = message["tool_call_id"]
                    .as_str()
                    .ok_or_else(|| param_error(format!("{param}.tool_call_id"), "is required"))?;
                let text = translate::text_only(&message["content"], &content_param)?;
                json!({"role": "tool", "tool_call_id": id, "content": text})
            }
            other => {
                return Err(param_error(format!("{param}.role"), format!("unknown role `{other}`")))
            }
        };
        out.push(translated);
    }
    Ok(out)
}

/// A user message's content: a plain string stays a string; parts become Cohere's
/// `text` and `image_url` parts (the same shape as OpenAI's; Cohere's vision models
/// take both `https:` and `data:` URLs).
fn user_content(content: &Value, param: &str) -> Result<Value, ParamError> {
    if let Value::String(text) = content {
        return Ok(Value::from(text.as_str()));
    }
    let parts = translate::content_parts(content, param)?
        .into_iter()
        .map(|part| match part {
            Part::Text(text) => json!({"type": "text", "text": text}),
            Part::ImageUrl(url) => json!({"type": "image_url", "image_url": {"url": url}}),
            Part::ImageData { media_type, data } => json!({
                "type": "image_url",
                "image_url": {"url": format!("data:{media_type};base64,{data}")},
            }),
        })
        .collect();
    Ok(Value::Array(parts))
}

fn assistant(message: &Value, param: &str) -> Result<Option<Value>, ParamError> {
    let text = translate::text_only(&message["content"], &format!("{param}.content"))?;
    // Validates the calls; the arguments then go on as the client wrote them.
    let calls = translate::tool_calls(message, param)?;
    let mut out = Map::new();
    out.insert("role".to_owned(), Value::from("assistant"));
    if !text.is_empty() {
        out.insert("content".to_owned(), Value::from(text));
    }
    if !calls.is_empty() {
        let wire_calls = message["tool_calls"].as_array().into_iter().flatten();
        let calls: Vec<Value> = calls
            .iter()
            .zip(wire_calls)
            .map(|(call, wire)| {
                let arguments = wire["function"]["arguments"].as_str().unwrap_or_default();
                json!({
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": object_arguments(arguments)},
                })
            })
            .collect();
        out.insert("tool_calls".to_owned(), Value::Array(calls));
    }
    Ok((out.len() > 1).then_some(Value::Object(out)))
}

/// Tool-call arguments as a JSON object text: Cohere sends the string `"null"` (and
/// OpenAI clients send `""`) for a call without arguments, where OpenAI has `{}`.
fn object_arguments(arguments: &str) -> String {
    match arguments.trim() {
        "" | "null" => "{}".to_owned(),
        _ => arguments.to_owned(),
    }
}

/// The OpenAI finish reason for Cohere's. A failed generation (`ERROR`, `TIMEOUT`, and
/// reasons newer than this adapter) that produced nothing is an upstream error, so the
/// router may try another candidate; one that produced something ends with
/// OpenRouter's `error` finish reason, keeping what was generated.
fn finish_reason(reason: &str, produced: bool) -> Result<&'static str, UpstreamError> {
    match reason {
        "COMPLETE" | "STOP_SEQUENCE" => Ok("stop"),
        "MAX_TOKENS" => Ok("length"),
        "TOOL_CALL" => Ok("tool_calls"),
        _ if produced => Ok("error"),
        _ => Err(bad_gateway(PROVIDER, truncate(format!("generation failed: {reason}")))),
    }
}

/// Usage from `billed_units`. Cohere's `cached_tokens` count against `tokens`, not
/// against the billed units (which already leave the cache out), so they do not enter
/// `Usage`. Counts are documented as numbers, so whole-valued floats are accepted.
fn usage_of(usage: Option<&WireUsage>) -> Usage {
    let billed = usage.and_then(|usage| usage.billed_units.as_ref());
    let count = |count: fn(&BilledUnits) -> Option<Number>| {
        billed.and_then(count).and_then(|number| number.0).unwrap_or(0)
    };
    Usage {
        prompt_tokens: count(|billed| billed.input_tokens),
        completion_tokens: count(|billed| billed.output_tokens),
        ..Usage::default()
    }
}

lenient_object! {
    /// A complete answer: the members the translation reads.
    struct Answer<'de> {
        "message" => message: IfObject<AnswerMessage<'de>>,
        "finish_reason" => finish_reason: Str<'de>,
        "usage" => usage: WireUsage<'de>,
    }

    struct AnswerMessage<'de> {
        "content" => content: List<AnswerBlock<'de>>,
        "tool_plan" => tool_plan: Str<'de>,
        "tool_calls" => tool_calls: List<DeltaCall<'de>>,
        "citations" => citations: List<Citation<'de>>,
    }

    struct AnswerBlock<'de> {
        "type" => kind: Str<'de>,
        "text" => text: Str<'de>,
        "thinking" => thinking: Str<'de>,
    }

    struct WireUsage<'de> {
        "billed_units" => billed_units: BilledUnits<'de>,
    }

    struct BilledUnits<'de> {
        "input_tokens" => input_tokens: Number,
        "output_tokens" => output_tokens: Number,
    }

    /// One stream event: the members the translation reads of every event type.
    struct StreamEvent<'de> {
        "type" => kind: Str<'de>,
        /// The content block or tool call of `content-*` and `tool-call-*`.
        "index" => index: Count,
        "delta" => delta: EventDelta<'de>,
    }

    struct EventDelta<'de> {
        "message" => message: DeltaMessage<'de>,
        /// `message-end`'s.
        "usage" => usage: WireUsage<'de>,
        "finish_reason" => finish_reason: Str<'de>,
    }

    struct DeltaMessage<'de> {
        "content" => content: DeltaContent<'de>,
        "tool_plan" => tool_plan: Str<'de>,
        /// One call (an object), not a list.
        "tool_calls" => tool_calls: DeltaCall<'de>,
        /// One citation (an object), not a list.
        "citations" => citations: Citation<'de>,
    }

    struct DeltaContent<'de> {
        "text" => text: Str<'de>,
        "thinking" => thinking: Str<'de>,
    }

    struct DeltaCall<'de> {
        "id" => id: Value,
        "function" => function: DeltaFunction<'de>,
    }

    struct DeltaFunction<'de> {
        "name" => name: Value,
        "arguments" => arguments: Str<'de>,
    }

    /// A citation: the sources it names.
    struct Citation<'de> {
        "sources" => sources: List<Source<'de>>,
    }

    struct Source<'de> {
        "document" => document: Document<'de>,
        "id" => id: Str<'de>,
    }

    struct Document<'de> {
        "url" => url: Str<'de>,
    }
}

struct CohereStream {
    parser: SseParser,
    events: Vec<SseEvent>,
    usage: Usage,
    /// For each Cohere tool-call index, the call's translation state.
    calls: Vec<Option<CallState>>,
    n_tool_calls: u64,
    citations: Citations,
    /// Whether any text, reasoning or tool call went out.
    produced: bool,
    done: bool,
}

/// A streamed tool call's arguments are held back while they could still become
/// `null`, so an argument-less call reaches the client as `{}` rather than `null`.
struct CallState {
    openai_idx: u64,
    held: String,
    released: bool,
}

impl CallState {
    /// The part of `fragment` that can go out now.
    fn release(&mut self, fragment: &str) -> Option<String> {
        if self.released {
            return (!fragment.is_empty()).then(|| fragment.to_owned());
        }
        self.held.push_str(fragment);
        if "null".starts_with(self.held.as_str()) {
            return None;
        }
        self.released = true;
        Some(std::mem::take(&mut self.held))
    }

    /// What is still held when the call ends.
    fn end(&mut self) -> Option<String> {
        if self.released {
            return None;
        }
        self.released = true;
        Some(object_arguments(&std::mem::take(&mut self.held)))
    }
}

impl CohereStream {
    fn handle(&mut self, event: &SseEvent, out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        if self.done || event.data == "[DONE]" {
            return Ok(());
        }
        let data: StreamEvent = event::read(&event.data)
            .map_err(|error| bad_gateway(PROVIDER, format!("invalid stream event: {error}")))?;
        let index = event::count(&data.index);
        let mut delta = data.delta.unwrap_or_default();
        let message = delta.message.take().unwrap_or_default();
        let delta = match event::text(&data.kind) {
            Some("message-start") => {
                out.push(assemble::delta_chunk(assemble::role_delta(), Value::Null));
                return Ok(());
            }
            Some("content-start" | "content-delta") => {
                let content = message.content.unwrap_or_default();
                match (event::text(&content.text), event::text(&content.thinking)) {
                    (Some(text), _) if !text.is_empty() => {
                        assemble::content_delta(Value::from(text))
                    }
                    (_, Some(thinking)) if !thinking.is_empty() => {
                        assemble::reasoning_delta(Value::from(thinking))
                    }
                    _ => return Ok(()),
                }
            }
            Some("tool-plan-delta") => match event::text(&message.tool_plan) {
                Some(plan) if !plan.is_empty() => assemble::reasoning_delta(Value::from(plan)),
                _ => return Ok(()),
            },
            Some("tool-call-start") => self.call_start(index, message.tool_calls)?,
            Some("tool-call-delta") => {
                let call = message.tool_calls.and_then(|call| call.function);
                let fragment = call.as_ref().and_then(|function| event::text(&function.arguments));
                match self.call_arguments(index, |call| call.release(fragment.unwrap_or_default()))
                {
                    Some(delta) => delta,
                    None => return Ok(()),
                }
            }
            Some("tool-call-end") => match self.call_arguments(index, CallState::end) {
                Some(delta) => delta,
                None => return Ok(()),
            },
            Some("message-end") => return self.message_end(delta, out),
            // Each `citation-start` carries one citation; the cumulative list goes out
            // when a source is new. `citation-end` only closes the event.
            Some("citation-start") => {
                let citation = message.citations.unwrap_or_default();
                if read_citations(&mut self.citations, &citation) {
                    let mut chunk = assemble::delta_chunk(Message::default(), Value::Null);
                    chunk.extra = self.citations.extra();
                    out.push(chunk);
                }
                return Ok(());
            }
            // citation-end and event types newer than this adapter.
            _ => return Ok(()),
        };
        self.produced = true;
        out.push(assemble::delta_chunk(delta, Value::Null));
        Ok(())
    }

    fn call_start(
        &mut self,
        index: Option<u64>,
        call: Option<DeltaCall>,
    ) -> Result<Message, UpstreamError> {
        let cohere_idx = index.unwrap_or(0) as usize;
        if cohere_idx >= TOOL_CALLS_MAX {
            return Err(bad_gateway(PROVIDER, "too many tool calls"));
        }
        if self.calls.len() <= cohere_idx {
            self.calls.resize_with(cohere_idx + 1, || None);
        }
        let call = call.unwrap_or_default();
        let function = call.function.unwrap_or_default();
        let mut state =
            CallState { openai_idx: self.n_tool_calls, held: String::new(), released: false };
        self.n_tool_calls += 1;
        let first = state.release(event::text(&function.arguments).unwrap_or_default());
        let start = (event::value(call.id), event::value(function.name));
        let arguments = Value::from(first.unwrap_or_default());
        let call = assemble::tool_call(Some(state.openai_idx), Some(start), arguments);
        self.calls[cohere_idx] = Some(state);
        Ok(assemble::tool_calls_delta(vec![call]))
    }

    /// An arguments delta for the call at the event's index, if `take` releases text.
    fn call_arguments(
        &mut self,
        index: Option<u64>,
        take: impl FnOnce(&mut CallState) -> Option<String>,
    ) -> Option<Message> {
        let state = self.calls.get_mut(index? as usize)?.as_mut()?;
        let arguments = take(state)?;
        let call = assemble::tool_call(Some(state.openai_idx), None, Value::from(arguments));
        Some(assemble::tool_calls_delta(vec![call]))
    }

    fn message_end(
        &mut self,
        delta: EventDelta,
        out: &mut Vec<Chunk>,
    ) -> Result<(), UpstreamError> {
        self.done = true;
        self.usage = usage_of(delta.usage.as_ref());
        let reason = event::text(&delta.finish_reason).unwrap_or_default();
        let finish = finish_reason(reason, self.produced)?;
        out.push(assemble::delta_chunk(Message::default(), Value::from(finish)));
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

/// The sources Cohere's citations name, as the top-level `citations` array of the
/// Perplexity/OpenRouter convention, in order of first appearance, each once: a
/// document's `url` where it has one, else the source's `id` (`doc:0`, or the tool call
/// id and output index of a tool result, `get_weather_9gpb31r7h7mj:0`).
fn read_citations(citations: &mut Citations, citation: &Citation) -> bool {
    let mut new = false;
    for source in event::items(&citation.sources) {
        let url = source.document.as_ref().and_then(|document| event::text(&document.url));
        if let Some(name) = url.or_else(|| event::text(&source.id)) {
            new |= citations.insert(name);
        }
    }
    new
}

impl StreamTranslator for CohereStream {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        self.parser
            .feed(bytes, &mut self.events)
            .map_err(|error| bad_gateway(PROVIDER, error.to_string()))?;
        self.drain(out)
    }

    fn finish(&mut self, out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        self.parser
            .finish(&mut self.events)
            .map_err(|error| bad_gateway(PROVIDER, error.to_string()))?;
        self.drain(out)?;
        if self.done {
            Ok(())
        } else {
            Err(bad_gateway(PROVIDER, "stream ended before message-end"))
        }
    }

    fn usage(&self) -> Usage {
        self.usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ChatBody;

    #[test]
    fn parallel_tool_calls_false_keeps_the_first_call() {
        let reply = json!({"id": "c1", "finish_reason": "TOOL_CALL",
            "message": {"role": "assistant", "tool_plan": "Two lookups.", "tool_calls": [
                {"id": "w_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "w_2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}]},
            "usage": {"billed_units": {"input_tokens": 20, "output_tokens": 30},
                "tokens": {"input_tokens": 900, "output_tokens": 30}}})
        .to_string();
        for (parallel, ids) in
            [(Value::Null, vec!["w_1", "w_2"]), (Value::Bool(false), vec!["w_1"])]
        {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
            body["parallel_tool_calls"] = parallel.clone();
            let Value::Object(body) = body else { unreachable!() };
            let chat = ChatRequest {
                body: ChatBody::from_tree(body),
                stream: false,
                max_tokens: None,
                native: None,
            };
            let target = Target {
                upstream_model: "command-r-plus",
                max_tokens: 100,
                controls: Default::default(),
            };
            let sent = translate_request(chat.body.tree(), false, &target).unwrap();
            assert!(!sent.contains_key("parallel_tool_calls"), "{parallel}: nothing forwarded");
            let completion = Cohere.response(&chat, reply.as_bytes()).unwrap();
            let calls = completion.choices[0].message().unwrap().tool_calls().collect::<Vec<_>>();
            let got: Vec<&str> =
                calls.iter().filter_map(|call| call.id.as_ref()?.as_str()).collect();
            assert_eq!(got, ids, "{parallel}");
            assert_eq!(completion.choices[0].finish_reason(), Some("tool_calls"));
        }
    }

    #[test]
    fn held_arguments_become_an_object() {
        let check = |fragments: &[&str], expected: &str| {
            let mut state = CallState { openai_idx: 0, held: String::new(), released: false };
            let mut sent: String =
                fragments.iter().filter_map(|fragment| state.release(fragment)).collect();
            sent.extend(state.end());
            assert_eq!(sent, expected, "{fragments:?}");
        };
        check(&[], "{}");
        check(&["", ""], "{}");
        check(&["nu", "ll"], "{}");
        check(&["{\"a\"", ":1}"], "{\"a\":1}");
        check(&["n", "{}"], "n{}");
        check(&["nul"], "nul");
    }

    #[test]
    fn usage_is_billed_units() {
        let usage_of = |text: &str| usage_of(Some(&event::read::<WireUsage>(text).unwrap()));
        let usage = usage_of(
            r#"{"billed_units": {"input_tokens": 12, "output_tokens": 7.0},
                "tokens": {"input_tokens": 507, "output_tokens": 10}, "cached_tokens": 448}"#,
        );
        assert_eq!(usage, Usage { prompt_tokens: 12, completion_tokens: 7, ..Usage::default() });
        assert_eq!(usage_of(r#"{"billed_units": {"input_tokens": -3}}"#), Usage::default());
    }

    #[test]
    fn finish_reasons_map_to_openai() {
        assert_eq!(finish_reason("COMPLETE", true), Ok("stop"));
        assert_eq!(finish_reason("STOP_SEQUENCE", true), Ok("stop"));
        assert_eq!(finish_reason("MAX_TOKENS", true), Ok("length"));
        assert_eq!(finish_reason("TOOL_CALL", true), Ok("tool_calls"));
        assert_eq!(finish_reason("ERROR", true), Ok("error"));
        assert_eq!(finish_reason("TIMEOUT", false).unwrap_err().status, StatusCode::BAD_GATEWAY);
    }
}
