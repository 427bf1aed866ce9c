//! The distributed deployment end to end, with real processes on 127.0.0.1: three
//! `solrouter ledger` nodes and two `solrouter gateway`s sharing the same accounts, all
//! gRPC between them over mutual TLS (a dev CA; `deploy/local-cluster.sh` makes its own).
//!
//! * SIGKILL of a group leader under load: both gateways serve again within a few
//!   election timeouts, and afterwards the audit is ok, every acknowledged top-up is
//!   there, every answered request was charged exactly once, and no balance is negative.
//! * `solrouter ledger-admin` adds a node started with `--join` and removes a founding
//!   one while a gateway serves; no request fails.
//! * A race through both gateways for a balance that affords exactly K requests: exactly
//!   K succeed, the rest get 402 (the cluster is started by `deploy/local-cluster.sh`);
//!   on the same cluster, a key's requests-per-minute limit holds across both gateways
//!   (the ledger counts), and a payment event delivered to both gateways, several
//!   times, credits once.

use crate::cluster_support;
use crate::cluster_support::{
    cost_pico, free_port, ledger_admin, ledger_specs, pico, seeds, wait_http_ok, Endpoint, Gateway,
    LedgerProcess, LedgerSpec, N_GROUPS, POLL_ATTEMPTS_MAX, POLL_INTERVAL,
};
use serde_json::{json, Value};
use solrouter_gateway::catalog::Catalog;
use solrouter_gateway::parse::prompt_tokens_max;
use solrouter_ledger::PicoUsd;
use solrouter_raft::LedgerClient;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Both gateways must serve again within this long after the leader's SIGKILL: a few
/// election timeouts (150–300 ms each) plus the client's backoff, with room for a loaded
/// 2-core CI machine.
const RECOVERY_MAX: Duration = Duration::from_secs(5);
/// Successful requests to see before the kill, and again after the recovery, so the kill
/// really lands mid-load.
const N_SUCCESSES_PHASE: u64 = 30;
const N_ACCOUNTS: usize = 4;
const N_CHAT_WORKERS: usize = 6;
const N_TOP_UP_WORKERS: usize = 2;
const INITIAL_CREDIT: &str = "1.00";
const TOP_UP: &str = "0.01";

/// What the load saw, per account index.
#[derive(Default)]
struct Observed {
    /// Sum of `usage.cost` of every answered (200) request.
    charged: BTreeMap<usize, i128>,
    n_successes: u64,
    n_failures: u64,
    /// Top-ups by idempotency key, and whether the gateway acknowledged each.
    top_ups: Vec<(usize, String, bool)>,
}

fn echo_body(text: &str, max_tokens: u64) -> Value {
    json!({"model": "mock/echo", "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}]})
}

async fn chat_and_record(
    endpoint: &Endpoint,
    key: &str,
    account_idx: usize,
    observed: &Mutex<Observed>,
) -> bool {
    let answer = endpoint.chat(key, &echo_body("hello from the load", 16)).await;
    let mut observed = observed.lock().unwrap();
    match answer {
        Some((200, body)) => {
            *observed.charged.entry(account_idx).or_default() += cost_pico(&body["usage"]["cost"]);
            observed.n_successes += 1;
            true
        }
        Some((402, body)) => panic!("a funded account got 402: {body}"),
        _ => {
            observed.n_failures += 1;
            false
        }
    }
}

async fn eventually_async<F: std::future::Future<Output = bool>>(
    what: &str,
    mut condition: impl FnMut() -> F,
) {
    for _ in 0..POLL_ATTEMPTS_MAX {
        if condition().await {
            return;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    panic!("not true after {POLL_ATTEMPTS_MAX} attempts: {what}");
}

/// Polls `endpoint` with requests until one succeeds; how long that took.
async fn time_to_recover(
    endpoint: &Endpoint,
    key: &str,
    account_idx: usize,
    observed: &Mutex<Observed>,
) -> Duration {
    let started = Instant::now();
    for _ in 0..POLL_ATTEMPTS_MAX {
        if chat_and_record(endpoint, key, account_idx, observed).await {
            return started.elapsed();
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    panic!("{} did not recover", endpoint.base);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_under_load_loses_nothing_and_charges_once() {
    let root = tempfile::tempdir().unwrap();
    let specs = ledger_specs(root.path());
    let mut ledgers: Vec<Option<LedgerProcess>> = specs.iter().map(|s| Some(s.start())).collect();
    let gateways = [Gateway::start(&seeds(&specs)), Gateway::start(&seeds(&specs))];
    let endpoints: Vec<Endpoint> = gateways.iter().map(|g| g.endpoint.clone()).collect();
    for endpoint in &endpoints {
        wait_http_ok(&format!("{}/readyz", endpoint.base)).await;
    }
    let mut accounts = Vec::new();
    for account_idx in 0..N_ACCOUNTS {
        accounts.push(endpoints[account_idx % 2].funded_account(INITIAL_CREDIT).await);
    }
    let accounts = Arc::new(accounts);
    let observed = Arc::new(Mutex::new(Observed::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));

    let mut workers = Vec::new();
    for worker_idx in 0..N_CHAT_WORKERS + N_TOP_UP_WORKERS {
        let endpoint = endpoints[worker_idx % 2].clone();
        let (accounts, observed) = (Arc::clone(&accounts), Arc::clone(&observed));
        let (stop, next) = (Arc::clone(&stop), Arc::clone(&next));
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let account_idx = n as usize % N_ACCOUNTS;
                let (account, key) = &accounts[account_idx];
                if worker_idx < N_CHAT_WORKERS {
                    chat_and_record(&endpoint, key, account_idx, &observed).await;
                } else {
                    let idempotency_key = format!("load-{n}");
                    let status = endpoint.top_up(account, TOP_UP, &idempotency_key).await;
                    let top_up = (account_idx, idempotency_key, status == 200);
                    observed.lock().unwrap().top_ups.push(top_up);
                }
            }
        }));
    }
    let successes = || observed.lock().unwrap().n_successes;
    eventually_async("the load is under way", || async { successes() >= N_SUCCESSES_PHASE }).await;

    // SIGKILL the leader of group 0 mid-load.
    let tls = Some(cluster_support::client_tls());
    let client = LedgerClient::connect_with(&seeds(&specs), tls).await.unwrap();
    let leader = client.topology().await.unwrap().leaders[0].expect("group 0 has a leader");
    let killed_idx = leader as usize - 1;
    ledgers[killed_idx].take().expect("the leader runs").process.kill();
    let (first, second) = tokio::join!(
        time_to_recover(&endpoints[0], &accounts[0].1, 0, &observed),
        time_to_recover(&endpoints[1], &accounts[1].1, 1, &observed),
    );
    eprintln!(
        "after killing leader node {leader}: gateways served again in {first:?} and {second:?}"
    );
    assert!(first <= RECOVERY_MAX && second <= RECOVERY_MAX, "{first:?}, {second:?}");
    let resumed = successes();
    eventually_async("the load goes on", || async { successes() >= resumed + N_SUCCESSES_PHASE })
        .await;

    // Restart the killed node on its data directory; it catches up and serves again, and,
    // with the load still on, every group goes back to the node the default placement
    // (`spread`: the voters take the groups in turn) puts it on: handed back by its leader
    // (`leadership.rs`), without which no healthy leader would let it go. Not asserted:
    // that it went back by a hand-over rather than an election; twice under CI's load
    // (sessions 53 and 54) the group was back where it belongs with no hand-over counted.
    let restarted = specs[killed_idx].start();
    wait_http_ok(&format!("{}/readyz", restarted.http)).await;
    ledgers[killed_idx] = Some(restarted);
    let n_nodes = ledgers.len() as u64;
    eventually_async("every node sees each group led where the placement puts it", || async {
        let mut placed = true;
        for ledger in ledgers.iter().flatten() {
            let leaders = leaders_seen(&ledger.http).await;
            placed &= leaders.len() == N_GROUPS as usize;
            placed &= leaders.iter().all(|(group_idx, leader)| *leader == group_idx % n_nodes + 1);
        }
        placed
    })
    .await;
    let handed_back = successes();
    eventually_async("the load goes on after the hand-over", || async {
        successes() >= handed_back + N_SUCCESSES_PHASE
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    check_money(&endpoints[0], &accounts, &observed).await;
    for endpoint in &endpoints {
        let audit = endpoint.audit().await;
        assert_eq!(audit["ok"], true, "{audit}");
    }
    // Every node, the restarted one included, keeps the request history and reports it,
    // with its commits, snapshots, windows and ledger time, on /metrics.
    for ledger in ledgers.iter().flatten() {
        eventually_async("every node reports the request history it keeps", || async {
            let metrics = ledger_metrics(&ledger.http).await;
            let value = |name: &str| {
                metrics.lines().find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
            };
            let commit_buckets = r#"solrouter_ledger_commit_seconds_bucket{group="0",le="+Inf"}"#;
            assert!(metrics.contains(commit_buckets), "{metrics}");
            for snapshot in ["build_ms_last", "encode_ms_last", "bytes_last"] {
                let gauge = format!("solrouter_ledger_snapshot_{snapshot}{{");
                assert!(metrics.contains(&gauge), "{metrics}");
            }
            for windowed in ["holds_remembered", "op_ids_remembered", "time_behind_ms"] {
                let gauge = format!("solrouter_ledger_{windowed}{{");
                assert!(metrics.contains(&gauge), "{metrics}");
            }
            value("solrouter_ledger_history_copies_wanted ") == Some(0.0)
                && value("solrouter_ledger_history_records ").is_some_and(|records| records > 0.0)
        })
        .await;
    }
}

/// A ledger node stopped on purpose (SIGTERM) first hands the groups it leads to the
/// other voters, so that they need no election (which leaves a group without a leader for
/// an election timeout or more): when it has exited, the others have taken them
/// (`solrouter_ledger_hand_overs_taken_total`). Restarted, it gets them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_node_stopped_on_purpose_hands_its_groups_over_first() {
    let root = tempfile::tempdir().unwrap();
    let specs = ledger_specs(root.path());
    let mut ledgers: Vec<Option<LedgerProcess>> = specs.iter().map(|s| Some(s.start())).collect();
    let n_nodes = specs.len() as u64;
    let placed = |leaders: &[(u64, u64)]| {
        leaders.len() == N_GROUPS as usize
            && leaders.iter().all(|(group_idx, leader)| *leader == group_idx % n_nodes + 1)
    };
    let all_placed = |ledgers: &[Option<LedgerProcess>]| {
        let https: Vec<String> = ledgers.iter().flatten().map(|l| l.http.clone()).collect();
        async move {
            for http in https {
                if !placed(&leaders_seen(&http).await) {
                    return false;
                }
            }
            true
        }
    };
    eventually_async("every group is led where the placement puts it", || all_placed(&ledgers))
        .await;

    // Node 1 leads group 0 (and, of two groups, no other).
    ledgers[0].take().expect("node 1 runs").process.terminate();
    let mut n_taken = 0.0;
    for ledger in ledgers.iter().flatten() {
        n_taken += counter_sum(&ledger.http, "solrouter_ledger_hand_overs_taken_total{").await;
        let leaders = leaders_seen(&ledger.http).await;
        assert!(leaders.iter().all(|(_, leader)| *leader != 1), "{leaders:?}");
    }
    assert_eq!(n_taken, 1.0, "the other nodes took node 1's group from it");

    ledgers[0] = Some(specs[0].start());
    eventually_async("node 1 gets its group back", || all_placed(&ledgers)).await;
}

/// The `/metrics` page of the ledger node whose ops port is `http`.
async fn ledger_metrics(http: &str) -> String {
    reqwest::get(format!("{http}/metrics")).await.unwrap().text().await.unwrap()
}

/// The sum of the values of the lines of the `/metrics` of `http` that start with `prefix`.
async fn counter_sum(http: &str, prefix: &str) -> f64 {
    let metrics = ledger_metrics(http).await;
    let counts = metrics.lines().filter(|line| line.starts_with(prefix));
    counts.filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// Each group's leader as the ledger node serving `http` sees it (its `/metrics`), by
/// group index; a group without a known leader is left out.
async fn leaders_seen(http: &str) -> Vec<(u64, u64)> {
    let metrics = ledger_metrics(http).await;
    let leader_of = |line: &str| {
        let (group_idx, leader) =
            line.strip_prefix(r#"solrouter_ledger_leader_id{group=""#)?.split_once(r#""} "#)?;
        Some((group_idx.parse().ok()?, leader.trim().parse().ok()?))
    };
    metrics.lines().filter_map(leader_of).collect()
}

/// Retries unacknowledged top-ups under their idempotency keys, waits for the last settles,
/// then checks every account against what the load saw.
async fn check_money(
    endpoint: &Endpoint,
    accounts: &[(String, String)],
    observed: &Mutex<Observed>,
) {
    let (charged, top_ups, n_failures) = {
        let observed = observed.lock().unwrap();
        (observed.charged.clone(), observed.top_ups.clone(), observed.n_failures)
    };
    eprintln!("load: {} top-ups, {n_failures} failed requests", top_ups.len());
    let mut n_top_ups = vec![0i128; accounts.len()];
    for (account_idx, idempotency_key, acknowledged) in &top_ups {
        let account = &accounts[*account_idx].0;
        if !acknowledged {
            // Applied or not, the same key applies it exactly once now.
            eventually_async("a retried top-up is acknowledged", || async {
                endpoint.top_up(account, TOP_UP, idempotency_key).await == 200
            })
            .await;
        }
        n_top_ups[*account_idx] += 1;
    }
    eventually_async("every hold is settled", || async { endpoint.audit().await["holds"] == 0 })
        .await;
    let (initial, top_up) = (pico(&json!(INITIAL_CREDIT)), pico(&json!(TOP_UP)));
    for (account_idx, (account, _)) in accounts.iter().enumerate() {
        let entry = endpoint.account(account).await;
        assert_eq!(pico(&entry["credits"]), initial + n_top_ups[account_idx] * top_up, "{entry}");
        assert_eq!(
            pico(&entry["spent"]),
            charged.get(&account_idx).copied().unwrap_or(0),
            "{entry}"
        );
        assert!(pico(&entry["available"]) >= 0, "{entry}");
    }
}

/// The processes `deploy/local-cluster.sh` starts, as its logs name them.
const PROCESSES: [&str; 5] = ["ledger-1", "ledger-2", "ledger-3", "gateway-1", "gateway-2"];

/// `deploy/local-cluster.sh` with its own ports and run directory; `stop` on drop.
struct LocalCluster {
    env: Vec<(&'static str, String)>,
    gateway_ports: [u16; 2],
}

impl LocalCluster {
    fn start(run_dir: &Path) -> LocalCluster {
        let ports = |n: usize| (0..n).map(|_| free_port().to_string()).collect::<Vec<_>>();
        let gateway_ports = [free_port(), free_port()];
        let env = vec![
            ("SOLROUTER_BIN", env!("CARGO_BIN_EXE_solrouter").to_owned()),
            ("RUN_DIR", run_dir.display().to_string()),
            ("LEDGER_PORTS", ports(3).join(" ")),
            ("LEDGER_HTTP_PORTS", ports(3).join(" ")),
            ("GATEWAY_PORTS", format!("{} {}", gateway_ports[0], gateway_ports[1])),
            ("LEDGER_GROUPS", cluster_support::N_GROUPS.to_string()),
            ("SOLROUTER_ADMIN_TOKEN", cluster_support::ADMIN_TOKEN.to_owned()),
            ("SOLROUTER_WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
            ("RUST_LOG", "warn,openraft=off".to_owned()),
        ];
        let cluster = LocalCluster { env, gateway_ports };
        let started = cluster.script("start");
        // The run directory goes with the test: a failed start shows the processes' logs.
        let logs = || {
            let log = |name| std::fs::read_to_string(run_dir.join(format!("{name}.log")));
            let tail = |text: String| text.lines().rev().take(20).collect::<Vec<_>>().join("\n");
            PROCESSES.map(|name| {
                format!(
                    "--- {name}.log (last lines first):\n{}",
                    log(name).map_or_else(|e| e.to_string(), tail)
                )
            })
        };
        assert!(
            started.status.success(),
            "start failed: {}\n{}",
            String::from_utf8_lossy(&started.stderr),
            logs().join("\n")
        );
        for name in PROCESSES {
            let log = std::fs::read_to_string(run_dir.join(format!("{name}.log"))).unwrap();
            assert!(!log.contains("UNAUTHENTICATED"), "{name} runs without TLS: {log}");
        }
        cluster
    }

    fn script(&self, action: &str) -> std::process::Output {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/local-cluster.sh");
        Command::new("bash")
            .arg(script)
            .arg(action)
            .envs(self.env.iter().map(|(name, value)| (*name, value.as_str())))
            .output()
            .expect("running deploy/local-cluster.sh")
    }

    fn endpoints(&self) -> [Endpoint; 2] {
        self.gateway_ports.map(|port| Endpoint::new(&format!("http://127.0.0.1:{port}")))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = self.script("stop");
    }
}

const WEBHOOK_SECRET: &str = "whsec_cluster_test_secret";

/// A key allowed `RPM` requests a minute, hit by a burst split over both gateways: the
/// ledger admits `RPM` in a UTC minute whichever gateway each came through (twice that if
/// the burst straddles a minute), the rest are 429s. The bound does not grow with the
/// number of gateways.
async fn rate_limit_holds_across_gateways(endpoints: &[Endpoint; 2]) {
    const RPM: usize = 4;
    const N: usize = 12;
    let (account, _) = endpoints[0].funded_account("10.00").await;
    let path = format!("accounts/{account}/keys");
    let fields = json!({"name": "limited", "requests_per_minute": RPM});
    let (status, created) = endpoints[0].admin(reqwest::Method::POST, &path, Some(fields)).await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let minute = |at: std::time::SystemTime| {
        at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 60
    };
    // Ledger time follows the leader's wall clock within a little: a margin either side.
    let margin = Duration::from_secs(2);
    let started = std::time::SystemTime::now();
    let burst = (0..N).map(|n| {
        let (endpoint, key) = (endpoints[n % 2].clone(), key.clone());
        tokio::spawn(async move { endpoint.chat(&key, &echo_body("hi", 1)).await.expect("answer") })
    });
    let mut statuses = BTreeMap::<u16, usize>::new();
    for answer in burst.collect::<Vec<_>>() {
        *statuses.entry(answer.await.unwrap().0).or_default() += 1;
    }
    let ended = std::time::SystemTime::now();
    let straddled = minute(started - margin) != minute(ended + margin);
    let admitted = statuses.get(&200).copied().unwrap_or(0);
    assert_eq!(admitted + statuses.get(&429).copied().unwrap_or(0), N, "{statuses:?}");
    if straddled {
        assert!((RPM..=2 * RPM).contains(&admitted), "{statuses:?}");
    } else {
        assert_eq!(admitted, RPM, "{statuses:?}");
    }
}

/// One signed payment event, delivered three times to each gateway at once, credits
/// its account once.
async fn payment_event_credits_once_across_gateways(endpoints: &[Endpoint; 2]) {
    let (status, created) =
        endpoints[0].admin(reqwest::Method::POST, "accounts", Some(json!({"name": "payer"}))).await;
    assert_eq!(status, 201, "{created}");
    let account = created["id"].as_str().unwrap().to_owned();
    let body = json!({"id": "evt_cluster", "type": "payment_intent.succeeded", "data": {"object": {
        "metadata": {"solrouter_account": account}, "amount_received": 700, "currency": "usd"}}})
    .to_string();
    let now_s =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let signature =
        solrouter_gateway::payments::sign(WEBHOOK_SECRET.as_bytes(), body.as_bytes(), now_s);
    let deliveries = (0..6).map(|n| {
        let (endpoint, body, signature) =
            (endpoints[n % 2].clone(), body.clone(), signature.clone());
        tokio::spawn(async move {
            let response = endpoint
                .client
                .post(format!("{}{}", endpoint.base, solrouter_gateway::payments::WEBHOOK_PATH))
                .header(solrouter_gateway::payments::SIGNATURE_HEADER, signature)
                .body(body)
                .send()
                .await
                .expect("delivered");
            response.status().as_u16()
        })
    });
    for delivery in deliveries.collect::<Vec<_>>() {
        assert_eq!(delivery.await.unwrap(), 200);
    }
    let entry = endpoints[1].account(&account).await;
    assert_eq!(entry["credits"], "7.00", "{entry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_affordable_requests_succeed_across_two_gateways() {
    // K requests affordable out of N. With echo, a request's actual cost c_a is below
    // its reservation c_r but above 2/3 of it (see below), so the outcome does not depend
    // on how reserves and settles interleave: after any K successes the rest of the
    // balance, K·c_r − K·c_a, is below c_r, and before K successes at least c_r is free.
    const K: usize = 3;
    const N: usize = 12;
    const N_WORDS: usize = 1_000;
    let run_dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(run_dir.path());
    let endpoints = cluster.endpoints();

    let text = vec!["a"; N_WORDS].join(" ");
    let body = echo_body(&text, N_WORDS as u64);
    let catalog = Catalog::builtin();
    let price = &catalog.get("mock/echo").expect("mock/echo").price;
    let prompt_tokens = prompt_tokens_max(body.to_string().len(), 0);
    let reserved = price.bound(prompt_tokens, N_WORDS as u64);
    let credit = PicoUsd(K as u128 * reserved.0);
    let (account, key) = endpoints[0].funded_account(&credit.to_string()).await;

    let racing = (0..N).map(|n| {
        let (endpoint, key, body) = (endpoints[n % 2].clone(), key.clone(), body.clone());
        tokio::spawn(async move { endpoint.chat(&key, &body).await.expect("an HTTP answer") })
    });
    let mut statuses = BTreeMap::<u16, usize>::new();
    let mut charged = 0;
    for answer in racing.collect::<Vec<_>>() {
        let (status, body) = answer.await.unwrap();
        *statuses.entry(status).or_default() += 1;
        if status == 200 {
            let cost = cost_pico(&body["usage"]["cost"]);
            // The premise above: c_r / c_a < K / (K − 1).
            assert!(
                reserved.0 as i128 * (K as i128 - 1) < cost * K as i128,
                "{cost} vs {reserved}"
            );
            charged += cost;
        }
    }
    assert_eq!(statuses, BTreeMap::from([(200, K), (402, N - K)]));
    let entry = endpoints[1].account(&account).await;
    assert_eq!(pico(&entry["spent"]), charged, "{entry}");
    assert_eq!(pico(&entry["held"]), 0, "{entry}");
    assert_eq!(pico(&entry["available"]), credit.0 as i128 - charged, "{entry}");
    let audit = endpoints[1].audit().await;
    assert_eq!(audit["ok"], true, "{audit}");

    // A key revoked through one gateway stops working at the other within the key cache's
    // TTL (one second), with room for a loaded machine.
    let (key_id, key) = endpoints[0].create_key(&account).await;
    let small = echo_body("hi", 1);
    // Authenticated (and so cached) at the other gateway: 200 or 402, not 401.
    assert_ne!(endpoints[1].chat(&key, &small).await.expect("an answer").0, 401);
    let (status, _) =
        endpoints[0].admin(reqwest::Method::DELETE, &format!("keys/{key_id}"), None).await;
    assert_eq!(status, 200);
    let revoked_at = Instant::now();
    eventually_async("the other gateway refuses the revoked key", || async {
        endpoints[1].chat(&key, &small).await.expect("an answer").0 == 401
    })
    .await;
    assert!(revoked_at.elapsed() < Duration::from_secs(3), "{:?}", revoked_at.elapsed());

    rate_limit_holds_across_gateways(&endpoints).await;
    payment_event_credits_once_across_gateways(&endpoints).await;

    // The script stops everything it started.
    let stopped = cluster.script("stop");
    assert!(stopped.status.success());
    let status = String::from_utf8_lossy(&cluster.script("status").stdout).into_owned();
    assert_eq!(status.matches(": stopped").count(), 5, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_admin_adds_and_removes_nodes_while_a_gateway_serves() {
    let root = tempfile::tempdir().unwrap();
    let mut specs = ledger_specs(root.path());
    let mut ledgers: Vec<LedgerProcess> = specs.iter().map(LedgerSpec::start).collect();
    let gateway = Gateway::start(&seeds(&specs));
    let endpoint = gateway.endpoint.clone();
    wait_http_ok(&format!("{}/readyz", endpoint.base)).await;
    let (account, key) = endpoint.funded_account(INITIAL_CREDIT).await;

    // Requests run throughout; every one must succeed.
    let observed = Arc::new(Mutex::new(Observed::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (endpoint, key) = (endpoint.clone(), key.clone());
        let (observed, stop) = (Arc::clone(&observed), Arc::clone(&stop));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                chat_and_record(&endpoint, &key, 0, &observed).await;
            }
        })
    };

    let joining = LedgerSpec {
        id: 4,
        grpc: format!("127.0.0.1:{}", free_port()),
        peers: None,
        data_dir: root.path().join("ledger-4"),
    };
    ledgers.push(joining.start());
    let seeds_before = seeds(&specs);
    let added = ["add-node", "--id", "4", "--addr", &joining.grpc];
    tokio::task::block_in_place(|| ledger_admin(&seeds_before, &added));
    specs.push(joining);
    let removed = ["remove-node", "--id", "1"];
    tokio::task::block_in_place(|| ledger_admin(&seeds_before, &removed));
    ledgers.remove(0).process.kill();
    specs.remove(0);

    let status = tokio::task::block_in_place(|| ledger_admin(&seeds(&specs), &["status"]));
    let status: Value = serde_json::from_str(&status).expect("status is JSON");
    assert_eq!(status["voters"], json!([[2, 3, 4], [2, 3, 4]]), "{status}");
    let served = observed.lock().unwrap().n_successes;
    eventually_async("requests go on after the changes", || async {
        observed.lock().unwrap().n_successes >= served + N_SUCCESSES_PHASE
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let (n_failures, charged) = {
        let observed = observed.lock().unwrap();
        (observed.n_failures, observed.charged[&0])
    };
    assert_eq!(n_failures, 0, "requests failed during membership changes");
    let entry = endpoint.account(&account).await;
    assert_eq!(pico(&entry["spent"]), charged, "{entry}");
    assert_eq!(endpoint.audit().await["ok"], true);
}
