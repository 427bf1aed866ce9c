//! The network of a single-node cluster: it has no peers, so every RPC is refused.
//!
//! Openraft never sends an RPC while the node is the only voter; if one is ever attempted
//! (a membership change on a single-node deployment) it fails as `Unreachable` and openraft
//! backs off, which is the honest answer.

use crate::types::{Member, NodeId, TypeConfig};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

pub struct NoPeers;

pub struct NoPeerConnection {
    target: NodeId,
}

#[derive(Debug, thiserror::Error)]
#[error("node {target} is unreachable: this node runs a single-node cluster")]
struct NoPeerError {
    target: NodeId,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>>;

impl NoPeerConnection {
    fn unreachable(&self) -> Unreachable {
        Unreachable::new(&NoPeerError { target: self.target })
    }
}

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeerConnection;

    async fn new_client(&mut self, target: NodeId, _node: &Member) -> Self::Network {
        NoPeerConnection { target }
    }
}

impl RaftNetwork<TypeConfig> for NoPeerConnection {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }
}
