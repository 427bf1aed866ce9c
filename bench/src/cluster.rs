//! Ledger nodes on this machine for benchmarks: one node, or a cluster of several nodes in
//! this process replicating over real gRPC on 127.0.0.1, each in its own data directory.

use anyhow::Context;
use solrouter_raft::{
    free_local_addr, LedgerNode, NodeOptions, NodeStats, WalStore, LOG_DIR_NAME, SNAPSHOT_FILE_NAME,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use tempfile::TempDir;

/// How long [`Cluster::shutdown`] waits for every node to close its storage, polling this
/// often. A snapshot build still running at shutdown holds the database open until it
/// ends; that takes seconds at most, so a minute means the storage is stuck.
const CLOSE_WAIT_ATTEMPTS_MAX: u32 = 6_000;
const CLOSE_WAIT_INTERVAL: Duration = Duration::from_millis(10);

/// Nodes with ids `1..=n`, `nodes()[i]` being node `i + 1`. The data directories are
/// removed when the cluster is dropped.
pub struct Cluster {
    nodes: Vec<LedgerNode>,
    dirs: Vec<TempDir>,
}

impl Cluster {
    /// One node leading one group, or `n_nodes` nodes hosting `n_groups` groups. A single
    /// node leads on return; a cluster may still be electing (submits then fail as
    /// retryable, which [`crate::load::Load`] follows).
    pub async fn open(
        n_nodes: u64,
        n_groups: u32,
        base_dir: &Path,
        options: &NodeOptions,
    ) -> anyhow::Result<Cluster> {
        let mut dirs = Vec::new();
        for _ in 0..n_nodes {
            let dir = tempfile::Builder::new().prefix("solrouter-bench-").tempdir_in(base_dir);
            dirs.push(dir.with_context(|| format!("creating a data directory in {base_dir:?}"))?);
        }
        let mut nodes = Vec::new();
        if n_nodes == 1 && n_groups == 1 {
            nodes.push(LedgerNode::open_single_with(dirs[0].path(), options).await?);
        } else {
            let peers: BTreeMap<_, _> = (1..=n_nodes).map(|id| (id, free_local_addr())).collect();
            for (id, dir) in (1..=n_nodes).zip(&dirs) {
                nodes.push(LedgerNode::open_with(id, &peers, dir.path(), n_groups, options).await?);
            }
        }
        Ok(Cluster { nodes, dirs })
    }

    pub fn nodes(&self) -> &[LedgerNode] {
        &self.nodes
    }

    /// The data directory of `nodes()[idx]`.
    pub fn dir(&self, idx: usize) -> &Path {
        self.dirs[idx].path()
    }

    /// Batches and commands proposed, summed over every group of every node.
    pub fn proposed(&self) -> (u64, u64) {
        proposed(&self.nodes)
    }

    /// Shuts every node down and returns once each has closed its database, so the next
    /// cluster's figures do not include an old one's last writes.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        for node in &self.nodes {
            node.shutdown().await?;
        }
        for dir in &self.dirs {
            let log = dir.path().join(LOG_DIR_NAME);
            wait_closed(&log, || match WalStore::open(&log) {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
                Err(e) => Err(e.into()),
            })
            .await?;
            let snapshots = dir.path().join(SNAPSHOT_FILE_NAME);
            wait_closed(&snapshots, || match redb::Database::open(&snapshots) {
                Ok(_) => Ok(true),
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => Ok(false),
                Err(e) => Err(e.into()),
            })
            .await?;
        }
        Ok(())
    }
}

/// Waits until a store of the node can be opened here (`open` says `Ok(true)`), i.e. until
/// the node closed it (both redb and the log store refuse a second open while one is).
async fn wait_closed(path: &Path, open: impl Fn() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    for _ in 0..CLOSE_WAIT_ATTEMPTS_MAX {
        if open().with_context(|| format!("opening {path:?}"))? {
            return Ok(());
        }
        tokio::time::sleep(CLOSE_WAIT_INTERVAL).await
    }
    let waited = CLOSE_WAIT_INTERVAL * CLOSE_WAIT_ATTEMPTS_MAX;
    anyhow::bail!("{path:?} still open {waited:?} after its node shut down")
}

/// Batches and commands proposed, summed over every group of `nodes`.
pub fn proposed(nodes: &[LedgerNode]) -> (u64, u64) {
    let all_stats = nodes
        .iter()
        .flat_map(|node| (0..node.n_groups()).map(|group_idx| node.group_stats(group_idx)));
    all_stats.fold((0, 0), |(n_batches, n_commands), stats: NodeStats| {
        (n_batches + stats.n_batches_proposed, n_commands + stats.n_commands_proposed)
    })
}
