//! The simulated cluster: nodes that each host a replica of every group over a
//! [`MemStore`], crashed and restarted at will, behind the simulated [`Net`]; nodes join
//! and leave it through the production membership change (`membership.rs`), at each
//! group's leader, towards the voters an operator wants.

use super::gateway;
use super::invariants::Invariants;
use super::network::{Net, SimNetwork, SimOrders};
use super::storage::{Disk, DiskFaults, IoFault, MemStore, WriteKind};
use super::trace::Trace;
use crate::backfill;
use crate::encoded::EncodedEntries;
use crate::error::LedgerError;
use crate::founding::FirstLeaders;
use crate::group::{Clock, Group};
use crate::history::{self, History, PowerLossDisk, HISTORY_RETENTION_DEFAULT};
use crate::incarnation::Identified;
use crate::incarnation::{self, Identity, IDENTITY_TREE};
use crate::leadership::{self, Leadership};
use crate::log_store::LogStore;
use crate::membership;
use crate::node::LedgerNode;
use crate::state_machine::{CpuPace, CpuWork, StateMachine};
use crate::types::{Member, NodeId};
use crate::wire::MembershipChange;
use crate::{
    group_of_slot, slot_of, NodeStats, APPEND_ENTRIES_MAX, ELECTION_TIMEOUT_MAX,
    ELECTION_TIMEOUT_MIN, HEARTBEAT_INTERVAL, INSTALL_SNAPSHOT_TIMEOUT,
};
use openraft::error::{InitializeError, RaftError};
use openraft::{Config, RaftMetrics, SnapshotPolicy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use solrouter_ledger::{AccountId, Batch, Command, Ledger, Outcome};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Stops the groups a refused start had started already; returns `why` it was refused.
async fn stop_started(groups: &[Group], why: String) -> String {
    for group in groups {
        // Stopped either way; a failure to stop is part of the refusal.
        let _ = group.shutdown().await;
    }
    why
}

/// The simulated wall clock starts here (2023-11-14), so stamps look like real ones.
const EPOCH_MS: u64 = 1_700_000_000_000;
/// How long one membership change at a leader may take before it is left for a later
/// step (a learner catching up, a joint configuration committing), and how long the
/// leader has to commit the empty batch that tells the group's voters.
const MEMBERSHIP_CHANGE_TIMEOUT: Duration = Duration::from_secs(5);
const MEMBERSHIP_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// What CPU work costs a node at its normal pace, in virtual time.
const CPU_COST: CpuCost = CpuCost {
    entry: Duration::from_micros(20),
    command: Duration::from_micros(2),
    snapshot_bytes_per_ms: 100_000,
};

struct CpuCost {
    entry: Duration,
    command: Duration,
    snapshot_bytes_per_ms: u64,
}

impl CpuCost {
    fn of(&self, work: CpuWork) -> Duration {
        match work {
            CpuWork::Apply { n_entries, n_commands } => {
                self.entry * n_entries as u32 + self.command * n_commands as u32
            }
            CpuWork::Snapshot { bytes } => {
                Duration::from_micros(bytes as u64 * 1_000 / self.snapshot_bytes_per_ms)
            }
        }
    }
}

/// The shape of one simulated cluster, drawn from the seed.
#[derive(Clone, Debug)]
pub struct Shape {
    pub n_nodes: u64,
    pub n_groups: u32,
    /// Small, so snapshots, log purges and snapshot installs happen many times a run.
    pub snapshot_every_entries: u64,
    pub entries_kept_after_snapshot: u64,
    /// Small, so a snapshot crosses the network in several chunks.
    pub snapshot_chunk_bytes: u64,
    /// How far each node's clock is off the simulated time, at most.
    pub clock_skew_max_ms: u64,
    /// Faults no correct store survives; none unless a test asks.
    pub disk_faults: DiskFaults,
}

impl Shape {
    /// Three nodes, one group, no clock skew: for targeted tests of one fault.
    pub fn calm() -> Shape {
        Shape {
            n_nodes: 3,
            n_groups: 1,
            snapshot_every_entries: 50,
            entries_kept_after_snapshot: 5,
            snapshot_chunk_bytes: 4096,
            clock_skew_max_ms: 0,
            disk_faults: DiskFaults::default(),
        }
    }

    pub fn draw(rng: &mut StdRng) -> Shape {
        Shape {
            n_nodes: if rng.gen_bool(0.7) { 3 } else { 5 },
            n_groups: rng.gen_range(1..=2),
            snapshot_every_entries: rng.gen_range(5..=60),
            entries_kept_after_snapshot: rng.gen_range(0..=10),
            snapshot_chunk_bytes: rng.gen_range(512..=8192),
            // Up to beyond the longest hold of the request path: a new leader whose
            // clock runs ahead expires holds early, one that lags cannot move time back.
            clock_skew_max_ms: rng.gen_range(0..=4_000),
            disk_faults: DiskFaults::default(),
        }
    }
}

/// Why a command did not get an outcome from a node.
#[derive(Debug)]
pub enum SubmitError {
    /// The node is down, or crashed before its answer left.
    Down,
    /// The client's deadline passed.
    Timeout,
    Ledger(LedgerError),
}

pub struct Cluster {
    pub shape: Shape,
    pub net: Arc<Net>,
    pub trace: Arc<Trace>,
    pub invariants: Arc<Invariants>,
    origin: tokio::time::Instant,
    state: Mutex<ClusterState>,
}

struct ClusterState {
    rng: StdRng,
    /// Every node of the cluster: members, nodes being added, nodes being removed.
    nodes: BTreeMap<NodeId, Slot>,
    /// The voters the operator wants every group to have; membership steps work towards
    /// them.
    wanted: BTreeSet<NodeId>,
    /// What is known of each group's membership.
    members: Vec<Members>,
    /// Nodes removed from every group (not wiped), with their disks, to be re-added.
    removed: BTreeMap<NodeId, Disk>,
    /// Each node's request history file, kept across its restarts and its removal (a
    /// crash keeps what was synced; a wipe drops it).
    history_disks: BTreeMap<NodeId, PowerLossDisk>,
    next_id: NodeId,
    /// How far each node's wall clock has been stepped, in ms (it survives a restart,
    /// as a machine's clock does).
    clock_steps: BTreeMap<NodeId, Arc<AtomicI64>>,
    /// How many times slower than [`CPU_COST`] each node's CPU runs now (1: normal).
    cpu_slowdown: BTreeMap<NodeId, Arc<AtomicU64>>,
    n_incarnations: u64,
    n_crashes: u64,
    n_fatal_restarts: u64,
    /// Membership changes that completed (one group each).
    n_membership_changes: u64,
}

/// One group's membership as the simulation knows it: the voters and learners of the last
/// configuration known to be committed, and the voter sets a change whose outcome is not
/// known yet may have left (a change that timed out can still commit later). The group's
/// voters are one of `voters` and `maybe`.
#[derive(Clone, Debug, Default)]
struct Members {
    voters: BTreeSet<NodeId>,
    learners: BTreeSet<NodeId>,
    maybe: Vec<BTreeSet<NodeId>>,
}

impl Members {
    fn settled(&self, wanted: &BTreeSet<NodeId>) -> bool {
        self.voters == *wanted && self.learners.is_empty() && self.maybe.is_empty()
    }

    fn holds(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
            || self.learners.contains(&id)
            || self.maybe.iter().any(|voters| voters.contains(&id))
    }
}

enum Slot {
    Up(Arc<Running>),
    /// What survived on the node's disk.
    Down(Disk),
}

/// One incarnation of a node: from a start to its crash.
pub struct Running {
    identity: Identity,
    store: MemStore,
    /// Its groups, as the `LedgerNode` whose ledger API gateways call.
    node: LedgerNode,
    /// The ledger API's server and the node's leadership hand-overs (`leadership.rs`),
    /// aborted when the process crashes.
    server: JoinHandle<()>,
    balancer: JoinHandle<()>,
    /// Copies the records a snapshot install skipped from a peer that holds them, through
    /// the network from this node's side of it (`backfill.rs`).
    copier: JoinHandle<()>,
    /// The history's writer and upkeep (`history::spawn_maintenance`), on the node's clock.
    maintenance: JoinHandle<()>,
    crashed: AtomicBool,
}

impl Running {
    fn groups(&self) -> &[Group] {
        self.node.groups()
    }
}

impl Cluster {
    pub async fn start(shape: Shape, mut rng: StdRng, trace: Arc<Trace>) -> Arc<Cluster> {
        let net = Net::new(StdRng::seed_from_u64(rng.gen()));
        let nodes = (1..=shape.n_nodes).map(|id| (id, Slot::Down(BTreeMap::new()))).collect();
        let clock_steps = (1..=shape.n_nodes).map(|id| (id, Arc::default())).collect();
        let cpu_slowdown =
            (1..=shape.n_nodes).map(|id| (id, Arc::new(AtomicU64::new(1)))).collect();
        let founders: BTreeSet<NodeId> = (1..=shape.n_nodes).collect();
        let members = Members { voters: founders.clone(), ..Members::default() };
        let state = ClusterState {
            rng,
            nodes,
            wanted: founders,
            members: vec![members; shape.n_groups as usize],
            removed: BTreeMap::new(),
            history_disks: BTreeMap::new(),
            next_id: shape.n_nodes + 1,
            clock_steps,
            cpu_slowdown,
            n_incarnations: 0,
            n_crashes: 0,
            n_fatal_restarts: 0,
            n_membership_changes: 0,
        };
        let origin = tokio::time::Instant::now();
        let invariants = Arc::default();
        let state = Mutex::new(state);
        let cluster = Arc::new(Cluster { shape, net, trace, invariants, origin, state });
        for id in 1..=cluster.shape.n_nodes {
            cluster.restart(id).await;
        }
        cluster.found().await;
        cluster
    }

    /// Founds the cluster, as the founding member of `LedgerNode` does once every founder
    /// has said who it is: every group's membership is every node, with the incarnation of
    /// its data directory. (Every node initializes with that same membership, so the
    /// first election may happen anywhere.)
    async fn found(&self) {
        let running: Vec<Arc<Running>> =
            self.node_ids().into_iter().filter_map(|id| self.running(id)).collect();
        let members: BTreeMap<NodeId, Member> = running
            .iter()
            .map(|node| {
                let id = node.identity.node_id;
                (id, Member::new(gateway::addr_of(id), node.identity.incarnation))
            })
            .collect();
        for node in &running {
            for group in node.groups() {
                match group.raft().initialize(members.clone()).await {
                    Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                    Err(e) => panic!("founding on node {}: {e}", node.identity.node_id),
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClusterState> {
        self.state.lock().expect("cluster lock poisoned")
    }

    /// Milliseconds of simulated time since the cluster started.
    pub fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// The group that owns `account`'s slot, as gateways route it.
    pub fn group_of(&self, account: AccountId) -> u32 {
        group_of_slot(slot_of(account), self.shape.n_groups)
    }

    /// Every node of the cluster now, founders or added since, up or down.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.lock().nodes.keys().copied().collect()
    }

    pub fn down_ids(&self) -> Vec<NodeId> {
        let state = self.lock();
        state.nodes.iter().filter(|(_, s)| matches!(s, Slot::Down(_))).map(|(id, _)| *id).collect()
    }

    pub fn n_crashes(&self) -> u64 {
        self.lock().n_crashes
    }

    /// Node `id`'s `LedgerNode`, while it is up.
    pub fn node(&self, id: NodeId) -> Option<LedgerNode> {
        self.running(id).map(|running| running.node.clone())
    }

    fn running(&self, id: NodeId) -> Option<Arc<Running>> {
        match self.lock().nodes.get(&id) {
            Some(Slot::Up(running)) => Some(Arc::clone(running)),
            _ => None,
        }
    }

    /// Steps node `id`'s wall clock by `step_ms` (forward if positive), as a VM resume or
    /// an operator setting the date does.
    pub fn step_clock(&self, id: NodeId, step_ms: i64) {
        self.lock().clock_steps[&id].fetch_add(step_ms, Ordering::Relaxed);
        self.trace.event(self.now_ms(), format!("step node {id}'s clock by {step_ms} ms"));
    }

    /// Makes node `id`'s disk slow (every sync up to `sync_max`), or normal with `None`,
    /// until it restarts.
    pub fn set_slow_disk(&self, id: NodeId, sync_max: Option<Duration>) {
        let Some(running) = self.running(id) else { return };
        running.store.set_slow(sync_max);
        self.trace.event(self.now_ms(), format!("node {id}'s disk syncs in up to {sync_max:?}"));
    }

    /// Makes node `id`'s device fail as `fault` says for `duration` (if the node is up),
    /// then work again; a Raft group that stopped on a storage error meanwhile (openraft
    /// stops the group's Raft on any) takes its process down, and the supervisor then
    /// restarts it, as systemd restarts `solrouter ledger-node` when it exits.
    pub fn fail_disk_for(self: &Arc<Self>, id: NodeId, fault: IoFault, duration: Duration) {
        let Some(running) = self.running(id) else { return };
        running.store.set_io_fault(Some(fault));
        self.trace.event(self.now_ms(), format!("node {id}'s disk fails with {fault:?}"));
        let cluster = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            running.store.set_io_fault(None);
            cluster.trace.event(cluster.now_ms(), format!("node {id}'s disk works again"));
            cluster.restart_if_stopped(id, &running).await;
        });
    }

    /// Restarts node `id` if its incarnation `running` is still the one up and one of its
    /// Raft groups stopped (on a storage error): what a supervisor does when the process
    /// exits. Says whether it did.
    async fn restart_if_stopped(&self, id: NodeId, running: &Arc<Running>) -> bool {
        if !self.running(id).is_some_and(|now| Arc::ptr_eq(&now, running)) {
            return false;
        }
        let Some(why) = running.groups().iter().find_map(Group::stopped) else { return false };
        self.trace.event(self.now_ms(), format!("node {id}'s raft stopped ({why}): restart"));
        self.lock().n_fatal_restarts += 1;
        self.crash(id).await;
        self.restart(id).await;
        true
    }

    /// Restarts every node one of whose Raft groups stopped (see
    /// [`Cluster::restart_if_stopped`]).
    pub async fn restart_stopped(&self) {
        for id in self.node_ids() {
            if let Some(running) = self.running(id) {
                self.restart_if_stopped(id, &running).await;
            }
        }
    }

    /// Restarts of a node whose Raft stopped on a storage error.
    pub fn n_fatal_restarts(&self) -> u64 {
        self.lock().n_fatal_restarts
    }

    pub fn n_membership_changes(&self) -> u64 {
        self.lock().n_membership_changes
    }

    /// Makes node `id`'s CPU `slowdown` times slower for `duration` (a noisy neighbour, a
    /// throttled VM, a GC-like stall of the process): its applies and snapshot builds take
    /// that much more virtual time.
    pub fn slow_cpu_for(self: &Arc<Self>, id: NodeId, slowdown: u64, duration: Duration) {
        let Some(cpu) = self.lock().cpu_slowdown.get(&id).cloned() else { return };
        cpu.store(slowdown, Ordering::Relaxed);
        self.trace.event(self.now_ms(), format!("node {id}'s CPU {slowdown}× slower"));
        let cluster = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            cpu.store(1, Ordering::Relaxed);
            cluster.trace.event(cluster.now_ms(), format!("node {id}'s CPU normal again"));
        });
    }

    /// Makes node `id`'s CPU run at its normal pace.
    pub fn heal_cpu(&self, id: NodeId) {
        if let Some(cpu) = self.lock().cpu_slowdown.get(&id) {
            cpu.store(1, Ordering::Relaxed);
        }
    }

    /// Makes node `id`'s disk fast and working again, if the node is up.
    pub fn heal_disk(&self, id: NodeId) {
        let Some(running) = self.running(id) else { return };
        running.store.set_slow(None);
        running.store.set_io_fault(None);
    }

    /// Node `id`'s replica of `group`'s counters, if that node is up.
    pub fn stats(&self, id: NodeId, group: u32) -> Option<NodeStats> {
        self.running(id).map(|r| r.groups()[group as usize].stats())
    }

    /// The leader of `group` as node `id` knows it, if that node is up.
    pub fn leader_seen_by(&self, id: NodeId, group: u32) -> Option<NodeId> {
        self.running(id).and_then(|r| r.groups()[group as usize].stats().leader_id)
    }

    /// Waits until every node up sees `leader` lead `group`, polling every 100 ms of
    /// simulated time for at most `within`; whether it came to that.
    pub async fn wait_for_leader(&self, group: u32, leader: NodeId, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let down = self.down_ids();
            let mut up = self.node_ids().into_iter().filter(|id| !down.contains(id));
            if up.all(|id| self.leader_seen_by(id, group) == Some(leader)) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Submits `command` to node `id`'s replica of `group`, waiting at most `deadline`.
    /// An answer from a node that crashed meanwhile never left it, so it counts as lost.
    pub async fn submit(
        &self,
        id: NodeId,
        group: u32,
        command: Command,
        deadline: Duration,
    ) -> Result<Outcome, SubmitError> {
        let mut outcomes = self.submit_many(id, group, vec![command], deadline).await?;
        Ok(outcomes.pop().expect("one outcome per command"))
    }

    /// [`Cluster::submit`] for `commands` together, as one entry (`Group::submit_many`).
    pub async fn submit_many(
        &self,
        id: NodeId,
        group: u32,
        commands: Vec<Command>,
        deadline: Duration,
    ) -> Result<Vec<Outcome>, SubmitError> {
        let running = self.running(id).ok_or(SubmitError::Down)?;
        let ops: Vec<_> = commands.iter().map(|command| command.id).collect();
        // A paused process takes the request, and answers, only once it resumes.
        let submitted = async {
            self.net.unpaused(&[id]).await;
            let outcomes = running.groups()[group as usize].submit_many(commands).await;
            self.net.unpaused(&[id]).await;
            outcomes
        };
        let result = tokio::time::timeout(deadline, submitted).await;
        if running.crashed.load(Ordering::Relaxed) {
            return Err(SubmitError::Down);
        }
        match result {
            Err(_elapsed) => Err(SubmitError::Timeout),
            Ok(Err(e)) => Err(SubmitError::Ledger(e)),
            Ok(Ok(outcomes)) => {
                for op in ops {
                    self.invariants.acknowledged(group, op);
                }
                Ok(outcomes)
            }
        }
    }

    /// Node `id`'s replica of `group`'s Raft metrics, if that node is up.
    pub fn metrics(
        &self,
        id: NodeId,
        group: u32,
    ) -> Option<watch::Receiver<RaftMetrics<NodeId, Member>>> {
        self.running(id).map(|r| r.groups()[group as usize].raft().metrics())
    }

    /// Crashes node `id` right after its next write of `kind` returns, if one comes within
    /// `within`; says whether it did.
    pub async fn crash_after_write(&self, id: NodeId, kind: WriteKind, within: Duration) -> bool {
        let Some(running) = self.running(id) else { return false };
        let written = running.store.crash_after(kind);
        let notified = tokio::time::timeout(within, written.notified()).await.is_ok();
        // A store that struck as the wait ran out must crash too, or it lingers dead.
        if !notified && !running.store.crash_after_nothing() {
            return false;
        }
        self.trace.event(self.now_ms(), format!("node {id} crashes right after a {kind:?} write"));
        // Unless it crashed and restarted meanwhile: then that incarnation is gone already.
        if self.running(id).is_some_and(|now| Arc::ptr_eq(&now, &running)) {
            self.crash(id).await;
        }
        true
    }

    /// Crashes node `id` if it is up: its store keeps what a real disk would (see
    /// `storage`), it vanishes from the network, and its tasks are stopped.
    pub async fn crash(&self, id: NodeId) {
        let running = {
            let mut state = self.lock();
            let running = match state.nodes.get(&id) {
                Some(Slot::Up(running)) => Arc::clone(running),
                _ => return,
            };
            running.crashed.store(true, Ordering::Relaxed);
            self.net.node_down(id);
            let disk = running.store.crash();
            state.nodes.insert(id, Slot::Down(disk));
            let history = state.history_disks.get(&id).map(PowerLossDisk::crash);
            state.history_disks.insert(id, history.unwrap_or_default());
            state.n_crashes += 1;
            let disks = state
                .nodes
                .iter()
                .map(|(id, slot)| match slot {
                    Slot::Up(running) => (*id, running.store.durable()),
                    Slot::Down(disk) => (*id, disk.clone()),
                })
                .collect();
            let voters: Vec<Vec<BTreeSet<NodeId>>> = state
                .members
                .iter()
                .map(|members| {
                    let known = std::iter::once(members.voters.clone());
                    known.chain(members.maybe.iter().cloned()).collect()
                })
                .collect();
            self.invariants.check_durable(&disks, &voters);
            running
        };
        self.trace.event(self.now_ms(), format!("crash node {id}"));
        running.server.abort();
        running.balancer.abort();
        running.copier.abort();
        running.maintenance.abort();
        for group in running.groups() {
            // A core that already stopped on its dead store reports that here; either way
            // it is stopped, which is all a crash needs.
            let _ = group.shutdown().await;
        }
    }

    /// Power fails everywhere at once: every node crashes keeping only what it synced
    /// (the harshest loss: every write not yet synced is gone, the committed index
    /// included).
    pub async fn power_loss(&self) {
        for id in self.node_ids() {
            if let Some(running) = self.running(id) {
                running.store.lose_unsynced_on_crash();
            }
            self.crash(id).await;
        }
    }

    /// Node `id`'s disk is wiped (crashing it first if it is up): it comes back, at its
    /// next start, under the same id with a new incarnation and nothing else. The
    /// invariants forget the votes it saved.
    pub async fn wipe(&self, id: NodeId) {
        self.crash(id).await;
        let mut state = self.lock();
        state.nodes.insert(id, Slot::Down(Disk::new()));
        state.history_disks.remove(&id);
        drop(state);
        self.invariants.wiped(id);
        self.trace.event(self.now_ms(), format!("wipe node {id}'s disk"));
    }

    /// The identity of node `id`'s data directory, if it is up.
    pub fn identity(&self, id: NodeId) -> Option<Identity> {
        self.running(id).map(|running| running.identity)
    }

    /// The voters the operator wants, and the removed nodes that may be re-added.
    pub fn wanted_voters(&self) -> BTreeSet<NodeId> {
        self.lock().wanted.clone()
    }

    pub fn removed_ids(&self) -> Vec<NodeId> {
        self.lock().removed.keys().copied().collect()
    }

    /// Whether some group's membership is not (known to be) the wanted voters yet, or a
    /// node that left every group is still to be retired.
    pub fn membership_pending(&self) -> bool {
        let state = self.lock();
        let holds = |id: &NodeId| state.members.iter().any(|members| members.holds(*id));
        !state.members.iter().all(|members| members.settled(&state.wanted))
            || state.nodes.keys().any(|id| !state.wanted.contains(id) && !holds(id))
    }

    /// The operator starts a node that was never part of the cluster, under a new id, on
    /// an empty disk, and wants it as a voter.
    pub async fn add_node(&self) -> NodeId {
        let id = {
            let mut state = self.lock();
            let id = state.next_id;
            state.next_id += 1;
            state.nodes.insert(id, Slot::Down(Disk::new()));
            state.clock_steps.insert(id, Arc::default());
            state.cpu_slowdown.insert(id, Arc::new(AtomicU64::new(1)));
            state.wanted.insert(id);
            id
        };
        self.trace.event(self.now_ms(), format!("add new node {id}"));
        self.restart(id).await;
        id
    }

    /// The operator removes voter `id`: once no group has it, it stops (its disk kept).
    pub fn remove_node(&self, id: NodeId) {
        self.lock().wanted.remove(&id);
        self.trace.event(self.now_ms(), format!("remove node {id}"));
    }

    /// The operator brings a removed node back under its id, with its disk as it was.
    pub async fn readd_node(&self, id: NodeId) {
        {
            let mut state = self.lock();
            let Some(disk) = state.removed.remove(&id) else { return };
            state.nodes.insert(id, Slot::Down(disk));
            state.wanted.insert(id);
        }
        self.trace.event(self.now_ms(), format!("re-add node {id}"));
        self.restart(id).await;
    }

    /// Node `id`'s disk is wiped; the operator removes it and adds a node under a new id
    /// in its place (the wiped node cannot come back under its id: `incarnation.rs`).
    pub async fn replace_wiped(&self, id: NodeId) -> NodeId {
        self.wipe(id).await;
        self.remove_node(id);
        self.add_node().await
    }

    /// One membership change towards the wanted voters in every group that differs
    /// (removals first: a wiped voter leaves before its replacement joins), each at the
    /// group's leader through `membership::change`, which a gateway's `remove_node` and
    /// `add_node` run; then retires the nodes that no group has any more. A change that
    /// fails (no leader, a voter unreachable, a timeout) is left for a later step. Says
    /// whether every group is known to have exactly the wanted voters.
    pub async fn membership_step(&self) -> bool {
        for group in 0..self.shape.n_groups {
            let (members, wanted) = {
                let state = self.lock();
                (state.members[group as usize].clone(), state.wanted.clone())
            };
            if members.settled(&wanted) {
                continue;
            }
            let leaving = members.voters.union(&members.learners).find(|id| !wanted.contains(id));
            let change = match (leaving, wanted.difference(&members.voters).next()) {
                (Some(&id), _) => Some(MembershipChange::Remove { id }),
                (None, Some(&id)) => Some(MembershipChange::Add { id, addr: gateway::addr_of(id) }),
                // Only `maybe` is in doubt: learning the voters settles it.
                (None, None) => None,
            };
            if let Some(change) = change {
                self.change_membership(group, change).await;
            }
            self.learn_members(group).await;
        }
        self.retire_removed().await;
        let state = self.lock();
        state.members.iter().all(|members| members.settled(&state.wanted))
    }

    /// Runs `change` at `group`'s leader, if there is one; until the group's membership
    /// is learnt again, the voters it would leave are possible.
    async fn change_membership(&self, group: u32, change: MembershipChange) {
        let Some(leader) = self.leader(group) else { return };
        let identified = match &change {
            MembershipChange::Add { id, .. } => match self.identity(*id) {
                // A node never part of a cluster knows no members (a re-added one would
                // name ours, which `membership::plan` accepts the same).
                Some(identity) => Some(Identified { identity, members: BTreeMap::new() }),
                None => return,
            },
            MembershipChange::Remove { .. } => None,
        };
        {
            let mut state = self.lock();
            let members = &mut state.members[group as usize];
            let mut after = members.voters.clone();
            match &change {
                MembershipChange::Add { id, .. } => after.insert(*id),
                MembershipChange::Remove { id } => after.remove(id),
            };
            members.maybe.push(after);
        }
        self.net.unpaused(&[leader.identity.node_id]).await;
        let group_ref = &leader.groups()[group as usize];
        let changing = membership::change_identified(group_ref, &change, identified);
        let result = match tokio::time::timeout(MEMBERSHIP_CHANGE_TIMEOUT, changing).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_elapsed) => Err("timed out".to_owned()),
        };
        if result.is_ok() {
            self.lock().n_membership_changes += 1;
        }
        let what = format!("group {group}: membership change {change:?}: {result:?}");
        self.trace.event(self.now_ms(), what);
    }

    /// Learns `group`'s membership from its leader: once an empty batch it proposed has
    /// committed, the membership it held when that batch was appended is committed too.
    /// A uniform configuration learnt so replaces what was known and what was possible; a
    /// joint one, or one appended after the batch, only adds to what is possible.
    async fn learn_members(&self, group: u32) {
        let Some(leader) = self.leader(group) else { return };
        let raft = leader.groups()[group as usize].raft();
        let before = raft.metrics().borrow().membership_config.clone();
        let stamp_ms = leader.groups()[group as usize].next_stamp_ms();
        let writing = raft.client_write(Batch { stamp_ms, commands: Vec::new() }.into());
        let Ok(Ok(written)) = tokio::time::timeout(MEMBERSHIP_READ_TIMEOUT, writing).await else {
            return;
        };
        let after = raft.metrics().borrow().membership_config.clone();
        let configs = after.membership().get_joint_config().clone();
        let committed = after.log_id() == before.log_id()
            && after.log_id().is_none_or(|log_id| log_id.index < written.log_id.index);
        let mut state = self.lock();
        let members = &mut state.members[group as usize];
        if committed && configs.len() == 1 {
            members.voters = configs.into_iter().next().expect("one configuration");
            members.learners = after.membership().learner_ids().collect();
            members.maybe.clear();
        } else {
            members.maybe.extend(before.membership().get_joint_config().iter().cloned());
            members.maybe.extend(configs);
        }
    }

    /// The node that leads `group` in its own eyes, if it is up. By its Raft state: a
    /// leader that committed its own removal steps down to learner but goes on naming
    /// itself as `current_leader` (openraft 0.9), and a change run there finds its own
    /// removal done while nothing it proposes commits (seed 18 beyond the windows, with
    /// the batcher's `caught_up` removed: membership changes never finished).
    fn leader(&self, group: u32) -> Option<Arc<Running>> {
        let ids = self.node_ids();
        ids.into_iter().filter_map(|id| self.running(id)).find(|running| {
            let metrics = running.groups()[group as usize].raft().metrics();
            let leads = metrics.borrow().state == openraft::ServerState::Leader;
            leads
        })
    }

    /// Stops the nodes no group has as a member any more and the operator does not want:
    /// a removed node's disk is kept (it may be re-added), a wiped one's dropped.
    async fn retire_removed(&self) {
        let leaving: Vec<NodeId> = {
            let state = self.lock();
            let holds = |id: &NodeId| state.members.iter().any(|members| members.holds(*id));
            state
                .nodes
                .keys()
                .filter(|id| !state.wanted.contains(id) && !holds(id))
                .copied()
                .collect()
        };
        for id in leaving {
            self.crash(id).await;
            let mut state = self.lock();
            let Some(Slot::Down(disk)) = state.nodes.remove(&id) else {
                unreachable!("node {id} crashed just now")
            };
            if !self.invariants.is_wiped(id) {
                state.removed.insert(id, disk);
            }
            drop(state);
            self.trace.event(self.now_ms(), format!("node {id} left the cluster"));
        }
    }

    /// Starts node `id` from what its disk holds, if it is down. Founding is done once,
    /// by [`Cluster::start`]: a node started on an empty disk (wiped) waits to be
    /// contacted, and its peers refuse it, as `LedgerNode` does.
    pub async fn restart(&self, id: NodeId) {
        if let Err(e) = self.try_restart(id).await {
            panic!("node {id} does not start on what its own store kept: {e}");
        }
    }

    /// [`Cluster::restart`], or why the node refuses to start (a torn or corrupt record on
    /// its disk, say); a refused node stays down with its disk as it was.
    pub async fn try_restart(&self, id: NodeId) -> Result<(), String> {
        let (disk, history_disk, incarnation, mut rng, clock_step, cpu) = {
            let mut state = self.lock();
            let Some(Slot::Down(disk)) = state.nodes.get(&id) else { return Ok(()) };
            let disk = disk.clone();
            let history_disk = state.history_disks.entry(id).or_default().clone();
            state.n_incarnations += 1;
            let rng = StdRng::seed_from_u64(state.rng.gen());
            let cpu = Arc::clone(&state.cpu_slowdown[&id]);
            let clock_step = Arc::clone(&state.clock_steps[&id]);
            (disk, history_disk, state.n_incarnations, rng, clock_step, cpu)
        };
        let pace: CpuPace =
            Arc::new(move |work| CPU_COST.of(work) * cpu.load(Ordering::Relaxed) as u32);
        self.invariants.restarting(id, self.shape.n_groups, &disk);
        let store = MemStore::new(disk, StdRng::seed_from_u64(rng.gen()))
            .watched(id, Arc::clone(&self.invariants))
            .with_faults(self.shape.disk_faults);
        let identity =
            incarnation::load_or_create(&store.tree(IDENTITY_TREE), id, rng.gen()).await?;
        let config = Arc::new(self.raft_config(&mut rng));
        let skew_max_ms = self.shape.clock_skew_max_ms as i64;
        let skew_ms = rng.gen_range(-skew_max_ms..=skew_max_ms);
        let origin = self.origin;
        let clock: Clock = Arc::new(move || {
            let now_ms = EPOCH_MS as i64 + origin.elapsed().as_millis() as i64;
            (now_ms + skew_ms + clock_step.load(Ordering::Relaxed)) as u64
        });
        // What its history file kept, for the log of this data directory's incarnation.
        let history = Some(identity.incarnation);
        let history = History::with_backend(history_disk, HISTORY_RETENTION_DEFAULT, history)
            .map_err(|e| format!("the request history: {e}"))?;
        let mut groups = Vec::new();
        let mut served = Vec::new();
        for group_idx in 0..self.shape.n_groups {
            let snapshots = store.tree(&format!("{group_idx}/snapshot"));
            let invariants = Arc::clone(&self.invariants);
            let restored = StateMachine::restore(snapshots, group_idx, history.clone());
            let restored = restored.map_err(|e| format!("group {group_idx}: {e}"));
            let machine = match restored {
                Ok(machine) => machine,
                Err(e) => return Err(stop_started(&groups, e).await),
            }
            .observe_applies(Arc::new(move |entry| {
                invariants.entry_applied(id, group_idx, entry);
            }))
            .pace_cpu(Arc::clone(&pace));
            // Shared by the log and the network, as on a real node.
            let encoded = Arc::new(EncodedEntries::default());
            let log = LogStore::new(
                group_idx,
                store.tree(&format!("{group_idx}/log")),
                store.tree(&format!("{group_idx}/meta")),
                machine.saved_snapshot(),
                Some(Arc::clone(&encoded)),
            );
            let net = Arc::clone(&self.net);
            let network =
                SimNetwork::new(net, identity, incarnation, group_idx, Arc::clone(&encoded));
            let started =
                Group::start_with(id, log, machine, Arc::clone(&config), network, clock.clone())
                    .await;
            match started {
                Ok(group) => {
                    served.push((group.raft().clone(), encoded));
                    groups.push(group);
                }
                Err(e) => {
                    return Err(stop_started(&groups, format!("group {group_idx}: {e}")).await)
                }
            }
        }
        let requests = history.backfill_requests();
        let maintenance = history::spawn_maintenance(&history, clock);
        let node = LedgerNode::of_groups(id, groups, history);
        let reach = backfill::Reach::Via(gateway::dialer(Arc::clone(&self.net), id));
        let copier = backfill::spawn(node.downgrade(), requests, reach);
        let (door, server) = gateway::serve(&node, identity);
        self.net.node_up(id, incarnation, identity, served, door);
        let crashed = AtomicBool::new(false);
        let net = Arc::clone(&self.net);
        let orders = SimOrders { net, identity, incarnation };
        let leadership = Leadership { placement: FirstLeaders::default(), orders };
        let balancer = leadership::spawn(node.downgrade(), Arc::new(leadership));
        let running = Arc::new(Running {
            identity,
            store,
            node,
            server,
            balancer,
            copier,
            maintenance,
            crashed,
        });
        self.lock().nodes.insert(id, Slot::Up(running));
        let timeout_ms = config.election_timeout_min;
        self.trace
            .event(self.now_ms(), format!("start node {id} (election timeout {timeout_ms} ms)"));
        Ok(())
    }

    /// Takes node `id`'s disk out while it is down, lets `damage` change it (a torn or a
    /// bit-flipped record, as a crash mid-write or a failing medium leaves), and puts it
    /// back. Says whether the node was down.
    pub fn damage_disk(&self, id: NodeId, damage: impl FnOnce(&mut Disk)) -> bool {
        let mut state = self.lock();
        let Some(Slot::Down(disk)) = state.nodes.get_mut(&id) else { return false };
        damage(disk);
        self.trace.event(self.now_ms(), format!("damage node {id}'s disk"));
        true
    }

    /// The node's Raft configuration: the production timings (snapshot installs' included),
    /// except that the election timeout is drawn here from the production range and pinned
    /// (`max = min + 1`): openraft draws it with `rand::thread_rng`, which no seed controls.
    fn raft_config(&self, rng: &mut StdRng) -> Config {
        let timeout_min_ms = rng.gen_range(
            ELECTION_TIMEOUT_MIN.as_millis() as u64..ELECTION_TIMEOUT_MAX.as_millis() as u64,
        );
        let config = Config {
            cluster_name: "solrouter-ledger-sim".to_owned(),
            heartbeat_interval: HEARTBEAT_INTERVAL.as_millis() as u64,
            election_timeout_min: timeout_min_ms,
            election_timeout_max: timeout_min_ms + 1,
            max_payload_entries: APPEND_ENTRIES_MAX,
            snapshot_max_chunk_size: self.shape.snapshot_chunk_bytes,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.shape.snapshot_every_entries),
            max_in_snapshot_log_to_keep: self.shape.entries_kept_after_snapshot,
            install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT.as_millis() as u64,
            ..Config::default()
        };
        config.validate().expect("the simulation's raft config is valid")
    }

    /// Every replica of `group` on the nodes that are up: (node, last applied index,
    /// ledger).
    pub fn replicas(&self, group: u32) -> Vec<(NodeId, Option<u64>, Ledger)> {
        let running: Vec<(NodeId, Arc<Running>)> = {
            let state = self.lock();
            let up = state.nodes.iter().filter_map(|(id, slot)| match slot {
                Slot::Up(running) => Some((*id, Arc::clone(running))),
                Slot::Down(_) => None,
            });
            up.collect()
        };
        running
            .into_iter()
            .map(|(id, r)| {
                let group = &r.groups()[group as usize];
                (id, group.stats().last_applied_index, group.read_local(Ledger::clone))
            })
            .collect()
    }

    /// Each up node's request history.
    pub fn histories(&self) -> Vec<(NodeId, History)> {
        let state = self.lock();
        let up = state.nodes.iter().filter_map(|(id, slot)| match slot {
            Slot::Up(running) => Some((*id, running.node.history_store().clone())),
            Slot::Down(_) => None,
        });
        up.collect()
    }

    /// Each up replica's Raft metrics, one per line: what a liveness failure reports.
    pub fn describe(&self) -> String {
        let state = self.lock();
        let mut lines = Vec::new();
        for (id, slot) in &state.nodes {
            let Slot::Up(running) = slot else {
                lines.push(format!("node {id}: down"));
                continue;
            };
            for (group_idx, group) in running.groups().iter().enumerate() {
                let metrics = group.raft().metrics().borrow().clone();
                lines.push(format!("node {id} group {group_idx}: {metrics:?}"));
            }
        }
        lines.join("\n")
    }

    /// The highest index any up replica's snapshot covers.
    pub fn snapshot_index_max(&self) -> Option<u64> {
        let state = self.lock();
        let up = state.nodes.values().filter_map(|slot| match slot {
            Slot::Up(running) => Some(running.groups().iter().map(|g| g.stats().snapshot_index)),
            Slot::Down(_) => None,
        });
        up.flatten().max().flatten()
    }

    /// Last log index of each up replica of `group`.
    pub fn last_log_indexes(&self, group: u32) -> Vec<Option<u64>> {
        let state = self.lock();
        let up = state.nodes.values().filter_map(|slot| match slot {
            Slot::Up(running) => Some(running.groups()[group as usize].stats().last_log_index),
            Slot::Down(_) => None,
        });
        up.collect()
    }
}
