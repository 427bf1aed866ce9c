//! Which copy of a node's data a Raft RPC comes from and is meant for (issue 9, item 2).
//!
//! Raft's safety rests on a voter never forgetting its vote or an entry it acknowledged. A
//! node whose disk is wiped and that comes back under the same id breaks that: entry E
//! acknowledged by A and B, B wiped, A down, and C (without E) wins the vote of the empty
//! B, so E is gone. So the first open of a data directory writes an [`Identity`] into it:
//! the node id and a random incarnation, durably, before anything else. Every member of
//! a group's membership carries the incarnation it joined with
//! ([`Member`](crate::types::Member)), learned from the node itself when it is added
//! (`membership.rs`) or founded (`node.rs`), and every Raft RPC travels [`Stamped`] with
//! the sender's id and incarnation and the incarnation it means to reach. A node refuses
//! ([`admit`]) an RPC meant for another incarnation of itself (it is the wiped copy: it
//! must not vote or acknowledge) and one from a sender whose incarnation differs from the
//! one its membership records. A refused vote is not a vote: the wiped node cannot help
//! elect anyone, whatever its operator did, until it is removed and added under a new id.

use crate::codec;
use crate::kv::{Durability, KvTree};
use crate::types::{Member, NodeId};
use openraft::Membership;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A random number drawn when a data directory is first opened; a wiped or replaced data
/// directory draws another.
pub type Incarnation = u128;

/// The tree, and its key, of a data directory's [`Identity`].
pub const IDENTITY_TREE: &str = "node";
const KEY_IDENTITY: &[u8] = b"identity";

/// Who a data directory belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: NodeId,
    pub incarnation: Incarnation,
}

/// A Raft RPC as it crosses the network (a request is a `Stamped<openraft request>`).
#[derive(Serialize, Deserialize)]
pub struct Stamped<Q> {
    pub from: NodeId,
    pub from_incarnation: Incarnation,
    /// The incarnation the sender's membership records for the target.
    pub to_incarnation: Incarnation,
    pub rpc: Q,
}

/// What a node says about itself when asked (before it is added, and before a cluster is
/// founded): its identity and, merged over its groups, the members it knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identified {
    pub identity: Identity,
    /// Member id → incarnation, from every group's membership; empty on a node that has
    /// never been part of a cluster.
    pub members: BTreeMap<NodeId, Incarnation>,
}

/// The command an operator runs to bring back a node whose data directory was lost.
pub fn rejoin_advice(id: NodeId) -> String {
    format!(
        "remove it (`solrouter ledger-admin remove-node --id {id}`), then start this node \
         with an empty data directory under a new id (`solrouter ledger --join --id <new id>`) \
         and add it (`solrouter ledger-admin add-node --id <new id> --addr <host:port>`)"
    )
}

/// The identity of the data directory whose store holds `tree`, if it has one. A data
/// directory of another node is refused: its log is that node's, and votes and entries
/// must never move between ids.
pub fn load<K: KvTree>(tree: &K, node_id: NodeId) -> Result<Option<Identity>, String> {
    let stored = tree.get(KEY_IDENTITY).map_err(|e| format!("reading its identity: {e}"))?;
    let Some(bytes) = stored else { return Ok(None) };
    let identity: Identity =
        codec::decode(bytes.as_ref()).map_err(|e| format!("reading its identity: {e}"))?;
    if identity.node_id != node_id {
        return Err(format!(
            "it belongs to node {} (incarnation {:032x}), not node {node_id}: start node {} with \
             it, and node {node_id} with its own data directory",
            identity.node_id, identity.incarnation, identity.node_id
        ));
    }
    Ok(Some(identity))
}

/// Writes, durably, the identity of a data directory that has none: node `node_id`, with
/// the `fresh` incarnation (drawn at random by the caller).
pub async fn create<K: KvTree>(
    tree: &K,
    node_id: NodeId,
    fresh: Incarnation,
) -> Result<Identity, String> {
    let identity = Identity { node_id, incarnation: fresh };
    let bytes = codec::encode(&identity).map_err(|e| format!("encoding its identity: {e}"))?;
    let written = tree.write(vec![(KEY_IDENTITY.to_vec(), Some(bytes))], Durability::Durable);
    written.await.map_err(|e| format!("writing its identity: {e}"))?;
    Ok(identity)
}

/// [`load`], or on a data directory's first open, [`create`].
pub async fn load_or_create<K: KvTree>(
    tree: &K,
    node_id: NodeId,
    fresh: Incarnation,
) -> Result<Identity, String> {
    match load(tree, node_id)? {
        Some(identity) => Ok(identity),
        None => create(tree, node_id, fresh).await,
    }
}

/// Why a node refuses a Raft RPC.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "node {id} of this cluster is incarnation {expected:032x}, but this node's data \
         directory is incarnation {own:032x}: it was wiped or replaced, so it must not vote or \
         acknowledge entries as node {id} again; {advice}",
        advice = rejoin_advice(*.id)
    )]
    NotThisIncarnation { id: NodeId, own: Incarnation, expected: Incarnation },
    #[error(
        "node {from} is incarnation {recorded:032x} in this group's membership, but the RPC \
         comes from incarnation {sent:032x}: its data directory was wiped or replaced; {advice}",
        advice = rejoin_advice(*.from)
    )]
    StaleSender { from: NodeId, recorded: Incarnation, sent: Incarnation },
}

/// Whether node `own` admits an RPC stamped `from`/`from_incarnation`/`to_incarnation`,
/// given its group's current `membership` (joint configurations included). A sender the
/// membership does not know yet (a node being added, a founder before the first entry
/// arrives) is admitted: the check is that of an incarnation the membership does know.
pub fn admit(
    own: &Identity,
    membership: &Membership<NodeId, Member>,
    from: NodeId,
    from_incarnation: Incarnation,
    to_incarnation: Incarnation,
) -> Result<(), Refusal> {
    if to_incarnation != own.incarnation {
        return Err(Refusal::NotThisIncarnation {
            id: own.node_id,
            own: own.incarnation,
            expected: to_incarnation,
        });
    }
    match membership.get_node(&from) {
        Some(member) if member.incarnation != from_incarnation => {
            Err(Refusal::StaleSender { from, recorded: member.incarnation, sent: from_incarnation })
        }
        _ => Ok(()),
    }
}

/// Every member id and incarnation of `memberships`, merged.
pub fn members<'a>(
    memberships: impl IntoIterator<Item = &'a Membership<NodeId, Member>>,
) -> BTreeMap<NodeId, Incarnation> {
    let nodes = memberships.into_iter().flat_map(|membership| membership.nodes());
    nodes.map(|(id, member)| (*id, member.incarnation)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::storage::{Disk, MemStore};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeSet;

    #[tokio::test(start_paused = true)]
    async fn a_data_directory_keeps_its_identity_and_refuses_another_node() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut fresh = move || rng.gen::<Incarnation>();
        let store = MemStore::new(Disk::new(), StdRng::seed_from_u64(1));
        let tree = store.tree(IDENTITY_TREE);
        let first = load_or_create(&tree, 2, fresh()).await.unwrap();
        assert_eq!(load_or_create(&tree, 2, fresh()).await.unwrap(), first);
        let store = MemStore::new(store.crash(), StdRng::seed_from_u64(1));
        let tree = store.tree(IDENTITY_TREE);
        assert_eq!(load_or_create(&tree, 2, fresh()).await.unwrap(), first, "it was durable");
        let refused = load_or_create(&tree, 3, fresh()).await.unwrap_err();
        assert!(refused.starts_with("it belongs to node 2 (incarnation"), "{refused}");
        let wiped = MemStore::new(Disk::new(), StdRng::seed_from_u64(1));
        let again = load_or_create(&wiped.tree(IDENTITY_TREE), 2, fresh()).await.unwrap();
        assert_ne!(again.incarnation, first.incarnation, "a wiped directory is another copy");
    }

    #[test]
    fn rpcs_for_or_from_another_incarnation_are_refused() {
        let member = |incarnation| Member { addr: String::new(), incarnation };
        let nodes = BTreeMap::from([(1, member(11)), (2, member(22)), (3, member(33))]);
        let membership = Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes);
        let b = Identity { node_id: 2, incarnation: 22 };
        assert_eq!(admit(&b, &membership, 3, 33, 22), Ok(()));
        assert_eq!(admit(&b, &membership, 4, 44, 22), Ok(()), "a node being added");
        let wiped_b = Identity { node_id: 2, incarnation: 99 };
        let refused = admit(&wiped_b, &Membership::default(), 3, 33, 22).unwrap_err();
        assert_eq!(refused, Refusal::NotThisIncarnation { id: 2, own: 99, expected: 22 });
        let message = refused.to_string();
        assert!(message.contains("must not vote"), "{message}");
        assert!(message.contains("ledger-admin remove-node --id 2"), "{message}");
        let stale = admit(&b, &membership, 3, 34, 22).unwrap_err();
        assert_eq!(stale, Refusal::StaleSender { from: 3, recorded: 33, sent: 34 });
        assert_eq!(members([&membership]).get(&3), Some(&33));
    }
}
