//! The demo's dataset, drawn at start-up: 32x32 RGB images of ten simple
//! shapes at jittered positions and sizes, in random colours, on a noisy
//! background. Nothing is downloaded; a seed makes it reproducible.
//!
//! Colour carries no information about the class (it is drawn uniformly), so
//! a model has to learn the shapes, which a linear model does only
//! gradually: good for watching accuracy climb.

/// Image side in pixels.
pub const SIDE: usize = 32;
/// Channels (RGB).
pub const CHANNELS: usize = 3;
/// Values per image: 3 x 32 x 32, NCHW order.
pub const FEATURES: usize = CHANNELS * SIDE * SIDE;
pub const CLASSES: usize = 10;

pub const CLASS_NAMES: [&str; CLASSES] = [
    "disc", "square", "triangle", "ring", "cross", "x", "h-bar", "v-bar", "diamond", "dots",
];

/// Per-channel mean and standard deviation the images are normalized with,
/// as torchvision's `Normalize` would: the agent undoes it for the JPEGs.
pub const MEAN: [f32; 3] = [0.25, 0.25, 0.25];
pub const STD: [f32; 3] = [0.3, 0.3, 0.3];

/// Normalized images (f32 NCHW, `(x - MEAN) / STD`) and their labels.
pub struct Dataset {
    pub images: Vec<f32>,
    pub labels: Vec<u8>,
}

impl Dataset {
    /// `n` images, classes in turn, drawn from `seed`.
    pub fn generate(n: usize, seed: u64) -> Dataset {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut images = Vec::with_capacity(n * FEATURES);
        let mut labels = Vec::with_capacity(n);
        let mut pixels = vec![0f32; FEATURES];
        for i in 0..n {
            let class = i % CLASSES;
            draw(class, &mut rng, &mut pixels);
            for (c, plane) in pixels.chunks_exact(SIDE * SIDE).enumerate() {
                images.extend(plane.iter().map(|v| (v - MEAN[c]) / STD[c]));
            }
            labels.push(class as u8);
        }
        Dataset { images, labels }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The normalized pixels of image `i` (NCHW, one image).
    pub fn image(&self, i: usize) -> &[f32] {
        &self.images[i * FEATURES..(i + 1) * FEATURES]
    }
}

/// Draws one image of `class` into `out` (values in [0, 1], NCHW).
fn draw(class: usize, rng: &mut fastrand::Rng, out: &mut [f32]) {
    // Centre jitter and size: enough that one template per class does not
    // fit every image.
    let cx = 15.5 + rng.f32() * 8.0 - 4.0;
    let cy = 15.5 + rng.f32() * 8.0 - 4.0;
    let r = 7.0 + rng.f32() * 4.0;
    let colour = loop {
        let c = [rng.f32(), rng.f32(), rng.f32()];
        // Bright enough to stand out from the background.
        if c.iter().sum::<f32>() > 1.2 {
            break c;
        }
    };
    let background = [rng.f32() * 0.2, rng.f32() * 0.2, rng.f32() * 0.2];
    for y in 0..SIDE {
        for x in 0..SIDE {
            let dx = x as f32 - cx;
            let dy = y as f32 - cy;
            let inside = shape(class, dx / r, dy / r);
            for c in 0..CHANNELS {
                let base = if inside { colour[c] } else { background[c] };
                let noise = (rng.f32() - 0.5) * 0.3;
                out[c * SIDE * SIDE + y * SIDE + x] = (base + noise).clamp(0.0, 1.0);
            }
        }
    }
}

/// Whether the point (u, v), in units of the shape's radius from its
/// centre, is inside the shape of `class`.
fn shape(class: usize, u: f32, v: f32) -> bool {
    let d = (u * u + v * v).sqrt();
    let (au, av) = (u.abs(), v.abs());
    match class {
        0 => d <= 1.0,
        1 => au <= 0.8 && av <= 0.8,
        // Apex up, base at v = 0.8.
        2 => (-0.9..=0.8).contains(&v) && au <= (v + 0.9) * 0.55,
        3 => (0.6..=1.0).contains(&d),
        4 => (au <= 0.25 && av <= 1.0) || (av <= 0.25 && au <= 1.0),
        5 => au <= 0.9 && ((u - v).abs() <= 0.3 || (u + v).abs() <= 0.3),
        6 => au <= 1.0 && av <= 0.3,
        7 => au <= 0.3 && av <= 1.0,
        8 => au + av <= 1.0,
        _ => {
            // Four dots on the diagonals.
            let (du, dv) = (au - 0.55, av - 0.55);
            du * du + dv * dv <= 0.3 * 0.3
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_data_and_every_class_drawn() {
        let a = Dataset::generate(40, 7);
        let b = Dataset::generate(40, 7);
        assert_eq!(a.images, b.images);
        assert_eq!(a.len(), 40);
        for class in 0..CLASSES {
            assert_eq!(a.labels.iter().filter(|&&l| l as usize == class).count(), 4);
        }
        assert!(a.images.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn shapes_differ() {
        // Each pair of classes differs on a grid of points: no two classes
        // are the same picture.
        let grid: Vec<(f32, f32)> = (0..21)
            .flat_map(|i| (0..21).map(move |j| (i as f32 / 10.0 - 1.0, j as f32 / 10.0 - 1.0)))
            .collect();
        for a in 0..CLASSES {
            for b in a + 1..CLASSES {
                let diff = grid
                    .iter()
                    .filter(|(u, v)| shape(a, *u, *v) != shape(b, *u, *v))
                    .count();
                assert!(diff > 20, "classes {a} and {b} differ at {diff} points");
            }
        }
    }
}
