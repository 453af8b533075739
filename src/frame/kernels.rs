//! The pieces both pixel kernels share: the affine that undoes a tensor's
//! normalization and the rounding to 8 bits. `convert` (gray/RGB) and
//! `ycbcr` (YCbCr 4:2:0 planes) both build on this file, so the arrow runs
//! from them to here and never between the two.

use crate::tensor::{DType, TensorDesc};

/// Per-channel `pixel = x * scale + offset` for one tensor description.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine {
    pub scale: [f32; 3],
    pub offset: [f32; 3],
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

/// `round(clamp(v, 0, 255))`, ties to even; NaN becomes 0.
#[inline(always)]
// Not `clamp`: it keeps a NaN (with whatever payload the tensor had), max()
// turns it into 0.
#[allow(clippy::manual_clamp)]
pub fn to_u8(v: f32) -> u8 {
    /// 2^23: adding it to a value in [0, 256) leaves that value, rounded to
    /// the nearest integer, in the low mantissa bits. Unlike an `as` cast
    /// (saturating, NaN-checked, scalar on x86_64) this vectorizes.
    const ROUNDER: f32 = 8_388_608.0;
    (v.max(0.0).min(255.0) + ROUNDER).to_bits() as u8
}
