//! The JSON HTTP API on the server's second listener (the dashboard builds
//! on it). Read-only; shapes are documented in docs/http-api.md.
//!
//! - `GET /api/sessions` — every session's summary.
//! - `GET /api/sessions/{id}` — one session with its epoch history, loss
//!   series, status history and latest performance figures.
//! - `GET /api/sessions/{id}/images/{i}` — image `i` of the newest frame,
//!   as received (image/jpeg).
//! - `POST /api/sessions/{id}/commands` — a control command for the run
//!   (`{"type": "PAUSE_TRAINING", "parameters": {...}}`), sent down the
//!   session's stream to the agent and on to the trainer.
//! - `GET /healthz` — `ok` while serving.
//!
//! Control changes a training run, so it is guarded: when an `http_token`
//! is configured every command must carry it (`Authorization: Bearer`),
//! compared in constant time; without one, control is only open on a
//! loopback listener. Commands must be `application/json` and, when the
//! browser says where they come from (`Origin`, `Sec-Fetch-Site`),
//! same-origin: an HTML form or script on another site cannot send one.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::registry::Registry;
use super::session::{CommandOutcome, CommandState, Session};
use super::state::SessionState;
use super::store::{CommandRecord, Write};
use crate::proto::{control_command::CommandType, ControlCommand, PerformanceData, TrainingConfig};

/// Who may send control commands.
#[derive(Clone, Debug)]
pub struct ControlPolicy {
    /// Required on every command when set.
    pub token: Option<String>,
    /// Whether the HTTP listener is on a loopback address: without a token,
    /// control is open only then.
    pub loopback: bool,
    /// Whether reading needs the token too ([`ReadPolicy`]); the dashboard
    /// asks for it up front when so.
    pub read_token: bool,
}

/// Which `Host` the HTTP listener answers to: IP literals, `localhost`
/// (and `*.localhost`), this machine's name and the configured
/// `http_hosts`, with any port. A name a page's author controls and
/// rebinds to this server's address (DNS rebinding) is refused, so such a
/// page can neither read the API nor send control as "same origin". A
/// request without `Host` (not a browser's) is served.
#[derive(Clone, Debug)]
pub struct HostPolicy {
    names: Vec<String>,
}

impl HostPolicy {
    pub fn new(configured: &[String]) -> HostPolicy {
        let mut names: Vec<String> = configured.iter().map(|n| n.to_ascii_lowercase()).collect();
        if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            let h = h.trim().to_ascii_lowercase();
            if !h.is_empty() {
                names.push(h);
            }
        }
        HostPolicy { names }
    }

    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim();
        if let Some(rest) = host.strip_prefix('[') {
            // An IPv6 literal, with or without a port.
            let inner = rest.split(']').next().unwrap_or("");
            return inner.parse::<std::net::Ipv6Addr>().is_ok();
        }
        let name = match host.rsplit_once(':') {
            Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => host,
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        name.parse::<std::net::Ipv4Addr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || self.names.contains(&name)
    }
}

/// Middleware: refuses a request whose `Host` is not one [`HostPolicy`]
/// allows, naming it.
pub async fn check_host(
    State(policy): State<Arc<HostPolicy>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_string());
    match host {
        Some(h) if !policy.allows(&h) => {
            let shown: String = h.chars().take(80).collect();
            error(
                StatusCode::FORBIDDEN,
                format!(
                    "Host {shown:?} is not a name this server answers to; add it to http_hosts in the server's config"
                ),
            )
        }
        _ => next.run(req).await,
    }
}

/// Reading the API needs the token when `token` is set (`http_token` with
/// `http_token_reads`): as `Authorization: Bearer`, or as the
/// `trainwatch_token` cookie the dashboard sets (SameSite=Strict, so a
/// page on another site cannot send it). The page and its assets, the
/// health check and `/api/control` (which says whether reading needs the
/// token) stay open; control checks its own token.
#[derive(Clone, Debug)]
pub struct ReadPolicy {
    pub token: Option<String>,
}

/// The cookie the dashboard keeps the token in.
pub const TOKEN_COOKIE: &str = "trainwatch_token";

fn open_for_reading(path: &str) -> bool {
    path == "/"
        || path == "/healthz"
        || path == "/api/control"
        || path.starts_with("/assets/")
        || path == "/compare"
        || ((path.starts_with("/sessions/") || path.starts_with("/runs/"))
            && path.matches('/').count() == 2)
}

/// `%XX` escapes decoded (the page stores the token with
/// `encodeURIComponent`); `None` when malformed.
fn percent_decoded(v: &str) -> Option<String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `given` is `token`, in constant time (the HTTP tokens and the
/// agent tokens alike).
pub(crate) fn token_matches(given: &str, token: &str) -> bool {
    bool::from(subtle::ConstantTimeEq::ct_eq(
        given.as_bytes(),
        token.as_bytes(),
    ))
}

/// The `Authorization: Bearer` token of `headers`, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Whether `headers` carry `token` as a bearer token or the cookie.
fn carries_token(headers: &HeaderMap, token: &str) -> bool {
    if bearer(headers).is_some_and(|b| token_matches(b, token)) {
        return true;
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .filter(|(k, _)| *k == TOKEN_COOKIE)
        .filter_map(|(_, v)| percent_decoded(v))
        .any(|v| token_matches(&v, token))
}

/// Middleware: reading without the token, when [`ReadPolicy`] asks for it,
/// is 401 saying how to give it.
pub async fn check_read(
    State(policy): State<Arc<ReadPolicy>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(token) = &policy.token else {
        return next.run(req).await;
    };
    let reading = matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if !reading || open_for_reading(req.uri().path()) || carries_token(req.headers(), token) {
        return next.run(req).await;
    }
    error(
        StatusCode::UNAUTHORIZED,
        format!(
            "reading {} needs the server's token (http_token_reads): Authorization: Bearer <http_token>, or enter it in the dashboard",
            req.uri().path()
        ),
    )
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    control: Arc<ControlPolicy>,
}

pub fn router(registry: Arc<Registry>, control: ControlPolicy) -> Router {
    let state = AppState {
        registry,
        control: Arc::new(control),
    };
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/sessions", get(list))
        .route("/api/sessions/{id}", get(detail))
        .route("/api/sessions/{id}/images/{index}", get(image))
        .route("/api/sessions/{id}/commands", post(command))
        .fallback(|| async { not_found("no such endpoint".to_string()) })
        .with_state(state)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn not_found(message: String) -> Response {
    error(StatusCode::NOT_FOUND, message)
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
    /// The run's whole name (empty from seed peers).
    pub run_name: String,
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
            run_name: c.run_name.clone(),
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
    pub events_out_of_order: u64,
    pub events_missed: u64,
    pub points_applied: u64,
    pub points_duplicate: u64,
    pub points_out_of_order: u64,
    pub points_missed: u64,
    pub store_errors: u64,
    pub heartbeats: u64,
    pub image_bytes: u64,
    pub registrations: u64,
    pub commands_sent: u64,
    pub commands_resent: u64,
    pub commands_dropped: u64,
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
    pub last_point_seq: u64,
    pub counters: CountersJson,
    /// Trainer publish → server receipt, every batch (an upper bound: the
    /// publish time is whole ms on the wire).
    pub receipt_latency_ms: super::latency::LatencySummary,
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

/// Performance figures as JSON: `null` where the device did not provide a
/// figure (the wire's absence encoding is decoded by `telemetry`).
#[derive(Serialize)]
pub struct PerformanceJson {
    pub time_per_batch_ms: Option<f32>,
    pub total_time_for_epoch_sec: Option<f32>,
    pub estimated_time_remaining_sec: Option<f32>,
    pub current_fps: Option<f32>,
    pub average_fps: Option<f32>,
    pub batches_published: Option<u64>,
    pub timestamp_ms: u64,
    /// The trainer process: percent of one core, MiB resident.
    pub cpu_percent: Option<f32>,
    pub memory_mb: Option<f32>,
    /// The whole device.
    pub device_cpu_percent: Option<f32>,
    pub device_memory_used_mb: Option<f32>,
    pub device_memory_total_mb: Option<f32>,
    pub gpu_percent: Option<f32>,
    pub gpu_memory_mb: Option<f32>,
    pub gpu_memory_total_mb: Option<f32>,
    pub gpu_frequency_mhz: Option<f32>,
    pub gpu_source: Option<String>,
}

impl From<&PerformanceData> for PerformanceJson {
    fn from(p: &PerformanceData) -> Self {
        let perf = crate::telemetry::Performance::from(p);
        let r = p
            .resource_usage
            .as_ref()
            .map(crate::telemetry::ResourceSample::from);
        let r = r.as_ref();
        PerformanceJson {
            time_per_batch_ms: perf.time_per_batch_ms,
            total_time_for_epoch_sec: perf.epoch_time_sec,
            estimated_time_remaining_sec: perf.eta_sec,
            current_fps: perf.current_fps,
            average_fps: perf.average_fps,
            batches_published: perf.batches_published,
            timestamp_ms: p.timestamp_ms,
            cpu_percent: r.and_then(|r| r.process_cpu_percent),
            memory_mb: r.and_then(|r| r.process_memory_mb),
            device_cpu_percent: r.and_then(|r| r.device_cpu_percent),
            device_memory_used_mb: r.and_then(|r| r.device_memory_used_mb),
            device_memory_total_mb: r.and_then(|r| r.device_memory_total_mb),
            gpu_percent: r.and_then(|r| r.gpu.percent),
            gpu_memory_mb: r.and_then(|r| r.gpu.memory_used_mb),
            gpu_memory_total_mb: r.and_then(|r| r.gpu.memory_total_mb),
            gpu_frequency_mhz: r.and_then(|r| r.gpu.frequency_mhz),
            gpu_source: p
                .resource_usage
                .as_ref()
                .map(|r| r.gpu_source.clone())
                .filter(|s| !s.is_empty()),
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
    /// The newest commands and what became of each: sent (written to a
    /// stream), delivered (in the trainer's segment), applied.
    pub commands: Vec<CommandState>,
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
        last_point_seq: st.last_point_seq,
        counters: CountersJson {
            batches_received: c.batches_received.load(Relaxed),
            batches_invalid: c.batches_invalid.load(Relaxed),
            messages_invalid: c.messages_invalid.load(Relaxed),
            buffer_full: c.buffer_full.load(Relaxed),
            events_applied: c.events_applied.load(Relaxed),
            events_duplicate: c.events_duplicate.load(Relaxed),
            events_out_of_order: c.events_out_of_order.load(Relaxed),
            events_missed: c.events_missed.load(Relaxed),
            points_applied: c.points_applied.load(Relaxed),
            points_duplicate: c.points_duplicate.load(Relaxed),
            points_out_of_order: c.points_out_of_order.load(Relaxed),
            points_missed: c.points_missed.load(Relaxed),
            store_errors: c.store_errors.load(Relaxed),
            heartbeats: c.heartbeats.load(Relaxed),
            image_bytes: c.image_bytes.load(Relaxed),
            registrations: c.registrations.load(Relaxed),
            commands_sent: c.commands_sent.load(Relaxed),
            commands_resent: c.commands_resent.load(Relaxed),
            commands_dropped: c.commands_dropped.load(Relaxed),
            queue_depth: s.queue_depth(),
        },
        receipt_latency_ms: c.receipt_latency.summary(),
    }
}

async fn list(State(app): State<AppState>) -> Response {
    let reg = &app.registry;
    let mut out = Vec::new();
    for s in reg.all() {
        let st = s.state().read().await;
        out.push(summary(&s, &st));
    }
    Json(serde_json::json!({ "sessions": out })).into_response()
}

async fn detail(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    let Some(s) = app.registry.get(&id) else {
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
        commands: s.command_log(),
    })
    .into_response()
}

async fn image(State(app): State<AppState>, Path((id, index)): Path<(String, usize)>) -> Response {
    let Some(s) = app.registry.get(&id) else {
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

/// Body of `POST /api/sessions/{id}/commands`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandJson {
    /// A CommandType name (`PAUSE_TRAINING`) or its short form (`pause`,
    /// `resume`, `stop`, `adjust_batch_size`, `change_learning_rate`).
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub parameters: std::collections::BTreeMap<String, String>,
}

/// Longest STOP grace period accepted (a checkpoint of a large model on
/// slow eMMC can take minutes, not hours).
const MAX_GRACE_S: f64 = 3600.0;

fn parse_command(body: CommandJson) -> Result<ControlCommand, String> {
    let upper = body.kind.to_ascii_uppercase();
    let kind = match upper.as_str() {
        "PAUSE" => CommandType::PauseTraining,
        "RESUME" => CommandType::ResumeTraining,
        "STOP" => CommandType::StopTraining,
        other => CommandType::from_str_name(other)
            .filter(|k| *k != CommandType::UnknownCommand)
            .ok_or_else(|| {
                format!(
                    "type {:?} is not a command; expected PAUSE_TRAINING, RESUME_TRAINING, STOP_TRAINING, ADJUST_BATCH_SIZE or CHANGE_LEARNING_RATE",
                    body.kind
                )
            })?,
    };
    if body.parameters.len() > 16 {
        return Err(format!("{} parameters, at most 16", body.parameters.len()));
    }
    for (k, v) in &body.parameters {
        if k.len() > 64 || v.len() > 256 {
            return Err(format!(
                "parameter {k:?} is too long (keys <= 64, values <= 256 bytes)"
            ));
        }
    }
    let num = |key: &str| -> Result<Option<f64>, String> {
        body.parameters
            .get(key)
            .map(|v| {
                v.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| format!("parameters.{key} is {v:?}, not a number"))
            })
            .transpose()
    };
    match kind {
        CommandType::ChangeLearningRate => match num("learning_rate")? {
            Some(lr) if lr > 0.0 && lr <= 10.0 => {}
            Some(lr) => {
                return Err(format!(
                    "parameters.learning_rate is {lr}, expected 0 < lr <= 10"
                ))
            }
            None => return Err("CHANGE_LEARNING_RATE needs parameters.learning_rate".into()),
        },
        CommandType::AdjustBatchSize => match num("batch_size")? {
            Some(b) if (1.0..=1_000_000.0).contains(&b) && b.fract() == 0.0 => {}
            Some(b) => {
                return Err(format!(
                    "parameters.batch_size is {b}, expected a whole number 1..=1000000"
                ))
            }
            None => return Err("ADJUST_BATCH_SIZE needs parameters.batch_size".into()),
        },
        CommandType::StopTraining => {
            if let Some(g) = num("grace_period_s")? {
                if !(0.0..=MAX_GRACE_S).contains(&g) {
                    return Err(format!(
                        "parameters.grace_period_s is {g}, expected 0..={MAX_GRACE_S}"
                    ));
                }
            }
        }
        _ => {}
    }
    Ok(ControlCommand {
        r#type: kind as i32,
        parameters: body.parameters.into_iter().collect(),
        command_id: 0,
    })
}

/// Checks the token and where the request comes from; `Err` is the answer.
pub(crate) fn authorize(
    policy: &ControlPolicy,
    headers: &HeaderMap,
) -> Result<(), (StatusCode, String)> {
    let header = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    match &policy.token {
        // The bearer only: a cookie would let another site's form send
        // control (the read token's cookie is for reading).
        Some(token) if !token_matches(bearer(headers).unwrap_or(""), token) => {
            return Err((
                StatusCode::UNAUTHORIZED,
                "control needs the server's token: Authorization: Bearer <http_token>".into(),
            ));
        }
        Some(_) => {}
        None if !policy.loopback => {
            return Err((
                StatusCode::FORBIDDEN,
                "control is disabled: the HTTP listener is not loopback and no http_token is configured".into(),
            ))
        }
        None => {}
    }
    if let Some(site) = header(header::HeaderName::from_static("sec-fetch-site")) {
        if !matches!(site, "same-origin" | "none") {
            return Err((
                StatusCode::FORBIDDEN,
                format!("cross-site control request refused (Sec-Fetch-Site: {site})"),
            ));
        }
    }
    if let Some(origin) = header(header::ORIGIN) {
        let host = header(header::HOST).unwrap_or("");
        let bare = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or(origin);
        if bare != host {
            return Err((
                StatusCode::FORBIDDEN,
                format!("cross-origin control request refused (Origin {origin}, Host {host})"),
            ));
        }
    }
    let json = header(header::CONTENT_TYPE)
        .is_some_and(|c| c.split(';').next().unwrap_or("").trim() == "application/json");
    if !json {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "control requests must be Content-Type: application/json".into(),
        ));
    }
    Ok(())
}

/// Who sent a control request, for the command log: the `X-Trainwatch-User`
/// header a proxy in front sets (up to 64 printable ASCII characters), else
/// "http".
fn requester(headers: &HeaderMap) -> String {
    headers
        .get("x-trainwatch-user")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim())
        .filter(|v| {
            !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        })
        .unwrap_or("http")
        .to_string()
}

async fn command(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err((status, message)) = authorize(&app.control, &headers) {
        return error(status, message);
    }
    let Some(session) = app.registry.get(&id) else {
        return not_found(format!("no session {id:?}"));
    };
    let parsed: CommandJson = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("command body: {e}")),
    };
    let cmd = match parse_command(parsed) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let kind = cmd.r#type().as_str_name();
    let what = serde_json::json!({"type": kind, "parameters": cmd.parameters}).to_string();
    let (command_id, delivered) = match session.send_command(cmd) {
        CommandOutcome::Sent { command_id } => (command_id, true),
        CommandOutcome::Queued { command_id } => (command_id, false),
    };
    tracing::info!(session = %id, command = kind, command_id, delivered, "control command");
    // The command log: who asked for what, when.
    app.registry
        .record(Write::Command {
            run: id.clone(),
            record: CommandRecord {
                id: command_id,
                who: requester(&headers),
                when_ms: crate::proto::now_ms() as i64,
                what,
                delivered_ms: None,
                applied_ms: None,
            },
        })
        .await;
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "command_id": command_id, "type": kind, "delivered": delivered })),
    )
        .into_response()
}
