//! The request history of one node: every settled request's record, kept beside the
//! replicated state machine rather than in it, so the ledger's memory and snapshots follow
//! what is live (accounts, keys, holds) and not how many requests were ever served.
//!
//! One redb database per node (`<data dir>/history.redb`), shared by its groups. Every
//! apply queues the records its batches settled, in memory; a writer commits what is
//! queued in one transaction without a sync every [`HISTORY_FLUSH_INTERVAL`] (sooner once
//! [`HISTORY_FLUSH_RECORDS`] wait), so under load many applies share one copy-on-write of
//! the tables. Every read writes what is queued first (read-your-writes: a record is
//! visible once the apply that settled it returned), an apply that leaves
//! [`HISTORY_QUEUE_MAX`] records queued writes them itself before it returns, and the
//! history is synced, queue included, before any snapshot is saved. That is enough for
//! durability: the log holds every entry after the last snapshot and a restart re-applies
//! them, re-writing the records a crash dropped (writes keep a hold's first record, so a
//! replay is idempotent), while everything a snapshot covers was synced before the log
//! could be purged past it.
//!
//! Tables: `records` (hold → account and record), the indexes `by_account`
//! (account, created, hold), `by_key` (key, created, hold) and `by_time` (created, hold),
//! and `hourly` aggregates (account, hour, key, model → sums) that always equal the sum
//! of the retained records. Retention ([`History::expire`]) drops records older than the
//! configured age from all of them.
//!
//! A replica that installs a snapshot lacks the records of the entries it covers; it
//! copies them from the group's leader in the background (`backfill.rs`, through
//! [`History::export`]).

use crate::codec;
use crate::error::LedgerError;
use crate::{OPEN_LOCK_ATTEMPTS_MAX, OPEN_LOCK_RETRY_INTERVAL};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};
use solrouter_ledger::{AccountId, HoldId, KeyId, PicoUsd, RequestRecord};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// The history's file in a node's data directory.
pub const HISTORY_FILE: &str = "history.redb";
/// The history's page cache (redb's default is 1 GiB, which a node would fill with pages
/// of old records): queries read recent pages and indexes, writes append. At 64 MiB the
/// cache took ten minutes of `solrouter dev` load to fill, so RSS kept rising.
pub const HISTORY_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// How often a node syncs the history written since its last sync: bounds what the sync
/// before a snapshot has to write.
pub const HISTORY_SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Longest a record waits in the queue before the writer commits it, with every record
/// queued meanwhile, in one transaction (reads do not wait for it: they write the queue
/// first). Most of a transaction's cost is per page it dirties (copy-on-write, page
/// allocation, the write), and the index pages by account and by key are one per active
/// account, however many of its records share them: under `cluster_load` (1,024
/// accounts) 20 ms transactions dirtied about a page per record and the writer took 43 %
/// of a node's CPU (docs/benchmarks.md, "Fewer wake-ups, larger history transactions").
pub const HISTORY_FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Records queued that make the writer commit at once instead of waiting out
/// [`HISTORY_FLUSH_INTERVAL`] (~250 bytes each in memory).
pub const HISTORY_FLUSH_RECORDS: usize = 8_192;
/// Records queued at which an apply writes the queue itself (on the blocking pool) before
/// it returns: the queue never holds more than this plus one apply's records per group
/// (~8 MiB).
pub const HISTORY_QUEUE_MAX: usize = 32_768;
/// How often a node drops the records past their retention.
pub const HISTORY_EXPIRE_INTERVAL: Duration = Duration::from_secs(60);
/// How long records are kept by default.
pub const HISTORY_RETENTION_DEFAULT: Duration = Duration::from_secs(90 * 24 * 60 * 60);
/// Most records one page of a history query returns.
pub const HISTORY_PAGE_MAX: u32 = 500;
/// Most index entries one history query reads before it returns what it found with a
/// cursor to go on from: a filter that matches nothing cannot make one query scan an
/// account's whole history.
pub const HISTORY_SCAN_MAX: usize = 10_000;
/// Most records one page of a backfill copies (~200 bytes each).
pub const HISTORY_EXPORT_PAGE_MAX: usize = 1_000;
/// Most records one retention pass deletes (one transaction); passes repeat until done.
pub const HISTORY_EXPIRE_BATCH_MAX: usize = 10_000;
const HOUR_MS: u64 = 60 * 60 * 1000;

/// hold → [`Stored`].
const RECORDS: TableDefinition<u128, &[u8]> = TableDefinition::new("records");
/// (account, created_ms, hold).
const BY_ACCOUNT: TableDefinition<(u64, u64, u128), ()> = TableDefinition::new("by_account");
/// (key, created_ms, hold).
const BY_KEY: TableDefinition<(u64, u64, u128), ()> = TableDefinition::new("by_key");
/// (created_ms, hold), for retention.
const BY_TIME: TableDefinition<(u64, u128), ()> = TableDefinition::new("by_time");
/// (account, hour start ms, key, model) → [`Usage`].
const HOURLY: TableDefinition<(u64, u64, Option<u64>, &str), &[u8]> =
    TableDefinition::new("hourly");

/// As kept in `records`; written from a borrowed record (`Stored<&RequestRecord>`, the
/// same bytes).
#[derive(Serialize, Deserialize)]
struct Stored<R = RequestRecord> {
    account: AccountId,
    record: R,
}

/// A settled request's record with its payer, as applies queue them.
type Settled = (AccountId, HoldId, RequestRecord);

/// Sums over requests: one hourly bucket, or one row of a [`UsageQuery`]'s answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub reasoning_tokens: u64,
    pub cached_tokens: u64,
    pub cost: PicoUsd,
    pub written_off: PicoUsd,
}

impl Usage {
    /// One request's usage.
    fn of(record: &RequestRecord) -> Usage {
        Usage {
            requests: 1,
            prompt_tokens: record.prompt_tokens,
            completion_tokens: record.completion_tokens,
            reasoning_tokens: record.reasoning_tokens,
            cached_tokens: record.cached_tokens,
            cost: record.cost,
            written_off: record.written_off,
        }
    }

    fn merge(&mut self, other: &Usage) {
        self.requests += other.requests;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.reasoning_tokens += other.reasoning_tokens;
        self.cached_tokens += other.cached_tokens;
        self.cost = self.cost.checked_add(other.cost).expect("usage cost overflow");
        self.written_off =
            self.written_off.checked_add(other.written_off).expect("usage write-off overflow");
    }

    /// Takes `record` back out; `None` once no request is left in the bucket.
    fn remove(mut self, record: &RequestRecord) -> Option<Usage> {
        let sub = |total: u64, part: u64| total.checked_sub(part).expect("usage underflow");
        self.requests = sub(self.requests, 1);
        self.prompt_tokens = sub(self.prompt_tokens, record.prompt_tokens);
        self.completion_tokens = sub(self.completion_tokens, record.completion_tokens);
        self.reasoning_tokens = sub(self.reasoning_tokens, record.reasoning_tokens);
        self.cached_tokens = sub(self.cached_tokens, record.cached_tokens);
        self.cost = PicoUsd(self.cost.0.checked_sub(record.cost.0).expect("usage underflow"));
        self.written_off =
            PicoUsd(self.written_off.0.checked_sub(record.written_off.0).expect("usage underflow"));
        (self.requests > 0).then_some(self)
    }
}

/// Where a page of history ends: the next page starts strictly before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryCursor {
    pub created_ms: u64,
    pub hold: HoldId,
}

/// One page of an account's requests, newest first, filtered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryQuery {
    pub account: AccountId,
    pub key: Option<KeyId>,
    pub model: Option<String>,
    pub status: Option<u16>,
    /// Records created at or after this time (ms since the Unix epoch)…
    pub from_ms: u64,
    /// …and before this one.
    pub to_ms: u64,
    /// The previous page's [`HistoryPage::next`].
    pub before: Option<HistoryCursor>,
    /// At most [`HISTORY_PAGE_MAX`].
    pub limit: u32,
}

impl HistoryQuery {
    /// The first page of every record of `account`, newest first, as large as pages go;
    /// narrow it with struct update syntax.
    pub fn all(account: AccountId) -> HistoryQuery {
        HistoryQuery {
            account,
            key: None,
            model: None,
            status: None,
            from_ms: 0,
            to_ms: u64::MAX,
            before: None,
            limit: HISTORY_PAGE_MAX,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    pub records: Vec<(HoldId, RequestRecord)>,
    /// Where to go on from, if the range may hold more.
    pub next: Option<HistoryCursor>,
}

/// An account's usage summed per bucket (an hour or a day, UTC), key and model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageQuery {
    pub account: AccountId,
    pub from_ms: u64,
    pub to_ms: u64,
    /// A whole number of hours.
    pub bucket_ms: u64,
}

impl UsageQuery {
    /// Buckets of whole hours, over a range that is not empty.
    pub fn is_valid(&self) -> bool {
        self.bucket_ms >= HOUR_MS
            && self.bucket_ms.is_multiple_of(HOUR_MS)
            && self.from_ms < self.to_ms
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRow {
    pub start_ms: u64,
    pub key: Option<KeyId>,
    pub model: String,
    pub usage: Usage,
}

/// A page of [`History::export`]: records with their payer, and where to go on from
/// (`None` once the end was reached).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportPage {
    pub records: Vec<(AccountId, HoldId, RequestRecord)>,
    pub next: Option<HistoryCursor>,
}

/// What the history holds and has dropped, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistoryStats {
    pub records: u64,
    pub expired_total: u64,
}

/// A node's request history. Cheap to clone: clones share the database.
#[derive(Clone)]
pub struct History {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    retention: Duration,
    expired_total: AtomicU64,
    /// Records applied and not yet written, in apply order (a hold's first record wins).
    queue: Mutex<Vec<Settled>>,
    /// Held by every write for as long as it drains the queue and commits, so a write that
    /// returns has committed every record queued before it began (a read that writes the
    /// queue first cannot miss one in the writer's hands); true when something was
    /// committed without a sync since the last sync. Taken before `queue`, never after.
    writer: Mutex<bool>,
    /// Wakes the writer task: the queue got its first record, or
    /// [`HISTORY_FLUSH_RECORDS`]. Outside `Inner` so the task can wait on it holding the
    /// history weakly.
    queued: Arc<Notify>,
    backfill: Arc<BackfillRequests>,
    /// Kept in memory only (tests and the simulation): a sync costs nothing.
    in_memory: bool,
}

impl Drop for Inner {
    /// Writes what is still queued (the node stopped between two flushes); redb's close
    /// then does what it does with unsynced commits. A failure is only logged: the log,
    /// replayed on the next start, re-writes those records.
    fn drop(&mut self) {
        if let Err(e) = self.write_queued(Vec::new(), Durability::None) {
            tracing::error!(error = %e, "request history: writing the queue on close failed");
        }
    }
}

impl Inner {
    fn write(
        &self,
        durability: Durability,
        f: impl FnOnce(&mut Tables<'_>) -> HistoryResult<()>,
    ) -> HistoryResult<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability)?;
        {
            let mut tables = Tables::open(&txn)?;
            f(&mut tables)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Drains the queue and writes it, then `more`, in one transaction (a hold's first
    /// record wins); with [`Durability::Immediate`] also when only earlier commits are
    /// unsynced. A failed transaction wrote nothing: its records go back to the head of
    /// the queue for the next write.
    fn write_queued(&self, more: Vec<Settled>, durability: Durability) -> HistoryResult<()> {
        let mut unsynced = self.writer.lock().expect("history writer lock poisoned");
        let mut records =
            std::mem::take(&mut *self.queue.lock().expect("history queue lock poisoned"));
        records.extend(more);
        let durable = matches!(durability, Durability::Immediate);
        if records.is_empty() && !(durable && *unsynced) {
            return Ok(());
        }
        let written = self.write(durability, |tables| tables.insert_all(&records));
        match written {
            Ok(()) => {
                *unsynced = !durable;
                Ok(())
            }
            Err(e) => {
                let mut queue = self.queue.lock().expect("history queue lock poisoned");
                let queued_since = std::mem::replace(&mut *queue, records);
                queue.extend(queued_since);
                Err(e)
            }
        }
    }
}

/// Groups that installed a snapshot and whose records are to be copied: shared by the
/// history and the task that copies, which holds only this (not the database), so the
/// history closes when its node is dropped.
#[derive(Default)]
pub(crate) struct BackfillRequests {
    groups: Mutex<BTreeSet<u32>>,
    wanted: Notify,
}

impl BackfillRequests {
    pub(crate) fn request(&self, group: u32) {
        self.groups.lock().expect("backfill lock poisoned").insert(group);
        self.wanted.notify_one();
    }

    /// Waits until some group wants its records copied; returns and forgets those groups.
    pub(crate) async fn wanted(&self) -> BTreeSet<u32> {
        loop {
            let groups = std::mem::take(&mut *self.groups.lock().expect("backfill lock poisoned"));
            if !groups.is_empty() {
                return groups;
            }
            self.wanted.notified().await;
        }
    }
}

type HistoryResult<T> = Result<T, redb::Error>;

impl History {
    /// Opens (or creates) the history in `path`, waiting a while for a node of this
    /// process that is shutting down to let go of it.
    pub async fn open(path: &Path, retention: Duration) -> Result<History, LedgerError> {
        let mut attempt = 1;
        let db = loop {
            match Database::builder().set_cache_size(HISTORY_CACHE_BYTES).create(path) {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen)
                    if attempt < OPEN_LOCK_ATTEMPTS_MAX =>
                {
                    attempt += 1;
                    tokio::time::sleep(OPEN_LOCK_RETRY_INTERVAL).await;
                }
                Err(e) => {
                    let e = redb::Error::from(e);
                    return Err(LedgerError::storage("opening the request history", e));
                }
            }
        };
        History::over(db, retention, false)
    }

    /// A history kept in memory only (tests and the simulation).
    #[cfg(test)]
    pub fn in_memory(retention: Duration) -> Result<History, LedgerError> {
        History::with_backend(redb::backends::InMemoryBackend::new(), retention)
    }

    /// A history over `backend`, a store in memory (tests: e.g. a disk that loses what was
    /// not synced).
    #[cfg(test)]
    pub(crate) fn with_backend(
        backend: impl redb::StorageBackend,
        retention: Duration,
    ) -> Result<History, LedgerError> {
        let db = Database::builder().create_with_backend(backend).map_err(|e| {
            LedgerError::storage("creating the request history", redb::Error::from(e))
        })?;
        History::over(db, retention, true)
    }

    fn over(db: Database, retention: Duration, in_memory: bool) -> Result<History, LedgerError> {
        let inner = Inner {
            db,
            retention,
            expired_total: AtomicU64::new(0),
            queue: Mutex::default(),
            writer: Mutex::new(false),
            queued: Arc::default(),
            backfill: Arc::default(),
            in_memory,
        };
        let history = History { inner: Arc::new(inner) };
        // Creates the tables, so readers never find one missing.
        history
            .inner
            .write(Durability::Immediate, |_| Ok(()))
            .map_err(|e| LedgerError::storage("creating the request history", e))?;
        Ok(history)
    }

    /// Queues the records a batch settled for the writer task: no I/O, so an apply may
    /// call it holding the state lock (and must, before a snapshot can see the entries
    /// applied: the sync before the snapshot's save then finds their records queued).
    /// Returns whether the queue reached [`HISTORY_QUEUE_MAX`]: the caller then writes it
    /// ([`History::flush`], off the async workers) before going on.
    pub(crate) fn queue(&self, records: Vec<Settled>) -> bool {
        let mut queue = self.inner.queue.lock().expect("history queue lock poisoned");
        let before = queue.len();
        queue.extend(records);
        let after = queue.len();
        drop(queue);
        let first = before == 0 && after > 0;
        if first || (before < HISTORY_FLUSH_RECORDS && after >= HISTORY_FLUSH_RECORDS) {
            self.inner.queued.notify_one();
        }
        after >= HISTORY_QUEUE_MAX
    }

    /// Writes what is queued, then `records` (a backfill's page), each hold's first record
    /// only, in one transaction; not synced (see the module doc for why that is durable
    /// enough).
    pub fn insert(&self, records: impl IntoIterator<Item = Settled>) -> HistoryResult<()> {
        self.inner.write_queued(records.into_iter().collect(), Durability::None)
    }

    /// Runs `f`, which blocks on redb (or, for a snapshot's encode, on the CPU), from
    /// async code: on a blocking thread, or inline for a history in memory (the
    /// simulation's), where a blocking thread would let a test's paused clock jump while
    /// it ran (so a seed would not replay). The node's one way off the runtime.
    pub(crate) async fn off_runtime<T: Send + 'static>(
        &self,
        f: impl FnOnce(&History) -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        if self.inner.in_memory {
            return Ok(f(self));
        }
        let history = self.clone();
        tokio::task::spawn_blocking(move || f(&history)).await
    }

    /// Writes what is queued, not synced: afterwards a read finds every record queued
    /// before the call. Blocks on redb ([`History::off_runtime`]).
    pub fn flush(&self) -> HistoryResult<()> {
        self.inner.write_queued(Vec::new(), Durability::None)
    }

    /// Makes every record queued or written so far durable (fsync); nothing to do when
    /// nothing was queued or written since the last sync.
    pub fn sync(&self) -> HistoryResult<()> {
        self.inner.write_queued(Vec::new(), Durability::Immediate)
    }

    /// One round of upkeep: with `expire` drops what is past retention, then syncs what
    /// was queued or written since the last sync; returns how many records it dropped.
    fn maintain(&self, expire: bool) -> HistoryResult<usize> {
        let mut deleted = 0;
        if expire {
            let now_ms = crate::group::wall_clock_ms();
            loop {
                let batch = self.expire(now_ms)?;
                deleted += batch;
                if batch < HISTORY_EXPIRE_BATCH_MAX {
                    break;
                }
            }
        }
        self.sync()?;
        Ok(deleted)
    }

    /// Deletes the records created before `now_ms − retention`, at most
    /// [`HISTORY_EXPIRE_BATCH_MAX`]; returns how many (call again while it is the max).
    /// Writes nothing when nothing is that old.
    pub fn expire(&self, now_ms: u64) -> HistoryResult<usize> {
        let retention_ms = u64::try_from(self.inner.retention.as_millis()).unwrap_or(u64::MAX);
        let cutoff = (now_ms.saturating_sub(retention_ms), 0u128);
        let mut unsynced = self.inner.writer.lock().expect("history writer lock poisoned");
        let by_time = self.inner.db.begin_read()?.open_table(BY_TIME)?;
        if by_time.first()?.is_none_or(|(oldest, _)| oldest.value() >= cutoff) {
            return Ok(0);
        }
        drop(by_time);
        let mut deleted = 0;
        self.inner.write(Durability::None, |tables| {
            let old: Vec<(u64, u128)> = tables
                .by_time
                .range(..cutoff)?
                .take(HISTORY_EXPIRE_BATCH_MAX)
                .map(|entry| entry.map(|(key, _)| key.value()))
                .collect::<Result<_, _>>()?;
            for (_, hold) in old {
                tables.remove(hold)?;
                deleted += 1;
            }
            Ok(())
        })?;
        *unsynced = true;
        self.inner.expired_total.fetch_add(deleted as u64, Ordering::Relaxed);
        Ok(deleted)
    }

    /// Records queued and not yet written.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.inner.queue.lock().expect("history queue lock poisoned").len()
    }

    /// A read transaction that finds every record applied before the call: what is queued
    /// is written first.
    fn begin_read(&self) -> HistoryResult<redb::ReadTransaction> {
        self.flush()?;
        Ok(self.inner.db.begin_read()?)
    }

    /// Asks for `group`'s records to be copied from its leader (after a snapshot install).
    pub(crate) fn request_backfill(&self, group: u32) {
        self.inner.backfill.request(group);
    }

    pub(crate) fn backfill_requests(&self) -> Arc<BackfillRequests> {
        Arc::clone(&self.inner.backfill)
    }

    /// Up to `limit` records of the accounts `keep` selects, in creation order, after
    /// `after`: what a replica that installed a snapshot copies (at most
    /// [`HISTORY_SCAN_MAX`] records read per call).
    pub(crate) fn export(
        &self,
        keep: impl Fn(AccountId) -> bool,
        after: Option<HistoryCursor>,
        limit: usize,
    ) -> HistoryResult<ExportPage> {
        let txn = self.begin_read()?;
        let records = txn.open_table(RECORDS)?;
        let by_time = txn.open_table(BY_TIME)?;
        let start = match after {
            Some(after) => Bound::Excluded((after.created_ms, after.hold.0)),
            None => Bound::Unbounded,
        };
        let mut page = ExportPage { records: Vec::new(), next: None };
        let mut last = None;
        for (scanned, entry) in by_time.range((start, Bound::Unbounded))?.enumerate() {
            if page.records.len() == limit || scanned == HISTORY_SCAN_MAX {
                // More remain: go on after the last one read.
                page.next = last;
                break;
            }
            let (created_ms, hold) = entry?.0.value();
            last = Some(HistoryCursor { created_ms, hold: HoldId(hold) });
            let bytes = records.get(hold)?.ok_or_else(|| corrupt("an index names no record"))?;
            let Stored { account, record } = decode(bytes.value())?;
            if keep(account) {
                page.records.push((account, HoldId(hold), record));
            }
        }
        Ok(page)
    }

    /// Counts the queue without writing it (a queued repeat of a hold counts until then).
    pub fn stats(&self) -> HistoryResult<HistoryStats> {
        let queued = self.inner.queue.lock().expect("history queue lock poisoned").len();
        let written = self.inner.db.begin_read()?.open_table(RECORDS)?.len()?;
        Ok(HistoryStats {
            records: written + queued as u64,
            expired_total: self.inner.expired_total.load(Ordering::Relaxed),
        })
    }

    /// The record of `hold` if `account` paid for it.
    pub fn record(&self, account: AccountId, hold: HoldId) -> HistoryResult<Option<RequestRecord>> {
        let txn = self.begin_read()?;
        let Some(bytes) = txn.open_table(RECORDS)?.get(hold.0)? else {
            return Ok(None);
        };
        let stored = decode(bytes.value())?;
        Ok((stored.account == account).then_some(stored.record))
    }

    pub fn query(&self, query: &HistoryQuery) -> HistoryResult<HistoryPage> {
        let txn = self.begin_read()?;
        let records = txn.open_table(RECORDS)?;
        let (index, id) = match query.key {
            Some(key) => (txn.open_table(BY_KEY)?, key.0),
            None => (txn.open_table(BY_ACCOUNT)?, query.account.0),
        };
        let end = match query.before {
            Some(before) if before.created_ms < query.to_ms => {
                (id, before.created_ms, before.hold.0)
            }
            _ => (id, query.to_ms, 0),
        };
        let limit = query.limit.clamp(1, HISTORY_PAGE_MAX) as usize;
        let mut page = HistoryPage { records: Vec::new(), next: None };
        let start = (id, query.from_ms, 0u128);
        if start >= end {
            return Ok(page);
        }
        for (scanned, entry) in index.range(start..end)?.rev().enumerate() {
            let (_, created_ms, hold) = entry?.0.value();
            let cursor = HistoryCursor { created_ms, hold: HoldId(hold) };
            if page.records.len() == limit || scanned == HISTORY_SCAN_MAX {
                page.next = Some(cursor_after(cursor));
                break;
            }
            let bytes = records.get(hold)?.ok_or_else(|| corrupt("an index names no record"))?;
            let stored = decode(bytes.value())?;
            let matches = stored.account == query.account
                && query.model.as_ref().is_none_or(|model| *model == stored.record.model)
                && query.status.is_none_or(|status| status == stored.record.status);
            if matches {
                page.records.push((HoldId(hold), stored.record));
            }
        }
        Ok(page)
    }

    /// Nothing for a query that [`UsageQuery::is_valid`] refuses.
    pub fn usage(&self, query: &UsageQuery) -> HistoryResult<Vec<UsageRow>> {
        if !query.is_valid() {
            return Ok(Vec::new());
        }
        let txn = self.begin_read()?;
        let hourly = txn.open_table(HOURLY)?;
        let account = query.account.0;
        let from = (account, query.from_ms - query.from_ms % HOUR_MS, None, "");
        let to = (account, query.to_ms, None, "");
        let mut rows: BTreeMap<(u64, Option<u64>, String), Usage> = BTreeMap::new();
        for entry in hourly.range(from..to)? {
            let (key, value) = entry?;
            let (_, hour_ms, key_id, model) = key.value();
            let start_ms = hour_ms - hour_ms % query.bucket_ms;
            let usage: Usage = codec::decode(value.value()).map_err(|e| corrupt(&e.to_string()))?;
            rows.entry((start_ms, key_id, model.to_owned())).or_default().merge(&usage);
        }
        let rows = rows.into_iter().map(|((start_ms, key, model), usage)| UsageRow {
            start_ms,
            key: key.map(KeyId),
            model,
            usage,
        });
        Ok(rows.collect())
    }
}

/// The history's writer and upkeep: commits what applies queued at most
/// [`HISTORY_FLUSH_INTERVAL`] after the first record came (at once when
/// [`HISTORY_FLUSH_RECORDS`] wait); every [`HISTORY_SYNC_INTERVAL`] syncs what was queued or
/// written since (so the sync before a snapshot has little left to do); every
/// [`HISTORY_EXPIRE_INTERVAL`] drops the records past retention, by this machine's clock
/// (retention is not replicated state: each replica trims its own). The writes run on the
/// blocking pool. Holds the history weakly: once the node is gone the task ends and the
/// file closes.
pub(crate) fn spawn_maintenance(history: &History) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(&history.inner);
    let queued = Arc::clone(&history.inner.queued);
    tokio::spawn(async move {
        let mut upkeep = tokio::time::interval(HISTORY_SYNC_INTERVAL);
        upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut expired_at: Option<std::time::Instant> = None;
        loop {
            let maintain = tokio::select! {
                _ = upkeep.tick() => true,
                () = queued.notified() => {
                    // The applies of the next few milliseconds join this transaction.
                    tokio::select! {
                        () = tokio::time::sleep(HISTORY_FLUSH_INTERVAL) => {}
                        () = queued.notified() => {}
                    }
                    false
                }
            };
            let Some(inner) = weak.upgrade() else { return };
            let history = History { inner };
            let expire =
                maintain && expired_at.is_none_or(|at| at.elapsed() >= HISTORY_EXPIRE_INTERVAL);
            if expire {
                expired_at = Some(std::time::Instant::now());
            }
            let done = tokio::task::spawn_blocking(move || match maintain {
                true => history.maintain(expire),
                false => history.flush().map(|()| 0),
            })
            .await;
            match done {
                Ok(Ok(0)) => {}
                Ok(Ok(deleted)) => {
                    tracing::info!(deleted, "request history: records past retention dropped")
                }
                Ok(Err(e)) => tracing::error!(error = %e, "request history: writing failed"),
                Err(e) => tracing::error!(error = %e, "request history: writer task failed"),
            }
        }
    })
}

/// The cursor a page ends on is the first entry it did not return: the next page starts
/// at it, so "strictly before" needs the position just after it.
fn cursor_after(cursor: HistoryCursor) -> HistoryCursor {
    match cursor.hold.0.checked_add(1) {
        Some(hold) => HistoryCursor { created_ms: cursor.created_ms, hold: HoldId(hold) },
        None => HistoryCursor { created_ms: cursor.created_ms + 1, hold: HoldId(0) },
    }
}

/// The open tables of one write transaction.
struct Tables<'txn> {
    records: redb::Table<'txn, u128, &'static [u8]>,
    by_account: redb::Table<'txn, (u64, u64, u128), ()>,
    by_key: redb::Table<'txn, (u64, u64, u128), ()>,
    by_time: redb::Table<'txn, (u64, u128), ()>,
    hourly: redb::Table<'txn, (u64, u64, Option<u64>, &'static str), &'static [u8]>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> HistoryResult<Tables<'txn>> {
        Ok(Tables {
            records: txn.open_table(RECORDS)?,
            by_account: txn.open_table(BY_ACCOUNT)?,
            by_key: txn.open_table(BY_KEY)?,
            by_time: txn.open_table(BY_TIME)?,
            hourly: txn.open_table(HOURLY)?,
        })
    }

    /// Inserts each hold's first record (a hold already written keeps its own) and adds
    /// them to their hourly buckets, each bucket read and written once however many of
    /// the records fall in it.
    fn insert_all(&mut self, settled: &[Settled]) -> HistoryResult<()> {
        let mut buckets: BTreeMap<HourlyKey<'_>, Usage> = BTreeMap::new();
        for (account, hold, record) in settled {
            if self.insert(*account, *hold, record)? {
                buckets.entry(hourly_key(*account, record)).or_default().merge(&Usage::of(record));
            }
        }
        for (bucket, added) in buckets {
            let mut usage = match self.hourly.get(bucket)? {
                Some(bytes) => codec::decode(bytes.value()).map_err(|e| corrupt(&e.to_string()))?,
                None => Usage::default(),
            };
            usage.merge(&added);
            self.hourly.insert(bucket, encode(&usage)?.as_slice())?;
        }
        Ok(())
    }

    /// Inserts `record` and its index entries unless `hold` has one already; returns
    /// whether it did. The caller adds it to its hourly bucket.
    fn insert(
        &mut self,
        account: AccountId,
        hold: HoldId,
        record: &RequestRecord,
    ) -> HistoryResult<bool> {
        if self.records.get(hold.0)?.is_some() {
            return Ok(false);
        }
        let created_ms = record.created_ms;
        self.by_account.insert((account.0, created_ms, hold.0), ())?;
        if let Some(key) = record.key {
            self.by_key.insert((key.0, created_ms, hold.0), ())?;
        }
        self.by_time.insert((created_ms, hold.0), ())?;
        let stored = Stored { account, record };
        self.records.insert(hold.0, encode(&stored)?.as_slice())?;
        Ok(true)
    }

    fn remove(&mut self, hold: u128) -> HistoryResult<()> {
        let bytes =
            self.records.remove(hold)?.ok_or_else(|| corrupt("an index names no record"))?;
        let Stored { account, record } = decode(bytes.value())?;
        drop(bytes);
        let created_ms = record.created_ms;
        self.by_account.remove((account.0, created_ms, hold))?;
        if let Some(key) = record.key {
            self.by_key.remove((key.0, created_ms, hold))?;
        }
        self.by_time.remove((created_ms, hold))?;
        let bucket = hourly_key(account, &record);
        let usage: Usage = match self.hourly.get(bucket)? {
            Some(bytes) => codec::decode(bytes.value()).map_err(|e| corrupt(&e.to_string()))?,
            None => return Err(corrupt("a record without its hourly bucket")),
        };
        match usage.remove(&record) {
            Some(left) => self.hourly.insert(bucket, encode(&left)?.as_slice())?,
            None => self.hourly.remove(bucket)?,
        };
        Ok(())
    }
}

/// (account, hour start ms, key, model): a row of `hourly`.
type HourlyKey<'a> = (u64, u64, Option<u64>, &'a str);

fn hourly_key(account: AccountId, record: &RequestRecord) -> HourlyKey<'_> {
    let hour_ms = record.created_ms - record.created_ms % HOUR_MS;
    (account.0, hour_ms, record.key.map(|key| key.0), record.model.as_str())
}

fn encode<T: Serialize>(value: &T) -> HistoryResult<Vec<u8>> {
    codec::encode(value).map_err(|e| corrupt(&e.to_string()))
}

fn decode(bytes: &[u8]) -> HistoryResult<Stored> {
    codec::decode(bytes).map_err(|e| corrupt(&e.to_string()))
}

fn corrupt(reason: &str) -> redb::Error {
    redb::Error::Corrupted(format!("request history: {reason}"))
}

/// Test-only: a redb backend that, like a disk losing power, keeps only what was synced.
#[cfg(test)]
#[derive(Clone, Debug, Default)]
pub(crate) struct PowerLossDisk {
    bytes: Arc<Mutex<DiskBytes>>,
}

#[cfg(test)]
#[derive(Debug, Default)]
struct DiskBytes {
    written: Vec<u8>,
    synced: Vec<u8>,
}

#[cfg(test)]
impl PowerLossDisk {
    /// The disk as it comes back after a power loss now: what was synced.
    pub(crate) fn crash(&self) -> PowerLossDisk {
        let synced = self.lock().synced.clone();
        let bytes = DiskBytes { written: synced.clone(), synced };
        PowerLossDisk { bytes: Arc::new(Mutex::new(bytes)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DiskBytes> {
        self.bytes.lock().expect("disk lock poisoned")
    }
}

#[cfg(test)]
impl redb::StorageBackend for PowerLossDisk {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.lock().written.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let bytes = self.lock();
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        let source = bytes.written.get(start..start + out.len());
        out.copy_from_slice(source.ok_or_else(|| std::io::Error::other("read past the end"))?);
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        self.lock().written.resize(len, 0);
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        let mut bytes = self.lock();
        bytes.synced = bytes.written.clone();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut bytes = self.lock();
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        let target = bytes.written.get_mut(start..start + data.len());
        target.ok_or_else(|| std::io::Error::other("write past the end"))?.copy_from_slice(data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: AccountId = AccountId(7);
    const T0: u64 = 1_700_000_000_000;

    fn record(key: u64, model: &str, status: u16, created_ms: u64, cost: u128) -> RequestRecord {
        RequestRecord {
            key: Some(KeyId(key)),
            model: model.into(),
            status,
            created_ms,
            prompt_tokens: 10,
            completion_tokens: 5,
            cost: PicoUsd(cost),
            ..RequestRecord::default()
        }
    }

    fn query(limit: u32) -> HistoryQuery {
        HistoryQuery { limit, ..HistoryQuery::all(ACCOUNT) }
    }

    fn holds(page: &HistoryPage) -> Vec<u128> {
        page.records.iter().map(|(hold, _)| hold.0).collect()
    }

    /// 100 records, one a minute, alternating keys and models, every tenth a 502.
    fn filled() -> History {
        let history = History::in_memory(HISTORY_RETENTION_DEFAULT).unwrap();
        let records = (0..100u64).map(|n| {
            let model = if n % 2 == 0 { "mock/echo" } else { "openai/gpt-4o" };
            let status = if n % 10 == 9 { 502 } else { 200 };
            (ACCOUNT, HoldId(n.into()), record(n % 2, model, status, T0 + n * 60_000, 1_000))
        });
        history.insert(records).unwrap();
        // Another account's request is never shown to this one.
        history
            .insert([(AccountId(8), HoldId(1_000), record(9, "mock/echo", 200, T0, 5))])
            .unwrap();
        history
    }

    #[test]
    fn a_hold_keeps_its_first_record_and_only_its_payer_sees_it() {
        let history = filled();
        let retried = record(0, "mock/other", 200, T0, 99);
        history.insert([(ACCOUNT, HoldId(0), retried)]).unwrap();
        let kept = history.record(ACCOUNT, HoldId(0)).unwrap().unwrap();
        assert_eq!((kept.model.as_str(), kept.cost), ("mock/echo", PicoUsd(1_000)));
        assert_eq!(history.record(AccountId(8), HoldId(0)).unwrap(), None);
        assert_eq!(history.stats().unwrap().records, 101);
    }

    /// Applies queue records and the writer commits them later: every read finds what is
    /// queued, and a hold keeps its first record whether that was written or queued.
    #[test]
    fn reads_find_queued_records_and_a_hold_keeps_its_first() {
        let history = filled();
        let late = |hold: u64, cost| {
            let created_ms = T0 + (100 + hold) * 60_000;
            (ACCOUNT, HoldId(hold.into()), record(0, "mock/late", 200, created_ms, cost))
        };
        assert!(!history.queue(vec![late(0, 7), late(200, 1), late(200, 9)]));
        assert_eq!(history.queued(), 3);
        assert_eq!(history.record(ACCOUNT, HoldId(200)).unwrap().unwrap().cost, PicoUsd(1));
        assert_eq!(history.queued(), 0, "the read wrote the queue first");
        assert_eq!(history.record(ACCOUNT, HoldId(0)).unwrap().unwrap().cost, PicoUsd(1_000));

        history.queue(vec![late(201, 1)]);
        assert_eq!(holds(&history.query(&query(2)).unwrap()), [201, 200]);
        history.queue(vec![late(202, 1)]);
        let all = UsageQuery { account: ACCOUNT, from_ms: 0, to_ms: u64::MAX, bucket_ms: HOUR_MS };
        let requests: u64 = history.usage(&all).unwrap().iter().map(|row| row.usage.requests).sum();
        assert_eq!(requests, 103);
        history.queue(vec![late(203, 1)]);
        let exported = history.export(|_| true, None, HISTORY_EXPORT_PAGE_MAX).unwrap();
        assert_eq!(exported.records.last().map(|(_, hold, _)| hold.0), Some(203));
        assert_eq!(history.stats().unwrap().records, 105);
    }

    /// A sync writes the queue before it syncs: after a power loss right after it, what
    /// was queued or written unsynced is there; before it, neither was.
    #[test]
    fn a_sync_makes_queued_and_written_records_durable() {
        let disk = PowerLossDisk::default();
        let history = History::with_backend(disk.clone(), HISTORY_RETENTION_DEFAULT).unwrap();
        history.insert([(ACCOUNT, HoldId(1), record(0, "mock/echo", 200, T0, 1))]).unwrap();
        history.queue(vec![(ACCOUNT, HoldId(2), record(0, "mock/echo", 200, T0, 1))]);
        let after_power_loss =
            || History::with_backend(disk.crash(), HISTORY_RETENTION_DEFAULT).unwrap();
        assert_eq!(after_power_loss().stats().unwrap().records, 0);
        history.sync().unwrap();
        let survivor = after_power_loss();
        assert_eq!(survivor.stats().unwrap().records, 2);
        assert!(survivor.record(ACCOUNT, HoldId(2)).unwrap().is_some());
    }

    #[test]
    fn pages_run_newest_first_without_gaps_or_repeats() {
        let history = filled();
        let mut seen = Vec::new();
        let mut page = history.query(&query(30)).unwrap();
        loop {
            seen.extend(holds(&page));
            let Some(next) = page.next else { break };
            page = history.query(&HistoryQuery { before: Some(next), ..query(30) }).unwrap();
        }
        assert_eq!(seen, (0..100).rev().collect::<Vec<_>>());
    }

    #[test]
    fn filters_by_key_model_status_and_time() {
        let history = filled();
        let by_key = history.query(&HistoryQuery { key: Some(KeyId(1)), ..query(500) }).unwrap();
        assert_eq!(holds(&by_key), (1..100).rev().step_by(2).collect::<Vec<_>>());
        let failed = history.query(&HistoryQuery { status: Some(502), ..query(500) }).unwrap();
        assert_eq!(holds(&failed), [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]);
        let model = Some("mock/echo".to_owned());
        let echo = history.query(&HistoryQuery { model, ..query(500) }).unwrap();
        assert_eq!(echo.records.len(), 50);
        let window =
            HistoryQuery { from_ms: T0 + 10 * 60_000, to_ms: T0 + 20 * 60_000, ..query(500) };
        assert_eq!(holds(&history.query(&window).unwrap()), (10..20).rev().collect::<Vec<_>>());
        let other = HistoryQuery { account: AccountId(8), ..query(500) };
        assert_eq!(holds(&history.query(&other).unwrap()), [1_000]);
    }

    #[test]
    fn empty_or_malformed_ranges_answer_nothing() {
        let history = filled();
        let backwards = HistoryQuery { from_ms: T0 + 60_000, to_ms: T0, ..query(500) };
        assert_eq!(history.query(&backwards).unwrap().records, []);
        let before = Some(HistoryCursor { created_ms: T0, hold: HoldId(0) });
        let past_start = HistoryQuery { from_ms: T0 + 60_000, before, ..query(500) };
        assert_eq!(history.query(&past_start).unwrap().records, []);
        let odd = UsageQuery { account: ACCOUNT, from_ms: 0, to_ms: u64::MAX, bucket_ms: 1_000 };
        assert_eq!(history.usage(&odd).unwrap(), []);
        let backwards = UsageQuery { from_ms: T0, to_ms: 0, bucket_ms: HOUR_MS, ..odd };
        assert_eq!(history.usage(&backwards).unwrap(), []);
    }

    #[test]
    fn usage_sums_per_bucket_key_and_model() {
        let history = filled();
        let day =
            UsageQuery { account: ACCOUNT, from_ms: 0, to_ms: u64::MAX, bucket_ms: 24 * HOUR_MS };
        let rows = history.usage(&day).unwrap();
        let requests: u64 = rows.iter().map(|row| row.usage.requests).sum();
        let cost: u128 = rows.iter().map(|row| row.usage.cost.0).sum();
        assert_eq!((requests, cost), (100, 100_000));
        assert!(rows.iter().all(|row| row.start_ms % (24 * HOUR_MS) == 0));
        let hourly = UsageQuery { bucket_ms: HOUR_MS, ..day };
        let rows = history.usage(&hourly).unwrap();
        assert!(rows.len() >= 4, "100 minutes span two or three hours, two keys: {rows:?}");
        assert_eq!(rows.iter().map(|row| row.usage.prompt_tokens).sum::<u64>(), 1_000);
    }

    #[test]
    fn retention_drops_old_records_from_every_index_and_aggregate() {
        let history = filled();
        let retention_ms = HISTORY_RETENTION_DEFAULT.as_millis() as u64;
        // At this time the records of the first 40 minutes are past retention.
        let now_ms = T0 + 40 * 60_000 + retention_ms;
        assert_eq!(history.expire(now_ms).unwrap(), 41, "40 of this account, 1 of the other");
        assert_eq!(history.expire(now_ms).unwrap(), 0);
        assert_eq!(history.stats().unwrap(), HistoryStats { records: 60, expired_total: 41 });
        assert_eq!(
            holds(&history.query(&query(500)).unwrap()),
            (40..100).rev().collect::<Vec<_>>()
        );
        assert_eq!(history.record(ACCOUNT, HoldId(3)).unwrap(), None);
        let by_key = history.query(&HistoryQuery { key: Some(KeyId(1)), ..query(500) }).unwrap();
        assert_eq!(by_key.records.len(), 30);
        let all = UsageQuery { account: ACCOUNT, from_ms: 0, to_ms: u64::MAX, bucket_ms: HOUR_MS };
        let rows = history.usage(&all).unwrap();
        assert_eq!(rows.iter().map(|row| row.usage.requests).sum::<u64>(), 60);
        assert_eq!(rows.iter().map(|row| row.usage.cost.0).sum::<u128>(), 60_000);
    }
}
