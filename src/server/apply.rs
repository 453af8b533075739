//! The apply task: one per session, it drains the session's queue in arrival
//! order into its [`SessionState`] and then acknowledges what it applied.
//!
//! Each kind of message has its own function that changes the state and
//! returns the acknowledgement it earns; sending that acknowledgement is a
//! separate step, taken only once the change is made. Issue 11's durable
//! store plugs in between the two, so that an event is acknowledged only
//! after it is committed. Events carry sequence numbers: a resent one
//! (already applied) is counted as a duplicate and acknowledged again.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::session::{Ingest, Reply, Session};
use super::state::{EpochRecord, Frame, LossPoint, SessionState, StatusRecord};
use crate::config::History;
use crate::proto::{
    self, acknowledgment::AckKind, metrics_response, Acknowledgment, BatchData, EpochData,
    MetricsResponse, TrainingConfig, TrainingStatus,
};

/// Drains one session's queue into its state and acknowledges what it
/// applied, until the session is evicted or the server shuts down.
pub(super) async fn run(session: Arc<Session>, mut rx: mpsc::Receiver<Ingest>, history: History) {
    loop {
        let item = tokio::select! {
            _ = session.closed() => return,
            item = rx.recv() => match item { Some(i) => i, None => return },
        };
        let applied = apply(&session, item, &history).await;
        session.changed();
        applied.acknowledge(&session).await;
    }
}

/// What applying one message leaves to do: its acknowledgement, if it earns
/// one, and the stream it goes back on.
struct Applied {
    reply: Option<Reply>,
    ack: Option<Acknowledgment>,
}

impl Applied {
    async fn acknowledge(self, session: &Session) {
        if let (Some(reply), Some(ack)) = (self.reply, self.ack) {
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

/// Applies one message under the session's state lock.
async fn apply(session: &Session, item: Ingest, history: &History) -> Applied {
    let mut st = session.state().write().await;
    let now = proto::now_ms();
    st.last_seen_ms = now;
    match item {
        Ingest::Batch {
            batch,
            sent_ms,
            received_ms,
            received_us,
            reply,
        } => Applied {
            ack: Some(apply_batch(
                session,
                &mut st,
                batch,
                sent_ms,
                received_ms,
                received_us,
            )),
            reply: Some(reply),
        },
        Ingest::Epoch { epoch, seq, reply } => Applied {
            ack: apply_epoch(session, &mut st, history, &epoch, seq, now),
            reply: Some(reply),
        },
        Ingest::Status {
            status,
            message,
            config,
            timestamp_ms,
            seq,
            reply,
        } => {
            let rec = StatusRecord {
                status,
                message,
                t_ms: if timestamp_ms > 0 { timestamp_ms } else { now },
            };
            Applied {
                ack: apply_status(session, &mut st, history, rec, config, seq),
                reply: Some(reply),
            }
        }
        Ingest::Performance(p) => {
            st.performance = Some(p);
            Applied {
                reply: None,
                ack: None,
            }
        }
    }
}

/// A batch: counted, its loss added to the series, and kept as the latest
/// frame. Every batch is acknowledged.
fn apply_batch(
    session: &Session,
    st: &mut SessionState,
    batch: BatchData,
    sent_ms: u64,
    received_ms: u64,
    received_us: u64,
) -> Acknowledgment {
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
    ack
}

/// An epoch summary with sequence number `seq`, received at `now`.
fn apply_epoch(
    session: &Session,
    st: &mut SessionState,
    history: &History,
    epoch: &EpochData,
    seq: u64,
    now: u64,
) -> Option<Acknowledgment> {
    if fresh_event(session, st, seq) {
        st.push_epoch(
            history,
            EpochRecord {
                epoch: epoch.epoch,
                average_loss: epoch.average_loss,
                average_accuracy: epoch.average_accuracy,
                t_ms: now,
            },
        );
    }
    event_ack(seq)
}

/// A status change with sequence number `seq`, and the config it carries.
fn apply_status(
    session: &Session,
    st: &mut SessionState,
    history: &History,
    rec: StatusRecord,
    config: Option<TrainingConfig>,
    seq: u64,
) -> Option<Acknowledgment> {
    if fresh_event(session, st, seq) {
        if let Some(c) = config {
            session.set_config(st, c);
        }
        session.set_finished(matches!(
            rec.status,
            TrainingStatus::Completed | TrainingStatus::Failed
        ));
        st.push_status(history, rec);
    }
    event_ack(seq)
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
