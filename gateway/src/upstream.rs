//! The HTTP client towards providers: one pooled, keep-alive `reqwest` client, and the
//! four timeouts of an exchange enforced explicitly, so each failure says which limit
//! it hit.

use crate::config::UpstreamTimeouts;
use crate::providers::{Adapter, UpstreamError, UpstreamRequest};
use crate::respond::Gathered;
use bytes::Bytes;
use http::StatusCode;
use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// Largest complete (non-streamed) response the gateway buffers: a maximal completion
/// of today's models is a few MiB of JSON; 64 MiB leaves room for inline images.
pub const RESPONSE_BYTES_MAX: usize = 64 << 20;
/// Largest error body read from a failing upstream; error messages are short, and the
/// adapter truncates what it quotes anyway.
pub const ERROR_BYTES_MAX: usize = 64 << 10;
/// Idle connections kept per provider host. Enough for bursts without re-handshaking
/// TLS; idle ones close after `POOL_IDLE_TIMEOUT`.
const POOL_IDLE_PER_HOST_MAX: usize = 256;
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Upstream URLs kept parsed: one per endpoint and path (Gemini's name the model), so
/// this many only under a catalogue far larger than today's; a full cache is emptied.
const URLS_PARSED_MAX: usize = 1024;

/// When an attempt must have seen its response head (and, for streams, its first
/// event), when the whole request must be over, and the longest gap between chunks.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub first_byte: Instant,
    pub total: Instant,
    pub idle: Duration,
}

impl Deadlines {
    /// Deadlines of one attempt starting now, inside the request's `total` deadline.
    pub fn attempt(timeouts: &UpstreamTimeouts, total: Instant) -> Deadlines {
        let first_byte = (Instant::now() + timeouts.first_byte).min(total);
        Deadlines { first_byte, total, idle: timeouts.idle }
    }
}

pub struct Upstream {
    client: reqwest::Client,
    timeouts: UpstreamTimeouts,
    /// An adapter names its URL as text; parsing it cost a third of sending a request.
    urls: RwLock<HashMap<String, reqwest::Url>>,
}

impl Upstream {
    pub fn try_new(timeouts: UpstreamTimeouts) -> Result<Upstream, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .pool_max_idle_per_host(POOL_IDLE_PER_HOST_MAX)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .tcp_nodelay(true)
            // Providers never redirect an API call; following one could leak the key.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Upstream { client, timeouts, urls: RwLock::default() })
    }

    pub fn timeouts(&self) -> &UpstreamTimeouts {
        &self.timeouts
    }

    /// Sends `request` and waits for a 2xx response head. A non-2xx answer is read
    /// (bounded) and classified by the adapter.
    pub async fn send(
        &self,
        adapter: &dyn Adapter,
        request: UpstreamRequest,
        deadlines: &Deadlines,
    ) -> Result<reqwest::Response, UpstreamError> {
        let provider = adapter.provider();
        let url = self.url(&request.url, provider)?;
        let sending = self.client.post(url).headers(request.headers).body(request.body);
        let response = match tokio::time::timeout_at(deadlines.first_byte, sending.send()).await {
            Err(_) => {
                return Err(timeout(provider, "no response head before the first-byte deadline"))
            }
            Ok(Err(error)) => return Err(transport(provider, &error)),
            Ok(Ok(response)) => response,
        };
        if response.status().is_success() {
            return Ok(response);
        }
        let status =
            StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let headers = response.headers().clone();
        let mut response = response;
        // A truncated or stalled error body still classifies by status.
        let body = read_bounded(&mut response, deadlines, ERROR_BYTES_MAX, provider)
            .await
            .unwrap_or_default();
        Err(adapter.error(status, &headers, &body))
    }

    /// `text` parsed, from the cache when it was parsed before.
    fn url(&self, text: &str, provider: &str) -> Result<reqwest::Url, UpstreamError> {
        let cached = self.urls.read().unwrap_or_else(PoisonError::into_inner).get(text).cloned();
        if let Some(url) = cached {
            return Ok(url);
        }
        let url = reqwest::Url::parse(text).map_err(|error| {
            let message = format!("transport error: invalid URL: {error}");
            failure(provider, StatusCode::BAD_GATEWAY, &message, true)
        })?;
        let mut urls = self.urls.write().unwrap_or_else(PoisonError::into_inner);
        if urls.len() >= URLS_PARSED_MAX {
            urls.clear();
        }
        urls.insert(text.to_owned(), url.clone());
        Ok(url)
    }

    /// Reads a whole response body under the idle and total deadlines.
    pub async fn body(
        &self,
        response: &mut reqwest::Response,
        deadlines: &Deadlines,
        provider: &str,
    ) -> Result<Bytes, UpstreamError> {
        read_bounded(response, deadlines, RESPONSE_BYTES_MAX, provider).await
    }
}

/// The next body chunk, or `None` at the end. Fails when the gap since the previous
/// chunk exceeds the idle timeout or the request's total deadline passes.
pub async fn next_chunk(
    response: &mut reqwest::Response,
    deadlines: &Deadlines,
    provider: &str,
) -> Result<Option<Bytes>, UpstreamError> {
    let idle_deadline = (Instant::now() + deadlines.idle).min(deadlines.total);
    match tokio::time::timeout_at(idle_deadline, response.chunk()).await {
        Ok(Ok(chunk)) => Ok(chunk),
        Ok(Err(error)) => Err(transport(provider, &error)),
        Err(_) if idle_deadline == deadlines.total => {
            Err(timeout(provider, "the request's total timeout passed"))
        }
        Err(_) => Err(timeout(provider, "the stream stalled past the idle timeout")),
    }
}

async fn read_bounded(
    response: &mut reqwest::Response,
    deadlines: &Deadlines,
    limit: usize,
    provider: &str,
) -> Result<Bytes, UpstreamError> {
    let mut body = Gathered::default();
    while let Some(chunk) = next_chunk(response, deadlines, provider).await? {
        if body.len() + chunk.len() > limit {
            return Err(failure(provider, StatusCode::BAD_GATEWAY, "response too large", true));
        }
        body.push(chunk);
    }
    Ok(body.into_bytes())
}

fn timeout(provider: &str, message: &str) -> UpstreamError {
    failure(provider, StatusCode::GATEWAY_TIMEOUT, message, true)
}

fn transport(provider: &str, error: &reqwest::Error) -> UpstreamError {
    // The cause, not reqwest's own message: that names the URL, which some hosts make
    // carry a credential in its query.
    let message = match std::error::Error::source(error) {
        Some(cause) => format!("transport error: {cause}"),
        None => format!("transport error: {error}"),
    };
    failure(provider, StatusCode::BAD_GATEWAY, &message, true)
}

pub fn failure(provider: &str, status: StatusCode, message: &str, fallback: bool) -> UpstreamError {
    UpstreamError {
        provider: provider.to_string(),
        status,
        message: message.to_string(),
        fallback,
        retry_after: None,
    }
}
