//! Tensor elements → 8-bit pixels: undo normalization, clamp, round.
//!
//! Every dtype is first decoded into a small stack chunk of `f32` (from
//! little-endian bytes, so an unaligned shared-memory slice is fine), then one
//! affine kernel `round(clamp(x * scale + offset, 0, 255))` turns the chunk
//! into bytes. Both loops are straight-line over fixed-size arrays, which
//! LLVM vectorizes (SSE2 or, dispatched at run time, AVX2 on x86_64; NEON on
//! aarch64). The YCbCr 4:2:0 kernel of `ycbcr.rs` goes through the same
//! dispatch. The one `unsafe` is the call into the AVX2 variant.

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

use super::kernels::{to_u8, Affine};
use super::ycbcr::yuv420_portable;
use crate::tensor::{DType, Layout, TensorDesc};

/// Elements per chunk: a multiple of 3 (so an NHWC chunk starts on a pixel)
/// and of 16 (a whole number of vectors); 192 f32 stay well inside L1.
const CHUNK: usize = 192;

/// Converts one image of `desc` (`src` holds exactly its `image_bytes()`)
/// into interleaved 8-bit pixels: gray (1 byte) or RGB (3 bytes) per pixel.
/// `dst` holds exactly `height * width * channels` bytes.
pub fn convert_image(desc: &TensorDesc, affine: &Affine, src: &[u8], dst: &mut [u8]) {
    dispatch(Kernel::Interleaved, desc, affine, src, dst);
}

/// Converts one 3-channel NCHW image of `desc` (`src` holds exactly its
/// `image_bytes()`) into JPEG's Y, Cb, Cr 4:2:0 planes, laid out in `dst` as
/// [`Yuv420`](super::Yuv420) says, using `scratch` (at least its
/// `scratch_len()` floats).
pub fn convert_image_yuv420(
    desc: &TensorDesc,
    affine: &Affine,
    src: &[u8],
    dst: &mut [u8],
    scratch: &mut [f32],
) {
    dispatch(Kernel::Yuv420 { scratch }, desc, affine, src, dst);
}

/// What a conversion writes.
enum Kernel<'a> {
    Interleaved,
    Yuv420 { scratch: &'a mut [f32] },
}

fn dispatch(kernel: Kernel, desc: &TensorDesc, affine: &Affine, src: &[u8], dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        #[allow(unsafe_code)]
        // SAFETY: `convert_avx2` only requires the CPU to support AVX2,
        // which `has_avx2` has just checked at run time. This is the only
        // `unsafe` in `src/frame`: calling a `#[target_feature]` function from
        // code compiled without that feature is unsafe by definition.
        unsafe {
            return convert_avx2(kernel, desc, affine, src, dst);
        }
    }
    convert_portable(kernel, desc, affine, src, dst);
}

/// Whether this x86_64 CPU has AVX2 (cached by std after the first call).
#[cfg(target_arch = "x86_64")]
#[inline]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

/// The same kernels compiled for AVX2 (8 floats a vector, byte shuffles for
/// the RGB interleave): the default x86_64 target is SSE2 only.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn convert_avx2(kernel: Kernel, desc: &TensorDesc, affine: &Affine, src: &[u8], dst: &mut [u8]) {
    convert_portable(kernel, desc, affine, src, dst);
}

/// Portable body: SSE2 on x86_64, NEON on aarch64; every callee is
/// `#[inline(always)]` so that it is compiled again inside the AVX2 variant.
#[inline(always)]
fn convert_portable(
    kernel: Kernel,
    desc: &TensorDesc,
    affine: &Affine,
    src: &[u8],
    dst: &mut [u8],
) {
    match kernel {
        Kernel::Interleaved => interleaved(desc, affine, src, dst),
        Kernel::Yuv420 { scratch } => yuv420_portable(desc, affine, src, dst, scratch),
    }
}

#[inline(always)]
fn interleaved(desc: &TensorDesc, affine: &Affine, src: &[u8], dst: &mut [u8]) {
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
#[inline(always)]
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
        match <&mut [u8; 3 * CHUNK]>::try_from(&mut *out) {
            Ok(out) => interleave(&tmp, out),
            Err(_) => {
                for (i, px) in out.chunks_exact_mut(3).enumerate() {
                    px.copy_from_slice(&[tmp[0][i], tmp[1][i], tmp[2][i]]);
                }
            }
        }
        start += n;
    }
}

/// Fixed-size so that LLVM emits vector shuffles for the stride-3 stores.
#[inline(always)]
fn interleave(planes: &[[u8; CHUNK]; 3], out: &mut [u8; 3 * CHUNK]) {
    for i in 0..CHUNK {
        out[3 * i] = planes[0][i];
        out[3 * i + 1] = planes[1][i];
        out[3 * i + 2] = planes[2][i];
    }
}

/// Converts the elements of `src` into `dst` (one byte each), chunk by chunk;
/// element `i` of every chunk uses `scale[i]` and `offset[i]`.
#[inline(always)]
fn convert_run(
    dtype: DType,
    src: &[u8],
    dst: &mut [u8],
    scale: &[f32; CHUNK],
    offset: &[f32; CHUNK],
) {
    let size = dtype.size();
    let full = dst.len() / CHUNK;
    let (src_full, src_tail) = src.split_at(full * CHUNK * size);
    let (dst_full, dst_tail) = dst.split_at_mut(full * CHUNK);
    let (dst_chunks, _) = dst_full.as_chunks_mut::<CHUNK>();
    match dtype {
        DType::U8 => {
            let (src_chunks, _) = src_full.as_chunks::<CHUNK>();
            for (s, d) in src_chunks.iter().zip(dst_chunks) {
                u8_chunk(s, d, scale, offset);
            }
        }
        DType::F32 => {
            let (src_chunks, _) = src_full.as_chunks::<{ 4 * CHUNK }>();
            for (s, d) in src_chunks.iter().zip(dst_chunks) {
                f32_chunk(s, d, scale, offset);
            }
        }
        DType::F16 => {
            let (src_chunks, _) = src_full.as_chunks::<{ 2 * CHUNK }>();
            for (s, d) in src_chunks.iter().zip(dst_chunks) {
                f16_chunk(s, d, scale, offset);
            }
        }
    }
    if dst_tail.is_empty() {
        return;
    }
    // The tail goes through the same kernels, padded to a whole chunk.
    let mut padded = [0u8; 4 * CHUNK];
    padded[..src_tail.len()].copy_from_slice(src_tail);
    let mut out = [0u8; CHUNK];
    match dtype {
        DType::U8 => u8_chunk(first_chunk(&padded), &mut out, scale, offset),
        DType::F32 => f32_chunk(&padded, &mut out, scale, offset),
        DType::F16 => f16_chunk(first_chunk(&padded), &mut out, scale, offset),
    }
    dst_tail.copy_from_slice(&out[..dst_tail.len()]);
}

#[inline(always)]
fn first_chunk<const N: usize>(bytes: &[u8; 4 * CHUNK]) -> &[u8; N] {
    bytes.first_chunk::<N>().expect("N <= 4 * CHUNK")
}

// Each kernel decodes and maps in one loop: an intermediate f32 array
// would be copied with a libc memcpy per chunk (LLVM sees the identity
// little-endian decode as a copy), which cost as much as the math.

#[inline(always)]
fn u8_chunk(s: &[u8; CHUNK], d: &mut [u8; CHUNK], scale: &[f32; CHUNK], offset: &[f32; CHUNK]) {
    for i in 0..CHUNK {
        d[i] = to_u8(s[i] as f32 * scale[i] + offset[i]);
    }
}

#[inline(always)]
fn f32_chunk(
    s: &[u8; 4 * CHUNK],
    d: &mut [u8; CHUNK],
    scale: &[f32; CHUNK],
    offset: &[f32; CHUNK],
) {
    let (words, _) = s.as_chunks::<4>();
    for i in 0..CHUNK {
        d[i] = to_u8(f32::from_le_bytes(words[i]) * scale[i] + offset[i]);
    }
}

#[inline(always)]
fn f16_chunk(
    s: &[u8; 2 * CHUNK],
    d: &mut [u8; CHUNK],
    scale: &[f32; CHUNK],
    offset: &[f32; CHUNK],
) {
    let (halves, _) = s.as_chunks::<2>();
    let mut bits = [0u16; CHUNK];
    for i in 0..CHUNK {
        bits[i] = u16::from_le_bytes(halves[i]);
    }
    let mut f = [0.0f32; CHUNK];
    // half converts 4 or 8 at a time with F16C (x86_64) or NEON fp16.
    let h: &[f16] = bits.reinterpret_cast();
    h.convert_to_f32_slice(&mut f);
    for i in 0..CHUNK {
        d[i] = to_u8(f[i] * scale[i] + offset[i]);
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
        // B: 0.5 → 128 (127.5 ties to even), -2 → 0.
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
