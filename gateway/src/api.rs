//! The customer API besides chat completions, in OpenRouter's shapes: the model list,
//! the account's credits, its request history (one request, pages of them, usage per day
//! or hour), and the calling key.

use crate::account;
use crate::app::App;
use crate::bank::KeyUse;
use crate::catalog::{Model, Price};
use crate::error::ApiError;
use crate::respond::{self, Response};
use crate::wire;
use http::{header::AUTHORIZATION, HeaderMap, HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};
use solrouter_ledger::{HoldId, KeyId, RequestRecord};
use solrouter_raft::{HistoryCursor, HistoryQuery, UsageQuery, HISTORY_PAGE_MAX};

/// `GET /v1/api/models`: every model with a configured host, in OpenAI's list format
/// with OpenRouter's `context_length`, `architecture`, `pricing` (USD per token as
/// decimal strings) and `supported_parameters`, each of its cheapest configured
/// endpoint (as OpenRouter lists a model's price). Public, like OpenRouter's.
pub fn models(app: &'static App) -> Response {
    let data: Vec<Value> = app
        .catalog
        .models()
        .filter_map(|model| {
            let (cheapest, adapter) = app
                .catalog
                .endpoints(&model.id)?
                .iter()
                .filter_map(|endpoint| {
                    let (adapter, _) = app.providers.get(&endpoint.provider)?;
                    Some((endpoint, adapter))
                })
                .min_by_key(|(endpoint, _)| endpoint.price_rank())?;
            Some(model_json(cheapest, adapter.parameters()))
        })
        .collect();
    respond::json(StatusCode::OK, &json!({"object": "list", "data": data}))
}

/// Every price the gateway charges, OpenRouter's way (decimal USD strings): per prompt,
/// completion, cache-read and cache-write token (cache tokens without a price of their
/// own are billed, and listed, at the prompt price), per request (Perplexity's search
/// fee) and per image (`0`: an image is billed as the prompt tokens the provider counts
/// for it).
fn pricing_json(price: &Price) -> Value {
    json!({
        "prompt": Price::per_token_usd(price.prompt),
        "completion": Price::per_token_usd(price.completion),
        "input_cache_read": Price::per_token_usd(price.cached_read.unwrap_or(price.prompt)),
        "input_cache_write": Price::per_token_usd(price.cached_write.unwrap_or(price.prompt)),
        "request": Price::per_token_usd(price.per_request),
        "image": "0",
    })
}

fn model_json(model: &Model, passed: &[&'static str]) -> Value {
    let pricing = pricing_json(&model.price);
    let long_context = long_context_json(model);
    json!({
        "id": model.id,
        "object": "model",
        "created": model.created_s,
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
        "supported_parameters": model.supported_parameters(passed),
    })
}

/// The model id of an endpoints path, `/v1/api/models/{author}/{slug}/endpoints`.
pub fn endpoints_model_id(path: &str) -> Option<&str> {
    let id = path.strip_prefix("/v1/api/models/")?.strip_suffix("/endpoints")?;
    let (author, slug) = id.split_once('/')?;
    let part = |text: &str| !text.is_empty() && !text.contains('/');
    (part(author) && part(slug)).then_some(id)
}

/// `GET /v1/api/models/{author}/{slug}/endpoints`: the model and each of its configured
/// endpoints, in OpenRouter's shape: host (`provider_name`, the name routing, responses
/// and records use), prices, limits, quantization, supported parameters, and the
/// gateway's live view over the last 30 minutes: `status` (0 healthy, -1 probing, -2
/// failing: its circuit breaker), `uptime_last_30m` (percent of requests that did not
/// fail by the host's fault), `latency_last_30m` (mean time to first token, ms) and
/// `throughput_last_30m` (tokens per second); `null` without traffic; and
/// `data_policy` (`data_policy_json`). Public, like `/models`; an unknown model is a
/// 404.
pub fn endpoints(app: &'static App, path: &str) -> Result<Response, ApiError> {
    let id = endpoints_model_id(path).unwrap_or_default();
    let all = app.catalog.endpoints(id).ok_or_else(|| ApiError::model_not_found(id))?;
    let model = &all[0];
    let window = crate::health::BUCKETS;
    let endpoints: Vec<Value> = all
        .iter()
        .filter_map(|endpoint| {
            let (adapter, _) = app.providers.get(&endpoint.provider)?;
            let recent = app.health.snapshot(endpoint, window);
            let status = match app.health.view(endpoint).state {
                crate::health::State::Closed => 0,
                crate::health::State::HalfOpen => -1,
                crate::health::State::Open => -2,
            };
            Some(json!({
                "name": format!("{} | {}", endpoint.provider, endpoint.id),
                "provider_name": endpoint.provider,
                "context_length": endpoint.context_length,
                "pricing": pricing_json(&endpoint.price),
                "long_context": long_context_json(endpoint),
                "quantization": endpoint.quantization,
                "max_completion_tokens": endpoint.max_output_tokens,
                "max_prompt_tokens": endpoint.context_length,
                "supported_parameters": endpoint.supported_parameters(adapter.parameters()),
                "status": status,
                "uptime_last_30m": recent.uptime_percent(),
                "latency_last_30m": recent.ttft_ms,
                "throughput_last_30m": recent.tokens_per_second,
                "data_policy": data_policy_json(endpoint),
            }))
        })
        .collect();
    let hosts: Vec<&str> = all.iter().map(|endpoint| endpoint.provider.as_str()).collect();
    let data = json!({
        "id": model.id,
        "name": model.id,
        "created": model.created_s,
        "description": format!("{}, served by {}", model.id, hosts.join(", ")),
        "architecture": {
            "input_modalities": model.input_modalities,
            "output_modalities": model.output_modalities,
        },
        "endpoints": endpoints,
    });
    Ok(respond::json(StatusCode::OK, &json!({ "data": data })))
}

/// What an endpoint does with the data it serves, as routing reads it: `policy`, the
/// host's published policy as the catalogue records it (`zero-retention`,
/// `abuse-monitoring`, `may-collect`, `unknown`); `zdr_agreement`, whether the operator
/// declared its own zero-data-retention agreement with the host (`zdr_hosts`); `zdr`,
/// whether the endpoint retains nothing by either, which `provider.zdr: true` requires;
/// `may_collect`, whether the host may store prompts for its own use or train on them
/// (unknown counts as may), which `provider.data_collection: "deny"` leaves out.
fn data_policy_json(endpoint: &Model) -> Value {
    json!({
        "policy": endpoint.data_policy,
        "zdr_agreement": endpoint.zdr_by_agreement,
        "zdr": endpoint.zero_retention(),
        "may_collect": endpoint.may_collect(),
    })
}

/// The dearer tier of a request whose prompt passes a threshold (Gemini 2.5 Pro above
/// 200k tokens): the whole request pays it.
fn long_context_json(model: &Model) -> Value {
    model.long_context.as_ref().map_or(Value::Null, |tier| {
        json!({"above_prompt_tokens": tier.above_prompt_tokens, "pricing": pricing_json(&tier.price)})
    })
}

/// `GET /v1/api/credits`: the account's top-ups and spend, in USD.
pub async fn credits(app: &'static App, headers: &HeaderMap) -> Result<Response, ApiError> {
    let caller = app.bank.authenticate_for(headers, KeyUse::Read).await?;
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
    let caller = app.bank.authenticate_for(request.headers(), KeyUse::Read).await?;
    let id = query_params(request)
        .find_map(|(name, value)| (name == "id").then_some(value))
        .ok_or_else(|| ApiError::invalid_param("id", "is required"))?;
    let not_found = || ApiError::not_found(format!("no generation with id `{id}`"));
    let hold = wire::parse_generation_id(&id).ok_or_else(not_found)?;
    let record = app.bank.record(caller.account, hold).await?.ok_or_else(not_found)?;
    Ok(respond::json(StatusCode::OK, &json!({ "data": generation_json(hold, &record) })))
}

/// Records shown per page of `/generations` unless `limit` says otherwise.
const GENERATIONS_PAGE_DEFAULT: u32 = 50;

/// `GET /v1/api/generations`: the account's requests, newest first, each as
/// `/generation` shows it. Filters: `key` (a key id as `/key` shows it), `model`,
/// `status` (the HTTP status the client saw), `from` and `to` (Unix seconds, `to`
/// exclusive); `limit` (1 to 500, default 50) and `cursor` (the previous page's
/// `next_cursor`, `null` on the last page) page through them.
pub async fn generations(
    app: &'static App,
    request: &Request<Incoming>,
) -> Result<Response, ApiError> {
    let caller = app.bank.authenticate_for(request.headers(), KeyUse::Read).await?;
    let mut query =
        HistoryQuery { limit: GENERATIONS_PAGE_DEFAULT, ..HistoryQuery::all(caller.account) };
    for (name, value) in query_params(request) {
        match &*name {
            "key" => query.key = Some(KeyId(parse_hex_u64("key", &value)?)),
            "model" => query.model = Some(value.into_owned()),
            "status" => query.status = Some(parse_number("status", &value)?),
            "from" => query.from_ms = seconds_to_ms("from", &value)?,
            "to" => query.to_ms = seconds_to_ms("to", &value)?,
            "limit" => {
                let limit: u32 = parse_number("limit", &value)?;
                if !(1..=HISTORY_PAGE_MAX).contains(&limit) {
                    let reason = format!("must be within 1..={HISTORY_PAGE_MAX}");
                    return Err(ApiError::invalid_param("limit", reason));
                }
                query.limit = limit;
            }
            "cursor" => query.before = Some(parse_cursor(&value)?),
            _ => {}
        }
    }
    let page = app.bank.history(query).await?;
    let data: Vec<Value> =
        page.records.iter().map(|(hold, record)| generation_json(*hold, record)).collect();
    let next = page.next.map(|next| format!("{}-{:032x}", next.created_ms, next.hold.0));
    Ok(respond::json(StatusCode::OK, &json!({ "data": data, "next_cursor": next })))
}

/// Aggregate rows per page of `/activity` unless `limit` says otherwise.
const ACTIVITY_PAGE_DEFAULT: usize = 1000;
/// Most aggregate rows per page of `/activity`.
const ACTIVITY_PAGE_MAX: usize = 10_000;

/// `GET /v1/api/activity`: the account's usage summed per day (or per hour with
/// `bucket=hour`), model and key, over `from`..`to` (Unix seconds; default the last 30
/// days), oldest first, in OpenRouter's `/activity` field names; filtered by `key` and
/// `model`, paged by `limit` (default 1,000, at most 10,000 rows) and `cursor` (the
/// previous page's `next_cursor`). With `view=requests` it answers the requests
/// themselves instead, paginated and filtered as `/generations` does.
pub async fn activity(
    app: &'static App,
    request: &Request<Incoming>,
) -> Result<Response, ApiError> {
    const HOUR_MS: u64 = 60 * 60 * 1000;
    const DAY_MS: u64 = 24 * HOUR_MS;
    if query_params(request).any(|(name, value)| name == "view" && value == "requests") {
        return generations(app, request).await;
    }
    let caller = app.bank.authenticate_for(request.headers(), KeyUse::Read).await?;
    let now_ms = crate::bank::now_ms();
    let mut query = UsageQuery {
        account: caller.account,
        from_ms: now_ms.saturating_sub(30 * DAY_MS),
        to_ms: now_ms.saturating_add(HOUR_MS),
        bucket_ms: DAY_MS,
    };
    let (mut key, mut model, mut limit, mut offset) = (None, None, ACTIVITY_PAGE_DEFAULT, 0);
    for (name, value) in query_params(request) {
        match (&*name, &*value) {
            ("bucket", "day") => query.bucket_ms = DAY_MS,
            ("bucket", "hour") => query.bucket_ms = HOUR_MS,
            ("bucket", _) => return Err(ApiError::invalid_param("bucket", "must be day or hour")),
            ("from", _) => query.from_ms = seconds_to_ms("from", &value)?,
            ("to", _) => query.to_ms = seconds_to_ms("to", &value)?,
            ("key", _) => key = Some(KeyId(parse_hex_u64("key", &value)?)),
            ("model", _) => model = Some(value.into_owned()),
            ("limit", _) => {
                limit = parse_number("limit", &value)?;
                if !(1..=ACTIVITY_PAGE_MAX).contains(&limit) {
                    let reason = format!("must be within 1..={ACTIVITY_PAGE_MAX}");
                    return Err(ApiError::invalid_param("limit", reason));
                }
            }
            ("cursor", _) => offset = parse_number("cursor", &value)?,
            _ => {}
        }
    }
    let rows = app.bank.usage(query).await?;
    let matching = rows.iter().filter(|row| {
        key.is_none_or(|key| row.key == Some(key))
            && model.as_deref().is_none_or(|model| row.model == model)
    });
    let page: Vec<_> = matching.skip(offset).take(limit + 1).collect();
    let next = (page.len() > limit).then(|| (offset + limit).to_string());
    let data: Vec<Value> = page
        .iter()
        .take(limit)
        .map(|row| {
            json!({
                "date": utc_rfc3339(row.start_ms),
                "start": row.start_ms / 1000,
                "model": row.model,
                "key_id": row.key.map(|key| format!("{:016x}", key.0)),
                "requests": row.usage.requests,
                "prompt_tokens": row.usage.prompt_tokens,
                "completion_tokens": row.usage.completion_tokens,
                "reasoning_tokens": row.usage.reasoning_tokens,
                "cached_tokens": row.usage.cached_tokens,
                "usage": row.usage.cost.to_usd_f64(),
                "cost_usd": row.usage.cost.to_string(),
                "written_off": row.usage.written_off.to_string(),
            })
        })
        .collect();
    Ok(respond::json(StatusCode::OK, &json!({ "data": data, "next_cursor": next })))
}

/// One request as `/generation` and `/generations` show it.
fn generation_json(hold: HoldId, record: &RequestRecord) -> Value {
    json!({
        "id": wire::generation_id(hold),
        "model": record.model,
        "provider_name": record.provider,
        "streamed": record.streamed,
        "status": record.status,
        "latency": record.latency_ms,
        "ttft_ms": record.ttft_ms,
        "tokens_prompt": record.prompt_tokens,
        "tokens_completion": record.completion_tokens,
        "native_tokens_reasoning": record.reasoning_tokens,
        "native_tokens_cached": record.cached_tokens,
        "total_cost": record.cost.to_usd_f64(),
        "cost_usd": record.cost.to_string(),
        "written_off": record.written_off.to_string(),
        "usage_estimated": record.usage_estimated,
        "usage_clamped": record.usage_clamped,
        "waived": record.waived,
        "created": record.created_ms / 1000,
        "key_id": record.key.map(|key| format!("{:016x}", key.0)),
    })
}

/// A time in ms since the Unix epoch as RFC 3339 in UTC, to the second.
pub fn utc_rfc3339(ms: u64) -> String {
    let time = i64::try_from(ms).ok().and_then(chrono::DateTime::from_timestamp_millis);
    time.unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The request's query parameters, percent-decoded.
fn query_params(request: &Request<Incoming>) -> form_urlencoded::Parse<'_> {
    form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
}

fn parse_number<T: std::str::FromStr>(name: &'static str, value: &str) -> Result<T, ApiError> {
    value.parse().map_err(|_| ApiError::invalid_param(name, "must be a non-negative integer"))
}

pub fn parse_hex_u64(name: &'static str, value: &str) -> Result<u64, ApiError> {
    let valid = value.len() == 16 && value.bytes().all(|b| b.is_ascii_hexdigit());
    let parsed = valid.then(|| u64::from_str_radix(value, 16).ok()).flatten();
    parsed.ok_or_else(|| ApiError::invalid_param(name, "must be an id of 16 hex digits"))
}

fn seconds_to_ms(name: &'static str, value: &str) -> Result<u64, ApiError> {
    let seconds: u64 = parse_number(name, value)?;
    seconds.checked_mul(1000).ok_or_else(|| ApiError::invalid_param(name, "is out of range"))
}

/// A cursor as `/generations` writes it: `<created ms>-<hold as 32 hex digits>`.
fn parse_cursor(value: &str) -> Result<HistoryCursor, ApiError> {
    let invalid = || ApiError::invalid_param("cursor", "must be a next_cursor this API returned");
    let (created_ms, hold) = value.split_once('-').ok_or_else(invalid)?;
    let created_ms = created_ms.parse().map_err(|_| invalid())?;
    if hold.len() != 32 {
        return Err(invalid());
    }
    let hold = u128::from_str_radix(hold, 16).map_err(|_| invalid())?;
    Ok(HistoryCursor { created_ms, hold: HoldId(hold) })
}

/// `GET /v1/api/key`: the calling key (of either kind) in OpenRouter's shape: its name,
/// usage (all time, this UTC day, week and month), spend limit, what remains of it and
/// when it resets, and its rate limits ([`account::key_json`]).
pub async fn key(app: &'static App, headers: &HeaderMap) -> Result<Response, ApiError> {
    let caller = app.bank.authenticate_for(headers, KeyUse::Read).await?;
    let key = app.bank.key_of(caller.account, caller.key).await?;
    let key = key.ok_or_else(|| ApiError::unauthorized("invalid API key"))?;
    let data = account::key_json(caller.key, &key, crate::bank::now_ms());
    Ok(respond::json(StatusCode::OK, &json!({ "data": data })))
}

pub fn authorization(headers: &HeaderMap) -> Option<&[u8]> {
    headers.get(AUTHORIZATION).map(HeaderValue::as_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::providers::PARAMETERS_PASSED_THROUGH;

    #[test]
    fn endpoints_paths_name_a_model() {
        let check = |path: &str, expected: Option<&str>| {
            assert_eq!(endpoints_model_id(path), expected, "{path}");
        };
        check(
            "/v1/api/models/meta-llama/llama-4-maverick/endpoints",
            Some("meta-llama/llama-4-maverick"),
        );
        check("/v1/api/models/a/b/c/endpoints", None);
        check("/v1/api/models//b/endpoints", None);
        check("/v1/api/models/a/endpoints", None);
        check("/v1/api/models/a/b", None);
    }

    #[test]
    fn models_state_every_price_charged() {
        let catalog = Catalog::builtin();
        let listed =
            |id: &str| model_json(catalog.get(id).expect("catalogued"), &PARAMETERS_PASSED_THROUGH);
        let sonar = listed("perplexity/sonar-pro");
        assert_eq!(
            sonar["pricing"],
            json!({"prompt": "0.000003", "completion": "0.000015", "request": "0.006",
                "input_cache_read": "0.000003", "input_cache_write": "0.000003", "image": "0"})
        );
        assert_eq!(sonar["long_context"], Value::Null);
        let sonnet = listed("anthropic/claude-sonnet-4");
        assert_eq!(sonnet["pricing"]["input_cache_read"], "0.0000003");
        assert_eq!(sonnet["pricing"]["input_cache_write"], "0.00000375");
        assert_eq!(sonnet["pricing"]["request"], "0");
        let pro = listed("google/gemini-2.5-pro");
        assert_eq!(pro["long_context"]["above_prompt_tokens"], 200_000);
        assert_eq!(pro["long_context"]["pricing"]["prompt"], "0.0000025");
        assert_eq!(pro["long_context"]["pricing"]["input_cache_read"], "0.000000625");
    }

    #[test]
    fn supported_parameters_follow_the_capabilities() {
        let catalog = Catalog::builtin();
        let supported =
            |id: &str| catalog.get(id).unwrap().supported_parameters(&PARAMETERS_PASSED_THROUGH);
        // Perplexity has neither tools nor reasoning.
        let sonar = supported("perplexity/sonar-pro");
        assert!(sonar.contains(&"temperature") && sonar.contains(&"seed"));
        assert!(!sonar.contains(&"tools") && !sonar.contains(&"reasoning_effort"));
        let o3 = supported("openai/o3");
        assert!(o3.contains(&"tools") && o3.contains(&"reasoning_effort"));
        // Claude Opus 5.5 takes only its default sampling.
        let opus = supported("anthropic/claude-opus-5.5");
        assert!(opus.contains(&"reasoning_effort") && !opus.contains(&"temperature"));
        assert!(!opus.contains(&"top_p"));
        assert_eq!(supported("openai/text-embedding-3-small"), ["encoding_format", "dimensions"]);
        assert_eq!(supported("mistralai/mistral-embed"), ["encoding_format"]);
    }
}
