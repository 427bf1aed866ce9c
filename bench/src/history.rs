//! The request history's write workload (`benches/history.rs`, `bin/history_write.rs`):
//! transactions of settled requests' records, the way a node's writer commits them
//! (`History::insert`, not synced), into a history that already holds two days of the same
//! workload, so that its indexes and aggregates are as deep and as spread as on a node that
//! has been running. `cluster_load`'s shape: [`WORKLOAD_ACCOUNTS`] accounts with one key
//! each; hold ids that lead with their creation millisecond, as the gateway makes them.

use crate::WORKLOAD_ACCOUNTS;
use solrouter_ledger::{AccountId, HoldId, KeyId, PicoUsd, RequestRecord};
use solrouter_raft::{History, HISTORY_RETENTION_DEFAULT};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Records per transaction: the writer's batch at full load (`HISTORY_FLUSH_RECORDS`).
pub const RECORDS_PER_TRANSACTION: u64 = 32_768;
/// Records already in the history before a measurement, over [`PREFILL_SPAN_MS`].
pub const PREFILL_RECORDS: u64 = 400_000;
pub const PREFILL_SPAN_MS: u64 = 48 * 60 * 60 * 1000;
/// The rate the measured transactions' creation times follow (records per second).
const RECORDS_PER_S: u64 = 30_000;

pub type Settled = (AccountId, HoldId, RequestRecord);

/// Record `n`, created at `created_ms`: account `n % WORKLOAD_ACCOUNTS`, its key, a mix
/// of statuses and token counts.
pub fn settled(n: u64, created_ms: u64) -> Settled {
    let account = AccountId(n % WORKLOAD_ACCOUNTS);
    let hold = HoldId(u128::from(created_ms) << 80 | u128::from(n));
    let record = RequestRecord {
        key: Some(KeyId(account.0)),
        model: "openai/gpt-4o-mini".into(),
        provider: "openai".into(),
        prompt_tokens: 1_200 + n % 300,
        completion_tokens: 200 + n % 50,
        latency_ms: 400 + n % 700,
        status: if n.is_multiple_of(50) { 502 } else { 200 },
        streamed: n.is_multiple_of(2),
        created_ms,
        cost: PicoUsd(1_000_000_000 + u128::from(n % 1_000)),
        ttft_ms: Some(120 + n % 90),
        ..RequestRecord::default()
    };
    (account, hold, record)
}

/// The incarnation of the data directory a bench's history stands in.
const BENCH_INCARNATION: u128 = 1;

pub fn now_ms() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock before 1970");
    u64::try_from(since_epoch.as_millis()).expect("clock past u64 ms")
}

/// A history in `dir` holding [`PREFILL_RECORDS`] records of the last two days, synced,
/// and the records that follow them.
pub fn prefilled(dir: &Path) -> (History, Batches) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let path = dir.join("history.redb");
    // One log, of an incarnation of its own, applies the records (see `history_write`).
    let opened = History::open(&path, HISTORY_RETENTION_DEFAULT, BENCH_INCARNATION);
    let history = runtime.block_on(opened).unwrap();
    let now = now_ms();
    let start_ms = now - PREFILL_SPAN_MS;
    let step_ms = PREFILL_SPAN_MS / PREFILL_RECORDS;
    let mut n = 0;
    while n < PREFILL_RECORDS {
        // The last batch stops at the prefill's end (now), not in the future.
        let end = (n + RECORDS_PER_TRANSACTION).min(PREFILL_RECORDS);
        history.insert((n..end).map(|n| settled(n, start_ms + n * step_ms))).unwrap();
        n = end;
    }
    history.sync().unwrap();
    (history, Batches { next: n, created_ms: now, latency_spread_ms: 0 })
}

/// The records after the prefill, settled from its end on at `RECORDS_PER_S` (by their
/// number, not by the clock: a transaction's records follow the previous one's, as on a
/// node that writes 30k records a second, however fast the writer runs), each created
/// when it settles unless [`Batches::with_latency_spread`].
pub struct Batches {
    next: u64,
    created_ms: u64,
    latency_spread_ms: u64,
}

impl Batches {
    /// Each record created up to `ms` before it settles (uniformly, by its number): requests
    /// whose latencies differ settle out of creation order, as a provider's streams do.
    pub fn with_latency_spread(self, ms: u64) -> Batches {
        Batches { latency_spread_ms: ms, ..self }
    }

    /// The next transaction's `len` records.
    pub fn take(&mut self, len: u64) -> Vec<Settled> {
        let first = self.next;
        self.next += len;
        let records = (first..self.next).map(|n| {
            let settled_ms = self.created_ms + (n - first) * 1_000 / RECORDS_PER_S;
            let mixed = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
            settled(n, settled_ms - mixed % (self.latency_spread_ms + 1))
        });
        let records = records.collect();
        self.created_ms += len * 1_000 / RECORDS_PER_S;
        records
    }
}
