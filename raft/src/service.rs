//! The ledger API a node serves to gateways and operators (`LedgerService` in
//! `proto/raft.proto`): submit, read, change membership, describe the cluster. Every
//! answer is a [`codec`](crate::codec)-encoded `Result<answer, WireError>`; only an undecodable request is a
//! gRPC error.

use crate::call_stream::{self, Closing, Replies, Serve};
use crate::codec;
use crate::error::LedgerError;
use crate::grpc::ledger_service_server::LedgerService;
use crate::grpc::{GroupRequest, LedgerReply};
use crate::incarnation::{Identity, Incarnation};
use crate::node::{Inner, LedgerNode};
use crate::reads::GroupAccess;
use crate::tls::TlsConfig;
use crate::wire::{MembershipChange, ReadRequest, WireError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use solrouter_ledger::{Command, BATCH_COMMANDS_MAX};
use std::future::Future;
use std::sync::Weak;
use tonic::{Request, Response, Status};

/// Holds the node weakly: the node owns the server, and a server task must not keep a
/// dropped node alive. Clones share the streams' [`Closing`].
#[derive(Clone)]
pub struct LedgerRpcServer {
    node: Weak<Inner>,
    /// Who this node is: a call meant for another incarnation is refused.
    identity: Identity,
    /// How this node dials a node it adds.
    tls: Option<TlsConfig>,
    /// Ends the submit streams when the node shuts down.
    closing: Closing,
}

/// A decoded request: its group, its payload, and the incarnation the caller meant to
/// reach (`None`: any).
struct Call<T> {
    group_idx: u32,
    payload: T,
    meant_for: Option<Incarnation>,
}

impl LedgerRpcServer {
    pub(crate) fn new(
        node: Weak<Inner>,
        identity: Identity,
        tls: Option<TlsConfig>,
    ) -> LedgerRpcServer {
        LedgerRpcServer { node, identity, tls, closing: Closing::default() }
    }

    /// Ends every submit stream (after the submit it is taking, if any), and every later
    /// one at once: the node shuts down.
    pub(crate) fn close_streams(&self) {
        self.closing.close();
    }

    /// Submits one envelope's commands, for a unary call or a stream alike.
    async fn submit(&self, envelope: GroupRequest) -> Result<LedgerReply, Status> {
        let call: Call<Vec<Command>> = decode(envelope)?;
        if call.payload.len() > BATCH_COMMANDS_MAX {
            return Err(Status::invalid_argument(format!(
                "{} commands in one submit; at most {BATCH_COMMANDS_MAX}",
                call.payload.len()
            )));
        }
        let submitted = match self.node(call.meant_for) {
            Ok(node) => node.submit_group(call.group_idx, call.payload).await,
            Err(e) => Err(e),
        };
        encode_reply(submitted)
    }

    /// The node, if `call` was meant for it: a caller that knew another incarnation at this
    /// address (another cluster's node now listens here, or this id came back from a wiped
    /// disk) gets a retryable refusal, never this node's answer in the old one's place.
    fn node(&self, meant_for: Option<Incarnation>) -> Result<LedgerNode, LedgerError> {
        if let Some(meant) = meant_for.filter(|m| *m != self.identity.incarnation) {
            return Err(LedgerError::Unavailable {
                reason: format!(
                    "this address now serves node {} incarnation {:x}, not incarnation {meant:x} \
                     (the node the caller knew here is gone)",
                    self.identity.node_id, self.identity.incarnation
                ),
            });
        }
        LedgerNode::from_weak(&self.node).ok_or(LedgerError::Shutdown)
    }
}

type RpcResult = Result<Response<LedgerReply>, Status>;

fn decode<T: DeserializeOwned>(envelope: GroupRequest) -> Result<Call<T>, Status> {
    let payload = codec::decode(&envelope.payload)
        .map_err(|e| Status::invalid_argument(format!("undecodable payload: {e}")))?;
    let meant_for = meant_for(&envelope)?;
    Ok(Call { group_idx: envelope.group, payload, meant_for })
}

fn meant_for(envelope: &GroupRequest) -> Result<Option<Incarnation>, Status> {
    match <[u8; 16]>::try_from(envelope.incarnation.as_ref()) {
        Ok(bytes) => Ok(Some(Incarnation::from_be_bytes(bytes))),
        Err(_) if envelope.incarnation.is_empty() => Ok(None),
        Err(_) => Err(Status::invalid_argument("an incarnation is 16 bytes")),
    }
}

fn encode_reply<T: Serialize>(result: Result<T, LedgerError>) -> Result<LedgerReply, Status> {
    let result = result.map_err(WireError::from);
    let payload =
        codec::encode(&result).map_err(|e| Status::internal(format!("unencodable reply: {e}")))?;
    Ok(LedgerReply { payload: payload.into() })
}

fn reply<T: Serialize>(result: Result<T, LedgerError>) -> RpcResult {
    encode_reply(result).map(Response::new)
}

/// A stream's submits, each taken as a unary one is.
impl Serve<GroupRequest> for LedgerRpcServer {
    type Reply = LedgerReply;

    fn serve(
        &self,
        envelope: GroupRequest,
    ) -> impl Future<Output = Result<LedgerReply, Status>> + Send {
        self.submit(envelope)
    }
}

#[tonic::async_trait]
impl LedgerService for LedgerRpcServer {
    async fn submit(&self, request: Request<GroupRequest>) -> RpcResult {
        LedgerRpcServer::submit(self, request.into_inner()).await.map(Response::new)
    }

    type SubmitStreamStream = Replies<LedgerReply>;

    /// Takes the stream's submits one at a time, as they come; one refused as a unary
    /// call would be ends the stream with that status. So do the gateway's end of it and
    /// [`LedgerRpcServer::close_streams`].
    async fn submit_stream(
        &self,
        request: Request<tonic::Streaming<GroupRequest>>,
    ) -> Result<Response<Replies<LedgerReply>>, Status> {
        Ok(Response::new(call_stream::in_order(self.clone(), request.into_inner(), &self.closing)))
    }

    async fn query(&self, request: Request<GroupRequest>) -> RpcResult {
        let call: Call<ReadRequest> = decode(request.into_inner())?;
        let answer = match self.node(call.meant_for) {
            Ok(node) => node.read_group(call.group_idx, call.payload, None).await,
            Err(e) => Err(e),
        };
        reply(answer)
    }

    async fn change_membership(&self, request: Request<GroupRequest>) -> RpcResult {
        let call: Call<MembershipChange> = decode(request.into_inner())?;
        let changed = match self.node(call.meant_for) {
            Ok(node) => {
                node.change_membership(call.group_idx, &call.payload, self.tls.as_ref()).await
            }
            Err(e) => Err(e),
        };
        reply(changed)
    }

    async fn topology(&self, request: Request<GroupRequest>) -> RpcResult {
        let meant_for = meant_for(request.get_ref())?;
        reply(self.node(meant_for).map(|node| node.topology()))
    }
}
