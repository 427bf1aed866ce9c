//! Through the real binary: keys' own limits (spend per period, requests per minute,
//! disabled), the management-key API in OpenRouter's shapes, `GET /v1/api/key`, and the
//! signed payments webhook crediting once per event.

use crate::support;
use crate::support::{data_dir, path, pico, user, Dev};
use reqwest::Method;
use serde_json::{json, Value};
use solrouter_gateway::payments;

/// A request with `bearer` and an optional JSON body; the status, the `Retry-After`
/// header and the body.
async fn call(
    dev: &Dev,
    method: Method,
    path: &str,
    bearer: &str,
    body: Option<Value>,
) -> (u16, Option<String>, Value) {
    let mut request = dev.client.request(method, dev.url(path)).bearer_auth(bearer);
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body.to_string());
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    (status, retry_after, support::read_json(response).await)
}

/// Creates a key of `account` through the admin API with `fields`; (id, key text, body).
async fn admin_key(dev: &Dev, account: &str, fields: Value) -> (String, String, Value) {
    let path = format!("/v1/admin/accounts/{account}/keys");
    let (status, body) = dev.admin(Method::POST, &path, Some(fields)).await;
    assert_eq!(status, 201, "{body}");
    (body["id"].as_str().unwrap().to_owned(), body["key"].as_str().unwrap().to_owned(), body)
}

fn hello() -> Value {
    json!({"model": "mock/echo", "messages": user("hello there")})
}

/// A key at its spend limit gets a 402 naming the limit and when it resets, while its
/// account still has credit; lifting the limit lets it spend again. (The reset itself is
/// the ledger's arithmetic over batch stamps, tested in `ledger/tests/key_limits.rs`.)
#[tokio::test]
async fn a_key_past_its_spend_limit_is_refused_while_the_account_has_credit() {
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &[]);
    let (account, _) = dev.funded_account("10.00").await;
    let fields = json!({"name": "capped", "management": true});
    let (_, manager, _) = admin_key(&dev, &account, fields).await;
    let fields = json!({"name": "ci", "limit": "1000", "limit_reset": "daily"});
    let (id, key, created) = admin_key(&dev, &account, fields).await;
    assert_eq!(created["limit"], 1000.0);
    assert_eq!(created["limit_reset"], "daily");

    let (status, answer) = dev.chat(&key, &hello()).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _, shown) = call(&dev, Method::GET, "/v1/api/key", &key, None).await;
    assert_eq!(status, 200, "{shown}");
    let usage = shown["data"]["usage_usd"].as_str().unwrap().to_owned();
    assert!(pico(&shown["data"]["usage_usd"]) > 0);
    assert_eq!(shown["data"]["usage_daily"], shown["data"]["usage"]);

    // The limit set to exactly what the key spent today: nothing remains.
    let patch = json!({"limit": usage});
    let path = format!("/v1/api/keys/{id}");
    let (status, _, patched) = call(&dev, Method::PATCH, &path, &manager, Some(patch)).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["data"]["limit_remaining"], 0.0);
    let (status, refused) = dev.chat(&key, &hello()).await;
    assert_eq!(status, 402, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("spend limit of ${usage} (daily)")), "{message}");
    assert!(message.contains("T00:00:00Z"), "names the next UTC midnight: {message}");
    assert_eq!(refused["error"]["code"], "key_limit_exceeded");
    let balance = dev.account(&account).await;
    assert!(pico(&balance["available"]) > 9 * 1_000_000_000_000, "the account has credit");

    // The operator lifts it through the admin API.
    let admin_path = format!("/v1/admin/keys/{id}");
    let (status, lifted) =
        dev.admin(Method::PATCH, &admin_path, Some(json!({"limit": null}))).await;
    assert_eq!(status, 200, "{lifted}");
    assert_eq!(lifted["limit"], Value::Null);
    let (status, answer) = dev.chat(&key, &hello()).await;
    assert_eq!(status, 200, "{answer}");
    dev.audit_ok().await;
}

/// A key allowed 2 requests a minute gets a 429 with `Retry-After` (at most a minute) on
/// the third within one UTC minute. Two windows may split the burst, so at most 4 pass
/// before the refusal.
#[tokio::test]
async fn a_key_past_its_requests_per_minute_gets_429_with_retry_after() {
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &[]);
    let (account, _) = dev.funded_account("10.00").await;
    let (_, key, _) =
        admin_key(&dev, &account, json!({"name": "slow", "requests_per_minute": 2})).await;
    let (status, _, shown) = call(&dev, Method::GET, "/v1/api/key", &key, None).await;
    assert_eq!(status, 200);
    assert_eq!(shown["data"]["rate_limit"]["requests"], 2);
    let mut passed = 0;
    let refusal = loop {
        let response = dev
            .client
            .post(dev.url("/v1/api/chat/completions"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(hello().to_string())
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            break response;
        }
        assert_eq!(response.status(), 200);
        passed += 1;
        assert!(passed <= 4, "no 429 after {passed} requests");
    };
    let retry_after: u64 = refusal.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body = support::read_json(refusal).await;
    assert!(body["error"]["message"].as_str().unwrap().contains("2 requests per minute"), "{body}");
    dev.audit_ok().await;
}

/// The management API: a management key lists, creates, reads, disables, enables and
/// revokes its account's inference keys; it cannot make requests, an inference key cannot
/// manage, and another account's keys are 404s.
#[tokio::test]
async fn management_keys_manage_their_accounts_keys_only() {
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &[]);
    let (account, inference) = dev.funded_account("10.00").await;
    let (other_account, _) = dev.funded_account("1.00").await;
    let (manager_id, manager, _) =
        admin_key(&dev, &account, json!({"name": "ops", "management": true})).await;
    let (other_id, _, _) = admin_key(&dev, &other_account, json!({"name": "theirs"})).await;

    let (status, refused) = dev.chat(&manager, &hello()).await;
    assert_eq!(status, 403, "{refused}");
    let (status, _, refused) = call(&dev, Method::GET, "/v1/api/keys", &inference, None).await;
    assert_eq!(status, 403, "{refused}");

    let body = json!({"name": "project x", "limit": 12.5, "limit_reset": "monthly",
        "tokens_per_minute": 100000, "include_byok_in_limit": false});
    let (status, _, created) = call(&dev, Method::POST, "/v1/api/keys", &manager, Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["data"]["hash"].as_str().unwrap().to_owned();
    assert_eq!(created["data"]["limit_usd"], "12.50");
    assert_eq!(created["data"]["limit_reset"], "monthly");
    assert_eq!(created["data"]["rate_limit"]["tokens"], 100_000);
    let body = json!({"name": "escalate", "management": true});
    let (status, _, _) = call(&dev, Method::POST, "/v1/api/keys", &manager, Some(body)).await;
    assert_eq!(status, 403, "a management key cannot mint management keys");

    let (status, _, listed) = call(&dev, Method::GET, "/v1/api/keys", &manager, None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> =
        listed["data"].as_array().unwrap().iter().map(|k| k["hash"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3, "{listed}");
    assert!(ids.contains(&id.as_str()) && ids.contains(&manager_id.as_str()));
    assert!(!ids.contains(&other_id.as_str()));
    for method in [Method::GET, Method::PATCH, Method::DELETE] {
        let body = (method == Method::PATCH).then(|| json!({"disabled": true}));
        let path = format!("/v1/api/keys/{other_id}");
        let (status, _, _) = call(&dev, method.clone(), &path, &manager, body).await;
        assert_eq!(status, 404, "{method} of another account's key");
    }

    let path = format!("/v1/api/keys/{id}");
    let (status, _, _) =
        call(&dev, Method::PATCH, &path, &manager, Some(json!({"disabled": true}))).await;
    assert_eq!(status, 200);
    let (status, refused) = dev.chat(&key, &hello()).await;
    assert_eq!(status, 401, "{refused}");
    let (status, _, _) =
        call(&dev, Method::PATCH, &path, &manager, Some(json!({"disabled": false}))).await;
    assert_eq!(status, 200);
    let (status, answer) = dev.chat(&key, &hello()).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _, shown) = call(&dev, Method::GET, &path, &manager, None).await;
    assert_eq!(status, 200);
    assert!(shown["data"]["usage"].as_f64().unwrap() > 0.0, "{shown}");

    let (status, _, _) = call(&dev, Method::DELETE, &path, &manager, None).await;
    assert_eq!(status, 200);
    let (status, _) = dev.chat(&key, &hello()).await;
    assert_eq!(status, 401, "revoked");
    let (status, _, _) =
        call(&dev, Method::PATCH, &path, &manager, Some(json!({"disabled": false}))).await;
    assert_eq!(status, 409, "a revoked key stays revoked");
    let self_path = format!("/v1/api/keys/{manager_id}");
    let (status, _, _) = call(&dev, Method::DELETE, &self_path, &manager, None).await;
    assert_eq!(status, 403, "a management key does not revoke itself");

    // The generation record carries the time to first token.
    let (status, answer) = dev.chat(&inference, &hello()).await;
    assert_eq!(status, 200);
    let generation = format!("/v1/api/generation?id={}", answer["id"].as_str().unwrap());
    let (status, record) = dev.get(&generation, &inference).await;
    assert_eq!(status, 200);
    assert!(record["data"]["ttft_ms"].is_u64(), "{record}");
    dev.audit_ok().await;
}

const SECRET: &str = "whsec_test_secret_0123456789";

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

async fn deliver(dev: &Dev, body: &str, signature: &str) -> (u16, Value) {
    let response = dev
        .client
        .post(dev.url(payments::WEBHOOK_PATH))
        .header(payments::SIGNATURE_HEADER, signature)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, support::read_json(response).await)
}

fn checkout(event: &str, account: &str, cents: u64) -> String {
    json!({"id": event, "type": "checkout.session.completed", "data": {"object": {
        "client_reference_id": account, "amount_total": cents, "currency": "usd",
        "payment_status": "paid"}}})
    .to_string()
}

/// A signed event credits its account once however often it is delivered (resent as
/// is, or re-signed later); a bad signature and one outside the tolerance are 400s and
/// credit nothing.
#[tokio::test]
async fn the_payments_webhook_credits_each_event_once() {
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &[("SOLROUTER_WEBHOOK_SECRET", SECRET)]);
    let (account, _) = dev.funded_account("1.00").await;
    let body = checkout("evt_1", &account, 2_500);
    let signature = payments::sign(SECRET.as_bytes(), body.as_bytes(), now_s());
    let (status, answer) = deliver(&dev, &body, &signature).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["credited"], "25.00");
    assert_eq!(dev.account(&account).await["credits"], "26.00");
    for _ in 0..3 {
        let (status, again) = deliver(&dev, &body, &signature).await;
        assert_eq!(status, 200, "{again}");
    }
    let later = payments::sign(SECRET.as_bytes(), body.as_bytes(), now_s() + 5);
    let (status, _) = deliver(&dev, &body, &later).await;
    assert_eq!(status, 200);
    assert_eq!(dev.account(&account).await["credits"], "26.00", "credited once");

    let other = checkout("evt_2", &account, 100);
    let forged = payments::sign(b"whsec_not_the_secret", other.as_bytes(), now_s());
    let (status, refused) = deliver(&dev, &other, &forged).await;
    assert_eq!(status, 400, "{refused}");
    let stale = payments::sign(SECRET.as_bytes(), other.as_bytes(), now_s() - 301);
    let (status, refused) = deliver(&dev, &other, &stale).await;
    assert_eq!(status, 400, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("tolerance"), "{refused}");
    let (status, _) = deliver(&dev, &other, "").await;
    assert_eq!(status, 400);
    // The signed body is the whole body: a changed amount does not verify.
    let tampered = checkout("evt_1", &account, 999_999);
    let (status, _) = deliver(&dev, &tampered, &signature).await;
    assert_eq!(status, 400);
    assert_eq!(dev.account(&account).await["credits"], "26.00");
    dev.audit_ok().await;
}

/// Without a configured secret, dev mode makes one in its data directory, reuses it on
/// restart, and the webhook verifies with it.
#[tokio::test]
async fn dev_mode_generates_a_webhook_secret_in_its_data_directory() {
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &[]);
    let secret_path = dir.path().join(payments::DEV_SECRET_FILE);
    let secret = std::fs::read_to_string(&secret_path).unwrap().trim().to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    let account = dev.demo_account.clone();
    let body = checkout("evt_dev", &account, 100);
    let signature = payments::sign(secret.as_bytes(), body.as_bytes(), now_s());
    let (status, answer) = deliver(&dev, &body, &signature).await;
    assert_eq!(status, 200, "{answer}");
    dev.kill();
    let dev = Dev::start(&path(&dir), &[]);
    assert_eq!(std::fs::read_to_string(&secret_path).unwrap().trim(), secret);
    let (status, _) = deliver(&dev, &body, &signature).await;
    assert_eq!(status, 200);
    assert_eq!(dev.account(&account).await["credits"], "6.00", "$5 demo credit plus $1, once");
}

/// `/activity` pages its daily rows by model and key and filters them; with
/// `view=requests` it pages the requests themselves.
#[tokio::test]
async fn activity_pages_aggregates_by_key_and_model_and_requests() {
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &[]);
    let (account, first) = dev.funded_account("10.00").await;
    let (second_id, second) = dev.create_key(&account).await;
    for key in [&first, &first, &second] {
        let (status, answer) = dev.chat(key, &hello()).await;
        assert_eq!(status, 200, "{answer}");
    }
    let (status, all) = dev.get("/v1/api/activity", &first).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["data"].as_array().unwrap().len(), 2, "a row per key: {all}");
    assert_eq!(all["next_cursor"], Value::Null);
    let (status, page) = dev.get("/v1/api/activity?limit=1", &first).await;
    assert_eq!(status, 200);
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    let next = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, rest) = dev.get(&format!("/v1/api/activity?limit=1&cursor={next}"), &first).await;
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next_cursor"], Value::Null);
    assert_ne!(page["data"][0]["key_id"], rest["data"][0]["key_id"]);
    let (_, only) =
        dev.get(&format!("/v1/api/activity?key={second_id}&model=mock/echo"), &first).await;
    assert_eq!(only["data"].as_array().unwrap().len(), 1);
    assert_eq!(only["data"][0]["requests"], 1, "{only}");
    let (_, none) = dev.get("/v1/api/activity?model=mock/unavailable", &first).await;
    assert_eq!(none["data"], json!([]));

    let (status, requests) = dev.get("/v1/api/activity?view=requests&limit=2", &first).await;
    assert_eq!(status, 200, "{requests}");
    assert_eq!(requests["data"].as_array().unwrap().len(), 2);
    assert!(requests["next_cursor"].is_string(), "{requests}");
    assert!(requests["data"][0]["ttft_ms"].is_u64(), "{requests}");
}
