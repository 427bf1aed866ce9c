//! Raft RPCs between ledger nodes over gRPC (tonic): the client side
//! ([`GrpcNetwork`], openraft's network factory, one per group) and the server side
//! ([`RaftRpcServer`], one per node, routing by group).
//!
//! The protobuf messages are envelopes around [`codec`] bytes (see `proto/raft.proto`): openraft's
//! types cross the wire unchanged and never leave this crate.

use crate::codec;
use crate::grpc::raft_service_client::RaftServiceClient;
use crate::grpc::raft_service_server::RaftService;
use crate::grpc::{RaftReply, RaftRequest};
use crate::tls::{self, TlsConfig};
use crate::types::{NodeId, Raft, TypeConfig};
use crate::RPC_BYTES_MAX;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use tonic::transport::Channel;

/// Connects group `group`'s Raft instance to the same group on other nodes, over mutual
/// TLS when the cluster has a [`TlsConfig`].
pub struct GrpcNetwork {
    group: u32,
    tls: Option<TlsConfig>,
}

impl GrpcNetwork {
    pub fn new(group: u32, tls: Option<TlsConfig>) -> GrpcNetwork {
        GrpcNetwork { group, tls }
    }
}

pub struct GrpcConnection {
    group: u32,
    target: NodeId,
    /// An address that does not parse fails every RPC with that reason.
    client: Result<RaftServiceClient<Channel>, String>,
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = GrpcConnection;

    /// Connects lazily: a peer that is down costs nothing until an RPC, which then fails as
    /// `Unreachable` and openraft backs off.
    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> GrpcConnection {
        let endpoint = tls::endpoint(&node.addr, self.tls.as_ref());
        let client = endpoint
            .map(|endpoint| {
                RaftServiceClient::new(endpoint.connect_lazy())
                    .max_decoding_message_size(RPC_BYTES_MAX)
                    .max_encoding_message_size(RPC_BYTES_MAX)
            })
            .map_err(|e| format!("bad address {:?} of node {target}: {e}", node.addr));
        GrpcConnection { group: self.group, target, client }
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
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl GrpcConnection {
    async fn call<Q, T, E>(&mut self, rpc: Rpc, request: &Q, option: RPCOption) -> RpcResult<T, E>
    where
        Q: Serialize,
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut client = match &self.client {
            Ok(client) => client.clone(),
            Err(reason) => {
                return Err(RPCError::Unreachable(Unreachable::new(&BadAddress(reason.clone()))))
            }
        };
        let payload = codec::encode(request).map_err(|e| network_error(&e))?;
        let mut envelope =
            tonic::Request::new(RaftRequest { group: self.group, payload: payload.into() });
        envelope.set_timeout(option.hard_ttl());
        let reply = match rpc {
            Rpc::AppendEntries => client.append_entries(envelope).await,
            Rpc::InstallSnapshot => client.install_snapshot(envelope).await,
            Rpc::Vote => client.vote(envelope).await,
        };
        let reply = reply.map_err(|status| RPCError::Unreachable(Unreachable::new(&status)))?;
        let result: Result<T, RaftError<NodeId, E>> =
            codec::decode(&reply.into_inner().payload).map_err(|e| network_error(&e))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn network_error<E: std::error::Error + 'static, F: std::error::Error>(
    e: &E,
) -> RPCError<NodeId, BasicNode, RaftError<NodeId, F>> {
    RPCError::Network(NetworkError::new(e))
}

impl RaftNetwork<TypeConfig> for GrpcConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.call(Rpc::AppendEntries, &rpc, option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(Rpc::InstallSnapshot, &rpc, option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.call(Rpc::Vote, &rpc, option).await
    }
}

/// Serves one node's groups: decodes the envelope, hands the request to the group's Raft
/// instance, and encodes its `Result` (a Raft-level error travels inside the reply; only an
/// undecodable envelope or an unknown group is a gRPC error).
pub struct RaftRpcServer {
    groups: Arc<Vec<Raft>>,
}

impl RaftRpcServer {
    pub fn new(groups: Vec<Raft>) -> RaftRpcServer {
        RaftRpcServer { groups: Arc::new(groups) }
    }

    fn decode<Q: DeserializeOwned>(
        &self,
        request: tonic::Request<RaftRequest>,
    ) -> Result<(&Raft, Q), tonic::Status> {
        let envelope = request.into_inner();
        let raft = usize::try_from(envelope.group)
            .ok()
            .and_then(|group_idx| self.groups.get(group_idx))
            .ok_or_else(|| {
                tonic::Status::invalid_argument(format!("no group {}", envelope.group))
            })?;
        let rpc = codec::decode(&envelope.payload)
            .map_err(|e| tonic::Status::invalid_argument(format!("undecodable payload: {e}")))?;
        Ok((raft, rpc))
    }
}

fn reply<T: Serialize>(result: &T) -> Result<tonic::Response<RaftReply>, tonic::Status> {
    let payload = codec::encode(result)
        .map_err(|e| tonic::Status::internal(format!("unencodable reply: {e}")))?;
    Ok(tonic::Response::new(RaftReply { payload: payload.into() }))
}

#[tonic::async_trait]
impl RaftService for RaftRpcServer {
    async fn append_entries(
        &self,
        request: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let (raft, rpc): (_, AppendEntriesRequest<TypeConfig>) = self.decode(request)?;
        reply(&raft.append_entries(rpc).await)
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
}
