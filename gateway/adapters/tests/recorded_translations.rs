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
use std::path::{Path, PathBuf};

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

fn files(provider: &str) -> Vec<PathBuf> {
    let directory = Path::new(FIXTURES).join(provider);
    let mut files: Vec<PathBuf> = std::fs::read_dir(directory)
        .expect("fixtures")
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
}

/// The upstream bytes of a recorded stream: raw SSE, or one event's data per line.
fn stream_bytes(path: &Path) -> Option<Vec<u8>> {
    let name = path.file_name()?.to_str()?;
    let text = std::fs::read(path).ok()?;
    if name.ends_with(".chunks.txt") {
        let mut sse = Vec::new();
        for line in text.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()) {
            sse.extend_from_slice(b"data: ");
            sse.extend_from_slice(line);
            sse.extend_from_slice(b"\n\n");
        }
        return Some(sse);
    }
    let raw = name.ends_with(".sse") || (name.contains("-streaming-") && name.ends_with(".txt"));
    raw.then_some(text)
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
    for path in files(provider) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(bytes) = stream_bytes(&path) {
            writeln!(out, "## stream {name}").unwrap();
            write_stream(&mut out, adapter, &bytes);
        } else if is_answer(&path) {
            writeln!(out, "## answer {name}").unwrap();
            write_answer(&mut out, adapter, &std::fs::read(&path).expect("fixture"));
        }
    }
    let cases = Path::new(HAND_WRITTEN).join(format!("{provider}.txt"));
    let cases = std::fs::read_to_string(cases).expect("hand-written cases");
    for case in cases.split("### ").filter(|case| !case.is_empty()) {
        let (title, body) = case.split_once('\n').expect("a title line");
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
    let translated = translations(provider, adapter);
    let path = Path::new(EXPECTED).join(format!("{provider}.txt"));
    if std::env::var_os("UPDATE_EXPECTED").is_some() {
        std::fs::write(&path, &translated).expect("write expected");
        return;
    }
    let expected = std::fs::read_to_string(&path).expect("expected translation");
    for (at, (translated, expected)) in translated.lines().zip(expected.lines()).enumerate() {
        assert_eq!(translated, expected, "{provider}: line {} of {}", at + 1, path.display());
    }
    assert_eq!(translated.lines().count(), expected.lines().count(), "{provider}: line count");
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
