//! The dashboard in a real browser (issue 16's figures): Debian's chromium,
//! driven by tests/browser/dashboard.mjs (scenario `bench`), against an
//! in-process server on a SQLite store filled here.
//!
//! - runs page with `TW_DASH_RUNS` (10,000) stored runs: first contentful
//!   paint, and the time until the first page of the table is drawn and
//!   its filter answers (interactive);
//! - run page of one run with a `TW_DASH_LOSS` (1,000,000)-point
//!   `train/loss` and `TW_DASH_KEYS` (10) named scalars of
//!   `TW_DASH_POINTS` (100,000) points: time until every chart is drawn.
//!
//! - live freshness: `TW_DASH_LIVE` (5) Python trainers publishing at
//!   `TW_DASH_LIVE_FPS` (60) batches/s through a real agent, the compare
//!   page open on their runs: each drawn batch's trainer wall clock (its
//!   logged `train/loss` point) → painted, for `TW_DASH_FRESH_S` (10) s
//!   after a 2 s warm-up.
//!
//! Each page is loaded `TW_DASH_LOADS` (5) times; median and worst are
//! printed, and every figure goes to `TW_DASH_OUT`
//! (target/dashboard-bench.json). Goals: runs page interactive ≤ 1 s, run
//! page charts ≤ 1 s, freshness p99 ≤ 100 ms. `cargo bench --bench dashboard` (needs chromium and
//! `npm ci` in tests/browser, as the dashboard tests do).

mod common;
#[path = "../tests/util/mod.rs"]
#[allow(unused_imports)]
mod util;

use std::time::Instant;

use serde_json::Value;
use trainwatch::config::ServerSettings;
use trainwatch::server::store::{self, Point, RunRecord, StoreOptions, Write};
use trainwatch::server::Server;

use common::{env_str, env_u64};

const BIG: &str = "bench:big-run:1796000000000";

fn run(id: &str, name: &str, i: i64) -> Write {
    Write::Run(RunRecord {
        id: id.into(),
        device: format!("jetson-{}", i % 20),
        name: name.into(),
        model: "resnet18".into(),
        dataset: "cifar10".into(),
        config: r#"{"batch_size": 64}"#.into(),
        created_ms: 1_796_000_000_000 + i,
        owner: None,
    })
}

async fn fill(place: &str, runs: u64, loss: i64, keys: u64, points: i64) {
    let s = store::open(place, StoreOptions::default()).await.unwrap();
    let t = Instant::now();
    for chunk in (0..runs as i64).collect::<Vec<_>>().chunks(1000) {
        let writes = chunk
            .iter()
            .map(|&i| {
                run(
                    &format!("bench:run-{i:05}:1796000000000"),
                    &format!("run-{i:05}"),
                    i,
                )
            })
            .collect();
        for r in s.apply(writes).await.unwrap() {
            r.unwrap();
        }
    }
    for r in s
        .apply(vec![run(BIG, "big-run", runs as i64)])
        .await
        .unwrap()
    {
        r.unwrap();
    }
    let mut seq = 1u64;
    let mut series = vec![("train/loss".to_string(), loss)];
    series.extend((0..keys).map(|k| (format!("metric/k{k:02}"), points)));
    for (key, n) in series {
        for start in (0..n).step_by(50_000) {
            let end = (start + 50_000).min(n);
            let pts: Vec<Point> = (start..end)
                .map(|step| Point {
                    key: key.clone(),
                    step,
                    wall_ms: 1_796_000_000_000 + step,
                    value: (step as f64 * 0.001).sin() + 1.0 / (1.0 + step as f64 * 1e-4),
                })
                .collect();
            let len = pts.len() as u64;
            let w = Write::Points {
                run: BIG.into(),
                first_seq: seq,
                points: pts,
            };
            for r in s.apply(vec![w]).await.unwrap() {
                r.unwrap();
            }
            seq += len;
        }
    }
    println!(
        "store filled: {runs} runs, {} points in {:.1} s",
        seq - 1,
        t.elapsed().as_secs_f64()
    );
}

fn median_max(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    (s[s.len() / 2], *s.last().unwrap())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs = env_u64("TW_DASH_RUNS", 10_000);
    let loss = env_u64("TW_DASH_LOSS", 1_000_000) as i64;
    let keys = env_u64("TW_DASH_KEYS", 10);
    let points = env_u64("TW_DASH_POINTS", 100_000) as i64;
    let loads = env_u64("TW_DASH_LOADS", 5);
    let out = env_str("TW_DASH_OUT", "target/dashboard-bench.json");
    let dir = util::repo_root().join("tests/browser");
    let chromium =
        std::env::var("TRAINWATCH_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !dir.join("node_modules/playwright-core").exists()
        || !std::path::Path::new(&chromium).exists()
    {
        eprintln!("dashboard bench SKIPPED: needs {chromium} and `npm ci` in tests/browser");
        return;
    }
    let place = util::TempStore::new();
    fill(&place.place(), runs, loss, keys, points).await;
    let mut settings = ServerSettings::local_insecure();
    settings.store.place = Some(place.place());
    let server = Server::start(&settings).await.expect("server starts");
    let args = serde_json::json!({
        "url": format!("http://127.0.0.1:{}", server.http_addr.port()),
        "session": BIG, "scenario": "bench", "loads": loads,
        "charts": keys + 1, "timeout_ms": 300_000,
    });
    // The script's own failure, or none in time, panics naming it.
    let mut browser = util::browser::Browser::start(args);
    let mut r = browser.expect("result").await;
    drop(browser);
    // Then the live runs (started only now, so they do not load the pages
    // measured above): an agent, its trainers, the compare page on them.
    let live_runs = env_u64("TW_DASH_LIVE", 5);
    let fps = env_u64("TW_DASH_LIVE_FPS", 60).to_string();
    let fresh_s = env_u64("TW_DASH_FRESH_S", 10);
    if live_runs > 0 {
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        let agent = util::procs::AgentProc::start_insecure(server.grpc_addr, shm.path(), &[]);
        let seconds = (fresh_s + 120).to_string();
        let trainers: Vec<_> = (0..live_runs)
            .map(|i| {
                let args = [
                    "--run-until-stopped",
                    "--fps",
                    &fps,
                    "--max-seconds",
                    &seconds,
                ];
                util::procs::Trainer::start(shm.path(), &format!("live-{i}"), &args)
            })
            .collect();
        let http = server.http_addr;
        let live: Vec<String> = util::procs::eventually("every live run's session", || async {
            let list = util::http::get_json(http, "/api/sessions").await;
            let ids: Vec<String> = list["sessions"]
                .as_array()?
                .iter()
                .filter(|s| s["batches_received"].as_u64() > Some(0))
                .filter_map(|s| s["id"].as_str().map(str::to_string))
                .collect();
            (ids.len() as u64 == live_runs).then_some(ids)
        })
        .await;
        let mut browser = util::browser::Browser::start(serde_json::json!({
            "url": format!("http://127.0.0.1:{}", http.port()),
            "session": live[0], "scenario": "freshness", "live": live, "fresh_s": fresh_s,
            "timeout_ms": 60_000 + fresh_s * 1000,
        }));
        let f = browser.expect("result").await;
        drop(browser);
        drop(trainers);
        drop(agent);
        r["fresh"] = f["fresh"].clone();
        r["fresh_live"] = f["fresh_live"].clone();
    }
    server
        .shutdown(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    let nums = |k: &str| -> Vec<f64> {
        r[k].as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    println!("\n| page | figure | median ms | worst ms | goal |\n|---|---|---|---|---|");
    for (page, k, goal) in [
        ("runs page, {runs} runs", "runs_fcp", "—"),
        ("runs page, {runs} runs", "runs_interactive", "≤ 1000"),
        ("run page, 1 + {keys} series", "run_fcp", "—"),
        ("run page, 1 + {keys} series", "run_charts", "≤ 1000"),
    ] {
        let v = nums(k);
        if v.is_empty() {
            continue;
        }
        let (m, w) = median_max(&v);
        let page = page
            .replace("{runs}", &runs.to_string())
            .replace("{keys}", &keys.to_string());
        println!("| {page} | {k} | {m:.0} | {w:.0} | {goal} |");
    }
    println!("points drawn on the run page: {}", r["run_points"]);
    let mut fresh = nums("fresh");
    if !fresh.is_empty() {
        fresh.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| {
            fresh[((p / 100.0 * fresh.len() as f64).ceil() as usize).clamp(1, fresh.len()) - 1]
        };
        println!(
            "live freshness, compare page on {} live runs at {fps} batches/s: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms over {} drawn batches (goal p99 ≤ 100)",
            r["fresh_live"],
            pct(50.0),
            pct(99.0),
            fresh[fresh.len() - 1],
            fresh.len()
        );
    }
    std::fs::write(&out, serde_json::to_string_pretty(&r).unwrap()).unwrap();
    println!("figures: {out}");
}
