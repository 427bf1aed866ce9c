//! The ordered key-value trees the Raft log, vote and snapshots are written to: in
//! production the log store of our own (`wal.rs`) for logs, votes and identity and a redb
//! database ([`RedbStore`]) for snapshots (the bake-off that chose them is in
//! `docs/storage.md`), each written by a [`StoreWriter`] thread. The stores are written
//! against [`KvTree`] rather than an engine directly so the deterministic simulation
//! (`sim`) can run the very same store code over an in-memory tree that models a crash:
//! every write made durable survives it, every other write is lost.

pub use crate::write_behind::{Hurry, Pace};
use redb::{ReadableDatabase, ReadableTable, TableHandle};
use std::future::Future;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use tokio::sync::{mpsc, oneshot};

/// Writes of one [`KvTree::write`]: a key and the value to insert, or `None` to remove it.
pub type KvBatch = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Takes one write of a [`MakeWrites`]: a key and the value to insert, or `None` to remove
/// it.
pub type PutWrite<'a> = &'a mut dyn FnMut(&[u8], Option<&[u8]>) -> std::io::Result<()>;

/// Makes the writes of one [`KvTree::write_made`], in order, handing each to the
/// [`PutWrite`] it is given as soon as it is made; stops at the first error (its own or
/// the put's) and returns it.
pub type MakeWrites = Box<dyn FnOnce(PutWrite<'_>) -> std::io::Result<()> + Send>;

/// How far a [`KvTree::write`] goes before it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Queued only: applied with the next `Volatile` or `Durable` write of the same store
    /// (in its transaction, before it), so it costs no commit of its own; until then reads
    /// may not see it, and a crash may lose it. For what only a restart reads (the
    /// committed index), written once per entry.
    Deferred,
    /// Visible to every later read, but lost by a crash unless a later durable write (of
    /// any tree of the same store) completes first.
    Volatile,
    /// On stable storage (`fdatasync`ed) when the write returns, with every earlier write
    /// of every tree of the same store.
    Durable,
    /// As `Durable`, for a write no one waits on for long (a snapshot the node built): a
    /// store with a [`Pace`] writes a round made only of these at that pace, so that it
    /// does not reach the disk in one burst that the log's syncs wait behind.
    Background,
}

impl Durability {
    /// Whether the write is on stable storage when it returns.
    pub fn is_synced(self) -> bool {
        matches!(self, Durability::Durable | Durability::Background)
    }
}

/// One tree of an ordered key-value store. A write is applied atomically, before and after
/// a crash; writes are ordered, so a crash keeps a prefix of them (every durable one and
/// possibly none after the last).
pub trait KvTree: Clone + Send + Sync + 'static {
    type Value: AsRef<[u8]> + Send;
    type Error: std::error::Error + From<std::io::Error> + Send + Sync + 'static;

    fn get(&self, key: &[u8]) -> Result<Option<Self::Value>, Self::Error>;
    /// The value under the greatest key.
    fn last(&self) -> Result<Option<Self::Value>, Self::Error>;
    /// Keys and values within `range`, in key order. Collected rather than streamed: every
    /// caller reads the whole range anyway (entries to replicate, keys to remove).
    fn range(&self, range: (Bound<&[u8]>, Bound<&[u8]>)) -> Result<Vec<KvPair<Self>>, Self::Error>;
    /// The first `limit` keys within `range`, in key order, without their values (what a
    /// removal needs). By default read with the values; a store that can list keys alone
    /// does so.
    fn keys(
        &self,
        range: (Bound<&[u8]>, Bound<&[u8]>),
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, Self::Error> {
        let pairs = self.range(range)?.into_iter().take(limit);
        Ok(pairs.map(|(key, _)| key.as_ref().to_vec()).collect())
    }
    /// Applies every write of `batch` atomically; a later read sees them once this returns
    /// (a `Deferred` write: once a later non-deferred write has returned).
    fn write(
        &self,
        batch: KvBatch,
        durability: Durability,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Applies the writes `make` makes atomically, as [`KvTree::write`] applies a batch
    /// (`durability` is not `Deferred`); if `make` fails, nothing is written and its error
    /// is returned. A store that commits on a thread of its own ([`RedbTree`]) runs `make`
    /// there, inside the transaction, and writes each value as it comes, so a batch of
    /// many large values (a snapshot's pieces) is never held in memory whole; by default
    /// `make` runs at once and its writes are collected into one batch.
    fn write_made(
        &self,
        make: MakeWrites,
        durability: Durability,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let mut batch = KvBatch::new();
        let made = make(&mut |key, value| {
            batch.push((key.to_vec(), value.map(<[u8]>::to_vec)));
            Ok(())
        });
        async move {
            made?;
            self.write(batch, durability).await
        }
    }

    /// Until the guard it returns is dropped, the store writes its
    /// [`Durability::Background`] rounds (the one in progress too) as fast as it can:
    /// the caller is about to wait behind them. `None` from a store that paces nothing.
    fn hurry(&self) -> Option<Hurry> {
        None
    }
}

/// A table's name and every pair in it.
pub(crate) type NamedTable = (String, Vec<KvPair<RedbTree>>);

/// A key and its value as a tree hands them out.
pub type KvPair<T> = (<T as KvTree>::Value, <T as KvTree>::Value);

/// What redb may keep of a log in memory (read cache and write buffer): of the log an
/// older build kept in redb, while it is moved to the log store, and of the bake-off's
/// redb engine. The log's hot pages are its tail; a larger cache only fills with old
/// entries.
pub const REDB_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// What redb may keep of the snapshots in memory. A snapshot is read back only once
/// after its save, to restore, or to send it to a follower, so a cache only holds pages
/// nobody reads: redb moves every page it writes into its read cache while there is
/// room, and with the log's 16 MiB each saved snapshot stayed in memory, up to 16 MiB,
/// until the next. Room for about two of its pieces (`state_machine.rs`), which redb
/// writes out one by one as the next comes in.
pub const REDB_SNAPSHOT_CACHE_BYTES: usize = 2 * 1024 * 1024;
/// Writes waiting for the writer thread at most; a writer beyond waits for room. Each group
/// has about one log write, one vote or committed index and one snapshot or purge in
/// flight at a time, so this bounds a node of hundreds of groups only under a stall.
const WRITES_QUEUED_MAX: usize = 4096;
/// Most writes one round (one commit of a store) takes from the queue (group commit
/// across the trees and groups of a node), so one huge queue cannot delay the first
/// writer for long; as many deferred writes may wait beside the queue and join it.
const WRITES_PER_COMMIT_MAX: usize = 1024;
/// What every write of a store is told once one of its commits has panicked.
const COMMIT_PANICKED: &str = "a commit of this store panicked";

/// A node's redb database, written by one thread of its own. Every write goes through that
/// thread, which takes whatever writes are queued, applies them in one transaction and
/// commits it, `fdatasync`ed if any of them asked to be durable (`Deferred` writes wait
/// for the next round with another write in it): concurrent appends of the node's groups,
/// votes and snapshots share one sync, writers never block a tokio worker on redb's writer
/// lock, and, with one writer and MVCC readers, no lock order can deadlock. A thread rather
/// than a task that hands each commit to the blocking pool: openraft 0.9's core waits for
/// every append's sync, and the two hand-offs (to the pool and back to the task) added
/// ~0.2–0.35 ms to each of the ~0.6–1 ms appends under `cluster_load` (docs/benchmarks.md,
/// "Session 8"). Reads run on the caller's thread in their own read transaction. Cheap to
/// clone; the writer thread ends, and the file is closed, when the last handle is dropped.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<redb::Database>,
    writer: StoreWriter,
    /// The pace of its `Background` rounds (shared with the writer), for [`KvTree::hurry`].
    pace: Pace,
}

/// The queue in front of a store's writer thread (the redb database's, the WAL's): each
/// round of queued writes is committed at once, `Deferred` writes waiting for a round
/// with another write in it; a write that finds the writer idle may be committed by its
/// writer instead ([`IdleWrite`]). Rounds are committed one at a time, under a lock, so a
/// crash keeps a prefix of them. Cheap to clone; the thread ends when the last clone is
/// gone.
#[derive(Clone)]
pub(crate) struct StoreWriter {
    writes_tx: mpsc::Sender<WriteRequest>,
    deferred: Arc<DeferredWrites>,
    /// The store's commit: run by the writer thread for each round, and by a writer
    /// itself for a write that finds the writer idle, if `idle_write` says so.
    commit: Arc<Mutex<Commit>>,
    idle_write: IdleWrite,
}

type Commit = Box<dyn FnMut(&mut [WriteRequest]) -> Result<(), String> + Send>;

/// Who commits a write to the log ([`crate::WalStore`]) that finds its writer idle:
/// nothing queued and no round being committed. Chosen by [`crate::NodeOptions`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum IdleWrite {
    /// The writer thread, as every other write. A ledger process keeps this: its groups'
    /// cores, replication and heartbeats share two tokio workers, and a worker blocked for
    /// a sync holds back a task it had just woken; a write committed by its writer there
    /// coincided with a group's leadership going by election instead of a hand-over under
    /// CI's load (docs/benchmarks.md, "Session 53"). A redb store (snapshots, whose commits
    /// can take seconds) always queues.
    #[default]
    Queued,
    /// The writer, on its own thread, blocked for the commit (one `pwrite` and one
    /// `fdatasync`), in a round of its own with whatever deferred writes wait: no hand-off
    /// to the writer thread and back, each of which woke a sleeping thread (31 and 35 µs
    /// beside a 0.16-ms sync on `solrouter dev`'s path at 2,000 requests/s). For a node
    /// whose tasks have a thread of their own with nothing beside them that must be
    /// timely: `solrouter dev`'s one-node ledger (docs/benchmarks.md, "Session 54").
    CommittedByWriter,
}

/// `Deferred` writes wait here, beside the queue rather than in it, so that queuing one
/// wakes no thread: every commit of a group writes its committed index so, and its
/// writer's wake-up to take it (a futex wake and a context switch, on openraft's core's
/// way to applying the entry) came to half of the log writer's wake-ups (docs/benchmarks.md,
/// "Session 24"). The writer takes them with the next round that holds another write.
#[derive(Default)]
struct DeferredWrites {
    /// At most [`WRITES_PER_COMMIT_MAX`]; beyond, a deferred write is written as a
    /// volatile one.
    waiting: Mutex<Vec<WriteRequest>>,
    /// The order writes were issued in, deferred or not: a round is committed in it, so a
    /// deferred write taken with a round lands after the writes issued before it.
    next_seq: AtomicU64,
}

impl DeferredWrites {
    fn take(&self) -> Vec<WriteRequest> {
        std::mem::take(&mut *self.waiting.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

pub(crate) struct WriteRequest {
    pub(crate) table: Arc<str>,
    pub(crate) batch: KvBatch,
    /// Writes made during the commit, after `batch`'s ([`KvTree::write_made`]); taken by
    /// the commit that runs them.
    pub(crate) made: Option<MakeWrites>,
    pub(crate) durability: Durability,
    /// Where the commit's result goes; `None` for a `Deferred` write, whose writer does
    /// not wait (a failed commit fails the non-deferred write it was committed with), and
    /// for a write its writer commits (it has the result at hand).
    done: Option<oneshot::Sender<Result<(), String>>>,
    /// When it was issued, among its store's writes.
    seq: u64,
}

impl StoreWriter {
    /// Starts the thread `name`, which hands every round of queued writes to `commit`
    /// (never an empty round, never one of only `Deferred` writes but the last) and tells
    /// their writers its result; a write that finds the writer idle is committed as
    /// `idle_write` says.
    pub(crate) fn spawn(
        name: &str,
        idle_write: IdleWrite,
        commit: impl FnMut(&mut [WriteRequest]) -> Result<(), String> + Send + 'static,
    ) -> std::io::Result<StoreWriter> {
        let (writes_tx, writes_rx) = mpsc::channel(WRITES_QUEUED_MAX);
        let deferred = Arc::<DeferredWrites>::default();
        let waiting = Arc::clone(&deferred);
        let commit: Arc<Mutex<Commit>> = Arc::new(Mutex::new(Box::new(commit)));
        let committer = Arc::clone(&commit);
        std::thread::Builder::new().name(name.to_owned()).spawn(move || {
            // A commit that panicked on a writer's thread leaves the store as broken as
            // one that panicked here: every later round fails.
            write_loop(writes_rx, &waiting, |round| match committer.lock() {
                Ok(mut commit) => commit(round),
                Err(_) => Err(COMMIT_PANICKED.to_owned()),
            });
        })?;
        Ok(StoreWriter { writes_tx, deferred, commit, idle_write })
    }

    /// Queues `batch` for `table` and waits as far as `durability` says.
    pub(crate) async fn write(
        &self,
        table: &Arc<str>,
        batch: KvBatch,
        durability: Durability,
    ) -> Result<(), String> {
        self.queue(table, batch, None, durability).await
    }

    /// Queues the writes `make` makes for `table`, run by the commit that takes them
    /// ([`KvTree::write_made`]), and waits as far as `durability` says.
    pub(crate) async fn write_made(
        &self,
        table: &Arc<str>,
        make: MakeWrites,
        durability: Durability,
    ) -> Result<(), String> {
        assert_ne!(durability, Durability::Deferred, "made writes are waited for");
        self.queue(table, KvBatch::new(), Some(make), durability).await
    }

    async fn queue(
        &self,
        table: &Arc<str>,
        batch: KvBatch,
        made: Option<MakeWrites>,
        durability: Durability,
    ) -> Result<(), String> {
        let seq = self.deferred.next_seq.fetch_add(1, Ordering::Relaxed);
        let table = Arc::clone(table);
        let mut request = WriteRequest { table, batch, made, durability, done: None, seq };
        if durability == Durability::Deferred {
            let mut waiting = self.deferred.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            if waiting.len() < WRITES_PER_COMMIT_MAX {
                waiting.push(request);
                return Ok(());
            }
            // Too many wait (a stall): this one is written as a volatile write, waited
            // for, which holds its writer back. So no deferred write is ever queued, and
            // every round, the writer thread's or a writer's own, takes them all.
            request.durability = Durability::Volatile;
        }
        if self.idle_write == IdleWrite::CommittedByWriter
            && self.writes_tx.capacity() == WRITES_QUEUED_MAX
        {
            // Nothing queued; the lock is free unless a round is being committed. Writes
            // queued after this check wait for the lock, behind this round.
            match self.commit.try_lock() {
                Ok(mut commit) => {
                    return commit_round(&mut *commit, vec![request], self.deferred.take());
                }
                Err(TryLockError::Poisoned(_)) => return Err(COMMIT_PANICKED.to_owned()),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        let (done, done_rx) = oneshot::channel();
        request.done = Some(done);
        let closed = || "the store's writer thread is gone".to_owned();
        self.writes_tx.send(request).await.map_err(|_| closed())?;
        done_rx.await.map_err(|_| closed())?
    }
}

/// A node's two stores: the log (entries, votes, committed indexes, identity) and the
/// snapshots ([`crate::SNAPSHOT_FILE_NAME`]), each with its own writer.
pub struct NodeStores {
    pub log: crate::wal::WalStore,
    pub snapshots: RedbStore,
}

impl RedbStore {
    /// Opens (or creates) the database file at `path`, keeping at most `cache_bytes` of it
    /// in memory, its [`Durability::Background`] writes reaching the disk at `pace`, and
    /// starts its writer thread. Fails with `DatabaseError::DatabaseAlreadyOpen` while
    /// another handle in this process, or another process, has it open.
    pub fn open(
        path: &Path,
        cache_bytes: usize,
        pace: Pace,
    ) -> Result<RedbStore, redb::DatabaseError> {
        let db = crate::write_behind::create(
            redb::Builder::new().set_cache_size(cache_bytes),
            path,
            pace.clone(),
        )?;
        let db = Arc::new(db);
        let committed = Arc::clone(&db);
        let switch = pace.clone();
        let writer = StoreWriter::spawn("redb-writer", IdleWrite::Queued, move |round| {
            switch.set(round.iter().all(|r| r.durability == Durability::Background));
            // redb's errors are not `Clone`: every writer of the round gets the message.
            let committed = commit(&committed, round).map_err(|e| e.to_string());
            switch.set(false);
            committed
        })
        .map_err(|e| redb::DatabaseError::Storage(redb::StorageError::Io(e)))?;
        Ok(RedbStore { db, writer, pace })
    }

    pub fn tree(&self, name: &str) -> RedbTree {
        RedbTree { store: self.clone(), table: Arc::from(name) }
    }

    /// Every table with its pairs (for moving an older build's log out of redb).
    pub(crate) fn tables(&self) -> Result<Vec<NamedTable>, redb::Error> {
        let txn = self.db.begin_read()?;
        let names: Vec<String> = txn.list_tables()?.map(|t| t.name().to_owned()).collect();
        let all = (Bound::Unbounded, Bound::Unbounded);
        names.into_iter().map(|name| Ok((name.clone(), self.tree(&name).range(all)?))).collect()
    }
}

/// The writer thread: one commit per round of queued writes, until every handle is gone.
/// `Deferred` writes wait beside the queue for the next round, so they share its commit; a
/// round is committed in the order its writes were issued. A panicking commit ends the
/// thread: its writers, and every later one, see the channel closed.
fn write_loop(
    mut writes_rx: mpsc::Receiver<WriteRequest>,
    deferred: &DeferredWrites,
    mut commit: impl FnMut(&mut [WriteRequest]) -> Result<(), String>,
) {
    while let Some(request) = writes_rx.blocking_recv() {
        let mut round = vec![request];
        while round.len() < WRITES_PER_COMMIT_MAX {
            match writes_rx.try_recv() {
                Ok(request) => round.push(request),
                Err(_) => break,
            }
        }
        // Its writers are told the result.
        let _ = commit_round(&mut commit, round, deferred.take());
    }
    // Every handle is gone: what was deferred goes in a last, volatile, round.
    let waiting = deferred.take();
    if !waiting.is_empty() {
        let _ = commit_round(&mut commit, Vec::new(), waiting);
    }
}

/// Commits `round` with the deferred writes that waited beside the queue, in the order
/// they were all issued, tells their writers and returns the result.
fn commit_round(
    commit: &mut impl FnMut(&mut [WriteRequest]) -> Result<(), String>,
    mut round: Vec<WriteRequest>,
    waiting: Vec<WriteRequest>,
) -> Result<(), String> {
    if !waiting.is_empty() {
        round.extend(waiting);
        round.sort_unstable_by_key(|request| request.seq);
    }
    assert!(!round.is_empty() && round.len() <= 2 * WRITES_PER_COMMIT_MAX);
    let result = commit(&mut round);
    for done in round.into_iter().filter_map(|request| request.done) {
        // A writer that gave up waiting has dropped its receiver; nothing to tell it.
        let _ = done.send(result.clone());
    }
    result
}

/// Every table maps byte strings to byte strings.
fn table(name: &str) -> redb::TableDefinition<'_, &'static [u8], &'static [u8]> {
    redb::TableDefinition::new(name)
}

/// Commits `requests` in one transaction, running their [`MakeWrites`] inside it; if any
/// fails, the transaction is dropped (redb aborts it) and nothing of the round is written.
fn commit(db: &redb::Database, requests: &mut [WriteRequest]) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    let durable = requests.iter().any(|r| r.durability.is_synced());
    let durability = if durable { redb::Durability::Immediate } else { redb::Durability::None };
    txn.set_durability(durability)?;
    for request in requests {
        let mut table = txn.open_table(table(&request.table))?;
        let mut put = |key: &[u8], value: Option<&[u8]>| match value {
            Some(value) => table.insert(key, value).map(drop),
            None => table.remove(key).map(drop),
        };
        for (key, value) in &request.batch {
            put(key, value.as_deref())?;
        }
        if let Some(make) = request.made.take() {
            make(&mut |key, value| put(key, value).map_err(std::io::Error::other))?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// One named table of a [`RedbStore`].
#[derive(Clone)]
pub struct RedbTree {
    store: RedbStore,
    table: Arc<str>,
}

impl RedbTree {
    /// Runs `f` over the table in a fresh read transaction; a table never written reads as
    /// empty.
    fn read<R>(
        &self,
        f: impl FnOnce(&redb::ReadOnlyTable<&'static [u8], &'static [u8]>) -> Result<R, redb::Error>,
        empty: R,
    ) -> Result<R, redb::Error> {
        let txn = self.store.db.begin_read()?;
        match txn.open_table(table(&self.table)) {
            Ok(table) => f(&table),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(empty),
            Err(e) => Err(e.into()),
        }
    }
}

/// A failed commit as the writer thread reports it (its message), as redb's error.
fn writer_failed(message: String) -> redb::Error {
    redb::Error::Io(std::io::Error::other(message))
}

impl KvTree for RedbTree {
    type Value = Vec<u8>;
    type Error = redb::Error;

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, redb::Error> {
        self.read(|table| Ok(table.get(key)?.map(|value| value.value().to_vec())), None)
    }

    fn last(&self) -> Result<Option<Vec<u8>>, redb::Error> {
        self.read(|table| Ok(table.last()?.map(|(_, value)| value.value().to_vec())), None)
    }

    fn range(
        &self,
        range: (Bound<&[u8]>, Bound<&[u8]>),
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, redb::Error> {
        let collect = |table: &redb::ReadOnlyTable<&'static [u8], &'static [u8]>| {
            let pairs = table.range::<&[u8]>(range)?.map(|pair| {
                let (key, value) = pair?;
                Ok((key.value().to_vec(), value.value().to_vec()))
            });
            pairs.collect::<Result<Vec<_>, redb::Error>>()
        };
        self.read(collect, Vec::new())
    }

    async fn write(&self, batch: KvBatch, durability: Durability) -> Result<(), redb::Error> {
        let written = self.store.writer.write(&self.table, batch, durability).await;
        written.map_err(writer_failed)
    }

    async fn write_made(
        &self,
        make: MakeWrites,
        durability: Durability,
    ) -> Result<(), redb::Error> {
        let written = self.store.writer.write_made(&self.table, make, durability).await;
        written.map_err(writer_failed)
    }

    fn hurry(&self) -> Option<Hurry> {
        Some(self.store.pace.hurry())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A deferred write waits for the store's next write and lands with it, in order: a
    /// later write of the same key wins, and it is durable with a durable write.
    #[tokio::test]
    async fn a_deferred_write_lands_with_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("kv.redb"), REDB_CACHE_BYTES, Pace::unpaced())
            .unwrap();
        let (meta, log) = (store.tree("0/meta"), store.tree("0/log"));
        let put = |value: &[u8]| vec![(b"k".to_vec(), Some(value.to_vec()))];
        meta.write(put(b"deferred"), Durability::Deferred).await.unwrap();
        log.write(put(b"entry"), Durability::Durable).await.unwrap();
        assert_eq!(meta.get(b"k").unwrap().as_deref(), Some(&b"deferred"[..]));
        meta.write(put(b"first"), Durability::Deferred).await.unwrap();
        meta.write(put(b"second"), Durability::Volatile).await.unwrap();
        assert_eq!(meta.get(b"k").unwrap().as_deref(), Some(&b"second"[..]));
    }

    /// Writes made during the commit land in its transaction, as a batch would; a make
    /// that fails part way writes nothing, returns its error, and leaves the store working.
    #[tokio::test]
    async fn writes_made_in_the_commit_land_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(
            &dir.path().join("kv.redb"),
            REDB_SNAPSHOT_CACHE_BYTES,
            Pace::unpaced(),
        );
        let tree = store.unwrap().tree("0/snapshot");
        let piece = |n: u8| vec![n; 300_000];
        let make: MakeWrites = Box::new(move |put| {
            (0..8).try_for_each(|n| put(&[n], Some(&piece(n))))?;
            put(b"head", Some(b"8"))
        });
        tree.write_made(make, Durability::Durable).await.unwrap();

        let make: MakeWrites = Box::new(|put| {
            put(b"head", Some(b"9"))?;
            put(&[0], None)?;
            Err(std::io::Error::other("the encoder gave up"))
        });
        let failed = tree.write_made(make, Durability::Durable).await.unwrap_err();
        assert!(failed.to_string().contains("the encoder gave up"), "{failed}");
        tree.write(vec![(b"after".to_vec(), Some(b"ok".to_vec()))], Durability::Durable)
            .await
            .unwrap();
        assert_eq!(tree.get(b"head").unwrap().as_deref(), Some(&b"8"[..]));
        assert_eq!(tree.get(b"after").unwrap().as_deref(), Some(&b"ok"[..]));
        for n in 0..8 {
            assert_eq!(tree.get(&[n]).unwrap(), Some(piece(n)), "piece {n}");
        }
    }

    /// A paced store writes a `Background` round at its pace and a `Durable` one as fast as
    /// it is made: 4 MiB at 4 MiB/s takes a second or more, then less unpaced.
    #[tokio::test]
    async fn only_background_writes_wait_for_the_pace() {
        let dir = tempfile::tempdir().unwrap();
        let pace = Pace::bytes_per_second(4 << 20);
        let store = RedbStore::open(&dir.path().join("kv.redb"), REDB_SNAPSHOT_CACHE_BYTES, pace);
        let tree = store.unwrap().tree("0/snapshot");
        let timed = |durability: Durability| {
            let tree = tree.clone();
            async move {
                let make: MakeWrites =
                    Box::new(|put| (0..16u8).try_for_each(|n| put(&[n], Some(&[n; 256 << 10]))));
                let started = std::time::Instant::now();
                tree.write_made(make, durability).await.unwrap();
                started.elapsed()
            }
        };
        let background = timed(Durability::Background).await;
        assert!(background >= Duration::from_millis(900), "background in {background:?}");
        let durable = timed(Durability::Durable).await;
        assert!(durable < Duration::from_millis(900), "durable in {durable:?}");
    }

    /// A deferred write wakes no thread (it waits beside the queue), and the round that
    /// takes it commits it in the order of issue: after the writes issued before it,
    /// before those issued after it, though these reached the queue first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deferred_write_waits_beside_the_queue_and_keeps_its_place() {
        let (rounds_tx, rounds_rx) = std::sync::mpsc::sync_channel::<Vec<String>>(1);
        let (go_tx, go_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let writer = StoreWriter::spawn("test-writer", IdleWrite::Queued, move |round| {
            rounds_tx.send(round.iter().map(|r| r.table.to_string()).collect()).unwrap();
            go_rx.recv().unwrap();
            Ok(())
        })
        .unwrap();
        let write = |table: &str, durability| {
            let (writer, table) = (writer.clone(), Arc::from(table));
            tokio::spawn(async move { writer.write(&table, Vec::new(), durability).await })
        };
        let first = write("first", Durability::Volatile);
        assert_eq!(rounds_rx.recv().unwrap(), ["first"], "the writer is inside a commit");
        write("deferred", Durability::Deferred).await.unwrap().unwrap();
        assert_eq!(writer.deferred.waiting.lock().unwrap().len(), 1, "not in the queue");
        let second = write("second", Durability::Volatile);
        while writer.writes_tx.capacity() == WRITES_QUEUED_MAX {
            tokio::task::yield_now().await;
        }
        go_tx.send(()).unwrap();
        assert_eq!(rounds_rx.recv().unwrap(), ["deferred", "second"]);
        go_tx.send(()).unwrap();
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        assert!(writer.deferred.waiting.lock().unwrap().is_empty());
    }

    /// A write that finds its store's writer idle is committed on its writer's own thread,
    /// with the deferred writes issued before it, and returns the commit's result; one that
    /// finds a round being committed (its lock held here) goes through the writer thread.
    #[tokio::test]
    async fn an_idle_write_is_committed_on_its_writers_thread() {
        // Each round is read before the next is committed.
        let (rounds_tx, rounds_rx) =
            std::sync::mpsc::sync_channel::<(Vec<String>, Option<String>)>(1);
        let commit = move |round: &mut [WriteRequest]| {
            let tables: Vec<String> = round.iter().map(|r| r.table.to_string()).collect();
            let refused = tables.iter().any(|table| table == "refused");
            rounds_tx.send((tables, std::thread::current().name().map(str::to_owned))).unwrap();
            if refused {
                Err("refused".to_owned())
            } else {
                Ok(())
            }
        };
        let writer = StoreWriter::spawn("test-writer", IdleWrite::CommittedByWriter, commit);
        let writer = writer.unwrap();
        let this_thread = std::thread::current().name().map(str::to_owned);
        let (deferred, refused, queued) =
            (Arc::from("deferred"), Arc::from("refused"), Arc::from("queued"));
        writer.write(&deferred, Vec::new(), Durability::Deferred).await.unwrap();
        let written = writer.write(&refused, Vec::new(), Durability::Durable).await;
        assert_eq!(written, Err("refused".to_owned()));
        let (tables, thread) = rounds_rx.try_recv().expect("committed before it returned");
        assert_eq!(tables, ["deferred", "refused"]);
        assert_eq!(thread, this_thread, "on the writer's thread");

        let round_in_progress = writer.commit.lock().unwrap();
        let mut write = std::pin::pin!(writer.write(&queued, Vec::new(), Durability::Volatile));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(write.as_mut().poll(&mut cx).is_pending(), "queued for the writer thread");
        drop(round_in_progress);
        write.await.unwrap();
        let (tables, thread) = rounds_rx.recv().unwrap();
        assert_eq!(tables, ["queued"]);
        assert_eq!(thread.as_deref(), Some("test-writer"));
    }
}
