//! NCHW RGB tensor → the Y, Cb, Cr planes of a 4:2:0 JPEG, in one pass.
//!
//! libjpeg-turbo's own path from interleaved RGB converts every pixel to
//! YCbCr and then averages each 2x2 block of Cb and Cr; from planes
//! (`tj3CompressFromYUVPlanes8`) it skips both. NCHW already stores R, G and
//! B as planes, so this kernel reads them row by row, undoes the
//! normalization, clamps, and writes Y per pixel and Cb, Cr per 2x2 block
//! (the block's mean color, which is what averaging per-pixel chroma gives,
//! since the transform is linear). No interleaved RGB image is written or
//! read again. Coefficients are libjpeg's (JFIF, BT.601 full range); values
//! are not rounded to 8-bit RGB first, so the result is within rounding of
//! libjpeg's (tests/frame.rs compares the two paths' PSNR).

use super::kernels::{clamp, decode, to_u8, Affine};
use crate::tensor::{DType, TensorDesc};

// Pixels per row segment: even (whole 2x2 blocks) and a whole number of
// vectors. A row shorter than a segment is padded to a whole one, which with
// 128 made 32-pixel (CIFAR) images 20% slower than the RGB path; 32 for
// every width cost about 5% at 512 in per-segment overhead. So narrow images
// get narrow segments. (Each size is a const generic: arrays of `SEG / 2`
// would need the unstable generic_const_exprs, hence HALF and BYTES.)
const WIDE: usize = 128;
const NARROW: usize = 32;
/// Narrowest image that takes `WIDE` segments: at most a third of its work is padding.
const WIDE_FROM: usize = 2 * WIDE;

// jccolor.c's coefficients; chroma ones are divided by the 4 pixels of a block.
const Y_R: f32 = 0.299;
const Y_G: f32 = 0.587;
const Y_B: f32 = 0.114;
const CB_R: f32 = -0.168_74 / 4.0;
const CB_G: f32 = -0.331_26 / 4.0;
const CB_B: f32 = 0.5 / 4.0;
const CR_R: f32 = 0.5 / 4.0;
const CR_G: f32 = -0.418_69 / 4.0;
const CR_B: f32 = -0.081_31 / 4.0;

/// TurboJPEG's planar 4:2:0 layout for a `width` x `height` image, all three
/// planes in one buffer: Y padded to even sides (the padding repeats the
/// last column and row, as libjpeg pads), then Cb, then Cr, each
/// `ceil(w/2)` x `ceil(h/2)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Yuv420 {
    width: usize,
    height: usize,
}

impl Yuv420 {
    pub fn new(width: u32, height: u32) -> Yuv420 {
        Yuv420 {
            width: width as usize,
            height: height as usize,
        }
    }

    pub fn y_stride(&self) -> usize {
        self.width.next_multiple_of(2)
    }

    pub fn c_stride(&self) -> usize {
        self.width.div_ceil(2)
    }

    fn y_len(&self) -> usize {
        self.y_stride() * self.height.next_multiple_of(2)
    }

    fn c_len(&self) -> usize {
        self.c_stride() * self.height.div_ceil(2)
    }

    /// Bytes of all three planes.
    pub fn buf_len(&self) -> usize {
        self.y_len() + 2 * self.c_len()
    }

    /// Floats of scratch the conversion needs: the Cb and Cr of an even row.
    pub fn scratch_len(&self) -> usize {
        2 * self.c_stride()
    }

    /// The Y, Cb and Cr planes of `buf` (which holds at least `len()` bytes).
    pub fn planes<'a>(&self, buf: &'a [u8]) -> [&'a [u8]; 3] {
        let (y, rest) = buf.split_at(self.y_len());
        let (cb, rest) = rest.split_at(self.c_len());
        [y, cb, &rest[..self.c_len()]]
    }
}

/// Converts one 3-channel NCHW image of `desc` (`src` holds exactly its
/// `image_bytes()`) into `dst`, laid out as [`Yuv420`] says; `chroma` holds
/// at least [`Yuv420::scratch_len`] floats.
///
/// Rows are read top to bottom, each plane sequentially as the interleaving
/// kernel does: reading the two rows of a block pair side by side (two
/// streams 2 KiB apart in each plane) defeated the hardware prefetcher and
/// made this kernel 2.5x slower at 512x512. The even row's chroma waits in
/// `chroma` for the odd row.
#[inline(always)]
pub(super) fn yuv420_portable(
    desc: &TensorDesc,
    affine: &Affine,
    src: &[u8],
    dst: &mut [u8],
    chroma: &mut [f32],
) {
    if desc.width as usize >= WIDE_FROM {
        yuv420::<WIDE, { WIDE / 2 }, { 4 * WIDE }>(desc, affine, src, dst, chroma);
    } else {
        yuv420::<NARROW, { NARROW / 2 }, { 4 * NARROW }>(desc, affine, src, dst, chroma);
    }
}

/// The kernel for segments of `SEG` pixels (`HALF` = SEG / 2 blocks, `BYTES`
/// = 4 * SEG bytes of f32).
#[inline(always)]
fn yuv420<const SEG: usize, const HALF: usize, const BYTES: usize>(
    desc: &TensorDesc,
    affine: &Affine,
    src: &[u8],
    dst: &mut [u8],
    chroma: &mut [f32],
) {
    const { assert!(2 * HALF == SEG && BYTES == 4 * SEG) };
    let (w, h) = (desc.width as usize, desc.height as usize);
    let size = desc.dtype.size();
    debug_assert_eq!(desc.channels, 3);
    debug_assert_eq!(src.len(), 3 * w * h * size);
    let layout = Yuv420::new(desc.width, desc.height);
    let (ys, cs) = (layout.y_stride(), layout.c_stride());
    let (y_plane, rest) = dst.split_at_mut(layout.y_len());
    let (cb_plane, cr_plane) = rest.split_at_mut(layout.c_len());
    let (cb_even, cr_even) = chroma[..2 * cs].split_at_mut(cs);
    // One row segment, clamped to [0, 255], per channel.
    let mut rgb = [[0.0f32; SEG]; 3];
    let mut luma = [0u8; SEG];
    // This row's share of each block's Cb and Cr, then the even row's.
    let mut part = [[0.0f32; HALF]; 2];
    let mut even_part = [[0.0f32; HALF]; 2];
    let mut out = [[0u8; HALF]; 2];
    for row in 0..h {
        let odd = row % 2 == 1;
        // An odd height pairs its last row with itself (libjpeg repeats it).
        let alone = row == h - 1 && !odd;
        let mut x = 0;
        while x < w {
            let n = SEG.min(w - x);
            // An odd width repeats its last column into the padding column.
            let even = n.next_multiple_of(2);
            for (c, seg) in rgb.iter_mut().enumerate() {
                let start = ((c * h + row) * w + x) * size;
                load::<SEG, BYTES>(
                    desc.dtype,
                    &src[start..start + n * size],
                    affine.scale[c],
                    affine.offset[c],
                    seg,
                );
                if n < even {
                    seg[n] = seg[n - 1];
                }
            }
            to_luma(&rgb, &mut luma);
            let at = row * ys + x;
            put(&mut y_plane[at..], &luma, even);
            if alone {
                put(&mut y_plane[at + ys..], &luma, even);
            }
            to_chroma_part(&rgb, &mut part);
            let (at, half) = (x / 2, even / 2);
            if odd || alone {
                if odd {
                    get(&mut even_part[0], &cb_even[at..], half);
                    get(&mut even_part[1], &cr_even[at..], half);
                } else {
                    even_part = part;
                }
                finish_chroma(&part, &even_part, &mut out);
                let at = row / 2 * cs + at;
                put(&mut cb_plane[at..], &out[0], half);
                put(&mut cr_plane[at..], &out[1], half);
            } else {
                put(&mut cb_even[at..], &part[0], half);
                put(&mut cr_even[at..], &part[1], half);
            }
            x += n;
        }
    }
}

// Whole segments are copied as fixed-size arrays (inline vector moves); a
// slice copy of a run-time length is a libc `memmove` call, 3% of a 512x512
// batch when every segment paid it.

/// `dst[..len] = src[..len]`.
#[inline(always)]
fn put<T: Copy, const N: usize>(dst: &mut [T], src: &[T; N], len: usize) {
    match dst.first_chunk_mut::<N>() {
        Some(whole) if len == N => *whole = *src,
        _ => dst[..len].copy_from_slice(&src[..len]),
    }
}

/// `dst[..len] = src[..len]`.
#[inline(always)]
fn get<T: Copy, const N: usize>(dst: &mut [T; N], src: &[T], len: usize) {
    match src.first_chunk::<N>() {
        Some(whole) if len == N => *dst = *whole,
        _ => dst[..len].copy_from_slice(&src[..len]),
    }
}

#[inline(always)]
fn to_luma<const SEG: usize>(rgb: &[[f32; SEG]; 3], y: &mut [u8; SEG]) {
    for i in 0..SEG {
        y[i] = to_u8(Y_R * rgb[0][i] + Y_G * rgb[1][i] + Y_B * rgb[2][i]);
    }
}

/// One row's share of the Cb and Cr of each block: its two pixels.
#[inline(always)]
fn to_chroma_part<const SEG: usize, const HALF: usize>(
    rgb: &[[f32; SEG]; 3],
    part: &mut [[f32; HALF]; 2],
) {
    for j in 0..HALF {
        let r = rgb[0][2 * j] + rgb[0][2 * j + 1];
        let g = rgb[1][2 * j] + rgb[1][2 * j + 1];
        let b = rgb[2][2 * j] + rgb[2][2 * j + 1];
        part[0][j] = CB_R * r + CB_G * g + CB_B * b;
        part[1][j] = CR_R * r + CR_G * g + CR_B * b;
    }
}

#[inline(always)]
fn finish_chroma<const HALF: usize>(
    odd: &[[f32; HALF]; 2],
    even: &[[f32; HALF]; 2],
    out: &mut [[u8; HALF]; 2],
) {
    for k in 0..2 {
        for j in 0..HALF {
            out[k][j] = to_u8(128.0 + even[k][j] + odd[k][j]);
        }
    }
}

/// Decodes up to `SEG` elements of `dtype` from `bytes` into
/// `clamp(x * scale + offset, 0, 255)` (NaN → 0); past the end, `out` gets
/// values of zero bytes.
#[inline(always)]
fn load<const SEG: usize, const BYTES: usize>(
    dtype: DType,
    bytes: &[u8],
    scale: f32,
    offset: f32,
    out: &mut [f32; SEG],
) {
    let mut map = |i: usize, x: f32| out[i] = clamp(x * scale + offset);
    if bytes.len() == SEG * dtype.size() {
        // A whole segment, the common case: no copy.
        return decode::<SEG>(dtype, bytes, &mut map);
    }
    let mut padded = [0u8; BYTES];
    padded[..bytes.len()].copy_from_slice(bytes);
    decode::<SEG>(dtype, &padded, &mut map);
}
