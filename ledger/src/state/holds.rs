//! The pending holds and their expiry order, in two tiers. Nearly every hold lives for one
//! request (milliseconds to seconds): it is made and ended in plain maps (`young`), which
//! change faster than persistent ones. A hold still pending after
//! [`YOUNG_ORDER_MAX`] later reserves (a stream that runs for minutes), or once more than
//! [`YOUNG_HOLDS_MAX`] are young, moves into persistent maps (`old`). A clone (a
//! snapshot's copy, taken under the lock every apply takes) copies the young tier, which
//! is bounded, and shares the old one, however many holds are pending: plain maps alone
//! copied in proportion to them (docs/benchmarks.md, "Session 49": 29.7 ms at 262,144
//! holds), persistent maps alone made every reserve and settle pay their copy-on-write
//! paths.
//!
//! Serialized as the persistent maps it replaced were (format 9): a map of every hold,
//! then the expiry order, postcard laying the pair out as two fields. Read back, every
//! hold is old: which tier a hold is in changes no outcome, only what a change costs.

use super::{HashMap, Hold, HoldId};
use imbl::OrdSet;
use serde::ser::{SerializeSeq, SerializeTuple};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{BTreeSet, VecDeque};

/// Most young holds: past it, the oldest young hold moves to the old tier. A clone copies
/// at most this many holds (~90 bytes each).
const YOUNG_HOLDS_MAX: usize = 8_192;
/// Most reserves remembered in the young tier's order: a hold still pending after this
/// many later reserves moves to the old tier.
const YOUNG_ORDER_MAX: usize = 2 * YOUNG_HOLDS_MAX;

type PlainMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The key of a hold in the expiry order.
type Expiring = (u64, HoldId);

#[derive(Clone, Debug, Default)]
pub(super) struct Holds {
    young: PlainMap<HoldId, Hold>,
    young_expiry: BTreeSet<Expiring>,
    /// The young holds' ids in the order they were made, with those ended since.
    young_order: VecDeque<HoldId>,
    old: HashMap<HoldId, Hold>,
    old_expiry: OrdSet<Expiring>,
}

impl Holds {
    /// Holds all old: as read from a snapshot.
    pub(super) fn from_persistent(
        old: HashMap<HoldId, Hold>,
        old_expiry: OrdSet<Expiring>,
    ) -> Holds {
        Holds { old, old_expiry, ..Holds::default() }
    }

    pub(super) fn get(&self, id: &HoldId) -> Option<&Hold> {
        self.young.get(id).or_else(|| self.old.get(id))
    }

    pub(super) fn contains_key(&self, id: &HoldId) -> bool {
        self.get(id).is_some()
    }

    pub(super) fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&HoldId, &Hold)> {
        self.young.iter().chain(self.old.iter())
    }

    /// Adds pending hold `id`, which must not be pending yet (a reserve looked it up
    /// first), as a young one.
    pub(super) fn insert(&mut self, id: HoldId, hold: Hold) {
        debug_assert!(!self.old.contains_key(&id), "a pending hold made again");
        let expiring = (hold.expires_at_ms, id);
        assert!(self.young.insert(id, hold).is_none(), "a pending hold made again");
        assert!(self.young_expiry.insert(expiring), "expiry index out of sync");
        self.young_order.push_back(id);
        self.age();
    }

    /// Takes pending hold `id` out of the holds and the expiry order.
    pub(super) fn remove(&mut self, id: &HoldId) -> Option<Hold> {
        self.remove_if(id, |_| true)
    }

    /// Takes pending hold `id` out of the holds and the expiry order if `take` says so of
    /// it, with one lookup of a young hold (a settle's usual case). A young hold `take`
    /// refuses (a settle naming another account, rare) is put back: `entry` would cost
    /// the same lookup, but reserves room in the map for a hold that is old or unknown.
    pub(super) fn remove_if(
        &mut self,
        id: &HoldId,
        take: impl FnOnce(&Hold) -> bool,
    ) -> Option<Hold> {
        let (hold, indexed) = match self.young.remove(id) {
            Some(hold) => {
                if !take(&hold) {
                    self.young.insert(*id, hold);
                    return None;
                }
                let indexed = self.young_expiry.remove(&(hold.expires_at_ms, *id));
                (hold, indexed)
            }
            None => {
                if !take(self.old.get(id)?) {
                    return None;
                }
                let hold = self.old.remove(id).expect("just found");
                let indexed = self.old_expiry.remove(&(hold.expires_at_ms, *id)).is_some();
                (hold, indexed)
            }
        };
        assert!(indexed, "expiry index out of sync");
        Some(hold)
    }

    /// The pending hold that expires first, and when.
    pub(super) fn first_expiring(&self) -> Option<Expiring> {
        match (self.young_expiry.first(), self.old_expiry.get_min()) {
            (Some(young), Some(old)) => Some(*young.min(old)),
            (young, old) => young.or(old).copied(),
        }
    }

    /// Moves the oldest young holds to the old tier until the young one is within its
    /// bounds. Deterministic: it depends only on the order holds were made and ended in.
    fn age(&mut self) {
        while self.young.len() > YOUNG_HOLDS_MAX || self.young_order.len() > YOUNG_ORDER_MAX {
            let id = self.young_order.pop_front().expect("every young hold is in the order");
            // Ended since, or made again later (the later one then moves early).
            let Some(hold) = self.young.remove(&id) else { continue };
            let expiring = (hold.expires_at_ms, id);
            assert!(self.young_expiry.remove(&expiring), "expiry index out of sync");
            self.old_expiry.insert(expiring);
            self.old.insert(id, hold);
        }
    }

    /// The expiry order of every pending hold, earliest first.
    fn expiry_order(&self) -> impl Iterator<Item = &Expiring> {
        let mut young = self.young_expiry.iter().peekable();
        let mut old = self.old_expiry.iter().peekable();
        std::iter::from_fn(move || match (young.peek(), old.peek()) {
            (Some(y), Some(o)) if y > o => old.next(),
            (Some(_), _) => young.next(),
            (None, _) => old.next(),
        })
    }

    /// What is wrong with the holds' indexes, for the audit.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let young = self
            .young
            .iter()
            .filter(|(id, hold)| !self.young_expiry.contains(&(hold.expires_at_ms, **id)));
        let old = self
            .old
            .iter()
            .filter(|(id, hold)| !self.old_expiry.contains(&(hold.expires_at_ms, **id)));
        for (id, _) in young.chain(old) {
            problems.push(format!("hold {:x} missing from the expiry index", id.0));
        }
        let sizes = (self.young_expiry.len(), self.old_expiry.len());
        if sizes != (self.young.len(), self.old.len()) {
            problems.push("expiry index and holds differ in size".into());
        }
        if self.young.keys().any(|id| self.old.contains_key(id)) {
            problems.push("a hold both young and old".into());
        }
        if self.young.len() > YOUNG_HOLDS_MAX || self.young_order.len() > YOUNG_ORDER_MAX {
            problems.push("the young holds past their bounds".into());
        }
        problems
    }
}

/// Equal when they hold the same holds, in whichever tiers.
impl PartialEq for Holds {
    fn eq(&self, other: &Holds) -> bool {
        let same = |(id, hold): (&HoldId, &Hold)| other.get(id) == Some(hold);
        self.len() == other.len() && self.iter().all(same)
    }
}

impl Eq for Holds {}

impl Serialize for Holds {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Every<'a>(&'a Holds);
        impl Serialize for Every<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_map(self.0.iter())
            }
        }
        struct Order<'a>(&'a Holds);
        impl Serialize for Order<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                // postcard writes a sequence's length first, which a merge does not hint.
                let mut order = serializer.serialize_seq(Some(self.0.len()))?;
                for expiring in self.0.expiry_order() {
                    order.serialize_element(expiring)?;
                }
                order.end()
            }
        }
        let mut pair = serializer.serialize_tuple(2)?;
        pair.serialize_element(&Every(self))?;
        pair.serialize_element(&Order(self))?;
        pair.end()
    }
}

impl<'de> Deserialize<'de> for Holds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Holds, D::Error> {
        let (old, old_expiry) =
            <(HashMap<HoldId, Hold>, OrdSet<Expiring>)>::deserialize(deserializer)?;
        Ok(Holds::from_persistent(old, old_expiry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AccountId, KeyId, PicoUsd};
    use std::collections::BTreeMap;

    fn hold(expires_at_ms: u64) -> Hold {
        Hold {
            account: AccountId(1),
            key: KeyId(1),
            amount: PicoUsd(1),
            reserved_at_ms: 0,
            expires_at_ms,
            available: 0,
        }
    }

    /// Made and ended in an order that keeps some holds pending across many later ones,
    /// the two tiers answer as one map and one expiry order would, stay within their
    /// bounds, and read back from their serialized form as they were.
    #[test]
    fn two_tiers_answer_as_one_map() {
        let mut holds = Holds::default();
        let mut model: BTreeMap<HoldId, u64> = BTreeMap::new();
        let mut moved = false;
        for n in 0..5 * YOUNG_ORDER_MAX as u128 {
            let id = HoldId(n);
            let expires_at_ms = (n as u64 * 7_919) % 100_000;
            holds.insert(id, hold(expires_at_ms));
            model.insert(id, expires_at_ms);
            // Most holds end a few reserves later; one in a hundred stays pending.
            if n >= 3 && (n - 3) % 100 != 0 {
                let ended = HoldId(n - 3);
                let removed = holds.remove(&ended).map(|hold| hold.expires_at_ms);
                assert_eq!(removed, model.remove(&ended));
            }
            // The first expiring hold ends now and then, as a batch's expiry would.
            if n % 1_000 == 999 {
                let (expires_at_ms, id) = holds.first_expiring().unwrap();
                let first = model.iter().min_by_key(|(id, at)| (**at, **id)).unwrap();
                assert_eq!((id, expires_at_ms), (*first.0, *first.1));
                assert_eq!(holds.remove(&id).unwrap().expires_at_ms, model.remove(&id).unwrap());
            }
            moved |= !holds.old.is_empty();
            assert_eq!(holds.len(), model.len());
        }
        assert!(moved, "no hold reached the old tier");
        assert!(holds.young.len() <= YOUNG_HOLDS_MAX && holds.young_order.len() <= YOUNG_ORDER_MAX);
        assert_eq!(holds.problems(), Vec::<String>::new());
        for (id, expires_at_ms) in &model {
            assert_eq!(holds.get(id).map(|hold| hold.expires_at_ms), Some(*expires_at_ms));
        }
        let order: Vec<Expiring> = holds.expiry_order().copied().collect();
        let mut expected: Vec<Expiring> = model.iter().map(|(id, at)| (*at, *id)).collect();
        expected.sort();
        assert_eq!(order, expected);

        let bytes = postcard::to_allocvec(&holds).unwrap();
        let read: Holds = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(read, holds);
        assert!(read.young.is_empty(), "read back, every hold is old");
        // The layout of the persistent maps it replaced.
        let persistent: (HashMap<HoldId, Hold>, OrdSet<Expiring>) =
            postcard::from_bytes(&bytes).unwrap();
        assert_eq!(persistent.0.len(), model.len());
        assert_eq!(persistent.1.iter().copied().collect::<Vec<_>>(), expected);
    }
}
