//! The HTTP server: accepting connections under limits, routing requests to handlers,
//! and turning every handler error into its response in one place.

use crate::app::App;
use crate::codec::{Codec, CHAT};
use crate::error::{ApiError, ErrorShape};
use crate::health::State;
use crate::messages::{self, MESSAGES};
use crate::respond::{self, Response};
use crate::responses::RESPONSES;
use crate::{account, admin, api, embeddings, ledger_server, payments, pipeline, web};
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Connections served at once; further accepts wait for a free slot. Each connection
/// costs a task and buffers, so this bounds memory under a connection flood.
pub const CONNECTIONS_MAX: usize = 16_384;
/// Longest a client may take to send a request's headers (its body:
/// [`BODY_READ_TIMEOUT`](crate::body::BODY_READ_TIMEOUT)): a client that trickles bytes
/// cannot hold a connection open forever.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an HTTP/2 connection is pinged, and how long an answer may take before the
/// connection counts as dead.
pub const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(30);
pub const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests (streams included) may run on after shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Serves until `shutdown` completes, then drains connections for up to
/// [`SHUTDOWN_GRACE`].
pub async fn serve(
    app: &'static App,
    listener: TcpListener,
    shutdown: impl Future,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let graceful = GracefulShutdown::new();
    let mut http1 = http1::Builder::new();
    http1.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let mut any = auto::Builder::new(TokioExecutor::new());
    any.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    // HTTP/2 has no header timeout between requests; pings find dead peers instead.
    any.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(HTTP2_PING_INTERVAL)
        .keep_alive_timeout(HTTP2_PING_TIMEOUT);
    let builders = Arc::new(Builders { http1, any });
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => permit.map_err(std::io::Error::other)?,
        };
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Errors of one connection (reset during the handshake, out of file
                // descriptors for a moment) must not stop the server.
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    continue;
                }
            },
        };
        let (stream, peer) = stream;
        let _ = stream.set_nodelay(true);
        let service = service_fn(move |request: Request<Incoming>| {
            // Timed from here: the route table answers some requests itself (`/metrics`).
            let started = std::time::Instant::now();
            handle(app, started, route(app, request, peer))
        });
        let (builders, watcher) = (builders.clone(), graceful.watcher());
        tokio::spawn(async move {
            let _permit = permit;
            let opening = tokio::time::timeout(HEADER_READ_TIMEOUT, speaks_http1(&stream)).await;
            // A client that sends nothing in time, or whose connection failed, is closed.
            let Ok(Ok(http1)) = opening else { return };
            let io = TokioIo::new(stream);
            // A connection error (the client hung up) ends that connection only.
            if http1 {
                let _ = watcher.watch(builders.http1.serve_connection(io, service)).await;
            } else {
                // Boxed: the protocol detection's state and HTTP/2's connection are
                // larger than HTTP/1's, and unboxed every connection's task would keep
                // room for them.
                let connection = builders.any.serve_connection(io, service).into_owned();
                let _ = Box::pin(watcher.watch(connection)).await;
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after the shutdown grace period");
    }
    Ok(())
}

/// The same settings, for HTTP/1 only (hyper's own connection: no protocol detection,
/// no room for an HTTP/2 connection in every connection's task) and for any protocol.
struct Builders {
    http1: http1::Builder,
    any: auto::Builder<TokioExecutor>,
}

/// Whether the connection's first bytes (peeked: they stay for hyper to read) are
/// certainly no HTTP/2 preface (`PRI * HTTP/2.0…`): then it is served by hyper's
/// HTTP/1 connection alone. The builder for any protocol reads the first bytes itself to
/// tell, and hands them to hyper's HTTP/1 connection ahead of the socket: its first read
/// returns those bytes alone, and its second, to make room for a whole 8 KiB more,
/// doubles the read buffer to 16 KiB (docs/benchmarks.md, "Memory per stream"). Read
/// without it, a request arrives in one 8 KiB buffer.
async fn speaks_http1(stream: &tokio::net::TcpStream) -> std::io::Result<bool> {
    let mut first = [0; 2];
    let read = stream.peek(&mut first).await?;
    Ok(read == first.len() && first != *b"PR")
}

/// A request's handler as the route table picked it: answered already, or a boxed future.
enum Handling {
    Ready(Result<Response, ApiError>),
    Pending(Pin<Box<dyn Future<Output = Result<Response, ApiError>> + Send>>),
}

/// Runs the handler `route` picked and renders its error, if any; records the request's
/// metrics, its duration from `started`. hyper keeps room for this future for as long as
/// the connection lives (an idle keep-alive connection's and an open stream's included),
/// so it holds nothing but the route's answer: the request went into the handler's box.
/// (A block, not an async fn, which would keep its arguments twice.)
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice in the state hyper holds per connection"
)]
fn handle(
    app: &'static App,
    started: std::time::Instant,
    (route, shape, handling): (&'static str, ErrorShape, Handling),
) -> impl Future<Output = Result<Response, Infallible>> {
    async move {
        let result = match handling {
            Handling::Ready(result) => result,
            Handling::Pending(handler) => handler.await,
        };
        let response = result.unwrap_or_else(|error| error.into_response(shape));
        app.requests.record(route, response.status(), started.elapsed());
        Ok(response)
    }
}

/// The route table. Returns the route's name (a metrics label with bounded values), the
/// shape its errors take and its handler. `peer`: the client's address, which the
/// dashboard reads.
///
/// Not async, and every handler that waits is boxed: the request moves into its
/// handler's box here, so the connection's room for `handle` need not hold it, nor the
/// largest handler's state (16 KiB); a request holds only its own handler's, and only
/// until its response head is out (docs/benchmarks.md, "Memory per stream").
fn route(
    app: &'static App,
    mut request: Request<Incoming>,
    peer: SocketAddr,
) -> (&'static str, ErrorShape, Handling) {
    fn pending(
        handler: impl Future<Output = Result<Response, ApiError>> + Send + 'static,
    ) -> Handling {
        Handling::Pending(Box::pin(handler))
    }
    if web::serves(request.uri().path()) {
        request.extensions_mut().insert(web::ClientAddr(peer));
        return (
            "web",
            ErrorShape::OpenAi,
            pending(async move { Ok(web::handle(app, request).await) }),
        );
    }
    let path = request.uri().path();
    if path.starts_with(admin::PREFIX) {
        return ("admin", ErrorShape::OpenAi, pending(admin::handle(app, request)));
    }
    let anthropic = ErrorShape::Anthropic;
    let handling = match (request.method(), path) {
        (&Method::POST, "/v1/api/chat/completions") => {
            return ("chat", CHAT.errors(), pending(pipeline::handle(app, &CHAT, request)));
        }
        (&Method::POST, "/v1/api/responses") => {
            let handling = pending(pipeline::handle(app, &RESPONSES, request));
            return ("responses", RESPONSES.errors(), handling);
        }
        (_, path) if path.starts_with("/v1/api/responses/") => {
            Handling::Ready(Err(ApiError::not_found(
                "the gateway stores no responses: each POST /v1/api/responses is answered whole",
            )))
        }
        (&Method::POST, "/v1/api/embeddings") => {
            return ("embeddings", ErrorShape::OpenAi, pending(embeddings::handle(app, request)));
        }
        (&Method::POST, "/v1/messages") => {
            return (
                "messages",
                MESSAGES.errors(),
                pending(pipeline::handle(app, &MESSAGES, request)),
            );
        }
        (&Method::POST, "/v1/messages/count_tokens") => {
            return ("count_tokens", anthropic, pending(messages::count_tokens(app, request)));
        }
        (&Method::GET, "/v1/models") => {
            return ("models", anthropic, Handling::Ready(Ok(messages::models(app))));
        }
        (_, "/v1/messages" | "/v1/messages/count_tokens" | "/v1/models") => {
            return ("messages", anthropic, Handling::Ready(Err(ApiError::method_not_allowed())));
        }
        (&Method::GET, "/v1/api/models") => Handling::Ready(Ok(api::models(app))),
        (&Method::GET, path) if api::endpoints_model_id(path).is_some() => {
            Handling::Ready(api::endpoints(app, path))
        }
        (&Method::GET, "/v1/api/credits") => {
            pending(async move { api::credits(app, request.headers()).await })
        }
        (&Method::GET, "/v1/api/generation") => {
            pending(async move { api::generation(app, &request).await })
        }
        (&Method::GET, "/v1/api/generations") => {
            pending(async move { api::generations(app, &request).await })
        }
        (&Method::GET, "/v1/api/activity") => {
            pending(async move { api::activity(app, &request).await })
        }
        (&Method::GET, "/v1/api/key") => {
            pending(async move { api::key(app, request.headers()).await })
        }
        (&Method::POST, payments::WEBHOOK_PATH) => pending(payments::handle(app, request)),
        (_, path) if path == account::KEYS_PATH || path.starts_with("/v1/api/keys/") => {
            pending(account::handle_keys(app, request))
        }
        (&Method::GET, "/healthz") => {
            Handling::Ready(Ok(respond::text(StatusCode::OK, "ok\n", "text/plain")))
        }
        (&Method::GET, "/readyz") => pending(readiness(app)),
        (&Method::GET, "/metrics") => {
            app.health.export_metrics();
            if let Some(node) = app.bank.local_node() {
                ledger_server::record_node_metrics(node);
            }
            let text = app.metrics.render();
            Handling::Ready(Ok(respond::text(StatusCode::OK, text, "text/plain; version=0.0.4")))
        }
        (_, "/v1/api/chat/completions" | "/v1/api/responses" | "/v1/api/models")
        | (_, "/v1/api/credits")
        | (_, "/v1/api/generation" | "/v1/api/generations" | "/v1/api/activity")
        | (_, "/v1/api/key" | "/healthz" | "/readyz" | "/metrics") => {
            Handling::Ready(Err(ApiError::method_not_allowed()))
        }
        (method, path) => {
            Handling::Ready(Err(ApiError::not_found(format!("no route for {method} {path}"))))
        }
    };
    ("api", ErrorShape::OpenAi, handling)
}

/// Ready when the ledger answers a linearizable read. The body also shows each
/// configured provider's circuit state (its worst endpoint's); a failing provider does not make the gateway
/// unready (other providers, and fallbacks, still work).
async fn readiness(app: &'static App) -> Result<Response, ApiError> {
    app.bank.ready().await?;
    let providers: serde_json::Map<String, serde_json::Value> = app
        .health
        .host_states()
        .into_iter()
        .filter(|(provider, _)| app.providers.enabled(provider))
        .map(|(provider, state)| {
            let state = match state {
                State::Closed => "healthy",
                State::Open => "failing",
                State::HalfOpen => "probing",
            };
            (provider.to_owned(), state.into())
        })
        .collect();
    let body = serde_json::json!({"ledger": "ok", "providers": providers});
    Ok(respond::json(StatusCode::OK, &body))
}
