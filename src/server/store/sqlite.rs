//! The embedded backend: one SQLite file (rusqlite, bundled SQLite), the
//! default store.
//!
//! WAL journal with `synchronous=NORMAL`: a commit appends to the WAL and
//! returns without an fsync; the WAL is synced at checkpoints. A killed
//! process (kill -9, a crash) loses nothing committed, because the WAL is in
//! the OS's page cache and the next open replays it; a power loss or kernel
//! panic may roll back the last commits before a checkpoint, never corrupt
//! the file. That is the trade the group-commit writer makes for throughput.
//!
//! One writer connection (all writes come from the [`Writer`] task) and a
//! small pool of reader connections; every call runs on tokio's blocking
//! pool so the runtime's threads never wait on disk.
//!
//! [`Writer`]: super::Writer

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

use super::chunk::{self, Packed};
use super::figures::{self, RunFigures};
use super::group::PointGroup;
use super::rollup::{self, Bucketer, Read, Rollup};
use super::{
    admit, page, runs_query, Applied, Bucket, CommandRecord, Dialect, EpochRecord, ImageSample,
    PerfSample, PointStream, Result, Retention, RetentionReport, RunPage, RunQuery, RunRecord,
    RunStatus, RunSummary, ScalarPoint, ScalarQuery, SeqKind, Series, SqlParam, StatusRecord,
    Store, StoreError, StoreOptions, Write, EXPORT_CHUNK, SCHEMA_VERSION,
};

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    name TEXT NOT NULL,
    model TEXT NOT NULL,
    dataset TEXT NOT NULL,
    config TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    status TEXT NOT NULL,
    started_ms INTEGER,
    ended_ms INTEGER,
    updated_ms INTEGER NOT NULL,
    last_event_seq INTEGER NOT NULL DEFAULT 0,
    last_point_seq INTEGER NOT NULL DEFAULT 0,
    epochs INTEGER NOT NULL DEFAULT 0,
    points INTEGER NOT NULL DEFAULT 0,
    last_step INTEGER,
    images INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX runs_newest ON runs (created_ms DESC, id DESC);
CREATE INDEX runs_by_status ON runs (status, created_ms DESC, id DESC);
CREATE INDEX runs_by_device ON runs (device, created_ms DESC, id DESC);
CREATE TABLE series (
    id INTEGER PRIMARY KEY,
    run TEXT NOT NULL,
    key TEXT NOT NULL,
    UNIQUE (run, key)
);
CREATE TABLE points (
    series INTEGER NOT NULL,
    step INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    wall_ms INTEGER NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (series, step, seq)
) WITHOUT ROWID;
CREATE TABLE statuses (
    run TEXT NOT NULL,
    seq INTEGER NOT NULL,
    wall_ms INTEGER NOT NULL,
    status TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (run, seq)
);
CREATE TABLE epochs (
    run TEXT NOT NULL,
    seq INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    wall_ms INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    PRIMARY KEY (run, seq)
);
CREATE TABLE perf (
    run TEXT NOT NULL,
    wall_ms INTEGER NOT NULL,
    fps REAL, batch_ms REAL, cpu_percent REAL, ram_mb REAL,
    gpu_percent REAL, gpu_mem_mb REAL, gpu_clock_mhz REAL,
    PRIMARY KEY (run, wall_ms)
);
CREATE TABLE commands (
    run TEXT NOT NULL,
    id INTEGER NOT NULL,
    who TEXT NOT NULL,
    when_ms INTEGER NOT NULL,
    what TEXT NOT NULL,
    delivered_ms INTEGER,
    applied_ms INTEGER,
    PRIMARY KEY (run, id)
);
CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    run TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    step INTEGER NOT NULL,
    wall_ms INTEGER NOT NULL,
    predictions TEXT NOT NULL,
    labels TEXT NOT NULL
);
CREATE INDEX images_by_run ON images (run, step);
CREATE TABLE image_jpegs (
    image INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (image, idx)
) WITHOUT ROWID;
CREATE INDEX image_jpegs_by_hash ON image_jpegs (hash);
CREATE TABLE blobs (
    hash BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    data BLOB NOT NULL
);
"#,
    // 2: rollups of every 64 steps of each series (rollup.rs), built from the
    // points already stored. Integer `/` truncates, so the floor division
    // subtracts the non-negative remainder first.
    r#"
CREATE TABLE rollups (
    series INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    mn REAL NOT NULL,
    mx REAL NOT NULL,
    cnt INTEGER NOT NULL,
    last_step INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    last_wall INTEGER NOT NULL,
    last_value REAL NOT NULL,
    PRIMARY KEY (series, bucket)
) WITHOUT ROWID;
INSERT INTO rollups (series, bucket, mn, mx, cnt, last_step, last_seq, last_wall, last_value)
SELECT series, bucket, min(value), max(value), count(*), 0, 0, 0, 0
FROM (SELECT series, (step - ((step % 64) + 64) % 64) / 64 AS bucket, value FROM points)
GROUP BY series, bucket;
UPDATE rollups SET (last_step, last_seq, last_wall, last_value) = (
    SELECT step, seq, wall_ms, value FROM points p
    WHERE p.series = rollups.series AND p.step >= rollups.bucket * 64
      AND p.step < rollups.bucket * 64 + 64
    ORDER BY step DESC, seq DESC LIMIT 1);
"#,
    // 3: the identity a run is bound to (server::identity).
    r#"
ALTER TABLE runs ADD COLUMN owner TEXT;
"#,
    // 4: points packed in chunk rows (chunk.rs), filled from the points
    // table by [`pack_points`] before it is dropped.
    r#"
CREATE TABLE chunks (
    series INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (series, bucket, seq)
) WITHOUT ROWID;
"#,
];

/// Migration 4's data step: every point of the points table into chunk
/// rows, series by series, then the table goes.
fn pack_points(tx: &Transaction) -> Result<()> {
    let mut read =
        tx.prepare("SELECT series, step, seq, wall_ms, value FROM points ORDER BY series")?;
    let mut rows = read.query([])?;
    let mut insert =
        tx.prepare("INSERT INTO chunks (series, bucket, seq, data) VALUES (?1, ?2, ?3, ?4)")?;
    let mut flush = |series: i64, pts: &mut Vec<Packed>| -> Result<()> {
        for c in chunk::pack(pts) {
            insert.execute(params![series, c.bucket, c.seq, c.data])?;
        }
        pts.clear();
        Ok(())
    };
    let mut current: Option<i64> = None;
    let mut pts = Vec::new();
    while let Some(r) = rows.next()? {
        let series: i64 = r.get(0)?;
        if current.is_some_and(|c| c != series) {
            flush(current.unwrap_or_default(), &mut pts)?;
        }
        current = Some(series);
        pts.push(Packed {
            step: r.get(1)?,
            seq: r.get(2)?,
            wall_ms: r.get(3)?,
            value: r.get(4)?,
        });
    }
    if let Some(series) = current {
        flush(series, &mut pts)?;
    }
    drop(rows);
    drop(read);
    drop(insert);
    tx.execute_batch("DROP TABLE points")?;
    Ok(())
}

/// How long a connection waits on another's lock before failing: only
/// checkpoints and the one writer contend, so a long wait means trouble.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Reader connections kept open between reads.
const READER_POOL: usize = 8;

pub struct SqliteStore {
    path: PathBuf,
    options: StoreOptions,
    writer: Arc<Mutex<Writing>>,
    readers: Arc<Mutex<Vec<Connection>>>,
}

/// The writer's connection and the series ids it has resolved, run → key →
/// id, so a group of many small batches looks each pair up once. Cleared
/// when runs are deleted (SQLite may reuse a deleted id) and when it holds
/// more than [`SERIES_CACHED`] pairs.
struct Writing {
    conn: Connection,
    series: SeriesIds,
    cached: usize,
}

/// Pairs the writer remembers: 10,000 runs of 6 keys, a few MB.
const SERIES_CACHED: usize = 65_536;

type SeriesIds = HashMap<String, HashMap<String, i64>>;

impl Writing {
    /// Remembers pairs resolved in a transaction that has committed.
    fn remember(&mut self, fresh: Vec<(String, String, i64)>) {
        if self.cached + fresh.len() > SERIES_CACHED {
            self.forget();
        }
        self.cached += fresh.len();
        for (run, key, id) in fresh {
            self.series.entry(run).or_default().insert(key, id);
        }
    }

    fn forget(&mut self) {
        self.series.clear();
        self.cached = 0;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic inside a closure leaves the connection usable: SQLite rolls
    // back the open transaction when it is dropped.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn open_error(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Open {
        place: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn connect(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(|e| open_error(path, e))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Pages through a 256 MiB memory map and a 64 MiB cache rather than a
    // read() per page: the fleet bench at 300 sessions spent a third of the
    // server's CPU in the kernel copying pages in and out (perf).
    conn.pragma_update(None, "mmap_size", 256i64 << 20)?;
    conn.pragma_update(None, "cache_size", -65536i64)?;
    Ok(conn)
}

/// Brings the schema up to [`SCHEMA_VERSION`], refusing a newer one.
fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let tx = conn.transaction()?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let found: Option<i64> = tx
        .query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
        .optional()?
        .flatten();
    let found = found.unwrap_or(0) as u32;
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            place: path.display().to_string(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (v, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql)?;
        if v + 1 == 4 {
            pack_points(&tx)?;
        }
        tx.execute("DELETE FROM schema_version", [])?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [v as i64 + 1],
        )?;
    }
    tx.commit()?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating when missing) the database file and migrates it.
    pub async fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        let conn = tokio::task::spawn_blocking(move || {
            let mut conn = connect(&p)?;
            migrate(&mut conn, &p)?;
            Ok::<_, StoreError>(conn)
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))??;
        Ok(SqliteStore {
            path,
            options,
            writer: Arc::new(Mutex::new(Writing {
                conn,
                series: HashMap::new(),
                cached: 0,
            })),
            readers: Arc::new(Mutex::new(Vec::new())),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Writing, StoreOptions) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.writer.clone();
        let options = self.options;
        tokio::task::spawn_blocking(move || f(&mut lock(&conn), options))
            .await
            .map_err(|e| StoreError::Worker(e.to_string()))?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let pool = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match lock(&pool).pop() {
                Some(c) => c,
                None => connect(&path)?,
            };
            let r = f(&conn);
            let mut pool = lock(&pool);
            if pool.len() < READER_POOL {
                pool.push(conn);
            }
            r
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
    }
}

// ---- writes ----------------------------------------------------------

/// The run's stored (last_event_seq, last_point_seq), or UnknownRun.
fn seqs(tx: &Transaction, run: &str) -> Result<(u64, u64)> {
    tx.prepare_cached("SELECT last_event_seq, last_point_seq FROM runs WHERE id = ?1")?
        .query_row([run], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })
        .optional()?
        .ok_or_else(|| StoreError::UnknownRun {
            run: run.to_string(),
        })
}

/// The run's last point number as the group has left it, else as stored;
/// the inner error refuses a write to a run that is not stored.
fn last_point(tx: &Transaction, group: &PointGroup, run: &str) -> Result<Result<u64>> {
    if let Some(last) = group.last_seq(run) {
        return Ok(Ok(last));
    }
    match seqs(tx, run) {
        Ok((_, last)) => Ok(Ok(last)),
        Err(e @ StoreError::UnknownRun { .. }) => Ok(Err(e)),
        Err(e) => Err(e),
    }
}

/// Applies one write; points are gathered into `group`, stored by
/// [`store_points`] before the commit. The outer error aborts the whole
/// group (SQL failed); the inner one refuses only this write.
fn apply_one(
    tx: &Transaction,
    options: StoreOptions,
    group: &mut PointGroup,
    w: Write,
) -> Result<Result<Applied>> {
    if let Err(e) = w.check() {
        return Ok(Err(e));
    }
    if w.is_point() {
        let last = match last_point(tx, group, w.run())? {
            Ok(last) => last,
            Err(e) => return Ok(Err(e)),
        };
        return Ok(group.apply(w, last));
    }
    if !matches!(w, Write::Run(_)) {
        if let Err(e) = seqs(tx, w.run()) {
            return match e {
                StoreError::UnknownRun { .. } => Ok(Err(e)),
                e => Err(e),
            };
        }
    }
    match w {
        Write::Run(r) => upsert_run(tx, &r).map(Ok),
        Write::Status { run, record } => status(tx, &run, &record),
        Write::Epoch { run, record } => epoch(tx, &run, &record),
        Write::Points { .. } => unreachable!("points are gathered above"),
        Write::Gap { run, through, .. } => event_gap(tx, &run, through).map(Ok),
        Write::Perf { run, samples } => perf(tx, &run, &samples).map(Ok),
        Write::Command { run, record } => command(tx, &run, &record).map(Ok),
        Write::CommandDelivered { run, id, at_ms } => command_mark(tx, &run, id, at_ms, false),
        Write::CommandApplied { run, id, at_ms } => command_mark(tx, &run, id, at_ms, true),
        Write::Image { run, sample } => image(tx, options, &run, &sample).map(Ok),
    }
}

fn upsert_run(tx: &Transaction, r: &RunRecord) -> Result<Applied> {
    tx.prepare_cached(
        "INSERT INTO runs (id, device, name, model, dataset, config, created_ms, status, updated_ms, owner)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'initializing', ?7, ?8)
         ON CONFLICT (id) DO UPDATE SET device = excluded.device, name = excluded.name,
           model = excluded.model, dataset = excluded.dataset, config = excluded.config,
           owner = coalesce(runs.owner, excluded.owner)",
    )?
    .execute(params![
        r.id,
        r.device,
        r.name,
        r.model,
        r.dataset,
        r.config,
        r.created_ms,
        r.owner
    ])?;
    Ok(Applied {
        stored: 1,
        skipped: 0,
    })
}

const SKIPPED_ONE: Applied = Applied {
    stored: 0,
    skipped: 1,
};
const STORED_ONE: Applied = Applied {
    stored: 1,
    skipped: 0,
};

fn status(tx: &Transaction, run: &str, s: &StatusRecord) -> Result<Result<Applied>> {
    let (last, _) = seqs(tx, run)?;
    match admit(run, SeqKind::Event, last, s.seq, 1) {
        Err(e) => return Ok(Err(e)),
        Ok(1) => return Ok(Ok(SKIPPED_ONE)),
        Ok(_) => {}
    }
    tx.prepare_cached(
        "INSERT INTO statuses (run, seq, wall_ms, status, message) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        run,
        s.seq as i64,
        s.wall_ms,
        s.status.as_str(),
        s.message
    ])?;
    tx.prepare_cached(
        "UPDATE runs SET status = ?2, last_event_seq = ?3, updated_ms = max(updated_ms, ?4),
           started_ms = CASE WHEN started_ms IS NULL AND ?2 = 'running' THEN ?4 ELSE started_ms END,
           ended_ms = CASE WHEN ?5 THEN ?4 ELSE NULL END
         WHERE id = ?1",
    )?
    .execute(params![
        run,
        s.status.as_str(),
        s.seq as i64,
        s.wall_ms,
        s.status.is_finished()
    ])?;
    Ok(Ok(STORED_ONE))
}

fn epoch(tx: &Transaction, run: &str, e: &EpochRecord) -> Result<Result<Applied>> {
    let (last, _) = seqs(tx, run)?;
    match admit(run, SeqKind::Event, last, e.seq, 1) {
        Err(e) => return Ok(Err(e)),
        Ok(1) => return Ok(Ok(SKIPPED_ONE)),
        Ok(_) => {}
    }
    let metrics = serde_json::to_string(&e.metrics).unwrap_or_default();
    tx.prepare_cached(
        "INSERT INTO epochs (run, seq, epoch, wall_ms, metrics) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![run, e.seq as i64, e.epoch, e.wall_ms, metrics])?;
    tx.prepare_cached(
        "UPDATE runs SET epochs = epochs + 1, last_event_seq = ?2,
           updated_ms = max(updated_ms, ?3) WHERE id = ?1",
    )?
    .execute(params![run, e.seq as i64, e.wall_ms])?;
    Ok(Ok(STORED_ONE))
}

/// Stores a group's points: the series id of each (run, key) pair (from
/// the writer's cache, else inserted or looked up), every point, and each
/// run's summary once. Returns the pairs resolved here, to be remembered
/// once the transaction has committed.
fn store_points(
    tx: &Transaction,
    known: &SeriesIds,
    group: &PointGroup,
) -> Result<Vec<(String, String, i64)>> {
    let mut fresh = Vec::new();
    let mut ids = Vec::with_capacity(group.series.len());
    for (run, key) in &group.series {
        let id = match known.get(run).and_then(|keys| keys.get(key)) {
            Some(&id) => id,
            None => {
                tx.prepare_cached("INSERT OR IGNORE INTO series (run, key) VALUES (?1, ?2)")?
                    .execute([run, key])?;
                let id: i64 = tx
                    .prepare_cached("SELECT id FROM series WHERE run = ?1 AND key = ?2")?
                    .query_row([run, key], |r| r.get(0))?;
                fresh.push((run.clone(), key.clone(), id));
                id
            }
        };
        ids.push(id);
    }
    let mut by_series: Vec<Vec<Packed>> = vec![Vec::new(); ids.len()];
    for i in 0..group.point_count() {
        by_series[group.pair[i]].push(Packed {
            step: group.step[i],
            seq: group.seq[i],
            wall_ms: group.wall[i],
            value: group.value[i],
        });
    }
    let mut insert = tx
        .prepare_cached("INSERT INTO chunks (series, bucket, seq, data) VALUES (?1, ?2, ?3, ?4)")?;
    for (pair, pts) in by_series.iter_mut().enumerate() {
        for c in chunk::pack(pts) {
            insert.execute(params![ids[pair], c.bucket, c.seq, c.data])?;
        }
    }
    let mut rollup = tx.prepare_cached(
        "INSERT INTO rollups (series, bucket, mn, mx, cnt, last_step, last_seq, last_wall, last_value)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (series, bucket) DO UPDATE SET mn = min(mn, excluded.mn),
           mx = max(mx, excluded.mx), cnt = cnt + excluded.cnt,
           last_step = CASE WHEN (excluded.last_step, excluded.last_seq) > (last_step, last_seq)
             THEN excluded.last_step ELSE last_step END,
           last_seq = CASE WHEN (excluded.last_step, excluded.last_seq) > (last_step, last_seq)
             THEN excluded.last_seq ELSE last_seq END,
           last_wall = CASE WHEN (excluded.last_step, excluded.last_seq) > (last_step, last_seq)
             THEN excluded.last_wall ELSE last_wall END,
           last_value = CASE WHEN (excluded.last_step, excluded.last_seq) > (last_step, last_seq)
             THEN excluded.last_value ELSE last_value END",
    )?;
    for (pair, r) in rollup::of_group(group) {
        rollup.execute(params![
            ids[pair],
            r.bucket,
            r.min,
            r.max,
            r.count as i64,
            r.last_step,
            r.last_seq,
            r.last_wall,
            r.last_value
        ])?;
    }
    let mut summary = tx.prepare_cached(
        "UPDATE runs SET last_point_seq = max(last_point_seq, ?2), points = points + ?3,
           last_step = CASE WHEN ?3 > 0 THEN max(coalesce(last_step, ?4), ?4) ELSE last_step END,
           updated_ms = max(updated_ms, ?5)
         WHERE id = ?1",
    )?;
    for (run, r) in group.runs() {
        summary.execute(params![
            run,
            r.last_seq as i64,
            r.stored as i64,
            r.max_step,
            r.max_wall
        ])?;
    }
    Ok(fresh)
}

fn event_gap(tx: &Transaction, run: &str, through: u64) -> Result<Applied> {
    tx.prepare_cached("UPDATE runs SET last_event_seq = max(last_event_seq, ?2) WHERE id = ?1")?
        .execute(params![run, through as i64])?;
    Ok(STORED_ONE)
}

fn perf(tx: &Transaction, run: &str, samples: &[PerfSample]) -> Result<Applied> {
    let mut st = tx.prepare_cached(
        "INSERT OR REPLACE INTO perf (run, wall_ms, fps, batch_ms, cpu_percent, ram_mb,
           gpu_percent, gpu_mem_mb, gpu_clock_mhz) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for s in samples {
        st.execute(params![
            run,
            s.wall_ms,
            s.fps,
            s.batch_ms,
            s.cpu_percent,
            s.ram_mb,
            s.gpu_percent,
            s.gpu_mem_mb,
            s.gpu_clock_mhz
        ])?;
    }
    Ok(Applied {
        stored: samples.len() as u64,
        skipped: 0,
    })
}

fn command(tx: &Transaction, run: &str, c: &CommandRecord) -> Result<Applied> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO commands (run, id, who, when_ms, what, delivered_ms, applied_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        run,
        c.id as i64,
        c.who,
        c.when_ms,
        c.what,
        c.delivered_ms,
        c.applied_ms
    ])?;
    Ok(STORED_ONE)
}

fn command_mark(
    tx: &Transaction,
    run: &str,
    id: u64,
    at_ms: i64,
    applied: bool,
) -> Result<Result<Applied>> {
    let sql = if applied {
        "UPDATE commands SET applied_ms = ?3 WHERE run = ?1 AND id = ?2"
    } else {
        "UPDATE commands SET delivered_ms = ?3 WHERE run = ?1 AND id = ?2"
    };
    let n = tx
        .prepare_cached(sql)?
        .execute(params![run, id as i64, at_ms])?;
    if n == 0 {
        return Ok(Err(StoreError::UnknownCommand {
            run: run.to_string(),
            id,
        }));
    }
    Ok(Ok(STORED_ONE))
}

fn image(tx: &Transaction, options: StoreOptions, run: &str, s: &ImageSample) -> Result<Applied> {
    let predictions = serde_json::to_string(&s.predictions).unwrap_or_default();
    let labels = serde_json::to_string(&s.labels).unwrap_or_default();
    tx.prepare_cached(
        "INSERT INTO images (run, epoch, step, wall_ms, predictions, labels)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        run,
        s.epoch,
        s.step,
        s.wall_ms,
        predictions,
        labels
    ])?;
    let image = tx.last_insert_rowid();
    for (idx, jpeg) in s.jpegs.iter().enumerate() {
        let hash = super::content_hash(jpeg);
        tx.prepare_cached("INSERT OR IGNORE INTO blobs (hash, size, data) VALUES (?1, ?2, ?3)")?
            .execute(params![hash, jpeg.len() as i64, &jpeg[..]])?;
        tx.prepare_cached("INSERT INTO image_jpegs (image, idx, hash) VALUES (?1, ?2, ?3)")?
            .execute(params![image, idx as i64, hash])?;
    }
    tx.prepare_cached("UPDATE runs SET images = images + 1 WHERE id = ?1")?
        .execute([run])?;
    if options.images_per_run > 0 {
        let over: Vec<i64> = tx
            .prepare_cached(
                "SELECT id FROM images WHERE run = ?1 ORDER BY step DESC, id DESC LIMIT -1 OFFSET ?2",
            )?
            .query_map(params![run, options.images_per_run], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        drop_images(tx, run, &over)?;
    }
    Ok(STORED_ONE)
}

/// Deletes image samples `ids` of `run` and the JPEGs nothing else uses.
fn drop_images(tx: &Transaction, run: &str, ids: &[i64]) -> Result<()> {
    for &id in ids {
        let hashes: Vec<Vec<u8>> = tx
            .prepare_cached("SELECT hash FROM image_jpegs WHERE image = ?1")?
            .query_map([id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        tx.prepare_cached("DELETE FROM image_jpegs WHERE image = ?1")?
            .execute([id])?;
        tx.prepare_cached("DELETE FROM images WHERE id = ?1")?
            .execute([id])?;
        for h in hashes {
            tx.prepare_cached(
                "DELETE FROM blobs WHERE hash = ?1
                 AND NOT EXISTS (SELECT 1 FROM image_jpegs WHERE hash = ?1)",
            )?
            .execute([h])?;
        }
    }
    if !ids.is_empty() {
        tx.prepare_cached("UPDATE runs SET images = max(images - ?2, 0) WHERE id = ?1")?
            .execute(params![run, ids.len() as i64])?;
    }
    Ok(())
}

fn run_images(tx: &Transaction, run: &str) -> Result<Vec<i64>> {
    Ok(tx
        .prepare_cached("SELECT id FROM images WHERE run = ?1")?
        .query_map([run], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?)
}

/// Removes every row of `run`; false when it was not stored.
fn delete_run_tx(tx: &Transaction, run: &str) -> Result<bool> {
    let ids = run_images(tx, run)?;
    drop_images(tx, run, &ids)?;
    for table in ["chunks", "rollups"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE series IN (SELECT id FROM series WHERE run = ?1)"),
            [run],
        )?;
    }
    for table in ["series", "statuses", "epochs", "perf", "commands"] {
        tx.execute(&format!("DELETE FROM {table} WHERE run = ?1"), [run])?;
    }
    Ok(tx.execute("DELETE FROM runs WHERE id = ?1", [run])? > 0)
}

fn blob_bytes(c: &Connection) -> Result<u64> {
    let n: i64 = c.query_row("SELECT coalesce(sum(size), 0) FROM blobs", [], |r| r.get(0))?;
    Ok(n as u64)
}

fn retain_tx(tx: &Transaction, policy: Retention, now_ms: i64) -> Result<RetentionReport> {
    let mut report = RetentionReport::default();
    if policy.keep_days > 0 {
        let cutoff = now_ms - i64::from(policy.keep_days) * 86_400_000;
        let old: Vec<String> = tx
            .prepare("SELECT id FROM runs WHERE ended_ms IS NOT NULL AND ended_ms < ?1")?
            .query_map([cutoff], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for run in old {
            delete_run_tx(tx, &run)?;
            report.runs_deleted.push(run);
        }
    }
    let mut bytes = blob_bytes(tx)?;
    if policy.image_quota_bytes > 0 && bytes > policy.image_quota_bytes {
        // Oldest finished first; live runs are bounded by the per-run cap.
        let victims: Vec<String> = tx
            .prepare(
                "SELECT id FROM runs WHERE ended_ms IS NOT NULL AND images > 0
                 ORDER BY ended_ms, created_ms, id",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for run in victims {
            if bytes <= policy.image_quota_bytes {
                break;
            }
            let ids = run_images(tx, &run)?;
            drop_images(tx, &run, &ids)?;
            report.images_evicted.push(run);
            bytes = blob_bytes(tx)?;
        }
    }
    report.image_bytes = bytes;
    Ok(report)
}

// ---- reads -----------------------------------------------------------

const RUN_COLUMNS: &str = "id, device, name, model, dataset, config, created_ms, status,
    started_ms, ended_ms, updated_ms, last_event_seq, last_point_seq, epochs, points,
    last_step, images, owner";

fn run_row(r: &Row) -> Result<RunSummary> {
    let status: String = r.get(7)?;
    Ok(RunSummary {
        run: RunRecord {
            id: r.get(0)?,
            device: r.get(1)?,
            name: r.get(2)?,
            model: r.get(3)?,
            dataset: r.get(4)?,
            config: r.get(5)?,
            created_ms: r.get(6)?,
            owner: r.get(17)?,
        },
        status: RunStatus::parse(&status)?,
        started_ms: r.get(8)?,
        ended_ms: r.get(9)?,
        updated_ms: r.get(10)?,
        last_event_seq: r.get::<_, i64>(11)? as u64,
        last_point_seq: r.get::<_, i64>(12)? as u64,
        epochs: r.get::<_, i64>(13)? as u64,
        points: r.get::<_, i64>(14)? as u64,
        last_step: r.get(15)?,
        images: r.get::<_, i64>(16)? as u64,
    })
}

fn list_runs(c: &Connection, q: &RunQuery) -> Result<RunPage> {
    let (filter, params, limit) = runs_query(q, &SQLITE)?;
    let args = params.into_iter().map(sql_value);
    let mut st = c.prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs{filter}"))?;
    let mut rows = st.query(rusqlite::params_from_iter(args))?;
    let mut runs = Vec::new();
    while let Some(r) = rows.next()? {
        runs.push(run_row(r)?);
    }
    Ok(page(runs, limit, q))
}

const SQLITE: Dialect = Dialect {
    placeholder: |n| format!("?{n}"),
    position: "instr",
};

fn sql_value(p: SqlParam) -> rusqlite::types::Value {
    match p {
        SqlParam::Text(t) => rusqlite::types::Value::Text(t),
        SqlParam::Int(i) => rusqlite::types::Value::Integer(i),
    }
}

fn run_figures(c: &Connection, runs: &[String], keys: &[&str]) -> Result<Vec<RunFigures>> {
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    let mut st = c.prepare(&figures::series_sql(&SQLITE, keys.len(), runs.len()))?;
    let args = figures::params(keys, runs).into_iter().map(sql_value);
    let series = st
        .query_map(rusqlite::params_from_iter(args), |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut st = c.prepare(&figures::fps_sql(&SQLITE, runs.len()))?;
    let fps = st
        .query_map(rusqlite::params_from_iter(runs), |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(figures::assemble(runs, keys, series, fps))
}

/// A chunk row's packed points, borrowed from the row.
fn chunk_data<'r>(r: &'r Row, i: usize) -> Result<&'r [u8]> {
    r.get_ref(i)?.as_blob().map_err(|e| StoreError::Corrupt {
        what: "point chunk",
        value: e.to_string(),
    })
}

/// The points of one series in `from..=to`, a rollup's worth at a time in
/// step order (from the last when `desc`), each slice in (step, seq) order
/// (reversed when `desc`); `f` returns false to stop.
fn each_bucket(
    c: &Connection,
    series: i64,
    (from, to): (i64, i64),
    desc: bool,
    mut f: impl FnMut(&[Packed]) -> Result<bool>,
) -> Result<()> {
    if from > to {
        return Ok(());
    }
    let mut st = c.prepare_cached(if desc {
        "SELECT bucket, seq, data FROM chunks WHERE series = ?1 AND bucket >= ?2 AND bucket <= ?3
         ORDER BY bucket DESC"
    } else {
        "SELECT bucket, seq, data FROM chunks WHERE series = ?1 AND bucket >= ?2 AND bucket <= ?3
         ORDER BY bucket"
    })?;
    let mut rows = st.query(params![
        series,
        rollup::rollup_of(from),
        rollup::rollup_of(to)
    ])?;
    let mut emit = |pts: &mut Vec<Packed>| -> Result<bool> {
        pts.retain(|p| (from..=to).contains(&p.step));
        chunk::sort(pts);
        if desc {
            pts.reverse();
        }
        let go = pts.is_empty() || f(pts)?;
        pts.clear();
        Ok(go)
    };
    let (mut pts, mut at) = (Vec::new(), None);
    while let Some(r) = rows.next()? {
        let bucket: i64 = r.get(0)?;
        if at.is_some_and(|b| b != bucket) && !emit(&mut pts)? {
            return Ok(());
        }
        at = Some(bucket);
        chunk::unpack(bucket, r.get(1)?, chunk_data(r, 2)?, &mut pts)?;
    }
    emit(&mut pts)?;
    Ok(())
}

/// One series over `from..=to`: every point when there are at most
/// `n`, else at most `n` buckets from its rollups and the raw points at
/// their edges, or from the raw points of a narrow range
/// ([`rollup::plan`]).
fn series_buckets(c: &Connection, series: i64, from: i64, to: i64, n: usize) -> Result<Series> {
    let mut probe: Vec<Bucket> = Vec::with_capacity(n + 1);
    each_bucket(c, series, (from, to), false, |pts| {
        let room = n + 1 - probe.len();
        probe.extend(
            pts.iter()
                .take(room)
                .map(|p| Bucket::point(p.step, p.wall_ms, p.value)),
        );
        Ok(probe.len() <= n)
    })?;
    if probe.len() <= n {
        return Ok(Series {
            key: String::new(),
            downsampled: false,
            buckets: probe,
        });
    }
    let lo = probe[0].step;
    let mut hi = lo;
    each_bucket(c, series, (from, to), true, |pts| {
        hi = pts[0].step;
        Ok(false)
    })?;
    let plan = rollup::plan(from, to, lo, hi, n);
    let mut b = Bucketer::for_plan(&plan, lo);
    let scan = |b: &mut Bucketer, a: i64, z: i64| -> Result<()> {
        each_bucket(c, series, (a, z), false, |pts| {
            for p in pts {
                b.point(p.step, p.seq, p.wall_ms, p.value);
            }
            Ok(true)
        })
    };
    for read in plan.reads(lo, hi) {
        match read {
            Read::Points { from, to } => scan(&mut b, from, to)?,
            Read::Rollups { first, last } => {
                let mut st = c.prepare_cached(
                    "SELECT bucket, mn, mx, cnt, last_step, last_seq, last_wall, last_value
                     FROM rollups WHERE series = ?1 AND bucket >= ?2 AND bucket <= ?3 ORDER BY bucket",
                )?;
                let mut rows = st.query(params![series, first, last])?;
                while let Some(r) = rows.next()? {
                    b.rollup(Rollup {
                        bucket: r.get(0)?,
                        min: r.get(1)?,
                        max: r.get(2)?,
                        count: r.get::<_, i64>(3)? as u64,
                        last_step: r.get(4)?,
                        last_seq: r.get(5)?,
                        last_wall: r.get(6)?,
                        last_value: r.get(7)?,
                    });
                }
            }
        }
    }
    Ok(Series {
        key: String::new(),
        downsampled: true,
        buckets: b.finish(),
    })
}

fn scalars(c: &Connection, run: &str, q: &ScalarQuery) -> Result<Vec<Series>> {
    let all: Vec<(i64, String)> = c
        .prepare_cached("SELECT id, key FROM series WHERE run = ?1 ORDER BY key")?
        .query_map([run], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let from = q.from.unwrap_or(i64::MIN);
    let to = q.to.unwrap_or(i64::MAX);
    let mut out = Vec::new();
    for (id, key) in all {
        if !q.keys.is_empty() && !q.keys.contains(&key) {
            continue;
        }
        let mut s = series_buckets(c, id, from, to, q.points.max(1))?;
        s.key = key;
        out.push(s);
    }
    Ok(out)
}

fn export_rows(
    conn: &Connection,
    run: &str,
    tx: &tokio::sync::mpsc::Sender<Result<Vec<ScalarPoint>>>,
) -> Result<()> {
    let mut st = conn.prepare(
        "SELECT s.key, c.bucket, c.seq, c.data FROM series s
         JOIN chunks c ON c.series = s.id WHERE s.run = ?1 ORDER BY s.key, c.bucket",
    )?;
    let mut rows = st.query([run])?;
    let mut out = Vec::with_capacity(EXPORT_CHUNK);
    // One (key, bucket) at a time, sorted as the rows may interleave.
    let mut at: Option<(String, i64)> = None;
    let mut pts = Vec::new();
    let emit = |key: &str, pts: &mut Vec<Packed>, out: &mut Vec<ScalarPoint>| -> bool {
        chunk::sort(pts);
        for p in pts.drain(..) {
            out.push(ScalarPoint {
                run: run.to_string(),
                key: key.to_string(),
                step: p.step,
                wall_ms: p.wall_ms,
                value: p.value,
            });
            if out.len() == EXPORT_CHUNK {
                let full = std::mem::replace(out, Vec::with_capacity(EXPORT_CHUNK));
                if tx.blocking_send(Ok(full)).is_err() {
                    return false; // the client went away
                }
            }
        }
        true
    };
    while let Some(r) = rows.next()? {
        let key: String = r.get(0)?;
        let bucket: i64 = r.get(1)?;
        if let Some((k, b)) = &at {
            if (k != &key || *b != bucket) && !emit(k, &mut pts, &mut out) {
                return Ok(());
            }
        }
        chunk::unpack(bucket, r.get(2)?, chunk_data(r, 3)?, &mut pts)?;
        at = Some((key, bucket));
    }
    if let Some((k, _)) = &at {
        if !emit(k, &mut pts, &mut out) {
            return Ok(());
        }
    }
    if !out.is_empty() {
        let _ = tx.blocking_send(Ok(out));
    }
    Ok(())
}

fn image_rows(c: &Connection, run: &str, from: i64, to: i64) -> Result<Vec<ImageSample>> {
    let mut st = c.prepare_cached(
        "SELECT id, epoch, step, wall_ms, predictions, labels FROM images
         WHERE run = ?1 AND step >= ?2 AND step <= ?3 ORDER BY step, id",
    )?;
    let heads: Vec<(i64, u32, i64, i64, String, String)> = st
        .query_map(params![run, from, to], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut jpegs = c.prepare_cached(
        "SELECT b.data FROM image_jpegs j JOIN blobs b ON b.hash = j.hash
         WHERE j.image = ?1 ORDER BY j.idx",
    )?;
    let mut out = Vec::with_capacity(heads.len());
    for (id, epoch, step, wall_ms, predictions, labels) in heads {
        let data: Vec<bytes::Bytes> = jpegs
            .query_map([id], |r| r.get::<_, Vec<u8>>(0))?
            .map(|r| r.map(bytes::Bytes::from))
            .collect::<rusqlite::Result<_>>()?;
        out.push(ImageSample {
            epoch,
            step,
            wall_ms,
            jpegs: data,
            predictions: parse_json("image predictions", &predictions)?,
            labels: parse_json("image labels", &labels)?,
        });
    }
    Ok(out)
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(what: &'static str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|_| StoreError::Corrupt {
        what,
        value: s.chars().take(80).collect(),
    })
}

fn collect<T>(
    c: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
    f: impl FnMut(&Row) -> rusqlite::Result<T>,
) -> Result<Vec<T>> {
    Ok(c.prepare_cached(sql)?
        .query_map(args, f)?
        .collect::<rusqlite::Result<_>>()?)
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn schema_version(&self) -> Result<u32> {
        self.read(|c| {
            let v: i64 =
                c.query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))?;
            Ok(v as u32)
        })
        .await
    }

    async fn apply(&self, writes: Vec<Write>) -> Result<Vec<Result<Applied>>> {
        self.write(move |w, options| {
            let tx = w.conn.transaction()?;
            let mut group = PointGroup::default();
            let mut out = Vec::with_capacity(writes.len());
            for write in writes {
                out.push(apply_one(&tx, options, &mut group, write)?);
            }
            let fresh = store_points(&tx, &w.series, &group)?;
            tx.commit()?;
            w.remember(fresh);
            Ok(out)
        })
        .await
    }

    async fn run(&self, id: &str) -> Result<Option<RunSummary>> {
        let id = id.to_string();
        self.read(move |c| {
            let mut st =
                c.prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"))?;
            let mut rows = st.query([&id])?;
            match rows.next()? {
                Some(r) => Ok(Some(run_row(r)?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn runs(&self, query: &RunQuery) -> Result<RunPage> {
        let q = query.clone();
        self.read(move |c| list_runs(c, &q)).await
    }

    async fn figures(&self, runs: &[String], keys: &[&str]) -> Result<Vec<RunFigures>> {
        let runs = runs.to_vec();
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        self.read(move |c| {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            run_figures(c, &runs, &keys)
        })
        .await
    }

    async fn scalars(&self, run: &str, query: &ScalarQuery) -> Result<Vec<Series>> {
        let (run, q) = (run.to_string(), query.clone());
        self.read(move |c| scalars(c, &run, &q)).await
    }

    async fn export(&self, run: &str) -> Result<PointStream> {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let path = self.path.clone();
        let run = run.to_string();
        // Its own connection: one statement holds one WAL snapshot for the
        // whole export, so it is consistent while the writer goes on.
        let conn = tokio::task::spawn_blocking(move || connect(&path))
            .await
            .map_err(|e| StoreError::Worker(e.to_string()))??;
        tokio::task::spawn_blocking(move || {
            if let Err(e) = export_rows(&conn, &run, &tx) {
                let _ = tx.blocking_send(Err(e));
            }
        });
        Ok(super::export::points_from_chunks(rx))
    }

    async fn images(&self, run: &str, from: i64, to: i64) -> Result<Vec<ImageSample>> {
        let run = run.to_string();
        self.read(move |c| image_rows(c, &run, from, to)).await
    }

    async fn commands(&self, run: &str) -> Result<Vec<CommandRecord>> {
        let run = run.to_string();
        self.read(move |c| {
            collect(
                c,
                "SELECT id, who, when_ms, what, delivered_ms, applied_ms FROM commands
                 WHERE run = ?1 ORDER BY id",
                [&run],
                |r| {
                    Ok(CommandRecord {
                        id: r.get::<_, i64>(0)? as u64,
                        who: r.get(1)?,
                        when_ms: r.get(2)?,
                        what: r.get(3)?,
                        delivered_ms: r.get(4)?,
                        applied_ms: r.get(5)?,
                    })
                },
            )
        })
        .await
    }

    async fn statuses(&self, run: &str) -> Result<Vec<StatusRecord>> {
        let run = run.to_string();
        self.read(move |c| {
            let rows = collect(
                c,
                "SELECT seq, wall_ms, status, message FROM statuses WHERE run = ?1 ORDER BY seq",
                [&run],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get(1)?,
                        r.get::<_, String>(2)?,
                        r.get(3)?,
                    ))
                },
            )?;
            rows.into_iter()
                .map(|(seq, wall_ms, status, message)| {
                    Ok(StatusRecord {
                        seq: seq as u64,
                        wall_ms,
                        status: RunStatus::parse(&status)?,
                        message,
                    })
                })
                .collect()
        })
        .await
    }

    async fn epochs(&self, run: &str) -> Result<Vec<EpochRecord>> {
        let run = run.to_string();
        self.read(move |c| {
            let rows = collect(
                c,
                "SELECT seq, epoch, wall_ms, metrics FROM epochs WHERE run = ?1 ORDER BY seq",
                [&run],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get::<_, String>(3)?,
                    ))
                },
            )?;
            rows.into_iter()
                .map(|(seq, epoch, wall_ms, metrics)| {
                    Ok(EpochRecord {
                        seq: seq as u64,
                        epoch,
                        wall_ms,
                        metrics: parse_json("epoch metrics", &metrics)?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn perf(&self, run: &str, from_ms: i64, to_ms: i64) -> Result<Vec<PerfSample>> {
        let run = run.to_string();
        self.read(move |c| {
            collect(
                c,
                "SELECT wall_ms, fps, batch_ms, cpu_percent, ram_mb, gpu_percent, gpu_mem_mb,
                   gpu_clock_mhz FROM perf
                 WHERE run = ?1 AND wall_ms >= ?2 AND wall_ms <= ?3 ORDER BY wall_ms",
                params![run, from_ms, to_ms],
                |r| {
                    Ok(PerfSample {
                        wall_ms: r.get(0)?,
                        fps: r.get(1)?,
                        batch_ms: r.get(2)?,
                        cpu_percent: r.get(3)?,
                        ram_mb: r.get(4)?,
                        gpu_percent: r.get(5)?,
                        gpu_mem_mb: r.get(6)?,
                        gpu_clock_mhz: r.get(7)?,
                    })
                },
            )
        })
        .await
    }

    async fn delete_run(&self, run: &str) -> Result<bool> {
        let run = run.to_string();
        self.write(move |w, _| {
            let tx = w.conn.transaction()?;
            let found = delete_run_tx(&tx, &run)?;
            tx.commit()?;
            w.forget();
            Ok(found)
        })
        .await
    }

    async fn retain(&self, policy: Retention, now_ms: i64) -> Result<RetentionReport> {
        self.write(move |w, _| {
            let tx = w.conn.transaction()?;
            let report = retain_tx(&tx, policy, now_ms)?;
            tx.commit()?;
            w.forget();
            Ok(report)
        })
        .await
    }

    async fn image_bytes(&self) -> Result<u64> {
        self.read(blob_bytes).await
    }
}
