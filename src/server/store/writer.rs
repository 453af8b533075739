//! Group commit: one task takes writes from a bounded queue and commits
//! them to any [`Store`] in one transaction every `linger` or `max_rows`
//! rows, whichever comes first, then tells each submitter its outcome.
//!
//! A transaction per write would cost an fsync (or a WAL frame) per
//! scalar; a group amortises it over thousands. Submitters learn of the
//! commit through [`Pending`], so the server acknowledges to the agent
//! only what is committed.

use std::future::Future;
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
    /// Longest a write waits for others to share its transaction.
    pub linger: Duration,
    /// Rows that close a group early.
    pub max_rows: usize,
    /// Writes queued before `submit` waits (backpressure).
    pub queue: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            // 100 ms: acks stay well inside a heartbeat interval while a
            // group at 10,000 points/s holds about a thousand rows.
            linger: Duration::from_millis(100),
            // 20,000 rows: one SQLite transaction of this size commits in
            // a few tens of ms, so a group never stalls the next for long.
            max_rows: 20_000,
            // 16,384 writes: a fleet of 400 trainers sends some 25,000
            // small writes a second, so the queue holds more than the
            // writes of one commit.
            queue: 16_384,
        }
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
}

impl Future for Pending {
    type Output = Result<Applied>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
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
        Ok(Pending { rx })
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
    loop {
        let first = tokio::select! {
            job = rx.recv() => job,
            _ = shutdown.cancelled() => None,
        };
        let Some(first) = first else { break };
        let mut rows = first.write.rows();
        let mut group = vec![first];
        let deadline = Instant::now() + config.linger;
        while rows < config.max_rows {
            tokio::select! {
                biased;
                job = rx.recv() => if !gather(job, &mut group, &mut rows) { break },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shutdown.cancelled() => break,
            }
        }
        // The previous group may still be committing: this one takes
        // writes until it is done (or this one is full).
        if let Some(mut previous) = committing.take() {
            let mut done = false;
            while rows < config.max_rows && !done {
                tokio::select! {
                    biased;
                    _ = &mut previous => done = true,
                    job = rx.recv() => if !gather(job, &mut group, &mut rows) { break },
                }
            }
            if !done {
                let _ = previous.await;
            }
        }
        committing = Some(tokio::spawn(commit(store.clone(), group)));
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

/// Adds a received job to the group; false once the queue has closed.
fn gather(job: Option<Job>, group: &mut Vec<Job>, rows: &mut usize) -> bool {
    match job {
        Some(job) => {
            *rows += job.write.rows();
            group.push(job);
            true
        }
        None => false,
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
