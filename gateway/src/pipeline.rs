//! The chat-completions pipeline, in one place, one stage per concern:
//!
//! 1. limits — refuse a body whose declared length is over the limit;
//! 2. auth — the `sr_` key, before the body is read, so an unauthenticated client cannot
//!    make the gateway buffer a large body;
//! 3. read — the body, under the limit and a deadline;
//! 4. parse — validate the OpenAI request (400 naming the parameter);
//! 5. route — resolve `model` and the `models` fallbacks to catalogue entries whose
//!    provider is configured and which support what the request needs;
//! 6. reserve — hold the worst case at the dearest candidate, before any upstream cost
//!    can be incurred (402 when unaffordable);
//! 7. forward — try each candidate in order until one answers; fall back only while
//!    nothing has reached the client;
//! 8. respond and settle — settle the hold with the request record, then finish the
//!    response, so a client that has its answer also sees the charge.
//!
//! Stages 6–8 run in a task of their own: once money is held, the hold must end in a
//! settle or a release even if the client disconnects and its connection is dropped.

use crate::app::App;
use crate::bank::{now_ms, Caller, Settled, HOLD_GRACE};
use crate::catalog::{Model, Price};
use crate::error::ApiError;
use crate::health::Admission;
use crate::parse::{self, ParsedChat};
use crate::providers::{Adapter, ChatRequest, Completion, Endpoint, UpstreamError, Usage};
use crate::relay;
use crate::respond::{self, Response};
use crate::server::{check_declared_length, read_body};
use crate::upstream::{self, Deadlines};
use crate::wire;
use http::{header::AUTHORIZATION, HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use solrouter_ledger::{signed_usd, HoldId, PicoUsd, Rejection, Reply, RequestRecord};
use tokio::sync::oneshot;
use tokio::time::{Duration, Instant};

/// How long a response waits for its settle before it is sent anyway; the settle task
/// goes on retrying. One ledger commit takes milliseconds; this only matters while the
/// ledger is failing.
pub const SETTLE_WAIT_MAX: Duration = Duration::from_secs(2);

/// Everything the stages learn about one request, passed from stage to stage.
pub struct RequestContext {
    /// The hold paying for the request, also its public id (`gen-…`).
    pub generation: HoldId,
    pub caller: Caller,
    pub chat: ChatRequest,
    /// Models to try, in order; each one's provider is configured.
    pub candidates: Vec<&'static Model>,
    pub prompt_tokens_max: u64,
    pub started: Instant,
    pub created_ms: u64,
    /// When the whole upstream exchange, fallbacks included, must be over.
    pub deadline: Instant,
}

impl RequestContext {
    /// The record the settle stores: what the request used, cost and how it ended.
    pub fn record(&self, model: &Model, usage: &Usage, status: StatusCode) -> RequestRecord {
        RequestRecord {
            key: Some(self.caller.key),
            model: model.id.clone(),
            provider: model.provider.clone(),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            reasoning_tokens: usage.reasoning_tokens,
            cached_tokens: usage.cached_read_tokens,
            latency_ms: self.started.elapsed().as_millis() as u64,
            status: status.as_u16(),
            streamed: self.chat.stream,
            created_ms: self.created_ms,
            ..RequestRecord::default()
        }
    }

    pub fn id(&self) -> String {
        wire::generation_id(self.generation)
    }

    pub fn created_s(&self) -> u64 {
        self.created_ms / 1000
    }
}

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

/// `POST /v1/api/chat/completions`.
pub async fn chat_completions(
    app: &'static App,
    request: Request<Incoming>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let limit = app.config.body_bytes_max();
    check_declared_length(request.headers(), limit)?;
    let authorization = request.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
    let caller = app.bank.authenticate(authorization).await?;
    let body = read_body(request.into_body(), limit).await?;
    let parsed = parse::parse(&body)?;
    drop(body);
    let candidates = route(app, &parsed)?;
    let context = RequestContext {
        generation: HoldId(crate::keys::random_u128()),
        caller,
        chat: parsed.chat,
        candidates,
        prompt_tokens_max: parsed.prompt_tokens_max,
        started,
        created_ms: now_ms(),
        deadline: started + app.upstream.timeouts().total,
    };
    // From the reserve on, money is involved: stages 6–8 run in their own task, so a
    // client that hangs up (which drops this future) cannot cut them short between a
    // reserve and its settle or release.
    let (reply, replied) = oneshot::channel();
    tokio::spawn(async move {
        match reserve(app, &context).await {
            Ok(()) => forward(app, context, reply).await,
            Err(error) => {
                let _ = reply.send(Err(error));
            }
        }
    });
    replied
        .await
        .unwrap_or_else(|_| Err(ApiError::internal("the request's task ended without an answer")))
}

/// Stage 5: the candidates in order. Unknown ids are a 404 (the client named them);
/// models that cannot serve this request are skipped, and if none is left the first
/// reason to skip is the answer.
fn route(app: &'static App, parsed: &ParsedChat) -> Result<Vec<&'static Model>, ApiError> {
    let mut candidates = Vec::with_capacity(parsed.model_ids.len());
    let mut first_skip = None;
    for id in &parsed.model_ids {
        let model = app.catalog.get(id).ok_or_else(|| ApiError::model_not_found(id))?;
        let unsupported = [
            (parsed.wants_tools && !model.capabilities.tools, "tools"),
            (parsed.wants_images && !model.capabilities.images, "messages"),
            (
                parsed.wants_structured_output && !model.capabilities.structured_output,
                "response_format",
            ),
        ];
        let skip = if let Some((_, param)) = unsupported.iter().find(|(missing, _)| *missing) {
            Some(ApiError::invalid_param(
                param,
                format!("model `{id}` does not support this input"),
            ))
        } else if !app.providers.enabled(&model.provider) {
            let message =
                format!("provider `{}` of model `{id}` is not configured", model.provider);
            Some(ApiError::unavailable(message))
        } else {
            None
        };
        match skip {
            Some(error) => {
                first_skip.get_or_insert(error);
            }
            None => candidates.push(model),
        }
    }
    match first_skip {
        Some(error) if candidates.is_empty() => Err(error),
        _ => Ok(candidates),
    }
}

/// The most a request can cost at `model`: its prompt bound (capped at the context,
/// since a longer prompt is refused upstream) plus its output limit.
fn worst_case(context: &RequestContext, model: &Model) -> (u64, u64, PicoUsd) {
    let prompt_tokens = context.prompt_tokens_max.min(model.context_length);
    let completion_tokens = context
        .chat
        .max_tokens
        .map_or(model.max_output_tokens, |tokens| tokens.min(model.max_output_tokens));
    (prompt_tokens, completion_tokens, model.price.bound(prompt_tokens, completion_tokens))
}

/// Stage 6: holds the worst case of the dearest candidate, so any fallback is covered.
async fn reserve(app: &'static App, context: &RequestContext) -> Result<(), ApiError> {
    let (model, (prompt_tokens, completion_tokens, amount)) = context
        .candidates
        .iter()
        .map(|model| (*model, worst_case(context, model)))
        .max_by_key(|(_, (_, _, amount))| *amount)
        .ok_or_else(|| ApiError::internal("routing left no candidate"))?;
    let ttl = app.upstream.timeouts().total + HOLD_GRACE;
    let outcome = app.bank.reserve(context.caller, context.generation, amount, ttl).await?;
    match outcome {
        Ok(Reply::Reserved { .. }) => Ok(()),
        Ok(reply) => Err(ApiError::internal(format!("reserve answered {reply:?}"))),
        Err(Rejection::InsufficientFunds { available }) => {
            let affordable = affordable_tokens(available, &model.price);
            Err(ApiError::insufficient_credits(format!(
                "insufficient credits: the available balance of ${} affords about {affordable} \
                 tokens of `{}` (up to ${} per token); this request may use up to \
                 {prompt_tokens} prompt + {completion_tokens} completion tokens (${amount}). \
                 Lower `max_tokens` or add credits.",
                signed_usd(available),
                model.id,
                Price::per_token_usd(model.price.prompt.max(model.price.completion)),
            )))
        }
        Err(Rejection::KeyRevoked | Rejection::UnknownKey) => {
            Err(ApiError::unauthorized("API key has been revoked"))
        }
        Err(rejection) => Err(ApiError::ledger("reserve", rejection)),
    }
}

/// Tokens `available` pays for at the model's dearest per-token price.
fn affordable_tokens(available: i128, price: &Price) -> u128 {
    let per_token = price.prompt.max(price.completion).0.max(1);
    u128::try_from(available).map_or(0, |available| available / per_token)
}

/// Stages 7–8: tries each candidate; the first that answers gets relayed and settled.
async fn forward(
    app: &'static App,
    context: RequestContext,
    reply: oneshot::Sender<Result<Response, ApiError>>,
) {
    let hold = HoldGuard::new(app, &context);
    let n_candidates = context.candidates.len();
    for (candidate_idx, model) in context.candidates.iter().copied().enumerate() {
        let failure = match attempt(app, &context, model).await {
            Ok(Answer::Complete(completion)) => {
                return respond_complete(&context, model, completion, hold, reply).await
            }
            Ok(Answer::Stream(stream)) => {
                return relay::run(app, &context, model, stream, hold, reply).await
            }
            Err(failure) => failure,
        };
        let error = match failure {
            Failure::Upstream(error) if error.fallback && candidate_idx + 1 < n_candidates => {
                metrics::counter!("solrouter_fallbacks_total", "provider" => model.provider.as_str()).increment(1);
                tracing::info!(%error, model = %model.id, "falling back to the next candidate");
                continue;
            }
            Failure::Upstream(error) => ApiError::upstream(&error),
            Failure::Final(error) => error,
        };
        hold.release();
        let _ = reply.send(Err(error));
        return;
    }
}

/// What a successful attempt yields: a whole completion, or a stream ready to relay.
enum Answer {
    Complete(Completion),
    Stream(relay::OpenStream),
}

/// One attempt at one candidate, gated by its provider's circuit breaker and recorded
/// in it, so a provider that keeps failing is skipped (the request falls back at once)
/// until a probe finds it healthy again.
async fn attempt(
    app: &'static App,
    context: &RequestContext,
    model: &'static Model,
) -> Result<Answer, Failure> {
    if app.health.admit(&model.provider) == Admission::Refuse {
        let message = "skipped: its recent requests failed (circuit open)";
        return Err(upstream::failure(
            &model.provider,
            StatusCode::SERVICE_UNAVAILABLE,
            message,
            true,
        )
        .into());
    }
    let result = if context.chat.stream {
        relay::open(app, context, model).await.map(Answer::Stream)
    } else {
        complete(app, context, model).await.map(Answer::Complete)
    };
    match &result {
        Ok(_) => app.health.record(&model.provider, true),
        Err(Failure::Upstream(error)) => app.health.record(&model.provider, !is_outage(error)),
        // Refused before anything was sent: says nothing about the provider.
        Err(Failure::Final(_)) => {}
    }
    result
}

/// Whether a failure counts against the provider's health: its servers failed or did
/// not answer in time. Its refusals of a request (4xx, rate limits) do not.
pub fn is_outage(error: &UpstreamError) -> bool {
    error.status.is_server_error() || error.status == StatusCode::REQUEST_TIMEOUT
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

/// One non-streaming attempt.
async fn complete(
    app: &'static App,
    context: &RequestContext,
    model: &Model,
) -> Result<Completion, Failure> {
    let (adapter, endpoint) = provider(app, model)?;
    let request = adapter
        .request(endpoint, &context.chat, &model.upstream_model)
        .map_err(|error| Failure::Final(ApiError::invalid_param(&error.param, error.message)))?;
    let deadlines = Deadlines::attempt(app.upstream.timeouts(), context.deadline);
    let mut response = app.upstream.send(adapter, request, &deadlines).await?;
    let body = app.upstream.body(&mut response, &deadlines, adapter.provider()).await?;
    Ok(adapter.response(&context.chat, &body)?)
}

async fn respond_complete(
    context: &RequestContext,
    model: &'static Model,
    completion: Completion,
    hold: HoldGuard,
    reply: oneshot::Sender<Result<Response, ApiError>>,
) {
    let cost = model.price.cost(&completion.usage);
    let record = context.record(model, &completion.usage, StatusCode::OK);
    hold.settle(cost, record).await;
    observe_cost(model, cost);
    let body = wire::completion(&context.id(), context.created_s(), model, completion, cost);
    let _ = reply.send(Ok(respond::text(StatusCode::OK, body, "application/json")));
}

pub fn observe_cost(model: &'static Model, cost: PicoUsd) {
    // Whole micro-USD keep the counter an exact integer; sub-micro remainders are noise
    // at the scale a dashboard shows.
    let micro_usd = (cost.0 / 1_000_000) as u64;
    metrics::counter!("solrouter_cost_micro_usd_total", "model" => model.id.as_str())
        .increment(micro_usd);
}

/// Ends a hold exactly once: by a settle or a release, or — if the task holding it
/// unwinds — by a release when dropped, so a bug cannot leave money held until expiry.
pub struct HoldGuard {
    app: &'static App,
    caller: Caller,
    hold: HoldId,
    armed: bool,
}

impl HoldGuard {
    fn new(app: &'static App, context: &RequestContext) -> HoldGuard {
        HoldGuard { app, caller: context.caller, hold: context.generation, armed: true }
    }

    /// Settles with the record and waits (bounded) for the ledger to apply it: what it
    /// charged, or `None` if it refused, or is still trying after [`SETTLE_WAIT_MAX`].
    pub async fn settle(mut self, actual: PicoUsd, record: RequestRecord) -> Option<Settled> {
        self.armed = false;
        let settling = self.app.bank.settle(self.caller.account, self.hold, actual, record);
        match tokio::time::timeout(SETTLE_WAIT_MAX, settling).await {
            Ok(Ok(settled)) => settled,
            Ok(Err(join_error)) => {
                tracing::error!(hold = self.hold.0, %join_error, "the settle task failed");
                None
            }
            Err(_elapsed) => {
                tracing::warn!(hold = self.hold.0, "settle still pending; answering anyway");
                None
            }
        }
    }

    /// Voids the hold: nothing was produced, so nothing is charged.
    pub fn release(mut self) {
        self.armed = false;
        self.app.bank.release(self.caller.account, self.hold);
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        // Without a runtime (the process is exiting) nothing can be sent; the hold then
        // expires on its own.
        if self.armed && tokio::runtime::Handle::try_current().is_ok() {
            self.app.bank.release(self.caller.account, self.hold);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affordable_tokens_use_the_dearest_price() {
        let price = |prompt, completion| Price {
            prompt: PicoUsd(prompt),
            completion: PicoUsd(completion),
            cached_read: None,
            cached_write: None,
            per_request: PicoUsd::ZERO,
        };
        let check = |available: i128, price: Price, expected: u128| {
            assert_eq!(affordable_tokens(available, &price), expected, "{available} {price:?}");
        };
        check(1_000_000_000, price(1_000_000, 2_000_000), 500);
        check(1_999_999, price(1_000_000, 2_000_000), 0);
        check(-5, price(1, 1), 0);
        check(7, price(0, 0), 7);
    }

    #[test]
    fn outages_are_server_errors_and_timeouts() {
        let check = |status: StatusCode, expected: bool| {
            let error = upstream::failure("p", status, "m", true);
            assert_eq!(is_outage(&error), expected, "{status}");
        };
        check(StatusCode::BAD_GATEWAY, true);
        check(StatusCode::SERVICE_UNAVAILABLE, true);
        check(StatusCode::GATEWAY_TIMEOUT, true);
        check(StatusCode::REQUEST_TIMEOUT, true);
        check(StatusCode::TOO_MANY_REQUESTS, false);
        check(StatusCode::BAD_REQUEST, false);
    }
}
