//! The agent end to end and under faults: a real `trainwatch agent`
//! process, real Python trainers publishing through shared memory, a real
//! server (in-process or as a process) over loopback gRPC.

mod util;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use trainwatch::config::ServerSettings;
use trainwatch::server::{RunningServer, Server};
use util::http::{get, get_json, post_json};
use util::proc::ServerProc;
use util::procs::{eventually, AgentProc, Trainer};

async fn start_server(heartbeat_ms: u32) -> RunningServer {
    let mut s = ServerSettings::local_insecure();
    s.limits.heartbeat_interval_ms = heartbeat_ms;
    Server::start(&s).await.expect("server starts")
}

async fn stop(server: RunningServer) {
    server.shutdown(Duration::from_secs(10)).await.unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An agent streaming `shm` to `server` with `env` set and its health
/// endpoint on a free loopback port, which is returned with it.
fn agent_with_health(
    server: SocketAddr,
    shm: &std::path::Path,
    env: &[(&str, &str)],
) -> (AgentProc, SocketAddr) {
    let health = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listen = health.to_string();
    let agent = AgentProc::start_insecure_with(server, shm, &["--health-listen", &listen], env);
    (agent, health)
}

/// A run's config for a segment a test writes itself (two classes, for
/// predictions 0 and 1).
fn run_config(name: &str) -> trainwatch::shm::RunConfig {
    trainwatch::shm::RunConfig {
        run_name: name.into(),
        model_name: "resnet18".into(),
        dataset_name: "cifar10".into(),
        class_names: vec!["cat".into(), "dog".into()],
        total_epochs: 3,
        batches_per_epoch: 10,
        batch_size: 16,
    }
}

/// The one session whose id contains `run`, once it exists.
async fn session(http: SocketAddr, run: &str) -> Value {
    let needle = format!(":{run}.");
    eventually(&format!("session for run {run}"), || async {
        let list = get_json(http, "/api/sessions").await;
        let id = list["sessions"]
            .as_array()?
            .iter()
            .find(|s| s["id"].as_str().is_some_and(|i| i.contains(&needle)))?["id"]
            .as_str()?
            .to_string();
        Some(get_json(http, &format!("/api/sessions/{id}")).await)
    })
    .await
}

/// Waits until the run's session satisfies `pred`; returns its detail.
async fn session_where(
    http: SocketAddr,
    run: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let id = session(http, run).await["id"].as_str().unwrap().to_string();
    eventually(what, || async {
        let d = get_json(http, &format!("/api/sessions/{id}")).await;
        pred(&d).then_some(d)
    })
    .await
}

fn statuses(d: &Value) -> Vec<String> {
    d["status_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap().to_string())
        .collect()
}

fn epochs(d: &Value) -> Vec<u64> {
    d["epoch_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["epoch"].as_u64().unwrap())
        .collect()
}

/// The agent's Prometheus counter `name`, read from its health endpoint.
async fn agent_metric(health: SocketAddr, name: &str) -> u64 {
    let (status, body) = get(health, "/metrics").await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    let full = format!("trainwatch_agent_{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&full))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

fn shm_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm").expect("a temp dir under /dev/shm")
}

mod streaming {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_streams_frames_epochs_and_statuses_to_the_server() {
        let server = start_server(2000).await;
        let shm = shm_dir();
        let _agent = AgentProc::start_insecure(server.grpc_addr, shm.path(), &[]);
        let mut trainer = Trainer::start(
            shm.path(),
            "cifar",
            &["--epochs", "3", "--batches-per-epoch", "30", "--fps", "60"],
        );
        trainer.wait_exit();
        let d = session_where(server.http_addr, "cifar", "run COMPLETED", |d| {
            d["status"] == "COMPLETED"
        })
        .await;
        assert_eq!(epochs(&d), vec![0, 1, 2], "{d}");
        assert_eq!(statuses(&d), vec!["RUNNING", "COMPLETED"]);
        assert_eq!(d["counters"]["events_duplicate"], 0);
        assert_eq!(d["counters"]["batches_invalid"], 0);
        assert!(
            d["batches_received"].as_u64().unwrap() >= 10,
            "{}",
            d["batches_received"]
        );
        assert_eq!(d["config"]["class_names"][9], "truck");
        // Performance figures come from every published batch's timestamp;
        // resource figures are there, the GPU's absent (no GPU here) as null.
        let d = session_where(server.http_addr, "cifar", "the run's last figures", |d| {
            d["performance"]["batches_published"] == 90
        })
        .await;
        let p = &d["performance"];
        let avg = p["average_fps"].as_f64().unwrap();
        assert!((20.0..=90.0).contains(&avg), "published at 60/s: {p}");
        assert!(p["device_memory_total_mb"].as_f64().unwrap() > 0.0, "{p}");
        assert!(p["memory_mb"].as_f64().is_some(), "the trainer's RSS: {p}");
        assert_eq!(p["gpu_percent"], Value::Null, "{p}");
        let last = &d["last_batch"];
        assert_eq!(last["images"], 16);
        let truth: Vec<u64> = last["ground_truth"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(truth, (0..16).map(|i| i % 10).collect::<Vec<u64>>());
        // The images are JPEGs of the published 32x32 tensors.
        let id = d["id"].as_str().unwrap();
        let (status, jpeg) = get(server.http_addr, &format!("/api/sessions/{id}/images/3")).await;
        assert_eq!(status, 200);
        assert_eq!(
            trainwatch::server::validate::jpeg_dimensions(&jpeg),
            Ok((32, 32))
        );
        stop(server).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pause_resume_and_stop_reach_the_trainer_and_its_status_comes_back() {
        let server = start_server(2000).await;
        let http = server.http_addr;
        let shm = shm_dir();
        let _agent = AgentProc::start_insecure(server.grpc_addr, shm.path(), &[]);
        let mut trainer =
            Trainer::start(shm.path(), "ctl", &["--run-until-stopped", "--fps", "100"]);
        let d = session_where(http, "ctl", "RUNNING", |d| d["status"] == "RUNNING").await;
        let id = d["id"].as_str().unwrap().to_string();
        let path = format!("/api/sessions/{id}/commands");

        let (st, v) = post_json(http, &path, &[], &json!({"type": "pause"})).await;
        assert_eq!(st, 202, "{v}");
        let cmd = trainer.wait_for("PAUSE", |v| v["command"] == "PAUSE_TRAINING");
        assert_eq!(cmd["params"]["command_id"], "1");
        session_where(http, "ctl", "PAUSED", |d| d["status"] == "PAUSED").await;

        post_json(
            http,
            &path,
            &[],
            &json!({"type": "CHANGE_LEARNING_RATE", "parameters": {"learning_rate": "0.01"}}),
        )
        .await;
        let lr = trainer.wait_for("learning rate", |v| v["command"] == "CHANGE_LEARNING_RATE");
        assert_eq!(lr["params"]["learning_rate"], "0.01");

        post_json(http, &path, &[], &json!({"type": "resume"})).await;
        trainer.wait_for("RESUME", |v| v["command"] == "RESUME_TRAINING");
        session_where(http, "ctl", "RUNNING again", |d| statuses(d).len() == 3).await;

        // STOP without a grace period gets the agent's default (30 s).
        post_json(http, &path, &[], &json!({"type": "stop"})).await;
        let stop_cmd = trainer.wait_for("STOP", |v| v["command"] == "STOP_TRAINING");
        assert_eq!(stop_cmd["params"]["grace_period_s"], "30");
        trainer.wait_exit();
        let d = session_where(http, "ctl", "COMPLETED", |d| d["status"] == "COMPLETED").await;
        assert_eq!(
            statuses(&d),
            vec!["RUNNING", "PAUSED", "RUNNING", "COMPLETED"]
        );
        stop(server).await;
    }
}

mod faults {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_trainer_ends_failed_and_other_runs_go_on() {
        let server = start_server(2000).await;
        let http = server.http_addr;
        let shm = shm_dir();
        let _agent = AgentProc::start_insecure(server.grpc_addr, shm.path(), &[]);
        let mut victim = Trainer::start(shm.path(), "victim", &["--run-until-stopped"]);
        let mut other = Trainer::start(shm.path(), "other", &["--run-until-stopped"]);
        victim.wait_for("an epoch", |v| v.get("epoch").is_some());
        session_where(http, "victim", "victim epoch", |d| {
            d["epochs"].as_u64() >= Some(1)
        })
        .await;
        victim.kill();
        let d = session_where(http, "victim", "victim FAILED", |d| d["status"] == "FAILED").await;
        assert_eq!(d["status_message"], "trainer process exited");
        // The other run is still streaming.
        let before = session(http, "other").await["batches_received"]
            .as_u64()
            .unwrap();
        session_where(http, "other", "other keeps streaming", |d| {
            d["batches_received"].as_u64().unwrap() > before + 20
        })
        .await;
        assert_eq!(session(http, "other").await["status"], "RUNNING");
        other.kill();
        stop(server).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_segment_is_reported_once_and_skipped() {
        let server = start_server(2000).await;
        let http = server.http_addr;
        let shm = shm_dir();
        // Random bytes, and a truncated real header.
        std::fs::write(
            shm.path().join("garbage"),
            (0..50_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
                .collect::<Vec<u8>>(),
        )
        .unwrap();
        std::fs::write(shm.path().join("short"), b"TRNWATCH").unwrap();
        let (_agent, health) = agent_with_health(server.grpc_addr, shm.path(), &[]);
        let mut good = Trainer::start(shm.path(), "good", &["--epochs", "2"]);
        good.wait_exit();
        session_where(http, "good", "good COMPLETED", |d| {
            d["status"] == "COMPLETED"
        })
        .await;
        eventually("both bad segments counted", || async {
            (agent_metric(health, "segments_rejected_total").await == 2).then_some(())
        })
        .await;
        // Rescans do not report them again.
        let d = session(http, "good").await;
        assert_eq!(d["counters"]["batches_invalid"], 0);
        assert_eq!(
            get_json(http, "/api/sessions").await["sessions"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(agent_metric(health, "segments_rejected_total").await, 2);
        stop(server).await;
    }

    /// Issue 15 item 6: an impossible counter in a segment's header made
    /// the agent's session loop spin without yielding, wedging every run
    /// until the watchdog killed the agent (and again after each restart).
    /// Now that run is rejected, and the agent and the other runs go on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_impossible_header_counter_rejects_that_run_and_the_rest_go_on() {
        use std::os::unix::fs::FileExt;
        use trainwatch::shm::layout::hdr;
        use trainwatch::shm::{TrainingStatus, Writer, WriterOptions};

        let server = start_server(2000).await;
        let http = server.http_addr;
        let shm = shm_dir();
        let (_agent, health) = agent_with_health(server.grpc_addr, shm.path(), &[]);
        let mut w = Writer::create(&run_config("broken"), &WriterOptions::new(shm.path())).unwrap();
        w.publish_status(TrainingStatus::Running, "");
        session_where(http, "broken", "the run streaming", |d| {
            d["status"] == "RUNNING"
        })
        .await;
        // A header no writer leaves: more events written than can be.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(w.path())
            .unwrap();
        file.write_all_at(&u64::MAX.to_le_bytes(), hdr::EVENT_WRITE_SEQ as u64)
            .unwrap();
        eventually("the broken run rejected", || async {
            (agent_metric(health, "segments_rejected_total").await >= 1).then_some(())
        })
        .await;
        let mut good = Trainer::start(shm.path(), "good", &["--epochs", "2"]);
        good.wait_exit();
        session_where(http, "good", "the other run COMPLETED", |d| {
            d["status"] == "COMPLETED"
        })
        .await;
        drop(w);
        stop(server).await;
    }

    /// Issue 15 item 7: a frame was copied into a buffer as large as the
    /// segment said before anything was checked, under an agent unit with
    /// MemoryMax=256M. Frames that do not fit in the agent's frame memory
    /// are refused before they are copied; the run's events, and other
    /// runs' frames, go on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_beyond_the_agents_frame_memory_are_refused_before_copying() {
        use trainwatch::shm::{Batch, Images, TrainingStatus, Writer, WriterOptions};
        use trainwatch::tensor::{DType, Layout, TensorDesc};

        let server = start_server(2000).await;
        let http = server.http_addr;
        let shm = shm_dir();
        let (_agent, health) = agent_with_health(
            server.grpc_addr,
            shm.path(),
            &[("TRAINWATCH_AGENT_FRAME_MEMORY_MB", "1")],
        );
        let mut opts = WriterOptions::new(shm.path());
        opts.frame_capacity = 4 << 20;
        let mut w = Writer::create(&run_config("huge"), &opts).unwrap();
        w.publish_status(TrainingStatus::Running, "");
        // 4 images of 3x256x256 f32: 3 MiB a frame, the agent has 1.
        let desc = TensorDesc {
            dtype: DType::F32,
            layout: Layout::Nchw,
            count: 4,
            channels: 3,
            height: 256,
            width: 256,
            normalization: None,
        };
        let data = vec![0u8; desc.total_bytes()];
        let mut small = Trainer::start(shm.path(), "small", &["--epochs", "2"]);
        let mut k = 0;
        let dropped = tokio::time::timeout(util::TEST_TIMEOUT, async {
            loop {
                k += 1;
                w.publish_frame(&Batch {
                    epoch: 0,
                    batch_idx: k,
                    loss: 0.5,
                    predictions: &[0, 1, 0, 1],
                    confidences: &[0.5; 4],
                    labels: &[0, 1, 1, 0],
                    images: Some(Images { desc, data: &data }),
                })
                .unwrap();
                // A trainer's pace; the agent reads the newest when it can.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let n = agent_metric(health, "frames_dropped_total").await;
                if n >= 3 {
                    return n;
                }
            }
        })
        .await
        .expect("big frames refused");
        assert!(dropped >= 3);
        small.wait_exit();
        let d = session_where(http, "small", "the small run COMPLETED", |d| {
            d["status"] == "COMPLETED"
        })
        .await;
        assert!(d["batches_received"].as_u64().unwrap() > 0, "{d}");
        let huge = session(http, "huge").await;
        assert_eq!(huge["status"], "RUNNING", "its events still arrive: {huge}");
        assert_eq!(
            huge["batches_received"], 0,
            "no frame of it was sent: {huge}"
        );
        drop(w);
        stop(server).await;
    }

    /// Issue 15 item 7: a trainer creating a thousand segments made a
    /// thousand sessions. At most `max_sessions` stream at once; the rest
    /// wait for a place.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_beyond_max_sessions_wait_for_a_place() {
        let server = start_server(2000).await;
        let http = server.http_addr;
        let shm = shm_dir();
        let (_agent, health) = agent_with_health(
            server.grpc_addr,
            shm.path(),
            &[("TRAINWATCH_AGENT_MAX_SESSIONS", "1")],
        );
        let mut first =
            Trainer::start(shm.path(), "first", &["--run-until-stopped", "--fps", "50"]);
        let one = session_where(http, "first", "first RUNNING", |d| d["status"] == "RUNNING").await;
        let mut second = Trainer::start(shm.path(), "second", &["--epochs", "1"]);
        eventually("the second run waiting", || async {
            (agent_metric(health, "segments_waiting").await == 1).then_some(())
        })
        .await;
        let list = get_json(http, "/api/sessions").await;
        assert_eq!(list["sessions"].as_array().unwrap().len(), 1, "{list}");
        let id = one["id"].as_str().unwrap();
        let (status, body) = post_json(
            http,
            &format!("/api/sessions/{id}/commands"),
            &[],
            &json!({"type": "stop"}),
        )
        .await;
        assert_eq!(status, 202, "{body}");
        first.wait_exit();
        second.wait_exit();
        session_where(http, "second", "second COMPLETED once first ended", |d| {
            d["status"] == "COMPLETED"
        })
        .await;
        assert_eq!(agent_metric(health, "segments_waiting").await, 0);
        stop(server).await;
    }

    /// Issue 15 item 5: any process in the segment group can truncate a
    /// segment the agent has mapped; the agent's next read raised SIGBUS
    /// and killed it, for every run on the device. Now the read gets zeros,
    /// that run is rejected as corrupt, and the agent and other runs go on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_segment_truncated_under_the_agent_is_rejected_and_the_agent_lives() {
        let server = start_server(2000).await;
        let http = server.http_addr;
        let shm = shm_dir();
        let (_agent, health) = agent_with_health(server.grpc_addr, shm.path(), &[]);
        let mut victim = Trainer::start(
            shm.path(),
            "victim",
            &["--run-until-stopped", "--fps", "50"],
        );
        session_where(http, "victim", "victim RUNNING", |d| {
            d["status"] == "RUNNING"
        })
        .await;
        victim.wait_for("epoch 1", |v| v["epoch"] == 1);
        // Down to the header's first page: every later page is gone.
        std::fs::OpenOptions::new()
            .write(true)
            .open(shm.path().join("victim"))
            .unwrap()
            .set_len(4096)
            .unwrap();
        eventually("the truncated run rejected", || async {
            (agent_metric(health, "segments_rejected_total").await >= 1).then_some(())
        })
        .await;
        // The trainer's own mapping was truncated too: it trains on,
        // publishing into pages of zeros (its run is corrupt, not it).
        victim.wait_for("epochs after the truncation", |v| {
            v["epoch"].as_u64().is_some_and(|e| e >= 4)
        });
        victim.kill();
        let mut good = Trainer::start(shm.path(), "good", &["--epochs", "2"]);
        good.wait_exit();
        session_where(http, "good", "the other run COMPLETED", |d| {
            d["status"] == "COMPLETED"
        })
        .await;
        stop(server).await;
    }

    /// Issue 15 item 9: the agent sends its token; a server with
    /// `agent_tokens` binds the run's session to it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_agent_with_its_token_streams_to_a_server_that_needs_one() {
        let token = "token-of-this-jetson-0123";
        let mut s = ServerSettings::local_insecure();
        s.limits.heartbeat_interval_ms = 2000;
        s.agent_tokens = vec![token.into()];
        let server = Server::start(&s).await.expect("server starts");
        let http = server.http_addr;
        let shm = shm_dir();
        let _agent = agent_with_health(
            server.grpc_addr,
            shm.path(),
            &[("TRAINWATCH_AGENT_TOKEN", token)],
        );
        let mut t = Trainer::start(shm.path(), "tokened", &["--epochs", "2"]);
        t.wait_exit();
        let d = session_where(http, "tokened", "COMPLETED", |d| d["status"] == "COMPLETED").await;
        assert_eq!(epochs(&d), vec![0, 1], "{d}");
        stop(server).await;
    }

    /// Issue 15 item 1: the same script run again under the same name,
    /// within the finished run's grace period, is a new run streamed in
    /// full (the writer renames its new segment over the old path).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_repeated_under_the_same_name_is_streamed_as_a_new_run() {
        let server = start_server(2000).await;
        let http = server.http_addr;
        let shm = shm_dir();
        let _agent = AgentProc::start_insecure(server.grpc_addr, shm.path(), &[]);
        let args = ["--epochs", "2", "--batches-per-epoch", "10", "--fps", "100"];
        let mut first = Trainer::start(shm.path(), "again", &args);
        first.wait_exit();
        let one = session_where(http, "again", "first run COMPLETED", |d| {
            d["status"] == "COMPLETED"
        })
        .await;
        let mut second = Trainer::start(shm.path(), "again", &args);
        second.wait_exit();
        let needle = ":again.";
        let two = eventually("a second session COMPLETED", || async {
            let list = get_json(http, "/api/sessions").await;
            let other = list["sessions"].as_array()?.iter().find(|s| {
                s["id"] != one["id"]
                    && s["status"] == "COMPLETED"
                    && s["id"].as_str().is_some_and(|i| i.contains(needle))
            })?;
            let id = other["id"].as_str()?;
            Some(get_json(http, &format!("/api/sessions/{id}")).await)
        })
        .await;
        assert_eq!(epochs(&two), vec![0, 1], "{two}");
        assert_eq!(statuses(&two), vec!["RUNNING", "COMPLETED"]);
        assert_eq!(two["counters"]["events_duplicate"], 0);
        // The live segment was not removed from under the new run.
        assert!(shm.path().read_dir().unwrap().count() >= 1);
        stop(server).await;
    }

    /// Issue 15 item 2: a sweep's runs, named alike for longer than the
    /// readable part of an id and started together, are sessions of their
    /// own: each its own config and epochs, nothing dropped as a duplicate.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_named_alike_and_started_together_are_separate_sessions() {
        let server = start_server(2000).await;
        let http = server.http_addr;
        let shm = shm_dir();
        let _agent = AgentProc::start_insecure(server.grpc_addr, shm.path(), &[]);
        let prefix = "sweep_resnet18_cifar10_".repeat(3);
        let runs = [
            (format!("{prefix}lr_a"), 2u64),
            (format!("{prefix}lr_b"), 3),
        ];
        let mut trainers: Vec<Trainer> = runs
            .iter()
            .map(|(run, epochs)| {
                let e = epochs.to_string();
                Trainer::start(
                    shm.path(),
                    run,
                    &["--epochs", &e, "--batches-per-epoch", "10", "--fps", "100"],
                )
            })
            .collect();
        for t in &mut trainers {
            t.wait_exit();
        }
        let ids = eventually("two sessions COMPLETED", || async {
            let list = get_json(http, "/api/sessions").await;
            let all = list["sessions"].as_array()?;
            let done: Vec<String> = all
                .iter()
                .filter(|s| s["status"] == "COMPLETED")
                .filter_map(|s| s["id"].as_str().map(str::to_string))
                .collect();
            (done.len() == 2).then_some(done)
        })
        .await;
        let mut seen: Vec<(u64, Vec<u64>)> = Vec::new();
        for id in &ids {
            let d = get_json(http, &format!("/api/sessions/{id}")).await;
            assert_eq!(d["counters"]["events_duplicate"], 0, "{d}");
            let total = d["config"]["total_epochs"].as_u64().unwrap();
            seen.push((total, epochs(&d)));
        }
        seen.sort();
        assert_eq!(seen, vec![(2, vec![0, 1]), (3, vec![0, 1, 2])]);
        // Each keeps its whole name, beyond the id's readable part.
        let mut names = Vec::new();
        for id in &ids {
            let d = get_json(http, &format!("/api/sessions/{id}")).await;
            names.push(d["config"]["run_name"].as_str().unwrap().to_string());
        }
        names.sort();
        assert_eq!(names, [runs[0].0.clone(), runs[1].0.clone()]);
        stop(server).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_restart_loses_no_event_and_doubles_none() {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let args = ["--insecure", "--listen", &listen];
        let env = [("TRAINWATCH_SERVER_LIMITS__HEARTBEAT_INTERVAL_MS", "200")];
        let server = ServerProc::start(&args, &env);
        let grpc: SocketAddr = listen.parse().unwrap();
        let shm = shm_dir();
        let _agent = AgentProc::start_insecure(grpc, shm.path(), &[]);
        let mut trainer = Trainer::start(
            shm.path(),
            "durable",
            &["--epochs", "6", "--batches-per-epoch", "25", "--fps", "50"],
        );
        trainer.wait_for("epoch 1", |v| v["epoch"] == 1);
        session_where(server.http, "durable", "epochs before the outage", |d| {
            d["epochs"].as_u64() >= Some(1)
        })
        .await;
        drop(server); // SIGKILL: all its state is gone.
        trainer.wait_for("epoch 3 during the outage", |v| v["epoch"] == 3);
        let server = ServerProc::start(&args, &env);
        trainer.wait_exit();
        let d = session_where(server.http, "durable", "COMPLETED after restart", |d| {
            d["status"] == "COMPLETED"
        })
        .await;
        assert_eq!(
            epochs(&d),
            vec![0, 1, 2, 3, 4, 5],
            "every epoch exactly once"
        );
        assert_eq!(statuses(&d), vec!["RUNNING", "COMPLETED"]);
        assert_eq!(d["counters"]["events_duplicate"], 0);
        assert!(
            d["batches_received"].as_u64().unwrap() > 0,
            "frames resumed"
        );
    }

    /// The command_id of every learning-rate command the trainer has
    /// printed so far, in the order it took them.
    fn lr_command_ids(trainer: &mut Trainer) -> Vec<String> {
        while trainer.try_next().is_some() {}
        trainer
            .seen
            .iter()
            .filter(|v| v["command"] == "CHANGE_LEARNING_RATE")
            .map(|v| v["params"]["command_id"].as_str().unwrap().to_string())
            .collect()
    }

    /// STOP with no grace period, through `path`, and the trainer's exit.
    async fn stop_now(http: SocketAddr, path: &str, mut trainer: Trainer) {
        let body = json!({"type": "stop", "parameters": {"grace_period_s": "0"}});
        post_json(http, path, &[], &body).await;
        trainer.wait_exit();
    }

    /// The command's state in the session's log.
    fn command_state(d: &Value, id: u64) -> Value {
        d["commands"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["id"] == id).cloned())
            .unwrap_or(Value::Null)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_command_sent_on_a_dead_stream_is_delivered_once_when_the_agent_returns() {
        let server = start_server(2000).await;
        let http = server.http_addr;
        let shm = shm_dir();
        let agent = AgentProc::start_insecure(server.grpc_addr, shm.path(), &[]);
        let mut trainer = Trainer::start(
            shm.path(),
            "redeliver",
            &["--run-until-stopped", "--fps", "50"],
        );
        let d = session_where(http, "redeliver", "RUNNING", |d| d["status"] == "RUNNING").await;
        let id = d["id"].as_str().unwrap().to_string();
        let path = format!("/api/sessions/{id}/commands");
        let lr =
            |v: &str| json!({"type": "CHANGE_LEARNING_RATE", "parameters": {"learning_rate": v}});

        // Delivered and applied are reported apart from sent.
        let (st, first) = post_json(http, &path, &[], &lr("0.01")).await;
        assert_eq!(st, 202, "{first}");
        trainer.wait_for("lr 0.01", |v| v["params"]["learning_rate"] == "0.01");
        let d = session_where(http, "redeliver", "command 1 applied", |d| {
            command_state(d, 1)["applied_ms"].is_u64()
        })
        .await;
        let c1 = command_state(&d, 1);
        assert_eq!(c1["type"], "CHANGE_LEARNING_RATE", "{c1}");
        assert!(c1["sent"] == true && c1["delivered_ms"].is_u64(), "{c1}");

        // The agent stops reading: its stream is still open, so the server
        // sends command 2 into it, and nothing delivers it.
        util::proc::signal(agent.pid(), "STOP");
        let (st, second) = post_json(http, &path, &[], &lr("0.02")).await;
        assert_eq!(
            (st, second["command_id"].as_u64()),
            (202, Some(2)),
            "{second}"
        );
        assert_eq!(second["delivered"], true, "written to the stream: sent");
        let d = get_json(http, &format!("/api/sessions/{id}")).await;
        let c2 = command_state(&d, 2);
        assert!(c2["sent"] == true && c2["delivered_ms"].is_null(), "{c2}");
        agent.kill();

        // A new agent resumes the session; the server sends command 2 again
        // on its stream and the trainer gets it once.
        let _agent = AgentProc::start_insecure(server.grpc_addr, shm.path(), &[]);
        trainer.wait_for("lr 0.02", |v| v["params"]["learning_rate"] == "0.02");
        let d = session_where(http, "redeliver", "command 2 applied", |d| {
            command_state(d, 2)["applied_ms"].is_u64()
        })
        .await;
        assert!(
            d["counters"]["commands_resent"].as_u64() >= Some(1),
            "{}",
            d["counters"]
        );
        // A later command comes after it, and nothing twice.
        post_json(http, &path, &[], &lr("0.03")).await;
        trainer.wait_for("lr 0.03", |v| v["params"]["learning_rate"] == "0.03");
        session_where(http, "redeliver", "command 3 applied", |d| {
            command_state(d, 3)["applied_ms"].is_u64()
        })
        .await;
        assert_eq!(
            lr_command_ids(&mut trainer),
            ["1", "2", "3"],
            "each command once, in order"
        );
        stop_now(http, &path, trainer).await;
        stop(server).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_command_written_but_never_confirmed_is_not_written_again() {
        use trainwatch::proto::{metrics_request::Payload, metrics_response, Heartbeat};
        use trainwatch::shm::{reader::Reader, CommandKind};
        let server = start_server(2000).await;
        let http = server.http_addr;
        let shm = shm_dir();
        let mut trainer = Trainer::start(
            shm.path(),
            "written",
            &["--run-until-stopped", "--fps", "50"],
        );
        let ready = trainer.wait_for("ready", |v| v["ready"].is_string());
        let segment = std::path::PathBuf::from(ready["ready"].as_str().unwrap());

        // The test is the first agent: it registers the run's session,
        // takes command 1 from its stream, writes it into the segment as
        // an agent does, and goes away without telling the server.
        let mut reader = Reader::open(&segment).unwrap();
        let sid = trainwatch::proto::session_id(
            "testdev",
            &reader.config().run_name,
            reader.header().writer_start_unix_ns,
        );
        let mut client = util::grpc::connect_plain(server.grpc_addr).await.unwrap();
        assert!(util::grpc::register(&mut client, &sid).await.success);
        let mut stream = util::grpc::Stream::open(&mut client).await;
        let hb = Payload::Heartbeat(Heartbeat {
            sequence_number: 1,
            ..Default::default()
        });
        stream.call(util::grpc::request(&sid, hb)).await;
        let path = format!("/api/sessions/{sid}/commands");
        let body = json!({"type": "CHANGE_LEARNING_RATE", "parameters": {"learning_rate": "0.05"}});
        let (st, v) = post_json(http, &path, &[], &body).await;
        assert_eq!((st, v["delivered"].as_bool()), (202, Some(true)), "{v}");
        let cmd = loop {
            if let Some(metrics_response::Payload::Command(c)) = stream.recv().await.payload {
                break c;
            }
        };
        assert_eq!(cmd.command_id, 1);
        reader
            .send_command(
                CommandKind::ChangeLearningRate,
                &[("learning_rate", "0.05"), ("command_id", "1")],
            )
            .unwrap();
        trainer.wait_for("lr 0.05", |v| v["params"]["learning_rate"] == "0.05");
        drop((stream, client, reader));

        // The real agent reads the ring back: when the server sends command
        // 1 again it is reported delivered, not written a second time.
        let _agent = AgentProc::start_insecure(server.grpc_addr, shm.path(), &[]);
        let d = session_where(http, "written", "command 1 delivered and applied", |d| {
            command_state(d, 1)["applied_ms"].is_u64()
        })
        .await;
        assert!(command_state(&d, 1)["delivered_ms"].is_u64());
        let body = json!({"type": "CHANGE_LEARNING_RATE", "parameters": {"learning_rate": "0.06"}});
        post_json(http, &path, &[], &body).await;
        trainer.wait_for("lr 0.06", |v| v["params"]["learning_rate"] == "0.06");
        assert_eq!(lr_command_ids(&mut trainer), ["1", "2"], "command 1 once");
        stop_now(http, &path, trainer).await;
        stop(server).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_agent_restart_loses_no_event_and_doubles_none() {
        let server = start_server(2000).await;
        let http = server.http_addr;
        let shm = shm_dir();
        let agent = AgentProc::start_insecure(server.grpc_addr, shm.path(), &[]);
        let mut trainer = Trainer::start(
            shm.path(),
            "steady",
            &["--epochs", "8", "--batches-per-epoch", "20", "--fps", "80"],
        );
        session_where(http, "steady", "an epoch", |d| {
            d["epochs"].as_u64() >= Some(1)
        })
        .await;
        agent.kill();
        trainer.wait_for("epoch 4 without an agent", |v| v["epoch"] == 4);
        let _agent = AgentProc::start_insecure(server.grpc_addr, shm.path(), &[]);
        trainer.wait_exit();
        let d = session_where(http, "steady", "COMPLETED", |d| d["status"] == "COMPLETED").await;
        assert_eq!(epochs(&d), (0..8).collect::<Vec<u64>>());
        assert_eq!(statuses(&d), vec!["RUNNING", "COMPLETED"]);
        assert_eq!(
            d["counters"]["registrations"], 2,
            "the restarted agent resumed the session"
        );
        stop(server).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_network_black_hole_is_detected_and_recovered() {
        let server = start_server(200).await;
        let http = server.http_addr;
        let proxy = util::blackhole::Proxy::start(server.grpc_addr).await;
        let shm = shm_dir();
        let (_agent, health) = agent_with_health(proxy.addr, shm.path(), &[]);
        let _trainer = Trainer::start(shm.path(), "far", &["--run-until-stopped", "--fps", "30"]);
        session_where(http, "far", "streaming", |d| {
            d["batches_received"].as_u64() >= Some(5)
        })
        .await;
        assert_eq!(agent_metric(health, "reconnects_total").await, 0);

        proxy.black_hole(true);
        // Liveness window: 3 heartbeat intervals of 200 ms.
        eventually("the agent notices the black hole", || async {
            (agent_metric(health, "reconnects_total").await >= 1).then_some(())
        })
        .await;
        proxy.black_hole(false);
        let before = session(http, "far").await["batches_received"]
            .as_u64()
            .unwrap();
        session_where(http, "far", "frames flow again", |d| {
            d["batches_received"].as_u64().unwrap() > before + 10
        })
        .await;
        stop(server).await;
    }
}

mod peers {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    /// The seed's own kind of server (grpcio, acks batches only, never a
    /// heartbeat), as a process; its JSON lines arrive on a channel.
    struct SeedServer {
        child: std::process::Child,
        lines: std::sync::mpsc::Receiver<Value>,
        port: u16,
        _stubs: tempfile::TempDir,
    }

    impl SeedServer {
        fn start() -> SeedServer {
            let stubs = tempfile::tempdir().unwrap();
            util::python::protoc(
                &util::repo_root().join("tests/python/seed_metrics.proto"),
                stubs.path(),
            );
            let mut child = Command::new(util::python())
                .arg(util::repo_root().join("tests/python/seed_server.py"))
                .arg(stubs.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            let out = child.stdout.take().unwrap();
            let (tx, lines) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str::<Value>(&l) {
                        let _ = tx.send(v);
                    }
                }
            });
            let ready = lines
                .recv_timeout(util::TEST_TIMEOUT)
                .expect("seed server ready");
            let port = ready["ready"].as_u64().unwrap() as u16;
            SeedServer {
                child,
                lines,
                port,
                _stubs: stubs,
            }
        }

        fn drain(&self) -> Vec<Value> {
            self.lines.try_iter().collect()
        }
    }

    impl Drop for SeedServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn against_a_seed_grpcio_server_a_30_s_pause_causes_no_reconnect_loop() {
        let seed = SeedServer::start();
        let shm = shm_dir();
        let addr = SocketAddr::from(([127, 0, 0, 1], seed.port));
        let (_agent, health) = agent_with_health(addr, shm.path(), &[]);
        // 30 batches, a 30 s pause with only heartbeats (which the seed
        // server never answers), then 30 more.
        let mut trainer = Trainer::start(
            shm.path(),
            "paused",
            &[
                "--epochs",
                "1",
                "--batches-per-epoch",
                "60",
                "--fps",
                "30",
                "--pause-after",
                "30",
                "--pause-seconds",
                "30",
            ],
        );
        trainer.wait_exit_within(Duration::from_secs(90));
        eventually(
            "the seed server acknowledged batches after the pause",
            || async { (agent_metric(health, "frames_acked_total").await >= 40).then_some(()) },
        )
        .await;
        let lines = seed.drain();
        let registrations = lines
            .iter()
            .filter(|v| v.get("registered").is_some())
            .count();
        let streams = lines.iter().filter(|v| v["stream"] == "open").count();
        assert_eq!((registrations, streams), (1, 1), "{lines:?}");
        assert_eq!(agent_metric(health, "reconnects_total").await, 0);
        assert!(agent_metric(health, "frames_sent_total").await >= 40);
    }
}

mod systemd {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    fn next_notification(sock: &UnixDatagram, within: Duration) -> Option<String> {
        sock.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 4096];
        sock.recv(&mut buf)
            .ok()
            .map(|n| String::from_utf8_lossy(&buf[..n]).trim().to_string())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ready_then_watchdog_pings_that_stop_when_the_main_loop_is_wedged() {
        let server = start_server(2000).await;
        let dir = tempfile::tempdir().unwrap();
        let sock_path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        let wedge = dir.path().join("wedge");
        let shm = shm_dir();
        let url = format!("http://{}", server.grpc_addr);
        let _agent = AgentProc::start(
            &[
                "--insecure",
                "--server",
                &url,
                "--shm-dir",
                shm.path().to_str().unwrap(),
                "--debug-wedge-file",
                wedge.to_str().unwrap(),
            ],
            &[
                ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
                // Pings every 150 ms at most (half the watchdog period).
                ("WATCHDOG_USEC", "300000"),
                ("TRAINWATCH_AGENT_SCAN_INTERVAL_MS", "20"),
            ],
        );
        let first = next_notification(&sock, util::TEST_TIMEOUT).expect("a notification");
        assert!(first.contains("READY=1"), "{first:?}");
        for _ in 0..3 {
            let n = next_notification(&sock, util::TEST_TIMEOUT).expect("a watchdog ping");
            assert_eq!(n, "WATCHDOG=1");
        }
        // Wedge the main loop: at most one ping already on its way, then none
        // for well over the watchdog period.
        std::fs::write(&wedge, b"").unwrap();
        let mut late = 0;
        while next_notification(&sock, Duration::from_millis(900)).is_some() {
            late += 1;
            assert!(late <= 2, "pings went on while the loop was wedged");
        }
        std::fs::remove_file(&wedge).unwrap();
        let n = next_notification(&sock, util::TEST_TIMEOUT).expect("pings resume");
        assert_eq!(n, "WATCHDOG=1");
        stop(server).await;
    }
}

/// Outage of 10x the event ring's worth of frames: memory stays flat, drop
/// counters are exact.
///
/// What "exact" means, counter by counter:
/// - trainer: every `pub.batch` is either copied into the segment or
///   skipped (the agent could not use it): published = copied + skipped.
/// - agent: every new frame it reads is either sent or dropped:
///   `frames_read = frames_sent + frames_dropped`; it reads only copied
///   frames (`frames_read <= copied`: newest-wins, a frame overwritten
///   before it was read is neither), and without a stream it reads none.
/// - events: the ring holds the newest S; of the 10 S published while the
///   server was away the agent reports exactly 9 S in `events_missed`, and
///   the server has exactly the others, each once.
mod outage {
    use super::*;
    use util::proc::rss_kib;

    /// The event ring of the trainer: small, so an outage laps it quickly.
    const EVENT_SLOTS: u64 = 64;
    /// RSS growth allowed over the whole outage and the catch-up after it:
    /// allocator noise, not a buffer that scales with the 640 frames.
    const RSS_SLACK_KIB: u64 = 2048;
    /// Batches (and epochs) before the outage.
    const WARM: u64 = 100;

    fn n(v: &Value, k: &str) -> u64 {
        v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ten_event_rings_of_frames_keep_memory_flat_and_counters_exact() {
        let server = start_server(200).await;
        let http = server.http_addr;
        let proxy = util::blackhole::Proxy::start(server.grpc_addr).await;
        let shm = shm_dir();
        let (agent, health) = agent_with_health(
            proxy.addr,
            shm.path(),
            // Retry often, so the stream is back soon after the outage.
            &[
                ("TRAINWATCH_AGENT_RECONNECT__MAX_MS", "500"),
                ("TRAINWATCH_AGENT_SCAN_INTERVAL_MS", "50"),
            ],
        );
        let slots = EVENT_SLOTS.to_string();
        let mut trainer = Trainer::start_driven(
            "outage_trainer.py",
            shm.path(),
            "outage",
            &["--event-slots", &slots],
        );
        let events_before_run = n(&trainer.seen[0], "events");
        // The agent is streaming the run before anything else is published:
        // the small ring would otherwise be lapped before it is found.
        session_where(http, "outage", "RUNNING", |d| d["status"] == "RUNNING").await;

        // Warm up: frames and events flow, every event is acknowledged.
        let warm = trainer.ask(&format!("publish {WARM} 200"));
        let warm_events = n(&warm, "events");
        session_where(http, "outage", "every warm-up event applied", |d| {
            d["last_event_seq"].as_u64() == Some(warm_events)
        })
        .await;
        eventually("the agent has every warm-up ack", || async {
            (agent_metric(health, "events_acked_total").await == warm_events).then_some(())
        })
        .await;
        assert_eq!(events_before_run, 1);
        let baseline = rss_kib(agent.pid());

        // The outage: the agent notices, then 10 rings' worth is published.
        proxy.black_hole(true);
        eventually("the agent notices the black hole", || async {
            (agent_metric(health, "reconnects_total").await >= 1).then_some(())
        })
        .await;
        let read_at_outage = agent_metric(health, "frames_read_total").await;
        let mut peak = rss_kib(agent.pid());
        let mut published = n(&warm, "published");
        let mut last = warm;
        for _ in 0..10 {
            last = trainer.ask(&format!("publish {EVENT_SLOTS} 0"));
            peak = peak.max(rss_kib(agent.pid()));
        }
        published += 10 * EVENT_SLOTS;
        assert_eq!(n(&last, "published"), published);
        assert_eq!(
            agent_metric(health, "frames_read_total").await,
            read_at_outage,
            "no frame is read without a stream"
        );
        assert_eq!(agent_metric(health, "events_missed_total").await, 0);

        // Back: the agent resumes after the last acknowledged event and
        // finds all but the ring's newest S overwritten.
        proxy.black_hole(false);
        let outage_events = n(&last, "events");
        eventually("the agent streams again and has caught up", || async {
            let missed = agent_metric(health, "events_missed_total").await;
            let acked = agent_metric(health, "events_acked_total").await;
            (missed > 0 && acked + missed == outage_events).then_some(())
        })
        .await;
        let done = trainer.ask("finish");
        let total_events = n(&done, "events");
        assert_eq!(total_events, warm_events + 10 * EVENT_SLOTS + 1);
        trainer.wait_exit();
        let d = session_where(http, "outage", "COMPLETED after the outage", |d| {
            d["status"] == "COMPLETED"
        })
        .await;
        peak = peak.max(rss_kib(agent.pid()));

        let missed = agent_metric(health, "events_missed_total").await;
        assert_eq!(missed, 9 * EVENT_SLOTS, "the lapped part, exactly");
        let c = &d["counters"];
        // RUNNING + the warm-up epochs + the ring's newest S + COMPLETED.
        assert_eq!(n(c, "events_applied"), total_events - missed, "{d}");
        assert_eq!(n(c, "events_duplicate"), 0);
        assert_eq!(n(&d, "last_event_seq"), total_events);
        let first_kept = published - EVENT_SLOTS;
        let want: Vec<u64> = (0..WARM).chain(first_kept..published).collect();
        assert_eq!(
            epochs(&d),
            want,
            "the epochs kept are the warm-up and the ring's newest"
        );
        // The ack follows the store's commit, which may land after the
        // session's state shows the event.
        eventually("the agent has the last ack", || async {
            (agent_metric(health, "events_acked_total").await == total_events - missed)
                .then_some(())
        })
        .await;

        let (copied, skipped) = (n(&last, "copied"), n(&last, "skipped"));
        assert_eq!(copied + skipped, published);
        let read = agent_metric(health, "frames_read_total").await;
        let sent = agent_metric(health, "frames_sent_total").await;
        let dropped = agent_metric(health, "frames_dropped_total").await;
        assert_eq!(read, sent + dropped);
        assert!(read <= copied, "read {read} of {copied} copied");
        let received = n(&d, "batches_received");
        assert!(received <= sent, "server has {received}, agent sent {sent}");

        assert!(
            peak <= baseline + RSS_SLACK_KIB,
            "agent RSS grew from {baseline} KiB to {peak} KiB over the outage"
        );
        eprintln!(
            "outage: {published} batches ({copied} copied, {skipped} skipped), agent read {read} \
             (sent {sent}, dropped {dropped}), server received {received}; events {total_events}, \
             missed {missed}; agent RSS {baseline} KiB -> peak {peak} KiB"
        );
        stop(server).await;
    }
}
