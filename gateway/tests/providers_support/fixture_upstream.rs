//! A fixture upstream: one provider's host on 127.0.0.1, answering that provider's real
//! endpoint path with recorded bytes from `tests/fixtures`. Which recording answers
//! is chosen per request by its [`Shape`] (streamed or not, tools, structured output,
//! images), read from the translated request the way the provider would read it. Every
//! request is checked (path, credentials, model, and what its route expects of the body)
//! and logged, so a test can assert both what reached the provider and what came back.

use super::{fixture, reply, serve, Received};
use bytes::Bytes;
use serde_json::Value;
use std::sync::{Arc, Mutex};

/// The wire formats of the provider adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    OpenAi,
    Anthropic,
    Google,
    Cohere,
}

/// A provider host as the gateway is configured for it.
#[derive(Debug)]
pub struct Host {
    pub provider: &'static str,
    pub wire: Wire,
    /// What the provider's own base URL adds to the host (`/v1` for OpenAI).
    pub base_path: &'static str,
    pub base_url_var: &'static str,
    pub key_var: &'static str,
}

/// Every configurable provider, with the base URL its own SDK takes.
pub const HOSTS: [Host; 9] = [
    host("openai", Wire::OpenAi, "/v1", "SOLROUTER_OPENAI_BASE_URL", "OPENAI_API_KEY"),
    host("anthropic", Wire::Anthropic, "", "SOLROUTER_ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY"),
    host("google", Wire::Google, "", "SOLROUTER_GOOGLE_BASE_URL", "GEMINI_API_KEY"),
    host("cohere", Wire::Cohere, "", "SOLROUTER_COHERE_BASE_URL", "COHERE_API_KEY"),
    host("mistral", Wire::OpenAi, "", "SOLROUTER_MISTRAL_BASE_URL", "MISTRAL_API_KEY"),
    host("deepseek", Wire::OpenAi, "", "SOLROUTER_DEEPSEEK_BASE_URL", "DEEPSEEK_API_KEY"),
    host("xai", Wire::OpenAi, "/v1", "SOLROUTER_XAI_BASE_URL", "XAI_API_KEY"),
    host("perplexity", Wire::OpenAi, "", "SOLROUTER_PERPLEXITY_BASE_URL", "PERPLEXITY_API_KEY"),
    host("groq", Wire::OpenAi, "/openai/v1", "SOLROUTER_GROQ_BASE_URL", "GROQ_API_KEY"),
];

const fn host(
    provider: &'static str,
    wire: Wire,
    base_path: &'static str,
    base_url_var: &'static str,
    key_var: &'static str,
) -> Host {
    Host { provider, wire, base_path, base_url_var, key_var }
}

/// What kind of request a provider received, as far as choosing a recording goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    pub stream: bool,
    pub tools: bool,
    pub structured: bool,
    pub image: bool,
}

impl Shape {
    /// The shape of `request`, read in `wire`'s format.
    pub fn of(wire: Wire, request: &Received) -> Shape {
        let body = &request.body;
        let non_empty = |value: &Value| value.as_array().is_some_and(|items| !items.is_empty());
        match wire {
            Wire::OpenAi | Wire::Cohere => Shape {
                stream: body["stream"] == true,
                tools: non_empty(&body["tools"]),
                structured: body["response_format"].is_object()
                    && body["response_format"]["type"] != "text",
                image: parts(&body["messages"], "content").any(|part| part["type"] == "image_url"),
            },
            Wire::Anthropic => {
                // Structured output is either native (`output_format`) or, for older
                // models, one forced tool carrying the schema.
                let forced_tool = body["tool_choice"]["type"] == "tool";
                Shape {
                    stream: body["stream"] == true,
                    tools: non_empty(&body["tools"]) && !forced_tool,
                    structured: forced_tool
                        || body.get("output_format").is_some_and(|format| !format.is_null()),
                    image: parts(&body["messages"], "content").any(|part| part["type"] == "image"),
                }
            }
            Wire::Google => {
                let config = &body["generationConfig"];
                Shape {
                    stream: request.path_and_query.contains(":streamGenerateContent"),
                    tools: non_empty(&body["tools"]),
                    structured: config["responseMimeType"] == "application/json"
                        || config.get("responseJsonSchema").is_some()
                        || config.get("responseSchema").is_some(),
                    image: parts(&body["contents"], "parts").any(|part| {
                        part.get("inlineData").is_some() || part.get("fileData").is_some()
                    }),
                }
            }
        }
    }
}

/// The content parts of every message (`field` holds a message's parts).
fn parts<'a>(messages: &'a Value, field: &'a str) -> impl Iterator<Item = &'a Value> {
    messages
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(move |message| message[field].as_array().into_iter().flatten())
}

/// One recorded answer and what a request must look like to deserve it.
#[derive(Debug, Clone)]
pub struct Route {
    /// Names the route in logs and failures.
    pub name: String,
    pub shape: Shape,
    /// The provider's model name the request must carry.
    pub upstream_model: String,
    pub content_type: &'static str,
    pub body: Bytes,
    /// `(JSON pointer, expected value)` pairs the request body must hold.
    pub expect: Vec<(String, Value)>,
}

/// How a recording is stored in `tests/fixtures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recording {
    /// A JSON response body.
    Json,
    /// A raw SSE body, served byte for byte.
    Sse,
    /// A `*.chunks.txt` file: one `data:` payload per line.
    Chunks,
}

impl Recording {
    /// The content type and body to serve for the recording in `file`.
    pub fn load(self, file: &str) -> (&'static str, Bytes) {
        match self {
            Recording::Json => ("application/json", Bytes::from(fixture(file))),
            Recording::Sse => ("text/event-stream", Bytes::from(fixture(file))),
            Recording::Chunks => ("text/event-stream", Bytes::from(super::chunks_as_sse(file))),
        }
    }
}

/// One request the upstream received.
#[derive(Debug, Clone)]
pub struct Hit {
    pub path_and_query: String,
    /// The route that answered; `None` when no recording fits (answered 404).
    pub route: Option<String>,
    /// What was wrong with the request (empty when it was as expected).
    pub problems: Vec<String>,
}

/// A running fixture upstream for one provider host.
pub struct FixtureUpstream {
    pub host: &'static Host,
    pub base_url: String,
    pub api_key: String,
    log: Arc<Mutex<Vec<Hit>>>,
}

impl FixtureUpstream {
    pub async fn start(host: &'static Host, routes: Vec<Route>) -> FixtureUpstream {
        let api_key = format!("test-key-{}", host.provider);
        let log = Arc::new(Mutex::new(Vec::new()));
        let (sink, key) = (Arc::clone(&log), api_key.clone());
        let address = serve(move |request| {
            let (response, hit) = answer(host, &key, &routes, &request);
            sink.lock().unwrap().push(hit);
            response
        })
        .await;
        FixtureUpstream {
            host,
            base_url: format!("http://{address}{}", host.base_path),
            api_key,
            log,
        }
    }

    /// The gateway's environment for this host: base URL and a dummy key.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [(self.host.base_url_var, self.base_url.clone()), (self.host.key_var, self.api_key.clone())]
    }

    /// Every request received so far, in order.
    pub fn hits(&self) -> Vec<Hit> {
        self.log.lock().unwrap().clone()
    }
}

fn answer(
    host: &Host,
    key: &str,
    routes: &[Route],
    request: &Received,
) -> (http::Response<http_body_util::Full<Bytes>>, Hit) {
    let shape = Shape::of(host.wire, request);
    let mut problems = Vec::new();
    let model = match endpoint(host, &request.path_and_query, shape.stream) {
        Ok(Some(model)) => model,
        Ok(None) => request.body["model"].as_str().unwrap_or_default().to_owned(),
        Err(problem) => {
            problems.push(problem);
            String::new()
        }
    };
    if let Err(problem) = credentials(host.wire, key, &request.headers) {
        problems.push(problem);
    }
    let Some(route) = routes.iter().find(|route| route.shape == shape) else {
        problems.push(format!("no recording for a request of shape {shape:?}: {}", request.body));
        let hit = Hit { path_and_query: request.path_and_query.clone(), route: None, problems };
        let body = Bytes::from(r#"{"error":{"message":"no recording fits this request"}}"#);
        return (reply(404, "application/json", body), hit);
    };
    if model != route.upstream_model {
        problems.push(format!("model `{model}`, expected `{}`", route.upstream_model));
    }
    for (pointer, expected) in &route.expect {
        match request.body.pointer(pointer) {
            Some(actual) if same(actual, expected) => {}
            actual => problems.push(format!("{pointer}: {actual:?}, expected {expected}")),
        }
    }
    let hit = Hit {
        path_and_query: request.path_and_query.clone(),
        route: Some(route.name.clone()),
        problems,
    };
    (reply(200, route.content_type, route.body.clone()), hit)
}

/// Checks the path is the provider's real endpoint; for Gemini, whose model is in the
/// path, returns the model.
fn endpoint(host: &Host, path_and_query: &str, stream: bool) -> Result<Option<String>, String> {
    let expected = match host.wire {
        // Mistral's SDK takes the bare host and adds the API version itself.
        Wire::OpenAi if host.provider == "mistral" => "/v1/chat/completions".to_owned(),
        Wire::OpenAi => format!("{}/chat/completions", host.base_path),
        Wire::Anthropic => "/v1/messages".to_owned(),
        Wire::Cohere => "/v2/chat".to_owned(),
        Wire::Google => {
            let method = if stream { "streamGenerateContent?alt=sse" } else { "generateContent" };
            let model = path_and_query
                .strip_prefix("/v1beta/models/")
                .and_then(|rest| rest.strip_suffix(method))
                .and_then(|rest| rest.strip_suffix(':'))
                .ok_or_else(|| {
                    format!("path {path_and_query}, expected /v1beta/models/…:{method}")
                })?;
            return Ok(Some(model.to_owned()));
        }
    };
    if path_and_query == expected {
        Ok(None)
    } else {
        Err(format!("path {path_and_query}, expected {expected}"))
    }
}

/// Checks the request authenticates the way the provider wants, with the configured key.
fn credentials(wire: Wire, key: &str, headers: &http::HeaderMap) -> Result<(), String> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let (name, expected) = match wire {
        Wire::OpenAi | Wire::Cohere => ("authorization", format!("Bearer {key}")),
        Wire::Anthropic => {
            if header("anthropic-version").is_none() {
                return Err("no anthropic-version header".to_owned());
            }
            ("x-api-key", key.to_owned())
        }
        Wire::Google => ("x-goog-api-key", key.to_owned()),
    };
    match header(name) {
        Some(value) if value == expected => Ok(()),
        value => Err(format!("header {name}: {value:?}, expected {expected:?}")),
    }
}

/// JSON equality where numbers compare by value (`0` equals `0.0`) and base64 payloads
/// compare by the bytes they encode (Google's own SDK sends the URL-safe alphabet).
pub fn same(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::String(a), Value::String(b)) => a == b || base64_equal(a, b),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(key, a)| b.get(key).is_some_and(|b| same(a, b)))
        }
        _ => actual == expected,
    }
}

/// Whether two long strings are the same base64 payload in the standard and URL-safe
/// alphabets.
fn base64_equal(a: &str, b: &str) -> bool {
    const PAYLOAD_MIN: usize = 64;
    let standard = |text: &str| text.replace('-', "+").replace('_', "/");
    a.len() == b.len()
        && a.len() >= PAYLOAD_MIN
        && a.bytes()
            .chain(b.bytes())
            .all(|byte| byte.is_ascii_alphanumeric() || b"+/-_=".contains(&byte))
        && standard(a) == standard(b)
}
