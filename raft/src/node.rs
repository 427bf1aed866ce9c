//! [`LedgerNode`]: one ledger node hosting a replica of every Raft group (shard), and the
//! routing of accounts to groups.

use crate::backfill;
use crate::codec;
use crate::compaction;
use crate::encoded::EncodedEntries;
use crate::error::LedgerError;
use crate::expiry;
use crate::files;
use crate::founding::{self, FirstLeaders};
use crate::group::{self, Group};
use crate::grpc::ledger_service_server::LedgerServiceServer;
use crate::grpc::raft_service_server::RaftServiceServer;
use crate::grpc_network::{GrpcNetwork, RaftRpcServer};
use crate::history::{self, History, HistoryStats, HISTORY_FILE, HISTORY_RETENTION_DEFAULT};
use crate::incarnation::{self, Identity, IDENTITY_TREE};
use crate::kv::{
    Durability, IdleWrite, KvTree, NodeStores, Pace, RedbStore, REDB_CACHE_BYTES,
    REDB_SNAPSHOT_CACHE_BYTES,
};
use crate::leadership::{self, Leadership, OverGrpc};
use crate::membership;
use crate::network::NoPeers;
use crate::reads::GroupAccess;
use crate::service::LedgerRpcServer;
use crate::tls::{self, TlsConfig};
use crate::types::{Member, NodeId};
use crate::wal::WalStore;
use crate::wire::{self, Consistency, MembershipChange, ReadAnswer, ReadRequest, Topology};
use crate::{
    APPEND_ENTRIES_MAX, ELECTION_TIMEOUT_MAX, ELECTION_TIMEOUT_MIN, ENTRIES_KEPT_AFTER_SNAPSHOT,
    HEARTBEAT_INTERVAL, INSTALL_SNAPSHOT_TIMEOUT, LEADER_WAIT_TIMEOUT, LEGACY_LOG_FILE_NAME,
    LEGACY_LOG_MOVED_NAME, LOG_DIR_NAME, LOG_LOCATION_FILE_NAME, OPEN_LOCK_ATTEMPTS_MAX,
    OPEN_LOCK_RETRY_INTERVAL, RPC_BYTES_MAX, SLOTS, SNAPSHOT_CHUNK_BYTES, SNAPSHOT_EVERY_ENTRIES,
    SNAPSHOT_FILE_NAME, SNAPSHOT_WRITE_BYTES_PER_SECOND,
};
use openraft::{Config, SnapshotPolicy};
use solrouter_ledger::{AccountId, Command, Ledger, Outcome, BATCH_COMMANDS_MAX};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio::time::MissedTickBehavior;

/// The node id of a single-node cluster.
const SINGLE_NODE_ID: NodeId = 1;

/// A ledger node. Cheap to clone: every clone drives the same node.
#[derive(Clone)]
pub struct LedgerNode {
    inner: Arc<Inner>,
}

/// Where a node of a cluster listens and how it comes into the cluster, validated on
/// construction.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    id: u64,
    listen: SocketAddr,
    start: ClusterStart,
    n_groups: u32,
    tls: Option<TlsConfig>,
    first_leaders: FirstLeaders,
}

/// How a node's groups get their first membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterStart {
    /// The founding members (node id → advertised `host:port`, which serves both Raft and
    /// the ledger API). The founder with the lowest id founds the cluster, once every
    /// founder has said who it is (its incarnation) and none belongs to a cluster yet;
    /// the others learn the membership from it. At every start a founder asks the others
    /// whether they know it under another incarnation (its data directory was wiped or
    /// replaced) and then refuses to start.
    Bootstrap(BTreeMap<u64, String>),
    /// A node added to a running cluster: it does not bootstrap, it waits until a leader
    /// adds it (`LedgerClient::add_node`) and then learns everything from the log.
    Join,
}

impl ClusterConfig {
    pub fn try_new(
        id: u64,
        listen: SocketAddr,
        start: ClusterStart,
        n_groups: u32,
    ) -> Result<ClusterConfig, LedgerError> {
        if n_groups == 0 || n_groups > SLOTS {
            return Err(LedgerError::InvalidOptions("n_groups must be within 1..=SLOTS"));
        }
        if let ClusterStart::Bootstrap(peers) = &start {
            if !peers.contains_key(&id) {
                return Err(LedgerError::InvalidOptions("the founding members lack this node"));
            }
        }
        Ok(ClusterConfig {
            id,
            listen,
            start,
            n_groups,
            tls: None,
            first_leaders: FirstLeaders::default(),
        })
    }

    /// Where each group's leader belongs ([`FirstLeaders`]; by default spread over the
    /// voters): the founding member has each group first led there, and every leader hands
    /// a group it leads back there (`leadership.rs`). Give every node the same.
    pub fn with_first_leaders(self, first_leaders: FirstLeaders) -> ClusterConfig {
        ClusterConfig { first_leaders, ..self }
    }

    /// Serves and calls peers over mutual TLS: the node's gRPC port then accepts only
    /// clients (peers, gateways, operators) with a certificate signed by `tls`'s CA.
    pub fn with_tls(self, tls: TlsConfig) -> ClusterConfig {
        ClusterConfig { tls: Some(tls), ..self }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    pub fn start(&self) -> &ClusterStart {
        &self.start
    }

    pub fn n_groups(&self) -> u32 {
        self.n_groups
    }

    pub fn tls(&self) -> Option<&TlsConfig> {
        self.tls.as_ref()
    }
}

/// Tunables of a node, validated on construction. [`NodeOptions::default`] holds the
/// production values; tests shrink the snapshot interval to exercise compaction quickly.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    snapshot_every_entries: u64,
    entries_kept_after_snapshot: u64,
    history_retention: Duration,
    log_dir: Option<PathBuf>,
    idle_log_write: IdleWrite,
}

/// Counters of one group on one node since it was opened, for tests, metrics and health.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Index of the last entry in the Raft log (entries are batches, not commands).
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    /// Last log index covered by the current snapshot.
    pub snapshot_index: Option<u64>,
    /// Entries up to this index have been removed from the log.
    pub purged_index: Option<u64>,
    /// The group's leader as this node knows it.
    pub leader_id: Option<u64>,
    /// Batches (Raft entries) this node proposed, and the commands they carried.
    pub n_batches_proposed: u64,
    pub n_commands_proposed: u64,
    /// Wall clock steps this node noticed (beyond `CLOCK_JUMP_MS` off its monotonic
    /// clock); batch stamps keep the monotonic pace across them.
    pub n_clock_jumps: u64,
    /// Entries this node proposed that are not answered yet (at most
    /// [`PROPOSALS_IN_FLIGHT_MAX`](crate::PROPOSALS_IN_FLIGHT_MAX)).
    pub proposals_in_flight: u64,
    /// Proposals answered, and the time they took in all (proposal to outcome): the mean
    /// commit latency is their ratio.
    pub n_commits: u64,
    pub commit_us_total: u64,
    /// The last snapshot this node built: how long building and saving it took, how much
    /// of that its encode took (the rest is the history's sync and the save), and its size.
    pub snapshot_build_ms_last: u64,
    pub snapshot_encode_ms_last: u64,
    pub snapshot_bytes_last: u64,
    /// How far the stamp of the last batch applied is behind this node's wall clock
    /// (negative when ahead): the time since that batch (ledger time moves only with
    /// batches), plus the lag ledger time accrued while no leader stamped, which the ledger
    /// clock's slew takes back at 1 % of real time (`ledger_clock.rs`). None until a batch
    /// was applied.
    pub time_behind_ms: Option<i64>,
    /// What the applied state remembers for a time: ended holds and operation ids.
    pub n_ended_holds_remembered: u64,
    pub n_op_ids_remembered: u64,
}

impl NodeOptions {
    pub fn try_new(
        snapshot_every_entries: u64,
        entries_kept_after_snapshot: u64,
    ) -> Result<NodeOptions, LedgerError> {
        if snapshot_every_entries == 0 {
            return Err(LedgerError::InvalidOptions("snapshot_every_entries must be positive"));
        }
        Ok(NodeOptions {
            snapshot_every_entries,
            entries_kept_after_snapshot,
            ..NodeOptions::default()
        })
    }

    /// How long request records are kept (default [`HISTORY_RETENTION_DEFAULT`]).
    pub fn with_history_retention(self, history_retention: Duration) -> NodeOptions {
        NodeOptions { history_retention, ..self }
    }

    pub fn history_retention(&self) -> Duration {
        self.history_retention
    }

    /// Keeps the log (every group's entries, votes and the node's identity) in `log_dir`
    /// instead of `<data dir>/log`: a device of its own spares each commit's `fdatasync`
    /// the history's and the snapshots' writes, which share the default's disk
    /// (docs/benchmarks.md, "Session 44"). A data directory keeps its log where it was
    /// first opened (its file `log-location` names it); opening it with the log elsewhere is
    /// refused.
    pub fn with_log_dir(self, log_dir: PathBuf) -> NodeOptions {
        NodeOptions { log_dir: Some(log_dir), ..self }
    }

    /// Who commits a write to the log that finds its writer idle (default
    /// [`IdleWrite::Queued`], the writer thread): see [`IdleWrite`].
    pub fn with_idle_log_write(self, idle_log_write: IdleWrite) -> NodeOptions {
        NodeOptions { idle_log_write, ..self }
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
            history_retention: HISTORY_RETENTION_DEFAULT,
            log_dir: None,
            idle_log_write: IdleWrite::Queued,
        }
    }
}

/// The slot of an account: a fixed hash of its id modulo [`SLOTS`]. Gateways and ledger
/// nodes must agree on it, so it is a stable mix (SplitMix64's finalizer), not `std`'s
/// randomly seeded hasher.
pub fn slot_of(account: AccountId) -> u32 {
    let mut x = account.0;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x % u64::from(SLOTS)) as u32
}

/// The group that owns a slot when a cluster runs `n_groups` groups. Slots, not accounts,
/// map to groups, so moving a shard later moves slots without rehashing accounts.
pub fn group_of_slot(slot: u32, n_groups: u32) -> u32 {
    assert!(n_groups >= 1 && slot < SLOTS);
    slot % n_groups
}

/// The group of `account` in a cluster of `n_groups` groups.
pub fn group_of_account(account: AccountId, n_groups: u32) -> u32 {
    group_of_slot(slot_of(account), n_groups)
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
        let stores = open_stores(data_dir, options).await?;
        let identity = open_identity(&stores.log, data_dir, SINGLE_NODE_ID).await?;
        let history = History::open(
            &data_dir.join(HISTORY_FILE),
            options.history_retention,
            identity.incarnation,
        )
        .await?;
        let config = Arc::new(raft_config(options)?);
        // No peers, so no entry is ever sent: its log keeps no encodings.
        let group =
            Group::start(SINGLE_NODE_ID, 0, &stores, history.clone(), config, NoPeers, None)
                .await?;
        let members = BTreeMap::from([(SINGLE_NODE_ID, Member::new("", identity.incarnation))]);
        founding::bootstrap(group.raft(), members).await?;
        let waiting = group.raft().wait(Some(LEADER_WAIT_TIMEOUT));
        if let Err(e) = waiting.current_leader(SINGLE_NODE_ID, "open_single").await {
            return Err(LedgerError::Unavailable { reason: e.to_string() });
        }
        group.raft().ensure_linearizable().await.map_err(LedgerError::from_check_leader)?;
        Ok(LedgerNode::assemble(SINGLE_NODE_ID, vec![group], history, options))
    }

    /// Opens node `id` of a cluster whose founding members are `peers` (node id →
    /// `host:port`, `peers[id]` being this node's, where it also listens), hosting a replica
    /// of each of `n_groups` Raft groups in `data_dir`. See [`LedgerNode::open_cluster`].
    pub async fn open(
        id: u64,
        peers: &BTreeMap<u64, String>,
        data_dir: &Path,
        n_groups: u32,
    ) -> Result<LedgerNode, LedgerError> {
        LedgerNode::open_with(id, peers, data_dir, n_groups, &NodeOptions::default()).await
    }

    pub async fn open_with(
        id: u64,
        peers: &BTreeMap<u64, String>,
        data_dir: &Path,
        n_groups: u32,
        options: &NodeOptions,
    ) -> Result<LedgerNode, LedgerError> {
        let own_addr =
            peers.get(&id).ok_or(LedgerError::InvalidOptions("peers lacks this node"))?;
        let listen: SocketAddr =
            own_addr.parse().map_err(|_| LedgerError::InvalidOptions("bad own address"))?;
        let start = ClusterStart::Bootstrap(peers.clone());
        let config = ClusterConfig::try_new(id, listen, start, n_groups)?;
        LedgerNode::open_cluster(&config, data_dir, options).await
    }

    /// Opens a node of a cluster in `data_dir`: binds `config.listen()`, where it serves
    /// Raft to its peers and the ledger API (`LedgerService`) to gateways, and, on the
    /// founder with the lowest id, founds the cluster in the background (see
    /// [`ClusterStart::Bootstrap`]). Returns without waiting for leaders: the other nodes
    /// may not be up yet, and until a group has a quorum its commands fail as retryable.
    /// Refuses a data directory of another node, and a founder whose peers know it under
    /// another incarnation (its data directory was wiped or replaced), naming the fix.
    pub async fn open_cluster(
        config: &ClusterConfig,
        data_dir: &Path,
        options: &NodeOptions,
    ) -> Result<LedgerNode, LedgerError> {
        // Bound first so a taken port fails the open instead of a background task.
        let listener = tokio::net::TcpListener::bind(config.listen())
            .await
            .map_err(|e| LedgerError::storage("binding the ledger endpoint", e))?;
        let stores = open_stores(data_dir, options).await?;
        // Checked before a fresh identity is written, so a refused directory stays empty.
        let identities = stores.log.tree(IDENTITY_TREE);
        let stored = incarnation::load(&identities, config.id())
            .map_err(|e| data_dir_error(data_dir, &e))?;
        if let ClusterStart::Bootstrap(peers) = config.start() {
            let founders = founding::ask_founders(config.id(), peers, config.tls()).await;
            let own = stored.map(|identity| identity.incarnation);
            founding::refuse_if_known_otherwise(config.id(), own, &founders)
                .map_err(|e| data_dir_error(data_dir, &e))?;
        }
        let identity = match stored {
            Some(identity) => identity,
            None => incarnation::create(&identities, config.id(), rand::random())
                .await
                .map_err(|e| data_dir_error(data_dir, &e))?,
        };
        let history = History::open(
            &data_dir.join(HISTORY_FILE),
            options.history_retention,
            identity.incarnation,
        )
        .await?;
        let raft_config = Arc::new(raft_config(options)?);
        let mut groups = Vec::new();
        let mut served = Vec::new();
        for group_idx in 0..config.n_groups() {
            let encoded = Arc::new(EncodedEntries::default());
            let tls = config.tls().cloned();
            let network = GrpcNetwork::new(identity, group_idx, tls, Arc::clone(&encoded));
            let group_config = Arc::clone(&raft_config);
            let history = history.clone();
            let id = config.id();
            let shared = Some(Arc::clone(&encoded));
            let group =
                Group::start(id, group_idx, &stores, history, group_config, network, shared)
                    .await?;
            served.push((group.raft().clone(), encoded));
            groups.push(group);
        }
        let requests = history.backfill_requests();
        let node = LedgerNode::assemble(config.id(), groups, history, options);
        let reach = backfill::Reach::Tcp(config.tls().cloned());
        let backfill = backfill::spawn(node.downgrade(), requests, reach);
        let placement = config.first_leaders;
        let orders = leadership::OverGrpc { identity, tls: config.tls().cloned() };
        let leadership = Arc::new(Leadership { placement, orders });
        let balance = leadership::spawn(node.downgrade(), Arc::clone(&leadership));
        let _ = node.inner.leadership.set(leadership);
        node.inner.background_tasks.lock().expect("task lock poisoned").extend([backfill, balance]);
        let ledger = LedgerRpcServer::new(node.downgrade(), identity, config.tls().cloned());
        let raft_server = RaftRpcServer::new(served, identity, config.first_leaders);
        let server = serve(listener, raft_server, ledger, config.tls())?;
        *node.inner.server.lock().expect("server lock poisoned") = Some(server);
        // Every group, not just the first: a founding cut short by a crash resumes.
        let mut initialized = true;
        for group in &node.inner.groups {
            let group_initialized = group.raft().is_initialized().await;
            initialized &= group_initialized
                .map_err(|fatal| LedgerError::from_fatal("bootstrapping", fatal))?;
        }
        if let ClusterStart::Bootstrap(peers) = config.start() {
            if !initialized && peers.keys().next() == Some(&config.id()) {
                let tls = config.tls().cloned();
                let placement = config.first_leaders;
                let founding =
                    founding::found(node.downgrade(), identity, peers.clone(), placement, tls);
                let task = tokio::spawn(founding);
                node.inner.background_tasks.lock().expect("task lock poisoned").push(task);
            }
        }
        Ok(node)
    }

    /// Linearizable read of a single-group node's whole state machine (ensure_linearizable
    /// first); panics on a sharded node. This and the three reads below hand a whole
    /// group's `Ledger` to `f`: for tests only (feature `test-support`); production code
    /// reads through [`LedgerApi`](crate::LedgerApi).
    #[cfg(any(test, feature = "test-support"))]
    pub async fn read<R>(&self, f: impl FnOnce(&Ledger) -> R) -> Result<R, LedgerError> {
        self.only_group().read(f).await
    }

    /// Possibly-stale local read of a single-group node, no Raft round; panics on a
    /// sharded node. `f` runs under the state lock, which holds back applies.
    #[cfg(any(test, feature = "test-support"))]
    pub fn read_local<R>(&self, f: impl FnOnce(&Ledger) -> R) -> R {
        self.only_group().read_local(f)
    }

    /// Linearizable read of the ledger replica of `account`'s group.
    #[cfg(any(test, feature = "test-support"))]
    pub async fn read_account<R>(
        &self,
        account: AccountId,
        f: impl FnOnce(&Ledger) -> R,
    ) -> Result<R, LedgerError> {
        self.group_of(account).read(f).await
    }

    /// Possibly-stale local read of the ledger replica of `account`'s group.
    #[cfg(any(test, feature = "test-support"))]
    pub fn read_local_account<R>(&self, account: AccountId, f: impl FnOnce(&Ledger) -> R) -> R {
        self.group_of(account).read_local(f)
    }

    /// This node's snapshot turn in group `group_idx` and the turns in a round
    /// (`compaction.rs`): for tests only (feature `test-support`).
    #[cfg(any(test, feature = "test-support"))]
    pub fn snapshot_turn(&self, group_idx: u32) -> (u64, u64) {
        let group = self.group_at(group_idx).expect("the node has the group");
        crate::compaction::turn_of(group, self.id(), group_idx)
    }

    /// Waits until one of this node's Raft groups stops on its own, on a storage error
    /// (EIO, a full disk, a corrupt record: openraft stops the core on any), and says why.
    /// The node is half dead then: that group answers nothing, the others go on. Its
    /// process should exit so that its supervisor restarts it, as `solrouter ledger-node`
    /// does; the restart reopens the store and catches up from the peers.
    pub async fn stopped(&self) -> LedgerError {
        let waits = self.inner.groups.iter().map(|group| Box::pin(group.until_stopped()));
        futures_util::future::select_all(waits).await.0
    }

    /// Hands every group this node leads to another voter close to its log (a few entries
    /// behind at most), each within [`HAND_OVER_TIMEOUT`](crate::HAND_OVER_TIMEOUT), before
    /// a planned stop: its groups then need no election, which leaves a group without a
    /// leader for an election timeout or more. Answers how many groups this node still
    /// leads (one that no other voter has caught up with is left to an election). The
    /// groups come back once the node is up again and caught up.
    pub async fn hand_over_leadership(&self) -> usize {
        if let Some(leadership) = self.inner.leadership.get() {
            leadership::hand_over_all(self, leadership).await;
        }
        self.inner.groups.iter().filter(|group| group.leads()).count()
    }

    /// Stops serving peers, then every group's Raft core. Later submits and reads fail
    /// with [`LedgerError::Shutdown`].
    pub async fn shutdown(&self) -> Result<(), LedgerError> {
        for task in self.inner.background_tasks.lock().expect("task lock poisoned").drain(..) {
            task.abort();
        }
        let server = self.inner.server.lock().expect("server lock poisoned").take();
        if let Some(server) = server {
            let _ = server.shutdown_tx.send(());
            // A server that failed has nothing left to stop; its error was logged.
            let _ = server.task.await;
        }
        for group in &self.inner.groups {
            group.shutdown().await?;
        }
        // What the applies queued, written and synced (the writer task was aborted).
        self.inner.history.blocking("syncing the request history", History::sync).await
    }

    pub fn n_groups(&self) -> u32 {
        self.inner.groups.len() as u32
    }

    /// The group of `account` on this cluster.
    pub fn group_idx_of(&self, account: AccountId) -> u32 {
        group_of_slot(slot_of(account), self.n_groups())
    }

    /// Counters of a single-group node.
    pub fn stats(&self) -> NodeStats {
        self.only_group().stats()
    }

    pub fn group_stats(&self, group_idx: u32) -> NodeStats {
        self.inner.groups[group_idx as usize].stats()
    }

    /// The live state of group `group_idx` on this node: the size of its ledger replica
    /// as a snapshot holds it. Encodes a copy taken under the state lock (O(1) but for the
    /// young pending holds, a bounded number), outside it, so applies do not wait for it.
    pub fn state_bytes(&self, group_idx: u32) -> Result<u64, LedgerError> {
        let ledger = self.group_at(group_idx)?.read_local(Ledger::clone);
        let bytes = codec::encoded_len(&ledger)
            .map_err(|e| LedgerError::storage("sizing the ledger", e))?;
        Ok(bytes as u64)
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// What this node's request history holds and has dropped.
    pub fn history_stats(&self) -> Result<HistoryStats, LedgerError> {
        let stats = self.inner.history.stats();
        stats.map_err(|e| LedgerError::storage("reading the request history", e))
    }

    /// The cluster as this node sees it.
    pub fn topology(&self) -> Topology {
        let mut members = BTreeMap::new();
        let mut incarnations = BTreeMap::new();
        let mut voters = Vec::with_capacity(self.inner.groups.len());
        let mut leaders = Vec::with_capacity(self.inner.groups.len());
        for group in &self.inner.groups {
            let metrics = group.raft().metrics().borrow().clone();
            let membership = metrics.membership_config.membership();
            members.extend(membership.nodes().map(|(id, node)| (*id, node.addr.clone())));
            incarnations.extend(membership.nodes().map(|(id, node)| (*id, node.incarnation)));
            voters.push(membership.voter_ids().collect());
            leaders.push(metrics.current_leader);
        }
        let (node_id, n_groups) = (self.inner.id, self.n_groups());
        Topology { node_id, n_groups, members, incarnations, voters, leaders }
    }

    /// Commands of one group (checked to belong to it), submitted together; see
    /// [`Group::submit_many`](crate::group::Group::submit_many).
    pub(crate) async fn submit_group(
        &self,
        group_idx: u32,
        commands: Vec<Command>,
    ) -> Result<Vec<Outcome>, LedgerError> {
        let group = self.group_at(group_idx)?;
        if let Some(stray) =
            commands.iter().find(|c| group_of_account(c.op.account(), self.n_groups()) != group_idx)
        {
            return Err(LedgerError::Invalid(format!(
                "command {:x} belongs to group {}, not {group_idx} (of {} groups)",
                stray.id.0,
                group_of_account(stray.op.account(), self.n_groups()),
                self.n_groups()
            )));
        }
        if commands.len() > BATCH_COMMANDS_MAX {
            return Err(LedgerError::Invalid(format!(
                "{} commands in one submit; at most {BATCH_COMMANDS_MAX}",
                commands.len()
            )));
        }
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        group.submit_many(commands).await
    }

    /// Changes one group's membership; fails with `NotLeader` unless this node leads it.
    /// A node to add is dialled over `tls` to learn its incarnation.
    pub(crate) async fn change_membership(
        &self,
        group_idx: u32,
        change: &MembershipChange,
        tls: Option<&TlsConfig>,
    ) -> Result<(), LedgerError> {
        membership::change(self.group_at(group_idx)?, change, tls).await
    }

    pub(crate) fn history_store(&self) -> &History {
        &self.inner.history
    }

    pub(crate) fn downgrade(&self) -> Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    pub(crate) fn from_weak(inner: &Weak<Inner>) -> Option<LedgerNode> {
        inner.upgrade().map(|inner| LedgerNode { inner })
    }

    /// Runs `check` on the node every `period` (a late tick delays the next) until the
    /// node is dropped, shut down (which aborts the task), or `check` answers false.
    pub(crate) fn spawn_every<F, Fut>(
        node: Weak<Inner>,
        period: Duration,
        mut check: F,
    ) -> JoinHandle<()>
    where
        F: FnMut(LedgerNode) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = bool> + Send,
    {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(node) = LedgerNode::from_weak(&node) else { return };
                if !check(node).await {
                    return;
                }
            }
        })
    }

    /// A node of already started `groups`, with its history's maintenance and each
    /// group's hold expiry and snapshot policy running.
    fn assemble(
        id: NodeId,
        groups: Vec<Group>,
        history: History,
        options: &NodeOptions,
    ) -> LedgerNode {
        let node = LedgerNode::of_groups(id, groups, history);
        let maintenance =
            history::spawn_maintenance(&node.inner.history, Arc::new(group::wall_clock_ms));
        let every_entries = options.snapshot_every_entries;
        let per_group = (0..node.n_groups()).flat_map(|group_idx| {
            let expiry = expiry::spawn(node.downgrade(), group_idx);
            [expiry, compaction::spawn(node.downgrade(), group_idx, every_entries)]
        });
        let mut tasks = node.inner.background_tasks.lock().expect("task lock poisoned");
        tasks.extend(std::iter::once(maintenance).chain(per_group));
        drop(tasks);
        node
    }

    /// A node of already started `groups` with no background task and no server: what
    /// [`LedgerNode::assemble`] builds on, and what the simulation serves the ledger API
    /// from (its history lives in memory, its upkeep the simulation runs on the node's
    /// virtual clock, its expiry is left to its workload).
    pub(crate) fn of_groups(id: NodeId, groups: Vec<Group>, history: History) -> LedgerNode {
        let inner = Inner {
            id,
            groups,
            history,
            server: Mutex::new(None),
            background_tasks: Mutex::new(Vec::new()),
            leadership: OnceLock::new(),
        };
        LedgerNode { inner: Arc::new(inner) }
    }

    /// Every group's replica on this node, by group index.
    pub(crate) fn groups(&self) -> &[Group] {
        &self.inner.groups
    }

    pub(crate) fn group_at(&self, group_idx: u32) -> Result<&Group, LedgerError> {
        self.inner.groups.get(group_idx as usize).ok_or_else(|| {
            LedgerError::Invalid(format!("no group {group_idx} (of {})", self.n_groups()))
        })
    }

    fn group_of(&self, account: AccountId) -> &Group {
        &self.inner.groups[self.group_idx_of(account) as usize]
    }

    fn only_group(&self) -> &Group {
        assert_eq!(self.inner.groups.len(), 1, "whole-ledger access on a sharded node");
        &self.inner.groups[0]
    }
}

pub(crate) struct Inner {
    id: NodeId,
    groups: Vec<Group>,
    history: History,
    server: Mutex<Option<Server>>,
    /// Hold expiry (one per group) and the history's writer and retention, aborted on
    /// shutdown.
    background_tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Where a cluster node's groups belong and how it hands one over (`leadership.rs`);
    /// unset on a single node.
    leadership: OnceLock<Arc<Leadership<OverGrpc>>>,
}

impl GroupAccess for LedgerNode {
    fn n_groups(&self) -> u32 {
        LedgerNode::n_groups(self)
    }

    /// Concurrent submits are coalesced (group commit) into one `Batch` = one Raft entry,
    /// stamped with the leader's clock; each waits at most
    /// [`SUBMIT_TIMEOUT`](crate::SUBMIT_TIMEOUT). On a follower it fails with
    /// [`LedgerError::NotLeader`] naming the leader.
    async fn submit_command(&self, command: Command) -> Result<Outcome, LedgerError> {
        self.group_of(command.op.account()).submit(command).await
    }

    /// None: a local call has only its group's own bounds (`SUBMIT_TIMEOUT` for a submit).
    fn read_deadline(&self) -> Option<Instant> {
        None
    }

    /// Bounded by the group's own timeouts: a node's reads have no `deadline` (its
    /// `read_deadline` is `None`, and a remote caller's RPC carries its own timeout).
    async fn read_group(
        &self,
        group_idx: u32,
        request: ReadRequest,
        _deadline: Option<Instant>,
    ) -> Result<ReadAnswer, LedgerError> {
        let group = self.group_at(group_idx)?;
        // A linearizable read of the history waits, like one of the ledger, until this
        // replica has applied everything acknowledged before it: the history queues the
        // records as entries apply, and a read of it writes the queue first.
        let answer = match request.consistency {
            Consistency::Linearizable => {
                group.read(|ledger| wire::answer(ledger, &request.read)).await?
            }
            Consistency::Stale => group.read_local(|ledger| wire::answer(ledger, &request.read)),
        };
        match answer {
            Some(answer) => Ok(answer),
            None => {
                // On the blocking pool: the read may write the history's queue, or wait for
                // the writer's commit.
                let n_groups = self.n_groups();
                let in_group = move |account| group_of_account(account, n_groups) == group_idx;
                let (read, applied) = (request.read, group.applied_index());
                self.inner
                    .history
                    .off_runtime(move |history| {
                        wire::answer_history(history, &read, group_idx, applied, in_group)
                    })
                    .await
                    .map_err(|e| LedgerError::Unavailable { reason: e.to_string() })?
            }
        }
    }
}

struct Server {
    shutdown_tx: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Serves Raft (to peers) and the ledger API (to gateways) on one port, so a node's one
/// advertised address is both, and a `NotLeader` hint is directly usable by a gateway.
/// With `tls`, every connection must complete a mutual TLS handshake first.
fn serve(
    listener: tokio::net::TcpListener,
    raft: RaftRpcServer,
    ledger: LedgerRpcServer,
    tls: Option<&TlsConfig>,
) -> Result<Server, LedgerError> {
    let (raft_closing, ledger_closing) = (raft.clone(), ledger.clone());
    let raft = RaftServiceServer::new(raft)
        .max_decoding_message_size(RPC_BYTES_MAX)
        .max_encoding_message_size(RPC_BYTES_MAX);
    let ledger = ledger_service(ledger);
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    // Raft appends and ledger RPCs are small request/response messages on long-lived
    // connections: Nagle's algorithm would hold each reply back waiting for an ACK
    // (measured: 4-6x lower throughput through LedgerClient without this).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tls::server(tls)?;
    let task = tokio::spawn(async move {
        let serving = builder.add_service(raft).add_service(ledger);
        let stop = async move {
            let _ = shutdown_rx.await;
            raft_closing.close_streams();
            ledger_closing.close_streams();
        };
        if let Err(e) = serving.serve_with_incoming_shutdown(incoming, stop).await {
            tracing::error!("ledger gRPC server stopped: {e}");
        }
    });
    Ok(Server { shutdown_tx, task })
}

/// The ledger API as a node serves it (the simulation's nodes too): `ledger` with
/// messages up to [`RPC_BYTES_MAX`] either way.
pub(crate) fn ledger_service(ledger: LedgerRpcServer) -> LedgerServiceServer<LedgerRpcServer> {
    LedgerServiceServer::new(ledger)
        .max_decoding_message_size(RPC_BYTES_MAX)
        .max_encoding_message_size(RPC_BYTES_MAX)
}

/// Reads (or on its first open, writes) the identity of the data directory, refusing one
/// of another node.
async fn open_identity(
    store: &WalStore,
    data_dir: &Path,
    node_id: NodeId,
) -> Result<Identity, LedgerError> {
    let fresh = rand::random();
    let loaded = incarnation::load_or_create(&store.tree(IDENTITY_TREE), node_id, fresh).await;
    loaded.map_err(|e| data_dir_error(data_dir, &e))
}

/// An error of the data directory itself, naming it.
fn data_dir_error(data_dir: &Path, message: &str) -> LedgerError {
    let message = format!("data directory {}: {message}", data_dir.display());
    LedgerError::storage("opening the data directory", std::io::Error::other(message))
}

/// Files a data directory of the sled era (before the log moved to redb) holds.
const SLED_FILES: [&str; 2] = ["conf", "db"];

/// Opens the node's stores in `data_dir` (creating them if needed), retrying while one is
/// open: a node that was just shut down or dropped in this process closes them only when
/// openraft's storage tasks finish. A data directory written by sled is refused; a log an
/// older build kept in redb is moved into the log store.
async fn open_stores(data_dir: &Path, options: &NodeOptions) -> Result<NodeStores, LedgerError> {
    if SLED_FILES.iter().all(|name| data_dir.join(name).exists()) {
        return Err(LedgerError::storage(
            "opening the data directory",
            std::io::Error::other(format!(
                "{} holds a ledger in the sled format, which this build no longer reads (the \
                 log moved to redb): start this node with an empty data directory, and it \
                 catches up from its peers (a single dev node starts afresh)",
                data_dir.display()
            )),
        ));
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| LedgerError::storage("creating the data directory", e))?;
    let log_dir = log_dir_of(data_dir, options.log_dir.as_deref())?;
    let log = retry_while_open(
        || WalStore::open_with(&log_dir, options.idle_log_write),
        |e| e.kind() == std::io::ErrorKind::WouldBlock,
    )
    .await?;
    let legacy = data_dir.join(LEGACY_LOG_FILE_NAME);
    if legacy.exists() {
        let redb = retry_while_open(
            || RedbStore::open(&legacy, REDB_CACHE_BYTES, Pace::unpaced()),
            |e| matches!(e, redb::DatabaseError::DatabaseAlreadyOpen),
        )
        .await?;
        move_legacy_log(&redb, &log).await?;
        drop(redb);
        std::fs::rename(&legacy, data_dir.join(LEGACY_LOG_MOVED_NAME))
            .map_err(|e| LedgerError::storage("renaming the moved redb log", e))?;
    }
    let snapshots = retry_while_open(
        || {
            let pace = Pace::bytes_per_second(SNAPSHOT_WRITE_BYTES_PER_SECOND);
            RedbStore::open(&data_dir.join(SNAPSHOT_FILE_NAME), REDB_SNAPSHOT_CACHE_BYTES, pace)
        },
        |e| matches!(e, redb::DatabaseError::DatabaseAlreadyOpen),
    )
    .await?;
    Ok(NodeStores { log, snapshots })
}

/// The log's directory for `data_dir`: `<data dir>/log`, or `log_dir`
/// ([`NodeOptions::with_log_dir`]), recorded in the data directory
/// ([`LOG_LOCATION_FILE_NAME`]) when it is first opened with it. Refuses a log elsewhere
/// than the data directory's (before creating anything): the node would start from an
/// empty log beside a snapshot and history that need the entries after them, and lose
/// what its log acknowledged. Paths are compared made absolute, not resolved: a link to
/// the log is refused too, naming the log's directory.
fn log_dir_of(data_dir: &Path, log_dir: Option<&Path>) -> Result<PathBuf, LedgerError> {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let absolute = |path: &Path| {
        std::path::absolute(path).map_err(|e| LedgerError::storage("resolving the log", e))
    };
    let inside = absolute(&data_dir.join(LOG_DIR_NAME))?;
    let location = data_dir.join(LOG_LOCATION_FILE_NAME);
    let recorded = match std::fs::read(&location) {
        Ok(bytes) => Some(PathBuf::from(OsStr::from_bytes(&bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(LedgerError::storage("reading the log's location", e)),
    };
    let opened_before = data_dir.join(SNAPSHOT_FILE_NAME).exists();
    let expected = recorded.or_else(|| opened_before.then(|| inside.clone()));
    let chosen = log_dir.map(absolute).transpose()?.unwrap_or_else(|| inside.clone());
    match expected {
        Some(expected) if expected != chosen => Err(LedgerError::storage(
            "opening the log",
            std::io::Error::other(format!(
                "the log of {} is in {}, not in {}: start the node with that log directory \
                 (`{}` names one given before; without it the log is in the data directory)",
                data_dir.display(),
                expected.display(),
                chosen.display(),
                LOG_LOCATION_FILE_NAME
            )),
        )),
        Some(_) => Ok(chosen),
        None if chosen == inside => Ok(chosen),
        None => {
            files::write_durably(&location, chosen.as_os_str().as_bytes())
                .map_err(|e| LedgerError::storage("recording the log's location", e))?;
            Ok(chosen)
        }
    }
}

/// Copies every tree of an older build's redb log into the log store, durably.
async fn move_legacy_log(redb: &RedbStore, log: &WalStore) -> Result<(), LedgerError> {
    let failed = |e: &dyn std::fmt::Display| {
        let message = format!("moving the redb log into the log store: {e}");
        LedgerError::storage("opening the data directory", std::io::Error::other(message))
    };
    let tables = redb.tables().map_err(|e| failed(&e))?;
    let n_tables = tables.len();
    for (name, pairs) in tables {
        let batch = pairs.into_iter().map(|(key, value)| (key, Some(value))).collect();
        log.tree(&name).write(batch, Durability::Durable).await.map_err(|e| failed(&e))?;
    }
    tracing::info!(n_tables, "the redb log of an older build moved into the log store");
    Ok(())
}

/// Runs `open` until it succeeds or fails other than `busy` says (a store still open in
/// this process), at most [`OPEN_LOCK_ATTEMPTS_MAX`] times.
async fn retry_while_open<T, E: std::error::Error + Send + Sync + 'static>(
    mut open: impl FnMut() -> Result<T, E>,
    busy: impl Fn(&E) -> bool,
) -> Result<T, LedgerError> {
    let mut attempt = 1;
    loop {
        match open() {
            Ok(store) => return Ok(store),
            Err(e) if busy(&e) && attempt < OPEN_LOCK_ATTEMPTS_MAX => {
                attempt += 1;
                tokio::time::sleep(OPEN_LOCK_RETRY_INTERVAL).await;
            }
            Err(e) => return Err(LedgerError::storage("opening the data directory", e)),
        }
    }
}

/// A node's Raft configuration (the RPC tests of `grpc_network` send with its timeouts).
pub(crate) fn raft_config(options: &NodeOptions) -> Result<Config, LedgerError> {
    let config = Config {
        cluster_name: "solrouter-ledger".to_owned(),
        heartbeat_interval: HEARTBEAT_INTERVAL.as_millis() as u64,
        election_timeout_min: ELECTION_TIMEOUT_MIN.as_millis() as u64,
        election_timeout_max: ELECTION_TIMEOUT_MAX.as_millis() as u64,
        max_payload_entries: APPEND_ENTRIES_MAX,
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
        install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT.as_millis() as u64,
        // Triggered by each node's own policy (`compaction.rs`), which weighs the state's
        // size against the traffic since the last snapshot.
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: options.entries_kept_after_snapshot,
        ..Config::default()
    };
    config.validate().map_err(|_| LedgerError::InvalidOptions("rejected by openraft"))
}

/// Test-only: three nodes of one cluster with `n_groups` groups in this process (free
/// local ports, a temporary directory each, kept while the returned guards live), once
/// node `leader` leads group `group_idx` and has applied its first entries (as the
/// default placement puts it); with that group's metrics then.
#[cfg(test)]
pub(crate) async fn three_local_nodes(
    n_groups: u32,
    leader: NodeId,
    group_idx: u32,
) -> (Vec<tempfile::TempDir>, Vec<LedgerNode>, openraft::RaftMetrics<NodeId, Member>) {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let peers: BTreeMap<u64, String> = (1..=3).map(|id| (id, crate::free_local_addr())).collect();
    let mut nodes = Vec::new();
    for (id, dir) in (1..=3).zip(&dirs) {
        nodes.push(LedgerNode::open(id, &peers, dir.path(), n_groups).await.unwrap());
    }
    let raft = nodes[(leader - 1) as usize].group_at(group_idx).unwrap().raft();
    let leads = |metrics: &openraft::RaftMetrics<NodeId, Member>| {
        metrics.current_leader == Some(leader) && metrics.last_applied.is_some()
    };
    let what = format!("node {leader} leads group {group_idx}");
    let seen = crate::leadership::until(raft, Some(Duration::from_secs(20)), what, leads);
    let seen = seen.await.unwrap();
    (dirs, nodes, seen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use solrouter_ledger::{Op, OpId, PicoUsd, Rejection, Reply, NAME_BYTES_MAX};

    /// A node whose log lives outside its data directory keeps it there across restarts,
    /// and is refused, naming the log's directory and creating nothing, when opened with
    /// the log anywhere else: with none, with another, or with one for a data directory
    /// that has its log inside.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_kept_elsewhere_stays_where_the_data_directory_says() {
        let (data, logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let log_dir = logs.path().join("log");
        let elsewhere = NodeOptions::default().with_log_dir(log_dir.clone());
        let account = AccountId(1);
        let create = Command { id: OpId(1), op: Op::CreateAccount { account, name: "a".into() } };
        let credit = Command { id: OpId(2), op: Op::Credit { account, amount: PicoUsd(7) } };
        {
            let node = LedgerNode::open_single_with(data.path(), &elsewhere).await.unwrap();
            node.submit_group(0, vec![create, credit]).await.unwrap();
            node.shutdown().await.unwrap();
        }
        assert!(!data.path().join(LOG_DIR_NAME).exists(), "the log went to the data directory");
        let segments = std::fs::read_dir(&log_dir).unwrap().filter_map(Result::ok);
        let n_segments = segments.filter(|f| f.path().extension().is_some_and(|e| e == "log"));
        assert!(n_segments.count() > 0, "no log in {}", log_dir.display());
        let refusal = |e: LedgerError| {
            let message = e.to_string();
            assert!(message.contains(&log_dir.display().to_string()), "{message}");
        };
        refusal(LedgerNode::open_single(data.path()).await.err().unwrap());
        let other = NodeOptions::default().with_log_dir(logs.path().join("other"));
        refusal(LedgerNode::open_single_with(data.path(), &other).await.err().unwrap());
        assert!(!logs.path().join("other").exists(), "a refused log directory was created");

        let node = LedgerNode::open_single_with(data.path(), &elsewhere).await.unwrap();
        let credits = node.read(|ledger| ledger.account(account).map(|a| a.credits)).await;
        assert_eq!(credits.unwrap(), Some(PicoUsd(7)));
        node.shutdown().await.unwrap();

        // A data directory whose log is inside it keeps it there, named or not.
        let inside = tempfile::tempdir().unwrap();
        LedgerNode::open_single(inside.path()).await.unwrap().shutdown().await.unwrap();
        let named = NodeOptions::default().with_log_dir(inside.path().join(LOG_DIR_NAME));
        let node = LedgerNode::open_single_with(inside.path(), &named).await.unwrap();
        node.shutdown().await.unwrap();
        assert!(!inside.path().join(LOG_LOCATION_FILE_NAME).exists());
        let moved = LedgerNode::open_single_with(inside.path(), &elsewhere).await.err().unwrap();
        let message = moved.to_string();
        assert!(
            message.contains(&inside.path().join(LOG_DIR_NAME).display().to_string()),
            "{message}"
        );
    }

    /// A `LedgerService` submit's commands go into one entry, in order; a malformed one
    /// is answered with its rejection in its place and never proposed; an oversized
    /// submit is refused whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_submit_is_one_entry_and_its_malformed_commands_are_answered_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let node = LedgerNode::open_single(dir.path()).await.unwrap();
        let account = AccountId(1);
        let command = |id: u128, op: Op| Command { id: OpId(id), op };
        let commands = vec![
            command(1, Op::CreateAccount { account, name: "a".into() }),
            command(
                2,
                Op::CreateAccount { account: AccountId(2), name: "n".repeat(NAME_BYTES_MAX + 1) },
            ),
            command(3, Op::Credit { account, amount: PicoUsd(5) }),
        ];
        let before = node.group_stats(0);
        let outcomes = node.submit_group(0, commands).await.unwrap();
        assert!(matches!(outcomes[0], Ok(Reply::AccountCreated)), "{outcomes:?}");
        assert!(matches!(outcomes[1], Err(Rejection::Invalid(_))), "{outcomes:?}");
        assert!(matches!(outcomes[2], Ok(Reply::Credited { credits: PicoUsd(5) })), "{outcomes:?}");
        let after = node.group_stats(0);
        assert_eq!(after.n_batches_proposed - before.n_batches_proposed, 1);
        assert_eq!(after.n_commands_proposed - before.n_commands_proposed, 2);

        let credit = |n: u128| command(100 + n, Op::Credit { account, amount: PicoUsd(1) });
        let oversized = (0..=BATCH_COMMANDS_MAX as u128).map(credit).collect();
        assert!(matches!(node.submit_group(0, oversized).await, Err(LedgerError::Invalid(_))));
        assert_eq!(node.submit_group(0, Vec::new()).await.unwrap(), []);
        node.shutdown().await.unwrap();
    }
}
