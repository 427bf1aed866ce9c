//! Founding a cluster ([`ClusterStart::Bootstrap`](crate::ClusterStart)): the founders
//! say who they are, the founding member (the lowest founder id) decides the founding
//! membership, and each group is initialized with it by the founder that is to lead it
//! first ([`FirstLeaders`]): by default the groups' first leaders are spread over the
//! founders.
//!
//! Where a group's first leader is elected, it stays until that node fails: openraft 0.9
//! has no leadership transfer, and a follower refuses votes while its leader's lease
//! lasts. Had the founding member initialized every group, it would lead them all, and
//! the other founders would only follow. The node that initializes a group campaigns at
//! once while the other replicas are still empty, so it is elected; the founding member
//! therefore sends each founder the membership to initialize its groups with (`Found`).
//! A founder that cannot be reached (or runs a version without `Found`) has its groups
//! initialized by the founding member with the same membership: openraft allows
//! `initialize` on several nodes with identical memberships (the vote decides the
//! leader), never with different ones, so the membership is decided once, here.

use crate::error::LedgerError;
use crate::grpc_network;
use crate::incarnation::{self, Identified, Identity, Incarnation};
use crate::node::{Inner, LedgerNode};
use crate::tls::TlsConfig;
use crate::types::{Member, NodeId, Raft};
use openraft::error::{InitializeError, RaftError};
use std::collections::BTreeMap;
use std::sync::Weak;
use std::time::Duration;

/// Initializes a group's membership on first start. One whose log already holds one (from
/// its own earlier start or from a peer) gets `NotAllowed`, which is success here.
pub(crate) async fn bootstrap(
    raft: &Raft,
    members: BTreeMap<u64, Member>,
) -> Result<(), LedgerError> {
    // A restart finds its log initialized: skip the call, which openraft would log as an
    // error. A peer may still initialize this node in between; `NotAllowed` covers that.
    let initialized = raft.is_initialized().await;
    if initialized.map_err(|fatal| LedgerError::from_fatal("bootstrapping", fatal))? {
        return Ok(());
    }
    match raft.initialize(members).await {
        Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(RaftError::APIError(e)) => {
            Err(LedgerError::Unavailable { reason: format!("bootstrap failed: {e}") })
        }
        Err(RaftError::Fatal(fatal)) => Err(LedgerError::from_fatal("bootstrapping", fatal)),
    }
}

/// How long a founder waits for each other founder to say who it is, at each start.
pub const FOUNDER_IDENTIFY_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the founding member asks again until every founder has answered.
pub const FOUNDING_RETRY_INTERVAL: Duration = Duration::from_millis(200);

/// Each other founder's id, address and what it said of itself (`None`: no answer).
pub(crate) type Founders = Vec<(NodeId, String, Option<Identified>)>;

/// Asks every founder but node `id` who it is, all at once.
pub(crate) async fn ask_founders(
    id: NodeId,
    peers: &BTreeMap<u64, String>,
    tls: Option<&TlsConfig>,
) -> Founders {
    let others = peers.iter().filter(|(peer, _)| **peer != id);
    let asking = others.map(|(id, addr)| async move {
        let answer = grpc_network::identify(addr, tls, FOUNDER_IDENTIFY_TIMEOUT).await;
        (*id, addr.clone(), answer.ok())
    });
    futures_util::future::join_all(asking).await
}

/// Refuses node `id`, whose data directory is incarnation `own` (`None`: it has none
/// yet), if a founder's membership records it under another incarnation: its data
/// directory is not the one the cluster knows (wiped, or another cluster's), and voting
/// with it could lose acknowledged entries. Founders that did not answer are checked by
/// the Raft RPCs instead (`incarnation::admit`).
pub(crate) fn refuse_if_known_otherwise(
    id: NodeId,
    own: Option<Incarnation>,
    founders: &Founders,
) -> Result<(), String> {
    for (peer, addr, answer) in founders {
        let known = answer.as_ref().and_then(|answer| answer.members.get(&id));
        if let Some(known) = known.filter(|known| Some(**known) != own) {
            let this = match own {
                Some(own) => format!("is incarnation {own:032x}"),
                None => "is empty".to_owned(),
            };
            return Err(format!(
                "node {peer} ({addr}) knows node {id} as incarnation {known:032x}, but this data \
                 directory {this}: it was wiped or replaced, and node {id} must not vote again \
                 without what it acknowledged; {}",
                incarnation::rejoin_advice(id)
            ));
        }
    }
    Ok(())
}

/// The founding member (the lowest founder id) founds the cluster: once every other
/// founder has said who it is and none belongs to a cluster (other than this founding,
/// when a crash cut it short between groups), it has every group initialized with all
/// founders and their incarnations, each by its first leader ([`found_group`]). A
/// founder that belongs to one already means the cluster was founded and this node's
/// data directory was lost, or a founder's is another cluster's: it logs why and founds
/// nothing.
pub(crate) async fn found(
    node: Weak<Inner>,
    identity: Identity,
    peers: BTreeMap<u64, String>,
    placement: FirstLeaders,
    tls: Option<TlsConfig>,
) {
    let founders = loop {
        let founders = ask_founders(identity.node_id, &peers, tls.as_ref()).await;
        if founders.iter().all(|(_, _, answer)| answer.is_some()) {
            break founders;
        }
        tokio::time::sleep(FOUNDING_RETRY_INTERVAL).await;
    };
    let members = match founding_members(identity, &peers[&identity.node_id], &founders) {
        Ok(members) => members,
        Err(refusal) => {
            tracing::error!("not founding the cluster: {refusal}");
            return;
        }
    };
    let Some(node) = LedgerNode::from_weak(&node) else { return };
    let groups = (0..).zip(node.groups());
    let founding = groups.map(|(group_idx, group)| {
        let leader = placement.leader_among(members.keys().copied(), group_idx);
        let leader = leader.expect("the founding members include this node");
        found_group(group.raft(), group_idx, leader, identity, &members, tls.as_ref())
    });
    let founded = futures_util::future::join_all(founding).await;
    if let Some(e) = founded.into_iter().find_map(Result::err) {
        tracing::error!("founding the cluster: {e}");
        return;
    }
    tracing::info!("founded the cluster: {:?}", members.keys().collect::<Vec<_>>());
}

/// The founding membership: this node (`identity`, at `own_addr`) and every other
/// founder, once all have answered, with their incarnations. Refused if a founder knows
/// this node under another incarnation, answers with another id, or knows members other
/// than these (another cluster's; the same founders are fine: a founding a crash cut
/// short between groups).
fn founding_members(
    identity: Identity,
    own_addr: &str,
    founders: &Founders,
) -> Result<BTreeMap<NodeId, Member>, String> {
    refuse_if_known_otherwise(identity.node_id, Some(identity.incarnation), founders)?;
    let mut members =
        BTreeMap::from([(identity.node_id, Member::new(own_addr, identity.incarnation))]);
    let mut answers = Vec::with_capacity(founders.len());
    for (id, addr, answer) in founders {
        let answer = answer.as_ref().ok_or_else(|| format!("node {id} ({addr}) did not answer"))?;
        members.insert(*id, Member::new(addr, answer.identity.incarnation));
        answers.push((*id, addr, answer));
    }
    for (id, addr, answer) in answers {
        let founding = |(member, incarnation): (&NodeId, &Incarnation)| {
            members.get(member).is_some_and(|m| m.incarnation == *incarnation)
        };
        if answer.identity.node_id != id || !answer.members.iter().all(founding) {
            return Err(format!(
                "the founder at {addr} is node {} and knows members {:?}; every founder must be \
                 the node its id names, with an empty data directory, on the cluster's first \
                 start",
                answer.identity.node_id,
                answer.members.keys().collect::<Vec<_>>()
            ));
        }
    }
    Ok(members)
}

/// How long the founding member waits for a founder to initialize a group it is to lead
/// first: one entry appended and synced.
pub const FOUND_GROUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Where each group's leader belongs: the founding member has each group initialized,
/// and so first led, by that founder, and a leader elected elsewhere hands the group back
/// to that voter once it is up and caught up (`leadership.rs`). Every node should be given
/// the same placement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FirstLeaders {
    /// The founders in id order take the groups in turn (group 0 the founding member's):
    /// every node leads about as many groups, so the leaders' work is spread. For a
    /// cluster whose nodes are equally near its gateways (one region).
    #[default]
    Spread,
    /// The founding member leads every group: for a cluster across regions whose traffic
    /// comes mostly from the founding member's, where a reserve then crosses no region to
    /// reach its leader (`deploy/TOPOLOGY.md`).
    Founder,
}

impl FirstLeaders {
    /// Which of `voters` (in id order) group `group_idx`'s leader belongs on: the founder
    /// that initializes it, of the founding members; the voter a leader hands it to, of
    /// its voters. `None` without voters.
    pub(crate) fn leader_among(
        self,
        mut voters: impl ExactSizeIterator<Item = NodeId>,
        group_idx: u32,
    ) -> Option<NodeId> {
        let turn = match self {
            FirstLeaders::Spread => group_idx as usize % voters.len().max(1),
            FirstLeaders::Founder => 0,
        };
        voters.nth(turn)
    }
}

/// As `--first-leaders` takes it.
impl std::fmt::Display for FirstLeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FirstLeaders::Spread => "spread",
            FirstLeaders::Founder => "founder",
        })
    }
}

impl std::str::FromStr for FirstLeaders {
    type Err = String;

    fn from_str(placement: &str) -> Result<FirstLeaders, String> {
        match placement {
            "spread" => Ok(FirstLeaders::Spread),
            "founder" => Ok(FirstLeaders::Founder),
            other => Err(format!("first leaders `{other}`: expected `spread` or `founder`")),
        }
    }
}

/// Has group `group_idx` (this node's replica: `raft`) initialized with `members` by
/// founder `leader`; here if that is this node, or if it cannot be asked or does not
/// answer (see the module's doc).
async fn found_group(
    raft: &Raft,
    group_idx: u32,
    leader: NodeId,
    identity: Identity,
    members: &BTreeMap<NodeId, Member>,
    tls: Option<&TlsConfig>,
) -> Result<(), LedgerError> {
    if leader != identity.node_id {
        let asked =
            grpc_network::found(identity, group_idx, leader, members, tls, FOUND_GROUP_TIMEOUT);
        match asked.await {
            Ok(()) => return Ok(()),
            Err(e) => tracing::warn!(
                "founder {leader} did not found group {group_idx} ({e}); founding it here, with \
                 the same members"
            ),
        }
    }
    bootstrap(raft, members.clone()).await
}

/// Initializes this node's replica of a group (`raft`) with the founding `members` the
/// founding member sent (`Found`), if they record this node as it is.
pub(crate) async fn found_here(
    raft: &Raft,
    identity: Identity,
    members: BTreeMap<NodeId, Member>,
) -> Result<(), String> {
    let recorded = members.get(&identity.node_id).map(|member| member.incarnation);
    if recorded != Some(identity.incarnation) {
        return Err(format!(
            "node {} is incarnation {:032x}, which the founding members {:?} do not record",
            identity.node_id,
            identity.incarnation,
            members.keys().collect::<Vec<_>>()
        ));
    }
    bootstrap(raft, members).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Founding needs every founder's answer; a founder that knows this node under another
    /// incarnation, is another node, or knows another cluster's members stops it; one
    /// that knows only this founding (cut short by a crash) does not.
    #[test]
    fn founding_takes_every_founder_with_its_incarnation_and_nothing_else() {
        let me = Identity { node_id: 1, incarnation: 11 };
        let answer = |node_id, incarnation, members: &[(NodeId, Incarnation)]| {
            Some(Identified {
                identity: Identity { node_id, incarnation },
                members: members.iter().copied().collect(),
            })
        };
        let founders = |third: Option<Identified>| -> Founders {
            vec![(2, "h:2".to_owned(), answer(2, 22, &[])), (3, "h:3".to_owned(), third)]
        };
        let check = |third: Option<Identified>| founding_members(me, "h:1", &founders(third));
        let members = check(answer(3, 33, &[])).unwrap();
        let incarnations: Vec<_> = members.iter().map(|(id, m)| (*id, m.incarnation)).collect();
        assert_eq!(incarnations, [(1, 11), (2, 22), (3, 33)]);
        assert_eq!(members[&3].addr, "h:3");
        let resumed = check(answer(3, 33, &[(1, 11), (2, 22), (3, 33)]));
        assert_eq!(resumed.unwrap(), members);
        let error = |third| check(third).unwrap_err();
        assert!(error(None).contains("node 3 (h:3) did not answer"));
        assert!(error(answer(3, 33, &[(1, 10), (3, 33)])).contains("knows node 1 as incarnation"));
        assert!(error(answer(3, 33, &[(3, 33), (7, 77)])).contains("knows members [3, 7]"));
        assert!(error(answer(4, 44, &[])).contains("the founder at h:3 is node 4"));
    }

    /// A founder that cannot be asked (down since it answered, or of a version without
    /// `Found`) has its group founded by the founding member, with the same members; a
    /// founding that does not record this node as it is is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_founder_that_cannot_be_asked_has_its_group_founded_here() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, absent) = (crate::free_local_addr(), crate::free_local_addr());
        let peers = BTreeMap::from([(1, addr.clone()), (2, absent.clone())]);
        let node = LedgerNode::open(1, &peers, dir.path(), 2).await.unwrap();
        let identity = grpc_network::identify(&addr, None, FOUNDER_IDENTIFY_TIMEOUT).await;
        let identity = identity.unwrap().identity;
        let members = BTreeMap::from([
            (1, Member::new(addr, identity.incarnation)),
            (2, Member::new(absent, 22)),
        ]);
        let raft = node.groups()[1].raft();
        assert!(!raft.is_initialized().await.unwrap());
        found_group(raft, 1, 2, identity, &members, None).await.unwrap();
        assert!(raft.is_initialized().await.unwrap());
        // The metrics follow the log a moment later.
        let waiting = raft.wait(Some(Duration::from_secs(10)));
        let founded = |metrics: &openraft::RaftMetrics<NodeId, Member>| {
            let founded: BTreeMap<_, _> = metrics.membership_config.membership().nodes().collect();
            founded == members.iter().collect()
        };
        waiting.metrics(founded, "the founding members").await.unwrap();

        let stranger = Identity { node_id: 1, incarnation: identity.incarnation + 1 };
        let refusal = found_here(node.groups()[0].raft(), stranger, members).await.unwrap_err();
        assert!(refusal.contains("do not record"), "{refusal}");
        assert!(!node.groups()[0].raft().is_initialized().await.unwrap());
        node.shutdown().await.unwrap();
    }

    /// Spread, the founders take the groups in turn, in id order, whatever their ids; or
    /// the founding member takes them all.
    #[test]
    fn the_founders_lead_the_groups_in_turn_or_the_founding_member_all() {
        let members: BTreeMap<NodeId, Member> =
            [4, 9, 17].into_iter().map(|id| (id, Member::new(format!("h:{id}"), 0))).collect();
        let leaders = |placement: &str| -> Vec<NodeId> {
            let placement: FirstLeaders = placement.parse().unwrap();
            let ids = || members.keys().copied();
            (0..7).map(|group_idx| placement.leader_among(ids(), group_idx).unwrap()).collect()
        };
        assert_eq!(leaders("spread"), [4, 9, 17, 4, 9, 17, 4]);
        assert_eq!(leaders("founder"), [4; 7]);
        assert!("leader".parse::<FirstLeaders>().unwrap_err().contains("`spread` or `founder`"));
        for placement in [FirstLeaders::Spread, FirstLeaders::Founder] {
            assert_eq!(placement.to_string().parse(), Ok(placement));
        }
        assert_eq!(FirstLeaders::Spread.leader_among([2].into_iter(), 5), Some(2));
        assert_eq!(FirstLeaders::Spread.leader_among(std::iter::empty(), 5), None);
    }
}
