//! How a batch of sample images is described in shared memory, shared by the
//! writer and reader (`shm`) and the converter (`frame`).
//!
//! Trainers publish tensors as they have them — normalized f32 NCHW from a
//! PyTorch data loader, u8 NHWC from a decoder, f16 from mixed precision —
//! and the agent converts; the trainer never pays for conversion.
//!
//! [`TensorDesc::validate`] is the one rule a descriptor must pass. The
//! writer applies it at publish time (so a trainer hears at once, through
//! the C ABI and the Python wrapper), the reader to what it finds in a slot,
//! and the frame pipeline once more in defence. [`RawTensor`] is the
//! descriptor as plain numbers, `#[repr(C)]`: the C ABI's `tw_images` holds
//! one, and the segment stores its fields.

use std::fmt;

/// Largest image side accepted; beyond any sample a dashboard shows.
pub const MAX_DIM: u32 = 16384;

/// A descriptor that breaks the tensor rule: the field and the value seen.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
pub enum TensorError {
    #[error("dtype is {0}, expected 1 (u8), 2 (f32) or 3 (f16)")]
    DType(u32),
    #[error("layout is {0}, expected 1 (NCHW) or 2 (NHWC)")]
    Layout(u32),
    #[error("channels is {0}, expected 1 or 3")]
    Channels(u32),
    #[error("{side} is {value}, expected 1..={MAX_DIM}")]
    Side { side: &'static str, value: u32 },
    #[error("has_norm is {0}, expected 0 or 1")]
    HasNorm(u32),
    #[error("has_norm is 1 with dtype {0}, expected 0: mean/std undo the normalization of f32/f16 tensors only")]
    NormalizedInteger(DType),
    #[error("mean[{index}] is {value}, expected a finite number")]
    Mean { index: usize, value: f32 },
    #[error("std[{index}] is {value}, expected a finite non-zero number")]
    Std { index: usize, value: f32 },
}

/// Element type of the published tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DType {
    U8 = 1,
    F32 = 2,
    F16 = 3,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::U8 => 1,
            DType::F32 => 4,
            DType::F16 => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(DType::U8),
            2 => Some(DType::F32),
            3 => Some(DType::F16),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::U8 => "u8",
            DType::F32 => "f32",
            DType::F16 => "f16",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Memory order of one batch: channels first (PyTorch) or last (NumPy/PIL).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Layout {
    Nchw = 1,
    Nhwc = 2,
}

impl Layout {
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Layout::Nchw),
            2 => Some(Layout::Nhwc),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Layout::Nchw => "NCHW",
            Layout::Nhwc => "NHWC",
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Describes `count` images of `channels` x `height` x `width` elements.
///
/// `mean`/`std` undo a per-channel normalization `(x - mean) / std`: the
/// pixel value is `(x * std + mean) * 255` for float tensors in [0, 1] scale,
/// as torchvision's `Normalize` leaves them. Without them, float values are
/// taken as [0, 1] and u8 values as they are.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TensorDesc {
    pub dtype: DType,
    pub layout: Layout,
    pub count: u32,
    pub channels: u32,
    pub height: u32,
    pub width: u32,
    pub normalization: Option<Normalization>,
}

/// Per-channel mean and standard deviation (only the first `channels` are used).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl TensorDesc {
    /// Bytes of one image.
    pub fn image_bytes(&self) -> usize {
        self.channels as usize * self.height as usize * self.width as usize * self.dtype.size()
    }

    /// Bytes of the whole batch.
    pub fn total_bytes(&self) -> usize {
        self.image_bytes() * self.count as usize
    }
}

impl TensorDesc {
    /// The tensor rule: 1 or 3 channels, sides in 1..=[`MAX_DIM`], mean/std
    /// only on float tensors, finite, with a non-zero std for every channel
    /// used. The image count is the caller's to bound (the segment holds at
    /// most 16; the pipeline encodes as many as its config allows).
    pub fn validate(&self) -> Result<(), TensorError> {
        if self.channels != 1 && self.channels != 3 {
            return Err(TensorError::Channels(self.channels));
        }
        for (side, value) in [("height", self.height), ("width", self.width)] {
            if value == 0 || value > MAX_DIM {
                return Err(TensorError::Side { side, value });
            }
        }
        let Some(norm) = &self.normalization else {
            return Ok(());
        };
        if self.dtype == DType::U8 {
            return Err(TensorError::NormalizedInteger(self.dtype));
        }
        for (index, (&mean, &std)) in norm.mean.iter().zip(&norm.std).enumerate() {
            if !mean.is_finite() {
                return Err(TensorError::Mean { index, value: mean });
            }
            if !std.is_finite() || (index < self.channels as usize && std == 0.0) {
                return Err(TensorError::Std { index, value: std });
            }
        }
        Ok(())
    }
}

/// A descriptor as plain numbers: what a C trainer fills in (`tw_images`
/// from `dtype` to `std`, include/trainwatch.h) and what a frame slot
/// stores. Nothing in it is trusted until [`decode`](Self::decode).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RawTensor {
    pub dtype: u32,
    pub layout: u32,
    pub count: u32,
    pub channels: u32,
    pub height: u32,
    pub width: u32,
    pub has_norm: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl RawTensor {
    pub fn from_desc(desc: &TensorDesc) -> RawTensor {
        let norm = desc.normalization;
        RawTensor {
            dtype: desc.dtype as u32,
            layout: desc.layout as u32,
            count: desc.count,
            channels: desc.channels,
            height: desc.height,
            width: desc.width,
            has_norm: norm.is_some() as u32,
            mean: norm.map_or([0.0; 3], |n| n.mean),
            std: norm.map_or([0.0; 3], |n| n.std),
        }
    }

    /// The descriptor these numbers stand for, if they pass the tensor rule.
    pub fn decode(&self) -> Result<TensorDesc, TensorError> {
        let code = |v: u32| u8::try_from(v).unwrap_or(0);
        let dtype = DType::from_code(code(self.dtype)).ok_or(TensorError::DType(self.dtype))?;
        let layout =
            Layout::from_code(code(self.layout)).ok_or(TensorError::Layout(self.layout))?;
        let normalization = match self.has_norm {
            0 => None,
            1 => Some(Normalization {
                mean: self.mean,
                std: self.std,
            }),
            v => return Err(TensorError::HasNorm(v)),
        };
        let desc = TensorDesc {
            dtype,
            layout,
            count: self.count,
            channels: self.channels,
            height: self.height,
            width: self.width,
            normalization,
        };
        desc.validate()?;
        Ok(desc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_rgb() -> TensorDesc {
        TensorDesc {
            dtype: DType::F32,
            layout: Layout::Nchw,
            count: 2,
            channels: 3,
            height: 8,
            width: 8,
            normalization: Some(Normalization {
                mean: [0.5; 3],
                std: [0.25; 3],
            }),
        }
    }

    #[test]
    fn the_rule_names_the_field_and_the_value() {
        let ok = f32_rgb();
        assert_eq!(ok.validate(), Ok(()));
        let cases = [
            (
                TensorDesc {
                    dtype: DType::U8,
                    ..ok
                },
                "has_norm is 1 with dtype u8, expected 0",
            ),
            (
                TensorDesc { channels: 2, ..ok },
                "channels is 2, expected 1 or 3",
            ),
            (
                TensorDesc { height: 0, ..ok },
                "height is 0, expected 1..=16384",
            ),
            (TensorDesc { width: 16385, ..ok }, "width is 16385"),
            (
                TensorDesc {
                    normalization: Some(Normalization {
                        mean: [0.5, f32::NAN, 0.5],
                        std: [0.25; 3],
                    }),
                    ..ok
                },
                "mean[1] is NaN",
            ),
            (
                TensorDesc {
                    channels: 1,
                    normalization: Some(Normalization {
                        mean: [0.5; 3],
                        std: [0.0, 1.0, 1.0],
                    }),
                    ..ok
                },
                "std[0] is 0",
            ),
        ];
        for (desc, want) in cases {
            let e = desc.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e} lacks {want:?}");
        }
        // Unused channels' std may be 0 (a gray tensor's padding).
        let gray = TensorDesc {
            channels: 1,
            normalization: Some(Normalization {
                mean: [0.5; 3],
                std: [0.25, 0.0, 0.0],
            }),
            ..ok
        };
        assert_eq!(gray.validate(), Ok(()));
    }

    #[test]
    fn raw_numbers_decode_through_the_same_rule() {
        let desc = f32_rgb();
        assert_eq!(RawTensor::from_desc(&desc).decode(), Ok(desc));
        let raw = RawTensor::from_desc(&desc);
        assert_eq!(
            RawTensor { dtype: 9, ..raw }.decode(),
            Err(TensorError::DType(9))
        );
        assert_eq!(
            RawTensor { layout: 0, ..raw }.decode(),
            Err(TensorError::Layout(0))
        );
        assert_eq!(
            RawTensor { has_norm: 2, ..raw }.decode(),
            Err(TensorError::HasNorm(2))
        );
        assert_eq!(
            RawTensor { dtype: 1, ..raw }.decode(),
            Err(TensorError::NormalizedInteger(DType::U8))
        );
    }
}
