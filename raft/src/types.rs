//! The openraft type configuration. Private to the crate: nothing here may appear in the
//! public API (ARCHITECTURE invariant: only `raft` knows openraft types).

use crate::incarnation::Incarnation;
use serde::{Deserialize, Serialize};
use solrouter_ledger::{Batch, Outcome};
use std::io::Cursor;
use std::sync::Arc;

/// A member of a group's membership: where it is dialled, and the incarnation of its data
/// directory it joined with (`incarnation.rs`); RPCs to or from any other incarnation of
/// it are refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub addr: String,
    pub incarnation: Incarnation,
}

impl Member {
    pub fn new(addr: impl Into<String>, incarnation: Incarnation) -> Member {
        Member { addr: addr.into(), incarnation }
    }
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (incarnation {:032x})", self.addr, self.incarnation)
    }
}

openraft::declare_raft_types!(
    /// One Raft entry carries one [`Batch`] (group commit) and answers with one outcome per
    /// command, in the batch's order. Behind an `Arc` (encoded as the batch itself): openraft
    /// reads an entry back for the apply and for each follower's AppendEntries, and the
    /// log's decoded tail hands out copies, which would otherwise copy every command.
    pub TypeConfig:
        D = Arc<Batch>,
        R = Vec<Outcome>,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        // A snapshot is one encoded buffer of the ledger; it lives in memory anyway.
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
