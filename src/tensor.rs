//! How a batch of sample images is described in shared memory, shared by the
//! writer and reader (`shm`) and the converter (`frame`).
//!
//! Trainers publish tensors as they have them — normalized f32 NCHW from a
//! PyTorch data loader, u8 NHWC from a decoder, f16 from mixed precision —
//! and the agent converts; the trainer never pays for conversion.

use std::fmt;

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
