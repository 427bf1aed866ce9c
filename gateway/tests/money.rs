//! Exact money against a misbehaving provider, through real HTTP: the real `solrouter dev`
//! binary with its OpenAI, Anthropic, Gemini and Cohere providers pointed at the mock
//! upstream, whose per-request scripts cut streams, pause, drop or truncate usage,
//! over-report, report absurd usage and ignore the completion limit.
//!
//! A property test draws a script, a client behaviour (reads all, hangs up after some
//! events, reads slowly), a balance and the API (Chat Completions or Anthropic
//! Messages), and checks after each request: the charge plus what was written off covers
//! what the client received at catalogue prices; the charge equals the cost the client
//! was shown, when one was shown; `available` never goes below zero; a write-off happens
//! only when the balance ran out or the answer produced nothing (`waived`: then nothing
//! is charged); every admitted request has a record; the bank audit is ok.

use crate::support;
use crate::support::{cost_pico, data_dir, dev_over, pico, start_mock, user, Dev};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};
use solrouter_gateway::catalog::Catalog;
use solrouter_gateway::providers::Usage;
use solrouter_ledger::PicoUsd;
use std::time::Duration;

/// One catalogue model per wire format, each served by the mock.
const MODELS: [&str; 4] = [
    "openai/gpt-4o-mini",
    "anthropic/claude-sonnet-4",
    "google/gemini-2.5-flash",
    "cohere/command-r-plus",
];
/// Longest a case waits for its hold to be settled (a client that left makes the
/// gateway read on until the upstream's usage arrives).
const SETTLE_WAIT: Duration = Duration::from_secs(30);

/// What the client does with the answer.
#[derive(Debug, Clone, Copy)]
enum Client {
    ReadsAll,
    /// Hangs up after this many SSE events (a plain request reads all).
    HangsUpAfter(usize),
    /// Waits this long between reads.
    ReadsSlowly(u64),
}

/// The API a case speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Messages,
}

/// What a Messages case without a completion limit asks for: more than any model's output
/// limit, which the gateway caps it at (Anthropic's API requires a limit).
const MESSAGES_MAX_TOKENS_ANY: u64 = 1_000_000;

#[derive(Debug, Clone)]
struct Case {
    api: Api,
    model: &'static str,
    stream: bool,
    words: u64,
    max_tokens: Option<u64>,
    cut_after: Option<u64>,
    pause: Option<(u64, u64)>,
    usage: &'static str,
    ignore_max_tokens: bool,
    client: Client,
    credit: &'static str,
}

impl Case {
    fn directive(&self) -> String {
        let mut knobs = vec![format!("words={}", self.words), format!("usage={}", self.usage)];
        if let Some(cut_after) = self.cut_after {
            knobs.push(format!("cut_after={cut_after}"));
        }
        if let Some((pause_ms, pause_after)) = self.pause {
            knobs.push(format!("pause_ms={pause_ms} pause_after={pause_after}"));
        }
        if self.ignore_max_tokens {
            knobs.push("ignore_max_tokens".to_owned());
        }
        format!("[[mock {}]]", knobs.join(" "))
    }

    fn body(&self) -> Value {
        let text = format!("please answer this question {}", self.directive());
        let mut body = json!({"model": self.model, "stream": self.stream, "messages": user(&text)});
        match (self.api, self.max_tokens) {
            (_, Some(max_tokens)) => body["max_tokens"] = json!(max_tokens),
            (Api::Messages, None) => body["max_tokens"] = json!(MESSAGES_MAX_TOKENS_ANY),
            (Api::Chat, None) => {}
        }
        body
    }

    fn path(&self) -> &'static str {
        match self.api {
            Api::Chat => "/v1/api/chat/completions",
            Api::Messages => "/v1/messages",
        }
    }
}

fn cases() -> impl Strategy<Value = Case> {
    let client = prop_oneof![
        Just(Client::ReadsAll),
        (1usize..12).prop_map(Client::HangsUpAfter),
        (1u64..30).prop_map(Client::ReadsSlowly),
    ];
    let usage =
        prop_oneof![Just("full"), Just("drop"), Just("partial"), Just("over:3"), Just("absurd"),];
    let api = prop_oneof![Just(Api::Chat), Just(Api::Messages)];
    (
        (0..MODELS.len(), any::<bool>(), 1u64..300, proptest::option::of(1u64..400), api),
        (proptest::option::of(1u64..20), proptest::option::of((1u64..150, 0u64..10))),
        (usage, any::<bool>(), client),
        prop_oneof![Just("0.0005"), Just("0.005"), Just("0.05"), Just("2.00")],
    )
        .prop_map(
            |(
                (model_idx, stream, words, max_tokens, api),
                (cut_after, pause),
                (usage, ignore_max_tokens, client),
                credit,
            )| Case {
                api,
                model: MODELS[model_idx],
                stream,
                words,
                max_tokens,
                cut_after,
                pause,
                usage,
                ignore_max_tokens,
                client,
                credit,
            },
        )
}

/// What the client saw of one request.
#[derive(Debug, Default)]
struct Seen {
    status: u16,
    id: Option<String>,
    /// Text and tool arguments received.
    text: String,
    /// The `usage.cost` shown, in pico-USD, if one was shown.
    cost_shown: Option<i128>,
}

async fn send(dev: &Dev, key: &str, case: &Case) -> Seen {
    let response = dev
        .client
        .post(dev.url(case.path()))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(case.body().to_string())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let mut seen = Seen { status, ..Seen::default() };
    if !case.stream || status != 200 {
        let body = support::read_json(response).await;
        seen.id = body["id"].as_str().map(str::to_owned);
        if let Some(content) = body["choices"][0]["message"]["content"].as_str() {
            seen.text.push_str(content);
        }
        for block in body["content"].as_array().into_iter().flatten() {
            seen.text.push_str(block["text"].as_str().unwrap_or_default());
        }
        seen.cost_shown = body["usage"].get("cost").map(cost_pico);
        return seen;
    }
    let mut response = response;
    let mut buffer = Vec::new();
    let mut n_events = 0;
    loop {
        if let Client::ReadsSlowly(ms) = case.client {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let Ok(Some(bytes)) = response.chunk().await else { break };
        buffer.extend_from_slice(&bytes);
        while let Some(end) = buffer.windows(2).position(|pair| pair == b"\n\n") {
            let event: Vec<u8> = buffer.drain(..end + 2).collect();
            // Anthropic's events start with an `event:` line.
            let Some(start) = event.windows(6).position(|window| window == b"data: ") else {
                continue;
            };
            let data = &event[start + 6..event.len() - 2];
            if data == b"[DONE]" {
                continue;
            }
            let event: Value = serde_json::from_slice(data).expect("event is JSON");
            let id = event["id"].as_str().or(event["message"]["id"].as_str());
            seen.id = id.map(str::to_owned).or(seen.id.take());
            let content = event["choices"][0]["delta"]["content"].as_str();
            if let Some(content) = content.or(event["delta"]["text"].as_str()) {
                seen.text.push_str(content);
            }
            if let Some(cost) = event["usage"].get("cost") {
                seen.cost_shown = Some(cost_pico(cost));
            }
            n_events += 1;
            if matches!(case.client, Client::HangsUpAfter(after) if n_events >= after) {
                return seen;
            }
        }
    }
    seen
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Waits until `account` holds nothing: every hold settled or released.
async fn settled(dev: &Dev, account: &str) -> Value {
    let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
    loop {
        let view = dev.account(account).await;
        if view["held"] == "0.00" || tokio::time::Instant::now() > deadline {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn check_case(dev: &Dev, catalog: &Catalog, case: &Case) {
    let (account, key) = dev.funded_account(case.credit).await;
    let seen = send(dev, &key, case).await;
    let view = settled(dev, &account).await;
    assert_eq!(view["held"], "0.00", "a hold outlived its request: {view}");
    let available = pico(&view["available"]);
    assert!(available >= 0, "available went below zero: {view}");
    let spent = pico(&view["spent"]);
    if seen.status == 402 {
        assert_eq!(spent, 0, "a refused request was charged: {view}");
        return;
    }
    let Some(id) = seen.id.clone() else {
        // Refused before anything reached the client (an upstream error, or the provider's
        // circuit opened by earlier faults): released, never charged.
        assert_ne!(seen.status, 200, "an answer without a generation id: {seen:?}");
        assert_eq!(spent, 0, "a failed request was charged: {view}");
        return;
    };
    let (status, record) = dev.get(&format!("/v1/api/generation?id={id}"), &key).await;
    if status == 404 {
        // Only a request that produced nothing anyone received is released unrecorded.
        assert!(seen.text.is_empty(), "text was received but no record exists: {seen:?}");
        assert_eq!(spent, 0, "charged without a record: {view}");
        return;
    }
    assert_eq!(status, 200, "{record}");
    let record = &record["data"];
    let charged = pico(&record["cost_usd"]);
    let written_off = pico(&record["written_off"]);
    assert_eq!(spent, charged, "the balance fell by the record's cost: {record}");
    if let Some(shown) = seen.cost_shown {
        assert_eq!(shown, charged, "the cost shown is what the ledger charged: {record}");
    }
    let model = catalog.get(case.model).expect("catalogued");
    let prompt_words = words("please answer this question");
    let received = Usage {
        prompt_tokens: prompt_words,
        completion_tokens: words(&seen.text),
        ..Usage::default()
    };
    let received_cost = model.cost(&received).0 as i128;
    assert!(
        charged + written_off >= received_cost,
        "billed {charged} + written off {written_off} < received {received_cost}: {record}"
    );
    if record["waived"] == true {
        assert_eq!(charged, 0, "a waived answer was charged: {record}");
        assert!(seen.text.is_empty(), "an answer with output was waived: {seen:?}");
    } else if written_off > 0 {
        assert_eq!(available, 0, "a write-off only when the balance ran out: {view}");
    }
}

#[test]
fn every_delivered_token_is_billed_and_no_balance_goes_below_zero() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mock = runtime.block_on(start_mock());
    let dir = data_dir();
    let dev = dev_over(&dir, &mock);
    let catalog = Catalog::builtin();
    let config = Config { cases: 48, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&cases(), |case| {
        runtime.block_on(check_case(&dev, &catalog, &case));
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    runtime.block_on(dev.audit_ok());
}

#[tokio::test]
async fn concurrent_over_limit_requests_never_overdraw_a_small_balance() {
    let mock = start_mock().await;
    let dir = data_dir();
    let dev = dev_over(&dir, &mock);
    let (account, key) = dev.funded_account("0.02").await;
    // Each asks for far more than mock/echo's output limit (4,096) and gets 20,000 words
    // from a provider that ignores the limit: the client receives them all, and they cost
    // more than the balance holds.
    let body = json!({"model": "mock/echo", "max_tokens": 100_000, "stream": true,
        "messages": user("[[mock words=20000 ignore_max_tokens]]")});
    // Interleaved with prompts over mock/echo's context (32,768 tokens): refused before
    // any money is held, whatever `max_tokens` says.
    let over_context = json!({"model": "mock/echo", "max_tokens": 1,
        "messages": user(&"word ".repeat(40_000))});
    let (dev, key) = (&dev, &key);
    let requests = (0..8).map(|request_idx| {
        let body = if request_idx % 4 == 3 { &over_context } else { &body };
        async move {
            let response = dev
                .client
                .post(dev.url("/v1/api/chat/completions"))
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .expect("request");
            let status = response.status().as_u16();
            let _ = response.bytes().await;
            (request_idx, status)
        }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(statuses.iter().any(|(_, status)| *status == 200), "{statuses:?}");
    for (request_idx, status) in &statuses {
        let expected: &[u16] = if request_idx % 4 == 3 { &[400] } else { &[200, 402] };
        assert!(expected.contains(status), "request {request_idx}: {statuses:?}");
    }
    let view = settled(dev, &account).await;
    assert!(pico(&view["available"]) >= 0, "{view}");
    assert!(pico(&view["spent"]) <= PicoUsd::parse_usd("0.02").unwrap().0 as i128, "{view}");
    assert!(pico(&view["written_off"]) > 0, "the excess was written off: {view}");
    dev.audit_ok().await;
}
