//! Invariants checked while a run goes on, at the moment they could first break, rather
//! than once at the end:
//! * a node's recovered vote is never below a vote it saved before the crash (a vote is
//!   saved when `save_vote` returns: openraft then acts on it, answering the candidate);
//! * the entry at (group, index) never changes once applied anywhere;
//! * an acknowledged command never disappears: the entry it was first applied in stays on
//!   the stable storage (log, or a snapshot covering it) of a majority of its group's
//!   voters (while a membership change is under way, of one voter set the group may have),
//!   checked after every crash, when unsynced writes are lost. A node whose disk was wiped
//!   counts as holding it: its peers refuse its new incarnation (`incarnation.rs`), so
//!   it can never help elect a leader without the entry.
//!
//! A violation panics; the run's panic hook turns it into the seed's failure.

use super::storage::Disk;
use crate::codec;
use crate::log_store::KEY_VOTE;
use crate::types::{Entry, NodeId};
use openraft::{EntryPayload, Vote};
use solrouter_ledger::{Fnv1a, OpId};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hasher;
use std::sync::Mutex;

#[derive(Default)]
pub struct Invariants {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The highest vote each node's replica of each group saved.
    votes: BTreeMap<(NodeId, u32), Vote<NodeId>>,
    /// The fingerprint of the entry first applied at (group, index), and where.
    applied: BTreeMap<(u32, u64), (u64, NodeId)>,
    /// The index of the first entry applied that holds each op id, per group.
    first_applied: BTreeMap<(u32, OpId), u64>,
    /// Entries holding an acknowledged command: (group, index) → fingerprint.
    acknowledged: BTreeMap<(u32, u64), u64>,
    /// Nodes whose disk was wiped.
    wiped: BTreeSet<NodeId>,
}

/// The fingerprint of an entry as stored: the same bytes the log holds.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    let mut hasher = Fnv1a::default();
    hasher.write(bytes);
    hasher.finish()
}

/// Whether `a ≥ b` in openraft's partial order of votes (two votes of one term for
/// different candidates are not comparable: neither is at least the other).
fn at_least(a: &Vote<NodeId>, b: &Vote<NodeId>) -> bool {
    matches!(a.partial_cmp(b), Some(Ordering::Greater | Ordering::Equal))
}

impl Invariants {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A violation panics with the lock held; the first panic is the one reported.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Node `node`'s `group` saved `vote` (its `save_vote` returned).
    pub fn vote_saved(&self, node: NodeId, group: u32, vote: Vote<NodeId>) {
        let mut state = self.lock();
        match state.votes.get(&(node, group)) {
            Some(before) if !at_least(&vote, before) => panic!(
                "node {node} group {group} saved vote {vote} after saving {before}: a vote went \
                 back"
            ),
            _ => state.votes.insert((node, group), vote),
        };
    }

    /// Node `node` restarts from `disk`: each group's vote on it must be at least the
    /// last one that group saved before the crash.
    pub fn restarting(&self, node: NodeId, n_groups: u32, disk: &Disk) {
        let state = self.lock();
        for group in 0..n_groups {
            let Some(saved) = state.votes.get(&(node, group)) else { continue };
            let meta = disk.get(&format!("{group}/meta"));
            let recovered: Option<Vote<NodeId>> = meta
                .and_then(|meta| meta.get(KEY_VOTE))
                .map(|bytes| codec::decode(bytes).expect("a saved vote decodes"));
            assert!(
                recovered.is_some_and(|recovered| at_least(&recovered, saved)),
                "node {node} group {group} restarts with vote {recovered:?}, below the vote \
                 {saved} it saved before crashing: it may vote twice in a term"
            );
        }
    }

    /// Node `node`'s disk was wiped: its saved votes are gone with it, and it comes back
    /// as an incarnation its peers refuse.
    pub fn wiped(&self, node: NodeId) {
        let mut state = self.lock();
        state.votes.retain(|(voter, _), _| *voter != node);
        state.wiped.insert(node);
    }

    pub fn is_wiped(&self, node: NodeId) -> bool {
        self.lock().wiped.contains(&node)
    }

    /// Node `node`'s replica of `group` applies `entry`.
    pub fn entry_applied(&self, node: NodeId, group: u32, entry: &Entry) {
        let bytes = codec::encode(entry).expect("an entry encodes");
        let print = fingerprint(&bytes);
        let index = entry.log_id.index;
        let mut state = self.lock();
        match state.applied.get(&(group, index)) {
            Some((first, first_node)) => assert_eq!(
                *first, print,
                "group {group} index {index}: node {node} applied {:?}, node {first_node} \
                 applied a different entry there",
                entry.log_id
            ),
            None => {
                state.applied.insert((group, index), (print, node));
            }
        }
        if let EntryPayload::Normal(batch) = &entry.payload {
            for command in &batch.commands {
                state.first_applied.entry((group, command.id)).or_insert(index);
            }
        }
    }

    /// A client received an outcome for `op` from `group`: the entry it was first
    /// applied in must survive from now on. (A command refused before it reached the
    /// log has none.)
    pub fn acknowledged(&self, group: u32, op: OpId) {
        let mut state = self.lock();
        let Some(index) = state.first_applied.get(&(group, op)).copied() else { return };
        let (print, _) = state.applied[&(group, index)];
        state.acknowledged.insert((group, index), print);
    }

    /// After a crash: every entry holding an acknowledged command is still on the stable
    /// storage of a majority of its group's voters, in its log or under its snapshot.
    /// `voters[group]` are the voter sets the group may have now (while a membership
    /// change is under way, the one before it and those it may have left): the entry
    /// must be on a majority of one of them. A removed voter's disk no longer counts.
    pub fn check_durable(&self, disks: &BTreeMap<NodeId, Disk>, voters: &[Vec<BTreeSet<NodeId>>]) {
        let state = self.lock();
        let groups: BTreeSet<u32> = state.acknowledged.keys().map(|(group, _)| *group).collect();
        // Per node and group: the index its saved snapshot covers.
        let covered: BTreeMap<(NodeId, u32), u64> = disks
            .iter()
            .flat_map(|(node, disk)| groups.iter().map(move |group| (*node, *group, disk)))
            .filter_map(|(node, group, disk)| {
                let tree = disk.get(&format!("{group}/snapshot"))?;
                Some(((node, group), crate::state_machine::stored_snapshot_index(tree)?))
            })
            .collect();
        for (&(group, index), &print) in &state.acknowledged {
            let holds = |node: &NodeId| {
                let logged = disks
                    .get(node)
                    .and_then(|disk| disk.get(&format!("{group}/log")))
                    .and_then(|log| log.get(&index.to_be_bytes()[..]))
                    .is_some_and(|bytes| fingerprint(bytes) == print);
                logged
                    || covered.get(&(*node, group)).is_some_and(|covered| *covered >= index)
                    || state.wiped.contains(node)
            };
            let counts: Vec<(usize, usize)> = voters[group as usize]
                .iter()
                .map(|voters| (voters.iter().filter(|node| holds(node)).count(), voters.len()))
                .collect();
            assert!(
                counts.iter().any(|(n_holders, n_voters)| *n_holders > n_voters / 2),
                "group {group} index {index}: an acknowledged entry is on the stable storage \
                 of only (holders, voters) {counts:?} of the group's possible voter sets"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId};
    use solrouter_ledger::{AccountId, Batch, Command, Op};

    fn entry(term: u64, index: u64, op: u128) -> Entry {
        let account = AccountId(1);
        let command =
            Command { id: OpId(op), op: Op::CreateAccount { account, name: op.to_string() } };
        let batch = Batch { stamp_ms: 1, commands: vec![command] };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(batch.into()),
        }
    }

    fn disk_with(log: &[&Entry]) -> Disk {
        let tree = log
            .iter()
            .map(|e| (e.log_id.index.to_be_bytes().to_vec(), codec::encode(e).unwrap()))
            .collect();
        [("0/log".to_owned(), tree)].into_iter().collect()
    }

    #[test]
    #[should_panic(expected = "applied a different entry there")]
    fn a_different_entry_applied_at_an_index_fails() {
        let invariants = Invariants::default();
        invariants.entry_applied(1, 0, &entry(1, 5, 10));
        invariants.entry_applied(2, 0, &entry(1, 5, 10));
        invariants.entry_applied(3, 0, &entry(2, 5, 11));
    }

    #[test]
    #[should_panic(expected = "below the vote")]
    fn a_recovered_vote_below_a_saved_one_fails() {
        let invariants = Invariants::default();
        invariants.vote_saved(1, 0, Vote::new(3, 2));
        let older = codec::encode(&Vote::<NodeId>::new(2, 2)).unwrap();
        let meta = [(KEY_VOTE.to_vec(), older)].into_iter().collect();
        invariants.restarting(1, 1, &[("0/meta".to_owned(), meta)].into_iter().collect());
    }

    #[test]
    fn an_acknowledged_entry_must_stay_on_a_majority() {
        let invariants = Invariants::default();
        let acknowledged = entry(1, 1, 10);
        invariants.entry_applied(1, 0, &acknowledged);
        invariants.acknowledged(0, OpId(10));
        let holding = disk_with(&[&acknowledged]);
        let other = disk_with(&[&entry(2, 1, 11)]);
        let voters = [vec![BTreeSet::from([1, 2, 3])]];
        let two_of_three = [(1, holding.clone()), (2, holding.clone()), (3, other.clone())];
        invariants.check_durable(&two_of_three.into_iter().collect(), &voters);
        // Node 1 was removed, node 4 added: two of the voters {2, 3, 4} must hold it.
        let four: BTreeMap<NodeId, Disk> =
            [(1, holding.clone()), (2, holding.clone()), (3, other.clone()), (4, other.clone())]
                .into_iter()
                .collect();
        let lost = std::panic::catch_unwind(|| {
            invariants.check_durable(&four, &[vec![BTreeSet::from([2, 3, 4])]]);
        });
        assert!(lost.is_err(), "an entry on one voter of three passed");
        // While that change may be under way, the voters before it count too.
        let changing = [vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([2, 3, 4])]];
        invariants.check_durable(&four, &changing);
        let one_of_three = [(1, holding), (2, other.clone()), (3, other)];
        let lost = std::panic::catch_unwind(|| {
            invariants.check_durable(&one_of_three.into_iter().collect(), &voters);
        });
        assert!(lost.is_err(), "an entry on one node of three passed");
    }
}
