#!/usr/bin/env bash
# RainMaker benchmark, scenario S4: continuous mode, on loopback.
#
# A writer appends a batch of 50 tick records (24 bytes each: 1,200 bytes, one write()
# call) every 100 ms to one live tick file for BENCH_S4_SECONDS (default 20) seconds.
# For each tool it reports the p50, p95 and maximum delay until a batch is on the target,
# and the wire bytes per appended byte:
#   RainMaker  `rainmaker push SRC --to wss://127.0.0.1:PORT --watch --json` to a
#              `rainmaker serve`; wire bytes = sum of wire_bytes of its "synced" events
#              (RainMaker messages both ways; TLS and WebSocket framing not included)
#   rsync      `rsync -a --delete --stats SRC/ rsync://127.0.0.1:PORT/mod/` (run.sh's
#              command) run back to back in a loop against an rsync daemon; wire bytes =
#              Total bytes sent + received of the runs that overlap the writing period
#   Syncthing  two instances on loopback (separate homes; no discovery, relays or NAT),
#              folder send-only -> receive-only, fsWatcherDelayS=1, rescanIntervalS=3600;
#              wire bytes = in+out byte counters of the sender (REST /rest/system/connections)
#              over the same window. Installed with apt-get when missing; when it cannot be
#              set up, its row says why.
# The data folder has the realistic shape: ~2,000 small settings files and 40 small tick
# files (bench/gen.py init --scale BENCH_S4_SCALE) plus one large live tick file,
# db/tick/ES 12-26/20261123.Last.ncd, of BENCH_S4_TICK_SIZE (default 200M) made by
# `gen.py tick`. Each tool gets a fresh target, is brought in sync first (not measured),
# then bench/s4_probe.py writes the batches and polls the target file every 0.5 ms: a batch
# is on the target when the target file is at least as large as the source was after that
# batch's write (delay = first such poll - the time the write returned). Batches not seen
# within 5 s after the last write are "missed". After each run the target's tick file is
# compared (cmp) with the source's.
# RainMaker's wire_bytes leave out TLS and WebSocket, and its watch mode may open a connection
# per sync: so after the idle measurement a push --watch runs BENCH_S4_RELAY_SECONDS (default
# 5) s more of the same writer through `s4_probe.py relay`, a TCP relay that counts every byte
# both ways, and the report gives those bytes per appended byte and per sync.
# Idle agent: after the RainMaker run, its `rainmaker serve` is left with no push for
# BENCH_S4_IDLE_SECONDS (default 10) s, then a `push --watch` of the unchanged source runs
# for as long; CPU % of one core ((utime+stime) delta / elapsed / CLK_TCK from
# /proc/PID/stat) and VmRSS from /proc/PID/status (goal: under 1% and under 30 MB).
#
# Run from anywhere (bench/run.sh runs it at its end and appends its table to
# bench/last-results.md):
#   bench/s4.sh                        # ~2 minutes, needs ~1 GiB free disk under bench/work
#   BENCH_S4_SECONDS=5 bench/s4.sh     # quick
# Options:
#   --keep            keep the work folder (bench/work/s4-*) instead of deleting it
# Environment:
#   BENCH_S4_SECONDS       writing period in seconds (default 20)
#   BENCH_S4_TICK_SIZE     size of the live tick file (default 200M; K/M/G = powers of 1024)
#   BENCH_S4_SCALE         gen.py init scale for the rest of the folder (default 0.01)
#   BENCH_S4_IDLE_SECONDS  idle measurement window (default 10)
#   BENCH_S4_RELAY_SECONDS writing period of the RainMaker run through the counting relay (default 5)
#   BENCH_S4_SYNCTHING     0 to skip Syncthing (default 1; installs it with apt-get if missing)
#   RAINMAKER_BIN          use this rainmaker binary; otherwise
#                          $CARGO_TARGET_DIR/release/rainmaker (CARGO_TARGET_DIR default
#                          ~/.cache/rainmaker-target), built with `cargo build --release`
#                          when it is missing or has no --watch
# Needs: python3, rsync, curl (for Syncthing's REST API), cmp.
# Prints progress on stderr and the results (markdown) on stdout.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")
GEN="$BENCH_DIR/gen.py"
PROBE="$BENCH_DIR/s4_probe.py"
S4_SECONDS=${BENCH_S4_SECONDS:-20}
TICK_SIZE=${BENCH_S4_TICK_SIZE:-200M}
S4_SCALE=${BENCH_S4_SCALE:-0.01}
IDLE_SECONDS=${BENCH_S4_IDLE_SECONDS:-10}
RELAY_SECONDS=${BENCH_S4_RELAY_SECONDS:-5}
USE_SYNCTHING=${BENCH_S4_SYNCTHING:-1}
KEEP=0
for arg in "$@"; do
    case $arg in
        --keep) KEEP=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option: $arg (try --help)" >&2; exit 2 ;;
    esac
done
COMMAND="BENCH_S4_SECONDS=$S4_SECONDS${RAINMAKER_BIN:+ RAINMAKER_BIN=$RAINMAKER_BIN} bench/s4.sh${*:+ $*}"

say() { printf '\n== %s\n' "$*" >&2; }
die() { printf '\nS4 FAILED: %s\n' "$*" >&2; exit 1; }

command -v python3 > /dev/null || die "python3 is not installed"
command -v rsync > /dev/null || die "rsync is not installed: apt-get install rsync"

# ------------------------------------------------------------------ helpers

PIDS=()
WORK=""
cleanup() {
    local rc=$?
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
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

# stop_pid PID: SIGTERM, up to 5 s to exit, then SIGKILL; never fails
stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2> /dev/null || { wait "$pid" 2> /dev/null || true; return 0; }
    kill -TERM "$pid" 2> /dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2> /dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2> /dev/null || true
    wait "$pid" 2> /dev/null || true
}

# free_port, wait_listen
source "$BENCH_DIR/lib.sh"

# wait_event FILE SECONDS: wait until a JSON-lines event log has a synced or in_sync event
wait_event() {
    local file=$1 i
    for ((i = 0; i < $2 * 100; i++)); do
        grep -qE '"event":"(synced|in_sync)"' "$file" 2> /dev/null && return 0
        sleep 0.01
    done
    return 1
}

# probe NAME TARGET_DIR [SECONDS]: run the writer + probe against TARGET_DIR's tick file; the JSON
# result goes to logs/NAME.probe.json (one line per batch in logs/NAME.delays)
probe() {
    local name=$1 dst=$2
    python3 "$PROBE" run "$SRC/$TICK_REL" "$dst/$TICK_REL" --seconds "${3:-$S4_SECONDS}" \
        --delays "$WORK/logs/$name.delays" > "$WORK/logs/$name.probe.json" || return 1
    echo "$name: $(cat "$WORK/logs/$name.probe.json")" >&2
}

# json FILE KEY: one value of a JSON object
json() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# same_tick NAME DST: is the target's tick file equal to the source's?
same_tick() {
    cmp "$SRC/$TICK_REL" "$2/$TICK_REL" > /dev/null 2>&1 || return 1
    echo "$1: target tick file identical to the source's" >&2
}

ROWS="" # set once WORK exists: tool, probe JSON file, wire bytes, syncs label, note
row() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$ROWS"; }

# ------------------------------------------------------------------ setup

if [[ -n ${RAINMAKER_BIN:-} ]]; then
    RM=$RAINMAKER_BIN
    [[ -x $RM ]] || die "RAINMAKER_BIN=$RM is not an executable"
else
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/rainmaker-target}
    RM="$CARGO_TARGET_DIR/release/rainmaker"
    if [[ ! -x $RM ]] || ! "$RM" push --help 2> /dev/null | grep -q -- '--watch'; then
        command -v cargo > /dev/null || die "no rainmaker binary with --watch at $RM, and cargo is not installed"
        say "cargo build --release (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
        (cd "$REPO" && cargo build --release) || die "cargo build --release failed"
    elif [[ -n $(find "$REPO/src" "$REPO/crates" "$REPO/Cargo.toml" "$REPO/Cargo.lock" -newer "$RM" -print -quit 2> /dev/null) ]]; then
        echo "warning: $RM is older than the source; run cargo build --release or set RAINMAKER_BIN" >&2
    fi
fi
"$RM" push --help 2> /dev/null | grep -q -- '--watch' || die "$RM has no push --watch"

mkdir -p "$BENCH_DIR/work"
WORK=$(mktemp -d "$BENCH_DIR/work/s4-$(date +%Y%m%d-%H%M%S)-XXXX")
mkdir -p "$WORK/logs"
ROWS="$WORK/rows.tsv"
: > "$ROWS"
SRC="$WORK/src"
TICK_REL="db/tick/ES 12-26/20261123.Last.ncd"

say "generating the source folder in $SRC"
python3 "$GEN" init "$SRC" --scale "$S4_SCALE" > /dev/null
TICK_BYTES=$(python3 "$GEN" tick "$SRC/$TICK_REL" "$TICK_SIZE")
DATA_FILES=$(find "$SRC" -type f | wc -l)
DATA_BYTES=$(find "$SRC" -type f -printf '%s\n' | awk '{ s += $1 } END { print s }')
find "$SRC" -type f -print0 | xargs -0 cat > /dev/null # warm the page cache once
echo "$DATA_BYTES bytes in $DATA_FILES files, live tick file $TICK_BYTES bytes" >&2

TOKEN="$WORK/token"
(umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$TOKEN")

# ------------------------------------------------------------------ RainMaker --watch

say "S4 RainMaker: push --watch"
DST_RM="$WORK/dst-rainmaker"
mkdir -p "$DST_RM"
RM_PORT=$(free_port)
RM_URL="wss://127.0.0.1:$RM_PORT"
"$RM" serve --root "$DST_RM" --listen "127.0.0.1:$RM_PORT" --token-file "$TOKEN" \
    2> "$WORK/logs/rm-serve.err" > /dev/null &
SERVE_PID=$!
PIDS+=("$SERVE_PID")
wait_listen "$RM_PORT" "$SERVE_PID" "$WORK/logs/rm-serve.err"
PUSH_ARGS=(--to "$RM_URL" --fingerprint "$(fingerprint_of "$WORK/logs/rm-serve.err")" --token-file "$TOKEN" --json --state-dir "$WORK/state" --known-peers "$WORK/known-peers")

# first mirror, not measured
timeout 600 "$RM" push "$SRC" "${PUSH_ARGS[@]}" --once > "$WORK/logs/rm-once.json" 2> "$WORK/logs/rm-once.err" ||
    { tail -20 "$WORK/logs/rm-once.err" >&2; die "rainmaker push --once failed"; }
echo "first mirror: done ($(json "$WORK/logs/rm-once.json" seconds) s)" >&2

EVENTS="$WORK/logs/rm-watch.jsonl"
CONNECTS_BEFORE=$(grep -c 'source connected' "$WORK/logs/rm-serve.err" || true)
"$RM" push "$SRC" "${PUSH_ARGS[@]}" --watch > "$EVENTS" 2> "$WORK/logs/rm-watch.err" &
WATCH_PID=$!
PIDS+=("$WATCH_PID")
wait_event "$EVENTS" 2 || echo "push --watch: no synced/in_sync event within 2 s, starting anyway" >&2
kill -0 "$WATCH_PID" 2> /dev/null || { tail -20 "$WORK/logs/rm-watch.err" >&2; die "push --watch exited"; }
LINES_BEFORE=$(wc -l < "$EVENTS")
probe rainmaker "$DST_RM" || die "rainmaker: the probe failed"
stop_pid "$WATCH_PID"
read -r RM_WIRE RM_SYNCS RM_FAILED < <(python3 - "$EVENTS" "$LINES_BEFORE" << 'EOF'
import json, sys
wire = syncs = failed = 0
for line in open(sys.argv[1]).readlines()[int(sys.argv[2]):]:
    e = json.loads(line)
    if e.get("event") == "synced":
        wire += int(e["wire_bytes"]); syncs += 1
    elif e.get("event") == "target_failed":
        failed += 1
print(wire, syncs, failed)
EOF
)
echo "rainmaker: $RM_WIRE wire bytes in $RM_SYNCS syncs, $RM_FAILED target_failed events" >&2
same_tick rainmaker "$DST_RM" || die "rainmaker: the target's tick file differs from the source's"
# the serve's log (INFO) has one "source connected" line per connection a source opens
CONNECTS=$(($(grep -c 'source connected' "$WORK/logs/rm-serve.err" || true) - CONNECTS_BEFORE))
RM_NOTE="$RM_SYNCS syncs, $(awk -v w="$RM_WIRE" -v n="$RM_SYNCS" 'BEGIN { printf "%.0f", n ? w / n : 0 }') wire bytes per sync"
[[ $CONNECTS -le 0 ]] || RM_NOTE="$RM_NOTE; the serve logged $CONNECTS connections (TLS + WebSocket handshakes, not in wire bytes)"
[[ $RM_FAILED == 0 ]] || RM_NOTE="$RM_NOTE, $RM_FAILED target_failed events"
row "RainMaker push --watch" "$WORK/logs/rainmaker.probe.json" "$RM_WIRE" "$RM_NOTE" ""

# ------------------------------------------------------------------ idle agent

say "idle: rainmaker serve with no push, then push --watch on the unchanged source (${IDLE_SECONDS} s each)"
python3 "$PROBE" idle "$IDLE_SECONDS" serve="$SERVE_PID" > "$WORK/logs/idle-serve.json" ||
    die "idle measurement of rainmaker serve failed"
IDLE_EVENTS="$WORK/logs/rm-idle-watch.jsonl"
"$RM" push "$SRC" "${PUSH_ARGS[@]}" --watch > "$IDLE_EVENTS" 2> "$WORK/logs/rm-idle-watch.err" &
IDLE_WATCH_PID=$!
PIDS+=("$IDLE_WATCH_PID")
wait_event "$IDLE_EVENTS" 30 || die "idle push --watch: no synced/in_sync event within 30 s"
sleep 1 # let the start-up sync settle
python3 "$PROBE" idle "$IDLE_SECONDS" watch="$IDLE_WATCH_PID" serve="$SERVE_PID" > "$WORK/logs/idle-watch.json" ||
    die "idle measurement of rainmaker push --watch failed"
stop_pid "$IDLE_WATCH_PID"
IDLE_LINE=$(python3 - "$WORK/logs/idle-serve.json" "$WORK/logs/idle-watch.json" "$IDLE_SECONDS" << 'EOF'
import json, os, sys
s = json.load(open(sys.argv[1]))["serve"]
w = json.load(open(sys.argv[2]))
def f(m):
    return f"{m['cpu_percent']:.2f}% of a core, RSS {m['rss_mb']:.1f} MiB (peak {m['hwm_mb']:.1f} MiB)"
res = 100.0 / os.sysconf("SC_CLK_TCK") / float(sys.argv[3])
print(f"Idle agent ({sys.argv[3]} s each, /proc; CPU resolution {res:.2f}%): `rainmaker serve` with no push: {f(s)}; "
      f"`rainmaker push --watch` on the unchanged source: {f(w['watch'])}, its serve meanwhile: "
      f"{w['serve']['cpu_percent']:.2f}%, RSS {w['serve']['rss_mb']:.1f} MiB. Goal: under 1% and under 30 MB.")
EOF
)
echo "$IDLE_LINE" >&2

# ------------------------------------------------------------------ RainMaker's TCP bytes

say "RainMaker push --watch through a counting TCP relay (${RELAY_SECONDS} s)"
# wire_bytes leave out TLS and WebSocket (handshakes and framing); a short second run through
# `s4_probe.py relay` counts every byte the push and the serve exchange over TCP.
RELAY_PORT=$(free_port)
python3 "$PROBE" relay "$RELAY_PORT" "$RM_PORT" > "$WORK/logs/relay.jsonl" 2> "$WORK/logs/relay.err" &
RELAY_PID=$!
PIDS+=("$RELAY_PID")
wait_listen "$RELAY_PORT" "$RELAY_PID" "$WORK/logs/relay.err"
RELAY_EVENTS="$WORK/logs/rm-relay-watch.jsonl"
"$RM" push "$SRC" --to "wss://127.0.0.1:$RELAY_PORT" \
    --fingerprint "$(fingerprint_of "$WORK/logs/rm-serve.err")" --token-file "$TOKEN" --json \
    --state-dir "$WORK/state" --known-peers "$WORK/known-peers-relay" --watch > "$RELAY_EVENTS" 2> "$WORK/logs/rm-relay-watch.err" &
RELAY_WATCH_PID=$!
PIDS+=("$RELAY_WATCH_PID")
wait_event "$RELAY_EVENTS" 30 || die "push --watch through the relay: no synced/in_sync event within 30 s"
RELAY_LINES_BEFORE=$(wc -l < "$RELAY_EVENTS")
kill -USR1 "$RELAY_PID"
for ((i = 0; i < 100; i++)); do [[ -s $WORK/logs/relay.jsonl ]] && break; sleep 0.01; done
probe rainmaker-relay "$DST_RM" "$RELAY_SECONDS" || die "rainmaker through the relay: the probe failed"
stop_pid "$RELAY_WATCH_PID"
stop_pid "$RELAY_PID"
stop_pid "$SERVE_PID"
TCP_LINE=$(python3 - "$WORK/logs/relay.jsonl" "$RELAY_EVENTS" "$RELAY_LINES_BEFORE" \
    "$WORK/logs/rainmaker-relay.probe.json" "$RELAY_SECONDS" << 'EOF'
import json, sys
snaps = [json.loads(line) for line in open(sys.argv[1])]
if len(snaps) < 2:
    sys.exit("the relay printed no final count")
a, b = snaps[0], snaps[-1]
tcp = b["up"] + b["down"] - a["up"] - a["down"]
conns = b["connections"] - a["connections"]
wire = syncs = 0
for line in open(sys.argv[2]).readlines()[int(sys.argv[3]):]:
    e = json.loads(line)
    if e.get("event") == "synced":
        wire += int(e["wire_bytes"]); syncs += 1
p = json.load(open(sys.argv[4]))
n = max(syncs, 1)
print(f"RainMaker on the wire, TLS and WebSocket included ({sys.argv[5]} s of the same writer through a "
      f"counting TCP relay, `s4_probe.py relay`): {tcp:,} bytes of TCP payload for {p['appended_bytes']:,} "
      f"appended = {tcp / p['appended_bytes']:.2f} per appended byte; {syncs} syncs over {conns} TCP "
      f"connections, {tcp / n:,.0f} bytes per sync against {wire / n:,.0f} in its wire_bytes "
      f"(delays through the relay: p50 {p['p50_ms']} ms, p95 {p['p95_ms']} ms, max {p['max_ms']} ms).")
EOF
) || die "could not count RainMaker's TCP bytes"
echo "$TCP_LINE" >&2

# ------------------------------------------------------------------ rsync in a loop

say "S4 rsync in a loop"
DST_RS="$WORK/dst-rsync"
mkdir -p "$DST_RS"
RSYNC_PORT=$(free_port)
cat > "$WORK/rsyncd.conf" << EOF
use chroot = no
log file = $WORK/logs/rsyncd.log
[mod]
    path = $DST_RS
    read only = no
    uid = $(id -u)
    gid = $(id -g)
EOF
rsync --daemon --no-detach --config="$WORK/rsyncd.conf" --port="$RSYNC_PORT" --address=127.0.0.1 \
    2> "$WORK/logs/rsyncd.err" &
RSYNCD_PID=$!
PIDS+=("$RSYNCD_PID")
wait_listen "$RSYNC_PORT" "$RSYNCD_PID" "$WORK/logs/rsyncd.err"
RSYNC_CMD=(rsync -a --delete --stats "$SRC/" "rsync://127.0.0.1:$RSYNC_PORT/mod/")
"${RSYNC_CMD[@]}" > "$WORK/logs/rsync-first.out" 2>&1 || die "first rsync failed: $(tail -5 "$WORK/logs/rsync-first.out")"
echo "first mirror: done" >&2

# The loop: one rsync after the other, each with its --stats in logs/rsync-loop/N.out and
# "N start end" (epoch seconds) in logs/rsync-loop/times; SIGTERM stops the running rsync too.
mkdir -p "$WORK/logs/rsync-loop"
(
    child=""
    trap '[[ -n $child ]] && kill "$child" 2> /dev/null; exit 0' TERM
    n=0
    while :; do
        t0=$EPOCHREALTIME
        "${RSYNC_CMD[@]}" > "$WORK/logs/rsync-loop/$n.out" 2>&1 &
        child=$!
        wait "$child" && echo "$n $t0 $EPOCHREALTIME" >> "$WORK/logs/rsync-loop/times"
        n=$((n + 1))
    done
) &
LOOP_PID=$!
PIDS+=("$LOOP_PID")
probe rsync "$DST_RS" || die "rsync: the probe failed"
stop_pid "$LOOP_PID"
read -r RS_WIRE RS_RUNS < <(python3 - "$WORK/logs/rsync-loop" "$WORK/logs/rsync.probe.json" << 'EOF'
import json, re, sys
d = sys.argv[1]
p = json.load(open(sys.argv[2]))
wire = runs = 0
for line in open(f"{d}/times"):
    n, t0, t1 = line.split()
    # the runs that overlap the window from the first write to the end of the probe
    if float(t1) <= p["write_start"] or float(t0) >= p["end"]:
        continue
    text = open(f"{d}/{n}.out").read().replace(",", "")
    b = [int(x) for x in re.findall(r"^Total bytes (?:sent|received): (\d+)", text, re.M)]
    if len(b) != 2:
        sys.exit(f"rsync run {n}: no Total bytes sent/received in its --stats")
    wire += sum(b); runs += 1
print(wire, runs)
EOF
) || die "could not read the rsync loop's --stats"
echo "rsync: $RS_WIRE wire bytes in $RS_RUNS runs" >&2
same_tick rsync "$DST_RS" || die "rsync: the target's tick file differs from the source's"
row "rsync in a loop" "$WORK/logs/rsync.probe.json" "$RS_WIRE" \
    "$RS_RUNS runs, $(awk -v w="$RS_WIRE" -v n="$RS_RUNS" 'BEGIN { printf "%.0f", n ? w / n : 0 }') wire bytes per run" ""
stop_pid "$RSYNCD_PID"

# ------------------------------------------------------------------ Syncthing

ST_NOTE=""
ST_VERSION=""
# st_api INSTANCE PATH [curl args...]: Syncthing REST call on instance a or b
st_api() {
    local inst=$1 path=$2 port
    shift 2
    [[ $inst == a ]] && port=$ST_GUI_A || port=$ST_GUI_B
    curl -fsS --max-time 10 -H "X-API-Key: $ST_KEY" "$@" "http://127.0.0.1:$port$path"
}
# st_config HOME ID_SELF ID_OTHER LISTEN_PORT OTHER_PORT GUI_PORT FOLDER_PATH TYPE
st_config() {
    cat > "$1/config.xml" << EOF
<configuration version="35">
    <folder id="s4" label="s4" path="$7" type="$8" rescanIntervalS="3600" fsWatcherEnabled="true" fsWatcherDelayS="1" ignorePerms="false" autoNormalize="true">
        <device id="$2"></device>
        <device id="$3"></device>
    </folder>
    <device id="$2" name="self" compression="metadata"><address>dynamic</address></device>
    <device id="$3" name="other" compression="metadata"><address>tcp://127.0.0.1:$5</address></device>
    <gui enabled="true" tls="false"><address>127.0.0.1:$6</address><apikey>$ST_KEY</apikey></gui>
    <options>
        <listenAddress>tcp://127.0.0.1:$4</listenAddress>
        <globalAnnounceEnabled>false</globalAnnounceEnabled>
        <localAnnounceEnabled>false</localAnnounceEnabled>
        <relaysEnabled>false</relaysEnabled>
        <natEnabled>false</natEnabled>
        <urAccepted>-1</urAccepted>
        <autoUpgradeIntervalH>0</autoUpgradeIntervalH>
        <crashReportingEnabled>false</crashReportingEnabled>
        <startBrowser>false</startBrowser>
    </options>
</configuration>
EOF
}
# st_wire: the sender's protocol bytes in + out so far
st_wire() {
    st_api a /rest/system/connections |
        python3 -c 'import json, sys; t = json.load(sys.stdin)["total"]; print(t["inBytesTotal"] + t["outBytesTotal"])'
}
# syncthing_run: sets ST_NOTE and returns 1 when Syncthing cannot be set up
syncthing_run() {
    if ! command -v syncthing > /dev/null; then
        echo "syncthing is not installed: apt-get install -y syncthing" >&2
        { apt-get install -y syncthing > "$WORK/logs/st-apt.log" 2>&1 ||
            { apt-get update > /dev/null 2>&1 && apt-get install -y syncthing >> "$WORK/logs/st-apt.log" 2>&1; }; } ||
            { ST_NOTE="not set up: apt-get install syncthing failed ($(tail -1 "$WORK/logs/st-apt.log"))"; return 1; }
    fi
    command -v curl > /dev/null || { ST_NOTE="not set up: curl is not installed"; return 1; }
    ST_VERSION=$(syncthing --version | awk '{ print $2 }')
    local a="$WORK/st-a" b="$WORK/st-b" id_a id_b i
    DST_ST="$WORK/dst-syncthing"
    mkdir -p "$DST_ST/.stfolder" "$SRC/.stfolder"
    for h in "$a" "$b"; do
        syncthing generate --home="$h" --no-default-folder > "$WORK/logs/st-generate.log" 2>&1 ||
            { ST_NOTE="not set up: syncthing generate failed"; return 1; }
    done
    id_a=$(syncthing serve --home="$a" --device-id 2> /dev/null) || { ST_NOTE="not set up: no device id"; return 1; }
    id_b=$(syncthing serve --home="$b" --device-id 2> /dev/null) || { ST_NOTE="not set up: no device id"; return 1; }
    ST_KEY=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
    local pa pb
    pa=$(free_port) pb=$(free_port) ST_GUI_A=$(free_port) ST_GUI_B=$(free_port)
    st_config "$a" "$id_a" "$id_b" "$pa" "$pb" "$ST_GUI_A" "$SRC" sendonly
    st_config "$b" "$id_b" "$id_a" "$pb" "$pa" "$ST_GUI_B" "$DST_ST" receiveonly
    local pid_a pid_b
    STNODEFAULTFOLDER=1 syncthing serve --home="$a" --no-browser --no-restart --no-upgrade \
        > "$WORK/logs/st-a.log" 2>&1 &
    pid_a=$!
    PIDS+=("$pid_a")
    STNODEFAULTFOLDER=1 syncthing serve --home="$b" --no-browser --no-restart --no-upgrade \
        > "$WORK/logs/st-b.log" 2>&1 &
    pid_b=$!
    PIDS+=("$pid_b")
    wait_listen "$ST_GUI_A" "$pid_a" "$WORK/logs/st-a.log"
    wait_listen "$ST_GUI_B" "$pid_b" "$WORK/logs/st-b.log"
    # first mirror, not measured: wait until the receiver needs nothing and is idle
    local status="" state need global local_files
    for ((i = 0; i < 600; i++)); do
        status=$(st_api b "/rest/db/status?folder=s4" 2> /dev/null |
            python3 -c 'import json, sys; s = json.load(sys.stdin); print(s["state"], s["needFiles"] + s["needDeletes"], s["globalFiles"], s["localFiles"])' 2> /dev/null) || status=""
        read -r state need global local_files <<< "${status:-none -1 -1 -2}"
        if [[ $state == idle && $need == 0 && $global -ge $DATA_FILES && $global == "$local_files" ]]; then break; fi
        sleep 0.5
    done
    if [[ $i == 600 ]]; then
        ST_NOTE="not set up: the receiver was not in sync after 300 s (status: ${status:-none}; see logs/st-*.log)"
        return 1
    fi
    echo "first mirror: done ($status)" >&2
    local w0 w1
    w0=$(st_wire) || { ST_NOTE="not set up: REST /rest/system/connections failed"; return 1; }
    probe syncthing "$DST_ST" || { ST_NOTE="not measured: the probe failed (see stderr)"; return 1; }
    w1=$(st_wire) || { ST_NOTE="REST /rest/system/connections failed after the run"; return 1; }
    ST_WIRE=$((w1 - w0))
    ST_GAVE_UP=$(grep -c 'file changed during hashing' "$WORK/logs/st-a.log" || true)
    sleep 2 # the receive-only side sets the final mtime after the rename
    same_tick syncthing "$DST_ST" || { ST_NOTE="the target's tick file differs from the source's after the run"; return 1; }
    stop_pid "$pid_a"
    stop_pid "$pid_b"
    rmdir "$SRC/.stfolder"
}

if [[ $USE_SYNCTHING == 0 ]]; then
    row "Syncthing" "" "" "skipped (BENCH_S4_SYNCTHING=0)" ""
else
    say "S4 Syncthing: send-only -> receive-only"
    if syncthing_run; then
        echo "syncthing: $ST_WIRE wire bytes" >&2
        ST_EARLY=$(json "$WORK/logs/syncthing.probe.json" seen_while_writing)
        row "Syncthing $ST_VERSION" "$WORK/logs/syncthing.probe.json" "$ST_WIRE" \
            "$ST_EARLY batches reached the target while the writer ran; the sender's scanner gave up $ST_GAVE_UP times with \"file changed during hashing\"" ""
    else
        echo "syncthing: $ST_NOTE" >&2
        row "Syncthing${ST_VERSION:+ $ST_VERSION}" "" "" "$ST_NOTE" ""
    fi
fi

# ------------------------------------------------------------------ report

TABLE=$(python3 - "$ROWS" << 'EOF'
import json, sys
print("| tool | p50 ms | p95 ms | max ms | batches | missed | wire bytes per appended byte | notes |")
print("|---|---:|---:|---:|---:|---:|---:|---|")
for line in open(sys.argv[1]):
    tool, probe, wire, note, _ = line.rstrip("\n").split("\t")
    if not probe:
        print(f"| {tool} | — | — | — | — | — | — | {note} |")
        continue
    p = json.load(open(probe))
    ms = lambda v: "—" if v is None else f"{v:,.1f}"  # noqa: E731
    ratio = f"{int(wire) / p['appended_bytes']:.2f}" if wire else "—"
    wire_note = f"{int(wire):,} wire bytes for {p['appended_bytes']:,} appended; " if wire else ""
    print(f"| {tool} | {ms(p['p50_ms'])} | {ms(p['p95_ms'])} | {ms(p['max_ms'])} | {p['batches']} "
          f"| {p['missed']} | {ratio} | {wire_note}{note} |")
EOF
)

REV=$(git -C "$REPO" rev-parse --short HEAD 2> /dev/null || echo "no commit")
if [[ -n $(git -C "$REPO" status --porcelain 2> /dev/null) ]]; then REV="$REV (+ uncommitted changes)"; fi
cat << EOF
## S4 continuous mode

- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); command: \`$COMMAND\`; rainmaker $REV ($RM)
- data: $DATA_BYTES bytes in $DATA_FILES files: one live tick file of $TICK_BYTES bytes (\`gen.py tick\`) plus \`gen.py init --scale $S4_SCALE\`
- writer: a batch of 50 records (1,200 bytes, one write()) appended every 100 ms for $S4_SECONDS s to db/tick/ES 12-26/20261123.Last.ncd; delay = first time (polled every 0.5 ms) the target file is at least as large as the source after the batch, minus the time the write returned; "missed" = not on the target 5 s after the last write. Each tool had a fresh target brought in sync first (not measured); the tick files were identical afterwards.
- RainMaker: \`rainmaker push SRC --to wss://127.0.0.1:PORT --watch --json\` to \`rainmaker serve\` (TLS); wire = sum of wire_bytes of its synced events (messages both ways; TLS and WebSocket framing not included).
- rsync $(rsync --version | head -1 | awk '{ print $3 }'): \`rsync -a --delete --stats SRC/ rsync://127.0.0.1:PORT/mod/\` back to back in a loop to an rsync daemon; wire = Total bytes sent + received of the runs overlapping the writing period.
- Syncthing: two instances on loopback, no discovery, relays or NAT, folder send-only -> receive-only, fsWatcherDelayS=1, rescanIntervalS=3600, default compression (metadata); wire = the sender's in + out byte counters (/rest/system/connections) over the probe. Its watcher scans a path once it has been quiet for half of fsWatcherDelayS, or at the latest 6 x fsWatcherDelayS after its first change (so a file appended to every 100 ms waits ~6 s), and its scanner abandons a file that changes while it is hashed ("file changed during hashing"; hashing 200 MiB takes longer than 100 ms).

$TABLE

$TCP_LINE

$IDLE_LINE
EOF
