"""Plots benches/e2e.rs results: end-to-end latency (p50, p99) and device
CPU per 1000 frames against frame size, trainwatch beside the reference.
Usage: e2e_plot.py RESULTS_JSON OUT_PNG"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, LogLocator  # noqa: E402

PATHS = (("ours", "trainwatch", "tab:blue"), ("reference", "reference (Pillow + grpcio)", "tab:red"))


def main():
    res = json.load(open(sys.argv[1]))
    shapes = sorted(res["shapes"], key=lambda s: s["pixels_per_batch"])
    x = [s["pixels_per_batch"] for s in shapes]
    names = [s["shape"] for s in shapes]
    rate = res["knobs"]["rate"]

    def ys(path, key):
        return [s[path].get(key) if s[path].get(key) is not None else float("nan") for s in shapes]

    fig, (lat, cpu, pub) = plt.subplots(1, 3, figsize=(15, 4.6))
    for path, label, color in PATHS:
        lat.plot(x, ys(path, "latency_p50_ms"), "o-", color=color, label=f"{label} p50")
        lat.plot(x, ys(path, "latency_p99_ms"), "s--", color=color, label=f"{label} p99")
        cpu.plot(x, ys(path, "device_cpu_s_per_1000"), "o-", color=color, label=label)
        pub.plot(x, ys(path, "publish_us_p50"), "o-", color=color, label=f"{label} p50")
        pub.plot(x, ys(path, "publish_us_p99"), "s--", color=color, label=f"{label} p99")
    cpu.plot(x, ys("ours", "agent_cpu_s_per_1000"), "^:", color="tab:blue", label="trainwatch agent alone")
    for ax, title, ylabel in (
        (lat, f"publish → server receipt at {rate:g} batches/s", "ms"),
        (cpu, "device CPU per 1000 streamed frames", "CPU s (ref: trainer; tw: trainer + agent)"),
        (pub, "training-thread time per batch", "µs"),
    ):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(x)
        ax.set_xticklabels([f"{n}\n{p / 1e6:.2g} M" if p >= 1e6 else f"{n}\n{p / 1e3:.0f} k"
                            for n, p in zip(names, x)])
        ax.minorticks_off()
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.set_xlabel("pixel values per batch (16 images)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(res["header"], fontsize=8)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
