//! Replication of the ledger (DESIGN.md §2): a [`LedgerNode`] runs the `solrouter-ledger`
//! state machine behind openraft, with the Raft log, vote and snapshots in sled and the
//! ledger itself in memory.
//!
//! It owns the group commit (many submitted commands become one `Batch`, one Raft entry),
//! the batch's time stamp (the leader's clock; the ledger never reads one), durability
//! (an append is acknowledged only after sled flushed it) and log compaction (snapshots,
//! purge). It must never interpret money: outcomes come from `Ledger::apply` unchanged.
//! It is the only crate that knows openraft types; none may appear in its public API.
#![forbid(unsafe_code)]

mod error;
mod log_store;
mod network;
mod node;
mod state_machine;
mod types;

pub use error::LedgerError;
pub use node::{LedgerNode, NodeOptions, NodeStats};

use solrouter_ledger::BATCH_COMMANDS_MAX;
use std::time::Duration;

/// Capacity of the queue in front of the batcher: one full batch waiting while another is
/// being committed. Beyond it `submit` waits (backpressure) instead of queueing unboundedly.
pub const SUBMIT_QUEUE_MAX: usize = 2 * BATCH_COMMANDS_MAX;
/// Longest `submit` waits for an outcome. Far above a commit's latency (one fsync locally,
/// one round trip plus fsync in a cluster) and above an election, so it fires only when the
/// group is really stuck; the caller then retries with the same op id.
pub const SUBMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Entries (batches) between snapshots. At the design load (100k ops/s in batches of about
/// a thousand, ~100 entries/s) that is a snapshot every ~40 s, and a restart replays at most
/// this many entries.
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 4096;
/// Entries kept in the log behind a snapshot, so a briefly lagging follower catches up from
/// the log instead of receiving a whole snapshot.
pub const ENTRIES_KEPT_AFTER_SNAPSHOT: u64 = 1024;
/// Leader heartbeat period; an election starts after a random timeout in
/// [`ELECTION_TIMEOUT_MIN`, `ELECTION_TIMEOUT_MAX`], several heartbeats long so one lost
/// heartbeat does not depose a leader.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(50);
pub const ELECTION_TIMEOUT_MIN: Duration = Duration::from_millis(150);
pub const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(300);
/// How long opening a node waits to lead: many election timeouts.
pub const LEADER_WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// sled's page cache. The log is written once and read back only for replication and
/// replay, so a modest cache suffices; the ledger lives in its own memory.
pub const SLED_CACHE_BYTES: u64 = 256 * 1024 * 1024;
/// Opening a data directory still locked by a node of this process that is shutting down
/// is retried this many times, this far apart (5 s in all).
pub const OPEN_LOCK_ATTEMPTS_MAX: u32 = 100;
pub const OPEN_LOCK_RETRY_INTERVAL: Duration = Duration::from_millis(50);

const _: () = assert!(SUBMIT_QUEUE_MAX >= BATCH_COMMANDS_MAX);
const _: () = assert!(HEARTBEAT_INTERVAL.as_millis() * 3 <= ELECTION_TIMEOUT_MIN.as_millis());
const _: () = assert!(ELECTION_TIMEOUT_MIN.as_millis() < ELECTION_TIMEOUT_MAX.as_millis());
