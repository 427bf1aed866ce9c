//! The Cohere Chat v2 adapter against recorded Cohere traffic: requests built from
//! OpenAI-format conversations must equal what pydantic-ai sent to Cohere, and recorded
//! responses and event streams, served over real HTTP or cut into arbitrary pieces,
//! must translate to exact text, tool calls, usage (billed units) and cost.

use crate::providers_support::*;
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use solrouter_gateway::catalog::Catalog;
use solrouter_gateway::providers::cohere::Cohere;
use solrouter_gateway::providers::{
    Adapter, ChatBody, ChatRequest, Chunk, Endpoint, UpstreamError, Usage,
};
use solrouter_ledger::PicoUsd;
use std::time::Duration;

fn endpoint() -> Endpoint {
    Endpoint { base_url: "https://api.cohere.com".to_owned(), api_key: Some("co-key".to_owned()) }
}

fn translated(body: Value) -> Value {
    let request = translate(&Cohere, &endpoint(), &chat(body), "command-r7b-12-2024").unwrap();
    assert_eq!(request.url, "https://api.cohere.com/v2/chat");
    assert_eq!(request.headers["authorization"], "Bearer co-key");
    serde_json::from_slice(&request.body).unwrap()
}

/// A recorded request as the gateway sends it: with the completion limit it always
/// forwards (the recorded clients set none).
fn recorded(path: &str) -> Value {
    let mut request = fixture_json(path);
    request.as_object_mut().unwrap().entry("max_tokens").or_insert(json!(MAX_TOKENS_UNSET));
    request
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {"additionalProperties": false, "properties": {"city": {"type": "string"}},
                       "required": ["city"], "type": "object"}}})
}

fn short_tool(name: &str, description: &str, parameter: &str) -> Value {
    json!({"type": "function", "function": {"name": name, "description": description,
        "parameters": {"properties": {parameter: {"type": "string"}}, "required": [parameter], "type": "object"}}})
}

#[test]
fn text_requests_match_the_recordings() {
    let body = json!({"model": "cohere/command-r-plus", "messages": [user("hello")]});
    assert_eq!(translated(body), recorded("cohere/pydai-text.request.json"));
    let body = json!({"model": "m", "messages": [
        {"role": "developer", "content": "You are a helpful assistant."},
        user("What is the capital of France?")]});
    assert_eq!(translated(body), recorded("cohere/pydai-text-system.request.json"));
}

#[test]
fn tool_round_trip_matches_the_recordings() {
    let question = user("What's the weather in Paris?");
    let body = json!({"model": "m", "tools": [weather_tool()], "tool_choice": "auto",
        "messages": [question]});
    assert_eq!(translated(body), recorded("cohere/pydai-tool-choice-auto.1.request.json"));

    let body = json!({"model": "m", "tools": [weather_tool()], "messages": [question,
        {"role": "assistant", "content": null, "tool_calls": [{"id": "get_weather_9gpb31r7h7mj",
            "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "get_weather_9gpb31r7h7mj", "content": "Sunny, 22C in Paris"}]});
    assert_eq!(translated(body), recorded("cohere/pydai-tool-choice-auto.2.request.json"));
}

#[test]
fn tool_choice_modes() {
    let check = |tool_choice: Value, tools: Value, fixture_path: &str| {
        let body = json!({"model": "m", "tools": tools, "tool_choice": tool_choice,
            "messages": [user("What's the weather in Paris?")]});
        assert_eq!(translated(body), recorded(fixture_path), "{fixture_path}");
    };
    let weather = short_tool("get_weather", "Get weather for a city", "city");
    let time = short_tool("get_time", "Get time in a timezone", "timezone");
    check(json!("none"), json!([weather_tool()]), "cohere/pydai-tool-choice-none.request.json");
    check(json!("required"), json!([weather]), "cohere/pydai-tool-choice-required.request.json");
    // Cohere cannot name a tool: only the named one is offered, and a call required.
    check(
        json!({"type": "function", "function": {"name": "get_weather"}}),
        json!([weather, time]),
        "cohere/pydai-tool-choice-list-single.request.json",
    );
}

#[test]
fn options_images_and_argument_less_calls() {
    let body = json!({"model": "m", "max_tokens": 300, "temperature": 0.3, "top_p": 0.8,
        "seed": 11, "stop": "END", "frequency_penalty": 0.1, "presence_penalty": 0.2,
        "reasoning_effort": "low", "user": "u-1",
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "now_1", "type": "function",
                "function": {"name": "now", "arguments": ""}}]},
            {"role": "tool", "tool_call_id": "now_1", "content": [{"type": "text", "text": "noon"}]},
            {"role": "assistant", "content": ""}]});
    let expected = json!({"model": "command-r7b-12-2024", "stream": false, "max_tokens": 300,
        "temperature": 0.3, "p": 0.8, "seed": 11, "stop_sequences": ["END"],
        "frequency_penalty": 0.1, "presence_penalty": 0.2,
        "thinking": {"type": "enabled", "token_budget": 1024},
        "response_format": {"type": "json_object", "json_schema": {"type": "object"}},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
            {"role": "assistant", "tool_calls": [{"id": "now_1", "type": "function",
                "function": {"name": "now", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "now_1", "content": "noon"}]});
    assert_eq!(translated(body), expected);
}

#[test]
fn unsupported_parameters_are_named() {
    let check = |extra: Value, param: &str| {
        let mut body = json!({"model": "m", "messages": [user("x")]});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let error = translate(&Cohere, &endpoint(), &chat(body), "command-r-plus").unwrap_err();
        assert_eq!(error.param, param);
    };
    check(json!({"logprobs": true}), "logprobs");
    check(json!({"n": 3}), "n");
    check(
        json!({"tools": [weather_tool()], "tool_choice": {"type": "function", "function": {"name": "f"}}}),
        "tool_choice",
    );
    check(json!({"messages": [{"role": "tool", "content": "x"}]}), "messages[0].tool_call_id");
}

fn cost(usage: &Usage) -> PicoUsd {
    Catalog::builtin().get("cohere/command-r-plus").unwrap().price.cost(usage)
}

fn usd(text: &str) -> PicoUsd {
    PicoUsd::parse_usd(text).unwrap()
}

/// Serves `body` with `status` on 127.0.0.1 and runs one exchange.
async fn replayed(
    status: u16,
    headers: &[(&'static str, &'static str)],
    body: Vec<u8>,
    stream: bool,
) -> Outcome {
    let content_type = if stream { "text/event-stream" } else { "application/json" };
    let replay = Replay::start(status, content_type, headers, body).await;
    let endpoint =
        Endpoint { base_url: replay.base_url.clone(), api_key: Some("test-key".to_owned()) };
    let request =
        chat(json!({"model": "cohere/command-r-plus", "stream": stream, "messages": [user("x")]}));
    let outcome = exchange(&Cohere, &endpoint, &request, "command-r-plus-08-2024").await;
    let received = replay.received();
    assert_eq!(received.path_and_query, "/v1/v2/chat");
    assert_eq!(received.headers["authorization"], "Bearer test-key");
    assert_eq!(
        (&received.body["model"], &received.body["stream"]),
        (&json!("command-r-plus-08-2024"), &json!(stream))
    );
    outcome
}

async fn completion_of(body: Vec<u8>) -> (Assembled, Usage) {
    match replayed(200, &[], body, false).await {
        Outcome::Complete(completion) => (assemble_completion(&completion), completion.usage),
        other => panic!("expected a completion, got {other:?}"),
    }
}

#[tokio::test]
async fn text_response_bills_billed_units() {
    let (assembled, usage) = completion_of(fixture("cohere/pydai-text.response.json")).await;
    assert_eq!(assembled.text, "Hello! How can I assist you today?");
    assert_eq!(assembled.finish_reason.as_deref(), Some("stop"));
    // Cohere saw 496 input tokens, its hidden preamble included; it bills 1.
    assert_eq!(usage, Usage { prompt_tokens: 1, completion_tokens: 9, ..Usage::default() });
    // 1 × $2.50/M + 9 × $10/M.
    assert_eq!(cost(&usage), usd("0.0000925"));

    let (assembled, usage) = completion_of(fixture("cohere/vercel-cohere-max-tokens.json")).await;
    assert_eq!(
        (assembled.text.as_str(), assembled.finish_reason.as_deref()),
        ("**The History of", Some("length"))
    );
    assert_eq!(usage, Usage { prompt_tokens: 11, completion_tokens: 4, ..Usage::default() });

    let (assembled, usage) =
        completion_of(fixture("cohere/pydai-tool-choice-auto.2.response.json")).await;
    assert_eq!(assembled.text, "The weather in Paris is currently sunny and 22C.");
    assert_eq!(usage, Usage { prompt_tokens: 51, completion_tokens: 13, ..Usage::default() });
}

#[tokio::test]
async fn tool_call_response() {
    let body = fixture("cohere/pydai-tool-choice-auto.1.response.json");
    let (assembled, usage) = completion_of(body.clone()).await;
    let call = (
        "get_weather_9gpb31r7h7mj".to_owned(),
        "get_weather".to_owned(),
        r#"{"city":"Paris"}"#.to_owned(),
    );
    assert_eq!(assembled.tool_calls, vec![call]);
    assert_eq!(assembled.text, "");
    assert_eq!(
        assembled.reasoning,
        "I will use the 'get_weather' tool to find the weather in Paris."
    );
    assert_eq!(assembled.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(usage, Usage { prompt_tokens: 41, completion_tokens: 25, ..Usage::default() });
    // 41 × $2.50/M + 25 × $10/M.
    assert_eq!(cost(&usage), usd("0.0003525"));

    // Cohere's argument-less calls carry the string "null".
    let null_arguments =
        String::from_utf8(body).unwrap().replace(r#""{\"city\":\"Paris\"}""#, r#""null""#);
    let (assembled, _) = completion_of(null_arguments.into_bytes()).await;
    assert_eq!(assembled.tool_calls[0].2, "{}");
}

#[tokio::test]
async fn thinking_blocks_become_reasoning() {
    let (assembled, usage) = completion_of(fixture("cohere/pydai-thinking.response.json")).await;
    assert!(assembled.reasoning.starts_with("Okay, the user is asking how to cross a river"));
    assert!(assembled.text.ends_with("Your safety is paramount. 🌊⚠️"));
    assert_eq!(usage, Usage { prompt_tokens: 431, completion_tokens: 661, ..Usage::default() });
}

async fn failure(
    status: u16,
    headers: &[(&'static str, &'static str)],
    body: &str,
) -> UpstreamError {
    match replayed(status, headers, body.as_bytes().to_vec(), false).await {
        Outcome::Failed(error) => error,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// No Cohere error was recorded; the bodies have the documented shape
/// (`{"id", "message"}`) with messages from Cohere's error reference.
#[tokio::test]
async fn error_statuses() {
    let error = failure(401, &[], r#"{"id": "e1", "message": "invalid api token"}"#).await;
    assert_eq!((error.status.as_u16(), error.fallback), (401, false));
    assert_eq!(error.message, "401 invalid api token");
    let limited = r#"{"id": "e2", "message": "You are past the per minute request limit, please wait and try again later."}"#;
    let error = failure(429, &[("retry-after", "5")], limited).await;
    assert_eq!((error.status.as_u16(), error.fallback), (429, true));
    assert_eq!(error.retry_after, Some(Duration::from_secs(5)));
    let error =
        failure(402, &[], r#"{"id": "e3", "message": "Please add a payment method"}"#).await;
    assert_eq!((error.status.as_u16(), error.fallback), (503, true));
    let error = failure(500, &[], r#"{"id": "e4", "message": "internal server error"}"#).await;
    assert_eq!((error.status.as_u16(), error.fallback), (502, true));
    let error = failure(200, &[], r#"{"id": "e5", "finish_reason": "ERROR", "message": {"role": "assistant", "content": []}}"#).await;
    assert_eq!((error.status.as_u16(), error.message.as_str()), (502, "generation failed: ERROR"));
}

async fn streamed(body: Vec<u8>) -> (Assembled, Usage, Vec<Chunk>) {
    match replayed(200, &[], body, true).await {
        Outcome::Streamed { chunks, usage } => (assemble_stream(&chunks), usage, chunks),
        other => panic!("expected a stream, got {other:?}"),
    }
}

#[tokio::test]
async fn text_stream() {
    let (assembled, usage, chunks) =
        streamed(chunks_as_sse("cohere/vercel-cohere-text.chunks.txt")).await;
    assert_eq!(assembled.text, "The capital of France is Paris.");
    assert_eq!(assembled.finish_reason.as_deref(), Some("stop"));
    assert_eq!(usage, Usage { prompt_tokens: 12, completion_tokens: 7, ..Usage::default() });
    assert_eq!(json!(chunks[0].choices[0])["delta"], json!({"role": "assistant", "content": ""}));
    // 12 × $2.50/M + 7 × $10/M.
    assert_eq!(cost(&usage), usd("0.0001"));
}

#[tokio::test]
async fn reasoning_stream() {
    let (assembled, usage, _) =
        streamed(chunks_as_sse("cohere/vercel-cohere-reasoning.chunks.txt")).await;
    assert!(assembled.reasoning.starts_with("The user is asking for the sum of 2 and 2."));
    assert!(assembled.reasoning.ends_with("I can calculate the answer directly."));
    assert_eq!(assembled.text, "The answer to 2 + 2 is 4.");
    assert_eq!(usage, Usage { prompt_tokens: 8, completion_tokens: 50, ..Usage::default() });
}

#[tokio::test]
async fn argument_less_tool_call_stream() {
    let sse = chunks_as_sse("cohere/vercel-cohere-empty-tool-call.chunks.txt");
    let (assembled, usage, _) = streamed(sse).await;
    let call = ("currentTime_y46ar19t5gvw".to_owned(), "currentTime".to_owned(), "{}".to_owned());
    assert_eq!(assembled.tool_calls, vec![call]);
    assert_eq!(assembled.reasoning, "I will use the currentTime tool to find the current time.");
    assert_eq!(assembled.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(usage, Usage { prompt_tokens: 46, completion_tokens: 14, ..Usage::default() });
}

/// The recorded argument-less stream with argument deltas spliced in: once as the
/// string `null`, once as a real object in fragments.
fn with_argument_deltas(fragments: &[&str]) -> Vec<u8> {
    let text =
        String::from_utf8(fixture("cohere/vercel-cohere-empty-tool-call.chunks.txt")).unwrap();
    let deltas: String = fragments
        .iter()
        .map(|fragment| {
            let event = json!({"type": "tool-call-delta", "index": 0,
                "delta": {"message": {"tool_calls": {"function": {"arguments": fragment}}}}});
            format!("{event}\n")
        })
        .collect();
    let spliced = text
        .replace("{\"type\":\"tool-call-end\"", &format!("{deltas}{{\"type\":\"tool-call-end\""));
    assert_ne!(spliced, text);
    let mut body = Vec::new();
    for line in spliced.lines().filter(|line| !line.trim().is_empty()) {
        body.extend_from_slice(format!("data: {line}\n\n").as_bytes());
    }
    body
}

#[test]
fn streamed_arguments_are_passed_on_and_null_becomes_an_object() {
    let check = |fragments: &[&str], expected: &str| {
        let (chunks, result, _) = translate_in_pieces(&with_argument_deltas(fragments), &[]);
        result.unwrap();
        assert_eq!(assemble_stream(&chunks).tool_calls[0].2, expected, "{fragments:?}");
    };
    check(&["nu", "ll"], "{}");
    check(&["{\"zone\"", ": \"UTC\"}"], "{\"zone\": \"UTC\"}");
}

/// Feeds `body` to a fresh translator in pieces ending at `cuts` (sorted offsets), as
/// the network might deliver it.
fn translate_in_pieces(
    body: &[u8],
    cuts: &[usize],
) -> (Vec<Chunk>, Result<(), UpstreamError>, Usage) {
    let mut translator = Cohere.stream(&ChatRequest {
        body: ChatBody::from_tree(Map::new()),
        stream: true,
        max_tokens: None,
        native: None,
    });
    let mut chunks = Vec::new();
    let mut start = 0;
    let result = cuts
        .iter()
        .copied()
        .chain([body.len()])
        .try_for_each(|end| {
            let piece = &body[start..end];
            start = end;
            translator.feed(piece, &mut chunks)
        })
        .and_then(|()| translator.finish(&mut chunks));
    (chunks, result, translator.usage())
}

/// Cohere names each event twice, in `event:` and in the payload's `type`; the
/// translation must not depend on the `event:` lines the fixtures leave out.
#[test]
fn event_lines_change_nothing() {
    let text = String::from_utf8(fixture("cohere/vercel-cohere-text.chunks.txt")).unwrap();
    let mut body = Vec::new();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let kind =
            serde_json::from_str::<Value>(line).unwrap()["type"].as_str().unwrap().to_owned();
        body.extend_from_slice(format!("event: {kind}\r\ndata: {line}\r\n\r\n").as_bytes());
    }
    let plain = chunks_as_sse("cohere/vercel-cohere-text.chunks.txt");
    assert_eq!(translate_in_pieces(&body, &[]), translate_in_pieces(&plain, &[]));
}

#[test]
fn truncated_stream_is_an_error() {
    let sse = chunks_as_sse("cohere/vercel-cohere-text.chunks.txt");
    let last_event = sse.windows(6).rposition(|window| window == b"data: ").unwrap();
    let (chunks, result, _) = translate_in_pieces(&sse[..last_event], &[]);
    assert_eq!(assemble_stream(&chunks).text, "The capital of France is Paris.");
    let error = result.unwrap_err();
    assert_eq!(
        (error.status.as_u16(), error.message.as_str()),
        (502, "stream ended before message-end")
    );
}

/// The top-level `citations` of a recorded unary response.
async fn citations_of(fixture_path: &str) -> Value {
    match replayed(200, &[], fixture(fixture_path), false).await {
        Outcome::Complete(completion) => {
            completion.extra.get("citations").cloned().unwrap_or(Value::Null)
        }
        other => panic!("{fixture_path}: expected a completion, got {other:?}"),
    }
}

#[tokio::test]
async fn cited_sources_become_citations() {
    // Three citations of one document: its id, once.
    assert_eq!(citations_of("cohere/vercel-cohere-citations.json").await, json!(["doc:0"]));
    // Two citations of one tool result.
    assert_eq!(
        citations_of("cohere/pydai-tool-choice-auto.2.response.json").await,
        json!(["get_weather_9gpb31r7h7mj:0"])
    );
    assert_eq!(citations_of("cohere/pydai-text.response.json").await, Value::Null);
}

/// No Cohere stream with citations was recorded: this one is the recorded text stream
/// with the recorded citations of `vercel-cohere-citations.json`, a tool-result source
/// added, sent as the `citation-start`/`citation-end` events Cohere documents.
#[test]
fn streamed_citations_go_out_when_they_grow() {
    let recorded: Value =
        serde_json::from_slice(&fixture("cohere/vercel-cohere-citations.json")).unwrap();
    let mut citations = recorded["message"]["citations"].as_array().unwrap().clone();
    citations[2]["sources"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "tool", "id": "get_weather_9gpb31r7h7mj:0"}));
    let text = chunks_as_sse("cohere/vercel-cohere-text.chunks.txt");
    let message_end = text.windows(6).rposition(|window| window == b"data: ").unwrap();
    let mut body = text[..message_end].to_vec();
    for (citation_idx, citation) in citations.iter().enumerate() {
        let start = json!({"type": "citation-start", "index": citation_idx,
            "delta": {"message": {"citations": citation}}});
        let end = json!({"type": "citation-end", "index": citation_idx});
        body.extend_from_slice(format!("data: {start}\n\ndata: {end}\n\n").as_bytes());
    }
    body.extend_from_slice(&text[message_end..]);

    let whole = translate_in_pieces(&body, &[]);
    let (chunks, result, _) = &whole;
    assert!(result.is_ok());
    let sent: Vec<&Value> =
        chunks.iter().filter_map(|chunk| chunk.extra.get("citations")).collect();
    assert_eq!(sent, [&json!(["doc:0"]), &json!(["doc:0", "get_weather_9gpb31r7h7mj:0"])]);
    assert_eq!(assemble_stream(chunks).text, "The capital of France is Paris.");
    let cuts: Vec<usize> = (1..body.len()).collect();
    assert_eq!(translate_in_pieces(&body, &cuts), whole);
}

const STREAM_FIXTURES: [&str; 3] = [
    "cohere/vercel-cohere-text.chunks.txt",
    "cohere/vercel-cohere-reasoning.chunks.txt",
    "cohere/vercel-cohere-empty-tool-call.chunks.txt",
];

#[test]
fn byte_by_byte_streams_translate_the_same() {
    for path in STREAM_FIXTURES {
        let body = chunks_as_sse(path);
        let whole = translate_in_pieces(&body, &[]);
        assert!(whole.1.is_ok(), "{path}");
        let cuts: Vec<usize> = (1..body.len()).collect();
        assert_eq!(translate_in_pieces(&body, &cuts), whole, "{path}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn arbitrary_cuts_translate_the_same(
        fixture_idx in 0..STREAM_FIXTURES.len(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let body = chunks_as_sse(STREAM_FIXTURES[fixture_idx]);
        let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(body.len() + 1)).collect();
        cuts.sort_unstable();
        prop_assert_eq!(translate_in_pieces(&body, &cuts), translate_in_pieces(&body, &[]));
    }
}
