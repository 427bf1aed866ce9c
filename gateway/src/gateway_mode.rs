//! `solrouter gateway`: a stateless gateway in front of a ledger cluster. It keeps no
//! money state of its own: every reserve, settle and balance goes to the cluster through
//! `Bank::remote`, so any number of gateways can serve the same accounts at once and
//! killing one loses nothing (its unsettled holds expire after their TTL).

use crate::app::App;
use crate::bank::Bank;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::dev::serve_until_stopped;
use crate::health::Health;
use crate::keys;
use crate::providers::Providers;
use crate::upstream::Upstream;
use crate::web::Web;
use crate::{mock, telemetry};
use anyhow::Context;
use solrouter_raft::{LedgerClient, TlsConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Which upstreams a gateway may call besides the providers configured by environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MockUpstream {
    Off,
    /// Serve the built-in mock provider in this process, as dev mode does (tests, demos).
    InProcess,
}

/// Runs a gateway against the cluster that `ledger_seeds` belong to (over mutual TLS with
/// `tls`), until SIGINT or SIGTERM.
pub async fn run(
    config: Config,
    ledger_seeds: &[String],
    tls: Option<TlsConfig>,
    mock_upstream: MockUpstream,
) -> anyhow::Result<()> {
    let metrics = telemetry::init_metrics()?;
    // Every gateway must accept the same admin token, so none may make one up.
    let admin_token = config
        .admin_token()
        .context("gateway mode needs an admin token: set SOLROUTER_ADMIN_TOKEN")?
        .to_owned();
    let secret = match config.session_secret() {
        Some(secret) => secret.to_owned(),
        None => {
            tracing::warn!(
                "no SOLROUTER_SESSION_SECRET: dashboard sessions made through this gateway \
                 work on no other and end when it restarts; give every gateway the same one"
            );
            keys::random_token()
        }
    };
    let client =
        LedgerClient::connect_with(ledger_seeds, tls).await.context("connecting to the ledger")?;
    let (stop, stopped) = watch::channel(false);
    let (mock_url, mock_task) = match mock_upstream {
        MockUpstream::Off => (None, None),
        MockUpstream::InProcess => {
            let listener =
                TcpListener::bind("127.0.0.1:0").await.context("binding the mock upstream")?;
            let url = format!("http://{}/v1", listener.local_addr()?);
            let mut stopped = stopped.clone();
            let stopping = async move {
                let _ = stopped.wait_for(|stopped| *stopped).await;
            };
            (Some(url), Some(tokio::spawn(mock::serve(listener, stopping))))
        }
    };
    let catalog =
        Catalog::builtin().with_zdr_agreements(config.zdr_hosts()).context("zdr_hosts")?;
    let webhook_secret = config.webhook_secret().map(str::to_owned);
    let app = App {
        upstream: Upstream::try_new(config.upstream(), config.upstream_ca_file())
            .context("building the upstream client")?,
        providers: Providers::from_env(mock_url),
        health: Health::new(&catalog),
        catalog,
        config,
        admin_token,
        webhook_secret,
        bank: Bank::remote(client),
        metrics,
        requests: telemetry::RequestMetrics::default(),
        web: Web::new(secret.as_bytes(), false),
    }
    .leak();
    let serving = serve_until_stopped(app).await?;
    let _ = stop.send(true);
    if let Some(task) = mock_task {
        let _ = task.await;
    }
    serving.context("serving")
}
