//! The JSON HTTP API on the server's second listener (the dashboard builds
//! on it). Read-only; shapes are documented in README.md, "HTTP API".
//!
//! - `GET /api/sessions` — every session's summary.
//! - `GET /api/sessions/{id}` — one session with its epoch history, loss
//!   series, status history and latest performance figures.
//! - `GET /api/sessions/{id}/images/{i}` — image `i` of the newest frame,
//!   as received (image/jpeg).
//! - `GET /healthz` — `ok` while serving.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::session::{Registry, Session, SessionState};
use crate::proto::{PerformanceData, TrainingConfig};

pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/sessions", get(list))
        .route("/api/sessions/{id}", get(detail))
        .route("/api/sessions/{id}/images/{index}", get(image))
        .fallback(|| async { not_found("no such endpoint".to_string()) })
        .with_state(registry)
}

fn not_found(message: String) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

#[derive(Serialize)]
pub struct ClientJson {
    pub name: String,
    pub version: String,
}

#[derive(Serialize)]
pub struct ConfigJson {
    pub total_epochs: u32,
    pub batches_per_epoch: u32,
    pub batch_size: u32,
    pub model_name: String,
    pub dataset_name: String,
    pub class_names: Vec<String>,
}

impl From<&TrainingConfig> for ConfigJson {
    fn from(c: &TrainingConfig) -> Self {
        ConfigJson {
            total_epochs: c.total_epochs,
            batches_per_epoch: c.batches_per_epoch,
            batch_size: c.batch_size,
            model_name: c.model_name.clone(),
            dataset_name: c.dataset_name.clone(),
            class_names: c.class_names.clone(),
        }
    }
}

#[derive(Serialize)]
pub struct LastBatchJson {
    pub epoch: u32,
    pub batch_idx: u32,
    pub loss: f32,
    pub images: usize,
    pub predictions: Vec<PredictionJson>,
    pub ground_truth: Vec<i32>,
    pub sent_ms: u64,
    pub received_ms: u64,
}

#[derive(Serialize)]
pub struct PredictionJson {
    pub class: i32,
    pub confidence: f32,
}

#[derive(Serialize)]
pub struct CountersJson {
    pub batches_received: u64,
    pub batches_invalid: u64,
    pub messages_invalid: u64,
    pub buffer_full: u64,
    pub events_applied: u64,
    pub events_duplicate: u64,
    pub heartbeats: u64,
    pub image_bytes: u64,
    pub registrations: u64,
    pub queue_depth: usize,
}

#[derive(Serialize)]
pub struct SummaryJson {
    pub id: String,
    pub status: &'static str,
    pub status_message: String,
    pub client: ClientJson,
    pub config: Option<ConfigJson>,
    pub registered_ms: u64,
    pub last_seen_ms: u64,
    pub batches_received: u64,
    pub last_batch: Option<LastBatchJson>,
    pub epochs: usize,
    pub last_loss: Option<f32>,
    pub last_event_seq: u64,
    pub counters: CountersJson,
}

#[derive(Serialize)]
pub struct EpochJson {
    pub epoch: u32,
    pub average_loss: f32,
    pub average_accuracy: f32,
    pub t_ms: u64,
}

#[derive(Serialize)]
pub struct LossJson {
    pub epoch: u32,
    pub batch_idx: u32,
    pub loss: f32,
    pub t_ms: u64,
}

#[derive(Serialize)]
pub struct StatusJson {
    pub status: &'static str,
    pub message: String,
    pub t_ms: u64,
}

#[derive(Serialize)]
pub struct PerformanceJson {
    pub time_per_batch_ms: f32,
    pub total_time_for_epoch_sec: f32,
    pub estimated_time_remaining_sec: f32,
    pub current_fps: f32,
    pub average_fps: f32,
    pub timestamp_ms: u64,
    pub cpu_percent: Option<f32>,
    pub memory_mb: Option<f32>,
    pub gpu_percent: Option<f32>,
    pub gpu_memory_mb: Option<f32>,
}

impl From<&PerformanceData> for PerformanceJson {
    fn from(p: &PerformanceData) -> Self {
        let r = p.resource_usage.as_ref();
        PerformanceJson {
            time_per_batch_ms: p.time_per_batch_ms,
            total_time_for_epoch_sec: p.total_time_for_epoch_sec,
            estimated_time_remaining_sec: p.estimated_time_remaining_sec,
            current_fps: p.current_fps,
            average_fps: p.average_fps,
            timestamp_ms: p.timestamp_ms,
            cpu_percent: r.map(|r| r.cpu_percent),
            memory_mb: r.map(|r| r.memory_mb),
            gpu_percent: r.map(|r| r.gpu_percent),
            gpu_memory_mb: r.map(|r| r.gpu_memory_mb),
        }
    }
}

#[derive(Serialize)]
pub struct DetailJson {
    #[serde(flatten)]
    pub summary: SummaryJson,
    pub epoch_history: Vec<EpochJson>,
    pub loss_series: Vec<LossJson>,
    /// Every how many batches a loss point is kept (grows on long runs).
    pub loss_stride: u64,
    pub status_history: Vec<StatusJson>,
    pub performance: Option<PerformanceJson>,
}

fn summary(s: &Session, st: &SessionState) -> SummaryJson {
    let c = &s.counters;
    SummaryJson {
        id: s.id.clone(),
        status: st.status.as_str_name(),
        status_message: st.status_message.clone(),
        client: ClientJson {
            name: st.client_name.clone(),
            version: st.client_version.clone(),
        },
        config: st.config.as_ref().map(ConfigJson::from),
        registered_ms: st.registered_ms,
        last_seen_ms: s.last_seen_ms(),
        batches_received: c.batches_received.load(Relaxed),
        last_batch: st.latest_frame.as_ref().map(|f| LastBatchJson {
            epoch: f.epoch,
            batch_idx: f.batch_idx,
            loss: f.loss,
            images: f.images.len(),
            predictions: f
                .predictions
                .iter()
                .map(|&(class, confidence)| PredictionJson { class, confidence })
                .collect(),
            ground_truth: f.ground_truth.clone(),
            sent_ms: f.sent_ms,
            received_ms: f.received_ms,
        }),
        epochs: st.epochs.len(),
        last_loss: st.latest_frame.as_ref().map(|f| f.loss),
        last_event_seq: st.last_event_seq,
        counters: CountersJson {
            batches_received: c.batches_received.load(Relaxed),
            batches_invalid: c.batches_invalid.load(Relaxed),
            messages_invalid: c.messages_invalid.load(Relaxed),
            buffer_full: c.buffer_full.load(Relaxed),
            events_applied: c.events_applied.load(Relaxed),
            events_duplicate: c.events_duplicate.load(Relaxed),
            heartbeats: c.heartbeats.load(Relaxed),
            image_bytes: c.image_bytes.load(Relaxed),
            registrations: c.registrations.load(Relaxed),
            queue_depth: s.queue_depth(),
        },
    }
}

async fn list(State(reg): State<Arc<Registry>>) -> Response {
    let mut out = Vec::new();
    for s in reg.all() {
        let st = s.state().read().await;
        out.push(summary(&s, &st));
    }
    Json(serde_json::json!({ "sessions": out })).into_response()
}

async fn detail(State(reg): State<Arc<Registry>>, Path(id): Path<String>) -> Response {
    let Some(s) = reg.get(&id) else {
        return not_found(format!("no session {id:?}"));
    };
    let st = s.state().read().await;
    Json(DetailJson {
        summary: summary(&s, &st),
        epoch_history: st
            .epochs
            .iter()
            .map(|e| EpochJson {
                epoch: e.epoch,
                average_loss: e.average_loss,
                average_accuracy: e.average_accuracy,
                t_ms: e.t_ms,
            })
            .collect(),
        loss_series: st
            .loss
            .points()
            .iter()
            .map(|p| LossJson {
                epoch: p.epoch,
                batch_idx: p.batch_idx,
                loss: p.loss,
                t_ms: p.t_ms,
            })
            .collect(),
        loss_stride: st.loss.stride(),
        status_history: st
            .status_history
            .iter()
            .map(|r| StatusJson {
                status: r.status.as_str_name(),
                message: r.message.clone(),
                t_ms: r.t_ms,
            })
            .collect(),
        performance: st.performance.as_ref().map(PerformanceJson::from),
    })
    .into_response()
}

async fn image(
    State(reg): State<Arc<Registry>>,
    Path((id, index)): Path<(String, usize)>,
) -> Response {
    let Some(s) = reg.get(&id) else {
        return not_found(format!("no session {id:?}"));
    };
    let img = {
        let st = s.state().read().await;
        st.latest_frame
            .as_ref()
            .and_then(|f| f.images.get(index).cloned())
    };
    match img {
        Some(bytes) => (
            [
                (header::CONTENT_TYPE, "image/jpeg"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            bytes,
        )
            .into_response(),
        None => not_found(format!(
            "session {id:?} has no image {index} in its newest frame"
        )),
    }
}
