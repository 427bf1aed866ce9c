//! Raft RPCs between ledger nodes over gRPC (tonic): the client side
//! ([`GrpcNetwork`], openraft's network factory, one per group) and the server side
//! ([`RaftRpcServer`], one per node, routing by group).
//!
//! The protobuf messages are envelopes around [`codec`] bytes (see `proto/raft.proto`): openraft's
//! types cross the wire unchanged and never leave this crate.
//!
//! A failed RPC is classified for openraft: a peer that cannot be reached (`Unavailable`)
//! is `Unreachable`, which backs off (at most [`RPC_BACKOFF_MAX`], well inside an election
//! timeout, so a peer back from a blip hears from its leader before it starts an
//! election); a deadline is a `Timeout`; anything else the peer or the transport refused
//! is a `Network` error; neither backs off. Each call carries its timeout as its
//! `grpc-timeout`, which tonic enforces on both sides (so a call to a silent peer ends
//! then too). What an AppendEntries carries and how long a snapshot chunk may take are
//! `sizing`'s.
//!
//! AppendEntries, what a leader sends most, go over one long-lived `AppendEntriesStream`
//! per replication connection instead (`call_stream.rs`): openraft sends them one at a
//! time, each waiting for the previous answer, so a stream carries a request, then its
//! answer, then the next. The sender bounds each exchange by its timeout; openraft drops a
//! call at its own timeout, and the stream goes with it. A peer without the stream (an
//! older version, during a rolling upgrade) gets unary calls. A node shutting down ends
//! the streams it serves ([`RaftRpcServer::close_streams`]).
//!
//! Every request is [`Stamped`] with the sender's and the target's incarnations, and the
//! server refuses (`FAILED_PRECONDITION`) one the target's incarnation may not take
//! ([`incarnation::admit`]); the sender sees a refusal as unreachable (that incarnation is
//! not there), so it backs off. [`identify`] asks a node who it is (`Identify`), before it
//! is added or a cluster is founded; [`found`] asks a founder to initialize a group it is
//! to lead first (`Found`, `founding.rs`); [`campaign`] asks the voter a leader hands its
//! group to to campaign (`Campaign`, `leadership.rs`).

use crate::call_stream::{self, CallStream, Closing, Exchange, Replies, Serve};
use crate::codec::{self, CodecError};
use crate::encoded::{self, EncodedEntries};
use crate::error::LedgerError;
use crate::founding::{self, FirstLeaders};
use crate::grpc::raft_service_client::RaftServiceClient;
use crate::grpc::raft_service_server::RaftService;
use crate::grpc::{RaftReply, RaftRequest};
use crate::incarnation::{self, Identified, Identity, Incarnation, Stamped};
use crate::leadership::{self, Order};
use crate::sizing::{self, AppendBudget};
use crate::tls::{self, TlsConfig};
use crate::types::{Member, NodeId, Raft, TypeConfig};
use crate::{ELECTION_TIMEOUT_MIN, RPC_BYTES_MAX};
use bytes::Bytes;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// Pause before the first retry to an unreachable peer; it doubles with each further
/// failure up to [`RPC_BACKOFF_MAX`], and is forgotten after a success.
pub const RPC_BACKOFF_FIRST: Duration = Duration::from_millis(10);
/// Longest pause between attempts to reach a peer: half the shortest election timeout
/// (openraft's default, 500 ms, exceeded it, so a follower back from a blip timed out and
/// deposed a healthy leader).
pub const RPC_BACKOFF_MAX: Duration = Duration::from_millis(75);
const _: () = assert!(RPC_BACKOFF_MAX.as_millis() * 2 <= ELECTION_TIMEOUT_MIN.as_millis());

/// Connects group `group`'s Raft instance to the same group on other nodes, over mutual
/// TLS when the cluster has a [`TlsConfig`].
pub struct GrpcNetwork {
    identity: Identity,
    group: u32,
    tls: Option<TlsConfig>,
    /// One channel per peer (its address as last given), which every client openraft makes
    /// for that peer shares. openraft 0.9 makes a client for each heartbeat round that
    /// confirms a linearizable read and for each vote, besides its replication streams: with
    /// a channel each, every linearizable read opened (and handshook TLS on) a connection
    /// per peer. A channel reconnects by itself after its connection failed.
    channels: HashMap<NodeId, (String, RaftServiceClient<Channel>)>,
    /// The encodings of the group's last entries, which its log keeps.
    encoded: Arc<EncodedEntries>,
}

impl GrpcNetwork {
    /// The network of the replica of `group` on the node of `identity`, sending the
    /// entries its log encoded in `encoded` as they were written.
    pub fn new(
        identity: Identity,
        group: u32,
        tls: Option<TlsConfig>,
        encoded: Arc<EncodedEntries>,
    ) -> GrpcNetwork {
        GrpcNetwork { identity, group, tls, channels: HashMap::new(), encoded }
    }

    /// The channel to `target` at `addr`: the one made before unless its address changed.
    /// Made lazily: a peer that is down costs nothing until an RPC.
    fn channel(
        &mut self,
        target: NodeId,
        addr: &str,
    ) -> Result<RaftServiceClient<Channel>, LedgerError> {
        if let Some((known, client)) = self.channels.get(&target) {
            if known == addr {
                return Ok(client.clone());
            }
        }
        let client = RaftServiceClient::new(tls::endpoint(addr, self.tls.as_ref())?.connect_lazy())
            .max_decoding_message_size(RPC_BYTES_MAX)
            .max_encoding_message_size(RPC_BYTES_MAX);
        self.channels.insert(target, (addr.to_owned(), client.clone()));
        Ok(client)
    }
}

pub struct GrpcConnection {
    identity: Identity,
    group: u32,
    target: NodeId,
    /// The incarnation of the target the membership records.
    target_incarnation: Incarnation,
    entries: AppendBudget,
    encoded: Arc<EncodedEntries>,
    /// An address that does not parse fails every RPC with that reason.
    client: Result<RaftServiceClient<Channel>, String>,
    /// The AppendEntries stream open to the target, if one is ([`GrpcConnection::append`]).
    stream: Option<AppendStream>,
    /// Whether the target has no `AppendEntriesStream` (a node of an older version, during a
    /// rolling upgrade): its AppendEntries then go as unary calls.
    unary_appends: bool,
}

/// An open `AppendEntriesStream`.
type AppendStream = CallStream<RaftRequest, RaftReply>;

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = GrpcConnection;

    /// Over the peer's shared channel: a peer that is down costs nothing until an RPC, which
    /// then fails as `Unreachable` and openraft backs off.
    async fn new_client(&mut self, target: NodeId, node: &Member) -> GrpcConnection {
        let client = (self.channel(target, &node.addr))
            .map_err(|e| format!("bad address {:?} of node {target}: {e}", node.addr));
        GrpcConnection {
            identity: self.identity,
            group: self.group,
            target,
            target_incarnation: node.incarnation,
            entries: AppendBudget::default(),
            encoded: Arc::clone(&self.encoded),
            client,
            stream: None,
            unary_appends: false,
        }
    }
}

#[derive(Clone, Copy)]
enum Rpc {
    AppendEntries,
    InstallSnapshot,
    Vote,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BadAddress(String);

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>>;

impl GrpcConnection {
    /// `rpc` stamped with the sender's and the target's incarnations.
    fn stamp<Q>(&self, rpc: Q) -> Stamped<Q> {
        Stamped {
            from: self.identity.node_id,
            from_incarnation: self.identity.incarnation,
            to_incarnation: self.target_incarnation,
            rpc,
        }
    }

    /// Sends `request`, failing with a `Timeout` after `timeout` (its `grpc-timeout`, which
    /// tonic enforces on both sides).
    async fn call<Q, T, E>(&mut self, rpc: Rpc, request: &Q, timeout: Duration) -> RpcResult<T, E>
    where
        Q: Serialize,
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = codec::encode(&self.stamp(request)).map_err(|e| network_error(&e))?;
        self.call_encoded(rpc, payload, timeout).await
    }

    /// Sends `payload`, a stamped request encoded, as [`GrpcConnection::call`] does.
    async fn call_encoded<T, E>(
        &mut self,
        rpc: Rpc,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> RpcResult<T, E>
    where
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut client = match &self.client {
            Ok(client) => client.clone(),
            Err(reason) => {
                return Err(RPCError::Unreachable(Unreachable::new(&BadAddress(reason.clone()))))
            }
        };
        let mut envelope =
            tonic::Request::new(RaftRequest { group: self.group, payload: payload.into() });
        envelope.set_timeout(timeout);
        let reply = match rpc {
            Rpc::AppendEntries => client.append_entries(envelope).await,
            Rpc::InstallSnapshot => client.install_snapshot(envelope).await,
            Rpc::Vote => client.vote(envelope).await,
        };
        let id = self.identity.node_id;
        let reply = reply.map_err(|status| classify(&status, rpc, id, self.target, timeout))?;
        let result: Result<T, RaftError<NodeId, E>> =
            codec::decode(&reply.into_inner().payload).map_err(|e| network_error(&e))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// Sends the AppendEntries `payload` over the connection's stream (opened first if
    /// none is), failing with a `Timeout` after `timeout`. A stream whose exchange failed,
    /// timed out or was given up is dropped, so a late reply can never be taken for the
    /// next request's; the next call opens another.
    async fn append(
        &mut self,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        if self.unary_appends {
            return self.call_encoded(Rpc::AppendEntries, payload, timeout).await;
        }
        let request = RaftRequest { group: self.group, payload: payload.into() };
        let client = match &self.client {
            Ok(client) => client,
            Err(reason) => {
                return Err(RPCError::Unreachable(Unreachable::new(&BadAddress(reason.clone()))))
            }
        };
        let open = || {
            let mut client = client.clone();
            CallStream::open(|outbound| async move { client.append_entries_stream(outbound).await })
        };
        let exchange = CallStream::exchange(&mut self.stream, request, open);
        let failure = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(reply)) => {
                let result: Result<_, RaftError<NodeId>> =
                    codec::decode(&reply.payload).map_err(|e| network_error(&e))?;
                return result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)));
            }
            Ok(Err(Exchange::Unimplemented(request))) => {
                self.unary_appends = true;
                let payload = request.payload.into();
                return self.call_encoded(Rpc::AppendEntries, payload, timeout).await;
            }
            Ok(Err(Exchange::Failed(status))) => status,
            Err(_elapsed) => tonic::Status::deadline_exceeded("no answer on the stream in time"),
        };
        Err(classify(&failure, Rpc::AppendEntries, self.identity.node_id, self.target, timeout))
    }
}

/// What a gRPC failure means to openraft (see the module doc).
fn classify<E: std::error::Error>(
    status: &tonic::Status,
    rpc: Rpc,
    id: NodeId,
    target: NodeId,
    timeout: Duration,
) -> RPCError<NodeId, Member, RaftError<NodeId, E>> {
    match status.code() {
        // A refused incarnation is as good as absent, and retrying at once cannot help.
        tonic::Code::Unavailable | tonic::Code::FailedPrecondition => {
            RPCError::Unreachable(Unreachable::new(status))
        }
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            let action = match rpc {
                Rpc::AppendEntries => RPCTypes::AppendEntries,
                Rpc::InstallSnapshot => RPCTypes::InstallSnapshot,
                Rpc::Vote => RPCTypes::Vote,
            };
            RPCError::Timeout(Timeout { action, id, target, timeout })
        }
        _ => network_error(status),
    }
}

fn network_error<E: std::error::Error + 'static, F: std::error::Error>(
    e: &E,
) -> RPCError<NodeId, Member, RaftError<NodeId, F>> {
    RPCError::Network(NetworkError::new(e))
}

impl RaftNetwork<TypeConfig> for GrpcConnection {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let sending = self.entries.start(&mut rpc, &self.encoded);
        let payload = self.encoded.encode_append_entries(&self.stamp(&rpc));
        let payload = payload.map_err(|e| network_error(&e))?;
        let result = self.append(payload, option.hard_ttl()).await;
        self.entries.finish(sending, option.hard_ttl(), result)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let timeout = sizing::snapshot_chunk_timeout(&rpc, &option);
        self.call(Rpc::InstallSnapshot, &rpc, timeout).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.call(Rpc::Vote, &rpc, option.hard_ttl()).await
    }

    fn backoff(&self) -> Backoff {
        let doubling = std::iter::successors(Some(RPC_BACKOFF_FIRST), |pause| {
            Some((*pause * 2).min(RPC_BACKOFF_MAX))
        });
        Backoff::new(doubling)
    }
}

/// Serves one node's groups: decodes the envelope, admits the request by its incarnations,
/// hands it to the group's Raft instance, and encodes its `Result` (a Raft-level error
/// travels inside the reply; an undecodable envelope, an unknown group or a refused
/// incarnation is a gRPC error).
#[derive(Clone)]
pub struct RaftRpcServer {
    /// Each group's Raft instance, and the encodings its log keeps.
    groups: Arc<Vec<(Raft, Arc<EncodedEntries>)>>,
    identity: Identity,
    /// Where this node's groups belong: a leader handing one over asks it to campaign
    /// only where it belongs (`leadership.rs`).
    placement: FirstLeaders,
    /// Whether a refusal was logged already: a refused peer retries every few heartbeats.
    refusal_logged: Arc<AtomicBool>,
    /// Ends the AppendEntries streams when the node shuts down.
    closing: Closing,
}

impl RaftRpcServer {
    pub fn new(
        groups: Vec<(Raft, Arc<EncodedEntries>)>,
        identity: Identity,
        placement: FirstLeaders,
    ) -> RaftRpcServer {
        RaftRpcServer {
            groups: Arc::new(groups),
            identity,
            placement,
            refusal_logged: Arc::default(),
            closing: Closing::default(),
        }
    }

    /// Ends every AppendEntries stream (after the request it is taking, if any), and every
    /// later one at once: the node shuts down.
    pub fn close_streams(&self) {
        self.closing.close();
    }

    fn decode<Q: DeserializeOwned>(
        &self,
        request: tonic::Request<RaftRequest>,
    ) -> Result<(&Raft, Q), tonic::Status> {
        let ((raft, _), payload) = self.open(request.into_inner())?;
        let stamped = codec::decode(&payload).map_err(undecodable)?;
        Ok((raft, self.admit(raft, stamped)?))
    }

    /// The group `envelope` is for, and its payload.
    fn open(
        &self,
        envelope: RaftRequest,
    ) -> Result<(&(Raft, Arc<EncodedEntries>), Bytes), tonic::Status> {
        let group = usize::try_from(envelope.group)
            .ok()
            .and_then(|group_idx| self.groups.get(group_idx))
            .ok_or_else(|| {
                tonic::Status::invalid_argument(format!("no group {}", envelope.group))
            })?;
        Ok((group, envelope.payload))
    }

    /// The request `stamped` carries, if its incarnations are ones `raft`'s membership
    /// takes.
    fn admit<Q>(&self, raft: &Raft, stamped: Stamped<Q>) -> Result<Q, tonic::Status> {
        let metrics = raft.metrics();
        let membership = metrics.borrow().membership_config.clone();
        let admitted = incarnation::admit(
            &self.identity,
            membership.membership(),
            stamped.from,
            stamped.from_incarnation,
            stamped.to_incarnation,
        );
        if let Err(refusal) = admitted {
            if !self.refusal_logged.swap(true, Ordering::Relaxed) {
                tracing::error!("refusing Raft RPCs (logged once): {refusal}");
            }
            return Err(tonic::Status::failed_precondition(refusal.to_string()));
        }
        Ok(stamped.rpc)
    }

    /// Takes one AppendEntries, decoded with each entry's bytes, which the log then writes
    /// as they came.
    async fn append(&self, envelope: RaftRequest) -> Result<RaftReply, tonic::Status> {
        let ((raft, encoded), payload) = self.open(envelope)?;
        let (stamped, bodies) = encoded::decode_append_entries(&payload).map_err(undecodable)?;
        let rpc = self.admit(raft, stamped)?;
        encoded.keep(&rpc.entries, bodies);
        encode_reply(&raft.append_entries(rpc).await)
    }
}

/// The replies of an AppendEntries stream, in the order of its requests.
type AppendReplies = Replies<RaftReply>;

/// A stream's AppendEntries, each taken as a unary one is.
impl Serve<RaftRequest> for RaftRpcServer {
    type Reply = RaftReply;

    fn serve(
        &self,
        envelope: RaftRequest,
    ) -> impl Future<Output = Result<RaftReply, tonic::Status>> + Send {
        self.append(envelope)
    }
}

fn undecodable(e: CodecError) -> tonic::Status {
    tonic::Status::invalid_argument(format!("undecodable payload: {e}"))
}

fn encode_reply<T: Serialize>(result: &T) -> Result<RaftReply, tonic::Status> {
    let payload = codec::encode(result)
        .map_err(|e| tonic::Status::internal(format!("unencodable reply: {e}")))?;
    Ok(RaftReply { payload: payload.into() })
}

fn reply<T: Serialize>(result: &T) -> Result<tonic::Response<RaftReply>, tonic::Status> {
    encode_reply(result).map(tonic::Response::new)
}

#[tonic::async_trait]
impl RaftService for RaftRpcServer {
    async fn append_entries(
        &self,
        request: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        self.append(request.into_inner()).await.map(tonic::Response::new)
    }

    type AppendEntriesStreamStream = AppendReplies;

    /// Takes the stream's requests one at a time, as they come; a request refused (or one
    /// that fails as a unary call would) ends the stream with that status. So do the
    /// sender's end of it and [`RaftRpcServer::close_streams`].
    async fn append_entries_stream(
        &self,
        request: tonic::Request<tonic::Streaming<RaftRequest>>,
    ) -> Result<tonic::Response<AppendReplies>, tonic::Status> {
        let requests = request.into_inner();
        Ok(tonic::Response::new(call_stream::in_order(self.clone(), requests, &self.closing)))
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let (raft, rpc): (_, InstallSnapshotRequest<TypeConfig>) = self.decode(request)?;
        reply(&raft.install_snapshot(rpc).await)
    }

    async fn vote(
        &self,
        request: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let (raft, rpc): (_, VoteRequest<NodeId>) = self.decode(request)?;
        reply(&raft.vote(rpc).await)
    }

    async fn identify(
        &self,
        _request: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let memberships: Vec<_> = (self.groups.iter())
            .map(|(raft, _)| raft.metrics().borrow().membership_config.clone())
            .collect();
        let members = incarnation::members(memberships.iter().map(|m| m.membership()));
        reply(&Identified { identity: self.identity, members })
    }

    async fn found(
        &self,
        request: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let (raft, members): (_, BTreeMap<NodeId, Member>) = self.decode(request)?;
        reply(&founding::found_here(raft, self.identity, members).await)
    }

    async fn campaign(
        &self,
        request: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let group_idx = request.get_ref().group;
        let (raft, order): (_, Order) = self.decode(request)?;
        reply(&leadership::take_order(raft, self.placement, group_idx, order).await)
    }
}

/// A client of the node at `addr`, and a request to it of `group` carrying `payload`,
/// answered within `timeout`.
fn call(
    addr: &str,
    tls: Option<&TlsConfig>,
    group: u32,
    payload: Vec<u8>,
    timeout: Duration,
) -> Result<(RaftServiceClient<Channel>, tonic::Request<RaftRequest>), LedgerError> {
    let client = RaftServiceClient::new(tls::endpoint(addr, tls)?.connect_lazy());
    let mut request = tonic::Request::new(RaftRequest { group, payload: payload.into() });
    request.set_timeout(timeout);
    Ok((client, request))
}

/// Asks the node at `addr` who it is, within `timeout`.
pub async fn identify(
    addr: &str,
    tls: Option<&TlsConfig>,
    timeout: Duration,
) -> Result<Identified, LedgerError> {
    let unavailable = |reason: String| LedgerError::Unavailable { reason };
    let (mut client, request) = call(addr, tls, 0, Vec::new(), timeout)?;
    let reply = client.identify(request).await;
    let reply = reply.map_err(|e| unavailable(format!("asking {addr} who it is: {e}")))?;
    codec::decode(&reply.into_inner().payload)
        .map_err(|e| LedgerError::Invalid(format!("{addr} answered who it is with {e}")))
}

/// Asks founder `to` of the founding `members` to initialize its replica of `group` with
/// them (`from`: the founding member), within `timeout` (see `founding.rs`).
pub async fn found(
    from: Identity,
    group: u32,
    to: NodeId,
    members: &BTreeMap<NodeId, Member>,
    tls: Option<&TlsConfig>,
    timeout: Duration,
) -> Result<(), LedgerError> {
    let ask = Ask { from, to: &members[&to], group, what: "to found group", rpc: members };
    let (mut client, request) = ask.call(tls, timeout)?;
    ask.answer(client.found(request).await)
}

/// Gives `to`, a voter of `group` that has the log up to its leader's last log id (`from`:
/// that leader), the `order` to campaign, within `timeout` (see `leadership.rs`).
pub async fn campaign(
    from: Identity,
    group: u32,
    to: &Member,
    order: Order,
    tls: Option<&TlsConfig>,
    timeout: Duration,
) -> Result<(), LedgerError> {
    let ask = Ask { from, to, group, what: "with an order about group", rpc: order };
    let (mut client, request) = ask.call(tls, timeout)?;
    ask.answer(client.campaign(request).await)
}

/// A request of one node to another about a group, stamped with both incarnations, whose
/// answer is `Result<(), String>`.
struct Ask<'a, Q> {
    from: Identity,
    to: &'a Member,
    group: u32,
    /// What it asks, for errors: "asking {addr} {what} {group}".
    what: &'static str,
    rpc: Q,
}

impl<Q: Serialize> Ask<'_, Q> {
    fn call(
        &self,
        tls: Option<&TlsConfig>,
        timeout: Duration,
    ) -> Result<(RaftServiceClient<Channel>, tonic::Request<RaftRequest>), LedgerError> {
        let stamped = Stamped {
            from: self.from.node_id,
            from_incarnation: self.from.incarnation,
            to_incarnation: self.to.incarnation,
            rpc: &self.rpc,
        };
        let payload = codec::encode(&stamped).map_err(|e| {
            LedgerError::Invalid(format!("encoding a request {} {}: {e}", self.what, self.group))
        })?;
        call(&self.to.addr, tls, self.group, payload, timeout)
    }

    fn answer(
        &self,
        reply: Result<tonic::Response<RaftReply>, tonic::Status>,
    ) -> Result<(), LedgerError> {
        let (addr, what, group) = (&self.to.addr, self.what, self.group);
        let reply = reply.map_err(|e| LedgerError::Unavailable {
            reason: format!("asking {addr} {what} {group}: {e}"),
        })?;
        let answer: Result<(), String> = codec::decode(&reply.into_inner().payload)
            .map_err(|e| LedgerError::Invalid(format!("{addr} answered {what} {group}: {e}")))?;
        answer.map_err(|reason| LedgerError::Unavailable {
            reason: format!("asking {addr} {what} {group}: {reason}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::raft_service_server::RaftServiceServer;
    use std::ops::RangeInclusive;
    use std::sync::atomic::AtomicU64;
    use tokio::net::TcpListener;

    type Error = RPCError<NodeId, Member, RaftError<NodeId>>;

    #[test]
    fn statuses_are_classified_as_unreachable_timeout_or_refused() {
        let check = |code: tonic::Code, expected: fn(&Error) -> bool| {
            let status = tonic::Status::new(code, "test");
            let classified: Error = classify(&status, Rpc::AppendEntries, 1, 2, HEARTBEAT);
            assert!(expected(&classified), "{code:?} became {classified:?}");
        };
        check(tonic::Code::Unavailable, |e| matches!(e, RPCError::Unreachable(_)));
        check(tonic::Code::FailedPrecondition, |e| matches!(e, RPCError::Unreachable(_)));
        check(
            tonic::Code::DeadlineExceeded,
            |e| matches!(e, RPCError::Timeout(t) if (t.id, t.target, t.timeout) == (1, 2, HEARTBEAT)),
        );
        check(tonic::Code::Cancelled, |e| matches!(e, RPCError::Timeout(_)));
        for refused in [
            tonic::Code::InvalidArgument,
            tonic::Code::Internal,
            tonic::Code::Unauthenticated,
            tonic::Code::PermissionDenied,
            tonic::Code::ResourceExhausted,
            tonic::Code::Unimplemented,
        ] {
            check(refused, |e| matches!(e, RPCError::Network(_)));
        }
    }

    const HEARTBEAT: Duration = crate::HEARTBEAT_INTERVAL;

    #[test]
    fn backoff_grows_but_stays_inside_an_election_timeout() {
        let connection = GrpcConnection {
            identity: Identity { node_id: 1, incarnation: 1 },
            group: 0,
            target: 2,
            target_incarnation: 2,
            entries: AppendBudget::default(),
            encoded: Arc::default(),
            client: Err("unused".to_owned()),
            stream: None,
            unary_appends: false,
        };
        let pauses: Vec<Duration> = connection.backoff().take(20).collect();
        assert_eq!(pauses[0], RPC_BACKOFF_FIRST);
        assert!(pauses.windows(2).all(|pair| pair[0] <= pair[1]));
        assert_eq!(pauses[19], RPC_BACKOFF_MAX);
        assert!(pauses.iter().all(|pause| *pause < ELECTION_TIMEOUT_MIN));
    }

    /// A peer that answers every Raft RPC as a server whose `grpc-timeout` passed does,
    /// counting the calls that reached it.
    struct TimingOut {
        calls: Arc<AtomicU64>,
    }

    impl TimingOut {
        fn timed_out<T>(&self) -> Result<T, tonic::Status> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            Err(tonic::Status::deadline_exceeded("the test peer never answers in time"))
        }
    }

    #[tonic::async_trait]
    impl RaftService for TimingOut {
        async fn append_entries(
            &self,
            _: tonic::Request<RaftRequest>,
        ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
            self.timed_out()
        }

        async fn install_snapshot(
            &self,
            _: tonic::Request<RaftRequest>,
        ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
            self.timed_out()
        }

        async fn vote(
            &self,
            _: tonic::Request<RaftRequest>,
        ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
            self.timed_out()
        }

        async fn identify(
            &self,
            _: tonic::Request<RaftRequest>,
        ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
            self.timed_out()
        }

        async fn found(
            &self,
            _: tonic::Request<RaftRequest>,
        ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
            self.timed_out()
        }

        async fn campaign(
            &self,
            _: tonic::Request<RaftRequest>,
        ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
            self.timed_out()
        }

        type AppendEntriesStreamStream = AppendReplies;

        async fn append_entries_stream(
            &self,
            _: tonic::Request<tonic::Streaming<RaftRequest>>,
        ) -> Result<tonic::Response<AppendReplies>, tonic::Status> {
            self.timed_out()
        }
    }

    /// A connection of node 1 to node 2, a [`TimingOut`] peer on 127.0.0.1 (served until
    /// the test's runtime ends), and the count of calls that reached it.
    async fn connection_to_a_timing_out_peer() -> (GrpcConnection, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = listener.local_addr().expect("a bound address");
        let peer = TimingOutPeer::default();
        tokio::spawn(peer.serve(listener, std::future::pending()));
        let connection = node_1().new_client(2, &Member::new(addr.to_string(), 2)).await;
        (connection, peer.calls)
    }

    fn node_1() -> GrpcNetwork {
        GrpcNetwork::new(Identity { node_id: 1, incarnation: 1 }, 0, None, Arc::default())
    }

    /// The calls that reached a [`TimingOut`] peer and the connections it accepted.
    #[derive(Default)]
    struct TimingOutPeer {
        calls: Arc<AtomicU64>,
        connections: Arc<AtomicU64>,
    }

    impl TimingOutPeer {
        /// Serves on `listener` until `stop` completes (and its connections are closed).
        fn serve(
            &self,
            listener: TcpListener,
            stop: impl Future<Output = ()> + Send + 'static,
        ) -> tokio::task::JoinHandle<Result<(), tonic::transport::Error>> {
            let service = RaftServiceServer::new(TimingOut { calls: Arc::clone(&self.calls) });
            let connections = Arc::clone(&self.connections);
            let incoming = futures_util::stream::unfold(listener, move |listener| {
                let connections = Arc::clone(&connections);
                async move {
                    let accepted = listener.accept().await.map(|(stream, _)| stream);
                    connections.fetch_add(1, Ordering::Relaxed);
                    Some((accepted, listener))
                }
            });
            let server = tonic::transport::Server::builder().add_service(service);
            tokio::spawn(server.serve_with_incoming_shutdown(incoming, stop))
        }
    }

    /// openraft makes a client for every heartbeat round that confirms a linearizable read
    /// and for every vote: the clients of one peer share its connection (each had its own,
    /// a TCP and TLS handshake per read), and after the peer restarts at its address the
    /// next RPCs reach it over a new one.
    #[tokio::test]
    async fn the_clients_of_a_peer_share_a_connection_until_it_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = listener.local_addr().expect("a bound address");
        let before = TimingOutPeer::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = before.serve(listener, async {
            let _ = stopped.await;
        });
        let mut network = node_1();
        let peer = Member::new(addr.to_string(), 2);
        let vote = || VoteRequest::new(openraft::Vote::new(1, 1), None);
        for _ in 0..5 {
            let mut connection = network.new_client(2, &peer).await;
            let voted = connection.vote(vote(), RPCOption::new(HEARTBEAT)).await;
            assert!(matches!(voted, Err(RPCError::Timeout(_))), "{voted:?}");
        }
        assert_eq!(before.calls.load(Ordering::Relaxed), 5);
        assert_eq!(before.connections.load(Ordering::Relaxed), 1, "a connection per client");

        stop.send(()).expect("the server runs");
        serving.await.expect("the server task").expect("the server");
        let listener = TcpListener::bind(addr).await.expect("the peer's address again");
        let after = TimingOutPeer::default();
        let _serving = after.serve(listener, std::future::pending());
        // The RPC that finds the old connection closed may fail; the channel reconnects.
        for _ in 0..3 {
            let mut connection = network.new_client(2, &peer).await;
            if let Err(RPCError::Timeout(_)) =
                connection.vote(vote(), RPCOption::new(HEARTBEAT)).await
            {
                break;
            }
        }
        assert_eq!(after.calls.load(Ordering::Relaxed), 1, "the restarted peer was reached");
        assert_eq!(after.connections.load(Ordering::Relaxed), 1);
    }

    /// A peer that takes AppendEntries as unary calls and, if `streams`, on streams too:
    /// it answers each once its bytes would have crossed a link of `bytes_per_ms` (if
    /// given), `first_delay` later still for the very first, with a `Success` as a follower
    /// whose log matched does, or, if `names_last`, with a `PartialSuccess` naming the
    /// request's last entry (so an answer tells which request it is for). It records how
    /// many entries each carried, and counts the calls of each kind.
    #[derive(Clone, Default)]
    struct AppendPeer {
        streams: bool,
        names_last: bool,
        bytes_per_ms: Option<u64>,
        first_delay: Duration,
        entries_per_call: Arc<std::sync::Mutex<Vec<usize>>>,
        unary_calls: Arc<AtomicU64>,
        stream_opens: Arc<AtomicU64>,
        closing: Closing,
    }

    impl AppendPeer {
        async fn take(self, envelope: RaftRequest) -> Result<RaftReply, tonic::Status> {
            let stamped: Stamped<AppendEntriesRequest<TypeConfig>> =
                codec::decode(&envelope.payload).expect("an AppendEntries");
            let n_before = {
                let mut entries_per_call = self.entries_per_call.lock().unwrap();
                entries_per_call.push(stamped.rpc.entries.len());
                entries_per_call.len() - 1
            };
            let crossing_ms = match self.bytes_per_ms {
                Some(bytes_per_ms) => envelope.payload.len() as u64 / bytes_per_ms,
                None => 0,
            };
            let mut delay = Duration::from_millis(crossing_ms);
            if n_before == 0 {
                delay += self.first_delay;
            }
            tokio::time::sleep(delay).await;
            let answer: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
                Ok(match self.names_last {
                    true => AppendEntriesResponse::PartialSuccess(
                        stamped.rpc.entries.last().map(|entry| entry.log_id),
                    ),
                    false => AppendEntriesResponse::Success,
                });
            encode_reply(&answer)
        }
    }

    #[tonic::async_trait]
    impl RaftService for AppendPeer {
        async fn append_entries(
            &self,
            request: tonic::Request<RaftRequest>,
        ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
            self.unary_calls.fetch_add(1, Ordering::Relaxed);
            self.clone().take(request.into_inner()).await.map(tonic::Response::new)
        }

        type AppendEntriesStreamStream = AppendReplies;

        async fn append_entries_stream(
            &self,
            request: tonic::Request<tonic::Streaming<RaftRequest>>,
        ) -> Result<tonic::Response<AppendReplies>, tonic::Status> {
            self.stream_opens.fetch_add(1, Ordering::Relaxed);
            if !self.streams {
                return Err(tonic::Status::unimplemented("a peer of an older version"));
            }
            let (peer, requests) = (self.clone(), request.into_inner());
            let serve = move |r| peer.clone().take(r);
            Ok(tonic::Response::new(call_stream::in_order(serve, requests, &self.closing)))
        }

        async fn install_snapshot(
            &self,
            _: tonic::Request<RaftRequest>,
        ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("append entries only"))
        }

        async fn vote(
            &self,
            _: tonic::Request<RaftRequest>,
        ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("append entries only"))
        }

        async fn identify(
            &self,
            _: tonic::Request<RaftRequest>,
        ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("append entries only"))
        }

        async fn found(
            &self,
            _: tonic::Request<RaftRequest>,
        ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("append entries only"))
        }

        async fn campaign(
            &self,
            _: tonic::Request<RaftRequest>,
        ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("append entries only"))
        }
    }

    /// An AppendEntries of node 1's term 1 carrying the entries of `indexes` (100 bytes each).
    fn append_of(indexes: RangeInclusive<u64>) -> AppendEntriesRequest<TypeConfig> {
        let entries: Vec<_> =
            indexes.map(|index| crate::sizing::tests::entry_of(index, 100)).collect();
        AppendEntriesRequest {
            vote: openraft::Vote::new_committed(1, 1),
            prev_log_id: None,
            entries,
            leader_commit: None,
        }
    }

    /// Sends an AppendEntries of each of `indexes` in turn over `connection`, and checks
    /// that each is answered for itself (an [`AppendPeer`] names the last entry it took).
    async fn append_each(connection: &mut GrpcConnection, indexes: RangeInclusive<u64>) {
        for index in indexes {
            let answer =
                connection.append_entries(append_of(index..=index), RPCOption::new(HEARTBEAT));
            match answer.await {
                Ok(AppendEntriesResponse::PartialSuccess(Some(last))) => {
                    assert_eq!(last.index, index, "an answer for another request");
                }
                other => panic!("unexpected answer {other:?}"),
            }
        }
    }

    /// A connection's AppendEntries share one stream; after one was given up, the next goes
    /// on a new stream and gets its own answer, never the late one.
    #[tokio::test]
    async fn appends_share_a_stream_and_a_late_answer_is_never_taken_for_the_next() {
        let peer = AppendPeer { streams: true, names_last: true, ..AppendPeer::default() };
        let mut connection = connection_to(peer.clone()).await;
        append_each(&mut connection, 1..=5).await;
        assert_eq!(peer.stream_opens.load(Ordering::Relaxed), 1, "a stream per call");
        assert_eq!(peer.unary_calls.load(Ordering::Relaxed), 0);

        // Given up by the connection at its timeout, and by its caller (as openraft drops a
        // call at its own timeout), a first request is answered late.
        for callers_timeout in [10 * HEARTBEAT, HEARTBEAT / 2] {
            let slow = AppendPeer {
                streams: true,
                names_last: true,
                first_delay: 4 * HEARTBEAT,
                ..AppendPeer::default()
            };
            let mut connection = connection_to(slow.clone()).await;
            let first = connection.append_entries(append_of(1..=1), RPCOption::new(HEARTBEAT));
            let given_up = tokio::time::timeout(callers_timeout, first).await;
            assert!(matches!(given_up, Ok(Err(RPCError::Timeout(_))) | Err(_)), "{given_up:?}");
            append_each(&mut connection, 2..=3).await;
            assert_eq!(slow.stream_opens.load(Ordering::Relaxed), 2);
        }
    }

    /// A peer without `AppendEntriesStream` (an older version, in a rolling upgrade) takes
    /// AppendEntries as unary calls, and the connection asks for a stream only once.
    #[tokio::test]
    async fn appends_to_a_peer_without_streams_go_as_unary_calls() {
        let peer = AppendPeer { streams: false, names_last: true, ..AppendPeer::default() };
        let mut connection = connection_to(peer.clone()).await;
        append_each(&mut connection, 1..=3).await;
        assert_eq!(peer.stream_opens.load(Ordering::Relaxed), 1);
        assert_eq!(peer.unary_calls.load(Ordering::Relaxed), 3);
    }

    /// A connection of node 1 to node 2, served by `peer` on 127.0.0.1 until the test's
    /// runtime ends.
    async fn connection_to<S: RaftService>(peer: S) -> GrpcConnection {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = listener.local_addr().expect("a bound address");
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RaftServiceServer::new(peer))
                .serve_with_incoming(incoming),
        );
        node_1().new_client(2, &Member::new(addr.to_string(), 2)).await
    }

    /// What the catch-up test's slow link carries (3 MB/s), and the timeout each of its
    /// requests gets: three heartbeat intervals, so that the half of it the budget leaves
    /// spare (75 ms) is more than a loaded 2-core machine delays a task (with one interval,
    /// 25 ms spare, a CI run beside two release builds timed out ten requests).
    const SLOW_LINK_BYTES_PER_MS: u64 = 3_000;
    const SLOW_LINK_TIMEOUT: Duration = Duration::from_millis(150);

    /// Issue 9, fault 6, payload-sized replication: a follower 64 entries of 100 kB behind
    /// a slow link (2.1 s of link time in all, fourteen times what one request's timeout
    /// carries) is caught up the way openraft's replication core does it (up to
    /// `APPEND_ENTRIES_MAX` entries a request, each cancelled at its timeout, the heartbeat
    /// interval in openraft's, the rest sent after a `PartialSuccess`), with only the first
    /// requests timing out while the connection learns the link's pace. (A budget counted
    /// in entries, halved on a timeout and doubled on a success, timed out about every
    /// other request.)
    #[tokio::test]
    async fn a_large_catch_up_over_a_slow_link_goes_in_pieces_that_fit_the_heartbeat() {
        const N_ENTRIES: u64 = 64;
        let peer = AppendPeer {
            streams: true,
            bytes_per_ms: Some(SLOW_LINK_BYTES_PER_MS),
            ..AppendPeer::default()
        };
        let entries_per_call = Arc::clone(&peer.entries_per_call);
        let mut connection = connection_to(peer).await;
        let entries: Vec<_> =
            (1..=N_ENTRIES).map(|index| crate::sizing::tests::entry_of(index, 100_000)).collect();
        let mut matched = 0u64;
        let mut n_timeouts = 0;
        for _ in 0..4 * N_ENTRIES {
            if matched == N_ENTRIES {
                break;
            }
            let prev_log_id = matched.checked_sub(1).map(|i| entries[i as usize].log_id);
            let end = (matched + crate::APPEND_ENTRIES_MAX).min(N_ENTRIES);
            let rpc = AppendEntriesRequest::<TypeConfig> {
                vote: openraft::Vote::new_committed(1, 1),
                prev_log_id,
                entries: entries[matched as usize..end as usize].to_vec(),
                leader_commit: None,
            };
            let sent = connection.append_entries(rpc, RPCOption::new(SLOW_LINK_TIMEOUT));
            match tokio::time::timeout(SLOW_LINK_TIMEOUT, sent).await {
                Ok(Ok(AppendEntriesResponse::Success)) => matched = end,
                Ok(Ok(AppendEntriesResponse::PartialSuccess(Some(last)))) => matched = last.index,
                // The connection's own timeout or openraft's, whichever is polled first.
                Ok(Err(RPCError::Timeout(_))) | Err(_) => n_timeouts += 1,
                Ok(other) => panic!("unexpected answer {other:?}"),
            }
        }
        let calls = entries_per_call.lock().unwrap().clone();
        assert_eq!(matched, N_ENTRIES, "not caught up after {} requests: {calls:?}", calls.len());
        // Two while it learns (10 and 5 entries), and slack for a loaded machine.
        assert!(n_timeouts <= 5, "{n_timeouts} requests timed out; entries per request {calls:?}");
    }

    /// A call to a peer that took the connection and then went silent (a host gone, a
    /// partition) ends at its own timeout, with a `Timeout`, not at openraft's (60 s for a
    /// snapshot chunk): tonic's client enforces the `grpc-timeout` `call` sets.
    #[tokio::test]
    async fn a_call_to_a_silent_peer_ends_at_its_timeout() {
        // Bound and never accepted from: the kernel completes the TCP handshake, and
        // nothing ever answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = silent.local_addr().expect("a bound address");
        let mut connection = node_1().new_client(2, &Member::new(addr.to_string(), 2)).await;
        let vote = VoteRequest::new(openraft::Vote::new(1, 1), None);
        let timeout = Duration::from_millis(300);
        let call = connection.vote(vote, RPCOption::new(timeout));
        let ended = tokio::time::timeout(Duration::from_secs(10), call).await;
        let ended = ended.expect("the call to a silent peer waited past its timeout");
        assert!(matches!(&ended, Err(RPCError::Timeout(t)) if t.timeout == timeout), "{ended:?}");
    }

    /// Issue 9, fault 6: with the node's Raft configuration, a snapshot chunk is sent
    /// with `SNAPSHOT_CHUNK_TIMEOUT`, the last one of a 20 MB snapshot, which the peer
    /// answers only once it has installed the snapshot, with 10 s more
    /// (`sizing::snapshot_chunk_timeout`). (Every chunk had openraft's 200 ms, shorter
    /// than the install of a large snapshot.)
    #[tokio::test]
    async fn a_snapshot_s_last_chunk_has_time_for_the_install() {
        let (mut connection, calls) = connection_to_a_timing_out_peer().await;
        let config = crate::node::raft_config(&crate::NodeOptions::default()).expect("valid");
        let option = RPCOption::new(config.install_snapshot_timeout());
        let chunk = |done: bool| InstallSnapshotRequest::<TypeConfig> {
            vote: openraft::Vote::new_committed(1, 1),
            meta: crate::types::SnapshotMeta::default(),
            offset: 20_000_000 - 16,
            data: vec![0; 16],
            done,
        };
        let deadline = |result: RpcResult<_, InstallSnapshotError>| match result {
            Err(RPCError::Timeout(timeout)) => timeout.timeout,
            other => panic!("expected a timeout, got {other:?}"),
        };
        let middle = deadline(connection.install_snapshot(chunk(false), option.clone()).await);
        assert_eq!(middle, crate::SNAPSHOT_CHUNK_TIMEOUT);
        let last = deadline(connection.install_snapshot(chunk(true), option).await);
        assert_eq!(
            last,
            crate::SNAPSHOT_CHUNK_TIMEOUT + Duration::from_secs(10),
            "the last chunk cannot wait for the install"
        );
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }
}
