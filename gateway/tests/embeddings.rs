//! `POST /v1/api/embeddings` end to end through the real binary: the built-in mock's
//! `mock/embed` in float and base64, OpenAI's wire format over the mock, fallback
//! across models, the OpenAI-shaped refusals, and every `usage.cost` exactly what the
//! balance lost and the record says.

use crate::support::{cost_pico, data_dir, dev_over, path, pico, start_mock, Dev};
use serde_json::{json, Value};

/// The mock's price: $1 per million input tokens, one token per word.
const MOCK_PICO_PER_TOKEN: i128 = 1_000_000;

async fn embed(dev: &Dev, key: &str, body: &Value) -> (u16, Value) {
    let body = reqwest::Body::from(body.to_string());
    dev.post_raw("/v1/api/embeddings", Some(key), body).await
}

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

/// OpenAI's base64: little-endian f32s.
fn decode(value: &Value) -> Vec<f32> {
    let text = value.as_str().expect("a base64 string");
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n_bits = 0;
    let mut bytes = Vec::new();
    for byte in text.bytes().filter(|byte| *byte != b'=') {
        let sextet = alphabet.iter().position(|letter| *letter == byte).expect("base64") as u32;
        bits = (bits << 6) | sextet;
        n_bits += 6;
        if n_bits >= 8 {
            n_bits -= 8;
            bytes.push((bits >> n_bits) as u8);
            bits &= (1 << n_bits) - 1;
        }
    }
    assert_eq!(bytes.len() % 4, 0);
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// The record of `answer` agrees with it: model, provider, input tokens, cost.
async fn check_record(dev: &Dev, key: &str, answer: &Value, provider: &str) {
    let id = answer["id"].as_str().expect("id");
    let (status, record) = dev.get(&format!("/v1/api/generation?id={id}"), key).await;
    assert_eq!(status, 200, "{record}");
    let record = &record["data"];
    assert_eq!(record["model"], answer["model"]);
    assert_eq!(record["provider_name"], provider);
    assert_eq!(record["tokens_prompt"], answer["usage"]["prompt_tokens"]);
    assert_eq!(record["tokens_completion"], 0);
    assert_eq!(record["streamed"], false);
    assert_eq!(pico(&record["cost_usd"]), cost_pico(&answer["usage"]["cost"]));
}

#[tokio::test]
async fn mock_embeddings_in_float_and_base64_cost_what_the_balance_loses() {
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &[]);
    let key = dev.demo_key.clone().expect("first start prints the demo key");
    let before = dev.account(&dev.demo_account).await;

    let inputs = json!(["the quick brown fox", "jumps", "over the lazy dog"]);
    let (status, float) = embed(&dev, &key, &json!({"model": "mock/embed", "input": inputs})).await;
    assert_eq!(status, 200, "{float}");
    assert_eq!(float["object"], "list");
    assert_eq!(float["model"], "mock/embed");
    assert_eq!(float["provider"], "mock");
    let data = float["data"].as_array().expect("data");
    assert_eq!(data.len(), 3);
    for (index, item) in data.iter().enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], index);
        assert_eq!(floats(&item["embedding"]).len(), 64, "the default length");
    }
    assert_eq!(float["usage"]["prompt_tokens"], 4 + 1 + 4);
    assert_eq!(float["usage"]["total_tokens"], 9);
    let float_cost = cost_pico(&float["usage"]["cost"]);
    assert_eq!(float_cost, 9 * MOCK_PICO_PER_TOKEN);

    // The same inputs in base64: the same vectors, bit for bit.
    let body = json!({"model": "mock/embed", "input": inputs, "encoding_format": "base64"});
    let (status, base64) = embed(&dev, &key, &body).await;
    assert_eq!(status, 200, "{base64}");
    for (float_item, base64_item) in data.iter().zip(base64["data"].as_array().expect("data")) {
        assert_eq!(decode(&base64_item["embedding"]), floats(&float_item["embedding"]));
    }
    let base64_cost = cost_pico(&base64["usage"]["cost"]);
    assert_eq!(base64_cost, float_cost);

    // One string, a shorter vector.
    let body = json!({"model": "mock/embed", "input": "hello", "dimensions": 8});
    let (status, short) = embed(&dev, &key, &body).await;
    assert_eq!(status, 200, "{short}");
    assert_eq!(floats(&short["data"][0]["embedding"]).len(), 8);
    let short_cost = cost_pico(&short["usage"]["cost"]);
    assert_eq!(short_cost, MOCK_PICO_PER_TOKEN);

    let after = dev.account(&dev.demo_account).await;
    let spent = float_cost + base64_cost + short_cost;
    assert_eq!(pico(&before["available"]) - pico(&after["available"]), spent);
    assert_eq!(pico(&after["spent"]), spent);
    assert_eq!(after["held"], "0.00");
    for answer in [&float, &base64, &short] {
        check_record(&dev, &key, answer, "mock").await;
    }

    // Usage the provider does not report is counted (one token per word for the mock);
    // usage beyond what the inputs can be is clamped to the hold's bound: the bytes plus
    // 8 per input.
    let dropped = json!({"model": "mock/embed", "input": "[[mock usage=drop]] a b c"});
    let (status, dropped) = embed(&dev, &key, &dropped).await;
    assert_eq!(status, 200, "{dropped}");
    assert_eq!(dropped["usage"]["prompt_tokens"], 5);
    let over = json!({"model": "mock/embed", "input": "[[mock usage=over:1000]] hi"});
    let (status, over) = embed(&dev, &key, &over).await;
    assert_eq!(status, 200, "{over}");
    assert_eq!(over["usage"]["prompt_tokens"], 27 + 8);
    for (answer, estimated, clamped) in [(&dropped, true, false), (&over, false, true)] {
        check_record(&dev, &key, answer, "mock").await;
        let id = answer["id"].as_str().expect("id");
        let (_, record) = dev.get(&format!("/v1/api/generation?id={id}"), &key).await;
        assert_eq!(record["data"]["usage_estimated"], estimated, "{record}");
        assert_eq!(record["data"]["usage_clamped"], clamped, "{record}");
    }
    let spent = spent + cost_pico(&dropped["usage"]["cost"]) + cost_pico(&over["usage"]["cost"]);
    assert_eq!(pico(&dev.account(&dev.demo_account).await["spent"]), spent);

    // OpenAI's token-id inputs (LangChain's default): the mock counts one token per id.
    let ids = json!({"model": "mock/embed", "input": [[101, 2023, 2003], [7, 8]]});
    let (status, ids) = embed(&dev, &key, &ids).await;
    assert_eq!(status, 200, "{ids}");
    assert_eq!(ids["data"].as_array().expect("data").len(), 2);
    assert_eq!(ids["usage"]["prompt_tokens"], 5);
    check_record(&dev, &key, &ids, "mock").await;

    // Listed in /models as an embedding model.
    let (status, models) = dev.get("/v1/api/models", &key).await;
    assert_eq!(status, 200);
    let listed = models["data"].as_array().expect("data");
    let mock_embed = listed.iter().find(|model| model["id"] == "mock/embed").expect("listed");
    assert_eq!(mock_embed["architecture"]["output_modalities"], json!(["embeddings"]));
    assert_eq!(mock_embed["pricing"]["prompt"], "0.000001");
    dev.audit_ok().await;
}

#[tokio::test]
async fn refusals_are_openai_shaped_and_cost_nothing() {
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &[]);
    let key = dev.demo_key.clone().expect("demo key");
    let before = dev.account(&dev.demo_account).await;
    let check = |(status, error): (u16, Value), expected: u16, param: Option<&str>| {
        assert_eq!(status, expected, "{error}");
        assert!(error["error"]["message"].is_string(), "{error}");
        if let Some(param) = param {
            assert_eq!(error["error"]["param"], param, "{error}");
        }
    };
    let cases = [
        (json!({"model": "mock/embed", "input": ""}), 400, Some("input")),
        (json!({"model": "mock/embed", "input": []}), 400, Some("input")),
        (json!({"model": "mock/embed", "input": vec!["a"; 2049]}), 400, Some("input")),
        (json!({"model": "mock/embed", "input": "a", "dimensions": 65}), 400, Some("dimensions")),
        (json!({"model": "mock/embed", "input": "a", "encoding_format": "int8"}), 400, None),
        (json!({"model": "mock/echo", "input": "a"}), 400, Some("model")),
        (json!({"model": "nobody/nothing", "input": "a"}), 404, None),
        // Token ids go only to providers that take them.
        (json!({"model": "cohere/embed-v4.0", "input": [1, 2]}), 400, Some("input")),
        // Configured nowhere in a fresh dev: no key for OpenAI.
        (json!({"model": "openai/text-embedding-3-small", "input": "a"}), 503, None),
        // The `provider` object, as a chat's: `mock` serves `mock/embed` at $1 per million.
        (
            json!({"model": "mock/embed", "input": "a", "provider": {"only": ["openai"]}}),
            400,
            Some("provider.only"),
        ),
        (
            json!({"model": "mock/embed", "input": "a", "provider": {"max_price": {"prompt": 0.5}}}),
            400,
            Some("provider.max_price"),
        ),
        (
            json!({"model": "mock/embed", "input": "a", "provider": {"sort": "fast"}}),
            400,
            Some("provider.sort"),
        ),
    ];
    for (body, status, param) in cases {
        check(embed(&dev, &key, &body).await, status, param);
    }
    // An embedding model is no chat model.
    let chat = json!({"model": "mock/embed", "messages": [{"role": "user", "content": "hi"}]});
    check(dev.chat(&key, &chat).await, 400, Some("model"));
    // No key, no embeddings.
    let body = reqwest::Body::from(json!({"model": "mock/embed", "input": "a"}).to_string());
    check(dev.post_raw("/v1/api/embeddings", None, body).await, 401, None);

    // A balance below the worst case: "hello" may cost 5 + 8 tokens at $1 per million.
    let (poor, poor_key) = dev.funded_account("0.00001").await;
    let (status, error) =
        embed(&dev, &poor_key, &json!({"model": "mock/embed", "input": "hello"})).await;
    assert_eq!(status, 402, "{error}");
    assert_eq!(error["error"]["code"], "insufficient_credits", "{error}");
    assert!(error["error"]["message"].as_str().expect("message").contains("13 input tokens"));
    assert_eq!(dev.account(&poor).await["spent"], "0.00");

    // A scripted upstream failure is relayed and costs nothing.
    let failing = json!({"model": "mock/embed", "input": "[[mock status=500]] hi"});
    check(embed(&dev, &key, &failing).await, 502, None);
    let after = dev.account(&dev.demo_account).await;
    assert_eq!(after["available"], before["available"]);
    assert_eq!(after["held"], "0.00");
    dev.audit_ok().await;
}

#[tokio::test]
async fn openai_wire_over_the_mock_and_fallback_across_models() {
    // OpenAI's embeddings format against the mock standing in for api.openai.com.
    let mock = start_mock().await;
    let dir = data_dir();
    let dev = dev_over(&dir, &mock);
    let key = dev.demo_key.clone().expect("demo key");
    let before = dev.account(&dev.demo_account).await;
    for encoding in ["float", "base64"] {
        let body = json!({"model": "openai/text-embedding-3-small", "input": ["one two", "three"],
            "dimensions": 256, "encoding_format": encoding});
        let (status, answer) = embed(&dev, &key, &body).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["provider"], "openai");
        let vector = match encoding {
            "float" => floats(&answer["data"][1]["embedding"]),
            _ => decode(&answer["data"][1]["embedding"]),
        };
        assert_eq!(vector.len(), 256);
        assert_eq!(answer["usage"]["prompt_tokens"], 3);
        // 3 tokens at $0.02 per million.
        assert_eq!(cost_pico(&answer["usage"]["cost"]), 3 * 20_000);
        check_record(&dev, &key, &answer, "openai").await;
    }
    let after = dev.account(&dev.demo_account).await;
    assert_eq!(pico(&before["available"]) - pico(&after["available"]), 2 * 3 * 20_000);
    drop(dev);

    // OpenAI unreachable (nothing listens on port 1): the request falls back to the mock.
    let dir = data_dir();
    let dev = Dev::start(
        &path(&dir),
        &[("OPENAI_API_KEY", "sk-test"), ("SOLROUTER_OPENAI_BASE_URL", "http://127.0.0.1:1/v1")],
    );
    let key = dev.demo_key.clone().expect("demo key");
    let body = json!({"model": "openai/text-embedding-3-large", "models": ["mock/embed"],
        "input": "fall back"});
    let (status, answer) = embed(&dev, &key, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model"], "mock/embed");
    assert_eq!(cost_pico(&answer["usage"]["cost"]), 2 * MOCK_PICO_PER_TOKEN);
    check_record(&dev, &key, &answer, "mock").await;
    let account = dev.account(&dev.demo_account).await;
    assert_eq!(pico(&account["spent"]), 2 * MOCK_PICO_PER_TOKEN);
    assert_eq!(account["held"], "0.00");

    // The `provider` object routes embeddings: without fallbacks beyond OpenAI the
    // request fails instead of falling back to the mock, nothing charged ...
    let pinned = json!({"model": "openai/text-embedding-3-large", "models": ["mock/embed"],
        "input": "fall back", "provider": {"order": ["openai"], "allow_fallbacks": false}});
    let (status, error) = embed(&dev, &key, &pinned).await;
    assert!(status >= 500, "{status} {error}");
    // ... and `zdr` skips OpenAI (it keeps abuse-monitoring logs): the mock serves.
    let private = json!({"model": "openai/text-embedding-3-large", "models": ["mock/embed"],
        "input": "fall back", "provider": {"zdr": true}});
    let (status, answer) = embed(&dev, &key, &private).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!((&answer["model"], &answer["provider"]), (&json!("mock/embed"), &json!("mock")));
    let account = dev.account(&dev.demo_account).await;
    assert_eq!(pico(&account["spent"]), 4 * MOCK_PICO_PER_TOKEN);
    assert_eq!(account["held"], "0.00");
    dev.audit_ok().await;
}
