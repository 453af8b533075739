#!/usr/bin/env bash
# The one command that runs the whole test suite on a fresh machine:
#   ./scripts/test.sh            (extra args go to `cargo test`)
# It makes .venv with the Python packages the cross-language tests use
# (python/requirements-dev.txt), then runs `cargo test` with it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TRAINWATCH_VENV:-.venv}
REQ=python/requirements-dev.txt
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# Reinstall only when the requirements changed since the last install.
STAMP="$VENV/.requirements.sha256"
SUM=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$SUM" ]; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"
  echo "$SUM" > "$STAMP"
fi
export TRAINWATCH_PYTHON="$PWD/$VENV/bin/python"
# Library, binary and integration tests (doc-tests: none; benches: `cargo bench`).
exec cargo test --lib --bins --tests "$@"
