//! The demo's training loop: real SGD on the generated shapes, published
//! through [`shm::Writer`](crate::shm::Writer) exactly as a trainer in
//! another process would, and steered by the dashboard's commands.
//!
//! It runs on a thread of its own (training is CPU work) and is paced to a
//! number of batches per second, so the dashboard shows a run that moves at
//! a watchable speed rather than one that is over in a blink.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::data::{Dataset, CHANNELS, CLASSES, CLASS_NAMES, FEATURES, MEAN, SIDE, STD};
use super::model::SoftmaxRegression;
use crate::shm::{
    params, Batch, Command, CommandKind, Images, RunConfig, ShmError, TrainingStatus, Writer,
    WriterOptions,
};
use crate::tensor::{DType, Layout, Normalization, TensorDesc};

/// Sample images published per batch (the dashboard's 4x4 grid).
pub const SAMPLES: usize = 16;
/// Largest batch size ADJUST_BATCH_SIZE may set: beyond it a step would
/// no longer fit the demo's pace on a small machine.
pub const MAX_BATCH_SIZE: u32 = 1024;
/// How often a paused trainer looks for commands: a Resume feels immediate.
const PAUSED_POLL: Duration = Duration::from_millis(20);

#[derive(Clone, Debug)]
pub struct TrainerOptions {
    pub run_name: String,
    pub shm_dir: PathBuf,
    pub epochs: u32,
    pub batches_per_epoch: u32,
    pub batch_size: u32,
    /// Batches per second.
    pub speed: f64,
    pub learning_rate: f32,
    pub seed: u64,
}

/// How the run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub batches: u64,
    pub epochs: u32,
    /// (mean loss, accuracy) of each finished epoch.
    pub history: Vec<(f32, f32)>,
    pub how: End,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Every epoch trained.
    Finished,
    /// STOP_TRAINING from the dashboard.
    Stopped,
    /// The demo is shutting down.
    Interrupted,
}

/// What the loop does after a command or a wait.
enum Next {
    Go,
    End(End),
}

struct Run {
    writer: Writer,
    paused: bool,
    learning_rate: f32,
    batch_size: u32,
    status_message: String,
}

/// Trains until every epoch is done, a STOP command, or `stop` (a message
/// or a dropped sender). Status: RUNNING, PAUSED, RUNNING…, COMPLETED.
pub fn train(opts: &TrainerOptions, stop: &Receiver<()>) -> Result<Outcome, ShmError> {
    let config = run_config(opts);
    // One epoch is batches_per_epoch batches of the starting batch size.
    let n = (opts.batches_per_epoch as usize * opts.batch_size as usize).clamp(CLASSES, 20_000);
    let data = Dataset::generate(n, opts.seed);
    let mut model = SoftmaxRegression::new(FEATURES, CLASSES, opts.seed ^ 0x5eed);
    let writer = Writer::create(&config, &WriterOptions::new(&opts.shm_dir))?;
    tracing::info!(path = %writer.path().display(), images = n, "demo trainer publishing");
    let mut run = Run {
        writer,
        paused: false,
        learning_rate: opts.learning_rate,
        batch_size: opts.batch_size,
        status_message: String::new(),
    };
    run.status(format!(
        "training softmax regression on {n} generated images, lr {}",
        run.learning_rate
    ));

    let mut sampler = Sampler::new(n, opts.seed);
    let period = Duration::from_secs_f64(1.0 / opts.speed);
    let mut next_at = Instant::now();
    let (mut predictions, mut confidences) = (Vec::new(), Vec::new());
    let mut labels: Vec<i32> = Vec::new();
    let mut indices: Vec<usize> = Vec::new();
    let mut image_bytes: Vec<u8> = Vec::with_capacity(SAMPLES * FEATURES * 4);
    let mut outcome = Outcome {
        batches: 0,
        epochs: 0,
        history: Vec::new(),
        how: End::Finished,
    };

    'epochs: for epoch in 0..opts.epochs {
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        let mut batch_idx = 0;
        while batch_idx < opts.batches_per_epoch {
            if let Next::End(how) = run.apply_commands() {
                outcome.how = how;
                break 'epochs;
            }
            let wait = if run.paused {
                run.writer.heartbeat();
                PAUSED_POLL
            } else {
                next_at.saturating_duration_since(Instant::now())
            };
            match stop.recv_timeout(wait) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                    outcome.how = End::Interrupted;
                    break 'epochs;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if run.paused {
                // Resume starts a fresh pace, not a burst to catch up.
                next_at = Instant::now();
                continue;
            }
            next_at = (next_at + period).max(Instant::now() - period);

            sampler.fill(run.batch_size as usize, &mut indices);
            let step = model.forward_backward(
                indices
                    .iter()
                    .map(|&i| (data.image(i), data.labels[i] as usize)),
                &mut predictions,
                &mut confidences,
            );
            model.apply(run.learning_rate);
            loss_sum += f64::from(step.loss) * indices.len() as f64;
            correct += step.correct;
            seen += indices.len();

            let k = indices.len().min(SAMPLES);
            if run.writer.wants_frame() {
                labels.clear();
                labels.extend(indices[..k].iter().map(|&i| i32::from(data.labels[i])));
                image_bytes.clear();
                for &i in &indices[..k] {
                    for v in data.image(i) {
                        image_bytes.extend_from_slice(&v.to_ne_bytes());
                    }
                }
                run.writer.publish_frame(&Batch {
                    epoch,
                    batch_idx,
                    loss: step.loss,
                    predictions: &predictions[..k],
                    confidences: &confidences[..k],
                    labels: &labels,
                    images: Some(Images {
                        desc: image_desc(k as u32),
                        data: &image_bytes,
                    }),
                })?;
            } else {
                run.writer.record_progress(epoch, batch_idx, step.loss);
            }
            // Named scalars beside the loss (which every batch logs itself).
            let global_step =
                i64::from(epoch) * i64::from(opts.batches_per_epoch) + i64::from(batch_idx);
            let batch_accuracy = step.correct as f64 / indices.len().max(1) as f64;
            run.writer.log(
                global_step,
                &[
                    ("train/accuracy", batch_accuracy),
                    ("train/lr", f64::from(run.learning_rate)),
                ],
            )?;
            outcome.batches += 1;
            batch_idx += 1;
        }
        let loss = (loss_sum / seen.max(1) as f64) as f32;
        let accuracy = correct as f32 / seen.max(1) as f32;
        run.writer.publish_epoch(epoch, loss, accuracy);
        tracing::info!(epoch, loss, accuracy, "demo epoch");
        outcome.history.push((loss, accuracy));
        outcome.epochs = epoch + 1;
    }

    let message = final_message(&outcome);
    run.paused = false;
    run.writer
        .publish_status(TrainingStatus::Completed, &message);
    run.writer.close(false)?;
    Ok(outcome)
}

fn run_config(opts: &TrainerOptions) -> RunConfig {
    RunConfig {
        run_name: opts.run_name.clone(),
        model_name: "softmax-regression".into(),
        dataset_name: "demo-shapes-32x32".into(),
        class_names: CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
        total_epochs: opts.epochs,
        batches_per_epoch: opts.batches_per_epoch,
        batch_size: opts.batch_size,
    }
}

fn final_message(outcome: &Outcome) -> String {
    match outcome.how {
        End::Finished => format!("finished {} epochs", outcome.epochs),
        End::Stopped => format!(
            "stopped from the dashboard after {} batches",
            outcome.batches
        ),
        End::Interrupted => format!("demo shut down after {} batches", outcome.batches),
    }
}

/// Epochs of shuffled passes over the data set: each image once per pass.
struct Sampler {
    rng: fastrand::Rng,
    order: Vec<usize>,
    cursor: usize,
}

impl Sampler {
    fn new(n: usize, seed: u64) -> Sampler {
        Sampler {
            rng: fastrand::Rng::with_seed(seed),
            order: (0..n).collect(),
            cursor: n,
        }
    }

    /// The next `count` image indices, into `out`.
    fn fill(&mut self, count: usize, out: &mut Vec<usize>) {
        out.clear();
        for _ in 0..count {
            if self.cursor == self.order.len() {
                self.rng.shuffle(&mut self.order);
                self.cursor = 0;
            }
            out.push(self.order[self.cursor]);
            self.cursor += 1;
        }
    }
}

/// Describes `count` of the demo's images: f32 NCHW, normalized.
fn image_desc(count: u32) -> TensorDesc {
    TensorDesc {
        dtype: DType::F32,
        layout: Layout::Nchw,
        count,
        channels: CHANNELS as u32,
        height: SIDE as u32,
        width: SIDE as u32,
        normalization: Some(Normalization {
            mean: MEAN,
            std: STD,
        }),
    }
}

impl Run {
    /// Publishes the current state (RUNNING or PAUSED) with `message`: how
    /// the dashboard sees that a command was applied.
    fn status(&mut self, message: String) {
        let status = if self.paused {
            TrainingStatus::Paused
        } else {
            TrainingStatus::Running
        };
        self.writer.publish_status(status, &message);
        self.status_message = message;
    }

    fn apply_commands(&mut self) -> Next {
        loop {
            let cmd = match self.writer.next_command() {
                Ok(Some(c)) => c,
                Ok(None) => return Next::Go,
                Err(e) => {
                    // The writer skipped it; later commands still come.
                    tracing::warn!("demo trainer: {e}");
                    continue;
                }
            };
            self.writer.ack_command(cmd.seq);
            if let Next::End(how) = self.apply(&cmd) {
                return Next::End(how);
            }
        }
    }

    fn apply(&mut self, cmd: &Command) -> Next {
        tracing::info!(command = cmd.kind.name(), params = ?cmd.params, "demo trainer: command");
        match cmd.kind {
            CommandKind::Pause if !self.paused => {
                self.paused = true;
                self.status("paused from the dashboard".into());
            }
            CommandKind::Resume if self.paused => {
                self.paused = false;
                self.status("resumed from the dashboard".into());
            }
            CommandKind::Pause | CommandKind::Resume => {
                // Already in that state: say so, so the command shows applied.
                let message = self.status_message.clone();
                self.status(message);
            }
            CommandKind::Stop => {
                // The grace period is for checkpointing; the demo has nothing
                // to save, so it stops at once.
                let grace = cmd.param(params::GRACE_PERIOD_S).unwrap_or("0");
                tracing::info!(grace_s = grace, "demo trainer: stopping");
                return Next::End(End::Stopped);
            }
            CommandKind::ChangeLearningRate => {
                match cmd
                    .param(params::LEARNING_RATE)
                    .and_then(|v| v.parse::<f32>().ok())
                {
                    Some(lr) if lr.is_finite() && lr > 0.0 => {
                        self.learning_rate = lr;
                        self.status(format!("learning rate set to {lr}"));
                    }
                    other => self.status(format!(
                        "learning rate {other:?} ignored: expected a positive number"
                    )),
                }
            }
            CommandKind::AdjustBatchSize => {
                match cmd
                    .param(params::BATCH_SIZE)
                    .and_then(|v| v.parse::<u32>().ok())
                {
                    Some(b) if (1..=MAX_BATCH_SIZE).contains(&b) => {
                        self.batch_size = b;
                        self.status(format!("batch size set to {b}"));
                    }
                    other => self.status(format!(
                        "batch size {other:?} ignored: expected 1 to {MAX_BATCH_SIZE}"
                    )),
                }
            }
        }
        Next::Go
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_run_publishes_batches_epochs_and_completes() {
        let dir = tempfile::tempdir().unwrap();
        let opts = TrainerOptions {
            run_name: "unit".into(),
            shm_dir: dir.path().to_path_buf(),
            epochs: 3,
            batches_per_epoch: 10,
            batch_size: 32,
            speed: 1000.0,
            learning_rate: super::super::DEFAULT_LR,
            seed: 1,
        };
        let (_tx, rx) = std::sync::mpsc::channel();
        let out = train(&opts, &rx).unwrap();
        assert_eq!(out.how, End::Finished);
        assert_eq!((out.batches, out.epochs), (30, 3));
        let (first, last) = (out.history[0], out.history[2]);
        assert!(last.0 < first.0, "loss {first:?} -> {last:?}");
        assert!(last.1 > first.1, "accuracy {first:?} -> {last:?}");
    }
}
