//! The embeddings adapters (OpenAI, Mistral, Gemini, Cohere) against each provider's
//! documented request and response bodies (`tests/fixtures-docs`, see its SOURCES.md),
//! served over real HTTP on 127.0.0.1: what the adapter sends must equal the documented
//! request, on the provider's path with its credentials, and the documented answers
//! must read back to the exact vectors and token counts. Then the same hosts behind the
//! real binary: each answer's `usage.cost` is the catalogue price of the tokens billed,
//! and exactly what the balance lost and the record says.

use crate::providers_support::{post_upstream, reply, serve, Received};
use crate::support;
use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Value};
use solrouter_gateway::catalog::{Catalog, Tokenizer};
use solrouter_gateway::providers::cohere::Cohere;
use solrouter_gateway::providers::google::Google;
use solrouter_gateway::providers::openai::{OpenAiCompatible, Quirks};
use solrouter_gateway::providers::{
    Adapter, EmbedRequest, EmbedTarget, Embeddings, Encoding, Endpoint, Input, UpstreamError, Usage,
};
use solrouter_gateway::tokens;
use solrouter_ledger::PicoUsd;
use std::sync::{Arc, Mutex};

const FIXTURES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures-docs");

fn fixture(relative: &str) -> Vec<u8> {
    let path = format!("{FIXTURES_DIR}/{relative}");
    std::fs::read(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

fn fixture_json(relative: &str) -> Value {
    serde_json::from_slice(&fixture(relative)).unwrap()
}

/// A host on 127.0.0.1 answering every request with `status` and `body`, remembering the
/// last request; its base URL is the host plus `base_path`.
struct Host {
    base_url: String,
    received: Arc<Mutex<Option<Received>>>,
}

impl Host {
    async fn start(base_path: &str, status: u16, body: Vec<u8>) -> Host {
        let received = Arc::new(Mutex::new(None));
        let sink = Arc::clone(&received);
        let body = Bytes::from(body);
        let address = serve(move |request| {
            *sink.lock().unwrap() = Some(request);
            reply(status, "application/json", body.clone())
        })
        .await;
        Host { base_url: format!("http://{address}{base_path}"), received }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint { base_url: self.base_url.clone(), api_key: Some("test-key".to_owned()) }
    }

    fn received(&self) -> Received {
        self.received.lock().unwrap().clone().expect("the host received a request")
    }
}

fn embed_request(inputs: &[&str], encoding: Encoding, input_type: Option<&str>) -> EmbedRequest {
    EmbedRequest {
        inputs: inputs.iter().map(|text| Input::Text((*text).to_owned())).collect(),
        encoding,
        input_type: input_type.map(str::to_owned),
        user: None,
    }
}

/// Sends `request` through `adapter` to `host` as the pipeline does and reads the answer.
async fn exchange(
    adapter: &dyn Adapter,
    host: &Host,
    request: &EmbedRequest,
    target: &EmbedTarget<'_>,
) -> Result<Embeddings, UpstreamError> {
    let embedder = adapter.embedder().expect("an embeddings adapter");
    let response = post_upstream(embedder.embed_request(&host.endpoint(), request, target)).await;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap();
    if !status.is_success() {
        return Err(adapter.error(status, &headers, &body));
    }
    embedder.embed_response(request, &body)
}

fn target(upstream_model: &str, dimensions: Option<u32>) -> EmbedTarget<'_> {
    EmbedTarget { upstream_model, dimensions }
}

/// The cost of `input_tokens` at catalogue model `id`.
fn cost(id: &str, input_tokens: u64) -> PicoUsd {
    let catalog = Catalog::builtin();
    catalog.get(id).unwrap().cost(&Usage { prompt_tokens: input_tokens, ..Usage::default() })
}

const OPENAI_FLOATS: [f32; 3] = [0.0023064255, -0.009327292, -0.0028842222];

#[tokio::test]
async fn openai_sends_the_reference_request_and_reads_float_and_base64() {
    let adapter = OpenAiCompatible::new("openai", Quirks::OPENAI);
    let inputs = ["The food was delicious and the waiter..."];
    for (encoding, answer) in [
        (Encoding::Float, "openai/embeddings.response.json"),
        (Encoding::Base64, "openai/embeddings-base64.response.json"),
    ] {
        let host = Host::start("/v1", 200, fixture(answer)).await;
        let request = embed_request(&inputs, encoding, None);
        let embeddings =
            exchange(&adapter, &host, &request, &target("text-embedding-3-small", None))
                .await
                .unwrap();
        assert_eq!(embeddings.vectors, [OPENAI_FLOATS.to_vec()], "{answer}");
        assert_eq!(embeddings.input_tokens, Some(8));
        let received = host.received();
        assert_eq!(received.path_and_query, "/v1/embeddings");
        assert_eq!(received.headers["authorization"], "Bearer test-key");
        let mut expected = fixture_json("openai/embeddings.request.json");
        if encoding == Encoding::Base64 {
            expected["encoding_format"] = json!("base64");
        }
        assert_eq!(received.body, expected);
    }
    assert_eq!(cost("openai/text-embedding-3-small", 8), PicoUsd(8 * 20_000));

    // `dimensions` and `user` are OpenAI's own parameters.
    let host = Host::start("/v1", 200, fixture("openai/embeddings.response.json")).await;
    let mut with_user = embed_request(&inputs, Encoding::Float, None);
    with_user.user = Some("user-1".to_owned());
    exchange(&adapter, &host, &with_user, &target("text-embedding-3-small", Some(256)))
        .await
        .unwrap();
    assert_eq!(host.received().body["dimensions"], 256);
    assert_eq!(host.received().body["user"], "user-1");
    // Token ids pass as OpenAI takes them.
    let mut ids = embed_request(&[], Encoding::Float, None);
    ids.inputs = vec![Input::Tokens(vec![791, 3691])];
    assert!(adapter.embedder().unwrap().takes_tokens());
    exchange(&adapter, &host, &ids, &target("text-embedding-3-small", None)).await.unwrap();
    assert_eq!(host.received().body["input"], json!([[791, 3691]]));

    // A refusal is the client's: a 400, no fallback.
    let host = Host::start("/v1", 400, fixture("openai/error-400-dimensions.response.json")).await;
    let error = exchange(&adapter, &host, &with_user, &target("text-embedding-ada-002", Some(8)))
        .await
        .unwrap_err();
    assert_eq!(error.status, StatusCode::BAD_REQUEST);
    assert!(!error.fallback);
    assert!(error.message.contains("does not support specifying dimensions"), "{error}");
}

#[tokio::test]
async fn mistral_sends_model_and_input_only() {
    let adapter = OpenAiCompatible::new("mistral", Quirks::MISTRAL);
    let host = Host::start("", 200, fixture("mistral/embeddings.response.json")).await;
    let inputs = ["Embed this sentence.", "As well as this one."];
    let request = embed_request(&inputs, Encoding::Base64, None);
    let embeddings =
        exchange(&adapter, &host, &request, &target("mistral-embed", None)).await.unwrap();
    assert_eq!(embeddings.vectors.len(), 2);
    assert_eq!(embeddings.vectors[1][0], -0.023_422_241);
    assert_eq!(embeddings.input_tokens, Some(15));
    assert!(!adapter.embedder().unwrap().takes_tokens(), "Mistral embeds text only");
    let received = host.received();
    assert_eq!(received.path_and_query, "/v1/embeddings");
    assert_eq!(received.headers["authorization"], "Bearer test-key");
    // Floats are asked of Mistral whatever the client wants; the gateway encodes.
    assert_eq!(received.body, fixture_json("mistral/embeddings.request.json"));
    assert_eq!(cost("mistralai/mistral-embed", 15), PicoUsd(15 * 100_000));
}

#[tokio::test]
async fn gemini_batches_one_request_per_input_and_reports_no_tokens() {
    let host = Host::start("", 200, fixture("google/batch-embed.response.json")).await;
    let texts = [
        "What is the meaning of life?",
        "How much wood would a woodchuck chuck?",
        "How does the brain work?",
    ];
    let request = embed_request(&texts, Encoding::Float, Some("search_query"));
    let embeddings = exchange(&Google, &host, &request, &target("gemini-embedding-001", Some(768)))
        .await
        .unwrap();
    assert_eq!(embeddings.vectors.len(), 3);
    assert_eq!(embeddings.vectors[2], [0.0051, 0.0672, -0.0398]);
    assert_eq!(embeddings.input_tokens, None, "Gemini reports no tokens for embeddings");
    let received = host.received();
    assert_eq!(received.path_and_query, "/v1beta/models/gemini-embedding-001:batchEmbedContents");
    assert_eq!(received.headers["x-goog-api-key"], "test-key");
    assert!(received.headers.get("authorization").is_none());
    assert_eq!(received.body, fixture_json("google/batch-embed.request.json"));

    // Fewer vectors than inputs is the provider misbehaving: a 502 that falls back.
    let two = embed_request(&texts[..2], Encoding::Float, None);
    let error =
        exchange(&Google, &host, &two, &target("gemini-embedding-001", None)).await.unwrap_err();
    assert_eq!((error.status, error.fallback), (StatusCode::BAD_GATEWAY, true));

    let host =
        Host::start("", 400, fixture("google/error-400-invalid-argument.response.json")).await;
    let error = exchange(&Google, &host, &request, &target("gemini-embedding-001", None))
        .await
        .unwrap_err();
    assert_eq!((error.status, error.fallback), (StatusCode::BAD_REQUEST, false));
}

#[tokio::test]
async fn cohere_sends_texts_with_an_input_type_and_reads_billed_units() {
    let host = Host::start("", 200, fixture("cohere/embed.response.json")).await;
    let request = embed_request(&["hello", "goodbye"], Encoding::Float, Some("classification"));
    let embeddings = exchange(&Cohere, &host, &request, &target("embed-v4.0", None)).await.unwrap();
    assert_eq!(embeddings.vectors[0], [0.016296387, 0.008354187, 0.045410156, -0.009033203]);
    assert_eq!(embeddings.input_tokens, Some(2));
    let received = host.received();
    assert_eq!(received.path_and_query, "/v2/embed");
    assert_eq!(received.headers["authorization"], "Bearer test-key");
    assert_eq!(received.body, fixture_json("cohere/embed.request.json"));
    assert_eq!(cost("cohere/embed-v4.0", 2), PicoUsd(2 * 120_000));

    // Without an input type: documents; a length: `output_dimension`.
    let plain = embed_request(&["hello", "goodbye"], Encoding::Float, None);
    exchange(&Cohere, &host, &plain, &target("embed-v4.0", Some(512))).await.unwrap();
    assert_eq!(host.received().body["input_type"], "search_document");
    assert_eq!(host.received().body["output_dimension"], 512);
}

/// Through the binary: each provider's host behind the gateway, each answer's cost the
/// price of the tokens billed and exactly what the balance lost.
#[tokio::test]
async fn every_provider_through_the_gateway_charges_what_it_reports() {
    let openai = Host::start("/v1", 200, fixture("openai/embeddings.response.json")).await;
    let mistral = Host::start("", 200, fixture("mistral/embeddings.response.json")).await;
    let google = Host::start("", 200, fixture("google/batch-embed.response.json")).await;
    let cohere = Host::start("", 200, fixture("cohere/embed.response.json")).await;
    let dir = support::data_dir();
    let dev = support::Dev::start(
        &support::path(&dir),
        &[
            ("OPENAI_API_KEY", "test-key"),
            ("SOLROUTER_OPENAI_BASE_URL", &openai.base_url),
            ("MISTRAL_API_KEY", "test-key"),
            ("SOLROUTER_MISTRAL_BASE_URL", &mistral.base_url),
            ("GEMINI_API_KEY", "test-key"),
            ("SOLROUTER_GOOGLE_BASE_URL", &google.base_url),
            ("COHERE_API_KEY", "test-key"),
            ("SOLROUTER_COHERE_BASE_URL", &cohere.base_url),
        ],
    );
    let key = dev.demo_key.clone().expect("demo key");
    let before = dev.account(&dev.demo_account).await;
    let gemini_texts = [
        "What is the meaning of life?",
        "How much wood would a woodchuck chuck?",
        "How does the brain work?",
    ];
    // Gemini reports nothing: the gateway bills its own count of the inputs.
    let gemini_tokens: u64 =
        gemini_texts.iter().map(|text| tokens::count(Tokenizer::Estimated, text)).sum();
    let cases = [
        (
            json!({"model": "openai/text-embedding-3-small",
                "input": "The food was delicious and the waiter..."}),
            &openai,
            "openai/embeddings.request.json",
            8,
        ),
        (
            json!({"model": "mistralai/mistral-embed",
                "input": ["Embed this sentence.", "As well as this one."]}),
            &mistral,
            "mistral/embeddings.request.json",
            15,
        ),
        (
            json!({"model": "google/gemini-embedding-001", "input": gemini_texts,
                "dimensions": 768}),
            &google,
            "google/batch-embed.request.json",
            gemini_tokens,
        ),
        (
            json!({"model": "cohere/embed-v4.0", "input": ["hello", "goodbye"],
                "input_type": "classification", "encoding_format": "base64"}),
            &cohere,
            "cohere/embed.request.json",
            2,
        ),
    ];
    let mut spent = 0i128;
    for (body, host, request_fixture, tokens) in cases {
        let model = body["model"].as_str().unwrap().to_owned();
        let (status, answer) = dev
            .post_raw("/v1/api/embeddings", Some(&key), reqwest::Body::from(body.to_string()))
            .await;
        assert_eq!(status, 200, "{model}: {answer}");
        assert_eq!(host.received().body, fixture_json(request_fixture), "{model}");
        assert_eq!(answer["model"], model.as_str());
        assert_eq!(answer["usage"]["prompt_tokens"], tokens, "{model}");
        let charged = support::cost_pico(&answer["usage"]["cost"]);
        assert_eq!(charged, cost(&model, tokens).0 as i128, "{model}");
        let id = answer["id"].as_str().unwrap();
        let (_, record) = dev.get(&format!("/v1/api/generation?id={id}"), &key).await;
        assert_eq!(support::pico(&record["data"]["cost_usd"]), charged, "{model}");
        assert_eq!(record["data"]["tokens_prompt"], tokens, "{model}");
        assert_eq!(record["data"]["usage_estimated"], model.starts_with("google/"), "{model}");
        spent += charged;
    }
    let after = dev.account(&dev.demo_account).await;
    assert_eq!(support::pico(&before["available"]) - support::pico(&after["available"]), spent);
    assert_eq!(support::pico(&after["spent"]), spent);
    assert_eq!(after["held"], "0.00");
    dev.audit_ok().await;
}
