//! Response-side pieces shared by the adapters that build OpenAI responses from another
//! wire format (Anthropic, Gemini, Cohere): the assistant message, the citation list, and
//! `parallel_tool_calls: false` for providers without such a switch.

use super::{
    Choice, Chunk, Completion, Function, Loose, Message, StreamTranslator, ToolCall, UpstreamError,
    Usage,
};
use serde_json::{Map, Value};

/// A chunk of one choice (index 0): `delta` and the finish reason.
pub fn delta_chunk(delta: Message, finish_reason: Value) -> Chunk {
    let choice = Choice {
        delta: Some(Loose::Typed(Box::new(delta))),
        finish_reason: Some(finish_reason),
        index: Some(Value::from(0)),
        ..Choice::default()
    };
    Chunk { choices: vec![choice], extra: Map::new() }
}

/// A stream's first delta: the role, and empty content, as OpenAI streams begin.
pub fn role_delta() -> Message {
    Message {
        role: Some(Value::from("assistant")),
        content: Some(Value::from("")),
        ..Message::default()
    }
}

/// A delta of one member, `content` or `reasoning`.
pub fn content_delta(content: Value) -> Message {
    Message { content: Some(content), ..Message::default() }
}

pub fn reasoning_delta(reasoning: Value) -> Message {
    Message { reasoning: Some(reasoning), ..Message::default() }
}

/// A delta of tool calls.
pub fn tool_calls_delta(calls: Vec<ToolCall>) -> Message {
    let calls = calls.into_iter().map(Loose::Typed).collect();
    Message { tool_calls: Some(Loose::Typed(calls)), ..Message::default() }
}

/// A tool call with its stream `index` (`None`: a complete answer's, which has none): its
/// start, with `id` and function `name`, or (`start` none) more of its arguments.
pub fn tool_call(index: Option<u64>, start: Option<(Value, Value)>, arguments: Value) -> ToolCall {
    let (id, name, kind) = match start {
        Some((id, name)) => (Some(id), Some(name), Some(Value::from("function"))),
        None => (None, None, None),
    };
    let function = Function { arguments: Some(arguments), name, other: Map::new() };
    ToolCall {
        function: Some(Loose::Typed(function)),
        id,
        index: index.map(Value::from),
        kind,
        other: Map::new(),
    }
}

/// The OpenAI assistant message of a complete response. `content` is `null` only when
/// the answer is tool calls alone, as OpenAI sends it.
pub fn assistant_message(
    text: String,
    reasoning: String,
    tool_calls: Vec<Value>,
) -> Map<String, Value> {
    let mut assistant = Map::new();
    assistant.insert("role".to_owned(), Value::from("assistant"));
    let content =
        if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { Value::from(text) };
    assistant.insert("content".to_owned(), content);
    if !reasoning.is_empty() {
        assistant.insert("reasoning".to_owned(), Value::from(reasoning));
    }
    if !tool_calls.is_empty() {
        assistant.insert("tool_calls".to_owned(), Value::Array(tool_calls));
    }
    assistant
}

/// Cited sources as the top-level `citations` array of the Perplexity/OpenRouter
/// convention: in order of first appearance, each once.
#[derive(Default)]
pub struct Citations(Vec<Value>);

impl Citations {
    /// Adds one source; true if it was new.
    pub fn insert(&mut self, source: &str) -> bool {
        if self.0.iter().any(|known| known == source) {
            return false;
        }
        self.0.push(Value::from(source));
        true
    }

    /// The top-level fields that carry the sources: none while there are none.
    pub fn extra(&self) -> Map<String, Value> {
        let mut extra = Map::new();
        if !self.0.is_empty() {
            extra.insert("citations".to_owned(), Value::Array(self.0.clone()));
        }
        extra
    }
}

/// Whether the client asked for at most one tool call per answer
/// (`parallel_tool_calls: false`, LlamaIndex's default).
fn one_tool_call(body: &Map<String, Value>) -> bool {
    body.get("parallel_tool_calls") == Some(&Value::Bool(false))
}

/// `parallel_tool_calls: false` for a provider that has no such switch (Gemini, Cohere):
/// nothing is forwarded, and the answer keeps its first tool call only, which is what
/// the client asked for. The provider billed the tokens of every call it generated, so
/// the usage (and the cost) stays the provider's.
pub fn first_tool_call_only(body: &Map<String, Value>, mut completion: Completion) -> Completion {
    if one_tool_call(body) {
        for choice in &mut completion.choices {
            let message = choice.message.as_mut().and_then(Loose::typed_mut);
            if let Some(calls) = message.and_then(|message| message.tool_calls.as_mut()) {
                match calls {
                    Loose::Typed(calls) => calls.truncate(1),
                    Loose::Json(Value::Array(calls)) => calls.truncate(1),
                    Loose::Json(_) => {}
                }
            }
        }
    }
    completion
}

/// The streamed form of [`first_tool_call_only`]: the deltas of every tool call after the
/// first (by stream `index`) are dropped, and a chunk left with nothing to say with them.
pub fn stream_first_tool_call_only(
    body: &Map<String, Value>,
    inner: Box<dyn StreamTranslator>,
) -> Box<dyn StreamTranslator> {
    if one_tool_call(body) {
        Box::new(FirstToolCallOnly { inner, index: None, translated: Vec::new() })
    } else {
        inner
    }
}

struct FirstToolCallOnly {
    inner: Box<dyn StreamTranslator>,
    /// The stream index of the first tool call, once seen.
    index: Option<u64>,
    /// The inner translator's chunks, before filtering.
    translated: Vec<Chunk>,
}

impl FirstToolCallOnly {
    fn pass(&mut self, out: &mut Vec<Chunk>) {
        for mut chunk in self.translated.drain(..) {
            let mut said_something = !chunk.extra.is_empty();
            for choice in &mut chunk.choices {
                said_something |= choice.finish_reason.as_ref().is_some_and(|r| !r.is_null());
                let Some(delta) = choice.delta.as_mut().and_then(Loose::typed_mut) else {
                    said_something = true;
                    continue;
                };
                if let Some(Loose::Typed(calls)) = &mut delta.tool_calls {
                    calls.retain(|call| {
                        let index = call.typed().and_then(|call| call.index.as_ref());
                        let index = index.and_then(Value::as_u64).unwrap_or(0);
                        *self.index.get_or_insert(index) == index
                    });
                    if calls.is_empty() {
                        delta.tool_calls = None;
                    }
                }
                said_something |= !delta.is_empty();
            }
            if said_something {
                out.push(chunk);
            }
        }
    }
}

impl StreamTranslator for FirstToolCallOnly {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        let fed = self.inner.feed(bytes, &mut self.translated);
        self.pass(out);
        fed
    }

    fn finish(&mut self, out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        let finished = self.inner.finish(&mut self.translated);
        self.pass(out);
        finished
    }

    fn usage(&self) -> Usage {
        self.inner.usage()
    }
}
