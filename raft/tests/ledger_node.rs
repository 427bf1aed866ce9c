//! `LedgerNode` at its public boundary: group commit, restart, SIGKILL durability with a
//! real child process (of top-ups, and of settles' history records), and snapshot + log
//! purge.
//!
//! All tests live in one file so the workspace links one test binary for them (2 cores).

use redb::{ReadableDatabase, ReadableTable};
use solrouter_ledger::{
    AccountId, Command, HoldId, KeyId, KeyKind, KeyLimits, Ledger, Op, OpId, PicoUsd, Rejection,
    Reply, RequestRecord,
};
use solrouter_raft::{
    snapshot_stored_whole, Consistency, Durability, HistoryQuery, KvTree, LedgerApi, LedgerError,
    LedgerNode, NodeOptions, WalStore, LEGACY_LOG_FILE_NAME, LEGACY_LOG_MOVED_NAME, LOG_DIR_NAME,
    SNAPSHOT_CHECK_INTERVAL, SNAPSHOT_FILE_NAME,
};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const ACCOUNT: AccountId = AccountId(7);
/// One top-up; small so any number of them stays far below `AMOUNT_MAX`.
const TOP_UP: PicoUsd = PicoUsd(1_000);
/// Bounded polling for eventual conditions: attempts × interval = 10 s.
const POLL_ATTEMPTS_MAX: u32 = 1_000;
const POLL_INTERVAL: Duration = Duration::from_millis(10);

fn create_account(id: u128) -> Command {
    Command { id: OpId(id), op: Op::CreateAccount { account: ACCOUNT, name: "acme".into() } }
}

fn top_up(id: u128) -> Command {
    Command { id: OpId(id), op: Op::Credit { account: ACCOUNT, amount: TOP_UP } }
}

fn credits(ledger: &Ledger) -> PicoUsd {
    ledger.account(ACCOUNT).expect("account exists").credits
}

async fn submit_ok(node: &LedgerNode, command: Command) -> Reply {
    match node.submit(command.clone()).await {
        Ok(Ok(reply)) => reply,
        other => panic!("{command:?} was not applied: {other:?}"),
    }
}

fn assert_audit_ok(ledger: &Ledger) {
    let audit = ledger.audit();
    assert!(audit.ok, "bank check failed: {:?}", audit.problems);
}

/// Retries `condition` every `POLL_INTERVAL`, at most `POLL_ATTEMPTS_MAX` times.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..POLL_ATTEMPTS_MAX {
        if condition() {
            return;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    panic!("not true after {POLL_ATTEMPTS_MAX} attempts: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_are_batched_into_fewer_entries() {
    const N_TASKS: u128 = 64;
    const N_PER_TASK: u128 = 50;
    let dir = tempfile::tempdir().unwrap();
    let node = LedgerNode::open_single(dir.path()).await.unwrap();
    assert_eq!(submit_ok(&node, create_account(1)).await, Reply::AccountCreated);
    let before = node.stats();

    let started = Instant::now();
    let tasks: Vec<_> = (0..N_TASKS)
        .map(|task| {
            let node = node.clone();
            tokio::spawn(async move {
                let mut replies = Vec::new();
                for n in 0..N_PER_TASK {
                    replies.push(submit_ok(&node, top_up(1_000 + task * N_PER_TASK + n)).await);
                }
                replies
            })
        })
        .collect();
    let mut totals = Vec::new();
    for task in tasks {
        for reply in task.await.unwrap() {
            match reply {
                Reply::Credited { credits } => totals.push(credits.0),
                other => panic!("unexpected reply {other:?}"),
            }
        }
    }
    let elapsed = started.elapsed();

    // Every top-up saw a distinct running total: each was applied exactly once.
    let n_commands = N_TASKS * N_PER_TASK;
    totals.sort_unstable();
    let expected: Vec<u128> = (1..=n_commands).map(|n| n * TOP_UP.0).collect();
    assert_eq!(totals, expected);
    let after = node.stats();
    let n_batches = after.n_batches_proposed - before.n_batches_proposed;
    let n_proposed = after.n_commands_proposed - before.n_commands_proposed;
    assert_eq!(n_proposed as u128, n_commands);
    assert!((n_batches as u128) < n_commands, "{n_batches} batches for {n_commands} commands");
    let n_entries = after.last_log_index.unwrap() - before.last_log_index.unwrap();
    assert!((n_entries as u128) < n_commands, "{n_entries} entries for {n_commands} commands");
    eprintln!(
        "{n_commands} concurrent top-ups in {n_batches} batches, {:.0} ops/s",
        n_commands as f64 / elapsed.as_secs_f64()
    );

    let (total, audit) = node.read(|ledger| (credits(ledger), ledger.audit())).await.unwrap();
    assert_eq!(total.0, n_commands * TOP_UP.0);
    assert!(audit.ok, "{:?}", audit.problems);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn outcomes_follow_the_ledger_rules() {
    let dir = tempfile::tempdir().unwrap();
    let node = LedgerNode::open_single(dir.path()).await.unwrap();
    submit_ok(&node, create_account(1)).await;
    let first = submit_ok(&node, top_up(2)).await;
    // Same op id, same op: the remembered outcome, applied once.
    assert_eq!(submit_ok(&node, top_up(2)).await, first);
    // Same op id, different op: refused.
    let reused = Command { id: OpId(2), op: Op::Credit { account: ACCOUNT, amount: PicoUsd(5) } };
    assert_eq!(node.submit(reused).await.unwrap(), Err(Rejection::IdReused));
    // Invalid before proposing.
    let zero = Command { id: OpId(3), op: Op::Credit { account: ACCOUNT, amount: PicoUsd(0) } };
    assert!(matches!(node.submit(zero).await.unwrap(), Err(Rejection::Invalid(_))));
    assert_eq!(node.read(credits).await.unwrap(), TOP_UP);
    node.shutdown().await.unwrap();
    let after_shutdown = node.submit(top_up(4)).await;
    assert!(matches!(after_shutdown, Err(LedgerError::Shutdown)), "{after_shutdown:?}");
}

/// The live state a bench reports: what a snapshot of the group would hold, growing with
/// accounts; a group the node does not have is refused, not a panic.
#[tokio::test]
async fn state_bytes_sizes_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let node = LedgerNode::open_single(dir.path()).await.unwrap();
    let empty = node.state_bytes(0).unwrap();
    submit_ok(&node, create_account(1)).await;
    assert!(node.state_bytes(0).unwrap() > empty);
    assert!(matches!(node.state_bytes(1), Err(LedgerError::Invalid(_))));
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn restart_on_the_same_directory_keeps_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let hold = HoldId(99);
    let key_hash = [3u8; 32];
    let reserved_at_ms = {
        let node = LedgerNode::open_single(dir.path()).await.unwrap();
        submit_ok(&node, create_account(1)).await;
        submit_ok(&node, top_up(2)).await;
        let (kind, limits) = (KeyKind::Inference, KeyLimits::default());
        let (name, hash) = ("k".to_string(), key_hash);
        let key = Op::CreateKey { account: ACCOUNT, key: KeyId(5), name, hash, kind, limits };
        submit_ok(&node, Command { id: OpId(3), op: key }).await;
        let reserve = Op::Reserve {
            account: ACCOUNT,
            key: KeyId(5),
            hold,
            amount: PicoUsd(400),
            ttl_ms: 60_000,
        };
        let reserved = submit_ok(&node, Command { id: OpId(4), op: reserve }).await;
        let Reply::Reserved { reserved_at_ms, .. } = reserved else { panic!("{reserved:?}") };
        // Dropped without shutdown, like a process that just stops using it.
        reserved_at_ms
    };
    let node = LedgerNode::open_single(dir.path()).await.unwrap();
    node.read_local(|ledger| {
        let account = ledger.account(ACCOUNT).expect("account survived");
        assert_eq!((account.credits, account.debits_pending), (TOP_UP, PicoUsd(400)));
        assert_eq!(ledger.key_by_hash(&key_hash).map(|(id, _)| id), Some(KeyId(5)));
        assert_audit_ok(ledger);
    });
    // The hold survived too: settling it posts against it.
    let settle = Op::Settle {
        account: ACCOUNT,
        hold,
        actual: PicoUsd(300),
        record: RequestRecord::default(),
        reserved_at_ms,
    };
    let reply = submit_ok(&node, Command { id: OpId(5), op: settle }).await;
    let expected =
        Reply::Settled { charged: PicoUsd(300), released: PicoUsd(100), written_off: PicoUsd(0) };
    assert_eq!(reply, expected);
    node.shutdown().await.unwrap();
}

/// A snapshot waits for as many commands as the state's windows remember
/// (`compaction.rs`): with a thousand op ids remembered, entries past the last snapshot
/// four times the interval make none, as their count alone would; traffic as large as the
/// windows makes one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_waits_for_traffic_as_large_as_the_windows() {
    const SNAPSHOT_EVERY: u64 = 4;
    const N_REMEMBERED: u64 = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let options = NodeOptions::try_new(SNAPSHOT_EVERY, 0).unwrap();
    let node = LedgerNode::open_single_with(dir.path(), &options).await.unwrap();
    submit_ok(&node, create_account(1)).await;
    // Each account's creation is remembered by its op id; submitted at once, few entries.
    let creations: Vec<_> = (0..N_REMEMBERED)
        .map(|n| {
            let node = node.clone();
            let account = AccountId(1_000 + n);
            let op = Op::CreateAccount { account, name: "a".into() };
            tokio::spawn(async move {
                submit_ok(&node, Command { id: OpId(u128::from(n) + 10), op }).await
            })
        })
        .collect();
    for creation in creations {
        creation.await.unwrap();
    }
    assert!(node.stats().n_op_ids_remembered > N_REMEMBERED);
    // Top-ups (remembered by account, not in the windows) until a snapshot covers them.
    let covered = node.stats().last_applied_index.unwrap();
    let mut n_top_ups = 0;
    while node.stats().snapshot_index.is_none_or(|index| index < covered) {
        assert!(n_top_ups < 10 * N_REMEMBERED, "no snapshot after {n_top_ups} top-ups");
        submit_ok(&node, top_up(1_000_000 + u128::from(n_top_ups))).await;
        n_top_ups += 1;
    }
    let snapshot = node.stats().snapshot_index;
    for n in 0..4 * SNAPSHOT_EVERY {
        submit_ok(&node, top_up(2_000_000 + u128::from(n))).await;
    }
    tokio::time::sleep(4 * SNAPSHOT_CHECK_INTERVAL).await;
    let stats = node.stats();
    assert!(stats.last_applied_index.unwrap() >= snapshot.unwrap() + 4 * SNAPSHOT_EVERY);
    assert_eq!(stats.snapshot_index, snapshot, "a snapshot with little traffic since the last");
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn snapshot_and_purge_bound_the_log_and_survive_restart() {
    const SNAPSHOT_EVERY: u64 = 16;
    const N_TOP_UPS: u128 = 100;
    let dir = tempfile::tempdir().unwrap();
    let options = NodeOptions::try_new(SNAPSHOT_EVERY, 0).unwrap();
    let node = LedgerNode::open_single_with(dir.path(), &options).await.unwrap();
    submit_ok(&node, create_account(1)).await;
    // Sequential submits: one entry each.
    for n in 0..N_TOP_UPS {
        submit_ok(&node, top_up(100 + n)).await;
    }
    let last_log_index = node.stats().last_log_index.unwrap();
    assert!(last_log_index >= N_TOP_UPS as u64);
    eventually("a snapshot covers most of the log and the log is purged up to it", || {
        let stats = node.stats();
        let snapshot = stats.snapshot_index.unwrap_or(0);
        snapshot + SNAPSHOT_EVERY > last_log_index && stats.purged_index == stats.snapshot_index
    })
    .await;
    let stats = node.stats();
    let n_entries_left = stats.last_log_index.unwrap() - stats.purged_index.unwrap();
    assert!(n_entries_left <= SNAPSHOT_EVERY, "log still holds {n_entries_left} entries");
    let expected = node.read(|ledger| ledger.clone()).await.unwrap();
    node.shutdown().await.unwrap();
    drop(node);

    let node = LedgerNode::open_single_with(dir.path(), &options).await.unwrap();
    let restarted = node.stats();
    assert!(restarted.purged_index.is_some(), "restart must begin from the snapshot");
    let recovered = node.read(|ledger| ledger.clone()).await.unwrap();
    assert_eq!(recovered, expected);
    assert_eq!(credits(&recovered).0, N_TOP_UPS * TOP_UP.0);
    assert_audit_ok(&recovered);
    node.shutdown().await.unwrap();
}

/// Opens one of the node's redb databases (`file` in `dir`) directly, polling while the
/// stopped node's storage tasks still have it open.
async fn open_redb(dir: &Path, file: &str) -> redb::Database {
    for _ in 0..POLL_ATTEMPTS_MAX {
        if let Ok(db) = redb::Database::create(dir.join(file)) {
            return db;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    panic!("the data directory stayed open");
}

/// Where a stopped node keeps what a test reads or overwrites.
#[derive(Clone, Copy, Debug)]
enum Stored {
    /// The snapshots' redb database.
    Snapshots,
    /// The log store.
    Log,
}

async fn open_log(dir: &Path) -> WalStore {
    for _ in 0..POLL_ATTEMPTS_MAX {
        if let Ok(store) = WalStore::open(&dir.join(LOG_DIR_NAME)) {
            return store;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    panic!("the log store stayed open");
}

/// The key and value under `key` (or the last of the table) in `table` of `stored`.
async fn read_stored(
    dir: &Path,
    stored: Stored,
    table: &str,
    key: Option<&[u8]>,
) -> (Vec<u8>, Vec<u8>) {
    match stored {
        Stored::Snapshots => {
            let db = open_redb(dir, SNAPSHOT_FILE_NAME).await;
            let txn = db.begin_read().unwrap();
            let table = txn.open_table(table_of(table)).unwrap();
            match key {
                Some(key) => {
                    (key.to_vec(), table.get(key).unwrap().expect("stored").value().to_vec())
                }
                None => {
                    let (key, value) = table.last().unwrap().expect("the table holds a value");
                    (key.value().to_vec(), value.value().to_vec())
                }
            }
        }
        Stored::Log => {
            let tree = open_log(dir).await.tree(table);
            match key {
                Some(key) => (key.to_vec(), tree.get(key).unwrap().expect("stored")),
                None => {
                    let all = tree.range((std::ops::Bound::Unbounded, std::ops::Bound::Unbounded));
                    all.unwrap().pop().expect("the table holds a value")
                }
            }
        }
    }
}

/// Replaces the value under `key` in table `table` of `stored`, durably.
async fn overwrite(dir: &Path, stored: Stored, table: &str, key: &[u8], value: &[u8]) {
    match stored {
        Stored::Snapshots => {
            let db = open_redb(dir, SNAPSHOT_FILE_NAME).await;
            let txn = db.begin_write().unwrap();
            txn.open_table(table_of(table)).unwrap().insert(key, value).unwrap();
            txn.commit().unwrap();
        }
        Stored::Log => {
            let tree = open_log(dir).await.tree(table);
            let batch = vec![(key.to_vec(), Some(value.to_vec()))];
            tree.write(batch, Durability::Durable).await.unwrap();
        }
    }
}

fn table_of(name: &str) -> redb::TableDefinition<'_, &'static [u8], &'static [u8]> {
    redb::TableDefinition::new(name)
}

/// The error and its sources, as one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// A single node opened with `options` in a fresh data directory, holding an account and
/// 8 top-ups of `TOP_UP`.
async fn node_with_top_ups(options: &NodeOptions) -> (tempfile::TempDir, LedgerNode) {
    let dir = tempfile::tempdir().unwrap();
    let node = LedgerNode::open_single_with(dir.path(), options).await.unwrap();
    submit_ok(&node, create_account(1)).await;
    for n in 0..8 {
        submit_ok(&node, top_up(100 + n)).await;
    }
    (dir, node)
}

/// A stopped single node's data directory holding an account, 8 top-ups of `TOP_UP`, a
/// snapshot the log was purged up to, and an entry in the log past it (a retried top-up,
/// which credits nothing more); with the options it was opened with.
async fn snapshotted_directory() -> (tempfile::TempDir, NodeOptions) {
    let options = NodeOptions::try_new(4, 0).unwrap();
    let (dir, node) = node_with_top_ups(&options).await;
    eventually("the log was purged up to a snapshot", || node.stats().purged_index.is_some()).await;
    submit_ok(&node, top_up(100)).await;
    node.shutdown().await.unwrap();
    (dir, options)
}

/// Every stored kind (snapshot, vote, log entry) carries the format version; a data
/// directory holding one this build does not read is refused, naming the version found
/// and the ones supported, instead of being misread.
#[tokio::test]
async fn an_unknown_stored_format_version_is_refused() {
    /// Where the codec's version byte sits: after the 3-byte magic.
    const VERSION_AT: usize = 3;
    let (dir, options) = snapshotted_directory().await;

    let stored = [
        (Stored::Snapshots, "0/snapshot", Some(&b"head"[..])),
        (Stored::Log, "0/meta", Some(&b"vote"[..])),
        (Stored::Log, "0/log", None),
    ];
    for (file, table_name, key) in stored {
        let (key, value) = read_stored(dir.path(), file, table_name, key).await;
        assert_eq!(&value[..VERSION_AT], b"SRL", "a stored value starts with the magic");
        let mut future = value.clone();
        future[VERSION_AT] = 99;
        overwrite(dir.path(), file, table_name, &key, &future).await;

        let error = LedgerNode::open_single_with(dir.path(), &options).await.err();
        let error = error_chain(&error.expect("an unknown version must not open"));
        let expected = "unsupported ledger format version 99; this build reads versions [7, 8, 9]";
        assert!(error.contains(expected), "{error}");

        overwrite(dir.path(), file, table_name, &key, &value).await;
    }
    let node = LedgerNode::open_single_with(dir.path(), &options).await.unwrap();
    assert_eq!(node.read(credits).await.unwrap().0, 8 * TOP_UP.0);
    node.shutdown().await.unwrap();
}

/// Snapshots moved out of the log's database into their own file; a data directory an
/// older build wrote keeps its snapshot in the log's database, whose log may be purged up
/// to it. Such a node opens, from that snapshot, with nothing lost.
#[tokio::test]
async fn a_snapshot_in_the_log_database_of_an_older_build_is_carried_over() {
    let (dir, options) = snapshotted_directory().await;

    // Lay the directory out as an older build did: the snapshot in the log's database,
    // whole, under `current`.
    let value = {
        let db = open_redb(dir.path(), SNAPSHOT_FILE_NAME).await;
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(table_of("0/snapshot")).unwrap();
        let head = table.get(&b"head"[..]).unwrap().expect("the snapshot is stored");
        let pieces = table.range(&b"piece/"[..]..&b"piece0"[..]).unwrap();
        let payload: Vec<u8> = pieces.flat_map(|piece| piece.unwrap().1.value().to_vec()).collect();
        snapshot_stored_whole(head.value(), &payload).expect("a head this build stored")
    };
    overwrite(dir.path(), Stored::Log, "0/snapshot", b"current", &value).await;
    std::fs::remove_file(dir.path().join(SNAPSHOT_FILE_NAME)).unwrap();

    let node = LedgerNode::open_single_with(dir.path(), &options).await.unwrap();
    assert!(node.stats().purged_index.is_some(), "the log was purged up to the snapshot");
    assert_eq!(node.read(credits).await.unwrap().0, 8 * TOP_UP.0);
    node.shutdown().await.unwrap();
}

/// The log moved out of redb into a log store of its own; a data directory an older build
/// wrote keeps log, votes and identity in `ledger.redb`. Such a node opens with nothing
/// lost: the trees are moved over and the old file renamed.
#[tokio::test]
async fn a_log_in_the_redb_database_of_an_older_build_is_moved_over() {
    let options = NodeOptions::try_new(1_000, 0).unwrap();
    let (dir, node) = node_with_top_ups(&options).await;
    node.shutdown().await.unwrap();
    drop(node);

    // Lay the directory out as an older build did: the log store's trees in `ledger.redb`.
    {
        let log = open_log(dir.path()).await;
        let db = redb::Database::create(dir.path().join(LEGACY_LOG_FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        for name in ["node", "0/log", "0/meta"] {
            let all = (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded);
            let pairs = log.tree(name).range(all).unwrap();
            assert!(!pairs.is_empty(), "{name} holds values");
            let mut table = txn.open_table(table_of(name)).unwrap();
            for (key, value) in pairs {
                table.insert(key.as_slice(), value.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    std::fs::remove_dir_all(dir.path().join(LOG_DIR_NAME)).unwrap();

    let node = LedgerNode::open_single_with(dir.path(), &options).await.unwrap();
    assert_eq!(node.read(credits).await.unwrap().0, 8 * TOP_UP.0);
    assert!(!dir.path().join(LEGACY_LOG_FILE_NAME).exists());
    assert!(dir.path().join(LEGACY_LOG_MOVED_NAME).exists());
    node.shutdown().await.unwrap();
    drop(node);
    let node = LedgerNode::open_single_with(dir.path(), &options).await.unwrap();
    assert_eq!(node.read(credits).await.unwrap().0, 8 * TOP_UP.0);
    node.shutdown().await.unwrap();
}

/// Set only in the child process of the SIGKILL test: its data directory.
const CHILD_DIR_ENV: &str = "SOLROUTER_RAFT_TEST_CHILD_DIR";
/// Acknowledgements the parent waits for before killing the child.
const ACKS_BEFORE_KILL: usize = 300;
/// Writer tasks in the child, so kills land with several batches in flight.
const CHILD_WRITERS: u128 = 8;
/// Bound on each child writer's loop, far more than the parent waits for.
const CHILD_WRITES_PER_WRITER_MAX: u128 = 100_000;
/// Lines buffered between the pipe-reading thread and the test; a full buffer only makes
/// the child wait on its stdout.
const CHILD_LINES_BUFFERED_MAX: usize = 1024;
/// Longest the parent waits for the child's next line.
const CHILD_LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// The child role of `sigkill_loses_no_acknowledged_top_up`: with `CHILD_DIR_ENV` set it
/// writes top-ups and prints `ACK <op id> <credits>` after each acknowledgement until it is
/// killed. In a normal run the variable is unset and this returns at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_child_writer() {
    let Some(node) = child_node().await else { return };
    write_and_ack(&node, |node, id| async move {
        let Reply::Credited { credits } = submit_ok(&node, top_up(id)).await else {
            panic!("a top-up answered something else");
        };
        format!("{id} {}", credits.0)
    })
    .await;
}

/// In a child process of a SIGKILL test (`CHILD_DIR_ENV` set), its node on that data
/// directory with account 1 created; none in a normal run.
async fn child_node() -> Option<LedgerNode> {
    let dir = std::env::var_os(CHILD_DIR_ENV)?;
    let node = LedgerNode::open_single(Path::new(&dir)).await.unwrap();
    submit_ok(&node, create_account(1)).await;
    Some(node)
}

/// Runs `CHILD_WRITERS` tasks on `node` (a child role's), each calling `write` with op ids
/// of its own and printing `ACK <what it returned>` after each, until the child is killed.
async fn write_and_ack<F, Fut>(node: &LedgerNode, write: F)
where
    F: Fn(LedgerNode, u128) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = String> + Send,
{
    let writers: Vec<_> = (0..CHILD_WRITERS)
        .map(|writer| {
            let (node, write) = (node.clone(), write.clone());
            tokio::spawn(async move {
                for n in 0..CHILD_WRITES_PER_WRITER_MAX {
                    let ack = write(node.clone(), 1_000_000 * (writer + 1) + n).await;
                    let mut stdout = std::io::stdout().lock();
                    writeln!(stdout, "ACK {ack}").unwrap();
                    stdout.flush().unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
}

/// Settles the settle child's writers make before the parent kills it, at least.
const SETTLES_BEFORE_KILL: usize = 2_000;
/// And for at least this long: the history syncs every second, and a mark written by a
/// read becomes durable with the next sync, so a replay after the kill skips entries.
const SETTLING_BEFORE_KILL: Duration = Duration::from_secs(3);
/// How often the settle child reads its history, as a dashboard would: each read writes
/// the postings held and marks the entries they cover.
const CHILD_HISTORY_READ_INTERVAL: Duration = Duration::from_millis(200);

/// The child role of `sigkill_loses_no_acknowledged_settle_s_record`: settles of holds
/// never reserved (each charged on the settle alone, and recorded), printing `ACK <hold>`
/// after each acknowledgement, while a task reads the account's history, until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_child_settler() {
    let Some(node) = child_node().await else { return };
    let reader = node.clone();
    tokio::spawn(async move {
        loop {
            reader.history(HistoryQuery::all(ACCOUNT), Consistency::Linearizable).await.unwrap();
            tokio::time::sleep(CHILD_HISTORY_READ_INTERVAL).await;
        }
    });
    write_and_ack(&node, |node, id| async move {
        let created_ms = now_ms();
        let hold = HoldId::time_ordered(created_ms, id);
        let record = RequestRecord { created_ms, ..RequestRecord::default() };
        let (actual, reserved_at_ms) = (PicoUsd(1), created_ms);
        let op = Op::Settle { account: ACCOUNT, hold, actual, record, reserved_at_ms };
        submit_ok(&node, Command { id: OpId(id), op }).await;
        hold.0.to_string()
    })
    .await;
}

/// Every settle acknowledged before a SIGKILL has its record in the history after the
/// restart, once: the replay writes again what the crash took from the history (written
/// since its last sync, postings held in memory) and skips what it kept.
#[test]
fn sigkill_loses_no_acknowledged_settle_s_record() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let acked = acks_until_killed("sigkill_child_settler", dir.path(), |acked| {
        acked.len() >= SETTLES_BEFORE_KILL && started.elapsed() >= SETTLING_BEFORE_KILL
    });
    let acked: Vec<u128> = acked.iter().map(|hold| hold.parse().unwrap()).collect();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let found = runtime.block_on(async {
        let node = LedgerNode::open_single(dir.path()).await.unwrap();
        let mut found = Vec::new();
        let mut query = HistoryQuery::all(ACCOUNT);
        loop {
            let page = node.history(query.clone(), Consistency::Linearizable).await.unwrap();
            found.extend(page.records.iter().map(|(hold, _)| hold.0));
            let Some(next) = page.next else { break };
            query.before = Some(next);
        }
        node.shutdown().await.unwrap();
        found
    });
    let recorded: BTreeSet<u128> = found.iter().copied().collect();
    assert_eq!(recorded.len(), found.len(), "a record found twice");
    let lost: Vec<u128> = acked.iter().copied().filter(|hold| !recorded.contains(hold)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged settles have no record",
        lost.len(),
        acked.len()
    );
    eprintln!("{} acknowledged settles all recorded once after SIGKILL", acked.len());
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    u64::try_from(since_epoch.as_millis()).unwrap()
}

/// Kills the child on drop, so a failing assertion never leaves it running.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the child role `role` (a test of this file) on `dir`, reads the `ACK` lines it
/// prints until `enough` says so, SIGKILLs it, and returns what each ack said, the ones
/// printed between the last read and the kill included.
fn acks_until_killed(
    role: &str,
    dir: &Path,
    mut enough: impl FnMut(&[String]) -> bool,
) -> Vec<String> {
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([role, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD_DIR_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let stdout = child.0.stdout.take().unwrap();
    let (line_tx, line_rx) = mpsc::sync_channel(CHILD_LINES_BUFFERED_MAX);
    // A thread reads the pipe so the wait for each line can be bounded.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if line_tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let ack = |line: String| line.strip_prefix("ACK ").map(str::to_owned);
    let mut acked = Vec::new();
    while !enough(&acked) {
        let line = line_rx.recv_timeout(CHILD_LINE_TIMEOUT).expect("child stopped acknowledging");
        acked.extend(ack(line));
    }
    // `Child::kill` is SIGKILL on Unix: no destructor, no flush, no goodbye.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    // Acks printed between the last read and the kill were acknowledged too. The child is
    // dead, so the pipe reaches its end and the reader thread hangs up.
    acked.extend(line_rx.iter().filter_map(ack));
    acked
}

#[test]
fn sigkill_loses_no_acknowledged_top_up() {
    let dir = tempfile::tempdir().unwrap();
    let acked = acks_until_killed("sigkill_child_writer", dir.path(), |acked| {
        acked.len() >= ACKS_BEFORE_KILL
    });
    let acked: Vec<(u128, u128)> = acked
        .iter()
        .map(|ack| {
            let (id, credits) = ack.split_once(' ').unwrap();
            (id.parse().unwrap(), credits.parse().unwrap())
        })
        .collect();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let node = LedgerNode::open_single(dir.path()).await.unwrap();
        let before = node.read(|ledger| ledger.clone()).await.unwrap();
        assert_audit_ok(&before);
        assert!(credits(&before).0 >= acked.len() as u128 * TOP_UP.0);
        // Resubmitting an applied op id returns its remembered outcome and changes nothing;
        // a lost one would be applied now and raise the credits.
        for (id, credits_acked) in &acked {
            let reply = submit_ok(&node, top_up(*id)).await;
            assert_eq!(reply, Reply::Credited { credits: PicoUsd(*credits_acked) }, "op {id}");
        }
        assert_eq!(node.read(credits).await.unwrap(), credits(&before), "an acked top-up was lost");
        eprintln!("{} acknowledged top-ups all survived SIGKILL", acked.len());
        node.shutdown().await.unwrap();
    });
}
