//! The live dashboard: a page on the HTTP listener, its assets embedded in
//! the binary (no CDN: devices and labs are often offline), fed by
//! Server-Sent Events.
//!
//! - `GET /`, `GET /sessions/{id}` — the page (overview, session view).
//! - `GET /assets/…` — its script and style sheet.
//! - `GET /api/events` — the overview: every session's row, pushed at most
//!   [`OVERVIEW_HZ`] times a second while anything changes.
//! - `GET /api/sessions/{id}/events` — one session: the first event carries
//!   everything, later ones only what changed (the newest frame with its
//!   images inline, new loss points, events), at most `max_push_hz` a second.
//! - `GET /api/live?runs=a,b` — the scalar points of up to [`LIVE_RUNS`]
//!   runs as they are applied, for the run and compare pages of live runs.
//! - `GET /api/control` — whether control is open, needs the token, or is
//!   disabled, so the page can say so before a click.
//!
//! Each push stream waits on the session's (or registry's) change counter
//! and builds its next event only when the response body asks for it: a
//! browser that reads slowly gets fewer, fresher events (coalesced), and one
//! that stalls holds at most what the socket buffers already have. The state
//! lock is held only to copy what changed (images by refcount); encoding
//! happens after it is released, so viewers never slow ingest.
//!
//! Images travel inside the event, not as separate requests: the server
//! keeps only the newest frame, and at tens of frames a second a separate
//! fetch would often get a newer frame's images under the older one's labels.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use tokio::sync::{broadcast, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::http::{ConfigJson, ControlPolicy};
use super::registry::Registry;
use super::session::{CommandState, Session};
use super::state::{Frame, SessionState};
use crate::config::Dashboard;
use crate::proto;

/// Overview pushes per second: a table of runs read by a person needs no
/// more, and each push reads every session.
pub const OVERVIEW_HZ: u32 = 4;

/// Push streams open at once, all viewers together. Each holds at most one
/// event being written plus the socket's buffers; the cap bounds the sum.
pub const MAX_STREAMS: usize = 64;

/// Push streams one client address may hold, so that one client (idle
/// connections from anyone) cannot take them all: a person's few tabs fit.
pub const MAX_STREAMS_PER_CLIENT: usize = 8;

/// The overview also refreshes this often without a change, so "last seen"
/// follows heartbeats (which change no state).
const OVERVIEW_REFRESH: Duration = Duration::from_secs(2);

/// SSE comment sent on an idle stream so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
/// uPlot 1.6.32 (MIT, assets/vendor/uPlot.LICENSE), vendored from its
/// release's dist/: served from the binary, nothing fetched at run time.
const UPLOT_JS: &str = include_str!("assets/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("assets/vendor/uPlot.min.css");

/// What the page may run and load: only its own files, images inline.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

#[derive(Clone)]
struct Dash {
    registry: Arc<Registry>,
    control: Arc<ControlPolicy>,
    session_gap: Duration,
    streams: Arc<Semaphore>,
    per_client: PerClient,
}

/// Push streams open per client address.
type PerClient = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One open push stream: a place under [`MAX_STREAMS`] and, for a client
/// whose address is known, under [`MAX_STREAMS_PER_CLIENT`]; both are given
/// back when the stream ends.
struct StreamSlot {
    _permit: OwnedSemaphorePermit,
    client: Option<(IpAddr, PerClient)>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some((ip, map)) = &self.client {
            let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = m.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(ip);
                }
            }
        }
    }
}

impl Dash {
    /// A place for a new push stream from `peer`, or what says which limit
    /// is reached (answered 503).
    fn open_stream(&self, peer: Option<IpAddr>) -> Result<StreamSlot, String> {
        let Ok(permit) = self.streams.clone().try_acquire_owned() else {
            return Err(format!(
                "{MAX_STREAMS} dashboard streams are open, the server's limit; close a tab"
            ));
        };
        let client = match peer {
            Some(ip) => {
                let mut m = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
                let n = m.entry(ip).or_insert(0);
                if *n >= MAX_STREAMS_PER_CLIENT {
                    return Err(format!(
                        "{MAX_STREAMS_PER_CLIENT} dashboard streams are open from {ip}, the limit for one client; close a tab"
                    ));
                }
                *n += 1;
                Some((ip, self.per_client.clone()))
            }
            None => None,
        };
        Ok(StreamSlot {
            _permit: permit,
            client,
        })
    }
}

/// The peer's address, when the listener records it (axum's ConnectInfo).
fn peer(ext: &axum::http::Extensions) -> Option<IpAddr> {
    ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

pub fn router(registry: Arc<Registry>, control: ControlPolicy, settings: Dashboard) -> Router {
    let state = Dash {
        registry,
        control: Arc::new(control),
        session_gap: Duration::from_secs(1) / settings.max_push_hz.max(1),
        streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        per_client: Arc::new(Mutex::new(HashMap::new())),
    };
    Router::new()
        .route("/", get(page))
        .route("/sessions/{id}", get(page))
        .route("/runs/{id}", get(page))
        .route("/compare", get(page))
        .route(
            "/assets/uplot.js",
            get(|| asset(UPLOT_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/assets/uplot.css",
            get(|| asset(UPLOT_CSS, "text/css; charset=utf-8")),
        )
        .route(
            "/assets/app.js",
            get(|| asset(APP_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/assets/app.css",
            get(|| asset(APP_CSS, "text/css; charset=utf-8")),
        )
        .route("/api/events", get(overview_events))
        .route("/api/sessions/{id}/events", get(session_events))
        .route("/api/live", get(live_points))
        .route("/api/control", get(control_mode))
        .with_state(state)
}

fn hardened(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

async fn page() -> Response {
    hardened(
        (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            INDEX_HTML,
        )
            .into_response(),
    )
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    hardened(
        (
            [
                (header::CONTENT_TYPE, content_type),
                // The binary is the version: a new one may change them.
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response(),
    )
}

async fn control_mode(State(d): State<Dash>) -> Response {
    let mode = match (&d.control.token, d.control.loopback) {
        (Some(_), _) => "token",
        (None, true) => "open",
        (None, false) => "disabled",
    };
    let reads = if d.control.read_token {
        "token"
    } else {
        "open"
    };
    // Whether runs are kept (GET /api/runs exists): the runs page asks.
    let store = d.registry.store().is_some();
    Json(serde_json::json!({ "mode": mode, "reads": reads, "store": store })).into_response()
}

fn unavailable(message: String) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

fn sse<S>(stream: S) -> Response
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    let mut r = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

// ------------------------------------------------------------- overview --

#[derive(Serialize)]
struct Row {
    id: String,
    status: &'static str,
    status_message: String,
    client: String,
    model_name: Option<String>,
    dataset_name: Option<String>,
    total_epochs: Option<u32>,
    batches_per_epoch: Option<u32>,
    epoch: Option<u32>,
    batch_idx: Option<u32>,
    last_loss: Option<f32>,
    current_fps: Option<f32>,
    batches_received: u64,
    last_seen_ms: u64,
}

fn row(s: &Session, st: &SessionState) -> Row {
    let c = st.config.as_ref();
    let f = st.latest_frame.as_ref();
    Row {
        id: s.id.clone(),
        status: st.status.as_str_name(),
        status_message: st.status_message.clone(),
        client: st.client_name.clone(),
        model_name: c.map(|c| c.model_name.clone()),
        dataset_name: c.map(|c| c.dataset_name.clone()),
        total_epochs: c.map(|c| c.total_epochs),
        batches_per_epoch: c.map(|c| c.batches_per_epoch),
        epoch: f.map(|f| f.epoch),
        batch_idx: f.map(|f| f.batch_idx),
        last_loss: f.map(|f| f.loss),
        current_fps: st.performance.as_ref().map(|p| p.current_fps),
        batches_received: s.counters.batches_received.load(Relaxed),
        last_seen_ms: s.last_seen_ms(),
    }
}

async fn overview_events(State(d): State<Dash>, ext: axum::http::Extensions) -> Response {
    let permit = match d.open_stream(peer(&ext)) {
        Ok(slot) => slot,
        Err(why) => return unavailable(why),
    };
    let feed = OverviewFeed {
        changes: d.registry.subscribe(),
        registry: d.registry.clone(),
        next_at: Instant::now(),
        first: true,
        _permit: permit,
    };
    let stop = d.registry.shutdown_token().clone().cancelled_owned();
    sse(futures_util::stream::unfold(feed, OverviewFeed::next).take_until(stop))
}

struct OverviewFeed {
    registry: Arc<Registry>,
    changes: watch::Receiver<u64>,
    next_at: Instant,
    first: bool,
    _permit: StreamSlot,
}

impl OverviewFeed {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        if !self.first {
            // A closed sender cannot happen while the registry lives; a
            // timeout is the periodic refresh.
            let _ = tokio::time::timeout(OVERVIEW_REFRESH, self.changes.changed()).await;
            tokio::time::sleep_until(self.next_at).await;
        }
        self.first = false;
        self.changes.borrow_and_update();
        self.next_at = Instant::now() + Duration::from_secs(1) / OVERVIEW_HZ;
        let mut rows = Vec::new();
        for s in self.registry.all() {
            let st = s.state().read().await;
            rows.push(row(&s, &st));
        }
        let body = serde_json::json!({ "server_ms": proto::now_ms(), "sessions": rows });
        Some((
            Ok(Event::default().event("sessions").data(body.to_string())),
            self,
        ))
    }
}

// ----------------------------------------------------------------- live --

/// Runs one live points stream follows (the compare page's most).
pub const LIVE_RUNS: usize = 20;

/// How often a live stream looks again for runs of its list that were not
/// live sessions (a run starting, or restarted by its agent).
const LIVE_RESCAN: Duration = Duration::from_secs(2);

/// `GET /api/live?runs=a,b,c`: event `live` first, `{"runs": [ids that are
/// live sessions now]}` (again when one more becomes live), then event
/// `points`, `{"batches": [{"run", "series": {key: [[step, wall_ms,
/// value], …]}}, …], "lagged": [ids]}`: the point batches applied since
/// the last event (coalesced: a slow reader gets fewer, larger events),
/// and the runs this viewer fell more than the backlog behind on (it reads
/// them from the store again). Points are sent as they are applied,
/// before their commit; the store has them within its commit interval.
async fn live_points(
    State(d): State<Dash>,
    q: axum::extract::Query<Vec<(String, String)>>,
    ext: axum::http::Extensions,
) -> Response {
    let mut ids: Vec<String> = Vec::new();
    for (k, v) in &q.0 {
        if k != "runs" {
            return bad_request(format!(
                "query parameter {k}={v:?}: unknown; /api/live takes runs"
            ));
        }
        ids.extend(v.split(',').filter(|s| !s.is_empty()).map(str::to_string));
    }
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(id.clone()));
    if ids.is_empty() || ids.len() > LIVE_RUNS {
        return bad_request(format!(
            "query parameter runs: {} run ids, expected 1 to {LIVE_RUNS}",
            ids.len()
        ));
    }
    let permit = match d.open_stream(peer(&ext)) {
        Ok(slot) => slot,
        Err(why) => return unavailable(why),
    };
    let mut feed = LiveFeed {
        registry: d.registry.clone(),
        waiting: ids,
        subs: Vec::new(),
        first: true,
        _permit: permit,
    };
    feed.subscribe();
    let stop = d.registry.shutdown_token().clone().cancelled_owned();
    sse(futures_util::stream::unfold(feed, LiveFeed::next).take_until(stop))
}

fn bad_request(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

struct LiveFeed {
    registry: Arc<Registry>,
    /// Runs of the list not (yet) followed: not live sessions.
    waiting: Vec<String>,
    subs: Vec<(String, broadcast::Receiver<Arc<str>>)>,
    first: bool,
    _permit: StreamSlot,
}

impl LiveFeed {
    fn subscribe(&mut self) {
        let registry = &self.registry;
        let subs = &mut self.subs;
        self.waiting.retain(|id| match registry.get(id) {
            Some(s) => {
                subs.push((id.clone(), s.watch_points()));
                false
            }
            None => true,
        });
    }

    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        if std::mem::take(&mut self.first) {
            let live: Vec<&str> = self.subs.iter().map(|(id, _)| id.as_str()).collect();
            let body = serde_json::json!({ "runs": live }).to_string();
            return Some((Ok(Event::default().event("live").data(body)), self));
        }
        loop {
            let got = if self.subs.is_empty() {
                tokio::time::sleep(LIVE_RESCAN).await;
                None
            } else {
                let recvs = self.subs.iter_mut().map(|(_, rx)| Box::pin(rx.recv()));
                tokio::select! {
                    (r, i, _) = futures_util::future::select_all(recvs) => Some((i, r)),
                    _ = tokio::time::sleep(LIVE_RESCAN) => None,
                }
            };
            let Some((i, first)) = got else {
                let before = self.subs.len();
                self.subscribe();
                if self.subs.len() > before {
                    let live: Vec<&str> = self.subs.iter().map(|(id, _)| id.as_str()).collect();
                    let body = serde_json::json!({ "runs": live }).to_string();
                    return Some((Ok(Event::default().event("live").data(body)), self));
                }
                continue;
            };
            // This batch and whatever else is already waiting, one event.
            let mut batches: Vec<Arc<str>> = Vec::new();
            let mut lagged: Vec<String> = Vec::new();
            let mut gone = Vec::new();
            let mut take =
                |r: Result<Arc<str>, broadcast::error::RecvError>, id: &str, j: usize| match r {
                    Ok(b) => batches.push(b),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if !lagged.iter().any(|l| l == id) {
                            lagged.push(id.to_string())
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => gone.push(j),
                };
            take(first, &self.subs[i].0.clone(), i);
            for (j, (id, rx)) in self.subs.iter_mut().enumerate() {
                loop {
                    match rx.try_recv() {
                        Ok(b) => take(Ok(b), id, j),
                        Err(broadcast::error::TryRecvError::Lagged(n)) => {
                            take(Err(broadcast::error::RecvError::Lagged(n)), id, j)
                        }
                        Err(broadcast::error::TryRecvError::Closed) => {
                            take(Err(broadcast::error::RecvError::Closed), id, j);
                            break;
                        }
                        Err(broadcast::error::TryRecvError::Empty) => break,
                    }
                }
            }
            // An evicted session's run waits to come back as a new one.
            gone.sort_unstable();
            gone.dedup();
            for j in gone.into_iter().rev() {
                let (id, _) = self.subs.remove(j);
                self.waiting.push(id);
            }
            if batches.is_empty() && lagged.is_empty() {
                continue;
            }
            let size = batches.iter().map(|b| b.len() + 1).sum::<usize>();
            let mut body = String::with_capacity(size + 32);
            body.push_str("{\"batches\":[");
            for (k, b) in batches.iter().enumerate() {
                if k > 0 {
                    body.push(',');
                }
                body.push_str(b);
            }
            body.push_str("],\"lagged\":");
            body.push_str(&serde_json::to_string(&lagged).unwrap_or_else(|_| "[]".into()));
            body.push('}');
            return Some((Ok(Event::default().event("points").data(body)), self));
        }
    }
}

// -------------------------------------------------------------- session --

/// What one viewer has been sent already, so the next event carries only
/// what changed.
#[derive(Default)]
struct Sent {
    /// `batches_received` when the frame sent was current (0: none sent).
    frame: u64,
    loss_stride: u64,
    loss_len: usize,
    /// (registrations, events applied): config, epochs and status history
    /// change only with these.
    events: Option<(u64, u64)>,
    performance_ms: Option<u64>,
    commands: Vec<CommandState>,
}

struct SessionFeed {
    session: Arc<Session>,
    changes: watch::Receiver<u64>,
    gap: Duration,
    next_at: Instant,
    first: bool,
    sent: Sent,
    _permit: StreamSlot,
}

async fn session_events(
    State(d): State<Dash>,
    Path(id): Path<String>,
    ext: axum::http::Extensions,
) -> Response {
    let Some(session) = d.registry.get(&id) else {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": format!("no session {id:?}") })),
        )
            .into_response();
    };
    let permit = match d.open_stream(peer(&ext)) {
        Ok(slot) => slot,
        Err(why) => return unavailable(why),
    };
    let feed = SessionFeed {
        changes: session.subscribe(),
        session,
        gap: d.session_gap,
        next_at: Instant::now(),
        first: true,
        sent: Sent::default(),
        _permit: permit,
    };
    sse(futures_util::stream::unfold(feed, SessionFeed::next))
}

#[derive(Serialize)]
struct FrameJson {
    /// Batches received when this frame was the newest: its identity.
    seq: u64,
    epoch: u32,
    batch_idx: u32,
    loss: f32,
    /// (predicted class, confidence) per image.
    predictions: Vec<(i32, f32)>,
    ground_truth: Vec<i32>,
    /// JPEGs, base64.
    images: Vec<String>,
    sent_ms: u64,
    received_ms: u64,
}

impl FrameJson {
    fn new(seq: u64, f: Frame) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD;
        FrameJson {
            seq,
            epoch: f.epoch,
            batch_idx: f.batch_idx,
            loss: f.loss,
            images: f.images.iter().map(|i| b64.encode(i)).collect(),
            predictions: f.predictions,
            ground_truth: f.ground_truth,
            sent_ms: f.sent_ms,
            received_ms: f.received_ms,
        }
    }
}

#[derive(Serialize)]
struct LossJson {
    /// True: `points` replace what the viewer has (the series was thinned).
    reset: bool,
    stride: u64,
    /// (epoch, batch_idx, loss).
    points: Vec<(u32, u32, f32)>,
}

/// Performance figures; `null` where the agent has no measurement.
#[derive(Serialize)]
struct EpochJson {
    epoch: u32,
    average_loss: f32,
    average_accuracy: f32,
}

#[derive(Serialize)]
struct StatusJson {
    status: &'static str,
    message: String,
    t_ms: u64,
}

#[derive(Serialize)]
struct Counts {
    batches_received: u64,
    batches_invalid: u64,
    buffer_full: u64,
    commands_sent: u64,
    commands_dropped: u64,
}

#[derive(Serialize)]
struct Update {
    id: String,
    server_ms: u64,
    status: &'static str,
    status_message: String,
    client: String,
    registered_ms: u64,
    last_seen_ms: u64,
    counters: Counts,
    #[serde(skip_serializing_if = "Option::is_none")]
    frame: Option<FrameJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    loss: Option<LossJson>,
    /// Present when it changed; `null` inside means not set.
    #[serde(skip_serializing_if = "Option::is_none")]
    performance: Option<Option<super::http::PerformanceJson>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<Option<ConfigJson>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epochs: Option<Vec<EpochJson>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_history: Option<Vec<StatusJson>>,
    /// The newest commands and what became of each, when that changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    commands: Option<Vec<CommandState>>,
}

impl SessionFeed {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        if !self.first {
            tokio::select! {
                _ = self.session.closed() => return None,
                r = self.changes.changed() => r.ok()?,
            }
            tokio::select! {
                _ = self.session.closed() => return None,
                _ = tokio::time::sleep_until(self.next_at) => {}
            }
        }
        self.first = false;
        self.changes.borrow_and_update();
        self.next_at = Instant::now() + self.gap;
        let update = self.snapshot().await;
        let data = serde_json::to_string(&update).unwrap_or_default();
        Some((Ok(Event::default().event("update").data(data)), self))
    }

    /// Copies what changed since the last event under the read lock, then
    /// encodes it with the lock released.
    async fn snapshot(&mut self) -> Update {
        let s = &self.session;
        let c = &s.counters;
        let st = s.state().read().await;
        let seq = c.batches_received.load(Relaxed);
        let frame = if seq != self.sent.frame {
            self.sent.frame = seq;
            st.latest_frame.clone().map(|f| (seq, f))
        } else {
            None
        };
        let (stride, points) = (st.loss.stride(), st.loss.points());
        let loss = if stride == self.sent.loss_stride && points.len() >= self.sent.loss_len {
            let new = &points[self.sent.loss_len..];
            (!new.is_empty()).then(|| LossJson {
                reset: false,
                stride,
                points: new.iter().map(|p| (p.epoch, p.batch_idx, p.loss)).collect(),
            })
        } else {
            Some(LossJson {
                reset: true,
                stride,
                points: points
                    .iter()
                    .map(|p| (p.epoch, p.batch_idx, p.loss))
                    .collect(),
            })
        };
        self.sent.loss_stride = stride;
        self.sent.loss_len = points.len();
        let events = (
            c.registrations.load(Relaxed),
            c.events_applied.load(Relaxed),
        );
        let events_changed = self.sent.events != Some(events);
        self.sent.events = Some(events);
        let perf_ms = st.performance.as_ref().map(|p| p.timestamp_ms);
        let performance = (self.sent.performance_ms != perf_ms || frame.is_some()).then(|| {
            st.performance
                .as_ref()
                .map(super::http::PerformanceJson::from)
        });
        self.sent.performance_ms = perf_ms;
        let log = s.command_log();
        let commands = (log != self.sent.commands).then(|| log.clone());
        self.sent.commands = log;
        let update = Update {
            id: s.id.clone(),
            server_ms: proto::now_ms(),
            status: st.status.as_str_name(),
            status_message: st.status_message.clone(),
            client: st.client_name.clone(),
            registered_ms: st.registered_ms,
            last_seen_ms: s.last_seen_ms(),
            counters: Counts {
                batches_received: seq,
                batches_invalid: c.batches_invalid.load(Relaxed),
                buffer_full: c.buffer_full.load(Relaxed),
                commands_sent: c.commands_sent.load(Relaxed),
                commands_dropped: c.commands_dropped.load(Relaxed),
            },
            frame: None,
            loss,
            performance,
            config: events_changed.then(|| st.config.as_ref().map(ConfigJson::from)),
            epochs: events_changed.then(|| {
                st.epochs
                    .iter()
                    .map(|e| EpochJson {
                        epoch: e.epoch,
                        average_loss: e.average_loss,
                        average_accuracy: e.average_accuracy,
                    })
                    .collect()
            }),
            status_history: events_changed.then(|| {
                st.status_history
                    .iter()
                    .map(|r| StatusJson {
                        status: r.status.as_str_name(),
                        message: r.message.clone(),
                        t_ms: r.t_ms,
                    })
                    .collect()
            }),
            commands,
        };
        drop(st);
        // Base64 of up to max_batch_size JPEGs: outside the lock.
        Update {
            frame: frame.map(|(seq, f)| FrameJson::new(seq, f)),
            ..update
        }
    }
}
