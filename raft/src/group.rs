//! One Raft group (shard) on one node: its Raft instance, its ledger replica and its
//! group-commit batcher.

use crate::compaction;
use crate::encoded::EncodedEntries;
use crate::error::LedgerError;
use crate::history::History;
use crate::kv::{KvTree, NodeStores};
use crate::ledger_clock::LedgerClock;
use crate::log_store::LogStore;
use crate::state_machine::{SharedState, StateMachine};
use crate::types::{Member, NodeId, Raft};
use crate::{
    NodeStats, PIPELINED_BATCH_MIN, PROPOSALS_IN_FLIGHT_MAX, SUBMIT_QUEUE_MAX, SUBMIT_TIMEOUT,
};
use metrics::Histogram;
use openraft::error::RaftError;
use openraft::{Config, RaftMetrics, RaftNetworkFactory, StoredMembership};
use solrouter_ledger::{Batch, Command, Ledger, Outcome, Rejection, BATCH_COMMANDS_MAX};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};

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
    /// [`SUBMIT_QUEUE_MAX`] permits, one per command waiting for the batcher.
    room: Arc<Semaphore>,
    counters: Arc<Counters>,
    clock: Arc<Mutex<LedgerClock>>,
    caught_up: Arc<CaughtUp>,
    /// The batcher's proposal slots (see [`Batcher`]); [`Group::pause_proposals`] takes
    /// them all, [`Group::propose_beside_batcher`] one.
    slots: Arc<Semaphore>,
    /// Notified when a slot comes free, which wakes the batcher.
    slot_freed: Arc<Notify>,
}

impl Group {
    /// Opens group `group_idx`'s storage in `stores` and starts its Raft instance and
    /// batcher; the records its entries settle go to the node's `history`, and its log
    /// keeps its entries' encodings in `encoded`, which `network` reads (none without
    /// peers).
    pub async fn start<N: RaftNetworkFactory<crate::types::TypeConfig>>(
        node_id: NodeId,
        group_idx: u32,
        stores: &NodeStores,
        history: History,
        config: Arc<Config>,
        network: N,
        encoded: Option<Arc<EncodedEntries>>,
    ) -> Result<Group, LedgerError> {
        let state_machine = StateMachine::open(stores, group_idx, history)
            .await
            .map_err(|e| LedgerError::storage("restoring the snapshot", e))?;
        let saved_snapshot = state_machine.saved_snapshot();
        let log_store = LogStore::open(&stores.log, group_idx, saved_snapshot, encoded);
        let clock: Clock = Arc::new(wall_clock_ms);
        Group::start_with(node_id, log_store, state_machine, config, network, clock).await
    }

    /// Starts a group over already opened stores, stamping batches with `clock`.
    pub async fn start_with<
        L: KvTree,
        S: KvTree,
        N: RaftNetworkFactory<crate::types::TypeConfig>,
    >(
        node_id: NodeId,
        log_store: LogStore<L>,
        state_machine: StateMachine<S>,
        config: Arc<Config>,
        network: N,
        clock: Clock,
    ) -> Result<Group, LedgerError> {
        let state = state_machine.shared();
        let group_label = log_store.group().to_string();
        let commit_seconds =
            metrics::histogram!("solrouter_ledger_commit_seconds", "group" => group_label);
        let raft = Raft::new(node_id, config, network, log_store, state_machine)
            .await
            .map_err(|e| LedgerError::from_fatal("starting raft", e))?;
        let (submit_tx, submit_rx) = mpsc::channel(SUBMIT_QUEUE_MAX);
        let counters = Arc::new(Counters::default());
        let clock = Arc::new(Mutex::new(LedgerClock::new(clock)));
        let room = Arc::new(Semaphore::new(SUBMIT_QUEUE_MAX));
        let caught_up = Arc::default();
        let slots = Arc::new(Semaphore::new(PROPOSALS_IN_FLIGHT_MAX));
        let slot_freed = Arc::new(Notify::new());
        let group =
            Group { raft, state, submit_tx, room, counters, clock, caught_up, slots, slot_freed };
        let batcher = Batcher {
            raft: group.raft.clone(),
            state: Arc::clone(&group.state),
            counters: Arc::clone(&group.counters),
            clock: Arc::clone(&group.clock),
            caught_up: Arc::clone(&group.caught_up),
            slots: Arc::clone(&group.slots),
            slot_freed: Arc::clone(&group.slot_freed),
            commit_seconds,
        };
        // The batcher ends when the group (the only sender) is dropped.
        tokio::spawn(batcher.run(submit_rx));
        Ok(group)
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Whether this replica leads the group, as far as it knows.
    pub(crate) fn leads(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics.current_leader == Some(metrics.id)
    }

    pub async fn submit(&self, command: Command) -> Result<Outcome, LedgerError> {
        let mut outcomes = self.submit_many(vec![command]).await?;
        assert_eq!(outcomes.len(), 1, "one outcome per command");
        Ok(outcomes.pop().expect("one outcome"))
    }

    /// Submits `commands` (at most [`BATCH_COMMANDS_MAX`], e.g. one `LedgerService`
    /// submit) together: they go into one entry, in order, through one queue slot and one
    /// reply, instead of a channel, a reply and a timer per command. Answers one outcome
    /// per command, in order.
    pub async fn submit_many(&self, commands: Vec<Command>) -> Result<Vec<Outcome>, LedgerError> {
        assert!(commands.len() <= BATCH_COMMANDS_MAX, "checked by every caller");
        // Checked here so a malformed command never enters the log; `Ledger::apply` checks
        // again and would give the same rejection.
        if commands.iter().all(|command| command.op.validate().is_ok()) {
            return self.propose(commands).await;
        }
        // Rare: some are malformed. Only this path keeps each command's verdict.
        let verdicts: Vec<Result<(), Rejection>> =
            commands.iter().map(|command| command.op.validate()).collect();
        let valid = commands.into_iter().zip(&verdicts).filter(|(_, verdict)| verdict.is_ok());
        let valid: Vec<Command> = valid.map(|(command, _)| command).collect();
        let mut proposed =
            if valid.is_empty() { Vec::new() } else { self.propose(valid).await? }.into_iter();
        let outcomes = verdicts.into_iter().map(|verdict| match verdict {
            Ok(()) => proposed.next().expect("one outcome per proposed command"),
            Err(rejection) => Err(rejection),
        });
        Ok(outcomes.collect())
    }

    /// Queues `commands` (valid, at least one) for the batcher and waits for their
    /// outcomes, within [`SUBMIT_TIMEOUT`].
    async fn propose(&self, commands: Vec<Command>) -> Result<Vec<Outcome>, LedgerError> {
        let n_commands = u32::try_from(commands.len()).expect("at most BATCH_COMMANDS_MAX");
        let (reply_tx, reply_rx) = oneshot::channel();
        let exchange = async {
            let room = Arc::clone(&self.room).acquire_many_owned(n_commands).await;
            let room = room.map_err(|_| LedgerError::Shutdown)?;
            let submission = Submission { commands, reply: reply_tx, _room: room };
            self.submit_tx.send(submission).await.map_err(|_| LedgerError::Shutdown)?;
            reply_rx.await.map_err(|_| LedgerError::Shutdown)?
        };
        match tokio::time::timeout(SUBMIT_TIMEOUT, exchange).await {
            Ok(result) => result,
            Err(_elapsed) => Err(LedgerError::Timeout(SUBMIT_TIMEOUT)),
        }
    }

    /// Stops this group's batcher from proposing until the returned guard is dropped, once
    /// every proposal in flight has been answered: a leader handing the group over
    /// (`leadership.rs`) must not append while its successor campaigns. Submissions queue
    /// meanwhile, and are then answered `NotLeader` if the hand-over happened.
    pub(crate) async fn pause_proposals(&self) -> SlotsHeld {
        self.hold_slots(PROPOSALS_IN_FLIGHT_MAX).await
    }

    /// One of the batcher's slots, for an entry appended beside the batcher (an expiry's
    /// empty batch, a membership change) while it is held: so that entry waits while
    /// proposals are paused, and a pause waits for it. Appended anyway, it would end the
    /// log past the entry a successor was told to hold, and the leader would refuse the
    /// successor's vote: a hand-over lost to an election.
    pub(crate) async fn slot_beside_batcher(&self) -> SlotsHeld {
        self.hold_slots(1).await
    }

    /// Proposes `batch` beside the batcher (an expiry's empty batch) on one of its slots
    /// ([`Group::slot_beside_batcher`]) and waits for its outcomes as the batcher does
    /// ([`propose`]).
    pub(crate) async fn propose_beside_batcher(
        &self,
        batch: Batch,
    ) -> Result<Vec<Outcome>, LedgerError> {
        let _slot = self.slot_beside_batcher().await;
        propose(&self.raft, batch).await.await
    }

    async fn hold_slots(&self, n: usize) -> SlotsHeld {
        let n = u32::try_from(n).expect("a few slots");
        let slots = Arc::clone(&self.slots).acquire_many_owned(n).await;
        let slots = slots.expect("the slots' semaphore is never closed");
        SlotsHeld { slots: Some(slots), slot_freed: Arc::clone(&self.slot_freed) }
    }

    pub async fn read<R>(&self, f: impl FnOnce(&Ledger) -> R) -> Result<R, LedgerError> {
        self.raft.ensure_linearizable().await.map_err(LedgerError::from_check_leader)?;
        Ok(self.read_local(f))
    }

    /// Whether this replica's snapshot of the group is due (`compaction.rs`): entries
    /// counted as openraft's own policy counts them, from the snapshot's next index.
    pub(crate) fn snapshot_due(&self, every_entries: u64) -> bool {
        let next = |index: Option<u64>| index.map_or(0, |index| index + 1);
        let entries_since = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let applied = next(metrics.last_applied.map(|id| id.index));
            applied.saturating_sub(next(metrics.snapshot.map(|id| id.index)))
        };
        let remembered = self
            .read_local(|ledger| ledger.n_ended_holds_remembered() + ledger.n_op_ids_remembered());
        let commands_since = self.state.commands_since_snapshot();
        compaction::snapshot_due(entries_since, commands_since, remembered as u64, every_entries)
    }

    /// Where `node_id` stands among the group's members (voters and learners) in the order
    /// of their ids, and how many they are; a node that is not (or not yet) a member
    /// stands after them all.
    pub(crate) fn position_of(&self, node_id: NodeId) -> (u64, u64) {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let n_members = membership.nodes().count() as u64;
        let position = membership.nodes().position(|(id, _)| *id == node_id);
        position.map_or((n_members, n_members + 1), |position| (position as u64, n_members))
    }

    pub fn read_local<R>(&self, f: impl FnOnce(&Ledger) -> R) -> R {
        f(&self.state.read().ledger)
    }

    /// The last entry this replica applied, or installed a snapshot through (0 before
    /// any).
    pub(crate) fn applied_index(&self) -> u64 {
        self.state.read().last_applied.map_or(0, |id| id.index)
    }

    /// The stamp for a batch proposed now (see [`LedgerClock`]): the applied state's
    /// unless this node leads and has caught up in its term (see `Batcher::caught_up`).
    pub fn next_stamp_ms(&self) -> u64 {
        let term = self.caught_up.term(&self.raft.metrics().borrow());
        match term {
            Some(term) => next_stamp_ms(&self.clock, &self.state, term),
            None => self.state.read().ledger.stamp_ms(),
        }
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
        stopped(&self.raft)
    }

    /// Waits until this group's Raft stops (see [`Group::stopped`]) and says why.
    ///
    /// Watches the server metrics, which change with votes, leaders and membership only:
    /// openraft 0.9 sends the full metrics at every turn of its core, changed or not, and
    /// so woke this wait at every turn. Their sender goes with the core, after it has
    /// recorded why it stopped.
    pub async fn until_stopped(&self) -> LedgerError {
        let mut server = self.raft.server_metrics();
        while server.changed().await.is_ok() {}
        self.stopped().unwrap_or(LedgerError::Shutdown)
    }

    pub fn stats(&self) -> NodeStats {
        let metrics = self.raft.metrics().borrow().clone();
        let (n_clock_jumps, wall_ms) = {
            let clock = self.clock.lock().expect("clock lock poisoned");
            (clock.n_jumps(), clock.wall_ms())
        };
        let (stamp_ms, n_ended_holds_remembered, n_op_ids_remembered) = {
            let applied = self.state.read();
            let ledger = &applied.ledger;
            let count = |n: usize| n as u64;
            (
                ledger.stamp_ms(),
                count(ledger.n_ended_holds_remembered()),
                count(ledger.n_op_ids_remembered()),
            )
        };
        let time_behind_ms = (stamp_ms > 0).then(|| {
            let behind_ms = i128::from(wall_ms) - i128::from(stamp_ms);
            i64::try_from(behind_ms).unwrap_or(i64::MAX)
        });
        NodeStats {
            last_log_index: metrics.last_log_index,
            last_applied_index: metrics.last_applied.map(|id| id.index),
            snapshot_index: metrics.snapshot.map(|id| id.index),
            purged_index: metrics.purged.map(|id| id.index),
            leader_id: metrics.current_leader,
            n_batches_proposed: self.counters.n_batches.load(Ordering::Relaxed),
            n_commands_proposed: self.counters.n_commands.load(Ordering::Relaxed),
            n_clock_jumps,
            proposals_in_flight: self.counters.in_flight.load(Ordering::Relaxed),
            n_commits: self.counters.n_commits.load(Ordering::Relaxed),
            commit_us_total: self.counters.commit_us_total.load(Ordering::Relaxed),
            snapshot_build_ms_last: self.state.snapshot_build_ms_last.load(Ordering::Relaxed),
            snapshot_encode_ms_last: self.state.snapshot_encode_ms_last.load(Ordering::Relaxed),
            snapshot_bytes_last: self.state.snapshot_bytes_last.load(Ordering::Relaxed),
            time_behind_ms,
            n_ended_holds_remembered,
            n_op_ids_remembered,
        }
    }
}

/// Proposal slots of a group, held until this is dropped: all of them
/// ([`Group::pause_proposals`]), and its batcher proposes nothing meanwhile, or one for an
/// entry appended beside the batcher ([`Group::slot_beside_batcher`]).
pub(crate) struct SlotsHeld {
    slots: Option<OwnedSemaphorePermit>,
    slot_freed: Arc<Notify>,
}

impl Drop for SlotsHeld {
    fn drop(&mut self) {
        // The slots first: woken before they are free, the batcher would find none and
        // wait for a proposal that is not in flight.
        drop(self.slots.take());
        self.slot_freed.notify_one();
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

/// Commands submitted together, answered together.
struct Submission {
    commands: Vec<Command>,
    reply: oneshot::Sender<Result<Vec<Outcome>, LedgerError>>,
    /// One permit of the group's queue room per command, given back once the batcher
    /// has taken the commands into a batch: at most [`SUBMIT_QUEUE_MAX`] commands wait.
    _room: OwnedSemaphorePermit,
}

/// The submissions the batcher holds for its next batch: at most [`BATCH_COMMANDS_MAX`]
/// commands, and the first submission that did not fit, which starts the batch after.
#[derive(Default)]
struct Queued {
    submissions: Vec<Submission>,
    n_commands: usize,
    overflow: Option<Submission>,
}

impl Queued {
    fn push(&mut self, submission: Submission) {
        assert!(self.overflow.is_none(), "nothing is taken once full");
        if self.n_commands + submission.commands.len() > BATCH_COMMANDS_MAX {
            self.overflow = Some(submission);
        } else {
            self.n_commands += submission.commands.len();
            self.submissions.push(submission);
        }
    }

    fn is_full(&self) -> bool {
        self.overflow.is_some() || self.n_commands == BATCH_COMMANDS_MAX
    }

    /// Takes the submissions of the next batch, leaving the one that did not fit (if any)
    /// as the start of the next.
    fn take(&mut self) -> Vec<Submission> {
        let taken = std::mem::take(&mut self.submissions);
        self.n_commands = 0;
        if let Some(submission) = self.overflow.take() {
            self.push(submission);
        }
        taken
    }
}

/// Group commit: one task drains whatever submissions are queued (up to
/// `BATCH_COMMANDS_MAX` commands; a submission's commands stay together) and proposes
/// them as one entry, then goes on to the next batch
/// while that one replicates, with at most [`PROPOSALS_IN_FLIGHT_MAX`] entries proposed
/// and not yet answered; an entry joins others in flight only with at least
/// [`PIPELINED_BATCH_MIN`] commands, smaller batches wait until every proposal is
/// answered (or grow to that size meanwhile). Batches are proposed in order from this one
/// task; each one's outcomes are awaited in a task of its own. While submissions wait they
/// queue up, so the batch size follows the load with no timer. Submissions whose caller
/// has gone meanwhile are dropped unproposed.
struct Batcher {
    raft: Raft,
    state: Arc<SharedState>,
    counters: Arc<Counters>,
    clock: Arc<Mutex<LedgerClock>>,
    caught_up: Arc<CaughtUp>,
    /// At most [`PROPOSALS_IN_FLIGHT_MAX`] proposals in flight, one slot each.
    slots: Arc<Semaphore>,
    /// Notified when a slot comes free: a proposal answered, or a pause ended.
    slot_freed: Arc<Notify>,
    /// Each entry's commit, proposal to outcome, for its distribution (the counters give
    /// its mean).
    commit_seconds: Histogram,
}

impl Batcher {
    async fn run(self, mut submit_rx: mpsc::Receiver<Submission>) {
        let mut queued = Queued::default();
        loop {
            let next = next_slot(&self.slots, &self.slot_freed, &mut submit_rx, &mut queued);
            let Some(slot) = next.await else {
                return;
            };
            while !queued.is_full() {
                match submit_rx.try_recv() {
                    Ok(submission) => queued.push(submission),
                    Err(_) => break,
                }
            }
            let mut submissions = queued.take();
            let leading = self.caught_up().await;
            // A caller that gave up (its deadline passed, its client went away) waits for
            // nothing: proposing its commands would only add a copy beside its retry.
            submissions.retain(|submission| !submission.reply.is_closed());
            if submissions.is_empty() {
                continue;
            }
            let term = match leading {
                Ok(term) => term,
                Err(not_leader) => {
                    for submission in submissions {
                        let _ = submission.reply.send(Err(not_leader.clone()));
                    }
                    continue;
                }
            };
            let n_commands: usize = submissions.iter().map(|s| s.commands.len()).sum();
            assert!(n_commands <= BATCH_COMMANDS_MAX);
            let mut commands = Vec::with_capacity(n_commands);
            let mut replies = Vec::with_capacity(submissions.len());
            for submission in submissions {
                replies.push((submission.reply, submission.commands.len()));
                commands.extend(submission.commands);
            }
            self.counters.n_batches.fetch_add(1, Ordering::Relaxed);
            self.counters.n_commands.fetch_add(n_commands as u64, Ordering::Relaxed);
            let stamp_ms = next_stamp_ms(&self.clock, &self.state, term);
            let batch = Batch { stamp_ms, commands };
            let proposed_at = std::time::Instant::now();
            let answered = propose(&self.raft, batch).await;
            let counters = Arc::clone(&self.counters);
            counters.in_flight.fetch_add(1, Ordering::Relaxed);
            let slot_freed = Arc::clone(&self.slot_freed);
            let commit_seconds = self.commit_seconds.clone();
            tokio::spawn(async move {
                let answer = answered.await;
                let took = proposed_at.elapsed();
                commit_seconds.record(took);
                counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                counters.n_commits.fetch_add(1, Ordering::Relaxed);
                let took_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                counters.commit_us_total.fetch_add(took_us, Ordering::Relaxed);
                match answer {
                    Ok(outcomes) => {
                        assert_eq!(outcomes.len(), n_commands, "one outcome per command");
                        let mut outcomes = outcomes.into_iter();
                        for (reply, n) in replies {
                            // A submitter that timed out has dropped its receiver.
                            let _ = reply.send(Ok(outcomes.by_ref().take(n).collect()));
                        }
                    }
                    Err(error) => {
                        for (reply, _) in replies {
                            let _ = reply.send(Err(error.clone()));
                        }
                    }
                }
                drop(slot);
                slot_freed.notify_one();
            });
        }
    }

    /// Waits until this node, while it leads, has applied every entry its log held when
    /// it was first seen leading its term (in this process), and returns that term. A
    /// batch is stamped from the applied state's stamp, and a leader whose state still
    /// lagged its log (just restarted, replaying) stamped from its own wall clock, so a
    /// clock stepped ahead on that node moved ledger time by the step (the simulation,
    /// seed 16 of `a_run_beyond_the_ledger_windows_…`, saw 46 minutes: live holds voided,
    /// op ids forgotten early). Waiting for an entry of its own term to apply was not
    /// enough: a node restarted after a power loss resumes leading its old term (openraft
    /// 0.9), that term's first entry applied, its later ones not
    /// (`sim::a_leader_restarted_with_its_clock_ahead_stamps_from_its_log_not_its_clock`).
    /// A node that does not lead refuses at once, unstamped.
    async fn caught_up(&self) -> Result<u64, LedgerError> {
        let mut metrics = self.raft.metrics();
        let (term, last_log_index) = {
            let now = metrics.borrow();
            if let Some(term) = self.caught_up.term(&now) {
                return Ok(term);
            }
            if now.current_leader != Some(now.id) {
                return Err(not_leader(now.current_leader, &now.membership_config));
            }
            (now.current_term, now.last_log_index)
        };
        let seen = metrics
            .wait_for(|now| {
                let applied = now.last_applied.map(|log_id| log_id.index);
                now.current_leader != Some(now.id)
                    || now.current_term != term
                    || applied >= last_log_index
            })
            .await
            .map_err(|_| stopped(&self.raft).unwrap_or(LedgerError::Shutdown))?;
        if seen.current_leader != Some(seen.id) || seen.current_term != term {
            return Err(not_leader(seen.current_leader, &seen.membership_config));
        }
        self.caught_up.term.store(term + 1, Ordering::Relaxed);
        Ok(term)
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
///
/// The wait watches the server metrics (votes, leaders, membership), not the full
/// metrics, which openraft 0.9 sends at every turn of its core, changed or not: each
/// proposal's wait was woken at every turn for nothing. Their vote is the one on disk, which
/// may trail the term proposed in but never passes it while this node leads it.
async fn propose(
    raft: &Raft,
    batch: Batch,
) -> impl Future<Output = Result<Vec<Outcome>, LedgerError>> + Send + 'static {
    let mut server = raft.server_metrics();
    let (node_id, term) = {
        let now = raft.metrics();
        let now = now.borrow();
        (now.id, now.current_term)
    };
    let proposed = raft.client_write_ff(Arc::new(batch)).await;
    async move {
        let answer = proposed.map_err(|e| LedgerError::from_fatal("proposing a batch", e))?;
        let deposed = server.wait_for(|now| {
            now.vote.leader_id().get_term() > term || now.current_leader != Some(node_id)
        });
        tokio::select! {
            biased;
            written = answer => match written {
                Ok(Ok(response)) => Ok(response.data),
                Ok(Err(e)) => Err(LedgerError::from_client_write(RaftError::APIError(e))),
                // The core dropped the answer: it stopped.
                Err(_) => Err(LedgerError::Shutdown),
            },
            seen = deposed => match seen {
                Ok(now) => Err(not_leader(now.current_leader, &now.membership_config)),
                Err(_) => Err(LedgerError::NotLeader { leader_id: None, leader_addr: None }),
            },
        }
    }
}

/// Waits until the `queued` submissions (filled from `submit_rx`) may be proposed and
/// takes a proposal slot for them: at once when no proposal is in flight, else once they
/// number [`PIPELINED_BATCH_MIN`] commands and a slot is free. `None` once the submit
/// channel is closed and drained.
async fn next_slot(
    slots: &Arc<Semaphore>,
    slot_freed: &Notify,
    submit_rx: &mut mpsc::Receiver<Submission>,
    queued: &mut Queued,
) -> Option<OwnedSemaphorePermit> {
    loop {
        if queued.n_commands == 0 {
            queued.push(submit_rx.recv().await?);
            continue;
        }
        let idle = slots.available_permits() == PROPOSALS_IN_FLIGHT_MAX;
        if idle || queued.n_commands >= PIPELINED_BATCH_MIN {
            if let Ok(slot) = Arc::clone(slots).try_acquire_owned() {
                return Some(slot);
            }
        }
        // A proposal answered frees a slot (and may leave none in flight); more
        // submissions may make the batch worth its own entry. `notify_one` keeps a wake-up
        // that comes before this wait, so none is lost.
        let room = !queued.is_full();
        tokio::select! {
            // In a fixed order: the simulation replays a seed only if the batcher is
            // deterministic.
            biased;
            () = slot_freed.notified() => {}
            received = submit_rx.recv(), if room => queued.push(received?),
        }
    }
}

/// The stamp for a batch proposed now, never below the state's (a new leader continues
/// from it).
fn next_stamp_ms(clock: &Mutex<LedgerClock>, state: &SharedState, term: u64) -> u64 {
    let applied_ms = state.read().ledger.stamp_ms();
    clock.lock().expect("clock lock poisoned").next_stamp_ms(applied_ms, term)
}

/// `NotLeader`, naming the leader a node knows of and its address in `membership`.
fn not_leader(
    leader_id: Option<NodeId>,
    membership: &StoredMembership<NodeId, Member>,
) -> LedgerError {
    let leader_addr = leader_id.and_then(|leader| {
        let node = membership.membership().get_node(&leader)?;
        Some(node.addr.clone())
    });
    LedgerError::NotLeader { leader_id, leader_addr }
}

/// Why `raft` stopped on its own, if it did (see [`Group::stopped`]).
fn stopped(raft: &Raft) -> Option<LedgerError> {
    let running = raft.metrics().borrow().running_state.clone();
    running.err().map(|fatal| LedgerError::from_fatal("running raft", fatal))
}

/// The term in which this node's batcher caught up (see `Batcher::caught_up`): only a
/// leader caught up in its term stamps from its clock.
#[derive(Default)]
struct CaughtUp {
    /// The term plus one; 0 before any.
    term: AtomicU64,
}

impl CaughtUp {
    /// The term `metrics` say this node leads, if it caught up in it.
    fn term(&self, metrics: &RaftMetrics<NodeId, Member>) -> Option<u64> {
        let leads = metrics.current_leader == Some(metrics.id);
        let caught_up = self.term.load(Ordering::Relaxed).checked_sub(1);
        (leads && caught_up == Some(metrics.current_term)).then_some(metrics.current_term)
    }
}
