//! `trainwatch agent`: discovers training runs in shared memory and streams
//! each as a session to the central MetricsService, carrying control
//! commands back.
//!
//! The main loop rescans the segment directory every `scan_interval`: a new
//! segment gets its own session task ([`session::run`]); a segment that
//! cannot be read is reported once (again only if the file changes) and
//! never disturbs the others; a finished run's segment is removed after
//! `finished_grace`. The loop tells systemd it is ready after its first
//! scan and keeps the watchdog fed while it runs. All sessions share one
//! frame pipeline; each has its own connection, so a dead one is replaced
//! with the stream that ran on it.

pub mod backoff;
pub mod channel;
pub mod health;
pub mod link;
pub mod messages;
pub mod notify;
pub mod session;
pub mod stream;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::AgentSettings;
use crate::frame::FramePipeline;
use health::AgentStats;
use session::{SessionContext, SessionEnd};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Channel(#[from] channel::ChannelError),
    #[error("frame pipeline: {0}")]
    Frames(#[from] crate::frame::FrameError),
    #[error("health endpoint {addr}: {source}")]
    Health {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("segment directory {path}: {source}")]
    ShmDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl AgentError {
    /// Errors a user fixes in configuration (exit 64).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            AgentError::Channel(_) | AgentError::Frames(_) | AgentError::Health { .. }
        )
    }
}

/// A segment file by identity, not by path: a trainer run again under the
/// same name renames its new segment over the old path, and that is a new
/// run. The birth time (where the file system keeps one) tells a new file
/// from an old one whose inode number was reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
    born: Option<SystemTime>,
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            born: meta.created().ok(),
        }
    }
}

/// What the agent knows about one segment file (by [`FileId`]).
enum Known {
    /// Being streamed by a session task; `failures`: how many tasks for
    /// this segment died before it (see [`Known::Failed`]).
    Streaming { failures: u32 },
    /// Its task died (a panic) `failures` times in a row; started again at
    /// `retry_at`, after a backoff that doubles up to [`RETRY_MAX`].
    Failed { retry_at: Instant, failures: u32 },
    /// Finished at this instant; removed after the grace period.
    Finished(Instant),
    /// Rejected; remembered by its modification time so that it is reported
    /// once, and looked at again only when it changes.
    Rejected(Option<SystemTime>),
}

/// The longest wait before a segment whose task died is streamed again.
const RETRY_MAX: Duration = Duration::from_secs(300);

/// Session tasks; `Running` names each one's segment by task id, so a
/// task that died still names it.
type Tasks = JoinSet<SessionEnd>;
type Running = HashMap<tokio::task::Id, (FileId, PathBuf)>;

/// Hooks for the process around the agent (systemd notification, tests).
pub trait Lifecycle: Send {
    /// The configuration is valid and the first scan is done.
    fn ready(&mut self) {}
    /// The main loop completed one healthy pass.
    fn alive(&mut self) {}
}

/// No notifications.
pub struct NoLifecycle;
impl Lifecycle for NoLifecycle {}

pub struct Agent {
    settings: Arc<AgentSettings>,
    stats: Arc<AgentStats>,
}

impl Agent {
    pub fn new(settings: AgentSettings) -> Agent {
        Agent {
            settings: Arc::new(settings),
            stats: Arc::new(AgentStats::default()),
        }
    }

    pub fn stats(&self) -> Arc<AgentStats> {
        self.stats.clone()
    }

    /// Runs until `stop` fires; then stops every session and returns.
    pub async fn run(
        &self,
        stop: CancellationToken,
        lifecycle: &mut dyn Lifecycle,
    ) -> Result<(), AgentError> {
        let s = &self.settings;
        // Fail at start on a URL or TLS file that cannot work; sessions make
        // their own connections from the same settings.
        channel::connect_lazy(s)?;
        let pipeline = Arc::new(FramePipeline::new(s.frames.clone())?);
        if let Some(addr) = s.health_listen {
            let bound = health::serve(addr, self.stats.clone(), stop.clone())
                .await
                .map_err(|source| AgentError::Health { addr, source })?;
            tracing::info!(%bound, "health endpoint (Prometheus text at /metrics)");
        }
        let sampler = crate::telemetry::ResourceSampler::new(&s.telemetry);
        if let Some(e) = sampler.nvml_error() {
            tracing::info!(reason = %e, "GPU figures without NVML");
        }
        let ctx = Arc::new(SessionContext {
            settings: s.clone(),
            sampler: std::sync::Mutex::new(sampler),
            pipeline,
            stats: self.stats.clone(),
            frame_bytes: std::sync::atomic::AtomicUsize::new(0),
        });
        let mut known: HashMap<FileId, Known> = HashMap::new();
        let mut tasks: Tasks = JoinSet::new();
        let mut running: Running = HashMap::new();
        let sessions_stop = stop.child_token();
        let mut scan = tokio::time::interval(s.scan_interval);
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut log = tokio::time::interval(s.health_log_interval);
        log.tick().await;
        let mut first = true;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = scan.tick() => {
                    self.scan(&ctx, &mut known, (&mut tasks, &mut running), &sessions_stop)?;
                    if first {
                        first = false;
                        lifecycle.ready();
                    }
                    lifecycle.alive();
                }
                Some(done) = tasks.join_next_with_id() => {
                    self.task_done(&mut known, &mut running, done);
                }
                _ = log.tick() => {
                    tracing::info!(stats = %self.stats.summary(), "agent health");
                }
            }
        }
        sessions_stop.cancel();
        while tasks.join_next().await.is_some() {}
        self.stats.sessions_active.store(0, Relaxed);
        Ok(())
    }

    /// A session task returned or died. A task that died (a panic: a bug,
    /// never segment or wire content by design) is reported with what it
    /// said, and its segment is streamed again after a backoff.
    fn task_done(
        &self,
        known: &mut HashMap<FileId, Known>,
        running: &mut Running,
        done: Result<(tokio::task::Id, SessionEnd), tokio::task::JoinError>,
    ) {
        let e = match done {
            Ok((id, end)) => {
                if let Some((file, path)) = running.remove(&id) {
                    self.session_ended(known, file, path, end);
                }
                return;
            }
            Err(e) => e,
        };
        let Some((file, path)) = running.remove(&e.id()) else {
            return;
        };
        self.stats.sessions_active.fetch_sub(1, Relaxed);
        self.stats.session_tasks_failed.fetch_add(1, Relaxed);
        let failures = match known.get(&file) {
            Some(Known::Streaming { failures }) => failures + 1,
            _ => 1,
        };
        let backoff = self
            .settings
            .scan_interval
            .max(Duration::from_secs(1))
            .saturating_mul(1 << (failures - 1).min(16))
            .min(RETRY_MAX);
        let what = if e.is_panic() {
            let payload = e.into_panic();
            payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_string())
        } else {
            e.to_string()
        };
        tracing::error!(
            segment = %path.display(),
            failures,
            retry_in_s = backoff.as_secs_f64(),
            reason = %what,
            "session task died; the run will be streamed again"
        );
        known.insert(
            file,
            Known::Failed {
                retry_at: Instant::now() + backoff,
                failures,
            },
        );
    }

    fn session_ended(
        &self,
        known: &mut HashMap<FileId, Known>,
        file: FileId,
        path: PathBuf,
        end: SessionEnd,
    ) {
        self.stats.sessions_active.fetch_sub(1, Relaxed);
        match end {
            SessionEnd::Finished => {
                known.insert(file, Known::Finished(Instant::now()));
            }
            SessionEnd::Stopped => {
                known.remove(&file);
            }
            SessionEnd::Rejected(e) => {
                self.stats.segments_rejected.fetch_add(1, Relaxed);
                tracing::error!(segment = %path.display(), error = %e, "segment skipped");
                let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
                known.insert(file, Known::Rejected(mtime));
            }
        }
    }

    /// A finished run's segment once its grace period is over: removed,
    /// unless a live writer has it (then it is a new run in a file that
    /// looks like the old one: false, stream it).
    fn remove_finished(&self, path: &std::path::Path) -> bool {
        let idle_after = crate::shm::IDLE_AFTER_NS;
        if let Ok(r) = crate::shm::Reader::open_read_only(path) {
            if matches!(
                r.writer_state(idle_after),
                crate::shm::WriterState::Live | crate::shm::WriterState::Idle { .. }
            ) {
                tracing::info!(segment = %path.display(), "a live writer has a finished run's segment: a new run");
                return false;
            }
        }
        match std::fs::remove_file(path) {
            Ok(()) => tracing::info!(segment = %path.display(), "finished run's segment removed"),
            Err(e) => {
                tracing::warn!(segment = %path.display(), error = %e, "cannot remove finished segment")
            }
        }
        true
    }

    /// One pass over the segment directory.
    fn scan(
        &self,
        ctx: &Arc<SessionContext>,
        known: &mut HashMap<FileId, Known>,
        (tasks, running): (&mut Tasks, &mut Running),
        stop: &CancellationToken,
    ) -> Result<(), AgentError> {
        let dir = &self.settings.shm_dir;
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            // Not there yet (tmpfiles creates it at boot): nothing to stream.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                known.retain(|_, k| matches!(k, Known::Streaming { .. }));
                return Ok(());
            }
            Err(source) => {
                return Err(AgentError::ShmDir {
                    path: dir.clone(),
                    source,
                })
            }
        };
        let mut present = std::collections::HashSet::new();
        let mut waiting = 0u64;
        for entry in entries.flatten() {
            let path = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_file()) || !session::is_segment_name(&path) {
                continue;
            }
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let file = FileId::of(&meta);
            present.insert(file);
            let mut failures = 0;
            match known.get(&file) {
                Some(Known::Streaming { .. }) => continue,
                Some(&Known::Failed {
                    retry_at,
                    failures: f,
                }) => {
                    if Instant::now() < retry_at {
                        continue;
                    }
                    failures = f;
                }
                Some(Known::Finished(at)) => {
                    if at.elapsed() < self.settings.finished_grace {
                        continue;
                    }
                    if self.remove_finished(&path) {
                        known.remove(&file);
                        continue;
                    }
                }
                Some(Known::Rejected(mtime)) if meta.modified().ok() == *mtime => continue,
                Some(Known::Rejected(_)) => {}
                None => {}
            }
            if running.len() >= self.settings.max_sessions {
                waiting += 1;
                continue;
            }
            known.insert(file, Known::Streaming { failures });
            self.stats.sessions_active.fetch_add(1, Relaxed);
            let ctx = ctx.clone();
            let stop = stop.clone();
            let task = tasks.spawn(session::run(path.clone(), ctx, stop));
            running.insert(task.id(), (file, path));
        }
        // Forget files that are gone (except those still streaming: a
        // trainer may unlink its segment while the agent drains it, or
        // rename a new one over it).
        known.retain(|f, k| matches!(k, Known::Streaming { .. }) || present.contains(f));
        let before = self.stats.segments_waiting.swap(waiting, Relaxed);
        if waiting > 0 && before == 0 {
            tracing::warn!(
                waiting,
                max_sessions = self.settings.max_sessions,
                "runs wait for a place: the agent streams at most max_sessions at once"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boom() -> SessionEnd {
        panic!("boom in a session")
    }

    /// Issue 15 item 3: a dead session task used to be dropped unseen, its
    /// segment "streaming" for ever.
    #[tokio::test]
    async fn a_session_task_that_dies_is_reported_and_retried_after_a_growing_backoff() {
        let settings = AgentSettings::load(None, &crate::config::EnvMap::new(), vec![]).unwrap();
        let first = settings.scan_interval.max(Duration::from_secs(1));
        let agent = Agent::new(settings);
        let path = PathBuf::from("/dev/shm/trainwatch/run-1");
        let file = FileId {
            dev: 1,
            ino: 2,
            born: None,
        };
        let mut known = HashMap::from([(file, Known::Streaming { failures: 0 })]);
        let (mut tasks, mut running): (Tasks, Running) = (JoinSet::new(), HashMap::new());
        for round in 1..=3u32 {
            agent.stats.sessions_active.fetch_add(1, Relaxed);
            let task = tasks.spawn(async { boom() });
            running.insert(task.id(), (file, path.clone()));
            let done = tasks.join_next_with_id().await.unwrap();
            assert!(done.is_err());
            agent.task_done(&mut known, &mut running, done);
            let Some(&Known::Failed { retry_at, failures }) = known.get(&file) else {
                panic!("not marked failed after round {round}");
            };
            assert_eq!(failures, round);
            let wait = retry_at.saturating_duration_since(Instant::now());
            let backoff = first * (1 << (round - 1));
            assert!(
                wait <= backoff && wait + Duration::from_secs(1) > backoff,
                "{wait:?}"
            );
            // What the next scan does once the backoff is over.
            known.insert(file, Known::Streaming { failures });
        }
        assert!(running.is_empty());
        assert_eq!(agent.stats.session_tasks_failed.load(Relaxed), 3);
        assert_eq!(agent.stats.sessions_active.load(Relaxed), 0);
    }
}
