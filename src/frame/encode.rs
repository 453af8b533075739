//! JPEG encoding into a caller's slice, with either backend.

use std::fmt;
use std::io::Cursor;
use std::str::FromStr;

use super::ycbcr::Yuv420;
use super::FrameError;

/// Which JPEG encoder a pipeline uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// libjpeg-turbo 3.x, built from source and linked statically (cargo
    /// feature `turbojpeg`): SIMD on x86_64 (SSE2/AVX2) and aarch64 (NEON),
    /// and no Rust-side allocation per image.
    TurboJpeg,
    /// jpeg-encoder, pure Rust: AVX2 on x86_64 only (scalar on aarch64) and
    /// about 9 heap allocations per image inside the encoder.
    JpegEncoder,
}

impl Backend {
    /// The measured-fastest backend this build has (see docs/frame.md):
    /// libjpeg-turbo when the `turbojpeg` feature is on, on every arch.
    pub const fn default_for_build() -> Backend {
        if cfg!(feature = "turbojpeg") {
            Backend::TurboJpeg
        } else {
            Backend::JpegEncoder
        }
    }

    /// Whether this build can encode with the backend.
    pub const fn is_available(self) -> bool {
        match self {
            Backend::TurboJpeg => cfg!(feature = "turbojpeg"),
            Backend::JpegEncoder => true,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::TurboJpeg => "turbojpeg",
            Backend::JpegEncoder => "jpeg-encoder",
        }
    }
}

impl Default for Backend {
    fn default() -> Self {
        Backend::default_for_build()
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = FrameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "turbojpeg" | "libjpeg-turbo" => Ok(Backend::TurboJpeg),
            "jpeg-encoder" => Ok(Backend::JpegEncoder),
            _ => Err(FrameError::UnknownBackend(s.to_owned())),
        }
    }
}

/// An upper bound of the JPEG size of a `width` x `height` image with
/// `channels` 1 (gray) or 3 (4:2:0): libjpeg-turbo's `tj3JPEGBufSize`
/// formula, which it guarantees for any content at any quality.
pub fn max_jpeg_len(width: u32, height: u32, channels: u32) -> usize {
    let pad = |v: u32, m: u32| v.div_ceil(m) as usize * m as usize;
    if channels == 1 {
        pad(width, 8) * pad(height, 8) * 2 + 2048
    } else {
        pad(width, 16) * pad(height, 16) * 3 + 2048
    }
}

/// One worker's encoder.
pub enum Encoder {
    #[cfg(feature = "turbojpeg")]
    TurboJpeg {
        compressor: turbojpeg::Compressor,
        gray: bool,
    },
    JpegEncoder {
        quality: u8,
    },
}

impl Encoder {
    pub fn new(backend: Backend, quality: u8) -> Result<Encoder, FrameError> {
        match backend {
            #[cfg(feature = "turbojpeg")]
            Backend::TurboJpeg => {
                let mut compressor = turbojpeg::Compressor::new().map_err(turbo_err)?;
                compressor
                    .set_quality(i32::from(quality))
                    .map_err(turbo_err)?;
                compressor
                    .set_subsamp(turbojpeg::Subsamp::Sub2x2)
                    .map_err(turbo_err)?;
                Ok(Encoder::TurboJpeg {
                    compressor,
                    gray: false,
                })
            }
            #[cfg(not(feature = "turbojpeg"))]
            Backend::TurboJpeg => Err(FrameError::BackendUnavailable(backend)),
            Backend::JpegEncoder => Ok(Encoder::JpegEncoder { quality }),
        }
    }

    /// Encodes interleaved gray (`channels` 1) or RGB (3) `pixels` into
    /// `out` and returns the JPEG's length. Color is 4:2:0, gray stays one
    /// component.
    pub fn encode(
        &mut self,
        pixels: &[u8],
        width: u32,
        height: u32,
        channels: u32,
        out: &mut [u8],
    ) -> Result<usize, FrameError> {
        match self {
            #[cfg(feature = "turbojpeg")]
            Encoder::TurboJpeg { compressor, gray } => {
                let want_gray = channels == 1;
                if *gray != want_gray {
                    let subsamp = if want_gray {
                        turbojpeg::Subsamp::Gray
                    } else {
                        turbojpeg::Subsamp::Sub2x2
                    };
                    compressor.set_subsamp(subsamp).map_err(turbo_err)?;
                    *gray = want_gray;
                }
                let image = turbojpeg::Image {
                    pixels,
                    width: width as usize,
                    pitch: (width * channels) as usize,
                    height: height as usize,
                    format: if want_gray {
                        turbojpeg::PixelFormat::GRAY
                    } else {
                        turbojpeg::PixelFormat::RGB
                    },
                };
                compressor.compress_to_slice(image, out).map_err(turbo_err)
            }
            Encoder::JpegEncoder { quality } => {
                let mut cursor = Cursor::new(out);
                let mut enc = jpeg_encoder::Encoder::new(&mut cursor, *quality);
                enc.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0);
                let color = if channels == 1 {
                    jpeg_encoder::ColorType::Luma
                } else {
                    jpeg_encoder::ColorType::Rgb
                };
                // Sizes were checked against u16 when the batch was validated.
                enc.encode(pixels, width as u16, height as u16, color)
                    .map_err(|e| FrameError::Encode {
                        backend: Backend::JpegEncoder,
                        message: e.to_string(),
                    })?;
                Ok(cursor.position() as usize)
            }
        }
    }

    /// Whether [`encode_yuv420`](Self::encode_yuv420) works: libjpeg-turbo
    /// takes planes, jpeg-encoder only interleaved pixels.
    pub fn takes_yuv420(&self) -> bool {
        match self {
            #[cfg(feature = "turbojpeg")]
            Encoder::TurboJpeg { .. } => true,
            Encoder::JpegEncoder { .. } => false,
        }
    }

    /// Encodes a `width` x `height` color image given as Y, Cb, Cr 4:2:0
    /// planes (`planes` laid out as [`Yuv420`] says) into `out`: the same
    /// JPEG as [`encode`](Self::encode) of the RGB pixels, minus
    /// libjpeg-turbo's color conversion and downsampling.
    pub fn encode_yuv420(
        &mut self,
        planes: &[u8],
        width: u32,
        height: u32,
        out: &mut [u8],
    ) -> Result<usize, FrameError> {
        match self {
            #[cfg(feature = "turbojpeg")]
            Encoder::TurboJpeg { compressor, gray } => {
                let layout = Yuv420::new(width, height);
                let [y, cb, cr] = layout.planes(planes);
                let image = turbojpeg::YuvPlanesImage {
                    y_plane: y,
                    u_plane: cb,
                    v_plane: cr,
                    width: width as usize,
                    height: height as usize,
                    y_stride: layout.y_stride(),
                    u_stride: layout.c_stride(),
                    v_stride: layout.c_stride(),
                    subsamp: turbojpeg::Subsamp::Sub2x2,
                };
                // The call sets 4:2:0 on the handle itself.
                *gray = false;
                compressor
                    .compress_yuv_planes_to_slice(&image, out)
                    .map_err(turbo_err)
            }
            Encoder::JpegEncoder { .. } => Err(FrameError::Encode {
                backend: Backend::JpegEncoder,
                message: "planar YCbCr input is for libjpeg-turbo only".to_owned(),
            }),
        }
    }
}

#[cfg(feature = "turbojpeg")]
fn turbo_err(e: turbojpeg::Error) -> FrameError {
    FrameError::Encode {
        backend: Backend::TurboJpeg,
        message: e.to_string(),
    }
}
