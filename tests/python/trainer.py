"""A trainer for tests: publishes through the trainwatch package like a real
training loop (f32 NCHW normalized CIFAR-sized images), obeys commands, and
reports on stdout, one JSON object per line, what it did:
  {"ready": path}, {"command": NAME, "params": {...}}, {"status": NAME},
  {"epoch": N}, {"done": batches_published}
Usage: trainer.py --shm-dir DIR --run NAME [--epochs E] [--batches-per-epoch B]
                  [--fps F] [--run-until-stopped] [--no-complete] [--max-seconds S]"""
import argparse
import json
import math
import sys
import time

import numpy as np

from trainwatch import Publisher

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def say(**kw):
    print(json.dumps(kw), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shm-dir", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batches-per-epoch", type=int, default=20)
    ap.add_argument("--fps", type=float, default=50.0)
    ap.add_argument("--run-until-stopped", action="store_true",
                    help="keep training (epoch after epoch) until a STOP command")
    ap.add_argument("--no-complete", action="store_true", help="exit without COMPLETED")
    ap.add_argument("--pause-after", type=int, default=0,
                    help="after this many batches, report PAUSED and idle for --pause-seconds")
    ap.add_argument("--pause-seconds", type=float, default=0.0)
    ap.add_argument("--max-seconds", type=float, default=120.0)
    a = ap.parse_args()

    rng = np.random.default_rng(7)
    # Smooth, image-like content: gradients per image, normalized as
    # torchvision's Normalize leaves it.
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32) / 32.0
    raw = np.stack([np.stack([(xx * (i % 3 + 1) + yy * c) % 1.0 for c in range(3)])
                    for i in range(16)]).astype(np.float32)
    images = ((raw - np.array(MEAN, np.float32)[None, :, None, None])
              / np.array(STD, np.float32)[None, :, None, None]).astype(np.float32)
    labels = [i % 10 for i in range(16)]

    pub = Publisher(a.run, total_epochs=a.epochs, batches_per_epoch=a.batches_per_epoch,
                    batch_size=64, model_name="testnet", dataset_name="cifar10",
                    class_names=CLASSES, shm_dir=a.shm_dir)
    say(ready=pub.path)
    pub.status("RUNNING", "started")
    say(status="RUNNING")
    period = 1.0 / a.fps
    deadline = time.monotonic() + a.max_seconds
    paused, stop_at, published, epoch = False, None, 0, 0
    next_t = time.monotonic()
    while time.monotonic() < deadline:
        for name, params in pub.commands():
            say(command=name, params=params)
            if name == "PAUSE_TRAINING" and not paused:
                paused = True
                pub.status("PAUSED", "paused from the dashboard")
                say(status="PAUSED")
            elif name == "RESUME_TRAINING" and paused:
                paused = False
                pub.status("RUNNING", "resumed")
                say(status="RUNNING")
            elif name == "STOP_TRAINING":
                grace = float(params.get("grace_period_s", "0"))
                stop_at = time.monotonic() + min(grace, 0.5)  # "checkpoint"
        if stop_at is not None and time.monotonic() >= stop_at:
            break
        if paused:
            pub.heartbeat()
            time.sleep(0.01)
            continue
        losses = []
        for b in range(a.batches_per_epoch):
            loss = 2.3 * math.exp(-0.05 * (epoch * a.batches_per_epoch + b)) + 0.05
            preds = [(l + (b % 3 == 0)) % 10 for l in labels]
            pub.batch(epoch=epoch, batch_idx=b, images=images, predictions=preds,
                      confidences=[0.5 + 0.03 * i for i in range(16)], labels=labels,
                      loss=loss, layout="NCHW", mean=MEAN, std=STD)
            published += 1
            losses.append(loss)
            if a.pause_after and published == a.pause_after:
                pub.status("PAUSED", "pausing by itself")
                say(status="PAUSED")
                until = time.monotonic() + a.pause_seconds
                while time.monotonic() < until:
                    pub.heartbeat()
                    time.sleep(0.05)
                pub.status("RUNNING", "resumed by itself")
                say(status="RUNNING")
                next_t = time.monotonic()
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_t = time.monotonic()
        pub.epoch(epoch, sum(losses) / len(losses), min(0.1 + 0.1 * epoch, 1.0))
        say(epoch=epoch)
        epoch += 1
        if not a.run_until_stopped and epoch >= a.epochs:
            break
    if not a.no_complete:
        pub.status("COMPLETED", "done after %d batches" % published)
        say(status="COMPLETED")
    pub.close()
    say(done=published)


if __name__ == "__main__":
    sys.exit(main())
