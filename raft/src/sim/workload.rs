//! Clients playing gateways: random top-ups, reserves, settles and releases, each with a
//! fresh op id, sent to the leader they believe in and retried idempotently (same op id)
//! across elections, crashes and partitions. Every command and the outcome acknowledged
//! for it, if any, goes into the [`History`] the checks are made against.

use super::cluster::{Cluster, SubmitError};
use crate::error::LedgerError;
use crate::types::NodeId;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use solrouter_ledger::{
    AccountId, Command, HoldId, KeyHash, KeyId, Op, OpId, Outcome, PicoUsd, Reply, RequestRecord,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A client's deadline for one attempt: several election timeouts, as a gateway's would be.
pub const ATTEMPT_DEADLINE: Duration = Duration::from_millis(1_500);
/// Attempts at one command before a client gives up on it during the faults; the command
/// is then in doubt until the checks resolve it.
const ATTEMPTS_MAX: u32 = 12;
/// Pause after the first failed attempt, drawn up to this; it doubles with each further
/// failure up to [`RETRY_PAUSE_MAX`] (jittered exponential backoff, as a gateway does).
const RETRY_PAUSE_FIRST: Duration = Duration::from_millis(20);
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(500);
/// Pause between two commands of one client, drawn up to this.
const THINK_MAX: Duration = Duration::from_millis(20);
/// One amount unit: a micro-dollar.
const UNIT: u128 = 1_000_000;

/// Every command clients sent, and what was acknowledged for it. Bounded by the run: a
/// client sends at most one command per round trip, for seconds of simulated time.
#[derive(Default)]
pub struct History {
    records: Mutex<Vec<Record>>,
}

#[derive(Clone, Debug)]
pub struct Record {
    pub command: Command,
    /// `None` while in doubt: the client gave up without an answer, so the command may or
    /// may not have been applied.
    pub outcome: Option<Outcome>,
}

impl History {
    pub fn push(&self, record: Record) -> usize {
        let mut records = self.records.lock().expect("history lock poisoned");
        records.push(record);
        records.len() - 1
    }

    pub fn records(&self) -> Vec<Record> {
        self.records.lock().expect("history lock poisoned").clone()
    }

    pub fn set_outcome(&self, record_idx: usize, outcome: Outcome) {
        self.records.lock().expect("history lock poisoned")[record_idx].outcome = Some(outcome);
    }
}

/// A client's view of where each group's leader is, and how it submits.
pub struct Router {
    cluster: Arc<Cluster>,
    leaders: Vec<NodeId>,
    rng: StdRng,
}

impl Router {
    pub fn new(cluster: Arc<Cluster>, rng: StdRng) -> Router {
        let leaders = vec![1; cluster.shape.n_groups as usize];
        Router { cluster, leaders, rng }
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Submits until an outcome arrives or `attempts_max` attempts failed. Follows leader
    /// hints; after any other failure tries a random node after a pause.
    pub async fn submit(&mut self, command: &Command, attempts_max: u32) -> Option<Outcome> {
        let group = self.cluster.group_of(command.op.account());
        let mut pause_max = RETRY_PAUSE_FIRST;
        for _ in 0..attempts_max {
            let target = self.leaders[group as usize];
            let result =
                self.cluster.submit(target, group, command.clone(), ATTEMPT_DEADLINE).await;
            if let Err(e) = &result {
                let what = format!("op {:x} at node {target}: {e:?}", command.id.0);
                self.cluster.trace.detail(self.cluster.now_ms(), what);
            }
            match result {
                Ok(outcome) => return Some(outcome),
                Err(SubmitError::Ledger(LedgerError::NotLeader {
                    leader_id: Some(leader),
                    ..
                })) if leader != target => {
                    self.leaders[group as usize] = leader;
                    continue;
                }
                Err(_) => {
                    let ids = self.cluster.node_ids();
                    self.leaders[group as usize] = *ids.choose(&mut self.rng).expect("nodes");
                    let pause = self.rng.gen_range(Duration::ZERO..=pause_max);
                    pause_max = (pause_max * 2).min(RETRY_PAUSE_MAX);
                    tokio::time::sleep(pause).await;
                }
            }
        }
        None
    }
}

pub struct Client {
    id: u64,
    router: Router,
    history: Arc<History>,
    accounts: Vec<AccountId>,
    /// Holds this client reserved and has not settled or released yet.
    holds: Vec<(AccountId, HoldId, PicoUsd)>,
    /// Its own acknowledged records, to replay some of them mid-run.
    acknowledged: Vec<(Command, Outcome)>,
    n_commands: u64,
}

impl Client {
    pub fn new(id: u64, router: Router, history: Arc<History>, accounts: Vec<AccountId>) -> Self {
        Client {
            id,
            router,
            history,
            accounts,
            holds: Vec::new(),
            acknowledged: Vec::new(),
            n_commands: 0,
        }
    }

    /// Sends random commands until the simulated clock reaches `until_ms`.
    pub async fn run(mut self, until_ms: u64) {
        while self.router.cluster.now_ms() < until_ms {
            if !self.acknowledged.is_empty() && self.router.rng.gen_ratio(1, 10) {
                self.replay_one().await;
            } else {
                let command = self.next_command();
                let outcome = self.router.submit(&command, ATTEMPTS_MAX).await;
                self.record(command, outcome);
            }
            let think = self.router.rng.gen_range(Duration::ZERO..=THINK_MAX);
            tokio::time::sleep(think).await;
        }
    }

    /// Resends an acknowledged command: the ledger must answer with the same outcome, at
    /// any time and whoever leads (the exactly-once check, during the faults).
    async fn replay_one(&mut self) {
        let idx = self.router.rng.gen_range(0..self.acknowledged.len());
        let (command, first) = self.acknowledged[idx].clone();
        if let Some(again) = self.router.submit(&command, ATTEMPTS_MAX).await {
            assert_eq!(again, first, "replaying acknowledged {command:?} changed its outcome");
        }
    }

    fn record(&mut self, command: Command, outcome: Option<Outcome>) {
        let cluster = &self.router.cluster;
        let what = match &outcome {
            Some(outcome) => format!("client {} {} -> {outcome:?}", self.id, describe(&command)),
            None => format!("client {} {} in doubt", self.id, describe(&command)),
        };
        cluster.trace.event(cluster.now_ms(), what);
        if let Some(outcome) = &outcome {
            if let (Op::Reserve { account, hold, amount, .. }, Ok(Reply::Reserved { .. })) =
                (&command.op, outcome)
            {
                self.holds.push((*account, *hold, *amount));
            }
            self.acknowledged.push((command.clone(), outcome.clone()));
        }
        self.history.push(Record { command, outcome });
    }

    fn next_id(&mut self) -> u128 {
        self.n_commands += 1;
        (u128::from(self.id) << 64) | u128::from(self.n_commands)
    }

    fn next_command(&mut self) -> Command {
        let id = self.next_id();
        let rng = &mut self.router.rng;
        let account = *self.accounts.choose(rng).expect("accounts");
        let roll = rng.gen_range(0..100);
        let op = if roll < 20 {
            Op::Credit { account, amount: PicoUsd(rng.gen_range(1..=1_000) * UNIT) }
        } else if roll < 55 || self.holds.is_empty() {
            // Hold lifetimes from shorter than an election to several: some expire while
            // the cluster is partitioned, and their settle becomes a direct debit.
            Op::Reserve {
                account,
                key: KeyId(account.0),
                hold: HoldId(id),
                amount: PicoUsd(rng.gen_range(1..=300) * UNIT),
                ttl_ms: rng.gen_range(50..=5_000),
            }
        } else {
            let (account, hold, held) = self.holds.swap_remove(rng.gen_range(0..self.holds.len()));
            if roll < 85 {
                // Up to 1.5× the hold, so some settles debit an excess.
                let actual = PicoUsd(rng.gen_range(0..=held.0 * 3 / 2));
                let record = RequestRecord { model: "sim".to_owned(), ..RequestRecord::default() };
                Op::Settle { account, hold, actual, record }
            } else {
                Op::Release { account, hold }
            }
        };
        Command { id: OpId(id), op }
    }
}

/// A command in one short line for the trace.
pub fn describe(command: &Command) -> String {
    let id = command.id.0;
    match &command.op {
        Op::CreateAccount { account, .. } => format!("op {id:x} create {:x}", account.0),
        Op::Credit { account, amount } => format!("op {id:x} credit {:x} {}", account.0, amount.0),
        Op::Reserve { account, key, hold, amount, ttl_ms } => format!(
            "op {id:x} reserve {:x} key {:x} hold {:x} {} for {ttl_ms} ms",
            account.0, key.0, hold.0, amount.0
        ),
        Op::Settle { account, hold, actual, .. } => {
            format!("op {id:x} settle {:x} hold {:x} {}", account.0, hold.0, actual.0)
        }
        Op::Release { account, hold } => {
            format!("op {id:x} release {:x} hold {:x}", account.0, hold.0)
        }
        Op::CreateKey { .. } | Op::RevokeKey { .. } => format!("op {id:x} {:?}", command.op),
    }
}

/// A key's hash in the simulation: distinct per key id (the ledger refuses a second key
/// with the same hash).
pub fn key_hash(key: KeyId) -> KeyHash {
    let mut hash = [0u8; 32];
    hash[..8].copy_from_slice(&key.0.to_le_bytes());
    hash
}
