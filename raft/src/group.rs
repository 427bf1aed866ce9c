//! One Raft group (shard) on one node: its Raft instance, its ledger replica and its
//! group-commit batcher.

use crate::error::LedgerError;
use crate::history::History;
use crate::kv::{KvTree, RedbStore};
use crate::ledger_clock::LedgerClock;
use crate::log_store::LogStore;
use crate::state_machine::{SharedState, StateMachine};
use crate::types::{NodeId, Raft};
use crate::{NodeStats, PROPOSALS_IN_FLIGHT_MAX, SUBMIT_QUEUE_MAX, SUBMIT_TIMEOUT};
use openraft::error::RaftError;
use openraft::{Config, RaftNetworkFactory};
use solrouter_ledger::{Batch, Command, Ledger, Outcome, BATCH_COMMANDS_MAX};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// The wall clock batch stamps converge on (see [`LedgerClock`]), in ms since the Unix
/// epoch: [`wall_clock_ms`] in production, the simulation's virtual clock in tests.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock in ms since the Unix epoch (0 if it is set before 1970).
pub(crate) fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

pub struct Group {
    raft: Raft,
    state: Arc<SharedState>,
    submit_tx: mpsc::Sender<Submission>,
    counters: Arc<Counters>,
    clock: Arc<Mutex<LedgerClock>>,
}

impl Group {
    /// Opens group `group_idx`'s storage in `store` and starts its Raft instance and
    /// batcher; the records its entries settle go to the node's `history`.
    pub async fn start<N: RaftNetworkFactory<crate::types::TypeConfig>>(
        node_id: NodeId,
        group_idx: u32,
        store: &RedbStore,
        history: History,
        config: Arc<Config>,
        network: N,
    ) -> Result<Group, LedgerError> {
        let state_machine = StateMachine::open(store, group_idx, history)
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
        let clock = Arc::new(Mutex::new(LedgerClock::new(clock)));
        let group = Group { raft, state, submit_tx, counters, clock };
        let batcher = Batcher {
            raft: group.raft.clone(),
            state: Arc::clone(&group.state),
            counters: Arc::clone(&group.counters),
            clock: Arc::clone(&group.clock),
        };
        // The batcher ends when the group (the only sender) is dropped.
        tokio::spawn(batcher.run(submit_rx));
        Ok(group)
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

    /// The stamp for a batch proposed now (see [`LedgerClock`]).
    pub fn next_stamp_ms(&self) -> u64 {
        next_stamp_ms(&self.clock, &self.state)
    }

    pub async fn shutdown(&self) -> Result<(), LedgerError> {
        self.raft.shutdown().await.map_err(|e| LedgerError::Unavailable {
            reason: format!("raft core failed while shutting down: {e}"),
        })
    }

    /// Why this group's Raft stopped on its own, if it did: openraft stops the core on any
    /// storage error (EIO, a full disk, a corrupt record), and the group then answers
    /// nothing until its process restarts.
    pub fn stopped(&self) -> Option<LedgerError> {
        let running = self.raft.metrics().borrow().running_state.clone();
        running.err().map(|fatal| LedgerError::from_fatal("running raft", fatal))
    }

    /// Waits until this group's Raft stops (see [`Group::stopped`]) and says why.
    pub async fn until_stopped(&self) -> LedgerError {
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(why) = self.stopped() {
                return why;
            }
            if metrics.changed().await.is_err() {
                return LedgerError::Shutdown;
            }
        }
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
            n_clock_jumps: self.clock.lock().expect("clock lock poisoned").n_jumps(),
            proposals_in_flight: self.counters.in_flight.load(Ordering::Relaxed),
            n_commits: self.counters.n_commits.load(Ordering::Relaxed),
            commit_us_total: self.counters.commit_us_total.load(Ordering::Relaxed),
            snapshot_build_ms_last: self.state.snapshot_build_ms_last.load(Ordering::Relaxed),
            snapshot_bytes_last: self.state.snapshot_bytes_last.load(Ordering::Relaxed),
        }
    }
}

#[derive(Default)]
struct Counters {
    n_batches: AtomicU64,
    n_commands: AtomicU64,
    in_flight: AtomicU64,
    n_commits: AtomicU64,
    commit_us_total: AtomicU64,
}

struct Submission {
    command: Command,
    reply: oneshot::Sender<Result<Outcome, LedgerError>>,
}

/// Group commit: one task drains whatever submissions are queued (up to
/// `BATCH_COMMANDS_MAX`) and proposes them as one entry, then goes on to the next batch
/// while that one replicates, with at most [`PROPOSALS_IN_FLIGHT_MAX`] entries proposed
/// and not yet answered. Batches are proposed in order from this one task; each one's
/// outcomes are awaited in a task of its own. While every slot is taken the next
/// submissions queue up, so the batch size follows the load with no timer. Submissions
/// whose caller has gone meanwhile are dropped unproposed.
struct Batcher {
    raft: Raft,
    state: Arc<SharedState>,
    counters: Arc<Counters>,
    clock: Arc<Mutex<LedgerClock>>,
}

impl Batcher {
    async fn run(self, mut submit_rx: mpsc::Receiver<Submission>) {
        let slots = Arc::new(Semaphore::new(PROPOSALS_IN_FLIGHT_MAX));
        let mut submissions = Vec::with_capacity(BATCH_COMMANDS_MAX);
        loop {
            let slot = Arc::clone(&slots).acquire_owned().await.expect("never closed");
            if submit_rx.recv_many(&mut submissions, BATCH_COMMANDS_MAX).await == 0 {
                return;
            }
            assert!(submissions.len() <= BATCH_COMMANDS_MAX);
            // A caller that gave up (its deadline passed, its client went away) waits for
            // nothing: proposing its command would only add a copy beside its retry.
            submissions.retain(|submission| !submission.reply.is_closed());
            if submissions.is_empty() {
                continue;
            }
            let (commands, replies): (Vec<Command>, Vec<_>) =
                submissions.drain(..).map(|s| (s.command, s.reply)).unzip();
            self.counters.n_batches.fetch_add(1, Ordering::Relaxed);
            self.counters.n_commands.fetch_add(commands.len() as u64, Ordering::Relaxed);
            let batch = Batch { stamp_ms: next_stamp_ms(&self.clock, &self.state), commands };
            let n_commands = batch.commands.len();
            let proposed_at = std::time::Instant::now();
            let answered = self.propose(batch).await;
            let counters = Arc::clone(&self.counters);
            counters.in_flight.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let answer = answered.await;
                counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                counters.n_commits.fetch_add(1, Ordering::Relaxed);
                let took_us = u64::try_from(proposed_at.elapsed().as_micros()).unwrap_or(u64::MAX);
                counters.commit_us_total.fetch_add(took_us, Ordering::Relaxed);
                match answer {
                    Ok(outcomes) => {
                        assert_eq!(outcomes.len(), n_commands, "one outcome per command");
                        for (reply, outcome) in replies.into_iter().zip(outcomes) {
                            // A submitter that timed out has dropped its receiver.
                            let _ = reply.send(Ok(outcome));
                        }
                    }
                    Err(error) => {
                        for reply in replies {
                            let _ = reply.send(Err(error.clone()));
                        }
                    }
                }
                drop(slot);
            });
        }
    }

    /// Proposes `batch` (in the order of the calls) and returns what waits for its
    /// outcomes, or until this node stops leading the term it proposed in, whichever comes
    /// first. Openraft 0.9 answers a write whose entry was truncated, but never one whose
    /// entry was replaced by a snapshot from the next leader (a restarted node resumes
    /// leading its old term, takes a write, and is then caught up by snapshot): waiting
    /// for that answer would hold a proposal slot, and in the end every later command of
    /// this group on this node, for good. Found by the simulation. A write given up on may
    /// still commit under the next leader; as with any `NotLeader`, the caller retries it
    /// with the same op id, which is idempotent.
    async fn propose(
        &self,
        batch: Batch,
    ) -> impl Future<Output = Result<Vec<Outcome>, LedgerError>> + Send + 'static {
        let mut metrics = self.raft.metrics();
        let (node_id, term) = {
            let now = metrics.borrow();
            (now.id, now.current_term)
        };
        let proposed = self.raft.client_write_ff(batch).await;
        async move {
            let answer = proposed.map_err(|e| LedgerError::from_fatal("proposing a batch", e))?;
            let deposed = metrics
                .wait_for(|now| now.current_term != term || now.current_leader != Some(node_id));
            tokio::select! {
                biased;
                written = answer => match written {
                    Ok(Ok(response)) => Ok(response.data),
                    Ok(Err(e)) => Err(LedgerError::from_client_write(RaftError::APIError(e))),
                    // The core dropped the answer: it stopped.
                    Err(_) => Err(LedgerError::Shutdown),
                },
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
    }
}

/// The stamp for a batch proposed now, never below the state's (a new leader continues
/// from it).
fn next_stamp_ms(clock: &Mutex<LedgerClock>, state: &SharedState) -> u64 {
    let applied_ms = state.read().ledger.stamp_ms();
    clock.lock().expect("clock lock poisoned").next_stamp_ms(applied_ms)
}
