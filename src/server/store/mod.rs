//! The server's system of record: runs, their status history, epochs, every
//! named scalar point, per-second performance figures, the command log and
//! sampled images, kept on disk so a restart forgets nothing.
//!
//! One small object-safe trait, [`Store`] (async through the `async-trait`
//! crate, so it is used as `Arc<dyn Store>`), and one file per backend:
//! [`sqlite`] (embedded, the default) and [`postgres`] (shared by replicas).
//! Both keep the same schema and pass the same test suite (tests/store.rs).
//! Writes go through [`Writer`], one task that commits them in groups and
//! tells each submitter when its write is committed, so the server
//! acknowledges to the agent only what is on disk.
//!
//! Exactly-once: each run stores `last_event_seq` and `last_point_seq` in
//! the transaction that stores the rows; a resent sequence number at or
//! below it is skipped, one beyond `last + 1` is refused ([`admit`]).

pub mod chunk;
pub mod export;
pub mod figures;
pub mod group;
pub mod postgres;
pub mod retention;
pub mod rollup;
pub mod sqlite;
pub mod writer;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};

pub use export::ExportFormat;
pub use figures::{Goal, RunFigures, SeriesFigures};
pub use writer::{Pending, Writer, WriterConfig};

/// The schema this build writes; [`sqlite`] and [`postgres`] migrate older
/// databases up to it at open and refuse newer ones.
pub const SCHEMA_VERSION: u32 = 4;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open store {place}: {reason}")]
    Open { place: String, reason: String },
    #[error("database {place} has schema version {found}, newer than version {supported} that this trainwatch supports; upgrade trainwatch")]
    NewerSchema {
        place: String,
        found: u32,
        supported: u32,
    },
    #[error("run {run:?} is not in the store")]
    UnknownRun { run: String },
    #[error("run {run:?}: {what} sequence number {seq} leaves a gap after the last stored {last} (expected {expected})", expected = last + 1)]
    SeqGap {
        run: String,
        what: SeqKind,
        seq: u64,
        last: u64,
    },
    #[error("run {run:?}: command {id} is not in the command log")]
    UnknownCommand { run: String, id: u64 },
    #[error("run {run:?}: scalar {key:?} at step {step} has non-finite value {value}")]
    NonFinite {
        run: String,
        key: String,
        step: i64,
        value: f64,
    },
    #[error("list cursor {0:?} is not one this store handed out")]
    BadCursor(String),
    #[error("stored {what} {value:?} is not valid")]
    Corrupt { what: &'static str, value: String },
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("group commit of {writes} writes failed: {source}")]
    GroupCommit {
        writes: usize,
        #[source]
        source: Arc<StoreError>,
    },
    #[error("the store's writer has stopped")]
    WriterStopped,
    #[error("store worker thread failed: {0}")]
    Worker(String),
}

/// Which of a run's two sequences a number belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqKind {
    /// Epoch summaries and status changes (the segment's event ring).
    Event,
    /// Scalar points (the segment's point ring).
    Point,
}

impl std::fmt::Display for SeqKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SeqKind::Event => "event",
            SeqKind::Point => "point",
        })
    }
}

/// What to do with `count` rows numbered from `first`, given the last
/// stored number: how many leading rows to skip as already stored (all of
/// them for a full resend), or a gap error naming both numbers.
pub fn admit(run: &str, what: SeqKind, last: u64, first: u64, count: u64) -> Result<u64> {
    if first > last + 1 {
        return Err(StoreError::SeqGap {
            run: run.to_string(),
            what,
            seq: first,
            last,
        });
    }
    Ok((last + 1 - first).min(count))
}

/// A run's status, as the wire's TrainingStatus names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Unknown,
    Initializing,
    Running,
    Paused,
    Completed,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Unknown => "unknown",
            RunStatus::Initializing => "initializing",
            RunStatus::Running => "running",
            RunStatus::Paused => "paused",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Result<RunStatus> {
        Ok(match s {
            "unknown" => RunStatus::Unknown,
            "initializing" => RunStatus::Initializing,
            "running" => RunStatus::Running,
            "paused" => RunStatus::Paused,
            "completed" => RunStatus::Completed,
            "failed" => RunStatus::Failed,
            other => {
                return Err(StoreError::Corrupt {
                    what: "run status",
                    value: other.to_string(),
                })
            }
        })
    }

    /// A finished run: retention may delete it, the image quota evicts it.
    pub fn is_finished(self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Failed)
    }
}

/// A run's identity and what it trains, as registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub device: String,
    pub name: String,
    pub model: String,
    pub dataset: String,
    /// The run's configuration as JSON text.
    pub config: String,
    pub created_ms: i64,
    /// The identity that registered it (server::identity), kept so that it
    /// stays bound across server restarts; set once, never replaced. Not
    /// shown by the API.
    #[serde(skip)]
    pub owner: Option<String>,
}

/// A run's summary row: what listings show, kept up to date in the
/// transactions that store the run's rows, so a listing never reads them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    #[serde(flatten)]
    pub run: RunRecord,
    pub status: RunStatus,
    pub started_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    pub updated_ms: i64,
    pub last_event_seq: u64,
    pub last_point_seq: u64,
    pub epochs: u64,
    pub points: u64,
    pub last_step: Option<i64>,
    pub images: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusRecord {
    pub seq: u64,
    pub wall_ms: i64,
    pub status: RunStatus,
    pub message: String,
}

/// An epoch summary with its named metrics (average loss, accuracy and
/// whatever else the trainer passed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub seq: u64,
    pub epoch: u32,
    pub wall_ms: i64,
    pub metrics: BTreeMap<String, f64>,
}

/// One value of a named scalar, as written: the run is the write's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub key: String,
    pub step: i64,
    pub wall_ms: i64,
    pub value: f64,
}

/// One value of a named scalar, as exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalarPoint {
    pub run: String,
    pub key: String,
    pub step: i64,
    pub wall_ms: i64,
    pub value: f64,
}

/// One second of performance and resource figures. Each is `None` when
/// the device did not measure it: absent is not 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PerfSample {
    pub wall_ms: i64,
    pub fps: Option<f64>,
    pub batch_ms: Option<f64>,
    pub cpu_percent: Option<f64>,
    pub ram_mb: Option<f64>,
    pub gpu_percent: Option<f64>,
    pub gpu_mem_mb: Option<f64>,
    pub gpu_clock_mhz: Option<f64>,
}

/// A control command: who sent what when, and when the agent delivered it
/// and the trainer applied it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    /// The server's number for the command within its run (from 1).
    pub id: u64,
    pub who: String,
    pub when_ms: i64,
    /// The command and its parameters as JSON text.
    pub what: String,
    pub delivered_ms: Option<i64>,
    pub applied_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub class: i32,
    pub confidence: f32,
}

/// A sampled batch: its JPEGs (stored once each, addressed by SHA-256),
/// predictions and labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageSample {
    pub epoch: u32,
    pub step: i64,
    pub wall_ms: i64,
    #[serde(skip)]
    pub jpegs: Vec<bytes::Bytes>,
    pub predictions: Vec<Prediction>,
    pub labels: Vec<i32>,
}

/// SHA-256 of a JPEG: the key it is stored under.
pub fn content_hash(jpeg: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, jpeg)
        .as_ref()
        .to_vec()
}

/// One change to the store. A run must be registered ([`Write::Run`])
/// before anything is written for it.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Registers a run or updates its description; keeps its sequences.
    Run(RunRecord),
    /// A status change, numbered in the run's event sequence.
    Status {
        run: String,
        record: StatusRecord,
    },
    /// An epoch summary, numbered in the run's event sequence.
    Epoch {
        run: String,
        record: EpochRecord,
    },
    /// Scalar points numbered `first_seq`, `first_seq + 1`, … in the run's
    /// point sequence.
    Points {
        run: String,
        first_seq: u64,
        points: Vec<Point>,
    },
    /// The agent lost the run's `what` numbers after the last stored, up
    /// to `through` (its segment's ring was lapped): the sequence moves on
    /// to `through` so the next number applies; never moves it backwards.
    Gap {
        run: String,
        what: SeqKind,
        through: u64,
    },
    Perf {
        run: String,
        samples: Vec<PerfSample>,
    },
    /// Adds a command to the log (or replaces the one with its id).
    Command {
        run: String,
        record: CommandRecord,
    },
    CommandDelivered {
        run: String,
        id: u64,
        at_ms: i64,
    },
    CommandApplied {
        run: String,
        id: u64,
        at_ms: i64,
    },
    Image {
        run: String,
        sample: ImageSample,
    },
}

impl Write {
    /// Rows it adds: what the writer counts towards a group's size.
    pub fn rows(&self) -> usize {
        match self {
            Write::Points { points, .. } => points.len().max(1),
            Write::Perf { samples, .. } => samples.len().max(1),
            Write::Image { sample, .. } => 1 + sample.jpegs.len(),
            _ => 1,
        }
    }

    pub fn run(&self) -> &str {
        match self {
            Write::Run(r) => &r.id,
            Write::Status { run, .. }
            | Write::Epoch { run, .. }
            | Write::Points { run, .. }
            | Write::Gap { run, .. }
            | Write::Perf { run, .. }
            | Write::Command { run, .. }
            | Write::CommandDelivered { run, .. }
            | Write::CommandApplied { run, .. }
            | Write::Image { run, .. } => run,
        }
    }

    /// Refuses what no backend may store, before any SQL runs.
    /// Points or a point gap: what a backend gathers into a
    /// [`group::PointGroup`] instead of storing on its own.
    pub fn is_point(&self) -> bool {
        matches!(
            self,
            Write::Points { .. }
                | Write::Gap {
                    what: SeqKind::Point,
                    ..
                }
        )
    }

    pub fn check(&self) -> Result<()> {
        if let Write::Points { run, points, .. } = self {
            if let Some(p) = points.iter().find(|p| !p.value.is_finite()) {
                return Err(StoreError::NonFinite {
                    run: run.clone(),
                    key: p.key.clone(),
                    step: p.step,
                    value: p.value,
                });
            }
        }
        Ok(())
    }
}

/// What a committed write did: rows stored, and rows skipped because their
/// sequence numbers were already stored (a resend).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub stored: u64,
    pub skipped: u64,
}

/// `GET /api/runs`: filters, page size, and the cursor of the previous page.
#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    pub status: Option<RunStatus>,
    pub device: Option<String>,
    /// Substring of the id, name, model or dataset.
    pub text: Option<String>,
    pub limit: usize,
    pub cursor: Option<String>,
    /// What the page is ordered by (the id breaks ties the same way).
    pub sort: RunSort,
    /// Smallest first; the default is largest (newest) first.
    pub ascending: bool,
}

/// The columns a run listing can be ordered by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RunSort {
    #[default]
    Created,
    Name,
    Device,
    Status,
    Points,
    Updated,
}

impl RunSort {
    pub const ALL: [RunSort; 6] = [
        RunSort::Created,
        RunSort::Name,
        RunSort::Device,
        RunSort::Status,
        RunSort::Points,
        RunSort::Updated,
    ];

    /// Its name in `GET /api/runs?sort=`.
    pub fn name(self) -> &'static str {
        match self {
            RunSort::Created => "created",
            RunSort::Name => "name",
            RunSort::Device => "device",
            RunSort::Status => "status",
            RunSort::Points => "points",
            RunSort::Updated => "updated",
        }
    }

    pub fn parse(s: &str) -> Option<RunSort> {
        RunSort::ALL.into_iter().find(|k| k.name() == s)
    }

    fn column(self) -> &'static str {
        match self {
            RunSort::Created => "created_ms",
            RunSort::Name => "name",
            RunSort::Device => "device",
            RunSort::Status => "status",
            RunSort::Points => "points",
            RunSort::Updated => "updated_ms",
        }
    }

    fn is_text(self) -> bool {
        matches!(self, RunSort::Name | RunSort::Device | RunSort::Status)
    }

    /// The row's value of this column, as a cursor carries it.
    fn value(self, r: &RunSummary) -> SqlParam {
        match self {
            RunSort::Created => SqlParam::Int(r.run.created_ms),
            RunSort::Name => SqlParam::Text(r.run.name.clone()),
            RunSort::Device => SqlParam::Text(r.run.device.clone()),
            RunSort::Status => SqlParam::Text(r.status.as_str().to_string()),
            RunSort::Points => SqlParam::Int(r.points as i64),
            RunSort::Updated => SqlParam::Int(r.updated_ms),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunPage {
    pub runs: Vec<RunSummary>,
    /// Pass as [`RunQuery::cursor`] for the next page; `None` on the last.
    pub next: Option<String>,
}

/// Page size when the query gives none, and the largest one served.
pub const DEFAULT_PAGE: usize = 50;
pub const MAX_PAGE: usize = 1000;

/// A value bound into a run listing's SQL; each backend converts it to its
/// own parameter type.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlParam {
    Text(String),
    Int(i64),
}

/// The SQL dialect bits a run listing differs in between the backends.
pub struct Dialect {
    /// The `n`th (1-based) placeholder: `$n` or `?n`.
    pub placeholder: fn(usize) -> String,
    /// The substring-position function: `strpos` or `instr`.
    pub position: &'static str,
}

/// A run listing as one query: the page of `q` newest first, one row more
/// than the page so the caller knows whether a next page exists. Returns
/// the SQL (after `SELECT {columns} FROM runs`), its parameters in order,
/// and the page size.
pub fn runs_query(q: &RunQuery, d: &Dialect) -> Result<(String, Vec<SqlParam>, usize)> {
    let limit = if q.limit == 0 {
        DEFAULT_PAGE
    } else {
        q.limit.min(MAX_PAGE)
    };
    let mut sql = String::from(" WHERE 1 = 1");
    let mut args = Vec::new();
    let bind = |args: &mut Vec<SqlParam>, v: SqlParam| {
        args.push(v);
        (d.placeholder)(args.len())
    };
    if let Some(s) = q.status {
        let p = bind(&mut args, SqlParam::Text(s.as_str().into()));
        sql += &format!(" AND status = {p}");
    }
    if let Some(dev) = &q.device {
        let p = bind(&mut args, SqlParam::Text(dev.clone()));
        sql += &format!(" AND device = {p}");
    }
    if let Some(t) = q.text.as_ref().filter(|t| !t.is_empty()) {
        let p = bind(&mut args, SqlParam::Text(t.to_lowercase()));
        let f = d.position;
        sql += &format!(
            " AND ({f}(lower(id), {p}) > 0 OR {f}(lower(name), {p}) > 0
               OR {f}(lower(model), {p}) > 0 OR {f}(lower(dataset), {p}) > 0)"
        );
    }
    let col = q.sort.column();
    let (cmp, dir) = if q.ascending {
        (">", "ASC")
    } else {
        ("<", "DESC")
    };
    if let Some(cursor) = &q.cursor {
        let (value, id) = decode_cursor(cursor, q)?;
        let a = bind(&mut args, value);
        let b = bind(&mut args, SqlParam::Text(id));
        sql += &format!(" AND ({col} {cmp} {a} OR ({col} = {a} AND id {cmp} {b}))");
    }
    let p = bind(&mut args, SqlParam::Int(limit as i64 + 1));
    sql += &format!(" ORDER BY {col} {dir}, id {dir} LIMIT {p}");
    Ok((sql, args, limit))
}

/// Cuts the extra row [`runs_query`] asked for into the next page's cursor.
pub fn page(mut runs: Vec<RunSummary>, limit: usize, q: &RunQuery) -> RunPage {
    let next = if runs.len() > limit {
        runs.truncate(limit);
        runs.last().map(|r| encode_cursor(q, r))
    } else {
        None
    };
    RunPage { runs, next }
}

/// Keyset cursor: the order is (column, id), both one way, so the last
/// row's pair says where the next page starts. Newest first (the default)
/// keeps its old form `created_ms.id`; another order is
/// `sort~a|d~value~id`, the value hex-encoded when it is text.
pub fn encode_cursor(q: &RunQuery, r: &RunSummary) -> String {
    if q.sort == RunSort::Created && !q.ascending {
        return format!("{}.{}", r.run.created_ms, r.run.id);
    }
    let value = match q.sort.value(r) {
        SqlParam::Int(i) => i.to_string(),
        SqlParam::Text(t) => t.bytes().map(|b| format!("{b:02x}")).collect(),
    };
    let dir = if q.ascending { "a" } else { "d" };
    format!("{}~{dir}~{value}~{}", q.sort.name(), r.run.id)
}

/// The (value, id) a cursor of [`encode_cursor`] carries, or BadCursor
/// when it is not one for this query's order.
pub fn decode_cursor(cursor: &str, q: &RunQuery) -> Result<(SqlParam, String)> {
    let bad = || StoreError::BadCursor(cursor.to_string());
    if q.sort == RunSort::Created && !q.ascending {
        let (ms, id) = cursor.split_once('.').ok_or_else(bad)?;
        return Ok((
            SqlParam::Int(ms.parse().map_err(|_| bad())?),
            id.to_string(),
        ));
    }
    let mut parts = cursor.splitn(4, '~');
    let (Some(sort), Some(dir), Some(value), Some(id)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if sort != q.sort.name() || dir != if q.ascending { "a" } else { "d" } {
        return Err(bad());
    }
    let value = if q.sort.is_text() {
        let bytes = (0..value.len())
            .step_by(2)
            .map(|i| {
                value
                    .get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(bad)?;
        SqlParam::Text(String::from_utf8(bytes).map_err(|_| bad())?)
    } else {
        SqlParam::Int(value.parse().map_err(|_| bad())?)
    };
    Ok((value, id.to_string()))
}

/// `GET /api/runs/{id}/scalars`: which series (all when empty), the step
/// range (inclusive), and at most how many buckets per series.
#[derive(Debug, Clone)]
pub struct ScalarQuery {
    pub keys: Vec<String>,
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub points: usize,
}

/// One bucket of a downsampled series, or one point at full resolution
/// (`count == 1`, `min == max == last`). `step` and `wall_ms` are the last
/// point's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bucket {
    pub step: i64,
    pub wall_ms: i64,
    pub min: f64,
    pub max: f64,
    pub last: f64,
    pub count: u64,
}

impl Bucket {
    pub fn point(step: i64, wall_ms: i64, value: f64) -> Bucket {
        Bucket {
            step,
            wall_ms,
            min: value,
            max: value,
            last: value,
            count: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    pub key: String,
    pub downsampled: bool,
    pub buckets: Vec<Bucket>,
}

/// Bucket width in steps for `n` buckets over `lo..=hi` (at least 1).
pub fn bucket_width(lo: i64, hi: i64, n: usize) -> i64 {
    let span = (hi - lo).saturating_add(1).max(1);
    let n = n.max(1) as i64;
    (span + n - 1) / n
}

/// Retention: `keep_days` of finished runs (0 = forever), and a global
/// byte quota for stored JPEGs (0 = none) that evicts the images of the
/// oldest finished runs first, never their scalars.
#[derive(Debug, Clone, Copy, Default)]
pub struct Retention {
    pub keep_days: u32,
    pub image_quota_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub runs_deleted: Vec<String>,
    /// Runs whose images the quota evicted.
    pub images_evicted: Vec<String>,
    pub image_bytes: u64,
}

/// Options every backend takes at open.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Most image samples kept per run (0 = no cap); beyond it the run's
    /// oldest sample goes, in the transaction that adds the new one.
    pub images_per_run: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        // 1,000 samples of 16 small JPEGs is about 20 MB a run.
        StoreOptions {
            images_per_run: 1000,
        }
    }
}

pub type PointStream = BoxStream<'static, Result<ScalarPoint>>;

/// Rows one export step reads before handing them on: bounds the memory
/// an export holds whatever the run's size.
pub const EXPORT_CHUNK: usize = 4096;

/// The store. Every method is one transaction or one consistent read.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// "sqlite" or "postgres".
    fn backend(&self) -> &'static str;

    /// The schema version the database is at.
    async fn schema_version(&self) -> Result<u32>;

    /// Applies `writes` in order in one transaction and commits it. A write
    /// that is refused (unknown run, sequence gap) gets its error in the
    /// returned vector and changes nothing; the others still commit. An
    /// `Err` means nothing was committed.
    async fn apply(&self, writes: Vec<Write>) -> Result<Vec<Result<Applied>>>;

    async fn run(&self, id: &str) -> Result<Option<RunSummary>>;
    async fn runs(&self, query: &RunQuery) -> Result<RunPage>;
    /// For each of `runs` (a listing's page), in order: its keys, the min,
    /// max and last value of each of `keys` it has, its newest FPS
    /// ([`figures`]).
    async fn figures(&self, runs: &[String], keys: &[&str]) -> Result<Vec<RunFigures>>;
    async fn scalars(&self, run: &str, query: &ScalarQuery) -> Result<Vec<Series>>;
    /// Every point of every series of the run, ordered by key, step and
    /// sequence, read in chunks as the stream is consumed.
    async fn export(&self, run: &str) -> Result<PointStream>;
    /// Image samples with `from <= step <= to`, oldest first.
    async fn images(&self, run: &str, from: i64, to: i64) -> Result<Vec<ImageSample>>;
    async fn commands(&self, run: &str) -> Result<Vec<CommandRecord>>;
    async fn statuses(&self, run: &str) -> Result<Vec<StatusRecord>>;
    async fn epochs(&self, run: &str) -> Result<Vec<EpochRecord>>;
    async fn perf(&self, run: &str, from_ms: i64, to_ms: i64) -> Result<Vec<PerfSample>>;
    /// Removes the run and everything stored for it; false when unknown.
    async fn delete_run(&self, run: &str) -> Result<bool>;
    /// Applies `policy` as of `now_ms`.
    async fn retain(&self, policy: Retention, now_ms: i64) -> Result<RetentionReport>;
    /// Bytes of stored JPEGs (each distinct one once).
    async fn image_bytes(&self) -> Result<u64>;
}

/// Opens the store a `--store` value names: `postgres://…` or
/// `postgresql://…` for PostgreSQL, anything else a SQLite file path.
pub async fn open(place: &str, options: StoreOptions) -> Result<Arc<dyn Store>> {
    if place.starts_with("postgres://") || place.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::open(place, options).await?))
    } else {
        Ok(Arc::new(sqlite::SqliteStore::open(place, options).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admit_skips_resent_and_refuses_gaps() {
        assert_eq!(admit("r", SeqKind::Event, 0, 1, 1).unwrap(), 0);
        assert_eq!(admit("r", SeqKind::Point, 10, 5, 3).unwrap(), 3);
        assert_eq!(admit("r", SeqKind::Point, 10, 8, 5).unwrap(), 3);
        assert_eq!(admit("r", SeqKind::Point, 10, 11, 5).unwrap(), 0);
        let e = admit("r", SeqKind::Event, 10, 12, 1).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("12") && msg.contains("10"), "{msg}");
    }

    #[test]
    fn cursors_round_trip_ids_with_dots_and_refuse_another_order() {
        let r = RunSummary {
            run: RunRecord {
                id: "dev:run.v2~a:1".into(),
                device: "dev".into(),
                name: "a~b.c".into(),
                model: String::new(),
                dataset: String::new(),
                config: "{}".into(),
                created_ms: 1_700_000_000_000,
                owner: None,
            },
            status: RunStatus::Running,
            started_ms: None,
            ended_ms: None,
            updated_ms: 5,
            last_event_seq: 0,
            last_point_seq: 0,
            epochs: 0,
            points: 42,
            last_step: None,
            images: 0,
        };
        let newest = RunQuery::default();
        let c = encode_cursor(&newest, &r);
        assert_eq!(c, "1700000000000.dev:run.v2~a:1", "the old form");
        assert_eq!(
            decode_cursor(&c, &newest).unwrap(),
            (SqlParam::Int(1_700_000_000_000), r.run.id.clone())
        );
        assert!(decode_cursor("nonsense", &newest).is_err());
        for (sort, value) in [
            (RunSort::Name, SqlParam::Text("a~b.c".into())),
            (RunSort::Points, SqlParam::Int(42)),
        ] {
            let q = RunQuery {
                sort,
                ascending: true,
                ..RunQuery::default()
            };
            let c = encode_cursor(&q, &r);
            assert_eq!(decode_cursor(&c, &q).unwrap(), (value, r.run.id.clone()));
            // Not a cursor for another order, nor the other direction.
            assert!(decode_cursor(&c, &newest).is_err());
            let desc = RunQuery {
                ascending: false,
                ..q.clone()
            };
            assert!(decode_cursor(&c, &desc).is_err());
        }
    }

    #[test]
    fn bucket_width_covers_the_range() {
        assert_eq!(bucket_width(0, 999_999, 1000), 1000);
        assert_eq!(bucket_width(0, 1000, 1000), 2);
        assert_eq!(bucket_width(5, 5, 1000), 1);
    }
}
