//! The client-facing APIs the one pipeline serves, each through a codec: how its request
//! becomes the pipeline's (a validated [`ParsedChat`]: an OpenAI chat request plus the
//! routing fields), and how an answer, a stream and an error are written back in its
//! shape. Chat completions ([`CHAT`], `wire.rs`), Anthropic Messages
//! ([`crate::messages::MESSAGES`]) and OpenAI Responses
//! ([`crate::responses::RESPONSES`]) are the three today; adding an endpoint is adding a
//! codec and a route (ARCHITECTURE.md, "Adding an endpoint").

use crate::catalog::Model;
use crate::error::{ApiError, ErrorShape};
use crate::parse::{self, ParsedChat};
use crate::providers::{Chunk, Completion, Usage};
use crate::sse::SseEvent;
use crate::wire::{self, ChunkEncoder};
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use serde_json::Value;
use solrouter_ledger::PicoUsd;

/// Who answered: what every answer names.
pub struct Answered<'a> {
    /// `gen-…`: the hold that pays for the answer.
    pub id: &'a str,
    pub created_s: u64,
    pub model: &'a Model,
    /// The codec's own value from the request ([`ParsedChat::echo`]).
    pub echo: &'a Value,
}

/// One client-facing API.
pub trait Codec: Sync + 'static {
    /// The error format of this API, for every error of the request, streamed or not.
    fn errors(&self) -> ErrorShape;
    /// Validates the request: a 400 naming the parameter, in this API's terms.
    /// `body` is the request's body as it arrived (kept by reference where the request
    /// keeps it as text).
    fn parse(&self, body: &Bytes, headers: &HeaderMap) -> Result<ParsedChat, ApiError>;
    /// The whole answer. `completion.usage` is what was billed and `cost` what was
    /// charged; `native` is the provider's own body when it answered in this API's format
    /// (`ChatRequest::native`), to relay rather than rebuild.
    fn completion(
        &self,
        answer: &Answered,
        completion: Completion,
        native: Option<&[u8]>,
        cost: PicoUsd,
    ) -> Vec<u8>;
    /// The writer of one streamed answer; `native`: the provider streams in this API's
    /// format, and its events are relayed rather than rebuilt from the chunks.
    fn encoder(&self, answer: &Answered, native: bool) -> Box<dyn StreamEncoder>;
}

/// Writes one streamed answer as server-sent events.
pub trait StreamEncoder: Send {
    /// One translated chunk (every stream has them: they are also what is billed).
    fn chunk(&mut self, chunk: &Chunk, out: &mut BytesMut);
    /// One event of the provider's own stream, when it speaks the client's format.
    fn native(&mut self, _event: &SseEvent, _out: &mut BytesMut) {}
    /// The end of a complete stream, with the usage billed and the cost charged.
    fn finish(&mut self, usage: &Usage, cost: PicoUsd, out: &mut BytesMut);
    /// The end of a broken stream: the error, and what was charged for what was
    /// delivered.
    fn fail(&mut self, error: &ApiError, usage: &Usage, cost: PicoUsd, out: &mut BytesMut);
}

/// OpenAI Chat Completions, `POST /v1/api/chat/completions`.
pub struct Chat;

pub static CHAT: Chat = Chat;

impl Codec for Chat {
    fn errors(&self) -> ErrorShape {
        ErrorShape::OpenAi
    }

    fn parse(&self, body: &Bytes, _headers: &HeaderMap) -> Result<ParsedChat, ApiError> {
        parse::parse(body)
    }

    fn completion(
        &self,
        answer: &Answered,
        completion: Completion,
        _native: Option<&[u8]>,
        cost: PicoUsd,
    ) -> Vec<u8> {
        wire::completion(answer.id, answer.created_s, answer.model, completion, cost)
    }

    fn encoder(&self, answer: &Answered, _native: bool) -> Box<dyn StreamEncoder> {
        let model = answer.model;
        Box::new(ChunkEncoder::new(answer.id, answer.created_s, &model.id, &model.provider))
    }
}

/// Arbitrary JSON for the codecs' property tests: nested arrays and objects whose keys
/// and strings are drawn from `words` (an API's field names and values), so that the
/// generated requests and answers get past the first type checks.
#[cfg(test)]
pub(crate) fn arbitrary_json(
    words: &'static [&'static str],
) -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    use serde_json::Value;
    let word = proptest::sample::select(words);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        word.clone().prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((word.clone(), inner), 0..6).prop_map(|entries| {
                Value::Object(
                    entries.into_iter().map(|(key, value)| (key.to_owned(), value)).collect(),
                )
            }),
        ]
    })
}
