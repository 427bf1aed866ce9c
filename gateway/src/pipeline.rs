//! The completion pipeline, in one place, one stage per concern, for every client-facing
//! API: each one's [`Codec`] reads its request into an OpenAI chat request (the form
//! every adapter reads) and writes the answer back in its shape.
//!
//! 1. limits — refuse a body whose declared length is over the limit;
//! 2. auth — the `sr_` key, before the body is read, so an unauthenticated client cannot
//!    make the gateway buffer a large body;
//! 3. read — the body, under the limit and a deadline;
//! 4. parse — the codec validates the request (400 naming the parameter);
//! 5. route — resolve `model` and the `models` fallbacks to catalogue endpoints whose
//!    host is configured, which support what the request needs, ordered by the
//!    `provider` preferences, prices, breakers and live statistics (`routing.rs`), and
//!    whose context the prompt does not certainly exceed (by a tokenizer's lower bound:
//!    `tokens.rs`);
//! 6. reserve — hold the worst case at the dearest candidate endpoint, before any upstream cost
//!    can be incurred (402 when unaffordable); the completion limit reserved for is the
//!    one each attempt forwards;
//! 7. forward — try each candidate in order until one answers; fall back only while
//!    nothing has reached the client;
//! 8. respond and settle — settle the hold with the request record, then finish the
//!    response, so a client that has its answer also sees the charge. An answer that
//!    produced nothing (no output tokens; an error or an empty answer) is not charged
//!    when the configuration waives it (the default): what the provider billed is
//!    written off, visibly ([`RequestRecord::waived`](solrouter_ledger::RequestRecord::waived)).
//!
//! Stages 6–8 run as [`detached`] work: once money is held, the hold must end in a
//! settle or a release even if the client disconnects and its connection is dropped
//! (the work then goes on in a task of its own).
//!
//! An endpoint that is no chat (embeddings, `embeddings.rs`) takes the stages it shares
//! rather than copying them: [`accept`] (1–3), [`route_by`] (5), [`hold`] (6),
//! [`detached`], [`first_answer`] (7, with the circuit
//! breakers and fallback, `attempt.rs`) and [`HoldGuard`] (8, `hold.rs`).

use crate::app::App;
use crate::attempt::{attempt, first_answer, Answer};
use crate::bank::{now_ms, Caller, HOLD_GRACE};
use crate::body::UnreadBody;
use crate::catalog::{Catalog, Model};
use crate::codec::Codec;
use crate::context::{Reply, RequestContext};
use crate::error::ApiError;
use crate::health::Health;
use crate::hold::{waives, HoldGuard};
use crate::parse::ParsedChat;
use crate::providers::{ChatRequest, Completion, Providers};
use crate::relay;
use crate::respond::{self, Response};
use crate::routing::{self, Candidate, Preferences};
use crate::tokens::{self, Delivered};
use bytes::Bytes;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use solrouter_ledger::{signed_usd, HoldId, PicoUsd, RateLimit, Rejection, Reply as LedgerReply};
use std::future::Future;
use tokio::sync::oneshot;
use tokio::time::{Duration, Instant};

/// A completion in the API `codec` speaks: `POST /v1/api/chat/completions`,
/// `POST /v1/api/responses` and `POST /v1/messages`. Errors are the caller's to render in the codec's shape.
pub async fn handle(
    app: &'static App,
    codec: &'static dyn Codec,
    request: Request<Incoming>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    // Boxed, as the stages after it: the request waits for its answer in this future,
    // which need not keep room for the authentication's state meanwhile.
    let (head, caller, body) = Box::pin(accept(app, request)).await?;
    let parsed = codec.parse(&body, &head.headers)?;
    // Dropped before the first wait: the head's URI and header values are slices of the
    // connection's read buffer, which stays allocated (8 KiB) for as long as they live.
    drop((head, body));
    let created_ms = now_ms();
    let generation = crate::keys::fresh_hold(created_ms);
    let candidates =
        route(&app.catalog, &app.providers, &app.health, &parsed, generation.0 as u64)?;
    let (parsed, candidates) = refuse_over_context(parsed, candidates).await?;
    let context = RequestContext {
        codec,
        generation,
        caller,
        chat: parsed.chat,
        candidates,
        prompt_tokens_max: parsed.prompt_tokens_max,
        started,
        created_ms,
        echo: parsed.echo,
        deadline: started + app.upstream.timeouts().total,
    };
    detached(move |reply| async move {
        // Boxed (as the stages in `forward`): a detached task's future is allocated once,
        // at the size of its largest state, for the task's whole life, which for a
        // stream is the stream's; boxed, a stage's state is held only while it runs
        // (docs/benchmarks.md, "Memory per stream").
        match Box::pin(reserve(app, &context)).await {
            Ok(hold) => forward(app, &context, hold, reply).await,
            Err(error) => {
                let _ = reply.send(Err(error));
            }
        }
    })
    .await
}

/// Stages 1–3 of every endpoint: the declared length, the caller's key (before the body
/// is read), then the body, under the limit and a deadline.
pub async fn accept(
    app: &'static App,
    request: Request<Incoming>,
) -> Result<(http::request::Parts, Caller, Bytes), ApiError> {
    let limit = app.config.body_bytes_max();
    let (head, body) = request.into_parts();
    let body = UnreadBody::new(&head.headers, body, limit)?;
    let caller = app.bank.authenticate(&head.headers).await?;
    let body = body.read(limit).await?;
    Ok((head, caller, body))
}

/// Runs the stages that hold money (reserve to settle) so that a client that hangs up
/// (which drops the calling future) cannot cut them short between a reserve and its
/// settle or release: `work` runs in the caller's task until it answers through
/// `reply`; whatever it still has to do then (a stream's relay and settle), or when the
/// caller is dropped first, goes on in a task of its own. A plain answer, settled
/// before it is sent, so spawns nothing; nor does a stream that arrived whole
/// (`relay::Head`).
pub async fn detached<Work, Running>(work: Work) -> Result<Response, ApiError>
where
    Work: FnOnce(Reply) -> Running,
    Running: Future<Output = ()> + Send + 'static,
{
    let (reply, mut replied) = oneshot::channel();
    let running: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(work(reply));
    let mut running = Detached(Some(running));
    let answer = std::future::poll_fn(|context| {
        if let Some(work) = running.0.as_mut() {
            if work.as_mut().poll(context).is_ready() {
                running.0 = None;
            }
        }
        // Ready once the work answered, or ended without an answer (`reply` dropped).
        std::pin::Pin::new(&mut replied).poll(context)
    })
    .await;
    drop(running);
    answer.unwrap_or_else(|_| Err(ApiError::internal("the request's task ended without an answer")))
}

/// Work that must run to its end: dropped unfinished (answered, or its caller gone), it
/// is spawned to finish on its own.
struct Detached(Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>);

impl Drop for Detached {
    fn drop(&mut self) {
        if let Some(work) = self.0.take() {
            // Without a runtime (the process is exiting) nothing can run it; a hold it
            // kept then expires on its own.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(work);
            }
        }
    }
}

/// Stage 5 of a chat: the endpoints that can serve this request, in the order to try
/// them (see [`route_by`]); `seed` draws the default routing's choice.
pub fn route<'c>(
    catalog: &'c Catalog,
    providers: &Providers,
    health: &Health,
    parsed: &ParsedChat,
    seed: u64,
) -> Result<Vec<&'c Model>, ApiError> {
    let prompt_tokens = |model: &Model| {
        prompt_tokens_bound(providers, &parsed.chat, parsed.prompt_tokens_max, model)
    };
    let asked = Asked {
        preferences: &parsed.routing,
        parameters: &parsed.parameters,
        prompt_tokens: &prompt_tokens,
        seed,
    };
    route_by(catalog, providers, health, &parsed.model_ids, &asked, |id, model| {
        let native = providers
            .get(&model.provider)
            .is_some_and(|(adapter, _)| parsed.chat.native_for(adapter).is_some());
        let unsupported = [
            (parsed.wants_tools && !model.capabilities.tools, "tools"),
            (parsed.wants_images && !model.capabilities.images, "messages"),
            (
                parsed.wants_structured_output && !model.capabilities.structured_output,
                "response_format",
            ),
        ];
        if model.embedding.is_some() {
            let message = format!("`{id}` is an embedding model: use POST /v1/api/embeddings");
            Some(ApiError::invalid_param("model", message))
        } else if let Some((_, param)) = unsupported.iter().find(|(missing, _)| *missing) {
            Some(ApiError::invalid_param(
                param,
                format!("model `{id}` does not support this input"),
            ))
        } else if let Some(error) = providers
            .get(&model.provider)
            .and_then(|(adapter, _)| adapter.check(&parsed.chat, model.controls).err())
        {
            Some(ApiError::invalid_param(&error.param, format!("model `{id}`: {}", error.message)))
        } else {
            parsed.native_only.as_ref().filter(|_| !native).cloned()
        }
    })
}

/// What a request asks of routing besides its models.
pub struct Asked<'a> {
    /// The `provider` object.
    pub preferences: &'a Preferences,
    /// The parameters the request sets.
    pub parameters: &'a [&'static str],
    /// The most prompt tokens the request can be billed at an endpoint (what its hold
    /// covers there): the price tier `provider.max_price` compares.
    pub prompt_tokens: &'a dyn Fn(&Model) -> u64,
    /// Draws the default routing's weighted choice (the request's id).
    pub seed: u64,
}

/// Stage 5 of every endpoint: the endpoints of the models `ids` names (a `:nitro` or
/// `:floor` suffix sorts one model's), less those `refusal` gives a reason to skip and
/// those whose host is not configured, in the order `routing::plan` gives them. An
/// unknown id is a 404 (the client named it); when no endpoint is left, the first
/// reason to skip is the answer, or the `provider` field that left none (a 400).
pub fn route_by<'c>(
    catalog: &'c Catalog,
    providers: &Providers,
    health: &Health,
    ids: &[String],
    asked: &Asked<'_>,
    refusal: impl Fn(&str, &'c Model) -> Option<ApiError>,
) -> Result<Vec<&'c Model>, ApiError> {
    let mut candidates: Vec<Candidate<'_, 'c>> = Vec::with_capacity(ids.len());
    let mut first_skip = None;
    for id in ids {
        let (base, sort) = routing::split_variant(id);
        let endpoints = catalog.endpoints(base).ok_or_else(|| ApiError::model_not_found(id))?;
        let mut candidate = Candidate { id, endpoints: Vec::new(), sort };
        for model in endpoints {
            let skip = refusal(id, model).or_else(|| {
                (!providers.enabled(&model.provider)).then(|| {
                    let message =
                        format!("provider `{}` of model `{id}` is not configured", model.provider);
                    ApiError::unavailable(message)
                })
            });
            match skip {
                Some(error) => {
                    first_skip.get_or_insert(error);
                }
                None => candidate.endpoints.push(model),
            }
        }
        candidates.push(candidate);
    }
    match first_skip {
        Some(error) if candidates.iter().all(|candidate| candidate.endpoints.is_empty()) => {
            Err(error)
        }
        _ => {
            let supports = |endpoint: &Model| {
                providers.get(&endpoint.provider).is_some_and(|(adapter, _)| {
                    let taken = endpoint.supported_parameters(adapter.parameters());
                    asked.parameters.iter().all(|parameter| taken.contains(parameter))
                })
            };
            let live = |endpoint: &Model| health.view(endpoint);
            let facts = routing::Facts { supports, live, prompt_tokens: asked.prompt_tokens };
            routing::plan(&candidates, asked.preferences, facts, asked.seed)
        }
    }
}

/// Stage 5, last step: drops the candidates whose context the prompt certainly exceeds,
/// by a lower bound of its tokens in each one's tokenizer. Counting only happens when
/// the prompt's byte bound passes a context (a large body), and off the async workers.
/// If no candidate is left, a 400 naming `messages`.
async fn refuse_over_context(
    parsed: ParsedChat,
    candidates: Vec<&'static Model>,
) -> Result<(ParsedChat, Vec<&'static Model>), ApiError> {
    if candidates.iter().all(|model| parsed.prompt_tokens_max <= model.context_length) {
        return Ok((parsed, candidates));
    }
    let filtering = tokio::task::spawn_blocking(move || {
        let mut counted: Vec<(crate::catalog::Tokenizer, u64)> = Vec::new();
        let mut first_refusal = None;
        let mut kept = Vec::with_capacity(candidates.len());
        for model in candidates {
            let tokenizer = model.tokenizer();
            let tokens = match counted.iter().find(|(seen, _)| *seen == tokenizer) {
                Some((_, tokens)) => *tokens,
                None => {
                    let tokens = tokens::prompt_tokens_min(model, parsed.chat.body.tree());
                    counted.push((tokenizer, tokens));
                    tokens
                }
            };
            if tokens > model.context_length {
                first_refusal.get_or_insert(ApiError::invalid_param(
                    "messages",
                    format!(
                        "the prompt has at least {tokens} tokens, more than the {} tokens of \
                         context of `{}`",
                        model.context_length, model.id
                    ),
                ));
            } else {
                kept.push(model);
            }
        }
        match first_refusal {
            Some(error) if kept.is_empty() => Err(error),
            _ => Ok((parsed, kept)),
        }
    });
    filtering.await.map_err(|error| ApiError::internal(format!("counting tokens: {error}")))?
}

/// The most a request can cost at `model`: its prompt bound there
/// ([`prompt_tokens_bound`]) and the completion limit forwarded to it, at the price tier
/// the prompt can reach.
fn worst_case(app: &'static App, context: &RequestContext, model: &Model) -> (u64, u64, PicoUsd) {
    let prompt_tokens =
        prompt_tokens_bound(&app.providers, &context.chat, context.prompt_tokens_max, model);
    let completion_tokens = context.target(model).max_tokens;
    (prompt_tokens, completion_tokens, model.bound(prompt_tokens, completion_tokens))
}

/// The most prompt tokens `chat` can be billed at `model`: its bound plus what the
/// provider adds to it, capped at the context (a longer prompt is refused upstream for
/// free). What the hold covers, and the tier `provider.max_price` compares.
fn prompt_tokens_bound(
    providers: &Providers,
    chat: &ChatRequest,
    prompt_tokens_max: u64,
    model: &Model,
) -> u64 {
    let overhead = providers
        .get(&model.provider)
        .map_or(0, |(adapter, _)| adapter.prompt_overhead_tokens(chat));
    prompt_tokens_max.saturating_add(overhead).min(model.context_length)
}

/// Stage 6: holds the worst case of the dearest candidate, so any fallback is covered.
async fn reserve(app: &'static App, context: &RequestContext) -> Result<HoldGuard, ApiError> {
    let (model, (prompt_tokens, completion_tokens, amount)) = context
        .candidates
        .iter()
        .map(|model| (*model, worst_case(app, context, model)))
        .max_by_key(|(_, (_, _, amount))| *amount)
        .ok_or_else(|| ApiError::internal("routing left no candidate"))?;
    let worst = WorstCase {
        model,
        amount,
        covers: Covers::Chat { prompt_tokens, completion_tokens },
        remedy: "Lower `max_tokens` or add credits.",
    };
    hold(app, context.caller, context.generation, worst).await
}

/// What a request may cost at most, at its dearest candidate: the amount held.
pub struct WorstCase<'a> {
    pub model: &'a Model,
    pub amount: PicoUsd,
    /// The tokens the amount covers, for a client refused for want of credit.
    pub covers: Covers,
    /// What such a client can do.
    pub remedy: &'static str,
}

/// The tokens a hold covers, written out only for a client refused for want of credit.
pub enum Covers {
    Chat { prompt_tokens: u64, completion_tokens: u64 },
    Input { tokens: u64 },
}

impl std::fmt::Display for Covers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Covers::Chat { prompt_tokens, completion_tokens } => {
                write!(f, "{prompt_tokens} prompt + {completion_tokens} completion tokens")
            }
            Covers::Input { tokens } => write!(f, "{tokens} input tokens"),
        }
    }
}

/// Stage 6 of every endpoint: reserves `worst.amount` under the hold `generation`,
/// before anything can cost the operator, and yields the guard that ends it; a 402 when
/// the balance cannot cover it.
pub async fn hold(
    app: &'static App,
    caller: Caller,
    generation: HoldId,
    worst: WorstCase<'_>,
) -> Result<HoldGuard, ApiError> {
    let WorstCase { model, amount, covers, remedy } = worst;
    let ttl = app.upstream.timeouts().total + HOLD_GRACE;
    let outcome = app.bank.reserve(caller, generation, amount, ttl).await?;
    match outcome {
        Ok(LedgerReply::Reserved { reserved_at_ms, .. }) => {
            Ok(HoldGuard::new(app, caller, generation, reserved_at_ms))
        }
        Ok(reply) => Err(ApiError::internal(format!("reserve answered {reply:?}"))),
        Err(Rejection::InsufficientFunds { available }) => {
            let affordable = affordable_tokens(available, model.price_per_token_max());
            Err(ApiError::insufficient_credits(format!(
                "insufficient credits: the available balance of ${} affords about {affordable} \
                 tokens of `{}` (up to ${} per token); this request may use up to {covers} \
                 (${amount}). {remedy}",
                signed_usd(available),
                model.id,
                crate::catalog::Price::per_token_usd(model.price_per_token_max()),
            )))
        }
        Err(Rejection::KeyRevoked | Rejection::UnknownKey) => {
            Err(ApiError::unauthorized("API key has been revoked"))
        }
        Err(Rejection::KeyDisabled) => Err(ApiError::unauthorized("API key is disabled")),
        Err(Rejection::ManagementKey) => {
            Err(ApiError::forbidden("a management key cannot make requests"))
        }
        Err(Rejection::KeySpendLimit { limit, spent, resets_at_ms }) => {
            let period = limit.reset.name().map_or(String::new(), |name| format!(" ({name})"));
            let resets = resets_at_ms.map_or("it does not reset".to_string(), |at| {
                format!("it resets at {}", crate::api::utc_rfc3339(at))
            });
            Err(ApiError::key_limit(format!(
                "this key's spend limit of ${}{period} is reached: ${spent} spent or held, and                  this request may cost up to ${amount}; {resets}. The account's credit is                  not the limit: raise the key's limit or use another key.",
                limit.amount
            )))
        }
        Err(Rejection::KeyRateLimited { limit, retry_after_ms }) => {
            let what = match limit {
                RateLimit::RequestsPerMinute(n) => format!("{n} requests per minute"),
                RateLimit::TokensPerMinute(n) => format!("{n} tokens per minute"),
            };
            let retry_after = Duration::from_millis(retry_after_ms);
            let message = format!(
                "this key's rate limit of {what} is reached; retry in {} s",
                retry_after_ms.div_ceil(1000)
            );
            Err(ApiError::rate_limited(message, retry_after))
        }
        Err(rejection) => Err(ApiError::ledger("reserve", rejection)),
    }
}

/// Tokens `available` pays for at the model's dearest per-token price.
fn affordable_tokens(available: i128, per_token_max: PicoUsd) -> u128 {
    let per_token = per_token_max.0.max(1);
    u128::try_from(available).map_or(0, |available| available / per_token)
}

/// Stages 7–8: the first candidate that answers gets relayed and settled.
///
/// Takes the context and the stream by reference and in their box: an async fn keeps
/// each argument it owns twice in its state (as passed and as moved in), and a stream's
/// state lives as long as the stream (`-Zprint-type-sizes`: `handle`'s detached work took
/// 3,584 bytes a request with both by value, 2,112 now).
async fn forward(app: &'static App, context: &RequestContext, hold: HoldGuard, reply: Reply) {
    // Boxed, as `reserve` in `handle`: only the relay stays for the stream's life.
    let answering =
        Box::pin(first_answer(app, &context.candidates, |model| attempt(app, context, model)));
    match answering.await {
        Ok((model, Answer::Complete(completion, native))) => {
            Box::pin(respond_complete(app, context, model, completion, native, hold, reply)).await
        }
        Ok((model, Answer::Stream(stream))) => {
            relay::run(app, context, model, stream, hold, reply).await
        }
        Err(error) => {
            hold.release().await;
            let _ = reply.send(Err(error));
        }
    }
}

async fn respond_complete(
    app: &'static App,
    context: &RequestContext,
    model: &'static Model,
    completion: Completion,
    native: Option<Bytes>,
    hold: HoldGuard,
    reply: Reply,
) {
    let answered_at = Instant::now();
    let mut delivered = Delivered::default();
    delivered.push_choices(&completion.choices);
    let empty = delivered.is_empty();
    let mut completion = completion;
    let billed = context.bill(model, completion.usage, true, delivered).await;
    completion.usage = billed.usage;
    let waived = waives(app, &billed, false, empty);
    let cost = model.cost(&billed.usage);
    let record =
        context.record(model, &billed, StatusCode::OK, waived, (!empty).then_some(answered_at));
    let cost = hold.settle(cost, record).await;
    let id = context.id();
    let answer = context.answer(&id, model);
    let body = context.codec.completion(&answer, completion, native.as_deref(), cost);
    let _ = reply.send(Ok(respond::text(StatusCode::OK, body, "application/json")));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    #[test]
    fn affordable_tokens_at_a_per_token_price() {
        let check = |available: i128, per_token: u128, expected: u128| {
            assert_eq!(affordable_tokens(available, PicoUsd(per_token)), expected, "{available}");
        };
        check(1_000_000_000, 2_000_000, 500);
        check(1_999_999, 2_000_000, 0);
        check(-5, 1, 0);
        check(7, 0, 7);
    }

    #[test]
    fn a_refused_client_reads_what_its_hold_covers() {
        let chat = Covers::Chat { prompt_tokens: 12, completion_tokens: 4096 };
        assert_eq!(chat.to_string(), "12 prompt + 4096 completion tokens");
        assert_eq!(Covers::Input { tokens: 7 }.to_string(), "7 input tokens");
    }

    #[tokio::test]
    async fn candidates_the_prompt_certainly_overflows_are_dropped() {
        let catalog: &'static Catalog = Box::leak(Box::new(Catalog::builtin()));
        let model = |id: &str| catalog.get(id).expect("catalogued");
        let chat = |words: usize| {
            let body = serde_json::json!({"model": "mock/echo",
                "messages": [{"role": "user", "content": "word ".repeat(words)}]});
            crate::parse::parse(&body.to_string().into()).expect("valid")
        };
        let ids = |kept: &[&Model]| kept.iter().map(|model| model.id.clone()).collect::<Vec<_>>();
        let both = || vec![model("mock/echo"), model("openai/gpt-4.1")];
        // Short: nothing is counted, both stay.
        let (_, kept) = refuse_over_context(chat(10), both()).await.expect("fits");
        assert_eq!(ids(&kept), ["mock/echo", "openai/gpt-4.1"]);
        // 40,000 words: over the mock's 32,768 words, within gpt-4.1's million tokens.
        let (_, kept) = refuse_over_context(chat(40_000), both()).await.expect("one fits");
        assert_eq!(ids(&kept), ["openai/gpt-4.1"]);
        let error = refuse_over_context(chat(40_000), vec![model("mock/echo")])
            .await
            .expect_err("none fits");
        assert_eq!(error.to_json()["error"]["param"], "messages");
    }
}
