#!/usr/bin/env bash
# RainMaker over a real home uplink: S1 (initial mirror) and S2 (one trading session) from a
# source namespace to a target namespace joined by a 20 Mbit/s link with 30 ms round trip and
# 0.1% packet loss (bench/link.py, packet by packet), side by side with rsync (daemon
# protocol, with -z since the link is slow) on the same data in the same run.
#
# Each time is compared with the physical limit: the bytes that had to cross (the whole folder
# for S1, the bytes the session changed for S2) divided by the link rate.
#
#   sudo bench/uplink.sh            (root: it creates network namespaces and TUN devices)
#   UPLINK_SCALE=0.25 ...           a smaller folder (default 1.0, about 1 GiB: S1 takes minutes)
#   UPLINK_RATE=20mbit UPLINK_DELAY=15ms UPLINK_LOSS=0.1   the link (delay is one way)
#   RAINMAKER_BIN=path ...         a given rainmaker binary (else the release build, built)
#   UPLINK_KEEP_LOGS=dir ...       copy each command's output and log there
#   UPLINK_LOG=filter ...          the log filter (RUST_LOG) of the pushes and the agent
#
# Results go to stdout as a markdown table and to bench/last-uplink.md.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")
source "$BENCH_DIR/lib.sh"
SCALE=${UPLINK_SCALE:-1.0}
RATE=${UPLINK_RATE:-20mbit}
DELAY=${UPLINK_DELAY:-15ms}
LOSS=${UPLINK_LOSS:-0.1}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rainmaker-target}"
die() { echo "uplink.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (network namespaces, TUN devices)"
command -v rsync > /dev/null || die "rsync is not installed: apt-get install rsync"

SRC_NS=rm-up-src DST_NS=rm-up-dst
WORK=$(mktemp -d /tmp/rainmaker-uplink.XXXXXX)
PIDS=()
trap netns_cleanup EXIT
trap 'exit 130' INT TERM

RM=$(rainmaker_bin "$REPO")
src() { ip netns exec "$SRC_NS" "$@"; }

ip netns del "$SRC_NS" 2> /dev/null || true
ip netns del "$DST_NS" 2> /dev/null || true
ip netns add "$SRC_NS"
ip netns add "$DST_NS"
python3 "$BENCH_DIR/link.py" "$SRC_NS" "$DST_NS" --rate "$RATE" --delay "$DELAY" --loss "$LOSS" \
    > "$WORK/link.out" 2> "$WORK/link.err" &
PIDS+=($!)
for _ in $(seq 50); do grep -q ready "$WORK/link.out" 2> /dev/null && break; sleep 0.1; done
grep -q ready "$WORK/link.out" || { cat "$WORK/link.err" >&2; exit 1; }

echo "== generating the folder (scale $SCALE)" >&2
SRC="$WORK/src"
TOTAL=$(BENCH_SCALE=$SCALE python3 "$BENCH_DIR/gen.py" init "$SRC")
mkdir -p "$WORK/dst-rm" "$WORK/dst-rsync"
head -c 32 /dev/urandom | base64 > "$WORK/token"
chmod 600 "$WORK/token"
ip netns exec "$DST_NS" env ${UPLINK_LOG:+RUST_LOG=$UPLINK_LOG} "$RM" serve --root "$WORK/dst-rm" --listen 10.78.0.2:7878 --token-file "$WORK/token" \
    > /dev/null 2> "$WORK/serve.log" &
PIDS+=($!)
cat > "$WORK/rsyncd.conf" << CONF
use chroot = no
[mod]
path = $WORK/dst-rsync
read only = false
uid = 0
gid = 0
CONF
ip netns exec "$DST_NS" rsync --daemon --no-detach --config="$WORK/rsyncd.conf" --port=8873 \
    --address=10.78.0.2 > /dev/null 2> "$WORK/rsyncd.log" &
PIDS+=($!)
sleep 1
FP=$(fingerprint_of "$WORK/serve.log")

link_bytes() { src cat /sys/class/net/rmlinkA/statistics/tx_bytes; }
# run NAME CMD...: time a command in the source namespace, after a sync; sets T (seconds) and LINK
# (IP bytes up)
run() {
    local name=$1 before after start end
    shift
    # As bench/run.sh: what earlier commands wrote is on disk first, so a durable write (the
    # agent's fsync) does not wait for their writeback.
    sync
    before=$(link_bytes)
    start=$(date +%s.%N)
    src "$@" > "$WORK/$name.out" 2> "$WORK/$name.err" || { cat "$WORK/$name.err" >&2; exit 1; }
    end=$(date +%s.%N)
    after=$(link_bytes)
    T=$(python3 -c "print(f'{$end - $start:.2f}')")
    LINK=$((after - before))
}
push() { run "$1" env RUST_LOG="${UPLINK_LOG:-rainmaker_engine=info}" "$RM" push "$SRC" --to wss://10.78.0.2:7878 \
    --fingerprint "$FP" --token-file "$WORK/token" --state-dir "$WORK/state" --once --json; }
# The compression levels the push used (its log line "sent ... B raw, ... B at zstd N").
levels() { sed 's/\x1b\[[0-9;]*m//g' "$WORK/$1.err" | grep -o 'sent [0-9][^=]*' | head -1 || true; }
sync_rsync() { run "$1" rsync -az --delete --stats "$SRC/" rsync://10.78.0.2:8873/mod/; }
limit() { python3 -c "print(f'{$1 * 8 / $(python3 -c "
r='$RATE'.lower()
m={'gbit':1e9,'mbit':1e6,'kbit':1e3}
print(next(float(r[:-len(k)])*v for k,v in m.items() if r.endswith(k)))"):.2f}')"; }
ROWS=()
row() { # scenario bytes rm_s rm_link rsync_s rsync_link
    local lim
    lim=$(limit "$2")
    ROWS+=("| $1 | $2 | $lim | $3 | $(python3 -c "print(f'{$3/$lim:.2f}x')") | $4 | $5 | $(python3 -c "print(f'{$5/$lim:.2f}x')") | $6 |")
}

echo "== S1: initial mirror of $TOTAL bytes" >&2
push s1-rm
S1_RM=$T S1_RM_LINK=$LINK
sync_rsync s1-rsync
row "S1 initial" "$TOTAL" "$S1_RM" "$S1_RM_LINK" "$T" "$LINK"
diff -r --exclude=.rainmaker "$SRC" "$WORK/dst-rm" > /dev/null || { echo "S1: the target differs" >&2; exit 1; }

echo "== S2: one trading session" >&2
CHANGED=$(python3 "$BENCH_DIR/gen.py" session "$SRC")
push s2-rm
S2_RM=$T S2_RM_LINK=$LINK
sync_rsync s2-rsync
row "S2 one session" "$CHANGED" "$S2_RM" "$S2_RM_LINK" "$T" "$LINK"
diff -r --exclude=.rainmaker "$SRC" "$WORK/dst-rm" > /dev/null || { echo "S2: the target differs" >&2; exit 1; }
diff -r "$SRC" "$WORK/dst-rsync" > /dev/null || { echo "S2: the rsync target differs" >&2; exit 1; }

echo "== S2 again, the connection kept: push --watch, a second session" >&2
# A continuous push keeps its connection between syncs (pinged while idle), as a scheduled one
# (--every) does: no TCP, TLS or WebSocket handshake per sync. The watcher syncs the session
# while it is being written (gen.py takes about a second), so what is timed is the lag: from
# the end of the session's writes to the arrival of the last "synced" event on the push's
# stdout (each line stamped as it arrives), once no event came for 3 s and the target is
# identical; as rsync -z is timed from the end of the writes to the target identical.
ip netns exec "$SRC_NS" env RUST_LOG=rainmaker_engine=info "$RM" push "$SRC" \
    --to wss://10.78.0.2:7878 --fingerprint "$FP" --token-file "$WORK/token" \
    --state-dir "$WORK/state" --watch --json \
    2> "$WORK/s2w-rm.err" > >(python3 -u -c 'import sys, time
for line in sys.stdin: print(f"{time.time():.4f} {line}", end="", flush=True)' > "$WORK/s2w-rm.out") &
PIDS+=($!)
for _ in $(seq 300); do grep -q '"in_sync"' "$WORK/s2w-rm.out" 2> /dev/null && break; sleep 0.1; done
grep -q '"in_sync"' "$WORK/s2w-rm.out" || { echo "push --watch never got in sync" >&2; cat "$WORK/s2w-rm.err" >&2; exit 1; }
sleep 2
START=$(date +%s.%N)
BEFORE=$(link_bytes)
CHANGED2=$(python3 "$BENCH_DIR/gen.py" session "$SRC")
WRITTEN=$(date +%s.%N)
LAST=
for _ in $(seq 600); do
    sleep 0.1
    NOW=$(grep '"synced"' "$WORK/s2w-rm.out" | tail -1 | cut -d' ' -f1)
    if [ -n "$NOW" ] && [ "$(python3 -c "print(int($NOW > $START))")" = 1 ]; then
        if [ "$NOW" = "$LAST" ] && [ "$(python3 -c "import time; print(int(time.time() - $NOW > 3))")" = 1 ]; then
            break
        fi
        LAST=$NOW
    fi
done
[ -n "$LAST" ] || { echo "S2 with the connection kept: no sync after the session" >&2; exit 1; }
S2W_RM_LINK=$(($(link_bytes) - BEFORE))
S2W_RM=$(python3 -c "print(f'{max(0.0, $LAST - $WRITTEN):.2f}')")
S2W_SPAN=$(python3 -c "print(f'{$LAST - $START:.2f} s from the start of the writes ({$WRITTEN - $START:.2f} s of writing), in $(awk -v t="$START" '/"synced"/ && $1 > t' "$WORK/s2w-rm.out" | wc -l) syncs')")
diff -r --exclude=.rainmaker "$SRC" "$WORK/dst-rm" > /dev/null || { echo "S2 (kept): the target differs" >&2; exit 1; }
sync_rsync s2w-rsync
row "S2 with the connection kept (push --watch): lag after the last write" "$CHANGED2" "$S2W_RM" "$S2W_RM_LINK" "$T" "$LINK"
diff -r "$SRC" "$WORK/dst-rsync" > /dev/null || { echo "S2 (kept): the rsync target differs" >&2; exit 1; }

[ -z "${UPLINK_KEEP_LOGS:-}" ] || { mkdir -p "$UPLINK_KEEP_LOGS" && cp "$WORK"/*.err "$WORK"/*.out "$WORK/serve.log" "$UPLINK_KEEP_LOGS/"; }

OUT="$BENCH_DIR/last-uplink.md"
{
    echo "Link: $RATE, ${DELAY} each way, ${LOSS}% loss (bench/link.py between two network namespaces); folder scale $SCALE."
    echo "Limit = bytes that had to cross x 8 / link rate. Link bytes = IP bytes the source put on the link (with TCP/IP headers, TLS, retransmissions)."
    echo
    echo "| scenario | bytes to cross | limit s | rainmaker s | vs limit | rainmaker link bytes | rsync -z s | vs limit | rsync link bytes |"
    echo "|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "rainmaker's compression: S1 $(levels s1-rm); S2 $(levels s2-rm)"
    echo
    echo "rainmaker S2 with the connection kept: $S2W_SPAN"
    echo
    echo "rainmaker S2 report: $(tr -d '\n ' < "$WORK/s2-rm.out" | head -c 600)"
    echo
    echo "link: $(kill -TERM "${PIDS[0]}"; sleep 0.5; cat "$WORK/link.err" | tr '\n' ' ')"
} | tee "$OUT"
