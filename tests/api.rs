//! The run store's HTTP API (src/server/api.rs) over a real SQLite file in
//! a temp dir, filled through `Store::apply`, served by axum on a loopback
//! port and asked with real HTTP requests; and the retention task.

mod util;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use trainwatch::server::api;
use trainwatch::server::http::ControlPolicy;
use trainwatch::server::store::{
    self, CommandRecord, EpochRecord, ImageSample, PerfSample, Point, Prediction, Retention,
    RunRecord, RunStatus, StatusRecord, Store, StoreOptions, Write,
};
use util::http::{get, get_json, request};
use util::TEST_TIMEOUT;

const NOW_MS: i64 = 1_704_067_200_000;

struct Served {
    _dir: Option<tempfile::TempDir>,
    store: Arc<dyn Store>,
    addr: SocketAddr,
}

async fn serve(token: Option<&str>) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let place = dir.path().join("trainwatch.db").display().to_string();
    serve_at(&place, token, Some(dir)).await
}

async fn serve_at(place: &str, token: Option<&str>, dir: Option<tempfile::TempDir>) -> Served {
    let store = store::open(place, StoreOptions::default()).await.unwrap();
    let router = api::routes(
        store.clone(),
        ControlPolicy {
            token: token.map(str::to_string),
            loopback: true,
            read_token: false,
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Served {
        _dir: dir,
        store,
        addr,
    }
}

fn run(id: &str, device: &str, created_ms: i64) -> Write {
    Write::Run(RunRecord {
        id: id.into(),
        device: device.into(),
        name: format!("{id} name"),
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

async fn apply_ok(s: &dyn Store, writes: Vec<Write>) {
    for r in s.apply(writes).await.expect("commits") {
        r.expect("write accepted");
    }
}

/// A finished run "r1" with two statuses, an epoch, 200 points of two
/// keys, a perf sample, a command and an image sample.
async fn fill(s: &dyn Store) {
    let jpeg = vec![0xFF, 0xD8, 1, 2, 3, 0xFF, 0xD9];
    apply_ok(
        s,
        vec![
            run("r1", "jetson-1", NOW_MS),
            run("r2", "jetson-2", NOW_MS + 1),
            status("r1", 1, RunStatus::Running, NOW_MS),
            Write::Epoch {
                run: "r1".into(),
                record: EpochRecord {
                    seq: 2,
                    epoch: 0,
                    wall_ms: NOW_MS + 5,
                    metrics: BTreeMap::from([("val_acc".into(), 0.9)]),
                },
            },
            status("r1", 3, RunStatus::Completed, NOW_MS + 10),
            points("r1", "train/loss", 1, 100),
            points("r1", "lr", 101, 100),
            Write::Perf {
                run: "r1".into(),
                samples: vec![PerfSample {
                    wall_ms: NOW_MS,
                    fps: Some(30.0),
                    ..PerfSample::default()
                }],
            },
            Write::Command {
                run: "r1".into(),
                record: CommandRecord {
                    id: 1,
                    who: "alice".into(),
                    when_ms: NOW_MS,
                    what: r#"{"type":"PAUSE_TRAINING"}"#.into(),
                    delivered_ms: None,
                    applied_ms: None,
                },
            },
            Write::Image {
                run: "r1".into(),
                sample: ImageSample {
                    epoch: 0,
                    step: 42,
                    wall_ms: NOW_MS,
                    jpegs: vec![bytes::Bytes::from(jpeg)],
                    predictions: vec![Prediction {
                        class: 3,
                        confidence: 0.75,
                    }],
                    labels: vec![3],
                },
            },
        ],
    )
    .await;
}

fn error_of(status: u16, body: &[u8]) -> (u16, String) {
    let v: Value = serde_json::from_slice(body).expect("JSON error body");
    (
        status,
        v["error"].as_str().expect("error field").to_string(),
    )
}

async fn get_err(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, body) = get(addr, path).await;
    error_of(status, &body)
}

/// The status line and headers of `GET path`, lower-cased (the shared
/// client returns only the body).
async fn response_head(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        c.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        c.read_to_end(&mut buf).await.unwrap();
        let end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("header end");
        String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase()
    })
    .await
    .expect("response in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_serves_what_the_store_holds() {
    every_endpoint(serve(None).await).await;
}

/// The same against PostgreSQL, when the harness can start a server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_serves_what_the_store_holds_postgres() {
    let Some(cluster) = util::postgres::cluster_or_skip("api_every_endpoint") else {
        return;
    };
    let url = cluster.fresh_db().await;
    every_endpoint(serve_at(&url, None, None).await).await;
}

async fn every_endpoint(s: Served) {
    fill(&*s.store).await;
    let a = s.addr;

    let runs = get_json(a, "/api/runs").await;
    let ids: Vec<_> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(ids, vec!["r2", "r1"], "newest first");
    assert!(runs["next_cursor"].is_null());
    let page = get_json(a, "/api/runs?limit=1").await;
    assert_eq!(page["runs"][0]["id"], "r2");
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let next = get_json(a, &format!("/api/runs?limit=1&cursor={cursor}")).await;
    assert_eq!(next["runs"][0]["id"], "r1");
    let done = get_json(a, "/api/runs?status=completed").await;
    assert_eq!(done["runs"].as_array().unwrap().len(), 1);
    assert_eq!(
        get_json(a, "/api/runs?device=jetson-2").await["runs"][0]["id"],
        "r2"
    );

    // Beside each summary: last loss, FPS, the best of a chosen metric
    // (lr: larger is better by its name, or as asked), the page's keys.
    let fig = get_json(a, "/api/runs?metric=lr").await;
    assert_eq!(fig["keys"], json!(["lr", "train/loss"]));
    let f1 = &fig["runs"][1]["figures"];
    assert_eq!(f1["last_loss"], 50.0, "{f1}");
    assert_eq!(f1["fps"], 30.0, "{f1}");
    assert_eq!(
        f1["metric"],
        json!({"key": "lr", "goal": "max", "best": 100.0, "last": 100.0})
    );
    assert_eq!(
        fig["runs"][0]["figures"],
        json!({"last_loss": null, "fps": null, "metric": null})
    );
    let low = get_json(a, "/api/runs?metric=lr&goal=min").await;
    assert_eq!(low["runs"][1]["figures"]["metric"]["best"], 50.5);
    let loss = get_json(a, "/api/runs?metric=train/loss").await;
    assert_eq!(loss["runs"][1]["figures"]["metric"]["goal"], "min");
    assert_eq!(loss["runs"][1]["figures"]["metric"]["best"], 0.5);

    let r1 = get_json(a, "/api/runs/r1").await;
    assert_eq!(r1["status"], "completed");
    assert_eq!(r1["device"], "jetson-1");
    assert_eq!(r1["points"], 200);
    assert_eq!(r1["last_point_seq"], 200);

    let sc = get_json(a, "/api/runs/r1/scalars?keys=train/loss&points=10").await;
    let series = sc["series"].as_array().unwrap();
    assert_eq!(series.len(), 1);
    assert_eq!(series[0]["key"], "train/loss");
    let buckets = series[0]["buckets"].as_array().unwrap();
    assert!(buckets.len() <= 10, "{} buckets", buckets.len());
    let count: u64 = buckets.iter().map(|b| b["count"].as_u64().unwrap()).sum();
    assert_eq!(count, 100, "every point in some bucket");
    let zoom = get_json(a, "/api/runs/r1/scalars?keys=train/loss&from=10&to=19").await;
    assert_eq!(zoom["series"][0]["buckets"].as_array().unwrap().len(), 10);
    let both = get_json(a, "/api/runs/r1/scalars?keys=train/loss,lr").await;
    assert_eq!(both["series"].as_array().unwrap().len(), 2);

    let ep = get_json(a, "/api/runs/r1/epochs").await;
    assert_eq!(ep["epochs"][0]["metrics"]["val_acc"], 0.9);
    let st = get_json(a, "/api/runs/r1/statuses").await;
    let st: Vec<_> = st["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].clone())
        .collect();
    assert_eq!(st, vec!["running", "completed"]);
    let cmd = get_json(a, "/api/runs/r1/commands").await;
    assert_eq!(cmd["commands"][0]["who"], "alice");
    let perf = get_json(a, &format!("/api/runs/r1/perf?from={NOW_MS}&to={NOW_MS}")).await;
    assert_eq!(perf["perf"][0]["fps"], 30.0);
    assert!(
        perf["perf"][0]["gpu_percent"].is_null(),
        "absent is null, not 0"
    );
    let none = get_json(a, &format!("/api/runs/r1/perf?from={}", NOW_MS + 1)).await;
    assert_eq!(none["perf"].as_array().unwrap().len(), 0);

    let img = get_json(a, "/api/runs/r1/images?from=0&to=100").await;
    let sample = &img["images"][0];
    assert_eq!(sample["step"], 42);
    assert_eq!(sample["labels"][0], 3);
    let url = sample["jpegs"][0]["url"].as_str().unwrap().to_string();
    let (code, bytes) = get(a, &url).await;
    assert_eq!(code, 200);
    assert_eq!(bytes, vec![0xFF, 0xD8, 1, 2, 3, 0xFF, 0xD9]);
    assert_eq!(
        get_json(a, "/api/runs/r1/images?from=43").await["images"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let zeros = "0".repeat(64);
    let (code, msg) = get_err(a, &format!("/api/runs/r1/images/42/{zeros}")).await;
    assert_eq!(code, 404);
    assert!(msg.contains(&zeros), "{msg}");

    // A known run with nothing stored answers empty lists, not 404.
    assert_eq!(
        get_json(a, "/api/runs/r2/epochs").await["epochs"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_400_and_unknown_runs_404_naming_them() {
    let s = serve(None).await;
    fill(&*s.store).await;
    let a = s.addr;
    for (path, names) in [
        ("/api/runs?status=done", ["status", "done"]),
        ("/api/runs?limit=0", ["limit", "0"]),
        ("/api/runs?limit=abc", ["limit", "abc"]),
        ("/api/runs?cursor=nonsense", ["cursor", "nonsense"]),
        ("/api/runs?colour=red", ["colour", "red"]),
        ("/api/runs?sort=colour", ["sort", "colour"]),
        ("/api/runs?sort=name&order=up", ["order", "up"]),
        ("/api/runs?metric=val%20acc", ["metric", "val acc"]),
        ("/api/runs?metric=lr&goal=best", ["goal", "best"]),
        ("/api/runs?sort=name&cursor=1700.r1", ["cursor", "1700.r1"]),
        ("/api/runs/r1/scalars?points=0", ["points", "0"]),
        ("/api/runs/r1/scalars?points=many", ["points", "many"]),
        ("/api/runs/r1/scalars?from=9&to=3", ["to", "3"]),
        ("/api/runs/r1/scalars?keys=a,,b", ["keys", "a,,b"]),
        ("/api/runs/r1/export?format=xml", ["format", "xml"]),
        ("/api/runs/r1/perf?from=yesterday", ["from", "yesterday"]),
        ("/api/runs/r1/images/x/ab", ["step", "x"]),
    ] {
        let (code, msg) = get_err(a, path).await;
        assert_eq!(code, 400, "{path}: {msg}");
        for n in names {
            assert!(msg.contains(n), "{path}: {msg:?} names {n}");
        }
    }
    for path in [
        "/api/runs/ghost",
        "/api/runs/ghost/scalars",
        "/api/runs/ghost/export?format=csv",
        "/api/runs/ghost/images",
        "/api/runs/ghost/commands",
        "/api/runs/ghost/statuses",
        "/api/runs/ghost/epochs",
        "/api/runs/ghost/perf",
    ] {
        let (code, msg) = get_err(a, path).await;
        assert_eq!(code, 404, "{path}: {msg}");
        assert!(msg.contains("ghost"), "{path}: {msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_streams_every_point_complete_in_both_formats() {
    let s = serve(None).await;
    let n = 100_000u64;
    let mut writes = vec![run("big", "jetson-1", NOW_MS)];
    for chunk in 0..n / 10_000 {
        writes.push(points("big", "train/loss", chunk * 10_000 + 1, 10_000));
    }
    apply_ok(&*s.store, writes).await;

    // util::http::get decodes the chunked body, and panics on a truncated one.
    let (code, body) = get(s.addr, "/api/runs/big/export?format=ndjson").await;
    assert_eq!(code, 200);
    let lines: Vec<Value> = body
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len() as u64, n);
    for (i, l) in lines.iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!(l["key"], "train/loss");
        assert_eq!(l["step"], seq as i64, "line {i}");
        assert_eq!(l["wall_ms"], NOW_MS + seq as i64);
        assert_eq!(l["value"], seq as f64 * 0.5);
    }

    let (code, raw) = get(s.addr, "/api/runs/big/export?format=csv").await;
    assert_eq!(code, 200);
    let body = String::from_utf8(raw).unwrap();
    let mut rows = body.lines();
    assert_eq!(rows.next(), Some("run,key,step,wall_ms,value"));
    assert_eq!(
        rows.next(),
        Some(format!("big,train/loss,1,{},0.5", NOW_MS + 1).as_str())
    );
    assert_eq!(rows.count() as u64, n - 1);

    let head = response_head(s.addr, "/api/runs/big/export?format=csv").await;
    assert!(head.contains("content-type: text/csv"), "{head}");
    assert!(
        head.contains("content-disposition: attachment; filename=\"big.csv\""),
        "{head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_needs_the_token_and_removes_the_run() {
    let s = serve(Some("s3cret")).await;
    fill(&*s.store).await;
    let a = s.addr;
    let (code, body) = request(a, "DELETE", "/api/runs/r1", &[], b"").await;
    assert_eq!(error_of(code, &body).0, 401);
    let (code, _) = request(
        a,
        "DELETE",
        "/api/runs/r1",
        &[("Authorization", "Bearer wrong")],
        b"",
    )
    .await;
    assert_eq!(code, 401);
    let cross = [
        ("Authorization", "Bearer s3cret"),
        ("Origin", "http://evil.example"),
    ];
    let (code, _) = request(a, "DELETE", "/api/runs/r1", &cross, b"").await;
    assert_eq!(code, 403, "cross-origin DELETE refused");
    assert_eq!(get_json(a, "/api/runs/r1").await["id"], "r1", "still there");

    let ok = [("Authorization", "Bearer s3cret")];
    let (code, body) = request(a, "DELETE", "/api/runs/r1", &ok, b"").await;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(get_err(a, "/api/runs/r1").await.0, 404);
    assert_eq!(get_err(a, "/api/runs/r1/scalars").await.0, 404);
    assert!(s.store.run("r1").await.unwrap().is_none());
    let (code, body) = request(a, "DELETE", "/api/runs/r1", &ok, b"").await;
    let (code, msg) = error_of(code, &body);
    assert_eq!(code, 404);
    assert!(msg.contains("r1"), "{msg}");
    assert_eq!(
        get_json(a, "/api/runs/r2").await["id"],
        "r2",
        "others untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_without_a_token_is_refused_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let place = dir.path().join("t.db").display().to_string();
    let store = store::open(&place, StoreOptions::default()).await.unwrap();
    apply_ok(&*store, vec![run("r1", "d", NOW_MS)]).await;
    let router = api::routes(
        store.clone(),
        ControlPolicy {
            token: None,
            loopback: false,
            read_token: false,
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let (code, _) = request(addr, "DELETE", "/api/runs/r1", &[], b"").await;
    assert_eq!(code, 403);
    assert!(store.run("r1").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_task_removes_old_finished_runs_and_nothing_else() {
    let s = serve(None).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let day = 86_400_000;
    apply_ok(
        &*s.store,
        vec![
            run("old", "d", now - 40 * day),
            status("old", 1, RunStatus::Completed, now - 35 * day),
            run("recent", "d", now - 2 * day),
            status("recent", 1, RunStatus::Completed, now - day),
            run("live", "d", now - 60 * day),
            status("live", 1, RunStatus::Running, now - 60 * day),
        ],
    )
    .await;
    let cancel = CancellationToken::new();
    let task = tokio::spawn(store::retention::run(
        s.store.clone(),
        Retention {
            keep_days: 30,
            image_quota_bytes: 0,
        },
        Duration::from_millis(20),
        cancel.clone(),
    ));
    let deadline = tokio::time::Instant::now() + TEST_TIMEOUT;
    while s.store.run("old").await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(s.store.run("recent").await.unwrap().is_some());
    assert!(
        s.store.run("live").await.unwrap().is_some(),
        "live runs are kept"
    );
    cancel.cancel();
    tokio::time::timeout(TEST_TIMEOUT, task)
        .await
        .expect("stops when cancelled")
        .unwrap();
}
