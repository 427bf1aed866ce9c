//! `solrouter dev`: a gateway, a one-node ledger and the mock provider in one process,
//! with a funded demo account on first start. The mock is two hosts: `mock` (fast) and
//! `mock-slow` (a slower mock), which both serve `mock/shared` at different prices, so
//! that provider routing can be tried without any key.

use crate::app::App;
use crate::bank::Bank;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::health::Health;
use crate::keys;
use crate::mock::{Knobs, MockConfig};
use crate::providers::{Providers, MOCK_PROVIDER, MOCK_SLOW_PROVIDER};
use crate::upstream::Upstream;
use crate::web::Web;
use crate::{mock, payments, server, telemetry};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use solrouter_ledger::{AccountId, KeyId, KeyKind, KeyLimits, PicoUsd, Rejection};
use solrouter_raft::{IdleWrite, LedgerNode, NodeOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

/// The slow mock host's time to first token and pace (`mock-slow`).
pub const MOCK_SLOW_TTFT: Duration = Duration::from_millis(100);
pub const MOCK_SLOW_TOKENS_PER_SECOND: u32 = 50;

/// The demo account's starting credit, in whole USD.
pub const DEMO_CREDIT_USD: u64 = 5;
/// Records, in the data directory, that the demo account exists, so a restart creates
/// no second one. Written before the account is created (state `pending`) and again
/// after its key was printed (`created`): a crash in between resumes with the same
/// account id and idempotent operations instead of starting over.
const DEMO_MARKER_FILE: &str = "dev-demo.json";
/// The ledger's own directory inside the data directory.
const LEDGER_DIR: &str = "ledger";
/// The dashboard's session signing secret, generated on first start when none is
/// configured (`SOLROUTER_SESSION_SECRET`), so sessions survive a restart.
const SESSION_SECRET_FILE: &str = "session-secret";

#[derive(Serialize, Deserialize)]
struct DemoMarker {
    account: u64,
    created: bool,
}

/// Runs dev mode until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = telemetry::init_metrics()?;
    let data_dir = config.data_dir().to_path_buf();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let (node, ledger_thread) = LedgerThread::open(data_dir.join(LEDGER_DIR)).await?;
    let bank = Bank::new(node.clone());
    let (stop, stopped) = watch::channel(false);
    let mock_listener =
        TcpListener::bind("127.0.0.1:0").await.context("binding the mock upstream")?;
    let mock_url = format!("http://{}/v1", mock_listener.local_addr()?);
    let mock_task = tokio::spawn(mock::serve(mock_listener, wait_for(stopped.clone())));
    let slow_listener =
        TcpListener::bind("127.0.0.1:0").await.context("binding the slow mock upstream")?;
    let slow_url = format!("http://{}/v1", slow_listener.local_addr()?);
    let slow = MockConfig {
        ttft: MOCK_SLOW_TTFT,
        tokens_per_second: MOCK_SLOW_TOKENS_PER_SECOND,
        ..MockConfig::default()
    };
    let slow_task = tokio::spawn(mock::serve_with(
        slow_listener,
        Knobs::try_new(slow).context("the slow mock's knobs")?,
        wait_for(stopped.clone()),
    ));
    let admin_token = match config.admin_token() {
        Some(token) => token.to_owned(),
        None => {
            let token = keys::random_token();
            say(&format!(
                "admin token: {token} (generated; set SOLROUTER_ADMIN_TOKEN to choose one)"
            ));
            token
        }
    };
    ensure_demo_account(&bank, &data_dir).await?;
    let webhook_secret = match config.webhook_secret() {
        Some(secret) => secret.to_owned(),
        None => {
            let (secret, path) =
                payments::dev_secret(&data_dir).context("making the webhook secret")?;
            say(&format!(
                "payments webhook secret: in {} (generated; set SOLROUTER_WEBHOOK_SECRET \
                 to choose one)",
                path.display()
            ));
            secret
        }
    };
    let secret = match config.session_secret() {
        Some(secret) => secret.to_owned(),
        None => {
            let path = data_dir.join(SESSION_SECRET_FILE);
            keys::stored_secret(&path, "").with_context(|| format!("reading {}", path.display()))?
        }
    };
    let catalog =
        Catalog::builtin().with_zdr_agreements(config.zdr_hosts()).context("zdr_hosts")?;
    let app = App {
        upstream: Upstream::try_new(config.upstream(), config.upstream_ca_file())
            .context("building the upstream client")?,
        providers: Providers::with_mocks(&[
            (MOCK_PROVIDER, Some(mock_url)),
            (MOCK_SLOW_PROVIDER, Some(slow_url)),
        ]),
        health: Health::new(&catalog),
        catalog,
        config,
        admin_token,
        webhook_secret: Some(webhook_secret),
        bank,
        metrics,
        requests: telemetry::RequestMetrics::default(),
        web: Web::new(secret.as_bytes(), true),
    }
    .leak();
    let serving = serve_until_stopped(app).await?;
    let _ = stop.send(true);
    let _ = mock_task.await;
    let _ = slow_task.await;
    node.shutdown().await.context("shutting down the ledger")?;
    ledger_thread.join().await;
    serving.context("serving")
}

/// The one-node ledger's thread, with a runtime of its own: its Raft core, batcher and
/// state machine run there, as they would in a ledger process, instead of among the
/// tasks that serve HTTP. Each commit passes through the core several times in turn, and
/// among the gateway's tasks at `wrk -c50` each turn waited for a worker: the core started
/// an append ~100 µs after it was proposed. A log write that finds the log's writer idle
/// is committed on this thread ([`IdleWrite::CommittedByWriter`]): the sync blocks only
/// the ledger, and no thread is woken to write it and back. Together these took `wrk -c50`
/// from 15.1–17.4 k to 17.6–18.3 k req/s plain and 11.6–11.7 k to 12.8–13.2 k streamed
/// (docs/benchmarks.md, "Session 53" and "Session 54").
struct LedgerThread {
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl LedgerThread {
    /// Opens the ledger in `dir` on a thread of its own.
    async fn open(dir: PathBuf) -> anyhow::Result<(LedgerNode, LedgerThread)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the ledger's runtime")?;
        let (opened_tx, opened) = oneshot::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ledger".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let options =
                        NodeOptions::default().with_idle_log_write(IdleWrite::CommittedByWriter);
                    let _ = opened_tx.send(LedgerNode::open_single_with(&dir, &options).await);
                    // The node's tasks run until the gateway has shut it down (or it
                    // failed to open and `stop` is gone).
                    let _ = stopped.await;
                });
            })
            .context("starting the ledger's thread")?;
        let node = opened.await.context("the ledger's thread ended")?;
        let node = node.context("opening the ledger")?;
        Ok((node, LedgerThread { stop, thread }))
    }

    /// Ends the thread, after [`LedgerNode::shutdown`], and waits until it has.
    async fn join(self) {
        drop(self.stop);
        let thread = self.thread;
        // It ended by its own panic if it did not end cleanly; that was printed.
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// Creates and funds the demo account once per data directory, and prints its key.
async fn ensure_demo_account(bank: &Bank, data_dir: &Path) -> anyhow::Result<()> {
    let marker_path = data_dir.join(DEMO_MARKER_FILE);
    let account = match read_marker(&marker_path)? {
        Some(DemoMarker { account, created: true }) => {
            say(&format!("demo account: {account:016x} (its key was printed on first start)"));
            return Ok(());
        }
        Some(DemoMarker { account, created: false }) => AccountId(account),
        None => {
            let account = AccountId(keys::random_u64());
            write_marker(&marker_path, &DemoMarker { account: account.0, created: false })?;
            account
        }
    };
    match bank.create_account(account, "demo".into()).await? {
        Ok(_) | Err(Rejection::AccountExists) => {}
        Err(rejection) => anyhow::bail!("creating the demo account: {rejection}"),
    }
    // The same idempotency key on every attempt: a resumed start credits once.
    let amount = PicoUsd::from_usd_whole(DEMO_CREDIT_USD);
    if let Err(rejection) = bank.credit(account, amount, "dev demo credit").await? {
        anyhow::bail!("crediting the demo account: {rejection}");
    }
    let key = keys::mint(account);
    let (id, kind, limits) = (KeyId(keys::random_u64()), KeyKind::Inference, KeyLimits::default());
    let created = bank.create_key(account, id, "demo".into(), key.hash, kind, limits);
    if let Err(rejection) = created.await? {
        anyhow::bail!("creating the demo key: {rejection}");
    }
    say(&format!("demo account: {:016x} (${DEMO_CREDIT_USD}.00 of credit)", account.0));
    say(&format!("demo key: {} (shown once; keep it)", key.text));
    write_marker(&marker_path, &DemoMarker { account: account.0, created: true })
}

fn read_marker(path: &Path) -> anyhow::Result<Option<DemoMarker>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("parsing {}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// Replaces the marker atomically and durably: a crash leaves the old or the new one.
fn write_marker(path: &Path, marker: &DemoMarker) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec(marker)?;
    solrouter_raft::write_durably(path, &bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// Binds the gateway's configured address, says where it listens and serves until the
/// process is told to stop (Ctrl-C, SIGTERM). Fails if the address cannot be bound;
/// otherwise returns how serving ended, once every connection has finished.
pub async fn serve_until_stopped(app: &'static App) -> anyhow::Result<std::io::Result<()>> {
    let listen = app.config.listen();
    let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    say(&format!("listening: http://{}/v1/api", listener.local_addr()?));
    Ok(server::serve(app, listener, shutdown_signal()).await)
}

/// A line for the person (or test) that started the process, on stdout.
pub fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

async fn wait_for(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stopped| *stopped).await;
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down");
}
