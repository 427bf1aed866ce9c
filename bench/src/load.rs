//! Lifecycles driven through ledger nodes by concurrent submitters, the way a gateway's
//! request tasks drive them: each submitter reserves, waits for the outcome, settles (or
//! releases), waits, and starts its next lifecycle. The nodes are either in this process
//! or reached over gRPC through the gateway-facing `LedgerClient`. The number of submitters is what sets
//! the group-commit batch size: everything submitted while a batch is being committed
//! goes into the next one. An open-loop run ([`Load::run_at_rate`]) instead starts
//! lifecycles at a fixed rate and times each from when it was due.

use crate::cluster::proposed;
use crate::{funding_commands, lifecycle_commands};
use solrouter_ledger::{Command, Outcome};
use solrouter_raft::{LedgerApi, LedgerClient, LedgerError, LedgerNode};
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{self, error::TrySendError};

/// Bits of sub-bucket index per power of two in [`Histogram`]: 64 sub-buckets, so a
/// recorded latency is reported within 1/64 (1.6 %) of its true value.
const SUB_BUCKET_BITS: u32 = 6;
const SUB_BUCKETS: usize = 1 << SUB_BUCKET_BITS;
/// Buckets covering every `u64` of microseconds: one linear range, then one per magnitude.
const BUCKETS: usize = (64 - SUB_BUCKET_BITS as usize + 1) * SUB_BUCKETS;
/// Attempts at one command while its group has no reachable leader (an election, a node
/// still starting): every `RETRY_INTERVAL`, 10 s in all, room for several elections.
/// Following a `NotLeader` hint also counts as an attempt.
const SUBMIT_ATTEMPTS_MAX: u32 = 1_000;
const RETRY_INTERVAL: Duration = Duration::from_millis(10);
/// How long a command through `LedgerClient` is retried after the client's own deadline.
const CLIENT_RETRY_FOR: Duration = Duration::from_secs(60);
/// Lifecycles an open-loop run keeps in flight at most: beyond the ~4,096 that saturate a
/// node, so that it measures queueing in the ledger, yet a bound on the driver's memory
/// when the ledger stops answering.
pub const OPEN_LOOP_IN_FLIGHT_MAX: usize = 65_536;
const NANOS_PER_S: u128 = 1_000_000_000;

/// Lifecycle latencies in microseconds, in a fixed-size log-linear histogram so that a
/// run of millions of lifecycles neither grows memory (the soak reports RSS) nor sorts.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    n_recorded: u64,
    sum_us: u128,
    max_us: u64,
}

/// Where a load sends its commands.
#[derive(Clone)]
pub enum Target {
    /// Nodes in this process, `nodes[i]` being node id `i + 1` (as
    /// [`crate::cluster::Cluster`] opens them); submits go to each group's leader.
    Nodes(Arc<[LedgerNode]>),
    /// A cluster reached over gRPC; the client routes, batches and retries by itself.
    Client(LedgerClient),
}

/// What one [`Load::run`] did.
pub struct LoadReport {
    pub elapsed: Duration,
    pub latencies: Histogram,
    /// Lifecycles whose reserve or settle the ledger rejected; a sound workload has none.
    pub n_rejected: u64,
    /// Submits repeated after a `NotLeader` answer or while a group had no leader (only
    /// counted for [`Target::Nodes`]; the client retries on its own).
    pub n_retries: u64,
    /// Open loop only: lifecycles the client gave up on (no outcome within its deadline,
    /// or no leader), counted instead of ending the run; not in `latencies`.
    pub n_unanswered: u64,
    /// Batches (Raft entries) and commands proposed over the run, summed over the nodes'
    /// counters; unknown for [`Target::Client`], whose nodes are in other processes.
    pub proposed: Option<(u64, u64)>,
    /// With [`Load::with_windows`]: the latencies again, by window of the run in which each
    /// lifecycle started (or was due), the first from the run's start; empty otherwise.
    pub windows: Vec<Histogram>,
}

/// Generates lifecycles with ids unique across every run on the same target.
pub struct Load {
    target: Target,
    release_one_in: Option<NonZeroU64>,
    next_lifecycle: u64,
    n_completed: Arc<AtomicU64>,
    window: Option<Duration>,
}

/// Creates and funds the workload accounts through `target`, a task per account.
pub async fn fund(target: &Target) -> Result<(), LedgerError> {
    let mut tasks = tokio::task::JoinSet::new();
    for [create, credit, create_key] in funding_commands() {
        let mut route = Route::new(target);
        tasks.spawn(async move {
            expect_applied(route.submit(create.clone()).await?.0, &create);
            expect_applied(route.submit(credit.clone()).await?.0, &credit);
            expect_applied(route.submit(create_key.clone()).await?.0, &create_key);
            Ok::<(), LedgerError>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("funding task panicked")?;
    }
    Ok(())
}

/// Funding runs before any measurement, on fresh nodes: a rejection there is a bug in the
/// workload, and measuring on top of it would be meaningless.
fn expect_applied(outcome: Outcome, command: &Command) {
    if let Err(rejection) = outcome {
        panic!("workload setup rejected {command:?}: {rejection}");
    }
}

impl Target {
    pub fn nodes(nodes: &[LedgerNode]) -> Target {
        Target::Nodes(nodes.into())
    }

    fn proposed(&self) -> Option<(u64, u64)> {
        match self {
            Target::Nodes(nodes) => Some(proposed(nodes)),
            Target::Client(_) => None,
        }
    }
}

impl Load {
    /// `release_one_in`: every n-th lifecycle ends in a release instead of a settle.
    pub fn new(target: Target, release_one_in: Option<NonZeroU64>) -> Load {
        Load {
            target,
            release_one_in,
            next_lifecycle: 0,
            n_completed: Arc::default(),
            window: None,
        }
    }

    /// Also reports each run's latencies window by window (`LoadReport::windows`): whether
    /// a tail is a few stalls or the whole distribution.
    pub fn with_windows(mut self, window: Duration) -> Load {
        assert!(!window.is_zero(), "a window must have a length");
        self.window = Some(window);
        self
    }

    /// Lifecycles completed by every run so far, updated live (for progress reports).
    pub fn completed(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.n_completed)
    }

    /// Runs `n_lifecycles` lifecycles spread over `n_submitters` concurrent submitters, or
    /// fewer if `duration_max` passes first (each submitter finishes its lifecycle in hand).
    pub async fn run(
        &mut self,
        n_submitters: usize,
        n_lifecycles: u64,
        duration_max: Option<Duration>,
    ) -> Result<LoadReport, LedgerError> {
        let first = self.next_lifecycle;
        let end = first.saturating_add(n_lifecycles);
        let next = Arc::new(AtomicU64::new(first));
        let proposed_before = self.target.proposed();
        let started = Instant::now();
        let deadline = duration_max.map(|duration| started + duration);
        // One tally for all: a histogram per submitter would be a cache miss per lifecycle
        // (thousands of 30-KB arrays), CPU the measured ledger shares.
        let tally = Arc::new(Mutex::new(Tally::new(self.window.map(|width| (started, width)))));
        let mut submitters = tokio::task::JoinSet::new();
        for _ in 0..n_submitters {
            let submitter = Submitter {
                route: Route::new(&self.target),
                release_one_in: self.release_one_in,
                next: Arc::clone(&next),
                end,
                deadline,
                n_completed: Arc::clone(&self.n_completed),
                tally: Arc::clone(&tally),
            };
            submitters.spawn(submitter.run());
        }
        while let Some(joined) = submitters.join_next().await {
            joined.expect("submitter panicked")?;
        }
        let total = std::mem::take(&mut *tally.lock().expect("tally poisoned"));
        let elapsed = started.elapsed();
        // Numbers drawn past `end` or the deadline were never submitted; skipping them
        // keeps ids unique without coordination.
        self.next_lifecycle = next.load(Ordering::Relaxed).max(first);
        Ok(self.report(elapsed, total, proposed_before))
    }

    /// What a run that took `elapsed` did, `proposed_before` being the target's proposal
    /// counters at its start.
    fn report(
        &self,
        elapsed: Duration,
        total: Tally,
        proposed_before: Option<(u64, u64)>,
    ) -> LoadReport {
        let proposed_after = self.target.proposed();
        LoadReport {
            elapsed,
            latencies: total.latencies,
            windows: total.windows.map(|windows| windows.histograms).unwrap_or_default(),
            n_rejected: total.n_rejected,
            n_retries: total.n_retries,
            n_unanswered: total.n_unanswered,
            proposed: proposed_before
                .zip(proposed_after)
                .map(|(before, after)| (after.0 - before.0, after.1 - before.1)),
        }
    }

    /// Starts lifecycles at a constant `per_s` for `duration` (open loop), whatever the
    /// ledger's pace, and times each from when it was due, not from when it began: a
    /// ledger that falls behind shows in the latencies instead of slowing the arrivals
    /// (no coordinated omission). A lifecycle the client gives up on (past a rate the
    /// ledger can take) is counted, not fatal.
    ///
    /// Arrivals go to a pool of workers, one more whenever an arrival finds none free, at
    /// most [`OPEN_LOOP_IN_FLIGHT_MAX`]; past that, arrivals wait in a queue, and the wait
    /// counts in their latency. A task per lifecycle cost this process ~12 µs of CPU a
    /// lifecycle at 50,000/s, two fifths of it the kernel zeroing pages for tasks whose
    /// memory the allocator had given back (docs/benchmarks.md, "Session 42"): CPU the
    /// measured ledger shares.
    pub async fn run_at_rate(
        &mut self,
        per_s: NonZeroU64,
        duration: Duration,
    ) -> Result<LoadReport, LedgerError> {
        let first = self.next_lifecycle;
        let n_due = u64::try_from(u128::from(per_s.get()) * duration.as_nanos() / NANOS_PER_S)
            .expect("a run of fewer than 2^64 lifecycles");
        let proposed_before = self.target.proposed();
        let (arrivals, arrivals_rx) = mpsc::channel(OPEN_LOOP_IN_FLIGHT_MAX);
        let arrivals_rx = Arc::new(tokio::sync::Mutex::new(arrivals_rx));
        let idle = Arc::new(AtomicUsize::new(0));
        let mut workers = tokio::task::JoinSet::new();
        let started = Instant::now();
        let tally = Arc::new(Mutex::new(Tally::new(self.window.map(|width| (started, width)))));
        for i in 0..n_due {
            let due = started + arrival_offset(i, per_s);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
            // A worker ends early only on an error; while the queue is full, one that does
            // ends the run instead of leaving the arrival waiting for workers that are gone.
            if let Err(TrySendError::Full(arrival)) = arrivals.try_send((first + i, due)) {
                tokio::select! {
                    sent = arrivals.send(arrival) => sent.expect("the receiver outlives the run"),
                    Some(joined) = workers.join_next() => {
                        joined.expect("worker panicked")?;
                        unreachable!("a worker ended before its arrivals");
                    }
                }
            }
            if idle.load(Ordering::Relaxed) == 0 && workers.len() < OPEN_LOOP_IN_FLIGHT_MAX {
                let worker = Worker {
                    route: Route::new(&self.target),
                    release_one_in: self.release_one_in,
                    arrivals: Arc::clone(&arrivals_rx),
                    idle: Arc::clone(&idle),
                    tally: Arc::clone(&tally),
                    n_completed: Arc::clone(&self.n_completed),
                };
                workers.spawn(worker.run());
            }
            while let Some(joined) = workers.try_join_next() {
                joined.expect("worker panicked")?;
            }
        }
        drop(arrivals);
        while let Some(joined) = workers.join_next().await {
            joined.expect("worker panicked")?;
        }
        let elapsed = started.elapsed();
        self.next_lifecycle = first + n_due;
        let total = std::mem::take(&mut *tally.lock().expect("tally poisoned"));
        Ok(self.report(elapsed, total, proposed_before))
    }
}

/// An open-loop run's worker: takes the next due lifecycle (its number and when it was
/// due), runs it, and tallies it, until the arrivals end.
struct Worker {
    route: Route,
    release_one_in: Option<NonZeroU64>,
    arrivals: Arc<tokio::sync::Mutex<mpsc::Receiver<(u64, Instant)>>>,
    /// Workers waiting for an arrival.
    idle: Arc<AtomicUsize>,
    tally: Arc<Mutex<Tally>>,
    n_completed: Arc<AtomicU64>,
}

impl Worker {
    async fn run(mut self) -> Result<(), LedgerError> {
        loop {
            self.idle.fetch_add(1, Ordering::Relaxed);
            let arrival = self.arrivals.lock().await.recv().await;
            self.idle.fetch_sub(1, Ordering::Relaxed);
            let Some((n, due)) = arrival else {
                return Ok(());
            };
            let done = run_lifecycle(&mut self.route, n, self.release_one_in).await;
            let mut tally = self.tally.lock().expect("tally poisoned");
            match done {
                Ok(done) => tally.record(due, done),
                Err(LedgerError::Timeout(_) | LedgerError::Unavailable { .. }) => {
                    tally.n_unanswered += 1;
                    continue;
                }
                Err(e) => return Err(e),
            }
            drop(tally);
            self.n_completed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// When the `i`-th arrival at `per_s` is due, counted from the run's start.
fn arrival_offset(i: u64, per_s: NonZeroU64) -> Duration {
    let nanos = u128::from(i) * NANOS_PER_S / u128::from(per_s.get());
    Duration::from_nanos(u64::try_from(nanos).expect("an offset of fewer than 584 years"))
}

/// How one task reaches the ledger: its own leader hints over in-process nodes, or the
/// shared client.
enum Route {
    Nodes(Leaders),
    Client(LedgerClient),
}

impl Route {
    fn new(target: &Target) -> Route {
        match target {
            Target::Nodes(nodes) => Route::Nodes(Leaders::new(Arc::clone(nodes))),
            Target::Client(client) => Route::Client(client.clone()),
        }
    }

    /// The command's outcome and the number of retries it took.
    async fn submit(&mut self, command: Command) -> Result<(Outcome, u64), LedgerError> {
        match self {
            // Boxed: inline, the in-process path's future (~2 KB) sized every submitter's
            // future, the client's included, and was copied on every submit.
            Route::Nodes(leaders) => Box::pin(leaders.submit(command)).await,
            Route::Client(client) => submit_retrying(client, command).await,
        }
    }
}

/// Submits through the client, retrying for up to [`CLIENT_RETRY_FOR`] what it gives up
/// on within its own deadline (a cluster electing a leader after a SIGKILL, a restarted
/// node catching up, can take longer), with the same op id, so a retry is idempotent, as
/// the gateway retries a settle.
async fn submit_retrying(
    client: &LedgerClient,
    command: Command,
) -> Result<(Outcome, u64), LedgerError> {
    let started = Instant::now();
    let mut n_retries = 0;
    loop {
        match client.submit(command.clone()).await {
            Ok(outcome) => return Ok((outcome, n_retries)),
            Err(e) if e.is_retryable() && started.elapsed() < CLIENT_RETRY_FOR => {
                n_retries += 1;
                tokio::time::sleep(RETRY_INTERVAL).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Where each group's leader was last found, starting from node 1 for every group.
struct Leaders {
    nodes: Arc<[LedgerNode]>,
    target_by_group: Vec<usize>,
}

impl Leaders {
    fn new(nodes: Arc<[LedgerNode]>) -> Leaders {
        let n_groups = nodes[0].n_groups() as usize;
        Leaders { nodes, target_by_group: vec![0; n_groups] }
    }

    /// Submits through the leader of the command's group, following `NotLeader` hints and
    /// retrying retryable errors (same op id, so a retry is idempotent). Returns the
    /// outcome and the number of retries it took.
    async fn submit(&mut self, command: Command) -> Result<(Outcome, u64), LedgerError> {
        let group_idx = self.nodes[0].group_idx_of(command.op.account()) as usize;
        let n_nodes = self.nodes.len();
        let target = &mut self.target_by_group[group_idx];
        for attempt in 1..=SUBMIT_ATTEMPTS_MAX {
            let retries = u64::from(attempt - 1);
            match self.nodes[*target].submit(command.clone()).await {
                Ok(outcome) => return Ok((outcome, retries)),
                Err(LedgerError::NotLeader { leader_id: Some(leader), .. })
                    if (1..=n_nodes as u64).contains(&leader) =>
                {
                    *target = leader as usize - 1;
                }
                Err(e) if e.is_retryable() && attempt < SUBMIT_ATTEMPTS_MAX => {
                    *target = (*target + 1) % n_nodes;
                    tokio::time::sleep(RETRY_INTERVAL).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(LedgerError::Unavailable {
            reason: format!("no leader after {SUBMIT_ATTEMPTS_MAX} attempts"),
        })
    }
}

#[derive(Default)]
struct Tally {
    latencies: Histogram,
    windows: Option<Windows>,
    n_rejected: u64,
    n_retries: u64,
    n_unanswered: u64,
}

/// Latencies by window of when each lifecycle started (or was due).
struct Windows {
    started: Instant,
    width: Duration,
    histograms: Vec<Histogram>,
}

impl Tally {
    /// A tally that also keeps latencies by window, if given the run's start and a width.
    fn new(windows: Option<(Instant, Duration)>) -> Tally {
        let windows =
            windows.map(|(started, width)| Windows { started, width, histograms: Vec::new() });
        Tally { windows, ..Tally::default() }
    }

    /// Counts a lifecycle timed from `since` (when it started, or when it was due).
    fn record(&mut self, since: Instant, done: LifecycleDone) {
        let latency = since.elapsed();
        if let Some(windows) = &mut self.windows {
            let offset = since.saturating_duration_since(windows.started);
            let idx = usize::try_from(offset.as_nanos() / windows.width.as_nanos())
                .expect("fewer windows than memory");
            if windows.histograms.len() <= idx {
                windows.histograms.resize_with(idx + 1, Histogram::new);
            }
            windows.histograms[idx].record(latency);
        }
        self.latencies.record(latency);
        self.n_rejected += u64::from(done.rejected);
        self.n_retries += done.n_retries;
    }
}

struct Submitter {
    route: Route,
    release_one_in: Option<NonZeroU64>,
    next: Arc<AtomicU64>,
    end: u64,
    deadline: Option<Instant>,
    n_completed: Arc<AtomicU64>,
    tally: Arc<Mutex<Tally>>,
}

impl Submitter {
    async fn run(mut self) -> Result<(), LedgerError> {
        loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let late = self.deadline.is_some_and(|deadline| Instant::now() >= deadline);
            if n >= self.end || late {
                return Ok(());
            }
            let started = Instant::now();
            let done = run_lifecycle(&mut self.route, n, self.release_one_in).await?;
            self.tally.lock().expect("tally poisoned").record(started, done);
            self.n_completed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What became of one lifecycle: whether the ledger rejected its reserve or its end, and
/// how many times its commands were repeated.
struct LifecycleDone {
    rejected: bool,
    n_retries: u64,
}

/// Lifecycle `n`: its reserve, then (once reserved) its settle or release.
async fn run_lifecycle(
    route: &mut Route,
    n: u64,
    release_one_in: Option<NonZeroU64>,
) -> Result<LifecycleDone, LedgerError> {
    let release = release_one_in.is_some_and(|one_in| n.is_multiple_of(one_in.get()));
    let [reserve, finish] = lifecycle_commands(n, release);
    let (reserved, reserve_retries) = route.submit(reserve).await?;
    let (finished, finish_retries) = route.submit(finish).await?;
    Ok(LifecycleDone {
        rejected: reserved.is_err() || finished.is_err(),
        n_retries: reserve_retries + finish_retries,
    })
}

impl LoadReport {
    pub fn n_lifecycles(&self) -> u64 {
        self.latencies.n_recorded
    }

    pub fn lifecycles_per_s(&self) -> f64 {
        self.n_lifecycles() as f64 / self.elapsed.as_secs_f64()
    }

    /// Mean group-commit batch size (commands per Raft entry) over the run, if known.
    pub fn commands_per_batch(&self) -> Option<f64> {
        self.proposed.map(|(n_batches, n_commands)| n_commands as f64 / n_batches.max(1) as f64)
    }
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram { counts: vec![0; BUCKETS], n_recorded: 0, sum_us: 0, max_us: 0 }
    }

    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket_idx(us)] += 1;
        self.n_recorded += 1;
        self.sum_us += u128::from(us);
        self.max_us = self.max_us.max(us);
    }

    /// How many latencies were recorded.
    pub fn n_recorded(&self) -> u64 {
        self.n_recorded
    }

    pub fn mean(&self) -> Duration {
        let mean_us = self.sum_us / u128::from(self.n_recorded.max(1));
        Duration::from_micros(u64::try_from(mean_us).expect("mean below max"))
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_us)
    }

    /// The latency at quantile `q` (0.5 = median) by nearest rank, rounded up to the end
    /// of its bucket (so over-reported by at most 1.6 %), never above the maximum.
    pub fn quantile(&self, q: f64) -> Duration {
        assert!((0.0..=1.0).contains(&q), "quantile out of range: {q}");
        let rank = ((q * self.n_recorded as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (idx, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let bucket_end_us = bucket_start_us(idx + 1).saturating_sub(1);
                return Duration::from_micros(bucket_end_us.min(self.max_us));
            }
        }
        self.max()
    }
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram::new()
    }
}

/// Values below `SUB_BUCKETS` get a bucket each; above, each power of two is split into
/// `SUB_BUCKETS` equal buckets, indexed by the value's top `SUB_BUCKET_BITS + 1` bits.
fn bucket_idx(us: u64) -> usize {
    if us < SUB_BUCKETS as u64 {
        return us as usize;
    }
    let shift = 63 - us.leading_zeros() - SUB_BUCKET_BITS;
    let sub_bucket = (us >> shift) as usize - SUB_BUCKETS;
    (shift as usize + 1) * SUB_BUCKETS + sub_bucket
}

fn bucket_start_us(idx: usize) -> u64 {
    if idx < SUB_BUCKETS {
        return idx as u64;
    }
    let shift = idx / SUB_BUCKETS - 1;
    let top = (idx % SUB_BUCKETS + SUB_BUCKETS) as u128;
    u64::try_from(top << shift).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Cluster;
    use solrouter_raft::NodeOptions;

    #[tokio::test]
    async fn an_open_loop_run_starts_each_lifecycle_when_it_is_due() {
        let base = tempfile::tempdir().unwrap();
        let cluster = Cluster::open(1, 1, base.path(), &NodeOptions::default()).await.unwrap();
        let target = Target::nodes(cluster.nodes());
        fund(&target).await.unwrap();
        let mut load = Load::new(target, None).with_windows(Duration::from_millis(100));
        let per_s = NonZeroU64::new(400).unwrap();
        let report = load.run_at_rate(per_s, Duration::from_millis(500)).await.unwrap();
        assert_eq!(report.n_lifecycles(), 200);
        // Windows by when each was due: 40 in each tenth of a second.
        let per_window: Vec<u64> = report.windows.iter().map(Histogram::n_recorded).collect();
        assert_eq!(per_window, [40; 5]);
        assert_eq!(load.completed().load(Ordering::Relaxed), 200);
        assert_eq!((report.n_rejected, report.n_unanswered), (0, 0));
        // The last was due 497.5 ms in: a run that started them all at once ends sooner.
        let last_due = arrival_offset(199, per_s);
        assert!(report.elapsed >= last_due, "done in {:?}", report.elapsed);
        assert!(report.latencies.max() < report.elapsed, "timed from the run's start");
        cluster.shutdown().await.unwrap();
    }

    #[test]
    fn buckets_start_where_their_values_map() {
        for us in [0, 1, 63, 64, 65, 127, 128, 129, 1_000, 12_345, 1 << 40, u64::MAX] {
            let idx = bucket_idx(us);
            assert!(idx < BUCKETS, "{us} maps past the last bucket");
            assert!(bucket_start_us(idx) <= us, "{us} below its bucket");
            assert!(idx + 1 == BUCKETS || us < bucket_start_us(idx + 1), "{us} above its bucket");
        }
    }

    #[test]
    fn quantiles_are_within_a_bucket_of_the_exact_rank() {
        let mut histogram = Histogram::new();
        for us in 1..=10_000u64 {
            histogram.record(Duration::from_micros(us));
        }
        let check = |q: f64, exact_us: u64| {
            let got_us = histogram.quantile(q).as_micros() as u64;
            assert!(got_us >= exact_us && got_us <= exact_us + exact_us / 64, "q{q}: {got_us}");
        };
        check(0.5, 5_000);
        check(0.99, 9_900);
        check(1.0, 10_000);
        assert_eq!(histogram.max(), Duration::from_micros(10_000));
        assert_eq!(histogram.mean(), Duration::from_micros(5_000));
    }
}
