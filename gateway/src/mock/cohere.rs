//! Cohere Chat v2: `POST /v2/chat`, a response with typed content blocks, or the events
//! `message-start`, `content-start`, one `content-delta` per word, `content-end` and
//! `message-end` (finish reason and usage, the only place Cohere reports usage).

use super::tokens::{Counts, Finish};
use super::{json_string, put, Exchange, MockError};

pub fn complete(exchange: &Exchange<'_>, body: &mut Vec<u8>) {
    put(
        body,
        format_args!(
            r#"{{"id":"mock-{}","message":{{"role":"assistant","content":[{{"type":"text","text":"#,
            exchange.id
        ),
    );
    json_string(body, exchange.answer.text);
    put(body, format_args!(r#"}}]}},"finish_reason":"{}""#, finish_reason(exchange)));
    write_usage(body, exchange.usage.whole());
    body.push(b'}');
}

pub fn stream(exchange: &Exchange<'_>, body: &mut Vec<u8>) {
    put(
        body,
        format_args!(
            "event: message-start\ndata: {{\"id\":\"mock-{}\",\"type\":\"message-start\",\"delta\":{{\"message\":{{\"role\":\"assistant\",\"content\":[],\"tool_plan\":\"\",\"tool_calls\":[],\"citations\":[]}}}}}}\n\n",
            exchange.id
        ),
    );
    body.extend_from_slice(b"event: content-start\ndata: {\"type\":\"content-start\",\"index\":0,\"delta\":{\"message\":{\"content\":{\"type\":\"text\",\"text\":\"\"}}}}\n\n");
    for piece in &exchange.answer.pieces {
        body.extend_from_slice(b"event: content-delta\ndata: {\"type\":\"content-delta\",\"index\":0,\"delta\":{\"message\":{\"content\":{\"text\":");
        json_string(body, piece);
        body.extend_from_slice(b"}}}}\n\n");
    }
    body.extend_from_slice(b"event: content-end\ndata: {\"type\":\"content-end\",\"index\":0}\n\n");
    put(
        body,
        format_args!(
            "event: message-end\ndata: {{\"type\":\"message-end\",\"delta\":{{\"finish_reason\":\"{}\"",
            finish_reason(exchange)
        ),
    );
    write_usage(body, exchange.usage.whole());
    body.extend_from_slice(b"}}\n\n");
}

/// Cohere's errors are `{"id": …, "message": …}`.
pub fn error(error: &MockError, body: &mut Vec<u8>) {
    let wire = serde_json::json!({"id": "mock-error", "message": error.message});
    serde_json::to_writer(body, &wire).expect("JSON values always serialize");
}

/// `billed_units` (what the gateway bills) and `tokens` alike.
fn write_usage(body: &mut Vec<u8>, usage: Option<Counts>) {
    if let Some(Counts { prompt, completion }) = usage {
        put(
            body,
            format_args!(
                r#","usage":{{"billed_units":{{"input_tokens":{prompt},"output_tokens":{completion}}},"tokens":{{"input_tokens":{prompt},"output_tokens":{completion}}}}}"#
            ),
        );
    }
}

fn finish_reason(exchange: &Exchange<'_>) -> &'static str {
    match exchange.answer.finish {
        Finish::Stop => "COMPLETE",
        Finish::Length => "MAX_TOKENS",
    }
}
