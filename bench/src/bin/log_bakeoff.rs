//! Log store bake-off (`docs/storage.md`, "Choosing the log store"): drives one storage
//! engine the way a ledger node drives its Raft log, through the same `KvTree` interface the
//! node's `LogStore` and `StateMachine` use, and prints throughput, append latency, disk
//! use after purges, bytes the process wrote (`/proc/self/io`) and RSS. One engine per process, so RSS and `strace -c` counts are the
//! engine's own.
//!
//! Each of `--appenders` Raft groups has a task that appends `--entries-per-append` entries
//! of `--entry-bytes` and waits until they are on stable storage (what openraft waits for
//! before it counts an entry persisted), as fast as it can, then saves the committed index
//! as `--committed` says (`LogStore::save_committed` writes it deferred). Meanwhile one task saves a
//! vote durably every `--vote-every-ms` (groups in turn) and one saves a snapshot of
//! `--snapshot-bytes` durably every `--snapshot-every-ms` (groups in turn), then purges
//! that group's log up to `--entries-kept` entries behind its end. A watchdog ends the run
//! with exit code 2 if no append completes for `--stall-s` (a deadlock, or a disk gone).
//!
//! `cargo run --release -p solrouter-bench --bin log_bakeoff -- --engine redb`
//! Sync calls: run it under `strace -f -c -e trace=fsync,fdatasync,sync_file_range`.

use clap::{Parser, ValueEnum};
use solrouter_raft::{Durability, KvBatch, KvTree, Pace, RedbStore, WalStore, REDB_CACHE_BYTES};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: f64 = 1024.0 * 1024.0;
/// What each engine may cache, the same for all (sled's default is 1 GiB, redb's too).
const CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// How often the watchdog looks at the append counter.
const WATCHDOG_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Engine {
    /// sled 0.34: one tree per store, `apply_batch` then `flush_async` (the baseline).
    Sled,
    /// The baseline plus `fdatasync` of sled's `db` file after each durable write: the
    /// smallest change that would make sled's appends durable (`docs/durability.md`).
    SledFdatasync,
    /// redb 4 through `RedbStore`: one writer task, queued writes share a transaction.
    Redb,
    /// redb 4, one transaction per write (`begin_write` on a blocking thread): what redb
    /// costs without the writer task's group commit.
    RedbPerWrite,
    /// fjall 2: one partition per store, a write batch then `persist(SyncData)`.
    Fjall,
    /// `WalStore`, the log store of our own: one writer thread, each round of queued
    /// writes one record in an append-only segment file, one `fdatasync`.
    Wal,
}

/// How the appenders save the committed index after each append.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Committed {
    /// Not at all.
    None,
    /// A volatile write of its own, waited for (the node until 2026-11-30).
    Volatile,
    /// A deferred write, committed with the next append (the node now).
    Deferred,
}

impl Committed {
    fn durability(self) -> Option<Durability> {
        match self {
            Committed::None => None,
            Committed::Volatile => Some(Durability::Volatile),
            Committed::Deferred => Some(Durability::Deferred),
        }
    }
}

#[derive(Parser, Debug)]
#[command(about = "Bake-off of Raft log stores: group-commit throughput, syncs, space, RSS")]
struct Args {
    #[arg(long, value_enum)]
    engine: Engine,
    /// Concurrent appenders, one Raft group each.
    #[arg(long, default_value_t = 1)]
    appenders: u32,
    #[arg(long, default_value_t = 2048)]
    entry_bytes: usize,
    #[arg(long, default_value_t = 1)]
    entries_per_append: u64,
    #[arg(long, value_enum, default_value_t = Committed::Deferred)]
    committed: Committed,
    #[arg(long, default_value_t = 20)]
    duration_s: u64,
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    snapshot_bytes: usize,
    #[arg(long, default_value_t = 1000)]
    snapshot_every_ms: u64,
    #[arg(long, default_value_t = 100)]
    vote_every_ms: u64,
    /// Entries left in a group's log behind its end when it is purged.
    #[arg(long, default_value_t = 1024)]
    entries_kept: u64,
    #[arg(long, default_value_t = 10)]
    stall_s: u64,
    /// Parent of the data directory (removed at the end).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
}

/// One group's trees, as `LogStore` and `StateMachine` hold them.
struct GroupTrees<K> {
    log: K,
    meta: K,
    snapshot: K,
}

#[derive(Default)]
struct Counters {
    n_appends: AtomicU64,
    n_votes: AtomicU64,
    n_snapshots: AtomicU64,
    n_purges: AtomicU64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let dir = tempfile::Builder::new().prefix("log-bakeoff-").tempdir_in(&args.dir)?;
    runtime.block_on(async {
        match args.engine {
            Engine::Sled | Engine::SledFdatasync => {
                let db = sled::Config::new().path(dir.path()).cache_capacity(CACHE_BYTES).open()?;
                let file = match args.engine {
                    Engine::SledFdatasync => {
                        Some(Arc::new(std::fs::File::open(dir.path().join("db"))?))
                    }
                    _ => None,
                };
                run(&args, dir.path(), |name| SledTree {
                    tree: db.open_tree(name).expect("sled opens a tree"),
                    file: file.clone(),
                })
                .await
            }
            Engine::Redb => {
                let store = RedbStore::open(
                    &dir.path().join("ledger.redb"),
                    REDB_CACHE_BYTES,
                    Pace::unpaced(),
                )?;
                run(&args, dir.path(), |name| store.tree(name)).await
            }
            Engine::Wal => {
                let store = WalStore::open(&dir.path().join("log"))?;
                run(&args, dir.path(), |name| store.tree(name)).await
            }
            Engine::RedbPerWrite => {
                let db = redb::Builder::new()
                    .set_cache_size(CACHE_BYTES as usize)
                    .create(dir.path().join("ledger.redb"))?;
                let db = Arc::new(db);
                run(&args, dir.path(), |name| RedbPerWrite {
                    db: Arc::clone(&db),
                    name: Arc::from(name),
                })
                .await
            }
            Engine::Fjall => {
                let keyspace = fjall::Config::new(dir.path())
                    .cache_size(CACHE_BYTES)
                    .manual_journal_persist(true)
                    .open()?;
                run(&args, dir.path(), |name| {
                    let partition = keyspace
                        .open_partition(&name.replace('/', "_"), Default::default())
                        .expect("fjall opens a partition");
                    FjallTree { keyspace: keyspace.clone(), partition }
                })
                .await
            }
        }
    })
}

async fn run<K: KvTree>(args: &Args, dir: &Path, tree: impl Fn(&str) -> K) -> anyhow::Result<()> {
    let groups: Arc<Vec<GroupTrees<K>>> = Arc::new(
        (0..args.appenders)
            .map(|g| GroupTrees {
                log: tree(&format!("{g}/log")),
                meta: tree(&format!("{g}/meta")),
                snapshot: tree(&format!("{g}/snapshot")),
            })
            .collect(),
    );
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let last_index: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.appenders).map(|_| AtomicU64::new(0)).collect());
    let written_before = io_write_bytes();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration_s);

    let mut appenders = Vec::new();
    for g in 0..args.appenders as usize {
        let (groups, counters, last_index) =
            (Arc::clone(&groups), Arc::clone(&counters), Arc::clone(&last_index));
        let (entry_bytes, per_append) = (args.entry_bytes, args.entries_per_append);
        let committed = args.committed.durability();
        appenders.push(tokio::spawn(async move {
            let mut latencies_us = Vec::new();
            let mut next = 1u64;
            while Instant::now() < deadline {
                let batch: KvBatch = (next..next + per_append)
                    .map(|index| (index.to_be_bytes().to_vec(), Some(payload(index, entry_bytes))))
                    .collect();
                let t0 = Instant::now();
                groups[g].log.write(batch, Durability::Durable).await.expect("append");
                latencies_us.push(t0.elapsed().as_micros() as u64);
                if let Some(durability) = committed {
                    let index = (next + per_append - 1).to_be_bytes().to_vec();
                    let write = vec![(b"committed".to_vec(), Some(index))];
                    groups[g].meta.write(write, durability).await.expect("committed");
                }
                next += per_append;
                last_index[g].store(next - 1, Ordering::Relaxed);
                counters.n_appends.fetch_add(1, Ordering::Relaxed);
            }
            latencies_us
        }));
    }
    let voter = {
        let (groups, counters) = (Arc::clone(&groups), Arc::clone(&counters));
        let every = Duration::from_millis(args.vote_every_ms);
        tokio::spawn(async move {
            let mut term = 0u64;
            while sleep_until_before(every, deadline).await {
                term += 1;
                let group = &groups[(term % groups.len() as u64) as usize];
                let vote = vec![(b"vote".to_vec(), Some(term.to_be_bytes().to_vec()))];
                group.meta.write(vote, Durability::Durable).await.expect("vote");
                counters.n_votes.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let snapshotter = {
        let (groups, counters, last_index) =
            (Arc::clone(&groups), Arc::clone(&counters), Arc::clone(&last_index));
        let every = Duration::from_millis(args.snapshot_every_ms);
        let (snapshot_bytes, kept) = (args.snapshot_bytes, args.entries_kept);
        tokio::spawn(async move {
            let mut n = 0u64;
            while sleep_until_before(every, deadline).await {
                n += 1;
                let g = (n % groups.len() as u64) as usize;
                let upto = last_index[g].load(Ordering::Relaxed);
                let snapshot = vec![(b"current".to_vec(), Some(payload(n, snapshot_bytes)))];
                groups[g].snapshot.write(snapshot, Durability::Durable).await.expect("snapshot");
                counters.n_snapshots.fetch_add(1, Ordering::Relaxed);
                let Some(upto) = upto.checked_sub(kept) else { continue };
                let purged = upto.to_be_bytes();
                let purge = vec![(b"last_purged".to_vec(), Some(purged.to_vec()))];
                groups[g].meta.write(purge, Durability::Volatile).await.expect("purge point");
                let keys = groups[g]
                    .log
                    .range((Bound::Unbounded, Bound::Included(&purged[..])))
                    .expect("range");
                let removals =
                    keys.into_iter().map(|(key, _)| (key.as_ref().to_vec(), None)).collect();
                groups[g].log.write(removals, Durability::Volatile).await.expect("purge");
                counters.n_purges.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // An OS thread, not a task: a store that blocks every tokio worker (sled did) would
    // stop a watchdog task too.
    let watchdog = {
        let (counters, stop) = (Arc::clone(&counters), Arc::clone(&stop));
        let stall = Duration::from_secs(args.stall_s);
        std::thread::spawn(move || {
            let (mut seen, mut since) = (0, Instant::now());
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(WATCHDOG_INTERVAL);
                let now = counters.n_appends.load(Ordering::Relaxed);
                if now != seen {
                    (seen, since) = (now, Instant::now());
                } else if since.elapsed() > stall {
                    println!("STALL: no append completed for {stall:?} after {now} appends");
                    std::process::exit(2);
                }
            }
        })
    };

    let mut latencies_us = Vec::new();
    for appender in appenders {
        latencies_us.extend(appender.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in [voter, snapshotter] {
        task.await?;
    }
    if watchdog.join().is_err() {
        anyhow::bail!("the watchdog panicked");
    }
    latencies_us.sort_unstable();
    let at = |q: f64| latencies_us[((latencies_us.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    let n_appends = counters.n_appends.load(Ordering::Relaxed);
    let entries = n_appends * args.entries_per_append;
    let (apparent, allocated) = disk_use(dir)?;
    let live = args.appenders as f64
        * (args.entries_kept as f64 * args.entry_bytes as f64 + args.snapshot_bytes as f64);
    let (rss, hwm) = (status_kib("VmRSS:") / 1024.0, status_kib("VmHWM:") / 1024.0);
    let written_per_append = (io_write_bytes() - written_before) / n_appends.max(1) as f64;
    println!(
        "engine={:?} appenders={} entry_bytes={} entries_per_append={} committed={:?} \
         duration_s={elapsed:.1}",
        args.engine, args.appenders, args.entry_bytes, args.entries_per_append, args.committed
    );
    println!(
        "appends={n_appends} appends_per_s={:.0} entries_per_s={:.0} MiB_per_s={:.1} \
         p50_ms={:.2} p99_ms={:.2} max_ms={:.1}",
        n_appends as f64 / elapsed,
        entries as f64 / elapsed,
        entries as f64 * args.entry_bytes as f64 / MIB / elapsed,
        at(0.5),
        at(0.99),
        at(1.0)
    );
    println!(
        "votes={} snapshots={} purges={} disk_MiB={:.1} alloc_MiB={:.1} live_MiB={:.1} \
         amplification={:.2} written_KiB_per_append={:.1} rss_MiB={rss:.1} hwm_MiB={hwm:.1}",
        counters.n_votes.load(Ordering::Relaxed),
        counters.n_snapshots.load(Ordering::Relaxed),
        counters.n_purges.load(Ordering::Relaxed),
        apparent / MIB,
        allocated / MIB,
        live / MIB,
        allocated / live,
        written_per_append / 1024.0,
    );
    Ok(())
}

/// Sleeps `period`, unless that ends past `deadline`; says whether it slept.
async fn sleep_until_before(period: Duration, deadline: Instant) -> bool {
    let wake = Instant::now() + period;
    if wake > deadline {
        return false;
    }
    tokio::time::sleep_until(wake.into()).await;
    true
}

/// `len` bytes that do not compress, different for each `seed`.
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sum of file lengths and of allocated blocks under `dir`.
fn disk_use(dir: &Path) -> std::io::Result<(f64, f64)> {
    use std::os::unix::fs::MetadataExt;
    let (mut apparent, mut allocated) = (0.0, 0.0);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            let (a, b) = disk_use(&entry.path())?;
            (apparent, allocated) = (apparent + a, allocated + b);
        } else {
            apparent += meta.len() as f64;
            allocated += meta.blocks() as f64 * 512.0;
        }
    }
    Ok((apparent, allocated))
}

/// Bytes this process has caused to be written to storage (`/proc/self/io`; 0 where
/// there is none). Charged when a page-cache folio is dirtied, so a store writing small
/// records into large folios (the WAL's zeros, laid 1 MiB at a time) reads far above what
/// reaches the device (docs/storage.md, "Zeros ahead of the log").
fn io_write_bytes() -> f64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let line = io.lines().find(|line| line.starts_with("write_bytes:")).unwrap_or_default();
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0.0)
}

/// A `/proc/self/status` field in KiB (0 where there is none).
fn status_kib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|line| line.starts_with(field)).unwrap_or_default();
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).unwrap_or(0.0)
}

/// sled as the ledger used it until the bake-off: `apply_batch`, then `flush_async` (a
/// `sync_file_range`, `docs/durability.md`) for a durable write, and then, with `file`,
/// `fdatasync` of sled's log file.
#[derive(Clone)]
struct SledTree {
    tree: sled::Tree,
    file: Option<Arc<std::fs::File>>,
}

impl KvTree for SledTree {
    type Value = sled::IVec;
    type Error = sled::Error;

    fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, sled::Error> {
        self.tree.get(key)
    }

    fn last(&self) -> Result<Option<sled::IVec>, sled::Error> {
        Ok(self.tree.last()?.map(|(_, value)| value))
    }

    fn range(
        &self,
        range: (Bound<&[u8]>, Bound<&[u8]>),
    ) -> Result<Vec<(sled::IVec, sled::IVec)>, sled::Error> {
        self.tree.range::<&[u8], _>(range).collect()
    }

    async fn write(&self, batch: KvBatch, durability: Durability) -> Result<(), sled::Error> {
        let mut sled_batch = sled::Batch::default();
        for (key, value) in batch {
            match value {
                Some(value) => sled_batch.insert(key, value),
                None => sled_batch.remove(key),
            }
        }
        self.tree.apply_batch(sled_batch)?;
        if durability.is_synced() {
            self.tree.flush_async().await?;
            if let Some(file) = &self.file {
                let file = Arc::clone(file);
                let synced = tokio::task::spawn_blocking(move || file.sync_data());
                synced.await.expect("the sync thread panicked")?;
            }
        }
        Ok(())
    }
}

/// redb with one transaction per write, committed on a blocking thread.
#[derive(Clone)]
struct RedbPerWrite {
    db: Arc<redb::Database>,
    name: Arc<str>,
}

impl RedbPerWrite {
    fn table(&self) -> redb::TableDefinition<'_, &'static [u8], &'static [u8]> {
        redb::TableDefinition::new(&self.name)
    }

    /// Collects what `f` reads from the table (nothing from a table never written).
    fn read<R: Default>(
        &self,
        f: impl FnOnce(&redb::ReadOnlyTable<&'static [u8], &'static [u8]>) -> Result<R, redb::Error>,
    ) -> Result<R, redb::Error> {
        use redb::ReadableDatabase;
        let txn = self.db.begin_read()?;
        match txn.open_table(self.table()) {
            Ok(table) => f(&table),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(R::default()),
            Err(e) => Err(e.into()),
        }
    }
}

impl KvTree for RedbPerWrite {
    type Value = Vec<u8>;
    type Error = redb::Error;

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, redb::Error> {
        self.read(|table| Ok(table.get(key)?.map(|value| value.value().to_vec())))
    }

    fn last(&self) -> Result<Option<Vec<u8>>, redb::Error> {
        use redb::ReadableTable;
        self.read(|table| Ok(table.last()?.map(|(_, value)| value.value().to_vec())))
    }

    fn range(
        &self,
        range: (Bound<&[u8]>, Bound<&[u8]>),
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, redb::Error> {
        self.read(|table| {
            let pairs = table.range::<&[u8]>(range)?.map(|pair| {
                let (key, value) = pair?;
                Ok((key.value().to_vec(), value.value().to_vec()))
            });
            pairs.collect()
        })
    }

    async fn write(&self, batch: KvBatch, durability: Durability) -> Result<(), redb::Error> {
        let this = self.clone();
        let commit = move || -> Result<(), redb::Error> {
            let mut txn = this.db.begin_write()?;
            let level = if durability.is_synced() {
                redb::Durability::Immediate
            } else {
                redb::Durability::None
            };
            txn.set_durability(level)?;
            {
                let mut table = txn.open_table(this.table())?;
                for (key, value) in &batch {
                    match value {
                        Some(value) => drop(table.insert(key.as_slice(), value.as_slice())?),
                        None => drop(table.remove(key.as_slice())?),
                    }
                }
            }
            txn.commit()?;
            Ok(())
        };
        tokio::task::spawn_blocking(commit).await.expect("the commit thread panicked")
    }
}

/// fjall: a partition per tree, one journal for the keyspace; a durable write is a batch
/// commit then `persist(SyncData)` (`fdatasync` of the journal), on a blocking thread.
#[derive(Clone)]
struct FjallTree {
    keyspace: fjall::Keyspace,
    partition: fjall::PartitionHandle,
}

impl KvTree for FjallTree {
    type Value = fjall::Slice;
    type Error = fjall::Error;

    fn get(&self, key: &[u8]) -> Result<Option<fjall::Slice>, fjall::Error> {
        self.partition.get(key)
    }

    fn last(&self) -> Result<Option<fjall::Slice>, fjall::Error> {
        Ok(self.partition.last_key_value()?.map(|(_, value)| value))
    }

    fn range(
        &self,
        range: (Bound<&[u8]>, Bound<&[u8]>),
    ) -> Result<Vec<(fjall::Slice, fjall::Slice)>, fjall::Error> {
        self.partition.range::<&[u8], _>(range).collect()
    }

    async fn write(&self, batch: KvBatch, durability: Durability) -> Result<(), fjall::Error> {
        let this = self.clone();
        let commit = move || {
            let mut fjall_batch = this.keyspace.batch();
            for (key, value) in batch {
                match value {
                    Some(value) => fjall_batch.insert(&this.partition, key, value),
                    None => fjall_batch.remove(&this.partition, key),
                }
            }
            fjall_batch.commit()?;
            if durability.is_synced() {
                this.keyspace.persist(fjall::PersistMode::SyncData)?;
            }
            Ok(())
        };
        tokio::task::spawn_blocking(commit).await.expect("the commit thread panicked")
    }
}
