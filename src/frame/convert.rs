//! Tensor images → 8-bit pixels: the two entry points and the SIMD dispatch.
//!
//! `convert_image` writes interleaved gray or RGB: elements are decoded and
//! mapped through the affine of [`kernels`](super::kernels) chunk by chunk
//! (straight-line loops over fixed-size arrays, which LLVM vectorizes: SSE2
//! or, dispatched at run time, AVX2 on x86_64; NEON on aarch64).
//! `convert_image_yuv420` goes through the same dispatch to the YCbCr 4:2:0
//! kernel of `ycbcr.rs`. The one `unsafe` is the call into the AVX2 variant.

use super::kernels::{decode, to_u8};
use super::ycbcr::yuv420_portable;
use crate::tensor::{DType, Layout, TensorDesc};

// Re-exported: the pipeline builds one per batch beside these entry points.
pub use super::kernels::Affine;

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
    // A constant dtype per arm: each loop is compiled for one element type.
    match dtype {
        DType::U8 => run_chunks::<CHUNK>(DType::U8, src_full, dst_chunks, scale, offset),
        DType::F32 => run_chunks::<{ 4 * CHUNK }>(DType::F32, src_full, dst_chunks, scale, offset),
        DType::F16 => run_chunks::<{ 2 * CHUNK }>(DType::F16, src_full, dst_chunks, scale, offset),
    }
    if dst_tail.is_empty() {
        return;
    }
    // The tail goes through the same kernel, padded to a whole chunk.
    let mut padded = [0u8; 4 * CHUNK];
    padded[..src_tail.len()].copy_from_slice(src_tail);
    let mut out = [0u8; CHUNK];
    map_chunk(dtype, &padded, &mut out, scale, offset);
    dst_tail.copy_from_slice(&out[..dst_tail.len()]);
}

/// Whole chunks of `BYTES` source bytes (`CHUNK` elements of `dtype`) each.
#[inline(always)]
fn run_chunks<const BYTES: usize>(
    dtype: DType,
    src: &[u8],
    dst: &mut [[u8; CHUNK]],
    scale: &[f32; CHUNK],
    offset: &[f32; CHUNK],
) {
    let (src_chunks, _) = src.as_chunks::<BYTES>();
    for (s, d) in src_chunks.iter().zip(dst) {
        map_chunk(dtype, s, d, scale, offset);
    }
}

/// One chunk: element `i` becomes `to_u8(x * scale[i] + offset[i])`.
#[inline(always)]
fn map_chunk(
    dtype: DType,
    src: &[u8],
    dst: &mut [u8; CHUNK],
    scale: &[f32; CHUNK],
    offset: &[f32; CHUNK],
) {
    decode::<CHUNK>(dtype, src, |i, x| dst[i] = to_u8(x * scale[i] + offset[i]));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::ycbcr::Yuv420;
    use crate::tensor::Normalization;
    use half::f16;

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

    // The YCbCr kernel (ycbcr.rs), through the dispatch the pipeline uses.

    /// libjpeg's per-pixel transform, in f64, then the block mean.
    fn reference(rgb: &[[f64; 3]]) -> [f64; 3] {
        let n = rgb.len() as f64;
        let mean = |c: usize| rgb.iter().map(|p| p[c]).sum::<f64>() / n;
        let (r, g, b) = (mean(0), mean(1), mean(2));
        [
            0.299 * r + 0.587 * g + 0.114 * b,
            128.0 - 0.16874 * r - 0.33126 * g + 0.5 * b,
            128.0 + 0.5 * r - 0.41869 * g - 0.08131 * b,
        ]
    }

    #[test]
    fn odd_sized_f32_image_matches_libjpeg_transform_with_edge_repeat() {
        // 3x3: one full 2x2 block, partial blocks on the right and bottom;
        // values past [0, 1] exercise the clamp.
        let (w, h) = (3usize, 3usize);
        let px = |x: usize, y: usize| -> [f64; 3] {
            let v = (x * 3 + y) as f64 / 8.0;
            [v, 1.0 - v, (v * 2.0) - 0.5]
        };
        let mut src = Vec::new();
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    src.extend_from_slice(&(px(x, y)[c] as f32).to_le_bytes());
                }
            }
        }
        let desc = TensorDesc {
            dtype: DType::F32,
            layout: Layout::Nchw,
            count: 1,
            channels: 3,
            height: h as u32,
            width: w as u32,
            normalization: None,
        };
        let layout = Yuv420::new(3, 3);
        let mut dst = vec![0u8; layout.buf_len()];
        let mut scratch = vec![0.0; layout.scratch_len()];
        convert_image_yuv420(
            &desc,
            &Affine::for_desc(&desc),
            &src,
            &mut dst,
            &mut scratch,
        );
        let [y_plane, cb_plane, cr_plane] = layout.planes(&dst);
        assert_eq!((y_plane.len(), cb_plane.len(), cr_plane.len()), (16, 4, 4));
        let rgb =
            |x: usize, y: usize| px(x.min(w - 1), y.min(h - 1)).map(|v| v.clamp(0.0, 1.0) * 255.0);
        for y in 0..4 {
            for x in 0..4 {
                let want = reference(&[rgb(x, y)])[0];
                let got = f64::from(y_plane[y * 4 + x]);
                assert!(
                    (got - want).abs() <= 0.5 + 1e-3,
                    "Y({x},{y}) {got} vs {want}"
                );
            }
        }
        for by in 0..2 {
            for bx in 0..2 {
                let block: Vec<_> = [(0, 0), (1, 0), (0, 1), (1, 1)]
                    .iter()
                    .map(|(dx, dy)| rgb(2 * bx + dx, 2 * by + dy))
                    .collect();
                let want = reference(&block);
                for (plane, k) in [(cb_plane, 1), (cr_plane, 2)] {
                    let got = f64::from(plane[by * 2 + bx]);
                    assert!(
                        (got - want[k]).abs() <= 0.5 + 1e-3,
                        "plane {k} ({bx},{by}) {got} vs {}",
                        want[k]
                    );
                }
            }
        }
    }
}
