//! The store (issue 14), side by side on SQLite and PostgreSQL: points/s
//! ingested through the group-commit writer, `scalars?points=1000` latency
//! on a run of 1,000,000 points, database bytes per 1,000 points, and a
//! run listing among 10,000 runs.
//!
//! Ingest: one run, `TW_STORE_POINTS` points in batches of
//! `TW_STORE_BATCH` (one `Write::Points` each, `TW_STORE_KEYS` keys in
//! turn), submitted as fast as the writer's queue takes them; the
//! rate is points over wall time, and "per core" divides by the CPU time
//! this process spent (for PostgreSQL the server's backends add theirs).
//! PostgreSQL is a throw-away cluster (tests/util/postgres.rs), once with
//! binary COPY and once with one `INSERT … unnest(…)` per batch.
//!
//! `cargo bench --bench store`; env:
//! - `TW_STORE_POINTS` (1000000), `TW_STORE_BATCH` (1000), `TW_STORE_KEYS`
//!   (2; the fleet bench's trainers log 10 keys in batches of 10)
//! - `TW_STORE_WRITERS` (1): runs the batches go to in turn (a fleet of
//!   300 trainers: 300, with `TW_STORE_BATCH=10 TW_STORE_KEYS=10`)
//! - `TW_STORE_QUERIES` (100): scalars queries timed per backend
//! - `TW_STORE_RUNS` (10000): runs for the listing figure
//! - `TW_STORE_PG` (1): 0 skips PostgreSQL

mod common;
#[path = "../tests/util/mod.rs"]
#[allow(unused_imports)]
mod util;

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use trainwatch::server::store::postgres::{PgStore, PointsBy};
use trainwatch::server::store::{
    self, Point, RunQuery, RunRecord, RunStatus, ScalarQuery, StatusRecord, Store, StoreOptions,
    Write, Writer, WriterConfig,
};

use common::{env_u64, percentile};

const RUN: &str = "bench-run";

/// CPU seconds (user + system) this process has used, from /proc.
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 (utime, stime) are 11 and 12 after the comm field;
    // USER_HZ is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

fn record(id: &str, created_ms: i64, device: &str) -> RunRecord {
    RunRecord {
        id: id.into(),
        device: device.into(),
        name: format!("{id} resnet18"),
        model: "resnet18".into(),
        dataset: "cifar10".into(),
        config: "{}".into(),
        created_ms,
        owner: None,
    }
}

struct Ingest {
    points_per_s: f64,
    points_per_cpu_s: f64,
}

/// What the ingest figure writes: `total` points in writes of `batch`,
/// `keys` keys in turn, to `writers` runs in turn.
#[derive(Debug, Clone, Copy)]
struct Shape {
    total: u64,
    batch: u64,
    keys: u64,
    writers: u64,
}

async fn ingest(store: Arc<dyn Store>, shape: Shape) -> Ingest {
    let Shape {
        total,
        batch,
        keys,
        writers,
    } = shape;
    // Run 0 is the one the query figures read; the others share the load.
    let run = |w: u64| match w {
        0 => RUN.to_string(),
        w => format!("{RUN}-{w}"),
    };
    for w in 0..writers {
        store
            .apply(vec![Write::Run(record(&run(w), 0, "bench"))])
            .await
            .unwrap();
    }
    let stop = CancellationToken::new();
    let (writer, task) = Writer::spawn(store, WriterConfig::default(), stop.clone());
    // Batches built before the clock starts: the trainer side is not
    // what this measures. Batch `b` goes to run `b % writers`, as a fleet's
    // small writes arrive interleaved.
    let batches: Vec<Write> = (0..total / batch)
        .map(|b| {
            let (w, nth) = (b % writers, b / writers);
            Write::Points {
                run: run(w),
                first_seq: nth * batch + 1,
                points: (0..batch)
                    .map(|i| {
                        let seq = nth * batch + i;
                        Point {
                            key: format!("train/k{}", seq % keys),
                            step: (seq / keys) as i64,
                            wall_ms: 1_700_000_000_000 + seq as i64,
                            value: ((seq % 1000) as f64).sqrt(),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    let (t0, c0) = (Instant::now(), cpu_s());
    let mut pending = Vec::with_capacity(batches.len());
    for w in batches {
        pending.push(writer.submit(w).await.unwrap());
    }
    for p in pending {
        p.await.unwrap();
    }
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_s() - c0);
    stop.cancel();
    task.await.unwrap();
    let n = (total / batch * batch) as f64;
    Ingest {
        points_per_s: n / wall,
        points_per_cpu_s: n / cpu.max(1e-9),
    }
}

/// p50 and p99 in ms of `scalars(points=1000)` over the whole run, one
/// series, and a zoomed range of 10% of it.
async fn query_latency(store: &dyn Store, queries: u64) -> (f64, f64, f64) {
    let q = ScalarQuery {
        keys: vec!["train/k0".into()],
        from: None,
        to: None,
        points: 1000,
    };
    let first = store.scalars(RUN, &q).await.unwrap();
    assert!(first[0].buckets.len() <= 1000);
    let mut ms = Vec::new();
    for _ in 0..queries {
        let t = Instant::now();
        std::hint::black_box(store.scalars(RUN, &q).await.unwrap());
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let zoom = ScalarQuery {
        from: Some(100_000),
        to: Some(150_000),
        ..q
    };
    let mut zms = Vec::new();
    for _ in 0..queries.min(20) {
        let t = Instant::now();
        std::hint::black_box(store.scalars(RUN, &zoom).await.unwrap());
        zms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    (
        percentile(&mut ms.clone(), 0.5),
        percentile(&mut ms, 0.99),
        percentile(&mut zms, 0.5),
    )
}

/// Adds `n` runs (half finished) and times the first page and a filtered
/// page: p50 and p99 in ms.
async fn listing(store: &dyn Store, n: u64) -> (f64, f64) {
    let mut writes = Vec::new();
    for i in 0..n {
        let id = format!("run-{i:05}");
        writes.push(Write::Run(record(
            &id,
            i as i64 * 1000,
            &format!("dev-{}", i % 50),
        )));
        if i.is_multiple_of(2) {
            writes.push(Write::Status {
                run: id,
                record: StatusRecord {
                    seq: 1,
                    wall_ms: i as i64 * 1000 + 500,
                    status: RunStatus::Completed,
                    message: String::new(),
                },
            });
        }
    }
    for chunk in writes.chunks(5000) {
        store.apply(chunk.to_vec()).await.unwrap();
    }
    let queries = [
        RunQuery {
            limit: 50,
            ..RunQuery::default()
        },
        RunQuery {
            device: Some("dev-7".into()),
            status: Some(RunStatus::Completed),
            limit: 50,
            ..RunQuery::default()
        },
        RunQuery {
            text: Some("run-0999".into()),
            limit: 50,
            ..RunQuery::default()
        },
    ];
    let mut ms = Vec::new();
    for _ in 0..30 {
        for q in &queries {
            let t = Instant::now();
            std::hint::black_box(store.runs(q).await.unwrap());
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    (percentile(&mut ms.clone(), 0.5), percentile(&mut ms, 0.99))
}

struct Figures {
    name: String,
    ingest: Ingest,
    bytes_per_1000: f64,
    q: (f64, f64, f64),
    list: (f64, f64),
}

fn print(f: &Figures) {
    println!(
        "{:<16} ingest {:>9.0} points/s ({:>9.0} per CPU-second of this process) | {:>6.0} B per 1,000 points | scalars?points=1000 on 1M-point run: p50 {:>6.1} ms p99 {:>6.1} ms (zoomed 50k steps p50 {:.1} ms) | runs list among {} runs: p50 {:.2} ms p99 {:.2} ms",
        f.name,
        f.ingest.points_per_s,
        f.ingest.points_per_cpu_s,
        f.bytes_per_1000,
        f.q.0,
        f.q.1,
        f.q.2,
        env_u64("TW_STORE_RUNS", 10_000),
        f.list.0,
        f.list.1
    );
}

async fn sqlite(shape: Shape, queries: u64, runs: u64) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let s: Arc<dyn Store> = Arc::new(
        store::sqlite::SqliteStore::open(&path, StoreOptions::default())
            .await
            .unwrap(),
    );
    let ingest = ingest(s.clone(), shape).await;
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    let bytes = std::fs::metadata(&path).unwrap().len() as f64;
    let q = query_latency(s.as_ref(), queries).await;
    let list = listing(s.as_ref(), runs).await;
    Figures {
        name: "sqlite".into(),
        ingest,
        bytes_per_1000: bytes / shape.total as f64 * 1000.0,
        q,
        list,
    }
}

async fn postgres(by: PointsBy, shape: Shape, queries: u64, runs: u64) -> Option<Figures> {
    let cluster = util::postgres::cluster_or_skip("bench store (PostgreSQL)")?;
    let url = cluster.fresh_db().await;
    let mut pg = PgStore::open(&url, StoreOptions::default()).await.unwrap();
    pg.set_points_by(by);
    let s: Arc<dyn Store> = Arc::new(pg);
    let ingest = ingest(s.clone(), shape).await;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // VACUUM sets the visibility map, so aggregates read the index only;
    // autovacuum does the same on a live server.
    client.batch_execute("VACUUM ANALYZE").await.unwrap();
    let bytes: i64 = client
        .query_one(
            "SELECT (pg_total_relation_size('points') + pg_total_relation_size('series')
                + pg_total_relation_size('rollups'))::int8",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let q = query_latency(s.as_ref(), queries).await;
    let list = listing(s.as_ref(), runs).await;
    Some(Figures {
        name: format!("postgres ({by:?})"),
        ingest,
        bytes_per_1000: bytes as f64 / shape.total as f64 * 1000.0,
        q,
        list,
    })
}

fn main() {
    let shape = Shape {
        total: env_u64("TW_STORE_POINTS", 1_000_000),
        batch: env_u64("TW_STORE_BATCH", 1000).max(1),
        keys: env_u64("TW_STORE_KEYS", 2).max(1),
        writers: env_u64("TW_STORE_WRITERS", 1).max(1),
    };
    let queries = env_u64("TW_STORE_QUERIES", 100).max(1);
    let runs = env_u64("TW_STORE_RUNS", 10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        eprintln!(
            "store: {} points in batches of {} over {} keys to {} run(s), {queries} queries, {runs} runs",
            shape.total, shape.batch, shape.keys, shape.writers
        );
        print(&sqlite(shape, queries, runs).await);
        if env_u64("TW_STORE_PG", 1) == 1 {
            for by in [PointsBy::Copy, PointsBy::Unnest] {
                if let Some(f) = postgres(by, shape, queries, runs).await {
                    print(&f);
                }
            }
        }
    });
    // The PostgreSQL cluster's guardian stops it when this process ends.
}
