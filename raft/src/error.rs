//! The one error type of this layer, and the only place openraft errors are translated.

use crate::types::{Member, NodeId};
use openraft::error::{
    ChangeMembershipError, CheckIsLeaderError, ClientWriteError, Fatal, ForwardToLeader, RaftError,
};
use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

/// Why a ledger node could not serve a call. Rejections by the ledger itself (insufficient
/// funds, unknown hold, …) are not errors: they arrive as the command's `Outcome`.
///
/// [`LedgerError::is_retryable`] tells the caller whether trying again (with the same op
/// id, which makes the retry idempotent) can succeed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LedgerError {
    /// This node does not lead the command's group. Retry at the leader, if one is known.
    #[error("not the leader; leader is node {leader_id:?} at {leader_addr:?}")]
    NotLeader { leader_id: Option<u64>, leader_addr: Option<String> },
    /// No leader or no quorum right now (election in progress, peers down). Retry later.
    #[error("ledger unavailable: {reason}")]
    Unavailable { reason: String },
    /// No outcome arrived within the deadline; the command may or may not have been
    /// applied. Retry with the same op id to learn which.
    #[error("no outcome within {0:?}; retry with the same op id")]
    Timeout(Duration),
    /// The disk or the storage engine failed. This node cannot go on.
    #[error("ledger storage failed while {context}: {source}")]
    Storage {
        context: &'static str,
        #[source]
        source: Arc<dyn Error + Send + Sync>,
    },
    /// The node was shut down, or its Raft core stopped after a fatal error.
    #[error("ledger node is shut down")]
    Shutdown,
    /// [`crate::NodeOptions`] failed validation.
    #[error("invalid node options: {0}")]
    InvalidOptions(&'static str),
    /// The TLS files could not be read, parsed or combined (a key that does not match its
    /// certificate, a CA that is not PEM).
    #[error("invalid TLS configuration: {0}")]
    InvalidTls(String),
    /// The request cannot succeed as sent: a command routed to the wrong group (client and
    /// cluster disagree on the group count), a membership change that is not allowed, an
    /// answer that does not fit the question.
    #[error("invalid ledger request: {0}")]
    Invalid(String),
}

impl LedgerError {
    pub fn is_retryable(&self) -> bool {
        match self {
            LedgerError::NotLeader { .. }
            | LedgerError::Unavailable { .. }
            | LedgerError::Timeout(_) => true,
            LedgerError::Storage { .. }
            | LedgerError::Shutdown
            | LedgerError::InvalidOptions(_)
            | LedgerError::InvalidTls(_)
            | LedgerError::Invalid(_) => false,
        }
    }

    pub(crate) fn storage(
        context: &'static str,
        source: impl Error + Send + Sync + 'static,
    ) -> Self {
        LedgerError::Storage { context, source: Arc::new(source) }
    }

    pub(crate) fn from_fatal(context: &'static str, fatal: Fatal<NodeId>) -> Self {
        match fatal {
            Fatal::StorageError(e) => LedgerError::storage(context, e),
            Fatal::Panicked | Fatal::Stopped => LedgerError::Shutdown,
        }
    }

    pub(crate) fn from_client_write(
        error: RaftError<NodeId, ClientWriteError<NodeId, Member>>,
    ) -> Self {
        match error {
            RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => not_leader(forward),
            // Only membership changes produce this, and the batcher never proposes one.
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                unreachable!("a batch write failed as a membership change: {e}")
            }
            RaftError::Fatal(fatal) => LedgerError::from_fatal("writing a batch", fatal),
        }
    }

    /// A membership change's error: another change still in progress is worth retrying,
    /// a change that names an unknown learner or empties the group is not.
    pub(crate) fn from_membership_change(
        error: RaftError<NodeId, ClientWriteError<NodeId, Member>>,
    ) -> Self {
        match error {
            RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => not_leader(forward),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(
                e @ ChangeMembershipError::InProgress(_),
            )) => LedgerError::Unavailable { reason: e.to_string() },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                LedgerError::Invalid(e.to_string())
            }
            RaftError::Fatal(fatal) => LedgerError::from_fatal("changing membership", fatal),
        }
    }

    pub(crate) fn from_check_leader(
        error: RaftError<NodeId, CheckIsLeaderError<NodeId, Member>>,
    ) -> Self {
        match error {
            RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)) => {
                not_leader(forward)
            }
            RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)) => {
                LedgerError::Unavailable { reason: e.to_string() }
            }
            RaftError::Fatal(fatal) => LedgerError::from_fatal("checking leadership", fatal),
        }
    }
}

fn not_leader(forward: ForwardToLeader<NodeId, Member>) -> LedgerError {
    LedgerError::NotLeader {
        leader_id: forward.leader_id,
        leader_addr: forward.leader_node.map(|node| node.addr),
    }
}
