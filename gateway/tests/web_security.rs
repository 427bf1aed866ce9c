//! The dashboard's security through the real binary: cookie flags, CSRF refusals,
//! sessions and API keys kept apart, expired and forged tokens, login limits, one
//! account probing another's ids, and a session made on one gateway working on another
//! until a logout on either ends it on both (a 3-node ledger cluster, 2 gateways).

use crate::support::{data_dir, path, user, Dev};
use crate::web_support::{WebClient, PASSWORD};
use base64::Engine;
use serde_json::{json, Value};

fn chat_body() -> Value {
    json!({"model": "mock/echo", "messages": user("hello there world")})
}

/// The secret dev mode generated in its data directory.
fn dev_secret(dir: &tempfile::TempDir) -> Vec<u8> {
    let text = std::fs::read_to_string(path(dir).join("session-secret")).expect("session secret");
    text.trim().as_bytes().to_vec()
}

/// A copy of the JWT `token` with its claims changed by `edit`, signed with `secret`.
fn resigned(token: &str, secret: &[u8], edit: impl FnOnce(&mut Value)) -> String {
    let payload = token.split('.').nth(1).expect("a JWT");
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&engine.decode(payload).unwrap()).unwrap();
    edit(&mut claims);
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(secret)).unwrap()
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn cookies_are_locked_down_and_forms_need_the_csrf_token() {
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &[]);
    let mut alice = WebClient::new(&dev.base);
    let signed_up = alice.signup("alice@example.com").await;
    let names: Vec<&str> =
        signed_up.set_cookies.iter().map(|c| c.split('=').next().unwrap()).collect();
    assert_eq!(names, ["sr_session", "sr_refresh", "sr_csrf"]);
    for cookie in &signed_up.set_cookies {
        for flag in ["; HttpOnly", "; Secure", "; SameSite=Strict", "; Path=/"] {
            assert!(cookie.contains(flag), "{cookie} lacks {flag}");
        }
    }
    let page = alice.get("/dashboard").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("alice@example.com"));
    let csrf = alice.cookies["sr_csrf"].clone();

    // A state-changing form without the token, with a wrong one, or without the cookie
    // half of the double submit is refused, and changes nothing.
    let missing = alice.post_raw("/dashboard/keys", &[("name", "k")]).await;
    assert_eq!(missing.status, 403, "{}", missing.body);
    let wrong =
        alice.post_raw("/dashboard/keys", &[("csrf", &"0".repeat(64)), ("name", "k")]).await;
    assert_eq!(wrong.status, 403);
    let mut without_cookie = alice.clone();
    without_cookie.cookies.remove("sr_csrf");
    let page = without_cookie.post_raw("/dashboard/keys", &[("csrf", &csrf), ("name", "k")]).await;
    assert_eq!(page.status, 403);
    // A token of another session (Bob's) does not do for Alice's.
    let mut bob = WebClient::new(&dev.base);
    bob.signup("bob@example.com").await;
    let mut forged = alice.clone();
    forged.cookies.insert("sr_csrf".into(), bob.cookies["sr_csrf"].clone());
    let page = forged.post("/dashboard/keys", &[("name", "k")]).await;
    assert_eq!(page.status, 403);
    assert!(!alice.get("/dashboard/keys").await.body.contains("/revoke"), "no key was made");
    let logout = alice.post_raw("/logout", &[]).await;
    assert_eq!(logout.status, 403, "logout needs the token too");
    // Logging in needs the pre-session token as well (login CSRF).
    let mut stranger = WebClient::new(&dev.base);
    let page = stranger
        .post_raw("/login", &[("email", "alice@example.com"), ("password", PASSWORD)])
        .await;
    assert_eq!(page.status, 403);
    // Pages carry a CSP that allows only this origin's scripts.
    let response = dev.client.get(dev.url("/login")).send().await.unwrap();
    let csp = response.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");

    // With the token, the key is made and shown once.
    let key = alice.create_key("first").await;
    assert!(key.starts_with("sr_"));
    assert!(!alice.get("/dashboard/keys").await.body.contains(&key), "shown only once");
}

#[tokio::test]
async fn sessions_and_api_keys_open_only_their_own_doors() {
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &[]);
    let mut alice = WebClient::new(&dev.base);
    alice.signup("alice@example.com").await;
    alice.credit("2.00").await;
    let key = alice.create_key("app").await;
    let (status, _) = dev.chat(&key, &chat_body()).await;
    assert_eq!(status, 200);

    // Session cookies call no API: only the key header authenticates there.
    let cookie = format!(
        "sr_session={}; sr_refresh={}",
        alice.cookies["sr_session"], alice.cookies["sr_refresh"]
    );
    let response = dev
        .client
        .post(dev.url("/v1/api/chat/completions"))
        .header("cookie", &cookie)
        .header("content-type", "application/json")
        .body(chat_body().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = dev.client.get(dev.url("/v1/api/credits")).header("cookie", &cookie);
    assert_eq!(response.send().await.unwrap().status(), 401);
    // API keys open no page.
    let mut with_key = WebClient::new(&dev.base);
    let page = with_key.get_with_bearer("/dashboard", &key).await;
    assert_eq!((page.status, page.location.as_deref()), (303, Some("/login")));
    let page = with_key.get_with_bearer("/dashboard/overview.json", &key).await;
    assert_eq!(page.status, 401);
    // Nor does a key's text as a password or a cookie.
    let page = with_key.login("alice@example.com", &key).await;
    assert_eq!(page.status, 401);
    with_key.cookies.insert("sr_session".into(), key.clone());
    assert_eq!(with_key.get("/dashboard").await.status, 303);
}

#[tokio::test]
async fn one_account_never_sees_or_touches_another() {
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &[]);
    let mut alice = WebClient::new(&dev.base);
    alice.signup("alice@example.com").await;
    alice.credit("3.00").await;
    let alice_key = alice.create_key("alice-app").await;
    let (status, answer) = dev.chat(&alice_key, &chat_body()).await;
    assert_eq!(status, 200);
    let generation = answer["id"].as_str().unwrap().to_owned();
    let (_, about) = dev.get("/v1/api/key", &alice_key).await;
    let alice_key_id = about["data"]["id"].as_str().unwrap().to_owned();

    let mut bob = WebClient::new(&dev.base);
    bob.signup("bob@example.com").await;
    let bob_key = bob.create_key("bob-app").await;
    // Bob guesses Alice's ids: her key cannot be revoked, her requests are not listed or
    // exported, her generation is unknown to his key, her balance and users are not his.
    let page = bob.post(&format!("/dashboard/keys/{alice_key_id}/revoke"), &[]).await;
    assert_eq!(page.status, 404, "{}", page.body);
    let disable = [("disabled", "true")];
    let page = bob.post(&format!("/dashboard/keys/{alice_key_id}/disabled"), &disable).await;
    assert_eq!(page.status, 404, "{}", page.body);
    let limit = [("limit", "0.000001"), ("limit_reset", "daily")];
    let page = bob.post(&format!("/dashboard/keys/{alice_key_id}/limits"), &limit).await;
    assert_eq!(page.status, 404, "{}", page.body);
    let page = bob.get(&format!("/dashboard/activity?key={alice_key_id}")).await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains(&generation) && page.body.contains("Nothing yet."));
    let csv = bob.get(&format!("/dashboard/activity.csv?key={alice_key_id}")).await;
    assert_eq!(csv.body.lines().count(), 1, "only the header: {}", csv.body);
    assert!(!bob.get("/dashboard/activity.csv").await.body.contains(&generation));
    let (status, _) = dev.get(&format!("/v1/api/generation?id={generation}"), &bob_key).await;
    assert_eq!(status, 404);
    assert_eq!(bob.overview().await["credits"], "$0.000000");
    assert_eq!(alice.overview().await["credits"], "$3.000000");
    let members = bob.get("/dashboard/members").await.body;
    assert!(members.contains("bob@example.com") && !members.contains("alice@example.com"));
    assert!(!bob.get("/dashboard/keys").await.body.contains("alice-app"));
    assert!(!bob.get("/dashboard/usage?by=key").await.body.contains("alice-app"));
    // Bob cannot take Alice's email for a member of his account.
    let page = bob
        .post("/dashboard/members", &[("email", "alice@example.com"), ("password", PASSWORD)])
        .await;
    assert!(page.body.contains("that email already has a user"), "{}", page.body);
    // Alice's key still works; her own page lists the request.
    assert_eq!(dev.chat(&alice_key, &chat_body()).await.0, 200);
    assert!(alice.get("/dashboard/activity").await.body.contains(&generation));

    // A member of Alice's account sees her account, but may not add members.
    let page = alice
        .post("/dashboard/members", &[("email", "carol@example.com"), ("password", PASSWORD)])
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    let mut carol = WebClient::new(&dev.base);
    assert_eq!(carol.login("carol@example.com", PASSWORD).await.status, 303);
    assert!(carol.get("/dashboard/keys").await.body.contains("alice-app"));
    let page = carol
        .post("/dashboard/members", &[("email", "dave@example.com"), ("password", PASSWORD)])
        .await;
    assert_eq!(page.status, 403);
    dev.audit_ok().await;
}

#[tokio::test]
async fn failed_logins_are_limited_per_email() {
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &[]);
    let mut alice = WebClient::new(&dev.base);
    alice.signup("alice@example.com").await;
    let mut attacker = WebClient::new(&dev.base);
    for _ in 0..5 {
        let page = attacker.login("alice@example.com", "wrong password!").await;
        assert_eq!(page.status, 401);
    }
    // Now even the right password is refused for a while, with the time to wait.
    let response = {
        let mut client = attacker.clone();
        client.login("alice@example.com", PASSWORD).await
    };
    assert_eq!(response.status, 429, "{}", response.body);
    let mut fresh = WebClient::new(&dev.base);
    assert_eq!(fresh.login("alice@example.com", PASSWORD).await.status, 429);
    // Another account is unaffected.
    let mut bob = WebClient::new(&dev.base);
    bob.signup("bob@example.com").await;
    assert_eq!(WebClient::new(&dev.base).login("bob@example.com", PASSWORD).await.status, 303);
}

#[tokio::test]
async fn expired_tokens_are_refused_and_the_refresh_token_renews_the_session() {
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &[]);
    let secret = dev_secret(&dir);
    let mut alice = WebClient::new(&dev.base);
    alice.signup("alice@example.com").await;
    let access = alice.cookies["sr_session"].clone();
    let refresh = alice.cookies["sr_refresh"].clone();
    let expired = resigned(&access, &secret, |claims| claims["exp"] = json!(now_s() - 5));

    // An expired access token alone is no session.
    let mut stale = WebClient::new(&dev.base);
    stale.cookies.insert("sr_session".into(), expired.clone());
    let page = stale.get("/dashboard").await;
    assert_eq!((page.status, page.location.as_deref()), (303, Some("/login")));
    // With the refresh token, the page answers and sets a fresh access token.
    let mut renewing = WebClient::new(&dev.base);
    renewing.cookies.insert("sr_session".into(), expired);
    renewing.cookies.insert("sr_refresh".into(), refresh.clone());
    let page = renewing.get("/dashboard").await;
    assert_eq!(page.status, 200);
    let renewed = page.set_cookies.iter().find(|c| c.starts_with("sr_session=")).expect("renewed");
    assert!(renewed.contains("; HttpOnly; Secure; SameSite=Strict"));
    // An expired refresh token, one signed with another secret, one whose session has
    // ended, and an access token used as a refresh token renew nothing.
    let other_secret = [9u8; 32];
    for (name, token) in [
        ("expired", resigned(&refresh, &secret, |c| c["exp"] = json!(now_s() - 5))),
        ("forged", resigned(&refresh, &other_secret, |_| {})),
        ("ended", resigned(&refresh, &secret, |c| c["end"] = json!(now_s() * 1000 - 5_000))),
        ("access as refresh", access.clone()),
        ("unsigned", {
            let mut parts: Vec<&str> = refresh.split('.').collect();
            parts[2] = "";
            parts.join(".")
        }),
    ] {
        let mut client = WebClient::new(&dev.base);
        client.cookies.insert("sr_refresh".into(), token);
        assert_eq!(client.get("/dashboard").await.status, 303, "{name}");
    }
}

/// A session made through one gateway works on the other (users and the signing secret
/// are shared); a logout through either ends it on both at once (the revocation is read
/// linearizably from the ledger on every request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_works_on_every_gateway_until_a_logout_on_any() {
    use crate::cluster_support::{ledger_specs, seeds, wait_http_ok, Gateway};
    let root = tempfile::tempdir().unwrap();
    let specs = ledger_specs(root.path());
    let _ledgers: Vec<_> = specs.iter().map(|spec| spec.start()).collect();
    let gateways = [Gateway::start(&seeds(&specs)), Gateway::start(&seeds(&specs))];
    for gateway in &gateways {
        wait_http_ok(&format!("{}/readyz", gateway.endpoint.base)).await;
    }
    let (first, second) = (&gateways[0].endpoint.base, &gateways[1].endpoint.base);
    let mut on_first = WebClient::new(first);
    on_first.signup("alice@example.com").await;
    let key = on_first.create_key("app").await;
    let mut on_second = on_first.at(second);
    let page = on_second.get("/dashboard/keys").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("alice@example.com") && page.body.contains(">app<"));
    // The user logs in through the second gateway too.
    let mut again = WebClient::new(second);
    assert_eq!(again.login("alice@example.com", PASSWORD).await.status, 303);
    // A key made through the dashboard works through any gateway.
    let endpoint = &gateways[1].endpoint;
    endpoint.chat(&key, &chat_body()).await.expect("answered");

    let before_logout = on_first.clone();
    let page = on_second.post("/logout", &[]).await;
    assert_eq!((page.status, page.location.as_deref()), (303, Some("/login")));
    assert!(!on_second.cookies.contains_key("sr_session"), "cleared in the browser");
    for base in [first, second] {
        let mut replay = before_logout.at(base);
        let page = replay.get("/dashboard").await;
        assert_eq!((page.status, page.location.as_deref()), (303, Some("/login")), "{base}");
    }
    // The other session of the same user lives on.
    assert_eq!(again.get("/dashboard").await.status, 200);
}
