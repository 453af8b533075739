//! The apply task: one per session, it drains the session's queue in arrival
//! order into its [`SessionState`], hands what a trainer logged to the store,
//! and acknowledges it only once the store has committed it.
//!
//! Sequenced messages (events, scalar batches) are applied strictly in
//! order: the next number (or one whose `missed_before` covers every
//! number between) applies; a resend of what is applied is skipped
//! and acknowledged again; anything beyond is dropped unacknowledged, and
//! the agent's go-back-N resends it. So a BUFFER_FULL on event N followed by
//! N+1 getting through can no longer move the acknowledgement past N.
//!
//! Commit-then-ack without serialising on each commit: the apply task
//! submits writes to the group-commit [`Writer`] and goes on; a second task
//! per session (the acknowledger) awaits each write's [`Pending`] in
//! submission order and sends its ack once it resolves Ok. A store error is
//! logged and not acknowledged (the agent resends), and the session's
//! accepted positions move back to what is committed.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::session::{Ingest, Reply, Session};
use super::state::{EpochRecord, Frame, LossPoint, SessionState, StatusRecord};
use super::store::{self, Pending, RunStatus, SeqKind, Write, Writer};
use crate::config::History;
use crate::proto::{
    self, acknowledgment::AckKind, metrics_response, Acknowledgment, BatchData, EpochData,
    MetricsResponse, PerformanceData, ScalarBatch, TrainingConfig, TrainingStatus,
};

/// Acknowledgements waiting for their commits, per session. Beyond it the
/// apply task waits: a bound on memory, and far more than the agent keeps
/// in flight (8 scalar batches plus a few events).
const ACKS_IN_FLIGHT: usize = 1024;

/// Drains one session's queue into its state and the store, until the
/// session is evicted or the server shuts down.
pub(super) async fn run(
    session: Arc<Session>,
    mut rx: mpsc::Receiver<Ingest>,
    history: History,
    store: Option<(Writer, u64)>,
) {
    let (writer, images_every_ms) = match store {
        Some((w, every)) => (Some(w), Some(every)),
        None => (None, None),
    };
    let (acks, acks_rx) = mpsc::channel(ACKS_IN_FLIGHT);
    let acker = tokio::spawn(acknowledge(session.clone(), acks_rx));
    loop {
        let item = tokio::select! {
            _ = session.closed() => break,
            item = rx.recv() => match item { Some(i) => i, None => break },
        };
        let applied = apply(&session, item, &history, images_every_ms).await;
        session.changed();
        applied.finish(&session, writer.as_ref(), &acks).await;
    }
    // The acknowledger sends what is committed, then ends with the queue.
    drop(acks);
    let _ = acker.await;
}

/// What applying one message leaves to do: the writes it hands the store,
/// then its acknowledgement, if it earns one, and the stream it goes back on.
struct Applied {
    reply: Option<Reply>,
    ack: Option<Acknowledgment>,
    writes: Vec<Write>,
    /// Sent at once, not behind commits (a batch: lossy, not stored).
    direct: bool,
}

impl Applied {
    fn none() -> Applied {
        Applied {
            reply: None,
            ack: None,
            writes: Vec::new(),
            direct: false,
        }
    }

    fn ordered(reply: Reply, ack: Option<Acknowledgment>, writes: Vec<Write>) -> Applied {
        Applied {
            reply: Some(reply),
            ack,
            writes,
            direct: false,
        }
    }

    async fn finish(self, session: &Session, writer: Option<&Writer>, acks: &mpsc::Sender<AckJob>) {
        let mut pending = Vec::with_capacity(self.writes.len());
        if let Some(w) = writer {
            for write in self.writes {
                match w.submit(write).await {
                    Ok(p) => pending.push(p),
                    Err(e) => {
                        tracing::error!(session = %session.id, error = %e, "store write not queued");
                        session.counters.store_errors.fetch_add(1, Relaxed);
                        rewind(session).await;
                        return;
                    }
                }
            }
        }
        let (Some(reply), Some(ack)) = (self.reply, self.ack) else {
            if !pending.is_empty() {
                // Unacknowledged writes (performance figures): their errors
                // are still logged by the acknowledger.
                let _ = acks.send(AckJob { pending, ack: None }).await;
            }
            return;
        };
        if self.direct {
            send_ack(session, &reply, ack).await;
            if !pending.is_empty() {
                // A stored image sample: its errors are logged all the same.
                let _ = acks.send(AckJob { pending, ack: None }).await;
            }
            return;
        }
        let _ = acks
            .send(AckJob {
                pending,
                ack: Some((reply, ack)),
            })
            .await;
    }
}

/// An acknowledgement that goes out once every write before it, and its
/// own, has committed.
struct AckJob {
    pending: Vec<Pending>,
    ack: Option<(Reply, Acknowledgment)>,
}

/// Awaits each job's commits in submission order and sends its ack.
/// Acknowledgements are cumulative, so of consecutive acks of one kind on
/// one stream whose commits are all in (a group commit resolves a
/// session's many writes at once) only the last is sent: one message where
/// a fleet's sessions would otherwise get one per batch of the group.
async fn acknowledge(session: Arc<Session>, mut jobs: mpsc::Receiver<AckJob>) {
    // An ack ready to send, held while the next job may supersede it.
    let mut held: Option<(Reply, Acknowledgment)> = None;
    loop {
        let mut job = match held.is_some() {
            true => match jobs.try_recv() {
                Ok(j) => j,
                Err(_) => {
                    flush(&session, &mut held).await;
                    continue;
                }
            },
            false => match jobs.recv().await {
                Some(j) => j,
                None => break,
            },
        };
        // Not committed yet: what is held goes now, not behind this commit.
        if !job.pending.iter_mut().all(Pending::is_ready) {
            flush(&session, &mut held).await;
        }
        let mut ok = true;
        for p in job.pending {
            if let Err(e) = p.await {
                // A refused write (a gap the store sees, an unknown run) or
                // a failed commit: not acknowledged, so the agent resends.
                tracing::warn!(session = %session.id, error = %e, "store write failed; not acknowledged");
                session.counters.store_errors.fetch_add(1, Relaxed);
                ok = false;
            }
        }
        let Some((reply, ack)) = job.ack else {
            continue;
        };
        if !ok {
            flush(&session, &mut held).await;
            rewind(&session).await;
            continue;
        }
        session.committed(ack.event_seq, ack.point_seq);
        let supersedes = held
            .as_ref()
            .is_some_and(|(r, a)| a.kind == ack.kind && r.same_channel(&reply));
        if !supersedes {
            flush(&session, &mut held).await;
        }
        held = Some((reply, ack));
    }
    flush(&session, &mut held).await;
}

async fn flush(session: &Session, held: &mut Option<(Reply, Acknowledgment)>) {
    if let Some((reply, ack)) = held.take() {
        send_ack(session, &reply, ack).await;
    }
}

/// After a failed write: what is accepted goes back to what is committed,
/// so the resend applies instead of being skipped as a duplicate.
async fn rewind(session: &Session) {
    let (event, point) = session.committed_seqs();
    let mut st = session.state().write().await;
    st.last_event_seq = st.last_event_seq.min(event);
    st.last_point_seq = st.last_point_seq.min(point);
}

async fn send_ack(session: &Session, reply: &Reply, ack: Acknowledgment) {
    // The stream may be gone (client disconnected); the data is applied
    // all the same and a resend is deduplicated.
    reply
        .send(MetricsResponse {
            session_id: session.id.clone(),
            timestamp_ms: proto::now_ms(),
            payload: Some(metrics_response::Payload::Ack(ack)),
        })
        .await;
}

/// Applies one message under the session's state lock; with a store,
/// image samples are kept at most every `images_every_ms`.
async fn apply(
    session: &Session,
    item: Ingest,
    history: &History,
    images_every_ms: Option<u64>,
) -> Applied {
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
        } => {
            let (ack, replaced) =
                apply_batch(session, &mut st, batch, sent_ms, received_ms, received_us);
            let writes = match images_every_ms {
                Some(every) => sample_images(&session.id, &mut st, every, replaced),
                None => Vec::new(),
            };
            Applied {
                ack: Some(ack),
                reply: Some(reply),
                writes,
                direct: true,
            }
        }
        Ingest::Epoch {
            epoch,
            seq,
            missed_before,
            reply,
        } => {
            let (ack, writes) =
                apply_epoch(session, &mut st, history, &epoch, seq, missed_before, now);
            Applied::ordered(reply, ack, writes)
        }
        Ingest::Status {
            status,
            message,
            config,
            timestamp_ms,
            seq,
            missed_before,
            reply,
        } => {
            let rec = StatusRecord {
                status,
                message,
                t_ms: if timestamp_ms > 0 { timestamp_ms } else { now },
            };
            let (ack, writes) =
                apply_status(session, &mut st, history, rec, config, seq, missed_before);
            Applied::ordered(reply, ack, writes)
        }
        Ingest::Scalars { batch, reply } => {
            let (ack, writes) = apply_scalars(session, &mut st, batch);
            Applied::ordered(reply, ack, writes)
        }
        Ingest::Performance(p) => {
            let sample = perf_sample(&p, now);
            st.performance = Some(p);
            let mut a = Applied::none();
            a.writes.push(Write::Perf {
                run: session.id.clone(),
                samples: vec![sample],
            });
            a
        }
    }
}

/// A batch: counted, its loss added to the series, and kept as the latest
/// frame (returning the frame it replaces). Every batch is acknowledged.
fn apply_batch(
    session: &Session,
    st: &mut SessionState,
    batch: BatchData,
    sent_ms: u64,
    received_ms: u64,
    received_us: u64,
) -> (Acknowledgment, Option<Frame>) {
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
    let replaced = st.latest_frame.replace(Frame {
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
    (ack, replaced)
}

/// The run's image history: the frame just kept as the latest becomes a
/// stored sample when `every_ms` has passed since the last one, and the
/// last frame of each epoch is stored when the next epoch's first arrives
/// (or the run ends, see [`final_image`]). Content-addressed and capped per
/// run by the store. `replaced` is the frame the latest one replaced: held
/// when it was not stored, so no frame is copied unless it is stored.
fn sample_images(
    run: &str,
    st: &mut SessionState,
    every_ms: u64,
    replaced: Option<Frame>,
) -> Vec<Write> {
    let images = &mut st.images;
    if std::mem::take(&mut images.latest_unstored) {
        images.held = replaced;
    }
    let Some(frame) = &st.latest_frame else {
        return Vec::new();
    };
    if frame.images.is_empty() {
        return Vec::new();
    }
    let per_epoch = st.config.as_ref().map_or(0, |c| c.batches_per_epoch);
    let mut writes = Vec::new();
    if let Some(held) = images.held.take() {
        if held.epoch != frame.epoch {
            writes.push(image_write(run, &held, per_epoch));
        }
    }
    let now = frame.received_ms;
    let due = images
        .last_stored_ms
        .is_none_or(|t| now.saturating_sub(t) >= every_ms);
    if due {
        images.last_stored_ms = Some(now);
        writes.push(image_write(run, frame, per_epoch));
    } else {
        images.latest_unstored = true;
    }
    writes
}

/// The newest frame not stored of a run that just ended: its last epoch's
/// last sample.
fn final_image(run: &str, st: &mut SessionState) -> Option<Write> {
    let per_epoch = st.config.as_ref().map_or(0, |c| c.batches_per_epoch);
    if std::mem::take(&mut st.images.latest_unstored) {
        st.images.held = None;
        return st
            .latest_frame
            .as_ref()
            .map(|f| image_write(run, f, per_epoch));
    }
    st.images
        .held
        .take()
        .map(|f| image_write(run, &f, per_epoch))
}

fn image_write(run: &str, frame: &Frame, per_epoch: u32) -> Write {
    Write::Image {
        run: run.to_string(),
        sample: store::ImageSample {
            epoch: frame.epoch,
            step: i64::from(frame.epoch) * i64::from(per_epoch) + i64::from(frame.batch_idx),
            wall_ms: frame.received_ms as i64,
            jpegs: frame.images.clone(),
            predictions: frame
                .predictions
                .iter()
                .map(|&(class, confidence)| store::Prediction { class, confidence })
                .collect(),
            labels: frame.ground_truth.clone(),
        },
    }
}

/// Where a sequenced message stands against the last number accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// Applies, after `gap` numbers the agent reported lost.
    Next { gap: u64 },
    /// Everything in it is already accepted: acknowledge again.
    Resent,
    /// Beyond the next number: dropped unacknowledged, resent later.
    Beyond,
}

/// `count` numbers from `first` (after `missed` reported lost) against the
/// last accepted `last`: it applies when `first - missed <= last + 1`, the
/// rule the proto states. A message overlapping the accepted end applies
/// (the store skips the overlap).
fn order(last: u64, first: u64, count: u64, missed: u64) -> Order {
    let end = first.saturating_add(count.max(1) - 1);
    if end <= last {
        Order::Resent
    } else if first <= last.saturating_add(1) {
        Order::Next { gap: 0 }
    } else if first.saturating_sub(missed) <= last.saturating_add(1) {
        // Numbers between the last accepted and `first` were reported lost
        // (the sender may have had part of its lost run accepted before).
        Order::Next {
            gap: first - last - 1,
        }
    } else {
        Order::Beyond
    }
}

/// Checks a sequenced event; when it applies, records its number (an
/// unsequenced one, 0 from a seed peer, gets the next) and returns it with
/// the writes of any gap before it. `Err` when it lies beyond the next
/// number: no acknowledgement.
fn admit_event(
    session: &Session,
    st: &mut SessionState,
    seq: u64,
    missed: u64,
    writes: &mut Vec<Write>,
) -> Result<Option<u64>, ()> {
    let c = &session.counters;
    let seq = if seq == 0 { st.last_event_seq + 1 } else { seq };
    match order(st.last_event_seq, seq, 1, missed) {
        Order::Resent => {
            c.events_duplicate.fetch_add(1, Relaxed);
            Ok(None)
        }
        Order::Beyond => {
            c.events_out_of_order.fetch_add(1, Relaxed);
            tracing::debug!(session = %session.id, seq, last = st.last_event_seq, "event beyond the next; dropped for a resend");
            Err(())
        }
        Order::Next { gap } => {
            if gap > 0 {
                c.events_missed.fetch_add(gap, Relaxed);
                writes.push(Write::Gap {
                    run: session.id.clone(),
                    what: SeqKind::Event,
                    through: seq - 1,
                });
            }
            st.last_event_seq = seq;
            c.events_applied.fetch_add(1, Relaxed);
            Ok(Some(seq))
        }
    }
}

/// An epoch summary with sequence number `seq`, received at `now`.
fn apply_epoch(
    session: &Session,
    st: &mut SessionState,
    history: &History,
    epoch: &EpochData,
    seq: u64,
    missed: u64,
    now: u64,
) -> (Option<Acknowledgment>, Vec<Write>) {
    let mut writes = Vec::new();
    let Ok(admitted) = admit_event(session, st, seq, missed, &mut writes) else {
        return (None, writes);
    };
    if let Some(stored_seq) = admitted {
        st.push_epoch(
            history,
            EpochRecord {
                epoch: epoch.epoch,
                average_loss: epoch.average_loss,
                average_accuracy: epoch.average_accuracy,
                t_ms: now,
            },
        );
        let mut metrics: BTreeMap<String, f64> =
            epoch.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect();
        metrics.insert("average_loss".into(), f64::from(epoch.average_loss));
        metrics.insert("average_accuracy".into(), f64::from(epoch.average_accuracy));
        writes.push(Write::Epoch {
            run: session.id.clone(),
            record: store::EpochRecord {
                seq: stored_seq,
                epoch: epoch.epoch,
                wall_ms: now as i64,
                metrics,
            },
        });
    }
    (event_ack(seq), writes)
}

/// A status change with sequence number `seq`, and the config it carries.
fn apply_status(
    session: &Session,
    st: &mut SessionState,
    history: &History,
    rec: StatusRecord,
    config: Option<TrainingConfig>,
    seq: u64,
    missed: u64,
) -> (Option<Acknowledgment>, Vec<Write>) {
    let mut writes = Vec::new();
    let Ok(admitted) = admit_event(session, st, seq, missed, &mut writes) else {
        return (None, writes);
    };
    if let Some(stored_seq) = admitted {
        if let Some(c) = config {
            session.set_config(st, c);
        }
        let finished = matches!(
            rec.status,
            TrainingStatus::Completed | TrainingStatus::Failed
        );
        session.set_finished(finished);
        if finished {
            writes.extend(final_image(&session.id, st));
        }
        writes.push(Write::Status {
            run: session.id.clone(),
            record: store::StatusRecord {
                seq: stored_seq,
                wall_ms: rec.t_ms as i64,
                status: run_status(rec.status),
                message: rec.message.clone(),
            },
        });
        st.push_status(history, rec);
    }
    (event_ack(seq), writes)
}

/// A validated scalar batch: its points in the run's point sequence.
fn apply_scalars(
    session: &Session,
    st: &mut SessionState,
    batch: ScalarBatch,
) -> (Option<Acknowledgment>, Vec<Write>) {
    let c = &session.counters;
    let n = batch.points.len() as u64;
    let end = batch.first_seq + n.max(1) - 1;
    let ack = Some(Acknowledgment {
        success: true,
        kind: AckKind::Scalars as i32,
        point_seq: end,
        ..Default::default()
    });
    let mut writes = Vec::new();
    match order(st.last_point_seq, batch.first_seq, n, batch.missed_before) {
        Order::Resent => {
            c.points_duplicate.fetch_add(n, Relaxed);
            return (ack, writes);
        }
        Order::Beyond => {
            c.points_out_of_order.fetch_add(n, Relaxed);
            return (None, writes);
        }
        Order::Next { gap } => {
            if gap > 0 {
                c.points_missed.fetch_add(gap, Relaxed);
                writes.push(Write::Gap {
                    run: session.id.clone(),
                    what: SeqKind::Point,
                    through: batch.first_seq - 1,
                });
            }
        }
    }
    c.points_applied
        .fetch_add(end - st.last_point_seq.max(batch.first_seq - 1), Relaxed);
    st.last_point_seq = end;
    session.publish_points(|| live_points(&session.id, &batch.points));
    let points = batch
        .points
        .into_iter()
        .map(|p| store::Point {
            key: p.key,
            step: p.step,
            wall_ms: p.wall_time_ms as i64,
            value: p.value,
        })
        .collect();
    writes.push(Write::Points {
        run: session.id.clone(),
        first_seq: batch.first_seq,
        points,
    });
    (ack, writes)
}

/// A scalar batch as live viewers get it: `{"run", "series": {key:
/// [[step, wall_ms, value], …]}}`, each key's points in the batch's order.
fn live_points(run: &str, points: &[proto::ScalarPoint]) -> String {
    let mut series: BTreeMap<&str, Vec<(i64, u64, f64)>> = BTreeMap::new();
    for p in points {
        series
            .entry(&p.key)
            .or_default()
            .push((p.step, p.wall_time_ms, p.value));
    }
    serde_json::json!({ "run": run, "series": series }).to_string()
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

fn run_status(s: TrainingStatus) -> RunStatus {
    match s {
        TrainingStatus::Unknown => RunStatus::Unknown,
        TrainingStatus::Initializing => RunStatus::Initializing,
        TrainingStatus::Running => RunStatus::Running,
        TrainingStatus::Paused => RunStatus::Paused,
        TrainingStatus::Completed => RunStatus::Completed,
        TrainingStatus::Failed => RunStatus::Failed,
    }
}

/// One second's figures; a field the agent names unavailable (or a resource
/// it did not measure) is `None`, not 0.
fn perf_sample(p: &PerformanceData, now: u64) -> store::PerfSample {
    let has = |name: &str| !p.unavailable.iter().any(|u| u == name);
    let f = |name: &str, v: f32| has(name).then_some(f64::from(v));
    let r = p.resource_usage.as_ref();
    let res = |name: &str, v: fn(&proto::ResourceUsage) -> f32| {
        r.filter(|r| !r.unavailable.iter().any(|u| u == name))
            .map(|r| f64::from(v(r)))
    };
    store::PerfSample {
        wall_ms: if p.timestamp_ms > 0 {
            p.timestamp_ms
        } else {
            now
        } as i64,
        fps: f("current_fps", p.current_fps),
        batch_ms: f("time_per_batch_ms", p.time_per_batch_ms),
        cpu_percent: res("cpu_percent", |r| r.cpu_percent),
        ram_mb: res("memory_mb", |r| r.memory_mb),
        gpu_percent: res("gpu_percent", |r| r.gpu_percent),
        gpu_mem_mb: res("gpu_memory_mb", |r| r.gpu_memory_mb),
        gpu_clock_mhz: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_applies_the_next_skips_resends_and_drops_beyond() {
        assert_eq!(order(0, 1, 1, 0), Order::Next { gap: 0 });
        assert_eq!(order(5, 5, 1, 0), Order::Resent);
        assert_eq!(order(5, 7, 1, 0), Order::Beyond);
        assert_eq!(order(5, 7, 1, 1), Order::Next { gap: 1 });
        assert_eq!(order(5, 8, 1, 1), Order::Beyond);
        // A lost run part of which was accepted before: only the rest is a gap.
        assert_eq!(order(5, 8, 1, 4), Order::Next { gap: 2 });
        // A batch overlapping the accepted end applies (the store skips it).
        assert_eq!(order(10, 8, 5, 0), Order::Next { gap: 0 });
        assert_eq!(order(10, 8, 3, 0), Order::Resent);
        // Hostile numbers do not overflow.
        assert_eq!(order(u64::MAX, 1, 1, 0), Order::Resent);
        assert_eq!(
            order(3, u64::MAX, 1, u64::MAX),
            Order::Next { gap: u64::MAX - 4 }
        );
        assert_eq!(order(3, u64::MAX, 1, 2), Order::Beyond);
    }

    /// Feeds frames (epoch, batch, received_ms, with images) as apply_batch
    /// keeps them and returns the (epoch, step) of each image stored, then
    /// of the one the run's end stores.
    /// (epoch, step) of a stored image.
    type Stored = (u32, i64);

    fn sampled(frames: &[(u32, u32, u64, bool)], every_ms: u64) -> (Vec<Stored>, Option<Stored>) {
        let mut st = SessionState::new(&crate::server::limits::History::default(), 0);
        let mut out = Vec::new();
        let step = |w: &Write| match w {
            Write::Image { run, sample } => {
                assert_eq!(run, "r");
                (sample.epoch, sample.step)
            }
            other => panic!("not an image: {other:?}"),
        };
        for &(epoch, batch_idx, received_ms, with_images) in frames {
            let replaced = st.latest_frame.replace(Frame {
                epoch,
                batch_idx,
                loss: 0.0,
                images: if with_images {
                    vec![bytes::Bytes::from_static(b"jpeg")]
                } else {
                    vec![]
                },
                predictions: vec![],
                ground_truth: vec![],
                sent_ms: received_ms,
                received_ms,
            });
            out.extend(
                sample_images("r", &mut st, every_ms, replaced)
                    .iter()
                    .map(step),
            );
        }
        let end = final_image("r", &mut st).as_ref().map(step);
        (out, end)
    }

    #[test]
    fn images_are_sampled_by_time_and_each_epochs_last_frame_is_kept() {
        // 1 s apart at most, plus each epoch's last frame once the next
        // epoch starts; the run's last frame at its end.
        let frames: Vec<(u32, u32, u64, bool)> = (0..30u32)
            .map(|i| (i / 10, i % 10, 1000 + u64::from(i) * 150, true))
            .collect();
        let (stored, end) = sampled(&frames, 1000);
        // batches_per_epoch unknown (no config): step is the batch index.
        assert_eq!(
            stored,
            vec![(0, 0), (0, 7), (0, 9), (1, 4), (1, 9), (2, 1), (2, 8)],
        );
        assert_eq!(end, Some((2, 9)));
        // A run whose last frame was stored ends with nothing more.
        let (stored, end) = sampled(&[(0, 0, 0, true), (0, 1, 5000, true)], 1000);
        assert_eq!((stored, end), (vec![(0, 0), (0, 1)], None));
        // A frame held across one without images is still its epoch's last.
        let frames = [
            (0, 0, 0, true),
            (0, 1, 10, true),
            (0, 2, 20, false),
            (1, 0, 30, true),
        ];
        let (stored, end) = sampled(&frames, 1000);
        assert_eq!((stored, end), (vec![(0, 0), (0, 1)], Some((1, 0))));
    }
}
