"""The trainer side of benches/agent_e2e.rs: publishes 16 f32 32x32x3
CIFAR-like images per batch with pub.batch at a fixed rate for a number of
batches, polls pub.commands() once per batch as a training loop does, and
prints one JSON line per command seen (with time.time_ns() when seen), then
{"done": batches, "copied": c, "seconds": s, "cpu_s": trainer CPU}.
Usage: e2e_trainer.py --shm-dir DIR --run NAME --fps F --batches N"""
import argparse
import json
import os
import sys
import time

import numpy as np

from trainwatch import Publisher

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shm-dir", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--fps", type=float, default=60.0)
    ap.add_argument("--batches", type=int, default=600)
    a = ap.parse_args()
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32) / 32.0
    raw = np.stack([np.stack([(xx * (i % 3 + 1) + yy * c) % 1.0 for c in range(3)])
                    for i in range(16)]).astype(np.float32)
    images = ((raw - np.array(MEAN, np.float32)[None, :, None, None])
              / np.array(STD, np.float32)[None, :, None, None]).astype(np.float32)
    labels = [i % 10 for i in range(16)]
    per_epoch = 1000
    pub = Publisher(a.run, total_epochs=(a.batches + per_epoch - 1) // per_epoch,
                    batches_per_epoch=per_epoch, batch_size=64, model_name="bench",
                    dataset_name="cifar10", class_names=[str(i) for i in range(10)],
                    shm_dir=a.shm_dir)
    print(json.dumps({"ready": pub.path}), flush=True)
    pub.status("RUNNING", "bench")
    period = 1.0 / a.fps
    copied = 0
    t0, c0 = time.monotonic(), time.process_time()
    next_t = t0
    for i in range(a.batches):
        for name, params in pub.commands():
            print(json.dumps({"command": name, "params": params, "t_ns": time.time_ns()}), flush=True)
        if pub.batch(epoch=i // per_epoch, batch_idx=i % per_epoch, images=images,
                     predictions=labels, confidences=[0.9] * 16, labels=labels,
                     loss=1.0, layout="NCHW", mean=MEAN, std=STD):
            copied += 1
        if i % per_epoch == per_epoch - 1:
            pub.epoch(i // per_epoch, 1.0, 0.5)
        next_t += period
        delay = next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_t = time.monotonic()
    pub.status("COMPLETED", "bench done")
    pub.close()
    print(json.dumps({"done": a.batches, "copied": copied, "seconds": time.monotonic() - t0,
                      "cpu_s": time.process_time() - c0}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
