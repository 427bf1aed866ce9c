//! The harness's HTTP/1.1 client for the requests it measures. Each target URL keeps a
//! stack of idle keep-alive connections, each a hyper client connection
//! (`hyper::client::conn::http1`) over TCP, or over rustls (the Mozilla roots) for
//! `https`. A request takes the connection used last or opens one. Its response gives the
//! connection back once the body has been read to the end.
//!
//! The admin calls keep reqwest. For the measured requests reqwest cost about a third of
//! the harness's CPU (its user time halved without it): it parsed each request's URL
//! twice more (its redirect policy, its pending request) and went through hyper-util's
//! pool. The harness shares the machine with the gateways it measures
//! (docs/benchmarks.md, "Session 41").

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use http::uri::PathAndQuery;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::crypto::ring;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tower_service::Service;

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Longest a connection waits idle for its next request. A gateway closes a connection
/// that sends no request for 30 s (`HEADER_READ_TIMEOUT` in `gateway/src/server.rs`).
/// With reqwest's default of 90 s the generator now and then sent a request on a
/// connection the gateway was closing that instant, and counted a `transport: other`
/// error (1 and 2 in 600,000 requests of two ten-minute runs). The official SDKs keep
/// idle connections about as long as this (httpx 5 s).
const IDLE_MAX: Duration = Duration::from_secs(5);

/// Why a request got no complete answer, as its error kind names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Connect,
    Timeout,
    /// The answer's body broke off.
    Body,
    Other,
}

impl Transport {
    pub fn kind(self) -> &'static str {
        match self {
            Transport::Connect => "transport: connect",
            Transport::Timeout => "transport: timeout",
            Transport::Body => "transport: body",
            Transport::Other => "transport: other",
        }
    }
}

/// Opens TCP connections (no Nagle) and TLS sessions for `https` targets.
#[derive(Clone)]
pub struct Connector(HttpsConnector<HttpConnector>);

impl Connector {
    pub fn new() -> anyhow::Result<Connector> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false); // The TLS layer takes `https` URIs.
        tcp.set_nodelay(true);
        let connector = HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        Ok(Connector(connector))
    }
}

/// One URL that requests are posted to, and its idle connections.
pub struct Target {
    /// Scheme and authority: where connections go.
    origin: Uri,
    /// The request target in origin form (`/v1/api/chat/completions`).
    path: Uri,
    host: HeaderValue,
    connector: Connector,
    /// Idle connections, the one used last on top.
    idle: Mutex<Vec<Idle>>,
    /// Connections opened so far.
    opened: AtomicU64,
}

struct Idle {
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

impl Target {
    pub fn new(url: &str, connector: &Connector) -> anyhow::Result<Target> {
        let uri: Uri = url.parse().map_err(|error| anyhow::anyhow!("not a URL: {url}: {error}"))?;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            anyhow::bail!("not an absolute URL: {url}");
        };
        anyhow::ensure!(
            matches!(scheme.as_str(), "http" | "https"),
            "not an http or https URL: {url}"
        );
        let origin = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()?;
        let root = PathAndQuery::from_static("/");
        let path = Uri::from(uri.path_and_query().cloned().unwrap_or(root));
        Ok(Target {
            origin,
            path,
            host: HeaderValue::from_str(authority.as_str())?,
            connector: connector.clone(),
            idle: Mutex::default(),
            opened: AtomicU64::new(0),
        })
    }

    /// Posts a JSON `body`, with `authorization` when given, and answers the response's
    /// head. A connection that was idle and turns out closed by the server (it never took
    /// the request) is dropped and the request goes on another.
    pub async fn post(
        &self,
        authorization: Option<&HeaderValue>,
        body: Bytes,
    ) -> Result<Response<'_>, Transport> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.path.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, self.host.clone());
        headers.insert(CONTENT_TYPE, JSON);
        if let Some(authorization) = authorization {
            headers.insert(AUTHORIZATION, authorization.clone());
        }
        loop {
            let (mut sender, reused) = match self.checkout() {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            if sender.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err(Transport::Connect);
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let status = response.status();
                    let body = response.into_body();
                    return Ok(Response { status, body, sender: Some(sender), target: self });
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(Transport::Other),
                },
            }
        }
    }

    /// Connections opened so far: as many as requests were in flight at once, more when
    /// the server closed some (a gateway that restarts, or a burst after a stall).
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// The open idle connection used last. One that waited too long is closed, and so
    /// are all below it, which waited longer.
    fn checkout(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().expect("never poisoned");
        while let Some(top) = idle.pop() {
            if top.since.elapsed() >= IDLE_MAX {
                let stale = std::mem::take(&mut *idle);
                drop(idle);
                drop(stale);
                return None;
            }
            if !top.sender.is_closed() {
                return Some(top.sender);
            }
        }
        None
    }

    fn checkin(&self, sender: SendRequest<Full<Bytes>>) {
        let idle = Idle { sender, since: Instant::now() };
        self.idle.lock().expect("never poisoned").push(idle);
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Transport> {
        self.opened.fetch_add(1, Ordering::Relaxed);
        let mut connector = self.connector.0.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|_| Transport::Connect)?;
        let stream = connector.call(self.origin.clone()).await.map_err(|_| Transport::Connect)?;
        let (sender, connection) =
            http1::handshake(stream).await.map_err(|_| Transport::Connect)?;
        // Ends when the server closes the connection, or when its sender is dropped.
        tokio::spawn(connection);
        Ok(sender)
    }
}

/// A response's status and its body, read a chunk at a time.
pub struct Response<'a> {
    pub status: StatusCode,
    body: Incoming,
    /// Its connection, given back when the body has ended.
    sender: Option<SendRequest<Full<Bytes>>>,
    target: &'a Target,
}

impl Response<'_> {
    /// The body's next chunk; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, Transport> {
        while let Some(frame) = self.body.frame().await {
            match frame.map_err(|_| Transport::Body)?.into_data() {
                Ok(data) => return Ok(Some(data)),
                Err(_trailers) => continue,
            }
        }
        if let Some(sender) = self.sender.take() {
            self.target.checkin(sender);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::net::TcpListener;

    /// A server on a free port that answers each request with its path. On `/close` it
    /// answers with `Connection: close`; to the body `slow` it answers after 100 ms and
    /// notes the connection's index.
    struct Server {
        base: String,
        /// Each accepted connection's task, in the order they came.
        connections: Mutex<Vec<tokio::task::AbortHandle>>,
        slow: AtomicUsize,
    }

    impl Server {
        async fn start() -> Arc<Server> {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let server = Arc::new(Server { base, connections: Mutex::default(), slow: 0.into() });
            let shared = server.clone();
            tokio::spawn(async move {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let mut connections = shared.connections.lock().unwrap();
                    let (idx, server) = (connections.len(), shared.clone());
                    let service = service_fn(move |request: Request<Incoming>| {
                        let server = server.clone();
                        async move {
                            let path = request.uri().path().to_owned();
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            if body == "slow" {
                                server.slow.store(idx, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            let close = path == "/close";
                            let mut response = hyper::Response::new(Full::new(Bytes::from(path)));
                            if close {
                                let close = HeaderValue::from_static("close");
                                response.headers_mut().insert(http::header::CONNECTION, close);
                            }
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    connections.push(tokio::spawn(connection).abort_handle());
                }
            });
            server
        }

        fn accepted(&self) -> usize {
            self.connections.lock().unwrap().len()
        }

        fn target(&self, path: &str, connector: &Connector) -> Target {
            Target::new(&format!("{}{path}", self.base), connector).unwrap()
        }
    }

    async fn post(target: &Target) -> Result<(StatusCode, Vec<u8>), Transport> {
        post_body(target, "{}").await
    }

    async fn post_body(
        target: &Target,
        body: &'static str,
    ) -> Result<(StatusCode, Vec<u8>), Transport> {
        let mut response = target.post(None, Bytes::from_static(body.as_bytes())).await?;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            body.extend_from_slice(&chunk);
        }
        Ok((response.status, body))
    }

    #[tokio::test]
    async fn requests_share_a_connection_until_the_server_closes_it() {
        let server = Server::start().await;
        let connector = Connector::new().unwrap();
        let (target, close) =
            (server.target("/v1/x", &connector), server.target("/close", &connector));
        for _ in 0..3 {
            assert_eq!(post(&target).await.unwrap(), (StatusCode::OK, b"/v1/x".to_vec()));
        }
        assert_eq!(server.accepted(), 1, "one keep-alive connection");
        assert_eq!(target.connections_opened(), 1);
        // A connection the server closed after its answer is never used again.
        assert_eq!(post(&close).await.unwrap().1, b"/close");
        assert_eq!(post(&close).await.unwrap().1, b"/close");
        assert_eq!(server.accepted(), 3);
        assert_eq!(close.connections_opened(), 2);
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_skipped_for_an_open_one() {
        let server = Server::start().await;
        let target = server.target("/v1/x", &Connector::new().unwrap());
        // Two connections; the slow request's ends last and is on top of the idle ones.
        let (fast, slow) = tokio::join!(post_body(&target, "fast"), post_body(&target, "slow"));
        let _ = (fast.unwrap(), slow.unwrap());
        assert_eq!(server.accepted(), 2);
        // The server drops the slow request's connection, idle on top.
        server.connections.lock().unwrap()[server.slow.load(Ordering::SeqCst)].abort();
        let top_closed = || target.idle.lock().unwrap().last().unwrap().sender.is_closed();
        while !top_closed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(post(&target).await.unwrap().1, b"/v1/x");
        assert_eq!(server.accepted(), 2, "the other idle connection took it");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/x", listener.local_addr().unwrap());
        drop(listener);
        let target = Target::new(&url, &Connector::new().unwrap()).unwrap();
        assert_eq!(post(&target).await.unwrap_err(), Transport::Connect);
    }

    #[test]
    fn a_target_splits_its_url_into_origin_path_and_host() {
        let connector = Connector::new().unwrap();
        let target = Target::new("https://gw.example:8443/v1/api/chat/completions", &connector);
        let target = target.unwrap();
        assert_eq!(target.origin, "https://gw.example:8443/");
        assert_eq!(target.path, "/v1/api/chat/completions");
        assert_eq!(target.host, "gw.example:8443");
        for bad in ["/v1/api", "ftp://host/v1", "http://"] {
            assert!(Target::new(bad, &connector).is_err(), "{bad}");
        }
    }
}
