#!/usr/bin/env python3
"""Markdown table from rounds of the Pillow reference and criterion: µs per
16-image batch (median of a run, best of the rounds; with --median, the
median of the rounds) and megapixels/s, and Pillow/ours ratios (> 1: ours
is faster).
Usage: bench_frame_table.py [--median] ROUND_DIR... (each with pillow.json, criterion/)"""
import glob
import json
import os
import statistics
import sys

SHAPES = [("mnist", "16x28x28x1"), ("cifar", "16x32x32x3"),
          ("imagenet", "16x224x224x3"), ("max", "16x512x512x3")]


def ours(crit, shape):
    """{(backend, workers, input): µs per batch} for one shape."""
    out = {}
    for group, inp in ((f"frame_{shape}", "f32"), (f"frame_u8_{shape}", "u8")):
        for path in glob.glob(os.path.join(crit, group, "*", "*", "new", "estimates.json")):
            parts = path.split(os.sep)
            backend, workers = parts[-4], parts[-3].split("=")[-1]
            with open(path) as f:
                est = json.load(f)["median"]["point_estimate"] / 1000.0
            out[(backend, int(workers), inp)] = est
    return out


def main():
    args = sys.argv[1:]
    median = "--median" in args
    rounds = [a for a in args if a != "--median"]
    pick = statistics.median if median else min
    pillows = [json.load(open(os.path.join(r, "pillow.json"))) for r in rounds]
    pillow = pillows[0]
    rows, cols = [], None
    for shape, label in SHAPES:
        ref = pillow["shapes"][shape]
        h, w, _ = ref["hwc"]
        mp = 16 * h * w / 1e6
        p_us = pick([p["shapes"][shape]["us_per_batch16_p50"] for p in pillows])
        runs = {}
        for r in rounds:
            for k, us in ours(os.path.join(r, "criterion"), shape).items():
                runs.setdefault(k, []).append(us)
        res = {k: pick(v) for k, v in runs.items()}
        if cols is None:
            cols = sorted(res, key=lambda k: (k[2] == "u8", k[1], k[0] != "turbojpeg", k[0]))
        cells = [label, f"{p_us:,.0f} ({mp / p_us * 1e6:.0f} MP/s)"]
        for k in cols:
            us = res.get(k)
            cells.append("–" if us is None else f"{us:,.0f} ({mp / us * 1e6:.0f} MP/s)")
        cells += ["–" if res.get(k) is None else f"{p_us / res[k]:.2f}x" for k in cols]
        rows.append(cells)
    def name(k):
        threads = "1 thread" if k[1] == 1 else f"pool ({k[1]})"
        return f"{k[0]} {threads}" + (" u8 NHWC in" if k[2] == "u8" else "")

    head = (["shape", f"Pillow {pillow['pillow']} µs/batch"] + [f"{name(k)} µs/batch" for k in cols]
            + [f"Pillow / {name(k)}" for k in cols])
    print(f"{'median' if median else 'best'} of {len(rounds)} rounds; Pillow {pillow['pillow']}, quality {pillow['quality']}")
    print()
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
