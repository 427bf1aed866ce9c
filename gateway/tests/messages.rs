//! Anthropic Messages (`POST /v1/messages`, `/v1/messages/count_tokens`) end to end
//! through the real `solrouter dev` binary: a Claude model answered natively by the mock
//! speaking Anthropic's format, other models (the built-in `mock/echo`, an OpenAI model
//! on the mock) translated; plain and streamed answers in Anthropic's shape and event
//! sequence, `usage.cost` equal to the balance drop, errors in Anthropic's shape with the
//! chat endpoint's statuses, fallback, and, over recorded Anthropic traffic, an answer
//! that produced nothing going uncharged with its provider bill written off.

use crate::providers_support::fixture_upstream::{FixtureUpstream, Recording, Route, Shape, HOSTS};
use crate::providers_support::{fixture_json, with};
use crate::support;
use crate::support::{cost_pico, data_dir, dev_over, path, pico, start_mock, Dev};
use serde_json::{json, Value};
use solrouter_ledger::PicoUsd;

const CLAUDE: &str = "anthropic/claude-sonnet-4";

#[derive(Clone, Copy)]
enum Auth<'a> {
    /// `x-api-key`, as Anthropic's SDKs send a key.
    ApiKey(&'a str),
    /// `Authorization: Bearer`, as they send an auth token.
    Bearer(&'a str),
    None,
}

async fn post(dev: &Dev, path: &str, auth: Auth<'_>, body: &Value) -> reqwest::Response {
    let mut request = dev
        .client
        .post(dev.url(path))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .body(body.to_string());
    request = match auth {
        Auth::ApiKey(key) => request.header("x-api-key", key),
        Auth::Bearer(key) => request.bearer_auth(key),
        Auth::None => request,
    };
    request.send().await.expect("request")
}

async fn message(dev: &Dev, auth: Auth<'_>, body: &Value) -> (u16, Value) {
    let response = post(dev, "/v1/messages", auth, body).await;
    let status = response.status().as_u16();
    (status, support::read_json(response).await)
}

/// A streamed message: its events as (event name, data), each data's `type` checked to
/// be its event name.
async fn stream(dev: &Dev, auth: Auth<'_>, body: &Value) -> Vec<(String, Value)> {
    let response = post(dev, "/v1/messages", auth, body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.expect("body");
    text.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            let (name, data) = event.split_once("\ndata: ").expect("event and data lines");
            let name = name.strip_prefix("event: ").expect("event line").to_owned();
            let data: Value = serde_json::from_str(data).expect("data is JSON");
            assert_eq!(data["type"], name.as_str(), "{event}");
            (name, data)
        })
        .collect()
}

/// Checks Anthropic's event grammar (message_start, blocks opened, filled and closed in
/// index order, message_delta, message_stop) and returns the text and the final
/// `message_delta`.
fn complete_stream(events: &[(String, Value)]) -> (String, Value) {
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{names:?}");
    assert_eq!(&names[names.len() - 2..], ["message_delta", "message_stop"], "{names:?}");
    let (mut text, mut open, mut n_blocks) = (String::new(), None, 0u64);
    for (name, data) in &events[1..events.len() - 2] {
        match name.as_str() {
            "content_block_start" => {
                assert_eq!((open, data["index"].as_u64()), (None, Some(n_blocks)), "{names:?}");
                open = Some(n_blocks);
                n_blocks += 1;
            }
            "content_block_delta" => {
                assert_eq!(data["index"].as_u64(), open, "{names:?}");
                text.push_str(data["delta"]["text"].as_str().unwrap_or_default());
            }
            "content_block_stop" => {
                assert_eq!(data["index"].as_u64(), open.take(), "{names:?}");
            }
            "ping" => {}
            other => panic!("unexpected {other} in {names:?}"),
        }
    }
    assert_eq!(open, None, "a block left open: {names:?}");
    (text, events[events.len() - 2].1.clone())
}

async fn available(dev: &Dev, account: &str) -> i128 {
    pico(&dev.account(account).await["available"])
}

fn ask(model: &str, text: &str) -> Value {
    json!({"model": model, "max_tokens": 200, "messages": [{"role": "user", "content": text}]})
}

/// Plain and streamed, to a Claude model (native) and to two others (translated): the
/// answer in Anthropic's shape, its `usage.cost` exactly the balance drop and the
/// generation's record; a key in `x-api-key` or as a bearer token.
#[tokio::test]
async fn every_model_answers_in_anthropics_shape_with_its_cost() {
    let mock = start_mock().await;
    let dir = data_dir();
    let dev = dev_over(&dir, &mock);
    let (account, key) = dev.funded_account("5.00").await;
    for model in [CLAUDE, "mock/echo", "openai/gpt-4.1"] {
        let before = available(&dev, &account).await;
        let (status, answer) =
            message(&dev, Auth::ApiKey(&key), &ask(model, "what a fine day")).await;
        assert_eq!(status, 200, "{model}: {answer}");
        assert_eq!(
            (answer["type"].as_str(), answer["role"].as_str()),
            (Some("message"), Some("assistant"))
        );
        assert_eq!(answer["model"], model);
        assert_eq!(
            answer["content"],
            json!([{"type": "text", "text": "what a fine day"}]),
            "{model}"
        );
        assert_eq!(answer["stop_reason"], "end_turn", "{model}");
        assert_eq!(answer["usage"]["input_tokens"], 4, "{model}: {answer}");
        assert_eq!(answer["usage"]["output_tokens"], 4, "{model}: {answer}");
        let cost = cost_pico(&answer["usage"]["cost"]);
        assert!(cost > 0, "{model}");
        assert_eq!(before - available(&dev, &account).await, cost, "{model}: the balance drop");
        let id = answer["id"].as_str().expect("id");
        let (status, record) = dev.get(&format!("/v1/api/generation?id={id}"), &key).await;
        assert_eq!(status, 200, "{record}");
        assert_eq!(record["data"]["model"], model);
        assert_eq!(pico(&record["data"]["cost_usd"]), cost);

        let before = available(&dev, &account).await;
        let mut body = ask(model, "one two three four five");
        body["stream"] = json!(true);
        let events = stream(&dev, Auth::Bearer(&key), &body).await;
        let (text, delta) = complete_stream(&events);
        assert_eq!(text, "one two three four five", "{model}");
        assert_eq!(events[0].1["message"]["model"], model);
        assert_eq!(delta["delta"]["stop_reason"], "end_turn", "{model}");
        assert_eq!(delta["usage"]["output_tokens"], 5, "{model}: {delta}");
        let cost = cost_pico(&delta["usage"]["cost"]);
        assert_eq!(before - available(&dev, &account).await, cost, "{model}: the balance drop");
    }
    dev.audit_ok().await;
}

/// Anthropic's server-side `fallbacks` are the gateway's own fallbacks (as on OpenRouter):
/// a model that is down hands the request to the next, which answers and is charged at
/// its own price; Anthropic's `"default"` fallbacks, which name no model, get a 400.
#[tokio::test]
async fn anthropic_fallbacks_fall_back_at_the_gateway() {
    let mock = start_mock().await;
    let dir = data_dir();
    let dev = dev_over(&dir, &mock);
    let (account, key) = dev.funded_account("5.00").await;
    let mut body = ask("mock/unavailable", "still here");
    body["fallbacks"] = json!([{"model": CLAUDE}]);
    let before = available(&dev, &account).await;
    let (status, answer) = message(&dev, Auth::ApiKey(&key), &body).await;
    assert_eq!((status, &answer["model"]), (200, &json!(CLAUDE)), "{answer}");
    let cost = cost_pico(&answer["usage"]["cost"]);
    assert_eq!(before - available(&dev, &account).await, cost, "the balance drop");
    body["fallbacks"] = json!("default");
    let (status, refused) = message(&dev, Auth::ApiKey(&key), &body).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["type"], "error", "Anthropic's error shape: {refused}");
    dev.audit_ok().await;
}

/// A Claude model gets the request as the client sent it: fields only Anthropic knows
/// reach it; any other model refuses them by name, in Anthropic's error shape.
#[tokio::test]
async fn claude_models_get_the_request_untranslated() {
    let mock = start_mock().await;
    let dir = data_dir();
    let dev = dev_over(&dir, &mock);
    let (_, key) = dev.funded_account("5.00").await;
    let mut body = ask(CLAUDE, "hello");
    body["top_k"] = json!(5);
    body["tools"] = json!([{"type": "bash_20250124", "name": "bash"}]);
    let (status, answer) = message(&dev, Auth::ApiKey(&key), &body).await;
    assert_eq!(status, 200, "{answer}");
    // What Anthropic bills beyond the catalogue's prices is refused for every model.
    let mut search = body.clone();
    search["tools"] = json!([{"type": "web_search_20250305", "name": "web_search"}]);
    let (status, error) = message(&dev, Auth::ApiKey(&key), &search).await;
    assert_eq!((status, error["error"]["type"].as_str()), (400, Some("invalid_request_error")));
    body["model"] = json!("mock/echo");
    let (status, error) = message(&dev, Auth::ApiKey(&key), &body).await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    let text = error["error"]["message"].as_str().expect("message");
    assert!(text.contains("top_k"), "{text}");
    // A fallback list may mix both: the translated candidate is skipped.
    body["models"] = json!([CLAUDE]);
    let (status, answer) = message(&dev, Auth::ApiKey(&key), &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model"], CLAUDE);
}

/// Errors keep the chat endpoint's statuses, in Anthropic's shape; a stream that breaks
/// after its start ends with an `error` event, no `message_stop`, and the charge for
/// what was delivered; a failing model falls back to the next.
#[tokio::test]
async fn errors_are_anthropic_shaped_with_the_chat_statuses() {
    let mock = start_mock().await;
    let dir = data_dir();
    let dev = dev_over(&dir, &mock);
    let (account, key) = dev.funded_account("5.00").await;
    let (_, poor_key) = dev.funded_account("0.000001").await;
    let user = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (Auth::None, ask("mock/echo", "hi"), 401, "authentication_error"),
        (Auth::ApiKey("sr_bogus"), ask("mock/echo", "hi"), 401, "authentication_error"),
        (
            Auth::ApiKey(&key),
            json!({"model": "mock/echo", "messages": user}),
            400,
            "invalid_request_error",
        ),
        (Auth::ApiKey(&key), ask("nobody/nothing", "hi"), 404, "not_found_error"),
        // Not catalogued, under either name.
        (Auth::ApiKey(&key), ask("claude-3-5-haiku-latest", "hi"), 404, "not_found_error"),
        (Auth::ApiKey(&poor_key), ask(CLAUDE, "hi"), 402, "billing_error"),
        (Auth::ApiKey(&key), ask("mock/unavailable", "hi"), 503, "overloaded_error"),
    ];
    for (auth, body, status, kind) in cases {
        let (got, error) = message(&dev, auth, &body).await;
        assert_eq!((got, error["type"].as_str()), (status, Some("error")), "{body}: {error}");
        assert_eq!(error["error"]["type"], kind, "{body}: {error}");
        assert!(error["error"]["message"].is_string());
    }
    let response = dev.client.get(dev.url("/v1/messages")).send().await.expect("request");
    assert_eq!(response.status(), 405);
    assert_eq!(support::read_json(response).await["error"]["type"], "invalid_request_error");

    for model in [CLAUDE, "mock/echo"] {
        let before = available(&dev, &account).await;
        let mut body = ask(model, "[[mock words=30 cut_after=6]] go");
        body["stream"] = json!(true);
        let events = stream(&dev, Auth::ApiKey(&key), &body).await;
        let (last, error) = events.last().expect("events");
        assert_eq!(last, "error", "{model}: {events:?}");
        assert!(events.iter().all(|(name, _)| name != "message_stop"), "{model}");
        assert_eq!(error["error"]["type"], "api_error", "{model}: {error}");
        let cost = cost_pico(&error["usage"]["cost"]);
        assert_eq!(before - available(&dev, &account).await, cost, "{model}: the balance drop");
    }

    // A stream that fails before any output reached the client is not charged: what the
    // provider billed (here the prompt and message_start's one output token) is written
    // off.
    let (before, written_off) =
        (available(&dev, &account).await, pico(&dev.account(&account).await["written_off"]));
    let mut body = ask(CLAUDE, "[[mock cut_after=1]] go");
    body["stream"] = json!(true);
    let events = stream(&dev, Auth::ApiKey(&key), &body).await;
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["message_start", "error"]);
    assert_eq!(cost_pico(&events[1].1["usage"]["cost"]), 0);
    assert_eq!(available(&dev, &account).await, before);
    assert!(pico(&dev.account(&account).await["written_off"]) > written_off);
    let id = events[0].1["message"]["id"].as_str().expect("id");
    let (_, record) = dev.get(&format!("/v1/api/generation?id={id}"), &key).await;
    assert_eq!(record["data"]["waived"], true, "{record}");

    // Anthropic's own model ids (what Claude Code and the SDK examples send: the dated
    // snapshots and the undated aliases of Claude Code's defaults) are catalogue
    // aliases, answered and billed as the model they name (pico-USD per prompt and
    // completion token: the catalogue's USD per million tokens).
    let aliases = [
        ("claude-sonnet-4-20250514", CLAUDE, 3_000_000, 15_000_000),
        ("claude-sonnet-4-0", CLAUDE, 3_000_000, 15_000_000),
        ("claude-sonnet-4-5-20250929", "anthropic/claude-sonnet-4.5", 3_000_000, 15_000_000),
        ("claude-sonnet-4-5", "anthropic/claude-sonnet-4.5", 3_000_000, 15_000_000),
        ("claude-haiku-4-5-20251001", "anthropic/claude-haiku-4.5", 1_000_000, 5_000_000),
        ("claude-haiku-4-5", "anthropic/claude-haiku-4.5", 1_000_000, 5_000_000),
        ("claude-opus-4-5-20251101", "anthropic/claude-opus-4.5", 5_000_000, 25_000_000),
        ("claude-opus-4-5", "anthropic/claude-opus-4.5", 5_000_000, 25_000_000),
    ];
    for (alias, model, prompt_pico, completion_pico) in aliases {
        let before = available(&dev, &account).await;
        let (status, answer) = message(&dev, Auth::ApiKey(&key), &ask(alias, "aliased")).await;
        assert_eq!(status, 200, "{alias}: {answer}");
        assert_eq!(answer["model"], model, "{alias}");
        let usage = &answer["usage"];
        let tokens = |field: &str| i128::from(usage[field].as_u64().expect("token count"));
        let cost = tokens("input_tokens") * prompt_pico + tokens("output_tokens") * completion_pico;
        assert_eq!(cost_pico(&usage["cost"]), cost, "{alias}: {answer}");
        assert_eq!(before - available(&dev, &account).await, cost, "{alias}: the balance drop");
    }

    let mut body = ask("mock/unavailable", "fall back");
    body["models"] = json!([CLAUDE]);
    let (status, answer) = message(&dev, Auth::ApiKey(&key), &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["model"].as_str(), answer["content"][0]["text"].as_str()),
        (Some(CLAUDE), Some("fall back"))
    );
    dev.audit_ok().await;
}

/// `count_tokens` answers the prompt's tokens and charges nothing.
#[tokio::test]
async fn count_tokens_counts_for_free() {
    let mock = start_mock().await;
    let dir = data_dir();
    let dev = dev_over(&dir, &mock);
    let (account, key) = dev.funded_account("5.00").await;
    let before = available(&dev, &account).await;
    let mut body = ask("mock/echo", "one two three");
    body.as_object_mut().expect("object").remove("max_tokens");
    body["system"] = json!("be brief");
    let response = post(&dev, "/v1/messages/count_tokens", Auth::ApiKey(&key), &body).await;
    assert_eq!(response.status(), 200);
    let counted = support::read_json(response).await;
    assert_eq!(counted, json!({"input_tokens": 5}));
    assert_eq!(available(&dev, &account).await, before);
    let response = post(&dev, "/v1/messages/count_tokens", Auth::None, &body).await;
    assert_eq!(response.status(), 401);
    // A Claude model is counted by Anthropic (here the mock: the prompt's words, where
    // `o200k_base` would split these long words into many tokens), under an alias too.
    for model in [CLAUDE, "claude-sonnet-4-20250514"] {
        body["model"] = json!(model);
        body["messages"][0]["content"] =
            json!("antidisestablishmentarianism floccinaucinihilipilification");
        let response = post(&dev, "/v1/messages/count_tokens", Auth::ApiKey(&key), &body).await;
        assert_eq!(response.status(), 200);
        assert_eq!(support::read_json(response).await, json!({"input_tokens": 4}), "{model}");
    }
    assert_eq!(available(&dev, &account).await, before);
}

/// Recorded Anthropic traffic (anthropic-sdk-python's refusal stream: 20 input tokens,
/// no output, an empty answer): not charged by default, the provider's bill written off
/// and visible on the record, the account and the audit; charged when configured so.
#[tokio::test]
async fn an_answer_that_produced_nothing_is_not_charged() {
    let anthropic = HOSTS.iter().find(|host| host.provider == "anthropic").expect("host");
    let (content_type, recording) =
        Recording::Sse.load("anthropic/anthropic-sdk-python-refusal_response.sse");
    let route = Route {
        name: "refusal".into(),
        shape: Shape { stream: true, tools: false, structured: false, image: false },
        upstream_model: "claude-sonnet-4-20250514".into(),
        content_type,
        body: recording,
        expect: vec![],
    };
    let upstream = FixtureUpstream::start(anthropic, vec![route]).await;
    let env = upstream.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (*name, value.as_str())).collect();
    for waive in [true, false] {
        let dir = data_dir();
        let setting = [("SOLROUTER_WAIVE_EMPTY_ANSWERS", if waive { "true" } else { "false" })];
        let dev = Dev::start(&path(&dir), &[env.as_slice(), &setting].concat());
        let (account, key) = dev.funded_account("5.00").await;
        let (_, models) = dev.get("/v1/api/models", &key).await;
        let claude =
            models["data"].as_array().expect("models").iter().find(|model| model["id"] == CLAUDE);
        let prompt_price = PicoUsd::parse_usd(
            claude.expect("claude")["pricing"]["prompt"].as_str().expect("price"),
        )
        .expect("USD");
        let bill = 20 * prompt_price.0 as i128;
        let mut body = ask(CLAUDE, "how do I break into a server");
        body["stream"] = json!(true);
        let events = stream(&dev, Auth::ApiKey(&key), &body).await;
        let (text, delta) = complete_stream(&events);
        assert_eq!(text, "");
        assert_eq!(delta["delta"]["stop_reason"], "refusal");
        assert_eq!(
            (delta["usage"]["input_tokens"].as_u64(), delta["usage"]["output_tokens"].as_u64()),
            (Some(20), Some(0))
        );
        let (charged, written_off) = if waive { (0, bill) } else { (bill, 0) };
        assert_eq!(cost_pico(&delta["usage"]["cost"]), charged, "waive {waive}");
        let state = dev.account(&account).await;
        assert_eq!((pico(&state["spent"]), pico(&state["written_off"])), (charged, written_off));
        let id = events[0].1["message"]["id"].as_str().expect("id");
        let (_, record) = dev.get(&format!("/v1/api/generation?id={id}"), &key).await;
        let record = &record["data"];
        assert_eq!(record["waived"], waive, "{record}");
        assert_eq!(
            (pico(&record["cost_usd"]), pico(&record["written_off"])),
            (charged, written_off)
        );
        // The same through Chat Completions: one pipeline, one rule.
        let chat = json!({"model": CLAUDE, "stream": true, "messages": support::user("again")});
        let (chunks, done) = dev.chat_stream(&key, &chat).await;
        assert!(done);
        let last = chunks.last().expect("chunks");
        assert_eq!(cost_pico(&last["usage"]["cost"]), charged, "waive {waive}: {last}");
        let state = dev.account(&account).await;
        assert_eq!(
            (pico(&state["spent"]), pico(&state["written_off"])),
            (2 * charged, 2 * written_off)
        );
        dev.audit_ok().await;
    }
}

/// Recorded Claude traffic relayed untouched: a streamed answer with redacted thinking
/// (its events as Anthropic sent them, only the id, the model and the final usage with
/// `cost` set) and a tool-result turn with forced tool use (the request reaches Anthropic
/// as the client sent it, the answer's content comes back as it was).
#[tokio::test]
async fn recorded_claude_traffic_passes_through_untouched() {
    let anthropic = HOSTS.iter().find(|host| host.provider == "anthropic").expect("host");
    let thinking_request = fixture_json("anthropic/pydai-stream-thinking-redacted.request.json");
    let tools_request = fixture_json("anthropic/pydai-tool-use-roundtrip.2.request.json");
    let same_as = |request: &Value, fields: &[&str]| -> Vec<(String, Value)> {
        fields.iter().map(|field| (format!("/{field}"), request[field].clone())).collect()
    };
    let (sse_type, thinking_answer) =
        Recording::Sse.load("anthropic/pydai-stream-thinking-redacted.response.sse");
    let (json_type, tools_answer) =
        Recording::Json.load("anthropic/pydai-tool-use-roundtrip.2.response.json");
    let none = Shape { stream: false, tools: false, structured: false, image: false };
    let routes = vec![
        Route {
            name: "thinking".into(),
            shape: Shape { stream: true, ..none },
            upstream_model: "claude-sonnet-4-20250514".into(),
            content_type: sse_type,
            body: thinking_answer.clone(),
            expect: same_as(&thinking_request, &["messages", "thinking", "max_tokens", "stream"]),
        },
        Route {
            name: "tools".into(),
            shape: Shape { tools: true, ..none },
            upstream_model: "claude-sonnet-4-20250514".into(),
            content_type: json_type,
            body: tools_answer.clone(),
            expect: same_as(&tools_request, &["messages", "tools", "tool_choice", "stream"]),
        },
    ];
    let upstream = FixtureUpstream::start(anthropic, routes).await;
    let env = upstream.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (*name, value.as_str())).collect();
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &env);
    let (account, key) = dev.funded_account("5.00").await;

    let before = available(&dev, &account).await;
    let events =
        stream(&dev, Auth::ApiKey(&key), &with(&thinking_request, "model", json!(CLAUDE))).await;
    let recorded: Vec<Value> = std::str::from_utf8(&thinking_answer)
        .expect("utf-8")
        .split("\n\n")
        .filter_map(|event| event.split_once("data: "))
        .map(|(_, data)| serde_json::from_str(data).expect("recorded JSON"))
        .collect();
    assert_eq!(events.len(), recorded.len());
    let mut cost = None;
    for ((name, got), wanted) in events.iter().zip(&recorded) {
        match name.as_str() {
            "message_start" => {
                let mut wanted = wanted.clone();
                wanted["message"]["id"] = got["message"]["id"].clone();
                wanted["message"]["model"] = json!(CLAUDE);
                assert_eq!(got, &wanted);
                assert!(got["message"]["id"].as_str().is_some_and(|id| id.starts_with("gen-")));
            }
            "message_delta" => {
                assert_eq!(got["delta"], wanted["delta"]);
                assert_eq!(got["usage"]["output_tokens"], wanted["usage"]["output_tokens"]);
                cost = Some(cost_pico(&got["usage"]["cost"]));
            }
            _ => assert_eq!(got, wanted, "{name}"),
        }
    }
    assert_eq!(Some(before - available(&dev, &account).await), cost, "the balance drop");

    let (status, answer) =
        message(&dev, Auth::Bearer(&key), &with(&tools_request, "model", json!(CLAUDE))).await;
    assert_eq!(status, 200, "{answer}");
    let recorded: Value = serde_json::from_slice(&tools_answer).expect("recorded JSON");
    assert_eq!(answer["content"], recorded["content"]);
    assert_eq!(answer["stop_reason"], "tool_use");
    assert_eq!(answer["usage"]["cache_creation"], recorded["usage"]["cache_creation"]);
    assert_eq!(
        (answer["usage"]["input_tokens"].as_u64(), answer["usage"]["output_tokens"].as_u64()),
        (Some(497), Some(56))
    );
    assert!(cost_pico(&answer["usage"]["cost"]) > 0);

    let hits = upstream.hits();
    let routes: Vec<Option<&str>> = hits.iter().map(|hit| hit.route.as_deref()).collect();
    assert_eq!(routes, [Some("thinking"), Some("tools")]);
    for hit in &hits {
        assert!(hit.problems.is_empty(), "{:?}", hit.problems);
    }
    dev.audit_ok().await;
}

/// A multi-turn conversation with a tool use and its result, images and a system
/// prompt, translated for a model of another wire format.
#[tokio::test]
async fn tool_results_and_images_reach_translated_models() {
    let mock = start_mock().await;
    let dir = data_dir();
    let dev = dev_over(&dir, &mock);
    let (_, key) = dev.funded_account("5.00").await;
    let image = json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}});
    for model in ["openai/gpt-4.1", "google/gemini-2.5-flash", CLAUDE] {
        let body = json!({
            "model": model, "max_tokens": 100,
            "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
            "tools": [{"name": "look", "description": "Look", "input_schema": {"type": "object", "properties": {}}}],
            "tool_choice": {"type": "auto"},
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "what is this"}, image]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "look", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "a cat"},
                    {"type": "text", "text": "so what is it"}]},
            ],
        });
        let (status, answer) = message(&dev, Auth::ApiKey(&key), &body).await;
        assert_eq!(status, 200, "{model}: {answer}");
        assert_eq!(answer["content"][0]["text"], "so what is it", "{model}");
    }
}

/// The current Claude models, by the undated ids Claude Code sends for `opus`, `sonnet`,
/// `haiku` and `fable` (and the previous Fable): a Messages request (native) and a chat
/// completion (translated, with a reasoning effort) each route to the model and cost
/// exactly its published prices times the usage (the mock's 4 input and 4 output tokens).
#[tokio::test]
async fn claude_code_ids_route_and_bill_at_their_catalogue_prices() {
    let mock = start_mock().await;
    let dir = data_dir();
    let dev = dev_over(&dir, &mock);
    let (account, key) = dev.funded_account("20.00").await;
    // Pico-USD per input and output token: USD per million tokens × 10⁶.
    let models: [(&str, i128, i128); 5] = [
        ("claude-opus-5-5", 4_000_000, 20_000_000),
        ("claude-sonnet-5-5", 2_000_000, 10_000_000),
        ("claude-haiku-5-5", 100_000, 500_000),
        ("claude-fable-5-2", 8_000_000, 40_000_000),
        ("claude-fable-5-1", 10_000_000, 50_000_000),
    ];
    for (model, prompt, completion) in models {
        let expected = 4 * prompt + 4 * completion;
        let before = available(&dev, &account).await;
        let (status, answer) =
            message(&dev, Auth::ApiKey(&key), &ask(model, "what a fine day")).await;
        assert_eq!(status, 200, "{model}: {answer}");
        assert_eq!(answer["usage"]["input_tokens"], 4, "{model}: {answer}");
        assert_eq!(answer["usage"]["output_tokens"], 4, "{model}: {answer}");
        assert_eq!(cost_pico(&answer["usage"]["cost"]), expected, "{model}");
        assert_eq!(before - available(&dev, &account).await, expected, "{model}");

        let before = available(&dev, &account).await;
        let body = json!({"model": model, "reasoning_effort": "high",
            "messages": [{"role": "user", "content": "what a fine day"}]});
        let (status, answer) = dev.chat(&key, &body).await;
        assert_eq!(status, 200, "{model}: {answer}");
        assert_eq!(answer["usage"]["prompt_tokens"], 4, "{model}: {answer}");
        assert_eq!(answer["usage"]["completion_tokens"], 4, "{model}: {answer}");
        assert_eq!(cost_pico(&answer["usage"]["cost"]), expected, "{model}");
        assert_eq!(before - available(&dev, &account).await, expected, "{model}");
    }
    dev.audit_ok().await;
}

/// What a current Claude model refuses (a thinking budget, non-default sampling, forced
/// tool use) is a 400 naming the parameter, decided when routing: nothing is charged, and
/// a fallback that takes it answers instead.
#[tokio::test]
async fn what_a_claude_model_refuses_is_refused_when_routing() {
    let mock = start_mock().await;
    let dir = data_dir();
    let dev = dev_over(&dir, &mock);
    let (account, key) = dev.funded_account("5.00").await;
    let before = available(&dev, &account).await;
    let mut budget = ask("claude-opus-5-5", "hello");
    budget["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
    let mut sampling = ask("claude-sonnet-5-5", "hello");
    sampling["temperature"] = json!(0.3);
    let mut forced = ask("claude-fable-5-2", "hello");
    forced["tools"] = json!([{"name": "f", "input_schema": {"type": "object"}}]);
    forced["tool_choice"] = json!({"type": "any"});
    for (body, param) in
        [(&budget, "thinking.type"), (&sampling, "temperature"), (&forced, "tool_choice.type")]
    {
        let (status, error) = message(&dev, Auth::ApiKey(&key), body).await;
        assert_eq!(status, 400, "{error}");
        assert_eq!(error["error"]["type"], "invalid_request_error");
        let text = error["error"]["message"].as_str().expect("message");
        assert!(text.contains(param), "{text}");
    }
    let chat = json!({"model": "claude-opus-5-5", "reasoning_effort": "none",
        "messages": [{"role": "user", "content": "hello"}]});
    let (status, error) = dev.chat(&key, &chat).await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["param"], "reasoning_effort", "{error}");
    assert_eq!(available(&dev, &account).await, before, "refusals cost nothing");
    // Without `max_tokens` a chat reserves the model's whole 128K output: 128,000 tokens
    // at Fable 5.2's $40 per million is more than this account's $5.
    let chat =
        json!({"model": "claude-fable-5-2", "messages": [{"role": "user", "content": "hi"}]});
    let (status, error) = dev.chat(&key, &chat).await;
    assert_eq!(status, 402, "{error}");
    let text = error["error"]["message"].as_str().expect("message");
    assert!(text.contains("128000 completion tokens"), "{text}");
    // An older Claude model takes the same request: the refusing candidate was skipped.
    sampling["models"] = json!([CLAUDE]);
    let (status, answer) = message(&dev, Auth::ApiKey(&key), &sampling).await;
    assert_eq!((status, answer["model"].as_str()), (200, Some(CLAUDE)), "{answer}");
    dev.audit_ok().await;
}
