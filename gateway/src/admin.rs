//! The admin API (bearer `SOLROUTER_ADMIN_TOKEN`): accounts, top-ups, keys, the audit.
//! Ids travel as 16 hex digits (u64 does not survive JavaScript's numbers); money as
//! decimal USD strings, exact.

use crate::account::{self, Actor, KeyFields};
use crate::api::authorization;
use crate::app::App;
use crate::body::UnreadBody;
use crate::error::ApiError;
use crate::keys;
use crate::respond::{self, Response};
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use solrouter_ledger::{signed_usd, AccountId, KeyId, PicoUsd, Rejection, Reply, NAME_BYTES_MAX};

/// Where the admin API lives.
pub const PREFIX: &str = "/v1/admin/";
/// Admin bodies are a name or an amount; 64 KiB is far more than any needs.
pub const ADMIN_BODY_BYTES_MAX: usize = 64 << 10;
/// Longest idempotency key accepted (it is hashed, so only the request size matters).
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 256;

/// Authenticates the admin and dispatches on method and path.
pub async fn handle(app: &'static App, request: Request<Incoming>) -> Result<Response, ApiError> {
    let token = authorization(request.headers())
        .and_then(|value| value.strip_prefix(b"Bearer "))
        .ok_or_else(|| {
        ApiError::unauthorized("missing admin token: send `Authorization: Bearer …`")
    })?;
    if !keys::secrets_equal(token, app.admin_token.as_bytes()) {
        return Err(ApiError::unauthorized("invalid admin token"));
    }
    let path = request.uri().path().strip_prefix(PREFIX).unwrap_or_default().to_owned();
    let segments: Vec<&str> = path.split('/').collect();
    match (request.method().clone(), segments.as_slice()) {
        (Method::POST, ["accounts"]) => create_account(app, request).await,
        (Method::GET, ["accounts", id]) => account(app, parse_id(id, "account id")?).await,
        (Method::POST, ["accounts", id, "credits"]) => {
            credit(app, parse_id(id, "account id")?, request).await
        }
        (Method::POST, ["accounts", id, "keys"]) => {
            create_key(app, parse_id(id, "account id")?, request).await
        }
        (Method::DELETE, ["keys", id]) => revoke_key(app, KeyId(parse_id(id, "key id")?)).await,
        (Method::PATCH, ["keys", id]) => {
            update_key(app, KeyId(parse_id(id, "key id")?), request).await
        }
        (Method::GET, ["audit"]) => audit(app).await,
        _ => Err(ApiError::not_found(format!("no admin route for {} {path}", request.method()))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountBody {
    name: String,
    /// Optional: with one, a retried creation (a timeout, a proxy's retry) names the same
    /// account instead of making a second.
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditBody {
    amount: String,
    /// Required: a top-up retried without one (a timeout, a proxy's retry) would be
    /// another operation and credit twice.
    idempotency_key: Option<String>,
}

async fn create_account(
    app: &'static App,
    request: Request<Incoming>,
) -> Result<Response, ApiError> {
    let body: AccountBody = json_body(request).await?;
    check_name(&body.name)?;
    let Some(idempotency_key) = body.idempotency_key.as_deref() else {
        let account = AccountId(keys::random_u64());
        expect_accepted(app.bank.create_account(account, body.name).await?)?;
        return Ok(respond::json(StatusCode::CREATED, &json!({"id": hex_id(account.0)})));
    };
    check_idempotency_key(idempotency_key)?;
    let name = body.name.clone();
    let (account, outcome) = app.bank.create_account_once(idempotency_key, body.name).await?;
    if outcome == Err(Rejection::AccountExists) {
        // Made by an earlier call with this key whose reply the ledger no longer
        // remembers: the same creation if the account bears the name asked for, answered
        // as the first call was.
        let existing = app.bank.account(account).await?;
        if existing.is_none_or(|entry| entry.name != name) {
            return Err(key_reused());
        }
    } else {
        expect_accepted(outcome)?;
    }
    Ok(respond::json(StatusCode::CREATED, &json!({"id": hex_id(account.0)})))
}

/// An idempotency key that named another request.
fn key_reused() -> ApiError {
    ApiError::conflict("idempotency_key was already used for a different request")
}

/// An idempotency key's bounds.
fn check_idempotency_key(idempotency_key: &str) -> Result<(), ApiError> {
    if idempotency_key.is_empty() || idempotency_key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
        let message = format!("must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} bytes");
        return Err(ApiError::invalid_param("idempotency_key", message));
    }
    Ok(())
}

async fn credit(
    app: &'static App,
    account: u64,
    request: Request<Incoming>,
) -> Result<Response, ApiError> {
    let body: CreditBody = json_body(request).await?;
    let amount = PicoUsd::parse_usd(&body.amount)
        .map_err(|error| ApiError::invalid_param("amount", error.to_string()))?;
    if amount == PicoUsd::ZERO {
        return Err(ApiError::invalid_param("amount", "must be more than zero"));
    }
    let Some(idempotency_key) = body.idempotency_key.as_deref() else {
        let message = "is required: a top-up retried without one would credit twice";
        return Err(ApiError::invalid_param("idempotency_key", message));
    };
    check_idempotency_key(idempotency_key)?;
    let credited = app.bank.credit(AccountId(account), amount, idempotency_key).await?;
    match expect_accepted(credited)? {
        Reply::Credited { credits } => {
            let body = json!({"id": hex_id(account), "credits": credits.to_string()});
            Ok(respond::json(StatusCode::OK, &body))
        }
        reply => Err(ApiError::internal(format!("credit answered {reply:?}"))),
    }
}

/// A key for the account: a name, optionally `limit` (USD) with `limit_reset`,
/// `requests_per_minute`, `tokens_per_minute` and `management` (see [`KeyFields`]).
async fn create_key(
    app: &'static App,
    account: u64,
    request: Request<Incoming>,
) -> Result<Response, ApiError> {
    let fields: KeyFields = json_body(request).await?;
    let new = fields.new_key()?;
    let created = account::create_key(&app.bank, AccountId(account), &Actor::Admin, new).await?;
    let mut body = account::key_json(created.id, &created.key, crate::bank::now_ms());
    body["key"] = json!(created.text);
    body["account"] = json!(hex_id(account));
    Ok(respond::json(StatusCode::CREATED, &body))
}

/// Changes a key's name, disabled flag or limits (the fields of [`KeyFields`] present).
async fn update_key(
    app: &'static App,
    key: KeyId,
    request: Request<Incoming>,
) -> Result<Response, ApiError> {
    let owner = app.bank.key(key).await?.map(|entry| entry.account);
    let account = owner.ok_or_else(|| ApiError::not_found("unknown key"))?;
    let fields: KeyFields = json_body(request).await?;
    let updated = account::update_key(&app.bank, account, &Actor::Admin, key, fields.update()?);
    let body = account::key_json(key, &updated.await?, crate::bank::now_ms());
    Ok(respond::json(StatusCode::OK, &body))
}

async fn revoke_key(app: &'static App, key: KeyId) -> Result<Response, ApiError> {
    let owner = app.bank.key(key).await?.map(|entry| entry.account);
    let account = owner.ok_or_else(|| ApiError::not_found("unknown key"))?;
    expect_accepted(app.bank.revoke_key(account, key).await?)?;
    Ok(respond::json(StatusCode::OK, &json!({"id": hex_id(key.0), "revoked": true})))
}

async fn account(app: &'static App, id: u64) -> Result<Response, ApiError> {
    let entry = app.bank.account(AccountId(id)).await?;
    let entry = entry.ok_or_else(|| ApiError::not_found("unknown account"))?;
    let body = json!({
        "id": hex_id(id),
        "name": entry.name,
        "credits": entry.credits.to_string(),
        "spent": entry.debits_posted.to_string(),
        "held": entry.debits_pending.to_string(),
        "available": signed_usd(entry.available()),
        "holds": entry.n_holds,
        "written_off": entry.written_off.to_string(),
    });
    Ok(respond::json(StatusCode::OK, &body))
}

async fn audit(app: &'static App) -> Result<Response, ApiError> {
    let audit = app.bank.audit().await?;
    let body = json!({
        "ok": audit.ok,
        "accounts": audit.n_accounts,
        "holds": audit.n_holds,
        "credits": audit.credits.to_string(),
        "spent": audit.debits_posted.to_string(),
        "held": audit.debits_pending.to_string(),
        "credited": audit.credited.to_string(),
        "written_off": audit.written_off.to_string(),
        "problems": audit.problems,
    });
    Ok(respond::json(StatusCode::OK, &body))
}

/// A JSON body of at most [`ADMIN_BODY_BYTES_MAX`] (also the customer key API's bodies).
pub async fn json_body<T: for<'de> Deserialize<'de>>(
    request: Request<Incoming>,
) -> Result<T, ApiError> {
    let (head, body) = request.into_parts();
    let body = UnreadBody::new(&head.headers, body, ADMIN_BODY_BYTES_MAX)?;
    let body = body.read(ADMIN_BODY_BYTES_MAX).await?;
    serde_json::from_slice(&body)
        .map_err(|error| ApiError::malformed(format!("invalid request body: {error}")))
}

pub fn check_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(ApiError::invalid_param(
            "name",
            format!("must be 1 to {NAME_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}

fn parse_id(text: &str, what: &str) -> Result<u64, ApiError> {
    let valid = text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit());
    let parsed = valid.then(|| u64::from_str_radix(text, 16).ok()).flatten();
    parsed.ok_or_else(|| ApiError::not_found(format!("no {what} `{text}` (ids are 16 hex digits)")))
}

pub fn hex_id(id: u64) -> String {
    format!("{id:016x}")
}

/// Maps a ledger rejection of an admin command to its status.
fn expect_accepted(outcome: Result<Reply, Rejection>) -> Result<Reply, ApiError> {
    outcome.map_err(|rejection| match rejection {
        Rejection::UnknownAccount => ApiError::not_found("unknown account"),
        Rejection::UnknownKey => ApiError::not_found("unknown key"),
        Rejection::IdReused => key_reused(),
        Rejection::AccountExists | Rejection::KeyExists | Rejection::TopUpsExhausted => {
            ApiError::conflict(rejection.to_string())
        }
        other => ApiError::ledger("admin command", other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_ids() {
        assert_eq!(parse_id("00000000000000ff", "x").ok(), Some(255));
        for bad in ["ff", "00000000000000fg", "+000000000000000", ""] {
            assert!(parse_id(bad, "x").is_err(), "{bad}");
        }
    }
}
