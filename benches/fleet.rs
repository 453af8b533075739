//! Fleet scale of the central server (issue 10, part 2): how many simulated
//! agents one `trainwatch server` process holds at 60 frames/s each, and what
//! a frame costs it, beside the reference grpcio server.
//!
//! The server runs as its own process (a fresh one per step), so its CPU
//! (utime+stime from /proc) and RSS (`VmRSS`) are its own; the load
//! generator runs in this process: N sessions, each RegisterTrainingSession
//! plus one StreamMetrics stream sending a BatchData of 16 pre-encoded
//! 32x32x3 JPEGs every 1/60 s, heartbeats at the negotiated interval, and
//! reading acks; sessions spread over connections like real agents (one
//! connection each by default). Steps grow N until a step is not held: the
//! worst session's p99 receipt latency (the server's histogram) above
//! `TW_FLEET_P99_MS`, or the server receiving under 95% of the offered rate.
//! Then, at `TW_FLEET_REF_STEPS`, ours in plaintext and the reference
//! (`ref_server.py`, grpcio, plaintext only) in turn, for the CPU ratio.
//!
//! `cargo bench --bench fleet`; env:
//! - `TW_FLEET_STEPS` (1,2,5,10,20,50,100,200,300,500,1000): sessions per step
//! - `TW_FLEET_WARMUP_S` (2), `TW_FLEET_WINDOW_S` (8): per step, after all
//!   sessions are registered and streaming
//! - `TW_FLEET_PER_CONN` (1): sessions sharing one HTTP/2 connection
//! - `TW_FLEET_FPS` (60): frames per second per session
//! - `TW_FLEET_P99_MS` (50): the latency bound of a held step
//! - `TW_FLEET_TLS` (1): 0 skips the TLS sweep
//! - `TW_BENCH_REF` (1): 0 skips ours-plaintext and the reference
//! - `TW_FLEET_REF_STEPS` (1,10,20,50)
//! - `TW_FLEET_POINTS` (10): scalar points per frame each session also
//!   sends (ScalarBatch, sequenced, acked after the store's commit), to a
//!   server that accepts them (ours; never the reference)
//! - `TW_FLEET_STORE` (1): sweep ours in plaintext with its SQLite store
//!   (a temp file, as deployed) and with `--store none`, step by step in
//!   turn until neither holds, for the store's cost in sessions held
//! - `TW_FLEET_OUT` (target/fleet.json): every figure, as JSON
//! - `TW_FLEET_PLOT` (docs/fleet.png; empty: no plot): drawn by
//!   benches/python/fleet_plot.py (matplotlib)
//! - `TW_FLEET_GEN_THREADS` (2): the generator's tokio worker threads
//! - `TW_BENCH_REF_DIR`, `TW_BENCH_PYTHON` as in agent_e2e

mod common;
#[path = "../tests/util/mod.rs"]
#[allow(unused_imports)]
mod util;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use trainwatch::proto::{
    self, acknowledgment::AckKind, metrics_request::Payload, metrics_response, BatchData,
    Heartbeat, MetricsRequest,
};
use trainwatch::tls::{self, ClientTlsFiles};

use common::{env_list, env_u64, median, percentile};
use util::grpc::Client;
use util::http::get_json;
use util::proc::{cpu_s, machine_busy_s, rss_kib, ServerProc};

/// Images per batch: the seed's batch of 16 samples.
const IMAGES: usize = 16;
/// Requests a session may have queued towards its stream; beyond it the
/// frame is dropped and counted, as the agent does under backpressure.
const QUEUE: usize = 8;
/// Send instants kept per session to match acks by batch index: 4 s at
/// 60/s, longer than any ack that still counts.
const RING: usize = 256;
/// Concurrent connection set-ups (TLS handshakes) while a step starts.
const CONNECT_PARALLEL: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
enum Kind {
    /// trainwatch server, gRPC over TLS (the default deployment).
    Tls,
    /// trainwatch server, `--insecure`, for the comparison.
    Plain,
    /// trainwatch server, `--insecure --store none` (in memory only).
    PlainNoStore,
    /// ref_server.py (grpcio, plaintext).
    Reference,
}

#[derive(Clone)]
struct Knobs {
    fps: u64,
    warmup: Duration,
    window: Duration,
    per_conn: usize,
    p99_bound_ms: f64,
    points_per_frame: u64,
}

/// Microseconds since the bench started, for send → ack round trips.
fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// A server under test, killed when dropped.
struct Sut {
    kind: Kind,
    pid: u32,
    grpc: SocketAddr,
    http: Option<SocketAddr>,
    tls: Option<ClientTlsFiles>,
    /// The reference's per-stream statistics (written when a stream ends).
    stats_dir: Option<PathBuf>,
    _proc: Proc,
}

enum Proc {
    Ours(#[allow(dead_code)] ServerProc),
    Reference(Child),
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Proc::Reference(c) = self {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_ours(kind: Kind, certs: &Path, sessions: usize) -> Sut {
    let (cert, key) = (certs.join("server.pem"), certs.join("server.key"));
    let args: Vec<&str> = match kind {
        Kind::Tls => vec![
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        Kind::PlainNoStore => vec!["--insecure", "--store", "none"],
        _ => vec!["--insecure"],
    };
    // Room for every session of the step (the default keeps 1000).
    let max = sessions.max(1000).to_string();
    let p = ServerProc::start(
        &args,
        &[
            ("TRAINWATCH_LOG", "warn"),
            ("TRAINWATCH_SERVER_MAX_SESSIONS", &max),
        ],
    );
    Sut {
        kind,
        pid: p.pid(),
        grpc: p.grpc,
        http: Some(p.http),
        tls: (kind == Kind::Tls).then(|| ClientTlsFiles {
            ca_cert: Some(certs.join("ca.pem")),
            ..Default::default()
        }),
        stats_dir: None,
        _proc: Proc::Ours(p),
    }
}

/// A scratch copy of the reference with its stubs generated (shared/ is
/// read-only).
fn reference_scratch(dir: &Path) -> Option<PathBuf> {
    let work = std::env::temp_dir().join(format!("tw-fleet-ref-{}", std::process::id()));
    std::fs::create_dir_all(&work).ok()?;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if matches!(p.extension().and_then(|x| x.to_str()), Some("py" | "proto")) {
            std::fs::copy(&p, work.join(p.file_name()?)).ok()?;
        }
    }
    let ok = Command::new(common::python())
        .args(["-m", "grpc_tools.protoc", "-I.", "--python_out=."])
        .args(["--grpc_python_out=.", "metrics.proto"])
        .current_dir(&work)
        .status()
        .ok()?
        .success();
    ok.then_some(work)
}

fn start_reference(work: &Path, sessions: usize) -> Sut {
    let stats = work.join(format!("stats-{sessions}"));
    let _ = std::fs::remove_dir_all(&stats);
    // A sync grpcio server holds a worker thread per open stream: its
    // default 10 would leave sessions beyond 10 unserved.
    let workers = (sessions + 4).max(10).to_string();
    let mut child = Command::new(common::python())
        .arg("ref_server.py")
        .args([
            "--port",
            "0",
            "--workers",
            &workers,
            "--max-lifetime-s",
            "900",
        ])
        .arg("--stats-dir")
        .arg(&stats)
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ref_server.py");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("ref_server.py READY line");
    // READY 127.0.0.1:PORT pid=PID
    let grpc = line
        .split_whitespace()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("ref_server.py said {line:?}"));
    Sut {
        kind: Kind::Reference,
        pid: child.id(),
        grpc,
        http: None,
        tls: None,
        stats_dir: Some(stats),
        _proc: Proc::Reference(child),
    }
}

/// One connection, set up as the agent sets up its own.
async fn connect(sut: &Sut) -> Result<Client, tonic::transport::Error> {
    let ep = match &sut.tls {
        Some(files) => Endpoint::from_shared(format!("https://localhost:{}", sut.grpc.port()))
            .unwrap()
            .tls_config(tls::client_config(files, "localhost").expect("client TLS"))?,
        None => Endpoint::from_shared(format!("http://{}", sut.grpc)).unwrap(),
    };
    let ch = ep
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(30))
        .connect()
        .await?;
    Ok(Client::new(ch).max_decoding_message_size(16 << 20))
}

/// The generator's counters, all sessions together; monotonic.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    dropped: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    points_sent: AtomicU64,
    /// Points the server acknowledged as committed.
    points_acked: AtomicU64,
    /// Round trips are recorded only inside the measured window.
    measuring: AtomicBool,
}

impl Counters {
    fn snapshot(&self) -> [u64; 6] {
        [
            &self.sent,
            &self.dropped,
            &self.acked,
            &self.errors,
            &self.points_sent,
            &self.points_acked,
        ]
        .map(|c| c.load(Relaxed))
    }
}

/// 16 natural-looking 32x32x3 images as JPEG (q85, as the agent encodes).
fn jpegs() -> Vec<Bytes> {
    (0..IMAGES as u64)
        .map(|seed| {
            let mut px = util::images::natural_image(32, 32, 3, seed);
            // Sensor noise, as in the reference's synthetic images: with it
            // they encode to ~1.05 KB, as the reference's cifar set does
            // (1058 B mean); without, to ~0.8 KB.
            let mut rng = util::images::Rng::new(seed + 99);
            for p in &mut px {
                *p = (*p as f32 + rng.range(-24.0, 24.0)).clamp(0.0, 255.0) as u8;
            }
            let mut out = Vec::new();
            jpeg_encoder::Encoder::new(&mut out, 85)
                .encode(&px, 32, 32, jpeg_encoder::ColorType::Rgb)
                .unwrap();
            Bytes::from(out)
        })
        .collect()
}

/// What every session of a step shares.
struct Fleet {
    batch: BatchData,
    period: Duration,
    points_per_frame: u64,
    counters: Counters,
    /// Cancelled once every session is streaming: the first frames go.
    go: CancellationToken,
    stop: CancellationToken,
}

struct SessionPlan {
    id: String,
    /// Offset of its first frame within one frame period: agents are not
    /// synchronised.
    offset: Duration,
}

/// One simulated agent session on `client`: register, stream until `stop`.
/// Returns its send → ack round trips (µs) seen inside the window, or why it
/// could not start.
async fn session(
    mut client: Client,
    plan: SessionPlan,
    fleet: Arc<Fleet>,
    ready: mpsc::Sender<()>,
) -> Result<Vec<u32>, String> {
    let reg = client
        .register_training_session(proto::SessionInfo {
            session_id: plan.id.clone(),
            client_name: "fleet-bench".into(),
            client_version: "0".into(),
            config: Some(util::grpc::config(10)),
            timestamp_ms: proto::now_ms(),
        })
        .await
        .map_err(|s| format!("register {}: {s}", plan.id))?
        .into_inner();
    if !reg.success {
        return Err(format!("register {}: {}", plan.id, reg.message));
    }
    let points = if reg.accepts_scalars {
        fleet.points_per_frame
    } else {
        0
    };
    let hb_ms = reg
        .server_config
        .map(|c| c.heartbeat_interval_ms)
        .unwrap_or(2000)
        .max(100);
    let (tx, rx) = mpsc::channel(QUEUE);
    let sent_at: Arc<[AtomicU64; RING]> = Arc::new(std::array::from_fn(|_| AtomicU64::new(0)));
    // The reader owns the call: a grpcio server may send its response
    // headers only with its first answer, so sending must not wait for them.
    let reader = {
        let (fleet, sent_at) = (fleet.clone(), sent_at.clone());
        tokio::spawn(async move {
            let counters = &fleet.counters;
            let mut rtt = Vec::new();
            let mut points_acked = 0u64;
            let mut inbound = match client.stream_metrics(ReceiverStream::new(rx)).await {
                Ok(r) => r.into_inner(),
                Err(s) => return Err(format!("stream_metrics: {s}")),
            };
            loop {
                let m = tokio::select! {
                    _ = fleet.stop.cancelled() => break,
                    m = inbound.message() => m,
                };
                let Ok(Some(resp)) = m else { break };
                match resp.payload {
                    Some(metrics_response::Payload::Ack(a)) if a.kind == AckKind::Batch as i32 => {
                        counters.acked.fetch_add(1, Relaxed);
                        if counters.measuring.load(Relaxed) {
                            let t = sent_at[a.batch_idx as usize % RING].load(Relaxed);
                            rtt.push(now_us().saturating_sub(t) as u32);
                        }
                    }
                    Some(metrics_response::Payload::Ack(a))
                        if a.kind == AckKind::Scalars as i32 && a.point_seq > points_acked =>
                    {
                        counters
                            .points_acked
                            .fetch_add(a.point_seq - points_acked, Relaxed);
                        points_acked = a.point_seq;
                    }
                    Some(metrics_response::Payload::Error(_)) => {
                        counters.errors.fetch_add(1, Relaxed);
                    }
                    _ => {}
                }
            }
            Ok(rtt)
        })
    };
    let _ = ready.send(()).await;
    drop(ready);
    fleet.go.cancelled().await;
    let start = tokio::time::Instant::now() + plan.offset;
    let mut frames = tokio::time::interval_at(start, fleet.period);
    // A late generator skips frames rather than bursting: what it offered
    // is then visibly short of N x fps.
    frames.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut beats = tokio::time::interval_at(start, Duration::from_millis(hb_ms.into()));
    let (mut k, mut seq, mut next_point) = (0u64, 0u32, 1u64);
    let request = |payload| MetricsRequest {
        session_id: plan.id.clone(),
        timestamp_ms: proto::now_ms(),
        payload: Some(payload),
        event_seq: 0,
        events_missed_before: 0,
    };
    loop {
        let req = tokio::select! {
            _ = fleet.stop.cancelled() => break,
            _ = frames.tick() => {
                let mut b = fleet.batch.clone();
                // batch_idx cycles within an epoch as a trainer's does.
                b.epoch = (k / 1000) as u32;
                b.batch_idx = (k % 1000) as u32;
                sent_at[b.batch_idx as usize % RING].store(now_us(), Relaxed);
                k += 1;
                request(Payload::BatchData(b))
            }
            _ = beats.tick() => {
                seq += 1;
                request(Payload::Heartbeat(Heartbeat { timestamp_ms: proto::now_ms(), sequence_number: seq, ..Default::default() }))
            }
        };
        let is_batch = matches!(req.payload, Some(Payload::BatchData(_)));
        let counters = &fleet.counters;
        if is_batch && points > 0 {
            // The frame's step logged as named scalars, as a trainer's
            // pub.log would; a full queue holds them back (never dropped:
            // they are lossless), as the agent's window does.
            let step = k as i64;
            let batch = proto::ScalarBatch {
                first_seq: next_point,
                points: (0..points)
                    .map(|i| proto::ScalarPoint {
                        key: format!("m/k{i:02}"),
                        step,
                        wall_time_ms: proto::now_ms(),
                        value: step as f64 + i as f64 / 8.0,
                    })
                    .collect(),
                missed_before: 0,
            };
            if tx.send(request(Payload::ScalarBatch(batch))).await.is_err() {
                break;
            }
            next_point += points;
            counters.points_sent.fetch_add(points, Relaxed);
        }
        match tx.try_send(req) {
            Ok(()) if is_batch => {
                counters.sent.fetch_add(1, Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) if is_batch => {
                counters.dropped.fetch_add(1, Relaxed);
            }
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => break,
        }
    }
    // Ending the request stream ends the call (the reference writes its
    // statistics then).
    drop(tx);
    match tokio::time::timeout(Duration::from_secs(10), reader).await {
        Ok(Ok(r)) => r,
        _ => Err("reader did not end".into()),
    }
}

#[derive(Debug, Default, Clone, Serialize)]
struct Step {
    kind: Option<Kind>,
    sessions: usize,
    connections: usize,
    offered_fps: f64,
    /// Frames the generator put on its streams per second.
    sent_fps: f64,
    /// Scalar points sent and acknowledged (committed) per second.
    points_sent_per_s: f64,
    points_acked_per_s: f64,
    /// Frames the server counted (ours: batches_received; reference: acks).
    received_fps: f64,
    acked_fps: f64,
    dropped_at_client: u64,
    errors: u64,
    /// Server receipt latency (its histogram; the reference's own list),
    /// ms: median over sessions of p50 and p99, and the worst session's p99.
    p50_ms: f64,
    p99_median_ms: f64,
    p99_max_ms: f64,
    /// Send → ack at the generator, all frames of the window pooled, ms.
    rtt_p50_ms: f64,
    rtt_p99_ms: f64,
    server_cpu_s_per_1000: f64,
    /// Server CPU over the window in cores (1.0 = one core busy).
    server_cores: f64,
    generator_cpu_s_per_1000: f64,
    generator_cores: f64,
    /// Everything else on the machine (other users' builds) in cores.
    other_cores: f64,
    rss_base_mib: f64,
    rss_mib: f64,
    rss_per_session_kib: f64,
    failed_sessions: usize,
    held: bool,
}

/// Sum of `batches_received` over every session of our server.
async fn ours_received(http: SocketAddr) -> (u64, Value) {
    let v = get_json(http, "/api/sessions").await;
    let n = v["sessions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["batches_received"].as_u64())
                .sum()
        })
        .unwrap_or(0);
    (n, v)
}

/// (p50s, p99s) per session in ms; a p99 in the overflow bucket (> 1 s) is
/// infinite.
fn ours_latencies(list: &Value) -> (Vec<f64>, Vec<f64>) {
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    for s in list["sessions"].as_array().into_iter().flatten() {
        let l = &s["receipt_latency_ms"];
        if l["count"].as_u64().unwrap_or(0) == 0 {
            continue;
        }
        p50.push(l["p50"].as_f64().unwrap_or(f64::INFINITY));
        p99.push(l["p99"].as_f64().unwrap_or(f64::INFINITY));
    }
    (p50, p99)
}

/// The reference's per-stream files, once all `n` are written.
async fn reference_latencies(dir: &Path, n: usize) -> (Vec<f64>, Vec<f64>) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let files: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        if files.len() >= n || Instant::now() > deadline {
            let mut p50 = Vec::new();
            let mut p99 = Vec::new();
            for f in files {
                let v: Value = serde_json::from_slice(&std::fs::read(f).unwrap_or_default())
                    .unwrap_or(Value::Null);
                p50.extend(v["latency_ms_p50"].as_f64());
                p99.extend(v["latency_ms_p99"].as_f64());
            }
            return (p50, p99);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run_step(sut: Sut, n: usize, k: &Knobs, images: &[Bytes]) -> Step {
    let mut step = Step {
        kind: Some(sut.kind),
        sessions: n,
        offered_fps: (n as u64 * k.fps) as f64,
        ..Default::default()
    };
    // The 0-session baseline, once the server has settled.
    tokio::time::sleep(Duration::from_millis(300)).await;
    step.rss_base_mib = rss_kib(sut.pid) as f64 / 1024.0;

    let period = Duration::from_secs_f64(1.0 / k.fps as f64);
    let fleet = Arc::new(Fleet {
        batch: util::grpc::batch_of(images.to_vec(), 0, 0),
        period,
        points_per_frame: k.points_per_frame,
        counters: Counters::default(),
        go: CancellationToken::new(),
        stop: CancellationToken::new(),
    });
    let counters = &fleet.counters;
    let (ready_tx, mut ready_rx) = mpsc::channel(n.max(1));
    let mut sessions = JoinSet::new();
    let conns = n.div_ceil(k.per_conn);
    step.connections = conns;
    let sem = Arc::new(tokio::sync::Semaphore::new(CONNECT_PARALLEL));
    let sut = Arc::new(sut);
    let mut connecting = JoinSet::new();
    for c in 0..conns {
        let (sut, sem) = (sut.clone(), sem.clone());
        connecting.spawn(async move {
            let _permit = sem.acquire().await;
            (c, connect(&sut).await)
        });
    }
    while let Some(r) = connecting.join_next().await {
        let (c, client) = r.unwrap();
        let client = match client {
            Ok(cl) => cl,
            Err(e) => {
                eprintln!("connection {c}: {e}");
                step.failed_sessions += k.per_conn.min(n - c * k.per_conn);
                continue;
            }
        };
        for i in c * k.per_conn..((c + 1) * k.per_conn).min(n) {
            let plan = SessionPlan {
                id: format!("fleet-{n}-{i}"),
                offset: period.mul_f64(i as f64 / n as f64),
            };
            sessions.spawn(session(
                client.clone(),
                plan,
                fleet.clone(),
                ready_tx.clone(),
            ));
        }
    }
    drop(ready_tx);
    // Every session registered and its stream open before the first frame:
    // the connection storm is not part of the measurement.
    let mut ready = 0;
    while ready_rx.recv().await.is_some() {
        ready += 1;
    }
    step.failed_sessions = n - ready;
    fleet.go.cancel();
    tokio::time::sleep(k.warmup).await;

    let (recv0, _) = match sut.http {
        Some(h) => ours_received(h).await,
        None => (0, Value::Null),
    };
    let me = std::process::id();
    let (s0, g0, m0, c0) = (
        cpu_s(sut.pid),
        cpu_s(me),
        machine_busy_s(),
        counters.snapshot(),
    );
    let t0 = Instant::now();
    counters.measuring.store(true, Relaxed);
    let mut rss_peak = 0.0f64;
    while t0.elapsed() < k.window {
        tokio::time::sleep(Duration::from_millis(500).min(k.window)).await;
        rss_peak = rss_peak.max(rss_kib(sut.pid) as f64 / 1024.0);
    }
    counters.measuring.store(false, Relaxed);
    let (s1, g1, m1, c1) = (
        cpu_s(sut.pid),
        cpu_s(me),
        machine_busy_s(),
        counters.snapshot(),
    );
    let secs = t0.elapsed().as_secs_f64();
    let (recv1, list) = match sut.http {
        Some(h) => ours_received(h).await,
        None => (0, Value::Null),
    };

    let acked = (c1[2] - c0[2]) as f64;
    let received = if sut.http.is_some() {
        (recv1 - recv0) as f64
    } else {
        // The reference acknowledges every batch as it reads it.
        acked
    };
    step.sent_fps = (c1[0] - c0[0]) as f64 / secs;
    step.received_fps = received / secs;
    step.acked_fps = acked / secs;
    step.dropped_at_client = c1[1] - c0[1];
    step.errors = c1[3] - c0[3];
    step.points_sent_per_s = (c1[4] - c0[4]) as f64 / secs;
    step.points_acked_per_s = (c1[5] - c0[5]) as f64 / secs;
    let frames = received.max(1.0);
    step.server_cpu_s_per_1000 = (s1 - s0) / frames * 1000.0;
    step.server_cores = (s1 - s0) / secs;
    step.generator_cpu_s_per_1000 = (g1 - g0) / frames * 1000.0;
    step.generator_cores = (g1 - g0) / secs;
    step.other_cores = ((m1 - m0) - (s1 - s0) - (g1 - g0)) / secs;
    step.rss_mib = rss_peak;
    step.rss_per_session_kib = (rss_peak - step.rss_base_mib) * 1024.0 / n as f64;

    fleet.stop.cancel();
    let mut rtt = Vec::new();
    while let Some(r) = sessions.join_next().await {
        match r {
            Ok(Ok(v)) => rtt.extend(v.into_iter().map(|us| us as f64 / 1000.0)),
            Ok(Err(e)) => eprintln!("session: {e}"),
            Err(e) => eprintln!("session task: {e}"),
        }
    }
    step.rtt_p50_ms = percentile(&mut rtt, 0.5);
    step.rtt_p99_ms = percentile(&mut rtt, 0.99);
    let (p50, p99) = match &sut.stats_dir {
        Some(dir) => reference_latencies(dir, n - step.failed_sessions).await,
        None => ours_latencies(&list),
    };
    step.p50_ms = median(p50);
    step.p99_median_ms = median(p99.clone());
    step.p99_max_ms = p99.iter().cloned().fold(f64::NAN, f64::max);
    step.held = step.failed_sessions == 0
        && step.received_fps >= 0.95 * step.offered_fps
        && step.p99_max_ms <= k.p99_bound_ms;
    step
}

fn header() {
    println!(
        "| server | sessions | offered fps | sent fps | received fps | p50 ms | p99 ms (median / worst session) | ack RTT p50 / p99 ms | server CPU s / 1000 frames | server cores | generator cores | others' cores | RSS MiB (0 sessions) | RSS KiB / session | held |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
}

fn row(s: &Step) {
    println!(
        "| {:?} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.3} | {:.2} | {:.2} | {:.2} | {:.1} ({:.1}) | {:.0} | {} |",
        s.kind.unwrap(),
        s.sessions,
        s.offered_fps,
        s.sent_fps,
        s.received_fps,
        s.p50_ms,
        s.p99_median_ms,
        s.p99_max_ms,
        s.rtt_p50_ms,
        s.rtt_p99_ms,
        s.server_cpu_s_per_1000,
        s.server_cores,
        s.generator_cores,
        s.other_cores,
        s.rss_mib,
        s.rss_base_mib,
        s.rss_per_session_kib,
        if s.held { "yes" } else { "**no**" },
    );
}

fn main() {
    let k = Knobs {
        fps: env_u64("TW_FLEET_FPS", 60).max(1),
        warmup: Duration::from_secs(env_u64("TW_FLEET_WARMUP_S", 2)),
        window: Duration::from_secs(env_u64("TW_FLEET_WINDOW_S", 8).max(1)),
        per_conn: env_u64("TW_FLEET_PER_CONN", 1).max(1) as usize,
        p99_bound_ms: env_u64("TW_FLEET_P99_MS", 50) as f64,
        points_per_frame: env_u64("TW_FLEET_POINTS", 10),
    };
    let with_store = env_u64("TW_FLEET_STORE", 1) == 1;
    let steps = env_list("TW_FLEET_STEPS", "1,2,5,10,20,50,100,200,300,500,1000");
    let ref_steps = env_list("TW_FLEET_REF_STEPS", "1,10,20,50");
    let with_tls = env_u64("TW_FLEET_TLS", 1) == 1;
    let with_ref = env_u64("TW_BENCH_REF", 1) == 1;
    let out = std::env::var("TW_FLEET_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| util::repo_root().join("target/fleet.json"));
    let plot = std::env::var("TW_FLEET_PLOT").unwrap_or_else(|_| {
        util::repo_root()
            .join("docs/fleet.png")
            .display()
            .to_string()
    });

    let certs = tempfile::tempdir().unwrap();
    util::grpc::write_pki(certs.path(), &[]);
    let images = jpegs();
    let mean_jpeg = images.iter().map(|b| b.len()).sum::<usize>() / images.len();
    eprintln!(
        "fleet: {} fps per session, {IMAGES} JPEGs of {mean_jpeg} B mean, warm-up {:?}, window {:?}, {} session(s) per connection",
        k.fps, k.warmup, k.window, k.per_conn
    );
    // Two workers: the machine's two cores, shared with the server.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(env_u64("TW_FLEET_GEN_THREADS", 2) as usize)
        .enable_all()
        .build()
        .unwrap();
    let mut all: Vec<Step> = Vec::new();
    let report = |s: &Step| eprintln!("{}", serde_json::to_string(s).unwrap());

    if with_tls {
        for &n in &steps {
            let s = rt.block_on(run_step(
                start_ours(Kind::Tls, certs.path(), n),
                n,
                &k,
                &images,
            ));
            report(&s);
            let held = s.held;
            all.push(s);
            if !held {
                break;
            }
        }
    }
    if with_store {
        // Store on and off in turn at each step, so both see the same load.
        let (mut on, mut off) = (true, true);
        for &n in &steps {
            for (kind, going) in [(Kind::Plain, &mut on), (Kind::PlainNoStore, &mut off)] {
                if !*going {
                    continue;
                }
                let s = rt.block_on(run_step(start_ours(kind, certs.path(), n), n, &k, &images));
                report(&s);
                *going = s.held;
                all.push(s);
            }
            if !on && !off {
                break;
            }
        }
    }
    let scratch = if with_ref {
        reference_scratch(&common::ref_dir())
    } else {
        None
    };
    if with_ref && scratch.is_none() {
        eprintln!("reference set-up failed (grpcio-tools in the bench's Python?): skipped");
    }
    if let Some(work) = &scratch {
        // Ours in plaintext and the reference in turn at each step, so both
        // see the same machine load; frames only (the reference takes no
        // scalar points).
        let k = Knobs {
            points_per_frame: 0,
            ..k.clone()
        };
        for &n in &ref_steps {
            let s = rt.block_on(run_step(
                start_ours(Kind::Plain, certs.path(), n),
                n,
                &k,
                &images,
            ));
            report(&s);
            all.push(s);
            let s = rt.block_on(run_step(start_reference(work, n), n, &k, &images));
            report(&s);
            all.push(s);
        }
        let _ = std::fs::remove_dir_all(work);
    }

    println!(
        "\nfleet: {} fps/session, 16 x 32x32x3 JPEG ({mean_jpeg} B mean) per frame, {:?} window after {:?} warm-up, {} session(s)/connection\n",
        k.fps, k.window, k.warmup, k.per_conn
    );
    header();
    for s in &all {
        row(s);
    }
    let tls: Vec<&Step> = all.iter().filter(|s| s.kind == Some(Kind::Tls)).collect();
    if !tls.is_empty() {
        let limit = tls.iter().filter(|s| s.held).map(|s| s.sessions).max();
        println!(
            "\nlimit (TLS): {} session(s) held (worst-session p99 ≤ {} ms, ≥ 95% of frames received); first step not held: {}",
            limit.map_or("no".into(), |l| l.to_string()),
            k.p99_bound_ms,
            tls.iter()
                .find(|s| !s.held)
                .map_or("none (raise TW_FLEET_STEPS)".into(), |s| s.sessions.to_string())
        );
    }
    let limit_of = |kind: Kind| {
        all.iter()
            .filter(|s| s.kind == Some(kind) && s.held)
            .map(|s| s.sessions)
            .max()
    };
    if with_store {
        let (on, off) = (limit_of(Kind::Plain), limit_of(Kind::PlainNoStore));
        println!(
            "\nstore (plaintext, {} points/frame): {} session(s) held with the SQLite store, {} in memory only (--store none): {}",
            k.points_per_frame,
            on.map_or("no".into(), |l| l.to_string()),
            off.map_or("no".into(), |l| l.to_string()),
            match (on, off) {
                (Some(a), Some(b)) => format!(
                    "{:.0}% of the in-memory figure (goal ≥ 90%)",
                    a as f64 / b as f64 * 100.0
                ),
                _ => "no ratio".into(),
            }
        );
        println!("\n| sessions | store: points committed /s | store: p99 worst ms | in memory: p99 worst ms | store: server cores | in memory: server cores |");
        println!("|---|---|---|---|---|---|");
        for on in all.iter().filter(|s| s.kind == Some(Kind::Plain)) {
            if let Some(off) = all
                .iter()
                .find(|s| s.kind == Some(Kind::PlainNoStore) && s.sessions == on.sessions)
            {
                println!(
                    "| {} | {:.0} | {:.1} | {:.1} | {:.2} | {:.2} |",
                    on.sessions,
                    on.points_acked_per_s,
                    on.p99_max_ms,
                    off.p99_max_ms,
                    on.server_cores,
                    off.server_cores
                );
            }
        }
    }
    let pairs: Vec<(&Step, &Step)> = all
        .iter()
        .filter(|s| s.kind == Some(Kind::Plain))
        .filter_map(|p| {
            all.iter()
                .find(|r| r.kind == Some(Kind::Reference) && r.sessions == p.sessions)
                .map(|r| (p, r))
        })
        .collect();
    if !pairs.is_empty() {
        println!("\n| sessions | ours plaintext CPU s / 1000 frames | grpcio reference | ratio | goal ≤ 0.2 |");
        println!("|---|---|---|---|---|");
        for (p, r) in &pairs {
            let ratio = p.server_cpu_s_per_1000 / r.server_cpu_s_per_1000;
            println!(
                "| {} | {:.3} | {:.3} | {ratio:.3} | {} |",
                p.sessions,
                p.server_cpu_s_per_1000,
                r.server_cpu_s_per_1000,
                if ratio <= 0.2 { "met" } else { "**missed**" }
            );
        }
    }

    let json = serde_json::json!({
        "fps": k.fps,
        "window_s": k.window.as_secs_f64(),
        "warmup_s": k.warmup.as_secs_f64(),
        "per_conn": k.per_conn,
        "jpeg_mean_bytes": mean_jpeg,
        "p99_bound_ms": k.p99_bound_ms,
        "steps": all,
    });
    if let Some(dir) = out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&out, serde_json::to_vec_pretty(&json).unwrap()).expect("write TW_FLEET_OUT");
    eprintln!("figures: {}", out.display());
    if !plot.is_empty() {
        let ok = Command::new(common::python())
            .arg(util::repo_root().join("benches/python/fleet_plot.py"))
            .arg(&out)
            .arg(&plot)
            .status()
            .is_ok_and(|s| s.success());
        eprintln!(
            "plot: {}",
            if ok {
                plot.as_str()
            } else {
                "failed (matplotlib in the bench's Python?)"
            }
        );
    }
}
