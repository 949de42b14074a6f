#!/usr/bin/env bash
# Continuous mode on a long tick history: how long an append takes to reach the target when
# the folder holds N small files (issue 15), on loopback.
#
# Makes N files of 512 bytes (bench/scale.py's tree, db/tick/INSTRUMENT/YYYYMM/DD.Last.ncd)
# plus one live tick file (`gen.py tick`, 10 MiB), brings a `rainmaker serve` in sync with
# `push --once` (timed), then runs `push --watch` while bench/s4_probe.py appends a batch of
# 1,200 bytes to the live file every WATCH_INTERVAL s for WATCH_SECONDS s and polls the target
# for it, once the watching push has said its first "in sync". Prints the probe's delays (p50, p95, max, missed), the CPU each process used over the
# writing period (% of one core) and the peak RSS of the watching push and of the agent.
#
#   bench/watch_scale.sh                 # 300,000 files, 10 s of appends
#   WATCH_FILES=50000 WATCH_SECONDS=5 bench/watch_scale.sh
# Environment: WATCH_FILES (300000), WATCH_SECONDS (10), WATCH_INTERVAL (0.5),
#   RAINMAKER_BIN (else the release build under CARGO_TARGET_DIR), WATCH_KEEP=1 keeps the work
#   folder (bench/work/watch-N; the source is kept between runs as bench/work/src-N).
set -euo pipefail
BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$BENCH/lib.sh"
N=${WATCH_FILES:-300000}
SECONDS_=${WATCH_SECONDS:-10}
INTERVAL=${WATCH_INTERVAL:-0.5}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rainmaker-target}"
RM=$(rainmaker_bin "$(dirname "$BENCH")")
SRC="$BENCH/work/src-$N"
W="$BENCH/work/watch-$N"
LIVE=db/tick/ES/live.Last.ncd
if [[ ! -f $SRC/$LIVE ]]; then
    echo "making $N files in $SRC" >&2
    python3 -c "import sys; sys.path.insert(0, '$BENCH'); import scale; from pathlib import Path; scale.generate(Path('$SRC'), $N)"
    python3 "$BENCH/gen.py" tick "$SRC/$LIVE" 10M > /dev/null
fi
rm -rf "$W"
mkdir -p "$W/dst"
head -c 16 /dev/urandom | xxd -p > "$W/token"
chmod 600 "$W/token"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
RAINMAKER_DATA_DIR="$W/data" /usr/bin/time -f "%M" -o "$W/serve.time" \
    "$RM" serve --root "$W/dst" --listen "127.0.0.1:$PORT" --token-file "$W/token" > "$W/serve.log" 2>&1 &
for _ in $(seq 100); do grep -q "SHA256:" "$W/serve.log" 2> /dev/null && break; sleep 0.1; done
SERVE_PID=$(pgrep -f "serve --root $W/dst" | tail -1)
FP=$(grep -o "SHA256:[0-9a-f]*" "$W/serve.log" | head -1)
ARGS=(--to "wss://127.0.0.1:$PORT" --fingerprint "$FP" --token-file "$W/token" --state-dir "$W/state")
cleanup() {
    kill "${WATCH_PID:-}" "$SERVE_PID" 2> /dev/null || true
    wait 2> /dev/null || true
    [[ ${WATCH_KEEP:-0} == 1 ]] || rm -rf "$W"
}
trap cleanup EXIT
/usr/bin/time -f "%e s, peak %M KiB" -o "$W/once.time" "$RM" push "$SRC" "${ARGS[@]}" --once > /dev/null 2> "$W/once.err"
echo "initial push --once: $(cat "$W/once.time")"
/usr/bin/time -f "%M" -o "$W/watch.time" "$RM" push "$SRC" "${ARGS[@]}" --watch --json > "$W/watch.out" 2> "$W/watch.err" &
# The delays are of a running mirror: its first sync (a whole scan and listing) comes first.
for _ in $(seq 1200); do grep -q '"in_sync"' "$W/watch.out" 2> /dev/null && break; sleep 0.1; done
WATCH_PID=$(pgrep -f "push $SRC .*--watch" | grep -vx "$!" | tail -1)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
c0=$(cpu "$WATCH_PID"); s0=$(cpu "$SERVE_PID"); t0=$(date +%s.%N)
python3 "$BENCH/s4_probe.py" run "$SRC/$LIVE" "$W/dst/$LIVE" --seconds "$SECONDS_" --interval "$INTERVAL" --settle 120 > "$W/probe.json"
c1=$(cpu "$WATCH_PID"); s1=$(cpu "$SERVE_PID"); t1=$(date +%s.%N)
kill "$WATCH_PID"
wait "$WATCH_PID" 2> /dev/null || true
sleep 0.5
kill "$SERVE_PID"
wait 2> /dev/null || true
python3 - "$W" "$N" "$c0" "$c1" "$s0" "$s1" "$t0" "$t1" << 'EOF'
import json, sys
w, n, c0, c1, s0, s1, t0, t1 = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:])
p = json.load(open(f"{w}/probe.json"))
hz, secs = 100, t1 - t0
mib = lambda f: int(open(f).read().split()[-1]) / 1024
print(f"| files | appends seen / made | p50 | p95 | max | push CPU | agent CPU | push peak RSS | agent peak RSS |")
print(f"|---|---|---|---|---|---|---|---|---|")
print(f"| {n:,} | {p['seen']} / {p['batches']} | {p['p50_ms']:.0f} ms | {p['p95_ms']:.0f} ms | {p['max_ms']:.0f} ms "
      f"| {(c1 - c0) / hz / secs * 100:.0f}% | {(s1 - s0) / hz / secs * 100:.0f}% "
      f"| {mib(f'{w}/watch.time'):.0f} MiB | {mib(f'{w}/serve.time'):.0f} MiB |")
EOF
