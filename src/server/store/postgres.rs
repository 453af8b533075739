//! The shared backend: PostgreSQL through tokio-postgres, for replicas that
//! share one record. Same schema and behaviour as [`sqlite`]; the tests in
//! tests/store.rs run against both.
//!
//! Plain TCP (`NoTls`): the server is expected on loopback or a private
//! network. One writer connection (the [`Writer`] task's), one reader
//! connection that pipelines concurrent reads, and a connection per export
//! so a long export reads one snapshot through a portal, chunk by chunk.
//! Each write locks its run's row (`FOR UPDATE`), so two replicas writing
//! one run still apply each sequence number once.
//!
//! [`sqlite`]: super::sqlite
//! [`Writer`]: super::Writer

use std::collections::HashMap;

use async_trait::async_trait;
use futures_util::pin_mut;
use tokio::sync::Mutex;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Row, Statement, Transaction};

use super::figures::{self, RunFigures};
use super::group::PointGroup;
use super::rollup::{self, Bucketer, Read, Rollup};
use super::{
    admit, page, runs_query, sqlite::parse_json, Applied, Bucket, CommandRecord, Dialect,
    EpochRecord, ImageSample, PerfSample, PointStream, Result, Retention, RetentionReport, RunPage,
    RunQuery, RunRecord, RunStatus, RunSummary, ScalarPoint, ScalarQuery, SeqKind, Series,
    SqlParam, StatusRecord, Store, StoreError, StoreOptions, Write, EXPORT_CHUNK, SCHEMA_VERSION,
};

const POSTGRES: Dialect = Dialect {
    placeholder: |n| format!("${n}"),
    position: "strpos",
};

/// Migration `i` takes the schema from version `i` to `i + 1`. Ids and
/// keys collate as bytes ("C"), the order SQLite gives, whatever the
/// database's locale.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE runs (
    id TEXT COLLATE "C" PRIMARY KEY,
    device TEXT NOT NULL,
    name TEXT NOT NULL,
    model TEXT NOT NULL,
    dataset TEXT NOT NULL,
    config TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    status TEXT NOT NULL,
    started_ms BIGINT,
    ended_ms BIGINT,
    updated_ms BIGINT NOT NULL,
    last_event_seq BIGINT NOT NULL DEFAULT 0,
    last_point_seq BIGINT NOT NULL DEFAULT 0,
    epochs BIGINT NOT NULL DEFAULT 0,
    points BIGINT NOT NULL DEFAULT 0,
    last_step BIGINT,
    images BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX runs_newest ON runs (created_ms DESC, id DESC);
CREATE INDEX runs_by_status ON runs (status, created_ms DESC, id DESC);
CREATE INDEX runs_by_device ON runs (device, created_ms DESC, id DESC);
CREATE TABLE series (
    id BIGSERIAL PRIMARY KEY,
    run TEXT NOT NULL,
    key TEXT COLLATE "C" NOT NULL,
    UNIQUE (run, key)
);
CREATE TABLE points (
    series BIGINT NOT NULL,
    step BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    wall_ms BIGINT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (series, step, seq)
);
CREATE TABLE statuses (
    run TEXT NOT NULL,
    seq BIGINT NOT NULL,
    wall_ms BIGINT NOT NULL,
    status TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (run, seq)
);
CREATE TABLE epochs (
    run TEXT NOT NULL,
    seq BIGINT NOT NULL,
    epoch BIGINT NOT NULL,
    wall_ms BIGINT NOT NULL,
    metrics TEXT NOT NULL,
    PRIMARY KEY (run, seq)
);
CREATE TABLE perf (
    run TEXT NOT NULL,
    wall_ms BIGINT NOT NULL,
    fps DOUBLE PRECISION, batch_ms DOUBLE PRECISION, cpu_percent DOUBLE PRECISION,
    ram_mb DOUBLE PRECISION, gpu_percent DOUBLE PRECISION, gpu_mem_mb DOUBLE PRECISION,
    gpu_clock_mhz DOUBLE PRECISION,
    PRIMARY KEY (run, wall_ms)
);
CREATE TABLE commands (
    run TEXT NOT NULL,
    id BIGINT NOT NULL,
    who TEXT NOT NULL,
    when_ms BIGINT NOT NULL,
    what TEXT NOT NULL,
    delivered_ms BIGINT,
    applied_ms BIGINT,
    PRIMARY KEY (run, id)
);
CREATE TABLE images (
    id BIGSERIAL PRIMARY KEY,
    run TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    step BIGINT NOT NULL,
    wall_ms BIGINT NOT NULL,
    predictions TEXT NOT NULL,
    labels TEXT NOT NULL
);
CREATE INDEX images_by_run ON images (run, step);
CREATE TABLE image_jpegs (
    image BIGINT NOT NULL,
    idx BIGINT NOT NULL,
    hash BYTEA NOT NULL,
    PRIMARY KEY (image, idx)
);
CREATE INDEX image_jpegs_by_hash ON image_jpegs (hash);
CREATE TABLE blobs (
    hash BYTEA PRIMARY KEY,
    size BIGINT NOT NULL,
    data BYTEA NOT NULL
);
"#,
    // 2: rollups of every 64 steps of each series (rollup.rs), built from the
    // points already stored. Integer `/` truncates, so the floor division
    // subtracts the non-negative remainder first.
    r#"
CREATE TABLE rollups (
    series BIGINT NOT NULL,
    bucket BIGINT NOT NULL,
    mn DOUBLE PRECISION NOT NULL,
    mx DOUBLE PRECISION NOT NULL,
    cnt BIGINT NOT NULL,
    last_step BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    last_wall BIGINT NOT NULL,
    last_value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (series, bucket)
);
INSERT INTO rollups (series, bucket, mn, mx, cnt, last_step, last_seq, last_wall, last_value)
SELECT series, bucket, min(value), max(value), count(*), 0, 0, 0, 0
FROM (SELECT series, (step - ((step % 64) + 64) % 64) / 64 AS bucket, value FROM points) p
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
    // 4: SQLite packs its points in chunks (store/chunk.rs); PostgreSQL
    // keeps a row per point, which its COPY ingests faster.
    "SELECT 1;",
];

/// Advisory lock key that serialises migrations between replicas starting
/// at once ("trainwatch" in ASCII, truncated to 8 bytes).
const MIGRATION_LOCK: i64 = 0x7472_6169_6e77_6174;

/// How points reach the `points` table; the bench measures both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointsBy {
    /// `COPY points FROM STDIN BINARY`.
    Copy,
    /// One `INSERT … SELECT FROM unnest($1, …)` with arrays as parameters.
    Unnest,
}

struct PgWriter {
    client: Client,
    /// Statements prepared on the writer connection, by their text.
    cache: HashMap<&'static str, Statement>,
}

pub struct PgStore {
    url: String,
    place: String,
    options: StoreOptions,
    points_by: PointsBy,
    writer: Mutex<PgWriter>,
    /// Replaced by a fresh connection when PostgreSQL has closed it.
    reader: tokio::sync::RwLock<Client>,
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match url.parse::<tokio_postgres::Config>() {
        Ok(c) => {
            let hosts: Vec<String> = c
                .get_hosts()
                .iter()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(h) => h.clone(),
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .collect();
            let port = c.get_ports().first().copied().unwrap_or(5432);
            format!(
                "postgres://{}@{}:{port}/{}",
                c.get_user().unwrap_or(""),
                hosts.join(","),
                c.get_dbname().unwrap_or("")
            )
        }
        Err(_) => "a PostgreSQL URL that does not parse".to_string(),
    }
}

async fn connect(url: &str, place: &str) -> Result<Client> {
    let (client, conn) =
        tokio_postgres::connect(url, NoTls)
            .await
            .map_err(|e| StoreError::Open {
                place: place.to_string(),
                reason: e.to_string(),
            })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

async fn migrate(client: &mut Client, place: &str) -> Result<()> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
        .await?;
    let found: Option<i64> = tx
        .query_one("SELECT max(version) FROM schema_version", &[])
        .await?
        .get(0);
    let found = found.unwrap_or(0) as u32;
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            place: place.to_string(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (v, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(sql).await?;
        tx.execute("DELETE FROM schema_version", &[]).await?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&(v as i64 + 1)],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`) and migrates.
    pub async fn open(url: &str, options: StoreOptions) -> Result<PgStore> {
        let place = redact(url);
        let mut writer = connect(url, &place).await?;
        migrate(&mut writer, &place).await?;
        let reader = connect(url, &place).await?;
        Ok(PgStore {
            url: url.to_string(),
            place,
            options,
            // Measured (benches/store.rs, groups of 20 writes of 1,000
            // points): binary COPY 742k points/s, unnest 521k.
            points_by: PointsBy::Copy,
            writer: Mutex::new(PgWriter {
                client: writer,
                cache: HashMap::new(),
            }),
            reader: tokio::sync::RwLock::new(reader),
        })
    }

    /// The reader connection, a fresh one when PostgreSQL closed the last
    /// (a restart, a failover, an idle timeout): the read that met the
    /// closed one failed; this one goes on.
    async fn reader(&self) -> Result<tokio::sync::RwLockReadGuard<'_, Client>> {
        {
            let r = self.reader.read().await;
            if !r.is_closed() {
                return Ok(r);
            }
        }
        let mut w = self.reader.write().await;
        if w.is_closed() {
            *w = connect(&self.url, &self.place).await?;
            tracing::warn!(store = %self.place, "PostgreSQL reader reconnected");
        }
        Ok(w.downgrade())
    }

    /// Chooses how points are inserted (the bench compares both).
    pub fn set_points_by(&mut self, by: PointsBy) {
        self.points_by = by;
    }

    pub fn place(&self) -> &str {
        &self.place
    }
}

/// A writer transaction with the writer's statement cache.
struct Tx<'a> {
    tx: Transaction<'a>,
    cache: &'a mut HashMap<&'static str, Statement>,
    options: StoreOptions,
    points_by: PointsBy,
}

type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

impl Tx<'_> {
    async fn stmt(&mut self, sql: &'static str) -> Result<Statement> {
        if let Some(s) = self.cache.get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(sql).await?;
        self.cache.insert(sql, s.clone());
        Ok(s)
    }

    async fn exec(&mut self, sql: &'static str, p: Params<'_>) -> Result<u64> {
        let s = self.stmt(sql).await?;
        Ok(self.tx.execute(&s, p).await?)
    }

    async fn query(&mut self, sql: &'static str, p: Params<'_>) -> Result<Vec<Row>> {
        let s = self.stmt(sql).await?;
        Ok(self.tx.query(&s, p).await?)
    }

    /// The run's (last_event_seq, last_point_seq), its row locked until
    /// commit; UnknownRun when it is not stored.
    async fn seqs(&mut self, run: &str) -> Result<(u64, u64)> {
        let rows = self
            .query(
                "SELECT last_event_seq, last_point_seq FROM runs WHERE id = $1 FOR UPDATE",
                &[&run],
            )
            .await?;
        let r = rows.first().ok_or_else(|| StoreError::UnknownRun {
            run: run.to_string(),
        })?;
        Ok((r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64))
    }

    async fn event_gap(&mut self, run: &str, through: u64) -> Result<Applied> {
        let through = through as i64;
        self.exec(
            "UPDATE runs SET last_event_seq = greatest(last_event_seq, $2) WHERE id = $1",
            &[&run, &through],
        )
        .await?;
        Ok(STORED_ONE)
    }

    /// The run's last point number as the group has left it, else as
    /// stored (its row locked); the inner error refuses a write to a run
    /// that is not stored.
    async fn last_point(&mut self, group: &PointGroup, run: &str) -> Result<Result<u64>> {
        if let Some(last) = group.last_seq(run) {
            return Ok(Ok(last));
        }
        match self.seqs(run).await {
            Ok((_, last)) => Ok(Ok(last)),
            Err(e @ StoreError::UnknownRun { .. }) => Ok(Err(e)),
            Err(e) => Err(e),
        }
    }

    /// Applies one write; points are gathered into `group`, stored by
    /// [`Tx::store_points`] before the commit. The outer error aborts the
    /// whole group; the inner one refuses only this write.
    async fn apply_one(&mut self, group: &mut PointGroup, w: Write) -> Result<Result<Applied>> {
        if let Err(e) = w.check() {
            return Ok(Err(e));
        }
        if w.is_point() {
            let last = match self.last_point(group, w.run()).await? {
                Ok(last) => last,
                Err(e) => return Ok(Err(e)),
            };
            return Ok(group.apply(w, last));
        }
        if !matches!(w, Write::Run(_)) {
            if let Err(e) = self.seqs(w.run()).await {
                return match e {
                    StoreError::UnknownRun { .. } => Ok(Err(e)),
                    e => Err(e),
                };
            }
        }
        match w {
            Write::Run(r) => self.upsert_run(&r).await.map(Ok),
            Write::Status { run, record } => self.status(&run, &record).await,
            Write::Epoch { run, record } => self.epoch(&run, &record).await,
            Write::Points { .. } => unreachable!("points are gathered above"),
            Write::Gap { run, through, .. } => self.event_gap(&run, through).await.map(Ok),
            Write::Perf { run, samples } => self.perf(&run, &samples).await.map(Ok),
            Write::Command { run, record } => self.command(&run, &record).await.map(Ok),
            Write::CommandDelivered { run, id, at_ms } => {
                self.command_mark(&run, id, at_ms, false).await
            }
            Write::CommandApplied { run, id, at_ms } => {
                self.command_mark(&run, id, at_ms, true).await
            }
            Write::Image { run, sample } => self.image(&run, &sample).await.map(Ok),
        }
    }

    async fn upsert_run(&mut self, r: &RunRecord) -> Result<Applied> {
        self.exec(
            "INSERT INTO runs (id, device, name, model, dataset, config, created_ms, status, updated_ms, owner)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'initializing', $7, $8)
             ON CONFLICT (id) DO UPDATE SET device = excluded.device, name = excluded.name,
               model = excluded.model, dataset = excluded.dataset, config = excluded.config,
               owner = coalesce(runs.owner, excluded.owner)",
            &[
                &r.id,
                &r.device,
                &r.name,
                &r.model,
                &r.dataset,
                &r.config,
                &r.created_ms,
                &r.owner,
            ],
        )
        .await?;
        Ok(STORED_ONE)
    }

    async fn status(&mut self, run: &str, s: &StatusRecord) -> Result<Result<Applied>> {
        let (last, _) = self.seqs(run).await?;
        match admit(run, SeqKind::Event, last, s.seq, 1) {
            Err(e) => return Ok(Err(e)),
            Ok(1) => return Ok(Ok(SKIPPED_ONE)),
            Ok(_) => {}
        }
        let seq = s.seq as i64;
        self.exec(
            "INSERT INTO statuses (run, seq, wall_ms, status, message) VALUES ($1, $2, $3, $4, $5)",
            &[&run, &seq, &s.wall_ms, &s.status.as_str(), &s.message],
        )
        .await?;
        self.exec(
            "UPDATE runs SET status = $2, last_event_seq = $3, updated_ms = greatest(updated_ms, $4),
               started_ms = CASE WHEN started_ms IS NULL AND $2 = 'running' THEN $4 ELSE started_ms END,
               ended_ms = CASE WHEN $5 THEN $4 ELSE NULL END
             WHERE id = $1",
            &[&run, &s.status.as_str(), &seq, &s.wall_ms, &s.status.is_finished()],
        )
        .await?;
        Ok(Ok(STORED_ONE))
    }

    async fn epoch(&mut self, run: &str, e: &EpochRecord) -> Result<Result<Applied>> {
        let (last, _) = self.seqs(run).await?;
        match admit(run, SeqKind::Event, last, e.seq, 1) {
            Err(e) => return Ok(Err(e)),
            Ok(1) => return Ok(Ok(SKIPPED_ONE)),
            Ok(_) => {}
        }
        let metrics = serde_json::to_string(&e.metrics).unwrap_or_default();
        let (seq, epoch) = (e.seq as i64, i64::from(e.epoch));
        self.exec(
            "INSERT INTO epochs (run, seq, epoch, wall_ms, metrics) VALUES ($1, $2, $3, $4, $5)",
            &[&run, &seq, &epoch, &e.wall_ms, &metrics],
        )
        .await?;
        self.exec(
            "UPDATE runs SET epochs = epochs + 1, last_event_seq = $2,
               updated_ms = greatest(updated_ms, $3) WHERE id = $1",
            &[&run, &seq, &e.wall_ms],
        )
        .await?;
        Ok(Ok(STORED_ONE))
    }

    /// The series id of each (run, key) pair of the group, inserting the
    /// new ones, in one statement.
    async fn series_ids(&mut self, group: &PointGroup) -> Result<Vec<i64>> {
        let (runs, keys): (Vec<&str>, Vec<&str>) = group
            .series
            .iter()
            .map(|(r, k)| (r.as_str(), k.as_str()))
            .unzip();
        // The statement's snapshot does not see the rows its own INSERT
        // adds, so those come from RETURNING and the others from the join.
        let rows = self
            .query(
                "WITH want AS (SELECT * FROM unnest($1::text[], $2::text[]) AS w (run, key)),
                 ins AS (INSERT INTO series (run, key) SELECT run, key FROM want
                   ON CONFLICT (run, key) DO NOTHING RETURNING id, run, key)
                 SELECT id, run, key FROM ins
                 UNION ALL
                 SELECT s.id, s.run, s.key FROM series s JOIN want w ON s.run = w.run AND s.key = w.key",
                &[&runs, &keys],
            )
            .await?;
        let mut found: HashMap<(&str, &str), i64> = HashMap::with_capacity(rows.len());
        for r in &rows {
            found.insert((r.get(1), r.get(2)), r.get(0));
        }
        let mut ids = Vec::with_capacity(group.series.len());
        for (run, key) in &group.series {
            let id = match found.get(&(run.as_str(), key.as_str())) {
                Some(&id) => id,
                // Inserted by another writer after this statement began
                // (a replica): committed now, so a fresh statement sees it.
                None => self
                    .query(
                        "SELECT id FROM series WHERE run = $1 AND key = $2",
                        &[run, key],
                    )
                    .await?[0]
                    .get(0),
            };
            ids.push(id);
        }
        Ok(ids)
    }

    /// Stores a group's points in one insert and each run's summary in one
    /// update.
    async fn store_points(&mut self, group: &PointGroup) -> Result<()> {
        if group.is_empty() {
            return Ok(());
        }
        if group.point_count() > 0 {
            let ids = self.series_ids(group).await?;
            let series: Vec<i64> = group.pair.iter().map(|&i| ids[i]).collect();
            match self.points_by {
                PointsBy::Copy => self.copy_points(&series, group).await?,
                PointsBy::Unnest => self.unnest_points(&series, group).await?,
            }
            self.rollups(&ids, group).await?;
        }
        let (mut id, mut last, mut stored, mut step, mut wall) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (run, r) in group.runs() {
            id.push(run);
            last.push(r.last_seq as i64);
            stored.push(r.stored as i64);
            step.push(r.max_step);
            wall.push(r.max_wall);
        }
        self.exec(
            "UPDATE runs r SET last_point_seq = greatest(r.last_point_seq, u.last),
               points = r.points + u.stored,
               last_step = CASE WHEN u.stored > 0
                 THEN greatest(coalesce(r.last_step, u.step), u.step) ELSE r.last_step END,
               updated_ms = greatest(r.updated_ms, u.wall)
             FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[])
               AS u (id, last, stored, step, wall)
             WHERE r.id = u.id",
            &[&id, &last, &stored, &step, &wall],
        )
        .await?;
        Ok(())
    }

    /// Folds the group's points into the rollups, in key order (so two
    /// writers sharing the database lock rows in the same order).
    async fn rollups(&mut self, ids: &[i64], group: &PointGroup) -> Result<()> {
        let mut rows: Vec<(i64, Rollup)> = rollup::of_group(group)
            .into_iter()
            .map(|(pair, r)| (ids[pair], r))
            .collect();
        rows.sort_by_key(|(id, r)| (*id, r.bucket));
        let col = |f: fn(&(i64, Rollup)) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
        let (series, bucket, cnt) = (col(|r| r.0), col(|r| r.1.bucket), col(|r| r.1.count as i64));
        let (step, seq, wall) = (
            col(|r| r.1.last_step),
            col(|r| r.1.last_seq),
            col(|r| r.1.last_wall),
        );
        let fcol = |f: fn(&(i64, Rollup)) -> f64| rows.iter().map(f).collect::<Vec<f64>>();
        let (mn, mx, value) = (
            fcol(|r| r.1.min),
            fcol(|r| r.1.max),
            fcol(|r| r.1.last_value),
        );
        self.exec(
            "INSERT INTO rollups AS r (series, bucket, mn, mx, cnt, last_step, last_seq, last_wall,
               last_value)
             SELECT * FROM unnest($1::int8[], $2::int8[], $3::float8[], $4::float8[], $5::int8[],
               $6::int8[], $7::int8[], $8::int8[], $9::float8[])
             ON CONFLICT (series, bucket) DO UPDATE SET mn = least(r.mn, excluded.mn),
               mx = greatest(r.mx, excluded.mx), cnt = r.cnt + excluded.cnt,
               last_step = CASE WHEN (excluded.last_step, excluded.last_seq) > (r.last_step, r.last_seq)
                 THEN excluded.last_step ELSE r.last_step END,
               last_seq = CASE WHEN (excluded.last_step, excluded.last_seq) > (r.last_step, r.last_seq)
                 THEN excluded.last_seq ELSE r.last_seq END,
               last_wall = CASE WHEN (excluded.last_step, excluded.last_seq) > (r.last_step, r.last_seq)
                 THEN excluded.last_wall ELSE r.last_wall END,
               last_value = CASE WHEN (excluded.last_step, excluded.last_seq) > (r.last_step, r.last_seq)
                 THEN excluded.last_value ELSE r.last_value END",
            &[&series, &bucket, &mn, &mx, &cnt, &step, &seq, &wall, &value],
        )
        .await?;
        Ok(())
    }

    async fn copy_points(&mut self, series: &[i64], g: &PointGroup) -> Result<()> {
        let sink = self
            .tx
            .copy_in("COPY points (series, step, seq, wall_ms, value) FROM STDIN BINARY")
            .await?;
        let types = [Type::INT8, Type::INT8, Type::INT8, Type::INT8, Type::FLOAT8];
        let writer = BinaryCopyInWriter::new(sink, &types);
        pin_mut!(writer);
        for (i, id) in series.iter().enumerate() {
            writer
                .as_mut()
                .write(&[id, &g.step[i], &g.seq[i], &g.wall[i], &g.value[i]])
                .await?;
        }
        writer.finish().await?;
        Ok(())
    }

    async fn unnest_points(&mut self, series: &[i64], g: &PointGroup) -> Result<()> {
        self.exec(
            "INSERT INTO points (series, step, seq, wall_ms, value)
             SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::float8[])",
            &[&series, &g.step, &g.seq, &g.wall, &g.value],
        )
        .await?;
        Ok(())
    }

    async fn perf(&mut self, run: &str, samples: &[PerfSample]) -> Result<Applied> {
        for s in samples {
            self.exec(
                "INSERT INTO perf (run, wall_ms, fps, batch_ms, cpu_percent, ram_mb, gpu_percent,
                   gpu_mem_mb, gpu_clock_mhz) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (run, wall_ms) DO UPDATE SET fps = excluded.fps,
                   batch_ms = excluded.batch_ms, cpu_percent = excluded.cpu_percent,
                   ram_mb = excluded.ram_mb, gpu_percent = excluded.gpu_percent,
                   gpu_mem_mb = excluded.gpu_mem_mb, gpu_clock_mhz = excluded.gpu_clock_mhz",
                &[
                    &run,
                    &s.wall_ms,
                    &s.fps,
                    &s.batch_ms,
                    &s.cpu_percent,
                    &s.ram_mb,
                    &s.gpu_percent,
                    &s.gpu_mem_mb,
                    &s.gpu_clock_mhz,
                ],
            )
            .await?;
        }
        Ok(Applied {
            stored: samples.len() as u64,
            skipped: 0,
        })
    }

    async fn command(&mut self, run: &str, c: &CommandRecord) -> Result<Applied> {
        self.exec(
            "INSERT INTO commands (run, id, who, when_ms, what, delivered_ms, applied_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (run, id) DO UPDATE SET who = excluded.who, when_ms = excluded.when_ms,
               what = excluded.what, delivered_ms = excluded.delivered_ms,
               applied_ms = excluded.applied_ms",
            &[
                &run,
                &(c.id as i64),
                &c.who,
                &c.when_ms,
                &c.what,
                &c.delivered_ms,
                &c.applied_ms,
            ],
        )
        .await?;
        Ok(STORED_ONE)
    }

    async fn command_mark(
        &mut self,
        run: &str,
        id: u64,
        at_ms: i64,
        applied: bool,
    ) -> Result<Result<Applied>> {
        let sql = if applied {
            "UPDATE commands SET applied_ms = $3 WHERE run = $1 AND id = $2"
        } else {
            "UPDATE commands SET delivered_ms = $3 WHERE run = $1 AND id = $2"
        };
        if self.exec(sql, &[&run, &(id as i64), &at_ms]).await? == 0 {
            return Ok(Err(StoreError::UnknownCommand {
                run: run.to_string(),
                id,
            }));
        }
        Ok(Ok(STORED_ONE))
    }

    async fn image(&mut self, run: &str, s: &ImageSample) -> Result<Applied> {
        let predictions = serde_json::to_string(&s.predictions).unwrap_or_default();
        let labels = serde_json::to_string(&s.labels).unwrap_or_default();
        let rows = self
            .query(
                "INSERT INTO images (run, epoch, step, wall_ms, predictions, labels)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[
                    &run,
                    &i64::from(s.epoch),
                    &s.step,
                    &s.wall_ms,
                    &predictions,
                    &labels,
                ],
            )
            .await?;
        let image: i64 = rows[0].get(0);
        for (idx, jpeg) in s.jpegs.iter().enumerate() {
            let hash = super::content_hash(jpeg);
            self.exec(
                "INSERT INTO blobs (hash, size, data) VALUES ($1, $2, $3)
                 ON CONFLICT (hash) DO NOTHING",
                &[&hash, &(jpeg.len() as i64), &&jpeg[..]],
            )
            .await?;
            self.exec(
                "INSERT INTO image_jpegs (image, idx, hash) VALUES ($1, $2, $3)",
                &[&image, &(idx as i64), &hash],
            )
            .await?;
        }
        self.exec("UPDATE runs SET images = images + 1 WHERE id = $1", &[&run])
            .await?;
        if self.options.images_per_run > 0 {
            let over: Vec<i64> = self
                .query(
                    "SELECT id FROM images WHERE run = $1 ORDER BY step DESC, id DESC OFFSET $2",
                    &[&run, &i64::from(self.options.images_per_run)],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            self.drop_images(run, &over).await?;
        }
        Ok(STORED_ONE)
    }

    /// Deletes image samples `ids` of `run` and the JPEGs nothing else uses.
    async fn drop_images(&mut self, run: &str, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = ids.to_vec();
        let hashes: Vec<Vec<u8>> = self
            .query(
                "DELETE FROM image_jpegs WHERE image = ANY($1) RETURNING hash",
                &[&ids],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        self.exec("DELETE FROM images WHERE id = ANY($1)", &[&ids])
            .await?;
        self.exec(
            "DELETE FROM blobs b WHERE b.hash = ANY($1)
             AND NOT EXISTS (SELECT 1 FROM image_jpegs j WHERE j.hash = b.hash)",
            &[&hashes],
        )
        .await?;
        self.exec(
            "UPDATE runs SET images = greatest(images - $2, 0) WHERE id = $1",
            &[&run, &(ids.len() as i64)],
        )
        .await?;
        Ok(())
    }

    async fn run_images(&mut self, run: &str) -> Result<Vec<i64>> {
        Ok(self
            .query("SELECT id FROM images WHERE run = $1", &[&run])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn delete_run(&mut self, run: &str) -> Result<bool> {
        let ids = self.run_images(run).await?;
        self.drop_images(run, &ids).await?;
        self.exec(
            "DELETE FROM points WHERE series IN (SELECT id FROM series WHERE run = $1)",
            &[&run],
        )
        .await?;
        self.exec(
            "DELETE FROM rollups WHERE series IN (SELECT id FROM series WHERE run = $1)",
            &[&run],
        )
        .await?;
        self.exec("DELETE FROM series WHERE run = $1", &[&run])
            .await?;
        self.exec("DELETE FROM statuses WHERE run = $1", &[&run])
            .await?;
        self.exec("DELETE FROM epochs WHERE run = $1", &[&run])
            .await?;
        self.exec("DELETE FROM perf WHERE run = $1", &[&run])
            .await?;
        self.exec("DELETE FROM commands WHERE run = $1", &[&run])
            .await?;
        Ok(self.exec("DELETE FROM runs WHERE id = $1", &[&run]).await? > 0)
    }

    async fn blob_bytes(&mut self) -> Result<u64> {
        let rows = self
            .query("SELECT coalesce(sum(size), 0)::int8 FROM blobs", &[])
            .await?;
        Ok(rows[0].get::<_, i64>(0) as u64)
    }

    async fn retain(&mut self, policy: Retention, now_ms: i64) -> Result<RetentionReport> {
        let mut report = RetentionReport::default();
        if policy.keep_days > 0 {
            let cutoff = now_ms - i64::from(policy.keep_days) * 86_400_000;
            let old: Vec<String> = self
                .query(
                    "SELECT id FROM runs WHERE ended_ms IS NOT NULL AND ended_ms < $1",
                    &[&cutoff],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            for run in old {
                self.delete_run(&run).await?;
                report.runs_deleted.push(run);
            }
        }
        let mut bytes = self.blob_bytes().await?;
        if policy.image_quota_bytes > 0 && bytes > policy.image_quota_bytes {
            // Oldest finished first; live runs are bounded by the per-run cap.
            let victims: Vec<String> = self
                .query(
                    "SELECT id FROM runs WHERE ended_ms IS NOT NULL AND images > 0
                     ORDER BY ended_ms, created_ms, id",
                    &[],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            for run in victims {
                if bytes <= policy.image_quota_bytes {
                    break;
                }
                let ids = self.run_images(&run).await?;
                self.drop_images(&run, &ids).await?;
                report.images_evicted.push(run);
                bytes = self.blob_bytes().await?;
            }
        }
        report.image_bytes = bytes;
        Ok(report)
    }
}

const SKIPPED_ONE: Applied = Applied {
    stored: 0,
    skipped: 1,
};
const STORED_ONE: Applied = Applied {
    stored: 1,
    skipped: 0,
};

// ---- reads -----------------------------------------------------------

const RUN_COLUMNS: &str = "id, device, name, model, dataset, config, created_ms, status,
    started_ms, ended_ms, updated_ms, last_event_seq, last_point_seq, epochs, points,
    last_step, images, owner";

fn run_row(r: &Row) -> Result<RunSummary> {
    let status: String = r.get(7);
    Ok(RunSummary {
        run: RunRecord {
            id: r.get(0),
            device: r.get(1),
            name: r.get(2),
            model: r.get(3),
            dataset: r.get(4),
            config: r.get(5),
            created_ms: r.get(6),
            owner: r.get(17),
        },
        status: RunStatus::parse(&status)?,
        started_ms: r.get(8),
        ended_ms: r.get(9),
        updated_ms: r.get(10),
        last_event_seq: r.get::<_, i64>(11) as u64,
        last_point_seq: r.get::<_, i64>(12) as u64,
        epochs: r.get::<_, i64>(13) as u64,
        points: r.get::<_, i64>(14) as u64,
        last_step: r.get(15),
        images: r.get::<_, i64>(16) as u64,
    })
}

fn point_bucket(r: &Row) -> Bucket {
    Bucket::point(r.get(0), r.get(1), r.get(2))
}

impl PgStore {
    async fn list_runs(&self, q: &RunQuery) -> Result<RunPage> {
        let (filter, params, limit) = runs_query(q, &POSTGRES)?;
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs{filter}");
        let rows = self.query(&sql, params).await?;
        let runs = rows.iter().map(run_row).collect::<Result<Vec<_>>>()?;
        Ok(page(runs, limit, q))
    }

    /// `sql` with `params` bound, on the reader connection.
    async fn query(&self, sql: &str, params: Vec<SqlParam>) -> Result<Vec<Row>> {
        let args: Vec<Box<dyn ToSql + Sync + Send>> = params
            .into_iter()
            .map(|p| -> Box<dyn ToSql + Sync + Send> {
                match p {
                    SqlParam::Text(t) => Box::new(t),
                    SqlParam::Int(i) => Box::new(i),
                }
            })
            .collect();
        let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref() as _).collect();
        Ok(self.reader().await?.query(sql, &refs).await?)
    }

    async fn run_figures(&self, runs: &[String], keys: &[&str]) -> Result<Vec<RunFigures>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let sql = figures::series_sql(&POSTGRES, keys.len(), runs.len());
        let series = self
            .query(&sql, figures::params(keys, runs))
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect();
        let sql = figures::fps_sql(&POSTGRES, runs.len());
        let ids = runs.iter().map(|r| SqlParam::Text(r.clone())).collect();
        let fps = self
            .query(&sql, ids)
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        Ok(figures::assemble(runs, keys, series, fps))
    }

    /// One series over `from..=to`: every point when there are at most
    /// `n`, else at most `n` buckets aggregated by the server over ranges
    /// of the primary key, in one round trip.
    /// One series over `from..=to`: every point when there are at most
    /// `n`, else at most `n` buckets from its rollups and the raw points at
    /// their edges, or from the raw points of a narrow range
    /// ([`rollup::plan`]).
    async fn series_buckets(&self, series: i64, from: i64, to: i64, n: usize) -> Result<Series> {
        let probe: Vec<Bucket> = self
            .reader()
            .await?
            .query(
                "SELECT step, wall_ms, value FROM points
                 WHERE series = $1 AND step >= $2 AND step <= $3 ORDER BY step, seq LIMIT $4",
                &[&series, &from, &to, &(n as i64 + 1)],
            )
            .await?
            .iter()
            .map(point_bucket)
            .collect();
        if probe.len() <= n {
            return Ok(Series {
                key: String::new(),
                downsampled: false,
                buckets: probe,
            });
        }
        let lo = probe[0].step;
        let hi: i64 = self
            .reader()
            .await?
            .query_one(
                "SELECT step FROM points WHERE series = $1 AND step >= $2 AND step <= $3
                 ORDER BY step DESC, seq DESC LIMIT 1",
                &[&series, &from, &to],
            )
            .await?
            .get(0);
        let plan = rollup::plan(from, to, lo, hi, n);
        let mut b = Bucketer::for_plan(&plan, lo);
        for read in plan.reads(lo, hi) {
            match read {
                Read::Points { from, to } => self.scan_points(&mut b, series, from, to).await?,
                Read::Rollups { first, last } => {
                    let rows = self
                        .reader()
                        .await?
                        .query(
                            "SELECT bucket, mn, mx, cnt, last_step, last_seq, last_wall, last_value
                             FROM rollups WHERE series = $1 AND bucket >= $2 AND bucket <= $3
                             ORDER BY bucket",
                            &[&series, &first, &last],
                        )
                        .await?;
                    for r in &rows {
                        b.rollup(Rollup {
                            bucket: r.get(0),
                            min: r.get(1),
                            max: r.get(2),
                            count: r.get::<_, i64>(3) as u64,
                            last_step: r.get(4),
                            last_seq: r.get(5),
                            last_wall: r.get(6),
                            last_value: r.get(7),
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

    /// Feeds the points of `a..=z`, in order, to `b`.
    async fn scan_points(&self, b: &mut Bucketer, series: i64, a: i64, z: i64) -> Result<()> {
        let rows = self
            .reader()
            .await?
            .query(
                "SELECT step, seq, wall_ms, value FROM points
                 WHERE series = $1 AND step >= $2 AND step <= $3 ORDER BY step, seq",
                &[&series, &a, &z],
            )
            .await?;
        for r in &rows {
            b.point(r.get(0), r.get(1), r.get(2), r.get(3));
        }
        Ok(())
    }

    async fn write_tx<T>(
        &self,
        f: impl for<'a> FnOnce(
            &'a mut Tx<'_>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T>> + Send + 'a>,
        >,
    ) -> Result<T> {
        let mut guard = self.writer.lock().await;
        if guard.client.is_closed() {
            // PostgreSQL closed it (a restart): the group that met it
            // failed unacknowledged; this one gets a fresh connection.
            guard.client = connect(&self.url, &self.place).await?;
            guard.cache.clear();
            tracing::warn!(store = %self.place, "PostgreSQL writer reconnected");
        }
        let PgWriter { client, cache } = &mut *guard;
        let tx = client.transaction().await?;
        let mut tx = Tx {
            tx,
            cache,
            options: self.options,
            points_by: self.points_by,
        };
        match f(&mut tx).await {
            Ok(v) => {
                tx.tx.commit().await?;
                Ok(v)
            }
            Err(e) => {
                // A failed statement may leave prepared ones behind or not;
                // start the cache afresh rather than guess.
                tx.cache.clear();
                Err(e)
            }
        }
    }
}

async fn export_rows(
    mut client: Client,
    run: String,
    out: tokio::sync::mpsc::Sender<Result<Vec<ScalarPoint>>>,
) -> Result<()> {
    let tx = client.transaction().await?;
    let stmt = tx
        .prepare(
            "SELECT s.key, p.step, p.wall_ms, p.value FROM series s
             JOIN points p ON p.series = s.id WHERE s.run = $1 ORDER BY s.key, p.step, p.seq",
        )
        .await?;
    let portal = tx.bind(&stmt, &[&run]).await?;
    loop {
        let rows = tx.query_portal(&portal, EXPORT_CHUNK as i32).await?;
        if rows.is_empty() {
            return Ok(());
        }
        let chunk = rows
            .iter()
            .map(|r| ScalarPoint {
                run: run.clone(),
                key: r.get(0),
                step: r.get(1),
                wall_ms: r.get(2),
                value: r.get(3),
            })
            .collect();
        if out.send(Ok(chunk)).await.is_err() {
            return Ok(()); // the client went away
        }
    }
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn schema_version(&self) -> Result<u32> {
        let v: i64 = self
            .reader()
            .await?
            .query_one("SELECT max(version) FROM schema_version", &[])
            .await?
            .get(0);
        Ok(v as u32)
    }

    async fn apply(&self, writes: Vec<Write>) -> Result<Vec<Result<Applied>>> {
        self.write_tx(move |tx| {
            Box::pin(async move {
                let mut group = PointGroup::default();
                let mut out = Vec::with_capacity(writes.len());
                for w in writes {
                    out.push(tx.apply_one(&mut group, w).await?);
                }
                tx.store_points(&group).await?;
                Ok(out)
            })
        })
        .await
    }

    async fn run(&self, id: &str) -> Result<Option<RunSummary>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1");
        match self.reader().await?.query_opt(&sql, &[&id]).await? {
            Some(r) => Ok(Some(run_row(&r)?)),
            None => Ok(None),
        }
    }

    async fn runs(&self, query: &RunQuery) -> Result<RunPage> {
        self.list_runs(query).await
    }

    async fn figures(&self, runs: &[String], keys: &[&str]) -> Result<Vec<RunFigures>> {
        self.run_figures(runs, keys).await
    }

    async fn scalars(&self, run: &str, q: &ScalarQuery) -> Result<Vec<Series>> {
        let all = self
            .reader()
            .await?
            .query(
                "SELECT id, key FROM series WHERE run = $1 ORDER BY key",
                &[&run],
            )
            .await?;
        let from = q.from.unwrap_or(i64::MIN);
        let to = q.to.unwrap_or(i64::MAX);
        let mut out = Vec::new();
        for r in all {
            let (id, key): (i64, String) = (r.get(0), r.get(1));
            if !q.keys.is_empty() && !q.keys.contains(&key) {
                continue;
            }
            let mut s = self.series_buckets(id, from, to, q.points.max(1)).await?;
            s.key = key;
            out.push(s);
        }
        Ok(out)
    }

    async fn export(&self, run: &str) -> Result<PointStream> {
        let client = connect(&self.url, &self.place).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let run = run.to_string();
        tokio::spawn(async move {
            if let Err(e) = export_rows(client, run, tx.clone()).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(super::export::points_from_chunks(rx))
    }

    async fn images(&self, run: &str, from: i64, to: i64) -> Result<Vec<ImageSample>> {
        let heads = self
            .reader()
            .await?
            .query(
                "SELECT id, epoch, step, wall_ms, predictions, labels FROM images
                 WHERE run = $1 AND step >= $2 AND step <= $3 ORDER BY step, id",
                &[&run, &from, &to],
            )
            .await?;
        let mut out = Vec::with_capacity(heads.len());
        for h in heads {
            let id: i64 = h.get(0);
            let jpegs = self
                .reader()
                .await?
                .query(
                    "SELECT b.data FROM image_jpegs j JOIN blobs b ON b.hash = j.hash
                     WHERE j.image = $1 ORDER BY j.idx",
                    &[&id],
                )
                .await?
                .iter()
                .map(|r| bytes::Bytes::from(r.get::<_, Vec<u8>>(0)))
                .collect();
            out.push(ImageSample {
                epoch: h.get::<_, i64>(1) as u32,
                step: h.get(2),
                wall_ms: h.get(3),
                jpegs,
                predictions: parse_json("image predictions", h.get(4))?,
                labels: parse_json("image labels", h.get(5))?,
            });
        }
        Ok(out)
    }

    async fn commands(&self, run: &str) -> Result<Vec<CommandRecord>> {
        let rows = self
            .reader()
            .await?
            .query(
                "SELECT id, who, when_ms, what, delivered_ms, applied_ms FROM commands
                 WHERE run = $1 ORDER BY id",
                &[&run],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| CommandRecord {
                id: r.get::<_, i64>(0) as u64,
                who: r.get(1),
                when_ms: r.get(2),
                what: r.get(3),
                delivered_ms: r.get(4),
                applied_ms: r.get(5),
            })
            .collect())
    }

    async fn statuses(&self, run: &str) -> Result<Vec<StatusRecord>> {
        let rows = self
            .reader()
            .await?
            .query(
                "SELECT seq, wall_ms, status, message FROM statuses WHERE run = $1 ORDER BY seq",
                &[&run],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StatusRecord {
                    seq: r.get::<_, i64>(0) as u64,
                    wall_ms: r.get(1),
                    status: RunStatus::parse(r.get(2))?,
                    message: r.get(3),
                })
            })
            .collect()
    }

    async fn epochs(&self, run: &str) -> Result<Vec<EpochRecord>> {
        let rows = self
            .reader()
            .await?
            .query(
                "SELECT seq, epoch, wall_ms, metrics FROM epochs WHERE run = $1 ORDER BY seq",
                &[&run],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(EpochRecord {
                    seq: r.get::<_, i64>(0) as u64,
                    epoch: r.get::<_, i64>(1) as u32,
                    wall_ms: r.get(2),
                    metrics: parse_json("epoch metrics", r.get(3))?,
                })
            })
            .collect()
    }

    async fn perf(&self, run: &str, from_ms: i64, to_ms: i64) -> Result<Vec<PerfSample>> {
        let rows = self
            .reader()
            .await?
            .query(
                "SELECT wall_ms, fps, batch_ms, cpu_percent, ram_mb, gpu_percent, gpu_mem_mb,
                   gpu_clock_mhz FROM perf
                 WHERE run = $1 AND wall_ms >= $2 AND wall_ms <= $3 ORDER BY wall_ms",
                &[&run, &from_ms, &to_ms],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| PerfSample {
                wall_ms: r.get(0),
                fps: r.get(1),
                batch_ms: r.get(2),
                cpu_percent: r.get(3),
                ram_mb: r.get(4),
                gpu_percent: r.get(5),
                gpu_mem_mb: r.get(6),
                gpu_clock_mhz: r.get(7),
            })
            .collect())
    }

    async fn delete_run(&self, run: &str) -> Result<bool> {
        let run = run.to_string();
        self.write_tx(move |tx| Box::pin(async move { tx.delete_run(&run).await }))
            .await
    }

    async fn retain(&self, policy: Retention, now_ms: i64) -> Result<RetentionReport> {
        self.write_tx(move |tx| Box::pin(async move { tx.retain(policy, now_ms).await }))
            .await
    }

    async fn image_bytes(&self) -> Result<u64> {
        let rows = self
            .reader()
            .await?
            .query("SELECT coalesce(sum(size), 0)::int8 FROM blobs", &[])
            .await?;
        Ok(rows[0].get::<_, i64>(0) as u64)
    }
}
