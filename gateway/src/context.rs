//! [`RequestContext`]: everything the stages of one completion learn about it, passed from
//! stage to stage, and what its record, its answer's names and its bill are made of.

use crate::bank::Caller;
use crate::catalog::Model;
use crate::codec::{Answered, Codec};
use crate::error::ApiError;
use crate::providers::{ChatRequest, Target, Usage};
use crate::respond::Response;
use crate::tokens::{self, Billed, Delivered};
use crate::wire;
use http::StatusCode;
use serde_json::Value;
use solrouter_ledger::{HoldId, RequestRecord};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Where a detached task sends the client its answer.
pub type Reply = oneshot::Sender<Result<Response, ApiError>>;

/// Everything the stages learn about one request, passed from stage to stage.
pub struct RequestContext {
    /// The API the client speaks.
    pub codec: &'static dyn Codec,
    /// The hold paying for the request, also its public id (`gen-…`).
    pub generation: HoldId,
    pub caller: Caller,
    pub chat: ChatRequest,
    /// Endpoints to try, in order; each one's host is configured.
    pub candidates: Vec<&'static Model>,
    pub prompt_tokens_max: u64,
    pub started: Instant,
    pub created_ms: u64,
    /// The codec's value carried from the request to the answer ([`ParsedChat::echo`](crate::parse::ParsedChat::echo)).
    pub echo: Value,
    /// When the whole upstream exchange, fallbacks included, must be over.
    pub deadline: Instant,
}

impl RequestContext {
    /// The record the settle stores: what the request used, cost and how it ended;
    /// `waived`: the customer is not charged ([`waives`](crate::hold::waives)); `first_output`: when the first
    /// output arrived from upstream (a stream's first event, a plain answer whole), if
    /// any did.
    pub fn record(
        &self,
        model: &Model,
        billed: &Billed,
        status: StatusCode,
        waived: bool,
        first_output: Option<Instant>,
    ) -> RequestRecord {
        let usage = &billed.usage;
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
            usage_estimated: billed.estimated,
            usage_clamped: billed.clamped,
            waived,
            ttft_ms: first_output
                .map(|at| at.saturating_duration_since(self.started).as_millis() as u64),
            ..RequestRecord::default()
        }
    }

    pub fn id(&self) -> String {
        wire::generation_id(self.generation)
    }

    pub fn created_s(&self) -> u64 {
        self.created_ms / 1000
    }

    /// What an answer of `model` names, in any API.
    pub fn answer<'a>(&'a self, id: &'a str, model: &'a Model) -> Answered<'a> {
        Answered { id, created_s: self.created_s(), model, echo: &self.echo }
    }

    /// What one attempt at `model` asks for: the completion limit the client set,
    /// capped at the model's output limit, or that limit when the client set none. The
    /// reservation covers it, and it is exactly what is forwarded.
    pub fn target<'m>(&self, model: &'m Model) -> Target<'m> {
        let max_tokens = self
            .chat
            .max_tokens
            .map_or(model.max_output_tokens, |tokens| tokens.min(model.max_output_tokens));
        Target { upstream_model: &model.upstream_model, max_tokens, controls: model.controls }
    }

    /// Decides what to bill for an answer of `model` (`tokens::billed`): the provider's
    /// usage when it is whole and sane, else a count of the prompt and of what the
    /// client received, done off the async workers.
    pub async fn bill(
        &self,
        model: &'static Model,
        reported: Usage,
        complete: bool,
        delivered: Delivered,
    ) -> Billed {
        let delivered_min = delivered.tokens_min();
        if let Some(billed) = tokens::as_reported(model, reported, complete, delivered_min) {
            return billed;
        }
        let body = self.chat.body.clone();
        let counting = tokio::task::spawn_blocking(move || {
            tokens::billed(model, reported, complete, delivered_min, || Usage {
                prompt_tokens: tokens::prompt_tokens_estimate(model, body.tree()),
                completion_tokens: delivered.tokens(model.tokenizer()),
                ..Usage::default()
            })
        });
        let billed = match counting.await {
            Ok(billed) => billed,
            // Counting never panics on any text; if it did, bill what was reported.
            Err(error) => {
                tracing::error!(%error, "counting tokens failed");
                Billed { usage: reported, estimated: true, clamped: false }
            }
        };
        // Counted once the settle is applied (`bank.rs`); logged here with what was seen.
        if billed.estimated {
            tracing::warn!(model = %model.id, ?reported, ?billed, "usage incomplete; estimated");
        }
        if billed.clamped {
            tracing::warn!(model = %model.id, ?reported, "usage beyond the model's limits");
        }
        billed
    }
}
