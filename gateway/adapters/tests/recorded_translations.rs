//! Every recorded Anthropic, Gemini and Cohere answer and stream (`gateway/tests/fixtures`),
//! and hand-written ones (`tests/events/`: unknown members and event types, nulls, members
//! of other types, repeated names, escapes, broken JSON, JSON a tree cannot hold, errors),
//! translated into OpenAI's format, compared byte for byte with the translation checked in
//! under `tests/expected/` (what the gateway sent for them when the events were still read
//! into `serde_json::Value` trees): the chunks a client receives, in the bytes the stream
//! encoder writes (`write_choices`), with the usage and how each ended. Run with
//! `UPDATE_EXPECTED=1` to write the files anew after a deliberate change.

use solrouter_adapters::providers::anthropic::Anthropic;
use solrouter_adapters::providers::cohere::Cohere;
use solrouter_adapters::providers::google::Google;
use solrouter_adapters::providers::{write_choices, Adapter, ChatBody, ChatRequest, Chunk};
use std::fmt::Write as _;
use std::path::Path;
use support::{cases, check_expected, files, stream_bytes};

mod support {
    include!("support/recorded.rs");
}

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");
const EXPECTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/expected");
const HAND_WRITTEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/events");

/// The requests each recording answers: a plain one, and one asking for a JSON object
/// and at most one tool call (Anthropic's answer through its JSON tool; Gemini's and
/// Cohere's first tool call only).
fn chats(stream: bool) -> [(&'static str, ChatRequest); 2] {
    let chat = |extra: &str| {
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"stream":{stream}{extra}}}"#
        );
        let body = ChatBody::from_text(body.into_bytes().into());
        ChatRequest { body, stream, max_tokens: None, native: None }
    };
    [
        ("plain", chat("")),
        (
            "json, one tool call",
            chat(r#","parallel_tool_calls":false,"response_format":{"type":"json_object"}"#),
        ),
    ]
}

/// A recorded complete answer (not a request, metadata or error body sent with a failing
/// status: those are classified, never translated).
fn is_answer(path: &Path) -> bool {
    let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
    name.ends_with(".json")
        && !name.ends_with(".request.json")
        && !name.ends_with(".meta.json")
        && !name.ends_with(".error.json")
}

fn write_chunk(out: &mut String, chunk: &Chunk) {
    let mut choices = Vec::new();
    write_choices(&mut choices, &chunk.choices);
    let choices = String::from_utf8(choices).expect("UTF-8");
    let extra = serde_json::to_string(&chunk.extra).expect("extra");
    writeln!(out, "{{\"choices\":{choices},\"extra\":{extra}}}").unwrap();
}

/// A stream's translation: its chunks, the usage, how it ended.
fn write_stream(out: &mut String, adapter: &dyn Adapter, bytes: &[u8]) {
    for (variant, chat) in chats(true) {
        writeln!(out, "# {variant}").unwrap();
        let mut translator = adapter.stream(&chat);
        let mut chunks = Vec::new();
        let fed = translator.feed(bytes, &mut chunks);
        let ended = fed.and_then(|()| translator.finish(&mut chunks));
        chunks.iter().for_each(|chunk| write_chunk(out, chunk));
        writeln!(out, "usage: {:?}", translator.usage()).unwrap();
        match ended {
            Ok(()) => writeln!(out, "ended").unwrap(),
            Err(error) => writeln!(out, "failed: {} {}", error.status, error).unwrap(),
        }
    }
}

/// A complete answer's translation.
fn write_answer(out: &mut String, adapter: &dyn Adapter, body: &[u8]) {
    for (variant, chat) in chats(false) {
        writeln!(out, "# {variant}").unwrap();
        match adapter.response(&chat, body) {
            Ok(completion) => {
                let chunk = Chunk { choices: completion.choices, extra: completion.extra };
                write_chunk(out, &chunk);
                writeln!(out, "usage: {:?}", completion.usage).unwrap();
            }
            Err(error) => writeln!(out, "failed: {} {}", error.status, error).unwrap(),
        }
    }
}

/// Everything a client of `adapter` gets for the recordings of `provider`, then for the
/// hand-written cases (`### title` and the SSE body of a stream, or `### answer: title`
/// and an answer's body).
fn translations(provider: &str, adapter: &dyn Adapter) -> String {
    let mut out = String::new();
    for path in files(&Path::new(FIXTURES).join(provider)) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(bytes) = stream_bytes(&path) {
            writeln!(out, "## stream {name}").unwrap();
            write_stream(&mut out, adapter, &bytes);
        } else if is_answer(&path) {
            writeln!(out, "## answer {name}").unwrap();
            write_answer(&mut out, adapter, &std::fs::read(&path).expect("fixture"));
        }
    }
    for (title, body) in cases(&Path::new(HAND_WRITTEN).join(format!("{provider}.txt"))) {
        writeln!(out, "## {title}").unwrap();
        if title.starts_with("answer: ") {
            write_answer(&mut out, adapter, body.trim_end().as_bytes());
        } else {
            write_stream(&mut out, adapter, body.as_bytes());
        }
    }
    out
}

fn check(provider: &str, adapter: &dyn Adapter) {
    let expected = Path::new(EXPECTED).join(format!("{provider}.txt"));
    check_expected(&translations(provider, adapter), &expected);
}

#[test]
fn recorded_anthropic_translates_as_checked_in() {
    check("anthropic", &Anthropic);
}

#[test]
fn recorded_gemini_translates_as_checked_in() {
    check("google", &Google);
}

#[test]
fn recorded_cohere_translates_as_checked_in() {
    check("cohere", &Cohere);
}
