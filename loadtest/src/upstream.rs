//! The upstream mock the direct phase measures: one given by URL, or a
//! `solrouter mock-upstream` process started for the run (on a free port, answering any
//! model as `echo`) and killed when dropped.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Longest the mock may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines read from the mock's stdout before its listening line at most.
const START_LINES_MAX: usize = 16;

/// A running `solrouter mock-upstream`.
pub struct MockProcess {
    child: Child,
    /// Its OpenAI-compatible base URL, ending in `/v1`.
    pub base: String,
}

impl MockProcess {
    /// Starts `binary mock-upstream` on a free port of 127.0.0.1.
    pub async fn start(binary: &Path) -> Result<MockProcess> {
        let mut child = Command::new(binary)
            .args(["mock-upstream", "--listen", "127.0.0.1:0", "--echo-any-model"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("the mock's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let base = tokio::time::timeout(START_TIMEOUT, async {
            for _ in 0..START_LINES_MAX {
                let Some(line) = lines.next_line().await? else { break };
                if let Some(url) = line.strip_prefix("listening: ") {
                    return Ok(url.trim().to_owned());
                }
            }
            bail!("the mock upstream printed no listening line")
        })
        .await
        .context("the mock upstream did not start in time")??;
        Ok(MockProcess { child, base })
    }

    /// Kills the mock and waits for it.
    pub async fn stop(mut self) -> Result<()> {
        self.child.kill().await.context("stopping the mock upstream")
    }
}

/// The `solrouter` binary: `given`, or the one next to this executable (both are built
/// into the same `target/<profile>/`).
pub fn find_binary(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_owned());
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    let sibling = exe.with_file_name(format!("solrouter{}", std::env::consts::EXE_SUFFIX));
    if !sibling.is_file() {
        bail!(
            "no {} to start the mock upstream: build it (`cargo build -p solrouter-gateway`), \
             or pass --mock-bin, --upstream URL or --no-direct",
            sibling.display()
        );
    }
    Ok(sibling)
}
