"""Train a small numpy softmax-regression model on scikit-learn's bundled 8x8
digits (1,797 images, shipped inside scikit-learn: no download), publishing to
a trainwatch agent: sample images, predictions, losses, epoch summaries and
status; and obeying the dashboard's Pause, Resume, Stop and learning-rate
commands.

Run it against a running agent (which streams to a running server):

    pip install numpy scikit-learn
    cargo build --release                      # builds target/release/libtrainwatch.so
    export TRAINWATCH_LIB=$PWD/target/release/libtrainwatch.so
    PYTHONPATH=python python3 examples/train_digits.py --epochs 20

It publishes into --shm-dir (default: $TRAINWATCH_SHM_DIR, else
/dev/shm/trainwatch, the agent's default directory). Progress goes to stdout,
one line per epoch.
"""
import argparse
import sys
import time

import numpy as np
from sklearn.datasets import load_digits

from trainwatch import Publisher


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--speed", type=float, default=30.0, help="batches per second (0: no pacing)")
    ap.add_argument("--shm-dir", default=None, help="segment directory the agent watches")
    ap.add_argument("--run", default="digits", help="run name (the segment's file name)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)          # (N, 8, 8) in [0, 1]
    y = digits.target.astype(np.int64)
    n, classes = len(y), 10
    rng = np.random.default_rng(a.seed)
    w = (rng.standard_normal((64, classes)) * 0.01).astype(np.float32)
    b = np.zeros(classes, np.float32)
    lr, batch_size = a.lr, a.batch_size
    batches = (n + batch_size - 1) // batch_size

    pub = Publisher(a.run, total_epochs=a.epochs, batches_per_epoch=batches,
                    batch_size=batch_size, model_name="numpy-softmax",
                    dataset_name="sklearn-digits-8x8",
                    class_names=[str(c) for c in range(classes)], shm_dir=a.shm_dir)
    pub.status("RUNNING", "training on %d digits" % n)
    paused, stopping = False, False
    period = 1.0 / a.speed if a.speed > 0 else 0.0
    next_t = time.monotonic()

    def status_now(message):
        pub.status("PAUSED" if paused else "RUNNING", message)

    epoch = 0
    while epoch < a.epochs and not stopping:
        order = rng.permutation(n)
        loss_sum, correct = 0.0, 0
        batch_idx = 0
        while batch_idx < batches:
            for name, params in pub.commands():
                if name == "PAUSE_TRAINING" and not paused:
                    paused = True
                    status_now("paused from the dashboard")
                elif name == "RESUME_TRAINING" and paused:
                    paused = False
                    status_now("resumed")
                elif name == "STOP_TRAINING":
                    # A real trainer saves a checkpoint here, within
                    # params["grace_period_s"] seconds.
                    stopping = True
                elif name == "CHANGE_LEARNING_RATE":
                    lr = float(params["learning_rate"])
                    status_now("learning rate set to %g" % lr)
                elif name == "ADJUST_BATCH_SIZE":
                    status_now("batch size stays %d (fixed in this example)" % batch_size)
            if stopping:
                break
            if paused:
                pub.heartbeat()
                time.sleep(0.02)
                next_t = time.monotonic()
                continue
            idx = order[batch_idx * batch_size:(batch_idx + 1) * batch_size]
            xb, yb = x[idx].reshape(len(idx), 64), y[idx]
            p = softmax(xb @ w + b)
            loss = float(-np.log(p[np.arange(len(idx)), yb] + 1e-12).mean())
            pred = p.argmax(axis=1)
            conf = p[np.arange(len(idx)), pred]
            loss_sum += loss * len(idx)
            correct += int((pred == yb).sum())
            g = p
            g[np.arange(len(idx)), yb] -= 1.0
            g /= len(idx)
            w -= lr * (xb.T @ g)
            b -= lr * g.sum(axis=0)

            k = min(16, len(idx))
            pub.batch(epoch=epoch, batch_idx=batch_idx,
                      images=np.ascontiguousarray(x[idx[:k]][:, None, :, :]),  # (k, 1, 8, 8) f32
                      predictions=pred[:k], confidences=conf[:k],
                      labels=yb[:k], loss=loss, layout="NCHW")
            batch_idx += 1
            if period:
                next_t += period
                time.sleep(max(0.0, next_t - time.monotonic()))
        if batch_idx == batches:
            seen = n
            pub.epoch(epoch, loss_sum / seen, correct / seen)
            print("epoch %d loss %.4f accuracy %.3f" % (epoch, loss_sum / seen, correct / seen),
                  flush=True)
            epoch += 1
    pub.status("COMPLETED", "stopped from the dashboard" if stopping else "finished %d epochs" % epoch)
    pub.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
