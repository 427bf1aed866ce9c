//! The built-in mock upstream, reached through the real OpenAI-compatible adapter the
//! way dev mode wires it: `Providers::from_env` pointed at a mock on 127.0.0.1.

use crate::providers_support::*;
use serde_json::json;
use solrouter_gateway::catalog::Catalog;
use solrouter_gateway::mock;
use solrouter_gateway::providers::{Providers, Usage, MOCK_PROVIDER};
use solrouter_ledger::PicoUsd;

/// Starts the mock; it stops when the returned sender is dropped.
async fn start_mock() -> (Providers, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(mock::serve(listener, stopped));
    (Providers::from_env(Some(base_url)), stop)
}

#[tokio::test]
async fn echo_completes_with_deterministic_usage() {
    let (providers, _stop) = start_mock().await;
    let (adapter, endpoint) = providers.get(MOCK_PROVIDER).unwrap();
    let model = Catalog::builtin().get("mock/echo").unwrap().clone();
    let request = chat(json!({"model": "mock/echo", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "text", "text": "say  hello\nworld"}]},
    ]}));
    let Outcome::Complete(completion) =
        exchange(adapter, endpoint, &request, &model.upstream_model).await
    else {
        panic!("expected a completion")
    };
    let assembled = assemble_completion(&completion);
    assert_eq!(assembled.text, "say  hello\nworld");
    assert_eq!(assembled.finish_reason.as_deref(), Some("stop"));
    // Prompt: 2 + 2 + 2 + 3 words; completion: 3 words.
    assert_eq!(
        completion.usage,
        Usage { prompt_tokens: 9, completion_tokens: 3, ..Usage::default() }
    );
    // 9 × $1/M + 3 × $2/M.
    assert_eq!(model.price.cost(&completion.usage), PicoUsd::parse_usd("0.000015").unwrap());
}

#[tokio::test]
async fn echo_streams_one_chunk_per_word_then_usage() {
    let (providers, _stop) = start_mock().await;
    let (adapter, endpoint) = providers.get(MOCK_PROVIDER).unwrap();
    let request = chat(json!({"model": "mock/echo", "stream": true,
        "messages": [{"role": "user", "content": "one two  three"}]}));
    let Outcome::Streamed { chunks, usage } = exchange(adapter, endpoint, &request, "echo").await
    else {
        panic!("expected a stream")
    };
    // Three word chunks and the finish-reason chunk; usage arrives separately.
    assert_eq!(chunks.len(), 4);
    assert_eq!(
        json!(chunks[0].choices[0])["delta"],
        json!({"role": "assistant", "content": "one "})
    );
    let assembled = assemble_stream(&chunks);
    assert_eq!(assembled.text, "one two  three");
    assert_eq!(assembled.finish_reason.as_deref(), Some("stop"));
    assert_eq!(usage, Usage { prompt_tokens: 3, completion_tokens: 3, ..Usage::default() });
}

#[tokio::test]
async fn empty_prompt_still_costs_one_token_each_way() {
    let (providers, _stop) = start_mock().await;
    let (adapter, endpoint) = providers.get(MOCK_PROVIDER).unwrap();
    let request =
        chat(json!({"model": "mock/echo", "messages": [{"role": "user", "content": ""}]}));
    let Outcome::Complete(completion) = exchange(adapter, endpoint, &request, "echo").await else {
        panic!("expected a completion")
    };
    assert_eq!(assemble_completion(&completion).text, "");
    assert_eq!(
        completion.usage,
        Usage { prompt_tokens: 1, completion_tokens: 1, ..Usage::default() }
    );
}

#[tokio::test]
async fn unavailable_fails_over_and_unknown_models_do_not() {
    let (providers, _stop) = start_mock().await;
    let (adapter, endpoint) = providers.get(MOCK_PROVIDER).unwrap();
    let check = |upstream_model: &'static str, stream: bool, status: u16, fallback: bool| {
        let request = chat(
            json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "x"}]}),
        );
        async move {
            let Outcome::Failed(error) =
                exchange(adapter, endpoint, &request, upstream_model).await
            else {
                panic!("expected an error for {upstream_model}")
            };
            assert_eq!((error.status.as_u16(), error.fallback), (status, fallback), "{error}");
        }
    };
    check("unavailable", false, 503, true).await;
    check("unavailable", true, 503, true).await;
    check("no-such-model", false, 404, false).await;
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mock::serve(listener, stopped));
    drop(stop);
    server.await.unwrap().unwrap();
}
