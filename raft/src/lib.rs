//! Replication of the ledger (DESIGN.md §2): a [`LedgerNode`] runs the `solrouter-ledger`
//! state machine behind openraft, with the Raft log and vote in a log store of its own
//! (`wal.rs`), snapshots in redb and the ledger itself in memory. A node hosts a replica of each of N Raft groups; accounts hash
//! into [`SLOTS`] slots and slots map to groups. Nodes talk Raft over gRPC (tonic).
//!
//! It owns the group commit (many submitted commands become one `Batch`, one Raft entry),
//! the batch's time stamp (the leader's clock; the ledger never reads one), durability
//! (an append is acknowledged only after it is `fdatasync`ed) and log compaction (snapshots,
//! purge). It must never interpret money: outcomes come from `Ledger::apply` unchanged.
//! It is the only crate that knows openraft types; none may appear in its public API.
//! No `unsafe` but one audited system call, `write_behind.rs`'s `sync_file_range` (a
//! measured need: it halved three replicas' tail; never relied on for durability).
#![deny(unsafe_code)]

mod backfill;
mod call_stream;
mod client;
mod codec;
mod compaction;
mod encoded;
mod error;
mod expiry;
mod files;
mod founding;
mod group;
mod grpc;
mod grpc_network;
mod history;
mod history_codec;
mod incarnation;
mod kv;
mod leadership;
mod ledger_clock;
mod log_store;
mod membership;
mod network;
mod node;
mod ports;
mod reads;
mod service;
#[cfg(test)]
mod sim;
mod sizing;
mod state_machine;
mod tls;
mod types;
mod wal;
mod wire;
mod write_behind;

pub use backfill::{BACKFILL_RETRY_INTERVAL, BACKFILL_RETRY_INTERVAL_MAX};
pub use client::{
    LedgerClient, CLIENT_ADDRESSES_MAX, CLIENT_BACKOFF_FIRST, CLIENT_BACKOFF_MAX,
    CLIENT_BATCH_COMMANDS_MAX, CLIENT_CALL_DEADLINE, CLIENT_CONNECT_TIMEOUT, CLIENT_QUEUE_MAX,
    CLIENT_RPCS_IN_FLIGHT_MAX, CLIENT_RPC_TIMEOUT, MEMBERSHIP_CALL_DEADLINE,
    MEMBERSHIP_RPC_TIMEOUT,
};
pub use codec::CodecError;
pub use compaction::SNAPSHOT_CHECK_INTERVAL;
pub use error::LedgerError;
pub use expiry::EXPIRY_CHECK_INTERVAL;
pub use files::write_durably;
pub use founding::{
    FirstLeaders, FOUNDER_IDENTIFY_TIMEOUT, FOUNDING_RETRY_INTERVAL, FOUND_GROUP_TIMEOUT,
};
pub use history::{
    History, HistoryCursor, HistoryPage, HistoryQuery, HistoryStats, Usage, UsageQuery, UsageRow,
    HISTORY_EXPIRE_INTERVAL, HISTORY_EXPORT_PAGE_MAX, HISTORY_FILE, HISTORY_PAGE_MAX,
    HISTORY_RETENTION_DEFAULT, HISTORY_SCAN_MAX,
};
pub use kv::IdleWrite;
/// The storage interface and its redb engine, public for the log store bake-off
/// (`bench/src/bin/log_bakeoff.rs`), which drives every candidate through it.
pub use kv::{
    Durability, Hurry, KvBatch, KvPair, KvTree, MakeWrites, Pace, PutWrite, RedbStore, RedbTree,
    REDB_CACHE_BYTES, REDB_SNAPSHOT_CACHE_BYTES,
};
pub use leadership::{HAND_OVER_BACKOFF, HAND_OVER_TIMEOUT, LEADER_BALANCE_INTERVAL};
pub use membership::{IDENTIFY_TIMEOUT, LEARNER_CATCH_UP_TIMEOUT, VOTERS_REACHABLE_TIMEOUT};
pub use node::{
    group_of_account, group_of_slot, slot_of, ClusterConfig, ClusterStart, LedgerNode, NodeOptions,
    NodeStats,
};
pub use ports::{free_local_addr, free_local_port};
pub use reads::{LedgerApi, LedgerHandle};
pub use state_machine::encode_snapshot;
#[cfg(any(test, feature = "test-support"))]
pub use state_machine::snapshot_stored_whole;
pub use tls::{
    write_dev_ca, TlsConfig, DEV_CA_CERT, DEV_CLIENT_CERT, DEV_CLIENT_KEY, DEV_LEDGER_CERT,
    DEV_LEDGER_KEY,
};
pub use wal::{WalStore, WalTree};
pub use wire::{Consistency, Topology};

use solrouter_ledger::{BATCH_COMMANDS_MAX, NAME_BYTES_MAX};
use std::time::Duration;

/// Capacity of the queue in front of the batcher: one full batch waiting while another is
/// being committed. Beyond it `submit` waits (backpressure) instead of queueing unboundedly.
pub const SUBMIT_QUEUE_MAX: usize = 2 * BATCH_COMMANDS_MAX;
/// Entries (batches) a group's leader has proposed and not yet seen answered: the next
/// batch is proposed while earlier ones replicate, so a commit's round trip and fsync no
/// longer bound a group to one batch per commit. Beyond it submissions queue (and so
/// batch up) behind the proposals in flight.
pub const PROPOSALS_IN_FLIGHT_MAX: usize = 4;
/// Fewest queued commands that are proposed as an entry of their own while another entry
/// is in flight; fewer wait for the group's proposals to be answered (and so join a
/// larger batch). An entry has a fixed cost (a log write and `fdatasync` on every replica,
/// an AppendEntries round, a history write) far above a command's: with every slot open
/// to a batch of one or two, a CPU-bound 3-node cluster proposed 2.2 commands per entry
/// and spent ~1 ms of the leader's CPU on each (docs/benchmarks.md, "Batches worth their
/// entry"). A lone submission on an idle group is still proposed at once.
pub const PIPELINED_BATCH_MIN: usize = 32;
/// Longest `submit` waits for an outcome. Far above a commit's latency (one fsync locally,
/// one round trip plus fsync in a cluster) and above an election, so it fires only when the
/// group is really stuck; the caller then retries with the same op id.
pub const SUBMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Fewest entries (batches) between snapshots; a snapshot also waits for as many commands
/// as the state's windows remember, about half a minute of steady traffic
/// (`compaction.rs`). At the design load (100k ops/s in batches of about a thousand, ~100
/// entries/s) the entries come every ~40 s, and a restart replays at most the larger of
/// the two.
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
/// The directory, in a node's data directory, of its log store ([`WalStore`]): log, vote
/// and identity of every group.
pub const LOG_DIR_NAME: &str = "log";
/// The redb database that held the log before [`LOG_DIR_NAME`]: moved into the log store
/// on the first open, then renamed to [`LEGACY_LOG_MOVED_NAME`].
pub const LEGACY_LOG_FILE_NAME: &str = "ledger.redb";
pub const LEGACY_LOG_MOVED_NAME: &str = "ledger.redb.moved";
/// The file, beside [`LOG_DIR_NAME`], of the groups' snapshots. A database of its own, so
/// that a snapshot's write and sync (tens of MB, hundreds of ms) never hold the log's
/// writer, which every append waits on.
pub const SNAPSHOT_FILE_NAME: &str = "snapshots.redb";
/// The file, in a data directory whose log lives elsewhere
/// ([`NodeOptions::with_log_dir`]), that names the log's directory, so that the node is
/// never opened with an empty log beside a snapshot and history that need its entries.
pub(crate) const LOG_LOCATION_FILE_NAME: &str = "log-location";
/// Opening a data directory still open in a node of this process that is shutting down
/// is retried this many times, this far apart (5 s in all).
pub const OPEN_LOCK_ATTEMPTS_MAX: u32 = 100;
pub const OPEN_LOCK_RETRY_INTERVAL: Duration = Duration::from_millis(50);

/// Fixed slot space accounts hash into (`slot_of`); slots map to groups. Far more slots
/// than groups will ever exist, so shards can be split and moved slot by slot.
pub const SLOTS: u32 = 1024;
/// Upper bound of one encoded command: the largest, a settle, carries two names of at most
/// `NAME_BYTES_MAX` plus fixed-size fields well under 512 bytes.
pub const COMMAND_BYTES_MAX: usize = 2 * NAME_BYTES_MAX + 512;
/// Upper bound of one Raft entry (one full batch).
pub const ENTRY_BYTES_MAX: usize = BATCH_COMMANDS_MAX * COMMAND_BYTES_MAX;
/// Entries per AppendEntries RPC, so that one RPC stays under `RPC_BYTES_MAX`.
pub const APPEND_ENTRIES_MAX: u64 = 8;
/// Largest gRPC message between ledger nodes (tonic's default of 4 MiB is below one full
/// batch).
pub const RPC_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Fastest a node's snapshot store hands the writes of a snapshot the node built to the
/// disk (`write_behind.rs`; one received from a leader is saved unpaced, as its node
/// applies nothing until then, and so is the rest of a build's save it finds under way).
/// A build is saved in the background, but the disk is shared with the log, and on a
/// disk with a volatile write cache every log sync (each commit waits for one) also
/// flushes what the snapshot wrote before it. Unpaced, a loaded ledger's snapshot (150 MB at
/// 50,000 lifecycles/s) reached the disk in ~0.2 s and the commits of that moment waited
/// behind it: three replicas on one disk at 50,000/s, lifecycle p999 40.5 ms and max 56 ms
/// on average over eight runs, against 27.2 and 37.4 at this pace, interleaved (p99 16.1
/// against 14.5; docs/benchmarks.md, "Session 58"). 16 MiB/s was no better than unpaced. A
/// 150-MB snapshot then takes ~5 s to save, well inside a turn's round
/// (`compaction.rs`) and [`INSTALL_SNAPSHOT_TIMEOUT`].
pub const SNAPSHOT_WRITE_BYTES_PER_SECOND: u64 = 32 << 20;
/// Snapshot bytes per InstallSnapshot RPC.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 4 * 1024 * 1024;
/// How long one snapshot chunk but the last may take to cross: 4 MiB at under 1 MB/s.
pub const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the last chunk's reply may take: the follower answers it only once it has
/// decoded, saved and flushed the whole snapshot, seconds for a large ledger
/// (`docs/storage.md`). openraft's default, 200 ms, timed every large install out.
pub const INSTALL_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connecting to a peer may take before the RPC counts as unreachable.
pub const RPC_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a TLS handshake may take, on either side, before the connection is dropped: a
/// peer that connects and stalls cannot hold a server's connection slot for longer.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

const _: () = assert!(SUBMIT_QUEUE_MAX >= BATCH_COMMANDS_MAX);
const _: () = assert!(PIPELINED_BATCH_MIN >= 1 && PIPELINED_BATCH_MIN <= BATCH_COMMANDS_MAX);
const _: () = assert!(NAME_BYTES_MAX * 2 + 256 <= COMMAND_BYTES_MAX);
// The envelope and the codec's framing fit in the slack left by the entries.
const _: () = assert!(APPEND_ENTRIES_MAX as usize * ENTRY_BYTES_MAX <= RPC_BYTES_MAX * 3 / 4);
const _: () = assert!(SNAPSHOT_CHUNK_BYTES as usize * 2 <= RPC_BYTES_MAX);
const _: () = assert!(SNAPSHOT_CHUNK_TIMEOUT.as_millis() <= INSTALL_SNAPSHOT_TIMEOUT.as_millis());
const _: () = assert!(HEARTBEAT_INTERVAL.as_millis() * 3 <= ELECTION_TIMEOUT_MIN.as_millis());
const _: () = assert!(ELECTION_TIMEOUT_MIN.as_millis() < ELECTION_TIMEOUT_MAX.as_millis());
