#!/usr/bin/env python3
"""Markdown table from the Pillow reference JSON and criterion's estimates:
µs per 16-image batch (median) and megapixels/s, and Pillow/ours ratios
(> 1: ours is faster). Usage: bench_frame_table.py PILLOW_JSON CRITERION_DIR"""
import glob
import json
import os
import sys

SHAPES = [("mnist", "16x28x28x1"), ("cifar", "16x32x32x3"),
          ("imagenet", "16x224x224x3"), ("max", "16x512x512x3")]


def ours(crit, shape):
    """{(backend, workers): µs per batch} for one shape."""
    out = {}
    for path in glob.glob(os.path.join(crit, f"frame_{shape}", "*", "*", "new", "estimates.json")):
        parts = path.split(os.sep)
        backend, workers = parts[-4], parts[-3].split("=")[-1]
        with open(path) as f:
            out[(backend, int(workers))] = json.load(f)["median"]["point_estimate"] / 1000.0
    return out


def main():
    pillow = json.load(open(sys.argv[1]))
    crit = sys.argv[2]
    rows, cols = [], None
    for shape, label in SHAPES:
        ref = pillow["shapes"][shape]
        h, w, _ = ref["hwc"]
        mp = 16 * h * w / 1e6
        p_us = ref["us_per_batch16_p50"]
        res = ours(crit, shape)
        if cols is None:
            cols = sorted(res, key=lambda k: (k[1], k[0] != "turbojpeg", k[0]))
        cells = [label, f"{p_us:,.0f} ({mp / p_us * 1e6:.0f} MP/s)"]
        for k in cols:
            us = res.get(k)
            cells.append("–" if us is None else f"{us:,.0f} ({mp / us * 1e6:.0f} MP/s)")
        cells += ["–" if res.get(k) is None else f"{p_us / res[k]:.2f}x" for k in cols]
        rows.append(cells)
    name = lambda k: f"{k[0]} {'1 thread' if k[1] == 1 else f'pool ({k[1]})'}"
    head = (["shape", f"Pillow {pillow['pillow']} µs/batch"] + [f"{name(k)} µs/batch" for k in cols]
            + [f"Pillow / {name(k)}" for k in cols])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
