#!/usr/bin/env bash
# RainMaker benchmark: rainmaker push vs rsync (daemon protocol) on loopback.
#
# What it measures, on a generated NinjaTrader-like data folder (bench/gen.py:
# ~1 GiB of 24-byte tick records in 40 files, ~2,000 small settings files, a few
# empty folders):
#   S1  initial mirror to an empty target   (cp -a to a fresh folder as a local reference)
#   S2  after one simulated trading session (every tick file +0.5%, 5 files edited,
#       5 added, 5 deleted): time, bytes on the wire, and wire bytes / bytes changed
#   S3  nothing changed
#   S5  one source to three fresh targets at once (rainmaker only), against S1
#   S4  continuous mode, run last by bench/s4.sh on its own data (see its header): delay
#       until appended batches are on the target and wire bytes per appended byte, for
#       rainmaker push --watch, rsync in a loop and Syncthing; idle agent CPU and memory
# rsync runs as `rsync -a --delete --stats SRC/ rsync://127.0.0.1:PORT/mod/`
# (rsync's own protocol, no -z, no TLS) against an rsync daemon; rainmaker runs
# `rainmaker push SRC --to wss://127.0.0.1:PORT --once --json` against a
# `rainmaker serve` (TLS, token auth, the fingerprint each agent printed pinned). Each target is
# checked against SRC after every scenario (diff -r, then size and mtime, to the
# nanosecond, of every file), excluding .rainmaker; any difference fails the run.
#
# Caches cannot be dropped, so every tool runs on a warm page cache: the source
# is read once (cat > /dev/null) after generation, and `sync` runs (untimed)
# before each timed command. Each command runs once; times are wall clock.
#
# Run from anywhere:
#   bench/run.sh                     # ~1 GiB, needs ~8 GiB free disk under bench/work
#   BENCH_SCALE=0.1 bench/run.sh     # ~100 MiB of tick data (quick)
# Options:
#   --keep        keep the work folder (bench/work/run-*) instead of deleting it
#   --rsync-only  skip the build and every rainmaker step (to test the harness)
# Environment:
#   BENCH_SCALE       data size factor (default 1.0)
#   CARGO_TARGET_DIR  where to build (default ~/.cache/rainmaker-target)
#   RAINMAKER_BIN     use this rainmaker binary instead of building one
#   BENCH_TIMEOUT     seconds any one timed command may take (default 3600)
#   BENCH_S4          0 to skip S4 (default 1; it is skipped with --rsync-only too);
#                     BENCH_S4_* variables are passed on to bench/s4.sh
# Needs: cargo, python3, rsync (apt-get install rsync), diff, find.
# Results are printed as a markdown table and written to bench/last-results.md.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")
GEN="$BENCH_DIR/gen.py"
SCALE=${BENCH_SCALE:-1.0}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-3600}
export BENCH_SCALE=$SCALE
KEEP=0
RSYNC_ONLY=0
for arg in "$@"; do
    case $arg in
        --keep) KEEP=1 ;;
        --rsync-only) RSYNC_ONLY=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option: $arg (try --help)" >&2; exit 2 ;;
    esac
done
COMMAND="BENCH_SCALE=$SCALE${RAINMAKER_BIN:+ RAINMAKER_BIN=$RAINMAKER_BIN} bench/run.sh${*:+ $*}"

say() { printf '\n== %s\n' "$*" >&2; }
die() { printf '\nBENCH FAILED: %s\n' "$*" >&2; exit 1; }

command -v python3 > /dev/null || die "python3 is not installed"
command -v rsync > /dev/null || die "rsync is not installed: apt-get install rsync"
if [[ $RSYNC_ONLY == 0 && -z ${RAINMAKER_BIN:-} ]]; then
    command -v cargo > /dev/null || die "cargo is not installed"
fi

# ------------------------------------------------------------------ helpers

PIDS=()
WORK=""
any_alive() {
    local pid
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2> /dev/null && return 0; done
    return 1
}
cleanup() {
    local rc=$?
    local pid i
    for pid in "${PIDS[@]}"; do kill "$pid" 2> /dev/null || true; done
    for ((i = 0; i < 50; i++)); do # up to 5 s to stop, then SIGKILL
        any_alive || break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2> /dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2> /dev/null || true; done
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $KEEP == 1 ]]; then
            echo "work folder kept: $WORK" >&2
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port, wait_listen
source "$BENCH_DIR/lib.sh"

# start_serve ROOT PORT: start a rainmaker target agent in the background
start_serve() {
    local root=$1 port=$2 log="$WORK/logs/serve-$2.log"
    mkdir -p "$root"
    "$RM" serve --root "$root" --listen "127.0.0.1:$port" --token-file "$TOKEN" 2> "$log" > /dev/null &
    PIDS+=($!)
    wait_listen "$port" "$!" "$log"
    echo "rainmaker serve on :$port: $(head -c 300 "$log" | tr '\n' ' ')" >&2
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# timed NAME CMD...: run CMD once (stdout to logs/NAME.out, stderr to logs/NAME.err),
# set SECONDS_TAKEN to its wall-clock time, fail loudly if it fails or outlives BENCH_TIMEOUT
SECONDS_TAKEN=""
timed() {
    local name=$1 t0 t1 rc=0
    shift
    sync
    t0=$(now)
    timeout --foreground --kill-after=30 "$BENCH_TIMEOUT" "$@" \
        > "$WORK/logs/$name.out" 2> "$WORK/logs/$name.err" || rc=$?
    t1=$(now)
    if [[ $rc != 0 ]]; then
        [[ $rc == 124 || $rc == 137 ]] && echo "$name: killed after BENCH_TIMEOUT=$BENCH_TIMEOUT s" >&2
        echo "--- stdout:" >&2; tail -20 "$WORK/logs/$name.out" >&2
        echo "--- stderr:" >&2; tail -20 "$WORK/logs/$name.err" >&2
        die "$name: exit status $rc from: $*"
    fi
    SECONDS_TAKEN=$(elapsed "$t0" "$t1")
    echo "$name: $SECONDS_TAKEN s" >&2
}

# listing DIR: every folder, and every file with its size and mtime (ns), minus .rainmaker
listing() {
    (cd "$1" && find . -path ./.rainmaker -prune -o \( -type d -printf 'dir %P\n' \) \
        -o \( -type f -printf 'file %P %s %T@\n' \) -o -printf 'other %P %y\n' | LC_ALL=C sort)
}

# verify LABEL DST: DST must equal SRC (content, tree, sizes, mtimes), .rainmaker excluded
verify() {
    local label=$1 dst=$2 out="$WORK/logs/verify-$1"
    if ! diff -r --exclude=.rainmaker "$SRC" "$dst" > "$out.diff" 2>&1; then
        head -40 "$out.diff" >&2
        die "$label: $dst differs from the source (diff -r)"
    fi
    listing "$SRC" > "$out.src"
    listing "$dst" > "$out.dst"
    if ! diff "$out.src" "$out.dst" > "$out.meta" 2>&1; then
        head -40 "$out.meta" >&2
        die "$label: $dst differs from the source in sizes/mtimes (< source, > target)"
    fi
    echo "$label: identical to the source ($(grep -c '^file ' "$out.src") files)" >&2
}

# rsync_to LOGNAME: mirror SRC to the rsync daemon; sets SECONDS_TAKEN and RSYNC_WIRE
rsync_to() {
    timed "$1" rsync -a --delete --stats "$SRC/" "rsync://127.0.0.1:$RSYNC_PORT/mod/"
    RSYNC_WIRE=$(grep -E '^Total bytes (sent|received):' "$WORK/logs/$1.out" | tr -d , |
        awk '{ s += $4; n++ } END { if (n != 2) exit 1; print s }') ||
        die "$1: no 'Total bytes sent/received' in rsync --stats output"
}

# push_to LOGNAME STATE KNOWN URL...: rainmaker push --once --json; sets SECONDS_TAKEN and RM_WIRE
push_to() {
    local name=$1 state=$2 known=$3 to=() url
    shift 3
    for url in "$@"; do
        to+=(--to "$url" --fingerprint "$(fingerprint_of "$WORK/logs/serve-${url##*:}.log")")
    done
    timed "$name" "$RM" push "$SRC" "${to[@]}" --token-file "$TOKEN" --once --json \
        --state-dir "$state" --known-peers "$known"
    RM_WIRE=$(python3 - "$WORK/logs/$name.out" "$#" << 'EOF'
import json, sys
text = open(sys.argv[1]).read()
try:
    r = json.loads(text)
except ValueError as e:
    sys.exit(f"push --json printed no JSON object ({e}): {text[:300]!r}")
targets = r.get("targets") or []
for t in targets:
    print(f"  {t.get('url')}: ok={t.get('ok')} files_sent={t.get('files_sent')} "
          f"bytes_changed={t.get('bytes_changed')} wire_bytes={t.get('wire_bytes')} "
          f"seconds={t.get('seconds')} error={t.get('error')}", file=sys.stderr)
if not r.get("ok") or len(targets) != int(sys.argv[2]) or not all(t.get("ok") for t in targets):
    sys.exit("push reported a failure")
print(sum(int(t["wire_bytes"]) for t in targets))
EOF
    ) || die "$name: see $WORK/logs/$name.out"
}

# ------------------------------------------------------------------ setup

if [[ $RSYNC_ONLY == 1 ]]; then
    :
elif [[ -n ${RAINMAKER_BIN:-} ]]; then
    RM=$RAINMAKER_BIN
    [[ -x $RM ]] || die "RAINMAKER_BIN=$RM is not an executable"
else
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/rainmaker-target}
    say "cargo build --release (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$REPO" && cargo build --release) || die "cargo build --release failed"
    RM="$CARGO_TARGET_DIR/release/rainmaker"
    [[ -x $RM ]] || die "no binary at $RM"
fi

mkdir -p "$BENCH_DIR/work"
WORK=$(mktemp -d "$BENCH_DIR/work/run-$(date +%Y%m%d-%H%M%S)-XXXX")
mkdir -p "$WORK/logs"
SRC="$WORK/src"
DST_RSYNC="$WORK/dst-rsync"
DST_RM="$WORK/dst-rainmaker"
mkdir -p "$DST_RSYNC"

say "generating the source data (BENCH_SCALE=$SCALE) in $SRC"
t0=$(now)
DATA_BYTES=$(python3 "$GEN" init "$SRC")
GEN_SECONDS=$(elapsed "$t0" "$(now)")
DATA_FILES=$(find "$SRC" -type f | wc -l)
echo "generated $DATA_BYTES bytes in $DATA_FILES files in $GEN_SECONDS s" >&2
find "$SRC" -type f -print0 | xargs -0 cat > /dev/null # warm the page cache once

say "starting servers"
RSYNC_PORT=$(free_port)
cat > "$WORK/rsyncd.conf" << EOF
use chroot = no
log file = $WORK/logs/rsyncd.log
[mod]
    path = $DST_RSYNC
    read only = no
    uid = $(id -u)
    gid = $(id -g)
EOF
rsync --daemon --no-detach --config="$WORK/rsyncd.conf" --port="$RSYNC_PORT" --address=127.0.0.1 \
    2> "$WORK/logs/rsyncd.err" &
PIDS+=($!)
wait_listen "$RSYNC_PORT" "$!" "$WORK/logs/rsyncd.err"
echo "rsync daemon on :$RSYNC_PORT" >&2

if [[ $RSYNC_ONLY == 0 ]]; then
    TOKEN="$WORK/token"
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$TOKEN")
    RM_PORT=$(free_port)
    start_serve "$DST_RM" "$RM_PORT"
    RM_URL="wss://127.0.0.1:$RM_PORT"
    STATE="$WORK/state"
    KNOWN="$WORK/known-peers"
fi

ROWS="$WORK/rows.tsv" # scenario, rainmaker s, rsync s, rainmaker wire, rsync wire, bytes changed
: > "$ROWS"
row() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$ROWS"; }
RM_S="" RM_WIRE="" RSYNC_S="" RSYNC_WIRE=""

# ------------------------------------------------------------------ scenarios

say "S1: initial mirror"
timed s1-cp cp -a "$SRC" "$WORK/dst-cp"
CP_S=$SECONDS_TAKEN
verify s1-cp "$WORK/dst-cp"
rm -rf "$WORK/dst-cp"
rsync_to s1-rsync
RSYNC_S=$SECONDS_TAKEN
verify s1-rsync "$DST_RSYNC"
if [[ $RSYNC_ONLY == 0 ]]; then
    push_to s1-rainmaker "$STATE" "$KNOWN" "$RM_URL"
    RM_S=$SECONDS_TAKEN
    verify s1-rainmaker "$DST_RM"
fi
S1_RM_S=$RM_S
row "S1 initial mirror" "$RM_S" "$RSYNC_S" "$RM_WIRE" "$RSYNC_WIRE" "$DATA_BYTES"

say "S2: one trading session"
CHANGED=$(python3 "$GEN" session "$SRC")
echo "bytes changed: $CHANGED" >&2
rsync_to s2-rsync
RSYNC_S=$SECONDS_TAKEN
verify s2-rsync "$DST_RSYNC"
if [[ $RSYNC_ONLY == 0 ]]; then
    push_to s2-rainmaker "$STATE" "$KNOWN" "$RM_URL"
    RM_S=$SECONDS_TAKEN
    verify s2-rainmaker "$DST_RM"
fi
row "S2 one session" "$RM_S" "$RSYNC_S" "$RM_WIRE" "$RSYNC_WIRE" "$CHANGED"

say "S3: nothing changed"
rsync_to s3-rsync
RSYNC_S=$SECONDS_TAKEN
verify s3-rsync "$DST_RSYNC"
if [[ $RSYNC_ONLY == 0 ]]; then
    push_to s3-rainmaker "$STATE" "$KNOWN" "$RM_URL"
    RM_S=$SECONDS_TAKEN
    verify s3-rainmaker "$DST_RM"
fi
row "S3 no change" "$RM_S" "$RSYNC_S" "$RM_WIRE" "$RSYNC_WIRE" 0

S5_NOTE=""
if [[ $RSYNC_ONLY == 0 ]]; then
    say "S5: one source to three fresh targets"
    urls=()
    for t in a b c; do
        port=$(free_port)
        start_serve "$WORK/dst-s5$t" "$port"
        urls+=("wss://127.0.0.1:$port")
    done
    push_to s5-rainmaker "$WORK/state-s5" "$WORK/known-peers-s5" "${urls[@]}"
    RM_S=$SECONDS_TAKEN
    for t in a b c; do verify "s5-rainmaker-$t" "$WORK/dst-s5$t"; done
    SRC_BYTES=$(find "$SRC" -type f -printf '%s\n' | awk '{ s += $1 } END { print s }')
    row "S5 3 fresh targets (bytes changed = 3 x source)" "$RM_S" "" "$RM_WIRE" "" "$((SRC_BYTES * 3))"
    S5_NOTE=$(awk -v a="$RM_S" -v b="$S1_RM_S" 'BEGIN { printf "S5: three targets took %.3f s, %.2fx the one-target time of S1 (%.3f s).", a, a / b, b }')
fi

# ------------------------------------------------------------------ report

TABLE=$(python3 - "$ROWS" << 'EOF'
import sys
def num(s):
    return float(s) if s else None
def fmt_b(v):
    return "—" if v is None else f"{int(v):,}"
print("| scenario | rainmaker s | rsync s | speedup | rainmaker wire bytes | rsync wire bytes | bytes changed | ratio wire/changed (rainmaker / rsync) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for line in open(sys.argv[1]):
    name, rm_s, rs_s, rm_w, rs_w, changed = (line.rstrip("\n").split("\t") + [""] * 6)[:6]
    rm_s, rs_s, rm_w, rs_w, changed = map(num, (rm_s, rs_s, rm_w, rs_w, changed))
    speed = f"{rs_s / rm_s:.2f}x" if rm_s and rs_s else "—"
    def ratio(w):
        return "—" if w is None or not changed else f"{w / changed:.3f}"
    print(f"| {name} | {'—' if rm_s is None else f'{rm_s:.3f}'} | {'—' if rs_s is None else f'{rs_s:.3f}'} "
          f"| {speed} | {fmt_b(rm_w)} | {fmt_b(rs_w)} | {fmt_b(changed)} | {ratio(rm_w)} / {ratio(rs_w)} |")
EOF
)

CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
MEM=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
REV=$(git -C "$REPO" rev-parse --short HEAD 2> /dev/null || echo "no commit")
if [[ -n $(git -C "$REPO" status --porcelain 2> /dev/null) ]]; then REV="$REV (+ uncommitted changes)"; fi
REPORT=$(
    cat << EOF
# RainMaker benchmark: last results

- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')
- command: \`$COMMAND\`$([[ $RSYNC_ONLY == 1 ]] && echo " (rsync only: no rainmaker figures)")
- machine: nproc $(nproc), ${CPU:-unknown CPU}, $MEM RAM, $(uname -sr)
- data: $DATA_BYTES bytes ($(awk -v b="$DATA_BYTES" 'BEGIN { printf "%.2f GiB", b / 1073741824 }')) in $DATA_FILES files (BENCH_SCALE=$SCALE), generated in $GEN_SECONDS s
- versions: $(rsync --version | head -1 | sed 's/  */ /g'); rainmaker $REV
- method: loopback; each command run once on a warm page cache (source read once after generation, no cache drop), \`sync\` before each timed command; wall-clock seconds.
  rsync: \`rsync -a --delete --stats SRC/ rsync://127.0.0.1:PORT/mod/\` to an rsync daemon (no -z, no TLS); wire bytes = Total bytes sent + received.
  rainmaker: \`rainmaker push SRC --to wss://127.0.0.1:PORT --once --json\` to \`rainmaker serve\` (TLS); wire bytes = sum of targets' wire_bytes.
  speedup = rsync s / rainmaker s. Every target was verified identical to the source (content, tree, size and mtime in ns, excluding .rainmaker) after each scenario.

$TABLE

Reference: \`cp -a\` of the source to a fresh local folder took $CP_S s.
$S5_NOTE
EOF
)
echo
echo "$REPORT"
echo "$REPORT" > "$BENCH_DIR/last-results.md"
echo >&2
echo "written to bench/last-results.md" >&2

# ------------------------------------------------------------------ S4

if [[ $RSYNC_ONLY == 0 && ${BENCH_S4:-1} != 0 ]]; then
    say "S4: continuous mode (bench/s4.sh)"
    S4_ARGS=()
    [[ $KEEP == 1 ]] && S4_ARGS+=(--keep)
    S4_REPORT=$(RAINMAKER_BIN=$RM bash "$BENCH_DIR/s4.sh" "${S4_ARGS[@]}") ||
        die "S4 (bench/s4.sh) failed; the S1-S5 results are in bench/last-results.md"
    echo
    echo "$S4_REPORT"
    printf '\n%s\n' "$S4_REPORT" >> "$BENCH_DIR/last-results.md"
    echo >&2
    echo "S4 appended to bench/last-results.md" >&2
fi
