//! The gateway's hot path, one stage at a time, without the network: request parse and
//! validation, key authentication, route resolution, each adapter's request and stream
//! translation over recorded provider traffic (`gateway/tests/fixtures`), SSE parsing,
//! writing the client's stream, usage and cost, and the breaker check. Short runs
//! (`cargo bench -p solrouter-bench --bench gateway` takes about a minute); the figures
//! and how they moved are in `docs/benchmarks.md`.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use solrouter_gateway::bank::Bank;
use solrouter_gateway::catalog::{Catalog, Model};
use solrouter_gateway::codec::{Answered, Codec, CHAT};
use solrouter_gateway::health::Health;
use solrouter_gateway::keys;
use solrouter_gateway::messages::MESSAGES;
use solrouter_gateway::parse::ParsedChat;
use solrouter_gateway::pipeline::route;
use solrouter_gateway::providers::anthropic::Anthropic;
use solrouter_gateway::providers::cohere::Cohere;
use solrouter_gateway::providers::google::Google;
use solrouter_gateway::providers::openai::{OpenAiCompatible, Quirks};
use solrouter_gateway::providers::{
    Adapter, ChatRequest, Chunk, Endpoint, Providers, Target, Usage,
};
use solrouter_gateway::sse::SseParser;
use solrouter_ledger::{AccountId, KeyId, KeyKind, KeyLimits};
use solrouter_raft::LedgerNode;
use std::hint::black_box;
use std::time::Duration;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway/tests/fixtures");
const MODEL: &str = "openai/gpt-4o-mini";

fn fixture(relative: &str) -> Vec<u8> {
    let path = format!("{FIXTURES}/{relative}");
    std::fs::read(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// A `*.chunks.txt` fixture (one `data:` payload per line) as the SSE body it came from.
fn chunks_as_sse(relative: &str) -> Vec<u8> {
    let text = String::from_utf8(fixture(relative)).expect("utf-8 fixture");
    let mut body = Vec::new();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        body.extend_from_slice(b"data: ");
        body.extend_from_slice(line.as_bytes());
        body.extend_from_slice(b"\n\n");
    }
    body
}

/// Client requests in the OpenAI format, as an SDK sends them (compact JSON), with the
/// catalogue's model: a one-line prompt, and a tool-call round trip.
fn requests() -> Vec<(&'static str, Bytes)> {
    let cases = [
        ("text", "openai/pydai-stream-moderation.request.json"),
        ("tools", "openai/pydai-tool-call-roundtrip.2.request.json"),
    ];
    let mut requests: Vec<(&'static str, Bytes)> = cases
        .into_iter()
        .map(|(name, path)| {
            let mut body: serde_json::Value =
                serde_json::from_slice(&fixture(path)).expect("fixture is JSON");
            body["model"] = MODEL.into();
            // OpenAI's own `moderation` option, which the other adapters refuse.
            if let Some(object) = body.as_object_mut() {
                object.remove("moderation");
            }
            (name, Bytes::from(serde_json::to_vec(&body).expect("serializable")))
        })
        .collect();
    requests.push(("conversation", conversation()));
    requests
}

/// A 21-message conversation of ~25 KB with numbers in its text: the prompts a chat
/// client resends on every turn, where a request's cost is per byte.
fn conversation() -> Bytes {
    let mut messages = vec![serde_json::json!({
        "role": "system", "content": "You are a helpful assistant. ".repeat(40),
    })];
    for turn in 0..10 {
        let question = format!("What is special about the number {turn}, in 2025 and before? ");
        let answer = format!("The number {turn} appears in 1,000 places. ");
        messages.push(serde_json::json!({"role": "user", "content": question.repeat(15)}));
        messages.push(serde_json::json!({"role": "assistant", "content": answer.repeat(20)}));
    }
    messages.push(serde_json::json!({"role": "user", "content": "Thanks; now sum it up."}));
    let body = serde_json::json!({"model": MODEL, "messages": messages});
    Bytes::from(serde_json::to_vec(&body).expect("serializable"))
}

fn parsed(body: &Bytes) -> ParsedChat {
    CHAT.parse(body, &HeaderMap::new()).expect("fixture request is valid")
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

fn parse_request(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    for (name, body) in requests() {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("chat", name), &body, |b, body| {
            b.iter(|| CHAT.parse(black_box(body), &HeaderMap::new()))
        });
    }
    let messages = Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "model": "anthropic/claude-sonnet-4", "max_tokens": 1024,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
        }))
        .expect("serializable"),
    );
    group.throughput(Throughput::Bytes(messages.len() as u64));
    group.bench_function("messages/text", |b| {
        b.iter(|| MESSAGES.parse(black_box(&messages), &HeaderMap::new()))
    });
    group.finish();
}

/// Dev mode's path: the key's hash checked against the in-process node's state (a
/// gateway of a remote cluster answers a repeat key from its cache the same way, without
/// the node's read lock). One iteration is `Bank::authenticate` on a runtime.
fn authenticate(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let dir = tempfile::tempdir().expect("tempdir");
    let (bank, headers) = runtime.block_on(async {
        let node = LedgerNode::open_single(dir.path()).await.expect("node");
        let bank = Bank::new(node);
        let account = AccountId(7);
        bank.create_account(account, "bench".to_owned())
            .await
            .expect("ledger")
            .expect("account created");
        let key = keys::mint(account);
        let (kind, limits) = (KeyKind::Inference, KeyLimits::default());
        bank.create_key(account, KeyId(1), "bench".to_owned(), key.hash, kind, limits)
            .await
            .expect("ledger")
            .expect("key created");
        let mut headers = HeaderMap::new();
        let bearer = HeaderValue::try_from(format!("Bearer {}", key.text)).expect("header");
        headers.insert(AUTHORIZATION, bearer);
        (bank, headers)
    });
    let mut group = c.benchmark_group("auth");
    group.bench_function("key_parse_and_hash", |b| {
        let text = headers[AUTHORIZATION].to_str().expect("ascii")["Bearer ".len()..].to_owned();
        b.iter(|| keys::parse(black_box(&text)))
    });
    group.bench_function("authenticate_local", |b| {
        b.iter(|| runtime.block_on(bank.authenticate(black_box(&headers))).expect("valid key"))
    });
    group.finish();
}

fn route_request(c: &mut Criterion) {
    let catalog = Catalog::builtin();
    let providers = Providers::from_env(Some("http://127.0.0.1:1/v1".to_owned()));
    let health = Health::new(&catalog);
    let mut group = c.benchmark_group("route");
    for (name, models) in [("one", vec!["mock/echo"]), ("fallbacks", vec!["mock/echo"; 4])] {
        let body = serde_json::json!({"model": models[0], "models": models,
            "messages": [{"role": "user", "content": "hi"}]});
        let parsed = parsed(&Bytes::from(serde_json::to_vec(&body).expect("serializable")));
        group.bench_function(name, |b| {
            b.iter(|| {
                route(&catalog, &providers, &health, black_box(&parsed), 0).expect("routable")
            })
        });
    }
    group.finish();
}

fn adapters() -> [(&'static str, Box<dyn Adapter>); 4] {
    [
        ("openai", Box::new(OpenAiCompatible::new("openai", Quirks::OPENAI))),
        ("anthropic", Box::new(Anthropic)),
        ("google", Box::new(Google)),
        ("cohere", Box::new(Cohere)),
    ]
}

fn request_translation(c: &mut Criterion) {
    let endpoint = Endpoint { base_url: "http://127.0.0.1:1/v1".to_owned(), api_key: None };
    let target =
        Target { upstream_model: "gpt-4o-mini", max_tokens: 1024, controls: Default::default() };
    let mut group = c.benchmark_group("request");
    for (name, body) in requests() {
        let chat = parsed(&body).chat;
        group.throughput(Throughput::Bytes(body.len() as u64));
        for (provider, adapter) in adapters() {
            group.bench_with_input(BenchmarkId::new(provider, name), &chat, |b, chat| {
                b.iter(|| adapter.request(&endpoint, black_box(chat), &target).expect("ok"))
            });
        }
    }
    group.finish();
}

/// One recorded stream per provider, as the upstream sent it.
fn streams() -> [(&'static str, Vec<u8>); 4] {
    [
        ("openai", fixture("openai/pydai-stream-moderation.response.sse")),
        ("anthropic", fixture("anthropic/pydai-stream-thinking-redacted.response.sse")),
        ("google", fixture("google/pydai-stream-thinking.response.sse")),
        ("cohere", chunks_as_sse("cohere/vercel-cohere-reasoning.chunks.txt")),
    ]
}

fn streamed_chat() -> ChatRequest {
    let body = br#"{"model":"openai/gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    parsed(&Bytes::from_static(body)).chat
}

/// Upstream bytes to translated chunks (the whole body in one read; `feed` and
/// `finish`), the part of a stream every client format shares.
fn stream_translation(c: &mut Criterion) {
    let chat = streamed_chat();
    let mut group = c.benchmark_group("stream_translate");
    for ((provider, adapter), (_, body)) in adapters().into_iter().zip(streams()) {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(provider), &body, |b, body| {
            let mut out = Vec::new();
            b.iter(|| {
                out.clear();
                let mut translator = adapter.stream(&chat);
                translator.feed(black_box(body), &mut out).expect("valid stream");
                translator.finish(&mut out).expect("complete stream");
            })
        });
    }
    group.finish();
}

fn translated(provider: &str, body: &[u8]) -> Vec<Chunk> {
    let (_, adapter) = adapters().into_iter().find(|(name, _)| *name == provider).expect("known");
    let mut out = Vec::new();
    let mut translator = adapter.stream(&streamed_chat());
    translator.feed(body, &mut out).expect("valid stream");
    translator.finish(&mut out).expect("complete stream");
    out
}

/// Translated chunks to the client's bytes, ending with the usage and cost, into one
/// reused buffer as the relay does: OpenAI chat chunks and Anthropic's events (rebuilt
/// from the chunks of a non-Anthropic model). Throughput is of the bytes written.
fn stream_encoding(c: &mut Criterion) {
    let catalog = Catalog::builtin();
    let model: &Model = catalog.get(MODEL).expect("catalogued");
    let echo = serde_json::Value::Null;
    let answer =
        Answered { id: "gen-0123456789abcdef0123456789abcdef", created_s: 1, model, echo: &echo };
    let usage = Usage { prompt_tokens: 13, completion_tokens: 41, ..Usage::default() };
    let cost = model.cost(&usage);
    let mut group = c.benchmark_group("stream_encode");
    for (provider, body) in streams() {
        let chunks = translated(provider, &body);
        for (format, codec) in [("chat", &CHAT as &dyn Codec), ("messages", &MESSAGES)] {
            let write = |out: &mut BytesMut| {
                let mut encoder = codec.encoder(&answer, false);
                for chunk in &chunks {
                    encoder.chunk(chunk, out);
                }
                encoder.finish(&usage, cost, out);
            };
            let mut out = BytesMut::new();
            write(&mut out);
            group.throughput(Throughput::Bytes(out.len() as u64));
            group.bench_function(BenchmarkId::new(format, provider), |b| {
                b.iter(|| {
                    out.clear();
                    write(&mut out);
                })
            });
        }
    }
    group.finish();
}

/// A plain answer, from the provider's body to the client's: the OpenAI-compatible
/// adapter's `response` (read, normalised) then the Chat Completions codec's
/// `completion` (the envelope, the choices, the usage with its cost). Throughput is of
/// the provider's body.
fn plain_answer(c: &mut Criterion) {
    let catalog = Catalog::builtin();
    let model: &Model = catalog.get(MODEL).expect("catalogued");
    let echo = serde_json::Value::Null;
    let answer =
        Answered { id: "gen-0123456789abcdef0123456789abcdef", created_s: 1, model, echo: &echo };
    let adapter = OpenAiCompatible::new("openai", Quirks::OPENAI);
    let chat = parsed(&requests()[0].1).chat;
    let body = fixture("openai/pydai-text-system-instructions.response.json");
    let mut group = c.benchmark_group("respond");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("chat/openai", |b| {
        b.iter(|| {
            let completion = adapter.response(&chat, black_box(&body)).expect("valid answer");
            let cost = model.cost(&completion.usage);
            CHAT.completion(&answer, completion, None, cost)
        })
    });
    group.finish();
}

fn sse_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("sse_parse");
    for (provider, body) in streams() {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(provider), &body, |b, body| {
            let mut events = Vec::new();
            b.iter(|| {
                events.clear();
                let mut parser = SseParser::new();
                parser.feed(black_box(body), &mut events).expect("bounded");
                parser.finish(&mut events).expect("bounded");
            })
        });
    }
    group.finish();
}

fn usage_and_cost(c: &mut Criterion) {
    let catalog = Catalog::builtin();
    let model = catalog.get(MODEL).expect("catalogued");
    let usage = Usage {
        prompt_tokens: 1_300,
        completion_tokens: 410,
        reasoning_tokens: 200,
        cached_read_tokens: 1_024,
        cached_write_tokens: 0,
    };
    let mut group = c.benchmark_group("usage");
    group.bench_function("cost", |b| b.iter(|| model.cost(black_box(&usage))));
    group.bench_function("reservation_bound", |b| {
        b.iter(|| model.bound(black_box(1_300), black_box(4_096)))
    });
    group.finish();
}

fn breaker(c: &mut Criterion) {
    let catalog = Catalog::builtin();
    let health = Health::new(&catalog);
    let model = catalog.get("openai/gpt-4o").expect("catalogued");
    c.bench_function("breaker/admit", |b| b.iter(|| health.admit(black_box(model))));
}

criterion_group! {
    name = benches;
    config = config();
    targets = parse_request, authenticate, route_request, request_translation,
        stream_translation, stream_encoding, plain_answer, sse_parse, usage_and_cost, breaker
}
criterion_main!(benches);
