# Helpers the benchmark scripts share (sourced, not run). They call the script's own `die`.

# free_port: a TCP port on 127.0.0.1 that nothing listens on now
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_listen PORT PID LOG: wait until something accepts on 127.0.0.1:PORT
wait_listen() {
    local port=$1 pid=$2 log=$3 i
    for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2> /dev/null || { tail -20 "$log" >&2; die "server on port $port exited"; }
        if (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then return 0; fi
        sleep 0.1
    done
    tail -20 "$log" >&2
    die "nothing listens on port $port after 30 s"
}

# fingerprint_of LOG: the certificate fingerprint a `rainmaker serve` printed in LOG, for
# --fingerprint (a push trusts no target on first use unless told to)
fingerprint_of() {
    local log=$1 fp i
    for ((i = 0; i < 100; i++)); do
        fp=$(sed -n 's/.*certificate fingerprint \(SHA256:[0-9a-f]*\).*/\1/p' "$log" | head -1)
        if [[ -n $fp ]]; then echo "$fp"; return 0; fi
        sleep 0.05
    done
    die "no certificate fingerprint in $log"
}

# netns_cleanup: stops the processes in PIDS, deletes the namespaces SRC_NS and DST_NS and the
# folder WORK (the scripts that join two network namespaces trap EXIT with it)
netns_cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2> /dev/null || true; done
    sleep 0.5
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2> /dev/null || true; done
    ip netns del "$SRC_NS" 2> /dev/null || true
    ip netns del "$DST_NS" 2> /dev/null || true
    rm -rf "$WORK"
}

# rainmaker_bin REPO: the rainmaker to measure: RAINMAKER_BIN if set, else the release build
# (built first) under CARGO_TARGET_DIR
rainmaker_bin() {
    if [ -n "${RAINMAKER_BIN:-}" ]; then
        echo "$RAINMAKER_BIN"
        return 0
    fi
    cargo build --release --quiet --manifest-path "$1/Cargo.toml" -p rainmaker >&2
    echo "$CARGO_TARGET_DIR/release/rainmaker"
}
