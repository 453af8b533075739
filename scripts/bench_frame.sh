#!/usr/bin/env bash
# Frame pipeline vs the reference's Pillow encode, same machine, same images:
#   ./scripts/bench_frame.sh            (needs numpy + pillow in .venv)
# Dumps the reference's synthetic images (16 per shape), runs
# ../shared/reference/jpeg_bench.py on them, then `cargo bench --bench frame`
# on the same images as f32 NCHW normalized tensors, and prints the table
# docs/frame.md shows.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${TRAINWATCH_PYTHON:-.venv/bin/python}
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
# jpeg_bench.py imports ref_common from its own directory.
(cd "$REF" && "$PY" jpeg_bench.py --out "$TMP/pillow.json" > /dev/null)
rm -rf target/criterion/frame_*
TRAINWATCH_BENCH_IMAGES="$TMP" cargo bench --bench frame "$@"
python3 scripts/bench_frame_table.py "$TMP/pillow.json" target/criterion
