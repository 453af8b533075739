//! The system of record end to end (issue 14): a Python trainer logs named
//! scalars and epoch metrics through the C ABI into a real segment, the real
//! agent streams them over gRPC to a real server process on a SQLite file,
//! and the history API answers with every point exactly once, also after
//! the server was killed with SIGKILL mid-run and started again on the same
//! file, and also for batches the agent never streamed as frames.

mod util;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::Value;
use util::http::{get, get_json};
use util::proc::ServerProc;
use util::procs::{eventually, AgentProc, Trainer};
use util::{repo_root, TempStore};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn shm_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tw-record")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap()
}

/// The scalars trainer's value of key `m/kNN` at `step`.
fn value(k: u64, step: u64) -> f64 {
    k as f64 * 1000.0 + step as f64 / 4.0
}

/// Its loss at `step` (published as f32).
fn loss(step: u64) -> f64 {
    f64::from((2.0 / (1.0 + step as f64 / 64.0)) as f32)
}

fn trainer(shm: &std::path::Path, run: &str, args: &[&str]) -> Trainer {
    Trainer::start_script(
        &repo_root().join("tests/python/scalars_trainer.py"),
        shm,
        run,
        args,
    )
}

/// The store's row of the one run named `run`, once `pred` holds for it.
async fn run_where(
    http: SocketAddr,
    run: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    eventually(what, || async {
        let list = get_json(http, &format!("/api/runs?q={run}")).await;
        let row = list["runs"]
            .as_array()?
            .iter()
            .find(|r| r["name"] == run)?
            .clone();
        pred(&row).then_some(row)
    })
    .await
}

/// Every exported point of run `id`: (key, step) → every value stored.
async fn export(http: SocketAddr, id: &str) -> BTreeMap<(String, u64), Vec<f64>> {
    let (status, body) = get(http, &format!("/api/runs/{id}/export?format=ndjson")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let mut points: BTreeMap<(String, u64), Vec<f64>> = BTreeMap::new();
    for line in String::from_utf8(body).unwrap().lines() {
        let p: Value = serde_json::from_str(line).expect("an NDJSON line");
        assert_eq!(p["run"], id, "{line}");
        let key = p["key"].as_str().unwrap().to_string();
        let step = p["step"].as_u64().unwrap();
        points
            .entry((key, step))
            .or_default()
            .push(p["value"].as_f64().unwrap());
    }
    points
}

/// Checks that `points` hold exactly the trainer's `keys` series and its
/// loss over `steps` steps, each point once with its value.
fn assert_complete(points: &BTreeMap<(String, u64), Vec<f64>>, keys: u64, steps: u64) {
    let mut missing = Vec::new();
    for step in 0..steps {
        for k in 0..keys {
            match points.get(&(format!("m/k{k:02}"), step)) {
                Some(v) => assert_eq!(v, &vec![value(k, step)], "m/k{k:02} at step {step}"),
                None => missing.push(format!("m/k{k:02}@{step}")),
            }
        }
        match points.get(&("train/loss".to_string(), step)) {
            Some(v) => assert_eq!(v, &vec![loss(step)], "train/loss at step {step}"),
            None => missing.push(format!("train/loss@{step}")),
        }
    }
    assert!(
        missing.is_empty(),
        "{} points missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(
        points.len() as u64,
        steps * (keys + 1),
        "no point beyond what the trainer logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_run_loses_and_doubles_no_point() {
    let store = TempStore::new();
    let place = store.place();
    let listen = format!("127.0.0.1:{}", free_port());
    let args = ["--insecure", "--listen", &listen, "--store", &place];
    let env = [("TRAINWATCH_SERVER_LIMITS__HEARTBEAT_INTERVAL_MS", "200")];
    let server = ServerProc::start(&args, &env);
    let shm = shm_dir();
    let _agent = AgentProc::start_insecure(listen.parse().unwrap(), shm.path(), &[]);
    let (epochs, per_epoch, keys) = (4u64, 150u64, 8u64);
    let steps = epochs * per_epoch;
    let mut t = trainer(
        shm.path(),
        "record",
        &[
            "--epochs",
            &epochs.to_string(),
            "--batches-per-epoch",
            &per_epoch.to_string(),
            "--keys",
            &keys.to_string(),
            "--fps",
            "200",
        ],
    );
    // Kill at a point of the run no test author chose: somewhere in its
    // first half, once the store has committed that many points.
    let seed = fastrand::u64(..);
    let kill_after = fastrand::Rng::with_seed(seed).u64(100..steps * (keys + 1) / 2);
    eprintln!("killing the server once {kill_after} points are stored (seed {seed})");
    run_where(
        server.http,
        "record",
        "points stored before the kill",
        |r| r["points"].as_u64() >= Some(kill_after),
    )
    .await;
    drop(server); // SIGKILL: whatever was not committed is gone.
    let server = ServerProc::start(&args, &env);
    t.wait_exit();
    let row = run_where(
        server.http,
        "record",
        "the run completed in the store",
        |r| r["status"] == "completed" && r["points"].as_u64() == Some(steps * (keys + 1)),
    )
    .await;
    let id = row["id"].as_str().unwrap();
    assert_eq!(row["last_point_seq"].as_u64(), Some(steps * (keys + 1)));
    assert_complete(&export(server.http, id).await, keys, steps);

    let e = get_json(server.http, &format!("/api/runs/{id}/epochs")).await;
    let got: Vec<(u64, f64)> = e["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["epoch"].as_u64().unwrap(),
                e["metrics"]["val/acc"].as_f64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(u64, f64)> = (0..epochs).map(|e| (e, e as f64 / 8.0)).collect();
    assert_eq!(got, want, "every epoch once, with its named metric");
    let s = get_json(server.http, &format!("/api/runs/{id}/statuses")).await;
    let statuses: Vec<&str> = s["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["running", "completed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_batch_loss_is_stored_though_frames_are_paced() {
    let server = ServerProc::start(&["--insecure"], &[]);
    let shm = shm_dir();
    let _agent = AgentProc::start_insecure(server.grpc, shm.path(), &["--max-fps", "60"]);
    let mut t = trainer(
        shm.path(),
        "fastloss",
        &[
            "--epochs",
            "3",
            "--batches-per-epoch",
            "300",
            "--keys",
            "0",
            "--fps",
            "300",
        ],
    );
    t.wait_exit();
    let row = run_where(server.http, "fastloss", "the run completed", |r| {
        r["status"] == "completed" && r["points"].as_u64() == Some(900)
    })
    .await;
    let id = row["id"].as_str().unwrap();
    assert_complete(&export(server.http, id).await, 0, 900);
    // The frames the agent streamed were far fewer: the loss chart no
    // longer depends on them.
    let list = get_json(server.http, "/api/sessions").await;
    let session = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .expect("the live session")
        .clone();
    let d = get_json(
        server.http,
        &format!("/api/sessions/{}", session["id"].as_str().unwrap()),
    )
    .await;
    let frames = d["batches_received"].as_u64().unwrap();
    assert!(
        frames < 900,
        "{frames} frames for 900 batches at max_fps 60"
    );
}

/// Longer than the readable part of a session id: the store keeps the
/// whole name (TrainingConfig.run_name) and finds the run by it.
const IMGS: &str = "imgs_sampled_every_second_in_a_sweep_of_resnet18_runs";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_samples_and_the_command_log_are_kept() {
    let env = [("TRAINWATCH_SERVER_STORE__IMAGES_EVERY_S", "1")];
    let server = ServerProc::start(&["--insecure"], &env);
    let shm = shm_dir();
    let _agent = AgentProc::start_insecure(server.grpc, shm.path(), &[]);
    let mut t = trainer(
        shm.path(),
        IMGS,
        &[
            "--epochs",
            "3",
            "--batches-per-epoch",
            "60",
            "--keys",
            "1",
            "--fps",
            "60",
        ],
    );
    let row = run_where(server.http, IMGS, "the run is stored", |r| {
        r["points"].as_u64() > Some(0)
    })
    .await;
    let id = row["id"].as_str().unwrap().to_string();
    let (status, answer) = util::http::post_json(
        server.http,
        &format!("/api/sessions/{id}/commands"),
        &[("X-Trainwatch-User", "alice")],
        &serde_json::json!({"type": "change_learning_rate", "parameters": {"learning_rate": "0.01"}}),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    t.wait_exit();
    run_where(server.http, IMGS, "the run completed", |r| {
        r["status"] == "completed"
    })
    .await;

    // Kept with when the agent delivered it (this trainer never takes
    // commands, so it is never applied).
    let c = eventually("the command stored delivered", || async {
        let c = get_json(server.http, &format!("/api/runs/{id}/commands")).await;
        c["commands"][0]["delivered_ms"].is_i64().then_some(c)
    })
    .await;
    let commands = c["commands"].as_array().unwrap();
    assert_eq!(commands.len(), 1, "{c}");
    assert_eq!(commands[0]["who"], "alice");
    assert!(commands[0]["applied_ms"].is_null(), "{c}");
    assert_eq!(commands[0]["id"], answer["command_id"]);
    let what: Value = serde_json::from_str(commands[0]["what"].as_str().unwrap()).unwrap();
    assert_eq!(what["type"], "CHANGE_LEARNING_RATE");
    assert_eq!(what["parameters"]["learning_rate"], "0.01");

    // Every epoch's last frame, and one at most every second besides.
    let im = get_json(server.http, &format!("/api/runs/{id}/images")).await;
    let images = im["images"].as_array().unwrap();
    let epochs: std::collections::BTreeSet<u64> = images
        .iter()
        .map(|i| i["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, [0, 1, 2].into(), "{im}");
    assert!(
        images.len() <= 3 + 4,
        "{} samples of a 3 s run",
        images.len()
    );
    let last_of_run = images.last().unwrap();
    assert_eq!(last_of_run["epoch"], 2);
    for i in images {
        assert_eq!(i["jpegs"].as_array().unwrap().len(), 4, "{i}");
        assert_eq!(i["labels"], serde_json::json!([0, 1, 0, 1]));
        assert_eq!(i["predictions"].as_array().unwrap().len(), 4);
    }
    let url = images[0]["jpegs"][0]["url"].as_str().unwrap();
    let (status, jpeg) = get(server.http, url).await;
    assert_eq!(status, 200);
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "a JPEG");
}
