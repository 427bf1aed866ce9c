//! An in-memory [`KvTree`] with sled's crash semantics, so the simulation runs the real
//! `LogStore` and `StateMachine` without sled's background threads (which would make a run
//! depend on the OS scheduler).
//!
//! The model: writes (a single insert, or one atomic batch) go to a journal in order. A
//! flush makes every write issued before it durable, after a seeded delay that stands for
//! the disk. A crash keeps the durable state plus a random prefix of the journal: sled
//! recovers a prefix of its log, and whatever was not flushed may or may not survive.

use crate::kv::KvTree;
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest a flush takes; one in [`FLUSH_SLOW_ONE_IN`] is that slow, the others take at
/// most [`FLUSH_FAST_MAX`]. A slow flush widens the window in which a crash loses writes.
const FLUSH_SLOW: Duration = Duration::from_millis(20);
const FLUSH_FAST_MAX: Duration = Duration::from_millis(2);
const FLUSH_SLOW_ONE_IN: u32 = 20;

/// What a node's disk holds: tree name → key → value.
pub type Disk = BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>;
/// One atomic write: (tree, key, value to insert or `None` to remove).
type Write = Vec<(String, Vec<u8>, Option<Vec<u8>>)>;

/// The store of one node incarnation: every tree of every group on that node, like one
/// sled database. Cheap to clone (a shared handle).
#[derive(Clone)]
pub struct MemStore {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    /// What reads see: durable state plus every journalled write.
    live: Disk,
    durable: Disk,
    /// Writes not yet durable, oldest first; `journal[0]` has sequence number `n_durable`.
    journal: Vec<Write>,
    n_durable: u64,
    rng: StdRng,
    /// Set by a crash: the process is gone, so later calls fail and flushes never land.
    crashed: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("the simulated node crashed; its store is gone")]
pub struct Crashed;

impl MemStore {
    /// A store holding `disk`, all durable (a fresh disk, or what survived a crash).
    pub fn new(disk: Disk, rng: StdRng) -> MemStore {
        let inner = Inner {
            live: disk.clone(),
            durable: disk,
            journal: Vec::new(),
            n_durable: 0,
            rng,
            crashed: false,
        };
        MemStore { inner: Arc::new(Mutex::new(inner)) }
    }

    pub fn tree(&self, name: &str) -> MemTree {
        MemTree { store: self.clone(), name: name.to_owned() }
    }

    /// Crashes the node: from now on every call fails. Returns what the disk holds, the
    /// durable state plus a random prefix of the unflushed journal.
    pub fn crash(&self, rng: &mut StdRng) -> Disk {
        let mut inner = self.lock();
        assert!(!inner.crashed, "a store crashes once");
        inner.crashed = true;
        let n_kept = rng.gen_range(0..=inner.journal.len());
        let mut disk = inner.durable.clone();
        for write in &inner.journal[..n_kept] {
            apply(&mut disk, write);
        }
        disk
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("store lock poisoned")
    }

    fn write(&self, write: Write) -> Result<(), Crashed> {
        let mut inner = self.lock();
        if inner.crashed {
            return Err(Crashed);
        }
        apply(&mut inner.live, &write);
        inner.journal.push(write);
        Ok(())
    }

    fn read<R>(
        &self,
        tree: &str,
        f: impl FnOnce(&BTreeMap<Vec<u8>, Vec<u8>>) -> R,
    ) -> Result<R, Crashed> {
        let inner = self.lock();
        if inner.crashed {
            return Err(Crashed);
        }
        let empty = BTreeMap::new();
        Ok(f(inner.live.get(tree).unwrap_or(&empty)))
    }

    async fn flush(&self) -> Result<(), Crashed> {
        let (n_target, delay) = {
            let mut inner = self.lock();
            if inner.crashed {
                return Err(Crashed);
            }
            let delay = if inner.rng.gen_ratio(1, FLUSH_SLOW_ONE_IN) {
                FLUSH_SLOW
            } else {
                inner.rng.gen_range(Duration::ZERO..=FLUSH_FAST_MAX)
            };
            (inner.n_durable + inner.journal.len() as u64, delay)
        };
        tokio::time::sleep(delay).await;
        let mut inner = self.lock();
        if inner.crashed {
            return Err(Crashed);
        }
        // A later flush may have landed first; it covered these writes too.
        let n_new = n_target.saturating_sub(inner.n_durable) as usize;
        let landed: Vec<Write> = inner.journal.drain(..n_new).collect();
        for write in &landed {
            apply(&mut inner.durable, write);
        }
        inner.n_durable += n_new as u64;
        Ok(())
    }
}

fn apply(disk: &mut Disk, write: &Write) {
    for (tree, key, value) in write {
        let tree = disk.entry(tree.clone()).or_default();
        match value {
            Some(value) => tree.insert(key.clone(), value.clone()),
            None => tree.remove(key),
        };
    }
}

/// One named tree of a [`MemStore`].
#[derive(Clone)]
pub struct MemTree {
    store: MemStore,
    name: String,
}

impl KvTree for MemTree {
    type Value = Vec<u8>;
    type Error = Crashed;

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Crashed> {
        self.store.read(&self.name, |tree| tree.get(key).cloned())
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> Result<(), Crashed> {
        self.store.write(vec![(self.name.clone(), key.to_vec(), Some(value))])
    }

    fn last(&self) -> Result<Option<Vec<u8>>, Crashed> {
        self.store.read(&self.name, |tree| tree.values().next_back().cloned())
    }

    fn range(
        &self,
        range: (Bound<&[u8]>, Bound<&[u8]>),
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Crashed> {
        self.store.read(&self.name, |tree| {
            tree.range::<[u8], _>(range).map(|(k, v)| (k.clone(), v.clone())).collect()
        })
    }

    fn apply_batch(&self, batch: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), Crashed> {
        let write = batch.into_iter().map(|(key, value)| (self.name.clone(), key, value)).collect();
        self.store.write(write)
    }

    async fn flush(&self) -> Result<(), Crashed> {
        self.store.flush().await
    }
}
