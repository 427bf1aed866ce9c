//! End to end through the real binary: paid completions, plain and streamed, through the
//! mock provider; every reported cost is exactly what the balance lost.

use crate::support;
use crate::support::{cost_pico, data_dir, path, pico, user, Dev};
use serde_json::json;

#[tokio::test]
async fn plain_and_streamed_completions_cost_what_the_balance_loses() {
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &[]);
    let key = dev.demo_key.clone().expect("first start prints the demo key");
    let before = dev.account(&dev.demo_account).await;
    assert_eq!(before["credits"], "5.00");

    let (status, plain) =
        dev.chat(&key, &json!({"model": "mock/echo", "messages": user("hello there world")})).await;
    assert_eq!(status, 200, "{plain}");
    assert_eq!(plain["object"], "chat.completion");
    assert_eq!(plain["model"], "mock/echo");
    assert_eq!(plain["choices"][0]["message"]["content"], "hello there world");
    let plain_cost = cost_pico(&plain["usage"]["cost"]);
    assert!(plain_cost > 0);

    let body =
        json!({"model": "mock/echo", "stream": true, "messages": user("one two three four")});
    let (events, done) = dev.chat_stream(&key, &body).await;
    assert!(done, "a complete stream ends with [DONE]");
    let text: String = events
        .iter()
        .filter_map(|event| event["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "one two three four");
    let last = events.last().expect("events");
    assert_eq!(last["choices"], json!([]));
    let streamed_cost = cost_pico(&last["usage"]["cost"]);
    assert!(streamed_cost > 0);
    let stream_id = last["id"].as_str().expect("id");
    assert!(events.iter().all(|event| event["id"] == stream_id));

    let after = dev.account(&dev.demo_account).await;
    assert_eq!(pico(&before["available"]) - pico(&after["available"]), plain_cost + streamed_cost);
    assert_eq!(pico(&after["spent"]), plain_cost + streamed_cost);
    assert_eq!(after["held"], "0.00");
    assert_eq!(after["written_off"], "0.00", "usage within the balance writes nothing off");
    // What each request waited for the ledger, and the ledger's commits, on /metrics.
    let metrics = dev.client.get(dev.url("/metrics")).send().await.expect("metrics");
    let text = metrics.text().await.expect("text");
    for op in ["reserve", "settle"] {
        let line = format!("solrouter_ledger_wait_seconds_count{{op=\"{op}\"}} 2");
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
    let commits = text.lines().find_map(|line| {
        line.strip_prefix(r#"solrouter_ledger_commit_seconds_count{group="0"} "#)?
            .parse::<u64>()
            .ok()
    });
    // The demo account's setup, then two reserves and two settles.
    assert!(commits.is_some_and(|n| n >= 4), "{text}");
    // What the settles charged, by model, in whole micro-USD of each request's charge.
    let micro_usd = (plain_cost / 1_000_000 + streamed_cost / 1_000_000).to_string();
    let line = format!(r#"solrouter_cost_micro_usd_total{{model="mock/echo"}} {micro_usd}"#);
    assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");

    // The records, the credits and the key's usage agree with the responses.
    for (id, cost, streamed) in
        [(plain["id"].as_str().expect("id"), plain_cost, false), (stream_id, streamed_cost, true)]
    {
        let (status, record) = dev.get(&format!("/v1/api/generation?id={id}"), &key).await;
        assert_eq!(status, 200, "{record}");
        assert_eq!(record["data"]["model"], "mock/echo");
        assert_eq!(record["data"]["provider_name"], "mock");
        assert_eq!(record["data"]["status"], 200);
        assert_eq!(record["data"]["streamed"], streamed);
        assert_eq!(pico(&record["data"]["cost_usd"]), cost);
        assert_eq!(record["data"]["written_off"], "0.00");
        assert!(record["data"]["usage_estimated"].is_boolean(), "{record}");
        assert!(record["data"]["usage_clamped"].is_boolean(), "{record}");
        assert!(record["data"]["tokens_completion"].as_u64().expect("tokens") > 0);
    }
    let (_, credits) = dev.get("/v1/api/credits", &key).await;
    assert_eq!(credits["data"]["total_credits"], 5.0);
    assert_eq!(cost_pico(&credits["data"]["total_usage"]), plain_cost + streamed_cost);
    let (_, key_info) = dev.get("/v1/api/key", &key).await;
    assert_eq!(key_info["data"]["label"], "demo");
    assert_eq!(cost_pico(&key_info["data"]["usage"]), plain_cost + streamed_cost);
    dev.audit_ok().await;
}

/// A stream the gateway has to wait for gets its head and first events at the first wait,
/// long before the upstream ends (relay.rs holds a stream's head only while upstream has
/// more at hand, so that an answer that arrived whole goes out in one write).
#[tokio::test]
async fn a_paced_stream_reaches_the_client_as_it_comes() {
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &[]);
    let key = dev.demo_key.clone().expect("first start prints the demo key");
    // `mock-slow`: 100 ms to the first token, then 50 a second: 40 words take ~0.9 s.
    let body = json!({"model": "mock/shared", "stream": true, "provider": {"only": ["mock-slow"]},
        "messages": user("[[mock words=40]]")});
    let sent = std::time::Instant::now();
    let mut response = dev.post_chat(&dev.client, &key, &body).await;
    let head_at = sent.elapsed();
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.expect("read").expect("a first chunk");
    let first_at = sent.elapsed();
    assert!(first.starts_with(b"data: "), "{first:?}");
    let mut text = first.to_vec();
    while let Some(chunk) = response.chunk().await.expect("read") {
        text.extend_from_slice(&chunk);
    }
    let end_at = sent.elapsed();
    assert!(text.ends_with(b"data: [DONE]\n\n"), "{}", String::from_utf8_lossy(&text));
    let early = std::time::Duration::from_millis(300);
    assert!(head_at + early < end_at, "head at {head_at:?}, end at {end_at:?}");
    assert!(first_at + early < end_at, "first event at {first_at:?}, end at {end_at:?}");
    dev.audit_ok().await;
}

#[tokio::test]
async fn fallback_serves_from_the_next_model_and_failures_cost_nothing() {
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &[]);
    let key = dev.demo_key.clone().expect("demo key");
    let before = dev.account(&dev.demo_account).await;

    let body = json!({"model": "mock/unavailable", "models": ["mock/echo"], "route": "fallback",
                      "messages": user("still here")});
    let (status, answer) = dev.chat(&key, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model"], "mock/echo");
    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let (events, done) = dev.chat_stream(&key, &stream_body).await;
    assert!(done);
    assert_eq!(events[0]["model"], "mock/echo");
    // As on OpenRouter, `models` alone: its first entry is tried first.
    let alone = json!({"models": ["mock/unavailable", "mock/echo"], "messages": user("alone")});
    let (status, alone) = dev.chat(&key, &alone).await;
    assert_eq!((status, &alone["model"]), (200, &json!("mock/echo")), "{alone}");
    let costs = cost_pico(&answer["usage"]["cost"])
        + cost_pico(&events.last().expect("last")["usage"]["cost"])
        + cost_pico(&alone["usage"]["cost"]);

    // Without a fallback the outage reaches the client, and the hold is released.
    for stream in [false, true] {
        let body = json!({"model": "mock/unavailable", "stream": stream, "messages": user("x")});
        let (status, error) = dev.chat(&key, &body).await;
        assert_eq!(status, 503, "{error}");
        assert_eq!(error["error"]["code"], "upstream_unavailable");
    }
    let after = dev.account(&dev.demo_account).await;
    assert_eq!(pico(&before["available"]) - pico(&after["available"]), costs);
    assert_eq!(after["held"], "0.00");
    dev.audit_ok().await;
}

#[tokio::test]
async fn models_list_prices_per_token_and_operations_endpoints_answer() {
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &[]);
    let response = dev.client.get(dev.url("/v1/api/models")).send().await.expect("request");
    assert_eq!(response.status(), 200);
    let list = support::read_json(response).await;
    assert_eq!(list["object"], "list");
    let echo = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|model| model["id"] == "mock/echo")
        .expect("echo");
    assert_eq!(
        echo["pricing"],
        json!({"prompt": "0.000001", "completion": "0.000002", "input_cache_read": "0.000001",
            "input_cache_write": "0.000001", "request": "0", "image": "0"})
    );
    // 2025-01-01, the catalogue's date for the mock.
    assert_eq!(echo["created"], 1_735_689_600);
    let parameters = echo["supported_parameters"].as_array().expect("supported_parameters");
    assert!(parameters.contains(&json!("temperature")), "{parameters:?}");
    assert!(!parameters.contains(&json!("tools")), "mock/echo takes no tools: {parameters:?}");
    assert_eq!(echo["architecture"]["input_modalities"], json!(["text"]));
    assert!(echo["context_length"].as_u64().expect("context") > 0);
    // Operations endpoints answer without a key.
    let health = dev.client.get(dev.url("/healthz")).send().await.expect("healthz");
    assert_eq!(health.status(), 200);
    let metrics = dev.client.get(dev.url("/metrics")).send().await.expect("metrics");
    let text = metrics.text().await.expect("text");
    assert!(text.contains("solrouter_http_requests_total"), "{text}");
    // Dev mode's ledger node reports on the same page.
    assert!(text.contains("solrouter_ledger_time_behind_ms{"), "{text}");
    // What only grows is a counter: its rate is what a dashboard plots.
    for counter in ["batches_proposed_total", "commands_proposed_total", "history_expired_total"] {
        assert!(text.contains(&format!("# TYPE solrouter_ledger_{counter} counter")), "{text}");
    }
    // Without OPENAI_API_KEY the OpenAI models are not offered.
    assert!(list["data"]
        .as_array()
        .expect("data")
        .iter()
        .all(|model| model["owned_by"] != "openai"));
}

/// The request history: pages newest first without gaps, filters, the per-day and
/// per-hour usage, and clear errors for bad parameters.
#[tokio::test]
async fn history_pages_filters_and_usage_per_day() {
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &[]);
    let key = dev.demo_key.clone().expect("demo key");
    let mut ids = Vec::new();
    let mut total_cost = 0;
    for n in 0..7 {
        let body = json!({"model": "mock/echo", "messages": user(&format!("request number {n}"))});
        let (status, answer) = dev.chat(&key, &body).await;
        assert_eq!(status, 200, "{answer}");
        ids.push(answer["id"].as_str().expect("id").to_owned());
        total_cost += cost_pico(&answer["usage"]["cost"]);
    }
    ids.reverse();

    let mut seen = Vec::new();
    let mut url = "/v1/api/generations?limit=3".to_owned();
    loop {
        let (status, page) = dev.get(&url, &key).await;
        assert_eq!(status, 200, "{page}");
        let data = page["data"].as_array().expect("data");
        assert!(data.len() <= 3);
        seen.extend(data.iter().map(|record| record["id"].as_str().expect("id").to_owned()));
        match page["next_cursor"].as_str() {
            Some(cursor) => url = format!("/v1/api/generations?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every request once, newest first");

    let count = |page: &serde_json::Value| page["data"].as_array().expect("data").len();
    let (_, echo) = dev.get("/v1/api/generations?model=mock%2Fecho&status=200", &key).await;
    assert_eq!(count(&echo), 7, "{echo}");
    let (_, other) = dev.get("/v1/api/generations?model=mock/other", &key).await;
    assert_eq!(count(&other), 0);
    let (_, failed) = dev.get("/v1/api/generations?status=502", &key).await;
    assert_eq!(count(&failed), 0);
    let (_, future) = dev.get("/v1/api/generations?from=4102444800", &key).await;
    assert_eq!(count(&future), 0);
    let (_, key_info) = dev.get("/v1/api/key", &key).await;
    let key_id = key_info["data"]["id"].as_str().expect("key id");
    let (_, by_key) = dev.get(&format!("/v1/api/generations?key={key_id}"), &key).await;
    assert_eq!(count(&by_key), 7, "{by_key}");

    for bucket in ["day", "hour"] {
        let (status, activity) = dev.get(&format!("/v1/api/activity?bucket={bucket}"), &key).await;
        assert_eq!(status, 200, "{activity}");
        let rows = activity["data"].as_array().expect("rows");
        let requests: u64 = rows.iter().map(|row| row["requests"].as_u64().expect("n")).sum();
        let cost: i128 = rows.iter().map(|row| pico(&row["cost_usd"])).sum();
        assert_eq!((requests, cost), (7, total_cost), "{activity}");
        assert!(rows.iter().all(|row| row["model"] == "mock/echo" && row["key_id"] == key_id));
    }

    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("cursor=junk", "cursor"),
        ("key=zz", "key"),
        ("status=abc", "status"),
    ] {
        let (status, error) = dev.get(&format!("/v1/api/generations?{query}"), &key).await;
        assert_eq!(status, 400, "{query}: {error}");
        assert_eq!(error["error"]["param"], param, "{error}");
    }
    let (status, error) = dev.get("/v1/api/activity?bucket=week", &key).await;
    assert_eq!((status, error["error"]["param"].as_str()), (400, Some("bucket")), "{error}");
}

/// The server peeks at a connection's first bytes to serve HTTP/1 without the protocol
/// detection's read (`server.rs`, `speaks_http1`): HTTP/1.1 clients and HTTP/2 clients
/// with prior knowledge both still get streamed completions.
#[tokio::test]
async fn http1_and_http2_clients_are_both_served() {
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &[]);
    let key = dev.demo_key.clone().expect("first start prints the demo key");
    let body = json!({"model": "mock/echo", "stream": true, "messages": user("a b c")});
    for (client, version) in [
        (reqwest::Client::builder().http1_only().build().unwrap(), reqwest::Version::HTTP_11),
        (
            reqwest::Client::builder().http2_prior_knowledge().build().unwrap(),
            reqwest::Version::HTTP_2,
        ),
    ] {
        let response = dev.post_chat(&client, &key, &body).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), version);
        let text = response.text().await.unwrap();
        assert!(text.contains("\"content\":\"a"), "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    }
    dev.kill();
}
