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
//!
//! Replicas take turns. Every replica applies the same commands, so by the counts alone all
//! of a group's replicas would snapshot within one check of each other: three encodes of
//! the same state at once and three saves of tens of megabytes at once, and the group's
//! commits waited for a disk busy with all of them (three nodes at 30,000 lifecycles/s:
//! lifecycles late by up to 0.9 s for the 2 s of each 80 MB snapshot, docs/benchmarks.md,
//! "Session 23"). So a due snapshot also waits for its replica's turn: wall-clock
//! [`SNAPSHOT_TURN`]s go round the group's members in the order of their ids (shifted by
//! the group's index, so one node's groups do not all come at once), and a replica starts
//! a snapshot only in the first third of its own turn. A quorum of the others then commits
//! while one replica snapshots. Clocks a little apart only shorten the gap between turns.

use crate::group::{wall_clock_ms, Group};
use crate::node::{Inner, LedgerNode};
use crate::types::NodeId;
use std::sync::Weak;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How often a node checks whether a group's snapshot is due: a due snapshot waits at most
/// this long, a few hundred entries at most under load.
pub const SNAPSHOT_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// How long each replica's snapshot turn lasts (see the module's documentation). A
/// snapshot starts in a turn's first third, so the two thirds after it leave an 80 MB
/// state's encode and save (about 2 s on a 2-core machine under load) room to end before
/// the next replica's turn. A due snapshot waits at most one round of turns.
pub const SNAPSHOT_TURN: Duration = Duration::from_secs(3);

/// Whether the replica at `position` among a group's `n_members` may start a snapshot at
/// `now_ms` (since the Unix epoch): in the first third of its turn, or at any time if it
/// is the only one.
pub(crate) fn in_turn(now_ms: u64, position: u64, n_members: u64) -> bool {
    if n_members <= 1 {
        return true;
    }
    let turn_ms = SNAPSHOT_TURN.as_millis() as u64;
    let in_round_ms = now_ms % (turn_ms * n_members);
    in_round_ms / turn_ms == position % n_members && in_round_ms % turn_ms < turn_ms / 3
}

/// Node `node_id`'s turn among the members of `group` (the node's group `group_idx`), and
/// how many turns a round has: its place by id, shifted by the group's index.
pub(crate) fn turn_of(group: &Group, node_id: NodeId, group_idx: u32) -> (u64, u64) {
    let (position, n_members) = group.position_of(node_id);
    ((position + u64::from(group_idx)) % n_members, n_members)
}

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
        let (turn, n_members) = turn_of(group, node.id(), group_idx);
        if !in_turn(wall_clock_ms(), turn, n_members) || !group.snapshot_due(every_entries) {
            return true;
        }
        // Answered at once: the core builds in the background, and ignores a trigger
        // while a build is under way. An error means the core stopped.
        group.raft().trigger().snapshot().await.is_ok()
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

    /// Three members' turns go round in order, each open for its first third; a lone
    /// member's is always open.
    #[test]
    fn replicas_take_turns_and_start_only_early_in_their_own() {
        let turn = SNAPSHOT_TURN.as_millis() as u64;
        let open_to = |ms: u64| (0..3).filter(|&p| in_turn(ms, p, 3)).collect::<Vec<_>>();
        let round = 3 * turn * 1_000_000;
        assert_eq!(open_to(round), [0]);
        assert_eq!(open_to(round + turn / 3 - 1), [0]);
        assert_eq!(open_to(round + turn / 3), [] as [u64; 0], "late in a turn");
        assert_eq!(open_to(round + turn), [1]);
        assert_eq!(open_to(round + 2 * turn + 1), [2]);
        assert_eq!(open_to(round + 3 * turn), [0]);
        assert!(in_turn(round + 2 * turn, 5, 3), "positions wrap round");
        assert!(in_turn(round + turn / 2, 0, 1));
    }
}
