//! The live dashboard in a real browser: Debian's chromium driven by
//! playwright-core (tests/browser/dashboard.mjs) against the real server,
//! fed over real gRPC by the test client. Needs `/usr/bin/chromium` (or
//! `TRAINWATCH_CHROMIUM`) and `npm ci` in tests/browser — scripts/test.sh
//! does the latter, .ci/run installs the former.
//!
//! `TRAINWATCH_SCREENSHOT=docs/dashboard.png ./scripts/test.sh --test dashboard`
//! also saves the session view as the README's picture.

mod util;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use trainwatch::config::ServerSettings;
use trainwatch::proto::{
    self, control_command::CommandType, metrics_request::Payload, metrics_response, BatchData,
    ControlCommand, EpochData, Heartbeat, ImageData, PerformanceData, Prediction, ResourceUsage,
    SessionInfo, StatusUpdate, TrainingConfig, TrainingStatus,
};
use trainwatch::server::{RunningServer, Server};
use util::browser::Browser;
use util::grpc::{self, request, Stream};
use util::{repo_root, TEST_TIMEOUT};

/// The live test measures latency: the browser tests and the heavy push
/// tests run one at a time, so they do not share the CI machine's two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Longest a whole browser script may run (chromium start-up included).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);

const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
const BATCHES_PER_EPOCH: u32 = 50;
/// Frames fed while the session view is open: ~4 s at 50 frames/s, enough
/// samples for a p99.
const FRAMES: u32 = 200;
const TILES: usize = 16;

fn training_config() -> TrainingConfig {
    TrainingConfig {
        total_epochs: 5,
        batches_per_epoch: BATCHES_PER_EPOCH,
        batch_size: 64,
        model_name: "resnet18".into(),
        dataset_name: "cifar10".into(),
        class_names: CLASSES.iter().map(|s| s.to_string()).collect(),
        run_name: String::new(),
    }
}

/// What frame `k` publishes for tile `i`: (predicted, confidence, truth).
/// About three in four are right; the rest name the wrong class.
fn label(k: u32, i: usize) -> (i32, f32, i32) {
    let truth = (i % 10) as i32;
    let pred = if (i as u32 + k).is_multiple_of(4) {
        (truth + 1 + (k % 9) as i32) % 10
    } else {
        truth
    };
    let conf = 0.40 + ((i as u32 * 7 + k * 3) % 59) as f32 / 100.0;
    (pred, conf, truth)
}

fn loss(k: u32) -> f32 {
    2.3 * (-(k as f32) / 80.0).exp() + 0.05 * ((k % 7) as f32 / 7.0)
}

/// A 32x32 JPEG per tile, coloured by its true class (the screenshot
/// should show something like a dataset's samples).
fn tile_images() -> Vec<bytes::Bytes> {
    (0..TILES)
        .map(|i| {
            let c = (i % 10) as f32;
            let (w, h) = (32u16, 32u16);
            let mut px = Vec::with_capacity(32 * 32 * 3);
            for y in 0..h {
                for x in 0..w {
                    let (dx, dy) = (x as f32 - 15.5, y as f32 - 15.5);
                    let inside = if i % 2 == 0 {
                        dx * dx + dy * dy < 90.0 + 6.0 * c
                    } else {
                        dx.abs() < 8.0 + c / 2.0 && dy.abs() < 8.0 + c / 2.0
                    };
                    let hue = c / 10.0 * std::f32::consts::TAU;
                    let v = |phase: f32| ((hue + phase).sin() * 0.5 + 0.5) * 200.0 + 40.0;
                    if inside {
                        px.extend([v(0.0) as u8, v(2.1) as u8, v(4.2) as u8]);
                    } else {
                        let g = (x + y) as u8 * 2 + 30;
                        px.extend([g, g, g / 2 + 40]);
                    }
                }
            }
            let mut out = Vec::new();
            jpeg_encoder::Encoder::new(&mut out, 90)
                .encode(&px, w, h, jpeg_encoder::ColorType::Rgb)
                .unwrap();
            out.into()
        })
        .collect()
}

fn frame(k: u32, images: &[bytes::Bytes]) -> BatchData {
    BatchData {
        epoch: k / BATCHES_PER_EPOCH,
        batch_idx: k % BATCHES_PER_EPOCH,
        images: images
            .iter()
            .map(|b| ImageData {
                image_bytes: b.clone(),
            })
            .collect(),
        predictions: (0..TILES)
            .map(|i| {
                let (p, c, _) = label(k, i);
                Prediction {
                    predicted_class: p,
                    confidence: c,
                }
            })
            .collect(),
        ground_truth: (0..TILES).map(|i| label(k, i).2).collect(),
        batch_loss: loss(k),
    }
}

fn performance(k: u32) -> PerformanceData {
    let left = (5 * BATCHES_PER_EPOCH - k) as f32;
    PerformanceData {
        time_per_batch_ms: 20.0,
        total_time_for_epoch_sec: 1.0,
        estimated_time_remaining_sec: left / 50.0,
        current_fps: 48.0 + (k % 5) as f32,
        average_fps: 50.0,
        resource_usage: Some(ResourceUsage {
            cpu_percent: 87.5,
            memory_mb: 2048.0,
            gpu_percent: 63.0,
            gpu_memory_mb: 3100.0,
            ..Default::default()
        }),
        timestamp_ms: proto::now_ms(),
        ..Default::default()
    }
}

fn status(s: TrainingStatus, message: &str) -> Payload {
    Payload::StatusUpdate(StatusUpdate {
        status: s as i32,
        message: message.into(),
        config: None,
        timestamp_ms: proto::now_ms(),
    })
}

/// A session registered and streaming; non-ack responses (commands,
/// errors) arrive on `responses`.
struct Trainer {
    id: String,
    tx: mpsc::Sender<proto::MetricsRequest>,
    responses: mpsc::UnboundedReceiver<metrics_response::Payload>,
    seq: u64,
}

impl Trainer {
    async fn start(grpc: SocketAddr, id: &str) -> Trainer {
        let mut c = grpc::connect_plain(grpc).await.unwrap();
        let r = c
            .register_training_session(SessionInfo {
                session_id: id.into(),
                client_name: "trainwatch-agent".into(),
                client_version: "0.1.0".into(),
                config: Some(training_config()),
                timestamp_ms: proto::now_ms(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.success, "{}", r.message);
        let mut s = Stream::open(&mut c).await;
        let tx = s.sender();
        let (out, responses) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let _client = c;
            while let Some(r) = s.next_within(Duration::from_secs(3600)).await {
                match r.payload {
                    Some(metrics_response::Payload::Ack(_)) | None => {}
                    Some(p) => {
                        if out.send(p).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut t = Trainer {
            id: id.into(),
            tx,
            responses,
            seq: 0,
        };
        t.event(status(TrainingStatus::Running, "started")).await;
        t
    }

    async fn send(&self, p: Payload) {
        self.tx.send(request(&self.id, p)).await.unwrap();
    }

    /// A lossless event, numbered.
    async fn event(&mut self, p: Payload) {
        self.seq += 1;
        let mut r = request(&self.id, p);
        r.event_seq = self.seq;
        self.tx.send(r).await.unwrap();
    }

    /// The next control command; fails on an error response, a failure of
    /// the browser script, or timeout.
    async fn command(&mut self, browser: &mut Browser) -> ControlCommand {
        let p = tokio::time::timeout(SCRIPT_TIMEOUT, async {
            tokio::select! {
                p = self.responses.recv() => p.expect("stream reader ended"),
                e = browser.expect("no such key") => panic!("browser: {e}"),
            }
        })
        .await
        .expect("no control command reached the stream");
        match p {
            metrics_response::Payload::Command(c) => c,
            other => panic!("expected a control command, got {other:?}"),
        }
    }
}

async fn start(http_listen: &str, token: Option<&str>) -> RunningServer {
    let mut s = ServerSettings::local_insecure();
    s.http_listen = http_listen.parse().unwrap();
    s.http_token = token.map(String::from);
    Server::start(&s).await.expect("server starts")
}

/// Where a page's screenshot goes when `TRAINWATCH_SCREENSHOTS` names a
/// directory (relative to the repo): how docs/*.png are made.
fn screenshot(name: &str) -> Value {
    match std::env::var_os("TRAINWATCH_SCREENSHOTS") {
        Some(d) => repo_root().join(d).join(name).to_str().unwrap().into(),
        None => Value::Null,
    }
}

/// A server on `place`'s SQLite store.
async fn server_on(place: &util::TempStore) -> RunningServer {
    let mut s = ServerSettings::local_insecure();
    s.store.place = Some(place.place());
    Server::start(&s).await.expect("server starts")
}

/// Writes `writes` into `place`'s store as an earlier server would have,
/// each accepted.
async fn write_store(place: &util::TempStore, writes: Vec<trainwatch::server::store::Write>) {
    use trainwatch::server::store::{self, StoreOptions};
    let s = store::open(&place.place(), StoreOptions::default())
        .await
        .unwrap();
    for r in s.apply(writes).await.unwrap() {
        r.unwrap();
    }
}

/// Every request the page made went to `server` (uPlot is served by it).
fn assert_only_from(server: &RunningServer, requests: &Value) {
    let base = url(server);
    for u in requests.as_array().unwrap() {
        assert!(u.as_str().unwrap().starts_with(&base), "{u}");
    }
}

/// At a phone's width the page did not scroll sideways.
fn assert_fits_a_phone(r: &Value) {
    assert!(
        r["phone_overflow"].as_i64() <= Some(0),
        "page wider than a phone: {}",
        r["phone_overflow"]
    );
}

fn url(server: &RunningServer) -> String {
    // Bound to 0.0.0.0 or 127.0.0.1: the browser goes through loopback.
    format!("http://127.0.0.1:{}", server.http_addr.port())
}

fn texts(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_session_view_shows_what_was_published_and_controls_the_run() {
    let _one = SERIAL.lock().await;
    let server = start("127.0.0.1:0", None).await;
    let id = "jetson-01:resnet18";
    let mut trainer = Trainer::start(server.grpc_addr, id).await;
    let screenshot = std::env::var_os("TRAINWATCH_SCREENSHOT").map(|p| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            repo_root().join(p)
        }
    });
    let mut browser = Browser::start(serde_json::json!({
        "url": url(&server), "session": id, "scenario": "live", "frames": FRAMES,
        "screenshot": screenshot, "timeout_ms": SCRIPT_TIMEOUT.as_millis() as u64 - 5000,
    }));
    browser.expect("ready").await;

    // ~50 frames a second, epoch summaries and performance figures among them.
    let images = tile_images();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for k in 0..FRAMES {
        tick.tick().await;
        trainer.send(Payload::BatchData(frame(k, &images))).await;
        if k % 10 == 0 {
            trainer.send(Payload::PerformanceData(performance(k))).await;
        }
        if (k + 1) % BATCHES_PER_EPOCH == 0 {
            let e = k / BATCHES_PER_EPOCH;
            let from = e * BATCHES_PER_EPOCH;
            let avg = (from..=k).map(loss).sum::<f32>() / BATCHES_PER_EPOCH as f32;
            trainer
                .event(Payload::EpochData(EpochData {
                    epoch: e,
                    average_loss: avg,
                    average_accuracy: 0.35 + 0.12 * e as f32,
                    ..Default::default()
                }))
                .await;
        }
    }

    // Pause clicked in the page reaches the trainer's stream; the page shows
    // PAUSED once the trainer reports it.
    let pause = trainer.command(&mut browser).await;
    assert_eq!(pause.r#type(), CommandType::PauseTraining);
    // As an agent does: delivered into the segment, then applied.
    let report = |delivered: Vec<u64>, applied: u64| {
        Payload::Heartbeat(Heartbeat {
            commands_delivered: delivered,
            command_applied: applied,
            ..Default::default()
        })
    };
    trainer.send(report(vec![pause.command_id], 0)).await;
    browser.expect("delivered").await;
    trainer.send(report(vec![], pause.command_id)).await;
    trainer
        .event(status(TrainingStatus::Paused, "paused from the dashboard"))
        .await;
    // Stop, confirmed, with the grace period chosen in the page.
    let stop = trainer.command(&mut browser).await;
    assert_eq!(stop.r#type(), CommandType::StopTraining);
    assert_eq!(
        stop.parameters.get("grace_period_s").map(String::as_str),
        Some("7")
    );
    browser.expect("stopping").await;
    trainer
        .event(status(
            TrainingStatus::Completed,
            "stopped after checkpoint",
        ))
        .await;
    let r = browser.expect("result").await;

    assert!(
        r["console_errors"].as_array().unwrap().is_empty(),
        "console errors: {}",
        r["console_errors"]
    );
    assert_eq!(r["overview"]["status"], "RUNNING", "{}", r["overview"]);
    for (what, v) in r["before"].as_object().unwrap() {
        assert_eq!(v, "n/a", "{what} before any performance data");
    }
    // The 16 tiles show the last frame: decoded images, its labels.
    let last = FRAMES - 1;
    assert_eq!(r["frame"]["seq"], u64::from(FRAMES), "{}", r["frame"]);
    assert_eq!(r["frame"]["batch_idx"], last % BATCHES_PER_EPOCH);
    let tiles = r["tiles"].as_array().unwrap();
    assert_eq!(tiles.len(), TILES);
    for (i, t) in tiles.iter().enumerate() {
        let (p, c, truth) = label(last, i);
        assert!(t["natural_width"].as_u64().unwrap() > 0, "tile {i}: {t}");
        assert_eq!(t["pred"], CLASSES[p as usize], "tile {i}: {t}");
        assert_eq!(t["conf"], format!("{:.0}%", c * 100.0), "tile {i}: {t}");
        assert_eq!(
            t["truth"],
            format!("true: {}", CLASSES[truth as usize]),
            "tile {i}: {t}"
        );
        assert_eq!(t["right"], p == truth, "tile {i}: {t}");
        assert_eq!(t["mark"], if p == truth { "✓" } else { "✗" });
    }
    // Charts drew every published point; FPS and resources are shown.
    assert_eq!(r["loss_points"], u64::from(FRAMES));
    assert_eq!(r["epoch_points"], u64::from(FRAMES / BATCHES_PER_EPOCH));
    assert_eq!(r["acc_points"], u64::from(FRAMES / BATCHES_PER_EPOCH));
    for (n, ink) in r["chart_ink"].as_array().unwrap().iter().enumerate() {
        assert!(ink.as_u64().unwrap() > 100, "chart {n} drew nothing");
    }
    let fps: f64 = r["perf"]["fps"].as_str().unwrap().parse().unwrap();
    assert!(fps > 0.0, "{}", r["perf"]);
    assert_eq!(r["perf"]["gpu"], "63 %", "{}", r["perf"]);
    assert_eq!(r["perf"]["ram"], "2.0 GiB", "{}", r["perf"]);
    assert_eq!(r["perf"]["epoch"], "4 / 5");
    // Receipt of a batch by the server → its tiles painted.
    let lat = &r["latency"];
    let (p50, p99) = (lat["p50"].as_f64().unwrap(), lat["p99"].as_f64().unwrap());
    eprintln!(
        "receipt→paint over {} painted frames: p50 {p50:.1} ms, p99 {p99:.1} ms, max {:.1} ms",
        lat["count"],
        lat["max"].as_f64().unwrap()
    );
    // The latency is a figure, printed above, not a pass/fail bound: on a
    // shared 2-core machine a busy neighbour moves its p99 past any fixed
    // limit (120 ms seen with six builds beside it). What must hold is that
    // painted frames were timed and their order is sane.
    assert!(lat["count"].as_u64().unwrap() >= 20, "{lat}");
    assert!(p50 > 0.0 && p50 <= p99, "{lat}");
    // Control: applied, as the trainer reported it.
    let delivered = r["delivered"].as_str().unwrap();
    assert!(
        delivered.contains("Pause #1: delivered to the trainer at"),
        "{delivered}"
    );
    assert_eq!(r["pause"]["status"], "PAUSED");
    let log = texts(&r["pause"]["log"]).join("\n");
    assert!(log.contains("applied by the trainer"), "{log}");
    let banner = r["stop_banner"].as_str().unwrap();
    assert!(banner.contains("checkpointing"), "{banner}");
    assert_eq!(r["stop"]["status"], "COMPLETED");
    let history = texts(&r["history"]).join("\n");
    assert!(history.contains("started"), "{history}");
    server
        .shutdown(Duration::from_secs(10))
        .await
        .expect("clean shutdown");
}

async fn guarded(token: Option<&str>) -> (Value, Arc<trainwatch::server::session::Session>) {
    let _one = SERIAL.lock().await;
    // Not loopback: control needs the token, or is off without one.
    let server = start("0.0.0.0:0", token).await;
    let id = "lab-07:vit";
    let trainer = Trainer::start(server.grpc_addr, id).await;
    let mut browser = Browser::start(serde_json::json!({
        "url": url(&server), "session": id, "scenario": "guard", "token": token,
        "timeout_ms": SCRIPT_TIMEOUT.as_millis() as u64 - 5000,
    }));
    let r = browser.expect("result").await;
    let session = server.registry().get(id).unwrap();
    drop(trainer);
    server
        .shutdown(Duration::from_secs(10))
        .await
        .expect("clean shutdown");
    (r, session)
}

/// Console errors other than the browser's own note on a refused request.
fn unexpected_errors(r: &Value) -> Vec<String> {
    texts(&r["console_errors"])
        .into_iter()
        .filter(|e| {
            !(e.contains("Failed to load resource") && (e.contains("401") || e.contains("403")))
        })
        .collect()
}

/// Issue 15 item 12: with `http_token` set every GET (images included) was
/// still open. With `http_token_reads` reading needs it too; the page asks
/// for it and then shows the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_http_token_reads_reading_needs_the_token_which_the_page_asks_for() {
    let _one = SERIAL.lock().await;
    let token = "dashboard-read-token-0123456789";
    let mut s = ServerSettings::local_insecure();
    s.http_token = Some(token.into());
    s.http_token_reads = true;
    let server = Server::start(&s).await.expect("server starts");
    let id = "lab-07:secret";
    let trainer = Trainer::start(server.grpc_addr, id).await;
    let http = server.http_addr;
    // Without the token: no runs, no images, no push; the page itself loads.
    for path in [
        "/api/sessions",
        "/api/events",
        "/api/sessions/lab-07:secret/images/0",
        "/api/live?runs=lab-07:secret",
    ] {
        let (status, body) = util::http::get(http, path).await;
        assert_eq!(status, 401, "{path}: {}", String::from_utf8_lossy(&body));
    }
    for path in [
        "/",
        "/healthz",
        "/api/control",
        "/assets/app.js",
        "/runs/lab-07:secret",
        "/compare",
    ] {
        assert_eq!(util::http::get(http, path).await.0, 200, "{path}");
    }
    let bearer = format!("Bearer {token}");
    let (status, _) = util::http::request(
        http,
        "GET",
        "/api/sessions",
        &[("Authorization", &bearer)],
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let cookie = format!("other=1; trainwatch_token={token}");
    let (status, _) =
        util::http::request(http, "GET", "/api/sessions", &[("Cookie", &cookie)], b"").await;
    assert_eq!(status, 200);
    let mut browser = Browser::start(serde_json::json!({
        "url": url(&server), "session": id, "scenario": "reads", "token": token,
        "timeout_ms": SCRIPT_TIMEOUT.as_millis() as u64 - 5000,
    }));
    let r = browser.expect("result").await;
    assert!(
        r["asked"].as_str().unwrap().contains("needs the token"),
        "{r}"
    );
    assert_eq!(r["box_open"], true, "{r}");
    assert_eq!(r["live"], true, "{r}");
    drop(trainer);
    server
        .shutdown(Duration::from_secs(10))
        .await
        .expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runs_page_lists_stored_runs_pages_filters_and_follows_a_live_one() {
    let _one = SERIAL.lock().await;
    let store = util::TempStore::new();
    let server = server_on(&store).await;
    // 200 runs on two devices, registered as agents register them.
    let mut c = grpc::connect_plain(server.grpc_addr).await.unwrap();
    let id = |i: usize| {
        let device = if i.is_multiple_of(2) {
            "jetson-a"
        } else {
            "jetson-b"
        };
        format!("{device}:sweep-{i:03}:1796000000{i:03}")
    };
    // Together (each waits for its commit), then the two newest one after
    // the other, so both are on the first page whatever order the server
    // gave the rest.
    let regs = (0..198).map(|i| {
        let (mut c, id) = (c.clone(), id(i));
        async move { grpc::register(&mut c, &id).await.success }
    });
    let ok = futures_util::future::join_all(regs).await;
    assert!(ok.iter().all(|&ok| ok));
    assert!(grpc::register(&mut c, &id(198)).await.success);
    assert!(grpc::register(&mut c, &id(199)).await.success);
    let live_id = id(199);
    // Two runs logged a validation accuracy: the page shows the best of it
    // without being asked (the first val/ key), with each run's last loss.
    use trainwatch::server::store;
    let logged = |run: &str, key: &str, first_seq: u64, values: &[f64]| store::Write::Points {
        run: run.into(),
        first_seq,
        points: values
            .iter()
            .enumerate()
            .map(|(i, &value)| store::Point {
                key: key.into(),
                step: i as i64,
                wall_ms: 1_796_000_000_000 + i as i64,
                value,
            })
            .collect(),
    };
    write_store(
        &store,
        vec![
            logged(&live_id, "val/acc", 1, &[0.5, 0.875, 0.75]),
            logged(&live_id, "train/loss", 4, &[2.0, 1.25]),
            logged(&id(198), "val/acc", 1, &[0.625]),
        ],
    )
    .await;
    let mut browser = Browser::start(serde_json::json!({
        "url": url(&server), "session": live_id, "scenario": "runs", "live_id": live_id,
        "other_id": id(198),
        "screenshot": screenshot("dashboard-runs.png"),
        "timeout_ms": SCRIPT_TIMEOUT.as_millis() as u64 - 5000,
    }));
    browser.expect("listed").await;
    // The newest run starts training: its row follows without a reload.
    let stream = Stream::open(&mut c).await;
    let mut r = request(
        &live_id,
        Payload::StatusUpdate(StatusUpdate {
            status: TrainingStatus::Running as i32,
            message: "started".into(),
            ..Default::default()
        }),
    );
    r.event_seq = 1;
    stream.send(r).await;
    // And its newest batch and FPS reach the row by push.
    let batch = BatchData {
        epoch: 1,
        batch_idx: 3,
        batch_loss: 0.4321,
        ..Default::default()
    };
    stream
        .send(request(&live_id, Payload::BatchData(batch)))
        .await;
    let perf = PerformanceData {
        current_fps: 57.5,
        timestamp_ms: proto::now_ms(),
        ..Default::default()
    };
    stream
        .send(request(&live_id, Payload::PerformanceData(perf)))
        .await;
    let r = browser.expect("result").await;
    assert!(unexpected_errors(&r).is_empty(), "{}", r["console_errors"]);
    let first = texts(&r["first_page"]);
    assert_eq!(first.len(), 50);
    assert_eq!(first[0], "sweep-199", "newest first: {first:?}");
    assert!(
        r["count"].as_str().unwrap().contains("older ones follow"),
        "{}",
        r["count"]
    );
    assert_eq!(r["two_pages"], 100);
    // Registered together: the order among them is the server's.
    let sorted = |v: &Value| {
        let mut t = texts(v);
        t.sort();
        t
    };
    let filtered = sorted(&r["filtered"]);
    assert_eq!(
        filtered,
        [
            "sweep-011",
            "sweep-013",
            "sweep-015",
            "sweep-017",
            "sweep-019"
        ]
    );
    assert!(texts(&r["devices"]).iter().all(|d| d == "jetson-b"));
    assert_eq!(r["search"], "?q=sweep-01&device=jetson-b");
    assert_eq!(sorted(&r["reloaded"]), filtered, "the link shows the same");
    let by_name = texts(&r["by_name_100"]);
    let want: Vec<String> = (0..100).map(|i| format!("sweep-{i:03}")).collect();
    assert_eq!(by_name, want, "sorted by name across two pages");
    assert_eq!(texts(&r["by_name"]).len(), 50);
    assert_eq!(r["sort_url"], "?sort=name&order=asc");
    assert_eq!(r["aria"], "descending");
    let row = r["live_row"].as_str().unwrap();
    assert!(
        row.contains("sweep-199") && row.contains("running"),
        "{row}"
    );
    assert_eq!(r["best_header"], "Best val/acc");
    assert_eq!(r["metric_url"], "", "a guessed metric stays out of the URL");
    // Stored figures at load: best 0.875 (of 0.5, 0.875, 0.75), last loss
    // 1.25; then the pushed batch's loss and FPS.
    assert_eq!(
        r["stored_cells"],
        serde_json::json!(["1.2500", "0.8750", "n/a"])
    );
    assert_eq!(r["other_best"], "0.6250");
    assert_eq!(
        r["live_cells"],
        serde_json::json!(["0.4321", "0.8750", "57.5"])
    );
    // Three rows picked: a link to compare them.
    let link = r["compare_link"].as_str().unwrap();
    assert!(
        link.starts_with("/compare?runs=") && link.matches(',').count() == 2,
        "{link}"
    );
    assert!(link.contains("sweep-199"), "{link}");
    assert_eq!(r["compare_text"], "Compare 3 runs");
    assert_fits_a_phone(&r);
    server
        .shutdown(Duration::from_secs(10))
        .await
        .expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_runs_page_charts_every_scalar_and_zooms_at_full_resolution() {
    let _one = SERIAL.lock().await;
    use trainwatch::server::store::{self, Point, RunRecord, Write};
    let place = util::TempStore::new();
    // Written by an earlier server: this one never saw the run live.
    {
        let mut writes = vec![Write::Run(RunRecord {
            id: "jetson-a:sweep-long-name:1796000000000".into(),
            device: "jetson-a".into(),
            name: "sweep-long-name".into(),
            model: "resnet18".into(),
            dataset: "cifar10".into(),
            config: r#"{"batches_per_epoch": 100}"#.into(),
            created_ms: 1_796_000_000_000,
            owner: None,
        })];
        let mut seq = 1;
        // A loss of 1,000,000 points (written 100,000 at a time).
        for (key, n) in [("train/loss", 1_000_000i64), ("val/acc", 300), ("lr", 50)] {
            for start in (0..n).step_by(100_000) {
                let points: Vec<Point> = (start..n.min(start + 100_000))
                    .map(|i| Point {
                        key: key.into(),
                        step: i,
                        wall_ms: 1_796_000_000_000 + i,
                        value: 1.0 / (1.0 + i as f64),
                    })
                    .collect();
                let len = points.len() as u64;
                writes.push(Write::Points {
                    run: "jetson-a:sweep-long-name:1796000000000".into(),
                    first_seq: seq,
                    points,
                });
                seq += len;
            }
        }
        // Figures without a GPU, the run's statuses and one command.
        let run = "jetson-a:sweep-long-name:1796000000000".to_string();
        writes.push(Write::Perf {
            run: run.clone(),
            samples: (0..20)
                .map(|i| store::PerfSample {
                    wall_ms: 1_796_000_000_000 + i * 1000,
                    fps: Some(60.0 + i as f64),
                    batch_ms: Some(16.0),
                    cpu_percent: Some(50.0),
                    ram_mb: Some(900.0),
                    gpu_percent: None,
                    gpu_mem_mb: None,
                    gpu_clock_mhz: None,
                })
                .collect(),
        });
        for (seq, status, message) in [
            (1, store::RunStatus::Running, "started"),
            (2, store::RunStatus::Completed, "done"),
        ] {
            writes.push(Write::Status {
                run: run.clone(),
                record: store::StatusRecord {
                    seq,
                    wall_ms: 1_796_000_000_000 + seq as i64 * 10_000,
                    status,
                    message: message.into(),
                },
            });
        }
        writes.push(Write::Command {
            run: run.clone(),
            record: store::CommandRecord {
                id: 1,
                who: "alice".into(),
                when_ms: 1_796_000_005_000,
                what: r#"{"type":"CHANGE_LEARNING_RATE","parameters":{"learning_rate":"0.01"}}"#
                    .into(),
                delivered_ms: None,
                applied_ms: None,
            },
        });
        // Epoch 0's and epoch 1's last batches, four tiles each.
        for (epoch, step) in [(0u32, 9i64), (1, 19)] {
            writes.push(Write::Image {
                run: run.clone(),
                sample: store::ImageSample {
                    epoch,
                    step,
                    wall_ms: 1_796_000_000_000 + step * 100,
                    jpegs: (0..4).map(|i| grpc::jpeg(24 + i, 16)).collect(),
                    predictions: (0..4)
                        .map(|i| store::Prediction {
                            class: i % 2,
                            confidence: 0.75,
                        })
                        .collect(),
                    labels: vec![0, 1, 1, 1],
                },
            });
        }
        writes.push(Write::CommandDelivered {
            run: run.clone(),
            id: 1,
            at_ms: 1_796_000_005_010,
        });
        writes.push(Write::CommandApplied {
            run,
            id: 1,
            at_ms: 1_796_000_005_100,
        });
        write_store(&place, writes).await;
    }
    let server = server_on(&place).await;
    let mut browser = Browser::start(serde_json::json!({
        "url": url(&server), "session": "jetson-a:sweep-long-name:1796000000000",
        "scenario": "run", "timeout_ms": SCRIPT_TIMEOUT.as_millis() as u64 - 5000,
        "screenshot": screenshot("dashboard-run.png"),
    }));
    let r = browser.expect("result").await;
    assert!(unexpected_errors(&r).is_empty(), "{}", r["console_errors"]);
    assert_eq!(r["name"], "sweep-long-name");
    assert_eq!(
        texts(&r["groups"]),
        ["(no prefix)", "train", "val"],
        "grouped by prefix"
    );
    let c = &r["charts"];
    // Short series whole; the long one in at most 1,000 buckets.
    assert_eq!(
        c["val/acc"],
        serde_json::json!({"points": 300, "downsampled": false})
    );
    assert_eq!(c["lr"]["points"], 50);
    let loss = c["train/loss"]["points"].as_u64().unwrap();
    assert!(
        c["train/loss"]["downsampled"] == true && (500..=1000).contains(&loss),
        "{c}"
    );
    // A drag over 5% of a million steps asked for that range, still
    // downsampled; a drag over 2% of that got every point of it.
    let z = &r["zoomed_once"];
    let (from, to) = (
        z["range"][0].as_i64().unwrap(),
        z["range"][1].as_i64().unwrap(),
    );
    assert!(from > 350_000 && to < 500_000 && from < to, "{z}");
    assert_eq!(z["downsampled"], true, "{z}");
    assert!(z["requests"].as_array().unwrap().iter().any(|q| q
        .as_str()
        .unwrap()
        .contains(&format!("from={from}&to={to}"))));
    let z = &r["zoomed"];
    let (from, to) = (
        z["range"][0].as_i64().unwrap(),
        z["range"][1].as_i64().unwrap(),
    );
    assert!(from > 350_000 && to < 500_000 && to - from < 1000, "{z}");
    assert_eq!(z["downsampled"], false, "{z}");
    assert_eq!(z["points"].as_i64().unwrap(), to - from + 1, "{z}");
    let asked = z["requests"].as_array().unwrap();
    assert!(
        asked.iter().any(|q| q
            .as_str()
            .unwrap()
            .contains(&format!("from={from}&to={to}"))),
        "{z}"
    );
    // val/acc's values are 1 / (1 + step): with weight 0.9 the line is their
    // debiased moving average.
    let (w, v) = (0.9f64, |i: f64| 1.0 / (1.0 + i));
    let mut s = 0.0;
    let want: Vec<f64> = (0..3)
        .map(|i| {
            s = s * w + (1.0 - w) * v(i as f64);
            s / (1.0 - w.powi(i + 1))
        })
        .collect();
    let got: Vec<f64> = r["smoothed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-9, "{got:?} vs {want:?}");
    }
    assert_eq!(got.len(), 3);
    assert_eq!(r["smooth_url"], "?smooth=0.9");
    // Every chart by seconds since the run's first point, on a log scale.
    assert_eq!(r["keys_shown"], serde_json::json!(["lr", "val/acc"]));
    assert_eq!(r["keys_visible"], 2);
    assert!(
        r["keys_url"].as_str().unwrap().contains("keys=val%2F%2Clr"),
        "{}",
        r["keys_url"]
    );
    // Steps 100..=199 typed in: every chart that far at full resolution
    // (lr has 50 points: none there).
    for (key, c) in r["range_zoom"].as_object().unwrap() {
        let want = if key == "lr" { 0 } else { 100 };
        assert_eq!(c["points"], want, "{key}: {c}");
        assert_eq!(c["range"], serde_json::json!([100, 199]), "{key}: {c}");
        assert_eq!(c["downsampled"], false, "{key}: {c}");
    }
    assert!(
        r["range_url"].as_str().unwrap().contains("from=100&to=199"),
        "{}",
        r["range_url"]
    );
    // Epochs on x: the step over batches_per_epoch (100), steps 0..=299.
    assert_eq!(r["epoch_axis"], serde_json::json!([0, 2.99]));
    assert!(
        r["epoch_url"].as_str().unwrap().contains("x=epoch"),
        "{}",
        r["epoch_url"]
    );
    for (key, a) in r["axes"].as_object().unwrap() {
        assert_eq!(a["axis"], "relative", "{key}: {a}");
        assert_eq!(a["log"], true, "{key}: {a}");
        // The run's steps are its ms: the zoomed chart starts at its range.
        let first = if key == "train/loss" {
            from as f64 / 1000.0
        } else {
            0.0
        };
        assert_eq!(
            a["x0"], first,
            "{key}: seconds since the run's first point: {a}"
        );
    }
    assert_eq!(r["axes_url"], "?smooth=0.9&x=relative&log=1");
    // Figures it measured as charts, 20 samples each; the GPU named absent.
    assert_eq!(
        r["perf"],
        serde_json::json!({"fps": 20, "batch_ms": 20, "cpu_percent": 20, "ram_mb": 20})
    );
    let absent = r["absent"].as_str().unwrap();
    assert!(
        absent.contains("GPU %") && absent.contains("GPU clock"),
        "{absent}"
    );
    let history = texts(&r["history"]);
    assert!(
        history.len() == 2
            && history[0].contains("running")
            && history[1].contains("completed: done"),
        "{history:?}"
    );
    let commands = texts(&r["commands"]);
    assert_eq!(commands.len(), 1, "{commands:?}");
    assert!(
        commands[0].contains("#1 CHANGE_LEARNING_RATE (learning_rate=0.01) by alice")
            && !commands[0].contains("not yet"),
        "{commands:?}"
    );
    // Epoch 0's stored tiles: decoded images with predicted vs true class.
    assert_eq!(r["images"], 2);
    let tiles = r["tiles"].as_array().unwrap();
    assert_eq!(tiles.len(), 4, "{tiles:?}");
    assert_eq!(tiles[0]["width"], 24);
    assert_eq!(tiles[3]["width"], 27);
    let caps: Vec<&str> = tiles
        .iter()
        .map(|t| t["caption"].as_str().unwrap())
        .collect();
    assert!(
        caps[0].contains("class 0 75%") && caps[0].contains("true: class 0"),
        "{caps:?}"
    );
    let ok: Vec<bool> = tiles.iter().map(|t| t["ok"].as_bool().unwrap()).collect();
    assert_eq!(ok, [true, true, false, true]);
    assert!(
        r["img_at"].as_str().unwrap().contains("epoch 0, step 9"),
        "{}",
        r["img_at"]
    );
    assert_fits_a_phone(&r);
    // Nothing from anywhere but the server (uPlot is served by it).
    assert_only_from(&server, &r["requests"]);
    server
        .shutdown(Duration::from_secs(10))
        .await
        .expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_overlays_three_runs_with_a_legend_and_marks_config_differences() {
    let _one = SERIAL.lock().await;
    use trainwatch::server::store::{Point, RunRecord, Write};
    let place = util::TempStore::new();
    let ids: Vec<String> = ["cmp-a", "cmp-b", "cmp-c"]
        .iter()
        .map(|n| format!("jetson-a:{n}:1796000000000"))
        .collect();
    {
        let mut writes = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let name = format!("cmp-{}", ["a", "b", "c"][i]);
            writes.push(Write::Run(RunRecord {
                id: id.clone(),
                device: "jetson-a".into(),
                name,
                model: "resnet18".into(),
                dataset: "cifar10".into(),
                config: format!(r#"{{"batch_size": {}, "total_epochs": 3}}"#, 32 << i),
                created_ms: 1_796_000_000_000 + i as i64,
                owner: None,
            }));
            let mut keys = vec![("train/loss", 100 * (i as i64 + 1))];
            if i == 1 {
                keys.push(("val/acc", 30));
            }
            let mut seq = 1;
            for (key, n) in keys {
                writes.push(Write::Points {
                    run: id.clone(),
                    first_seq: seq,
                    points: (0..n)
                        .map(|s| Point {
                            key: key.into(),
                            step: s,
                            // Each run an hour after the one before.
                            wall_ms: 1_796_000_000_000 + i as i64 * 3_600_000 + s,
                            value: (i + 1) as f64 / (1.0 + s as f64),
                        })
                        .collect(),
                });
                seq += n as u64;
            }
        }
        write_store(&place, writes).await;
    }
    let server = server_on(&place).await;
    let mut browser = Browser::start(serde_json::json!({
        "url": url(&server), "session": ids[0], "scenario": "compare", "runs": ids,
        "screenshot": screenshot("dashboard-compare.png"),
        "timeout_ms": SCRIPT_TIMEOUT.as_millis() as u64 - 5000,
    }));
    let r = browser.expect("result").await;
    assert!(unexpected_errors(&r).is_empty(), "{}", r["console_errors"]);
    // One chart per key any run logged; each run's series as long as it is.
    assert_eq!(
        r["charts"],
        serde_json::json!({"train/loss": [100, 200, 300], "val/acc": [0, 30, 0]})
    );
    assert_eq!(
        texts(&r["legend"]),
        ["step", "cmp-a", "cmp-b", "cmp-c"],
        "the legend names each run"
    );
    assert_eq!(r["differs"], serde_json::json!(["batch_size"]));
    // Aligned by each run's own start, though they started an hour apart.
    assert_eq!(
        r["relative"],
        serde_json::json!({"axis": "relative", "first": {"train/loss": [0, 0, 0], "val/acc": [null, 0, null]}})
    );
    assert_eq!(r["keys_shown"], serde_json::json!(["val/acc"]));
    assert_eq!(r["keys_after"], serde_json::json!(["val/acc"]));
    assert!(
        r["keys_url"].as_str().unwrap().ends_with("&keys=val"),
        "{}",
        r["keys_url"]
    );
    assert_fits_a_phone(&r);
    assert_eq!(r["relative_url"], "?runs=jetson-a%3Acmp-a%3A1796000000000%2Cjetson-a%3Acmp-b%3A1796000000000%2Cjetson-a%3Acmp-c%3A1796000000000&x=relative");
    assert_only_from(&server, &r["requests"]);
    server
        .shutdown(Duration::from_secs(10))
        .await
        .expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_run_pages_follow_a_live_run_as_its_points_are_applied() {
    let _one = SERIAL.lock().await;
    use trainwatch::proto::{ScalarBatch, ScalarPoint};
    use trainwatch::server::store::{Point, RunRecord, RunStatus, StatusRecord, Write};
    let place = util::TempStore::new();
    let done = "jetson-a:finished:1796000000000".to_string();
    let points = |key: &str, steps: std::ops::Range<i64>| -> Vec<Point> {
        steps
            .map(|s| Point {
                key: key.into(),
                step: s,
                wall_ms: 1_796_000_000_000 + s,
                value: 1.0 / (1.0 + s as f64),
            })
            .collect()
    };
    write_store(
        &place,
        vec![
            Write::Run(RunRecord {
                id: done.clone(),
                device: "jetson-a".into(),
                name: "finished".into(),
                model: "resnet18".into(),
                dataset: "cifar10".into(),
                config: "{}".into(),
                created_ms: 1_796_000_000_000,
                owner: None,
            }),
            Write::Points {
                run: done.clone(),
                first_seq: 1,
                points: points("train/loss", 0..80),
            },
            Write::Status {
                run: done.clone(),
                record: StatusRecord {
                    seq: 1,
                    wall_ms: 1_796_000_000_100,
                    status: RunStatus::Completed,
                    message: "done".into(),
                },
            },
        ],
    )
    .await;
    let server = server_on(&place).await;
    let live_id = "jetson-b:live:1796000000001".to_string();
    let mut c = grpc::connect_plain(server.grpc_addr).await.unwrap();
    assert!(grpc::register(&mut c, &live_id).await.success);
    let mut stream = Stream::open(&mut c).await;
    let batch = |first_seq: u64, pts: Vec<(&str, i64)>| {
        request(
            &live_id,
            Payload::ScalarBatch(ScalarBatch {
                first_seq,
                points: pts
                    .into_iter()
                    .map(|(key, step)| ScalarPoint {
                        key: key.into(),
                        step,
                        wall_time_ms: proto::now_ms(),
                        value: 2.0 / (1.0 + step as f64),
                    })
                    .collect(),
                missed_before: 0,
            }),
        )
    };
    // 20 points stored before the page opens (acknowledged: committed).
    let ack = stream
        .call(batch(1, (0..20).map(|s| ("train/loss", s)).collect()))
        .await;
    assert!(
        matches!(ack.payload, Some(metrics_response::Payload::Ack(ref a)) if a.point_seq == 20),
        "{ack:?}"
    );
    let runs = [done.clone(), live_id.clone()];
    let mut browser = Browser::start(serde_json::json!({
        "url": url(&server), "session": live_id, "scenario": "compare_live", "runs": runs,
        "live_id": live_id,
        "timeout_ms": SCRIPT_TIMEOUT.as_millis() as u64 - 5000,
    }));
    let watching = browser.expect("watching").await;
    assert_eq!(
        watching["live"],
        serde_json::json!([live_id]),
        "only the live run is followed"
    );
    assert_eq!(
        watching["charts"],
        serde_json::json!({"train/loss": [80, 20]})
    );
    // 30 more losses and a key the run had not logged: drawn without a
    // reload, the new key as a chart of its own.
    let mut more: Vec<(&str, i64)> = (20..50).map(|s| ("train/loss", s)).collect();
    more.push(("val/acc", 49));
    stream.send(batch(21, more)).await;
    let r = browser.expect("compared").await;
    assert_eq!(
        r["charts"],
        serde_json::json!({"train/loss": [80, 50], "val/acc": [0, 1]})
    );
    assert!(r["latencies"].as_u64() >= Some(1), "{}", r["latencies"]);
    let before = browser.expect("run_watching").await;
    assert_eq!(before, serde_json::json!({"train/loss": 50, "val/acc": 1}));
    let mut more: Vec<(&str, i64)> = (50..60).map(|s| ("train/loss", s)).collect();
    more.push(("sys/gpu_temp", 59));
    stream.send(batch(52, more)).await;
    let r = browser.expect("result").await;
    assert!(unexpected_errors(&r).is_empty(), "{}", r["console_errors"]);
    assert_eq!(
        r["run_points"],
        serde_json::json!({"train/loss": 60, "val/acc": 1, "sys/gpu_temp": 1})
    );
    assert_eq!(texts(&r["run_groups"]), ["sys", "train", "val"]);
    assert_eq!(
        r["live_link"], "/sessions/jetson-b%3Alive%3A1796000000001",
        "a live run's page links its live view"
    );
    server
        .shutdown(Duration::from_secs(10))
        .await
        .expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_control_needs_the_token_which_the_page_can_supply() {
    let token = "dashboard-test-token-0123456789";
    let (r, session) = guarded(Some(token)).await;
    assert!(unexpected_errors(&r).is_empty(), "{}", r["console_errors"]);
    let refused = r["refused"].as_str().unwrap();
    assert!(
        refused.contains("refused (401)") && refused.contains("token"),
        "{refused}"
    );
    assert!(r["stored"].as_bool().unwrap());
    let accepted = r["accepted"].as_str().unwrap();
    assert!(accepted.contains("sent to the agent"), "{accepted}");
    // Only the request with the token became a command.
    assert_eq!(
        session
            .counters
            .commands_sent
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_without_a_token_control_is_refused_and_the_page_says_so() {
    let (r, session) = guarded(None).await;
    assert!(unexpected_errors(&r).is_empty(), "{}", r["console_errors"]);
    let notice = r["notice"].as_str().unwrap();
    assert!(notice.contains("Control is disabled"), "{notice}");
    let refused = r["refused"].as_str().unwrap();
    assert!(
        refused.contains("refused (403)") && refused.contains("not loopback"),
        "{refused}"
    );
    assert_eq!(
        session
            .counters
            .commands_sent
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_and_assets_are_embedded_and_locked_down() {
    let server = start("127.0.0.1:0", None).await;
    let addr = server.http_addr;
    for (path, ctype) in [
        ("/", "text/html"),
        ("/sessions/x", "text/html"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
    ] {
        let (status, head, _) = raw_get(addr, path).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            head.contains(&format!("content-type: {ctype}")),
            "{path}: {head}"
        );
        assert!(
            head.contains("content-security-policy: default-src 'none'"),
            "{path}: {head}"
        );
    }
    let (_, _, body) = raw_get(addr, "/").await;
    assert!(
        !body.contains("http://") && !body.contains("https://"),
        "page loads nothing from elsewhere"
    );
    let (status, _, body) = raw_get(addr, "/api/control").await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"mode":"open","reads":"open","store":false}"#)
    );
    let (status, _, _) = raw_get(addr, "/api/sessions/nope/events").await;
    assert_eq!(status, 404);
    let many: Vec<String> = (0..21).map(|i| format!("r{i}")).collect();
    let many = many.join(",");
    for (path, names) in [
        ("/api/live".to_string(), "0 run ids"),
        (
            "/api/live?runs=a&colour=red".to_string(),
            "colour=\\\"red\\\": unknown",
        ),
        (
            format!("/api/live?runs={many}"),
            "21 run ids, expected 1 to 20",
        ),
    ] {
        let (status, _, body) = raw_get(addr, &path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(names), "{path}: {body}");
    }
    server
        .shutdown(Duration::from_secs(10))
        .await
        .expect("clean shutdown");
}

/// GET → (status, lower-cased head, body).
async fn raw_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, head.to_ascii_lowercase(), body.to_string())
    })
    .await
    .expect("GET timed out")
}

/// Live push, seen from a plain socket: rate, coalescing, stalled viewers.
mod push {
    use super::*;

    /// Opens `path` as an event stream; returns the socket after the head.
    async fn open(addr: SocketAddr, path: &str) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        s
    }

    /// Reads events for `span`; returns the `data:` lines' JSON.
    async fn events_for(s: &mut TcpStream, span: Duration) -> Vec<Value> {
        let mut buf = Vec::new();
        let end = tokio::time::Instant::now() + span;
        let mut chunk = vec![0u8; 1 << 16];
        while let Ok(Ok(n)) = tokio::time::timeout_at(end, s.read(&mut chunk)).await {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&buf)
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str(d).ok())
            .collect()
    }

    /// The status code of an event stream opened from `from` (kept open
    /// in `keep` when it is 200).
    async fn stream_from(
        from: std::net::IpAddr,
        addr: SocketAddr,
        keep: &mut Vec<TcpStream>,
    ) -> u16 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(from, 0)).unwrap();
        let mut s = sock.connect(addr).await.unwrap();
        let req = format!(
            "GET /api/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        tokio::time::timeout(TEST_TIMEOUT, async {
            while !head.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut byte).await.unwrap();
                head.push(byte[0]);
            }
        })
        .await
        .expect("response head");
        let status = String::from_utf8_lossy(&head)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        if status == 200 {
            keep.push(s);
        }
        status
    }

    /// Issue 15 item 12: 64 idle event streams from anyone used to lock
    /// every viewer out; one client now holds at most its share.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_client_cannot_take_every_push_stream() {
        use trainwatch::server::dashboard::MAX_STREAMS_PER_CLIENT;
        let _one = SERIAL.lock().await;
        let server = Server::start(&ServerSettings::local_insecure())
            .await
            .unwrap();
        let addr = server.http_addr;
        let hog: std::net::IpAddr = [127, 0, 0, 1].into();
        let other: std::net::IpAddr = [127, 0, 0, 2].into();
        let mut open = Vec::new();
        for _ in 0..MAX_STREAMS_PER_CLIENT {
            assert_eq!(stream_from(hog, addr, &mut open).await, 200);
        }
        assert_eq!(stream_from(hog, addr, &mut open).await, 503);
        assert_eq!(
            stream_from(other, addr, &mut open).await,
            200,
            "another client still gets one"
        );
        // A closed stream gives its place back.
        open.remove(0);
        let back = util::procs::eventually("the hog's place given back", || async {
            let mut keep = Vec::new();
            (stream_from(hog, addr, &mut keep).await == 200).then_some(keep)
        })
        .await;
        drop(back);
        drop(open);
        server
            .shutdown(Duration::from_secs(10))
            .await
            .expect("clean shutdown");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_viewer_gets_at_most_max_push_hz_and_always_the_newest_frame() {
        let _one = SERIAL.lock().await;
        let mut settings = ServerSettings::local_insecure();
        settings.dashboard.max_push_hz = 10;
        settings.limits.buffer_size = 1000;
        let server = Server::start(&settings).await.unwrap();
        let trainer = Trainer::start(server.grpc_addr, "fast").await;
        let mut viewer = open(server.http_addr, "/api/sessions/fast/events").await;
        let images = tile_images();
        // 300 frames as fast as the stream takes them, during ~1 s of viewing.
        let feed = async {
            for k in 0..300 {
                trainer.send(Payload::BatchData(frame(k, &images))).await;
            }
        };
        let (_, events) = tokio::join!(feed, events_for(&mut viewer, Duration::from_millis(1500)));
        let frames: Vec<u64> = events
            .iter()
            .filter_map(|e| e.get("frame").map(|f| f["seq"].as_u64().unwrap()))
            .collect();
        // 1.5 s at 10/s, plus the first event at once.
        assert!(
            events.len() <= 17,
            "{} events in 1.5 s at max_push_hz = 10",
            events.len()
        );
        assert!(frames.windows(2).all(|w| w[0] < w[1]), "{frames:?}");
        assert_eq!(
            frames.last(),
            Some(&300),
            "the newest frame arrives: {frames:?}"
        );
        server
            .shutdown(Duration::from_secs(10))
            .await
            .expect("clean shutdown");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_viewer_slows_neither_ingest_nor_other_viewers() {
        let _one = SERIAL.lock().await;
        let mut settings = ServerSettings::local_insecure();
        settings.dashboard.max_push_hz = 240;
        let server = Server::start(&settings).await.unwrap();
        let mut trainer = Trainer::start(server.grpc_addr, "s").await;
        // Stalled viewers: they never read a byte.
        let mut stalled = Vec::new();
        for _ in 0..4 {
            stalled.push(open(server.http_addr, "/api/sessions/s/events").await);
        }
        // Big frames so the stalled sockets fill up quickly.
        let big = vec![grpc::jpeg(384, 384); TILES];
        let started = std::time::Instant::now();
        for k in 0..300 {
            trainer.send(Payload::BatchData(frame(k, &big))).await;
        }
        let session = server.registry().get("s").unwrap();
        let applied = async {
            while session
                .counters
                .batches_received
                .load(std::sync::atomic::Ordering::Relaxed)
                < 300
            {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(TEST_TIMEOUT, applied)
            .await
            .expect("ingest stalled");
        let took = started.elapsed();
        assert_eq!(
            session
                .counters
                .buffer_full
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        // A live viewer still gets the newest frame at once.
        let mut live = open(server.http_addr, "/api/sessions/s/events").await;
        let first = events_for(&mut live, Duration::from_millis(1500)).await;
        assert_eq!(first[0]["frame"]["seq"], 300, "took {took:?}");
        assert!(
            trainer.responses.try_recv().is_err(),
            "no error on the stream"
        );
        drop(stalled);
        server
            .shutdown(Duration::from_secs(10))
            .await
            .expect("clean shutdown");
    }
}

/// The whole path in a real browser: a Python trainer publishing through
/// shared memory, the real agent process, the server, the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_python_trainers_run_through_the_real_agent_and_pauses_it() {
    let _one = SERIAL.lock().await;
    let server = start("127.0.0.1:0", None).await;
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let _agent = util::procs::AgentProc::start_insecure(server.grpc_addr, shm.path(), &[]);
    let mut trainer =
        util::procs::Trainer::start(shm.path(), "e2e", &["--run-until-stopped", "--fps", "40"]);
    let http = server.http_addr;
    let id = util::procs::eventually("the run's session", || async {
        let list = util::http::get_json(http, "/api/sessions").await;
        list["sessions"][0]["id"].as_str().map(str::to_string)
    })
    .await;
    let mut browser = Browser::start(serde_json::json!({
        "url": url(&server), "session": id, "scenario": "e2e",
        "timeout_ms": SCRIPT_TIMEOUT.as_millis() as u64 - 5000,
    }));
    // The page's Pause reaches the Python trainer's `pub.commands()`.
    let cmd = tokio::task::spawn_blocking(move || {
        let c = trainer.wait_for("PAUSE from the page", |v| v["command"] == "PAUSE_TRAINING");
        (trainer, c)
    })
    .await
    .unwrap();
    let _trainer = cmd.0;
    let r = browser.expect("result").await;
    assert!(unexpected_errors(&r).is_empty(), "{r}");
    // tests/python/trainer.py labels image i with class i % 10 (CIFAR names).
    let classes = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ];
    let tiles = r["tiles"].as_array().unwrap();
    assert_eq!(tiles.len(), 16, "{r}");
    for (i, t) in tiles.iter().enumerate() {
        assert_eq!(t["natural_width"], 32, "tile {i}: {t}");
        assert!(
            t["truth"].as_str().unwrap().contains(classes[i % 10]),
            "tile {i}: {t}"
        );
        assert!(
            classes
                .iter()
                .any(|c| t["pred"].as_str().unwrap().contains(c)),
            "tile {i}: {t}"
        );
    }
    assert!(r["loss_points"].as_u64().unwrap() >= 20, "{r}");
    assert_ne!(r["fps"], "n/a");
    assert_eq!(r["pause"]["status"], "PAUSED");
    server.shutdown(Duration::from_secs(10)).await.unwrap();
}
