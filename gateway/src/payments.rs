//! `POST /v1/api/webhooks/payments`: top-ups from a payment provider's webhook, signed
//! the way Stripe signs its events. The `Stripe-Signature` header is
//! `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` (several `v1`s while a
//! secret is rolled: any one may match); a signature is compared in constant time, and a
//! timestamp more than [`SIGNATURE_TOLERANCE`] from the gateway's clock is refused, so a
//! captured delivery cannot be replayed later. Each event credits its account once,
//! however often it is delivered, through however many gateways: the top-up's
//! idempotency key is the event id, and the ledger remembers an account's top-ups for the
//! account's life.
//!
//! Events read (Stripe's shapes): `checkout.session.completed` with `payment_status`
//! `paid` (the account in `client_reference_id` or `metadata.solrouter_account`, the
//! amount in `amount_total`) and `payment_intent.succeeded` (the account in
//! `metadata.solrouter_account`, the amount in `amount_received`); amounts in US cents,
//! `currency` `usd`. Other event types are acknowledged and ignored, as Stripe expects.
//! The secret is `webhook_secret` (`SOLROUTER_WEBHOOK_SECRET`); `solrouter dev` makes one
//! when none is configured ([`dev_secret`]); without one the endpoint is a 404.

use crate::app::App;
use crate::body::UnreadBody;
use crate::error::ApiError;
use crate::respond::{self, Response};
use hmac::{Hmac, Mac};
use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;
use solrouter_ledger::{AccountId, PicoUsd, Rejection, Reply, PICO_PER_USD};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const WEBHOOK_PATH: &str = "/v1/api/webhooks/payments";
pub const SIGNATURE_HEADER: &str = "stripe-signature";
/// How far a signature's timestamp may be from the gateway's clock (Stripe's default).
pub const SIGNATURE_TOLERANCE: Duration = Duration::from_secs(300);
/// Stripe's events are at most a few tens of KiB.
pub const WEBHOOK_BODY_BYTES_MAX: usize = 256 << 10;
/// Longest event id taken (it becomes the top-up's idempotency key).
pub const EVENT_ID_BYTES_MAX: usize = 200;
/// The file `solrouter dev` keeps its generated secret in, under the data directory.
pub const DEV_SECRET_FILE: &str = "webhook-secret";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing or malformed Stripe-Signature header (expected t=…,v1=…)")]
    Malformed,
    #[error("the signature's timestamp is outside the tolerance of {0} s")]
    OutsideTolerance(u64),
    #[error("no v1 signature matches")]
    Mismatch,
}

/// Checks `header` against `body` signed with `secret` at a time within `tolerance_s` of
/// `now_s`.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_s: u64,
    tolerance_s: u64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) if timestamp.is_none() => timestamp = Some(value),
            Some(("v1", value)) => signatures.push(value),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    let signed_at: u64 = timestamp.parse().map_err(|_| SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now_s.abs_diff(signed_at) > tolerance_s {
        return Err(SignatureError::OutsideTolerance(tolerance_s));
    }
    let mac = signer(secret, timestamp, body);
    let matches = signatures.iter().filter_map(|text| hex::decode(text).ok()).any(|signature| {
        // `verify_slice` compares in constant time.
        mac.clone().verify_slice(&signature).is_ok()
    });
    if matches {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// The `Stripe-Signature` header for `body` signed with `secret` at `now_s`: what a
/// payment provider sends (tests and operators' scripts sign with it).
pub fn sign(secret: &[u8], body: &[u8], now_s: u64) -> String {
    let timestamp = now_s.to_string();
    let signature = signer(secret, &timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(signature))
}

fn signer(secret: &[u8], timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any size");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

#[derive(Deserialize)]
struct Event {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: EventData,
}

#[derive(Deserialize)]
struct EventData {
    object: PaymentObject,
}

/// The fields read of a checkout session or payment intent.
#[derive(Deserialize, Default)]
#[serde(default)]
struct PaymentObject {
    client_reference_id: Option<String>,
    metadata: Metadata,
    amount_total: Option<u64>,
    amount_received: Option<u64>,
    currency: Option<String>,
    payment_status: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Metadata {
    solrouter_account: Option<String>,
}

/// A top-up an event asks for.
#[derive(Debug, PartialEq, Eq)]
struct TopUp {
    account: AccountId,
    amount: PicoUsd,
}

/// What a verified event asks for: a top-up, or nothing (`None`: an event type or state
/// this endpoint does not act on).
fn top_up(event: &Event) -> Result<Option<TopUp>, ApiError> {
    let object = &event.data.object;
    let (account, cents) = match event.kind.as_str() {
        "checkout.session.completed" if object.payment_status.as_deref() == Some("paid") => {
            let account = object.metadata.solrouter_account.as_ref();
            (account.or(object.client_reference_id.as_ref()), object.amount_total)
        }
        "payment_intent.succeeded" => {
            (object.metadata.solrouter_account.as_ref(), object.amount_received)
        }
        _ => return Ok(None),
    };
    let account = account.ok_or_else(|| {
        ApiError::malformed("the event names no account (client_reference_id or metadata)")
    })?;
    let account = crate::api::parse_hex_u64("account", account)?;
    if !object.currency.as_deref().is_some_and(|currency| currency.eq_ignore_ascii_case("usd")) {
        return Err(ApiError::invalid_param("currency", "only usd is credited"));
    }
    let cents = cents.filter(|cents| *cents > 0);
    let cents = cents.ok_or_else(|| ApiError::invalid_param("amount", "must be above zero"))?;
    let amount = PicoUsd(u128::from(cents) * (PICO_PER_USD / 100));
    Ok(Some(TopUp { account: AccountId(account), amount }))
}

/// `POST /v1/api/webhooks/payments`.
pub async fn handle(app: &'static App, request: Request<Incoming>) -> Result<Response, ApiError> {
    let secret = app
        .webhook_secret
        .as_deref()
        .ok_or_else(|| ApiError::not_found("no payments webhook is configured (webhook_secret)"))?;
    let (head, body) = request.into_parts();
    let header = head.headers.get(SIGNATURE_HEADER).and_then(|value| value.to_str().ok());
    let body = UnreadBody::new(&head.headers, body, WEBHOOK_BODY_BYTES_MAX)?;
    let body = body.read(WEBHOOK_BODY_BYTES_MAX).await?;
    let now_s = crate::bank::now_ms() / 1000;
    verify(
        secret.as_bytes(),
        header.unwrap_or_default(),
        &body,
        now_s,
        SIGNATURE_TOLERANCE.as_secs(),
    )
    .map_err(|error| ApiError::invalid_param("stripe-signature", error.to_string()))?;
    let event: Event = serde_json::from_slice(&body)
        .map_err(|error| ApiError::malformed(format!("invalid event: {error}")))?;
    if event.id.is_empty() || event.id.len() > EVENT_ID_BYTES_MAX {
        let message = format!("must be 1 to {EVENT_ID_BYTES_MAX} bytes");
        return Err(ApiError::invalid_param("id", message));
    }
    let Some(TopUp { account, amount }) = top_up(&event)? else {
        let body = json!({"received": true, "ignored": event.kind});
        return Ok(respond::json(StatusCode::OK, &body));
    };
    let idempotency_key = format!("payment event {}", event.id);
    let credited = app.bank.credit(account, amount, &idempotency_key).await?;
    match credited {
        Ok(Reply::Credited { credits }) => {
            tracing::info!(account = account.0, %amount, event = event.id, "payment credited");
            let body = json!({
                "received": true,
                "account": crate::admin::hex_id(account.0),
                "credited": amount.to_string(),
                "credits": credits.to_string(),
            });
            Ok(respond::json(StatusCode::OK, &body))
        }
        Ok(reply) => Err(ApiError::internal(format!("credit answered {reply:?}"))),
        Err(Rejection::UnknownAccount) => Err(ApiError::invalid_param("account", "unknown")),
        Err(Rejection::IdReused) => {
            Err(ApiError::conflict("this event id was credited with another amount"))
        }
        Err(rejection @ Rejection::TopUpsExhausted) => {
            Err(ApiError::conflict(rejection.to_string()))
        }
        Err(rejection) => Err(ApiError::ledger("credit", rejection)),
    }
}

/// Dev mode's secret: the one in `<data dir>/webhook-secret`, or a new one written there
/// (readable by its owner only), so it survives restarts; returns it and its path.
pub fn dev_secret(data_dir: &Path) -> std::io::Result<(String, PathBuf)> {
    let path = data_dir.join(DEV_SECRET_FILE);
    let secret = crate::keys::stored_secret(&path, "whsec_")?;
    Ok((secret, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test";
    const NOW: u64 = 1_764_504_000;

    #[test]
    fn accepts_its_own_signature_within_the_tolerance() {
        let body = br#"{"id":"evt_1"}"#;
        let header = sign(SECRET, body, NOW);
        assert_eq!(verify(SECRET, &header, body, NOW + 300, 300), Ok(()));
        assert_eq!(verify(SECRET, &header, body, NOW - 300, 300), Ok(()));
        let outside = Err(SignatureError::OutsideTolerance(300));
        assert_eq!(verify(SECRET, &header, body, NOW + 301, 300), outside);
        assert_eq!(verify(b"whsec_other", &header, body, NOW, 300), Err(SignatureError::Mismatch));
        assert_eq!(verify(SECRET, &header, b"{}", NOW, 300), Err(SignatureError::Mismatch));
    }

    /// Stripe's documented layout; any one of several `v1`s may match; other schemes
    /// (`v0`) are ignored; the signed timestamp is the header's text.
    #[test]
    fn reads_stripe_signature_headers() {
        let body = b"payload";
        let good = sign(SECRET, body, NOW);
        let v1 = good.split_once(",v1=").unwrap().1;
        let rolled = format!("t={NOW},v1={},v0=abc,v1={v1}", "00".repeat(32));
        assert_eq!(verify(SECRET, &rolled, body, NOW, 300), Ok(()));
        // A timestamp other than the signed one does not verify.
        let shifted = format!("t={},v1={v1}", NOW + 1);
        assert_eq!(verify(SECRET, &shifted, body, NOW, 300), Err(SignatureError::Mismatch));
        for malformed in ["", "t=1", &format!("v1={v1}"), &format!("t=x,v1={v1}")] {
            assert_eq!(verify(SECRET, malformed, body, NOW, 300), Err(SignatureError::Malformed));
        }
        // Known answer: HMAC-SHA256("whsec_test", "1764504000.payload").
        let expected = {
            let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
            mac.update(b"1764504000.payload");
            hex::encode(mac.finalize().into_bytes())
        };
        assert_eq!(good, format!("t=1764504000,v1={expected}"));
    }

    fn event(json: serde_json::Value) -> Event {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn reads_top_ups_from_stripe_events() {
        let checkout = event(json!({"id": "evt_1", "type": "checkout.session.completed",
            "data": {"object": {"client_reference_id": "00000000000000ff", "amount_total": 1050,
                "currency": "usd", "payment_status": "paid"}}}));
        let expected =
            TopUp { account: AccountId(255), amount: PicoUsd::parse_usd("10.50").unwrap() };
        assert_eq!(top_up(&checkout).unwrap(), Some(expected));
        let intent = event(json!({"id": "evt_2", "type": "payment_intent.succeeded",
            "data": {"object": {"metadata": {"solrouter_account": "0000000000000001"},
                "amount_received": 1, "currency": "USD"}}}));
        let cent = TopUp { account: AccountId(1), amount: PicoUsd(PICO_PER_USD / 100) };
        assert_eq!(top_up(&intent).unwrap(), Some(cent));
        let unpaid = event(json!({"id": "evt_3", "type": "checkout.session.completed",
            "data": {"object": {"payment_status": "unpaid"}}}));
        assert_eq!(top_up(&unpaid).unwrap(), None);
        let other =
            event(json!({"id": "evt_4", "type": "customer.created", "data": {"object": {}}}));
        assert_eq!(top_up(&other).unwrap(), None);
        let euros = event(json!({"id": "evt_5", "type": "payment_intent.succeeded",
            "data": {"object": {"metadata": {"solrouter_account": "0000000000000001"},
                "amount_received": 100, "currency": "eur"}}}));
        assert!(top_up(&euros).is_err());
    }
}
