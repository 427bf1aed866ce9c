//! Clients playing gateways: random top-ups, key creations and revocations, reserves,
//! settles and releases, each with a fresh op id, sent to the leader they believe in and
//! retried idempotently (same op id) across elections, crashes and partitions; and the
//! gateway's request path: reserve with a time-to-live, wait for the "provider" (at times
//! longer than the hold lives), settle with usage that may exceed the hold and the funds.
//! Every command, when it was first sent and when (if ever) its outcome arrived goes into
//! the [`History`] the checks are made against.
//!
//! A retry of an acknowledged command must answer its first outcome ([`History::answered_again`]:
//! a settle retried past the ended-hold window may instead be refused as forgotten, never
//! charged again; a reserve or release first refused is decided afresh, as the ledger
//! remembers no refusal of theirs); past the ledger's op-id and ended-hold windows only
//! top-ups and settles are retried ([`retriable`]).

use super::cluster::{Cluster, SubmitError};
use crate::error::LedgerError;
use crate::reads::LedgerApi;
use crate::types::NodeId;
use crate::LedgerClient;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use solrouter_ledger::{
    AccountId, Command, HoldId, KeyHash, KeyId, KeyKind, KeyLimits, Op, OpId, Outcome, PicoUsd,
    Rejection, Reply, RequestRecord, HOLDS_REMEMBERED_FOR_MS, OPS_REMEMBERED_FOR_MS,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
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
/// Hold lifetimes of the request path: a few election timeouts to several seconds, so
/// ledger outages (see the nemesis) outlast many of them.
const REQUEST_TTL_MS_MIN: u64 = 100;
pub const REQUEST_TTL_MS_MAX: u64 = 3_000;
/// How far ledger time (batch stamps, which the windows are measured in) may be off the
/// simulated time since an acknowledgement: clock skew, and ledger time that advances by
/// the leader's monotonic time, are well within it.
pub const WINDOW_MARGIN_MS: u64 = 10_000;
/// Rounds of [`ATTEMPTS_MAX`] attempts a client that resolves its own in-doubt commands
/// makes before it leaves one in doubt.
const IN_DOUBT_ROUNDS_MAX: u32 = 20;

/// Whether a retry `age_ms` of simulated time after an outcome may come past the ledger's
/// op-id or ended-hold window.
pub fn late(age_ms: u64) -> bool {
    age_ms + WINDOW_MARGIN_MS >= OPS_REMEMBERED_FOR_MS.min(HOLDS_REMEMBERED_FOR_MS)
}

/// Whether `op` is retried `age_ms` after its outcome, and so whether the ledger must
/// answer it again ([`History::answered_again`]): within the windows any op; past them top-ups
/// (remembered for the account's life) and settles (refused once their hold is forgotten,
/// never charged twice), though no gateway retries a settle that late.
pub fn retriable(op: &Op, age_ms: u64) -> bool {
    !late(age_ms) || matches!(op, Op::Credit { .. } | Op::Settle { .. })
}

/// Every command clients sent, and what was acknowledged for it, and the keys that exist.
/// Bounded by the run: a client sends at most one command per round trip, for seconds of
/// simulated time.
#[derive(Default)]
pub struct History {
    records: Mutex<Vec<Record>>,
    /// Keys whose creation was acknowledged, by account.
    keys: Mutex<Vec<(AccountId, KeyId)>>,
    /// A logical clock ordering sends and acknowledgements: the run is one thread, so
    /// "sent after that was acknowledged" is exactly `sent > answered`.
    ticks: AtomicU64,
    /// Retries of acknowledged commands made past the op-id window.
    n_late_retries: AtomicU64,
    /// Late settle retries refused as forgotten (and not charged again).
    n_forgotten_settles: AtomicU64,
    /// The answer a retry admitted, by op id, for reserves and releases whose first answer
    /// was a refusal (see [`History::answered_again`]).
    admitted_on_retry: Mutex<BTreeMap<OpId, Outcome>>,
}

#[derive(Clone, Debug)]
pub struct Record {
    pub command: Command,
    /// `None` while in doubt: the client gave up without an answer, so the command may or
    /// may not have been applied.
    pub outcome: Option<Outcome>,
    /// [`History::tick`] when the command was first sent, and when its outcome arrived.
    pub sent: u64,
    pub answered: u64,
    /// Simulated time the command was first sent, in ms since the cluster started: it may
    /// have been applied as early as then (an attempt whose answer was lost), so a retry's
    /// age against the ledger's windows counts from it, not from the answer.
    pub sent_ms: u64,
}

impl History {
    pub fn tick(&self) -> u64 {
        self.ticks.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn push(&self, record: Record) -> usize {
        let mut records = self.records.lock().expect("history lock poisoned");
        records.push(record);
        records.len() - 1
    }

    pub fn records(&self) -> Vec<Record> {
        self.records.lock().expect("history lock poisoned").clone()
    }

    pub fn set_outcome(&self, record_idx: usize, outcome: Outcome) {
        let answered = self.tick();
        let mut records = self.records.lock().expect("history lock poisoned");
        records[record_idx].outcome = Some(outcome);
        records[record_idx].answered = answered;
    }

    /// Counts a retry made past the ledger's windows (see [`late`]).
    pub fn retried_late(&self) {
        self.n_late_retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn n_late_retries(&self) -> u64 {
        self.n_late_retries.load(Ordering::Relaxed)
    }

    /// Checks `again`, the outcome of retrying acknowledged `command` `age_ms` after its
    /// `first`: the first outcome, or for a settle retried late, the refusal of a forgotten
    /// hold (which charges nothing; counted). A reserve or release the ledger refused left
    /// nothing, not even the refusal (`Op::is_deduplicated_by_hold`), so its retry is
    /// decided afresh: it may be refused otherwise or admitted (the funds or the hold came
    /// since), never refused as a conflict (no other operation has its hold); once a retry
    /// is admitted, the hold answers every later one as it answered that one.
    pub fn answered_again(&self, command: &Command, first: &Outcome, again: &Outcome, age_ms: u64) {
        let forgotten =
            matches!((&command.op, again), (Op::Settle { .. }, Err(Rejection::HoldForgotten)));
        if forgotten && late(age_ms) {
            self.n_forgotten_settles.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if first.is_err() && matches!(command.op, Op::Reserve { .. } | Op::Release { .. }) {
            assert!(
                !matches!(again, Err(Rejection::HoldExists | Rejection::IdReused)),
                "retrying refused {command:?} found its hold taken: {again:?}"
            );
            if again.is_ok() {
                let mut admitted = self.admitted_on_retry.lock().expect("history lock poisoned");
                let earlier = admitted.entry(command.id).or_insert_with(|| again.clone());
                assert_eq!(again, earlier, "retrying {command:?} changed what a retry admitted");
            }
            return;
        }
        assert_eq!(again, first, "retrying acknowledged {command:?} changed its outcome");
    }

    pub fn n_forgotten_settles(&self) -> u64 {
        self.n_forgotten_settles.load(Ordering::Relaxed)
    }

    pub fn add_key(&self, account: AccountId, key: KeyId) {
        self.keys.lock().expect("keys lock poisoned").push((account, key));
    }

    /// The keys of `account` created so far, oldest first (revoked ones included).
    fn keys_of(&self, account: AccountId) -> Vec<KeyId> {
        let keys = self.keys.lock().expect("keys lock poisoned");
        keys.iter().filter(|(owner, _)| *owner == account).map(|(_, key)| *key).collect()
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

/// What a client sent through its gateway: calls of the gateway's client (each a
/// command's attempt), and outcomes acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Through {
    pub n_calls: u64,
    pub n_acknowledged: u64,
}

pub struct Client {
    id: u64,
    router: Router,
    /// A gateway's production client, if this client is a gateway: its commands then go
    /// through it (its own routing, retries within `CLIENT_CALL_DEADLINE`, batching, gRPC)
    /// to the nodes' ledger API, over the simulated network; else straight to the
    /// nodes' groups through `router`.
    gateway: Option<LedgerClient>,
    /// What this client sent through its gateway.
    through_gateway: Through,
    history: Arc<History>,
    accounts: Vec<AccountId>,
    /// Holds this client reserved and has not settled or released yet, with the stamp
    /// their reserve was answered with (which their settle carries).
    holds: Vec<(AccountId, HoldId, PicoUsd, u64)>,
    /// Its own acknowledged records, to replay some of them mid-run, with the simulated
    /// time they were first sent.
    acknowledged: Vec<(Command, Outcome, u64)>,
    n_commands: u64,
    /// Whether it retries a command left without an answer until one comes, as a gateway
    /// does within its deadline, instead of leaving it in doubt for the final checks: in
    /// runs longer than the op-id window, where a late retry could not settle the doubt.
    resolves_in_doubt: bool,
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
            resolves_in_doubt: false,
            gateway: None,
            through_gateway: Through::default(),
        }
    }

    /// A client that sends its commands through `gateway` (see the field).
    pub fn through(self, gateway: LedgerClient) -> Client {
        Client { gateway: Some(gateway), ..self }
    }

    /// A client that retries each command until it has an answer (see the field).
    pub fn resolving_in_doubt(self) -> Client {
        Client { resolves_in_doubt: true, ..self }
    }

    /// Sends random commands until the simulated clock reaches `until_ms`; says what went
    /// through its gateway.
    pub async fn run(mut self, until_ms: u64) -> Through {
        while self.router.cluster.now_ms() < until_ms {
            if !self.acknowledged.is_empty() && self.router.rng.gen_ratio(1, 10) {
                self.replay_one().await;
            } else if self.router.rng.gen_ratio(1, 4) {
                self.request().await;
            } else {
                let command = self.next_command();
                self.send(command).await;
            }
            let think = self.router.rng.gen_range(Duration::ZERO..=THINK_MAX);
            tokio::time::sleep(think).await;
        }
        self.through_gateway
    }

    /// One attempt as this client makes it: through its gateway (one call, which retries
    /// within the client's deadline), else up to [`ATTEMPTS_MAX`] through the router.
    async fn submit(&mut self, command: &Command) -> Option<Outcome> {
        let Some(gateway) = &self.gateway else {
            return self.router.submit(command, ATTEMPTS_MAX).await;
        };
        self.through_gateway.n_calls += 1;
        let cluster = &self.router.cluster;
        match gateway.submit(command.clone()).await {
            Ok(outcome) => {
                self.through_gateway.n_acknowledged += 1;
                cluster.invariants.acknowledged(cluster.group_of(command.op.account()), command.id);
                Some(outcome)
            }
            Err(e) => {
                let what =
                    format!("client {} op {:x} through its gateway: {e}", self.id, command.id.0);
                cluster.trace.detail(cluster.now_ms(), what);
                None
            }
        }
    }

    /// Resends an acknowledged command a gateway may still retry ([`retriable`]): the
    /// ledger must answer with the same outcome, at any time and whoever leads (the
    /// exactly-once check, during the faults).
    async fn replay_one(&mut self) {
        let idx = self.router.rng.gen_range(0..self.acknowledged.len());
        let (command, first, sent_ms) = self.acknowledged[idx].clone();
        let age_ms = self.router.cluster.now_ms() - sent_ms;
        if !retriable(&command.op, age_ms) {
            return;
        }
        if late(age_ms) {
            self.history.retried_late();
        }
        if let Some(again) = self.submit(&command).await {
            self.history.answered_again(&command, &first, &again, age_ms);
        }
    }

    /// A gateway's request: reserve with a time-to-live, the provider's answer after a
    /// delay that at times outlives the hold, then a settle of what the provider reported,
    /// up to three times the hold (over-reporting: beyond the funds it is written off).
    /// A reserve without an answer is released, as the gateway does.
    async fn request(&mut self) {
        let id = self.next_id();
        let rng = &mut self.router.rng;
        let account = *self.accounts.choose(rng).expect("accounts");
        let ttl_ms = rng.gen_range(REQUEST_TTL_MS_MIN..=REQUEST_TTL_MS_MAX);
        let amount = PicoUsd(rng.gen_range(1..=300) * UNIT);
        let key = self.key_for(account);
        let hold = HoldId(id);
        let reserve = Op::Reserve { account, key, hold, amount, ttl_ms };
        let reserved_at_ms = match self.send(Command { id: OpId(id), op: reserve }).await {
            Some(Ok(Reply::Reserved { reserved_at_ms, .. })) => reserved_at_ms,
            Some(_) => return,
            None => {
                let id = self.next_id();
                self.send(Command { id: OpId(id), op: Op::Release { account, hold } }).await;
                return;
            }
        };
        // It is this request's hold, not one for the random settles and releases.
        self.holds.retain(|(_, held, ..)| *held != hold);
        let rng = &mut self.router.rng;
        let upstream_ms = rng.gen_range(0..=ttl_ms * 3 / 2);
        let actual = PicoUsd(rng.gen_range(0..=amount.0 * 3));
        tokio::time::sleep(Duration::from_millis(upstream_ms)).await;
        // Made when the ledger stamped its reserve, as a gateway's is (near its clock).
        let created_ms = reserved_at_ms;
        let model = "sim".to_owned();
        let record =
            RequestRecord { key: Some(key), model, created_ms, ..RequestRecord::default() };
        let id = self.next_id();
        let op = Op::Settle { account, hold, actual, record, reserved_at_ms };
        self.send(Command { id: OpId(id), op }).await;
    }

    /// A key of `account` to reserve with: mostly its newest, at times any (revoked ones
    /// too, which the ledger must refuse).
    fn key_for(&mut self, account: AccountId) -> KeyId {
        let keys = self.history.keys_of(account);
        let rng = &mut self.router.rng;
        let newest = *keys.last().expect("every account has a key");
        if rng.gen_ratio(1, 4) {
            *keys.choose(rng).expect("every account has a key")
        } else {
            newest
        }
    }

    /// Submits a command as a gateway would (bounded retries) and records it.
    async fn send(&mut self, command: Command) -> Option<Outcome> {
        let sent = self.history.tick();
        let sent_ms = self.router.cluster.now_ms();
        let mut outcome = self.submit(&command).await;
        let rounds = if self.resolves_in_doubt { IN_DOUBT_ROUNDS_MAX } else { 1 };
        for _ in 1..rounds {
            if outcome.is_some() {
                break;
            }
            outcome = self.submit(&command).await;
        }
        self.record(command, outcome.clone(), sent, sent_ms);
        outcome
    }

    fn record(&mut self, command: Command, outcome: Option<Outcome>, sent: u64, sent_ms: u64) {
        let answered = if outcome.is_some() { self.history.tick() } else { 0 };
        let cluster = &self.router.cluster;
        let what = match &outcome {
            Some(outcome) => format!("client {} {} -> {outcome:?}", self.id, describe(&command)),
            None => format!("client {} {} in doubt", self.id, describe(&command)),
        };
        cluster.trace.event(cluster.now_ms(), what);
        if let Some(outcome) = &outcome {
            if let (
                Op::Reserve { account, hold, amount, .. },
                Ok(Reply::Reserved { reserved_at_ms, .. }),
            ) = (&command.op, outcome)
            {
                self.holds.push((*account, *hold, *amount, *reserved_at_ms));
            }
            if let (Op::CreateKey { account, key, .. }, Ok(Reply::KeyCreated)) =
                (&command.op, outcome)
            {
                self.history.add_key(*account, *key);
            }
            self.acknowledged.push((command.clone(), outcome.clone(), sent_ms));
        }
        self.history.push(Record { command, outcome, sent, answered, sent_ms });
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
        } else if roll < 24 {
            let keys = self.history.keys_of(account);
            Op::RevokeKey { account, key: *keys.choose(rng).expect("every account has a key") }
        } else if roll < 28 {
            let key = KeyId((self.id << 32) | self.n_commands);
            let (name, hash) = ("sim".to_owned(), key_hash(key));
            let (kind, limits) = (KeyKind::Inference, KeyLimits::default());
            Op::CreateKey { account, key, name, hash, kind, limits }
        } else if roll < 55 || self.holds.is_empty() {
            // Hold lifetimes from shorter than an election to several: some expire while
            // the cluster is partitioned, and their settle is charged within the funds.
            let ttl_ms = rng.gen_range(50..=5_000);
            let amount = PicoUsd(rng.gen_range(1..=300) * UNIT);
            let key = self.key_for(account);
            Op::Reserve { account, key, hold: HoldId(id), amount, ttl_ms }
        } else {
            let (account, hold, held, reserved_at_ms) =
                self.holds.swap_remove(rng.gen_range(0..self.holds.len()));
            if roll < 85 {
                // Up to 1.5× the hold, so some settles charge beyond it.
                let actual = PicoUsd(rng.gen_range(0..=held.0 * 3 / 2));
                let model = "sim".to_owned();
                let created_ms = reserved_at_ms;
                let record = RequestRecord { model, created_ms, ..RequestRecord::default() };
                Op::Settle { account, hold, actual, record, reserved_at_ms }
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
        Op::CreateKey { .. }
        | Op::RevokeKey { .. }
        | Op::UpdateKey { .. }
        | Op::CreateUser { .. }
        | Op::RevokeSession { .. } => format!("op {id:x} {:?}", command.op),
    }
}

/// A key's hash in the simulation: distinct per key id (the ledger refuses a second key
/// with the same hash).
pub fn key_hash(key: KeyId) -> KeyHash {
    let mut hash = [0u8; 32];
    hash[..8].copy_from_slice(&key.0.to_le_bytes());
    hash
}
