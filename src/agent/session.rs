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

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::health::AgentStats;
use super::link::{EventCursor, FrameClock, FramePacer, Liveness};
use crate::config::AgentSettings;
use crate::frame::{EncodedBatch, FramePipeline};
use crate::proto::{
    self, acknowledgment::AckKind, control_command::CommandType, error_response::ErrorCode,
    metrics_request::Payload, metrics_response, BatchData, ControlCommand, EpochData, Heartbeat,
    ImageData, MetricsRequest, Prediction, SessionInfo, StatusUpdate, TrainingConfig,
};
use crate::shm::{
    self, CommandKind, Event, EventRead, FrameRead, Reader, SendOutcome, WriterState,
};
use crate::telemetry::{BatchSample, FpsTracker, ResourceSampler, RunTotals};

/// Events sent ahead of the server's acknowledgements.
const EVENT_WINDOW: u64 = 64;
/// Messages queued for the stream; a frame that finds it full is dropped.
const OUT_QUEUE: usize = 32;
/// Commands waiting for room in the segment's control ring.
const PENDING_COMMANDS: usize = 32;
/// The shortest sleep of the loop, and the longest (events, a writer gone).
const POLL_ACTIVE: Duration = Duration::from_millis(1);
const POLL_IDLE: Duration = Duration::from_millis(10);
/// A writer silent this long counts as idle, not live (for reporting).
const IDLE_AFTER_NS: u64 = 5_000_000_000;
/// How often a finished-looking run whose trainer has not published within
/// this long (and has not closed the segment) asks whether the writer
/// died: a read of /proc, which on every loop was a quarter of the agent's
/// CPU. A batch published within it shows the writer alive.
const WRITER_CHECK: Duration = Duration::from_millis(100);
/// Batches of at most this many pixels (16 x 64x64) are encoded on the
/// session's own task: a fraction of a millisecond, less than the hand-off
/// to a blocking thread and back costs. Larger ones go to a blocking thread.
const INLINE_PIXELS: u64 = crate::frame::SERIAL_PIXELS;
/// Kinds of INVALID_DATA logged per session; later ones are only counted.
const LOGGED_FAULT_KINDS: usize = 32;

/// What every session shares.
pub struct SessionContext {
    pub settings: Arc<AgentSettings>,
    pub pipeline: Arc<FramePipeline>,
    pub stats: Arc<AgentStats>,
    /// One sampler for the device; each session asks it about its trainer.
    pub sampler: std::sync::Mutex<ResourceSampler>,
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

/// Why one connection attempt ended.
enum Attempt {
    Finished,
    Stopped,
    /// Reconnect after a backoff; `healthy` when the stream had worked.
    Failed {
        reason: String,
        healthy: bool,
    },
}

/// The session id of a run: the device, the run's name and the writer's
/// start time, so a run name reused later is a new session, while an agent
/// restart finds the same one.
pub fn session_id(device_id: &str, run_name: &str, writer_start_unix_ns: u64) -> String {
    let run: String = run_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let device: String = device_id.chars().take(48).collect();
    format!("{device}:{run}:{}", writer_start_unix_ns / 1_000_000_000)
}

pub fn training_config(c: &shm::RunConfig) -> TrainingConfig {
    TrainingConfig {
        total_epochs: c.total_epochs,
        batches_per_epoch: c.batches_per_epoch,
        batch_size: c.batch_size,
        model_name: c.model_name.clone(),
        dataset_name: c.dataset_name.clone(),
        class_names: c.class_names.clone(),
    }
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
            Attempt::Failed { reason, healthy } => {
                if healthy {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                s.ctx.stats.reconnects.fetch_add(1, Relaxed);
                tracing::warn!(
                    session = %s.id,
                    %reason,
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

struct Session {
    id: String,
    reader: Reader,
    ctx: Arc<SessionContext>,
    config: TrainingConfig,
    frame: shm::Frame,
    encoded: EncodedBatch,
    commands: VecDeque<ControlCommand>,
    faults_logged: HashSet<String>,
    heartbeat_seq: u32,
    fps: FpsTracker,
    /// The trainer's CPU percent and memory when last read.
    trainer_last_seen: (Option<f32>, Option<f32>),
    /// The final status this agent made up for a writer that went away
    /// without one, once sent: (event_seq, request).
    final_status: Option<(u64, MetricsRequest)>,
}

impl Session {
    fn new(reader: Reader, ctx: Arc<SessionContext>) -> Session {
        let info = reader.header();
        let id = session_id(
            &ctx.settings.device_id,
            &reader.config().run_name,
            info.writer_start_unix_ns,
        );
        let config = training_config(reader.config());
        Session {
            id,
            reader,
            config,
            frame: shm::Frame::default(),
            encoded: EncodedBatch::with_capacity(crate::frame::MAX_IMAGES_LIMIT),
            commands: VecDeque::new(),
            faults_logged: HashSet::new(),
            heartbeat_seq: 0,
            fps: FpsTracker::new(ctx.settings.telemetry.fps_window),
            trainer_last_seen: (None, None),
            final_status: None,
            ctx,
        }
    }

    fn request(&self, payload: Payload, timestamp_ms: u64, event_seq: u64) -> MetricsRequest {
        MetricsRequest {
            session_id: self.id.clone(),
            timestamp_ms,
            payload: Some(payload),
            event_seq,
        }
    }

    /// Registers, streams until something ends the stream, and says why.
    async fn attempt(&mut self, stop: &CancellationToken) -> Attempt {
        let settings = self.ctx.settings.clone();
        // A fresh connection per attempt: the one a dead stream ran on may be
        // dead too (a black hole keeps a TCP connection open for minutes).
        let channel = match super::channel::connect_lazy(&settings) {
            Ok(c) => c,
            Err(e) => return failed(&e.to_string(), false),
        };
        let mut client = super::channel::client(&channel, 64 << 20);
        let info = SessionInfo {
            session_id: self.id.clone(),
            client_name: "trainwatch-agent".into(),
            client_version: env!("CARGO_PKG_VERSION").into(),
            config: Some(self.config.clone()),
            timestamp_ms: proto::now_ms(),
        };
        let registered = tokio::select! {
            _ = stop.cancelled() => return Attempt::Stopped,
            r = tokio::time::timeout(super::channel::CONNECT_TIMEOUT * 2, client.register_training_session(info)) => r,
        };
        let resp = match registered {
            Err(_) => return failed("registration timed out", false),
            Ok(Err(status)) => return failed(&format!("registration failed: {status}"), false),
            Ok(Ok(r)) => r.into_inner(),
        };
        if !resp.success {
            return failed(&format!("registration refused: {}", resp.message), false);
        }
        let sc = resp.server_config.unwrap_or_default();
        let heartbeat = Duration::from_millis(u64::from(if sc.heartbeat_interval_ms == 0 {
            2000
        } else {
            sc.heartbeat_interval_ms.clamp(100, 600_000)
        }));
        let max_images = if sc.max_batch_size == 0 {
            16
        } else {
            sc.max_batch_size as usize
        };
        let max_dim = sc.max_image_dimension;

        let mut cursor = EventCursor::resume(resp.last_event_seq, EVENT_WINDOW);
        self.reader.seek_events(cursor.acked);
        if let Some((seq, _)) = &self.final_status {
            if resp.last_event_seq >= *seq {
                return Attempt::Finished;
            }
        }

        let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
        // Opened in the loop, not awaited here: a grpcio server (the seed's)
        // sends its response headers only with its first answer, which comes
        // only after our first batch.
        let mut opening = Some(Box::pin(client.stream_metrics(ReceiverStream::new(out_rx))));
        let mut inbound: Option<tonic::Streaming<proto::MetricsResponse>> = None;
        tracing::info!(
            session = %self.id,
            resumed = resp.resumed,
            last_event_seq = resp.last_event_seq,
            heartbeat_ms = heartbeat.as_millis() as u64,
            max_images,
            max_dim,
            "stream open"
        );

        let now = Instant::now();
        let window = heartbeat * settings.liveness_intervals;
        let mut liveness = Liveness::new(window, now);
        let mut pacer = FramePacer::new(settings.max_fps, now);
        let mut next_heartbeat = now;
        let mut next_performance = now + settings.telemetry.interval;
        let mut frames = FrameClock::default();
        let mut next_writer_check = now;
        // A server message that ended the wait at the bottom of the loop.
        let mut woken_by = None;
        let mut healthy = false;

        loop {
            let now = Instant::now();
            // Answers from the server, without waiting.
            if let Some(fut) = opening.as_mut() {
                let polled = tokio::select! {
                    biased;
                    r = fut => Some(r),
                    _ = std::future::ready(()) => None,
                };
                match polled {
                    Some(Ok(r)) => {
                        inbound = Some(r.into_inner());
                        opening = None;
                    }
                    Some(Err(status)) => {
                        return failed(&format!("opening the stream failed: {status}"), false)
                    }
                    None => {}
                }
            }
            loop {
                let msg = match woken_by.take() {
                    Some(m) => m,
                    None => {
                        let Some(stream) = inbound.as_mut() else {
                            break;
                        };
                        tokio::select! {
                            biased;
                            m = stream.message() => m,
                            _ = std::future::ready(()) => break,
                        }
                    }
                };
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return failed("the server ended the stream", healthy),
                    Err(status) => return failed(&format!("stream error: {status}"), healthy),
                };
                let hb = matches!(&resp.payload, Some(metrics_response::Payload::Ack(a)) if a.kind == AckKind::Heartbeat as i32);
                liveness.on_response(Instant::now(), hb);
                healthy = true;
                match resp.payload {
                    Some(metrics_response::Payload::Ack(a)) => match AckKind::try_from(a.kind) {
                        Ok(AckKind::Batch) => AgentStats::add(&self.ctx.stats.frames_acked, 1),
                        Ok(AckKind::Event) => {
                            let before = cursor.acked;
                            if cursor.on_ack(a.event_seq) {
                                AgentStats::add(
                                    &self.ctx.stats.events_acked,
                                    cursor.acked - before,
                                );
                                // The final status this agent made up is not in
                                // the ring; record only what the ring holds.
                                let in_ring = cursor.acked.min(self.reader.events_written());
                                if let Err(e) = self.reader.ack_events(in_ring) {
                                    tracing::warn!(session = %self.id, error = %e, "cannot record acknowledged events in the segment");
                                }
                            }
                            if let Some((seq, _)) = &self.final_status {
                                if cursor.acked >= *seq {
                                    return close_gracefully(out_tx, inbound).await;
                                }
                            }
                        }
                        _ => {}
                    },
                    Some(metrics_response::Payload::Command(cmd)) => self.queue_command(cmd),
                    Some(metrics_response::Payload::Error(e)) => {
                        match ErrorCode::try_from(e.code).unwrap_or(ErrorCode::UnknownError) {
                            ErrorCode::InvalidSession => {
                                return failed(
                                    &format!("server lost the session: {}", e.message),
                                    true,
                                )
                            }
                            ErrorCode::BufferFull => {
                                AgentStats::add(&self.ctx.stats.buffer_full, 1);
                                pacer.on_buffer_full(now);
                                // An event the server could not take is resent.
                                cursor = EventCursor::resume(cursor.acked, EVENT_WINDOW);
                                self.reader.seek_events(cursor.acked);
                            }
                            _ => self.log_fault(&e.message),
                        }
                    }
                    None => {}
                }
            }

            self.deliver_commands();

            // Events, every one and in order.
            let mut writer_done = false;
            while cursor.may_send() && out_tx.capacity() > 0 {
                match self.reader.next_event() {
                    Ok(Some(EventRead::Event {
                        seq,
                        timestamp_unix_ns,
                        event,
                    })) => {
                        let ts = timestamp_unix_ns / 1_000_000;
                        let payload = event_payload(&event, ts);
                        let req = self.request(payload, ts, seq);
                        if out_tx.try_send(req).is_err() {
                            return failed("the stream's send queue closed", healthy);
                        }
                        cursor.sent(seq);
                        AgentStats::add(&self.ctx.stats.events_sent, 1);
                    }
                    Ok(Some(EventRead::Missed { first, count })) => {
                        AgentStats::add(&self.ctx.stats.events_missed, count);
                        tracing::error!(session = %self.id, first, count, "events overwritten in the segment before they were read (the event ring was lapped)");
                        cursor.skip_to(first + count);
                    }
                    Ok(None) => {
                        writer_done = true;
                        break;
                    }
                    Err(e) => {
                        self.log_fault(&format!("unreadable event skipped: {e}"));
                    }
                }
            }

            // The trainer's newest batch, read once for this round.
            let progress = self.reader.progress();
            let last_publish = progress.map(|p| instant_at(now, p.mono_ns));

            let mut sent_frame = false;
            // The newest frame, when the pacer allows one published when
            // the trainer's newest batch was.
            if pacer.ready(last_publish.unwrap_or(now)) {
                match self.reader.latest_frame(&mut self.frame) {
                    Ok(FrameRead::New) => {
                        AgentStats::add(&self.ctx.stats.frames_read, 1);
                        let published = instant_at(now, self.frame.mono_ns);
                        frames.on_frame(published, now);
                        if out_tx.capacity() == 0 {
                            AgentStats::add(&self.ctx.stats.frames_dropped, 1);
                        } else {
                            match self.encode(max_images, max_dim).await {
                                Some(req) => {
                                    if out_tx.try_send(req).is_err() {
                                        AgentStats::add(&self.ctx.stats.frames_dropped, 1);
                                    } else {
                                        pacer.sent(published);
                                        sent_frame = true;
                                        liveness.on_batch_sent(Instant::now());
                                        AgentStats::add(&self.ctx.stats.frames_sent, 1);
                                    }
                                }
                                None => AgentStats::add(&self.ctx.stats.frames_dropped, 1),
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => self.log_fault(&format!("unreadable frame skipped: {e}")),
                }
            }

            if now >= next_heartbeat {
                next_heartbeat = now + heartbeat;
                self.heartbeat_seq = self.heartbeat_seq.wrapping_add(1);
                let hb = Payload::Heartbeat(Heartbeat {
                    timestamp_ms: proto::now_ms(),
                    sequence_number: self.heartbeat_seq,
                });
                let req = self.request(hb, proto::now_ms(), 0);
                if out_tx.try_send(req).is_ok() {
                    liveness.on_heartbeat_sent(now);
                }
                self.reader.touch();
            }

            self.observe(progress);
            if now >= next_performance {
                next_performance = now + settings.telemetry.interval;
                let req = self.performance();
                // Figures are replaced by the next ones: never worth waiting.
                let _ = out_tx.try_send(req);
            }

            if let Some(reason) = liveness.dead(now) {
                return failed(&reason, false);
            }

            // A writer gone for good, every event sent and acknowledged: end
            // the session, with a final status if the trainer left none.
            if writer_done
                && cursor.in_flight() == 0
                && self.final_status.is_none()
                && (self.reader.writer_closed()
                    || (now >= next_writer_check
                        && last_publish.is_none_or(|t| now - t >= WRITER_CHECK)))
            {
                next_writer_check = now + WRITER_CHECK;
                match self.reader.writer_state(IDLE_AFTER_NS) {
                    // The writer may have published its last events (and
                    // closed) after `next_event` found none: only end once
                    // every event it wrote is acknowledged. Read after the
                    // state, so nothing can be written after this check.
                    state @ (WriterState::Closed | WriterState::Dead)
                        if self.reader.events_written() <= cursor.acked =>
                    {
                        tracing::info!(session = %self.id, ?state, events = cursor.acked, "trainer is gone; ending the run");
                        // The run's last figures (every batch counted).
                        self.observe_progress();
                        let _ = out_tx.try_send(self.performance());
                        match self.final_status_request(state, cursor.acked) {
                            None => return close_gracefully(out_tx, inbound).await,
                            Some((seq, req)) => {
                                if out_tx.try_send(req.clone()).is_err() {
                                    return failed("the stream's send queue closed", healthy);
                                }
                                cursor.sent(seq);
                                self.final_status = Some((seq, req));
                            }
                        }
                    }
                    _ => {}
                }
            }

            // Sleep until something can be due: the next frame (the
            // trainer's usual gap after the last, and not before the pacer
            // takes one published then), a heartbeat, figures, a look
            // at events; a server message ends the wait at once. Right
            // after a frame went, a trainer faster than a millisecond a
            // batch may have the next one ready: no minimum sleep then.
            let mut wake = (now + POLL_IDLE).min(next_heartbeat).min(next_performance);
            if let Some(look) = frames.next_look(now) {
                wake = wake.min(look.max(pacer.next_due(now)));
            }
            let earliest = if sent_frame { now } else { now + POLL_ACTIVE };
            woken_by = tokio::select! {
                _ = stop.cancelled() => return Attempt::Stopped,
                _ = tokio::time::sleep_until(wake.max(earliest).into()) => None,
                m = next_message(&mut inbound) => Some(m),
            };
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
        let f = &self.frame;
        let samples = f.predictions().len();
        let n = if f.images.is_some() {
            encoded.len().min(samples)
        } else {
            0
        };
        let mut images = Vec::with_capacity(n);
        let mut bytes = 0u64;
        for img in encoded.drain().take(n) {
            bytes += img.bytes.len() as u64;
            images.push(ImageData::from(img));
        }
        encoded.clear();
        self.encoded = encoded;
        AgentStats::add(&self.ctx.stats.image_bytes_sent, bytes);
        let batch = BatchData {
            epoch: f.epoch,
            batch_idx: f.batch_idx,
            images,
            predictions: f.predictions()[..n]
                .iter()
                .zip(&f.confidences()[..n])
                .map(|(&c, &p)| Prediction {
                    predicted_class: c,
                    confidence: p,
                })
                .collect(),
            ground_truth: f.labels()[..n].to_vec(),
            batch_loss: f.loss,
        };
        let ts = f.timestamp_unix_ns / 1_000_000;
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
        let data = perf.to_proto(ts, sample.as_ref().map(Into::into));
        self.request(Payload::PerformanceData(data), ts, 0)
    }

    fn queue_command(&mut self, mut cmd: ControlCommand) {
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

    /// Writes waiting commands into the segment's control ring.
    fn deliver_commands(&mut self) {
        while let Some(cmd) = self.commands.front() {
            let kind = match cmd.r#type() {
                CommandType::PauseTraining => CommandKind::Pause,
                CommandType::ResumeTraining => CommandKind::Resume,
                CommandType::StopTraining => CommandKind::Stop,
                CommandType::AdjustBatchSize => CommandKind::AdjustBatchSize,
                CommandType::ChangeLearningRate => CommandKind::ChangeLearningRate,
                CommandType::UnknownCommand => {
                    self.commands.pop_front();
                    continue;
                }
            };
            let id = cmd.command_id.to_string();
            let mut params: Vec<(&str, &str)> = cmd
                .parameters
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            params.push(("command_id", &id));
            match self.reader.send_command(kind, &params) {
                Ok(SendOutcome::Sent(_)) => {
                    AgentStats::add(&self.ctx.stats.commands_delivered, 1);
                    tracing::info!(session = %self.id, command = kind.name(), command_id = cmd.command_id, "command written for the trainer");
                    self.commands.pop_front();
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
        let (status, message) = match state {
            WriterState::Dead => (proto::TrainingStatus::Failed, "trainer process exited"),
            _ => (proto::TrainingStatus::Completed, "trainer closed the run"),
        };
        // Numbered after the ring's last event, so a restarted agent makes up
        // the same number and the server applies it once.
        let seq = self.reader.events_written().max(acked) + 1;
        let ts = proto::now_ms();
        let req = self.request(
            Payload::StatusUpdate(StatusUpdate {
                status: status as i32,
                message: message.into(),
                config: None,
                timestamp_ms: ts,
            }),
            ts,
            seq,
        );
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
async fn next_message(
    inbound: &mut Option<tonic::Streaming<proto::MetricsResponse>>,
) -> Result<Option<proto::MetricsResponse>, tonic::Status> {
    match inbound {
        Some(stream) => stream.message().await,
        None => std::future::pending().await,
    }
}

/// Ends the request stream and waits (briefly) for the server to end its
/// answers, so what was queued last (the final figures) is delivered.
async fn close_gracefully(
    out_tx: mpsc::Sender<MetricsRequest>,
    inbound: Option<tonic::Streaming<proto::MetricsResponse>>,
) -> Attempt {
    drop(out_tx);
    if let Some(mut stream) = inbound {
        let drain = async { while let Ok(Some(_)) = stream.message().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    }
    Attempt::Finished
}

fn failed(reason: &str, healthy: bool) -> Attempt {
    Attempt::Failed {
        reason: reason.to_string(),
        healthy,
    }
}

fn event_payload(event: &Event, timestamp_ms: u64) -> Payload {
    match event {
        Event::Epoch {
            epoch,
            average_loss,
            average_accuracy,
        } => Payload::EpochData(EpochData {
            epoch: *epoch,
            average_loss: *average_loss,
            average_accuracy: *average_accuracy,
        }),
        Event::Status { status, message } => Payload::StatusUpdate(StatusUpdate {
            status: status_to_proto(*status) as i32,
            message: message.clone(),
            config: None,
            timestamp_ms,
        }),
    }
}

fn status_to_proto(s: shm::TrainingStatus) -> proto::TrainingStatus {
    match s {
        shm::TrainingStatus::Initializing => proto::TrainingStatus::Initializing,
        shm::TrainingStatus::Running => proto::TrainingStatus::Running,
        shm::TrainingStatus::Paused => proto::TrainingStatus::Paused,
        shm::TrainingStatus::Completed => proto::TrainingStatus::Completed,
        shm::TrainingStatus::Failed => proto::TrainingStatus::Failed,
        #[allow(unreachable_patterns)]
        _ => proto::TrainingStatus::Unknown,
    }
}

/// Whether `path` looks like a segment (not a temporary file of a writer
/// that is still creating one).
pub fn is_segment_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| !n.starts_with('.') && !n.ends_with(".tmp"))
}
