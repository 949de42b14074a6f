#!/usr/bin/env bash
# RainMaker on a LAN: S1 (initial mirror) to one target and S5 (one source to three targets)
# between two network namespaces joined by a veth pair (no emulation: the kernel's own
# speed, as between two machines on a fast LAN), side by side with rsync (plain, --fsync for
# the same durability, -z as on a slow link) on the same data in the same run, with each
# client's peak RSS. RainMaker runs with its default compression (measured per target,
# `--compress auto`) and with `--compress never`.
#
#   sudo bench/lan.sh              (root: it creates network namespaces)
#   LAN_SCALE=0.25 ...             a smaller folder (default 1.0, about 1 GiB)
#   LAN_RUNS=3 ...                 runs of each command (the median is reported; default 1)
#   LAN_LOG=filter LAN_KEEP_LOGS=dir   the pushes' log filter (RUST_LOG), and a folder to copy
#                                  each command's output and log to
#   LAN_SETTLE=40 ...              seconds to wait after emptying the targets before each run:
#                                  ext4 skips the inodes freed in the last half minute or so
#                                  when it makes new ones, which slows creating files at once
#   LAN_PERF=dir ...               profile every push to three targets system-wide (source and
#                                  agents, perf record -a) into dir/NAME.perf.data, with a
#                                  flat report of the hottest symbols per program in dir/NAME.txt
#
# Every target is compared with the source after each command. Results go to stdout as a
# markdown table and to bench/last-lan.md.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")
source "$BENCH_DIR/lib.sh"
SCALE=${LAN_SCALE:-1.0}
RUNS=${LAN_RUNS:-1}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rainmaker-target}"
die() { echo "lan.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
command -v rsync > /dev/null || die "rsync is not installed: apt-get install rsync"
[ -x /usr/bin/time ] || die "GNU time is not installed: apt-get install time"

SRC_NS=rm-lan-src DST_NS=rm-lan-dst
WORK=$(mktemp -d /tmp/rainmaker-lan.XXXXXX)
PIDS=()
trap netns_cleanup EXIT
trap 'exit 130' INT TERM

RM=$(rainmaker_bin "$REPO")

ip netns del "$SRC_NS" 2> /dev/null || true
ip netns del "$DST_NS" 2> /dev/null || true
ip netns add "$SRC_NS"
ip netns add "$DST_NS"
ip link add rmlanA netns "$SRC_NS" type veth peer name rmlanB netns "$DST_NS"
ip -n "$SRC_NS" addr add 10.79.0.1/24 dev rmlanA
ip -n "$DST_NS" addr add 10.79.0.2/24 dev rmlanB
for ns in "$SRC_NS" "$DST_NS"; do
    ip -n "$ns" link set lo up
done
ip -n "$SRC_NS" link set rmlanA up
ip -n "$DST_NS" link set rmlanB up
src() { ip netns exec "$SRC_NS" "$@"; }

echo "== generating the folder (scale $SCALE)" >&2
SRC="$WORK/src"
TOTAL=$(BENCH_SCALE=$SCALE python3 "$BENCH_DIR/gen.py" init "$SRC")
find "$SRC" -type f -print0 | xargs -0 cat > /dev/null
head -c 32 /dev/urandom | base64 > "$WORK/token"
chmod 600 "$WORK/token"

# Three rainmaker agents and one rsync daemon with three modules, in the target namespace.
for i in 1 2 3; do
    mkdir -p "$WORK/rm$i" "$WORK/rs$i"
    # Not through dst(): a function run in the background is a subshell, and killing it
    # would leave the agent running. `ip netns exec` execs, so $! is the agent.
    ip netns exec "$DST_NS" env RAINMAKER_DATA_DIR="$WORK/data$i" "$RM" serve --root "$WORK/rm$i" \
        --listen "10.79.0.2:787$i" --token-file "$WORK/token" > /dev/null 2> "$WORK/serve$i.log" &
    PIDS+=($!)
done
{
    echo "use chroot = no"
    for i in 1 2 3; do
        printf '[m%s]\npath = %s\nread only = false\nuid = 0\ngid = 0\n' "$i" "$WORK/rs$i"
    done
} > "$WORK/rsyncd.conf"
ip netns exec "$DST_NS" rsync --daemon --no-detach --config="$WORK/rsyncd.conf" --port=8873 --address=10.79.0.2 \
    > /dev/null 2> "$WORK/rsyncd.log" &
PIDS+=($!)
sleep 1
FP=()
for i in 1 2 3; do
    FP+=("$(fingerprint_of "$WORK/serve$i.log")")
done

# empty: the targets start from nothing (and their indexes too)
empty() {
    for i in 1 2 3; do
        # An agent's own state folder stays (it is in use); its index catches up by itself.
        find "$WORK/rm$i" -mindepth 1 -maxdepth 1 ! -name .rainmaker -exec rm -rf {} +
        find "$WORK/rs$i" -mindepth 1 -delete
    done
    rm -rf "$WORK/state"
    sync
    sleep "${LAN_SETTLE:-0}"
}
same() { # same NAME DIR...: every DIR is identical to the source
    local name=$1 d
    shift
    for d in "$@"; do
        diff -r --exclude=.rainmaker "$SRC" "$d" > /dev/null || die "$name: $d differs from the source"
    done
}
# timed NAME CMD...: runs CMD in the source namespace under GNU time; T (s) and PEAK (MiB)
timed() {
    local name=$1 start end
    shift
    start=$(date +%s.%N)
    src /usr/bin/time -f '%M %U %S' -o "$WORK/$name.rss" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err" \
        || { tail -20 "$WORK/$name.err" >&2; die "$name failed"; }
    end=$(date +%s.%N)
    T=$(python3 -c "print(f'{$end - $start:.2f}')")
    read -r kib user sys < <(tail -1 "$WORK/$name.rss")
    PEAK=$((kib / 1024))
    CPU=$(python3 -c "print(f'{$user + $sys:.2f}')")
}
targets() { # the --to arguments for the first N agents
    local i
    for ((i = 1; i <= $1; i++)); do
        printf -- '--to\nwss://10.79.0.2:787%s\n--fingerprint\n%s\n' "$i" "${FP[$((i - 1))]}"
    done
}
push() { # push NAME N COMPRESS
    local args
    mapfile -t args < <(targets "$2")
    local perf=""
    if [ -n "${LAN_PERF:-}" ] && [ "$2" = 3 ]; then
        mkdir -p "$LAN_PERF"
        perf record -a -F 499 -o "$LAN_PERF/$1.perf.data" > /dev/null 2>&1 &
        perf=$!
        sleep 1
    fi
    timed "$1" env RUST_LOG="${LAN_LOG:-rainmaker_engine=info}" "$RM" push "$SRC" "${args[@]}" \
        --token-file "$WORK/token" --state-dir "$WORK/state" --once --json --compress "$3"
    if [ -n "$perf" ]; then
        kill -INT "$perf"
        wait "$perf" || true
        perf report -i "$LAN_PERF/$1.perf.data" --no-children --sort comm,dso,sym --stdio \
            --percent-limit 0.5 2> /dev/null > "$LAN_PERF/$1.txt" || true
    fi
}
rsync1() { timed "$1" rsync -a --delete "${@:3}" "$SRC/" "rsync://10.79.0.2:8873/m$2/"; }
rsync3() { # three rsyncs at once, one per module
    local name=$1 start end i pids=()
    shift
    start=$(date +%s.%N)
    for i in 1 2 3; do
        src rsync -a --delete "$@" "$SRC/" "rsync://10.79.0.2:8873/m$i/" > /dev/null 2>&1 &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i" || die "$name failed"; done
    end=$(date +%s.%N)
    T=$(python3 -c "print(f'{$end - $start:.2f}')")
    PEAK="—"
    CPU="—"
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }

# measure LABEL KIND...: runs one case RUNS times from empty targets; sets CELL
measure() {
    local label=$1 times=() peaks=() r
    shift
    for ((r = 1; r <= RUNS; r++)); do
        empty
        "$@"
        times+=("$T")
        peaks+=("$PEAK")
        case $1 in
            push) same "$label" "$WORK/rm1"; [ "$3" = 3 ] && same "$label" "$WORK/rm2" "$WORK/rm3" ;;
            rsync1) same "$label" "$WORK/rs1" ;;
            rsync3) same "$label" "$WORK/rs1" "$WORK/rs2" "$WORK/rs3" ;;
        esac
        echo "   $label run $r: $T s, peak ${PEAK} MiB, CPU ${CPU} s" >&2
        CPUS="${CPUS:-}$label run $r: $T s wall, $CPU s of CPU in the source; "
    done
    CELL="$(median "${times[@]}") s"
    [ "${peaks[0]}" != "—" ] && CELL="$CELL, $(median "${peaks[@]}") MiB"
    return 0
}

echo "== S1: one target" >&2
measure "rsync" rsync1 s1-rsync 1; S1_RSYNC=$CELL
measure "rsync --fsync" rsync1 s1-fsync 1 --fsync; S1_FSYNC=$CELL
measure "rsync -z" rsync1 s1-z 1 -z; S1_Z=$CELL
measure "rainmaker" push s1-rm 1 auto; S1_RM=$CELL
S1_RM_LOG=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/s1-rm.err" | grep -o 'sent [0-9][^=]*' | head -1 || true)
measure "rainmaker never" push s1-never 1 never; S1_NEVER=$CELL
echo "== S5: three targets" >&2
measure "rsync x3" rsync3 s5-rsync; S5_RSYNC=$CELL
measure "rsync --fsync x3" rsync3 s5-fsync --fsync; S5_FSYNC=$CELL
measure "rainmaker x3" push s5-rm 3 auto; S5_RM=$CELL
S5_RM_LOG=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/s5-rm.err" | grep -o 'sent [0-9][^=]*' | tr '\n' ';' || true)
measure "rainmaker never x3" push s5-never 3 never; S5_NEVER=$CELL

[ -z "${LAN_KEEP_LOGS:-}" ] || { mkdir -p "$LAN_KEEP_LOGS" && cp "$WORK"/*.err "$WORK"/*.out "$LAN_KEEP_LOGS/"; }
OUT="$BENCH_DIR/last-lan.md"
{
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); command: \`sudo LAN_SCALE=$SCALE LAN_RUNS=$RUNS bench/lan.sh\`; rainmaker $(git -C "$REPO" rev-parse --short HEAD)"
    echo "- machine: nproc $(nproc); source and targets in two network namespaces joined by a veth pair; warm page cache; median of $RUNS"
    echo "- data: $TOTAL bytes ($(find "$SRC" -type f | wc -l) files, bench/gen.py init, scale $SCALE)"
    echo
    echo "| scenario | rsync | rsync --fsync | rsync -z | RainMaker (compression measured) | RainMaker --compress never |"
    echo "|---|---|---|---|---|---|"
    echo "| S1 initial | $S1_RSYNC | $S1_FSYNC | $S1_Z | $S1_RM | $S1_NEVER |"
    echo "| S5 one → three targets | $S5_RSYNC | $S5_FSYNC | | $S5_RM | $S5_NEVER |"
    echo
    echo "RainMaker's compression in S1: ${S1_RM_LOG:-none logged}"
    echo
    echo "In S5: ${S5_RM_LOG:-none logged}"
    echo
    echo "The source's CPU time (user + system) in each run: $CPUS"
} | tee "$OUT"
