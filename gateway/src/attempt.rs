//! Stage 7 of every endpoint, one candidate at a time: opens the upstream exchange at one
//! endpoint — plain (`complete`: the whole answer) or streamed (`open_stream`: up to its
//! first event) — behind the endpoint's circuit breaker, records the outcome in its health
//! and statistics, and decides whether the next candidate may be tried
//! ([`first_answer`]). Nothing here has reached the client yet, so any failure may still
//! fall back; what follows an answer (relaying, settling) is `pipeline.rs`'s and
//! `relay.rs`'s.

use crate::app::App;
use crate::catalog::Model;
use crate::context::RequestContext;
use crate::error::ApiError;
use crate::health::{is_outage, Admission};
use crate::providers::{Adapter, Completion, Endpoint, UpstreamError};
use crate::relay::OpenStream;
use crate::upstream::{self, Deadlines};
use bytes::Bytes;
use http::StatusCode;
use std::future::Future;
use tokio::time::Instant;

/// Why an attempt at one candidate failed: an upstream failure may fall back to the next
/// candidate; anything else answers the client at once.
pub enum Failure {
    Upstream(UpstreamError),
    Final(ApiError),
}

impl From<UpstreamError> for Failure {
    fn from(error: UpstreamError) -> Failure {
        Failure::Upstream(error)
    }
}

/// Stage 7 of every endpoint: tries each candidate in order through `attempt`, falling
/// back to the next on an upstream failure that allows it, and yields the first answer
/// with the endpoint that gave it, or the error to answer the client with. Each attempt
/// is gated by its endpoint's circuit breaker and recorded in it and in the endpoint's
/// statistics, so an endpoint that keeps failing is skipped (the request falls back at
/// once) until a probe finds it healthy.
pub async fn first_answer<T, Attempt, Attempting>(
    app: &'static App,
    candidates: &[&'static Model],
    mut attempt: Attempt,
) -> Result<(&'static Model, T), ApiError>
where
    Attempt: FnMut(&'static Model) -> Attempting,
    Attempting: Future<Output = Result<T, Failure>>,
{
    let n_candidates = candidates.len();
    for (candidate_idx, model) in candidates.iter().copied().enumerate() {
        let failure = match guarded(app, model, attempt(model)).await {
            Ok(answer) => return Ok((model, answer)),
            Err(failure) => failure,
        };
        match failure {
            Failure::Upstream(error) if error.fallback && candidate_idx + 1 < n_candidates => {
                metrics::counter!("solrouter_fallbacks_total", "provider" => model.provider.as_str()).increment(1);
                tracing::info!(%error, model = %model.id, "falling back to the next candidate");
            }
            Failure::Upstream(error) => return Err(ApiError::upstream(&error)),
            Failure::Final(error) => return Err(error),
        }
    }
    Err(ApiError::internal("routing left no candidate"))
}

/// One attempt at the endpoint `model`, unless its circuit is open, recorded in its
/// breaker and statistics (time to its answer: for a stream, its first event).
async fn guarded<T>(
    app: &'static App,
    model: &'static Model,
    attempt: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    if app.health.admit(model) == Admission::Refuse {
        let message = "skipped: its recent requests failed (circuit open)";
        return Err(upstream::failure(
            &model.provider,
            StatusCode::SERVICE_UNAVAILABLE,
            message,
            true,
        )
        .into());
    }
    let started = Instant::now();
    let result = attempt.await;
    match &result {
        Ok(_) => app.health.record_answer(model, started.elapsed()),
        Err(Failure::Upstream(error)) => app.health.record_failure(model, is_outage(error)),
        // Refused before anything was sent: says nothing about the provider.
        Err(Failure::Final(_)) => {}
    }
    result
}

/// What a successful attempt yields: a whole completion (and the provider's own body
/// when it answered in the client's format), or a stream ready to relay.
pub(crate) enum Answer {
    Complete(Completion, Option<Bytes>),
    Stream(Box<OpenStream>),
}

/// One chat attempt at one candidate, plain or streamed.
pub(crate) async fn attempt(
    app: &'static App,
    context: &RequestContext,
    model: &'static Model,
) -> Result<Answer, Failure> {
    if context.chat.stream {
        open_stream(app, context, model).await.map(|stream| Answer::Stream(Box::new(stream)))
    } else {
        complete(app, context, model)
            .await
            .map(|(completion, native)| Answer::Complete(completion, native))
    }
}

/// The adapter and endpoint serving `model` (routing checked the provider is enabled).
pub fn provider(
    app: &'static App,
    model: &Model,
) -> Result<(&'static dyn Adapter, &'static Endpoint), Failure> {
    app.providers.get(&model.provider).ok_or_else(|| {
        let message = format!("provider `{}` is not configured", model.provider);
        Failure::Final(ApiError::unavailable(message))
    })
}

/// One non-streaming attempt: the translated completion, and the provider's body when
/// the client speaks its format.
async fn complete(
    app: &'static App,
    context: &RequestContext,
    model: &'static Model,
) -> Result<(Completion, Option<Bytes>), Failure> {
    let (adapter, endpoint) = provider(app, model)?;
    let request = adapter
        .request(endpoint, &context.chat, &context.target(model))
        .map_err(|error| Failure::Final(ApiError::invalid_param(&error.param, error.message)))?;
    let deadlines = Deadlines::attempt(app.upstream.timeouts(), context.deadline);
    let sent = Instant::now();
    let mut response = app.upstream.send(adapter, request, &deadlines).await?;
    let body = app.upstream.body(&mut response, &deadlines, adapter.provider()).await?;
    let completion = adapter.response(&context.chat, &body)?;
    // A plain answer's tokens all arrive at its end: its speed is over the whole wait.
    app.health.record_tokens(model, completion.usage.completion_tokens, sent.elapsed());
    let native = context.chat.native_for(adapter).map(|_| body);
    Ok((completion, native))
}

/// One streaming attempt, up to its first translated chunk: until then nothing has
/// reached the client, so any failure may still fall back to the next candidate.
async fn open_stream(
    app: &'static App,
    context: &RequestContext,
    model: &Model,
) -> Result<OpenStream, Failure> {
    let (adapter, endpoint) = provider(app, model)?;
    let request = adapter
        .request(endpoint, &context.chat, &context.target(model))
        .map_err(|error| Failure::Final(ApiError::invalid_param(&error.param, error.message)))?;
    let deadlines = Deadlines::attempt(app.upstream.timeouts(), context.deadline);
    let response = app.upstream.send(adapter, request, &deadlines).await?;
    let native = context.chat.native_for(adapter).is_some();
    let mut stream = OpenStream::new(response, adapter, &context.chat, deadlines, native);
    match tokio::time::timeout_at(deadlines.first_byte, stream.first_event()).await {
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
