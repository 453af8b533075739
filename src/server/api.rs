//! The run store's HTTP API (issue 14): every run the store knows, live and
//! finished, with its scalar series (downsampled server-side), a streamed
//! export, images, commands, status history, epochs and performance
//! figures. Read-only except `DELETE /api/runs/{id}`, which is guarded like
//! control (see [`super::http`]). Shapes are in docs/http-api.md.
//!
//! Lists are objects with a named array (`{"runs": [...]}`); errors are
//! `{"error": "..."}` naming the parameter and the value (400) or the run
//! (404). [`routes`] sets no fallback so the lead can `merge` it into the
//! session router, which has one.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::StreamExt;
use serde_json::json;

use super::http::{authorize, ControlPolicy};
use super::store::{
    self, content_hash, export, figures, ExportFormat, Goal, RunQuery, RunStatus, ScalarQuery,
    Store, StoreError,
};

/// Buckets per series when `points` is not given, and the most served.
pub const DEFAULT_POINTS: usize = 1000;
pub const MAX_POINTS: usize = 100_000;

#[derive(Clone)]
struct Api {
    store: Arc<dyn Store>,
    control: Arc<ControlPolicy>,
}

pub fn routes(store: Arc<dyn Store>, control: ControlPolicy) -> Router {
    let api = Api {
        store,
        control: Arc::new(control),
    };
    Router::new()
        .route("/api/runs", get(list))
        .route("/api/runs/{id}", get(detail).delete(delete))
        .route("/api/runs/{id}/scalars", get(scalars))
        .route("/api/runs/{id}/export", get(export_run))
        .route("/api/runs/{id}/images", get(images))
        .route("/api/runs/{id}/images/{step}/{hash}", get(jpeg))
        .route("/api/runs/{id}/commands", get(commands))
        .route("/api/runs/{id}/statuses", get(statuses))
        .route("/api/runs/{id}/epochs", get(epochs))
        .route("/api/runs/{id}/perf", get(perf))
        .with_state(api)
}

/// An answer other than 200, as JSON.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad(param: &str, value: &str, why: &str) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("query parameter {param}={value:?}: {why}"),
        }
    }

    fn no_run(id: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("no run {id:?} in the store"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::UnknownRun { run } => ApiError::no_run(&run),
            StoreError::BadCursor(c) => {
                ApiError::bad("cursor", &c, "not a cursor this server handed out")
            }
            e => {
                tracing::warn!(error = %e, "store read failed");
                ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    message: e.to_string(),
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

type Answer = Result<Response, ApiError>;

/// A request's query parameters, checked against the ones its endpoint
/// takes so a typo (`point=`) is a 400, not a silently ignored filter.
struct Params(Vec<(String, String)>);

impl Params {
    fn new(
        q: Result<Query<Vec<(String, String)>>, QueryRejection>,
        allowed: &[&str],
    ) -> Result<Params, ApiError> {
        let Query(pairs) = q.map_err(|e| ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("query string: {e}"),
        })?;
        if let Some((k, v)) = pairs.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            return Err(ApiError::bad(
                k,
                v,
                &format!(
                    "unknown parameter; this endpoint takes {}",
                    allowed.join(", ")
                ),
            ));
        }
        Ok(Params(pairs))
    }

    /// The last value given for `name`, when not empty.
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| ApiError::bad(name, v, "not a whole number"))
            })
            .transpose()
    }

    /// `from..=to` (both optional, whole numbers, `from <= to`).
    fn range(&self) -> Result<(Option<i64>, Option<i64>), ApiError> {
        let (from, to) = (self.int("from")?, self.int("to")?);
        if let (Some(a), Some(b)) = (from, to) {
            if a > b {
                return Err(ApiError::bad(
                    "to",
                    &b.to_string(),
                    &format!("below from={a}"),
                ));
            }
        }
        Ok((from, to))
    }

    fn count(&self, name: &str, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.int(name)? {
            None => Ok(default),
            Some(n) if n >= 1 && n as u64 <= max as u64 => Ok(n as usize),
            Some(n) => Err(ApiError::bad(
                name,
                &n.to_string(),
                &format!("expected 1..={max}"),
            )),
        }
    }
}

/// 404 unless the run is stored: the store's list reads answer an unknown
/// run with nothing, so this is asked only when a read came back empty.
async fn known(api: &Api, id: &str, empty: bool) -> Result<(), ApiError> {
    if empty && api.store.run(id).await?.is_none() {
        return Err(ApiError::no_run(id));
    }
    Ok(())
}

async fn list(
    State(api): State<Api>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Answer {
    let p = Params::new(
        q,
        &[
            "status", "device", "q", "limit", "cursor", "sort", "order", "metric", "goal",
        ],
    )?;
    let metric = p.get("metric");
    if let Some(m) = metric {
        if !crate::shm::layout::valid_key(m.as_bytes()) {
            return Err(ApiError::bad(
                "metric",
                m,
                "a key is 1 to 128 characters of [A-Za-z0-9._/-]",
            ));
        }
    }
    let goal = match p.get("goal") {
        None => metric.map(Goal::for_key),
        Some(g) => {
            Some(Goal::parse(g).ok_or_else(|| ApiError::bad("goal", g, "expected min or max"))?)
        }
    };
    let sort = p
        .get("sort")
        .map(|s| {
            store::RunSort::parse(s).ok_or_else(|| {
                ApiError::bad(
                    "sort",
                    s,
                    "expected created, name, device, status, points or updated",
                )
            })
        })
        .transpose()?
        .unwrap_or_default();
    let ascending = match p.get("order") {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(o) => return Err(ApiError::bad("order", o, "expected asc or desc")),
    };
    let status = p
        .get("status")
        .map(|s| {
            RunStatus::parse(s).map_err(|_| {
                ApiError::bad(
                    "status",
                    s,
                    "expected unknown, initializing, running, paused, completed or failed",
                )
            })
        })
        .transpose()?;
    let query = RunQuery {
        status,
        device: p.get("device").map(str::to_string),
        text: p.get("q").map(str::to_string),
        limit: p.count("limit", store::DEFAULT_PAGE, store::MAX_PAGE)?,
        cursor: p.get("cursor").map(str::to_string),
        sort,
        ascending,
    };
    let page = api.store.runs(&query).await?;
    let ids: Vec<String> = page.runs.iter().map(|r| r.run.id.clone()).collect();
    let mut keys = vec![figures::LOSS_KEY];
    keys.extend(metric);
    let figures = api.store.figures(&ids, &keys).await?;
    let mut seen = std::collections::BTreeSet::new();
    let runs: Vec<serde_json::Value> = page
        .runs
        .iter()
        .zip(&figures)
        .map(|(r, f)| {
            seen.extend(f.keys.iter().cloned());
            let best = metric.zip(goal).and_then(|(m, goal)| {
                let s = f.of(m)?;
                let best = match goal {
                    Goal::Min => s.min,
                    Goal::Max => s.max,
                }?;
                Some(json!({ "key": m, "goal": goal, "best": best, "last": s.last }))
            });
            let mut v = json!(r);
            v["figures"] = json!({
                "last_loss": f.of(figures::LOSS_KEY).and_then(|s| s.last),
                "fps": f.fps,
                "metric": best,
            });
            v
        })
        .collect();
    Ok(Json(json!({ "runs": runs, "next_cursor": page.next, "keys": seen })).into_response())
}

async fn detail(State(api): State<Api>, Path(id): Path<String>) -> Answer {
    match api.store.run(&id).await? {
        Some(run) => Ok(Json(run).into_response()),
        None => Err(ApiError::no_run(&id)),
    }
}

async fn scalars(
    State(api): State<Api>,
    Path(id): Path<String>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Answer {
    let p = Params::new(q, &["keys", "from", "to", "points"])?;
    // `keys=a,b` or `keys=a&keys=b`; key names cannot hold a comma.
    let mut keys = Vec::new();
    for (_, v) in p.0.iter().filter(|(k, _)| k == "keys") {
        for key in v.split(',') {
            if key.is_empty() || key.len() > 128 {
                return Err(ApiError::bad("keys", v, "each key is 1-128 characters"));
            }
            keys.push(key.to_string());
        }
    }
    let (from, to) = p.range()?;
    let query = ScalarQuery {
        keys,
        from,
        to,
        points: p.count("points", DEFAULT_POINTS, MAX_POINTS)?,
    };
    let series = api.store.scalars(&id, &query).await?;
    known(&api, &id, series.is_empty()).await?;
    Ok(Json(json!({ "series": series })).into_response())
}

/// A run id made safe for a Content-Disposition file name.
fn file_name(id: &str) -> String {
    id.chars()
        .map(|c| match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '.' | '-' | '_' => c,
            _ => '_',
        })
        .collect()
}

async fn export_run(
    State(api): State<Api>,
    Path(id): Path<String>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Answer {
    let p = Params::new(q, &["format"])?;
    let format = match p.get("format") {
        None => ExportFormat::Ndjson,
        Some(f) => ExportFormat::parse(f)
            .ok_or_else(|| ApiError::bad("format", f, "expected csv or ndjson"))?,
    };
    known(&api, &id, true).await?;
    let points = api.store.export(&id).await?;
    let run = id.clone();
    // Chunks as the store reads them: memory stays one chunk whatever the
    // run's size. An error mid-way ends the body without its final chunk,
    // so the client sees a truncated transfer, never a short "complete" one.
    let body = export::encode(points, format).map(move |chunk| {
        chunk.map_err(|e| {
            tracing::warn!(run = %run, error = %e, "export failed mid-stream");
            e
        })
    });
    let ext = match format {
        ExportFormat::Csv => "csv",
        ExportFormat::Ndjson => "ndjson",
    };
    Ok((
        [
            (header::CONTENT_TYPE, format.content_type().to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.{ext}\"", file_name(&id)),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn images(
    State(api): State<Api>,
    Path(id): Path<String>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Answer {
    let p = Params::new(q, &["from", "to"])?;
    let (from, to) = p.range()?;
    let samples = api
        .store
        .images(&id, from.unwrap_or(i64::MIN), to.unwrap_or(i64::MAX))
        .await?;
    known(&api, &id, samples.is_empty()).await?;
    let out: Vec<_> = samples
        .iter()
        .map(|s| {
            let jpegs: Vec<_> = s
                .jpegs
                .iter()
                .map(|j| {
                    let h = hex(&content_hash(j));
                    json!({
                        "hash": h,
                        "bytes": j.len(),
                        "url": format!("/api/runs/{id}/images/{}/{h}", s.step),
                    })
                })
                .collect();
            json!({
                "epoch": s.epoch,
                "step": s.step,
                "wall_ms": s.wall_ms,
                "predictions": s.predictions,
                "labels": s.labels,
                "jpegs": jpegs,
            })
        })
        .collect();
    Ok(Json(json!({ "images": out })).into_response())
}

/// One stored JPEG by its SHA-256, within the sample at `step` (which
/// bounds the read to that sample).
async fn jpeg(
    State(api): State<Api>,
    Path((id, step, hash)): Path<(String, String, String)>,
) -> Answer {
    let step: i64 = step
        .parse()
        .map_err(|_| ApiError::bad("step", &step, "not a whole number"))?;
    let samples = api.store.images(&id, step, step).await?;
    known(&api, &id, samples.is_empty()).await?;
    let found = samples
        .iter()
        .flat_map(|s| s.jpegs.iter())
        .find(|j| hex(&content_hash(j)) == hash.to_ascii_lowercase());
    match found {
        Some(bytes) => Ok((
            [
                (header::CONTENT_TYPE, "image/jpeg"),
                // Content-addressed: the bytes under this URL never change.
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            bytes.clone(),
        )
            .into_response()),
        None => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("run {id:?} has no image {hash:?} at step {step}"),
        }),
    }
}

async fn commands(State(api): State<Api>, Path(id): Path<String>) -> Answer {
    let rows = api.store.commands(&id).await?;
    known(&api, &id, rows.is_empty()).await?;
    Ok(Json(json!({ "commands": rows })).into_response())
}

async fn statuses(State(api): State<Api>, Path(id): Path<String>) -> Answer {
    let rows = api.store.statuses(&id).await?;
    known(&api, &id, rows.is_empty()).await?;
    Ok(Json(json!({ "statuses": rows })).into_response())
}

async fn epochs(State(api): State<Api>, Path(id): Path<String>) -> Answer {
    let rows = api.store.epochs(&id).await?;
    known(&api, &id, rows.is_empty()).await?;
    Ok(Json(json!({ "epochs": rows })).into_response())
}

async fn perf(
    State(api): State<Api>,
    Path(id): Path<String>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Answer {
    let p = Params::new(q, &["from", "to"])?;
    let (from, to) = p.range()?;
    let rows = api
        .store
        .perf(&id, from.unwrap_or(i64::MIN), to.unwrap_or(i64::MAX))
        .await?;
    known(&api, &id, rows.is_empty()).await?;
    Ok(Json(json!({ "perf": rows })).into_response())
}

/// Deletes a run and everything stored for it; guarded like control.
async fn delete(State(api): State<Api>, Path(id): Path<String>, headers: HeaderMap) -> Answer {
    match authorize(&api.control, &headers) {
        // The media-type check is http.rs's last and is about request
        // bodies (a form can POST, never DELETE); a DELETE carries none, so
        // reaching it means the token and origin checks passed.
        Ok(()) | Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, _)) => {}
        Err((status, message)) => return Err(ApiError { status, message }),
    }
    if !api.store.delete_run(&id).await? {
        return Err(ApiError::no_run(&id));
    }
    tracing::info!(run = %id, "run deleted through the HTTP API");
    Ok(Json(json!({ "deleted": id })).into_response())
}
