//! Voiding holds nobody settles. Expiry is applied by a batch's stamp (the ledger reads no
//! clock), so a group with no traffic would keep an abandoned hold (its gateway crashed)
//! until the next command arrives. Each node checks its groups periodically; where it
//! leads and the earliest hold is past its expiry, it proposes an empty batch, whose
//! stamp voids every expired hold on every replica alike.

use crate::error::LedgerError;
use crate::node::{Inner, LedgerNode};
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
    let batch = Batch { stamp_ms, commands: Vec::new() };
    // Beside the batcher, on one of its slots: never while a hand-over has proposals
    // paused. Given up on should this node stop leading (openraft 0.9 may then never
    // answer it), and bounded besides: on timeout the next check simply tries again, on
    // whichever node then leads.
    let write = group.propose_beside_batcher(batch);
    match tokio::time::timeout(EXPIRY_WRITE_TIMEOUT, write).await {
        Ok(Ok(_)) => true,
        Ok(Err(LedgerError::Shutdown | LedgerError::Storage { .. })) => false,
        // Lost leadership meanwhile: the new leader's check does it.
        Ok(Err(e)) => {
            tracing::debug!(group_idx, error = %e, "expiry batch not committed");
            true
        }
        Err(_elapsed) => {
            tracing::debug!(group_idx, "expiry batch not answered in time");
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use solrouter_ledger::{
        AccountId, Command, HoldId, KeyId, KeyKind, KeyLimits, Op, OpId, PicoUsd,
    };

    /// An expiry's empty batch waits while a hand-over has the group's proposals paused
    /// (the leader's log must not grow past what its successor was told to hold), and is
    /// proposed once they resume.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_expiry_waits_while_proposals_are_paused() {
        // Long enough that the pause surely comes first, on a loaded machine too.
        const TTL_MS: u64 = 1_000;
        let dir = tempfile::tempdir().unwrap();
        let node = LedgerNode::open_single(dir.path()).await.unwrap();
        let (account, key, hold) = (AccountId(1), KeyId(2), HoldId(3));
        let ops = [
            Op::CreateAccount { account, name: "a".into() },
            Op::Credit { account, amount: PicoUsd(1_000) },
            Op::CreateKey {
                account,
                key,
                name: "k".into(),
                hash: [7; 32],
                kind: KeyKind::Inference,
                limits: KeyLimits::default(),
            },
            Op::Reserve { account, key, hold, amount: PicoUsd(100), ttl_ms: TTL_MS },
        ];
        let commands = (1..).zip(ops).map(|(id, op)| Command { id: OpId(id), op }).collect();
        for outcome in node.submit_group(0, commands).await.unwrap() {
            outcome.unwrap();
        }
        let group = node.group_at(0).unwrap();
        let pending = || group.read_local(|ledger| ledger.account(account).unwrap().debits_pending);
        let last_index = || group.raft().metrics().borrow().last_log_index;

        let paused = group.pause_proposals().await;
        assert_eq!(pending(), PicoUsd(100), "expired before the pause");
        let before = last_index();
        // The hold comes due: both this check and the node's own (every second) find it.
        tokio::time::sleep(Duration::from_millis(TTL_MS + 50)).await;
        let expiring = tokio::spawn({
            let node = node.clone();
            async move { expire_if_due(&node, 0).await }
        });
        tokio::time::sleep(EXPIRY_CHECK_INTERVAL + Duration::from_millis(500)).await;
        assert_eq!(last_index(), before, "an expiry was proposed while proposals were paused");
        assert_eq!(pending(), PicoUsd(100));

        drop(paused);
        assert!(expiring.await.unwrap());
        assert_eq!(pending(), PicoUsd(0), "the hold did not expire once proposals resumed");
        node.shutdown().await.unwrap();
    }
}
