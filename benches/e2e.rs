//! End to end, side by side with the reference (issue 10), in one run on one
//! machine. For each shape (16 images of mnist 28x28x1, cifar 32x32x3,
//! imagenet 224x224x3, max 512x512x3 per batch) it runs
//! - trainwatch: `benches/python/e2e_trainer.py` publishing with `pub.batch`,
//!   the real `trainwatch agent` process, an in-process server;
//! - the reference (`TW_BENCH_REF_DIR`, default ../shared/reference beside
//!   the repository, run from a scratch copy): Pillow JPEG + grpcio on the training thread
//!   (`ref_trainer_bench.py`), the grpcio server (`ref_server.py`);
//!
//! both on plaintext gRPC over loopback, with the same images (the
//! reference's `make_images`). Which path goes first alternates per shape and
//! per run; every figure is the median over runs. Each path has a full-speed
//! phase (the highest frame rate held) and a paced phase at `TW_E2E_RATE`
//! (everything else), each in its own processes. Prints one table with both
//! paths and their ratio, writes it and every run's figures to `TW_E2E_OUT`,
//! and plots latency and CPU against frame size. docs/bench.md says how each
//! figure is measured.
//!
//! `TRAINWATCH_PYTHON=.venv/bin/python cargo bench --bench e2e`; env:
//! - `TW_E2E_RUNS` (3), `TW_E2E_SHAPES` ("mnist cifar imagenet max")
//! - `TW_E2E_RATE` (60): paced batches/s, `TW_E2E_PACED_S` (10): its length
//! - `TW_E2E_FULL_S` (5): full-speed window after `TW_E2E_WARMUP_S` (1); 0
//!   skips the full-speed phases
//! - `TW_BENCH_REF` (1): 0 skips the reference; `TW_BENCH_REF_DIR`
//! - `TW_E2E_QUIET_S` (20): before each phase, wait at most this long for a
//!   mostly idle machine
//! - `TW_E2E_OUT` (target/e2e), `TW_E2E_PLOT` (docs/e2e.png; empty: no plot)
//! - `TRAINWATCH_PYTHON` (else .venv, else python3) for the trainer;
//!   `TW_BENCH_PYTHON` (else the same) for the reference and the plot: numpy,
//!   grpcio, grpcio-tools, pillow, matplotlib

mod common;
#[path = "../tests/util/mod.rs"]
#[allow(unused_imports)]
mod util;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{env_f64, env_str, median, percentile};
use serde::Serialize;
use serde_json::{json, Value};
use trainwatch::config::ServerSettings;
use trainwatch::server::{RunningServer, Server};
use util::http::{get_json, post_json};
use util::proc::{cpu_s, machine_busy_s};
use util::procs::{AgentProc, Trainer};

/// The reference's shapes (ref_common.SHAPES): name, height, width, channels.
const SHAPES: [(&str, u64, u64, u64); 4] = [
    ("mnist", 28, 28, 1),
    ("cifar", 32, 32, 3),
    ("imagenet", 224, 224, 3),
    ("max", 512, 512, 3),
];
/// Images per batch, as the reference.
const BATCH: u64 = 16;
/// The agent's `max_fps` in the full-speed phase: its highest valid value, so
/// that the pipeline and not the pacer limits the rate. The paced phase keeps
/// the default (60).
const FULL_SPEED_MAX_FPS: &str = "1000";
/// The full-speed trainer keeps publishing this long after the window closes,
/// so that the window sees a loaded pipeline to its end.
const FULL_SPEED_TAIL_S: f64 = 0.5;
/// A machine this busy (fraction of all cores) or less counts as quiet.
const QUIET_BUSY: f64 = 0.15;

/// The env knobs, read once.
#[derive(Debug, Clone, Serialize)]
struct Knobs {
    runs: usize,
    shapes: Vec<String>,
    rate: f64,
    paced_s: f64,
    full_s: f64,
    warmup_s: f64,
    with_ref: bool,
    ref_dir: PathBuf,
    quiet_s: f64,
    out: PathBuf,
    plot: String,
}

impl Knobs {
    fn from_env() -> Knobs {
        let shapes: Vec<String> = env_str("TW_E2E_SHAPES", "mnist cifar imagenet max")
            .split_whitespace()
            .map(String::from)
            .collect();
        for s in &shapes {
            assert!(
                SHAPES.iter().any(|(n, ..)| n == s),
                "TW_E2E_SHAPES: unknown shape {s:?}"
            );
        }
        Knobs {
            runs: env_f64("TW_E2E_RUNS", 3.0).max(1.0) as usize,
            shapes,
            rate: env_f64("TW_E2E_RATE", 60.0),
            paced_s: env_f64("TW_E2E_PACED_S", 10.0),
            full_s: env_f64("TW_E2E_FULL_S", 5.0),
            warmup_s: env_f64("TW_E2E_WARMUP_S", 1.0),
            with_ref: common::env_u64("TW_BENCH_REF", 1) == 1,
            ref_dir: common::ref_dir(),
            quiet_s: env_f64("TW_E2E_QUIET_S", 20.0),
            out: std::env::var_os("TW_E2E_OUT")
                .map(PathBuf::from)
                .unwrap_or_else(|| util::repo_root().join("target/e2e")),
            plot: env_str(
                "TW_E2E_PLOT",
                util::repo_root().join("docs/e2e.png").to_str().unwrap(),
            ),
        }
    }
}

/// Waits (at most `limit_s`) until the machine is mostly idle over a second;
/// returns the busy fraction last seen. The machine is shared: this keeps a
/// phase from starting in the middle of someone's build where it can.
fn wait_quiet(limit_s: f64) -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let deadline = Instant::now() + Duration::from_secs_f64(limit_s);
    loop {
        let (b0, t0) = (machine_busy_s(), Instant::now());
        std::thread::sleep(Duration::from_secs(1));
        let busy = (machine_busy_s() - b0) / (t0.elapsed().as_secs_f64() * cores);
        if busy < QUIET_BUSY || Instant::now() > deadline {
            return busy;
        }
    }
}

/// One path's figures for one shape in one run; NaN where the path has no
/// such figure. The same struct for both paths so that the table and the
/// medians treat them alike.
#[derive(Debug, Clone, Copy, Serialize)]
struct Figures {
    /// Training-thread time per batch: reference encode + build + enqueue;
    /// trainwatch `pub.batch`.
    publish_us_p50: f64,
    publish_us_p99: f64,
    /// Trainer publish time → server receipt, paced phase.
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    /// Frames the server received per second in the full-speed window.
    held_fps: f64,
    /// Batches the trainer published per second in that window.
    offered_fps: f64,
    /// Device CPU per 1000 frames the server received, paced phase:
    /// reference trainer; trainwatch trainer + agent.
    device_cpu_s_per_1000: f64,
    agent_cpu_s_per_1000: f64,
    trainer_cpu_s_per_1000: f64,
    /// Peak resident set in the paced phase.
    trainer_rss_mib: f64,
    agent_rss_mib: f64,
    /// JPEG bytes per streamed frame (sum over its images).
    jpeg_bytes_per_frame: f64,
    /// Images in the last frame the server received.
    images_per_frame: f64,
    /// The whole serialized MetricsRequest of one batch (reference only).
    message_bytes: f64,
    /// Paced phase: batches published, frames the server received.
    published: f64,
    streamed: f64,
    /// Dashboard command → `pub.commands()` (trainwatch only).
    cmd_p50_ms: f64,
    cmd_p99_ms: f64,
    /// Machine busy fraction just before the phases (noise indicator).
    busy_before: f64,
}

impl Default for Figures {
    fn default() -> Self {
        let n = f64::NAN;
        Figures {
            publish_us_p50: n,
            publish_us_p99: n,
            latency_p50_ms: n,
            latency_p99_ms: n,
            held_fps: n,
            offered_fps: n,
            device_cpu_s_per_1000: n,
            agent_cpu_s_per_1000: n,
            trainer_cpu_s_per_1000: n,
            trainer_rss_mib: n,
            agent_rss_mib: n,
            jpeg_bytes_per_frame: n,
            images_per_frame: n,
            message_bytes: n,
            published: n,
            streamed: n,
            cmd_p50_ms: n,
            cmd_p99_ms: n,
            busy_before: n,
        }
    }
}

fn trainer_script() -> PathBuf {
    util::repo_root().join("benches/python/e2e_trainer.py")
}

/// The trainer's arguments for `shape`: where the reference's image
/// generator is and where its images are cached.
fn trainer_args(k: &Knobs, shape: &str) -> Vec<String> {
    let cache = k.out.join(format!("images-{shape}.npy"));
    ["--shape", shape, "--ref-dir", k.ref_dir.to_str().unwrap()]
        .iter()
        .map(|s| s.to_string())
        .chain(["--images-cache".into(), cache.to_str().unwrap().into()])
        .collect()
}

/// Generates each shape's images once, before any phase: the reference's
/// generator takes seconds at 512x512, longer than a trainer's start is
/// given.
fn cache_images(k: &Knobs) {
    for shape in &k.shapes {
        let st = Command::new(util::python())
            .arg(trainer_script())
            .args(trainer_args(k, shape))
            .arg("--cache-only")
            .env("PYTHONPATH", util::repo_root().join("python"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .status()
            .expect("run e2e_trainer.py --cache-only");
        assert!(st.success(), "generating the {shape} images failed");
    }
}

/// The server's session of run `run`, once the agent registered it.
async fn session_of(http: SocketAddr, run: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = get_json(http, "/api/sessions").await;
        let found = list["sessions"].as_array().and_then(|a| {
            a.iter()
                .filter_map(|s| s["id"].as_str())
                .find(|id| id.contains(run))
                .map(String::from)
        });
        if let Some(id) = found {
            return id;
        }
        assert!(Instant::now() < deadline, "no session for run {run}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What one of our phases saw.
struct OurPhase {
    /// The trainer's `done` line.
    done: Value,
    /// The session's JSON once COMPLETED.
    session: Value,
    agent_cpu_s: f64,
    agent_hwm_mib: f64,
    /// Full-speed phase: server receipts per second in the window.
    held_fps: f64,
    /// Paced phase: command → `pub.commands()` latencies, ms.
    cmd_ms: Vec<f64>,
    busy_before: f64,
}

/// One trainwatch phase: a fresh agent and trainer against `server`; paced
/// at `k.rate` or, with `full`, as fast as possible with the agent's frame
/// rate cap raised.
async fn our_phase(
    server: &RunningServer,
    k: &Knobs,
    shape: &str,
    run_no: usize,
    full: bool,
) -> OurPhase {
    let http = server.http_addr;
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let agent_args: &[&str] = if full {
        &["--max-fps", FULL_SPEED_MAX_FPS]
    } else {
        &[]
    };
    let agent = AgentProc::start_insecure(server.grpc_addr, shm.path(), agent_args);
    let kind = if full { "full" } else { "paced" };
    let run = format!("e2e-{shape}-{kind}-{run_no}");
    let (rate, seconds) = if full {
        (0.0, k.warmup_s + k.full_s + FULL_SPEED_TAIL_S)
    } else {
        (k.rate, k.paced_s)
    };
    let mut args = trainer_args(k, shape);
    args.extend(["--rate".into(), rate.to_string()]);
    args.extend(["--duration".into(), seconds.to_string()]);
    args.push("--wait-go".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut trainer = Trainer::start_script(&trainer_script(), shm.path(), &run, &args);
    let id = session_of(http, &run).await;
    let busy_before = wait_quiet(k.quiet_s);
    let cpu0 = cpu_s(agent.pid());
    let start = trainer.ask("go");
    assert!(start.get("start").is_some(), "{start}");
    let started = Instant::now();
    let window_start = started + Duration::from_secs_f64(k.warmup_s);
    let window_end = window_start + Duration::from_secs_f64(k.full_s);
    let received = || async {
        let d = get_json(http, &format!("/api/sessions/{id}")).await;
        (
            Instant::now(),
            d["batches_received"].as_f64().unwrap_or(0.0),
        )
    };
    let mut window: Vec<(Instant, f64)> = Vec::new();
    // Paced phase: a command every 250 ms from 1 s on.
    let cmd_path = format!("/api/sessions/{id}/commands");
    let mut sent_ns = Vec::new();
    let mut seen = Vec::new();
    let mut next_cmd = started + Duration::from_secs(1);
    let give_up = started + Duration::from_secs_f64(seconds + 60.0);
    let done = loop {
        let now = Instant::now();
        if full && window.len() < 2 && now >= [window_start, window_end][window.len()] {
            window.push(received().await);
        }
        if !full && now >= next_cmd {
            let i = sent_ns.len();
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as f64;
            let body = json!({"type": "CHANGE_LEARNING_RATE", "parameters": {"learning_rate": format!("0.{:06}", i + 1)}});
            let (st, v) = post_json(http, &cmd_path, &[], &body).await;
            assert_eq!(st, 202, "{v}");
            sent_ns.push(t);
            next_cmd += Duration::from_millis(250);
        }
        match trainer.try_next() {
            Some(v) if v.get("done").is_some() => break v,
            Some(v) if v.get("command").is_some() => seen.push(v),
            Some(_) => {}
            None => {
                assert!(
                    now < give_up,
                    "e2e_trainer.py: no end; saw {:?}",
                    trainer.seen
                );
                tokio::time::sleep(Duration::from_millis(2)).await
            }
        }
    };
    // The agent's work for the last frames counts: wait for the run's end.
    let deadline = Instant::now() + Duration::from_secs(30);
    let session = loop {
        let d = get_json(http, &format!("/api/sessions/{id}")).await;
        if d["status"] == "COMPLETED" || Instant::now() > deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let agent_cpu_s = cpu_s(agent.pid()) - cpu0;
    let agent_hwm_mib = util::proc::status_kib(agent.pid(), "VmHWM") as f64 / 1024.0;
    agent.kill();
    let held_fps = match window[..] {
        [(t0, b0), (t1, b1)] => (b1 - b0) / (t1 - t0).as_secs_f64(),
        _ => f64::NAN,
    };
    let cmd_ms = seen
        .iter()
        .filter_map(|v| {
            // learning_rate 0.000001 is command 0, and so on.
            let lr: f64 = v["params"]["learning_rate"].as_str()?.parse().ok()?;
            let i = (lr * 1e6).round() as usize - 1;
            Some((v["t_ns"].as_f64()? - sent_ns.get(i)?) / 1e6)
        })
        .collect();
    OurPhase {
        done,
        session,
        agent_cpu_s,
        agent_hwm_mib,
        held_fps,
        cmd_ms,
        busy_before,
    }
}

async fn run_ours(k: &Knobs, shape: &str, run_no: usize) -> Figures {
    let mut settings = ServerSettings::local_insecure();
    settings.limits.heartbeat_interval_ms = 2000;
    let server = Server::start(&settings).await.expect("server starts");
    let mut f = Figures::default();
    if k.full_s > 0.0 {
        let p = our_phase(&server, k, shape, run_no, true).await;
        f.held_fps = p.held_fps;
        f.offered_fps = p.done["done"].as_f64().unwrap() / p.done["seconds"].as_f64().unwrap();
    }
    let mut p = our_phase(&server, k, shape, run_no, false).await;
    let n = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let streamed = n(&p.session["batches_received"]);
    let trainer_cpu = n(&p.done["cpu_s"]);
    f.publish_us_p50 = n(&p.done["publish_us_p50"]);
    f.publish_us_p99 = n(&p.done["publish_us_p99"]);
    f.latency_p50_ms = n(&p.session["receipt_latency_ms"]["p50"]);
    f.latency_p99_ms = n(&p.session["receipt_latency_ms"]["p99"]);
    f.device_cpu_s_per_1000 = (trainer_cpu + p.agent_cpu_s) / streamed * 1000.0;
    f.agent_cpu_s_per_1000 = p.agent_cpu_s / streamed * 1000.0;
    f.trainer_cpu_s_per_1000 = trainer_cpu / streamed * 1000.0;
    f.trainer_rss_mib = n(&p.done["peak_rss_mb"]);
    f.agent_rss_mib = p.agent_hwm_mib;
    f.jpeg_bytes_per_frame = n(&p.session["counters"]["image_bytes"]) / streamed;
    f.images_per_frame = n(&p.session["last_batch"]["images"]);
    f.published = n(&p.done["done"]);
    f.streamed = streamed;
    f.cmd_p50_ms = percentile(&mut p.cmd_ms, 0.5);
    f.cmd_p99_ms = percentile(&mut p.cmd_ms, 0.99);
    f.busy_before = p.busy_before;
    server.shutdown(Duration::from_secs(5)).await.unwrap();
    f
}

/// A scratch copy of the reference with its generated gRPC modules
/// (shared/ is read-only).
fn prepare_reference(k: &Knobs) -> PathBuf {
    let work = k.out.join("reference");
    std::fs::create_dir_all(work.join("stats")).unwrap();
    for e in std::fs::read_dir(&k.ref_dir).expect("TW_BENCH_REF_DIR") {
        let p = e.unwrap().path();
        if matches!(p.extension().and_then(|x| x.to_str()), Some("py" | "proto")) {
            std::fs::copy(&p, work.join(p.file_name().unwrap())).unwrap();
        }
    }
    let st = Command::new(common::python())
        .args(["-m", "grpc_tools.protoc", "-I.", "--python_out=."])
        .args(["--grpc_python_out=.", "metrics.proto"])
        .current_dir(&work)
        .status()
        .expect("run grpc_tools.protoc");
    assert!(st.success(), "grpc_tools.protoc failed");
    work
}

/// One reference phase ("throughput" or "paced"): a fresh `ref_server.py`
/// and `ref_trainer_bench.py` against it; the trainer's JSON.
fn ref_phase(k: &Knobs, work: &Path, shape: &str, run_no: usize, phase: &str) -> Option<Value> {
    let tag = format!("ref-{shape}-{phase}-{run_no}");
    let script = r#"set -e
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
rm -f "ready-$TAG"
"$PY" ref_server.py --port "$PORT" --stats-dir stats --ready-file "ready-$TAG" --max-lifetime-s 300 > "$TAG-server.log" 2>&1 &
SP=$!
trap 'kill $SP 2>/dev/null; wait $SP 2>/dev/null' EXIT
for _ in $(seq 1 100); do [ -f "ready-$TAG" ] && break; sleep 0.1; done
"$PY" ref_trainer_bench.py --port "$PORT" --shape "$SHAPE" --phases "$PHASE" --session-prefix "$TAG" \
  --warmup "$WARMUP" --duration "$FULL" --rate "$RATE" --paced-duration "$PACED" \
  --stats-dir stats --out "$TAG.json" > "$TAG.log" 2>&1
"#;
    let status = Command::new("bash")
        .args(["-c", script])
        .current_dir(work)
        .env("PY", common::python())
        .env("TAG", &tag)
        .env("SHAPE", shape)
        .env("PHASE", phase)
        .env("WARMUP", k.warmup_s.to_string())
        .env("FULL", k.full_s.to_string())
        .env("RATE", k.rate.to_string())
        .env("PACED", k.paced_s.to_string())
        .status()
        .ok()?;
    if !status.success() {
        eprintln!(
            "reference {tag} failed ({status}); see {}",
            work.join(format!("{tag}.log")).display()
        );
        return None;
    }
    serde_json::from_str(&std::fs::read_to_string(work.join(format!("{tag}.json"))).ok()?).ok()
}

fn run_reference(k: &Knobs, work: &Path, shape: &str, run_no: usize) -> Figures {
    let mut f = Figures::default();
    let n = |v: Option<&Value>| v.and_then(Value::as_f64).unwrap_or(f64::NAN);
    if k.full_s > 0.0 {
        wait_quiet(k.quiet_s);
        if let Some(r) = ref_phase(k, work, shape, run_no, "throughput") {
            let t = r.pointer("/phases/throughput");
            f.held_fps = n(t.and_then(|t| t.get("sustained_acked_batches_per_s")));
            f.offered_fps = n(t.and_then(|t| t.get("published_batches_per_s")));
        }
    }
    f.busy_before = wait_quiet(k.quiet_s);
    let Some(r) = ref_phase(k, work, shape, run_no, "paced") else {
        return f;
    };
    let p = |ptr: &str| n(r.pointer(&format!("/phases/paced/{ptr}")));
    let streamed = p("server/batches");
    f.publish_us_p50 = p("publish_us_p50");
    f.publish_us_p99 = p("publish_us_p99");
    f.latency_p50_ms = p("server/latency_ms_p50");
    f.latency_p99_ms = p("server/latency_ms_p99");
    f.device_cpu_s_per_1000 = p("trainer_cpu_s") / streamed * 1000.0;
    f.trainer_cpu_s_per_1000 = f.device_cpu_s_per_1000;
    f.trainer_rss_mib = n(r.get("trainer_peak_rss_mb"));
    f.jpeg_bytes_per_frame = n(r.get("jpeg_bytes_per_image_mean")) * BATCH as f64;
    f.images_per_frame = BATCH as f64;
    f.message_bytes = n(r.get("request_bytes_serialized"));
    f.published = p("published");
    f.streamed = streamed;
    f
}

/// A goal on one shape's row: met or missed, with the figure it is judged on.
fn judge(ok: bool, what: String) -> String {
    if ok {
        format!("{what}: met")
    } else {
        format!("{what}: **missed**")
    }
}

/// One row of the table: a figure, its decimals, and its goal (if any) on a
/// shape, judged from (trainwatch, reference).
struct Row {
    label: String,
    get: fn(&Figures) -> f64,
    decimals: usize,
    /// `None` where no goal applies, or it is judged against a missing
    /// reference figure.
    goal: fn(&str, f64, f64) -> Option<String>,
}

fn no_goal(_: &str, _: f64, _: f64) -> Option<String> {
    None
}

fn trainer_goal(shape: &str, ours: f64, reference: f64) -> Option<String> {
    let (limit, text) = match shape {
        "mnist" | "cifar" => (1.0 / 20.0, "≤ 1/20"),
        "imagenet" => (1.0 / 4.0, "≤ 1/4"),
        _ => return None,
    };
    (!reference.is_nan()).then(|| judge(ours / reference <= limit, text.into()))
}

fn rows(rate: f64) -> Vec<Row> {
    let row = |label: String, get, decimals, goal| Row {
        label,
        get,
        decimals,
        goal,
    };
    vec![
        row(
            format!("trainer µs per batch p50 @{rate}/s"),
            |f| f.publish_us_p50,
            0,
            trainer_goal,
        ),
        row(
            format!("trainer µs per batch p99 @{rate}/s"),
            |f| f.publish_us_p99,
            0,
            trainer_goal,
        ),
        row(
            format!("latency p50 ms @{rate}/s"),
            |f| f.latency_p50_ms,
            1,
            no_goal,
        ),
        row(
            format!("latency p99 ms @{rate}/s"),
            |f| f.latency_p99_ms,
            1,
            |_, o, r| (!r.is_nan()).then(|| judge(o <= r, "≤ reference".into())),
        ),
        row(
            "highest rate held, frames/s".into(),
            |f| f.held_fps,
            0,
            |shape, o, _| (shape == "max").then(|| judge(o >= 60.0, "≥ 60".into())),
        ),
        row(
            format!("frames streamed / published @{rate}/s"),
            |f| f.streamed / f.published,
            3,
            |shape, o, _| (shape == "max").then(|| judge(o >= 0.95, "≥ 0.95".into())),
        ),
        row(
            "device CPU s / 1000 frames".into(),
            |f| f.device_cpu_s_per_1000,
            3,
            |_, o, r| (!r.is_nan()).then(|| judge(o / r <= 0.2, "≤ 1/5".into())),
        ),
        row(
            "… agent alone".into(),
            |f| f.agent_cpu_s_per_1000,
            3,
            no_goal,
        ),
        row(
            "… trainer alone".into(),
            |f| f.trainer_cpu_s_per_1000,
            3,
            no_goal,
        ),
        row(
            "peak RSS MiB, trainer".into(),
            |f| f.trainer_rss_mib,
            1,
            no_goal,
        ),
        row(
            "peak RSS MiB, agent".into(),
            |f| f.agent_rss_mib,
            1,
            no_goal,
        ),
        row(
            "JPEG bytes on the wire per frame".into(),
            |f| f.jpeg_bytes_per_frame,
            0,
            no_goal,
        ),
        row(
            "images per frame on the wire".into(),
            |f| f.images_per_frame,
            0,
            no_goal,
        ),
        row(
            "whole MetricsRequest bytes (one batch)".into(),
            |f| f.message_bytes,
            0,
            no_goal,
        ),
        row(
            "command → pub.commands() p50 ms".into(),
            |f| f.cmd_p50_ms,
            1,
            no_goal,
        ),
        row(
            "command → pub.commands() p99 ms".into(),
            |f| f.cmd_p99_ms,
            1,
            no_goal,
        ),
    ]
}

/// One shape: medians over runs of both paths, and every run.
#[derive(Serialize)]
struct ShapeResult {
    shape: String,
    pixels_per_batch: u64,
    ours: Figures,
    reference: Figures,
    ours_runs: Vec<Figures>,
    reference_runs: Vec<Figures>,
}

fn medians(runs: &[Figures]) -> Figures {
    let m =
        |get: fn(&Figures) -> f64| median(runs.iter().map(get).filter(|x| !x.is_nan()).collect());
    Figures {
        publish_us_p50: m(|f| f.publish_us_p50),
        publish_us_p99: m(|f| f.publish_us_p99),
        latency_p50_ms: m(|f| f.latency_p50_ms),
        latency_p99_ms: m(|f| f.latency_p99_ms),
        held_fps: m(|f| f.held_fps),
        offered_fps: m(|f| f.offered_fps),
        device_cpu_s_per_1000: m(|f| f.device_cpu_s_per_1000),
        agent_cpu_s_per_1000: m(|f| f.agent_cpu_s_per_1000),
        trainer_cpu_s_per_1000: m(|f| f.trainer_cpu_s_per_1000),
        trainer_rss_mib: m(|f| f.trainer_rss_mib),
        agent_rss_mib: m(|f| f.agent_rss_mib),
        jpeg_bytes_per_frame: m(|f| f.jpeg_bytes_per_frame),
        images_per_frame: m(|f| f.images_per_frame),
        message_bytes: m(|f| f.message_bytes),
        published: m(|f| f.published),
        streamed: m(|f| f.streamed),
        cmd_p50_ms: m(|f| f.cmd_p50_ms),
        cmd_p99_ms: m(|f| f.cmd_p99_ms),
        busy_before: m(|f| f.busy_before),
    }
}

fn cell(v: f64, decimals: usize) -> String {
    if v.is_nan() || v.is_infinite() {
        String::new()
    } else {
        format!("{v:.decimals$}")
    }
}

fn table(k: &Knobs, results: &[ShapeResult]) -> String {
    let mut t = String::from(
        "| figure | shape | trainwatch | reference | trainwatch / reference | goal |\n|---|---|---|---|---|---|\n",
    );
    for row in rows(k.rate) {
        for r in results {
            let (o, x) = ((row.get)(&r.ours), (row.get)(&r.reference));
            let ratio = o / x;
            let goal = if o.is_nan() {
                None
            } else {
                (row.goal)(&r.shape, o, x)
            };
            t.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                row.label,
                r.shape,
                cell(o, row.decimals),
                cell(x, row.decimals),
                cell(ratio, if ratio < 0.1 { 3 } else { 2 }),
                goal.unwrap_or_default()
            ));
        }
    }
    t
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let k = Knobs::from_env();
    std::fs::create_dir_all(&k.out).unwrap();
    cache_images(&k);
    let ref_work = k.with_ref.then(|| prepare_reference(&k));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let mut ours: Vec<Vec<Figures>> = vec![Vec::new(); k.shapes.len()];
    let mut refs: Vec<Vec<Figures>> = vec![Vec::new(); k.shapes.len()];
    for run in 0..k.runs {
        for (si, shape) in k.shapes.iter().enumerate() {
            // Alternate which path goes first, per shape and per run, so that
            // a drifting machine favours neither.
            let ours_first = (run + si) % 2 == 0;
            for turn in 0..2 {
                if (turn == 0) == ours_first {
                    let f = rt.block_on(run_ours(&k, shape, run));
                    eprintln!("run {run} {shape} trainwatch: {f:?}");
                    ours[si].push(f);
                } else if let Some(work) = &ref_work {
                    let f = run_reference(&k, work, shape, run);
                    eprintln!("run {run} {shape} reference: {f:?}");
                    refs[si].push(f);
                }
            }
        }
    }
    let results: Vec<ShapeResult> = k
        .shapes
        .iter()
        .enumerate()
        .map(|(si, shape)| {
            let &(_, h, w, c) = SHAPES.iter().find(|s| s.0 == shape).unwrap();
            ShapeResult {
                shape: shape.clone(),
                pixels_per_batch: BATCH * h * w * c,
                ours: medians(&ours[si]),
                reference: medians(&refs[si]),
                ours_runs: ours[si].clone(),
                reference_runs: refs[si].clone(),
            }
        })
        .collect();
    let header = format!(
        "e2e: {} run(s), shapes {}, paced {} s at {}/s, full speed {} s after {} s warm-up; \
         16 images per batch, plaintext gRPC on loopback; medians over runs; {:.0} s in all",
        k.runs,
        k.shapes.join(" "),
        k.paced_s,
        k.rate,
        k.full_s,
        k.warmup_s,
        started.elapsed().as_secs_f64()
    );
    let table = table(&k, &results);
    println!("\n{header}\n\n{table}");
    std::fs::write(k.out.join("table.md"), format!("{header}\n\n{table}")).unwrap();
    let json_path = k.out.join("results.json");
    let all = json!({"knobs": k, "header": header, "shapes": results});
    std::fs::write(&json_path, serde_json::to_string_pretty(&all).unwrap()).unwrap();
    println!("figures of every run: {}", json_path.display());
    if !k.plot.is_empty() {
        let st = Command::new(common::python())
            .arg(util::repo_root().join("benches/python/e2e_plot.py"))
            .args([json_path.as_os_str(), k.plot.as_ref()])
            .status();
        match st {
            Ok(s) if s.success() => println!("plot: {}", k.plot),
            other => eprintln!("plot failed: {other:?}"),
        }
    }
}
