//! Gemini: `POST /v1beta/models/{model}:generateContent`, a `GenerateContentResponse`,
//! or with `:streamGenerateContent?alt=sse` one response per word, each with the
//! cumulative `usageMetadata`, the last with the `finishReason` (Gemini has no other
//! terminal event: the stream just closes).

use super::tokens::{word_count, Counts, Finish};
use super::{json_string, put, Exchange, MockError, Prompt};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest {
    #[serde(default)]
    contents: Vec<WireContent>,
    #[serde(default)]
    system_instruction: Option<WireContent>,
    #[serde(default)]
    generation_config: Option<GenerationConfig>,
}

#[derive(Deserialize)]
struct WireContent {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    parts: Vec<WirePart>,
}

#[derive(Deserialize)]
struct WirePart {
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    max_output_tokens: Option<u64>,
}

impl WireContent {
    fn texts(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| part.text.as_deref())
    }
}

/// `model` and `stream` come from the path (`…/models/{model}:{method}`).
pub fn read(body: &[u8], model: &str, stream: bool) -> Result<Prompt, MockError> {
    let request: WireRequest = serde_json::from_slice(body).map_err(MockError::body)?;
    let prompt_words: u64 = request
        .system_instruction
        .iter()
        .chain(&request.contents)
        .flat_map(WireContent::texts)
        .map(word_count)
        .sum();
    let last_user = request
        .contents
        .iter()
        .rev()
        .find(|content| content.role.as_deref().is_none_or(|role| role == "user"))
        .map(|content| content.texts().collect())
        .unwrap_or_default();
    let max_tokens = request.generation_config.and_then(|config| config.max_output_tokens);
    Ok(Prompt {
        model: model.to_owned(),
        stream,
        stream_usage: true,
        max_tokens: MockError::limit("generationConfig.maxOutputTokens", max_tokens)?,
        prompt_words,
        last_user,
    })
}

pub fn complete(exchange: &Exchange<'_>, body: &mut Vec<u8>) {
    write_response(exchange, body, exchange.answer.text, true, exchange.usage.whole());
}

pub fn stream(exchange: &Exchange<'_>, body: &mut Vec<u8>) {
    let n_pieces = exchange.answer.pieces.len();
    for (piece_idx, piece) in exchange.answer.pieces.iter().enumerate() {
        let last = piece_idx + 1 == n_pieces;
        let usage = exchange.usage.running(piece_idx as u64 + 1, last);
        body.extend_from_slice(b"data: ");
        write_response(exchange, body, piece, last, usage);
        body.extend_from_slice(b"\n\n");
    }
}

pub fn error(error: &MockError, body: &mut Vec<u8>) {
    let status = match error.status.as_u16() {
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        500..=599 => "INTERNAL",
        _ => "INVALID_ARGUMENT",
    };
    let wire = serde_json::json!({"error": {
        "code": error.status.as_u16(), "message": error.message, "status": status,
    }});
    serde_json::to_writer(body, &wire).expect("JSON values always serialize");
}

fn write_response(
    exchange: &Exchange<'_>,
    body: &mut Vec<u8>,
    text: &str,
    last: bool,
    usage: Option<Counts>,
) {
    body.extend_from_slice(br#"{"candidates":[{"content":{"parts":[{"text":"#);
    json_string(body, text);
    body.extend_from_slice(br#"}],"role":"model"}"#);
    if last {
        let reason = match exchange.answer.finish {
            Finish::Stop => "STOP",
            Finish::Length => "MAX_TOKENS",
        };
        put(body, format_args!(r#","finishReason":"{reason}""#));
    }
    body.extend_from_slice(br#","index":0}]"#);
    if let Some(usage) = usage {
        put(
            body,
            format_args!(
                r#","usageMetadata":{{"promptTokenCount":{},"candidatesTokenCount":{},"totalTokenCount":{}}}"#,
                usage.prompt,
                usage.completion,
                usage.total()
            ),
        );
    }
    body.extend_from_slice(br#","modelVersion":"#);
    json_string(body, exchange.model);
    put(body, format_args!(r#","responseId":"mock-{}"}}"#, exchange.id));
}
