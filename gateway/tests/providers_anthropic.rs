//! The Anthropic Messages adapter against recorded Anthropic traffic: requests built
//! from OpenAI-format conversations must equal what Anthropic's own clients sent, and
//! recorded responses and streams must translate to exact text, tool calls and usage.

use crate::providers_support::*;
use serde_json::{json, Value};
use solrouter_gateway::catalog::Catalog;
use solrouter_gateway::providers::anthropic::Anthropic;
use solrouter_gateway::providers::{ChatRequest, Endpoint, Usage};
use solrouter_ledger::PicoUsd;

/// The replay server as Anthropic's SDK addresses it: the base URL has no `/v1`.
fn root(replay: &Replay) -> Endpoint {
    Endpoint { base_url: replay.base_url.trim_end_matches("/v1").to_owned(), ..replay.endpoint() }
}

fn endpoint() -> Endpoint {
    Endpoint {
        base_url: "https://api.anthropic.com".to_owned(),
        api_key: Some("sk-ant".to_owned()),
    }
}

fn translated(body: Value, upstream_model: &str) -> Value {
    let request = translate(&Anthropic, &endpoint(), &chat(body), upstream_model).unwrap();
    assert_eq!(request.url, "https://api.anthropic.com/v1/messages");
    assert_eq!(request.headers["x-api-key"], "sk-ant");
    assert_eq!(request.headers["anthropic-version"], "2023-06-01");
    serde_json::from_slice(&request.body).unwrap()
}

#[test]
fn system_prompt_is_hoisted() {
    let body = json!({"model": "anthropic/claude-3-opus", "max_tokens": 4096, "messages": [
        {"role": "system", "content": "You are a helpful assistant.\n\n"},
        {"role": "user", "content": "What is the capital of France?"},
    ]});
    let expected = fixture_json("anthropic/pydai-text-system.request.json");
    assert_eq!(translated(body, "claude-3-opus-latest"), expected);
}

#[test]
fn image_urls_become_image_blocks() {
    let body = json!({"model": "m", "max_tokens": 4096, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this vegetable?"},
        {"type": "image_url", "image_url": {"url": "https://t3.ftcdn.net/jpg/00/85/79/92/360_F_85799278_0BBGV9OAdQDTLnKwAPBCcg1J7QtiieJY.jpg"}},
    ]}]});
    let expected = fixture_json("anthropic/pydai-image-input-url.request.json");
    assert_eq!(translated(body, "claude-haiku-4-5"), expected);
}

#[test]
fn base64_images_become_base64_sources() {
    let body = json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]}]});
    let sent = translated(body, "claude-sonnet-4-20250514");
    let source = &sent["messages"][0]["content"][0]["source"];
    assert_eq!(
        source,
        &json!({"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="})
    );
    // No client limit: the one the pipeline reserved for is forwarded.
    assert_eq!(sent["max_tokens"], MAX_TOKENS_UNSET);
}

#[test]
fn reasoning_effort_enables_thinking() {
    let body = json!({"model": "m", "max_tokens": 4096, "reasoning_effort": "low",
        "messages": [{"role": "user", "content": "How do I cross the street?"}]});
    let expected = fixture_json("anthropic/pydai-thinking.1.request.json");
    assert_eq!(translated(body, "claude-sonnet-4-5"), expected);
}

/// The same conversation pydantic-ai sent to OpenAI and to Anthropic: translating the
/// OpenAI request must give the Anthropic one.
#[test]
fn tool_round_trip_matches_the_recorded_anthropic_request() {
    let mut body = fixture_json("openai/pydai-tool-call-roundtrip.2.request.json");
    body["max_tokens"] = json!(4096);
    let sent = translated(body, "claude-sonnet-4-5");
    let mut expected = fixture_json("anthropic/pydai-tool-use-roundtrip.2.request.json");
    // The recordings differ only in the ids each provider generated and in the schema
    // title pydantic-ai added for Anthropic.
    expected["tools"][1]["input_schema"].as_object_mut().unwrap().remove("title");
    let openai_id = json!("call_iXFttys57ap0o16JSlC8yhYo");
    expected["messages"][1]["content"][0]["id"] = openai_id.clone();
    expected["messages"][2]["content"][0]["tool_use_id"] = openai_id;
    assert_eq!(sent, expected);
}

/// The request the Vercel AI SDK sends for `anthropic-json-output-format.1` (its test
/// `json schema response format with output format (supported model)` in
/// packages/anthropic/src/anthropic-messages-language-model.test.ts; the fixtures keep
/// only the response): the schema goes as is into `output_format`, under the
/// structured-outputs beta header.
#[test]
fn json_schema_becomes_output_format() {
    let schema = json!({
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "required": ["name"],
        "additionalProperties": false,
        "$schema": "http://json-schema.org/draft-07/schema#",
    });
    let body = json!({"model": "m", "max_tokens": 64000,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
        "response_format": {"type": "json_schema",
            "json_schema": {"name": "response", "strict": true, "schema": schema}}});
    let request = translate(&Anthropic, &endpoint(), &chat(body), "claude-sonnet-4-5").unwrap();
    assert_eq!(request.headers["anthropic-beta"], "structured-outputs-2025-11-13");
    let sent: Value = serde_json::from_slice(&request.body).unwrap();
    let expected = json!({
        "max_tokens": 64000,
        "messages": [{"content": [{"text": "Hello", "type": "text"}], "role": "user"}],
        "model": "claude-sonnet-4-5",
        "output_format": {"schema": schema, "type": "json_schema"},
        "stream": false,
    });
    assert_eq!(sent, expected);

    let plain = json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "text"}});
    let request = translate(&Anthropic, &endpoint(), &chat(plain), "claude-sonnet-4-5").unwrap();
    assert!(!request.headers.contains_key("anthropic-beta"));
}

/// Anthropic has no schema-less JSON mode, and a schema must close its objects, so
/// `json_object` stays a 400 for models with native structured outputs rather than
/// becoming a schema that only allows `{}`.
#[test]
fn json_object_is_refused_by_name() {
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_object"}});
    let error = translate(&Anthropic, &endpoint(), &chat(body), "claude-sonnet-4-5").unwrap_err();
    assert_eq!(error.param, "response_format");
    assert!(error.message.contains("json_schema"), "{}", error.message);
}

#[test]
fn unsupported_parameters_are_named() {
    let check = |extra: Value, param: &str| {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let error = translate(&Anthropic, &endpoint(), &chat(body), "claude").unwrap_err();
        assert_eq!(error.param, param);
    };
    check(json!({"seed": 1}), "seed");
    check(json!({"frequency_penalty": 0.5}), "frequency_penalty");
    check(json!({"logit_bias": {}}), "logit_bias");
}

#[tokio::test]
async fn tool_use_response() {
    let body = fixture("anthropic/pydai-tool-use-roundtrip.1.response.json");
    let replay = Replay::start(200, "application/json", &[], body).await;
    let request = chat(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}));
    let Outcome::Complete(completion) =
        exchange(&Anthropic, &root(&replay), &request, "claude-sonnet-4-20250514").await
    else {
        panic!("expected a completion")
    };
    assert_eq!(replay.received().path_and_query, "/v1/messages");
    let assembled = assemble_completion(&completion);
    let call = (
        "toolu_01X9wcHKKAZD9tBC711xipPa".to_owned(),
        "get_user_country".to_owned(),
        "{}".to_owned(),
    );
    assert_eq!(assembled.tool_calls, vec![call]);
    assert_eq!(assembled.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(
        completion.usage,
        Usage { prompt_tokens: 445, completion_tokens: 23, ..Usage::default() }
    );
    let price = Catalog::builtin().get("anthropic/claude-sonnet-4").unwrap().price;
    // 445 × $3/M + 23 × $15/M.
    assert_eq!(price.cost(&completion.usage), PicoUsd::parse_usd("0.00168").unwrap());
}

/// Claude Sonnet 4.5's price, which equals the catalogue's Claude Sonnet 4 price
/// ($3/M prompt, $15/M completion); the recordings are Sonnet 4.5's.
/// The Claude 4.0 models predate `output_format`: `response_format` becomes one tool
/// whose input schema is the wanted schema, forced, named after the schema.
#[test]
fn json_schema_becomes_a_forced_tool_for_older_models() {
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}},
        "required": ["city"]});
    let body = json!({"model": "m", "max_tokens": 1024,
        "messages": [{"role": "user", "content": "What is the largest city in Mexico?"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "CityLocation",
            "description": "A city.", "schema": schema}}});
    let request =
        translate(&Anthropic, &endpoint(), &chat(body.clone()), "claude-sonnet-4-20250514")
            .unwrap();
    assert!(!request.headers.contains_key("anthropic-beta"));
    let expected = json!({
        "max_tokens": 1024,
        "messages": [{"content": [{"text": "What is the largest city in Mexico?", "type": "text"}],
            "role": "user"}],
        "model": "claude-sonnet-4-20250514",
        "stream": false,
        "tools": [{"name": "CityLocation", "description": "A city.", "input_schema": schema}],
        "tool_choice": {"type": "tool", "name": "CityLocation", "disable_parallel_tool_use": true},
    });
    assert_eq!(translated(body, "claude-sonnet-4-20250514"), expected);

    let object = json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_object"}});
    let sent = translated(object, "claude-opus-4-20250514");
    assert_eq!(sent["tools"], json!([{"name": "json_output", "input_schema": {"type": "object"}}]));
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "tool", "name": "json_output", "disable_parallel_tool_use": true})
    );
}

/// One tool can be forced, so the client's own tools, tool choice and thinking (which
/// Anthropic refuses with a forced tool) are 400s that name them.
#[test]
fn forced_json_tool_conflicts_are_refused_by_name() {
    let format =
        json!({"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}});
    let weather = json!({"type": "function", "function": {"name": "weather",
        "parameters": {"type": "object"}}});
    for (extra, param) in [
        (json!({"tools": [weather]}), "tools"),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (json!({"reasoning_effort": "low", "max_tokens": 4096}), "reasoning_effort"),
    ] {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "response_format": format});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let error = translate(&Anthropic, &endpoint(), &chat(body), "claude-sonnet-4-20250514")
            .unwrap_err();
        assert_eq!(error.param, param);
    }
}

fn json_tool_request(stream: bool) -> ChatRequest {
    chat(json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "json",
            "schema": {"type": "object"}}}}))
}

/// A recorded forced-tool answer (vercel-anthropic-json-tool.1.json) becomes content:
/// the tool input as JSON text, finishing with `stop`.
#[tokio::test]
async fn json_tool_response_becomes_content() {
    let body = fixture("anthropic/vercel-anthropic-json-tool.1.json");
    let replay = Replay::start(200, "application/json", &[], body).await;
    let Outcome::Complete(completion) =
        exchange(&Anthropic, &root(&replay), &json_tool_request(false), "claude-sonnet-4-20250514")
            .await
    else {
        panic!("expected a completion")
    };
    assert_eq!(replay.received().body["tool_choice"]["name"], "json");
    let assembled = assemble_completion(&completion);
    // serde_json writes the input's keys sorted.
    let text = concat!(
        r#"{"elements":[{"condition":"snowy","location":"San Francisco","temperature":-5},"#,
        r#"{"condition":"snowy","location":"London","temperature":0},"#,
        r#"{"condition":"cloudy","location":"Paris","temperature":23},"#,
        r#"{"condition":"snowy","location":"Berlin","temperature":-9}]}"#,
    );
    assert_eq!(assembled.text, text);
    assert!(assembled.tool_calls.is_empty());
    assert_eq!(assembled.finish_reason.as_deref(), Some("stop"));
    assert_eq!(
        completion.usage,
        Usage { prompt_tokens: 1151, completion_tokens: 87, ..Usage::default() }
    );
    // 1151 × $3/M + 87 × $15/M.
    assert_eq!(sonnet_price().cost(&completion.usage), PicoUsd::parse_usd("0.004758").unwrap());
}

/// The streamed recording (vercel-anthropic-json-tool.1.chunks.txt): the tool's
/// `input_json_delta` fragments become content deltas.
#[tokio::test]
async fn json_tool_stream_becomes_content() {
    let sse = chunks_as_sse("anthropic/vercel-anthropic-json-tool.1.chunks.txt");
    let replay = Replay::start(200, "text/event-stream", &[], sse).await;
    let Outcome::Streamed { chunks, usage } =
        exchange(&Anthropic, &root(&replay), &json_tool_request(true), "claude-sonnet-4-20250514")
            .await
    else {
        panic!("expected a stream")
    };
    let assembled = assemble_stream(&chunks);
    assert_eq!(
        assembled.text,
        r#"{"elements": [{"location": "San Francisco", "temperature": 58, "condition": "sunny"}]}"#
    );
    assert!(assembled.tool_calls.is_empty());
    assert_eq!(assembled.finish_reason.as_deref(), Some("stop"));
    assert_eq!(usage, Usage { prompt_tokens: 849, completion_tokens: 47, ..Usage::default() });
    // 849 × $3/M + 47 × $15/M.
    assert_eq!(sonnet_price().cost(&usage), PicoUsd::parse_usd("0.003252").unwrap());
}

fn sonnet_price() -> solrouter_gateway::catalog::Price {
    Catalog::builtin().get("anthropic/claude-sonnet-4").unwrap().price
}

#[tokio::test]
async fn structured_output_response() {
    let body = fixture("anthropic/vercel-anthropic-json-output-format.1.json");
    let recorded = fixture_json("anthropic/vercel-anthropic-json-output-format.1.json");
    let replay = Replay::start(200, "application/json", &[], body).await;
    let request = chat(json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "recipe",
            "schema": {"type": "object", "additionalProperties": false}}}}));
    let Outcome::Complete(completion) =
        exchange(&Anthropic, &root(&replay), &request, "claude-sonnet-4-5").await
    else {
        panic!("expected a completion")
    };
    let received = replay.received();
    assert_eq!(received.headers["anthropic-beta"], "structured-outputs-2025-11-13");
    assert_eq!(received.body["output_format"]["type"], "json_schema");
    let assembled = assemble_completion(&completion);
    assert_eq!(assembled.text, recorded["content"][0]["text"].as_str().unwrap());
    assert!(assembled.text.starts_with(r#"{"recipe":{"name":"Classic Lasagna","ingredients":"#));
    let parsed: Value = serde_json::from_str(&assembled.text).unwrap();
    assert_eq!(parsed["recipe"]["steps"].as_array().unwrap().len(), 15);
    assert_eq!(assembled.finish_reason.as_deref(), Some("stop"));
    assert_eq!(
        completion.usage,
        Usage { prompt_tokens: 371, completion_tokens: 629, ..Usage::default() }
    );
    // 371 × $3/M + 629 × $15/M.
    assert_eq!(sonnet_price().cost(&completion.usage), PicoUsd::parse_usd("0.010548").unwrap());
}

async fn streamed(sse: Vec<u8>) -> (Assembled, Usage) {
    let replay = Replay::start(200, "text/event-stream", &[], sse).await;
    let request =
        chat(json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "x"}]}));
    let Outcome::Streamed { chunks, usage } =
        exchange(&Anthropic, &root(&replay), &request, "claude").await
    else {
        panic!("expected a stream")
    };
    assert_eq!(replay.received().body["stream"], true);
    (assemble_stream(&chunks), usage)
}

#[tokio::test]
async fn text_stream() {
    let (assembled, usage) =
        streamed(fixture("anthropic/anthropic-sdk-python-basic_response.sse")).await;
    assert_eq!(assembled.text, "Hello there!");
    assert_eq!(assembled.finish_reason.as_deref(), Some("stop"));
    assert_eq!(usage, Usage { prompt_tokens: 11, completion_tokens: 6, ..Usage::default() });

    let (assembled, usage) =
        streamed(fixture("anthropic/pydai-stream-text-padded.response.sse")).await;
    assert_eq!(assembled.text, "2");
    assert_eq!(usage, Usage { prompt_tokens: 20, completion_tokens: 5, ..Usage::default() });
}

#[tokio::test]
async fn tool_use_stream() {
    let (assembled, usage) =
        streamed(chunks_as_sse("anthropic/vercel-anthropic-json-tool.1.chunks.txt")).await;
    let arguments =
        r#"{"elements": [{"location": "San Francisco", "temperature": 58, "condition": "sunny"}]}"#;
    let call =
        ("toolu_01KFbKqPYSuAKujiL6mTfzYA".to_owned(), "json".to_owned(), arguments.to_owned());
    assert_eq!(assembled.tool_calls, vec![call]);
    assert_eq!(assembled.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(usage, Usage { prompt_tokens: 849, completion_tokens: 47, ..Usage::default() });
}

#[tokio::test]
async fn structured_output_stream() {
    let (assembled, usage) =
        streamed(chunks_as_sse("anthropic/vercel-anthropic-json-output-format.1.chunks.txt")).await;
    assert!(assembled.text.starts_with(r#"{"characters":[{"name":"Theron Ironheart","#));
    assert!(assembled.text.ends_with(r#"who deserves to be robbed."}]}"#));
    let parsed: Value = serde_json::from_str(&assembled.text).unwrap();
    let names: Vec<&str> = parsed["characters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|character| character["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Theron Ironheart", "Lyra Starweaver", "Rook Shadowstep"]);
    assert_eq!(assembled.finish_reason.as_deref(), Some("stop"));
    assert_eq!(usage, Usage { prompt_tokens: 313, completion_tokens: 305, ..Usage::default() });
    // 313 × $3/M + 305 × $15/M.
    assert_eq!(sonnet_price().cost(&usage), PicoUsd::parse_usd("0.005514").unwrap());
}

#[tokio::test]
async fn truncated_stream_is_an_error() {
    let sse = fixture("anthropic/anthropic-sdk-python-basic_response.sse");
    let cut = String::from_utf8(sse).unwrap().replace(r#"data: {"type":"message_stop"}"#, "");
    let replay = Replay::start(200, "text/event-stream", &[], cut.into_bytes()).await;
    let request =
        chat(json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "x"}]}));
    let Outcome::Failed(error) = exchange(&Anthropic, &root(&replay), &request, "claude").await
    else {
        panic!("expected an error")
    };
    assert_eq!(error.status.as_u16(), 502);
}

#[tokio::test]
async fn invalid_request_error() {
    let body = fixture("anthropic/pydai-error-400-invalid-request.response.json");
    let replay = Replay::start(400, "application/json", &[], body).await;
    let request = chat(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}));
    let Outcome::Failed(error) = exchange(&Anthropic, &root(&replay), &request, "claude").await
    else {
        panic!("expected an error")
    };
    assert_eq!((error.status.as_u16(), error.fallback), (400, false));
    assert!(error.message.starts_with("400 This model does not support effort level 'xhigh'."));
}
