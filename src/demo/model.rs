//! The demo's model: multinomial logistic (softmax) regression trained with
//! plain minibatch SGD, written out by hand.
//!
//! Small on purpose: a step on a batch of 32 images is about 2 M
//! multiply-adds, so even a debug build trains at the demo's pace, and what
//! it learns (one template per class) is easy to believe. Buffers are
//! allocated once; a step allocates nothing.

/// What one training step saw, before it updated the weights.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepOutcome {
    /// Mean cross-entropy over the batch.
    pub loss: f32,
    /// Samples whose most likely class was the label.
    pub correct: usize,
}

pub struct SoftmaxRegression {
    features: usize,
    classes: usize,
    /// classes x features, row-major.
    weights: Vec<f32>,
    bias: Vec<f32>,
    grad_w: Vec<f32>,
    grad_b: Vec<f32>,
    probs: Vec<f32>,
}

impl SoftmaxRegression {
    /// Small random weights from `seed` (zero would work too for this
    /// convex model; random makes the first predictions varied).
    pub fn new(features: usize, classes: usize, seed: u64) -> SoftmaxRegression {
        let mut rng = fastrand::Rng::with_seed(seed);
        let scale = 0.01;
        SoftmaxRegression {
            features,
            classes,
            weights: (0..features * classes)
                .map(|_| (rng.f32() - 0.5) * scale)
                .collect(),
            bias: vec![0.0; classes],
            grad_w: vec![0.0; features * classes],
            grad_b: vec![0.0; classes],
            probs: vec![0.0; classes],
        }
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Class probabilities of one sample into `probs`.
    pub fn predict(&self, x: &[f32], probs: &mut [f32]) {
        assert_eq!(x.len(), self.features, "sample length");
        for (k, p) in probs.iter_mut().enumerate().take(self.classes) {
            let row = &self.weights[k * self.features..(k + 1) * self.features];
            *p = self.bias[k] + dot(row, x);
        }
        softmax(&mut probs[..self.classes]);
    }

    /// Forward and backward over a batch: fills the gradients, and per
    /// sample the predicted class and its probability. Does not update.
    pub fn forward_backward<'a>(
        &mut self,
        batch: impl Iterator<Item = (&'a [f32], usize)>,
        predictions: &mut Vec<i32>,
        confidences: &mut Vec<f32>,
    ) -> StepOutcome {
        self.grad_w.fill(0.0);
        self.grad_b.fill(0.0);
        predictions.clear();
        confidences.clear();
        let mut probs = std::mem::take(&mut self.probs);
        let mut loss = 0f64;
        let mut correct = 0;
        let mut n = 0usize;
        for (x, label) in batch {
            self.predict(x, &mut probs);
            let (best, p_best) = argmax(&probs);
            predictions.push(best as i32);
            confidences.push(p_best);
            correct += usize::from(best == label);
            loss -= f64::from(probs[label].max(1e-12).ln());
            // d(cross-entropy)/d(logit k) = p_k - [k == label].
            for (k, &p) in probs.iter().enumerate() {
                let g = p - f32::from(u8::from(k == label));
                self.grad_b[k] += g;
                let row = &mut self.grad_w[k * self.features..(k + 1) * self.features];
                for (gw, xi) in row.iter_mut().zip(x) {
                    *gw += g * xi;
                }
            }
            n += 1;
        }
        self.probs = probs;
        if n > 0 {
            let inv = 1.0 / n as f32;
            self.grad_w.iter_mut().for_each(|g| *g *= inv);
            self.grad_b.iter_mut().for_each(|g| *g *= inv);
        }
        StepOutcome {
            loss: if n > 0 { (loss / n as f64) as f32 } else { 0.0 },
            correct,
        }
    }

    /// One SGD update with the gradients of the last `forward_backward`.
    pub fn apply(&mut self, learning_rate: f32) {
        for (w, g) in self.weights.iter_mut().zip(&self.grad_w) {
            *w -= learning_rate * g;
        }
        for (b, g) in self.bias.iter_mut().zip(&self.grad_b) {
            *b -= learning_rate * g;
        }
    }

    /// Mean loss and accuracy on `samples` without touching the weights.
    pub fn evaluate<'a>(&self, samples: impl Iterator<Item = (&'a [f32], usize)>) -> (f32, f32) {
        let mut probs = vec![0f32; self.classes];
        let (mut loss, mut correct, mut n) = (0f64, 0usize, 0usize);
        for (x, label) in samples {
            self.predict(x, &mut probs);
            loss -= f64::from(probs[label].max(1e-12).ln());
            correct += usize::from(argmax(&probs).0 == label);
            n += 1;
        }
        let n = n.max(1) as f64;
        ((loss / n) as f32, (correct as f64 / n) as f32)
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Four accumulators: fewer rounding steps in a row and vectorizable.
    let mut acc = [0f32; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..4 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// In place, numerically stable.
fn softmax(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    for x in v.iter_mut() {
        *x /= sum;
    }
}

fn argmax(v: &[f32]) -> (usize, f32) {
    v.iter()
        .copied()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, p)| {
            if p > best.1 {
                (i, p)
            } else {
                best
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::data::{Dataset, CLASSES, FEATURES};

    fn batch(ds: &Dataset, range: std::ops::Range<usize>) -> impl Iterator<Item = (&[f32], usize)> {
        range.map(move |i| (ds.image(i), ds.labels[i] as usize))
    }

    #[test]
    fn loss_falls_and_accuracy_rises_on_the_generated_data() {
        let train = Dataset::generate(640, 1);
        let test = Dataset::generate(200, 2);
        let mut m = SoftmaxRegression::new(FEATURES, CLASSES, 3);
        let (loss0, acc0) = m.evaluate(batch(&test, 0..200));
        let (mut p, mut c) = (Vec::new(), Vec::new());
        for _epoch in 0..3 {
            for start in (0..640).step_by(32) {
                m.forward_backward(batch(&train, start..start + 32), &mut p, &mut c);
                m.apply(crate::demo::DEFAULT_LR);
            }
        }
        let (loss1, acc1) = m.evaluate(batch(&test, 0..200));
        assert!(loss1 < loss0 * 0.85, "held-out loss {loss0} -> {loss1}");
        // Chance is 0.1; held-out images, so this is learning, not recall.
        assert!(
            acc1 > 0.3 && acc1 > acc0 + 0.15,
            "held-out accuracy {acc0} -> {acc1}"
        );
    }

    #[test]
    fn gradients_match_finite_differences() {
        let ds = Dataset::generate(8, 5);
        let mut m = SoftmaxRegression::new(FEATURES, CLASSES, 9);
        let (mut p, mut c) = (Vec::new(), Vec::new());
        let out = m.forward_backward(batch(&ds, 0..8), &mut p, &mut c);
        assert_eq!((p.len(), c.len()), (8, 8));
        assert!((out.loss - m.evaluate(batch(&ds, 0..8)).0).abs() < 1e-5);
        let eps = 1e-2f32;
        for &(k, j) in &[(0usize, 0usize), (3, 100), (7, 2000), (9, FEATURES - 1)] {
            let i = k * FEATURES + j;
            let w = m.weights[i];
            m.weights[i] = w + eps;
            let up = m.evaluate(batch(&ds, 0..8)).0;
            m.weights[i] = w - eps;
            let down = m.evaluate(batch(&ds, 0..8)).0;
            m.weights[i] = w;
            let numeric = (up - down) / (2.0 * eps);
            let analytic = m.grad_w[i];
            assert!(
                (numeric - analytic).abs() < 1e-2 * (1.0 + analytic.abs()),
                "dL/dw[{k},{j}]: numeric {numeric}, analytic {analytic}"
            );
        }
        // A step against the gradient lowers the batch loss.
        m.apply(0.01);
        assert!(m.evaluate(batch(&ds, 0..8)).0 < out.loss);
    }

    #[test]
    fn softmax_is_a_distribution() {
        let mut v = [1000.0, 0.0, -1000.0, 3.0];
        softmax(&mut v);
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(v.iter().all(|p| p.is_finite() && *p >= 0.0));
        assert_eq!(argmax(&v).0, 0);
    }
}
