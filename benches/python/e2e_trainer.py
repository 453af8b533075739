"""The trainer side of benches/e2e.rs: publishes 16 images per batch with
pub.batch, the same uint8 HWC images the reference trainer encodes
(ref_common.make_images from --ref-dir, cached in --images-cache), cycling
through them as the reference does.

--rate R: R batches/s on the reference's schedule (batch i is due at
start + i/R; sleep plays the training step) for --duration s.
--rate 0: as fast as possible for --duration s.
Polls pub.commands() once per batch as a training loop does; prints one JSON
line per command seen (with time.time_ns() when seen).

Lines on stdout: {"ready": path}; then, after "go" on stdin, {"start": 1};
at the end {"done": batches, "copied", "seconds", "cpu_s" (trainer CPU in
the loop), "publish_us_p50"/"_p99" (time around pub.batch),
"peak_rss_mb"}."""
import argparse
import json
import os
import resource
import sys
import time

import numpy as np

from trainwatch import Publisher

BATCH = 16
NUM_CLASSES = 10


def images_for(shape, ref_dir, cache):
    if cache and os.path.exists(cache):
        return np.load(cache)
    sys.path.insert(0, ref_dir)
    from ref_common import make_images  # the reference's own generator
    images = make_images(shape)
    if cache:
        np.save(cache + ".tmp.npy", images)
        os.replace(cache + ".tmp.npy", cache)
    return images


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shm-dir")
    ap.add_argument("--run")
    ap.add_argument("--shape", default="cifar")
    ap.add_argument("--ref-dir", required=True)
    ap.add_argument("--images-cache", default=None)
    ap.add_argument("--rate", type=float, default=60.0, help="batches/s; 0 = full speed")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--cache-only", action="store_true", help="fill --images-cache, exit")
    a = ap.parse_args()

    images = images_for(a.shape, a.ref_dir, a.images_cache)
    if a.cache_only:
        return 0
    n_src = images.shape[0]
    # As the reference: seed + 1 for labels, predictions, confidences.
    rng = np.random.default_rng(1235)
    labels = rng.integers(0, NUM_CLASSES, n_src).astype(np.int32)
    preds = np.where(rng.random(n_src) < 0.7, labels,
                     rng.integers(0, NUM_CLASSES, n_src)).astype(np.int32)
    confs = rng.uniform(0.1, 1.0, n_src).astype(np.float32)
    per_epoch = 1_000_000
    # The segment sized for 16 images of the shape: the default (16 f32
    # 224x224x3) holds only 12 of 512x512x3 u8, and the writer keeps what fits.
    pub = Publisher(a.run, total_epochs=1, batches_per_epoch=per_epoch, batch_size=BATCH,
                    model_name="bench", dataset_name=a.shape,
                    class_names=[str(i) for i in range(NUM_CLASSES)], shm_dir=a.shm_dir,
                    frame_capacity=images[:BATCH].nbytes)
    print(json.dumps({"ready": pub.path}), flush=True)
    sys.stdin.readline()
    pub.status("RUNNING", "bench")
    print(json.dumps({"start": 1}), flush=True)

    t_pub = []
    copied = 0
    n_paced = int(round(a.rate * a.duration)) if a.rate > 0 else None
    c0 = time.process_time()
    t_start = time.perf_counter()
    t_stop = t_start + a.duration
    i = 0
    while True:
        if n_paced is None:
            if time.perf_counter() >= t_stop:
                break
        else:
            if i >= n_paced:
                break
            delay = t_start + i / a.rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        for name, params in pub.commands():
            print(json.dumps({"command": name, "params": params, "t_ns": time.time_ns()}),
                  flush=True)
        s = (i * BATCH) % n_src
        t0 = time.perf_counter()
        if pub.batch(epoch=0, batch_idx=i, images=images[s:s + BATCH],
                     predictions=preds[s:s + BATCH], confidences=confs[s:s + BATCH],
                     labels=labels[s:s + BATCH], loss=2.3 * (0.999 ** (i % 10000)),
                     layout="NHWC"):
            copied += 1
        t_pub.append(time.perf_counter() - t0)
        i += 1
    seconds = time.perf_counter() - t_start
    cpu = time.process_time() - c0
    pub.status("COMPLETED", "bench done")
    pub.close()
    us = np.asarray(t_pub) * 1e6
    print(json.dumps({
        "done": i, "copied": copied, "seconds": seconds, "cpu_s": cpu,
        "publish_us_p50": float(np.percentile(us, 50)) if i else None,
        "publish_us_p99": float(np.percentile(us, 99)) if i else None,
        # Linux: ru_maxrss is in KiB.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
