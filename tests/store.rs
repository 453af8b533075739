//! The store (issue 14), one suite run against both backends: a SQLite
//! file in a temp dir, and a throw-away PostgreSQL server the harness
//! starts itself (tests/util/postgres.rs). Each case is written once as a
//! function of a [`Fixture`] and instantiated per backend by `suite!`.

mod util;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use trainwatch::server::store::{
    self, export, Applied, CommandRecord, EpochRecord, ExportFormat, ImageSample, PerfSample,
    Point, Prediction, Result, Retention, RunFigures, RunQuery, RunRecord, RunStatus, ScalarQuery,
    Series, StatusRecord, Store, StoreError, StoreOptions, Write, Writer, WriterConfig,
    SCHEMA_VERSION,
};

/// A backend's place, reopenable: the same file or database each time.
enum Place {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

struct Fixture {
    place: Place,
}

impl Fixture {
    fn sqlite() -> Fixture {
        Fixture {
            place: Place::Sqlite(tempfile::tempdir().expect("temp dir")),
        }
    }

    async fn postgres(test: &str) -> Option<Fixture> {
        let cluster = util::postgres::cluster_or_skip(test)?;
        Some(Fixture {
            place: Place::Postgres(cluster.fresh_db().await),
        })
    }

    fn place(&self) -> String {
        match &self.place {
            Place::Sqlite(dir) => dir.path().join("trainwatch.db").display().to_string(),
            Place::Postgres(url) => url.clone(),
        }
    }

    async fn try_open(&self, options: StoreOptions) -> Result<Arc<dyn Store>> {
        store::open(&self.place(), options).await
    }

    async fn open(&self) -> Arc<dyn Store> {
        self.try_open(StoreOptions::default())
            .await
            .expect("store opens")
    }

    /// Writes `version` into schema_version behind the store's back, as a
    /// newer trainwatch would have.
    async fn set_schema_version(&self, version: i64) {
        self.behind_its_back(&format!("UPDATE schema_version SET version = {version}"))
            .await;
    }

    /// Runs `sql` on the database on a connection of its own.
    async fn behind_its_back(&self, sql: &str) {
        match &self.place {
            Place::Sqlite(_) => {
                let c = rusqlite::Connection::open(self.place()).unwrap();
                c.execute_batch(sql).unwrap();
            }
            Place::Postgres(url) => {
                let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                let conn = tokio::spawn(conn);
                client.batch_execute(sql).await.unwrap();
                drop(client);
                let _ = conn.await;
            }
        }
    }
}

/// Every case ends well inside this, however loaded the machine.
const CASE_TIMEOUT: Duration = Duration::from_secs(120);

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let f = super::Fixture::sqlite();
                    tokio::time::timeout(super::CASE_TIMEOUT, super::cases::$case(f))
                        .await
                        .expect("case finished in time");
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(f) = super::Fixture::postgres(stringify!($case)).await else {
                        return;
                    };
                    tokio::time::timeout(super::CASE_TIMEOUT, super::cases::$case(f))
                        .await
                        .expect("case finished in time");
                }
            )*
        }
    };
}

suite!(
    migrations_apply_and_a_newer_schema_is_refused,
    resent_sequence_numbers_are_skipped_and_gaps_refused,
    reopening_keeps_everything_and_resends_stay_skipped,
    listing_runs_pages_newest_first_and_filters,
    downsampling_keeps_a_spike_and_zooming_gives_every_point,
    downsampled_buckets_are_those_of_the_points_before_and_after_migrating,
    export_streams_every_point_once_in_order,
    retention_deletes_old_finished_runs_and_nothing_else,
    image_quota_evicts_the_oldest_finished_runs_images_never_scalars,
    images_per_run_cap_keeps_the_newest,
    deleting_a_run_removes_all_of_it,
    history_reads_back_as_written,
    a_runs_owner_is_kept_and_never_replaced,
    a_listings_figures_are_each_runs_last_loss_best_metric_and_fps,
);

// ---- helpers -----------------------------------------------------------

const DAY_MS: i64 = 86_400_000;
/// 2024-01-01T00:00:00Z: a fixed "now" so retention cases are exact.
const NOW_MS: i64 = 1_704_067_200_000;

fn run(id: &str, device: &str, created_ms: i64) -> Write {
    Write::Run(RunRecord {
        id: id.into(),
        device: device.into(),
        name: format!("{id} on {device}"),
        model: "resnet18".into(),
        dataset: "cifar10".into(),
        config: r#"{"lr":0.001}"#.into(),
        created_ms,
        owner: None,
    })
}

fn status(run: &str, seq: u64, status: RunStatus, wall_ms: i64) -> Write {
    Write::Status {
        run: run.into(),
        record: StatusRecord {
            seq,
            wall_ms,
            status,
            message: format!("{status:?}"),
        },
    }
}

fn epoch(run: &str, seq: u64, epoch: u32) -> Write {
    Write::Epoch {
        run: run.into(),
        record: EpochRecord {
            seq,
            epoch,
            wall_ms: NOW_MS + i64::from(epoch),
            metrics: BTreeMap::from([("average_loss".into(), 0.5), ("val_acc".into(), 0.9)]),
        },
    }
}

/// Points `first_seq..first_seq + n` of key `key`, step = seq.
fn points(run: &str, key: &str, first_seq: u64, n: u64) -> Write {
    Write::Points {
        run: run.into(),
        first_seq,
        points: (first_seq..first_seq + n)
            .map(|s| Point {
                key: key.into(),
                step: s as i64,
                wall_ms: NOW_MS + s as i64,
                value: s as f64 * 0.5,
            })
            .collect(),
    }
}

fn image(run: &str, step: i64, jpegs: &[Vec<u8>]) -> Write {
    Write::Image {
        run: run.into(),
        sample: ImageSample {
            epoch: 1,
            step,
            wall_ms: NOW_MS + step,
            jpegs: jpegs.iter().cloned().map(bytes::Bytes::from).collect(),
            predictions: vec![Prediction {
                class: 3,
                confidence: 0.75,
            }],
            labels: vec![3],
        },
    }
}

/// A JPEG-sized blob, distinct per `tag`.
fn jpeg(tag: u8, len: usize) -> Vec<u8> {
    let mut v = vec![tag; len];
    v[0] = 0xFF;
    v[1] = 0xD8;
    v
}

/// Applies `writes` in one transaction and insists every one succeeded.
async fn apply_ok(s: &dyn Store, writes: Vec<Write>) -> Vec<Applied> {
    s.apply(writes)
        .await
        .expect("transaction commits")
        .into_iter()
        .map(|r| r.expect("write accepted"))
        .collect()
}

fn writer(s: &Arc<dyn Store>) -> (Writer, tokio::task::JoinHandle<()>, CancellationToken) {
    let stop = CancellationToken::new();
    let config = WriterConfig {
        linger: Duration::from_millis(5),
        ..WriterConfig::default()
    };
    let (w, task) = Writer::spawn(s.clone(), config, stop.clone());
    (w, task, stop)
}

/// Every run `q` lists, page after page through its cursors; no page
/// longer than its limit.
async fn every_page(s: &dyn Store, mut q: RunQuery) -> Vec<store::RunSummary> {
    let mut all = Vec::new();
    loop {
        let page = s.runs(&q).await.unwrap();
        assert!(page.runs.len() <= q.limit, "{} rows", page.runs.len());
        all.extend(page.runs);
        match page.next {
            Some(c) => q.cursor = Some(c),
            None => return all,
        }
    }
}

/// The newest-first cursor after (created_ms, id).
fn seen_cursor(row: &(i64, String)) -> String {
    format!("{}.{}", row.0, row.1)
}

async fn all_points(s: &dyn Store, run: &str) -> Vec<store::ScalarPoint> {
    export::collect(s.export(run).await.expect("export starts"))
        .await
        .expect("export completes")
}

fn scalars(points: usize) -> ScalarQuery {
    ScalarQuery {
        keys: vec![],
        from: None,
        to: None,
        points,
    }
}

/// A store whose `apply` commits through the real one, then holds its
/// answer until released: the writer must not report the commit before
/// `apply` returns; and one that fails every commit.
struct Gated {
    inner: Arc<dyn Store>,
    entered: tokio::sync::mpsc::Sender<()>,
    release: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<()>>,
    fail: bool,
}

#[async_trait]
impl Store for Gated {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn schema_version(&self) -> Result<u32> {
        self.inner.schema_version().await
    }
    async fn apply(&self, writes: Vec<Write>) -> Result<Vec<Result<Applied>>> {
        if self.fail {
            return Err(StoreError::Worker("disk full (simulated)".into()));
        }
        let r = self.inner.apply(writes).await;
        self.entered.send(()).await.unwrap();
        self.release.lock().await.recv().await;
        r
    }
    async fn run(&self, id: &str) -> Result<Option<store::RunSummary>> {
        self.inner.run(id).await
    }
    async fn runs(&self, q: &RunQuery) -> Result<store::RunPage> {
        self.inner.runs(q).await
    }
    async fn figures(&self, runs: &[String], keys: &[&str]) -> Result<Vec<RunFigures>> {
        self.inner.figures(runs, keys).await
    }
    async fn scalars(&self, run: &str, q: &ScalarQuery) -> Result<Vec<store::Series>> {
        self.inner.scalars(run, q).await
    }
    async fn export(&self, run: &str) -> Result<store::PointStream> {
        self.inner.export(run).await
    }
    async fn images(&self, run: &str, from: i64, to: i64) -> Result<Vec<ImageSample>> {
        self.inner.images(run, from, to).await
    }
    async fn commands(&self, run: &str) -> Result<Vec<CommandRecord>> {
        self.inner.commands(run).await
    }
    async fn statuses(&self, run: &str) -> Result<Vec<StatusRecord>> {
        self.inner.statuses(run).await
    }
    async fn epochs(&self, run: &str) -> Result<Vec<EpochRecord>> {
        self.inner.epochs(run).await
    }
    async fn perf(&self, run: &str, a: i64, b: i64) -> Result<Vec<PerfSample>> {
        self.inner.perf(run, a, b).await
    }
    async fn delete_run(&self, run: &str) -> Result<bool> {
        self.inner.delete_run(run).await
    }
    async fn retain(&self, p: Retention, now: i64) -> Result<store::RetentionReport> {
        self.inner.retain(p, now).await
    }
    async fn image_bytes(&self) -> Result<u64> {
        self.inner.image_bytes().await
    }
}

mod cases {
    use super::*;

    pub async fn migrations_apply_and_a_newer_schema_is_refused(f: Fixture) {
        let s = f.open().await;
        assert_eq!(s.schema_version().await.unwrap(), SCHEMA_VERSION);
        drop(s);
        // Opening an up-to-date database again migrates nothing and works.
        let s = f.open().await;
        assert_eq!(s.schema_version().await.unwrap(), SCHEMA_VERSION);
        drop(s);

        let newer = i64::from(SCHEMA_VERSION) + 1;
        f.set_schema_version(newer).await;
        let err = f
            .try_open(StoreOptions::default())
            .await
            .err()
            .expect("a newer schema is refused");
        let msg = err.to_string();
        assert!(matches!(err, StoreError::NewerSchema { .. }), "{msg}");
        assert!(
            msg.contains(&format!("version {newer}"))
                && msg.contains(&format!("version {SCHEMA_VERSION}")),
            "names both versions: {msg}"
        );
    }

    pub async fn resent_sequence_numbers_are_skipped_and_gaps_refused(f: Fixture) {
        let s = f.open().await;
        let (w, task, stop) = writer(&s);
        w.write(run("r1", "jetson-1", NOW_MS)).await.unwrap();
        for seq in 1..=3 {
            let a = w.write(epoch("r1", seq, seq as u32)).await.unwrap();
            assert_eq!(
                a,
                Applied {
                    stored: 1,
                    skipped: 0
                }
            );
        }
        w.write(points("r1", "loss", 1, 100)).await.unwrap();

        // The agent resends after a reconnect: what is stored is skipped.
        let a = w.write(epoch("r1", 2, 2)).await.unwrap();
        assert_eq!(
            a,
            Applied {
                stored: 0,
                skipped: 1
            }
        );
        let a = w.write(points("r1", "loss", 51, 100)).await.unwrap();
        assert_eq!(
            a,
            Applied {
                stored: 50,
                skipped: 50
            }
        );

        // A gap (event 5 after 3, points from 200 after 150) is refused,
        // naming both numbers, and stores nothing.
        let e = w
            .write(status("r1", 5, RunStatus::Running, NOW_MS))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::SeqGap {
                    seq: 5,
                    last: 3,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string().contains('5') && e.to_string().contains('3'),
            "{e}"
        );
        let e = w.write(points("r1", "loss", 200, 10)).await.unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::SeqGap {
                    seq: 200,
                    last: 150,
                    ..
                }
            ),
            "{e}"
        );
        // The next in sequence still goes through.
        w.write(status("r1", 4, RunStatus::Running, NOW_MS))
            .await
            .unwrap();
        let e = w.write(points("r9", "loss", 1, 1)).await.unwrap_err();
        assert!(matches!(e, StoreError::UnknownRun { .. }), "{e}");
        stop.cancel();
        task.await.unwrap();

        let r = s.run("r1").await.unwrap().unwrap();
        assert_eq!((r.last_event_seq, r.last_point_seq), (4, 150));
        assert_eq!((r.epochs, r.points), (3, 150));
        let pts = all_points(s.as_ref(), "r1").await;
        let steps: Vec<i64> = pts.iter().map(|p| p.step).collect();
        assert_eq!(steps, (1..=150).collect::<Vec<_>>(), "each point once");
        assert_eq!(s.epochs("r1").await.unwrap().len(), 3);
        assert_eq!(s.statuses("r1").await.unwrap().len(), 1);
    }

    pub async fn reopening_keeps_everything_and_resends_stay_skipped(f: Fixture) {
        let s = f.open().await;
        let (w, task, stop) = writer(&s);
        w.write(run("r1", "jetson-1", NOW_MS)).await.unwrap();
        w.write(points("r1", "loss", 1, 500)).await.unwrap();
        w.write(status("r1", 1, RunStatus::Running, NOW_MS))
            .await
            .unwrap();
        stop.cancel();
        task.await.unwrap();
        drop(w);
        drop(s);

        let s = f.open().await;
        let r = s.run("r1").await.unwrap().expect("run survives");
        assert_eq!(
            (r.last_point_seq, r.points, r.status),
            (500, 500, RunStatus::Running)
        );
        assert_eq!(all_points(s.as_ref(), "r1").await.len(), 500);
        let got = apply_ok(s.as_ref(), vec![points("r1", "loss", 401, 200)]).await;
        assert_eq!(
            got,
            vec![Applied {
                stored: 100,
                skipped: 100
            }]
        );
        assert_eq!(all_points(s.as_ref(), "r1").await.len(), 600);
    }

    pub async fn listing_runs_pages_newest_first_and_filters(f: Fixture) {
        let s = f.open().await;
        let mut writes = Vec::new();
        for i in 0..250i64 {
            let id = format!("run-{i:04}");
            writes.push(run(&id, &format!("dev-{}", i % 5), NOW_MS + i * 1000));
            if i % 2 == 0 {
                writes.push(status(&id, 1, RunStatus::Completed, NOW_MS + i * 1000));
            }
        }
        // Two runs created in the same millisecond: the id breaks the tie.
        writes.push(run("tie-a", "dev-x", NOW_MS + 77_500));
        writes.push(run("tie-b", "dev-x", NOW_MS + 77_500));
        apply_ok(s.as_ref(), writes).await;

        let newest = RunQuery {
            limit: 100,
            ..RunQuery::default()
        };
        let seen: Vec<(i64, String)> = every_page(s.as_ref(), newest)
            .await
            .iter()
            .map(|r| (r.run.created_ms, r.run.id.clone()))
            .collect();
        assert_eq!(seen.len(), 252, "every run once");
        let mut sorted = seen.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(seen, sorted, "newest first, id descending on ties");

        // By device, A to Z, ties by id: every run once across pages.
        let by_device_query = RunQuery {
            limit: 60,
            sort: store::RunSort::Device,
            ascending: true,
            ..RunQuery::default()
        };
        let by_device: Vec<(String, String)> = every_page(s.as_ref(), by_device_query)
            .await
            .iter()
            .map(|r| (r.run.device.clone(), r.run.id.clone()))
            .collect();
        let mut want = by_device.clone();
        want.sort();
        assert_eq!(by_device.len(), 252);
        assert_eq!(by_device, want, "device ascending, id ascending on ties");
        // A newest-first cursor is not one for this order.
        let wrong = s
            .runs(&RunQuery {
                cursor: Some(seen_cursor(&seen[99])),
                sort: store::RunSort::Device,
                ascending: true,
                ..RunQuery::default()
            })
            .await;
        assert!(matches!(wrong, Err(StoreError::BadCursor(_))), "{wrong:?}");

        let page = s
            .runs(&RunQuery {
                device: Some("dev-3".into()),
                status: Some(RunStatus::Completed),
                limit: 1000,
                ..RunQuery::default()
            })
            .await
            .unwrap();
        // i % 5 == 3 and i even: i = 8, 18, …, 248.
        assert_eq!(page.runs.len(), 25);
        assert!(page
            .runs
            .iter()
            .all(|r| r.run.device == "dev-3" && r.status == RunStatus::Completed));

        let page = s
            .runs(&RunQuery {
                text: Some("RUN-012".into()),
                ..RunQuery::default()
            })
            .await
            .unwrap();
        let ids: Vec<&str> = page.runs.iter().map(|r| r.run.id.as_str()).collect();
        assert_eq!(
            ids,
            (120..130)
                .rev()
                .map(|i| format!("run-{i:04}"))
                .collect::<Vec<_>>()
        );

        let e = s
            .runs(&RunQuery {
                cursor: Some("not-a-cursor".into()),
                ..RunQuery::default()
            })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not-a-cursor"), "{e}");
    }

    pub async fn downsampling_keeps_a_spike_and_zooming_gives_every_point(f: Fixture) {
        let s = f.open().await;
        const N: i64 = 100_000;
        const SPIKE_STEP: i64 = 73_421;
        let pts: Vec<Point> = (0..N)
            .map(|i| Point {
                key: "loss".into(),
                step: i,
                wall_ms: NOW_MS + i,
                value: if i == SPIKE_STEP {
                    1e9
                } else {
                    (i % 100) as f64 / 100.0
                },
            })
            .collect();
        apply_ok(
            s.as_ref(),
            vec![
                run("r1", "d", NOW_MS),
                Write::Points {
                    run: "r1".into(),
                    first_seq: 1,
                    points: pts,
                },
            ],
        )
        .await;

        let series = s.scalars("r1", &scalars(1000)).await.unwrap();
        assert_eq!(series.len(), 1);
        let loss = &series[0];
        assert!(loss.downsampled);
        // Buckets wide enough to read rollups are whole multiples of them,
        // so between half of N and N come back.
        assert!(loss.buckets.len() <= 1000 && loss.buckets.len() > 500);
        assert_eq!(loss.buckets.iter().map(|b| b.count).sum::<u64>(), N as u64);
        let spike = loss
            .buckets
            .iter()
            .find(|b| b.max == 1e9)
            .expect("spike kept");
        assert!(spike.step >= SPIKE_STEP, "its bucket ends at or after it");
        assert_eq!(loss.buckets.iter().filter(|b| b.max == 1e9).count(), 1);
        let last = loss.buckets.last().unwrap();
        assert_eq!((last.step, last.last), (N - 1, 0.99));
        assert!(loss
            .buckets
            .iter()
            .all(|b| b.min <= b.last && b.last <= b.max));

        // Zoomed in to 1,000 steps: every point, the spike exactly.
        let zoom = s
            .scalars(
                "r1",
                &ScalarQuery {
                    keys: vec!["loss".into()],
                    from: Some(73_000),
                    to: Some(73_999),
                    points: 1000,
                },
            )
            .await
            .unwrap();
        assert!(!zoom[0].downsampled);
        assert_eq!(zoom[0].buckets.len(), 1000);
        let b = zoom[0]
            .buckets
            .iter()
            .find(|b| b.step == SPIKE_STEP)
            .unwrap();
        assert_eq!((b.min, b.max, b.last, b.count), (1e9, 1e9, 1e9, 1));
        let none = s
            .scalars(
                "r1",
                &ScalarQuery {
                    keys: vec!["nope".into()],
                    ..scalars(10)
                },
            )
            .await
            .unwrap();
        assert!(none.is_empty());
    }

    /// Checks `got` against the points themselves: buckets partition the
    /// range's points in step order, so bucket i holds the points whose
    /// step is after bucket i-1's last step and at most its own.
    fn check_buckets(all: &[store::ScalarPoint], from: i64, to: i64, n: usize, got: &Series) {
        let inside: Vec<&store::ScalarPoint> = all
            .iter()
            .filter(|p| (from..=to).contains(&p.step))
            .collect();
        assert!(got.downsampled, "{from}..={to}: {} points", inside.len());
        assert!(
            got.buckets.len() <= n && got.buckets.len() * 2 >= n.min(inside.len()),
            "{} buckets for {n}",
            got.buckets.len()
        );
        let mut prev = i64::MIN;
        for b in &got.buckets {
            let mine: Vec<&&store::ScalarPoint> = inside
                .iter()
                .filter(|p| p.step > prev && p.step <= b.step)
                .collect();
            let min = mine.iter().map(|p| p.value).fold(f64::INFINITY, f64::min);
            let max = mine
                .iter()
                .map(|p| p.value)
                .fold(f64::NEG_INFINITY, f64::max);
            // The export orders ties on step by sequence number.
            let last = mine.last().expect("a bucket holds points");
            assert_eq!(
                (b.count, b.min, b.max, b.last, b.wall_ms),
                (mine.len() as u64, min, max, last.value, last.wall_ms),
                "bucket ending at step {} of {from}..={to}",
                b.step
            );
            prev = b.step;
        }
        assert_eq!(
            got.buckets.iter().map(|b| b.count).sum::<u64>(),
            inside.len() as u64
        );
    }

    pub async fn downsampled_buckets_are_those_of_the_points_before_and_after_migrating(
        f: Fixture,
    ) {
        let s = f.open().await;
        apply_ok(s.as_ref(), vec![run("r1", "d", NOW_MS)]).await;
        // 40,000 points in 400 writes across 40 transactions, so rollups
        // are folded within a group and across them; steps from -500 with
        // every 97th step logged twice and a few logged late, out of order.
        let mut steps: Vec<i64> = Vec::new();
        for i in -500..39_500i64 {
            steps.push(i);
            if i.rem_euclid(97) == 0 {
                steps.push(i);
            }
        }
        steps.truncate(39_996);
        steps.extend([-321, 5_000, 17_777, 38_000]);
        let mut seq = 1u64;
        // (step, seq, wall_ms, value) as written, for a row-per-point table.
        let mut rows: Vec<String> = Vec::new();
        for chunk in steps.chunks(1000) {
            let writes = chunk
                .chunks(100)
                .map(|c| {
                    let points: Vec<Point> = c
                        .iter()
                        .enumerate()
                        .map(|(i, &step)| Point {
                            key: "loss".into(),
                            step,
                            wall_ms: NOW_MS + seq as i64 + i as i64,
                            value: ((step * 7919).rem_euclid(1009) as f64) - 500.0,
                        })
                        .collect();
                    for (i, p) in points.iter().enumerate() {
                        rows.push(format!(
                            "(@s, {}, {}, {}, {:?})",
                            p.step,
                            seq + i as u64,
                            p.wall_ms,
                            p.value
                        ));
                    }
                    let w = Write::Points {
                        run: "r1".into(),
                        first_seq: seq,
                        points,
                    };
                    seq += c.len() as u64;
                    w
                })
                .collect();
            apply_ok(s.as_ref(), writes).await;
        }
        let all = all_points(s.as_ref(), "r1").await;
        assert_eq!(all.len(), 40_000);
        let ranges = [
            (None, None, 1000),
            (None, None, 37),
            (Some(-77), Some(38_950), 300),
            (Some(1_000), Some(1_639), 600),
            (Some(5_003), Some(30_001), 10),
        ];
        let query = |from: Option<i64>, to: Option<i64>, n: usize| ScalarQuery {
            keys: vec!["loss".into()],
            from,
            to,
            points: n,
        };
        let mut before = Vec::new();
        for &(from, to, n) in &ranges {
            let got = s.scalars("r1", &query(from, to, n)).await.unwrap();
            let (a, z) = (from.unwrap_or(i64::MIN), to.unwrap_or(i64::MAX));
            check_buckets(&all, a, z, n, &got[0]);
            before.push(got);
        }
        drop(s);

        // A database from before rollups (and run owners, and SQLite's
        // chunks): rollups are built from its points, and SQLite packs them.
        let rewind = match &f.place {
            Place::Postgres(_) => String::new(),
            Place::Sqlite(_) => format!(
                "DROP TABLE chunks;
                 CREATE TABLE points (series INTEGER NOT NULL, step INTEGER NOT NULL,
                   seq INTEGER NOT NULL, wall_ms INTEGER NOT NULL, value REAL NOT NULL,
                   PRIMARY KEY (series, step, seq)) WITHOUT ROWID;
                 INSERT INTO points VALUES {};",
                rows.join(",").replace(
                    "@s",
                    "(SELECT id FROM series WHERE run = 'r1' AND key = 'loss')"
                )
            ),
        };
        f.behind_its_back(&format!(
            "{rewind} DROP TABLE rollups; ALTER TABLE runs DROP COLUMN owner;
             UPDATE schema_version SET version = 1"
        ))
        .await;
        let s = f.open().await;
        assert_eq!(s.schema_version().await.unwrap(), SCHEMA_VERSION);
        for (&(from, to, n), want) in ranges.iter().zip(&before) {
            let got = s.scalars("r1", &query(from, to, n)).await.unwrap();
            assert_eq!(&got, want, "{from:?}..{to:?} after migrating");
        }
        assert!(
            all_points(s.as_ref(), "r1").await == all,
            "every point, as before"
        );
    }

    pub async fn export_streams_every_point_once_in_order(f: Fixture) {
        let s = f.open().await;
        let mut writes = vec![run("r1", "d", NOW_MS), run("r2", "d", NOW_MS)];
        // Three keys interleaved in one point sequence, 5,000 points each.
        let mut pts = Vec::new();
        for i in 0..5_000i64 {
            for key in ["b/grad_norm", "a.loss", "c,lr"] {
                pts.push(Point {
                    key: key.into(),
                    step: i,
                    wall_ms: NOW_MS + i,
                    value: i as f64,
                });
            }
        }
        writes.push(Write::Points {
            run: "r1".into(),
            first_seq: 1,
            points: pts,
        });
        writes.push(points("r2", "loss", 1, 10));
        apply_ok(s.as_ref(), writes).await;

        let got = all_points(s.as_ref(), "r1").await;
        assert_eq!(got.len(), 15_000);
        let mut expect = Vec::new();
        for key in ["a.loss", "b/grad_norm", "c,lr"] {
            for i in 0..5_000i64 {
                expect.push((key.to_string(), i));
            }
        }
        let order: Vec<(String, i64)> = got.iter().map(|p| (p.key.clone(), p.step)).collect();
        assert_eq!(order, expect, "by key, then step, each once");
        assert!(got.iter().all(|p| p.run == "r1"));

        let csv: Vec<u8> = collect_bytes(s.as_ref(), "r1", ExportFormat::Csv).await;
        let text = String::from_utf8(csv).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 15_001);
        assert_eq!(lines[0], "run,key,step,wall_ms,value");
        assert_eq!(lines[1], format!("r1,a.loss,0,{NOW_MS},0"));
        assert!(text.contains("r1,\"c,lr\",4999,"), "quotes a comma");

        let nd = collect_bytes(s.as_ref(), "r1", ExportFormat::Ndjson).await;
        let rows: Vec<serde_json::Value> = String::from_utf8(nd)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), 15_000);
        assert_eq!(rows[14_999]["key"], "c,lr");
        assert_eq!(rows[14_999]["step"], 4_999);
    }

    async fn collect_bytes(s: &dyn Store, run: &str, format: ExportFormat) -> Vec<u8> {
        let mut out = Vec::new();
        let mut body = export::encode(s.export(run).await.unwrap(), format);
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    /// Three runs: old and finished, recent and finished, old and live.
    async fn three_runs(s: &dyn Store) {
        let old = NOW_MS - 40 * DAY_MS;
        apply_ok(
            s,
            vec![
                run("old-done", "d", old),
                status("old-done", 1, RunStatus::Completed, old + 1000),
                points("old-done", "loss", 1, 50),
                image("old-done", 1, &[jpeg(1, 1000)]),
                run("new-done", "d", NOW_MS - 2 * DAY_MS),
                status("new-done", 1, RunStatus::Failed, NOW_MS - DAY_MS),
                points("new-done", "loss", 1, 50),
                image("new-done", 1, &[jpeg(2, 1000)]),
                run("old-live", "d", old),
                status("old-live", 1, RunStatus::Running, old + 1000),
                points("old-live", "loss", 1, 50),
                image("old-live", 1, &[jpeg(3, 1000)]),
            ],
        )
        .await;
    }

    pub async fn retention_deletes_old_finished_runs_and_nothing_else(f: Fixture) {
        let s = f.open().await;
        three_runs(s.as_ref()).await;
        let forever = Retention {
            keep_days: 0,
            image_quota_bytes: 0,
        };
        let report = s.retain(forever, NOW_MS).await.unwrap();
        assert!(report.runs_deleted.is_empty() && report.images_evicted.is_empty());

        let month = Retention {
            keep_days: 30,
            image_quota_bytes: 0,
        };
        let report = s.retain(month, NOW_MS).await.unwrap();
        assert_eq!(report.runs_deleted, vec!["old-done".to_string()]);
        assert!(s.run("old-done").await.unwrap().is_none());
        assert!(all_points(s.as_ref(), "old-done").await.is_empty());
        assert!(s.statuses("old-done").await.unwrap().is_empty());
        assert!(s
            .images("old-done", i64::MIN, i64::MAX)
            .await
            .unwrap()
            .is_empty());
        for kept in ["new-done", "old-live"] {
            assert!(s.run(kept).await.unwrap().is_some(), "{kept} kept");
            assert_eq!(all_points(s.as_ref(), kept).await.len(), 50);
            assert_eq!(s.images(kept, 0, 10).await.unwrap().len(), 1);
        }
        assert_eq!(s.image_bytes().await.unwrap(), 2000);
    }

    pub async fn image_quota_evicts_the_oldest_finished_runs_images_never_scalars(f: Fixture) {
        let s = f.open().await;
        three_runs(s.as_ref()).await;
        // The same JPEG twice is stored once.
        apply_ok(s.as_ref(), vec![image("old-live", 2, &[jpeg(3, 1000)])]).await;
        assert_eq!(s.image_bytes().await.unwrap(), 3000);

        let quota = Retention {
            keep_days: 0,
            image_quota_bytes: 2500,
        };
        let report = s.retain(quota, NOW_MS).await.unwrap();
        assert_eq!(report.images_evicted, vec!["old-done".to_string()]);
        assert!(report.runs_deleted.is_empty());
        assert_eq!(report.image_bytes, 2000);
        assert!(s
            .images("old-done", i64::MIN, i64::MAX)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            all_points(s.as_ref(), "old-done").await.len(),
            50,
            "scalars kept"
        );
        let r = s.run("old-done").await.unwrap().unwrap();
        assert_eq!((r.images, r.points), (0, 50));
        assert_eq!(s.images("new-done", 0, 10).await.unwrap().len(), 1);
        assert_eq!(s.images("old-live", 0, 10).await.unwrap().len(), 2);

        // Under the quota already: nothing more goes.
        let report = s.retain(quota, NOW_MS).await.unwrap();
        assert!(report.images_evicted.is_empty());
        // A quota no finished run can meet evicts every finished run's
        // images but never a live run's.
        let tiny = Retention {
            keep_days: 0,
            image_quota_bytes: 1,
        };
        let report = s.retain(tiny, NOW_MS).await.unwrap();
        assert_eq!(report.images_evicted, vec!["new-done".to_string()]);
        assert_eq!(s.images("old-live", 0, 10).await.unwrap().len(), 2);
        assert_eq!(s.image_bytes().await.unwrap(), 1000);
    }

    pub async fn images_per_run_cap_keeps_the_newest(f: Fixture) {
        let s = f
            .try_open(StoreOptions { images_per_run: 3 })
            .await
            .unwrap();
        let mut writes = vec![run("r1", "d", NOW_MS), run("r2", "d", NOW_MS)];
        for step in 1..=5 {
            writes.push(image(
                "r1",
                step * 10,
                &[jpeg(step as u8, 100), jpeg(99, 50)],
            ));
        }
        writes.push(image("r2", 1, &[jpeg(99, 50)]));
        apply_ok(s.as_ref(), writes).await;
        let kept = s.images("r1", i64::MIN, i64::MAX).await.unwrap();
        let steps: Vec<i64> = kept.iter().map(|i| i.step).collect();
        assert_eq!(steps, vec![30, 40, 50]);
        assert_eq!(kept[0].jpegs[0], jpeg(3, 100));
        assert_eq!(kept[0].jpegs[1], jpeg(99, 50));
        assert_eq!(kept[0].predictions[0].class, 3);
        assert_eq!(kept[0].labels, vec![3]);
        assert_eq!(s.run("r1").await.unwrap().unwrap().images, 3);
        // Three distinct 100-byte JPEGs and the shared 50-byte one.
        assert_eq!(s.image_bytes().await.unwrap(), 350);
    }

    pub async fn deleting_a_run_removes_all_of_it(f: Fixture) {
        let s = f.open().await;
        let mut writes = Vec::new();
        for r in ["gone", "kept"] {
            writes.extend([
                run(r, "d", NOW_MS),
                status(r, 1, RunStatus::Running, NOW_MS),
                epoch(r, 2, 1),
                points(r, "loss", 1, 100),
                image(r, 5, &[jpeg(r.len() as u8, 100)]),
                Write::Perf {
                    run: r.into(),
                    samples: vec![PerfSample {
                        wall_ms: NOW_MS,
                        fps: Some(60.0),
                        ..PerfSample::default()
                    }],
                },
                Write::Command {
                    run: r.into(),
                    record: CommandRecord {
                        id: 1,
                        who: "ops".into(),
                        when_ms: NOW_MS,
                        what: r#"{"type":"PAUSE_TRAINING"}"#.into(),
                        delivered_ms: None,
                        applied_ms: None,
                    },
                },
            ]);
        }
        // Both runs hold the same JPEG (stored once): deleting one run
        // keeps it for the other.
        apply_ok(s.as_ref(), writes).await;
        assert!(s.delete_run("gone").await.unwrap());
        assert!(!s.delete_run("gone").await.unwrap(), "already gone");
        assert!(s.run("gone").await.unwrap().is_none());
        assert!(all_points(s.as_ref(), "gone").await.is_empty());
        assert!(s.statuses("gone").await.unwrap().is_empty());
        assert!(s.epochs("gone").await.unwrap().is_empty());
        assert!(s.commands("gone").await.unwrap().is_empty());
        assert!(s.perf("gone", i64::MIN, i64::MAX).await.unwrap().is_empty());
        assert!(s
            .images("gone", i64::MIN, i64::MAX)
            .await
            .unwrap()
            .is_empty());
        assert!(s.scalars("gone", &scalars(10)).await.unwrap().is_empty());

        assert_eq!(all_points(s.as_ref(), "kept").await.len(), 100);
        assert_eq!(s.images("kept", 0, 10).await.unwrap().len(), 1);
        assert_eq!(s.commands("kept").await.unwrap().len(), 1);
        assert_eq!(s.image_bytes().await.unwrap(), 100);
        // The id is free again, with fresh sequences.
        let got = apply_ok(
            s.as_ref(),
            vec![run("gone", "d", NOW_MS), points("gone", "loss", 1, 1)],
        )
        .await;
        assert_eq!(
            got[1],
            Applied {
                stored: 1,
                skipped: 0
            }
        );
    }

    /// The identity a run is bound to survives reopening, and a later
    /// registration (another owner, or none) does not replace it.
    pub async fn a_listings_figures_are_each_runs_last_loss_best_metric_and_fps(f: Fixture) {
        let s = f.open().await;
        // r1: 300 losses falling then one spike at the end, 200 accuracies
        // rising with a dip, FPS 60 then a sample without FPS; r2 only a
        // run row; r3 a key the page did not ask about.
        let key = |run: &str, key: &str, first_seq: u64, values: &[f64]| Write::Points {
            run: run.into(),
            first_seq,
            points: values
                .iter()
                .enumerate()
                .map(|(i, &v)| Point {
                    key: key.into(),
                    step: i as i64,
                    wall_ms: NOW_MS + i as i64,
                    value: v,
                })
                .collect(),
        };
        let mut loss: Vec<f64> = (0..300).map(|i| 3.0 - f64::from(i) * 0.01).collect();
        *loss.last_mut().unwrap() = 9.5;
        let mut acc: Vec<f64> = (0..200).map(|i| f64::from(i) / 200.0).collect();
        acc[150] = 0.05;
        let perf = |wall_ms, fps| Write::Perf {
            run: "r1".into(),
            samples: vec![PerfSample {
                wall_ms,
                fps,
                ..PerfSample::default()
            }],
        };
        apply_ok(
            &*s,
            vec![
                run("r1", "jetson", NOW_MS),
                run("r2", "jetson", NOW_MS + 1),
                run("r3", "jetson", NOW_MS + 2),
                key("r1", "train/loss", 1, &loss),
                key("r1", "val/acc", 301, &acc),
                key("r3", "other", 1, &[1.0]),
                perf(NOW_MS, Some(60.0)),
                perf(NOW_MS + 1000, Some(42.5)),
                perf(NOW_MS + 2000, None),
            ],
        )
        .await;
        let ids = ["r1", "r2", "r3", "nope"].map(String::from);
        let figs = s.figures(&ids, &["train/loss", "val/acc"]).await.unwrap();
        assert_eq!(figs.iter().map(|f| f.run.as_str()).collect::<Vec<_>>(), ids);
        let r1 = &figs[0];
        assert_eq!(r1.keys, ["train/loss", "val/acc"]);
        let l = r1.of("train/loss").unwrap();
        assert_eq!(
            (l.min, l.max, l.last),
            (Some(3.0 - 298.0 * 0.01), Some(9.5), Some(9.5))
        );
        let a = r1.of("val/acc").unwrap();
        assert_eq!(
            (a.min, a.max, a.last),
            (Some(0.0), Some(199.0 / 200.0), Some(199.0 / 200.0))
        );
        assert_eq!(r1.fps, Some(42.5), "the newest sample that measured FPS");
        assert_eq!(
            figs[1],
            RunFigures {
                run: "r2".into(),
                ..Default::default()
            }
        );
        assert_eq!(figs[2].keys, ["other"]);
        assert!(figs[2].series.is_empty(), "{:?}", figs[2]);
        assert_eq!(
            figs[3],
            RunFigures {
                run: "nope".into(),
                ..Default::default()
            }
        );
        assert!(s.figures(&[], &[]).await.unwrap().is_empty());
        let none = s.figures(&ids[..1], &[]).await.unwrap();
        assert_eq!((none[0].keys.len(), none[0].series.len()), (2, 0));
    }

    pub async fn a_runs_owner_is_kept_and_never_replaced(f: Fixture) {
        let s = f.open().await;
        let owned = |owner: Option<&str>| {
            let Write::Run(mut r) = run("r1", "d", NOW_MS) else {
                unreachable!()
            };
            r.owner = owner.map(str::to_string);
            Write::Run(r)
        };
        apply_ok(&*s, vec![owned(Some("token:aaaa"))]).await;
        apply_ok(&*s, vec![owned(Some("token:bbbb")), owned(None)]).await;
        drop(s);
        let s = f.open().await;
        let r = s.run("r1").await.unwrap().unwrap();
        assert_eq!(r.run.owner.as_deref(), Some("token:aaaa"));
        // Not part of what the API shows.
        let json = serde_json::to_value(&r).unwrap();
        assert!(json.get("owner").is_none(), "{json}");
    }

    pub async fn history_reads_back_as_written(f: Fixture) {
        let s = f.open().await;
        let (w, task, stop) = writer(&s);
        w.write(run("r1", "jetson", NOW_MS)).await.unwrap();
        w.write(status("r1", 1, RunStatus::Running, NOW_MS + 10))
            .await
            .unwrap();
        w.write(epoch("r1", 2, 1)).await.unwrap();
        w.write(status("r1", 3, RunStatus::Completed, NOW_MS + 99))
            .await
            .unwrap();
        let cmd = CommandRecord {
            id: 7,
            who: "dashboard".into(),
            when_ms: NOW_MS + 20,
            what: r#"{"type":"CHANGE_LEARNING_RATE","lr":"0.01"}"#.into(),
            delivered_ms: None,
            applied_ms: None,
        };
        w.write(Write::Command {
            run: "r1".into(),
            record: cmd.clone(),
        })
        .await
        .unwrap();
        w.write(Write::CommandDelivered {
            run: "r1".into(),
            id: 7,
            at_ms: NOW_MS + 21,
        })
        .await
        .unwrap();
        w.write(Write::CommandApplied {
            run: "r1".into(),
            id: 7,
            at_ms: NOW_MS + 25,
        })
        .await
        .unwrap();
        let e = w
            .write(Write::CommandApplied {
                run: "r1".into(),
                id: 8,
                at_ms: NOW_MS,
            })
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::UnknownCommand { id: 8, .. }), "{e}");
        let sample = PerfSample {
            wall_ms: NOW_MS + 1000,
            fps: Some(59.5),
            batch_ms: Some(16.8),
            cpu_percent: Some(140.0),
            ram_mb: Some(812.0),
            gpu_percent: None,
            gpu_mem_mb: None,
            gpu_clock_mhz: Some(0.0),
        };
        w.write(Write::Perf {
            run: "r1".into(),
            samples: vec![sample.clone()],
        })
        .await
        .unwrap();
        let e = w
            .write(Write::Points {
                run: "r1".into(),
                first_seq: 1,
                points: vec![Point {
                    key: "loss".into(),
                    step: 1,
                    wall_ms: 0,
                    value: f64::NAN,
                }],
            })
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("loss") && e.to_string().contains("NaN"),
            "{e}"
        );
        stop.cancel();
        task.await.unwrap();

        let st = s.statuses("r1").await.unwrap();
        assert_eq!(
            st.iter().map(|s| (s.seq, s.status)).collect::<Vec<_>>(),
            vec![(1, RunStatus::Running), (3, RunStatus::Completed)]
        );
        let ep = s.epochs("r1").await.unwrap();
        assert_eq!(ep.len(), 1);
        assert_eq!(ep[0].metrics["val_acc"], 0.9);
        let cmds = s.commands("r1").await.unwrap();
        assert_eq!(
            cmds,
            vec![CommandRecord {
                delivered_ms: Some(NOW_MS + 21),
                applied_ms: Some(NOW_MS + 25),
                ..cmd
            }]
        );
        // Absent stays absent; a measured 0 stays 0.
        assert_eq!(
            s.perf("r1", NOW_MS, NOW_MS + 2000).await.unwrap(),
            vec![sample]
        );
        let r = s.run("r1").await.unwrap().unwrap();
        assert_eq!(r.status, RunStatus::Completed);
        assert_eq!(
            (r.started_ms, r.ended_ms),
            (Some(NOW_MS + 10), Some(NOW_MS + 99))
        );
        assert_eq!(r.last_event_seq, 3);
    }
}

// ---- the writer's contract, on SQLite (backend-independent) -----------

/// A write's commit is reported only once `apply` (the transaction) has
/// returned, and then a fresh connection sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_reports_a_commit_only_after_the_transaction_committed() {
    let f = Fixture::sqlite();
    let inner = f.open().await;
    let (entered_tx, mut entered) = tokio::sync::mpsc::channel(1);
    let (release, release_rx) = tokio::sync::mpsc::channel(1);
    let gated: Arc<dyn Store> = Arc::new(Gated {
        inner,
        entered: entered_tx,
        release: tokio::sync::Mutex::new(release_rx),
        fail: false,
    });
    let (w, task, stop) = writer(&gated);
    let mut pending = w.submit(run("r1", "d", NOW_MS)).await.unwrap();
    tokio::time::timeout(util::TEST_TIMEOUT, entered.recv())
        .await
        .expect("apply called");
    assert!(
        (&mut pending).now_or_never().is_none(),
        "not reported before apply returns"
    );
    release.send(()).await.unwrap();
    let applied = tokio::time::timeout(util::TEST_TIMEOUT, pending)
        .await
        .expect("reported")
        .unwrap();
    assert_eq!(
        applied,
        Applied {
            stored: 1,
            skipped: 0
        }
    );
    let other = f.open().await;
    assert!(
        other.run("r1").await.unwrap().is_some(),
        "visible to another connection"
    );
    stop.cancel();
    task.await.unwrap();
}

/// A failed transaction is reported to every write of its group as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_reports_a_failed_commit_to_every_write_of_the_group() {
    let f = Fixture::sqlite();
    let inner = f.open().await;
    let (entered, _e) = tokio::sync::mpsc::channel(1);
    let (_r, release) = tokio::sync::mpsc::channel(1);
    let failing: Arc<dyn Store> = Arc::new(Gated {
        inner: inner.clone(),
        entered,
        release: tokio::sync::Mutex::new(release),
        fail: true,
    });
    let stop = CancellationToken::new();
    let config = WriterConfig {
        // Long enough that both writes share one group.
        linger: Duration::from_secs(5),
        max_rows: 2,
        queue: 8,
        ..WriterConfig::default()
    };
    let (w, task) = Writer::spawn(failing, config, stop.clone());
    let a = w.submit(run("r1", "d", NOW_MS)).await.unwrap();
    let b = w.submit(run("r2", "d", NOW_MS)).await.unwrap();
    for p in [a, b] {
        let e = tokio::time::timeout(util::TEST_TIMEOUT, p)
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::GroupCommit { writes: 2, .. })
                && e.to_string().contains("disk full"),
            "{e}"
        );
    }
    assert!(inner.run("r1").await.unwrap().is_none());
    stop.cancel();
    task.await.unwrap();
}

/// Writes queued when the writer is told to stop still commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_commits_what_was_queued_before_shutdown() {
    let f = Fixture::sqlite();
    let s = f.open().await;
    let stop = CancellationToken::new();
    let config = WriterConfig {
        linger: Duration::from_secs(30),
        max_rows: 1_000_000,
        queue: 64,
        ..WriterConfig::default()
    };
    let (w, task) = Writer::spawn(s.clone(), config, stop.clone());
    let mut pending = vec![w.submit(run("r1", "d", NOW_MS)).await.unwrap()];
    for i in 0..10 {
        pending.push(
            w.submit(points("r1", "loss", i * 10 + 1, 10))
                .await
                .unwrap(),
        );
    }
    stop.cancel();
    for p in pending {
        tokio::time::timeout(util::TEST_TIMEOUT, p)
            .await
            .unwrap()
            .unwrap();
    }
    task.await.unwrap();
    assert_eq!(s.run("r1").await.unwrap().unwrap().points, 100);
    assert!(matches!(
        w.submit(run("r2", "d", NOW_MS)).await.err(),
        Some(StoreError::WriterStopped)
    ));
}

/// A PostgreSQL restart (here: the store's connections cut by the server)
/// used to leave the store failing every write and read until trainwatch
/// itself restarted. It reconnects: the write that meets the cut connection
/// fails (and is resent by the agent), the next ones work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_reconnects_after_its_connections_are_cut() {
    let Some(f) =
        Fixture::postgres("postgres_store_reconnects_after_its_connections_are_cut").await
    else {
        return;
    };
    let s = f.open().await;
    apply_ok(
        &*s,
        vec![run("r1", "d", NOW_MS), points("r1", "loss", 1, 10)],
    )
    .await;
    f.behind_its_back(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .await;
    // A failed write is not applied: it is resent with the same numbers.
    let mut stored = false;
    for _ in 0..3 {
        if let Ok(outcomes) = s.apply(vec![points("r1", "loss", 11, 10)]).await {
            assert!(outcomes.iter().all(|o| o.is_ok()), "{outcomes:?}");
            stored = true;
            break;
        }
    }
    assert!(stored, "no write succeeded after the connections were cut");
    apply_ok(&*s, vec![points("r1", "loss", 21, 10)]).await;
    // Reads come back too (the reader's connection was cut as well).
    let mut summary = None;
    for _ in 0..3 {
        if let Ok(r) = s.run("r1").await {
            summary = r;
            break;
        }
    }
    assert_eq!(summary.expect("the run reads back").points, 30);
}
