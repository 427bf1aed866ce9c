//! Response bodies: a whole buffer, or a bounded channel that a streaming task feeds.

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use serde_json::Value;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

pub type Body = BoxBody<Bytes, Infallible>;
pub type Response = http::Response<Body>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// A JSON response. Serializing a `Value` cannot fail, so there is no error path.
pub fn json(status: StatusCode, value: &Value) -> Response {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    with_type(status, full(bytes), "application/json")
}

pub fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Response {
    with_type(status, full(body), content_type)
}

fn with_type(status: StatusCode, body: Body, content_type: &'static str) -> Response {
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    let value = HeaderValue::from_static(content_type);
    response.headers_mut().insert(header::CONTENT_TYPE, value);
    response
}

/// A server-sent-events response fed by `receiver`; the body ends when every sender is
/// dropped. The channel's capacity is the only buffer between upstream and the client,
/// so a slow client slows the upstream read instead of growing memory.
pub fn event_stream(receiver: mpsc::Receiver<Bytes>) -> Response {
    let mut response =
        with_type(StatusCode::OK, ChannelBody { receiver }.boxed(), "text/event-stream");
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells buffering reverse proxies (nginx) to pass events through at once.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

struct ChannelBody {
    receiver: mpsc::Receiver<Bytes>,
}

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.receiver.poll_recv(context).map(|item| item.map(|bytes| Ok(Frame::data(bytes))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A body gathered from the chunks it arrived in. One that arrives in a single chunk
/// (most requests and answers) is kept as it came, without a copy.
#[derive(Default)]
pub struct Gathered {
    first: Bytes,
    rest: BytesMut,
}

impl Gathered {
    pub fn len(&self) -> usize {
        self.first.len() + self.rest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push(&mut self, chunk: Bytes) {
        if self.is_empty() {
            self.first = chunk;
            return;
        }
        if self.rest.is_empty() {
            self.rest.extend_from_slice(&std::mem::take(&mut self.first));
        }
        self.rest.extend_from_slice(&chunk);
    }

    pub fn into_bytes(self) -> Bytes {
        if self.rest.is_empty() {
            self.first
        } else {
            self.rest.freeze()
        }
    }

    /// The body in an allocation of its own. A body that arrived in one chunk is a
    /// slice of the connection's read buffer, and is copied out of it: a stream keeps
    /// its request for its whole life, which would keep that buffer allocated beside the
    /// one hyper reads the connection's next bytes into (docs/benchmarks.md, "Memory per
    /// stream").
    pub fn into_own_bytes(self) -> Bytes {
        if self.rest.is_empty() {
            Bytes::copy_from_slice(&self.first)
        } else {
            self.rest.freeze()
        }
    }
}
