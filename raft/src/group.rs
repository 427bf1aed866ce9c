//! One Raft group (shard) on one node: its Raft instance, its ledger replica and its
//! group-commit batcher.

use crate::error::LedgerError;
use crate::kv::{KvTree, RedbStore};
use crate::log_store::LogStore;
use crate::state_machine::{SharedState, StateMachine};
use crate::types::{NodeId, Raft};
use crate::{NodeStats, SUBMIT_QUEUE_MAX, SUBMIT_TIMEOUT};
use openraft::{Config, RaftNetworkFactory};
use solrouter_ledger::{Batch, Command, Ledger, Outcome, BATCH_COMMANDS_MAX};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// Where batch stamps come from, in ms since the Unix epoch: [`wall_clock_ms`] in
/// production, the simulation's virtual clock in tests.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock in ms since the Unix epoch (0 if it is set before 1970).
fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

pub struct Group {
    raft: Raft,
    state: Arc<SharedState>,
    submit_tx: mpsc::Sender<Submission>,
    counters: Arc<Counters>,
}

impl Group {
    /// Opens group `group_idx`'s storage in `store` and starts its Raft instance and
    /// batcher.
    pub async fn start<N: RaftNetworkFactory<crate::types::TypeConfig>>(
        node_id: NodeId,
        group_idx: u32,
        store: &RedbStore,
        config: Arc<Config>,
        network: N,
    ) -> Result<Group, LedgerError> {
        let state_machine = StateMachine::open(store, group_idx)
            .map_err(|e| LedgerError::storage("restoring the snapshot", e))?;
        let log_store = LogStore::open(store, group_idx, state_machine.saved_snapshot());
        let clock: Clock = Arc::new(wall_clock_ms);
        Group::start_with(node_id, log_store, state_machine, config, network, clock).await
    }

    /// Starts a group over already opened stores, stamping batches with `clock`.
    pub async fn start_with<K: KvTree, N: RaftNetworkFactory<crate::types::TypeConfig>>(
        node_id: NodeId,
        log_store: LogStore<K>,
        state_machine: StateMachine<K>,
        config: Arc<Config>,
        network: N,
        clock: Clock,
    ) -> Result<Group, LedgerError> {
        let state = state_machine.shared();
        let raft = Raft::new(node_id, config, network, log_store, state_machine)
            .await
            .map_err(|e| LedgerError::from_fatal("starting raft", e))?;
        let (submit_tx, submit_rx) = mpsc::channel(SUBMIT_QUEUE_MAX);
        let counters = Arc::new(Counters::default());
        let batcher = Batcher {
            raft: raft.clone(),
            state: Arc::clone(&state),
            counters: Arc::clone(&counters),
            clock,
            stamp_ms_last: 0,
        };
        // The batcher ends when the group (the only sender) is dropped.
        tokio::spawn(batcher.run(submit_rx));
        Ok(Group { raft, state, submit_tx, counters })
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub async fn submit(&self, command: Command) -> Result<Outcome, LedgerError> {
        // Checked here so a malformed command never enters the log; `Ledger::apply` checks
        // again and would give the same rejection.
        if let Err(rejection) = command.op.validate() {
            return Ok(Err(rejection));
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        let submission = Submission { command, reply: reply_tx };
        let exchange = async {
            self.submit_tx.send(submission).await.map_err(|_| LedgerError::Shutdown)?;
            reply_rx.await.map_err(|_| LedgerError::Shutdown)?
        };
        match tokio::time::timeout(SUBMIT_TIMEOUT, exchange).await {
            Ok(result) => result,
            Err(_elapsed) => Err(LedgerError::Timeout(SUBMIT_TIMEOUT)),
        }
    }

    pub async fn read<R>(&self, f: impl FnOnce(&Ledger) -> R) -> Result<R, LedgerError> {
        self.raft.ensure_linearizable().await.map_err(LedgerError::from_check_leader)?;
        Ok(self.read_local(f))
    }

    pub fn read_local<R>(&self, f: impl FnOnce(&Ledger) -> R) -> R {
        f(&self.state.read().ledger)
    }

    pub async fn shutdown(&self) -> Result<(), LedgerError> {
        self.raft.shutdown().await.map_err(|e| LedgerError::Unavailable {
            reason: format!("raft core failed while shutting down: {e}"),
        })
    }

    pub fn stats(&self) -> NodeStats {
        let metrics = self.raft.metrics().borrow().clone();
        NodeStats {
            last_log_index: metrics.last_log_index,
            last_applied_index: metrics.last_applied.map(|id| id.index),
            snapshot_index: metrics.snapshot.map(|id| id.index),
            purged_index: metrics.purged.map(|id| id.index),
            leader_id: metrics.current_leader,
            n_batches_proposed: self.counters.n_batches.load(Ordering::Relaxed),
            n_commands_proposed: self.counters.n_commands.load(Ordering::Relaxed),
        }
    }
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
    clock: Clock,
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
            match self.propose(batch).await {
                Ok(outcomes) => {
                    assert_eq!(outcomes.len(), n_commands, "one outcome per command");
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        // A submitter that timed out has dropped its receiver; nothing to do.
                        let _ = reply.send(Ok(outcome));
                    }
                }
                Err(error) => {
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }

    /// Proposes `batch` and waits for its outcomes, or until this node stops leading the
    /// term it proposed in, whichever comes first. Openraft 0.9 answers a write whose entry
    /// was truncated, but never one whose entry was replaced by a snapshot from the next
    /// leader (a restarted node resumes leading its old term, takes a write, and is then
    /// caught up by snapshot): waiting for that answer would wedge the batcher, and every
    /// later command of this group on this node, for good. Found by the simulation. A
    /// write given up on may still commit under the next leader; as with any `NotLeader`,
    /// the caller retries it with the same op id, which is idempotent.
    async fn propose(&self, batch: Batch) -> Result<Vec<Outcome>, LedgerError> {
        let mut metrics = self.raft.metrics();
        let (node_id, term) = {
            let now = metrics.borrow();
            (now.id, now.current_term)
        };
        let deposed =
            metrics.wait_for(|now| now.current_term != term || now.current_leader != Some(node_id));
        tokio::select! {
            biased;
            written = self.raft.client_write(batch) => {
                written.map(|response| response.data).map_err(LedgerError::from_client_write)
            }
            seen = deposed => {
                let seen = seen.ok();
                let leader_id = seen.as_ref().and_then(|now| now.current_leader);
                let leader_addr = leader_id.and_then(|leader| {
                    let membership = seen.as_ref()?.membership_config.membership();
                    membership.get_node(&leader).map(|node| node.addr.clone())
                });
                Err(LedgerError::NotLeader { leader_id, leader_addr })
            }
        }
    }

    /// The leader's clock in ms, never below the previous stamp nor below the state's
    /// (a clock stepped back, or a new leader whose clock lags, must not move time back).
    fn next_stamp_ms(&mut self) -> u64 {
        let now_ms = (self.clock)();
        let applied_ms = self.state.read().ledger.stamp_ms();
        self.stamp_ms_last = now_ms.max(self.stamp_ms_last).max(applied_ms);
        self.stamp_ms_last
    }
}
