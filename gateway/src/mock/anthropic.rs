//! Anthropic Messages: `POST /v1/messages`, a `message` object, or the typed events
//! `message_start` (usage: the input and one output token), `content_block_start`, one
//! `content_block_delta` per word, `content_block_stop`, `message_delta` (the final
//! output tokens) and `message_stop`.

use super::tokens::{Counts, Finish};
use super::{json_string, put, Exchange, MockError};

pub fn complete(exchange: &Exchange<'_>, body: &mut Vec<u8>) {
    write_message_head(exchange, body);
    body.extend_from_slice(br#","content":[{"type":"text","text":"#);
    json_string(body, exchange.answer.text);
    put(
        body,
        format_args!(r#"}}],"stop_reason":"{}","stop_sequence":null"#, stop_reason(exchange)),
    );
    write_usage(body, exchange.usage.whole());
    body.push(b'}');
}

pub fn stream(exchange: &Exchange<'_>, body: &mut Vec<u8>) {
    event(body, "message_start");
    body.extend_from_slice(br#"{"type":"message_start","message":"#);
    write_message_head(exchange, body);
    body.extend_from_slice(br#","content":[],"stop_reason":null,"stop_sequence":null"#);
    write_usage(body, exchange.usage.start());
    body.extend_from_slice(b"}}\n\n");
    event(body, "content_block_start");
    body.extend_from_slice(
        br#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
    );
    body.extend_from_slice(b"\n\n");
    for piece in &exchange.answer.pieces {
        event(body, "content_block_delta");
        body.extend_from_slice(
            br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"#,
        );
        json_string(body, piece);
        body.extend_from_slice(b"}}\n\n");
    }
    event(body, "content_block_stop");
    body.extend_from_slice(b"{\"type\":\"content_block_stop\",\"index\":0}\n\n");
    event(body, "message_delta");
    put(
        body,
        format_args!(
            r#"{{"type":"message_delta","delta":{{"stop_reason":"{}","stop_sequence":null}}"#,
            stop_reason(exchange)
        ),
    );
    if let Some(usage) = exchange.usage.end() {
        put(body, format_args!(r#","usage":{{"output_tokens":{}}}"#, usage.completion));
    }
    body.extend_from_slice(b"}\n\n");
    event(body, "message_stop");
    body.extend_from_slice(b"{\"type\":\"message_stop\"}\n\n");
}

pub fn error(error: &MockError, body: &mut Vec<u8>) {
    let kind = match error.status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    };
    let wire = serde_json::json!({
        "type": "error", "error": {"type": kind, "message": error.message},
    });
    serde_json::to_writer(body, &wire).expect("JSON values always serialize");
}

/// `{"id":…,"type":"message","role":"assistant","model":…` (left open).
fn write_message_head(exchange: &Exchange<'_>, body: &mut Vec<u8>) {
    put(
        body,
        format_args!(
            r#"{{"id":"msg_mock_{}","type":"message","role":"assistant","model":"#,
            exchange.id
        ),
    );
    json_string(body, exchange.model);
}

fn write_usage(body: &mut Vec<u8>, usage: Option<Counts>) {
    if let Some(usage) = usage {
        put(
            body,
            format_args!(
                r#","usage":{{"input_tokens":{},"output_tokens":{}}}"#,
                usage.prompt, usage.completion
            ),
        );
    }
}

fn event(body: &mut Vec<u8>, name: &str) {
    put(body, format_args!("event: {name}\ndata: "));
}

fn stop_reason(exchange: &Exchange<'_>) -> &'static str {
    match exchange.answer.finish {
        Finish::Stop => "end_turn",
        Finish::Length => "max_tokens",
    }
}
