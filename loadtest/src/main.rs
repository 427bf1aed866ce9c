//! The load-test harness SREs drive against running gateways (`solrouter dev` or a
//! cluster). It provisions funded test accounts and keys through the admin API, offers
//! load open loop (a constant arrival rate, latency measured from each request's intended
//! send time) or closed loop (a number of requests in flight), in steps that ramp up,
//! with a weighted mix of scenarios; then sends the same load straight to the upstream
//! mock, to report the gateway's overhead per quantile. It ends with the money check:
//! the ledger's audit is ok and each account was charged exactly the sum of the
//! `usage.cost`s its clients saw, to the pico-dollar; otherwise it exits with status 1.
#![forbid(unsafe_code)]

/// The harness shares a machine with what it measures: mimalloc instead of the system
/// allocator (whose frees were a tenth of the harness's samples), with the URLs and keys
/// parsed once, took its own CPU a request down by about 7 % (docs/benchmarks.md,
/// "Session 40").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod admin;
mod client;
mod cost;
mod exchange;
mod report;
mod runner;
mod scenario;
mod schedule;
mod stats;
mod upstream;

use anyhow::{bail, Context, Result};
use clap::Parser;
use schedule::{Load, Steps, CONCURRENCY_MAX, RATE_PER_S_MAX};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Most requests a phase may send.
const REQUESTS_MAX: u64 = 100_000_000;
/// Most test accounts and keys per account.
const ACCOUNTS_MAX: usize = 10_000;
const KEYS_PER_ACCOUNT_MAX: usize = 64;
/// Largest prompt, in words.
const PROMPT_WORDS_MAX: usize = 1_000_000;

#[derive(Parser, Debug)]
#[command(about = "Load test of SolRouter gateways: open or closed loop, a scenario mix, the \
                   gateway's overhead over its upstream, and a money check at the end")]
struct Args {
    /// Gateway base URLs (without `/v1/api`), comma-separated; requests go round-robin.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:8080")]
    gateway: Vec<String>,
    #[arg(long, env = "SOLROUTER_ADMIN_TOKEN")]
    admin_token: String,
    /// Open loop: arrival rate in requests per second; a comma-separated list is a ramp,
    /// one rate per step.
    #[arg(long, value_delimiter = ',', conflicts_with = "concurrency")]
    rate: Vec<u32>,
    /// Closed loop (the default, 32): requests in flight; a comma-separated list is a
    /// ramp, one concurrency per step.
    #[arg(long, value_delimiter = ',')]
    concurrency: Vec<u32>,
    /// Length of each ramp step in seconds (default: the duration split evenly).
    #[arg(long)]
    step_s: Option<f64>,
    /// Length of each phase in seconds (default: the steps' total, else 10).
    #[arg(long)]
    duration_s: Option<f64>,
    /// Stop a phase after this many requests (default: only the duration stops it).
    #[arg(long)]
    requests: Option<u64>,
    /// Open loop: requests in flight at most; a request due while all are busy waits,
    /// and the wait counts in its latency.
    #[arg(long, default_value_t = 4096)]
    in_flight_max: usize,
    /// Scenario weights: plain, stream, fallback, broke (402s), large, cut, e.g.
    /// `plain=90,stream=10`.
    #[arg(long, default_value = "plain=1")]
    mix: String,
    #[arg(long, default_value = "mock/echo")]
    model: String,
    /// Words in each prompt.
    #[arg(long, default_value_t = 16)]
    prompt_words: usize,
    /// Words in the prompts of the `large` scenario.
    #[arg(long, default_value_t = 8_000)]
    large_prompt_words: usize,
    #[arg(long, default_value_t = 64)]
    max_tokens: u64,
    /// Funded test accounts; requests spread over them (see --hot-share).
    #[arg(long, default_value_t = 1)]
    accounts: usize,
    /// Keys per test account; requests spread over them.
    #[arg(long, default_value_t = 1)]
    keys_per_account: usize,
    /// Share of requests sent by the first account (a hot account), 0 to 1; the rest
    /// spread evenly over all accounts.
    #[arg(long, default_value_t = 0.0)]
    hot_share: f64,
    /// Credit given to each test account, decimal USD.
    #[arg(long, default_value = "1000.00")]
    credit: String,
    /// Credit of the account the `broke` scenario uses: too little for any request.
    #[arg(long, default_value = "0.000000000001")]
    broke_credit: String,
    /// The upstream mock the gateway uses, to measure it alone (its OpenAI base URL,
    /// e.g. http://127.0.0.1:9090/v1). Without it one is started from --mock-bin.
    #[arg(long, conflicts_with = "mock_bin")]
    upstream: Option<String>,
    /// The `solrouter` binary whose `mock-upstream` is started (default: next to this
    /// executable).
    #[arg(long)]
    mock_bin: Option<PathBuf>,
    /// Skip the phase straight to the upstream (no overhead figures).
    #[arg(long, conflicts_with_all = ["upstream", "mock_bin"])]
    no_direct: bool,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout_s: f64,
    /// Seed of the scenario, account and key choices.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The validated plan of a run.
struct Plan {
    load: Load,
    limits: runner::Limits,
    mix: Arc<scenario::Mix>,
    timeout: Duration,
}

fn seconds(value: Option<f64>, what: &str) -> Result<Option<Duration>> {
    value
        .map(|seconds| Duration::try_from_secs_f64(seconds).with_context(|| format!("--{what}")))
        .transpose()
}

impl Plan {
    fn try_new(args: &Args) -> Result<Plan> {
        let step = seconds(args.step_s, "step-s")?;
        let duration = seconds(args.duration_s, "duration-s")?.or(if step.is_some() {
            None
        } else {
            Some(Duration::from_secs(10))
        });
        let load = if args.rate.is_empty() {
            let concurrency =
                if args.concurrency.is_empty() { vec![32] } else { args.concurrency.clone() };
            Load::Closed(
                Steps::try_new(concurrency, CONCURRENCY_MAX, step, duration)
                    .map_err(anyhow::Error::msg)?,
            )
        } else {
            Load::Open(
                Steps::try_new(args.rate.clone(), RATE_PER_S_MAX, step, duration)
                    .map_err(anyhow::Error::msg)?,
            )
        };
        let requests_max = args.requests.unwrap_or(REQUESTS_MAX);
        if requests_max == 0 || requests_max > REQUESTS_MAX {
            bail!("--requests must be 1 to {REQUESTS_MAX}");
        }
        if args.in_flight_max == 0 || args.in_flight_max > CONCURRENCY_MAX as usize {
            bail!("--in-flight-max must be 1 to {CONCURRENCY_MAX}");
        }
        if args.accounts > ACCOUNTS_MAX || args.keys_per_account > KEYS_PER_ACCOUNT_MAX {
            bail!("at most {ACCOUNTS_MAX} accounts and {KEYS_PER_ACCOUNT_MAX} keys per account");
        }
        if args.prompt_words.max(args.large_prompt_words) > PROMPT_WORDS_MAX {
            bail!("prompts of at most {PROMPT_WORDS_MAX} words");
        }
        if args.gateway.iter().any(|base| base.trim().is_empty()) {
            bail!("--gateway needs at least one base URL");
        }
        let body = scenario::BodySpec {
            model: args.model.clone(),
            prompt_words: args.prompt_words,
            large_prompt_words: args.large_prompt_words,
            max_tokens: args.max_tokens,
        };
        let spread = (args.accounts, args.keys_per_account);
        let mix = scenario::Mix::try_new(&args.mix, &body, args.seed, spread, args.hot_share)
            .map_err(anyhow::Error::msg)?;
        let timeout = Duration::try_from_secs_f64(args.timeout_s)
            .ok()
            .filter(|timeout| !timeout.is_zero())
            .context("--timeout-s must be a positive number of seconds")?;
        let limits = runner::Limits { requests_max, in_flight_max: args.in_flight_max };
        Ok(Plan { load, limits, mix: Arc::new(mix), timeout })
    }
}

#[tokio::main]
async fn main() {
    // On SIGINT or SIGTERM the run is dropped, which kills the mock upstream it started.
    let outcome = tokio::select! {
        outcome = run(Args::parse()) => outcome,
        () = interrupted() => Err(anyhow::anyhow!("interrupted; no report, no money check")),
    };
    match outcome {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(error) => {
            eprintln!("solrouter-loadtest: {error:#}");
            std::process::exit(1);
        }
    }
}

async fn interrupted() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(terminate) => terminate,
            Err(_) => return std::future::pending().await,
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// Runs the whole test; `Ok(false)` when the money check failed.
async fn run(args: Args) -> Result<bool> {
    let plan = Plan::try_new(&args)?;
    let client = reqwest::Client::builder().timeout(plan.timeout).build()?;
    let connector = client::Connector::new()?;
    let bases: Vec<String> =
        args.gateway.iter().map(|base| base.trim().trim_end_matches('/').to_owned()).collect();
    let admin = admin::Admin { client, base: bases[0].clone(), token: args.admin_token.clone() };
    let mut accounts = admin.provision(args.accounts, &args.credit, args.keys_per_account).await?;
    if plan.mix.has(scenario::Kind::Broke) {
        accounts.extend(admin.provision(1, &args.broke_credit, args.keys_per_account).await?);
    }
    let mock = match (&args.upstream, args.no_direct) {
        (None, false) => Some(
            upstream::MockProcess::start(&upstream::find_binary(args.mock_bin.as_deref())?).await?,
        ),
        _ => None,
    };
    let upstream_base = args.upstream.clone().or(mock.as_ref().map(|mock| mock.base.clone()));

    let bearers = |keys: &[String]| keys.iter().map(|key| exchange::bearer(key)).collect();
    let mut keys: Vec<Vec<_>> =
        accounts.iter().map(|account| bearers(&account.keys)).collect::<Result<_>>()?;
    // The broke account, when there is one, was provisioned last.
    let broke_keys = if plan.mix.has(scenario::Kind::Broke) { keys.pop() } else { None };
    let targets = (bases.iter())
        .map(|base| client::Target::new(&format!("{base}/v1/api/chat/completions"), &connector))
        .collect::<Result<_>>()?;
    let broke_keys = broke_keys.unwrap_or_default();
    let destination = exchange::Destination::Gateways { targets, keys, broke_keys };
    let through = phase("gateway", &plan, destination, accounts.len()).await?;
    let straight = match upstream_base {
        Some(base) => {
            let url = format!("{}/chat/completions", base.trim_end_matches('/'));
            let target = Box::new(client::Target::new(&url, &connector)?);
            let destination = exchange::Destination::Upstream { target };
            Some(phase("direct", &plan, destination, 0).await?)
        }
        None => None,
    };
    if let Some(mock) = mock {
        mock.stop().await?;
    }
    let money = admin.check_money(&accounts, &through.tally.cost_by_account).await?;
    let report = report::Report { args: &args, plan_load: &plan.load, through, straight, money };
    report.print();
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report.to_json())?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report.money.ok())
}

/// Runs one phase with a progress line on stderr.
async fn phase(
    name: &'static str,
    plan: &Plan,
    destination: exchange::Destination,
    n_accounts: usize,
) -> Result<stats::PhaseReport> {
    let (timeout, mix) = (plan.timeout, plan.mix.clone());
    let exchange = Arc::new(exchange::Exchange { timeout, mix, destination });
    let recorder = Arc::new(stats::Recorder::new(n_accounts));
    let progress = stats::progress_line(name, recorder.clone());
    let sender = exchange.clone();
    runner::run(&plan.load, plan.limits, recorder.clone(), move |idx| sender.clone().send(idx))
        .await;
    progress.stop().await;
    let recorder = Arc::into_inner(recorder).context("a request task outlived its phase")?;
    let connections_opened = exchange.destination.connections_opened();
    Ok(stats::PhaseReport::new(name, recorder, connections_opened))
}
