//! `LedgerClient` against real ledger nodes on 127.0.0.1: routing to each group's leader,
//! batching, idempotent retries across a leader's loss, linearizable and stale reads,
//! expiry of abandoned holds, membership changes while the cluster serves, and nodes whose
//! data directory was wiped or belongs to another node or cluster.
//!
//! All tests live in one file so the workspace links one test binary for them (2 cores).

use solrouter_ledger::{
    AccountId, Command, HoldId, KeyId, KeyKind, KeyLimits, Op, OpId, PicoUsd, Rejection, Reply,
};
use solrouter_raft::{
    free_local_addr, group_of_account, ClusterConfig, ClusterStart, Consistency, LedgerApi,
    LedgerClient, LedgerError, LedgerNode, NodeOptions, CLIENT_BATCH_COMMANDS_MAX,
    CLIENT_CALL_DEADLINE, CLIENT_QUEUE_MAX, CLIENT_RPCS_IN_FLIGHT_MAX, CLIENT_RPC_TIMEOUT,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

/// Bounded polling for eventual conditions: attempts × interval = 20 s, room for several
/// elections on a loaded 2-core machine.
const POLL_ATTEMPTS_MAX: u32 = 2_000;
const POLL_INTERVAL: Duration = Duration::from_millis(10);
const TOP_UP: PicoUsd = PicoUsd(1_000);

struct Cluster {
    peers: BTreeMap<u64, String>,
    nodes: BTreeMap<u64, LedgerNode>,
    dirs: BTreeMap<u64, TempDir>,
    n_groups: u32,
}

impl Cluster {
    async fn start(n_nodes: u64, n_groups: u32) -> Cluster {
        let peers: BTreeMap<u64, String> =
            (1..=n_nodes).map(|id| (id, free_local_addr())).collect();
        let mut cluster =
            Cluster { peers, nodes: BTreeMap::new(), dirs: BTreeMap::new(), n_groups };
        for id in 1..=n_nodes {
            let start = ClusterStart::Bootstrap(cluster.peers.clone());
            cluster.open(id, start).await;
        }
        cluster
    }

    async fn open(&mut self, id: u64, start: ClusterStart) {
        let listen = self.peers[&id].parse().unwrap();
        let config = ClusterConfig::try_new(id, listen, start, self.n_groups).unwrap();
        let dir = self.dirs.entry(id).or_insert_with(|| tempfile::tempdir().unwrap());
        let node = open(&config, dir.path()).await;
        self.nodes.insert(id, node);
    }

    async fn client(&self) -> LedgerClient {
        let seeds: Vec<String> = self.peers.values().cloned().collect();
        LedgerClient::connect(&seeds).await.unwrap()
    }

    /// An account id in each group.
    fn accounts(&self) -> Vec<AccountId> {
        (0..self.n_groups)
            .map(|group_idx| {
                (1..)
                    .map(AccountId)
                    .find(|a| group_of_account(*a, self.n_groups) == group_idx)
                    .expect("some account lands in every group")
            })
            .collect()
    }

    async fn shutdown(self) {
        for node in self.nodes.values() {
            node.shutdown().await.unwrap();
        }
    }
}

async fn open(config: &ClusterConfig, dir: &Path) -> LedgerNode {
    LedgerNode::open_cluster(config, dir, &NodeOptions::default()).await.unwrap()
}

async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut condition: impl FnMut() -> F,
) {
    for _ in 0..POLL_ATTEMPTS_MAX {
        if condition().await {
            return;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    panic!("not true after {POLL_ATTEMPTS_MAX} attempts: {what}");
}

async fn submit_ok(client: &LedgerClient, command: Command) -> Reply {
    match client.submit(command.clone()).await {
        Ok(Ok(reply)) => reply,
        other => panic!("{command:?} was not applied: {other:?}"),
    }
}

async fn create(client: &LedgerClient, accounts: &[AccountId]) {
    for account in accounts {
        let create = Op::CreateAccount { account: *account, name: "acme".into() };
        let id = OpId(u128::from(account.0) << 64);
        assert_eq!(submit_ok(client, Command { id, op: create }).await, Reply::AccountCreated);
    }
}

async fn credits(client: &LedgerClient, account: AccountId, consistency: Consistency) -> PicoUsd {
    client.account(account, consistency).await.unwrap().expect("account exists").credits
}

/// Top-ups from many tasks at once, round robin over `accounts`; returns how many each
/// account received.
async fn concurrent_top_ups(
    client: &LedgerClient,
    accounts: &[AccountId],
    n_top_ups: u64,
    next_op: &AtomicU64,
) -> BTreeMap<AccountId, u64> {
    let mut tasks = Vec::new();
    let mut expected = BTreeMap::new();
    for n in 0..n_top_ups {
        let account = accounts[n as usize % accounts.len()];
        *expected.entry(account).or_insert(0) += 1;
        let client = client.clone();
        let id = OpId(u128::from(next_op.fetch_add(1, Ordering::Relaxed)));
        let op = Op::Credit { account, amount: TOP_UP };
        tasks.push(tokio::spawn(async move { submit_ok(&client, Command { id, op }).await }));
    }
    for task in tasks {
        assert!(matches!(task.await.unwrap(), Reply::Credited { .. }));
    }
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_routes_batches_retries_and_reads() {
    const N_GROUPS: u32 = 4;
    const N_TOP_UPS: u64 = 400;
    let mut cluster = Cluster::start(3, N_GROUPS).await;
    let client = cluster.client().await;
    assert_eq!(client.n_groups(), N_GROUPS);
    let accounts = cluster.accounts();
    create(&client, &accounts).await;

    // Concurrent submits share RPCs and entries: fewer entries than commands.
    let next_op = AtomicU64::new(1);
    let expected = concurrent_top_ups(&client, &accounts, N_TOP_UPS, &next_op).await;
    let (n_batches, n_commands) = cluster.nodes.values().fold((0, 0), |(b, c), node| {
        (0..N_GROUPS)
            .map(|g| node.group_stats(g))
            .fold((b, c), |(b, c), s| (b + s.n_batches_proposed, c + s.n_commands_proposed))
    });
    assert!(n_commands >= N_TOP_UPS, "{n_commands} commands proposed");
    assert!(n_batches < n_commands, "{n_batches} entries for {n_commands} commands");
    for (account, n) in &expected {
        let total = PicoUsd(u128::from(*n) * TOP_UP.0);
        assert_eq!(credits(&client, *account, Consistency::Linearizable).await, total);
        // A lagging replica may not have applied even the account's creation yet.
        eventually("a stale read catches up", || async {
            let stale = client.account(*account, Consistency::Stale).await.unwrap();
            stale.map(|entry| entry.credits) == Some(total)
        })
        .await;
    }

    // The same op id again is answered from the idempotency window, applied once.
    let account = accounts[0];
    let repeat = Command { id: OpId(1), op: Op::Credit { account, amount: TOP_UP } };
    let before = credits(&client, account, Consistency::Linearizable).await;
    assert!(matches!(submit_ok(&client, repeat).await, Reply::Credited { .. }));
    assert_eq!(credits(&client, account, Consistency::Linearizable).await, before);

    // Stop the leader of the first group; the client follows the new leader.
    let topology = client.topology().await.unwrap();
    let group_idx = group_of_account(account, N_GROUPS) as usize;
    let leader = topology.leaders[group_idx].expect("the group has a leader");
    cluster.nodes.remove(&leader).unwrap().shutdown().await.unwrap();
    let after = concurrent_top_ups(&client, &accounts, 40, &next_op).await;
    let total = PicoUsd(u128::from(expected[&account] + after[&account]) * TOP_UP.0);
    assert_eq!(credits(&client, account, Consistency::Linearizable).await, total);
    let audit = client.audit(Consistency::Linearizable).await.unwrap();
    assert!(audit.ok, "{:?}", audit.problems);
    assert_eq!(audit.credited, audit.credits);
    assert_eq!(audit.n_accounts, N_GROUPS as u64);
    client.ready().await.unwrap();

    // A hold nobody settles (its gateway crashed) is voided after its expiry, though no
    // other command reaches its group.
    let (hold, key) = (HoldId(77), KeyId(77));
    let (name, hash, kind, limits) =
        ("k".into(), [77; 32], KeyKind::Inference, KeyLimits::default());
    let create_key = Op::CreateKey { account, key, name, hash, kind, limits };
    submit_ok(&client, Command { id: OpId((1 << 100) + 2), op: create_key }).await;
    let reserve = Op::Reserve { account, key, hold, amount: TOP_UP, ttl_ms: 300 };
    submit_ok(&client, Command { id: OpId(1 << 100), op: reserve }).await;
    let pending = client.account(account, Consistency::Linearizable).await.unwrap().unwrap();
    assert_eq!(pending.debits_pending, TOP_UP);
    eventually("the abandoned hold expired", || async {
        let entry = client.account(account, Consistency::Linearizable).await.unwrap().unwrap();
        entry.debits_pending == PicoUsd::ZERO && entry.n_holds == 0
    })
    .await;
    let release = Op::Release { account, hold };
    let released = client.submit(Command { id: OpId((1 << 100) + 1), op: release }).await;
    assert_eq!(released.unwrap(), Err(Rejection::UnknownHold));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_and_leave_while_the_cluster_serves() {
    const N_GROUPS: u32 = 2;
    let mut cluster = Cluster::start(3, N_GROUPS).await;
    let client = cluster.client().await;
    let accounts = cluster.accounts();
    create(&client, &accounts).await;

    // Load runs throughout both changes; every top-up must succeed.
    let stop = Arc::new(tokio::sync::Notify::new());
    let load = {
        let (client, accounts, stop) = (client.clone(), accounts.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let next_op = AtomicU64::new(1);
            let mut acknowledged = BTreeMap::<AccountId, u64>::new();
            loop {
                let round = concurrent_top_ups(&client, &accounts, 16, &next_op);
                tokio::select! {
                    done = round => for (account, n) in done {
                        *acknowledged.entry(account).or_insert(0) += n;
                    },
                    _ = stop.notified() => return acknowledged,
                }
            }
        })
    };

    let new_addr = free_local_addr();
    cluster.peers.insert(4, new_addr.clone());
    cluster.open(4, ClusterStart::Join).await;
    client.add_node(4, &new_addr).await.unwrap();
    client.add_node(4, &new_addr).await.unwrap(); // again: already in effect
    let topology = client.topology().await.unwrap();
    assert!(topology.voters.iter().all(|voters| voters.contains(&4)), "{topology:?}");
    let joined = cluster.nodes[&4].clone();
    eventually("the new node holds every group's state", || {
        let joined = joined.clone();
        let accounts = accounts.clone();
        async move {
            accounts
                .iter()
                .all(|a| joined.read_local_account(*a, |ledger| ledger.account(*a).is_some()))
        }
    })
    .await;

    // With node 3 down, removing node 2 could stall every group: refused, naming node 3.
    cluster.nodes.remove(&3).unwrap().shutdown().await.unwrap();
    let refused = client.remove_node(2).await.unwrap_err().to_string();
    assert!(refused.contains("voter(s) [3] did not acknowledge"), "{refused}");
    cluster.open(3, ClusterStart::Bootstrap(cluster.peers.clone())).await;

    // Node 3 is back: once it has caught up, removing a voter is accepted.
    let mut removed = client.remove_node(1).await;
    for _ in 0..10 {
        match &removed {
            Err(e) if e.to_string().contains("did not acknowledge") => {
                removed = client.remove_node(1).await;
            }
            _ => break,
        }
    }
    removed.unwrap();
    client.remove_node(1).await.unwrap(); // again: already in effect
                                          // Node 1 itself never learns the membership that removed it: ask the others.
    cluster.nodes.remove(&1).unwrap().shutdown().await.unwrap();
    for node in cluster.nodes.values() {
        eventually("the remaining nodes dropped node 1", || async {
            node.topology().voters.iter().all(|voters| !voters.contains(&1))
        })
        .await;
    }

    stop.notify_one();
    let acknowledged = load.await.unwrap();
    assert!(!acknowledged.is_empty(), "the load made progress");
    for (account, n) in acknowledged {
        let total = PicoUsd(u128::from(n) * TOP_UP.0);
        assert!(credits(&client, account, Consistency::Linearizable).await >= total);
    }
    let audit = client.audit(Consistency::Linearizable).await.unwrap();
    assert!(audit.ok, "{:?}", audit.problems);
    cluster.shutdown().await;
}

/// Without a quorum every call fails within its deadline, retryably, instead of retrying
/// for tens of seconds: also the submits queued behind a full set of RPCs, and those
/// waiting for room in the full queue. Once the quorum is back the same op id applies once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_quorum_fail_within_the_deadline() {
    let mut cluster = Cluster::start(3, 1).await;
    let client = cluster.client().await;
    let account = cluster.accounts()[0];
    create(&client, &[account]).await;
    for id in [2, 3] {
        cluster.nodes.remove(&id).unwrap().shutdown().await.unwrap();
    }
    let credit = Command { id: OpId(1 << 90), op: Op::Credit { account, amount: TOP_UP } };
    let started = std::time::Instant::now();
    let failed = client.submit(credit.clone()).await.expect_err("no quorum, no outcome");
    let read = client.account(account, Consistency::Linearizable).await;
    let elapsed = started.elapsed();
    assert!(failed.is_retryable(), "{failed}");
    assert!(read.as_ref().is_err_and(LedgerError::is_retryable), "{read:?}");
    let bound = CLIENT_CALL_DEADLINE * 2 + CLIENT_RPC_TIMEOUT;
    assert!(elapsed < bound, "two calls took {elapsed:?}");

    // Credits of an account never created: the ones the lone node logged apply (as
    // rejections) once the quorum is back, and leave the balances checked below alone.
    let stranger = AccountId(u64::MAX);
    let n_submits = CLIENT_RPCS_IN_FLIGHT_MAX * CLIENT_BATCH_COMMANDS_MAX + CLIENT_QUEUE_MAX + 512;
    let submits = (0..n_submits as u128).map(|n| {
        let (client, id) = (client.clone(), OpId(1 << 91 | n));
        let op = Op::Credit { account: stranger, amount: TOP_UP };
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let answer = client.submit(Command { id, op });
            (answer.await, started.elapsed())
        })
    });
    for submit in submits.collect::<Vec<_>>() {
        let (answer, elapsed) = submit.await.unwrap();
        assert!(answer.as_ref().is_err_and(LedgerError::is_retryable), "{answer:?}");
        let bound = CLIENT_CALL_DEADLINE + Duration::from_millis(500);
        assert!(elapsed < bound, "a submit took {elapsed:?}");
    }
    for id in [2, 3] {
        cluster.open(id, ClusterStart::Bootstrap(cluster.peers.clone())).await;
    }
    eventually("the quorum is back", || async { client.ready().await.is_ok() }).await;
    assert!(matches!(submit_ok(&client, credit).await, Reply::Credited { .. }));
    assert_eq!(credits(&client, account, Consistency::Linearizable).await, TOP_UP);
    cluster.shutdown().await;
}

/// A client that knew a node at an address never takes an answer from another node that
/// listens there later (another cluster's, here a fresh one-node cluster on the port):
/// that node refuses the call, retryably, instead of answering for the one the client
/// knew (with "no such account", say). Tests run in parallel and reuse each other's freed
/// ports, and so do pods and VMs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_node_at_a_known_address_refuses_instead_of_answering() {
    let mut cluster = Cluster::start(1, 1).await;
    let client = cluster.client().await;
    let account = cluster.accounts()[0];
    create(&client, &[account]).await;
    client.topology().await.unwrap();
    cluster.nodes.remove(&1).unwrap().shutdown().await.unwrap();
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger = LedgerNode::open(1, &cluster.peers, stranger_dir.path(), 1).await.unwrap();
    eventually("the stranger is founded", || async { stranger.ready().await.is_ok() }).await;
    assert!(stranger.account(account, Consistency::Linearizable).await.unwrap().is_none());

    let read = client.account(account, Consistency::Linearizable).await;
    assert!(read.as_ref().is_err_and(LedgerError::is_retryable), "{read:?}");
    let text = read.unwrap_err().to_string();
    assert!(text.contains("the node the caller knew here is gone"), "{text}");
    stranger.shutdown().await.unwrap();
}

/// Opens node `id` of a cluster with `peers` in `dir`, expecting a refusal; returns it.
async fn refused_start(id: u64, start: ClusterStart, addr: &str, dir: &Path) -> String {
    let config = ClusterConfig::try_new(id, addr.parse().unwrap(), start, 1).unwrap();
    let opened = LedgerNode::open_cluster(&config, dir, &NodeOptions::default()).await;
    opened.err().unwrap_or_else(|| panic!("node {id} started with {}", dir.display())).to_string()
}

/// A one-node cluster of node `id` founded in a fresh directory, then stopped: another
/// cluster's data directory.
async fn foreign_data_dir(id: u64) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let peers = BTreeMap::from([(id, free_local_addr())]);
    let node = LedgerNode::open(id, &peers, dir.path(), 1).await.unwrap();
    eventually("the one-node cluster is founded", || async { node.ready().await.is_ok() }).await;
    node.shutdown().await.unwrap();
    dir
}

/// Issue 9, item 2: a founder whose data directory was wiped, or that is given another
/// node's or another cluster's, refuses to start, naming the fix. Started anyway as a
/// joining node (which checks nothing at start), the wiped node is refused by its peers
/// (it never takes an entry, so it can never vote without one it acknowledged), and
/// adding it again under its id fails at once. Removed, and added under a new id with an
/// empty data directory, it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_or_foreign_data_directory_is_refused_and_rejoins_under_a_new_id() {
    let mut cluster = Cluster::start(3, 1).await;
    let client = cluster.client().await;
    let account = cluster.accounts()[0];
    create(&client, &[account]).await;
    let credit =
        |n: u128| Command { id: OpId(n << 80), op: Op::Credit { account, amount: TOP_UP } };
    submit_ok(&client, credit(1)).await;

    cluster.nodes.remove(&2).unwrap().shutdown().await.unwrap();
    let addr = cluster.peers[&2].clone();
    let founder = ClusterStart::Bootstrap(cluster.peers.clone());
    let wiped = tempfile::tempdir().unwrap();
    let refused = refused_start(2, founder.clone(), &addr, wiped.path()).await;
    assert!(refused.contains("knows node 2 as incarnation"), "{refused}");
    assert!(refused.contains("this data directory is empty"), "{refused}");
    assert!(refused.contains("it was wiped or replaced"), "{refused}");
    assert!(refused.contains("solrouter ledger-admin remove-node --id 2"), "{refused}");
    let another_clusters = foreign_data_dir(2).await;
    let refused = refused_start(2, founder.clone(), &addr, another_clusters.path()).await;
    assert!(refused.contains("knows node 2 as incarnation"), "{refused}");
    let another_nodes = foreign_data_dir(4).await;
    let refused = refused_start(2, founder, &addr, another_nodes.path()).await;
    assert!(refused.contains("it belongs to node 4"), "{refused}");

    let config = ClusterConfig::try_new(2, addr.parse().unwrap(), ClusterStart::Join, 1).unwrap();
    let wiped_node = open(&config, wiped.path()).await;
    let refused = client.add_node(2, &addr).await.unwrap_err();
    assert!(!refused.is_retryable(), "{refused}");
    let refused = refused.to_string();
    assert!(refused.contains("already a member as incarnation"), "{refused}");
    assert!(refused.contains("remove-node --id 2"), "{refused}");
    submit_ok(&client, credit(2)).await;
    assert_eq!(wiped_node.stats().last_log_index, None, "a refused incarnation took entries");
    wiped_node.shutdown().await.unwrap();

    client.remove_node(2).await.unwrap();
    let new_addr = free_local_addr();
    cluster.peers.insert(5, new_addr.clone());
    cluster.open(5, ClusterStart::Join).await;
    client.add_node(5, &new_addr).await.unwrap();
    let joined = cluster.nodes[&5].clone();
    let total = PicoUsd(2 * TOP_UP.0);
    eventually("the node added under a new id caught up", || {
        let joined = joined.clone();
        async move {
            joined.read_local_account(account, |ledger| ledger.account(account).map(|a| a.credits))
                == Some(total)
        }
    })
    .await;
    assert_eq!(credits(&client, account, Consistency::Linearizable).await, total);
    cluster.shutdown().await;
}
