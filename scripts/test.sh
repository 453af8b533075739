#!/usr/bin/env bash
# The one command that runs the whole test suite on a fresh machine:
#   ./scripts/test.sh            (extra args go to `cargo test`)
# It makes .venv with the Python packages the cross-language tests use
# (python/requirements-dev.txt), installs the browser tests' npm packages
# (tests/browser, `npm ci`), then runs `cargo test`.
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
# The dashboard's browser tests drive Chromium with playwright-core: install
# it from the lock file when missing or when the lock file changed.
BROWSER_DIR=tests/browser
BSTAMP="$BROWSER_DIR/node_modules/.package-lock.sha256"
BSUM=$(sha256sum "$BROWSER_DIR/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$BSTAMP" 2>/dev/null)" != "$BSUM" ]; then
  (cd "$BROWSER_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$BSUM" > "$BSTAMP"
fi
# The store suite runs against PostgreSQL too, on a cluster the tests start
# themselves from Debian's binaries; say loudly when they are missing.
if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  echo "scripts/test.sh: PostgreSQL found ($(ls -d /usr/lib/postgresql/*/bin | head -n 1)): store tests run on SQLite and PostgreSQL"
else
  echo "scripts/test.sh: WARNING: PostgreSQL NOT installed (apt-get install postgresql): the PostgreSQL store tests will be SKIPPED" >&2
fi
# Library, binary and integration tests (doc-tests: none; benches: `cargo bench`).
exec cargo test --lib --bins --tests "$@"
