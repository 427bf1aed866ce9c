//! Adding and removing ledger nodes while the cluster serves (DESIGN.md §2). Each group
//! changes its membership on its own, at its own leader, through openraft's joint
//! consensus, so commits go on throughout and no group ever loses its quorum.

use crate::error::LedgerError;
use crate::group::Group;
use crate::grpc_network;
use crate::incarnation::{self, Identified};
use crate::tls::TlsConfig;
use crate::types::{Member, NodeId};
use crate::wire::MembershipChange;
use openraft::{ChangeMembers, Membership};
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
/// How long a node being added has to say who it is.
pub const IDENTIFY_TIMEOUT: Duration = Duration::from_secs(2);

/// Applies `change` to `group`; must run on the group's leader (else `NotLeader`).
/// Adding first makes the node a learner and waits until it has caught up, so promoting
/// it to voter never makes commits wait for a node far behind. Repeating a change that is
/// already in effect succeeds, so an operator (or a retry) may run it again; a change that
/// cannot be what was meant fails at once (see [`plan`]). A node to add is asked who it is
/// first (over `tls`): the membership records its incarnation.
pub(crate) async fn change(
    group: &Group,
    change: &MembershipChange,
    tls: Option<&TlsConfig>,
) -> Result<(), LedgerError> {
    let identified = match change {
        MembershipChange::Add { addr, .. } => {
            Some(grpc_network::identify(addr, tls, IDENTIFY_TIMEOUT).await?)
        }
        MembershipChange::Remove { .. } => None,
    };
    change_identified(group, change, identified).await
}

/// [`change`] once the node to add (if any) has said who it is: `identified`. The
/// simulation, which has no gRPC, identifies its nodes itself.
pub(crate) async fn change_identified(
    group: &Group,
    change: &MembershipChange,
    identified: Option<Identified>,
) -> Result<(), LedgerError> {
    let membership = group.raft().metrics().borrow().membership_config.clone();
    let changes = match plan(membership.membership(), change, identified.as_ref())? {
        Plan::Nothing => return Ok(()),
        Plan::Change(changes) => changes,
        Plan::AddLearnerThenVoter { id, member } => {
            let adding = add_learner_and_catch_up(group, id, member);
            match tokio::time::timeout(LEARNER_CATCH_UP_TIMEOUT, adding).await {
                Ok(added) => added?,
                Err(_elapsed) => return Err(LedgerError::Timeout(LEARNER_CATCH_UP_TIMEOUT)),
            };
            ChangeMembers::AddVoterIds(BTreeSet::from([id]))
        }
    };
    // The entries below are appended beside the batcher: on one of its slots, so never
    // while a hand-over has its proposals paused.
    let _slot = group.slot_beside_batcher().await;
    if let ChangeMembers::RemoveVoters(removed) = &changes {
        refuse_if_a_remaining_voter_is_unreachable(group, removed).await?;
    }
    // `retain = false`: a removed voter leaves the group rather than staying a learner.
    let changing = group.raft().change_membership(changes, false);
    changing.await.map_err(LedgerError::from_membership_change)?;
    Ok(())
}

/// Adds `id` as a learner, its entry appended on one of the batcher's slots (see
/// [`Group::slot_beside_batcher`]), and waits without the slot until the learner's replica
/// trails the leader's log by at most openraft's `replication_lag_threshold` (what
/// openraft's own blocking `add_learner` waits for): a catch-up may take a snapshot and
/// many entries, and the batcher proposes a lone command at once only when none of its
/// slots is taken.
async fn add_learner_and_catch_up(
    group: &Group,
    id: NodeId,
    member: Member,
) -> Result<(), LedgerError> {
    let added = {
        let _slot = group.slot_beside_batcher().await;
        group.raft().add_learner(id, member, false).await
    };
    let added = added.map_err(LedgerError::from_membership_change)?;
    let lag_max = group.raft().config().replication_lag_threshold;
    let caught_up = |now: &openraft::RaftMetrics<NodeId, Member>| {
        if now.membership_config.log_id() < &Some(added.log_id) {
            return false;
        }
        // No longer leading, or the learner removed meanwhile: the change below fails
        // and says why.
        let Some(replication) = &now.replication else { return true };
        if now.membership_config.membership().get_node(&id).is_none() {
            return true;
        }
        let matched = replication.get(&id).copied().flatten();
        let last = now.last_log_index.unwrap_or(0);
        matched.is_some_and(|matched| matched.index.saturating_add(lag_max) >= last)
    };
    let mut metrics = group.raft().metrics();
    metrics.wait_for(caught_up).await.map_err(|_| LedgerError::Shutdown)?;
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
    let batch = Batch { stamp_ms: group.next_stamp_ms(), commands: Vec::new() }.into();
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
    let lagging = |now: &openraft::RaftMetrics<NodeId, Member>| -> Vec<NodeId> {
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
enum Plan {
    Nothing,
    AddLearnerThenVoter { id: NodeId, member: Member },
    Change(ChangeMembers<NodeId, Member>),
}

/// What `change` takes given the group's `membership` and, for an addition, what the node
/// at the address said of itself (`identified`). Re-adding a member is refused unless it
/// is the same node at the same address: openraft would keep the old address and
/// incarnation and report success, and a node that lost its disk must come back under a
/// new id, after the old one is removed. A node that answers with another id, or that
/// holds another cluster's membership, is refused. A learner is removed as a node:
/// removing it as a voter did nothing.
fn plan(
    membership: &Membership<NodeId, Member>,
    change: &MembershipChange,
    identified: Option<&Identified>,
) -> Result<Plan, LedgerError> {
    let refuse = |message: String| Err(LedgerError::Invalid(message));
    match change {
        MembershipChange::Add { id, addr } => {
            let Some(identified) = identified else {
                return refuse(format!("node {id} at {addr} was not asked who it is"));
            };
            let found = identified.identity;
            if found.node_id != *id {
                return refuse(format!(
                    "the node at {addr} is node {}, not node {id}: start the node to add with \
                     `--id {id}` and an empty data directory",
                    found.node_id
                ));
            }
            let member = Member::new(addr.as_str(), found.incarnation);
            match membership.get_node(id) {
                Some(node) if node.addr != *addr => refuse(format!(
                    "node {id} is already a member at {}; to move it to {addr}, remove node {id} \
                     and add the node under a new id",
                    node.addr
                )),
                Some(node) if node.incarnation != found.incarnation => refuse(format!(
                    "node {id} is already a member as incarnation {:032x}, but the node at {addr} \
                     is incarnation {:032x}: its data directory was wiped or replaced, so it may \
                     not vote as node {id} again; {}",
                    node.incarnation,
                    found.incarnation,
                    incarnation::rejoin_advice(*id)
                )),
                Some(_) => Ok(Plan::AddLearnerThenVoter { id: *id, member }),
                None if foreign(membership, identified) => refuse(format!(
                    "the node at {addr} already belongs to another cluster (its data directory \
                     holds members {:?}): start it with an empty data directory",
                    identified.members.keys().collect::<Vec<_>>()
                )),
                None => Ok(Plan::AddLearnerThenVoter { id: *id, member }),
            }
        }
        MembershipChange::Remove { id } if membership.voter_ids().any(|voter| voter == *id) => {
            Ok(Plan::Change(ChangeMembers::RemoveVoters(BTreeSet::from([*id]))))
        }
        MembershipChange::Remove { id } if membership.get_node(id).is_some() => {
            Ok(Plan::Change(ChangeMembers::RemoveNodes(BTreeSet::from([*id]))))
        }
        MembershipChange::Remove { .. } => Ok(Plan::Nothing),
    }
}

/// Whether a node (not a member of `membership`) that knows members of its own belongs to
/// another cluster: none of them is one of ours with the same incarnation. (A node being
/// added to several groups knows ours once the first has added it.)
fn foreign(membership: &Membership<NodeId, Member>, identified: &Identified) -> bool {
    let ours = |(id, incarnation): (&NodeId, &incarnation::Incarnation)| {
        membership.get_node(id).is_some_and(|member| member.incarnation == *incarnation)
    };
    !identified.members.is_empty() && !identified.members.iter().any(ours)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn membership_mistakes_fail_at_once_or_do_what_they_say() {
        let addr = |id: NodeId| format!("10.0.0.{id}:7000");
        let nodes: BTreeMap<NodeId, Member> =
            (1..=4).map(|id| (id, Member::new(addr(id), 100 + u128::from(id)))).collect();
        // Voters 1..=3, learner 4.
        let membership = Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes);
        let add = |id: NodeId, addr: &str| MembershipChange::Add { id, addr: addr.to_owned() };
        // What the node at the address says of itself.
        let node = |node_id: NodeId, incarnation: u128, members: &[(NodeId, u128)]| Identified {
            identity: incarnation::Identity { node_id, incarnation },
            members: members.iter().copied().collect(),
        };
        let check = |change: MembershipChange,
                     identified: Option<Identified>,
                     expected: Result<Plan, &str>| {
            let planned =
                plan(&membership, &change, identified.as_ref()).map_err(|e| e.to_string());
            match expected {
                Ok(plan) => assert_eq!(planned, Ok(plan), "{change:?}"),
                Err(part) => assert!(
                    planned.as_ref().is_err_and(|e| e.contains(part)),
                    "{change:?} gave {planned:?}"
                ),
            }
        };
        let same = Plan::AddLearnerThenVoter { id: 2, member: Member::new(addr(2), 102) };
        check(add(2, &addr(2)), Some(node(2, 102, &[(1, 101), (2, 102)])), Ok(same));
        let moved = Some(node(2, 102, &[]));
        check(add(2, "10.0.0.9:7000"), moved, Err("node 2 is already a member at 10.0.0.2:7000"));
        check(add(4, "10.0.0.9:7000"), Some(node(4, 104, &[])), Err("remove node 4"));
        // Node 2's disk was wiped: same id, same address, a new incarnation.
        let wiped = Some(node(2, 7, &[]));
        check(add(2, &addr(2)), wiped, Err("ledger-admin remove-node --id 2"));
        check(add(5, &addr(5)), Some(node(6, 106, &[])), Err("is node 6, not node 5"));
        let foreign = Some(node(5, 105, &[(1, 901), (5, 105)]));
        check(add(5, &addr(5)), foreign, Err("already belongs to another cluster"));
        let new = Plan::AddLearnerThenVoter { id: 5, member: Member::new(addr(5), 105) };
        check(add(5, &addr(5)), Some(node(5, 105, &[])), Ok(new));
        // Added to one group already, it knows our members: the next group adds it too.
        let half_added = Some(node(5, 105, &[(1, 101), (5, 105)]));
        let new = Plan::AddLearnerThenVoter { id: 5, member: Member::new(addr(5), 105) };
        check(add(5, &addr(5)), half_added, Ok(new));
        let remove = |id| MembershipChange::Remove { id };
        let voters = ChangeMembers::RemoveVoters(BTreeSet::from([3]));
        check(remove(3), None, Ok(Plan::Change(voters)));
        let learner = ChangeMembers::RemoveNodes(BTreeSet::from([4]));
        check(remove(4), None, Ok(Plan::Change(learner)));
        check(remove(9), None, Ok(Plan::Nothing));
    }

    /// A membership change appends beside the batcher, on one of its slots: while a
    /// hand-over has the group's proposals paused, neither the removal's check (an empty
    /// batch) nor its configurations are appended, and the change completes once the
    /// proposals resume.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_membership_change_waits_while_proposals_are_paused() {
        // Node 1 leads group 0 (its placement: no hand-over comes).
        let (_dirs, nodes, _) = crate::node::three_local_nodes(1, 1, 0).await;
        let leader = nodes[0].clone();
        let group = leader.group_at(0).unwrap();
        let last_index = || group.raft().metrics().borrow().last_log_index;

        let paused = group.pause_proposals().await;
        let before = last_index();
        let changing = tokio::spawn({
            let leader = leader.clone();
            async move { leader.change_membership(0, &MembershipChange::Remove { id: 3 }, None).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            last_index(),
            before,
            "a membership change appended while proposals were paused"
        );

        drop(paused);
        changing.await.unwrap().unwrap();
        let voters: Vec<NodeId> = {
            let now = group.raft().metrics().borrow().membership_config.clone();
            now.membership().voter_ids().collect()
        };
        assert_eq!(voters, [1, 2]);
        for node in nodes {
            node.shutdown().await.unwrap();
        }
    }
}
