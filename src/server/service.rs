//! The gRPC MetricsService: registration and the metrics stream.
//!
//! Each StreamMetrics call gets a reader task that validates every message
//! and routes it by its own `session_id` (one stream may carry many
//! sessions). Faults are answered on the stream as ErrorResponse and the
//! stream goes on; only a transport error or the client closing ends it.

use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::identity::{self, Identity};
use super::registry::Registry;
use super::session::{Ingest, Reply, Session, MAX_REPORTED_COMMANDS};
use super::validate;
use crate::proto::{
    self, acknowledgment::AckKind, error_response::ErrorCode, metrics_request::Payload,
    metrics_response, Acknowledgment, ErrorResponse, MetricsRequest, MetricsResponse, ServerConfig,
    SessionInfo, SessionResponse,
};

pub struct Service {
    registry: Arc<Registry>,
    shutdown: CancellationToken,
    /// `agent_tokens`: each one an identity (see [`identity`]).
    tokens: Vec<String>,
}

impl Service {
    pub fn new(registry: Arc<Registry>, shutdown: CancellationToken, tokens: Vec<String>) -> Self {
        Service {
            registry,
            shutdown,
            tokens,
        }
    }

    fn server_config(&self) -> ServerConfig {
        let l = &self.registry.limits;
        ServerConfig {
            max_batch_size: l.max_batch_size,
            max_image_dimension: l.max_image_dimension,
            heartbeat_interval_ms: l.heartbeat_interval_ms,
            buffer_size: l.buffer_size,
        }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<MetricsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl proto::MetricsService for Service {
    type StreamMetricsStream = ResponseStream;

    async fn register_training_session(
        &self,
        request: Request<SessionInfo>,
    ) -> Result<Response<SessionResponse>, Status> {
        let who = identity::of(&request, &self.tokens)?;
        let info = request.into_inner();
        let refuse = |message: String| {
            tracing::warn!(session = %info.session_id, %message, "registration refused");
            Ok(Response::new(SessionResponse {
                success: false,
                session_id: info.session_id.clone(),
                message,
                server_config: Some(self.server_config()),
                ..Default::default()
            }))
        };
        if let Err(e) = validate::session_info(&info) {
            return refuse(e.0);
        }
        let reg = match self
            .registry
            .register(
                &info.session_id,
                &info.client_name,
                &info.client_version,
                info.config.clone(),
                who.as_ref(),
            )
            .await
        {
            Ok(r) => r,
            Err(e) => return refuse(e.to_string()),
        };
        tracing::info!(
            session = %info.session_id,
            client = %info.client_name,
            resumed = reg.resumed,
            last_event_seq = reg.last_event_seq,
            last_point_seq = reg.last_point_seq,
            "session registered"
        );
        Ok(Response::new(SessionResponse {
            success: true,
            session_id: info.session_id,
            message: if reg.resumed {
                format!("session resumed after event {}", reg.last_event_seq)
            } else {
                "session registered".to_string()
            },
            server_config: Some(self.server_config()),
            last_event_seq: reg.last_event_seq,
            resumed: reg.resumed,
            last_point_seq: reg.last_point_seq,
            accepts_scalars: true,
        }))
    }

    async fn stream_metrics(
        &self,
        request: Request<Streaming<MetricsRequest>>,
    ) -> Result<Response<Self::StreamMetricsStream>, Status> {
        let who = identity::of(&request, &self.tokens)?;
        let inbound = request.into_inner();
        // Room for one message's worth of answers per buffered message; the
        // apply tasks wait (never drop an ack) when the client reads slowly.
        let capacity = (self.registry.limits.buffer_size as usize).clamp(16, 4096);
        let (tx, rx) = mpsc::channel(capacity);
        let ended = CancellationToken::new();
        tokio::spawn(read_stream(
            self.registry.clone(),
            inbound,
            Reply::new(tx, ended.clone()),
            self.shutdown.clone(),
            who,
        ));
        // On shutdown the response stream ends even while an apply task
        // still holds a sender, so the graceful drain can finish; a stream
        // whose client stopped reading ends saying so.
        let shutdown = self.shutdown.clone();
        let end = ended.clone();
        let stop = async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = end.cancelled() => {}
            }
        };
        let why = futures_util::stream::once(async move {
            ended.is_cancelled().then(|| {
                Err(Status::resource_exhausted(format!(
                    "answers not read for {} s; stream ended (the session goes on: open a new stream)",
                    super::session::UNREAD_STREAM_LIMIT.as_secs()
                )))
            })
        })
        .filter_map(std::future::ready);
        Ok(Response::new(Box::pin(
            ReceiverStream::new(rx)
                .take_until(Box::pin(stop))
                .chain(why),
        )))
    }
}

fn response(session_id: &str, payload: metrics_response::Payload) -> MetricsResponse {
    MetricsResponse {
        session_id: session_id.to_string(),
        timestamp_ms: proto::now_ms(),
        payload: Some(payload),
    }
}

fn error(session_id: &str, code: ErrorCode, message: String) -> MetricsResponse {
    response(
        session_id,
        metrics_response::Payload::Error(ErrorResponse {
            code: code as i32,
            message,
        }),
    )
}

async fn read_stream(
    registry: Arc<Registry>,
    inbound: Streaming<MetricsRequest>,
    tx: Reply,
    shutdown: CancellationToken,
    who: Option<Identity>,
) {
    let mut attached = Vec::new();
    let stream = StreamCtx {
        registry: &registry,
        tx: &tx,
        who: who.as_ref(),
    };
    read_messages(&stream, inbound, &shutdown, &mut attached).await;
    for session in attached {
        session.detach(&tx);
    }
}

/// What every message of one stream is handled with: the sessions, the
/// stream's answers, and who is on the other end.
struct StreamCtx<'a> {
    registry: &'a Arc<Registry>,
    tx: &'a Reply,
    who: Option<&'a Identity>,
}

/// Reads until the client closes, the transport fails or the server stops;
/// `attached` collects the sessions this stream carried.
async fn read_messages(
    stream: &StreamCtx<'_>,
    mut inbound: Streaming<MetricsRequest>,
    shutdown: &CancellationToken,
    attached: &mut Vec<Arc<Session>>,
) {
    let tx = stream.tx;
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            m = inbound.message() => m,
        };
        let req = match msg {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(status) => {
                // A message that does not decode ends the stream in tonic;
                // say why before it goes.
                tracing::warn!(%status, "metrics stream ended by a transport or decode error");
                tx.try_send(error(
                    "",
                    ErrorCode::InvalidData,
                    format!("stream error: {}", status.message()),
                ));
                return;
            }
        };
        if let Some(answer) = handle(stream, req, attached) {
            if !tx.send(answer).await {
                return;
            }
        }
    }
}

/// Validates one request and routes it. Returns what to answer at once (an
/// error, or a heartbeat's ack); applied messages are acknowledged later by
/// the session's apply task.
fn handle(
    stream: &StreamCtx<'_>,
    req: MetricsRequest,
    attached: &mut Vec<Arc<Session>>,
) -> Option<MetricsResponse> {
    let (registry, tx) = (stream.registry, stream.tx);
    let sid = req.session_id.as_str();
    let Some(session) = registry.get(sid) else {
        return Some(error(
            sid,
            ErrorCode::InvalidSession,
            format!("session {sid:?} is not registered; call RegisterTrainingSession first"),
        ));
    };
    if !session.owned_by(stream.who) {
        return Some(error(
            sid,
            ErrorCode::InvalidSession,
            format!(
                "session {sid:?} was registered by another client; this stream may not act for it"
            ),
        ));
    }
    let now = proto::now_ms();
    session.touch(now);
    if session.attach(tx) && !attached.iter().any(|s| Arc::ptr_eq(s, &session)) {
        attached.push(session.clone());
    }
    let counters = &session.counters;
    let invalid = |message: String| {
        counters.messages_invalid.fetch_add(1, Relaxed);
        tracing::debug!(session = sid, %message, "invalid message");
        Some(error(sid, ErrorCode::InvalidData, message))
    };
    let seq = req.event_seq;
    let missed_before = req.events_missed_before;
    let item = match req.payload {
        None => return invalid("message has no payload".to_string()),
        Some(Payload::Heartbeat(hb)) => {
            counters.heartbeats.fetch_add(1, Relaxed);
            if hb.commands_delivered.len() > MAX_REPORTED_COMMANDS {
                return invalid(format!(
                    "heartbeat reports {} delivered commands; at most {MAX_REPORTED_COMMANDS}",
                    hb.commands_delivered.len()
                ));
            }
            if !hb.commands_delivered.is_empty() || hb.command_applied > 0 {
                let writes =
                    session.on_command_report(&hb.commands_delivered, hb.command_applied, now);
                if !writes.is_empty() {
                    // Rare (once per command): recorded beside the stream.
                    let registry = registry.clone();
                    tokio::spawn(async move {
                        for w in writes {
                            registry.record(w).await;
                        }
                    });
                }
            }
            return Some(response(
                sid,
                metrics_response::Payload::Ack(Acknowledgment {
                    success: true,
                    kind: AckKind::Heartbeat as i32,
                    heartbeat_sequence: hb.sequence_number,
                    ..Default::default()
                }),
            ));
        }
        Some(Payload::BatchData(batch)) => {
            if let Err(e) = validate::batch(&batch, &registry.limits, session.class_count()) {
                counters.batches_invalid.fetch_add(1, Relaxed);
                return invalid(e.0);
            }
            Ingest::Batch {
                batch,
                sent_ms: req.timestamp_ms,
                received_ms: now,
                received_us: super::latency::now_unix_us(),
                reply: tx.clone(),
            }
        }
        Some(Payload::EpochData(epoch)) => {
            let checked =
                validate::event_seq(seq, missed_before).and_then(|()| validate::epoch(&epoch));
            if let Err(e) = checked {
                return invalid(e.0);
            }
            Ingest::Epoch {
                epoch,
                seq,
                missed_before,
                reply: tx.clone(),
            }
        }
        Some(Payload::StatusUpdate(s)) => {
            match validate::event_seq(seq, missed_before).and_then(|()| validate::status(&s)) {
                Err(e) => return invalid(e.0),
                Ok(status) => Ingest::Status {
                    status,
                    message: s.message,
                    config: s.config,
                    timestamp_ms: s.timestamp_ms,
                    seq,
                    missed_before,
                    reply: tx.clone(),
                },
            }
        }
        Some(Payload::ScalarBatch(batch)) => {
            if let Err(e) = validate::scalar_batch(&batch) {
                return invalid(e.0);
            }
            Ingest::Scalars {
                batch,
                reply: tx.clone(),
            }
        }
        Some(Payload::PerformanceData(p)) => {
            if let Err(e) = validate::performance(&p) {
                return invalid(e.0);
            }
            Ingest::Performance(p)
        }
    };
    let sequenced = matches!(&item, Ingest::Epoch { .. } | Ingest::Status { .. });
    match session.enqueue(item) {
        Ok(()) => {
            if sequenced {
                counters.events_received.fetch_add(1, Relaxed);
            }
            None
        }
        Err(item) => {
            counters.buffer_full.fetch_add(1, Relaxed);
            let what = match &item {
                Ingest::Batch { batch, .. } => {
                    format!("batch {} of epoch {}", batch.batch_idx, batch.epoch)
                }
                Ingest::Epoch { epoch, .. } => format!("epoch {} summary", epoch.epoch),
                Ingest::Status { .. } => "status update".to_string(),
                Ingest::Scalars { batch, .. } => format!(
                    "scalar batch of {} points from {}",
                    batch.points.len(),
                    batch.first_seq
                ),
                Ingest::Performance(_) => "performance data".to_string(),
            };
            Some(error(
                sid,
                ErrorCode::BufferFull,
                format!(
                    "session {sid:?}: its buffer of {} messages is full; {what} was dropped, send less often",
                    registry.limits.buffer_size
                ),
            ))
        }
    }
}
