//! The Raft log, the vote and the committed index, kept in redb (through [`KvTree`], so the
//! simulation runs this same code over its in-memory store).
//!
//! Layout, per Raft group `g`: tree `g/log` maps a big-endian `u64` index (so the byte
//! order of keys is index order) to an [`Entry`] in the versioned [`codec`](crate::codec);
//! tree `g/meta` holds the vote, the committed log id and the last purged log id under
//! fixed keys.
//!
//! What is durable when: an appended entry and a vote are `fdatasync`ed before openraft
//! hears of them; the committed index, a truncation and a purge are written volatile (a
//! crash may lose them, and each loss is harmless, see each method; the committed index
//! is not even committed on its own, it rides with the next append). The log is never
//! purged past the snapshot on stable storage, so a crash at any write leaves a snapshot
//! and a contiguous log after it.
//!
//! The last entries appended are also kept decoded in memory ([`Tail`]): openraft reads
//! each entry back right after appending it (to apply it, to replicate it), and those
//! reads then cost neither a read transaction nor a decode.
#![allow(
    clippy::result_large_err,
    reason = "openraft's storage traits return its large StorageError by value; helpers match them"
)]

use crate::codec;
use crate::encoded::EncodedEntries;
use crate::kv::{Durability, KvBatch, KvPair, KvTree};
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};
use crate::wal::{WalStore, WalTree};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader, StorageIOError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

pub(crate) const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";

/// Most entries, and most encoded bytes of entries, the decoded [`Tail`] keeps. Apply
/// and replication read what was appended a few entries ago; a follower further behind
/// is read from the tree. At most this much memory per group.
const TAIL_ENTRIES_MAX: usize = 256;
const TAIL_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Entries one write of a purge's removal takes. A purge behind a snapshot removes every
/// entry since the one before (~70,000 at 2,000 requests/s), and openraft 0.9's core waits
/// for its purge: read with their values and removed in one write, they held the core, so
/// every commit of the group, for 77–87 ms every ~30 s (docs/benchmarks.md, "Session 21").
/// Now the purge returns once its point is written, and the entries go in the background
/// in writes of this many (~0.3 ms each), between which appends take their turns.
const PURGE_ENTRIES_PER_WRITE: usize = 1024;

/// The last entries of the log, decoded, at consecutive indexes up to the log's last
/// entry (or none). Kept in step with the tree by `append`, `truncate` and `purge`, which
/// openraft issues one at a time.
#[derive(Default)]
struct Tail {
    entries: VecDeque<Entry>,
    /// Encoded size of each of `entries`, and their sum.
    sizes: VecDeque<usize>,
    bytes: usize,
}

impl Tail {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|entry| entry.log_id.index)
    }

    /// Adds `entry`, just appended, encoded in `size` bytes, and drops the oldest entries
    /// beyond the bounds.
    fn push(&mut self, entry: Entry, size: usize) {
        if self.entries.back().is_some_and(|last| last.log_id.index + 1 != entry.log_id.index) {
            // Not the next index (openraft never appends so: it truncates, or purges past
            // the end, first): start over, so the tail stays consecutive.
            self.clear_from(0);
        }
        self.entries.push_back(entry);
        self.sizes.push_back(size);
        self.bytes += size;
        while self.entries.len() > TAIL_ENTRIES_MAX || self.bytes > TAIL_BYTES_MAX {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        self.entries.pop_front();
        self.bytes -= self.sizes.pop_front().unwrap_or(0);
    }

    /// Drops the entries at `index` and after.
    fn clear_from(&mut self, index: u64) {
        while self.entries.back().is_some_and(|last| last.log_id.index >= index) {
            self.entries.pop_back();
            self.bytes -= self.sizes.pop_back().unwrap_or(0);
        }
    }

    /// Drops the entries up to `index`.
    fn clear_upto(&mut self, index: u64) {
        while self.first_index().is_some_and(|first| first <= index) {
            self.pop_front();
        }
    }

    /// The entries from `start` (inclusive) to `end` (exclusive), if the tail holds every
    /// entry of the log in that range: `start` is at or after its first entry (it ends at
    /// the log's last, so nothing after it exists).
    fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        if start < first {
            return None;
        }
        let skip = usize::try_from(start - first).ok()?;
        let take = usize::try_from(end.saturating_sub(start)).unwrap_or(usize::MAX);
        Some(self.entries.iter().skip(skip).take(take).cloned().collect())
    }
}

/// Cheap to clone: trees are reference-counted handles, so the log reader openraft asks
/// for is just another handle on the same trees.
#[derive(Clone)]
pub struct LogStore<K: KvTree = WalTree> {
    /// The group, named by a corrupt entry's error.
    group: u32,
    log: K,
    meta: K,
    /// The log id of the group's snapshot on stable storage
    /// ([`StateMachine::saved_snapshot`](crate::state_machine::StateMachine::saved_snapshot)).
    saved_snapshot: watch::Receiver<Option<LogId>>,
    /// Shared with the readers openraft asks for.
    tail: Arc<Mutex<Tail>>,
    /// The encodings of the entries appended last, shared with the group's network: an
    /// entry an AppendEntries brought is written as it came, and one this node appends as
    /// leader is sent as it was written (`encoded.rs`). None for a group without peers.
    encoded: Option<Arc<EncodedEntries>>,
    /// Held while a purge's entries are removed in the background: the next purge waits
    /// for it, so two removals never list the same entries.
    purging: Arc<tokio::sync::Mutex<()>>,
}

impl LogStore {
    /// Group `group`'s log in `store` (see [`LogStore::new`]).
    pub fn open(
        store: &WalStore,
        group: u32,
        saved_snapshot: watch::Receiver<Option<LogId>>,
        encoded: Option<Arc<EncodedEntries>>,
    ) -> LogStore {
        let log = store.tree(&format!("{group}/log"));
        let meta = store.tree(&format!("{group}/meta"));
        LogStore::new(group, log, meta, saved_snapshot, encoded)
    }
}

impl<K: KvTree> LogStore<K> {
    /// Group `group`'s store over two trees of one key-value store (a durable write to
    /// either makes the earlier writes to both durable), purging only what `saved_snapshot`
    /// covers, keeping the encodings of its entries in `encoded` for the group's network
    /// (none without peers).
    pub fn new(
        group: u32,
        log: K,
        meta: K,
        saved_snapshot: watch::Receiver<Option<LogId>>,
        encoded: Option<Arc<EncodedEntries>>,
    ) -> LogStore<K> {
        LogStore {
            group,
            log,
            meta,
            saved_snapshot,
            tail: Arc::default(),
            encoded,
            purging: Arc::default(),
        }
    }

    /// The group whose log this is.
    pub fn group(&self) -> u32 {
        self.group
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        // Every critical section only moves entries in or clones them out: a panic inside
        // one leaves a consistent tail.
        self.tail.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let bytes = self.meta.get(key).map_err(|e| StorageIOError::read(&e))?;
        bytes
            .map(|b| codec::decode(b.as_ref()).map_err(|e| StorageIOError::read(&e).into()))
            .transpose()
    }

    async fn write_meta<T: Serialize>(
        &self,
        key: &[u8],
        value: &T,
        durability: Durability,
    ) -> Result<(), StorageError> {
        let bytes = codec::encode(value).map_err(|e| StorageIOError::write(&e))?;
        let written = self.meta.write(vec![(key.to_vec(), Some(bytes))], durability).await;
        written.map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let last = self.log.last().map_err(|e| StorageIOError::read_logs(&e))?;
        let decoded = last.map(|bytes| decode_entry(self.group, None, bytes.as_ref()));
        decoded.map(|entry| entry.map(|entry| entry.log_id)).transpose()
    }

    /// Removes every entry at `from` and after, in one batch so a crash leaves either all
    /// of them or none.
    async fn remove_from(&self, from: u64) -> Result<(), StorageError> {
        let from = from.to_be_bytes();
        let keys = self.log.keys((Bound::Included(&from[..]), Bound::Unbounded), usize::MAX);
        let keys = keys.map_err(|e| StorageIOError::write_logs(&e))?;
        let removed = self.log.write(removals(keys), Durability::Volatile).await;
        removed.map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    /// Writes `entries` durably and makes them readable at once (from the [`Tail`]): what
    /// [`RaftLogStorage::append`] does before it calls back, with the outcome of the
    /// `fdatasync`ed write to report. Fails only if an entry does not encode.
    async fn append_durably<I>(&self, entries: I) -> Result<std::io::Result<()>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = Vec::new();
        let mut decoded = Vec::new();
        for entry in entries {
            let bytes = match &self.encoded {
                Some(encoded) => encoded.encode(&entry),
                None => codec::encode(&entry),
            };
            let bytes = bytes.map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
            let key = entry.log_id.index.to_be_bytes().to_vec();
            decoded.push((entry, bytes.len()));
            batch.push((key, Some(bytes)));
        }
        // Readable from here on (openraft may read them as soon as this returns), durable
        // once the write returns.
        {
            let mut tail = self.tail();
            for (entry, size) in decoded {
                tail.push(entry, size);
            }
        }
        let written = self.log.write(batch, Durability::Durable).await;
        Ok(written.map_err(|e| std::io::Error::other(e.to_string())))
    }

    /// The stored entries whose index lies in `range`, as raw keys and values.
    fn log_range(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<KvPair<K>>, K::Error> {
        let (start, end) = (range.0.map(u64::to_be_bytes), range.1.map(u64::to_be_bytes));
        self.log.range((start.as_ref().map(|b| &b[..]), end.as_ref().map(|b| &b[..])))
    }
}

impl<K: KvTree> RaftLogReader<TypeConfig> for LogStore<K> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&start) => start,
            Bound::Excluded(&start) => start.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&end) => end.saturating_add(1),
            Bound::Excluded(&end) => end,
            Bound::Unbounded => u64::MAX,
        };
        let cached = self.tail().get(start, end);
        if let Some(entries) = cached {
            return Ok(entries);
        }
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        let pairs = self.log_range(bounds).map_err(|e| StorageIOError::read_logs(&e))?;
        let decode = |(key, bytes): &KvPair<K>| {
            let index = key.as_ref().try_into().ok().map(u64::from_be_bytes);
            decode_entry(self.group, index, bytes.as_ref())
        };
        pairs.iter().map(decode).collect()
    }
}

impl<K: KvTree> RaftLogStorage<TypeConfig> for LogStore<K> {
    type LogReader = LogStore<K>;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta(KEY_PURGED)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    /// The vote must be durable before a node acts on it (otherwise it could vote twice in
    /// one term after a crash).
    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.write_meta(KEY_VOTE, vote, Durability::Durable).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_meta(KEY_VOTE)
    }

    /// Deferred: the committed index only lets a restarted node re-apply its log before
    /// an election; losing the latest value costs time, never correctness. So it is
    /// written with the next append's transaction instead of one of its own, and openraft's
    /// core, which waits for this call before it applies, does not wait for a commit.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.write_meta(KEY_COMMITTED, &committed, Durability::Deferred).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    /// Acknowledges only once the entries are `fdatasync`ed: an entry openraft counts as
    /// persisted may be committed and answered to a client, so neither a SIGKILL nor a
    /// power loss right after the callback may lose it.
    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let written = self.append_durably(entries).await?;
        callback.log_io_completed(written);
        Ok(())
    }

    /// Drops conflicting entries from `log_id` on. Volatile: the append that follows a
    /// truncation overwrites the same indexes durably, and until then the entries lost
    /// with the truncation are ones this node never acknowledged as committed.
    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.tail().clear_from(log_id.index);
        self.remove_from(log_id.index).await
    }

    /// Waits until the snapshot on stable storage covers `log_id`: openraft issues the
    /// purge of a follower's snapshot install next to the install itself, without waiting
    /// for it (openraft 0.9 `install_full_snapshot`), and a crash between a purge and the
    /// snapshot's save would leave a node whose log starts after its snapshot ends, which
    /// never starts again. Openraft's later log writes queue behind this one, so no entry
    /// beyond the hole is written either. Then records the purge point before deleting, so
    /// a crash in between leaves surplus entries below the purge point (harmless) rather
    /// than a hole above it. The entries are removed in the background
    /// ([`PURGE_ENTRIES_PER_WRITE`]): nothing reads below the purge point, and what a crash
    /// leaves there the next purge removes.
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let covered = |saved: &Option<LogId>| saved.is_some_and(|s| s.index >= log_id.index);
        if self.saved_snapshot.wait_for(covered).await.is_err() {
            let gone = std::io::Error::other("the state machine stopped before saving");
            return Err(StorageIOError::write_logs(&gone).into());
        }
        let removing = Arc::clone(&self.purging).lock_owned().await;
        self.tail().clear_upto(log_id.index);
        self.write_meta(KEY_PURGED, &log_id, Durability::Volatile).await?;
        let (log, group) = (self.log.clone(), self.group);
        tokio::spawn(async move {
            if let Err(error) = remove_upto(&log, log_id.index).await {
                // The store failed: the next append reports it; the entries left below the
                // purge point are harmless.
                tracing::warn!(group, %error, "removing purged log entries failed");
            }
            drop(removing);
        });
        Ok(())
    }
}

/// Removes `log`'s entries up to `upto`, lowest first, [`PURGE_ENTRIES_PER_WRITE`] a write.
async fn remove_upto<K: KvTree>(log: &K, upto: u64) -> Result<(), K::Error> {
    let upto = upto.to_be_bytes();
    loop {
        let keys =
            log.keys((Bound::Unbounded, Bound::Included(&upto[..])), PURGE_ENTRIES_PER_WRITE)?;
        let more = keys.len() == PURGE_ENTRIES_PER_WRITE;
        if !keys.is_empty() {
            log.write(removals(keys), Durability::Volatile).await?;
        }
        if !more {
            return Ok(());
        }
    }
}

/// A batch that removes `keys`.
fn removals(keys: Vec<Vec<u8>>) -> KvBatch {
    keys.into_iter().map(|key| (key, None)).collect()
}

/// A stored log entry that does not decode (a flipped bit, a torn write, a format this
/// build does not read), named by where it is.
#[derive(Debug, thiserror::Error)]
#[error("corrupt log entry at group {group}, index {}: {source}", index.map_or("(the last)".to_owned(), |i| i.to_string()))]
struct CorruptEntry {
    group: u32,
    index: Option<u64>,
    #[source]
    source: codec::CodecError,
}

/// Decodes the entry of `group` stored at `index` (`None`: the last one).
fn decode_entry(group: u32, index: Option<u64>, bytes: &[u8]) -> Result<Entry, StorageError> {
    codec::decode(bytes).map_err(|source| {
        let corrupt = CorruptEntry { group, index, source };
        match index {
            Some(index) => StorageIOError::read_log_at_index(index, &corrupt).into(),
            None => StorageIOError::read_logs(&corrupt).into(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::storage::{Disk, MemStore};
    use crate::state_machine::StateMachine;
    use crate::types::{SnapshotMeta, StoredMembership};
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload};
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use solrouter_ledger::Ledger;
    use std::io::Cursor;
    use std::time::Duration;

    /// Entries the log holds before the snapshot arrives, and the snapshot's last index.
    const LOG_LAST: u64 = 5;
    const SNAPSHOT_AT: u64 = 20;
    /// Virtual time the purge is given to finish on its own.
    const PURGE_GRACE: Duration = Duration::from_secs(5);

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn open(
        disk: Disk,
    ) -> (
        MemStore,
        LogStore<crate::sim::storage::MemTree>,
        StateMachine<crate::sim::storage::MemTree>,
    ) {
        let store = MemStore::new(disk, StdRng::seed_from_u64(LOG_LAST));
        let history = crate::history::History::in_memory(crate::HISTORY_RETENTION_DEFAULT)
            .expect("an in-memory history");
        let machine = StateMachine::restore(store.tree("0/snapshot"), 0, history).unwrap();
        let log = LogStore::new(
            0,
            store.tree("0/log"),
            store.tree("0/meta"),
            machine.saved_snapshot(),
            None,
        );
        (store, log, machine)
    }

    /// Writes blank entries `indexes` durably, as an acknowledged append would.
    async fn append(
        log: &LogStore<crate::sim::storage::MemTree>,
        indexes: std::ops::RangeInclusive<u64>,
    ) {
        let batch = indexes
            .map(|index| {
                let entry = Entry { log_id: log_id(index), payload: EntryPayload::Blank };
                (index.to_be_bytes().to_vec(), Some(codec::encode(&entry).unwrap()))
            })
            .collect();
        log.log.write(batch, Durability::Durable).await.unwrap();
    }

    /// What openraft's core does for a follower that receives a snapshot ending at
    /// `SNAPSHOT_AT`, after handing the install to the state machine's task: purge the log
    /// up to the snapshot, then append the leader's next entry.
    async fn core_after_install(mut log: LogStore<crate::sim::storage::MemTree>) {
        log.purge(log_id(SNAPSHOT_AT)).await.unwrap();
        append(&log, SNAPSHOT_AT + 1..=SNAPSHOT_AT + 1).await;
    }

    /// Installs the snapshot of an empty ledger ending at `index`, as from a leader.
    async fn install_snapshot_at(
        machine: &mut StateMachine<crate::sim::storage::MemTree>,
        index: u64,
    ) {
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("1-{index}"),
        };
        let data = codec::encode(&Ledger::default()).unwrap();
        machine.install_snapshot(&meta, Box::new(Cursor::new(data))).await.unwrap();
    }

    /// After a restart, the log must start right after the saved snapshot or earlier, and
    /// be contiguous to its end; returns (purged, snapshot, last log) indexes.
    async fn check_restartable(disk: Disk) -> (Option<u64>, Option<u64>, Option<u64>) {
        let (_store, mut log, mut machine) = open(disk);
        let state = log.get_log_state().await.unwrap();
        let (snapshot, _) = machine.applied_state().await.unwrap();
        let purged = state.last_purged_log_id.map(|id| id.index);
        let snapshot = snapshot.map(|id| id.index);
        assert!(purged <= snapshot, "log purged to {purged:?} past the snapshot at {snapshot:?}");
        let last = state.last_log_id.map(|id| id.index);
        let first = purged.map_or(1, |index| index + 1);
        let entries = log.try_get_log_entries(first..=last.unwrap_or(0)).await.unwrap();
        let expected = last.map_or(0, |last| last.saturating_sub(first - 1));
        assert_eq!(entries.len() as u64, expected, "a hole in the log after {purged:?}");
        (purged, snapshot, last)
    }

    /// Issue 9, fault 3: openraft purges a follower's log up to a snapshot it is still
    /// installing. A power loss before the install is durable must not leave the log
    /// purged past the saved snapshot (the node would never start again); once the
    /// install is durable, the purge and the next append go ahead.
    #[tokio::test(start_paused = true)]
    async fn the_log_is_never_purged_past_the_saved_snapshot() {
        let (store, log, _machine) = open(Disk::new());
        append(&log, 1..=LOG_LAST).await;
        let core = tokio::spawn(core_after_install(log.clone()));
        tokio::time::sleep(PURGE_GRACE).await;
        assert!(!core.is_finished(), "the purge went ahead of the snapshot install");
        let disk = store.crash();
        core.abort();
        assert_eq!(check_restartable(disk.clone()).await, (None, None, Some(LOG_LAST)));

        let (store, log, mut machine) = open(disk);
        let core = tokio::spawn(core_after_install(log));
        install_snapshot_at(&mut machine, SNAPSHOT_AT).await;
        core.await.unwrap();
        let restarted = check_restartable(store.crash()).await;
        assert_eq!(restarted, (Some(SNAPSHOT_AT), Some(SNAPSHOT_AT), Some(SNAPSHOT_AT + 1)));
    }

    /// A purge returns once its point is written, before its entries are removed: openraft
    /// 0.9's core waits for the purge, and removing ~70,000 entries in its path held every
    /// commit of the group for 80 ms (docs/benchmarks.md, "Session 21"). They go in the
    /// background, several writes' worth here, and what is left meanwhile is below the
    /// purge point, where a restart does not read.
    #[tokio::test(start_paused = true)]
    async fn a_purge_returns_before_its_entries_are_removed() {
        let last = 3 * PURGE_ENTRIES_PER_WRITE as u64;
        let purged = last - 10;
        let (store, mut log, mut machine) = open(Disk::new());
        append(&log, 1..=last).await;
        install_snapshot_at(&mut machine, purged).await;
        log.purge(log_id(purged)).await.unwrap();
        let all = (Bound::Unbounded, Bound::Unbounded);
        let stored = log.log.keys(all, usize::MAX).unwrap();
        assert_eq!(stored.len() as u64, last, "the purge waited for its entries' removal");
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(purged)));
        assert_eq!(state.last_log_id, Some(log_id(last)));
        assert_eq!(check_restartable(store.durable()).await, (None, Some(purged), Some(last)));

        drop(log.purging.lock().await);
        let expected: Vec<Vec<u8>> =
            (purged + 1..=last).map(|index| index.to_be_bytes().to_vec()).collect();
        assert_eq!(log.log.keys(all, usize::MAX).unwrap(), expected);
        let entries = log.try_get_log_entries(purged + 1..=last).await.unwrap();
        assert_eq!(entries.len(), 10);
    }

    fn entry_at(term: u64, index: u64) -> Entry {
        let log_id = LogId::new(CommittedLeaderId::new(term, 1), index);
        Entry { log_id, payload: EntryPayload::Blank }
    }

    /// Appends entries `indexes` of `term` through the store, as openraft does.
    async fn append_through(
        log: &LogStore<crate::sim::storage::MemTree>,
        term: u64,
        indexes: std::ops::RangeInclusive<u64>,
    ) {
        let entries: Vec<Entry> = indexes.map(|index| entry_at(term, index)).collect();
        log.append_durably(entries).await.unwrap().unwrap();
    }

    /// The entries `log` reads in `range`, encoded, to compare stores by.
    async fn read_encoded(
        log: &mut LogStore<crate::sim::storage::MemTree>,
        range: std::ops::RangeInclusive<u64>,
    ) -> Vec<Vec<u8>> {
        let entries = log.try_get_log_entries(range).await.unwrap();
        entries.iter().map(|entry| codec::encode(entry).unwrap()).collect()
    }

    /// Reads served by the decoded tail give exactly what the tree holds (as read by a
    /// store with an empty tail), across appends past the tail's bounds, a truncation and a
    /// purge; and what was just appended is read without reading the tree.
    #[tokio::test(start_paused = true)]
    async fn the_tail_reads_as_the_tree_does() {
        let (_store, mut log, mut machine) = open(Disk::new());
        type Tree = crate::sim::storage::MemTree;
        let tree_only = |log: &LogStore<Tree>, machine: &StateMachine<Tree>| {
            LogStore::new(0, log.log.clone(), log.meta.clone(), machine.saved_snapshot(), None)
        };
        let mut tree = tree_only(&log, &machine);
        for first in (1..=300).step_by(10) {
            append_through(&log, 1, first..=first + 9).await;
        }
        let tail_first = 300 - TAIL_ENTRIES_MAX as u64 + 1;
        assert_eq!(log.tail().first_index(), Some(tail_first));
        let ranges =
            [1..=300, tail_first - 1..=300, tail_first..=300, 290..=320, 300..=300, 301..=400];
        for range in ranges {
            let expected = read_encoded(&mut tree, range.clone()).await;
            assert_eq!(read_encoded(&mut log, range.clone()).await, expected, "{range:?}");
        }

        log.truncate(log_id(280)).await.unwrap();
        append_through(&log, 2, 280..=290).await;
        let mut tree = tree_only(&log, &machine);
        for range in [270..=300, 280..=290, 285..=285, 291..=300] {
            let expected = read_encoded(&mut tree, range.clone()).await;
            assert_eq!(read_encoded(&mut log, range.clone()).await, expected, "{range:?}");
        }
        assert_eq!(read_encoded(&mut log, 270..=300).await.len(), 21);

        install_snapshot_at(&mut machine, 285).await;
        log.purge(log_id(285)).await.unwrap();
        assert_eq!(log.tail().first_index(), Some(286));
        let mut tree = tree_only(&log, &machine);
        for range in [1..=300, 286..=290] {
            let expected = read_encoded(&mut tree, range.clone()).await;
            assert_eq!(read_encoded(&mut log, range.clone()).await, expected, "{range:?}");
        }

        // An entry of the tail flipped on disk: the tail still reads it, the tree refuses it.
        let key = 288u64.to_be_bytes().to_vec();
        let mut bytes = log.log.get(&key).unwrap().unwrap();
        bytes[super::codec::HEADER_BYTES] ^= 0x10;
        log.log.write(vec![(key, Some(bytes))], Durability::Volatile).await.unwrap();
        assert_eq!(read_encoded(&mut log, 286..=290).await.len(), 5);
        assert!(tree_only(&log, &machine).try_get_log_entries(286..=290).await.is_err());
    }

    /// A stored entry with a flipped bit is refused, naming its group and index, instead of
    /// being read as another entry.
    #[tokio::test(start_paused = true)]
    async fn a_corrupt_entry_is_refused_by_group_and_index() {
        let (_store, mut log, _machine) = open(Disk::new());
        append(&log, 1..=LOG_LAST).await;
        let key = 3u64.to_be_bytes().to_vec();
        let mut bytes = log.log.get(&key).unwrap().unwrap();
        bytes[super::codec::HEADER_BYTES] ^= 0x10;
        log.log.write(vec![(key, Some(bytes))], Durability::Durable).await.unwrap();
        let error = log.try_get_log_entries(1..=LOG_LAST).await.unwrap_err();
        let chain = format!("{error} {:?}", std::error::Error::source(&error));
        assert!(chain.contains("corrupt log entry at group 0, index 3"), "{chain}");
        assert!(chain.contains("checksum"), "{chain}");
        assert_eq!(log.try_get_log_entries(4..=LOG_LAST).await.unwrap().len(), 2);
    }
}
