//! The element kernels that `convert` and `ycbcr` share: the affine that
//! undoes a tensor's normalization, the decoding of u8/f16/f32 elements,
//! and the rounding to 8 bits.
//!
//! Everything here is `#[inline(always)]` over fixed-size arrays, so each
//! caller's loop is compiled (and vectorized) again inside the AVX2 variant
//! that `convert` dispatches to. Decoding hands each element to the caller's
//! map as it is read rather than filling an f32 array first: for f32, LLVM
//! sees the identity little-endian decode as a copy and emitted a libc
//! memcpy per chunk, which cost as much as the math.

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

use crate::tensor::{DType, TensorDesc};

/// Per-channel `pixel = x * scale + offset` for one tensor description.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine {
    pub(super) scale: [f32; 3],
    pub(super) offset: [f32; 3],
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

/// Decodes the first `N` elements of `dtype` from little-endian `bytes`
/// (at least `N * dtype.size()` of them; an unaligned shared-memory slice is
/// fine) and calls `map(i, x)` for each, in order.
#[inline(always)]
pub(super) fn decode<const N: usize>(dtype: DType, bytes: &[u8], mut map: impl FnMut(usize, f32)) {
    match dtype {
        DType::U8 => {
            let b = elements::<1, N>(bytes);
            for (i, &[x]) in b.iter().enumerate() {
                map(i, f32::from(x));
            }
        }
        DType::F32 => {
            let words = elements::<4, N>(bytes);
            for (i, &w) in words.iter().enumerate() {
                map(i, f32::from_le_bytes(w));
            }
        }
        DType::F16 => {
            let halves = elements::<2, N>(bytes);
            let mut bits = [0u16; N];
            for i in 0..N {
                bits[i] = u16::from_le_bytes(halves[i]);
            }
            let mut f = [0.0f32; N];
            // half converts 4 or 8 at a time with F16C (x86_64) or NEON fp16.
            let h: &[f16] = bits.reinterpret_cast();
            h.convert_to_f32_slice(&mut f);
            for (i, &x) in f.iter().enumerate() {
                map(i, x);
            }
        }
    }
}

/// The first `N` elements of `S` bytes each, as a fixed-size array (one
/// length check, then no bounds checks in the loops over it).
#[inline(always)]
fn elements<const S: usize, const N: usize>(bytes: &[u8]) -> &[[u8; S]; N] {
    let (all, _) = bytes.as_chunks::<S>();
    all.first_chunk::<N>()
        .expect("caller passes at least N elements")
}

/// `clamp(v, 0, 255)`; NaN becomes 0. Not `f32::clamp`: that keeps a NaN
/// (with whatever payload the tensor had), `max` turns it into 0.
#[inline(always)]
#[allow(clippy::manual_clamp)]
pub(super) fn clamp(v: f32) -> f32 {
    v.max(0.0).min(255.0)
}

/// `round(clamp(v, 0, 255))`, ties to even; NaN becomes 0.
#[inline(always)]
pub(super) fn to_u8(v: f32) -> u8 {
    /// 2^23: adding it to a value in [0, 256) leaves that value, rounded to
    /// the nearest integer, in the low mantissa bits. Unlike an `as` cast
    /// (saturating, NaN-checked, scalar on x86_64) this vectorizes.
    const ROUNDER: f32 = 8_388_608.0;
    (clamp(v) + ROUNDER).to_bits() as u8
}
