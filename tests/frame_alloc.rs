//! The steady-state frame path allocates nothing: a counting global
//! allocator (its own test target, since it replaces the allocator of the
//! whole binary) watches convert → resize → encode into the pool.

mod util;

use trainwatch::frame::{Backend, EncodedBatch, FrameConfig, FramePipeline};
use trainwatch::tensor::{DType, Layout, TensorDesc};
use util::alloc::{process_allocations, Counting};
use util::images::{natural_image, tensor_from_pixels, IMAGENET};

// Counted on every thread: the worker pool's threads are watched too.
#[global_allocator]
static GLOBAL: Counting = Counting;

/// Frames run after warm-up; each must allocate nothing.
const FRAMES: usize = 20;

/// Allocations per frame of `pipeline` on `desc`, after two warm-up frames.
/// Each frame's JPEGs are dropped before the next, as the sender would.
fn allocations_per_frame(
    pipeline: &FramePipeline,
    desc: &TensorDesc,
    data: &[u8],
    batch: &mut EncodedBatch,
) -> f64 {
    for _ in 0..2 {
        pipeline
            .encode_batch_into(desc, data, 16, 0, batch)
            .unwrap();
    }
    let before = process_allocations();
    for _ in 0..FRAMES {
        pipeline
            .encode_batch_into(desc, data, 16, 0, batch)
            .unwrap();
        assert_eq!(batch.len(), desc.count as usize);
    }
    let after = process_allocations();
    (after - before) as f64 / FRAMES as f64
}

struct Case {
    name: &'static str,
    desc: TensorDesc,
    data: Vec<u8>,
}

fn cases() -> Vec<Case> {
    let rgb: Vec<Vec<u8>> = (0..4).map(|i| natural_image(96, 64, 3, i)).collect();
    let gray: Vec<Vec<u8>> = (0..4).map(|i| natural_image(28, 28, 1, i)).collect();
    let big: Vec<Vec<u8>> = (0..2).map(|i| natural_image(200, 150, 3, i)).collect();
    let mut out = Vec::new();
    let (desc, data) =
        tensor_from_pixels(&rgb, 96, 64, 3, DType::F32, Layout::Nchw, Some(IMAGENET));
    out.push(Case {
        name: "f32 NCHW rgb normalized",
        desc,
        data,
    });
    let (desc, data) = tensor_from_pixels(&rgb, 96, 64, 3, DType::F16, Layout::Nhwc, None);
    out.push(Case {
        name: "f16 NHWC rgb",
        desc,
        data,
    });
    let (desc, data) = tensor_from_pixels(&gray, 28, 28, 1, DType::U8, Layout::Nchw, None);
    out.push(Case {
        name: "u8 gray",
        desc,
        data,
    });
    let (desc, data) = tensor_from_pixels(&big, 200, 150, 3, DType::F32, Layout::Nchw, None);
    out.push(Case {
        name: "f32 rgb downscaled 200x150 → 128x96",
        desc,
        data,
    });
    out
}

/// One test: the counter is process-wide, so nothing may run beside it.
#[test]
fn steady_state_frames_allocate_nothing() {
    let cases = cases();
    let mut report = Vec::new();
    let mut backends = vec![(Backend::JpegEncoder, 1)];
    if Backend::TurboJpeg.is_available() {
        backends.insert(0, (Backend::TurboJpeg, 1));
        backends.push((Backend::TurboJpeg, 2));
    }
    for (backend, workers) in backends {
        let pipeline = FramePipeline::new(FrameConfig {
            backend,
            workers,
            max_dimension: 128,
            max_source_dimension: 256,
            max_images: 4,
            ..FrameConfig::default()
        })
        .unwrap();
        let mut batch = EncodedBatch::with_capacity(4);
        for case in &cases {
            let per_frame = allocations_per_frame(&pipeline, &case.desc, &case.data, &mut batch);
            report.push((backend, workers, case.name, per_frame));
        }
    }
    for (backend, workers, name, per_frame) in &report {
        eprintln!("{backend} workers={workers} {name}: {per_frame} allocations/frame");
    }
    for (backend, workers, name, per_frame) in &report {
        match (backend, workers) {
            // libjpeg-turbo on the caller's thread: zero, every case.
            (Backend::TurboJpeg, 1) => {
                assert_eq!(
                    *per_frame, 0.0,
                    "{backend} {name} allocates in steady state"
                )
            }
            // On the worker pool, rayon's injector queue allocates one block
            // of job slots every few dozen batches; nothing per image.
            (Backend::TurboJpeg, _) => {
                assert!(
                    *per_frame <= 0.1,
                    "{backend} workers={workers} {name}: {per_frame}"
                )
            }
            // jpeg-encoder allocates inside its encoder (about 9 per image):
            // the reason it is not the default.
            (Backend::JpegEncoder, _) => assert!(*per_frame > 0.0),
        }
    }
}
