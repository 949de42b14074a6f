#!/usr/bin/env bash
# A first `push --once` of a long tick history, for its peak memory (issue 15), on loopback,
# with several builds taken in turn on one folder.
#
# Makes N files of 512 bytes (bench/scale.py's tree, kept between runs as bench/work/src-N).
# For each round and each build given: a fresh `rainmaker serve` (of that build) in an empty
# folder, then `push --once` into it (S1), then a second `push --once` with no state folder
# into the now full target (a source that lost its kept manifest: the target is listed
# whole). Prints for each: wall time, peak RSS (GNU time), user and system CPU, then the agent's
# peak RSS over both. With PUSH_HEAPTRACK=1 the S1 push runs under heaptrack, its file kept as
# bench/work/heaptrack-BUILD-ROUND (read it with `heaptrack_print -F x.fg
# --flamegraph-cost-type peak`).
#
#   bench/push_memory.sh /tmp/rm-new /tmp/rm-old        # 300,000 files, 1 round
#   PUSH_FILES=50000 PUSH_ROUNDS=2 bench/push_memory.sh  # the release build, twice
# Environment: PUSH_FILES (300000), PUSH_ROUNDS (1), PUSH_HEAPTRACK, PUSH_LOG (the push's
#   RUST_LOG, e.g. rainmaker_engine=debug for its phases; the log is kept), and, with no build
#   given, RAINMAKER_BIN or the release build under CARGO_TARGET_DIR.
set -euo pipefail
BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$BENCH/lib.sh"
die() { echo "push_memory.sh: $*" >&2; exit 1; }
N=${PUSH_FILES:-300000}
ROUNDS=${PUSH_ROUNDS:-1}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rainmaker-target}"
if (($# == 0)); then set -- "$(rainmaker_bin "$(dirname "$BENCH")")"; fi
SRC="$BENCH/work/src-$N"
if [[ ! -d $SRC/db ]]; then
    echo "making $N files in $SRC" >&2
    python3 -c "import sys; sys.path.insert(0, '$BENCH'); import scale; from pathlib import Path; scale.generate(Path('$SRC'), $N)"
fi
W="$BENCH/work/push-memory-$N"

# measure TAG WORK: the last GNU time record in WORK/TAG.time, as one line
measure() {
    local t=$2/$1.time
    printf '%-10s %9s  peak RSS %6.1f MiB  user %6s s  sys %6s s\n' "$1" \
        "$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$t")" \
        "$(awk '/Maximum resident set size/ {print $NF / 1024}' "$t")" \
        "$(awk '/User time/ {print $NF}' "$t")" "$(awk '/System time/ {print $NF}' "$t")"
}

for ((round = 1; round <= ROUNDS; round++)); do
    for bin in "$@"; do
        [[ -x $bin ]] || die "$bin is not a program"
        name=$(basename "$bin")
        rm -rf "$W"
        mkdir -p "$W/dst" "$W/data"
        head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$W/token"
        chmod 600 "$W/token"
        port=$(free_port)
        RAINMAKER_DATA_DIR=$W/data "$bin" serve --root "$W/dst" --listen "127.0.0.1:$port" \
            --token-file "$W/token" 2> "$W/serve.err" &
        serve=$!
        wait_listen "$port" "$serve" "$W/serve.err"
        fp=$(fingerprint_of "$W/serve.err")
        push() {
            local tag=$1 state=$2 pre=()
            [[ $tag == s1 && -n ${PUSH_HEAPTRACK:-} ]] && pre=(heaptrack -o "$BENCH/work/heaptrack-$name-$round")
            sync
            RUST_LOG=${PUSH_LOG:-warn} /usr/bin/time -v -o "$W/$tag.time" "${pre[@]}" "$bin" push "$SRC" \
                --to "wss://127.0.0.1:$port" --fingerprint "$fp" --token-file "$W/token" --once \
                --state-dir "$state" > "$W/$tag.out" 2> "$W/$tag.err" || die "$tag failed: $(tail -5 "$W/$tag.err")"
            measure "$tag" "$W" | sed "s/^/round $round $name /"
        }
        push s1 "$W/state"
        push no-state "$W/state-none"
        # The agent's own peak over both, from the kernel (Linux).
        printf 'round %s %s serve      peak RSS %6.1f MiB\n' "$round" "$name" \
            "$(awk '/VmHWM/ {print $2 / 1024}' "/proc/$serve/status")"
        kill "$serve"
        wait "$serve" 2> /dev/null || true
    done
done
