//! Replays recorded OpenAI-wire traffic (OpenAI itself, and DeepSeek's identical
//! stream format) through the OpenAI-compatible adapter over real HTTP.

use crate::providers_support::*;
use serde_json::json;
use solrouter_gateway::catalog::Catalog;
use solrouter_gateway::providers::openai::{OpenAiCompatible, Quirks};
use solrouter_gateway::providers::Usage;
use solrouter_ledger::PicoUsd;

fn cost(model_id: &str, usage: &Usage) -> PicoUsd {
    Catalog::builtin().get(model_id).unwrap().price.cost(usage)
}

fn usd(text: &str) -> PicoUsd {
    PicoUsd::parse_usd(text).unwrap()
}

#[tokio::test]
async fn text_response() {
    let replay =
        Replay::start(200, "application/json", &[], fixture("openai/vercel-openai-text.json"))
            .await;
    let adapter = OpenAiCompatible::new("openai", Quirks::OPENAI);
    let request = chat(
        json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Invent a holiday"}]}),
    );
    let Outcome::Complete(completion) =
        exchange(&adapter, &replay.endpoint(), &request, "gpt-4o-mini").await
    else {
        panic!("expected a completion")
    };
    let assembled = assemble_completion(&completion);
    assert!(assembled.text.starts_with("**Holiday Name:** Galaxy Day  \n\n**Date:** October 31st"));
    assert!(assembled
        .text
        .ends_with("inspiring individuals to look up and dream beyond our world."));
    assert_eq!(assembled.text.chars().count(), 1842);
    assert_eq!(assembled.finish_reason.as_deref(), Some("stop"));
    let expected_usage = Usage { prompt_tokens: 16, completion_tokens: 363, ..Usage::default() };
    assert_eq!(completion.usage, expected_usage);
    // 16 × $0.15/M + 363 × $0.60/M.
    assert_eq!(cost("openai/gpt-4o-mini", &completion.usage), usd("0.0002202"));

    let received = replay.received();
    assert_eq!(received.path_and_query, "/v1/chat/completions");
    assert_eq!(received.headers["authorization"], "Bearer test-key");
    assert_eq!(received.body["model"], "gpt-4o-mini");
}

#[tokio::test]
async fn text_stream() {
    let replay = Replay::start(
        200,
        "text/event-stream",
        &[],
        chunks_as_sse("openai/vercel-openai-text.chunks.txt"),
    )
    .await;
    let adapter = OpenAiCompatible::new("openai", Quirks::OPENAI);
    let request = chat(
        json!({"model": "openai/gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "Invent a holiday"}]}),
    );
    let Outcome::Streamed { chunks, usage } =
        exchange(&adapter, &replay.endpoint(), &request, "gpt-4o-mini").await
    else {
        panic!("expected a stream")
    };
    let assembled = assemble_stream(&chunks);
    assert!(assembled.text.starts_with("**Holiday Name:** Harmony Day\n\n**Date:** Celebrated annually on the first Saturday of May"));
    assert!(assembled
        .text
        .ends_with("we are all connected through shared human experiences and mutual respect."));
    assert_eq!(assembled.text.chars().count(), 1724);
    assert_eq!(assembled.finish_reason.as_deref(), Some("stop"));
    assert_eq!(usage, Usage { prompt_tokens: 16, completion_tokens: 300, ..Usage::default() });
    assert_eq!(cost("openai/gpt-4o-mini", &usage), usd("0.0001824"));
    // The usage-only chunk is not passed on: the pipeline emits usage with the cost.
    assert!(chunks.iter().all(|chunk| !chunk.choices.is_empty()));
    assert_eq!(replay.received().body["stream_options"], json!({"include_usage": true}));
}

#[tokio::test]
async fn recorded_stream_request_is_forwarded_unchanged() {
    let sse = fixture("openai/pydai-stream-moderation.response.sse");
    let replay = Replay::start(200, "text/event-stream; charset=utf-8", &[], sse).await;
    let recorded = fixture_json("openai/pydai-stream-moderation.request.json");
    // The client names a catalogue model, asks for fallbacks and omits stream_options;
    // upstream must still receive what the real client sent.
    let mut client_body = with(&recorded, "model", json!("openai/gpt-5"));
    client_body = with(&client_body, "models", json!(["openai/gpt-4o"]));
    client_body = with(&client_body, "route", json!("fallback"));
    client_body.as_object_mut().unwrap().remove("stream_options");
    let adapter = OpenAiCompatible::new("openai", Quirks::OPENAI);
    let Outcome::Streamed { chunks, usage } =
        exchange(&adapter, &replay.endpoint(), &chat(client_body), "gpt-5").await
    else {
        panic!("expected a stream")
    };
    // What the client sent, plus the completion limit the gateway reserved for.
    let limited = with(&recorded, "max_completion_tokens", json!(MAX_TOKENS_UNSET));
    assert_eq!(replay.received().body, limited);
    let assembled = assemble_stream(&chunks);
    assert_eq!(assembled.text, "Paris.");
    assert_eq!(assembled.finish_reason.as_deref(), Some("stop"));
    assert_eq!(usage, Usage { prompt_tokens: 13, completion_tokens: 11, ..Usage::default() });
}

/// Top-level fields the gateway does not own reach the client: the recorded stream's
/// `service_tier` (once, though every chunk repeats it) and its last chunk, which
/// carries only OpenAI's `moderation` results. Padding (`obfuscation`) and the
/// envelope the gateway writes itself do not.
#[tokio::test]
async fn stream_passes_on_top_level_fields() {
    let sse = fixture("openai/pydai-stream-moderation.response.sse");
    let recorded_moderation = String::from_utf8(sse.clone())
        .unwrap()
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<serde_json::Value>(data).ok())
        .find_map(|chunk| chunk.get("moderation").cloned())
        .unwrap();
    assert_eq!(recorded_moderation["input"]["results"][0]["flagged"], false);
    let replay = Replay::start(200, "text/event-stream; charset=utf-8", &[], sse).await;
    let adapter = OpenAiCompatible::new("openai", Quirks::OPENAI);
    let request = chat(json!({"model": "m", "stream": true, "messages": []}));
    let Outcome::Streamed { chunks, .. } =
        exchange(&adapter, &replay.endpoint(), &request, "gpt-5").await
    else {
        panic!("expected a stream")
    };
    let extras: Vec<_> = chunks.iter().map(|chunk| json!(chunk.extra)).collect();
    let expected = [
        json!({"service_tier": "default"}),
        json!({}),
        json!({}),
        json!({}),
        json!({"moderation": recorded_moderation}),
    ];
    assert_eq!(extras, expected);
    assert!(chunks.last().unwrap().choices.is_empty());
}

#[tokio::test]
async fn response_passes_on_top_level_fields() {
    let replay =
        Replay::start(200, "application/json", &[], fixture("openai/vercel-openai-text.json"))
            .await;
    let adapter = OpenAiCompatible::new("openai", Quirks::OPENAI);
    let request = chat(json!({"model": "m", "messages": []}));
    let Outcome::Complete(completion) =
        exchange(&adapter, &replay.endpoint(), &request, "gpt-4o-mini").await
    else {
        panic!("expected a completion")
    };
    let recorded = fixture_json("openai/vercel-openai-text.json");
    let expected = json!({
        "service_tier": recorded["service_tier"],
        "system_fingerprint": recorded["system_fingerprint"],
    });
    assert_eq!(json!(completion.extra), expected);
}

#[tokio::test]
async fn tool_call_response() {
    let body = fixture("openai/pydai-tool-call-roundtrip.1.response.json");
    let replay = Replay::start(200, "application/json", &[], body).await;
    let recorded = fixture_json("openai/pydai-tool-call-roundtrip.1.request.json");
    let adapter = OpenAiCompatible::new("openai", Quirks::OPENAI);
    let request = chat(with(&recorded, "model", json!("openai/gpt-4o")));
    let Outcome::Complete(completion) =
        exchange(&adapter, &replay.endpoint(), &request, "gpt-4o").await
    else {
        panic!("expected a completion")
    };
    let forwarded = with(&recorded, "model", json!("gpt-4o"));
    let forwarded = with(&forwarded, "max_completion_tokens", json!(MAX_TOKENS_UNSET));
    assert_eq!(replay.received().body, forwarded);
    let assembled = assemble_completion(&completion);
    let call = (
        "call_iXFttys57ap0o16JSlC8yhYo".to_owned(),
        "get_user_country".to_owned(),
        "{}".to_owned(),
    );
    assert_eq!(assembled.tool_calls, vec![call]);
    assert_eq!(assembled.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(
        completion.usage,
        Usage { prompt_tokens: 68, completion_tokens: 12, ..Usage::default() }
    );
    // 68 × $2.50/M + 12 × $10/M.
    assert_eq!(cost("openai/gpt-4o", &completion.usage), usd("0.00029"));
}

#[tokio::test]
async fn tool_call_stream_with_reasoning_and_cache() {
    let sse = chunks_as_sse("deepseek/vercel-deepseek-tool-call.chunks.txt");
    let replay = Replay::start(200, "text/event-stream", &[], sse).await;
    let adapter = OpenAiCompatible::new("openai", Quirks::OPENAI);
    let request = chat(
        json!({"model": "openai/gpt-4o", "stream": true, "messages": [{"role": "user", "content": "Weather in SF?"}]}),
    );
    let Outcome::Streamed { chunks, usage } =
        exchange(&adapter, &replay.endpoint(), &request, "gpt-4o").await
    else {
        panic!("expected a stream")
    };
    let assembled = assemble_stream(&chunks);
    let call = (
        "call_00_ioIn7yN9p1ZOMNpDLwd4MgAF".to_owned(),
        "weather".to_owned(),
        r#"{"location": "San Francisco"}"#.to_owned(),
    );
    assert_eq!(assembled.tool_calls, vec![call]);
    assert_eq!(assembled.text, "");
    assert_eq!(assembled.finish_reason.as_deref(), Some("tool_calls"));
    let expected = Usage {
        prompt_tokens: 339,
        completion_tokens: 83,
        reasoning_tokens: 39,
        cached_read_tokens: 320,
        cached_write_tokens: 0,
    };
    assert_eq!(usage, expected);
    // At gpt-4o prices: 19 × $2.50/M + 320 × $1.25/M + 83 × $10/M.
    assert_eq!(cost("openai/gpt-4o", &usage), usd("0.0012775"));
}

#[tokio::test]
async fn client_error_is_passed_on_without_fallback() {
    let body = fixture("openai/pydai-error-400-developer-role-unsupported.response.json");
    let replay = Replay::start(400, "application/json", &[], body).await;
    let adapter = OpenAiCompatible::new("openai", Quirks::OPENAI);
    let request =
        chat(fixture_json("openai/pydai-error-400-developer-role-unsupported.request.json"));
    let Outcome::Failed(error) = exchange(&adapter, &replay.endpoint(), &request, "o1-mini").await
    else {
        panic!("expected an error")
    };
    assert_eq!(error.status.as_u16(), 400);
    assert!(!error.fallback);
    assert_eq!(
        error.to_string(),
        "upstream openai: 400 Unsupported value: 'messages[0].role' does not support 'developer' with this model."
    );
}

#[tokio::test]
async fn rate_limit_allows_fallback_after_retry_after() {
    let body = json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}});
    let replay = Replay::start(
        429,
        "application/json",
        &[("retry-after", "3")],
        body.to_string().into_bytes(),
    )
    .await;
    let adapter = OpenAiCompatible::new("openai", Quirks::OPENAI);
    let request = chat(json!({"model": "openai/gpt-4o", "messages": []}));
    let Outcome::Failed(error) = exchange(&adapter, &replay.endpoint(), &request, "gpt-4o").await
    else {
        panic!("expected an error")
    };
    assert_eq!(error.status.as_u16(), 429);
    assert!(error.fallback);
    assert_eq!(error.retry_after, Some(std::time::Duration::from_secs(3)));
    assert_eq!(error.message, "429 Rate limit reached");
}

#[test]
fn reply_text_is_independent_of_network_chunking() {
    // The same recorded stream fed one byte at a time must translate identically.
    let sse = fixture("openai/pydai-stream-moderation.response.sse");
    let adapter = OpenAiCompatible::new("openai", Quirks::OPENAI);
    let request = chat(json!({"model": "m", "stream": true, "messages": []}));
    let translate = |pieces: &mut dyn Iterator<Item = &[u8]>| {
        let mut translator = solrouter_gateway::providers::Adapter::stream(&adapter, &request);
        let mut chunks = Vec::new();
        for piece in pieces {
            translator.feed(piece, &mut chunks).unwrap();
        }
        translator.finish(&mut chunks).unwrap();
        (chunks, translator.usage())
    };
    let whole = translate(&mut std::iter::once(sse.as_slice()));
    let bytewise = translate(&mut sse.chunks(1));
    assert_eq!(whole, bytewise);
    assert_eq!(assemble_stream(&whole.0).text, "Paris.");
}
