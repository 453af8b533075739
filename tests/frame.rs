//! The frame pipeline, specified through its public API: every tensor form
//! a trainer may publish comes out as a JPEG close to its source pixels, at
//! the negotiated size, from pooled memory.

mod util;

use trainwatch::frame::{
    target_size, Backend, FrameConfig, FrameError, FramePipeline, DEFAULT_QUALITY,
};
use trainwatch::proto::ImageData;
use trainwatch::tensor::{DType, Layout, Normalization, TensorDesc};
use util::images::{box_downscale, decode_jpeg, natural_image, psnr, tensor_from_pixels, IMAGENET};

/// The bar for q85 on natural content.
const MIN_PSNR_DB: f64 = 30.0;

fn backends() -> Vec<Backend> {
    [Backend::TurboJpeg, Backend::JpegEncoder]
        .into_iter()
        .filter(|b| b.is_available())
        .collect()
}

fn config(backend: Backend, workers: usize) -> FrameConfig {
    FrameConfig {
        backend,
        workers,
        max_dimension: 128,
        max_source_dimension: 256,
        max_images: 4,
        ..FrameConfig::default()
    }
}

fn sources(n: usize, w: u32, h: u32, c: u32, seed: u64) -> Vec<Vec<u8>> {
    (0..n as u64)
        .map(|i| natural_image(w, h, c, seed + i))
        .collect()
}

#[test]
fn every_dtype_layout_channel_count_and_normalization_round_trips_above_30_db() {
    // Odd sizes: partial conversion chunks and partial 4:2:0 blocks.
    let (w, h) = (41, 23);
    for backend in backends() {
        let pipeline = FramePipeline::new(config(backend, 1)).unwrap();
        for channels in [1, 3] {
            let images = sources(2, w, h, channels, 7);
            for dtype in [DType::U8, DType::F32, DType::F16] {
                for layout in [Layout::Nchw, Layout::Nhwc] {
                    for norm in [None, Some(IMAGENET)] {
                        if dtype == DType::U8 && norm.is_some() {
                            continue; // rejected, see below
                        }
                        let (desc, data) =
                            tensor_from_pixels(&images, w, h, channels, dtype, layout, norm);
                        let batch = pipeline.encode_batch(&desc, &data, 16, 0).unwrap();
                        let case = format!(
                            "{backend} {dtype} {layout} c={channels} normalized={}",
                            norm.is_some()
                        );
                        assert_eq!(batch.len(), images.len(), "{case}");
                        for (img, src) in batch.images().iter().zip(&images) {
                            assert_eq!((img.width, img.height), (w, h), "{case}");
                            let d = decode_jpeg(&img.bytes);
                            assert_eq!((d.width, d.height), (w, h), "{case}");
                            assert_eq!(d.components as u32, channels, "{case}");
                            let db = psnr(&d.pixels, src);
                            assert!(db >= MIN_PSNR_DB, "{case}: PSNR {db:.1} dB");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn nchw_color_through_ycbcr_planes_is_as_good_as_libjpeg_color_conversion() {
    // f32 NCHW reaches libjpeg-turbo as 4:2:0 planes converted by us; u8
    // NHWC of the same pixels goes through libjpeg-turbo's own RGB → YCbCr
    // and downsampling. Odd sides, and several 32-pixel segments wide.
    if !Backend::TurboJpeg.is_available() {
        return;
    }
    let (w, h) = (301, 37);
    let pipeline = FramePipeline::new(FrameConfig {
        max_dimension: 512,
        max_source_dimension: 512,
        ..config(Backend::TurboJpeg, 1)
    })
    .unwrap();
    let images = sources(2, w, h, 3, 11);
    let encode = |dtype, layout, norm| {
        let (desc, data) = tensor_from_pixels(&images, w, h, 3, dtype, layout, norm);
        pipeline.encode_batch(&desc, &data, 16, 0).unwrap()
    };
    let by_libjpeg = encode(DType::U8, Layout::Nhwc, None);
    let by_planes = encode(DType::F32, Layout::Nchw, Some(IMAGENET));
    for ((a, b), src) in by_libjpeg
        .images()
        .iter()
        .zip(by_planes.images())
        .zip(&images)
    {
        let (da, db) = (decode_jpeg(&a.bytes), decode_jpeg(&b.bytes));
        let (pa, pb) = (psnr(&da.pixels, src), psnr(&db.pixels, src));
        assert!(pb >= pa - 0.05, "planes {pb:.2} dB, libjpeg {pa:.2} dB");
        // Same quantization and subsampling: nearly the same image and size.
        let between = psnr(&da.pixels, &db.pixels);
        assert!(between >= 40.0, "planes vs libjpeg: {between:.1} dB");
        let ratio = b.bytes.len() as f64 / a.bytes.len() as f64;
        assert!((0.97..=1.03).contains(&ratio), "size ratio {ratio:.3}");
    }
}

#[test]
fn gray_tensors_stay_one_component_jpegs() {
    for backend in backends() {
        let pipeline = FramePipeline::new(config(backend, 1)).unwrap();
        let images = sources(1, 28, 28, 1, 3);
        let (desc, data) = tensor_from_pixels(&images, 28, 28, 1, DType::F32, Layout::Nchw, None);
        let batch = pipeline.encode_batch(&desc, &data, 16, 0).unwrap();
        let d = decode_jpeg(&batch.images()[0].bytes);
        assert_eq!(d.components, 1, "{backend}");
        assert_eq!(d.pixels.len(), 28 * 28, "{backend}");
    }
}

#[test]
fn images_larger_than_max_dimension_are_downscaled_keeping_aspect_ratio() {
    let (w, h) = (240, 160);
    let images = sources(2, w, h, 3, 11);
    let (desc, data) =
        tensor_from_pixels(&images, w, h, 3, DType::F32, Layout::Nchw, Some(IMAGENET));
    for backend in backends() {
        let pipeline = FramePipeline::new(config(backend, 1)).unwrap();
        // (per-call max_dim, expected size): 0 means the config's 128; a
        // server may lower the limit but never raise it past the config.
        for (max_dim, want) in [
            (0, (128, 85)),
            (60, (60, 40)),
            (1000, (128, 85)),
            (240, (128, 85)),
        ] {
            let batch = pipeline.encode_batch(&desc, &data, 16, max_dim).unwrap();
            for (img, src) in batch.images().iter().zip(&images) {
                assert_eq!((img.width, img.height), want, "{backend} max_dim={max_dim}");
                let d = decode_jpeg(&img.bytes);
                assert_eq!((d.width, d.height), want);
                let reference = box_downscale(src, w, h, 3, want.0, want.1);
                let db = psnr(&d.pixels, &reference);
                assert!(db >= 28.0, "{backend} max_dim={max_dim}: PSNR {db:.1} dB");
            }
        }
    }
    assert_eq!(target_size(w, h, 128), (128, 85));
}

#[test]
fn at_most_max_images_are_encoded_in_tensor_order() {
    let images = sources(6, 16, 16, 3, 21);
    let (desc, data) = tensor_from_pixels(&images, 16, 16, 3, DType::U8, Layout::Nhwc, None);
    let pipeline = FramePipeline::new(config(Backend::default(), 1)).unwrap();
    // The call's limit, then the config's (4), then the tensor's count.
    assert_eq!(pipeline.encode_batch(&desc, &data, 2, 0).unwrap().len(), 2);
    assert_eq!(pipeline.encode_batch(&desc, &data, 16, 0).unwrap().len(), 4);
    let one = TensorDesc { count: 1, ..desc };
    let batch = pipeline.encode_batch(&one, &data, 16, 0).unwrap();
    assert_eq!(batch.len(), 1);
    assert!(psnr(&decode_jpeg(&batch.images()[0].bytes).pixels, &images[0]) >= MIN_PSNR_DB);
}

#[test]
fn worker_pool_output_is_identical_to_single_thread_output() {
    let images = sources(4, 64, 48, 3, 31);
    let (desc, data) =
        tensor_from_pixels(&images, 64, 48, 3, DType::F16, Layout::Nchw, Some(IMAGENET));
    for backend in backends() {
        let single = FramePipeline::new(config(backend, 1)).unwrap();
        let pooled = FramePipeline::new(config(backend, 3)).unwrap();
        let a = single.encode_batch(&desc, &data, 16, 0).unwrap();
        let b = pooled.encode_batch(&desc, &data, 16, 0).unwrap();
        assert_eq!(a.images(), b.images(), "{backend}");
    }
}

#[test]
fn unaligned_float_tensors_convert_like_aligned_ones() {
    let images = sources(2, 20, 12, 3, 41);
    let (desc, data) = tensor_from_pixels(&images, 20, 12, 3, DType::F32, Layout::Nchw, None);
    let mut shifted = vec![0u8; data.len() + 1];
    shifted[1..].copy_from_slice(&data);
    let pipeline = FramePipeline::new(config(Backend::default(), 1)).unwrap();
    let aligned = pipeline.encode_batch(&desc, &data, 16, 0).unwrap();
    let unaligned = pipeline.encode_batch(&desc, &shifted[1..], 16, 0).unwrap();
    assert_eq!(aligned.images(), unaligned.images());
}

#[test]
fn jpegs_move_into_the_proto_message_without_a_copy() {
    let images = sources(1, 16, 16, 3, 51);
    let (desc, data) = tensor_from_pixels(&images, 16, 16, 3, DType::U8, Layout::Nhwc, None);
    let pipeline = FramePipeline::new(config(Backend::default(), 1)).unwrap();
    let mut batch = pipeline.encode_batch(&desc, &data, 16, 0).unwrap();
    let ptr = batch.images()[0].bytes.as_ptr();
    let msg: Vec<ImageData> = batch.drain().map(ImageData::from).collect();
    assert_eq!(msg[0].image_bytes.as_ptr(), ptr);
    assert!(batch.is_empty());
}

#[test]
fn the_output_pool_is_fixed_and_memory_returns_when_jpegs_are_dropped() {
    let images = sources(4, 128, 128, 3, 61);
    let (desc, data) = tensor_from_pixels(&images, 128, 128, 3, DType::U8, Layout::Nhwc, None);
    let cfg = FrameConfig {
        pool_batches: 1,
        ..config(Backend::default(), 1)
    };
    let pipeline = FramePipeline::new(cfg).unwrap();
    assert_eq!(pipeline.slots(), 4);
    // 128x128 is the largest image: each needs a whole slot.
    let held = pipeline.encode_batch(&desc, &data, 16, 0).unwrap();
    assert_eq!(pipeline.idle_slots(), 0);
    let err = pipeline.encode_batch(&desc, &data, 16, 0).unwrap_err();
    assert!(
        matches!(err, FrameError::PoolExhausted { slots: 4, .. }),
        "{err}"
    );
    assert!(err.is_transient());
    drop(held);
    assert_eq!(pipeline.idle_slots(), 4);
    for _ in 0..3 {
        let batch = pipeline.encode_batch(&desc, &data, 16, 0).unwrap();
        assert_eq!(batch.len(), 4);
    }
}

#[test]
fn small_jpegs_share_a_slot() {
    let images = sources(4, 28, 28, 1, 71);
    let (desc, data) = tensor_from_pixels(&images, 28, 28, 1, DType::U8, Layout::Nchw, None);
    let cfg = FrameConfig {
        pool_batches: 1,
        ..config(Backend::default(), 1)
    };
    let pipeline = FramePipeline::new(cfg).unwrap();
    // Keep many batches alive at once: far more images than slots.
    let kept: Vec<_> = (0..8)
        .map(|_| pipeline.encode_batch(&desc, &data, 16, 0).unwrap())
        .collect();
    assert_eq!(kept.iter().map(|b| b.len()).sum::<usize>(), 32);
    assert!(
        pipeline.idle_slots() >= 2,
        "small images packed into few slots"
    );
}

#[test]
fn bad_tensors_are_rejected_naming_the_value() {
    let pipeline = FramePipeline::new(config(Backend::default(), 1)).unwrap();
    let desc = TensorDesc {
        dtype: DType::F32,
        layout: Layout::Nchw,
        count: 2,
        channels: 3,
        height: 8,
        width: 8,
        normalization: None,
    };
    let data = vec![0u8; desc.total_bytes()];
    let err = |d: &TensorDesc, bytes: &[u8]| pipeline.encode_batch(d, bytes, 16, 0).unwrap_err();

    let e = err(&desc, &data[..100]);
    assert!(
        matches!(
            e,
            FrameError::ShortTensor {
                actual: 100,
                expected: 1536,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("100 bytes") && e.to_string().contains("1536"),
        "{e}"
    );

    let e = err(
        &TensorDesc {
            channels: 4,
            ..desc
        },
        &data,
    );
    assert!(e.to_string().contains("4 channels"), "{e}");

    let e = err(&TensorDesc { width: 300, ..desc }, &data);
    assert!(e.to_string().contains("300x8"), "{e}");
    let e = err(&TensorDesc { height: 0, ..desc }, &data);
    assert!(e.to_string().contains("8x0"), "{e}");

    let norm = Some(Normalization {
        mean: [0.5; 3],
        std: [0.5; 3],
    });
    let e = err(
        &TensorDesc {
            dtype: DType::U8,
            normalization: norm,
            ..desc
        },
        &data,
    );
    assert!(
        matches!(e, FrameError::NormalizedInteger { dtype: DType::U8 }),
        "{e}"
    );
    assert!(!e.is_transient());
}

#[test]
fn invalid_config_is_rejected_naming_key_and_value() {
    let cases = [
        (
            FrameConfig {
                quality: 0,
                ..FrameConfig::default()
            },
            "quality = 0",
        ),
        (
            FrameConfig {
                quality: 101,
                ..FrameConfig::default()
            },
            "quality = 101",
        ),
        (
            FrameConfig {
                workers: 0,
                ..FrameConfig::default()
            },
            "workers = 0",
        ),
        (
            FrameConfig {
                max_images: 0,
                ..FrameConfig::default()
            },
            "max_images = 0",
        ),
        (
            FrameConfig {
                max_dimension: 0,
                ..FrameConfig::default()
            },
            "max_dimension = 0",
        ),
        (
            FrameConfig {
                max_source_dimension: 100_000,
                ..FrameConfig::default()
            },
            "max_source_dimension = 100000",
        ),
        (
            FrameConfig {
                pool_batches: 0,
                ..FrameConfig::default()
            },
            "pool_batches = 0",
        ),
    ];
    for (cfg, want) in cases {
        let e = FramePipeline::new(cfg).err().expect(want);
        assert!(e.to_string().contains(want), "{e} should name {want}");
    }
    assert_eq!(FrameConfig::default().quality, DEFAULT_QUALITY);
    assert_eq!(
        "jpeg-encoder".parse::<Backend>().unwrap(),
        Backend::JpegEncoder
    );
    assert!("png"
        .parse::<Backend>()
        .unwrap_err()
        .to_string()
        .contains("\"png\""));
}
