#!/usr/bin/env bash
# One-shot check of the NVML path on a machine with an NVIDIA GPU: builds
# the nvml_probe example, prints what nvidia-smi says (for comparison only;
# the agent never spawns it) and what our sampler reports, three samples
# 0.5 s apart. Exit status is the probe's; "nvml: open" and gpu figures
# present (not listed in `unavailable`) is a pass.
#   ./scripts/nvml_check.sh            (TRAINWATCH_NVML_LIBRARY=path to force a library)
set -uo pipefail
cd "$(dirname "$0")/.."
echo "== driver"
ls -l /usr/lib/x86_64-linux-gnu/libnvidia-ml.so* /usr/lib/aarch64-linux-gnu/libnvidia-ml.so* 2>/dev/null || true
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,utilization.gpu,memory.used,memory.total,clocks.gr --format=csv || true
fi
echo "== build"
cargo build --quiet --example nvml_probe || exit 1
echo "== probe"
exec ./target/debug/examples/nvml_probe --samples 3
