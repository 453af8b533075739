//! [`FramePipeline`]: validates a batch once, then runs convert → resize →
//! encode per image, on the caller's thread or on the worker pool.

use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use rayon::prelude::*;

use super::convert::{convert_image, convert_image_yuv420, Affine};
use super::encode::{max_jpeg_len, Encoder};
use super::pool::BufferPool;
use super::resize::{target_size, Resizer};
use super::ycbcr::Yuv420;
use super::{FrameConfig, FrameError, FrameSetting, MAX_IMAGES_LIMIT, MAX_JPEG_DIMENSION};
use crate::proto::ImageData;
use crate::tensor::{DType, Layout, TensorDesc, TensorError};

/// Largest `max_dimension` / `max_source_dimension` accepted: one 8192²
/// RGB convert buffer is already 192 MiB per worker.
const DIMENSION_LIMIT: u32 = 8192;
/// More encoding threads than this only steals cores from the trainer.
const WORKERS_LIMIT: usize = 16;
/// Batches of at most this many pixels are encoded on the calling thread
/// even with a worker pool (see `encode_batch_into`).
pub const SERIAL_PIXELS: u64 = 16 * 64 * 64;

/// One JPEG, ready to send.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncodedImage {
    /// The JPEG file; shares pooled memory that returns to the pool when the
    /// last clone is dropped.
    pub bytes: Bytes,
    pub width: u32,
    pub height: u32,
}

impl From<EncodedImage> for ImageData {
    fn from(image: EncodedImage) -> Self {
        ImageData {
            image_bytes: image.bytes,
        }
    }
}

/// The JPEGs of one batch, in tensor order. Reuse one across calls to
/// [`FramePipeline::encode_batch_into`] to keep the hot path allocation-free.
#[derive(Debug, Default)]
pub struct EncodedBatch {
    images: Vec<EncodedImage>,
}

impl EncodedBatch {
    pub fn with_capacity(max_images: usize) -> EncodedBatch {
        EncodedBatch {
            images: Vec::with_capacity(max_images),
        }
    }

    pub fn images(&self) -> &[EncodedImage] {
        &self.images
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Hands the images over (e.g. into `BatchData.images`), keeping this
    /// batch's capacity for the next call.
    pub fn drain(&mut self) -> impl Iterator<Item = EncodedImage> + '_ {
        self.images.drain(..)
    }

    pub fn into_images(self) -> Vec<EncodedImage> {
        self.images
    }

    /// Drops the images (their pool memory becomes free once no clone is left).
    pub fn clear(&mut self) {
        self.images.clear();
    }
}

/// One worker's buffers and codec state, allocated at start-up.
struct Lane {
    encoder: Encoder,
    resizer: Resizer,
    /// Converted source image, `max_source_dimension`² RGB, or its YCbCr
    /// 4:2:0 planes.
    pixels: Vec<u8>,
    /// Downscaled image, `max_dimension`² RGB.
    resized: Vec<u8>,
    /// The YCbCr conversion's chroma of one row, `max_source_dimension` floats.
    chroma: Vec<f32>,
}

/// Turns batch tensors into JPEGs with buffers allocated once, at start-up.
pub struct FramePipeline {
    config: FrameConfig,
    /// One per worker thread (one in all when encoding on the caller's thread).
    lanes: Vec<Mutex<Lane>>,
    pool: BufferPool,
    threads: Option<rayon::ThreadPool>,
}

impl FramePipeline {
    /// Validates `config` and allocates every buffer the pipeline will use.
    pub fn new(config: FrameConfig) -> Result<FramePipeline, FrameError> {
        validate(&config)?;
        let max_src = config.max_source_dimension;
        // 4:2:0 planes pad odd sides, so at tiny sizes they can exceed RGB.
        let yuv = Yuv420::new(max_src, max_src);
        let source_len = (sq(max_src) * 3).max(yuv.buf_len());
        let out_dim = config.max_dimension.min(config.max_source_dimension);
        let lanes = (0..config.workers)
            .map(|_| {
                Ok(Mutex::new(Lane {
                    encoder: Encoder::new(config.backend, config.quality)?,
                    resizer: Resizer::new(config.max_source_dimension, out_dim),
                    pixels: vec![0; source_len],
                    resized: vec![0; sq(out_dim) * 3],
                    chroma: vec![0.0; yuv.scratch_len()],
                }))
            })
            .collect::<Result<Vec<_>, FrameError>>()?;
        let pool = BufferPool::new(
            config.pool_batches * config.max_images,
            max_jpeg_len(out_dim, out_dim, 3),
        );
        let threads = if config.workers > 1 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(config.workers)
                .thread_name(|i| format!("trainwatch-frame-{i}"))
                .build()
                .map_err(|e| FrameError::Workers(e.to_string()))?;
            Some(pool)
        } else {
            None
        };
        Ok(FramePipeline {
            config,
            lanes,
            pool,
            threads,
        })
    }

    pub fn config(&self) -> &FrameConfig {
        &self.config
    }

    /// Output slots holding no live JPEG (all of them once every
    /// [`EncodedImage`] handed out has been dropped).
    pub fn idle_slots(&self) -> usize {
        self.pool.idle_slots()
    }

    /// Output slots in all.
    pub fn slots(&self) -> usize {
        self.pool.slots()
    }

    /// Encodes the first `min(desc.count, max_images, config.max_images)`
    /// images of the batch `data` (laid out as `desc` says), each downscaled
    /// to fit `max_dim` (0: the config's `max_dimension`; never above it).
    pub fn encode_batch(
        &self,
        desc: &TensorDesc,
        data: &[u8],
        max_images: usize,
        max_dim: u32,
    ) -> Result<EncodedBatch, FrameError> {
        let mut batch = EncodedBatch::with_capacity(self.config.max_images);
        self.encode_batch_into(desc, data, max_images, max_dim, &mut batch)?;
        Ok(batch)
    }

    /// [`encode_batch`](Self::encode_batch) into a reused `batch` (cleared
    /// first): the allocation-free form for the agent's frame loop.
    pub fn encode_batch_into(
        &self,
        desc: &TensorDesc,
        data: &[u8],
        max_images: usize,
        max_dim: u32,
        batch: &mut EncodedBatch,
    ) -> Result<(), FrameError> {
        batch.clear();
        let count = self.check_tensor(desc, data)?;
        let n = count.min(max_images).min(self.config.max_images);
        let max_dim = match max_dim {
            0 => self.config.max_dimension,
            d => d.min(self.config.max_dimension),
        };
        let job = Job {
            desc,
            affine: Affine::for_desc(desc),
            data,
            image_len: desc.image_bytes(),
            out_size: target_size(desc.width, desc.height, max_dim),
            pool: &self.pool,
        };
        batch.images.resize(n, EncodedImage::default());
        // Small batches stay on the calling thread: below about 16 x 64x64
        // pixels the hand-off to the pool costs more than it saves
        // (measured: 16 x 32x32x3 took 150 µs on 2 workers, 120 µs on one).
        let pixels = n as u64 * u64::from(desc.width) * u64::from(desc.height);
        let threads = self.threads.as_ref().filter(|_| pixels > SERIAL_PIXELS);
        let result = match threads {
            None => {
                let mut lane = lock(&self.lanes[0]);
                batch
                    .images
                    .iter_mut()
                    .enumerate()
                    .try_for_each(|(i, slot)| {
                        *slot = job.run(i, &mut lane)?;
                        Ok(())
                    })
            }
            Some(threads) => threads.install(|| {
                batch
                    .images
                    .par_iter_mut()
                    .enumerate()
                    .try_for_each(|(i, slot)| {
                        let worker = rayon::current_thread_index().unwrap_or(0);
                        let mut lane = lock(&self.lanes[worker % self.lanes.len()]);
                        *slot = job.run(i, &mut lane)?;
                        Ok(())
                    })
            }),
        };
        if result.is_err() {
            batch.clear();
        }
        result
    }

    /// Checks `desc` against the tensor rule (already applied at publish
    /// and read; here in defence), the config and `data`; returns its image
    /// count. The rule's errors keep the pipeline's own variants where it
    /// has them, so callers match one error type either way.
    fn check_tensor(&self, desc: &TensorDesc, data: &[u8]) -> Result<usize, FrameError> {
        let max = self.config.max_source_dimension;
        let bad_size = || FrameError::BadImageSize {
            width: desc.width,
            height: desc.height,
            max,
        };
        desc.validate().map_err(|e| match e {
            TensorError::Channels(channels) => FrameError::UnsupportedChannels { channels },
            TensorError::Side { .. } => bad_size(),
            TensorError::NormalizedInteger(dtype) => FrameError::NormalizedInteger { dtype },
            e => FrameError::Tensor(e),
        })?;
        if !(1..=max).contains(&desc.width) || !(1..=max).contains(&desc.height) {
            return Err(bad_size());
        }
        let expected = desc.total_bytes();
        if data.len() < expected {
            return Err(FrameError::ShortTensor {
                actual: data.len(),
                expected,
                count: desc.count as usize,
                layout: desc.layout,
                dtype: desc.dtype,
            });
        }
        Ok(desc.count as usize)
    }
}

/// What every image of one batch shares.
struct Job<'a> {
    desc: &'a TensorDesc,
    affine: Affine,
    data: &'a [u8],
    image_len: usize,
    out_size: (u32, u32),
    pool: &'a BufferPool,
}

impl Job<'_> {
    /// Convert → resize (if needed) → encode image `i` into the pool.
    fn run(&self, i: usize, lane: &mut Lane) -> Result<EncodedImage, FrameError> {
        let desc = self.desc;
        let src = &self.data[i * self.image_len..(i + 1) * self.image_len];
        let (width, height) = self.out_size;
        let same_size = (width, height) == (desc.width, desc.height);
        // NCHW color at its own size goes to libjpeg-turbo as Y, Cb, Cr
        // planes: no RGB image, no color conversion inside the encoder.
        let bytes = if same_size
            && desc.channels == 3
            && desc.layout == Layout::Nchw
            && lane.encoder.takes_yuv420()
        {
            self.encode_planar(src, lane)?
        } else {
            self.encode_interleaved(src, lane)?
        };
        Ok(EncodedImage {
            bytes,
            width,
            height,
        })
    }

    fn encode_planar(&self, src: &[u8], lane: &mut Lane) -> Result<Bytes, FrameError> {
        let (width, height) = self.out_size;
        let planes = &mut lane.pixels[..Yuv420::new(width, height).buf_len()];
        convert_image_yuv420(self.desc, &self.affine, src, planes, &mut lane.chroma);
        let encoder = &mut lane.encoder;
        self.pool.write_with(max_jpeg_len(width, height, 3), |out| {
            encoder.encode_yuv420(planes, width, height, out)
        })
    }

    fn encode_interleaved(&self, src: &[u8], lane: &mut Lane) -> Result<Bytes, FrameError> {
        let desc = self.desc;
        let channels = desc.channels;
        let src_px = desc.width as usize * desc.height as usize * channels as usize;
        let Lane {
            encoder,
            resizer,
            pixels,
            resized,
            ..
        } = lane;
        // u8 gray or NHWC RGB without normalization already is the image:
        // encode (or resize) straight from the tensor, no copy.
        let pixels: &[u8] =
            if desc.dtype == DType::U8 && (channels == 1 || desc.layout == Layout::Nhwc) {
                src
            } else {
                let pixels = &mut pixels[..src_px];
                convert_image(desc, &self.affine, src, pixels);
                pixels
            };
        let (width, height) = self.out_size;
        let image: &[u8] = if (width, height) == (desc.width, desc.height) {
            pixels
        } else {
            let out = &mut resized[..width as usize * height as usize * channels as usize];
            resizer.resize(
                pixels,
                (desc.width, desc.height),
                out,
                (width, height),
                channels,
            );
            out
        };
        let need = max_jpeg_len(width, height, channels);
        self.pool.write_with(need, |out| {
            encoder.encode(image, width, height, channels, out)
        })
    }
}

/// Checks a configuration without allocating anything (config loading uses
/// it; [`FramePipeline::new`] checks again).
pub(crate) fn validate(c: &FrameConfig) -> Result<(), FrameError> {
    let bad = |setting: FrameSetting, value: String, reason: &'static str| {
        Err(FrameError::InvalidConfig {
            setting,
            value,
            reason,
        })
    };
    if !(1..=100).contains(&c.quality) {
        return bad(
            FrameSetting::Quality,
            c.quality.to_string(),
            "expected 1..=100",
        );
    }
    if !(1..=DIMENSION_LIMIT).contains(&c.max_dimension) {
        return bad(
            FrameSetting::MaxDimension,
            c.max_dimension.to_string(),
            "expected 1..=8192",
        );
    }
    if !(1..=DIMENSION_LIMIT.min(MAX_JPEG_DIMENSION)).contains(&c.max_source_dimension) {
        return bad(
            FrameSetting::MaxSourceDimension,
            c.max_source_dimension.to_string(),
            "expected 1..=8192",
        );
    }
    if !(1..=MAX_IMAGES_LIMIT).contains(&c.max_images) {
        return bad(
            FrameSetting::MaxImages,
            c.max_images.to_string(),
            "expected 1..=64",
        );
    }
    if !(1..=WORKERS_LIMIT).contains(&c.workers) {
        return bad(
            FrameSetting::Workers,
            c.workers.to_string(),
            "expected 1..=16",
        );
    }
    if !(1..=16).contains(&c.pool_batches) {
        return bad(
            FrameSetting::PoolBatches,
            c.pool_batches.to_string(),
            "expected 1..=16",
        );
    }
    if !c.backend.is_available() {
        return Err(FrameError::BackendUnavailable(c.backend));
    }
    Ok(())
}

fn sq(d: u32) -> usize {
    d as usize * d as usize
}

/// A panicking worker poisons only its own lane's mutex; the buffers inside
/// are plain bytes that the next image overwrites, so keep using them.
fn lock(lane: &Mutex<Lane>) -> MutexGuard<'_, Lane> {
    lane.lock().unwrap_or_else(|p| p.into_inner())
}
