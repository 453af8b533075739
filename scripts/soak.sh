#!/usr/bin/env bash
# Soak run: the agent's memory over a long run (issue 5: "RSS <= 32 MiB
# steady and flat over 1,000,000 frames"). Starts the release server
# (plaintext, loopback), the agent with --max-fps FPS, and TRAINERS bench
# trainers (benches/python/e2e_trainer.py: 16 x 32x32x3 f32 per batch, one
# run each) publishing BATCHES batches in all, each at FPS; samples the
# agent's VmRSS every 5 s into a CSV and prints the agent's counters, its
# peak, first-tenth and last-tenth peak RSS, and the frames the server
# received.
#
#   scripts/soak.sh          # 2,000,000 batches, 2 runs at 1000/s (~17 min;
#                            # the agent streams about half: 1,000,000 frames)
#   BATCHES=60000 FPS=60 scripts/soak.sh
#
# Env: BATCHES (2000000), FPS (1000; the agent's max_fps is at most 1000),
# TRAINERS (2), PYTHON (.venv/bin/python), OUT (CSV, default a temp file),
# GRPC_PORT (47151), HTTP_PORT (47180), HEALTH_PORT (47190).
set -euo pipefail
cd "$(dirname "$0")/.."
BATCHES=${BATCHES:-2000000}
FPS=${FPS:-1000}
TRAINERS=${TRAINERS:-2}
PY=${PYTHON:-.venv/bin/python}
GRPC_PORT=${GRPC_PORT:-47151}
HTTP_PORT=${HTTP_PORT:-47180}
HEALTH_PORT=${HEALTH_PORT:-47190}
OUT=${OUT:-$(mktemp /tmp/trainwatch-soak.XXXXXX.csv)}

cargo build --release --quiet
BIN=target/release/trainwatch
SHM=$(mktemp -d /dev/shm/trainwatch-soak.XXXXXX)
LOGS=$(mktemp -d /tmp/trainwatch-soak-logs.XXXXXX)
pids=()
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$SHM"
}
trap cleanup EXIT

"$BIN" server --insecure --listen 127.0.0.1:$GRPC_PORT --http-listen 127.0.0.1:$HTTP_PORT \
    >"$LOGS/server.log" 2>&1 &
pids+=($!)
"$BIN" agent --insecure --server http://127.0.0.1:$GRPC_PORT --shm-dir "$SHM" \
    --max-fps "$FPS" --health-listen 127.0.0.1:$HEALTH_PORT >"$LOGS/agent.log" 2>&1 &
AGENT=$!
pids+=($AGENT)
trainers=()
for i in $(seq 1 "$TRAINERS"); do
    TRAINWATCH_LIB=$PWD/target/release/libtrainwatch.so PYTHONPATH=python "$PY" \
        benches/python/e2e_trainer.py --shm-dir "$SHM" --run "soak$i" --fps "$FPS" \
        --batches $((BATCHES / TRAINERS)) >"$LOGS/trainer$i.log" &
    trainers+=($!)
done
pids+=("${trainers[@]}")

received() {
    curl -s "http://127.0.0.1:$HTTP_PORT/api/sessions" |
        "$PY" -c 'import json,sys; print(sum(s["batches_received"] for s in json.load(sys.stdin)["sessions"]))' \
        2>/dev/null || echo 0
}
running() {
    for p in "${trainers[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done
    return 1
}

echo "seconds,agent_rss_kib,batches_received" >"$OUT"
start=$(date +%s)
while running; do
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$AGENT/status")
    echo "$(($(date +%s) - start)),$rss,$(received)" >>"$OUT"
    sleep 5
done
# Let the last batches arrive, then one more sample.
sleep 2
rss=$(awk '/^VmRSS/ {print $2}' "/proc/$AGENT/status")
echo "$(($(date +%s) - start)),$rss,$(received)" >>"$OUT"

curl -s "http://127.0.0.1:$HEALTH_PORT/metrics" | grep -E '^trainwatch_agent_(frames|events|reconnects)' || true
"$PY" - "$OUT" "$BATCHES" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
rss = [int(r["agent_rss_kib"]) / 1024 for r in rows]
n = max(1, len(rss) // 10)
print(f"soak: {sys.argv[2]} batches published, {rows[-1]['batches_received']} frames received "
      f"by the server in {rows[-1]['seconds']} s")
print(f"agent RSS MiB: peak {max(rss):.1f}, first tenth peak {max(rss[:n]):.1f}, "
      f"last tenth peak {max(rss[-n:]):.1f} ({len(rss)} samples; CSV {sys.argv[1]})")
EOF
