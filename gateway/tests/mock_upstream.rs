//! The mock upstream in each of its wire formats, over real HTTP on 127.0.0.1, read by
//! the real adapter of that format (`Adapter::response`, `Adapter::stream`), and each
//! knob of its script and its server-wide configuration observed from the client side.

use crate::providers_support::{
    assemble_completion, assemble_stream, chat, post_upstream, translate,
};
use futures_util::StreamExt;
use serde_json::{json, Value};
use solrouter_gateway::mock::{self, Knobs, MockConfig, ABSURD_TOKENS};
use solrouter_gateway::providers::anthropic::Anthropic;
use solrouter_gateway::providers::cohere::Cohere;
use solrouter_gateway::providers::google::Google;
use solrouter_gateway::providers::openai::{OpenAiCompatible, Quirks};
use solrouter_gateway::providers::{
    Adapter, ChatRequest, Chunk, Completion, Endpoint, UpstreamError, Usage,
};
use std::time::Duration;
use tokio::time::Instant;

/// A mock on a free port; it stops when the sender is dropped.
struct Mock {
    base: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(config: MockConfig) -> Mock {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(mock::serve_with(listener, Knobs::try_new(config).unwrap(), stopped));
    Mock { base, _stop: stop }
}

/// One wire format: its real adapter, and the base URL its SDK would take.
struct Wire {
    adapter: Box<dyn Adapter>,
    /// Appended to the mock's root: OpenAI's base URL carries `/v1`.
    base_suffix: &'static str,
}

fn wires() -> Vec<Wire> {
    vec![
        Wire {
            adapter: Box::new(OpenAiCompatible::new("openai", Quirks::OPENAI)),
            base_suffix: "/v1",
        },
        Wire { adapter: Box::new(Anthropic), base_suffix: "" },
        Wire { adapter: Box::new(Google), base_suffix: "" },
        Wire { adapter: Box::new(Cohere), base_suffix: "" },
    ]
}

impl Wire {
    fn name(&self) -> &str {
        self.adapter.provider()
    }

    fn endpoint(&self, mock: &Mock) -> Endpoint {
        Endpoint { base_url: format!("{}{}", mock.base, self.base_suffix), api_key: None }
    }
}

/// What the client saw of one exchange.
#[derive(Debug)]
enum Seen {
    Complete(Completion),
    /// A stream that ended as the format says a complete stream ends.
    Streamed {
        chunks: Vec<Chunk>,
        usage: Usage,
    },
    /// A stream that broke: the events that arrived, the usage they carried, and why it
    /// is incomplete (the connection dropped, or the translator found no terminal event).
    Broken {
        chunks: Vec<Chunk>,
        usage: Usage,
        events: usize,
        connection_dropped: bool,
    },
    /// A plain body that never arrived whole.
    Truncated,
    Failed {
        error: UpstreamError,
        body: Value,
    },
}

/// Sends `chat` through `wire`'s adapter to the mock, reading the answer as the
/// pipeline would, and counts raw SSE events (blank-line separated).
async fn send(wire: &Wire, mock: &Mock, chat: &ChatRequest) -> Seen {
    let response =
        post_upstream(translate(&*wire.adapter, &wire.endpoint(mock), chat, "echo").unwrap()).await;
    let status = response.status();
    if !status.is_success() {
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap();
        let error = wire.adapter.error(status, &headers, &body);
        return Seen::Failed { error, body: serde_json::from_slice(&body).unwrap() };
    }
    if !chat.stream {
        return match response.bytes().await {
            Ok(body) => Seen::Complete(wire.adapter.response(chat, &body).unwrap()),
            Err(_) => Seen::Truncated,
        };
    }
    let mut translator = wire.adapter.stream(chat);
    let (mut chunks, mut raw) = (Vec::new(), Vec::new());
    let mut body = response.bytes_stream();
    let mut connection_dropped = false;
    while let Some(bytes) = body.next().await {
        match bytes {
            Ok(bytes) => {
                raw.extend_from_slice(&bytes);
                translator.feed(&bytes, &mut chunks).unwrap();
            }
            Err(_) => {
                connection_dropped = true;
                break;
            }
        }
    }
    let events = raw.windows(2).filter(|pair| pair == b"\n\n").count();
    let finished = !connection_dropped && translator.finish(&mut chunks).is_ok();
    let usage = translator.usage();
    if finished {
        Seen::Streamed { chunks, usage }
    } else {
        Seen::Broken { chunks, usage, events, connection_dropped }
    }
}

/// A chat request: a system prompt (2 words) and `user` as the last user message.
fn ask(user: &str, stream: bool, extra: Value) -> ChatRequest {
    let mut body = json!({"model": "mock/echo", "stream": stream, "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": user},
    ]});
    for (field, value) in extra.as_object().unwrap() {
        body[field] = value.clone();
    }
    chat(body)
}

fn usage(prompt_tokens: u64, completion_tokens: u64) -> Usage {
    Usage { prompt_tokens, completion_tokens, ..Usage::default() }
}

/// The text, finish reason and usage of a complete answer, plain or streamed.
fn outcome(wire: &Wire, seen: Seen) -> (String, Option<String>, Usage) {
    match seen {
        Seen::Complete(completion) => {
            let assembled = assemble_completion(&completion);
            (assembled.text, assembled.finish_reason, completion.usage)
        }
        Seen::Streamed { chunks, usage, .. } => {
            let assembled = assemble_stream(&chunks);
            (assembled.text, assembled.finish_reason, usage)
        }
        other => panic!("{}: expected an answer, got {other:?}", wire.name()),
    }
}

#[tokio::test]
async fn every_format_echoes_plain_and_streamed() {
    let mock = start(MockConfig::default()).await;
    for wire in wires() {
        for stream in [false, true] {
            let seen = send(&wire, &mock, &ask("say  hello\nworld", stream, json!({}))).await;
            let (text, finish, usage_seen) = outcome(&wire, seen);
            let case = format!("{} stream={stream}", wire.name());
            assert_eq!(text, "say  hello\nworld", "{case}");
            assert_eq!(finish.as_deref(), Some("stop"), "{case}");
            // Prompt: 2 system words + 3 user words; completion: 3 words.
            assert_eq!(usage_seen, usage(5, 3), "{case}");
        }
    }
}

#[tokio::test]
async fn the_completion_limit_is_honoured_unless_the_script_ignores_it() {
    let mock = start(MockConfig::default()).await;
    for wire in wires() {
        for stream in [false, true] {
            let case = format!("{} stream={stream}", wire.name());
            let limited = ask("one two three four", stream, json!({"max_tokens": 2}));
            let (text, finish, seen_usage) = outcome(&wire, send(&wire, &mock, &limited).await);
            assert_eq!((text.as_str(), finish.as_deref()), ("one two ", Some("length")), "{case}");
            assert_eq!(seen_usage, usage(6, 2), "{case}");
            let ignored = ask(
                "[[mock ignore_max_tokens]] one two three four",
                stream,
                json!({"max_tokens": 2}),
            );
            let (text, finish, seen_usage) = outcome(&wire, send(&wire, &mock, &ignored).await);
            assert_eq!(
                (text.as_str(), finish.as_deref()),
                ("one two three four", Some("stop")),
                "{case}"
            );
            // The directive's two words are prompt words too.
            assert_eq!(seen_usage, usage(8, 4), "{case}");
        }
    }
}

#[tokio::test]
async fn words_generates_an_answer_of_that_length() {
    let mock = start(MockConfig::default()).await;
    for wire in wires() {
        let request = ask("[[mock words=40]] ignored", true, json!({}));
        let (text, finish, seen_usage) = outcome(&wire, send(&wire, &mock, &request).await);
        assert_eq!(text, vec!["word"; 40].join(" "), "{}", wire.name());
        assert_eq!(finish.as_deref(), Some("stop"));
        assert_eq!(seen_usage, usage(5, 40), "{}", wire.name());
    }
}

#[tokio::test]
async fn over_context_prompts_are_refused_in_each_format() {
    let mock = start(MockConfig { context_words: 10, ..MockConfig::default() }).await;
    for wire in wires() {
        let fits = ask("one two three four five six seven eight", false, json!({}));
        outcome(&wire, send(&wire, &mock, &fits).await);
        let over = ask("one two three four five six seven eight nine", false, json!({}));
        let Seen::Failed { error, body } = send(&wire, &mock, &over).await else {
            panic!("{}: expected a refusal", wire.name())
        };
        assert_eq!((error.status.as_u16(), error.fallback), (400, false), "{}", wire.name());
        assert!(error.message.contains("prompt is too long: 11 tokens > 10 maximum"), "{error}");
        let shape = match wire.name() {
            "openai" => &body["error"]["code"],
            "anthropic" => &body["error"]["type"],
            "google" => &body["error"]["status"],
            _ => &body["message"],
        };
        let expected = match wire.name() {
            "openai" => "context_length_exceeded",
            "anthropic" => "invalid_request_error",
            "google" => "INVALID_ARGUMENT",
            _ => "prompt is too long: 11 tokens > 10 maximum",
        };
        assert_eq!(shape, expected, "{}: {body}", wire.name());
    }
}

#[tokio::test]
async fn models_unavailable_and_unknown_fail_in_each_format() {
    let mock = start(MockConfig::default()).await;
    for wire in wires() {
        for (model, status, fallback) in [("unavailable", 503, true), ("no-such-model", 404, false)]
        {
            let response = post_upstream(
                translate(&*wire.adapter, &wire.endpoint(&mock), &ask("x", true, json!({})), model)
                    .unwrap(),
            )
            .await;
            let status_seen = response.status();
            let headers = response.headers().clone();
            let error = wire.adapter.error(status_seen, &headers, &response.bytes().await.unwrap());
            assert_eq!(
                (error.status.as_u16(), error.fallback),
                (status, fallback),
                "{}: {error}",
                wire.name()
            );
        }
    }
}

#[tokio::test]
async fn cut_after_n_events_sends_n_events_and_no_terminal_event() {
    let mock = start(MockConfig::default()).await;
    for wire in wires() {
        let request = ask("[[mock words=10 cut_after=3]]", true, json!({}));
        let Seen::Broken { chunks, events, connection_dropped, .. } =
            send(&wire, &mock, &request).await
        else {
            panic!("{}: expected a broken stream", wire.name())
        };
        assert_eq!(events, 3, "{}", wire.name());
        assert!(connection_dropped, "{}", wire.name());
        assert!(
            chunks
                .iter()
                .all(|chunk| chunk.choices.iter().all(|choice| choice.finish_reason().is_none())),
            "{}",
            wire.name()
        );
        // A plain answer: half a body, then the close.
        let plain = ask("[[mock cut_after=0]] hello", false, json!({}));
        assert!(matches!(send(&wire, &mock, &plain).await, Seen::Truncated), "{}", wire.name());
    }
}

#[tokio::test]
async fn usage_modes_report_as_scripted() {
    let mock = start(MockConfig::default()).await;
    // The user text is the directive (2 words) and 4 words; the system prompt 2 words.
    let check = |directive: &'static str, plain: Usage, streamed: [Usage; 4]| {
        let mock = &mock;
        async move {
            for (wire, streamed) in wires().iter().zip(streamed) {
                let text = format!("{directive} a b c d");
                let (_, _, seen) =
                    outcome(wire, send(wire, mock, &ask(&text, false, json!({}))).await);
                assert_eq!(seen, plain, "{directive} {} plain", wire.name());
                let (_, _, seen) =
                    outcome(wire, send(wire, mock, &ask(&text, true, json!({}))).await);
                assert_eq!(seen, streamed, "{directive} {} streamed", wire.name());
            }
        }
    };
    check("[[mock usage=full]]", usage(8, 4), [usage(8, 4); 4]).await;
    check("[[mock usage=drop]]", Usage::default(), [Usage::default(); 4]).await;
    // Only the start's usage: the input and one output token, final usage missing.
    check("[[mock usage=partial]]", usage(8, 1), [usage(8, 1); 4]).await;
    check("[[mock usage=over:1.5]]", usage(12, 6), [usage(12, 6); 4]).await;
    check("[[mock usage=absurd]]", usage(8, ABSURD_TOKENS), [usage(8, ABSURD_TOKENS); 4]).await;
}

#[tokio::test]
async fn partial_usage_is_what_a_cut_stream_leaves() {
    let mock = start(MockConfig::default()).await;
    // Anthropic's message_start says the input; the cut loses message_delta.
    let wire = &wires()[1];
    let request = ask("[[mock words=50 cut_after=10]]", true, json!({}));
    let Seen::Broken { usage: seen, .. } = send(wire, &mock, &request).await else {
        panic!("expected a broken stream")
    };
    assert_eq!(seen, usage(5, 1));
}

#[tokio::test]
async fn status_and_invalid_directives_answer_in_the_format_shape() {
    let mock = start(MockConfig::default()).await;
    for wire in wires() {
        for stream in [false, true] {
            let request = ask("[[mock status=429]] hi", stream, json!({}));
            let Seen::Failed { error, .. } = send(&wire, &mock, &request).await else {
                panic!("{}: expected a 429", wire.name())
            };
            assert_eq!((error.status.as_u16(), error.fallback), (429, true), "{}", wire.name());
        }
        let request = ask("[[mock cut_after=soon]] hi", false, json!({}));
        let Seen::Failed { error, .. } = send(&wire, &mock, &request).await else {
            panic!("{}: expected a 400", wire.name())
        };
        assert_eq!(error.status.as_u16(), 400, "{}", wire.name());
        assert!(error.message.contains("invalid mock directive `cut_after=soon`"), "{error}");
    }
}

/// A body declared larger than the mock reads is refused with 413 before any of it is read,
/// and the mock lingers over what the client still sends, as a provider's front end does:
/// a client that reads the answer while it writes can go on writing (here 8 MiB), where a
/// close would reset the connection and could discard the answer unread.
#[tokio::test]
async fn a_body_too_large_is_refused_and_lingered_over() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = start(MockConfig::default()).await;
    let address = mock.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let declared = mock::MOCK_BODY_BYTES_MAX * 8;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\n\
         content-length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer)).await;
    let n = read.expect("answered before the body").unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let more = vec![b' '; 8 << 20];
    let written = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&more)).await;
    written.expect("the mock reads on").expect("no reset while the client still sends");
}

/// When each event arrived, in order, from the first byte of the stream.
async fn event_times(mock: &Mock, user: &str) -> (Instant, Vec<Instant>) {
    let wire = &wires()[0];
    let request =
        translate(&*wire.adapter, &wire.endpoint(mock), &ask(user, true, json!({})), "echo")
            .unwrap();
    let sent = Instant::now();
    let response = post_upstream(request).await;
    let mut body = response.bytes_stream();
    let mut times = Vec::new();
    while let Some(bytes) = body.next().await {
        let bytes = bytes.unwrap();
        let arrived = Instant::now();
        times.extend(bytes.windows(2).filter(|pair| pair == b"\n\n").map(|_| arrived));
    }
    (sent, times)
}

#[tokio::test]
async fn pause_stalls_before_the_named_event() {
    let mock = start(MockConfig::default()).await;
    let (sent, times) = event_times(&mock, "[[mock words=5 pause_ms=300 pause_after=2]]").await;
    // 5 words, the finish chunk, the usage chunk and [DONE].
    assert_eq!(times.len(), 8);
    // The first two events came in a read of their own, the third 300 ms later.
    assert!(times[1] < times[2]);
    assert!(times[2] - sent >= Duration::from_millis(300), "{:?}", times[2] - sent);
}

#[tokio::test]
async fn hang_never_answers() {
    let mock = start(MockConfig::default()).await;
    let wire = &wires()[0];
    let request = translate(
        &*wire.adapter,
        &wire.endpoint(&mock),
        &ask("[[mock hang]]", false, json!({})),
        "echo",
    )
    .unwrap();
    let sending = reqwest::Client::new()
        .post(&request.url)
        .headers(request.headers)
        .body(request.body)
        .send();
    assert!(tokio::time::timeout(Duration::from_millis(300), sending).await.is_err());
}

#[tokio::test]
async fn server_knobs_pace_and_fail_requests() {
    let paced = start(MockConfig {
        latency: Duration::from_millis(100),
        ttft: Duration::from_millis(100),
        tokens_per_second: 50,
        ..MockConfig::default()
    })
    .await;
    let (sent, times) = event_times(&paced, "one two three four five").await;
    assert_eq!(times.len(), 8);
    // Latency and time to first token, then 7 intervals of 20 ms (on a fixed schedule:
    // a late event makes the next ones catch up, so only totals are bounded).
    assert!(times[0] - sent >= Duration::from_millis(200), "{:?}", times[0] - sent);
    assert!(times[7] - sent >= Duration::from_millis(340), "{:?}", times[7] - sent);

    let failing = start(MockConfig {
        error_rates: vec![(http::StatusCode::SERVICE_UNAVAILABLE, 1.0)],
        ..MockConfig::default()
    })
    .await;
    for wire in wires() {
        let Seen::Failed { error, .. } = send(&wire, &failing, &ask("hi", true, json!({}))).await
        else {
            panic!("{}: expected a 503", wire.name())
        };
        assert_eq!(error.status.as_u16(), 503, "{}", wire.name());
    }

    let cutting = start(MockConfig { cut_rate: 1.0, seed: 3, ..MockConfig::default() }).await;
    for wire in wires() {
        let seen = send(&wire, &cutting, &ask("[[mock words=20]]", true, json!({}))).await;
        let Seen::Broken { events, connection_dropped, .. } = seen else {
            panic!("{}: expected a cut stream, got {seen:?}", wire.name())
        };
        assert!(connection_dropped && events >= 1, "{}", wire.name());
    }
}

/// Kills the process it holds when dropped, so a failing test leaves none behind.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `solrouter mock-upstream --listen 127.0.0.1:0` prints where it listens on stdout.
#[tokio::test]
async fn the_subcommand_serves_its_flags() {
    use std::io::BufRead;
    let mut process = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_solrouter"))
            .args([
                "mock-upstream",
                "--listen",
                "127.0.0.1:0",
                "--error-rate",
                "429=1",
                "--seed",
                "9",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = process.0.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let base = line.trim().strip_prefix("listening: ").unwrap().trim_end_matches("/v1").to_owned();
    let (stop, _) = tokio::sync::oneshot::channel();
    let mock = Mock { base, _stop: stop };
    let seen = send(&wires()[2], &mock, &ask("hi", false, json!({}))).await;
    let Seen::Failed { error, body } = seen else { panic!("expected a 429, got {seen:?}") };
    assert_eq!(error.status.as_u16(), 429);
    assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED");
}

/// Over TLS (`solrouter mock-upstream --tls-cert`) the mock serves HTTP/2 or HTTP/1.1 as
/// the client picks by ALPN, and the gateway's upstream client, trusting the CA by
/// `upstream_ca_file`, streams through it.
#[tokio::test]
async fn over_tls_the_mock_streams_http2_or_http1_by_alpn() {
    use http::Version;
    use solrouter_gateway::upstream::{next_chunk, Deadlines, Upstream};
    let (mock, directory) = start_tls(Knobs::default(), mock::H2_STREAMS_MAX_DEFAULT).await;
    let file = |name: &str| directory.path().join(name);
    let wire = &wires()[0];
    let chat = ask("say hello", true, json!({}));
    let request = || translate(&*wire.adapter, &wire.endpoint(&mock), &chat, "echo").unwrap();

    let ca = reqwest::Certificate::from_pem(&std::fs::read(file("ca.pem")).unwrap()).unwrap();
    let h2 = reqwest::Client::builder().add_root_certificate(ca.clone()).build().unwrap();
    let h1 = reqwest::Client::builder().add_root_certificate(ca).http1_only().build().unwrap();
    for (client, version) in [(h2, Version::HTTP_2), (h1, Version::HTTP_11)] {
        let request = request();
        let response =
            client.post(&request.url).headers(request.headers).body(request.body).send().await;
        let response = response.unwrap();
        assert_eq!(response.version(), version);
        let mut chunks = Vec::new();
        let mut translator = wire.adapter.stream(&chat);
        translator.feed(&response.bytes().await.unwrap(), &mut chunks).unwrap();
        translator.finish(&mut chunks).unwrap();
        assert_eq!(assemble_stream(&chunks).text, "say hello", "{version:?}");
    }

    let timeouts = upstream_timeouts();
    let upstream = Upstream::try_new(timeouts, Some(&file("ca.pem"))).unwrap();
    let deadlines = Deadlines::attempt(&timeouts, Instant::now() + timeouts.total);
    let mut body = upstream.send(&*wire.adapter, request(), &deadlines).await.unwrap();
    let (mut chunks, mut translator) = (Vec::new(), wire.adapter.stream(&chat));
    while let Some(bytes) = next_chunk(&mut body, &deadlines, "openai").await.unwrap() {
        translator.feed(&bytes, &mut chunks).unwrap();
    }
    translator.finish(&mut chunks).unwrap();
    assert_eq!(assemble_stream(&chunks).text, "say hello");
}

/// A mock over TLS with a dev CA's certificate (`solrouter dev-ca`'s `ledger.pem`) on a
/// free port, allowing `h2_streams_max` streams per HTTP/2 connection, and the directory
/// holding `ca.pem`.
async fn start_tls(knobs: Knobs, h2_streams_max: u32) -> (Mock, tempfile::TempDir) {
    let directory = tempfile::tempdir().unwrap();
    solrouter_raft::write_dev_ca(directory.path(), &["127.0.0.1".to_owned()]).unwrap();
    let file = |name: &str| directory.path().join(name);
    let tls = mock::MockTls::from_pem_files(&file("ledger.pem"), &file("ledger-key.pem")).unwrap();
    let tls = tls.with_h2_streams_max(h2_streams_max);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(mock::serve_tls(listener, knobs, tls, stopped));
    (Mock { base, _stop: stop }, directory)
}

fn upstream_timeouts() -> solrouter_gateway::config::UpstreamTimeouts {
    solrouter_gateway::config::UpstreamTimeouts {
        connect: Duration::from_secs(10),
        first_byte: Duration::from_secs(10),
        idle: Duration::from_secs(30),
        total: Duration::from_secs(30),
    }
}

/// More streams than an HTTP/2 host allows on one connection all get their response
/// heads at once: the upstream client carries the rest on another connection instead of
/// queueing them until the first ones end (hyper's client alone queues them, and the
/// streams here last ~10 s). Arriving together at a host the gateway has not reached
/// before, they open a connection per lane they take (and one that learned the
/// protocol), not one each (the client negotiating by ALPN opened one per exchange that
/// found none idle: here ~150).
#[tokio::test]
async fn streams_beyond_a_hosts_concurrent_stream_limit_are_not_queued() {
    use solrouter_gateway::upstream::{Deadlines, Upstream, LANE_EXCHANGES_MAX};
    let paced = MockConfig { tokens_per_second: 2, ..MockConfig::default() };
    let limit = u32::try_from(LANE_EXCHANGES_MAX).unwrap();
    let (host, directory) = start_tls(Knobs::try_new(paced).unwrap(), limit).await;
    let (mock, opened) = counting_relay(host).await;
    let timeouts = upstream_timeouts();
    let upstream = Upstream::try_new(timeouts, Some(&directory.path().join("ca.pem"))).unwrap();
    let wire = &wires()[0];
    let chat = ask("one two three four five six seven eight nine ten", true, json!({}));
    let deadlines = Deadlines::attempt(&timeouts, Instant::now() + timeouts.total);
    let streams = LANE_EXCHANGES_MAX * 3 / 2;
    let heads = futures_util::future::join_all((0..streams).map(|_| {
        let request = translate(&*wire.adapter, &wire.endpoint(&mock), &chat, "echo").unwrap();
        upstream.send(&*wire.adapter, request, &deadlines)
    }));
    let bodies = tokio::time::timeout(Duration::from_secs(5), heads)
        .await
        .expect("streams past the host's limit waited for earlier ones to end");
    assert!(bodies.iter().all(Result::is_ok), "every stream was answered");
    let lanes = streams.div_ceil(LANE_EXCHANGES_MAX);
    let opened = opened.load(std::sync::atomic::Ordering::Relaxed);
    assert!(opened <= lanes + 1, "{opened} connections opened for {streams} streams");
}

/// A TCP relay on a free port of 127.0.0.1 in front of `mock` (an `https://127.0.0.1:…`
/// mock: its certificate holds for the relay's address too), counting the connections
/// opened through it.
async fn counting_relay(mock: Mock) -> (Mock, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let target = mock.base.strip_prefix("https://").unwrap().to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&opened);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _mock = mock;
        let relaying = async {
            while let Ok((mut client, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let target = target.clone();
                tokio::spawn(async move {
                    let mut server = tokio::net::TcpStream::connect(target).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        };
        tokio::select! { _ = relaying => {}, _ = stopped => {} }
    });
    (Mock { base, _stop: stop }, opened)
}
