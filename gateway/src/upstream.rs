//! The HTTP client towards providers: hyper's pooled, keep-alive client (`hyper-util`'s
//! legacy client) over rustls with the Mozilla roots, HTTP/2 or HTTP/1.1 as the host
//! picks by ALPN (plain `http://` hosts, such as the mocks, speak HTTP/1.1), and the four
//! timeouts of an exchange enforced explicitly, so each failure says which limit it hit.
//! Exchanges are spread over lanes, each a client of its own pool, at most
//! [`LANE_EXCHANGES_MAX`] at a time on one: hyper's client keeps one HTTP/2 connection
//! per host and queues whatever exceeds the host's concurrent-stream limit on it.
//! An `https` host's protocol is learned from the first connection to it (ALPN): while
//! it is unknown, one exchange connects and the others wait for what it learns; a host
//! that speaks HTTP/2 is then reached through each lane's HTTP/2 client, which opens one
//! connection and lets the exchanges that come meanwhile wait for it, where the client
//! that negotiates by ALPN opened a connection for each of them (a burst of 1,000 streams
//! to an idle gateway made up to 386 TLS handshakes with the mock, for 10 connections kept).
//! No redirects are followed, no proxy from the environment is used, nothing is
//! decompressed: providers answer API calls directly.

use crate::config::UpstreamTimeouts;
use crate::providers::{Adapter, UpstreamError, UpstreamRequest};
use crate::respond::Gathered;
use anyhow::Context as _;
use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT};
use http::uri::Scheme;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::rt;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tower_service::Service;

/// The body of a 2xx upstream answer, read with [`next_chunk`] or [`Upstream::body`].
/// Dropping it mid-body cancels the exchange (the connection closes) and frees its place
/// on its lane. Its head is dropped as it arrives: the head's header values share the
/// connection's first read buffer, which a stream would otherwise keep allocated, beside
/// the one hyper reads into next, for as long as it lasts (docs/benchmarks.md, "Memory
/// per stream").
pub struct Body {
    incoming: Incoming,
    _place: LanePlace,
}

/// Largest complete (non-streamed) response the gateway buffers: a maximal completion
/// of today's models is a few MiB of JSON; 64 MiB leaves room for inline images.
pub const RESPONSE_BYTES_MAX: usize = 64 << 20;
/// Largest error body read from a failing upstream (the adapters' bound, which they
/// also apply to the error events of a stream).
pub use crate::providers::ERROR_BYTES_MAX;
/// Exchanges in flight on one lane before the next lane takes more. RFC 9113 recommends
/// that a host allow at least 100 concurrent streams on a connection; hyper's client
/// keeps one HTTP/2 connection per host and queues an exchange beyond the host's limit
/// instead of opening another (hyperium/hyper#3623): 1,000 streams to a host allowing
/// 200 waited 9.2 s (p50) for their first token (docs/benchmarks.md, session 9).
pub const LANE_EXCHANGES_MAX: usize = 100;
/// Lanes: 3,200 exchanges in flight before a lane takes more than its share (then the
/// least busy one does). An HTTP/1.1 host gets a connection per exchange either way.
const LANES: usize = 32;
/// Idle connections kept per provider host on a lane, as many as it carries at once:
/// enough for bursts without re-handshaking TLS; idle ones close after
/// `POOL_IDLE_TIMEOUT`.
const POOL_IDLE_PER_HOST_MAX: usize = LANE_EXCHANGES_MAX;
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// TCP keepalive probes on upstream connections (reqwest's defaults, which the gateway
/// used before): a host that vanished without closing is noticed in about a minute.
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);
const TCP_KEEPALIVE_RETRIES: u32 = 3;

/// Where reqwest, the client before this one, found a proxy; set, they are ignored
/// (with a warning at start).
const PROXY_VARIABLES: [&str; 6] =
    ["ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"];

/// When an attempt must have seen its response head (and, for streams, its first
/// event), when the whole request must be over, and the longest gap between chunks.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub first_byte: Instant,
    pub total: Instant,
    pub idle: Duration,
}

impl Deadlines {
    /// Deadlines of one attempt starting now, inside the request's `total` deadline.
    pub fn attempt(timeouts: &UpstreamTimeouts, total: Instant) -> Deadlines {
        let first_byte = (Instant::now() + timeouts.first_byte).min(total);
        Deadlines { first_byte, total, idle: timeouts.idle }
    }
}

pub struct Upstream {
    lanes: Box<[Lane]>,
    hosts: Arc<Hosts>,
    timeouts: UpstreamTimeouts,
}

type HttpClient = Client<Connector, Full<Bytes>>;

/// Two clients with a connection pool each, and how many exchanges the lane carries now.
struct Lane {
    /// HTTP/1.1 or HTTP/2 as the host picks by ALPN (plain `http://`: HTTP/1.1): opens a
    /// connection for every exchange that finds no idle one, also while another
    /// connection to the same host is being opened.
    by_alpn: HttpClient,
    /// HTTP/2 only, for hosts known to speak it: while a connection to a host is being
    /// opened, the other exchanges to it wait for it and share it.
    http2: HttpClient,
    in_flight: Arc<AtomicUsize>,
}

/// An exchange's place on a lane, given back when dropped.
struct LanePlace(Arc<AtomicUsize>);

impl Drop for LanePlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstream {
    /// A client that trusts the Mozilla roots and the CA certificates of `ca_file` (PEM;
    /// `upstream_ca_file` in the configuration).
    pub fn try_new(timeouts: UpstreamTimeouts, ca_file: Option<&Path>) -> anyhow::Result<Upstream> {
        for variable in PROXY_VARIABLES {
            if std::env::var_os(variable).is_some() {
                tracing::warn!(variable, "ignored: providers are called directly, never by proxy");
            }
        }
        let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        if let Some(path) = ca_file {
            let shown = path.display();
            let mut added = 0;
            for certificate in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading the upstream CA file {shown}"))?
            {
                let certificate =
                    certificate.with_context(|| format!("a certificate of {shown}"))?;
                roots.add(certificate).with_context(|| format!("a certificate of {shown}"))?;
                added += 1;
            }
            anyhow::ensure!(added > 0, "the upstream CA file {shown} holds no certificate");
            tracing::info!(file = %shown, certificates = added, "providers' CAs trusted besides the Mozilla roots");
        }
        Ok(Upstream::trusting(timeouts, roots)?)
    }

    /// A client that trusts the certificates `roots` names (the Mozilla roots, or a
    /// test's own).
    fn trusting(
        timeouts: UpstreamTimeouts,
        roots: RootCertStore,
    ) -> Result<Upstream, rustls::Error> {
        let tls = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false); // The TLS layer takes `https` URIs.
        tcp.set_nodelay(true);
        tcp.set_keepalive(Some(TCP_KEEPALIVE));
        tcp.set_keepalive_interval(Some(TCP_KEEPALIVE));
        tcp.set_keepalive_retries(Some(TCP_KEEPALIVE_RETRIES));
        let tls = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(POOL_IDLE_PER_HOST_MAX)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT);
        let hosts = Arc::new(Hosts::default());
        let connector = Connector { tls, timeout: timeouts.connect, hosts: Arc::clone(&hosts) };
        let mut http2 = builder.clone();
        http2.http2_only(true);
        let lanes = (0..LANES)
            .map(|_| Lane {
                by_alpn: builder.build(connector.clone()),
                http2: http2.build(connector.clone()),
                in_flight: Arc::default(),
            })
            .collect();
        Ok(Upstream { lanes, hosts, timeouts })
    }

    /// A place on the first lane with room, else on the least busy one.
    fn place(&self) -> (&Lane, LanePlace) {
        let taken = |lane: &Lane| {
            let more = |n: usize| (n < LANE_EXCHANGES_MAX).then_some(n + 1);
            lane.in_flight.fetch_update(Ordering::Relaxed, Ordering::Relaxed, more).is_ok()
        };
        let lane = match self.lanes.iter().find(|lane| taken(lane)) {
            Some(lane) => lane,
            None => {
                let lane = (self.lanes.iter())
                    .min_by_key(|lane| lane.in_flight.load(Ordering::Relaxed))
                    .expect("LANES > 0");
                lane.in_flight.fetch_add(1, Ordering::Relaxed);
                lane
            }
        };
        (lane, LanePlace(Arc::clone(&lane.in_flight)))
    }

    pub fn timeouts(&self) -> &UpstreamTimeouts {
        &self.timeouts
    }

    /// Sends `request` and waits for a 2xx response head; returns its body. A non-2xx
    /// answer is read (bounded) and classified by the adapter.
    pub async fn send(
        &self,
        adapter: &dyn Adapter,
        request: UpstreamRequest,
        deadlines: &Deadlines,
    ) -> Result<Body, UpstreamError> {
        let provider = adapter.provider();
        // `http::Uri` takes the adapter's text as it is (no copy, no normalisation), a
        // few hundred instructions; what is invalid fails here, before any connection.
        let uri = Uri::try_from(request.url).map_err(|error| {
            let message = format!("transport error: invalid URL: {error}");
            failure(provider, StatusCode::BAD_GATEWAY, &message, true)
        })?;
        let mut sending = Request::new(Full::new(request.body));
        *sending.method_mut() = Method::POST;
        *sending.uri_mut() = uri;
        *sending.headers_mut() = request.headers;
        // What reqwest sent by default, kept: a host may answer a request without one
        // differently.
        sending.headers_mut().entry(ACCEPT).or_insert(HeaderValue::from_static("*/*"));
        let (lane, place) = self.place();
        let client = match self.hosts.protocol(sending.uri(), deadlines.first_byte).await {
            Protocol::Http2 => &lane.http2,
            Protocol::Unknown | Protocol::Http1 => &lane.by_alpn,
        };
        let exchange = client.request(sending);
        let response = match tokio::time::timeout_at(deadlines.first_byte, exchange).await {
            Err(_) => {
                return Err(timeout(provider, "no response head before the first-byte deadline"))
            }
            Ok(Err(error)) => return Err(transport(provider, &error)),
            Ok(Ok(response)) => response,
        };
        let (head, incoming) = response.into_parts();
        let mut body = Body { incoming, _place: place };
        if head.status.is_success() {
            return Ok(body);
        }
        // A truncated or stalled error body still classifies by status.
        let body =
            read_bounded(&mut body, deadlines, ERROR_BYTES_MAX, provider).await.unwrap_or_default();
        Err(adapter.error(head.status, &head.headers, &body))
    }

    /// Reads a whole response body under the idle and total deadlines.
    pub async fn body(
        &self,
        body: &mut Body,
        deadlines: &Deadlines,
        provider: &str,
    ) -> Result<Bytes, UpstreamError> {
        read_bounded(body, deadlines, RESPONSE_BYTES_MAX, provider).await
    }
}

/// An `https` host's protocol as its latest connection negotiated it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Protocol {
    Unknown = 0,
    Http1 = 1,
    Http2 = 2,
}

/// What the connections opened so far told about each `https` host (by authority: the
/// hosts of the configured providers, so a handful).
#[derive(Default)]
struct Hosts(RwLock<HashMap<Box<str>, Arc<Host>>>);

#[derive(Default)]
struct Host {
    /// A [`Protocol`].
    protocol: AtomicU8,
    /// An exchange is opening a connection to learn the protocol; the others wait.
    learning: AtomicBool,
    /// Woken when a connection told the protocol, or failed to.
    told: Notify,
}

impl Hosts {
    fn host(&self, authority: &str) -> Arc<Host> {
        if let Some(host) = self.0.read().expect("hosts lock").get(authority) {
            return Arc::clone(host);
        }
        let mut hosts = self.0.write().expect("hosts lock");
        Arc::clone(hosts.entry(authority.into()).or_default())
    }

    /// The protocol of the host `uri` names, for an exchange to pick its client. While
    /// an `https` host's is unknown, the first exchange goes on to learn it (through the
    /// client that negotiates by ALPN) and the others wait until its connection tells,
    /// or fails, or `until`. Plain `http://` hosts are never asked (HTTP/1.1).
    async fn protocol(&self, uri: &Uri, until: Instant) -> Protocol {
        let Some(authority) = uri.authority().filter(|_| uri.scheme() == Some(&Scheme::HTTPS))
        else {
            return Protocol::Http1;
        };
        // The common case, a host already learned, under the read lock alone.
        let learned =
            self.0.read().expect("hosts lock").get(authority.as_str()).map(|host| host.protocol());
        if let Some(known @ (Protocol::Http1 | Protocol::Http2)) = learned {
            return known;
        }
        let host = self.host(authority.as_str());
        let known = host.protocol();
        if known != Protocol::Unknown || !host.learning.swap(true, Ordering::AcqRel) {
            return known;
        }
        let told = host.told.notified();
        tokio::pin!(told);
        told.as_mut().enable();
        if host.protocol() == Protocol::Unknown && host.learning.load(Ordering::Acquire) {
            let _ = tokio::time::timeout_at(until, told).await;
        }
        // Unknown still: the learning connection failed (or is slow), and this exchange
        // connects on its own, as any would without the learning.
        host.protocol()
    }

    /// A connection to `authority` negotiated `protocol`, or (`None`) failed.
    fn tell(&self, authority: &str, protocol: Option<Protocol>) {
        let host = self.host(authority);
        if let Some(protocol) = protocol {
            host.protocol.store(protocol as u8, Ordering::Release);
        }
        host.learning.store(false, Ordering::Release);
        host.told.notify_waiters();
    }
}

impl Host {
    fn protocol(&self) -> Protocol {
        match self.protocol.load(Ordering::Acquire) {
            1 => Protocol::Http1,
            2 => Protocol::Http2,
            _ => Protocol::Unknown,
        }
    }
}

/// Opens upstream connections: TCP, then TLS for `https` (ALPN offering h2 and
/// http/1.1), the whole of it bounded by the connect timeout; tells [`Hosts`] what each
/// `https` connection negotiated, or that it failed.
#[derive(Clone)]
struct Connector {
    tls: HttpsConnector<HttpConnector>,
    timeout: Duration,
    hosts: Arc<Hosts>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<Uri> for Connector {
    type Response = Transport;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Transport, BoxError>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tls.poll_ready(context)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let told = (uri.scheme() == Some(&Scheme::HTTPS))
            .then(|| uri.authority().map(|authority| Told::new(&self.hosts, authority.as_str())))
            .flatten();
        let connecting = self.tls.call(uri);
        let limit = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(Ok(MaybeHttpsStream::Http(tcp))) => Ok(Transport::Plain(tcp)),
                Ok(Ok(tls)) => {
                    if let Some(told) = told {
                        told.negotiated(tls.connected().is_negotiated_h2());
                    }
                    Ok(Transport::Tls(Box::new(tls)))
                }
                Ok(Err(error)) => Err(error),
                Err(_) => Err("connect timed out".into()),
            }
        })
    }
}

/// Tells [`Hosts`] what an `https` connection negotiated; dropped untold (the
/// connection failed, timed out or was given up), that it failed.
struct Told {
    hosts: Arc<Hosts>,
    authority: Box<str>,
    told: bool,
}

impl Told {
    fn new(hosts: &Arc<Hosts>, authority: &str) -> Told {
        Told { hosts: Arc::clone(hosts), authority: authority.into(), told: false }
    }

    fn negotiated(mut self, http2: bool) {
        let protocol = if http2 { Protocol::Http2 } else { Protocol::Http1 };
        self.hosts.tell(&self.authority, Some(protocol));
        self.told = true;
    }
}

impl Drop for Told {
    fn drop(&mut self) {
        if !self.told {
            self.hosts.tell(&self.authority, None);
        }
    }
}

/// An upstream connection's byte stream. A TLS session's state (rustls's, about a
/// kilobyte) is boxed: inline, every connection's task would keep room for it, plain
/// ones included (docs/benchmarks.md, "Memory per stream").
enum Transport {
    Plain(TokioIo<TcpStream>),
    Tls(Box<MaybeHttpsStream<TokioIo<TcpStream>>>),
}

/// What a [`Transport`] is, either way.
trait Io: rt::Read + rt::Write + Connection + Unpin {}
impl<T: rt::Read + rt::Write + Connection + Unpin> Io for T {}

impl Transport {
    fn io(&self) -> &dyn Io {
        match self {
            Transport::Plain(io) => io,
            Transport::Tls(io) => &**io,
        }
    }

    fn pinned(self: Pin<&mut Self>) -> Pin<&mut dyn Io> {
        match self.get_mut() {
            Transport::Plain(io) => Pin::new(io),
            Transport::Tls(io) => Pin::new(&mut **io),
        }
    }
}

impl Connection for Transport {
    fn connected(&self) -> Connected {
        self.io().connected()
    }
}

impl rt::Read for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.pinned().poll_read(context, buf)
    }
}

impl rt::Write for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.pinned().poll_write(context, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.pinned().poll_write_vectored(context, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.pinned().poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.pinned().poll_shutdown(context)
    }
}

/// The next body chunk, or `None` at the end. Fails when the gap since the previous
/// chunk exceeds the idle timeout or the request's total deadline passes.
pub async fn next_chunk(
    body: &mut Body,
    deadlines: &Deadlines,
    provider: &str,
) -> Result<Option<Bytes>, UpstreamError> {
    let idle_deadline = (Instant::now() + deadlines.idle).min(deadlines.total);
    let reading = async {
        while let Some(frame) = body.incoming.frame().await {
            // Trailers carry nothing the gateway relays.
            if let Ok(data) = frame?.into_data() {
                return Ok(Some(data));
            }
        }
        Ok::<_, hyper::Error>(None)
    };
    match tokio::time::timeout_at(idle_deadline, reading).await {
        Ok(Ok(chunk)) => Ok(chunk),
        Ok(Err(error)) => Err(transport(provider, &error)),
        Err(_) if idle_deadline == deadlines.total => {
            Err(timeout(provider, "the request's total timeout passed"))
        }
        Err(_) => Err(timeout(provider, "the stream stalled past the idle timeout")),
    }
}

async fn read_bounded(
    body: &mut Body,
    deadlines: &Deadlines,
    limit: usize,
    provider: &str,
) -> Result<Bytes, UpstreamError> {
    let mut gathered = Gathered::default();
    while let Some(chunk) = next_chunk(body, deadlines, provider).await? {
        if gathered.len() + chunk.len() > limit {
            return Err(failure(provider, StatusCode::BAD_GATEWAY, "response too large", true));
        }
        gathered.push(chunk);
    }
    Ok(gathered.into_bytes())
}

fn timeout(provider: &str, message: &str) -> UpstreamError {
    failure(provider, StatusCode::GATEWAY_TIMEOUT, message, true)
}

fn transport(provider: &str, error: &(dyn std::error::Error + 'static)) -> UpstreamError {
    // The error and its causes, none of which names the URL (some hosts make it carry a
    // credential in its query): e.g. "client error (Connect): tcp connect error:
    // Connection refused (os error 111)".
    let mut message = format!("transport error: {error}");
    let mut cause = error.source();
    while let Some(error) = cause {
        let _ = write!(message, ": {error}");
        cause = error.source();
    }
    failure(provider, StatusCode::BAD_GATEWAY, &message, true)
}

pub fn failure(provider: &str, status: StatusCode, message: &str, fallback: bool) -> UpstreamError {
    UpstreamError {
        provider: provider.to_string(),
        status,
        message: message.to_string(),
        fallback,
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::openai::{OpenAiCompatible, Quirks};
    use http::HeaderMap;
    use tokio::net::TcpListener;

    const TIMEOUTS: UpstreamTimeouts = UpstreamTimeouts {
        connect: Duration::from_millis(200),
        first_byte: Duration::from_secs(30),
        idle: Duration::from_secs(30),
        total: Duration::from_secs(60),
    };

    async fn send(url: &str) -> UpstreamError {
        send_through(&Upstream::try_new(TIMEOUTS, None).unwrap(), url).await
    }

    async fn send_through(upstream: &Upstream, url: &str) -> UpstreamError {
        let adapter = OpenAiCompatible::new("p", Quirks::OPENAI);
        let request = UpstreamRequest {
            url: url.to_owned(),
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"{}"),
        };
        let deadlines = Deadlines::attempt(&TIMEOUTS, Instant::now() + TIMEOUTS.total);
        match upstream.send(&adapter, request, &deadlines).await {
            Ok(_) => panic!("{url} answered"),
            Err(error) => error,
        }
    }

    /// Exchanges that arrive together at a host of unknown protocol wait for the one
    /// connection that learns it; when that one fails, they do not wait longer.
    #[tokio::test]
    async fn the_connect_timeout_bounds_the_tls_handshake_too() {
        // A host that accepts TCP and never answers the TLS handshake.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepting = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let started = Instant::now();
        let upstream = Upstream::try_new(TIMEOUTS, None).unwrap();
        let url = format!("https://{address}/v1/chat/completions");
        let sends = (0..8).map(|_| send_through(&upstream, &url));
        let errors = futures_util::future::join_all(sends).await;
        accepting.abort();
        for error in errors {
            assert_eq!(error.status, StatusCode::BAD_GATEWAY, "{}", error.message);
            assert!(error.message.contains("connect timed out"), "{}", error.message);
            assert!(error.fallback);
        }
        assert!(started.elapsed() < TIMEOUTS.first_byte, "waited {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_refused_connection_names_its_cause_and_not_the_url() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let error = send(&format!("http://{address}/v1/chat/completions?key=secret")).await;
        assert_eq!(error.status, StatusCode::BAD_GATEWAY, "{}", error.message);
        assert!(error.message.starts_with("transport error: "), "{}", error.message);
        assert!(error.message.to_lowercase().contains("refused"), "{}", error.message);
        assert!(!error.message.contains("secret"), "{}", error.message);
        assert!(error.fallback);
    }

    /// An HTTPS host on 127.0.0.1 offering `alpn`, answering each request with the HTTP
    /// version it arrived in; and its self-signed certificate.
    async fn https_host(alpn: &[&[u8]]) -> (std::net::SocketAddr, rcgen::Certificate) {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![certified.cert.der().clone()], PrivateKeyDer::Pkcs8(key))
                .unwrap();
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let answer = hyper::service::service_fn(|request: Request<Incoming>| {
                        let version = Bytes::from(format!("{:?}", request.version()));
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                version,
                            )))
                        }
                    });
                    let server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let _ = server.serve_connection(io, answer).await;
                });
            }
        });
        (address, certified.cert)
    }

    /// What `upstream` reads from `https://{address}` (the host's HTTP version).
    async fn version_seen(upstream: &Upstream, address: std::net::SocketAddr) -> Bytes {
        let adapter = OpenAiCompatible::new("p", Quirks::OPENAI);
        let request = UpstreamRequest {
            url: format!("https://{address}/v1/chat/completions"),
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"{}"),
        };
        let deadlines = Deadlines::attempt(&TIMEOUTS, Instant::now() + TIMEOUTS.total);
        let mut body = upstream.send(&adapter, request, &deadlines).await.unwrap();
        upstream.body(&mut body, &deadlines, "p").await.unwrap()
    }

    #[tokio::test]
    async fn https_speaks_http2_when_the_host_offers_it_and_http1_otherwise() {
        let cases: [(&[&[u8]], http::Version); 2] = [
            (&[b"h2", b"http/1.1"], http::Version::HTTP_2),
            (&[b"http/1.1"], http::Version::HTTP_11),
        ];
        for (alpn, expected) in cases {
            let (address, certificate) = https_host(alpn).await;
            let mut roots = RootCertStore::empty();
            roots.add(certificate.der().clone()).unwrap();
            let upstream = Upstream::trusting(TIMEOUTS, roots).unwrap();
            assert_eq!(version_seen(&upstream, address).await, format!("{expected:?}"));
        }
    }

    #[tokio::test]
    async fn the_upstream_ca_file_is_trusted_besides_the_mozilla_roots() {
        let (address, certificate) = https_host(&[b"h2", b"http/1.1"]).await;
        let directory = tempfile::tempdir().unwrap();
        let ca_file = directory.path().join("ca.pem");
        std::fs::write(&ca_file, certificate.pem()).unwrap();
        let upstream = Upstream::try_new(TIMEOUTS, Some(&ca_file)).unwrap();
        assert_eq!(version_seen(&upstream, address).await, "HTTP/2.0");

        // Without it the host's certificate is refused.
        let error = send(&format!("https://{address}/v1/chat/completions")).await;
        assert!(error.message.contains("certificate"), "{}", error.message);
        // A file that is missing or holds no certificate stops the start.
        let empty = directory.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for path in [directory.path().join("missing.pem"), empty] {
            let error = Upstream::try_new(TIMEOUTS, Some(&path)).err().expect("refused");
            assert!(format!("{error:#}").contains(&*path.to_string_lossy()), "{error:#}");
        }
    }

    #[tokio::test]
    async fn an_invalid_url_fails_before_any_connection() {
        for url in ["http://bad host/v1", "/v1/chat/completions", "ftp://127.0.0.1/v1"] {
            let error = send(url).await;
            assert_eq!(error.status, StatusCode::BAD_GATEWAY, "{url}: {}", error.message);
            assert!(error.message.starts_with("transport error: "), "{url}: {}", error.message);
        }
    }
}
