//! Streaming: an upstream stream ([`OpenStream`], opened by `attempt.rs` up to its first
//! event, while the request could still fall back) relayed to the client (committed:
//! failures end the stream with an error event), then what was produced settled.
//!
//! What was delivered is billed: a client that leaves does not end the upstream read at
//! once. The gateway keeps reading (without relaying) for at most [`DRAIN_TIME_MAX`] and
//! [`DRAIN_BYTES_MAX`] so that the provider's final usage arrives; past either bound it
//! cancels the upstream request and bills what it counted (`tokens.rs`).

use crate::app::App;
use crate::catalog::Model;
use crate::codec::StreamEncoder;
use crate::context::{Reply, RequestContext};
use crate::error::ApiError;
use crate::health::is_outage;
use crate::hold::{waives, HoldGuard};
use crate::providers::{Adapter, ChatRequest, Chunk, StreamTranslator, UpstreamError, Usage};
use crate::respond;
use crate::sse::SseEvent;
use crate::tokens::Delivered;
use crate::upstream::{self, next_chunk, Deadlines};
use bytes::{Bytes, BytesMut};
use http::StatusCode;
use solrouter_ledger::PicoUsd;
use std::future::Future;
use std::task::Poll;
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};

/// Events buffered between the upstream reader and a slow client: enough to absorb a
/// burst, small enough that a stalled client stalls the upstream read instead of
/// growing memory (each event is one upstream read's worth of chunks).
pub const STREAM_BUFFER_EVENTS: usize = 16;
/// Longest a client may take to accept one event before it counts as gone: a connected
/// client that stops reading must not hold the task (and its upstream) forever.
pub const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Status recorded for a stream the client abandoned (nginx's "client closed request").
const STATUS_CLIENT_CLOSED: u16 = 499;
/// Longest the gateway goes on reading an upstream stream whose client left, waiting for
/// the provider's final usage. Long enough for a provider to finish a typical answer
/// (or to notice the cancellation), short enough that an abandoned long generation does
/// not pin a connection for minutes.
pub const DRAIN_TIME_MAX: Duration = Duration::from_secs(15);
/// Most upstream bytes read after the client left.
pub const DRAIN_BYTES_MAX: u64 = 4 << 20;
/// Most encoded bytes held back with a stream's head while upstream has more at hand
/// (see [`Head`]): a long answer that arrived whole starts going out past this.
const HELD_BYTES_MAX: usize = 16 << 10;

/// An upstream stream that has produced its first translated chunks (or ended cleanly)
/// and can be committed to the client.
pub struct OpenStream {
    body: upstream::Body,
    translator: Box<dyn StreamTranslator>,
    provider: &'static str,
    deadlines: Deadlines,
    pending: Vec<Chunk>,
    /// When the provider streams in the client's own format: its events, as the
    /// translator parsed them (`StreamTranslator::take_events`), to be relayed as they
    /// are (the chunks are still what is billed).
    native: Option<Vec<SseEvent>>,
    finished: bool,
    /// Upstream bytes read so far.
    bytes_read: u64,
    /// When the first event arrived: the request's time to first token; the stream's
    /// generation time (its tokens per second, `Health::record_tokens`) runs from it.
    first_event_at: Instant,
}

impl OpenStream {
    /// The stream of `body`, an answer of `adapter` to `chat`, before its first read;
    /// `native`: the client speaks the provider's format, so its events are relayed as
    /// they come.
    pub(crate) fn new(
        body: upstream::Body,
        adapter: &'static dyn Adapter,
        chat: &ChatRequest,
        deadlines: Deadlines,
        native: bool,
    ) -> OpenStream {
        OpenStream {
            body,
            translator: adapter.stream(chat),
            provider: adapter.provider(),
            deadlines,
            pending: Vec::new(),
            native: native.then(Vec::new),
            finished: false,
            bytes_read: 0,
            first_event_at: Instant::now(),
        }
    }

    /// Reads until the first translated chunk (or the stream's clean end) and starts the
    /// stream's clock there; the caller bounds it by the first-byte deadline.
    pub(crate) async fn first_event(&mut self) -> Result<(), UpstreamError> {
        while self.pending.is_empty() && !self.finished {
            self.advance().await?;
        }
        self.first_event_at = Instant::now();
        Ok(())
    }

    /// Reads one upstream chunk and translates it into `pending`.
    async fn advance(&mut self) -> Result<(), UpstreamError> {
        let translated = match next_chunk(&mut self.body, &self.deadlines, self.provider).await? {
            Some(bytes) => {
                self.bytes_read += bytes.len() as u64;
                self.translator.feed(&bytes, &mut self.pending)
            }
            None => {
                self.finished = true;
                self.translator.finish(&mut self.pending)
            }
        };
        if let Some(native) = &mut self.native {
            self.translator.take_events(native);
        }
        translated
    }

    /// Writes what was read since the last call to the client's encoder.
    fn encode(
        &mut self,
        encoder: &mut dyn StreamEncoder,
        delivered: &mut Delivered,
        out: &mut BytesMut,
    ) {
        for chunk in self.pending.drain(..) {
            delivered.push_chunk(&chunk);
            encoder.chunk(&chunk, out);
        }
        if let Some(native) = &mut self.native {
            for event in native.drain(..) {
                encoder.native(&event, out);
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

/// Commits the response (its head at the first wait for upstream, or with the whole
/// answer: `Head`), relays the stream, settles, and ends the stream with the usage
/// chunk (or an error event).
pub async fn run(
    app: &'static App,
    context: &RequestContext,
    model: &'static Model,
    mut stream: Box<OpenStream>,
    hold: HoldGuard,
    reply: Reply,
) {
    let (sender, receiver) = mpsc::channel(STREAM_BUFFER_EVENTS);
    let id = context.id();
    let mut encoder = context.codec.encoder(&context.answer(&id, model), stream.native.is_some());
    let mut head = Head(Some((reply, respond::event_stream(receiver))));
    let mut delivered = Delivered::default();
    // What was encoded but not sent: a held stream's whole answer (see `Head`).
    let mut out = BytesMut::new();
    let mut end =
        pump(&mut stream, &sender, encoder.as_mut(), &mut delivered, &mut head, &mut out).await;
    if head.client_gone() {
        end = End::ClientGone;
    }
    match &end {
        End::Failed(error) => app.health.record_broken(model, is_outage(error)),
        End::Complete => {
            let tokens = stream.translator.usage().completion_tokens;
            app.health.record_tokens(model, tokens, stream.first_event_at.elapsed());
        }
        End::ClientGone => {}
    }
    let complete = match &end {
        End::Complete => true,
        End::Failed(_) => false,
        End::ClientGone => drain(&mut stream).await,
    };
    let reported = stream.translator.usage();
    let first_output = (!delivered.is_empty()).then_some(stream.first_event_at);
    drop(stream); // Cancels the upstream request if it is still open.
    let status = match &end {
        End::Complete => StatusCode::OK,
        End::Failed(error) => error.status,
        End::ClientGone => {
            StatusCode::from_u16(STATUS_CLIENT_CLOSED).unwrap_or(StatusCode::BAD_REQUEST)
        }
    };
    let (usage, cost) = if !complete && delivered.is_empty() && reported == Usage::default() {
        // Nothing was produced that anyone received or the provider billed.
        hold.release().await;
        (Usage::default(), PicoUsd::ZERO)
    } else {
        let (failed, empty) = (matches!(end, End::Failed(_)), delivered.is_empty());
        let billed = context.bill(model, reported, complete, delivered).await;
        let waived = !matches!(end, End::ClientGone) && waives(app, &billed, failed, empty);
        let cost = model.cost(&billed.usage);
        let record = context.record(model, &billed, status, waived, first_output);
        let cost = hold.settle(cost, record).await;
        (billed.usage, cost)
    };
    let mut tail = out;
    match end {
        End::Complete => encoder.finish(&usage, cost, &mut tail),
        End::Failed(error) => encoder.fail(&ApiError::upstream(&error), &usage, cost, &mut tail),
        End::ClientGone => return,
    }
    // Settled already: a client gone by now changes nothing.
    let _ = send(&sender, &mut tail).await;
    // A held head goes out with the whole body behind it, ended.
    drop(sender);
    head.send();
}

/// A stream's response until it is sent, and where it goes. It is held while the upstream
/// stream has more at hand without a wait (and less than [`HELD_BYTES_MAX`] is encoded):
/// an answer that arrived whole (a short one, or a fast provider's) then goes out after
/// its settle, head, chunks and usage in one write, instead of the head and chunks at once
/// and the usage in a second write after the settle. The client waits for the usage
/// either way; the stream's first byte comes one settle later. On `wrk -c50` through
/// `solrouter dev` that was one write and one wake-up of the client and of the
/// connection's task fewer a stream, and no task spawned to finish it (docs/benchmarks.md,
/// "Session 54"). A stream that makes the gateway wait sends its head at the first wait.
struct Head(Option<(Reply, respond::Response)>);

impl Head {
    fn is_held(&self) -> bool {
        self.0.is_some()
    }

    /// Sends the head if it is still held (a client gone meanwhile is noticed by
    /// `client_gone`, or by the body's failed sends).
    fn send(&mut self) {
        if let Some((reply, response)) = self.0.take() {
            let _ = reply.send(Ok(response));
        }
    }

    /// Held, and its client gone: the request's caller dropped its answer.
    fn client_gone(&self) -> bool {
        self.0.as_ref().is_some_and(|(reply, _)| reply.is_closed())
    }
}

/// After the client left: reads the rest of the upstream stream, relaying nothing, so
/// the provider's final usage arrives. Bounded by [`DRAIN_TIME_MAX`] and
/// [`DRAIN_BYTES_MAX`]; returns whether the stream ended as the provider meant it to.
async fn drain(stream: &mut OpenStream) -> bool {
    let deadline = Instant::now() + DRAIN_TIME_MAX;
    let bytes_max = stream.bytes_read.saturating_add(DRAIN_BYTES_MAX);
    let reading = async {
        while !stream.finished && stream.bytes_read < bytes_max {
            if stream.advance().await.is_err() {
                return false;
            }
            stream.pending.clear();
            if let Some(native) = &mut stream.native {
                native.clear();
            }
        }
        stream.finished
    };
    let complete = tokio::time::timeout_at(deadline, reading).await.unwrap_or(false);
    if !complete {
        metrics::counter!("solrouter_stream_drains_cut_total").increment(1);
    }
    complete
}

/// Moves chunks from upstream to the client until either side ends. While `head` is held
/// (see [`Head`]) what is encoded stays in `out`; it goes out, the head after it, at the
/// first wait for upstream, a failure, or [`HELD_BYTES_MAX`]; a stream that completes with
/// its head held returns `Complete` and leaves both to the caller.
async fn pump(
    stream: &mut OpenStream,
    sender: &mpsc::Sender<Bytes>,
    encoder: &mut dyn StreamEncoder,
    delivered: &mut Delivered,
    head: &mut Head,
    out: &mut BytesMut,
) -> End {
    loop {
        // Chunks translated before a failure were produced; deliver them, then fail.
        let failure = if stream.pending.is_empty() && !stream.finished {
            let mut advancing = std::pin::pin!(stream.advance());
            let at_hand = if head.is_held() && out.len() < HELD_BYTES_MAX {
                std::future::poll_fn(|cx| Poll::Ready(advancing.as_mut().poll(cx))).await
            } else {
                Poll::Pending
            };
            match at_hand {
                Poll::Ready(advanced) => advanced.err(),
                Poll::Pending => {
                    // Sent before the head, so the head's first write carries it.
                    if !out.is_empty() && !send(sender, out).await {
                        return End::ClientGone;
                    }
                    head.send();
                    // A client that leaves while upstream is quiet is noticed at once, so
                    // the upstream request (and the provider's generation) stops with it.
                    tokio::select! {
                        advanced = advancing => advanced.err(),
                        () = sender.closed() => return End::ClientGone,
                    }
                }
            }
        } else {
            None
        };
        stream.encode(encoder, delivered, out);
        let holding = head.is_held() && failure.is_none();
        if !holding {
            if !out.is_empty() && !send(sender, out).await {
                return End::ClientGone;
            }
            head.send();
        }
        if let Some(error) = failure {
            return End::Failed(error);
        }
        if stream.finished {
            return End::Complete;
        }
    }
}

/// Sends what `out` holds to the client; false if the client is gone.
///
/// A stream spends its life in [`pump`], whose state has room for every future it awaits;
/// `send_timeout`'s takes ~370 bytes. It is needed only while the client is behind (the
/// channel full), so it is boxed there, and an event the channel has room for is sent
/// without it.
async fn send(sender: &mpsc::Sender<Bytes>, out: &mut BytesMut) -> bool {
    match sender.try_send(out.split().freeze()) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Closed(_)) => false,
        Err(mpsc::error::TrySendError::Full(event)) => {
            Box::pin(sender.send_timeout(event, CLIENT_WRITE_TIMEOUT)).await.is_ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(text: &'static str) -> BytesMut {
        BytesMut::from(text)
    }

    #[tokio::test]
    async fn an_event_waits_for_a_client_behind_and_a_gone_client_is_told() {
        let (sender, mut receiver) = mpsc::channel(1);
        assert!(send(&sender, &mut event("a")).await, "room in the channel");
        // The channel is full: the second event waits until the client reads the first.
        let sending = tokio::spawn(async move {
            let sent = send(&sender, &mut event("b")).await;
            (sent, sender)
        });
        tokio::task::yield_now().await;
        assert!(!sending.is_finished(), "sent past a full channel");
        assert_eq!(receiver.recv().await.as_deref(), Some(&b"a"[..]));
        let (sent, sender) = sending.await.unwrap();
        assert!(sent);
        assert_eq!(receiver.recv().await.as_deref(), Some(&b"b"[..]));
        drop(receiver);
        assert!(!send(&sender, &mut event("c")).await, "the client is gone");
    }
}
