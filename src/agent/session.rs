//! One training run streamed as one session: the segment's reader, the
//! registration, one StreamMetrics call, and the loop between them.
//!
//! The trainer never signals, it only stores, so the loop polls: every
//! millisecond once the next frame is due (the trainer's usual gap after
//! the last one's publish time), at most every 10 ms otherwise, and at once
//! when the server sends something. Each time round, in this order, it
//! answers what the server sent (acks advance the event cursor and are
//! written back to the segment, commands go into the control ring), sends
//! the next events (every one, in order, a bounded window ahead of the
//! acknowledgements), the newest frame when the pacer allows, a heartbeat
//! when due, and performance figures. A stream that fails or goes quiet
//! past the liveness window is dropped and the session registers again
//! after a backoff; the server's `last_event_seq` says where to resume, so
//! nothing is lost or doubled.
//!
//! Here lives the I/O: `register` (→ what was negotiated), `round` and its
//! one method per kind of wake-up. The rules and timers (and when to wake)
//! are [`super::stream::StreamState`], what each message holds is
//! [`super::messages`], and whether a failure resets the backoff is
//! [`super::stream::Failure::retry`].

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::backoff::Backoff;
use super::health::AgentStats;
use super::messages;
use super::stream::{Failure, StreamError, StreamState, POINTS_PER_BATCH};
use crate::config::AgentSettings;
use crate::frame::{EncodedBatch, FramePipeline};
use crate::proto::{
    self, acknowledgment::AckKind, control_command::CommandType, error_response::ErrorCode,
    metrics_request::Payload, metrics_response, negotiated::Negotiated, ControlCommand,
    MetricsRequest, MetricsResponse, MetricsServiceClient, TrainingConfig,
};
use crate::shm::{
    self, EventRead, FrameRead, PointRecord, PointsRead, Reader, SendOutcome, WriterState,
};
use crate::telemetry::{BatchSample, FpsTracker, ResourceSampler, RunTotals};

/// Messages queued for the stream; a frame that finds it full is dropped.
const OUT_QUEUE: usize = 32;
/// Commands waiting for room in the segment's control ring.
const PENDING_COMMANDS: usize = 32;

/// Commands written into the segment that the agent remembers (seq, id),
/// so one sent again is not written twice.
const DELIVERED_KEPT: usize = 256;

/// The most delivered ids one heartbeat carries (the server's bound).
const REPORTED_MAX: usize = 256;
/// Batches of at most this many pixels (16 x 64x64) are encoded on the
/// session's own task: a fraction of a millisecond, less than the hand-off
/// to a blocking thread and back costs. Larger ones go to a blocking thread.
const INLINE_PIXELS: u64 = crate::frame::SERIAL_PIXELS;
/// Kinds of INVALID_DATA logged per session; later ones are only counted.
const LOGGED_FAULT_KINDS: usize = 32;
/// Largest answer or request message on the stream.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// What every session shares.
pub struct SessionContext {
    pub settings: Arc<AgentSettings>,
    pub pipeline: Arc<FramePipeline>,
    pub stats: Arc<AgentStats>,
    /// One sampler for the device; each session asks it about its trainer.
    pub sampler: std::sync::Mutex<ResourceSampler>,
    /// Bytes all sessions' frame copies hold, within `frame_memory`.
    pub frame_bytes: std::sync::atomic::AtomicUsize,
}

/// How a session task ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The run ended and the server has every event, the final status too.
    Finished,
    /// The agent is shutting down; the run resumes when it starts again.
    Stopped,
    /// The segment cannot be used (corrupt, foreign, unreadable).
    Rejected(shm::ShmError),
}

/// How one connection attempt ended. Inside the stream loop, `Finished`
/// means "finish now": the attempt then closes the stream gracefully.
enum Attempt {
    Finished,
    Stopped,
    Failed(Failure),
    /// A header counter no writer could have left: the run cannot be read
    /// on, so it is rejected (the other runs go on).
    Corrupt(shm::ShmError),
}

/// Streams the run in segment `path` until it finishes or `stop` fires.
pub async fn run(path: PathBuf, ctx: Arc<SessionContext>, stop: CancellationToken) -> SessionEnd {
    let reader = match Reader::open(&path) {
        Ok(r) => r,
        Err(e) => return SessionEnd::Rejected(e),
    };
    let mut s = Session::new(reader, ctx);
    if let Err(e) = s.reader.attach(s.ctx.settings.max_fps) {
        return SessionEnd::Rejected(e);
    }
    tracing::info!(session = %s.id, segment = %path.display(), "streaming run");
    let mut backoff = Backoff::new(s.ctx.settings.backoff);
    loop {
        match s.attempt(&stop).await {
            Attempt::Finished => {
                tracing::info!(session = %s.id, "run finished; every event delivered");
                return SessionEnd::Finished;
            }
            Attempt::Stopped => return SessionEnd::Stopped,
            Attempt::Corrupt(e) => return SessionEnd::Rejected(e),
            Attempt::Failed(failure) => {
                if failure.retry().reset_backoff {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                s.ctx.stats.reconnects.fetch_add(1, Relaxed);
                tracing::warn!(
                    session = %s.id,
                    reason = %failure.error,
                    retry_in_ms = delay.as_millis() as u64,
                    "stream lost; reconnecting"
                );
                tokio::select! {
                    _ = stop.cancelled() => return SessionEnd::Stopped,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// What registration settled.
struct Registration {
    negotiated: Negotiated,
    /// The last event the server has applied.
    last_event_seq: u64,
    /// The last scalar point the server has committed.
    last_point_seq: u64,
    /// Whether the server takes scalar points (ours does, a seed's not).
    accepts_scalars: bool,
    resumed: bool,
}

type Inbound = tonic::Streaming<MetricsResponse>;
type Opening =
    Pin<Box<dyn Future<Output = Result<tonic::Response<Inbound>, tonic::Status>> + Send>>;
/// A message of the server's answer stream, as tonic gives it.
type Answer = Result<Option<MetricsResponse>, tonic::Status>;

/// One StreamMetrics call: its two ends and the conversation's state.
struct Stream {
    negotiated: Negotiated,
    out: mpsc::Sender<MetricsRequest>,
    /// Polled in the loop, not awaited before it: a grpcio server (the
    /// seed's) sends its response headers only with its first answer, which
    /// comes only after our first batch.
    opening: Option<Opening>,
    inbound: Option<Inbound>,
    state: StreamState,
    /// Whether points are sent on this stream.
    scalars: bool,
}

impl Stream {
    fn fail(&self, error: impl Into<StreamError>) -> Attempt {
        Attempt::Failed(Failure {
            error: error.into(),
            healthy: self.state.healthy(Instant::now()),
        })
    }

    /// Takes the opened answer stream if the call has opened, without waiting.
    async fn poll_open(&mut self) -> Result<(), Attempt> {
        let Some(fut) = self.opening.as_mut() else {
            return Ok(());
        };
        let polled = tokio::select! {
            biased;
            r = fut => Some(r),
            _ = std::future::ready(()) => None,
        };
        match polled {
            Some(Ok(r)) => {
                self.inbound = Some(r.into_inner());
                self.opening = None;
                Ok(())
            }
            Some(Err(status)) => Err(self.fail(StreamError::Open(status))),
            None => Ok(()),
        }
    }

    /// The server's next message if one is ready now.
    async fn try_answer(&mut self) -> Option<Answer> {
        let stream = self.inbound.as_mut()?;
        tokio::select! {
            biased;
            m = stream.message() => Some(m),
            _ = std::future::ready(()) => None,
        }
    }

    /// Queues `req`; a closed queue means the stream is gone.
    fn send(&self, req: MetricsRequest) -> Result<(), Attempt> {
        self.out
            .try_send(req)
            .map_err(|_| self.fail(StreamError::SendQueueClosed))
    }
}

struct Session {
    id: String,
    reader: Reader,
    ctx: Arc<SessionContext>,
    config: TrainingConfig,
    frame: shm::Frame,
    encoded: EncodedBatch,
    commands: VecDeque<ControlCommand>,
    /// (control seq, command id) of the commands written into the segment,
    /// newest last: read back from its control ring at start.
    delivered: VecDeque<(u64, u64)>,
    /// Command ids written (or sent again after being written) that the
    /// server has not been told of; the next heartbeat reports them.
    unreported: Vec<u64>,
    /// The applied command id the server was last told of.
    applied_reported: u64,
    faults_logged: HashSet<String>,
    heartbeat_seq: u32,
    fps: FpsTracker,
    /// The trainer's CPU percent and memory when last read.
    trainer_last_seen: (Option<f32>, Option<f32>),
    /// The final status this agent made up for a writer that went away
    /// without one, once sent: (event_seq, request).
    final_status: Option<(u64, MetricsRequest)>,
    /// Points read for the next ScalarBatch (capacity kept).
    points: Vec<PointRecord>,
    /// Set when reading a frame found the run corrupt; ends the attempt.
    corrupt: Option<shm::ShmError>,
}

impl Drop for Session {
    /// Its frame copy's bytes go back to the agent's frame memory.
    fn drop(&mut self) {
        let held = self.frame.data_capacity();
        self.ctx.frame_bytes.fetch_sub(held, Relaxed);
    }
}

impl Session {
    fn new(reader: Reader, ctx: Arc<SessionContext>) -> Session {
        let info = reader.header();
        let id = proto::session_id(
            &ctx.settings.device_id,
            &reader.config().run_name,
            info.writer_start_unix_ns,
        );
        let config = messages::training_config(reader.config());
        // What an earlier agent wrote is delivered: report it (the server
        // may still hold it unconfirmed) and never write it again.
        let delivered: VecDeque<(u64, u64)> = reader
            .delivered_commands()
            .map(VecDeque::from)
            .unwrap_or_default();
        let unreported = delivered.iter().map(|&(_, id)| id).collect();
        Session {
            id,
            reader,
            config,
            frame: shm::Frame::default(),
            encoded: EncodedBatch::with_capacity(crate::frame::MAX_IMAGES_LIMIT),
            commands: VecDeque::new(),
            delivered,
            unreported,
            applied_reported: 0,
            faults_logged: HashSet::new(),
            heartbeat_seq: 0,
            fps: FpsTracker::new(ctx.settings.telemetry.fps_window),
            trainer_last_seen: (None, None),
            final_status: None,
            points: Vec::with_capacity(POINTS_PER_BATCH),
            corrupt: None,
            ctx,
        }
    }

    /// A call carrying the agent's token (`authorization: Bearer …`) when
    /// one is configured: the server binds the session to it.
    fn with_token<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        if let Some(t) = &self.ctx.settings.token {
            if let Ok(v) = format!("Bearer {t}").parse() {
                req.metadata_mut().insert("authorization", v);
            }
        }
        req
    }

    fn request(&self, payload: Payload, timestamp_ms: u64, event_seq: u64) -> MetricsRequest {
        messages::request(&self.id, payload, timestamp_ms, event_seq)
    }

    /// Registers, streams until something ends the stream, and says why.
    async fn attempt(&mut self, stop: &CancellationToken) -> Attempt {
        let (client, reg) = match self.register(stop).await {
            Ok(r) => r,
            Err(end) => return end,
        };
        self.reader.seek_events(reg.last_event_seq);
        self.reader.seek_points(reg.last_point_seq);
        if let Some((seq, _)) = &self.final_status {
            if reg.last_event_seq >= *seq {
                return Attempt::Finished;
            }
        }
        let mut stream = self.open(client, &reg);
        // A final status this agent made up for a vanished trainer is not
        // in the ring: resend it until the server has it.
        if let Some((seq, req)) = &self.final_status {
            if let Err(end) = stream.send(req.clone()) {
                return end;
            }
            stream.state.cursor.sent(*seq);
        }
        // A server message that ended the wait at the bottom of the loop.
        let mut woken_by = None;
        let end = loop {
            let now = Instant::now();
            let sent_frame = match self.round(&mut stream, now, woken_by.take()).await {
                Ok(sent) => sent,
                Err(end) => break end,
            };
            let wake = stream.state.next_wake(now, sent_frame);
            woken_by = tokio::select! {
                _ = stop.cancelled() => return Attempt::Stopped,
                _ = tokio::time::sleep_until(wake.into()) => None,
                m = next_message(&mut stream.inbound) => Some(m),
            };
        };
        match end {
            Attempt::Finished => close_gracefully(stream).await,
            end => end,
        }
    }

    /// RegisterTrainingSession on a fresh connection: the one a dead stream
    /// ran on may be dead too (a black hole keeps a TCP connection open for
    /// minutes).
    async fn register(
        &self,
        stop: &CancellationToken,
    ) -> Result<(MetricsServiceClient<Channel>, Registration), Attempt> {
        let failed = |error: StreamError| {
            Attempt::Failed(Failure {
                error,
                healthy: false,
            })
        };
        let channel =
            super::channel::connect_lazy(&self.ctx.settings).map_err(|e| failed(e.into()))?;
        let mut client = super::channel::client(&channel, MAX_MESSAGE_BYTES);
        let info = messages::session_info(&self.id, &self.config);
        let timeout = super::channel::CONNECT_TIMEOUT * 2;
        let registered = tokio::select! {
            _ = stop.cancelled() => return Err(Attempt::Stopped),
            r = tokio::time::timeout(timeout, client.register_training_session(self.with_token(info))) => r,
        };
        let resp = match registered {
            Err(_) => return Err(failed(StreamError::RegistrationTimeout(timeout))),
            Ok(Err(status)) => return Err(failed(StreamError::Registration(status))),
            Ok(Ok(r)) => r.into_inner(),
        };
        if !resp.success {
            return Err(failed(StreamError::Refused(resp.message)));
        }
        let reg = Registration {
            negotiated: Negotiated::from_server(&resp.server_config.unwrap_or_default()),
            last_event_seq: resp.last_event_seq,
            last_point_seq: resp.last_point_seq,
            accepts_scalars: resp.accepts_scalars,
            resumed: resp.resumed,
        };
        Ok((client, reg))
    }

    /// Starts the StreamMetrics call (it opens in the loop).
    fn open(&self, mut client: MetricsServiceClient<Channel>, reg: &Registration) -> Stream {
        let (out, out_rx) = mpsc::channel(OUT_QUEUE);
        let request = self.with_token(ReceiverStream::new(out_rx));
        let opening: Opening = Box::pin(async move { client.stream_metrics(request).await });
        let n = &reg.negotiated;
        tracing::info!(
            session = %self.id,
            resumed = reg.resumed,
            last_event_seq = reg.last_event_seq,
            last_point_seq = reg.last_point_seq,
            scalars = reg.accepts_scalars,
            heartbeat_ms = n.heartbeat.as_millis() as u64,
            max_images = n.max_images,
            max_dim = n.max_dim,
            "stream open"
        );
        let s = &self.ctx.settings;
        let state = StreamState::new(
            n,
            s.max_fps,
            s.liveness_intervals,
            s.telemetry.interval,
            reg.last_event_seq,
            reg.last_point_seq,
            Instant::now(),
        );
        Stream {
            negotiated: reg.negotiated,
            out,
            opening: Some(opening),
            inbound: None,
            state,
            scalars: reg.accepts_scalars,
        }
    }

    /// One time round the loop, in the module doc's order; returns whether
    /// a frame went. `Err` ends the attempt.
    async fn round(
        &mut self,
        st: &mut Stream,
        now: Instant,
        woken_by: Option<Answer>,
    ) -> Result<bool, Attempt> {
        st.poll_open().await?;
        // Answers from the server, without waiting.
        let mut next = woken_by;
        loop {
            let answer = match next.take() {
                Some(a) => a,
                None => match st.try_answer().await {
                    Some(a) => a,
                    None => break,
                },
            };
            self.on_answer(st, now, answer)?;
        }
        self.deliver_commands();
        let (events, points) = st.state.rewind_stalled(now, st.scalars);
        if events {
            tracing::warn!(session = %self.id, acked = st.state.cursor.acked, "event acks stalled; resending from the last ack");
            self.reader.seek_events(st.state.cursor.acked);
        }
        if points {
            tracing::warn!(session = %self.id, acked = st.state.points.acked, "point acks stalled; resending from the last ack");
            self.reader.seek_points(st.state.points.acked);
        }
        let writer_done = self.send_events(st)?;
        let points_done = self.send_points(st)?;
        // The trainer's newest batch, read once for this round.
        let progress = self.reader.progress();
        let last_publish = progress.map(|p| instant_at(now, p.mono_ns));
        let sent_frame = self.send_frame(st, now, last_publish).await;
        if let Some(e) = self.corrupt.take() {
            return Err(Attempt::Corrupt(e));
        }
        self.send_heartbeat(st, now);
        self.observe(progress);
        if st.state.figures_due(now) {
            let req = self.performance();
            // Figures are replaced by the next ones: never worth waiting.
            let _ = st.out.try_send(req);
        }
        if let Some(silence) = st.state.liveness.dead(now) {
            return Err(st.fail(silence));
        }
        if writer_done && points_done {
            self.writer_gone(st, now, last_publish)?;
        }
        Ok(sent_frame)
    }

    /// A message from the server: acks advance the event cursor and are
    /// written back to the segment, commands go into the control ring.
    fn on_answer(&mut self, st: &mut Stream, now: Instant, answer: Answer) -> Result<(), Attempt> {
        let resp = match answer {
            Ok(Some(r)) => r,
            Ok(None) => return Err(st.fail(StreamError::ServerEnded)),
            Err(status) => return Err(st.fail(StreamError::Stream(status))),
        };
        let hb = matches!(&resp.payload, Some(metrics_response::Payload::Ack(a)) if a.kind == AckKind::Heartbeat as i32);
        st.state.on_response(Instant::now(), hb);
        let took = match &resp.payload {
            Some(metrics_response::Payload::Ack(a)) => a.success,
            Some(metrics_response::Payload::Command(_)) => true,
            _ => false,
        };
        if took {
            st.state.on_ack(now);
        }
        match resp.payload {
            Some(metrics_response::Payload::Ack(a)) => match AckKind::try_from(a.kind) {
                Ok(AckKind::Batch) => AgentStats::add(&self.ctx.stats.frames_acked, 1),
                Ok(AckKind::Event) => return self.on_event_ack(st, a.event_seq),
                Ok(AckKind::Scalars) if st.scalars => self.on_points_ack(st, a.point_seq),
                _ => {}
            },
            Some(metrics_response::Payload::Command(cmd)) => self.queue_command(cmd),
            Some(metrics_response::Payload::Error(e)) => {
                match ErrorCode::try_from(e.code).unwrap_or(ErrorCode::UnknownError) {
                    ErrorCode::InvalidSession => {
                        return Err(st.fail(StreamError::SessionLost(e.message)))
                    }
                    ErrorCode::BufferFull => {
                        AgentStats::add(&self.ctx.stats.buffer_full, 1);
                        // An event the server could not take is resent.
                        st.state.on_buffer_full(now);
                        self.reader.seek_events(st.state.cursor.acked);
                        self.reader.seek_points(st.state.points.acked);
                    }
                    _ => self.log_fault(&e.message),
                }
            }
            None => {}
        }
        Ok(())
    }

    /// Every event up to `seq` is applied; once that includes the final
    /// status this agent made up, the run is finished.
    fn on_event_ack(&mut self, st: &mut Stream, seq: u64) -> Result<(), Attempt> {
        let cursor = &mut st.state.cursor;
        let before = cursor.acked;
        let newly = cursor.acknowledge(seq);
        if cursor.acked > before {
            AgentStats::add(&self.ctx.stats.events_acked, newly);
            // The final status this agent made up is not in the ring;
            // record only what the ring holds.
            let in_ring = cursor.acked.min(self.reader.events_written());
            if let Err(e) = self.reader.ack_events(in_ring) {
                tracing::warn!(session = %self.id, error = %e, "cannot record acknowledged events in the segment");
            }
        }
        match &self.final_status {
            Some((seq, _)) if cursor.acked >= *seq => Err(Attempt::Finished),
            _ => Ok(()),
        }
    }

    /// The next events, every one and in order, a bounded window ahead of
    /// the acknowledgements; returns whether the ring has no more now.
    fn send_events(&mut self, st: &mut Stream) -> Result<bool, Attempt> {
        while st.state.cursor.may_send() && st.out.capacity() > 0 {
            match self.reader.next_event() {
                Ok(Some(EventRead::Event {
                    seq,
                    timestamp_unix_ns,
                    event,
                })) => {
                    let ts = timestamp_unix_ns / 1_000_000;
                    let payload = messages::event_payload(&event, ts);
                    let mut req = self.request(payload, ts, seq);
                    req.events_missed_before = st.state.cursor.missed_before(seq);
                    st.send(req)?;
                    st.state.cursor.sent(seq);
                    AgentStats::add(&self.ctx.stats.events_sent, 1);
                }
                Ok(Some(EventRead::Missed { first, count })) => {
                    AgentStats::add(&self.ctx.stats.events_missed, count);
                    tracing::error!(session = %self.id, first, count, "events overwritten in the segment before they were read (the event ring was lapped)");
                    st.state.cursor.skip(first, count);
                }
                Ok(None) => return Ok(true),
                Err(e) if e.corrupts_run() => return Err(Attempt::Corrupt(e)),
                Err(e) => {
                    // Skipped for good: announced like a lapped one, or the
                    // server would wait for it forever.
                    self.log_fault(&format!("unreadable event skipped: {e}"));
                    AgentStats::add(&self.ctx.stats.events_missed, 1);
                    st.state.cursor.skip(self.reader.events_read(), 1);
                }
            }
        }
        Ok(false)
    }

    /// Every point up to `seq` is committed: recorded in the segment, so a
    /// restarted agent resumes after it.
    fn on_points_ack(&mut self, st: &mut Stream, seq: u64) {
        let newly = st.state.points.acknowledge(seq);
        if newly > 0 {
            AgentStats::add(&self.ctx.stats.points_acked, newly);
        }
        let in_ring = st.state.points.acked.min(self.reader.points_written());
        if let Err(e) = self.reader.ack_points(in_ring) {
            tracing::warn!(session = %self.id, error = %e, "cannot record acknowledged points in the segment");
        }
    }

    /// The next scalar points, every one and in order, in batches of up to
    /// [`POINTS_PER_BATCH`], a bounded window ahead of the acknowledgements;
    /// returns whether none are left to send now (always, to a server that
    /// takes none).
    fn send_points(&mut self, st: &mut Stream) -> Result<bool, Attempt> {
        if !st.scalars {
            return Ok(true);
        }
        while st.state.points.may_send() && st.out.capacity() > 0 {
            let room = st.state.points.max_in_flight - st.state.points.in_flight();
            let max = POINTS_PER_BATCH.min(room as usize);
            self.points.clear();
            match self.reader.next_points(&mut self.points, max) {
                Ok(PointsRead::Points(0)) => return Ok(true),
                Ok(PointsRead::Points(n)) => {
                    let first = self.points[0].seq;
                    let last = self.points[n - 1].seq;
                    let missed = st.state.points.missed_before(first);
                    let payload = messages::scalar_batch(&self.points, missed);
                    st.send(self.request(payload, proto::now_ms(), 0))?;
                    st.state.points.sent(last);
                    AgentStats::add(&self.ctx.stats.points_sent, n as u64);
                }
                Ok(PointsRead::Missed { first, count }) => {
                    AgentStats::add(&self.ctx.stats.points_missed, count);
                    tracing::error!(session = %self.id, first, count, "scalar points overwritten in the segment before they were read (the points ring was lapped)");
                    st.state.points.skip(first, count);
                }
                Err(e) if e.corrupts_run() => return Err(Attempt::Corrupt(e)),
                Err(e) => {
                    self.log_fault(&format!("unreadable scalar point skipped: {e}"));
                    AgentStats::add(&self.ctx.stats.points_missed, 1);
                    let (_, at, _) = self.reader.point_positions();
                    st.state.points.skip(at, 1);
                }
            }
        }
        Ok(false)
    }

    /// The newest frame, when the pacer allows one published when the
    /// trainer's newest batch was (`last_publish`); returns whether one went.
    async fn send_frame(
        &mut self,
        st: &mut Stream,
        now: Instant,
        last_publish: Option<Instant>,
    ) -> bool {
        if !st.state.pacer.ready(last_publish.unwrap_or(now)) {
            return false;
        }
        // The frame copy may grow only into what the agent's frame memory
        // has left; one that does not fit is refused before it is copied.
        let held = self.frame.data_capacity();
        let free = self
            .ctx
            .settings
            .frame_memory
            .saturating_sub(self.ctx.frame_bytes.load(Relaxed));
        self.frame.set_max_data(held + free);
        let read = self.reader.latest_frame(&mut self.frame);
        let grown = self.frame.data_capacity().saturating_sub(held);
        if grown > 0 {
            self.ctx.frame_bytes.fetch_add(grown, Relaxed);
        }
        match read {
            Ok(FrameRead::New) => {
                AgentStats::add(&self.ctx.stats.frames_read, 1);
                let published = instant_at(now, self.frame.mono_ns);
                st.state.frames.on_frame(published, now);
                if st.out.capacity() == 0 {
                    AgentStats::add(&self.ctx.stats.frames_dropped, 1);
                    return false;
                }
                let n = st.negotiated;
                let Some(req) = self.encode(n.max_images, n.max_dim).await else {
                    AgentStats::add(&self.ctx.stats.frames_dropped, 1);
                    return false;
                };
                if st.out.try_send(req).is_err() {
                    AgentStats::add(&self.ctx.stats.frames_dropped, 1);
                    return false;
                }
                st.state.pacer.sent(published);
                st.state.liveness.on_batch_sent(Instant::now());
                AgentStats::add(&self.ctx.stats.frames_sent, 1);
                true
            }
            Ok(_) => false,
            Err(e) if e.corrupts_run() => {
                self.corrupt = Some(e);
                false
            }
            Err(e) => {
                AgentStats::add(&self.ctx.stats.frames_dropped, 1);
                self.log_fault(&format!("unreadable frame skipped: {e}"));
                false
            }
        }
    }

    /// A heartbeat when due, or at once when there is news of commands (one
    /// written into the segment, or applied by the trainer); it also tells
    /// the trainer the agent is there.
    fn send_heartbeat(&mut self, st: &mut Stream, now: Instant) {
        let applied = self.applied_command();
        let news = !self.unreported.is_empty() || applied != self.applied_reported;
        if !st.state.heartbeat_due(now) && !news {
            return;
        }
        self.heartbeat_seq = self.heartbeat_seq.wrapping_add(1);
        let report = self.unreported.clone();
        let payload = messages::heartbeat(self.heartbeat_seq, report, applied);
        let req = self.request(payload, proto::now_ms(), 0);
        if st.out.try_send(req).is_ok() {
            st.state.liveness.on_heartbeat_sent(now);
            self.unreported.clear();
            self.applied_reported = applied;
        }
        self.reader.touch();
    }

    /// The id of the newest command the trainer has applied, as far as this
    /// agent knows the ring's ids (0: none).
    fn applied_command(&self) -> u64 {
        let applied = self.reader.commands_applied();
        self.delivered
            .iter()
            .rev()
            .find(|&&(seq, _)| seq <= applied)
            .map_or(self.applied_reported, |&(_, id)| id)
    }

    /// A writer gone for good, with every event sent and acknowledged:
    /// ends the session, with a final status if the trainer left none.
    fn writer_gone(
        &mut self,
        st: &mut Stream,
        now: Instant,
        last_publish: Option<Instant>,
    ) -> Result<(), Attempt> {
        if let Some((seq, req)) = &self.final_status {
            // A rewind (stalled acks) went back past the made-up final
            // status, which is not in the ring: send it again, now that
            // the ring's events before it are out again.
            if st.state.cursor.next <= *seq {
                let (seq, req) = (*seq, req.clone());
                st.send(req)?;
                st.state.cursor.sent(seq);
            }
            return Ok(());
        }
        if st.state.cursor.in_flight() != 0
            || st.state.points.in_flight() != 0
            || !st
                .state
                .writer_check_due(now, last_publish, || self.reader.writer_closed())
        {
            return Ok(());
        }
        let acked = st.state.cursor.acked;
        match self.reader.writer_state(shm::IDLE_AFTER_NS) {
            // The writer may have published its last events and points
            // (and closed) after the reads found none: only end once every
            // one it wrote is acknowledged (or lost, past the last one
            // sent). Read after the state, so nothing can be written after
            // this check.
            state @ (WriterState::Closed | WriterState::Dead)
                if self.reader.events_written() <= acked
                    && (!st.scalars || st.state.points.next > self.reader.points_written()) =>
            {
                tracing::info!(session = %self.id, ?state, events = acked, "trainer is gone; ending the run");
                // The run's last figures (every batch counted).
                self.observe_progress();
                let _ = st.out.try_send(self.performance());
                let Some((seq, req)) = self.final_status_request(state, acked) else {
                    return Err(Attempt::Finished);
                };
                st.send(req.clone())?;
                st.state.cursor.sent(seq);
                self.final_status = Some((seq, req));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Converts and encodes the frame just read on a blocking thread and
    /// builds its BatchData; `None` when it cannot be sent (counted).
    async fn encode(&mut self, max_images: usize, max_dim: u32) -> Option<MetricsRequest> {
        let started = Instant::now();
        let mut frame = std::mem::take(&mut self.frame);
        let mut encoded = std::mem::take(&mut self.encoded);
        let small = frame.images.as_ref().is_some_and(|d| {
            u64::from(d.count.min(max_images as u32)) * u64::from(d.width) * u64::from(d.height)
                <= INLINE_PIXELS
        });
        let result = if small {
            encode_frame(
                &self.ctx.pipeline,
                &frame,
                max_images,
                max_dim,
                &mut encoded,
            )
        } else {
            let pipeline = self.ctx.pipeline.clone();
            let joined = tokio::task::spawn_blocking(move || {
                let result = encode_frame(&pipeline, &frame, max_images, max_dim, &mut encoded);
                (frame, encoded, result)
            })
            .await;
            match joined {
                Ok((f, e, result)) => {
                    (frame, encoded) = (f, e);
                    result
                }
                Err(e) => {
                    self.log_fault(&format!("frame encoder failed: {e}"));
                    return None;
                }
            }
        };
        AgentStats::add(
            &self.ctx.stats.encode_us,
            started.elapsed().as_micros() as u64,
        );
        self.frame = frame;
        if let Err(e) = result {
            self.encoded = encoded;
            if !e.is_transient() {
                self.log_fault(&format!("frame {} not encoded: {e}", self.frame.frame_no));
            }
            return None;
        }
        let (batch, bytes) = messages::batch_data(&self.frame, &mut encoded);
        self.encoded = encoded;
        AgentStats::add(&self.ctx.stats.image_bytes_sent, bytes);
        let ts = self.frame.timestamp_unix_ns / 1_000_000;
        Some(self.request(Payload::BatchData(batch), ts, 0))
    }

    /// Feeds the rate tracker the trainer's newest batch (every batch
    /// counts, copied or not), read now.
    fn observe_progress(&mut self) {
        self.observe(self.reader.progress());
    }

    /// Feeds the rate tracker `progress`, the trainer's newest batch.
    fn observe(&mut self, progress: Option<shm::Progress>) {
        if let Some(p) = progress {
            self.fps.observe(
                shm::monotonic_ns(),
                BatchSample {
                    published: self.reader.batches_published(),
                    epoch: p.epoch,
                    batch_idx: p.batch_idx,
                    publish_ns: p.mono_ns,
                },
            );
        }
    }

    /// PerformanceData: rates and ETA from the tracker, resource figures of
    /// the device and the trainer process (absent ones marked absent).
    fn performance(&mut self) -> MetricsRequest {
        let perf = self
            .fps
            .performance(shm::monotonic_ns(), RunTotals::from(&self.config));
        let pid = self.reader.header().writer_pid;
        let sample = match self.ctx.sampler.lock() {
            Ok(mut s) => {
                let mut sample = s.sample(Some(pid));
                // A trainer that just exited (the run's final figures are
                // taken after it closed the segment) keeps the CPU and
                // memory it was last seen with.
                match (sample.process_cpu_percent, sample.process_memory_mb) {
                    (None, None) => {
                        (sample.process_cpu_percent, sample.process_memory_mb) =
                            self.trainer_last_seen;
                    }
                    seen => self.trainer_last_seen = seen,
                }
                Some(sample)
            }
            Err(_) => None,
        };
        let ts = proto::now_ms();
        let payload = messages::performance(&perf, sample.as_ref().map(Into::into), ts);
        self.request(payload, ts, 0)
    }

    fn queue_command(&mut self, mut cmd: ControlCommand) {
        let id = cmd.command_id;
        if id > 0 && self.delivered.iter().any(|&(_, d)| d == id) {
            // Sent again: the stream that carried it ended before the server
            // heard it was delivered. Tell it again; never write it twice.
            if !self.unreported.contains(&id) {
                self.report_delivered(id);
            }
            return;
        }
        if id > 0 && self.commands.iter().any(|c| c.command_id == id) {
            return;
        }
        if cmd.r#type() == CommandType::StopTraining
            && !cmd.parameters.contains_key("grace_period_s")
        {
            cmd.parameters.insert(
                "grace_period_s".into(),
                format!("{}", self.ctx.settings.stop_grace.as_secs_f64()),
            );
        }
        if self.commands.len() == PENDING_COMMANDS {
            self.commands.pop_front();
            tracing::warn!(session = %self.id, "trainer is not taking commands; oldest dropped");
        }
        self.commands.push_back(cmd);
    }

    /// Notes a delivered command id for the next heartbeat (at most what
    /// one heartbeat may carry: the oldest go first).
    fn report_delivered(&mut self, id: u64) {
        if self.unreported.len() == REPORTED_MAX {
            self.unreported.remove(0);
        }
        self.unreported.push(id);
    }

    /// Writes waiting commands into the segment's control ring.
    fn deliver_commands(&mut self) {
        while let Some(cmd) = self.commands.front() {
            let Some(kind) = messages::command_kind(cmd.r#type()) else {
                self.commands.pop_front();
                continue;
            };
            let id = cmd.command_id.to_string();
            let mut params: Vec<(&str, &str)> = cmd
                .parameters
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            params.push(("command_id", &id));
            match self.reader.send_command(kind, &params) {
                Ok(SendOutcome::Sent(seq)) => {
                    let command_id = cmd.command_id;
                    AgentStats::add(&self.ctx.stats.commands_delivered, 1);
                    tracing::info!(session = %self.id, command = kind.name(), command_id, "command written for the trainer");
                    self.commands.pop_front();
                    if self.delivered.len() == DELIVERED_KEPT {
                        self.delivered.pop_front();
                    }
                    self.delivered.push_back((seq, command_id));
                    if command_id > 0 {
                        self.report_delivered(command_id);
                    }
                }
                Ok(SendOutcome::Full) => break,
                Err(e) => {
                    tracing::warn!(session = %self.id, error = %e, "command not written; dropped");
                    self.commands.pop_front();
                }
            }
        }
    }

    /// The status that ends a run whose writer left without one: FAILED
    /// when the process died, COMPLETED when it closed the segment.
    fn final_status_request(
        &self,
        state: WriterState,
        acked: u64,
    ) -> Option<(u64, MetricsRequest)> {
        if matches!(
            self.reader.last_status(),
            Some(shm::TrainingStatus::Completed | shm::TrainingStatus::Failed)
        ) {
            return None;
        }
        // Numbered after the ring's last event, so a restarted agent makes up
        // the same number and the server applies it once.
        let seq = self.reader.events_written().max(acked) + 1;
        let ts = proto::now_ms();
        let req = self.request(messages::final_status(state, ts), ts, seq);
        Some((seq, req))
    }

    /// Logs a fault once per kind (digits stripped), counts every one.
    fn log_fault(&mut self, message: &str) {
        AgentStats::add(&self.ctx.stats.invalid_data, 1);
        let kind: String = message
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .take(80)
            .collect();
        if self.faults_logged.len() < LOGGED_FAULT_KINDS && self.faults_logged.insert(kind) {
            tracing::warn!(session = %self.id, fault = message, "fault (logged once per kind)");
        }
    }
}

/// `now` moved back to CLOCK_MONOTONIC time `mono_ns` (a publish time of
/// the trainer's; `Instant` runs on the same clock).
fn instant_at(now: Instant, mono_ns: u64) -> Instant {
    let age = shm::monotonic_ns().saturating_sub(mono_ns);
    now.checked_sub(Duration::from_nanos(age)).unwrap_or(now)
}

/// Converts and encodes the images of `frame` into `encoded`.
fn encode_frame(
    pipeline: &FramePipeline,
    frame: &shm::Frame,
    max_images: usize,
    max_dim: u32,
    encoded: &mut EncodedBatch,
) -> Result<(), crate::frame::FrameError> {
    match &frame.images {
        Some(desc) => {
            pipeline.encode_batch_into(desc, frame.image_bytes(), max_images, max_dim, encoded)
        }
        None => {
            encoded.clear();
            Ok(())
        }
    }
}

/// The next message of the server's answer stream; never, without one.
async fn next_message(inbound: &mut Option<Inbound>) -> Answer {
    match inbound {
        Some(stream) => stream.message().await,
        None => std::future::pending().await,
    }
}

/// Ends the request stream and waits (briefly) for the server to end its
/// answers, so what was queued last (the final figures) is delivered.
async fn close_gracefully(stream: Stream) -> Attempt {
    let Stream { out, inbound, .. } = stream;
    drop(out);
    if let Some(mut inbound) = inbound {
        let drain = async { while let Ok(Some(_)) = inbound.message().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    }
    Attempt::Finished
}

/// Whether `path` looks like a segment (not a temporary file of a writer
/// that is still creating one).
pub fn is_segment_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| !n.starts_with('.') && !n.ends_with(".tmp"))
}
