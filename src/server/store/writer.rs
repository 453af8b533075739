//! Group commit: one task takes writes from a bounded queue and commits
//! them to any [`Store`] in one transaction every `linger` or `max_rows`
//! rows, whichever comes first, then tells each submitter its outcome.
//!
//! A transaction per write would cost an fsync (or a WAL frame) per
//! scalar; a group amortises it over thousands. Submitters learn of the
//! commit through [`Pending`], so the server acknowledges to the agent
//! only what is committed.

use std::collections::HashSet;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Applied, Result, Store, StoreError, Write};

#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Shortest a write waits for others to share its transaction.
    pub linger: Duration,
    /// Added to the wait for each run the previous group wrote to, up to
    /// `linger_max`: see [`WriterConfig::linger_for`].
    pub linger_per_run: Duration,
    pub linger_max: Duration,
    /// Rows that close a group early.
    pub max_rows: usize,
    /// Writes queued before `submit` waits (backpressure).
    pub queue: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            // 100 ms for a few runs: acks stay well inside a heartbeat
            // interval while a group at 10,000 points/s holds about a
            // thousand rows.
            linger: Duration::from_millis(100),
            // A commit rewrites about one page per series it touched
            // (SQLite's points are clustered by series), whatever its
            // rows: 200 trainers logging 10 keys at 60/s dirtied some
            // 2,000 pages per commit, 135 MB/s of WAL at 100 ms. Lingering
            // 2 ms per run (200 runs: 400 ms) cut the store's CPU at that
            // load from 0.61 to 0.35 cores (benches/fleet, docs/store.md);
            // past 500 ms the saving flattens and big commits raise the
            // frames' p99.
            linger_per_run: Duration::from_millis(2),
            linger_max: Duration::from_millis(500),
            // 200,000 rows: a group is closed by time, not size, at any
            // rate a fleet sends (20,000 closed groups of 300 sessions
            // every ~100 ms, undoing the linger).
            max_rows: 200_000,
            // 16,384 writes: a fleet of 400 trainers sends some 25,000
            // small writes a second, so the queue holds more than the
            // writes of one commit.
            queue: 16_384,
        }
    }
}

impl WriterConfig {
    /// How long a group gathers after the previous one wrote to `runs`
    /// runs: `linger` plus `linger_per_run` each, at most `linger_max`
    /// (or `linger`, when that is longer).
    pub fn linger_for(&self, runs: usize) -> Duration {
        let grown = self
            .linger_per_run
            .saturating_mul(u32::try_from(runs).unwrap_or(u32::MAX));
        (self.linger + grown).min(self.linger_max.max(self.linger))
    }
}

struct Job {
    write: Write,
    done: oneshot::Sender<Result<Applied>>,
}

/// The handle submitters share; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

/// A write's outcome, ready once its group's transaction has committed (or
/// failed).
pub struct Pending {
    rx: oneshot::Receiver<Result<Applied>>,
    /// The outcome, once [`Pending::is_ready`] has taken it.
    done: Option<Result<Applied>>,
}

impl Pending {
    /// Whether the outcome is in, without waiting (it is kept for the
    /// await).
    pub fn is_ready(&mut self) -> bool {
        if self.done.is_none() {
            match self.rx.try_recv() {
                Ok(r) => self.done = Some(r),
                Err(oneshot::error::TryRecvError::Empty) => return false,
                Err(oneshot::error::TryRecvError::Closed) => {
                    self.done = Some(Err(StoreError::WriterStopped))
                }
            }
        }
        true
    }
}

impl Future for Pending {
    type Output = Result<Applied>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(r) = self.done.take() {
            return Poll::Ready(r);
        }
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(StoreError::WriterStopped)))
    }
}

impl Writer {
    /// Starts the writer task. It stops when `shutdown` is cancelled (after
    /// committing what was already queued) or when every handle is dropped.
    pub fn spawn(
        store: Arc<dyn Store>,
        config: WriterConfig,
        shutdown: CancellationToken,
    ) -> (Writer, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let task = tokio::spawn(run(store, config, rx, shutdown));
        (Writer { tx }, task)
    }

    /// Queues `write` (waiting while the queue is full) and returns what
    /// resolves once it is committed. Writes are applied in the order their
    /// `submit` calls returned.
    pub async fn submit(&self, write: Write) -> Result<Pending> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Job { write, done })
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        Ok(Pending { rx, done: None })
    }

    /// Submits and waits for the commit.
    pub async fn write(&self, write: Write) -> Result<Applied> {
        self.submit(write).await?.await
    }
}

async fn run(
    store: Arc<dyn Store>,
    config: WriterConfig,
    mut rx: mpsc::Receiver<Job>,
    shutdown: CancellationToken,
) {
    // One group commits while the next gathers: the queue keeps draining
    // during a commit, so submitters wait on the store's throughput, not
    // on each commit's latency. Groups still commit one after another, in
    // order.
    let mut committing: Option<JoinHandle<()>> = None;
    let mut runs_before = 0;
    loop {
        let first = tokio::select! {
            job = rx.recv() => job,
            _ = shutdown.cancelled() => None,
        };
        let Some(first) = first else { break };
        let mut g = Group::default();
        g.add(first);
        let deadline = Instant::now() + config.linger_for(runs_before);
        while g.rows < config.max_rows {
            tokio::select! {
                biased;
                job = rx.recv() => match job { Some(j) => g.add(j), None => break },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shutdown.cancelled() => break,
            }
        }
        // The previous group may still be committing: this one takes
        // writes until it is done (or this one is full).
        if let Some(mut previous) = committing.take() {
            let mut done = false;
            while g.rows < config.max_rows && !done {
                tokio::select! {
                    biased;
                    _ = &mut previous => done = true,
                    job = rx.recv() => match job { Some(j) => g.add(j), None => break },
                }
            }
            if !done {
                let _ = previous.await;
            }
        }
        runs_before = g.runs.len();
        committing = Some(tokio::spawn(commit(store.clone(), g.jobs)));
    }
    if let Some(previous) = committing.take() {
        let _ = previous.await;
    }
    // Shutting down: what was queued before the stop still commits, so a
    // submitter never waits on a write that silently vanished.
    rx.close();
    let mut group = Vec::new();
    while let Some(job) = rx.recv().await {
        group.push(job);
    }
    if !group.is_empty() {
        commit(store, group).await;
    }
}

/// The writes gathered for one transaction, their rows and the runs they
/// write to (by a hash of the run's id: only their number matters).
#[derive(Default)]
struct Group {
    jobs: Vec<Job>,
    rows: usize,
    runs: HashSet<u64>,
}

impl Group {
    fn add(&mut self, job: Job) {
        self.rows += job.write.rows();
        let mut h = DefaultHasher::new();
        job.write.run().hash(&mut h);
        self.runs.insert(h.finish());
        self.jobs.push(job);
    }
}

async fn commit(store: Arc<dyn Store>, group: Vec<Job>) {
    let (writes, dones): (Vec<Write>, Vec<_>) =
        group.into_iter().map(|j| (j.write, j.done)).unzip();
    match store.apply(writes).await {
        Ok(outcomes) => {
            for (done, outcome) in dones.into_iter().zip(outcomes) {
                let _ = done.send(outcome);
            }
        }
        Err(e) => {
            tracing::error!(writes = dones.len(), error = %e, "store group commit failed");
            let source = Arc::new(e);
            let writes = dones.len();
            for done in dones {
                let _ = done.send(Err(StoreError::GroupCommit {
                    writes,
                    source: source.clone(),
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_linger_grows_with_the_runs_written_to_and_is_bounded() {
        let c = WriterConfig::default();
        assert_eq!(c.linger_for(0), Duration::from_millis(100));
        assert_eq!(c.linger_for(50), Duration::from_millis(200));
        assert_eq!(c.linger_for(200), Duration::from_millis(500));
        assert_eq!(c.linger_for(usize::MAX), Duration::from_millis(500));
        // A linger set above the maximum is kept (tests that want one
        // group).
        let long = WriterConfig {
            linger: Duration::from_secs(5),
            ..c
        };
        assert_eq!(long.linger_for(1_000), Duration::from_secs(5));
    }
}
