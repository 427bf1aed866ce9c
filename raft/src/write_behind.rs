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

use redb::backends::FileBackend;
use redb::{BackendError, Builder, Database, DatabaseError, StorageBackend};
use std::fs::{File, OpenOptions};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes written to a file between two hand-overs of its dirty pages to the disk. 16 KiB
/// measured the same as 64; 256 KiB and 1 MiB left more of the tail (docs/storage.md,
/// "Snapshots written behind").
pub const WRITE_BEHIND_BYTES: u64 = 64 * 1024;

/// Opens (or creates) the redb database at `path` as `builder` would (`Builder::create`),
/// its writes handed to the disk every [`WRITE_BEHIND_BYTES`].
pub(crate) fn create(builder: &Builder, path: &Path) -> Result<Database, DatabaseError> {
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
    // The same open file, for `sync_file_range`: redb's backend does not lend its own.
    let handle = file.try_clone()?;
    let backend = WriteBehind { file: FileBackend::new(file)?, handle, written: AtomicU64::new(0) };
    builder.create_with_backend(backend)
}

/// redb's own file backend, which starts the write-back of the file's dirty pages every
/// [`WRITE_BEHIND_BYTES`] written.
#[derive(Debug)]
struct WriteBehind {
    file: FileBackend,
    handle: File,
    /// Bytes written through this backend so far.
    written: AtomicU64,
}

/// Whether a write of `bytes` after `before` bytes reaches or passes a multiple of
/// [`WRITE_BEHIND_BYTES`].
fn crosses_step(before: u64, bytes: u64) -> bool {
    before / WRITE_BEHIND_BYTES != before.saturating_add(bytes) / WRITE_BEHIND_BYTES
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
        if crosses_step(self.written.fetch_add(bytes, Ordering::Relaxed), bytes) {
            start_write_back(&self.handle);
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
        assert!(!crosses_step(0, 1));
        assert!(!crosses_step(0, step - 1));
        assert!(crosses_step(0, step));
        assert!(crosses_step(step - 1, 1));
        assert!(!crosses_step(step, step - 1));
        assert!(crosses_step(step + 1, 3 * step));
        assert!(!crosses_step(u64::MAX - 1, 5), "the sum saturates instead of overflowing");
    }

    /// What a database over the write-behind file wrote, it reads back after a reopen; and
    /// the file is locked as redb's own backend locks it, so a second open is refused.
    #[test]
    fn a_database_over_it_keeps_what_it_wrote_and_stays_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let value = vec![7u8; 4096];
        {
            let db = create(&Builder::new(), &path).unwrap();
            assert!(matches!(
                create(&Builder::new(), &path),
                Err(DatabaseError::DatabaseAlreadyOpen)
            ));
            let tx = db.begin_write().unwrap();
            {
                let mut table = tx.open_table(TABLE).unwrap();
                // 4 MiB: many steps of write-back while the transaction commits.
                for key in 0..1024u64 {
                    table.insert(key, value.as_slice()).unwrap();
                }
            }
            tx.commit().unwrap();
        }
        let db = create(&Builder::new(), &path).unwrap();
        let tx = db.begin_read().unwrap();
        let table = tx.open_table(TABLE).unwrap();
        assert_eq!(table.len().unwrap(), 1024);
        assert_eq!(table.get(1023).unwrap().unwrap().value(), value.as_slice());
    }
}
