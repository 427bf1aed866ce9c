//! Filling in the request history a replica missed. A replica that installs a snapshot
//! skips the entries the snapshot covers, and with them their requests' records: the
//! history store is not part of the snapshot (snapshots follow live state only). After
//! each install the node copies the group's records in the background from a replica
//! that applied the entries the snapshot covers and wishes for no copy of its own (not
//! necessarily the leader, which may have installed a snapshot too), page by page in
//! creation order, keeping what it already has (a hold's first record wins, so the copy
//! and the node's own applies never conflict). Until the copy ends, this replica's
//! history lacks the records settled before the snapshot. Every read a gateway makes
//! with `Consistency::Linearizable` is served by the leader, which lacks them only while
//! a copy of its own runs.
//! The wish for a copy is kept in the history, synced, from just before the install's
//! save until a copy that began after it has ended and its pages are synced
//! (`History::want_backfill`, `History::backfill_done`): a node that stops or crashes in
//! between asks for the copy again when it opens.

use crate::client::LedgerClient;
use crate::error::LedgerError;
use crate::history::{BackfillRequests, History};
use crate::node::{Inner, LedgerNode};
use crate::tls::TlsConfig;
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::task::JoinHandle;

/// Wait before trying again when a copy failed (the membership not known yet, no
/// replica that holds the records reachable), doubled at each further failure in a row
/// up to [`BACKFILL_RETRY_INTERVAL_MAX`].
pub const BACKFILL_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait between two tries of a copy that keeps failing: each try connects to the
/// peers afresh (TLS handshakes), so a copy that cannot succeed for hours (every replica
/// wishes for a copy; a rolling upgrade whose builds disagree on the export) costs its
/// peers an eighth of what a try every second did, and a copy whose peers come back
/// begins within this.
pub const BACKFILL_RETRY_INTERVAL_MAX: Duration = Duration::from_secs(8);

/// What a failed history call of the copy was doing.
const FILLING: &str = "filling in the request history";

/// How the copying task reaches its peers.
#[derive(Clone)]
pub(crate) enum Reach {
    /// Over TCP, with the cluster's TLS if it has one.
    Tcp(Option<TlsConfig>),
    /// Through the simulation's network.
    #[cfg(test)]
    Via(crate::client::Dialer),
}

impl Reach {
    async fn connect(&self, peers: &[String]) -> Result<LedgerClient, LedgerError> {
        match self {
            Reach::Tcp(tls) => LedgerClient::connect_with(peers, tls.clone()).await,
            #[cfg(test)]
            Reach::Via(dialer) => LedgerClient::connect_via(peers, Arc::clone(dialer)).await,
        }
    }
}

/// Runs until the node is dropped or shut down (which aborts the task).
pub(crate) fn spawn(
    node: Weak<Inner>,
    requests: Arc<BackfillRequests>,
    reach: Reach,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut failed = FailuresInARow::default();
        loop {
            let mut retry = Vec::new();
            let mut retry_in = Duration::ZERO;
            let groups = requests.wanted().await;
            let Some(live) = LedgerNode::from_weak(&node) else { return };
            let topology = live.topology();
            let history = live.history_store().clone();
            drop(live);
            let peers: Vec<String> = topology
                .members
                .iter()
                .filter(|(id, _)| **id != topology.node_id)
                .map(|(_, addr)| addr.clone())
                .collect();
            for group_idx in groups {
                match copy_group(&peers, &reach, group_idx, &history).await {
                    Ok(copied) => {
                        failed.succeeded(group_idx);
                        tracing::info!(group_idx, copied, "request history filled in");
                    }
                    Err(e) => {
                        let Failed { failures, warn, wait } = failed.failed(group_idx);
                        if warn {
                            tracing::warn!(
                                group_idx,
                                failures,
                                error = %e,
                                "request history copy failed; retrying in {wait:?}"
                            );
                        } else {
                            tracing::debug!(group_idx, failures, error = %e, "request history copy failed");
                        }
                        retry.push(group_idx);
                        retry_in = retry_in.max(wait);
                    }
                }
            }
            // One wait for all of the round's failures, not one after another per group.
            if !retry.is_empty() {
                tokio::time::sleep(retry_in).await;
                retry.into_iter().for_each(|group_idx| requests.request(group_idx));
            }
        }
    })
}

/// Each group's copies that failed in a row. A copy that cannot succeed for a while (every
/// replica wishes for a copy; a rolling upgrade whose builds disagree on the export) is
/// retried after [`BACKFILL_RETRY_INTERVAL`], then twice as long after each further
/// failure up to [`BACKFILL_RETRY_INTERVAL_MAX`], and warned of at its 1st, 2nd, 4th,
/// 8th… failure only: a copy stuck for hours logs a few dozen warnings.
#[derive(Default)]
struct FailuresInARow(BTreeMap<u32, u32>);

/// A failed copy, counted.
#[derive(Debug, PartialEq)]
struct Failed {
    /// Copies of its group that failed in a row, this one included.
    failures: u32,
    warn: bool,
    /// How long to wait before trying again.
    wait: Duration,
}

impl FailuresInARow {
    /// Counts a failed copy of `group`.
    fn failed(&mut self, group: u32) -> Failed {
        let failures = self.0.entry(group).or_default();
        *failures = failures.saturating_add(1);
        let doubled = BACKFILL_RETRY_INTERVAL.saturating_mul(2u32.saturating_pow(*failures - 1));
        let wait = doubled.min(BACKFILL_RETRY_INTERVAL_MAX);
        Failed { failures: *failures, warn: failures.is_power_of_two(), wait }
    }

    /// A copy of `group` succeeded: its count starts again.
    fn succeeded(&mut self, group: u32) {
        self.0.remove(&group);
    }
}

/// Copies every record of `group_idx` that a replica holds which applied the entries the
/// installed snapshot covers and wishes for no copy itself (the leader need not be one:
/// it may have installed a snapshot too, and a copy from it would end this wish with its
/// gaps); returns how many.
async fn copy_group(
    peers: &[String],
    reach: &Reach,
    group_idx: u32,
    history: &History,
) -> Result<usize, LedgerError> {
    if peers.is_empty() {
        // A node that has just opened may not have published its membership yet; a
        // copy is wished for only by a replica of a group with others.
        let reason = "no other replica of the group known yet".to_owned();
        return Err(LedgerError::Unavailable { reason });
    }
    // The wish this copy answers (a later install's wish outlives the copy's end), and
    // so how far the replica copied from must have applied the group's entries.
    let wanted = history.blocking(FILLING, move |history| history.backfills_wanted()).await?;
    let through = wanted.iter().find(|(group, _)| *group == group_idx).map(|(_, at)| *at);
    let client = reach.connect(peers).await?;
    let mut after = None;
    let mut copied = 0;
    loop {
        let page = client.history_export(group_idx, after, through.unwrap_or(0)).await?;
        copied += page.records.len();
        let records = page.records;
        history.blocking(FILLING, move |history| history.insert(records)).await?;
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    if let Some(through) = through {
        history.blocking(FILLING, move |history| history.backfill_done(group_idx, through)).await?;
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::HISTORY_RETENTION_DEFAULT;
    use crate::{free_local_addr, LedgerApi, NodeOptions, HISTORY_FILE};
    use solrouter_ledger::{AccountId, Command, HoldId, Op, OpId, PicoUsd, RequestRecord};
    use std::collections::BTreeMap;

    /// A node that opens with a copy wished for and not ended (it stopped after a
    /// snapshot install and before the copy's pages were synced) copies the group's
    /// records from a peer, and the wish ends with the copy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_that_opens_with_a_copy_wished_for_makes_it() {
        const N_RECORDS: u128 = 20;
        let account = AccountId(7);
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let peers: BTreeMap<u64, String> = (1..=3).map(|id| (id, free_local_addr())).collect();
        let options = NodeOptions::default();
        let open =
            |id: u64| LedgerNode::open_with(id, &peers, dirs[id as usize - 1].path(), 1, &options);
        let mut nodes = Vec::new();
        for id in 1..=3 {
            nodes.push(open(id).await.unwrap());
        }
        let addresses: Vec<String> = peers.values().cloned().collect();
        let client = LedgerClient::connect(&addresses).await.unwrap();
        let create = Op::CreateAccount { account, name: "acme".into() };
        client.submit(Command { id: OpId(1), op: create }).await.unwrap().unwrap();
        for n in 0..N_RECORDS {
            let created_ms = 1_700_000_000_000 + n as u64;
            let record = RequestRecord { status: 200, created_ms, ..RequestRecord::default() };
            // A hold never reserved, settled as such.
            let op = Op::Settle {
                account,
                hold: HoldId(n),
                actual: PicoUsd(1),
                record,
                reserved_at_ms: u64::MAX,
            };
            client.submit(Command { id: OpId(100 + n), op }).await.unwrap().unwrap();
        }
        assert!(holds_in_time(&nodes[2], N_RECORDS).await, "node 3 applied every settle");

        // Node 3 stops with its history as a snapshot install leaves it: the records of
        // the entries it skipped missing, the wish for their copy kept.
        nodes.pop().unwrap().shutdown().await.unwrap();
        let path = dirs[2].path().join(HISTORY_FILE);
        let history = History::open(&path, HISTORY_RETENTION_DEFAULT, 0).await.unwrap();
        history.expire(u64::MAX).unwrap();
        history.want_backfill(0, 1).unwrap();
        assert_eq!(history.stats().unwrap().records, 0);
        drop(history);

        nodes.push(open(3).await.unwrap());
        let filled = holds_in_time(&nodes[2], N_RECORDS).await;
        assert!(filled, "node 3's history filled in from a peer");
        for node in nodes {
            node.shutdown().await.unwrap();
        }
        let history = History::open(&path, HISTORY_RETENTION_DEFAULT, 0).await.unwrap();
        assert_eq!(history.backfills_wanted().unwrap(), [], "the wish ended with the copy");
    }

    #[test]
    fn a_copy_that_keeps_failing_is_tried_and_warned_of_ever_more_rarely() {
        let mut failures = FailuresInARow::default();
        let failed: Vec<Failed> = (0..20).map(|_| failures.failed(0)).collect();
        let warned: Vec<u32> = failed.iter().filter_map(|f| f.warn.then_some(f.failures)).collect();
        assert_eq!(warned, [1, 2, 4, 8, 16]);
        let waits: Vec<u64> = failed.iter().map(|f| f.wait.as_secs()).collect();
        assert_eq!(waits[..6], [1, 2, 4, 8, 8, 8], "doubled up to the most");
        assert!(waits.iter().all(|&secs| secs <= 8), "{waits:?}");
        let first = Failed { failures: 1, warn: true, wait: BACKFILL_RETRY_INTERVAL };
        assert_eq!(failures.failed(1), first, "each group counts its own");
        failures.succeeded(0);
        assert_eq!(failures.failed(0), first, "a copy that succeeded starts the count again");
        assert_eq!(failures.failed(0).wait, BACKFILL_RETRY_INTERVAL * 2);
        assert!(!failures.failed(0).warn);
    }

    #[test]
    fn a_copy_failing_for_ever_waits_the_most_and_never_overflows() {
        let mut failures = FailuresInARow(BTreeMap::from([(0, u32::MAX - 1)]));
        for _ in 0..3 {
            assert_eq!(failures.failed(0).wait, BACKFILL_RETRY_INTERVAL_MAX);
        }
    }

    /// Whether `node`'s history holds `n` records within 20 s.
    async fn holds_in_time(node: &LedgerNode, n: u128) -> bool {
        for _ in 0..2_000 {
            if u128::from(node.history_store().stats().unwrap().records) == n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}
