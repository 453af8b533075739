"""A trainer driven line by line from stdin, for tests that need to know
exactly what was published when. One batch of 16 f32 32x32x3 images per
step, each followed by its epoch summary (one batch per epoch), so frames
and events advance together. Commands on stdin, one answer each on stdout:
  publish N FPS  -> {"published": total, "copied": c, "skipped": s, "events": e}
                    (FPS 0: as fast as possible)
  finish         -> status COMPLETED, close: {"done": total, "events": e}
Start: {"ready": path, "events": e} after the RUNNING status.
Usage: outage_trainer.py --shm-dir DIR --run NAME --event-slots S"""
import argparse
import json
import sys
import time

import numpy as np

from trainwatch import Publisher


def say(**kw):
    print(json.dumps(kw), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shm-dir", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--event-slots", type=int, default=0)
    a = ap.parse_args()
    images = np.random.default_rng(3).standard_normal((16, 3, 32, 32)).astype(np.float32)
    labels = [i % 10 for i in range(16)]
    pub = Publisher(a.run, total_epochs=0, batches_per_epoch=1, batch_size=16,
                    class_names=[str(i) for i in range(10)], shm_dir=a.shm_dir,
                    event_slots=a.event_slots or None)
    pub.status("RUNNING", "started")
    published = copied = 0
    events = 1
    say(ready=pub.path, events=events)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "publish":
            n, fps = int(words[1]), float(words[2])
            next_t = time.monotonic()
            for _ in range(n):
                if pub.batch(epoch=published, batch_idx=0, images=images, predictions=labels,
                             labels=labels, loss=1.0, layout="NCHW"):
                    copied += 1
                pub.epoch(published, 1.0, 0.5)
                published += 1
                events += 1
                if fps > 0:
                    next_t += 1.0 / fps
                    delay = next_t - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
            say(published=published, copied=copied, skipped=published - copied, events=events)
        elif words[0] == "finish":
            pub.status("COMPLETED", "done")
            events += 1
            pub.close()
            say(done=published, events=events)
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
