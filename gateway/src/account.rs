//! Key management of one account, written once for every way in: the management-key API
//! (`/v1/api/keys`, OpenRouter's shapes, served by [`handle_keys`]), the admin API and
//! the dashboard's session layer. Each function takes the account and the [`Actor`] that
//! was authenticated for it; none authenticates, so a caller must have checked that the
//! actor belongs to the account (a management key's or a session's account; the admin
//! token's any). One account never reaches another's keys through them: a key id of
//! another account is a 404, like an unknown one.
//!
//! Ids travel as 16 hex digits; OpenRouter's `hash` of a key is its id here. Money in
//! request bodies is a decimal USD string (a JSON number is read by its decimal text);
//! in answers, OpenRouter's floats, for display only.

use crate::admin::{check_name, hex_id, json_body};
use crate::app::App;
use crate::bank::{self, Bank, KeyUse};
use crate::error::ApiError;
use crate::keys;
use crate::respond::{self, Response};
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use solrouter_ledger::{
    AccountId, Key, KeyId, KeyKind, KeyLimits, KeyUpdate, LimitReset, PicoUsd, Rejection, Reply,
};

/// Where the management-key API lives.
pub const KEYS_PATH: &str = "/v1/api/keys";

/// Who manages an account's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The operator, by the admin token: may create management keys.
    Admin,
    /// A management key of the account: manages inference keys, never management keys
    /// (so a leaked management key cannot mint more of its kind), nor revokes itself.
    ManagementKey(KeyId),
    /// A dashboard user of the account; `owner` may also create management keys.
    User { id: String, owner: bool },
}

impl Actor {
    fn may_manage(&self, kind: KeyKind) -> bool {
        match self {
            Actor::Admin | Actor::User { owner: true, .. } => true,
            Actor::ManagementKey(_) | Actor::User { owner: false, .. } => {
                kind == KeyKind::Inference
            }
        }
    }
}

/// A key to create: what [`KeyFields::new_key`] makes of a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub name: String,
    pub kind: KeyKind,
    pub limits: KeyLimits,
}

/// A key just created: its secret `text`, shown once, and its state.
pub struct CreatedKey {
    pub id: KeyId,
    pub text: String,
    pub key: Key,
}

/// Creates a key for `account`. A management key or a member cannot create a management
/// key (403).
pub async fn create_key(
    bank: &Bank,
    account: AccountId,
    actor: &Actor,
    new: NewKey,
) -> Result<CreatedKey, ApiError> {
    if !actor.may_manage(new.kind) {
        return Err(ApiError::forbidden("only the account's owner creates management keys"));
    }
    let (id, minted) = (KeyId(keys::random_u64()), keys::mint(account));
    let created = bank.create_key(account, id, new.name, minted.hash, new.kind, new.limits).await?;
    accepted(created)?;
    let key = get_key(bank, account, id).await?;
    tracing::info!(account = account.0, key = id.0, ?actor, "key created");
    Ok(CreatedKey { id, text: minted.text, key })
}

/// Every key of `account`, revoked ones included, by id.
pub async fn list_keys(bank: &Bank, account: AccountId) -> Result<Vec<(KeyId, Key)>, ApiError> {
    bank.keys(account).await
}

/// Key `id` of `account`; a 404 if it is unknown or another account's.
pub async fn get_key(bank: &Bank, account: AccountId, id: KeyId) -> Result<Key, ApiError> {
    let key = bank.key_of(account, id).await?;
    key.ok_or_else(|| ApiError::not_found(format!("no key `{}`", hex_id(id.0))))
}

/// Applies `update` to key `id` of `account` and returns the key as it is now. A revoked
/// key cannot change (409).
pub async fn update_key(
    bank: &Bank,
    account: AccountId,
    actor: &Actor,
    id: KeyId,
    update: KeyUpdate,
) -> Result<Key, ApiError> {
    let key = get_key(bank, account, id).await?;
    if !actor.may_manage(key.kind) {
        return Err(ApiError::forbidden("only the account's owner manages management keys"));
    }
    accepted(bank.update_key(account, id, update).await?)?;
    tracing::info!(account = account.0, key = id.0, ?actor, "key updated");
    get_key(bank, account, id).await
}

/// Revokes key `id` of `account` for good: the ledger refuses its reserves from now on,
/// every gateway its requests within [`bank::KEY_CACHE_TTL`].
pub async fn revoke_key(
    bank: &Bank,
    account: AccountId,
    actor: &Actor,
    id: KeyId,
) -> Result<(), ApiError> {
    let key = get_key(bank, account, id).await?;
    if !actor.may_manage(key.kind) || *actor == Actor::ManagementKey(id) {
        return Err(ApiError::forbidden("this key may not revoke that key"));
    }
    accepted(bank.revoke_key(account, id).await?)?;
    tracing::info!(account = account.0, key = id.0, ?actor, "key revoked");
    Ok(())
}

/// A key in OpenRouter's shape (`/key`'s `data`, an item of `/keys`), with its state at
/// `now_ms`: `usage*` and `limit*` in USD (floats, for display; `*_usd` fields carry the
/// exact decimal text), `limit_remaining` net of what the key's requests in flight hold.
pub fn key_json(id: KeyId, key: &Key, now_ms: u64) -> Value {
    let usd = |amount: PicoUsd| amount.to_usd_f64();
    let limits = &key.limits;
    let remaining = key.limit_remaining(now_ms);
    json!({
        "hash": hex_id(id.0),
        "id": hex_id(id.0),
        "name": key.name,
        "label": key.name,
        "disabled": key.disabled,
        "revoked": key.revoked,
        "is_management_key": key.kind == KeyKind::Management,
        "is_provisioning_key": key.kind == KeyKind::Management,
        "is_free_tier": false,
        "usage": usd(key.usage),
        "usage_daily": usd(key.spent(LimitReset::Daily, now_ms)),
        "usage_weekly": usd(key.spent(LimitReset::Weekly, now_ms)),
        "usage_monthly": usd(key.spent(LimitReset::Monthly, now_ms)),
        "usage_usd": key.usage.to_string(),
        "held_usd": key.held.to_string(),
        "limit": limits.spend_limit.map(usd),
        "limit_usd": limits.spend_limit.map(|limit| limit.to_string()),
        "limit_remaining": remaining.map(usd),
        "limit_reset": limits.limit_reset.name(),
        "limit_resets_at": limits.spend_limit.and(limits.limit_reset.next_reset_ms(now_ms))
            .map(crate::api::utc_rfc3339),
        "include_byok_in_limit": false,
        "rate_limit": {
            "requests": limits.requests_per_minute,
            "tokens": limits.tokens_per_minute,
            "interval": "1m",
            "note": "per key, counted by the ledger across every gateway",
        },
        "created_at": crate::api::utc_rfc3339(key.created_ms),
        "updated_at": crate::api::utc_rfc3339(key.updated_ms),
    })
}

/// The fields of a key body (create or update), OpenRouter's names plus the rate limits.
/// Absent fields stay as they are; `null` lifts a limit.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KeyFields {
    name: Option<String>,
    /// USD: a decimal string, or a JSON number read by its decimal text.
    #[serde(default, deserialize_with = "present")]
    limit: Option<Option<Usd>>,
    #[serde(default, deserialize_with = "present")]
    limit_reset: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    requests_per_minute: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    tokens_per_minute: Option<Option<u64>>,
    disabled: Option<bool>,
    /// Creation only: a management key.
    management: Option<bool>,
    /// OpenRouter's BYOK switch: accepted for its SDKs; there is no BYOK here.
    #[serde(rename = "include_byok_in_limit")]
    _include_byok_in_limit: Option<bool>,
}

/// A decimal USD amount as a body may write it.
#[derive(Deserialize)]
#[serde(untagged)]
enum Usd {
    Text(String),
    Number(serde_json::Number),
}

/// A field present in the body: `Some(None)` for `null`, `Some(Some(v))` for a value.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

impl KeyFields {
    /// The changes these fields make to a key.
    pub fn update(self) -> Result<KeyUpdate, ApiError> {
        if self.management.is_some() {
            return Err(ApiError::invalid_param("management", "is set when a key is created"));
        }
        if let Some(name) = &self.name {
            check_name(name)?;
        }
        let spend_limit = match self.limit {
            None => None,
            Some(None) => Some(None),
            Some(Some(usd)) => Some(Some(parse_usd(usd)?)),
        };
        let limit_reset = match self.limit_reset.as_ref() {
            None => None,
            Some(None) => Some(LimitReset::Never),
            Some(Some(name)) => Some(LimitReset::parse(name).ok_or_else(|| {
                ApiError::invalid_param("limit_reset", "must be daily, weekly, monthly or null")
            })?),
        };
        let at_least_one = |name, value: Option<Option<u64>>| match value {
            Some(Some(0)) => Err(ApiError::invalid_param(name, "must be at least 1, or null")),
            _ => Ok(()),
        };
        at_least_one("requests_per_minute", self.requests_per_minute.map(|v| v.map(u64::from)))?;
        at_least_one("tokens_per_minute", self.tokens_per_minute)?;
        Ok(KeyUpdate {
            name: self.name,
            disabled: self.disabled,
            spend_limit,
            limit_reset,
            requests_per_minute: self.requests_per_minute,
            tokens_per_minute: self.tokens_per_minute,
        })
    }

    /// The key these fields create: a name is required; a key is never created disabled.
    pub fn new_key(self) -> Result<NewKey, ApiError> {
        let kind = match self.management {
            Some(true) => KeyKind::Management,
            _ => KeyKind::Inference,
        };
        let fields = KeyFields { management: None, ..self };
        let name =
            fields.name.clone().ok_or_else(|| ApiError::invalid_param("name", "is required"))?;
        if fields.disabled.is_some() {
            return Err(ApiError::invalid_param("disabled", "is set by updating a key"));
        }
        let update = fields.update()?;
        Ok(NewKey { name, kind, limits: update.limits(KeyLimits::default()) })
    }
}

fn parse_usd(usd: Usd) -> Result<PicoUsd, ApiError> {
    let text = match usd {
        Usd::Text(text) => text,
        Usd::Number(number) => number.to_string(),
    };
    PicoUsd::parse_usd(&text).map_err(|error| ApiError::invalid_param("limit", error.to_string()))
}

/// Maps a ledger refusal of a key command to its status.
fn accepted(outcome: Result<Reply, Rejection>) -> Result<Reply, ApiError> {
    outcome.map_err(|rejection| match rejection {
        Rejection::UnknownAccount => ApiError::not_found("unknown account"),
        Rejection::UnknownKey => ApiError::not_found("unknown key"),
        Rejection::KeyRevoked => ApiError::conflict("the key is revoked; it cannot change"),
        Rejection::KeyExists | Rejection::KeysExhausted => {
            ApiError::conflict(rejection.to_string())
        }
        Rejection::Invalid(reason) => ApiError::malformed(reason.into_owned()),
        other => ApiError::ledger("key command", other),
    })
}

/// The management-key API, in OpenRouter's shapes: `GET /v1/api/keys` (the account's
/// keys), `POST /v1/api/keys` (create; the answer's `key` is the secret, shown once),
/// `GET`, `PATCH` and `DELETE /v1/api/keys/{hash}`. Authenticated by a management key.
pub async fn handle_keys(
    app: &'static App,
    request: Request<Incoming>,
) -> Result<Response, ApiError> {
    let caller = app.bank.authenticate_for(request.headers(), KeyUse::Management).await?;
    let (account, actor) = (caller.account, Actor::ManagementKey(caller.key));
    let path = request.uri().path().strip_prefix(KEYS_PATH).unwrap_or_default().to_owned();
    let now_ms = bank::now_ms();
    let bank = &app.bank;
    let data = |id: KeyId, key: &Key| json!({ "data": key_json(id, key, now_ms) });
    let id = match path.strip_prefix('/') {
        None if path.is_empty() => None,
        Some(id) => Some(parse_key_id(id)?),
        None => return Err(ApiError::not_found(format!("no route for {KEYS_PATH}{path}"))),
    };
    match (request.method().clone(), id) {
        (Method::GET, None) => {
            let keys = list_keys(bank, account).await?;
            let listed: Vec<Value> =
                keys.iter().map(|(id, key)| key_json(*id, key, now_ms)).collect();
            Ok(respond::json(StatusCode::OK, &json!({ "data": listed })))
        }
        (Method::POST, None) => {
            let fields: KeyFields = json_body(request).await?;
            let created = create_key(bank, account, &actor, fields.new_key()?).await?;
            let mut body = data(created.id, &created.key);
            body["key"] = Value::String(created.text);
            Ok(respond::json(StatusCode::CREATED, &body))
        }
        (Method::GET, Some(id)) => {
            Ok(respond::json(StatusCode::OK, &data(id, &get_key(bank, account, id).await?)))
        }
        (Method::PATCH, Some(id)) => {
            let fields: KeyFields = json_body(request).await?;
            let key = update_key(bank, account, &actor, id, fields.update()?).await?;
            Ok(respond::json(StatusCode::OK, &data(id, &key)))
        }
        (Method::DELETE, Some(id)) => {
            revoke_key(bank, account, &actor, id).await?;
            Ok(respond::json(
                StatusCode::OK,
                &json!({ "data": { "success": true }, "deleted": true }),
            ))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn parse_key_id(text: &str) -> Result<KeyId, ApiError> {
    let valid = text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit());
    let parsed = valid.then(|| u64::from_str_radix(text, 16).ok()).flatten();
    parsed.map(KeyId).ok_or_else(|| ApiError::not_found(format!("no key `{text}`")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(body: Value) -> Result<KeyFields, serde_json::Error> {
        serde_json::from_value(body)
    }

    fn usd(text: &str) -> PicoUsd {
        PicoUsd::parse_usd(text).unwrap()
    }

    #[test]
    fn reads_new_keys_in_openrouter_shape() {
        let body = json!({"name": "ci", "limit": "12.50", "limit_reset": "weekly",
            "requests_per_minute": 60, "include_byok_in_limit": false});
        let new = fields(body).unwrap().new_key().unwrap();
        let limits = KeyLimits {
            spend_limit: Some(usd("12.50")),
            limit_reset: LimitReset::Weekly,
            requests_per_minute: Some(60),
            tokens_per_minute: None,
        };
        assert_eq!(new, NewKey { name: "ci".into(), kind: KeyKind::Inference, limits });
        // A number is read by its decimal text, exactly.
        let new = fields(json!({"name": "n", "limit": 0.1})).unwrap().new_key().unwrap();
        assert_eq!(new.limits.spend_limit, Some(usd("0.1")));
        let new = fields(json!({"name": "m", "management": true})).unwrap().new_key().unwrap();
        assert_eq!(new.kind, KeyKind::Management);
        for bad in [
            json!({}),
            json!({"name": ""}),
            json!({"name": "x", "limit": "-1"}),
            json!({"name": "x", "limit": "1e3"}),
            json!({"name": "x", "limit_reset": "yearly"}),
            json!({"name": "x", "requests_per_minute": 0}),
            json!({"name": "x", "disabled": true}),
        ] {
            let refused = fields(bad.clone()).unwrap().new_key();
            assert!(refused.is_err(), "{bad}");
        }
        assert!(fields(json!({"name": "x", "surprise": 1})).is_err());
    }

    #[test]
    fn updates_change_only_what_is_present() {
        let update = fields(json!({"disabled": true})).unwrap().update().unwrap();
        assert_eq!(update, KeyUpdate { disabled: Some(true), ..KeyUpdate::default() });
        let update = fields(json!({"limit": null, "limit_reset": null, "tokens_per_minute": null}))
            .unwrap()
            .update()
            .unwrap();
        let lifted = KeyUpdate {
            spend_limit: Some(None),
            limit_reset: Some(LimitReset::Never),
            tokens_per_minute: Some(None),
            ..KeyUpdate::default()
        };
        assert_eq!(update, lifted);
        assert!(fields(json!({"management": true})).unwrap().update().is_err());
    }

    #[test]
    fn only_owners_and_the_admin_manage_management_keys() {
        let member = Actor::User { id: "u".into(), owner: false };
        let owner = Actor::User { id: "u".into(), owner: true };
        for actor in [Actor::Admin, Actor::ManagementKey(KeyId(1)), member.clone(), owner.clone()] {
            assert!(actor.may_manage(KeyKind::Inference), "{actor:?}");
        }
        assert!(Actor::Admin.may_manage(KeyKind::Management));
        assert!(owner.may_manage(KeyKind::Management));
        assert!(!member.may_manage(KeyKind::Management));
        assert!(!Actor::ManagementKey(KeyId(1)).may_manage(KeyKind::Management));
    }
}
