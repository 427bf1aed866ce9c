// Each test binary uses a different subset of these helpers.

//! Shared harness for the provider replay tests: a real HTTP server on 127.0.0.1 that
//! answers every request with recorded bytes and remembers what it was sent, and a
//! client that drives an adapter through it the way the pipeline does.

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Map, Value};
use solrouter_gateway::providers::{
    Adapter, ChatBody, ChatRequest, Chunk, Completion, Endpoint, ParamError, Target, UpstreamError,
    UpstreamRequest, Usage,
};
use std::sync::{Arc, Mutex};

pub mod fixture_upstream;

/// The recorded provider traffic, in the repository (see its README.md and SOURCES.md).
pub const FIXTURES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

pub fn fixture(relative: &str) -> Vec<u8> {
    let path = format!("{FIXTURES_DIR}/{relative}");
    std::fs::read(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

pub fn fixture_json(relative: &str) -> Value {
    serde_json::from_slice(&fixture(relative)).unwrap()
}

/// A `*.chunks.txt` fixture (one `data:` payload per line) as the SSE body it came from.
pub fn chunks_as_sse(relative: &str) -> Vec<u8> {
    let text = String::from_utf8(fixture(relative)).unwrap();
    let mut body = Vec::new();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        body.extend_from_slice(b"data: ");
        body.extend_from_slice(line.as_bytes());
        body.extend_from_slice(b"\n\n");
    }
    body
}

/// An HTTP/1.1 and HTTP/2 server on a free 127.0.0.1 port that answers every request
/// with `respond`, for as long as the test's runtime lives. The request body is read
/// whole and parsed as JSON (`null` when it is not JSON).
pub async fn serve<F>(respond: F) -> std::net::SocketAddr
where
    F: Fn(Received) -> http::Response<Full<Bytes>> + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let respond = Arc::clone(&respond);
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let respond = Arc::clone(&respond);
                async move {
                    let path_and_query = request.uri().path_and_query().unwrap().to_string();
                    let headers = request.headers().clone();
                    let sent = request.into_body().collect().await.unwrap().to_bytes();
                    let body = serde_json::from_slice(&sent).unwrap_or(Value::Null);
                    let response = respond(Received { path_and_query, headers, body });
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let builder = auto::Builder::new(TokioExecutor::new());
                // A client hanging up early is not this test's concern.
                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    address
}

/// A response with `status`, `content_type` and `body`.
pub fn reply(status: u16, content_type: &str, body: Bytes) -> http::Response<Full<Bytes>> {
    let mut response = http::Response::new(Full::new(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response.headers_mut().insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
    response
}

/// What the replay server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Value,
}

/// A server that answers every request with `status`, `content_type` and `body`.
pub struct Replay {
    pub base_url: String,
    received: Arc<Mutex<Option<Received>>>,
}

impl Replay {
    pub async fn start(
        status: u16,
        content_type: &'static str,
        extra_headers: &[(&'static str, &'static str)],
        body: Vec<u8>,
    ) -> Replay {
        let received = Arc::new(Mutex::new(None));
        let body = Bytes::from(body);
        let extra_headers = extra_headers.to_vec();
        let sink = Arc::clone(&received);
        let address = serve(move |request| {
            *sink.lock().unwrap() = Some(request);
            let mut response = reply(status, content_type, body.clone());
            for (name, value) in &extra_headers {
                response.headers_mut().insert(*name, value.parse().unwrap());
            }
            response
        })
        .await;
        Replay { base_url: format!("http://{address}/v1"), received }
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint { base_url: self.base_url.clone(), api_key: Some("test-key".to_owned()) }
    }

    pub fn received(&self) -> Received {
        self.received.lock().unwrap().clone().expect("the server received a request")
    }
}

pub fn chat(body: Value) -> ChatRequest {
    let Value::Object(body) = body else { panic!("request body must be an object") };
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let max_tokens = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64);
    // As the Chat Completions codec keeps it: the client's text.
    let body = ChatBody::from_text(serde_json::to_vec(&body).expect("serializable").into());
    ChatRequest { body, stream, max_tokens, native: None }
}

/// The completion limit these tests forward when the client set none (the pipeline
/// forwards the model's output limit; see `RequestContext::target`).
pub const MAX_TOKENS_UNSET: u64 = 8192;

/// Translates `chat` for `upstream_model` as the pipeline does: the completion limit
/// forwarded is the client's, or [`MAX_TOKENS_UNSET`].
pub fn translate(
    adapter: &dyn Adapter,
    endpoint: &Endpoint,
    chat: &ChatRequest,
    upstream_model: &str,
) -> Result<UpstreamRequest, ParamError> {
    let max_tokens = chat.max_tokens.unwrap_or(MAX_TOKENS_UNSET);
    adapter.request(
        endpoint,
        chat,
        &Target { upstream_model, max_tokens, controls: Default::default() },
    )
}

/// Sends a translated request as the gateway's upstream client would.
pub async fn post_upstream(request: UpstreamRequest) -> reqwest::Response {
    reqwest::Client::new()
        .post(&request.url)
        .headers(request.headers)
        .body(request.body)
        .send()
        .await
        .unwrap()
}

/// What one exchange produced, after translation.
#[derive(Debug)]
pub enum Outcome {
    Complete(Completion),
    Streamed { chunks: Vec<Chunk>, usage: Usage },
    Failed(UpstreamError),
}

/// Sends `chat` through `adapter` to `endpoint` and translates the answer, streaming
/// the body through the translator chunk by chunk as it arrives.
pub async fn exchange(
    adapter: &dyn Adapter,
    endpoint: &Endpoint,
    chat: &ChatRequest,
    upstream_model: &str,
) -> Outcome {
    let response = post_upstream(translate(adapter, endpoint, chat, upstream_model).unwrap()).await;
    let status = response.status();
    if !status.is_success() {
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap();
        return Outcome::Failed(adapter.error(status, &headers, &body));
    }
    if !chat.stream {
        let body = response.bytes().await.unwrap();
        return match adapter.response(chat, &body) {
            Ok(completion) => Outcome::Complete(completion),
            Err(error) => Outcome::Failed(error),
        };
    }
    let mut translator = adapter.stream(chat);
    let mut chunks = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(bytes) = body.next().await {
        if let Err(error) = translator.feed(&bytes.unwrap(), &mut chunks) {
            return Outcome::Failed(error);
        }
    }
    if let Err(error) = translator.finish(&mut chunks) {
        return Outcome::Failed(error);
    }
    Outcome::Streamed { chunks, usage: translator.usage() }
}

/// The assistant message a client would assemble: text, reasoning, tool calls
/// (`(id, name, arguments)`) and the finish reason.
#[derive(Debug, Default, PartialEq)]
pub struct Assembled {
    pub text: String,
    pub reasoning: String,
    pub tool_calls: Vec<(String, String, String)>,
    pub finish_reason: Option<String>,
}

pub fn assemble_completion(completion: &Completion) -> Assembled {
    assert_eq!(completion.choices.len(), 1, "one choice expected");
    let choice = &serde_json::to_value(&completion.choices[0]).unwrap();
    let message = &choice["message"];
    let mut assembled = Assembled {
        text: message["content"].as_str().unwrap_or_default().to_owned(),
        reasoning: message["reasoning"].as_str().unwrap_or_default().to_owned(),
        finish_reason: choice["finish_reason"].as_str().map(str::to_owned),
        ..Assembled::default()
    };
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        assembled.tool_calls.push((
            call["id"].as_str().unwrap().to_owned(),
            call["function"]["name"].as_str().unwrap().to_owned(),
            call["function"]["arguments"].as_str().unwrap().to_owned(),
        ));
    }
    assembled
}

pub fn assemble_stream(chunks: &[Chunk]) -> Assembled {
    let mut assembled = Assembled::default();
    for chunk in chunks {
        for choice in &chunk.choices {
            let choice = serde_json::to_value(choice).unwrap();
            assert_eq!(choice["index"], 0, "one choice expected");
            let delta = &choice["delta"];
            assembled.text.push_str(delta["content"].as_str().unwrap_or_default());
            assembled.reasoning.push_str(delta["reasoning"].as_str().unwrap_or_default());
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                let call_idx = call["index"].as_u64().unwrap() as usize;
                if call_idx == assembled.tool_calls.len() {
                    assembled.tool_calls.push(Default::default());
                }
                let entry = &mut assembled.tool_calls[call_idx];
                entry.0.push_str(call["id"].as_str().unwrap_or_default());
                entry.1.push_str(call["function"]["name"].as_str().unwrap_or_default());
                entry.2.push_str(call["function"]["arguments"].as_str().unwrap_or_default());
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                assembled.finish_reason = Some(reason.to_owned());
            }
        }
    }
    assembled
}

/// A body with one field replaced: `with(body, "model", "x")`.
pub fn with(body: &Value, field: &str, value: Value) -> Value {
    let mut object: Map<String, Value> = body.as_object().unwrap().clone();
    object.insert(field.to_owned(), value);
    Value::Object(object)
}
