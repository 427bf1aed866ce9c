//! How much one Raft RPC to a peer carries and how long it may take: shared by the gRPC
//! network (`grpc_network`) and the simulation's, so the simulation runs what production
//! sends.
//!
//! openraft 0.9 bounds every AppendEntries by the heartbeat interval, whatever it carries
//! (its replication core wraps the call in `timeout(heartbeat_interval)`), so a catch-up
//! payload of up to `APPEND_ENTRIES_MAX` entries of up to `ENTRY_BYTES_MAX` each timed out
//! over any ordinary link, and again on every retry. The payload is sized to the timeout
//! instead: [`AppendBudget`] sends the prefix of the entries whose encoded bytes fit what
//! this peer was seen to take in half the timeout, and answers `PartialSuccess` with the
//! last entry sent once the peer took them all (openraft's replication core then sends
//! the rest at once). At least one entry is always sent: an entry larger than the link
//! carries in a heartbeat interval cannot be replicated under openraft 0.9.
//!
//! A snapshot's chunks get [`snapshot_chunk_timeout`]: openraft gives each the install's
//! whole timeout, while only the last one is answered after the follower installed the
//! snapshot, and that install takes time in proportion to the snapshot's size.
#![allow(
    clippy::result_large_err,
    reason = "openraft's RaftNetwork returns its large RPCError by value; this passes it on"
)]

use crate::encoded::EncodedEntries;
use crate::types::{Entry, LogId, Member, NodeId, TypeConfig};
use crate::{ENTRY_BYTES_MAX, SNAPSHOT_CHUNK_TIMEOUT};
use openraft::error::{RPCError, RaftError};
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest};
use std::time::Duration;
use tokio::time::Instant;

/// Bytes of entries the first AppendEntries to a peer may carry: 1 MiB crosses a 1 Gbit/s
/// link in 8 ms.
pub const APPEND_BYTES_FIRST: usize = 1024 * 1024;
/// The budget never shrinks below this (one entry is sent whatever its size)…
pub const APPEND_BYTES_MIN: usize = 1024;
/// …nor grows above this.
pub const APPEND_BYTES_MAX: usize = crate::APPEND_ENTRIES_MAX as usize * ENTRY_BYTES_MAX;
/// Slowest a follower is assumed to decode, apply, save and flush a snapshot it received,
/// in bytes per ms (2 MB/s; a node of the benchmarks did 19 MB in about 0.4 s): the last
/// chunk's reply may take this long beyond a chunk's crossing.
pub const INSTALL_BYTES_PER_MS_MIN: u64 = 2_000;

type AppendResult =
    Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>>;

/// How many bytes of entries the next AppendEntries to one peer may carry (see the module
/// doc).
#[derive(Debug)]
pub struct AppendBudget {
    bytes_max: usize,
    /// The bytes of entries of the AppendEntries under way: still set when the next one
    /// starts, openraft's timeout cancelled it.
    under_way: Option<usize>,
}

impl Default for AppendBudget {
    fn default() -> AppendBudget {
        AppendBudget { bytes_max: APPEND_BYTES_FIRST, under_way: None }
    }
}

/// One AppendEntries under way: what [`AppendBudget::finish`] needs.
#[must_use]
pub struct Sending {
    bytes: usize,
    started: Instant,
    /// The last entry sent, if the request was cut short.
    cut_after: Option<Option<LogId>>,
}

impl AppendBudget {
    /// Cuts `rpc` to the entries the budget allows (at least one) before it is sent, each
    /// sized from its body if `encoded` keeps it (`encoded.rs`), else by encoding it.
    pub fn start(
        &mut self,
        rpc: &mut AppendEntriesRequest<TypeConfig>,
        encoded: &EncodedEntries,
    ) -> Sending {
        if let Some(bytes) = self.under_way.take() {
            self.timed_out(bytes);
        }
        let (n_entries, bytes) = prefix(&rpc.entries, self.bytes_max, encoded);
        let cut_after = (n_entries < rpc.entries.len()).then(|| {
            rpc.entries.truncate(n_entries);
            rpc.entries.last().map(|entry| entry.log_id)
        });
        // A heartbeat says nothing of what the link carries.
        self.under_way = (bytes > 0).then_some(bytes);
        Sending { bytes, started: Instant::now(), cut_after }
    }

    /// Learns from `result`, the answer to the AppendEntries of `sending` sent with
    /// `timeout`, and turns a success of a request cut short into `PartialSuccess`.
    pub fn finish(
        &mut self,
        sending: Sending,
        timeout: Duration,
        result: AppendResult,
    ) -> AppendResult {
        self.under_way = None;
        match &result {
            Ok(_) if sending.bytes > 0 => {
                self.answered(sending.bytes, sending.started.elapsed(), timeout);
            }
            Err(RPCError::Timeout(_)) if sending.bytes > 0 => self.timed_out(sending.bytes),
            _ => {}
        }
        match (result, sending.cut_after) {
            (Ok(AppendEntriesResponse::Success), Some(last)) => {
                Ok(AppendEntriesResponse::PartialSuccess(last))
            }
            (result, _) => result,
        }
    }

    /// `bytes` were answered after `elapsed`: where the budget bound the request, it
    /// becomes what would take half of `timeout` at that pace (at most double or half
    /// what it was; a small request's time is its round trip and sync, not its bytes).
    fn answered(&mut self, bytes: usize, elapsed: Duration, timeout: Duration) {
        if bytes * 2 < self.bytes_max {
            return;
        }
        let elapsed_us = elapsed.as_micros().max(1);
        let fits = bytes as u128 * (timeout.as_micros() / 2) / elapsed_us;
        let fits = usize::try_from(fits).unwrap_or(usize::MAX);
        self.bytes_max = fits.clamp(self.bytes_max / 2, self.bytes_max.saturating_mul(2));
        self.bytes_max = self.bytes_max.clamp(APPEND_BYTES_MIN, APPEND_BYTES_MAX);
    }

    /// `bytes` were not answered in time: the next request carries at most half of them.
    fn timed_out(&mut self, bytes: usize) {
        self.bytes_max = self.bytes_max.min(bytes / 2).max(APPEND_BYTES_MIN);
    }
}

/// How many of `entries`, from the first, fit in `bytes_max` encoded bytes (at least one
/// if there is one), and their bytes.
fn prefix(entries: &[Entry], bytes_max: usize, encoded: &EncodedEntries) -> (usize, usize) {
    let mut bytes = 0;
    for (n_entries, entry) in entries.iter().enumerate() {
        // An entry that does not encode fails the send itself; count it as the largest.
        let entry_bytes = encoded.encoded_len(entry).unwrap_or(ENTRY_BYTES_MAX);
        if n_entries > 0 && bytes + entry_bytes > bytes_max {
            return (n_entries, bytes);
        }
        bytes += entry_bytes;
    }
    (entries.len(), bytes)
}

/// How long one InstallSnapshot chunk may take: [`SNAPSHOT_CHUNK_TIMEOUT`] to cross, and
/// for the last one also the install of a snapshot of its size at
/// [`INSTALL_BYTES_PER_MS_MIN`]; never more than openraft's own timeout. (Every chunk had
/// the install's 60 s: a chunk or reply lost to a silent peer held the follower's catch-up
/// that long.)
pub fn snapshot_chunk_timeout(
    rpc: &InstallSnapshotRequest<TypeConfig>,
    option: &RPCOption,
) -> Duration {
    let install = if rpc.done {
        let snapshot_bytes = rpc.offset + rpc.data.len() as u64;
        Duration::from_millis(snapshot_bytes / INSTALL_BYTES_PER_MS_MIN)
    } else {
        Duration::ZERO
    };
    (SNAPSHOT_CHUNK_TIMEOUT + install).min(option.hard_ttl())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use openraft::error::{Timeout, Unreachable};
    use openraft::network::RPCTypes;
    use solrouter_ledger::{AccountId, Batch, Command, Op, OpId};

    const TIMEOUT: Duration = crate::HEARTBEAT_INTERVAL;

    /// An entry at `index` of about `bytes` encoded bytes.
    pub(crate) fn entry_of(index: u64, bytes: usize) -> Entry {
        let op = Op::CreateAccount { account: AccountId(index), name: "x".repeat(bytes) };
        let batch = Batch { stamp_ms: 1, commands: vec![Command { id: OpId(1), op }] };
        Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Normal(batch.into()),
        }
    }

    fn request(entries: Vec<Entry>) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: openraft::Vote::new_committed(1, 1),
            prev_log_id: None,
            entries,
            leader_commit: None,
        }
    }

    fn timeout() -> AppendResult {
        let timeout =
            Timeout { action: RPCTypes::AppendEntries, id: 1, target: 2, timeout: TIMEOUT };
        Err(RPCError::Timeout(timeout))
    }

    /// A request is cut to the entries that fit (at least one), a success of a cut request
    /// is a `PartialSuccess` naming the last entry sent, and anything else passes as it
    /// came.
    #[tokio::test(start_paused = true)]
    async fn a_request_is_cut_to_the_budget_and_its_success_is_partial() {
        let mut budget = AppendBudget::default();
        let mut rpc = request((1..=8).map(|index| entry_of(index, 300 * 1024)).collect());
        let sending = budget.start(&mut rpc, &EncodedEntries::default());
        assert_eq!(rpc.entries.len(), 3, "3 × 300 KiB fit in 1 MiB");
        let answer = budget.finish(sending, TIMEOUT, Ok(AppendEntriesResponse::Success));
        let third = rpc.entries[2].log_id;
        assert_eq!(answer.unwrap(), AppendEntriesResponse::PartialSuccess(Some(third)));

        let mut rpc = request(vec![entry_of(1, 4 * APPEND_BYTES_FIRST)]);
        let sending = budget.start(&mut rpc, &EncodedEntries::default());
        assert_eq!(rpc.entries.len(), 1, "one entry goes whatever its size");
        let answer = budget.finish(sending, TIMEOUT, Ok(AppendEntriesResponse::Success));
        assert_eq!(answer.unwrap(), AppendEntriesResponse::Success);

        let mut rpc = request((1..=8).map(|index| entry_of(index, 300 * 1024)).collect());
        let sending = budget.start(&mut rpc, &EncodedEntries::default());
        let conflict = budget.finish(sending, TIMEOUT, Ok(AppendEntriesResponse::Conflict));
        assert_eq!(conflict.unwrap(), AppendEntriesResponse::Conflict);
        let sending = budget.start(&mut rpc, &EncodedEntries::default());
        let unreachable = Unreachable::new(&std::io::Error::other("down"));
        let failed = budget.finish(sending, TIMEOUT, Err(RPCError::Unreachable(unreachable)));
        assert!(matches!(failed, Err(RPCError::Unreachable(_))));
    }

    /// The budget follows the peer's pace: halved by a timeout, and by openraft
    /// cancelling a request at its timeout (seen when the next one starts); set to half
    /// the timeout's worth by an answer to a request it bound, by at most double or half;
    /// untouched by heartbeats and by small requests.
    #[tokio::test(start_paused = true)]
    async fn the_budget_follows_the_peer_s_pace() {
        let mut budget = AppendBudget::default();
        let mut big = request((1..=8).map(|index| entry_of(index, 200 * 1024)).collect());
        let sending = budget.start(&mut big, &EncodedEntries::default());
        let sent = sending.bytes;
        let _ = budget.finish(sending, TIMEOUT, timeout());
        assert_eq!(budget.bytes_max, sent / 2);

        let sending = budget.start(&mut big.clone(), &EncodedEntries::default());
        let sent = sending.bytes;
        // openraft's timeout drops the call: the next start learns of it.
        drop(sending);
        let sending = budget.start(&mut request(Vec::new()), &EncodedEntries::default());
        assert_eq!(budget.bytes_max, sent / 2);
        let _ = budget.finish(sending, TIMEOUT, timeout());
        assert_eq!(budget.bytes_max, sent / 2, "a heartbeat's timeout says nothing");

        // A quick answer doubles it, a slow one (past half the timeout) shrinks it.
        let before = budget.bytes_max;
        let mut rpc = big.clone();
        let sending = budget.start(&mut rpc, &EncodedEntries::default());
        tokio::time::advance(Duration::from_millis(1)).await;
        let _ = budget.finish(sending, TIMEOUT, Ok(AppendEntriesResponse::Success));
        assert_eq!(budget.bytes_max, before * 2);
        let before = budget.bytes_max;
        let mut rpc = big.clone();
        let sending = budget.start(&mut rpc, &EncodedEntries::default());
        let sent = sending.bytes;
        tokio::time::advance(TIMEOUT).await;
        let _ = budget.finish(sending, TIMEOUT, Ok(AppendEntriesResponse::Success));
        assert_eq!(budget.bytes_max, (sent / 2).max(before / 2));

        let before = budget.bytes_max;
        let mut small = request(vec![entry_of(1, 100)]);
        let sending = budget.start(&mut small, &EncodedEntries::default());
        tokio::time::advance(TIMEOUT).await;
        let _ = budget.finish(sending, TIMEOUT, Ok(AppendEntriesResponse::Success));
        assert_eq!(budget.bytes_max, before, "a small request's time is not its bytes'");

        let many = request((1..=8).map(|index| entry_of(index, 1024)).collect());
        for _ in 0..40 {
            let sending = budget.start(&mut many.clone(), &EncodedEntries::default());
            let _ = budget.finish(sending, TIMEOUT, timeout());
        }
        assert_eq!(budget.bytes_max, APPEND_BYTES_MIN);
    }

    /// With the node's Raft configuration, a chunk but the last may take
    /// `SNAPSHOT_CHUNK_TIMEOUT`, the last also the install of its snapshot's bytes at
    /// `INSTALL_BYTES_PER_MS_MIN`, never beyond openraft's install timeout.
    #[test]
    fn a_snapshot_s_last_chunk_has_time_for_an_install_of_its_size() {
        let config = crate::node::raft_config(&crate::NodeOptions::default()).expect("valid");
        let option = RPCOption::new(config.install_snapshot_timeout());
        let chunk = |offset: u64, done: bool| InstallSnapshotRequest::<TypeConfig> {
            vote: openraft::Vote::new_committed(1, 1),
            meta: crate::types::SnapshotMeta::default(),
            offset,
            data: vec![0; 1_000],
            done,
        };
        assert_eq!(snapshot_chunk_timeout(&chunk(0, false), &option), SNAPSHOT_CHUNK_TIMEOUT);
        let small = snapshot_chunk_timeout(&chunk(0, true), &option);
        assert_eq!(small, SNAPSHOT_CHUNK_TIMEOUT);
        let twenty_mb = snapshot_chunk_timeout(&chunk(20_000_000 - 1_000, true), &option);
        assert_eq!(twenty_mb, SNAPSHOT_CHUNK_TIMEOUT + Duration::from_secs(10));
        let huge = snapshot_chunk_timeout(&chunk(1 << 40, true), &option);
        assert_eq!(huge, crate::INSTALL_SNAPSHOT_TIMEOUT);
    }
}
