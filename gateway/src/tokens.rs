//! Counting tokens in the gateway, for the two cases where a provider's own count cannot
//! be had in time:
//!
//! * refusing a prompt that **certainly** exceeds a model's context, before any money is
//!   held — by a lower bound of its tokens, never by the loose byte bound of `parse.rs`;
//! * billing a request whose usage never arrived (stream cut, client gone, usage missing
//!   or partial) — by counting the prompt sent and the text the client received.
//!
//! Each model counts with its family's tokenizer (`catalog::Tokenizer`):
//!
//! * OpenAI models: `o200k_base` (via `tiktoken-rs`), their exact tokenizer. The count
//!   of the messages' text is a lower bound of the prompt (the chat template only adds).
//! * Families with no public tokenizer (Anthropic, Google, Cohere, Mistral, Meta, …):
//!   `o200k_base` as the estimate for billing. As a lower bound for refusing, half of it:
//!   every catalogued tokenizer is a subword BPE or SentencePiece vocabulary that spends
//!   at least as many tokens on ordinary text as a vocabulary twice its efficiency would,
//!   and a prompt between the halved count and the context is simply forwarded (the
//!   provider refuses it for free, as the mock does).
//! * The mock provider: whitespace-separated words, exactly as it counts.
//!
//! Counting is CPU work proportional to the text; callers run it off the async workers
//! (`spawn_blocking`) and only on the rare paths above.

use crate::catalog::{Model, Tokenizer};
use crate::providers::{Choice, Chunk, Message, Usage};
use serde_json::{Map, Value};

/// Text kept per request to count what a client received, should its usage never
/// arrive. Past it, further text is counted at one token per `BYTES_PER_TOKEN_PAST_CAP`
/// bytes, a typical ratio (the cap is far above any catalogued model's output limit in
/// bytes of text, so this never applies to an honest provider).
pub const DELIVERED_TEXT_BYTES_MAX: usize = 4 << 20;
const BYTES_PER_TOKEN_PAST_CAP: u64 = 4;

/// Tokens of `text` in `tokenizer`.
pub fn count(tokenizer: Tokenizer, text: &str) -> u64 {
    match tokenizer {
        Tokenizer::OpenAi | Tokenizer::Estimated => {
            tiktoken_rs::o200k_base_singleton().count_ordinary(text) as u64
        }
        Tokenizer::Words => crate::mock::word_count(text),
    }
}

/// A lower bound of the prompt's tokens at `model`: the tokens of its messages' text.
pub fn prompt_tokens_min(model: &Model, body: &Map<String, Value>) -> u64 {
    let counted = count(model.tokenizer(), &message_text(body));
    match model.tokenizer() {
        Tokenizer::OpenAi | Tokenizer::Words => counted,
        Tokenizer::Estimated => counted / 2,
    }
}

/// The prompt's tokens as billed when the provider never said: the messages' text, the
/// tool calls and results in them, and the tool definitions.
pub fn prompt_tokens_estimate(model: &Model, body: &Map<String, Value>) -> u64 {
    let mut text = message_text(body);
    if model.tokenizer() != Tokenizer::Words {
        if let Some(tools) = body.get("tools").filter(|tools| !tools.is_null()) {
            push_separated(&mut text, &tools.to_string());
        }
    }
    count(model.tokenizer(), &text)
}

/// Every text fragment of `messages`, separated.
fn message_text(body: &Map<String, Value>) -> String {
    let mut text = String::new();
    for_each_message_text(body, |fragment| push_separated(&mut text, fragment));
    text
}

/// Calls `visit` with every text fragment of `messages`: string contents, `text` parts,
/// and the names and arguments of assistant tool calls.
fn for_each_message_text(body: &Map<String, Value>, mut visit: impl FnMut(&str)) {
    let Some(Value::Array(messages)) = body.get("messages") else { return };
    for message in messages {
        match message.get("content") {
            Some(Value::String(text)) => visit(text),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|part| part.get("text").and_then(Value::as_str))
                .for_each(&mut visit),
            _ => {}
        }
        for_each_tool_call_text(message, &mut visit);
    }
}

fn for_each_tool_call_text(message: &Value, visit: &mut impl FnMut(&str)) {
    let Some(Value::Array(calls)) = message.get("tool_calls") else { return };
    for function in calls.iter().filter_map(|call| call.get("function")) {
        for field in ["name", "arguments"] {
            if let Some(text) = function.get(field).and_then(Value::as_str) {
                visit(text);
            }
        }
    }
}

/// Appends `fragment` after a separator, so that words of two fragments never merge.
fn push_separated(text: &mut String, fragment: &str) {
    if !text.is_empty() {
        text.push('\n');
    }
    text.push_str(fragment);
}

/// The generated text a client has received (content, reasoning, tool calls), kept so
/// that its tokens can be counted if the provider never reports them.
#[derive(Debug, Default)]
pub struct Delivered {
    text: String,
    /// Bytes received past [`DELIVERED_TEXT_BYTES_MAX`], not kept.
    bytes_past_cap: u64,
    /// Whitespace-separated words received: a lower bound of the tokens in every
    /// catalogued tokenizer (none makes one token of two words), kept as the text
    /// arrives so that a provider's report can be checked against it without counting.
    words: u64,
    /// Whether the last byte received was inside a word.
    in_word: bool,
}

impl Delivered {
    /// Keeps the generated text of one streamed chunk.
    pub fn push_chunk(&mut self, chunk: &Chunk) {
        for delta in chunk.choices.iter().filter_map(Choice::delta) {
            self.push_generated(delta);
        }
    }

    /// Keeps the generated text of a complete response's `choices`.
    pub fn push_choices(&mut self, choices: &[Choice]) {
        for message in choices.iter().filter_map(Choice::message) {
            self.push_generated(message);
        }
    }

    /// Whether any generated text was received.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty() && self.bytes_past_cap == 0
    }

    /// A lower bound of the tokens received, in any tokenizer.
    pub fn tokens_min(&self) -> u64 {
        self.words
    }

    /// The fields of a message or delta that carry generated text: content, reasoning
    /// (either name; a string, or an array of `text` parts), tool calls' names and
    /// arguments.
    fn push_generated(&mut self, message_or_delta: &Message) {
        let message = message_or_delta;
        for text in [&message.content, &message.reasoning, &message.reasoning_content] {
            match text {
                Some(Value::String(text)) => self.push(text),
                Some(Value::Array(parts)) => {
                    for part in parts {
                        if let Some(text) = part.get("text").and_then(Value::as_str) {
                            self.push(text);
                        }
                    }
                }
                _ => {}
            }
        }
        for function in message.tool_calls().filter_map(|call| call.function()) {
            for text in [&function.name, &function.arguments] {
                if let Some(text) = text.as_ref().and_then(Value::as_str) {
                    self.push(text);
                }
            }
        }
    }

    fn push(&mut self, text: &str) {
        for byte in text.bytes() {
            let in_word = !byte.is_ascii_whitespace();
            self.words += u64::from(in_word && !self.in_word);
            self.in_word = in_word;
        }
        if self.text.len() + text.len() <= DELIVERED_TEXT_BYTES_MAX {
            self.text.push_str(text);
        } else {
            self.bytes_past_cap = self.bytes_past_cap.saturating_add(text.len() as u64);
        }
    }

    /// Tokens of what was received, in `tokenizer`.
    pub fn tokens(&self, tokenizer: Tokenizer) -> u64 {
        count(tokenizer, &self.text).saturating_add(self.bytes_past_cap / BYTES_PER_TOKEN_PAST_CAP)
    }
}

/// The provider's usage as is, when it needs no counting (see [`billed`]): the common
/// case, decided without tokenizing anything. `delivered_min` is a lower bound of the
/// completion tokens the client received ([`Delivered::tokens_min`]).
pub fn as_reported(
    model: &Model,
    reported: Usage,
    complete: bool,
    delivered_min: u64,
) -> Option<Billed> {
    (is_whole(reported, complete, delivered_min) && !is_over_bound(model, reported))
        .then_some(Billed { usage: reported, estimated: false, clamped: false })
}

/// A report stands when the answer ended as the provider meant, it counts a prompt, and
/// it counts at least the words the client received (a partial report, such as
/// Anthropic's `message_start`, counts fewer).
fn is_whole(reported: Usage, complete: bool, delivered_min: u64) -> bool {
    complete && reported.prompt_tokens > 0 && reported.completion_tokens >= delivered_min
}

fn is_over_bound(model: &Model, reported: Usage) -> bool {
    let (prompt_max, completion_max) = model.usage_max();
    reported.prompt_tokens > prompt_max || reported.completion_tokens > completion_max
}

/// What a request is billed for, and how that was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Billed {
    pub usage: Usage,
    /// The provider's usage was missing or partial; the gateway counted.
    pub estimated: bool,
    /// The provider reported more than the model can use; settled at the bound.
    pub clamped: bool,
}

/// Decides the usage to bill from what the provider `reported` and (lazily) what the
/// gateway `counted` (prompt sent, text delivered):
///
/// * `complete` with a prompt count and a completion count of at least the words the
///   client received: the provider's word stands;
/// * otherwise the larger of reported and counted, per kind, flagged as estimated;
/// * a report above the model's context or output limit is a provider fault: each kind
///   is clamped to its limit, never below what was counted, and flagged.
pub fn billed(
    model: &Model,
    reported: Usage,
    complete: bool,
    delivered_min: u64,
    counted: impl FnOnce() -> Usage,
) -> Billed {
    if let Some(billed) = as_reported(model, reported, complete, delivered_min) {
        return billed;
    }
    let (prompt_max, completion_max) = model.usage_max();
    let reported_whole = is_whole(reported, complete, delivered_min);
    let over_bound = is_over_bound(model, reported);
    let counted = counted();
    let mut usage = reported;
    usage.prompt_tokens = usage.prompt_tokens.min(prompt_max);
    usage.completion_tokens = usage.completion_tokens.min(completion_max);
    if !reported_whole {
        usage.prompt_tokens = usage.prompt_tokens.max(counted.prompt_tokens);
        usage.completion_tokens = usage.completion_tokens.max(counted.completion_tokens);
    } else {
        // Clamped, but never below what the gateway saw delivered.
        usage.completion_tokens = usage.completion_tokens.max(counted.completion_tokens);
    }
    usage.reasoning_tokens = usage.reasoning_tokens.min(usage.completion_tokens);
    usage.cached_read_tokens = usage.cached_read_tokens.min(usage.prompt_tokens);
    usage.cached_write_tokens =
        usage.cached_write_tokens.min(usage.prompt_tokens - usage.cached_read_tokens);
    Billed { usage, estimated: !reported_whole, clamped: over_bound }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(object) => object,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn counts_with_the_family_tokenizer() {
        assert_eq!(count(Tokenizer::Words, "  one two\nthree "), 3);
        assert_eq!(count(Tokenizer::OpenAi, "hello world"), 2);
        assert_eq!(count(Tokenizer::OpenAi, ""), 0);
    }

    #[test]
    fn prompt_bounds_read_every_text_fragment() {
        let catalog = Catalog::builtin();
        let body = object(json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "what is up"},
                                          {"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        ], "tools": [{"type": "function", "function": {"name": "f"}}]}));
        let echo = catalog.get("mock/echo").unwrap();
        // Words: "be brief" "what is up" "f" "{}".
        assert_eq!(prompt_tokens_min(echo, &body), 7);
        assert_eq!(prompt_tokens_estimate(echo, &body), 7);
        let gpt = catalog.get("openai/gpt-4o").unwrap();
        let exact = prompt_tokens_min(gpt, &body);
        assert!(exact >= 6, "{exact}");
        assert!(prompt_tokens_estimate(gpt, &body) > exact, "tools are counted too");
        let claude = catalog.get("anthropic/claude-sonnet-4").unwrap();
        assert_eq!(prompt_tokens_min(claude, &body), exact / 2);
    }

    #[test]
    fn delivered_text_counts_content_reasoning_and_tool_calls() {
        let mut delivered = Delivered::default();
        assert!(delivered.is_empty());
        let chunk = |delta: Value| Chunk {
            choices: vec![Choice::from_tree(json!({"index": 0, "delta": delta}))],
            extra: Map::new(),
        };
        delivered.push_chunk(&chunk(json!({"role": "assistant", "content": "one two "})));
        delivered.push_chunk(&chunk(json!({"reasoning": "three "})));
        delivered.push_chunk(&chunk(json!({"tool_calls": [{"index": 0, "function":
            {"name": "four", "arguments": " five"}}]})));
        assert_eq!(delivered.tokens(Tokenizer::Words), 5);
        // Words split across chunks count once.
        assert_eq!(delivered.tokens_min(), 5);
        delivered.push_chunk(&chunk(json!({"content": " si"})));
        delivered.push_chunk(&chunk(json!({"content": "x "})));
        assert_eq!(delivered.tokens_min(), 6);
        let mut plain = Delivered::default();
        let choice = json!({"message": {"content": [{"type": "text", "text": "a b"}]}});
        plain.push_choices(&[Choice::from_tree(choice)]);
        assert_eq!(plain.tokens(Tokenizer::Words), 2);
    }

    #[test]
    fn delivered_text_past_the_cap_is_still_counted() {
        let mut delivered = Delivered::default();
        let big = "x ".repeat(DELIVERED_TEXT_BYTES_MAX / 2);
        delivered.push(&big);
        delivered.push("abcdefgh");
        assert_eq!(delivered.tokens(Tokenizer::Words), (DELIVERED_TEXT_BYTES_MAX / 2) as u64 + 2);
    }

    #[test]
    fn billing_takes_the_provider_word_or_the_larger_count() {
        let echo = Catalog::builtin().get("mock/echo").unwrap().clone();
        let usage = |prompt, completion| Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            ..Usage::default()
        };
        let counted = || usage(100, 40);
        let check = |reported, complete, delivered_words, expected: Billed| {
            let got = billed(&echo, reported, complete, delivered_words, counted);
            assert_eq!(got, expected, "{reported:?} complete={complete}");
        };
        let exact = |usage| Billed { usage, estimated: false, clamped: false };
        let estimated = |usage| Billed { usage, estimated: true, clamped: false };
        // A complete report stands, even below what was counted.
        check(usage(90, 30), true, 30, exact(usage(90, 30)));
        check(usage(90, 0), true, 0, exact(usage(90, 0)));
        // Missing, partial or cut: the larger of each.
        check(usage(0, 0), true, 5, estimated(usage(100, 40)));
        check(usage(20_000, 1), false, 5, estimated(usage(20_000, 40)));
        check(usage(90, 0), true, 5, estimated(usage(100, 40)));
        check(usage(0, 50), false, 5, estimated(usage(100, 50)));
        // Complete, but fewer completion tokens than the words the client received.
        check(usage(90, 3), true, 5, estimated(usage(100, 40)));
        // Absurd: clamped at the model's limits, never below the count.
        let absurd = usage(10, 10_000_000_000_000_000_000);
        let clamped = Billed { usage: usage(10, 4096), estimated: false, clamped: true };
        check(absurd, true, 40, clamped);
        let over_prompt = usage(1_000_000, 5);
        let clamped = Billed { usage: usage(32_768, 40), estimated: false, clamped: true };
        check(over_prompt, true, 5, clamped);
    }
}
