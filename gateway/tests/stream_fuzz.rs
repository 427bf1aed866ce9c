//! Property tests of every provider's stream translator against every recorded stream in
//! `tests/fixtures`: however the bytes are cut into reads, the translation is the
//! same (no lost or duplicated byte); a stream cut short anywhere, or arbitrary bytes,
//! never panic. Recorded `*.chunks.txt` files (one `data:` payload a line) are replayed
//! as the SSE they were captured from.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Map;
use solrouter_gateway::providers::anthropic::Anthropic;
use solrouter_gateway::providers::cohere::Cohere;
use solrouter_gateway::providers::google::Google;
use solrouter_gateway::providers::openai::{OpenAiCompatible, Quirks};
use solrouter_gateway::providers::{Adapter, ChatBody, ChatRequest, Chunk, UpstreamError, Usage};
use std::path::{Path, PathBuf};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
/// Random splittings tried per recorded stream (plus one byte-by-byte run).
const SPLITTINGS_PER_STREAM: u32 = 16;
/// Truncation points tried per recorded stream.
const PREFIXES_PER_STREAM: usize = 64;

/// The adapter that speaks the wire format recorded in a fixtures folder.
fn adapter_for(folder: &str) -> Option<Box<dyn Adapter>> {
    let compatible =
        |quirks| Some(Box::new(OpenAiCompatible::new(folder, quirks)) as Box<dyn Adapter>);
    match folder {
        "anthropic" => Some(Box::new(Anthropic)),
        "google" => Some(Box::new(Google)),
        "cohere" => Some(Box::new(Cohere)),
        "mistral" => compatible(Quirks::MISTRAL),
        "xai" => compatible(Quirks::XAI),
        "perplexity" => compatible(Quirks::PERPLEXITY),
        "openai" | "deepseek" | "groq" | "openai-compatible" => compatible(Quirks::OPENAI),
        _ => None,
    }
}

/// Every recorded stream body: raw SSE files as they are, chunk files rebuilt as SSE.
fn recorded_streams() -> Vec<(PathBuf, Vec<u8>)> {
    let mut streams = Vec::new();
    for folder in std::fs::read_dir(FIXTURES).expect("gateway/tests/fixtures") {
        let folder = folder.unwrap().path();
        for file in std::fs::read_dir(&folder).into_iter().flatten() {
            let path = file.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&path).unwrap();
            if name.ends_with(".sse") || name.contains("-streaming-") {
                streams.push((path, bytes));
            } else if name.ends_with(".chunks.txt") {
                let text = String::from_utf8_lossy(&bytes);
                let sse: String = text
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| format!("data: {l}\n\n"))
                    .collect();
                streams.push((path, sse.into_bytes()));
            }
        }
    }
    streams.sort();
    streams
}

/// What a translator made of a stream read in the given pieces.
#[derive(Debug, PartialEq)]
struct Translation {
    chunks: Vec<Chunk>,
    usage: Usage,
    ended: Result<(), UpstreamError>,
}

fn translate(adapter: &dyn Adapter, pieces: &[&[u8]]) -> Translation {
    let mut translator = adapter.stream(&ChatRequest {
        body: ChatBody::from_tree(Map::new()),
        stream: true,
        max_tokens: None,
        native: None,
    });
    let mut chunks = Vec::new();
    let mut ended = Ok(());
    for piece in pieces {
        ended = translator.feed(piece, &mut chunks);
        if ended.is_err() {
            break;
        }
    }
    if ended.is_ok() {
        ended = translator.finish(&mut chunks);
    }
    Translation { chunks, usage: translator.usage(), ended }
}

fn cut(bytes: &[u8], cuts: &[prop::sample::Index]) -> Vec<usize> {
    let mut positions: Vec<usize> = cuts.iter().map(|cut| cut.index(bytes.len() + 1)).collect();
    positions.sort_unstable();
    positions
}

fn pieces<'a>(bytes: &'a [u8], positions: &[usize]) -> Vec<&'a [u8]> {
    let mut start = 0;
    let mut out = Vec::new();
    for &position in positions.iter().chain(std::iter::once(&bytes.len())) {
        out.push(&bytes[start..position]);
        start = position;
    }
    out
}

fn folder_of(path: &Path) -> String {
    path.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn splitting_a_recorded_stream_never_changes_its_translation() {
    let streams = recorded_streams();
    assert!(streams.len() > 50, "expected the recorded streams, found {}", streams.len());
    let mut n_checked = 0;
    for (path, bytes) in &streams {
        let Some(adapter) = adapter_for(&folder_of(path)) else { continue };
        let whole = translate(adapter.as_ref(), &[bytes]);
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(
            translate(adapter.as_ref(), &bytewise),
            whole,
            "{} read byte by byte",
            path.display()
        );
        let mut runner =
            TestRunner::new(Config { cases: SPLITTINGS_PER_STREAM, ..Config::default() });
        let cuts = prop::collection::vec(any::<prop::sample::Index>(), 1..12);
        let result = runner.run(&cuts, |cuts| {
            let positions = cut(bytes, &cuts);
            prop_assert_eq!(
                &translate(adapter.as_ref(), &pieces(bytes, &positions)),
                &whole,
                "cut at {:?}",
                positions
            );
            Ok(())
        });
        if let Err(failure) = result {
            panic!("{}: {failure}", path.display());
        }
        n_checked += 1;
    }
    assert!(n_checked > 50, "only {n_checked} streams had an adapter");
}

#[test]
fn a_stream_cut_short_anywhere_never_panics() {
    for (path, bytes) in recorded_streams() {
        let Some(adapter) = adapter_for(&folder_of(&path)) else { continue };
        let whole = translate(adapter.as_ref(), &[&bytes]);
        // About 64 cut points per stream, spread so that they land inside every event.
        for end in (0..bytes.len()).step_by(bytes.len() / PREFIXES_PER_STREAM + 1) {
            let truncated = translate(adapter.as_ref(), &[&bytes[..end]]);
            assert!(
                truncated.chunks.len() <= whole.chunks.len() + 1,
                "{} cut at {end} invented chunks",
                path.display()
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary bytes, and arbitrary SSE-shaped garbage, into every wire format: an error
    /// at worst, never a panic.
    #[test]
    fn arbitrary_input_never_panics(
        noise in prop::collection::vec(any::<u8>(), 0..512),
        events in prop::collection::vec("(event: [a-z_-]{0,12}\r?\n)?data: [ -~]{0,64}\r?\n\r?\n", 0..8),
    ) {
        for folder in ["anthropic", "google", "cohere", "openai", "mistral", "xai", "perplexity"] {
            let adapter = adapter_for(folder).unwrap();
            let _ = translate(adapter.as_ref(), &[&noise]);
            let sse = events.concat();
            let _ = translate(adapter.as_ref(), &[sse.as_bytes(), &noise]);
        }
    }
}
