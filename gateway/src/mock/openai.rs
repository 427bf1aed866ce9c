//! OpenAI Chat Completions: `POST /chat/completions` (and `/v1/chat/completions`), a
//! `chat.completion` object, or `chat.completion.chunk` events (one per word, a
//! finish-reason chunk, the usage chunk when `stream_options.include_usage` asks for
//! it) and `data: [DONE]`.

use super::tokens::{Counts, Finish};
use super::{read_messages, ChatMessage, Exchange, MockError, Prompt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Deserialize)]
struct WireRequest {
    model: String,
    #[serde(default)]
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Both limits set: the larger is honoured, so a gateway that forwards two cannot count
/// on the smaller one.
pub fn read(body: &[u8]) -> Result<Prompt, MockError> {
    let request: WireRequest = serde_json::from_slice(body).map_err(MockError::body)?;
    let max_tokens = match (request.max_tokens, request.max_completion_tokens) {
        (Some(legacy), Some(current)) => Some(legacy.max(current)),
        (legacy, current) => current.or(legacy),
    };
    let (prompt_words, last_user) = read_messages(&Value::Null, &request.messages);
    Ok(Prompt {
        model: request.model,
        stream: request.stream,
        stream_usage: request.stream_options.is_some_and(|options| options.include_usage),
        max_tokens: MockError::limit("max_tokens", max_tokens)?,
        prompt_words,
        last_user,
    })
}

pub fn complete(exchange: &Exchange<'_>, body: &mut Vec<u8>) {
    let id = id(exchange);
    let completion = CompletionBody {
        id: &id,
        object: "chat.completion",
        created: exchange.created,
        model: exchange.model,
        choices: [CompletionChoice {
            index: 0,
            message: AssistantMessage { role: "assistant", content: exchange.answer.text },
            finish_reason: finish_reason(exchange.answer.finish),
        }],
        usage: exchange.usage.whole().map(WireUsage::from),
    };
    serde_json::to_writer(body, &completion).expect("plain structs always serialize");
}

/// One content chunk per word (the first also says the role and, under
/// `usage=partial`, carries the only usage), a finish-reason chunk, the usage chunk if
/// asked for, then `[DONE]`.
pub fn stream(exchange: &Exchange<'_>, body: &mut Vec<u8>) {
    let id = id(exchange);
    let write = |body: &mut Vec<u8>, choices: &[ChunkChoice<'_>], usage: Option<Counts>| {
        let chunk = ChunkBody {
            id: &id,
            object: "chat.completion.chunk",
            created: exchange.created,
            model: exchange.model,
            choices,
            usage: usage.filter(|_| exchange.stream_usage).map(WireUsage::from),
        };
        body.extend_from_slice(b"data: ");
        serde_json::to_writer(&mut *body, &chunk).expect("plain structs always serialize");
        body.extend_from_slice(b"\n\n");
    };
    for (piece_idx, piece) in exchange.answer.pieces.iter().enumerate() {
        let first = piece_idx == 0;
        let delta = Delta { role: first.then_some("assistant"), content: Some(piece) };
        let early = if first { exchange.usage.early() } else { None };
        write(body, &[ChunkChoice { index: 0, delta, finish_reason: None }], early);
    }
    let delta = Delta { role: None, content: None };
    let finish_reason = Some(finish_reason(exchange.answer.finish));
    write(body, &[ChunkChoice { index: 0, delta, finish_reason }], None);
    if let Some(usage) = exchange.usage.end().filter(|_| exchange.stream_usage) {
        write(body, &[], Some(usage));
    }
    body.extend_from_slice(b"data: [DONE]\n\n");
}

pub fn error(error: &MockError, body: &mut Vec<u8>) {
    let kind = match error.status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    };
    let wire = serde_json::json!({"error": {
        "message": error.message, "type": kind, "param": error.param, "code": error.code,
    }});
    serde_json::to_writer(body, &wire).expect("JSON values always serialize");
}

fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "stop",
        Finish::Length => "length",
    }
}

/// `chatcmpl-mock-N`: formatted once per answer, copied into every chunk.
fn id(exchange: &Exchange<'_>) -> String {
    format!("chatcmpl-mock-{}", exchange.id)
}

#[derive(Serialize, Clone, Copy)]
struct WireUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

impl From<Counts> for WireUsage {
    fn from(counts: Counts) -> Self {
        WireUsage {
            prompt_tokens: counts.prompt,
            completion_tokens: counts.completion,
            total_tokens: counts.total(),
        }
    }
}

#[derive(Serialize)]
struct CompletionBody<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [CompletionChoice<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<WireUsage>,
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
