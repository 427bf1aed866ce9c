//! The Raft log, the vote and the committed index, kept in sled.
//!
//! Layout, per Raft group `g`: tree `g/log` maps a big-endian `u64` index (so sled's byte order is index order) to
//! a bincode [`Entry`]; tree `g/meta` holds the vote, the committed log id and the last
//! purged log id under fixed keys.
#![allow(
    clippy::result_large_err,
    reason = "openraft's storage traits return its large StorageError by value; helpers match them"
)]

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

/// Cheap to clone: sled trees are reference-counted handles, so the log reader openraft asks
/// for is just another handle on the same trees.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
}

impl LogStore {
    pub fn open(db: &sled::Db, group: u32) -> Result<LogStore, sled::Error> {
        let log = db.open_tree(format!("{group}/log"))?;
        let meta = db.open_tree(format!("{group}/meta"))?;
        Ok(LogStore { db: db.clone(), log, meta })
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let bytes = self.meta.get(key).map_err(|e| StorageIOError::read(&e))?;
        bytes
            .map(|b| bincode::deserialize(&b).map_err(|e| StorageIOError::read(&e).into()))
            .transpose()
    }

    fn write_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), StorageError> {
        let bytes = bincode::serialize(value).map_err(|e| StorageIOError::write(&e))?;
        self.meta.insert(key, bytes).map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let last = self.log.last().map_err(|e| StorageIOError::read_logs(&e))?;
        last.map(|(_, bytes)| decode_entry(&bytes).map(|entry| entry.log_id)).transpose()
    }

    /// Removes every entry whose index lies in `range`, in one sled batch so a crash leaves
    /// either all of them or none.
    fn remove_range(&self, range: (Bound<u64>, Bound<u64>)) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(byte_bounds(range)) {
            let (key, _) = item.map_err(|e| StorageIOError::write_logs(&e))?;
            batch.remove(key);
        }
        self.log.apply_batch(batch).map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        let mut entries = Vec::new();
        for item in self.log.range(byte_bounds(bounds)) {
            let (_, bytes) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            entries.push(decode_entry(&bytes)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

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
        self.db.flush_async().await.map_err(|e| StorageIOError::write_vote(&e))?;
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

    /// Acknowledges only after sled has flushed to disk: an entry openraft counts as
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
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = bincode::serialize(&entry)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
            batch.insert(&entry.log_id.index.to_be_bytes(), bytes);
        }
        self.log.apply_batch(batch).map_err(|e| StorageIOError::write_logs(&e))?;
        let flushed = self.db.flush_async().await;
        let result = flushed.map(|_| ()).map_err(|e| std::io::Error::other(e.to_string()));
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
    bincode::deserialize(bytes).map_err(|e| StorageIOError::read_logs(&e).into())
}

fn byte_bounds(range: (Bound<u64>, Bound<u64>)) -> (Bound<[u8; 8]>, Bound<[u8; 8]>) {
    (range.0.map(u64::to_be_bytes), range.1.map(u64::to_be_bytes))
}
