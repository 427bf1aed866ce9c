//! Gateways over the simulated network: the production [`LedgerClient`] dials each node's
//! address through [`dialer`], whose connections are in-memory byte streams to the
//! node's production ledger API ([`serve`]: tonic's server of `LedgerRpcServer` over the
//! node's own `LedgerNode`), so a gateway's calls run the client's and the service's
//! whole code, gRPC and HTTP/2 included, and meet the nemesis's faults.
//!
//! A gateway sits on one node's side of the partitions (its `home`): it reaches node `n`
//! when the links between `home` and `n` are not cut. Connecting needs both directions
//! and a live process; an established connection carries each chunk of bytes after the
//! weather's delay (a lost packet costs a retransmission), holds its bytes while the
//! link is cut or the node paused (as TCP would), and is reset when the node's process
//! ends (a crash, a restart): whatever the process had not sent is lost.

use super::network::{GatewayLink, Net};
use crate::client::Dialer;
use crate::incarnation::Identity;
use crate::node::{self, LedgerNode};
use crate::service::LedgerRpcServer;
use crate::types::NodeId;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::codegen::http::{Request, Uri};
use tower_service::Service;

/// The port every simulated node's address names.
const PORT: u16 = 7000;
/// Connections a node's ledger API has not taken yet, at most (a listen backlog); beyond
/// it a connection is refused.
const BACKLOG_MAX: usize = 64;
/// Bytes an in-memory stream buffers each way, and a relay moves at once.
const STREAM_BUFFER_BYTES: usize = 64 * 1024;

/// Node `id`'s address: what its membership records, its topology and `NotLeader` hints
/// name, and gateways dial.
pub fn addr_of(id: NodeId) -> String {
    format!("node-{id}.sim:{PORT}")
}

/// The node an address dialed names.
fn node_of(uri: &Uri) -> Option<NodeId> {
    let host = uri.host()?;
    host.strip_prefix("node-")?.strip_suffix(".sim")?.parse().ok()
}

/// Serves the ledger API of `node` (a node of the simulation, of data directory
/// `identity`) on the connections that arrive through the returned door, until the
/// returned task is aborted (the node crashed). Each connection is served by hyper's
/// HTTP/2 server as tonic's would serve it, but without the `date` header, whose value
/// (real time) would change the size of replies, HPACK-encoded afresh each second, and
/// so the run with its speed.
pub fn serve(
    node: &LedgerNode,
    identity: Identity,
) -> (mpsc::Sender<DuplexStream>, JoinHandle<()>) {
    let (door, mut arrivals) = mpsc::channel::<DuplexStream>(BACKLOG_MAX);
    let service = node::ledger_service(LedgerRpcServer::new(node.downgrade(), identity, None));
    let task = tokio::spawn(async move {
        while let Some(stream) = arrivals.recv().await {
            let service = service.clone();
            let calls = hyper::service::service_fn(move |request: Request<Incoming>| {
                let mut service = service.clone();
                service.call(request.map(tonic::body::Body::new))
            });
            let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            http2.timer(TokioTimer::new()).auto_date_header(false);
            let connection = http2.serve_connection(TokioIo::new(stream), calls);
            // A connection that fails (reset by a crash or a partition) just ends.
            tokio::spawn(async move {
                let _ = connection.await;
            });
        }
    });
    (door, task)
}

/// How a gateway on `home`'s side of the partitions dials the nodes: the
/// [`LedgerClient`](crate::LedgerClient)'s channels, over in-memory connections.
pub fn dialer(net: Arc<Net>, home: NodeId) -> Dialer {
    Arc::new(move |endpoint| {
        endpoint.connect_with_connector_lazy(Connector { net: Arc::clone(&net), home })
    })
}

/// A gateway's connector: a tower service from the dialed address to a connection.
#[derive(Clone)]
struct Connector {
    net: Arc<Net>,
    home: NodeId,
}

type Connecting = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<DuplexStream>>> + Send>>;

impl Service<Uri> for Connector {
    type Response = TokioIo<DuplexStream>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Connecting {
        let (net, home) = (Arc::clone(&self.net), self.home);
        Box::pin(async move {
            let refused = |why: &str| {
                std::io::Error::new(std::io::ErrorKind::ConnectionRefused, why.to_owned())
            };
            let target = node_of(&uri).ok_or_else(|| refused("not a simulated node's address"))?;
            // The handshake's round trip.
            tokio::time::sleep(net.gateway_delay(0) + net.gateway_delay(0)).await;
            let (incarnation, door) =
                net.gateway_door(home, target).ok_or_else(|| refused("node down or cut off"))?;
            let (gateway_end, near) = tokio::io::duplex(STREAM_BUFFER_BYTES);
            let (far, node_end) = tokio::io::duplex(STREAM_BUFFER_BYTES);
            door.try_send(node_end).map_err(|_| refused("node going down or its backlog full"))?;
            let link = Link { net, home, target, incarnation };
            tokio::spawn(link.carry(near, far));
            Ok(TokioIo::new(gateway_end))
        })
    }
}

/// One gateway connection's path: between a gateway on `home`'s side and process
/// `incarnation` of node `target`.
#[derive(Clone)]
struct Link {
    net: Arc<Net>,
    home: NodeId,
    target: NodeId,
    incarnation: u64,
}

impl Link {
    /// Carries bytes both ways between the gateway's end (`near`) and the node's (`far`)
    /// until either closes or the node's process ends; then both ends close.
    async fn carry(self, near: DuplexStream, far: DuplexStream) {
        let (from_gateway, to_gateway) = tokio::io::split(near);
        let (from_node, to_node) = tokio::io::split(far);
        tokio::select! {
            biased;
            () = self.pump(true, from_gateway, to_node) => {}
            () = self.pump(false, from_node, to_gateway) => {}
        }
    }

    /// Moves chunks one way, in order, each after its delay and once the link lets it
    /// through.
    async fn pump(
        &self,
        towards_target: bool,
        mut from: ReadHalf<DuplexStream>,
        mut to: WriteHalf<DuplexStream>,
    ) {
        let mut chunk = vec![0u8; STREAM_BUFFER_BYTES];
        loop {
            let n = tokio::select! {
                biased;
                () = self.gone() => return,
                read = from.read(&mut chunk) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                },
            };
            let delay = self.net.gateway_delay(n);
            if !delay.is_zero() {
                tokio::select! {
                    biased;
                    () = self.gone() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
            if !self.let_through(towards_target).await {
                return;
            }
            tokio::select! {
                biased;
                () = self.gone() => return,
                written = to.write_all(&chunk[..n]) => if written.is_err() { return },
            }
        }
    }

    /// Waits until the node's process is gone.
    async fn gone(&self) {
        loop {
            let mut change = std::pin::pin!(self.net.next_change());
            change.as_mut().enable();
            let link = self.net.gateway_link(self.home, self.target, self.incarnation, true);
            if link == GatewayLink::Gone {
                return;
            }
            change.await;
        }
    }

    /// Waits until bytes may cross towards the node (or back); false if its process is
    /// gone.
    async fn let_through(&self, towards_target: bool) -> bool {
        loop {
            let mut change = std::pin::pin!(self.net.next_change());
            change.as_mut().enable();
            let until = match self.net.gateway_link(
                self.home,
                self.target,
                self.incarnation,
                towards_target,
            ) {
                GatewayLink::Gone => return false,
                GatewayLink::Open => return true,
                GatewayLink::Held(until) => until,
            };
            let resumed = async {
                match until {
                    Some(until) => tokio::time::sleep_until(until).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = change => {}
                () = resumed => {}
            }
        }
    }
}
