//! The openraft type configuration. Private to the crate: nothing here may appear in the
//! public API (ARCHITECTURE invariant: only `raft` knows openraft types).

use solrouter_ledger::{Batch, Outcome};
use std::io::Cursor;

openraft::declare_raft_types!(
    /// One Raft entry carries one [`Batch`] (group commit) and answers with one outcome per
    /// command, in the batch's order.
    pub TypeConfig:
        D = Batch,
        R = Vec<Outcome>,
        NodeId = u64,
        Node = openraft::BasicNode,
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
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
