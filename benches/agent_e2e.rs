//! End to end on loopback: a Python trainer publishing 16 f32 32x32x3
//! images per batch with `pub.batch` at 60/s, the real agent process, an
//! in-process server; beside it, in the same run, the reference path
//! (`/work/shared/reference`: JPEG + grpcio on the training thread).
//!
//! Figures: publish → server receipt latency p50/p99 (the server's
//! `receipt_latency_ms`), agent CPU per 1000 batches (utime+stime from
//! /proc), agent RSS peak and drift, dashboard command → `pub.commands()`
//! latency. `cargo bench --bench agent_e2e`; env:
//! - `TW_BENCH_BATCHES` (600): batches per run; 1000000 for the long RSS run
//! - `TW_BENCH_FPS` (60): publish rate
//! - `TW_BENCH_RUNS` (1): runs; medians are printed
//! - `TW_BENCH_REF` (1): 0 skips the reference path
//! - `TW_BENCH_REF_DIR` (/work/shared/reference), `TW_BENCH_PYTHON`
//!   (TRAINWATCH_PYTHON, else .venv, else python3; needs grpcio, grpcio-tools,
//!   pillow, numpy for the reference)

mod common;
#[path = "../tests/util/mod.rs"]
#[allow(unused_imports)]
mod util;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{env_u64, median, percentile, python};
use serde_json::{json, Value};
use trainwatch::config::ServerSettings;
use trainwatch::server::Server;
use util::http::{get_json, post_json};
use util::proc::cpu_s;
use util::procs::{lib_path, AgentProc};

#[derive(Debug, Default, Clone)]
struct Ours {
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    latency_count: f64,
    batches: f64,
    received: f64,
    agent_cpu_s_per_1000: f64,
    trainer_cpu_s_per_1000: f64,
    rss_peak_mib: f64,
    rss_drift_mib: f64,
    cmd_p50_ms: f64,
    cmd_p99_ms: f64,
    commands: f64,
}

async fn run_ours(batches: u64, fps: u64) -> Ours {
    let mut settings = ServerSettings::local_insecure();
    settings.limits.heartbeat_interval_ms = 2000;
    let server = Server::start(&settings).await.expect("server starts");
    let http = server.http_addr;
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let agent = AgentProc::start_insecure(server.grpc_addr, shm.path(), &[]);
    let run = format!("bench{}", std::process::id());
    let mut child = Command::new(python())
        .arg(util::repo_root().join("benches/python/e2e_trainer.py"))
        .args(["--shm-dir", shm.path().to_str().unwrap(), "--run", &run])
        .args(["--fps", &fps.to_string(), "--batches", &batches.to_string()])
        .env("TRAINWATCH_LIB", lib_path())
        .env("PYTHONPATH", util::repo_root().join("python"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn e2e_trainer.py");
    let out = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&l) {
                let _ = tx.send(v);
            }
        }
    });
    let ready = lines.recv_timeout(Duration::from_secs(30)).expect("ready");
    assert!(ready.get("ready").is_some(), "{ready}");
    let cpu0 = cpu_s(agent.pid());

    // The session, once the agent registered it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        let list = get_json(http, "/api/sessions").await;
        if let Some(id) = list["sessions"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|s| s["id"].as_str())
        {
            break id.to_string();
        }
        assert!(Instant::now() < deadline, "no session");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // While it runs: RSS each second, a command every 250 ms (from 1 s on).
    let mut rss = Vec::new();
    let mut sent_ns = Vec::new();
    let mut seen = Vec::new();
    let mut done = None;
    let started = Instant::now();
    let mut next_rss = started;
    let mut next_cmd = started + Duration::from_secs(1);
    let path = format!("/api/sessions/{id}/commands");
    while done.is_none() {
        let now = Instant::now();
        if now >= next_rss {
            rss.push(util::proc::rss_kib(agent.pid()) as f64 / 1024.0);
            next_rss += Duration::from_secs(1);
        }
        if now >= next_cmd && sent_ns.len() < 400 {
            let i = sent_ns.len();
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as f64;
            let body = json!({"type": "CHANGE_LEARNING_RATE", "parameters": {"learning_rate": format!("0.{:06}", i + 1)}});
            let (st, v) = post_json(http, &path, &[], &body).await;
            assert_eq!(st, 202, "{v}");
            sent_ns.push(t);
            next_cmd += Duration::from_millis(250);
        }
        while let Ok(v) = lines.try_recv() {
            if v.get("command").is_some() {
                seen.push(v);
            } else if v.get("done").is_some() {
                done = Some(v);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done = done.unwrap();
    let cpu = cpu_s(agent.pid()) - cpu0;
    let _ = child.wait();
    // The last batches and the final status, then the figures.
    let deadline = Instant::now() + Duration::from_secs(30);
    let d = loop {
        let d = get_json(http, &format!("/api/sessions/{id}")).await;
        if d["status"] == "COMPLETED" || Instant::now() > deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut cmd_ms: Vec<f64> = seen
        .iter()
        .filter_map(|v| {
            // learning_rate 0.000001 is command 0, and so on.
            let lr: f64 = v["params"]["learning_rate"].as_str()?.parse().ok()?;
            let i = (lr * 1e6).round() as usize - 1;
            Some((v["t_ns"].as_f64()? - sent_ns.get(i)?) / 1e6)
        })
        .collect();
    let half = rss.len() / 2;
    let max = |s: &[f64]| s.iter().cloned().fold(0.0, f64::max);
    let lat = &d["receipt_latency_ms"];
    let n = done["done"].as_f64().unwrap();
    let ours = Ours {
        latency_p50_ms: lat["p50"].as_f64().unwrap_or(f64::NAN),
        latency_p99_ms: lat["p99"].as_f64().unwrap_or(f64::NAN),
        latency_count: lat["count"].as_f64().unwrap_or(0.0),
        batches: n,
        received: d["batches_received"].as_f64().unwrap_or(0.0),
        agent_cpu_s_per_1000: cpu / n * 1000.0,
        trainer_cpu_s_per_1000: done["cpu_s"].as_f64().unwrap() / n * 1000.0,
        rss_peak_mib: max(&rss),
        rss_drift_mib: if half > 0 {
            max(&rss[half..]) - max(&rss[..half])
        } else {
            0.0
        },
        commands: cmd_ms.len() as f64,
        cmd_p50_ms: percentile(&mut cmd_ms, 0.5),
        cmd_p99_ms: percentile(&mut cmd_ms, 0.99),
    };
    agent.kill();
    server.shutdown(Duration::from_secs(5)).await.unwrap();
    ours
}

#[derive(Debug, Default, Clone)]
struct Reference {
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    trainer_cpu_s_per_1000: f64,
    trainer_publish_p50_us: f64,
    raw: Value,
}

/// The reference's paced phase for the cifar shape: ref_server.py and
/// ref_trainer_bench.py from a scratch copy (shared/ is read-only).
fn run_reference(dir: &Path, seconds: u64) -> Option<Reference> {
    let work = std::env::temp_dir().join(format!("tw-ref-{}", std::process::id()));
    let out = work.join("bench.json");
    let script = format!(
        r#"set -e
mkdir -p "$W/stats" && cp "$R"/*.py "$R"/metrics.proto "$W"/ && cd "$W"
"$PY" -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. metrics.proto
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$PY" ref_server.py --port "$PORT" --stats-dir stats --ready-file ready --max-lifetime-s 300 > server.log 2>&1 &
SP=$!
trap 'kill $SP 2>/dev/null; wait $SP 2>/dev/null' EXIT
for _ in $(seq 1 100); do [ -f ready ] && break; sleep 0.1; done
"$PY" ref_trainer_bench.py --port "$PORT" --shape cifar --phases paced --paced-duration {seconds} --stats-dir stats --out "$O" > bench.log 2>&1
"#
    );
    let status = Command::new("bash")
        .args(["-c", &script])
        .env("W", &work)
        .env("R", dir)
        .env("O", &out)
        .env("PY", python())
        .status()
        .ok()?;
    if !status.success() {
        eprintln!(
            "reference run failed ({status}); see {}",
            work.join("bench.log").display()
        );
        return None;
    }
    let raw: Value = serde_json::from_str(&std::fs::read_to_string(&out).ok()?).ok()?;
    let _ = std::fs::remove_dir_all(&work);
    let find = |ptr: &str| raw.pointer(ptr).and_then(Value::as_f64).unwrap_or(f64::NAN);
    Some(Reference {
        latency_p50_ms: find("/phases/paced/server/latency_ms_p50"),
        latency_p99_ms: find("/phases/paced/server/latency_ms_p99"),
        trainer_cpu_s_per_1000: find("/phases/paced/trainer_cpu_s_per_1000_batches"),
        trainer_publish_p50_us: find("/phases/paced/publish_us_p50"),
        raw: raw.clone(),
    })
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let batches = env_u64("TW_BENCH_BATCHES", 600);
    let fps = env_u64("TW_BENCH_FPS", 60);
    let runs = env_u64("TW_BENCH_RUNS", 1).max(1);
    let with_ref = env_u64("TW_BENCH_REF", 1) == 1;
    let ref_dir = common::ref_dir();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut ours = Vec::new();
    let mut refs = Vec::new();
    for i in 0..runs {
        let o = rt.block_on(run_ours(batches, fps));
        eprintln!("run {i}: {o:?}");
        ours.push(o);
        if with_ref {
            let seconds = (batches / fps.max(1)).clamp(5, 60);
            if let Some(r) = run_reference(&ref_dir, seconds) {
                eprintln!("reference {i}: {}", r.raw["phases"]["paced"]);
                refs.push(r);
            }
        }
    }
    let m = |f: fn(&Ours) -> f64| median(ours.iter().map(f).collect());
    let r = |f: fn(&Reference) -> f64| median(refs.iter().map(f).collect());
    let (lat50, lat99) = (m(|o| o.latency_p50_ms), m(|o| o.latency_p99_ms));
    let agent_cpu = m(|o| o.agent_cpu_s_per_1000);
    let ref_cpu = r(|x| x.trainer_cpu_s_per_1000);
    println!(
        "\nagent_e2e: {runs} run(s) of {batches} batches at {fps}/s, 16 x 32x32x3 f32; medians\n"
    );
    println!("| figure | trainwatch | reference | ratio | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| publish → server receipt p50 ms | {lat50:.1} | {:.1} | {:.2} | |",
        r(|x| x.latency_p50_ms),
        lat50 / r(|x| x.latency_p50_ms)
    );
    println!(
        "| publish → server receipt p99 ms | {lat99:.1} | {:.1} | {:.2} | ≤ 5 |",
        r(|x| x.latency_p99_ms),
        lat99 / r(|x| x.latency_p99_ms)
    );
    println!(
        "| CPU s / 1000 batches (agent; reference: trainer) | {agent_cpu:.3} | {ref_cpu:.3} | {:.3} | ≤ 0.2 |",
        agent_cpu / ref_cpu
    );
    println!(
        "| trainer CPU s / 1000 batches (pub.batch side) | {:.3} | {ref_cpu:.3} | {:.3} | |",
        m(|o| o.trainer_cpu_s_per_1000),
        m(|o| o.trainer_cpu_s_per_1000) / ref_cpu
    );
    println!(
        "| reference trainer time per publish p50 µs | | {:.0} | | |",
        r(|x| x.trainer_publish_p50_us)
    );
    println!(
        "| agent RSS peak MiB | {:.1} | | | ≤ 32 |",
        m(|o| o.rss_peak_mib)
    );
    println!(
        "| agent RSS drift MiB (max 2nd half − max 1st half) | {:.2} | | | ~0 |",
        m(|o| o.rss_drift_mib)
    );
    println!(
        "| command → pub.commands() p50 / p99 ms | {:.1} / {:.1} | | | p99 ≤ 100 |",
        m(|o| o.cmd_p50_ms),
        m(|o| o.cmd_p99_ms)
    );
    println!(
        "| batches received by the server / published | {:.0} / {:.0} | | | |",
        m(|o| o.received),
        m(|o| o.batches)
    );
    println!(
        "| latency samples, commands measured | {:.0}, {:.0} | | | |",
        m(|o| o.latency_count),
        m(|o| o.commands)
    );
}
