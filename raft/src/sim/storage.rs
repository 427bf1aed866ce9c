//! An in-memory [`KvTree`] with redb's crash semantics, so the simulation runs the real
//! `LogStore` and `StateMachine` without redb's writer thread (which would make a run
//! depend on the OS scheduler).
//!
//! The model: writes (one atomic batch each) go to a journal in order. A durable write
//! makes itself and every write issued before it durable, after a seeded delay that stands
//! for the disk's `fdatasync` (longer while the nemesis makes the disk slow). A crash is a
//! power loss: it keeps the durable state and a random prefix of the writes after it (the
//! `KvTree` contract: writes are atomic and ordered, so what reached the platter before
//! the power went is some prefix; redb rolls back a torn transaction). Opt-in
//! ([`DiskFaults`]): syncs that lie, acknowledged without landing, as sled's
//! `sync_file_range` could; redb's `fsync` is honest, so no run of the seeds enables it.
//! Failing devices ([`IoFault`], set by the nemesis for a while): EIO fails every read,
//! write and sync, ENOSPC every write; a failed write is not applied (redb aborts the
//! transaction), a failed sync lands nothing.

use super::invariants::Invariants;
use crate::codec;
use crate::kv::{Durability, KvBatch, KvTree};
use crate::log_store::KEY_VOTE;
use crate::types::NodeId;
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Longest a sync takes; one in [`FLUSH_SLOW_ONE_IN`] is that slow, the others take at
/// most [`FLUSH_FAST_MAX`]. A slow sync widens the window in which a crash loses writes.
const FLUSH_SLOW: Duration = Duration::from_millis(20);
const FLUSH_FAST_MAX: Duration = Duration::from_millis(2);
const FLUSH_SLOW_ONE_IN: u32 = 20;

/// Faults of the disk that a correct store cannot survive, enabled only to show that the
/// checks catch them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskFaults {
    /// One sync in this many is acknowledged without making anything durable (0: never).
    pub lying_sync_one_in: u32,
}

/// A device failing for a while: what every call of the store fails with meanwhile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoFault {
    /// EIO: reads, writes and syncs fail (a dying disk, a detached volume).
    Eio,
    /// ENOSPC: writes fail until space is freed; reads and syncs work.
    Enospc,
}

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
    /// Set once [`MemStore::crash`] has handed out the disk.
    taken: bool,
    /// Set when a crash strikes right after a named write: how many unsynced writes
    /// survive it. After a synced write none (the harshest power loss, so a write wrongly
    /// left unsynced is lost); after an unsynced one every write up to it and none after
    /// (it landed, and what was to follow it did not: a purge on disk before the snapshot
    /// it relies on).
    unsynced_kept: Option<usize>,
    faults: DiskFaults,
    /// While the device fails: how.
    io_fault: Option<IoFault>,
    /// While the disk is slow: how long a sync takes at most instead.
    slow: Option<Duration>,
    /// The node this store belongs to and the run's invariants, told of each saved vote.
    watched: Option<(NodeId, Arc<Invariants>)>,
    /// The kind of write right after whose return the store crashes (see
    /// [`MemStore::crash_after`]), and who waits for it.
    crash_after: Option<(WriteKind, Arc<Notify>)>,
}

/// The writes the stores make, told apart by tree and key, so a crash can strike right
/// after a named one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    Vote,
    Committed,
    PurgePoint,
    Append,
    /// A truncation or a purge removing entries.
    LogRemoval,
    Snapshot,
}

impl WriteKind {
    pub const ALL: [WriteKind; 6] = [
        WriteKind::Vote,
        WriteKind::Committed,
        WriteKind::PurgePoint,
        WriteKind::Append,
        WriteKind::LogRemoval,
        WriteKind::Snapshot,
    ];

    fn of(tree: &str, batch: &KvBatch) -> Option<WriteKind> {
        let (_, kind) = tree.split_once('/')?;
        let (key, value) = batch.first()?;
        Some(match (kind, key.as_slice(), value) {
            ("meta", KEY_VOTE, _) => WriteKind::Vote,
            ("meta", b"committed", _) => WriteKind::Committed,
            ("meta", _, _) => WriteKind::PurgePoint,
            ("log", _, Some(_)) => WriteKind::Append,
            ("log", _, None) => WriteKind::LogRemoval,
            _ => WriteKind::Snapshot,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the simulated node crashed; its store is gone")]
    Crashed,
    #[error("input/output error (os error 5, EIO)")]
    Eio,
    #[error("no space left on device (os error 28, ENOSPC)")]
    Enospc,
    /// What a [`crate::kv::MakeWrites`] failed with.
    #[error(transparent)]
    Made(#[from] std::io::Error),
}

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
            taken: false,
            unsynced_kept: None,
            faults: DiskFaults::default(),
            io_fault: None,
            slow: None,
            watched: None,
            crash_after: None,
        };
        MemStore { inner: Arc::new(Mutex::new(inner)) }
    }

    pub fn with_faults(self, faults: DiskFaults) -> MemStore {
        self.lock().faults = faults;
        self
    }

    /// Makes every sync take up to `sync_max` (a disk that stalls: a busy or failing
    /// device, a full write cache), or, with `None`, the usual time again.
    pub fn set_slow(&self, sync_max: Option<Duration>) {
        self.lock().slow = sync_max;
    }

    /// Makes the device fail as `fault` says until called again with `None`.
    pub fn set_io_fault(&self, fault: Option<IoFault>) {
        self.lock().io_fault = fault;
    }

    /// Tells `invariants` of every vote node `node` saves in this store.
    pub fn watched(self, node: NodeId, invariants: Arc<Invariants>) -> MemStore {
        self.lock().watched = Some((node, invariants));
        self
    }

    /// Crashes the store right after the next write of `kind` returns to its writer (as a
    /// power loss the instant it returned would: after a synced write every unsynced write
    /// is lost, after an unsynced one it survives with the writes before it), and notifies the returned [`Notify`]; the node's tasks live on until
    /// [`MemStore::crash`], failing at their next store call. Replaces any earlier request.
    pub fn crash_after(&self, kind: WriteKind) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        self.lock().crash_after = Some((kind, Arc::clone(&notify)));
        notify
    }

    /// Cancels a [`MemStore::crash_after`]; says whether it had struck already (in the
    /// same instant as its waiter gave up).
    pub fn crash_after_nothing(&self) -> bool {
        self.lock().crash_after.take().is_none()
    }

    /// Makes the next crash keep no write that was not synced.
    pub fn lose_unsynced_on_crash(&self) {
        self.lock().unsynced_kept = Some(0);
    }

    /// What stable storage holds now.
    pub fn durable(&self) -> Disk {
        self.lock().durable.clone()
    }

    pub fn tree(&self, name: &str) -> MemTree {
        MemTree { store: self.clone(), name: name.to_owned() }
    }

    /// Crashes the node: from now on every call fails. Returns what the disk holds: the
    /// durable state and a random prefix of the writes not yet synced.
    pub fn crash(&self) -> Disk {
        let mut inner = self.lock();
        assert!(!inner.taken, "a store crashes once");
        inner.crashed = true;
        inner.taken = true;
        let n_journalled = inner.journal.len();
        let n_kept = match inner.unsynced_kept {
            Some(n_kept) => n_kept.min(n_journalled),
            None => inner.rng.gen_range(0..=n_journalled),
        };
        let mut disk = inner.durable.clone();
        for write in &inner.journal[..n_kept] {
            apply(&mut disk, write);
        }
        disk
    }

    /// A write of `tree` returned to its writer: tells the invariants of a saved vote,
    /// and crashes if a crash waits for this kind of write.
    fn returned(&self, tree: &str, kind: Option<WriteKind>, batch: &KvBatch, synced: bool) {
        let mut inner = self.lock();
        if let (Some(WriteKind::Vote), Some((node, invariants))) = (kind, &inner.watched) {
            let group = tree.split_once('/').and_then(|(g, _)| g.parse().ok()).expect("g/meta");
            let value = batch[0].1.as_ref().expect("a vote is written, never removed");
            invariants.vote_saved(*node, group, codec::decode(value).expect("a vote decodes"));
        }
        if kind.is_some() && inner.crash_after.as_ref().map(|(k, _)| Some(*k)) == Some(kind) {
            let (_, notify) = inner.crash_after.take().expect("checked");
            inner.crashed = true;
            // An unsynced write returns as soon as it is journalled: it is the last one.
            inner.unsynced_kept = Some(if synced { 0 } else { inner.journal.len() });
            notify.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("store lock poisoned")
    }

    fn write(&self, write: Write) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.usable()?;
        match inner.io_fault {
            Some(IoFault::Eio) => return Err(StoreError::Eio),
            Some(IoFault::Enospc) => return Err(StoreError::Enospc),
            None => {}
        }
        apply(&mut inner.live, &write);
        inner.journal.push(write);
        Ok(())
    }

    fn read<R>(
        &self,
        tree: &str,
        f: impl FnOnce(&BTreeMap<Vec<u8>, Vec<u8>>) -> R,
    ) -> Result<R, StoreError> {
        let inner = self.lock();
        inner.usable()?;
        if inner.io_fault == Some(IoFault::Eio) {
            return Err(StoreError::Eio);
        }
        let empty = BTreeMap::new();
        Ok(f(inner.live.get(tree).unwrap_or(&empty)))
    }

    /// Makes every write issued so far durable, after the disk's delay.
    async fn sync(&self) -> Result<(), StoreError> {
        let (n_target, delay, lies) = {
            let mut inner = self.lock();
            inner.usable()?;
            let slow = inner.slow;
            let delay = match slow {
                Some(slow) => inner.rng.gen_range(Duration::ZERO..=slow),
                None if inner.rng.gen_ratio(1, FLUSH_SLOW_ONE_IN) => FLUSH_SLOW,
                None => inner.rng.gen_range(Duration::ZERO..=FLUSH_FAST_MAX),
            };
            let one_in = inner.faults.lying_sync_one_in;
            let lies = one_in > 0 && inner.rng.gen_ratio(1, one_in);
            (inner.n_durable + inner.journal.len() as u64, delay, lies)
        };
        tokio::time::sleep(delay).await;
        let mut inner = self.lock();
        inner.usable()?;
        if inner.io_fault == Some(IoFault::Eio) {
            // Nothing landed; a later sync or a crash's surviving prefix may still save it.
            return Err(StoreError::Eio);
        }
        if lies {
            // Acknowledged, and nothing landed: a later honest sync may still save it.
            return Ok(());
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

impl Inner {
    fn usable(&self) -> Result<(), StoreError> {
        match self.crashed {
            true => Err(StoreError::Crashed),
            false => Ok(()),
        }
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
    type Error = StoreError;

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.read(&self.name, |tree| tree.get(key).cloned())
    }

    fn last(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.read(&self.name, |tree| tree.values().next_back().cloned())
    }

    fn range(
        &self,
        range: (Bound<&[u8]>, Bound<&[u8]>),
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.store.read(&self.name, |tree| {
            tree.range::<[u8], _>(range).map(|(k, v)| (k.clone(), v.clone())).collect()
        })
    }

    fn keys(
        &self,
        range: (Bound<&[u8]>, Bound<&[u8]>),
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        self.store.read(&self.name, |tree| {
            tree.range::<[u8], _>(range).take(limit).map(|(k, _)| k.clone()).collect()
        })
    }

    async fn write(&self, batch: KvBatch, durability: Durability) -> Result<(), StoreError> {
        let kind = WriteKind::of(&self.name, &batch);
        let write =
            batch.iter().map(|(key, value)| (self.name.clone(), key.clone(), value.clone()));
        self.store.write(write.collect())?;
        let synced = durability.is_synced();
        if synced {
            self.store.sync().await?;
        }
        self.store.returned(&self.name, kind, &batch, synced);
        Ok(())
    }
}
