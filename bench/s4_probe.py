#!/usr/bin/env python3
"""Writer, delay probe and idle meter for scenario S4 of the RainMaker benchmark (stdlib only).

  s4_probe.py run SOURCE_FILE TARGET_FILE [--seconds 20] [--records 50] [--interval 0.1]
                  [--poll 0.0005] [--grace 5] [--settle 60] [--delays FILE]
  s4_probe.py relay LISTEN_PORT UPSTREAM_PORT
  s4_probe.py idle SECONDS NAME=PID [NAME=PID ...]

`run` is the writer and the probe in one loop, so both share one clock:
  * first it waits (up to --settle s) until TARGET_FILE has the size of SOURCE_FILE,
    i.e. the mirror is caught up before the clock starts;
  * every --interval s for --seconds s it appends one batch of --records 24-byte tick
    records (gen.py's format, continuing the file's walk; 50 x 24 = 1,200 bytes) to
    SOURCE_FILE in a single write() on an O_APPEND descriptor, and notes the time the
    write returned and the source's new size;
  * between writes it polls os.stat(TARGET_FILE) every --poll s; a batch is on the
    target at the first poll that sees the target at least as large as the source was
    right after that batch's write. delay = that poll's time - the write's time
    (a tool that writes a temporary file and renames it shows the new size only after
    the rename, which is what "on the target" means);
  * after the last write it polls up to --grace s more for the outstanding batches;
    those never seen are `missed`.
It prints one JSON object on stdout: p50_ms, p95_ms, max_ms, mean_ms (nearest-rank
percentiles over the batches seen), batches, seen, seen_while_writing (on the target
before the last write), missed, appended_bytes, and the
wall-clock (epoch) times write_start, write_end, last_seen and end, so the caller can
count the wire bytes its tool spent in that window. --delays FILE writes one line per
batch: index, write time (s from the first write), delay ms (or "missed").

`relay` forwards TCP connections from 127.0.0.1:LISTEN_PORT to 127.0.0.1:UPSTREAM_PORT and
counts the bytes each way (TCP payload: everything the tools send, TLS and WebSocket framing
and handshakes included). On SIGUSR1 it prints {"up", "down", "connections"} so far as one
JSON line, and once more on SIGTERM before it exits.

`idle` samples /proc/PID/stat and /proc/PID/status of each PID over SECONDS s and prints
one JSON object per name: cpu_percent (utime+stime delta / elapsed / CLK_TCK, in % of
one core), rss_mb (VmRSS at the end, MiB) and hwm_mb (VmHWM, the peak RSS, MiB).
"""

import argparse
import asyncio
import json
import math
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen  # noqa: E402  (record format of the benchmark data)


def size_of(path):
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return -1


def percentile(sorted_values, q):
    """Nearest-rank percentile of a sorted, non-empty list."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def cmd_run(a):
    nbatches = max(1, round(a.seconds / a.interval))
    batch_bytes = a.records * gen.REC_SIZE
    data = gen.continue_records(a.source, nbatches * a.records)
    batches = [data[i * batch_bytes : (i + 1) * batch_bytes] for i in range(nbatches)]

    src_size = os.path.getsize(a.source)
    deadline = time.monotonic() + a.settle
    while size_of(a.target) != src_size:
        if time.monotonic() > deadline:
            sys.exit(f"s4_probe: {a.target} is {size_of(a.target)} bytes, not the source's "
                     f"{src_size}, after {a.settle} s: the mirror is not caught up")
        time.sleep(0.01)

    fd = os.open(a.source, os.O_WRONLY | os.O_APPEND)
    written = [None] * nbatches  # (monotonic time the write returned, source size after it)
    delays = [None] * nbatches  # seconds
    oldest = 0  # first batch not yet seen on the target
    k = 0  # batches written
    mono0 = time.monotonic()
    wall0 = time.time() - (time.monotonic() - mono0)  # epoch of mono0
    wall = lambda m: wall0 + (m - mono0)  # noqa: E731
    last_seen = None
    size = src_size
    while True:
        now = time.monotonic()
        if k < nbatches and now >= mono0 + k * a.interval:
            n = os.write(fd, batches[k])
            if n != batch_bytes:
                sys.exit(f"s4_probe: short write ({n} of {batch_bytes} bytes)")
            size += n
            written[k] = (time.monotonic(), size)
            k += 1
        tsize = size_of(a.target)
        seen_at = time.monotonic()
        while oldest < k and tsize >= written[oldest][1]:
            delays[oldest] = seen_at - written[oldest][0]
            last_seen = seen_at
            oldest += 1
        if k == nbatches and (oldest == k or seen_at > written[-1][0] + a.grace):
            break
        time.sleep(a.poll)
    end = time.monotonic()
    os.close(fd)

    seen = sorted(d for d in delays if d is not None)
    # batches on the target before the writer's last write
    early = sum(1 for w, d in zip(written, delays) if d is not None and w[0] + d < written[-1][0])
    out = {
        "batches": nbatches,
        "seen": len(seen),
        "seen_while_writing": early,
        "missed": nbatches - len(seen),
        "appended_bytes": nbatches * batch_bytes,
        "p50_ms": round(percentile(seen, 0.50) * 1e3, 1) if seen else None,
        "p95_ms": round(percentile(seen, 0.95) * 1e3, 1) if seen else None,
        "max_ms": round(seen[-1] * 1e3, 1) if seen else None,
        "mean_ms": round(sum(seen) / len(seen) * 1e3, 1) if seen else None,
        "write_start": wall(written[0][0]),
        "write_end": wall(written[-1][0]),
        "last_seen": wall(last_seen) if last_seen else None,
        "end": wall(end),
    }
    if a.delays:
        with open(a.delays, "w") as f:
            for i, (w, d) in enumerate(zip(written, delays)):
                f.write(f"{i}\t{w[0] - mono0:.4f}\t{'missed' if d is None else f'{d * 1e3:.1f}'}\n")
    print(json.dumps(out))


def cmd_relay(a):
    counts = {"up": 0, "down": 0, "connections": 0}

    async def pipe(reader, writer, key):
        try:
            while data := await reader.read(1 << 16):
                counts[key] += len(data)
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def handle(client_r, client_w):
        counts["connections"] += 1
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", a.upstream)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(pipe(client_r, up_w, "up"), pipe(up_r, client_w, "down"))

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", a.listen)
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
        loop.add_signal_handler(signal.SIGUSR1, lambda: print(json.dumps(counts), flush=True))
        await stop
        server.close()
        print(json.dumps(counts), flush=True)

    asyncio.run(main())


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def cmd_idle(a):
    procs = []
    for spec in a.procs:
        name, _, pid = spec.rpartition("=")
        procs.append((name or pid, int(pid)))
    hz = os.sysconf("SC_CLK_TCK")
    t0 = time.monotonic()
    start = {pid: cpu_ticks(pid) for _, pid in procs}
    time.sleep(a.seconds)
    elapsed = time.monotonic() - t0
    out = {}
    for name, pid in procs:
        try:
            ticks = cpu_ticks(pid) - start[pid]
        except FileNotFoundError:
            sys.exit(f"s4_probe: {name} (pid {pid}) exited during the idle window")
        out[name] = {
            "cpu_percent": round(100.0 * ticks / hz / elapsed, 2),
            "rss_mb": round(status_kib(pid, "VmRSS") / 1024, 1),
            "hwm_mb": round(status_kib(pid, "VmHWM") / 1024, 1),
            "seconds": round(elapsed, 2),
        }
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="append batches to SOURCE_FILE, time their arrival in TARGET_FILE")
    r.add_argument("source")
    r.add_argument("target")
    r.add_argument("--seconds", type=float, default=20.0)
    r.add_argument("--records", type=int, default=50)
    r.add_argument("--interval", type=float, default=0.1)
    r.add_argument("--poll", type=float, default=0.0005)
    r.add_argument("--grace", type=float, default=5.0)
    r.add_argument("--settle", type=float, default=60.0)
    r.add_argument("--delays")
    rl = sub.add_parser("relay", help="forward and count TCP bytes")
    rl.add_argument("listen", type=int)
    rl.add_argument("upstream", type=int)
    i = sub.add_parser("idle", help="CPU and memory of idle processes")
    i.add_argument("seconds", type=float)
    i.add_argument("procs", nargs="+", metavar="NAME=PID")
    a = p.parse_args()
    {"run": cmd_run, "relay": cmd_relay, "idle": cmd_idle}[a.cmd](a)


if __name__ == "__main__":
    main()
