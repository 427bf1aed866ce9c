//! The redb files beside the log (the snapshots, the request history) hand their writes to
//! the disk as they are made, not all at once when they sync.
//!
//! A node's stores share a disk, and on a disk with a volatile write cache each cache
//! flush waits for everything written to the disk before it, whoever wrote it. A snapshot's
//! save writes tens of MB and then syncs. Left in the page cache until that sync, they went
//! to the disk in one burst, and every log sync meanwhile (each commit waits for one)
//! waited for all of it: three replicas at 50,000 lifecycles/s on one disk had their
//! lifecycle p99 at 31–48 ms, against 20–28 ms when the write-back starts every 64 KiB
//! (docs/storage.md, "Snapshots written behind"). So every [`WRITE_BEHIND_BYTES`] written
//! to such a file, its dirty pages are handed to the disk (`sync_file_range` with
//! `SYNC_FILE_RANGE_WRITE`: started, not waited for, no cache flush), as RocksDB's
//! `bytes_per_sync` does. What a commit's durability rests on is unchanged: the file's
//! sync, which now has little left to send.
//!
//! Handed over at once, a large write still reaches the disk as one burst: the snapshot
//! store's writer also sleeps after each step while it saves a snapshot it built, so
//! that those writes come at most at a [`Pace`] ([`crate::SNAPSHOT_WRITE_BYTES_PER_SECOND`];
//! `Durability::Background`). A snapshot received from a leader is not paced (its
//! follower applies nothing until it is saved; it [hurries](Pace::hurry) a paced save it
//! would wait behind), nor is the history (its writer must keep up with the applies).

use redb::backends::FileBackend;
use redb::{BackendError, Builder, Database, DatabaseError, StorageBackend};
use std::fs::{File, OpenOptions};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Bytes written to a file between two hand-overs of its dirty pages to the disk. 16 KiB
/// measured the same as 64; 256 KiB and 1 MiB left more of the tail (docs/storage.md,
/// "Snapshots written behind").
pub const WRITE_BEHIND_BYTES: u64 = 64 * 1024;

/// Opens (or creates) the redb database at `path` as `builder` would (`Builder::create`),
/// its writes handed to the disk every [`WRITE_BEHIND_BYTES`], at `pace` while it is on.
pub(crate) fn create(
    builder: &Builder,
    path: &Path,
    pace: Pace,
) -> Result<Database, DatabaseError> {
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
    // The same open file, for `sync_file_range`: redb's backend does not lend its own.
    let handle = file.try_clone()?;
    let backend =
        WriteBehind { file: FileBackend::new(file)?, handle, written: AtomicU64::new(0), pace };
    builder.create_with_backend(backend)
}

/// How fast a file's writes may reach the disk: as fast as its writer makes them, or,
/// while the pace is on (a redb store turns it on for its `Durability::Background`
/// rounds), at most at a rate, averaged over each 64 KiB handed to the disk (the writer
/// sleeps after each), unless someone is hurrying it ([`crate::KvTree::hurry`]). Clones
/// share the switch and the hurry.
#[derive(Clone, Debug, Default)]
pub struct Pace {
    /// How long the writer sleeps for each step it hands over (zero: unpaced).
    step_pause: Duration,
    on: Arc<AtomicBool>,
    /// Live [`Hurry`] guards: while there is one, the writer does not sleep.
    hurried: Arc<AtomicUsize>,
}

impl Pace {
    /// Never paced.
    pub fn unpaced() -> Pace {
        Pace::default()
    }

    /// At most `rate` bytes a second while on; off at first.
    pub fn bytes_per_second(rate: u64) -> Pace {
        let step_pause = Duration::from_secs_f64(WRITE_BEHIND_BYTES as f64 / rate.max(1) as f64);
        Pace { step_pause, on: Arc::default(), hurried: Arc::default() }
    }

    /// Turns the pace on or off for the writes that follow.
    pub(crate) fn set(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }

    /// Unpaces the writes, the one in progress and those that follow, for as long as the
    /// guard it returns lives: someone is waiting for them to end.
    pub(crate) fn hurry(&self) -> Hurry {
        self.hurried.fetch_add(1, Ordering::Relaxed);
        Hurry { hurried: Arc::clone(&self.hurried) }
    }

    /// How long to sleep after handing a step to the disk.
    fn pause(&self) -> Duration {
        if self.on.load(Ordering::Relaxed) && self.hurried.load(Ordering::Relaxed) == 0 {
            self.step_pause
        } else {
            Duration::ZERO
        }
    }
}

/// A [`Pace`] suspended while this lives ([`crate::KvTree::hurry`]).
#[derive(Debug)]
pub struct Hurry {
    hurried: Arc<AtomicUsize>,
}

impl Drop for Hurry {
    fn drop(&mut self) {
        self.hurried.fetch_sub(1, Ordering::Relaxed);
    }
}

/// redb's own file backend, which starts the write-back of the file's dirty pages every
/// [`WRITE_BEHIND_BYTES`] written.
#[derive(Debug)]
struct WriteBehind {
    file: FileBackend,
    handle: File,
    /// Bytes written through this backend so far.
    written: AtomicU64,
    /// How fast its writes may go, while its store turns the pace on.
    pace: Pace,
}

/// How many multiples of [`WRITE_BEHIND_BYTES`] a write of `bytes` after `before` bytes
/// reaches or passes.
fn steps_crossed(before: u64, bytes: u64) -> u64 {
    before.saturating_add(bytes) / WRITE_BEHIND_BYTES - before / WRITE_BEHIND_BYTES
}

/// Hands `file`'s dirty pages to the disk without waiting for them. Advice only: an error
/// (a file system without it) leaves them to the next sync, as before.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn start_write_back(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: `sync_file_range` reads no memory of ours; the descriptor is `file`'s, open
    // for as long as the borrow. Offset 0 and length 0 name the whole file.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

#[cfg(not(target_os = "linux"))]
fn start_write_back(_file: &File) {}

impl StorageBackend for WriteBehind {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.file.write(offset, data)?;
        let bytes = data.len() as u64;
        let steps = steps_crossed(self.written.fetch_add(bytes, Ordering::Relaxed), bytes);
        if steps > 0 {
            start_write_back(&self.handle);
            // A step at a time: a hurry that comes meanwhile ends the sleeps.
            for _ in 0..steps {
                let pause = self.pace.pause();
                if pause.is_zero() {
                    break;
                }
                std::thread::sleep(pause);
            }
        }
        Ok(())
    }

    fn close(&self) -> std::io::Result<()> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};

    const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

    #[test]
    fn write_back_starts_at_each_step() {
        let step = WRITE_BEHIND_BYTES;
        assert_eq!(steps_crossed(0, 1), 0);
        assert_eq!(steps_crossed(0, step - 1), 0);
        assert_eq!(steps_crossed(0, step), 1);
        assert_eq!(steps_crossed(step - 1, 1), 1);
        assert_eq!(steps_crossed(step, step - 1), 0);
        assert_eq!(steps_crossed(step + 1, 3 * step), 3);
        assert_eq!(steps_crossed(u64::MAX - 1, 5), 0, "the sum saturates instead of overflowing");
    }

    /// Commits 4 MiB to `db`: many steps of write-back while the transaction commits.
    fn write_4_mib(db: &Database, value: &[u8]) {
        let tx = db.begin_write().unwrap();
        {
            let mut table = tx.open_table(TABLE).unwrap();
            for key in 0..1024u64 {
                table.insert(key, value).unwrap();
            }
        }
        tx.commit().unwrap();
    }

    /// What a database over the write-behind file wrote, it reads back after a reopen; and
    /// the file is locked as redb's own backend locks it, so a second open is refused.
    #[test]
    fn a_database_over_it_keeps_what_it_wrote_and_stays_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let value = vec![7u8; 4096];
        {
            let db = create(&Builder::new(), &path, Pace::unpaced()).unwrap();
            assert!(matches!(
                create(&Builder::new(), &path, Pace::unpaced()),
                Err(DatabaseError::DatabaseAlreadyOpen)
            ));
            write_4_mib(&db, &value);
        }
        let db = create(&Builder::new(), &path, Pace::unpaced()).unwrap();
        let tx = db.begin_read().unwrap();
        let table = tx.open_table(TABLE).unwrap();
        assert_eq!(table.len().unwrap(), 1024);
        assert_eq!(table.get(1023).unwrap().unwrap().value(), value.as_slice());
    }

    /// A paced database's writes take at least their bytes' time at its pace while the pace
    /// is on: 4 MiB of values (and redb's pages around them) at 4 MiB/s, a second or more;
    /// off, or on but hurried, they take less than that floor.
    #[test]
    fn a_paced_database_writes_no_faster_than_its_pace_while_it_is_on() {
        let dir = tempfile::tempdir().unwrap();
        let pace = Pace::bytes_per_second(4 << 20);
        let db = create(&Builder::new(), &dir.path().join("db.redb"), pace.clone()).unwrap();
        let timed = |on: bool| {
            pace.set(on);
            let started = std::time::Instant::now();
            write_4_mib(&db, &[7u8; 4096]);
            started.elapsed()
        };
        let floor = Duration::from_millis(900);
        let paced = timed(true);
        assert!(paced >= floor, "4 MiB written in {paced:?}, paced");
        let unpaced = timed(false);
        assert!(unpaced < floor, "4 MiB written in {unpaced:?} unpaced");
        let hurry = pace.hurry();
        let hurried = timed(true);
        assert!(hurried < floor, "4 MiB written in {hurried:?} hurried");
        drop(hurry);
        let paced_again = timed(true);
        assert!(paced_again >= floor, "4 MiB written in {paced_again:?} once the hurry ended");
    }
}
