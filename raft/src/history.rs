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
//! Tables (format [`HISTORY_FORMAT_VERSION`], kept in `meta`), laid out so that a
//! transaction's writes land on as few pages as possible, since most of a write's cost is
//! per page it dirties (docs/storage.md, "The history's layout"):
//! * `requests`: (created, hold) → payer and record (`history_codec.rs`): creation order,
//!   so inserts append, and retention and backfill read it front to back;
//! * `holds`: hold → created, for the holds whose id does not lead with their record's
//!   creation millisecond ([`HoldId::time_ordered`], as a gateway makes them; since format
//!   3): such a hold's record is found by its id alone, `requests` at (its stamp, it), so
//!   a gateway's records cost no row here. It finds the others' records and keeps a hold's
//!   first record;
//! * `postings`: (account, key, second, first hold) → the (created, hold) of that
//!   account and key's records created in that second that one write of postings held:
//!   the one index, a row per account, key and second in such a write rather than a row
//!   per record, since a write's index rows land on a page per active account and key
//!   however few they are. A key filter reads its key's rows, an account's page merges
//!   its keys' rows, a second at a time, newest first. A written record's posting is held
//!   in memory and written with the others held ([`HISTORY_POSTINGS_HELD_MAX`]), so
//!   those pages are written once every few seconds instead of in every transaction;
//! * `usage_recent`: (hour, account, key, model) → sums of the hours not yet rolled up:
//!   hour first, so each transaction's buckets are neighbours; every second the closed
//!   hours move to `usage_hourly`: (account, hour, key, model) → sums, an account's
//!   hours side by side for its usage queries. Together they always equal the sum of the
//!   retained records;
//! * `posted_through`: (incarnation, group) → the last entry of that group whose records
//!   and postings are written ([`History::posted_through`]);
//! * `backfill_wanted`: group → the last entry of the snapshot whose install wished for
//!   a copy of the group's records ([`History::want_backfill`]).
//!
//! Postings held in memory are lost in a crash while their records, synced every second,
//! are not. They are written before a query reads `postings`, before a retention pass,
//! with a backfill's page, and by the sync before a snapshot, after which the log is
//! purged; so a record whose posting a crash took is in the log after the last snapshot,
//! and the log's replay, which writes the record again (its hold already written), writes
//! the posting `postings` lacks ([`Tables::insert_all`]). Each write of postings marks, in
//! the same transaction, the last entry of each group whose records it holds; the replay
//! re-writes only the entries after that mark, the ones a crash may have cut short.
//!
//! Retention ([`History::expire`]) drops records older than the configured age from all
//! of them. A file of format 1 (no `meta`: `records` keyed by hold and four index and
//! aggregate tables beside it) is migrated when opened; another version is refused.
//!
//! A replica that installs a snapshot lacks the records of the entries it covers; it
//! copies them in the background (`backfill.rs`, through [`History::export`]) from a
//! replica that applied the entries the snapshot covers and wishes for no copy of its
//! own. The wish for that copy is written, synced, before
//! the snapshot is saved, and ends with a synced write once a copy that began after it
//! has ended (`backfill_wanted`): a node that crashes or stops before then, or loses the
//! copy's unsynced pages in a power loss, copies again when it opens.

use crate::error::LedgerError;
use crate::group::Clock;
use crate::history_codec::{decode_record, decode_usage, encode_record, encode_usage};
use crate::incarnation::Incarnation;
use crate::{codec, OPEN_LOCK_ATTEMPTS_MAX, OPEN_LOCK_RETRY_INTERVAL};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    TableHandle, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use solrouter_ledger::{AccountId, HoldId, KeyId, PicoUsd, RequestRecord};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// The history's file in a node's data directory.
pub const HISTORY_FILE: &str = "history.redb";
/// The layout this build writes and reads (the `format` row of `meta`). 1 (no `meta`):
/// `records` keyed by hold, `by_account`, `by_key`, `by_time`, `hourly`, values in the
/// ledger codec; migrated on open. 2: the tables of the module doc, with a `holds` row
/// for every record. 3: no `holds` row for a record whose hold leads with its creation
/// millisecond; a file of format 2 is read as it is (its extra rows find the same records,
/// and retention removes them with their records). 4: `postings` (a row per account, key
/// and second of a transaction) instead of `by_account_key` (a row per record); a file of
/// format 2 or 3 gets its index rewritten as postings when opened.
pub const HISTORY_FORMAT_VERSION: u64 = 4;
/// The formats before this one, whose `by_account_key` is rewritten as `postings` when
/// opened (see [`HISTORY_FORMAT_VERSION`]).
const HISTORY_FORMATS_ENTRY_INDEX: [u64; 2] = [2, 3];
/// The history's page cache (redb's default is 1 GiB, which a node would fill with pages
/// of old records): queries read recent pages and indexes, writes append, and pages out
/// of the cache are read from the kernel's page cache, which holds them anyway. At 64 MiB
/// the cache took ten minutes of `solrouter dev` load to fill, so RSS kept rising; at
/// 16 MiB it filled in the second minute and held ~15 MB of the process's RSS. The
/// writer's throughput is the same at 2 MiB (`bench --bench history`: 134k records/s
/// with the sync either way; docs/storage.md).
pub const HISTORY_CACHE_BYTES: usize = 2 * 1024 * 1024;
/// How often a node syncs the history written since its last sync (bounds what the sync
/// before a snapshot has to write) and rolls closed hours up.
pub const HISTORY_SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Longest a record waits in the queue before the writer commits it, with every record
/// queued meanwhile, in one transaction (reads do not wait for it: they write the queue
/// first). Most of a transaction's cost is per page it dirties (copy-on-write, page
/// allocation, the write), and the index pages are one per active account and key,
/// however many of its records share them.
pub const HISTORY_FLUSH_INTERVAL: Duration = Duration::from_millis(250);
/// Records queued that make the writer commit at once instead of waiting out
/// [`HISTORY_FLUSH_INTERVAL`] (~250 bytes each in memory). Large, since the index pages a
/// transaction dirties are one per active account and key: at 8,192 the writer cost a
/// node 4.3 µs per record under `cluster_load`, at 32,768 3.3 µs (docs/benchmarks.md,
/// "Session 8").
pub const HISTORY_FLUSH_RECORDS: usize = 32_768;
/// Records queued at which an apply writes the queue itself (on the blocking pool) before
/// it returns: the queue never holds more than this plus one apply's records per group
/// (~16 MiB).
pub const HISTORY_QUEUE_MAX: usize = 65_536;
/// Postings (index entries) of written records a node holds in memory before it writes
/// them in one go (~48 bytes each): written a transaction at a time, a transaction's
/// postings rows dirtied a page per active account and key, half of the writer's time
/// and four fifths of its bytes (`history_write`: 1.54 against 0.80 µs and 1,104 against
/// 157 bytes a record; docs/storage.md, "Postings written in bulk"). Held until this many,
/// [`HISTORY_POSTINGS_HELD_FOR`], a query that reads them, a retention pass, or the sync
/// before a snapshot, whichever comes first; a crash that loses them is repaired by the
/// log's replay (see the module doc).
pub const HISTORY_POSTINGS_HELD_MAX: usize = 1 << 18;
/// Longest the postings of a written record are held in memory before they are written.
pub const HISTORY_POSTINGS_HELD_FOR: Duration = Duration::from_secs(10);
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
/// Format-1 records one migration transaction moves.
const MIGRATE_BATCH: usize = 10_000;
pub(crate) const HOUR_MS: u64 = 60 * 60 * 1000;

/// "format" → [`HISTORY_FORMAT_VERSION`].
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const FORMAT_ROW: &str = "format";
/// (created_ms, hold) → `history_codec::encode_record`.
const REQUESTS: TableDefinition<(u64, u128), &[u8]> = TableDefinition::new("requests");
/// hold → created_ms.
const HOLDS: TableDefinition<u128, u64> = TableDefinition::new("holds");
/// (account, key, second's start ms, first hold) → (created_ms, hold) of records, in order,
/// [`POSTING_BYTES`] each.
const POSTINGS: TableDefinition<PostingsKey, &[u8]> = TableDefinition::new("postings");
/// Formats 2 and 3's index, read only to rewrite it as `postings`: (account, key,
/// created_ms, hold).
const V3_BY_ACCOUNT_KEY: TableDefinition<IndexKey, ()> = TableDefinition::new("by_account_key");
/// (incarnation, group) → the index through which that group's entries, in the log of
/// that incarnation of the node's data directory, have their records and postings here
/// (see [`History::posted_through`]). Rows of another incarnation (a log wiped since) are
/// dropped by the next write of postings.
const POSTED_THROUGH: TableDefinition<(u128, u32), u64> = TableDefinition::new("posted_through");
/// group → the last entry of the snapshot whose install wished for a copy of the
/// group's records, kept from just before the install until a copy that began after it
/// ends (see [`History::want_backfill`]).
const BACKFILL_WANTED: TableDefinition<u32, u64> = TableDefinition::new("backfill_wanted");
/// (hour start ms, account, key, model) → `history_codec::encode_usage`.
const USAGE_RECENT: TableDefinition<BucketKey<'static>, &[u8]> =
    TableDefinition::new("usage_recent");
/// (account, hour start ms, key, model) → `history_codec::encode_usage`.
const USAGE_HOURLY: TableDefinition<BucketKey<'static>, &[u8]> =
    TableDefinition::new("usage_hourly");

/// (account, key, created_ms, hold): a record's place in the index.
type IndexKey = (u64, Option<u64>, u64, u128);
type PostingsKey = (u64, Option<u64>, u64, u128);
/// (created_ms, hold).
type Posting = (u64, u128);
/// The creation times one postings row spans.
const POSTINGS_SPAN_MS: u64 = 1_000;
/// A posting's bytes in a row: created_ms and hold, little-endian.
const POSTING_BYTES: usize = 24;

/// Format 1, read only to migrate it: hold → [`Stored`] in the ledger codec; the other
/// tables are derived from it and dropped.
const V1_RECORDS: TableDefinition<u128, &[u8]> = TableDefinition::new("records");
const V1_TABLES: [&str; 5] = ["records", "by_account", "by_key", "by_time", "hourly"];

/// A format-1 record.
#[derive(Deserialize)]
struct Stored {
    account: AccountId,
    record: RequestRecord,
}

/// A settled request's record with its payer, as applies queue them.
type Settled = (AccountId, HoldId, RequestRecord);

/// A group and the index of the last entry it applied: what an apply's records come from.
pub type Applied = (u32, u64);

/// Records applied and not yet written, and for each group the last entry applied.
#[derive(Default)]
struct Queue {
    records: Vec<Settled>,
    through: BTreeMap<u32, u64>,
}

/// Moves each group's mark in `marks` up to its index in `applied` (marks never go back).
fn advance(marks: &mut BTreeMap<u32, u64>, applied: impl IntoIterator<Item = Applied>) {
    for (group, index) in applied {
        let mark = marks.entry(group).or_default();
        *mark = (*mark).max(index);
    }
}

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
    pub(crate) fn of(record: &RequestRecord) -> Usage {
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

    pub(crate) fn merge(&mut self, other: &Usage) {
        self.requests += other.requests;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.reasoning_tokens += other.reasoning_tokens;
        self.cached_tokens += other.cached_tokens;
        self.cost = self.cost.checked_add(other.cost).expect("usage cost overflow");
        self.written_off =
            self.written_off.checked_add(other.written_off).expect("usage write-off overflow");
    }

    /// Takes `part` (sums of requests it holds) back out; `None` once no request is left.
    fn remove(mut self, part: &Usage) -> Option<Usage> {
        let sub = |total: u64, part: u64| total.checked_sub(part).expect("usage underflow");
        let sub_pico = |total: PicoUsd, part: PicoUsd| {
            PicoUsd(total.0.checked_sub(part.0).expect("usage underflow"))
        };
        self.requests = sub(self.requests, part.requests);
        self.prompt_tokens = sub(self.prompt_tokens, part.prompt_tokens);
        self.completion_tokens = sub(self.completion_tokens, part.completion_tokens);
        self.reasoning_tokens = sub(self.reasoning_tokens, part.reasoning_tokens);
        self.cached_tokens = sub(self.cached_tokens, part.cached_tokens);
        self.cost = sub_pico(self.cost, part.cost);
        self.written_off = sub_pico(self.written_off, part.written_off);
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
    /// Groups whose records a snapshot install skipped and whose copy has not ended yet
    /// (`History::want_backfill`): nonzero for long means no replica that holds them
    /// is reachable.
    pub copies_wanted: u64,
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
    queue: Mutex<Queue>,
    /// Held by every write for as long as it drains the queue and commits, so a write that
    /// returns has committed every record queued before it began (a read that writes the
    /// queue first cannot miss one in the writer's hands). Taken before `queue`, never
    /// after. `parking_lot`'s, which is eventually fair (a thread kept waiting is handed
    /// the lock at an unlock within about half a millisecond), not `std`'s: a retention
    /// pass takes it once per batch, back to back, and with `std`'s the thread unlocking
    /// took it again before any waiter woke. An apply whose queue was full then waited
    /// 7.4 s, and a read 5.2 s, which failed `cluster_soak`'s history check ("no outcome
    /// within 3s"; docs/benchmarks.md, "Session 59").
    writer: parking_lot::Mutex<Writer>,
    /// Wakes the writer task: the queue got its first record, or
    /// [`HISTORY_FLUSH_RECORDS`]. Outside `Inner` so the task can wait on it holding the
    /// history weakly.
    queued: Arc<Notify>,
    backfill: Arc<BackfillRequests>,
    /// Kept in memory only (tests and the simulation): a sync costs nothing.
    in_memory: bool,
    /// The incarnation of the node's data directory whose log the applies come from
    /// ([`POSTED_THROUGH`]); none for a history that does not outlive its process.
    incarnation: Option<Incarnation>,
}

/// What only the one writing holds.
#[derive(Default)]
struct Writer {
    /// Something was committed without a sync since the last sync.
    unsynced: bool,
    /// The postings of committed records that are not in `postings` yet, and since when
    /// the oldest of them waits ([`HISTORY_POSTINGS_HELD_MAX`]). May hold a posting twice
    /// (a hold's record written again, see [`Tables::insert_all`]): written deduplicated.
    unposted: Vec<IndexKey>,
    unposted_since: Option<tokio::time::Instant>,
    /// The buffer the last write drained, emptied, kept for its room (at most
    /// [`HISTORY_QUEUE_MAX`] records): the queue takes it when the next write drains the
    /// queue, so that a loaded node's queue does not grow from nothing by doubling into
    /// fresh pages each time (under `cluster_load` the kernel's zeroing of those pages
    /// alone took 3.6 % of a node's CPU: docs/benchmarks.md, "Session 24").
    spare: Vec<Settled>,
    /// For each group, the last entry whose records a write has drained from the queue
    /// (their postings may be held; a failed write's go back to the queue, ahead of the
    /// next write): what [`POSTED_THROUGH`] gets when the postings held are written.
    written_through: BTreeMap<u32, u64>,
}

impl Drop for Inner {
    /// Writes what is still queued (the node stopped between two flushes); redb's close
    /// then does what it does with unsynced commits. A failure is only logged: the log,
    /// replayed on the next start, re-writes those records.
    fn drop(&mut self) {
        if let Err(e) = self.write_queued(Vec::new(), Durability::None, Postings::Now) {
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
    /// unsynced. The records' postings are held in memory, and written with those held
    /// before them when `postings` says so or they are due. A failed transaction wrote
    /// nothing: its records go back to the head of the queue for the next write, and their
    /// postings out of the held ones.
    fn write_queued(
        &self,
        more: Vec<Settled>,
        durability: Durability,
        postings: Postings,
    ) -> HistoryResult<()> {
        let mut writer = self.writer.lock();
        let spare = std::mem::take(&mut writer.spare);
        let (mut records, through) = {
            let mut queue = self.queue.lock().expect("history queue lock poisoned");
            (std::mem::replace(&mut queue.records, spare), std::mem::take(&mut queue.through))
        };
        records.extend(more);
        // The records of the entries drained are written with this transaction or,
        // if it fails, with the next one, which drains them first: no write of postings
        // can commit a mark past records it does not hold.
        advance(&mut writer.written_through, through);
        let durable = matches!(durability, Durability::Immediate);
        let held_due = writer.unposted_since.is_some_and(|since| {
            postings == Postings::Now || since.elapsed() >= HISTORY_POSTINGS_HELD_FOR
        });
        if records.is_empty() && !(durable && writer.unsynced) && !held_due {
            writer.spare = records;
            return Ok(());
        }
        let Writer { unposted, written_through, .. } = &mut *writer;
        let (mut fresh, mut posting) = (Vec::new(), false);
        let written = self.write(durability, |tables| {
            fresh = tables.insert_all(&records)?;
            posting = held_due
                || (postings == Postings::Now && !fresh.is_empty())
                || unposted.len() + fresh.len() >= HISTORY_POSTINGS_HELD_MAX;
            if posting {
                unposted.extend_from_slice(&fresh);
                tables.post_held(unposted)?;
                if let Some(incarnation) = self.incarnation {
                    tables.mark_posted(incarnation, written_through)?;
                }
            }
            Ok(())
        });
        match written {
            Ok(()) => {
                writer.unsynced = !durable;
                if posting {
                    writer.unposted.clear();
                    writer.unposted_since = None;
                } else if !fresh.is_empty() {
                    writer.unposted.append(&mut fresh);
                    writer.unposted_since.get_or_insert_with(tokio::time::Instant::now);
                }
                if records.capacity() <= HISTORY_QUEUE_MAX {
                    records.clear();
                    writer.spare = records;
                }
                Ok(())
            }
            Err(e) => {
                if posting {
                    fresh.sort_unstable();
                    writer.unposted.retain(|key| fresh.binary_search(key).is_err());
                }
                let mut queue = self.queue.lock().expect("history queue lock poisoned");
                let queued_since = std::mem::replace(&mut queue.records, records);
                queue.records.extend(queued_since);
                Err(e)
            }
        }
    }
}

/// Whether a write also writes the postings held in memory ([`Writer::unposted`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Postings {
    /// Once they are due: [`HISTORY_POSTINGS_HELD_MAX`] of them, or the oldest held for
    /// [`HISTORY_POSTINGS_HELD_FOR`].
    WhenDue,
    /// Now, with the write's own: a query is about to read them, the records are not in the
    /// log (a backfill's), or a snapshot is about to cover them.
    Now,
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
    /// `incarnation` is the data directory's (drawn when it was first opened, kept with
    /// its log): the log the node's applies come from, which
    /// [`History::posted_through`] is about.
    pub async fn open(
        path: &Path,
        retention: Duration,
        incarnation: Incarnation,
    ) -> Result<History, LedgerError> {
        let mut attempt = 1;
        let db = loop {
            let mut builder = Database::builder();
            match crate::write_behind::create(
                builder.set_cache_size(HISTORY_CACHE_BYTES),
                path,
                crate::write_behind::Pace::unpaced(),
            ) {
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
        History::over(db, retention, false, Some(incarnation))
    }

    /// A history kept in memory only (tests and the simulation), which no log outlives.
    #[cfg(test)]
    pub fn in_memory(retention: Duration) -> Result<History, LedgerError> {
        History::with_backend(redb::backends::InMemoryBackend::new(), retention, None)
    }

    /// A history over `backend`, a store in memory (tests: e.g. a disk that loses what was
    /// not synced), for the log of `incarnation`.
    #[cfg(test)]
    pub(crate) fn with_backend(
        backend: impl redb::StorageBackend,
        retention: Duration,
        incarnation: Option<Incarnation>,
    ) -> Result<History, LedgerError> {
        let db = Database::builder().create_with_backend(backend).map_err(|e| {
            LedgerError::storage("creating the request history", redb::Error::from(e))
        })?;
        History::over(db, retention, true, incarnation)
    }

    fn over(
        db: Database,
        retention: Duration,
        in_memory: bool,
        incarnation: Option<Incarnation>,
    ) -> Result<History, LedgerError> {
        let inner = Inner {
            db,
            retention,
            expired_total: AtomicU64::new(0),
            queue: Mutex::default(),
            writer: parking_lot::Mutex::default(),
            queued: Arc::default(),
            backfill: Arc::default(),
            in_memory,
            incarnation,
        };
        let history = History { inner: Arc::new(inner) };
        history.prepare().map_err(|e| LedgerError::storage("opening the request history", e))?;
        // A copy wished for before the last stop may not have ended: make it again.
        let wanted = history.backfills_wanted();
        for (group, _) in wanted.map_err(|e| LedgerError::storage("reading wanted copies", e))? {
            history.inner.backfill.request(group);
        }
        Ok(history)
    }

    /// Checks the file's format: creates the tables of this one in a new file (so readers
    /// never find one missing), migrates a file of format 1, rewrites the index of one of
    /// format 2 or 3 (in the commit that marks it 4), refuses any other.
    fn prepare(&self) -> Result<(), HistoryFormatError> {
        let db = &self.inner.db;
        let (format, v1) = {
            let txn = db.begin_read().map_err(redb::Error::from)?;
            let format = match txn.open_table(META) {
                Ok(meta) => meta.get(FORMAT_ROW).map_err(redb::Error::from)?.map(|v| v.value()),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(redb::Error::from(e).into()),
            };
            let mut tables = txn.list_tables().map_err(redb::Error::from)?;
            (format, tables.any(|table| table.name() == V1_RECORDS.name()))
        };
        match format {
            Some(HISTORY_FORMAT_VERSION) => return Ok(()),
            Some(older) if HISTORY_FORMATS_ENTRY_INDEX.contains(&older) => {}
            Some(found) => return Err(HistoryFormatError::Unsupported { found }),
            None if v1 => self.migrate_v1()?,
            None => {}
        }
        // This format's tables and version, and none of format 1's, in one commit.
        let txn = db.begin_write().map_err(redb::Error::from)?;
        let old: Vec<_> = txn
            .list_tables()
            .map_err(redb::Error::from)?
            .filter(|table| V1_TABLES.contains(&table.name()))
            .collect();
        for table in old {
            txn.delete_table(table).map_err(redb::Error::from)?;
        }
        let mut tables = Tables::open(&txn)?;
        let reindexed = tables.reindex_v3(&txn)?;
        drop(tables);
        if reindexed > 0 {
            tracing::info!(reindexed, "request history: index rewritten as postings");
        }
        let mut meta = txn.open_table(META).map_err(redb::Error::from)?;
        meta.insert(FORMAT_ROW, HISTORY_FORMAT_VERSION).map_err(redb::Error::from)?;
        drop(meta);
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    /// Writes every format-1 record into this format's tables, a batch per transaction
    /// (the caller then drops the old tables). A crash part-way leaves the old tables
    /// whole and the file without a version: the next open starts over, and what was
    /// already moved is kept as it is (a hold keeps its first record).
    fn migrate_v1(&self) -> HistoryResult<()> {
        let mut after = Bound::Unbounded;
        let mut moved = 0;
        loop {
            let batch: Vec<Settled> = {
                let txn = self.inner.db.begin_read()?;
                let records = txn.open_table(V1_RECORDS)?;
                let range = records.range::<u128>((after, Bound::Unbounded))?;
                range
                    .take(MIGRATE_BATCH)
                    .map(|entry| -> HistoryResult<Settled> {
                        let (hold, bytes) = entry?;
                        let Stored { account, record } = codec::decode(bytes.value())
                            .map_err(|e| corrupt(&format!("a format-1 record: {e}")))?;
                        Ok((account, HoldId(hold.value()), record))
                    })
                    .collect::<HistoryResult<_>>()?
            };
            let Some((_, last, _)) = batch.last() else { break };
            after = Bound::Excluded(last.0);
            moved += batch.len();
            self.inner.write(Durability::None, |tables| {
                let mut index = tables.insert_all(&batch)?;
                tables.post_held(&mut index)
            })?;
        }
        tracing::info!(moved, "request history: format 1 migrated");
        Ok(())
    }

    /// Queues the records a batch settled for the writer task: no I/O, so an apply may
    /// call it holding the state lock (and must, before a snapshot can see the entries
    /// applied: the sync before the snapshot's save then finds their records queued).
    /// Returns whether the queue reached `HISTORY_QUEUE_MAX`: the caller then writes it
    /// ([`History::flush`], off the async workers) before going on. `applied` names the
    /// last entry the records come from, if they come from a log (see
    /// [`History::posted_through`]).
    pub fn queue(&self, applied: Option<Applied>, records: Vec<Settled>) -> bool {
        let mut queue = self.inner.queue.lock().expect("history queue lock poisoned");
        let before = queue.records.len();
        queue.records.extend(records);
        advance(&mut queue.through, applied);
        let after = queue.records.len();
        drop(queue);
        let first = before == 0 && after > 0;
        if first || (before < HISTORY_FLUSH_RECORDS && after >= HISTORY_FLUSH_RECORDS) {
            self.inner.queued.notify_one();
        }
        after >= HISTORY_QUEUE_MAX
    }

    /// Writes what is queued, then `records` (a backfill's page), each hold's first record
    /// only, in one transaction with every posting held (a backfill's records are not in
    /// this node's log, so their postings are not left to its replay); not synced: the
    /// copy's end syncs its pages with the end of its wish (`History::backfill_done`),
    /// and a crash before then leaves the wish kept, so the copy is made again.
    pub fn insert(&self, records: impl IntoIterator<Item = Settled>) -> HistoryResult<()> {
        let records = records.into_iter().collect();
        self.inner.write_queued(records, Durability::None, Postings::Now)
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

    /// [`History::off_runtime`] for a call of redb, failing as a [`LedgerError`]: storage,
    /// saying `what` failed, or unavailable if the blocking task did not finish.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&History) -> HistoryResult<T> + Send + 'static,
    ) -> Result<T, LedgerError> {
        self.off_runtime(f)
            .await
            .map_err(|e| LedgerError::Unavailable { reason: e.to_string() })?
            .map_err(|e| LedgerError::storage(what, e))
    }

    /// Writes what is queued, not synced, holding its postings unless they are due:
    /// afterwards a read finds every record queued before the call. Blocks on redb
    /// (`History::off_runtime`).
    pub fn flush(&self) -> HistoryResult<()> {
        self.inner.write_queued(Vec::new(), Durability::None, Postings::WhenDue)
    }

    /// Makes every record queued or written so far durable (fsync), with every posting
    /// (what a snapshot's save needs: the log is then purged of those records); nothing
    /// to do when nothing was queued, held or written since the last sync.
    pub fn sync(&self) -> HistoryResult<()> {
        self.inner.write_queued(Vec::new(), Durability::Immediate, Postings::Now)
    }

    /// [`History::sync`] that leaves the postings held unless they are due (a node's sync
    /// every `HISTORY_SYNC_INTERVAL`): the log holds their records until a snapshot's
    /// sync writes them.
    pub fn sync_records(&self) -> HistoryResult<()> {
        self.inner.write_queued(Vec::new(), Durability::Immediate, Postings::WhenDue)
    }

    /// The index through which `group`'s entries have their records and their postings in
    /// this history (0: none known), as the last write of postings that outlived the
    /// process left it: that write held every earlier one's records, and none of them can
    /// be lost while it was kept. A restarted node's log replays its entries after its
    /// snapshot, and re-writing the records of those up to here would find each one
    /// written, a lookup and a search of its postings for nothing (~12 µs a record: 1.4 M
    /// records took 16 s of writes in `cluster_soak`, docs/storage.md). Counted
    /// in the log of this history's incarnation only: a wiped log draws another one and
    /// numbers its entries afresh.
    pub fn posted_through(&self, group: u32) -> HistoryResult<u64> {
        let Some(incarnation) = self.inner.incarnation else { return Ok(0) };
        let txn = self.inner.db.begin_read()?;
        let Some(table) = table_if_any(&txn, POSTED_THROUGH)? else { return Ok(0) };
        Ok(table.get((incarnation, group))?.map_or(0, |index| index.value()))
    }

    /// One round of upkeep at wall time `now_ms`: rolls closed hours up, with `expire`
    /// drops what is past retention, then syncs what was queued or written since the last
    /// sync; returns how many records it dropped.
    fn maintain(&self, now_ms: u64, expire: bool) -> HistoryResult<usize> {
        self.roll_up(now_ms)?;
        let mut deleted = 0;
        if expire {
            loop {
                let batch = self.expire(now_ms)?;
                deleted += batch;
                if batch < HISTORY_EXPIRE_BATCH_MAX {
                    break;
                }
            }
        }
        self.sync_records()?;
        Ok(deleted)
    }

    /// Moves the sums of the hours before `now_ms`'s from `usage_recent` to
    /// `usage_hourly`; writes nothing when there are none.
    fn roll_up(&self, now_ms: u64) -> HistoryResult<()> {
        let current_hour = hour_of(now_ms);
        let mut writer = self.inner.writer.lock();
        let recent = self.inner.db.begin_read()?.open_table(USAGE_RECENT)?;
        if recent.first()?.is_none_or(|(oldest, _)| oldest.value().0 >= current_hour) {
            return Ok(());
        }
        drop(recent);
        self.inner.write(Durability::None, |tables| tables.roll_up(current_hour))?;
        writer.unsynced = true;
        Ok(())
    }

    /// Deletes the records created before `now_ms − retention`, at most
    /// `HISTORY_EXPIRE_BATCH_MAX`; returns how many (call again while it is the max).
    /// Writes nothing when nothing is that old.
    pub fn expire(&self, now_ms: u64) -> HistoryResult<usize> {
        let retention_ms = u64::try_from(self.inner.retention.as_millis()).unwrap_or(u64::MAX);
        let cutoff_ms = now_ms.saturating_sub(retention_ms);
        let mut writer = self.inner.writer.lock();
        let requests = self.inner.db.begin_read()?.open_table(REQUESTS)?;
        if requests.first()?.is_none_or(|(oldest, _)| oldest.value().0 >= cutoff_ms) {
            return Ok(0);
        }
        drop(requests);
        let mut deleted = 0;
        let unposted = &mut writer.unposted;
        self.inner.write(Durability::None, |tables| {
            // Held postings first: retention removes a record's posting with it.
            tables.post_held(unposted)?;
            deleted = tables.expire(cutoff_ms, HISTORY_EXPIRE_BATCH_MAX)?;
            Ok(())
        })?;
        writer.unposted.clear();
        writer.unposted_since = None;
        writer.unsynced = true;
        self.inner.expired_total.fetch_add(deleted as u64, Ordering::Relaxed);
        Ok(deleted)
    }

    /// Records queued and not yet written.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.inner.queue.lock().expect("history queue lock poisoned").records.len()
    }

    /// A read transaction that finds every record applied before the call: what is queued
    /// is written first (the postings it holds stay held: see [`History::begin_read_posted`]).
    fn begin_read(&self) -> HistoryResult<redb::ReadTransaction> {
        self.flush()?;
        Ok(self.inner.db.begin_read()?)
    }

    /// [`History::begin_read`] for a read of `postings`: every posting held is written too.
    fn begin_read_posted(&self) -> HistoryResult<redb::ReadTransaction> {
        self.inner.write_queued(Vec::new(), Durability::None, Postings::Now)?;
        Ok(self.inner.db.begin_read()?)
    }

    /// Asks for `group`'s records to be copied from a peer (after a snapshot install).
    pub(crate) fn request_backfill(&self, group: u32) {
        self.inner.backfill.request(group);
    }

    /// Records, synced, that `group`'s records are to be copied from a replica that
    /// applied its entries through `through`: a snapshot install, whose last entry that
    /// is, is about to skip the entries that hold them. A later install's wish replaces
    /// an earlier one's. The wish is kept until a copy that began after it ends
    /// ([`History::backfill_done`]), and a history that opens with a wish kept asks for
    /// the copy again; a replica with a wish kept serves no copy of the group
    /// (`wire::answer_history`). Blocks on redb.
    pub(crate) fn want_backfill(&self, group: u32, through: u64) -> HistoryResult<()> {
        self.change_wishes(|wanted| {
            let kept = wanted.get(group)?.map_or(0, |kept| kept.value());
            wanted.insert(group, kept.max(through))?;
            Ok(())
        })
    }

    /// The wishes kept for copies: (group, the last entry the copy must cover).
    pub(crate) fn backfills_wanted(&self) -> HistoryResult<Vec<(u32, u64)>> {
        let txn = self.inner.db.begin_read()?;
        let Some(wanted) = table_if_any(&txn, BACKFILL_WANTED)? else { return Ok(Vec::new()) };
        let rows = wanted.iter()?.map(|row| row.map(|(group, at)| (group.value(), at.value())));
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Ends `group`'s wish for a copy if it is still the one through `through`, the one
    /// kept when the copy that has just ended began (a later install wants another), in
    /// a synced commit: the copy's pages, committed unsynced, are durable with it.
    /// Blocks on redb.
    pub(crate) fn backfill_done(&self, group: u32, through: u64) -> HistoryResult<()> {
        self.change_wishes(|wanted| {
            if wanted.get(group)?.is_some_and(|kept| kept.value() == through) {
                wanted.remove(group)?;
            }
            Ok(())
        })
    }

    /// Changes the wishes kept in a synced commit of its own (not through [`Tables`],
    /// whose every table each of the writer's transactions opens).
    fn change_wishes(
        &self,
        change: impl FnOnce(&mut redb::Table<'_, u32, u64>) -> HistoryResult<()>,
    ) -> HistoryResult<()> {
        let mut txn = self.inner.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        change(&mut txn.open_table(BACKFILL_WANTED)?)?;
        txn.commit()?;
        Ok(())
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
        let requests = txn.open_table(REQUESTS)?;
        let start = match after {
            Some(after) => Bound::Excluded((after.created_ms, after.hold.0)),
            None => Bound::Unbounded,
        };
        let mut page = ExportPage { records: Vec::new(), next: None };
        let mut last = None;
        for (scanned, entry) in requests.range((start, Bound::Unbounded))?.enumerate() {
            if page.records.len() == limit || scanned == HISTORY_SCAN_MAX {
                // More remain: go on after the last one read.
                page.next = last;
                break;
            }
            let (key, bytes) = entry?;
            let (created_ms, hold) = key.value();
            last = Some(HistoryCursor { created_ms, hold: HoldId(hold) });
            let (account, record) = decode(created_ms, bytes.value())?;
            if keep(account) {
                page.records.push((account, HoldId(hold), record));
            }
        }
        Ok(page)
    }

    /// Counts the queue without writing it (a queued repeat of a hold counts until then).
    pub fn stats(&self) -> HistoryResult<HistoryStats> {
        let queued = self.inner.queue.lock().expect("history queue lock poisoned").records.len();
        let written = self.inner.db.begin_read()?.open_table(REQUESTS)?.len()?;
        Ok(HistoryStats {
            records: written + queued as u64,
            expired_total: self.inner.expired_total.load(Ordering::Relaxed),
            copies_wanted: self.backfills_wanted()?.len() as u64,
        })
    }

    /// The record of `hold` if `account` paid for it.
    pub fn record(&self, account: AccountId, hold: HoldId) -> HistoryResult<Option<RequestRecord>> {
        let txn = self.begin_read()?;
        let requests = txn.open_table(REQUESTS)?;
        let by_stamp = requests.get((hold.stamp_ms(), hold.0))?;
        let (created_ms, bytes) = match by_stamp {
            Some(bytes) => (hold.stamp_ms(), bytes),
            None => {
                let Some(created_ms) = txn.open_table(HOLDS)?.get(hold.0)?.map(|c| c.value())
                else {
                    return Ok(None);
                };
                let bytes = requests.get((created_ms, hold.0))?;
                (created_ms, bytes.ok_or_else(|| corrupt("a hold names no record"))?)
            }
        };
        let (payer, record) = decode(created_ms, bytes.value())?;
        Ok((payer == account).then_some(record))
    }

    pub fn query(&self, query: &HistoryQuery) -> HistoryResult<HistoryPage> {
        let txn = self.begin_read_posted()?;
        let requests = txn.open_table(REQUESTS)?;
        let index = txn.open_table(POSTINGS)?;
        let end = match query.before {
            Some(before) if before.created_ms < query.to_ms => (before.created_ms, before.hold.0),
            _ => (query.to_ms, 0),
        };
        let start = (query.from_ms, 0u128);
        let limit = query.limit.clamp(1, HISTORY_PAGE_MAX) as usize;
        let mut page = HistoryPage { records: Vec::new(), next: None };
        if start >= end {
            return Ok(page);
        }
        let account = query.account.0;
        let keys = match query.key {
            Some(key) => vec![Some(key.0)],
            None => keys_of(&index, account)?,
        };
        // Newest first across the keys: one range per key, merged on (created, hold).
        let mut ranges = Vec::with_capacity(keys.len());
        for key in keys {
            let rows =
                (account, key, span_of(start.0), 0)..=(account, key, span_of(end.0), u128::MAX);
            let rows = index.range(rows)?.rev().peekable();
            ranges.push(NewestFirst { rows, span: Vec::new(), start, end });
        }
        let n_ranges = ranges.len();
        let mut heads = BinaryHeap::with_capacity(n_ranges);
        let mut advance = |heads: &mut BinaryHeap<_>, n: usize| -> HistoryResult<()> {
            if let Some(posting) = ranges[n].next()? {
                heads.push((posting, n));
            }
            Ok(())
        };
        for n in 0..n_ranges {
            advance(&mut heads, n)?;
        }
        let mut scanned = 0;
        while let Some(((created_ms, hold), n)) = heads.pop() {
            let cursor = HistoryCursor { created_ms, hold: HoldId(hold) };
            if page.records.len() == limit || scanned == HISTORY_SCAN_MAX {
                page.next = Some(cursor_after(cursor));
                break;
            }
            scanned += 1;
            advance(&mut heads, n)?;
            let bytes = requests.get((created_ms, hold))?;
            let bytes = bytes.ok_or_else(|| corrupt("an index names no record"))?;
            let (payer, record) = decode(created_ms, bytes.value())?;
            let matches = payer == query.account
                && query.model.as_ref().is_none_or(|model| *model == record.model)
                && query.status.is_none_or(|status| status == record.status);
            if matches {
                page.records.push((HoldId(hold), record));
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
        let account = query.account.0;
        let from_hour = hour_of(query.from_ms);
        let mut rows: BTreeMap<(u64, Option<u64>, String), Usage> = BTreeMap::new();
        let mut add = |hour_ms: u64, key: Option<u64>, model: &str, bytes: &[u8]| {
            let start_ms = hour_ms - hour_ms % query.bucket_ms;
            let usage = decode_usage(bytes).map_err(|e| corrupt(&e.to_string()))?;
            rows.entry((start_ms, key, model.to_owned())).or_default().merge(&usage);
            HistoryResult::Ok(())
        };
        let hourly = txn.open_table(USAGE_HOURLY)?;
        for entry in
            hourly.range((account, from_hour, None, "")..(account, query.to_ms, None, ""))?
        {
            let (key, value) = entry?;
            let (_, hour_ms, key_id, model) = key.value();
            add(hour_ms, key_id, model, value.value())?;
        }
        // The hours not rolled up yet are few: seek from one of them to the next.
        let recent = txn.open_table(USAGE_RECENT)?;
        let mut from = from_hour;
        'hours: while from < query.to_ms {
            for entry in recent.range((from, account, None, "")..(query.to_ms, 0, None, ""))? {
                let (key, value) = entry?;
                let (hour_ms, of, key_id, model) = key.value();
                if of == account {
                    add(hour_ms, key_id, model, value.value())?;
                    continue;
                }
                // Past the account's rows of this hour, or before them in a later hour.
                from = match of > account {
                    true => match hour_ms.checked_add(HOUR_MS) {
                        Some(next) => next,
                        None => break 'hours,
                    },
                    false => hour_ms,
                };
                continue 'hours;
            }
            break;
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
/// [`HISTORY_FLUSH_RECORDS`] wait); every [`HISTORY_SYNC_INTERVAL`] rolls closed hours up and syncs what was queued or
/// written since (so the sync before a snapshot has little left to do); every
/// [`HISTORY_EXPIRE_INTERVAL`] drops the records past retention, by `clock` (this
/// machine's wall clock; retention is not replicated state: each replica trims its own).
/// Paced by tokio's clock, so a simulated node's upkeep follows its virtual time. The
/// writes run off the runtime ([`History::off_runtime`]). Holds the history weakly: once
/// the node is gone the task ends and the file closes.
pub(crate) fn spawn_maintenance(history: &History, clock: Clock) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(&history.inner);
    let queued = Arc::clone(&history.inner.queued);
    tokio::spawn(async move {
        let mut upkeep = tokio::time::interval(HISTORY_SYNC_INTERVAL);
        upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut expired_at: Option<tokio::time::Instant> = None;
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
                expired_at = Some(tokio::time::Instant::now());
            }
            let now_ms = clock();
            let done = history
                .off_runtime(move |history| match maintain {
                    true => history.maintain(now_ms, expire),
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
    requests: redb::Table<'txn, (u64, u128), &'static [u8]>,
    holds: redb::Table<'txn, u128, u64>,
    postings: redb::Table<'txn, PostingsKey, &'static [u8]>,
    usage_recent: UsageTable<'txn>,
    usage_hourly: UsageTable<'txn>,
    posted_through: redb::Table<'txn, (u128, u32), u64>,
}

type UsageTable<'txn> = redb::Table<'txn, BucketKey<'static>, &'static [u8]>;

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> HistoryResult<Tables<'txn>> {
        Ok(Tables {
            requests: txn.open_table(REQUESTS)?,
            holds: txn.open_table(HOLDS)?,
            postings: txn.open_table(POSTINGS)?,
            usage_recent: txn.open_table(USAGE_RECENT)?,
            usage_hourly: txn.open_table(USAGE_HOURLY)?,
            posted_through: txn.open_table(POSTED_THROUGH)?,
        })
    }

    /// Records `marks` (group → index) as [`POSTED_THROUGH`] of `incarnation`'s log, and
    /// drops the rows of any other.
    fn mark_posted(
        &mut self,
        incarnation: Incarnation,
        marks: &BTreeMap<u32, u64>,
    ) -> HistoryResult<()> {
        self.posted_through.retain(|(of, _), _| of == incarnation)?;
        for (&group, &index) in marks {
            self.posted_through.insert((incarnation, group), index)?;
        }
        Ok(())
    }

    /// Inserts each hold's first record (a hold already written keeps its own): the
    /// record, its `holds` row unless its hold leads with its creation millisecond, and
    /// its sums into its hour's bucket (each bucket written once, however many of the
    /// records share it). Returns the postings to write: those of the records inserted,
    /// and of records written before whose postings are not in `postings` (a record
    /// replayed from the log after a crash took the postings held in memory).
    ///
    /// In the order of their holds, which for a gateway's holds ([`HoldId::time_ordered`])
    /// is `requests`' order: settles come in the order requests end, not begin, and
    /// inserted as they came each record created before one already inserted went back to
    /// an earlier leaf, a walk from the root and often a leaf split; in order the inserts
    /// go through the last leaves once, front to back (`history_write --latency-spread-ms
    /// 10000`: 45 % less time and 62 % fewer bytes written a record; docs/storage.md,
    /// "Records inserted in order"). A hold's records keep their order, so its first
    /// still wins.
    fn insert_all(&mut self, settled: &[Settled]) -> HistoryResult<Vec<IndexKey>> {
        let mut bytes = Vec::with_capacity(128);
        let mut index: Vec<IndexKey> = Vec::with_capacity(settled.len());
        let mut buckets: BTreeMap<BucketKey<'_>, Usage> = BTreeMap::new();
        // Whether a hold may have its record elsewhere than at its stamp (none does in a
        // file only gateways wrote: then a time-ordered hold's record costs one insert).
        let mut holds_rows = !self.holds.is_empty()?;
        // Positions rather than the records (~150 bytes each to move), and small ones: a
        // loaded node's transaction holds tens of thousands. A stable sort.
        let mut order: Vec<u32> = (0..u32::try_from(settled.len())
            .expect("a transaction holds fewer than 2^32 records"))
            .collect();
        order.sort_by_key(|&at| settled[at as usize].1);
        for (account, hold, record) in order.into_iter().map(|at| &settled[at as usize]) {
            let created_ms = record.created_ms;
            bytes.clear();
            encode_record(*account, record, &mut bytes);
            if hold.stamp_ms() == created_ms {
                let first = match holds_rows {
                    true => self.holds.get(hold.0)?.map(|first| first.value()),
                    false => None,
                };
                if let Some(first) = first {
                    self.repost(first, *hold, &mut index)?;
                    continue;
                }
                let key = (created_ms, hold.0);
                let first = self.requests.insert(key, bytes.as_slice())?;
                if let Some(first) = first.map(|first| first.value().to_vec()) {
                    if first != bytes {
                        self.requests.insert(key, first.as_slice())?;
                    }
                    self.repost(created_ms, *hold, &mut index)?;
                    continue;
                }
            } else {
                if self.requests.get((hold.stamp_ms(), hold.0))?.is_some() {
                    self.repost(hold.stamp_ms(), *hold, &mut index)?;
                    continue;
                }
                holds_rows = true;
                let first = self.holds.insert(hold.0, created_ms)?.map(|first| first.value());
                if let Some(first) = first {
                    if first != created_ms {
                        self.holds.insert(hold.0, first)?;
                    }
                    self.repost(first, *hold, &mut index)?;
                    continue;
                }
                self.requests.insert((created_ms, hold.0), bytes.as_slice())?;
            }
            let key = record.key.map(|key| key.0);
            index.push((account.0, key, created_ms, hold.0));
            let bucket = (hour_of(created_ms), account.0, key, record.model.as_str());
            buckets.entry(bucket).or_default().merge(&Usage::of(record));
        }
        for (bucket, added) in buckets {
            let mut usage = read_usage(&self.usage_recent, bucket)?.unwrap_or_default();
            usage.merge(&added);
            self.usage_recent.insert(bucket, encode_usage(&usage).as_slice())?;
        }
        Ok(index)
    }

    /// Adds to `index` the posting of `hold`'s record (written before, at `created_ms`)
    /// unless `postings` has it: it was held in memory when the process stopped, and the
    /// log replays the record after the last snapshot (whose sync wrote every posting).
    fn repost(
        &mut self,
        created_ms: u64,
        hold: HoldId,
        index: &mut Vec<IndexKey>,
    ) -> HistoryResult<()> {
        let bytes = self.requests.get((created_ms, hold.0))?;
        let bytes = bytes.ok_or_else(|| corrupt("a hold names no record"))?;
        let (account, record) = decode(created_ms, bytes.value())?;
        drop(bytes);
        let (account, key, span) = (account.0, record.key.map(|key| key.0), span_of(created_ms));
        for row in self.postings.range((account, key, span, 0)..=(account, key, span, u128::MAX))? {
            let (_, postings) = row?;
            if decode_postings(postings.value())?.any(|posting| posting == (created_ms, hold.0)) {
                return Ok(());
            }
        }
        index.push((account, key, created_ms, hold.0));
        Ok(())
    }

    /// Writes the postings of `index` (sorted, each once): a row per account, key and
    /// second, keyed by its first posting's hold. No row has that key yet: a hold is posted
    /// once (its first record's posting, or again only if `postings` lost it), and a row
    /// that loses its first posting to retention is keyed anew ([`Tables::unpost`]), so a
    /// replay of that hold's record finds its key free.
    fn post(&mut self, index: &[IndexKey]) -> HistoryResult<()> {
        let mut bytes = Vec::new();
        for run in index.chunk_by(|a, b| (a.0, a.1, span_of(a.2)) == (b.0, b.1, span_of(b.2))) {
            let (account, key, created_ms, hold) = run[0];
            let postings = run.iter().map(|&(_, _, created_ms, hold)| (created_ms, hold));
            encode_postings(postings, &mut bytes);
            let row = (account, key, span_of(created_ms), hold);
            if self.postings.insert(row, bytes.as_slice())?.is_some() {
                return Err(corrupt("two postings rows under one first hold"));
            }
        }
        Ok(())
    }

    /// Writes the held postings `unposted` (left sorted and deduplicated).
    fn post_held(&mut self, unposted: &mut Vec<IndexKey>) -> HistoryResult<()> {
        unposted.sort_unstable();
        unposted.dedup();
        self.post(unposted)
    }

    /// Removes the postings of `index` (sorted) from their rows, and the rows left empty; a
    /// row that lost its first posting is keyed by the one that is now first.
    fn unpost(&mut self, index: &[IndexKey]) -> HistoryResult<()> {
        let mut bytes = Vec::new();
        for run in index.chunk_by(|a, b| (a.0, a.1, span_of(a.2)) == (b.0, b.1, span_of(b.2))) {
            let (account, key, created_ms, _) = run[0];
            let span = span_of(created_ms);
            let gone: BTreeSet<Posting> = run.iter().map(|&(_, _, c, hold)| (c, hold)).collect();
            let rows: Vec<(PostingsKey, Vec<u8>)> = self
                .postings
                .range((account, key, span, 0)..=(account, key, span, u128::MAX))?
                .map(|entry| entry.map(|(row, kept)| (row.value(), kept.value().to_vec())))
                .collect::<Result<_, _>>()?;
            for (row, kept) in rows {
                let kept: Vec<Posting> =
                    decode_postings(&kept)?.filter(|posting| !gone.contains(posting)).collect();
                let Some(&(_, first)) = kept.first() else {
                    self.postings.remove(row)?;
                    continue;
                };
                encode_postings(kept.into_iter(), &mut bytes);
                if first != row.3 {
                    self.postings.remove(row)?;
                }
                self.postings.insert((row.0, row.1, row.2, first), bytes.as_slice())?;
            }
        }
        Ok(())
    }

    /// Rewrites a format 2 or 3 file's `by_account_key` as postings and drops it; returns
    /// how many entries it held (none in a file without it).
    fn reindex_v3(&mut self, txn: &WriteTransaction) -> HistoryResult<u64> {
        let exists = txn.list_tables()?.any(|table| table.name() == V3_BY_ACCOUNT_KEY.name());
        if !exists {
            return Ok(0);
        }
        let mut moved = 0;
        let mut after = Bound::Unbounded;
        loop {
            let batch: Vec<IndexKey> = {
                let old = txn.open_table(V3_BY_ACCOUNT_KEY)?;
                let range = old.range::<IndexKey>((after, Bound::Unbounded))?;
                range
                    .take(MIGRATE_BATCH)
                    .map(|entry| Ok(entry?.0.value()))
                    .collect::<HistoryResult<_>>()?
            };
            let Some(&last) = batch.last() else { break };
            after = Bound::Excluded(last);
            moved += batch.len() as u64;
            self.post(&batch)?;
        }
        txn.delete_table(V3_BY_ACCOUNT_KEY)?;
        Ok(moved)
    }

    /// Moves the buckets of the hours before `before_hour` from `usage_recent` into
    /// `usage_hourly`.
    fn roll_up(&mut self, before_hour: u64) -> HistoryResult<()> {
        let closed = ..(before_hour, 0u64, None::<u64>, "");
        let mut moved = Vec::new();
        for entry in self.usage_recent.range(closed)? {
            let (key, value) = entry?;
            let (hour_ms, account, key_id, model) = key.value();
            let usage = decode_usage(value.value()).map_err(|e| corrupt(&e.to_string()))?;
            moved.push((account, hour_ms, key_id, model.to_owned(), usage));
        }
        self.usage_recent.retain_in(closed, |_, _| false)?;
        for (account, hour_ms, key_id, model, added) in moved {
            let bucket = (account, hour_ms, key_id, model.as_str());
            let mut usage = read_usage(&self.usage_hourly, bucket)?.unwrap_or_default();
            usage.merge(&added);
            self.usage_hourly.insert(bucket, encode_usage(&usage).as_slice())?;
        }
        Ok(())
    }

    /// Deletes the oldest records, at most `max` of those created before `cutoff_ms`,
    /// from every table; returns how many.
    fn expire(&mut self, cutoff_ms: u64, max: usize) -> HistoryResult<usize> {
        // Every bucket of a record to go is then whole in `usage_hourly`.
        self.roll_up(hour_of(cutoff_ms).saturating_add(HOUR_MS))?;
        let mut old = Vec::new();
        for entry in self.requests.range(..(cutoff_ms, 0u128))?.take(max) {
            let (key, bytes) = entry?;
            let (created_ms, hold) = key.value();
            let (account, record) = decode(created_ms, bytes.value())?;
            old.push((hold, account, record));
        }
        let Some((hold, _, record)) = old.last() else { return Ok(0) };
        self.requests.retain_in(..=(record.created_ms, *hold), |_, _| false)?;
        let mut index: Vec<IndexKey> = Vec::with_capacity(old.len());
        let mut buckets: BTreeMap<BucketKey<'_>, Usage> = BTreeMap::new();
        for (hold, account, record) in &old {
            self.holds.remove(hold)?;
            let key = record.key.map(|key| key.0);
            index.push((account.0, key, record.created_ms, *hold));
            let bucket = (account.0, hour_of(record.created_ms), key, record.model.as_str());
            buckets.entry(bucket).or_default().merge(&Usage::of(record));
        }
        index.sort_unstable();
        self.unpost(&index)?;
        for (bucket, gone) in buckets {
            let usage = read_usage(&self.usage_hourly, bucket)?;
            let usage = usage.ok_or_else(|| corrupt("a record without its hourly bucket"))?;
            match usage.remove(&gone) {
                Some(left) => self.usage_hourly.insert(bucket, encode_usage(&left).as_slice())?,
                None => self.usage_hourly.remove(bucket)?,
            };
        }
        Ok(old.len())
    }
}

/// (hour start ms, account, key, model) in `usage_recent`, (account, hour start ms, key,
/// model) in `usage_hourly`.
type BucketKey<'a> = (u64, u64, Option<u64>, &'a str);

fn read_usage(table: &UsageTable<'_>, bucket: BucketKey<'_>) -> HistoryResult<Option<Usage>> {
    let Some(bytes) = table.get(bucket)? else { return Ok(None) };
    decode_usage(bytes.value()).map(Some).map_err(|e| corrupt(&e.to_string()))
}

/// The keys (`None` for requests made without one) `account` has records under, each
/// found by one seek past the previous.
fn keys_of(
    index: &redb::ReadOnlyTable<PostingsKey, &[u8]>,
    account: u64,
) -> HistoryResult<Vec<Option<u64>>> {
    let mut keys = Vec::new();
    let mut from: PostingsKey = (account, None, 0, 0);
    while let Some(entry) = index.range(from..)?.next() {
        let (of, key, _, _) = entry?.0.value();
        if of != account {
            break;
        }
        keys.push(key);
        let next = match key {
            None => Some(0),
            Some(key) => match key.checked_add(1) {
                Some(next) => Some(next),
                None => break,
            },
        };
        from = (account, next, 0, 0);
    }
    Ok(keys)
}

/// One key's postings within a query's range, newest first: its rows read from the last,
/// a second's rows at a time (rows of one second are ordered by their first hold, not by
/// their postings), sorted.
struct NewestFirst {
    rows: std::iter::Peekable<std::iter::Rev<redb::Range<'static, PostingsKey, &'static [u8]>>>,
    /// The postings of the second being read, in range, oldest first.
    span: Vec<Posting>,
    start: Posting,
    end: Posting,
}

impl NewestFirst {
    fn next(&mut self) -> HistoryResult<Option<Posting>> {
        loop {
            if let Some(posting) = self.span.pop() {
                return Ok(Some(posting));
            }
            let Some(row) = self.rows.next() else { return Ok(None) };
            let (row, bytes) = row?;
            let span = row.value().2;
            self.take(bytes.value())?;
            while let Some(Ok((next, _))) = self.rows.peek() {
                if next.value().2 != span {
                    break;
                }
                let (_, bytes) = self.rows.next().expect("a row peeked")?;
                self.take(bytes.value())?;
            }
            self.span.sort_unstable();
        }
    }

    fn take(&mut self, row: &[u8]) -> HistoryResult<()> {
        let (start, end) = (self.start, self.end);
        let postings = decode_postings(row)?;
        self.span.extend(postings.filter(|posting| start <= *posting && *posting < end));
        Ok(())
    }
}

fn encode_postings(postings: impl Iterator<Item = Posting>, out: &mut Vec<u8>) {
    out.clear();
    for (created_ms, hold) in postings {
        out.extend_from_slice(&created_ms.to_le_bytes());
        out.extend_from_slice(&hold.to_le_bytes());
    }
}

fn decode_postings(row: &[u8]) -> HistoryResult<impl Iterator<Item = Posting> + '_> {
    if !row.len().is_multiple_of(POSTING_BYTES) {
        return Err(corrupt("a postings row of a broken length"));
    }
    Ok(row.chunks_exact(POSTING_BYTES).map(|posting| {
        let (created_ms, hold) = posting.split_at(8);
        let created_ms = u64::from_le_bytes(created_ms.try_into().expect("8 bytes"));
        (created_ms, u128::from_le_bytes(hold.try_into().expect("16 bytes")))
    }))
}

/// The start of the postings row's second `ms` falls in.
fn span_of(ms: u64) -> u64 {
    ms - ms % POSTINGS_SPAN_MS
}

fn hour_of(ms: u64) -> u64 {
    ms - ms % HOUR_MS
}

fn decode(created_ms: u64, bytes: &[u8]) -> HistoryResult<(AccountId, RequestRecord)> {
    decode_record(created_ms, bytes).map_err(|e| corrupt(&e.to_string()))
}

/// `table` as `txn` reads it, or none if no write has created it yet (a table this
/// format added to files made before it).
fn table_if_any<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<K, V>,
) -> HistoryResult<Option<redb::ReadOnlyTable<K, V>>> {
    match txn.open_table(table) {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn corrupt(reason: &str) -> redb::Error {
    redb::Error::Corrupted(format!("request history: {reason}"))
}

/// Why a history file cannot be opened by this build.
#[derive(Debug, thiserror::Error)]
enum HistoryFormatError {
    #[error(
        "request history format version {found}; this build reads version \
         {HISTORY_FORMAT_VERSION} (and versions 1 to 3, which it migrates)"
    )]
    Unsupported { found: u64 },
    #[error(transparent)]
    Storage(#[from] redb::Error),
}

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

    /// The incarnation of the data directory whose log these tests' histories follow.
    const INCARNATION: Incarnation = 1;

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

    /// A writer that takes the writer's lock back to back, as a retention pass does a
    /// batch at a time, does not keep another write waiting: the flush gets the lock at
    /// one of the unlocks. With `std`'s mutex the flush waited out the whole loop.
    #[test]
    fn a_write_is_not_starved_by_writes_taken_back_to_back() {
        let history = History::in_memory(HISTORY_RETENTION_DEFAULT).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let busy = std::thread::spawn({
            let (history, stop) = (history.clone(), Arc::clone(&stop));
            move || {
                let until = std::time::Instant::now() + Duration::from_secs(3);
                while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < until {
                    let _batch = history.inner.writer.lock();
                    // A batch's work: on the CPU, the lock held.
                    let batch_ends = std::time::Instant::now() + Duration::from_millis(10);
                    while std::time::Instant::now() < batch_ends {
                        std::hint::spin_loop();
                    }
                }
            }
        });
        std::thread::sleep(Duration::from_millis(50));
        let started = std::time::Instant::now();
        history.flush().unwrap();
        let waited = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        busy.join().unwrap();
        assert!(waited < Duration::from_secs(1), "a flush waited {waited:?} for the lock");
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
        assert!(!history.queue(None, vec![late(0, 7), late(200, 1), late(200, 9)]));
        assert_eq!(history.queued(), 3);
        assert_eq!(history.record(ACCOUNT, HoldId(200)).unwrap().unwrap().cost, PicoUsd(1));
        assert_eq!(history.queued(), 0, "the read wrote the queue first");
        assert_eq!(history.record(ACCOUNT, HoldId(0)).unwrap().unwrap().cost, PicoUsd(1_000));

        history.queue(None, vec![late(201, 1)]);
        assert_eq!(holds(&history.query(&query(2)).unwrap()), [201, 200]);
        history.queue(None, vec![late(202, 1)]);
        let all = UsageQuery { account: ACCOUNT, from_ms: 0, to_ms: u64::MAX, bucket_ms: HOUR_MS };
        let requests: u64 = history.usage(&all).unwrap().iter().map(|row| row.usage.requests).sum();
        assert_eq!(requests, 103);
        history.queue(None, vec![late(203, 1)]);
        let exported = history.export(|_| true, None, HISTORY_EXPORT_PAGE_MAX).unwrap();
        assert_eq!(exported.records.last().map(|(_, hold, _)| hold.0), Some(203));
        assert_eq!(history.stats().unwrap().records, 105);
    }

    /// A transaction inserts its records in the order of their holds, not as they were
    /// queued (settles come in the order requests end): every record is found, and of a
    /// hold's records the first queued wins, wherever the others fall.
    #[test]
    fn records_queued_out_of_order_are_all_written_and_a_hold_keeps_its_first() {
        let history = History::in_memory(HISTORY_RETENTION_DEFAULT).unwrap();
        let settled = |n: u64, cost| {
            let created_ms = T0 + n * 1_000;
            let hold = HoldId::time_ordered(created_ms, n.into());
            (ACCOUNT, hold, record(n % 2, "mock/echo", 200, created_ms, cost))
        };
        let queued =
            vec![settled(5, 1), settled(2, 1), settled(5, 9), settled(3, 1), settled(2, 7)];
        history.queue(None, queued);
        history.flush().unwrap();
        let costs: Vec<(u64, u128)> = (history.query(&query(10)).unwrap().records.iter())
            .map(|(_, record)| ((record.created_ms - T0) / 1_000, record.cost.0))
            .collect();
        assert_eq!(costs, [(5, 1), (3, 1), (2, 1)]);
        assert_eq!(history.stats().unwrap().records, 3);
    }

    /// The queue's buffers take turns: after a write, the next records are queued in the
    /// room an earlier queue left, not in a buffer grown from nothing.
    #[test]
    fn a_written_queue_leaves_its_room_to_the_next() {
        let history = filled();
        let late = |hold: u64| {
            let created_ms = T0 + (100 + hold) * 60_000;
            (ACCOUNT, HoldId(hold.into()), record(0, "mock/late", 200, created_ms, 1))
        };
        let room = |history: &History| history.inner.queue.lock().unwrap().records.capacity();
        let before = history.stats().unwrap().records;
        history.queue(None, (200..300).map(late).collect());
        history.flush().unwrap();
        history.queue(None, vec![late(300)]);
        history.flush().unwrap();
        history.queue(None, vec![late(301)]);
        assert!(room(&history) >= 100, "room for {} records", room(&history));
        history.flush().unwrap();
        assert_eq!(history.stats().unwrap().records, before + 102);
    }

    /// A sync writes the queue before it syncs: after a power loss right after it, what
    /// was queued or written unsynced is there; before it, neither was.
    #[test]
    fn a_sync_makes_queued_and_written_records_durable() {
        let disk = PowerLossDisk::default();
        let history =
            History::with_backend(disk.clone(), HISTORY_RETENTION_DEFAULT, Some(INCARNATION))
                .unwrap();
        history.insert([(ACCOUNT, HoldId(1), record(0, "mock/echo", 200, T0, 1))]).unwrap();
        history.queue(None, vec![(ACCOUNT, HoldId(2), record(0, "mock/echo", 200, T0, 1))]);
        let after_power_loss = || {
            History::with_backend(disk.crash(), HISTORY_RETENTION_DEFAULT, Some(INCARNATION))
                .unwrap()
        };
        assert_eq!(after_power_loss().stats().unwrap().records, 0);
        history.sync().unwrap();
        let survivor = after_power_loss();
        assert_eq!(survivor.stats().unwrap().records, 2);
        assert!(survivor.record(ACCOUNT, HoldId(2)).unwrap().is_some());
    }

    fn postings_rows(history: &History) -> u64 {
        let txn = history.inner.db.begin_read().unwrap();
        txn.open_table(POSTINGS).unwrap().len().unwrap()
    }

    /// An apply's records are written with their postings held in memory: a record is
    /// found at once, and a query writes the held postings before it reads them.
    #[test]
    fn postings_are_held_until_a_query_reads_them() {
        let history = History::in_memory(HISTORY_RETENTION_DEFAULT).unwrap();
        let settled = |n: u64| {
            let created_ms = T0 + n * 1_000;
            (
                ACCOUNT,
                HoldId::time_ordered(created_ms, n.into()),
                record(0, "m", 200, created_ms, 1),
            )
        };
        history.queue(None, (0..3).map(settled).collect());
        history.flush().unwrap();
        assert_eq!(postings_rows(&history), 0, "held");
        assert!(history.record(ACCOUNT, settled(1).1).unwrap().is_some());
        assert_eq!(postings_rows(&history), 0, "a record's read leaves them held");
        assert_eq!(history.query(&query(10)).unwrap().records.len(), 3);
        assert_eq!(postings_rows(&history), 3);
        history.queue(None, vec![settled(3)]);
        history.sync().unwrap();
        assert_eq!(postings_rows(&history), 4, "a snapshot's sync writes them");
    }

    /// A power loss takes the postings held in memory, not the records synced: the log's
    /// replay of those records (the same holds again) writes their postings, once.
    #[test]
    fn postings_lost_in_a_power_loss_are_written_when_the_log_replays_their_records() {
        let disk = PowerLossDisk::default();
        let history =
            History::with_backend(disk.clone(), HISTORY_RETENTION_DEFAULT, Some(INCARNATION))
                .unwrap();
        let settled: Vec<Settled> = (0..4u64)
            .map(|n| {
                let created_ms = T0 + n * 400;
                // One hold not led by its record's millisecond: found through `holds`.
                let hold = match n {
                    3 => HoldId(n.into()),
                    _ => HoldId::time_ordered(created_ms, n.into()),
                };
                (ACCOUNT, hold, record(n % 2, "m", 200, created_ms, 1))
            })
            .collect();
        history.queue(None, settled.clone());
        history.flush().unwrap();
        history.sync_records().unwrap();
        let history =
            History::with_backend(disk.crash(), HISTORY_RETENTION_DEFAULT, Some(INCARNATION))
                .unwrap();
        assert_eq!(history.stats().unwrap().records, 4, "the records were synced");
        assert!(history.query(&query(10)).unwrap().records.is_empty(), "their postings were not");
        for _ in 0..2 {
            history.queue(None, settled.clone());
            history.flush().unwrap();
            let mut found = holds(&history.query(&query(10)).unwrap());
            found.sort_unstable();
            let mut expected: Vec<u128> = settled.iter().map(|(_, hold, _)| hold.0).collect();
            expected.sort_unstable();
            assert_eq!(found, expected);
        }
    }

    /// A write of postings marks, for each group, the last entry whose records it holds.
    /// The mark is lost in a power loss with the postings of its write, counts in the log
    /// of its own incarnation only, and the first write of another incarnation drops it.
    #[test]
    fn a_write_of_postings_marks_the_entries_it_covers() {
        let disk = PowerLossDisk::default();
        let open = |disk, incarnation| {
            History::with_backend(disk, HISTORY_RETENTION_DEFAULT, Some(incarnation)).unwrap()
        };
        let settled = |n: u64| {
            let created_ms = T0 + n * 400;
            (
                ACCOUNT,
                HoldId::time_ordered(created_ms, n.into()),
                record(0, "m", 200, created_ms, 1),
            )
        };
        let history = open(disk.clone(), INCARNATION);
        history.queue(Some((0, 10)), vec![settled(0)]);
        history.queue(Some((1, 4)), Vec::new());
        history.sync().unwrap();
        assert_eq!(
            (history.posted_through(0).unwrap(), history.posted_through(1).unwrap()),
            (10, 4)
        );
        history.queue(Some((0, 12)), vec![settled(1)]);
        history.sync_records().unwrap();
        assert_eq!(history.posted_through(0).unwrap(), 10, "entry 12's postings are held");

        let disk = disk.crash();
        let history = open(disk.clone(), INCARNATION);
        assert_eq!(history.stats().unwrap().records, 2, "both records were synced");
        assert_eq!(history.posted_through(0).unwrap(), 10);
        history.queue(Some((0, 14)), vec![settled(2)]);
        assert_eq!(holds(&history.query(&query(10)).unwrap()).len(), 2, "entry 12's posting lost");
        assert_eq!(history.posted_through(0).unwrap(), 14, "the query wrote the postings held");
        let disk = disk.crash();
        assert_eq!(open(disk.clone(), INCARNATION).posted_through(0).unwrap(), 10, "not synced");

        let another = open(disk.clone(), INCARNATION + 1);
        assert_eq!(another.posted_through(0).unwrap(), 0, "another log's entries");
        another.queue(Some((0, 1)), vec![settled(3)]);
        another.sync().unwrap();
        assert_eq!(another.posted_through(0).unwrap(), 1);
        assert_eq!(open(disk.crash(), INCARNATION).posted_through(0).unwrap(), 0, "dropped");
    }

    /// A wish for a copy outlives a power loss and is asked for again by the history that
    /// opens after it, until a copy that began after it ends; the copy's unsynced pages
    /// are durable with that end, and lost with the wish kept before it.
    #[test]
    fn a_wish_for_a_copy_outlives_a_power_loss_until_a_copy_that_began_after_it_ends() {
        let open = |disk| {
            History::with_backend(disk, HISTORY_RETENTION_DEFAULT, Some(INCARNATION)).unwrap()
        };
        let asked = |history: &History| {
            let requests = history.backfill_requests();
            let groups = std::mem::take(&mut *requests.groups.lock().unwrap());
            groups.into_iter().collect::<Vec<_>>()
        };
        let page = |n: u64| {
            let created_ms = T0 + n;
            vec![(
                ACCOUNT,
                HoldId::time_ordered(created_ms, n.into()),
                record(0, "m", 200, created_ms, 1),
            )]
        };
        let disk = PowerLossDisk::default();
        let history = open(disk.clone());
        assert_eq!(history.backfills_wanted().unwrap(), [], "none in a new file");
        history.want_backfill(1, 40).unwrap();
        assert_eq!(asked(&history), [] as [u32; 0], "the install asks, once saved");
        assert_eq!(history.stats().unwrap().copies_wanted, 1);

        // A crash before the copy: the wish is kept and asked for again.
        let disk = disk.crash();
        let history = open(disk.clone());
        assert_eq!(history.backfills_wanted().unwrap(), [(1, 40)]);
        assert_eq!(asked(&history), [1]);
        // A copy's page written, then a crash before its end: both the page and the
        // wish as before it.
        history.insert(page(0)).unwrap();
        let disk = disk.crash();
        let history = open(disk.clone());
        assert_eq!(history.stats().unwrap().records, 0, "the page was not synced");
        assert_eq!(asked(&history), [1]);

        // An install during a copy: the copy's end leaves the later wish, which an
        // earlier install's cannot replace.
        let began_with = history.backfills_wanted().unwrap()[0].1;
        history.want_backfill(1, 90).unwrap();
        history.want_backfill(1, 60).unwrap();
        history.insert(page(1)).unwrap();
        history.backfill_done(1, began_with).unwrap();
        let disk = disk.crash();
        let history = open(disk.clone());
        assert_eq!(history.stats().unwrap().records, 1, "synced with the copy's end");
        assert_eq!(history.backfills_wanted().unwrap(), [(1, 90)]);
        assert_eq!(asked(&history), [1]);
        history.backfill_done(1, 90).unwrap();
        let history = open(disk.crash());
        assert_eq!(history.backfills_wanted().unwrap(), []);
        assert_eq!(asked(&history), [] as [u32; 0]);
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

    /// Retention that cuts a postings row keeps the row's later postings, keyed by the
    /// first of them; a replay of the removed first hold's record (created before the
    /// cut, so it comes back) posts a row of its own beside them instead of over them.
    #[test]
    fn a_row_cut_by_retention_keeps_its_postings_when_its_first_hold_returns() {
        let history = History::in_memory(HISTORY_RETENTION_DEFAULT).unwrap();
        let (first, later) = (HoldId::time_ordered(T0, 1), HoldId::time_ordered(T0 + 1, 2));
        let replayed = (ACCOUNT, first, record(0, "mock/echo", 200, T0, 5));
        history
            .insert([replayed.clone(), (ACCOUNT, later, record(0, "mock/echo", 200, T0 + 1, 6))])
            .unwrap();
        let retention_ms = HISTORY_RETENTION_DEFAULT.as_millis() as u64;
        assert_eq!(history.expire(T0 + 1 + retention_ms).unwrap(), 1);
        history.insert([replayed]).unwrap();
        let holds: Vec<HoldId> =
            history.query(&query(10)).unwrap().records.iter().map(|(hold, _)| *hold).collect();
        assert_eq!(holds, [later, first]);
    }

    #[test]
    fn retention_drops_old_records_from_every_index_and_aggregate() {
        let history = filled();
        let retention_ms = HISTORY_RETENTION_DEFAULT.as_millis() as u64;
        // At this time the records of the first 40 minutes are past retention.
        let now_ms = T0 + 40 * 60_000 + retention_ms;
        assert_eq!(history.expire(now_ms).unwrap(), 41, "40 of this account, 1 of the other");
        assert_eq!(history.expire(now_ms).unwrap(), 0);
        let stats = HistoryStats { records: 60, expired_total: 41, copies_wanted: 0 };
        assert_eq!(history.stats().unwrap(), stats);
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

    /// The history's answers against a plain model of what it stores: the records in a
    /// list, each hold's first, filtered and paged the way the queries are specified
    /// (and as format 1 answered them: newest first by (created, hold), a page ending
    /// after `limit` matches or [`HISTORY_SCAN_MAX`] entries read of the account's, or
    /// the key's, records in range).
    mod model {
        use super::*;
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        use std::cmp::Reverse;

        const ACCOUNTS: u64 = 3;
        const SPAN_MS: u64 = 3 * 24 * HOUR_MS;

        fn random_record(rng: &mut StdRng, account: u64) -> RequestRecord {
            let key = match rng.gen_range(0..4u64) {
                0 => None,
                k => Some(KeyId(account * 10 + k)),
            };
            RequestRecord {
                key,
                model: ["mock/echo", "openai/gpt-4o", "x/y"][rng.gen_range(0..3)].into(),
                status: [200, 200, 502][rng.gen_range(0..3)],
                // Half anywhere, half in a few busy seconds, where an account and key's
                // records share postings rows and several transactions write rows of one
                // second.
                created_ms: match rng.gen_bool(0.5) {
                    true => T0 + rng.gen_range(0..SPAN_MS),
                    false => {
                        T0 + rng.gen_range(1..40) * (SPAN_MS / 40) - 1_500 + rng.gen_range(0..3_000)
                    }
                },
                prompt_tokens: rng.gen_range(0..1_000),
                completion_tokens: rng.gen_range(0..1_000),
                reasoning_tokens: rng.gen_range(0..10),
                cached_tokens: rng.gen_range(0..10),
                cost: PicoUsd(rng.gen_range(0..1_000_000_000)),
                written_off: PicoUsd(rng.gen_range(0..3)),
                ttft_ms: rng.gen_bool(0.5).then(|| rng.gen_range(0..500)),
                ..RequestRecord::default()
            }
        }

        /// What the history holds: each hold's first record, with its payer.
        struct Model {
            records: Vec<Settled>,
        }

        impl Model {
            fn query(&self, query: &HistoryQuery) -> HistoryPage {
                let end = match query.before {
                    Some(before) if before.created_ms < query.to_ms => {
                        (before.created_ms, before.hold.0)
                    }
                    _ => (query.to_ms, 0),
                };
                let start = (query.from_ms, 0u128);
                let mut entries: Vec<&Settled> = self
                    .records
                    .iter()
                    .filter(|(account, hold, record)| {
                        let at = (record.created_ms, hold.0);
                        *account == query.account
                            && query.key.is_none_or(|key| record.key == Some(key))
                            && start <= at
                            && at < end
                    })
                    .collect();
                entries.sort_by_key(|(_, hold, record)| Reverse((record.created_ms, hold.0)));
                let limit = query.limit.clamp(1, HISTORY_PAGE_MAX) as usize;
                let mut page = HistoryPage { records: Vec::new(), next: None };
                for (scanned, (_, hold, record)) in entries.into_iter().enumerate() {
                    if page.records.len() == limit || scanned == HISTORY_SCAN_MAX {
                        let cursor = HistoryCursor { created_ms: record.created_ms, hold: *hold };
                        page.next = Some(cursor_after(cursor));
                        break;
                    }
                    let matches = query.model.as_ref().is_none_or(|m| *m == record.model)
                        && query.status.is_none_or(|status| status == record.status);
                    if matches {
                        page.records.push((*hold, record.clone()));
                    }
                }
                page
            }

            fn usage(&self, query: &UsageQuery) -> Vec<UsageRow> {
                let mut rows: BTreeMap<(u64, Option<u64>, String), Usage> = BTreeMap::new();
                for (account, _, record) in &self.records {
                    let hour_ms = hour_of(record.created_ms);
                    if *account != query.account
                        || hour_ms < hour_of(query.from_ms)
                        || hour_ms >= query.to_ms
                    {
                        continue;
                    }
                    let start_ms = hour_ms - hour_ms % query.bucket_ms;
                    let key = record.key.map(|key| key.0);
                    let row = rows.entry((start_ms, key, record.model.clone()));
                    row.or_default().merge(&Usage::of(record));
                }
                let rows = rows.into_iter();
                rows.map(|((start_ms, key, model), usage)| UsageRow {
                    start_ms,
                    key: key.map(KeyId),
                    model,
                    usage,
                })
                .collect()
            }
        }

        fn random_query(rng: &mut StdRng) -> HistoryQuery {
            let account = AccountId(rng.gen_range(0..ACCOUNTS + 1));
            let from_ms = if rng.gen_bool(0.5) { 0 } else { T0 + rng.gen_range(0..SPAN_MS) };
            let to_ms = match rng.gen_range(0..3) {
                0 => u64::MAX,
                1 => from_ms.max(T0) + rng.gen_range(0..SPAN_MS),
                _ => T0 + rng.gen_range(0..SPAN_MS),
            };
            HistoryQuery {
                account,
                key: rng.gen_bool(0.3).then(|| KeyId(account.0 * 10 + rng.gen_range(0..4))),
                model: rng.gen_bool(0.2).then(|| "openai/gpt-4o".to_owned()),
                status: rng.gen_bool(0.2).then_some(502),
                from_ms,
                to_ms,
                before: None,
                limit: rng.gen_range(1..80),
            }
        }

        /// Pages through `query` on both, comparing every page.
        fn compare_pages(history: &History, model: &Model, mut query: HistoryQuery) {
            loop {
                let page = history.query(&query).unwrap();
                assert_eq!(page, model.query(&query), "{query:?}");
                match page.next {
                    Some(next) => query.before = Some(next),
                    None => return,
                }
            }
        }

        fn compare(history: &History, model: &Model, rng: &mut StdRng) {
            for _ in 0..60 {
                compare_pages(history, model, random_query(rng));
            }
            for account in 0..=ACCOUNTS {
                let all = HistoryQuery::all(AccountId(account));
                compare_pages(history, model, HistoryQuery { limit: 37, ..all });
                for bucket_ms in [HOUR_MS, 24 * HOUR_MS, 5 * HOUR_MS] {
                    let from_ms = T0 + rng.gen_range(0..SPAN_MS);
                    for (from_ms, to_ms) in [(0, u64::MAX), (from_ms, from_ms + SPAN_MS / 3)] {
                        let account = AccountId(account);
                        let query = UsageQuery { account, from_ms, to_ms, bucket_ms };
                        assert_eq!(history.usage(&query).unwrap(), model.usage(&query));
                    }
                }
                let record = model.records.iter().find(|(of, _, _)| of.0 == account);
                if let Some((payer, hold, record)) = record {
                    assert_eq!(history.record(*payer, *hold).unwrap().as_ref(), Some(record));
                    assert_eq!(history.record(AccountId(99), *hold).unwrap(), None);
                }
            }
            for (payer, hold, record) in &model.records {
                assert_eq!(history.record(*payer, *hold).unwrap().as_ref(), Some(record));
            }
            let mut exported = Vec::new();
            let mut after = None;
            loop {
                let page = history.export(|account| account.0 != 1, after, 50).unwrap();
                exported.extend(page.records);
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            let mut expected: Vec<Settled> =
                model.records.iter().filter(|(account, _, _)| account.0 != 1).cloned().collect();
            expected.sort_by_key(|(_, hold, record)| (record.created_ms, hold.0));
            assert_eq!(exported, expected);
            assert_eq!(history.stats().unwrap().records, model.records.len() as u64);
        }

        #[test]
        fn queries_answer_what_the_model_does_before_and_after_retention() {
            let mut rng = StdRng::seed_from_u64(8);
            let history = History::in_memory(HISTORY_RETENTION_DEFAULT).unwrap();
            let mut model = Model { records: Vec::new() };
            let mut holds: Vec<HoldId> = Vec::new();
            for batch in 0..8 {
                let mut settled = Vec::new();
                for _ in 0..300 {
                    let account = rng.gen_range(0..ACCOUNTS);
                    let record = random_record(&mut rng, account);
                    // Half the new holds lead with a creation millisecond (as a gateway's
                    // do: no `holds` row), mostly their record's. Some holds come again (a
                    // replay or a backfill with the same record, or another record, even
                    // one created at the hold's stamp): the first record stays.
                    let (account, hold, record) = if holds.is_empty() || rng.gen_bool(0.9) {
                        let hold = match rng.gen_range(0..4) {
                            0 | 1 => HoldId::time_ordered(record.created_ms, rng.gen()),
                            2 => HoldId::time_ordered(record.created_ms + 1, rng.gen()),
                            _ => HoldId(rng.gen()),
                        };
                        holds.push(hold);
                        model.records.push((AccountId(account), hold, record.clone()));
                        (AccountId(account), hold, record)
                    } else {
                        let hold = holds[rng.gen_range(0..holds.len())];
                        match rng.gen_range(0..3) {
                            0 => {
                                let first = model.records.iter().find(|(_, h, _)| *h == hold);
                                first.cloned().expect("a repeated hold was recorded")
                            }
                            1 => {
                                let created_ms = hold.stamp_ms().min(T0 + SPAN_MS);
                                (AccountId(account), hold, RequestRecord { created_ms, ..record })
                            }
                            _ => (AccountId(account), hold, record),
                        }
                    };
                    settled.push((account, hold, record));
                }
                match batch % 2 {
                    0 => history.insert(settled).unwrap(),
                    _ => {
                        history.queue(None, settled);
                    }
                }
            }
            compare(&history, &model, &mut rng);

            // Records written with their postings held when retention runs: it writes
            // them before it cuts, or an expired record would keep its posting.
            let settled: Vec<Settled> = (0..300)
                .map(|_| {
                    let account = AccountId(rng.gen_range(0..ACCOUNTS));
                    let record = random_record(&mut rng, account.0);
                    (account, HoldId::time_ordered(record.created_ms, rng.gen()), record)
                })
                .collect();
            model.records.extend(settled.iter().cloned());
            history.queue(None, settled);
            history.flush().unwrap();
            assert_eq!(history.inner.writer.lock().unposted.len(), 300);

            // A day and a half past retention: about half the records go, the cut inside
            // a busy second (its rows keep their later postings).
            let retention_ms = HISTORY_RETENTION_DEFAULT.as_millis() as u64;
            let cutoff_ms = T0 + SPAN_MS / 2 + 500;
            while history.expire(cutoff_ms + retention_ms).unwrap() > 0 {}
            let before = model.records.len();
            model.records.retain(|(_, _, record)| record.created_ms >= cutoff_ms);
            let expired = (before - model.records.len()) as u64;
            assert!(expired > 500, "{expired} of {before}");
            assert_eq!(history.stats().unwrap().expired_total, expired);
            compare(&history, &model, &mut rng);
        }
    }

    /// A file of format 1 (this build's predecessor) is migrated when opened: every record,
    /// its lookups and its sums as before, the old tables gone; and the migrated file
    /// opens again as this format.
    #[test]
    fn a_format_1_history_is_migrated_on_open() {
        #[derive(Serialize)]
        struct V1Stored<'a> {
            account: AccountId,
            record: &'a RequestRecord,
        }
        let by_account: TableDefinition<(u64, u64, u128), ()> = TableDefinition::new("by_account");
        let by_time: TableDefinition<(u64, u128), ()> = TableDefinition::new("by_time");
        let disk = PowerLossDisk::default();
        let expected = filled();
        let all = expected.export(|_| true, None, HISTORY_EXPORT_PAGE_MAX).unwrap().records;
        {
            let db = Database::builder().create_with_backend(disk.clone()).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut records = txn.open_table(V1_RECORDS).unwrap();
                let mut by_account = txn.open_table(by_account).unwrap();
                let mut by_time = txn.open_table(by_time).unwrap();
                for (account, hold, record) in &all {
                    let stored = codec::encode(&V1Stored { account: *account, record }).unwrap();
                    records.insert(hold.0, stored.as_slice()).unwrap();
                    by_account.insert((account.0, record.created_ms, hold.0), ()).unwrap();
                    by_time.insert((record.created_ms, hold.0), ()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let migrated =
            History::with_backend(disk.clone(), HISTORY_RETENTION_DEFAULT, Some(INCARNATION))
                .unwrap();
        assert_eq!(migrated.stats().unwrap().records, 101);
        for query in [query(500), HistoryQuery { key: Some(KeyId(1)), ..query(7) }] {
            assert_eq!(migrated.query(&query).unwrap(), expected.query(&query).unwrap());
        }
        let day = UsageQuery { account: ACCOUNT, from_ms: 0, to_ms: u64::MAX, bucket_ms: HOUR_MS };
        assert_eq!(migrated.usage(&day).unwrap(), expected.usage(&day).unwrap());
        assert_eq!(
            migrated.record(ACCOUNT, HoldId(5)).unwrap().unwrap().created_ms,
            T0 + 5 * 60_000
        );
        assert_the_tables_are_this_formats(&migrated);
        drop(migrated);
        let reopened =
            History::with_backend(disk, HISTORY_RETENTION_DEFAULT, Some(INCARNATION)).unwrap();
        assert_eq!(reopened.query(&query(500)).unwrap(), expected.query(&query(500)).unwrap());
    }

    /// A file of format 3 (an index row per record, `by_account_key`) has its index
    /// rewritten as postings when opened: queries answer as before, the old table is gone.
    #[test]
    fn a_format_3_index_is_rewritten_as_postings() {
        let disk = PowerLossDisk::default();
        let expected = filled();
        // Twenty records in two seconds besides one a minute: rows of several postings.
        let busy = (0..20u64).map(|n| {
            let created_ms = T0 + 300 + n * 70;
            (ACCOUNT, HoldId(2_000 + u128::from(n)), record(n % 2, "mock/echo", 200, created_ms, 7))
        });
        expected.insert(busy).unwrap();
        let all = expected.export(|_| true, None, HISTORY_EXPORT_PAGE_MAX).unwrap().records;
        let history =
            History::with_backend(disk.clone(), HISTORY_RETENTION_DEFAULT, Some(INCARNATION))
                .unwrap();
        history.insert(all.clone()).unwrap();
        drop(history);
        {
            let db = Database::builder().create_with_backend(disk.clone()).unwrap();
            let txn = db.begin_write().unwrap();
            txn.delete_table(POSTINGS).unwrap();
            let mut index = txn.open_table(V3_BY_ACCOUNT_KEY).unwrap();
            for (account, hold, record) in &all {
                let key = record.key.map(|key| key.0);
                index.insert((account.0, key, record.created_ms, hold.0), ()).unwrap();
            }
            drop(index);
            txn.open_table(META).unwrap().insert(FORMAT_ROW, 3).unwrap();
            txn.commit().unwrap();
        }
        let reindexed =
            History::with_backend(disk, HISTORY_RETENTION_DEFAULT, Some(INCARNATION)).unwrap();
        let first = query(7);
        let second = HistoryQuery { before: expected.query(&first).unwrap().next, ..query(7) };
        for query in [query(500), first, second, HistoryQuery { key: Some(KeyId(1)), ..query(9) }] {
            assert_eq!(reindexed.query(&query).unwrap(), expected.query(&query).unwrap());
        }
        assert_eq!(reindexed.query(&query(500)).unwrap().records.len(), 120);
        assert_the_tables_are_this_formats(&reindexed);
    }

    /// `history`'s file holds this format's tables, no other, and says it is this format.
    fn assert_the_tables_are_this_formats(history: &History) {
        let txn = history.inner.db.begin_read().unwrap();
        let mut tables: Vec<String> =
            txn.list_tables().unwrap().map(|table| table.name().to_owned()).collect();
        tables.sort();
        assert_eq!(
            tables,
            [
                "holds",
                "meta",
                "posted_through",
                "postings",
                "requests",
                "usage_hourly",
                "usage_recent"
            ]
        );
        let format = txn.open_table(META).unwrap().get(FORMAT_ROW).unwrap().unwrap().value();
        assert_eq!(format, HISTORY_FORMAT_VERSION);
    }

    /// A history written by a later build (another format version) is refused with an
    /// error that names the versions, never read as this one.
    #[test]
    fn an_unknown_format_version_is_refused() {
        let disk = PowerLossDisk::default();
        drop(
            History::with_backend(disk.clone(), HISTORY_RETENTION_DEFAULT, Some(INCARNATION))
                .unwrap(),
        );
        {
            let db = Database::builder().create_with_backend(disk.clone()).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert(FORMAT_ROW, 5).unwrap();
            txn.commit().unwrap();
        }
        let refused = History::with_backend(disk, HISTORY_RETENTION_DEFAULT, Some(INCARNATION))
            .err()
            .unwrap();
        let message = refused.to_string();
        assert!(message.contains("format version 5; this build reads version 4"), "{message}");
    }

    /// A file of format 2 (a `holds` row for every record) is read as it is and marked 3:
    /// its records are found, later ones are written without a row, and retention removes
    /// the old rows with their records.
    #[test]
    fn a_format_2_file_is_read_as_it_is() {
        let disk = PowerLossDisk::default();
        let (old, later) = (HoldId::time_ordered(T0, 7), HoldId::time_ordered(T0 + 1, 8));
        let history =
            History::with_backend(disk.clone(), HISTORY_RETENTION_DEFAULT, Some(INCARNATION))
                .unwrap();
        history.insert([(ACCOUNT, old, record(0, "mock/echo", 200, T0, 5))]).unwrap();
        drop(history);
        {
            let db = Database::builder().create_with_backend(disk.clone()).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(HOLDS).unwrap().insert(old.0, T0).unwrap();
            txn.open_table(META).unwrap().insert(FORMAT_ROW, 2).unwrap();
            txn.commit().unwrap();
        }
        let history =
            History::with_backend(disk, HISTORY_RETENTION_DEFAULT, Some(INCARNATION)).unwrap();
        let rows = |history: &History| {
            let txn = history.inner.db.begin_read().unwrap();
            let holds = txn.open_table(HOLDS).unwrap().len().unwrap();
            (holds, txn.open_table(REQUESTS).unwrap().len().unwrap())
        };
        let txn = history.inner.db.begin_read().unwrap();
        let format = txn.open_table(META).unwrap().get(FORMAT_ROW).unwrap().unwrap().value();
        assert_eq!(format, HISTORY_FORMAT_VERSION);
        drop(txn);
        assert_eq!(history.record(ACCOUNT, old).unwrap().unwrap().cost, PicoUsd(5));
        history.insert([(ACCOUNT, later, record(0, "mock/echo", 200, T0 + 1, 6))]).unwrap();
        history.insert([(ACCOUNT, old, record(0, "mock/echo", 200, T0, 9))]).unwrap();
        assert_eq!(history.record(ACCOUNT, later).unwrap().unwrap().cost, PicoUsd(6));
        assert_eq!(history.record(ACCOUNT, old).unwrap().unwrap().cost, PicoUsd(5));
        assert_eq!(rows(&history), (1, 2));
        let retention_ms = HISTORY_RETENTION_DEFAULT.as_millis() as u64;
        assert_eq!(history.expire(T0 + 2 + retention_ms).unwrap(), 2);
        assert_eq!(rows(&history), (0, 0));
    }
}
