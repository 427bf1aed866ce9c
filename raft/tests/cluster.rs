//! A three-node ledger cluster with two Raft groups, talking gRPC on 127.0.0.1:
//! replication to every replica, routing by account, fail-over after the leader stops, and
//! the group handed back to it when it returns.

use solrouter_ledger::{AccountId, Command, HoldId, Op, OpId, PicoUsd, Reply, RequestRecord};
use solrouter_raft::{
    free_local_addr, Consistency, HistoryQuery, LedgerApi, LedgerError, LedgerNode,
    HAND_OVER_BACKOFF,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Bounded polling for eventual conditions: attempts × interval = 20 s, room for several
/// elections on a loaded 2-core machine.
const POLL_ATTEMPTS_MAX: u32 = 2_000;
const POLL_INTERVAL: Duration = Duration::from_millis(10);
const N_GROUPS: u32 = 2;
const TOP_UP: PicoUsd = PicoUsd(1_000);

/// Submits through whichever live node leads the command's group, following `NotLeader`
/// hints and retrying retryable errors a bounded number of times (same op id: idempotent).
async fn submit_to_leader(nodes: &BTreeMap<u64, LedgerNode>, command: Command) -> Reply {
    let ids: Vec<u64> = nodes.keys().copied().collect();
    let mut target = ids[0];
    for attempt in 0..POLL_ATTEMPTS_MAX {
        match nodes[&target].submit(command.clone()).await {
            Ok(Ok(reply)) => return reply,
            Ok(Err(rejection)) => panic!("{command:?} rejected: {rejection}"),
            Err(LedgerError::NotLeader { leader_id: Some(leader), .. })
                if nodes.contains_key(&leader) =>
            {
                target = leader;
                continue;
            }
            Err(e) if e.is_retryable() => {}
            Err(e) => panic!("{command:?} failed at node {target}: {e}"),
        }
        target = ids[attempt as usize % ids.len()];
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    panic!("{command:?} not applied after {POLL_ATTEMPTS_MAX} attempts");
}

async fn eventually(what: &str, condition: impl FnMut() -> bool) {
    eventually_within(what, POLL_ATTEMPTS_MAX, condition).await;
}

async fn eventually_within(what: &str, attempts: u32, mut condition: impl FnMut() -> bool) {
    for _ in 0..attempts {
        if condition() {
            return;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    panic!("not true after {attempts} attempts: {what}");
}

fn credits_on(node: &LedgerNode, account: AccountId) -> Option<PicoUsd> {
    node.read_local_account(account, |ledger| ledger.account(account).map(|a| a.credits))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_two_groups_replicate_fail_over_and_hand_back() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let peers: BTreeMap<u64, String> = (1..=3).map(|id| (id, free_local_addr())).collect();
    let mut nodes = BTreeMap::new();
    for (id, dir) in (1..=3).zip(&dirs) {
        let node = LedgerNode::open(id, &peers, dir.path(), N_GROUPS).await.unwrap();
        nodes.insert(id, node);
    }
    // The founders lead the groups first in turn, in id order (`founding.rs`): group 0
    // node 1, group 1 node 2.
    for group_idx in 0..N_GROUPS {
        let first = u64::from(group_idx) + 1;
        eventually(&format!("node {first} leads group {group_idx}"), || {
            nodes.values().all(|node| node.group_stats(group_idx).leader_id == Some(first))
        })
        .await;
    }
    // One account in each group.
    let mut accounts = Vec::new();
    for group_idx in 0..N_GROUPS {
        let account = (1..)
            .map(AccountId)
            .find(|a| nodes[&1].group_idx_of(*a) == group_idx)
            .expect("some account lands in every group");
        accounts.push(account);
    }

    for (n, account) in accounts.iter().enumerate() {
        let create = Op::CreateAccount { account: *account, name: "acme".into() };
        let reply = submit_to_leader(&nodes, Command { id: OpId(n as u128), op: create }).await;
        assert_eq!(reply, Reply::AccountCreated);
        let top_up = Op::Credit { account: *account, amount: TOP_UP };
        submit_to_leader(&nodes, Command { id: OpId(100 + n as u128), op: top_up }).await;
    }
    eventually("every replica of every group has its account", || {
        nodes.values().all(|node| accounts.iter().all(|a| credits_on(node, *a) == Some(TOP_UP)))
    })
    .await;
    // Each replica of a group has a snapshot turn of its own, and a node's groups come in
    // different turns (`compaction.rs`).
    for group_idx in 0..N_GROUPS {
        let turns: BTreeSet<_> = nodes.values().map(|node| node.snapshot_turn(group_idx)).collect();
        assert_eq!(turns, (0..3).map(|turn| (turn, 3)).collect(), "group {group_idx}");
    }
    for node in nodes.values() {
        assert_ne!(node.snapshot_turn(0), node.snapshot_turn(1), "node {}", node.id());
    }
    // Each group keeps only its own accounts.
    let (first, second) = (accounts[0], accounts[1]);
    assert_eq!(nodes[&1].read_local_account(first, |ledger| ledger.account(second).cloned()), None);

    // Stop the leader of the first account's group; the others elect a new one and go on.
    let group_idx = nodes[&1].group_idx_of(first);
    let mut leader = None;
    eventually("the group has a leader", || {
        leader = nodes[&1].group_stats(group_idx).leader_id;
        leader.is_some()
    })
    .await;
    let stopped = nodes.remove(&leader.unwrap()).unwrap();
    stopped.shutdown().await.unwrap();
    let top_up = Op::Credit { account: first, amount: TOP_UP };
    submit_to_leader(&nodes, Command { id: OpId(200), op: top_up }).await;
    let doubled = PicoUsd(2 * TOP_UP.0);
    eventually("both survivors applied the top-up made after fail-over", || {
        nodes.values().all(|node| credits_on(node, first) == Some(doubled))
    })
    .await;

    // The stopped node comes back, and the group's leader hands the group back to it,
    // where the placement puts it (`leadership.rs`), while top-ups keep coming: each is
    // applied once, those the old leader held during the hand-over included.
    let back = stopped.id();
    drop(stopped);
    let dir = dirs[usize::try_from(back - 1).unwrap()].path();
    nodes.insert(back, LedgerNode::open(back, &peers, dir, N_GROUPS).await.unwrap());
    let writing = Arc::new(AtomicBool::new(true));
    let writer = tokio::spawn({
        let (nodes, writing) = (nodes.clone(), Arc::clone(&writing));
        async move {
            let mut n_top_ups = 0;
            while writing.load(Ordering::Relaxed) {
                let top_up = Op::Credit { account: first, amount: TOP_UP };
                submit_to_leader(&nodes, Command { id: OpId(300 + n_top_ups), op: top_up }).await;
                n_top_ups += 1;
            }
            n_top_ups
        }
    });
    // Room for a hand-over that fails and is tried again after its backoff.
    let attempts =
        POLL_ATTEMPTS_MAX + (HAND_OVER_BACKOFF.as_millis() / POLL_INTERVAL.as_millis()) as u32;
    eventually_within(&format!("node {back} leads group {group_idx} again"), attempts, || {
        nodes.values().all(|node| node.group_stats(group_idx).leader_id == Some(back))
    })
    .await;
    writing.store(false, Ordering::Relaxed);
    let n_top_ups = writer.await.unwrap();
    assert!(n_top_ups > 0);
    let top_up = Op::Credit { account: first, amount: TOP_UP };
    submit_to_leader(&nodes, Command { id: OpId(299), op: top_up }).await;
    let credited = PicoUsd((3 + n_top_ups) * TOP_UP.0);
    eventually("every replica applied every top-up once", || {
        nodes.values().all(|node| credits_on(node, first) == Some(credited))
    })
    .await;
    for group_idx in 0..N_GROUPS {
        let first = u64::from(group_idx) + 1;
        assert_eq!(nodes[&1].group_stats(group_idx).leader_id, Some(first), "group {group_idx}");
    }
    for node in nodes.values() {
        let audit = node.read_local_account(first, |ledger| ledger.audit());
        assert!(audit.ok, "{:?}", audit.problems);
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_node_catches_up_from_a_snapshot() {
    const SNAPSHOT_EVERY: u64 = 8;
    const N_TOP_UPS: u128 = 40;
    const N_REQUESTS: u128 = 30;
    let account = AccountId(7);
    let options = solrouter_raft::NodeOptions::try_new(SNAPSHOT_EVERY, 0).unwrap();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let peers: BTreeMap<u64, String> = (1..=3).map(|id| (id, free_local_addr())).collect();
    let mut nodes = BTreeMap::new();
    for (id, dir) in (1..=3).zip(&dirs) {
        let node = LedgerNode::open_with(id, &peers, dir.path(), 1, &options).await.unwrap();
        nodes.insert(id, node);
    }
    let create = Op::CreateAccount { account, name: "acme".into() };
    submit_to_leader(&nodes, Command { id: OpId(1), op: create }).await;
    eventually("node 3 has the account", || credits_on(&nodes[&3], account).is_some()).await;

    // Node 3 stops; the other two go on far past a snapshot and purge their logs.
    nodes.remove(&3).unwrap().shutdown().await.unwrap();
    for n in 0..N_TOP_UPS {
        let top_up = Op::Credit { account, amount: TOP_UP };
        submit_to_leader(&nodes, Command { id: OpId(100 + n), op: top_up }).await;
    }
    // Requests settled meanwhile: their records are in the entries node 3 will skip.
    for n in 0..N_REQUESTS {
        let record = RequestRecord {
            model: "mock/echo".into(),
            status: 200,
            created_ms: 1_700_000_000_000 + n as u64,
            ..RequestRecord::default()
        };
        // Holds never reserved, charged as such: a reserve stamp no later than now.
        let reserved_at_ms = u64::MAX;
        let settle =
            Op::Settle { account, hold: HoldId(n), actual: PicoUsd(1), record, reserved_at_ms };
        submit_to_leader(&nodes, Command { id: OpId(1_000 + n), op: settle }).await;
    }
    let total = PicoUsd(N_TOP_UPS * TOP_UP.0);
    eventually("the survivors purged the entries node 3 lacks", || {
        nodes.values().all(|node| node.stats().purged_index.is_some_and(|i| i > SNAPSHOT_EVERY))
    })
    .await;

    let node = LedgerNode::open_with(3, &peers, dirs[2].path(), 1, &options).await.unwrap();
    nodes.insert(3, node);
    eventually("node 3 caught up through a snapshot", || {
        credits_on(&nodes[&3], account) == Some(total)
    })
    .await;
    // The metrics may report the installed snapshot a moment after its state is readable.
    eventually("node 3 reports the snapshot it installed", || {
        nodes[&3].stats().snapshot_index.is_some()
    })
    .await;
    // Its history is filled in from the leader in the background: every record, once.
    let query = HistoryQuery::all(account);
    let mut copied = Vec::new();
    for _ in 0..POLL_ATTEMPTS_MAX {
        let page = nodes[&3].history(query.clone(), Consistency::Stale).await.unwrap();
        copied = page.records.iter().map(|(hold, _)| hold.0).collect();
        if copied.len() == N_REQUESTS as usize {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    assert_eq!(copied, (0..N_REQUESTS).rev().collect::<Vec<_>>(), "node 3's history");
    for node in nodes.values() {
        assert!(node.read_local(|ledger| ledger.audit()).ok);
        node.shutdown().await.unwrap();
    }
}
