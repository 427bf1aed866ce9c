//! The Raft log, the vote and the committed index, kept in sled (through [`KvTree`], so the
//! simulation runs this same code over its in-memory store).
//!
//! Layout, per Raft group `g`: tree `g/log` maps a big-endian `u64` index (so sled's byte order is index order) to
//! an [`Entry`] in the versioned [`codec`](crate::codec); tree `g/meta` holds the vote, the committed log id and the last
//! purged log id under fixed keys.
#![allow(
    clippy::result_large_err,
    reason = "openraft's storage traits return its large StorageError by value; helpers match them"
)]

use crate::codec;
use crate::kv::{KvPair, KvTree};
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader, StorageIOError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";

/// Cheap to clone: trees are reference-counted handles, so the log reader openraft asks
/// for is just another handle on the same trees.
#[derive(Clone)]
pub struct LogStore<K: KvTree = sled::Tree> {
    log: K,
    meta: K,
}

impl LogStore {
    pub fn open(db: &sled::Db, group: u32) -> Result<LogStore, sled::Error> {
        let log = db.open_tree(format!("{group}/log"))?;
        let meta = db.open_tree(format!("{group}/meta"))?;
        Ok(LogStore::new(log, meta))
    }
}

impl<K: KvTree> LogStore<K> {
    /// A store over two trees of one key-value store (a flush of either flushes both).
    pub fn new(log: K, meta: K) -> LogStore<K> {
        LogStore { log, meta }
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let bytes = self.meta.get(key).map_err(|e| StorageIOError::read(&e))?;
        bytes
            .map(|b| codec::decode(b.as_ref()).map_err(|e| StorageIOError::read(&e).into()))
            .transpose()
    }

    fn write_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), StorageError> {
        let bytes = codec::encode(value).map_err(|e| StorageIOError::write(&e))?;
        self.meta.insert(key, bytes).map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let last = self.log.last().map_err(|e| StorageIOError::read_logs(&e))?;
        last.map(|bytes| decode_entry(bytes.as_ref()).map(|entry| entry.log_id)).transpose()
    }

    /// Removes every entry whose index lies in `range`, in one batch so a crash leaves
    /// either all of them or none.
    fn remove_range(&self, range: (Bound<u64>, Bound<u64>)) -> Result<(), StorageError> {
        let pairs = self.log_range(range).map_err(|e| StorageIOError::write_logs(&e))?;
        let batch = pairs.into_iter().map(|(key, _)| (key.as_ref().to_vec(), None)).collect();
        self.log.apply_batch(batch).map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
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
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        let pairs = self.log_range(bounds).map_err(|e| StorageIOError::read_logs(&e))?;
        pairs.iter().map(|(_, bytes)| decode_entry(bytes.as_ref())).collect()
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
    /// one term after a crash), hence the flush.
    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.write_meta(KEY_VOTE, vote)?;
        self.meta.flush().await.map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_meta(KEY_VOTE)
    }

    /// Not flushed: the committed index only lets a restarted node re-apply its log before
    /// an election; losing the latest value costs time, never correctness.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.write_meta(KEY_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    /// Acknowledges only after the store has flushed to disk: an entry openraft counts as
    /// persisted may be committed and answered to a client, so a SIGKILL right after the
    /// callback must not lose it.
    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = Vec::new();
        for entry in entries {
            let bytes = codec::encode(&entry)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
            batch.push((entry.log_id.index.to_be_bytes().to_vec(), Some(bytes)));
        }
        self.log.apply_batch(batch).map_err(|e| StorageIOError::write_logs(&e))?;
        let flushed = self.log.flush().await;
        let result = flushed.map_err(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(result);
        Ok(())
    }

    /// Drops conflicting entries from `log_id` on. No flush: the append that follows a
    /// truncation overwrites the same indexes and flushes.
    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.remove_range((Bound::Included(log_id.index), Bound::Unbounded))
    }

    /// Records the purge point before deleting, so a crash in between leaves surplus
    /// entries below the purge point (harmless) rather than a hole above it. Openraft only
    /// purges entries already covered by a persisted snapshot.
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.write_meta(KEY_PURGED, &log_id)?;
        self.remove_range((Bound::Unbounded, Bound::Included(log_id.index)))
    }
}

fn decode_entry(bytes: &[u8]) -> Result<Entry, StorageError> {
    codec::decode(bytes).map_err(|e| StorageIOError::read_logs(&e).into())
}
