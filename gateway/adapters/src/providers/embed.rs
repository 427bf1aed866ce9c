//! Embeddings: what the gateway asks of a provider that serves embedding models, and
//! what it reads back, in every provider's wire format. Like chat translation this is
//! pure: an [`Embedder`] builds the upstream request and reads a 2xx body; errors are
//! classified by its [`super::Adapter::error`], and the pipeline does the sending.

use super::errors::bad_gateway;
use super::{Endpoint, UpstreamError, UpstreamRequest};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{Map, Value};

/// How the client wants its vectors: JSON numbers, or OpenAI's base64 of the
/// little-endian `f32`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Float,
    Base64,
}

/// One input to embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Text(String),
    /// Token ids of the model's own tokenizer (OpenAI's arrays of integers, which
    /// LangChain sends by default): only OpenAI itself takes them
    /// ([`Embedder::takes_tokens`]).
    Tokens(Vec<u32>),
}

impl Input {
    pub fn text(&self) -> Option<&str> {
        match self {
            Input::Text(text) => Some(text),
            Input::Tokens(_) => None,
        }
    }

    /// The input as OpenAI's `input` array holds it.
    pub fn to_json(&self) -> Value {
        match self {
            Input::Text(text) => Value::from(text.as_str()),
            Input::Tokens(tokens) => Value::from(tokens.clone()),
        }
    }
}

/// A validated embeddings request, provider-neutral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedRequest {
    /// What to embed, in order; none is empty.
    pub inputs: Vec<Input>,
    pub encoding: Encoding,
    /// Cohere's `input_type` (`search_document`, `search_query`, `classification`,
    /// `clustering`), passed to Cohere only.
    pub input_type: Option<String>,
    /// OpenAI's end-user id, passed to OpenAI-compatible hosts only.
    pub user: Option<String>,
}

/// What one attempt asks of the upstream model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbedTarget<'a> {
    /// The provider's own name for the model.
    pub upstream_model: &'a str,
    /// The vector length to ask for: `None` for the model's default.
    pub dimensions: Option<u32>,
}

/// A provider's answer: one vector per input, in input order, and the input tokens it
/// reported, if it reports any (Gemini does not).
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub input_tokens: Option<u64>,
}

/// One provider's embeddings wire format.
pub trait Embedder: Send + Sync {
    /// The upstream request embedding `request.inputs` as `target` says.
    fn embed_request(
        &self,
        endpoint: &Endpoint,
        request: &EmbedRequest,
        target: &EmbedTarget,
    ) -> UpstreamRequest;
    /// Whether the provider embeds token ids ([`Input::Tokens`]); routing sends the
    /// others text only.
    fn takes_tokens(&self) -> bool {
        false
    }
    /// Reads a 2xx body answering `request`.
    fn embed_response(
        &self,
        request: &EmbedRequest,
        body: &[u8],
    ) -> Result<Embeddings, UpstreamError>;
}

/// OpenAI's base64 encoding of a vector: its `f32`s little-endian, in standard base64.
pub fn encode_base64(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|value| value.to_le_bytes()).collect();
    STANDARD.encode(bytes)
}

/// The vector of OpenAI's base64 encoding; `None` when it is not one.
pub fn decode_base64(text: &str) -> Option<Vec<f32>> {
    let bytes = STANDARD.decode(text).ok()?;
    if bytes.len() % 4 != 0 {
        return None;
    }
    let vector = bytes
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
        .collect();
    Some(vector)
}

/// A vector written as JSON numbers; `None` when an element is not a number.
pub fn float_vector(values: &Value) -> Option<Vec<f32>> {
    let values = values.as_array()?;
    // Providers write `f32`s in decimal; the nearest `f32` is the one they meant.
    values.iter().map(|value| value.as_f64().map(|value| value as f32)).collect()
}

/// Checks a provider's vectors against the request: one per input, none empty.
pub fn checked(
    provider: &str,
    request: &EmbedRequest,
    vectors: Vec<Vec<f32>>,
    input_tokens: Option<u64>,
) -> Result<Embeddings, UpstreamError> {
    if vectors.len() != request.inputs.len() {
        let message = format!("{} vectors for {} inputs", vectors.len(), request.inputs.len());
        return Err(bad_gateway(provider, message));
    }
    if vectors.iter().any(Vec::is_empty) {
        return Err(bad_gateway(provider, "an empty vector"));
    }
    Ok(Embeddings { vectors, input_tokens })
}

/// A 2xx body as a JSON object, or the provider is misbehaving.
pub fn object(provider: &str, body: &[u8]) -> Result<Map<String, Value>, UpstreamError> {
    serde_json::from_slice(body)
        .map_err(|error| bad_gateway(provider, format!("invalid embeddings response: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_little_endian_f32() {
        // 1.0f32 is 0x3f800000: bytes 00 00 80 3f.
        assert_eq!(encode_base64(&[1.0]), "AACAPw==");
        let vector = [0.25, -1.5, f32::MIN_POSITIVE, 3.4e38];
        assert_eq!(decode_base64(&encode_base64(&vector)).unwrap(), vector);
        assert_eq!(decode_base64("AACA"), None, "three bytes are no f32");
        assert_eq!(decode_base64("not base64!"), None);
    }

    #[test]
    fn float_vectors_and_counts_are_checked() {
        assert_eq!(float_vector(&serde_json::json!([0.5, -2])).unwrap(), [0.5, -2.0]);
        assert_eq!(float_vector(&serde_json::json!([0.5, "x"])), None);
        let request = EmbedRequest {
            inputs: vec![Input::Text("a".into()), Input::Tokens(vec![1, 2])],
            encoding: Encoding::Float,
            input_type: None,
            user: None,
        };
        assert!(checked("p", &request, vec![vec![1.0], vec![2.0]], Some(2)).is_ok());
        let short = checked("p", &request, vec![vec![1.0]], None).unwrap_err();
        assert_eq!(short.status, http::StatusCode::BAD_GATEWAY);
        assert!(short.fallback);
        assert!(checked("p", &request, vec![vec![1.0], vec![]], None).is_err());
    }
}
