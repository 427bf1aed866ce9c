//! The simulated network: an in-process [`RaftNetworkFactory`] that hands each Raft RPC to
//! the target node's Raft instance after a seeded fate. A message may be lost, delayed
//! (by a few milliseconds, or a spike longer than an election timeout), duplicated, or cut
//! by a partition (checked when it is sent and again when it arrives, so a partition also
//! cuts messages in flight); replies face the same. Delay and duplicates reorder messages:
//! openraft gives up on an RPC after its timeout and sends the next one while the first
//! may still arrive.
//!
//! Requests and replies cross as encoded bytes (`codec`), as over gRPC, so what the simulation
//! delivers is exactly what the wire could carry; a link may be slow, so a message's bytes
//! take time to cross. A lost message is never reported to the sender: like on a real
//! network, the sender's own timeout is all it learns. What an AppendEntries carries and
//! how long a snapshot chunk may take are production's (`sizing`), as in `grpc_network`.
//!
//! Requests are [`Stamped`] and admitted by the target's data directory identity
//! exactly as `grpc_network` does ([`incarnation::admit`]); a refusal reaches the sender
//! as unreachable, as over gRPC.
//!
//! Gateways' connections to the nodes' ledger API cross the same network as byte streams
//! (`gateway`): [`Net::gateway_door`], [`Net::gateway_link`] and [`Net::gateway_delay`]
//! say whether one may open, what it lets through now and how long its bytes take.

use crate::codec;
use crate::encoded::{self, EncodedEntries};
use crate::error::LedgerError;
use crate::founding::FirstLeaders;
use crate::incarnation::{self, Identity, Incarnation, Stamped};
use crate::leadership::{self, Order, Orders};
use crate::sizing::{self, AppendBudget};
use crate::types::{Member, NodeId, Raft, TypeConfig};
use bytes::Bytes;
use openraft::error::{
    InstallSnapshotError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use rand::rngs::StdRng;
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::DuplexStream;
use tokio::sync::futures::Notified;
use tokio::sync::{mpsc, oneshot, Notify};

/// What a lost packet of a gateway's connection costs: Linux's minimum retransmission
/// timeout.
const TCP_RETRANSMIT_TIMEOUT: Duration = Duration::from_millis(200);

/// How the network behaves between partitions; the nemesis changes it during a run.
#[derive(Clone, Copy, Debug)]
pub struct Weather {
    pub loss_per_mille: u32,
    pub duplicate_per_mille: u32,
    /// Every message takes up to this long.
    pub delay_max: Duration,
    /// Some messages take up to `spike_max` instead: longer than an election timeout.
    pub spike_per_mille: u32,
    pub spike_max: Duration,
    /// Bytes a link carries per millisecond (0: as many as sent): a message of `n` bytes
    /// takes `n / link_bytes_per_ms` ms more.
    pub link_bytes_per_ms: u64,
}

impl Weather {
    /// The network after healing: nothing lost or duplicated, short delays.
    pub const CALM: Weather = Weather {
        loss_per_mille: 0,
        duplicate_per_mille: 0,
        delay_max: Duration::from_millis(2),
        spike_per_mille: 0,
        spike_max: Duration::ZERO,
        link_bytes_per_ms: 0,
    };
}

/// What happened to messages so far, for the run's summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub n_sent: u64,
    pub n_lost: u64,
    pub n_duplicated: u64,
    pub n_delivered: u64,
    /// Messages that arrived after a later message on the same link.
    pub n_reordered: u64,
    /// Snapshot chunks lost on purpose ([`Net::lose_next_last_chunk`]).
    pub n_last_chunks_lost: u64,
    /// AppendEntries cut to what the link carries in time, answered `PartialSuccess`.
    pub n_partial_appends: u64,
    /// Orders to campaign a voter took: a leader handing its group over
    /// (`leadership.rs`).
    pub n_campaigns: u64,
}

/// The network shared by every node of a simulated cluster.
pub struct Net {
    state: Mutex<NetState>,
    /// Notified whenever a node comes up or goes down, a link is cut or healed, or a pause
    /// starts or ends: what a gateway connection held up by a fault waits for. A `Notify`
    /// wakes its waiters in a fixed order (a `watch` channel spreads them over wakers
    /// chosen by the runtime's unseeded RNG, which made runs diverge).
    changes: Notify,
}

/// What a gateway's connection to a node's process lets through now (see
/// [`Net::gateway_link`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatewayLink {
    /// The process is gone (crashed, restarted): the connection is reset.
    Gone,
    /// Cut by a partition (until the next change), or the node paused (until then): the
    /// bytes wait, as TCP's would.
    Held(Option<tokio::time::Instant>),
    Open,
}

struct NetState {
    rng: StdRng,
    weather: Weather,
    /// Live nodes: the incarnation (process) that may send and receive, its data
    /// directory's identity, and its groups' Raft instances. A node absent from here is
    /// down.
    nodes: BTreeMap<NodeId, (u64, Identity, Vec<ServedGroup>)>,
    /// Where a live node's ledger API takes the server end of a gateway's new connection.
    doors: BTreeMap<NodeId, mpsc::Sender<DuplexStream>>,
    /// Directed links that are cut: `(source, target)`.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Per directed link: messages sent so far, and the highest sequence number arrived.
    n_sent_on: BTreeMap<(NodeId, NodeId), u64>,
    arrived_max_on: BTreeMap<(NodeId, NodeId), u64>,
    /// Nodes whose process is paused (a stop-the-world stall, a VM frozen), and until when:
    /// what they send and what is sent to them waits until then.
    paused_until: BTreeMap<NodeId, tokio::time::Instant>,
    /// Nodes the last chunk of the next snapshot sent to is lost on the way.
    lose_last_chunk_to: BTreeSet<NodeId>,
    counters: NetCounters,
}

#[derive(Clone, Copy)]
enum Rpc {
    AppendEntries,
    InstallSnapshot,
    Vote,
    /// A leader handing its group over (`leadership.rs`); answered `Result<(), String>`.
    Campaign,
}

impl Net {
    pub fn new(rng: StdRng) -> Arc<Net> {
        let state = NetState {
            rng,
            weather: Weather::CALM,
            nodes: BTreeMap::new(),
            doors: BTreeMap::new(),
            cut: BTreeSet::new(),
            n_sent_on: BTreeMap::new(),
            arrived_max_on: BTreeMap::new(),
            paused_until: BTreeMap::new(),
            lose_last_chunk_to: BTreeSet::new(),
            counters: NetCounters::default(),
        };
        Arc::new(Net { state: Mutex::new(state), changes: Notify::new() })
    }

    fn changed(&self) {
        self.changes.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().expect("network lock poisoned")
    }

    /// Process `incarnation` of node `node` is up: its groups' Raft instances take
    /// messages, its ledger API takes gateways' connections through `door`.
    pub fn node_up(
        &self,
        node: NodeId,
        incarnation: u64,
        identity: Identity,
        groups: Vec<ServedGroup>,
        door: mpsc::Sender<DuplexStream>,
    ) {
        let mut state = self.lock();
        state.nodes.insert(node, (incarnation, identity, groups));
        state.doors.insert(node, door);
        drop(state);
        self.changed();
    }

    pub fn node_down(&self, node: NodeId) {
        let mut state = self.lock();
        state.nodes.remove(&node);
        state.doors.remove(&node);
        drop(state);
        self.changed();
    }

    pub fn set_weather(&self, weather: Weather) {
        self.lock().weather = weather;
    }

    pub fn cut(&self, source: NodeId, target: NodeId) {
        self.lock().cut.insert((source, target));
        self.changed();
    }

    /// Cuts `node` off from each of `others` (itself skipped), both ways.
    pub fn cut_off(&self, node: NodeId, others: impl IntoIterator<Item = NodeId>) {
        for other in others.into_iter().filter(|other| *other != node) {
            self.cut(node, other);
            self.cut(other, node);
        }
    }

    pub fn heal(&self) {
        self.lock().cut.clear();
        self.changed();
    }

    /// Pauses node `node`'s process for `duration`: it neither hears nor is heard until
    /// then, and then everything held arrives at once (its timers, which the simulation
    /// cannot stop, fire meanwhile but their messages wait too).
    pub fn pause(&self, node: NodeId, duration: Duration) {
        let until = tokio::time::Instant::now() + duration;
        let mut state = self.lock();
        let paused = state.paused_until.entry(node).or_insert(until);
        *paused = (*paused).max(until);
        drop(state);
        self.changed();
    }

    /// Ends every pause.
    pub fn resume_all(&self) {
        self.lock().paused_until.clear();
        self.changed();
    }

    /// Changes of the network (see the field), for a gateway connection to wait on: enable
    /// the returned future before looking at the network, then await it.
    pub fn next_change(&self) -> Notified<'_> {
        self.changes.notified()
    }

    /// Where node `target`'s current process takes a new connection from a gateway on
    /// `home`'s side of the partitions (its incarnation, and its ledger API's door), if it
    /// is up and the links between `home` and it are not cut either way (a handshake needs
    /// both).
    pub fn gateway_door(
        &self,
        home: NodeId,
        target: NodeId,
    ) -> Option<(u64, mpsc::Sender<DuplexStream>)> {
        let state = self.lock();
        let cut = home != target
            && (state.cut.contains(&(home, target)) || state.cut.contains(&(target, home)));
        let (incarnation, _, _) = state.nodes.get(&target).filter(|_| !cut)?;
        Some((*incarnation, state.doors.get(&target)?.clone()))
    }

    /// What the connection of a gateway on `home`'s side to process `incarnation` of node
    /// `target` lets through now, towards the node or back from it.
    pub fn gateway_link(
        &self,
        home: NodeId,
        target: NodeId,
        incarnation: u64,
        towards_target: bool,
    ) -> GatewayLink {
        let state = self.lock();
        if state.nodes.get(&target).is_none_or(|(live, _, _)| *live != incarnation) {
            return GatewayLink::Gone;
        }
        let link = if towards_target { (home, target) } else { (target, home) };
        if home != target && state.cut.contains(&link) {
            return GatewayLink::Held(None);
        }
        match state.paused_until.get(&target) {
            Some(until) if *until > tokio::time::Instant::now() => GatewayLink::Held(Some(*until)),
            _ => GatewayLink::Open,
        }
    }

    /// How long `bytes` of a gateway connection take to cross in the current weather: a
    /// message's delay (at times a spike), its bytes at the link's pace, and for a lost
    /// packet TCP's retransmission on top (a byte stream loses nothing, it only waits).
    pub fn gateway_delay(&self, bytes: usize) -> Duration {
        let mut state = self.lock();
        let weather = state.weather;
        let retransmit = match state.rng.gen_range(0..1000) < weather.loss_per_mille {
            true => TCP_RETRANSMIT_TIMEOUT,
            false => Duration::ZERO,
        };
        let crossing = match weather.link_bytes_per_ms {
            0 => Duration::ZERO,
            bytes_per_ms => Duration::from_millis(bytes as u64 / bytes_per_ms),
        };
        state.delay(&weather) + crossing + retransmit
    }

    /// Waits until none of `nodes` is paused.
    pub async fn unpaused(&self, nodes: &[NodeId]) {
        loop {
            let until = {
                let state = self.lock();
                nodes.iter().filter_map(|node| state.paused_until.get(node)).max().copied()
            };
            match until {
                Some(until) if until > tokio::time::Instant::now() => {
                    tokio::time::sleep_until(until).await;
                }
                _ => return,
            }
        }
    }

    pub fn counters(&self) -> NetCounters {
        self.lock().counters
    }

    /// The last chunk of the next snapshot sent to `target` is lost on the way.
    pub fn lose_next_last_chunk(&self, target: NodeId) {
        self.lock().lose_last_chunk_to.insert(target);
    }

    /// Whether a last snapshot chunk for `target` is to be lost now (once).
    fn last_chunk_lost(&self, target: NodeId) -> bool {
        let mut state = self.lock();
        let lost = state.lose_last_chunk_to.remove(&target);
        state.counters.n_last_chunks_lost += u64::from(lost);
        lost
    }

    /// The message's sequence number on its link, and the delays of its copies (of `bytes`
    /// each) about to leave `source` for `target`: none if it is lost, two if it is
    /// duplicated.
    fn plan(&self, source: (NodeId, u64), target: NodeId, bytes: usize) -> (u64, Vec<Duration>) {
        let mut state = self.lock();
        state.counters.n_sent += 1;
        let n_sent_on = state.n_sent_on.entry((source.0, target)).or_default();
        *n_sent_on += 1;
        let seq = *n_sent_on;
        let weather = state.weather;
        let source_live = state.nodes.get(&source.0).is_some_and(|(inc, _, _)| *inc == source.1);
        let lost = !source_live
            || state.cut.contains(&(source.0, target))
            || state.rng.gen_range(0..1000) < weather.loss_per_mille;
        if lost {
            state.counters.n_lost += 1;
            return (seq, Vec::new());
        }
        let n_copies = if state.rng.gen_range(0..1000) < weather.duplicate_per_mille {
            state.counters.n_duplicated += 1;
            2
        } else {
            1
        };
        let crossing = match weather.link_bytes_per_ms {
            0 => Duration::ZERO,
            bytes_per_ms => Duration::from_millis(bytes as u64 / bytes_per_ms),
        };
        (seq, (0..n_copies).map(|_| state.delay(&weather) + crossing).collect())
    }

    /// The target's Raft instance of `group` if message `seq` of the link may arrive now,
    /// with the target's incarnation (a reply leaves only if that incarnation still lives)
    /// and its data directory's identity.
    fn arrive(
        &self,
        source: NodeId,
        target: NodeId,
        seq: u64,
        group: u32,
    ) -> Option<(u64, Identity, ServedGroup)> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let arrived = match state.nodes.get(&target) {
            Some((incarnation, identity, groups)) if !state.cut.contains(&(source, target)) => {
                Some((*incarnation, *identity, groups[group as usize].clone()))
            }
            _ => None,
        };
        if arrived.is_none() {
            state.counters.n_lost += 1;
            return None;
        }
        state.counters.n_delivered += 1;
        let arrived_max = state.arrived_max_on.entry((source, target)).or_default();
        if seq < *arrived_max {
            state.counters.n_reordered += 1;
        }
        *arrived_max = seq.max(*arrived_max);
        arrived
    }
}

impl NetState {
    fn delay(&mut self, weather: &Weather) -> Duration {
        let max = if self.rng.gen_range(0..1000) < weather.spike_per_mille {
            weather.spike_max
        } else {
            weather.delay_max
        };
        self.rng.gen_range(Duration::ZERO..=max)
    }
}

/// The network factory of one group on one node incarnation.
pub struct SimNetwork {
    net: Arc<Net>,
    identity: Identity,
    incarnation: u64,
    group: u32,
    encoded: Arc<EncodedEntries>,
}

/// A node's replica of one group, as deliveries reach it: its Raft instance, and the
/// encodings its log keeps.
type ServedGroup = (Raft, Arc<EncodedEntries>);

impl SimNetwork {
    /// Group `group`'s network on the node of `identity` (process `incarnation`), sending
    /// entries as its log encoded them in `encoded`, as `GrpcNetwork` does.
    pub fn new(
        net: Arc<Net>,
        identity: Identity,
        incarnation: u64,
        group: u32,
        encoded: Arc<EncodedEntries>,
    ) -> SimNetwork {
        SimNetwork { net, identity, incarnation, group, encoded }
    }
}

pub struct SimConnection {
    net: Arc<Net>,
    source: (NodeId, u64),
    source_incarnation: Incarnation,
    target: NodeId,
    target_incarnation: Incarnation,
    group: u32,
    entries: AppendBudget,
    encoded: Arc<EncodedEntries>,
}

impl RaftNetworkFactory<TypeConfig> for SimNetwork {
    type Network = SimConnection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> SimConnection {
        SimConnection {
            net: Arc::clone(&self.net),
            source: (self.identity.node_id, self.incarnation),
            source_incarnation: self.identity.incarnation,
            target,
            target_incarnation: node.incarnation,
            group: self.group,
            entries: AppendBudget::default(),
            encoded: Arc::clone(&self.encoded),
        }
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>>;

impl SimConnection {
    fn stamp<Q>(&self, rpc: Q) -> Stamped<Q> {
        Stamped {
            from: self.source.0,
            from_incarnation: self.source_incarnation,
            to_incarnation: self.target_incarnation,
            rpc,
        }
    }

    async fn call<T, E>(&mut self, rpc: Rpc, request: &impl Serialize) -> RpcResult<T, E>
    where
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = codec::encode(&self.stamp(request)).expect("raft requests encode");
        self.call_encoded(rpc, payload).await
    }

    /// Sends `payload`, a stamped request encoded.
    async fn call_encoded<T, E>(&mut self, rpc: Rpc, payload: Vec<u8>) -> RpcResult<T, E>
    where
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let reply = match self.send(rpc, payload).await {
            Ok(reply) => reply,
            Err(refusal) => {
                return Err(RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
                    refusal,
                ))))
            }
        };
        let result: Result<T, RaftError<NodeId, E>> =
            codec::decode(&reply).expect("raft replies decode");
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// Sends `payload` and waits for the encoded reply, or the target's refusal; a lost
    /// request or reply never answers (the sender's own timeout is all it learns).
    async fn send(&self, rpc: Rpc, payload: Vec<u8>) -> Result<Vec<u8>, String> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let mut reply_tx = Some(reply_tx);
        let payload = Bytes::from(payload);
        let (seq, delays) = self.net.plan(self.source, self.target, payload.len());
        for delay in delays {
            // Only the first copy's reply can reach the caller; a duplicate's is dropped.
            let delivery = Delivery {
                net: Arc::clone(&self.net),
                source: self.source.0,
                target: self.target,
                group: self.group,
                seq,
                rpc,
                payload: payload.clone(),
                reply_tx: reply_tx.take(),
            };
            tokio::spawn(delivery.run(delay));
        }
        match reply_rx.await {
            Ok(answer) => answer,
            // Lost: wait for the caller's timeout, as a real sender would.
            Err(_) => std::future::pending().await,
        }
    }
}

/// [`Orders`] over the simulated network, from one node incarnation.
pub struct SimOrders {
    pub net: Arc<Net>,
    pub identity: Identity,
    pub incarnation: u64,
}

impl Orders for SimOrders {
    async fn give(
        &self,
        group_idx: u32,
        to: NodeId,
        member: &Member,
        order: Order,
    ) -> Result<(), LedgerError> {
        let (net, identity, incarnation) = (Arc::clone(&self.net), self.identity, self.incarnation);
        let encoded = Arc::default();
        let mut network = SimNetwork::new(net, identity, incarnation, group_idx, encoded);
        let connection = network.new_client(to, member).await;
        let payload = codec::encode(&connection.stamp(order)).expect("raft requests encode");
        let reply = connection.send(Rpc::Campaign, payload).await;
        let refused = |reason| LedgerError::Unavailable { reason };
        let answer: Result<(), String> =
            codec::decode(&reply.map_err(refused)?).expect("raft replies decode");
        answer.map_err(refused)
    }
}

impl RaftNetwork<TypeConfig> for SimConnection {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        // openraft cancels the call at `hard_ttl`.
        let sending = self.entries.start(&mut rpc, &self.encoded);
        let payload = self.encoded.encode_append_entries(&self.stamp(&rpc));
        let result = self.call_encoded(Rpc::AppendEntries, payload.expect("entries encode")).await;
        let result = self.entries.finish(sending, option.hard_ttl(), result);
        if let Ok(AppendEntriesResponse::PartialSuccess(_)) = result {
            self.net.lock().counters.n_partial_appends += 1;
        }
        result
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let timeout = sizing::snapshot_chunk_timeout(&rpc, &option);
        let lost = rpc.done && self.net.last_chunk_lost(self.target);
        let sent = async {
            match lost {
                true => std::future::pending().await,
                false => self.call(Rpc::InstallSnapshot, &rpc).await,
            }
        };
        match tokio::time::timeout(timeout, sent).await {
            Ok(result) => result,
            Err(_elapsed) => {
                let (id, target) = (self.source.0, self.target);
                let action = RPCTypes::InstallSnapshot;
                Err(RPCError::Timeout(Timeout { action, id, target, timeout }))
            }
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.call(Rpc::Vote, &rpc).await
    }
}

/// One copy of a request on its way, and its reply on the way back.
struct Delivery {
    net: Arc<Net>,
    source: NodeId,
    target: NodeId,
    group: u32,
    seq: u64,
    rpc: Rpc,
    payload: Bytes,
    /// The encoded answer, or why the target refused the request.
    reply_tx: Option<oneshot::Sender<Result<Vec<u8>, String>>>,
}

impl Delivery {
    async fn run(self, delay: Duration) {
        tokio::time::sleep(delay).await;
        self.net.unpaused(&[self.source, self.target]).await;
        let arrived = self.net.arrive(self.source, self.target, self.seq, self.group);
        let Some((incarnation, identity, (raft, encoded))) = arrived else {
            return;
        };
        let reply = match self.rpc {
            Rpc::AppendEntries => {
                // As `RaftRpcServer` takes it: the entries' bodies kept for the log.
                let (stamped, bodies) =
                    encoded::decode_append_entries(&self.payload).expect("raft requests decode");
                match admit(&identity, &raft, stamped) {
                    Ok(rpc) => {
                        encoded.keep(&rpc.entries, bodies);
                        Ok(encode(&raft.append_entries(rpc).await))
                    }
                    Err(refusal) => Err(refusal),
                }
            }
            Rpc::InstallSnapshot => match admitted(&identity, &raft, &self.payload) {
                Ok(rpc) => Ok(encode(&raft.install_snapshot(rpc).await)),
                Err(refusal) => Err(refusal),
            },
            Rpc::Vote => match admitted(&identity, &raft, &self.payload) {
                Ok(rpc) => Ok(encode(&raft.vote(rpc).await)),
                Err(refusal) => Err(refusal),
            },
            Rpc::Campaign => match admitted(&identity, &raft, &self.payload) {
                Ok(order) => {
                    // The simulation's nodes all place leaders as production's default.
                    let placement = FirstLeaders::default();
                    let campaign = matches!(order, Order::Campaign(_));
                    let answer = leadership::take_order(&raft, placement, self.group, order);
                    let answer = answer.await;
                    self.net.lock().counters.n_campaigns += u64::from(campaign && answer.is_ok());
                    Ok(encode(&answer))
                }
                Err(refusal) => Err(refusal),
            },
        };
        let Some(reply_tx) = self.reply_tx else { return };
        // A duplicated reply's second copy is dropped: the caller takes one answer.
        let bytes = reply.as_ref().map_or(0, Vec::len);
        let (seq, delays) = self.net.plan((self.target, incarnation), self.source, bytes);
        let Some(delay) = delays.first().copied() else { return };
        tokio::time::sleep(delay).await;
        self.net.unpaused(&[self.source, self.target]).await;
        if self.net.arrive(self.target, self.source, seq, self.group).is_some() {
            // The caller may have timed out and gone; then the reply is lost.
            let _ = reply_tx.send(reply);
        }
    }
}

fn encode(value: &impl Serialize) -> Vec<u8> {
    codec::encode(value).expect("raft replies encode")
}

/// The request in `payload` if the node of `identity` admits it (see `incarnation`).
fn admitted<Q: DeserializeOwned>(
    identity: &Identity,
    raft: &Raft,
    payload: &[u8],
) -> Result<Q, String> {
    admit(identity, raft, codec::decode(payload).expect("raft requests decode"))
}

/// The request `stamped` carries if the node of `identity` admits it.
fn admit<Q>(identity: &Identity, raft: &Raft, stamped: Stamped<Q>) -> Result<Q, String> {
    let membership = raft.metrics().borrow().membership_config.clone();
    let (from, sent, to) = (stamped.from, stamped.from_incarnation, stamped.to_incarnation);
    incarnation::admit(identity, membership.membership(), from, sent, to)
        .map_err(|refusal| refusal.to_string())?;
    Ok(stamped.rpc)
}
