//! The ledger API a node serves to gateways and operators (`LedgerService` in
//! `proto/raft.proto`): submit, read, change membership, describe the cluster. Every
//! answer is a [`codec`](crate::codec)-encoded `Result<answer, WireError>`; only an undecodable request is a
//! gRPC error.

use crate::codec;
use crate::error::LedgerError;
use crate::grpc::ledger_service_server::LedgerService;
use crate::grpc::{GroupRequest, LedgerReply};
use crate::node::{Inner, LedgerNode};
use crate::reads::GroupAccess;
use crate::tls::TlsConfig;
use crate::wire::{MembershipChange, ReadRequest, WireError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use solrouter_ledger::{Command, BATCH_COMMANDS_MAX};
use std::sync::Weak;
use tonic::{Request, Response, Status};

/// Holds the node weakly: the node owns the server, and a server task must not keep a
/// dropped node alive.
pub struct LedgerRpcServer {
    node: Weak<Inner>,
    /// How this node dials a node it adds.
    tls: Option<TlsConfig>,
}

impl LedgerRpcServer {
    pub(crate) fn new(node: Weak<Inner>, tls: Option<TlsConfig>) -> LedgerRpcServer {
        LedgerRpcServer { node, tls }
    }

    fn node(&self) -> Result<LedgerNode, LedgerError> {
        LedgerNode::from_weak(&self.node).ok_or(LedgerError::Shutdown)
    }
}

type RpcResult = Result<Response<LedgerReply>, Status>;

fn decode<T: DeserializeOwned>(request: Request<GroupRequest>) -> Result<(u32, T), Status> {
    let envelope = request.into_inner();
    let payload = codec::decode(&envelope.payload)
        .map_err(|e| Status::invalid_argument(format!("undecodable payload: {e}")))?;
    Ok((envelope.group, payload))
}

fn reply<T: Serialize>(result: Result<T, LedgerError>) -> RpcResult {
    let result = result.map_err(WireError::from);
    let payload =
        codec::encode(&result).map_err(|e| Status::internal(format!("unencodable reply: {e}")))?;
    Ok(Response::new(LedgerReply { payload: payload.into() }))
}

#[tonic::async_trait]
impl LedgerService for LedgerRpcServer {
    async fn submit(&self, request: Request<GroupRequest>) -> RpcResult {
        let (group_idx, commands): (u32, Vec<Command>) = decode(request)?;
        if commands.len() > BATCH_COMMANDS_MAX {
            return Err(Status::invalid_argument(format!(
                "{} commands in one submit; at most {BATCH_COMMANDS_MAX}",
                commands.len()
            )));
        }
        let submitted = match self.node() {
            Ok(node) => node.submit_group(group_idx, commands).await,
            Err(e) => Err(e),
        };
        reply(submitted)
    }

    async fn query(&self, request: Request<GroupRequest>) -> RpcResult {
        let (group_idx, read): (u32, ReadRequest) = decode(request)?;
        let answer = match self.node() {
            Ok(node) => node.read_group(group_idx, read).await,
            Err(e) => Err(e),
        };
        reply(answer)
    }

    async fn change_membership(&self, request: Request<GroupRequest>) -> RpcResult {
        let (group_idx, change): (u32, MembershipChange) = decode(request)?;
        let changed = match self.node() {
            Ok(node) => node.change_membership(group_idx, &change, self.tls.as_ref()).await,
            Err(e) => Err(e),
        };
        reply(changed)
    }

    async fn topology(&self, _request: Request<GroupRequest>) -> RpcResult {
        reply(self.node().map(|node| node.topology()))
    }
}
