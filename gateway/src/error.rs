//! The gateway's one error type and the one place that renders errors for clients, in
//! the shape of the API the client speaks: OpenAI's
//! `{"error":{"message","type","code","param"}}` or Anthropic's
//! `{"type":"error","error":{"type","message"}}`, with the same status either way.

use crate::providers::UpstreamError;
use crate::respond::{self, Response};
use http::{HeaderValue, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

/// What a client is told to wait before retrying when the ledger is unavailable: about
/// a leader election.
const LEDGER_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The error format of the API a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorShape {
    OpenAi,
    Anthropic,
}

/// Who caused an error: decides the log level and whether it counts against the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The request was wrong or not allowed; retrying it unchanged fails again.
    Client,
    /// A provider failed or timed out.
    Upstream,
    /// The gateway or its ledger failed.
    Internal,
}

/// An error on its way to the client. The message carries the context a client needs
/// to act (which parameter, which provider, how many tokens the balance affords).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    param: Option<String>,
    origin: ErrorSource,
    retry_after: Option<Duration>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: String, origin: ErrorSource) -> Self {
        ApiError { status, code, message, param: None, origin, retry_after: None }
    }

    /// 400 naming the offending request parameter.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> ApiError {
        let message = format!("invalid parameter `{param}`: {}", message.into());
        let mut error = ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            message,
            ErrorSource::Client,
        );
        error.param = Some(param.to_string());
        error
    }

    /// 400 for a body that is not the JSON it should be.
    pub fn malformed(message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", message, ErrorSource::Client)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid_api_key", message, ErrorSource::Client)
    }

    pub fn insufficient_credits(message: String) -> ApiError {
        let status = StatusCode::PAYMENT_REQUIRED;
        ApiError::new(status, "insufficient_credits", message, ErrorSource::Client)
    }

    /// 402 for a key past its own spend limit (the account may still have credit).
    pub fn key_limit(message: String) -> ApiError {
        let status = StatusCode::PAYMENT_REQUIRED;
        ApiError::new(status, "key_limit_exceeded", message, ErrorSource::Client)
    }

    /// 429 for a key past its requests or tokens per minute, with when to retry.
    pub fn rate_limited(message: String, retry_after: Duration) -> ApiError {
        let status = StatusCode::TOO_MANY_REQUESTS;
        let mut error = ApiError::new(status, "rate_limited", message, ErrorSource::Client);
        error.retry_after = Some(retry_after);
        error
    }

    /// 403 for a key (or session) that may not do what it asks.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message, ErrorSource::Client)
    }

    pub fn model_not_found(model: &str) -> ApiError {
        let message = format!("model `{model}` does not exist; GET /v1/api/models lists them");
        let mut error =
            ApiError::new(StatusCode::NOT_FOUND, "model_not_found", message, ErrorSource::Client);
        error.param = Some("model".into());
        error
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message, ErrorSource::Client)
    }

    pub fn method_not_allowed() -> ApiError {
        let message = "method not allowed on this path".to_string();
        let status = StatusCode::METHOD_NOT_ALLOWED;
        ApiError::new(status, "method_not_allowed", message, ErrorSource::Client)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError::new(StatusCode::CONFLICT, "conflict", message, ErrorSource::Client)
    }

    pub fn too_large(limit_bytes: usize) -> ApiError {
        let message = format!("request body exceeds the limit of {limit_bytes} bytes");
        let status = StatusCode::PAYLOAD_TOO_LARGE;
        ApiError::new(status, "request_too_large", message, ErrorSource::Client)
    }

    /// 408 when the client sends its body too slowly.
    pub fn body_timeout() -> ApiError {
        let message = "request body was not received in time".to_string();
        ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", message, ErrorSource::Client)
    }

    /// A provider's failure, with the status its adapter classified it as.
    pub fn upstream(error: &UpstreamError) -> ApiError {
        let origin = if error.status.is_client_error() && !error.fallback {
            ErrorSource::Client
        } else {
            ErrorSource::Upstream
        };
        let code = match error.status {
            StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT => "upstream_timeout",
            StatusCode::SERVICE_UNAVAILABLE => "upstream_unavailable",
            StatusCode::TOO_MANY_REQUESTS => "upstream_rate_limited",
            _ => "upstream_error",
        };
        let mut api = ApiError::new(error.status, code, error.to_string(), origin);
        api.retry_after = error.retry_after;
        api
    }

    /// 503 when no candidate's provider is configured.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        let message = message.into();
        let status = StatusCode::SERVICE_UNAVAILABLE;
        ApiError::new(status, "provider_unavailable", message, ErrorSource::Upstream)
    }

    /// 503 when the ledger cannot be reached (no quorum within the ledger client's
    /// deadline) or refuses for a reason that is ours; worth retrying shortly.
    pub fn ledger(context: &str, error: impl std::fmt::Display) -> ApiError {
        let message = format!("ledger {context}: {error}");
        let status = StatusCode::SERVICE_UNAVAILABLE;
        let mut api = ApiError::new(status, "ledger_unavailable", message, ErrorSource::Internal);
        api.retry_after = Some(LEDGER_RETRY_AFTER);
        api
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        let message = message.into();
        let status = StatusCode::INTERNAL_SERVER_ERROR;
        ApiError::new(status, "internal_error", message, ErrorSource::Internal)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn origin(&self) -> ErrorSource {
        self.origin
    }

    /// The OpenAI error object, also sent as the SSE error event of a broken stream.
    pub fn to_json(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": error_type(self.status),
            "code": self.code,
            "param": self.param,
        }})
    }

    /// Anthropic's error object, also sent as the `error` event of a broken stream.
    pub fn to_anthropic_json(&self) -> Value {
        json!({"type": "error", "error": {
            "type": anthropic_error_type(self.status),
            "message": self.message,
        }})
    }

    pub fn to_json_as(&self, shape: ErrorShape) -> Value {
        match shape {
            ErrorShape::OpenAi => self.to_json(),
            ErrorShape::Anthropic => self.to_anthropic_json(),
        }
    }

    /// The one place an error becomes an HTTP response.
    pub fn into_response(self, shape: ErrorShape) -> Response {
        match self.origin {
            ErrorSource::Client => tracing::debug!(error = %self, "request failed"),
            ErrorSource::Upstream => tracing::info!(error = %self, "request failed"),
            ErrorSource::Internal => tracing::warn!(error = %self, "request failed"),
        }
        let mut response = respond::json(self.status, &self.to_json_as(shape));
        if let Some(after) = self.retry_after {
            // Rounded up: a client retrying after the seconds said is not early.
            let seconds = after.as_millis().div_ceil(1000).max(1).to_string();
            if let Ok(value) = HeaderValue::from_str(&seconds) {
                response.headers_mut().insert(http::header::RETRY_AFTER, value);
            }
        }
        response
    }
}

/// OpenAI's error `type` for a status.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 | 403 => "authentication_error",
        402 => "insufficient_credits",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// Anthropic's error `type` for a status, as its API documents them.
fn anthropic_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        408 | 504 => "timeout_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}
