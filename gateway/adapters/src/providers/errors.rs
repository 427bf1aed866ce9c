//! Error classification shared by every adapter: one table from upstream status to
//! client status and fallback, so providers cannot drift apart.

use super::UpstreamError;
use http::{HeaderMap, StatusCode};
use serde_json::Value;
use std::time::Duration;

/// The longest upstream error message passed on, in bytes: enough for any real
/// provider message, short enough that a misbehaving upstream cannot bloat logs and
/// responses.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;

/// The longest `Retry-After` honoured. Providers ask for seconds to minutes; a larger
/// value is more likely a bug than advice, and the router must not shun a provider for
/// a day because of it.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);

/// Classifies a non-2xx upstream response. `body` is the provider's error body; its
/// message is extracted from the common `{"error": {"message": …}}`, `{"error": "…"}`
/// and `{"message": …}` shapes, else the raw text is used.
///
/// Client errors the provider blamed on the request are passed on unchanged and never
/// retried elsewhere (another provider would reject the same request). Capacity and
/// outage errors are retryable on another candidate.
pub fn classify(
    provider: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> UpstreamError {
    let (client_status, fallback) = match status.as_u16() {
        400 | 401 | 403 | 404 | 413 => (status, false),
        // The operator's provider account is out of credit: nothing the client did, and
        // another provider may well answer.
        402 => (StatusCode::SERVICE_UNAVAILABLE, true),
        408 => (StatusCode::GATEWAY_TIMEOUT, true),
        429 => (StatusCode::TOO_MANY_REQUESTS, true),
        503 | 529 => (StatusCode::SERVICE_UNAVAILABLE, true),
        504 => (StatusCode::GATEWAY_TIMEOUT, true),
        400..=499 => (StatusCode::BAD_REQUEST, false),
        _ => (StatusCode::BAD_GATEWAY, true),
    };
    let retry_after = if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        retry_after(headers)
    } else {
        None
    };
    UpstreamError {
        provider: provider.to_owned(),
        status: client_status,
        message: format!("{} {}", status.as_u16(), error_message(body)),
        fallback,
        retry_after,
    }
}

/// A failure inside a 2xx response (unparseable body, broken stream): the provider is
/// misbehaving, so another candidate may succeed.
pub fn bad_gateway(provider: &str, message: impl Into<String>) -> UpstreamError {
    UpstreamError {
        provider: provider.to_owned(),
        status: StatusCode::BAD_GATEWAY,
        message: message.into(),
        fallback: true,
        retry_after: None,
    }
}

/// The human-readable message of an error body, bounded.
pub fn error_message(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let from_json = parsed.as_ref().and_then(|value| {
        let error = value.get("error").unwrap_or(value);
        error.get("message").and_then(Value::as_str).or_else(|| error.as_str())
    });
    let text = match from_json {
        Some(message) => message.to_owned(),
        None => String::from_utf8_lossy(body).trim().to_owned(),
    };
    truncate(text)
}

/// `text` cut to at most [`ERROR_MESSAGE_BYTES_MAX`] bytes (plus an ellipsis), at a
/// character boundary.
pub fn truncate(mut text: String) -> String {
    if text.len() > ERROR_MESSAGE_BYTES_MAX {
        let mut end = ERROR_MESSAGE_BYTES_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// `Retry-After` in delta-seconds (what providers send); an HTTP-date is ignored
/// because honouring it would need a clock, and providers do not use it.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 =
        headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(RETRY_AFTER_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: u16, retry_after_header: Option<&str>, expected: (u16, bool, Option<u64>)) {
        let mut headers = HeaderMap::new();
        if let Some(value) = retry_after_header {
            headers.insert(http::header::RETRY_AFTER, value.parse().unwrap());
        }
        let status = StatusCode::from_u16(status).unwrap();
        let error = classify("p", status, &headers, br#"{"error":{"message":"m"}}"#);
        let actual =
            (error.status.as_u16(), error.fallback, error.retry_after.map(|after| after.as_secs()));
        assert_eq!(actual, expected, "{status}");
        assert_eq!(error.message, format!("{} m", status.as_u16()));
    }

    #[test]
    fn classifies_statuses() {
        check(400, None, (400, false, None));
        check(401, None, (401, false, None));
        check(403, None, (403, false, None));
        check(404, None, (404, false, None));
        check(413, None, (413, false, None));
        check(422, None, (400, false, None));
        check(402, None, (503, true, None));
        check(408, None, (504, true, None));
        check(429, Some("7"), (429, true, Some(7)));
        check(429, Some("Wed, 21 Oct 2015 07:28:00 GMT"), (429, true, None));
        check(429, Some("999999"), (429, true, Some(3600)));
        check(500, None, (502, true, None));
        check(502, None, (502, true, None));
        check(503, Some("2"), (503, true, Some(2)));
        check(504, None, (504, true, None));
        check(529, None, (503, true, None));
    }

    #[test]
    fn extracts_messages() {
        assert_eq!(error_message(br#"{"error":{"message":"bad"}}"#), "bad");
        assert_eq!(error_message(br#"{"error":"plain"}"#), "plain");
        assert_eq!(error_message(br#"{"message":"top"}"#), "top");
        assert_eq!(error_message(b" upstream down \n"), "upstream down");
        let long = "é".repeat(ERROR_MESSAGE_BYTES_MAX);
        let message = error_message(long.as_bytes());
        assert!(message.len() <= ERROR_MESSAGE_BYTES_MAX + '…'.len_utf8());
    }
}
