//! Streaming: opening an upstream stream (still able to fall back) and relaying it to
//! the client (committed: failures end the stream with an error event), then settling
//! what was produced.

use crate::app::App;
use crate::catalog::Model;
use crate::error::ApiError;
use crate::pipeline::{is_outage, observe_cost, provider, Failure, HoldGuard, RequestContext};
use crate::providers::{Chunk, StreamTranslator, UpstreamError, Usage};
use crate::respond::{self, Response};
use crate::upstream::{self, next_chunk, Deadlines};
use crate::wire::ChunkEncoder;
use bytes::{Bytes, BytesMut};
use http::StatusCode;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Duration;

/// Events buffered between the upstream reader and a slow client: enough to absorb a
/// burst, small enough that a stalled client stalls the upstream read instead of
/// growing memory (each event is one upstream read's worth of chunks).
pub const STREAM_BUFFER_EVENTS: usize = 16;
/// Longest a client may take to accept one event before it counts as gone: a connected
/// client that stops reading must not hold the task (and its upstream) forever.
pub const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Status recorded for a stream the client abandoned (nginx's "client closed request").
const STATUS_CLIENT_CLOSED: u16 = 499;

/// An upstream stream that has produced its first translated chunks (or ended cleanly)
/// and can be committed to the client.
pub struct OpenStream {
    response: reqwest::Response,
    translator: Box<dyn StreamTranslator>,
    provider: &'static str,
    deadlines: Deadlines,
    pending: Vec<Chunk>,
    finished: bool,
}

/// One streaming attempt, up to its first translated chunk: until then nothing has
/// reached the client, so any failure may still fall back to the next candidate.
pub async fn open(
    app: &'static App,
    context: &RequestContext,
    model: &Model,
) -> Result<OpenStream, Failure> {
    let (adapter, endpoint) = provider(app, model)?;
    let request = adapter
        .request(endpoint, &context.chat, &model.upstream_model)
        .map_err(|error| Failure::Final(ApiError::invalid_param(&error.param, error.message)))?;
    let deadlines = Deadlines::attempt(app.upstream.timeouts(), context.deadline);
    let response = app.upstream.send(adapter, request, &deadlines).await?;
    let mut stream = OpenStream {
        response,
        translator: adapter.stream(&context.chat),
        provider: adapter.provider(),
        deadlines,
        pending: Vec::new(),
        finished: false,
    };
    let first_event = async {
        while stream.pending.is_empty() && !stream.finished {
            stream.advance().await?;
        }
        Ok::<(), UpstreamError>(())
    };
    match tokio::time::timeout_at(deadlines.first_byte, first_event).await {
        Ok(result) => result?,
        Err(_) => {
            let message = "no stream event before the first-byte deadline";
            return Err(upstream::failure(
                adapter.provider(),
                StatusCode::GATEWAY_TIMEOUT,
                message,
                true,
            )
            .into());
        }
    }
    Ok(stream)
}

impl OpenStream {
    /// Reads one upstream chunk and translates it into `pending`.
    async fn advance(&mut self) -> Result<(), UpstreamError> {
        match next_chunk(&mut self.response, &self.deadlines, self.provider).await? {
            Some(bytes) => self.translator.feed(&bytes, &mut self.pending),
            None => {
                self.finished = true;
                self.translator.finish(&mut self.pending)
            }
        }
    }
}

/// How a committed stream ended.
enum End {
    Complete,
    Failed(UpstreamError),
    ClientGone,
}

/// Commits the response, relays the stream, settles, and ends the stream with the
/// usage chunk (or an error event).
pub async fn run(
    app: &'static App,
    context: &RequestContext,
    model: &'static Model,
    mut stream: OpenStream,
    hold: HoldGuard,
    reply: oneshot::Sender<Result<Response, ApiError>>,
) {
    let (sender, receiver) = mpsc::channel(STREAM_BUFFER_EVENTS);
    let encoder = ChunkEncoder::new(&context.id(), context.created_s(), &model.id);
    // A client that left before the head was sent shows up as a failed send below.
    let _ = reply.send(Ok(respond::event_stream(receiver)));
    let mut n_token_chunks = 0u64;
    let end = pump(&mut stream, &sender, &encoder, &mut n_token_chunks).await;
    if let End::Failed(error) = &end {
        app.health.record(&model.provider, !is_outage(error));
    }
    let usage = billable_usage(stream.translator.usage(), n_token_chunks);
    let cost = model.price.cost(&usage);
    let status = match &end {
        End::Complete => StatusCode::OK,
        End::Failed(error) => error.status,
        End::ClientGone => {
            StatusCode::from_u16(STATUS_CLIENT_CLOSED).unwrap_or(StatusCode::BAD_REQUEST)
        }
    };
    if matches!(end, End::Complete) || usage != Usage::default() {
        hold.settle(cost, context.record(model, &usage, status)).await;
        observe_cost(model, cost);
    } else {
        hold.release();
    }
    let mut tail = BytesMut::new();
    match end {
        End::Complete => encoder.finish(&usage, cost, &mut tail),
        End::Failed(error) => encoder.fail(&ApiError::upstream(&error), &usage, cost, &mut tail),
        End::ClientGone => return,
    }
    let _ = sender.send_timeout(tail.freeze(), CLIENT_WRITE_TIMEOUT).await;
}

/// Moves chunks from upstream to the client until either side ends.
async fn pump(
    stream: &mut OpenStream,
    sender: &mpsc::Sender<Bytes>,
    encoder: &ChunkEncoder,
    n_token_chunks: &mut u64,
) -> End {
    let mut out = BytesMut::new();
    loop {
        // Chunks translated before a failure were produced; deliver them, then fail.
        let failure = if stream.pending.is_empty() && !stream.finished {
            // A client that leaves while upstream is quiet is noticed at once, so the
            // upstream request (and the provider's generation) stops with it.
            tokio::select! {
                advanced = stream.advance() => advanced.err(),
                () = sender.closed() => return End::ClientGone,
            }
        } else {
            None
        };
        for chunk in stream.pending.drain(..) {
            *n_token_chunks += u64::from(carries_tokens(&chunk));
            encoder.chunk(&chunk, &mut out);
        }
        if !out.is_empty()
            && sender.send_timeout(out.split().freeze(), CLIENT_WRITE_TIMEOUT).await.is_err()
        {
            return End::ClientGone;
        }
        if let Some(error) = failure {
            return End::Failed(error);
        }
        if stream.finished {
            return End::Complete;
        }
    }
}

/// What to bill: the provider's usage when it reported any; otherwise (the stream broke
/// or the client left before the usage chunk) a lower bound of what was produced — one
/// token per content-carrying chunk, no prompt tokens — so a failed request is never
/// charged more than the provider produced.
fn billable_usage(reported: Usage, n_token_chunks: u64) -> Usage {
    if reported.prompt_tokens > 0 || reported.completion_tokens > 0 {
        reported
    } else {
        Usage { completion_tokens: n_token_chunks, ..Usage::default() }
    }
}

/// Whether a chunk delivered generated tokens (text, reasoning or a tool call).
fn carries_tokens(chunk: &Chunk) -> bool {
    let non_empty = |delta: &Value, field: &str| match delta.get(field) {
        Some(Value::String(text)) => !text.is_empty(),
        Some(Value::Array(items)) => !items.is_empty(),
        _ => false,
    };
    chunk.choices.iter().filter_map(|choice| choice.get("delta")).any(|delta| {
        ["content", "reasoning", "reasoning_content", "tool_calls"]
            .iter()
            .any(|field| non_empty(delta, field))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bills_reported_usage_or_a_lower_bound() {
        let reported = Usage { prompt_tokens: 5, completion_tokens: 3, ..Usage::default() };
        assert_eq!(billable_usage(reported, 9), reported);
        assert_eq!(billable_usage(Usage::default(), 2).completion_tokens, 2);
        assert_eq!(billable_usage(Usage::default(), 2).prompt_tokens, 0);
    }

    #[test]
    fn counts_only_token_carrying_chunks() {
        let check = |delta: Value, expected: bool| {
            let chunk = Chunk {
                choices: vec![json!({"index": 0, "delta": delta})],
                extra: Default::default(),
            };
            assert_eq!(carries_tokens(&chunk), expected);
        };
        check(json!({"role": "assistant", "content": ""}), false);
        check(json!({"content": "hi"}), true);
        check(json!({"reasoning_content": "hmm"}), true);
        check(json!({"tool_calls": [{"index": 0}]}), true);
        check(json!({}), false);
    }
}
