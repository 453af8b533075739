//! Synthetic natural-looking images and the tensors a trainer would publish
//! for them, plus JPEG decoding and comparison for the frame tests.

use std::f32::consts::TAU;

use trainwatch::tensor::{DType, Layout, Normalization, TensorDesc};
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// torchvision's ImageNet normalization, the common case.
pub const IMAGENET: Normalization = Normalization {
    mean: [0.485, 0.456, 0.406],
    std: [0.229, 0.224, 0.225],
};

/// A tiny deterministic generator (xorshift), so tests need no rand crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }

    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.next_f32()
    }
}

/// `width` x `height` interleaved 8-bit pixels (`channels` 1 or 3) that look
/// like a photo to a JPEG encoder: gradients, low-frequency waves and a few
/// soft-edged blobs — smooth, not noise.
pub fn natural_image(width: u32, height: u32, channels: u32, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let (w, h) = (width as f32, height as f32);
    struct Wave {
        fx: f32,
        fy: f32,
        phase: f32,
        amp: f32,
    }
    let mut planes = Vec::new();
    for _ in 0..channels {
        let base = rng.range(60.0, 190.0);
        let gx = rng.range(-50.0, 50.0);
        let gy = rng.range(-50.0, 50.0);
        let waves: Vec<Wave> = (0..3)
            .map(|_| Wave {
                fx: rng.range(0.3, 2.5),
                fy: rng.range(0.3, 2.5),
                phase: rng.range(0.0, TAU),
                amp: rng.range(5.0, 20.0),
            })
            .collect();
        planes.push((base, gx, gy, waves));
    }
    let blobs: Vec<(f32, f32, f32, [f32; 3])> = (0..4)
        .map(|_| {
            (
                rng.range(0.1, 0.9),
                rng.range(0.1, 0.9),
                rng.range(0.08, 0.25),
                [
                    rng.range(-60.0, 60.0),
                    rng.range(-60.0, 60.0),
                    rng.range(-60.0, 60.0),
                ],
            )
        })
        .collect();
    let mut out = Vec::with_capacity((width * height * channels) as usize);
    for y in 0..height {
        for x in 0..width {
            let (u, v) = (x as f32 / w, y as f32 / h);
            for (c, (base, gx, gy, waves)) in planes.iter().enumerate() {
                let mut f = base + gx * u + gy * v;
                for wv in waves {
                    f += wv.amp * (TAU * (wv.fx * u + wv.fy * v) + wv.phase).sin();
                }
                for (bx, by, r, col) in &blobs {
                    let d2 = ((u - bx).powi(2) + (v - by).powi(2)) / (r * r);
                    f += col[c] * (-d2 * d2).exp();
                }
                out.push(f.clamp(0.0, 255.0).round() as u8);
            }
        }
    }
    out
}

/// The tensor a trainer publishes for `images` (each interleaved HWC u8, all
/// `width` x `height` x `channels`): `dtype`, `layout`, optionally normalized.
pub fn tensor_from_pixels(
    images: &[Vec<u8>],
    width: u32,
    height: u32,
    channels: u32,
    dtype: DType,
    layout: Layout,
    normalization: Option<Normalization>,
) -> (TensorDesc, Vec<u8>) {
    let desc = TensorDesc {
        dtype,
        layout,
        count: images.len() as u32,
        channels,
        height,
        width,
        normalization,
    };
    let (c_n, px_n) = (channels as usize, (width * height) as usize);
    let mut data = Vec::with_capacity(desc.total_bytes());
    for img in images {
        for i in 0..px_n * c_n {
            // Element i of this image in `layout` order → (pixel, channel).
            let (px, c) = match layout {
                Layout::Nhwc => (i / c_n, i % c_n),
                Layout::Nchw => (i % px_n, i / px_n),
            };
            let value = img[px * c_n + c];
            let x = match normalization {
                Some(n) => (value as f32 / 255.0 - n.mean[c]) / n.std[c],
                None => value as f32 / 255.0,
            };
            match dtype {
                DType::U8 => data.push(value),
                DType::F32 => data.extend_from_slice(&x.to_le_bytes()),
                DType::F16 => {
                    data.extend_from_slice(&half::f16::from_f32(x).to_bits().to_le_bytes())
                }
            }
        }
    }
    (desc, data)
}

/// Decoded JPEG: interleaved pixels in its own component count.
pub struct Decoded {
    pub width: u32,
    pub height: u32,
    pub components: u8,
    pub pixels: Vec<u8>,
}

/// Decodes with zune-jpeg (an independent decoder) in the file's own
/// colorspace: 1 component stays gray.
pub fn decode_jpeg(jpeg: &[u8]) -> Decoded {
    let (width, height, components) = sof(jpeg);
    let space = if components == 1 {
        ColorSpace::Luma
    } else {
        ColorSpace::RGB
    };
    let options = DecoderOptions::default().jpeg_set_out_colorspace(space);
    let mut dec = JpegDecoder::new_with_options(jpeg, options);
    let pixels = dec.decode().expect("our JPEG decodes");
    Decoded {
        width,
        height,
        components,
        pixels,
    }
}

/// Width, height and component count from the JPEG's start-of-frame header.
pub fn sof(jpeg: &[u8]) -> (u32, u32, u8) {
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "JPEG starts with SOI");
    let mut i = 2;
    while i + 4 <= jpeg.len() {
        assert_eq!(jpeg[i], 0xFF, "marker expected at byte {i}");
        let marker = jpeg[i + 1];
        let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
        if (0xC0..=0xC2).contains(&marker) {
            let h = u16::from_be_bytes([jpeg[i + 5], jpeg[i + 6]]) as u32;
            let w = u16::from_be_bytes([jpeg[i + 7], jpeg[i + 8]]) as u32;
            return (w, h, jpeg[i + 9]);
        }
        i += 2 + len;
    }
    panic!("no SOF marker in JPEG");
}

/// Peak signal-to-noise ratio of two equal-length 8-bit buffers, in dB.
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len(), "compared buffers differ in length");
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    if mse == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

/// Area-average downscale of interleaved 8-bit `src` to `dw` x `dh`, the
/// reference the pipeline's resized output is compared with.
pub fn box_downscale(src: &[u8], sw: u32, sh: u32, c: u32, dw: u32, dh: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity((dw * dh * c) as usize);
    for y in 0..dh {
        let (y0, y1) = (y * sh / dh, ((y + 1) * sh).div_ceil(dh));
        for x in 0..dw {
            let (x0, x1) = (x * sw / dw, ((x + 1) * sw).div_ceil(dw));
            for ch in 0..c {
                let mut sum = 0u64;
                for yy in y0..y1 {
                    for xx in x0..x1 {
                        sum += src[((yy * sw + xx) * c + ch) as usize] as u64;
                    }
                }
                let n = ((y1 - y0) * (x1 - x0)) as u64;
                out.push(((sum + n / 2) / n) as u8);
            }
        }
    }
    out
}
