//! Tensor elements → 8-bit pixels: undo normalization, clamp, round.
//!
//! Every dtype is first decoded into a small stack chunk of `f32` (from
//! little-endian bytes, so an unaligned shared-memory slice is fine), then one
//! affine kernel `round(clamp(x * scale + offset, 0, 255))` turns the chunk
//! into bytes. Both loops are straight-line over fixed-size arrays, which
//! LLVM vectorizes (SSE2/AVX2 on x86_64, NEON on aarch64) without `unsafe`.

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

use crate::tensor::{DType, Layout, TensorDesc};

/// Elements per chunk: a multiple of 3 (so an NHWC chunk starts on a pixel)
/// and of 16 (a whole number of vectors); 192 f32 stay well inside L1.
const CHUNK: usize = 192;

/// Per-channel `pixel = x * scale + offset` for one tensor description.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine {
    scale: [f32; 3],
    offset: [f32; 3],
}

impl Affine {
    /// Float tensors are [0, 1] scale, normalized ones `(x * std + mean) * 255`;
    /// u8 tensors are taken as they are.
    pub fn for_desc(desc: &TensorDesc) -> Affine {
        match (desc.dtype, desc.normalization) {
            (DType::U8, _) => Affine {
                scale: [1.0; 3],
                offset: [0.0; 3],
            },
            (_, None) => Affine {
                scale: [255.0; 3],
                offset: [0.0; 3],
            },
            (_, Some(n)) => Affine {
                scale: n.std.map(|s| s * 255.0),
                offset: n.mean.map(|m| m * 255.0),
            },
        }
    }
}

/// Converts one image of `desc` (`src` holds exactly its `image_bytes()`)
/// into interleaved 8-bit pixels: gray (1 byte) or RGB (3 bytes) per pixel.
/// `dst` holds exactly `height * width * channels` bytes.
pub fn convert_image(desc: &TensorDesc, affine: &Affine, src: &[u8], dst: &mut [u8]) {
    let pixels = desc.height as usize * desc.width as usize;
    let channels = desc.channels as usize;
    debug_assert_eq!(src.len(), pixels * channels * desc.dtype.size());
    debug_assert_eq!(dst.len(), pixels * channels);
    if channels == 1 || desc.layout == Layout::Nhwc {
        // Element order already matches the output: one pass, channel
        // pattern repeating every `channels` elements.
        let mut scale = [0.0f32; CHUNK];
        let mut offset = [0.0f32; CHUNK];
        for i in 0..CHUNK {
            scale[i] = affine.scale[i % channels];
            offset[i] = affine.offset[i % channels];
        }
        convert_run(desc.dtype, src, dst, &scale, &offset);
    } else {
        convert_planar_rgb(desc.dtype, affine, src, dst, pixels);
    }
}

/// NCHW with 3 channels: convert a chunk of each plane, then interleave.
fn convert_planar_rgb(dtype: DType, affine: &Affine, src: &[u8], dst: &mut [u8], pixels: usize) {
    let plane_bytes = pixels * dtype.size();
    let planes = [
        &src[..plane_bytes],
        &src[plane_bytes..2 * plane_bytes],
        &src[2 * plane_bytes..3 * plane_bytes],
    ];
    let scales = affine.scale.map(|s| [s; CHUNK]);
    let offsets = affine.offset.map(|o| [o; CHUNK]);
    let mut tmp = [[0u8; CHUNK]; 3];
    let mut start = 0;
    while start < pixels {
        let n = CHUNK.min(pixels - start);
        let bytes = start * dtype.size()..(start + n) * dtype.size();
        for c in 0..3 {
            convert_run(
                dtype,
                &planes[c][bytes.clone()],
                &mut tmp[c][..n],
                &scales[c],
                &offsets[c],
            );
        }
        let out = &mut dst[start * 3..(start + n) * 3];
        for (i, px) in out.chunks_exact_mut(3).enumerate() {
            px[0] = tmp[0][i];
            px[1] = tmp[1][i];
            px[2] = tmp[2][i];
        }
        start += n;
    }
}

/// Converts the elements of `src` into `dst` (one byte each), chunk by chunk;
/// element `i` of every chunk uses `scale[i]` and `offset[i]`.
fn convert_run(
    dtype: DType,
    src: &[u8],
    dst: &mut [u8],
    scale: &[f32; CHUNK],
    offset: &[f32; CHUNK],
) {
    let size = dtype.size();
    let mut f = [0.0f32; CHUNK];
    let mut bits = [0u16; CHUNK];
    for (s, d) in src.chunks(CHUNK * size).zip(dst.chunks_mut(CHUNK)) {
        let n = d.len();
        match dtype {
            DType::U8 => {
                for (x, &b) in f.iter_mut().zip(s) {
                    *x = b as f32;
                }
            }
            DType::F32 => {
                for (x, b) in f.iter_mut().zip(s.chunks_exact(4)) {
                    *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            DType::F16 => {
                for (x, b) in bits.iter_mut().zip(s.chunks_exact(2)) {
                    *x = u16::from_le_bytes([b[0], b[1]]);
                }
                let halves: &[f16] = bits[..n].reinterpret_cast();
                halves.convert_to_f32_slice(&mut f[..n]);
            }
        }
        affine_to_u8(&f[..n], &scale[..n], &offset[..n], d);
    }
}

/// `round(clamp(x * scale + offset, 0, 255))`; NaN becomes 0.
#[inline]
fn affine_to_u8(f: &[f32], scale: &[f32], offset: &[f32], out: &mut [u8]) {
    for (((o, &x), &s), &b) in out.iter_mut().zip(f).zip(scale).zip(offset) {
        // `as u8` saturates and truncates: adding 0.5 after the clamp rounds
        // half up, and a NaN (which max/min pass through) becomes 0.
        *o = ((x * s + b).clamp(0.0, 255.0) + 0.5) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Normalization;

    fn desc(dtype: DType, layout: Layout, channels: u32, n: Option<Normalization>) -> TensorDesc {
        TensorDesc {
            dtype,
            layout,
            count: 1,
            channels,
            height: 1,
            width: 2,
            normalization: n,
        }
    }

    #[test]
    fn normalized_f32_nchw_undoes_mean_and_std_then_rounds_and_clamps() {
        let norm = Normalization {
            mean: [0.5, 0.25, 0.0],
            std: [0.5, 0.25, 1.0],
        };
        let d = desc(DType::F32, Layout::Nchw, 3, Some(norm));
        // planes: R = [-1, 1], G = [0, 3], B = [0.5, -2]
        let vals = [-1.0f32, 1.0, 0.0, 3.0, 0.5, -2.0];
        let src: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut dst = [0u8; 6];
        convert_image(&d, &Affine::for_desc(&d), &src, &mut dst);
        // R: (-1*.5+.5)=0 → 0, (1*.5+.5)=1 → 255; G: .25 → 64 (63.75), 1.0 → 255;
        // B: 0.5 → 128 (127.5 rounds up), -2 → 0.
        assert_eq!(dst, [0, 64, 128, 255, 255, 0]);
    }

    #[test]
    fn f16_nhwc_and_u8_gray_and_nan() {
        let d = desc(DType::F16, Layout::Nhwc, 3, None);
        let vals = [0.0f32, 0.5, 1.0, f32::NAN, 2.0, -1.0];
        let src: Vec<u8> = vals
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_bits().to_le_bytes())
            .collect();
        let mut dst = [0u8; 6];
        convert_image(&d, &Affine::for_desc(&d), &src, &mut dst);
        assert_eq!(dst, [0, 128, 255, 0, 255, 0]);

        let d = desc(DType::U8, Layout::Nchw, 1, None);
        let mut dst = [0u8; 2];
        convert_image(&d, &Affine::for_desc(&d), &[7, 250], &mut dst);
        assert_eq!(dst, [7, 250]);
    }
}
