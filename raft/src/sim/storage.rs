//! An in-memory [`KvTree`] with redb's crash semantics, so the simulation runs the real
//! `LogStore` and `StateMachine` without redb's writer thread (which would make a run
//! depend on the OS scheduler).
//!
//! The model: writes (one atomic batch each) go to a journal in order. A durable write
//! makes itself and every write issued before it durable, after a seeded delay that stands
//! for the disk's `fdatasync`. A crash is a power loss: it keeps the durable state and
//! nothing else (redb keeps a volatile commit only in memory, and a power loss takes the
//! page cache and the disk's write cache with it).

use crate::kv::{Durability, KvBatch, KvTree};
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest a sync takes; one in [`FLUSH_SLOW_ONE_IN`] is that slow, the others take at
/// most [`FLUSH_FAST_MAX`]. A slow sync widens the window in which a crash loses writes.
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
    /// Set by a crash: the process is gone, so later calls fail and syncs never land.
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

    /// Crashes the node: from now on every call fails. Returns what the disk holds: the
    /// durable state, without any write not yet synced.
    pub fn crash(&self) -> Disk {
        let mut inner = self.lock();
        assert!(!inner.crashed, "a store crashes once");
        inner.crashed = true;
        inner.durable.clone()
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

    /// Makes every write issued so far durable, after the disk's delay.
    async fn sync(&self) -> Result<(), Crashed> {
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
        // A later sync may have landed first; it covered these writes too.
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

    async fn write(&self, batch: KvBatch, durability: Durability) -> Result<(), Crashed> {
        let write = batch.into_iter().map(|(key, value)| (self.name.clone(), key, value)).collect();
        self.store.write(write)?;
        match durability {
            Durability::Volatile => Ok(()),
            Durability::Durable => self.store.sync().await,
        }
    }
}
