//! The built-in mock upstream: a real HTTP server speaking the OpenAI Chat Completions
//! wire format, so dev mode and load tests exercise the same adapter path as a real
//! provider, with no keys and no network.
//!
//! Models: `echo` answers with the last user message's text; `unavailable` always
//! answers 503. Token counts are deterministic: whitespace-separated words, at least 1.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The largest request body the mock reads. Gateway requests are far smaller; the
/// limit only keeps a stray client from exhausting memory.
pub const MOCK_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Concurrent connections served; further accepts wait. Comfortably above what the
/// load generator opens (it pools connections), low enough to bound memory.
pub const MOCK_CONNECTIONS_MAX: usize = 4096;

/// Serves until `shutdown` completes, then stops accepting and drops open connections.
pub async fn serve<F: Future>(listener: TcpListener, shutdown: F) -> std::io::Result<()> {
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
        connections.spawn(async move {
            let _permit = permit;
            let service = service_fn(handle);
            // A connection error (client hung up mid-request) ends that connection only.
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
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

async fn handle(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path();
    if request.method() != Method::POST
        || !(path == "/chat/completions" || path == "/v1/chat/completions")
    {
        return Ok(error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            "unknown route",
        ));
    }
    let body = match Limited::new(request.into_body(), MOCK_BODY_BYTES_MAX).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            let message = "request body too large or unreadable";
            return Ok(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "body",
                message,
            ));
        }
    };
    let chat: MockRequest = match serde_json::from_slice(&body) {
        Ok(chat) => chat,
        Err(parse_error) => {
            let message = format!("invalid JSON body: {parse_error}");
            return Ok(error(StatusCode::BAD_REQUEST, "invalid_request_error", "body", &message));
        }
    };
    Ok(match chat.model.as_str() {
        "echo" => echo(&chat),
        "unavailable" => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "unavailable",
            "the mock model `unavailable` is always unavailable",
        ),
        model => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            &format!("the model `{model}` does not exist"),
        ),
    })
}

#[derive(Deserialize)]
struct MockRequest {
    model: String,
    #[serde(default)]
    messages: Vec<MockMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct MockMessage {
    role: String,
    #[serde(default)]
    content: Value,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Calls `visit` with each text fragment of a message's content: the string itself, or
/// the `text` of each `{"type": "text"}` part.
fn for_each_text(content: &Value, mut visit: impl FnMut(&str)) {
    match content {
        Value::String(text) => visit(text),
        Value::Array(parts) => {
            parts.iter().filter_map(|part| part.get("text").and_then(Value::as_str)).for_each(visit)
        }
        _ => {}
    }
}

fn word_count(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn echo(chat: &MockRequest) -> Response<Full<Bytes>> {
    let mut prompt_words = 0;
    for message in &chat.messages {
        for_each_text(&message.content, |text| prompt_words += word_count(text));
    }
    let mut reply = String::new();
    if let Some(last_user) = chat.messages.iter().rev().find(|message| message.role == "user") {
        for_each_text(&last_user.content, |text| reply.push_str(text));
    }
    let usage = WireUsage {
        prompt_tokens: prompt_words.max(1),
        completion_tokens: word_count(&reply).max(1),
        total_tokens: prompt_words.max(1) + word_count(&reply).max(1),
    };
    let envelope = Envelope {
        id: next_id(),
        created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs()),
        model: &chat.model,
    };
    if chat.stream {
        let include_usage = chat.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let body = stream_body(&envelope, &reply, include_usage.then_some(usage));
        respond(StatusCode::OK, "text/event-stream", body)
    } else {
        let completion = CompletionBody {
            id: &envelope.id,
            object: "chat.completion",
            created: envelope.created,
            model: envelope.model,
            choices: [CompletionChoice {
                index: 0,
                message: AssistantMessage { role: "assistant", content: &reply },
                finish_reason: "stop",
            }],
            usage,
        };
        let body = serde_json::to_vec(&completion).expect("plain structs always serialize");
        respond(StatusCode::OK, "application/json", body)
    }
}

/// Builds the whole SSE body at once: one content chunk per word (each carrying the
/// whitespace after it, so the pieces concatenate to exactly the non-streamed text),
/// a finish-reason chunk, the usage chunk if asked for, then `[DONE]`.
fn stream_body(envelope: &Envelope<'_>, reply: &str, usage: Option<WireUsage>) -> Vec<u8> {
    let mut body = Vec::with_capacity(256 + reply.len() * 8);
    let mut first = true;
    for piece in word_pieces(reply) {
        let delta = Delta { role: first.then_some("assistant"), content: Some(piece) };
        first = false;
        let choice = ChunkChoice { index: 0, delta, finish_reason: None };
        envelope.write_chunk(&mut body, &[choice], None);
    }
    let stop = ChunkChoice {
        index: 0,
        delta: Delta { role: None, content: None },
        finish_reason: Some("stop"),
    };
    envelope.write_chunk(&mut body, &[stop], None);
    if let Some(usage) = usage {
        envelope.write_chunk(&mut body, &[], Some(usage));
    }
    body.extend_from_slice(b"data: [DONE]\n\n");
    body
}

/// Splits `text` into one piece per word, each piece ending with the whitespace that
/// follows its word (leading whitespace joins the first piece). Empty or blank text is
/// one piece, matching the minimum of one completion token.
fn word_pieces(text: &str) -> impl Iterator<Item = &str> {
    let mut starts = vec![0];
    let mut previous_is_space = false;
    let mut seen_word = false;
    for (byte_idx, character) in text.char_indices() {
        let is_space = character.is_whitespace();
        if !is_space && previous_is_space && seen_word {
            starts.push(byte_idx);
        }
        seen_word |= !is_space;
        previous_is_space = is_space;
    }
    let ends = starts.clone().into_iter().skip(1).chain([text.len()]);
    starts.into_iter().zip(ends).map(move |(start, end)| &text[start..end])
}

fn next_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!("chatcmpl-mock-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn respond(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "error": {"message": message, "type": kind, "param": null, "code": code}
    });
    respond(status, "application/json", body.to_string().into_bytes())
}

struct Envelope<'a> {
    id: String,
    created: u64,
    model: &'a str,
}

impl Envelope<'_> {
    fn write_chunk(
        &self,
        body: &mut Vec<u8>,
        choices: &[ChunkChoice<'_>],
        usage: Option<WireUsage>,
    ) {
        let chunk = ChunkBody {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model,
            choices,
            usage,
        };
        body.extend_from_slice(b"data: ");
        serde_json::to_writer(&mut *body, &chunk).expect("plain structs always serialize");
        body.extend_from_slice(b"\n\n");
    }
}

#[derive(Serialize, Clone, Copy)]
struct WireUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

#[derive(Serialize)]
struct CompletionBody<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [CompletionChoice<'a>; 1],
    usage: WireUsage,
}

#[derive(Serialize)]
struct CompletionChoice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct ChunkBody<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<WireUsage>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_pieces_concatenate_to_the_text() {
        let check = |text: &str, expected: &[&str]| {
            let pieces: Vec<&str> = word_pieces(text).collect();
            assert_eq!(pieces, expected, "{text:?}");
            assert_eq!(pieces.concat(), text);
            assert_eq!(pieces.len() as u64, word_count(text).max(1));
        };
        check("", &[""]);
        check("   ", &["   "]);
        check("one", &["one"]);
        check("hello  wide\nworld ", &["hello  ", "wide\n", "world "]);
        check(" lead é", &[" lead ", "é"]);
    }
}
