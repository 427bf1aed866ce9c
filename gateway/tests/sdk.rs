//! The official client SDKs against a real `solrouter dev` whose every provider is a
//! fixture upstream serving recorded provider traffic from `tests/fixtures`: the
//! `openai` Python package, the `openai` npm package, the Vercel AI SDK (`ai` with
//! `@ai-sdk/openai-compatible`, and `@ai-sdk/openai` for `embed` and `embedMany` on
//! `mock/embed`), through Chat Completions, the `openai` Python and npm
//! packages through the Responses API, and the `anthropic` Python
//! package and `@anthropic-ai/sdk` npm package, through Anthropic Messages (Claude
//! answered natively, the others translated); and the client libraries that take the
//! gateway as an OpenAI-compatible base URL: LangChain (`langchain-openai`), LlamaIndex
//! (`OpenAILike`), Instructor and the OpenAI Agents SDK, the Python ones sharing
//! `tests/sdk/sdk_common.py`. Each drives the cases of
//! `tests/sdk/cases.json` of the kinds it is given (`SDK_KINDS`) — streamed text, streamed
//! tool calls, structured output and an image input, to each wire format
//! (OpenAI-compatible, Anthropic, Gemini, Cohere) — and checks the answers against the
//! recordings, `usage.cost` against the generation records, and the balance.
//! This file checks what reached the providers, that each cost is the catalogue price
//! of the recorded usage, and the ledger.
//!
//! The packages come from `requirements.txt`, `requirements-openai2.txt` and
//! `tests/sdk/package-lock.json`, installed by `setup-test-env.sh` (the README's test
//! command runs it; Python's into the venvs `target/test-venv` and
//! `target/test-venv-openai2`); a missing package fails the test, never skips it.

use crate::providers_support::fixture_upstream::{FixtureUpstream, Recording, Route, Shape, HOSTS};
use crate::providers_support::{fixture_json, FIXTURES_DIR};
use crate::support::{
    data_dir, path, pico, venv_python, Dev, ADMIN_TOKEN, MAIN_VENV, OPENAI2_VENV, TEST_ENV_HINT,
};
use serde::Deserialize;
use serde_json::{Map, Value};
use solrouter_ledger::PicoUsd;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const SDK_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk");
/// The most one SDK script may take for all its cases: a few seconds on a warm
/// machine; Node's first start and a shared CI machine are slow.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);
/// Credit of each SDK's account, far above the worst-case holds of the cases.
const CREDIT_USD: &str = "20.00";
/// Every case kind of cases.json.
const EVERY_KIND: [&str; 4] = ["stream_text", "stream_tools", "structured", "image"];
/// The cases of [`EVERY_KIND`] the Anthropic SDKs skip, as their scripts say why: the
/// DeepSeek case wants just a JSON object, which Anthropic's `output_config.format`
/// cannot ask for, and Claude Sonnet 4 (served natively, `output_config` as sent) has
/// no structured outputs, the recording being the forced-tool answer the Chat
/// Completions translation gets. The Gemini case goes through `output_config.format`,
/// translated (see `messages.rs`).
const ANTHROPIC_SKIPS: [&str; 2] = ["openai-compatible/structured", "anthropic/structured"];
/// The kinds the OpenAI Agents SDK drives: an agent run streams text and tool calls,
/// and answers an image or a Pydantic `output_type` (see [`agents_sdk_requests`]).
const AGENTS_KINDS: [&str; 4] = ["stream_text", "stream_tools", "structured", "image"];
/// The kinds Instructor drives: a Pydantic model out of structured output.
const INSTRUCTOR_KINDS: [&str; 1] = ["structured"];

#[derive(Deserialize)]
struct Spec {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    id: String,
    kind: String,
    model: String,
    provider: String,
    upstream_model: String,
    recording: Option<RecordingSpec>,
    recorded_request: Option<RecordedRequest>,
    #[serde(default)]
    upstream_expects: Map<String, Value>,
    expect: Value,
}

#[derive(Deserialize)]
struct RecordingSpec {
    file: String,
    format: String,
}

#[derive(Deserialize)]
struct RecordedRequest {
    file: String,
    compare: Vec<String>,
}

fn spec() -> Spec {
    let text = std::fs::read(format!("{SDK_DIR}/cases.json")).expect("tests/sdk/cases.json");
    serde_json::from_slice(&text).expect("cases.json is valid")
}

/// The request shape a case's kind produces.
fn shape(kind: &str) -> Shape {
    let none = Shape { stream: false, tools: false, structured: false, image: false };
    match kind {
        "stream_text" => Shape { stream: true, ..none },
        "stream_tools" => Shape { stream: true, tools: true, ..none },
        "structured" => Shape { structured: true, ..none },
        "image" => Shape { image: true, ..none },
        other => panic!("unknown case kind {other}"),
    }
}

/// What one SDK's requests hold that the recordings' clients did not send, as a change
/// to a case's `(JSON pointer, value)` expectations of the upstream request.
type Expecting = fn(case: &str, expect: &mut [(String, Value)]);

/// The Agents SDK names every output schema `final_output` (the Anthropic adapter names
/// its forced tool after it), and sends every image part with OpenAI's default
/// `detail: "auto"` (passed through to OpenAI-compatible hosts).
fn agents_sdk_requests(case: &str, expect: &mut [(String, Value)]) {
    for (at, value) in expect {
        match (case, at.as_str()) {
            ("anthropic/structured", "/tools/0/name" | "/tool_choice/name") => {
                *value = Value::from("final_output");
            }
            ("openai-compatible/image", "/messages") => {
                let parts =
                    value.as_array_mut().into_iter().flatten().filter_map(|message| {
                        message.get_mut("content").and_then(Value::as_array_mut)
                    });
                for part in parts.flatten() {
                    if let Some(Value::Object(image)) = part.get_mut("image_url") {
                        image.insert("detail".to_owned(), Value::from("auto"));
                    }
                }
            }
            _ => {}
        }
    }
}

/// The route of a case with a recording: its answer, and what the translated request
/// must hold (the case's own expectations and the recorded request's values, as
/// `expecting` changes them).
fn route(case: &Case, expecting: Expecting) -> Option<Route> {
    let recording = case.recording.as_ref()?;
    let format = match recording.format.as_str() {
        "json" => Recording::Json,
        "sse" => Recording::Sse,
        "chunks" => Recording::Chunks,
        other => panic!("{}: unknown recording format {other}", case.id),
    };
    let (content_type, body) = format.load(&recording.file);
    let mut expect: Vec<(String, Value)> =
        case.upstream_expects.iter().map(|(at, value)| (at.clone(), value.clone())).collect();
    if let Some(recorded) = &case.recorded_request {
        let request = fixture_json(&recorded.file);
        for at in &recorded.compare {
            let value = request.pointer(at).unwrap_or_else(|| panic!("{}: no {at}", recorded.file));
            expect.push((at.clone(), value.clone()));
        }
    }
    expecting(&case.id, &mut expect);
    Some(Route {
        name: case.id.clone(),
        shape: shape(&case.kind),
        upstream_model: case.upstream_model.clone(),
        content_type,
        body,
        expect,
    })
}

/// The cases one SDK script drives: those of its kinds but the ones it skips.
struct Driven<'a> {
    kinds: &'a [&'a str],
    skips: &'a [&'a str],
}

impl Driven<'_> {
    fn drives(&self, case: &Case) -> bool {
        self.kinds.contains(&case.kind.as_str()) && !self.skips.contains(&case.id.as_str())
    }
}

/// `solrouter dev` with every provider pointed at its own fixture upstream.
struct Gateway {
    dev: Dev,
    upstreams: Vec<FixtureUpstream>,
    spec: Spec,
    _dir: tempfile::TempDir,
}

impl Gateway {
    async fn start() -> Gateway {
        Gateway::start_expecting(|_, _| {}).await
    }

    /// A gateway whose upstreams expect what `expecting` says one SDK sends.
    async fn start_expecting(expecting: Expecting) -> Gateway {
        let spec = spec();
        let mut routes: BTreeMap<&str, Vec<Route>> = BTreeMap::new();
        for case in &spec.cases {
            if let Some(route) = route(case, expecting) {
                let same_shape = routes.entry(&case.provider).or_default();
                assert!(
                    same_shape.iter().all(|other| other.shape != route.shape),
                    "{}: two cases of one provider need different shapes",
                    case.id
                );
                same_shape.push(route);
            }
        }
        // Every provider gets an upstream, so nothing can reach a real one.
        let mut upstreams = Vec::new();
        for host in &HOSTS {
            let host_routes = routes.remove(host.provider).unwrap_or_default();
            upstreams.push(FixtureUpstream::start(host, host_routes).await);
        }
        assert!(routes.is_empty(), "cases name unknown providers: {:?}", routes.keys());
        let env: Vec<(&str, String)> = upstreams.iter().flat_map(FixtureUpstream::env).collect();
        let env: Vec<(&str, &str)> =
            env.iter().map(|(name, value)| (*name, value.as_str())).collect();
        let dir = data_dir();
        let dev = Dev::start(&path(&dir), &env);
        Gateway { dev, upstreams, spec, _dir: dir }
    }

    /// Runs one SDK script as a fresh customer (an account and key made through the
    /// admin API) and checks everything around it; `program` and `args` start it.
    async fn run_sdk(&self, sdk: &str, program: &Path, args: &[&str], kinds: &[&str]) {
        self.run_sdk_skipping(sdk, program, args, kinds, &[]).await;
    }

    /// [`Gateway::run_sdk`] for an SDK that cannot express the cases `skips` names, whose
    /// script skips them: they must reach no provider and have no result.
    async fn run_sdk_skipping(
        &self,
        sdk: &str,
        program: &Path,
        args: &[&str],
        kinds: &[&str],
        skips: &[&str],
    ) {
        let driven = Driven { kinds, skips };
        let (account, key) = self.dev.funded_account(CREDIT_USD).await;
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .current_dir(SDK_DIR)
            .env("SOLROUTER_BASE_URL", &self.dev.base)
            .env("SOLROUTER_KEY", &key)
            .env("SOLROUTER_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("SOLROUTER_ACCOUNT", &account)
            .env("SDK_CASES", format!("{SDK_DIR}/cases.json"))
            .env("SDK_FIXTURES", FIXTURES_DIR)
            .env("SDK_KINDS", kinds.join(","))
            .kill_on_drop(true);
        let output = tokio::time::timeout(SCRIPT_TIMEOUT, command.output())
            .await
            .unwrap_or_else(|_| panic!("{sdk}: no result within {SCRIPT_TIMEOUT:?}"))
            .unwrap_or_else(|error| {
                panic!("{sdk}: cannot run `{}`: {error}; {TEST_ENV_HINT}", program.display())
            });
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let transcript = format!("{sdk}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        self.check_upstreams(&transcript, &driven);
        assert!(output.status.success(), "{transcript}");
        let results = stdout
            .lines()
            .find_map(|line| line.strip_prefix("RESULTS "))
            .unwrap_or_else(|| panic!("no RESULTS line: {transcript}"));
        let results: Vec<Value> = serde_json::from_str(results).expect("RESULTS is JSON");
        // Answers outside the cases (a stream broken on purpose), each `{id, cost}`.
        let others: Vec<Value> = stdout
            .lines()
            .find_map(|line| line.strip_prefix("OTHERS "))
            .map_or_else(Vec::new, |others| serde_json::from_str(others).expect("OTHERS is JSON"));
        self.check_costs(&account, &key, &results, &others, &driven).await;
        self.dev.audit_ok().await;
        println!("{}", stdout.lines().last().unwrap_or_default());
    }

    /// Every request reached the provider its case names, on its real endpoint, with
    /// the configured key and the expected translation, exactly once per case; a case
    /// the gateway must refuse (or one not driven) reached nobody.
    fn check_upstreams(&self, transcript: &str, driven: &Driven<'_>) {
        let mut problems = Vec::new();
        let mut answered: BTreeMap<String, usize> = BTreeMap::new();
        for upstream in &self.upstreams {
            for hit in upstream.hits() {
                for problem in &hit.problems {
                    problems.push(format!(
                        "{} {}: {problem}",
                        upstream.host.provider, hit.path_and_query
                    ));
                }
                if let Some(route) = hit.route {
                    *answered.entry(route).or_default() += 1;
                }
            }
        }
        for case in &self.spec.cases {
            let n_hits = answered.remove(&case.id).unwrap_or(0);
            let wanted = usize::from(case.recording.is_some() && driven.drives(case));
            if n_hits != wanted {
                problems
                    .push(format!("{}: {n_hits} upstream requests, expected {wanted}", case.id));
            }
        }
        assert!(problems.is_empty(), "upstream requests:\n{}\n\n{transcript}", problems.join("\n"));
    }

    /// Each answer's record: the case's model, and a cost that is the catalogue price
    /// (from `/v1/api/models`) of the recorded usage; the account spent their sum.
    async fn check_costs(
        &self,
        account: &str,
        key: &str,
        results: &[Value],
        others: &[Value],
        driven: &Driven<'_>,
    ) {
        let (status, models) = self.dev.get("/v1/api/models", key).await;
        assert_eq!(status, 200, "{models}");
        let pricing: BTreeMap<&str, &Value> = models["data"]
            .as_array()
            .expect("model list")
            .iter()
            .map(|model| (model["id"].as_str().expect("id"), &model["pricing"]))
            .collect();
        let answered: Vec<&Case> = self
            .spec
            .cases
            .iter()
            .filter(|case| case.expect.get("error").is_none() && driven.drives(case))
            .collect();
        assert_eq!(results.len(), answered.len(), "one result per answered case: {results:?}");
        let mut spent = 0i128;
        for (case, result) in answered.iter().zip(results) {
            assert_eq!(result["case"], case.id.as_str());
            let id = result["id"].as_str().expect("generation id");
            let (status, record) = self.dev.get(&format!("/v1/api/generation?id={id}"), key).await;
            assert_eq!(status, 200, "{}: {record}", case.id);
            let record = &record["data"];
            assert_eq!(record["model"], case.model.as_str(), "{}", case.id);
            let usage = &case.expect["usage"];
            let tokens = |field: &str| usage[field].as_u64().expect("token count") as u128;
            assert_eq!(record["tokens_prompt"], usage["prompt_tokens"], "{}", case.id);
            assert_eq!(record["tokens_completion"], usage["completion_tokens"], "{}", case.id);
            assert_eq!(record["native_tokens_reasoning"], usage["reasoning_tokens"], "{}", case.id);
            assert_eq!(record["native_tokens_cached"], usage["cached_tokens"], "{}", case.id);
            let price = |kind: &str| {
                let prices = pricing[case.model.as_str()];
                let per_token = prices.get(kind).or_else(|| prices.get("prompt")).expect("price");
                PicoUsd::parse_usd(per_token.as_str().expect("price string")).expect("USD").0
            };
            let (prompt, cached) = (tokens("prompt_tokens"), tokens("cached_tokens"));
            let expected = (prompt - cached) * price("prompt")
                + cached * price("input_cache_read")
                + tokens("completion_tokens") * price("completion");
            let cost = pico(&record["cost_usd"]);
            assert_eq!(cost, expected as i128, "{}: cost of {record}", case.id);
            assert_eq!(pico(&result["cost"]), cost, "{}: the SDK's cost", case.id);
            if let Some(billed) = case.expect.get("cost") {
                assert_eq!(cost, pico(billed), "{}: the provider's own bill", case.id);
            }
            spent += cost;
        }
        let account = self.dev.account(account).await;
        for other in others {
            let id = other["id"].as_str().expect("generation id");
            let (status, record) = self.dev.get(&format!("/v1/api/generation?id={id}"), key).await;
            assert_eq!(status, 200, "{record}");
            assert_eq!(pico(&record["data"]["cost_usd"]), pico(&other["cost"]), "{record}");
            spent += pico(&other["cost"]);
        }
        assert_eq!(pico(&account["spent"]), spent, "{account}");
        assert_eq!(pico(&account["held"]), 0, "{account}");
    }
}

/// Fails, naming the fix, unless the Node packages of `package.json` are installed at
/// exactly the pinned versions and Node is 20 or newer.
fn require_node_packages() {
    let output = std::process::Command::new("node")
        .arg("--version")
        .output()
        .unwrap_or_else(|error| panic!("cannot run `node` (Node 20 or newer is needed): {error}"));
    let version = String::from_utf8_lossy(&output.stdout);
    let major: u32 = version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .unwrap_or(0);
    assert!(major >= 20, "Node 20 or newer is needed, found {version}");
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(format!("{SDK_DIR}/package.json")).expect("package.json"),
    )
    .expect("package.json is JSON");
    for (package, pinned) in manifest["dependencies"].as_object().expect("dependencies") {
        let installed = Path::new(SDK_DIR).join("node_modules").join(package).join("package.json");
        let installed: Option<Value> =
            std::fs::read(&installed).ok().and_then(|text| serde_json::from_slice(&text).ok());
        let version = installed.as_ref().map(|installed| &installed["version"]);
        assert_eq!(
            version,
            Some(pinned),
            "npm package {package} {pinned} is not installed: {TEST_ENV_HINT}"
        );
    }
}

#[tokio::test]
async fn the_official_python_sdk_through_every_wire_format() {
    let python = python_with(MAIN_VENV, "openai");
    let gateway = Gateway::start().await;
    gateway.run_sdk("openai (Python)", &python, &["openai_python.py"], &EVERY_KIND).await;
}

#[tokio::test]
async fn the_official_python_sdk_through_the_responses_api() {
    let python = python_with(MAIN_VENV, "openai");
    let gateway = Gateway::start().await;
    let script = ["openai_responses_python.py"];
    gateway.run_sdk("openai Responses (Python)", &python, &script, &EVERY_KIND).await;
}

#[tokio::test]
async fn the_official_node_sdk_through_every_wire_format() {
    require_node_packages();
    let gateway = Gateway::start().await;
    gateway.run_sdk("openai (Node)", Path::new("node"), &["openai_node.mjs"], &EVERY_KIND).await;
}

#[tokio::test]
async fn the_official_node_sdk_through_the_responses_api() {
    require_node_packages();
    let gateway = Gateway::start().await;
    let script = ["openai_responses_node.mjs"];
    gateway.run_sdk("openai Responses (Node)", Path::new("node"), &script, &EVERY_KIND).await;
}

#[tokio::test]
async fn the_vercel_ai_sdk_through_every_wire_format() {
    require_node_packages();
    let gateway = Gateway::start().await;
    gateway.run_sdk("Vercel AI SDK", Path::new("node"), &["vercel_ai.mjs"], &EVERY_KIND).await;
}

#[tokio::test]
async fn the_official_anthropic_python_sdk_through_every_wire_format() {
    let python = python_with(MAIN_VENV, "anthropic");
    let gateway = Gateway::start().await;
    let script = ["anthropic_python.py"];
    let sdk = "anthropic (Python)";
    gateway.run_sdk_skipping(sdk, &python, &script, &EVERY_KIND, &ANTHROPIC_SKIPS).await;
}

/// The python of `venv` (see `support::venv_python`), failing with the fix unless it
/// imports `module`.
fn python_with(venv: &str, module: &str) -> std::path::PathBuf {
    let python = venv_python(venv);
    let probe = std::process::Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .output()
        .unwrap_or_else(|error| panic!("cannot run `{}`: {error}", python.display()));
    assert!(probe.status.success(), "the Python `{module}` package is missing: {TEST_ENV_HINT}");
    python
}

#[tokio::test]
async fn langchain_through_every_wire_format() {
    let python = python_with(MAIN_VENV, "langchain_openai");
    let gateway = Gateway::start().await;
    gateway.run_sdk("LangChain", &python, &["langchain_python.py"], &EVERY_KIND).await;
}

#[tokio::test]
async fn the_official_anthropic_node_sdk_through_every_wire_format() {
    require_node_packages();
    let gateway = Gateway::start().await;
    let (sdk, script) = ("anthropic (Node)", ["anthropic_node.mjs"]);
    let node = Path::new("node");
    gateway.run_sdk_skipping(sdk, node, &script, &EVERY_KIND, &ANTHROPIC_SKIPS).await;
}

#[tokio::test]
async fn the_openai_agents_sdk_through_every_wire_format() {
    let python = python_with(MAIN_VENV, "agents");
    let gateway = Gateway::start_expecting(agents_sdk_requests).await;
    gateway.run_sdk("OpenAI Agents SDK", &python, &["agents_python.py"], &AGENTS_KINDS).await;
}

#[tokio::test]
async fn llamaindex_through_every_wire_format() {
    let python = python_with(OPENAI2_VENV, "llama_index.llms.openai_like");
    let gateway = Gateway::start().await;
    gateway.run_sdk("LlamaIndex", &python, &["llamaindex_python.py"], &EVERY_KIND).await;
}

#[tokio::test]
async fn instructor_through_every_wire_format() {
    let python = python_with(OPENAI2_VENV, "instructor");
    let gateway = Gateway::start().await;
    gateway.run_sdk("Instructor", &python, &["instructor_python.py"], &INSTRUCTOR_KINDS).await;
}
