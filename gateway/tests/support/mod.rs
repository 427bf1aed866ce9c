//! Test harness: starts the real `solrouter` binary on a free port with a temporary data
//! directory, reads what it prints, and kills it when dropped (also on a panic).

use serde_json::Value;
use solrouter_gateway::mock::{self, Knobs, MockConfig};
use solrouter_ledger::PicoUsd;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Longest a server may take to print its listening line: a debug build opening a
/// fresh sled database and electing itself takes well under a second; CI machines are
/// slow and shared.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a `solrouter` process (dev, or a ledger node of the cluster tests) may take to
/// stop after SIGTERM: dev's shutdown drains the history's writes and stops the ledger's
/// thread, a ledger node's first hands its groups over.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines the child prints before it listens (admin token, demo account, demo key,
/// endpoint) fit many times over.
const STDOUT_LINES_MAX: usize = 64;
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// What a test that drives a Python or npm package says when the package is missing.
pub const TEST_ENV_HINT: &str = "install the SDK test dependencies with \
     `gateway/tests/setup-test-env.sh` (the first half of the README's test command)";

/// The virtual environment of `gateway/tests/requirements.txt` (in `target/`).
pub const MAIN_VENV: &str = "test-venv";
/// The virtual environment of `gateway/tests/requirements-openai2.txt`: the libraries
/// that still require `openai` 2 (in `target/`).
pub const OPENAI2_VENV: &str = "test-venv-openai2";

/// The python of `venv` (`MAIN_VENV` or `OPENAI2_VENV`), a virtual environment
/// `gateway/tests/setup-test-env.sh` creates in `target/`.
pub fn venv_python(venv: &str) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
    let python = repo.join("target").join(venv).join("bin/python");
    assert!(python.exists(), "{} is missing: {TEST_ENV_HINT}", python.display());
    python
}

/// Longest a test's Python script may run before the test fails (and the script is killed).
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs `gateway/tests/<script>` with the python of `MAIN_VENV` and `env`; fails the test,
/// showing both outputs, unless the script exits successfully within `SCRIPT_TIMEOUT` and
/// prints `ok_line`. Returns its stdout.
pub async fn run_python(script: &str, env: &[(&str, &str)], ok_line: &str) -> String {
    let python = venv_python(MAIN_VENV);
    let mut command = tokio::process::Command::new(&python);
    command.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join(script));
    command.envs(env.iter().copied()).kill_on_drop(true);
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("{script}: no result within {SCRIPT_TIMEOUT:?}"))
        .unwrap_or_else(|error| panic!("running {}: {error}; {TEST_ENV_HINT}", python.display()));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{script} failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains(ok_line), "{script} did not print {ok_line:?}:\n{stdout}");
    stdout
}

/// A running `solrouter dev` process.
pub struct Dev {
    child: Child,
    pub base: String,
    /// The demo key, printed only by the first start on a data directory.
    pub demo_key: Option<String>,
    pub demo_account: String,
    pub client: reqwest::Client,
}

impl Dev {
    /// Starts `solrouter dev` on `data_dir` with extra environment variables.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Dev {
        let mut command = Command::new(env!("CARGO_BIN_EXE_solrouter"));
        command
            .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("SOLROUTER_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .env_remove("OPENAI_API_KEY")
            .env_remove("SOLROUTER_OPENAI_BASE_URL")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("spawning solrouter");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines, received) = mpsc::sync_channel(STDOUT_LINES_MAX);
        // Ends when the receiver is gone (after startup); the child then gets EPIPE on
        // stdout, which it ignores: it prints only while starting.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let mut dev = Dev {
            child,
            base: String::new(),
            demo_key: None,
            demo_account: String::new(),
            client: reqwest::Client::new(),
        };
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        while dev.base.is_empty() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line =
                received.recv_timeout(left).expect("solrouter printed no listening line in time");
            let field = |prefix: &str| {
                line.strip_prefix(prefix).and_then(|rest| rest.split(' ').next()).map(str::to_owned)
            };
            if let Some(key) = field("demo key: ") {
                dev.demo_key = Some(key);
            } else if let Some(account) = field("demo account: ") {
                dev.demo_account = account;
            } else if let Some(url) = field("listening: ") {
                dev.base = url.trim_end_matches("/v1/api").to_owned();
            }
        }
        dev
    }

    /// Stops the process with SIGTERM: see [`terminate`].
    pub fn terminate(mut self) {
        terminate(&mut self.child);
    }

    /// Kills the process with SIGKILL (no shutdown code runs) and reaps it.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends the chat endpoint `body` with `key` by `client`: the response, its body unread.
    pub async fn post_chat(
        &self,
        client: &reqwest::Client,
        key: &str,
        body: &Value,
    ) -> reqwest::Response {
        let request = client.post(self.url("/v1/api/chat/completions")).bearer_auth(key);
        let request = request.header("content-type", "application/json");
        request.body(serde_json::to_vec(body).expect("json")).send().await.expect("request")
    }

    /// A request with the given key and JSON body to the chat endpoint.
    pub async fn chat(&self, key: &str, body: &Value) -> (u16, Value) {
        let response = self.post_chat(&self.client, key, body).await;
        let status = response.status().as_u16();
        (status, read_json(response).await)
    }

    /// A streamed completion: the parsed `data:` events, and whether `[DONE]` ended it.
    pub async fn chat_stream(&self, key: &str, body: &Value) -> (Vec<Value>, bool) {
        let response = self.post_chat(&self.client, key, body).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let text = response.text().await.expect("body");
        let mut events = Vec::new();
        let mut done = false;
        for data in text.split("\n\n").filter_map(|event| event.strip_prefix("data: ")) {
            assert!(!done, "an event followed [DONE]");
            if data == "[DONE]" {
                done = true;
            } else {
                events.push(serde_json::from_str(data).expect("event is JSON"));
            }
        }
        (events, done)
    }

    /// A POST with a raw body and an optional bearer key.
    pub async fn post_raw(
        &self,
        path: &str,
        bearer: Option<&str>,
        body: reqwest::Body,
    ) -> (u16, Value) {
        let mut request = self.client.post(self.url(path)).body(body);
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, read_json(response).await)
    }

    pub async fn get(&self, path: &str, bearer: &str) -> (u16, Value) {
        let response =
            self.client.get(self.url(path)).bearer_auth(bearer).send().await.expect("request");
        let status = response.status().as_u16();
        (status, read_json(response).await)
    }

    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.client.request(method, self.url(path)).bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, read_json(response).await)
    }

    /// The admin view of an account.
    pub async fn account(&self, account: &str) -> Value {
        let (status, body) =
            self.admin(reqwest::Method::GET, &format!("/v1/admin/accounts/{account}"), None).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Creates an account with `credit` USD and a key; returns (account id, key).
    pub async fn funded_account(&self, credit: &str) -> (String, String) {
        let (status, created) = self
            .admin(
                reqwest::Method::POST,
                "/v1/admin/accounts",
                Some(serde_json::json!({"name": "test"})),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        let account = created["id"].as_str().expect("id").to_owned();
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                &format!("/v1/admin/accounts/{account}/credits"),
                Some(serde_json::json!({"amount": credit, "idempotency_key": format!("seed-{account}")})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let key = self.create_key(&account).await.1;
        (account, key)
    }

    /// Creates a key; returns (key id, key).
    pub async fn create_key(&self, account: &str) -> (String, String) {
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                &format!("/v1/admin/accounts/{account}/keys"),
                Some(serde_json::json!({"name": "test key"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (body["id"].as_str().expect("id").to_owned(), body["key"].as_str().expect("key").to_owned())
    }

    pub async fn audit_ok(&self) {
        let (status, audit) = self.admin(reqwest::Method::GET, "/v1/admin/audit", None).await;
        assert_eq!(status, 200);
        assert_eq!(audit["ok"], true, "{audit}");
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `child` SIGTERM, so its shutdown code runs, and waits until it has exited, with
/// success. Fails if it has not exited within `STOP_TIMEOUT`, so a shutdown that hangs
/// fails its test instead of hanging the run.
pub fn terminate(child: &mut Child) {
    let pid = rustix::process::Pid::from_child(child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let deadline = std::time::Instant::now() + STOP_TIMEOUT;
    let exited = loop {
        if let Some(status) = child.try_wait().expect("waiting for solrouter") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running {STOP_TIMEOUT:?} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exited.success(), "solrouter exited with {exited} after SIGTERM");
}

/// A response body as JSON; `null` when it is not JSON.
pub async fn read_json(response: reqwest::Response) -> Value {
    let bytes = response.bytes().await.expect("body");
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// A fresh data directory, removed when dropped.
pub fn data_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

pub fn path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().to_path_buf()
}

/// A decimal USD string (possibly negative) in pico-USD.
pub fn pico(usd: &Value) -> i128 {
    let text = usd.as_str().expect("USD string");
    match text.strip_prefix('-') {
        Some(positive) => -(PicoUsd::parse_usd(positive).expect("USD").0 as i128),
        None => PicoUsd::parse_usd(text).expect("USD").0 as i128,
    }
}

/// A `usage.cost` JSON number in pico-USD. Costs of test requests have at most 12
/// decimals and few significant digits, so rounding recovers the exact amount.
pub fn cost_pico(cost: &Value) -> i128 {
    let usd = cost.as_f64().expect("cost is a number");
    assert!(usd >= 0.0);
    (usd * 1e12).round() as i128
}

pub fn user(text: &str) -> Value {
    serde_json::json!([{"role": "user", "content": text}])
}

/// A mock upstream in this process answering every model as `echo`, stopped when
/// dropped.
pub struct Mock {
    pub base: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub async fn start_mock() -> Mock {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = MockConfig { echo_any_model: true, ..MockConfig::default() };
    tokio::spawn(mock::serve_with(listener, Knobs::try_new(config).expect("knobs"), stopped));
    Mock { base, _stop: stop }
}

/// `solrouter dev` whose real providers all answer from `mock`.
pub fn dev_over(dir: &tempfile::TempDir, mock: &Mock) -> Dev {
    let openai = format!("{}/v1", mock.base);
    Dev::start(
        &path(dir),
        &[
            ("OPENAI_API_KEY", "sk-mock"),
            ("SOLROUTER_OPENAI_BASE_URL", &openai),
            ("ANTHROPIC_API_KEY", "sk-mock"),
            ("SOLROUTER_ANTHROPIC_BASE_URL", &mock.base),
            ("GEMINI_API_KEY", "sk-mock"),
            ("SOLROUTER_GOOGLE_BASE_URL", &mock.base),
            ("COHERE_API_KEY", "sk-mock"),
            ("SOLROUTER_COHERE_BASE_URL", &mock.base),
        ],
    )
}
