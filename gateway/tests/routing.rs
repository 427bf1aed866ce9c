//! Provider routing end to end: `solrouter dev` with the model `mock/shared` on two mock
//! hosts, `mock` (the dev's own, fast) and `mock-slow` (here a slower mock this test
//! runs and stops), driven by the official `openai` Python package
//! (`routing_sdk.py`): each host's price is what a request served by it is charged, the
//! answer and the record name the serving host, `sort`, suffixes, `order`,
//! `require_parameters` and the default spread route as documented, the endpoints API
//! shows prices and live statistics, and when `mock-slow` fails mid-run its traffic
//! moves to `mock` (same-model fallback, then its breaker skips it). Without Python:
//! `max_price` at a long prompt's price tier, `data_collection` and `zdr`, the operator's
//! own zero-data-retention agreements (`SOLROUTER_ZDR_HOSTS`) and each endpoint's
//! `data_policy` in the endpoints API.

use crate::support::{data_dir, path, run_python, Dev};
use serde_json::{json, Value};
use solrouter_gateway::mock::{self, Knobs, MockConfig};
use std::time::Duration;

async fn run_phase(dev: &Dev, key: &str, phase: &str) {
    let env = [
        ("SOLROUTER_BASE_URL", dev.base.as_str()),
        ("SOLROUTER_KEY", key),
        ("ROUTING_PHASE", phase),
    ];
    let stdout = run_python("routing_sdk.py", &env, "routing ok").await;
    println!("{}", stdout.trim_end());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_follows_price_speed_and_health_across_two_hosts() {
    // The slow host: 50 ms to the first token, then 100 words per second.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let slow_url = format!("http://{}/v1", listener.local_addr().expect("address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = MockConfig {
        ttft: Duration::from_millis(50),
        tokens_per_second: 100,
        ..MockConfig::default()
    };
    let serving =
        tokio::spawn(mock::serve_with(listener, Knobs::try_new(config).expect("knobs"), stopped));
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &[("SOLROUTER_MOCK_SLOW_BASE_URL", &slow_url)]);
    let (_account, key) = dev.funded_account("10").await;
    run_phase(&dev, &key, "both").await;

    // The slow host fails mid-run: it stops answering (its port then refuses).
    drop(stop);
    serving.await.expect("the mock task").expect("the mock served");
    run_phase(&dev, &key, "failed").await;
    let (status, ready) = dev.get("/readyz", &key).await;
    assert_eq!((status, &ready["providers"]["mock-slow"]), (200, &serde_json::json!("failing")));
    assert_eq!(ready["providers"]["mock"], "healthy");
    let (status, metrics) = metrics_text(&dev).await;
    assert_eq!(status, 200);
    for line in [
        "solrouter_endpoint_circuit_open{provider=\"mock-slow\",model=\"mock/shared\"} 1",
        "solrouter_endpoint_tokens_per_second_5m{provider=\"mock\",model=\"mock/shared\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    dev.audit_ok().await;
}

/// `max_price` at the price tier a long prompt may reach, and the data-policy filters,
/// over the dev's own two hosts of `mock/shared`: `mock` ($2/$4 per million, retains
/// nothing) and `mock-slow` ($1/$2, $4/$4 above 8192 prompt tokens, abuse monitoring).
#[tokio::test]
async fn max_price_at_the_long_context_tier_and_data_policies_choose_the_host() {
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &[]);
    let (account, key) = dev.funded_account("10").await;
    let ask = |text: &str, provider: Value| {
        json!({"model": "mock/shared", "messages": [{"role": "user", "content": text}],
            "max_tokens": 16, "provider": provider})
    };
    let served = |(status, answer): (u16, Value)| {
        assert_eq!(status, 200, "{answer}");
        answer["provider"].as_str().expect("provider").to_owned()
    };
    let refused = |(status, error): (u16, Value)| {
        assert_eq!(status, 400, "{error}");
        error["error"]["param"].as_str().expect("param").to_owned()
    };
    let cheap = json!({"max_price": {"prompt": 2}, "sort": "price"});
    assert_eq!(served(dev.chat(&key, &ask("short", cheap.clone())).await), "mock-slow");
    // 10,000 bytes may be 10,000 tokens (what the hold covers): past mock-slow's tier.
    let long = "word ".repeat(2000);
    assert_eq!(served(dev.chat(&key, &ask(&long, cheap)).await), "mock");
    let only_slow = json!({"only": ["mock-slow"], "max_price": {"prompt": 2}});
    assert_eq!(refused(dev.chat(&key, &ask(&long, only_slow)).await), "provider.max_price");
    let within_tier = json!({"only": ["mock-slow"], "max_price": {"prompt": 4}});
    assert_eq!(served(dev.chat(&key, &ask(&long, within_tier)).await), "mock-slow");

    let zdr = json!({"zdr": true, "sort": "price"});
    assert_eq!(served(dev.chat(&key, &ask("private", zdr)).await), "mock");
    let deny = json!({"data_collection": "deny", "sort": "price"});
    assert_eq!(served(dev.chat(&key, &ask("private", deny)).await), "mock-slow");
    let slow_zdr = json!({"only": ["mock-slow"], "zdr": true});
    assert_eq!(refused(dev.chat(&key, &ask("private", slow_zdr)).await), "provider.zdr");
    let policies = data_policies(&dev, &key).await;
    assert_eq!(policies["mock"], policy("zero-retention", true, false, false));
    assert_eq!(policies["mock-slow"], policy("abuse-monitoring", false, false, false));
    assert_eq!(dev.account(&account).await["held"], "0.00");
    dev.audit_ok().await;
}

/// An operator's own zero-data-retention agreement with a host (`SOLROUTER_ZDR_HOSTS`)
/// lets `zdr` requests route to it, and the endpoints API shows it beside the host's
/// published policy: here with `mock-slow` (abuse monitoring, the cheaper host).
#[tokio::test]
async fn an_operators_zdr_agreement_routes_zdr_requests_to_its_host() {
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &[("SOLROUTER_ZDR_HOSTS", "mock-slow")]);
    let (account, key) = dev.funded_account("10").await;
    let policies = data_policies(&dev, &key).await;
    assert_eq!(policies["mock"], policy("zero-retention", true, false, false));
    assert_eq!(policies["mock-slow"], policy("abuse-monitoring", true, false, true));
    let ask = |provider: Value| {
        json!({"model": "mock/shared", "messages": [{"role": "user", "content": "private"}],
            "max_tokens": 16, "provider": provider})
    };
    for provider in
        [json!({"zdr": true, "sort": "price"}), json!({"only": ["mock-slow"], "zdr": true})]
    {
        let (status, answer) = dev.chat(&key, &ask(provider)).await;
        assert_eq!((status, &answer["provider"]), (200, &json!("mock-slow")), "{answer}");
    }
    assert_eq!(dev.account(&account).await["held"], "0.00");
    dev.audit_ok().await;
}

/// Each host's `data_policy` in `GET /v1/api/models/mock/shared/endpoints`.
async fn data_policies(dev: &Dev, key: &str) -> Value {
    let (status, body) = dev.get("/v1/api/models/mock/shared/endpoints", key).await;
    assert_eq!(status, 200, "{body}");
    let endpoints = body["data"]["endpoints"].as_array().expect("endpoints");
    let by_host = endpoints.iter().map(|endpoint| {
        let host = endpoint["provider_name"].as_str().expect("provider_name").to_owned();
        (host, endpoint["data_policy"].clone())
    });
    Value::Object(by_host.collect())
}

fn policy(published: &str, zdr: bool, may_collect: bool, zdr_agreement: bool) -> Value {
    json!({"policy": published, "zdr": zdr, "may_collect": may_collect,
        "zdr_agreement": zdr_agreement})
}

async fn metrics_text(dev: &Dev) -> (u16, String) {
    let response = dev.client.get(dev.url("/metrics")).send().await.expect("request");
    (response.status().as_u16(), response.text().await.expect("body"))
}
