//! The OpenAI Responses API (`POST /v1/api/responses`) end to end through the real
//! `solrouter dev` binary, every provider answered by the mock in its own wire format:
//! plain and streamed answers of models of every provider as `response` objects and the
//! documented event sequence, `usage.cost` equal to the balance drop and to the
//! generation's record, a function call round trip's input, errors in OpenAI's shape
//! (what needs stored state refused by name), fallback, an answer cut by
//! `max_output_tokens`, and a broken stream's `response.failed` with its charge.

use crate::support::{cost_pico, data_dir, dev_over, pico, start_mock, Dev};
use serde_json::{json, Value};

const PATH: &str = "/v1/api/responses";
const MODELS: [&str; 4] =
    ["mock/echo", "openai/gpt-4.1", "anthropic/claude-sonnet-4", "google/gemini-2.5-flash"];

async fn create(dev: &Dev, key: &str, body: &Value) -> (u16, Value) {
    dev.post_raw(PATH, Some(key), body.to_string().into()).await
}

/// A streamed response's events as (event name, data): each data's `type` is its event
/// name and the `sequence_number`s count from 0.
async fn stream(dev: &Dev, key: &str, body: &Value) -> Vec<(String, Value)> {
    let response = dev
        .client
        .post(dev.url(PATH))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.expect("body");
    let events: Vec<(String, Value)> = text
        .split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            let (name, data) = event.split_once("\ndata: ").expect("event and data lines");
            let name = name.strip_prefix("event: ").expect("event line").to_owned();
            let data: Value = serde_json::from_str(data).expect("data is JSON");
            assert_eq!(data["type"], name.as_str(), "{event}");
            (name, data)
        })
        .collect();
    for (sequence, (_, data)) in events.iter().enumerate() {
        assert_eq!(data["sequence_number"], sequence, "{data}");
    }
    events
}

/// Checks the grammar of a text stream (created, in progress, one message item opened,
/// its text part filled and closed, the final event) and returns the text and the final
/// event's response.
fn text_stream(events: &[(String, Value)], last: &str) -> (String, Value) {
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    let n = names.len();
    assert!(n >= 9, "{names:?}");
    assert_eq!(
        names[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    assert!(names[4..n - 4].iter().all(|name| *name == "response.output_text.delta"), "{names:?}");
    assert_eq!(
        names[n - 4..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            last
        ]
    );
    let text: String =
        events[4..n - 4].iter().map(|(_, data)| data["delta"].as_str().expect("delta")).collect();
    assert_eq!(events[n - 4].1["text"], text.as_str());
    let response = events[n - 1].1["response"].clone();
    assert_eq!(response["output"], json!([events[n - 2].1["item"]]));
    (text, response)
}

async fn available(dev: &Dev, account: &str) -> i128 {
    pico(&dev.account(account).await["available"])
}

/// The answer's message text.
fn output_text(response: &Value) -> &str {
    let message = &response["output"][0];
    let kind = (&message["type"], &message["role"]);
    assert_eq!(kind, (&json!("message"), &json!("assistant")), "{response}");
    message["content"][0]["text"].as_str().expect("output_text")
}

/// The generation record of `id` holds `cost`, the model and whether it streamed.
async fn check_record(dev: &Dev, key: &str, id: &str, model: &str, cost: i128, streamed: bool) {
    let (status, record) = dev.get(&format!("/v1/api/generation?id={id}"), key).await;
    assert_eq!(status, 200, "{record}");
    let record = &record["data"];
    assert_eq!(
        (record["model"].as_str(), record["streamed"].as_bool()),
        (Some(model), Some(streamed))
    );
    assert_eq!(pico(&record["cost_usd"]), cost, "{record}");
}

/// Plain and streamed, models of four providers: the answer as a `response` object and as
/// the documented events, its `usage.cost` exactly the balance drop and the record.
#[tokio::test]
async fn every_model_answers_as_a_response_with_its_cost() {
    let mock = start_mock().await;
    let dir = data_dir();
    let dev = dev_over(&dir, &mock);
    let (account, key) = dev.funded_account("5.00").await;
    for model in MODELS {
        let before = available(&dev, &account).await;
        let body = json!({"model": model, "input": "what a fine day", "instructions": "echo",
            "store": true, "temperature": 0.5, "top_p": 0.9, "metadata": {"run": "7"}});
        let (status, response) = create(&dev, &key, &body).await;
        assert_eq!(status, 200, "{model}: {response}");
        // The request's parameters are echoed, the rest keep OpenAI's defaults.
        assert_eq!(
            [&response["instructions"], &response["temperature"], &response["top_p"]],
            [&json!("echo"), &json!(0.5), &json!(0.9)],
            "{response}"
        );
        assert_eq!(response["metadata"], json!({"run": "7"}));
        assert_eq!(response["tools"], json!([]));
        assert_eq!(response["text"], json!({"format": {"type": "text"}}));
        assert_eq!(
            (&response["object"], &response["status"], &response["model"], &response["store"]),
            (&json!("response"), &json!("completed"), &json!(model), &json!(false)),
            "{response}"
        );
        assert_eq!(output_text(&response), "what a fine day", "{model}");
        let usage = &response["usage"];
        assert_eq!(usage["output_tokens"], 4, "{model}: {usage}");
        assert_eq!(usage["input_tokens"], 5, "{model}: {usage}");
        assert_eq!(usage["total_tokens"], 9, "{model}: {usage}");
        let cost = cost_pico(&usage["cost"]);
        assert!(cost > 0, "{model}");
        assert_eq!(before - available(&dev, &account).await, cost, "{model}: the balance drop");
        let id = response["id"].as_str().expect("id");
        check_record(&dev, &key, id, model, cost, false).await;

        let before = available(&dev, &account).await;
        let body = json!({"model": model, "stream": true, "max_output_tokens": 50,
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "one two three four five"}]}]});
        let events = stream(&dev, &key, &body).await;
        let (text, response) = text_stream(&events, "response.completed");
        assert_eq!(text, "one two three four five", "{model}");
        assert_eq!(events[0].1["response"]["model"], model);
        assert_eq!(events[0].1["response"]["max_output_tokens"], 50);
        assert_eq!(response["max_output_tokens"], 50);
        assert_eq!(response["status"], "completed");
        assert_eq!(response["usage"]["output_tokens"], 5, "{model}: {response}");
        let cost = cost_pico(&response["usage"]["cost"]);
        assert_eq!(before - available(&dev, &account).await, cost, "{model}: the balance drop");
        let id = response["id"].as_str().expect("id");
        check_record(&dev, &key, id, model, cost, true).await;
    }
    dev.audit_ok().await;
}

/// A function call round trip's second request (the model's call and the caller's output
/// in `input`, the function tool declared, a question after them) reaches every
/// provider's format: the mock answers it echoing the question.
#[tokio::test]
async fn a_function_call_round_trip_reaches_every_provider() {
    let mock = start_mock().await;
    let dir = data_dir();
    let dev = dev_over(&dir, &mock);
    let (_, key) = dev.funded_account("5.00").await;
    // `mock/echo` takes no tools: the catalogue models do.
    for model in &MODELS[1..] {
        let body = json!({
            "model": model,
            "tools": [{"type": "function", "name": "weather", "description": "the weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": "auto",
            "input": [
                {"role": "user", "content": "weather in Paris"},
                {"type": "function_call", "call_id": "call_1", "name": "weather",
                    "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                {"role": "user", "content": "and tomorrow"},
            ],
        });
        let (status, response) = create(&dev, &key, &body).await;
        assert_eq!(status, 200, "{model}: {response}");
        assert_eq!(output_text(&response), "and tomorrow", "{model}");
        assert_eq!(
            (&response["tools"], &response["tool_choice"]),
            (&body["tools"], &json!("auto"))
        );
        assert!(cost_pico(&response["usage"]["cost"]) > 0);
    }
    dev.audit_ok().await;
}

/// Errors in OpenAI's shape with the chat endpoint's statuses; what needs stored state
/// refused by name; fallback; `max_output_tokens` cutting an answer; a stream broken
/// after its start ending in `error` and `response.failed`, charged what was delivered.
#[tokio::test]
async fn errors_fallback_and_broken_streams() {
    let mock = start_mock().await;
    let dir = data_dir();
    let dev = dev_over(&dir, &mock);
    let (account, key) = dev.funded_account("5.00").await;
    let (_, poor_key) = dev.funded_account("0.000001").await;
    let ask = |model: &str| json!({"model": model, "input": "hi"});
    let mut stateful = ask("mock/echo");
    stateful["previous_response_id"] = json!("resp_123");
    let mut builtin = ask("mock/echo");
    builtin["tools"] = json!([{"type": "web_search"}]);
    let cases = [
        ("sr_bogus", ask("mock/echo"), 401, None),
        (key.as_str(), stateful, 400, Some("previous_response_id")),
        (key.as_str(), builtin, 400, Some("tools[0].type")),
        (key.as_str(), json!({"model": "mock/echo"}), 400, Some("input")),
        (key.as_str(), ask("nobody/nothing"), 404, Some("model")),
        (poor_key.as_str(), ask("openai/gpt-4.1"), 402, None),
        (key.as_str(), ask("mock/unavailable"), 503, None),
    ];
    for (bearer, body, status, param) in cases {
        let (got, error) = create(&dev, bearer, &body).await;
        assert_eq!(got, status, "{body}: {error}");
        assert!(error["error"]["message"].is_string(), "{error}");
        assert!(error["error"]["type"].is_string(), "{error}");
        if let Some(param) = param {
            assert_eq!(error["error"]["param"], param, "{error}");
        }
    }
    let response = dev.client.get(dev.url(PATH)).send().await.expect("request");
    assert_eq!(response.status(), 405);
    let (status, error) = dev.get(&format!("{PATH}/gen-0"), &key).await;
    assert_eq!(status, 404, "{error}");
    assert!(error["error"]["message"].as_str().expect("message").contains("stores no responses"));

    let mut body = ask("mock/unavailable");
    body["models"] = json!(["mock/echo"]);
    let (status, response) = create(&dev, &key, &body).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!((response["model"].as_str(), output_text(&response)), (Some("mock/echo"), "hi"));

    let body =
        json!({"model": "mock/echo", "input": "[[mock words=30]] go", "max_output_tokens": 3});
    let (status, response) = create(&dev, &key, &body).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["status"], "incomplete", "{response}");
    assert_eq!(response["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(response["usage"]["output_tokens"], 3);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let events = stream(&dev, &key, &streamed).await;
    let (_, response) = text_stream(&events, "response.incomplete");
    assert_eq!(response["incomplete_details"]["reason"], "max_output_tokens");

    for model in ["mock/echo", "anthropic/claude-sonnet-4"] {
        let before = available(&dev, &account).await;
        let body =
            json!({"model": model, "input": "[[mock words=30 cut_after=6]] go", "stream": true});
        let events = stream(&dev, &key, &body).await;
        let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names[names.len() - 2..], ["error", "response.failed"], "{model}: {names:?}");
        assert!(!names.contains(&"response.completed"), "{model}");
        let failed = &events[names.len() - 1].1["response"];
        assert_eq!(failed["status"], "failed");
        assert!(failed["error"]["message"].is_string(), "{failed}");
        let cost = cost_pico(&failed["usage"]["cost"]);
        assert!(cost > 0, "{model}: {failed}");
        assert_eq!(before - available(&dev, &account).await, cost, "{model}: the balance drop");
    }
    dev.audit_ok().await;
}
