//! The cost of one telemetry sample, as the agent takes it once a second
//! per session: `cargo bench --bench telemetry`.
//!
//! `resource_sample` is the whole ResourceSampler::sample on this machine
//! (procfs through sysinfo for the device and this process, NVML if a
//! driver is present, sysfs otherwise); `jetson_sysfs_orin` is the Jetson
//! source alone against the Orin fixture tree; `fps_observe_and_report` is
//! one FpsTracker look plus its PerformanceData figures.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use trainwatch::proto;
use trainwatch::telemetry::gpu::{GpuReading, JetsonGpu};
use trainwatch::telemetry::{BatchSample, FpsTracker, ResourceSampler, RunTotals, TelemetryConfig};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn resources(c: &mut Criterion) {
    let mut sampler = ResourceSampler::new(&TelemetryConfig::default());
    let pid = Some(std::process::id());
    sampler.sample(pid);
    c.bench_function("resource_sample", |b| {
        b.iter(|| black_box(proto::ResourceUsage::from(&sampler.sample(pid))))
    });

    let mut jetson = JetsonGpu::new(&fixture("orin"), 30);
    c.bench_function("jetson_sysfs_orin", |b| {
        b.iter(|| {
            let mut r = GpuReading::default();
            jetson.read(&mut r);
            black_box(r)
        })
    });
}

fn fps(c: &mut Criterion) {
    let mut t = FpsTracker::new(Duration::from_secs(2));
    let totals = RunTotals {
        total_epochs: 10,
        batches_per_epoch: 1000,
    };
    let mut k = 0u64;
    c.bench_function("fps_observe_and_report", |b| {
        b.iter(|| {
            k += 1;
            let now = k * 20_000_000;
            t.observe(
                now,
                BatchSample {
                    published: k,
                    epoch: (k / 1000) as u32,
                    batch_idx: (k % 1000) as u32,
                    publish_ns: now,
                },
            );
            black_box(t.performance(now, totals))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = resources, fps
}
criterion_main!(benches);
