//! Frame pipeline throughput: µs per 16-image batch (convert + encode, f32
//! NCHW ImageNet-normalized input, q85) per backend, on the caller's thread
//! and on the worker pool; plus the default backend from u8 NHWC input
//! (group `frame_u8`), which is what Pillow encodes from. `scripts/bench_frame.sh` runs it beside the Pillow
//! reference on the same images and prints the comparison table.
//!
//! Images: `$TRAINWATCH_BENCH_IMAGES/<shape>.u8` (N x H x W x C u8, written by
//! the script from the reference's generator) when present, else this
//! crate's synthetic natural-looking images.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use trainwatch::frame::{Backend, EncodedBatch, FrameConfig, FramePipeline};
use trainwatch::tensor::{DType, Layout};

#[allow(dead_code)]
#[path = "../tests/util/images.rs"]
mod images;

const BATCH: usize = 16;
/// (reference name, height, width, channels)
const SHAPES: [(&str, u32, u32, u32); 4] = [
    ("mnist", 28, 28, 1),
    ("cifar", 32, 32, 3),
    ("imagenet", 224, 224, 3),
    ("max", 512, 512, 3),
];

fn source_images(name: &str, h: u32, w: u32, c: u32) -> Vec<Vec<u8>> {
    let len = (h * w * c) as usize;
    if let Some(dir) = std::env::var_os("TRAINWATCH_BENCH_IMAGES") {
        let path = std::path::Path::new(&dir).join(format!("{name}.u8"));
        if let Ok(raw) = std::fs::read(&path) {
            return raw
                .chunks_exact(len)
                .take(BATCH)
                .map(<[u8]>::to_vec)
                .collect();
        }
    }
    (0..BATCH as u64)
        .map(|i| images::natural_image(w, h, c, i))
        .collect()
}

fn bench(c: &mut Criterion) {
    let pool_workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    let mut backends = vec![Backend::JpegEncoder];
    if Backend::TurboJpeg.is_available() {
        backends.insert(0, Backend::TurboJpeg);
    }
    for (name, h, w, ch) in SHAPES {
        let srcs = source_images(name, h, w, ch);
        let (desc, data) = images::tensor_from_pixels(
            &srcs,
            w,
            h,
            ch,
            DType::F32,
            Layout::Nchw,
            Some(images::IMAGENET),
        );
        let mut group = c.benchmark_group(format!("frame/{name}"));
        group.throughput(Throughput::Elements(BATCH as u64 * (h * w) as u64));
        for &backend in &backends {
            for workers in [1, pool_workers] {
                let pipeline = FramePipeline::new(FrameConfig {
                    backend,
                    workers,
                    max_images: BATCH,
                    max_dimension: 512,
                    max_source_dimension: 512,
                    ..FrameConfig::default()
                })
                .expect("bench config is valid");
                let mut batch = EncodedBatch::with_capacity(BATCH);
                let id = BenchmarkId::new(backend.name(), format!("workers={workers}"));
                group.bench_function(id, |b| {
                    b.iter(|| {
                        pipeline
                            .encode_batch_into(&desc, black_box(&data), BATCH, 0, &mut batch)
                            .expect("batch encodes");
                        black_box(batch.len())
                    })
                });
            }
        }
        group.finish();

        // The same images as u8 NHWC, the form Pillow encodes from: isolates
        // the encoder from the f32 conversion.
        let (desc, data) =
            images::tensor_from_pixels(&srcs, w, h, ch, DType::U8, Layout::Nhwc, None);
        let mut group = c.benchmark_group(format!("frame_u8/{name}"));
        group.throughput(Throughput::Elements(BATCH as u64 * (h * w) as u64));
        let pipeline = FramePipeline::new(FrameConfig {
            backend: backends[0],
            workers: 1,
            max_images: BATCH,
            max_dimension: 512,
            max_source_dimension: 512,
            ..FrameConfig::default()
        })
        .expect("bench config is valid");
        let mut batch = EncodedBatch::with_capacity(BATCH);
        let id = BenchmarkId::new(backends[0].name(), "workers=1");
        group.bench_function(id, |b| {
            b.iter(|| {
                pipeline
                    .encode_batch_into(&desc, black_box(&data), BATCH, 0, &mut batch)
                    .expect("batch encodes");
                black_box(batch.len())
            })
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
