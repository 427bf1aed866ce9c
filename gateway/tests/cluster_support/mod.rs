//! Harness for cluster tests: real `solrouter ledger` and `solrouter gateway` processes on
//! 127.0.0.1 with free ports and temporary data directories. Every process is killed
//! when its handle is dropped (also on a panic), so a failing test leaves nothing behind.

use serde_json::{json, Value};
pub use solrouter_raft::free_local_port as free_port;
use solrouter_raft::{
    TlsConfig, DEV_CA_CERT, DEV_CLIENT_CERT, DEV_CLIENT_KEY, DEV_LEDGER_CERT, DEV_LEDGER_KEY,
};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

/// Longest a process may take to print its listening line: a debug build opening sled
/// and connecting to its peers takes well under a second; CI machines are slow and shared.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines a process prints before it listens fit many times over.
const STDOUT_LINES_MAX: usize = 64;
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// The dashboard's session secret, shared by the test gateways.
pub const SESSION_SECRET: &str = "test-session-secret-0123456789abcdef";
/// Raft groups of the test clusters: more than one, so routing by account matters.
pub const N_GROUPS: u32 = 2;
/// Bounded polling for eventual conditions: attempts × interval = 60 s.
pub const POLL_ATTEMPTS_MAX: u32 = 1_200;
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The test clusters' development CA and certificates, written once per test binary under
/// cargo's temporary directory: every ledger, gateway and `ledger-admin` the tests start
/// talks mutual TLS.
fn tls_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cluster-tls");
        solrouter_raft::write_dev_ca(&dir, &["127.0.0.1".to_owned()]).expect("dev CA");
        dir
    })
}

/// The `SOLROUTER_TLS_*` variables naming the CA and the certificate `cert` with `key`.
fn tls_env(cert: &str, key: &str) -> [(&'static str, String); 3] {
    let file = |name: &str| tls_dir().join(name).display().to_string();
    [
        ("SOLROUTER_TLS_CA", file(DEV_CA_CERT)),
        ("SOLROUTER_TLS_CERT", file(cert)),
        ("SOLROUTER_TLS_KEY", file(key)),
    ]
}

/// What a gateway or an operator presents to the test clusters.
pub fn client_tls() -> TlsConfig {
    let dir = tls_dir();
    let (ca, cert, key) =
        (dir.join(DEV_CA_CERT), dir.join(DEV_CLIENT_CERT), dir.join(DEV_CLIENT_KEY));
    TlsConfig::from_files(&ca, &cert, &key).expect("client TLS")
}

/// A child process, killed and reaped on drop.
pub struct Process {
    child: Child,
}

impl Process {
    /// Spawns `solrouter ARGS…` and returns it with the first stdout line that starts with
    /// `ready_prefix`.
    fn spawn(args: &[String], env: &[(&str, String)], ready_prefix: &str) -> (Process, String) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_solrouter"));
        command
            .args(args)
            .env("RUST_LOG", "warn,openraft=off")
            .envs(env.iter().map(|(name, value)| (*name, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("spawning solrouter");
        let stdout = child.stdout.take().expect("piped stdout");
        let process = Process { child };
        let (lines, received) = mpsc::sync_channel(STDOUT_LINES_MAX);
        // Ends when the receiver is gone (after startup); the child then gets EPIPE on
        // stdout, which it ignores: it prints only while starting.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = received.recv_timeout(left).unwrap_or_else(|_| {
                panic!("solrouter {args:?} printed no line starting {ready_prefix:?} in time")
            });
            if line.starts_with(ready_prefix) {
                return (process, line);
            }
        }
    }

    /// Stops the process with SIGTERM: see [`crate::support::terminate`].
    pub fn terminate(&mut self) {
        crate::support::terminate(&mut self.child);
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How to start one ledger node (kept to restart it the same way).
pub struct LedgerSpec {
    pub id: u64,
    pub grpc: String,
    /// The founding members; `None` starts the node with `--join`.
    pub peers: Option<String>,
    pub data_dir: PathBuf,
}

pub struct LedgerProcess {
    pub process: Process,
    pub http: String,
}

impl LedgerSpec {
    pub fn start(&self) -> LedgerProcess {
        let mut args: Vec<String> =
            ["ledger", "--id", &self.id.to_string(), "--listen", &self.grpc]
                .map(str::to_owned)
                .into();
        match &self.peers {
            Some(peers) => args.extend(["--peers".to_owned(), peers.clone()]),
            None => args.push("--join".to_owned()),
        }
        let data_dir = self.data_dir.display().to_string();
        let groups = N_GROUPS.to_string();
        args.extend(
            ["--groups", &groups, "--data-dir", &data_dir, "--http", "127.0.0.1:0"]
                .map(str::to_owned),
        );
        let env = tls_env(DEV_LEDGER_CERT, DEV_LEDGER_KEY);
        let (process, line) = Process::spawn(&args, &env, "ledger node ");
        let http = line.rsplit("http ").next().expect("http address").to_owned();
        LedgerProcess { process, http }
    }
}

/// Specs of a three-node cluster on free ports, with data under `root`.
pub fn ledger_specs(root: &Path) -> Vec<LedgerSpec> {
    let grpc: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let peers: Vec<String> =
        grpc.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect();
    let peers = peers.join(",");
    (0..3)
        .map(|i| LedgerSpec {
            id: i as u64 + 1,
            grpc: grpc[i].clone(),
            peers: Some(peers.clone()),
            data_dir: root.join(format!("ledger-{}", i + 1)),
        })
        .collect()
}

pub fn seeds(specs: &[LedgerSpec]) -> Vec<String> {
    specs.iter().map(|spec| spec.grpc.clone()).collect()
}

/// Runs `solrouter ledger-admin --ledger SEEDS ARGS…` to completion; its stdout.
pub fn ledger_admin(seeds: &[String], args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_solrouter"))
        .args(["ledger-admin", "--ledger", &seeds.join(",")])
        .args(args)
        .env("RUST_LOG", "warn,openraft=off")
        .envs(tls_env(DEV_CLIENT_CERT, DEV_CLIENT_KEY))
        .stdin(Stdio::null())
        .output()
        .expect("running solrouter ledger-admin");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "ledger-admin {args:?} failed: {stdout}{stderr}");
    stdout
}

/// A `solrouter gateway --mock` process.
pub struct Gateway {
    /// Held for its drop, which stops the gateway.
    _process: Process,
    pub endpoint: Endpoint,
}

impl Gateway {
    pub fn start(seeds: &[String]) -> Gateway {
        let args = [
            "gateway".to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--ledger".to_owned(),
            seeds.join(","),
            "--mock".to_owned(),
        ];
        let mut env = vec![
            ("SOLROUTER_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
            ("SOLROUTER_SESSION_SECRET", SESSION_SECRET.to_owned()),
        ];
        env.extend(tls_env(DEV_CLIENT_CERT, DEV_CLIENT_KEY));
        let (process, line) = Process::spawn(&args, &env, "listening: ");
        let base = line["listening: ".len()..].trim_end_matches("/v1/api");
        Gateway { _process: process, endpoint: Endpoint::new(base) }
    }
}

/// A gateway reachable at `base`, however it was started. Cheap to clone.
#[derive(Clone)]
pub struct Endpoint {
    pub base: String,
    pub client: reqwest::Client,
}

impl Endpoint {
    pub fn new(base: &str) -> Endpoint {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client");
        Endpoint { base: base.to_owned(), client }
    }

    /// A chat completion; `None` when the request failed below HTTP (connection refused).
    pub async fn chat(&self, key: &str, body: &Value) -> Option<(u16, Value)> {
        let response = self
            .client
            .post(format!("{}/v1/api/chat/completions", self.base))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, read_json(response).await))
    }

    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}/v1/admin/{path}", self.base))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, read_json(response).await)
            }
            Err(_) => (0, Value::Null),
        }
    }

    /// Creates an account with `credit` USD (under an idempotency key) and a key.
    pub async fn funded_account(&self, credit: &str) -> (String, String) {
        let (status, created) =
            self.admin(reqwest::Method::POST, "accounts", Some(json!({"name": "test"}))).await;
        assert_eq!(status, 201, "{created}");
        let account = created["id"].as_str().expect("id").to_owned();
        assert_eq!(self.top_up(&account, credit, &format!("seed-{account}")).await, 200);
        let (_, key) = self.create_key(&account).await;
        (account, key)
    }

    /// Creates a key of `account`; returns (key id, key).
    pub async fn create_key(&self, account: &str) -> (String, String) {
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                &format!("accounts/{account}/keys"),
                Some(json!({"name": "test key"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let field = |name: &str| body[name].as_str().expect("a string field").to_owned();
        (field("id"), field("key"))
    }

    /// A top-up under an idempotency key; the status (0: no HTTP answer).
    pub async fn top_up(&self, account: &str, usd: &str, idempotency_key: &str) -> u16 {
        let body = json!({"amount": usd, "idempotency_key": idempotency_key});
        self.admin(reqwest::Method::POST, &format!("accounts/{account}/credits"), Some(body))
            .await
            .0
    }

    pub async fn account(&self, account: &str) -> Value {
        let (status, body) =
            self.admin(reqwest::Method::GET, &format!("accounts/{account}"), None).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn audit(&self) -> Value {
        let (status, body) = self.admin(reqwest::Method::GET, "audit", None).await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

pub async fn read_json(response: reqwest::Response) -> Value {
    let bytes = response.bytes().await.unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// Polls an HTTP URL until it answers 200, at most `POLL_ATTEMPTS_MAX` times.
pub async fn wait_http_ok(url: &str) {
    let client = reqwest::Client::new();
    for _ in 0..POLL_ATTEMPTS_MAX {
        if client.get(url).send().await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    panic!("{url} never answered 200");
}

/// A decimal USD string (possibly negative) in pico-USD.
pub fn pico(usd: &Value) -> i128 {
    let text = usd.as_str().expect("USD string");
    let parse = |text: &str| solrouter_ledger::PicoUsd::parse_usd(text).expect("USD").0 as i128;
    match text.strip_prefix('-') {
        Some(positive) => -parse(positive),
        None => parse(text),
    }
}

/// A `usage.cost` JSON number in pico-USD. Costs of test requests have at most 12
/// decimals and few significant digits, so rounding recovers the exact amount.
pub fn cost_pico(cost: &Value) -> i128 {
    let usd = cost.as_f64().expect("cost is a number");
    assert!(usd >= 0.0);
    (usd * 1e12).round() as i128
}
