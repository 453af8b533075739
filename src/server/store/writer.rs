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
            queue: 1024,
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
    let mut group: Vec<Job> = Vec::new();
    loop {
        let first = tokio::select! {
            job = rx.recv() => job,
            _ = shutdown.cancelled() => None,
        };
        let Some(first) = first else { break };
        let mut rows = first.write.rows();
        group.push(first);
        let deadline = Instant::now() + config.linger;
        while rows < config.max_rows {
            tokio::select! {
                biased;
                job = rx.recv() => match job {
                    Some(job) => {
                        rows += job.write.rows();
                        group.push(job);
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shutdown.cancelled() => break,
            }
        }
        commit(store.as_ref(), &mut group).await;
    }
    // Shutting down: what was queued before the stop still commits, so a
    // submitter never waits on a write that silently vanished.
    rx.close();
    while let Some(job) = rx.recv().await {
        group.push(job);
    }
    if !group.is_empty() {
        commit(store.as_ref(), &mut group).await;
    }
}

async fn commit(store: &dyn Store, group: &mut Vec<Job>) {
    let (writes, dones): (Vec<Write>, Vec<_>) = group.drain(..).map(|j| (j.write, j.done)).unzip();
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
