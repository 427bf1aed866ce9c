//! When a node snapshots a group (and so may purge its log up to there). A snapshot costs
//! in proportion to the state it encodes, and most of a loaded ledger's state is its
//! windows: the ended holds and op ids it remembers for a minute of batch stamps, which
//! grow with the request rate. At a fixed number of entries between snapshots, a node at
//! 100k lifecycles/s encoded six million remembered entries every five seconds, a fifth of
//! its CPU (docs/benchmarks.md, "Session 18"). So a snapshot is due once both
//! * [`NodeOptions::snapshot_every_entries`](crate::NodeOptions) entries were applied
//!   since the last one (what bounds the log of a lightly loaded group), and
//! * at least as many commands were applied since as the state remembers in its windows:
//!   under a steady load, one snapshot per half-minute of traffic whatever the rate (a
//!   lifecycle is two commands and one ended hold), so its cost per command stays flat,
//!   and a restart replays at most about that half-minute.
//!
//! Each node checks its groups every [`SNAPSHOT_CHECK_INTERVAL`], followers too: every
//! replica compacts its own log.

use crate::node::{Inner, LedgerNode};
use std::sync::Weak;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How often a node checks whether a group's snapshot is due: a due snapshot waits at most
/// this long, a few hundred entries at most under load.
pub const SNAPSHOT_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Whether a snapshot is due, given what was applied since the last one and what the
/// state remembers in its windows (see the module's documentation).
pub(crate) fn snapshot_due(
    entries_since: u64,
    commands_since: u64,
    remembered: u64,
    every_entries: u64,
) -> bool {
    entries_since >= every_entries && commands_since >= remembered
}

/// Runs until the node is dropped or shut down (which aborts the task).
pub(crate) fn spawn(node: Weak<Inner>, group_idx: u32, every_entries: u64) -> JoinHandle<()> {
    LedgerNode::spawn_every(node, SNAPSHOT_CHECK_INTERVAL, move |node| async move {
        let group = node.group_at(group_idx).expect("the task's group exists");
        // Answered at once: the core builds in the background, and ignores a trigger
        // while a build is under way. An error means the core stopped.
        !group.snapshot_due(every_entries) || group.raft().trigger().snapshot().await.is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Due only with both enough entries and as many commands as the windows remember.
    #[test]
    fn a_snapshot_waits_for_its_entries_and_for_traffic_as_large_as_the_windows() {
        assert!(snapshot_due(16, 20, 10, 16));
        assert!(!snapshot_due(15, 20, 10, 16), "too few entries");
        assert!(!snapshot_due(4_096, 9, 10, 16), "less traffic than the windows hold");
        assert!(snapshot_due(16, 16, 0, 16), "empty windows: entries alone");
    }
}
