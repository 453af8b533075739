#!/usr/bin/env bash
# The deployment path, proved without a Jetson or Docker (CI runs this as
# root on a throw-away machine; it installs and removes the .deb):
#  1. the .deb builds, installs, and its units pass `systemd-analyze verify`;
#     the exposure scores of `systemd-analyze security` are printed; the
#     installed Python package finds the installed library;
#  2. the aarch64 binary and library build for glibc 2.31 (JetPack 5) with
#     cargo-zigbuild, need no newer glibc symbol, and the binary runs under
#     qemu-user: --version, and inspect on a segment an x86_64 trainer made.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${TRAINWATCH_PYTHON:-$ROOT/.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

echo "== .deb"
command -v cargo-deb >/dev/null || cargo install cargo-deb --version 3.8.0 --locked
cargo build --lib --bin trainwatch
# The dev profile keeps CI from a second, optimized build; releases use
# plain `cargo deb`.
cargo deb --profile dev --no-build -o "$WORK/trainwatch.deb" 2>&1 | grep -v "dev profile\|To enable debug\|^ *$" || true
dpkg-deb -c "$WORK/trainwatch.deb" | awk '{print $6}' > "$WORK/files"
for f in ./usr/bin/trainwatch ./usr/lib/libtrainwatch.so ./usr/include/trainwatch.h \
         ./usr/lib/python3/dist-packages/trainwatch/__init__.py \
         ./lib/systemd/system/trainwatch-agent.service ./lib/systemd/system/trainwatch-server.service \
         ./usr/lib/tmpfiles.d/trainwatch.conf ./usr/lib/sysusers.d/trainwatch.conf \
         ./etc/trainwatch/agent.toml ./etc/trainwatch/server.toml \
         ./usr/share/doc/trainwatch/README.md ./usr/share/doc/trainwatch/http-api.md; do
  grep -qx "$f" "$WORK/files" || { echo "missing from the .deb: $f"; exit 1; }
done
dpkg -i "$WORK/trainwatch.deb" >/dev/null
trap 'dpkg -r trainwatch >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
getent group trainwatch >/dev/null || { echo "postinst did not create the trainwatch group"; exit 1; }
getent group trainwatch-publish >/dev/null || { echo "postinst did not create the trainwatch-publish group"; exit 1; }
# The segment directory: the agent's, trainers may create in it, sticky.
seg=$(stat -c '%U:%G %a' /dev/shm/trainwatch)
[ "$seg" = "trainwatch:trainwatch-publish 3770" ] || { echo "/dev/shm/trainwatch is $seg"; exit 1; }
echo "segment directory: $seg"
systemd-analyze verify /lib/systemd/system/trainwatch-agent.service /lib/systemd/system/trainwatch-server.service
for unit in trainwatch-agent trainwatch-server; do
  systemd-analyze security --offline=yes --no-pager /lib/systemd/system/$unit.service | tail -1
done
/usr/bin/trainwatch --version
# The installed agent reads its own config as the user its unit runs as
# (not as root): it starts and keeps running until the timeout (124); a
# config it cannot read or parse exits 64 at once.
stat -c '%U:%G %a %n' /etc/trainwatch/agent.toml /etc/trainwatch/server.toml
rc=0
TRAINWATCH_AGENT_SERVER=https://localhost:1 timeout 3 runuser -u trainwatch -- \
  /usr/bin/trainwatch agent --config /etc/trainwatch/agent.toml --shm-dir /nonexistent/trainwatch \
  >"$WORK/agent.log" 2>&1 || rc=$?
[ "$rc" = 124 ] || { echo "the agent as trainwatch did not run on its installed config (exit $rc):"; cat "$WORK/agent.log"; exit 1; }
echo "the agent runs as trainwatch on /etc/trainwatch/agent.toml"
(cd "$WORK" && PYTHONPATH=/usr/lib/python3/dist-packages env -u TRAINWATCH_LIB /usr/bin/python3 -c \
  'import trainwatch._lib as l; l.load(); print("python package loads", l.load()._name)')
dpkg -r trainwatch >/dev/null

echo "== aarch64 for glibc 2.31"
rustup target add aarch64-unknown-linux-gnu >/dev/null 2>&1
"$PY" -m pip install --quiet --disable-pip-version-check ziglang
export PATH="$(dirname "$PY"):$PATH"
command -v cargo-zigbuild >/dev/null || cargo install cargo-zigbuild --version 0.24.1 --locked
cargo zigbuild --target aarch64-unknown-linux-gnu.2.31 --bin trainwatch --lib
OUT=target/aarch64-unknown-linux-gnu/debug
for f in "$OUT/trainwatch" "$OUT/libtrainwatch.so"; do
  [[ "$(file "$f")" == *"ARM aarch64"* ]] || { echo "$f is not aarch64"; exit 1; }
  newest=$(objdump -T "$f" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
  echo "$f needs glibc $newest"
  [ "$(printf '%s\n2.31\n' "$newest" | sort -V | tail -1)" = "2.31" ] || { echo "needs glibc $newest > 2.31"; exit 1; }
done
QEMU="qemu-aarch64 -L /usr/aarch64-linux-gnu"
$QEMU "$OUT/trainwatch" --version
# The arm64 package from the cross-built files (debug build, unstripped).
cargo deb --profile dev --no-build --no-strip --target aarch64-unknown-linux-gnu -o "$WORK/trainwatch-arm64.deb" 2>&1 | grep -v "dev profile\|To enable debug\|^ *$" || true
# No `| grep -q` under pipefail: grep exits at the first match and the
# writer's SIGPIPE fails the pipeline (it did in CI).
arch=$(dpkg-deb -f "$WORK/trainwatch-arm64.deb" Architecture)
[ "$arch" = arm64 ] || { echo "no arm64 .deb: Architecture is '$arch'"; exit 1; }
dpkg-deb -c "$WORK/trainwatch-arm64.deb" > "$WORK/arm64-contents.txt"
grep -q "usr/bin/trainwatch" "$WORK/arm64-contents.txt" || { echo "arm64 .deb lacks the binary"; exit 1; }
grep -q "usr/share/doc/trainwatch/agent.md" "$WORK/arm64-contents.txt" || { echo "arm64 .deb lacks docs/"; exit 1; }
echo "arm64 .deb built"

# A segment made by the x86_64 library, inspected by the aarch64 binary.
mkdir -p "$WORK/shm"
TRAINWATCH_LIB=$ROOT/target/debug/libtrainwatch.so PYTHONPATH=$ROOT/python "$PY" -c "
from trainwatch import Publisher
p = Publisher('crossarch', total_epochs=3, batches_per_epoch=10, batch_size=8, model_name='m',
              dataset_name='d', class_names=['a', 'b'], shm_dir='$WORK/shm', frame_capacity=1 << 16)
p.status('RUNNING', 'from x86_64')
p.epoch(0, 0.5, 0.25)
p.close()
"
$QEMU "$OUT/trainwatch" inspect --json "$WORK/shm/crossarch" > "$WORK/inspect.json"
grep -q '"crossarch"' "$WORK/inspect.json" && grep -q 'from x86_64' "$WORK/inspect.json" \
  || { echo "aarch64 inspect did not read the segment:"; cat "$WORK/inspect.json"; exit 1; }
echo "aarch64 binary under qemu read the x86_64 segment"
echo "deploy checks passed"
