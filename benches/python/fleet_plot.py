#!/usr/bin/env python3
"""Draws docs/fleet.png from the JSON `cargo bench --bench fleet` writes:
p99 receipt latency and server CPU per 1000 frames against sessions.

usage: fleet_plot.py FLEET_JSON OUT_PNG   (needs matplotlib)
"""
import json
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

STYLE = {
    "Tls": ("trainwatch, TLS", "tab:blue", "o-"),
    "Plain": ("trainwatch, plaintext", "tab:green", "s--"),
    "Reference": ("grpcio reference, plaintext", "tab:red", "^:"),
}


def finite(v):
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def main(src, dst):
    data = json.load(open(src))
    steps = data["steps"]
    fig, (lat, cpu) = plt.subplots(1, 2, figsize=(11, 4.2))
    for kind, (label, color, fmt) in STYLE.items():
        rows = sorted((s for s in steps if s["kind"] == kind), key=lambda s: s["sessions"])
        if not rows:
            continue
        n = [s["sessions"] for s in rows]
        p99 = [s["p99_max_ms"] if finite(s["p99_max_ms"]) else float("nan") for s in rows]
        p99m = [s["p99_median_ms"] if finite(s["p99_median_ms"]) else float("nan") for s in rows]
        lat.plot(n, p99, fmt, color=color, label=f"{label}: worst session")
        lat.plot(n, p99m, fmt, color=color, alpha=0.4, label=f"{label}: median session")
        cpu.plot(n, [s["server_cpu_s_per_1000"] for s in rows], fmt, color=color, label=label)
        # Steps not held (latency bound passed or frames lost): crossed.
        bad = [s for s in rows if not s["held"]]
        if bad:
            lat.plot([s["sessions"] for s in bad], [s["p99_max_ms"] for s in bad], "kx", ms=10)
            cpu.plot([s["sessions"] for s in bad], [s["server_cpu_s_per_1000"] for s in bad], "kx", ms=10)
    lat.axhline(data["p99_bound_ms"], color="gray", lw=0.8)
    lat.set_title("p99 receipt latency (server histogram); x = step not held")
    lat.set_ylabel("ms")
    cpu.set_title("server CPU per 1000 frames")
    cpu.set_ylabel("CPU s")
    for ax in (lat, cpu):
        ax.set_xscale("log")
        ax.set_xlabel(f"sessions ({data['fps']} frames/s each)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    lat.set_yscale("log")
    cpu.set_ylim(bottom=0)
    lat.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    fig.suptitle("trainwatch server, fleet scale (2 shared cores; 16 x 32x32x3 JPEG per frame)", fontsize=10)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
