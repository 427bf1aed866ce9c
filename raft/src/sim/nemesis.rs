//! The nemesis: a seeded schedule of faults run against the cluster while the clients
//! work. Partitions (random halves, one isolated node, one-way cuts), network weather
//! (loss, duplication, delay and delay spikes), slow disks, process pauses, and node
//! crashes and restarts, the current leader a favourite target: crashes right after a
//! named write (a vote, an append, the committed index, a purge, a snapshot), crashes in
//! the middle of an election, ledger outages longer than a hold lives, and wall clocks
//! stepped forward or back, and disks failing for a while (EIO on every call, or ENOSPC
//! on writes): a node whose Raft stopped on the error is restarted once the disk works;
//! and an operator changing the membership meanwhile: adding a node under a new id,
//! removing a voter, re-adding a removed node, replacing a voter whose disk was wiped.

use super::cluster::Cluster;
use super::network::Weather;
use super::storage::{IoFault, WriteKind};
use crate::types::NodeId;
use crate::{ELECTION_TIMEOUT_MAX, ELECTION_TIMEOUT_MIN};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use std::time::Duration;

/// How many times slower a node's CPU runs while slow (its applies and snapshot builds
/// take that much more virtual time), and for how long.
const CPU_SLOWDOWN_MIN: u64 = 10;
const CPU_SLOWDOWN_MAX: u64 = 300;
const SLOW_CPU_MIN: Duration = Duration::from_millis(500);
const SLOW_CPU_MAX: Duration = Duration::from_secs(5);
/// Pause between two faults, drawn up to this: several faults per election timeout at
/// the short end, a quiet stretch in which the cluster makes progress at the long end.
const FAULT_PAUSE_MAX: Duration = Duration::from_millis(600);
/// How long an outage lasts, drawn from this range: beyond the longest hold of the
/// request path (`workload::REQUEST_TTL_MS_MAX`), so holds expire meanwhile and the
/// settles that wait the outage out arrive late.
const OUTAGE_MIN: Duration = Duration::from_millis(3_500);
const OUTAGE_MAX: Duration = Duration::from_millis(6_000);
const _: () = assert!(OUTAGE_MIN.as_millis() > super::workload::REQUEST_TTL_MS_MAX as u128);
/// A slow disk's syncs take up to this long, drawn from this range: from a busy device
/// to one stalling beyond an election timeout.
const SLOW_SYNC_MS_MIN: u64 = 50;
const SLOW_SYNC_MS_MAX: u64 = 800;
/// How long a process pause lasts, drawn from this range: from a GC stall to a VM frozen
/// for several election timeouts (a paused leader resumes deposed, its messages stale).
const PAUSE_MIN: Duration = Duration::from_millis(50);
const PAUSE_MAX: Duration = Duration::from_millis(3_000);
/// How long a crash waits for the write it is to strike right after.
const NAMED_WRITE_WAIT_MAX: Duration = Duration::from_millis(1_000);
/// How long a disk fails, drawn from this range: from one failed write to a disk full
/// for several election timeouts.
const DISK_FAILURE_MIN: Duration = Duration::from_millis(20);
const DISK_FAILURE_MAX: Duration = Duration::from_millis(3_000);
/// Largest wall clock step, either way: an hour, a VM resumed or a time zone mistaken.
const CLOCK_STEP_MS_MAX: i64 = 3_600_000;
/// Voters the operator keeps: never fewer (a group of two stalls on any fault), never
/// more (each costs replication in every run).
const VOTERS_MIN: usize = 3;
const VOTERS_MAX: usize = 5;
/// Membership steps after healing before the change counts as stuck: each waits for a
/// leader, so a few elections' worth.
const MEMBERSHIP_STEPS_AFTER_HEAL_MAX: u32 = 60;
const MEMBERSHIP_STEP_PAUSE: Duration = Duration::from_millis(200);

pub struct Nemesis {
    cluster: std::sync::Arc<Cluster>,
    rng: StdRng,
    /// When the faults end (simulated ms).
    until_ms: u64,
}

impl Nemesis {
    pub fn new(cluster: std::sync::Arc<Cluster>, rng: StdRng) -> Nemesis {
        Nemesis { cluster, rng, until_ms: 0 }
    }

    /// Injects faults until the simulated clock reaches `until_ms`.
    pub async fn run(mut self, until_ms: u64) {
        self.until_ms = until_ms;
        while self.cluster.now_ms() < until_ms {
            let pause = self.rng.gen_range(Duration::ZERO..=FAULT_PAUSE_MAX);
            tokio::time::sleep(pause).await;
            self.strike().await;
        }
    }

    /// Ends every fault: links heal, the weather calms, paused processes resume, disks
    /// speed up, crashed nodes restart; then the membership changes under way finish.
    pub async fn heal(cluster: &Cluster) {
        cluster.net.heal();
        cluster.net.set_weather(Weather::CALM);
        cluster.net.resume_all();
        for id in cluster.node_ids() {
            cluster.heal_disk(id);
            cluster.heal_cpu(id);
        }
        cluster.restart_stopped().await;
        for id in cluster.down_ids() {
            cluster.restart(id).await;
        }
        cluster.trace.event(cluster.now_ms(), "heal everything".to_owned());
        for _ in 0..MEMBERSHIP_STEPS_AFTER_HEAL_MAX {
            if !cluster.membership_pending() {
                return;
            }
            cluster.membership_step().await;
            tokio::time::sleep(MEMBERSHIP_STEP_PAUSE).await;
        }
        panic!("membership changes did not finish after healing\n{}", cluster.describe());
    }

    async fn strike(&mut self) {
        let ids = self.cluster.node_ids();
        let n_down = self.cluster.down_ids().len() as u64;
        // Up to a minority down keeps the cluster live most of the time; now and then a
        // majority goes down too, and nothing may commit until it returns.
        let n_down_max = if self.rng.gen_ratio(1, 10) {
            ids.len() as u64 - 1
        } else {
            (ids.len() as u64 - 1) / 2
        };
        match self.rng.gen_range(0..112) {
            0..=14 => self.partition_halves(&ids),
            15..=24 => {
                let victim = self.leader_or_random(&ids);
                self.isolate(victim, &ids);
            }
            25..=32 => self.cut_one_way(&ids),
            33..=44 => {
                self.cluster.net.heal();
                self.note("heal partitions".to_owned());
            }
            45..=58 => self.change_weather(),
            59..=64 => {
                let victim = *ids.choose(&mut self.rng).expect("nodes");
                let slow = self.rng.gen_bool(0.7).then(|| {
                    Duration::from_millis(self.rng.gen_range(SLOW_SYNC_MS_MIN..=SLOW_SYNC_MS_MAX))
                });
                self.cluster.set_slow_disk(victim, slow);
            }
            65..=72 if n_down < n_down_max => {
                let victim = self.leader_or_random(&ids);
                self.cluster.crash(victim).await;
            }
            73..=77 if n_down < n_down_max => {
                let victim = self.leader_or_random(&ids);
                let kind = *WriteKind::ALL.choose(&mut self.rng).expect("kinds");
                self.cluster.crash_after_write(victim, kind, NAMED_WRITE_WAIT_MAX).await;
            }
            78..=84 if n_down < n_down_max => self.crash_mid_election(&ids).await,
            85..=88 => self.outage(&ids).await,
            89..=92 => {
                let victim = self.leader_or_random(&ids);
                let step_ms = self.rng.gen_range(-CLOCK_STEP_MS_MAX..=CLOCK_STEP_MS_MAX);
                self.cluster.step_clock(victim, step_ms);
            }
            93..=95 => {
                let victim = self.leader_or_random(&ids);
                let pause = self.rng.gen_range(PAUSE_MIN..=PAUSE_MAX);
                self.cluster.net.pause(victim, pause);
                self.note(format!("pause node {victim} for {pause:?}"));
            }
            104..=107 => self.change_membership().await,
            108..=111 => {
                let victim = self.leader_or_random(&ids);
                let slowdown = self.rng.gen_range(CPU_SLOWDOWN_MIN..=CPU_SLOWDOWN_MAX);
                let duration = self.rng.gen_range(SLOW_CPU_MIN..=SLOW_CPU_MAX);
                self.cluster.slow_cpu_for(victim, slowdown, duration);
            }
            96..=99 if n_down < n_down_max => {
                let victim = self.leader_or_random(&ids);
                let fault = if self.rng.gen_bool(0.5) { IoFault::Eio } else { IoFault::Enospc };
                let duration = self.rng.gen_range(DISK_FAILURE_MIN..=DISK_FAILURE_MAX);
                self.cluster.fail_disk_for(victim, fault, duration);
            }
            _ => {
                if let Some(id) = self.cluster.down_ids().choose(&mut self.rng).copied() {
                    self.cluster.restart(id).await;
                }
            }
        }
    }

    /// An operator's membership change, made while the faults go on: a node added under a
    /// new id, a voter removed, a removed node re-added under its id (its disk as it was),
    /// or a voter whose disk was wiped replaced by a node under a new id; then one step
    /// towards it in every group. While an earlier change is unfinished (it failed for
    /// now), only that one is pushed on, as an operator retries.
    async fn change_membership(&mut self) {
        if !self.cluster.membership_pending() {
            let wanted: Vec<NodeId> = self.cluster.wanted_voters().into_iter().collect();
            let removed = self.cluster.removed_ids();
            match self.rng.gen_range(0..4) {
                0 if wanted.len() < VOTERS_MAX => {
                    self.cluster.add_node().await;
                }
                1 if wanted.len() > VOTERS_MIN => {
                    let id = *wanted.choose(&mut self.rng).expect("voters");
                    self.cluster.remove_node(id);
                }
                2 if !removed.is_empty() && wanted.len() < VOTERS_MAX => {
                    let id = *removed.choose(&mut self.rng).expect("removed nodes");
                    self.cluster.readd_node(id).await;
                }
                3 => {
                    let id = *wanted.choose(&mut self.rng).expect("voters");
                    self.cluster.replace_wiped(id).await;
                }
                _ => {}
            }
        }
        // Within the faults' time, as the other faults: what is left of the change is
        // finished after healing.
        let left_ms = self.until_ms.saturating_sub(self.cluster.now_ms());
        let step = self.cluster.membership_step();
        let _ = tokio::time::timeout(Duration::from_millis(left_ms), step).await;
    }

    fn note(&self, what: String) {
        self.cluster.trace.event(self.cluster.now_ms(), what);
    }

    /// Half the time the leader of a random group as some node sees it, else any node.
    fn leader_or_random(&mut self, ids: &[NodeId]) -> NodeId {
        let observer = *ids.choose(&mut self.rng).expect("nodes");
        let group = self.rng.gen_range(0..self.cluster.shape.n_groups);
        match self.cluster.leader_seen_by(observer, group) {
            Some(leader) if self.rng.gen_bool(0.5) => leader,
            _ => *ids.choose(&mut self.rng).expect("nodes"),
        }
    }

    /// Isolates a leader, then crashes a node while the others elect a new one: a vote
    /// granted but not yet followed by a flush is what a crash must not lose. Half the
    /// time the victim crashes the instant its next vote is saved.
    async fn crash_mid_election(&mut self, ids: &[NodeId]) {
        let observer = *ids.choose(&mut self.rng).expect("nodes");
        let group = self.rng.gen_range(0..self.cluster.shape.n_groups);
        let Some(leader) = self.cluster.leader_seen_by(observer, group) else { return };
        self.isolate(leader, ids);
        if self.rng.gen_bool(0.5) {
            let victim = *ids.choose(&mut self.rng).expect("nodes");
            let wait = ELECTION_TIMEOUT_MAX * 4;
            self.cluster.crash_after_write(victim, WriteKind::Vote, wait).await;
            return;
        }
        let pause = self.rng.gen_range(ELECTION_TIMEOUT_MIN..=ELECTION_TIMEOUT_MAX * 2);
        tokio::time::sleep(pause).await;
        let victim = *ids.choose(&mut self.rng).expect("nodes");
        self.cluster.crash(victim).await;
    }

    /// Takes the ledger down: a majority crashed, or every node cut off from every other,
    /// for longer than holds live; then brings back what it took down.
    async fn outage(&mut self, ids: &[NodeId]) {
        let duration = self.rng.gen_range(OUTAGE_MIN..=OUTAGE_MAX);
        if self.rng.gen_bool(0.5) {
            let mut victims = ids.to_vec();
            victims.shuffle(&mut self.rng);
            victims.truncate(ids.len() / 2 + 1);
            self.note(format!("outage: crash {victims:?} for {duration:?}"));
            for victim in &victims {
                self.cluster.crash(*victim).await;
            }
            tokio::time::sleep(duration).await;
            for victim in victims {
                self.cluster.restart(victim).await;
            }
        } else {
            self.note(format!("outage: every node isolated for {duration:?}"));
            for a in ids {
                for b in ids.iter().filter(|b| *b != a) {
                    self.cluster.net.cut(*a, *b);
                }
            }
            tokio::time::sleep(duration).await;
            self.cluster.net.heal();
            self.note("outage over".to_owned());
        }
    }

    fn partition_halves(&mut self, ids: &[NodeId]) {
        let mut shuffled = ids.to_vec();
        shuffled.shuffle(&mut self.rng);
        let (side, other) = shuffled.split_at(self.rng.gen_range(1..ids.len()));
        for a in side {
            for b in other {
                self.cluster.net.cut(*a, *b);
                self.cluster.net.cut(*b, *a);
            }
        }
        self.note(format!("partition {side:?} | {other:?}"));
    }

    fn isolate(&mut self, victim: NodeId, ids: &[NodeId]) {
        self.cluster.net.cut_off(victim, ids.iter().copied());
        self.note(format!("isolate node {victim}"));
    }

    fn cut_one_way(&mut self, ids: &[NodeId]) {
        let pair: Vec<NodeId> = ids.choose_multiple(&mut self.rng, 2).copied().collect();
        self.cluster.net.cut(pair[0], pair[1]);
        self.note(format!("cut {} -> {}", pair[0], pair[1]));
    }

    fn change_weather(&mut self) {
        let rng = &mut self.rng;
        let weather = Weather {
            loss_per_mille: if rng.gen_bool(0.5) { rng.gen_range(0..=300) } else { 0 },
            duplicate_per_mille: rng.gen_range(0..=100),
            delay_max: Duration::from_millis(rng.gen_range(0..=30)),
            spike_per_mille: rng.gen_range(0..=50),
            // Beyond the election timeout, so a spike can depose a leader.
            spike_max: Duration::from_millis(rng.gen_range(100..=1_500)),
            // Down to where a catch-up's few entries take the heartbeat interval to cross
            // (`sizing::AppendBudget` cuts them to fit).
            link_bytes_per_ms: if rng.gen_bool(0.3) { rng.gen_range(500..=20_000) } else { 0 },
        };
        self.cluster.net.set_weather(weather);
        self.note(format!("weather {weather:?}"));
    }
}
