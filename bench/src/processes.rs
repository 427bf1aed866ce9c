//! Ledger nodes as separate processes on 127.0.0.1, for the multi-process benchmarks
//! (`cluster_load`, `cluster_soak`): each node is the `cluster_load` binary re-run as
//! `cluster_load node …` with its own data directory and port, printing [`READY_LINE`]
//! once it serves and stopping when its standard input closes. A node can be SIGKILLed
//! and restarted on its data directory.

use anyhow::Context;
use solrouter_raft::free_local_addr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// What a node process prints once it serves, so the driver connects only then.
pub const READY_LINE: &str = "ready";
/// How long a node process may take to stop after its standard input closes (it shuts its
/// node down first), polled this often; past it the driver kills it and says so.
const STOP_WAIT_ATTEMPTS_MAX: u32 = 3_000;
const STOP_WAIT_INTERVAL: Duration = Duration::from_millis(10);
/// `/proc/<pid>/stat` counts CPU time in clock ticks of `USER_HZ`, 100 on Linux x86-64.
pub const TICKS_PER_S: f64 = 100.0;

/// The node processes of a cluster, their data directories and addresses; node `i + 1`
/// is `children[i]`.
pub struct Processes {
    children: Vec<Child>,
    pub addrs: Vec<String>,
    dirs: Vec<TempDir>,
    exe: PathBuf,
    peers: String,
    groups: u32,
    /// More arguments for every node's command line (`cluster_load node … <node_args>`).
    node_args: Vec<String>,
}

impl Processes {
    /// Starts `nodes` nodes of `groups` groups (the node program `exe` with `node_args`
    /// added, data under `parent`) and returns once each has printed [`READY_LINE`].
    pub fn start(
        exe: &Path,
        nodes: u64,
        groups: u32,
        parent: &Path,
        node_args: &[String],
    ) -> anyhow::Result<Processes> {
        let addrs: Vec<String> = (0..nodes).map(|_| free_local_addr()).collect();
        let peers = (1..).zip(&addrs).map(|(id, addr)| format!("{id}={addr}"));
        let peers = peers.collect::<Vec<_>>().join(",");
        let mut processes = Processes {
            children: Vec::new(),
            addrs,
            dirs: Vec::new(),
            exe: exe.to_owned(),
            peers,
            groups,
            node_args: node_args.to_vec(),
        };
        for _ in 0..nodes {
            let dir = tempfile::Builder::new().prefix("solrouter-bench-").tempdir_in(parent)?;
            processes.dirs.push(dir);
        }
        for idx in 0..processes.dirs.len() {
            let child = processes.spawn(idx)?;
            processes.children.push(child);
        }
        for child in &mut processes.children {
            wait_ready(child)?;
        }
        Ok(processes)
    }

    fn spawn(&self, idx: usize) -> anyhow::Result<Child> {
        Command::new(&self.exe)
            .args(["node", "--id", &(idx + 1).to_string(), "--peers", &self.peers])
            .args(["--groups", &self.groups.to_string()])
            .arg("--dir")
            .arg(self.dirs[idx].path())
            .args(&self.node_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a node process")
    }

    /// SIGKILLs node `idx + 1` and starts it again on its data directory; returns once it
    /// serves.
    pub fn kill_and_restart(&mut self, idx: usize) -> anyhow::Result<()> {
        self.children[idx].kill()?;
        self.children[idx].wait()?;
        let mut child = self.spawn(idx)?;
        wait_ready(&mut child)?;
        self.children[idx] = child;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.children.len()
    }

    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// CPU time of every node process so far, in clock ticks.
    pub fn cpu_ticks(&self) -> anyhow::Result<u64> {
        let per_child = self
            .children
            .iter()
            .map(|child| cpu_ticks(&PathBuf::from(format!("/proc/{}/stat", child.id()))));
        per_child.sum()
    }

    /// Resident memory of node `idx + 1`, in bytes.
    pub fn rss_bytes(&self, idx: usize) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.children[idx].id()))?;
        let line = status.lines().find(|line| line.starts_with("VmRSS:")).context("no VmRSS")?;
        let kib: u64 = line.split_whitespace().nth(1).context("malformed VmRSS")?.parse()?;
        Ok(kib * 1024)
    }

    /// Size of the file `name` in node `idx + 1`'s data directory (0 if there is none).
    pub fn file_bytes(&self, idx: usize, name: &str) -> anyhow::Result<u64> {
        match std::fs::metadata(self.dirs[idx].path().join(name)) {
            Ok(meta) => Ok(meta.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Bytes in node `idx + 1`'s data directory.
    pub fn disk_bytes(&self, idx: usize) -> anyhow::Result<u64> {
        dir_bytes(self.dirs[idx].path())
    }

    /// Node `idx + 1`'s data directory (removed when `self` is dropped).
    pub fn data_dir(&self, idx: usize) -> &Path {
        self.dirs[idx].path()
    }

    /// Closes every node's standard input (its signal to shut down) and waits for all of
    /// them to exit; kills one that does not within the bound, and reports it. Their data
    /// directories stay until `self` is dropped.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        for child in &mut self.children {
            drop(child.stdin.take());
        }
        let mut stuck = Vec::new();
        for child in &mut self.children {
            if !wait_exit(child)? {
                child.kill()?;
                child.wait()?;
                stuck.push(child.id());
            }
        }
        anyhow::ensure!(stuck.is_empty(), "node processes {stuck:?} did not stop and were killed");
        Ok(())
    }
}

fn wait_ready(child: &mut Child) -> anyhow::Result<()> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    anyhow::ensure!(line.trim() == READY_LINE, "a node process failed to start");
    Ok(())
}

/// Whether `child` exited within the stop bound.
fn wait_exit(child: &mut Child) -> anyhow::Result<bool> {
    for _ in 0..STOP_WAIT_ATTEMPTS_MAX {
        if child.try_wait()?.is_some() {
            return Ok(true);
        }
        std::thread::sleep(STOP_WAIT_INTERVAL);
    }
    Ok(false)
}

/// User plus system CPU time of a process from its `/proc/<pid>/stat`, in clock ticks.
pub fn cpu_ticks(stat: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(stat).with_context(|| format!("reading {stat:?}"))?;
    // The command name (field 2) may hold spaces; fields after it are plain numbers.
    let after_name = &text[text.rfind(')').context("malformed stat")? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

/// Apparent size of the files under `dir`, recursively.
fn dir_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() { dir_bytes(&entry.path())? } else { meta.len() };
    }
    Ok(total)
}
