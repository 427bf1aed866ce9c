//! The load-test harness SREs drive against a running gateway (`solrouter dev` or a
//! cluster). It provisions its own funded account and key through the admin API, runs a
//! bounded closed-loop load of chat completions, reports throughput and latency, and then
//! checks the money: the account's spend must equal the sum of every `usage.cost` the
//! gateway reported, and the ledger's bank audit must be ok. It exits non-zero otherwise.
#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};
use solrouter_ledger::PicoUsd;
use std::time::{Duration, Instant};

/// Hard caps so a mistyped flag cannot turn into an unbounded flood.
const REQUESTS_MAX: u64 = 10_000_000;
const CONCURRENCY_MAX: usize = 4096;
const DURATION_S_MAX: u64 = 3600;

#[derive(Parser, Debug, Clone)]
#[command(about = "Closed-loop load test of a SolRouter gateway, with a money check at the end")]
struct Args {
    /// The gateway's base URL (without `/v1/api`).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    gateway: String,
    #[arg(long, env = "SOLROUTER_ADMIN_TOKEN")]
    admin_token: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Total requests to send (the run also stops at `--duration-s`).
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    #[arg(long, default_value_t = 60)]
    duration_s: u64,
    #[arg(long, default_value = "mock/echo")]
    model: String,
    /// Ask for SSE streams instead of whole responses.
    #[arg(long)]
    stream: bool,
    /// Words in each prompt.
    #[arg(long, default_value_t = 16)]
    prompt_words: usize,
    #[arg(long, default_value_t = 64)]
    max_tokens: u64,
    /// Credit given to the test account, decimal USD.
    #[arg(long, default_value = "1000.00")]
    credit: String,
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    first_byte_us: Vec<u64>,
    cost_pico: u128,
    errors: std::collections::BTreeMap<u16, u64>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.requests > REQUESTS_MAX
        || args.concurrency == 0
        || args.concurrency > CONCURRENCY_MAX
        || args.duration_s > DURATION_S_MAX
    {
        bail!("limits: requests ≤ {REQUESTS_MAX}, 1 ≤ concurrency ≤ {CONCURRENCY_MAX}, duration ≤ {DURATION_S_MAX}s");
    }
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build()?;
    let admin = Admin {
        client: client.clone(),
        base: args.gateway.clone(),
        token: args.admin_token.clone(),
    };
    let (account, key) = admin.provision(&args.credit).await?;
    let spent_before = admin.spent(&account).await?;

    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration_s);
    let issued = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let body = request_body(&args);
    let workers = (0..args.concurrency).map(|_| {
        let (client, args, key, body, issued) =
            (client.clone(), args.clone(), key.clone(), body.clone(), issued.clone());
        tokio::spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < deadline
                && issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < args.requests
            {
                one_request(&client, &args, &key, &body, &mut tally).await;
            }
            tally
        })
    });
    let mut total = Tally::default();
    for worker in futures_util::future::join_all(workers).await {
        let tally = worker?;
        total.latencies_us.extend(tally.latencies_us);
        total.first_byte_us.extend(tally.first_byte_us);
        total.cost_pico += tally.cost_pico;
        for (status, n) in tally.errors {
            *total.errors.entry(status).or_default() += n;
        }
    }
    let elapsed = started.elapsed();
    report(&args, &mut total, elapsed);
    check_money(&admin, &account, spent_before, total.cost_pico).await
}

fn request_body(args: &Args) -> String {
    let prompt = (0..args.prompt_words).map(|i| format!("word{i}")).collect::<Vec<_>>().join(" ");
    json!({
        "model": args.model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": args.max_tokens,
        "stream": args.stream,
    })
    .to_string()
}

async fn one_request(
    client: &reqwest::Client,
    args: &Args,
    key: &str,
    body: &str,
    tally: &mut Tally,
) {
    let started = Instant::now();
    let url = format!("{}/v1/api/chat/completions", args.gateway);
    let sent = client
        .post(url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(_) => return *tally.errors.entry(0).or_default() += 1,
    };
    let status = response.status().as_u16();
    tally.first_byte_us.push(started.elapsed().as_micros() as u64);
    let text = match response.text().await {
        Ok(text) if status == 200 => text,
        _ => return *tally.errors.entry(status).or_default() += 1,
    };
    match reported_cost(&text, args.stream) {
        Some(cost) => {
            tally.cost_pico += cost;
            tally.latencies_us.push(started.elapsed().as_micros() as u64);
        }
        None => *tally.errors.entry(1).or_default() += 1,
    }
}

/// `usage.cost` of a whole response, or of the last chunk carrying usage in a stream,
/// converted to pico-USD. Costs are far below 2⁵³ pico-USD, so the f64 round-trips exactly.
fn reported_cost(text: &str, stream: bool) -> Option<u128> {
    let usage_cost = |value: &Value| value.get("usage")?.get("cost")?.as_f64();
    let cost = if stream {
        if !text.trim_end().ends_with("data: [DONE]") {
            return None;
        }
        text.lines()
            .rev()
            .filter_map(|line| line.strip_prefix("data: "))
            .filter_map(|data| serde_json::from_str::<Value>(data).ok())
            .find_map(|chunk| usage_cost(&chunk))?
    } else {
        usage_cost(&serde_json::from_str(text).ok()?)?
    };
    Some((cost * 1e12).round() as u128)
}

fn percentile(sorted: &[u64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[index] as f64 / 1000.0
}

fn report(args: &Args, total: &mut Tally, elapsed: Duration) {
    total.latencies_us.sort_unstable();
    total.first_byte_us.sort_unstable();
    let ok = total.latencies_us.len();
    let n_errors: u64 = total.errors.values().sum();
    println!(
        "model={} stream={} concurrency={} elapsed={:.2}s",
        args.model,
        args.stream,
        args.concurrency,
        elapsed.as_secs_f64()
    );
    println!("ok={ok} errors={n_errors} {:?} (0 = transport, 1 = no usage.cost)", total.errors);
    println!("throughput={:.0} req/s", ok as f64 / elapsed.as_secs_f64());
    let lat = &total.latencies_us;
    println!(
        "latency_ms p50={:.2} p90={:.2} p99={:.2} max={:.2}",
        percentile(lat, 0.5),
        percentile(lat, 0.9),
        percentile(lat, 0.99),
        percentile(lat, 1.0)
    );
    let ttfb = &total.first_byte_us;
    println!("first_byte_ms p50={:.2} p99={:.2}", percentile(ttfb, 0.5), percentile(ttfb, 0.99));
}

async fn check_money(
    admin: &Admin,
    account: &str,
    spent_before: PicoUsd,
    reported: u128,
) -> Result<()> {
    let spent_after = admin.spent(account).await?;
    let charged = spent_after.0 - spent_before.0;
    let audit = admin.get("/v1/admin/audit").await?;
    let audit_ok = audit["ok"].as_bool() == Some(true);
    println!(
        "money: charged={} reported={} audit_ok={audit_ok}",
        PicoUsd(charged),
        PicoUsd(reported)
    );
    if charged != reported || !audit_ok {
        bail!("money check failed: charged {charged} pico-USD, reported {reported}, audit {audit}");
    }
    Ok(())
}

struct Admin {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Admin {
    async fn provision(&self, credit: &str) -> Result<(String, String)> {
        let tag: u64 = rand::random();
        let account =
            self.post("/v1/admin/accounts", json!({"name": format!("loadtest-{tag:x}")})).await?;
        let id = account["id"].as_str().context("account id")?.to_owned();
        let topup = json!({"amount": credit, "idempotency_key": format!("loadtest-{tag:x}")});
        self.post(&format!("/v1/admin/accounts/{id}/credits"), topup).await?;
        let key = self
            .post(&format!("/v1/admin/accounts/{id}/keys"), json!({"name": "loadtest"}))
            .await?;
        Ok((id, key["key"].as_str().context("key")?.to_owned()))
    }

    async fn spent(&self, account: &str) -> Result<PicoUsd> {
        let view = self.get(&format!("/v1/admin/accounts/{account}")).await?;
        let spent = view["spent"].as_str().context("spent")?;
        PicoUsd::parse_usd(spent).context("spent is a decimal USD string")
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        let request = self.client.post(format!("{}{path}", self.base)).json(&body);
        Self::json(request.bearer_auth(&self.token).send().await?).await
    }

    async fn get(&self, path: &str) -> Result<Value> {
        let request = self.client.get(format!("{}{path}", self.base));
        Self::json(request.bearer_auth(&self.token).send().await?).await
    }

    async fn json(response: reqwest::Response) -> Result<Value> {
        let status = response.status();
        let body: Value = response.json().await?;
        if !status.is_success() {
            bail!("admin API answered {status}: {body}");
        }
        Ok(body)
    }
}
