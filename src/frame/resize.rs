//! Downscaling that keeps the aspect ratio, with fast_image_resize (SSE4.1,
//! AVX2 and NEON kernels for u8 pixels, chosen at run time).

use fast_image_resize as fir;

use super::FrameError;

/// The size an image of `width` x `height` is sent at: unchanged when both
/// sides fit in `max_dim`, else scaled so that the longer side is `max_dim`
/// (the shorter one rounded, at least 1).
pub fn target_size(width: u32, height: u32, max_dim: u32) -> (u32, u32) {
    let long = width.max(height);
    if long <= max_dim {
        return (width, height);
    }
    let scale = |side: u32| -> u32 {
        let s = (side as u64 * max_dim as u64 + long as u64 / 2) / long as u64;
        (s as u32).clamp(1, max_dim)
    };
    (scale(width), scale(height))
}

/// One worker's resizer state.
pub struct Resizer {
    inner: fir::Resizer,
    options: fir::ResizeOptions,
}

impl Default for Resizer {
    fn default() -> Self {
        Resizer {
            inner: fir::Resizer::new(),
            // Bilinear with an adaptive kernel is a proper area-weighted
            // downscale (no aliasing) at a fraction of Lanczos' cost.
            options: fir::ResizeOptions::new()
                .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear)),
        }
    }
}

impl Resizer {
    /// Resizes interleaved 8-bit `src` (`channels` 1 or 3) into `dst`, whose
    /// length fixes nothing: exactly `dst_w * dst_h * channels` bytes are written.
    pub fn resize(
        &mut self,
        src: &[u8],
        (src_w, src_h): (u32, u32),
        dst: &mut [u8],
        (dst_w, dst_h): (u32, u32),
        channels: u32,
    ) -> Result<(), FrameError> {
        let pixel_type = if channels == 1 {
            fir::PixelType::U8
        } else {
            fir::PixelType::U8x3
        };
        let src = fir::images::ImageRef::new(src_w, src_h, src, pixel_type)
            .map_err(|e| FrameError::Resize(e.to_string()))?;
        let mut dst = fir::images::Image::from_slice_u8(dst_w, dst_h, dst, pixel_type)
            .map_err(|e| FrameError::Resize(e.to_string()))?;
        self.inner
            .resize(&src, &mut dst, &self.options)
            .map_err(|e| FrameError::Resize(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::target_size;

    #[test]
    fn target_size_keeps_aspect_and_never_upscales() {
        assert_eq!(target_size(224, 224, 512), (224, 224));
        assert_eq!(target_size(1024, 512, 512), (512, 256));
        assert_eq!(target_size(300, 1000, 100), (30, 100));
        assert_eq!(target_size(4000, 3, 64), (64, 1));
        assert_eq!(target_size(333, 333, 100), (100, 100));
    }
}
