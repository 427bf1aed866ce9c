//! Calls made one after another on a long-lived bidirectional gRPC stream instead of a
//! unary call each: a unary call opens an HTTP/2 stream and runs a task on each end for
//! every request, and a round trip on a stream took about 45 % less CPU on a 2-core VM
//! (docs/benchmarks.md, "Session 39"). Used by the AppendEntries a leader sends a follower
//! (`grpc_network.rs`) and by a gateway's submits (`client.rs`).
//!
//! A stream carries one request, then its answer, then the next: whoever holds a
//! [`CallStream`] makes one call at a time on it, and several in flight take a stream each.
//! The caller bounds each exchange by its timeout. A stream whose exchange failed, timed
//! out or was given up (its future dropped mid-wait) is not used again: the peer's late
//! answer could otherwise be taken for the next request's. A peer without the stream (an
//! older version, during a rolling upgrade) answers [`Exchange::Unimplemented`], which
//! hands the request back, and the caller makes unary calls to it instead.
//!
//! The serving side takes a stream's requests in order ([`in_order`]), each as its
//! server ([`Serve`]) takes a unary call of the kind. A server's graceful
//! shutdown waits for every stream to end, and a client's stream would never end on its
//! own, so a server ends its streams when it stops ([`Closing`]).

use futures_util::Stream;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

/// What a stream's client side sends: the requests, as they are handed to
/// [`CallStream::exchange`].
pub(crate) type Outbound<Q> = ReceiverStream<Q>;

/// What a stream's serving side answers: a reply per request, in order.
pub(crate) type Replies<R> = Pin<Box<dyn Stream<Item = Result<R, tonic::Status>> + Send + 'static>>;

/// An open stream: requests go in on one side, their replies come back in the same order
/// on the other.
pub(crate) struct CallStream<Q, R> {
    requests: mpsc::Sender<Q>,
    replies: tonic::Streaming<R>,
    /// Whether a request was sent and its answer not yet taken.
    awaiting: bool,
}

/// Why an exchange of request `Q` on a stream failed.
pub(crate) enum Exchange<Q> {
    /// The peer does not serve the stream: the request, never sent, for a unary call.
    Unimplemented(Q),
    Failed(tonic::Status),
}

impl<Q: Send + 'static, R> CallStream<Q, R> {
    /// Opens a stream with `call`, the generated client's streaming method given the
    /// outbound requests.
    pub(crate) async fn open<Fut>(
        call: impl FnOnce(Outbound<Q>) -> Fut,
    ) -> Result<Self, tonic::Status>
    where
        Fut: Future<Output = Result<tonic::Response<tonic::Streaming<R>>, tonic::Status>>,
    {
        let (requests, queued) = mpsc::channel(1);
        let replies = call(ReceiverStream::new(queued)).await?.into_inner();
        Ok(CallStream { requests, replies, awaiting: false })
    }

    /// Sends `request` over the stream in `slot`, opened first with `open` if there is
    /// none, and waits for its reply. A stream whose exchange failed is dropped from
    /// `slot`, and so is one whose exchange was given up while it waited (the next
    /// exchange drops it), so the next exchange opens another.
    pub(crate) async fn exchange<Fut>(
        slot: &mut Option<Self>,
        request: Q,
        open: impl FnOnce() -> Fut,
    ) -> Result<R, Exchange<Q>>
    where
        Fut: Future<Output = Result<Self, tonic::Status>>,
    {
        // An exchange given up while it waited left its answer on the way: the stream is
        // of no use to the next request.
        if slot.as_ref().is_some_and(|stream| stream.awaiting) {
            *slot = None;
        }
        let stream = match slot {
            Some(stream) => stream,
            None => match open().await {
                Ok(opened) => slot.insert(opened),
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    return Err(Exchange::Unimplemented(request))
                }
                Err(status) => return Err(Exchange::Failed(status)),
            },
        };
        let replied = stream.round_trip(request).await;
        if replied.is_err() {
            *slot = None;
        }
        replied.map_err(Exchange::Failed)
    }

    async fn round_trip(&mut self, request: Q) -> Result<R, tonic::Status> {
        self.awaiting = true;
        let closed = || tonic::Status::unavailable("the stream closed");
        self.requests.send(request).await.map_err(|_| closed())?;
        let reply = self.replies.message().await?.ok_or_else(closed)?;
        self.awaiting = false;
        Ok(reply)
    }
}

/// Ends the streams a server serves when it stops. Clones share it.
#[derive(Clone)]
pub(crate) struct Closing(Arc<watch::Sender<bool>>);

impl Default for Closing {
    fn default() -> Closing {
        Closing(Arc::new(watch::Sender::new(false)))
    }
}

impl Closing {
    /// Ends every stream (after the request it is taking, if any), and every later one at
    /// once.
    pub(crate) fn close(&self) {
        self.0.send_replace(true);
    }
}

/// What serves a stream's requests: each one as a unary call of the same kind would be.
pub(crate) trait Serve<Q>: Send + 'static {
    type Reply: Send + 'static;

    fn serve(&self, request: Q) -> impl Future<Output = Result<Self::Reply, tonic::Status>> + Send;
}

/// A function that owns what it serves with serves like a server (the tests' peers).
impl<Q, R, F, Fut> Serve<Q> for F
where
    F: Fn(Q) -> Fut + Send + 'static,
    Fut: Future<Output = Result<R, tonic::Status>> + Send,
    R: Send + 'static,
{
    type Reply = R;

    fn serve(&self, request: Q) -> impl Future<Output = Result<R, tonic::Status>> + Send {
        self(request)
    }
}

/// The replies to `requests`, each made by `server` once the one before it is made, in
/// order. A request `server` refuses ends the stream with that status, as it ends a unary
/// call; so do the client's end of the stream and `closing`.
pub(crate) fn in_order<S: Serve<Q>, Q: Send + 'static>(
    server: S,
    requests: tonic::Streaming<Q>,
    closing: &Closing,
) -> Replies<S::Reply> {
    let open = Some((server, requests, closing.0.subscribe()));
    Box::pin(futures_util::stream::unfold(open, |open| async move {
        let (server, mut requests, mut closing) = open?;
        let request = tokio::select! {
            received = requests.message() => received.ok()??,
            _ = closing.wait_for(|closed| *closed) => return None,
        };
        let reply = server.serve(request).await;
        let next = reply.is_ok().then_some((server, requests, closing));
        Some((reply, next))
    }))
}
