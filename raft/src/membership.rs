//! Adding and removing ledger nodes while the cluster serves (DESIGN.md §2). Each group
//! changes its membership on its own, at its own leader, through openraft's joint
//! consensus, so commits go on throughout and no group ever loses its quorum.

use crate::error::LedgerError;
use crate::group::Group;
use crate::wire::MembershipChange;
use openraft::{BasicNode, ChangeMembers};
use std::collections::BTreeSet;
use std::time::Duration;

/// Longest a new node may take to catch up as a learner before it is made a voter. It
/// receives a snapshot (bounded by the ledger's size) and the log after it; a minute is
/// ample on a LAN and fails a change to a node that cannot keep up instead of hanging.
pub const LEARNER_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// Applies `change` to `group`; must run on the group's leader (else `NotLeader`).
/// Adding first makes the node a learner and waits until it has caught up, so promoting
/// it to voter never makes commits wait for a node far behind. Repeating a change that is
/// already in effect succeeds, so an operator (or a retry) may run it again.
pub(crate) async fn change(group: &Group, change: &MembershipChange) -> Result<(), LedgerError> {
    let changes = match change {
        MembershipChange::Add { id, addr } => {
            let adding = group.raft().add_learner(*id, BasicNode::new(addr), true);
            match tokio::time::timeout(LEARNER_CATCH_UP_TIMEOUT, adding).await {
                Ok(added) => added.map_err(LedgerError::from_membership_change)?,
                Err(_elapsed) => return Err(LedgerError::Timeout(LEARNER_CATCH_UP_TIMEOUT)),
            };
            ChangeMembers::AddVoterIds(BTreeSet::from([*id]))
        }
        MembershipChange::Remove { id } => {
            let membership = group.raft().metrics().borrow().membership_config.clone();
            if !membership.membership().nodes().any(|(node_id, _)| node_id == id) {
                return Ok(());
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([*id]))
        }
    };
    // `retain = false`: a removed voter leaves the group rather than staying a learner.
    let changing = group.raft().change_membership(changes, false);
    changing.await.map_err(LedgerError::from_membership_change)?;
    Ok(())
}
