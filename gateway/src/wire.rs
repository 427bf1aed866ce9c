//! The OpenAI wire format of what the gateway itself writes: completion objects, stream
//! chunks, the usage object with its `cost`, and ids. Stream chunks are written straight
//! into the outgoing buffer from a per-stream prefix, without building a JSON tree per
//! chunk.

use crate::catalog::Model;
use crate::codec::StreamEncoder;
use crate::error::ApiError;
use crate::json_text::ObjectWriter;
use crate::providers::{write_choices, Choice, Chunk, Completion, Usage};
use bytes::{BufMut, BytesMut};
use serde::Serialize;
use solrouter_ledger::{HoldId, PicoUsd};

const GENERATION_PREFIX: &str = "gen-";
/// The line that ends every successful stream.
pub const STREAM_DONE: &[u8] = b"data: [DONE]\n\n";

/// The public id of a completion (`gen-` and 32 hex digits): the hold that pays for it.
pub fn generation_id(hold: HoldId) -> String {
    // One per response: the hex digits written into a buffer, not through `format!`'s
    // machinery (under callgrind 1.2k instructions a response).
    let mut digits = [0u8; 32];
    hex::encode_to_slice(hold.0.to_be_bytes(), &mut digits).expect("16 bytes, 32 digits");
    let mut id = String::with_capacity(GENERATION_PREFIX.len() + digits.len());
    id.push_str(GENERATION_PREFIX);
    id.push_str(std::str::from_utf8(&digits).expect("hex digits are ASCII"));
    id
}

pub fn parse_generation_id(text: &str) -> Option<HoldId> {
    let digits = text.strip_prefix(GENERATION_PREFIX)?;
    // Exactly the form `generation_id` writes: `from_str_radix` alone would also take a
    // sign or upper case, giving one generation several ids.
    if digits.len() != 32 || !digits.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u128::from_str_radix(digits, 16).ok().map(HoldId)
}

/// OpenAI's usage object plus `cost` in USD (a JSON number, as OpenRouter reports it),
/// written straight from the counts. Keys in sorted order, as a `serde_json::Map`
/// writes them.
#[derive(Serialize)]
pub struct UsageJson {
    completion_tokens: u64,
    completion_tokens_details: ReasoningTokens,
    cost: f64,
    prompt_tokens: u64,
    prompt_tokens_details: CachedTokens,
    total_tokens: u64,
}

#[derive(Serialize)]
struct ReasoningTokens {
    reasoning_tokens: u64,
}

#[derive(Serialize)]
struct CachedTokens {
    cached_tokens: u64,
}

impl UsageJson {
    pub fn new(usage: &Usage, cost: PicoUsd) -> UsageJson {
        UsageJson {
            completion_tokens: usage.completion_tokens,
            completion_tokens_details: ReasoningTokens { reasoning_tokens: usage.reasoning_tokens },
            cost: cost.to_usd_f64(),
            prompt_tokens: usage.prompt_tokens,
            prompt_tokens_details: CachedTokens { cached_tokens: usage.cached_read_tokens },
            total_tokens: usage.prompt_tokens.saturating_add(usage.completion_tokens),
        }
    }
}

/// A complete `chat.completion` object, written straight from its parts into one buffer
/// (the choices by `write_choices`, as a stream's chunks are): the keys in sorted order,
/// as a `serde_json::Map` would write them, the provider's pass-through fields (`extra`)
/// among them unless the gateway writes a field of that name itself.
pub fn completion(
    id: &str,
    created_s: u64,
    model: &Model,
    completion: Completion,
    cost: PicoUsd,
) -> Vec<u8> {
    let usage = UsageJson::new(&completion.usage, cost);
    // Sorted by name, as the merge below needs.
    let own = [
        ("choices", Field::Choices(&completion.choices)),
        ("created", Field::U64(created_s)),
        ("id", Field::Str(id)),
        ("model", Field::Str(&model.id)),
        ("object", Field::Str("chat.completion")),
        ("provider", Field::Str(&model.provider)),
        ("usage", Field::Usage(&usage)),
    ];
    debug_assert!(own.windows(2).all(|pair| pair[0].0 < pair[1].0));
    let mut out = Vec::with_capacity(256);
    let mut object = ObjectWriter::open(&mut out);
    let mut own = own.iter().peekable();
    let mut extra = completion.extra.iter().peekable();
    loop {
        let take_own = match (own.peek(), extra.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some((own_name, _)), Some((extra_name, _))) => {
                if *own_name == extra_name.as_str() {
                    extra.next(); // The gateway's own field wins.
                    continue;
                }
                *own_name < extra_name.as_str()
            }
        };
        if take_own {
            let (name, value) = own.next().expect("peeked");
            value.write(object.value_of(name));
        } else {
            let (name, value) = extra.next().expect("peeked");
            serialize_into(object.value_of(name), value);
        }
    }
    object.close();
    out
}

/// A top-level field the gateway writes into a completion.
enum Field<'a> {
    Choices(&'a [Choice]),
    U64(u64),
    Str(&'a str),
    Usage(&'a UsageJson),
}

impl Field<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Field::Choices(choices) => write_choices(out, choices),
            Field::U64(number) => out.extend_from_slice(number.to_string().as_bytes()),
            Field::Str(text) => serialize_into(out, text),
            Field::Usage(usage) => serialize_into(out, usage),
        }
    }
}

/// Writes the chunks of one stream as server-sent events.
pub struct ChunkEncoder {
    /// The event being written, reused chunk after chunk: the stream's prefix (`data:
    /// {"id":…,"object":"chat.completion.chunk","created":…,"model":…,"provider":…,
    /// "choices":`), written once, then one chunk's choices and the rest.
    event: Vec<u8>,
    prefix_len: usize,
}

impl ChunkEncoder {
    /// The encoder of a stream of `model` served by the host `provider` (named in every
    /// chunk, as OpenRouter's are).
    pub fn new(id: &str, created_s: u64, model: &str, provider: &str) -> ChunkEncoder {
        let mut prefix = BytesMut::with_capacity(128);
        prefix.put_slice(b"data: {\"id\":");
        write_json(&mut prefix, id);
        prefix.put_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        prefix.put_slice(created_s.to_string().as_bytes());
        prefix.put_slice(b",\"model\":");
        write_json(&mut prefix, model);
        prefix.put_slice(b",\"provider\":");
        write_json(&mut prefix, provider);
        prefix.put_slice(b",\"choices\":");
        ChunkEncoder { prefix_len: prefix.len(), event: prefix.to_vec() }
    }

    fn prefix(&self) -> &[u8] {
        &self.event[..self.prefix_len]
    }
}

impl StreamEncoder for ChunkEncoder {
    /// The choices written from their typed members (`write_choices`), the provider's
    /// pass-through fields after them.
    fn chunk(&mut self, chunk: &Chunk, out: &mut BytesMut) {
        let event = &mut self.event;
        event.truncate(self.prefix_len);
        write_choices(event, &chunk.choices);
        for (name, value) in &chunk.extra {
            event.push(b',');
            serialize_into(&mut *event, name);
            event.push(b':');
            serialize_into(&mut *event, value);
        }
        event.extend_from_slice(b"}\n\n");
        out.put_slice(event);
    }

    /// The last chunk of a complete stream: no choices, the usage with its cost, then
    /// `[DONE]`.
    fn finish(&mut self, usage: &Usage, cost: PicoUsd, out: &mut BytesMut) {
        out.put_slice(self.prefix());
        out.put_slice(b"[],\"usage\":");
        write_json(out, &UsageJson::new(usage, cost));
        out.put_slice(b"}\n\n");
        out.put_slice(STREAM_DONE);
    }

    /// The last event of a broken stream: an `error` object (which OpenAI SDKs raise),
    /// a finish reason of `error`, and the usage charged for what was delivered. No
    /// `[DONE]` follows, so no client mistakes the stream for complete.
    fn fail(&mut self, error: &ApiError, usage: &Usage, cost: PicoUsd, out: &mut BytesMut) {
        out.put_slice(self.prefix());
        out.put_slice(b"[{\"index\":0,\"delta\":{},\"finish_reason\":\"error\"}],\"usage\":");
        write_json(out, &UsageJson::new(usage, cost));
        out.put_slice(b",\"error\":");
        write_json(out, &error.to_json()["error"]);
        out.put_slice(b"}\n\n");
    }
}

/// One named server-sent event (`event: kind`, then its data as one line of JSON), as
/// the Anthropic and Responses streams write them.
pub fn write_event(out: &mut BytesMut, kind: &str, data: &(impl Serialize + ?Sized)) {
    out.put_slice(b"event: ");
    out.put_slice(kind.as_bytes());
    out.put_slice(b"\ndata: ");
    write_json(out, data);
    out.put_slice(b"\n\n");
}

/// Serializes into the buffer. In-memory serialization of these types cannot fail (no
/// I/O, no non-string map keys); a failure would be a bug, logged and left out.
pub fn write_json(out: &mut BytesMut, value: &(impl Serialize + ?Sized)) {
    serialize_into(out.writer(), value);
}

fn serialize_into(out: impl std::io::Write, value: &(impl Serialize + ?Sized)) {
    if let Err(error) = serde_json::to_writer(out, value) {
        tracing::error!(%error, "serializing a stream chunk failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map, Value};

    #[test]
    fn generation_ids_round_trip() {
        let hold = HoldId(0x1234_5678_9abc_def0_0fed_cba9_8765_4321);
        let id = generation_id(hold);
        assert_eq!(id, "gen-123456789abcdef00fedcba987654321");
        assert_eq!(generation_id(HoldId(1)), format!("gen-{}1", "0".repeat(31)));
        assert_eq!(parse_generation_id(&id), Some(hold));
        let signed = format!("gen-+{}", &id[5..]);
        let upper = id.to_uppercase().replace("GEN-", "gen-");
        for bad in
            ["", "gen-", "gen-xyz", "chatcmpl-1", &id[..35], &format!("{id}0"), &signed, &upper]
        {
            assert_eq!(parse_generation_id(bad), None, "{bad}");
        }
    }

    /// Byte for byte what a `serde_json::Map` of the same fields writes (keys sorted),
    /// the gateway's own fields winning over the provider's of the same name.
    #[test]
    fn completions_are_written_as_a_sorted_map() {
        let catalog = crate::catalog::Catalog::builtin();
        let model = catalog.get("mock/echo").expect("catalogued");
        let choices = json!([{"index": 0, "message": {"role": "assistant", "content": "hi"}}]);
        let typed: Vec<Choice> = serde_json::from_value(choices.clone()).expect("choices");
        let extra: Map<String, Value> = [
            ("aaa", json!(1)),
            ("citations", json!(["x"])),
            ("model", json!("upstream-name")),
            ("service_tier", json!("default")),
            ("zzz", json!({"b": null})),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        let usage = Usage { prompt_tokens: 3, completion_tokens: 2, ..Usage::default() };
        let answer = Completion { choices: typed, usage, extra: extra.clone() };
        let written = completion("gen-1", 7, model, answer, PicoUsd(7_000_000));
        let mut expected = Map::new();
        expected.insert("id".into(), json!("gen-1"));
        expected.insert("object".into(), json!("chat.completion"));
        expected.insert("created".into(), json!(7));
        expected.insert("model".into(), json!(model.id));
        expected.insert("provider".into(), json!(model.provider));
        expected.insert("choices".into(), choices);
        let usage_json = serde_json::to_value(UsageJson::new(&usage, PicoUsd(7_000_000)));
        expected.insert("usage".into(), usage_json.expect("serializable"));
        for (name, value) in extra {
            expected.entry(name).or_insert(value);
        }
        assert_eq!(
            String::from_utf8(written).expect("utf-8"),
            serde_json::to_string(&expected).expect("serializable")
        );
    }

    #[test]
    fn encodes_chunks_as_sse() {
        let mut encoder = ChunkEncoder::new("gen-1", 7, "mock/\"echo\"", "mock");
        let chunk = Chunk {
            choices: vec![Choice::from_tree(json!({"index": 0, "delta": {"content": "hi"}}))],
            extra: [("citations".to_string(), json!(["x"]))].into_iter().collect(),
        };
        let mut out = BytesMut::new();
        encoder.chunk(&chunk, &mut out);
        let usage = Usage { prompt_tokens: 3, completion_tokens: 2, ..Usage::default() };
        encoder.finish(&usage, PicoUsd(7_000_000), &mut out);
        let text = std::str::from_utf8(&out).expect("utf-8");
        let events: Vec<&str> = text.split("\n\n").filter(|event| !event.is_empty()).collect();
        assert_eq!(events.len(), 3);
        let first: Value = serde_json::from_str(&events[0]["data: ".len()..]).expect("json");
        assert_eq!(
            (&first["model"], &first["provider"]),
            (&json!("mock/\"echo\""), &json!("mock"))
        );
        assert_eq!(first["choices"][0]["delta"]["content"], "hi");
        assert_eq!(first["citations"][0], "x");
        let last: Value = serde_json::from_str(&events[1]["data: ".len()..]).expect("json");
        assert_eq!(last["usage"]["total_tokens"], 5);
        assert_eq!(last["usage"]["cost"], 0.000007);
        assert_eq!(events[2], "data: [DONE]");
    }
}
