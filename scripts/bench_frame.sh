#!/usr/bin/env bash
# Frame pipeline vs the reference's Pillow encode, same machine, same images:
#   ./scripts/bench_frame.sh            (needs numpy + pillow in .venv)
# Dumps the reference's synthetic images (16 per shape), then ROUNDS times
# (default 3) runs ../shared/reference/jpeg_bench.py and `cargo bench --bench
# frame` (the same images as f32 NCHW normalized tensors) one after the
# other, and prints the table docs/frame.md shows: per figure the best round,
# so that load from other processes on a shared machine skews both sides alike
# (MEDIAN=1: the median of the rounds instead).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${TRAINWATCH_PYTHON:-.venv/bin/python}
# The Pillow run happens inside $REF: a relative interpreter path must not break.
case $PY in /*) ;; */*) PY=$PWD/$PY ;; esac
REF=${TRAINWATCH_REFERENCE:-../shared/reference}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" - "$REF" "$TMP" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from ref_common import BATCH, SHAPES, make_images
for name in SHAPES:
    make_images(name)[:BATCH].tofile(f"{sys.argv[2]}/{name}.u8")
PY
cargo bench --bench frame --no-run
for round in $(seq "${ROUNDS:-3}"); do
  mkdir -p "$TMP/round$round"
  # jpeg_bench.py imports ref_common from its own directory.
  (cd "$REF" && "$PY" jpeg_bench.py --out "$TMP/round$round/pillow.json" > /dev/null)
  rm -rf target/criterion/frame_*
  TRAINWATCH_BENCH_IMAGES="$TMP" cargo bench --bench frame "$@" > "$TMP/round$round/bench.log"
  cp -r target/criterion "$TMP/round$round/criterion"
done
python3 scripts/bench_frame_table.py ${MEDIAN:+--median} "$TMP"/round*
