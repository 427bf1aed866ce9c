//! [`Table`]: the in-memory index of one tree of the log store, from key to where its value
//! is. A tree whose keys are consecutive 8-byte big-endian numbers (a Raft log: appended
//! at its end, purged from its front, truncated from its back) is a [`Table::Run`]: one
//! slot per index and no key stored, so nothing is allocated per entry and an entry takes
//! its slot's 24 bytes. As a `BTreeMap` with a `Vec` key each entry took ~76 bytes and
//! two allocations, and `solrouter dev` at 1,000 requests/s holds ~60,000 entries between
//! two snapshots: the index rose by ~4.5 MB and fell back every half-minute
//! (docs/storage.md, "The log's index as a run"). Any other key, or an index that would
//! leave a gap wider than [`RUN_GAP_MAX`], turns the table into [`Table::Keys`] for good;
//! both answer every query alike.

use std::collections::{btree_map, BTreeMap, VecDeque};
use std::ops::{Bound, Deref};

/// The widest gap of missing indexes a run takes (filled with empty slots) before it
/// becomes keyed. A Raft log has none: it truncates before it appends out of turn.
const RUN_GAP_MAX: u64 = 64;

/// A run whose slots' capacity exceeds this many (6 MiB) and four times its length (a
/// backlog purged) gives the excess back. Below it the capacity is kept from one snapshot's
/// purge to the next, rather than reallocated as the log grows again (a dev node holds
/// ~60,000 entries between snapshots).
const RUN_SHRINK_MIN: usize = 1 << 18;

pub(super) enum Table<V> {
    /// Keys `first`, `first + 1`, … (as 8-byte big-endian) in `slots`, a removed one's slot
    /// empty; the first and last slots are never empty.
    Run {
        first: u64,
        slots: VecDeque<Option<V>>,
    },
    Keys(BTreeMap<Vec<u8>, V>),
}

/// A key as a table yields it: a keyed table's own bytes, or a run's index.
pub(super) enum Key<'a> {
    Stored(&'a [u8]),
    Index([u8; 8]),
}

impl Deref for Key<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Key::Stored(key) => key,
            Key::Index(bytes) => bytes,
        }
    }
}

/// The entries of a [`Table::range`], in key order.
pub(super) enum Range<'a, V> {
    Run { first: u64, at: usize, end: usize, slots: &'a VecDeque<Option<V>> },
    Keys(btree_map::Range<'a, Vec<u8>, V>),
}

impl<'a, V> Iterator for Range<'a, V> {
    type Item = (Key<'a>, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Range::Run { first, at, end, slots } => {
                while *at < *end {
                    let i = *at;
                    *at += 1;
                    if let Some(value) = &slots[i] {
                        return Some((Key::Index((*first + i as u64).to_be_bytes()), value));
                    }
                }
                None
            }
            Range::Keys(range) => range.next().map(|(key, value)| (Key::Stored(key), value)),
        }
    }
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table::Run { first: 0, slots: VecDeque::new() }
    }
}

/// `key` as a run's index, if it is 8 bytes long.
fn index_of(key: &[u8]) -> Option<u64> {
    key.try_into().ok().map(u64::from_be_bytes)
}

impl<V> Table<V> {
    pub(super) fn get(&self, key: &[u8]) -> Option<&V> {
        match self {
            Table::Run { first, slots } => {
                let i = index_of(key)?.checked_sub(*first)?;
                slots.get(usize::try_from(i).ok()?)?.as_ref()
            }
            Table::Keys(map) => map.get(key),
        }
    }

    /// The value of the last key.
    pub(super) fn last(&self) -> Option<&V> {
        match self {
            Table::Run { slots, .. } => slots.back().and_then(Option::as_ref),
            Table::Keys(map) => map.values().next_back(),
        }
    }

    /// Puts `value` at `key`, returning the value it replaces.
    pub(super) fn insert(&mut self, key: &[u8], value: V) -> Option<V> {
        if let Table::Run { first, slots } = self {
            let at = index_of(key).and_then(|index| {
                if slots.is_empty() {
                    *first = index;
                }
                // One past the last key (none past u64::MAX: such a key makes it keyed).
                let end = first.checked_add(slots.len() as u64)?;
                if index >= end {
                    if index - end > RUN_GAP_MAX {
                        return None;
                    }
                    slots.resize_with(slots.len() + (index - end) as usize + 1, || None);
                } else if index < *first {
                    if *first - index > RUN_GAP_MAX + 1 {
                        return None;
                    }
                    for _ in index..*first {
                        slots.push_front(None);
                    }
                    *first = index;
                }
                Some((index - *first) as usize)
            });
            match at {
                Some(i) => return slots[i].replace(value),
                None => self.make_keyed(),
            }
        }
        let Table::Keys(map) = self else { unreachable!("made keyed above") };
        // A key already there is replaced in place, its bytes not copied again.
        match map.get_mut(key) {
            Some(slot) => Some(std::mem::replace(slot, value)),
            None => map.insert(key.to_vec(), value),
        }
    }

    /// Removes `key`, returning its value.
    pub(super) fn remove(&mut self, key: &[u8]) -> Option<V> {
        match self {
            Table::Run { first, slots } => {
                let i = usize::try_from(index_of(key)?.checked_sub(*first)?).ok()?;
                let removed = slots.get_mut(i)?.take();
                while slots.back().is_some_and(Option::is_none) {
                    slots.pop_back();
                }
                while slots.front().is_some_and(Option::is_none) {
                    slots.pop_front();
                    *first += 1;
                }
                if slots.capacity() > RUN_SHRINK_MIN.max(4 * slots.len()) {
                    slots.shrink_to(2 * slots.len());
                }
                removed
            }
            Table::Keys(map) => map.remove(key),
        }
    }

    /// The entries whose keys lie in `range`, in key order.
    pub(super) fn range(&self, range: (Bound<&[u8]>, Bound<&[u8]>)) -> Range<'_, V> {
        match self {
            Table::Run { first, slots } => {
                // How many of the run's keys come before the bound (`or_equal`: or are it).
                let before = |bound: &[u8], or_equal: bool| {
                    let (mut low, mut high) = (0, slots.len());
                    while low < high {
                        let mid = low + (high - low) / 2;
                        let key = (*first + mid as u64).to_be_bytes();
                        if key.as_slice() < bound || (or_equal && key.as_slice() == bound) {
                            low = mid + 1;
                        } else {
                            high = mid;
                        }
                    }
                    low
                };
                let at = match range.0 {
                    Bound::Included(bound) => before(bound, false),
                    Bound::Excluded(bound) => before(bound, true),
                    Bound::Unbounded => 0,
                };
                let end = match range.1 {
                    Bound::Included(bound) => before(bound, true),
                    Bound::Excluded(bound) => before(bound, false),
                    Bound::Unbounded => slots.len(),
                };
                Range::Run { first: *first, at, end: end.max(at), slots }
            }
            Table::Keys(map) => Range::Keys(map.range::<[u8], _>(range)),
        }
    }

    /// Every entry, in key order.
    pub(super) fn iter(&self) -> Range<'_, V> {
        self.range((Bound::Unbounded, Bound::Unbounded))
    }

    /// Turns a run into a keyed table, for good.
    fn make_keyed(&mut self) {
        if let Table::Run { first, slots } = self {
            let entries = std::mem::take(slots).into_iter().enumerate();
            let first = *first;
            let keyed = entries.filter_map(|(i, value)| {
                value.map(|value| ((first + i as u64).to_be_bytes().to_vec(), value))
            });
            *self = Table::Keys(keyed.collect());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Insert(Vec<u8>, u32),
        Remove(Vec<u8>),
    }

    /// Keys as a log's (indexes near each other), now and then another length or far off.
    fn key() -> impl Strategy<Value = Vec<u8>> + Clone {
        prop_oneof![
            8 => (990u64..1_100).prop_map(|index| index.to_be_bytes().to_vec()),
            1 => any::<u64>().prop_map(|index| index.to_be_bytes().to_vec()),
            1 => proptest::collection::vec(any::<u8>(), 0..10),
        ]
    }

    fn bound() -> impl Strategy<Value = Bound<Vec<u8>>> {
        prop_oneof![
            Just(Bound::Unbounded),
            key().prop_map(Bound::Included),
            key().prop_map(Bound::Excluded),
            proptest::collection::vec(any::<u8>(), 0..10).prop_map(Bound::Included),
        ]
    }

    /// Indexes no further apart than a run's widest gap: the table stays a run.
    fn log_key() -> impl Strategy<Value = Vec<u8>> + Clone {
        (1_000u64..1_060).prop_map(|index| index.to_be_bytes().to_vec())
    }

    fn steps(key: impl Strategy<Value = Vec<u8>> + Clone) -> impl Strategy<Value = Vec<Step>> {
        let step = prop_oneof![
            3 => (key.clone(), any::<u32>()).prop_map(|(key, value)| Step::Insert(key, value)),
            1 => key.prop_map(Step::Remove),
        ];
        proptest::collection::vec(step, 0..200)
    }

    fn as_ref(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
        bound.as_ref().map(Vec::as_slice)
    }

    /// A log's life: appends, truncations from the back, purges from the front.
    #[test]
    fn a_log_stays_a_run_and_answers_as_a_map_would() {
        let mut table = Table::default();
        let key = |index: u64| index.to_be_bytes();
        for index in 1..=100u64 {
            assert_eq!(table.insert(&key(index), index), None);
        }
        for index in (61..=100).rev() {
            assert_eq!(table.remove(&key(index)), Some(index));
        }
        for index in 61..=80 {
            assert_eq!(table.insert(&key(index), index * 10), None);
        }
        for index in 1..=50 {
            assert_eq!(table.remove(&key(index)), Some(index));
        }
        assert!(matches!(table, Table::Run { first: 51, .. }));
        assert_eq!(table.get(&key(61)), Some(&610));
        assert_eq!(table.get(&key(50)), None);
        assert_eq!(table.last(), Some(&800));
        let keys: Vec<u64> = table
            .range((Bound::Excluded(&key(70)[..]), Bound::Included(&key(72)[..])))
            .map(|(key, _)| u64::from_be_bytes((&*key).try_into().unwrap()))
            .collect();
        assert_eq!(keys, [71, 72]);
    }

    proptest! {
        /// Whatever is put and removed, a table answers `get`, `last` and `range` as a
        /// `BTreeMap` does, a run (a log's keys in any order) as a keyed table.
        #[test]
        fn a_table_answers_as_a_btree_map(
            (log_only, steps) in prop_oneof![
                steps(log_key()).prop_map(|steps| (true, steps)),
                steps(key()).prop_map(|steps| (false, steps)),
            ],
            probes in proptest::collection::vec((key(), bound(), bound()), 1..10),
        ) {
            let mut table = Table::default();
            let mut model = BTreeMap::new();
            for step in steps {
                match step {
                    Step::Insert(key, value) => {
                        prop_assert_eq!(table.insert(&key, value), model.insert(key, value));
                    }
                    Step::Remove(key) => {
                        prop_assert_eq!(table.remove(&key), model.remove(&key));
                    }
                }
            }
            let run = matches!(table, Table::Run { .. });
            prop_assert!(!log_only || run, "a log's keys made the table keyed");
            prop_assert_eq!(table.last(), model.values().next_back());
            for (key, start, end) in probes {
                prop_assert_eq!(table.get(&key), model.get(&key));
                let range = (as_ref(&start), as_ref(&end));
                let valid = match range {
                    (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => {
                        // What `BTreeMap::range` takes without a panic.
                        a < b || (a == b && !matches!(range, (Bound::Excluded(_), Bound::Excluded(_))))
                    }
                    _ => true,
                };
                if valid {
                    let got: Vec<(Vec<u8>, u32)> =
                        table.range(range).map(|(key, value)| (key.to_vec(), *value)).collect();
                    let expected: Vec<(Vec<u8>, u32)> = model
                        .range::<[u8], _>(range)
                        .map(|(key, value)| (key.clone(), *value))
                        .collect();
                    prop_assert_eq!(got, expected);
                }
            }
        }
    }
}
