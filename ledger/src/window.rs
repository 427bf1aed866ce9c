//! [`Window`]: what the ledger remembers for a bounded time by a client-made 128-bit id
//! (op ids, hold ids), each entry until a batch stamp reaches its `forget_at_ms`. Entries
//! arrive in the order they are forgotten (stamps never go back), so they are kept as a
//! log in that order: full chunks of a fixed size behind `Arc`s, never written again, and
//! the newest entries (fewer than a chunk) in a buffer of the window's own, which becomes
//! the next chunk once full. Forgetting advances the log's front and drops whole chunks.
//! An open-addressing index (linear probing, at most half full) finds an entry by its id;
//! it holds one 8-byte slot per entry, in pages behind `Arc`s. When the index outgrows
//! half its slots (or shrinks below a sixteenth), a new one takes its place and the old
//! one's slots move over a few at each later insert and forget, never all at once: a
//! rehash of millions of slots took 0.25–0.56 s under the state lock, on every replica at
//! the same instant (docs/benchmarks.md, "Session 32"). Cloning a window (a
//! snapshot's copy) clones the chunk pointers, the superseded entries' set (persistent)
//! and the few newest entries, but no index: a copy iterates without one, and builds its
//! own at its first write. So a snapshot never waits for apply nor apply for a snapshot,
//! the writes after a snapshot copy nothing, and memory is a few words per entry beyond
//! the entry itself (the `imbl` maps this replaced took ~500 bytes per entry and a fifth of a
//! node's CPU under load). A loaded node's window is far larger than the cache, so a
//! lookup is a cache miss: [`Window::warm`] starts a few at once, ahead of the lookups.
//!
//! Ids come from clients, so nothing relies on their bits: the index hashes them with a
//! per-window random seed (a client cannot aim ids at one probe chain). The index's layout
//! (seed, size, whether built, which chunk a clone shares) never shows: lookups, iteration (in log order),
//! equality and the serialized form (the live entries in log order) depend only on what
//! was inserted and forgotten, so every replica answers and snapshots alike.

use serde::de::{Error as _, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::VecDeque;
use std::fmt;
use std::hash::BuildHasher;
use std::marker::PhantomData;
use std::sync::Arc;

/// Bytes per chunk of the log (its entries and its `Arc`'s counts): the granularity of
/// dropping, and the size of the blocks the log takes from the allocator. Chunks live as
/// long as the window remembers, among a request's short-lived allocations, and are freed
/// oldest first; 8 KiB keeps them in mimalloc's small pages (64 KiB). Chunks of 1,024
/// entries (up to 192 KiB) shared 4 MiB pages, where the freed ones left holes that
/// stayed resident while a page held a live one, and `solrouter dev`'s RSS rose for
/// minutes after the windows were full (docs/storage.md, "The windows' chunks in small
/// pages").
const CHUNK_BYTES: usize = 8 * 1024;
/// Slots per page of the index (4 KiB): the granularity of a copy on write.
const PAGE_BITS: u32 = 9;
const PAGE_SLOTS: usize = 1 << PAGE_BITS;
/// A slot: 0 when empty, else [`OCCUPIED`], the top [`HASH_BITS`] of the id's hash, and the
/// entry's sequence number modulo 2^[`SEQ_BITS`] (entries in the log span far fewer).
const OCCUPIED: u64 = 1 << 63;
const SEQ_BITS: u32 = 32;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;
const HASH_BITS: u32 = 63 - SEQ_BITS;
/// The index's size bounds (log2 of slots): a slot's hash bits give its home slot.
const INDEX_BITS_MIN: u32 = PAGE_BITS;
const INDEX_BITS_MAX: u32 = HASH_BITS;
/// Slots of a replaced index moved to its successor at each insert and each forget (and
/// the rest of the cluster of occupied slots the last of them is in). A grown index starts
/// a quarter full and is replaced when half full, after as many inserts as the old index
/// had slots over 2; at this pace its slots moved in the first sixteenth of them. A shrunk
/// index may still be draining when it is replaced; the rest moves then. Larger steps
/// cost a batch more while the slots move; smaller ones make the moving last longer, and
/// meanwhile a new id is looked for in both indexes (docs/benchmarks.md, "Session 32").
const MIGRATE_STEP: usize = 32;
/// What a forgotten id's slot in a replaced index becomes: not empty, so the probes that
/// pass it go on, and never occupied, so it matches no id.
const TOMBSTONE: u64 = 1;
/// Ids whose slots [`Window::warm`] loads at once: few enough that the loads are all in
/// flight together and their lines still cached when the lookups come.
pub(crate) const WARM_AT_ONCE: usize = 32;

type Page = [u64; PAGE_SLOTS];

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry<V> {
    key: u128,
    forget_at_ms: u64,
    value: V,
}

/// A map from 128-bit ids to `V`s, each remembered until a stamp reaches its
/// `forget_at_ms`; see the module's documentation.
pub(crate) struct Window<V> {
    /// The log's full chunks, oldest first, [`Window::CHUNK_ENTRIES`] each; shared by
    /// clones.
    chunks: VecDeque<Arc<[Entry<V>]>>,
    /// The log's newest entries, after `chunks`: fewer than a chunk, this window's own.
    open: Vec<Entry<V>>,
    /// The sequence number of the first chunk's first entry.
    chunk_base: u64,
    /// The sequence number of the oldest entry not forgotten.
    front: u64,
    /// The sequence number the next entry gets.
    next: u64,
    /// The latest entry's `forget_at_ms`: entries arrive in this order.
    last_forget_at_ms: u64,
    /// The sequence numbers of the entries in the log whose id was inserted again (so not
    /// indexed): every other entry is live, so iterating needs no lookup. Few (a hold
    /// settled after its release), and shared by clones.
    superseded: imbl::OrdSet<u64>,
    /// Not built in a clone ([`Index::unbuilt`]) until the clone is written.
    index: Index,
    /// The index `index` replaced, while its slots move over.
    draining: Option<Draining>,
}

/// A replaced index and how far its slots have moved to its successor: every occupied
/// slot at or after `cursor` is an id's only slot; before it, every slot has moved, and
/// the slot before it is empty, so an id whose home is before `cursor` has moved (its
/// probe would end before `cursor`).
#[derive(Clone)]
struct Draining {
    old: Index,
    cursor: usize,
    /// Occupied slots at or after `cursor`.
    live: usize,
}

/// Where an id's slot is.
enum Located {
    /// Slot `.0` of the index, for the entry with sequence number `.1`.
    Index(usize, u64),
    /// Slot `.0` of the replaced index, not yet moved.
    Draining(usize, u64),
    /// Nowhere. `index` is the index's empty slot where its probe ended; `draining`, the
    /// replaced index's, if its probe there ended at or after the cursor in a replaced
    /// index with room (so a slot put there moves in its turn).
    Absent { index: usize, draining: Option<usize> },
}

/// One slot per id remembered, pointing at its entry (its latest, if it was inserted
/// again: the older one stays in the log, unindexed, until it is forgotten).
#[derive(Clone)]
struct Index {
    pages: Vec<Arc<Page>>,
    /// log2 of the number of slots.
    bits: u32,
    /// Occupied slots: the ids remembered.
    len: usize,
    seeds: [u64; 2],
}

/// The 64 bits of a 128-bit product folded into each other: a cheap mixer (foldhash's).
fn fold(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

impl Index {
    /// An index with no slots, which a clone starts with: a snapshot's copy of a window
    /// only iterates, so it takes no index pages, and the writes after it copy none (a
    /// copy that shared them copied each page the next writes touched: a loaded node's
    /// 64 MB index in the second after every snapshot, applies of up to 94 ms,
    /// docs/benchmarks.md, "Session 33"). A clone that is written builds its own.
    fn unbuilt(seeds: [u64; 2]) -> Index {
        Index { pages: Vec::new(), bits: 0, len: 0, seeds }
    }

    fn is_built(&self) -> bool {
        !self.pages.is_empty()
    }

    fn new(bits: u32, seeds: [u64; 2]) -> Index {
        assert!((INDEX_BITS_MIN..=INDEX_BITS_MAX).contains(&bits), "index size out of range");
        let empty = Arc::new([0; PAGE_SLOTS]);
        let pages = vec![empty; 1 << (bits - PAGE_BITS)];
        Index { pages, bits, len: 0, seeds }
    }

    fn hash(&self, key: u128) -> u64 {
        const MIX: u64 = 0x9e37_79b9_7f4a_7c15;
        let folded = fold(key as u64 ^ self.seeds[0], (key >> 64) as u64 ^ self.seeds[1]);
        fold(folded, MIX)
    }

    fn mask(&self) -> usize {
        (1 << self.bits) - 1
    }

    /// The slot's hash bits, with the occupied bit: what a probe compares.
    fn tag(hash: u64) -> u64 {
        OCCUPIED | (hash >> (64 - HASH_BITS)) << SEQ_BITS
    }

    fn home_of_hash(&self, hash: u64) -> usize {
        (hash >> (64 - self.bits)) as usize
    }

    fn home_of_slot(&self, slot: u64) -> usize {
        ((slot & !OCCUPIED) >> (SEQ_BITS + HASH_BITS - self.bits)) as usize
    }

    fn get(&self, i: usize) -> u64 {
        self.pages[i >> PAGE_BITS][i & (PAGE_SLOTS - 1)]
    }

    fn set(&mut self, i: usize, slot: u64) {
        Arc::make_mut(&mut self.pages[i >> PAGE_BITS])[i & (PAGE_SLOTS - 1)] = slot;
    }

    /// Puts `slot` in the first empty slot from its home; the id must not be indexed.
    fn place(&mut self, slot: u64) {
        let mut i = self.home_of_slot(slot);
        while self.get(i) != 0 {
            i = (i + 1) & self.mask();
        }
        self.set(i, slot);
        self.len += 1;
    }

    /// Empties slot `i`, moving later slots of its probe chain back (backward-shift
    /// deletion), so no lookup ever crosses a gap it should not.
    fn remove(&mut self, mut hole: usize) {
        let mask = self.mask();
        let mut i = hole;
        loop {
            i = (i + 1) & mask;
            let slot = self.get(i);
            if slot == 0 {
                break;
            }
            // A slot may move back to the hole unless its home lies after the hole.
            let home = self.home_of_slot(slot);
            if (i.wrapping_sub(home) & mask) >= (i.wrapping_sub(hole) & mask) {
                self.set(hole, slot);
                hole = i;
            }
        }
        self.set(hole, 0);
        self.len -= 1;
    }
}

impl<V: Clone> Window<V> {
    /// Entries per chunk: as many as [`CHUNK_BYTES`] holds beside the counts, at least one.
    const CHUNK_ENTRIES: usize =
        match (CHUNK_BYTES - 2 * std::mem::size_of::<usize>()) / std::mem::size_of::<Entry<V>>() {
            0 => 1,
            n => n,
        };

    pub(crate) fn new() -> Window<V> {
        let random = std::collections::hash_map::RandomState::new();
        let seeds = [random.hash_one(0u8), random.hash_one(1u8)];
        Window {
            chunks: VecDeque::new(),
            open: Vec::new(),
            chunk_base: 0,
            front: 0,
            next: 0,
            last_forget_at_ms: 0,
            superseded: imbl::OrdSet::new(),
            index: Index::new(INDEX_BITS_MIN, seeds),
            draining: None,
        }
    }

    /// Ids remembered: every entry in the log is one's, except the superseded.
    pub(crate) fn len(&self) -> usize {
        usize::try_from(self.next - self.front).expect("the log fits in memory")
            - self.superseded.len()
    }

    /// Builds the index of a clone, before its first write: a quarter full, as a grown
    /// index starts.
    fn build_index(&mut self) {
        if self.index.is_built() {
            return;
        }
        let bits = (self.len() * 4).next_power_of_two().trailing_zeros();
        let mut index = Index::new(bits.clamp(INDEX_BITS_MIN, INDEX_BITS_MAX), self.index.seeds);
        for seq in (self.front..self.next).filter(|seq| !self.superseded.contains(seq)) {
            index.place(Index::tag(index.hash(self.entry(seq).key)) | (seq & SEQ_MASK));
        }
        self.index = index;
    }

    fn entry(&self, seq: u64) -> &Entry<V> {
        let offset = usize::try_from(seq - self.chunk_base).expect("the log fits in memory");
        let (chunk, i) = (offset / Self::CHUNK_ENTRIES, offset % Self::CHUNK_ENTRIES);
        match self.chunks.get(chunk) {
            Some(chunk) => &chunk[i],
            None => &self.open[i],
        }
    }

    /// The full sequence number of an occupied slot's.
    fn seq_of(&self, slot: u64) -> u64 {
        self.front + ((slot & SEQ_MASK).wrapping_sub(self.front) & SEQ_MASK)
    }

    /// The sequence number of `key`'s entry, if it is remembered (in a clone not yet
    /// written, by a scan of its entries).
    fn find(&self, key: u128) -> Option<u64> {
        if !self.index.is_built() {
            let mut live = (self.front..self.next).filter(|seq| !self.superseded.contains(seq));
            return live.find(|&seq| self.entry(seq).key == key);
        }
        match self.locate(key, self.index.hash(key)) {
            Located::Index(_, seq) | Located::Draining(_, seq) => Some(seq),
            Located::Absent { .. } => None,
        }
    }

    fn locate(&self, key: u128, hash: u64) -> Located {
        let empty = match self.probe(&self.index, 0, key, hash) {
            Ok((i, seq)) => return Located::Index(i, seq),
            Err(empty) => empty,
        };
        let Some(draining) = &self.draining else {
            return Located::Absent { index: empty, draining: None };
        };
        if draining.old.home_of_hash(hash) < draining.cursor {
            return Located::Absent { index: empty, draining: None };
        }
        match self.probe(&draining.old, draining.cursor, key, hash) {
            Ok((i, seq)) => Located::Draining(i, seq),
            Err(i) => {
                let room = draining.live * 4 < 3 << draining.old.bits;
                let draining = (i >= draining.cursor && room).then_some(i);
                Located::Absent { index: empty, draining }
            }
        }
    }

    /// Where `key`'s slot is in `index` (ignoring slots before `from`, which moved) and
    /// the sequence number of its entry, or the empty slot its probe ended at.
    fn probe(
        &self,
        index: &Index,
        from: usize,
        key: u128,
        hash: u64,
    ) -> Result<(usize, u64), usize> {
        let tag = Index::tag(hash);
        let mut i = index.home_of_hash(hash);
        loop {
            let slot = index.get(i);
            if slot == 0 {
                return Err(i);
            }
            if slot & !SEQ_MASK == tag && i >= from {
                let seq = self.seq_of(slot);
                if self.entry(seq).key == key {
                    return Ok((i, seq));
                }
            }
            i = (i + 1) & index.mask();
        }
    }

    fn draining_mut(&mut self) -> &mut Draining {
        self.draining.as_mut().expect("a replaced index is draining")
    }

    /// Empties slot `i` of the replaced index (its id was forgotten).
    fn take_draining(&mut self, i: usize) {
        let draining = self.draining_mut();
        draining.old.set(i, TOMBSTONE);
        draining.live -= 1;
    }

    /// Moves the replaced index's next `n` slots, and the rest of the cluster the last
    /// one is in, to the index; drops the replaced index once none is left.
    fn migrate(&mut self, n: usize) {
        let Some(draining) = &mut self.draining else {
            return;
        };
        let end = draining.cursor.saturating_add(n);
        let in_cluster = |cursor: usize| cursor > 0 && draining.old.get(cursor - 1) != 0;
        while draining.live > 0 && (draining.cursor < end || in_cluster(draining.cursor)) {
            let slot = draining.old.get(draining.cursor);
            if slot & OCCUPIED != 0 {
                self.index.place(slot);
                draining.live -= 1;
            }
            draining.cursor += 1;
        }
        if draining.live == 0 {
            self.draining = None;
        }
    }

    /// Replaces the index with an empty one of `2^bits` slots whose slots then move over
    /// (the index it replaces, if still draining, moves over first, whole).
    fn replace_index(&mut self, bits: u32) {
        self.migrate(usize::MAX);
        let empty = Index::new(bits, self.index.seeds);
        let old = std::mem::replace(&mut self.index, empty);
        self.draining = Some(Draining { cursor: 0, live: old.len, old });
    }

    /// Loads the home slots of `keys` (and their pages' reference counts, which a write
    /// reads) into the cache, ahead of lookups or writes of them. In a large window each
    /// is a cache miss; loaded here, one after another with nothing depending on them,
    /// the misses overlap instead of stalling one lookup at a time. Changes nothing.
    pub(crate) fn warm(&self, keys: impl Iterator<Item = u128>) {
        if !self.index.is_built() {
            return;
        }
        let load = |index: &Index, hash: u64| {
            let i = index.home_of_hash(hash);
            let page = &index.pages[i >> PAGE_BITS];
            page[i & (PAGE_SLOTS - 1)] ^ Arc::strong_count(page) as u64
        };
        let mut loaded = 0;
        for key in keys {
            let hash = self.index.hash(key);
            loaded ^= load(&self.index, hash);
            if let Some(draining) = &self.draining {
                if draining.old.home_of_hash(hash) >= draining.cursor {
                    loaded ^= load(&draining.old, hash);
                }
            }
        }
        std::hint::black_box(loaded);
    }

    pub(crate) fn get(&self, key: u128) -> Option<&V> {
        Some(&self.entry(self.find(key)?).value)
    }

    pub(crate) fn contains(&self, key: u128) -> bool {
        self.find(key).is_some()
    }

    /// Remembers `value` for `key` until a stamp reaches `forget_at_ms`, in place of what
    /// `key` had (which is then forgotten). Entries come in the order they are forgotten.
    pub(crate) fn insert(&mut self, key: u128, forget_at_ms: u64, value: V) {
        assert!(forget_at_ms >= self.last_forget_at_ms, "remembered in the order forgotten");
        assert!(self.next - self.front < SEQ_MASK, "the log spans fewer than 2^32 entries");
        self.build_index();
        let hash = self.index.hash(key);
        let found = self.locate(key, hash);
        let seq = self.next;
        if self.open.capacity() == 0 {
            // Whole from the start: grown by doubling, it would be reallocated and copied
            // several times on its way to a chunk.
            self.open.reserve_exact(Self::CHUNK_ENTRIES);
        }
        self.open.push(Entry { key, forget_at_ms, value });
        if self.open.len() == Self::CHUNK_ENTRIES {
            // Moved, not cloned entry by entry: one copy of the bytes.
            self.chunks.push_back(Arc::from(std::mem::take(&mut self.open)));
        }
        self.next += 1;
        self.last_forget_at_ms = forget_at_ms;
        let slot = Index::tag(hash) | (seq & SEQ_MASK);
        match found {
            Located::Index(i, older) => {
                self.index.set(i, slot);
                self.superseded.insert(older);
            }
            Located::Draining(i, older) => {
                self.draining_mut().old.set(i, slot);
                self.superseded.insert(older);
            }
            // While an index drains, a new id goes where its slot moves in order with the
            // rest: the index's pages are then written in order as the slots move, instead
            // of each new id's touching (and so allocating) one at random (applies of 3,000
            // commands took 90-130 ms at the start of a drain when they did).
            Located::Absent { index, draining } => {
                match draining {
                    Some(i) => {
                        let draining = self.draining_mut();
                        draining.old.set(i, slot);
                        draining.live += 1;
                    }
                    None => {
                        self.index.set(index, slot);
                        self.index.len += 1;
                    }
                }
                if self.len() * 2 > 1 << self.index.bits {
                    self.replace_index(self.index.bits + 1);
                }
            }
        }
        self.migrate(MIGRATE_STEP);
    }

    /// Forgets every entry whose `forget_at_ms` is at most `stamp_ms`.
    pub(crate) fn forget(&mut self, stamp_ms: u64) {
        self.build_index();
        let mut warmed_to = self.front;
        while self.front < self.next {
            let Entry { key, forget_at_ms, .. } = *self.entry(self.front);
            if forget_at_ms > stamp_ms {
                break;
            }
            if self.front == warmed_to {
                warmed_to = self.next.min(self.front + WARM_AT_ONCE as u64);
                self.warm((self.front..warmed_to).map(|seq| self.entry(seq).key));
            }
            // Unless its slot points at the entry, the id was inserted again: its slot
            // points at the newer entry.
            match self.locate(key, self.index.hash(key)) {
                Located::Index(i, seq) if seq == self.front => self.index.remove(i),
                Located::Draining(i, seq) if seq == self.front => {
                    self.take_draining(i);
                }
                Located::Index(..) | Located::Draining(..) => {
                    let superseded = self.superseded.remove(&self.front);
                    assert!(superseded.is_some(), "an entry not indexed is superseded");
                }
                Located::Absent { .. } => panic!("a remembered id is indexed"),
            }
            self.migrate(MIGRATE_STEP);
            self.front += 1;
            if self.front - self.chunk_base == Self::CHUNK_ENTRIES as u64 {
                self.chunks.pop_front();
                self.chunk_base = self.front;
            }
        }
        if self.index.is_built()
            && self.index.bits > INDEX_BITS_MIN
            && self.len() * 16 < 1 << self.index.bits
        {
            self.replace_index(self.index.bits - 1);
        }
    }

    /// The ids remembered with their `forget_at_ms` and values, oldest first: every entry
    /// but the superseded, with no index lookup (a cache miss each in a large window, most
    /// of a snapshot's time when it looked every entry up), so a clone's iterates unbuilt.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u128, u64, &V)> {
        (self.front..self.next).filter(|seq| !self.superseded.contains(seq)).map(|seq| {
            let entry = self.entry(seq);
            (entry.key, entry.forget_at_ms, &entry.value)
        })
    }

    /// A window holding `entries` (in the order they are forgotten, each id once).
    pub(crate) fn try_from_entries(
        entries: impl IntoIterator<Item = (u128, u64, V)>,
    ) -> Result<Window<V>, String> {
        let mut window = Window::new();
        for (key, forget_at_ms, value) in entries {
            window.try_insert(key, forget_at_ms, value)?;
        }
        Ok(window)
    }

    /// Inserts a new id's entry, refusing one out of order or an id already remembered
    /// (for entries that were not made by this window).
    fn try_insert(&mut self, key: u128, forget_at_ms: u64, value: V) -> Result<(), String> {
        if forget_at_ms < self.last_forget_at_ms {
            return Err(format!("entry {key:x} out of order"));
        }
        if self.contains(key) {
            return Err(format!("entry {key:x} twice"));
        }
        self.insert(key, forget_at_ms, value);
        Ok(())
    }

    /// What is wrong with the window's structure, if anything (for the ledger's audit).
    pub(crate) fn problems(&self, name: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let built = self.index.is_built();
        let index_slots = (0..usize::from(built) << self.index.bits).map(|i| self.index.get(i));
        let draining_slots = self.draining.iter().flat_map(|draining| {
            (draining.cursor..1 << draining.old.bits).map(|i| draining.old.get(i))
        });
        let n_occupied: usize = index_slots
            .chain(draining_slots)
            .filter(|slot| *slot & OCCUPIED != 0)
            .inspect(|slot| {
                let seq = self.seq_of(*slot);
                let in_log = (self.front..self.next).contains(&seq);
                let key = in_log.then(|| self.entry(seq).key);
                if key.is_none_or(|key| Index::tag(self.index.hash(key)) != slot & !SEQ_MASK) {
                    problems.push(format!("{name}: a slot points outside its entries"));
                }
            })
            .count();
        if (built && n_occupied != self.len()) || self.iter().count() != self.len() {
            problems.push(format!("{name}: index and entries differ in size"));
        }
        let in_log = |seq: &u64| (self.front..self.next).contains(seq);
        let indexed = |seq: &u64| built && self.find(self.entry(*seq).key) == Some(*seq);
        if self.superseded.iter().any(|seq| !in_log(seq) || indexed(seq)) {
            problems.push(format!("{name}: a superseded entry is indexed or forgotten"));
        }
        let stamps = (self.front..self.next).map(|seq| self.entry(seq).forget_at_ms);
        if stamps.clone().zip(stamps.skip(1)).any(|(earlier, later)| earlier > later) {
            problems.push(format!("{name}: entries out of order"));
        }
        problems
    }
}

/// The entries, not the index (see [`Index::unbuilt`]): the chunks' and the superseded
/// set's pointers and the few newest entries.
impl<V: Clone> Clone for Window<V> {
    fn clone(&self) -> Window<V> {
        Window {
            chunks: self.chunks.clone(),
            open: self.open.clone(),
            chunk_base: self.chunk_base,
            front: self.front,
            next: self.next,
            last_forget_at_ms: self.last_forget_at_ms,
            superseded: self.superseded.clone(),
            index: Index::unbuilt(self.index.seeds),
            draining: None,
        }
    }
}

impl<V: Clone> Default for Window<V> {
    fn default() -> Window<V> {
        Window::new()
    }
}

/// The same ids with the same stamps and values, whatever the order of entries with one
/// stamp (a window carried over from format version 7 has them by id).
impl<V: Clone + PartialEq> PartialEq for Window<V> {
    fn eq(&self, other: &Window<V>) -> bool {
        if self.len() != other.len() {
            return false;
        }
        let theirs: std::collections::HashMap<u128, (u64, &V)> =
            other.iter().map(|(key, forget_at_ms, value)| (key, (forget_at_ms, value))).collect();
        self.iter()
            .all(|(key, forget_at_ms, value)| theirs.get(&key) == Some(&(forget_at_ms, value)))
    }
}

impl<V: Clone + Eq> Eq for Window<V> {}

impl<V: Clone + fmt::Debug> fmt::Debug for Window<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The live entries in log order, as `(id, forget_at_ms, value)`.
impl<V: Clone + Serialize> Serialize for Window<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for entry in self.iter() {
            seq.serialize_element(&entry)?;
        }
        seq.end()
    }
}

impl<'de, V: Clone + Deserialize<'de>> Deserialize<'de> for Window<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Window<V>, D::Error> {
        deserializer.deserialize_seq(Entries(PhantomData))
    }
}

/// Builds a window from its serialized entries one at a time (a snapshot's millions are
/// never all in a `Vec` beside it).
struct Entries<V>(PhantomData<V>);

impl<'de, V: Clone + Deserialize<'de>> Visitor<'de> for Entries<V> {
    type Value = Window<V>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence of (id, forget_at_ms, value)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut entries: A) -> Result<Window<V>, A::Error> {
        let mut window = Window::new();
        while let Some((key, forget_at_ms, value)) = entries.next_element()? {
            window.try_insert(key, forget_at_ms, value).map_err(A::Error::custom)?;
        }
        Ok(window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(n: u64, forget_at_ms: impl Fn(u64) -> u64) -> Window<u64> {
        let mut window = Window::new();
        for n in 0..n {
            window.insert(u128::from(n) * 3, forget_at_ms(n), n);
        }
        window
    }

    /// Entries across many chunks and index sizes are found until exactly their stamp,
    /// and the index shrinks back once they are gone.
    #[test]
    fn entries_are_found_until_exactly_their_stamp() {
        const N: u64 = 10 * Window::<u64>::CHUNK_ENTRIES as u64 + 7;
        let mut window = filled(N, |n| 100 + n / 10);
        assert_eq!(window.len(), N as usize);
        assert!(window.index.bits > INDEX_BITS_MIN + 2, "the index grew");
        assert!(window.problems("w").is_empty(), "{:?}", window.problems("w"));
        for forget_at_ms in 100..100 + N / 10 + 1 {
            window.forget(forget_at_ms - 1);
            let first_kept = (forget_at_ms - 100) * 10;
            assert_eq!(window.len() as u64, N - first_kept);
            if first_kept > 0 {
                assert_eq!(window.get(u128::from(first_kept - 1) * 3), None);
            }
            if first_kept < N {
                assert_eq!(window.get(u128::from(first_kept) * 3), Some(&first_kept));
            }
            assert_eq!(window.get(u128::from(N - 1) * 3 + 1), None, "never inserted");
        }
        window.forget(u64::MAX);
        assert_eq!((window.len(), window.index.bits), (0, INDEX_BITS_MIN));
        assert!(window.chunks.len() <= 1, "forgotten chunks are dropped");
        assert!(window.problems("w").is_empty());
    }

    /// An id inserted again answers its latest value, and stays remembered until the
    /// latest entry's stamp, though the older entry is forgotten before.
    #[test]
    fn an_id_inserted_again_keeps_its_latest_value_and_stamp() {
        let mut window = filled(3 * Window::<u64>::CHUNK_ENTRIES as u64, |n| n);
        window.insert(6, 5_000, 99);
        assert_eq!((window.get(6), window.len()), (Some(&99), 3 * Window::<u64>::CHUNK_ENTRIES));
        let live: Vec<_> = window.iter().map(|(key, _, value)| (key, *value)).collect();
        assert_eq!(
            live.len(),
            3 * Window::<u64>::CHUNK_ENTRIES,
            "the older entry of 6 is not live"
        );
        assert_eq!(live.iter().filter(|(key, _)| *key == 6).collect::<Vec<_>>(), [&(6, 99)]);
        assert!(window.problems("w").is_empty(), "{:?}", window.problems("w"));
        window.forget(1);
        assert_eq!(window.iter().filter(|(key, ..)| *key == 6).count(), 1);
        window.forget(2);
        assert!(window.superseded.is_empty(), "the older entry of 6 is forgotten");
        assert!(window.problems("w").is_empty(), "{:?}", window.problems("w"));
        window.forget(4_999);
        assert_eq!((window.get(6), window.len()), (Some(&99), 1));
        assert_eq!(window.iter().collect::<Vec<_>>(), [(6, 5_000, &99)]);
        window.forget(5_000);
        assert_eq!((window.get(6), window.len()), (None, 0));
    }

    /// A clone is a consistent copy: later inserts and forgets of either leave the other
    /// as it was, and equality compares what is remembered, not the layout.
    #[test]
    fn a_clone_is_an_independent_copy() {
        let mut window = filled(2_500, |n| n);
        let copy = window.clone();
        window.forget(999);
        window.insert(1, 10_000, 7);
        assert_eq!(copy.len(), 2_500);
        assert_eq!(copy.get(3), Some(&1));
        assert_eq!(copy.get(1), None);
        assert_eq!(window.get(3), None);
        assert_eq!(window.get(1), Some(&7));
        let mut rebuilt = filled(2_500, |n| n);
        assert_eq!(rebuilt, copy, "the same entries, built again");
        rebuilt.forget(999);
        rebuilt.insert(1, 10_000, 7);
        assert_eq!(rebuilt, window);
        assert!(copy.problems("copy").is_empty() && window.problems("w").is_empty());
        // The copy's newest entries are its own too: filling them into a chunk of the copy
        // leaves the window as it was.
        let mut copy = copy;
        for n in 0..Window::<u64>::CHUNK_ENTRIES as u64 {
            copy.insert(u128::from(1_000_000 + n), 20_000, n);
        }
        assert_eq!(
            (copy.get(1_000_000), copy.len()),
            (Some(&0), 2_500 + Window::<u64>::CHUNK_ENTRIES)
        );
        assert_eq!((window.get(1_000_000), window.len()), (None, 1_501));
        assert_eq!(window, rebuilt);
        assert!(copy.problems("copy").is_empty() && window.problems("w").is_empty());
    }

    /// A clone (a snapshot's copy) takes none of the index's pages: the window's writes
    /// after it copy no page, and the clone answers, iterates and serializes the same,
    /// superseded entries left out, until its own first write builds it an index.
    #[test]
    fn a_clone_shares_no_index_page() {
        let mut window = filled(5_000, |n| n);
        window.insert(7, 5_000, 70);
        window.insert(8, 5_000, 80);
        window.insert(7, 5_001, 71);
        let copy = window.clone();
        let shared = window.index.pages.iter().filter(|page| Arc::strong_count(page) > 1);
        assert_eq!(shared.count(), 0, "the clone holds none of the window's index pages");
        assert!(copy.index.pages.is_empty());
        for n in 0..1_000u64 {
            window.insert(u128::from(10_000 + n), 6_000, n);
        }
        window.forget(2_999);
        assert_eq!((copy.len(), copy.get(7), copy.get(8)), (5_002, Some(&71), Some(&80)));
        let entries = |window: &Window<u64>| serde_json::to_string(window).unwrap();
        let mut built = filled(5_000, |n| n);
        built.insert(8, 5_000, 80);
        built.insert(7, 5_001, 71);
        assert_eq!(entries(&copy), entries(&built));
        assert!(copy.problems("copy").is_empty(), "{:?}", copy.problems("copy"));
        let mut copy = copy;
        copy.forget(2_999);
        built.forget(2_999);
        assert!(copy.index.is_built());
        assert_eq!(
            (copy.get(7), copy.get(9_000), copy.get(8_997)),
            (Some(&71), Some(&3_000), None)
        );
        assert_eq!(entries(&copy), entries(&built));
        assert!(copy.problems("copy").is_empty(), "{:?}", copy.problems("copy"));
    }

    /// The insert that outgrows the index moves a few slots, not all of them: the rest
    /// move a few at a time at the inserts after it, all before the new index is half
    /// full, and the new index's pages are written in order as they move (new ids meanwhile
    /// go where they move in order too), not at random.
    #[test]
    fn a_grown_index_fills_a_few_slots_at_a_time() {
        let mut window = Window::new();
        let mut n = 0;
        let mut insert = |window: &mut Window<u64>| {
            window.insert(u128::from(n) * 7, n, n);
            n += 1;
        };
        while window.index.bits < INDEX_BITS_MIN + 6 {
            insert(&mut window);
        }
        let bits = window.index.bits;
        let draining = window.draining.as_ref().expect("the old index drains");
        let n_to_move = draining.live + window.index.len;
        assert_eq!(n_to_move, window.len());
        let mut most_at_once = window.index.len;
        let mut n_inserts = 0;
        while window.draining.is_some() {
            let moved_before = window.index.len;
            insert(&mut window);
            n_inserts += 1;
            most_at_once = most_at_once.max(window.index.len - moved_before);
            assert_eq!(window.index.bits, bits, "drained before the next growth");
            if let Some(draining) = &window.draining {
                // A slot's home in the grown index is twice its home in the old one, and a
                // probe runs on into the next page at most.
                let moved_to_page = (2 * draining.cursor) >> PAGE_BITS;
                let written = window.index.pages.iter().filter(|page| page.iter().any(|s| *s != 0));
                assert!(written.count() <= moved_to_page + 2, "pages written out of order");
            }
        }
        assert!(most_at_once * 64 < n_to_move, "{most_at_once} of {n_to_move} at once");
        assert!(n_inserts <= (1 << (bits - 1)) / MIGRATE_STEP, "{n_inserts} inserts");
        assert_eq!(window.index.len, window.len());
        assert!(window.problems("w").is_empty(), "{:?}", window.problems("w"));
    }

    /// Inserts of new and remembered ids, forgets and copies, through several growths and
    /// shrinks of the index (so with slots both in it and in the one it replaced), answer
    /// as a map would, and the structure stays sound at every step.
    #[test]
    fn a_window_answers_like_a_map_while_its_index_is_replaced() {
        use proptest::prelude::*;
        use proptest::test_runner::TestRunner;
        let ops = proptest::collection::vec((0u8..10, 0u64..3_000), 1..6_000);
        let mut runner = TestRunner::new(ProptestConfig::with_cases(24));
        runner
            .run(&ops, |ops| {
                let mut window = Window::new();
                let mut model = std::collections::BTreeMap::new();
                let (mut stamp, mut forgotten_to, mut copies) = (0u64, 0u64, Vec::new());
                for (i, (op, id)) in ops.into_iter().enumerate() {
                    match op {
                        0..=6 => {
                            stamp += u64::from(op == 0);
                            window.insert(u128::from(id), stamp, i as u64);
                            model.insert(id, (stamp, i as u64));
                        }
                        7 | 8 => {
                            forgotten_to =
                                forgotten_to.max(stamp.saturating_sub(u64::from(op) * 4));
                            window.forget(forgotten_to);
                            model.retain(|_, (forget_at_ms, _)| *forget_at_ms > forgotten_to);
                        }
                        _ => copies.push((window.clone(), model.clone())),
                    }
                    prop_assert_eq!(window.len(), model.len());
                    prop_assert_eq!(window.get(u128::from(id)), model.get(&id).map(|(_, v)| v));
                }
                window.forget(u64::MAX);
                prop_assert_eq!(window.len(), 0);
                copies.push((window, std::collections::BTreeMap::new()));
                for (copy, model) in copies {
                    prop_assert!(copy.problems("w").is_empty(), "{:?}", copy.problems("w"));
                    let live: Vec<_> =
                        copy.iter().map(|(key, at, v)| (key as u64, (at, *v))).collect();
                    let mut expected: Vec<_> = model.into_iter().collect();
                    expected.sort_by_key(|(_, (_, v))| *v);
                    prop_assert_eq!(live, expected);
                }
                Ok(())
            })
            .unwrap();
    }

    /// Serialized as its live entries in log order; decoding refuses entries out of order
    /// or an id twice instead of building a window that misanswers.
    #[test]
    fn serde_round_trips_and_refuses_malformed_entries() {
        let mut window = filled(1_500, |n| n);
        window.forget(499);
        let json = serde_json::to_string(&window).unwrap();
        let decoded: Window<u64> = serde_json::from_str(&json).unwrap();
        assert_eq!(decoded, window);
        assert_eq!(decoded.get(3 * 500), Some(&500));
        let error = serde_json::from_str::<Window<u64>>("[[1,5,0],[2,4,0]]").unwrap_err();
        assert!(error.to_string().contains("out of order"), "{error}");
        let error = serde_json::from_str::<Window<u64>>("[[1,5,0],[1,5,0]]").unwrap_err();
        assert!(error.to_string().contains("twice"), "{error}");
    }
}
