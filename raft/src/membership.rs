//! Adding and removing ledger nodes while the cluster serves (DESIGN.md §2). Each group
//! changes its membership on its own, at its own leader, through openraft's joint
//! consensus, so commits go on throughout and no group ever loses its quorum.

use crate::error::LedgerError;
use crate::group::Group;
use crate::types::NodeId;
use crate::wire::MembershipChange;
use openraft::{BasicNode, ChangeMembers, Membership};
use solrouter_ledger::Batch;
use std::collections::BTreeSet;
use std::time::Duration;

/// Longest a new node may take to catch up as a learner before it is made a voter. It
/// receives a snapshot (bounded by the ledger's size) and the log after it; a minute is
/// ample on a LAN and fails a change to a node that cannot keep up instead of hanging.
pub const LEARNER_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long every voter that stays has to acknowledge a fresh entry before a voter is
/// removed: many heartbeats, so only a node that is down or cut off misses it.
pub const VOTERS_REACHABLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Applies `change` to `group`; must run on the group's leader (else `NotLeader`).
/// Adding first makes the node a learner and waits until it has caught up, so promoting
/// it to voter never makes commits wait for a node far behind. Repeating a change that is
/// already in effect succeeds, so an operator (or a retry) may run it again; a change that
/// cannot be what was meant fails at once (see [`plan`]).
pub(crate) async fn change(group: &Group, change: &MembershipChange) -> Result<(), LedgerError> {
    let membership = group.raft().metrics().borrow().membership_config.clone();
    let changes = match plan(membership.membership(), change)? {
        Plan::Nothing => return Ok(()),
        Plan::Change(changes) => changes,
        Plan::AddLearnerThenVoter { id, addr } => {
            let adding = group.raft().add_learner(id, BasicNode::new(addr), true);
            match tokio::time::timeout(LEARNER_CATCH_UP_TIMEOUT, adding).await {
                Ok(added) => added.map_err(LedgerError::from_membership_change)?,
                Err(_elapsed) => return Err(LedgerError::Timeout(LEARNER_CATCH_UP_TIMEOUT)),
            };
            ChangeMembers::AddVoterIds(BTreeSet::from([id]))
        }
    };
    if let ChangeMembers::RemoveVoters(removed) = &changes {
        refuse_if_a_remaining_voter_is_unreachable(group, removed).await?;
    }
    // `retain = false`: a removed voter leaves the group rather than staying a learner.
    let changing = group.raft().change_membership(changes, false);
    changing.await.map_err(LedgerError::from_membership_change)?;
    Ok(())
}

/// Removing a voter goes through a joint configuration that needs a majority of the old
/// voters and of the new: with another voter down, it can stall the group. So every voter
/// that stays must acknowledge a fresh entry (an empty batch) within
/// [`VOTERS_REACHABLE_TIMEOUT`]; the change is refused naming those that do not.
async fn refuse_if_a_remaining_voter_is_unreachable(
    group: &Group,
    removed: &BTreeSet<NodeId>,
) -> Result<(), LedgerError> {
    let batch = Batch { stamp_ms: group.next_stamp_ms(), commands: Vec::new() };
    let written = tokio::time::timeout(VOTERS_REACHABLE_TIMEOUT, group.raft().client_write(batch))
        .await
        .map_err(|_| LedgerError::Timeout(VOTERS_REACHABLE_TIMEOUT))?
        .map_err(LedgerError::from_client_write)?;
    let index = written.log_id.index;
    let mut metrics = group.raft().metrics();
    let (leader, staying): (NodeId, BTreeSet<NodeId>) = {
        let now = metrics.borrow();
        let voters = now.membership_config.membership().voter_ids();
        (now.id, voters.filter(|id| !removed.contains(id)).collect())
    };
    let lagging = |now: &openraft::RaftMetrics<NodeId, BasicNode>| -> Vec<NodeId> {
        let matched = |id: &NodeId| {
            let replication = now.replication.as_ref();
            replication.and_then(|r| r.get(id).copied().flatten()).map(|log_id| log_id.index)
        };
        let behind = |id: &&NodeId| **id != leader && matched(id).is_none_or(|m| m < index);
        staying.iter().filter(behind).copied().collect()
    };
    let caught_up = metrics.wait_for(|now| lagging(now).is_empty());
    if tokio::time::timeout(VOTERS_REACHABLE_TIMEOUT, caught_up).await.is_ok() {
        return Ok(());
    }
    let unreachable = lagging(&metrics.borrow());
    Err(LedgerError::Invalid(format!(
        "refusing to remove node(s) {removed:?}: voter(s) {unreachable:?} did not acknowledge          a write within {VOTERS_REACHABLE_TIMEOUT:?}, and with them down the change could not          commit; bring them back, or remove them first"
    )))
}

#[derive(Debug, PartialEq, Eq)]
enum Plan<'a> {
    Nothing,
    AddLearnerThenVoter { id: NodeId, addr: &'a str },
    Change(ChangeMembers<NodeId, BasicNode>),
}

/// What `change` takes given the group's `membership`. Re-adding a member at another
/// address is refused: openraft would keep the old address and report success (a node
/// that lost its disk must come back under a new id, after the old one is removed). A
/// learner is removed as a node: removing it as a voter did nothing.
fn plan<'a>(
    membership: &Membership<NodeId, BasicNode>,
    change: &'a MembershipChange,
) -> Result<Plan<'a>, LedgerError> {
    match change {
        MembershipChange::Add { id, addr } => match membership.get_node(id) {
            Some(node) if node.addr != *addr => Err(LedgerError::Invalid(format!(
                "node {id} is already a member at {}; to move it to {addr}, remove node {id} and \
                 add the node under a new id",
                node.addr
            ))),
            _ => Ok(Plan::AddLearnerThenVoter { id: *id, addr }),
        },
        MembershipChange::Remove { id } if membership.voter_ids().any(|voter| voter == *id) => {
            Ok(Plan::Change(ChangeMembers::RemoveVoters(BTreeSet::from([*id]))))
        }
        MembershipChange::Remove { id } if membership.get_node(id).is_some() => {
            Ok(Plan::Change(ChangeMembers::RemoveNodes(BTreeSet::from([*id]))))
        }
        MembershipChange::Remove { .. } => Ok(Plan::Nothing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn membership_mistakes_fail_at_once_or_do_what_they_say() {
        let nodes: BTreeMap<NodeId, BasicNode> =
            (1..=4).map(|id| (id, BasicNode::new(format!("10.0.0.{id}:7000")))).collect();
        // Voters 1..=3, learner 4.
        let membership = Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes);
        let add = |id: NodeId, addr: &str| MembershipChange::Add { id, addr: addr.to_owned() };
        let check = |change: MembershipChange, expected: Result<Plan, &str>| {
            let planned = plan(&membership, &change).map_err(|e| e.to_string());
            match expected {
                Ok(plan) => assert_eq!(planned, Ok(plan), "{change:?}"),
                Err(part) => assert!(
                    planned.as_ref().is_err_and(|e| e.contains(part)),
                    "{change:?} gave {planned:?}"
                ),
            }
        };
        let again = add(2, "10.0.0.2:7000");
        check(again, Ok(Plan::AddLearnerThenVoter { id: 2, addr: "10.0.0.2:7000" }));
        check(add(2, "10.0.0.9:7000"), Err("node 2 is already a member at 10.0.0.2:7000"));
        check(add(4, "10.0.0.9:7000"), Err("remove node 4"));
        let new = add(5, "10.0.0.5:7000");
        check(new, Ok(Plan::AddLearnerThenVoter { id: 5, addr: "10.0.0.5:7000" }));
        let remove = |id| MembershipChange::Remove { id };
        let voters = ChangeMembers::RemoveVoters(BTreeSet::from([3]));
        check(remove(3), Ok(Plan::Change(voters)));
        let learner = ChangeMembers::RemoveNodes(BTreeSet::from([4]));
        check(remove(4), Ok(Plan::Change(learner)));
        check(remove(9), Ok(Plan::Nothing));
    }
}
