//! The Gemini adapter against recorded Gemini traffic: requests built from OpenAI-format
//! conversations must equal what Google's own SDK sent (up to the differences named in
//! `as_gateway_sends`), and recorded responses and streams, served over real HTTP or
//! cut into arbitrary pieces, must translate to exact text, tool calls, usage and cost.

use crate::providers_support::*;
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use solrouter_gateway::catalog::Catalog;
use solrouter_gateway::providers::google::Google;
use solrouter_gateway::providers::{
    Adapter, ChatBody, ChatRequest, Chunk, Endpoint, UpstreamError, Usage,
};
use solrouter_ledger::PicoUsd;
use std::time::Duration;

fn endpoint() -> Endpoint {
    Endpoint {
        base_url: "https://generativelanguage.googleapis.com".to_owned(),
        api_key: Some("gm-key".to_owned()),
    }
}

fn translated(body: Value, upstream_model: &str) -> Value {
    let chat = chat(body);
    let request = translate(&Google, &endpoint(), &chat, upstream_model).unwrap();
    let method = if chat.stream { "streamGenerateContent?alt=sse" } else { "generateContent" };
    let url = format!(
        "https://generativelanguage.googleapis.com/v1beta/models/{upstream_model}:{method}"
    );
    assert_eq!(request.url, url);
    assert_eq!(request.headers["x-goog-api-key"], "gm-key");
    assert!(request.headers["x-goog-api-key"].is_sensitive());
    serde_json::from_slice(&request.body).unwrap()
}

/// A recorded pydantic-ai request as the gateway sends it. The recordings differ in
/// three ways that do not change Gemini's answer: pydantic-ai asks for the default
/// `responseModalities: ["TEXT"]`, gives the system instruction a role Gemini ignores,
/// and its SDK spells `parametersJsonSchema` by the proto field name (Google's JSON
/// parser takes both spellings; the gateway uses the documented one).
fn as_gateway_sends(mut recorded: Value) -> Value {
    if let Some(config) = recorded["generationConfig"].as_object_mut() {
        config.remove("responseModalities");
    }
    // The gateway always forwards the completion limit it reserved for; the recorded
    // clients set none.
    let config = recorded.as_object_mut().unwrap().entry("generationConfig").or_insert(json!({}));
    config.as_object_mut().unwrap().entry("maxOutputTokens").or_insert(json!(MAX_TOKENS_UNSET));
    if let Some(system) = recorded.get_mut("systemInstruction").and_then(Value::as_object_mut) {
        system.remove("role");
    }
    let tools = recorded.get_mut("tools").and_then(Value::as_array_mut);
    for tool in tools.into_iter().flatten() {
        for declaration in tool["functionDeclarations"].as_array_mut().into_iter().flatten() {
            let declaration = declaration.as_object_mut().unwrap();
            if let Some(schema) = declaration.remove("parameters_json_schema") {
                declaration.insert("parametersJsonSchema".to_owned(), schema);
            }
        }
    }
    recorded
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {"additionalProperties": false, "properties": {"city": {"type": "string"}},
                       "required": ["city"], "type": "object"}}})
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

#[test]
fn system_prompt_becomes_the_system_instruction() {
    let body = json!({"model": "google/gemini-2.5-flash", "messages": [
        {"role": "system", "content": "You are a chatbot."}, user("Hello!")]});
    let expected = as_gateway_sends(fixture_json("google/pydai-text.request.json"));
    assert_eq!(translated(body, "gemini-2.5-flash"), expected);
}

#[test]
fn stream_requests_use_stream_generate_content() {
    let body = json!({"model": "m", "stream": true, "temperature": 0.0, "messages": [
        {"role": "system", "content": "You are a helpful chatbot."},
        user("What is the capital of France?")]});
    let expected = as_gateway_sends(fixture_json("google/pydai-stream-text.request.json"));
    assert_eq!(translated(body, "gemini-2.0-flash-exp"), expected);
}

/// The whole tool round trip: declaration, the model's call (with the id the gateway
/// gave it) and the result, paired with its call by that id.
#[test]
fn tool_round_trip_matches_the_recorded_request() {
    let body = json!({"model": "m", "tools": [weather_tool()], "tool_choice": "auto", "messages": [
        user("What's the weather in Paris?"),
        {"role": "assistant", "content": null, "tool_calls": [{"id": "pyd_ai_631cce761e7a447c931ccc129fe40f08",
            "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "pyd_ai_631cce761e7a447c931ccc129fe40f08", "content": "Sunny, 22C in Paris"},
    ]});
    let mut expected =
        as_gateway_sends(fixture_json("google/pydai-tool-choice-auto.2.request.json"));
    // OpenAI messages cannot carry Gemini's thought signature back, and the gateway
    // names a function's result `output`, the key Google documents.
    expected["contents"][1]["parts"][0].as_object_mut().unwrap().remove("thoughtSignature");
    let response = &mut expected["contents"][2]["parts"][0]["functionResponse"]["response"];
    *response = json!({"output": response["return_value"]});
    assert_eq!(translated(body, "gemini-2.5-flash"), expected);
}

#[test]
fn tool_choice_modes() {
    let check = |tool_choice: Value, tools: Value, fixture: &str| {
        let body = json!({"model": "m", "tools": tools, "tool_choice": tool_choice,
            "messages": [user("What's the weather in Paris?")]});
        let expected = as_gateway_sends(fixture_json(fixture));
        assert_eq!(translated(body, "gemini-2.5-flash"), expected, "{fixture}");
    };
    let short = |name: &str, description: &str, parameter: &str| {
        json!({"type": "function", "function": {"name": name, "description": description,
            "parameters": {"properties": {parameter: {"type": "string"}}, "required": [parameter], "type": "object"}}})
    };
    let weather = short("get_weather", "Get weather for a city", "city");
    let time = short("get_time", "Get time in a timezone", "timezone");
    check(json!("none"), json!([weather_tool()]), "google/pydai-tool-choice-none.request.json");
    check(json!("required"), json!([weather]), "google/pydai-tool-choice-required.request.json");
    check(
        json!({"type": "function", "function": {"name": "get_weather"}}),
        json!([weather, time]),
        "google/pydai-tool-choice-list-single.request.json",
    );
}

#[test]
fn json_schema_becomes_the_response_json_schema() {
    let schema = json!({"description": "A city and its country.", "properties": {
        "city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"], "title": "CityLocation", "type": "object"});
    let body = json!({"model": "m", "messages": [user("What is the largest city in Mexico?")],
        "response_format": {"type": "json_schema", "json_schema": {"name": "CityLocation", "schema": schema}}});
    let expected = as_gateway_sends(fixture_json("google/pydai-response-schema.request.json"));
    assert_eq!(translated(body.clone(), "gemini-2.0-flash"), expected);
    // The same model as Pydantic writes it (Instructor sends `model_json_schema()`): a
    // title on every property that only restates its name, which Gemini is not sent.
    let mut pydantic = body;
    let properties = &mut pydantic["response_format"]["json_schema"]["schema"]["properties"];
    properties["city"]["title"] = json!("City");
    properties["country"]["title"] = json!("Country");
    assert_eq!(translated(pydantic, "gemini-2.0-flash"), expected);

    let body =
        json!({"model": "m", "messages": [user("x")], "response_format": {"type": "json_object"}});
    let sent = translated(body, "gemini-2.5-flash");
    assert_eq!(
        sent["generationConfig"],
        json!({"responseMimeType": "application/json", "maxOutputTokens": MAX_TOKENS_UNSET})
    );
}

/// What Pydantic writes for nested models and literals, as Gemini takes it: a `$ref`
/// alone (Gemini refuses other keywords beside one), a one-schema `allOf` unwrapped,
/// `const` as `enum`, name-restating titles dropped and meaningful ones kept; tool
/// parameters alike.
#[test]
fn pydantic_schemas_become_what_gemini_takes() {
    let schema = json!({"title": "Trip", "type": "object", "$defs": {
            "Address": {"title": "Address", "type": "object", "properties": {
                "street_name": {"title": "Street Name", "type": "string"},
                "zip": {"title": "Postal code", "type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["street_name"]}},
        "properties": {
            "origin": {"$ref": "#/$defs/Address", "description": "Where from.", "default": null},
            "destination": {"allOf": [{"$ref": "#/$defs/Address"}], "description": "Where to."},
            "mode": {"const": "train", "title": "Mode", "type": "string"},
            "stops": {"title": "Stops", "type": "array", "items": {"$ref": "#/$defs/Address", "title": "Stop"}},
            "note": {"anyOf": [{"type": "string", "title": "Note"}, {"type": "null"}], "title": "Note"}},
        "required": ["origin", "destination", "mode"]});
    let expected = json!({"title": "Trip", "type": "object", "$defs": {
            "Address": {"type": "object", "properties": {
                "street_name": {"type": "string"},
                "zip": {"title": "Postal code", "type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["street_name"]}},
        "properties": {
            "origin": {"$ref": "#/$defs/Address"},
            "destination": {"$ref": "#/$defs/Address"},
            "mode": {"enum": ["train"], "type": "string"},
            "stops": {"type": "array", "items": {"$ref": "#/$defs/Address"}},
            "note": {"anyOf": [{"type": "string", "title": "Note"}, {"type": "null"}]}},
        "required": ["origin", "destination", "mode"]});
    let body = json!({"model": "m", "messages": [user("x")], "response_format":
        {"type": "json_schema", "json_schema": {"name": "Trip", "schema": schema.clone()}}});
    let sent = translated(body, "gemini-2.5-flash");
    assert_eq!(sent["generationConfig"]["responseJsonSchema"], expected);
    let body = json!({"model": "m", "messages": [user("x")], "tools": [{"type": "function",
        "function": {"name": "plan", "parameters": schema}}]});
    let sent = translated(body, "gemini-2.5-flash");
    assert_eq!(sent["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"], expected);
}

#[test]
fn data_url_images_are_inlined() {
    let recorded = fixture_json("google/pydai-image-input-inline-data.request.json");
    let inline = &recorded["contents"][0]["parts"][1]["inlineData"];
    let url = format!(
        "data:{};base64,{}",
        inline["mimeType"].as_str().unwrap(),
        inline["data"].as_str().unwrap()
    );
    let body = json!({"model": "m", "messages": [
        {"role": "system", "content": "You are a helpful chatbot."},
        {"role": "user", "content": [{"type": "text", "text": "What is this vegetable?"},
                                     {"type": "image_url", "image_url": {"url": url}}]}]});
    assert_eq!(translated(body, "gemini-2.0-flash"), as_gateway_sends(recorded));
}

/// Gemini fetches public image URLs itself but must be told their type, which the
/// adapter reads from the URL's extension; without one the client is told to inline.
#[test]
fn image_urls_become_file_data() {
    let image = |url: &str| {
        json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": url}}]}]})
    };
    let sent = translated(image("https://example.com/photos/potato.JPG?w=300"), "gemini-2.5-flash");
    let expected = json!({"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/photos/potato.JPG?w=300"}});
    assert_eq!(sent["contents"][0]["parts"][1], expected);
    let error =
        translate(&Google, &endpoint(), &chat(image("https://example.com/render?id=7")), "g")
            .unwrap_err();
    assert_eq!(error.param, "messages[0].content[1].image_url.url");
}

#[test]
fn options_become_the_generation_config() {
    let body = json!({"model": "m", "messages": [user("x")], "max_completion_tokens": 500,
        "temperature": 0.2, "top_p": 0.9, "stop": ["END"], "seed": 7, "reasoning_effort": "medium",
        "user": "u-1", "stream_options": {"include_usage": true}, "n": 1});
    let config = json!({"maxOutputTokens": 500, "temperature": 0.2, "topP": 0.9,
        "stopSequences": ["END"], "seed": 7,
        "thinkingConfig": {"thinkingBudget": 8192, "includeThoughts": true}});
    assert_eq!(translated(body, "gemini-2.5-pro")["generationConfig"], config);
}

#[test]
fn unsupported_parameters_are_named() {
    let check = |extra: Value, param: &str| {
        let mut body = json!({"model": "m", "messages": [user("x")]});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let error = translate(&Google, &endpoint(), &chat(body), "gemini-2.5-flash").unwrap_err();
        assert_eq!(error.param, param);
    };
    check(json!({"logprobs": true}), "logprobs");
    check(json!({"n": 2}), "n");
    check(json!({"frequency_penalty": 0.5}), "frequency_penalty");
    check(json!({"tool_choice": "sometimes"}), "tool_choice");
    let orphan =
        json!({"messages": [user("x"), {"role": "tool", "tool_call_id": "nope", "content": "1"}]});
    check(orphan, "messages[1].tool_call_id");
}

fn cost(model_id: &str, usage: &Usage) -> PicoUsd {
    Catalog::builtin().get(model_id).unwrap().price.cost(usage)
}

fn usd(text: &str) -> PicoUsd {
    PicoUsd::parse_usd(text).unwrap()
}

/// Serves `body` with `status` on 127.0.0.1 and runs one exchange for `gemini-2.5-flash`.
async fn replayed(
    status: u16,
    headers: &[(&'static str, &'static str)],
    body: Vec<u8>,
    stream: bool,
) -> Outcome {
    let content_type = if stream { "text/event-stream" } else { "application/json" };
    let replay = Replay::start(status, content_type, headers, body).await;
    let endpoint = Endpoint {
        base_url: replay.base_url.trim_end_matches("/v1").to_owned(),
        api_key: Some("test-key".to_owned()),
    };
    let request = chat(json!({"model": "google/gemini-2.5-flash", "stream": stream,
        "messages": [user("x")]}));
    let outcome = exchange(&Google, &endpoint, &request, "gemini-2.5-flash").await;
    let received = replay.received();
    let method = if stream { "streamGenerateContent?alt=sse" } else { "generateContent" };
    assert_eq!(received.path_and_query, format!("/v1beta/models/gemini-2.5-flash:{method}"));
    assert_eq!(received.headers["x-goog-api-key"], "test-key");
    outcome
}

async fn completion(fixture_path: &str) -> (Assembled, Usage) {
    match replayed(200, &[], fixture(fixture_path), false).await {
        Outcome::Complete(completion) => (assemble_completion(&completion), completion.usage),
        other => panic!("{fixture_path}: expected a completion, got {other:?}"),
    }
}

async fn failure(
    status: u16,
    headers: &[(&'static str, &'static str)],
    fixture_path: &str,
) -> UpstreamError {
    match replayed(status, headers, fixture(fixture_path), false).await {
        Outcome::Failed(error) => error,
        other => panic!("{fixture_path}: expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn text_response_bills_thoughts_as_completion() {
    let (assembled, usage) = completion("google/pydai-text.response.json").await;
    assert_eq!(assembled.text, "Hello! How can I help you today?");
    assert_eq!(assembled.finish_reason.as_deref(), Some("stop"));
    assert_eq!(
        usage,
        Usage { prompt_tokens: 9, completion_tokens: 43, reasoning_tokens: 34, ..Usage::default() }
    );
    // 9 × $0.30/M + (9 + 34) × $2.50/M.
    assert_eq!(cost("google/gemini-2.5-flash", &usage), usd("0.0001102"));
}

#[tokio::test]
async fn function_call_response() {
    let (assembled, usage) = completion("google/pydai-tool-choice-auto.1.response.json").await;
    let call = (
        "call_78F7aafeKcDVz7IPh4DK-AM_0".to_owned(),
        "get_weather".to_owned(),
        r#"{"city":"Paris"}"#.to_owned(),
    );
    assert_eq!(assembled.tool_calls, vec![call]);
    assert_eq!(assembled.text, "");
    assert_eq!(assembled.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(
        usage,
        Usage {
            prompt_tokens: 49,
            completion_tokens: 63,
            reasoning_tokens: 48,
            ..Usage::default()
        }
    );
    // 49 × $0.30/M + 63 × $2.50/M.
    assert_eq!(cost("google/gemini-2.5-flash", &usage), usd("0.0001722"));

    let (assembled, _) = completion("google/pydai-function-call-roundtrip.1.response.json").await;
    let call = (
        "call_LlteaIDvD9m7nvgPz5Sb0Aw_0".to_owned(),
        "get_user_country".to_owned(),
        "{}".to_owned(),
    );
    assert_eq!(assembled.tool_calls, vec![call]);
}

#[tokio::test]
async fn thought_parts_become_reasoning() {
    let (assembled, usage) = completion("google/pydai-thinking.1.response.json").await;
    assert!(assembled
        .reasoning
        .starts_with("**A Safe Street-Crossing Guide: My Thought Process**\n\n"));
    assert!(assembled.reasoning.ends_with("Then, I'm ready to produce the final response.\n\n\n"));
    assert!(assembled.text.starts_with("Crossing the street safely is a fundamental skill"));
    assert!(assembled.text.ends_with("rather than looking for you."));
    assert_eq!(
        usage,
        Usage {
            prompt_tokens: 29,
            completion_tokens: 1737,
            reasoning_tokens: 1001,
            ..Usage::default()
        }
    );
    // 29 × $1.25/M + 1737 × $10/M, had it been Gemini 2.5 Pro.
    assert_eq!(cost("google/gemini-2.5-pro", &usage), usd("0.01740625"));
}

#[tokio::test]
async fn finish_reasons() {
    let (assembled, usage) = completion("google/pydai-max-tokens.response.json").await;
    assert_eq!(
        (assembled.text.as_str(), assembled.finish_reason.as_deref()),
        ("The capital of France is", Some("length"))
    );
    assert_eq!(usage, Usage { prompt_tokens: 15, completion_tokens: 5, ..Usage::default() });

    let (assembled, usage) = completion("google/pydai-safety-settings.response.json").await;
    assert_eq!(
        (assembled.text.as_str(), assembled.finish_reason.as_deref()),
        ("", Some("content_filter"))
    );
    assert_eq!(usage, Usage { prompt_tokens: 14, ..Usage::default() });

    let (assembled, _) =
        completion("google/firebase-googleai-unary-failure-finish-reason-safety.json").await;
    assert_eq!(assembled.text, "Safety error incoming in 5, 4, 3, 2...");
    assert_eq!(assembled.finish_reason.as_deref(), Some("content_filter"));

    let (assembled, _) =
        completion("google/firebase-googleai-unary-failure-only-prompt-feedback.json").await;
    assert_eq!(
        (assembled.text.as_str(), assembled.finish_reason.as_deref()),
        ("", Some("content_filter"))
    );

    // A generation that failed without output: another candidate may do better.
    let error = match replayed(
        200,
        &[],
        fixture("google/firebase-googleai-unary-failure-with-message-no-content.json"),
        false,
    )
    .await
    {
        Outcome::Failed(error) => error,
        other => panic!("expected a failure, got {other:?}"),
    };
    assert_eq!((error.status.as_u16(), error.fallback), (502, true));
    assert_eq!(error.message, "OTHER: Model failed to generate content due to internal error.");
}

#[tokio::test]
async fn error_statuses() {
    // An invalid key is the operator's problem, whatever status Google gives it.
    let error = failure(400, &[], "google/firebase-googleai-unary-failure-api-key.json").await;
    assert_eq!((error.status.as_u16(), error.fallback), (401, false));
    assert_eq!(error.message, "400 API key not valid. Please pass a valid API key.");

    let error = failure(
        403,
        &[],
        "google/firebase-googleai-unary-failure-generativelanguage-api-not-enabled.json",
    )
    .await;
    assert_eq!((error.status.as_u16(), error.fallback), (403, false));
    let error =
        failure(404, &[], "google/firebase-googleai-unary-failure-unknown-model.json").await;
    assert_eq!((error.status.as_u16(), error.fallback), (404, false));
    assert!(error
        .message
        .starts_with("404 models/gemini-5.0-flash is not found for API version v1"));
    let error =
        failure(400, &[], "google/firebase-googleai-streaming-failure-image-rejected.txt").await;
    assert_eq!((error.status.as_u16(), error.fallback), (400, false));
    assert_eq!(error.message, "400 Request contains an invalid argument.");

    let error =
        failure(429, &[], "google/firebase-vertexai-unary-failure-quota-exceeded.json").await;
    assert_eq!((error.status.as_u16(), error.fallback, error.retry_after), (429, true, None));
    // SOURCES.md flags this body as possibly constructed; its RetryInfo detail has the
    // documented shape, which is what is checked here.
    let error = failure(429, &[], "google/vercel-google-429-retry-info.json").await;
    assert_eq!((error.status.as_u16(), error.fallback), (429, true));
    assert_eq!(error.retry_after, Some(Duration::from_secs(35)));
    let error =
        failure(429, &[("retry-after", "3")], "google/vercel-google-429-retry-info.json").await;
    assert_eq!(error.retry_after, Some(Duration::from_secs(3)));
}

async fn streamed(body: Vec<u8>) -> (Assembled, Usage, Vec<Chunk>) {
    match replayed(200, &[], body, true).await {
        Outcome::Streamed { chunks, usage } => (assemble_stream(&chunks), usage, chunks),
        other => panic!("expected a stream, got {other:?}"),
    }
}

#[tokio::test]
async fn text_stream_takes_the_last_cumulative_usage() {
    let (assembled, usage, chunks) =
        streamed(fixture("google/pydai-stream-text.response.sse")).await;
    assert_eq!(assembled.text, "The capital of France is Paris.\n");
    assert_eq!(assembled.finish_reason.as_deref(), Some("stop"));
    // promptTokenCount went from 15 to 13 in the last event; the last word counts.
    assert_eq!(usage, Usage { prompt_tokens: 13, completion_tokens: 8, ..Usage::default() });
    assert_eq!(
        json!(chunks[0].choices[0])["delta"],
        json!({"role": "assistant", "content": "The"})
    );
    let last = &json!(chunks.last().unwrap().choices[0]);
    assert_eq!((&last["delta"], &last["finish_reason"]), (&json!({}), &json!("stop")));

    let (assembled, usage, _) =
        streamed(fixture("google/firebase-googleai-streaming-success-basic-reply-short.txt")).await;
    assert_eq!(assembled.text, "The capital of Wyoming is **Cheyenne**.\n");
    assert_eq!(usage, Usage { prompt_tokens: 7, completion_tokens: 10, ..Usage::default() });
}

#[tokio::test]
async fn thinking_stream() {
    let (assembled, usage, _) =
        streamed(fixture("google/pydai-stream-thinking.response.sse")).await;
    assert!(assembled
        .reasoning
        .starts_with("**Clarifying User Goals**\n\nI'm currently focused on defining"));
    assert!(assembled.text.ends_with("Always assume a driver might not see you."));
    assert_eq!(assembled.finish_reason.as_deref(), Some("stop"));
    assert_eq!(
        usage,
        Usage {
            prompt_tokens: 34,
            completion_tokens: 1256,
            reasoning_tokens: 787,
            ..Usage::default()
        }
    );
    // 34 × $1.25/M + 1256 × $10/M.
    assert_eq!(cost("google/gemini-2.5-pro", &usage), usd("0.0126025"));
}

#[tokio::test]
async fn function_call_streams() {
    let (assembled, usage, chunks) =
        streamed(chunks_as_sse("google/vercel-google-tool-call.chunks.txt")).await;
    let call = (
        "call_b36LacjwM668nsEP2tbsgQQ_0".to_owned(),
        "weather".to_owned(),
        r#"{"location":"San Francisco"}"#.to_owned(),
    );
    assert_eq!(assembled.tool_calls, vec![call]);
    assert_eq!(assembled.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(json!(chunks[0].choices[0])["delta"]["tool_calls"][0]["index"], 0);
    assert_eq!(
        usage,
        Usage {
            prompt_tokens: 29,
            completion_tokens: 60,
            reasoning_tokens: 45,
            ..Usage::default()
        }
    );

    let (assembled, usage, _) = streamed(fixture(
        "google/firebase-googleai-streaming-success-thinking-function-call-thought-summary-signature.txt",
    ))
    .await;
    let call = ("call_48SHaPHpHKbG-8YPtZCawAk_0".to_owned(), "now".to_owned(), "{}".to_owned());
    assert_eq!(assembled.tool_calls, vec![call]);
    assert!(assembled.reasoning.starts_with("**Calculating the Days**"));
    assert_eq!(assembled.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(
        usage,
        Usage {
            prompt_tokens: 38,
            completion_tokens: 174,
            reasoning_tokens: 168,
            ..Usage::default()
        }
    );
}

#[tokio::test]
async fn blocked_prompt_stream_is_filtered() {
    let (assembled, _, chunks) =
        streamed(fixture("google/firebase-googleai-streaming-failure-prompt-blocked-safety.txt"))
            .await;
    assert_eq!(
        assembled,
        Assembled { finish_reason: Some("content_filter".to_owned()), ..Assembled::default() }
    );
    assert_eq!(json!(chunks[0].choices[0])["delta"], json!({"role": "assistant", "content": ""}));
}

/// Feeds `body` to a fresh translator in pieces ending at `cuts` (sorted offsets), as
/// the network might deliver it.
fn translate_in_pieces(
    body: &[u8],
    cuts: &[usize],
) -> (Vec<Chunk>, Result<(), UpstreamError>, Usage) {
    let mut translator = Google.stream(&ChatRequest {
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

/// Vertex AI appends the error as bare JSON after the events, outside any `data:` line.
#[test]
fn error_after_the_events_fails_the_stream() {
    let body = fixture("google/firebase-vertexai-streaming-failure-error-mid-stream.txt");
    let (chunks, result, _) = translate_in_pieces(&body, &[]);
    assert_eq!(assemble_stream(&chunks).text, "First Second ");
    assert!(chunks.iter().all(|chunk| json!(chunk.choices[0])["finish_reason"].is_null()));
    let error = result.unwrap_err();
    assert_eq!((error.status.as_u16(), error.fallback), (502, true));
    assert_eq!(error.message, "CANCELLED mid-stream: The operation was cancelled.");

    let event = br#"data: {"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}}"#;
    let (_, result, _) = translate_in_pieces(event, &[]);
    assert_eq!(result.unwrap_err().status.as_u16(), 429);
}

#[test]
fn truncated_streams_are_errors() {
    let body = fixture("google/pydai-stream-text.response.sse");
    let last_event = body.windows(6).rposition(|window| window == b"data: ").unwrap();
    let (chunks, result, _) = translate_in_pieces(&body[..last_event], &[]);
    assert_eq!(assemble_stream(&chunks).text, "The capital of France");
    let error = result.unwrap_err();
    assert_eq!(
        (error.status.as_u16(), error.message.as_str()),
        (502, "stream ended before a finish reason")
    );

    let body = fixture("google/firebase-vertexai-streaming-failure-error-mid-stream.txt");
    let error_start = body.windows(2).position(|window| window == b"\n{").unwrap() + 1;
    let (_, result, _) = translate_in_pieces(&body[..error_start + 20], &[]);
    assert!(result.unwrap_err().message.starts_with("malformed error mid-stream: {"));
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
async fn cited_and_grounding_sources_become_citations() {
    // Sources without a URI are left out, and a URI cited twice is listed once.
    let citations = citations_of("google/firebase-googleai-unary-success-citations.json").await;
    assert_eq!(citations, json!(["https://www.example.com/some-citation-1"]));

    let search = "google/firebase-googleai-unary-success-google-search-grounding.json";
    assert_eq!(
        citations_of(search).await,
        json!([
            "https://vertexaisearch.cloud.google.com/grounding-api-redirect/AbF9wXHS4dqThDQYaHdj81DtSjCLnxmtgYPqLKTfc8-Ea4_ATkuKibe-C2xm9XLREootlLWWk7o7FN6Ktd7PpgEIaA9KH38l33kunUQcrqm77_xaHI9tsqJ1LOgkCG9fV6HKw6WC_fbQ-9JMkaFoJT0Xwkwb1rog-kHLu6qCTv810KzfSBUcH-lZLVxOow==",
            "https://www.google.com/search?q=weather+in+London",
        ])
    );

    let maps =
        citations_of("google/firebase-googleai-unary-success-google-maps-grounding.json").await;
    let maps = maps.as_array().unwrap();
    assert_eq!(maps.len(), 20);
    assert_eq!(maps[0], "https://maps.google.com/?cid=10332424901773702701");
    assert_eq!(maps[19], "https://maps.google.com/?cid=3798394177457033436");

    let empty = "google/firebase-googleai-unary-success-google-search-grounding-empty-grounding-chunks.json";
    assert_eq!(citations_of(empty).await, Value::Null);
    assert_eq!(citations_of("google/pydai-text.response.json").await, Value::Null);
}

#[test]
fn streamed_citations_go_out_when_they_grow() {
    let citing = |path: &str| {
        let (chunks, result, _) = translate_in_pieces(&fixture(path), &[]);
        result.unwrap();
        chunks.into_iter().filter_map(|chunk| chunk.extra.get("citations").cloned()).collect()
    };
    let citations: Vec<Value> = citing("google/firebase-googleai-streaming-success-citations.txt");
    assert_eq!(
        citations,
        vec![json!([
            "https://www.vaia.com/en-us/textbooks/physics/quantum-physics-of-atoms-molecules-solids-nuclei-and-particles-2-edition/chapter-4/problem-23-according-to-classical-mechanics-an-electron-movi/"
        ])]
    );
    // Three events cite; the third names no new source, so it sends no list.
    let citations: Vec<Value> =
        citing("google/firebase-googleai-streaming-failure-recitation-no-content.txt");
    assert_eq!(
        citations,
        vec![
            json!(["https://www.google.com/"]),
            json!(["https://www.google.com/", "https://uc-r.github.io/tidy_text"]),
        ]
    );
    let citations: Vec<Value> = citing("google/pydai-stream-text.response.sse");
    assert!(citations.is_empty());
}

const STREAM_FIXTURES: [&str; 7] = [
    "google/pydai-stream-text.response.sse",
    "google/pydai-stream-thinking.response.sse",
    "google/firebase-googleai-streaming-success-thinking-function-call-thought-summary-signature.txt",
    "google/firebase-googleai-streaming-success-citations.txt",
    "google/firebase-googleai-streaming-failure-prompt-blocked-safety.txt",
    "google/firebase-googleai-streaming-failure-recitation-no-content.txt",
    "google/firebase-vertexai-streaming-failure-error-mid-stream.txt",
];

#[test]
fn byte_by_byte_streams_translate_the_same() {
    for path in STREAM_FIXTURES {
        let body = fixture(path);
        let whole = translate_in_pieces(&body, &[]);
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
        let body = fixture(STREAM_FIXTURES[fixture_idx]);
        let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(body.len() + 1)).collect();
        cuts.sort_unstable();
        prop_assert_eq!(translate_in_pieces(&body, &cuts), translate_in_pieces(&body, &[]));
    }
}
