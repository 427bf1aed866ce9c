//! Request bodies: [`UnreadBody`] refuses one whose declared length is over the limit
//! before reading it, reads one under a size limit and a deadline, and lingers over what
//! a refused client still sends, so that it reads its error instead of a reset.

use crate::error::ApiError;
use crate::respond;
use bytes::Bytes;
use http::{header, HeaderMap};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::time::Duration;

/// Longest a client may take to send a request's body: a client that trickles bytes
/// cannot hold a connection open forever.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Most bytes of a refused request body read and dropped after the answer, and for how
/// long: enough for a client that was still sending to read the error instead of a reset
/// connection, bounded so a refused sender cannot keep a task busy.
pub const LINGER_BYTES_MAX: u64 = 16 * 1024 * 1024;
pub const LINGER_TIME_MAX: Duration = Duration::from_secs(5);

/// A request body not read yet. A request refused before its body is read (declared too
/// large, unauthenticated, …) drops it, and dropping it lingers: what the client still
/// sends is read and discarded in the background (at most [`LINGER_BYTES_MAX`] for
/// [`LINGER_TIME_MAX`]), as a server's lingering close does, so the client reads the
/// error answer instead of a connection reset while it was still writing.
pub struct UnreadBody {
    body: Option<Incoming>,
}

impl UnreadBody {
    /// Refuses a body whose declared length is over `limit` before reading any of it.
    pub fn new(headers: &HeaderMap, body: Incoming, limit: usize) -> Result<UnreadBody, ApiError> {
        let unread = UnreadBody { body: Some(body) };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse::<u64>().ok());
        match declared {
            Some(length) if length > limit as u64 => Err(ApiError::too_large(limit)),
            _ => Ok(unread),
        }
    }

    /// Reads the whole body under `limit` (413) and [`BODY_READ_TIMEOUT`] (408); what a
    /// refused body still sends lingers.
    pub async fn read(mut self, limit: usize) -> Result<Bytes, ApiError> {
        let mut body = self.body.take().expect("a body is read once");
        let reading = async {
            let mut collected = respond::Gathered::default();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|error| {
                    ApiError::malformed(format!("reading the request body failed: {error}"))
                })?;
                if let Ok(data) = frame.into_data() {
                    if collected.len() + data.len() > limit {
                        return Err(ApiError::too_large(limit));
                    }
                    collected.push(data);
                }
            }
            Ok(collected.into_bytes())
        };
        let read = match tokio::time::timeout(BODY_READ_TIMEOUT, reading).await {
            Err(_) => Err(ApiError::body_timeout()),
            Ok(read) => read,
        };
        if read.is_err() {
            linger(body);
        }
        read
    }
}

impl Drop for UnreadBody {
    fn drop(&mut self) {
        if let Some(body) = self.body.take() {
            linger(body);
        }
    }
}

/// Reads and drops what is left of `body`, bounded, in the background.
fn linger(mut body: Incoming) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    runtime.spawn(async move {
        let draining = async {
            let mut drained = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                drained += frame.data_ref().map_or(0, |data| data.len() as u64);
                if drained > LINGER_BYTES_MAX {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME_MAX, draining).await;
    });
}
