//! Publish cost on the trainer's side and the agent's cost of reading the
//! newest frame. `cargo bench --bench shm`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use trainwatch::shm::{
    Batch, Frame, ImagePolicy, Images, Reader, RunConfig, Writer, WriterOptions,
};
use trainwatch::tensor::{DType, Layout, Normalization, TensorDesc};

const SHAPES: [(&str, u32); 2] = [("16x32x32x3_f32", 32), ("16x224x224x3_f32", 224)];

fn setup(name: &str, policy: ImagePolicy) -> (tempfile::TempDir, Writer) {
    let dir = tempfile::Builder::new()
        .prefix("trainwatch-bench-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let mut opts = WriterOptions::new(dir.path());
    opts.image_policy = policy;
    let cfg = RunConfig {
        run_name: name.into(),
        model_name: "resnet18".into(),
        dataset_name: "bench".into(),
        class_names: (0..10).map(|i| format!("class{i}")).collect(),
        total_epochs: 1,
        batches_per_epoch: 1,
        batch_size: 16,
    };
    let w = Writer::create(&cfg, &opts).unwrap();
    (dir, w)
}

fn desc(side: u32) -> TensorDesc {
    TensorDesc {
        dtype: DType::F32,
        layout: Layout::Nhwc,
        count: 16,
        channels: 3,
        height: side,
        width: side,
        normalization: Some(Normalization {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }),
    }
}

fn batch<'a>(
    d: TensorDesc,
    data: &'a [u8],
    preds: &'a [i32; 16],
    confs: &'a [f32; 16],
) -> Batch<'a> {
    Batch {
        epoch: 1,
        batch_idx: 2,
        loss: 0.5,
        predictions: preds,
        confidences: confs,
        labels: preds,
        images: Some(Images { desc: d, data }),
    }
}

fn publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("publish");
    let (preds, confs) = ([3i32; 16], [0.5f32; 16]);
    for (name, side) in SHAPES {
        let d = desc(side);
        let data = vec![7u8; d.total_bytes()];
        let (_dir, mut w) = setup(name, ImagePolicy::Always);
        let b = batch(d, &data, &preds, &confs);
        g.throughput(Throughput::Bytes(d.total_bytes() as u64));
        g.bench_with_input(BenchmarkId::new("copied", name), &b, |bench, b| {
            bench.iter(|| w.publish_frame(black_box(b)).unwrap())
        });
        // No agent attached: what calling publish every batch costs.
        let (_dir2, mut w2) = setup(name, ImagePolicy::Auto);
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("skipped", name), &b, |bench, b| {
            bench.iter(|| w2.publish_batch(black_box(b)).unwrap())
        });
    }
    g.finish();
}

fn read_newest(c: &mut Criterion) {
    let mut g = c.benchmark_group("read_newest");
    let (preds, confs) = ([3i32; 16], [0.5f32; 16]);
    for (name, side) in SHAPES {
        let d = desc(side);
        let data = vec![7u8; d.total_bytes()];
        let (_dir, mut w) = setup(name, ImagePolicy::Always);
        w.publish_frame(&batch(d, &data, &preds, &confs)).unwrap();
        let r = Reader::open(w.path()).unwrap();
        let mut f = Frame::default();
        g.throughput(Throughput::Bytes(d.total_bytes() as u64));
        g.bench_function(name, |bench| {
            bench.iter(|| r.newest_frame(black_box(&mut f)).unwrap())
        });
    }
    g.finish();
}

/// `Writer::log` per point (issue 14: well under 1 µs at 10,000 points/s):
/// 10 keys per call and 1 key per call; Throughput::Elements = points.
fn log_points(c: &mut Criterion) {
    let mut g = c.benchmark_group("log");
    let names: Vec<String> = (0..10).map(|i| format!("metric/k{i}")).collect();
    let ten: Vec<(&str, f64)> = names.iter().map(|n| (n.as_str(), 0.5)).collect();
    for (name, points) in [
        ("10_keys_per_call", &ten[..]),
        ("1_key_per_call", &ten[..1]),
    ] {
        let (_dir, mut w) = setup(name, ImagePolicy::Auto);
        let mut step = 0i64;
        g.throughput(Throughput::Elements(points.len() as u64));
        g.bench_function(name, |bench| {
            bench.iter(|| {
                step += 1;
                w.log(step, black_box(points)).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    // Short: the machine is shared; the figures are for orientation.
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = publish, read_newest, log_points
}
criterion_main!(benches);
