//! What the server keeps of one session: its [`SessionState`] (client,
//! config, status and its history, the latest frame, the loss series, epoch
//! summaries, performance) and its lock-free [`Counters`].
//!
//! Everything here is bounded by [`History`] and the latest frame, so memory
//! per session does not grow with the length of a run. The types are plain
//! data: the apply task (`apply.rs`) is the only writer, the HTTP API and
//! dashboard read them through `Session::state`.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;

use crate::config::History;
use crate::proto::{PerformanceData, TrainingConfig, TrainingStatus};

/// Monotonic counters of one session, readable without its lock.
#[derive(Default, Debug)]
pub struct Counters {
    pub batches_received: AtomicU64,
    pub batches_invalid: AtomicU64,
    pub messages_invalid: AtomicU64,
    pub buffer_full: AtomicU64,
    /// Sequenced events (epoch summaries, status changes) that validated
    /// and found room in the session's queue.
    pub events_received: AtomicU64,
    pub events_applied: AtomicU64,
    pub events_duplicate: AtomicU64,
    /// Events that arrived beyond the next number (after a refused one):
    /// dropped unacknowledged for the agent to resend in order.
    pub events_out_of_order: AtomicU64,
    /// Events the agent reported lost (`events_missed_before`).
    pub events_missed: AtomicU64,
    pub points_applied: AtomicU64,
    pub points_duplicate: AtomicU64,
    pub points_out_of_order: AtomicU64,
    /// Points the agent reported lost (`ScalarBatch.missed_before`).
    pub points_missed: AtomicU64,
    /// Store writes that failed or were refused; none was acknowledged.
    pub store_errors: AtomicU64,
    pub heartbeats: AtomicU64,
    pub image_bytes: AtomicU64,
    pub registrations: AtomicU64,
    pub commands_sent: AtomicU64,
    /// Commands sent again on a new stream: the agent had not confirmed
    /// them when the stream they went on ended.
    pub commands_resent: AtomicU64,
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

/// The run's image history so far: when a sample was last stored, and the
/// newest frame not stored (its epoch's last, once the next one starts):
/// the latest frame itself while `latest_unstored`, else `held`, the frame
/// it replaced. Nothing is copied for a frame that is not stored.
#[derive(Debug, Default)]
pub struct ImageSampling {
    pub last_stored_ms: Option<u64>,
    pub latest_unstored: bool,
    pub held: Option<Frame>,
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

/// What a session keeps. Read it through `Session::state`.
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
    /// Highest event sequence number accepted, in order (0: none). With a
    /// store, its commit may still be on the way.
    pub last_event_seq: u64,
    /// Highest scalar point sequence number accepted, likewise.
    pub last_point_seq: u64,
    /// Which frames become stored image samples.
    pub images: ImageSampling,
    pub registered_ms: u64,
    pub last_seen_ms: u64,
}

impl SessionState {
    /// The state of a session registered at `now_ms`, nothing applied yet.
    pub fn new(history: &History, now_ms: u64) -> Self {
        SessionState {
            client_name: String::new(),
            client_version: String::new(),
            config: None,
            status: TrainingStatus::Unknown,
            status_message: String::new(),
            status_history: VecDeque::new(),
            latest_frame: None,
            loss: LossSeries::new(history.loss_points),
            epochs: VecDeque::new(),
            performance: None,
            last_event_seq: 0,
            last_point_seq: 0,
            images: ImageSampling::default(),
            registered_ms: now_ms,
            last_seen_ms: now_ms,
        }
    }

    pub(super) fn push_status(&mut self, history: &History, rec: StatusRecord) {
        self.status = rec.status;
        self.status_message.clone_from(&rec.message);
        if self.status_history.len() == history.status_events {
            self.status_history.pop_front();
        }
        self.status_history.push_back(rec);
    }

    pub(super) fn push_epoch(&mut self, history: &History, rec: EpochRecord) {
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
