//! The frame pipeline: a batch tensor from shared memory → up to
//! `max_images` JPEGs ready to send.
//!
//! Each image goes through **convert** (dtype/layout/normalization → 8-bit
//! gray or RGB, or for NCHW color straight to the YCbCr 4:2:0 planes
//! libjpeg-turbo encodes from; vectorized safe Rust), **resize** (only when
//! larger than the negotiated maximum; a cached-table fixed-point resampler
//! that vectorizes) and **encode** (libjpeg-turbo, bundled and static, or
//! the pure-Rust jpeg-encoder) into a fixed [pool](pool) of output memory.
//! The JPEGs come out as `bytes::Bytes` sharing that memory, so the gRPC
//! layer sends them without a copy and the memory returns to the pool when
//! they are dropped.
//!
//! Every buffer is allocated by [`FramePipeline::new`] from [`FrameConfig`];
//! in steady state a batch allocates nothing (tests/frame_alloc.rs proves it
//! for the turbojpeg backend). The images of a batch can be spread over a
//! small fixed pool of worker threads (`workers`), sized by default to leave
//! the trainer most of the device's cores.

mod convert;
mod encode;
mod kernels;
mod pipeline;
mod pool;
mod resize;
mod ycbcr;

pub use convert::{convert_image, convert_image_yuv420};
pub use encode::{max_jpeg_len, Backend, Encoder};
pub use kernels::Affine;
pub use pipeline::{EncodedBatch, EncodedImage, FramePipeline, SERIAL_PIXELS};
pub use resize::target_size;
pub use ycbcr::Yuv420;

use crate::tensor::{DType, Layout};

/// Default JPEG quality: the seed's.
pub const DEFAULT_QUALITY: u8 = 85;
/// Default largest side sent: the seed server's `max_image_dimension`.
pub const DEFAULT_MAX_DIMENSION: u32 = crate::proto::negotiated::MAX_IMAGE_DIMENSION;
/// Default largest side accepted from a trainer (sizes the convert buffers:
/// 3 MiB per worker at 1024).
pub const DEFAULT_MAX_SOURCE_DIMENSION: u32 = 1024;
/// Default images per batch: the seed server's `max_batch_size`.
pub const DEFAULT_MAX_IMAGES: usize = crate::proto::negotiated::MAX_BATCH_SIZE as usize;
/// Largest `max_images` accepted: a batch message carries at most this many.
pub const MAX_IMAGES_LIMIT: usize = 64;
/// Largest side jpeg-encoder (and the JPEG format) can write.
pub const MAX_JPEG_DIMENSION: u32 = 65_500;

/// What a [`FramePipeline`] is built from; every buffer is sized from it.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameConfig {
    /// JPEG quality, 1–100.
    pub quality: u8,
    /// Largest side of a sent image; larger images are downscaled keeping
    /// their aspect ratio. A server may lower it per call, never raise it.
    pub max_dimension: u32,
    /// Largest side of a source image accepted from the tensor.
    pub max_source_dimension: u32,
    /// Most images encoded per batch.
    pub max_images: usize,
    /// Threads encoding the images of a batch; 1 encodes on the caller's
    /// thread with no pool.
    pub workers: usize,
    /// How many batches of JPEGs may be alive at once (being encoded, queued
    /// or in flight): the output pool holds `pool_batches * max_images`
    /// worst-case JPEGs of `max_dimension`.
    pub pool_batches: usize,
    pub backend: Backend,
}

impl FrameConfig {
    /// Checks every value against the pipeline's limits, allocating nothing.
    pub fn validate(&self) -> Result<(), FrameError> {
        pipeline::validate(self)
    }
}

impl Default for FrameConfig {
    fn default() -> Self {
        FrameConfig {
            quality: DEFAULT_QUALITY,
            max_dimension: DEFAULT_MAX_DIMENSION,
            max_source_dimension: DEFAULT_MAX_SOURCE_DIMENSION,
            max_images: DEFAULT_MAX_IMAGES,
            workers: default_workers(),
            pool_batches: 2,
            backend: Backend::default_for_build(),
        }
    }
}

/// A quarter of the cores, 1 to 4: the trainer's data loader and CUDA
/// threads keep the rest (a 6-core Jetson Orin NX gets 1, a 12-core AGX 3).
pub fn default_workers() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 4).clamp(1, 4)
}

/// One bounded setting of [`FrameConfig`], so that config loading maps an
/// [`FrameError::InvalidConfig`] to its key by variant, not by text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameSetting {
    Quality,
    MaxDimension,
    MaxSourceDimension,
    MaxImages,
    Workers,
    PoolBatches,
}

impl std::fmt::Display for FrameSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FrameSetting::Quality => "quality",
            FrameSetting::MaxDimension => "max_dimension",
            FrameSetting::MaxSourceDimension => "max_source_dimension",
            FrameSetting::MaxImages => "max_images",
            FrameSetting::Workers => "workers",
            FrameSetting::PoolBatches => "pool_batches",
        })
    }
}

/// Everything that can go wrong between a tensor and its JPEGs.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame config: {setting} = {value} is invalid: {reason}")]
    InvalidConfig {
        setting: FrameSetting,
        value: String,
        reason: &'static str,
    },
    #[error("JPEG backend {0} is not in this build (cargo feature `turbojpeg` is off)")]
    BackendUnavailable(Backend),
    #[error("unknown JPEG backend {0:?}, expected \"turbojpeg\" or \"jpeg-encoder\"")]
    UnknownBackend(String),
    #[error("tensor has {channels} channels, expected 1 (gray) or 3 (RGB)")]
    UnsupportedChannels { channels: u32 },
    #[error(
        "tensor image is {width}x{height}, expected both sides in 1..={max} (max_source_dimension)"
    )]
    BadImageSize { width: u32, height: u32, max: u32 },
    #[error("tensor is {dtype} with mean/std normalization; normalization applies to f32/f16 tensors only")]
    NormalizedInteger { dtype: DType },
    /// The rest of the tensor rule ([`TensorDesc::validate`](crate::tensor::TensorDesc::validate)).
    #[error("tensor {0}")]
    Tensor(crate::tensor::TensorError),
    #[error("tensor data is {actual} bytes, expected at least {expected} for {count} {layout} images of {dtype}")]
    ShortTensor {
        actual: usize,
        expected: usize,
        count: usize,
        layout: Layout,
        dtype: DType,
    },
    /// Every output slot still holds JPEGs that have not been sent: the
    /// caller drops this frame (and counts it) rather than waiting.
    #[error(
        "JPEG output pool exhausted: all {slots} slots hold unsent images (needed {need} bytes)"
    )]
    PoolExhausted { slots: usize, need: usize },
    #[error("JPEG encoding with {backend} failed: {message}")]
    Encode { backend: Backend, message: String },
    #[error("could not start frame worker threads: {0}")]
    Workers(String),
}

impl FrameError {
    /// Whether the next frame may succeed where this one failed: an
    /// exhausted pool frees up as JPEGs are sent; everything else is the
    /// tensor's or the config's fault and repeats until they change.
    pub fn is_transient(&self) -> bool {
        matches!(self, FrameError::PoolExhausted { .. })
    }
}
