//! Replays recorded traffic of the OpenAI-compatible family (DeepSeek, xAI, Mistral,
//! Perplexity, Groq as the Llama host) through the adapter with each provider's
//! quirks, over real HTTP.

use crate::providers_support::*;
use serde_json::json;
use solrouter_gateway::catalog::Catalog;
use solrouter_gateway::providers::openai::{OpenAiCompatible, Quirks};
use solrouter_gateway::providers::{Adapter, Endpoint, Usage};
use solrouter_ledger::PicoUsd;

fn cost(model_id: &str, usage: &Usage) -> PicoUsd {
    Catalog::builtin().get(model_id).unwrap().price.cost(usage)
}

async fn complete(
    adapter: &dyn Adapter,
    fixture_path: &str,
) -> (Assembled, Usage, serde_json::Map<String, serde_json::Value>) {
    let replay = Replay::start(200, "application/json", &[], fixture(fixture_path)).await;
    let request = chat(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}));
    let Outcome::Complete(completion) = exchange(adapter, &replay.endpoint(), &request, "u").await
    else {
        panic!("expected a completion from {fixture_path}")
    };
    (assemble_completion(&completion), completion.usage, completion.extra)
}

async fn stream(
    adapter: &dyn Adapter,
    sse: Vec<u8>,
) -> (Assembled, Usage, Vec<solrouter_gateway::providers::Chunk>) {
    let replay = Replay::start(200, "text/event-stream", &[], sse).await;
    let request = chat(
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    );
    let Outcome::Streamed { chunks, usage } =
        exchange(adapter, &replay.endpoint(), &request, "u").await
    else {
        panic!("expected a stream")
    };
    (assemble_stream(&chunks), usage, chunks)
}

#[tokio::test]
async fn deepseek_reasoning_content_becomes_reasoning() {
    let adapter = OpenAiCompatible::new("deepseek", Quirks::OPENAI);
    let (assembled, usage, _) = complete(&adapter, "deepseek/vercel-deepseek-reasoning.json").await;
    assert!(assembled.text.starts_with("The word \"strawberry\" contains three instances"));
    assert!(assembled
        .reasoning
        .starts_with("We are asked: \"How many 'r's are in the word 'strawberry'?\""));
    let expected = Usage {
        prompt_tokens: 18,
        completion_tokens: 345,
        reasoning_tokens: 315,
        ..Usage::default()
    };
    assert_eq!(usage, expected);
    // 18 × $0.55/M + 345 × $2.19/M.
    assert_eq!(cost("deepseek/deepseek-r1", &usage), PicoUsd::parse_usd("0.00076545").unwrap());

    let sse = chunks_as_sse("deepseek/vercel-deepseek-tool-call.chunks.txt");
    let (assembled, _, chunks) = stream(&adapter, sse).await;
    assert!(assembled
        .reasoning
        .starts_with("The user is asking for the weather in San Francisco."));
    assert_eq!(assembled.reasoning.chars().count(), 191);
    let mut deltas = chunks.iter().flat_map(|chunk| &chunk.choices).filter_map(|c| c.delta());
    assert!(deltas.all(|delta| delta.reasoning_content.is_none()));
}

/// xAI bills reasoning at the completion price but counts it outside
/// `completion_tokens`; its own `cost_in_usd_ticks` (10⁻¹⁰ USD) must equal our cost.
#[tokio::test]
async fn xai_reasoning_tokens_are_billed_as_completion() {
    let adapter = OpenAiCompatible::new("xai", Quirks::XAI);
    let (assembled, usage, _) = complete(&adapter, "xai/vercel-xai-text.json").await;
    assert_eq!(assembled.text, "Hello");
    assert!(assembled.reasoning.starts_with("First, the user said: \"Say a single word.\""));
    let expected = Usage {
        prompt_tokens: 12,
        completion_tokens: 229,
        reasoning_tokens: 228,
        cached_read_tokens: 2,
        ..Usage::default()
    };
    assert_eq!(usage, expected);
    assert_eq!(cost("x-ai/grok-3-mini", &usage), PicoUsd(1_176_500 * 100));

    let sse = chunks_as_sse("xai/vercel-openai-compatible-xai-tool-call.chunks.txt");
    let (assembled, usage, _) = stream(&adapter, sse).await;
    let call = (
        "call_79382389".to_owned(),
        "weather".to_owned(),
        r#"{"location":"San Francisco"}"#.to_owned(),
    );
    assert_eq!(assembled.tool_calls, vec![call]);
    assert_eq!(assembled.finish_reason.as_deref(), Some("tool_calls"));
    let expected = Usage {
        prompt_tokens: 307,
        completion_tokens: 253,
        reasoning_tokens: 227,
        cached_read_tokens: 306,
        ..Usage::default()
    };
    assert_eq!(usage, expected);
    // 1 × $0.30/M + 306 × $0.075/M + 253 × $0.50/M; the recorded ticks agree.
    assert_eq!(cost("x-ai/grok-3-mini", &usage), PicoUsd(1_497_500 * 100));
}

#[tokio::test]
async fn mistral_requests_use_mistral_names_and_no_stream_options() {
    let adapter = OpenAiCompatible::new("mistral", Quirks::MISTRAL);
    let replay = Replay::start(
        200,
        "text/event-stream",
        &[],
        fixture("mistral/pydai-stream-thinking.response.sse"),
    )
    .await;
    let recorded = fixture_json("mistral/pydai-stream-thinking.request.json");
    let client_body = with(&recorded, "model", json!("mistralai/mistral-large"));
    let client_body = with(&client_body, "stream_options", json!({"include_usage": true}));
    // Mistral's SDK takes the bare host as base URL, as the gateway's default does.
    let root = Endpoint {
        base_url: replay.base_url.trim_end_matches("/v1").to_owned(),
        ..replay.endpoint()
    };
    let Outcome::Streamed { chunks, usage } =
        exchange(&adapter, &root, &chat(client_body), "magistral-medium-latest").await
    else {
        panic!("expected a stream")
    };
    assert_eq!(replay.received().path_and_query, "/v1/chat/completions");
    // As recorded, plus the completion limit the gateway always forwards.
    assert_eq!(replay.received().body, with(&recorded, "max_tokens", json!(MAX_TOKENS_UNSET)));
    let assembled = assemble_stream(&chunks);
    assert!(assembled.reasoning.starts_with("Okay, the user is asking how to cross the"));
    assert!(assembled.text.ends_with(" crossing."));
    assert!(!assembled.text.contains("Okay, the user"));
    assert_eq!(usage, Usage { prompt_tokens: 10, completion_tokens: 232, ..Usage::default() });

    let request =
        chat(json!({"model": "m", "max_completion_tokens": 5, "seed": 7, "messages": []}));
    let upstream = translate(&adapter, &root, &request, "mistral-large-latest").unwrap();
    let sent: serde_json::Value = serde_json::from_slice(&upstream.body).unwrap();
    assert_eq!(
        sent,
        json!({"model": "mistral-large-latest", "max_tokens": 5, "random_seed": 7, "messages": []})
    );
}

#[tokio::test]
async fn mistral_thinking_parts_split_into_reasoning_and_text() {
    let adapter = OpenAiCompatible::new("mistral", Quirks::MISTRAL);
    let (assembled, usage, _) = complete(&adapter, "mistral/pydai-thinking.response.json").await;
    assert!(assembled.reasoning.starts_with("**Analogizing crossing a river**"));
    assert!(!assembled.text.is_empty());
    assert!(!assembled.text.contains("**Analogizing crossing a river**"));
    let recorded = fixture_json("mistral/pydai-thinking.response.json");
    assert_eq!(usage.prompt_tokens, recorded["usage"]["prompt_tokens"].as_u64().unwrap());
    assert_eq!(usage.completion_tokens, recorded["usage"]["completion_tokens"].as_u64().unwrap());
}

#[tokio::test]
async fn perplexity_citations_pass_through_once() {
    let adapter = OpenAiCompatible::new("perplexity", Quirks::PERPLEXITY);
    let (assembled, usage, extra) =
        complete(&adapter, "perplexity/vercel-perplexity-text.json").await;
    assert!(assembled.text.starts_with("**EcoVista Day** is a new annual holiday"));
    assert_eq!(extra["citations"].as_array().unwrap().len(), 6);
    assert_eq!(usage, Usage { prompt_tokens: 11, completion_tokens: 392, ..Usage::default() });
    // 11 × $3/M + 392 × $15/M + the $0.006 request fee.
    assert_eq!(cost("perplexity/sonar-pro", &usage), PicoUsd::parse_usd("0.011913").unwrap());

    let sse = chunks_as_sse("perplexity/vercel-perplexity-text.chunks.txt");
    let (assembled, usage, chunks) = stream(&adapter, sse).await;
    assert!(assembled.text.ends_with("[5]"));
    assert_eq!(assembled.finish_reason.as_deref(), Some("stop"));
    assert_eq!(usage, Usage { prompt_tokens: 11, completion_tokens: 434, ..Usage::default() });
    let with_citations: Vec<_> =
        chunks.iter().filter(|chunk| chunk.extra.contains_key("citations")).collect();
    assert!(!with_citations.is_empty());
    let last = chunks.iter().rev().find_map(|chunk| chunk.extra.get("citations")).unwrap();
    assert_eq!(last.as_array().unwrap().len(), 5);
    let repeated = with_citations
        .windows(2)
        .any(|pair| pair[0].extra["citations"] == pair[1].extra["citations"]);
    assert!(!repeated, "unchanged citations are sent once");

    let request = chat(
        json!({"model": "m", "messages": [], "web_search_options": {"search_context_size": "high"}}),
    );
    let error = translate(
        &adapter,
        &Replay::start(200, "text/plain", &[], vec![]).await.endpoint(),
        &request,
        "sonar-pro",
    )
    .unwrap_err();
    assert_eq!(error.param, "web_search_options.search_context_size");
}

#[tokio::test]
async fn groq_reasoning_and_usage_in_the_final_chunk() {
    let adapter = OpenAiCompatible::new("groq", Quirks::OPENAI);
    let (assembled, usage, _) =
        stream(&adapter, chunks_as_sse("groq/vercel-groq-reasoning.chunks.txt")).await;
    assert!(assembled.reasoning.starts_with("Okay"));
    assert_eq!(
        usage,
        Usage {
            prompt_tokens: 17,
            completion_tokens: 1107,
            reasoning_tokens: 963,
            ..Usage::default()
        }
    );
    let (assembled, usage, _) =
        stream(&adapter, chunks_as_sse("groq/vercel-groq-text.chunks.txt")).await;
    assert!(assembled.text.ends_with('.'));
    assert_eq!(usage, Usage { prompt_tokens: 45, completion_tokens: 662, ..Usage::default() });
}

#[tokio::test]
async fn groq_usage_only_under_x_groq_is_found() {
    let adapter = OpenAiCompatible::new("groq", Quirks::OPENAI);
    let sse = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}],",
        "\"x_groq\":{\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":1}}}\n\ndata: [DONE]\n\n"
    );
    let (_, usage, _) = stream(&adapter, sse.as_bytes().to_vec()).await;
    assert_eq!(usage, Usage { prompt_tokens: 4, completion_tokens: 1, ..Usage::default() });
}
