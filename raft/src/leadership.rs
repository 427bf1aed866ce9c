//! Leaders go back where the placement ([`FirstLeaders`]) puts them. A group stays led
//! wherever it was elected: after a failover its leader does not return when the failed
//! node does, and a rolling restart gathers the groups on the nodes restarted first, so
//! one node's cores and disk did every group's work. openraft 0.9 has no leadership
//! transfer, so a node hands its groups over itself.
//!
//! Every [`LEADER_BALANCE_INTERVAL`] a node looks at the groups it has led since its last
//! look. One whose placement, over the group's voters, names another voter whose replica
//! trails the leader's log by a few entries at most ([`HAND_OVER_LAG_MAX`]) is handed to
//! it:
//!
//! 1. the leader stops proposing once what it has in flight is answered
//!    ([`Group::pause_proposals`]; an expiry's empty batch and a membership change's
//!    entries, appended beside the batcher, wait on the same slots), so its log stops
//!    growing;
//! 2. it waits until the target's replica has its last log id (its replication metrics);
//! 3. it asks the target to campaign (`Campaign`, [`grpc_network::campaign`]); the target
//!    checks that its own placement puts the group there too (so that two nodes given
//!    different placements never hand a group back and forth), waits until it has
//!    applied that log id (so that it proposes at once once elected), and starts an
//!    election ([`take_order`]);
//! 4. the leader grants the vote (openraft 0.9's leader takes a candidate with the next
//!    term and as long a log; its own lease dates from its election, which lies beyond
//!    the lease by then), so the target has a majority of a group of up to three voters at
//!    once; the leader steps down, and the submissions it held are answered `NotLeader`
//!    naming the new leader, where gateways send them again (same ids: idempotent).
//!
//! A node stopped on purpose (`solrouter ledger` on SIGTERM, [`hand_over_all`]) first
//! hands each group it leads the same way to another voter that close to its log (the
//! placement's choice among them, so its groups spread), whatever the placement says
//! ([`CampaignOrder::leaving`]): its groups need no election, which leaves a group without a
//! leader for an election timeout or more. They come back once it is up again.
//!
//! The other voters refuse the vote while their leader's lease lasts (its heartbeats renew
//! it), so in a group of more than [`QUICK_VOTERS_MAX`] voters the target and the leader
//! are no majority: there the leader first has every other voter hold its elections
//! ([`Order::HoldElections`], for [`HAND_OVER_TIMEOUT`]; an order to campaign still starts
//! one) and stops its heartbeats until their leases have run out ([`LEASE`]), which holds
//! the group's proposals that much longer. A hand-over that does not see the target lead
//! within [`HAND_OVER_TIMEOUT`] resumes proposing and is tried again after
//! [`HAND_OVER_BACKOFF`]. Safety never rests on any of this: the target wins an ordinary
//! Raft election, or nobody does and the group elects as it would after a lost leader.

use crate::error::LedgerError;
use crate::founding::FirstLeaders;
use crate::group::Group;
use crate::grpc_network;
use crate::incarnation::Identity;
use crate::node::{Inner, LedgerNode};
use crate::tls::TlsConfig;
use crate::types::{LogId, Member, NodeId, Raft};
use crate::ELECTION_TIMEOUT_MAX;
use openraft::RaftMetrics;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

/// How often a node looks for groups it leads that belong elsewhere. A group is handed
/// over only once it has been led here for a whole interval, longer than a leader's lease.
pub const LEADER_BALANCE_INTERVAL: Duration = Duration::from_secs(2);
/// How long a voter refuses every vote (openraft 0.9's leader lease, the longest election
/// timeout), with a margin: a leader from its own election on, a follower from its
/// leader's last message on. A hand-over's target wins only once its leader's election
/// is older, and, in a group of more than three voters, the followers' last heartbeat.
const LEASE: Duration = ELECTION_TIMEOUT_MAX.saturating_add(Duration::from_millis(50));
const _: () = assert!(LEASE.as_millis() < LEADER_BALANCE_INTERVAL.as_millis());
/// The longest a hand-over holds its group's proposals: pausing, the target's catching up
/// and its election.
pub const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a node waits before handing over a group again after a hand-over failed.
pub const HAND_OVER_BACKOFF: Duration = Duration::from_secs(30);
/// The longest the target of a hand-over waits to have applied the leader's log before
/// it campaigns; well within [`HAND_OVER_TIMEOUT`], so that it answers (and campaigns, or
/// not) while the leader still holds its proposals.
const CAMPAIGN_APPLY_WAIT_MAX: Duration = Duration::from_millis(500);
const _: () = assert!(CAMPAIGN_APPLY_WAIT_MAX.as_millis() * 3 <= HAND_OVER_TIMEOUT.as_millis());
/// The most voters a group may have for the quick hand-over, where the target and the
/// leader are a majority (see the module's doc).
const QUICK_VOTERS_MAX: usize = 3;
/// How far a voter's replica may trail its leader's log, in entries, to be handed the
/// group: the leader pauses its proposals and waits until the voter holds the whole log,
/// which under load takes the replication of a few entries (a voter that holds exactly
/// the whole log is rare under load: entries keep coming), not a catching-up.
const HAND_OVER_LAG_MAX: u64 = 64;

/// Where a node's groups belong, and how it asks a voter to take one: what its balancer
/// and its hand-overs before a planned stop ([`hand_over_all`]) share.
pub(crate) struct Leadership<C> {
    pub placement: FirstLeaders,
    pub orders: C,
}

/// Starts the node's balancer, until the node is dropped or shut down (which aborts the
/// task).
pub(crate) fn spawn<C: Orders>(
    node: Weak<Inner>,
    leadership: Arc<Leadership<C>>,
) -> JoinHandle<()> {
    let balancer = Balancer { leadership, turns: Vec::new() };
    tokio::spawn(balancer.run(node))
}

/// What a leader handing its group over asks of another voter (`Campaign`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) enum Order {
    /// The target: campaign.
    Campaign(CampaignOrder),
    /// In a group of more than three voters, every other voter first: start no election
    /// for this long (the leader then stops its heartbeats until their leases run out).
    HoldElections { for_ms: u64 },
}

/// The order to campaign (see [`Order`]).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct CampaignOrder {
    /// The leader's last log id: the target campaigns once it has applied it.
    pub last: LogId,
    /// The leader is stopping ([`hand_over_all`]): the target takes the group whether or
    /// not the placement puts it there (the group comes back once the leader is up again).
    pub leaving: bool,
}

/// How a leader gives another voter an [`Order`] (step 3 of the module's doc): over gRPC
/// ([`OverGrpc`]), or the simulation's network.
pub(crate) trait Orders: Send + Sync + 'static {
    /// Gives voter `to`, dialled at `member`, of group `group_idx` the `order`; answers its
    /// refusal, if any.
    fn give(
        &self,
        group_idx: u32,
        to: NodeId,
        member: &Member,
        order: Order,
    ) -> impl Future<Output = Result<(), LedgerError>> + Send;
}

/// [`Orders`] over the nodes' gRPC (`Campaign`), from the node of `identity`.
pub(crate) struct OverGrpc {
    pub identity: Identity,
    pub tls: Option<TlsConfig>,
}

impl Orders for OverGrpc {
    async fn give(
        &self,
        group_idx: u32,
        _to: NodeId,
        member: &Member,
        order: Order,
    ) -> Result<(), LedgerError> {
        let (identity, tls) = (self.identity, self.tls.as_ref());
        grpc_network::campaign(identity, group_idx, member, order, tls, HAND_OVER_TIMEOUT).await
    }
}

struct Balancer<C> {
    leadership: Arc<Leadership<C>>,
    /// What the balancer knows of each group, by group index.
    turns: Vec<Turn>,
}

#[derive(Clone, Copy, Default)]
struct Turn {
    /// The term this node was last seen leading the group in.
    led_in: Option<u64>,
    /// No hand-over of the group before this (one failed).
    not_before: Option<Instant>,
}

impl<C: Orders> Balancer<C> {
    async fn run(mut self, node: Weak<Inner>) {
        let mut tick = tokio::time::interval(LEADER_BALANCE_INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(node) = LedgerNode::from_weak(&node) else { return };
            self.turns.resize(node.groups().len(), Turn::default());
            for (group_idx, group) in (0..).zip(node.groups()) {
                self.balance(group_idx, group).await;
            }
        }
    }

    /// Hands group `group_idx` over if it is due (see the module's doc).
    async fn balance(&mut self, group_idx: u32, group: &Group) {
        let turn = &mut self.turns[group_idx as usize];
        let target = {
            let metrics = group.raft().metrics();
            let metrics = metrics.borrow();
            let leads = metrics.current_leader == Some(metrics.id);
            let led_before = turn.led_in == Some(metrics.current_term);
            turn.led_in = leads.then_some(metrics.current_term);
            let due = leads && led_before;
            let placement = self.leadership.placement;
            due.then(|| hand_over_target(placement, group_idx, &metrics)).flatten()
        };
        let Some((target, member)) = target else { return };
        if turn.not_before.is_some_and(|not_before| Instant::now() < not_before) {
            return;
        }
        let orders = &self.leadership.orders;
        let hand_over = HandOver { group, group_idx, target, member, orders, leaving: false };
        let outcome = if hand_over.run().await {
            "done"
        } else {
            tracing::warn!("group {group_idx}: trying again in {HAND_OVER_BACKOFF:?}");
            turn.not_before = Some(Instant::now() + HAND_OVER_BACKOFF);
            "failed"
        };
        let group_label = group_idx.to_string();
        let labels = [("group", group_label), ("outcome", outcome.to_string())];
        metrics::counter!("solrouter_ledger_leader_hand_overs_total", &labels).increment(1);
    }
}

/// Hands every group this node leads to another voter close to its log
/// ([`leaving_target`]), all at once, each within [`HAND_OVER_TIMEOUT`]: before a planned
/// stop, so that its groups need no election (which leaves a group without a leader for
/// an election timeout or more).
pub(crate) async fn hand_over_all<C: Orders>(node: &LedgerNode, leadership: &Leadership<C>) {
    if !node.groups().iter().any(Group::leads) {
        return;
    }
    // This node may have been elected just now: its groups' votes would be refused.
    tokio::time::sleep(LEASE).await;
    let mut handing = Vec::new();
    for (group_idx, group) in (0..).zip(node.groups()) {
        let target = {
            let metrics = group.raft().metrics();
            let metrics = metrics.borrow();
            leaving_target(leadership.placement, group_idx, &metrics)
        };
        let orders = &leadership.orders;
        if let Some((target, member)) = target {
            handing.push(HandOver { group, group_idx, target, member, orders, leaving: true });
        }
    }
    futures_util::future::join_all(handing.iter().map(HandOver::run)).await;
}

/// One hand-over: of group `group_idx` (this node's replica `group`, which it leads) to
/// voter `target`, dialled at `member`, asked through `orders`, this node `leaving` or
/// not (see [`CampaignOrder`]).
struct HandOver<'a, C> {
    group: &'a Group,
    group_idx: u32,
    target: NodeId,
    member: Member,
    orders: &'a C,
    leaving: bool,
}

impl<C: Orders> HandOver<'_, C> {
    /// [`HandOver::steps`] within [`HAND_OVER_TIMEOUT`], logged; whether the target leads.
    async fn run(&self) -> bool {
        let (group_idx, target) = (self.group_idx, self.target);
        let started = Instant::now();
        let why = match tokio::time::timeout(HAND_OVER_TIMEOUT, self.steps()).await {
            Ok(Ok(())) => {
                let whither =
                    if self.leaving { "as this node stops" } else { "where the placement puts it" };
                tracing::info!(
                    "group {group_idx}: handed its leadership to node {target}, {whither}, in {:?}",
                    started.elapsed()
                );
                return true;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("node {target} did not lead within {HAND_OVER_TIMEOUT:?}"),
        };
        tracing::warn!("group {group_idx}: handing its leadership to node {target} failed: {why}");
        false
    }

    /// The steps of the module's doc; done once the target leads.
    async fn steps(&self) -> Result<(), LedgerError> {
        let (group, group_idx, target) = (self.group, self.group_idx, self.target);
        let _paused = group.pause_proposals().await;
        let still = |what: &str| format!("group {group_idx}: {what}");
        let unavailable = |reason| LedgerError::Unavailable { reason };
        let holds_the_log = |metrics: &RaftMetrics<NodeId, Member>| {
            let leads = metrics.current_leader == Some(metrics.id);
            let matched = matched(metrics, target).map(|matched| matched.index);
            !leads || matched == metrics.last_log_index
        };
        let what = still("the target holds the whole log");
        let seen = until(group.raft(), None, what, holds_the_log).await.map_err(unavailable)?;
        let last = match matched(&seen, target) {
            Some(last) if seen.current_leader == Some(seen.id) => last,
            _ => return Err(unavailable(still("this node stopped leading"))),
        };
        let n_voters = seen.membership_config.membership().voter_ids().count();
        let _heartbeats_off = if n_voters > QUICK_VOTERS_MAX {
            Some(self.quiet_followers(&seen).await)
        } else {
            None
        };
        let order = Order::Campaign(CampaignOrder { last, leaving: self.leaving });
        self.orders.give(group_idx, target, &self.member, order).await?;
        let leads = |metrics: &RaftMetrics<NodeId, Member>| metrics.current_leader == Some(target);
        until(group.raft(), None, still("the target leads"), leads).await.map_err(unavailable)?;
        Ok(())
    }

    /// In a group of more than [`QUICK_VOTERS_MAX`] voters the target needs followers'
    /// votes, which they refuse while their leader's lease lasts: every voter but this
    /// leader holds its elections (the target's order to campaign still starts one), then
    /// the leader stops its heartbeats until the followers' leases have run out. They
    /// resume when the returned guard goes. A voter that cannot be reached is left out: it
    /// cannot vote either.
    async fn quiet_followers(&self, metrics: &RaftMetrics<NodeId, Member>) -> HeartbeatsOff {
        let membership = metrics.membership_config.membership();
        let for_ms = u64::try_from(HAND_OVER_TIMEOUT.as_millis()).expect("two seconds");
        let hold = Order::HoldElections { for_ms };
        let others = membership.voter_ids().filter(|id| *id != metrics.id);
        let holds = others.filter_map(|id| {
            let member = membership.get_node(&id)?.clone();
            Some(async move { self.orders.give(self.group_idx, id, &member, hold).await })
        });
        futures_util::future::join_all(holds).await;
        let raft = self.group.raft();
        raft.runtime_config().heartbeat(false);
        tokio::time::sleep(LEASE).await;
        HeartbeatsOff(raft.clone())
    }
}

/// A leader's heartbeats, stopped (see [`HandOver::quiet_followers`]) until this goes.
struct HeartbeatsOff(Raft);

impl Drop for HeartbeatsOff {
    fn drop(&mut self) {
        self.0.runtime_config().heartbeat(true);
    }
}

/// The voter `placement` puts group `group_idx` on, by `metrics` (this replica's), and
/// where it is dialled, if that is another voter than this node and it is
/// [`within_reach`]; `None` while the group's membership changes.
fn hand_over_target(
    placement: FirstLeaders,
    group_idx: u32,
    metrics: &RaftMetrics<NodeId, Member>,
) -> Option<(NodeId, Member)> {
    let voters = voters_to_hand_to(metrics)?;
    let target = placement.leader_among(voters.into_iter(), group_idx)?;
    let due = target != metrics.id && within_reach(metrics, target);
    due.then(|| member(metrics, target)).flatten()
}

/// The voter a leaving leader hands group `group_idx` to, by `metrics` (its replica's):
/// `placement`'s choice among the other voters [`within_reach`] (so that a leaving node's
/// groups spread over the others), and where it is dialled.
fn leaving_target(
    placement: FirstLeaders,
    group_idx: u32,
    metrics: &RaftMetrics<NodeId, Member>,
) -> Option<(NodeId, Member)> {
    let voters = voters_to_hand_to(metrics)?;
    let others = voters.into_iter().filter(|id| *id != metrics.id);
    let ready: Vec<NodeId> = others.filter(|id| within_reach(metrics, *id)).collect();
    member(metrics, placement.leader_among(ready.into_iter(), group_idx)?)
}

/// The group's voters, if this node leads it and its membership is not changing.
fn voters_to_hand_to(metrics: &RaftMetrics<NodeId, Member>) -> Option<BTreeSet<NodeId>> {
    let membership = metrics.membership_config.membership();
    let leads = metrics.current_leader == Some(metrics.id);
    if !leads || membership.get_joint_config().len() != 1 {
        return None;
    }
    Some(membership.voter_ids().collect())
}

/// Whether voter `id`'s replica trails this leader's log by at most
/// [`HAND_OVER_LAG_MAX`] entries.
fn within_reach(metrics: &RaftMetrics<NodeId, Member>, id: NodeId) -> bool {
    match (matched(metrics, id), metrics.last_log_index) {
        (Some(matched), Some(last)) => last.saturating_sub(matched.index) <= HAND_OVER_LAG_MAX,
        _ => false,
    }
}

/// Node `id` and where it is dialled, by the membership of `metrics`.
fn member(metrics: &RaftMetrics<NodeId, Member>, id: NodeId) -> Option<(NodeId, Member)> {
    let member = metrics.membership_config.membership().get_node(&id)?;
    Some((id, member.clone()))
}

/// The last log id of this leader's log that `target` is known to hold.
fn matched(metrics: &RaftMetrics<NodeId, Member>, target: NodeId) -> Option<LogId> {
    metrics.replication.as_ref()?.get(&target).copied().flatten()
}

/// What a voter does with its group's leader's `order` (`Campaign`); answers why it
/// refuses, if it does.
pub(crate) async fn take_order(
    raft: &Raft,
    placement: FirstLeaders,
    group_idx: u32,
    order: Order,
) -> Result<(), String> {
    match order {
        Order::Campaign(order) => campaign_here(raft, placement, group_idx, order).await,
        Order::HoldElections { for_ms } => {
            hold_elections(raft, Duration::from_millis(for_ms));
            Ok(())
        }
    }
}

/// Has `raft` start no election on its own for `hold` (an order to campaign still
/// starts one). A later hold may end sooner than asked, when an earlier one's ends: the
/// node then only elects as it always may.
fn hold_elections(raft: &Raft, hold: Duration) {
    raft.runtime_config().elect(false);
    let raft = raft.clone();
    tokio::spawn(async move {
        tokio::time::sleep(hold).await;
        raft.runtime_config().elect(true);
    });
}

/// What a voter does when its group's leader hands the group to it (`Campaign`): once it
/// has applied the leader's last log id, if `placement` puts the group here or the leader
/// is leaving, it starts an election. Answers why not otherwise. An order that comes late
/// (its leader gave up and proposes again, or was deposed) or twice is refused: this
/// replica's log must end at that log id, an entry of the leader it follows in its term.
async fn campaign_here(
    raft: &Raft,
    placement: FirstLeaders,
    group_idx: u32,
    order: CampaignOrder,
) -> Result<(), String> {
    let last = order.last;
    if !order.leaving {
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let here = placement.leader_among(voters.into_iter(), group_idx);
        if here != Some(metrics.id) {
            let there = here.map_or_else(|| "no voter".to_owned(), |id| format!("node {id}"));
            return Err(format!(
                "node {}'s placement (`--first-leaders {placement}`) puts group {group_idx} on \
                 {there}: give every node the same placement",
                metrics.id
            ));
        }
    }
    let applied = |metrics: &RaftMetrics<NodeId, Member>| metrics.last_applied >= Some(last);
    let what = format!("applying log id {last} of group {group_idx}");
    let seen = until(raft, Some(CAMPAIGN_APPLY_WAIT_MAX), what, applied).await?;
    let leader = last.leader_id;
    let current = seen.current_leader == Some(leader.node_id) && seen.current_term == leader.term;
    if !current || seen.last_log_index != Some(last.index) {
        return Err(format!(
            "group {group_idx}: an order to campaign at log id {last} from its leader, while this \
             replica follows {:?} in term {} and its log ends at {:?}",
            seen.current_leader, seen.current_term, seen.last_log_index
        ));
    }
    raft.trigger().elect().await.map_err(|e| e.to_string())?;
    let group_label = group_idx.to_string();
    metrics::counter!("solrouter_ledger_hand_overs_taken_total", "group" => group_label)
        .increment(1);
    Ok(())
}

/// `raft`'s metrics once `condition` holds of them, within `timeout` (`None`: the caller
/// bounds the wait); why not otherwise, naming `what` was awaited.
pub(crate) async fn until(
    raft: &Raft,
    timeout: Option<Duration>,
    what: String,
    condition: impl Fn(&RaftMetrics<NodeId, Member>) -> bool + Send,
) -> Result<RaftMetrics<NodeId, Member>, String> {
    let wait = raft.wait(timeout);
    wait.metrics(condition, what).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A voter asked to take a group its own placement puts on another node refuses, and
    /// does not campaign: two nodes given different placements never pass a group back
    /// and forth.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_voter_refuses_a_group_its_placement_puts_elsewhere() {
        // Spread: node 2 leads group 1.
        let (_dirs, nodes, seen) = crate::node::three_local_nodes(2, 2, 1).await;
        let membership = seen.membership_config.membership();
        let member = |id: NodeId| membership.get_node(&id).unwrap().clone();
        let from = Identity { node_id: 2, incarnation: member(2).incarnation };
        let last = seen.last_applied.unwrap();
        // Node 1 judges by the voters it knows: wait until it has the leader's membership
        // (without it, it finds no voter and refuses for that reason instead).
        let known = *seen.membership_config.log_id();
        let node_1_raft = nodes[0].group_at(1).unwrap().raft();
        let what = "node 1 knows the membership".to_owned();
        let knows = move |metrics: &RaftMetrics<NodeId, Member>| {
            metrics.membership_config.log_id() >= &known
        };
        until(node_1_raft, Some(Duration::from_secs(20)), what, knows).await.unwrap();

        let node_1 = member(1);
        let order = Order::Campaign(CampaignOrder { last, leaving: false });
        let asked = grpc_network::campaign(from, 1, &node_1, order, None, HAND_OVER_TIMEOUT);
        let refusal = asked.await.unwrap_err().to_string();
        assert!(refusal.contains("puts group 1 on node 2"), "{refusal}");
        assert!(refusal.contains("`--first-leaders spread`"), "{refusal}");
        let term_at_1 = nodes[0].group_at(1).unwrap().raft().metrics().borrow().current_term;
        assert_eq!(term_at_1, seen.current_term, "node 1 did not campaign");
        for node in nodes {
            node.shutdown().await.unwrap();
        }
    }
}
