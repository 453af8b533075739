//! `trainwatch demo` as a newcomer runs it, seen through the HTTP API; and
//! `examples/train_digits.py` against a live agent and server.

mod util;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use util::http::{get_json, post_json};
use util::procs::eventually;
use util::TEST_TIMEOUT;

/// A `trainwatch demo` process; killed when dropped.
struct Demo {
    child: Option<Child>,
    http: SocketAddr,
    shm_dir: PathBuf,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        let mut child = Command::new(util::trainwatch_bin())
            .args(["demo", "--http-port", "0", "--grpc-port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn trainwatch demo");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = loop {
            match rx.recv_timeout(TEST_TIMEOUT) {
                Ok(l) if l.starts_with("listening ") => break l,
                Ok(_) => continue,
                Err(_) => {
                    let _ = child.kill();
                    panic!("demo did not print its listening line");
                }
            }
        };
        let field = |name: &str| -> String {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                .to_string()
        };
        Demo {
            http: field("http=").parse().unwrap(),
            shm_dir: field("shm_dir=").into(),
            child: Some(child),
        }
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        let child = self.child.take().unwrap();
        util::proc::signal(child.id(), "TERM");
        util::proc::wait_timeout(child).expect("demo did not exit after SIGTERM")
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The only session, once it has `epochs` epoch summaries.
async fn session_with_epochs(http: SocketAddr, epochs: usize) -> Value {
    eventually(&format!("a session with {epochs} epochs"), || async {
        let list = get_json(http, "/api/sessions").await;
        let id = list["sessions"].get(0)?["id"].as_str()?.to_string();
        let s = get_json(http, &format!("/api/sessions/{id}")).await;
        (s["epoch_history"].as_array()?.len() >= epochs).then_some(s)
    })
    .await
}

async fn detail(http: SocketAddr, id: &str) -> Value {
    get_json(http, &format!("/api/sessions/{id}")).await
}

async fn command(http: SocketAddr, id: &str, body: Value) {
    let (status, answer) =
        post_json(http, &format!("/api/sessions/{id}/commands"), &[], &body).await;
    assert_eq!(status, 202, "{body}: {answer}");
}

async fn wait_status(http: SocketAddr, id: &str, status: &str) {
    eventually(&format!("status {status}"), || async {
        (detail(http, id).await["status"] == status).then_some(())
    })
    .await
}

/// Loss falls and accuracy rises from the first epoch to the last.
fn assert_learned(s: &Value) {
    let epochs = s["epoch_history"].as_array().unwrap();
    let (first, last) = (&epochs[0], epochs.last().unwrap());
    let f = |e: &Value, k: &str| e[k].as_f64().unwrap();
    assert!(
        f(last, "average_loss") < f(first, "average_loss") * 0.9,
        "loss did not fall: {epochs:?}"
    );
    assert!(
        f(last, "average_accuracy") > f(first, "average_accuracy") + 0.1,
        "accuracy did not rise: {epochs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_trains_and_obeys_pause_resume_and_stop() {
    let demo = Demo::start(&[
        "--duration",
        "55",
        "--epochs",
        "1000",
        "--batches-per-epoch",
        "10",
        "--speed",
        "40",
    ]);
    let http = demo.http;
    assert!(demo.shm_dir.is_dir(), "{}", demo.shm_dir.display());
    let s = session_with_epochs(http, 2).await;
    let id = s["id"].as_str().unwrap().to_string();
    assert_eq!(s["status"], "RUNNING");
    assert_eq!(s["config"]["model_name"], "softmax-regression");
    assert!(s["batches_received"].as_u64().unwrap() > 0);
    let batch = &s["last_batch"];
    assert_eq!(batch["images"], 16, "{batch}");
    assert_eq!(batch["predictions"].as_array().unwrap().len(), 16);

    // Pause: once PAUSED is reported and frames in flight have landed, the
    // batch counter stands still for a window in which ~40 batches would
    // otherwise have come. The agent's figures (one PerformanceData a
    // second, stamped with its clock, on the stream the frames take) are
    // the clock: settled is no new batch between two samples, and the
    // window is a second of samples after that.
    command(http, &id, json!({"type": "pause"})).await;
    wait_status(http, &id, "PAUSED").await;
    let sample = |s: &Value| -> Option<(u64, u64)> {
        Some((
            s["performance"]["timestamp_ms"].as_u64()?,
            s["batches_received"].as_u64()?,
        ))
    };
    let last = std::cell::Cell::new(sample(&detail(http, &id).await));
    let (settled_ms, paused_at) = eventually("batches to settle after PAUSED", || async {
        let (t, now) = sample(&detail(http, &id).await)?;
        match last.get() {
            Some((t0, _)) if t == t0 => None,
            Some((_, before)) if before == now => Some((t, now)),
            _ => {
                last.set(Some((t, now)));
                None
            }
        }
    })
    .await;
    let s = eventually("a second of figures while paused", || async {
        let s = detail(http, &id).await;
        (sample(&s)?.0 >= settled_ms + 1000).then_some(s)
    })
    .await;
    assert_eq!(
        s["batches_received"].as_u64().unwrap(),
        paused_at,
        "batches while paused"
    );
    assert_eq!(s["status"], "PAUSED");

    command(http, &id, json!({"type": "resume"})).await;
    wait_status(http, &id, "RUNNING").await;
    eventually("batches after resume", || async {
        (detail(http, &id).await["batches_received"]
            .as_u64()
            .unwrap()
            > paused_at + 5)
            .then_some(())
    })
    .await;

    // A new learning rate is applied and reported.
    command(
        http,
        &id,
        json!({"type": "CHANGE_LEARNING_RATE", "parameters": {"learning_rate": "0.003"}}),
    )
    .await;
    eventually("the new learning rate reported", || async {
        let s = detail(http, &id).await;
        let history = s["status_history"].as_array()?.clone();
        history
            .iter()
            .any(|h| h["message"].as_str() == Some("learning rate set to 0.003"))
            .then_some(())
    })
    .await;

    // The demo records into its store: every batch's loss and the named
    // scalars it logs, the learning rate as changed.
    eventually("train/lr at 0.003 in the store", || async {
        let s = get_json(
            http,
            &format!("/api/runs/{id}/scalars?keys=train/lr,train/loss"),
        )
        .await;
        let series = s["series"].as_array()?;
        let lr = series.iter().find(|x| x["key"] == "train/lr")?;
        let last = lr["buckets"].as_array()?.last()?["last"].as_f64()?;
        let has_loss = series.iter().any(|x| x["key"] == "train/loss");
        (has_loss && (last - 0.003).abs() < 1e-6).then_some(())
    })
    .await;

    // Enough epochs that the model has visibly learned.
    let s = session_with_epochs(http, 8).await;
    assert_learned(&s);

    command(
        http,
        &id,
        json!({"type": "stop", "parameters": {"grace_period_s": "0"}}),
    )
    .await;
    wait_status(http, &id, "COMPLETED").await;

    let shm_dir = demo.shm_dir.clone();
    let status = demo.terminate();
    assert!(status.success(), "demo exit: {status}");
    assert!(!shm_dir.exists(), "{} left behind", shm_dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_digits_example_streams_two_epochs_and_completes() {
    use trainwatch::config::ServerSettings;
    use trainwatch::server::Server;
    let server = Server::start(&ServerSettings::local_insecure())
        .await
        .expect("server starts");
    let shm = tempfile::tempdir().unwrap();
    let _agent = util::procs::AgentProc::start_insecure(server.grpc_addr, shm.path(), &[]);
    let mut trainer = Command::new(util::python())
        .arg(util::repo_root().join("examples/train_digits.py"))
        .args(["--epochs", "2", "--speed", "100", "--run", "digits"])
        .args(["--shm-dir", shm.path().to_str().unwrap()])
        .env("TRAINWATCH_LIB", util::procs::lib_path())
        .env("PYTHONPATH", util::repo_root().join("python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn examples/train_digits.py");
    let http = server.http_addr;
    let id = eventually("the digits session", || async {
        let list = get_json(http, "/api/sessions").await;
        let id = list["sessions"].get(0)?["id"].as_str()?.to_string();
        id.contains(":digits.").then_some(id)
    })
    .await;
    let status = tokio::task::spawn_blocking(move || {
        let (tx, rx) = std::sync::mpsc::channel();
        let pid = trainer.id();
        std::thread::spawn(move || {
            let _ = tx.send(trainer.wait());
        });
        rx.recv_timeout(TEST_TIMEOUT).unwrap_or_else(|_| {
            util::proc::signal(pid, "KILL");
            panic!("train_digits.py did not finish 2 epochs");
        })
    })
    .await
    .unwrap()
    .unwrap();
    assert!(status.success(), "train_digits.py: {status}");
    wait_status(http, &id, "COMPLETED").await;
    let s = detail(http, &id).await;
    assert!(s["batches_received"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["config"]["dataset_name"], "sklearn-digits-8x8");
    assert_eq!(s["epoch_history"].as_array().unwrap().len(), 2, "{s}");
    assert_learned(&s);
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}
