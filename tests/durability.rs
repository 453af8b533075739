//! The durability contract (issue 14): what a trainer logs is applied in
//! sequence order, exactly once, acknowledged only after the store has
//! committed it, and a server restarted on the same store resumes where the
//! store left off. Real gRPC on loopback, a real SQLite file in a temp dir.

mod util;

use std::time::Duration;

use futures_util::TryStreamExt;
use std::sync::atomic::Ordering::Relaxed;
use trainwatch::config::ServerSettings;
use trainwatch::proto::{
    acknowledgment::AckKind, metrics_request::Payload, metrics_response, Acknowledgment, EpochData,
    MetricsRequest, ScalarBatch, ScalarPoint,
};
use trainwatch::server::store::Store;
use trainwatch::server::{RunningServer, Server};
use util::grpc::{self, register, request, Stream};
use util::TempStore;

async fn start_on(store: &TempStore) -> RunningServer {
    let mut s = ServerSettings::local_insecure();
    s.store.place = Some(store.place());
    Server::start(&s).await.expect("server starts")
}

async fn stop(server: RunningServer) {
    server
        .shutdown(Duration::from_secs(10))
        .await
        .expect("clean shutdown");
}

fn epoch_req(sid: &str, seq: u64, epoch: u32) -> MetricsRequest {
    let mut r = request(
        sid,
        Payload::EpochData(EpochData {
            epoch,
            average_loss: 0.5,
            average_accuracy: 0.25,
            metrics: [("val_acc".to_string(), 0.9)].into(),
        }),
    );
    r.event_seq = seq;
    r
}

/// Points `first..first+n` of key "train/loss" at steps equal to their seq.
fn points_req(sid: &str, first: u64, n: u64, missed_before: u64) -> MetricsRequest {
    request(
        sid,
        Payload::ScalarBatch(ScalarBatch {
            first_seq: first,
            points: (first..first + n)
                .map(|s| ScalarPoint {
                    key: "train/loss".into(),
                    step: s as i64,
                    wall_time_ms: 1_700_000_000_000 + s,
                    value: 1.0 / s as f64,
                })
                .collect(),
            missed_before,
        }),
    )
}

/// The next ack of `kind`, skipping other answers.
async fn next_ack(s: &mut Stream, kind: AckKind) -> Acknowledgment {
    loop {
        match s.recv().await.payload {
            Some(metrics_response::Payload::Ack(a)) if a.kind == kind as i32 => return a,
            Some(metrics_response::Payload::Error(e)) => panic!("error answer: {e:?}"),
            _ => {}
        }
    }
}

async fn stored_steps(store: &dyn Store, run: &str) -> Vec<i64> {
    store
        .export(run)
        .await
        .unwrap()
        .map_ok(|p| p.step)
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_never_precedes_the_commit() {
    let dir = TempStore::new();
    let server = start_on(&dir).await;
    let store = server.store().expect("a store").clone();
    let mut c = grpc::connect_plain(server.grpc_addr).await.unwrap();
    assert!(register(&mut c, "dur").await.success);
    let mut s = Stream::open(&mut c).await;
    for seq in 1..=3u64 {
        s.send(epoch_req("dur", seq, seq as u32 - 1)).await;
        s.send(points_req("dur", (seq - 1) * 100 + 1, 100, 0)).await;
    }
    for seq in 1..=3u64 {
        // When each ack arrives, what it acknowledges is already in the store.
        let a = next_ack(&mut s, AckKind::Event).await;
        assert_eq!(a.event_seq, seq);
        let epochs = store.epochs("dur").await.unwrap();
        assert!(
            epochs.iter().any(|e| e.seq == seq),
            "ack {seq} before its commit"
        );
        let p = next_ack(&mut s, AckKind::Scalars).await;
        assert_eq!(p.point_seq, seq * 100);
        let sum = store.run("dur").await.unwrap().unwrap();
        assert!(sum.last_point_seq >= p.point_seq, "{sum:?}");
    }
    let e = store.epochs("dur").await.unwrap();
    assert_eq!(e[0].metrics.get("val_acc"), Some(&0.9));
    assert_eq!(e[0].metrics.get("average_loss"), Some(&0.5));
    assert_eq!(
        stored_steps(store.as_ref(), "dur").await,
        (1..=300).collect::<Vec<_>>()
    );
    let run = store.run("dur").await.unwrap().unwrap();
    assert_eq!(
        (run.run.device.as_str(), run.run.model.as_str()),
        ("trainwatch-tests", "resnet18")
    );
    stop(server).await;
}

/// Acks are cumulative: of the writes one group commit resolves, only
/// the last one's ack is sent (20 batches sent at once commit in one or
/// two groups of the writer's 100 ms linger: a few acks, not 20), and it
/// still names every point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acks_of_one_group_commit_are_sent_as_the_last_of_them() {
    let dir = TempStore::new();
    let server = start_on(&dir).await;
    let store = server.store().expect("a store").clone();
    let mut c = grpc::connect_plain(server.grpc_addr).await.unwrap();
    assert!(register(&mut c, "acks").await.success);
    let mut s = Stream::open(&mut c).await;
    for b in 0..20u64 {
        s.send(points_req("acks", b * 10 + 1, 10, 0)).await;
    }
    let mut seen = Vec::new();
    while seen.last() != Some(&200) {
        let a = next_ack(&mut s, AckKind::Scalars).await;
        assert!(
            seen.last() < Some(&a.point_seq),
            "acks go forward: {seen:?}, {}",
            a.point_seq
        );
        // What it names is committed.
        let sum = store.run("acks").await.unwrap().unwrap();
        assert!(sum.last_point_seq >= a.point_seq, "{sum:?}");
        seen.push(a.point_seq);
    }
    assert!(seen.len() < 20, "one ack per batch: {seen:?}");
    assert_eq!(
        stored_steps(store.as_ref(), "acks").await,
        (1..=200).collect::<Vec<i64>>()
    );
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_apply_in_order_once_and_across_a_reported_gap() {
    let dir = TempStore::new();
    let server = start_on(&dir).await;
    let store = server.store().unwrap().clone();
    let mut c = grpc::connect_plain(server.grpc_addr).await.unwrap();
    register(&mut c, "pts").await;
    let mut s = Stream::open(&mut c).await;
    assert_eq!(
        next_ack_after(&mut s, points_req("pts", 1, 10, 0)).await,
        10
    );
    // Beyond the next number, with no gap reported: dropped unacknowledged.
    s.send(points_req("pts", 21, 5, 0)).await;
    // A resend overlapping what is stored: only the new part is stored.
    assert_eq!(
        next_ack_after(&mut s, points_req("pts", 6, 10, 0)).await,
        15
    );
    // The agent lost 16..=20 (its ring was lapped) and says so.
    assert_eq!(
        next_ack_after(&mut s, points_req("pts", 21, 5, 5)).await,
        25
    );
    let steps = stored_steps(store.as_ref(), "pts").await;
    let expected: Vec<i64> = (1..=15).chain(21..=25).collect();
    assert_eq!(steps, expected);
    let session = server.registry().get("pts").unwrap();
    let c = &session.counters;
    assert_eq!(c.points_missed.load(Relaxed), 5);
    assert_eq!(c.points_out_of_order.load(Relaxed), 5);
    stop(server).await;
}

async fn next_ack_after(s: &mut Stream, req: MetricsRequest) -> u64 {
    s.send(req).await;
    next_ack(s, AckKind::Scalars).await.point_seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_resumes_after_the_committed_seqs_and_applies_nothing_twice() {
    let dir = TempStore::new();
    let server = start_on(&dir).await;
    let mut c = grpc::connect_plain(server.grpc_addr).await.unwrap();
    let r = register(&mut c, "rs").await;
    assert!(!r.resumed);
    let mut s = Stream::open(&mut c).await;
    for seq in 1..=2u64 {
        s.send(epoch_req("rs", seq, seq as u32 - 1)).await;
        assert_eq!(next_ack(&mut s, AckKind::Event).await.event_seq, seq);
    }
    assert_eq!(
        next_ack_after(&mut s, points_req("rs", 1, 500, 0)).await,
        500
    );
    drop(s);
    stop(server).await;

    // Same file, a new server: nothing of the run is in memory.
    let server = start_on(&dir).await;
    let store = server.store().unwrap().clone();
    let mut c = grpc::connect_plain(server.grpc_addr).await.unwrap();
    let r = register(&mut c, "rs").await;
    assert!(r.success && r.resumed, "{r:?}");
    assert_eq!((r.last_event_seq, r.last_point_seq), (2, 500));
    // The agent resends what it had not seen acknowledged, and goes on.
    let mut s = Stream::open(&mut c).await;
    s.send(epoch_req("rs", 2, 1)).await;
    assert_eq!(next_ack(&mut s, AckKind::Event).await.event_seq, 2);
    s.send(epoch_req("rs", 3, 2)).await;
    assert_eq!(next_ack(&mut s, AckKind::Event).await.event_seq, 3);
    assert_eq!(
        next_ack_after(&mut s, points_req("rs", 401, 200, 0)).await,
        600
    );
    let epochs: Vec<u64> = store
        .epochs("rs")
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(epochs, vec![1, 2, 3]);
    assert_eq!(
        stored_steps(store.as_ref(), "rs").await,
        (1..=600).collect::<Vec<_>>()
    );
    stop(server).await;
}
