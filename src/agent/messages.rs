//! Segment data as wire messages: what the reader hands the session (run
//! config, events, frames, figures) mapped onto the proto types, and
//! control commands mapped back onto the segment's command kinds.
//!
//! Plain functions without I/O or state, so the session's stream loop only
//! decides *when* to send and this file alone knows *what* a message holds.

use crate::frame::EncodedBatch;
use crate::proto::{
    self, control_command::CommandType, metrics_request::Payload, BatchData, EpochData, Heartbeat,
    ImageData, MetricsRequest, Prediction, ResourceUsage, ScalarBatch, ScalarPoint, SessionInfo,
    StatusUpdate, TrainingConfig,
};
use crate::shm::{self, CommandKind, Event, WriterState};
use crate::telemetry::Performance;

/// The envelope every message of a session travels in.
pub fn request(
    session_id: &str,
    payload: Payload,
    timestamp_ms: u64,
    event_seq: u64,
) -> MetricsRequest {
    MetricsRequest {
        session_id: session_id.to_string(),
        timestamp_ms,
        payload: Some(payload),
        event_seq,
        events_missed_before: 0,
    }
}

/// What the agent registers a session with.
pub fn session_info(session_id: &str, config: &TrainingConfig) -> SessionInfo {
    SessionInfo {
        session_id: session_id.to_string(),
        client_name: "trainwatch-agent".into(),
        client_version: env!("CARGO_PKG_VERSION").into(),
        config: Some(config.clone()),
        timestamp_ms: proto::now_ms(),
    }
}

pub fn training_config(c: &shm::RunConfig) -> TrainingConfig {
    TrainingConfig {
        total_epochs: c.total_epochs,
        batches_per_epoch: c.batches_per_epoch,
        batch_size: c.batch_size,
        model_name: c.model_name.clone(),
        dataset_name: c.dataset_name.clone(),
        class_names: c.class_names.clone(),
        run_name: c.run_name.clone(),
    }
}

pub fn event_payload(event: &Event, timestamp_ms: u64) -> Payload {
    match event {
        Event::Epoch {
            epoch,
            average_loss,
            average_accuracy,
            metrics,
        } => Payload::EpochData(EpochData {
            epoch: *epoch,
            average_loss: *average_loss,
            average_accuracy: *average_accuracy,
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }),
        Event::Status { status, message } => Payload::StatusUpdate(StatusUpdate {
            status: status_to_proto(*status) as i32,
            message: message.clone(),
            config: None,
            timestamp_ms,
        }),
    }
}

/// A ScalarBatch of `points` (consecutive numbers, the first one's is the
/// batch's `first_seq`), after `missed_before` points the segment lost.
pub fn scalar_batch(points: &[shm::PointRecord], missed_before: u64) -> Payload {
    Payload::ScalarBatch(ScalarBatch {
        first_seq: points.first().map_or(0, |p| p.seq),
        points: points
            .iter()
            .map(|p| ScalarPoint {
                key: p.key.to_string(),
                step: p.step,
                wall_time_ms: p.wall_unix_ns / 1_000_000,
                value: p.value,
            })
            .collect(),
        missed_before,
    })
}

pub fn status_to_proto(s: shm::TrainingStatus) -> proto::TrainingStatus {
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

/// The status that ends a run whose writer left without one: FAILED when
/// the process died, COMPLETED when it closed the segment.
pub fn final_status(state: WriterState, timestamp_ms: u64) -> Payload {
    let (status, message) = match state {
        WriterState::Dead => (proto::TrainingStatus::Failed, "trainer process exited"),
        _ => (proto::TrainingStatus::Completed, "trainer closed the run"),
    };
    Payload::StatusUpdate(StatusUpdate {
        status: status as i32,
        message: message.into(),
        config: None,
        timestamp_ms,
    })
}

/// A heartbeat, carrying the commands written into the segment since the
/// last report and the newest one the trainer applied (0: none).
pub fn heartbeat(
    sequence_number: u32,
    commands_delivered: Vec<u64>,
    command_applied: u64,
) -> Payload {
    Payload::Heartbeat(Heartbeat {
        timestamp_ms: proto::now_ms(),
        sequence_number,
        commands_delivered,
        command_applied,
    })
}

/// PerformanceData from the rate tracker's figures and the resource
/// figures (absent ones marked absent).
pub fn performance(
    perf: &Performance,
    resources: Option<ResourceUsage>,
    timestamp_ms: u64,
) -> Payload {
    Payload::PerformanceData(perf.to_proto(timestamp_ms, resources))
}

/// The BatchData of frame `f` whose images are in `encoded`: as many
/// samples as there are both images and predictions (none without images).
/// Takes the images out of `encoded`, leaving its capacity; returns the
/// message and its JPEG bytes.
pub fn batch_data(f: &shm::Frame, encoded: &mut EncodedBatch) -> (BatchData, u64) {
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
    (batch, bytes)
}

/// The segment's command for a server's; `None` for one the trainer
/// cannot be given (dropped).
pub fn command_kind(t: CommandType) -> Option<CommandKind> {
    match t {
        CommandType::PauseTraining => Some(CommandKind::Pause),
        CommandType::ResumeTraining => Some(CommandKind::Resume),
        CommandType::StopTraining => Some(CommandKind::Stop),
        CommandType::AdjustBatchSize => Some(CommandKind::AdjustBatchSize),
        CommandType::ChangeLearningRate => Some(CommandKind::ChangeLearningRate),
        CommandType::UnknownCommand => None,
    }
}
