//! [`LedgerClient`]: a gateway's handle on a remote ledger cluster (DESIGN.md §2).
//!
//! It routes each operation to the leader of its account's group, caches leaders, follows
//! `NotLeader` hints, and retries retryable failures with capped exponential backoff,
//! within an overall deadline per call ([`CLIENT_CALL_DEADLINE`]): without a quorum a call
//! fails within it, retryably. A retry resends the same commands with the same op ids, so
//! the ledger applies each at most once and answers a repeat from its idempotency window:
//! an operation in flight during an election completes or fails cleanly, never twice.
//!
//! Group commit from the gateway side: concurrent submits of one group queue up and go
//! out together, up to [`CLIENT_BATCH_COMMANDS_MAX`] commands per RPC and
//! [`CLIENT_RPCS_IN_FLIGHT_MAX`] RPCs per group at once; while those are in flight the
//! next batch forms, so the batch size follows the load with no timer.
//!
//! Each of a group's RPC slots keeps a `SubmitStream` to the group's leader open
//! ([`Lane`], `call_stream.rs`): a batch goes over its slot's stream instead of a unary
//! call, which costs a new HTTP/2 stream and a task on each end. A slot whose call failed
//! or timed out opens another stream; one whose leader has none (an older version) calls
//! it unary.

use crate::call_stream::{CallStream, Exchange};
use crate::codec;
use crate::error::LedgerError;
use crate::grpc::ledger_service_client::LedgerServiceClient;
use crate::grpc::{GroupRequest, LedgerReply};
use crate::history::{ExportPage, HistoryCursor};
use crate::membership::LEARNER_CATCH_UP_TIMEOUT;
use crate::node::group_of_account;
use crate::reads::GroupAccess;
use crate::tls::{self, TlsConfig};
use crate::wire::{
    Consistency, MembershipChange, Read, ReadAnswer, ReadRequest, Topology, WireError,
};
use crate::RPC_BYTES_MAX;
use prost::bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use solrouter_ledger::{Command, Outcome, BATCH_COMMANDS_MAX};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;
use tonic::transport::Channel;

/// Commands per submit RPC. A thousand commands are ~1 MB on the wire, well under
/// `RPC_BYTES_MAX`, and far more than one gateway's concurrent requests to one group
/// usually are; the node's own batcher merges RPCs from several gateways further.
pub const CLIENT_BATCH_COMMANDS_MAX: usize = 1024;
/// Submit RPCs of one group in flight at once from one client. More than one, so a batch
/// waiting for its commit does not stall the next; few, so batches stay large under load.
pub const CLIENT_RPCS_IN_FLIGHT_MAX: usize = 4;
/// Commands waiting per group for a free RPC slot; beyond it `submit` waits
/// (backpressure) instead of queueing without bound.
pub const CLIENT_QUEUE_MAX: usize = 2 * CLIENT_BATCH_COMMANDS_MAX;
/// Longest one call (a submit or a read of one group, a topology) may take, every attempt
/// across nodes and elections included: many election timeouts, so a leader loss is
/// ridden out, and short enough that a request's reserve fails fast (a 503 to retry) when
/// the ledger has no quorum. A caller may bound a call tighter with its own timeout.
pub const CLIENT_CALL_DEADLINE: Duration = Duration::from_secs(5);
/// Backoff between attempts: 10 ms doubling to 200 ms. The cap is below an election
/// timeout, so a new leader is found within one backoff of its election.
pub const CLIENT_BACKOFF_FIRST: Duration = Duration::from_millis(10);
pub const CLIENT_BACKOFF_MAX: Duration = Duration::from_millis(200);
/// Longest one RPC may take. A commit takes milliseconds; a node that has not answered
/// within this is treated as unavailable and the next attempt goes elsewhere (an
/// operation it still applies later is the same op id, applied once).
pub const CLIENT_RPC_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a membership change RPC may take: the new node catches up first.
pub const MEMBERSHIP_RPC_TIMEOUT: Duration =
    Duration::from_secs(LEARNER_CATCH_UP_TIMEOUT.as_secs() + 10);
/// Longest one group's membership change may take, retries included (an admin call).
pub const MEMBERSHIP_CALL_DEADLINE: Duration =
    Duration::from_secs(MEMBERSHIP_RPC_TIMEOUT.as_secs() * 2);
/// Distinct node addresses a client remembers (seeds, members, hints). Clusters have 3 or
/// 5 nodes; the bound only stops a confused cluster from growing the table.
pub const CLIENT_ADDRESSES_MAX: usize = 64;
/// How long [`LedgerClient::connect`] keeps trying the seeds: a gateway may start before
/// the ledger nodes are up.
pub const CLIENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

const _: () = assert!(CLIENT_BATCH_COMMANDS_MAX <= BATCH_COMMANDS_MAX);
const _: () = assert!(CLIENT_QUEUE_MAX >= CLIENT_BATCH_COMMANDS_MAX);
const _: () = assert!(CLIENT_BATCH_COMMANDS_MAX * crate::COMMAND_BYTES_MAX <= RPC_BYTES_MAX / 2);
const _: () = assert!(CLIENT_BACKOFF_FIRST.as_millis() < CLIENT_BACKOFF_MAX.as_millis());
const _: () = assert!(CLIENT_BACKOFF_MAX.as_millis() <= crate::ELECTION_TIMEOUT_MAX.as_millis());
const _: () = assert!(CLIENT_RPC_TIMEOUT.as_millis() < CLIENT_CALL_DEADLINE.as_millis());
const _: () =
    assert!(CLIENT_CALL_DEADLINE.as_millis() > 10 * crate::ELECTION_TIMEOUT_MAX.as_millis());

/// A client of a ledger cluster. Cheap to clone: clones share routes, connections and
/// per-group batching. Dropping the last clone ends its background tasks.
#[derive(Clone)]
pub struct LedgerClient {
    shared: Arc<Shared>,
    queues: Arc<Vec<mpsc::Sender<Pending>>>,
}

/// Which `LedgerService` RPC a call makes.
#[derive(Clone, Copy, Debug)]
enum Method {
    Submit,
    Query,
    ChangeMembership,
    Topology,
}

/// One of a group's RPC slots: the submit stream its batches go over, kept from one batch
/// to the next while the group's leader stays at the same address.
#[derive(Default)]
struct Lane {
    /// The address the stream goes to.
    addr: String,
    stream: Option<CallStream<GroupRequest, LedgerReply>>,
    /// Whether the node at `addr` has no `SubmitStream` (an older version): its submits go
    /// as unary calls.
    unary: bool,
}

impl Lane {
    /// Submits `request` to `addr` over the lane's stream (opened first if it goes
    /// elsewhere or there is none), or as a unary call to a node without streams.
    async fn submit(
        &mut self,
        addr: &str,
        mut client: LedgerServiceClient<Channel>,
        mut request: GroupRequest,
    ) -> Result<LedgerReply, tonic::Status> {
        if self.addr != addr {
            *self = Lane { addr: addr.to_owned(), stream: None, unary: false };
        }
        if !self.unary {
            let open = || {
                let mut client = client.clone();
                CallStream::open(|outbound| async move { client.submit_stream(outbound).await })
            };
            match CallStream::exchange(&mut self.stream, request, open).await {
                Ok(reply) => return Ok(reply),
                Err(Exchange::Failed(status)) => return Err(status),
                Err(Exchange::Unimplemented(unsent)) => {
                    self.unary = true;
                    request = unsent;
                }
            }
        }
        client.submit(request).await.map(tonic::Response::into_inner)
    }
}

struct Pending {
    command: Command,
    reply: oneshot::Sender<Result<Outcome, LedgerError>>,
    /// When the call gives up: the batch it goes out in keeps to the earliest of its
    /// commands' deadlines, so no command needs a timer of its own.
    deadline: Instant,
}

/// What every clone and every background task shares: the routes. Holds no queue sender,
/// so the dispatchers end when the last `LedgerClient` is dropped.
struct Shared {
    n_groups: u32,
    routes: Mutex<Routes>,
    /// How a channel to an address is made.
    dial: Dial,
}

/// How the client reaches a node's address.
#[derive(Clone)]
enum Dial {
    /// Over TCP, with mutual TLS if the cluster uses it.
    Tcp(Option<TlsConfig>),
    /// Through the caller's connector: the simulation's in-memory network.
    #[cfg(test)]
    Via(Dialer),
}

/// Makes a channel over the caller's own transport from the plaintext endpoint of an
/// address (`Endpoint::connect_with_connector_lazy`), as the simulation does.
#[cfg(test)]
pub(crate) type Dialer = Arc<dyn Fn(tonic::transport::Endpoint) -> Channel + Send + Sync>;

struct Routes {
    /// Every address known: seeds, members, hints. Bounded by `CLIENT_ADDRESSES_MAX`.
    addrs: Vec<String>,
    /// Where the next leaderless attempt goes (round robin over `addrs`).
    cursor: usize,
    /// Each group's leader address, as last learned.
    leaders: Vec<Option<String>>,
    /// One HTTP/2 connection per address, created lazily.
    channels: HashMap<String, LedgerServiceClient<Channel>>,
    /// The incarnation of the member at each address, as the last topology named it
    /// (16 bytes, big-endian): every call carries it, so a node of another incarnation
    /// at a reused address refuses instead of answering for the one the client knew.
    incarnations: HashMap<String, Bytes>,
}

impl LedgerClient {
    /// Connects to the cluster that `seeds` (`host:port` of some of its nodes) belong to:
    /// learns the group count, the members and the leaders from the first seed that
    /// answers, trying for at most [`CLIENT_CONNECT_TIMEOUT`]. Plaintext: for a cluster
    /// without TLS.
    pub async fn connect(seeds: &[String]) -> Result<LedgerClient, LedgerError> {
        LedgerClient::connect_with(seeds, None).await
    }

    /// [`LedgerClient::connect`], over mutual TLS when `tls` is given (the cluster's CA and
    /// this client's certificate), as a cluster whose nodes have a `TlsConfig` requires.
    pub async fn connect_with(
        seeds: &[String],
        tls: Option<TlsConfig>,
    ) -> Result<LedgerClient, LedgerError> {
        LedgerClient::connect_dialing(seeds, Dial::Tcp(tls)).await
    }

    /// [`LedgerClient::connect`] over `dialer`'s transport instead of TCP: the simulation
    /// runs this client, unchanged but for its connections, over its faulty network.
    #[cfg(test)]
    pub(crate) async fn connect_via(
        seeds: &[String],
        dialer: Dialer,
    ) -> Result<LedgerClient, LedgerError> {
        LedgerClient::connect_dialing(seeds, Dial::Via(dialer)).await
    }

    async fn connect_dialing(seeds: &[String], dial: Dial) -> Result<LedgerClient, LedgerError> {
        if seeds.is_empty() || seeds.len() > CLIENT_ADDRESSES_MAX {
            return Err(LedgerError::InvalidOptions("seeds must name 1 to 64 ledger nodes"));
        }
        let probe = Shared::new(0, seeds, dial.clone());
        let topology = tokio::time::timeout(CLIENT_CONNECT_TIMEOUT, probe.first_topology())
            .await
            .map_err(|_| LedgerError::Timeout(CLIENT_CONNECT_TIMEOUT))?;
        let shared = Arc::new(Shared::new(topology.n_groups, seeds, dial));
        shared.learn(&topology);
        let mut queues = Vec::with_capacity(topology.n_groups as usize);
        for group_idx in 0..topology.n_groups {
            let (queue_tx, queue_rx) = mpsc::channel(CLIENT_QUEUE_MAX);
            tokio::spawn(dispatch(Arc::clone(&shared), group_idx, queue_rx));
            queues.push(queue_tx);
        }
        Ok(LedgerClient { shared, queues: Arc::new(queues) })
    }

    pub fn n_groups(&self) -> u32 {
        self.shared.n_groups
    }

    /// One page of `group_idx`'s records after `after`, from a replica that applied the
    /// group's entries through `through` and wishes for no copy of its own: any such
    /// replica, not only the leader, which may itself have installed a snapshot and be
    /// copying.
    pub(crate) async fn history_export(
        &self,
        group_idx: u32,
        after: Option<HistoryCursor>,
        through: u64,
    ) -> Result<ExportPage, LedgerError> {
        let request = ReadRequest {
            read: Read::HistoryExport { after, through },
            consistency: Consistency::Stale,
        };
        match self.read_group(group_idx, request, self.read_deadline()).await? {
            ReadAnswer::HistoryExport(page) => Ok(page),
            other => {
                Err(LedgerError::Invalid(format!("asked for a history export, got {other:?}")))
            }
        }
    }

    /// The cluster as some node sees it.
    pub async fn topology(&self) -> Result<Topology, LedgerError> {
        let deadline = Instant::now() + CLIENT_CALL_DEADLINE;
        let topology: Topology =
            self.shared.at_any(Method::Topology, 0, Bytes::new(), deadline).await?;
        self.shared.learn(&topology);
        Ok(topology)
    }

    /// Adds node `id`, serving at `addr` and started to join (it must not bootstrap), to
    /// every group: as a learner until it caught up, then as a voter. The cluster serves
    /// throughout. Running it again for a node already added succeeds.
    pub async fn add_node(&self, id: u64, addr: &str) -> Result<(), LedgerError> {
        self.shared.remember(addr);
        self.change_membership(&MembershipChange::Add { id, addr: addr.to_owned() }).await
    }

    /// Removes node `id` from every group; the remaining nodes keep serving. A removed
    /// leader steps down once its removal is committed. Stop the node afterwards.
    pub async fn remove_node(&self, id: u64) -> Result<(), LedgerError> {
        self.change_membership(&MembershipChange::Remove { id }).await
    }

    async fn change_membership(&self, change: &MembershipChange) -> Result<(), LedgerError> {
        let payload = encode(change)?;
        for group_idx in 0..self.n_groups() {
            let method = Method::ChangeMembership;
            let budget = Budget {
                rpc_timeout: MEMBERSHIP_RPC_TIMEOUT,
                deadline: Instant::now() + MEMBERSHIP_CALL_DEADLINE,
            };
            let payload = payload.clone();
            let () = self.shared.at_leader(method, group_idx, payload, budget, None).await?;
        }
        Ok(())
    }
}

impl GroupAccess for LedgerClient {
    fn n_groups(&self) -> u32 {
        LedgerClient::n_groups(self)
    }

    /// Queues `command` for its group's leader, batched with concurrent submits of the same
    /// group; answered within [`CLIENT_CALL_DEADLINE`]. Only a full queue (backpressure)
    /// is waited on under a timer: once queued, the dispatcher answers the command by its
    /// deadline (`submit_batch`), which a timer per command (a timer wheel's insert and
    /// removal, a tenth of a loaded client's CPU) only repeated.
    async fn submit_command(&self, command: Command) -> Result<Outcome, LedgerError> {
        let reply_rx = match self.queue(command) {
            Queued::Now(reply_rx) => reply_rx,
            Queued::WhenRoom(wait, reply_rx) => {
                wait.await?;
                reply_rx
            }
            Queued::Closed => return Err(LedgerError::Shutdown),
        };
        reply_rx.await.map_err(|_| LedgerError::Shutdown)?
    }

    fn read_deadline(&self) -> Option<Instant> {
        Some(Instant::now() + CLIENT_CALL_DEADLINE)
    }

    /// Without a `deadline`, within [`CLIENT_CALL_DEADLINE`] from now.
    async fn read_group(
        &self,
        group_idx: u32,
        request: ReadRequest,
        deadline: Option<Instant>,
    ) -> Result<ReadAnswer, LedgerError> {
        let consistency = request.consistency;
        let payload = encode(&request)?;
        let budget = deadline.map_or_else(Budget::call, Budget::until);
        match consistency {
            Consistency::Linearizable => {
                self.shared.at_leader(Method::Query, group_idx, payload, budget, None).await
            }
            Consistency::Stale => {
                self.shared.at_any(Method::Query, group_idx, payload, budget.deadline).await
            }
        }
    }
}

/// Where [`LedgerClient::queue`] put a command. Only the receiver (and, for a full queue,
/// the boxed wait) is held across the submit's awaits: built in the `async fn` itself, the
/// command's `Pending` and the `try_send` result each took room of their own in its
/// future, beside the command (a `submit`'s future 784 bytes against 320; each is copied
/// whenever it or a caller's future moves, and a loaded client holds thousands).
enum Queued<'a> {
    Now(oneshot::Receiver<Result<Outcome, LedgerError>>),
    /// The wait for room, boxed: inline, it (the command again, a timer) made every
    /// submit's future 1.6 KB, copied whole each time it or a caller's future moved.
    WhenRoom(
        Pin<Box<dyn Future<Output = Result<(), LedgerError>> + Send + 'a>>,
        oneshot::Receiver<Result<Outcome, LedgerError>>,
    ),
    Closed,
}

impl LedgerClient {
    /// Queues `command` for its group's dispatcher, answered by [`CLIENT_CALL_DEADLINE`]
    /// from now; a full queue is waited on by the returned future.
    fn queue(&self, command: Command) -> Queued<'_> {
        let deadline = Instant::now() + CLIENT_CALL_DEADLINE;
        let group_idx = group_of_account(command.op.account(), self.n_groups());
        let (reply, reply_rx) = oneshot::channel();
        let queue = &self.queues[group_idx as usize];
        match queue.try_send(Pending { command, reply, deadline }) {
            Ok(()) => Queued::Now(reply_rx),
            Err(TrySendError::Closed(_)) => Queued::Closed,
            Err(TrySendError::Full(pending)) => {
                Queued::WhenRoom(Box::pin(queue_when_room(queue, pending)), reply_rx)
            }
        }
    }
}

/// Queues `pending` on a full `queue` once it has room, by the command's deadline.
async fn queue_when_room(
    queue: &mpsc::Sender<Pending>,
    pending: Pending,
) -> Result<(), LedgerError> {
    match tokio::time::timeout_at(pending.deadline, queue.send(pending)).await {
        Ok(sent) => sent.map_err(|_| LedgerError::Shutdown),
        Err(_elapsed) => Err(LedgerError::Timeout(CLIENT_CALL_DEADLINE)),
    }
}

/// One group's batching loop: waits for a free RPC slot, takes whatever is queued (up to a
/// full batch) and sends it in a task of its own, over a free [`Lane`]. Ends when every
/// `LedgerClient` is gone.
async fn dispatch(shared: Arc<Shared>, group_idx: u32, mut queue: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(CLIENT_RPCS_IN_FLIGHT_MAX));
    // The lanes of the slots not taken (a task that panicked took its lane along; the
    // slot's next batch starts a new one).
    let lanes = Arc::new(Mutex::new(Vec::<Lane>::with_capacity(CLIENT_RPCS_IN_FLIGHT_MAX)));
    let mut batch = Vec::with_capacity(CLIENT_BATCH_COMMANDS_MAX);
    loop {
        let slot = Arc::clone(&slots).acquire_owned().await.expect("the semaphore is never closed");
        if queue.recv_many(&mut batch, CLIENT_BATCH_COMMANDS_MAX).await == 0 {
            return;
        }
        let pendings = std::mem::replace(&mut batch, Vec::with_capacity(CLIENT_BATCH_COMMANDS_MAX));
        let shared = Arc::clone(&shared);
        let lanes = Arc::clone(&lanes);
        tokio::spawn(async move {
            let mut lane = lanes.lock().expect("never poisoned").pop().unwrap_or_default();
            submit_batch(&shared, group_idx, pendings, &mut lane).await;
            lanes.lock().expect("never poisoned").push(lane);
            drop(slot);
        });
    }
}

/// Sends `pendings` as one RPC, retried within the earliest of their deadlines; a command
/// whose deadline passed while it waited for an RPC slot (behind RPCs that are themselves
/// bounded by deadlines no later than its own) is answered `Timeout` at once. So every
/// command is answered by its deadline.
async fn submit_batch(
    shared: &Shared,
    group_idx: u32,
    mut pendings: Vec<Pending>,
    lane: &mut Lane,
) {
    let now = Instant::now();
    for late in pendings.extract_if(.., |pending| pending.deadline <= now) {
        let _ = late.reply.send(Err(LedgerError::Timeout(CLIENT_CALL_DEADLINE)));
    }
    let Some(deadline) = pendings.iter().map(|pending| pending.deadline).min() else { return };
    let (commands, replies): (Vec<Command>, Vec<_>) =
        pendings.into_iter().map(|p| (p.command, p.reply)).unzip();
    let submitted = match encode(&commands) {
        Ok(payload) => {
            let budget = Budget::until(deadline);
            let lane = Some(lane);
            shared.at_leader::<Vec<Outcome>>(Method::Submit, group_idx, payload, budget, lane).await
        }
        Err(e) => Err(e),
    };
    match submitted {
        Ok(outcomes) => {
            assert_eq!(outcomes.len(), replies.len(), "one outcome per command");
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A submitter that went away dropped its receiver; nothing to do.
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

impl Shared {
    fn new(n_groups: u32, seeds: &[String], dial: Dial) -> Shared {
        let routes = Routes {
            addrs: Vec::new(),
            cursor: 0,
            leaders: vec![None; n_groups as usize],
            channels: HashMap::new(),
            incarnations: HashMap::new(),
        };
        let shared = Shared { n_groups, routes: Mutex::new(routes), dial };
        for seed in seeds {
            shared.remember(seed);
        }
        shared
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().expect("routes lock poisoned")
    }

    /// Asks each seed in turn for the topology until one answers, backing off between
    /// rounds; the caller bounds the whole by a timeout.
    async fn first_topology(&self) -> Topology {
        let mut backoff = CLIENT_BACKOFF_FIRST;
        loop {
            let deadline = Instant::now() + CLIENT_RPC_TIMEOUT;
            let result = self.at_any::<Topology>(Method::Topology, 0, Bytes::new(), deadline);
            match result.await {
                Ok(topology) => return topology,
                Err(e) => tracing::info!(error = %e, "no ledger node answered yet"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(CLIENT_BACKOFF_MAX);
        }
    }

    fn remember(&self, addr: &str) {
        let mut routes = self.routes();
        if routes.addrs.iter().any(|known| known == addr) {
            return;
        }
        if routes.addrs.len() >= CLIENT_ADDRESSES_MAX {
            tracing::warn!(addr, "too many ledger addresses; ignoring one more");
            return;
        }
        routes.addrs.push(addr.to_owned());
    }

    fn learn(&self, topology: &Topology) {
        for addr in topology.members.values() {
            self.remember(addr);
        }
        let mut routes = self.routes();
        for (id, addr) in &topology.members {
            let Some(incarnation) = topology.incarnations.get(id) else { continue };
            if routes.addrs.contains(addr) {
                let stamp = Bytes::copy_from_slice(&incarnation.to_be_bytes());
                routes.incarnations.insert(addr.clone(), stamp);
            }
        }
        for (group_idx, leader) in topology.leaders.iter().enumerate().take(routes.leaders.len()) {
            if let Some(addr) = leader.and_then(|id| topology.members.get(&id)) {
                routes.leaders[group_idx] = Some(addr.clone());
            }
        }
    }

    fn set_leader(&self, group_idx: u32, addr: &str) {
        self.remember(addr);
        if let Some(leader) = self.routes().leaders.get_mut(group_idx as usize) {
            *leader = Some(addr.to_owned());
        }
    }

    fn forget_leader(&self, group_idx: u32, addr: &str) {
        if let Some(leader) = self.routes().leaders.get_mut(group_idx as usize) {
            if leader.as_deref() == Some(addr) {
                *leader = None;
            }
        }
    }

    /// The group's cached leader, else the next address in round-robin order.
    fn leader_or_next(&self, group_idx: u32) -> String {
        let cached = self.routes().leaders.get(group_idx as usize).cloned().flatten();
        cached.unwrap_or_else(|| self.next_addr())
    }

    fn next_addr(&self) -> String {
        let mut routes = self.routes();
        routes.cursor = routes.cursor.wrapping_add(1);
        let addr_idx = routes.cursor % routes.addrs.len();
        routes.addrs[addr_idx].clone()
    }

    /// The connection to `addr`, and the incarnation a call there must reach (empty:
    /// not known yet).
    fn channel(&self, addr: &str) -> Result<(LedgerServiceClient<Channel>, Bytes), LedgerError> {
        let mut routes = self.routes();
        let incarnation = routes.incarnations.get(addr).cloned().unwrap_or_default();
        if let Some(client) = routes.channels.get(addr) {
            return Ok((client.clone(), incarnation));
        }
        let channel = match &self.dial {
            Dial::Tcp(tls) => tls::endpoint(addr, tls.as_ref())?.connect_lazy(),
            #[cfg(test)]
            Dial::Via(dialer) => dialer(tls::endpoint(addr, None)?),
        };
        let client = LedgerServiceClient::new(channel)
            .max_decoding_message_size(RPC_BYTES_MAX)
            .max_encoding_message_size(RPC_BYTES_MAX);
        routes.channels.insert(addr.to_owned(), client.clone());
        Ok((client, incarnation))
    }

    /// Calls the group's leader: the cached one, else any node, following `NotLeader`
    /// hints and backing off after failures, until `budget.deadline`; then fails with the
    /// last (retryable) error. A submit goes over `lane`, if given.
    async fn at_leader<T: DeserializeOwned>(
        &self,
        method: Method,
        group_idx: u32,
        payload: Bytes,
        budget: Budget,
        mut lane: Option<&mut Lane>,
    ) -> Result<T, LedgerError> {
        let mut backoff = CLIENT_BACKOFF_FIRST;
        let mut failed = None;
        loop {
            let Some(timeout) = budget.next_rpc_timeout() else { return Err(gave_up(failed)) };
            let target = self.leader_or_next(group_idx);
            let lane = lane.as_deref_mut();
            match self.call(&target, method, group_idx, payload.clone(), timeout, lane).await {
                Ok(answer) => {
                    self.set_leader(group_idx, &target);
                    return Ok(answer);
                }
                // A fresh hint to another node: go there at once.
                Err(LedgerError::NotLeader { leader_addr: Some(leader), .. })
                    if leader != target =>
                {
                    self.set_leader(group_idx, &leader);
                    continue;
                }
                Err(e) if e.is_retryable() => {
                    self.forget_leader(group_idx, &target);
                    budget.keep_telling(&mut failed, e);
                }
                Err(e) => return Err(e),
            }
            if Instant::now() + backoff >= budget.deadline {
                return Err(gave_up(failed));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(CLIENT_BACKOFF_MAX);
        }
    }

    /// Calls any node (stale reads, topology), moving on to the next after a failure,
    /// each node at most once and all before `deadline`.
    async fn at_any<T: DeserializeOwned>(
        &self,
        method: Method,
        group_idx: u32,
        payload: Bytes,
        deadline: Instant,
    ) -> Result<T, LedgerError> {
        let mut failed = None;
        let n_addrs = self.routes().addrs.len();
        let budget = Budget::until(deadline);
        for _attempt in 0..n_addrs {
            let Some(timeout) = budget.next_rpc_timeout() else { break };
            let target = self.next_addr();
            match self.call(&target, method, group_idx, payload.clone(), timeout, None).await {
                Ok(answer) => return Ok(answer),
                Err(e) if e.is_retryable() => budget.keep_telling(&mut failed, e),
                Err(e) => return Err(e),
            }
        }
        Err(gave_up(failed))
    }

    /// Makes one call to `addr`; a submit goes over `lane`, if given.
    async fn call<T: DeserializeOwned>(
        &self,
        addr: &str,
        method: Method,
        group: u32,
        payload: Bytes,
        timeout: Duration,
        lane: Option<&mut Lane>,
    ) -> Result<T, LedgerError> {
        let (mut client, incarnation) = self.channel(addr)?;
        let request = GroupRequest { group, payload, incarnation };
        let calling = async {
            let reply = match (method, lane) {
                (Method::Submit, Some(lane)) => return lane.submit(addr, client, request).await,
                (Method::Submit, None) => client.submit(request).await,
                (Method::Query, _) => client.query(request).await,
                (Method::ChangeMembership, _) => client.change_membership(request).await,
                (Method::Topology, _) => client.topology(request).await,
            };
            reply.map(tonic::Response::into_inner)
        };
        let reply = match tokio::time::timeout(timeout, calling).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(status)) => return Err(from_status(addr, method, &status)),
            Err(_elapsed) => return Err(LedgerError::Timeout(timeout)),
        };
        let result: Result<T, WireError> = codec::decode(&reply.payload)
            .map_err(|e| LedgerError::Invalid(format!("undecodable {method:?} reply: {e}")))?;
        result.map_err(LedgerError::from)
    }
}

/// The error a call reports when it gives up: its attempts' (see [`Budget::keep_telling`]),
/// or that it made none before its deadline.
fn gave_up(failed: Option<LedgerError>) -> LedgerError {
    failed.unwrap_or_else(|| LedgerError::Unavailable { reason: "no attempt made".into() })
}

/// How long a call may go on, and each of its RPCs.
#[derive(Clone, Copy)]
struct Budget {
    rpc_timeout: Duration,
    deadline: Instant,
}

impl Budget {
    /// An ordinary call's: [`CLIENT_CALL_DEADLINE`] from now.
    fn call() -> Budget {
        Budget::until(Instant::now() + CLIENT_CALL_DEADLINE)
    }

    /// Ordinary RPCs until `deadline`.
    fn until(deadline: Instant) -> Budget {
        Budget { rpc_timeout: CLIENT_RPC_TIMEOUT, deadline }
    }

    /// Makes `error` the one a call reports (`failed`), unless it is only the timeout of
    /// an RPC the deadline cut short and an attempt before it said why it failed: a last
    /// try given the deadline's final microseconds otherwise reported "no outcome within
    /// 200µs" instead of, say, "the node the caller knew here is gone".
    fn keep_telling(&self, failed: &mut Option<LedgerError>, error: LedgerError) {
        let cut_short = matches!(error, LedgerError::Timeout(t) if t < self.rpc_timeout);
        if !(cut_short && failed.is_some()) {
            *failed = Some(error);
        }
    }

    /// The timeout of the next RPC: the RPC's own, cut to what is left; `None` once the
    /// deadline has passed.
    fn next_rpc_timeout(&self) -> Option<Duration> {
        let left = self.deadline.checked_duration_since(Instant::now())?;
        (!left.is_zero()).then(|| left.min(self.rpc_timeout))
    }
}

/// A gRPC failure: a request the server could not decode (a version mismatch) is final;
/// anything else (connection refused or reset, deadline, a node going down mid-call)
/// makes that node unavailable for this attempt.
fn from_status(addr: &str, method: Method, status: &tonic::Status) -> LedgerError {
    let reason = format!("{method:?} at {addr}: {}: {}", status.code(), status.message());
    match status.code() {
        tonic::Code::InvalidArgument | tonic::Code::Unimplemented => LedgerError::Invalid(reason),
        _ => LedgerError::Unavailable { reason },
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Bytes, LedgerError> {
    codec::encode(value)
        .map(Bytes::from)
        .map_err(|e| LedgerError::Invalid(format!("unencodable request: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call_stream::{self, Closing, Replies};
    use crate::grpc::ledger_service_server::{LedgerService, LedgerServiceServer};
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::net::TcpListener;

    /// A node's ledger API that answers each submit with its group's number, the first
    /// one after `first_delay`, and counts the streams it was asked for and the unary
    /// submits it took.
    #[derive(Clone, Default)]
    struct SubmitPeer {
        /// Whether it serves `SubmitStream` (else: a node of an older version).
        streams: bool,
        first_delay: Duration,
        taken: Arc<AtomicU64>,
        stream_opens: Arc<AtomicU64>,
        unary_submits: Arc<AtomicU64>,
        closing: Closing,
    }

    impl SubmitPeer {
        async fn take(self, request: GroupRequest) -> Result<LedgerReply, tonic::Status> {
            if self.taken.fetch_add(1, Ordering::Relaxed) == 0 {
                tokio::time::sleep(self.first_delay).await;
            }
            let answer: Result<u32, WireError> = Ok(request.group);
            Ok(LedgerReply { payload: codec::encode(&answer).expect("encodable").into() })
        }

        /// Serves on a free port of 127.0.0.1 until the test's runtime ends; its address.
        async fn serve(&self) -> String {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
            let addr = listener.local_addr().expect("a bound address").to_string();
            let incoming = futures_util::stream::unfold(listener, |listener| async move {
                Some((listener.accept().await.map(|(stream, _)| stream), listener))
            });
            let server = tonic::transport::Server::builder()
                .add_service(LedgerServiceServer::new(self.clone()));
            tokio::spawn(server.serve_with_incoming(incoming));
            addr
        }
    }

    #[tonic::async_trait]
    impl LedgerService for SubmitPeer {
        async fn submit(
            &self,
            request: tonic::Request<GroupRequest>,
        ) -> Result<tonic::Response<LedgerReply>, tonic::Status> {
            self.unary_submits.fetch_add(1, Ordering::Relaxed);
            self.clone().take(request.into_inner()).await.map(tonic::Response::new)
        }

        type SubmitStreamStream = Replies<LedgerReply>;

        async fn submit_stream(
            &self,
            request: tonic::Request<tonic::Streaming<GroupRequest>>,
        ) -> Result<tonic::Response<Replies<LedgerReply>>, tonic::Status> {
            self.stream_opens.fetch_add(1, Ordering::Relaxed);
            if !self.streams {
                return Err(tonic::Status::unimplemented("a node of an older version"));
            }
            let (peer, requests) = (self.clone(), request.into_inner());
            let serve = move |r| peer.clone().take(r);
            Ok(tonic::Response::new(call_stream::in_order(serve, requests, &self.closing)))
        }

        async fn query(
            &self,
            _: tonic::Request<GroupRequest>,
        ) -> Result<tonic::Response<LedgerReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("submits only"))
        }

        async fn change_membership(
            &self,
            _: tonic::Request<GroupRequest>,
        ) -> Result<tonic::Response<LedgerReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("submits only"))
        }

        async fn topology(
            &self,
            _: tonic::Request<GroupRequest>,
        ) -> Result<tonic::Response<LedgerReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("submits only"))
        }
    }

    /// A submit of group `group` to `addr` over `lane`, within `timeout`: the peer's answer.
    async fn submit_over(
        shared: &Shared,
        addr: &str,
        group: u32,
        timeout: Duration,
        lane: &mut Lane,
    ) -> Result<u32, LedgerError> {
        shared.call(addr, Method::Submit, group, Bytes::new(), timeout, Some(lane)).await
    }

    /// A lane's submits share one stream; one whose answer came too late leaves that
    /// stream behind, so every later submit is answered with its own answer.
    #[tokio::test]
    async fn a_lane_s_submits_share_a_stream_and_a_late_answer_is_never_taken_for_the_next() {
        let peer = SubmitPeer {
            streams: true,
            first_delay: Duration::from_millis(300),
            ..SubmitPeer::default()
        };
        let addr = peer.serve().await;
        let shared = Shared::new(1, std::slice::from_ref(&addr), Dial::Tcp(None));
        let mut lane = Lane::default();
        let late = submit_over(&shared, &addr, 1, Duration::from_millis(100), &mut lane).await;
        assert!(matches!(late, Err(LedgerError::Timeout(_))), "{late:?}");
        // Had the stream been kept, the first submit's answer would be taken for the next's.
        for group in 2..8 {
            let answer =
                submit_over(&shared, &addr, group, Duration::from_secs(5), &mut lane).await;
            assert_eq!(answer.expect("answered"), group);
        }
        assert_eq!(peer.stream_opens.load(Ordering::Relaxed), 2, "one after the timeout");
        assert_eq!(peer.unary_submits.load(Ordering::Relaxed), 0);
    }

    /// A lane follows its group's leader: a submit to another address goes over a stream
    /// to that address, never over the one still open to the last.
    #[tokio::test]
    async fn a_lane_opens_a_stream_to_each_leader_it_follows() {
        let streaming = || SubmitPeer { streams: true, ..SubmitPeer::default() };
        let (first, second) = (streaming(), streaming());
        let (first_addr, second_addr) = (first.serve().await, second.serve().await);
        let seeds = [first_addr.clone(), second_addr.clone()];
        let shared = Shared::new(1, &seeds, Dial::Tcp(None));
        let mut lane = Lane::default();
        let timeout = Duration::from_secs(5);
        for (group, addr) in [(1, &first_addr), (2, &second_addr), (3, &first_addr)] {
            let answer = submit_over(&shared, addr, group, timeout, &mut lane).await;
            assert_eq!(answer.expect("answered"), group);
        }
        assert_eq!(first.taken.load(Ordering::Relaxed), 2);
        assert_eq!(second.taken.load(Ordering::Relaxed), 1);
        assert_eq!(first.stream_opens.load(Ordering::Relaxed), 2, "one each time it led");
        assert_eq!(second.stream_opens.load(Ordering::Relaxed), 1);
    }

    /// A node without `SubmitStream` gets unary submits, and is asked for a stream once.
    #[tokio::test]
    async fn submits_to_a_node_without_streams_go_as_unary_calls() {
        let peer = SubmitPeer::default();
        let addr = peer.serve().await;
        let shared = Shared::new(1, std::slice::from_ref(&addr), Dial::Tcp(None));
        let mut lane = Lane::default();
        for group in 1..4 {
            let answer =
                submit_over(&shared, &addr, group, Duration::from_secs(5), &mut lane).await;
            assert_eq!(answer.expect("answered"), group);
        }
        assert_eq!(peer.stream_opens.load(Ordering::Relaxed), 1);
        assert_eq!(peer.unary_submits.load(Ordering::Relaxed), 3);
    }

    /// The error a call reports: a timeout the deadline cut short never hides why an
    /// earlier attempt failed; a full-length timeout, or a first attempt's, is reported.
    #[test]
    fn a_timeout_cut_short_by_the_deadline_keeps_the_earlier_reason() {
        let budget = Budget::call();
        let refused = || LedgerError::Unavailable { reason: "the node is gone".into() };
        let sliver = || LedgerError::Timeout(Duration::from_micros(200));
        let mut failed = None;
        budget.keep_telling(&mut failed, refused());
        budget.keep_telling(&mut failed, sliver());
        assert_eq!(gave_up(failed.clone()).to_string(), refused().to_string());
        budget.keep_telling(&mut failed, LedgerError::Timeout(CLIENT_RPC_TIMEOUT));
        assert!(matches!(gave_up(failed), LedgerError::Timeout(_)));
        let mut first = None;
        budget.keep_telling(&mut first, sliver());
        assert!(matches!(gave_up(first), LedgerError::Timeout(_)));
        assert!(gave_up(None).to_string().contains("no attempt made"));
    }
}
