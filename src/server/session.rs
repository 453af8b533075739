//! Sessions: what the server knows about each training run, bounded.
//!
//! A session is created by RegisterTrainingSession and lives until the
//! registry needs its slot for a new one (finished sessions go first). Valid
//! messages reach it through a bounded queue of `buffer_size` entries that
//! one apply task drains into [`SessionState`]; when the queue is full the
//! stream answers BUFFER_FULL instead of waiting, so one slow session never
//! holds up the gRPC stream's reader or another session. Batches and events
//! are acknowledged by the apply task once applied.
//!
//! Everything kept is bounded by [`History`] and the latest frame: memory per
//! session does not grow with the length of a run.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock as StdRwLock};

use bytes::Bytes;
use tokio::sync::{mpsc, watch, RwLock};
use tokio_util::sync::CancellationToken;

use crate::config::{History, Limits};
use crate::proto::{
    self, acknowledgment::AckKind, metrics_response, Acknowledgment, BatchData, ControlCommand,
    EpochData, MetricsResponse, PerformanceData, TrainingConfig, TrainingStatus,
};

/// Commands held for a session while no stream is attached to it (a
/// reconnecting agent); beyond it the oldest are dropped and counted.
pub const PENDING_COMMANDS: usize = 32;

/// Where an apply task sends the acknowledgement of what it applied: the
/// response half of the stream the message arrived on.
pub type Reply = mpsc::Sender<Result<MetricsResponse, tonic::Status>>;

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
        reply: Reply,
    },
    Status {
        status: TrainingStatus,
        message: String,
        config: Option<TrainingConfig>,
        timestamp_ms: u64,
        seq: u64,
        reply: Reply,
    },
    Performance(PerformanceData),
}

/// Monotonic counters of one session, readable without its lock.
#[derive(Default, Debug)]
pub struct Counters {
    pub batches_received: AtomicU64,
    pub batches_invalid: AtomicU64,
    pub messages_invalid: AtomicU64,
    pub buffer_full: AtomicU64,
    pub events_applied: AtomicU64,
    pub events_duplicate: AtomicU64,
    pub heartbeats: AtomicU64,
    pub image_bytes: AtomicU64,
    pub registrations: AtomicU64,
    pub commands_sent: AtomicU64,
    pub commands_dropped: AtomicU64,
    /// Publish-to-receipt latency of every batch received.
    pub receipt_latency: super::latency::LatencyHistogram,
}

/// The newest batch of a session, images kept by refcount as received.
#[derive(Clone, Debug)]
pub struct Frame {
    pub epoch: u32,
    pub batch_idx: u32,
    pub loss: f32,
    pub images: Vec<Bytes>,
    pub predictions: Vec<(i32, f32)>,
    pub ground_truth: Vec<i32>,
    pub sent_ms: u64,
    pub received_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossPoint {
    pub epoch: u32,
    pub batch_idx: u32,
    pub loss: f32,
    pub t_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochRecord {
    pub epoch: u32,
    pub average_loss: f32,
    pub average_accuracy: f32,
    pub t_ms: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StatusRecord {
    pub status: TrainingStatus,
    pub message: String,
    pub t_ms: u64,
}

/// A loss series of bounded length that always spans the whole run: when
/// full, every other point is dropped and only every `stride`-th batch is
/// recorded from then on.
#[derive(Debug)]
pub struct LossSeries {
    points: Vec<LossPoint>,
    cap: usize,
    stride: u64,
    seen: u64,
}

impl LossSeries {
    pub fn new(cap: usize) -> Self {
        LossSeries {
            points: Vec::with_capacity(cap),
            cap: cap.max(2),
            stride: 1,
            seen: 0,
        }
    }

    pub fn push(&mut self, p: LossPoint) {
        let keep = self.seen.is_multiple_of(self.stride);
        self.seen += 1;
        if !keep {
            return;
        }
        if self.points.len() == self.cap {
            let mut i = 0;
            self.points.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.stride *= 2;
        }
        self.points.push(p);
    }

    pub fn points(&self) -> &[LossPoint] {
        &self.points
    }

    /// Every how many batches a point is kept now.
    pub fn stride(&self) -> u64 {
        self.stride
    }
}

/// What a session keeps. Read it through [`Session::state`].
#[derive(Debug)]
pub struct SessionState {
    pub client_name: String,
    pub client_version: String,
    pub config: Option<TrainingConfig>,
    pub status: TrainingStatus,
    pub status_message: String,
    pub status_history: VecDeque<StatusRecord>,
    pub latest_frame: Option<Frame>,
    pub loss: LossSeries,
    pub epochs: VecDeque<EpochRecord>,
    pub performance: Option<PerformanceData>,
    /// Highest event sequence number applied (0: none).
    pub last_event_seq: u64,
    pub registered_ms: u64,
    pub last_seen_ms: u64,
}

impl SessionState {
    fn push_status(&mut self, history: &History, rec: StatusRecord) {
        self.status = rec.status;
        self.status_message.clone_from(&rec.message);
        if self.status_history.len() == history.status_events {
            self.status_history.pop_front();
        }
        self.status_history.push_back(rec);
    }

    fn push_epoch(&mut self, history: &History, rec: EpochRecord) {
        // A repeated epoch number (a resumed trainer redoing an epoch)
        // replaces the earlier summary rather than adding a second one.
        if let Some(last) = self.epochs.iter_mut().rev().find(|e| e.epoch == rec.epoch) {
            *last = rec;
            return;
        }
        if self.epochs.len() == history.epochs {
            self.epochs.pop_front();
        }
        self.epochs.push_back(rec);
    }

    /// Whether the run has ended (its slot may be reused).
    pub fn finished(&self) -> bool {
        matches!(
            self.status,
            TrainingStatus::Completed | TrainingStatus::Failed
        )
    }
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
    finished: std::sync::atomic::AtomicBool,
    /// Number of class names in the run's config (0: unknown), for batch
    /// validation without the state lock.
    classes: AtomicUsize,
    commands: Mutex<CommandRoute>,
    /// Change notification for the dashboard (see [`Changes`]).
    changes: Changes,
}

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
/// that most recently carried its messages, or a short queue until one does.
#[derive(Default)]
struct CommandRoute {
    stream: Option<Reply>,
    pending: VecDeque<ControlCommand>,
    next_id: u64,
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

    fn set_config(&self, st: &mut SessionState, config: TrainingConfig) {
        self.classes.store(config.class_names.len(), Relaxed);
        st.config = Some(config);
    }

    /// Queues a validated message for the apply task; `Err` hands it back
    /// when the session's buffer is full.
    #[allow(clippy::result_large_err)]
    pub fn enqueue(&self, item: Ingest) -> Result<(), Ingest> {
        self.queue.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(i) | mpsc::error::TrySendError::Closed(i) => i,
        })
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
        while let Some(cmd) = route.pending.front() {
            if stream
                .try_send(Ok(self.command_response(cmd.clone())))
                .is_err()
            {
                break;
            }
            route.pending.pop_front();
            self.counters.commands_sent.fetch_add(1, Relaxed);
        }
        true
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
        if let Some(stream) = &route.stream {
            // Commands are rare and small: a clone keeps the one that could
            // not be written without unpacking the channel's error.
            if stream
                .try_send(Ok(self.command_response(cmd.clone())))
                .is_ok()
            {
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
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("the server holds {0} sessions, its limit (max_sessions), none of them finished")]
    Full(usize),
}

/// The outcome of a registration.
pub struct Registered {
    pub session: Arc<Session>,
    pub resumed: bool,
    pub last_event_seq: u64,
}

/// All sessions, by id.
pub struct Registry {
    sessions: StdRwLock<HashMap<String, Arc<Session>>>,
    pub limits: Limits,
    pub history: History,
    max_sessions: usize,
    shutdown: CancellationToken,
    /// Bumped when any session changes, registers or is evicted.
    changes: watch::Sender<u64>,
}

impl Registry {
    pub fn new(
        limits: Limits,
        history: History,
        max_sessions: usize,
        shutdown: CancellationToken,
    ) -> Self {
        Registry {
            sessions: StdRwLock::new(HashMap::new()),
            limits,
            history,
            max_sessions,
            shutdown,
            changes: watch::Sender::new(0),
        }
    }

    /// Notifies on each change of any session, and when one registers or is
    /// evicted (a counter).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Cancelled when the server stops.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions.read().unwrap().get(id).cloned()
    }

    /// Every session, oldest registration first.
    pub fn all(&self) -> Vec<Arc<Session>> {
        let mut v: Vec<_> = self.sessions.read().unwrap().values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    pub fn len(&self) -> usize {
        self.sessions.read().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers `id`, or resumes it when it is already known: its state,
    /// counters and event sequence carry over.
    pub async fn register(
        &self,
        id: &str,
        client_name: &str,
        client_version: &str,
        config: Option<TrainingConfig>,
    ) -> Result<Registered, RegisterError> {
        let now = proto::now_ms();
        let existing = self.get(id);
        let (session, resumed) = match existing {
            Some(s) => (s, true),
            None => (self.insert_new(id, now)?, false),
        };
        session.counters.registrations.fetch_add(1, Relaxed);
        session.touch(now);
        let mut st = session.state.write().await;
        st.client_name = client_name.to_string();
        st.client_version = client_version.to_string();
        if let Some(c) = config {
            session.set_config(&mut st, c);
        }
        st.last_seen_ms = now;
        let last_event_seq = st.last_event_seq;
        drop(st);
        session.changes.bump();
        Ok(Registered {
            session,
            resumed,
            last_event_seq,
        })
    }

    fn insert_new(&self, id: &str, now: u64) -> Result<Arc<Session>, RegisterError> {
        let mut map = self.sessions.write().unwrap();
        if let Some(s) = map.get(id) {
            // Registered concurrently by another call.
            return Ok(s.clone());
        }
        if map.len() >= self.max_sessions {
            // Make room by dropping the finished session seen longest ago.
            let victim = map
                .values()
                .filter(|s| s.is_finished())
                .min_by_key(|s| s.last_seen_ms())
                .map(|s| s.id.clone());
            match victim {
                Some(v) => {
                    if let Some(s) = map.remove(&v) {
                        s.cancel.cancel();
                        tracing::info!(session = %v, "evicted finished session to make room");
                    }
                }
                None => return Err(RegisterError::Full(map.len())),
            }
        }
        let (tx, rx) = mpsc::channel(self.limits.buffer_size as usize);
        let session = Arc::new(Session {
            id: id.to_string(),
            counters: Counters::default(),
            state: RwLock::new(SessionState {
                client_name: String::new(),
                client_version: String::new(),
                config: None,
                status: TrainingStatus::Unknown,
                status_message: String::new(),
                status_history: VecDeque::new(),
                latest_frame: None,
                loss: LossSeries::new(self.history.loss_points),
                epochs: VecDeque::new(),
                performance: None,
                last_event_seq: 0,
                registered_ms: now,
                last_seen_ms: now,
            }),
            queue: tx,
            cancel: self.shutdown.child_token(),
            last_seen_ms: AtomicU64::new(now),
            finished: Default::default(),
            classes: AtomicUsize::new(0),
            commands: Mutex::new(CommandRoute::default()),
            changes: Changes {
                session: watch::Sender::new(0),
                registry: self.changes.clone(),
            },
        });
        map.insert(id.to_string(), session.clone());
        tokio::spawn(apply_task(session.clone(), rx, self.history));
        Ok(session)
    }
}

/// Drains one session's queue into its state and acknowledges what it
/// applied, until the session is evicted or the server shuts down.
async fn apply_task(session: Arc<Session>, mut rx: mpsc::Receiver<Ingest>, history: History) {
    loop {
        let item = tokio::select! {
            _ = session.cancel.cancelled() => return,
            item = rx.recv() => match item { Some(i) => i, None => return },
        };
        let (reply, ack) = apply(&session, item, &history).await;
        session.changes.bump();
        if let (Some(reply), Some(ack)) = (reply, ack) {
            // The stream may be gone (client disconnected); the data is
            // applied all the same and a resend is deduplicated.
            let _ = reply
                .send(Ok(MetricsResponse {
                    session_id: session.id.clone(),
                    timestamp_ms: proto::now_ms(),
                    payload: Some(metrics_response::Payload::Ack(ack)),
                }))
                .await;
        }
    }
}

async fn apply(
    session: &Session,
    item: Ingest,
    history: &History,
) -> (Option<Reply>, Option<Acknowledgment>) {
    let mut st = session.state.write().await;
    let now = proto::now_ms();
    st.last_seen_ms = now;
    match item {
        Ingest::Batch {
            batch,
            sent_ms,
            received_ms,
            received_us,
            reply,
        } => {
            let c = &session.counters;
            c.batches_received.fetch_add(1, Relaxed);
            c.receipt_latency.record(sent_ms, received_us);
            let bytes: usize = batch.images.iter().map(|i| i.image_bytes.len()).sum();
            c.image_bytes.fetch_add(bytes as u64, Relaxed);
            st.loss.push(LossPoint {
                epoch: batch.epoch,
                batch_idx: batch.batch_idx,
                loss: batch.batch_loss,
                t_ms: received_ms,
            });
            let ack = Acknowledgment {
                batch_idx: batch.batch_idx,
                success: true,
                kind: AckKind::Batch as i32,
                epoch: batch.epoch,
                ..Default::default()
            };
            st.latest_frame = Some(Frame {
                epoch: batch.epoch,
                batch_idx: batch.batch_idx,
                loss: batch.batch_loss,
                predictions: batch
                    .predictions
                    .iter()
                    .map(|p| (p.predicted_class, p.confidence))
                    .collect(),
                ground_truth: batch.ground_truth,
                images: batch.images.into_iter().map(|i| i.image_bytes).collect(),
                sent_ms,
                received_ms,
            });
            (Some(reply), Some(ack))
        }
        Ingest::Epoch { epoch, seq, reply } => {
            if !fresh_event(session, &mut st, seq) {
                return (Some(reply), event_ack(seq));
            }
            st.push_epoch(
                history,
                EpochRecord {
                    epoch: epoch.epoch,
                    average_loss: epoch.average_loss,
                    average_accuracy: epoch.average_accuracy,
                    t_ms: now,
                },
            );
            (Some(reply), event_ack(seq))
        }
        Ingest::Status {
            status,
            message,
            config,
            timestamp_ms,
            seq,
            reply,
        } => {
            if !fresh_event(session, &mut st, seq) {
                return (Some(reply), event_ack(seq));
            }
            if let Some(c) = config {
                session.set_config(&mut st, c);
            }
            let finished = matches!(status, TrainingStatus::Completed | TrainingStatus::Failed);
            session.finished.store(finished, Relaxed);
            st.push_status(
                history,
                StatusRecord {
                    status,
                    message,
                    t_ms: if timestamp_ms > 0 { timestamp_ms } else { now },
                },
            );
            (Some(reply), event_ack(seq))
        }
        Ingest::Performance(p) => {
            st.performance = Some(p);
            (None, None)
        }
    }
}

/// Whether an event with sequence number `seq` is new; records it if so.
/// Unsequenced events (0, from seed peers) are always new.
fn fresh_event(session: &Session, st: &mut SessionState, seq: u64) -> bool {
    if seq == 0 {
        session.counters.events_applied.fetch_add(1, Relaxed);
        return true;
    }
    if seq <= st.last_event_seq {
        session.counters.events_duplicate.fetch_add(1, Relaxed);
        return false;
    }
    st.last_event_seq = seq;
    session.counters.events_applied.fetch_add(1, Relaxed);
    true
}

/// Sequenced events are acknowledged cumulatively; unsequenced ones are not
/// (the seed's peers expect acknowledgements only for batches).
fn event_ack(seq: u64) -> Option<Acknowledgment> {
    (seq > 0).then(|| Acknowledgment {
        success: true,
        kind: AckKind::Event as i32,
        event_seq: seq,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_series_is_bounded_and_spans_the_run() {
        let mut s = LossSeries::new(16);
        for i in 0..10_000u32 {
            s.push(LossPoint {
                epoch: 0,
                batch_idx: i,
                loss: i as f32,
                t_ms: 0,
            });
        }
        assert!(s.points().len() <= 16);
        assert_eq!(s.points()[0].batch_idx, 0);
        let last = s.points().last().unwrap().batch_idx;
        assert!(last >= 10_000 - s.stride() as u32, "last kept {last}");
        // Evenly spaced.
        let d: Vec<u32> = s
            .points()
            .windows(2)
            .map(|w| w[1].batch_idx - w[0].batch_idx)
            .collect();
        assert!(d.iter().all(|&x| x == d[0]), "{d:?}");
    }
}
