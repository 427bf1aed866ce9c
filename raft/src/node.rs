//! [`LedgerNode`]: a ledger replica behind openraft, and its group-commit batcher.

use crate::error::LedgerError;
use crate::log_store::LogStore;
use crate::network::NoPeers;
use crate::state_machine::{SharedState, StateMachine};
use crate::types::{NodeId, Raft};
use crate::{
    ELECTION_TIMEOUT_MAX, ELECTION_TIMEOUT_MIN, ENTRIES_KEPT_AFTER_SNAPSHOT, HEARTBEAT_INTERVAL,
    LEADER_WAIT_TIMEOUT, OPEN_LOCK_ATTEMPTS_MAX, OPEN_LOCK_RETRY_INTERVAL, SLED_CACHE_BYTES,
    SNAPSHOT_EVERY_ENTRIES, SUBMIT_QUEUE_MAX, SUBMIT_TIMEOUT,
};
use openraft::{BasicNode, Config, SnapshotPolicy};
use solrouter_ledger::{Batch, Command, Ledger, Outcome, BATCH_COMMANDS_MAX};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// The node id of a single-node cluster.
const SINGLE_NODE_ID: NodeId = 1;

/// A replica of the ledger. Cheap to clone: every clone drives the same node.
#[derive(Clone)]
pub struct LedgerNode {
    inner: Arc<Inner>,
}

/// Tunables of a node, validated on construction. [`NodeOptions::default`] holds the
/// production values; tests shrink the snapshot interval to exercise compaction quickly.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    snapshot_every_entries: u64,
    entries_kept_after_snapshot: u64,
}

/// Counters of one node since it was opened, for tests, metrics and health checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Index of the last entry in the Raft log (entries are batches, not commands).
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    /// Last log index covered by the current snapshot.
    pub snapshot_index: Option<u64>,
    /// Entries up to this index have been removed from the log.
    pub purged_index: Option<u64>,
    /// Batches (Raft entries) this node proposed, and the commands they carried.
    pub n_batches_proposed: u64,
    pub n_commands_proposed: u64,
}

impl NodeOptions {
    pub fn try_new(
        snapshot_every_entries: u64,
        entries_kept_after_snapshot: u64,
    ) -> Result<NodeOptions, LedgerError> {
        if snapshot_every_entries == 0 {
            return Err(LedgerError::InvalidOptions("snapshot_every_entries must be positive"));
        }
        Ok(NodeOptions { snapshot_every_entries, entries_kept_after_snapshot })
    }

    pub fn snapshot_every_entries(&self) -> u64 {
        self.snapshot_every_entries
    }

    pub fn entries_kept_after_snapshot(&self) -> u64 {
        self.entries_kept_after_snapshot
    }
}

impl Default for NodeOptions {
    fn default() -> NodeOptions {
        NodeOptions {
            snapshot_every_entries: SNAPSHOT_EVERY_ENTRIES,
            entries_kept_after_snapshot: ENTRIES_KEPT_AFTER_SNAPSHOT,
        }
    }
}

impl LedgerNode {
    /// Opens (or creates and bootstraps) a single-node cluster with node id 1 in `data_dir`.
    pub async fn open_single(data_dir: &Path) -> Result<LedgerNode, LedgerError> {
        LedgerNode::open_single_with(data_dir, &NodeOptions::default()).await
    }

    /// [`LedgerNode::open_single`] with explicit options. Returns once the node leads and
    /// has applied everything it had committed, so `read_local` sees the recovered state.
    pub async fn open_single_with(
        data_dir: &Path,
        options: &NodeOptions,
    ) -> Result<LedgerNode, LedgerError> {
        let db = open_db(data_dir).await?;
        let log_store =
            LogStore::open(&db).map_err(|e| LedgerError::storage("opening the log", e))?;
        let state_machine = StateMachine::open(&db)
            .map_err(|e| LedgerError::storage("restoring the snapshot", e))?;
        let state = state_machine.shared();
        let config = Arc::new(raft_config(options)?);
        let raft = Raft::new(SINGLE_NODE_ID, config, NoPeers, log_store, state_machine)
            .await
            .map_err(|e| LedgerError::from_fatal("starting raft", e))?;
        let initialized =
            raft.is_initialized().await.map_err(|e| LedgerError::from_fatal("starting raft", e))?;
        if !initialized {
            let members = BTreeMap::from([(SINGLE_NODE_ID, BasicNode::default())]);
            if let Err(e) = raft.initialize(members).await {
                return Err(LedgerError::Unavailable { reason: format!("bootstrap failed: {e}") });
            }
        }
        let waiting = raft.wait(Some(LEADER_WAIT_TIMEOUT));
        if let Err(e) = waiting.current_leader(SINGLE_NODE_ID, "open_single").await {
            return Err(LedgerError::Unavailable { reason: e.to_string() });
        }
        raft.ensure_linearizable().await.map_err(LedgerError::from_check_leader)?;
        Ok(LedgerNode::start(raft, state))
    }

    fn start(raft: Raft, state: Arc<SharedState>) -> LedgerNode {
        let (submit_tx, submit_rx) = mpsc::channel(SUBMIT_QUEUE_MAX);
        let counters = Arc::new(Counters::default());
        let batcher = Batcher {
            raft: raft.clone(),
            state: Arc::clone(&state),
            counters: Arc::clone(&counters),
            stamp_ms_last: 0,
        };
        // The batcher ends when every clone of this node (every sender) is gone.
        tokio::spawn(batcher.run(submit_rx));
        LedgerNode { inner: Arc::new(Inner { raft, state, submit_tx, counters }) }
    }

    /// Submits one command; concurrent submits are coalesced (group commit) into one
    /// [`Batch`] = one Raft entry, stamped with the leader's wall clock. Returns this
    /// command's outcome. Waits at most [`SUBMIT_TIMEOUT`](crate::SUBMIT_TIMEOUT).
    pub async fn submit(&self, command: Command) -> Result<Outcome, LedgerError> {
        // Checked here so a malformed command never enters the log; `Ledger::apply` checks
        // again and would give the same rejection.
        if let Err(rejection) = command.op.validate() {
            return Ok(Err(rejection));
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        let submission = Submission { command, reply: reply_tx };
        let exchange = async {
            self.inner.submit_tx.send(submission).await.map_err(|_| LedgerError::Shutdown)?;
            reply_rx.await.map_err(|_| LedgerError::Shutdown)?
        };
        match tokio::time::timeout(SUBMIT_TIMEOUT, exchange).await {
            Ok(result) => result,
            Err(_elapsed) => Err(LedgerError::Timeout(SUBMIT_TIMEOUT)),
        }
    }

    /// Linearizable read of the state machine: confirms leadership with a quorum and waits
    /// until everything committed before the call is applied, then runs `f`.
    pub async fn read<R>(&self, f: impl FnOnce(&Ledger) -> R) -> Result<R, LedgerError> {
        self.inner.raft.ensure_linearizable().await.map_err(LedgerError::from_check_leader)?;
        Ok(self.read_local(f))
    }

    /// Possibly-stale local read, no Raft round (for hot-path caches like key lookup).
    /// `f` runs under the state lock, which holds back applies: keep it short.
    pub fn read_local<R>(&self, f: impl FnOnce(&Ledger) -> R) -> R {
        f(&self.inner.state.read().ledger)
    }

    /// Stops the Raft core. Later submits and reads fail with [`LedgerError::Shutdown`].
    pub async fn shutdown(&self) -> Result<(), LedgerError> {
        self.inner.raft.shutdown().await.map_err(|e| LedgerError::Unavailable {
            reason: format!("raft core failed while shutting down: {e}"),
        })
    }

    pub fn stats(&self) -> NodeStats {
        let metrics = self.inner.raft.metrics().borrow().clone();
        NodeStats {
            last_log_index: metrics.last_log_index,
            last_applied_index: metrics.last_applied.map(|id| id.index),
            snapshot_index: metrics.snapshot.map(|id| id.index),
            purged_index: metrics.purged.map(|id| id.index),
            n_batches_proposed: self.inner.counters.n_batches.load(Ordering::Relaxed),
            n_commands_proposed: self.inner.counters.n_commands.load(Ordering::Relaxed),
        }
    }
}

struct Inner {
    raft: Raft,
    state: Arc<SharedState>,
    submit_tx: mpsc::Sender<Submission>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    n_batches: AtomicU64,
    n_commands: AtomicU64,
}

struct Submission {
    command: Command,
    reply: oneshot::Sender<Result<Outcome, LedgerError>>,
}

/// Group commit: one task drains whatever submissions are queued (up to
/// `BATCH_COMMANDS_MAX`) and proposes them as one entry. While an entry is being committed
/// the next submissions queue up, so the batch size follows the load with no timer: a
/// command waits at most for the proposal in flight plus its own.
struct Batcher {
    raft: Raft,
    state: Arc<SharedState>,
    counters: Arc<Counters>,
    stamp_ms_last: u64,
}

impl Batcher {
    async fn run(mut self, mut submit_rx: mpsc::Receiver<Submission>) {
        let mut submissions = Vec::with_capacity(BATCH_COMMANDS_MAX);
        while submit_rx.recv_many(&mut submissions, BATCH_COMMANDS_MAX).await > 0 {
            assert!(submissions.len() <= BATCH_COMMANDS_MAX);
            let (commands, replies): (Vec<Command>, Vec<_>) =
                submissions.drain(..).map(|s| (s.command, s.reply)).unzip();
            self.counters.n_batches.fetch_add(1, Ordering::Relaxed);
            self.counters.n_commands.fetch_add(commands.len() as u64, Ordering::Relaxed);
            let batch = Batch { stamp_ms: self.next_stamp_ms(), commands };
            let n_commands = batch.commands.len();
            match self.raft.client_write(batch).await {
                Ok(response) => {
                    assert_eq!(response.data.len(), n_commands, "one outcome per command");
                    for (reply, outcome) in replies.into_iter().zip(response.data) {
                        // A submitter that timed out has dropped its receiver; nothing to do.
                        let _ = reply.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    let error = LedgerError::from_client_write(e);
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }

    /// The leader's wall clock in ms, never below the previous stamp nor below the state's
    /// (a clock stepped back, or a new leader whose clock lags, must not move time back).
    fn next_stamp_ms(&mut self) -> u64 {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
        let applied_ms = self.state.read().ledger.stamp_ms();
        self.stamp_ms_last = now_ms.max(self.stamp_ms_last).max(applied_ms);
        self.stamp_ms_last
    }
}

/// Opens sled, retrying while its file lock is held: a node that was just shut down or
/// dropped in this process releases the lock only when openraft's storage tasks finish.
async fn open_db(data_dir: &Path) -> Result<sled::Db, LedgerError> {
    let config = sled::Config::new().path(data_dir).cache_capacity(SLED_CACHE_BYTES);
    let mut attempt = 1;
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e)) if is_lock_held(&e) && attempt < OPEN_LOCK_ATTEMPTS_MAX => {
                attempt += 1;
                tokio::time::sleep(OPEN_LOCK_RETRY_INTERVAL).await;
            }
            Err(e) => return Err(LedgerError::storage("opening the data directory", e)),
        }
    }
}

/// sled reports a held lock only through its message.
fn is_lock_held(error: &std::io::Error) -> bool {
    error.to_string().contains("could not acquire lock")
}

fn raft_config(options: &NodeOptions) -> Result<Config, LedgerError> {
    let config = Config {
        cluster_name: "solrouter-ledger".to_owned(),
        heartbeat_interval: HEARTBEAT_INTERVAL.as_millis() as u64,
        election_timeout_min: ELECTION_TIMEOUT_MIN.as_millis() as u64,
        election_timeout_max: ELECTION_TIMEOUT_MAX.as_millis() as u64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(options.snapshot_every_entries),
        max_in_snapshot_log_to_keep: options.entries_kept_after_snapshot,
        ..Config::default()
    };
    config.validate().map_err(|_| LedgerError::InvalidOptions("rejected by openraft"))
}
