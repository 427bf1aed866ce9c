//! OpenAI embeddings: `POST /embeddings` (and `/v1/embeddings`), `input` a string, an
//! array of strings, or token ids (one word each), `dimensions` (default [`DIMENSIONS_DEFAULT`], at most
//! [`DIMENSIONS_MAX`]), `encoding_format` `float` or `base64`. Each vector is a
//! deterministic unit vector drawn from its input's text, so equal texts embed equally;
//! `usage.prompt_tokens` counts the inputs' words (at least one per input). The
//! per-request script applies as to chat: `status`, `usage` (`drop`, `over:F`),
//! `pause_ms` (before the head), `cut_after`, `hang`.

use super::knobs::{Fate, Knobs};
use super::script::Script;
use super::tokens::{word_count, Reported};
use super::{refusal, CutAt, MockError, Plan, Prompt};
use crate::providers::embed::encode_base64;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

/// The vector length without `dimensions`: the catalogue's `mock/embed`.
pub const DIMENSIONS_DEFAULT: u32 = 64;
/// The longest vector the mock makes.
pub const DIMENSIONS_MAX: u32 = 4096;

/// Whether `path` is the embeddings endpoint.
pub fn serves(path: &str) -> bool {
    matches!(path, "/embeddings" | "/v1/embeddings")
}

#[derive(Deserialize)]
struct WireRequest {
    model: String,
    input: Input,
    dimensions: Option<u32>,
    #[serde(default)]
    encoding_format: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Tokens(Vec<u32>),
    Many(Vec<Item>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Item {
    Text(String),
    Tokens(Vec<u32>),
}

/// Token ids as the mock reads them: one word per id.
fn token_text(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
}

/// The whole answer to one embeddings request, refusals first as for chat.
pub fn plan(knobs: &Knobs, body: &[u8], script: &Script, fate: Fate) -> Plan {
    let request: WireRequest = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(error) => return error_plan(&MockError::body(error)),
    };
    let inputs = match request.input {
        Input::One(text) => vec![text],
        Input::Tokens(ids) => vec![token_text(&ids)],
        Input::Many(items) => items
            .into_iter()
            .map(|item| match item {
                Item::Text(text) => text,
                Item::Tokens(ids) => token_text(&ids),
            })
            .collect(),
    };
    let prompt_words: u64 = inputs.iter().map(|text| word_count(text).max(1)).sum();
    let prompt = Prompt {
        model: request.model,
        stream: false,
        stream_usage: false,
        max_tokens: None,
        prompt_words,
        last_user: String::new(),
    };
    if let Some(error) = refusal(knobs, &prompt, script, fate) {
        return error_plan(&error);
    }
    let dimensions = request.dimensions.unwrap_or(DIMENSIONS_DEFAULT);
    if !(1..=DIMENSIONS_MAX).contains(&dimensions) || inputs.iter().any(String::is_empty) {
        let message = format!("dimensions must be in 1..={DIMENSIONS_MAX}; inputs non-empty");
        let error = MockError {
            param: Some("input"),
            ..MockError::new(StatusCode::BAD_REQUEST, "invalid_value", message)
        };
        return error_plan(&error);
    }
    let base64 = request.encoding_format.as_deref() == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let vector = vector(text, dimensions);
            let embedding = if base64 { json!(encode_base64(&vector)) } else { json!(vector) };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let mut answer = json!({"object": "list", "data": data, "model": prompt.model});
    if let Some(counts) = Reported::new(prompt_words, 0, script.usage).whole() {
        answer["usage"] = json!({"prompt_tokens": counts.prompt, "total_tokens": counts.prompt});
    }
    Plan {
        status: StatusCode::OK,
        content_type: "application/json",
        body: answer.to_string().into_bytes(),
        streamed: false,
        n_words: 0,
        cut: match (script.cut_after, fate) {
            (Some(n_events), _) => Some(CutAt::Events(n_events)),
            (None, Fate::Cut(point)) => Some(CutAt::Random(point)),
            _ => None,
        },
        pause: script.pause,
        hang: script.hang || fate == Fate::Hang,
    }
}

/// A refusal in OpenAI's error shape.
fn error_plan(error: &MockError) -> Plan {
    super::Format::OpenAi.error(error)
}

/// A unit vector of `dimensions` drawn from `text` (FNV-1a, then xorshift).
fn vector(text: &str, dimensions: u32) -> Vec<f32> {
    let mut state = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let raw: Vec<f32> = (0..dimensions)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // The top 24 bits, as a float in [-1, 1).
            ((state >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect();
    let norm = raw.iter().map(|value| value * value).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
    raw.into_iter().map(|value| value / norm).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_deterministic_unit_vectors() {
        let a = vector("hello world", 64);
        assert_eq!(a.len(), 64);
        assert_eq!(a, vector("hello world", 64));
        assert_ne!(a, vector("hello there", 64));
        let norm: f32 = a.iter().map(|value| value * value).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        assert_eq!(vector("x", 1).len(), 1);
    }
}
