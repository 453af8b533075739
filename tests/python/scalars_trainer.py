"""A trainer for the system-of-record tests: every batch publishes its loss
(pub.batch) and logs --keys named scalars (pub.log) at its global step,
every epoch carries a named metric; values are a pure function of (key,
step) so a test can check each stored point. Prints JSON lines:
  {"ready": path}, {"epoch": N}, {"done": {"batches": B, "points": P}}
Usage: scalars_trainer.py --shm-dir DIR --run NAME [--epochs E]
                          [--batches-per-epoch B] [--keys K] [--fps F]"""
import argparse
import json
import sys
import time

import numpy as np

from trainwatch import Publisher


def say(**kw):
    print(json.dumps(kw), flush=True)


def value(key_index, step):
    # Exact in binary floating point, so a stored value compares equal.
    return key_index * 1000.0 + step / 4.0


def loss(step):
    return 2.0 / (1.0 + step / 64.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shm-dir", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batches-per-epoch", type=int, default=100)
    ap.add_argument("--keys", type=int, default=16)
    ap.add_argument("--fps", type=float, default=100.0)
    a = ap.parse_args()

    images = np.zeros((4, 3, 8, 8), np.float32)
    labels = [0, 1, 0, 1]
    pub = Publisher(a.run, total_epochs=a.epochs, batches_per_epoch=a.batches_per_epoch,
                    batch_size=4, model_name="scalars", dataset_name="synthetic",
                    class_names=["a", "b"], shm_dir=a.shm_dir)
    say(ready=pub.path)
    pub.status("RUNNING", "started")
    period, next_t, points = 1.0 / a.fps, time.monotonic(), 0
    for epoch in range(a.epochs):
        for b in range(a.batches_per_epoch):
            step = epoch * a.batches_per_epoch + b
            pub.batch(epoch=epoch, batch_idx=b, images=images, predictions=labels,
                      confidences=[0.5] * 4, labels=labels, loss=loss(step), layout="NCHW")
            if a.keys:
                pub.log({"m/k%02d" % k: value(k, step) for k in range(a.keys)}, step=step)
                points += a.keys
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_t = time.monotonic()
        pub.epoch(epoch, loss(epoch), 0.5, metrics={"val/acc": epoch / 8.0})
        say(epoch=epoch)
    pub.status("COMPLETED", "done")
    pub.close()
    say(done={"batches": a.epochs * a.batches_per_epoch, "points": points})


if __name__ == "__main__":
    sys.exit(main())
