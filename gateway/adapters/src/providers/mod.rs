//! Provider adapters: each translates between the OpenAI Chat Completions wire format
//! (what clients speak) and one provider's wire format (what upstream speaks).
//!
//! An adapter is pure translation: it builds the upstream HTTP request, translates a
//! complete response body, translates a byte stream incrementally, and classifies errors.
//! It never performs I/O, never touches money and never sees the ledger: the request
//! pipeline does the sending, the pricing and the settling.
//!
//! A client that speaks a provider's own format (Anthropic Messages, through
//! `/v1/messages`) reaches that provider's adapter with the request as it sent it
//! ([`ChatRequest::native`]): the adapter forwards it untranslated ([`Adapter::native_format`]),
//! and the pipeline relays the provider's answer as it came, beside the translated view it
//! bills from.

pub mod anthropic;
mod assemble;
mod choice;
pub mod cohere;
pub mod embed;
mod errors;
mod event;
pub mod google;
pub mod openai;
mod registry;
mod translate;

/// Largest error body read from a failing upstream; error messages are short, and the
/// adapter truncates what it quotes anyway.
pub const ERROR_BYTES_MAX: usize = 64 << 10;

pub use choice::{write_choices, Choice, Function, Loose, Message, ToolCall};
pub use embed::{EmbedRequest, EmbedTarget, Embedder, Embeddings, Encoding, Input};
pub use registry::{host_names, is_mock, Providers, MOCK_PROVIDER, MOCK_SLOW_PROVIDER};

use crate::controls::Controls;
use crate::json_text::{Layout, Object};
use crate::sse::SseEvent;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};
use std::sync::OnceLock;
use std::time::Duration;

/// A validated OpenAI chat-completions request. `body` is the client's JSON object as
/// received (unknown fields kept, so OpenAI-compatible upstreams get them unmodified);
/// the typed fields are the ones the gateway itself acts on.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub body: ChatBody,
    pub stream: bool,
    /// `max_completion_tokens`, else `max_tokens`, if the client set one. Only the
    /// pipeline reads it; adapters forward [`Target::max_tokens`].
    pub max_tokens: Option<u64>,
    /// The request as the client sent it, when it spoke a provider's own format: `body`
    /// is then its translation, for every adapter but that provider's.
    pub native: Option<Native>,
}

/// A chat request's JSON object as text, as a tree, or both: each is made from the other
/// the first time it is asked for. A Chat Completions request arrives as text and, on
/// the OpenAI-compatible path, leaves as text with a few members spliced in
/// (`json_text.rs`): its tree is only built for an adapter that translates it, or to
/// count its tokens. A request translated from another API is built as a tree.
#[derive(Debug, Clone)]
pub struct ChatBody {
    text: OnceLock<Bytes>,
    tree: OnceLock<Map<String, Value>>,
    /// Where the members lie in `text`, when the reader that checked it left that.
    layout: Option<Layout>,
}

impl ChatBody {
    /// `text` must hold one JSON object (checked by `parse.rs` before).
    pub fn from_text(text: Bytes) -> ChatBody {
        ChatBody { text: OnceLock::from(text), tree: OnceLock::new(), layout: None }
    }

    /// `text` read as `object` (whose layout is kept, so it is not scanned again).
    pub fn from_read(text: Bytes, object: &Object) -> ChatBody {
        ChatBody { layout: Some(object.layout()), ..ChatBody::from_text(text) }
    }

    pub fn from_tree(tree: Map<String, Value>) -> ChatBody {
        ChatBody { text: OnceLock::new(), tree: OnceLock::from(tree), layout: None }
    }

    /// Both, when the caller has both.
    pub fn from_both(text: Bytes, tree: Map<String, Value>) -> ChatBody {
        ChatBody { text: OnceLock::from(text), tree: OnceLock::from(tree), layout: None }
    }

    /// The object as text, read again only if its first reader left no layout.
    pub fn object(&self) -> Result<Object<'_>, String> {
        let text = std::str::from_utf8(self.text()).map_err(|error| error.to_string())?;
        match self.layout.as_ref().and_then(|layout| Object::with_layout(text, layout)) {
            Some(object) => Ok(object),
            None => Object::parse(text).map_err(|error| error.to_string()),
        }
    }

    /// The object as JSON text (UTF-8).
    pub fn text(&self) -> &Bytes {
        self.text.get_or_init(|| {
            // Serializing a map of JSON values into a `Vec` cannot fail.
            let tree = self.tree.get().map(serde_json::to_vec).and_then(Result::ok);
            Bytes::from(tree.unwrap_or_else(|| b"{}".to_vec()))
        })
    }

    /// The object as a tree.
    pub fn tree(&self) -> &Map<String, Value> {
        self.tree.get_or_init(|| {
            // The text was read as an object when it arrived.
            let text = self.text.get().map(|text| serde_json::from_slice(text));
            text.and_then(Result::ok).unwrap_or_default()
        })
    }
}

/// A provider's own wire format, spoken by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeFormat {
    AnthropicMessages,
}

/// A request in a provider's own format, as the client sent it (the gateway's own
/// fields removed).
#[derive(Debug, Clone)]
pub struct Native {
    pub format: NativeFormat,
    pub body: Map<String, Value>,
    /// Provider headers the client set that change what the provider does (Anthropic's
    /// `anthropic-beta`), forwarded with the native body.
    pub headers: HeaderMap,
}

impl ChatRequest {
    /// The client's own request when `adapter` speaks its format: forwarded as is.
    pub fn native_for(&self, adapter: &dyn Adapter) -> Option<&Native> {
        self.native.as_ref().filter(|native| adapter.native_format() == Some(native.format))
    }
}

/// Tokens by kind, normalised across providers' token semantics:
/// `completion_tokens` includes `reasoning_tokens` (OpenAI's convention; adapters for
/// providers that count reasoning separately, such as xAI, add it in), and
/// `prompt_tokens` includes `cached_read_tokens` and `cached_write_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub reasoning_tokens: u64,
    pub cached_read_tokens: u64,
    pub cached_write_tokens: u64,
}

/// What one attempt asks of the upstream model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// The provider's own name for the model.
    pub upstream_model: &'a str,
    /// The completion limit to forward: the client's (capped at the model's output
    /// limit), or the model's output limit when the client set none. The reservation
    /// covers exactly this many completion tokens.
    pub max_tokens: u64,
    /// The parameters the model takes in what form (the catalogue's `controls`).
    pub controls: Controls,
}

/// Where and what to send upstream.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub url: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Where a provider lives and how to authenticate, from configuration/environment.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// What the provider's own SDK takes as base URL, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    pub api_key: Option<String>,
}

/// A complete, translated non-streaming response.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The OpenAI `choices` array.
    pub choices: Vec<Choice>,
    pub usage: Usage,
    /// Extra top-level fields to pass on (e.g. Perplexity's `citations`).
    pub extra: Map<String, Value>,
}

/// One translated stream chunk: an OpenAI `chat.completion.chunk` minus the envelope
/// (`id`, `object`, `created`, `model`), which the pipeline adds.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub choices: Vec<Choice>,
    pub extra: Map<String, Value>,
}

/// A request parameter the provider cannot honour, or a malformed one: becomes a 400
/// that names `param`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid parameter `{param}`: {message}")]
pub struct ParamError {
    pub param: String,
    pub message: String,
}

/// An upstream failure, classified for the client (status) and for routing (whether
/// trying the next candidate may help).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upstream {provider}: {message}")]
pub struct UpstreamError {
    pub provider: String,
    /// The status to answer the client with (OpenAI-style: 400, 401, 402, 403, 404, 408,
    /// 413, 429, 502, 503, 504).
    pub status: StatusCode,
    pub message: String,
    /// True when another provider/model may succeed (outage, overload, rate limit).
    pub fallback: bool,
    pub retry_after: Option<Duration>,
}

/// Incremental translation of one upstream stream. Implementations must accept
/// arbitrary chunk boundaries (a byte slice may end mid-line or mid-UTF-8 character)
/// and must never panic on malformed input.
pub trait StreamTranslator: Send {
    /// Feeds raw upstream bytes; appends translated chunks to `out`.
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<Chunk>) -> Result<(), UpstreamError>;
    /// The upstream closed the stream; flush what is buffered. An error here means the
    /// stream ended before the provider said it was complete.
    fn finish(&mut self, out: &mut Vec<Chunk>) -> Result<(), UpstreamError>;
    /// Usage seen so far (cumulative).
    fn usage(&self) -> Usage;
    /// The provider's own events read since the last call, appended to `out`, when the
    /// client speaks the provider's format (`ChatRequest::native_for`) and is sent them as
    /// they came: the translation's SSE parse is the relay's too. None otherwise.
    fn take_events(&mut self, _out: &mut Vec<SseEvent>) {}
}

/// The chat request parameters an OpenAI-compatible upstream receives as the client
/// sent them (the adapter passes the body through).
pub const PARAMETERS_PASSED_THROUGH: [&str; 16] = [
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "structured_outputs",
    "reasoning_effort",
];

/// One provider wire format.
pub trait Adapter: Send + Sync + 'static {
    /// The provider's name as used in model ids (`openai`, `anthropic`, …).
    fn provider(&self) -> &str;
    /// The chat request parameters this adapter passes on to its provider, translated
    /// or not, by their OpenRouter names (`structured_outputs`: `response_format` with a
    /// JSON schema); `/models` lists them as `supported_parameters`, less those of
    /// capabilities a model lacks.
    fn parameters(&self) -> &'static [&'static str] {
        &PARAMETERS_PASSED_THROUGH
    }
    /// The client format this adapter forwards untranslated (see [`ChatRequest::native`]).
    fn native_format(&self) -> Option<NativeFormat> {
        None
    }
    /// Builds the upstream request for `target`. The completion limit is sent in the one
    /// field the provider honours, whatever the client's body says: it is what the
    /// pipeline reserved for.
    fn request(
        &self,
        endpoint: &Endpoint,
        chat: &ChatRequest,
        target: &Target,
    ) -> Result<UpstreamRequest, ParamError>;
    /// Refuses what a model with `controls` would refuse of `chat` (400 naming the
    /// parameter), so routing skips the model before anything is reserved; `request`
    /// refuses the same. Only adapters of models with non-default controls check.
    fn check(&self, _chat: &ChatRequest, _controls: Controls) -> Result<(), ParamError> {
        Ok(())
    }
    /// Prompt tokens the provider adds to every request like `chat` beyond its text
    /// (e.g. a tool-use system prompt), so the reservation covers them.
    fn prompt_overhead_tokens(&self, _chat: &ChatRequest) -> u64 {
        0
    }
    /// A request for the provider's own count of `chat`'s prompt tokens, answered
    /// `{"input_tokens": N}` (Anthropic's `count_tokens`), where it has one for `chat`.
    fn count_tokens_request(
        &self,
        _endpoint: &Endpoint,
        _chat: &ChatRequest,
        _upstream_model: &str,
    ) -> Option<UpstreamRequest> {
        None
    }
    /// Translates a complete 2xx response body to `chat` (the request it answers).
    fn response(&self, chat: &ChatRequest, body: &[u8]) -> Result<Completion, UpstreamError>;
    /// A translator for one streamed 2xx response to `chat`.
    fn stream(&self, chat: &ChatRequest) -> Box<dyn StreamTranslator>;
    /// Classifies a non-2xx response (of chat and embeddings requests alike).
    fn error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> UpstreamError;
    /// The provider's embeddings format, if it serves embedding models.
    fn embedder(&self) -> Option<&dyn Embedder> {
        None
    }
}

/// Any JSON whose strings and member names are `words` (for property tests of the
/// readers and writers of provider JSON).
#[cfg(test)]
pub(crate) fn json_of_words(
    words: &'static [&'static str],
) -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let word = proptest::sample::select(words);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        word.clone().prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((word.clone(), inner), 0..6).prop_map(|members| {
                Value::Object(members.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}
