//! Durability of dev mode: SIGKILL (or SIGTERM) the process and restart it on the same data
//! directory; accounts, keys, balances and request records are all still there, and no
//! second demo account appears.

use crate::support::{data_dir, path, user, Dev};
use serde_json::json;

#[tokio::test]
async fn sigkill_and_restart_loses_nothing() {
    restart_loses_nothing(Stop::Kill).await;
}

/// SIGTERM stops dev within its deadline and with success: the gateway, the mock, the
/// ledger and the ledger's own thread all end.
#[tokio::test]
async fn sigterm_stops_dev_and_a_restart_loses_nothing() {
    restart_loses_nothing(Stop::Terminate).await;
}

/// How the first process is stopped before the restart.
enum Stop {
    /// SIGKILL: no shutdown code runs.
    Kill,
    /// SIGTERM: the shutdown must finish, with success.
    Terminate,
}

async fn restart_loses_nothing(stop: Stop) {
    let dir = data_dir();
    let first = Dev::start(&path(&dir), &[]);
    let key = first.demo_key.clone().expect("demo key");
    let (account, other_key) = first.funded_account("2.50").await;
    let (status, plain) =
        first.chat(&key, &json!({"model": "mock/echo", "messages": user("keep me")})).await;
    assert_eq!(status, 200);
    let (events, done) = first
        .chat_stream(
            &other_key,
            &json!({"model": "mock/echo", "stream": true, "messages": user("me too")}),
        )
        .await;
    assert!(done);
    let ids = [
        plain["id"].as_str().expect("id").to_owned(),
        events[0]["id"].as_str().expect("id").to_owned(),
    ];
    let keys = [key.clone(), other_key.clone()];
    let before = snapshot(&first, &account, &ids, &keys).await;
    let demo_account = first.demo_account.clone();
    match stop {
        Stop::Kill => first.kill(),
        Stop::Terminate => first.terminate(),
    }

    let second = Dev::start(&path(&dir), &[]);
    assert_eq!(second.demo_key, None, "a restart must not create a second demo account");
    assert_eq!(second.demo_account, demo_account);
    let after = snapshot(&second, &account, &ids, &keys).await;
    assert_eq!(before, after);
    assert_eq!(after["audit"]["ok"], true);
    assert_eq!(after["audit"]["accounts"], 2);
    // Both keys still work, and the ledger goes on from where it was.
    assert_eq!(
        second.chat(&key, &json!({"model": "mock/echo", "messages": user("again")})).await.0,
        200
    );
    assert_eq!(
        second.chat(&other_key, &json!({"model": "mock/echo", "messages": user("again")})).await.0,
        200
    );
    second.audit_ok().await;
}

/// Everything a restart must keep, as one comparable value.
async fn snapshot(
    dev: &Dev,
    account: &str,
    ids: &[String; 2],
    keys: &[String; 2],
) -> serde_json::Value {
    let demo = dev.account(&dev.demo_account).await;
    let other = dev.account(account).await;
    let mut records = Vec::new();
    for (id, key) in ids.iter().zip(keys) {
        records.push(dev.get(&format!("/v1/api/generation?id={id}"), key).await.1);
    }
    let (_, audit) = dev.admin(reqwest::Method::GET, "/v1/admin/audit", None).await;
    json!({"demo": demo, "other": other, "records": records, "audit": audit})
}
