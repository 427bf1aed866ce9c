//! [`WalStore`]: a node's Raft logs, votes and identity as one append-only log of writes in
//! segment files, with the index of every live key in memory and the values on disk.
//!
//! A round of queued writes (every tree, every group of the node: group commit) becomes
//! one record, written with one `pwrite` and, if any write of it must be durable, one
//! `fdatasync`: redb spent ~9 page writes and ~0.16 ms of CPU on each such commit
//! (docs/storage.md, "A log of its own"). A record is `[payload length u32][crc32
//! u32][payload]`; the payload is the round's writes in order, never empty.
//!
//! Zeros go ahead of the records: a segment is extended by [`ZERO_AHEAD_BYTES`] of zeros
//! at a time, so that most records overwrite bytes the file already has and their
//! `fdatasync` writes data alone, with no size change for ext4 to commit to its journal
//! (0.10 against 0.15 ms per sync here: docs/storage.md, "Zeros ahead of the log"). A
//! record length of zero therefore ends a segment's records.
//!
//! Opening replays every segment in order into the index; a record cut short or failing
//! its checksum at the end of the last segment (a write torn by a crash, never acknowledged
//! as durable) is cut off with whatever follows it, anywhere else it is an error. So a
//! crash keeps a prefix of the writes: every durable one.
//!
//! Space: writes go to the newest segment until it holds [`WAL_SEGMENT_BYTES`], then the
//! next is created. Once the oldest segment's live values (those no later write replaced or
//! removed) are few (the log is purged behind every snapshot, so an old segment soon holds
//! only a vote or an identity), they are written again into the newest, a round's share at
//! a time ([`COMPACT_ROUND_FRACTION`]) so that no round holds its appends for long, and
//! once none is left they are made durable and the oldest file is deleted. Only ever the
//! oldest: a removal recorded in a later segment then never outlives the segment of the
//! value it removed, so replaying what is left gives the same index. The disk holds the
//! live log plus about two segments.
//!
//! Each segment starts with [`WAL_MAGIC`] and a format version; an unknown version is
//! refused with an error naming it. One process at a time: the directory's `LOCK` file is
//! locked while the store is open.

use crate::kv::{Durability, IdleWrite, KvBatch, KvTree, StoreWriter, WriteRequest};
use foldhash::HashMap;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Error, ErrorKind};
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

mod table;

/// A segment is closed once it holds this much, and the next one begins.
const WAL_SEGMENT_BYTES: u64 = 32 * 1024 * 1024;
/// The oldest segment is compacted (its live values written again, the file deleted) once
/// they take at most this fraction of a segment.
const COMPACT_LIVE_FRACTION: u64 = 8;
/// One round moves at most this fraction of a segment of the oldest segment's live values
/// (256 KiB of 32 MiB; at least one value), the rest in the rounds after: every value
/// moved in the round that found them few held that round's appends, 3.6 MB and 37 ms
/// once a segment at 2,000 requests/s (docs/benchmarks.md, "Session 21").
const COMPACT_ROUND_FRACTION: u64 = 128;
/// The first bytes of every segment: a magic and the format's version.
const WAL_MAGIC: &[u8; 7] = b"SRWAL\0\0";
/// Version 2: zeros ahead of the records. Version 1 segments (records to the file's end,
/// empty ones allowed) are still read, never written.
const WAL_VERSION: u8 = 2;
const WAL_VERSION_APPENDED: u8 = 1;
/// How far ahead of its records a segment is zeroed (at most a segment).
const ZERO_AHEAD_BYTES: u64 = 1024 * 1024;
const HEADER_BYTES: u64 = WAL_MAGIC.len() as u64 + 1;
/// Bytes before a record's payload: its length and checksum.
const RECORD_HEAD_BYTES: usize = 8;
const OP_PUT: u8 = 1;
const OP_REMOVE: u8 = 2;
/// Bytes a live value is counted with beyond its key and value: what its record spends on
/// framing, so that many empty values still count.
const OP_OVERHEAD_BYTES: u64 = 16;
/// Most of the record buffer's capacity kept from one round to the next: a larger round
/// allocates its own buffer and frees it, instead of leaving it resident for good
/// (`solrouter dev` held 6.8 MB this way; docs/storage.md, "Session 19"). A compaction's
/// round is such a round: its values alone take [`COMPACT_ROUND_FRACTION`] of a segment,
/// so its buffer grows past this (at 1 MiB, `solrouter dev` kept a compaction's 505-KiB
/// buffer from its first compaction on; docs/storage.md, "Session 31"). A loaded node's
/// ordinary round, an entry of a few hundred commands per group, fits.
const BUF_KEPT_BYTES: usize = (WAL_SEGMENT_BYTES / COMPACT_ROUND_FRACTION) as usize;
/// Zeros written ahead of the records a write at a time, from [`ZEROS`].
const ZEROS_WRITE_BYTES: usize = 64 * 1024;
/// What [`ZERO_AHEAD_BYTES`] are written from: static, so that extending a segment
/// allocates (and touches) no megabyte of its own every megabyte of log.
static ZEROS: [u8; ZEROS_WRITE_BYTES] = [0; ZEROS_WRITE_BYTES];

/// One segment file, shared by the index entries of the values it holds: a read that found
/// a value still reads it after a compaction deleted the file (an open file stays readable).
struct Segment {
    seq: u64,
    file: File,
}

/// Where a live value is.
#[derive(Clone)]
struct Location {
    segment: Arc<Segment>,
    offset: u64,
    len: u32,
}

type Table = table::Table<Location>;

/// Every live key by tree; written only by the commit (and the replay at open).
#[derive(Default)]
struct Index {
    tables: HashMap<Arc<str>, Table>,
}

/// A node's log store; see the module's documentation. Cheap to clone; the writer thread
/// ends, and the directory is unlocked, when the last handle is dropped.
#[derive(Clone)]
pub struct WalStore {
    index: Arc<RwLock<Index>>,
    writer: StoreWriter,
}

/// One named tree of a [`WalStore`].
#[derive(Clone)]
pub struct WalTree {
    store: WalStore,
    table: Arc<str>,
}

/// The committing side (the writer thread's, or an idle write's writer's, one at a time:
/// [`StoreWriter`]): the segments and how much of each is live.
struct Wal {
    dir: PathBuf,
    /// [`WAL_SEGMENT_BYTES`] but in tests.
    segment_bytes: u64,
    index: Arc<RwLock<Index>>,
    /// Oldest first; the last one is written.
    segments: VecDeque<Arc<Segment>>,
    /// Live bytes by segment sequence number.
    live: HashMap<u64, u64>,
    /// Where the next record goes in the last segment.
    end: u64,
    /// The last segment's length: past `end`, zeros.
    zeroed: u64,
    /// Whether the last segment holds writes not yet `fdatasync`ed.
    unsynced: bool,
    /// Set by a failed write or sync: the file's state is unknown, so every later write
    /// fails too (a sync that failed once may have dropped the pages it did not write).
    failed: Option<String>,
    /// The record being built, reused round to round up to [`BUF_KEPT_BYTES`].
    buf: Vec<u8>,
    /// Held while the store is open.
    _lock: File,
}

impl Index {
    /// Puts (or with `None`, removes) `key` of tree `table`, counting live bytes by
    /// segment in `live`. Allocates only for a tree not seen before, a keyed tree's new key
    /// or a run's growth.
    fn put(
        &mut self,
        live: &mut HashMap<u64, u64>,
        table: &str,
        key: &[u8],
        value: Option<Location>,
    ) {
        let weight =
            |location: &Location| key.len() as u64 + u64::from(location.len) + OP_OVERHEAD_BYTES;
        if !self.tables.contains_key(table) {
            self.tables.insert(Arc::from(table), Table::default());
        }
        let tree = self.tables.get_mut(table).expect("inserted above");
        let old = match value {
            Some(location) => {
                *live.get_mut(&location.segment.seq).expect("a known segment") += weight(&location);
                tree.insert(key, location)
            }
            None => tree.remove(key),
        };
        if let Some(old) = old {
            let live = live.get_mut(&old.segment.seq).expect("a known segment");
            *live = live.checked_sub(weight(&old)).expect("live bytes counted in");
        }
    }
}

impl WalStore {
    /// Opens (or creates) the store in directory `dir`, replaying its segments, and starts
    /// its writer thread. Fails with `ErrorKind::WouldBlock` while another handle, in this
    /// process or another, has it open.
    pub fn open(dir: &Path) -> Result<WalStore, Error> {
        WalStore::open_with(dir, IdleWrite::Queued)
    }

    /// [`WalStore::open`], a write that finds the writer idle committed as `idle_write`
    /// says.
    pub fn open_with(dir: &Path, idle_write: IdleWrite) -> Result<WalStore, Error> {
        WalStore::open_sized(dir, WAL_SEGMENT_BYTES, idle_write)
    }

    /// [`WalStore::open_with`] with segments of `segment_bytes` (tests make them small).
    fn open_sized(
        dir: &Path,
        segment_bytes: u64,
        idle_write: IdleWrite,
    ) -> Result<WalStore, Error> {
        std::fs::create_dir_all(dir)?;
        // The directory's own entry, so that a power loss cannot take the whole log away
        // after its first durable write.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)?.sync_all()?;
        }
        let lock =
            OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("LOCK"))?;
        lock.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => {
                Error::new(ErrorKind::WouldBlock, format!("{} is open elsewhere", dir.display()))
            }
            std::fs::TryLockError::Error(e) => e,
        })?;
        let mut wal = Wal::replay(dir, lock, segment_bytes)?;
        let index = Arc::clone(&wal.index);
        let commit = move |round: &mut [WriteRequest]| wal.commit(round);
        let writer = StoreWriter::spawn("wal-writer", idle_write, commit)?;
        Ok(WalStore { index, writer })
    }

    pub fn tree(&self, name: &str) -> WalTree {
        WalTree { store: self.clone(), table: Arc::from(name) }
    }

    fn read<R>(&self, table: &str, f: impl FnOnce(&Table) -> R, empty: R) -> R {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        index.tables.get(table).map_or(empty, f)
    }
}

impl Location {
    fn read(&self) -> Result<Vec<u8>, Error> {
        let mut value = vec![0; self.len as usize];
        self.segment.file.read_exact_at(&mut value, self.offset)?;
        Ok(value)
    }
}

impl KvTree for WalTree {
    type Value = Vec<u8>;
    type Error = Error;

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let found = self.store.read(&self.table, |table| table.get(key).cloned(), None);
        found.map(|location| location.read()).transpose()
    }

    fn last(&self) -> Result<Option<Vec<u8>>, Error> {
        let found = self.store.read(&self.table, |t| t.last().cloned(), None);
        found.map(|location| location.read()).transpose()
    }

    fn range(&self, range: (Bound<&[u8]>, Bound<&[u8]>)) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Error> {
        let found = self.store.read(
            &self.table,
            |table| table.range(range).map(|(k, l)| (k.to_vec(), l.clone())).collect(),
            Vec::new(),
        );
        found.into_iter().map(|(key, location)| Ok((key, location.read()?))).collect()
    }

    /// From the index alone: no value is read.
    fn keys(
        &self,
        range: (Bound<&[u8]>, Bound<&[u8]>),
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let keys =
            |table: &Table| table.range(range).take(limit).map(|(k, _)| k.to_vec()).collect();
        Ok(self.store.read(&self.table, keys, Vec::new()))
    }

    async fn write(&self, batch: KvBatch, durability: Durability) -> Result<(), Error> {
        let written = self.store.writer.write(&self.table, batch, durability).await;
        written.map_err(Error::other)
    }
}

/// A write of a record being built: its tree, key, and its value's place in the record.
struct Pending<'a> {
    table: &'a str,
    key: &'a [u8],
    value: Option<(u64, u32)>,
}

impl Wal {
    /// Reads every segment of `dir` in order into the index.
    fn replay(dir: &Path, lock: File, segment_bytes: u64) -> Result<Wal, Error> {
        let mut seqs = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name.strip_prefix("wal-").and_then(|n| n.strip_suffix(".log")) {
                seqs.push(seq.parse::<u64>().map_err(|_| corrupt(dir, &format!("file {name}")))?);
            }
        }
        seqs.sort_unstable();
        let mut wal = Wal {
            dir: dir.to_owned(),
            segment_bytes,
            index: Arc::default(),
            segments: VecDeque::new(),
            live: HashMap::default(),
            end: 0,
            zeroed: 0,
            unsynced: false,
            failed: None,
            buf: Vec::new(),
            _lock: lock,
        };
        let mut writable = false;
        for (n, &seq) in seqs.iter().enumerate() {
            let last = n + 1 == seqs.len();
            writable = wal.replay_segment(seq, last)?;
        }
        if !writable {
            let next = wal.segments.back().map_or(1, |segment| segment.seq + 1);
            wal.create_segment(next)?;
        }
        Ok(wal)
    }

    fn segment_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("wal-{seq:020}.log"))
    }

    /// Reads segment `seq` into the index; returns whether writing goes on in it: the last
    /// segment, of this version (not one whose records run to the file's end, nor one a
    /// crash left without a header).
    fn replay_segment(&mut self, seq: u64, last: bool) -> Result<bool, Error> {
        let path = self.segment_path(seq);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let bytes = std::fs::read(&path)?;
        let what = |detail: &str| corrupt(&path, detail);
        if last && bytes.len() < HEADER_BYTES as usize {
            // Created, but a crash came before its header was synced: it holds nothing.
            std::fs::remove_file(&path)?;
            return Ok(false);
        }
        if bytes.len() < HEADER_BYTES as usize || &bytes[..WAL_MAGIC.len()] != WAL_MAGIC {
            return Err(what("not a log segment (no magic)"));
        }
        let version = bytes[WAL_MAGIC.len()];
        if version != WAL_VERSION && version != WAL_VERSION_APPENDED {
            return Err(what(&format!(
                "unsupported log segment format version {version}; this build reads versions \
                 {WAL_VERSION_APPENDED} and {WAL_VERSION}"
            )));
        }
        let segment = Arc::new(Segment { seq, file });
        self.live.insert(seq, 0);
        self.segments.push_back(Arc::clone(&segment));
        let zeros_end = version != WAL_VERSION_APPENDED;
        let mut at = HEADER_BYTES as usize;
        while at < bytes.len() {
            if zeros_end && bytes[at..].iter().take(4).all(|&b| b == 0) {
                break;
            }
            match record_at(&bytes, at) {
                Some(payload) => {
                    let base = (at + RECORD_HEAD_BYTES) as u64;
                    self.replay_record(&segment, base, payload).map_err(|d| what(&d))?;
                    at += RECORD_HEAD_BYTES + payload.len();
                }
                None if last => {
                    // A torn write at the end: never acknowledged as durable.
                    tracing::warn!(path = %path.display(), at, "log segment: cutting off a torn record");
                    break;
                }
                None => return Err(what(&format!("a damaged record at byte {at}"))),
            }
        }
        if last && bytes.len() > at {
            // Whatever follows the last record goes (a torn one, or bytes of one a crash
            // left behind zeros): the records written next meet only zeros.
            segment.file.set_len(at as u64)?;
            segment.file.sync_all()?;
        }
        self.end = at as u64;
        self.zeroed = self.end;
        Ok(last && zeros_end)
    }

    fn replay_record(
        &mut self,
        segment: &Arc<Segment>,
        base: u64,
        payload: &[u8],
    ) -> Result<(), String> {
        let mut ops = OpReader { bytes: payload, at: 0 };
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        while ops.at < payload.len() {
            let (table, key, value) = ops.next().ok_or("a malformed write")?;
            let value = value.map(|(at, len)| Location {
                segment: Arc::clone(segment),
                offset: base + at as u64,
                len,
            });
            index.put(&mut self.live, table, key, value);
        }
        Ok(())
    }

    fn create_segment(&mut self, seq: u64) -> Result<(), Error> {
        let path = self.segment_path(seq);
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        let mut header = WAL_MAGIC.to_vec();
        header.push(WAL_VERSION);
        file.write_all_at(&header, 0)?;
        file.sync_all()?;
        File::open(&self.dir)?.sync_all()?;
        self.live.insert(seq, 0);
        self.segments.push_back(Arc::new(Segment { seq, file }));
        self.end = HEADER_BYTES;
        self.zeroed = HEADER_BYTES;
        self.unsynced = false;
        Ok(())
    }

    fn current(&self) -> &Arc<Segment> {
        self.segments.back().expect("a store has a segment")
    }

    /// Commits one round: see [`StoreWriter::spawn`].
    fn commit(&mut self, round: &[WriteRequest]) -> Result<(), String> {
        // `WalTree` makes its writes before it queues them (`KvTree::write_made`'s default).
        assert!(round.iter().all(|r| r.made.is_none()), "a log write made during its commit");
        if let Some(failed) = &self.failed {
            return Err(failed.clone());
        }
        let durable = round.iter().any(|r| r.durability.is_synced());
        let writes = round
            .iter()
            .flat_map(|r| r.batch.iter().map(|(k, v)| (&*r.table, k.as_slice(), v.as_deref())));
        let result = self.append(writes, durable).and_then(|()| self.compact());
        result.map_err(|e| {
            let message = format!("the log in {}: {e}", self.dir.display());
            self.failed = Some(message.clone());
            message
        })
    }

    /// Appends one record of `writes`, synced if `durable`, and indexes it.
    fn append<'a>(
        &mut self,
        writes: impl Iterator<Item = (&'a str, &'a [u8], Option<&'a [u8]>)>,
        durable: bool,
    ) -> Result<(), Error> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.extend_from_slice(&[0; RECORD_HEAD_BYTES]);
        let mut pending = Vec::new();
        for (table, key, value) in writes {
            let value = encode_op(&mut buf, table, key, value);
            pending.push(Pending { table, key, value });
        }
        if pending.is_empty() {
            // An empty record would read as the end of the segment.
            self.buf = buf;
            return if durable { self.sync() } else { Ok(()) };
        }
        let payload_len = u32::try_from(buf.len() - RECORD_HEAD_BYTES)
            .map_err(|_| Error::other("a round of writes over 4 GiB"))?;
        let crc = crc32fast::hash(&buf[RECORD_HEAD_BYTES..]);
        buf[..4].copy_from_slice(&payload_len.to_le_bytes());
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        if self.end > HEADER_BYTES && self.end + buf.len() as u64 > self.segment_bytes {
            self.roll()?;
        }
        let at = self.end;
        let record_end = at + buf.len() as u64;
        assert!(self.end <= self.zeroed, "records end before the zeros");
        if record_end > self.zeroed {
            let zeroed = record_end + ZERO_AHEAD_BYTES.min(self.segment_bytes);
            let mut at = record_end;
            while at < zeroed {
                let len = (zeroed - at).min(ZEROS_WRITE_BYTES as u64);
                self.current().file.write_all_at(&ZEROS[..len as usize], at)?;
                at += len;
            }
            self.zeroed = zeroed;
        }
        self.current().file.write_all_at(&buf, at)?;
        self.unsynced = true;
        if durable {
            self.sync()?;
        }
        self.end = record_end;
        let segment = Arc::clone(self.current());
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        for write in pending {
            let value = write.value.map(|(offset, len)| Location {
                segment: Arc::clone(&segment),
                offset: at + offset,
                len,
            });
            index.put(&mut self.live, write.table, write.key, value);
        }
        drop(index);
        if buf.capacity() <= BUF_KEPT_BYTES {
            self.buf = buf;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), Error> {
        if self.unsynced {
            self.current().file.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Closes the last segment (synced, so no later durable write can outlive an earlier
    /// write of it) and begins the next.
    fn roll(&mut self) -> Result<(), Error> {
        self.sync()?;
        let next = self.current().seq + 1;
        self.create_segment(next)
    }

    /// Once the oldest segment's live values are few, writes them again, a round's share
    /// ([`COMPACT_ROUND_FRACTION`]) at a time, and deletes it when none is left.
    fn compact(&mut self) -> Result<(), Error> {
        while self.segments.len() > 1 {
            let oldest = Arc::clone(&self.segments[0]);
            if self.live[&oldest.seq] > self.segment_bytes / COMPACT_LIVE_FRACTION {
                return Ok(());
            }
            let round_bytes = self.segment_bytes / COMPACT_ROUND_FRACTION;
            let moved = {
                let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
                let in_oldest = index.tables.iter().flat_map(|(table, tree)| {
                    let here = tree.iter().filter(|(_, l)| l.segment.seq == oldest.seq);
                    here.map(move |(key, location)| (table, key, location))
                });
                let (mut moved, mut bytes) = (Vec::new(), 0);
                for (table, key, location) in in_oldest {
                    if bytes >= round_bytes {
                        break;
                    }
                    bytes += u64::from(location.len);
                    moved.push((Arc::clone(table), key.to_vec(), location.read()?));
                }
                moved
            };
            assert!(
                !moved.is_empty() || self.live[&oldest.seq] == 0,
                "live bytes counted in segment {} with no value in it",
                oldest.seq
            );
            let writes =
                moved.iter().map(|(table, key, value)| (&**table, &key[..], Some(&value[..])));
            self.append(writes, false)?;
            if self.live[&oldest.seq] > 0 {
                return Ok(());
            }
            // Every move durable, and the older writes with them: nothing the deleted file
            // held may be needed after a crash.
            self.sync()?;
            std::fs::remove_file(self.segment_path(oldest.seq))?;
            File::open(&self.dir)?.sync_all()?;
            self.live.remove(&oldest.seq);
            self.segments.pop_front();
        }
        Ok(())
    }
}

/// Appends one write to `buf`; returns where its value starts (from the record's start)
/// and its length.
fn encode_op(
    buf: &mut Vec<u8>,
    table: &str,
    key: &[u8],
    value: Option<&[u8]>,
) -> Option<(u64, u32)> {
    let table_len = u16::try_from(table.len()).expect("a tree name under 64 KiB");
    let key_len = u32::try_from(key.len()).expect("a key under 4 GiB");
    buf.push(if value.is_some() { OP_PUT } else { OP_REMOVE });
    buf.extend_from_slice(&table_len.to_le_bytes());
    buf.extend_from_slice(table.as_bytes());
    buf.extend_from_slice(&key_len.to_le_bytes());
    buf.extend_from_slice(key);
    value.map(|value| {
        let len = u32::try_from(value.len()).expect("a value under 4 GiB");
        buf.extend_from_slice(&len.to_le_bytes());
        let at = buf.len() as u64;
        buf.extend_from_slice(value);
        (at, len)
    })
}

/// The payload of the record at `at`, if it is whole and its checksum holds.
fn record_at(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let head = bytes.get(at..at + RECORD_HEAD_BYTES)?;
    let len = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(head[4..].try_into().ok()?);
    let payload = bytes.get(at + RECORD_HEAD_BYTES..at + RECORD_HEAD_BYTES + len)?;
    (crc32fast::hash(payload) == crc).then_some(payload)
}

/// A write read back: its tree, key, and for a put its value's offset and length.
type Op<'a> = (&'a str, &'a [u8], Option<(usize, u32)>);

/// Reads a record's writes in order.
struct OpReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> OpReader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let taken = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(taken)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    /// A write: its tree, key, and, for a put, where its value is in the payload.
    fn next(&mut self) -> Option<Op<'a>> {
        let op = self.take(1)?[0];
        let table_len = u16::from_le_bytes(self.take(2)?.try_into().ok()?);
        let table = std::str::from_utf8(self.take(usize::from(table_len))?).ok()?;
        let key_len = self.u32()?;
        let key = self.take(key_len as usize)?;
        let value = match op {
            OP_PUT => {
                let len = self.u32()?;
                let at = self.at;
                self.take(len as usize)?;
                Some((at, len))
            }
            OP_REMOVE => None,
            _ => return None,
        };
        Some((table, key, value))
    }
}

fn corrupt(path: &Path, detail: &str) -> Error {
    Error::new(ErrorKind::InvalidData, format!("{}: {detail}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &[u8], value: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
        (key.to_vec(), Some(value.to_vec()))
    }

    fn all(tree: &WalTree) -> Vec<(Vec<u8>, Vec<u8>)> {
        tree.range((Bound::Unbounded, Bound::Unbounded)).unwrap()
    }

    /// Opens `dir` once the previous handle's writer thread has let go of it.
    async fn reopen(dir: &Path, segment_bytes: u64) -> WalStore {
        for _ in 0..200 {
            match WalStore::open_sized(dir, segment_bytes, IdleWrite::Queued) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                opened => return opened.unwrap(),
            }
        }
        panic!("{} stayed locked", dir.display());
    }

    /// Where each record of a segment's bytes is, up to the zeros that end them.
    fn records(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
        let mut at = HEADER_BYTES as usize;
        let mut found = Vec::new();
        while let Some(payload) = record_at(bytes, at).filter(|p| !p.is_empty()) {
            found.push(at..at + RECORD_HEAD_BYTES + payload.len());
            at = found.last().unwrap().end;
        }
        found
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        files.sort();
        files
    }

    /// A round as large as a compaction's (values of a [`COMPACT_ROUND_FRACTION`] of a
    /// segment) is written whole, and its buffer is not kept for the next round; an
    /// ordinary round's is.
    #[test]
    fn a_large_round_leaves_no_large_buffer_behind() {
        let dir = tempfile::tempdir().unwrap();
        let lock = File::create(dir.path().join("LOCK")).unwrap();
        let mut wal = Wal::replay(dir.path(), lock, WAL_SEGMENT_BYTES).unwrap();
        let large = vec![7; (WAL_SEGMENT_BYTES / COMPACT_ROUND_FRACTION) as usize];
        wal.append([("0/log", &b"1"[..], Some(&large[..]))].into_iter(), true).unwrap();
        assert!(wal.buf.capacity() < large.len(), "{} bytes kept", wal.buf.capacity());
        wal.append([("0/log", &b"2"[..], Some(&b"small"[..]))].into_iter(), true).unwrap();
        assert!(wal.buf.capacity() > 0, "an ordinary round's buffer is reused");
        let index = wal.index.read().unwrap();
        let read = |key: &[u8]| index.tables["0/log"].get(key).unwrap().read().unwrap();
        assert_eq!((read(b"1"), read(b"2")), (large.clone(), b"small".to_vec()));
    }

    /// Puts, replacements and removes of several trees read back alike before and after a
    /// reopen, with zeros ahead of the records in the file; a second open while the store is
    /// open is refused.
    #[tokio::test]
    async fn writes_read_back_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = WalStore::open(dir.path()).unwrap();
        let (log, meta) = (store.tree("0/log"), store.tree("0/meta"));
        log.write(vec![put(b"1", b"a"), put(b"2", b"b"), put(b"3", b"c")], Durability::Durable)
            .await
            .unwrap();
        // Nothing to write: no record (an empty one would end the segment's records).
        log.write(vec![], Durability::Durable).await.unwrap();
        meta.write(vec![put(b"vote", b"v1")], Durability::Deferred).await.unwrap();
        log.write(vec![(b"1".to_vec(), None), put(b"2", b"B")], Durability::Volatile)
            .await
            .unwrap();
        meta.write(vec![put(b"vote", b"v2"), put(b"empty", b"")], Durability::Durable)
            .await
            .unwrap();
        let expected = |log: &WalTree, meta: &WalTree| {
            assert_eq!(
                all(log),
                vec![(b"2".to_vec(), b"B".to_vec()), (b"3".to_vec(), b"c".to_vec())]
            );
            assert_eq!(log.last().unwrap().as_deref(), Some(&b"c"[..]));
            assert_eq!(log.get(b"1").unwrap(), None);
            assert_eq!(meta.get(b"vote").unwrap().as_deref(), Some(&b"v2"[..]));
            assert_eq!(meta.get(b"empty").unwrap().as_deref(), Some(&b""[..]));
            let from_3 = log.range((Bound::Included(&b"3"[..]), Bound::Unbounded)).unwrap();
            assert_eq!(from_3.len(), 1);
        };
        expected(&log, &meta);
        assert_eq!(store.tree("other").last().unwrap(), None);
        let file = std::fs::read(&segments(dir.path())[0]).unwrap();
        let written = records(&file);
        assert_eq!(file.len(), written[0].end + ZERO_AHEAD_BYTES as usize, "zeroed ahead once");
        assert!(file[written.last().unwrap().end..].iter().all(|&b| b == 0));
        let again = WalStore::open(dir.path()).err().expect("a second open is refused");
        assert_eq!(again.kind(), ErrorKind::WouldBlock);
        drop((store, log, meta));

        let store = reopen(dir.path(), WAL_SEGMENT_BYTES).await;
        expected(&store.tree("0/log"), &store.tree("0/meta"));
    }

    /// A crash in the middle of a write leaves a torn record at the end of the last segment:
    /// reopening cuts it off, keeps every write before it, and writes on after it. The same
    /// damage in an older segment is an error, and so is a version this build does not read.
    #[tokio::test]
    async fn a_torn_tail_is_cut_off_and_other_damage_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = WalStore::open_sized(dir.path(), 256, IdleWrite::Queued).unwrap();
        let log = store.tree("0/log");
        for n in 0u8..20 {
            log.write(vec![put(&[n], &[n; 40])], Durability::Durable).await.unwrap();
        }
        drop((store, log));
        let files = segments(dir.path());
        assert!(files.len() >= 3, "{files:?}");
        let last = files.last().unwrap();
        let end = records(&std::fs::read(last).unwrap()).last().unwrap().end;
        let cut = OpenOptions::new().write(true).open(last).unwrap();
        cut.set_len(end as u64 - 5).unwrap();

        let store = reopen(dir.path(), 256).await;
        let log = store.tree("0/log");
        let kept = all(&log);
        assert_eq!(kept.len(), 19, "every write but the torn one");
        assert!(kept.iter().enumerate().all(|(n, (k, v))| k == &[n as u8] && v == &[n as u8; 40]));
        log.write(vec![put(b"after", b"x")], Durability::Durable).await.unwrap();
        drop((store, log));
        let store = reopen(dir.path(), 256).await;
        assert_eq!(store.tree("0/log").get(b"after").unwrap().as_deref(), Some(&b"x"[..]));
        drop(store);

        let first = &segments(dir.path())[0];
        let bytes = std::fs::read(first).unwrap();
        let mut damaged = bytes.clone();
        damaged[records(&bytes).last().unwrap().end - 1] ^= 1;
        std::fs::write(first, &damaged).unwrap();
        let error = reopen_error(dir.path()).await;
        assert!(error.contains("a damaged record"), "{error}");

        let mut future = bytes.clone();
        future[WAL_MAGIC.len()] = 9;
        std::fs::write(first, &future).unwrap();
        let error = reopen_error(dir.path()).await;
        assert!(error.contains("unsupported log segment format version 9"), "{error}");
        std::fs::write(first, &bytes).unwrap();
        reopen(dir.path(), 256).await;
    }

    /// A version 1 segment (records to the file's end, empty ones among them, as an older
    /// build wrote them) reads back whole; writing goes on in a new segment, into which the
    /// old one's values are compacted.
    #[tokio::test]
    async fn a_version_1_segment_is_read_and_not_written_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = WalStore::open(dir.path()).unwrap();
        let log = store.tree("0/log");
        log.write(vec![put(b"1", b"a")], Durability::Durable).await.unwrap();
        log.write(vec![put(b"2", b"b")], Durability::Durable).await.unwrap();
        drop((store, log));
        let path = &segments(dir.path())[0];
        let bytes = std::fs::read(path).unwrap();
        let [first, second] = &records(&bytes)[..] else { panic!("two records") };
        let mut old = bytes[..first.end].to_vec();
        old[WAL_MAGIC.len()] = WAL_VERSION_APPENDED;
        old.extend_from_slice(&[0; RECORD_HEAD_BYTES]);
        old.extend_from_slice(&bytes[second.clone()]);
        std::fs::write(path, &old).unwrap();

        let store = reopen(dir.path(), WAL_SEGMENT_BYTES).await;
        let log = store.tree("0/log");
        assert_eq!(all(&log).len(), 2, "the records after an empty one too");
        log.write(vec![put(b"3", b"c")], Durability::Durable).await.unwrap();
        drop((store, log));
        // The old segment's values were written again into the new one, and it went.
        let [new] = &segments(dir.path())[..] else { panic!("one segment") };
        assert_ne!(new, path);
        assert_eq!(std::fs::read(new).unwrap()[WAL_MAGIC.len()], WAL_VERSION);
        let store = reopen(dir.path(), WAL_SEGMENT_BYTES).await;
        assert_eq!(all(&store.tree("0/log")).len(), 3);
    }

    async fn reopen_error(dir: &Path) -> String {
        for _ in 0..200 {
            match WalStore::open_sized(dir, 256, IdleWrite::Queued) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(e) => return e.to_string(),
                Ok(_) => panic!("a damaged store opened"),
            }
        }
        panic!("{} stayed locked", dir.display());
    }

    /// A log written and purged as Raft does (entries appended, the oldest removed, a vote
    /// and an identity written once) keeps a bounded number of segments: old ones are
    /// compacted, their few live values written again. Reopened, it reads the same. Its
    /// index is a run throughout (no key stored per entry), the vote's tree keyed. Its
    /// writes are committed on the test's thread, as `solrouter dev`'s are: compactions too.
    #[tokio::test]
    async fn purged_segments_are_deleted_and_live_values_kept() {
        const SEGMENT: u64 = 1024;
        let dir = tempfile::tempdir().unwrap();
        let store =
            WalStore::open_sized(dir.path(), SEGMENT, IdleWrite::CommittedByWriter).unwrap();
        let (log, node) = (store.tree("0/log"), store.tree("node"));
        // Two live values in the first segment, each more than a round moves
        // (`COMPACT_ROUND_FRACTION`), together few enough to be moved (`COMPACT_LIVE_FRACTION`).
        let (vote, identity) = ([1; 40], [2; 40]);
        let weight = |key: &[u8]| key.len() as u64 + 40 + OP_OVERHEAD_BYTES;
        assert!(weight(b"identity") + weight(b"vote") <= SEGMENT / COMPACT_LIVE_FRACTION);
        const { assert!(40 > SEGMENT / COMPACT_ROUND_FRACTION) };
        node.write(vec![put(b"identity", &identity), put(b"vote", &vote)], Durability::Durable)
            .await
            .unwrap();
        let mut most_segments = 0;
        for n in 0u64..2_000 {
            let mut batch = vec![put(&n.to_be_bytes(), &[7; 50])];
            if let Some(old) = n.checked_sub(8) {
                batch.push((old.to_be_bytes().to_vec(), None));
            }
            log.write(batch, Durability::Durable).await.unwrap();
            most_segments = most_segments.max(segments(dir.path()).len());
        }
        assert!(most_segments <= 4, "{most_segments} segments");
        let expected: Vec<Vec<u8>> = (1_992u64..2_000).map(|n| n.to_be_bytes().to_vec()).collect();
        let keys = |log: &WalTree| all(log).into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(keys(&log), expected);
        let is_run = |store: &WalStore, tree: &str| {
            matches!(store.index.read().unwrap().tables[tree], Table::Run { .. })
        };
        assert!(is_run(&store, "0/log") && !is_run(&store, "node"));
        drop((store, log, node));

        let store = reopen(dir.path(), SEGMENT).await;
        assert_eq!(keys(&store.tree("0/log")), expected);
        assert!(is_run(&store, "0/log") && !is_run(&store, "node"));
        let node = store.tree("node");
        assert_eq!(node.get(b"identity").unwrap().as_deref(), Some(&identity[..]));
        assert_eq!(node.get(b"vote").unwrap().as_deref(), Some(&vote[..]));
    }

    /// A compaction moves a round's share of the oldest segment's live values at a time
    /// (here one value a round) and deletes the segment only once none is left: moved all
    /// at once, 3.6 MB held one round's appends for 37 ms (docs/benchmarks.md, "Session 21").
    #[test]
    fn a_compaction_moves_a_rounds_share_at_a_time() {
        const SEGMENT: u64 = 1024;
        let dir = tempfile::tempdir().unwrap();
        let lock = File::create(dir.path().join("LOCK")).unwrap();
        let mut wal = Wal::replay(dir.path(), lock, SEGMENT).unwrap();
        let value = [9; 40];
        const { assert!(40 > SEGMENT / COMPACT_ROUND_FRACTION) };
        let keys: [&[u8]; 2] = [b"a", b"b"];
        wal.append(keys.iter().map(|key| ("node", *key, Some(&value[..]))), true).unwrap();
        let mut n = 0u64;
        while wal.segments.len() < 2 {
            let key = n.to_be_bytes();
            wal.append([("log", &key[..], Some(&[7; 50][..]))].into_iter(), true).unwrap();
            wal.append([("log", &key[..], None)].into_iter(), true).unwrap();
            n += 1;
        }
        let first = wal.segments[0].seq;
        assert!(wal.live[&first] <= SEGMENT / COMPACT_LIVE_FRACTION, "few enough to move");
        let live_before = wal.live[&first];
        wal.compact().unwrap();
        assert_eq!(wal.segments[0].seq, first, "deleted with a value still in it");
        assert!(wal.live[&first] > 0 && wal.live[&first] < live_before, "one value moved");
        wal.compact().unwrap();
        assert_ne!(wal.segments[0].seq, first, "not deleted once empty");
        drop(wal);

        let lock = File::create(dir.path().join("LOCK")).unwrap();
        let wal = Wal::replay(dir.path(), lock, SEGMENT).unwrap();
        let index = wal.index.read().unwrap();
        for key in keys {
            let location = index.tables["node"].get(key).unwrap();
            assert_eq!(location.read().unwrap(), value);
        }
    }
}
