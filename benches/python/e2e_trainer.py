"""The trainer side of benches/e2e.rs and scripts/soak.sh: publishes 16
images per batch with pub.batch and polls pub.commands() once per batch as a
training loop does, printing one JSON line per command seen (with
time.time_ns() when seen).

Images: with --shape and --ref-dir, the uint8 HWC images the reference
trainer encodes (ref_common.make_images, cached in --images-cache), cycled
through as the reference does; without --ref-dir, 16 f32 NCHW normalized
32x32x3 CIFAR-like images (mean/std passed to be undone).

--rate R (or --fps): R batches/s on the reference's schedule (batch i is due
at start + i/R; sleep plays the training step) for --duration s or
--batches N batches; --rate 0: as fast as possible for --duration s.

Lines on stdout: {"ready": path}; with --wait-go, after "go" on stdin,
{"start": 1}; at the end {"done": batches, "copied", "seconds", "cpu_s"
(trainer CPU in the loop), "publish_us_p50"/"_p99" (time around pub.batch),
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
PER_EPOCH = 1000
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def reference_images(shape, ref_dir, cache):
    if cache and os.path.exists(cache):
        return np.load(cache)
    sys.path.insert(0, ref_dir)
    from ref_common import make_images  # the reference's own generator
    images = make_images(shape)
    if cache:
        np.save(cache + ".tmp.npy", images)
        os.replace(cache + ".tmp.npy", cache)
    return images


def cifar_f32():
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32) / 32.0
    raw = np.stack([np.stack([(xx * (i % 3 + 1) + yy * c) % 1.0 for c in range(3)])
                    for i in range(BATCH)]).astype(np.float32)
    return ((raw - np.array(MEAN, np.float32)[None, :, None, None])
            / np.array(STD, np.float32)[None, :, None, None]).astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shm-dir")
    ap.add_argument("--run")
    ap.add_argument("--shape", default="cifar")
    ap.add_argument("--ref-dir", default=None)
    ap.add_argument("--images-cache", default=None)
    ap.add_argument("--rate", "--fps", type=float, default=60.0,
                    help="batches/s; 0 = full speed")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--batches", type=int, default=None, help="instead of --duration")
    ap.add_argument("--wait-go", action="store_true", help='start on "go" from stdin')
    ap.add_argument("--cache-only", action="store_true", help="fill --images-cache, exit")
    a = ap.parse_args()

    if a.ref_dir:
        images = reference_images(a.shape, a.ref_dir, a.images_cache)
        kw = {"layout": "NHWC"}
    else:
        images = cifar_f32()
        kw = {"layout": "NCHW", "mean": MEAN, "std": STD}
    if a.cache_only:
        return 0
    n_src = images.shape[0]
    # As the reference: seed + 1 for labels, predictions, confidences.
    rng = np.random.default_rng(1235)
    labels = rng.integers(0, NUM_CLASSES, n_src).astype(np.int32)
    preds = np.where(rng.random(n_src) < 0.7, labels,
                     rng.integers(0, NUM_CLASSES, n_src)).astype(np.int32)
    confs = rng.uniform(0.1, 1.0, n_src).astype(np.float32)
    if a.batches is not None:
        n_batches = a.batches
    elif a.rate > 0:
        n_batches = int(round(a.rate * a.duration))
    else:
        n_batches = None  # full speed for --duration
    # The segment sized for 16 images of the shape: the default (16 f32
    # 224x224x3) holds only 12 of 512x512x3 u8, and the writer keeps what fits.
    pub = Publisher(a.run, total_epochs=max(1, -(-(n_batches or 1) // PER_EPOCH)),
                    batches_per_epoch=PER_EPOCH, batch_size=BATCH, model_name="bench",
                    dataset_name=a.shape, class_names=[str(i) for i in range(NUM_CLASSES)],
                    shm_dir=a.shm_dir, frame_capacity=max(images[:BATCH].nbytes, 1))
    print(json.dumps({"ready": pub.path}), flush=True)
    if a.wait_go:
        sys.stdin.readline()
    pub.status("RUNNING", "bench")
    print(json.dumps({"start": 1}), flush=True)

    t_pub = []
    copied = 0
    c0 = time.process_time()
    t_start = time.perf_counter()
    t_stop = t_start + a.duration
    i = 0
    while True:
        if n_batches is None:
            if time.perf_counter() >= t_stop:
                break
        else:
            if i >= n_batches:
                break
            delay = t_start + i / a.rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        for name, params in pub.commands():
            print(json.dumps({"command": name, "params": params, "t_ns": time.time_ns()}),
                  flush=True)
        s = (i * BATCH) % n_src
        t0 = time.perf_counter()
        if pub.batch(epoch=i // PER_EPOCH, batch_idx=i % PER_EPOCH, images=images[s:s + BATCH],
                     predictions=preds[s:s + BATCH], confidences=confs[s:s + BATCH],
                     labels=labels[s:s + BATCH], loss=2.3 * (0.999 ** (i % 10000)), **kw):
            copied += 1
        t_pub.append(time.perf_counter() - t0)
        if i % PER_EPOCH == PER_EPOCH - 1:
            pub.epoch(i // PER_EPOCH, 1.0, 0.5)
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
