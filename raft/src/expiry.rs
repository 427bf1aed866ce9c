//! Voiding holds nobody settles. Expiry is applied by a batch's stamp (the ledger reads no
//! clock), so a group with no traffic would keep an abandoned hold (its gateway crashed)
//! until the next command arrives. Each node checks its groups periodically; where it
//! leads and the earliest hold is past its expiry, it proposes an empty batch, whose
//! stamp voids every expired hold on every replica alike.

use crate::node::{Inner, LedgerNode};
use openraft::error::RaftError;
use solrouter_ledger::Batch;
use std::sync::Weak;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How often a node looks for expired holds: a hold outlives its TTL by at most this much
/// (TTLs are minutes), and an idle check costs one lock and one comparison per group.
pub const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long one expiry write may wait for its commit: many election timeouts, so a
/// healthy cluster always answers within it.
pub const EXPIRY_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs until the node is dropped or shut down (which aborts the task).
pub(crate) fn spawn(node: Weak<Inner>, group_idx: u32) -> JoinHandle<()> {
    LedgerNode::spawn_every(node, EXPIRY_CHECK_INTERVAL, move |node| async move {
        expire_if_due(&node, group_idx).await
    })
}

/// Proposes an empty batch if this node leads the group and a hold is due. False once the
/// group's Raft core has stopped.
async fn expire_if_due(node: &LedgerNode, group_idx: u32) -> bool {
    let group = node.group_at(group_idx).expect("the task's group exists");
    if group.raft().metrics().borrow().current_leader != Some(node.id()) {
        return true;
    }
    let Some(due_ms) = group.read_local(|ledger| ledger.next_expiry_ms()) else { return true };
    // Ledger time, not the wall clock: a stepped clock must not void a live hold early
    // (`ledger_clock.rs`). Drawing a stamp that is not proposed costs nothing: stamps only
    // grow, each within the monotonic clock's pace.
    let stamp_ms = group.next_stamp_ms();
    if due_ms > stamp_ms {
        return true;
    }
    let batch = Batch { stamp_ms, commands: Vec::new() }.into();
    // openraft 0.9 never answers a write whose entry a snapshot replaced after this node
    // stepped down (found by the simulation, see `group.rs`), so the write is bounded: on
    // timeout the next check simply tries again, on whichever node then leads.
    match tokio::time::timeout(EXPIRY_WRITE_TIMEOUT, group.raft().client_write(batch)).await {
        Ok(Ok(_)) => true,
        Ok(Err(RaftError::Fatal(_))) => false,
        // Lost leadership meanwhile: the new leader's check does it.
        Ok(Err(RaftError::APIError(e))) => {
            tracing::debug!(group_idx, error = %e, "expiry batch not committed");
            true
        }
        Err(_elapsed) => {
            tracing::debug!(group_idx, "expiry batch not answered in time");
            true
        }
    }
}
