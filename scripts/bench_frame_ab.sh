#!/usr/bin/env bash
# Before/after on a shared machine: each round runs the Pillow reference, then
# every given `frame` bench binary (built with `cargo bench --bench frame
# --no-run` at each commit and copied aside), back to back on the same images.
#   ./scripts/bench_frame_ab.sh OUT_DIR ROUNDS FILTER BENCH_BINARY...
#   e.g. ./scripts/bench_frame_ab.sh /tmp/ab 3 turbojpeg /tmp/frame-old /tmp/frame-new
# Then per binary N: scripts/bench_frame_table.py --median OUT_DIR/vN/round*
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$1 ROUNDS=$2 FILTER=$3
shift 3
PY=${TRAINWATCH_PYTHON:-.venv/bin/python}
case $PY in /*) ;; */*) PY=$PWD/$PY ;; esac
REF=${TRAINWATCH_REFERENCE:-../shared/reference}
mkdir -p "$OUT/images"
"$PY" - "$REF" "$OUT/images" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from ref_common import BATCH, SHAPES, make_images
for name in SHAPES:
    make_images(name)[:BATCH].tofile(f"{sys.argv[2]}/{name}.u8")
PY
for round in $(seq "$ROUNDS"); do
  (cd "$REF" && "$PY" jpeg_bench.py --out "$OUT/pillow.$round.json" > /dev/null)
  v=0
  for bin in "$@"; do
    v=$((v + 1))
    dir="$OUT/v$v/round$round"
    mkdir -p "$dir"
    cp "$OUT/pillow.$round.json" "$dir/pillow.json"
    CRITERION_HOME="$dir/criterion" TRAINWATCH_BENCH_IMAGES="$OUT/images" \
      "$bin" --bench "$FILTER" > "$dir/bench.log" 2>&1
  done
  echo "round $round done, load $(cut -d' ' -f1-3 /proc/loadavg)"
done
