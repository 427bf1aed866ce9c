//! The built-in mock upstream: a real HTTP server speaking four providers' wire formats
//! on their real paths, so dev mode, load tests and tests exercise the same adapters as
//! real providers, with no keys and no network; and a scriptable misbehaving provider,
//! so tests and incident rehearsals can drive every fault through any SDK.
//!
//! | Format | Path | Model from |
//! |---|---|---|
//! | OpenAI | `POST /chat/completions`, `POST /v1/chat/completions` | `model` |
//! | Anthropic | `POST /v1/messages`; `POST /v1/messages/count_tokens` (the prompt's words) | `model` |
//! | Gemini | `POST /v1beta/models/{model}:generateContent`, `…:streamGenerateContent?alt=sse` | the path |
//! | Cohere | `POST /v2/chat` | `model` |
//! | OpenAI embeddings | `POST /embeddings`, `POST /v1/embeddings` (`embed.rs`) | `model` |
//!
//! Models, in every format: `echo` answers with the last user message's text (a
//! directive removed), `embed` the same (it is named for embeddings, which any model
//! but `unavailable` answers); `unavailable` always answers 503; any other is a 404, or
//! answers as `echo` with [`MockConfig::echo_any_model`] (`--echo-any-model`), so that real
//! providers' catalogue models can be pointed at the mock.
//!
//! Tokens are whitespace-separated words, at least 1 each way, so every count is
//! deterministic. Like a real provider the mock honours the completion limit
//! (`max_tokens` or `max_completion_tokens`, the larger if both; Anthropic's
//! `max_tokens`; Gemini's `generationConfig.maxOutputTokens`; Cohere's `max_tokens`):
//! the answer is cut to that many words and ends with the format's length reason. It
//! refuses a prompt longer than the model's context (`echo`: [`MockConfig::context_words`])
//! with a 400 in the format's error shape.
//!
//! # Per-request script
//!
//! A directive anywhere in the request's text (a message, the system prompt, a tool
//! result) scripts that request: `[[mock knob knob …]]`, knobs separated by spaces, on
//! one line, each at most once; the first directive of the body counts. An invalid
//! directive is a 400 naming it.
//!
//! | Knob | Effect |
//! |---|---|
//! | `words=N` | answer with N filler words (`word word …`) instead of the echo |
//! | `cut_after=N` | stream: close the connection abruptly after N events (no terminal event); plain: after half the body |
//! | `pause_ms=N` | stall N ms before event `pause_after` (default 0); plain: before the head |
//! | `pause_after=K` | with `pause_ms`: the stall comes after K events |
//! | `usage=full` | usage where and as the provider reports it (the default) |
//! | `usage=drop` | no usage anywhere |
//! | `usage=partial` | only the start's usage (input, 1 output token), as Anthropic's `message_start`; the final usage is missing (OpenAI: on the first chunk; Cohere, plain bodies: as the only usage) |
//! | `usage=over:F` | every reported count times F (rounded up) |
//! | `usage=absurd` | 10^19 output tokens in the final usage |
//! | `ignore_max_tokens` | answer the full length whatever the limit |
//! | `status=NNN` | answer that error status (400 to 599) in the format's shape |
//! | `hang` | read the request, then never answer (the connection is dropped after [`MOCK_HANG_MAX`]) |
//!
//! An event is one SSE event (`data: [DONE]` included). Server-wide timing and random
//! faults are [`MockConfig`]'s; a request's script applies on top of them.
//!
//! Plain `http://` is HTTP/1.1 (or h2c, by the client's preface); [`serve_tls`] serves
//! `https://` with a [`MockTls`] certificate, HTTP/2 or HTTP/1.1 by ALPN as providers do.

mod anthropic;
mod cohere;
mod embed;
mod gemini;
mod knobs;
mod openai;
mod script;
mod tokens;

pub use knobs::{parse_error_rates, KnobError, Knobs, MockConfig, CONTEXT_WORDS_DEFAULT};
pub use tokens::{word_count, ABSURD_TOKENS};

use crate::body::UnreadBody;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use knobs::Fate;
use script::{Pause, Script};
use serde::Deserialize;
use serde_json::Value;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokens::{Answer, Reported};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The largest request body the mock reads; a larger one is refused with 413 and the rest
/// lingers over (`body::UnreadBody`), as a provider's front end does, so a client still
/// sending reads the 413 rather than a reset. Gateway requests are far smaller; the limit
/// only keeps a stray client from exhausting memory.
pub const MOCK_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Concurrent connections served; further accepts wait. Comfortably above what the
/// load generator opens (it pools connections), low enough to bound memory.
pub const MOCK_CONNECTIONS_MAX: usize = 4096;

/// How long a hung request holds its connection before the mock drops it unanswered:
/// beyond any upstream timeout worth rehearsing, and a bound on what hangs hold while
/// a client that gave up keeps its connection open.
pub const MOCK_HANG_MAX: Duration = Duration::from_secs(600);

/// Serves the default mock (a fast echo, no faults) until `shutdown` completes.
pub async fn serve<F: Future>(listener: TcpListener, shutdown: F) -> std::io::Result<()> {
    serve_with(listener, Knobs::default(), shutdown).await
}

/// Serves with `knobs` until `shutdown` completes, then stops accepting and drops open
/// connections (hung requests included).
pub async fn serve_with<F: Future>(
    listener: TcpListener,
    knobs: Knobs,
    shutdown: F,
) -> std::io::Result<()> {
    serve_on(listener, knobs, None, shutdown).await
}

/// [`serve_with`] over TLS: `https://` with `tls`'s certificate, HTTP/2 or HTTP/1.1 as
/// the client picks by ALPN, as real providers serve.
pub async fn serve_tls<F: Future>(
    listener: TcpListener,
    knobs: Knobs,
    tls: MockTls,
    shutdown: F,
) -> std::io::Result<()> {
    serve_on(listener, knobs, Some(tls), shutdown).await
}

async fn serve_on<F: Future>(
    listener: TcpListener,
    knobs: Knobs,
    tls: Option<MockTls>,
    shutdown: F,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared { knobs, requests: AtomicU64::new(0) });
    let permits = Arc::new(Semaphore::new(MOCK_CONNECTIONS_MAX));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = accept(&listener, &permits) => accepted,
        };
        let (stream, permit) = match accepted {
            Ok(accepted) => accepted,
            // A peer that reset during the handshake is its problem, not the server's.
            Err(error) if is_per_connection(&error) => continue,
            Err(error) => return Err(error),
        };
        let shared = Arc::clone(&shared);
        let tls = tls.clone();
        connections.spawn(async move {
            let _permit = permit;
            let Some(tls) = tls else {
                return serve_connection(stream, shared, H2_STREAMS_MAX_DEFAULT).await;
            };
            // A client that never completes its handshake holds the permit this long.
            let handshake = tls.acceptor.accept(stream);
            if let Ok(Ok(stream)) = tokio::time::timeout(MOCK_TLS_HANDSHAKE_MAX, handshake).await {
                serve_connection(stream, shared, tls.h2_streams_max).await;
            }
        });
        while connections.try_join_next().is_some() {}
    }
}

/// Serves one connection, HTTP/1.1 or HTTP/2 (by ALPN over TLS; by the client's
/// preface in plain text) with at most `h2_streams_max` concurrent HTTP/2 streams.
async fn serve_connection<I>(io: I, shared: Arc<Shared>, h2_streams_max: u32)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| handle(Arc::clone(&shared), request));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(h2_streams_max);
    // A connection error (client hung up mid-request) ends that connection only.
    let _ = builder.serve_connection(TokioIo::new(io), service).await;
}

/// HTTP/2 streams a connection carries at once unless [`MockTls::with_h2_streams_max`]
/// says otherwise: hyper's default. A client whose connection is full waits for a stream
/// to end (hyper's client opens no second connection for it).
pub const H2_STREAMS_MAX_DEFAULT: u32 = 200;

/// How long a TLS client may take over its handshake.
pub const MOCK_TLS_HANDSHAKE_MAX: Duration = Duration::from_secs(10);

/// The mock's HTTPS identity: a certificate chain and key, ALPN offering `h2` and
/// `http/1.1` as providers' hosts do. A gateway reaches it over HTTP/2 when it trusts
/// the certificate's CA (`upstream_ca_file`); `solrouter dev-ca` writes a CA and a server
/// certificate for 127.0.0.1 (`ledger.pem`, `ledger-key.pem`).
#[derive(Clone)]
pub struct MockTls {
    acceptor: tokio_rustls::TlsAcceptor,
    h2_streams_max: u32,
}

impl MockTls {
    /// Reads `cert` (PEM, leaf first) and `key` (PEM).
    pub fn from_pem_files(cert: &Path, key: &Path) -> anyhow::Result<MockTls> {
        use anyhow::Context as _;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("reading {}", cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("reading {}", key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("the mock's certificate and key")?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(MockTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            h2_streams_max: H2_STREAMS_MAX_DEFAULT,
        })
    }

    /// At most `streams` concurrent HTTP/2 streams per connection (at least 1).
    pub fn with_h2_streams_max(self, streams: u32) -> MockTls {
        MockTls { h2_streams_max: streams.max(1), ..self }
    }
}

/// What every connection shares.
struct Shared {
    knobs: Knobs,
    /// Requests that drew a fate so far: the next draw's number.
    requests: AtomicU64,
}

async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
) -> std::io::Result<(tokio::net::TcpStream, tokio::sync::OwnedSemaphorePermit)> {
    let permit = Arc::clone(permits).acquire_owned().await.expect("the semaphore is never closed");
    let (stream, _) = listener.accept().await?;
    stream.set_nodelay(true)?;
    Ok((stream, permit))
}

fn is_per_connection(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::InvalidInput
    )
}

/// A response body: whole, or paced and possibly cut.
type MockBody = Either<Full<Bytes>, UnsyncBoxBody<Bytes, Cut>>;

/// The service error that makes hyper close a connection without answering: a hang
/// that reached [`MOCK_HANG_MAX`].
#[derive(Debug, thiserror::Error)]
#[error("the mock hung up without answering, as scripted")]
struct HungUp;

/// The error that makes hyper drop a connection mid-body: the cut.
#[derive(Debug, thiserror::Error)]
#[error("the mock cut the connection as scripted")]
struct Cut;

/// The wire formats, each in its own module with the same four functions: `read` a
/// request, `complete` a plain answer, `stream` an SSE answer, and an `error` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    OpenAi,
    Anthropic,
    Gemini { stream: bool },
    Cohere,
}

impl Format {
    /// The format a request path belongs to, and Gemini's model from it.
    fn route(path: &str) -> Option<(Format, &str)> {
        match path {
            "/chat/completions" | "/v1/chat/completions" => Some((Format::OpenAi, "")),
            "/v1/messages" => Some((Format::Anthropic, "")),
            "/v2/chat" => Some((Format::Cohere, "")),
            _ => {
                let (model, method) = path.strip_prefix("/v1beta/models/")?.rsplit_once(':')?;
                let stream = match method {
                    "generateContent" => false,
                    "streamGenerateContent" => true,
                    _ => return None,
                };
                Some((Format::Gemini { stream }, model))
            }
        }
    }

    fn read(self, body: &[u8], path_model: &str) -> Result<Prompt, MockError> {
        match self {
            Format::OpenAi => openai::read(body),
            // Anthropic and Cohere requests share one top-level shape (Cohere's has no
            // `system`: its system prompt is a message).
            Format::Anthropic | Format::Cohere => read_messages_request(body),
            Format::Gemini { stream } => gemini::read(body, path_model, stream),
        }
    }

    fn render(self, exchange: &Exchange<'_>, streamed: bool, body: &mut Vec<u8>) {
        match (self, streamed) {
            (Format::OpenAi, false) => openai::complete(exchange, body),
            (Format::OpenAi, true) => openai::stream(exchange, body),
            (Format::Anthropic, false) => anthropic::complete(exchange, body),
            (Format::Anthropic, true) => anthropic::stream(exchange, body),
            (Format::Gemini { .. }, false) => gemini::complete(exchange, body),
            (Format::Gemini { .. }, true) => gemini::stream(exchange, body),
            (Format::Cohere, false) => cohere::complete(exchange, body),
            (Format::Cohere, true) => cohere::stream(exchange, body),
        }
    }

    fn error(self, error: &MockError) -> Plan {
        let mut body = Vec::with_capacity(256);
        match self {
            Format::OpenAi => openai::error(error, &mut body),
            Format::Anthropic => anthropic::error(error, &mut body),
            Format::Gemini { .. } => gemini::error(error, &mut body),
            Format::Cohere => cohere::error(error, &mut body),
        }
        Plan {
            status: error.status,
            content_type: "application/json",
            body,
            streamed: false,
            n_words: 0,
            cut: None,
            pause: None,
            hang: false,
        }
    }
}

/// A request, as its format reads it.
struct Prompt {
    model: String,
    stream: bool,
    /// Whether a stream reports usage: always, except OpenAI's without
    /// `stream_options.include_usage`.
    stream_usage: bool,
    max_tokens: Option<u64>,
    prompt_words: u64,
    last_user: String,
}

/// What a format renders.
struct Exchange<'a> {
    /// Makes the format's response id.
    id: u64,
    /// Unix seconds.
    created: u64,
    model: &'a str,
    answer: Answer<'a>,
    usage: Reported,
    stream_usage: bool,
}

/// A refusal, rendered in the format's error shape.
#[derive(Debug)]
struct MockError {
    status: StatusCode,
    /// OpenAI's `code`.
    code: &'static str,
    /// OpenAI's `param`.
    param: Option<&'static str>,
    message: String,
}

impl MockError {
    fn new(status: StatusCode, code: &'static str, message: String) -> MockError {
        MockError { status, code, param: None, message }
    }

    fn body(error: serde_json::Error) -> MockError {
        let message = format!("invalid JSON body: {error}");
        MockError::new(StatusCode::BAD_REQUEST, "invalid_body", message)
    }

    /// A completion limit, refused when zero as providers do.
    fn limit(param: &'static str, limit: Option<u64>) -> Result<Option<u64>, MockError> {
        match limit {
            Some(0) => Err(MockError {
                param: Some(param),
                ..MockError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_value",
                    format!("{param} must be at least 1"),
                )
            }),
            limit => Ok(limit),
        }
    }
}

/// A message of the formats that share OpenAI's `{role, content}` shape.
#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Value,
}

/// An Anthropic Messages or Cohere Chat v2 request: `max_tokens` is the limit (Anthropic
/// requires one; the mock takes its absence as no limit).
#[derive(Deserialize)]
struct MessagesRequest {
    model: String,
    #[serde(default)]
    messages: Vec<ChatMessage>,
    #[serde(default)]
    system: Value,
    #[serde(default)]
    stream: bool,
    max_tokens: Option<u64>,
}

fn read_messages_request(body: &[u8]) -> Result<Prompt, MockError> {
    let request: MessagesRequest = serde_json::from_slice(body).map_err(MockError::body)?;
    let (prompt_words, last_user) = read_messages(&request.system, &request.messages);
    Ok(Prompt {
        model: request.model,
        stream: request.stream,
        stream_usage: true,
        max_tokens: MockError::limit("max_tokens", request.max_tokens)?,
        prompt_words,
        last_user,
    })
}

/// The prompt's words (`system`'s and every message's text) and the text of the last
/// user message.
fn read_messages(system: &Value, messages: &[ChatMessage]) -> (u64, String) {
    let mut prompt_words = 0;
    tokens::for_each_text(system, |text| prompt_words += tokens::word_count(text));
    for message in messages {
        tokens::for_each_text(&message.content, |text| prompt_words += tokens::word_count(text));
    }
    let mut last_user = String::new();
    if let Some(message) = messages.iter().rev().find(|message| message.role == "user") {
        tokens::for_each_text(&message.content, |text| last_user.push_str(text));
    }
    (prompt_words, last_user)
}

/// Writes `text` as a JSON string.
fn json_string(body: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(body, text).expect("strings always serialize");
}

/// Writes formatted text (numbers into a template).
fn put(body: &mut Vec<u8>, arguments: std::fmt::Arguments<'_>) {
    use std::io::Write;
    body.write_fmt(arguments).expect("a Vec takes every write");
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<MockBody>, HungUp> {
    let embeddings = request.method() == Method::POST && embed::serves(request.uri().path());
    let counting =
        request.method() == Method::POST && request.uri().path() == "/v1/messages/count_tokens";
    let route = (request.method() == Method::POST)
        .then(|| Format::route(request.uri().path()))
        .flatten()
        .map(|(format, model)| (format, model.to_owned()));
    let route = route
        .or_else(|| embeddings.then(|| (Format::OpenAi, String::new())))
        .or_else(|| counting.then(|| (Format::Anthropic, String::new())));
    let Some((format, path_model)) = route else {
        let error = MockError::new(StatusCode::NOT_FOUND, "not_found", "unknown route".into());
        return Ok(Format::OpenAi.error(&error).into_response(&shared.knobs));
    };
    let (head, body) = request.into_parts();
    let read = match UnreadBody::new(&head.headers, body, MOCK_BODY_BYTES_MAX) {
        Ok(unread) => unread.read(MOCK_BODY_BYTES_MAX).await,
        Err(refused) => Err(refused),
    };
    let body = match read {
        Ok(body) => body,
        Err(refused) => {
            let error = MockError::new(refused.status(), "body", refused.message().to_owned());
            return Ok(format.error(&error).into_response(&shared.knobs));
        }
    };
    let knobs = &shared.knobs;
    let fate = if knobs.draws() {
        knobs.draw(shared.requests.fetch_add(1, Ordering::Relaxed))
    } else {
        Fate::Answer
    };
    let plan = match script::read(&body) {
        Err(error) => {
            let message = error.to_string();
            let error = MockError::new(StatusCode::BAD_REQUEST, "invalid_directive", message);
            format.error(&error)
        }
        Ok(script) if embeddings => embed::plan(knobs, &body, &script, fate),
        Ok(_) if counting => count_tokens_plan(&body),
        Ok(script) => plan(knobs, format, &path_model, &body, &script, fate),
    };
    if plan.hang {
        // Ends early with the connection, when the client leaves or the server stops.
        tokio::time::sleep(MOCK_HANG_MAX).await;
        return Err(HungUp);
    }
    let config = knobs.config();
    let mut before_head = config.latency;
    if !plan.streamed && plan.status.is_success() {
        // A plain answer arrives once its stream would have ended.
        before_head += config.ttft + knobs.event_interval() * plan.n_words;
        before_head += plan.pause.map_or(Duration::ZERO, |pause| pause.duration);
    }
    if !before_head.is_zero() {
        tokio::time::sleep(before_head).await;
    }
    Ok(plan.into_response(knobs))
}

/// Anthropic's `count_tokens`: the prompt's words.
fn count_tokens_plan(body: &[u8]) -> Plan {
    match read_messages_request(body) {
        Err(error) => Format::Anthropic.error(&error),
        Ok(prompt) => Plan {
            status: StatusCode::OK,
            content_type: "application/json",
            body: format!("{{\"input_tokens\":{}}}", prompt.prompt_words).into_bytes(),
            streamed: false,
            n_words: 0,
            cut: None,
            pause: None,
            hang: false,
        },
    }
}

/// Everything about one answer, decided before any of it is sent.
struct Plan {
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
    streamed: bool,
    /// Words in the answer: what a plain answer's pacing counts.
    n_words: u32,
    cut: Option<CutAt>,
    pause: Option<Pause>,
    hang: bool,
}

#[derive(Debug, Clone, Copy)]
enum CutAt {
    /// After this many events (`cut_after`).
    Events(u64),
    /// At a random point (`--cut-rate`): the draw picks it.
    Random(u64),
}

/// Decides the answer: refusals first (directive, model, context, scripted or drawn
/// status), then the answer itself, rendered whole.
fn plan(
    knobs: &Knobs,
    format: Format,
    path_model: &str,
    body: &[u8],
    script: &Script,
    fate: Fate,
) -> Plan {
    let prompt = match format.read(body, path_model) {
        Ok(prompt) => prompt,
        Err(error) => return format.error(&error),
    };
    if let Some(error) = refusal(knobs, &prompt, script, fate) {
        return format.error(&error);
    }
    let last_user = script::strip(&prompt.last_user).unwrap_or(prompt.last_user);
    let source = tokens::source_text(last_user, script);
    let answer = Answer::new(&source, prompt.max_tokens, script);
    let n_words = u32::try_from(answer.pieces.len()).unwrap_or(u32::MAX);
    let exchange = Exchange {
        id: next_id(),
        created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs()),
        model: &prompt.model,
        usage: Reported::new(prompt.prompt_words, answer.completion_tokens(), script.usage),
        answer,
        stream_usage: prompt.stream_usage,
    };
    let mut rendered = Vec::with_capacity(256 + exchange.answer.text.len() * 8);
    format.render(&exchange, prompt.stream, &mut rendered);
    let cut = match (script.cut_after, fate) {
        (Some(n_events), _) => Some(CutAt::Events(n_events)),
        (None, Fate::Cut(point)) => Some(CutAt::Random(point)),
        _ => None,
    };
    Plan {
        status: StatusCode::OK,
        content_type: if prompt.stream { "text/event-stream" } else { "application/json" },
        body: rendered,
        streamed: prompt.stream,
        n_words,
        cut,
        pause: script.pause,
        hang: script.hang || fate == Fate::Hang,
    }
}

/// Why the mock refuses to answer `prompt`, if it does.
fn refusal(knobs: &Knobs, prompt: &Prompt, script: &Script, fate: Fate) -> Option<MockError> {
    match prompt.model.as_str() {
        "echo" | "embed" => {}
        "unavailable" => {
            let message = "the mock model `unavailable` is always unavailable".to_owned();
            return Some(MockError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message));
        }
        _ if knobs.config().echo_any_model => {}
        model => {
            let message = format!("the model `{model}` does not exist");
            return Some(MockError::new(StatusCode::NOT_FOUND, "model_not_found", message));
        }
    }
    let context_words = knobs.config().context_words;
    if prompt.prompt_words > context_words {
        let message =
            format!("prompt is too long: {} tokens > {context_words} maximum", prompt.prompt_words);
        return Some(MockError {
            param: Some("messages"),
            ..MockError::new(StatusCode::BAD_REQUEST, "context_length_exceeded", message)
        });
    }
    if let Some(status) = script.status {
        let message = format!("status {} as the mock directive asked", status.as_u16());
        return Some(MockError::new(status, "mock_status", message));
    }
    if let Fate::Error(status) = fate {
        let message = format!("status {} drawn by --error-rate", status.as_u16());
        return Some(MockError::new(status, "mock_error_rate", message));
    }
    None
}

impl Plan {
    /// The response: whole when nothing paces or cuts it (the fast path), else a body
    /// that sends events on schedule and may end by dropping the connection.
    fn into_response(self, knobs: &Knobs) -> Response<MockBody> {
        let config = knobs.config();
        let paced = self.streamed
            && (!config.ttft.is_zero() || config.tokens_per_second > 0 || self.pause.is_some());
        let body = Bytes::from(self.body);
        let body = if self.cut.is_none() && !paced {
            Either::Left(Full::new(body))
        } else {
            let delivery = Delivery::new(body, self.streamed, self.cut, self.pause, knobs);
            Either::Right(delivery.into_body())
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        response
    }
}

/// A body sent event by event on a schedule, cut after `n_send` events when `cut`.
struct Delivery {
    body: Bytes,
    /// Where each event ends in `body`.
    ends: Vec<usize>,
    n_send: usize,
    cut: bool,
    n_sent: usize,
    start: Instant,
    ttft: Duration,
    interval: Duration,
    pause: Option<Pause>,
}

impl Delivery {
    fn new(
        body: Bytes,
        streamed: bool,
        cut: Option<CutAt>,
        pause: Option<Pause>,
        knobs: &Knobs,
    ) -> Delivery {
        let config = knobs.config();
        let (ends, ttft, interval, pause) = if streamed {
            (event_ends(&body), config.ttft, knobs.event_interval(), pause)
        } else if cut.is_some() {
            // A cut plain body: half of it, then the close. Its delays came before the head.
            (vec![body.len() / 2, body.len()], Duration::ZERO, Duration::ZERO, None)
        } else {
            (vec![body.len()], Duration::ZERO, Duration::ZERO, None)
        };
        let n_events = ends.len();
        let n_send = match (cut, streamed) {
            (None, _) => n_events,
            (Some(_), false) => 1,
            (Some(CutAt::Events(n)), true) => {
                usize::try_from(n).unwrap_or(usize::MAX).min(n_events)
            }
            // Somewhere strictly inside the stream: at least one event, never all.
            (Some(CutAt::Random(point)), true) => match n_events {
                0 | 1 => 0,
                _ => 1 + usize::try_from(point % (n_events as u64 - 1)).expect("below n_events"),
            },
        };
        Delivery {
            body,
            ends,
            n_send,
            cut: n_send < n_events,
            n_sent: 0,
            start: Instant::now(),
            ttft,
            interval,
            pause,
        }
    }

    /// When event `event_idx` is due.
    fn due(&self, event_idx: usize) -> Instant {
        let mut offset = self.ttft + self.interval * u32::try_from(event_idx).unwrap_or(u32::MAX);
        if let Some(pause) = self.pause {
            if event_idx as u64 >= pause.after_events {
                offset += pause.duration;
            }
        }
        self.start + offset
    }

    fn into_body(self) -> UnsyncBoxBody<Bytes, Cut> {
        let frames = futures_util::stream::unfold(Some(self), |delivery| async move {
            let mut delivery = delivery?;
            if delivery.n_sent == delivery.n_send {
                if !delivery.cut {
                    return None;
                }
                // Let hyper flush what was sent before the error drops the connection.
                tokio::task::yield_now().await;
                return Some((Err(Cut), None));
            }
            tokio::time::sleep_until(delivery.due(delivery.n_sent)).await;
            let start =
                delivery.n_sent.checked_sub(1).map_or(0, |previous| delivery.ends[previous]);
            let event = delivery.body.slice(start..delivery.ends[delivery.n_sent]);
            delivery.n_sent += 1;
            Some((Ok(Frame::data(event)), Some(delivery)))
        });
        StreamBody::new(frames).boxed_unsync()
    }
}

/// Where each SSE event of `body` ends: after each blank line. Every format writes
/// events that end in `\n\n` and JSON escapes every newline inside them.
fn event_ends(body: &[u8]) -> Vec<usize> {
    let mut ends: Vec<usize> = body
        .windows(2)
        .enumerate()
        .filter(|(_, pair)| pair == b"\n\n")
        .map(|(at, _)| at + 2)
        .collect();
    if ends.last() != Some(&body.len()) {
        ends.push(body.len());
    }
    ends
}

fn next_id() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}
