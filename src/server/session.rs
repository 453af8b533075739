//! One session's handle: the queue into its apply task, its state behind a
//! lock, and the route of its control commands back to the agent.
//!
//! Valid messages reach a session through a bounded queue of `buffer_size`
//! entries ([`Session::enqueue`]) that one apply task (`apply.rs`) drains
//! into its [`SessionState`]; when the queue is full the stream answers
//! BUFFER_FULL instead of waiting, so one slow session never holds up the
//! gRPC stream's reader or another session. Commands go down the stream that
//! most recently carried the session's messages, or wait in a short queue
//! until one does.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, mpsc, watch, RwLock};
use tokio_util::sync::CancellationToken;

use super::identity::Identity;
use super::state::{Counters, SessionState};
use super::store::Write;
use crate::config::History;
use crate::proto::{
    self, metrics_response, BatchData, ControlCommand, EpochData, MetricsResponse, PerformanceData,
    ScalarBatch, TrainingConfig, TrainingStatus,
};

/// Commands held for a session while no stream is attached to it (a
/// reconnecting agent); beyond it the oldest are dropped and counted.
pub const PENDING_COMMANDS: usize = 32;

/// How long an answer waits for its stream's client to read before the
/// server ends that stream: a client that does not read must not hold the
/// session's apply task (and so every other stream of the session).
pub const UNREAD_STREAM_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where an apply task sends the acknowledgement of what it applied: the
/// response half of the stream the message arrived on, and the switch that
/// ends that stream.
#[derive(Clone)]
pub struct Reply {
    tx: mpsc::Sender<Result<MetricsResponse, tonic::Status>>,
    ended: CancellationToken,
}

impl Reply {
    pub fn new(
        tx: mpsc::Sender<Result<MetricsResponse, tonic::Status>>,
        ended: CancellationToken,
    ) -> Reply {
        Reply { tx, ended }
    }

    /// Sends `msg`, waiting at most [`UNREAD_STREAM_LIMIT`] for room; a
    /// stream whose client has not made room by then is ended. False when
    /// the stream is gone (or just ended).
    pub async fn send(&self, msg: MetricsResponse) -> bool {
        if self.ended.is_cancelled() {
            return false;
        }
        match tokio::time::timeout(UNREAD_STREAM_LIMIT, self.tx.send(Ok(msg))).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                tracing::warn!(
                    limit_s = UNREAD_STREAM_LIMIT.as_secs(),
                    "a metrics stream's client has not read its answers; stream ended"
                );
                self.ended.cancel();
                false
            }
        }
    }

    /// Sends `msg` if there is room now.
    pub fn try_send(&self, msg: MetricsResponse) -> bool {
        !self.ended.is_cancelled() && self.tx.try_send(Ok(msg)).is_ok()
    }

    pub fn same_channel(&self, other: &Reply) -> bool {
        self.tx.same_channel(&other.tx)
    }

    /// Resolves once the client has gone or the server ended the stream.
    pub async fn closed(&self) {
        tokio::select! {
            _ = self.tx.closed() => {}
            _ = self.ended.cancelled() => {}
        }
    }
}

/// A validated message on its way to a session's state.
pub enum Ingest {
    Batch {
        batch: BatchData,
        sent_ms: u64,
        received_ms: u64,
        /// Receipt in µs, for the latency record.
        received_us: u64,
        reply: Reply,
    },
    Epoch {
        epoch: EpochData,
        seq: u64,
        /// Events the agent lost before this one (its ring was lapped).
        missed_before: u64,
        reply: Reply,
    },
    Status {
        status: TrainingStatus,
        message: String,
        config: Option<TrainingConfig>,
        timestamp_ms: u64,
        seq: u64,
        missed_before: u64,
        reply: Reply,
    },
    Scalars {
        batch: ScalarBatch,
        reply: Reply,
    },
    Performance(PerformanceData),
}

pub struct Session {
    pub id: String,
    pub counters: Counters,
    state: RwLock<SessionState>,
    queue: mpsc::Sender<Ingest>,
    /// Cancelled when the session is evicted: ends its apply task.
    cancel: CancellationToken,
    /// When the session was last touched by any message, for eviction order
    /// without taking the state lock.
    last_seen_ms: AtomicU64,
    /// Set once the session has reported COMPLETED or FAILED.
    finished: AtomicBool,
    /// Number of class names in the run's config (0: unknown), for batch
    /// validation without the state lock.
    classes: AtomicUsize,
    commands: Mutex<CommandRoute>,
    /// Change notification for the dashboard (see [`Changes`]).
    changes: Changes,
    /// Highest event and point numbers the store has committed (or, with
    /// no store, applied): where a failed write rewinds to.
    committed_event_seq: AtomicU64,
    committed_point_seq: AtomicU64,
    /// Who registered it (see [`super::identity`]); only they may act for
    /// it. `None`: no identities on this server.
    owner: Mutex<Option<Identity>>,
    /// Newly applied scalar points for live viewers (`/api/live`), as
    /// JSON, built only while one listens.
    points: broadcast::Sender<Arc<str>>,
}

/// Point batches a live viewer may fall behind by before it is told it
/// lagged (and reads the store again).
const LIVE_POINTS_BACKLOG: usize = 256;

/// Version counters bumped after every applied message: one per session and
/// one shared by the registry (any session changed, or one came or went).
/// The dashboard's push streams wait on them and coalesce; the apply task
/// pays two uncontended counter bumps and no allocation, and does no work
/// per viewer.
#[derive(Clone)]
struct Changes {
    session: watch::Sender<u64>,
    registry: watch::Sender<u64>,
}

impl Changes {
    fn bump(&self) {
        let inc = |v: &mut u64| *v = v.wrapping_add(1);
        self.session.send_modify(inc);
        self.registry.send_modify(inc);
    }
}

/// Where a session's control commands go: the response half of the stream
/// that most recently carried its messages, or a short queue until one does;
/// and what became of each.
///
/// A command written to a stream is only *sent*: the stream may already be
/// dead. It stays in `unconfirmed` until the agent reports it delivered
/// (written into the trainer's segment, [`Session::on_command_report`]),
/// and is sent again, in order, on the next stream that attaches. The
/// agent writes each command id once, so the trainer applies it once.
#[derive(Default)]
struct CommandRoute {
    stream: Option<Reply>,
    pending: VecDeque<ControlCommand>,
    unconfirmed: VecDeque<ControlCommand>,
    next_id: u64,
    /// The newest commands and what became of them, for the dashboard.
    log: VecDeque<CommandState>,
}

/// What became of one command, as the dashboard shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CommandState {
    pub id: u64,
    /// The CommandType's name, e.g. "PAUSE_TRAINING".
    #[serde(rename = "type")]
    pub kind: String,
    /// Written to a stream at least once (the agent may not have it yet).
    pub sent: bool,
    /// When the agent reported writing it into the trainer's segment.
    pub delivered_ms: Option<u64>,
    /// When the agent reported the trainer had applied it.
    pub applied_ms: Option<u64>,
}

/// Commands a session remembers the fate of.
pub const COMMAND_LOG: usize = 32;

/// The most command ids one report may carry (the agent sends at most 256).
pub const MAX_REPORTED_COMMANDS: usize = 256;

impl CommandRoute {
    fn state(&mut self, id: u64) -> Option<&mut CommandState> {
        self.log.iter_mut().find(|c| c.id == id)
    }

    fn mark_sent(&mut self, cmd: &ControlCommand) {
        if let Some(c) = self.state(cmd.command_id) {
            c.sent = true;
        }
        if !self
            .unconfirmed
            .iter()
            .any(|c| c.command_id == cmd.command_id)
        {
            if self.unconfirmed.len() == PENDING_COMMANDS {
                self.unconfirmed.pop_front();
            }
            self.unconfirmed.push_back(cmd.clone());
        }
    }
}

/// What happened to a command handed to [`Session::send_command`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandOutcome {
    /// Written to the session's stream.
    Sent { command_id: u64 },
    /// No stream is attached (or it is full); held until the agent is back.
    Queued { command_id: u64 },
}

impl Session {
    /// A new session registered at `now_ms`, and the receiving end of its
    /// queue for the apply task. `cancel` ends that task; `registry_changes`
    /// is the registry's change counter, bumped with the session's own.
    pub(super) fn new(
        id: &str,
        buffer_size: usize,
        history: &History,
        now_ms: u64,
        cancel: CancellationToken,
        registry_changes: watch::Sender<u64>,
    ) -> (Arc<Session>, mpsc::Receiver<Ingest>) {
        let (tx, rx) = mpsc::channel(buffer_size);
        let session = Arc::new(Session {
            id: id.to_string(),
            counters: Counters::default(),
            state: RwLock::new(SessionState::new(history, now_ms)),
            queue: tx,
            cancel,
            last_seen_ms: AtomicU64::new(now_ms),
            finished: Default::default(),
            classes: AtomicUsize::new(0),
            commands: Mutex::new(CommandRoute::default()),
            changes: Changes {
                session: watch::Sender::new(0),
                registry: registry_changes,
            },
            committed_event_seq: AtomicU64::new(0),
            committed_point_seq: AtomicU64::new(0),
            owner: Mutex::new(None),
            points: broadcast::Sender::new(LIVE_POINTS_BACKLOG),
        });
        (session, rx)
    }

    /// The session's state, shared with the apply task. A reader that holds
    /// it long stalls the apply task; the bounded queue then fills and the
    /// stream answers BUFFER_FULL.
    pub fn state(&self) -> &RwLock<SessionState> {
        &self.state
    }

    pub fn touch(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Relaxed);
    }

    pub fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms.load(Relaxed)
    }

    pub fn is_finished(&self) -> bool {
        self.finished.load(Relaxed)
    }

    /// How many classes the run's config names (0: no config yet).
    pub fn class_count(&self) -> usize {
        self.classes.load(Relaxed)
    }

    /// Records the run's config; `st` is this session's state, locked.
    pub(super) fn set_config(&self, st: &mut SessionState, config: TrainingConfig) {
        self.classes.store(config.class_names.len(), Relaxed);
        st.config = Some(config);
    }

    /// Records that events up to `event_seq` and points up to `point_seq`
    /// are committed (0: no news of that sequence).
    pub(super) fn committed(&self, event_seq: u64, point_seq: u64) {
        self.committed_event_seq.fetch_max(event_seq, Relaxed);
        self.committed_point_seq.fetch_max(point_seq, Relaxed);
    }

    /// (events, points) committed so far.
    pub fn committed_seqs(&self) -> (u64, u64) {
        (
            self.committed_event_seq.load(Relaxed),
            self.committed_point_seq.load(Relaxed),
        )
    }

    /// Records whether the run has ended, for eviction without the lock.
    pub(super) fn set_finished(&self, finished: bool) {
        self.finished.store(finished, Relaxed);
    }

    /// Tells the dashboard's push streams that this session changed.
    pub(super) fn changed(&self) {
        self.changes.bump();
    }

    /// Ends the session's apply task (it has been evicted).
    pub(super) fn close(&self) {
        self.cancel.cancel();
    }

    /// Queues a validated message for the apply task; `Err` hands it back
    /// when the session's buffer is full.
    #[allow(clippy::result_large_err)]
    pub fn enqueue(&self, item: Ingest) -> Result<(), Ingest> {
        self.queue.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(i) | mpsc::error::TrySendError::Closed(i) => i,
        })
    }

    /// Binds the session to `who` when it has no owner yet; true when `who`
    /// owns it (or identities are off: `who` is `None` and so is the owner).
    pub fn claim(&self, who: Option<&Identity>) -> bool {
        let mut owner = self.owner.lock().unwrap();
        match (&*owner, who) {
            (None, Some(w)) => {
                *owner = Some(w.clone());
                true
            }
            (o, w) => o.as_ref() == w,
        }
    }

    /// Whether `who` may act for this session.
    pub fn owned_by(&self, who: Option<&Identity>) -> bool {
        self.owner.lock().unwrap().as_ref() == who
    }

    /// Routes this session's commands to `stream` from now on (the stream
    /// that carried its latest message) and flushes held commands into it.
    /// Returns whether the route changed.
    pub fn attach(&self, stream: &Reply) -> bool {
        let mut route = self.commands.lock().unwrap();
        if route
            .stream
            .as_ref()
            .is_some_and(|s| s.same_channel(stream))
        {
            return false;
        }
        route.stream = Some(stream.clone());
        // What an earlier stream carried but the agent never confirmed
        // first, in order, then what was held.
        for cmd in &route.unconfirmed {
            if !stream.try_send(self.command_response(cmd.clone())) {
                return true;
            }
            self.counters.commands_resent.fetch_add(1, Relaxed);
        }
        while let Some(cmd) = route.pending.front().cloned() {
            if !stream.try_send(self.command_response(cmd.clone())) {
                break;
            }
            route.pending.pop_front();
            route.mark_sent(&cmd);
            self.counters.commands_sent.fetch_add(1, Relaxed);
        }
        true
    }

    /// What the agent reports of this session's commands: the ids it has
    /// written into the trainer's segment, and the newest one the trainer
    /// has applied (commands are applied in the order delivered). Unknown
    /// ids are ignored. Returns what to record in the store.
    pub fn on_command_report(&self, delivered: &[u64], applied: u64, now_ms: u64) -> Vec<Write> {
        let mut route = self.commands.lock().unwrap();
        let mut writes = Vec::new();
        let known = route.next_id;
        for &id in delivered.iter().take(MAX_REPORTED_COMMANDS) {
            if id == 0 || id > known {
                continue;
            }
            route.unconfirmed.retain(|c| c.command_id != id);
            if let Some(c) = route.state(id) {
                if c.delivered_ms.is_none() {
                    c.delivered_ms = Some(now_ms);
                    writes.push(Write::CommandDelivered {
                        run: self.id.clone(),
                        id,
                        at_ms: now_ms as i64,
                    });
                }
            }
        }
        if applied > 0 && applied <= known {
            for c in route.log.iter_mut() {
                if c.id <= applied && c.delivered_ms.is_some() && c.applied_ms.is_none() {
                    c.applied_ms = Some(now_ms);
                    writes.push(Write::CommandApplied {
                        run: self.id.clone(),
                        id: c.id,
                        at_ms: now_ms as i64,
                    });
                }
            }
        }
        if !writes.is_empty() {
            self.changes.bump();
        }
        writes
    }

    /// The newest commands and what became of each, oldest first.
    pub fn command_log(&self) -> Vec<CommandState> {
        self.commands.lock().unwrap().log.iter().cloned().collect()
    }

    /// Stops routing commands to `stream` (its reader has ended), so the
    /// route does not keep that stream's response half open.
    pub fn detach(&self, stream: &Reply) {
        let mut route = self.commands.lock().unwrap();
        if route
            .stream
            .as_ref()
            .is_some_and(|s| s.same_channel(stream))
        {
            route.stream = None;
        }
    }

    fn command_response(&self, cmd: ControlCommand) -> MetricsResponse {
        MetricsResponse {
            session_id: self.id.clone(),
            timestamp_ms: proto::now_ms(),
            payload: Some(metrics_response::Payload::Command(cmd)),
        }
    }

    /// Sends a control command down the session's stream, numbering it.
    /// Never waits: with no usable stream the command is held (bounded).
    pub fn send_command(&self, mut cmd: ControlCommand) -> CommandOutcome {
        let mut route = self.commands.lock().unwrap();
        route.next_id += 1;
        let command_id = route.next_id;
        cmd.command_id = command_id;
        if route.log.len() == COMMAND_LOG {
            route.log.pop_front();
        }
        route.log.push_back(CommandState {
            id: command_id,
            kind: cmd.r#type().as_str_name().to_string(),
            sent: false,
            delivered_ms: None,
            applied_ms: None,
        });
        if let Some(stream) = &route.stream {
            // Commands are rare and small: a clone keeps the one that could
            // not be written without unpacking the channel's error.
            if stream.try_send(self.command_response(cmd.clone())) {
                route.mark_sent(&cmd);
                self.counters.commands_sent.fetch_add(1, Relaxed);
                return CommandOutcome::Sent { command_id };
            }
        }
        if route.pending.len() == PENDING_COMMANDS {
            route.pending.pop_front();
            self.counters.commands_dropped.fetch_add(1, Relaxed);
        }
        route.pending.push_back(cmd);
        CommandOutcome::Queued { command_id }
    }

    /// Messages waiting to be applied.
    pub fn queue_depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Notifies on each change of this session's state (a counter).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.session.subscribe()
    }

    /// Resolves when the session has been evicted (or the server stops).
    pub async fn closed(&self) {
        self.cancel.cancelled().await
    }

    /// The scalar points applied from now on, a JSON batch at a time.
    pub fn watch_points(&self) -> broadcast::Receiver<Arc<str>> {
        self.points.subscribe()
    }

    /// Hands newly applied points to live viewers: `json` is built only
    /// when one listens (else this is one atomic load).
    pub(super) fn publish_points(&self, json: impl FnOnce() -> String) {
        if self.points.receiver_count() > 0 {
            let _ = self.points.send(json().into());
        }
    }
}
