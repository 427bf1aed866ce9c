//! The web dashboard, served by every gateway: sign-up, login and logout
//! (`session.rs`, `auth.rs`) and the server-rendered pages under `/dashboard`
//! (`pages.rs`, from the blocks of `html.rs`, with the vendored `gateway/static/` CSS and
//! JS). A page only ever shows the session's own account: every read and write below
//! takes the account from the verified session, never from the request. Sessions prove
//! themselves by cookie only, and API keys by header only: an API key opens no page and
//! a session cookie calls no API.

pub mod auth;
pub mod html;
mod pages;
pub mod session;

use crate::app::App;
use crate::body::UnreadBody;
use crate::error::ApiError;
use crate::keys;
use crate::respond::{self, Response};
use auth::LoginLimiter;
use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use hyper::body::Incoming;
use session::{Cookies, Session, Sessions, CSRF_COOKIE};
use solrouter_ledger::Role;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// Form bodies are a few fields; 16 KiB is far more than any needs.
pub const FORM_BYTES_MAX: usize = 16 << 10;

/// The dashboard's shared state in [`App`].
pub struct Web {
    pub sessions: Sessions,
    pub limiter: LoginLimiter,
    /// Dev mode: the credits page credits the account (the operator's top-up).
    pub operator_credit: bool,
}

impl Web {
    pub fn new(secret: &[u8], operator_credit: bool) -> Web {
        Web { sessions: Sessions::new(secret), limiter: LoginLimiter::default(), operator_credit }
    }
}

/// The client's address, put in each request's extensions by the server.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// Whether the route table sends `path` here.
pub fn serves(path: &str) -> bool {
    matches!(path, "/signup" | "/login" | "/logout" | "/dashboard")
        || path.starts_with("/dashboard/")
        || path.starts_with("/static/")
}

/// Answers a dashboard request; errors become pages (or JSON for the JSON endpoints).
pub async fn handle(app: &'static App, request: Request<Incoming>) -> Response {
    let json = request.uri().path().ends_with(".json");
    match pages::route(app, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(json),
    }
}

/// Why a dashboard request failed.
#[derive(Debug)]
pub enum WebError {
    /// No valid session: to the login page (a JSON endpoint answers 401).
    LoggedOut,
    Status(StatusCode, String),
}

impl From<ApiError> for WebError {
    fn from(error: ApiError) -> WebError {
        WebError::Status(error.status(), error.message().to_owned())
    }
}

impl WebError {
    pub fn forbidden(message: &str) -> WebError {
        WebError::Status(StatusCode::FORBIDDEN, message.to_owned())
    }

    pub fn not_found() -> WebError {
        WebError::Status(StatusCode::NOT_FOUND, "no such page".to_owned())
    }

    fn into_response(self, json: bool) -> Response {
        let (status, message) = match self {
            WebError::LoggedOut if json => (StatusCode::UNAUTHORIZED, "log in first".to_owned()),
            WebError::LoggedOut => {
                return redirect("/login", &session::cleared_cookies());
            }
            WebError::Status(status, message) => (status, message),
        };
        if json {
            let body = serde_json::json!({"error": {"message": message}});
            return respond::json(status, &body);
        }
        let body = format!(
            "{}<p><a href=\"/dashboard\">Back to the dashboard</a></p>",
            html::message("error", &message)
        );
        html(status, html::page(status.canonical_reason().unwrap_or("Error"), "", None, &body), &[])
    }
}

/// The logged-in user of a request.
pub struct Ctx {
    pub session: Session,
    pub email: String,
    pub role: Role,
    pub csrf: String,
    /// A renewed access cookie, to set on the answer.
    pub cookies: Vec<String>,
}

impl Ctx {
    /// The page's nav: the user's email and the logout form's CSRF token.
    pub fn nav(&self) -> Option<(&str, &str)> {
        Some((&self.email, &self.csrf))
    }
}

/// The session of the request's cookies, if valid, not revoked (a linearizable read of
/// the ledger) and of a user that still belongs to its account.
pub async fn logged_in(app: &'static App, headers: &HeaderMap) -> Result<Ctx, WebError> {
    let cookies = Cookies::parse(headers);
    let (session, renewed) = app.web.sessions.from_cookies(&cookies).ok_or(WebError::LoggedOut)?;
    if app.bank.session_revoked(session.account, session.id).await? {
        return Err(WebError::LoggedOut);
    }
    let user = app.bank.user(session.user).await?;
    let user = user.filter(|user| user.account == session.account).ok_or(WebError::LoggedOut)?;
    Ok(Ctx {
        csrf: app.web.sessions.csrf_token(&session),
        session,
        email: user.email,
        role: user.role,
        cookies: renewed.into_iter().collect(),
    })
}

/// A submitted form and the request's cookies.
pub struct Form {
    pub cookies: Cookies,
    pub fields: HashMap<String, String>,
    pub client: Option<IpAddr>,
    pub headers: HeaderMap,
}

impl Form {
    pub async fn read(request: Request<Incoming>) -> Result<Form, WebError> {
        let client = request.extensions().get::<ClientAddr>().map(|addr| addr.0.ip());
        let (head, body) = request.into_parts();
        let body = UnreadBody::new(&head.headers, body, FORM_BYTES_MAX)?;
        let body = body.read(FORM_BYTES_MAX).await?;
        let fields = form_urlencoded::parse(&body).into_owned().collect();
        Ok(Form { cookies: Cookies::parse(&head.headers), fields, client, headers: head.headers })
    }

    pub fn get(&self, name: &str) -> &str {
        self.fields.get(name).map_or("", String::as_str)
    }

    /// The double-submit check: the form's `csrf` field equals the `sr_csrf` cookie and
    /// `expected` (the session's token; for a form before login, the cookie itself).
    pub fn check_csrf(&self, expected: Option<&str>) -> Result<(), WebError> {
        let field = self.get("csrf");
        let cookie = self.cookies.get(CSRF_COOKIE).unwrap_or_default();
        let expected = expected.unwrap_or(cookie);
        let valid = !field.is_empty()
            && keys::secrets_equal(field.as_bytes(), cookie.as_bytes())
            && keys::secrets_equal(field.as_bytes(), expected.as_bytes());
        if valid {
            Ok(())
        } else {
            Err(WebError::forbidden("the form's CSRF token is missing or wrong: reload the page"))
        }
    }
}

/// An HTML answer with the dashboard's security headers: a CSP allowing only this
/// origin's scripts and styles, no framing, no caching.
pub fn html(status: StatusCode, body: String, cookies: &[String]) -> Response {
    let mut response = respond::text(status, body, "text/html; charset=utf-8");
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    set_cookies(&mut response, cookies);
    response
}

/// A 303 to `location` (after a form: the browser GETs it).
pub fn redirect(location: &str, cookies: &[String]) -> Response {
    let mut response = respond::text(StatusCode::SEE_OTHER, "", "text/plain");
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    set_cookies(&mut response, cookies);
    response
}

pub fn set_cookies(response: &mut Response, cookies: &[String]) {
    for cookie in cookies {
        if let Ok(value) = HeaderValue::from_str(cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
}

/// The request's query parameters, decoded.
pub fn query(request: &Request<Incoming>) -> HashMap<String, String> {
    let query = request.uri().query().unwrap_or_default();
    form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

/// Method and path of a request, for routing.
pub fn method_path(request: &Request<Incoming>) -> (Method, String) {
    (request.method().clone(), request.uri().path().to_owned())
}
