//! The customer API besides chat completions, in OpenRouter's shapes: the model list,
//! the account's credits, one request's record, and the calling key.

use crate::app::App;
use crate::catalog::{Model, Price};
use crate::error::ApiError;
use crate::respond::{self, Response};
use crate::wire;
use http::{header::AUTHORIZATION, HeaderMap, HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};
use solrouter_ledger::PicoUsd;

/// `GET /v1/api/models`: every model whose provider is configured, in OpenAI's list
/// format with OpenRouter's `context_length`, `architecture` and `pricing` (USD per
/// token as decimal strings). Public, like OpenRouter's.
pub fn models(app: &'static App) -> Response {
    let data: Vec<Value> = app
        .catalog
        .models()
        .filter(|model| app.providers.enabled(&model.provider))
        .map(model_json)
        .collect();
    respond::json(StatusCode::OK, &json!({"object": "list", "data": data}))
}

/// Every price the gateway charges, OpenRouter's way: USD per token as decimal strings,
/// and `request`, a flat USD fee per request, where there is one.
fn pricing_json(price: &Price) -> Value {
    let mut pricing = json!({
        "prompt": Price::per_token_usd(price.prompt),
        "completion": Price::per_token_usd(price.completion),
    });
    if let Some(cached_read) = price.cached_read {
        pricing["input_cache_read"] = Value::from(Price::per_token_usd(cached_read));
    }
    if let Some(cached_write) = price.cached_write {
        pricing["input_cache_write"] = Value::from(Price::per_token_usd(cached_write));
    }
    if price.per_request > PicoUsd::ZERO {
        pricing["request"] = Value::from(price.per_request.to_string());
    }
    pricing
}

fn model_json(model: &Model) -> Value {
    let pricing = pricing_json(&model.price);
    // The dearer tier of a request whose prompt passes a threshold (Gemini 2.5 Pro above
    // 200k tokens): the whole request pays it.
    let long_context = model.long_context.as_ref().map(|tier| {
        json!({"above_prompt_tokens": tier.above_prompt_tokens, "pricing": pricing_json(&tier.price)})
    });
    json!({
        "id": model.id,
        "object": "model",
        "created": 0,
        "owned_by": model.provider,
        "context_length": model.context_length,
        "architecture": {
            "input_modalities": model.input_modalities,
            "output_modalities": model.output_modalities,
        },
        "pricing": pricing,
        "long_context": long_context,
        "top_provider": {
            "context_length": model.context_length,
            "max_completion_tokens": model.max_output_tokens,
        },
    })
}

/// `GET /v1/api/credits`: the account's top-ups and spend, in USD.
pub async fn credits(app: &'static App, headers: &HeaderMap) -> Result<Response, ApiError> {
    let caller = app.bank.authenticate(authorization(headers)).await?;
    let account = app.bank.account(caller.account).await?;
    let account =
        account.ok_or_else(|| ApiError::unauthorized("the key's account no longer exists"))?;
    let data = json!({
        "total_credits": account.credits.to_usd_f64(),
        "total_usage": account.debits_posted.to_usd_f64(),
    });
    Ok(respond::json(StatusCode::OK, &json!({ "data": data })))
}

/// `GET /v1/api/generation?id=gen-…`: the record of one request of the caller's
/// account; another account's id is a 404, indistinguishable from an unknown one.
pub async fn generation(
    app: &'static App,
    request: &Request<Incoming>,
) -> Result<Response, ApiError> {
    let caller = app.bank.authenticate(authorization(request.headers())).await?;
    let id = request
        .uri()
        .query()
        .and_then(|query| query.split('&').find_map(|pair| pair.strip_prefix("id=")))
        .ok_or_else(|| ApiError::invalid_param("id", "is required"))?;
    let not_found = || ApiError::not_found(format!("no generation with id `{id}`"));
    let hold = wire::parse_generation_id(id).ok_or_else(not_found)?;
    let record = app.bank.record(caller.account, hold).await?.ok_or_else(not_found)?;
    let data = json!({
        "id": id,
        "model": record.model,
        "provider_name": record.provider,
        "streamed": record.streamed,
        "status": record.status,
        "latency": record.latency_ms,
        "tokens_prompt": record.prompt_tokens,
        "tokens_completion": record.completion_tokens,
        "native_tokens_reasoning": record.reasoning_tokens,
        "native_tokens_cached": record.cached_tokens,
        "total_cost": record.cost.to_usd_f64(),
        "cost_usd": record.cost.to_string(),
        "written_off": record.written_off.to_string(),
        "usage_estimated": record.usage_estimated,
        "usage_clamped": record.usage_clamped,
        "created": record.created_ms / 1000,
        "key_id": record.key.map(|key| format!("{:016x}", key.0)),
    });
    Ok(respond::json(StatusCode::OK, &json!({ "data": data })))
}

/// `GET /v1/api/key`: the calling key's name and what it has spent.
pub async fn key(app: &'static App, headers: &HeaderMap) -> Result<Response, ApiError> {
    let caller = app.bank.authenticate(authorization(headers)).await?;
    let key = app.bank.key(caller.key).await?;
    let key = key.ok_or_else(|| ApiError::unauthorized("invalid API key"))?;
    let usage: PicoUsd = key.usage;
    let data = json!({
        "id": format!("{:016x}", caller.key.0),
        "label": key.name,
        "name": key.name,
        "usage": usage.to_usd_f64(),
        "limit": null,
        "limit_remaining": null,
        "is_free_tier": false,
    });
    Ok(respond::json(StatusCode::OK, &json!({ "data": data })))
}

pub fn authorization(headers: &HeaderMap) -> Option<&[u8]> {
    headers.get(AUTHORIZATION).map(HeaderValue::as_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    #[test]
    fn models_state_every_price_charged() {
        let catalog = Catalog::builtin();
        let listed = |id: &str| model_json(catalog.get(id).expect("catalogued"));
        let sonar = listed("perplexity/sonar-pro");
        assert_eq!(
            sonar["pricing"],
            json!({"prompt": "0.000003", "completion": "0.000015", "request": "0.006"})
        );
        assert_eq!(sonar["long_context"], Value::Null);
        let sonnet = listed("anthropic/claude-sonnet-4");
        assert_eq!(sonnet["pricing"]["input_cache_read"], "0.0000003");
        assert_eq!(sonnet["pricing"]["input_cache_write"], "0.00000375");
        let pro = listed("google/gemini-2.5-pro");
        assert_eq!(pro["long_context"]["above_prompt_tokens"], 200_000);
        assert_eq!(
            pro["long_context"]["pricing"],
            json!({"prompt": "0.0000025", "completion": "0.000015", "input_cache_read": "0.000000625"})
        );
    }
}
