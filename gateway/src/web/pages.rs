//! The dashboard's routes and pages. Each page handler takes the account from the
//! verified session ([`logged_in`]); ids in paths and forms (a key to revoke) are
//! checked against that account, and anything else is answered as unknown.

use super::auth::{self, Subject, PASSWORD_BYTES_MAX, PASSWORD_BYTES_MIN};
use super::html::{self, escape, Series};
use super::session::{self, REVOCATION_CLOCK_MARGIN};
use super::{html as page_html, logged_in, method_path, query, redirect, Ctx, Form, WebError};
use crate::account::{self, Actor, KeyFields};
use crate::admin::IDEMPOTENCY_KEY_BYTES_MAX;
use crate::api::utc_rfc3339;
use crate::app::App;
use crate::keys;
use crate::respond::{self, Response};
use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};
use solrouter_ledger::{
    signed_usd, AccountId, Key, KeyId, KeyKind, KeyLimits, PicoUsd, Rejection, RequestRecord, Role,
    UserId, EMAIL_BYTES_MAX, NAME_BYTES_MAX,
};
use solrouter_raft::{HistoryCursor, HistoryQuery, UsageQuery, HISTORY_PAGE_MAX};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

const CSS: &str = include_str!("../../static/dashboard.css");
const JS: &str = include_str!("../../static/dashboard.js");
/// Requests per activity page.
const ACTIVITY_PAGE: u32 = 50;
/// Most rows of one CSV export (pages of `HISTORY_PAGE_MAX` read in turn).
pub const CSV_ROWS_MAX: usize = 20_000;
const HOUR_MS: u64 = 60 * 60 * 1000;
const DAY_MS: u64 = 24 * HOUR_MS;

pub async fn route(app: &'static App, request: Request<Incoming>) -> Result<Response, WebError> {
    let (method, path) = method_path(&request);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (Method::GET, ["static", "dashboard.css"]) => Ok(asset(CSS, "text/css; charset=utf-8")),
        (Method::GET, ["static", "dashboard.js"]) => {
            Ok(asset(JS, "text/javascript; charset=utf-8"))
        }
        (Method::GET, ["signup"]) => Ok(signup_form(request.headers(), None)),
        (Method::POST, ["signup"]) => signup(app, Form::read(request).await?).await,
        (Method::GET, ["login"]) => Ok(login_form(request.headers(), None, StatusCode::OK)),
        (Method::POST, ["login"]) => login(app, Form::read(request).await?).await,
        (Method::POST, ["logout"]) => logout(app, Form::read(request).await?).await,
        (Method::GET, ["dashboard"]) => overview(app, &request).await,
        (Method::GET, ["dashboard", "overview.json"]) => overview_json(app, &request).await,
        (Method::GET, ["dashboard", "usage"]) => usage(app, &request).await,
        (Method::GET, ["dashboard", "activity"]) => activity(app, &request).await,
        (Method::GET, ["dashboard", "activity.csv"]) => activity_csv(app, &request).await,
        (Method::GET, ["dashboard", "keys"]) => {
            let mut ctx = logged_in(app, request.headers()).await?;
            let created = new_key(request.headers());
            if created.is_some() {
                ctx.cookies.push(session::cookie(NEW_KEY_COOKIE, "", 0));
            }
            keys_page(app, &ctx, created).await
        }
        (Method::POST, ["dashboard", "keys"]) => create_key(app, Form::read(request).await?).await,
        (Method::POST, ["dashboard", "keys", id, action]) => {
            let id = KeyId(parse_hex_u64(id).ok_or_else(WebError::not_found)?);
            let form = Form::read(request).await?;
            match *action {
                "revoke" => revoke_key(app, id, form).await,
                "limits" | "disabled" => update_key(app, id, form).await,
                _ => Err(WebError::not_found()),
            }
        }
        (Method::GET, ["dashboard", "models"]) => models(app, &request).await,
        (Method::GET, ["dashboard", "credits"]) => {
            let ctx = logged_in(app, request.headers()).await?;
            credits_page(app, &ctx, None).await
        }
        (Method::POST, ["dashboard", "credits"]) => credit(app, Form::read(request).await?).await,
        (Method::GET, ["dashboard", "members"]) => {
            let ctx = logged_in(app, request.headers()).await?;
            members_page(app, &ctx, None).await
        }
        (Method::POST, ["dashboard", "members"]) => {
            add_member(app, Form::read(request).await?).await
        }
        _ => Err(WebError::not_found()),
    }
}

fn asset(text: &'static str, content_type: &'static str) -> Response {
    let mut response = respond::text(StatusCode::OK, text, content_type);
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

// --- Sign-up, login, logout -------------------------------------------------------------

/// The CSRF token of a form shown before login: the `sr_csrf` cookie's, or a new one
/// (set with the page).
fn anonymous_csrf(headers: &HeaderMap) -> (String, Vec<String>) {
    let cookies = session::Cookies::parse(headers);
    match cookies.get(session::CSRF_COOKIE).filter(|token| token.len() == 64) {
        Some(token) => (token.to_owned(), Vec::new()),
        None => {
            let token = keys::random_token();
            let cookie = session::cookie(session::CSRF_COOKIE, &token, 24 * 60 * 60);
            (token, vec![cookie])
        }
    }
}

fn credentials_form(action: &str, csrf: &str, submit: &str, with_name: bool) -> String {
    let name = if with_name {
        "<label for=\"name\">Organisation name (optional)</label>\
         <input id=\"name\" name=\"name\" maxlength=\"256\" autocomplete=\"organization\">"
    } else {
        ""
    };
    let new_password = if with_name { "new-password" } else { "current-password" };
    format!(
        "<form class=\"card narrow\" method=\"post\" action=\"{action}\">{}\
         <label for=\"email\">Email</label>\
         <input id=\"email\" name=\"email\" type=\"email\" required maxlength=\"254\" \
         autocomplete=\"email\">\
         <label for=\"password\">Password</label>\
         <input id=\"password\" name=\"password\" type=\"password\" required minlength=\"{PASSWORD_BYTES_MIN}\" \
         maxlength=\"{PASSWORD_BYTES_MAX}\" autocomplete=\"{new_password}\">{name}\
         <button type=\"submit\">{submit}</button></form>",
        html::csrf_field(csrf)
    )
}

fn signup_form(headers: &HeaderMap, error: Option<(StatusCode, &str)>) -> Response {
    let (csrf, cookies) = anonymous_csrf(headers);
    let (status, message) = match error {
        Some((status, text)) => (status, html::message("error", text)),
        None => (StatusCode::OK, String::new()),
    };
    let body = format!(
        "{message}{}<p>Already have an account? <a href=\"/login\">Log in</a>.</p>",
        credentials_form("/signup", &csrf, "Create account", true)
    );
    page_html(status, html::page("Sign up", "", None, &body), &cookies)
}

fn login_form(headers: &HeaderMap, error: Option<&str>, status: StatusCode) -> Response {
    let (csrf, cookies) = anonymous_csrf(headers);
    let message = error.map(|text| html::message("error", text)).unwrap_or_default();
    let body = format!(
        "{message}{}<p>No account yet? <a href=\"/signup\">Sign up</a>.</p>",
        credentials_form("/login", &csrf, "Log in", false)
    );
    page_html(status, html::page("Log in", "", None, &body), &cookies)
}

/// A lower-case email of a plausible shape (something@domain), or why not.
fn parse_email(text: &str) -> Result<String, &'static str> {
    let email = text.trim().to_lowercase();
    let valid = email.len() <= EMAIL_BYTES_MAX
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(email)
    } else {
        Err("enter a valid email address")
    }
}

fn check_password(password: &str) -> Result<(), String> {
    if (PASSWORD_BYTES_MIN..=PASSWORD_BYTES_MAX).contains(&password.len()) {
        Ok(())
    } else {
        Err(format!("the password must be {PASSWORD_BYTES_MIN} to {PASSWORD_BYTES_MAX} bytes"))
    }
}

/// Creates the account, then its owner (the user directory is another ledger group, so
/// two commands: an owner creation that fails leaves an empty, unreachable account).
async fn signup(app: &'static App, form: Form) -> Result<Response, WebError> {
    form.check_csrf(None)?;
    let refuse = |status, text: &str| Ok(signup_form(&form.headers, Some((status, text))));
    let email = match parse_email(form.get("email")) {
        Ok(email) => email,
        Err(reason) => return refuse(StatusCode::BAD_REQUEST, reason),
    };
    let password = form.get("password").to_owned();
    if let Err(reason) = check_password(&password) {
        return refuse(StatusCode::BAD_REQUEST, &reason);
    }
    let name = match form.get("name").trim() {
        "" => email.clone(),
        name if name.len() <= NAME_BYTES_MAX => name.to_owned(),
        _ => return refuse(StatusCode::BAD_REQUEST, "the organisation name is too long"),
    };
    if app.bank.user_by_email(&email).await?.is_some() {
        return refuse(StatusCode::CONFLICT, "an account with this email exists: log in");
    }
    let hash = auth::hash_password(password).await.map_err(internal)?;
    let account = AccountId(keys::random_u64());
    app.bank.create_account(account, name).await?.map_err(rejected)?;
    let user = UserId(keys::random_u64());
    match app.bank.create_user(user, account, email, hash, Role::Owner).await? {
        Ok(_) => {}
        Err(Rejection::UserExists) => {
            return refuse(StatusCode::CONFLICT, "an account with this email exists: log in")
        }
        Err(rejection) => return Err(rejected(rejection)),
    }
    let (_, cookies) = app.web.sessions.start(user, account, Role::Owner);
    Ok(redirect("/dashboard", &cookies))
}

/// Logs in with email and password, within the login limits (per email and per client
/// address, on this gateway: see `auth::LOGIN_WINDOW`).
async fn login(app: &'static App, form: Form) -> Result<Response, WebError> {
    form.check_csrf(None)?;
    let email = form.get("email").trim().to_lowercase();
    let mut subjects = vec![Subject::Email(email.clone())];
    subjects.extend(form.client.map(Subject::Address));
    if let Some(wait) = app.web.limiter.check(&subjects) {
        let text = "too many failed logins: try again later";
        let mut response = login_form(&form.headers, Some(text), StatusCode::TOO_MANY_REQUESTS);
        let seconds = wait.as_secs().max(1).to_string();
        if let Ok(value) = HeaderValue::from_str(&seconds) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return Ok(response);
    }
    let found =
        if email.len() <= EMAIL_BYTES_MAX { app.bank.user_by_email(&email).await? } else { None };
    let password = form.get("password").chars().take(PASSWORD_BYTES_MAX).collect();
    let stored = found.as_ref().map(|(_, user)| user.password_hash.clone());
    if !auth::verify_password(password, stored).await {
        app.web.limiter.failed(&subjects);
        let text = "wrong email or password";
        return Ok(login_form(&form.headers, Some(text), StatusCode::UNAUTHORIZED));
    }
    let (user, record) = found.expect("a password verified against a stored hash");
    let (_, cookies) = app.web.sessions.start(user, record.account, record.role);
    Ok(redirect("/dashboard", &cookies))
}

/// Ends the session on every gateway (revoked in the ledger until its tokens expire,
/// plus a margin for clocks) and in the browser.
async fn logout(app: &'static App, form: Form) -> Result<Response, WebError> {
    let Some((session, _)) = app.web.sessions.from_cookies(&form.cookies) else {
        return Ok(redirect("/login", &session::cleared_cookies()));
    };
    form.check_csrf(Some(&app.web.sessions.csrf_token(&session)))?;
    let until_ms = session.ends_ms + REVOCATION_CLOCK_MARGIN.as_millis() as u64;
    app.bank.revoke_session(session.account, session.id, until_ms).await?.map_err(rejected)?;
    Ok(redirect("/login", &session::cleared_cookies()))
}

// --- Pages ------------------------------------------------------------------------------

fn render(ctx: &Ctx, title: &str, current: &str, body: &str) -> Response {
    page_html(StatusCode::OK, html::page(title, current, ctx.nav(), body), &ctx.cookies)
}

async fn overview(app: &'static App, request: &Request<Incoming>) -> Result<Response, WebError> {
    let ctx = logged_in(app, request.headers()).await?;
    let figures = balance(app, ctx.session.account).await?;
    let mut body = String::from(
        "<section class=\"cards\" data-poll=\"/dashboard/overview.json\" aria-live=\"polite\">",
    );
    for (field, label) in [
        ("available", "Balance"),
        ("credits", "Credits"),
        ("spent", "Spent"),
        ("held", "Held"),
        ("written_off", "Written off"),
    ] {
        let value = figures[field].as_str().unwrap_or_default();
        let _ = write!(
            body,
            "<div class=\"card\"><h2>{label}</h2><output data-field=\"{field}\" id=\"{field}\">{}</output></div>",
            escape(value)
        );
    }
    body.push_str(
        "</section><p class=\"hint\">Updates every two seconds while requests run. \
         <a href=\"/dashboard/usage\">Charts</a> · <a href=\"/dashboard/activity\">Every request</a></p>",
    );
    Ok(render(&ctx, "Overview", "/dashboard", &body))
}

/// The account's money as the overview shows it, in USD (6 decimals).
async fn balance(app: &'static App, account: AccountId) -> Result<serde_json::Value, WebError> {
    let found = app.bank.account(account).await?;
    let found =
        found.ok_or_else(|| WebError::Status(StatusCode::NOT_FOUND, "no account".into()))?;
    let available = u128::try_from(found.available()).map(PicoUsd).unwrap_or(PicoUsd::ZERO);
    Ok(json!({
        "available": html::usd(available),
        "credits": html::usd(found.credits),
        "spent": html::usd(found.debits_posted),
        "held": html::usd(found.debits_pending),
        "written_off": html::usd(found.written_off),
        "available_exact": signed_usd(found.available()),
        "holds": found.n_holds,
    }))
}

async fn overview_json(
    app: &'static App,
    request: &Request<Incoming>,
) -> Result<Response, WebError> {
    let ctx = logged_in(app, request.headers()).await?;
    let figures = balance(app, ctx.session.account).await?;
    let mut response = respond::json(StatusCode::OK, &figures);
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    super::set_cookies(&mut response, &ctx.cookies);
    Ok(response)
}

/// Key names by id, for labels.
async fn key_names(
    app: &'static App,
    account: AccountId,
) -> Result<HashMap<KeyId, String>, WebError> {
    let keys = app.bank.keys(account).await?;
    Ok(keys.into_iter().map(|(id, key)| (id, key.name)).collect())
}

fn key_label(names: &HashMap<KeyId, String>, key: Option<KeyId>) -> String {
    match key {
        Some(key) => names.get(&key).cloned().unwrap_or_else(|| format!("{:016x}", key.0)),
        None => "(none)".into(),
    }
}

/// Spend and tokens per day (last 14) or hour (last 48), by model or by key.
async fn usage(app: &'static App, request: &Request<Incoming>) -> Result<Response, WebError> {
    let ctx = logged_in(app, request.headers()).await?;
    let params = query(request);
    let hourly = params.get("bucket").is_some_and(|b| b == "hour");
    let by_key = params.get("by").is_some_and(|b| b == "key");
    let (bucket_ms, n_buckets) = if hourly { (HOUR_MS, 48) } else { (DAY_MS, 14) };
    let now = crate::bank::now_ms();
    let last = now - now % bucket_ms;
    let first = last - (n_buckets - 1) * bucket_ms;
    let rows = app
        .bank
        .usage(UsageQuery {
            account: ctx.session.account,
            from_ms: first,
            to_ms: last + bucket_ms,
            bucket_ms,
        })
        .await?;
    let names = key_names(app, ctx.session.account).await?;
    let labels: Vec<String> = (0..n_buckets)
        .map(|n| {
            let text = utc_rfc3339(first + n * bucket_ms);
            if hourly {
                text[11..13].to_string() + "h"
            } else {
                text[5..10].to_string()
            }
        })
        .collect();
    let mut spend: BTreeMap<String, Vec<u128>> = BTreeMap::new();
    let mut tokens: BTreeMap<String, Vec<u128>> = BTreeMap::new();
    for row in &rows {
        let Some(bucket) = row.start_ms.checked_sub(first).map(|d| (d / bucket_ms) as usize) else {
            continue;
        };
        if bucket >= n_buckets as usize {
            continue;
        }
        let name = if by_key { key_label(&names, row.key) } else { row.model.clone() };
        spend.entry(name.clone()).or_insert_with(|| vec![0; n_buckets as usize])[bucket] +=
            row.usage.cost.0;
        tokens.entry(name).or_insert_with(|| vec![0; n_buckets as usize])[bucket] +=
            u128::from(row.usage.prompt_tokens + row.usage.completion_tokens);
    }
    let series = |map: BTreeMap<String, Vec<u128>>| -> Vec<Series> {
        map.into_iter().map(|(name, values)| Series { name, values }).collect()
    };
    let per = if hourly { "hour" } else { "day" };
    let by = if by_key { "key" } else { "model" };
    let mut body =
        String::from("<form class=\"filters\" method=\"get\" action=\"/dashboard/usage\">");
    body.push_str(&select("bucket", "Per", &[("day", "day"), ("hour", "hour")], per));
    body.push_str(&select("by", "By", &[("model", "model"), ("key", "key")], by));
    body.push_str("<button type=\"submit\">Show</button></form>");
    body.push_str(&html::stacked_bars(
        &format!("Spend per {per} by {by} (USD)"),
        &labels,
        &series(spend),
        |pico| html::usd(PicoUsd(pico)),
    ));
    body.push_str(&html::stacked_bars(
        &format!("Tokens per {per} by {by} (prompt + completion)"),
        &labels,
        &series(tokens),
        |n| n.to_string(),
    ));
    Ok(render(&ctx, "Usage", "/dashboard/usage", &body))
}

fn select(name: &str, label: &str, options: &[(&str, &str)], chosen: &str) -> String {
    let mut html =
        format!("<label for=\"{name}\">{label}</label><select id=\"{name}\" name=\"{name}\">");
    for (value, text) in options {
        let selected = if *value == chosen { " selected" } else { "" };
        let _ =
            write!(html, "<option value=\"{}\"{selected}>{}</option>", escape(value), escape(text));
    }
    html.push_str("</select>");
    html
}

/// The activity filters of a request's query: key, model, status, from and to (UTC
/// dates, `to` inclusive), cursor.
fn history_query(
    account: AccountId,
    params: &HashMap<String, String>,
) -> Result<HistoryQuery, WebError> {
    let bad = |what: &str| WebError::Status(StatusCode::BAD_REQUEST, format!("invalid {what}"));
    let mut query = HistoryQuery { limit: ACTIVITY_PAGE, ..HistoryQuery::all(account) };
    for (name, value) in params.iter().filter(|(_, value)| !value.is_empty()) {
        match name.as_str() {
            "key" => query.key = Some(KeyId(parse_hex_u64(value).ok_or_else(|| bad("key"))?)),
            "model" => query.model = Some(value.clone()),
            "status" => query.status = Some(value.parse().map_err(|_| bad("status"))?),
            "from" => query.from_ms = date_ms(value).ok_or_else(|| bad("from date"))?,
            "to" => query.to_ms = date_ms(value).ok_or_else(|| bad("to date"))? + DAY_MS,
            "cursor" => {
                let (created, hold) = value.split_once('-').ok_or_else(|| bad("cursor"))?;
                query.before = Some(HistoryCursor {
                    created_ms: created.parse().map_err(|_| bad("cursor"))?,
                    hold: solrouter_ledger::HoldId(
                        u128::from_str_radix(hold, 16).map_err(|_| bad("cursor"))?,
                    ),
                });
            }
            _ => {}
        }
    }
    Ok(query)
}

/// Midnight UTC of a `YYYY-MM-DD` date, in ms.
fn date_ms(text: &str) -> Option<u64> {
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    let ms = date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis();
    u64::try_from(ms).ok()
}

fn status_class(status: u16) -> &'static str {
    if status < 400 {
        "ok"
    } else {
        "failed"
    }
}

async fn activity(app: &'static App, request: &Request<Incoming>) -> Result<Response, WebError> {
    let ctx = logged_in(app, request.headers()).await?;
    let params = query(request);
    let history = history_query(ctx.session.account, &params)?;
    let page = app.bank.history(history).await?;
    let names = key_names(app, ctx.session.account).await?;
    let param = |name: &str| params.get(name).map_or("", String::as_str);
    let mut body =
        String::from("<form class=\"filters\" method=\"get\" action=\"/dashboard/activity\">");
    let mut key_options = vec![("".to_string(), "any".to_string())];
    let mut sorted: Vec<(&KeyId, &String)> = names.iter().collect();
    sorted.sort_by(|a, b| a.1.cmp(b.1));
    key_options
        .extend(sorted.into_iter().map(|(id, name)| (format!("{:016x}", id.0), name.clone())));
    let options: Vec<(&str, &str)> =
        key_options.iter().map(|(v, t)| (v.as_str(), t.as_str())).collect();
    body.push_str(&select("key", "Key", &options, param("key")));
    let _ = write!(
        body,
        "<label for=\"model\">Model</label><input id=\"model\" name=\"model\" value=\"{}\" size=\"18\">\
         <label for=\"status\">Status</label><input id=\"status\" name=\"status\" value=\"{}\" size=\"4\" inputmode=\"numeric\">\
         <label for=\"from\">From</label><input id=\"from\" name=\"from\" type=\"date\" value=\"{}\">\
         <label for=\"to\">To</label><input id=\"to\" name=\"to\" type=\"date\" value=\"{}\">\
         <button type=\"submit\">Filter</button></form>",
        escape(param("model")),
        escape(param("status")),
        escape(param("from")),
        escape(param("to"))
    );
    let filters: Vec<(&str, &str)> = ["key", "model", "status", "from", "to"]
        .into_iter()
        .map(|name| (name, param(name)))
        .filter(|(_, value)| !value.is_empty())
        .collect();
    let filter_query = encode_query(&filters);
    let _ = write!(
        body,
        "<p><a class=\"button\" href=\"/dashboard/activity.csv?{}\" download>Export CSV</a></p>",
        escape(&filter_query)
    );
    let rows: Vec<Vec<String>> = page
        .records
        .iter()
        .map(|(hold, record)| {
            let id = crate::wire::generation_id(*hold);
            vec![
                escape(&readable_time(record.created_ms)),
                escape(&key_label(&names, record.key)),
                escape(&record.model),
                escape(&record.provider),
                record.prompt_tokens.to_string(),
                record.completion_tokens.to_string(),
                record.reasoning_tokens.to_string(),
                record.cached_tokens.to_string(),
                html::usd(record.cost),
                format!("{} ms", record.latency_ms),
                record.ttft_ms.map_or_else(|| "—".to_owned(), |ms| format!("{ms} ms")),
                format!("<span class=\"{}\">{}</span>", status_class(record.status), record.status),
                format!("<code title=\"{id}\">{}…</code>", &id[..16]),
            ]
        })
        .collect();
    body.push_str(&html::table(
        "Requests, newest first",
        &[
            "Time (UTC)",
            "Key",
            "Model",
            "Host",
            "Prompt",
            "Completion",
            "Reasoning",
            "Cached",
            "Cost",
            "Latency",
            "TTFT",
            "Status",
            "Id",
        ],
        &rows,
    ));
    if let Some(next) = page.next {
        let mut next_params = filters.clone();
        let cursor = format!("{}-{:032x}", next.created_ms, next.hold.0);
        next_params.push(("cursor", &cursor));
        let _ = write!(
            body,
            "<p><a class=\"button\" rel=\"next\" href=\"/dashboard/activity?{}\">Older requests</a></p>",
            escape(&encode_query(&next_params))
        );
    }
    Ok(render(&ctx, "Activity", "/dashboard/activity", &body))
}

/// A time as a person reads it: `2026-11-30 12:45:57` (UTC).
fn readable_time(ms: u64) -> String {
    utc_rfc3339(ms).replacen('T', " ", 1).trim_end_matches('Z').to_owned()
}

fn encode_query(pairs: &[(&str, &str)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    serializer.extend_pairs(pairs);
    serializer.finish()
}

/// The filtered requests as CSV, newest first, at most [`CSV_ROWS_MAX`] rows; money as
/// exact decimal USD.
async fn activity_csv(
    app: &'static App,
    request: &Request<Incoming>,
) -> Result<Response, WebError> {
    let ctx = logged_in(app, request.headers()).await?;
    let mut history = history_query(ctx.session.account, &query(request))?;
    history.limit = HISTORY_PAGE_MAX;
    let names = key_names(app, ctx.session.account).await?;
    let mut csv = String::from(
        "id,time,key_id,key_name,model,host,prompt_tokens,completion_tokens,reasoning_tokens,\
         cached_tokens,cost_usd,written_off_usd,latency_ms,ttft_ms,status,streamed\n",
    );
    let mut n_rows = 0;
    loop {
        let page = app.bank.history(history.clone()).await?;
        for (hold, record) in &page.records {
            csv_row(&mut csv, *hold, record, &names);
        }
        n_rows += page.records.len();
        match page.next {
            Some(next) if n_rows < CSV_ROWS_MAX => history.before = Some(next),
            _ => break,
        }
    }
    let mut response = respond::text(StatusCode::OK, csv, "text/csv; charset=utf-8");
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"activity.csv\""),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    super::set_cookies(&mut response, &ctx.cookies);
    Ok(response)
}

fn csv_row(
    csv: &mut String,
    hold: solrouter_ledger::HoldId,
    record: &RequestRecord,
    names: &HashMap<KeyId, String>,
) {
    let key_id = record.key.map(|key| format!("{:016x}", key.0)).unwrap_or_default();
    let _ = writeln!(
        csv,
        "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
        crate::wire::generation_id(hold),
        utc_rfc3339(record.created_ms),
        key_id,
        csv_field(&key_label(names, record.key)),
        csv_field(&record.model),
        csv_field(&record.provider),
        record.prompt_tokens,
        record.completion_tokens,
        record.reasoning_tokens,
        record.cached_tokens,
        record.cost,
        record.written_off,
        record.latency_ms,
        record.ttft_ms.map(|ms| ms.to_string()).unwrap_or_default(),
        record.status,
        record.streamed,
    );
}

/// A CSV field, quoted when it must be; a leading `=`, `+`, `-` or `@` is prefixed with
/// `'` so a spreadsheet does not run it as a formula.
fn csv_field(text: &str) -> String {
    let text =
        if text.starts_with(['=', '+', '-', '@']) { format!("'{text}") } else { text.to_owned() };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// Carries a key just created from its POST to the keys page it redirects to, which
/// shows it and clears the cookie: a reload shows it no more and creates no second key.
const NEW_KEY_COOKIE: &str = "sr_new_key";
/// Long enough for the redirect to be followed.
const NEW_KEY_COOKIE_MAX_AGE_S: u64 = 60;

/// The key id and text of the new-key cookie, if any.
fn new_key(headers: &HeaderMap) -> Option<(KeyId, String)> {
    let cookies = session::Cookies::parse(headers);
    let (id, text) = cookies.get(NEW_KEY_COOKIE)?.split_once('.')?;
    Some((KeyId(parse_hex_u64(id)?), text.to_owned()))
}

async fn keys_page(
    app: &'static App,
    ctx: &Ctx,
    created: Option<(KeyId, String)>,
) -> Result<Response, WebError> {
    let keys = account::list_keys(&app.bank, ctx.session.account).await?;
    let now_ms = crate::bank::now_ms();
    let mut body = String::new();
    // Shown only when the id is one of this account's keys.
    let created = created.and_then(|(id, text)| {
        let (_, key) = keys.iter().find(|(found, _)| *found == id)?;
        Some((key.name.clone(), text))
    });
    if let Some((name, text)) = created {
        let _ = write!(
            body,
            "<div class=\"notice\" role=\"status\"><p>Key <strong>{}</strong> created. Copy it now: it is shown only once.</p>\
             <p><code id=\"new-key\">{}</code></p></div>",
            escape(&name),
            escape(&text)
        );
    }
    let _ = write!(
        body,
        "<form class=\"card key-form\" method=\"post\" action=\"/dashboard/keys\">{}\
         <label for=\"key-name\">Name</label><input id=\"key-name\" name=\"name\" required maxlength=\"256\">{}\
         <button type=\"submit\">Create key</button></form>",
        html::csrf_field(&ctx.csrf),
        limit_fields("new", None)
    );
    let rows: Vec<Vec<String>> =
        keys.iter().map(|(id, key)| key_row(ctx, *id, key, now_ms)).collect();
    body.push_str(&html::table(
        "API keys",
        &["Name", "Id", "Status", "Usage", "Limits", "History", "Actions"],
        &rows,
    ));
    Ok(render(ctx, "Keys", "/dashboard/keys", &body))
}

/// The spend limit, its reset period and the rate limits as form fields, filled with
/// `current`'s; `prefix` keeps the ids of the forms on one page apart.
fn limit_fields(prefix: &str, current: Option<&KeyLimits>) -> String {
    let limits = current.cloned().unwrap_or_default();
    let spend = limits.spend_limit.map(|amount| amount.to_string()).unwrap_or_default();
    let reset = limits.limit_reset.name().unwrap_or("never");
    let rpm = limits.requests_per_minute.map(|n| n.to_string()).unwrap_or_default();
    let tpm = limits.tokens_per_minute.map(|n| n.to_string()).unwrap_or_default();
    let resets =
        [("never", "never"), ("daily", "daily"), ("weekly", "weekly"), ("monthly", "monthly")];
    format!(
        "<label for=\"{prefix}-limit\">Spend limit, USD</label>\
         <input id=\"{prefix}-limit\" name=\"limit\" inputmode=\"decimal\" size=\"8\" value=\"{}\" placeholder=\"none\">{}\
         <label for=\"{prefix}-rpm\">Requests/min</label>\
         <input id=\"{prefix}-rpm\" name=\"requests_per_minute\" inputmode=\"numeric\" size=\"6\" value=\"{rpm}\" placeholder=\"none\">\
         <label for=\"{prefix}-tpm\">Tokens/min</label>\
         <input id=\"{prefix}-tpm\" name=\"tokens_per_minute\" inputmode=\"numeric\" size=\"8\" value=\"{tpm}\" placeholder=\"none\">",
        escape(&spend),
        select(&format!("{prefix}-reset"), "Resets", &resets, reset).replace(
            &format!("name=\"{prefix}-reset\""),
            "name=\"limit_reset\""
        )
    )
}

/// One key's row: state, usage, limits, and its forms (edit limits, disable or enable,
/// revoke) for a live key.
fn key_row(ctx: &Ctx, id: KeyId, key: &Key, now_ms: u64) -> Vec<String> {
    let id_hex = format!("{:016x}", id.0);
    let status = match (key.revoked, key.disabled) {
        (true, _) => "<span class=\"failed\">revoked</span>",
        (false, true) => "<span class=\"failed\">disabled</span>",
        (false, false) => "<span class=\"ok\">active</span>",
    };
    let kind = if key.kind == KeyKind::Management { " (management)" } else { "" };
    let limits = &key.limits;
    let mut described = Vec::new();
    if let Some(amount) = limits.spend_limit {
        let period = limits.limit_reset.name().unwrap_or("lifetime");
        let left = key.limit_remaining(now_ms).unwrap_or(PicoUsd::ZERO);
        described.push(format!("{} {period}, {} left", html::usd(amount), html::usd(left)));
    }
    if let Some(rpm) = limits.requests_per_minute {
        described.push(format!("{rpm} requests/min"));
    }
    if let Some(tpm) = limits.tokens_per_minute {
        described.push(format!("{tpm} tokens/min"));
    }
    let described =
        if described.is_empty() { "none".to_owned() } else { escape(&described.join("; ")) };
    let actions = if key.revoked {
        String::new()
    } else {
        let csrf = html::csrf_field(&ctx.csrf);
        let (toggle, label) = if key.disabled { ("false", "Enable") } else { ("true", "Disable") };
        format!(
            "<details><summary>Edit limits</summary><form class=\"key-form\" method=\"post\" \
             action=\"/dashboard/keys/{id_hex}/limits\">{csrf}{}<button type=\"submit\">Save limits</button></form></details>\
             <form method=\"post\" action=\"/dashboard/keys/{id_hex}/disabled\">{csrf}\
             <input type=\"hidden\" name=\"disabled\" value=\"{toggle}\">\
             <button type=\"submit\" class=\"secondary\" aria-label=\"{label} {name}\">{label}</button></form>\
             <form method=\"post\" action=\"/dashboard/keys/{id_hex}/revoke\">{csrf}\
             <button type=\"submit\" class=\"danger\" aria-label=\"Revoke {name}\">Revoke</button></form>",
            limit_fields(&id_hex, Some(limits)),
            name = escape(&key.name),
        )
    };
    vec![
        format!("{}{kind}", escape(&key.name)),
        format!("<code>{id_hex}</code>"),
        status.to_owned(),
        html::usd(key.usage),
        described,
        format!("<a href=\"/dashboard/activity?key={id_hex}\">requests</a>"),
        format!("<div class=\"actions\">{actions}</div>"),
    ]
}

/// The key fields of a form (name when creating, limits, disabled), as the key API
/// reads them: an empty field lifts its limit.
fn key_fields(form: &Form, creating: bool) -> Result<KeyFields, WebError> {
    let bad = |text: String| WebError::Status(StatusCode::BAD_REQUEST, text);
    let mut body = serde_json::Map::new();
    if creating {
        body.insert("name".into(), form.get("name").trim().into());
    }
    if form.fields.contains_key("disabled") {
        body.insert("disabled".into(), (form.get("disabled") == "true").into());
    }
    if form.fields.contains_key("limit") {
        let limit = form.get("limit").trim();
        body.insert("limit".into(), if limit.is_empty() { Value::Null } else { limit.into() });
        let reset = form.get("limit_reset");
        let reset = if reset.is_empty() || reset == "never" { Value::Null } else { reset.into() };
        body.insert("limit_reset".into(), reset);
        for field in ["requests_per_minute", "tokens_per_minute"] {
            let text = form.get(field).trim();
            let value = if text.is_empty() {
                Value::Null
            } else {
                let number: u64 =
                    text.parse().map_err(|_| bad(format!("{field} must be a whole number")))?;
                number.into()
            };
            body.insert(field.into(), value);
        }
    }
    serde_json::from_value(Value::Object(body)).map_err(|error| bad(error.to_string()))
}

fn actor(ctx: &Ctx) -> Actor {
    Actor::User { id: format!("{:016x}", ctx.session.user.0), owner: ctx.role == Role::Owner }
}

async fn create_key(app: &'static App, form: Form) -> Result<Response, WebError> {
    let ctx = logged_in(app, &form.headers).await?;
    form.check_csrf(Some(&ctx.csrf))?;
    let new = key_fields(&form, true)?.new_key()?;
    let account = ctx.session.account;
    let created = account::create_key(&app.bank, account, &actor(&ctx), new).await?;
    let value = format!("{:016x}.{}", created.id.0, created.text);
    let mut cookies = ctx.cookies;
    cookies.push(session::cookie(NEW_KEY_COOKIE, &value, NEW_KEY_COOKIE_MAX_AGE_S));
    Ok(redirect("/dashboard/keys", &cookies))
}

/// Changes a key's limits or disables (enables) it; another account's key id is a 404,
/// like an unknown one.
async fn update_key(app: &'static App, key: KeyId, form: Form) -> Result<Response, WebError> {
    let ctx = logged_in(app, &form.headers).await?;
    form.check_csrf(Some(&ctx.csrf))?;
    let update = key_fields(&form, false)?.update()?;
    account::update_key(&app.bank, ctx.session.account, &actor(&ctx), key, update).await?;
    Ok(redirect("/dashboard/keys", &ctx.cookies))
}

/// Revokes a key of the session's account; another account's key id is a 404, like an
/// unknown one.
async fn revoke_key(app: &'static App, key: KeyId, form: Form) -> Result<Response, WebError> {
    let ctx = logged_in(app, &form.headers).await?;
    form.check_csrf(Some(&ctx.csrf))?;
    account::revoke_key(&app.bank, ctx.session.account, &actor(&ctx), key).await?;
    Ok(redirect("/dashboard/keys", &ctx.cookies))
}

async fn models(app: &'static App, request: &Request<Incoming>) -> Result<Response, WebError> {
    let ctx = logged_in(app, request.headers()).await?;
    let per_million = |price: PicoUsd| html::usd(PicoUsd(price.0.saturating_mul(1_000_000)));
    let rows: Vec<Vec<String>> = app
        .catalog
        .models()
        .map(|model| {
            vec![
                format!("<code>{}</code>", escape(&model.id)),
                escape(&model.provider),
                model.context_length.to_string(),
                if model.max_output_tokens == 0 {
                    "—".into()
                } else {
                    model.max_output_tokens.to_string()
                },
                escape(&model.input_modalities.join(", ")),
                escape(&model.output_modalities.join(", ")),
                per_million(model.price.prompt),
                per_million(model.price.completion),
                if app.providers.enabled(&model.provider) { "yes".into() } else { "no".into() },
            ]
        })
        .collect();
    let body = html::table(
        "Models and prices (USD per million tokens)",
        &[
            "Model",
            "Provider",
            "Context",
            "Max output",
            "Input",
            "Output",
            "Prompt",
            "Completion",
            "Available",
        ],
        &rows,
    );
    Ok(render(&ctx, "Models", "/dashboard/models", &body))
}

async fn credits_page(
    app: &'static App,
    ctx: &Ctx,
    notice: Option<&str>,
) -> Result<Response, WebError> {
    let top_ups = app.bank.top_ups(ctx.session.account).await?;
    let mut body = notice.map(|text| html::message("notice", text)).unwrap_or_default();
    if app.web.operator_credit {
        let _ = write!(
            body,
            "<form class=\"filters\" method=\"post\" action=\"/dashboard/credits\">{}\
             <input type=\"hidden\" name=\"idempotency_key\" value=\"{}\">\
             <label for=\"amount\">Operator credit (dev mode), USD</label>\
             <input id=\"amount\" name=\"amount\" required inputmode=\"decimal\" size=\"8\" value=\"5.00\">\
             <button type=\"submit\">Credit</button></form>",
            html::csrf_field(&ctx.csrf),
            keys::random_token()
        );
    }
    let rows: Vec<Vec<String>> = top_ups
        .iter()
        .rev()
        .map(|top_up| {
            vec![
                escape(&utc_rfc3339(top_up.stamp_ms)),
                html::usd(top_up.amount),
                html::usd(top_up.credits),
            ]
        })
        .collect();
    body.push_str(&html::table(
        "Top-ups, newest first",
        &["Time (UTC)", "Amount", "Credits after"],
        &rows,
    ));
    Ok(render(ctx, "Credits", "/dashboard/credits", &body))
}

/// The operator's credit, in dev mode only; retried with the form's idempotency key, it
/// credits once.
async fn credit(app: &'static App, form: Form) -> Result<Response, WebError> {
    let ctx = logged_in(app, &form.headers).await?;
    form.check_csrf(Some(&ctx.csrf))?;
    if !app.web.operator_credit {
        return Err(WebError::forbidden("crediting from the dashboard exists only in dev mode"));
    }
    let bad = |text: String| WebError::Status(StatusCode::BAD_REQUEST, text);
    let amount = PicoUsd::parse_usd(form.get("amount").trim()).map_err(|e| bad(e.to_string()))?;
    if amount == PicoUsd::ZERO {
        return Err(bad("the amount must be more than zero".into()));
    }
    let idempotency_key = form.get("idempotency_key");
    if idempotency_key.is_empty() || idempotency_key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
        return Err(bad("the form's idempotency key is missing: reload the page".into()));
    }
    let credited = app.bank.credit(ctx.session.account, amount, idempotency_key).await?;
    credited.map_err(rejected)?;
    Ok(redirect("/dashboard/credits", &ctx.cookies))
}

async fn members_page(
    app: &'static App,
    ctx: &Ctx,
    error: Option<&str>,
) -> Result<Response, WebError> {
    let members = app.bank.members(ctx.session.account).await?;
    let mut body = error.map(|text| html::message("error", text)).unwrap_or_default();
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|(id, user)| {
            let you = if *id == ctx.session.user { " (you)" } else { "" };
            let role = match user.role {
                Role::Owner => "owner",
                Role::Member => "member",
            };
            vec![format!("{}{you}", escape(&user.email)), role.to_string()]
        })
        .collect();
    body.push_str(&html::table("Users of this account", &["Email", "Role"], &rows));
    if ctx.role == Role::Owner {
        let _ = write!(
            body,
            "<h2>Add a member</h2><form class=\"card narrow\" method=\"post\" action=\"/dashboard/members\">{}\
             <label for=\"member-email\">Email</label><input id=\"member-email\" name=\"email\" type=\"email\" required maxlength=\"254\">\
             <label for=\"member-password\">Initial password</label><input id=\"member-password\" name=\"password\" type=\"password\" \
             required minlength=\"{PASSWORD_BYTES_MIN}\" maxlength=\"{PASSWORD_BYTES_MAX}\" autocomplete=\"new-password\">\
             <button type=\"submit\">Add member</button></form>",
            html::csrf_field(&ctx.csrf)
        );
    }
    Ok(render(ctx, "Members", "/dashboard/members", &body))
}

/// The owner adds a member with an initial password (no email is sent: the owner hands
/// it over).
async fn add_member(app: &'static App, form: Form) -> Result<Response, WebError> {
    let ctx = logged_in(app, &form.headers).await?;
    form.check_csrf(Some(&ctx.csrf))?;
    if ctx.role != Role::Owner {
        return Err(WebError::forbidden("only the account's owner adds members"));
    }
    let email = match parse_email(form.get("email")) {
        Ok(email) => email,
        Err(reason) => return members_page(app, &ctx, Some(reason)).await,
    };
    let password = form.get("password").to_owned();
    if let Err(reason) = check_password(&password) {
        return members_page(app, &ctx, Some(&reason)).await;
    }
    let hash = auth::hash_password(password).await.map_err(internal)?;
    let user = UserId(keys::random_u64());
    let created =
        app.bank.create_user(user, ctx.session.account, email, hash, Role::Member).await?;
    match created {
        Ok(_) => Ok(redirect("/dashboard/members", &ctx.cookies)),
        Err(Rejection::UserExists) => {
            members_page(app, &ctx, Some("that email already has a user")).await
        }
        Err(Rejection::TooManyUsers) => {
            members_page(app, &ctx, Some("the account has as many users as it may")).await
        }
        Err(rejection) => Err(rejected(rejection)),
    }
}

fn parse_hex_u64(text: &str) -> Option<u64> {
    let valid = text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then(|| u64::from_str_radix(text, 16).ok()).flatten()
}

fn rejected(rejection: Rejection) -> WebError {
    WebError::Status(StatusCode::CONFLICT, rejection.to_string())
}

fn internal(message: String) -> WebError {
    WebError::Status(StatusCode::INTERNAL_SERVER_ERROR, message)
}
