//! Response-side pieces shared by the adapters that build OpenAI responses from another
//! wire format (Anthropic, Gemini, Cohere): the assistant message and the citation list.

use serde_json::{Map, Value};

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
