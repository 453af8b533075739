//! Downscaling that keeps the aspect ratio: a separable area-weighted
//! (triangle filter with a support widened by the scale, as Pillow's and
//! fast_image_resize's "bilinear") resampler in 14-bit fixed point.
//!
//! Why not fast_image_resize: its u8 kernels are fast, but every call
//! rebuilds its coefficient tables as one `Vec` per output row and column
//! (about 230 allocations for a 200x150 → 128x96 image, measured by
//! tests/frame_alloc.rs), which breaks the allocation-free frame path. Here
//! the tables are cached per (source, target) size — a trainer publishes the
//! same shape every batch — and every buffer is reserved from config. The
//! vertical pass runs first over whole rows, a multiply-accumulate loop LLVM
//! vectorizes on SSE2/AVX2/NEON; the horizontal pass then works on the
//! already shortened image.

/// Fixed-point weights: 14 fractional bits keep `255 * 2^14` far inside i32.
const SHIFT: u32 = 14;
const ONE: i32 = 1 << SHIFT;
const HALF: i32 = 1 << (SHIFT - 1);

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

/// Resampling weights of one axis for one (source, target) length pair.
#[derive(Default)]
struct Axis {
    key: (u32, u32),
    /// Taps reserved per output sample in `weights`.
    window: usize,
    /// First source sample and number of taps of each output sample.
    taps: Vec<(u32, u32)>,
    weights: Vec<i16>,
    scratch: Vec<f64>,
}

impl Axis {
    fn with_capacity(max_src: u32, max_dst: u32) -> Axis {
        // With the aspect ratio kept, a target side is at worst about half
        // its source's share of the scale, so 4 * source + 3 * target taps
        // hold every table; larger ones would only grow once.
        let taps = 4 * max_src as usize + 3 * max_dst as usize + 16;
        Axis {
            key: (0, 0),
            window: 0,
            taps: Vec::with_capacity(max_dst as usize),
            weights: Vec::with_capacity(taps),
            scratch: Vec::with_capacity(taps.min(4 * max_src as usize + 16)),
        }
    }

    /// Computes the table for `src` → `dst` samples unless it is cached.
    fn prepare(&mut self, src: u32, dst: u32) {
        if self.key == (src, dst) {
            return;
        }
        self.key = (src, dst);
        self.taps.clear();
        self.weights.clear();
        let scale = src as f64 / dst as f64;
        let filter_scale = scale.max(1.0);
        let support = filter_scale; // triangle: radius 1, widened by the scale
        self.window = support.ceil() as usize * 2 + 1;
        for out in 0..dst {
            let center = (out as f64 + 0.5) * scale;
            let lo = (center - support).floor().max(0.0) as u32;
            let hi = ((center + support).ceil() as u32).min(src);
            self.scratch.clear();
            let mut sum = 0.0;
            for x in lo..hi {
                let t = ((x as f64 + 0.5 - center) / filter_scale).abs();
                let w = (1.0 - t).max(0.0);
                self.scratch.push(w);
                sum += w;
            }
            let base = self.weights.len();
            let mut total = 0i32;
            for &w in &self.scratch {
                let q = (w / sum * ONE as f64).round() as i16;
                total += q as i32;
                self.weights.push(q);
            }
            // Rounding must not change the brightness: the weights sum to 1.
            let taps = &mut self.weights[base..];
            if let Some(biggest) = taps.iter_mut().max() {
                *biggest += (ONE - total) as i16;
            }
            self.weights.resize(base + self.window, 0);
            self.taps.push((lo, hi - lo));
        }
    }

    /// Taps of output sample `i`: first source index and weights.
    #[inline]
    fn taps(&self, i: usize) -> (usize, &[i16]) {
        let (start, len) = self.taps[i];
        let w = &self.weights[i * self.window..i * self.window + len as usize];
        (start as usize, w)
    }
}

/// One worker's resampler: cached tables and preallocated buffers.
pub struct Resizer {
    rows: Axis,
    cols: Axis,
    /// Vertically resampled image (target height x source width).
    tall: Vec<u8>,
    /// One row of accumulators.
    acc: Vec<i32>,
}

impl Resizer {
    /// Buffers for sources up to `max_source`² and targets up to `max_target`².
    pub fn new(max_source: u32, max_target: u32) -> Resizer {
        let (s, t) = (max_source as usize, max_target as usize);
        Resizer {
            rows: Axis::with_capacity(max_source, max_target),
            cols: Axis::with_capacity(max_source, max_target),
            tall: Vec::with_capacity(t * s * 3),
            acc: Vec::with_capacity(s * 3),
        }
    }

    /// Resizes interleaved 8-bit `src` (`channels` 1 or 3, `src_w` x `src_h`)
    /// into `dst` (exactly `dst_w * dst_h * channels` bytes).
    pub fn resize(
        &mut self,
        src: &[u8],
        (src_w, src_h): (u32, u32),
        dst: &mut [u8],
        (dst_w, dst_h): (u32, u32),
        channels: u32,
    ) {
        let c = channels as usize;
        let row_len = src_w as usize * c;
        debug_assert_eq!(src.len(), row_len * src_h as usize);
        debug_assert_eq!(dst.len(), dst_w as usize * dst_h as usize * c);
        // Vertical pass first, over whole rows: it vectorizes, and the
        // horizontal pass then has fewer rows to do.
        let tall: &[u8] = if dst_h == src_h {
            src
        } else {
            self.rows.prepare(src_h, dst_h);
            self.tall.resize(row_len * dst_h as usize, 0);
            self.acc.resize(row_len, 0);
            for (y, out) in self.tall.chunks_exact_mut(row_len).enumerate() {
                let (start, weights) = self.rows.taps(y);
                self.acc.fill(HALF);
                for (k, &w) in weights.iter().enumerate() {
                    let row = &src[(start + k) * row_len..(start + k + 1) * row_len];
                    let w = w as i32;
                    for (a, &s) in self.acc.iter_mut().zip(row) {
                        *a += w * s as i32;
                    }
                }
                for (o, &a) in out.iter_mut().zip(&self.acc) {
                    *o = (a >> SHIFT).clamp(0, 255) as u8;
                }
            }
            &self.tall
        };
        if dst_w == src_w {
            dst.copy_from_slice(tall);
            return;
        }
        self.cols.prepare(src_w, dst_w);
        match c {
            1 => horizontal::<1>(&self.cols, tall, row_len, dst),
            _ => horizontal::<3>(&self.cols, tall, row_len, dst),
        }
    }
}

/// Horizontal pass over `C`-channel rows of `row_len` bytes.
fn horizontal<const C: usize>(cols: &Axis, src: &[u8], row_len: usize, dst: &mut [u8]) {
    let dst_row = cols.key.1 as usize * C;
    for (row, out) in src.chunks_exact(row_len).zip(dst.chunks_exact_mut(dst_row)) {
        for (x, px) in out.chunks_exact_mut(C).enumerate() {
            let (start, weights) = cols.taps(x);
            let mut acc = [HALF; C];
            let taps = &row[start * C..(start + weights.len()) * C];
            for (&w, s) in weights.iter().zip(taps.chunks_exact(C)) {
                for ch in 0..C {
                    acc[ch] += w as i32 * s[ch] as i32;
                }
            }
            for ch in 0..C {
                px[ch] = (acc[ch] >> SHIFT).clamp(0, 255) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_size_keeps_aspect_and_never_upscales() {
        assert_eq!(target_size(224, 224, 512), (224, 224));
        assert_eq!(target_size(1024, 512, 512), (512, 256));
        assert_eq!(target_size(300, 1000, 100), (30, 100));
        assert_eq!(target_size(4000, 3, 64), (64, 1));
        assert_eq!(target_size(333, 333, 100), (100, 100));
    }

    #[test]
    fn weights_sum_to_one_and_flat_images_stay_flat() {
        let mut r = Resizer::new(64, 16);
        for (sw, sh, dw, dh) in [(64, 48, 16, 12), (61, 7, 13, 2), (10, 64, 3, 16)] {
            let src = vec![200u8; sw * sh * 3];
            let mut dst = vec![0u8; dw * dh * 3];
            r.resize(
                &src,
                (sw as u32, sh as u32),
                &mut dst,
                (dw as u32, dh as u32),
                3,
            );
            assert!(dst.iter().all(|&p| p == 200), "{sw}x{sh} → {dw}x{dh}");
        }
    }

    #[test]
    fn a_2x_downscale_averages_neighbours() {
        let mut r = Resizer::new(4, 2);
        // One gray row 0, 100, 200, 100 → pairs weighted 1/4, 3/4 … by the
        // triangle; a horizontal ramp stays monotonic and in range.
        let src = [0u8, 100, 200, 100];
        let mut dst = [0u8; 2];
        r.resize(&src, (4, 1), &mut dst, (2, 1), 1);
        assert!(
            dst[0] > 0 && dst[0] < 150 && dst[1] > 100 && dst[1] < 200,
            "{dst:?}"
        );
    }
}
